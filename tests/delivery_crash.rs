//! Crashes on the delivery side: SIGKILL while a transaction is in flight,
//! and after a partly successful one, then a restart on the same spool.
//! The promise (delivery.rs): nothing is lost; a duplicate is possible only
//! for the one transaction that was in flight; a recipient recorded `sent`
//! is never sent again.

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
