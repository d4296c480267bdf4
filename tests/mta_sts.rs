//! MTA-STS (RFC 8461) end to end with real peers from Debian's packages:
//! nginx serves the policy over HTTPS with a certificate from a test CA,
//! dnsmasq serves the `_mta-sts` TXT, MX and A records, and the MX hosts
//! are receive-only smtp-relays speaking STARTTLS with certificates from
//! that CA (or, for a bad certificate, from another CA).
//!
//! The policy URL has no port (§3.3); the relay's `--mta-sts-port`
//! (documented as for tests) points it at nginx's free port on
//! 127.0.0.1, so the tests need no root and no port 443. Each test has
//! its own domain and its own 127.0.N.0/24 for MX hosts, which share one
//! port, the relay's `--smtp-port`.
//!
//! Without nginx, dnsmasq or openssl: SKIPPED outside CI, a failure in
//! CI (scripts/ci-deps.sh installs them).

mod common;
mod tlsutil;

use std::net::TcpListener;

use common::dnsmasq::Dnsmasq;
use common::nginx::Nginx;
use common::*;
use tlsutil::*;

fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

fn policy(mode: &str, mx: &str) -> String {
    format!("version: STSv1\r\nmode: {mode}\r\nmx: {mx}\r\nmax_age: 86400\r\n")
}

/// The zone of `domain`: its `_mta-sts` TXT with `id`, one MX `mx` at
/// `mx_ip`, and `mta-sts.DOMAIN` on 127.0.0.1 (nginx).
fn zone(domain: &str, id: &str, mx: &str, mx_ip: &str) -> Vec<String> {
    vec![
        "--local=/test/".into(),
        format!("--txt-record=_mta-sts.{domain},v=STSv1; id={id};"),
        format!("--mx-host={domain},{mx},10"),
        format!("--host-record={mx},{mx_ip}"),
        format!("--host-record=mta-sts.{domain},127.0.0.1"),
        // the senders' domain: no MX, no address: DSNs stay queued
        "--host-record=origin.test,127.0.0.9".into(),
    ]
}

/// Everything one test needs: the certificates (one CA: nginx and the
/// good MX hosts; `bad` from another CA), nginx, dnsmasq, and the shared
/// MX port.
struct World {
    certs: Certs,
    bad: Certs,
    nginx: Nginx,
    dns: Dnsmasq,
    dir: TempDir,
    mx_port: u16,
    net: u8,
}

impl World {
    fn new(test: &str, domain: &str, net: u8, records: &[String]) -> Option<World> {
        let san = format!(
            "DNS:mta-sts.{domain},DNS:mx1.{domain},DNS:mx2.{domain},DNS:relay.test,IP:127.0.0.1"
        );
        let certs = Certs::make_for(test, &san)?;
        let bad = Certs::make(test)?;
        let dir = TempDir::new("mta-sts");
        let nginx = Nginx::start(test, dir.path(), &certs.cert, &certs.key)?;
        let dns = Dnsmasq::start(test, &strs(records))?;
        // one port free on this test's MX addresses
        let l = TcpListener::bind(format!("127.0.{net}.1:0")).expect("bind an MX address");
        let mx_port = l.local_addr().expect("addr").port();
        drop(l);
        Some(World {
            certs,
            bad,
            nginx,
            dns,
            dir,
            mx_port,
            net,
        })
    }

    /// A receive-only relay as MX host on 127.0.NET.`host` with `certs`.
    fn mx(&self, host: u8, certs: &Certs) -> Relay {
        let mut args = certs.relay_args();
        args.push("--listen".into());
        args.push(format!("127.0.{}.{host}:{}", self.net, self.mx_port));
        Relay::receive_only(&strs(&args))
    }

    fn relay_args(&self) -> Vec<String> {
        [
            "--dns",
            &self.dns.addr.to_string(),
            "--smtp-port",
            &self.mx_port.to_string(),
            "--mta-sts",
            "--mta-sts-port",
            &self.nginx.port.to_string(),
            "--ca-file",
            &self.certs.ca.display().to_string(),
            "--retry-min",
            "1s",
            "--retry-max",
            "1s",
            "--delivery-timeout",
            "10s",
            "-v",
        ]
        .map(String::from)
        .to_vec()
    }

    /// The sending relay, on a spool of its own in the test's directory
    /// (kept across `restart`).
    fn sender(&self) -> Relay {
        let spool = self.dir.path().join("sender-spool");
        Relay::start_with_spool(spool, &strs(&self.relay_args()))
    }

    fn mx_ip(&self, host: u8) -> String {
        format!("127.0.{}.{host}", self.net)
    }
}

fn send(relay: &Relay, rcpt: &str, headers: &str) -> String {
    let mut t = relay.session();
    let id = t.send_mail(
        "s@origin.test",
        &[rcpt],
        format!("{headers}Subject: to {rcpt}\r\n\r\nhello\r\n").as_bytes(),
    );
    t.cmd("QUIT", 221);
    id
}

/// Waits for `id`'s `status=sent` line; returns it.
fn sent_line(relay: &Relay, id: &str) -> String {
    let mut line = None;
    let ok = wait_until(LIMIT, || {
        line = relay
            .log()
            .lines()
            .find(|l| l.contains(id) && l.contains("status=sent"))
            .map(str::to_string);
        line.is_some()
    });
    assert!(ok, "{id} not sent:\n{}", relay.log());
    line.unwrap_or_default()
}

fn delivered_to(mx: &Relay) -> bool {
    wait_until(LIMIT, || !queued_ids(mx.spool()).is_empty())
}

#[test]
fn enforce_with_a_matching_mx_delivers_over_verified_tls() {
    let test = "enforce_with_a_matching_mx_delivers_over_verified_tls";
    let d = "enf.test";
    let Some(w) = World::new(test, d, 31, &zone(d, "1", "mx1.enf.test", "127.0.31.1")) else {
        return;
    };
    w.nginx.set_policy(&policy("enforce", "*.enf.test"));
    let mx = w.mx(1, &w.certs);
    let relay = w.sender();
    let id = send(&relay, "user@enf.test", "");
    sent_line(&relay, &id);
    assert!(delivered_to(&mx));
    let log = relay.log();
    assert!(
        log.lines().any(
            |l| l.contains(&format!("{id} relay=mx1.enf.test[127.0.31.1]"))
                && l.contains(" tls=TLSv1.")
        ),
        "not over TLS:\n{log}"
    );
    assert!(
        log.contains("mta-sts enf.test: policy id=1 mode=enforce max_age=86400 fetched"),
        "{log}"
    );
    // `route` names the policy source it would apply
    let spool = w.dir.path().join("sender-spool").display().to_string();
    let dns = w.dns.addr.to_string();
    let (port, https) = (w.mx_port.to_string(), w.nginx.port.to_string());
    let ca = w.certs.ca.display().to_string();
    let route_args = [
        "route",
        "--spool",
        &spool,
        "--dns",
        &dns,
        "--smtp-port",
        &port,
        "--mta-sts",
        "--mta-sts-port",
        &https,
        "--ca-file",
        &ca,
        "user@enf.test",
    ];
    let run = run_cli(&route_args, LIMIT);
    assert_eq!(run.code, Some(0), "{run:?}");
    assert!(
        run.stdout
            .contains("tls policy: MTA-STS mode=enforce id=1 mx=*.enf.test"),
        "{}",
        run.stdout
    );
}

#[test]
fn enforce_defers_a_non_matching_mx() {
    let test = "enforce_defers_a_non_matching_mx";
    let d = "nomatch.test";
    let records = zone(d, "1", "mx1.nomatch.test", "127.0.32.1");
    let Some(w) = World::new(test, d, 32, &records) else {
        return;
    };
    w.nginx.set_policy(&policy("enforce", "mx.elsewhere.test"));
    let mx = w.mx(1, &w.certs);
    let relay = w.sender();
    let id = send(&relay, "user@nomatch.test", "");
    let reply = wait_rcpt_state(&relay, &id, "deferred", LIMIT).2;
    assert!(
        reply.contains("4.7.5") && reply.contains("not in the policy"),
        "{reply}"
    );
    assert!(queued_ids(mx.spool()).is_empty(), "delivered anyway");
}

#[test]
fn enforce_defers_a_bad_certificate_unless_tls_required_no() {
    let test = "enforce_defers_a_bad_certificate_unless_tls_required_no";
    let d = "badcert.test";
    let records = zone(d, "1", "mx1.badcert.test", "127.0.33.1");
    let Some(w) = World::new(test, d, 33, &records) else {
        return;
    };
    w.nginx.set_policy(&policy("enforce", "mx1.badcert.test"));
    // the MX's certificate comes from another CA
    let mx = w.mx(1, &w.bad);
    let relay = w.sender();
    let id = send(&relay, "user@badcert.test", "");
    let reply = wait_rcpt_state(&relay, &id, "deferred", LIMIT).2;
    assert!(
        reply.contains("4.7.5") && reply.contains("MTA-STS"),
        "{reply}"
    );
    assert!(queued_ids(mx.spool()).is_empty(), "delivered anyway");
    // RFC 8689 §4.1: TLS-Required: No asks to ignore the policy failure
    let id = send(&relay, "user@badcert.test", "TLS-Required: No\r\n");
    sent_line(&relay, &id);
    assert!(delivered_to(&mx));
}

#[test]
fn testing_mode_delivers_and_logs() {
    let test = "testing_mode_delivers_and_logs";
    let d = "tst.test";
    let records = zone(d, "1", "mx1.tst.test", "127.0.34.1");
    let Some(w) = World::new(test, d, 34, &records) else {
        return;
    };
    w.nginx.set_policy(&policy("testing", "mx.elsewhere.test"));
    let mx = w.mx(1, &w.bad);
    let relay = w.sender();
    let id = send(&relay, "user@tst.test", "");
    sent_line(&relay, &id);
    assert!(delivered_to(&mx));
    let log = relay.log();
    assert!(
        log.lines().any(|l| l.contains(&id)
            && l.contains("MX mx1.tst.test is not in the policy")
            && l.contains("mode=testing")),
        "{log}"
    );
    // and that its certificate (another CA's) would not pass
    assert!(
        log.lines().any(|l| l.contains(&id)
            && l.contains("tls-policy MTA-STS mode=testing")
            && l.contains("certificate")
            && l.contains("delivering anyway")),
        "{log}"
    );
}

#[test]
fn a_new_id_refetches_the_policy() {
    let test = "a_new_id_refetches_the_policy";
    let d = "chg.test";
    let Some(mut w) = World::new(test, d, 35, &zone(d, "1", "mx1.chg.test", "127.0.35.1")) else {
        return;
    };
    w.nginx.set_policy(&policy("enforce", "mx.elsewhere.test"));
    let mx = w.mx(1, &w.certs);
    let relay = w.sender();
    let id = send(&relay, "user@chg.test", "");
    wait_rcpt_state(&relay, &id, "deferred", LIMIT);
    // the domain fixes its policy and says so with a new id
    w.nginx.set_policy(&policy("enforce", "*.chg.test"));
    w.dns
        .restart(&strs(&zone(d, "2", "mx1.chg.test", "127.0.35.1")));
    sent_line(&relay, &id);
    assert!(delivered_to(&mx));
    let log = relay.log();
    assert!(
        log.contains("mta-sts chg.test: policy id=1 mode=enforce"),
        "{log}"
    );
    assert!(
        log.contains("mta-sts chg.test: policy id=2 mode=enforce"),
        "{log}"
    );
}

/// A policy cached from nginx, then nginx gone and the TXT id changed
/// (a refetch is due and fails) and the MX moved to a host the cached
/// policy does not list: the cached policy still applies, so the mail
/// is deferred rather than sent to an unlisted host.
fn cached_policy_world(test: &str, d: &str, net: u8) -> Option<(World, Relay, Relay)> {
    let mx1 = format!("mx1.{d}");
    let mut w = World::new(test, d, net, &zone(d, "1", &mx1, &format!("127.0.{net}.1")))?;
    w.nginx.set_policy(&policy("enforce", &mx1));
    let mx = w.mx(1, &w.certs);
    let relay = w.sender();
    let id = send(&relay, &format!("user@{d}"), "");
    sent_line(&relay, &id);
    assert!(delivered_to(&mx));
    w.nginx.stop();
    let mx2 = format!("mx2.{d}");
    w.dns.restart(&strs(&zone(d, "2", &mx2, &w.mx_ip(2))));
    Some((w, relay, mx))
}

#[test]
fn a_failed_fetch_keeps_the_cached_policy() {
    let test = "a_failed_fetch_keeps_the_cached_policy";
    let Some((w, relay, _mx)) = cached_policy_world(test, "cache.test", 36) else {
        return;
    };
    let mx2 = w.mx(2, &w.certs);
    let id = send(&relay, "user@cache.test", "");
    let reply = wait_rcpt_state(&relay, &id, "deferred", LIMIT).2;
    assert!(
        reply.contains("MX mx2.cache.test is not in the policy"),
        "{reply}"
    );
    assert!(
        relay
            .log()
            .contains("the cached policy id=1 stays in force"),
        "{}",
        relay.log()
    );
    assert!(queued_ids(mx2.spool()).is_empty());
}

#[test]
fn a_restart_keeps_the_cached_policy() {
    let test = "a_restart_keeps_the_cached_policy";
    let Some((w, mut relay, _mx)) = cached_policy_world(test, "restart.test", 37) else {
        return;
    };
    let mx2 = w.mx(2, &w.certs);
    relay.restart();
    let id = send(&relay, "user@restart.test", "");
    let reply = wait_rcpt_state(&relay, &id, "deferred", LIMIT).2;
    assert!(reply.contains("not in the policy"), "{reply}");
    assert!(queued_ids(mx2.spool()).is_empty());
    assert!(w
        .dir
        .path()
        .join("sender-spool/mta-sts/restart.test")
        .is_file());
}

/// REQUIRETLS (RFC 8689 §4.2.1) with MTA-STS: a `testing` policy counts
/// as `enforce`, so the listed MX gets the message over verified TLS
/// with REQUIRETLS passed on; a domain without a policy has MX names
/// nothing authenticates: bounced with 5.7.30, never sent.
#[test]
fn requiretls_follows_the_mta_sts_policy() {
    let test = "requiretls_follows_the_mta_sts_policy";
    let d = "rtls.test";
    let mut records = zone(d, "1", "mx1.rtls.test", "127.0.38.1");
    records.push("--mx-host=nopolicy.test,mx2.rtls.test,10".into());
    records.push("--host-record=mx2.rtls.test,127.0.38.1".into());
    let Some(w) = World::new(test, d, 38, &records) else {
        return;
    };
    w.nginx.set_policy(&policy("testing", "mx1.rtls.test"));
    let mx = w.mx(1, &w.certs);
    let mut args = w.relay_args();
    args.extend(w.certs.relay_args());
    let relay = Relay::start(&strs(&args));
    let mut ids = Vec::new();
    for rcpt in ["user@rtls.test", "user@nopolicy.test"] {
        let (mut s, _) = Smtp::greet(relay.addr());
        s.cmd("EHLO client.test", 250);
        s.starttls(&w.certs);
        s.cmd("MAIL FROM:<s@origin.test> REQUIRETLS", 250);
        s.cmd(&format!("RCPT TO:<{rcpt}>"), 250);
        s.cmd("DATA", 354);
        s.send_raw(b"Subject: secret\r\n\r\nsecret\r\n.\r\n");
        let text = s.expect(250);
        ids.push(queued_id(&text).expect("queue id"));
    }
    sent_line(&relay, &ids[0]);
    assert!(delivered_to(&mx));
    let got = queued_ids(mx.spool());
    assert_eq!(got.len(), 1, "{got:?}");
    assert!(read_env(mx.spool(), &got[0]).contains("\nrequiretls: yes\n"));
    let bounced = wait_until(LIMIT, || {
        relay.log().lines().any(|l| {
            l.contains(&format!("{} to=user@nopolicy.test", ids[1]))
                && l.contains("status=bounced (550 5.7.30")
                && l.contains("not authenticated")
        })
    });
    assert!(bounced, "{}", relay.log());
}
