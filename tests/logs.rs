//! Logs (README "Logs"): `--log-format json` lines parse with the
//! documented fields, refusals are logged at the default level with the
//! client and the reply, a message's life is one grep by queue id, and
//! `--log-file` is reopened on SIGUSR1.

mod common;

use std::time::Duration;

use common::*;

const DELIVERY: Duration = Duration::from_secs(20);

fn json_lines(text: &str) -> Vec<serde_json::Value> {
    text.lines()
        .map(|l| {
            let v: serde_json::Value =
                serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON: {l:?}: {e}"));
            for f in ["ts", "level", "target", "msg"] {
                assert!(v[f].is_string(), "no {f} in {l}");
            }
            v
        })
        .collect()
}

#[test]
fn json_lines_have_the_documented_fields() {
    let sink = Sink::start();
    let route = format!("*=127.0.0.1:{}", sink.addr().port());
    let relay = Relay::start(&[
        "--no-dns",
        "--route",
        &route,
        "--relay-net",
        "127.0.0.1/32",
        "--log-format",
        "json",
    ]);
    let id = relay
        .session()
        .send_mail("a@origin.example", &["b@dest.example"], b"\r\nhi\r\n");
    relay_denied_from_far(relay.addr());
    assert!(sink.wait_for(1, DELIVERY));
    let mut lines = Vec::new();
    wait_until(DELIVERY, || {
        lines = json_lines(&relay.log());
        lines
            .iter()
            .any(|v| v["id"] == id.as_str() && v["event"] == "sent")
    });
    let of = |event: &str| {
        lines
            .iter()
            .find(|v| v["id"] == id.as_str() && v["event"] == event)
            .unwrap_or_else(|| panic!("no {event} line for {id} in {lines:#?}"))
            .clone()
    };
    let queued = of("queued");
    assert_eq!(queued["level"], "INFO");
    assert_eq!(queued["nrcpt"], "1");
    assert_eq!(queued["tls"], "none");
    assert_eq!(queued["client"], "[127.0.0.1]");
    assert!(queued["size"].as_str().unwrap().parse::<u64>().is_ok());
    let sent = of("sent");
    assert_eq!(sent["to"], "b@dest.example");
    assert_eq!(sent["status"], "sent");
    let refused = lines
        .iter()
        .find(|v| v["event"] == "refused")
        .unwrap_or_else(|| panic!("no refusal in {lines:#?}"));
    assert_eq!(refused["level"], "INFO");
    assert!(refused["client"]
        .as_str()
        .unwrap()
        .starts_with("127.0.0.2:"));
    assert_eq!(refused["reason"], "relay_denied");
    assert_eq!(refused["reply"], "550 5.7.1 Relaying denied");

    // mail queued by `smtp-relay send`: the server's queued line says who
    // and how, as fields
    let id = send_v(relay.spool(), "b@dest.example");
    assert!(sink.wait_for(2, DELIVERY));
    let mut queued = None;
    wait_until(DELIVERY, || {
        queued = json_lines(&relay.log())
            .into_iter()
            .find(|v| v["id"] == id.as_str() && v["event"] == "queued");
        queued.is_some()
    });
    let queued = queued.unwrap_or_else(|| panic!("no queued line for {id}:\n{}", relay.log()));
    assert_eq!(queued["client"], "local", "{queued}");
    assert_eq!(queued["via"], "send", "{queued}");
    assert_eq!(queued["from"], "<a@origin.example>", "{queued}");
    let uid = unsafe { libc::getuid() };
    assert_eq!(queued["uid"], uid.to_string().as_str(), "{queued}");
    assert!(queued["user"].is_string(), "{queued}");
}

/// `smtp-relay send -v` of a small message into `spool`; its queue id.
fn send_v(spool: &std::path::Path, rcpt: &str) -> String {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let mut child = Command::new(BIN)
        .args(["send", "-v", "--spool"])
        .arg(spool)
        .args(["-f", "a@origin.example", rcpt])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run send");
    let mut stdin = child.stdin.take().expect("stdin");
    stdin.write_all(b"Subject: sent\n\nhi\n").expect("write");
    drop(stdin);
    let out = child.wait_with_output().expect("send");
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{err}");
    err.lines()
        .find_map(|l| l.strip_prefix("queued as "))
        .unwrap_or_else(|| panic!("no `queued as` in {err}"))
        .trim()
        .to_string()
}

/// A refusal by a rule of the filter stage is one line (not one from
/// the rule and one from the reply writer), and its JSON carries the
/// client, the reason, the rule and the reply as fields.
#[test]
fn a_rule_refusal_is_one_line_with_client_rule_and_reply() {
    let relay = edge_relay(&["--rate-connections", "1", "--log-format", "json"]);
    for _ in 0..2 {
        let mut t = Talk::connect_from("127.0.0.2", relay.addr());
        t.reply();
    }
    let mut refusals = Vec::new();
    wait_until(DELIVERY, || {
        refusals = json_lines(&relay.log())
            .into_iter()
            .filter(|v| {
                v["msg"]
                    .as_str()
                    .unwrap_or("")
                    .contains("Too many connections")
            })
            .collect();
        !refusals.is_empty()
    });
    assert_eq!(refusals.len(), 1, "{refusals:#?}");
    let r = &refusals[0];
    assert_eq!(r["level"], "INFO");
    assert_eq!(r["event"], "refused");
    assert!(
        r["client"].as_str().unwrap().starts_with("127.0.0.2:"),
        "{r}"
    );
    assert_eq!(r["reason"], "rate_limit");
    assert_eq!(r["rule"], "rate-connections");
    assert_eq!(r["reply"], "421 4.7.0 Too many connections from 127.0.0.2");
}

/// A message refused at the end of its data (here too big) is one INFO
/// line too, the reply writer's, with the client, reason and reply.
#[test]
fn a_refused_message_is_one_line() {
    let relay = Relay::receive_only(&["--max-size", "100"]);
    let mut t = relay.session();
    t.cmd("MAIL FROM:<a@origin.example>", 250);
    t.cmd("RCPT TO:<b@dest.example>", 250);
    t.cmd("DATA", 354);
    t.send_raw(format!("Subject: big\r\n\r\n{}\r\n.\r\n", "x".repeat(300)).as_bytes());
    t.expect(552);
    t.cmd("QUIT", 221);
    let mut log = String::new();
    wait_until(DELIVERY, || {
        log = relay.log();
        log.contains(" refused reason=size")
    });
    let lines: Vec<&str> = log.lines().filter(|l| l.contains("552 ")).collect();
    assert_eq!(lines.len(), 1, "{log}");
    assert!(
        lines[0].contains("127.0.0.1:") && lines[0].contains(" refused reason=size reply=\"552 "),
        "{log}"
    );
}

#[test]
fn sigusr1_reopens_the_log_file() {
    let dir = TempDir::new("logfile");
    let file = dir.path().join("relay.log");
    let rotated = dir.path().join("relay.log.1");
    let relay = Relay::receive_only(&["--log-file", file.to_str().unwrap()]);
    let mut t = relay.session();
    t.cmd("NOOP", 250);
    let first = relay
        .session()
        .send_mail("a@origin.example", &["b@dest.example"], b"\r\none\r\n");
    assert!(wait_until(Duration::from_secs(5), || {
        std::fs::read_to_string(&file).is_ok_and(|s| s.contains(&format!("{first} queued")))
    }));
    std::fs::rename(&file, &rotated).unwrap();
    relay.signal("USR1");
    assert!(
        wait_until(Duration::from_secs(10), || file.exists()),
        "no new log file after SIGUSR1"
    );
    let second = relay
        .session()
        .send_mail("a@origin.example", &["b@dest.example"], b"\r\ntwo\r\n");
    assert!(
        wait_until(Duration::from_secs(5), || {
            std::fs::read_to_string(&file).is_ok_and(|s| s.contains(&format!("{second} queued")))
        }),
        "new lines not in the new file"
    );
    let old = std::fs::read_to_string(&rotated).unwrap();
    assert!(old.contains(&format!("{first} queued")));
    assert!(!old.contains(&second), "the rotated file got new lines");
    drop(t);
}
