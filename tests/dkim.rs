//! DKIM signing (issue 14, RFC 6376 and RFC 8463) against the real binary,
//! checked by independent verifiers: dkimpy (`python3-dkim`) and OpenDKIM's
//! `opendkim-testmsg`, both looking the keys up in DNS, served by a private
//! dnsmasq on a 127.0.53.x address (port 53: resolv.conf names no port).
//! Each verifier runs in a mount namespace (`unshare --mount`) whose
//! /etc/resolv.conf names that dnsmasq; the machine's own is untouched.
//!
//! A missing tool is a SKIPPED line outside CI and a failure in CI.

mod common;

use std::fs;
use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::dnsmasq::{dnsmasq_binary, wait_ready};
use common::postfix::{is_root, PostfixInstance};
use common::*;

const LIMIT: Duration = Duration::from_secs(30);
const PYTHON: &str = "/usr/bin/python3";

/// The verifiers and what they need, or `None` (SKIPPED) outside CI.
fn verifiers_present(test: &str) -> bool {
    let dkimpy = Command::new(PYTHON)
        .args(["-c", "import dkim, nacl"])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    let missing: Vec<&str> = [
        ("python3-dkim (and python3-nacl)", dkimpy),
        ("opendkim-testmsg", find_tool("opendkim-testmsg").is_some()),
        ("dnsmasq", dnsmasq_binary().is_some()),
        ("unshare", find_tool("unshare").is_some()),
        ("root (mount namespace, port 53)", is_root()),
    ]
    .iter()
    .filter(|(_, ok)| !ok)
    .map(|(n, _)| *n)
    .collect();
    if missing.is_empty() {
        return true;
    }
    if in_ci() {
        panic!("{test}: missing {missing:?} (scripts/ci-deps.sh installs them)");
    }
    println!("SKIPPED {test}: missing {missing:?}");
    false
}

/// `smtp-relay dkim keygen DOMAIN SELECTOR` into `dir`: the key file and
/// the printed TXT record line.
fn keygen(dir: &Path, domain: &str, selector: &str, extra: &[&str]) -> (PathBuf, String) {
    let key = dir.join(format!("{selector}.pem"));
    let mut args = vec!["dkim", "keygen", domain, selector, "--out"];
    let key_str = key.to_str().expect("utf-8 path").to_string();
    args.push(&key_str);
    args.extend_from_slice(extra);
    let run = run_cli(&args, Duration::from_secs(60));
    assert_eq!(run.code, Some(0), "keygen: {run:?}");
    (key, run.stdout.trim().to_string())
}

/// The record's name and its character-strings, as written by keygen.
fn record_parts(record: &str) -> (String, Vec<String>) {
    let name = record
        .split_whitespace()
        .next()
        .expect("a name")
        .trim_end_matches('.')
        .to_string();
    let strings = record
        .split('"')
        .skip(1)
        .step_by(2)
        .map(str::to_string)
        .collect();
    (name, strings)
}

/// dnsmasq answering the TXT records on 127.0.53.N:53, and a resolv.conf
/// naming it. Killed on drop.
struct Dns {
    child: Child,
    resolv: PathBuf,
    _dir: TempDir,
}

impl Drop for Dns {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Dns {
    fn start(records: &[&str]) -> Dns {
        let dir = TempDir::new("dkimdns");
        let mut args: Vec<String> = Vec::new();
        for r in records {
            let (name, strings) = record_parts(r);
            // dnsmasq: each comma-separated text is one character-string
            args.push(format!("--txt-record={name},{}", strings.join(",")));
        }
        let bin = dnsmasq_binary().expect("dnsmasq (checked by the caller)");
        let seed = std::process::id() as usize;
        for i in 0..40 {
            let ip = format!("127.0.53.{}", 1 + (seed + i * 7) % 250);
            // taken by another test or helper: try the next address
            if UdpSocket::bind((ip.as_str(), 53)).is_err() {
                continue;
            }
            let mut child = Command::new(&bin)
                .args([
                    "--no-daemon",
                    "--port=53",
                    &format!("--listen-address={ip}"),
                    "--bind-interfaces",
                    "--no-resolv",
                    "--no-hosts",
                    "--conf-file=/dev/null",
                    "--local=/test/",
                ])
                .args(&args)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("spawn dnsmasq");
            let addr: SocketAddr = format!("{ip}:53").parse().expect("address");
            if wait_ready(&mut child, addr).is_ok() {
                let resolv = write_file(
                    dir.path(),
                    "resolv.conf",
                    format!("nameserver {ip}\noptions timeout:2 attempts:2\n").as_bytes(),
                );
                return Dns {
                    child,
                    resolv,
                    _dir: dir,
                };
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        panic!("no 127.0.53.x address free for dnsmasq on port 53");
    }

    /// Runs `program args` with `input` on stdin in a mount namespace whose
    /// /etc/resolv.conf is ours.
    fn run(&self, input: &[u8], program: &str, args: &[&str]) -> CliRun {
        use std::io::Write;
        let mut child = Command::new("unshare")
            .args([
                "--mount",
                "sh",
                "-c",
                r#"mount --bind "$0" /etc/resolv.conf && exec "$@""#,
            ])
            .arg(&self.resolv)
            .arg(program)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn unshare");
        let mut stdin = child.stdin.take().expect("stdin");
        stdin.write_all(input).expect("write the message");
        drop(stdin);
        let deadline = Instant::now() + LIMIT;
        loop {
            if let Ok(Some(_)) = child.try_wait() {
                break;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let out = child.wait_with_output().expect("verifier output");
        CliRun {
            code: out.status.code(),
            stdout: String::from_utf8_lossy(&out.stdout).into(),
            stderr: String::from_utf8_lossy(&out.stderr).into(),
        }
    }

    /// dkimpy's verdict on each DKIM-Signature of `message`, in order.
    fn dkimpy(&self, message: &[u8]) -> Vec<bool> {
        let script = "import dkim, sys\n\
            m = sys.stdin.buffer.read()\n\
            head = m.split(b'\\r\\n\\r\\n')[0].split(b'\\r\\n')\n\
            n = sum(1 for l in head if l.lower().startswith(b'dkim-signature:'))\n\
            d = dkim.DKIM(m)\n\
            def ok(i):\n\
            \x20   try:\n\
            \x20       return d.verify(idx=i)\n\
            \x20   except dkim.DKIMException as e:\n\
            \x20       print(e, file=sys.stderr)\n\
            \x20       return False\n\
            print(' '.join(str(ok(i)) for i in range(n)))\n";
        let run = self.run(message, PYTHON, &["-c", script]);
        assert_eq!(run.code, Some(0), "dkimpy: {run:?}");
        run.stdout.split_whitespace().map(|w| w == "True").collect()
    }

    /// `opendkim-testmsg` verifying `message`: 0 when every signature is
    /// good (it prints nothing then).
    fn opendkim(&self, message: &[u8]) -> CliRun {
        self.run(message, "opendkim-testmsg", &[])
    }
}

fn signatures(message: &[u8]) -> Vec<String> {
    let text = String::from_utf8_lossy(message);
    let head = text.split("\r\n\r\n").next().unwrap_or("").to_string();
    head.replace("\r\n\t", " ")
        .replace("\r\n ", " ")
        .split("\r\n")
        .filter(|l| l.to_ascii_lowercase().starts_with("dkim-signature:"))
        .map(str::to_string)
        .collect()
}

/// A message whose only signature is the `n`th one (0-based): what a
/// single-key signer would have produced.
fn only_signature(message: &[u8], n: usize) -> Vec<u8> {
    let text = String::from_utf8_lossy(message);
    let mut out = String::new();
    let mut seen = 0;
    let mut keep = true;
    let (head, body) = text.split_once("\r\n\r\n").expect("a header section");
    for line in head.split("\r\n") {
        if line.to_ascii_lowercase().starts_with("dkim-signature:") {
            keep = seen == n;
            seen += 1;
        } else if !line.starts_with([' ', '\t']) {
            keep = true;
        }
        if keep {
            out.push_str(line);
            out.push_str("\r\n");
        }
    }
    out.push_str("\r\n");
    out.push_str(body);
    out.into_bytes()
}

const MESSAGE: &[u8] = b"From: Alice <alice@example.test>\r\n\
To: bob@dest.test\r\n\
Subject: signed   twice\r\n\
Date: Mon, 30 Nov 2026 00:00:00 +0000\r\n\
Message-ID: <dkim-1@example.test>\r\n\
\r\n\
Hello,\r\n\
..a line starting with a dot (stuffed on the wire)\r\n\
trailing spaces   \r\n\
\r\n\
\r\n";

#[test]
fn rsa_and_ed25519_signatures_verify_with_dkimpy_and_opendkim() {
    let test = "rsa_and_ed25519_signatures_verify_with_dkimpy_and_opendkim";
    if !verifiers_present(test) {
        return;
    }
    let dir = TempDir::new("dkimkeys");
    let (rsa, rsa_txt) = keygen(dir.path(), "example.test", "rsa1", &[]);
    let (ed, ed_txt) = keygen(
        dir.path(),
        "example.test",
        "ed1",
        &["--algorithm", "ed25519"],
    );
    let relay = Relay::receive_only(&[
        "--dkim-key",
        &format!("example.test:rsa1:{}", rsa.display()),
        "--dkim-key",
        &format!("example.test:ed1:{}", ed.display()),
    ]);
    let id = relay
        .session()
        .send_mail("alice@example.test", &["bob@dest.test"], MESSAGE);
    let stored = read_msg(relay.spool(), &id);
    let sigs = signatures(&stored);
    assert_eq!(sigs.len(), 2, "{}", String::from_utf8_lossy(&stored));
    assert!(sigs[0].contains("a=rsa-sha256") && sigs[1].contains("a=ed25519-sha256"));
    for s in &sigs {
        assert!(s.contains("c=relaxed/relaxed"), "{s}");
        // From oversigned, Received not signed (RFC 6376 §5.4)
        let h = s
            .split("h=")
            .nth(1)
            .and_then(|h| h.split(';').next())
            .unwrap_or("");
        let h: Vec<String> = h
            .split(':')
            .map(|n| n.trim().to_ascii_lowercase())
            .collect();
        assert_eq!(h.iter().filter(|n| *n == "from").count(), 2, "{h:?}");
        assert!(!h.iter().any(|n| n == "received"), "{h:?}");
    }
    assert!(
        String::from_utf8_lossy(&stored).starts_with("DKIM-Signature:"),
        "the signature is the first field, above our Received"
    );

    let dns = Dns::start(&[&rsa_txt, &ed_txt]);
    assert_eq!(dns.dkimpy(&stored), [true, true], "dkimpy");
    let run = dns.opendkim(&stored);
    assert_eq!(run.code, Some(0), "opendkim-testmsg, both: {run:?}");
    for n in 0..2 {
        let one = only_signature(&stored, n);
        let run = dns.opendkim(&one);
        assert_eq!(
            run.code,
            Some(0),
            "opendkim-testmsg, signature {n}: {run:?}"
        );
        // the verifiers can fail: a changed body does
        let tampered = String::from_utf8_lossy(&one).replace("Hello,", "Jello,");
        let run = dns.opendkim(tampered.as_bytes());
        assert_ne!(run.code, Some(0), "tampered, signature {n}: {run:?}");
        assert_eq!(dns.dkimpy(tampered.as_bytes()), [false], "tampered {n}");
    }
}

#[test]
fn bdat_bare_lf_message_verifies_as_delivered() {
    let test = "bdat_bare_lf_message_verifies_as_delivered";
    if !verifiers_present(test) {
        return;
    }
    let dir = TempDir::new("dkimkeys");
    let (ed, ed_txt) = keygen(
        dir.path(),
        "example.test",
        "ed1",
        &["--algorithm", "ed25519"],
    );
    let sink = Sink::start();
    let relay = Relay::start(&[
        "--no-dns",
        "--route",
        &format!("*={}", sink.addr()),
        "--dkim-key",
        &format!("example.test:ed1:{}", ed.display()),
    ]);
    // RFC 3030: BDAT octets as they are, here with bare LF line ends and
    // no final line end at all
    // (OpenDKIM calls a message without Date: a syntax error, RFC 5322 §3.6)
    let data = b"From: alice@example.test\nTo: bob@dest.test\nSubject: bare\nDate: Mon, 30 Nov 2026 00:00:00 +0000\n\nline one\n.dot\nno final newline";
    let mut t = relay.session();
    t.cmd("MAIL FROM:<alice@example.test>", 250);
    t.cmd("RCPT TO:<bob@dest.test>", 250);
    let mut cmd = format!("BDAT {} LAST\r\n", data.len()).into_bytes();
    cmd.extend_from_slice(data);
    t.send_raw(&cmd);
    t.expect(250);
    assert!(sink.wait_for(1, LIMIT), "not delivered: {}", relay.log());
    let got = sink.messages();
    let wire = &got[0].data;
    assert!(
        !wire.windows(2).any(|w| w[1] == b'\n' && w[0] != b'\r'),
        "CRLF on the wire"
    );
    let dns = Dns::start(&[&ed_txt]);
    assert_eq!(
        dns.dkimpy(wire),
        [true],
        "{}",
        String::from_utf8_lossy(wire)
    );
    let run = dns.opendkim(wire);
    assert_eq!(run.code, Some(0), "opendkim-testmsg: {run:?}");
}

#[test]
fn still_verifies_after_a_postfix_relay() {
    let test = "still_verifies_after_a_postfix_relay";
    if !verifiers_present(test) || require_tool("postfix", test).is_none() {
        return;
    }
    let dir = TempDir::new("dkimkeys");
    let (rsa, rsa_txt) = keygen(dir.path(), "example.test", "rsa1", &[]);
    let sink = Sink::start();
    let postfix = PostfixInstance::start(sink.addr().port(), "");
    let relay = Relay::start(&[
        "--no-dns",
        "--route",
        &format!("*=127.0.0.1:{}", postfix.port),
        "--dkim-key",
        &format!("example.test:rsa1:{}", rsa.display()),
    ]);
    // no Date: and no Message-ID: Postfix may add them (they are not in
    // h=, so that must not break the signature)
    let message = b"From: alice@example.test\r\nTo: bob@dest.test\r\nSubject: via postfix\r\n\r\nthrough two relays\r\n..two dots\r\n";
    relay
        .session()
        .send_mail("alice@example.test", &["bob@dest.test"], message);
    assert!(
        sink.wait_for(1, LIMIT),
        "nothing arrived through Postfix; relay log:\n{}\npostfix log:\n{}",
        relay.log(),
        postfix.maillog()
    );
    let got = sink.messages();
    assert_eq!(got[0].helo, "postfix.test", "Postfix delivered it");
    let wire = &got[0].data;
    let text = String::from_utf8_lossy(wire);
    assert!(text.contains("by postfix.test (Postfix)"), "{text}");
    let dns = Dns::start(&[&rsa_txt]);
    assert_eq!(dns.dkimpy(wire), [true], "{text}");
    let run = dns.opendkim(wire);
    assert_eq!(run.code, Some(0), "opendkim-testmsg: {run:?}\n{text}");
}

#[test]
fn sources_not_configured_are_not_signed() {
    let dir = TempDir::new("dkimkeys");
    let (ed, _) = keygen(
        dir.path(),
        "example.test",
        "ed1",
        &["--algorithm", "ed25519"],
    );
    let key = format!("example.test:ed1:{}", ed.display());
    // 127.0.0.1 is in the default --relay-net; it did not authenticate
    for (from, signed) in [("auth", false), ("none", false), ("relay-net", true)] {
        let relay = Relay::receive_only(&["--dkim-key", &key, "--dkim-sign-from", from]);
        let id = relay
            .session()
            .send_mail("alice@example.test", &["bob@dest.test"], MESSAGE);
        let stored = read_msg(relay.spool(), &id);
        assert_eq!(
            signatures(&stored).len(),
            usize::from(signed),
            "--dkim-sign-from {from}"
        );
    }
    // a From: domain without a key: not signed, and still accepted
    let relay = Relay::receive_only(&["--dkim-key", &key]);
    let other = b"From: carol@other.test\r\nSubject: x\r\n\r\nbody\r\n";
    let id = relay
        .session()
        .send_mail("carol@other.test", &["bob@dest.test"], other);
    assert!(signatures(&read_msg(relay.spool(), &id)).is_empty());
    // a subdomain of a domain with a key is signed with the parent's
    let sub = b"From: dave@mail.example.test\r\nSubject: x\r\n\r\nbody\r\n";
    let id = relay
        .session()
        .send_mail("dave@mail.example.test", &["bob@dest.test"], sub);
    let sigs = signatures(&read_msg(relay.spool(), &id));
    assert!(
        sigs.len() == 1 && sigs[0].contains("d=example.test;"),
        "{sigs:?}"
    );
}

#[test]
fn authenticated_clients_are_signed_others_outside_relay_net_are_not() {
    let dir = TempDir::new("dkimauth");
    let (ed, _) = keygen(
        dir.path(),
        "example.test",
        "ed1",
        &["--algorithm", "ed25519"],
    );
    let passwd_file = dir.path().join("passwd");
    assert_eq!(passwd(&passwd_file, "alice", "alice-secret-1\n").0, Some(0));
    let key = format!("example.test:ed1:{}", ed.display());
    let auth_file = passwd_file.to_str().expect("utf-8 path");
    // 127.0.0.2 is outside --relay-net; it may send to dest.test
    let common = [
        "--dkim-key",
        &key,
        "--auth-file",
        auth_file,
        "--relay-net",
        "127.0.0.1/32",
        "--relay-domain",
        "dest.test",
    ];
    for (sign_from, login, signed) in [
        ("relay-net,auth", false, false),
        ("relay-net,auth", true, true),
        ("relay-net", true, false),
        ("auth", true, true),
    ] {
        let mut args = common.to_vec();
        args.extend(["--dkim-sign-from", sign_from]);
        let relay = Relay::receive_only(&args);
        let mut t = Talk::connect_from("127.0.0.2", relay.addr());
        t.expect(220);
        t.cmd("EHLO client.test", 250);
        if login {
            let plain = smtp_relay::auth::encode_base64(b"\0alice\0alice-secret-1");
            t.cmd(&format!("AUTH PLAIN {plain}"), 235);
        }
        let id = t.send_mail("alice@example.test", &["bob@dest.test"], MESSAGE);
        let stored = read_msg(relay.spool(), &id);
        assert_eq!(
            signatures(&stored).len(),
            usize::from(signed),
            "--dkim-sign-from {sign_from}, AUTH {login}"
        );
    }
}

#[test]
fn keygen_writes_a_private_key_and_a_record_dkimpy_accepts() {
    let test = "keygen_writes_a_private_key_and_a_record_dkimpy_accepts";
    let dir = TempDir::new("dkimkeys");
    for (sel, extra) in [
        ("r", &["--bits", "3072"][..]),
        ("e", &["--algorithm", "ed25519"][..]),
    ] {
        let (key, record) = keygen(dir.path(), "example.test", sel, extra);
        use std::os::unix::fs::PermissionsExt;
        let mode = fs::metadata(&key).expect("key file").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{}", key.display());
        let pem = fs::read_to_string(&key).expect("read key");
        assert!(
            pem.starts_with("-----BEGIN PRIVATE KEY-----"),
            "PKCS#8: {pem}"
        );
        let (name, strings) = record_parts(&record);
        assert_eq!(name, format!("{sel}._domainkey.example.test"), "{record}");
        assert!(strings.iter().all(|s| s.len() <= 255), "{record}");
        assert!(strings.concat().starts_with("v=DKIM1; k="), "{record}");
        // an existing file is never overwritten
        let again = run_cli(
            &[
                "dkim",
                "keygen",
                "example.test",
                sel,
                "--out",
                key.to_str().expect("utf-8"),
            ],
            LIMIT,
        );
        assert_eq!(again.code, Some(74), "{again:?}");
        assert_eq!(fs::read_to_string(&key).expect("read key"), pem);

        // dkimpy signs with the written key and verifies against the record
        if !Command::new(PYTHON)
            .args(["-c", "import dkim, nacl"])
            .status()
            .is_ok_and(|s| s.success())
        {
            if in_ci() {
                panic!("{test}: python3-dkim is not installed");
            }
            println!("SKIPPED {test} (dkimpy part): python3-dkim not installed");
            continue;
        }
        let script = format!(
            "import dkim, sys\n\
             import base64\n\
             key = open(sys.argv[1], 'rb').read()\n\
             txt = sys.argv[2].encode()\n\
             if b'k=ed25519' in txt:\n\
             \x20   # dkimpy takes the 32-octet seed: PKCS#8's OCTET STRING in OCTET STRING\n\
             \x20   der = base64.b64decode(b''.join(key.split(b'\\n')[1:-2]))\n\
             \x20   at = der.index(b'\\x04\\x22\\x04\\x20') + 4\n\
             \x20   key = base64.b64encode(der[at:at + 32])\n\
             else:\n\
             \x20   # dkimpy reads PKCS#1 (BEGIN RSA PRIVATE KEY) only\n\
             \x20   import subprocess\n\
             \x20   key = subprocess.run(['openssl', 'rsa', '-in', sys.argv[1], '-traditional'],\n\
             \x20                        capture_output=True, check=True).stdout\n\
             txt = sys.argv[2].encode()\n\
             m = b'From: a@example.test\\r\\nSubject: k\\r\\n\\r\\nbody\\r\\n'\n\
             alg = b'ed25519-sha256' if b'k=ed25519' in txt else b'rsa-sha256'\n\
             sig = dkim.sign(m, b'{sel}', b'example.test', key, signature_algorithm=alg)\n\
             ok = dkim.verify(sig + m, dnsfunc=lambda name, timeout=5: txt)\n\
             print(ok)\n"
        );
        let run = run_tool(
            Command::new(PYTHON)
                .args(["-c", &script])
                .arg(&key)
                .arg(strings.concat()),
            LIMIT,
        );
        assert_eq!(run.stdout.trim(), "True", "{sel}: {run:?}");
    }
}

#[test]
fn bad_key_files_are_configuration_errors() {
    let dir = TempDir::new("dkimkeys");
    let garbage = write_file(dir.path(), "garbage.pem", b"not a key\n");
    let small = dir.path().join("small.pem");
    let gen = run_tool(
        Command::new("openssl")
            .args([
                "genpkey",
                "-algorithm",
                "RSA",
                "-pkeyopt",
                "rsa_keygen_bits:1024",
                "-out",
            ])
            .arg(&small),
        LIMIT,
    );
    assert_eq!(gen.code, Some(0), "openssl genpkey: {gen:?}");
    let missing = dir.path().join("missing.pem");
    for (path, code, words) in [
        (&garbage, 78, "not a PEM private key"),
        (&small, 78, "RSA key of 1024 bits; at least 2048"),
        (&missing, 66, "cannot read"),
    ] {
        let spool = dir.path().join("spool");
        let key = format!("example.test:s1:{}", path.display());
        let run = run_cli(
            &[
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--spool",
                spool.to_str().expect("utf-8"),
                "--dkim-key",
                &key,
            ],
            LIMIT,
        );
        assert_eq!(run.code, Some(code), "{}: {run:?}", path.display());
        assert!(
            run.stderr.contains("--dkim-key") && run.stderr.contains(words),
            "{}: {}",
            path.display(),
            run.stderr
        );
    }
}

#[test]
fn readme_dkim_recipe_works_as_written() {
    let test = "readme_dkim_recipe_works_as_written";
    let dir = TempDir::new("readmedkim");
    let keys = dir.path().join("keys");
    fs::create_dir(&keys).expect("mkdir");
    let fit = |s: &str| s.replace("/etc/smtp-relay", &keys.display().to_string());
    let script = fit(&readme_block("## DKIM signing", "sh"));
    // `smtp-relay` on the PATH is the binary under test
    let path = path_with_binary_first();
    let run = run_tool(
        Command::new("sh")
            .arg("-ec")
            .arg(&script)
            .env("PATH", path)
            .current_dir(dir.path()),
        Duration::from_secs(120),
    );
    assert_eq!(run.code, Some(0), "{run:?}");
    let records: Vec<&str> = run
        .stdout
        .lines()
        .filter(|l| l.contains("IN TXT"))
        .collect();
    assert_eq!(records.len(), 2, "{}", run.stdout);
    let conf = write_file(
        dir.path(),
        "smtp-relay.conf",
        fit(&readme_block("## DKIM signing", "ini")).as_bytes(),
    );
    let relay = Relay::receive_only(&["--config", conf.to_str().expect("utf-8 path")]);
    let message = b"From: ann@example.org\r\nDate: Mon, 30 Nov 2026 00:00:00 +0000\r\nSubject: r\r\n\r\nreadme\r\n";
    let id = relay
        .session()
        .send_mail("ann@example.org", &["bob@dest.test"], message);
    let stored = read_msg(relay.spool(), &id);
    let sigs = signatures(&stored);
    assert_eq!(sigs.len(), 2, "{}", String::from_utf8_lossy(&stored));
    assert!(
        sigs.iter().all(|s| s.contains("d=example.org;")),
        "{sigs:?}"
    );
    if verifiers_present(test) {
        let dns = Dns::start(&records);
        assert_eq!(dns.dkimpy(&stored), [true, true]);
        assert_eq!(dns.opendkim(&stored).code, Some(0));
    }
}

/// The one message queued in `spool` since `before` was listed.
fn newly_queued(spool: &Path, before: &[String]) -> Vec<u8> {
    let mut new = Vec::new();
    wait_until(LIMIT, || {
        new = queued_ids(spool)
            .into_iter()
            .filter(|id| !before.contains(id))
            // a maildrop pick-up commits held, then releases
            .filter(|id| !read_env(spool, id).contains("hold:"))
            .collect();
        !new.is_empty()
    });
    assert_eq!(new.len(), 1, "{new:?}");
    read_msg(spool, &new[0])
}

#[test]
fn mail_injected_by_send_and_sendmail_is_signed_and_verifies() {
    let test = "mail_injected_by_send_and_sendmail_is_signed_and_verifies";
    if !verifiers_present(test) {
        return;
    }
    let dir = TempDir::new("dkimlocal");
    // nobody must reach the config file
    fs::set_permissions(
        dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .expect("chmod");
    let (rsa, rsa_txt) = keygen(dir.path(), "example.test", "local1", &[]);
    let key = format!("example.test:local1:{}", rsa.display());
    // the server has the key too: the maildrop is picked up there
    let relay = Relay::receive_only(&["--dkim-key", &key]);
    let spool = relay.spool().display().to_string();
    let conf = write_file(
        dir.path(),
        "conf",
        format!("spool = {spool}\nhostname = relay.test\ndkim-key = {key}\n").as_bytes(),
    );
    let dns = Dns::start(&[&rsa_txt]);
    let cron = b"From: Cron Daemon <cron@example.test>\nTo: ops@dest.test\nSubject: nightly\n\nall   fine\n";
    // send, the key on its command line
    let send = |extra: &[&str]| {
        let before = queued_ids(relay.spool());
        let mut args = vec!["send", "--spool", &spool, "--hostname", "relay.test"];
        args.extend_from_slice(&["--dkim-key", &key, "-t", "-i"]);
        args.extend_from_slice(extra);
        let run = run_stdin(&args, cron, LIMIT);
        assert_eq!(run.code, Some(0), "{run:?}");
        newly_queued(relay.spool(), &before)
    };
    let sent = send(&[]);
    // sendmail -t -i as root (queued directly) and as nobody (maildrop,
    // signed by the server), the key from the config file
    let mut runs = vec![("send", sent)];
    let mut as_users: Vec<Vec<String>> = vec![vec![]];
    if let Some((uid, gid)) = nobody() {
        as_users.push(vec![
            "setpriv".into(),
            format!("--reuid={uid}"),
            format!("--regid={gid}"),
            "--clear-groups".into(),
            "--".into(),
        ]);
    }
    for prefix in as_users {
        let before = queued_ids(relay.spool());
        let mut words = prefix.clone();
        words.extend([BIN.to_string(), "sendmail".into(), "-t".into(), "-i".into()]);
        let run = run_command_stdin(
            Command::new(&words[0])
                .args(&words[1..])
                .env("SMTP_RELAY_CONFIG", &conf),
            cron,
            LIMIT,
        );
        assert_eq!(run.code, Some(0), "{words:?}: {run:?}");
        let who = if prefix.is_empty() {
            "sendmail as root"
        } else {
            "sendmail as nobody"
        };
        runs.push((who, newly_queued(relay.spool(), &before)));
    }
    for (who, stored) in &runs {
        let sigs = signatures(stored);
        assert_eq!(sigs.len(), 1, "{who}: {}", String::from_utf8_lossy(stored));
        assert!(sigs[0].contains("d=example.test;"), "{who}: {sigs:?}");
        assert_eq!(dns.dkimpy(stored), [true], "{who}: dkimpy");
        let tampered = String::from_utf8_lossy(stored).replace("all   fine", "all   gone");
        assert_eq!(dns.dkimpy(tampered.as_bytes()), [false], "{who}: tampered");
    }
    // --dkim-sign-from without `local`: injected mail goes unsigned
    assert!(signatures(&send(&["--dkim-sign-from", "relay-net,auth"])).is_empty());
    // a key send cannot read: 66, nothing queued
    let before = queued_ids(relay.spool());
    let run = run_stdin(
        &[
            "send",
            "--spool",
            &spool,
            "--dkim-key",
            "example.test:x:/nonexistent.pem",
            "-t",
        ],
        cron,
        LIMIT,
    );
    assert_eq!(run.code, Some(66), "{run:?}");
    assert!(run.stderr.contains("/nonexistent.pem"), "{run:?}");
    assert_eq!(queued_ids(relay.spool()), before);
}
