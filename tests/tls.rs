//! STARTTLS (RFC 3207) against the real binary: the dialogue rules with a
//! raw client, the plaintext-injection defence (CVE-2011-0411), and real
//! peers from Debian's packages: swaks --tls, `openssl s_client -starttls
//! smtp`, and Postfix as the TLS client. Certificates are made by
//! `openssl` for each test. A missing tool is a SKIPPED line outside CI and
//! a failure in CI.

mod common;
mod tlsutil;

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use tlsutil::*;

fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

fn tls_relay(certs: &Certs, extra: &[&str]) -> Relay {
    let mut args = certs.relay_args();
    args.extend(extra.iter().map(|s| s.to_string()));
    Relay::receive_only(&strs(&args))
}

fn received_of(relay: &Relay, id: &str) -> String {
    let (received, _) = split_received(&read_msg(relay.spool(), id));
    received
}

#[test]
fn starttls_is_offered_only_when_configured() {
    let relay = Relay::receive_only(&[]);
    let (mut s, ehlo) = Smtp::greet(relay.addr());
    assert!(!ehlo.contains("STARTTLS"), "{ehlo}");
    let t = s.cmd("STARTTLS", 502);
    assert!(t.starts_with("5.5.1"), "{t}");
}

#[test]
fn a_message_over_tls_says_esmtps_and_the_cipher() {
    let Some(certs) = Certs::make("a_message_over_tls_says_esmtps_and_the_cipher") else {
        return;
    };
    let relay = tls_relay(&certs, &[]);
    let (mut s, ehlo) = Smtp::greet(relay.addr());
    assert!(ehlo.lines().any(|l| l == "STARTTLS"), "{ehlo}");
    let ehlo = s.starttls(&certs);
    // RFC 3207 §4.2: not offered again
    assert!(!ehlo.contains("STARTTLS"), "{ehlo}");
    assert!(s.cmd("STARTTLS", 503).starts_with("5.5.1"));
    let id = s.send_mail(
        "a@origin.example",
        &["b@dest.example"],
        b"Subject: over tls\r\n\r\nhello\r\n",
    );
    s.cmd("QUIT", 221);
    let received = received_of(&relay, &id);
    assert!(received.contains("with ESMTPS id"), "{received}");
    assert!(
        received.contains("(using TLSv1.3 with cipher TLS13_"),
        "{received}"
    );
    assert!(received.contains("from client.test ([127.0.0.1])"));
    let mut tls = None;
    wait_until(Duration::from_secs(5), || {
        tls = tls_in_log(&relay.log(), &id);
        tls.is_some()
    });
    let tls = tls.unwrap_or_else(|| panic!("no queued line for {id}:\n{}", relay.log()));
    assert!(tls.starts_with("TLSv1.3/TLS13_"), "{tls}");
    assert!(relay
        .log()
        .contains("starttls version=TLSv1.3 cipher=TLS13_"));
}

#[test]
fn the_session_starts_over_after_the_handshake() {
    let Some(certs) = Certs::make("the_session_starts_over_after_the_handshake") else {
        return;
    };
    let relay = tls_relay(&certs, &[]);
    let (mut s, _) = Smtp::greet(relay.addr());
    // not in the middle of a transaction
    s.cmd("MAIL FROM:<a@origin.example>", 250);
    assert!(s.cmd("STARTTLS", 503).starts_with("5.5.1"));
    s.cmd("RSET", 250);
    assert!(s.cmd("STARTTLS now", 501).starts_with("5.5.4"));
    s.cmd("STARTTLS", 220);
    s.handshake(&certs, "relay.test");
    // RFC 3207 §4.2: the EHLO before TLS is forgotten
    s.cmd("MAIL FROM:<a@origin.example>", 503);
    s.cmd("EHLO again.test", 250);
    s.cmd("MAIL FROM:<a@origin.example>", 250);
    s.cmd("QUIT", 221);
}

#[test]
fn plaintext_pipelined_after_starttls_is_not_executed() {
    let Some(certs) = Certs::make("plaintext_pipelined_after_starttls_is_not_executed") else {
        return;
    };
    let relay = tls_relay(&certs, &[]);
    let (mut s, _) = Smtp::greet(relay.addr());
    // CVE-2011-0411: the commands after STARTTLS travel in the same
    // segment, in plaintext, before the handshake
    s.send_raw(b"STARTTLS\r\nEHLO injected.example\r\nMAIL FROM:<evil@injected.example>\r\n");
    s.expect(220);
    assert_eq!(s.pending(), 0, "one reply to three commands");
    s.handshake(&certs, "relay.test");
    // had the injected EHLO run, its 250 would come first
    let ehlo = s.cmd("EHLO client.test", 250);
    assert!(ehlo.starts_with("relay.test greets client.test"), "{ehlo}");
    // had the injected MAIL run, this would be a nested MAIL (503)
    s.cmd("MAIL FROM:<a@origin.example>", 250);
    s.cmd("RCPT TO:<b@dest.example>", 250);
    s.cmd("DATA", 354);
    s.send_raw(b"Subject: clean\r\n\r\nbody\r\n.\r\n");
    let id = queued_id(&s.expect(250)).expect("queued");
    s.cmd("NOOP", 250);
    assert_eq!(s.pending(), 0, "no stray replies:\n{}", s.transcript());
    s.cmd("QUIT", 221);
    let received = received_of(&relay, &id);
    assert!(received.contains("from client.test"), "{received}");
    assert!(!received.contains("injected"), "{received}");
    let env = EnvFile::load(relay.spool(), &id);
    assert_eq!(env.get("from"), "<a@origin.example>");
    assert!(
        wait_until(Duration::from_secs(5), || relay
            .log()
            .contains("pipelined after STARTTLS")),
        "{}",
        relay.log()
    );
}

#[test]
fn require_tls_refuses_mail_before_starttls() {
    let Some(certs) = Certs::make("require_tls_refuses_mail_before_starttls") else {
        return;
    };
    let relay = tls_relay(&certs, &["--require-tls"]);
    let (mut s, _) = Smtp::greet(relay.addr());
    let t = s.cmd("MAIL FROM:<a@origin.example>", 530);
    assert_eq!(t, "5.7.0 Must issue a STARTTLS command first");
    s.starttls(&certs);
    s.send_mail(
        "a@origin.example",
        &["b@dest.example"],
        b"Subject: x\r\n\r\ny\r\n",
    );
    s.cmd("QUIT", 221);
}

#[test]
fn bad_tls_options_are_usage_errors() {
    let dir = TempDir::new("badtls");
    let junk = write_file(dir.path(), "junk.pem", b"not a certificate\n");
    let junk = junk.to_str().expect("utf-8");
    for args in [
        vec!["serve", "--tls-cert", junk],
        vec!["serve", "--tls-cert", junk, "--tls-key", junk],
        vec!["serve", "--require-tls"],
    ] {
        let run = run_cli(&args, Duration::from_secs(10));
        assert_eq!(run.code, Some(64), "{args:?}: {run:?}");
        assert!(run.stderr.contains("tls"), "{run:?}");
    }
}

#[test]
fn a_failed_handshake_ends_only_that_session() {
    let Some(certs) = Certs::make("a_failed_handshake_ends_only_that_session") else {
        return;
    };
    let relay = tls_relay(&certs, &[]);
    let (mut s, _) = Smtp::greet(relay.addr());
    s.cmd("STARTTLS", 220);
    // not a ClientHello
    s.send_raw(b"EHLO plaintext.example\r\n");
    assert!(
        matches!(s.try_reply(), Ok(None) | Err(_)),
        "{}",
        s.transcript()
    );
    let (mut s2, _) = Smtp::greet(relay.addr());
    s2.starttls(&certs);
    s2.cmd("QUIT", 221);
}

#[test]
fn swaks_tls() {
    let test = "swaks_tls";
    let Some(swaks) = require_tool("swaks", test) else {
        return;
    };
    let Some(certs) = Certs::make(test) else {
        return;
    };
    let relay = tls_relay(&certs, &["--require-tls"]);
    let port = relay.addr().port().to_string();
    let run = run_tool(
        Command::new(&swaks).args([
            "--server",
            "127.0.0.1",
            "--port",
            &port,
            "--helo",
            "swaks.test",
            "--from",
            "s@origin.example",
            "--to",
            "r@dest.example",
            "--tls",
            "--tls-verify",
            "--tls-ca-path",
            certs.ca.to_str().expect("utf-8"),
            "--header",
            "Subject: swaks tls",
            "--timeout",
            "20",
        ]),
        LIMIT,
    );
    assert_eq!(run.code, Some(0), "swaks --tls: {run:?}");
    assert!(run.stdout.contains("TLS started with cipher"), "{run:?}");
    let id = run
        .stdout
        .lines()
        .find_map(queued_id)
        .unwrap_or_else(|| panic!("{run:?}"));
    let received = received_of(&relay, &id);
    assert!(received.contains("with ESMTPS"), "{received}");
    assert!(received.contains("from swaks.test"), "{received}");
}

#[test]
fn openssl_s_client_starttls_smtp() {
    let test = "openssl_s_client_starttls_smtp";
    let Some(openssl) = require_tool("openssl", test) else {
        return;
    };
    let Some(certs) = Certs::make(test) else {
        return;
    };
    let relay = tls_relay(&certs, &[]);
    let mut child = Command::new(openssl)
        .args(["s_client", "-starttls", "smtp", "-connect"])
        .arg(relay.addr().to_string())
        .args(["-name", "relay.test", "-verify_hostname", "relay.test"])
        .args(["-verify_return_error", "-CAfile"])
        .arg(&certs.ca)
        .args(["-crlf", "-ign_eof", "-quiet"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn openssl");
    let script = "EHLO s-client.test\nMAIL FROM:<s@origin.example>\nRCPT TO:<r@dest.example>\nDATA\nSubject: s_client\n\n..dotted\n.\nQUIT\n";
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(script.as_bytes())
        .expect("write script");
    let mut done = None;
    wait_until(LIMIT, || {
        done = child.try_wait().ok().flatten();
        done.is_some()
    });
    if done.is_none() {
        let _ = child.kill();
    }
    let out = child.wait_with_output().expect("openssl output");
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(done.is_some(), "s_client hung:\n{stdout}\n{stderr}");
    let id = stdout
        .lines()
        .find_map(queued_id)
        .unwrap_or_else(|| panic!("no queued line:\n{stdout}\n{stderr}"));
    assert!(stdout.contains("221 2.0.0"), "{stdout}");
    // after TLS the EHLO list no longer offers STARTTLS
    assert!(!stdout.contains("250-STARTTLS"), "{stdout}");
    assert!(stderr.contains("verify return:1"), "{stderr}");
    let received = received_of(&relay, &id);
    assert!(received.contains("from s-client.test"), "{received}");
    assert!(received.contains("with ESMTPS"), "{received}");
    let body = read_msg(relay.spool(), &id);
    assert!(
        String::from_utf8_lossy(&body).ends_with("\r\n\r\n.dotted\r\n"),
        "{body:?}"
    );
}

/// Postfix's SMTP client delivers to us with `smtp_tls_security_level =
/// may`: swaks → Postfix → smtp-relay (TLS) → spool.
#[test]
fn postfix_as_tls_client() {
    let test = "postfix_as_tls_client";
    let Some(swaks) = require_tool("swaks", test) else {
        return;
    };
    if !postfix_usable(test) {
        return;
    }
    let Some(certs) = Certs::make(test) else {
        return;
    };
    let relay = tls_relay(&certs, &[]);
    let postfix = PostfixInstance::start(
        relay.addr().port(),
        &format!(
            "smtp_tls_security_level = may\nsmtp_tls_loglevel = 1\nsmtp_tls_CAfile = {}\n",
            certs.ca.display()
        ),
    );
    let port = postfix.port.to_string();
    let run = run_tool(
        Command::new(&swaks).args([
            "--server",
            "127.0.0.1",
            "--port",
            &port,
            "--from",
            "s@origin.example",
            "--to",
            "r@dest.example",
            "--header",
            "Subject: via postfix tls",
            "--timeout",
            "20",
        ]),
        LIMIT,
    );
    assert_eq!(run.code, Some(0), "swaks → postfix: {run:?}");
    let mut ids = Vec::new();
    assert!(
        wait_until(LIMIT, || {
            ids = queued_ids(relay.spool());
            !ids.is_empty()
        }),
        "nothing reached the relay; postfix log:\n{}\nrelay log:\n{}",
        postfix.maillog(),
        relay.log()
    );
    let received = received_of(&relay, &ids[0]);
    assert!(received.contains("from postfix.test"), "{received}");
    assert!(received.contains("with ESMTPS"), "{received}");
    let log = postfix.maillog();
    assert!(
        log.contains("TLS connection established to"),
        "Postfix logs its TLS session:\n{log}"
    );
}
