//! A panic costs neither capacity nor a message (README "Panics"): a
//! session that panics loses its connection but not its worker; a
//! delivery attempt that panics is deferred and retried; a committer that
//! panics answers its batch 451 and a new loop takes the next commits.
//!
//! The panics come from the debug-only fault hook (`SMTP_RELAY_FAULT`,
//! `src/fault.rs`); the tests run the debug binary, where it is compiled in.

mod common;

use std::time::Duration;

use common::*;

const BODY: &[u8] = b"Subject: x\r\n\r\nhi\r\n";

fn fault(spec: &str) -> [(&'static str, &str); 1] {
    [("SMTP_RELAY_FAULT", spec)]
}

#[test]
fn session_panics_do_not_shrink_the_pool() {
    let relay = Relay::start_env(
        &["--delivery-workers", "0", "--workers", "2"],
        &fault("session-panic:2"),
    );
    // two panics: as many as there are workers
    for _ in 0..2 {
        let mut t = relay.talk();
        t.expect(220);
        t.send("EHLO client.test");
        t.expect_closed();
    }
    // both workers still serve, at the same time
    let mut a = relay.session();
    let mut b = relay.session();
    let ida = a.send_mail("a@client.test", &["x@example.org"], BODY);
    let idb = b.send_mail("b@client.test", &["y@example.org"], BODY);
    a.cmd("QUIT", 221);
    b.cmd("QUIT", 221);
    let ids = queued_ids(relay.spool());
    assert!(ids.contains(&ida) && ids.contains(&idb), "{ids:?}");
    let log = relay.log();
    assert_eq!(
        log.matches("session (connection dropped, worker continues) panicked: fault injected: session-panic")
            .count(),
        2,
        "{log}"
    );
}

#[test]
fn delivery_panic_is_retried_not_stranded() {
    let sink = Sink::start();
    let route = format!("example.org=127.0.0.1:{}", sink.addr().port());
    let relay = Relay::start_env(
        &[
            "--no-dns",
            "--route",
            &route,
            "--retry-min",
            "1s",
            "--retry-max",
            "1s",
            "--delivery-workers",
            "1",
        ],
        &fault("delivery-panic"),
    );
    let mut t = relay.session();
    let id = t.send_mail("a@client.test", &["x@example.org"], BODY);
    t.cmd("QUIT", 221);
    assert!(
        sink.wait_for(1, Duration::from_secs(20)),
        "{id} never delivered after the panic\n{}",
        relay.log()
    );
    assert!(wait_until(Duration::from_secs(10), || queue_files(
        relay.spool()
    )
    .is_empty()));
    let log = relay.log();
    assert!(
        log.contains(&format!(
            "{id} delivery attempt panicked: fault injected: delivery-panic"
        )),
        "{log}"
    );
    assert!(
        log.contains(&format!("{id} deferred: local error")),
        "{log}"
    );
    // and the one worker took the next message too
    let mut t = relay.session();
    t.send_mail("a@client.test", &["y@example.org"], BODY);
    assert!(sink.wait_for(2, Duration::from_secs(20)), "{}", relay.log());
}

/// One message, whose end of data is answered 451 (its commit failed).
fn send_answered_451(t: &mut Talk) {
    send_answered_451_with(t, BODY);
}

fn send_answered_451_with(t: &mut Talk, body: &[u8]) {
    t.cmd_enh("MAIL FROM:<a@client.test>", 250, "2.1.0");
    t.cmd_enh("RCPT TO:<x@example.org>", 250, "2.1.5");
    t.cmd_enh("DATA", 354, "2.0.0");
    t.send_raw(body);
    t.send_raw(b".\r\n");
    t.expect_enh(451, "4.3.0");
}

#[test]
fn committer_panic_fails_its_batch_and_later_commits_succeed() {
    let relay = Relay::start_env(&["--delivery-workers", "0"], &fault("commit-panic"));
    let mut t = relay.session();
    send_answered_451(&mut t);
    // the next messages are acknowledged and on disk
    let mut ids = Vec::new();
    for i in 0..3 {
        ids.push(t.send_mail("a@client.test", &[&format!("r{i}@example.org")], BODY));
    }
    t.cmd("QUIT", 221);
    for id in &ids {
        assert_complete(relay.spool(), id);
    }
    let log = relay.log();
    assert!(
        log.contains("committer (its batch answered 451, a new loop takes over) panicked"),
        "{log}"
    );
}

/// A flush that fails (here injected; a disk that failed writeback does
/// it) leaves nothing queued behind the client's 451: a lone small message
/// goes through the commit log, whose failed fdatasync comes before any
/// rename; a message too big for the log is renamed first and taken back
/// out of `queue/` (to be sent, perhaps with bytes that were never
/// written, otherwise). Nothing is left in `tmp/`, and the next message
/// is acknowledged and queued.
#[test]
fn a_failed_commit_flush_leaves_nothing_queued() {
    let big = [
        &b"Subject: big\r\n\r\n"[..],
        &vec![b'x'; 70 * 1024],
        b"\r\n",
    ]
    .concat();
    for (body, said) in [
        (
            BODY,
            "1 messages answered 451, and group commits take their flushes without the log",
        ),
        (&big[..], "commit failed, 1 messages taken back out"),
    ] {
        let relay = Relay::start_env(&["--delivery-workers", "0"], &fault("commit-flush-fail"));
        let mut t = relay.session();
        send_answered_451_with(&mut t, body);
        assert_eq!(queue_files(relay.spool()), Vec::<String>::new());
        assert!(
            wait_until(Duration::from_secs(5), || tmp_files(relay.spool())
                .is_empty()),
            "{:?}",
            tmp_files(relay.spool())
        );
        let id = t.send_mail("a@client.test", &["y@example.org"], BODY);
        assert_eq!(queued_ids(relay.spool()), vec![id.clone()]);
        assert_complete(relay.spool(), &id);
        let log = relay.log();
        assert!(log.contains(said), "{log}");
    }
}
