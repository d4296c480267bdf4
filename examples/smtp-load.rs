//! smtp-load: the load generator of `scripts/bench.sh fanout` and `drain`
//! (issue 16), for what Postfix's smtp-source cannot send: recipients in
//! several domains per message. Otherwise it behaves as smtp-source does
//! there (one message per connection, HELO, no pipelining, every reply
//! awaited), so both relays see the same dialogue.
//!
//!   smtp-load ADDR SESSIONS MESSAGES SIZE DOMAINS MODE
//!
//! DOMAINS: comma-separated. MODE `all`: each message has one recipient in
//! every domain (fan-out); `rotate`: one recipient, in the domains in
//! turn (a backlog spread over them). Prints one line; exit 0 when every
//! message got its 250, 1 otherwise. Every socket has a 60 s timeout.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

struct Load {
    addr: String,
    messages: usize,
    body: Vec<u8>,
    domains: Vec<String>,
    all: bool,
    next: AtomicUsize,
    sent: AtomicUsize,
    failed: AtomicUsize,
}

fn reply(r: &mut impl BufRead) -> std::io::Result<u16> {
    let mut line = String::new();
    loop {
        line.clear();
        if r.read_line(&mut line)? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        if line.as_bytes().get(3) != Some(&b'-') {
            return Ok(line.get(..3).and_then(|c| c.parse().ok()).unwrap_or(0));
        }
    }
}

/// One message over its own connection; Err says what went wrong.
fn one(load: &Load, i: usize) -> Result<(), String> {
    let s = TcpStream::connect(&load.addr).map_err(|e| format!("connect: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(60))).ok();
    s.set_write_timeout(Some(Duration::from_secs(60))).ok();
    s.set_nodelay(true).ok();
    let mut w = s.try_clone().map_err(|e| e.to_string())?;
    let mut r = BufReader::new(s);
    let mut step = |cmd: &[u8], want: u16| -> Result<(), String> {
        if !cmd.is_empty() {
            w.write_all(cmd).map_err(|e| format!("write: {e}"))?;
        }
        match reply(&mut r) {
            Ok(code) if code == want => Ok(()),
            Ok(code) => Err(format!(
                "{} got {code}",
                String::from_utf8_lossy(cmd).trim()
            )),
            Err(e) => Err(format!("read: {e}")),
        }
    };
    step(b"", 220)?;
    step(b"HELO load.bench\r\n", 250)?;
    step(b"MAIL FROM:<load@src.example>\r\n", 250)?;
    let rcpts: Vec<&String> = if load.all {
        load.domains.iter().collect()
    } else {
        vec![&load.domains[i % load.domains.len()]]
    };
    for d in rcpts {
        step(format!("RCPT TO:<u{i}@{d}>\r\n").as_bytes(), 250)?;
    }
    step(b"DATA\r\n", 354)?;
    let mut data =
        format!("Subject: load {i}\r\nMessage-ID: <{i}@load.bench>\r\n\r\n").into_bytes();
    data.extend_from_slice(&load.body);
    data.extend_from_slice(b".\r\n");
    step(&data, 250)?;
    step(b"QUIT\r\n", 221)
}

fn worker(load: &Load) {
    loop {
        let i = load.next.fetch_add(1, Ordering::Relaxed);
        if i >= load.messages {
            return;
        }
        match one(load, i) {
            Ok(()) => load.sent.fetch_add(1, Ordering::Relaxed),
            Err(e) => {
                if load.failed.fetch_add(1, Ordering::Relaxed) < 5 {
                    eprintln!("smtp-load: message {i}: {e}");
                }
                0
            }
        };
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [addr, sessions, messages, size, domains, mode] = args.as_slice() else {
        eprintln!("usage: smtp-load ADDR SESSIONS MESSAGES SIZE DOMAINS all|rotate");
        std::process::exit(64);
    };
    let num = |s: &str| -> usize {
        s.parse().unwrap_or_else(|_| {
            eprintln!("smtp-load: not a number: {s}");
            std::process::exit(64)
        })
    };
    let size = num(size);
    // 78-octet lines of filler up to SIZE, as smtp-source's -l does
    let line = format!("{}\r\n", "x".repeat(76));
    let body = line.repeat(size.div_ceil(line.len()).max(1)).into_bytes();
    let load = Load {
        addr: addr.clone(),
        messages: num(messages),
        body,
        domains: domains.split(',').map(str::to_string).collect(),
        all: mode == "all",
        next: AtomicUsize::new(0),
        sent: AtomicUsize::new(0),
        failed: AtomicUsize::new(0),
    };
    let t0 = Instant::now();
    std::thread::scope(|s| {
        for _ in 0..num(sessions).max(1) {
            s.spawn(|| worker(&load));
        }
    });
    let secs = t0.elapsed().as_secs_f64();
    let (sent, failed) = (load.sent.into_inner(), load.failed.into_inner());
    println!("smtp-load: {sent} sent, {failed} failed in {secs:.2} s");
    std::process::exit(if failed == 0 { 0 } else { 1 });
}
