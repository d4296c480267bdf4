//! The DSN extension (RFC 3461) against the real binary: the parameters
//! are offered, kept in the envelope, passed on to a next hop that offers
//! DSN (a second smtp-relay, and a real Postfix), and honoured in our own
//! reports: NOTIFY=NEVER (no bounce), SUCCESS (`relayed` past a next hop
//! without DSN, our scripted sink), DELAY (delay warnings), RET=FULL/HDRS,
//! ENVID and ORCPT.

mod common;
mod tlsutil;

use common::*;
use tlsutil::{postfix_usable, PostfixInstance, LIMIT};

/// A relay that delivers everything (the senders' bounces included) to
/// `next`, retrying after a second.
fn forwarding_relay(next: std::net::SocketAddr, extra: &[&str]) -> Relay {
    let route = format!("*=127.0.0.1:{}", next.port());
    let mut args = vec![
        "--no-dns",
        "--route",
        &route,
        "--retry-min",
        "1s",
        "--retry-max",
        "1s",
        "--delivery-timeout",
        "10s",
    ];
    args.extend_from_slice(extra);
    Relay::start(&args)
}

/// One transaction with DSN parameters; returns the queue id.
fn submit(relay: &Relay, mail: &str, rcpts: &[&str], body: &str) -> String {
    let mut t = relay.session();
    t.cmd_enh(&format!("MAIL FROM:{mail}"), 250, "2.1.0");
    for r in rcpts {
        t.cmd_enh(&format!("RCPT TO:{r}"), 250, "2.1.5");
    }
    t.cmd_enh("DATA", 354, "2.0.0");
    t.send_raw(body.as_bytes());
    t.send_raw(b".\r\n");
    let id = queued_id(&t.expect_enh(250, "2.0.0")).expect("queued");
    t.cmd("QUIT", 221);
    id
}

fn text(m: &Received) -> String {
    String::from_utf8_lossy(&m.data).to_string()
}

/// The messages from `<>` the sink has.
fn bounces(sink: &Sink) -> Vec<Received> {
    sink.messages()
        .into_iter()
        .filter(|m| m.mail_from.is_empty())
        .collect()
}

fn queue_empty(relay: &Relay) -> bool {
    wait_until(LIMIT, || queue_files(relay.spool()).is_empty())
}

#[test]
fn parameters_are_offered_and_kept_in_the_envelope() {
    let relay = Relay::receive_only(&[]);
    let mut t = relay.session();
    t.cmd("RSET", 250);
    let mut t2 = Talk::connect(relay.addr());
    t2.expect(220);
    let ehlo = t2.cmd("EHLO client.test", 250);
    assert!(ehlo.lines().any(|l| l == "DSN"), "{ehlo}");
    // HELO sessions take no parameters
    t2.cmd("HELO client.test", 250);
    t2.cmd("MAIL FROM:<a@origin.example>", 250);
    t2.cmd_enh("RCPT TO:<b@dest.example> NOTIFY=NEVER", 555, "5.5.4");
    drop(t2);
    let id = submit(
        &relay,
        "<a@origin.example> RET=HDRS ENVID=QQ+2B314",
        &[
            "<b@dest.example> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;b+2Bx@dest.example",
            "<c@dest.example> NOTIFY=NEVER",
            "<d@dest.example>",
        ],
        "Subject: dsn\r\n\r\nx\r\n",
    );
    let env = read_env(relay.spool(), &id);
    assert!(env.contains("\nret: HDRS\n"), "{env}");
    assert!(env.contains("\nenvid: QQ+2B314\n"), "{env}");
    assert!(
        env.contains(
            "rcpt: pending\t<b@dest.example>\t-\nrcpt-dsn: SUCCESS,FAILURE\trfc822;b+2Bx@dest.example\n"
        ),
        "{env}"
    );
    assert!(
        env.contains("rcpt: pending\t<c@dest.example>\t-\nrcpt-dsn: NEVER\t-\n"),
        "{env}"
    );
    assert!(
        env.contains("rcpt: pending\t<d@dest.example>\t-\nend\n"),
        "{env}"
    );
    // bad values are syntax errors
    t.cmd_enh("MAIL FROM:<a@origin.example> RET=ALL", 501, "5.5.4");
    t.cmd("MAIL FROM:<a@origin.example>", 250);
    t.cmd_enh("RCPT TO:<b@dest.example> NOTIFY=NEVER,DELAY", 501, "5.5.4");
    t.cmd_enh(
        "RCPT TO:<b@dest.example> ORCPT=b@dest.example",
        501,
        "5.5.4",
    );
}

#[test]
fn passed_on_to_a_next_hop_that_offers_dsn() {
    let next = Relay::receive_only(&[]);
    let relay = forwarding_relay(next.addr(), &[]);
    submit(
        &relay,
        "<a@origin.example> RET=FULL ENVID=env-1",
        &["<b@dest.example> NOTIFY=SUCCESS ORCPT=rfc822;b@dest.example"],
        "Subject: passed on\r\n\r\nx\r\n",
    );
    let mut ids = Vec::new();
    assert!(
        wait_until(LIMIT, || {
            ids = queued_ids(next.spool());
            !ids.is_empty()
        }),
        "{}",
        relay.log()
    );
    let env = read_env(next.spool(), &ids[0]);
    assert!(env.contains("\nret: FULL\nenvid: env-1\n"), "{env}");
    assert!(
        env.contains("rcpt-dsn: SUCCESS\trfc822;b@dest.example\n"),
        "{env}"
    );
    assert!(queue_empty(&relay));
    // the next hop took over the duty to report: no DSN from us
    assert_eq!(queued_ids(next.spool()).len(), 1, "only the message");
    assert!(!relay.log().contains("notification"), "{}", relay.log());
}

#[test]
fn notify_success_past_a_non_dsn_next_hop_is_relayed() {
    let sink = Sink::start();
    let relay = forwarding_relay(sink.addr(), &[]);
    submit(
        &relay,
        "<a@origin.example> ENVID=QQ+2B314",
        &[
            "<b@dest.example> NOTIFY=SUCCESS ORCPT=rfc822;b+2Bx@dest.example",
            "<c@dest.example>",
        ],
        "Subject: want success\r\n\r\nbody text\r\n",
    );
    assert!(sink.wait_for(2, LIMIT), "{}", relay.log());
    let b = bounces(&sink);
    assert_eq!(b.len(), 1, "{b:?}");
    assert_eq!(b[0].rcpts, ["a@origin.example"]);
    let dsn = text(&b[0]);
    for needle in [
        "Subject: Successful Mail Relay Report\r\n",
        "Original-Envelope-Id: QQ+314\r\n",
        "Original-Recipient: rfc822; b+x@dest.example\r\nFinal-Recipient: rfc822; b@dest.example\r\nAction: relayed\r\nStatus: 2.0.0\r\n",
        "Content-Type: text/rfc822-headers",
        "Subject: want success\r\n",
    ] {
        assert!(dsn.contains(needle), "missing {needle:?} in\n{dsn}");
    }
    // c did not ask for success reports
    assert!(!dsn.contains("c@dest.example"), "{dsn}");
    assert!(!dsn.contains("body text"), "headers only: {dsn}");
    // the message itself went out without DSN parameters (not offered)
    let orig: Vec<Received> = sink
        .messages()
        .into_iter()
        .filter(|m| !m.mail_from.is_empty())
        .collect();
    assert!(
        !orig[0].mail_params.iter().any(|p| p.starts_with("ENVID")),
        "{:?}",
        orig[0].mail_params
    );
}

#[test]
fn notify_never_means_no_bounce_and_ret_decides_what_comes_back() {
    let sink = Sink::with(SinkConfig::default().rcpt(|to| {
        if to.starts_with("bad") {
            Action::reply(550, "5.1.1 no such user")
        } else {
            Action::reply(250, "2.1.5 ok")
        }
    }));
    let relay = forwarding_relay(sink.addr(), &[]);
    // NEVER: refused, and nobody hears of it
    let id = submit(
        &relay,
        "<a@origin.example>",
        &["<bad1@dest.example> NOTIFY=NEVER"],
        "Subject: never\r\n\r\nsecret body\r\n",
    );
    assert!(queue_empty(&relay), "{}", relay.log());
    assert!(
        relay
            .log()
            .contains(&format!("{id} no DSN for 1 recipient(s)")),
        "{}",
        relay.log()
    );
    assert!(bounces(&sink).is_empty());

    // FAILURE with RET=FULL: the whole message comes back
    submit(
        &relay,
        "<a@origin.example> RET=FULL ENVID=full-1",
        &["<bad2@dest.example> NOTIFY=FAILURE ORCPT=rfc822;bad2@dest.example"],
        "Subject: full\r\n\r\nthe full body\r\n",
    );
    assert!(wait_until(LIMIT, || bounces(&sink).len() == 1));
    let dsn = text(&bounces(&sink)[0]);
    for needle in [
        "Original-Envelope-Id: full-1\r\n",
        "Original-Recipient: rfc822; bad2@dest.example\r\n",
        "Action: failed\r\nStatus: 5.1.1\r\n",
        "Content-Type: message/rfc822\r\n",
        "Subject: full\r\n\r\nthe full body\r\n",
    ] {
        assert!(dsn.contains(needle), "missing {needle:?} in\n{dsn}");
    }

    // RET=HDRS: the headers only
    submit(
        &relay,
        "<a@origin.example> RET=HDRS",
        &["<bad3@dest.example>"],
        "Subject: hdrs\r\n\r\nnot returned\r\n",
    );
    assert!(wait_until(LIMIT, || bounces(&sink).len() == 2));
    let dsn = bounces(&sink)
        .iter()
        .map(text)
        .find(|t| t.contains("bad3@dest.example"))
        .expect("the HDRS bounce");
    assert!(dsn.contains("Content-Type: text/rfc822-headers"), "{dsn}");
    assert!(dsn.contains("Subject: hdrs\r\n"), "{dsn}");
    assert!(!dsn.contains("not returned"), "{dsn}");
    assert!(!dsn.contains("Original-Envelope-Id"), "{dsn}");
}

#[test]
fn delay_warnings_go_to_recipients_that_ask_for_them() {
    let sink = Sink::with(SinkConfig::default().rcpt(|to| {
        if to.starts_with('r') {
            Action::reply(450, "4.2.0 mailbox busy")
        } else {
            Action::reply(250, "2.1.5 ok")
        }
    }));
    let relay = forwarding_relay(sink.addr(), &["--delay-warning", "1s"]);
    let id = submit(
        &relay,
        "<a@origin.example>",
        &[
            "<r1@dest.example> NOTIFY=DELAY,FAILURE",
            "<r2@dest.example> NOTIFY=FAILURE",
            "<r3@dest.example>",
        ],
        "Subject: slow\r\n\r\nx\r\n",
    );
    assert!(
        wait_until(LIMIT, || bounces(&sink).len() == 1),
        "{}",
        relay.log()
    );
    let dsn = text(&bounces(&sink)[0]);
    assert!(dsn.contains("Action: delayed"), "{dsn}");
    assert!(
        dsn.contains("Final-Recipient: rfc822; r1@dest.example"),
        "{dsn}"
    );
    // no NOTIFY: the default includes delays
    assert!(
        dsn.contains("Final-Recipient: rfc822; r3@dest.example"),
        "{dsn}"
    );
    assert!(!dsn.contains("r2@dest.example"), "{dsn}");
    assert!(env_path(relay.spool(), &id).exists(), "still queued");
}

/// A real DSN-capable next hop: smtp-relay passes NOTIFY=SUCCESS to
/// Postfix, which relays to our sink (no DSN there) and itself reports
/// `relayed` to the sender; we send no report of our own.
#[test]
fn postfix_takes_the_dsn_request_over() {
    let test = "postfix_takes_the_dsn_request_over";
    if !postfix_usable(test) {
        return;
    }
    let sink = Sink::start();
    let postfix = PostfixInstance::start(sink.addr().port(), "");
    let relay = forwarding_relay(
        std::net::SocketAddr::from(([127, 0, 0, 1], postfix.port)),
        &[],
    );
    submit(
        &relay,
        "<a@origin.example> ENVID=pf-1",
        &["<b@dest.example> NOTIFY=SUCCESS ORCPT=rfc822;b@dest.example"],
        "Subject: via postfix\r\n\r\nx\r\n",
    );
    assert!(
        wait_until(LIMIT, || bounces(&sink).len() == 1 && sink.count() == 2),
        "relay log:\n{}\npostfix log:\n{}",
        relay.log(),
        postfix.maillog()
    );
    let dsn = text(&bounces(&sink)[0]);
    assert!(dsn.contains("postfix.test"), "Postfix wrote it: {dsn}");
    assert!(dsn.contains("Action: relayed"), "{dsn}");
    assert!(dsn.contains("Original-Envelope-Id: pf-1"), "{dsn}");
    assert!(
        dsn.contains("Original-Recipient: rfc822;b@dest.example")
            || dsn.contains("Original-Recipient: rfc822; b@dest.example"),
        "{dsn}"
    );
    assert!(queue_empty(&relay));
    assert!(!relay.log().contains("notification"), "{}", relay.log());
}
