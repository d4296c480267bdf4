//! The forwarding side against real Postfix programs on loopback:
//! Postfix's `smtp-sink` as our next hop, and a private Postfix instance
//! (scripts/postfix-instance.sh) as a next-hop relay in the middle:
//! swaks → smtp-relay → Postfix → our in-process sink.
//!
//! A missing tool is a SKIPPED line outside CI and a failure in CI (`CI`
//! set). Postfix's master must start as root; so must smtp-sink's `-u`.

mod common;

use std::collections::HashMap;
use std::fs;
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::postfix::*;
use common::*;

const LIMIT: Duration = Duration::from_secs(30);

fn to_strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

/// Reads a 220 greeting from `addr` (a readiness probe).
fn greets(addr: SocketAddr) -> bool {
    use std::io::{BufRead, BufReader, Write};
    let Ok(s) = TcpStream::connect_timeout(&addr, Duration::from_secs(1)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    let mut line = String::new();
    let ok = BufReader::new(&s).read_line(&mut line).is_ok() && line.starts_with("220");
    let _ = (&s).write_all(b"QUIT\r\n");
    ok
}

// ---------------------------------------------------------------------
// smtp-sink
// ---------------------------------------------------------------------

/// `smtp-sink -d DIR/msg.` on 127.0.0.1: one dump file per transaction.
struct SmtpSink {
    child: Child,
    addr: SocketAddr,
}

impl Drop for SmtpSink {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl SmtpSink {
    fn start(bin: &Path, dump: &Path) -> SmtpSink {
        let root = is_root();
        if root {
            // smtp-sink insists on dropping root (-u); that user writes
            let st = Command::new("chown")
                .arg("postfix")
                .arg(dump)
                .status()
                .expect("run chown");
            assert!(st.success(), "chown postfix {}", dump.display());
        }
        let mut last = String::new();
        for _ in 0..5 {
            let port = unused_port();
            let addr = SocketAddr::from(([127, 0, 0, 1], port));
            let mut cmd = Command::new(bin);
            if root {
                cmd.args(["-u", "postfix"]);
            }
            let template = dump.join("msg.");
            let mut child = cmd
                .args(["-h", "smtp-sink.test", "-d"])
                .arg(&template)
                .arg(format!("127.0.0.1:{port}"))
                .arg("64")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap_or_else(|e| panic!("spawn {}: {e}", bin.display()));
            let mut exited = None;
            let up = wait_until(Duration::from_secs(10), || {
                exited = child.try_wait().ok().flatten();
                exited.is_some() || greets(addr)
            });
            if up && exited.is_none() {
                return SmtpSink { child, addr };
            }
            let _ = child.kill();
            let _ = child.wait();
            let mut err = String::new();
            if let Some(mut e) = child.stderr.take() {
                use std::io::Read;
                let _ = e.read_to_string(&mut err);
            }
            last = format!("exit {exited:?}, stderr: {err}");
        }
        panic!("smtp-sink did not start: {last}");
    }
}

/// Every dump file's text, by file name.
fn dumps(dir: &Path) -> HashMap<String, String> {
    let mut out = HashMap::new();
    if let Ok(rd) = fs::read_dir(dir) {
        for e in rd.flatten() {
            if let Ok(t) = fs::read(e.path()) {
                out.insert(
                    e.file_name().to_string_lossy().to_string(),
                    String::from_utf8_lossy(&t).to_string(),
                );
            }
        }
    }
    out
}

fn subject(text: &str) -> Option<String> {
    text.lines().find_map(|l| {
        l.strip_prefix("Subject: ")
            .map(|s| s.trim_end().to_string())
    })
}

#[test]
fn fifty_messages_to_postfix_smtp_sink() {
    let test = "fifty_messages_to_postfix_smtp_sink";
    let Some(bin) = require_tool("smtp-sink", test) else {
        return;
    };
    let dir = TempDir::new("smtpsink");
    let dump = dir.path().join("dump");
    fs::create_dir(&dump).expect("mkdir dump");
    let sink = SmtpSink::start(&bin, &dump);
    let relay = Relay::start(&to_strs(&[
        "--no-dns".into(),
        "--route".into(),
        format!("*=127.0.0.1:{}", sink.addr.port()),
    ]));

    const N: usize = 50;
    let mut t = relay.session();
    for i in 0..N {
        t.send_mail(
            "s@origin.example",
            &[&format!("r{i}@dest.example")],
            // dot-stuffed on the wire to us; one leading dot in the message
            format!("Subject: interop {i}\r\n\r\nmessage number {i}\r\n..dot line\r\n").as_bytes(),
        );
    }
    t.cmd("QUIT", 221);

    let mut seen = HashMap::new();
    let all_there = wait_until(LIMIT, || {
        seen = dumps(&dump);
        let subjects: Vec<String> = seen.values().filter_map(|t| subject(t)).collect();
        (0..N).all(|i| subjects.contains(&format!("interop {i}")))
    });
    assert!(
        all_there,
        "smtp-sink has {} of {N} messages; relay queue: {:?}",
        seen.len(),
        queued_ids(relay.spool())
    );
    assert!(
        wait_until(LIMIT, || queue_files(relay.spool()).is_empty()),
        "left: {:?}",
        queue_files(relay.spool())
    );
    let seen = dumps(&dump);
    let subjects: Vec<String> = seen.values().filter_map(|t| subject(t)).collect();
    let counts = tally(&subjects);
    for i in 0..N {
        assert_eq!(
            counts.get(&format!("interop {i}")),
            Some(&1),
            "message {i} not exactly once"
        );
    }
    assert_eq!(seen.len(), N, "one transaction per message");
    for text in seen.values() {
        let i: usize = subject(text)
            .and_then(|s| s.strip_prefix("interop ").and_then(|n| n.parse().ok()))
            .expect("numbered subject");
        // smtp-sink's dump: its own X- records and Received, then ours
        assert!(text.contains("X-Helo-Args: relay.test\n"), "{text}");
        assert!(text.contains("X-Mail-Args: <s@origin.example>"), "{text}");
        assert!(
            text.contains(&format!("X-Rcpt-Args: <r{i}@dest.example>")),
            "{text}"
        );
        assert!(text.contains("by relay.test"), "{text}");
        assert!(
            text.contains(&format!("\nmessage number {i}\n.dot line\n")),
            "body (unstuffed by smtp-sink): {text}"
        );
    }
}

// ---------------------------------------------------------------------
// A private Postfix instance
// ---------------------------------------------------------------------

/// The header section of a message, unfolded into (name, value) fields.
fn header_fields(data: &[u8]) -> Vec<(String, String)> {
    let text = String::from_utf8_lossy(data);
    let head = text.split("\r\n\r\n").next().unwrap_or("");
    let mut fields: Vec<(String, String)> = Vec::new();
    for line in head.split("\r\n") {
        if line.starts_with([' ', '\t']) {
            if let Some(last) = fields.last_mut() {
                last.1.push(' ');
                last.1.push_str(line.trim());
            }
        } else if let Some((k, v)) = line.split_once(':') {
            fields.push((k.to_string(), v.trim().to_string()));
        }
    }
    fields
}

#[test]
fn through_a_real_postfix_relay() {
    let test = "through_a_real_postfix_relay";
    let Some(swaks) = require_tool("swaks", test) else {
        return;
    };
    if require_tool("postfix", test).is_none() {
        return;
    }
    if !is_root() {
        if in_ci() {
            panic!("{test}: Postfix's master must start as root (CI is set)");
        }
        println!("SKIPPED {test}: not root (Postfix's master starts as root)");
        return;
    }
    let sink = Sink::start();
    let postfix = PostfixInstance::start(sink.addr().port(), "");
    let relay = Relay::start(&to_strs(&[
        "--no-dns".into(),
        "--route".into(),
        format!("*=127.0.0.1:{}", postfix.port),
    ]));

    let dir = TempDir::new("swaks");
    let body = write_file(
        dir.path(),
        "body.txt",
        b"through two relays\n.\n..two dots\nend\n",
    );
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
            "b@dest.example",
            "--header",
            "Subject: via postfix",
            "--body",
            body.to_str().expect("utf-8 path"),
            "--timeout",
            "20",
        ]),
        LIMIT,
    );
    assert_eq!(run.code, Some(0), "swaks failed: {run:?}");
    let id = run
        .stdout
        .lines()
        .find_map(queued_id)
        .unwrap_or_else(|| panic!("no queue id from swaks: {}", run.stdout));

    assert!(
        sink.wait_for(1, LIMIT),
        "nothing arrived through Postfix; relay log:\n{}\npostfix log:\n{}",
        relay.log(),
        postfix.maillog()
    );
    assert!(
        wait_until(LIMIT, || queue_files(relay.spool()).is_empty()),
        "left: {:?}",
        queue_files(relay.spool())
    );
    let got = sink.messages();
    assert_eq!(got.len(), 1, "{got:?}");
    let m = &got[0];
    assert_eq!(m.mail_from, "s@origin.example");
    assert_eq!(m.rcpts, ["b@dest.example"]);
    assert_eq!(m.helo, "postfix.test", "Postfix delivered it");

    let received: Vec<String> = header_fields(&m.data)
        .into_iter()
        .filter(|(k, _)| k.eq_ignore_ascii_case("Received"))
        .map(|(_, v)| v)
        .collect();
    assert_eq!(received.len(), 2, "ours and Postfix's: {received:?}");
    // newest first: Postfix got it from us, we got it from swaks
    assert!(
        received[0].starts_with("from relay.test")
            && received[0].contains("by postfix.test (Postfix)"),
        "{received:?}"
    );
    assert!(
        received[1].starts_with("from swaks.test ([127.0.0.1])")
            && received[1].contains("by relay.test")
            && received[1].contains(&id),
        "{received:?}"
    );
    let text = String::from_utf8_lossy(&m.data);
    assert!(text.contains("Subject: via postfix\r\n"), "{text}");
    assert!(
        text.contains("\r\n\r\nthrough two relays\r\n.\r\n..two dots\r\nend\r\n"),
        "the body survives both hops: {text:?}"
    );
    // Postfix writes its status=sent line after the sink has answered:
    // wait for it rather than read the log at once
    let port = format!(":{}", sink.addr().port());
    let logged = wait_until(Duration::from_secs(10), || {
        let log = postfix.maillog();
        log.contains("status=sent") && log.contains(&port)
    });
    assert!(
        logged,
        "Postfix's log shows the relay to the sink:\n{}",
        postfix.maillog()
    );
}
