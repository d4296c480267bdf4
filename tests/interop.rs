//! Real SMTP clients from Debian packages against the real binary:
//! swaks, Python's smtplib and Postfix's smtp-source. A missing tool is a
//! SKIPPED line outside CI and a failure in CI (`CI` set).

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::*;

const TOOL_LIMIT: Duration = Duration::from_secs(120);

fn swaks_run(relay: &Relay, swaks: &std::path::Path, extra: &[&str]) -> String {
    let port = relay.addr().port().to_string();
    let mut cmd = Command::new(swaks);
    cmd.args([
        "--server",
        "127.0.0.1",
        "--port",
        &port,
        "--helo",
        "swaks.test",
        "--from",
        "sender@example.org",
        "--to",
        "rcpt@example.net",
        "--timeout",
        "20",
    ])
    .args(extra);
    let run = run_tool(&mut cmd, TOOL_LIMIT);
    assert_eq!(run.code, Some(0), "swaks failed: {run:?}");
    run.stdout
}

/// The id in swaks' transcript line `<-  250 2.0.0 Ok: queued as ID`.
fn id_in(transcript: &str) -> String {
    transcript
        .lines()
        .find_map(queued_id)
        .unwrap_or_else(|| panic!("no `queued as` in:\n{transcript}"))
}

#[test]
fn swaks_plain() {
    let Some(swaks) = require_tool("swaks", "swaks_plain") else {
        return;
    };
    let relay = Relay::receive_only(&[]);
    let dir = TempDir::new("swaks");
    let body = write_file(
        dir.path(),
        "body.txt",
        b"first line\n.\n..two dots\n.one dot\nlast line\n",
    );
    let out = swaks_run(
        &relay,
        &swaks,
        &[
            "--header",
            "Subject: swaks plain",
            "--body",
            body.to_str().expect("utf-8 path"),
        ],
    );
    let id = id_in(&out);
    assert!(out.contains("<-  221 2.0.0"), "swaks saw no 221:\n{out}");
    assert_eq!(queued_ids(relay.spool()), vec![id.clone()]);
    let env = assert_complete(relay.spool(), &id);
    assert_eq!(env.get("from"), "<sender@example.org>");
    assert_eq!(env.get("helo"), "swaks.test");
    assert_eq!(env.rcpts()[0].1, "<rcpt@example.net>");
    let (received, data) = split_received(&read_msg(relay.spool(), &id));
    assert!(received.starts_with("Received: from swaks.test ([127.0.0.1])"));
    let data = String::from_utf8_lossy(&data).to_string();
    assert!(data.contains("Subject: swaks plain\r\n"), "{data:?}");
    // swaks stuffs the dots, we unstuff them: the body arrives as written
    assert!(
        data.contains("\r\n\r\nfirst line\r\n.\r\n..two dots\r\n.one dot\r\nlast line\r\n"),
        "{data:?}"
    );
    assert!(!data.contains("\n\n"), "bare LF stored: {data:?}");
}

#[test]
fn swaks_pipelined() {
    let Some(swaks) = require_tool("swaks", "swaks_pipelined") else {
        return;
    };
    let relay = Relay::receive_only(&[]);
    // swaks refuses --pipeline unless PIPELINING is advertised
    let out = swaks_run(
        &relay,
        &swaks,
        &[
            "--pipeline",
            "--header",
            "Subject: swaks pipelined",
            "--to",
            "r1@example.net,r2@example.net,r3@example.net",
        ],
    );
    let id = id_in(&out);
    assert_eq!(queued_ids(relay.spool()), vec![id.clone()]);
    let env = assert_complete(relay.spool(), &id);
    let rcpts: Vec<String> = env.rcpts().into_iter().map(|r| r.1).collect();
    assert_eq!(
        rcpts,
        ["<r1@example.net>", "<r2@example.net>", "<r3@example.net>"]
    );
}

#[test]
fn swaks_sees_the_limits() {
    let Some(swaks) = require_tool("swaks", "swaks_sees_the_limits") else {
        return;
    };
    let relay = Relay::receive_only(&["--relay-net", "127.0.0.9/32"]);
    let port = relay.addr().port().to_string();
    let run = run_tool(
        Command::new(&swaks).args([
            "--server",
            "127.0.0.1",
            "--port",
            &port,
            "--from",
            "sender@example.org",
            "--to",
            "rcpt@example.net",
            "--timeout",
            "20",
        ]),
        TOOL_LIMIT,
    );
    assert_ne!(run.code, Some(0), "relaying was allowed: {run:?}");
    assert!(
        run.stdout.contains("<** 550 5.7.1"),
        "swaks did not see the 550: {run:?}"
    );
    assert!(queued_ids(relay.spool()).is_empty());
}

const PY_SCRIPT: &str = r#"
import smtplib, sys
port = int(sys.argv[1])
with smtplib.SMTP("127.0.0.1", port, local_hostname="python.test", timeout=20) as s:
    refused = s.sendmail("a@example.org", ["b@example.net", "c@example.net"],
                         "Subject: smtplib\r\n\r\nhello from python\r\n.leading dot\r\n")
    print("plain refused=%r" % (refused,))
    s.ehlo_or_helo_if_needed()
    print("extensions 8bitmime=%s size=%s pipelining=%s" % (
        s.has_extn("8bitmime"), s.has_extn("size"), s.has_extn("pipelining")))
    body = ("Subject: 8bit\r\nContent-Type: text/plain; charset=utf-8\r\n"
            "Content-Transfer-Encoding: 8bit\r\n\r\nGr\u00fc\u00dfe aus K\u00f6ln\r\n").encode("utf-8")
    code, msg = s.mail("a@example.org", ["BODY=8BITMIME", "SIZE=%d" % len(body)])
    print("mail %d" % code)
    code, msg = s.rcpt("d@example.net")
    print("rcpt %d" % code)
    code, msg = s.data(body)
    print("data %d %s" % (code, msg.decode()))
    refused = s.sendmail("j\u00f6rg@example.org", ["\u00fc@example.net"], body,
                         mail_options=["SMTPUTF8", "BODY=8BITMIME"])
    print("utf8 refused=%r" % (refused,))
"#;

#[test]
fn python_smtplib() {
    let Some(python) = require_tool("python3", "python_smtplib") else {
        return;
    };
    let relay = Relay::receive_only(&[]);
    let port = relay.addr().port().to_string();
    let run = run_tool(
        Command::new(&python).args(["-c", PY_SCRIPT, &port]),
        TOOL_LIMIT,
    );
    assert_eq!(run.code, Some(0), "python failed: {run:?}");
    let out = run.stdout;
    println!("{out}");
    assert!(out.contains("plain refused={}"), "{out}");
    assert!(
        out.contains("extensions 8bitmime=True size=True pipelining=True"),
        "{out}"
    );
    assert!(out.contains("mail 250\nrcpt 250\n"), "{out}");
    let data_line = out
        .lines()
        .find(|l| l.starts_with("data "))
        .expect("data line");
    assert!(
        data_line.starts_with("data 250 2.0.0 Ok: queued as "),
        "{out}"
    );
    let id8 = queued_id(data_line).expect("id of the 8bit message");
    assert!(out.contains("utf8 refused={}"), "{out}");

    let ids = queued_ids(relay.spool());
    assert_eq!(ids.len(), 3, "{ids:?}");
    assert_eq!(ids[1], id8, "arrival order");
    // plain: two recipients, the leading dot unstuffed again
    let e = assert_complete(relay.spool(), &ids[0]);
    assert_eq!(e.get("helo"), "python.test");
    assert_eq!(e.rcpts().len(), 2);
    let (_, data) = split_received(&read_msg(relay.spool(), &ids[0]));
    assert!(
        data.ends_with(b"\r\n\r\nhello from python\r\n.leading dot\r\n"),
        "{:?}",
        String::from_utf8_lossy(&data)
    );
    // 8BITMIME: the octets as sent
    let e = assert_complete(relay.spool(), &id8);
    assert_eq!(e.get("body"), "8BITMIME");
    assert_eq!(e.get("smtputf8"), "no");
    let (_, data) = split_received(&read_msg(relay.spool(), &id8));
    assert!(data.ends_with("Grüße aus Köln\r\n".as_bytes()));
    // SMTPUTF8
    let e = assert_complete(relay.spool(), &ids[2]);
    assert_eq!(e.get("smtputf8"), "yes");
    assert_eq!(e.get("from"), "<jörg@example.org>");
    assert_eq!(e.rcpts()[0].1, "<ü@example.net>");
}

#[test]
fn smtp_source_burst_of_1000() {
    let Some(source) = require_tool("/usr/sbin/smtp-source", "smtp_source_burst_of_1000") else {
        return;
    };
    let relay = Relay::receive_only(&[]);
    let target = format!("127.0.0.1:{}", relay.addr().port());
    let start = Instant::now();
    let run = run_tool(
        Command::new(&source).args([
            "-c",
            "-m",
            "1000",
            "-s",
            "20",
            "-M",
            "source.test",
            "-f",
            "sender@example.org",
            "-t",
            "rcpt@example.net",
            &target,
        ]),
        Duration::from_secs(300),
    );
    let elapsed = start.elapsed();
    assert_eq!(run.code, Some(0), "smtp-source failed: {run:?}");
    println!(
        "smtp-source: 1000 messages over 20 sessions in {:.2?} ({:.0} messages/s)",
        elapsed,
        1000.0 / elapsed.as_secs_f64()
    );

    let ids = queued_ids(relay.spool());
    assert_eq!(ids.len(), 1000, "messages queued");
    assert_eq!(
        queue_files(relay.spool()).len(),
        2000,
        "one .msg per .env, nothing else"
    );
    assert_eq!(tmp_files(relay.spool()), Vec::<String>::new());
    for id in &ids {
        let env = assert_complete(relay.spool(), id);
        assert_eq!(env.get("from"), "<sender@example.org>", "{id}");
        assert_eq!(env.rcpts().len(), 1, "{id}");
        assert_eq!(env.rcpts()[0].1, "<rcpt@example.net>", "{id}");
        assert_eq!(env.get("helo"), "source.test", "{id}");
    }
}

#[test]
fn smtp_source_several_messages_per_session() {
    let Some(source) = require_tool(
        "/usr/sbin/smtp-source",
        "smtp_source_several_messages_per_session",
    ) else {
        return;
    };
    let relay = Relay::receive_only(&[]);
    let target = format!("127.0.0.1:{}", relay.addr().port());
    // -d: keep the connection for the next message; -r 3: recipients
    let run = run_tool(
        Command::new(&source).args([
            "-d",
            "-m",
            "100",
            "-s",
            "5",
            "-r",
            "3",
            "-l",
            "5000",
            "-M",
            "source.test",
            "-f",
            "sender@example.org",
            "-t",
            "rcpt@example.net",
            &target,
        ]),
        TOOL_LIMIT,
    );
    assert_eq!(run.code, Some(0), "smtp-source failed: {run:?}");
    let ids = queued_ids(relay.spool());
    assert_eq!(ids.len(), 100);
    for id in &ids {
        let env = assert_complete(relay.spool(), id);
        assert_eq!(env.rcpts().len(), 3, "{id}: {}", env.text);
        assert!(env.size() > 5000, "{id}: payload of 5000 octets");
    }
}
