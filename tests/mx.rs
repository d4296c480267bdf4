//! Delivery by MX records from a real DNS server on loopback: a private
//! `dnsmasq` answers for `.test`, and a delivering relay asks it
//! (`--dns 127.0.0.1:PORT`) and connects to the MX hosts on the sink's
//! port (`--smtp-port`). Nothing leaves 127.0.0.0/8.
//!
//! The sink listens on 127.0.0.1 only, so another loopback address such
//! as 127.0.0.3 refuses connections on the same port: a dead MX host.
//!
//! Without dnsmasq the tests print SKIPPED and pass, except under CI
//! (`CI` set), where a missing dnsmasq is a failure.

mod common;

use std::io::Read;
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

const LIMIT: Duration = Duration::from_secs(15);

/// The zone every test shares. `origin.test` is the senders' domain (an
/// implicit MX on 127.0.0.1, so DSNs come back to the sink).
const RECORDS: &[&str] = &[
    "--local=/test/",
    // the preferred MX is dead, the backup works; listed worst first
    "--mx-host=pref.test,mx2.pref.test,20",
    "--mx-host=pref.test,mx1.pref.test,10",
    "--host-record=mx1.pref.test,127.0.0.3",
    "--host-record=mx2.pref.test,127.0.0.1",
    // implicit MX: an address, no MX
    "--host-record=implicit.test,127.0.0.1",
    "--host-record=origin.test,127.0.0.1",
    // RFC 7505 null MX
    "--mx-host=nullmx.test,.,0",
];

// ---------------------------------------------------------------------
// dnsmasq on loopback (as in tests/routing.rs)
// ---------------------------------------------------------------------

/// A dnsmasq child on a free 127.0.0.1 port; killed on drop.
struct Dnsmasq {
    child: Child,
    addr: SocketAddr,
}

impl Drop for Dnsmasq {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn dnsmasq_binary() -> Option<PathBuf> {
    let fixed = PathBuf::from("/usr/sbin/dnsmasq");
    if fixed.is_file() {
        return Some(fixed);
    }
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|p| p.join("dnsmasq"))
            .find(|p| p.is_file())
    })
}

/// A port free for both UDP and TCP on 127.0.0.1 (at the time of asking).
fn free_port() -> u16 {
    for _ in 0..100 {
        let udp = UdpSocket::bind("127.0.0.1:0").expect("bind a UDP socket on loopback");
        let port = udp.local_addr().expect("local addr").port();
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no port free for both UDP and TCP after 100 tries");
}

impl Dnsmasq {
    /// Starts dnsmasq with `records`; `None` (after printing SKIPPED) when
    /// dnsmasq is not installed outside CI.
    fn start(test: &str, records: &[&str]) -> Option<Dnsmasq> {
        let Some(bin) = dnsmasq_binary() else {
            if in_ci() {
                panic!("{test}: dnsmasq is not installed (scripts/ci-deps.sh installs it)");
            }
            println!("SKIPPED {test}: dnsmasq not installed (run scripts/ci-deps.sh)");
            return None;
        };
        // A port can be taken between free_port() and dnsmasq's bind: retry.
        let mut last_err = String::new();
        for _ in 0..5 {
            let port = free_port();
            let mut child = Command::new(&bin)
                .args([
                    "--no-daemon",
                    &format!("--port={port}"),
                    "--listen-address=127.0.0.1",
                    "--bind-interfaces",
                    "--no-resolv",
                    "--no-hosts",
                    "--conf-file=/dev/null",
                ])
                .args(records)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .expect("spawn dnsmasq");
            let addr = SocketAddr::from(([127, 0, 0, 1], port));
            match wait_ready(&mut child, addr) {
                Ok(()) => return Some(Dnsmasq { child, addr }),
                Err(e) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    let mut stderr = String::new();
                    if let Some(mut s) = child.stderr.take() {
                        let _ = s.read_to_string(&mut stderr);
                    }
                    last_err = format!("{e}; stderr: {stderr}");
                }
            }
        }
        panic!("dnsmasq did not start: {last_err}");
    }
}

/// Polls until dnsmasq answers a query, it exits, or 10 s pass.
fn wait_ready(child: &mut Child, addr: SocketAddr) -> Result<(), String> {
    let sock = UdpSocket::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    sock.set_read_timeout(Some(Duration::from_millis(100)))
        .map_err(|e| e.to_string())?;
    let query = dns_query(0x5eed, "implicit.test", 1);
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut buf = [0u8; 512];
    while Instant::now() < deadline {
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!("dnsmasq exited: {status}"));
        }
        let _ = sock.send_to(&query, addr);
        if let Ok((n, _)) = sock.recv_from(&mut buf) {
            if n >= 12 && buf[..2] == [0x5e, 0xed] {
                return Ok(());
            }
        }
    }
    Err("no answer within 10 s".into())
}

/// A minimal DNS query packet (RFC 1035 §4.1), recursion desired.
fn dns_query(id: u16, name: &str, qtype: u16) -> Vec<u8> {
    let mut p = Vec::new();
    p.extend_from_slice(&id.to_be_bytes());
    p.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
    for label in name.split('.') {
        p.push(label.len() as u8);
        p.extend_from_slice(label.as_bytes());
    }
    p.push(0);
    p.extend_from_slice(&qtype.to_be_bytes());
    p.extend_from_slice(&1u16.to_be_bytes());
    p
}

// ---------------------------------------------------------------------
// The relay against that DNS
// ---------------------------------------------------------------------

/// dnsmasq, a sink on 127.0.0.1, and a relay resolving through the one
/// and delivering to MX hosts on the other's port (with `-v`: the debug
/// log names each host tried). `None`: skipped.
fn setup(test: &str) -> Option<(Dnsmasq, Sink, Relay)> {
    let dns = Dnsmasq::start(test, RECORDS)?;
    let sink = Sink::start();
    let args = relay_args(&dns, &sink);
    let relay = Relay::start(&args.iter().map(String::as_str).collect::<Vec<_>>());
    Some((dns, sink, relay))
}

/// `--dns`, `--smtp-port`, fast retries, debug logging.
fn relay_args(dns: &Dnsmasq, sink: &Sink) -> Vec<String> {
    vec![
        "--dns".into(),
        dns.addr.to_string(),
        "--smtp-port".into(),
        sink.addr().port().to_string(),
        "--retry-min".into(),
        "1s".into(),
        "--retry-max".into(),
        "1s".into(),
        "-v".into(),
    ]
}

fn spool_empties(relay: &Relay) -> bool {
    wait_until(LIMIT, || queue_files(relay.spool()).is_empty())
}

/// DSNs (null reverse-path) the sink accepted.
fn dsns(sink: &Sink) -> Vec<Received> {
    sink.messages()
        .into_iter()
        .filter(|m| m.mail_from.is_empty())
        .collect()
}

/// Sends `rcpt` a message from `s@origin.test` and expects the DSN that
/// fails it with `status`, for a reason the relay gives (`why`).
fn expect_bounce(test: &str, rcpt: &str, status: &str, why: &str) {
    let Some((_dns, sink, relay)) = setup(test) else {
        return;
    };
    let mut t = relay.session();
    let id = t.send_mail(
        "s@origin.test",
        &[rcpt],
        format!("Subject: to {rcpt}\r\n\r\nbounce me\r\n").as_bytes(),
    );
    assert!(
        wait_until(LIMIT, || !dsns(&sink).is_empty()),
        "{id}: no DSN; sink saw {:?}",
        sink.attempts()
    );
    assert!(
        spool_empties(&relay),
        "left: {:?}",
        queue_files(relay.spool())
    );
    let all = sink.messages();
    assert_eq!(all.len(), 1, "only the DSN reaches the sink: {all:?}");
    let dsn = &all[0];
    assert_eq!(dsn.mail_from, "");
    assert_eq!(dsn.rcpts, ["s@origin.test"]);
    let text = String::from_utf8_lossy(&dsn.data);
    for needle in [
        "Content-Type: multipart/report; report-type=delivery-status".to_string(),
        format!("\r\nFinal-Recipient: rfc822; {rcpt}\r\nAction: failed\r\nStatus: {status}\r\n"),
        why.to_string(),
    ] {
        assert!(text.contains(&needle), "DSN lacks {needle:?}:\n{text}");
    }
    assert!(
        !text.contains("Remote-MTA:"),
        "no server was ever asked:\n{text}"
    );
}

#[test]
fn preferred_mx_refusing_falls_back_to_the_next() {
    let Some((dns, sink, relay)) = setup("preferred_mx_refusing_falls_back_to_the_next") else {
        return;
    };
    let port = sink.addr().port();
    // the premise: 127.0.0.3 is loopback too, but nothing listens there
    let dead = SocketAddr::from(([127, 0, 0, 3], port));
    match TcpStream::connect_timeout(&dead, Duration::from_secs(2)) {
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {}
        other => panic!("expected {dead} to refuse connections, got {other:?}"),
    }
    // and the router puts the dead host first
    let route = run_cli(
        &[
            "route",
            "--dns",
            &dns.addr.to_string(),
            "--smtp-port",
            &port.to_string(),
            "user@pref.test",
        ],
        LIMIT,
    );
    assert_eq!(route.code, Some(0), "{route:?}");
    let first = route.stdout.find("1. mx1.pref.test");
    let second = route.stdout.find("2. mx2.pref.test");
    assert!(
        first.is_some() && second.is_some(),
        "MX order by preference:\n{}",
        route.stdout
    );

    let mut t = relay.session();
    let id = t.send_mail(
        "s@origin.test",
        &["user@pref.test"],
        b"Subject: via the backup MX\r\n\r\nhi\r\n",
    );
    assert!(sink.wait_for(1, LIMIT), "not delivered");
    assert!(
        spool_empties(&relay),
        "left: {:?}",
        queue_files(relay.spool())
    );
    let got = sink.messages();
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0].rcpts, ["user@pref.test"]);
    let log = relay.log();
    let tried_first = log
        .lines()
        .any(|l| l.contains(&id) && l.contains(&format!("mx1.pref.test[127.0.0.3]:{port}")));
    assert!(tried_first, "the preferred MX was not tried first:\n{log}");
    let sent_via_second = log.lines().any(|l| {
        l.contains(&id)
            && l.contains(&format!("relay=mx2.pref.test[127.0.0.1]:{port}"))
            && l.contains("status=sent")
    });
    assert!(sent_via_second, "not sent via mx2:\n{log}");
}

#[test]
fn implicit_mx_is_the_domain_itself() {
    let Some((_dns, sink, relay)) = setup("implicit_mx_is_the_domain_itself") else {
        return;
    };
    let mut t = relay.session();
    let id = t.send_mail(
        "s@origin.test",
        &["user@implicit.test"],
        b"Subject: no MX at all\r\n\r\nRFC 5321 5.1\r\n",
    );
    assert!(sink.wait_for(1, LIMIT), "not delivered");
    assert!(
        spool_empties(&relay),
        "left: {:?}",
        queue_files(relay.spool())
    );
    let got = sink.messages();
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0].rcpts, ["user@implicit.test"]);
    let port = sink.addr().port();
    let log = relay.log();
    assert!(
        log.lines().any(|l| l.contains(&id)
            && l.contains(&format!("relay=implicit.test[127.0.0.1]:{port}"))
            && l.contains("status=sent")),
        "{log}"
    );
}

#[test]
fn null_mx_bounces_with_5_1_10() {
    expect_bounce(
        "null_mx_bounces_with_5_1_10",
        "user@nullmx.test",
        "5.1.10",
        "null MX",
    );
}

#[test]
fn nxdomain_bounces_with_5_1_2() {
    expect_bounce(
        "nxdomain_bounces_with_5_1_2",
        "user@nosuch.test",
        "5.1.2",
        "NXDOMAIN",
    );
}
