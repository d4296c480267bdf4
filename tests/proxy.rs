//! The PROXY protocol (v1 and v2) with a raw client playing the proxy:
//! from a trusted peer (`--proxy-from 127.0.0.1/32`) the header names the
//! client, and that client drives relay control (`--relay-net
//! 192.0.2.0/24`), the per-IP limit, `Received:` and the logs; from an
//! untrusted peer (127.0.0.2) nothing is read and the connection closed.
//! Malformed, overlong and late headers close the connection.
//!
//! The real HAProxy in front of two relays: tests/haproxy.rs.

mod common;
mod tlsutil;

use std::time::{Duration, Instant};

use common::*;
use smtp_relay::auth::encode_base64;
use tlsutil::{Certs, Smtp};

const INSIDE: &str = "192.0.2.7";
const OUTSIDE: &str = "198.51.100.9";

fn relay(extra: &[&str]) -> Relay {
    let mut args = vec![
        "--proxy-protocol",
        "--proxy-from",
        "127.0.0.1/32",
        "--relay-net",
        "192.0.2.0/24",
        "--timeout",
        "2s",
    ];
    args.extend_from_slice(extra);
    Relay::receive_only(&args)
}

fn v1(client: &str, port: u16) -> Vec<u8> {
    format!("PROXY TCP4 {client} 127.0.0.1 {port} 25\r\n").into_bytes()
}

/// A v2 header: `cmd` 0 LOCAL or 1 PROXY, TCP over IPv4, with a TLV.
fn v2(cmd: u8, client: [u8; 4], port: u16) -> Vec<u8> {
    let mut h = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    h.push(0x20 | cmd);
    h.push(0x11);
    let mut block = client.to_vec();
    block.extend_from_slice(&[127, 0, 0, 1]);
    block.extend_from_slice(&port.to_be_bytes());
    block.extend_from_slice(&25u16.to_be_bytes());
    // a TLV (PP2_TYPE_UNIQUE_ID), to be skipped
    block.extend_from_slice(&[0x05, 0, 4, b'a', b'b', b'c', b'd']);
    h.extend_from_slice(&(block.len() as u16).to_be_bytes());
    h.extend_from_slice(&block);
    h
}

/// Connects from `from`, writes `header`, and expects the greeting.
fn through(relay: &Relay, from: &str, header: &[u8]) -> Talk {
    let mut t = Talk::connect_from(from, relay.addr());
    t.send_raw(header);
    t.expect(220);
    t.cmd("EHLO client.test", 250);
    t
}

/// A message to a remote domain: relayed only for a relay client.
fn relay_attempt(t: &mut Talk) -> Result<String, String> {
    t.cmd_enh("MAIL FROM:<a@client.test>", 250, "2.1.0");
    t.send("RCPT TO:<b@dest.example>");
    let (code, text) = t.reply();
    if code != 250 {
        t.cmd("QUIT", 221);
        return Err(format!("{code} {text}"));
    }
    t.cmd_enh("DATA", 354, "2.0.0");
    t.send_raw(b"Subject: proxied\r\n\r\nhi\r\n.\r\n");
    let text = t.expect_enh(250, "2.0.0");
    t.cmd("QUIT", 221);
    Ok(queued_id(&text).expect("queue id"))
}

fn wait_log(relay: &Relay, needle: &str) -> bool {
    wait_until(Duration::from_secs(5), || relay.log().contains(needle))
}

#[test]
fn v1_from_a_trusted_proxy_names_the_client() {
    let relay = relay(&[]);
    // inside --relay-net as named by the header: relayed, and the
    // Received: line and the queued log line show the client
    let mut t = through(&relay, "127.0.0.1", &v1(INSIDE, 40001));
    let id = relay_attempt(&mut t).expect("a relay client may relay");
    let msg = String::from_utf8_lossy(&read_msg(relay.spool(), &id)).to_string();
    let (received, _) = split_received(msg.as_bytes());
    assert!(
        received.contains(&format!("from client.test ([{INSIDE}])")),
        "{received}"
    );
    assert!(!received.contains("127.0.0.1"), "{received}");
    assert!(
        wait_log(&relay, &format!("client=[{INSIDE}]")),
        "{}",
        relay.log()
    );
    // outside: refused, though the proxy (127.0.0.1) is loopback
    let mut t = through(&relay, "127.0.0.1", &v1(OUTSIDE, 40002));
    let refused = relay_attempt(&mut t).expect_err("not a relay client");
    assert!(refused.starts_with("550 5.7.1"), "{refused}");
}

#[test]
fn v2_from_a_trusted_proxy_names_the_client() {
    // -v: the session's debug lines too
    let relay = relay(&["-v"]);
    let mut t = through(&relay, "127.0.0.1", &v2(1, [192, 0, 2, 7], 40003));
    let id = relay_attempt(&mut t).expect("a relay client may relay");
    let msg = read_msg(relay.spool(), &id);
    let (received, _) = split_received(&msg);
    assert!(received.contains(&format!("([{INSIDE}])")), "{received}");
    let mut t = through(&relay, "127.0.0.1", &v2(1, [198, 51, 100, 9], 40004));
    let refused = relay_attempt(&mut t).expect_err("not a relay client");
    assert!(refused.starts_with("550 5.7.1"), "{refused}");
    // the session's log lines carry the client's address and port
    assert!(
        wait_log(&relay, &format!("{OUTSIDE}:40004 > 550 5.7.1")),
        "{}",
        relay.log()
    );
    let log = relay.log();
    assert!(
        log.contains(&format!(
            "{OUTSIDE}:40004 connected through proxy 127.0.0.1:"
        )),
        "{log}"
    );
    // and no reply line names the proxy as the client
    for line in log.lines().filter(|l| l.contains(" > ")) {
        assert!(!line.contains("] 127.0.0.1:"), "{line}");
    }
}

#[test]
fn local_and_unknown_keep_the_proxys_address() {
    // the proxy is not in --relay-net here, so its own address cannot relay
    let relay = relay(&[]);
    let mut t = through(&relay, "127.0.0.1", &v2(0, [192, 0, 2, 7], 40005));
    let refused = relay_attempt(&mut t).expect_err("LOCAL: the proxy's address");
    assert!(refused.starts_with("550 5.7.1"), "{refused}");
    let mut t = through(&relay, "127.0.0.1", b"PROXY UNKNOWN\r\n");
    let refused = relay_attempt(&mut t).expect_err("UNKNOWN: the proxy's address");
    assert!(refused.starts_with("550 5.7.1"), "{refused}");
    // and with the proxy in --relay-net, LOCAL relays as the proxy
    let relay = Relay::receive_only(&["--proxy-protocol", "--proxy-from", "127.0.0.1/32"]);
    let mut t = through(&relay, "127.0.0.1", &v2(0, [198, 51, 100, 9], 40006));
    relay_attempt(&mut t).expect("LOCAL from a loopback proxy relays");
}

#[test]
fn an_untrusted_peer_is_closed_unread() {
    let relay = relay(&[]);
    for header in [v1(INSIDE, 40007), v2(1, [192, 0, 2, 7], 40008)] {
        let mut t = Talk::connect_from("127.0.0.2", relay.addr());
        t.send_raw(&header);
        t.expect_closed();
    }
    // a plain SMTP client from there gets no greeting either
    let mut t = Talk::connect_from("127.0.0.2", relay.addr());
    t.expect_closed();
    assert!(
        wait_log(&relay, "127.0.0.2:"),
        "refusal not logged:\n{}",
        relay.log()
    );
    let log = relay.log();
    assert!(log.contains("not in --proxy-from"), "{log}");
    assert!(
        !log.contains(INSIDE),
        "an untrusted header was used:\n{log}"
    );
    // nothing the untrusted peer sent was read, so nothing was queued
    assert!(queued_ids(relay.spool()).is_empty());
}

#[test]
fn malformed_overlong_and_late_headers_close_the_connection() {
    let relay = relay(&[]);
    let mut long = b"PROXY TCP4 ".to_vec();
    long.resize(300, b'1');
    let mut bad_v2 = v2(1, [192, 0, 2, 7], 40009);
    bad_v2[12] = 0x12; // version 1 in a v2 header
    let cases: Vec<(&str, Vec<u8>)> = vec![
        (
            "missing ports",
            b"PROXY TCP4 192.0.2.7 127.0.0.1\r\n".to_vec(),
        ),
        ("v6 address in TCP4", b"PROXY TCP4 ::1 ::1 1 2\r\n".to_vec()),
        ("bare LF", b"PROXY TCP4 192.0.2.7 127.0.0.1 1 2\n".to_vec()),
        ("no CRLF in 107 bytes", long),
        ("v2 version 1", bad_v2),
        ("SMTP instead of a header", b"EHLO client.test\r\n".to_vec()),
    ];
    for (name, header) in cases {
        let mut t = Talk::connect_from("127.0.0.1", relay.addr());
        t.send_raw(&header);
        let started = Instant::now();
        t.expect_closed();
        // refused on sight, not at the header deadline
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{name}: took {:?}",
            started.elapsed()
        );
    }
    // a header cut short and never finished: closed at the deadline
    // (--timeout 2s bounds it below the 5 s default)
    let mut t = Talk::connect_from("127.0.0.1", relay.addr());
    t.send_raw(b"PROXY TCP4 192.0.2.7");
    let started = Instant::now();
    t.expect_closed();
    assert!(started.elapsed() >= Duration::from_millis(1500));
    // and a trusted peer that sends no header at all
    let mut t = Talk::connect_from("127.0.0.1", relay.addr());
    t.expect_closed();
    assert!(
        wait_log(&relay, "header not complete in time"),
        "{}",
        relay.log()
    );
    let log = relay.log();
    for want in [
        "bad v1 header",
        "bad v2 header: version not 2",
        "header too long",
        "not a PROXY protocol header",
    ] {
        assert!(log.contains(want), "no {want:?} in the log:\n{log}");
    }
    assert!(!log.contains(&format!("{INSIDE}:")), "{log}");
    // the server still serves
    let mut t = through(&relay, "127.0.0.1", &v1(INSIDE, 40010));
    relay_attempt(&mut t).expect("still serving");
}

#[test]
fn the_per_ip_limit_counts_clients_not_the_proxy() {
    let relay = relay(&["--max-per-ip", "2"]);
    // four clients at once through one proxy: the proxy is not one client
    let mut held = Vec::new();
    for (i, client) in ["198.51.100.1", "198.51.100.2", "198.51.100.3", OUTSIDE]
        .iter()
        .enumerate()
    {
        held.push(through(&relay, "127.0.0.1", &v1(client, 41000 + i as u16)));
    }
    // a second connection of one client is fine, a third is over its limit
    held.push(through(&relay, "127.0.0.1", &v1(OUTSIDE, 41010)));
    let mut t = Talk::connect_from("127.0.0.1", relay.addr());
    t.send_raw(&v1(OUTSIDE, 41011));
    t.expect_enh(421, "4.7.0");
    assert!(
        wait_log(
            &relay,
            &format!("{OUTSIDE}:41011 rejected reason=per_ip_limit")
        ),
        "{}",
        relay.log()
    );
    // closing one frees its ticket
    held.pop().expect("held").cmd("QUIT", 221);
    assert!(wait_until(Duration::from_secs(5), || {
        let mut t = Talk::connect_from("127.0.0.1", relay.addr());
        t.send_raw(&v1(OUTSIDE, 41012));
        t.try_reply().ok().flatten().is_some_and(|(c, _)| c == 220)
    }));
}

/// The AUTH failure limit (per address, across sessions) counts the
/// client the header names: one client's guesses through the proxy do
/// not lock out another client of the same proxy.
#[test]
fn auth_failure_limits_count_the_client_not_the_proxy() {
    let dir = TempDir::new("proxyauth");
    let f = dir.path().join("passwd");
    let file = f.to_str().expect("utf-8 path");
    let (code, err) = passwd(&f, "alice", "alice-secret-1\n");
    assert_eq!(code, Some(0), "{err}");
    // loopback clients are offered AUTH without TLS
    let relay = relay(&[
        "--auth-file",
        file,
        "--auth-max-failures",
        "2",
        "--auth-failure-window",
        "1h",
    ]);
    let guess = |client: &str, pass: &str| -> u16 {
        let mut t = through(&relay, "127.0.0.1", &v1(client, 42000));
        let plain = encode_base64(format!("\0alice\0{pass}").as_bytes());
        t.send(&format!("AUTH PLAIN {plain}"));
        let (code, _) = t.reply();
        t.send("QUIT");
        code
    };
    assert_eq!(guess("127.0.0.5", "guess-1"), 535);
    assert_eq!(guess("127.0.0.5", "guess-2"), 535);
    assert_eq!(guess("127.0.0.5", "alice-secret-1"), 454);
    assert_eq!(guess("127.0.0.6", "alice-secret-1"), 235);
    assert!(
        wait_log(&relay, "auth lockout address=127.0.0.5 "),
        "{}",
        relay.log()
    );
}

/// On an implicit-TLS listener (RFC 8314) the header comes first, in
/// plaintext, then the TLS handshake, as HAProxy sends it in TCP mode.
#[test]
fn v2_before_the_handshake_on_an_implicit_tls_listener() {
    let Some(certs) = Certs::make("v2_before_the_handshake_on_an_implicit_tls_listener") else {
        return;
    };
    let mut args = certs.relay_args();
    for a in [
        "--listen-tls",
        "127.0.0.1:0",
        "--proxy-protocol",
        "--proxy-from",
        "127.0.0.1/32",
        "--relay-net",
        "192.0.2.0/24",
    ] {
        args.push(a.into());
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let relay = Relay::receive_only(&args);
    let tls_port = relay.addrs()[1];
    for (client, want) in [([192, 0, 2, 7], 250), ([198, 51, 100, 9], 550)] {
        let mut s = Smtp::connect(tls_port);
        s.send_raw(&v2(1, client, 40100));
        s.handshake(&certs, "relay.test");
        s.expect(220);
        s.cmd("EHLO client.test", 250);
        s.cmd("MAIL FROM:<a@client.test>", 250);
        s.cmd("RCPT TO:<b@dest.example>", want);
        s.cmd("QUIT", 221);
    }
}
