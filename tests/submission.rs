//! Issue 12, inbound: listeners with a mode (`--listen-tls`, RFC 8314
//! implicit TLS; `--submission` and `--submission-tls`, RFC 6409), AUTH
//! before MAIL, sender ownership (`--sender-map`), the Date/Message-ID
//! fix-ups, the AUTH user in the envelope and the log; with a raw client,
//! swaks (`--tls`, `--tlsc`) and msmtp as real peers.
//!
//! Every relay here also lists loopback as a relay network, so a refusal
//! on a submission listener shows that relay networks do not count there.

mod common;
mod tlsutil;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::*;
use smtp_relay::auth::encode_base64;
use tlsutil::*;

/// The listeners of [`relay`], by the order `Relay::addrs` gives them.
struct Listeners {
    plain: SocketAddr,
    smtps: SocketAddr,
    submission: SocketAddr,
    submissions: SocketAddr,
}

fn listeners(relay: &Relay) -> Listeners {
    let a = relay.addrs();
    assert_eq!(a.len(), 4, "{a:?}");
    Listeners {
        plain: a[0],
        smtps: a[1],
        submission: a[2],
        submissions: a[3],
    }
}

/// alice (a plain name) and bob@example.org (an address), in `dir`.
fn password_file(dir: &Path) -> PathBuf {
    let f = dir.join("passwd");
    assert_eq!(passwd(&f, "alice", "alice-secret-1\n").0, Some(0));
    assert_eq!(passwd(&f, "bob@example.org", "bob pass\n").0, Some(0));
    f
}

/// A receive-only relay with one listener of each kind, `certs`, the
/// password file and `extra` options.
fn relay(certs: &Certs, passwd: &Path, extra: &[&str]) -> Relay {
    let mut args: Vec<String> = certs.relay_args();
    for a in [
        "--auth-file",
        passwd.to_str().expect("utf-8"),
        "--relay-net",
        "127.0.0.0/8",
        "--listen-tls",
        "127.0.0.1:0",
        "--submission",
        "127.0.0.1:0",
        "--submission-tls",
        "127.0.0.1:0",
    ] {
        args.push(a.into());
    }
    args.extend(extra.iter().map(|s| s.to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    Relay::receive_only(&args)
}

/// What most tests start with: certificates, a password file and a relay
/// with one listener of each kind. Bind `dir` (to `_dir` at least): the
/// relay reads the password file in it at each AUTH.
struct Setup {
    certs: Certs,
    dir: TempDir,
    relay: Relay,
    l: Listeners,
}

impl Setup {
    /// `None` (skipped) without openssl, outside CI.
    fn start(test: &str, extra: &[&str]) -> Option<Setup> {
        let certs = Certs::make(test)?;
        let dir = TempDir::new("submission");
        let pw = password_file(dir.path());
        let relay = relay(&certs, &pw, extra);
        let l = listeners(&relay);
        Some(Setup {
            certs,
            dir,
            relay,
            l,
        })
    }
}

fn plain(user: &str, pass: &str) -> String {
    encode_base64(format!("\0{user}\0{pass}").as_bytes())
}

/// Connects to an implicit-TLS listener: the handshake first, then 220.
fn connect_tls(addr: SocketAddr, certs: &Certs) -> Smtp {
    let mut s = Smtp::connect(addr);
    s.handshake(certs, "relay.test");
    s.expect(220);
    s
}

const NO_DATE: &[u8] = b"From: alice@example.org\r\nSubject: no date\r\n\r\nhello\r\n";

/// The header section of a stored message (our Received included).
fn header_of(spool: &Path, id: &str) -> String {
    let msg = String::from_utf8_lossy(&read_msg(spool, id)).to_string();
    msg.split("\r\n\r\n").next().unwrap_or("").to_string()
}

#[test]
fn submission_listener_requires_auth_over_tls_and_checks_the_sender() {
    let test = "submission_listener_requires_auth_over_tls_and_checks_the_sender";
    let map = TempDir::new("sendermap");
    write_file(
        map.path(),
        "senders",
        b"alice: alice@example.org, @alice.example\n",
    );
    let map = map.path().join("senders");
    let Some(Setup {
        certs,
        relay,
        l,
        dir: _dir,
    }) = Setup::start(test, &["--sender-map", map.to_str().expect("utf-8")])
    else {
        return;
    };

    // before TLS: no AUTH offered (loopback or not), AUTH refused with
    // 538, MAIL refused with 530 even from a relay network
    let (mut s, ehlo) = Smtp::greet(l.submission);
    assert!(
        ehlo.contains("STARTTLS") && !ehlo.contains("AUTH"),
        "{ehlo}"
    );
    assert!(s
        .cmd(
            &format!("AUTH PLAIN {}", plain("alice", "alice-secret-1")),
            538
        )
        .starts_with("5.7.11"));
    let r = s.cmd("MAIL FROM:<alice@example.org>", 530);
    assert_eq!(r, "5.7.0 Authentication required");
    let ehlo = s.starttls(&certs);
    assert!(ehlo.contains("AUTH PLAIN LOGIN"), "{ehlo}");
    assert_eq!(
        s.cmd("MAIL FROM:<x@dest.example>", 530),
        "5.7.0 Authentication required"
    );
    s.cmd(
        &format!("AUTH PLAIN {}", plain("alice", "alice-secret-1")),
        235,
    );
    let r = s.cmd("MAIL FROM:<ceo@bigbank.test>", 553);
    assert_eq!(r, "5.7.1 Sender address rejected: not owned by user alice");
    assert!(s
        .cmd("MAIL FROM:<someone@Alice.example>", 250)
        .starts_with("2.1.0"));
    s.cmd("RSET", 250);
    // fix-ups: Date and Message-ID added at the top, after our Received
    let id = s.send_mail("alice@example.org", &["r@dest.example"], NO_DATE);
    let header = header_of(relay.spool(), &id);
    let after_received: Vec<&str> = header
        .lines()
        .skip_while(|l| l.starts_with("Received:") || l.starts_with('\t'))
        .collect();
    assert!(after_received[0].starts_with("Date: "), "{header}");
    assert!(
        after_received[1].starts_with("Message-ID: <")
            && after_received[1].ends_with("@relay.test>"),
        "{header}"
    );
    assert!(after_received[1].contains(&id), "{header}");
    assert_eq!(after_received[2], "From: alice@example.org", "{header}");
    assert!(header.contains("with ESMTPSA id"), "{header}");
    // the AUTH user in the envelope and the queued log line
    assert_eq!(EnvFile::load(relay.spool(), &id).get("auth"), "alice");
    let log = relay.log();
    let queued = log
        .lines()
        .find(|l| l.contains(&format!("{id} queued")))
        .unwrap_or_else(|| panic!("{log}"));
    assert!(queued.contains(" auth=alice"), "{queued}");
    // and `queue show` names the user
    let spool = relay.spool().to_str().expect("utf-8");
    let show = run_cli(&["queue", "show", &id, "--spool", spool], LIMIT);
    assert!(show.stdout.contains("\nauth:      alice\n"), "{show:?}");
    // present fields are left alone
    let dated = b"Date: Mon, 1 Jan 2024 00:00:00 +0000\r\nMessage-ID: <mine@example.org>\r\nSubject: dated\r\n\r\nhi\r\n";
    let id2 = s.send_mail("alice@example.org", &["r@dest.example"], dated);
    let header = header_of(relay.spool(), &id2);
    assert_eq!(header.matches("\nDate:").count(), 1, "{header}");
    assert_eq!(header.matches("\nMessage-ID:").count(), 1, "{header}");
    assert!(
        header.contains("\nMessage-ID: <mine@example.org>"),
        "{header}"
    );
    s.cmd("QUIT", 221);

    // positive control: the plain listener still lets a relay network
    // relay without AUTH, and does no fix-ups
    let mut t = Talk::greet(l.plain);
    let id3 = t.send_mail("x@origin.example", &["r@dest.example"], NO_DATE);
    assert!(!header_of(relay.spool(), &id3).contains("Message-ID:"));
    assert_eq!(
        EnvFile::parse(&read_env(relay.spool(), &id3))
            .all("auth")
            .len(),
        0
    );
}

/// `--sender-check-from`: the From: addresses must be the user's too,
/// refused at the end of the data (DATA and BDAT) with 550 5.7.1.
#[test]
fn the_from_header_is_checked_when_asked() {
    let test = "the_from_header_is_checked_when_asked";
    let Some(Setup {
        certs,
        relay,
        l,
        dir: _dir,
    }) = Setup::start(test, &["--sender-check-from"])
    else {
        return;
    };
    let (mut s, _) = Smtp::greet(l.submission);
    s.starttls(&certs);
    s.cmd(
        &format!("AUTH PLAIN {}", plain("bob@example.org", "bob pass")),
        235,
    );
    let owned = b"From: Bob <bob@example.org>\r\nSubject: mine\r\n\r\nhi\r\n";
    s.send_mail("bob@example.org", &["r@dest.example"], owned);
    for from in [
        "\"Bob\" <ceo@bigbank.test>",
        "bob@example.org, ceo@bigbank.test",
        "Bob <bob@example.org>,\r\n ceo@bigbank.test",
    ] {
        s.cmd("MAIL FROM:<bob@example.org>", 250);
        s.cmd("RCPT TO:<r@dest.example>", 250);
        s.cmd("DATA", 354);
        s.send_raw(format!("From: {from}\r\nSubject: not mine\r\n\r\nhi\r\n.\r\n").as_bytes());
        let r = s.expect(550);
        assert_eq!(
            r,
            "5.7.1 From: header address rejected: not owned by user bob@example.org"
        );
    }
    // BDAT alike
    let msg = b"From: ceo@bigbank.test\r\n\r\nhi\r\n";
    s.cmd("MAIL FROM:<bob@example.org>", 250);
    s.cmd("RCPT TO:<r@dest.example>", 250);
    s.send(&format!("BDAT {} LAST", msg.len()));
    s.send_raw(msg);
    s.expect(550);
    // only the owned message was queued
    assert_eq!(queued_ids(relay.spool()).len(), 1);
}

#[test]
fn without_a_map_a_submission_user_owns_its_name_and_fixups_can_be_off() {
    let test = "without_a_map_a_submission_user_owns_its_name_and_fixups_can_be_off";
    let extra = ["--submission-fixups", "no", "--submission-plaintext-auth"];
    let Some(Setup {
        relay,
        l,
        dir: _dir,
        ..
    }) = Setup::start(test, &extra)
    else {
        return;
    };
    let log = relay.log();
    assert!(log.contains("submission without --sender-map"), "{log}");
    // --submission-plaintext-auth: AUTH offered before TLS
    let (mut s, ehlo) = Smtp::greet(l.submission);
    assert!(ehlo.contains("AUTH PLAIN LOGIN"), "{ehlo}");
    s.cmd(
        &format!("AUTH PLAIN {}", plain("bob@example.org", "bob pass")),
        235,
    );
    assert!(s
        .cmd("MAIL FROM:<ceo@bigbank.test>", 553)
        .contains("bob@example.org"));
    let id = s.send_mail("Bob@example.org", &["r@dest.example"], NO_DATE);
    assert!(!header_of(relay.spool(), &id).contains("Message-ID:"));
    // a user whose name is not an address owns no sender but <>
    let (mut s, _) = Smtp::greet(l.submission);
    s.cmd(
        &format!("AUTH PLAIN {}", plain("alice", "alice-secret-1")),
        235,
    );
    s.cmd("MAIL FROM:<alice@example.org>", 553);
    s.cmd("MAIL FROM:<>", 250);
}

/// A client that speaks SMTP in plaintext first: what it got back before
/// the server closed (a TLS alert at most, never a greeting).
fn plaintext_client(addr: SocketAddr) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect_timeout(&addr, LIMIT).expect("connect");
    s.set_read_timeout(Some(LIMIT)).expect("timeout");
    s.write_all(b"EHLO plaintext.test\r\n").expect("write");
    let mut got = Vec::new();
    // ends at EOF (or a reset): a server that kept waiting would fail here
    match s.read_to_end(&mut got) {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
        Err(e) => panic!("connection not closed: {e}; got {got:?}"),
    }
    String::from_utf8_lossy(&got).to_string()
}

#[test]
fn implicit_tls_listeners_and_a_plaintext_client() {
    let test = "implicit_tls_listeners_and_a_plaintext_client";
    let Some(Setup {
        certs,
        relay,
        l,
        dir: _dir,
    }) = Setup::start(test, &[])
    else {
        return;
    };

    // a plaintext client on the implicit-TLS port: no greeting, the
    // connection ends (handshake failure), the server keeps serving
    for addr in [l.smtps, l.submissions] {
        let got = plaintext_client(addr);
        assert!(!got.contains("220"), "{got:?}");
    }
    assert!(
        wait_until(Duration::from_secs(10), || relay
            .log()
            .contains("TLS handshake failed")),
        "{}",
        relay.log()
    );

    // smtps: TLS first, no STARTTLS offered, relay rules of a plain
    // listener (loopback is a relay network here)
    let mut s = connect_tls(l.smtps, &certs);
    let ehlo = s.cmd("EHLO client.test", 250);
    assert!(!ehlo.contains("STARTTLS"), "{ehlo}");
    s.cmd("STARTTLS", 503);
    let id = s.send_mail("x@origin.example", &["r@dest.example"], NO_DATE);
    let header = header_of(relay.spool(), &id);
    assert!(header.contains("with ESMTPS id"), "{header}");
    assert!(tls_in_log(&relay.log(), &id).is_some_and(|t| t.starts_with("TLSv1.")));

    // submissions: TLS first, AUTH offered, required
    let mut s = connect_tls(l.submissions, &certs);
    let ehlo = s.cmd("EHLO client.test", 250);
    assert!(
        ehlo.contains("AUTH PLAIN LOGIN") && !ehlo.contains("STARTTLS"),
        "{ehlo}"
    );
    s.cmd("MAIL FROM:<bob@example.org>", 530);
    s.cmd(
        &format!("AUTH PLAIN {}", plain("bob@example.org", "bob pass")),
        235,
    );
    let id = s.send_mail("bob@example.org", &["r@dest.example"], NO_DATE);
    let header = header_of(relay.spool(), &id);
    assert!(header.contains("with ESMTPSA id"), "{header}");
    assert!(header.contains("\nMessage-ID: <"), "{header}");
    assert_eq!(
        EnvFile::load(relay.spool(), &id).get("auth"),
        "bob@example.org"
    );
}

/// RFC 8314 §3.3 listeners: a client that connects and says nothing is
/// dropped once `--timeout` has passed in the handshake.
#[test]
fn a_silent_client_on_an_implicit_tls_port_is_dropped_after_the_timeout() {
    let test = "a_silent_client_on_an_implicit_tls_port_is_dropped_after_the_timeout";
    let Some(Setup {
        relay,
        l,
        dir: _dir,
        ..
    }) = Setup::start(test, &["--timeout", "2s"])
    else {
        return;
    };
    let started = std::time::Instant::now();
    let mut s = std::net::TcpStream::connect(l.smtps).expect("connect");
    s.set_read_timeout(Some(LIMIT)).expect("timeout");
    let mut got = Vec::new();
    let _ = std::io::Read::read_to_end(&mut s, &mut got);
    let took = started.elapsed();
    assert!(got.is_empty(), "{got:?}");
    assert!(
        took >= Duration::from_millis(1500) && took < Duration::from_secs(20),
        "{took:?}"
    );
    assert!(
        wait_until(Duration::from_secs(5), || relay
            .log()
            .contains("TLS handshake failed")),
        "{}",
        relay.log()
    );
}

#[test]
fn listener_options_need_their_parts() {
    for (args, want) in [
        (
            vec!["serve", "--listen-tls", "127.0.0.1:0"],
            "--listen-tls 127.0.0.1:0 needs --tls-cert and --tls-key",
        ),
        (
            vec!["serve", "--submission", "127.0.0.1:0"],
            "--submission 127.0.0.1:0 needs --auth-file",
        ),
        (
            vec!["serve", "--submission-fixups", "maybe"],
            "--submission-fixups",
        ),
    ] {
        let run = run_cli(&args, Duration::from_secs(20));
        assert_eq!(run.code, Some(64), "{args:?}: {run:?}");
        assert!(run.stderr.contains(want), "{args:?}: {run:?}");
    }
    // a sender map that cannot be read, or with a bad line, stops the start
    let dir = TempDir::new("badmap");
    let pw = password_file(dir.path());
    let bad = write_file(dir.path(), "senders", b"alice alice@example.org\n");
    let spool = dir.path().join("spool");
    for (map, code, want) in [
        (dir.path().join("missing"), 66, "--sender-map"),
        (bad, 78, "line 1"),
    ] {
        let run = run_cli(
            &[
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--spool",
                spool.to_str().unwrap(),
                "--auth-file",
                pw.to_str().unwrap(),
                "--sender-map",
                map.to_str().unwrap(),
            ],
            Duration::from_secs(20),
        );
        assert_eq!(run.code, Some(code), "{run:?}");
        assert!(run.stderr.contains(want), "{run:?}");
    }
}

/// swaks as bob@example.org with `mech`, sending as `from`.
fn swaks_as_bob(bin: &Path, port: u16, tls: &str, from: &str, mech: &str) -> CliRun {
    let auth = [
        "--auth",
        mech,
        "--auth-user",
        "bob@example.org",
        "--auth-password",
        "bob pass",
    ];
    swaks(bin, port, &[&[tls, "--from", from][..], &auth].concat())
}

fn swaks(bin: &Path, port: u16, extra: &[&str]) -> CliRun {
    let port = port.to_string();
    let mut args = vec![
        "--server",
        "127.0.0.1",
        "--port",
        &port,
        "--helo",
        "swaks.test",
        "--to",
        "r@dest.example",
        "--timeout",
        "20",
    ];
    args.extend_from_slice(extra);
    run_tool(Command::new(bin).args(&args), LIMIT)
}

/// swaks `--tlsc` (implicit TLS) against the 465-style listener and
/// `--tls` (STARTTLS) against the 587-style one, with AUTH PLAIN and
/// LOGIN; without AUTH both refuse.
#[test]
fn swaks_against_submission_and_submissions() {
    let test = "swaks_against_submission_and_submissions";
    let Some(bin) = require_tool("swaks", test) else {
        return;
    };
    let Some(Setup {
        relay,
        l,
        dir: _dir,
        ..
    }) = Setup::start(test, &[])
    else {
        return;
    };
    for (addr, tls, mech) in [
        (l.submissions, "--tlsc", "PLAIN"),
        (l.submissions, "--tlsc", "LOGIN"),
        (l.submission, "--tls", "PLAIN"),
        (l.submission, "--tls", "LOGIN"),
    ] {
        let run = swaks_as_bob(&bin, addr.port(), tls, "bob@example.org", mech);
        assert_eq!(run.code, Some(0), "{tls} {mech}: {run:?}");
        let id = run
            .stdout
            .lines()
            .find_map(queued_id)
            .unwrap_or_else(|| panic!("{run:?}"));
        assert!(header_of(relay.spool(), &id).contains("with ESMTPSA"));
        assert_eq!(
            EnvFile::load(relay.spool(), &id).get("auth"),
            "bob@example.org"
        );
        // someone else's address
        let run = swaks_as_bob(&bin, addr.port(), tls, "ceo@bigbank.test", mech);
        assert_ne!(run.code, Some(0), "{run:?}");
        assert!(run.stdout.contains("553 5.7.1"), "{run:?}");
        // no AUTH at all
        let run = swaks(&bin, addr.port(), &[tls, "--from", "bob@example.org"]);
        assert_ne!(run.code, Some(0), "{run:?}");
        assert!(run.stdout.contains("530 5.7.0"), "{run:?}");
    }
}

/// msmtp (GnuTLS) as a mail client of both listeners, verifying our
/// certificate against the test CA: `tls_starttls off` for 465-style,
/// STARTTLS for 587-style.
#[test]
fn msmtp_against_submission_and_submissions() {
    let test = "msmtp_against_submission_and_submissions";
    let Some(bin) = require_tool("msmtp", test) else {
        return;
    };
    let Some(Setup {
        certs,
        dir,
        relay,
        l,
    }) = Setup::start(test, &[])
    else {
        return;
    };
    for (addr, starttls) in [(l.submissions, "off"), (l.submission, "on")] {
        let conf = format!(
            "defaults\nauth on\ntls on\ntls_trust_file {}\n\naccount test\nhost 127.0.0.1\nport {}\n\
             tls_starttls {starttls}\nuser bob@example.org\npassword bob pass\nfrom bob@example.org\n\
             domain msmtp.test\n\naccount default : test\n",
            certs.ca.display(),
            addr.port()
        );
        let conf = write_file(dir.path(), &format!("msmtprc-{starttls}"), conf.as_bytes());
        std::fs::set_permissions(&conf, std::os::unix::fs::PermissionsExt::from_mode(0o600))
            .expect("chmod msmtprc");
        let msg = write_file(
            dir.path(),
            "msg",
            b"From: bob@example.org\nTo: r@dest.example\nSubject: msmtp\n\nhello from msmtp\n",
        );
        let before = queued_ids(relay.spool());
        // run_tool gives no stdin: the shell redirects the message in
        let run = run_tool(
            Command::new("sh").arg("-c").arg(format!(
                "exec '{}' -C '{}' r@dest.example < '{}'",
                bin.display(),
                conf.display(),
                msg.display()
            )),
            LIMIT,
        );
        assert_eq!(run.code, Some(0), "tls_starttls {starttls}: {run:?}");
        let new: Vec<String> = queued_ids(relay.spool())
            .into_iter()
            .filter(|i| !before.contains(i))
            .collect();
        assert_eq!(new.len(), 1, "{new:?} {run:?}");
        let id = &new[0];
        let header = header_of(relay.spool(), id);
        assert!(header.contains("with ESMTPSA"), "{header}");
        // msmtp sends no Date or Message-ID of its own here? either way
        // there is exactly one of each after the fix-ups
        assert_eq!(header.matches("\nDate:").count(), 1, "{header}");
        assert_eq!(header.matches("\nMessage-ID:").count(), 1, "{header}");
        assert_eq!(
            EnvFile::load(relay.spool(), id).get("auth"),
            "bob@example.org"
        );
        let log = relay.log();
        assert!(
            log.lines()
                .any(|l| l.contains(&format!("{id} queued")) && l.contains(" auth=bob@example.org")),
            "{log}"
        );
    }
}

/// The fenced blocks of the README's "Submission for applications".
fn recipe_blocks() -> Vec<String> {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md"))
        .expect("README.md");
    let start = readme
        .find("### Submission for applications")
        .expect("recipe heading");
    let section = &readme[start..];
    let section = &section[..section.find("\n## ").unwrap_or(section.len())];
    section
        .split("```")
        .skip(1)
        .step_by(2)
        .map(|b| {
            b.split_once('\n')
                .map(|(_, body)| body)
                .unwrap_or("")
                .to_string()
        })
        .collect()
}

/// The file a config block names in its first line (`# PATH`), and the
/// rest.
fn named_file(block: &str) -> (PathBuf, String) {
    let (first, rest) = block.split_once('\n').expect("a first line");
    let path = first.strip_prefix("# ").expect("# PATH first line");
    (PathBuf::from(path), rest.to_string())
}

/// README "Submission for applications", run as written: its shell
/// commands (CA, server certificate, passwd), its config file and sender
/// map, with paths moved into a temporary folder, loopback addresses and
/// free ports; then its swaks lines (587 STARTTLS, 465 implicit TLS) and
/// its msmtprc (verifying the certificate against the recipe's CA).
#[test]
fn readme_submission_recipe_works_as_written() {
    let test = "readme_submission_recipe_works_as_written";
    let Some(_) = require_tool("openssl", test) else {
        return;
    };
    let Some(swaks) = require_tool("swaks", test) else {
        return;
    };
    let Some(msmtp) = require_tool("msmtp", test) else {
        return;
    };
    let blocks = recipe_blocks();
    assert_eq!(blocks.len(), 5, "{blocks:#?}");
    let dir = TempDir::new("recipe");
    let etc = dir.path().join("etc/smtp-relay");
    std::fs::create_dir_all(&etc).expect("mkdir");
    let etc = etc.to_str().expect("utf-8").to_string();
    let (p587, p465) = (unused_port(), unused_port());
    let subst = |text: &str| {
        text.replace("/etc/smtp-relay", &etc)
            .replace("0.0.0.0:587", &format!("127.0.0.1:{p587}"))
            .replace("0.0.0.0:465", &format!("127.0.0.1:{p465}"))
            .replace("--server mail.example.org", "--server 127.0.0.1")
            .replace("--port 587", &format!("--port {p587}"))
            .replace("--port 465", &format!("--port {p465}"))
    };
    // the set-up commands, with our binary first on PATH
    let path = path_with_binary_first();
    let run = run_tool(
        Command::new("sh")
            .arg("-ec")
            .arg(subst(&blocks[0]))
            .env("PATH", &path),
        LIMIT,
    );
    assert_eq!(run.code, Some(0), "{run:?}");
    for block in &blocks[1..3] {
        let (file, text) = named_file(&subst(block));
        std::fs::write(&file, text).expect("write recipe file");
    }
    let conf = format!("{etc}.conf");
    // the test helper adds --listen 127.0.0.1:0, --spool and --hostname
    let relay = Relay::receive_only(&["--config", &conf]);
    for port in [p587, p465] {
        assert!(
            wait_until(LIMIT, || std::net::TcpStream::connect(("127.0.0.1", port))
                .is_ok()),
            "port {port}\n{}",
            relay.log()
        );
    }
    let clients: Vec<String> = subst(&blocks[3]).lines().map(str::to_string).collect();
    assert_eq!(clients.len(), 2, "{clients:?}");
    let swaks_line = |args: &str| {
        // the shell takes the line's quotes as the README's reader would
        run_tool(
            Command::new("sh")
                .arg("-c")
                .arg(format!("exec '{}' {args}", swaks.display())),
            LIMIT,
        )
    };
    for (line, user) in clients.iter().zip(["app@example.org", "alice"]) {
        let args = line.strip_prefix("swaks ").expect("a swaks line");
        let run = swaks_line(args);
        assert_eq!(run.code, Some(0), "{line}: {run:?}");
        let id = run
            .stdout
            .lines()
            .find_map(queued_id)
            .unwrap_or_else(|| panic!("{run:?}"));
        assert_eq!(EnvFile::load(relay.spool(), &id).get("auth"), user);
        assert!(header_of(relay.spool(), &id).contains("with ESMTPSA"));
        // the same user as someone else: refused by the map
        let from = args
            .split("--from ")
            .nth(1)
            .and_then(|r| r.split(' ').next())
            .expect("--from");
        let run = swaks_line(&args.replace(&format!("--from {from}"), "--from ceo@bigbank.test"));
        assert!(run.stdout.contains("553 5.7.1"), "{run:?}");
    }
    // the msmtprc, pointed at loopback: the name the certificate holds
    // is checked with tls_host_override
    let rc = subst(&blocks[4])
        .replace(
            "host mail.example.org",
            "host 127.0.0.1\ntls_host_override mail.example.org",
        )
        .replace("port 465", &format!("port {p465}"));
    let rc = write_file(dir.path(), "msmtprc", rc.as_bytes());
    std::fs::set_permissions(&rc, std::os::unix::fs::PermissionsExt::from_mode(0o600))
        .expect("chmod");
    let msg = write_file(
        dir.path(),
        "msg",
        b"From: app@example.org\nTo: you@example.net\nSubject: recipe\n\nhi\n",
    );
    let run = run_tool(
        Command::new("sh").arg("-c").arg(format!(
            "exec '{}' -C '{}' you@example.net < '{}'",
            msmtp.display(),
            rc.display(),
            msg.display()
        )),
        LIMIT,
    );
    assert_eq!(run.code, Some(0), "{run:?}\n{}", relay.log());
    assert!(relay.log().contains(" auth=app@example.org"));
}
