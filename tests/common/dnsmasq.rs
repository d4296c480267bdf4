//! A private dnsmasq on loopback for the routing and MX tests: MX and
//! address records for `.test`, on a free 127.0.0.1 port, killed on drop.

use std::io::Read;
use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::in_ci;

/// A dnsmasq child on a free 127.0.0.1 port; killed on drop.
pub struct Dnsmasq {
    child: Child,
    pub addr: SocketAddr,
}

impl Drop for Dnsmasq {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn dnsmasq_binary() -> Option<PathBuf> {
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
pub fn free_port() -> u16 {
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
    pub fn start(test: &str, records: &[&str]) -> Option<Dnsmasq> {
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
            match spawn(&bin, free_port(), records) {
                Ok(d) => return Some(d),
                Err(e) => last_err = e,
            }
        }
        panic!("dnsmasq did not start: {last_err}");
    }

    /// Stops this dnsmasq and starts another on the same address with
    /// `records` (dnsmasq never rereads its command line): a changed zone.
    pub fn restart(&mut self, records: &[&str]) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let bin = dnsmasq_binary().expect("dnsmasq ran before");
        let mut last_err = String::new();
        for _ in 0..20 {
            match spawn(&bin, self.addr.port(), records) {
                Ok(d) => {
                    *self = d;
                    return;
                }
                Err(e) => last_err = e,
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("dnsmasq did not restart: {last_err}");
    }
}

/// One dnsmasq on 127.0.0.1:`port`, answering.
fn spawn(bin: &std::path::Path, port: u16, records: &[&str]) -> Result<Dnsmasq, String> {
    let mut child = Command::new(bin)
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
        .map_err(|e| format!("spawn dnsmasq: {e}"))?;
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    match wait_ready(&mut child, addr) {
        Ok(()) => Ok(Dnsmasq { child, addr }),
        Err(e) => {
            let _ = child.kill();
            let _ = child.wait();
            let mut stderr = String::new();
            if let Some(mut s) = child.stderr.take() {
                let _ = s.read_to_string(&mut stderr);
            }
            Err(format!("{e}; stderr: {stderr}"))
        }
    }
}

/// Polls until dnsmasq answers a query, it exits, or 10 s pass.
pub fn wait_ready(child: &mut Child, addr: SocketAddr) -> Result<(), String> {
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
pub fn dns_query(id: u16, name: &str, qtype: u16) -> Vec<u8> {
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
