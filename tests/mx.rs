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

use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use common::dnsmasq::Dnsmasq;
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
