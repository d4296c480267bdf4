//! Bounded chaos: clients send mail through a delivering relay while the
//! test `kill -9`s it at random moments and restarts it on the same spool.
//! Afterwards every message that got a 250 must have reached the sink;
//! nothing may arrive that was never complete at the relay; duplicates are
//! allowed only for deliveries in flight at a kill.
//!
//! The moments come from a small seeded PRNG; set `CRASH_SEED` to replay
//! a run (the seed is printed). Single-crash scenarios are in
//! durability.rs and delivery_crash.rs; this is the repeated, concurrent
//! version.

mod common;

use std::collections::{HashMap, HashSet};
use std::io::{self, BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use common::*;

const CLIENTS: usize = 4;
const DELIVERY_WORKERS: usize = 8;
/// How long the clients send while the relay is being killed.
const CHAOS: Duration = Duration::from_millis(9_000);
/// Most messages one client sends (bounds the run on a fast machine).
const MAX_PER_CLIENT: usize = 1000;
/// Pause between a client's messages: traffic spread over the whole run,
/// and a queue the relay can drain in a few seconds.
const PACE: Duration = Duration::from_millis(40);

/// splitmix64: small, seeded, no new crates.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `lo..hi` milliseconds.
    fn millis(&mut self, lo: u64, hi: u64) -> Duration {
        Duration::from_millis(lo + self.next() % (hi - lo))
    }
}

/// What became of one message, from the client's side.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Fate {
    /// `250 ... queued as ID`.
    Acked(String),
    /// The final dot went out (or may have) but no reply came: the relay
    /// may or may not have committed it.
    Unacked,
    /// Refused with this reply after the data.
    Refused(String),
    /// The connection died before the data was sent: it cannot exist.
    Incomplete,
}

#[derive(Default)]
struct Ledger {
    /// Message-ID → fate.
    fates: HashMap<String, Fate>,
}

fn message_id(client: usize, n: usize) -> String {
    format!("<c{client}-n{n}@crash.test>")
}

/// One reply (multi-line aware): (code, last line).
fn read_reply(r: &mut impl BufRead) -> io::Result<(u16, String)> {
    for _ in 0..100 {
        let mut line = String::new();
        if r.read_line(&mut line)? == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        if line.len() < 4 {
            return Err(io::ErrorKind::InvalidData.into());
        }
        if line.as_bytes()[3] != b'-' {
            let code = line[..3]
                .parse()
                .map_err(|_| io::Error::from(io::ErrorKind::InvalidData))?;
            return Ok((code, line.trim_end().to_string()));
        }
    }
    Err(io::ErrorKind::InvalidData.into())
}

fn expect(r: &mut impl BufRead, code: u16) -> io::Result<String> {
    let (c, text) = read_reply(r)?;
    if c != code {
        return Err(io::Error::other(format!("expected {code}, got {text}")));
    }
    Ok(text)
}

/// One connection's worth of messages; returns when the connection dies
/// or the client should stop. `next` numbers the messages.
fn one_connection(
    addr: SocketAddr,
    client: usize,
    next: &mut usize,
    ledger: &Mutex<Ledger>,
    stop: &AtomicBool,
) -> io::Result<()> {
    let s = TcpStream::connect_timeout(&addr, Duration::from_secs(1))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    s.set_write_timeout(Some(Duration::from_secs(5)))?;
    let mut w = s.try_clone()?;
    let mut r = BufReader::new(s);
    expect(&mut r, 220)?;
    w.write_all(b"EHLO chaos.test\r\n")?;
    expect(&mut r, 250)?;
    while !stop.load(Ordering::SeqCst) && *next < MAX_PER_CLIENT {
        let n = *next;
        *next += 1;
        let mid = message_id(client, n);
        let record = |f: Fate| {
            ledger
                .lock()
                .expect("ledger lock")
                .fates
                .insert(mid.clone(), f);
        };
        record(Fate::Incomplete);
        w.write_all(
            b"MAIL FROM:<chaos@origin.example>\r\nRCPT TO:<sink@dest.example>\r\nDATA\r\n",
        )?;
        expect(&mut r, 250)?;
        expect(&mut r, 250)?;
        expect(&mut r, 354)?;
        let data = format!(
            "Message-ID: {mid}\r\nSubject: chaos {client}-{n}\r\n\r\nmessage {n} of client {client}\r\n.\r\n"
        );
        // from here the relay may have the whole message
        record(Fate::Unacked);
        w.write_all(data.as_bytes())?;
        let (code, text) = read_reply(&mut r)?;
        if code == 250 {
            let id = queued_id(&text).ok_or_else(|| io::Error::other(format!("no id: {text}")))?;
            record(Fate::Acked(id));
        } else {
            record(Fate::Refused(text));
        }
        thread::sleep(PACE);
    }
    let _ = w.write_all(b"QUIT\r\n");
    Ok(())
}

/// Sends until told to stop, reconnecting (to wherever the relay listens
/// now) whenever the connection dies.
fn client_loop(
    client: usize,
    addr: Arc<Mutex<SocketAddr>>,
    ledger: Arc<Mutex<Ledger>>,
    stop: Arc<AtomicBool>,
) -> usize {
    let mut next = 0;
    let mut connections = 0;
    let end = Instant::now() + CHAOS + Duration::from_secs(5);
    while !stop.load(Ordering::SeqCst) && next < MAX_PER_CLIENT && Instant::now() < end {
        let a = *addr.lock().expect("addr lock");
        connections += 1;
        if one_connection(a, client, &mut next, &ledger, &stop).is_err() {
            thread::sleep(Duration::from_millis(20));
        }
    }
    connections
}

/// The Message-ID header of a delivered message.
fn delivered_mid(data: &[u8]) -> Option<String> {
    let text = String::from_utf8_lossy(data);
    text.lines()
        .find_map(|l| l.strip_prefix("Message-ID: "))
        .map(|s| s.trim().to_string())
}

#[test]
fn kill_9_at_random_moments_loses_no_acknowledged_message() {
    let seed: u64 = std::env::var("CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0xC0FF_EE00_2026);
    let mut rng = Rng(seed);
    let sink = Sink::start();
    let route = format!("*=127.0.0.1:{}", sink.addr().port());
    let workers = DELIVERY_WORKERS.to_string();
    let mut relay = Relay::start(&[
        "--no-dns",
        "--route",
        &route,
        "--retry-min",
        "1s",
        "--retry-max",
        "1s",
        "--delivery-workers",
        &workers,
        "--delivery-timeout",
        "5s",
    ]);
    let started = Instant::now();
    let addr = Arc::new(Mutex::new(relay.addr()));
    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..CLIENTS)
        .map(|c| {
            let (addr, ledger, stop) = (addr.clone(), ledger.clone(), stop.clone());
            thread::spawn(move || client_loop(c, addr, ledger, stop))
        })
        .collect();

    // 4 to 6 kills, 0.6 to 1.7 s apart, each followed by a restart on the
    // same spool after 0 to 150 ms of downtime
    let kills = 4 + (rng.next() % 3) as usize;
    let mut moments = Vec::new();
    for _ in 0..kills {
        thread::sleep(rng.millis(600, 1700));
        let at = started.elapsed();
        relay.kill();
        thread::sleep(rng.millis(0, 150));
        relay.restart();
        *addr.lock().expect("addr lock") = relay.addr();
        moments.push(at);
    }
    let left = CHAOS.saturating_sub(started.elapsed());
    thread::sleep(left);
    stop.store(true, Ordering::SeqCst);
    let connections: usize = clients
        .into_iter()
        .map(|c| c.join().expect("client thread"))
        .sum();

    // one more restart (a kill too), then everything must drain
    relay.restart();
    let total_kills = kills + 1;
    let drain_start = Instant::now();
    let queued_at_restart = queued_ids(relay.spool()).len();
    let drained = wait_until(Duration::from_secs(40), || {
        queue_files(relay.spool()).is_empty()
    });
    let drain_time = drain_start.elapsed();
    assert!(
        drained,
        "the queue did not drain: {} files left",
        queue_files(relay.spool()).len()
    );
    assert!(tmp_files(relay.spool()).is_empty(), "tmp/ not clean");
    assert!(
        corrupt_files(relay.spool()).is_empty(),
        "corrupt envelopes: {:?}",
        corrupt_files(relay.spool())
    );

    let fates = ledger.lock().expect("ledger lock").fates.clone();
    let delivered = sink.messages();
    let mut arrivals: HashMap<String, usize> = HashMap::new();
    let mut strangers = Vec::new();
    for m in &delivered {
        match delivered_mid(&m.data) {
            Some(mid) if fates.contains_key(&mid) => *arrivals.entry(mid).or_insert(0) += 1,
            other => strangers.push(other),
        }
    }
    let acked: HashSet<&String> = fates
        .iter()
        .filter(|(_, f)| matches!(f, Fate::Acked(_)))
        .map(|(m, _)| m)
        .collect();
    let lost: Vec<&&String> = acked
        .iter()
        .filter(|m| !arrivals.contains_key(**m))
        .collect();
    let duplicates: usize = arrivals.values().map(|n| n - 1).sum();
    let mut unacked_arrived = 0;
    let mut unacked = 0;
    let mut refused = 0;
    let mut incomplete = 0;
    let mut phantoms = Vec::new();
    for (mid, fate) in &fates {
        let arrived = arrivals.contains_key(mid);
        match fate {
            Fate::Acked(_) => {}
            Fate::Unacked => {
                unacked += 1;
                if arrived {
                    unacked_arrived += 1;
                }
            }
            Fate::Refused(text) => {
                refused += 1;
                if arrived {
                    phantoms.push(format!("{mid} refused ({text}) yet delivered"));
                }
            }
            Fate::Incomplete => {
                incomplete += 1;
                if arrived {
                    phantoms.push(format!("{mid} never sent in full yet delivered"));
                }
            }
        }
    }
    println!(
        "seed {seed:#x}: {total_kills} kills (at {moments:?}, plus one before the drain, with {queued_at_restart} messages queued)"
    );
    println!(
        "sent {} (in {connections} connections), acknowledged {}, unacknowledged {unacked}, refused {refused}, cut before the data {incomplete}",
        fates.len(),
        acked.len()
    );
    println!(
        "arrived {} distinct ({} deliveries), duplicates {duplicates}, committed-but-unacknowledged arrivals {unacked_arrived}, lost {}; drained in {:?}, total {:?}",
        arrivals.len(),
        delivered.len(),
        lost.len(),
        drain_time,
        started.elapsed()
    );
    assert!(
        acked.len() >= 50,
        "too little traffic to mean anything: {} acknowledged",
        acked.len()
    );
    assert!(
        lost.is_empty(),
        "acknowledged but never delivered: {lost:?}"
    );
    assert!(
        phantoms.is_empty(),
        "delivered without being accepted: {phantoms:?}"
    );
    assert!(strangers.is_empty(), "unknown deliveries: {strangers:?}");
    assert!(
        duplicates <= total_kills * DELIVERY_WORKERS,
        "{duplicates} duplicates for {total_kills} kills of {DELIVERY_WORKERS} delivery threads"
    );
    assert!(
        unacked_arrived <= unacked,
        "more unacknowledged arrivals than unacknowledged messages"
    );
    // no bounces: the sink accepted everything
    assert!(
        delivered.iter().all(|m| !m.mail_from.is_empty()),
        "a DSN was sent"
    );
}
