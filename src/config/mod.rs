//! `Config`: every setting of a running relay, with its default.
//! Built by `cli.rs` from the command line and the config file.
//!
//! Plain data: paths, names and numbers as the operator wrote them. No
//! live TLS objects, no DNS answers, no user database entries and no file
//! contents live here; `app.rs` turns a `Config` into those at start and
//! at each reload. A leaf: the types of its fields are defined here
//! (`delivery.rs`, `route.rs`, `edge.rs`, `limits.rs`, `dkim.rs`, `milter.rs`; the feature
//! modules re-export them) or in `smtp/`, which does no I/O either.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

pub mod authres;
pub mod delivery;
pub mod dkim;
pub mod edge;
pub mod limits;
pub mod milter;
pub mod route;
pub mod shaping;

pub use authres::{AuthResConfig, DmarcAction, Listeners};
pub use delivery::{OutboundTls, RetryPolicy, Timeouts};
pub use edge::EdgeConfig;
pub use limits::{AuthLimits, LogFormat, VerifySettings};
pub use milter::MilterConfig;
pub use route::{RouteAuth, RouteTls, StaticRoute};

use crate::smtp::Domain;

/// An `ADDR:PORT` option value as written (`--listen`, `--dns`): an IP
/// socket address, or a host name and a port that `app.rs` resolves at
/// start (the command line parser does no DNS).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    Addr(SocketAddr),
    Name { host: String, port: u16 },
}

impl Endpoint {
    /// `192.0.2.1:25`, `[::1]:2525`, `localhost:2525`.
    pub fn parse(s: &str) -> Option<Endpoint> {
        if let Ok(a) = s.parse() {
            return Some(Endpoint::Addr(a));
        }
        let (host, port) = s.rsplit_once(':')?;
        let port = port.parse().ok()?;
        Domain::parse(host, false).ok()?;
        Some(Endpoint::Name {
            host: host.to_string(),
            port,
        })
    }
}

impl From<SocketAddr> for Endpoint {
    fn from(a: SocketAddr) -> Endpoint {
        Endpoint::Addr(a)
    }
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Endpoint::Addr(a) => write!(f, "{a}"),
            Endpoint::Name { host, port } => write!(f, "{host}:{port}"),
        }
    }
}

/// What a listener does besides plain SMTP (README "Listeners").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ListenMode {
    /// RFC 8314 §3.3: TLS from the first byte (`--listen-tls`,
    /// `--submission-tls`; port 465), no STARTTLS.
    pub implicit_tls: bool,
    /// RFC 6409 message submission (`--submission`, `--submission-tls`;
    /// port 587): AUTH before MAIL, relaying for authenticated users only,
    /// sender ownership, message fix-ups.
    pub submission: bool,
    /// `--auth-results`: SPF, DKIM and DMARC checks, written as an
    /// `Authentication-Results:` header (RFC 8601).
    pub auth_results: bool,
}

impl ListenMode {
    pub const PLAIN: ListenMode = ListenMode {
        implicit_tls: false,
        submission: false,
        auth_results: false,
    };

    /// The option that makes a listener of this mode.
    pub fn option(self) -> &'static str {
        match (self.implicit_tls, self.submission) {
            (false, false) => "--listen",
            (true, false) => "--listen-tls",
            (false, true) => "--submission",
            (true, true) => "--submission-tls",
        }
    }
}

impl std::fmt::Display for ListenMode {
    /// `smtp`, `smtps`, `submission`, `submissions` (the IANA service
    /// names, RFC 8314 §7.3), for the `listening on` log line.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match (self.implicit_tls, self.submission) {
            (false, false) => "smtp",
            (true, false) => "smtps",
            (false, true) => "submission",
            (true, true) => "submissions",
        })
    }
}

/// A listening address with its mode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listener {
    pub endpoint: Endpoint,
    pub mode: ListenMode,
}

/// `--tls-cert` and `--tls-key`: the files STARTTLS is set up from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// An IP network, `addr/prefix`, for `--relay-net`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// `127.0.0.0/8`, `::1/128`, or a bare address (a /32 or /128).
    pub fn parse(s: &str) -> Result<Cidr, String> {
        let bad = || format!("bad network {s:?} (use ADDR/PREFIX, e.g. 192.0.2.0/24)");
        let (a, p) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = a.parse().map_err(|_| bad())?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match p {
            Some(p) => p.parse::<u8>().ok().filter(|&n| n <= max).ok_or_else(bad)?,
            None => max,
        };
        Ok(Cidr { addr, prefix })
    }

    /// Whether `ip` is inside; an IPv4-mapped IPv6 client (`::ffff:a.b.c.d`)
    /// is matched as the IPv4 address it is.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// How a new message's files are flushed before the 250.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncMode {
    /// One syncfs of the spool's filesystem per group commit for the
    /// files: after the renames on ext4 with a journal (one device flush),
    /// before them elsewhere, with an fsync of `queue/` after
    /// (spool/committer.rs `Order`). Best when the spool has its
    /// filesystem to itself.
    Syncfs,
    /// An fdatasync per file before the renames and an fsync of `queue/`
    /// after: no flushing of other programs' data.
    Fsync,
}

/// What to do with a bare CR or LF in DATA.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BareLineEndings {
    /// Refuse the message after the data (`550 5.6.11`); the default,
    /// against SMTP smuggling.
    Reject,
    /// Store it with bare CR/LF turned into CRLF.
    Normalize,
}

#[derive(Debug, Clone)]
pub struct Config {
    /// The file these settings were read from (`--config`,
    /// `$SMTP_RELAY_CONFIG`, `/etc/smtp-relay.conf`), if any: what SIGHUP
    /// reads again.
    pub config_file: Option<PathBuf>,
    pub hostname: String,
    pub listen: Vec<Endpoint>,
    /// `--listen-tls`, `--submission`, `--submission-tls`: listeners with
    /// a mode, after the plain `listen` ones.
    pub listeners: Vec<Listener>,
    /// Submission listeners offer AUTH before TLS too (RFC 4954 §4 wants
    /// a protected channel; only for clients that cannot do TLS).
    pub submission_plaintext_auth: bool,
    /// RFC 6409 §8.1/§8.3: add `Date:` and `Message-ID:` when missing, on
    /// submission listeners (default on).
    pub submission_fixups: bool,
    /// `--sender-map`: which envelope senders each AUTH user may use.
    pub sender_map: Option<PathBuf>,
    /// `--sender-check-from`: the `From:` addresses of an authenticated
    /// user's message must be theirs too (where the sender is checked).
    pub sender_check_from: bool,
    pub spool: PathBuf,
    /// Session worker threads: the most concurrent SMTP sessions.
    pub workers: usize,
    /// Accepted connections that may wait for a free worker before new
    /// ones get `421 4.3.2`.
    pub backlog: usize,
    /// Stack size of each session thread, in bytes.
    pub worker_stack: usize,
    pub relay_nets: Vec<Cidr>,
    pub relay_domains: Vec<Domain>,
    /// RFC 1870 SIZE: the fixed maximum message size in octets.
    pub max_size: u64,
    pub max_recipients: usize,
    /// RFC 5321 §6.3: more `Received:` headers than this is a loop.
    pub max_hops: usize,
    /// Bad commands tolerated in one session before `421`.
    pub max_errors: usize,
    /// How long a client may stay silent (RFC 5321 §4.5.3.2.7: 5 minutes).
    pub timeout: Duration,
    pub bare_line_endings: BareLineEndings,
    /// Whole DATA transfer deadline (slow-loris defence); each read is
    /// still bounded by `timeout`.
    pub data_timeout: Duration,
    /// Concurrent connections from one client address (`421 4.7.0` beyond).
    pub max_per_ip: usize,
    /// New mail gets `452 4.3.1` when the spool's filesystem has less free.
    pub min_free_space: u64,
    /// Drop root privileges to this user after binding.
    pub user: Option<String>,
    pub sync: SyncMode,
    /// STARTTLS (RFC 3207): the server's certificate and key, when set.
    pub tls: Option<TlsFiles>,
    /// `--require-tls`: MAIL only after STARTTLS (`530 5.7.0`).
    pub require_tls: bool,
    /// SMTP AUTH (RFC 4954) against this password file, when set.
    pub auth_file: Option<PathBuf>,
    /// AUTH failures tolerated per client address and per user name
    /// across sessions before `454 4.7.0`.
    pub auth_limits: AuthLimits,
    /// DNS lists, policy service, rate limits (issue 13).
    pub edge: EdgeConfig,
    /// `--auth-results` and its settings: inbound SPF, DKIM, DMARC.
    pub auth_results: AuthResConfig,
    /// `--milter`: content filters, called in order (issue 14).
    pub milters: Vec<MilterConfig>,
    /// `-v` count: 0 info, 1 debug, 2+ trace.
    pub verbosity: usize,
    /// `--proxy-protocol` with its `--proxy-from` networks: every
    /// listener expects a PROXY header (v1 or v2) from these peers only.
    pub proxy_protocol: Option<Vec<Cidr>>,
    /// `--metrics`: where /metrics and /healthz are served.
    pub metrics: Option<SocketAddr>,
    pub log_format: LogFormat,
    /// `--log-file`: append here instead of stderr (SIGUSR1 reopens).
    pub log_file: Option<PathBuf>,

    // ---- the forwarding side ----
    /// Delivery threads: the most concurrent outbound transactions.
    pub delivery_workers: usize,
    /// `--route DOMAIN=HOST[:PORT]`, tried before DNS.
    pub routes: Vec<StaticRoute>,
    /// Nameserver for MX lookups; `None` = the system's resolv.conf.
    pub dns: Option<Endpoint>,
    /// Do no DNS at all: only static routes (tests, smarthost set-ups).
    pub no_dns: bool,
    /// Port of MX hosts (25; tests point it elsewhere).
    pub smtp_port: u16,
    pub retry: RetryPolicy,
    /// Per-destination limits for every destination (`--max-per-destination`,
    /// `--max-messages-per-connection`, the destination rates) and the
    /// throttling backoff; routes override the limits (`shaping`).
    pub shaping: shaping::Shaping,
    pub honor_source_routes: bool,
    pub delay_warning: Option<Duration>,
    pub client_timeouts: Timeouts,
    /// How long an idle outbound connection is kept for reuse.
    pub connection_idle: Duration,
    /// `--outbound-tls`: STARTTLS on the delivery side.
    pub outbound_tls: OutboundTls,
    /// `--ca-file`: the CAs `--outbound-tls verify` trusts (else the
    /// system's).
    pub ca_file: Option<PathBuf>,
    /// `--mta-sts`: apply recipient domains' MTA-STS policies (RFC 8461).
    pub mta_sts: bool,
    /// `--mta-sts-port`: where the policy hosts listen (443).
    pub mta_sts_port: u16,
    /// `--dane`: apply MX hosts' DANE TLSA records (RFC 7672).
    pub dane: bool,
    /// `--dnssec-trust-anchor`: DNSKEY records trusted for DNSSEC
    /// validation instead of the root zone's keys.
    pub dnssec_trust_anchor: Option<PathBuf>,
    /// `--tls-reports`: count TLS sessions per recipient domain and send
    /// the domains that ask daily reports (RFC 8460, `tlsrpt`).
    pub tls_reports: bool,
    /// `--tls-report-org`: the reports' organization-name (else the
    /// host name).
    pub tls_report_org: Option<String>,
    /// `--tls-report-from`: the reports' sender (else
    /// `tlsrpt-noreply@HOSTNAME`).
    pub tls_report_from: Option<crate::smtp::Mailbox>,
    /// `--tls-report-contact`: the reports' contact-info (else the sender).
    pub tls_report_contact: Option<String>,
    /// `--tls-report-period`: seconds per report; 86400 (a UTC day,
    /// RFC 8460 §4.1) but for tests.
    pub tls_report_period: u64,

    // ---- the inbound edge: recipient validation, access rules ----
    /// `--recipients DOMAIN=FILE`: the domain's recipient table.
    pub recipient_tables: Vec<(Domain, PathBuf)>,
    /// `--verify-recipients DOMAIN`: ask the domain's next hop.
    pub verify_domains: Vec<Domain>,
    pub verify: VerifySettings,
    /// `--access FILE`: access rules.
    pub access_file: Option<PathBuf>,
    /// `--postmaster`: where `<Postmaster>` and double bounces go;
    /// `None`: `postmaster@HOSTNAME`.
    pub postmaster: Option<crate::smtp::Mailbox>,
    /// `--secrets-file`: SMTP AUTH credentials for next hops (routes'
    /// `auth =`), read at start (`secrets.rs`).
    pub secrets_file: Option<PathBuf>,
    /// `--dkim-*`: signing keys (paths) and whose mail is signed.
    pub dkim: dkim::DkimSettings,
}

impl Config {
    /// The defaults, as `serve` runs without options.
    pub fn new() -> Config {
        Config {
            config_file: None,
            hostname: system_hostname(),
            listen: vec![Endpoint::Addr(SocketAddr::from(([127, 0, 0, 1], 2525)))],
            listeners: Vec::new(),
            submission_plaintext_auth: false,
            submission_fixups: true,
            sender_map: None,
            sender_check_from: false,
            spool: PathBuf::from("spool"),
            workers: 256,
            backlog: 256,
            worker_stack: 256 * 1024,
            relay_nets: vec![
                Cidr::parse("127.0.0.0/8").expect("literal network parses"),
                Cidr::parse("::1/128").expect("literal network parses"),
            ],
            relay_domains: Vec::new(),
            max_size: 10 * 1024 * 1024,
            max_recipients: 1000,
            max_hops: 100,
            max_errors: 20,
            timeout: Duration::from_secs(300),
            bare_line_endings: BareLineEndings::Reject,
            data_timeout: Duration::from_secs(600),
            max_per_ip: 50,
            min_free_space: 64 * 1024 * 1024,
            user: None,
            sync: SyncMode::Syncfs,
            tls: None,
            require_tls: false,
            auth_file: None,
            auth_limits: AuthLimits::default(),
            edge: EdgeConfig::default(),
            auth_results: AuthResConfig::default(),
            milters: Vec::new(),
            verbosity: 0,
            proxy_protocol: None,
            metrics: None,
            log_format: LogFormat::Text,
            log_file: None,
            delivery_workers: 32,
            routes: Vec::new(),
            dns: None,
            no_dns: false,
            smtp_port: 25,
            retry: RetryPolicy::default(),
            shaping: shaping::Shaping::default(),
            honor_source_routes: false,
            delay_warning: None,
            client_timeouts: Timeouts::default(),
            connection_idle: Duration::from_secs(5),
            outbound_tls: OutboundTls::May,
            ca_file: None,
            mta_sts: false,
            mta_sts_port: 443,
            dane: false,
            dnssec_trust_anchor: None,
            tls_reports: false,
            tls_report_org: None,
            tls_report_from: None,
            tls_report_contact: None,
            tls_report_period: 86_400,
            recipient_tables: Vec::new(),
            verify_domains: Vec::new(),
            verify: VerifySettings::default(),
            access_file: None,
            postmaster: None,
            secrets_file: None,
            dkim: Default::default(),
        }
    }

    /// The postmaster's address (RFC 5321 §4.5.1): `--postmaster`, else
    /// `postmaster@HOSTNAME`; `None` if the host name makes no address.
    /// The TLS reports' sender (`--tls-report-from`, else
    /// `tlsrpt-noreply@HOSTNAME`).
    pub fn tls_report_from(&self) -> Option<crate::smtp::Path> {
        let mailbox = match &self.tls_report_from {
            Some(m) => m.clone(),
            None => {
                crate::smtp::Mailbox::parse(&format!("tlsrpt-noreply@{}", self.hostname), false)
                    .ok()?
            }
        };
        Some(crate::smtp::Path::new(mailbox))
    }

    pub fn postmaster(&self) -> Option<crate::smtp::Path> {
        let mailbox = match &self.postmaster {
            Some(m) => m.clone(),
            None => {
                crate::smtp::Mailbox::parse(&format!("postmaster@{}", self.hostname), false).ok()?
            }
        };
        Some(crate::smtp::Path::new(mailbox))
    }

    /// Whether any delivery verifies certificates (`--outbound-tls
    /// verify`, a route's `tls = verify`, or `--mta-sts`: policy fetches
    /// and enforced MX hosts): then the CA roots are loaded, and
    /// `--ca-file` has a use.
    pub fn verifies(&self) -> bool {
        let verify = RouteTls::Starttls(OutboundTls::Verify);
        self.outbound_tls == OutboundTls::Verify
            || self.mta_sts
            || self
                .routes
                .iter()
                .any(|r| r.tls() == Some(verify) || r.tls() == Some(RouteTls::Implicit))
    }

    /// Every listener: the plain `--listen` ones first, then the others;
    /// those `--auth-results` names marked.
    pub fn all_listeners(&self) -> Vec<Listener> {
        self.listen
            .iter()
            .map(|e| Listener {
                endpoint: e.clone(),
                mode: ListenMode::PLAIN,
            })
            .chain(self.listeners.iter().cloned())
            .map(|mut l| {
                l.mode.auth_results = self.auth_results.on.applies(&l.endpoint, l.mode);
                l
            })
            .collect()
    }

    /// Relay control: the client may relay anywhere.
    pub fn is_relay_client(&self, ip: IpAddr) -> bool {
        self.relay_nets.iter().any(|n| n.contains(ip))
    }

    /// Relay control: anyone may send to this domain (exact match,
    /// case-insensitive).
    pub fn is_relay_domain(&self, d: &Domain) -> bool {
        self.relay_domains.iter().any(|r| r == d)
    }
}

impl Default for Config {
    fn default() -> Config {
        Config::new()
    }
}

/// The system's host name, from the kernel; `localhost` if unreadable.
pub fn system_hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "localhost".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidr() {
        let lo = Cidr::parse("127.0.0.0/8").unwrap();
        assert!(lo.contains("127.0.0.2".parse().unwrap()));
        assert!(lo.contains("::ffff:127.0.0.1".parse().unwrap()));
        assert!(!lo.contains("128.0.0.1".parse().unwrap()));
        assert!(!lo.contains("::1".parse().unwrap()));
        let one = Cidr::parse("127.0.0.1").unwrap();
        assert!(!one.contains("127.0.0.2".parse().unwrap()));
        let all = Cidr::parse("0.0.0.0/0").unwrap();
        assert!(all.contains("192.0.2.1".parse().unwrap()));
        let v6 = Cidr::parse("2001:db8::/32").unwrap();
        assert!(v6.contains("2001:db8:1::5".parse().unwrap()));
        assert!(!v6.contains("2001:db9::5".parse().unwrap()));
        assert!(Cidr::parse("10.0.0.0/33").is_err());
        assert!(Cidr::parse("nonsense").is_err());
    }
}

#[cfg(test)]
mod leaf_tests {
    /// The leaf rule (issue 11): `config/` names no module of ours but
    /// itself and `smtp/`, so reading a configuration can never open a
    /// file, resolve a name or start a thread behind the caller's back.
    #[test]
    fn config_imports_nothing_but_smtp_and_itself() {
        let sources = [
            ("mod.rs", include_str!("mod.rs")),
            ("delivery.rs", include_str!("delivery.rs")),
            ("dkim.rs", include_str!("dkim.rs")),
            ("edge.rs", include_str!("edge.rs")),
            ("limits.rs", include_str!("limits.rs")),
            ("milter.rs", include_str!("milter.rs")),
            ("route.rs", include_str!("route.rs")),
            ("shaping.rs", include_str!("shaping.rs")),
        ];
        for (file, text) in sources {
            // The code, not the tests (this one spells the prefix).
            let code = text.split("#[cfg(test)]").next().unwrap_or(text);
            for (at, _) in code.match_indices("crate::") {
                let path = &code[at + "crate::".len()..];
                assert!(
                    path.starts_with("smtp") || path.starts_with("config"),
                    "config/{file} imports crate::{}",
                    path.split(|c: char| !c.is_alphanumeric() && c != '_')
                        .next()
                        .unwrap_or("")
                );
            }
        }
    }
}
