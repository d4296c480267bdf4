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
        requiretls: false,
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

// ---- the relay itself as a smarthost client (route sections) ----

const DELIVERY: Duration = Duration::from_secs(30);

/// A file only its owner can read (the secrets file's rule).
fn private_file(dir: &std::path::Path, name: &str, text: &str) -> std::path::PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let p = write_file(dir, name, text.as_bytes());
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).expect("chmod 600");
    p
}

/// Our relay started with this config file text, tracing everything (so
/// the password-never-logged checks see the AUTH exchange).
fn client_relay(dir: &TempDir, conf: &str) -> Relay {
    let path = write_file(dir.path(), "relay.conf", conf.as_bytes());
    Relay::start_env(
        &["--config", path.to_str().expect("utf-8 path")],
        &[("RUST_LOG", "trace")],
    )
}

fn gone(relay: &Relay, id: &str) -> bool {
    !env_path(relay.spool(), id).exists()
}

/// The envelope's recipient lines, once one is deferred with `needle`.
fn wait_deferred(relay: &Relay, id: &str, needle: &str) -> String {
    let mut last = String::new();
    let ok = wait_until(DELIVERY, || {
        last = std::fs::read_to_string(env_path(relay.spool(), id)).unwrap_or_default();
        EnvFile::parse(&last)
            .rcpts()
            .iter()
            .any(|(st, _, reply)| st == "deferred" && reply.contains(needle))
    });
    assert!(ok, "not deferred with {needle:?}:\n{last}\n{}", relay.log());
    last
}

#[test]
fn relay_logs_in_to_postfix_over_starttls_and_implicit_tls_with_failover() {
    let Some(p) =
        Provider::start("relay_logs_in_to_postfix_over_starttls_and_implicit_tls_with_failover")
    else {
        return;
    };
    let dir = TempDir::new("smarthost");
    let secrets = private_file(
        dir.path(),
        "secrets",
        &format!(
            "# provider\n[localhost]:{}  {SASL_USER}:{SASL_PASSWORD}\n",
            p.submission.port()
        ),
    );
    let dead = unused_port();
    let relay = client_relay(
        &dir,
        &format!(
            "no-dns = yes\nca-file = {ca}\nsecrets-file = {secrets}\n\
             [route a.example]   # a dead first host, then the provider's 587\n\
             hosts = 127.0.0.1:{dead}, localhost:{sub}\ntls = verify\nauth = {SASL_USER}\n\
             [route b.example]   # the provider's 465\n\
             hosts = localhost:{imp}\ntls = implicit\nauth = {SASL_USER}\n",
            ca = p.certs.ca.display(),
            secrets = secrets.display(),
            sub = p.submission.port(),
            imp = p.implicit.port(),
        ),
    );
    let mut t = relay.session();
    let a = t.send_mail(
        "s@client.test",
        &["x@a.example"],
        b"Subject: a\r\n\r\na\r\n",
    );
    let b = t.send_mail(
        "s@client.test",
        &["y@b.example"],
        b"Subject: b\r\n\r\nb\r\n",
    );
    assert!(
        wait_until(DELIVERY, || gone(&relay, &a) && gone(&relay, &b)),
        "not delivered:\n{}\n{}",
        relay.log(),
        p.pf.maillog()
    );
    assert!(
        wait_until(LIMIT, || p.logins() >= 2),
        "Postfix saw fewer than 2 logins:\n{}",
        p.pf.maillog()
    );
    let log = relay.log();
    for port in [p.submission.port(), p.implicit.port()] {
        let line = log
            .lines()
            .find(|l| l.contains(&format!("relay=localhost[127.0.0.1]:{port} tls=TLSv1")))
            .unwrap_or_else(|| panic!("no TLS delivery to port {port}:\n{log}"));
        assert!(line.contains("tls=TLSv1"), "{line}");
    }
    assert!(
        log.contains("AUTH PLAIN ***"),
        "trace shows the AUTH, masked:\n{log}"
    );
    assert!(
        !log.contains(SASL_PASSWORD),
        "the password is in the log:\n{log}"
    );
    let plain =
        smtp_relay::auth::encode_base64(format!("\0{SASL_USER}\0{SASL_PASSWORD}").as_bytes());
    assert!(!log.contains(&plain), "the AUTH response is in the log");
}

#[test]
fn wrong_password_defers_with_the_reply_in_the_summary() {
    let Some(p) = Provider::start("wrong_password_defers_with_the_reply_in_the_summary") else {
        return;
    };
    let dir = TempDir::new("smarthost");
    let secrets = private_file(
        dir.path(),
        "secrets",
        &format!("provider {SASL_USER}:typo-pw\n"),
    );
    let relay = client_relay(
        &dir,
        &format!(
            "no-dns = yes\nca-file = {}\nsecrets-file = {}\n[route *]\nhosts = localhost:{}\ntls = verify\nauth = provider\n",
            p.certs.ca.display(),
            secrets.display(),
            p.submission.port(),
        ),
    );
    let mut t = relay.session();
    let id = t.send_mail(
        "s@client.test",
        &["x@far.example"],
        b"Subject: w\r\n\r\nw\r\n",
    );
    wait_deferred(&relay, &id, "535 5.7.8");
    // deferred, not bounced: no DSN was queued
    assert_eq!(queued_ids(relay.spool()).len(), 1, "{}", relay.log());
    let s = relay.spool().display().to_string();
    let run = run_cli(&["queue", "list", "--spool", &s, "--summary"], LIMIT);
    assert_eq!(run.code, Some(0), "{run:?}");
    let row = run
        .stdout
        .lines()
        .find(|l| l.starts_with("far.example\t"))
        .unwrap_or_else(|| panic!("{run:?}"));
    assert!(row.contains("454 4.7.0"), "{row}");
    assert!(
        row.contains("535 5.7.8"),
        "the hop's reply is the top error: {row}"
    );
    let log = relay.log();
    assert!(log.contains("AUTH as relay@test.realm"), "{log}");
    assert!(
        !log.contains("typo-pw"),
        "the password is in the log:\n{log}"
    );
    assert!(p.pf.maillog().contains("authentication failed"));
}

/// `smtp-relay passwd USER --auth-file FILE`, password on stdin.
fn passwd(file: &std::path::Path, user: &str, password: &str) {
    let file = file.to_str().expect("utf-8 path");
    let (code, err) = passwd_with(&[user, "--auth-file", file], &format!("{password}\n"));
    assert_eq!(code, Some(0), "{err}");
}

/// Our own relay as the provider: STARTTLS with `certs`, AUTH required
/// for relaying, for these `(user, password)`.
fn own_provider(certs: &Certs, dir: &TempDir, users: &[(&str, &str)]) -> Relay {
    let file = dir.path().join("passwd");
    for (user, password) in users {
        passwd(&file, user, password);
    }
    let mut pargs = certs.relay_args();
    pargs.extend(["--auth-file".into(), file.display().to_string()]);
    let pargs: Vec<&str> = pargs.iter().map(String::as_str).collect();
    Relay::receive_only(&pargs)
}

#[test]
fn own_relay_as_provider_auth_over_starttls_never_plaintext_unless_allowed() {
    let Some(certs) = Certs::make("own_relay_as_provider") else {
        return;
    };
    let dir = TempDir::new("smarthost");
    let provider = own_provider(
        &certs,
        &dir,
        &[("alice", "alice secret"), ("bob", "bob secret")],
    );
    let port = provider.addr().port();
    let secrets = private_file(
        dir.path(),
        "secrets",
        "own-relay  alice:alice secret\nown-relay-bob bob:bob secret\n",
    );
    let relay = client_relay(
        &dir,
        &format!(
            "no-dns = yes\nca-file = {ca}\nsecrets-file = {secrets}\n\
             [route a.example]\nhosts = localhost:{port}\ntls = verify\nauth = alice\n\
             [route b.example]\nhosts = 127.0.0.1:{port}\ntls = none\nauth = alice\n\
             [route c.example]\nhosts = 127.0.0.1:{port}\ntls = none\nauth = alice\nauth-plaintext = yes\n\
             [route d.example]\nhosts = localhost:{port}\ntls = verify\nauth = bob\n",
            ca = certs.ca.display(),
            secrets = secrets.display(),
        ),
    );
    let mut t = relay.session();
    let a = t.send_mail(
        "s@client.test",
        &["x@a.example"],
        b"Subject: a\r\n\r\na\r\n",
    );
    assert!(wait_until(DELIVERY, || gone(&relay, &a)), "{}", relay.log());
    let b = t.send_mail(
        "s@client.test",
        &["y@b.example"],
        b"Subject: b\r\n\r\nb\r\n",
    );
    wait_deferred(&relay, &b, "not encrypted");
    let c = t.send_mail(
        "s@client.test",
        &["z@c.example"],
        b"Subject: c\r\n\r\nc\r\n",
    );
    assert!(wait_until(DELIVERY, || gone(&relay, &c)), "{}", relay.log());
    let plog = provider.log();
    // two logins (a over TLS, c in plaintext as allowed), none for b:
    // the connection cache did not lend a's or c's session to b either
    assert_eq!(plog.matches("auth ok user=alice").count(), 2, "{plog}");
    assert!(!plog.contains("auth failed"), "{plog}");
    // same peer and TLS policy as a, another user: a's cached session
    // (logged in as alice) is not reused, d logs in as bob
    let d = t.send_mail(
        "s@client.test",
        &["w@d.example"],
        b"Subject: d\r\n\r\nd\r\n",
    );
    assert!(wait_until(DELIVERY, || gone(&relay, &d)), "{}", relay.log());
    assert!(
        wait_until(LIMIT, || provider.log().contains("auth ok user=bob")),
        "{}",
        provider.log()
    );
    let got: Vec<String> = queued_ids(provider.spool())
        .iter()
        .map(|id| read_env(provider.spool(), id))
        .collect();
    assert_eq!(got.len(), 3, "{got:?}");
    assert!(!got.iter().any(|e| e.contains("y@b.example")), "{got:?}");
}

/// The provider's queued envelope holding `rcpt`: its `auth:` line names
/// the user the message came in under.
fn provider_env_with(provider: &Relay, rcpt: &str) -> String {
    queued_ids(provider.spool())
        .iter()
        .map(|id| read_env(provider.spool(), id))
        .find(|e| e.contains(rcpt))
        .unwrap_or_else(|| panic!("the provider has no message for {rcpt}"))
}

#[test]
fn sender_dependent_credentials_pick_the_senders_user_or_the_fallback_or_defer() {
    let Some(certs) = Certs::make("sender_dependent_credentials") else {
        return;
    };
    let dir = TempDir::new("smarthost");
    let provider = own_provider(
        &certs,
        &dir,
        &[
            ("alice", "alice secret"),
            ("bob", "bob secret"),
            ("carol", "carol secret"),
        ],
    );
    let port = provider.addr().port();
    let secrets = private_file(
        dir.path(),
        "secrets",
        "@shop.example  alice:alice secret\n\
         billing@corp.example  bob:bob secret\n\
         provider-default  carol:carol secret\n",
    );
    let relay = client_relay(
        &dir,
        &format!(
            "no-dns = yes\nca-file = {ca}\nsecrets-file = {secrets}\n\
             [route a.example]\nhosts = localhost:{port}\ntls = verify\n\
             sender-auth = yes\nauth = provider-default\n\
             [route b.example]\nhosts = localhost:{port}\ntls = verify\nsender-auth = yes\n",
            ca = certs.ca.display(),
            secrets = secrets.display(),
        ),
    );
    let mut t = relay.session();
    // one after the other, same peer and TLS policy: alice's session is
    // cached when bob's message goes, and must not carry it
    let mut sent = Vec::new();
    for (from, rcpt) in [
        ("news@shop.example", "r1@a.example"),
        ("billing@corp.example", "r2@a.example"),
        ("info@corp.example", "r3@a.example"),
        ("", "r4@a.example"),
        ("Sales@SHOP.example", "r5@a.example"),
    ] {
        let id = t.send_mail(from, &[rcpt], b"Subject: s\r\n\r\ns\r\n");
        assert!(
            wait_until(DELIVERY, || gone(&relay, &id)),
            "{from}: {}",
            relay.log()
        );
        sent.push(rcpt);
    }
    for (rcpt, user) in [
        ("r1@a.example", "alice"),
        ("r2@a.example", "bob"),
        // the domain has only billing@'s line: the fallback
        ("r3@a.example", "carol"),
        // the null sender (a DSN) takes the fallback
        ("r4@a.example", "carol"),
        ("r5@a.example", "alice"),
    ] {
        let env = provider_env_with(&provider, rcpt);
        assert!(
            env.contains(&format!("auth: {user}\n")),
            "{rcpt} not as {user}:\n{env}"
        );
    }
    let plog = provider.log();
    for user in ["alice", "bob", "carol"] {
        assert!(plog.contains(&format!("auth ok user={user}")), "{plog}");
    }
    assert!(!plog.contains("auth failed"), "{plog}");
    let log = relay.log();
    for user in ["alice", "bob", "carol"] {
        let shown = log.lines().any(|l| {
            l.contains(&format!("relay=localhost[127.0.0.1]:{port}"))
                && l.ends_with(&format!(" auth={user}"))
        });
        assert!(shown, "no relay= line names {user}:\n{log}");
    }
    for pw in ["alice secret", "bob secret", "carol secret"] {
        assert!(!log.contains(pw), "a password is in the log:\n{log}");
    }
    // no line for the sender and no fallback: deferred, not bounced, not
    // sent without AUTH
    let d = t.send_mail(
        "x@else.example",
        &["r6@b.example"],
        b"Subject: d\r\n\r\nd\r\n",
    );
    let env = wait_deferred(&relay, &d, "454 4.7.0");
    assert!(
        env.contains("no credentials for sender <x@else.example>"),
        "{env}"
    );
    // the deferral is logged with its reason (the INFO line per recipient)
    let logged = |log: &str| {
        log.lines().any(|l| {
            l.contains("INFO")
                && l.contains("to=r6@b.example")
                && l.contains("status=deferred")
                && l.contains("454 4.7.0 no credentials for sender <x@else.example>")
        })
    };
    assert!(
        wait_until(LIMIT, || logged(&relay.log())),
        "{}",
        relay.log()
    );
    assert_eq!(
        queued_ids(relay.spool()),
        vec![d.clone()],
        "{}",
        relay.log()
    );
    assert!(
        !queued_ids(provider.spool())
            .iter()
            .any(|id| read_env(provider.spool(), id).contains("r6@b.example")),
        "sent anyway"
    );
    // `route` shows the sender rule, no secret
    let conf = dir.path().join("relay.conf");
    let run = run_cli(
        &[
            "route",
            "--config",
            conf.to_str().expect("utf-8"),
            "u@a.example",
        ],
        LIMIT,
    );
    assert_eq!(run.code, Some(0), "{run:?}");
    assert!(
        run.stdout
            .contains("auth=sender (fallback provider-default)"),
        "{run:?}"
    );
}

#[test]
fn bad_sender_key_in_the_secrets_file_is_refused_at_start() {
    let dir = TempDir::new("smarthost");
    let secrets = private_file(
        dir.path(),
        "secrets",
        "@shop.example alice:pw-abc\nbilling@ bob:pw-xyz\n",
    );
    let text = format!(
        "no-dns = yes\nsecrets-file = {}\nspool = {}\nlisten = 127.0.0.1:0\n\
         [route *]\nhosts = [192.0.2.1]:587\ntls = encrypt\nsender-auth = yes\n",
        secrets.display(),
        dir.path().join("spool").display()
    );
    let c = write_file(dir.path(), "c.conf", text.as_bytes());
    let run = run_cli(&["serve", "--config", c.to_str().expect("utf-8")], LIMIT);
    assert_eq!(run.code, Some(78), "{run:?}");
    assert!(run.stderr.contains(":2: sender key billing@"), "{run:?}");
    assert!(!run.stderr.contains("pw-"), "{run:?}");
}

#[test]
fn secrets_file_must_be_private_and_name_the_routes_users() {
    use std::os::unix::fs::PermissionsExt;
    let dir = TempDir::new("smarthost");
    let secrets = private_file(dir.path(), "secrets", "k relay-user:pw-xyz\n");
    let conf = |user: &str| {
        let text = format!(
            "no-dns = yes\nsecrets-file = {}\nspool = {}\nlisten = 127.0.0.1:0\n[route *]\nhosts = [192.0.2.1]:587\ntls = encrypt\nauth = {user}\n",
            secrets.display(),
            dir.path().join("spool").display()
        );
        write_file(dir.path(), "c.conf", text.as_bytes())
    };
    // the user is not in the file
    let c = conf("nobody-here");
    let run = run_cli(&["serve", "--config", c.to_str().expect("utf-8")], LIMIT);
    assert_eq!(run.code, Some(78), "{run:?}");
    assert!(run.stderr.contains("nobody-here"), "{run:?}");
    // readable by others
    std::fs::set_permissions(&secrets, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let c = conf("relay-user");
    let run = run_cli(&["serve", "--config", c.to_str().expect("utf-8")], LIMIT);
    assert_eq!(run.code, Some(78), "{run:?}");
    assert!(run.stderr.contains("chmod 600"), "{run:?}");
    assert!(!run.stderr.contains("pw-xyz"), "{run:?}");
    // `route` names the hops, the TLS policy and the user, never a secret
    let run = run_cli(
        &[
            "route",
            "--config",
            c.to_str().expect("utf-8"),
            "u@far.example",
        ],
        LIMIT,
    );
    assert_eq!(run.code, Some(0), "{run:?}");
    assert!(
        run.stdout
            .contains("[192.0.2.1]:587 [192.0.2.1] tls=encrypt auth=relay-user"),
        "{run:?}"
    );
    assert!(!run.stdout.contains("pw-xyz"), "{run:?}");
}

// ---- the README's recipes, run as written ----

#[test]
fn readme_certificate_recipe_works_for_both_ends() {
    if require_tool("openssl", "readme_certificate_recipe_works_for_both_ends").is_none() {
        return;
    }
    let block = readme_block("A certificate for both ends", "sh");
    assert!(block.contains("NAME=relay.example.org\n"), "{block}");
    let script = block.replace("NAME=relay.example.org\n", "NAME=localhost\n");
    let dir = TempDir::new("readmecerts");
    let run = run_tool(
        Command::new("sh")
            .arg("-ec")
            .arg(&script)
            .current_dir(dir.path()),
        LIMIT,
    );
    assert_eq!(run.code, Some(0), "{run:?}");
    let f = |n: &str| dir.path().join(n).display().to_string();
    let provider = Relay::receive_only(&["--tls-cert", &f("cert.pem"), "--tls-key", &f("key.pem")]);
    let route = format!("*=localhost:{}", provider.addr().port());
    let relay = Relay::start(&[
        "--no-dns",
        "--route",
        &route,
        "--outbound-tls",
        "verify",
        "--ca-file",
        &f("ca.pem"),
    ]);
    let id = relay.session().send_mail(
        "s@client.test",
        &["x@far.example"],
        b"Subject: c\r\n\r\nc\r\n",
    );
    assert!(
        wait_until(DELIVERY, || gone(&relay, &id)),
        "not delivered under verify:\n{}",
        relay.log()
    );
    assert!(relay.log().contains("tls=TLSv1"), "{}", relay.log());
    assert_eq!(queued_ids(provider.spool()).len(), 1);
}

#[test]
fn readme_smarthost_recipe_works_as_written() {
    let Some(p) = Provider::start("readme_smarthost_recipe_works_as_written") else {
        return;
    };
    let conf = readme_block("### Use as a smarthost client", "ini");
    let secrets = readme_block("### Use as a smarthost client", "text");
    let port = p.submission.port().to_string();
    let fit = |s: &str| {
        s.replace("smtp.provider.example:587", &format!("localhost:{port}"))
            .replace("smtp.provider.example]:587", &format!("localhost]:{port}"))
            .replace("relay-user@provider.example", SASL_USER)
            .replace(":the password", &format!(":{SASL_PASSWORD}"))
    };
    let dir = TempDir::new("readmesmarthost");
    let secrets_path = private_file(dir.path(), "secrets", &fit(&secrets));
    let conf = fit(&conf).replace(
        "secrets-file = /etc/smtp-relay/secrets",
        &format!(
            "no-dns = yes\nca-file = {}\nsecrets-file = {}",
            p.certs.ca.display(),
            secrets_path.display()
        ),
    );
    assert!(
        conf.contains(&format!("hosts = localhost:{port}")),
        "{conf}"
    );
    let relay = client_relay(&dir, &conf);
    let id = relay.session().send_mail(
        "s@client.test",
        &["x@far.example"],
        b"Subject: r\r\n\r\nr\r\n",
    );
    assert!(
        wait_until(DELIVERY, || gone(&relay, &id)),
        "not delivered:\n{conf}\n{}\n{}",
        relay.log(),
        p.pf.maillog()
    );
    assert!(wait_until(LIMIT, || p.logins() == 1), "{}", p.pf.maillog());
}

#[test]
fn readme_sender_dependent_recipe_works_as_written() {
    let Some(certs) = Certs::make("readme_sender_dependent_recipe") else {
        return;
    };
    const MARK: &str = "#### Sender-dependent credentials";
    let conf = readme_block(MARK, "ini");
    let secrets = readme_block(MARK, "text");
    let dir = TempDir::new("readmesender");
    let provider = own_provider(
        &certs,
        &dir,
        &[
            ("billing@provider.example", "its password"),
            ("shop@provider.example", "another password"),
            ("corp@provider.example", "a third one"),
            ("relay-user@provider.example", "the password"),
        ],
    );
    let port = provider.addr().port();
    let fit = |s: &str| {
        s.replace("smtp.provider.example:587", &format!("localhost:{port}"))
            .replace("smtp.provider.example]:587", &format!("localhost]:{port}"))
    };
    let secrets_path = private_file(dir.path(), "secrets", &fit(&secrets));
    let conf = format!(
        "no-dns = yes\nca-file = {}\nsecrets-file = {}\n{}",
        certs.ca.display(),
        secrets_path.display(),
        fit(&conf)
    );
    let relay = client_relay(&dir, &conf);
    let mut t = relay.session();
    for (from, rcpt, user) in [
        (
            "billing@shop.example",
            "r1@far.example",
            "billing@provider.example",
        ),
        (
            "info@shop.example",
            "r2@far.example",
            "shop@provider.example",
        ),
        ("x@corp.example", "r3@far.example", "corp@provider.example"),
        (
            "x@else.example",
            "r4@far.example",
            "relay-user@provider.example",
        ),
    ] {
        let id = t.send_mail(from, &[rcpt], b"Subject: r\r\n\r\nr\r\n");
        assert!(
            wait_until(DELIVERY, || gone(&relay, &id)),
            "{from} not delivered:\n{conf}\n{}",
            relay.log()
        );
        let env = provider_env_with(&provider, rcpt);
        assert!(env.contains(&format!("auth: {user}\n")), "{from}:\n{env}");
    }
}

#[test]
fn failover_past_a_tls_failure_and_an_auth_failure() {
    let Some(p) = Provider::start("failover_past_a_tls_failure_and_an_auth_failure") else {
        return;
    };
    let dir = TempDir::new("smarthost");
    // host 1: no STARTTLS at all; host 2: Postfix, which has no user
    // alice (535); host 3: our own relay with alice, same test CA
    let plain = Relay::receive_only(&[]);
    let users = dir.path().join("passwd");
    passwd(&users, "alice", "alice secret");
    let mut args = p.certs.relay_args();
    args.extend(["--auth-file".into(), users.display().to_string()]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let good = Relay::receive_only(&args);
    let secrets = private_file(dir.path(), "secrets", "k alice:alice secret\n");
    let relay = client_relay(
        &dir,
        &format!(
            "no-dns = yes\nca-file = {}\nsecrets-file = {}\n[route *]\n\
             hosts = localhost:{}, localhost:{}, localhost:{}\ntls = verify\nauth = alice\n",
            p.certs.ca.display(),
            secrets.display(),
            plain.addr().port(),
            p.submission.port(),
            good.addr().port(),
        ),
    );
    let id = relay.session().send_mail(
        "s@client.test",
        &["x@far.example"],
        b"Subject: f\r\n\r\nf\r\n",
    );
    assert!(
        wait_until(DELIVERY, || gone(&relay, &id)),
        "not delivered:\n{}",
        relay.log()
    );
    assert_eq!(queued_ids(plain.spool()).len(), 0);
    assert_eq!(queued_ids(good.spool()).len(), 1, "{}", relay.log());
    assert!(good.log().contains("auth ok user=alice"), "{}", good.log());
    assert!(
        p.pf.maillog().contains("authentication failed"),
        "Postfix was tried (and refused alice) on the way:\n{}",
        p.pf.maillog()
    );
}
