//! Inbound authentication results (issue 14; README "Authentication
//! results"): SPF (RFC 7208), DKIM (RFC 6376) and DMARC (RFC 7489)
//! against records served by a private dnsmasq on loopback, messages
//! signed by an independent signer (dkimpy, Debian's python3-dkim), and
//! every written header parsed by an independent RFC 8601 parser
//! (Debian's python3-authres).
//!
//! Without dnsmasq, openssl or those Python modules the tests print
//! SKIPPED and pass, except under CI.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::dnsmasq::{free_port, Dnsmasq};
use common::*;

const PYTHON: &str = "/usr/bin/python3";
const LIMIT: Duration = Duration::from_secs(30);

/// Signs stdin as d=signed.test, s=sel with the key file argv[1].
const SIGN: &str = r#"
import sys, dkim
msg = sys.stdin.buffer.read()
key = open(sys.argv[1], 'rb').read()
sig = dkim.sign(msg, b'sel', b'signed.test', key,
                include_headers=[b'from', b'to', b'subject'])
sys.stdout.buffer.write(sig + msg)
"#;

/// Each Authentication-Results field of the message file argv[1] as
/// python3-authres parses it: `authserv-id method=result ptype.prop=value ...`.
/// A field that does not follow RFC 8601's grammar makes it fail.
const PARSE: &str = r#"
import sys, authres, email.parser
raw = open(sys.argv[1], 'rb').read()
msg = email.parser.BytesParser().parsebytes(raw, headersonly=True)
for v in msg.get_all('Authentication-Results') or []:
    r = authres.AuthenticationResultsHeader.parse('Authentication-Results: ' + str(v))
    out = [r.authserv_id]
    for x in r.results:
        out.append('%s=%s' % (x.method, x.result))
        out.extend('%s.%s=%s' % (p.type, p.name, p.value) for p in x.properties)
    print(' '.join(out))
"#;

/// dkimpy's verdict on the stored message file argv[1], with the key
/// record argv[2] as the only DNS answer.
const VERIFY: &str = r#"
import sys, dkim
record = sys.argv[2].encode()
msg = open(sys.argv[1], 'rb').read()
print('verified', dkim.verify(msg, dnsfunc=lambda name, timeout=5: record))
"#;

/// The test world: a signing key, its public half in DNS, and the
/// records of the test domains.
struct World {
    dns: Dnsmasq,
    dir: TempDir,
    /// The TXT record of sel._domainkey.signed.test.
    key_record: String,
}

/// `None` (SKIPPED) when a tool is missing outside CI.
fn world(test: &str) -> Option<World> {
    require_tool("openssl", test)?;
    let python_ok = Path::new(PYTHON).is_file()
        && run_tool(
            Command::new(PYTHON).args(["-c", "import dkim, authres"]),
            LIMIT,
        )
        .code
            == Some(0);
    if !python_ok {
        if in_ci() {
            panic!("{test}: python3-dkim and python3-authres are needed (scripts/ci-deps.sh)");
        }
        println!("SKIPPED {test}: python3-dkim or python3-authres not installed");
        return None;
    }
    let dir = TempDir::new("authres");
    let key = dir.path().join("key.pem");
    let gen = run_tool(
        Command::new("openssl").args(["genrsa", "-out", path_str(&key), "1024"]),
        LIMIT,
    );
    assert_eq!(gen.code, Some(0), "openssl genrsa: {gen:?}");
    let public = run_tool(
        Command::new("sh").args([
            "-c",
            &format!(
                "openssl rsa -in {} -pubout -outform DER 2>/dev/null | base64 -w0",
                path_str(&key)
            ),
        ]),
        LIMIT,
    );
    assert_eq!(public.code, Some(0), "public key: {public:?}");
    let key_record = format!("v=DKIM1; k=rsa; p={}", public.stdout.trim());
    let dkim_key = format!("--txt-record=sel._domainkey.signed.test,{key_record}");
    let records = [
        // authoritative for .test: a name without records is NXDOMAIN
        "--local=/test/",
        "--txt-record=pass.test,v=spf1 ip4:127.0.0.1 -all",
        "--txt-record=fail.test,v=spf1 -all",
        "--txt-record=soft.test,v=spf1 ~all",
        "--txt-record=signed.test,v=spf1 ip4:127.0.0.1 -all",
        "--txt-record=_dmarc.signed.test,v=DMARC1; p=reject",
        "--txt-record=_dmarc.reject.test,v=DMARC1; p=reject",
        "--txt-record=_dmarc.quar.test,v=DMARC1; p=quarantine",
        &dkim_key,
    ];
    let dns = Dnsmasq::start(test, &records)?;
    Some(World {
        dns,
        dir,
        key_record,
    })
}

fn path_str(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

impl World {
    /// A receive-only relay asking our dnsmasq, with `extra` options.
    fn relay(&self, extra: &[&str]) -> Relay {
        relay_on(&self.dns.addr.to_string(), extra)
    }

    /// `message` with a DKIM signature of signed.test made by dkimpy.
    fn sign(&self, message: &str) -> Vec<u8> {
        let input = self.dir.path().join("unsigned.eml");
        std::fs::write(&input, message).expect("write the message");
        let run = run_tool(
            Command::new("sh").args([
                "-c",
                &format!(
                    "{PYTHON} -c \"$0\" {} < {}",
                    path_str(&self.dir.path().join("key.pem")),
                    path_str(&input)
                ),
                SIGN,
            ]),
            LIMIT,
        );
        assert_eq!(run.code, Some(0), "dkimpy sign: {run:?}");
        run.stdout.into_bytes()
    }
}

fn relay_on(dns: &str, extra: &[&str]) -> Relay {
    let mut args = vec!["--dns", dns, "--auth-results", "all"];
    args.extend_from_slice(extra);
    edge_relay(&args)
}

fn message(from: &str, body: &str) -> String {
    format!("From: Sender <{from}>\r\nTo: <user@example.org>\r\nSubject: test\r\n\r\n{body}\r\n")
}

/// A session at `addr` after EHLO.
fn hello(addr: std::net::SocketAddr) -> Talk {
    let mut t = Talk::connect(addr);
    t.expect(220);
    t.cmd("EHLO client.test", 250);
    t
}

/// Sends `data` from `sender` in one session; returns the queue id.
fn send(relay: &Relay, sender: &str, data: &[u8]) -> String {
    hello(relay.addr()).send_mail(sender, &["user@example.org"], data)
}

/// Sends `data` from a@pass.test up to its final dot; the reply is the
/// caller's to read.
fn send_data(relay: &Relay, data: &[u8]) -> Talk {
    let mut t = hello(relay.addr());
    t.cmd("MAIL FROM:<a@pass.test>", 250);
    t.cmd("RCPT TO:<user@example.org>", 250);
    t.cmd("DATA", 354);
    t.send_raw(data);
    t.send_raw(b".\r\n");
    t
}

/// The envelope's `hold:` fields (none, or `forever`).
fn hold(relay: &Relay, id: &str) -> Vec<String> {
    let env = EnvFile::load(relay.spool(), id);
    env.all("hold").into_iter().map(str::to_string).collect()
}

/// The stored message's Authentication-Results fields, as python3-authres
/// read them (one line each).
fn parsed_results(relay: &Relay, id: &str) -> Vec<String> {
    let file = msg_path(relay.spool(), id);
    let run = run_tool(
        Command::new(PYTHON).args(["-c", PARSE, path_str(&file)]),
        LIMIT,
    );
    assert_eq!(
        run.code,
        Some(0),
        "python3-authres could not parse the header (RFC 8601 grammar): {run:?}\n{}",
        String::from_utf8_lossy(&read_msg(relay.spool(), id))
    );
    run.stdout.lines().map(str::to_string).collect()
}

/// Our one field (authserv-id relay.test), parsed.
fn our_results(relay: &Relay, id: &str) -> String {
    let all = parsed_results(relay, id);
    let ours: Vec<&String> = all
        .iter()
        .filter(|l| l.starts_with("relay.test "))
        .collect();
    assert_eq!(ours.len(), 1, "one field of ours in {all:?}");
    ours[0].clone()
}

#[test]
fn spf_pass_fail_softfail_and_none_for_the_client() {
    let Some(w) = world("spf_pass_fail_softfail_and_none") else {
        return;
    };
    let relay = w.relay(&[]);
    for (domain, result) in [
        ("pass.test", "pass"),
        ("fail.test", "fail"),
        ("soft.test", "softfail"),
        ("none.test", "none"),
    ] {
        let sender = format!("a@{domain}");
        let id = send(&relay, &sender, message(&sender, "hello").as_bytes());
        let r = our_results(&relay, &id);
        assert!(
            r.contains(&format!("spf={result} smtp.mailfrom={sender}")),
            "{domain}: {r}"
        );
        // RFC 7208 §2.3: the HELO identity too (client.test has no record)
        assert!(r.contains("spf=none smtp.helo=client.test"), "{r}");
        assert!(r.contains("dkim=none"), "{r}");
    }
    let log = relay.log();
    assert!(
        log.contains(
            "authentication client=[127.0.0.1] spf=none spf=softfail dkim=none dmarc=none"
        ),
        "{log}"
    );
}

#[test]
fn dkim_pass_for_an_independent_signature_and_fail_for_a_tampered_body() {
    let Some(w) = world("dkim_pass_and_fail") else {
        return;
    };
    let relay = w.relay(&[]);
    let signed = w.sign(&message("a@signed.test", "signed body"));
    let id = send(&relay, "a@signed.test", &signed);
    let r = our_results(&relay, &id);
    assert!(
        r.contains("dkim=pass header.i=@signed.test header.s=sel header.b="),
        "{r}"
    );
    // DMARC: aligned SPF and DKIM for signed.test (RFC 7489 §3.1)
    assert!(
        r.contains("dmarc=pass header.from=signed.test policy.dmarc=reject"),
        "{r}"
    );
    assert!(r.contains("spf=pass smtp.mailfrom=a@signed.test"), "{r}");
    // the header we added breaks nothing: dkimpy still verifies the
    // stored message
    let file = msg_path(relay.spool(), &id);
    let run = run_tool(
        Command::new(PYTHON).args(["-c", VERIFY, path_str(&file), &w.key_record]),
        LIMIT,
    );
    assert_eq!(run.stdout.trim(), "verified True", "{run:?}");

    // the same signature over a changed body: RFC 6376 §6.1.3
    let tampered = String::from_utf8(signed)
        .unwrap()
        .replace("signed body", "changed body");
    let id = send(&relay, "a@signed.test", tampered.as_bytes());
    let r = our_results(&relay, &id);
    assert!(
        r.contains("dkim=fail header.i=@signed.test header.s=sel"),
        "{r}"
    );
    // SPF alone still passes aligned
    assert!(r.contains("dmarc=pass"), "{r}");
}

/// A message whose From: domain publishes DMARC `p=reject` and which
/// neither SPF (pass.test is not aligned) nor DKIM authenticates.
fn unaligned(from_domain: &str) -> String {
    message(&format!("ceo@{from_domain}"), "pay this invoice")
}

#[test]
fn dmarc_reject_refuses_at_the_end_of_data_only_when_configured() {
    let Some(w) = world("dmarc_reject") else {
        return;
    };
    let strict = w.relay(&["--auth-results-dmarc", "reject"]);
    let mut t = send_data(&strict, unaligned("reject.test").as_bytes());
    let text = t.expect_enh(550, "5.7.1");
    assert!(
        text.contains("DMARC policy of reject.test is reject"),
        "{text}"
    );
    assert!(queued_ids(strict.spool()).is_empty());
    // one refusal line, counted under its own reason
    let log = strict.log();
    assert!(
        log.contains(" refused reason=authentication stage=data rule=\"dmarc p=reject of reject.test\" reply=\"550 5.7.1 "),
        "{log}"
    );
    // the session goes on
    t.cmd("RSET", 250);

    // the default only writes the verdict
    let relay = w.relay(&[]);
    let id = send(&relay, "a@pass.test", unaligned("reject.test").as_bytes());
    let r = our_results(&relay, &id);
    assert!(
        r.contains("dmarc=fail header.from=reject.test policy.dmarc=reject"),
        "{r}"
    );
    assert!(hold(&relay, &id).is_empty());
}

#[test]
fn dmarc_quarantine_holds_the_message() {
    let Some(w) = world("dmarc_quarantine") else {
        return;
    };
    // p=quarantine under `reject`: held, not refused
    let relay = w.relay(&["--auth-results-dmarc", "reject"]);
    let id = send(&relay, "a@pass.test", unaligned("quar.test").as_bytes());
    assert_eq!(hold(&relay, &id), ["forever"]);
    let r = our_results(&relay, &id);
    assert!(
        r.contains("dmarc=fail header.from=quar.test policy.dmarc=quarantine"),
        "{r}"
    );
    assert!(relay
        .log()
        .contains(&format!("{id} held: DMARC fails for quar.test")));
    // p=reject under `quarantine`: held too
    let relay = w.relay(&["--auth-results-dmarc", "quarantine"]);
    let id = send(&relay, "a@pass.test", unaligned("reject.test").as_bytes());
    assert_eq!(hold(&relay, &id), ["forever"]);
    // a passing message is not held (positive control)
    let id = send(
        &relay,
        "a@pass.test",
        message("a@pass.test", "fine").as_bytes(),
    );
    assert!(hold(&relay, &id).is_empty());
}

#[test]
fn forged_results_naming_us_are_removed() {
    let Some(w) = world("forged_results_removed") else {
        return;
    };
    let relay = w.relay(&[]);
    let data = "Authentication-Results: relay.test; dkim=pass header.d=bank.test\r\n\
         Authentication-Results: (a comment) RELAY.test;\r\n\tspf=pass smtp.mailfrom=a@bank.test\r\n\
         Authentication-Results: upstream.test; spf=pass smtp.mailfrom=a@pass.test\r\n"
        .to_string()
        + &message("a@pass.test", "Authentication-Results: relay.test; in the body stays");
    let id = send(&relay, "a@pass.test", data.as_bytes());
    let all = parsed_results(&relay, &id);
    assert_eq!(all.len(), 2, "{all:?}");
    assert!(
        all[0].starts_with("relay.test spf=none smtp.helo=client.test"),
        "{all:?}"
    );
    assert!(!all[0].contains("bank.test"), "{all:?}");
    assert_eq!(all[1], "upstream.test spf=pass smtp.mailfrom=a@pass.test");
    let stored = String::from_utf8(read_msg(relay.spool(), &id)).unwrap();
    assert!(stored.contains("\r\n\r\nAuthentication-Results: relay.test; in the body stays\r\n"));
    assert!(relay
        .log()
        .contains(&format!("{id} removed 2 Authentication-Results header(s)")));
}

#[test]
fn a_dns_failure_is_temperror_and_the_message_is_accepted() {
    let Some(_w) = world("dns_failure_temperror") else {
        return;
    };
    // nothing listens on `dead`: every query fails at once; `silent`
    // never answers: the checks end at their time budget, the session
    // does not wait for DNS past it
    let dead = format!("127.0.0.1:{}", free_port());
    let silent = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
    let silent = silent.local_addr().expect("addr").to_string();
    for dns in [&dead, &silent] {
        let relay = relay_on(dns, &["--auth-results-timeout", "2s"]);
        let id = send(
            &relay,
            "a@pass.test",
            message("a@pass.test", "hi").as_bytes(),
        );
        let r = our_results(&relay, &id);
        assert!(
            r.contains("spf=temperror smtp.mailfrom=a@pass.test"),
            "{dns}: {r}"
        );
        assert!(r.contains("dmarc=temperror"), "{dns}: {r}");
        assert!(hold(&relay, &id).is_empty());
    }

    // unless told to defer
    let relay = relay_on(
        &dead,
        &[
            "--auth-results-timeout",
            "2s",
            "--auth-results-defer-temperror",
        ],
    );
    let mut t = send_data(&relay, message("a@pass.test", "hi").as_bytes());
    t.expect_enh(451, "4.4.3");
    assert!(queued_ids(relay.spool()).is_empty());
}

#[test]
fn spf_fail_refuses_mail_when_configured() {
    let Some(w) = world("spf_fail_refuses_mail") else {
        return;
    };
    let relay = w.relay(&["--auth-results-spf-reject"]);
    let mut t = hello(relay.addr());
    let text = t.cmd_enh("MAIL FROM:<a@fail.test>", 550, "5.7.23");
    assert!(text.contains("fail.test"), "{text}");
    let log = relay.log();
    assert!(
        log.contains(" refused reason=authentication stage=mail rule=\"spf fail for fail.test\""),
        "{log}"
    );
    // no transaction: RCPT needs a MAIL first
    t.cmd("RCPT TO:<user@example.org>", 503);
    // softfail and pass are let through
    t.cmd("MAIL FROM:<a@soft.test>", 250);
    t.cmd("RSET", 250);
    t.cmd("MAIL FROM:<a@pass.test>", 250);
    // without the option, fail is only written down
    let relay = w.relay(&[]);
    let id = send(
        &relay,
        "a@fail.test",
        message("a@fail.test", "x").as_bytes(),
    );
    assert!(our_results(&relay, &id).contains("spf=fail"));
}

#[test]
fn only_the_listeners_named_check_and_bdat_is_checked_too() {
    let Some(w) = world("only_named_listeners") else {
        return;
    };
    let dns = w.dns.addr.to_string();
    let relay = edge_relay(&[
        "--dns",
        &dns,
        "--listen",
        "127.0.0.2:0",
        "--auth-results",
        "127.0.0.2:0",
    ]);
    let (plain, checked) = (relay.addrs()[0], relay.addrs()[1]);
    assert_eq!(checked.ip().to_string(), "127.0.0.2");
    let data = message("a@pass.test", "x");
    let id = hello(plain).send_mail("a@pass.test", &["user@example.org"], data.as_bytes());
    assert!(parsed_results(&relay, &id).is_empty());

    // BDAT (RFC 3030) on the checked listener
    let mut t = hello(checked);
    t.cmd("MAIL FROM:<a@pass.test>", 250);
    t.cmd("RCPT TO:<user@example.org>", 250);
    let mut chunk = format!("BDAT {} LAST\r\n", data.len()).into_bytes();
    chunk.extend_from_slice(data.as_bytes());
    t.send_raw(&chunk);
    let text = t.expect_enh(250, "2.0.0");
    let id = queued_id(&text).expect("queued");
    // SPF was done for 127.0.0.1, the client's address
    assert!(our_results(&relay, &id).contains("spf=pass smtp.mailfrom=a@pass.test"));
}

#[test]
fn the_readme_config_lines_work() {
    let Some(w) = world("readme_config_lines") else {
        return;
    };
    let conf = readme_block("## Authentication results (SPF, DKIM, DMARC)", "ini");
    assert!(conf.contains("auth-results-dmarc = reject"), "{conf}");
    let file = w.dir.path().join("relay.conf");
    std::fs::write(&file, &conf).expect("write the config file");
    let dns = w.dns.addr.to_string();
    let relay = edge_relay(&["--config", path_str(&file), "--dns", &dns]);
    let mut t = send_data(&relay, unaligned("reject.test").as_bytes());
    t.expect_enh(550, "5.7.1");
    let id = t.send_mail(
        "a@pass.test",
        &["user@example.org"],
        message("a@pass.test", "ok").as_bytes(),
    );
    assert!(our_results(&relay, &id).contains("dmarc=none header.from=pass.test"));
}
