//! Rate limits per client address and per authenticated user
//! (`--rate-connections`, `--rate-messages`, `--rate-recipients`, per
//! minute), with small numbers. Clients connect from 127.0.0.2, outside
//! `--relay-net 127.0.0.1/32`; 127.0.0.1 is the trusted, exempt one.

mod common;

use common::*;

#[test]
fn connections_per_minute_per_address() {
    let r = edge_relay(&["--rate-connections", "2", "--metrics", "127.0.0.1:0"]);
    for _ in 0..2 {
        let mut t = Talk::connect_from("127.0.0.2", r.addr());
        t.expect(220);
        t.cmd("QUIT", 221);
    }
    let mut t = Talk::connect_from("127.0.0.2", r.addr());
    assert_eq!(
        t.expect_enh(421, "4.7.0"),
        "Too many connections from 127.0.0.2"
    );
    t.expect_closed();
    // another address has its own count; relay-net is exempt
    Talk::connect_from("127.0.0.3", r.addr()).expect(220);
    for _ in 0..4 {
        Talk::connect(r.addr()).expect(220);
    }
    let log = r.log();
    let refusals = refused_lines(&log, "127.0.0.2");
    assert_eq!(refusals.len(), 1, "one line per refusal: {log}");
    assert!(
        refusals[0].contains(" refused reason=rate_limit rule=\"rate-connections\" reply=\"421 4.7.0 Too many connections from 127.0.0.2\""),
        "{log}"
    );
    let (_, metrics) = http_get(metrics_addr(&r), "/metrics");
    assert_eq!(
        sample(&metrics, "smtp_relay_refused_total{reason=\"rate_limit\"}"),
        1.0
    );
}

#[test]
fn messages_and_recipients_per_minute_per_address() {
    let r = edge_relay(&["--rate-messages", "2", "--rate-recipients", "3"]);
    let mut t = Talk::connect_from("127.0.0.2", r.addr());
    t.expect(220);
    t.cmd("EHLO client.test", 250);
    t.cmd("MAIL FROM:<a@sender.test>", 250);
    for i in 0..3 {
        t.cmd(&format!("RCPT TO:<u{i}@example.org>"), 250);
    }
    assert_eq!(
        t.cmd_enh("RCPT TO:<u3@example.org>", 450, "4.7.1"),
        "Rate limit exceeded"
    );
    // the refused recipient was taken back: the other three are queued
    t.cmd("DATA", 354);
    t.send_raw(b"Subject: x\r\n\r\nbody\r\n.\r\n");
    let id = queued_id(&t.expect(250)).expect("queued");
    assert_eq!(EnvFile::load(r.spool(), &id).rcpts().len(), 3);
    t.cmd("MAIL FROM:<a@sender.test>", 250);
    t.cmd("RSET", 250);
    assert_eq!(
        t.cmd_enh("MAIL FROM:<a@sender.test>", 450, "4.7.1"),
        "Rate limit exceeded"
    );
    // no transaction was opened by the refused MAIL
    t.cmd_enh("RCPT TO:<u@example.org>", 503, "5.5.1");
    // another address is not held back; relay-net is exempt
    let mut other = Talk::connect_from("127.0.0.3", r.addr());
    other.expect(220);
    other.cmd("EHLO client.test", 250);
    other.cmd("MAIL FROM:<a@sender.test>", 250);
    other.cmd("RCPT TO:<u@example.org>", 250);
    let mut trusted = Talk::greet(r.addr());
    for _ in 0..4 {
        trusted.cmd("MAIL FROM:<a@sender.test>", 250);
        for i in 0..4 {
            trusted.cmd(&format!("RCPT TO:<u{i}@example.org>"), 250);
        }
        trusted.cmd("RSET", 250);
    }
    let log = r.log();
    let refusals = refused_lines(&log, "127.0.0.2");
    assert!(refusals.iter().any(|l| l.contains(" refused reason=rate_limit rule=\"rate-messages address 127.0.0.2\" reply=\"450 4.7.1 Rate limit exceeded\"")), "{log}");
    assert!(
        refusals
            .iter()
            .any(|l| l
                .contains(" refused reason=rate_limit rule=\"rate-recipients address 127.0.0.2\"")),
        "{log}"
    );
    // RCPT, MAIL, and the RCPT without a transaction (503): one line each
    assert_eq!(refusals.len(), 3, "{log}");
}

#[test]
fn an_authenticated_user_is_counted_by_name() {
    let dir = TempDir::new("rate-user");
    let file = dir.path().join("passwd");
    assert_eq!(passwd(&file, "alice", "alice-secret-1\n").0, Some(0));
    let file = file.display().to_string();
    // relay-net is elsewhere: 127.0.0.1 is an ordinary client here, and
    // AUTH is offered to loopback without TLS
    let r = Relay::receive_only(&[
        "--auth-file",
        &file,
        "--relay-net",
        "192.0.2.0/24",
        "--rate-messages",
        "1",
    ]);
    let auth = |t: &mut Talk| {
        let token = smtp_relay::auth::encode_base64(b"\0alice\0alice-secret-1");
        t.cmd(&format!("AUTH PLAIN {token}"), 235);
    };
    let mut t = Talk::greet(r.addr());
    auth(&mut t);
    t.cmd("MAIL FROM:<alice@sender.test>", 250);
    t.cmd("RSET", 250);
    t.cmd_enh("MAIL FROM:<alice@sender.test>", 450, "4.7.1");
    // the same user from a new session is still counted
    let mut again = Talk::greet(r.addr());
    auth(&mut again);
    again.cmd_enh("MAIL FROM:<alice@sender.test>", 450, "4.7.1");
    // the same address without AUTH is counted apart, by address
    let mut anon = Talk::greet(r.addr());
    anon.cmd("MAIL FROM:<x@sender.test>", 250);
    assert!(r
        .log()
        .contains("refused reason=rate_limit rule=\"rate-messages user alice\""));
}
