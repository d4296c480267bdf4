//! Signals a running server may get from an operator or a service manager
//! (README "Signals"): SIGHUP reloads the configuration (tests/reload.rs)
//! and is never fatal, SIGUSR1 reopens the log
//! file (tests/logs.rs; logged, harmless without one), SIGPIPE
//! is ignored, SIGTERM stops.

mod common;

use std::time::Duration;

use common::*;

/// A whole transaction still succeeds: the server is alive and serving.
fn still_serves(relay: &Relay) {
    let mut t = relay.session();
    t.send_mail(
        "a@client.test",
        &["b@example.org"],
        b"Subject: x\r\n\r\nhi\r\n",
    );
    t.cmd("QUIT", 221);
}

#[test]
fn sighup_is_logged_and_not_fatal() {
    let mut relay = Relay::receive_only(&[]);
    relay.signal("HUP");
    assert!(
        wait_until(Duration::from_secs(10), || relay
            .log()
            .contains("configuration reloaded from")),
        "no SIGHUP log line:\n{}",
        relay.log()
    );
    assert!(relay.exited().is_none(), "SIGHUP stopped the server");
    still_serves(&relay);
    // a second one too: the handler stays installed
    relay.signal("HUP");
    assert!(wait_until(Duration::from_secs(10), || relay
        .log()
        .matches("SIGHUP received")
        .count()
        == 2));
    still_serves(&relay);
    assert!(relay.exited().is_none());
}

#[test]
fn sigusr1_is_logged_and_not_fatal() {
    let mut relay = Relay::receive_only(&[]);
    relay.signal("USR1");
    assert!(
        wait_until(Duration::from_secs(10), || relay
            .log()
            .contains("SIGUSR1 received: logging to stderr")),
        "no SIGUSR1 log line:\n{}",
        relay.log()
    );
    assert!(relay.exited().is_none(), "SIGUSR1 stopped the server");
    still_serves(&relay);
}

/// SIGPIPE is ignored (SigIgn in /proc), so a peer that closes early
/// costs an EPIPE error on its own connection, not the process.
#[test]
fn sigpipe_is_ignored() {
    let mut relay = Relay::receive_only(&[]);
    let status = std::fs::read_to_string(format!("/proc/{}/status", relay.pid()))
        .expect("read /proc/PID/status");
    let ign = status
        .lines()
        .find_map(|l| l.strip_prefix("SigIgn:"))
        .map(|v| u64::from_str_radix(v.trim(), 16).expect("hex SigIgn"))
        .expect("SigIgn line");
    const SIGPIPE: u32 = 13;
    assert_ne!(
        ign & (1 << (SIGPIPE - 1)),
        0,
        "SIGPIPE not ignored: {status}"
    );
    // and a client that vanishes mid-reply does not stop anything
    for _ in 0..20 {
        let mut t = relay.talk();
        t.send_raw(b"EHLO a\r\nHELP\r\nHELP\r\nHELP\r\n");
        drop(t);
    }
    still_serves(&relay);
    assert!(relay.exited().is_none());
}

#[test]
fn sigterm_stops() {
    let mut relay = Relay::receive_only(&[]);
    relay.terminate();
    let status = relay.wait_exit(Duration::from_secs(20));
    assert!(status.is_some_and(|s| s.success()), "{status:?}");
}
