//! Routing against a real DNS server on loopback: a private `dnsmasq`
//! serving MX and address records for `.test`, queried through `Dns` and
//! `Router` exactly as delivery does. Nothing leaves 127.0.0.1.
//!
//! dnsmasq options used (2.90):
//! - `--mx-host=DOMAIN,HOST,PREF` for MX records; `--mx-host=DOMAIN,.,0`
//!   serves a real RFC 7505 null MX (rdata `00 00 00`).
//! - `--host-record=NAME,IPv4[,IPv6]` for A/AAAA.
//! - `--txt-record=NAME,TEXT` makes a name exist with neither MX nor A.
//! - `--local=/test/`: dnsmasq answers all of `.test` itself, NXDOMAIN for
//!   unknown names, NODATA for known names without the type asked.
//!
//! Without dnsmasq the tests print SKIPPED and pass, except under CI
//! (`CI` set), where a missing dnsmasq is a failure.

mod common;

use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use common::dnsmasq::{free_port, Dnsmasq};
use smtp_relay::dns::{Dns, DnsError, Mx};
use smtp_relay::route::{Hop, RouteError, Router, StaticRoute};
use smtp_relay::smtp::{Enhanced, Host, Mailbox};

const TIMEOUT: Duration = Duration::from_secs(2);

/// The records every test shares. `relay.test` is "us" (a local name).
const RECORDS: &[&str] = &[
    "--local=/test/",
    // preference order, listed worst first on purpose
    "--mx-host=pref.test,mx-b.pref.test,20",
    "--mx-host=pref.test,mx-a.pref.test,10",
    "--host-record=mx-a.pref.test,127.0.0.11",
    "--host-record=mx-b.pref.test,127.0.0.12,2001:db8::12",
    // equal preferences
    "--mx-host=equal.test,mx1.equal.test,10",
    "--mx-host=equal.test,mx2.equal.test,10",
    "--host-record=mx1.equal.test,127.0.0.21",
    "--host-record=mx2.equal.test,127.0.0.22",
    // implicit MX: an address, no MX
    "--host-record=implicit.test,127.0.0.31",
    // null MX (RFC 7505)
    "--mx-host=nullmx.test,.,0",
    // exists, but neither MX nor address
    "--txt-record=noaddr.test,no mail here",
    // loops: best MX is us by name; us as a backup MX; us by address
    "--host-record=relay.test,127.0.0.41",
    "--mx-host=loop.test,relay.test,10",
    "--mx-host=backup.test,primary.backup.test,10",
    "--mx-host=backup.test,relay.test,20",
    "--host-record=primary.backup.test,127.0.0.51",
    "--mx-host=loopaddr.test,alias.loopaddr.test,10",
    "--host-record=alias.loopaddr.test,127.0.0.1",
    // MX hosts that do not resolve
    "--mx-host=unresolved.test,missing.unresolved.test,10",
    "--mx-host=partial.test,missing.partial.test,5",
    "--mx-host=partial.test,ok.partial.test,10",
    "--host-record=ok.partial.test,127.0.0.61",
    // a static route's host: its A record, never its MX
    "--host-record=smart.test,127.0.0.71",
    "--mx-host=smart.test,elsewhere.test,10",
    "--host-record=elsewhere.test,127.0.0.72",
];

fn host(s: &str) -> Host {
    Mailbox::parse(&format!("user@{s}"), false)
        .expect("valid test address")
        .host()
        .clone()
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn hop(name: &str, addrs: &[&str], port: u16) -> Hop {
    Hop {
        name: name.into(),
        addrs: addrs.iter().map(|a| ip(a)).collect(),
        port,
        tls: None,
        auth: None,
    }
}

/// Our identity for loop checks: name `relay.test`, listening on
/// 127.0.0.1:25 (nothing really listens; routing never connects).
fn router(server: &Dnsmasq, routes: &[&str]) -> Router {
    let dns = Dns::new(Some(server.addr), TIMEOUT).expect("resolver");
    Router::new(
        routes
            .iter()
            .map(|r| StaticRoute::parse(r).unwrap())
            .collect(),
        Some(dns),
        25,
        vec!["relay.test".into()],
        vec!["127.0.0.1:25".parse().unwrap()],
    )
}

fn assert_permanent(got: Result<Vec<Hop>, RouteError>, want_code: u16, want: Enhanced) {
    match got {
        Err(RouteError::Permanent { code, enhanced, .. }) => {
            assert_eq!((code, enhanced), (want_code, want))
        }
        other => panic!("expected {want_code} {want}, got {other:?}"),
    }
}

#[test]
fn dns_lookups_map_answers_and_errors() {
    let Some(server) = Dnsmasq::start("routing", RECORDS) else {
        return;
    };
    let dns = Dns::new(Some(server.addr), TIMEOUT).unwrap();
    assert_eq!(
        dns.mx("pref.test"),
        Ok(vec![
            Mx {
                preference: 10,
                exchange: "mx-a.pref.test".into()
            },
            Mx {
                preference: 20,
                exchange: "mx-b.pref.test".into()
            },
        ])
    );
    assert_eq!(
        dns.mx("nullmx.test"),
        Ok(vec![Mx {
            preference: 0,
            exchange: String::new()
        }])
    );
    assert_eq!(dns.mx("implicit.test"), Err(DnsError::NoRecords));
    assert_eq!(dns.mx("nosuch.test"), Err(DnsError::NxDomain));
    assert_eq!(dns.addrs("nosuch.test"), Err(DnsError::NxDomain));
    assert_eq!(dns.addrs("noaddr.test"), Err(DnsError::NoRecords));
    assert_eq!(dns.addrs("mx-a.pref.test"), Ok(vec![ip("127.0.0.11")]));
    assert_eq!(
        dns.addrs("MX-B.pref.test"),
        Ok(vec![ip("127.0.0.12"), ip("2001:db8::12")])
    );
}

#[test]
fn mx_preference_order_with_addresses() {
    let Some(server) = Dnsmasq::start("routing", RECORDS) else {
        return;
    };
    let r = router(&server, &[]);
    assert_eq!(
        r.route(&host("pref.test")),
        Ok(vec![
            hop("mx-a.pref.test", &["127.0.0.11"], 25),
            hop("mx-b.pref.test", &["127.0.0.12", "2001:db8::12"], 25),
        ])
    );
    let (text, ok) = r.explain(&host("pref.test"));
    assert!(ok, "{text}");
    for part in [
        "10 mx-a.pref.test",
        "20 mx-b.pref.test",
        "127.0.0.11",
        "decision: deliver",
    ] {
        assert!(text.contains(part), "{part:?} missing from:\n{text}");
    }
}

#[test]
fn equal_preferences_are_all_present_in_random_order() {
    let Some(server) = Dnsmasq::start("routing", RECORDS) else {
        return;
    };
    let r = router(&server, &[]);
    let mut firsts = std::collections::BTreeSet::new();
    for _ in 0..40 {
        let hops = r.route(&host("equal.test")).unwrap();
        let mut names: Vec<&str> = hops.iter().map(|h| h.name.as_str()).collect();
        firsts.insert(names[0].to_string());
        names.sort();
        assert_eq!(names, ["mx1.equal.test", "mx2.equal.test"]);
    }
    // 40 fair coin flips all landing the same way: 2^-39.
    assert_eq!(firsts.len(), 2, "equal MXs were never shuffled");
}

#[test]
fn implicit_mx_null_mx_and_nxdomain() {
    let Some(server) = Dnsmasq::start("routing", RECORDS) else {
        return;
    };
    let r = router(&server, &[]);
    // RFC 5321 §5.1: no MX → the domain's own address, preference 0.
    assert_eq!(
        r.route(&host("implicit.test")),
        Ok(vec![hop("implicit.test", &["127.0.0.31"], 25)])
    );
    let (text, _) = r.explain(&host("implicit.test"));
    assert!(text.contains("implicit MX"), "{text}");
    // RFC 7505: null MX.
    assert_permanent(r.route(&host("nullmx.test")), 556, Enhanced::new(5, 1, 10));
    let (text, ok) = r.explain(&host("nullmx.test"));
    assert!(!ok && text.contains("null MX"), "{text}");
    // NXDOMAIN: bad destination system address.
    assert_permanent(r.route(&host("nosuch.test")), 550, Enhanced::new(5, 1, 2));
    // Exists, but no MX and no address: unable to route.
    assert_permanent(r.route(&host("noaddr.test")), 550, Enhanced::new(5, 4, 4));
}

#[test]
fn loops_back_to_ourselves() {
    let Some(server) = Dnsmasq::start("routing", RECORDS) else {
        return;
    };
    let r = router(&server, &[]);
    // The best MX is a name in local_names.
    assert_permanent(r.route(&host("loop.test")), 554, Enhanced::new(5, 4, 6));
    let (text, ok) = r.explain(&host("loop.test"));
    assert!(!ok && text.contains("loops back to myself"), "{text}");
    // The best MX resolves to our listen address (and smtp_port).
    assert_permanent(r.route(&host("loopaddr.test")), 554, Enhanced::new(5, 4, 6));
    // We are a backup MX: only the better MX remains.
    assert_eq!(
        r.route(&host("backup.test")),
        Ok(vec![hop("primary.backup.test", &["127.0.0.51"], 25)])
    );
    // A static route pointing at our listener.
    let r = router(&server, &["looped.test=[127.0.0.1]:25"]);
    assert_permanent(r.route(&host("looped.test")), 554, Enhanced::new(5, 4, 6));
}

#[test]
fn unresolvable_mx_hosts() {
    let Some(server) = Dnsmasq::start("routing", RECORDS) else {
        return;
    };
    let r = router(&server, &[]);
    // The preferred MX host has no address: skipped.
    assert_eq!(
        r.route(&host("partial.test")),
        Ok(vec![hop("ok.partial.test", &["127.0.0.61"], 25)])
    );
    // None has one: defer, do not bounce.
    match r.route(&host("unresolved.test")) {
        Err(RouteError::Temporary(why)) => {
            assert!(why.contains("missing.unresolved.test"), "{why}")
        }
        other => panic!("expected Temporary, got {other:?}"),
    }
}

#[test]
fn static_routes_use_the_host_address_not_its_mx() {
    let Some(server) = Dnsmasq::start("routing", RECORDS) else {
        return;
    };
    let r = router(
        &server,
        &[".routed.test=smart.test:2526", "exact.test=[192.0.2.7]"],
    );
    assert_eq!(
        r.route(&host("a.routed.test")),
        Ok(vec![hop("smart.test", &["127.0.0.71"], 2526)])
    );
    assert_eq!(
        r.route(&host("exact.test")),
        Ok(vec![hop("[192.0.2.7]", &["192.0.2.7"], 25)])
    );
    // `.routed.test` does not cover routed.test itself: DNS says NXDOMAIN.
    assert_permanent(r.route(&host("routed.test")), 550, Enhanced::new(5, 1, 2));
    // A route host that does not resolve defers.
    let r = router(&server, &["*=gone.test"]);
    assert!(matches!(
        r.route(&host("pref.test")),
        Err(RouteError::Temporary(_))
    ));
    let (text, ok) = r.explain(&host("pref.test"));
    assert!(!ok && text.contains("'*' matches"), "{text}");
}

#[test]
fn shared_between_threads() {
    let Some(server) = Dnsmasq::start("routing", RECORDS) else {
        return;
    };
    let r = Arc::new(router(&server, &[]));
    let workers: Vec<_> = (0..8)
        .map(|i| {
            let r = Arc::clone(&r);
            thread::spawn(move || {
                for _ in 0..10 {
                    let d = if i % 2 == 0 {
                        "pref.test"
                    } else {
                        "implicit.test"
                    };
                    assert!(r.route(&host(d)).is_ok(), "{d}");
                }
            })
        })
        .collect();
    for w in workers {
        w.join().expect("routing thread");
    }
}

#[test]
fn dead_dns_server_is_temporary_within_the_timeout() {
    // Nothing listens on this port: ICMP port unreachable / TCP refused.
    let port = free_port();
    let dns = Dns::new(Some(SocketAddr::from(([127, 0, 0, 1], port))), TIMEOUT).unwrap();
    let started = Instant::now();
    let got = dns.mx("example.test");
    assert!(matches!(got, Err(DnsError::Temporary(_))), "{got:?}");
    assert!(started.elapsed() < TIMEOUT + Duration::from_secs(1));

    // A server that swallows queries: the caller's timeout ends the wait.
    let hole = UdpSocket::bind("127.0.0.1:0").unwrap();
    let dns = Dns::new(Some(hole.local_addr().unwrap()), TIMEOUT).unwrap();
    let r = Router::new(vec![], Some(dns), 25, vec![], vec![]);
    let started = Instant::now();
    match r.route(&host("example.test")) {
        Err(RouteError::Temporary(why)) => assert!(why.contains("example.test"), "{why}"),
        other => panic!("expected Temporary, got {other:?}"),
    }
    let took = started.elapsed();
    assert!(took < TIMEOUT + Duration::from_secs(1), "took {took:?}");
}
