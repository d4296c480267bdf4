//! SIGHUP reload (issue 15 "Reload", issue 13's reloadable tables),
//! against the real binary started with `--config FILE`: a reload under a
//! steady stream of mail that moves the route and renews the certificate
//! loses and refuses nothing; a configuration that does not load is
//! refused whole (logged with its file and line) and the old one stays;
//! each table (access rules, recipient table, sender map, password file,
//! relay networks) changes for new sessions without a restart;
//! `--check-config`'s exit codes; sd_notify RELOADING=1/READY=1.

mod common;
mod tlsutil;

use std::collections::HashSet;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use smtp_relay::auth::encode_base64;
use tlsutil::{Certs, Smtp};

const LIMIT: Duration = Duration::from_secs(30);

/// Replaces `path`'s content at once (write and rename), as an operator's
/// editor or a certificate renewal tool does.
fn replace(path: &Path, text: &[u8]) {
    let tmp = path.with_extension("new");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// Sends SIGHUP and waits for the reload's outcome line (the `n`th of
/// its kind): `Ok(line)` for a reload taken, `Err(line)` for one refused.
fn reload(relay: &Relay) -> Result<String, String> {
    let count = |log: &str| {
        log.lines()
            .filter(|l| l.contains("configuration reloaded from") || l.contains("reload refused"))
            .count()
    };
    let before = count(&relay.log());
    relay.signal("HUP");
    assert!(
        wait_until(LIMIT, || count(&relay.log()) > before),
        "no reload outcome logged:\n{}",
        relay.log()
    );
    let log = relay.log();
    let line = log
        .lines()
        .filter(|l| l.contains("configuration reloaded from") || l.contains("reload refused"))
        .nth(before)
        .unwrap()
        .to_string();
    if line.contains("reload refused") {
        Err(line)
    } else {
        Ok(line)
    }
}

fn route_to(sink: &Sink) -> String {
    format!("*=127.0.0.1:{}", sink.addr().port())
}

/// One message with a unique subject; the reply code to its data (or to
/// the first command refused).
fn try_send(t: &mut Talk, subject: &str) -> u16 {
    for (line, want) in [
        ("MAIL FROM:<a@client.test>".to_string(), 250),
        ("RCPT TO:<b@example.net>".to_string(), 250),
        ("DATA".to_string(), 354),
    ] {
        t.send(&line);
        let (code, _) = t.reply();
        if code != want {
            return code;
        }
    }
    t.send_raw(format!("Subject: {subject}\r\n\r\nbody\r\n.\r\n").as_bytes());
    t.reply().0
}

fn subjects(sink: &Sink) -> Vec<String> {
    sink.messages()
        .iter()
        .filter_map(|m| {
            String::from_utf8_lossy(&m.data)
                .lines()
                .find_map(|l| l.strip_prefix("Subject: ").map(str::to_string))
        })
        .collect()
}

/// The certificate and key files a config names, first `certs`' own.
fn tls_files(dir: &Path, certs: &Certs) -> (PathBuf, PathBuf) {
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::copy(&certs.cert, &cert).unwrap();
    std::fs::copy(&certs.key, &key).unwrap();
    (cert, key)
}

/// A STARTTLS session that trusts only `certs`' CA: its handshake fails
/// (the helper panics) unless the server presents `certs`' certificate.
fn starttls_with(relay: &Relay, certs: &Certs) {
    let (mut c, _) = Smtp::greet(relay.addr());
    c.cmd("EHLO client.test", 250);
    c.starttls(certs);
    c.cmd("QUIT", 221);
}

#[test]
fn reload_under_traffic_moves_the_route_and_renews_the_certificate() {
    let (Some(old), Some(new)) = (Certs::make("reload"), Certs::make("reload")) else {
        return;
    };
    let dir = TempDir::new("reload-traffic");
    let (cert, key) = tls_files(dir.path(), &old);
    let (a, b) = (Sink::start(), Sink::start());
    let conf = dir.path().join("relay.conf");
    let text = |sink: &Sink| {
        format!(
            "no-dns = yes\nroute = {}\ntls-cert = {}\ntls-key = {}\nretry-min = 1s\nretry-max = 1s\n",
            route_to(sink),
            s(&cert),
            s(&key)
        )
    };
    replace(&conf, text(&a).as_bytes());
    let relay = Relay::start(&["--config", s(&conf)]);
    starttls_with(&relay, &old);

    // the stream: N messages from one client thread, a new connection
    // every 10; after half of them it waits for the reload (bounded), so
    // the reload always falls inside the stream
    const N: usize = 200;
    let reloaded = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicUsize::new(0));
    let addr = relay.addr();
    let traffic = {
        let (reloaded, sent) = (reloaded.clone(), sent.clone());
        std::thread::spawn(move || {
            let mut results = Vec::new();
            let mut t = Talk::greet(addr);
            for i in 0..N {
                if i > 0 && i % 10 == 0 {
                    t.cmd("QUIT", 221);
                    t = Talk::greet(addr);
                }
                if i == N / 2 {
                    wait_until(LIMIT, || reloaded.load(Ordering::SeqCst));
                }
                let after = reloaded.load(Ordering::SeqCst);
                results.push((
                    format!("msg-{i}"),
                    try_send(&mut t, &format!("msg-{i}")),
                    after,
                ));
                sent.fetch_add(1, Ordering::SeqCst);
            }
            t.cmd("QUIT", 221);
            results
        })
    };
    // reload once some mail has reached A, while the stream runs
    assert!(wait_until(LIMIT, || a.count() >= 20), "nothing reached A");
    replace(&cert, &std::fs::read(&new.cert).unwrap());
    replace(&key, &std::fs::read(&new.key).unwrap());
    replace(&conf, text(&b).as_bytes());
    let line = reload(&relay).expect("the new configuration loads");
    reloaded.store(true, Ordering::SeqCst);
    assert!(line.contains(s(&conf)) && line.contains("route"), "{line}");
    let during = sent.load(Ordering::SeqCst);
    let results = traffic.join().unwrap();

    let refused: Vec<_> = results.iter().filter(|r| r.1 != 250).collect();
    assert!(refused.is_empty(), "refused during the reload: {refused:?}");
    assert!(
        wait_until(LIMIT, || a.count() + b.count() >= N
            && queue_files(relay.spool()).is_empty()),
        "A {} + B {} of {N}, queue {:?}",
        a.count(),
        b.count(),
        queue_files(relay.spool())
    );
    let (at_a, at_b) = (subjects(&a), subjects(&b));
    let all: HashSet<&String> = at_a.iter().chain(&at_b).collect();
    assert_eq!(all.len(), N, "every accepted message delivered once");
    assert_eq!(at_a.len() + at_b.len(), N, "no duplicates");
    let b_set: HashSet<&String> = at_b.iter().collect();
    for (subject, _, after) in &results {
        if *after {
            assert!(
                b_set.contains(subject),
                "{subject} sent after the reload went to A"
            );
        }
    }
    assert!(!at_a.is_empty() && !at_b.is_empty());
    eprintln!(
        "reload under traffic: {N} messages, reload after {during} sent; {} at A, {} at B, 0 refused, 0 lost",
        at_a.len(),
        at_b.len()
    );
    // a new STARTTLS session sees the renewed certificate
    starttls_with(&relay, &new);
}

#[test]
fn a_configuration_that_does_not_load_is_refused_whole() {
    let Some(certs) = Certs::make("reload-bad") else {
        return;
    };
    let dir = TempDir::new("reload-bad");
    let (cert, key) = tls_files(dir.path(), &certs);
    let (a, b) = (Sink::start(), Sink::start());
    let conf = dir.path().join("relay.conf");
    let good = format!(
        "no-dns = yes\nroute = {}\ntls-cert = {}\ntls-key = {}\n",
        route_to(&a),
        s(&cert),
        s(&key)
    );
    replace(&conf, good.as_bytes());
    let relay = Relay::start(&["--config", s(&conf)]);
    let deliver = |n: usize| {
        let mut t = Talk::greet(relay.addr());
        assert_eq!(try_send(&mut t, &format!("check-{n}")), 250);
        t.cmd("QUIT", 221);
    };

    // a syntax error on line 3; the route on line 2 changed too
    let bad = format!(
        "no-dns = yes\nroute = {}\nthis is not an option\n",
        route_to(&b)
    );
    replace(&conf, bad.as_bytes());
    let line = reload(&relay).unwrap_err();
    assert!(line.contains(" ERROR ") || line.contains("ERROR"), "{line}");
    assert!(
        line.contains(&format!("{}:3:", s(&conf))),
        "file and line: {line}"
    );
    deliver(1);
    assert!(a.wait_for(1, LIMIT), "the old route stays");

    // a certificate that cannot be read, with a new route: neither taken
    let missing = dir.path().join("renewed.pem");
    let text = good
        .replace(s(&cert), s(&missing))
        .replace(&route_to(&a), &route_to(&b));
    replace(&conf, text.as_bytes());
    let line = reload(&relay).unwrap_err();
    assert!(line.contains(s(&missing)), "names the file: {line}");
    // a certificate file that is not one
    std::fs::write(&missing, "not a certificate\n").unwrap();
    let line = reload(&relay).unwrap_err();
    assert!(line.contains("--tls-cert"), "{line}");
    deliver(2);
    assert!(a.wait_for(2, LIMIT), "the old route stays");
    starttls_with(&relay, &certs);
    assert_eq!(b.count(), 0);
    assert!(relay.log().contains("listening on"));

    // fixed: taken
    replace(&conf, good.replace(&route_to(&a), &route_to(&b)).as_bytes());
    reload(&relay).expect("loads");
    deliver(3);
    assert!(b.wait_for(1, LIMIT));
}

fn plain(user: &str, pass: &str) -> String {
    encode_base64(format!("\0{user}\0{pass}").as_bytes())
}

#[test]
fn every_table_reloads_for_new_sessions() {
    let dir = TempDir::new("reload-tables");
    let d = dir.path();
    let access = write_file(d, "access", b"mail @bad.example reject\n");
    let rcpts = write_file(d, "recipients", b"known@example.org\n");
    let senders = write_file(d, "senders", b"alice: alice@example.org\n");
    let (pw1, pw2) = (d.join("passwd1"), d.join("passwd2"));
    assert_eq!(passwd(&pw1, "alice", "first secret\n").0, Some(0));
    assert_eq!(passwd(&pw2, "alice", "second secret\n").0, Some(0));
    let conf = d.join("relay.conf");
    let text = |relay_net: &str, pw: &Path| {
        format!(
            "relay-net = {relay_net}\nrelay-domain = example.org\nrecipients = example.org={}\naccess = {}\n\
             sender-map = {}\nauth-file = {}\nsubmission-plaintext-auth = yes\n",
            s(&rcpts),
            s(&access),
            s(&senders),
            s(pw)
        )
    };
    replace(&conf, text("127.0.0.2/32", &pw1).as_bytes());
    let relay = Relay::receive_only(&["--config", s(&conf), "--submission", "127.0.0.1:0"]);
    let (smtp, submission) = (relay.addrs()[0], relay.addrs()[1]);

    // before: each table's refusal, from a session that stays open
    let mut open = Talk::greet(smtp);
    open.cmd("EHLO client.test", 250);
    let check = |t: &mut Talk, line: &str| {
        t.send(line);
        t.reply().0
    };
    let before = |t: &mut Talk| {
        t.cmd("EHLO client.test", 250);
        let bad = check(t, "MAIL FROM:<x@bad.example>");
        t.cmd("RSET", 250);
        t.cmd("MAIL FROM:<a@client.test>", 250);
        let unknown = check(t, "RCPT TO:<new@example.org>");
        let relaying = check(t, "RCPT TO:<b@example.net>");
        t.cmd("RSET", 250);
        (bad, unknown, relaying)
    };
    let mut t = Talk::greet(smtp);
    assert_eq!(before(&mut t), (550, 550, 550));
    let auth = |pass: &str, sender: &str| {
        let mut t = Talk::greet(submission);
        t.cmd("EHLO client.test", 250);
        let auth = check(&mut t, &format!("AUTH PLAIN {}", plain("alice", pass)));
        let mail = if auth == 235 {
            check(&mut t, &format!("MAIL FROM:<{sender}>"))
        } else {
            0
        };
        (auth, mail)
    };
    assert_eq!(auth("first secret", "alice@example.org"), (235, 250));
    assert_eq!(auth("second secret", "alice@example.org").0, 535);
    assert_eq!(auth("first secret", "ops@example.org"), (235, 553));

    // every file and the config change; one SIGHUP
    replace(&access, b"mail @other.example reject\n");
    replace(&rcpts, b"known@example.org\nnew@example.org\n");
    replace(&senders, b"alice: alice@example.org, ops@example.org\n");
    replace(&conf, text("127.0.0.0/8", &pw2).as_bytes());
    let line = reload(&relay).expect("loads");
    assert!(
        line.contains("relay_nets") && line.contains("auth_file"),
        "{line}"
    );

    let mut t = Talk::greet(smtp);
    t.cmd("EHLO client.test", 250);
    t.cmd("MAIL FROM:<x@bad.example>", 250);
    t.cmd("RCPT TO:<new@example.org>", 250);
    t.cmd("RCPT TO:<b@example.net>", 250);
    t.cmd("QUIT", 221);
    assert_eq!(auth("second secret", "ops@example.org"), (235, 250));
    assert_eq!(auth("first secret", "alice@example.org").0, 535);
    // the session open across the reload finishes on the old settings
    assert_eq!(check(&mut open, "MAIL FROM:<x@bad.example>"), 550);
    open.cmd("QUIT", 221);
}

#[test]
fn check_config_exit_codes() {
    let Some(certs) = Certs::make("check-config") else {
        return;
    };
    let dir = TempDir::new("check-config");
    let conf = dir.path().join("relay.conf");
    let good = format!(
        "tls-cert = {}\ntls-key = {}\naccess = {}\n",
        s(&certs.cert),
        s(&certs.key),
        s(&write_file(
            dir.path(),
            "access",
            b"mail @bad.example reject\n"
        ))
    );
    replace(&conf, good.as_bytes());
    for args in [
        vec!["serve", "--check-config", "--config", s(&conf)],
        vec!["check-config", "--config", s(&conf)],
    ] {
        let run = run_cli(&args, LIMIT);
        assert_eq!(run.code, Some(0), "{args:?}: {run:?}");
        assert!(run.stdout.contains("OK"), "{run:?}");
    }
    let cases = [
        ("route = nonsense\n".to_string(), format!("{}:1:", s(&conf))),
        (
            good.replace(s(&certs.cert), "/nonexistent/cert.pem"),
            "/nonexistent/cert.pem".to_string(),
        ),
        (
            good.replace(s(&certs.key), s(&certs.ca)),
            "--tls-cert".to_string(),
        ),
        (
            format!(
                "access = {}\n",
                s(&write_file(dir.path(), "bad", b"mail x frobnicate\n"))
            ),
            "--access".to_string(),
        ),
    ];
    for (text, want) in cases {
        replace(&conf, text.as_bytes());
        let run = run_cli(&["serve", "--config", s(&conf), "--check-config"], LIMIT);
        assert_eq!(run.code, Some(78), "{text}: {run:?}");
        assert!(run.stderr.contains(&want), "{want} in {run:?}");
    }
}

#[test]
fn sd_notify_reloading_then_ready() {
    let dir = TempDir::new("reload-notify");
    let path = dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&path).unwrap();
    sock.set_read_timeout(Some(LIMIT)).unwrap();
    let recv = || {
        let mut buf = [0u8; 512];
        let n = sock.recv(&mut buf).expect("a notification");
        String::from_utf8_lossy(&buf[..n]).into_owned()
    };
    let relay = Relay::start_env(&["--delivery-workers", "0"], &[("NOTIFY_SOCKET", s(&path))]);
    assert_eq!(recv(), "READY=1");
    reload(&relay).expect("loads");
    let msg = recv();
    let usec = msg
        .strip_prefix("RELOADING=1\nMONOTONIC_USEC=")
        .and_then(|n| n.parse::<u64>().ok());
    assert!(usec.is_some_and(|n| n > 0), "{msg:?}");
    assert_eq!(recv(), "READY=1");
}

#[test]
fn settings_only_a_start_can_apply_are_named_and_kept() {
    let dir = TempDir::new("reload-restart");
    let conf = dir.path().join("relay.conf");
    let pw = dir.path().join("passwd");
    assert_eq!(passwd(&pw, "alice", "secret\n").0, Some(0));
    let pw = format!("auth-file = {}\n", s(&pw));
    replace(
        &conf,
        format!("{pw}workers = 8\nmax-size = 1M\n").as_bytes(),
    );
    let relay = Relay::receive_only(&["--config", s(&conf)]);
    let size = || {
        let mut t = Talk::greet(relay.addr());
        let ehlo = t.cmd("EHLO client.test", 250);
        t.cmd("QUIT", 221);
        ehlo
    };
    assert!(size().contains("SIZE 1048576"));
    let text = format!("{pw}workers = 9\nmax-size = 2M\nsubmission = 127.0.0.1:0\n");
    replace(&conf, text.as_bytes());
    let line = reload(&relay).expect("the rest is taken");
    assert!(line.contains("max_size"), "{line}");
    assert!(size().contains("SIZE 2097152"), "the new size is offered");
    let log = relay.log();
    let warn = log
        .lines()
        .find(|l| l.contains("needs a restart"))
        .unwrap_or_else(|| panic!("no restart warning:\n{log}"));
    assert!(
        warn.contains("WARN") && warn.contains("workers") && warn.contains("submission"),
        "{warn}"
    );
    // no new listener was opened
    assert_eq!(log.matches("listening on").count(), 1, "{log}");
}

#[test]
fn rate_windows_survive_a_reload_that_keeps_their_limits() {
    let dir = TempDir::new("reload-rates");
    let conf = dir.path().join("relay.conf");
    let text = |n: u32, size: &str| {
        format!("relay-net = 127.0.0.1/32\nrate-connections = {n}\nmax-size = {size}\n")
    };
    replace(&conf, text(2, "1M").as_bytes());
    let relay = Relay::receive_only(&["--config", s(&conf)]);
    let greeting = || {
        let mut t = Talk::connect_from("127.0.0.2", relay.addr());
        t.reply().0
    };
    assert_eq!((greeting(), greeting(), greeting()), (220, 220, 421));
    // another setting changed: the window and its count stay
    replace(&conf, text(2, "2M").as_bytes());
    reload(&relay).expect("loads");
    assert_eq!(greeting(), 421, "a reload is no way around a rate limit");
    // the limit changed: a new one applies
    replace(&conf, text(5, "2M").as_bytes());
    reload(&relay).expect("loads");
    assert_eq!(greeting(), 220);
}

/// The first ```sh block of README.md's "Reload" section.
fn readme_recipe() -> String {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md"))
        .expect("README.md");
    let at = readme.find("\n## Reload\n").expect("a Reload section");
    let start = at + readme[at..].find("```sh\n").expect("a recipe") + 6;
    let len = readme[start..].find("```").expect("its end");
    readme[start..start + len].to_string()
}

#[test]
fn readme_reload_recipe_works_as_written() {
    let recipe = readme_recipe();
    assert!(recipe.contains("/etc/smtp-relay.conf"), "{recipe}");
    let dir = TempDir::new("reload-readme");
    let conf = dir.path().join("relay.conf");
    replace(&conf, b"max-size = 1M\n");
    let relay = Relay::receive_only(&["--config", s(&conf)]);
    let bin_dir = Path::new(BIN).parent().unwrap();
    let path = format!(
        "{}:{}",
        bin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let run = |script: &str| {
        run_tool(
            std::process::Command::new("sh")
                .arg("-c")
                .arg(script.replace("/etc/smtp-relay.conf", s(&conf)))
                .env("PATH", &path)
                .env("PID", relay.pid().to_string()),
            LIMIT,
        )
    };
    let reloads = || relay.log().matches("configuration reloaded from").count();

    replace(&conf, b"max-size = 2M\n");
    let ok = run(&recipe);
    assert_eq!(ok.code, Some(0), "{ok:?}");
    assert!(wait_until(LIMIT, || reloads() == 1), "{}", relay.log());

    // a bad file stops the recipe before the signal
    replace(&conf, b"max-size = lots\n");
    let bad = run(&recipe);
    assert_eq!(bad.code, Some(78), "{bad:?}");
    assert!(bad.stderr.contains(&format!("{}:1:", s(&conf))), "{bad:?}");
    // had it been signalled, its refusal would come before the next reload
    replace(&conf, b"max-size = 3M\n");
    assert_eq!(run(&recipe).code, Some(0));
    assert!(wait_until(LIMIT, || reloads() == 2), "{}", relay.log());
    assert!(
        !relay.log().contains("reload refused"),
        "the server was not signalled"
    );
}

/// The same with a real peer: Postfix's smtp-source (the load generator
/// the issue names) sends N messages over 5 sessions while the route is
/// moved from A to B; every message it was given a 250 for is delivered
/// once, at A or at B.
#[test]
fn reload_under_smtp_source_loses_nothing() {
    let test = "reload_under_smtp_source_loses_nothing";
    let Some(source) = require_tool("/usr/sbin/smtp-source", test) else {
        return;
    };
    const N: usize = 500;
    let dir = TempDir::new("reload-source");
    let (a, b) = (Sink::start(), Sink::start());
    let conf = dir.path().join("relay.conf");
    let text = |sink: &Sink| format!("no-dns = yes\nroute = {}\n", route_to(sink));
    replace(&conf, text(&a).as_bytes());
    let relay = Relay::start(&["--config", s(&conf)]);
    let target = format!("127.0.0.1:{}", relay.addr().port());
    let n = N.to_string();
    let started = std::time::Instant::now();
    let load = std::thread::spawn(move || {
        run_tool(
            std::process::Command::new(&source).args([
                "-c",
                "-m",
                &n,
                "-s",
                "5",
                "-M",
                "source.test",
                "-f",
                "sender@example.org",
                "-t",
                "rcpt@example.net",
                &target,
            ]),
            Duration::from_secs(300),
        )
    });
    assert!(wait_until(LIMIT, || a.count() >= 20), "nothing reached A");
    replace(&conf, text(&b).as_bytes());
    reload(&relay).expect("loads");
    let at_reload = a.count();
    let run = load.join().unwrap();
    assert_eq!(run.code, Some(0), "smtp-source: {run:?}");
    assert!(
        wait_until(Duration::from_secs(120), || a.count() + b.count() >= N
            && queue_files(relay.spool()).is_empty()),
        "A {} + B {} of {N}",
        a.count(),
        b.count()
    );
    assert_eq!(a.count() + b.count(), N, "each delivered once");
    assert_eq!(
        relay.log().matches(" queued from=").count(),
        N,
        "{N} acknowledged"
    );
    println!(
        "smtp-source: {N} messages over 5 sessions in {:.2?}, reload after {at_reload} at A: {} at A, {} at B, 0 refused, 0 lost",
        started.elapsed(),
        a.count(),
        b.count()
    );
}
