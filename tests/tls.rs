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
        vec!["serve", "--require-tls"],
        vec!["serve", "--ca-file", junk],
    ] {
        let run = run_cli(&args, Duration::from_secs(10));
        assert_eq!(run.code, Some(64), "{args:?}: {run:?}");
        assert!(
            run.stderr.contains("tls") || run.stderr.contains("ca-file"),
            "{run:?}"
        );
    }
}

/// Issue 11 item 8: a certificate, key or CA file that cannot be read is
/// EX_NOINPUT (66); one that is read but unusable is EX_CONFIG (78); both
/// name the option and the file, and nothing is bound.
#[test]
fn unreadable_or_unusable_tls_files_exit_66_or_78() {
    let dir = TempDir::new("tlsfiles");
    let junk = write_file(dir.path(), "junk.pem", b"not a certificate\n");
    let junk = junk.to_str().expect("utf-8");
    let missing = dir.path().join("missing.pem");
    let missing = missing.to_str().expect("utf-8");
    let port = ["--listen", "127.0.0.1:0", "--spool"];
    let spool = dir.path().join("spool");
    let spool = spool.to_str().expect("utf-8");
    for (args, code, needle) in [
        (vec!["--tls-cert", missing, "--tls-key", junk], 66, missing),
        (vec!["--tls-cert", junk, "--tls-key", missing], 66, missing),
        (vec!["--tls-cert", junk, "--tls-key", junk], 78, junk),
        (
            vec!["--outbound-tls", "verify", "--ca-file", missing],
            66,
            missing,
        ),
        (
            vec!["--outbound-tls", "verify", "--ca-file", junk],
            78,
            junk,
        ),
    ] {
        let mut all = vec!["serve"];
        all.extend(port);
        all.push(spool);
        all.extend(&args);
        let run = run_cli(&all, Duration::from_secs(10));
        assert_eq!(run.code, Some(code), "{args:?}: {run:?}");
        assert!(run.stderr.contains(needle), "{args:?}: {run:?}");
        assert!(!run.stdout.contains("listening"), "{args:?}: {run:?}");
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

// ---------------------------------------------------------------------
// Outbound: STARTTLS to the next hop
// ---------------------------------------------------------------------

/// A relay that delivers everything to `next` with `extra` options.
fn sender_relay(next: std::net::SocketAddr, extra: &[&str]) -> Relay {
    let mut args = vec![
        "--no-dns".to_string(),
        "--route".into(),
        format!("*=127.0.0.1:{}", next.port()),
        "--retry-min".into(),
        "1s".into(),
        "--retry-max".into(),
        "1s".into(),
        "--delivery-timeout".into(),
        "10s".into(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    Relay::start(&strs(&args))
}

fn submit(relay: &Relay, subject: &str) -> String {
    let mut t = relay.session();
    let id = t.send_mail(
        "s@origin.example",
        &["r@dest.example"],
        format!("Subject: {subject}\r\n\r\nbody\r\n").as_bytes(),
    );
    t.cmd("QUIT", 221);
    id
}

/// The `tls=` of the relay's `ID relay=... tls=...` line, once there.
fn delivery_tls(relay: &Relay, id: &str) -> String {
    let mut found = None;
    wait_until(LIMIT, || {
        found = relay
            .log()
            .lines()
            .find(|l| l.contains(&format!("{id} relay=")) && l.contains(" tls="))
            .and_then(|l| l.split(" tls=").nth(1))
            .map(|s| s.trim().to_string());
        found.is_some()
    });
    found.unwrap_or_else(|| panic!("no delivery line for {id}:\n{}", relay.log()))
}

#[test]
fn outbound_may_uses_starttls_when_offered() {
    let Some(certs) = Certs::make("outbound_may_uses_starttls_when_offered") else {
        return;
    };
    let next = tls_relay(&certs, &[]);
    let relay = sender_relay(next.addr(), &[]);
    let id = submit(&relay, "opportunistic");
    let tls = delivery_tls(&relay, &id);
    assert!(tls.starts_with("TLSv1.3/TLS13_"), "{tls}");
    let mut ids = Vec::new();
    assert!(wait_until(LIMIT, || {
        ids = queued_ids(next.spool());
        !ids.is_empty()
    }));
    let received = received_of(&next, &ids[0]);
    assert!(
        received.contains("from relay.test") && received.contains("with ESMTPS"),
        "{received}"
    );
}

#[test]
fn outbound_without_starttls_offered_is_plaintext_under_may() {
    let sink = Sink::start();
    let relay = sender_relay(sink.addr(), &[]);
    let id = submit(&relay, "plain");
    assert!(sink.wait_for(1, LIMIT), "{}", relay.log());
    assert_eq!(delivery_tls(&relay, &id), "none");
}

#[test]
fn outbound_encrypt_defers_when_starttls_is_not_offered() {
    let sink = Sink::start();
    let relay = sender_relay(sink.addr(), &["--outbound-tls", "encrypt"]);
    let id = submit(&relay, "must be encrypted");
    let (_, _, reply) = wait_rcpt_state(&relay, &id, "deferred", LIMIT);
    assert!(reply.contains("4.7.4"), "{reply}");
    assert!(reply.contains("STARTTLS"), "{reply}");
    assert_eq!(sink.count(), 0, "nothing in plaintext");
}

#[test]
fn outbound_encrypt_takes_any_certificate() {
    let Some(certs) = Certs::make("outbound_encrypt_takes_any_certificate") else {
        return;
    };
    let next = tls_relay(&certs, &[]);
    let relay = sender_relay(next.addr(), &["--outbound-tls", "encrypt"]);
    let id = submit(&relay, "encrypted");
    assert!(delivery_tls(&relay, &id).starts_with("TLSv1.3/"));
    assert!(wait_until(LIMIT, || !queued_ids(next.spool()).is_empty()));
}

#[test]
fn outbound_verify_checks_the_certificate() {
    let Some(certs) = Certs::make("outbound_verify_checks_the_certificate") else {
        return;
    };
    let next = tls_relay(&certs, &[]);
    // our CA: the certificate names 127.0.0.1, the route's host
    let ca = certs.ca.display().to_string();
    let good = sender_relay(next.addr(), &["--outbound-tls", "verify", "--ca-file", &ca]);
    let id = submit(&good, "verified");
    assert!(delivery_tls(&good, &id).starts_with("TLSv1.3/"));
    assert!(wait_until(LIMIT, || !queued_ids(next.spool()).is_empty()));

    // another CA (this one signed nothing we present): refused, deferred
    let Some(other) = Certs::make("outbound_verify_checks_the_certificate") else {
        return;
    };
    let other_ca = other.ca.display().to_string();
    let bad = sender_relay(
        next.addr(),
        &["--outbound-tls", "verify", "--ca-file", &other_ca],
    );
    let id = submit(&bad, "not verified");
    let (_, _, reply) = wait_rcpt_state(&bad, &id, "deferred", LIMIT);
    assert!(
        reply.contains("4.7.5") && reply.contains("handshake"),
        "{reply}"
    );
}

#[test]
fn outbound_tls_options_are_checked() {
    for args in [
        vec!["serve", "--outbound-tls", "sometimes"],
        vec!["serve", "--ca-file", "/nonexistent"],
        // an unreadable --ca-file under verify: 66, see
        // unreadable_or_unusable_tls_files_exit_66_or_78
    ] {
        let run = run_cli(&args, Duration::from_secs(10));
        assert_eq!(run.code, Some(64), "{args:?}: {run:?}");
    }
}

/// A next hop that offers STARTTLS and then breaks the handshake (220,
/// then garbage); without STARTTLS it takes the message in plaintext.
/// Returns its address and the count of messages it took.
fn handshake_breaker() -> (
    std::net::SocketAddr,
    std::sync::Arc<std::sync::atomic::AtomicUsize>,
) {
    use std::io::{BufRead, BufReader};
    use std::sync::atomic::{AtomicUsize, Ordering};
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = l.local_addr().expect("addr");
    let taken = std::sync::Arc::new(AtomicUsize::new(0));
    let counter = taken.clone();
    std::thread::spawn(move || {
        for s in l.incoming().take(20) {
            let Ok(s) = s else { continue };
            let counter = counter.clone();
            std::thread::spawn(move || {
                let _ = s.set_read_timeout(Some(Duration::from_secs(20)));
                let mut w = match s.try_clone() {
                    Ok(w) => w,
                    Err(_) => return,
                };
                let mut r = BufReader::new(s);
                let _ = w.write_all(b"220 breaker.test ESMTP\r\n");
                let mut in_data = false;
                loop {
                    let mut line = String::new();
                    if r.read_line(&mut line).unwrap_or(0) == 0 {
                        return;
                    }
                    let up = line.trim_end().to_ascii_uppercase();
                    let reply: &[u8] = if in_data {
                        if up == "." {
                            in_data = false;
                            counter.fetch_add(1, Ordering::SeqCst);
                            b"250 2.0.0 taken\r\n"
                        } else {
                            continue;
                        }
                    } else if up.starts_with("EHLO") {
                        b"250-breaker.test\r\n250 STARTTLS\r\n"
                    } else if up == "STARTTLS" {
                        let _ = w.write_all(b"220 2.0.0 go ahead\r\n");
                        let _ = w.write_all(b"this is not a TLS record\r\n");
                        return;
                    } else if up == "DATA" {
                        in_data = true;
                        b"354 go\r\n"
                    } else if up == "QUIT" {
                        let _ = w.write_all(b"221 bye\r\n");
                        return;
                    } else {
                        b"250 2.0.0 ok\r\n"
                    };
                    let _ = w.write_all(reply);
                }
            });
        }
    });
    (addr, taken)
}

#[test]
fn outbound_may_falls_back_to_plaintext_after_a_failed_handshake() {
    let (addr, taken) = handshake_breaker();
    let relay = sender_relay(addr, &[]);
    let id = submit(&relay, "fallback");
    assert!(
        wait_until(LIMIT, || taken.load(std::sync::atomic::Ordering::SeqCst)
            == 1),
        "{}",
        relay.log()
    );
    assert_eq!(delivery_tls(&relay, &id), "none");
    assert!(relay.log().contains("again without TLS"), "{}", relay.log());

    // under encrypt the same host means: deferred, nothing sent
    let (addr, taken) = handshake_breaker();
    let strict = sender_relay(addr, &["--outbound-tls", "encrypt"]);
    let id = submit(&strict, "no fallback");
    let (_, _, reply) = wait_rcpt_state(&strict, &id, "deferred", LIMIT);
    assert!(reply.contains("4.7.5"), "{reply}");
    assert_eq!(taken.load(std::sync::atomic::Ordering::SeqCst), 0);
}

/// Postfix as the TLS server (smtpd_tls_security_level = may): smtp-relay
/// → Postfix → our sink, with our default `--outbound-tls may` and then
/// with `verify` against the test CA.
#[test]
fn postfix_as_tls_server() {
    let test = "postfix_as_tls_server";
    if !postfix_usable(test) {
        return;
    }
    let Some(certs) = Certs::make(test) else {
        return;
    };
    let sink = Sink::start();
    let postfix = PostfixInstance::start(
        sink.addr().port(),
        &format!(
            "smtpd_tls_security_level = may\nsmtpd_tls_cert_file = {}\nsmtpd_tls_key_file = {}\nsmtpd_tls_loglevel = 1\nsmtpd_tls_received_header = yes\n",
            certs.cert.display(),
            certs.key.display()
        ),
    );
    let next = std::net::SocketAddr::from(([127, 0, 0, 1], postfix.port));
    let ca = certs.ca.display().to_string();
    for (n, extra) in [vec![], vec!["--outbound-tls", "verify", "--ca-file", &ca]]
        .into_iter()
        .enumerate()
    {
        let relay = sender_relay(next, &extra);
        let id = submit(&relay, &format!("to postfix {n}"));
        assert!(
            sink.wait_for(n + 1, LIMIT),
            "nothing through Postfix:\n{}\n{}",
            relay.log(),
            postfix.maillog()
        );
        let tls = delivery_tls(&relay, &id);
        assert!(tls.starts_with("TLSv1."), "{extra:?}: {tls}");
    }
    let log = postfix.maillog();
    assert!(
        log.matches("TLS connection established from").count() >= 2,
        "{log}"
    );
    for m in sink.messages() {
        let text = String::from_utf8_lossy(&m.data).to_string();
        // Postfix's own Received header records the TLS session with us
        assert!(text.contains("(using TLSv1."), "{text}");
        assert!(text.contains("from relay.test"), "{text}");
    }
}
