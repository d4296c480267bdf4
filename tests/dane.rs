//! DANE (RFC 7672) end to end with a real authoritative server: Knot DNS
//! (Debian's `knot`) serves on loopback a `test.` zone signed offline by
//! `ldns-signzone` (Debian's `ldnsutils`), whose key is the relay's
//! `--dnssec-trust-anchor`; below it an unsigned delegation
//! (`plain.test`, insecure: no DS, proved by NSEC) and a signed one whose
//! signatures have expired (`bogus.test`). The MX hosts are receive-only
//! smtp-relays with STARTTLS; each test has its own Knot, zone, key and
//! 127.0.N.0/24, and the MX port is the relay's `--smtp-port`, so the
//! TLSA records sit at `_PORT._tcp.MX`.
//!
//! Without knot, ldns-signzone or openssl: SKIPPED outside CI, a failure
//! in CI (scripts/ci-deps.sh installs them).

mod common;
mod tlsutil;

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::*;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use tlsutil::*;

fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

/// knotd on 127.0.0.1:`port` serving the zone files of `dir`, killed on
/// drop.
struct Knot {
    child: Child,
    addr: SocketAddr,
    dir: PathBuf,
}

impl Knot {
    /// `zones`: (origin, file name in `dir`).
    fn start(test: &str, dir: &Path, zones: &[(&str, &str)]) -> Option<Knot> {
        let bin = require_tool("knotd", test)?;
        // a port can be taken between free_port() and knotd's bind: retry
        let mut last = String::new();
        for _ in 0..5 {
            match Knot::spawn(&bin, dir, zones) {
                Ok(knot) => return Some(knot),
                Err(log) if log.contains("address already in use") => last = log,
                Err(log) => panic!("knotd did not start:\n{log}"),
            }
        }
        panic!("knotd did not start (its port was taken 5 times):\n{last}");
    }

    /// One start of knotd on a fresh port; `Err` holds its log.
    fn spawn(bin: &Path, dir: &Path, zones: &[(&str, &str)]) -> Result<Knot, String> {
        let port = common::dnsmasq::free_port();
        let d = dir.display();
        let mut conf = format!(
            "server:\n    listen: 127.0.0.1@{port}\n    rundir: {d}\n\
             log:\n  - target: stderr\n    any: info\n\
             database:\n    storage: {d}/db\n\
             template:\n  - id: default\n    storage: {d}\n    zonefile-sync: -1\n    \
             zonefile-load: whole\n    journal-content: none\n    semantic-checks: off\n\
             zone:\n"
        );
        for (origin, file) in zones {
            conf.push_str(&format!("  - domain: {origin}\n    file: {file}\n"));
        }
        let conf = write_file(dir, "knot.conf", conf.as_bytes());
        let log = std::fs::File::create(dir.join("knot.log")).expect("knot.log");
        let child = Command::new(bin)
            .arg("-c")
            .arg(&conf)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn knotd");
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let mut knot = Knot {
            child,
            addr,
            dir: dir.to_path_buf(),
        };
        let up = wait_until(LIMIT, || {
            (TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
                && knot.log().contains("server started"))
                || knot.log().contains("failed to configure server")
        });
        if up && knot.log().contains("server started") {
            return Ok(knot);
        }
        let _ = knot.child.kill();
        let _ = knot.child.wait();
        Err(knot.log())
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("knot.log")).unwrap_or_default()
    }
}

impl Drop for Knot {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `ldns-keygen` for `zone` (a KSK, ECDSA P-256); returns the key's base
/// name (`K<zone>+013+<tag>`, without `.key`).
fn keygen(ldns_keygen: &Path, dir: &Path, zone: &str) -> String {
    let run = run_tool(
        Command::new(ldns_keygen)
            .current_dir(dir)
            .args(["-a", "ECDSAP256SHA256", "-k", zone]),
        LIMIT,
    );
    assert_eq!(run.code, Some(0), "ldns-keygen {zone}: {run:?}");
    run.stdout.trim().to_string()
}

/// `ldns-signzone` on `file` with `key`; `extra` e.g. dates in the past.
fn sign(ldns_signzone: &Path, dir: &Path, file: &str, key: &str, extra: &[&str]) {
    let run = run_tool(
        Command::new(ldns_signzone)
            .current_dir(dir)
            .args(extra)
            .args([file, key]),
        LIMIT,
    );
    assert_eq!(run.code, Some(0), "ldns-signzone {file}: {run:?}");
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn sha256(data: &[u8]) -> String {
    hex(ring::digest::digest(&ring::digest::SHA256, data).as_ref())
}

fn first_cert(pem: &Path) -> CertificateDer<'static> {
    CertificateDer::pem_file_iter(pem)
        .expect("read PEM")
        .next()
        .expect("a certificate")
        .expect("parse PEM")
}

/// TLSA 3 1 1 data: SHA-256 of the certificate's SubjectPublicKeyInfo.
fn spki_sha256(pem: &Path) -> String {
    let der = first_cert(pem);
    let cert = webpki::EndEntityCert::try_from(&der).expect("parse certificate");
    sha256(cert.subject_public_key_info().as_ref())
}

const SOA: &str = "IN SOA ns.test. hostmaster.test. 1 3600 600 86400 300";

/// Everything one test needs: certificates, the signed zones, Knot, the
/// trust anchor, the MX port and network.
struct World {
    certs: Certs,
    knot: Knot,
    anchor: PathBuf,
    dir: TempDir,
    mx_port: u16,
    net: u8,
}

impl World {
    /// `records`: extra lines of the signed `test.` zone, with `{port}`
    /// and `{net}` replaced; `plain` and `bogus`: lines of the unsigned
    /// and the expired-signature child zones.
    fn new(test: &str, net: u8, records: &[&str], plain: &[&str], bogus: &[&str]) -> Option<World> {
        let certs = Certs::make(test)?;
        let keygen_bin = require_tool("ldns-keygen", test)?;
        let signzone_bin = require_tool("ldns-signzone", test)?;
        let dir = TempDir::new("dane");
        let d = dir.path();
        let l = TcpListener::bind(format!("127.0.{net}.1:0")).expect("bind an MX address");
        let mx_port = l.local_addr().expect("addr").port();
        drop(l);
        let fill = |lines: &[&str]| -> String {
            lines
                .iter()
                .map(|l| {
                    l.replace("{port}", &mx_port.to_string())
                        .replace("{net}", &net.to_string())
                        + "\n"
                })
                .collect()
        };
        let top = keygen(&keygen_bin, d, "test.");
        let child = keygen(&keygen_bin, d, "bogus.test.");
        let child_ds = std::fs::read_to_string(d.join(format!("{child}.ds"))).expect("DS");
        let zone = format!(
            "$TTL 300\ntest. {SOA}\ntest. IN NS ns.test.\nns.test. IN A 127.0.0.1\n\
             plain.test. IN NS ns.test.\nbogus.test. IN NS ns.test.\n{child_ds}\n{}",
            fill(records)
        );
        write_file(d, "test.zone", zone.as_bytes());
        sign(&signzone_bin, d, "test.zone", &top, &[]);
        let plain = format!(
            "$TTL 300\nplain.test. {SOA}\nplain.test. IN NS ns.test.\n{}",
            fill(plain)
        );
        write_file(d, "plain.zone", plain.as_bytes());
        let bogus = format!(
            "$TTL 300\nbogus.test. {SOA}\nbogus.test. IN NS ns.test.\n{}",
            fill(bogus)
        );
        write_file(d, "bogus.zone", bogus.as_bytes());
        // signatures that expired in 2020: bogus (RFC 4035 §5.3.1)
        let past = ["-i", "20200101000000", "-e", "20200102000000"];
        sign(&signzone_bin, d, "bogus.zone", &child, &past);
        let zones = [
            ("test.", "test.zone.signed"),
            ("plain.test.", "plain.zone"),
            ("bogus.test.", "bogus.zone.signed"),
        ];
        let knot = Knot::start(test, d, &zones)?;
        Some(World {
            certs,
            knot,
            anchor: d.join(format!("{top}.key")),
            dir,
            mx_port,
            net,
        })
    }

    /// A receive-only relay as MX host on 127.0.NET.`host`, with STARTTLS
    /// from `tls` (cert, key) or none.
    fn mx(&self, host: u8, tls: Option<(&Path, &Path)>) -> Relay {
        let mut args: Vec<String> = Vec::new();
        if let Some((cert, key)) = tls {
            args.extend(["--tls-cert".into(), cert.display().to_string()]);
            args.extend(["--tls-key".into(), key.display().to_string()]);
        }
        args.push("--listen".into());
        args.push(format!("127.0.{}.{host}:{}", self.net, self.mx_port));
        Relay::receive_only(&strs(&args))
    }

    /// The DNS and DANE options, for the relay and for `route`.
    fn dane_args(&self) -> Vec<String> {
        [
            "--dns",
            &self.knot.addr.to_string(),
            "--smtp-port",
            &self.mx_port.to_string(),
            "--dane",
            "--dnssec-trust-anchor",
            &self.anchor.display().to_string(),
        ]
        .map(String::from)
        .to_vec()
    }

    fn relay_args(&self) -> Vec<String> {
        let mut args = self.certs.relay_args();
        args.extend(self.dane_args());
        args.extend(
            [
                "--retry-min",
                "1s",
                "--retry-max",
                "1s",
                "--delivery-timeout",
                "10s",
                "-v",
            ]
            .map(String::from),
        );
        args
    }

    fn sender(&self) -> Relay {
        let spool = self.dir.path().join("sender-spool");
        Relay::start_with_spool(spool, &strs(&self.relay_args()))
    }

    /// `smtp-relay route ADDRESS` with the sender's options.
    fn route(&self, address: &str) -> CliRun {
        let spool = self.dir.path().join("route-spool").display().to_string();
        let mut args = vec!["route".to_string(), "--spool".into(), spool];
        args.extend(self.dane_args());
        args.push(address.into());
        run_cli(&strs(&args), LIMIT)
    }
}

/// Waits for `id`'s delivery line (`relay=... tls=...`); returns it.
fn delivery_line(relay: &Relay, id: &str) -> String {
    let mut line = None;
    let ok = wait_until(LIMIT, || {
        line = relay
            .log()
            .lines()
            .find(|l| l.contains(id) && l.contains(" relay=") && l.contains(" tls="))
            .map(str::to_string);
        line.is_some()
    });
    assert!(ok, "{id} not delivered:\n{}", relay.log());
    line.unwrap_or_default()
}

fn delivered_to(mx: &Relay) -> bool {
    wait_until(LIMIT, || !queued_ids(mx.spool()).is_empty())
}

#[test]
fn matching_dane_ee_record_delivers_over_tls() {
    let test = "matching_dane_ee_record_delivers_over_tls";
    // the MX's certificate names relay.test, not the MX: DANE-EE ignores
    // names (RFC 7672 §3.1.1); filled in below once the certs exist
    let Some(probe) = Certs::make(test) else {
        return;
    };
    let spki = spki_sha256(&probe.cert);
    let records = [
        "good.test. IN MX 10 mx.good.test.",
        "mx.good.test. IN A 127.0.{net}.1",
    ];
    let tlsa = format!("_{{port}}._tcp.mx.good.test. IN TLSA 3 1 1 {spki}");
    let mut all: Vec<&str> = records.to_vec();
    all.push(&tlsa);
    let Some(w) = World::new(test, 61, &all, &[], &[]) else {
        return;
    };
    let mx = w.mx(1, Some((&probe.cert, &probe.key)));
    let relay = w.sender();
    let id = send_one(&relay, "user@good.test");
    let line = delivery_line(&relay, &id);
    assert!(line.contains(" tls=TLSv1."), "not over TLS: {line}");
    wait_sent(&relay, &id, LIMIT);
    assert!(delivered_to(&mx));
    assert!(
        relay
            .log()
            .contains("tls-policy DANE: 1 usable TLSA records for mx.good.test"),
        "{}",
        relay.log()
    );
    // `route` names DANE and the record
    let run = w.route("user@good.test");
    assert_eq!(run.code, Some(0), "{run:?}");
    assert!(run.stdout.contains("tls policy: DANE"), "{}", run.stdout);
    assert!(
        run.stdout.contains(&format!("3 1 1 {spki}")),
        "{}",
        run.stdout
    );
}

#[test]
fn mismatching_tlsa_record_defers() {
    let test = "mismatching_tlsa_record_defers";
    let zero = "00".repeat(32);
    let tlsa = format!("_{{port}}._tcp.mx.bad.test. IN TLSA 3 1 1 {zero}");
    let records = [
        "bad.test. IN MX 10 mx.bad.test.",
        "mx.bad.test. IN A 127.0.{net}.1",
        &tlsa,
    ];
    let Some(w) = World::new(test, 62, &records, &[], &[]) else {
        return;
    };
    let mx = w.mx(1, Some((&w.certs.cert, &w.certs.key)));
    let relay = w.sender();
    let id = send_one(&relay, "user@bad.test");
    let reply = wait_rcpt_state(&relay, &id, "deferred", LIMIT).2;
    assert!(reply.contains("4.7.5") && reply.contains("DANE"), "{reply}");
    assert!(queued_ids(mx.spool()).is_empty(), "delivered anyway");
}

#[test]
fn unsigned_zone_is_opportunistic() {
    let test = "unsigned_zone_is_opportunistic";
    // TLSA records that match nothing, where DANE must not use them
    // (RFC 7672 §2.2): so the MX without STARTTLS gets every message
    let zero = "00".repeat(32);
    let t_plain = format!("_{{port}}._tcp.mx.plain.test. IN TLSA 3 1 1 {zero}");
    let t_signed = format!("_{{port}}._tcp.mx.signed.test. IN TLSA 3 1 1 {zero}");
    // a secure MX RRset naming a host in the unsigned zone (§2.2.2:
    // insecure addresses), and a signed host with TLSA records
    let records = [
        "mixed.test. IN MX 10 mx.plain.test.",
        "mx.signed.test. IN A 127.0.{net}.1",
        &t_signed,
    ];
    let plain = [
        "plain.test. IN MX 10 mx.plain.test.",
        "mx.plain.test. IN A 127.0.{net}.1",
        &t_plain,
        // an insecure MX RRset naming the signed host (§2.2.1)
        "other.plain.test. IN MX 10 mx.signed.test.",
    ];
    let Some(w) = World::new(test, 63, &records, &plain, &[]) else {
        return;
    };
    let mx = w.mx(1, None);
    let relay = w.sender();
    for rcpt in [
        "user@plain.test",
        "user@mixed.test",
        "user@other.plain.test",
    ] {
        let id = send_one(&relay, rcpt);
        let line = delivery_line(&relay, &id);
        assert!(line.contains(" tls=none"), "{rcpt}: {line}");
        wait_sent(&relay, &id, LIMIT);
    }
    assert!(wait_until(LIMIT, || queued_ids(mx.spool()).len() == 3));
    let run = w.route("user@plain.test");
    assert!(run.stdout.contains("tls policy: none"), "{}", run.stdout);
}

#[test]
fn bogus_signatures_defer() {
    let test = "bogus_signatures_defer";
    let bogus = [
        "bogus.test. IN MX 10 mx.bogus.test.",
        "mx.bogus.test. IN A 127.0.{net}.1",
    ];
    let Some(w) = World::new(test, 64, &[], &[], &bogus) else {
        return;
    };
    // a plaintext MX: delivering to it would be the failure
    let mx = w.mx(1, None);
    let relay = w.sender();
    let id = send_one(&relay, "user@bogus.test");
    let reply = wait_rcpt_state(&relay, &id, "deferred", LIMIT).2;
    assert!(
        reply.contains("4.7.5") && reply.contains("DNSSEC"),
        "{reply}"
    );
    assert!(queued_ids(mx.spool()).is_empty(), "delivered anyway");
    let run = w.route("user@bogus.test");
    assert!(
        run.stdout.contains("DANE deferral (4.7.5)"),
        "{}",
        run.stdout
    );
}

/// One REQUIRETLS message (RFC 8689) over STARTTLS to `relay`.
fn send_requiretls(relay: &Relay, certs: &Certs, rcpt: &str) -> String {
    let (mut s, _) = Smtp::greet(relay.addr());
    s.cmd("EHLO client.test", 250);
    let ehlo = s.starttls(certs);
    assert!(ehlo.contains("REQUIRETLS"), "{ehlo}");
    s.cmd("MAIL FROM:<s@origin.test> REQUIRETLS", 250);
    s.cmd(&format!("RCPT TO:<{rcpt}>"), 250);
    s.cmd("DATA", 354);
    s.send_raw(b"Subject: secret\r\n\r\nover DANE only\r\n.\r\n");
    let text = s.expect(250);
    s.cmd("QUIT", 221);
    queued_id(&text).unwrap_or_else(|| panic!("no id in {text:?}"))
}

#[test]
fn requiretls_counts_a_dane_verified_hop_as_verified() {
    let test = "requiretls_counts_a_dane_verified_hop_as_verified";
    let Some(probe) = Certs::make(test) else {
        return;
    };
    let tlsa = format!(
        "_{{port}}._tcp.mx.rt.test. IN TLSA 3 1 1 {}",
        spki_sha256(&probe.cert)
    );
    let records = [
        "rt.test. IN MX 10 mx.rt.test.",
        "mx.rt.test. IN A 127.0.{net}.1",
        &tlsa,
    ];
    let Some(w) = World::new(test, 65, &records, &[], &[]) else {
        return;
    };
    // the MX's certificate is from a CA the sender does not trust, for
    // another name: only DANE verifies it (RFC 8689 §4.2.1)
    let mx = w.mx(1, Some((&probe.cert, &probe.key)));
    let relay = w.sender();
    let id = send_requiretls(&relay, &w.certs, "user@rt.test");
    wait_sent(&relay, &id, LIMIT);
    assert!(delivered_to(&mx));
    let got = queued_ids(mx.spool());
    let env = read_env(mx.spool(), &got[0]);
    assert!(env.contains("\nrequiretls: yes\n"), "not passed on:\n{env}");
}

#[test]
fn dane_ta_checks_the_chain_and_the_name() {
    let test = "dane_ta_checks_the_chain_and_the_name";
    // one CA; the MX certificate names mx.ta.test only
    let Some(ca) = Certs::make_for(test, "DNS:mx.ta.test") else {
        return;
    };
    // RFC 7672 §3.1.2: the server sends the TA in its chain
    let chain = ca.dir.path().join("chain.pem");
    let mut pem = std::fs::read(&ca.cert).expect("cert");
    pem.extend(std::fs::read(&ca.ca).expect("ca"));
    std::fs::write(&chain, pem).expect("chain");
    let ta = sha256(first_cert(&ca.ca).as_ref());
    let t1 = format!("_{{port}}._tcp.mx.ta.test. IN TLSA 2 0 1 {ta}");
    let t2 = format!("_{{port}}._tcp.mx.taname.test. IN TLSA 2 0 1 {ta}");
    let records = [
        "ta.test. IN MX 10 mx.ta.test.",
        "mx.ta.test. IN A 127.0.{net}.1",
        &t1,
        "taname.test. IN MX 10 mx.taname.test.",
        "mx.taname.test. IN A 127.0.{net}.2",
        &t2,
    ];
    let Some(w) = World::new(test, 66, &records, &[], &[]) else {
        return;
    };
    let good = w.mx(1, Some((&chain, &ca.key)));
    let wrong_name = w.mx(2, Some((&chain, &ca.key)));
    let relay = w.sender();
    let id = send_one(&relay, "user@ta.test");
    let line = delivery_line(&relay, &id);
    assert!(line.contains(" tls=TLSv1."), "{line}");
    wait_sent(&relay, &id, LIMIT);
    assert!(delivered_to(&good));
    // the same chain for a host it does not name: deferred (§3.2.2)
    let id = send_one(&relay, "user@taname.test");
    let reply = wait_rcpt_state(&relay, &id, "deferred", LIMIT).2;
    assert!(reply.contains("4.7.5") && reply.contains("DANE"), "{reply}");
    assert!(
        queued_ids(wrong_name.spool()).is_empty(),
        "delivered anyway"
    );
}

#[test]
fn secure_denial_of_tlsa_is_opportunistic() {
    let test = "secure_denial_of_tlsa_is_opportunistic";
    // signed all the way, but no TLSA records: the NSEC proof of their
    // absence makes the hop opportunistic (RFC 7672 §2.2), so an MX
    // without STARTTLS gets the message
    let records = [
        "nodane.test. IN MX 10 mx.nodane.test.",
        "mx.nodane.test. IN A 127.0.{net}.1",
    ];
    let Some(w) = World::new(test, 67, &records, &[], &[]) else {
        return;
    };
    let mx = w.mx(1, None);
    let relay = w.sender();
    let id = send_one(&relay, "user@nodane.test");
    let line = delivery_line(&relay, &id);
    assert!(line.contains(" tls=none"), "{line}");
    wait_sent(&relay, &id, LIMIT);
    assert!(delivered_to(&mx));
    let run = w.route("user@nodane.test");
    assert!(
        run.stdout
            .contains("tls policy: DANE (secure MX RRset: mx.nodane.test)")
            && run.stdout.contains("mx.nodane.test port")
            && run.stdout.contains("no usable TLSA records"),
        "{}",
        run.stdout
    );
}

/// RFC 8461 §2: a domain with both DANE and MTA-STS. Its preferred MX
/// has a DANE-EE record and is *not* in the domain's enforced MTA-STS
/// policy (whose only host, the backup MX, is down), and its certificate
/// names neither: DANE decides that host, so the message goes there over
/// TLS. Were MTA-STS applied to it, the host would be refused (not in
/// the policy) and the message deferred.
#[test]
fn dane_wins_over_mta_sts_per_host() {
    let test = "dane_wins_over_mta_sts_per_host";
    let Some(probe) = Certs::make(test) else {
        return;
    };
    let Some(policy_certs) = Certs::make_for(test, "DNS:mta-sts.both.test") else {
        return;
    };
    let spki = spki_sha256(&probe.cert);
    let tlsa = format!("_{{port}}._tcp.mx1.both.test. IN TLSA 3 1 1 {spki}");
    let records = [
        "both.test. IN MX 10 mx1.both.test.",
        "both.test. IN MX 20 mx2.both.test.",
        "mx1.both.test. IN A 127.0.{net}.1",
        "mx2.both.test. IN A 127.0.{net}.2",
        "_mta-sts.both.test. IN TXT \"v=STSv1; id=1;\"",
        "mta-sts.both.test. IN A 127.0.0.1",
        &tlsa,
    ];
    let Some(w) = World::new(test, 68, &records, &[], &[]) else {
        return;
    };
    let nginx_dir = w.dir.path().join("nginx");
    let Some(nginx) =
        common::nginx::Nginx::start(test, &nginx_dir, &policy_certs.cert, &policy_certs.key)
    else {
        return;
    };
    nginx.set_policy("version: STSv1\r\nmode: enforce\r\nmx: mx2.both.test\r\nmax_age: 86400\r\n");
    let mx1 = w.mx(1, Some((&probe.cert, &probe.key)));
    let mut args = w.relay_args();
    args.extend([
        "--mta-sts".to_string(),
        "--mta-sts-port".into(),
        nginx.port.to_string(),
        "--ca-file".into(),
        policy_certs.ca.display().to_string(),
    ]);
    let relay = Relay::start_with_spool(w.dir.path().join("sender-spool"), &strs(&args));
    let id = send_one(&relay, "user@both.test");
    let line = delivery_line(&relay, &id);
    assert!(
        line.contains("relay=mx1.both.test") && line.contains(" tls=TLSv1."),
        "{line}"
    );
    wait_sent(&relay, &id, LIMIT);
    assert!(delivered_to(&mx1));
    let log = relay.log();
    assert!(
        log.contains("mta-sts both.test: policy id=1 mode=enforce"),
        "the MTA-STS policy was not in force: {log}"
    );
    assert!(
        log.contains("tls-policy DANE: 1 usable TLSA records for mx1.both.test"),
        "{log}"
    );
}

/// TLS reports (RFC 8460) of DANE sessions: a matching TLSA record is a
/// success under `policy-type` `tlsa` with the record as its
/// `policy-string`; a mismatching one `tlsa-invalid`; a bogus MX RRset
/// `dnssec-invalid` (§4.3.2.1). The reports go to rua.test's MX, and are
/// read for real (`common::tlsrpt`).
#[test]
fn tls_reports_count_dane_sessions() {
    let test = "tls_reports_count_dane_sessions";
    let Some(probe) = Certs::make(test) else {
        return;
    };
    if require_tool("python3", test).is_none() {
        return;
    }
    let spki = spki_sha256(&probe.cert);
    let zero = "00".repeat(32);
    let rpt =
        |d: &str| format!("_smtp._tls.{d}. IN TXT \"v=TLSRPTv1; rua=mailto:reports@rua.test\"");
    let owned = [
        format!("_{{port}}._tcp.mx.good.test. IN TLSA 3 1 1 {spki}"),
        format!("_{{port}}._tcp.mx.bad.test. IN TLSA 3 1 1 {zero}"),
        rpt("good.test"),
        rpt("bad.test"),
    ];
    let mut records = vec![
        "good.test. IN MX 10 mx.good.test.",
        "mx.good.test. IN A 127.0.{net}.1",
        "bad.test. IN MX 10 mx.bad.test.",
        "mx.bad.test. IN A 127.0.{net}.2",
        "rua.test. IN MX 10 mx.rua.test.",
        "mx.rua.test. IN A 127.0.{net}.9",
    ];
    records.extend(owned.iter().map(String::as_str));
    let bogus_rpt = rpt("bogus.test");
    let bogus = [
        "bogus.test. IN MX 10 mx.bogus.test.",
        "mx.bogus.test. IN A 127.0.{net}.3",
        bogus_rpt.as_str(),
    ];
    let Some(w) = World::new(test, 69, &records, &[], &bogus) else {
        return;
    };
    let _good = w.mx(1, Some((&probe.cert, &probe.key)));
    let _bad = w.mx(2, Some((&w.certs.cert, &w.certs.key)));
    let rua = w.mx(9, None);
    let mut args = w.relay_args();
    args.extend(
        [
            "--tls-reports",
            "--tls-report-from",
            "tlsrpt@relay.test",
            "--tls-report-period",
            "8",
        ]
        .map(String::from),
    );
    let relay = Relay::start_with_spool(w.dir.path().join("sender-spool"), &strs(&args));
    let id = send_one(&relay, "user@good.test");
    wait_sent(&relay, &id, LIMIT);
    send_one(&relay, "user@bad.test");
    send_one(&relay, "user@bogus.test");
    // (policy-type, result-type or "ok") → sessions, over every report
    let mut seen = std::collections::BTreeMap::<(String, String), u64>::new();
    let complete = wait_until(Duration::from_secs(60), || {
        seen.clear();
        for m in common::tlsrpt::reports(&rua) {
            for p in m["report"]["policies"].as_array().into_iter().flatten() {
                let kind = p["policy"]["policy-type"]
                    .as_str()
                    .unwrap_or("?")
                    .to_string();
                let domain = p["policy"]["policy-domain"].as_str().unwrap_or("?");
                if domain == "good.test" {
                    assert_eq!(p["policy"]["policy-string"][0], format!("3 1 1 {spki}"));
                }
                let ok = p["summary"]["total-successful-session-count"]
                    .as_u64()
                    .unwrap_or(0);
                *seen
                    .entry((kind.clone(), format!("{domain} ok")))
                    .or_default() += ok;
                for d in p["failure-details"].as_array().into_iter().flatten() {
                    let r = d["result-type"].as_str().unwrap_or("?");
                    let n = d["failed-session-count"].as_u64().unwrap_or(0);
                    *seen
                        .entry((kind.clone(), format!("{domain} {r}")))
                        .or_default() += n;
                }
            }
        }
        let has = |k: &str, what: &str| {
            seen.get(&(k.to_string(), what.to_string()))
                .is_some_and(|n| *n > 0)
        };
        has("tlsa", "good.test ok")
            && has("tlsa", "bad.test tlsa-invalid")
            && has("tlsa", "bogus.test dnssec-invalid")
    });
    assert!(complete, "{seen:?}\n{}", relay.log());
    assert_eq!(seen[&("tlsa".into(), "good.test ok".into())], 1, "{seen:?}");
    // nothing else was made of them
    let kinds: Vec<&(String, String)> = seen.keys().filter(|(_, w)| !w.ends_with(" ok")).collect();
    assert_eq!(kinds.len(), 2, "{seen:?}");
}
