//! SMTP TLS reporting (RFC 8460) end to end: dnsmasq serves the MX,
//! `_smtp._tls` and `_mta-sts` records, nginx an MTA-STS policy, the MX
//! hosts and the reports' destination are receive-only smtp-relays on
//! 127.0.41.x (one port, the sender's `--smtp-port`). The sender runs
//! with `--tls-report-period 8` (documented as for tests) so a "day" is
//! eight seconds; a test collects every report that arrives for a domain
//! (a few deliveries may straddle two periods) and sums them.
//!
//! Reports are parsed for real: python3's `email` package takes the
//! message apart, `base64` and `gzip` decode the `application/tlsrpt+gzip`
//! part, and serde_json reads the JSON.
//!
//! Without nginx, dnsmasq, openssl or python3: SKIPPED outside CI, a
//! failure in CI (scripts/ci-deps.sh installs them).

mod common;
mod tlsutil;

use std::collections::BTreeMap;
use std::net::TcpListener;
use std::time::Duration;

use common::dnsmasq::Dnsmasq;
use common::nginx::Nginx;
use common::tlsrpt::reports;
use common::*;
use serde_json::Value;
use tlsutil::*;

const PERIOD: u64 = 8;
/// Time for every report to come: two periods, their delay and delivery.
const REPORTS_LIMIT: Duration = Duration::from_secs(4 * PERIOD + 30);

fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

fn rpt(domain: &str, rua: &str) -> String {
    format!("--txt-record=_smtp._tls.{domain},v=TLSRPTv1; rua={rua}")
}

fn mx(domain: &str, host: u8) -> Vec<String> {
    vec![
        format!("--mx-host={domain},mx1.{domain},10"),
        format!("--host-record=mx1.{domain},127.0.41.{host}"),
    ]
}

/// The zone: `good.test` (TLS MX, reports asked), `plain.test` (MX
/// without STARTTLS, reports asked), `sts.test` (an MTA-STS `testing`
/// policy its MX is not in, reports asked), `stsfail.test` (an MTA-STS
/// policy host with a certificate for another name), `none.test` (no record),
/// `badrua.test` (a record whose address is not one), `https.test` (an
/// https: URI only), `rua.test` (the reports' destination, which asks
/// for reports too: its own must never come, §5.3).
fn records() -> Vec<String> {
    let rua = "mailto:reports@rua.test";
    let mut r = vec!["--local=/test/".to_string()];
    r.extend(mx("good.test", 1));
    r.push(rpt("good.test", rua));
    r.extend(mx("plain.test", 2));
    r.push(rpt("plain.test", rua));
    r.extend(mx("sts.test", 3));
    r.push(rpt("sts.test", rua));
    r.push("--txt-record=_mta-sts.sts.test,v=STSv1; id=1;".into());
    r.push("--host-record=mta-sts.sts.test,127.0.0.1".into());
    // its policy host is nginx, whose certificate does not name it
    r.extend(mx("stsfail.test", 5));
    r.push(rpt("stsfail.test", rua));
    r.push("--txt-record=_mta-sts.stsfail.test,v=STSv1; id=1;".into());
    r.push("--host-record=mta-sts.stsfail.test,127.0.0.1".into());
    r.extend(mx("none.test", 1));
    r.extend(mx("badrua.test", 1));
    r.push(rpt("badrua.test", "mailto:not an address"));
    r.extend(mx("https.test", 4));
    r.push(rpt("https.test", "https://reports.https.test/v1"));
    r.extend(mx("rua.test", 9));
    r.push(rpt("rua.test", rua));
    r.push("--host-record=origin.test,127.0.0.9".into());
    r
}

struct World {
    certs: Certs,
    _nginx: Nginx,
    dns: Dnsmasq,
    dir: TempDir,
    mx_port: u16,
}

impl World {
    fn new(test: &str) -> Option<World> {
        let san = "DNS:mta-sts.sts.test,IP:127.0.0.1";
        let certs = Certs::make_for(test, san)?;
        require_tool("python3", test)?;
        let dir = TempDir::new("tlsrpt");
        let nginx = Nginx::start(test, dir.path(), &certs.cert, &certs.key)?;
        nginx.set_policy(
            "version: STSv1\r\nmode: testing\r\nmx: mx.elsewhere.test\r\nmax_age: 86400\r\n",
        );
        let dns = Dnsmasq::start(test, &strs(&records()))?;
        let l = TcpListener::bind("127.0.41.1:0").expect("bind an MX address");
        let mx_port = l.local_addr().expect("addr").port();
        drop(l);
        Some(World {
            certs,
            _nginx: nginx,
            dns,
            dir,
            mx_port,
        })
    }

    /// A receive-only relay on 127.0.41.`host`, with STARTTLS or without.
    fn mx(&self, host: u8, tls: bool) -> Relay {
        let mut args = if tls { self.certs.relay_args() } else { vec![] };
        args.push("--listen".into());
        args.push(format!("127.0.41.{host}:{}", self.mx_port));
        Relay::receive_only(&strs(&args))
    }

    fn sender(&self) -> Relay {
        let port = self.mx_port.to_string();
        let dns = self.dns.addr.to_string();
        let ca = self.certs.ca.display().to_string();
        let https = self._nginx.port.to_string();
        let period = PERIOD.to_string();
        let args = [
            "--dns",
            &dns,
            "--smtp-port",
            &port,
            "--mta-sts",
            "--mta-sts-port",
            &https,
            "--ca-file",
            &ca,
            "--retry-min",
            "1s",
            "--retry-max",
            "1s",
            "--tls-reports",
            "--tls-report-org",
            "Test Org",
            "--tls-report-from",
            "tlsrpt@relay.test",
            "--tls-report-contact",
            "mailto:postmaster@relay.test",
            "--tls-report-period",
            &period,
            "-v",
        ];
        Relay::start_with_spool(self.dir.path().join("sender-spool"), &args)
    }
}

impl World {
    /// `smtp-relay route ADDRESS --tls-reports` on a spool of its own.
    fn route(&self, address: &str) -> CliRun {
        let spool = self.dir.path().join("route-spool").display().to_string();
        let dns = self.dns.addr.to_string();
        let port = self.mx_port.to_string();
        let args = [
            "route",
            "--spool",
            &spool,
            "--dns",
            &dns,
            "--smtp-port",
            &port,
            "--tls-reports",
            address,
        ];
        run_cli(&args, LIMIT)
    }
}

/// The policies of every report for `domain`, checked one by one
/// (headers, file name, fields) and summed: (policy-type, its first
/// policy-string line) → (successes, failures, failure-details).
type Sums = BTreeMap<(String, String), (u64, u64, Vec<Value>)>;

fn sum_for(all: &[Value], domain: &str) -> Sums {
    let mut sums = Sums::new();
    for m in all
        .iter()
        .filter(|m| m["headers"]["TLS-Report-Domain"] == domain)
    {
        check_message(m, domain);
        for p in m["report"]["policies"].as_array().expect("policies") {
            let pol = &p["policy"];
            assert_eq!(pol["policy-domain"], domain, "{p}");
            let first = pol["policy-string"][0].as_str().unwrap_or("").to_string();
            let kind = pol["policy-type"]
                .as_str()
                .expect("policy-type")
                .to_string();
            let e = sums.entry((kind, first.clone())).or_default();
            e.0 += p["summary"]["total-successful-session-count"]
                .as_u64()
                .expect("successes");
            e.1 += p["summary"]["total-failure-session-count"]
                .as_u64()
                .expect("failures");
            e.2.extend(p["failure-details"].as_array().expect("details").clone());
            // the testing policy of sts.test (not stsfail.test's, never fetched)
            if pol["policy-type"] == "sts" && !first.is_empty() {
                assert_eq!(pol["mx-host"], serde_json::json!(["mx.elsewhere.test"]));
                let lines = pol["policy-string"].as_array().expect("policy-string");
                assert!(lines.iter().any(|l| l == "mode: testing"), "{pol}");
            }
        }
    }
    sums
}

/// RFC 8460 §4.4 fields, §5.3 headers, §5.1 file name of one report.
fn check_message(m: &Value, domain: &str) {
    let h = &m["headers"];
    let r = &m["report"];
    assert_eq!(m["content_type"], "multipart/report", "{m}");
    assert_eq!(m["report_type"], "tlsrpt", "{m}");
    assert_eq!(h["TLS-Report-Submitter"], "Test Org");
    let id = r["report-id"].as_str().expect("report-id");
    let subject = format!("Report Domain: {domain} Submitter: Test Org Report-ID: <{id}>");
    assert_eq!(h["Subject"], subject.as_str());
    assert_eq!(r["organization-name"], "Test Org");
    assert_eq!(r["contact-info"], "mailto:postmaster@relay.test");
    let start = r["date-range"]["start-datetime"].as_str().expect("start");
    let end = r["date-range"]["end-datetime"].as_str().expect("end");
    assert!(
        start.ends_with('Z') && end.ends_with('Z') && start < end,
        "{r}"
    );
    let file = m["filename"].as_str().expect("a tlsrpt+gzip part");
    let parts: Vec<&str> = file.trim_end_matches(".json.gz").split('!').collect();
    assert_eq!(parts[..2], ["relay.test", domain], "{file}");
    let (b, e): (u64, u64) = (parts[2].parse().unwrap(), parts[3].parse().unwrap());
    assert_eq!(e - b + 1, PERIOD, "{file}");
}

#[test]
fn reports_count_sessions_across_a_restart() {
    let test = "reports_count_sessions_across_a_restart";
    let Some(w) = World::new(test) else {
        return;
    };
    let _good = w.mx(1, true);
    let _plain = w.mx(2, false);
    let _sts = w.mx(3, true);
    // its own address: a connection cached from another domain's
    // delivery is not a new TLS session, and would not be counted
    let _https = w.mx(4, true);
    let _stsfail = w.mx(5, true);
    let rua = w.mx(9, false);
    let mut relay = w.sender();
    for rcpt in [
        "a@good.test",
        "b@plain.test",
        "c@sts.test",
        "h@stsfail.test",
        "d@none.test",
        "e@badrua.test",
        "f@https.test",
    ] {
        let id = send_one(&relay, rcpt);
        wait_sent(&relay, &id, LIMIT);
    }
    // a clean restart at once: the counts are in the spool, not lost
    relay.restart_clean();
    let id = send_one(&relay, "g@good.test");
    wait_sent(&relay, &id, LIMIT);

    let mut all = Vec::new();
    let complete = wait_until(REPORTS_LIMIT, || {
        all = reports(&rua);
        let good = sum_for(&all, "good.test");
        let total = |s: &Sums| s.values().map(|v| v.0 + v.1).sum::<u64>();
        total(&good) >= 2
            && total(&sum_for(&all, "plain.test")) >= 1
            && total(&sum_for(&all, "sts.test")) >= 1
            && total(&sum_for(&all, "stsfail.test")) >= 1
    });
    assert!(complete, "reports missing: {all:#?}\n{}", relay.log());

    // good.test: two new TLS sessions (one each side of the restart)
    let no_policy = ("no-policy-found".to_string(), String::new());
    let good = sum_for(&all, "good.test");
    assert_eq!(good.len(), 1, "{good:?}");
    assert_eq!((good[&no_policy].0, good[&no_policy].1), (2, 0));

    // plain.test: no STARTTLS
    let plain = sum_for(&all, "plain.test");
    let (ok, failed, details) = &plain[&no_policy];
    assert_eq!((*ok, *failed), (0, 1));
    assert_eq!(details.len(), 1, "{details:?}");
    let d = &details[0];
    assert_eq!(d["result-type"], "starttls-not-supported");
    assert_eq!(d["receiving-ip"], "127.0.41.2");
    assert_eq!(d["receiving-mx-hostname"], "mx1.plain.test");
    assert_eq!(d["failed-session-count"], 1);
    let sending = d["sending-mta-ip"].as_str().expect("sending-mta-ip");
    assert!(sending.parse::<std::net::IpAddr>().is_ok(), "{d}");

    // sts.test: the MX is not in the testing policy: delivered, reported
    let sts = sum_for(&all, "sts.test");
    let key = ("sts".to_string(), "version: STSv1".to_string());
    let (ok, failed, details) = &sts[&key];
    assert_eq!((*ok, *failed), (0, 1), "{sts:?}");
    assert_eq!(details[0]["result-type"], "validation-failure");
    assert_eq!(details[0]["receiving-mx-hostname"], "mx1.sts.test");
    assert_eq!(details[0]["receiving-ip"], "127.0.41.3");

    // stsfail.test: the policy fetch failed on the certificate (§4.3.2.2)
    let stsfail = sum_for(&all, "stsfail.test");
    let key = ("sts".to_string(), String::new());
    let (ok, failed, details) = &stsfail[&key];
    assert_eq!((*ok, *failed), (0, 1), "{stsfail:?}");
    assert_eq!(details[0]["result-type"], "sts-webpki-invalid");
    assert_eq!(details[0]["receiving-mx-hostname"], "mx1.stsfail.test");

    // `route` shows where a domain's reports go, or why nowhere
    for (rcpt, says) in [
        ("u@good.test", "tls reports: mailto:reports@rua.test"),
        ("u@none.test", "tls reports: none (no _smtp._tls record)"),
        (
            "u@badrua.test",
            "tls reports: none (rua \"mailto:not an address\": not a mail address",
        ),
        (
            "u@https.test",
            "tls reports: https://reports.https.test/v1 (not supported)",
        ),
    ] {
        let run = w.route(rcpt);
        assert_eq!(run.code, Some(0), "{run:?}");
        assert!(run.stdout.contains(says), "{rcpt}: {}", run.stdout);
    }

    // no record, a bad record, an https: URI only: no report, no crash
    for d in ["none.test", "badrua.test", "https.test"] {
        assert!(sum_for(&all, d).is_empty(), "a report for {d}");
    }
    let dropped = wait_until(LIMIT, || {
        let log = relay.log();
        log.contains("tls-report https.test: rua https://reports.https.test/v1 skipped")
            && log.contains("tls-report https.test: report dropped: no mailto: rua")
    });
    assert!(dropped, "{}", relay.log());
    assert!(relay.exited().is_none(), "the relay died");
    // the reports' own deliveries to rua.test are never counted (§5.3):
    // wait past the period they fell in, and its report's time
    std::thread::sleep(Duration::from_secs(2 * PERIOD + 3));
    let all = reports(&rua);
    assert!(sum_for(&all, "rua.test").is_empty(), "{all:#?}");
    assert!(
        !w.dir.path().join("sender-spool/tlsrpt").exists()
            || count_files(&w.dir.path().join("sender-spool/tlsrpt")) == 0,
        "counts left behind"
    );
}

fn count_files(dir: &std::path::Path) -> usize {
    std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .map(|e| {
                    if e.path().is_dir() {
                        count_files(&e.path())
                    } else {
                        1
                    }
                })
                .sum()
        })
        .unwrap_or(0)
}
