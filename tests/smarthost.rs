//! Smarthost client (issue 12, outbound): SMTP AUTH to a next hop over
//! STARTTLS and implicit TLS (RFC 8314 §3), against a real provider: a
//! private Postfix with Cyrus SASL (sasldb) on two loopback ports, one
//! submission-like (STARTTLS, `smtpd_tls_auth_only = yes`), one with
//! `smtpd_tls_wrappermode = yes`. Relaying there needs AUTH
//! (`permit_sasl_authenticated, reject`).
//!
//! A missing tool is a SKIPPED line outside CI and a failure in CI.

mod common;
mod tlsutil;

use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

use common::*;
use smtp_relay::client::{AuthError, ClientError, Connection, HopPolicy, Outgoing, Timeouts};
use smtp_relay::secrets::{Credentials, Secret};
use smtp_relay::smtp::{Path, ReversePath};
use smtp_relay::tls::{ClientTls, OutboundTls};
use tlsutil::*;

pub const SASL_USER: &str = "relay@test.realm";
pub const SASL_PASSWORD: &str = "right pw:1";

/// Postfix as a provider that requires AUTH.
pub struct Provider {
    pub pf: PostfixInstance,
    pub certs: Certs,
    /// STARTTLS + AUTH (like port 587).
    pub submission: SocketAddr,
    /// Implicit TLS + AUTH (like port 465).
    pub implicit: SocketAddr,
    _db: TempDir,
}

impl Provider {
    pub fn start(test: &str) -> Option<Provider> {
        if !postfix_usable(test) {
            return None;
        }
        let saslpasswd2 = require_tool("saslpasswd2", test)?;
        let certs = Certs::make(test)?;
        let db = TempDir::new("sasldb");
        let dbfile = db.path().join("sasldb2");
        let run = run_tool(
            Command::new("sh").arg("-c").arg(format!(
                "printf %s '{SASL_PASSWORD}' | {} -c -p -f {} -u test.realm relay",
                saslpasswd2.display(),
                dbfile.display()
            )),
            LIMIT,
        );
        assert_eq!(run.code, Some(0), "saslpasswd2: {run:?}");
        let implicit_port = unused_port();
        let main_cf = format!(
            "smtpd_tls_cert_file = {}\nsmtpd_tls_key_file = {}\n\
             smtpd_tls_security_level = may\nsmtpd_tls_auth_only = yes\n\
             smtpd_sasl_local_domain = test.realm\n\
             smtpd_relay_restrictions = permit_sasl_authenticated, reject\n",
            certs.cert.display(),
            certs.key.display()
        );
        let master_cf = format!(
            "127.0.0.1:{implicit_port} inet n - n - - smtpd -o smtpd_tls_wrappermode=yes\n"
        );
        // the relayhost port: nothing listens, Postfix keeps what it took
        let pf = PostfixInstance::start_with(
            unused_port(),
            &main_cf,
            &master_cf,
            &[("SASLDB", &dbfile.display().to_string())],
        );
        let submission = SocketAddr::from(([127, 0, 0, 1], pf.port));
        let implicit = SocketAddr::from(([127, 0, 0, 1], implicit_port));
        assert!(
            wait_until(LIMIT, || std::net::TcpStream::connect(implicit).is_ok()),
            "Postfix's implicit-TLS smtpd on {implicit} did not come up"
        );
        Some(Provider {
            pf,
            certs,
            submission,
            implicit,
            _db: db,
        })
    }

    /// Postfix's log lines that name the SASL user (how many logins).
    pub fn logins(&self) -> usize {
        self.pf
            .maillog()
            .lines()
            .filter(|l| l.contains(&format!("sasl_username={SASL_USER}")) && l.contains("client="))
            .count()
    }
}

fn creds(password: &str) -> Credentials {
    Credentials {
        user: SASL_USER.into(),
        password: Secret::new(password),
    }
}

/// One message through the library client under `policy`; the reply to
/// the end of data.
fn send_one(peer: SocketAddr, policy: &HopPolicy) -> Result<u16, ClientError> {
    let mut c = Connection::open_hop(
        peer,
        "client.test",
        Timeouts::all(Duration::from_secs(20)),
        policy,
    )?;
    let from = ReversePath::parse("<s@client.test>", false).expect("sender");
    let rcpts = vec![Path::parse("<someone@far.example>", false).expect("rcpt")];
    let msg = Outgoing {
        from: &from,
        rcpts: &rcpts,
        size: 30,
        body: None,
        smtputf8: false,
        dsn: None,
    };
    let sent = c.send(&msg, &mut &b"Subject: smarthost\r\n\r\nhello\r\n"[..])?;
    c.quit();
    Ok(sent.data_reply.map(|r| r.code().value()).unwrap_or(0))
}

#[test]
fn client_logs_in_to_postfix_over_starttls_and_implicit_tls() {
    let Some(p) = Provider::start("client_logs_in_to_postfix_over_starttls_and_implicit_tls")
    else {
        return;
    };
    let verified = ClientTls::verified(Some(&p.certs.ca)).expect("CA file");
    let good = creds(SASL_PASSWORD);
    let tries = [
        (p.submission, verified.clone()),
        (p.submission, ClientTls::unverified(OutboundTls::Encrypt)),
        (p.implicit, verified.with_mode(OutboundTls::Implicit)),
    ];
    for (i, (peer, tls)) in tries.iter().enumerate() {
        let policy = HopPolicy {
            tls: Some(tls),
            // the certificate names localhost, not the address dialled
            server_name: "localhost",
            auth: Some(&good),
            auth_plaintext: false,
        };
        let code = send_one(*peer, &policy).unwrap_or_else(|e| {
            panic!("{peer} {:?}: {e}\n{}", tls.mode, p.pf.maillog());
        });
        assert_eq!(code, 250, "{peer} {:?}", tls.mode);
        assert!(
            wait_until(LIMIT, || p.logins() > i),
            "Postfix logged no sasl_username for try {i}:\n{}",
            p.pf.maillog()
        );
    }
    // verify: the name checked is the route's host name, not the address
    let policy = HopPolicy {
        tls: Some(&verified),
        server_name: "smtp.elsewhere.example",
        auth: Some(&good),
        auth_plaintext: false,
    };
    match send_one(p.submission, &policy) {
        Err(ClientError::Rejected(_, r)) => {
            assert_eq!(r.code().value(), 454, "{r}");
        }
        other => panic!("a certificate for another name was accepted: {other:?}"),
    }
}

#[test]
fn wrong_password_and_plaintext_are_auth_errors_at_postfix() {
    let Some(p) = Provider::start("wrong_password_and_plaintext_are_auth_errors_at_postfix") else {
        return;
    };
    let verified = ClientTls::verified(Some(&p.certs.ca)).expect("CA file");
    let bad = creds("not the password");
    for (peer, tls) in [
        (p.submission, verified.clone()),
        (p.implicit, verified.with_mode(OutboundTls::Implicit)),
    ] {
        let policy = HopPolicy {
            tls: Some(&tls),
            server_name: "localhost",
            auth: Some(&bad),
            auth_plaintext: false,
        };
        match send_one(peer, &policy) {
            Err(ClientError::Auth(AuthError::Refused(r))) => {
                assert_eq!(r.code().value(), 535, "{r}")
            }
            other => panic!("{peer}: {other:?}"),
        }
    }
    // no TLS: nothing offered before STARTTLS (smtpd_tls_auth_only), and
    // we would not send it anyway
    let good = creds(SASL_PASSWORD);
    let policy = HopPolicy {
        tls: None,
        server_name: "localhost",
        auth: Some(&good),
        auth_plaintext: false,
    };
    match send_one(p.submission, &policy) {
        Err(ClientError::Auth(AuthError::NotOverTls)) => {}
        other => panic!("{other:?}"),
    }
    assert_eq!(p.logins(), 0, "{}", p.pf.maillog());
}
