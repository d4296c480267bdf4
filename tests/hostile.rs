//! Hostile and broken input at both ends of the relay: every such input
//! gets a clear reply (or a recorded deferral), the server stays up and
//! serves others, memory stays bounded.
//!
//! - open relay: the classic relay-test address forms, from a client
//!   outside `--relay-net`, and where an accepted `%`-hack address really
//!   goes;
//! - hostile clients: NUL and control bytes, a 10 MB command line, binary
//!   garbage;
//! - hostile next hops (raw `TcpListener` threads written here): a close
//!   inside a multi-line reply, a 10 MB reply line, silence after the
//!   greeting, non-SMTP answers.
//!
//! Covered elsewhere and not repeated here: the 20-error limit with a
//! plain `BOGUS` (session.rs `twenty_errors_close_the_session`), 200 kB
//! command lines (session.rs `long_command_lines`), a next hop that never
//! greets (retry.rs `silent_next_hop_times_out_without_blocking_other_mail`),
//! a 554 greeting, which bounces (retry.rs `greeting_554_bounces`), and a
//! close in the middle of DATA (retry.rs
//! `connection_lost_mid_data_is_deferred_then_delivered`).

mod common;

use std::fs;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use common::*;

/// Resident memory the relay may use while under attack.
const RSS_LIMIT_KB: u64 = 100 * 1024;

const BODY: &[u8] = b"Subject: hostile\r\n\r\nstill here\r\n";

// ---------------------------------------------------------------------
// helpers
// ---------------------------------------------------------------------

/// A small deterministic PRNG (splitmix64): no new crates.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// `VmRSS` of a process in kB, from `/proc/PID/status`.
fn rss_kb(pid: u32) -> Option<u64> {
    proc_status_kb(pid, "VmRSS:")
}

fn proc_status_kb(pid: u32, key: &str) -> Option<u64> {
    let text = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = text.lines().find(|l| l.starts_with(key))?;
    line[key.len()..].split_whitespace().next()?.parse().ok()
}

/// Samples a process's RSS every 10 ms (for at most two minutes) and
/// keeps the peak.
struct RssWatch {
    stop: Arc<AtomicBool>,
    peak: Arc<AtomicU64>,
    handle: Option<JoinHandle<()>>,
}

impl RssWatch {
    fn start(pid: u32) -> RssWatch {
        let stop = Arc::new(AtomicBool::new(false));
        let peak = Arc::new(AtomicU64::new(rss_kb(pid).unwrap_or(0)));
        let (s, p) = (stop.clone(), peak.clone());
        let handle = thread::spawn(move || {
            let end = Instant::now() + Duration::from_secs(120);
            while !s.load(Ordering::SeqCst) && Instant::now() < end {
                if let Some(kb) = rss_kb(pid) {
                    p.fetch_max(kb, Ordering::SeqCst);
                }
                thread::sleep(Duration::from_millis(10));
            }
        });
        RssWatch {
            stop,
            peak,
            handle: Some(handle),
        }
    }

    /// Stops sampling; the peak in kB.
    fn finish(mut self) -> u64 {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
        self.peak.load(Ordering::SeqCst)
    }
}

impl Drop for RssWatch {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

fn route(domain: &str, addr: SocketAddr) -> String {
    format!("{domain}=127.0.0.1:{}", addr.port())
}

fn to_strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
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

// ---------------------------------------------------------------------
// (a) open relay
// ---------------------------------------------------------------------

/// Relay control for these tests: only 127.0.0.1 may relay anywhere;
/// anyone may send to relay.test. The test client is 127.0.0.2.
const RELAY_CONTROL: &[&str] = &[
    "--relay-net",
    "127.0.0.1/32",
    "--relay-domain",
    "relay.test",
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Want {
    /// 550 5.7.1 Relaying denied.
    Deny,
    /// 501: the path does not parse (5.1.3) or the line is malformed (5.5.4).
    Syntax,
    /// 501 or 550: never 250.
    Refused,
    /// 250 2.1.5: the final domain is the relay domain.
    Accept,
}

impl Want {
    fn admits(self, code: u16, text: &str) -> bool {
        let enh = text.split_whitespace().next().unwrap_or("");
        match self {
            Want::Deny => code == 550 && enh == "5.7.1",
            Want::Syntax => code == 501 && (enh == "5.1.3" || enh == "5.5.4"),
            Want::Refused => Want::Deny.admits(code, text) || Want::Syntax.admits(code, text),
            Want::Accept => code == 250 && enh == "2.1.5",
        }
    }
}

/// The classic open-relay test forms (the ones relay testers such as
/// `abuse.net`'s relay test used), each in a session of its own so the
/// error limit never interferes. The decision must follow the parsed
/// mailbox's final domain only (session.rs `Session::rcpt`): `%`, `!`,
/// quoted `@` and source routes never make dest.example reachable.
#[test]
fn classic_relay_test_forms_from_outside_the_relay_net() {
    let relay = Relay::receive_only(RELAY_CONTROL);
    let table: &[(&str, Want, &str)] = &[
        ("<user@dest.example>", Want::Deny, "plain third party"),
        ("<USER@DEST.EXAMPLE>", Want::Deny, "upper case"),
        ("<user@Dest.Example>", Want::Deny, "mixed case"),
        (
            "<user%dest.example@other.example>",
            Want::Deny,
            "percent hack via a third party",
        ),
        (
            "<USER%DEST.EXAMPLE@OTHER.EXAMPLE>",
            Want::Deny,
            "percent hack, upper case",
        ),
        (
            "<\"user@dest.example\"@other.example>",
            Want::Deny,
            "quoted @ in the local part",
        ),
        (
            "<\"user%dest.example\"@other.example>",
            Want::Deny,
            "quoted percent hack",
        ),
        (
            "<@other.example:user@dest.example>",
            Want::Deny,
            "source route via a third party",
        ),
        (
            "<@relay.test:user@dest.example>",
            Want::Deny,
            "source route via the relay domain: the final domain is dest.example",
        ),
        (
            "<@relay.test,@other.example:user@dest.example>",
            Want::Deny,
            "two-hop source route starting at the relay domain",
        ),
        (
            "<dest.example!user@other.example>",
            Want::Deny,
            "UUCP bang path via a third party",
        ),
        (
            "<user@sub.relay.test>",
            Want::Deny,
            "subdomain of the relay domain",
        ),
        (
            "<user@relay.test.evil.example>",
            Want::Deny,
            "relay domain as a prefix",
        ),
        (
            "<user@evilrelay.test>",
            Want::Deny,
            "relay domain as a suffix",
        ),
        ("<user@[127.0.0.1]>", Want::Deny, "IPv4 address literal"),
        ("<user@[IPv6:::1]>", Want::Deny, "IPv6 address literal"),
        (
            "<user@dest.example@other.example>",
            Want::Syntax,
            "two unquoted @",
        ),
        (
            "<user@dest.example@relay.test>",
            Want::Syntax,
            "two unquoted @, the last one the relay domain",
        ),
        (
            "<user@dest.example%relay.test>",
            Want::Syntax,
            "percent in the domain",
        ),
        (
            "<user\\@dest.example@relay.test>",
            Want::Syntax,
            "backslash-escaped @ outside quotes",
        ),
        (
            "<user@dest.example>relay.test",
            Want::Syntax,
            "text glued after the path",
        ),
        (
            "<user@dest.example> <user@relay.test>",
            Want::Syntax,
            "a second path as a parameter",
        ),
        ("<user@dest.example.>", Want::Refused, "trailing dot"),
        (
            "<user@relay.test.>",
            Want::Refused,
            "relay domain with a trailing dot",
        ),
        ("<user@relay.test>", Want::Accept, "the relay domain itself"),
        (
            "<USER@RELAY.TEST>",
            Want::Accept,
            "the relay domain, upper case",
        ),
        (
            "<user%dest.example@relay.test>",
            Want::Accept,
            "percent hack TO the relay domain: relay.test's business (delivered there, see below)",
        ),
        (
            "<\"user@dest.example\"@relay.test>",
            Want::Accept,
            "quoted @ at the relay domain",
        ),
        (
            "<dest.example!user@relay.test>",
            Want::Accept,
            "bang path at the relay domain",
        ),
        (
            "<@other.example:user@relay.test>",
            Want::Accept,
            "source route ending at the relay domain",
        ),
    ];
    let mut wrong = Vec::new();
    println!("{:<50} {:<8} reply", "RCPT TO:", "want");
    for (rcpt, want, why) in table {
        let mut t = Talk::connect_from("127.0.0.2", relay.addr());
        t.expect(220);
        t.cmd("EHLO outsider.test", 250);
        t.cmd_enh("MAIL FROM:<probe@outsider.test>", 250, "2.1.0");
        t.send(&format!("RCPT TO:{rcpt}"));
        let (code, text) = t.reply();
        println!("{rcpt:<50} {:<8} {code} {text}", format!("{want:?}"));
        if !want.admits(code, &text) {
            wrong.push(format!("{rcpt} ({why}): want {want:?}, got {code} {text}"));
        }
        t.cmd_enh("QUIT", 221, "2.0.0");
    }
    assert!(wrong.is_empty(), "relay control:\n{}", wrong.join("\n"));
    // nothing was sent past RCPT: nothing is queued
    assert!(queued_ids(relay.spool()).is_empty());
}

/// The point of the `%` test: `user%dest.example@relay.test` is accepted
/// because relay.test is a relay domain, and then it must go to
/// relay.test's route as it was given, never to dest.example.
#[test]
fn accepted_percent_hack_is_delivered_to_the_relay_domain_route_only() {
    let home = Sink::start(); // relay.test's route
    let trap = Sink::start(); // everything else, dest.example included
    let args = [
        "--relay-net".to_string(),
        "127.0.0.1/32".into(),
        "--relay-domain".into(),
        "relay.test".into(),
        "--no-dns".into(),
        "--retry-min".into(),
        "1s".into(),
        "--route".into(),
        route("relay.test", home.addr()),
        "--route".into(),
        route("*", trap.addr()),
    ];
    let relay = Relay::start(&to_strs(&args));
    let mut t = Talk::connect_from("127.0.0.2", relay.addr());
    t.expect(220);
    t.cmd("EHLO outsider.test", 250);
    t.cmd_enh("MAIL FROM:<probe@outsider.test>", 250, "2.1.0");
    t.cmd_enh("RCPT TO:<user%dest.example@relay.test>", 250, "2.1.5");
    t.cmd_enh("RCPT TO:<user@dest.example>", 550, "5.7.1");
    t.cmd_enh("RCPT TO:<@relay.test:user@dest.example>", 550, "5.7.1");
    t.cmd_enh("DATA", 354, "2.0.0");
    t.send_raw(b"Subject: percent hack\r\n\r\nwhere do I go?\r\n.\r\n");
    let id = queued_id(&t.expect_enh(250, "2.0.0")).expect("queue id");
    t.cmd_enh("QUIT", 221, "2.0.0");

    assert!(
        home.wait_for(1, Duration::from_secs(15)),
        "not delivered to relay.test's route; envelope: {:?}",
        env_now(relay.spool(), &id).map(|e| e.text)
    );
    assert!(
        spool_empties(relay.spool(), Duration::from_secs(15)),
        "left: {:?}",
        queue_files(relay.spool())
    );
    let m = &home.messages()[0];
    println!(
        "delivered to relay.test's route as RCPT TO:<{}>",
        m.rcpts.join(">, <")
    );
    assert_eq!(m.rcpts, ["user%dest.example@relay.test"]);
    assert_eq!(m.mail_from, "probe@outsider.test");
    assert_eq!(home.count(), 1);
    assert_eq!(
        trap.connections(),
        0,
        "the relay connected to the route of dest.example (*): {:?}",
        trap.attempts()
    );
    let log = relay.log();
    assert!(
        log.lines().any(|l| l.contains(&id)
            && l.contains("to=user%dest.example@relay.test")
            && l.contains(&format!(":{}", home.addr().port()))
            && l.contains("status=sent")),
        "no delivery line for {id}:\n{log}"
    );
}

// ---------------------------------------------------------------------
// (b) hostile clients
// ---------------------------------------------------------------------

#[test]
fn nul_and_control_bytes_in_commands_get_501_and_the_session_goes_on() {
    let relay = Relay::receive_only(&[]);
    let mut t = relay.session();
    let lines: &[&[u8]] = &[
        b"NO\0OP\r\n",
        b"\0\r\n",
        b"QUIT\0\r\n",
        b"QUIT\0 now\r\n",
        b"EHLO evil\0.example\r\n",
        b"MAIL FROM:<a\x01@example.org>\r\n",
        b"MAIL FROM:<a@example.org>\0 SIZE=1\r\n",
        b"RSET\x7f\r\n",
        b"\x1b[2JNOOP\r\n",
        b"HELO \x08\x08\x08\r\n",
        b"NOOP \xff\xfe\r\n",
        b"DATA\r\0\r\n",
        b"VRFY a\rb\r\n",
    ];
    for line in lines {
        t.send_raw(line);
        let (code, text) = t.reply();
        println!(
            "{:<40} -> {code} {text}",
            format!("{:?}", String::from_utf8_lossy(line))
        );
        assert_eq!(
            code,
            501,
            "{line:?} → {code} {text}\ntranscript:\n{}",
            t.transcript()
        );
        assert!(text.starts_with("5.5.4 "), "{line:?} → {text}");
    }
    // 13 errors, under the limit of 20: the session is alive and in step
    t.cmd_enh("NOOP", 250, "2.0.0");
    let id = t.send_mail("a@example.org", &["b@example.net"], BODY);
    t.cmd_enh("QUIT", 221, "2.0.0");
    let env = assert_complete(relay.spool(), &id);
    assert_eq!(
        env.get("helo"),
        "client.test",
        "the NUL EHLO changed nothing"
    );
    assert_eq!(queued_ids(relay.spool()), vec![id]);
}

#[test]
fn ten_megabyte_command_line_gets_500_with_bounded_memory() {
    let relay = Relay::receive_only(&[]);
    let pid = relay.pid();
    let before = rss_kb(pid).expect("relay RSS");
    let watch = RssWatch::start(pid);
    let mut t = relay.session();
    let chunk = vec![b'A'; 64 * 1024];
    let start = Instant::now();
    {
        let mut s: &TcpStream = t.stream();
        // 10 MB, no newline: the relay must read and drop it as it streams
        for _ in 0..160 {
            s.write_all(&chunk).expect("the relay reads the long line");
        }
    }
    let during = rss_kb(pid).expect("relay RSS");
    t.send_raw(b"\r\n");
    t.expect_enh(500, "5.5.2");
    let elapsed = start.elapsed();
    // the session is in step and still carries mail
    t.cmd_enh("NOOP", 250, "2.0.0");
    let id = t.send_mail("a@example.org", &["b@example.net"], BODY);
    t.cmd_enh("QUIT", 221, "2.0.0");
    let peak = watch.finish();
    println!(
        "10 MiB command line: 500 5.5.2 after {elapsed:?}; relay VmRSS {before} kB before, {during} kB at the end of the line, peak {peak} kB"
    );
    assert!(peak < RSS_LIMIT_KB, "relay RSS peaked at {peak} kB");
    assert!(
        peak < before + 32 * 1024,
        "the line was buffered: RSS {before} → {peak} kB"
    );
    assert_complete(relay.spool(), &id);
    // nothing of the line was stored anywhere
    assert_eq!(queued_ids(relay.spool()), vec![id]);
    assert_eq!(tmp_count(relay.spool()), 0);
}

/// One line of garbage (no LF), 0 to 300 octets, CRLF added: every
/// other line random bytes, the others random printable ASCII.
fn garbage_line(rng: &mut Rng) -> Vec<u8> {
    let n = rng.below(301) as usize;
    let printable = rng.below(2) == 0;
    let mut v: Vec<u8> = (0..n)
        .map(|_| match (printable, rng.below(256) as u8) {
            (true, b) => b' ' + b % 95,
            (false, b'\n') => b'?',
            (false, b) => b,
        })
        .collect();
    v.extend_from_slice(b"\r\n");
    v
}

#[test]
fn garbage_lines_get_errors_then_421_and_others_are_served() {
    let relay = Relay::receive_only(&[]);
    let mut rng = Rng(0x5EED_0001);
    let mut t = relay.talk();
    t.expect(220);
    let mut codes = Vec::new();
    for i in 0..20 {
        let line = garbage_line(&mut rng);
        t.send_raw(&line);
        let (code, text) = t.reply();
        codes.push(code);
        assert!(
            (500..600).contains(&code),
            "garbage line {i} {line:?} → {code} {text}"
        );
    }
    t.send_raw(&garbage_line(&mut rng));
    t.expect_enh(421, "4.7.0");
    t.expect_closed();
    println!("20 garbage lines → {codes:?}, then 421 4.7.0 and close");

    // the server is up and serves a new client in full
    let mut u = relay.session();
    let id = u.send_mail("a@example.org", &["b@example.net"], BODY);
    u.cmd_enh("QUIT", 221, "2.0.0");
    assert_eq!(queued_ids(relay.spool()), vec![id]);
}

/// 256 kB of random bytes in one burst (LFs included, so many "lines"):
/// only error replies come back, the session ends (421 or a reset once the
/// relay closes with input unread), and the server serves a new client.
#[test]
fn binary_blob_gets_only_errors_and_the_server_stays_up() {
    let relay = Relay::receive_only(&[]);
    let pid = relay.pid();
    let mut rng = Rng(0x5EED_0002);
    let blob: Vec<u8> = (0..256 * 1024).map(|_| rng.below(256) as u8).collect();
    let s = TcpStream::connect(relay.addr()).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let mut w = s.try_clone().expect("clone");
    let writer = thread::spawn(move || {
        // fails once the relay has closed: expected
        let _ = w.write_all(&blob);
    });
    let mut r = BufReader::new(s);
    let mut replies: Vec<u16> = Vec::new();
    let mut end = String::new();
    for _ in 0..1000 {
        let mut line = String::new();
        match r.read_line(&mut line) {
            Ok(0) => {
                end = "EOF".into();
                break;
            }
            Ok(_) => {
                let code: u16 = line.get(..3).and_then(|c| c.parse().ok()).unwrap_or(0);
                assert!(
                    code == 220 || code == 421 || (500..600).contains(&code),
                    "reply to garbage: {line:?}"
                );
                replies.push(code);
            }
            Err(e) => {
                end = format!("{:?}", e.kind());
                assert_ne!(
                    e.kind(),
                    io::ErrorKind::WouldBlock,
                    "the relay neither answered nor closed within 10 s"
                );
                break;
            }
        }
    }
    writer.join().expect("writer thread");
    println!(
        "256 kB of random bytes: {} replies {:?} ... then {end}",
        replies.len(),
        &replies[..replies.len().min(25)]
    );
    assert_eq!(replies.first(), Some(&220));
    assert!(
        replies.len() <= 1 + 21,
        "more than 21 errors answered: {replies:?}"
    );
    assert!(!end.is_empty(), "the session did not end");
    let mut u = relay.session();
    u.cmd_enh("NOOP", 250, "2.0.0");
    let id = u.send_mail("a@example.org", &["b@example.net"], BODY);
    u.cmd_enh("QUIT", 221, "2.0.0");
    assert_eq!(queued_ids(relay.spool()), vec![id]);
    let rss = rss_kb(pid).expect("relay RSS");
    assert!(rss < RSS_LIMIT_KB, "relay RSS {rss} kB");
}

// ---------------------------------------------------------------------
// (c) hostile next hops
// ---------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Misbehaviour {
    /// 220, then to EHLO two lines of a multi-line 250 and a close.
    CloseMidReply,
    /// 220, then to EHLO a 10 MB reply line that never ends.
    HugeReply,
    /// 220, then silence (the EHLO is never answered).
    StallAfterGreeting,
    /// 220, then `HELLO?` to every command.
    Garbage,
}

/// What the huge-reply hop saw: octets it managed to write, and how long
/// after it started writing the relay had dropped the connection.
#[derive(Debug, Clone, Default)]
struct HugeReport {
    written: u64,
    dropped_after: Option<Duration>,
}

/// A next hop that misbehaves as told, one thread per connection, on
/// 127.0.0.1; stops (and closes everything) on drop.
struct BadHop {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    connections: Arc<AtomicUsize>,
    huge: Arc<Mutex<Vec<HugeReport>>>,
    acceptor: Option<JoinHandle<()>>,
}

impl BadHop {
    fn start(kind: Misbehaviour) -> BadHop {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind bad hop");
        let addr = listener.local_addr().expect("local addr");
        listener.set_nonblocking(true).expect("nonblocking");
        let stop = Arc::new(AtomicBool::new(false));
        let connections = Arc::new(AtomicUsize::new(0));
        let huge = Arc::new(Mutex::new(Vec::new()));
        let (st, conns, hg) = (stop.clone(), connections.clone(), huge.clone());
        let acceptor = thread::spawn(move || {
            let end = Instant::now() + Duration::from_secs(120);
            let mut workers = Vec::new();
            while !st.load(Ordering::SeqCst) && Instant::now() < end {
                match listener.accept() {
                    Ok((s, _)) => {
                        if conns.fetch_add(1, Ordering::SeqCst) >= 50 {
                            continue; // bounded: drop the socket
                        }
                        let (st, hg) = (st.clone(), hg.clone());
                        workers.push(thread::spawn(move || {
                            let _ = misbehave(s, kind, &st, &hg);
                        }));
                    }
                    Err(_) => thread::sleep(Duration::from_millis(5)),
                }
            }
            for w in workers {
                let _ = w.join();
            }
        });
        BadHop {
            addr,
            stop,
            connections,
            huge,
            acceptor: Some(acceptor),
        }
    }

    fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }
}

impl Drop for BadHop {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(h) = self.acceptor.take() {
            let _ = h.join();
        }
    }
}

/// Reads one line (bounded) while watching the stop flag; `None` at EOF,
/// error, stop, or after a minute.
fn hop_read_line(r: &mut BufReader<TcpStream>, stop: &AtomicBool) -> Option<String> {
    let mut line = Vec::new();
    let end = Instant::now() + Duration::from_secs(60);
    while !stop.load(Ordering::SeqCst) && Instant::now() < end && line.len() < 4096 {
        let mut b = [0u8; 1];
        match r.read(&mut b) {
            Ok(0) => return None,
            Ok(_) => {
                line.push(b[0]);
                if b[0] == b'\n' {
                    return Some(String::from_utf8_lossy(&line).to_string());
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) => {}
            Err(_) => return None,
        }
    }
    None
}

/// Waits until the peer closes (EOF or error) or stop; how long it took.
fn hop_wait_close(r: &mut BufReader<TcpStream>, stop: &AtomicBool) -> Option<Duration> {
    let start = Instant::now();
    let end = start + Duration::from_secs(60);
    let mut buf = [0u8; 4096];
    while !stop.load(Ordering::SeqCst) && Instant::now() < end {
        match r.read(&mut buf) {
            Ok(0) => return Some(start.elapsed()),
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) => {}
            Err(_) => return Some(start.elapsed()),
        }
    }
    None
}

fn misbehave(
    s: TcpStream,
    kind: Misbehaviour,
    stop: &AtomicBool,
    huge: &Mutex<Vec<HugeReport>>,
) -> io::Result<()> {
    s.set_nonblocking(false)?;
    s.set_read_timeout(Some(Duration::from_millis(100)))?;
    s.set_write_timeout(Some(Duration::from_secs(10)))?;
    let mut w = s.try_clone()?;
    let mut r = BufReader::new(s);
    w.write_all(b"220 bad.test ESMTP at your service\r\n")?;
    let Some(_ehlo) = hop_read_line(&mut r, stop) else {
        return Ok(());
    };
    match kind {
        Misbehaviour::CloseMidReply => {
            w.write_all(b"250-bad.test hello\r\n250-PIPELINING\r\n250-SI")?;
            w.flush()?;
            w.shutdown(Shutdown::Both)?;
        }
        Misbehaviour::HugeReply => {
            let start = Instant::now();
            let mut report = HugeReport::default();
            let chunk = vec![b'x'; 64 * 1024];
            let mut failed = w.write_all(b"250-").is_err();
            for _ in 0..160 {
                if failed || stop.load(Ordering::SeqCst) {
                    break;
                }
                match w.write_all(&chunk) {
                    Ok(()) => report.written += chunk.len() as u64,
                    Err(_) => failed = true,
                }
            }
            report.dropped_after = if failed {
                Some(start.elapsed())
            } else {
                // all of it fit in the socket buffers: when did it close?
                hop_wait_close(&mut r, stop).map(|_| start.elapsed())
            };
            huge.lock().expect("huge lock").push(report);
        }
        Misbehaviour::StallAfterGreeting => {
            hop_wait_close(&mut r, stop);
        }
        Misbehaviour::Garbage => {
            w.write_all(b"HELLO?\r\n")?;
            for _ in 0..100 {
                if hop_read_line(&mut r, stop).is_none() {
                    break;
                }
                w.write_all(b"HELLO?\r\n")?;
            }
        }
    }
    Ok(())
}

/// What one misbehaving-hop run observed.
struct HopRun {
    deferred_after: Duration,
    reply: String,
    good_after: Duration,
    peak_rss_kb: u64,
    huge: Vec<HugeReport>,
}

/// A delivering relay (`--delivery-timeout 2s --retry-min 1s`, ONE
/// delivery thread) with `bad.example` routed to a misbehaving hop and
/// everything else to a good sink. One message goes to the bad hop; while
/// it misbehaves, a second message to the good sink must still be
/// delivered, which it can only be if the single delivery thread comes
/// back. The bad recipient must be deferred with `needle` in its last
/// reply, and the log must say so.
fn against_misbehaving_hop(kind: Misbehaviour, needle: &str) -> HopRun {
    let bad = BadHop::start(kind);
    let good = Sink::start();
    let args = [
        "--no-dns".to_string(),
        "--delivery-timeout".into(),
        "2s".into(),
        "--retry-min".into(),
        "1s".into(),
        "--delivery-workers".into(),
        "1".into(),
        "--route".into(),
        route("bad.example", bad.addr),
        "--route".into(),
        route("*", good.addr()),
    ];
    let relay = Relay::start(&to_strs(&args));
    let watch = RssWatch::start(relay.pid());
    let mut t = relay.session();
    let queued = Instant::now();
    let bad_id = t.send_mail(
        "s@origin.example",
        &["x@bad.example"],
        b"Subject: to a bad hop\r\n\r\nx\r\n",
    );
    assert!(
        wait_until(Duration::from_secs(10), || bad.connections() >= 1),
        "{kind:?}: the relay never connected to the bad hop"
    );
    let good_queued = Instant::now();
    t.send_mail(
        "s@origin.example",
        &["y@good.example"],
        b"Subject: meanwhile\r\n\r\nfast lane\r\n",
    );
    t.cmd_enh("QUIT", 221, "2.0.0");
    assert!(
        good.wait_for(1, Duration::from_secs(10)),
        "{kind:?}: the good message is stuck behind the bad hop"
    );
    let good_after = good_queued.elapsed();

    let mut last = None;
    let deferred = wait_until(Duration::from_secs(15), || {
        last = env_now(relay.spool(), &bad_id);
        last.as_ref().is_some_and(|e| {
            e.rcpts()
                .iter()
                .any(|(st, _, reply)| st == "deferred" && reply.contains(needle))
        })
    });
    let deferred_after = queued.elapsed();
    assert!(
        deferred,
        "{kind:?}: x@bad.example never deferred with {needle:?}; envelope:\n{}",
        last.map(|e| e.text).unwrap_or_else(|| "(gone)".into())
    );
    let env = last.expect("checked above");
    let reply = env.rcpts()[0].2.clone();
    let log = relay.log();
    assert!(
        log.lines().any(|l| l.contains(&bad_id)
            && l.contains("to=x@bad.example")
            && l.contains("status=deferred")),
        "{kind:?}: no deferral line for {bad_id} in the log:\n{log}"
    );
    // still alive, still receiving
    let mut u = relay.session();
    u.cmd_enh("NOOP", 250, "2.0.0");
    u.cmd_enh("QUIT", 221, "2.0.0");
    let peak_rss_kb = watch.finish();
    drop(relay);
    drop(good);
    let huge = bad.huge.lock().expect("huge lock").clone();
    let run = HopRun {
        deferred_after,
        reply,
        good_after,
        peak_rss_kb,
        huge,
    };
    println!(
        "{kind:?}: deferred after {:?} with \"{}\"; other mail delivered {:?} after it was queued; relay peak RSS {} kB; bad hop connections {}",
        run.deferred_after,
        run.reply,
        run.good_after,
        run.peak_rss_kb,
        bad.connections()
    );
    assert!(
        run.peak_rss_kb < RSS_LIMIT_KB,
        "{kind:?}: relay RSS peaked at {} kB",
        run.peak_rss_kb
    );
    run
}

#[test]
fn next_hop_closing_inside_a_multiline_reply_is_deferred() {
    let run = against_misbehaving_hop(Misbehaviour::CloseMidReply, "451 4.4.2");
    assert!(
        run.reply.contains("connection lost during EHLO"),
        "{}",
        run.reply
    );
    assert!(run.deferred_after < Duration::from_secs(10));
}

#[test]
fn next_hop_sending_a_ten_megabyte_reply_line_is_dropped_and_deferred() {
    let run = against_misbehaving_hop(Misbehaviour::HugeReply, "451 4.5.0");
    assert!(run.reply.contains("reply line too long"), "{}", run.reply);
    assert!(!run.huge.is_empty(), "the bad hop never sent its reply");
    for h in &run.huge {
        println!(
            "huge reply: {} octets written before the relay dropped the connection after {:?}",
            h.written, h.dropped_after
        );
        let after = h
            .dropped_after
            .expect("the relay never closed the connection");
        // dropped at once, not after the 2 s delivery timeout
        assert!(
            after < Duration::from_millis(1900),
            "dropped after {after:?}"
        );
    }
}

#[test]
fn next_hop_stalling_after_the_greeting_is_deferred_within_the_timeout() {
    let run = against_misbehaving_hop(Misbehaviour::StallAfterGreeting, "4.4.2");
    assert!(
        run.reply.contains("timeout waiting for reply to EHLO"),
        "{}",
        run.reply
    );
    // --delivery-timeout 2s: not before it, and not much after
    assert!(
        run.deferred_after >= Duration::from_millis(1900),
        "deferred after {:?}, before the timeout",
        run.deferred_after
    );
    assert!(
        run.deferred_after < Duration::from_secs(8),
        "deferred after {:?}",
        run.deferred_after
    );
}

#[test]
fn next_hop_answering_garbage_is_deferred() {
    let run = against_misbehaving_hop(Misbehaviour::Garbage, "451 4.5.0");
    assert!(
        run.reply.contains("protocol error after EHLO"),
        "{}",
        run.reply
    );
    assert!(run.deferred_after < Duration::from_secs(10));
}

// ---------------------------------------------------------------------
// a path the relay accepts but cannot store faithfully
// ---------------------------------------------------------------------

/// `<@aaa...:x@[IPv6:1::3:4:5:6:7:8]>`, exactly 256 octets (the RFC 5321
/// §4.5.3.1.3 limit): accepted at RCPT. Printed again, the address
/// literal becomes `1:0:3:4:5:6:7:8` (RFC 5952 form, std's Display), one
/// octet longer, so the envelope holds a 257-octet path that
/// `Path::parse` refuses.
fn path_that_grows_when_printed() -> String {
    let mailbox = "x@[IPv6:1::3:4:5:6:7:8]";
    let domain_len = 256 - "<@:>".len() - mailbox.len();
    let mut domain = String::new();
    while domain.len() < domain_len {
        if !domain.is_empty() {
            domain.push('.');
        }
        let n = (domain_len - domain.len()).min(63);
        domain.push_str(&"a".repeat(n));
    }
    let path = format!("<@{domain}:{mailbox}>");
    assert_eq!(path.len(), 256);
    path
}

#[test]
fn accepted_long_ipv6_path_survives_a_restart() {
    let mut relay = Relay::receive_only(&[]);
    let path = path_that_grows_when_printed();
    let mut t = relay.session();
    t.cmd_enh("MAIL FROM:<a@example.org>", 250, "2.1.0");
    t.cmd_enh(&format!("RCPT TO:{path}"), 250, "2.1.5");
    t.cmd_enh("DATA", 354, "2.0.0");
    t.send_raw(BODY);
    t.send_raw(b".\r\n");
    let id = queued_id(&t.expect_enh(250, "2.0.0")).expect("queue id");
    t.cmd_enh("QUIT", 221, "2.0.0");
    let env = assert_complete(relay.spool(), &id);
    println!("stored forward-path: {}", env.rcpts()[0].1);
    relay.restart();
    assert_eq!(
        corrupt_files(relay.spool()),
        Vec::<String>::new(),
        "an acknowledged message was declared corrupt at start-up"
    );
    assert_eq!(queued_ids(relay.spool()), vec![id]);
}
