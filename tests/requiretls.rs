//! REQUIRETLS (RFC 8689) against the real binary: the receiving side
//! (offered only over TLS, refused in plaintext, stored in the envelope)
//! and the sending side through static routes: to a verified hop that
//! offers REQUIRETLS (another smtp-relay: the parameter goes on), to a
//! hop whose certificate is not verified, and to Postfix (Debian's
//! package: verified TLS, no REQUIRETLS), both bounced with 5.7.30; the
//! DSN of a REQUIRETLS message is itself REQUIRETLS and carries headers
//! only (§5). Without openssl or Postfix: SKIPPED outside CI.

mod common;
mod tlsutil;

use std::path::Path;

use common::*;
use tlsutil::*;

fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

/// A receive-only relay with STARTTLS (the verified next hop).
fn tls_relay(certs: &Certs) -> Relay {
    Relay::receive_only(&strs(&certs.relay_args()))
}

/// Over STARTTLS to `relay`: EHLO, TLS, EHLO; returns the second EHLO.
fn tls_session(relay: &Relay, certs: &Certs) -> (Smtp, String) {
    let (mut s, _) = Smtp::greet(relay.addr());
    s.cmd("EHLO client.test", 250);
    let ehlo = s.starttls(certs);
    (s, ehlo)
}

/// One REQUIRETLS message over TLS; returns its queue id.
fn send_requiretls(relay: &Relay, certs: &Certs, rcpt: &str, body: &str) -> String {
    let (mut s, ehlo) = tls_session(relay, certs);
    assert!(ehlo.contains("REQUIRETLS"), "{ehlo}");
    // RET=FULL: the DSN would carry the body, but for REQUIRETLS (§5)
    s.cmd("MAIL FROM:<s@origin.example> REQUIRETLS RET=FULL", 250);
    s.cmd(&format!("RCPT TO:<{rcpt}>"), 250);
    s.cmd("DATA", 354);
    s.send_raw(format!("Subject: secret\r\n\r\n{body}\r\n.\r\n").as_bytes());
    let text = s.expect(250);
    s.cmd("QUIT", 221);
    queued_id(&text).unwrap_or_else(|| panic!("no id in {text:?}"))
}

/// The relay's delivery log line for `id` once it has a status.
fn outcome_line(relay: &Relay, id: &str, rcpt: &str) -> String {
    let mut found = None;
    wait_until(LIMIT, || {
        found = relay
            .log()
            .lines()
            .find(|l| {
                l.contains(id) && l.contains(&format!(" to={rcpt} ")) && l.contains("status=")
            })
            .map(str::to_string);
        found.is_some()
    });
    found.unwrap_or_else(|| panic!("no outcome for {id}:\n{}", relay.log()))
}

/// Envelopes in `spool` whose text contains `needle`.
fn envelopes_with(spool: &Path, needle: &str) -> Vec<String> {
    queued_ids(spool)
        .into_iter()
        .filter(|id| read_env(spool, id).contains(needle))
        .collect()
}

#[test]
fn requiretls_is_offered_and_taken_only_over_tls() {
    let Some(certs) = Certs::make("requiretls_is_offered_and_taken_only_over_tls") else {
        return;
    };
    let relay = tls_relay(&certs);
    let (mut s, _) = Smtp::greet(relay.addr());
    let plain = s.cmd("EHLO client.test", 250);
    assert!(
        !plain.contains("REQUIRETLS"),
        "offered in plaintext: {plain}"
    );
    let refused = s.cmd("MAIL FROM:<s@origin.example> REQUIRETLS", 530);
    assert!(refused.contains("5.7.10"), "{refused}");
    let ehlo = s.starttls(&certs);
    assert!(ehlo.contains("REQUIRETLS"), "not offered over TLS: {ehlo}");
    s.cmd("MAIL FROM:<s@origin.example> REQUIRETLS=yes", 501);
    s.cmd("RSET", 250);
    let id = s.send_mail(
        "s@origin.example",
        &["r@dest.example"],
        b"Subject: x\r\n\r\nx\r\n",
    );
    assert!(!read_env(relay.spool(), &id).contains("requiretls"));
    drop(s);
    let id = send_requiretls(&relay, &certs, "r@dest.example", "needs TLS");
    assert!(
        read_env(relay.spool(), &id).contains("\nrequiretls: yes\n"),
        "{}",
        read_env(relay.spool(), &id)
    );
}

/// The sending relay: `good.example` and `origin.example` by routes with
/// `tls = verify`, `weak.example` with `tls = may` (the name is the
/// operator's, but the certificate is not checked), `postfix.example`
/// verified to `postfix_port`.
fn sender(certs: &Certs, next: u16, postfix_port: u16, dir: &Path) -> Relay {
    let conf = write_file(
        dir,
        "relay.conf",
        format!(
            "ca-file = {ca}\n\
             [route good.example]\nhosts = 127.0.0.1:{next}\ntls = verify\n\
             [route origin.example]\nhosts = 127.0.0.1:{next}\ntls = verify\n\
             [route weak.example]\nhosts = 127.0.0.1:{next}\ntls = may\n\
             [route postfix.example]\nhosts = 127.0.0.1:{postfix_port}\ntls = verify\n",
            ca = certs.ca.display()
        )
        .as_bytes(),
    );
    let mut args = certs.relay_args();
    args.extend(
        [
            "--config",
            &conf.display().to_string(),
            "--no-dns",
            "--retry-min",
            "1s",
            "--retry-max",
            "1s",
            "--delivery-timeout",
            "10s",
        ]
        .map(String::from),
    );
    Relay::start(&strs(&args))
}

#[test]
fn requiretls_goes_on_to_a_verified_hop_offering_it() {
    let Some(certs) = Certs::make("requiretls_goes_on_to_a_verified_hop_offering_it") else {
        return;
    };
    let next = tls_relay(&certs);
    let dir = TempDir::new("requiretls");
    let relay = sender(&certs, next.addr().port(), unused_port(), dir.path());
    let id = send_requiretls(&relay, &certs, "r@good.example", "verified all the way");
    let line = outcome_line(&relay, &id, "r@good.example");
    assert!(line.contains("status=sent"), "{line}");
    let got = envelopes_with(next.spool(), "r@good.example");
    assert_eq!(got.len(), 1, "{got:?}");
    let env = read_env(next.spool(), &got[0]);
    assert!(env.contains("\nrequiretls: yes\n"), "not passed on:\n{env}");
}

#[test]
fn requiretls_to_an_unverified_hop_bounces_with_a_requiretls_dsn() {
    let Some(certs) = Certs::make("requiretls_to_an_unverified_hop_bounces_with_a_requiretls_dsn")
    else {
        return;
    };
    let next = tls_relay(&certs);
    let dir = TempDir::new("requiretls");
    let relay = sender(&certs, next.addr().port(), unused_port(), dir.path());
    let id = send_requiretls(&relay, &certs, "r@weak.example", "the secret body");
    let line = outcome_line(&relay, &id, "r@weak.example");
    assert!(
        line.contains("5.7.30") && line.contains("status=bounced"),
        "{line}"
    );
    // refused before connecting: no verified certificate is asked for
    assert!(line.contains("is not authenticated"), "{line}");
    // nothing for weak.example reached the hop; the DSN did, over
    // verified TLS, as REQUIRETLS, with the headers only (RFC 8689 §5)
    let mut dsn = Vec::new();
    assert!(
        wait_until(LIMIT, || {
            dsn = envelopes_with(next.spool(), "s@origin.example");
            !dsn.is_empty()
        }),
        "no DSN at the hop:\n{}",
        relay.log()
    );
    assert!(envelopes_with(next.spool(), "r@weak.example").is_empty());
    let env = read_env(next.spool(), &dsn[0]);
    assert!(env.contains("\nrequiretls: yes\n"), "{env}");
    let text = String::from_utf8_lossy(&read_msg(next.spool(), &dsn[0])).to_string();
    assert!(text.contains("Status: 5.7.30"), "{text}");
    assert!(text.contains("Subject: secret"), "{text}");
    assert!(
        !text.contains("the secret body"),
        "the body came back:\n{text}"
    );
}

#[test]
fn requiretls_to_postfix_without_requiretls_bounces() {
    let test = "requiretls_to_postfix_without_requiretls_bounces";
    if !postfix_usable(test) {
        return;
    }
    let Some(certs) = Certs::make(test) else {
        return;
    };
    let sink = Sink::start();
    let postfix = PostfixInstance::start(
        sink.addr().port(),
        &format!(
            "smtpd_tls_security_level = may\nsmtpd_tls_cert_file = {}\nsmtpd_tls_key_file = {}\n",
            certs.cert.display(),
            certs.key.display()
        ),
    );
    let next = tls_relay(&certs);
    let dir = TempDir::new("requiretls");
    let relay = sender(&certs, next.addr().port(), postfix.port, dir.path());
    // the premise: Postfix talks verified TLS (plain mail goes through)
    let mut t = relay.session();
    let plain = t.send_mail(
        "s@origin.example",
        &["p@postfix.example"],
        b"Subject: p\r\n\r\np\r\n",
    );
    let line = outcome_line(&relay, &plain, "p@postfix.example");
    assert!(
        line.contains("status=sent"),
        "{line}\n{}",
        postfix.maillog()
    );
    let id = send_requiretls(&relay, &certs, "r@postfix.example", "not for postfix");
    let line = outcome_line(&relay, &id, "r@postfix.example");
    assert!(
        line.contains("5.7.30") && line.contains("status=bounced"),
        "{line}"
    );
    assert!(line.contains("does not offer REQUIRETLS"), "{line}");
    assert!(sink.wait_for(1, LIMIT));
    assert!(
        sink.messages()
            .iter()
            .all(|m| !String::from_utf8_lossy(&m.data).contains("not for postfix")),
        "the REQUIRETLS message went through Postfix"
    );
}
