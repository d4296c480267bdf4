//! DNS block- and allowlists on the client address (RFC 5782), against a
//! private dnsmasq serving test zones on loopback (`--dns 127.0.0.1:PORT`).
//! Clients connect from other loopback addresses (127.0.0.2, ...), which
//! `--relay-net 127.0.0.1/32` leaves untrusted, so the lists apply.
//!
//! Without dnsmasq the tests print SKIPPED and pass, except under CI.

mod common;

use common::dnsmasq::Dnsmasq;
use common::*;

/// bl.test lists 127.0.0.2, .3 and .5; bl2.test lists .5 and .6;
/// wl.test allows .3; refuse.test answers 127.255.255.254 (a list
/// refusing the query) for .7.
const RECORDS: &[&str] = &[
    "--local=/test/",
    "--host-record=2.0.0.127.bl.test,127.0.0.2",
    "--host-record=3.0.0.127.bl.test,127.0.0.2",
    "--host-record=5.0.0.127.bl.test,127.0.0.2",
    "--host-record=5.0.0.127.bl2.test,127.0.0.4",
    "--host-record=6.0.0.127.bl2.test,127.0.0.4",
    "--host-record=3.0.0.127.wl.test,127.0.0.2",
    "--host-record=7.0.0.127.refuse.test,127.255.255.254",
];

fn relay(dns: &Dnsmasq, extra: &[&str]) -> Relay {
    let dns = dns.addr.to_string();
    let mut args = vec!["--dns", dns.as_str()];
    args.extend_from_slice(extra);
    edge_relay(&args)
}

/// Connects from `ip`, says EHLO and MAIL, and returns the RCPT reply.
fn rcpt_from(relay: &Relay, ip: &str) -> (u16, String) {
    let mut t = Talk::connect_from(ip, relay.addr());
    t.expect(220);
    t.cmd("EHLO client.test", 250);
    t.cmd("MAIL FROM:<a@sender.test>", 250);
    t.send("RCPT TO:<user@example.org>");
    t.reply()
}

#[test]
fn a_listed_client_is_refused_at_rcpt_naming_the_list() {
    let Some(dns) = Dnsmasq::start("a_listed_client_is_refused_at_rcpt", RECORDS) else {
        return;
    };
    let r = relay(
        &dns,
        &[
            "--dnsbl",
            "bl.test",
            "--dnsbl",
            "refuse.test",
            "--metrics",
            "127.0.0.1:0",
        ],
    );
    let (code, text) = rcpt_from(&r, "127.0.0.2");
    assert_eq!(code, 554, "{text}");
    assert_eq!(
        text,
        "5.7.1 Service unavailable; client [127.0.0.2] blocked using bl.test"
    );
    // the greeting, EHLO and MAIL went through; a client not listed is not
    // refused (positive control)
    assert_eq!(rcpt_from(&r, "127.0.0.4").0, 250);
    // a list refusing the query (127.255.255.x) lists nobody: logged
    assert_eq!(rcpt_from(&r, "127.0.0.7").0, 250);
    let log = r.log();
    // one line for the refusal, with the client, reason, rule and reply
    let refusals = refused_lines(&log, "127.0.0.2");
    assert_eq!(refusals.len(), 1, "{log}");
    assert!(
        refusals[0].contains(
            " refused reason=dnsbl rule=\"dnsbl:bl.test\" reply=\"554 5.7.1 Service unavailable"
        ),
        "{log}"
    );
    // counted under its own reason, not by its enhanced code (5.7.1)
    let (_, metrics) = http_get(metrics_addr(&r), "/metrics");
    assert_eq!(
        sample(&metrics, "smtp_relay_refused_total{reason=\"dnsbl\"}"),
        1.0
    );
    assert_eq!(
        sample(&metrics, "smtp_relay_refused_total{reason=\"sender\"}"),
        0.0
    );
    assert!(
        log.contains("refuse.test ignored: the list refused the query (answer 127.255.255.254)"),
        "{log}"
    );
}

#[test]
fn a_listed_client_is_refused_at_connect_when_asked() {
    let Some(dns) = Dnsmasq::start("a_listed_client_is_refused_at_connect", RECORDS) else {
        return;
    };
    let r = relay(
        &dns,
        &["--dnsbl", "bl.test", "--dnsbl-reject-at", "connect"],
    );
    let mut t = Talk::connect_from("127.0.0.2", r.addr());
    let text = t.expect_enh(554, "5.7.1");
    assert_eq!(
        text,
        "Service unavailable; client [127.0.0.2] blocked using bl.test"
    );
    t.expect_closed();
    let mut ok = Talk::connect_from("127.0.0.4", r.addr());
    ok.expect(220);
    // relay-net clients are not looked up (127.0.0.1 is in relay-net here)
    let mut trusted = Talk::connect(r.addr());
    trusted.expect(220);
}

#[test]
fn an_allowlisted_client_skips_the_blocklists() {
    let Some(dns) = Dnsmasq::start("an_allowlisted_client_skips_the_blocklists", RECORDS) else {
        return;
    };
    let r = relay(&dns, &["--dnsbl", "bl.test", "--dnswl", "wl.test"]);
    // 127.0.0.3 is on both bl.test and wl.test
    let (code, text) = rcpt_from(&r, "127.0.0.3");
    assert_eq!(code, 250, "{text}");
    assert!(r.log().contains("127.0.0.3 allowlisted by wl.test"));
    // the allowlist changes nothing for 127.0.0.2 (not on it)
    assert_eq!(rcpt_from(&r, "127.0.0.2").0, 554);
}

#[test]
fn weights_add_up_to_the_threshold() {
    let Some(dns) = Dnsmasq::start("weights_add_up_to_the_threshold", RECORDS) else {
        return;
    };
    let r = relay(
        &dns,
        &[
            "--dnsbl",
            "bl.test=2",
            "--dnsbl",
            "bl2.test=1",
            "--dnsbl-threshold",
            "3",
        ],
    );
    // on bl.test only (2) or bl2.test only (1): under 3
    assert_eq!(rcpt_from(&r, "127.0.0.2").0, 250);
    assert_eq!(rcpt_from(&r, "127.0.0.6").0, 250);
    // on both: 3, the reply names the first list that listed it
    let (code, text) = rcpt_from(&r, "127.0.0.5");
    assert_eq!(code, 554);
    assert!(
        text.ends_with("client [127.0.0.5] blocked using bl.test"),
        "{text}"
    );
}

#[test]
fn an_ipv6_client_is_looked_up_by_nibbles() {
    let v6 = "--host-record=1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.bl.test,127.0.0.2";
    let Some(dns) = Dnsmasq::start(
        "an_ipv6_client_is_looked_up_by_nibbles",
        &["--local=/test/", v6],
    ) else {
        return;
    };
    // ::1 is outside --relay-net 127.0.0.1/32 here
    let r = relay(&dns, &["--dnsbl", "bl.test", "--listen", "[::1]:0"]);
    let mut t = Talk::connect(r.addrs()[1]);
    t.expect(220);
    t.cmd("EHLO client.test", 250);
    t.cmd("MAIL FROM:<a@sender.test>", 250);
    assert_eq!(
        t.cmd_enh("RCPT TO:<user@example.org>", 554, "5.7.1"),
        "Service unavailable; client [::1] blocked using bl.test"
    );
}

#[test]
fn a_list_that_does_not_answer_blocks_nobody_and_costs_its_timeout() {
    // a UDP port with nobody answering: every lookup times out
    let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let dns = silent.local_addr().unwrap().to_string();
    let r = edge_relay(&[
        "--dns",
        &dns,
        "--dnsbl",
        "bl.test",
        "--dnsbl-timeout",
        "500ms",
    ]);
    let start = std::time::Instant::now();
    let mut t = Talk::connect_from("127.0.0.2", r.addr());
    t.expect(220);
    let took = start.elapsed();
    // the greeting waited for the lookup, which is bounded (a generous
    // margin for a loaded machine: this shows the bound, not its value)
    assert!(took < std::time::Duration::from_secs(5), "{took:?}");
    t.cmd("EHLO client.test", 250);
    t.cmd("MAIL FROM:<a@sender.test>", 250);
    t.cmd("RCPT TO:<user@example.org>", 250);
    assert!(
        r.log().contains("127.0.0.2 dnsbl bl.test ignored"),
        "{}",
        r.log()
    );
}
