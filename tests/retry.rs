//! Retries and bounces with the real binary: temporary failures (4xx,
//! refused or broken connections, a silent next hop) are retried until
//! they succeed or the queue lifetime runs out; permanent ones (5xx) and
//! expiry bounce with an RFC 3464 DSN to the sender, never to `<>`.
//!
//! Timers are shrunk (`--retry-min 1s --retry-max 1s`): a retry comes due
//! about a second after a deferral. The scheduler counts in whole seconds,
//! so "about" is 1 to 2 seconds.

mod common;

use std::fs;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;

/// Longest wait for something that needs a retry or two.
const RETRIES: Duration = Duration::from_secs(15);

const FAST_RETRY: &[&str] = &["--retry-min", "1s", "--retry-max", "1s"];

fn to_strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

/// `--no-dns`, fast retries, the routes, then `extra`.
fn relay_args(routes: &[String], extra: &[&str]) -> Vec<String> {
    let mut v = vec!["--no-dns".to_string()];
    v.extend(FAST_RETRY.iter().map(|s| s.to_string()));
    for r in routes {
        v.push("--route".into());
        v.push(r.clone());
    }
    v.extend(extra.iter().map(|s| s.to_string()));
    v
}

fn route_to(domain: &str, sink: &Sink) -> String {
    format!("{domain}=127.0.0.1:{}", sink.addr().port())
}

fn spool_empties(spool: &Path, limit: Duration) -> bool {
    wait_until(limit, || queue_files(spool).is_empty())
}

/// The envelope as it is now, if it exists and is whole.
fn env_now(spool: &Path, id: &str) -> Option<EnvFile> {
    let text = fs::read_to_string(env_path(spool, id)).ok()?;
    let env = EnvFile::parse(&text);
    env.ended.then_some(env)
}

/// Waits until recipient `rcpt` (`<a@b>`) of `id` is `deferred` with a
/// last reply containing `needle`; returns that envelope.
fn wait_deferred(spool: &Path, id: &str, rcpt: &str, needle: &str) -> EnvFile {
    let mut last = None;
    let ok = wait_until(RETRIES, || {
        last = env_now(spool, id);
        last.as_ref().is_some_and(|e| {
            e.rcpts()
                .iter()
                .any(|(st, path, reply)| st == "deferred" && path == rcpt && reply.contains(needle))
        })
    });
    assert!(
        ok,
        "{id}: {rcpt} never deferred with {needle:?}; envelope:\n{}",
        last.map(|e| e.text).unwrap_or_else(|| "(gone)".into())
    );
    last.expect("checked above")
}

/// DSNs (null reverse-path) the sink accepted.
fn dsns(sink: &Sink) -> Vec<Received> {
    sink.messages()
        .into_iter()
        .filter(|m| m.mail_from.is_empty())
        .collect()
}

fn text(m: &Received) -> String {
    String::from_utf8_lossy(&m.data).to_string()
}

/// Asserts `m` is a DSN to `sender` saying `rcpt` failed with `status`.
fn assert_failed_dsn(m: &Received, sender: &str, rcpt: &str, status: &str) {
    let t = text(m);
    assert_eq!(m.mail_from, "", "a DSN comes from <>");
    assert_eq!(
        m.rcpts,
        vec![sender.to_string()],
        "a DSN goes to the sender"
    );
    for needle in [
        "Content-Type: multipart/report; report-type=delivery-status".to_string(),
        format!("\r\nFinal-Recipient: rfc822; {rcpt}\r\nAction: failed\r\nStatus: {status}\r\n"),
    ] {
        assert!(t.contains(&needle), "DSN lacks {needle:?}:\n{t}");
    }
}

fn subject_of(m: &Received) -> String {
    text(m)
        .lines()
        .find_map(|l| l.strip_prefix("Subject: ").map(str::to_string))
        .unwrap_or_default()
}

#[test]
fn deferred_at_rcpt_then_accepted_is_delivered_once() {
    let open = Arc::new(AtomicBool::new(false));
    let rcpt_calls = Arc::new(AtomicUsize::new(0));
    let sink = Sink::with(SinkConfig::default().rcpt({
        let open = open.clone();
        let calls = rcpt_calls.clone();
        move |_| {
            calls.fetch_add(1, Ordering::SeqCst);
            if open.load(Ordering::SeqCst) {
                Action::reply(250, "2.1.5 Ok")
            } else {
                Action::reply(451, "4.3.0 try again later")
            }
        }
    }));
    let relay = Relay::start(&to_strs(&relay_args(&[route_to("*", &sink)], &[])));
    let mut t = relay.session();
    let id = t.send_mail(
        "s@origin.example",
        &["b@dest.example"],
        b"Subject: retry me\r\n\r\nonce only\r\n",
    );

    let env = wait_deferred(
        relay.spool(),
        &id,
        "<b@dest.example>",
        "451 4.3.0 try again later",
    );
    // envelope v2: the recipient's attempts follow its `rcpt` line, the
    // status as fields (code, enhanced code, source, text)
    let history = env.all("rcpt-attempt");
    let port = sink.addr().port();
    assert!(
        history.iter().any(|a| a.contains(&format!(
            "\t[127.0.0.1]:{port}\t451\t4.3.0\tremote [127.0.0.1] 127.0.0.1:{port}\ttry again later"
        ))),
        "the deferral is in the history:\n{}",
        env.text
    );
    assert!(env.get("attempts").parse::<u32>().unwrap_or(0) >= 1);

    // the operator's view while it waits
    let spool = relay.spool().display().to_string();
    let show = run_cli(
        &["queue", "show", &id, "--spool", &spool],
        Duration::from_secs(20),
    );
    assert_eq!(show.code, Some(0), "{show:?}");
    assert!(
        show.stdout.contains("recipient: <b@dest.example> deferred"),
        "{}",
        show.stdout
    );
    assert!(
        show.stdout.contains("451 4.3.0 try again later"),
        "{}",
        show.stdout
    );
    assert_eq!(sink.count(), 0, "nothing accepted yet");

    open.store(true, Ordering::SeqCst);
    assert!(
        sink.wait_for(1, RETRIES),
        "not delivered after the deferral"
    );
    assert!(
        spool_empties(relay.spool(), RETRIES),
        "left: {:?}",
        queue_files(relay.spool())
    );
    assert_eq!(sink.count(), 1, "delivered exactly once");
    assert!(rcpt_calls.load(Ordering::SeqCst) >= 2);
    assert_eq!(sink.messages()[0].rcpts, ["b@dest.example"]);
}

#[test]
fn one_recipient_refused_the_other_delivered_and_the_sender_told() {
    let sink = Sink::with(
        SinkConfig::default().rcpt_table(&[("bad@", Action::reply(550, "5.1.1 no such user"))]),
    );
    let relay = Relay::start(&to_strs(&relay_args(&[route_to("*", &sink)], &[])));
    let mut t = relay.session();
    let id = t.send_mail(
        "s@origin.example",
        &["good@dest.example", "bad@dest.example"],
        b"Subject: half of it\r\n\r\nbody\r\n",
    );
    assert!(
        wait_until(RETRIES, || sink.count() >= 2),
        "expected the message and a DSN, got {:?}",
        sink.attempts()
    );
    assert!(
        spool_empties(relay.spool(), RETRIES),
        "left: {:?}",
        queue_files(relay.spool())
    );
    let msgs = sink.messages();
    assert_eq!(msgs.len(), 2, "{msgs:?}");
    let orig: Vec<&Received> = msgs.iter().filter(|m| !m.mail_from.is_empty()).collect();
    assert_eq!(orig.len(), 1);
    assert_eq!(orig[0].mail_from, "s@origin.example");
    assert_eq!(
        orig[0].rcpts,
        ["good@dest.example"],
        "only the accepted one"
    );

    let dsn = &dsns(&sink)[0];
    assert_failed_dsn(dsn, "s@origin.example", "bad@dest.example", "5.1.1");
    let t = text(dsn);
    for needle in [
        // RFC 3464 §2.3.5: a name or an address literal, no port
        "Remote-MTA: dns; [127.0.0.1]\r\n".to_string(),
        "Diagnostic-Code: smtp; 550 5.1.1 no such user\r\n".to_string(),
        format!("X-Queue-ID: {id}\r\n"),
        "Subject: half of it\r\n".to_string(),
        "To: <s@origin.example>\r\n".to_string(),
    ] {
        assert!(t.contains(&needle), "DSN lacks {needle:?}:\n{t}");
    }
    assert!(
        !t.contains("Final-Recipient: rfc822; good@dest.example"),
        "the delivered recipient is not reported:\n{t}"
    );
}

#[test]
fn null_sender_failure_sends_no_dsn() {
    let rcpt_calls = Arc::new(AtomicUsize::new(0));
    let sink = Sink::with(SinkConfig::default().rcpt({
        let calls = rcpt_calls.clone();
        move |_| {
            calls.fetch_add(1, Ordering::SeqCst);
            Action::reply(550, "5.1.1 no such user")
        }
    }));
    let relay = Relay::start(&to_strs(&relay_args(&[route_to("*", &sink)], &[])));
    let mut t = relay.session();
    let id = t.send_mail(
        "",
        &["bad@dest.example"],
        b"Subject: a bounce itself\r\n\r\nnever bounce a bounce\r\n",
    );
    // A DSN would be queued before the original leaves the spool, and the
    // sink takes everything at end of data: once the spool is empty, a
    // DSN either reached the sink or never existed.
    assert!(
        spool_empties(relay.spool(), RETRIES),
        "left: {:?}",
        queue_files(relay.spool())
    );
    // issue 13: the failed bounce goes to the postmaster (postmaster@
    // relay.test, refused here too), once; that double bounce is dropped
    assert_eq!(
        rcpt_calls.load(Ordering::SeqCst),
        2,
        "tried once, refused; the double bounce once, refused"
    );
    assert!(
        sink.attempts().is_empty(),
        "something reached end of data: {:?}",
        sink.attempts()
    );
    let log = relay.log();
    assert!(
        log.lines()
            .any(|l| l.contains(&id) && l.contains("no DSN") && l.contains("null")),
        "the log says why there is no DSN:\n{log}"
    );
    assert!(log.contains("undeliverable double bounce dropped"), "{log}");
}

#[test]
fn queue_lifetime_expiry_bounces_with_4_4_7() {
    let sink = Sink::with(
        SinkConfig::default()
            .rcpt_table(&[("@dest.example", Action::reply(451, "4.2.1 mailbox busy"))]),
    );
    let relay = Relay::start(&to_strs(&relay_args(
        &[route_to("*", &sink)],
        &["--max-queue-age", "2s"],
    )));
    let mut t = relay.session();
    let start = Instant::now();
    let id = t.send_mail(
        "s@origin.example",
        &["b@dest.example"],
        b"Subject: too slow\r\n\r\nexpires\r\n",
    );
    assert!(
        wait_until(RETRIES, || !dsns(&sink).is_empty()),
        "{id}: no DSN after expiry; sink saw {:?}",
        sink.attempts()
    );
    assert!(
        start.elapsed() >= Duration::from_secs(1),
        "expired before the lifetime"
    );
    assert!(
        spool_empties(relay.spool(), RETRIES),
        "left: {:?}",
        queue_files(relay.spool())
    );
    let all = sink.messages();
    assert_eq!(all.len(), 1, "only the DSN is accepted: {all:?}");
    let dsn = &all[0];
    assert_failed_dsn(dsn, "s@origin.example", "b@dest.example", "4.4.7");
    let t = text(dsn);
    assert!(t.contains("expired"), "{t}");
    assert!(
        t.contains("4.2.1 mailbox busy"),
        "the last error is kept:\n{t}"
    );
}

#[test]
fn next_hop_down_then_up_is_delivered_after_a_retry() {
    let mut sink = Sink::start();
    let route = route_to("*", &sink);
    sink.stop(); // nothing listens on its port now
    let relay = Relay::start(&to_strs(&relay_args(&[route], &[])));
    let mut t = relay.session();
    let id = t.send_mail(
        "s@origin.example",
        &["b@dest.example"],
        b"Subject: patience\r\n\r\nlater\r\n",
    );
    wait_deferred(relay.spool(), &id, "<b@dest.example>", "connect failed");
    sink.restart();
    assert!(
        sink.wait_for(1, RETRIES),
        "not delivered once the sink was up"
    );
    assert!(
        spool_empties(relay.spool(), RETRIES),
        "left: {:?}",
        queue_files(relay.spool())
    );
    assert_eq!(sink.count(), 1);
    assert_eq!(subject_of(&sink.messages()[0]), "patience");
}

#[test]
fn connection_lost_mid_data_is_deferred_then_delivered() {
    let sink = Sink::with(SinkConfig::default().close_mid_data());
    let relay = Relay::start(&to_strs(&relay_args(&[route_to("*", &sink)], &[])));
    let mut t = relay.session();
    let mut body = b"Subject: cut off\r\n\r\n".to_vec();
    for i in 0..2000 {
        body.extend_from_slice(
            format!("line {i} of a message long enough to be cut\r\n").as_bytes(),
        );
    }
    let id = t.send_mail("s@origin.example", &["b@dest.example"], &body);
    // "connection lost during message body/end of data" or a write error
    wait_deferred(relay.spool(), &id, "<b@dest.example>", "451 4.4.2");
    assert_eq!(sink.count(), 0);
    sink.set_config(SinkConfig::default());
    assert!(
        sink.wait_for(1, RETRIES),
        "not delivered once the sink behaved"
    );
    assert!(
        spool_empties(relay.spool(), RETRIES),
        "left: {:?}",
        queue_files(relay.spool())
    );
    assert_eq!(sink.count(), 1);
    let (_, rest) = split_received(&sink.messages()[0].data);
    assert_eq!(rest, body, "the whole message on the retry");
}

#[test]
fn silent_next_hop_times_out_without_blocking_other_mail() {
    let silent = Sink::with(SinkConfig::default().greeting(Action::Hang(Duration::from_secs(60))));
    let good = Sink::start();
    // one delivery thread: the second message can only go out once the
    // first attempt has given up
    let relay = Relay::start(&to_strs(&relay_args(
        &[route_to("slow.example", &silent), route_to("*", &good)],
        &["--delivery-workers", "1", "--delivery-timeout", "1s"],
    )));
    let mut t = relay.session();
    let slow_id = t.send_mail(
        "s@origin.example",
        &["x@slow.example"],
        b"Subject: to a wall\r\n\r\nsilence\r\n",
    );
    assert!(
        wait_until(RETRIES, || silent.connections() >= 1),
        "the relay never connected to the silent sink"
    );
    let start = Instant::now();
    t.send_mail(
        "s@origin.example",
        &["y@fast.example"],
        b"Subject: meanwhile\r\n\r\nfast lane\r\n",
    );
    assert!(
        good.wait_for(1, Duration::from_secs(10)),
        "the second message is stuck behind the silent next hop"
    );
    assert!(
        start.elapsed() < Duration::from_secs(8),
        "took {:?}",
        start.elapsed()
    );
    assert_eq!(subject_of(&good.messages()[0]), "meanwhile");
    let env = wait_deferred(relay.spool(), &slow_id, "<x@slow.example>", "timeout");
    assert!(
        env.rcpts()[0].2.contains("4.4.2"),
        "a timeout is 4.4.2: {}",
        env.text
    );
    assert!(silent.attempts().is_empty());
}

/// RFC 5321 §3.1: a 554 greeting means "no service at this host". Like
/// Postfix (smtp_skip_5xx_greeting), the relay skips the host and DEFERS:
/// the recipient was not refused, the host was. No DSN is sent.
#[test]
fn greeting_554_defers() {
    let refusing =
        Sink::with(SinkConfig::default().greeting(Action::reply(554, "5.7.1 no service for you")));
    let home = Sink::start();
    let relay = Relay::start(&to_strs(&relay_args(
        &[
            route_to("dest.example", &refusing),
            route_to("origin.example", &home),
        ],
        &[],
    )));
    let mut t = relay.session();
    let id = t.send_mail(
        "s@origin.example",
        &["b@dest.example"],
        b"Subject: refused at the door\r\n\r\nno\r\n",
    );
    assert!(
        wait_until(RETRIES, || env_now(relay.spool(), &id)
            .is_some_and(|e| e.rcpts()[0].0 == "deferred")),
        "{id}: not deferred (envelope: {:?})",
        env_now(relay.spool(), &id).map(|e| e.text)
    );
    let env = env_now(relay.spool(), &id).expect("envelope");
    assert!(
        env.rcpts()[0].2.contains("554 5.7.1 no service for you"),
        "the greeting is the recorded reply: {}",
        env.text
    );
    assert!(refusing.connections() >= 1);
    assert!(refusing.attempts().is_empty());
    assert!(
        dsns(&home).is_empty(),
        "a 5xx greeting is no reason to bounce"
    );
}

#[test]
fn a_full_queue_is_delivered_after_a_restart() {
    let sink = Sink::start();
    let dir = TempDir::new("fullq");
    let spool = dir.path().join("spool");
    let args = relay_args(&[route_to("*", &sink)], &[]);
    let mut rx = Relay::receive_only_with_spool(spool.clone(), &to_strs(&args));
    let mut t = rx.session();
    const N: usize = 20;
    let mut ids = Vec::new();
    for i in 0..N {
        ids.push(t.send_mail(
            "s@origin.example",
            &[&format!("r{i}@dest.example")],
            format!("Subject: queued {i}\r\n\r\nnumber {i}\r\n").as_bytes(),
        ));
    }
    assert_eq!(queued_ids(&spool).len(), N);
    rx.kill();
    assert_eq!(sink.connections(), 0, "a receive-only relay delivered");

    let relay = Relay::start_with_spool(spool.clone(), &to_strs(&args));
    assert!(
        sink.wait_for(N, Duration::from_secs(30)),
        "delivered {} of {N}",
        sink.count()
    );
    assert!(
        spool_empties(&spool, RETRIES),
        "left: {:?}",
        queue_files(&spool)
    );
    let subjects: Vec<String> = sink.messages().iter().map(subject_of).collect();
    let counts = tally(&subjects);
    for (i, id) in ids.iter().enumerate() {
        assert_eq!(
            counts.get(&format!("queued {i}")),
            Some(&1),
            "message {i} ({id}) not delivered exactly once: {counts:?}"
        );
    }
    assert_eq!(subjects.len(), N);
    drop(relay);
}

#[test]
fn delay_warning_is_sent_once_while_retrying() {
    let sink = Sink::with(
        SinkConfig::default()
            .rcpt_table(&[("@dest.example", Action::reply(451, "4.2.1 mailbox busy"))]),
    );
    let relay = Relay::start(&to_strs(&relay_args(
        &[route_to("*", &sink)],
        &["--delay-warning", "1s"],
    )));
    let mut t = relay.session();
    let id = t.send_mail(
        "s@origin.example",
        &["b@dest.example"],
        b"Subject: slowly\r\n\r\nstill trying\r\n",
    );
    assert!(
        wait_until(RETRIES, || !dsns(&sink).is_empty()),
        "{id}: no delay warning; envelope {:?}",
        env_now(relay.spool(), &id).map(|e| e.text)
    );
    // two more attempts after the warning: still only one warning
    let attempts = |e: &EnvFile| e.get("attempts").parse::<u32>().unwrap_or(0);
    let warned_at = env_now(relay.spool(), &id)
        .map(|e| attempts(&e))
        .unwrap_or(0);
    assert!(
        wait_until(RETRIES, || env_now(relay.spool(), &id)
            .is_some_and(|e| attempts(&e) >= warned_at + 2)),
        "{id}: retries stopped after the warning"
    );
    let warnings = dsns(&sink);
    assert_eq!(warnings.len(), 1, "one delay warning only: {warnings:?}");
    let w = &warnings[0];
    assert_eq!(w.rcpts, ["s@origin.example"]);
    let t = text(w);
    for needle in [
        "Content-Type: multipart/report; report-type=delivery-status",
        "Subject: Delayed Mail (still being retried)\r\n",
        "\r\nFinal-Recipient: rfc822; b@dest.example\r\nAction: delayed\r\nStatus: 4.2.1\r\n",
    ] {
        assert!(t.contains(needle), "warning lacks {needle:?}:\n{t}");
    }
    assert!(!t.contains("Action: failed"), "{t}");
    // the message itself is still queued and deferred
    let env = env_now(relay.spool(), &id).expect("still queued");
    assert_eq!(env.rcpts()[0].0, "deferred", "{}", env.text);
}

#[test]
fn refusal_at_end_of_data_bounces_every_recipient_in_one_dsn() {
    let sink = Sink::with(SinkConfig::default().data_end_fn(|m| {
        if m.mail_from.is_empty() {
            Action::reply(250, "2.0.0 Ok")
        } else {
            Action::reply(554, "5.7.1 message content rejected")
        }
    }));
    let relay = Relay::start(&to_strs(&relay_args(&[route_to("*", &sink)], &[])));
    let mut t = relay.session();
    let id = t.send_mail(
        "s@origin.example",
        &["one@dest.example", "two@dest.example"],
        b"Subject: spammy\r\n\r\nbuy now\r\n",
    );
    assert!(
        wait_until(RETRIES, || !dsns(&sink).is_empty()),
        "{id}: no DSN; sink saw {:?}",
        sink.attempts()
    );
    assert!(
        spool_empties(relay.spool(), RETRIES),
        "left: {:?}",
        queue_files(relay.spool())
    );
    let dsns = dsns(&sink);
    assert_eq!(dsns.len(), 1, "one DSN for both: {dsns:?}");
    assert_failed_dsn(&dsns[0], "s@origin.example", "one@dest.example", "5.7.1");
    assert_failed_dsn(&dsns[0], "s@origin.example", "two@dest.example", "5.7.1");
    assert_eq!(
        sink.attempts().len(),
        2,
        "the refused transaction and the DSN, no retry"
    );
}

#[test]
fn one_recipient_refused_without_pipelining() {
    let sink = Sink::with(
        SinkConfig::default()
            .pipelining(false)
            .rcpt_table(&[("bad@", Action::reply(550, "5.1.1 no such user"))]),
    );
    let relay = Relay::start(&to_strs(&relay_args(&[route_to("*", &sink)], &[])));
    let mut t = relay.session();
    t.send_mail(
        "s@origin.example",
        &["bad@dest.example", "good@dest.example"],
        b"Subject: one by one\r\n\r\nbody\r\n",
    );
    assert!(
        wait_until(RETRIES, || sink.count() >= 2),
        "expected the message and a DSN, got {:?}",
        sink.attempts()
    );
    assert!(
        spool_empties(relay.spool(), RETRIES),
        "left: {:?}",
        queue_files(relay.spool())
    );
    let msgs = sink.messages();
    assert_eq!(msgs.len(), 2, "{msgs:?}");
    let orig: Vec<&Received> = msgs.iter().filter(|m| !m.mail_from.is_empty()).collect();
    assert_eq!(orig.len(), 1);
    assert_eq!(orig[0].rcpts, ["good@dest.example"]);
    assert_failed_dsn(
        &dsns(&sink)[0],
        "s@origin.example",
        "bad@dest.example",
        "5.1.1",
    );
}

/// A DSN that cannot be delivered is reported to the postmaster (a double
/// bounce), never to `<>` (RFC 5321 §4.5.5, §6.1); a double bounce that
/// cannot be delivered either is dropped: no loop.
#[test]
fn an_undeliverable_dsn_is_dropped_not_bounced() {
    let rcpt_calls = Arc::new(AtomicUsize::new(0));
    let sink = Sink::with(SinkConfig::default().rcpt({
        let calls = rcpt_calls.clone();
        move |_| {
            calls.fetch_add(1, Ordering::SeqCst);
            Action::reply(550, "5.1.1 nobody here")
        }
    }));
    let relay = Relay::start(&to_strs(&relay_args(&[route_to("*", &sink)], &[])));
    let mut t = relay.session();
    let id = t.send_mail(
        "s@origin.example",
        &["b@dest.example"],
        b"Subject: nowhere\r\n\r\nand back to nowhere\r\n",
    );
    // the original fails, its DSN to s@origin.example fails too, and so
    // does the double bounce to postmaster@relay.test
    assert!(
        wait_until(RETRIES, || rcpt_calls.load(Ordering::SeqCst) >= 3
            && queue_files(relay.spool()).is_empty()),
        "{id}: rcpt calls {}, left: {:?}",
        rcpt_calls.load(Ordering::SeqCst),
        queue_files(relay.spool())
    );
    assert_eq!(rcpt_calls.load(Ordering::SeqCst), 3, "no fourth message");
    assert!(sink.attempts().is_empty(), "{:?}", sink.attempts());
    let log = relay.log();
    assert!(
        log.lines()
            .any(|l| l.contains("no DSN") && l.contains("null")),
        "{log}"
    );
}
