//! The command line: `smtp-relay COMMAND [OPTIONS]`.
//!
//! Every `serve` option can also be set in a config file (`--config FILE`)
//! as `name = value` lines using the long option names; `#` starts a
//! comment at the start of a line or after a space or tab. The command
//! line wins: an option given there replaces the file's value(s) for that
//! name, and a flag is `--FLAG` or `--FLAG=yes|no`, so the file's `yes`
//! can be turned off. A bad option or config line is a usage error (exit
//! 64) with one line naming it (and the file and line it came from).

use std::collections::HashMap;
use std::path::PathBuf;

use std::time::Duration;

use crate::admin::{QueueCmd, Selector, SendOpts, StateFilter};
use crate::config::{BareLineEndings, Cidr, Config, Endpoint, TlsFiles};
use crate::config::{RouteAuth, RouteTls, StaticRoute};
use crate::smtp::Domain;
use crate::spool::QueueId;
use crate::time::parse_duration;

/// A parsed invocation.
#[derive(Debug)]
pub enum Cli {
    Serve(Config),
    /// `serve --check-config`, `check-config`: load as a reload would,
    /// start nothing.
    CheckConfig(Config),
    Queue {
        config: Config,
        cmd: QueueCmd,
        sel: Selector,
        dry_run: bool,
        /// `-` given: read more ids from stdin.
        ids_from_stdin: bool,
        /// Deprecated spellings used, to print before running.
        warnings: Vec<String>,
    },
    Send {
        config: Config,
        opts: SendOpts,
    },
    Route {
        config: Config,
        address: String,
    },
    /// `passwd USER`: set USER's password (read on stdin) in the file.
    Passwd {
        file: PathBuf,
        user: String,
        /// `--user` (or the config file's `user`): the file is given to
        /// the user the server runs as, which reads it at each AUTH.
        owner: Option<crate::sys::User>,
    },
    /// `dkim keygen`: write a key, print its DNS record.
    DkimKeygen(crate::dkim::keygen::Keygen),
    Help(String),
    Version,
}

/// A usage error: printed as one line, exit 64 (EX_USAGE).
#[derive(Debug, PartialEq, Eq)]
pub struct UsageError(pub String);

impl std::fmt::Display for UsageError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Flag,
    Single,
    Multi,
}

struct OptSpec {
    name: &'static str,
    kind: Kind,
    hint: &'static str,
    desc: &'static str,
}

const fn opt(name: &'static str, kind: Kind, hint: &'static str, desc: &'static str) -> OptSpec {
    OptSpec {
        name,
        kind,
        hint,
        desc,
    }
}

/// Options of the receiving side (`serve` only).
const SERVER_OPTS: &[OptSpec] = &[
    opt(
        "listen",
        Kind::Multi,
        "ADDR:PORT",
        "address to listen on, repeatable (default 127.0.0.1:2525)",
    ),
    opt(
        "workers",
        Kind::Single,
        "N",
        "session worker threads = most concurrent sessions (default 256)",
    ),
    opt(
        "backlog",
        Kind::Single,
        "N",
        "connections waiting for a worker before 421 (default 256)",
    ),
    opt(
        "relay-net",
        Kind::Multi,
        "CIDR",
        "clients allowed to relay anywhere, repeatable (default loopback)",
    ),
    opt(
        "relay-domain",
        Kind::Multi,
        "DOMAIN",
        "domain anyone may send to, repeatable",
    ),
    opt(
        "max-size",
        Kind::Single,
        "BYTES",
        "largest message accepted (default 10485760; k/M/G suffixes)",
    ),
    opt(
        "max-recipients",
        Kind::Single,
        "N",
        "recipients per message (default 1000)",
    ),
    opt(
        "max-hops",
        Kind::Single,
        "N",
        "Received headers before a message is a loop (default 100)",
    ),
    opt(
        "timeout",
        Kind::Single,
        "DUR",
        "deadline for each command line, TLS handshake included (default 5m)",
    ),
    opt(
        "bare-lf",
        Kind::Single,
        "reject|normalize",
        "bare CR/LF in DATA: refuse (default) or store as CRLF",
    ),
    opt(
        "data-timeout",
        Kind::Single,
        "DUR",
        "whole DATA transfer deadline (default 10m)",
    ),
    opt(
        "max-per-ip",
        Kind::Single,
        "N",
        "concurrent connections from one client address (default 50)",
    ),
    opt(
        "min-free-space",
        Kind::Single,
        "BYTES",
        "refuse new mail with 452 below this free space (default 64M)",
    ),
    opt(
        "sync",
        Kind::Single,
        "syncfs|fsync",
        "flush new mail with one syncfs (default) or an fdatasync per file",
    ),
    opt(
        "user",
        Kind::Single,
        "NAME",
        "when started as root, run as NAME after binding",
    ),
    opt(
        "tls-cert",
        Kind::Single,
        "FILE",
        "PEM certificate chain for STARTTLS (with --tls-key)",
    ),
    opt(
        "tls-key",
        Kind::Single,
        "FILE",
        "PEM private key for STARTTLS",
    ),
    opt(
        "require-tls",
        Kind::Flag,
        "",
        "refuse MAIL before STARTTLS (530 5.7.0)",
    ),
    opt(
        "auth-file",
        Kind::Single,
        "FILE",
        "offer SMTP AUTH PLAIN/LOGIN (after TLS, or to loopback) against FILE's user:hash lines",
    ),
    opt(
        "auth-max-failures",
        Kind::Single,
        "N",
        "failed AUTHs per client address per window before 454 (default 10; 0 off)",
    ),
    opt(
        "auth-max-user-failures",
        Kind::Single,
        "N",
        "failed AUTHs per user name per window before 454 (default 30; 0 off)",
    ),
    opt(
        "auth-failure-window",
        Kind::Single,
        "DUR",
        "the sliding window of the AUTH failure limits (default 5m)",
    ),
    // ---- the inbound edge (issue 13): DNS lists, policy service, rates ----
    opt(
        "dnsbl",
        Kind::Multi,
        "ZONE[=WEIGHT]",
        "DNS blocklist on the client address, repeatable (weight default 1)",
    ),
    opt(
        "dnswl",
        Kind::Multi,
        "ZONE",
        "DNS allowlist: a client it lists skips the blocklists, repeatable",
    ),
    opt(
        "dnsbl-threshold",
        Kind::Single,
        "N",
        "summed weight of the lists at which a client is blocked (default 1: any)",
    ),
    opt(
        "dnsbl-reject-at",
        Kind::Single,
        "rcpt|connect",
        "refuse a blocked client at each RCPT (default) or at connect",
    ),
    opt(
        "dnsbl-timeout",
        Kind::Single,
        "DUR",
        "bound of each DNS list lookup (default 2s; a list not answering is ignored)",
    ),
    opt(
        "policy-service",
        Kind::Single,
        "inet:HOST:PORT|unix:PATH",
        "ask this Postfix policy service (SMTPD_POLICY_README protocol)",
    ),
    opt(
        "policy-at",
        Kind::Single,
        "rcpt|data|both",
        "ask at each RCPT (default), at the end of the data, or both",
    ),
    opt(
        "policy-timeout",
        Kind::Single,
        "DUR",
        "bound of the connect and of each request and reply (default 10s)",
    ),
    opt(
        "policy-default-action",
        Kind::Single,
        "defer|dunno",
        "when the service is down or slow: 451 4.3.5 (default) or go on",
    ),
    opt(
        "milter",
        Kind::Multi,
        "inet:HOST:PORT|unix:PATH[,KEY=VALUE...]",
        "content filter (milter protocol 6), repeatable, called in order; keys: default=tempfail|accept, connect-timeout, command-timeout, eom-timeout, listeners=smtp+submission+local...",
    ),
    opt(
        "rate-connections",
        Kind::Single,
        "N",
        "connections per minute per client address (default 0: off)",
    ),
    opt(
        "rate-messages",
        Kind::Single,
        "N",
        "messages (MAIL) per minute per client address or AUTH user (default 0: off)",
    ),
    opt(
        "rate-recipients",
        Kind::Single,
        "N",
        "recipients per minute per client address or AUTH user (default 0: off)",
    ),
    // the inbound edge: recipient validation, access rules (README "Edge relay")
    opt(
        "recipients",
        Kind::Multi,
        "DOMAIN=FILE",
        "accept only the recipients FILE lists for relay domain DOMAIN, repeatable",
    ),
    opt(
        "verify-recipients",
        Kind::Multi,
        "DOMAIN",
        "verify recipients of relay domain DOMAIN with its next hop (RCPT probe), repeatable",
    ),
    opt(
        "verify-timeout",
        Kind::Single,
        "DUR",
        "longest recipient probe before 450 4.1.1 (default 10s)",
    ),
    opt(
        "verify-positive-ttl",
        Kind::Single,
        "DUR",
        "how long a recipient the next hop accepted stays known (default 1h)",
    ),
    opt(
        "verify-negative-ttl",
        Kind::Single,
        "DUR",
        "how long a recipient the next hop refused stays unknown (default 10m)",
    ),
    opt(
        "verify-cache-size",
        Kind::Single,
        "N",
        "most cached probe answers (default 10000)",
    ),
    opt(
        "access",
        Kind::Single,
        "FILE",
        "access rules (STAGE MATCH ACTION lines) at connect, HELO, MAIL, RCPT",
    ),
    opt(
        "postmaster",
        Kind::Single,
        "ADDRESS",
        "where RCPT TO:<Postmaster> and double bounces go (default postmaster@HOSTNAME)",
    ),
];

/// DKIM signing (serve only; README "DKIM signing").
const DKIM_OPTS: &[OptSpec] = &[
    opt(
        "dkim-key",
        Kind::Multi,
        "DOMAIN:SELECTOR:FILE",
        "sign DOMAIN's mail with this PEM private key (RSA 2048+ or Ed25519), repeatable",
    ),
    opt(
        "dkim-sign-from",
        Kind::Single,
        "relay-net,auth,local|none",
        "whose mail is signed: --relay-net clients, AUTH users, mail injected on this host (default relay-net,auth,local)",
    ),
    opt(
        "dkim-canonicalization",
        Kind::Single,
        "HEADER/BODY",
        "relaxed or simple, each (default relaxed/relaxed)",
    ),
    opt(
        "dkim-domain-from",
        Kind::Single,
        "header|envelope",
        "signing domain: the From: header's (default) or MAIL FROM's, or a parent with a key",
    ),
];

/// `--dkim-*`: plain data; the keys are read by `app.rs` at start.
fn apply_dkim(v: &Values, c: &mut Config) -> Result<(), UsageError> {
    use crate::dkim::settings::{parse_canonicalization, DomainFrom, KeyFile, SignFrom};
    if let Some(keys) = v.parse_multi("dkim-key", |k| {
        KeyFile::parse(k).map_err(|e| UsageError(format!("--dkim-key: {e}")))
    })? {
        c.dkim.keys = keys;
    }
    if let Some(f) = v.parse("dkim-sign-from", |f| {
        SignFrom::parse(f).ok_or_else(|| {
            UsageError(format!(
                "--dkim-sign-from: {f:?} is not a list of relay-net, auth and local, or none"
            ))
        })
    })? {
        c.dkim.sign_from = f;
    }
    if let Some((h, b)) = v.parse("dkim-canonicalization", |s| {
        parse_canonicalization(s).ok_or_else(|| {
            UsageError(format!(
                "--dkim-canonicalization: {s:?} is not relaxed|simple[/relaxed|simple]"
            ))
        })
    })? {
        c.dkim.header_canon = h;
        c.dkim.body_canon = b;
    }
    if let Some(d) = v.parse("dkim-domain-from", |d| match d {
        "header" => Ok(DomainFrom::Header),
        "envelope" => Ok(DomainFrom::Envelope),
        _ => Err(UsageError(format!(
            "--dkim-domain-from: {d:?} is not header or envelope"
        ))),
    })? {
        c.dkim.domain_from = d;
    }
    Ok(())
}

/// `dkim keygen DOMAIN SELECTOR [--algorithm rsa|ed25519] [--bits N] [--out FILE]`.
fn parse_dkim(args: &[String]) -> Result<Cli, UsageError> {
    use crate::dkim::keygen::{KeyAlgorithm, Keygen};
    let mut o = getopts::Options::new();
    o.optopt("", "algorithm", "rsa (default) or ed25519", "ALG");
    o.optopt("", "bits", "RSA key size (default 2048)", "N");
    o.optopt(
        "",
        "out",
        "key file (default SELECTOR._domainkey.DOMAIN.pem)",
        "FILE",
    );
    o.optflag("h", "help", "show this help");
    let m = o.parse(args).map_err(|e| UsageError(e.to_string()))?;
    if m.opt_present("help") {
        return Ok(Cli::Help(usage_text()));
    }
    let (Some("keygen"), [domain, selector]) = (
        m.free.first().map(String::as_str),
        m.free.get(1..).unwrap_or_default(),
    ) else {
        return Err(UsageError(
            "usage: smtp-relay dkim keygen DOMAIN SELECTOR [--algorithm rsa|ed25519] [--bits N] [--out FILE]"
                .into(),
        ));
    };
    // the same checks as --dkim-key's DOMAIN:SELECTOR
    let spec = crate::dkim::settings::KeyFile::parse(&format!("{domain}:{selector}:-"))
        .map_err(|e| UsageError(format!("dkim keygen: {e}")))?;
    let algorithm = match m.opt_str("algorithm").as_deref() {
        None | Some("rsa") => KeyAlgorithm::Rsa,
        Some("ed25519") => KeyAlgorithm::Ed25519,
        Some(a) => {
            return Err(UsageError(format!(
                "--algorithm: {a:?} is not rsa or ed25519"
            )))
        }
    };
    let bits = match m.opt_str("bits") {
        None => 2048,
        Some(b) => number::<usize>("--bits", &b)?,
    };
    if algorithm == KeyAlgorithm::Rsa && !(crate::dkim::MIN_RSA_BITS..=8192).contains(&bits) {
        return Err(UsageError(format!(
            "--bits: {bits} is outside {}..=8192",
            crate::dkim::MIN_RSA_BITS
        )));
    }
    let out = m.opt_str("out").map(PathBuf::from).unwrap_or_else(|| {
        PathBuf::from(format!("{}._domainkey.{}.pem", spec.selector, spec.domain))
    });
    Ok(Cli::DkimKeygen(Keygen {
        domain: spec.domain,
        selector: spec.selector,
        algorithm,
        bits,
        out,
    }))
}

/// The PROXY protocol (serve only): a load balancer in front.
const PROXY_OPTS: &[OptSpec] = &[
    opt(
        "proxy-protocol",
        Kind::Flag,
        "",
        "every listener expects a PROXY v1/v2 header first (needs --proxy-from)",
    ),
    opt(
        "proxy-from",
        Kind::Multi,
        "CIDR",
        "proxies trusted to send it, repeatable; anyone else is closed unread",
    ),
];

/// Listeners with a mode and the submission service (`serve` only;
/// README "Listeners" and "Submission for applications").
const LISTENER_OPTS: &[OptSpec] = &[
    opt(
        "listen-tls",
        Kind::Multi,
        "ADDR:PORT",
        "implicit-TLS listener (RFC 8314, port 465; needs --tls-cert), repeatable",
    ),
    opt(
        "submission",
        Kind::Multi,
        "ADDR:PORT",
        "submission listener (RFC 6409, port 587): AUTH required, STARTTLS; repeatable",
    ),
    opt(
        "submission-tls",
        Kind::Multi,
        "ADDR:PORT",
        "submission with implicit TLS (port 465), repeatable",
    ),
    opt(
        "sender-map",
        Kind::Single,
        "FILE",
        "'user: addr@dom, @dom, *' lines: the MAIL FROM each AUTH user may use",
    ),
    opt(
        "sender-check-from",
        Kind::Flag,
        "",
        "also refuse (550 5.7.1) a message whose From: is not the AUTH user's (default off)",
    ),
    opt(
        "submission-fixups",
        Kind::Single,
        "yes|no",
        "add Date: and Message-ID: when missing on submission listeners (default yes)",
    ),
    opt(
        "submission-plaintext-auth",
        Kind::Flag,
        "",
        "offer AUTH on submission listeners before STARTTLS (default: only over TLS)",
    ),
];

/// Inbound authentication results (`serve` only; README "Authentication
/// results").
const AUTHRES_OPTS: &[OptSpec] = &[
    opt(
        "auth-results",
        Kind::Multi,
        "ADDR:PORT|all",
        "check SPF, DKIM, DMARC of mail received on this listener (all: every non-submission one) and write Authentication-Results; repeatable",
    ),
    opt(
        "auth-results-dmarc",
        Kind::Single,
        "none|quarantine|reject",
        "follow a failed domain's DMARC policy up to this: reject (550 5.7.1) p=reject, hold p=quarantine (default none)",
    ),
    opt(
        "auth-results-spf-reject",
        Kind::Flag,
        "",
        "refuse MAIL (550 5.7.23) when SPF says fail for the sender (default off)",
    ),
    opt(
        "auth-results-defer-temperror",
        Kind::Flag,
        "",
        "answer 451 4.4.3 when a check met a DNS failure (default: accept, write temperror)",
    ),
    opt(
        "auth-results-timeout",
        Kind::Single,
        "DUR",
        "most the checks at MAIL, and those of a message, may take (default 20s)",
    ),
];

/// `--auth-results*`: the listeners named must be ours.
fn apply_auth_results(v: &Values, c: &mut Config) -> Result<(), UsageError> {
    use crate::authres::{DmarcAction, Listeners};
    if let Some(names) = v.multi("auth-results") {
        let mut these = Vec::new();
        for name in &names {
            if name == "all" {
                c.auth_results.on = Listeners::AllButSubmission;
                these.clear();
                break;
            }
            let e = endpoint("auth-results", name)?;
            if !c.all_listeners().iter().any(|l| l.endpoint == e) {
                return Err(UsageError(format!(
                    "{}--auth-results {name}: no listener has this address (give it as to --listen, or all)",
                    v.origin("auth-results", name)
                )));
            }
            these.push(e);
        }
        if !these.is_empty() {
            c.auth_results.on = Listeners::These(these);
        }
    }
    if c.auth_results.on != Listeners::None && c.no_dns {
        return Err(UsageError(
            "--auth-results needs DNS (SPF, DKIM keys, DMARC policies): not with --no-dns".into(),
        ));
    }
    let a = &mut c.auth_results;
    if let Some(d) = v.parse("auth-results-dmarc", |d| {
        DmarcAction::parse(d).ok_or_else(|| {
            UsageError(format!(
                "--auth-results-dmarc: {d:?} is not none, quarantine or reject"
            ))
        })
    })? {
        a.dmarc_action = d;
    }
    a.spf_reject = v.flag("auth-results-spf-reject")?;
    a.defer_temperror = v.flag("auth-results-defer-temperror")?;
    if let Some(t) = nonzero(v, "auth-results-timeout")? {
        a.timeout = t;
    }
    Ok(())
}

/// Operating `serve`: metrics and logs (README "Metrics", "Logs").
const OPERATING_OPTS: &[OptSpec] = &[
    opt(
        "metrics",
        Kind::Single,
        "[ADDR:]PORT",
        "serve /metrics (Prometheus/OpenMetrics) and /healthz over HTTP (ADDR default 127.0.0.1)",
    ),
    opt(
        "log-format",
        Kind::Single,
        "text|json",
        "log lines as text (default) or JSON objects, one per line",
    ),
    opt(
        "log-file",
        Kind::Single,
        "FILE",
        "append the log to FILE instead of stderr; SIGUSR1 reopens it",
    ),
    opt(
        "check-config",
        Kind::Flag,
        "",
        "read and check the configuration and every file it names as SIGHUP would, print OK or the error, exit 0 or 78; starts nothing",
    ),
];

/// `--metrics`, `--log-format`, `--log-file`.
fn apply_operating(v: &Values, c: &mut Config) -> Result<(), UsageError> {
    if let Some(a) = v.parse("metrics", |a| {
        let a = if a.bytes().all(|b| b.is_ascii_digit()) {
            format!("127.0.0.1:{a}")
        } else {
            a.to_string()
        };
        a.parse::<std::net::SocketAddr>()
            .map_err(|_| UsageError(format!("--metrics: {a:?} is not [ADDR:]PORT")))
    })? {
        c.metrics = Some(a);
    }
    if let Some(f) = v.parse("log-format", |f| {
        crate::logging::LogFormat::parse(f)
            .ok_or_else(|| UsageError(format!("--log-format: {f:?} is not text or json")))
    })? {
        c.log_format = f;
    }
    c.log_file = v.single("log-file").map(PathBuf::from);
    Ok(())
}

/// Options shared by every command that routes or delivers.
const ROUTING_OPTS: &[OptSpec] = &[
    opt(
        "config",
        Kind::Single,
        "FILE",
        "read options from FILE (name = value lines)",
    ),
    opt(
        "spool",
        Kind::Single,
        "DIR",
        "spool directory (default ./spool)",
    ),
    opt(
        "hostname",
        Kind::Single,
        "NAME",
        "our name: greeting, Received, EHLO, loop detection (default: system name)",
    ),
    opt(
        "route",
        Kind::Multi,
        "DOMAIN=HOST[:PORT]",
        "static route, repeatable; DOMAIN may be * or .suffix; HOST may be [addr]",
    ),
    opt(
        "dns",
        Kind::Single,
        "ADDR:PORT",
        "nameserver for MX lookups (default: /etc/resolv.conf)",
    ),
    opt(
        "no-dns",
        Kind::Flag,
        "",
        "use static routes only, never DNS",
    ),
    opt(
        "smtp-port",
        Kind::Single,
        "PORT",
        "port of MX hosts (default 25)",
    ),
    opt(
        "honor-source-routes",
        Kind::Flag,
        "",
        "forward along RFC 821 source routes instead of stripping them",
    ),
    opt(
        "mta-sts",
        Kind::Flag,
        "",
        "apply the MTA-STS policies (RFC 8461) of MX-routed domains; cached in the spool",
    ),
    opt(
        "mta-sts-port",
        Kind::Single,
        "PORT",
        "port of the MTA-STS policy hosts (default 443; for tests)",
    ),
    opt(
        "dane",
        Kind::Flag,
        "",
        "apply DANE TLSA records (RFC 7672) of MX hosts, DNSSEC-validated in-process",
    ),
    opt(
        "dnssec-trust-anchor",
        Kind::Single,
        "FILE",
        "--dane: DNSKEY records to trust instead of the root zone's keys",
    ),
    opt(
        "ca-file",
        Kind::Single,
        "FILE",
        "--outbound-tls verify, tls = verify, --mta-sts: trust these PEM CAs instead of the system's",
    ),
    opt(
        "tls-reports",
        Kind::Flag,
        "",
        "send daily TLS reports (RFC 8460) to the domains whose _smtp._tls record asks",
    ),
    opt(
        "tls-report-org",
        Kind::Single,
        "NAME",
        "--tls-reports: the reports' organization-name (default: HOSTNAME)",
    ),
    opt(
        "tls-report-from",
        Kind::Single,
        "ADDRESS",
        "--tls-reports: the reports' sender (default tlsrpt-noreply@HOSTNAME)",
    ),
    opt(
        "tls-report-contact",
        Kind::Single,
        "TEXT",
        "--tls-reports: the reports' contact-info (default: the sender)",
    ),
    opt(
        "tls-report-period",
        Kind::Single,
        "SECONDS",
        "--tls-reports: seconds per report (default 86400; for tests)",
    ),
];

/// Options of the delivery side (`serve`, `queue flush`).
const DELIVERY_OPTS: &[OptSpec] = &[
    opt(
        "delivery-workers",
        Kind::Single,
        "N",
        "delivery threads (default 32; 0 = receive and queue only)",
    ),
    opt(
        "max-per-destination",
        Kind::Single,
        "N",
        "concurrent connections per destination (default 20)",
    ),
    opt(
        "max-messages-per-connection",
        Kind::Single,
        "N",
        "messages on one outbound connection before it is closed (default 100)",
    ),
    opt(
        "destination-message-rate",
        Kind::Single,
        "RATE",
        "messages per destination, e.g. 100/min (N/s, N/min, N/h, N/d; default unlimited)",
    ),
    opt(
        "destination-connection-rate",
        Kind::Single,
        "RATE",
        "new connections per destination, e.g. 10/min (default unlimited)",
    ),
    opt(
        "throttle-backoff",
        Kind::Single,
        "DUR",
        "pause of a destination after a throttling reply (421, 4.7.x), doubling (default 1m)",
    ),
    opt(
        "throttle-backoff-max",
        Kind::Single,
        "DUR",
        "longest such pause (default 30m)",
    ),
    opt(
        "retry-min",
        Kind::Single,
        "DUR",
        "first retry delay, doubling per attempt (default 5m)",
    ),
    opt(
        "retry-max",
        Kind::Single,
        "DUR",
        "longest retry delay (default 4000s)",
    ),
    opt(
        "max-queue-age",
        Kind::Single,
        "DUR",
        "bounce what is still undelivered after this (default 5d)",
    ),
    opt(
        "delay-warning",
        Kind::Single,
        "DUR",
        "send a 'delayed' DSN once a message waited this long (default off)",
    ),
    opt(
        "delivery-timeout",
        Kind::Single,
        "DUR",
        "deadline for each outbound SMTP phase, whole reply (default: RFC 5321 4.5.3.2 values)",
    ),
    opt(
        "outbound-tls",
        Kind::Single,
        "may|encrypt|verify",
        "STARTTLS to next hops: when offered (default), required, or required and verified",
    ),
    opt(
        "secrets-file",
        Kind::Single,
        "FILE",
        "SMTP AUTH credentials for routes' auth = (KEY USER:PASSWORD lines, mode 0600)",
    ),
];

/// Options of `queue` subcommands (command line only).
const QUEUE_OPTS: &[OptSpec] = &[
    opt(
        "id",
        Kind::Multi,
        "ID",
        "select this message, repeatable (or give ids as arguments; - reads stdin)",
    ),
    opt(
        "from",
        Kind::Single,
        "PATTERN",
        "sender: address, *@domain glob, or domain; <> for bounces",
    ),
    opt(
        "to",
        Kind::Single,
        "PATTERN",
        "any recipient: address, glob, or domain",
    ),
    opt(
        "older-than",
        Kind::Single,
        "DUR",
        "arrived at least this long ago",
    ),
    opt(
        "state",
        Kind::Single,
        "STATE",
        "pending, deferred, held, sent, failed or bouncing",
    ),
    opt(
        "error",
        Kind::Single,
        "PATTERN",
        "text in a recipient's last reply (case-insensitive)",
    ),
    opt(
        "json",
        Kind::Flag,
        "",
        "list/show: one JSON object per line (schema \"v\": 1)",
    ),
    opt(
        "summary",
        Kind::Flag,
        "",
        "list: per destination domain, count, oldest, top error",
    ),
    opt("body", Kind::Flag, "", "show: print the raw message"),
    opt(
        "dry-run",
        Kind::Flag,
        "",
        "print what would change, change nothing",
    ),
    opt(
        "wait",
        Kind::Flag,
        "",
        "flush: wait until each message is delivered, failed or deferred again",
    ),
    opt(
        "wait-limit",
        Kind::Single,
        "DUR",
        "flush --wait: give up after this long (default 5m)",
    ),
    opt(
        "timeout",
        Kind::Single,
        "DUR",
        "flush: deprecated name of --wait-limit",
    ),
    opt(
        "quiet",
        Kind::Flag,
        "",
        "flush: no progress or summary output",
    ),
    opt(
        "for",
        Kind::Single,
        "DUR",
        "hold: release by itself after this long",
    ),
];

/// Every option a config file may name.
fn all_specs() -> Vec<&'static OptSpec> {
    ROUTING_OPTS
        .iter()
        .chain(SERVER_OPTS)
        .chain(PROXY_OPTS)
        .chain(DKIM_OPTS)
        .chain(LISTENER_OPTS)
        .chain(AUTHRES_OPTS)
        .chain(DELIVERY_OPTS)
        .chain(OPERATING_OPTS)
        .collect()
}

fn describe(out: &mut String, specs: &[OptSpec]) {
    for o in specs {
        let left = if o.kind == Kind::Flag {
            format!("--{}", o.name)
        } else {
            format!("--{} {}", o.name, o.hint)
        };
        out.push_str(&format!("  {left:<34} {}\n", o.desc));
    }
}

fn usage_text() -> String {
    let mut s = String::from(
        "smtp-relay: a store-and-forward SMTP relay\n\n\
         Usage:\n  \
         smtp-relay serve [OPTIONS]            run the relay (receive, queue, deliver); SIGHUP reloads\n  \
         smtp-relay check-config [OPTIONS]     check the configuration as a reload would (serve --check-config)\n  \
         smtp-relay route [OPTIONS] ADDRESS    show where a recipient would be sent, send nothing\n  \
         smtp-relay queue list|show|flush|hold|release|delete|bounce|requeue [OPTIONS] [ID...|-]\n  \
         smtp-relay send [-f SENDER] [-F NAME] [-t] [-i] [RCPT...]   queue a message from stdin\n  \
         smtp-relay sendmail ARGS...   sendmail's command line (also linked as sendmail, mailq)\n  \
         smtp-relay passwd USER [--auth-file FILE] [--user NAME]   set USER's AUTH password (stdin)\n  \
         smtp-relay dkim keygen DOMAIN SELECTOR [--algorithm rsa|ed25519] [--bits N] [--out FILE]\n  \
         smtp-relay --help | --version | --man\n\nOptions of every command:\n",
    );
    describe(&mut s, ROUTING_OPTS);
    s.push_str("\nReceiving (serve):\n");
    describe(&mut s, SERVER_OPTS);
    describe(&mut s, PROXY_OPTS);
    s.push_str("\nDKIM signing (serve; keys from 'smtp-relay dkim keygen'):\n");
    describe(&mut s, DKIM_OPTS);
    s.push_str("\nListeners with a mode, submission (serve):\n");
    describe(&mut s, LISTENER_OPTS);
    s.push_str("\nAuthentication results of inbound mail (serve):\n");
    describe(&mut s, AUTHRES_OPTS);
    s.push_str("\nDelivering (serve, queue flush):\n");
    describe(&mut s, DELIVERY_OPTS);
    s.push_str("\nMetrics and logs (serve):\n");
    describe(&mut s, OPERATING_OPTS);
    s.push_str("\nQueue commands (queue ...):\n");
    describe(&mut s, QUEUE_OPTS);
    s.push_str(
        "  -v, --verbose                      more log output (-vv: protocol trace); RUST_LOG also works\n\
         \nA flag is --FLAG or --FLAG=yes|no (=no turns off the config file's yes).\n\
         Durations: 250ms, 30s, 5m, 2h, 5d. Exit codes (sysexits; README lists them per\n\
         command): 0 ok, 64 usage, 65 data error (send), 66 no input, 69 unavailable\n\
         (route: permanently undeliverable), 71 OS error, 74 I/O error, 75 temporary\n\
         failure (route: not now), 77 no permission, 78 configuration error.\n",
    );
    s
}

/// One `name = value` line of the config file.
struct FileValue {
    value: String,
    line: usize,
}

/// The config file's values by option name, and where they came from.
#[derive(Default)]
struct ConfigFile {
    path: String,
    values: HashMap<String, Vec<FileValue>>,
    /// `[route DOMAIN]` sections, with the line of each header.
    routes: Vec<(StaticRoute, usize)>,
}

/// A `[route DOMAIN]` section being read.
struct RouteSection {
    domain: String,
    line: usize,
    hosts: Option<String>,
    tls: Option<RouteTls>,
    auth: Option<String>,
    auth_plaintext: bool,
    sender_auth: bool,
    shaping: crate::shaping::DestShaping,
}

impl RouteSection {
    /// The route, once the section's lines are all read.
    fn finish(self, path: &str) -> Result<(StaticRoute, usize), UsageError> {
        let bad = |why: String| {
            UsageError(format!(
                "{path}:{}: [route {}]: {why}",
                self.line, self.domain
            ))
        };
        let hosts = self
            .hosts
            .ok_or_else(|| bad("needs hosts = HOST[:PORT], ...".into()))?;
        if self.auth_plaintext && self.auth.is_none() && !self.sender_auth {
            return Err(bad("auth-plaintext = yes needs auth = USER".into()));
        }
        let auth = (self.auth.is_some() || self.sender_auth).then_some(RouteAuth {
            user: self.auth,
            by_sender: self.sender_auth,
            plaintext: self.auth_plaintext,
        });
        let route = StaticRoute::new(&self.domain, &hosts, self.tls)
            .map_err(bad)?
            .with_auth(auth)
            .with_shaping(self.shaping);
        Ok((route, self.line))
    }

    /// One `key = value` line inside the section.
    fn set(&mut self, key: &str, value: &str) -> Result<(), String> {
        match key {
            "hosts" => self.hosts = Some(value.to_string()),
            "tls" => self.tls = Some(RouteTls::parse(value)?),
            // a user name (or key) of --secrets-file; never the password
            "auth" => self.auth = Some(value.to_string()),
            "auth-plaintext" => self.auth_plaintext = section_flag(key, value)?,
            // credentials looked up by the envelope sender, `auth` the
            // fallback (README "Sender-dependent credentials")
            "sender-auth" => self.sender_auth = section_flag(key, value)?,
            "max-connections" => self.shaping.max_connections = Some(section_count(key, value)?),
            "max-messages-per-connection" => {
                self.shaping.max_messages_per_connection = Some(section_count(key, value)?)
            }
            "message-rate" => {
                self.shaping.message_rate = Some(crate::shaping::Rate::parse(value)?)
            }
            "connection-rate" => {
                self.shaping.connection_rate = Some(crate::shaping::Rate::parse(value)?)
            }
            other => {
                return Err(format!(
                    "unknown key {other:?} in a route section (hosts, tls, auth, auth-plaintext, sender-auth, max-connections, max-messages-per-connection, message-rate, connection-rate; options go before the first section)"
                ))
            }
        }
        Ok(())
    }
}

/// A route section's count above 0.
fn section_count(key: &str, value: &str) -> Result<usize, String> {
    value
        .parse::<usize>()
        .ok()
        .filter(|&n| n > 0)
        .ok_or_else(|| format!("{key} {value:?} is not a number above 0"))
}

/// A route section's `yes`/`no` value.
fn section_flag(key: &str, value: &str) -> Result<bool, String> {
    yes_no(value).ok_or_else(|| format!("{key} {value:?} is not yes or no"))
}

/// Option values from the command line, falling back to the config file.
struct Values {
    matches: getopts::Matches,
    file: ConfigFile,
}

/// A flag's value: `yes`/`true`/`1` or `no`/`false`/`0`.
fn yes_no(v: &str) -> Option<bool> {
    match v {
        "yes" | "true" | "1" => Some(true),
        "no" | "false" | "0" => Some(false),
        _ => None,
    }
}

impl Values {
    fn single(&self, name: &str) -> Option<String> {
        self.matches.opt_str(name).or_else(|| {
            self.file
                .values
                .get(name)
                .and_then(|v| v.last())
                .map(|v| v.value.clone())
        })
    }

    /// A flag, on the command line `--NAME` (= `--NAME=yes`) or
    /// `--NAME=no`, which wins over the config file's `NAME = yes|no`.
    fn flag(&self, name: &str) -> Result<bool, UsageError> {
        if self.matches.opt_present(name) {
            return match self.matches.opt_str(name) {
                None => Ok(true),
                Some(v) => yes_no(&v)
                    .ok_or_else(|| UsageError(format!("--{name}={v}: a flag takes =yes or =no"))),
            };
        }
        Ok(self
            .file
            .values
            .get(name)
            .and_then(|v| v.last())
            .and_then(|v| yes_no(&v.value))
            .unwrap_or(false))
    }

    fn multi(&self, name: &str) -> Option<Vec<String>> {
        let cli = self.matches.opt_strs(name);
        if !cli.is_empty() {
            return Some(cli);
        }
        self.file
            .values
            .get(name)
            .map(|v| v.iter().map(|v| v.value.clone()).collect())
    }

    /// Where `name`'s `value` was set: `""` on the command line,
    /// `"PATH:LINE: "` in the config file, for the front of an error.
    fn origin(&self, name: &str, value: &str) -> String {
        if self.matches.opt_present(name) {
            return String::new();
        }
        self.file
            .values
            .get(name)
            .and_then(|vs| vs.iter().rev().find(|v| v.value == value))
            .map(|v| format!("{}:{}: ", self.file.path, v.line))
            .unwrap_or_default()
    }

    /// `name`'s value turned into a `T` by `parse`; an error names the
    /// file and line when the value came from the config file.
    fn parse<T>(
        &self,
        name: &str,
        parse: impl FnOnce(&str) -> Result<T, UsageError>,
    ) -> Result<Option<T>, UsageError> {
        self.single(name)
            .map(|s| parse(&s).map_err(|e| UsageError(format!("{}{e}", self.origin(name, &s)))))
            .transpose()
    }

    /// Each of `name`'s values turned into a `T`, as [`Values::parse`].
    fn parse_multi<T>(
        &self,
        name: &str,
        parse: impl Fn(&str) -> Result<T, UsageError>,
    ) -> Result<Option<Vec<T>>, UsageError> {
        self.multi(name)
            .map(|vs| {
                vs.iter()
                    .map(|s| {
                        parse(s).map_err(|e| UsageError(format!("{}{e}", self.origin(name, s))))
                    })
                    .collect()
            })
            .transpose()
    }

    fn duration(&self, name: &str) -> Result<Option<Duration>, UsageError> {
        self.parse(name, |d| {
            parse_duration(d).map_err(|e| UsageError(format!("--{name}: {e}")))
        })
    }
}

/// Parses `argv` (without the program name).
pub fn parse(args: &[String]) -> Result<Cli, UsageError> {
    let Some(cmd) = args.first() else {
        return Err(UsageError(
            "missing command; try 'smtp-relay --help'".into(),
        ));
    };
    match cmd.as_str() {
        "-h" | "--help" | "help" => Ok(Cli::Help(usage_text())),
        "-V" | "--version" | "version" => Ok(Cli::Version),
        "--man" => Ok(Cli::Help(crate::manpage::render(&usage_text()))),
        "serve" => parse_serve(&args[1..]),
        "check-config" => match parse_serve(&args[1..])? {
            Cli::Serve(c) => Ok(Cli::CheckConfig(c)),
            other => Ok(other),
        },
        "route" => parse_route(&args[1..]),
        "queue" => parse_queue(&args[1..]),
        "send" => parse_send(&args[1..]),
        "passwd" => parse_passwd(&args[1..]),
        "dkim" => parse_dkim(&args[1..]),
        other => Err(UsageError(format!(
            "unknown command {other:?}; try 'smtp-relay --help'"
        ))),
    }
}

fn options(specs: &[&OptSpec]) -> getopts::Options {
    let mut o = getopts::Options::new();
    for s in specs {
        match s.kind {
            // `--NAME` or `--NAME=yes|no` (the `=` is needed: GNU getopt's
            // rule for optional arguments)
            Kind::Flag => o.optflagopt("", s.name, s.desc, "yes|no"),
            Kind::Single => o.optopt("", s.name, s.desc, s.hint),
            Kind::Multi => o.optmulti("", s.name, s.desc, s.hint),
        };
    }
    o.optflagmulti("v", "verbose", "more log output");
    o.optflag("h", "help", "show this help");
    o
}

/// The configuration file read when `--config` is not given.
pub const DEFAULT_CONFIG: &str = "/etc/smtp-relay.conf";

/// Names another configuration file than [`DEFAULT_CONFIG`].
pub const CONFIG_ENV: &str = "SMTP_RELAY_CONFIG";

/// Every command's settings file: `--config FILE`, else the file that
/// `$SMTP_RELAY_CONFIG` names (it must exist, like `--config`'s), else
/// `/etc/smtp-relay.conf` when there is one; without any, the built-in
/// defaults. So `send` and the queue commands find the spool the server
/// was configured with, wherever they run.
///
/// The file is read here, in the CLI layer, and nowhere else: it is the
/// command line's other half (its values are option values, checked by
/// the same code, and its errors are usage errors naming a line), and
/// everything after parsing (app.rs) then works from plain data.
fn config_file(explicit: Option<String>) -> Result<ConfigFile, UsageError> {
    if let Some(path) = explicit {
        return read_config_file(&path);
    }
    if let Some(path) = std::env::var_os(CONFIG_ENV).filter(|p| !p.is_empty()) {
        return read_config_file(&path.to_string_lossy());
    }
    match std::fs::metadata(DEFAULT_CONFIG) {
        Ok(_) => read_config_file(DEFAULT_CONFIG),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(ConfigFile::default()),
        Err(e) => Err(UsageError(format!("config file {DEFAULT_CONFIG}: {e}"))),
    }
}

/// A config line without its comment: `#` starts a comment at the start
/// of the line or after a space or tab; a `#` inside a word (`a#b`) is
/// part of the value.
fn strip_comment(line: &str) -> &str {
    let bytes = line.as_bytes();
    for (i, &b) in bytes.iter().enumerate() {
        if b == b'#' && (i == 0 || matches!(bytes[i - 1], b' ' | b'\t')) {
            return &line[..i];
        }
    }
    line
}

/// Reads `name = value` lines; unknown names are errors naming the line.
fn read_config_file(path: &str) -> Result<ConfigFile, UsageError> {
    let specs = all_specs();
    let text = std::fs::read_to_string(path)
        .map_err(|e| UsageError(format!("config file {path}: {e}")))?;
    let mut out: HashMap<String, Vec<FileValue>> = HashMap::new();
    let mut routes: Vec<(StaticRoute, usize)> = Vec::new();
    let mut section: Option<RouteSection> = None;
    for (n, line) in text.lines().enumerate() {
        let line = strip_comment(line).trim();
        if line.is_empty() {
            continue;
        }
        let bad = |why: &str| UsageError(format!("{path}:{}: {why}", n + 1));
        if let Some(header) = line.strip_prefix('[') {
            let inner = header
                .strip_suffix(']')
                .ok_or_else(|| bad("expected '[route DOMAIN]'"))?;
            let (kind, domain) = inner
                .trim()
                .split_once(char::is_whitespace)
                .unwrap_or((inner, ""));
            if kind != "route" || domain.trim().is_empty() {
                return Err(bad(&format!(
                    "unknown section [{inner}] (expected [route DOMAIN])"
                )));
            }
            if let Some(done) = section.take() {
                routes.push(done.finish(path)?);
            }
            section = Some(RouteSection {
                domain: domain.trim().to_string(),
                line: n + 1,
                hosts: None,
                tls: None,
                auth: None,
                auth_plaintext: false,
                sender_auth: false,
                shaping: Default::default(),
            });
            continue;
        }
        let (name, value) = line
            .split_once('=')
            .map(|(a, b)| (a.trim(), b.trim()))
            .ok_or_else(|| bad("expected 'name = value'"))?;
        if let Some(sec) = section.as_mut() {
            if value.is_empty() {
                return Err(bad(&format!("{name} needs a value")));
            }
            sec.set(name, value)
                .map_err(|e| bad(&format!("[route {}]: {e}", sec.domain)))?;
            continue;
        }
        let spec = specs
            .iter()
            .find(|s| s.name == name && !matches!(s.name, "config" | "check-config"))
            .ok_or_else(|| bad(&format!("unknown option {name:?}")))?;
        if value.is_empty() {
            return Err(bad(&format!("{name} needs a value")));
        }
        if spec.kind == Kind::Flag && yes_no(value).is_none() {
            return Err(bad(&format!("{name} takes yes or no")));
        }
        let entry = out.entry(name.to_string()).or_default();
        if spec.kind == Kind::Single {
            entry.clear();
        }
        entry.push(FileValue {
            value: value.to_string(),
            line: n + 1,
        });
    }
    if let Some(done) = section.take() {
        routes.push(done.finish(path)?);
    }
    Ok(ConfigFile {
        path: path.to_string(),
        values: out,
        routes,
    })
}

fn parse_values(args: &[String], specs: &[&OptSpec], free: usize) -> Result<Values, UsageError> {
    let matches = options(specs)
        .parse(args)
        .map_err(|e| UsageError(e.to_string()))?;
    if let Some(extra) = matches.free.get(free) {
        return Err(UsageError(format!("unexpected argument {extra:?}")));
    }
    let file = config_file(matches.opt_str("config"))?;
    Ok(Values { matches, file })
}

fn number<T: std::str::FromStr>(name: &str, v: &str) -> Result<T, UsageError> {
    v.parse()
        .map_err(|_| UsageError(format!("--{name}: {v:?} is not a valid number")))
}

fn positive(name: &str, v: &str) -> Result<usize, UsageError> {
    let n: usize = number(name, v)?;
    if n == 0 {
        return Err(UsageError(format!("--{name} must be at least 1")));
    }
    Ok(n)
}

/// `10485760`, `10M`, `512k`, `1G` (powers of 1024).
fn parse_size(name: &str, v: &str) -> Result<u64, UsageError> {
    let (num, mult) = match v.chars().last() {
        Some('k' | 'K') => (&v[..v.len() - 1], 1024),
        Some('m' | 'M') => (&v[..v.len() - 1], 1024 * 1024),
        Some('g' | 'G') => (&v[..v.len() - 1], 1024 * 1024 * 1024),
        _ => (v, 1),
    };
    let n: u64 = number(name, num)?;
    n.checked_mul(mult)
        .filter(|&n| n > 0)
        .ok_or_else(|| UsageError(format!("--{name}: {v:?} is out of range")))
}

fn endpoint(name: &str, v: &str) -> Result<Endpoint, UsageError> {
    Endpoint::parse(v).ok_or_else(|| UsageError(format!("--{name}: {v:?} is not ADDR:PORT")))
}

fn parse_serve(args: &[String]) -> Result<Cli, UsageError> {
    let specs = all_specs();
    let v = parse_values(args, &specs, 0)?;
    if v.matches.opt_present("help") {
        return Ok(Cli::Help(usage_text()));
    }
    let mut c = Config::new();
    apply_routing(&v, &mut c)?;
    apply_server(&v, &mut c)?;
    apply_proxy(&v, &mut c)?;
    apply_dkim(&v, &mut c)?;
    apply_listeners(&v, &mut c)?;
    apply_auth_results(&v, &mut c)?;
    apply_delivery(&v, &mut c)?;
    apply_operating(&v, &mut c)?;
    c.verbosity = v.matches.opt_count("verbose");
    c.config_file = (!v.file.path.is_empty()).then(|| PathBuf::from(&v.file.path));
    if v.flag("check-config")? {
        return Ok(Cli::CheckConfig(c));
    }
    Ok(Cli::Serve(c))
}

fn parse_route(args: &[String]) -> Result<Cli, UsageError> {
    let specs: Vec<&OptSpec> = ROUTING_OPTS.iter().collect();
    let v = parse_values(args, &specs, 1)?;
    if v.matches.opt_present("help") {
        return Ok(Cli::Help(usage_text()));
    }
    let Some(address) = v.matches.free.first().cloned() else {
        return Err(UsageError(
            "route needs an ADDRESS, e.g. user@example.org".into(),
        ));
    };
    let mut c = Config::new();
    apply_routing(&v, &mut c)?;
    c.verbosity = v.matches.opt_count("verbose");
    Ok(Cli::Route { config: c, address })
}

fn parse_queue(args: &[String]) -> Result<Cli, UsageError> {
    let Some(sub) = args.first() else {
        return Err(UsageError(
            "queue needs a subcommand: list, show, flush, hold, release, delete, bounce or requeue"
                .into(),
        ));
    };
    if matches!(sub.as_str(), "-h" | "--help") {
        return Ok(Cli::Help(usage_text()));
    }
    let specs: Vec<&OptSpec> = ROUTING_OPTS
        .iter()
        .chain(DELIVERY_OPTS)
        .chain(QUEUE_OPTS)
        .collect();
    let v = parse_values(&args[1..], &specs, usize::MAX)?;
    if v.matches.opt_present("help") {
        return Ok(Cli::Help(usage_text()));
    }
    let mut config = Config::new();
    apply_routing(&v, &mut config)?;
    apply_delivery(&v, &mut config)?;
    config.verbosity = v.matches.opt_count("verbose");
    let m = &v.matches;
    let dur = |name: &str| -> Result<Option<Duration>, UsageError> {
        m.opt_str(name)
            .map(|d| parse_duration(&d).map_err(|e| UsageError(format!("--{name}: {e}"))))
            .transpose()
    };
    let mut sel = Selector::default();
    let mut ids_from_stdin = false;
    let mut positional: Vec<String> = Vec::new();
    for a in m.opt_strs("id").into_iter().chain(m.free.iter().cloned()) {
        if a == "-" {
            ids_from_stdin = true;
        } else {
            positional.push(a);
        }
    }
    let flag = |n: &str| v.flag(n);
    let mut warnings = Vec::new();
    let cmd = match sub.as_str() {
        "list" => QueueCmd::List {
            json: flag("json")?,
            summary: flag("summary")?,
        },
        "show" => {
            if positional.len() != 1 || ids_from_stdin {
                return Err(UsageError("queue show takes exactly one ID".into()));
            }
            QueueCmd::Show {
                id: positional.remove(0),
                body: flag("body")?,
                json: flag("json")?,
            }
        }
        "flush" => {
            // `--timeout` once meant this too; it is `serve`'s idle
            // deadline now, and here only an old spelling
            let old = dur("timeout")?;
            if old.is_some() {
                warnings.push("queue flush --timeout is deprecated: use --wait-limit".to_string());
            }
            QueueCmd::Flush {
                wait: flag("wait")?,
                timeout: dur("wait-limit")?
                    .or(old)
                    .unwrap_or(Duration::from_secs(300)),
                quiet: flag("quiet")?,
            }
        }
        "hold" => QueueCmd::Hold {
            duration: dur("for")?,
        },
        "release" => QueueCmd::Release,
        "delete" => QueueCmd::Delete,
        "bounce" => QueueCmd::Bounce,
        "requeue" => QueueCmd::Requeue,
        other => return Err(UsageError(format!("unknown queue subcommand {other:?}"))),
    };
    if !matches!(cmd, QueueCmd::Show { .. }) {
        for p in &positional {
            sel.ids.push(
                QueueId::parse(p).ok_or_else(|| UsageError(format!("{p:?} is not a queue id")))?,
            );
        }
    }
    sel.from = m.opt_str("from");
    sel.to = m.opt_str("to");
    sel.older_than = dur("older-than")?;
    if let Some(st) = m.opt_str("state") {
        sel.state = Some(StateFilter::parse(&st).ok_or_else(|| {
            UsageError(format!(
                "--state: {st:?} is not pending, deferred, held, sent, failed or bouncing"
            ))
        })?);
    }
    sel.error = m.opt_str("error");
    // the destructive commands never act on the whole queue by accident
    if matches!(cmd, QueueCmd::Delete | QueueCmd::Bounce) && sel.is_empty() && !ids_from_stdin {
        return Err(UsageError(format!(
            "queue {sub} needs a selector (ids, -, --from, --to, --state, --older-than or --error)"
        )));
    }
    Ok(Cli::Queue {
        config,
        cmd,
        sel,
        dry_run: flag("dry-run")?,
        ids_from_stdin,
        warnings,
    })
}

/// Where `passwd` writes when neither `--auth-file` nor a config file
/// says.
pub const DEFAULT_AUTH_FILE: &str = "smtp-relay.passwd";

fn parse_passwd(args: &[String]) -> Result<Cli, UsageError> {
    let mut o = getopts::Options::new();
    o.optopt("", "auth-file", "password file", "FILE");
    o.optopt("", "config", "config file (its auth-file and user)", "FILE");
    o.optopt("", "user", "give the file to NAME (serve --user)", "NAME");
    o.optflag("h", "help", "show this help");
    let m = o.parse(args).map_err(|e| UsageError(e.to_string()))?;
    if m.opt_present("help") {
        return Ok(Cli::Help(usage_text()));
    }
    let file = config_file(m.opt_str("config"))?;
    let v = Values { matches: m, file };
    let [user] = v.matches.free.as_slice() else {
        return Err(UsageError("passwd takes exactly one USER".into()));
    };
    if !crate::auth::valid_user(user) {
        return Err(UsageError(format!(
            "{user:?} is not a valid user name (no ':', spaces or control characters)"
        )));
    }
    let file = v
        .single("auth-file")
        .unwrap_or_else(|| DEFAULT_AUTH_FILE.to_string());
    let owner = match v.single("user") {
        Some(u) => Some(
            crate::sys::lookup_user(&u).map_err(|e| UsageError(format!("--user: {u:?}: {e}")))?,
        ),
        None => None,
    };
    Ok(Cli::Passwd {
        file: PathBuf::from(file),
        user: user.clone(),
        owner,
    })
}

fn parse_send(args: &[String]) -> Result<Cli, UsageError> {
    let mut o = getopts::Options::new();
    for spec in ROUTING_OPTS
        .iter()
        .chain(SERVER_OPTS)
        .filter(|s| matches!(s.name, "config" | "spool" | "hostname" | "max-size"))
    {
        o.optopt("", spec.name, spec.desc, spec.hint);
    }
    // what local injection runs before its commit: the milters serving
    // `local` and DKIM signing (README "Mail injected on this host")
    for spec in DKIM_OPTS.iter().chain(
        ROUTING_OPTS
            .iter()
            .chain(SERVER_OPTS)
            .filter(|s| s.name == "milter"),
    ) {
        match spec.kind {
            Kind::Multi => o.optmulti("", spec.name, spec.desc, spec.hint),
            _ => o.optopt("", spec.name, spec.desc, spec.hint),
        };
    }
    o.optopt("f", "", "envelope sender", "SENDER");
    o.optflag("t", "", "recipients from To/Cc/Bcc");
    o.optopt("F", "", "full name for the From: field added", "NAME");
    o.optflag("i", "", "a lone dot does not end the message");
    o.optmulti("o", "", "sendmail option (only -oi is understood)", "OPT");
    o.optflagmulti("v", "verbose", "more log output");
    let m = o.parse(args).map_err(|e| UsageError(e.to_string()))?;
    let file = config_file(m.opt_str("config"))?;
    let v = Values { matches: m, file };
    let mut config = Config::new();
    if let Some(sp) = v.single("spool") {
        config.spool = PathBuf::from(sp);
    }
    if let Some(h) = v.single("hostname") {
        Domain::parse(&h, false).map_err(|e| UsageError(format!("--hostname: {h:?}: {e}")))?;
        config.hostname = h;
    }
    // the largest message, as serve's (the config file's max-size too)
    if let Some(m) = v.single("max-size") {
        config.max_size = parse_size("max-size", &m)?;
    }
    config.verbosity = v.matches.opt_count("verbose");
    apply_dkim(&v, &mut config)?;
    apply_milters(&v, &mut config)?;
    let mut ignore_dots = v.matches.opt_present("i");
    for opt in v.matches.opt_strs("o") {
        match opt.as_str() {
            "i" => ignore_dots = true,
            other => {
                return Err(UsageError(format!(
                    "-o{other}: unsupported sendmail option"
                )))
            }
        }
    }
    let opts = SendOpts {
        from: v.matches.opt_str("f"),
        extract: v.matches.opt_present("t"),
        ignore_dots,
        rcpts: v.matches.free.clone(),
        full_name: v.matches.opt_str("F"),
        author: None,
        via: Default::default(),
    };
    if opts.rcpts.is_empty() && !opts.extract {
        return Err(UsageError(
            "send needs recipients, or -t to take them from the headers".into(),
        ));
    }
    Ok(Cli::Send { config, opts })
}

/// `--milter`, each parsed whole (`serve`, and `send` for `listeners=local`).
fn apply_milters(v: &Values, c: &mut Config) -> Result<(), UsageError> {
    if let Some(m) = v.parse_multi("milter", |s| {
        crate::milter::MilterConfig::parse(s, crate::time::parse_duration)
            .map_err(|e| UsageError(format!("--milter: {e}")))
    })? {
        c.milters = m;
    }
    Ok(())
}

fn apply_routing(v: &Values, c: &mut Config) -> Result<(), UsageError> {
    if let Some(s) = v.single("spool") {
        c.spool = PathBuf::from(s);
    }
    if let Some(h) = v.parse("hostname", |h| {
        Domain::parse(h, false)
            .map(|_| h.to_string())
            .map_err(|e| UsageError(format!("--hostname: {h:?}: {e}")))
    })? {
        c.hostname = h;
    }
    if let Some(routes) = v.parse_multi("route", |r| {
        StaticRoute::parse(r).map_err(|e| UsageError(format!("--route: {r:?}: {e}")))
    })? {
        c.routes = routes;
    }
    // the file's [route] sections join its `route =` lines; a --route on
    // the command line replaces them all
    if !v.matches.opt_present("route") {
        for (route, line) in &v.file.routes {
            if c.routes.iter().any(|r| r.same_domain(route)) {
                return Err(UsageError(format!(
                    "{}:{line}: a second route for the domain of {route}",
                    v.file.path
                )));
            }
            c.routes.push(route.clone());
        }
    }
    if let Some(d) = v.parse("dns", |d| endpoint("dns", d))? {
        c.dns = Some(d);
    }
    c.no_dns = v.flag("no-dns")?;
    if let Some(p) = v.parse("smtp-port", |p| {
        number::<u16>("smtp-port", p).and_then(|p| {
            if p == 0 {
                Err(UsageError("--smtp-port must be 1-65535".into()))
            } else {
                Ok(p)
            }
        })
    })? {
        c.smtp_port = p;
    }
    c.honor_source_routes = v.flag("honor-source-routes")?;
    c.mta_sts = v.flag("mta-sts")?;
    if let Some(p) = v.parse("mta-sts-port", |p| number::<u16>("mta-sts-port", p))? {
        if p == 0 {
            return Err(UsageError("--mta-sts-port must be 1-65535".into()));
        }
        c.mta_sts_port = p;
    }
    c.ca_file = v.single("ca-file").map(PathBuf::from);
    c.dane = v.flag("dane")?;
    c.dnssec_trust_anchor = v.single("dnssec-trust-anchor").map(PathBuf::from);
    if c.dnssec_trust_anchor.is_some() && !c.dane {
        return Err(UsageError("--dnssec-trust-anchor needs --dane".into()));
    }
    tls_report_options(v, c)
}

/// `--tls-reports` and its settings (RFC 8460, README "TLS reporting").
fn tls_report_options(v: &Values, c: &mut Config) -> Result<(), UsageError> {
    c.tls_reports = v.flag("tls-reports")?;
    c.tls_report_org = v.single("tls-report-org");
    c.tls_report_contact = v.single("tls-report-contact");
    if let Some(m) = v.parse("tls-report-from", |a| {
        crate::smtp::Mailbox::parse(a.trim_start_matches('<').trim_end_matches('>'), true)
            .map_err(|e| UsageError(format!("--tls-report-from: {a:?}: {e}")))
    })? {
        c.tls_report_from = Some(m);
    }
    if let Some(p) = v.parse("tls-report-period", |p| positive("tls-report-period", p))? {
        c.tls_report_period = p as u64;
    }
    for (name, set) in [
        ("tls-report-org", c.tls_report_org.is_some()),
        ("tls-report-contact", c.tls_report_contact.is_some()),
        ("tls-report-from", c.tls_report_from.is_some()),
        ("tls-report-period", c.tls_report_period != 86_400),
    ] {
        if set && !c.tls_reports {
            return Err(UsageError(format!("--{name} needs --tls-reports")));
        }
    }
    let text = [&c.tls_report_org, &c.tls_report_contact];
    if text.iter().any(|t| {
        t.as_deref()
            .is_some_and(|t| t.is_empty() || t.chars().any(char::is_control))
    }) {
        return Err(UsageError(
            "--tls-report-org and --tls-report-contact must be one line of text".into(),
        ));
    }
    Ok(())
}

/// A duration option that must be more than 0.
fn nonzero(v: &Values, name: &str) -> Result<Option<Duration>, UsageError> {
    v.parse(name, |s| {
        let d = parse_duration(s).map_err(|e| UsageError(format!("--{name}: {e}")))?;
        if d.is_zero() {
            return Err(UsageError(format!("--{name} must be more than 0")));
        }
        Ok(d)
    })
}

fn apply_server(v: &Values, c: &mut Config) -> Result<(), UsageError> {
    if let Some(l) = v.parse_multi("listen", |a| endpoint("listen", a))? {
        c.listen = l;
    }
    if let Some(n) = v.parse("workers", |n| positive("workers", n))? {
        c.workers = n;
    }
    if let Some(n) = v.parse("backlog", |n| positive("backlog", n))? {
        c.backlog = n;
    }
    if let Some(nets) = v.parse_multi("relay-net", |n| {
        Cidr::parse(n).map_err(|e| UsageError(format!("--relay-net: {e}")))
    })? {
        c.relay_nets = nets;
    }
    if let Some(ds) = v.parse_multi("relay-domain", |d| {
        Domain::parse(d.trim_end_matches('.'), true)
            .map_err(|e| UsageError(format!("--relay-domain: {d:?}: {e}")))
    })? {
        c.relay_domains = ds;
    }
    if let Some(s) = v.parse("max-size", |s| parse_size("max-size", s))? {
        c.max_size = s;
    }
    if let Some(n) = v.parse("max-recipients", |n| positive("max-recipients", n))? {
        c.max_recipients = n;
    }
    if let Some(n) = v.parse("max-hops", |n| positive("max-hops", n))? {
        c.max_hops = n;
    }
    if let Some(t) = nonzero(v, "timeout")? {
        c.timeout = t;
    }
    if let Some(t) = nonzero(v, "data-timeout")? {
        c.data_timeout = t;
    }
    if let Some(n) = v.parse("max-per-ip", |n| positive("max-per-ip", n))? {
        c.max_per_ip = n;
    }
    if let Some(s) = v.parse("min-free-space", |s| {
        if s == "0" {
            Ok(0)
        } else {
            parse_size("min-free-space", s)
        }
    })? {
        c.min_free_space = s;
    }
    if let Some(m) = v.parse("sync", |m| match m {
        "syncfs" => Ok(crate::config::SyncMode::Syncfs),
        "fsync" => Ok(crate::config::SyncMode::Fsync),
        _ => Err(UsageError(format!("--sync: {m:?} is not syncfs or fsync"))),
    })? {
        c.sync = m;
    }
    // the user, the files and the names are looked up by app.rs at start
    c.user = v.single("user");
    match (v.single("tls-cert"), v.single("tls-key")) {
        (Some(cert), Some(key)) => {
            c.tls = Some(TlsFiles {
                cert: PathBuf::from(cert),
                key: PathBuf::from(key),
            });
        }
        (None, None) => {}
        _ => return Err(UsageError("--tls-cert and --tls-key go together".into())),
    }
    c.require_tls = v.flag("require-tls")?;
    c.auth_file = v.single("auth-file").map(PathBuf::from);
    if let Some(n) = v.single("auth-max-failures") {
        c.auth_limits.per_address = number("auth-max-failures", &n)?;
    }
    if let Some(n) = v.single("auth-max-user-failures") {
        c.auth_limits.per_user = number("auth-max-user-failures", &n)?;
    }
    if let Some(t) = v.duration("auth-failure-window")? {
        if t.is_zero() {
            return Err(UsageError(
                "--auth-failure-window must be more than 0".into(),
            ));
        }
        c.auth_limits.window = t;
    }
    apply_edge_lists(v, &mut c.edge)?;
    apply_milters(v, c)?;
    if c.require_tls && c.tls.is_none() {
        return Err(UsageError(
            "--require-tls needs --tls-cert and --tls-key".into(),
        ));
    }
    apply_edge(v, c)?;
    if let Some(b) = v.parse("bare-lf", |b| match b {
        "reject" => Ok(BareLineEndings::Reject),
        "normalize" => Ok(BareLineEndings::Normalize),
        _ => Err(UsageError(format!(
            "--bare-lf: {b:?} is not reject or normalize"
        ))),
    })? {
        c.bare_line_endings = b;
    }
    Ok(())
}

/// The DNS lists, the policy service and the rate limits (issue 13).
fn apply_edge_lists(v: &Values, e: &mut crate::edge::EdgeConfig) -> Result<(), UsageError> {
    use crate::edge::dnsbl::{parse_zone, DnsblConfig, RejectAt};
    use crate::edge::policy::{DefaultAction, PolicyConfig, Target};
    if let Some(lists) = v.parse_multi("dnsbl", |s| {
        DnsblConfig::parse_blocklist(s).map_err(|e| UsageError(format!("--dnsbl: {e}")))
    })? {
        e.dnsbl.blocklists = lists;
    }
    if let Some(lists) = v.parse_multi("dnswl", |s| {
        parse_zone(s).map_err(|e| UsageError(format!("--dnswl: {e}")))
    })? {
        e.dnsbl.allowlists = lists;
    }
    if let Some(n) = v.parse("dnsbl-threshold", |n| number("dnsbl-threshold", n))? {
        if n == 0 {
            return Err(UsageError("--dnsbl-threshold must be 1 or more".into()));
        }
        e.dnsbl.threshold = n;
    }
    if let Some(at) = v.parse("dnsbl-reject-at", |s| match s {
        "rcpt" => Ok(RejectAt::Rcpt),
        "connect" => Ok(RejectAt::Connect),
        _ => Err(UsageError(format!(
            "--dnsbl-reject-at: {s:?} is not rcpt or connect"
        ))),
    })? {
        e.dnsbl.reject_at = at;
    }
    if let Some(t) = nonzero(v, "dnsbl-timeout")? {
        e.dnsbl_timeout = t;
    }
    e.policy = v
        .parse("policy-service", |s| {
            Target::parse(s).map_err(|e| UsageError(format!("--policy-service: {e}")))
        })?
        .map(PolicyConfig::new);
    let policy_opts = ["policy-at", "policy-timeout", "policy-default-action"];
    let Some(p) = e.policy.as_mut() else {
        if let Some(o) = policy_opts.iter().find(|o| v.single(o).is_some()) {
            return Err(UsageError(format!("--{o} needs --policy-service")));
        }
        return apply_rates(v, e);
    };
    if let Some((r, d)) = v.parse("policy-at", |s| match s {
        "rcpt" => Ok((true, false)),
        "data" => Ok((false, true)),
        "both" => Ok((true, true)),
        _ => Err(UsageError(format!(
            "--policy-at: {s:?} is not rcpt, data or both"
        ))),
    })? {
        (p.at_rcpt, p.at_end) = (r, d);
    }
    if let Some(t) = nonzero(v, "policy-timeout")? {
        p.timeout = t;
    }
    if let Some(a) = v.parse("policy-default-action", |s| match s {
        "defer" => Ok(DefaultAction::Defer),
        "dunno" => Ok(DefaultAction::Dunno),
        _ => Err(UsageError(format!(
            "--policy-default-action: {s:?} is not defer or dunno"
        ))),
    })? {
        p.default_action = a;
    }
    apply_rates(v, e)
}

fn apply_rates(v: &Values, e: &mut crate::edge::EdgeConfig) -> Result<(), UsageError> {
    if let Some(n) = v.parse("rate-connections", |n| number("rate-connections", n))? {
        e.rates.connections = n;
    }
    if let Some(n) = v.parse("rate-messages", |n| number("rate-messages", n))? {
        e.rates.messages = n;
    }
    if let Some(n) = v.parse("rate-recipients", |n| number("rate-recipients", n))? {
        e.rates.recipients = n;
    }
    Ok(())
}

/// The inbound edge: recipient validation, access rules, postmaster.
/// The files are read by `app.rs` at start.
fn apply_edge(v: &Values, c: &mut Config) -> Result<(), UsageError> {
    let relay_domain = |opt: &str, d: &str| {
        let domain = Domain::parse(d.trim_end_matches('.'), true)
            .map_err(|e| UsageError(format!("--{opt}: {d:?}: {e}")))?;
        if !c.is_relay_domain(&domain) {
            return Err(UsageError(format!(
                "--{opt}: {d:?} is not a --relay-domain"
            )));
        }
        Ok(domain)
    };
    let (mut tables, mut verify) = (c.recipient_tables.clone(), c.verify_domains.clone());
    if let Some(t) = v.parse_multi("recipients", |r| {
        let (d, f) = r
            .split_once('=')
            .filter(|(_, f)| !f.is_empty())
            .ok_or_else(|| UsageError(format!("--recipients: {r:?} is not DOMAIN=FILE")))?;
        Ok((relay_domain("recipients", d)?, PathBuf::from(f)))
    })? {
        tables = t;
    }
    if let Some(d) = v.parse_multi("verify-recipients", |d| {
        relay_domain("verify-recipients", d)
    })? {
        verify = d;
    }
    c.recipient_tables = tables;
    c.verify_domains = verify;
    if let Some(t) = nonzero(v, "verify-timeout")? {
        c.verify.timeout = t;
    }
    if let Some(t) = nonzero(v, "verify-positive-ttl")? {
        c.verify.positive_ttl = t;
    }
    if let Some(t) = nonzero(v, "verify-negative-ttl")? {
        c.verify.negative_ttl = t;
    }
    if let Some(n) = v.parse("verify-cache-size", |n| positive("verify-cache-size", n))? {
        c.verify.cache_size = n;
    }
    c.access_file = v.single("access").map(PathBuf::from);
    if let Some(m) = v.parse("postmaster", |a| {
        crate::smtp::Mailbox::parse(a.trim_start_matches('<').trim_end_matches('>'), true)
            .map_err(|e| UsageError(format!("--postmaster: {a:?}: {e}")))
    })? {
        c.postmaster = Some(m);
    }
    Ok(())
}

/// `--proxy-protocol` and `--proxy-from`: one without the other is a
/// mistake (trusting no one, or a list that does nothing).
fn apply_proxy(v: &Values, c: &mut Config) -> Result<(), UsageError> {
    let from = v
        .parse_multi("proxy-from", |n| {
            Cidr::parse(n).map_err(|e| UsageError(format!("--proxy-from: {e}")))
        })?
        .unwrap_or_default();
    match (v.flag("proxy-protocol")?, from.is_empty()) {
        (true, false) => c.proxy_protocol = Some(from),
        (false, true) => {}
        (true, true) => {
            return Err(UsageError(
                "--proxy-protocol needs --proxy-from CIDR (the proxies trusted to name the client)"
                    .into(),
            ))
        }
        (false, false) => {
            return Err(UsageError(
                "--proxy-from does nothing without --proxy-protocol".into(),
            ))
        }
    }
    Ok(())
}

/// `--listen-tls`, `--submission`, `--submission-tls` and the submission
/// settings. The default `--listen` applies only when no listener of any
/// kind is given.
fn apply_listeners(v: &Values, c: &mut Config) -> Result<(), UsageError> {
    use crate::config::{ListenMode, Listener};
    for (name, implicit_tls, submission) in [
        ("listen-tls", true, false),
        ("submission", false, true),
        ("submission-tls", true, true),
    ] {
        let mode = ListenMode {
            implicit_tls,
            submission,
            auth_results: false,
        };
        for endpoint in v
            .parse_multi(name, |a| endpoint(name, a))?
            .unwrap_or_default()
        {
            c.listeners.push(Listener { endpoint, mode });
        }
    }
    if !c.listeners.is_empty() && v.multi("listen").is_none() {
        c.listen.clear();
    }
    // RFC 8314 §3.3: TLS from the first byte needs our certificate
    if let Some(l) = c.listeners.iter().find(|l| l.mode.implicit_tls) {
        if c.tls.is_none() {
            return Err(UsageError(format!(
                "{} {} needs --tls-cert and --tls-key (TLS from the first byte)",
                l.mode.option(),
                l.endpoint
            )));
        }
    }
    // RFC 6409 §4.3 / RFC 4954: a submission server authenticates its users
    if let Some(l) = c.listeners.iter().find(|l| l.mode.submission) {
        if c.auth_file.is_none() {
            return Err(UsageError(format!(
                "{} {} needs --auth-file (submission requires AUTH, RFC 6409 §4.3)",
                l.mode.option(),
                l.endpoint
            )));
        }
    }
    c.sender_map = v.single("sender-map").map(PathBuf::from);
    if let Some(f) = v.parse("submission-fixups", |f| {
        yes_no(f).ok_or_else(|| UsageError(format!("--submission-fixups: {f:?} is not yes or no")))
    })? {
        c.submission_fixups = f;
    }
    c.submission_plaintext_auth = v.flag("submission-plaintext-auth")?;
    c.sender_check_from = v.flag("sender-check-from")?;
    Ok(())
}

/// The per-destination defaults and the throttling backoff (README
/// "Traffic shaping").
fn apply_shaping(v: &Values, s: &mut crate::shaping::Shaping) -> Result<(), UsageError> {
    if let Some(n) = v.parse("max-per-destination", |n| {
        positive("max-per-destination", n)
    })? {
        s.max_connections = n;
    }
    if let Some(n) = v.parse("max-messages-per-connection", |n| {
        positive("max-messages-per-connection", n)
    })? {
        s.max_messages_per_connection = n;
    }
    let rate = |name: &'static str| {
        v.parse(name, |r| {
            crate::shaping::Rate::parse(r).map_err(|e| UsageError(format!("--{name}: {e}")))
        })
    };
    if let Some(r) = rate("destination-message-rate")? {
        s.message_rate = Some(r);
    }
    if let Some(r) = rate("destination-connection-rate")? {
        s.connection_rate = Some(r);
    }
    if let Some(d) = nonzero(v, "throttle-backoff")? {
        s.backoff_min = d;
    }
    if let Some(d) = nonzero(v, "throttle-backoff-max")? {
        s.backoff_max = d;
    }
    if s.backoff_max < s.backoff_min {
        return Err(UsageError(
            "--throttle-backoff-max must not be less than --throttle-backoff".into(),
        ));
    }
    Ok(())
}

fn apply_delivery(v: &Values, c: &mut Config) -> Result<(), UsageError> {
    // 0 = receive only: mail stays queued for `queue flush` or a later run
    if let Some(n) = v.parse("delivery-workers", |n| number("delivery-workers", n))? {
        c.delivery_workers = n;
    }
    apply_shaping(v, &mut c.shaping)?;
    if let Some(d) = v.duration("retry-min")? {
        c.retry.min = d.max(Duration::from_secs(1));
    }
    if let Some(d) = v.duration("retry-max")? {
        c.retry.max = d.max(Duration::from_secs(1));
    }
    if c.retry.max < c.retry.min {
        return Err(UsageError(
            "--retry-max must not be less than --retry-min".into(),
        ));
    }
    if let Some(d) = v.duration("max-queue-age")? {
        c.retry.lifetime = d;
    }
    c.delay_warning = v.duration("delay-warning")?;
    if let Some(t) = nonzero(v, "delivery-timeout")? {
        c.client_timeouts = crate::config::Timeouts::all(t);
    }
    use crate::config::OutboundTls;
    if let Some(mode) = v.parse("outbound-tls", |m| {
        OutboundTls::parse(m).ok_or_else(|| {
            UsageError(format!(
                "--outbound-tls: {m:?} is not may, encrypt or verify"
            ))
        })
    })? {
        c.outbound_tls = mode;
    }
    c.secrets_file = v.single("secrets-file").map(PathBuf::from);
    if c.ca_file.is_some() && !c.verifies() {
        return Err(UsageError(
            "--ca-file needs --outbound-tls verify (or --mta-sts)".into(),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &str) -> Vec<String> {
        s.split_whitespace().map(String::from).collect()
    }

    fn serve(s: &str) -> Result<Config, UsageError> {
        match parse(&args(s))? {
            Cli::Serve(c) => Ok(c),
            other => panic!("not serve: {other:?}"),
        }
    }

    #[test]
    fn tls_report_options() {
        let c = serve("serve").unwrap();
        assert!(!c.tls_reports);
        assert_eq!(c.tls_report_period, 86_400);
        assert_eq!(
            c.tls_report_from().unwrap().to_string(),
            format!("<tlsrpt-noreply@{}>", c.hostname)
        );
        let c = serve(
            "serve --tls-reports --tls-report-org Org --tls-report-from <r@x.example> --tls-report-contact c@x.example --tls-report-period 10",
        )
        .unwrap();
        assert!(c.tls_reports);
        assert_eq!(c.tls_report_org.as_deref(), Some("Org"));
        assert_eq!(c.tls_report_from().unwrap().to_string(), "<r@x.example>");
        assert_eq!(c.tls_report_contact.as_deref(), Some("c@x.example"));
        assert_eq!(c.tls_report_period, 10);
        for (bad, says) in [
            ("serve --tls-report-org Org", "needs --tls-reports"),
            (
                "serve --tls-reports --tls-report-from nobody",
                "--tls-report-from",
            ),
            (
                "serve --tls-reports --tls-report-period 0",
                "tls-report-period",
            ),
        ] {
            let e = serve(bad).unwrap_err();
            assert!(e.0.contains(says), "{bad}: {e}");
        }
        match parse(&args("route --tls-reports a@b.example")).unwrap() {
            Cli::Route { config, .. } => assert!(config.tls_reports),
            _ => panic!("not route"),
        }
    }

    #[test]
    fn mta_sts_options() {
        let c = serve("serve").unwrap();
        assert!(!c.mta_sts);
        assert_eq!(c.mta_sts_port, 443);
        // --ca-file has a use with --mta-sts alone
        let c = serve("serve --mta-sts --mta-sts-port 8443 --ca-file /x/ca.pem").unwrap();
        assert!(c.mta_sts && c.verifies());
        assert_eq!(c.mta_sts_port, 8443);
        assert!(serve("serve --ca-file /x/ca.pem").is_err());
        for bad in ["0", "65536", "x"] {
            let e = serve(&format!("serve --mta-sts-port {bad}")).unwrap_err();
            assert!(e.0.contains("mta-sts-port"), "{e}");
        }
        match parse(&args("route --mta-sts --ca-file /x/ca.pem a@b.example")).unwrap() {
            Cli::Route { config, .. } => assert!(config.mta_sts && config.ca_file.is_some()),
            other => panic!("not route: {other:?}"),
        }
    }

    #[test]
    fn dane_options() {
        let c = serve("serve").unwrap();
        assert!(!c.dane && c.dnssec_trust_anchor.is_none());
        let c = serve("serve --dane --dnssec-trust-anchor /x/anchor.key").unwrap();
        assert!(c.dane);
        assert_eq!(c.dnssec_trust_anchor, Some(PathBuf::from("/x/anchor.key")));
        let e = serve("serve --dnssec-trust-anchor /x/anchor.key").unwrap_err();
        assert!(e.0.contains("needs --dane"), "{e}");
        match parse(&args("route --dane a@b.example")).unwrap() {
            Cli::Route { config, .. } => assert!(config.dane),
            other => panic!("not route: {other:?}"),
        }
    }

    #[test]
    fn serve_options() {
        let c = serve("serve --listen 127.0.0.1:0 --listen [::1]:2526 --max-size 1M --timeout 30s --relay-domain Example.ORG -v -v").unwrap();
        assert_eq!(c.listen.len(), 2);
        assert_eq!(c.max_size, 1 << 20);
        assert_eq!(c.timeout.as_secs(), 30);
        assert_eq!(c.relay_domains[0].as_str(), "Example.ORG");
        assert_eq!(c.verbosity, 2);
    }

    #[test]
    fn proxy_protocol_needs_its_trusted_peers() {
        assert_eq!(serve("serve").unwrap().proxy_protocol, None);
        let c =
            serve("serve --proxy-protocol --proxy-from 127.0.0.1 --proxy-from 10.0.0.0/8").unwrap();
        let nets = c.proxy_protocol.expect("on");
        assert_eq!(nets.len(), 2);
        assert!(nets[1].contains("10.1.2.3".parse().unwrap()));
        let e = serve("serve --proxy-protocol").unwrap_err();
        assert!(e.0.contains("--proxy-from"), "{e}");
        let e = serve("serve --proxy-from 127.0.0.1").unwrap_err();
        assert!(e.0.contains("--proxy-protocol"), "{e}");
        let e = serve("serve --proxy-protocol --proxy-from 1.2.3.4/40").unwrap_err();
        assert!(e.0.contains("--proxy-from"), "{e}");
    }

    /// Traffic shaping: defaults from flags or the file, overrides per
    /// route section, and clear errors for bad values.
    #[test]
    fn shaping_options_and_route_overrides() {
        use crate::shaping::{DestShaping, Rate, Shaping};
        assert_eq!(serve("serve").unwrap().shaping, Shaping::default());
        let c = serve(
            "serve --max-messages-per-connection 5 --destination-message-rate 100/min \
             --destination-connection-rate 2/s --throttle-backoff 10s --throttle-backoff-max 1h",
        )
        .unwrap();
        assert_eq!(c.shaping.max_messages_per_connection, 5);
        assert_eq!(c.shaping.message_rate, Rate::parse("100/min").ok());
        assert_eq!(c.shaping.connection_rate, Rate::parse("2/s").ok());
        assert_eq!(c.shaping.backoff_min, Duration::from_secs(10));
        assert_eq!(c.shaping.backoff_max, Duration::from_secs(3600));
        for bad in [
            "serve --destination-message-rate 100",
            "serve --destination-connection-rate 0/min",
            "serve --max-messages-per-connection 0",
            "serve --throttle-backoff 0s",
            "serve --throttle-backoff 2h",
        ] {
            assert!(serve(bad).is_err(), "{bad}");
        }
        let f = TempConf::new(
            "shaping",
            "destination-message-rate = 1000/h\n[route slow.example]\nhosts = [127.0.0.2]:2525\n\
             max-connections = 2\nmax-messages-per-connection = 3\nmessage-rate = 300/min\n\
             connection-rate = 10/min\n",
        );
        let c = serve(&format!("serve --config {}", f.0.display())).unwrap();
        assert_eq!(c.shaping.message_rate, Rate::parse("1000/h").ok());
        let want = DestShaping {
            max_connections: Some(2),
            max_messages_per_connection: Some(3),
            message_rate: Rate::parse("300/min").ok(),
            connection_rate: Rate::parse("10/min").ok(),
        };
        assert_eq!(
            c.routes[0].limit(25),
            Some(("[127.0.0.2]:2525".into(), want))
        );
        assert_eq!(
            c.routes[0].to_string(),
            "slow.example=[127.0.0.2]:2525 (max-connections 2, max-messages-per-connection 3, message-rate 300/min, connection-rate 10/min)"
        );
        let bad = TempConf::new(
            "shaping-bad",
            "[route a.example]\nhosts = h.example\nmessage-rate = fast\n",
        );
        let e = serve(&format!("serve --config {}", bad.0.display())).unwrap_err();
        assert!(e.0.contains("bad rate \"fast\""), "{}", e.0);
    }

    #[test]
    fn auth_failure_limits() {
        let d = crate::auth_limit::AuthLimits::default();
        assert_eq!(serve("serve").unwrap().auth_limits, d);
        assert_eq!(
            (d.per_address, d.per_user, d.window.as_secs()),
            (10, 30, 300)
        );
        let c = serve(
            "serve --auth-max-failures 0 --auth-max-user-failures 5 --auth-failure-window 1h",
        )
        .unwrap();
        assert_eq!(c.auth_limits.per_address, 0);
        assert_eq!(c.auth_limits.per_user, 5);
        assert_eq!(c.auth_limits.window.as_secs(), 3600);
        assert!(serve("serve --auth-failure-window 0s").is_err());
        assert!(serve("serve --auth-max-failures x").is_err());
    }

    #[test]
    fn dkim_options_and_keygen() {
        use crate::dkim::keygen::KeyAlgorithm;
        use crate::dkim::settings::{Canon, DomainFrom};
        let c = serve("serve --dkim-key Example.ORG:s1:/k/a.pem --dkim-key example.org:s2:/k/b.pem --dkim-sign-from auth --dkim-canonicalization simple/relaxed --dkim-domain-from envelope").unwrap();
        let d = &c.dkim;
        assert_eq!(d.keys.len(), 2);
        assert_eq!(
            (d.keys[0].domain.as_str(), d.keys[0].selector.as_str()),
            ("example.org", "s1")
        );
        assert!(d.sign_from.auth && !d.sign_from.relay_net);
        assert_eq!(
            (d.header_canon, d.body_canon),
            (Canon::Simple, Canon::Relaxed)
        );
        assert_eq!(d.domain_from, DomainFrom::Envelope);
        let d = serve("serve").unwrap().dkim;
        assert!(d.keys.is_empty() && d.sign_from.auth && d.sign_from.relay_net);
        assert_eq!(
            (d.header_canon, d.body_canon),
            (Canon::Relaxed, Canon::Relaxed)
        );
        for (line, needle) in [
            ("serve --dkim-key example.org:s1", "--dkim-key"),
            ("serve --dkim-sign-from everyone", "--dkim-sign-from"),
            (
                "serve --dkim-canonicalization loose",
                "--dkim-canonicalization",
            ),
            ("serve --dkim-domain-from body", "--dkim-domain-from"),
            ("dkim keygen example.org", "usage"),
            ("dkim keygen example.org s_1", "selector"),
            ("dkim keygen example.org s1 --bits 1024", "--bits"),
            ("dkim keygen example.org s1 --algorithm dsa", "--algorithm"),
            ("dkim frob example.org s1", "usage"),
        ] {
            let e = parse(&args(line)).unwrap_err();
            assert!(e.0.contains(needle), "{line}: {e}");
        }
        let Ok(Cli::DkimKeygen(k)) = parse(&args("dkim keygen Example.org s1 --algorithm ed25519"))
        else {
            panic!("dkim keygen parses");
        };
        assert_eq!(k.algorithm, KeyAlgorithm::Ed25519);
        assert_eq!(k.out, PathBuf::from("s1._domainkey.example.org.pem"));
        assert!(usage_text().contains("--dkim-key DOMAIN:SELECTOR:FILE"));
    }

    #[test]
    fn errors_name_the_option() {
        for (line, needle) in [
            ("serve --workers 0", "--workers"),
            ("serve --workers x", "--workers"),
            ("serve --timeout 5x", "--timeout"),
            ("serve --listen nowhere", "--listen"),
            ("serve --relay-net 1.2.3.4/99", "--relay-net"),
            ("serve --bogus", "bogus"),
            ("serve extra", "extra"),
            ("frobnicate", "frobnicate"),
        ] {
            let e = parse(&args(line)).unwrap_err();
            assert!(e.0.contains(needle), "{line}: {e}");
        }
    }

    #[test]
    fn config_file_and_precedence() {
        let path = std::env::temp_dir().join(format!("smtp-relay-cli-{}.conf", std::process::id()));
        std::fs::write(&path, "# comment\nmax-size = 2k\nworkers = 7\nrelay-domain = a.example\nrelay-domain = b.example\n").unwrap();
        let c = serve(&format!("serve --config {} --workers 9", path.display())).unwrap();
        assert_eq!(c.max_size, 2048);
        assert_eq!(c.workers, 9, "command line wins");
        assert_eq!(c.relay_domains.len(), 2);
        std::fs::write(&path, "max-size = 2k\nnonsense = 1\n").unwrap();
        let e = serve(&format!("serve --config {}", path.display())).unwrap_err();
        assert!(
            e.0.starts_with(&format!("{}:2: ", path.display())) && e.0.contains("nonsense"),
            "{e}"
        );
        let _ = std::fs::remove_file(&path);
    }

    /// A config file for one test, removed on drop.
    struct TempConf(std::path::PathBuf);

    impl TempConf {
        fn new(name: &str, text: &str) -> TempConf {
            let path = std::env::temp_dir()
                .join(format!("smtp-relay-cli-{name}-{}.conf", std::process::id()));
            std::fs::write(&path, text).unwrap();
            TempConf(path)
        }
    }

    impl Drop for TempConf {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }

    /// Issue 11 item 4: parsing reads no file an option names, resolves
    /// no name and looks up no user; app.rs does, at start.
    #[test]
    fn parsing_does_no_io() {
        let c = serve(
            "serve --tls-cert /nonexistent/c.pem --tls-key /nonexistent/k.pem \
             --auth-file /nonexistent/passwd --user no-such-user-here \
             --listen no-such-host.invalid:2525 --dns no-such-host.invalid:53 \
             --outbound-tls verify --ca-file /nonexistent/ca.pem",
        )
        .unwrap();
        let tls = c.tls.as_ref().unwrap();
        assert_eq!(tls.cert, std::path::PathBuf::from("/nonexistent/c.pem"));
        assert_eq!(c.user.as_deref(), Some("no-such-user-here"));
        assert_eq!(
            c.listen,
            vec![Endpoint::Name {
                host: "no-such-host.invalid".into(),
                port: 2525
            }]
        );
        assert_eq!(
            c.dns.as_ref().map(|d| d.to_string()).as_deref(),
            Some("no-such-host.invalid:53")
        );
        assert_eq!(
            c.ca_file,
            Some(std::path::PathBuf::from("/nonexistent/ca.pem"))
        );
        // what needs no I/O to know is still checked here
        for bad in [
            "serve --listen nowhere",
            "serve --listen [::1]",
            "serve --dns a b:53",
        ] {
            assert!(parse(&args(bad)).is_err(), "{bad}");
        }
    }

    /// Issue 14: `--milter`, repeatable, in order; the config file's
    /// `milter =` lines, replaced by the command line's.
    #[test]
    fn milter_options() {
        use crate::milter::DefaultAction;
        let c = serve("serve --milter inet:127.0.0.1:8891 --milter unix:/run/m.sock,default=accept,eom-timeout=1m,listeners=submission").unwrap();
        assert_eq!(c.milters.len(), 2);
        assert_eq!(c.milters[0].target.to_string(), "inet:127.0.0.1:8891");
        assert_eq!(c.milters[0].default_action, DefaultAction::Tempfail);
        assert_eq!(c.milters[1].default_action, DefaultAction::Accept);
        assert_eq!(c.milters[1].eom_timeout, Duration::from_secs(60));
        assert_eq!(c.milters[1].listeners, ["submission"]);
        let e = serve("serve --milter inet:127.0.0.1:8891,default=maybe").unwrap_err();
        assert!(e.0.starts_with("--milter: default:"), "{e}");
        assert!(serve("serve --milter 127.0.0.1:8891").is_err());
        let f = TempConf::new(
            "milters",
            "milter = inet:127.0.0.1:8891,command-timeout=5s\nmilter = inet:127.0.0.1:8892\n",
        );
        let c = serve(&format!("serve --config {}", f.0.display())).unwrap();
        let shown: Vec<String> = c.milters.iter().map(|m| m.target.to_string()).collect();
        assert_eq!(shown, ["inet:127.0.0.1:8891", "inet:127.0.0.1:8892"]);
        assert_eq!(c.milters[0].command_timeout, Duration::from_secs(5));
        let c = serve(&format!(
            "serve --config {} --milter unix:/m",
            f.0.display()
        ))
        .unwrap();
        assert_eq!(c.milters.len(), 1, "the command line's list wins");
    }

    /// Issue 11 item 3: `[route DOMAIN]` sections.
    #[test]
    fn route_sections() {
        let f = TempConf::new(
            "routes",
            "no-dns = yes\nroute = c.example=[192.0.2.3]\n\n[route a.example]  # smarthost pair\nhosts = [192.0.2.1]:587, [192.0.2.2]:587\ntls = verify\n[route *]\nhosts = relay.example\ntls = none\n",
        );
        let c = serve(&format!("serve --config {}", f.0.display())).unwrap();
        let shown: Vec<String> = c.routes.iter().map(|r| r.to_string()).collect();
        assert_eq!(
            shown,
            [
                "c.example=[192.0.2.3]",
                "a.example=[192.0.2.1]:587,[192.0.2.2]:587 (tls verify)",
                "*=relay.example (tls none)"
            ]
        );
        assert!(c.no_dns, "options before the first section still count");
        // issue 12: implicit TLS and AUTH per route
        let f2 = TempConf::new(
            "authroute",
            "secrets-file = /x/secrets\n[route *]\nhosts = smtp.p.example:465\ntls = implicit\nauth = relay-user\nmax-connections = 3\n",
        );
        let c2 = serve(&format!("serve --config {}", f2.0.display())).unwrap();
        assert_eq!(
            c2.routes[0].to_string(),
            "*=smtp.p.example:465 (tls implicit, auth relay-user, max-connections 3)"
        );
        let three = crate::shaping::DestShaping {
            max_connections: Some(3),
            ..Default::default()
        };
        assert_eq!(
            c2.routes[0].limit(25),
            Some(("smtp.p.example:465".to_string(), three))
        );
        assert_eq!(
            c2.secrets_file.as_deref(),
            Some(std::path::Path::new("/x/secrets"))
        );
        assert!(c2.verifies(), "implicit verifies: the CA roots are loaded");
        // --route on the command line replaces the file's routes, all of them
        let c = serve(&format!(
            "serve --config {} --route *=[192.0.2.9]",
            f.0.display()
        ))
        .unwrap();
        assert_eq!(c.routes.len(), 1);
        // --ca-file is for verify, here a route's
        let c = serve(&format!(
            "serve --config {} --ca-file /x/ca.pem",
            f.0.display()
        ))
        .unwrap();
        assert!(c.ca_file.is_some());

        for (text, line, needle) in [
            (
                "[route a.example]\nhosts = h.example\nauth-plaintext = yes\n",
                1,
                "needs auth",
            ),
            (
                "[route a.example]\nhosts = h.example\nauth-plaintext = maybe\n",
                3,
                "yes or no",
            ),
            (
                "[route a.example]\nhosts = h.example\nmax-connections = 0\n",
                3,
                "above 0",
            ),
            (
                "[route a.example]\nhosts = h.example\nworkers = 3\n",
                3,
                "unknown key",
            ),
            ("[route a.example]\ntls = may\n", 1, "needs hosts"),
            ("[route a.example]\nhosts = bad host\n", 1, "HOST"),
            ("[listener x]\n", 1, "unknown section"),
            ("[route]\n", 1, "unknown section"),
            ("[route a.example\n", 1, "expected"),
            (
                "route = a.example=h.example\n[route A.example]\nhosts = g.example\n",
                2,
                "second route",
            ),
        ] {
            let f = TempConf::new("badroute", text);
            let e = serve(&format!("serve --config {}", f.0.display())).unwrap_err();
            assert!(
                e.0.starts_with(&format!("{}:{line}: ", f.0.display())) && e.0.contains(needle),
                "{text:?}: {e}"
            );
        }
    }

    #[test]
    fn flat_routes_take_several_hosts() {
        let c = serve("serve --route a.example=h1.example:2525,[192.0.2.1]").unwrap();
        assert_eq!(
            c.routes[0].to_string(),
            "a.example=h1.example:2525,[192.0.2.1]"
        );
    }

    #[test]
    fn trailing_comments() {
        let f = TempConf::new(
            "comments",
            "max-size = 2k   # two KiB\nworkers=7# no space: part of the value\n",
        );
        let e = serve(&format!("serve --config {}", f.0.display())).unwrap_err();
        assert!(e.0.contains(":2: --workers"), "{e}");
        let f = TempConf::new(
            "comments2",
            "max-size = 2k   # two KiB\nworkers = 7\t# seven\n# whole line\nspool = /var/sp#ool\n",
        );
        let c = serve(&format!("serve --config {}", f.0.display())).unwrap();
        assert_eq!(c.max_size, 2048);
        assert_eq!(c.workers, 7);
        assert_eq!(c.spool, std::path::PathBuf::from("/var/sp#ool"));
    }

    #[test]
    fn a_bad_value_in_the_file_names_file_and_line() {
        let f = TempConf::new("badvalue", "workers = 4\n\n# sizes\nmax-size = 12Q\n");
        let e = serve(&format!("serve --config {}", f.0.display())).unwrap_err();
        assert!(
            e.0.starts_with(&format!("{}:4: --max-size: ", f.0.display())),
            "{e}"
        );
        // the same value on the command line names no file
        let e = serve(&format!("serve --config {} --max-size 12Q", f.0.display())).unwrap_err();
        assert!(e.0.starts_with("--max-size: "), "{e}");
        // a repeatable option names the line of the bad one
        let f = TempConf::new(
            "badmulti",
            "relay-net = 10.0.0.0/8\nrelay-net = 10.0.0.0/99\n",
        );
        let e = serve(&format!("serve --config {}", f.0.display())).unwrap_err();
        assert!(e.0.contains(":2: --relay-net"), "{e}");
    }

    #[test]
    fn a_flag_from_the_file_can_be_turned_off() {
        let f = TempConf::new("flags", "no-dns = yes\nhonor-source-routes = yes\n");
        let c = serve(&format!("serve --config {}", f.0.display())).unwrap();
        assert!(c.no_dns && c.honor_source_routes);
        let c = serve(&format!(
            "serve --config {} --no-dns=no --honor-source-routes=no",
            f.0.display()
        ))
        .unwrap();
        assert!(!c.no_dns && !c.honor_source_routes);
        let c = serve("serve --no-dns --honor-source-routes=yes").unwrap();
        assert!(c.no_dns && c.honor_source_routes);
        let e = serve("serve --no-dns=maybe").unwrap_err();
        assert!(e.0.contains("--no-dns"), "{e}");
    }

    #[test]
    fn flush_wait_limit_and_deprecated_timeout() {
        let flush = |line: &str| match parse(&args(line)).unwrap() {
            Cli::Queue {
                cmd: QueueCmd::Flush { timeout, .. },
                warnings,
                ..
            } => (timeout, warnings),
            other => panic!("not flush: {other:?}"),
        };
        let (t, w) = flush("queue flush --spool /nonexistent --wait --wait-limit 20s");
        assert_eq!((t.as_secs(), w.len()), (20, 0));
        let (t, w) = flush("queue flush --spool /nonexistent --wait --timeout 15s");
        assert_eq!(t.as_secs(), 15);
        assert!(w[0].contains("--wait-limit"), "{w:?}");
        let (t, _) = flush("queue flush --spool /nonexistent");
        assert_eq!(t.as_secs(), 300);
    }

    #[test]
    fn edge_options() {
        use crate::edge::dnsbl::RejectAt;
        use crate::edge::policy::{DefaultAction, Target};
        let c = serve("serve --dnsbl bl.test=2 --dnsbl bl2.test --dnswl wl.test --dnsbl-threshold 3 --dnsbl-reject-at connect --policy-service unix:/run/p.sock --policy-at both --policy-timeout 3s --policy-default-action dunno --rate-connections 5 --rate-messages 6 --rate-recipients 7").unwrap();
        let e = &c.edge;
        assert_eq!(e.dnsbl.blocklists.len(), 2);
        assert_eq!(e.dnsbl.blocklists[0].weight, 2);
        assert_eq!(e.dnsbl.allowlists, ["wl.test"]);
        assert_eq!(e.dnsbl.threshold, 3);
        assert_eq!(e.dnsbl.reject_at, RejectAt::Connect);
        let p = e.policy.as_ref().unwrap();
        assert_eq!(p.target, Target::Unix("/run/p.sock".into()));
        assert!(p.at_rcpt && p.at_end);
        assert_eq!(p.timeout, Duration::from_secs(3));
        assert_eq!(p.default_action, DefaultAction::Dunno);
        assert_eq!(
            (e.rates.connections, e.rates.messages, e.rates.recipients),
            (5, 6, 7)
        );
        let d = serve("serve").unwrap().edge;
        assert_eq!(d, crate::edge::EdgeConfig::default());
        assert!(!d.rates.any() && d.policy.is_none() && !d.dnsbl.is_on());
        assert!(serve("serve --policy-at data").is_err(), "needs a service");
        assert!(serve("serve --policy-service 127.0.0.1:9").is_err());
        assert!(serve("serve --dnsbl-threshold 0").is_err());
        assert!(serve("serve --dnsbl-reject-at helo").is_err());
    }

    #[test]
    fn auth_results_options() {
        use crate::authres::{DmarcAction, Listeners};
        let c = serve("serve --listen 127.0.0.1:25 --listen 127.0.0.2:25 --auth-results 127.0.0.2:25 --auth-results-dmarc reject --auth-results-spf-reject --auth-results-defer-temperror --auth-results-timeout 5s").unwrap();
        let a = &c.auth_results;
        assert_eq!(a.dmarc_action, DmarcAction::Reject);
        assert!(a.spf_reject && a.defer_temperror);
        assert_eq!(a.timeout, Duration::from_secs(5));
        // only the listener named checks
        let marks: Vec<bool> = c
            .all_listeners()
            .iter()
            .map(|l| l.mode.auth_results)
            .collect();
        assert_eq!(marks, [false, true]);
        // `all`: every listener but submission ones
        let all =
            serve("serve --auth-results all --auth-file /x --submission 127.0.0.1:587").unwrap();
        assert_eq!(all.auth_results.on, Listeners::AllButSubmission);
        let marks: Vec<bool> = all
            .all_listeners()
            .iter()
            .map(|l| l.mode.auth_results)
            .collect();
        assert_eq!(marks, [false]);
        let all = serve("serve --auth-results all").unwrap();
        assert!(all.all_listeners()[0].mode.auth_results);
        // defaults: off everywhere
        let d = serve("serve").unwrap();
        assert_eq!(d.auth_results, crate::authres::AuthResConfig::default());
        assert!(!d.all_listeners()[0].mode.auth_results);
        // errors name the option
        let e = serve("serve --auth-results 127.0.0.9:25").unwrap_err();
        assert!(
            e.0.contains("--auth-results 127.0.0.9:25: no listener"),
            "{e}"
        );
        let e = serve("serve --auth-results-dmarc always").unwrap_err();
        assert!(e.0.contains("--auth-results-dmarc"), "{e}");
        assert!(serve("serve --auth-results all --no-dns").is_err());
        assert!(serve("serve --auth-results-timeout 0s").is_err());
    }
}
