//! SMTP AUTH (RFC 4954) PLAIN and LOGIN against the real binary: the
//! `passwd` command, the dialogue rules with a raw client, the slow-down
//! and logging of failures, and swaks (`--auth PLAIN/LOGIN`, with and
//! without `-tls`) as the real peer. Relay control in these tests trusts
//! no network (`--relay-net 192.0.2.0/24`), so only AUTH lets a loopback
//! client relay.

mod common;
mod tlsutil;

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use smtp_relay::auth::encode_base64;
use tlsutil::*;

/// `smtp-relay passwd USER --auth-file FILE` with `stdin`.
fn passwd(file: &Path, user: &str, stdin: &str) -> (Option<i32>, String) {
    let mut child = Command::new(BIN)
        .args(["passwd", user, "--auth-file"])
        .arg(file)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn passwd");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(stdin.as_bytes())
        .expect("write password");
    let out = child.wait_with_output().expect("passwd output");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

fn password_file(dir: &Path) -> PathBuf {
    let f = dir.join("passwd");
    assert_eq!(passwd(&f, "alice", "alice-secret-1\n").0, Some(0));
    assert_eq!(passwd(&f, "bob@example.org", "bob pass\n").0, Some(0));
    f
}

fn auth_relay(file: &Path, extra: &[String]) -> Relay {
    let mut args = vec![
        "--auth-file".to_string(),
        file.display().to_string(),
        "--relay-net".into(),
        "192.0.2.0/24".into(),
    ];
    args.extend(extra.iter().cloned());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    Relay::receive_only(&args)
}

fn plain(user: &str, pass: &str) -> String {
    encode_base64(format!("\0{user}\0{pass}").as_bytes())
}

#[test]
fn passwd_writes_a_private_file_and_replaces_entries() {
    let dir = TempDir::new("passwd");
    let f = dir.path().join("passwd");
    let (code, err) = passwd(&f, "alice", "first\n");
    assert_eq!(code, Some(0), "{err}");
    assert!(err.contains("added"), "{err}");
    let mode = std::fs::metadata(&f).expect("file").permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let one = std::fs::read_to_string(&f).expect("read");
    assert!(one.starts_with("alice:$argon2id$"), "{one}");
    assert!(!one.contains("first"), "no plaintext: {one}");
    assert_eq!(passwd(&f, "bob", "x\n").0, Some(0));
    let (code, err) = passwd(&f, "alice", "second\n");
    assert_eq!(code, Some(0));
    assert!(err.contains("replaced"), "{err}");
    let two = std::fs::read_to_string(&f).expect("read");
    assert_eq!(two.lines().count(), 2, "{two}");
    assert_eq!(two.lines().filter(|l| l.starts_with("alice:")).count(), 1);
    assert_ne!(one.lines().next(), two.lines().next(), "new hash");
    // usage errors
    assert_eq!(passwd(&f, "a:b", "x\n").0, Some(64));
    assert_eq!(passwd(&f, "carol", "").0, Some(64));
    assert_eq!(passwd(&f, "carol", "\n").0, Some(64));
}

/// A password file that cannot be read stops the start with EX_NOINPUT
/// (66), one with a bad line with EX_CONFIG (78), naming `--auth-file`.
#[test]
fn a_bad_password_file_stops_the_start() {
    let dir = TempDir::new("badauth");
    let junk = write_file(dir.path(), "junk", b"alice\n");
    let spool = dir.path().join("spool");
    for (file, code) in [(junk.as_path(), 78), (Path::new("/nonexistent/passwd"), 66)] {
        let run = run_cli(
            &[
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--spool",
                spool.to_str().expect("utf-8"),
                "--auth-file",
                file.to_str().expect("utf-8"),
            ],
            Duration::from_secs(10),
        );
        assert_eq!(run.code, Some(code), "{run:?}");
        assert!(run.stderr.contains("--auth-file"), "{run:?}");
    }
}

#[test]
fn auth_dialogue_rules() {
    let dir = TempDir::new("authrules");
    let f = password_file(dir.path());
    let relay = auth_relay(&f, &[]);
    let mut s = Smtp::connect(relay.addr());
    s.expect(220);
    assert!(s.cmd("AUTH PLAIN", 503).starts_with("5.5.1"), "before EHLO");
    let ehlo = s.cmd("EHLO client.test", 250);
    assert!(ehlo.lines().any(|l| l == "AUTH PLAIN LOGIN"), "{ehlo}");
    // unauthenticated: no relaying for this client
    s.cmd("MAIL FROM:<a@origin.example>", 250);
    assert!(s.cmd("RCPT TO:<b@dest.example>", 550).starts_with("5.7.1"));
    assert!(s.cmd("AUTH PLAIN", 503).starts_with("5.5.1"), "in MAIL");
    s.cmd("RSET", 250);
    assert!(s.cmd("AUTH DIGEST-MD5", 504).starts_with("5.5.4"));
    // cancel, and undecodable answers
    s.cmd("AUTH LOGIN", 334);
    assert!(s.cmd("*", 501).starts_with("5.7.0"));
    s.cmd("AUTH PLAIN", 334);
    assert!(s.cmd("not base64!", 501).starts_with("5.5.2"));
    // LOGIN in full
    assert_eq!(s.cmd("AUTH LOGIN", 334), "VXNlcm5hbWU6");
    assert_eq!(s.cmd(&encode_base64(b"alice"), 334), "UGFzc3dvcmQ6");
    assert!(s
        .cmd(&encode_base64(b"alice-secret-1"), 235)
        .starts_with("2.7.0"));
    assert!(s.cmd("AUTH PLAIN", 503).starts_with("5.5.1"), "only once");
    let id = s.send_mail(
        "a@origin.example",
        &["b@dest.example"],
        b"Subject: authenticated\r\n\r\nx\r\n",
    );
    s.cmd("QUIT", 221);
    let (received, _) = split_received(&read_msg(relay.spool(), &id));
    assert!(received.contains("with ESMTPA id"), "{received}");

    // PLAIN with an initial response, a user with an @
    let mut s = Smtp::greet(relay.addr()).0;
    s.cmd(
        &format!("AUTH PLAIN {}", plain("bob@example.org", "bob pass")),
        235,
    );
    s.cmd("QUIT", 221);
}

#[test]
fn failures_are_535_slowed_and_logged_without_the_secret() {
    let dir = TempDir::new("authfail");
    let f = password_file(dir.path());
    let relay = auth_relay(&f, &[]);
    let (mut s, _) = Smtp::greet(relay.addr());
    let secret = "Wr0ng-Pa55word";
    let mut took = Vec::new();
    for user in ["alice", "nobody"] {
        let start = Instant::now();
        let t = s.cmd(&format!("AUTH PLAIN {}", plain(user, secret)), 535);
        took.push(start.elapsed());
        assert_eq!(t, "5.7.8 Authentication credentials invalid");
    }
    // 0.5 s more per failure of the session
    assert!(took[0] >= Duration::from_millis(450), "{took:?}");
    assert!(took[1] >= Duration::from_millis(950), "{took:?}");
    // still able to log in after failures
    s.cmd(
        &format!("AUTH PLAIN {}", plain("alice", "alice-secret-1")),
        235,
    );
    s.cmd("QUIT", 221);
    assert!(wait_until(Duration::from_secs(5), || relay
        .log()
        .contains("auth ok user=alice")));
    let log = relay.log();
    assert!(
        log.contains("auth failed user=alice mechanism=PLAIN failures=1"),
        "{log}"
    );
    assert!(
        log.contains("user=nobody mechanism=PLAIN failures=2"),
        "{log}"
    );
    assert!(
        !log.contains(secret),
        "the password is never logged:\n{log}"
    );
    assert!(!log.contains(&plain("alice", secret)), "{log}");
}

fn swaks_args(relay: &Relay, extra: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = [
        "--server",
        "127.0.0.1",
        "--port",
        &relay.addr().port().to_string(),
        "--helo",
        "swaks.test",
        "--from",
        "s@origin.example",
        "--to",
        "r@dest.example",
        "--timeout",
        "20",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    v.extend(extra.iter().map(|s| s.to_string()));
    v
}

fn swaks(bin: &Path, args: &[String]) -> CliRun {
    run_tool(Command::new(bin).args(args), LIMIT)
}

#[test]
fn swaks_auth_plain_and_login() {
    let test = "swaks_auth_plain_and_login";
    let Some(bin) = require_tool("swaks", test) else {
        return;
    };
    let dir = TempDir::new("swaksauth");
    let f = password_file(dir.path());
    let relay = auth_relay(&f, &[]);
    // without AUTH, relaying is denied
    let run = swaks(&bin, &swaks_args(&relay, &[]));
    assert_ne!(run.code, Some(0), "{run:?}");
    assert!(run.stdout.contains("550 5.7.1"), "{run:?}");
    for mech in ["PLAIN", "LOGIN"] {
        let run = swaks(
            &bin,
            &swaks_args(
                &relay,
                &[
                    "--auth",
                    mech,
                    "--auth-user",
                    "alice",
                    "--auth-password",
                    "alice-secret-1",
                    "--header",
                    &format!("Subject: swaks auth {mech}"),
                ],
            ),
        );
        assert_eq!(run.code, Some(0), "{mech}: {run:?}");
        assert!(run.stdout.contains("235 2.7.0"), "{run:?}");
        let id = run
            .stdout
            .lines()
            .find_map(queued_id)
            .unwrap_or_else(|| panic!("{run:?}"));
        let (received, _) = split_received(&read_msg(relay.spool(), &id));
        assert!(received.contains("with ESMTPA"), "{received}");
    }
    let run = swaks(
        &bin,
        &swaks_args(
            &relay,
            &[
                "--auth",
                "LOGIN",
                "--auth-user",
                "alice",
                "--auth-password",
                "wrong",
            ],
        ),
    );
    assert_ne!(run.code, Some(0), "{run:?}");
    assert!(run.stdout.contains("535 5.7.8"), "{run:?}");
}

#[test]
fn swaks_tls_and_auth() {
    let test = "swaks_tls_and_auth";
    let Some(bin) = require_tool("swaks", test) else {
        return;
    };
    let Some(certs) = Certs::make(test) else {
        return;
    };
    let dir = TempDir::new("swakstlsauth");
    let f = password_file(dir.path());
    let relay = auth_relay(&f, &certs.relay_args());
    for mech in ["PLAIN", "LOGIN"] {
        let run = swaks(
            &bin,
            &swaks_args(
                &relay,
                &[
                    "-tls",
                    "--auth",
                    mech,
                    "--auth-user",
                    "bob@example.org",
                    "--auth-password",
                    "bob pass",
                ],
            ),
        );
        assert_eq!(run.code, Some(0), "{mech}: {run:?}");
        assert!(run.stdout.contains("TLS started"), "{run:?}");
        let id = run
            .stdout
            .lines()
            .find_map(queued_id)
            .unwrap_or_else(|| panic!("{run:?}"));
        let (received, _) = split_received(&read_msg(relay.spool(), &id));
        assert!(received.contains("with ESMTPSA"), "{received}");
    }
    // after STARTTLS the earlier AUTH state is gone (RFC 3207 §4.2)
    let (mut s, _) = Smtp::greet(relay.addr());
    s.cmd(
        &format!("AUTH PLAIN {}", plain("alice", "alice-secret-1")),
        235,
    );
    s.starttls(&certs);
    s.cmd("MAIL FROM:<a@origin.example>", 250);
    assert!(s.cmd("RCPT TO:<b@dest.example>", 550).starts_with("5.7.1"));
    s.cmd("QUIT", 221);
}
