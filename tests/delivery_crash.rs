//! Crashes on the delivery side: SIGKILL while a transaction is in flight,
//! and after a partly successful one, then a restart on the same spool.
//! The promise (delivery.rs): nothing is lost; a duplicate is possible only
//! for the transactions of the attempt in flight since its last record
//! (made at its end, and every second while it lasts); a recipient
//! recorded `sent` is never sent again.

mod common;

use std::fs;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;

const LIMIT: Duration = Duration::from_secs(15);

fn to_strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

fn relay_args(sink: &Sink) -> Vec<String> {
    [
        "--no-dns",
        "--retry-min",
        "1s",
        "--retry-max",
        "1s",
        "--route",
        &format!("*=127.0.0.1:{}", sink.addr().port()),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// The envelope as it is now, if it exists and is whole.
fn env_now(spool: &Path, id: &str) -> Option<EnvFile> {
    let text = fs::read_to_string(env_path(spool, id)).ok()?;
    let env = EnvFile::parse(&text);
    env.ended.then_some(env)
}

#[test]
fn kill_during_a_transaction_redelivers_after_restart() {
    // The first end of data stalls (up to 5 s, or until released) before
    // the 250, so the kill lands while the relay waits for that reply.
    let entered = Arc::new(AtomicUsize::new(0));
    let release = Arc::new(AtomicBool::new(false));
    let finished = Arc::new(AtomicBool::new(false));
    let sink = Sink::with(SinkConfig::default().data_end_fn({
        let entered = entered.clone();
        let release = release.clone();
        let finished = finished.clone();
        move |_| {
            if entered.fetch_add(1, Ordering::SeqCst) == 0 {
                wait_until(Duration::from_secs(5), || release.load(Ordering::SeqCst));
                finished.store(true, Ordering::SeqCst);
            }
            Action::reply(250, "2.0.0 Ok: queued")
        }
    }));
    let mut relay = Relay::start(&to_strs(&relay_args(&sink)));
    let mut t = relay.session();
    let body = b"Subject: in flight\r\n\r\nkilled mid-transaction\r\n";
    let id = t.send_mail("s@origin.example", &["b@dest.example"], body);
    assert!(
        wait_until(LIMIT, || entered.load(Ordering::SeqCst) >= 1),
        "the relay never reached end of data"
    );
    relay.kill();
    // the relay never heard the 250: nothing was recorded
    let env = env_now(relay.spool(), &id).expect("the message is still queued");
    assert_eq!(
        env.rcpts()[0].0,
        "pending",
        "recorded without a reply:\n{}",
        env.text
    );
    release.store(true, Ordering::SeqCst);
    assert!(
        wait_until(LIMIT, || finished.load(Ordering::SeqCst)),
        "stalled sink thread did not finish"
    );

    relay.restart();
    assert!(
        wait_until(LIMIT, || queue_files(relay.spool()).is_empty()),
        "left: {:?}",
        queue_files(relay.spool())
    );
    // the in-flight transaction (answered into a dead socket) and the
    // redelivery: exactly two, the same message, never a third
    let seen = sink.attempts();
    assert_eq!(seen.len(), 2, "{seen:?}");
    for m in &seen {
        assert_eq!(m.rcpts, ["b@dest.example"]);
        let (received, rest) = split_received(&m.data);
        assert_eq!(rest, body);
        assert!(received.contains(&id), "{received:?}");
    }
    assert_eq!(
        seen[0].data, seen[1].data,
        "the same stored bytes both times"
    );
    assert_eq!(entered.load(Ordering::SeqCst), 2);
}

#[test]
fn sent_recipient_is_not_resent_after_a_crash() {
    let accept_b = Arc::new(AtomicBool::new(false));
    let sink = Sink::with(SinkConfig::default().rcpt({
        let accept_b = accept_b.clone();
        move |addr| {
            if addr.starts_with("b@") && !accept_b.load(Ordering::SeqCst) {
                Action::reply(451, "4.2.0 b is busy")
            } else {
                Action::reply(250, "2.1.5 Ok")
            }
        }
    }));
    let mut relay = Relay::start(&to_strs(&relay_args(&sink)));
    let mut t = relay.session();
    let id = t.send_mail(
        "s@origin.example",
        &["a@dest.example", "b@dest.example"],
        b"Subject: half now\r\n\r\nthe rest later\r\n",
    );
    let mut last = None;
    let recorded = wait_until(LIMIT, || {
        last = env_now(relay.spool(), &id);
        last.as_ref().is_some_and(|e| {
            let r = e.rcpts();
            r.len() == 2 && r[0].0 == "sent" && r[1].0 == "deferred"
        })
    });
    assert!(
        recorded,
        "a sent, b deferred never recorded:\n{:?}",
        last.map(|e| e.text)
    );
    assert_eq!(sink.count(), 1);
    assert_eq!(sink.messages()[0].rcpts, ["a@dest.example"]);

    relay.kill();
    accept_b.store(true, Ordering::SeqCst);
    relay.restart();
    assert!(
        wait_until(LIMIT, || queue_files(relay.spool()).is_empty()),
        "left: {:?}",
        queue_files(relay.spool())
    );
    let rcpts: Vec<String> = sink.messages().into_iter().flat_map(|m| m.rcpts).collect();
    let counts = tally(&rcpts);
    assert_eq!(counts.get("a@dest.example"), Some(&1), "{rcpts:?}");
    assert_eq!(counts.get("b@dest.example"), Some(&1), "{rcpts:?}");
    assert_eq!(rcpts.len(), 2, "{rcpts:?}");
    assert_eq!(sink.count(), 2);
}

/// A message to three domains, each on its own next hop: the attempt
/// records its recipients' states once, at its end, not after each
/// domain (while the third hop is in its transaction, the envelope on disk
/// still says pending for the two already sent). Killed then, the next
/// start delivers all three: the first two a second time (a duplicate,
/// never a loss), the third once more.
#[test]
fn a_fan_out_attempt_is_recorded_once_and_a_kill_loses_nothing() {
    let hold = Arc::new(AtomicBool::new(true));
    let seen: Arc<std::sync::Mutex<Option<String>>> = Arc::default();
    let spool_dir = TempDir::new("fanout-spool");
    let spool = spool_dir.path().join("spool");
    let a = Sink::start();
    let b = Sink::start();
    let c = Sink::with(SinkConfig::default().rcpt({
        let (hold, seen, spool) = (hold.clone(), seen.clone(), spool.clone());
        move |_| {
            // the envelope as stored while this transaction runs
            let ids = queued_ids(&spool);
            if let Some(id) = ids.first() {
                *seen.lock().unwrap() = fs::read_to_string(env_path(&spool, id)).ok();
            }
            if hold.load(Ordering::SeqCst) {
                Action::Hang(Duration::from_secs(30))
            } else {
                Action::reply(250, "2.1.5 Ok")
            }
        }
    }));
    let route = |d: &str, s: &Sink| format!("{d}=127.0.0.1:{}", s.addr().port());
    let args = [
        "--no-dns".to_string(),
        "--retry-min".into(),
        "1s".into(),
        "--retry-max".into(),
        "1s".into(),
        "--route".into(),
        route("a.example", &a),
        "--route".into(),
        route("b.example", &b),
        "--route".into(),
        route("c.example", &c),
    ];
    let mut relay = Relay::start_with_spool(spool.clone(), &to_strs(&args));
    let id = relay.session().send_mail(
        "s@origin.example",
        &["x@a.example", "y@b.example", "z@c.example"],
        b"Subject: three ways\r\n\r\nfan out\r\n",
    );
    assert!(
        wait_until(LIMIT, || seen.lock().unwrap().is_some()),
        "the third hop never got its RCPT"
    );
    assert_eq!((a.count(), b.count()), (1, 1));
    let stored = EnvFile::parse(seen.lock().unwrap().as_deref().unwrap_or(""));
    let states: Vec<String> = stored.rcpts().into_iter().map(|r| r.0).collect();
    assert_eq!(states, ["pending", "pending", "pending"], "{}", stored.text);

    relay.kill();
    hold.store(false, Ordering::SeqCst);
    relay.restart();
    assert!(
        wait_until(LIMIT, || queue_files(&spool).is_empty()),
        "left: {:?}",
        queue_files(&spool)
    );
    assert_eq!((a.count(), b.count(), c.count()), (2, 2, 1), "{id}");
}
