//! Traffic shaping end to end (README "Traffic shaping"): the real relay
//! delivers to in-process sinks on loopback, limited per destination by
//! `[route DOMAIN]` sections. Each limit is checked against a positive
//! control without it, so a test cannot pass because nothing overlapped
//! or everything happened to be slow. Bounds on time are wide: this
//! proves spacing, not speed.

mod common;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;

/// A config file: `no-dns`, the `options` lines, then one `[route
/// DOMAIN]` section per entry (domain, sink, extra section lines). The
/// options are in the file so that the receive-only relay's
/// `--delivery-workers 0` on the command line wins over them.
fn config(dir: &TempDir, options: &str, routes: &[(&str, &Sink, &str)]) -> PathBuf {
    let mut text = format!("no-dns = yes\n{options}");
    for (domain, sink, extra) in routes {
        text.push_str(&format!(
            "[route {domain}]\nhosts = 127.0.0.1:{}\n{extra}",
            sink.addr().port()
        ));
    }
    write_file(dir.path(), "relay.conf", text.as_bytes())
}

/// Queues one message per recipient in a relay that does not deliver,
/// then starts a delivering relay on that spool: every message is due at
/// once, as after an outage.
fn queue_then_deliver(spool: &TempDir, rcpts: &[String], args: &[&str]) -> Relay {
    {
        let receiving = Relay::receive_only_with_spool(spool.path().to_path_buf(), args);
        for rcpt in rcpts {
            let mut t = receiving.session();
            t.send_mail("s@origin.example", &[rcpt], b"Subject: x\r\n\r\nx\r\n");
        }
    }
    Relay::start_with_spool(spool.path().to_path_buf(), args)
}

fn rcpts(prefix: &str, domain: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}{i}@{domain}")).collect()
}

fn spool_empties(relay: &Relay) -> bool {
    wait_until(Duration::from_secs(20), || {
        queue_files(relay.spool()).is_empty()
    })
}

/// Transactions per connection at the sink (a connection is the
/// relay's source address and port).
fn per_connection(sink: &Sink) -> Vec<usize> {
    let mut by_peer: HashMap<std::net::SocketAddr, usize> = HashMap::new();
    for m in sink.messages() {
        *by_peer.entry(m.peer).or_default() += 1;
    }
    let mut v: Vec<usize> = by_peer.into_values().collect();
    v.sort_unstable();
    v
}

/// `max-messages-per-connection = 3`: the sink sees at most 3 MAIL
/// transactions on any one connection, and 3 on some; without it the
/// same 7 messages share one connection past 3.
#[test]
fn max_messages_per_connection_is_observed_at_the_sink() {
    let mut seen = Vec::new();
    for extra in ["max-messages-per-connection = 3\n", ""] {
        let sink = Sink::start();
        let dir = TempDir::new("shape-mpc");
        let conf = config(
            &dir,
            "delivery-workers = 1\n",
            &[("dest.example", &sink, extra)],
        );
        let spool = TempDir::new("shape-mpc-spool");
        let args = ["--config", conf.to_str().expect("utf-8 path")];
        let relay = queue_then_deliver(&spool, &rcpts("r", "dest.example", 7), &args);
        assert!(
            sink.wait_for(7, Duration::from_secs(20)),
            "{extra:?}: delivered {} of 7\n{}",
            sink.count(),
            relay.log()
        );
        assert!(spool_empties(&relay), "{:?}", queue_files(relay.spool()));
        seen.push(per_connection(&sink));
    }
    let (limited, control) = (&seen[0], &seen[1]);
    assert_eq!(limited.iter().sum::<usize>(), 7);
    assert_eq!(limited.iter().max(), Some(&3), "limited: {limited:?}");
    assert!(
        limited.len() >= 3,
        "7 messages need 3 connections: {limited:?}"
    );
    assert!(
        control.iter().max().is_some_and(|&n| n > 3),
        "without the limit one connection carries more than 3: {control:?}"
    );
}

/// A sink that notes when each message's data ended.
fn timed_sink() -> (Sink, Arc<Mutex<Vec<Instant>>>) {
    let times = Arc::new(Mutex::new(Vec::new()));
    let sink = Sink::with(SinkConfig::default().data_end_fn({
        let times = times.clone();
        move |_| {
            times.lock().expect("times").push(Instant::now());
            Action::reply(250, "2.0.0 Ok")
        }
    }));
    (sink, times)
}

fn span(times: &Mutex<Vec<Instant>>) -> Duration {
    let t = times.lock().expect("times");
    match (t.first(), t.last()) {
        (Some(a), Some(b)) => *b - *a,
        _ => Duration::ZERO,
    }
}

/// `message-rate = 60/min` on one destination: its 6 messages are spaced
/// about a second apart (5 s in all; at least 3.5 s required), each
/// delivered at the first attempt (waiting for a token is not an
/// attempt), while 20 messages to an unlimited destination all arrive
/// before the limited one is half done. The positive control without the
/// rate delivers the same 6 in well under that.
#[test]
fn a_rate_limited_destination_is_spaced_and_another_is_not_delayed() {
    let mut spans = Vec::new();
    for rate in ["message-rate = 60/min\n", ""] {
        let (slow, slow_times) = timed_sink();
        let (fast, fast_times) = timed_sink();
        let dir = TempDir::new("shape-rate");
        let conf = config(
            &dir,
            "delivery-workers = 4\n",
            &[("slow.example", &slow, rate), ("fast.example", &fast, "")],
        );
        let spool = TempDir::new("shape-rate-spool");
        let mut all = rcpts("s", "slow.example", 6);
        all.extend(rcpts("f", "fast.example", 20));
        let args = ["--config", conf.to_str().expect("utf-8 path")];
        let relay = queue_then_deliver(&spool, &all, &args);
        assert!(
            fast.wait_for(20, Duration::from_secs(30)),
            "fast: {}",
            fast.count()
        );
        assert!(
            slow.wait_for(6, Duration::from_secs(30)),
            "slow: {}",
            slow.count()
        );
        assert!(spool_empties(&relay), "{:?}", queue_files(relay.spool()));
        let log = relay.log();
        assert_eq!(log.matches("status=deferred").count(), 0, "{log}");
        assert_eq!(
            log.matches("status=sent").count(),
            26,
            "every message sent once:\n{log}"
        );
        assert_eq!(
            log.matches(" attempts=1 ").count(),
            26,
            "a token wait is never an attempt:\n{log}"
        );
        if !rate.is_empty() {
            let slow_t = slow_times.lock().expect("times").clone();
            let fast_last = *fast_times.lock().expect("times").last().expect("fast");
            assert!(
                fast_last < slow_t[3],
                "the unlimited destination waited for the limited one"
            );
        }
        spans.push(span(&slow_times));
    }
    eprintln!(
        "slow destination's 6 messages: with 60/min {:?}, without {:?}",
        spans[0], spans[1]
    );
    assert!(spans[0] >= Duration::from_millis(3500), "{spans:?}");
    assert!(spans[1] < Duration::from_millis(3500), "control: {spans:?}");
}

/// A next hop that answers MAIL with `421 4.7.0 Try again later` backs
/// its destination off as a whole: one message is tried (one attempt
/// recorded), the four others wait without an attempt, `queue list
/// --summary` shows the backoff, and once the sink takes mail again
/// everything is delivered. The control (`451 4.3.0`, not throttling)
/// tries every message on its own.
#[test]
fn a_throttling_destination_backs_off_as_a_whole() {
    for (reply, throttles) in [
        ("4.7.0 Try again later", true),
        ("4.3.0 Temporary local problem", false),
    ] {
        let mails = Arc::new(AtomicUsize::new(0));
        let refusing = |code: u16| {
            let mails = mails.clone();
            SinkConfig::default().mail(move |_| {
                mails.fetch_add(1, Ordering::SeqCst);
                Action::reply(code, reply)
            })
        };
        let code = if throttles { 421 } else { 451 };
        let sink = Sink::with(refusing(code));
        let dir = TempDir::new("shape-throttle");
        let conf = config(
            &dir,
            "delivery-workers = 4\nthrottle-backoff = 4s\nretry-min = 1h\nretry-max = 2h\n",
            &[("t.example", &sink, "max-connections = 1\n")],
        );
        let spool = TempDir::new("shape-throttle-spool");
        let args = ["--config", conf.to_str().expect("utf-8 path")];
        let relay = queue_then_deliver(&spool, &rcpts("r", "t.example", 5), &args);
        if !throttles {
            // control: each message is tried in turn, none waits for it
            assert!(
                wait_until(Duration::from_secs(20), || mails.load(Ordering::SeqCst)
                    >= 5),
                "control: {} MAIL\n{}",
                mails.load(Ordering::SeqCst),
                relay.log()
            );
            assert!(!relay.log().contains("throttles us"), "{}", relay.log());
            continue;
        }
        assert!(
            wait_until(Duration::from_secs(10), || relay
                .log()
                .contains("throttles us")),
            "{}",
            relay.log()
        );
        let summary = queue_summary(&spool);
        assert_eq!(summary.code, Some(0), "{}", summary.stderr);
        let line = summary
            .stdout
            .lines()
            .find(|l| l.starts_with("throttled "))
            .unwrap_or_else(|| panic!("no throttle line in\n{}", summary.stdout));
        assert!(line.contains(" until "), "{line}");
        assert!(line.contains("(421 4.7.0 Try again later)"), "{line}");
        std::thread::sleep(Duration::from_secs(1));
        assert_eq!(mails.load(Ordering::SeqCst), 1, "one try, not five");
        let mut attempts: Vec<u32> = queued_ids(relay.spool())
            .iter()
            .map(|id| envelope_attempts(relay.spool(), id))
            .collect();
        attempts.sort_unstable();
        assert_eq!(attempts, [0, 0, 0, 0, 1], "attempts per message");
        // the provider takes mail again: after the backoff all go out
        sink.set_config(SinkConfig::default());
        assert!(
            sink.wait_for(5, Duration::from_secs(30)),
            "delivered {} of 5\n{}",
            sink.count(),
            relay.log()
        );
        assert!(spool_empties(&relay), "{:?}", queue_files(relay.spool()));
        let after = queue_summary(&spool);
        assert!(!after.stdout.contains("throttled "), "{}", after.stdout);
    }
}

/// `queue list --summary` on the spool, as an operator runs it.
fn queue_summary(spool: &TempDir) -> CliRun {
    let dir = spool.path().to_str().expect("utf-8 path");
    run_cli(
        &["queue", "list", "--summary", "--spool", dir],
        Duration::from_secs(20),
    )
}

/// The `attempts:` line of a queued message's envelope.
fn envelope_attempts(spool: &std::path::Path, id: &str) -> u32 {
    let text = std::fs::read_to_string(env_path(spool, id)).unwrap_or_default();
    text.lines()
        .find_map(|l| l.strip_prefix("attempts: "))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("no attempts line in\n{text}"))
}
