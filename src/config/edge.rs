//! The inbound edge's settings (issue 13), as written in the
//! configuration: DNS lists, the policy service, rate limits. Plain data;
//! `edge/` builds the live lists, clients and windows from it.

use std::path::PathBuf;
use std::time::Duration;

/// The edge settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EdgeConfig {
    pub dnsbl: DnsblConfig,
    /// `--dnsbl-timeout`: bounds each list lookup (default 2 s).
    pub dnsbl_timeout: Duration,
    pub policy: Option<PolicyConfig>,
    pub rates: RateLimits,
}

impl Default for EdgeConfig {
    fn default() -> EdgeConfig {
        EdgeConfig {
            dnsbl: DnsblConfig::default(),
            dnsbl_timeout: Duration::from_secs(2),
            policy: None,
            rates: RateLimits::default(),
        }
    }
}

/// One `--dnsbl ZONE[=WEIGHT]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Blocklist {
    pub zone: String,
    pub weight: u32,
}

/// Where a blocked client is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RejectAt {
    /// At the greeting: `554` and the connection closed.
    Connect,
    /// At every RCPT (Postfix's `smtpd_delay_reject = yes`): the client
    /// may still say who it is, and the refusal names the recipient.
    #[default]
    Rcpt,
}

/// The DNSBL settings, from `--dnsbl`, `--dnswl`, `--dnsbl-threshold`,
/// `--dnsbl-reject-at`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsblConfig {
    pub blocklists: Vec<Blocklist>,
    pub allowlists: Vec<String>,
    /// The summed weight at which a client is blocked (1: any list).
    pub threshold: u32,
    pub reject_at: RejectAt,
}

impl Default for DnsblConfig {
    fn default() -> DnsblConfig {
        DnsblConfig {
            blocklists: Vec::new(),
            allowlists: Vec::new(),
            threshold: 1,
            reject_at: RejectAt::Rcpt,
        }
    }
}

impl DnsblConfig {
    pub fn is_on(&self) -> bool {
        !self.blocklists.is_empty()
    }

    /// Parses `ZONE` or `ZONE=WEIGHT`.
    pub fn parse_blocklist(s: &str) -> Result<Blocklist, String> {
        let (zone, weight) = match s.split_once('=') {
            Some((z, w)) => (
                z,
                w.parse::<u32>()
                    .map_err(|_| format!("bad weight in {s:?} (use ZONE=N)"))?,
            ),
            None => (s, 1),
        };
        Ok(Blocklist {
            zone: parse_zone(zone)?,
            weight,
        })
    }
}

/// A zone name, without a trailing dot.
pub fn parse_zone(s: &str) -> Result<String, String> {
    let z = s.trim_end_matches('.');
    crate::smtp::Domain::parse(z, false).map_err(|e| format!("bad DNS list zone {s:?}: {e}"))?;
    Ok(z.to_ascii_lowercase())
}

/// `--policy-service inet:HOST:PORT` or `unix:PATH`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Inet { host: String, port: u16 },
    Unix(PathBuf),
}

impl Target {
    pub fn parse(s: &str) -> Result<Target, String> {
        if let Some(p) = s.strip_prefix("unix:") {
            if p.is_empty() {
                return Err(format!("{s:?}: unix: needs a PATH"));
            }
            return Ok(Target::Unix(PathBuf::from(p)));
        }
        let bad = || format!("{s:?} is not inet:HOST:PORT or unix:PATH");
        let rest = s.strip_prefix("inet:").ok_or_else(bad)?;
        let (host, port) = rest.rsplit_once(':').ok_or_else(bad)?;
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let port = port.parse().map_err(|_| bad())?;
        if host.is_empty() {
            return Err(bad());
        }
        Ok(Target::Inet {
            host: host.to_string(),
            port,
        })
    }
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::Inet { host, port } => write!(f, "inet:{host}:{port}"),
            Target::Unix(p) => write!(f, "unix:{}", p.display()),
        }
    }
}

/// What to do when the service cannot be asked (down, slow, garbled).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DefaultAction {
    /// `451 4.3.5 Server configuration problem` (Postfix's reply).
    #[default]
    Defer,
    /// Go on as if the service said DUNNO.
    Dunno,
}

/// `--policy-service`, `--policy-at`, `--policy-timeout`,
/// `--policy-default-action`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyConfig {
    pub target: Target,
    /// Ask at each RCPT (`protocol_state=RCPT`).
    pub at_rcpt: bool,
    /// Ask at the end of the data (`protocol_state=END-OF-MESSAGE`).
    pub at_end: bool,
    /// Bounds the connect, and the writing of a request and the reading
    /// of its whole reply.
    pub timeout: Duration,
    pub default_action: DefaultAction,
}

impl PolicyConfig {
    pub fn new(target: Target) -> PolicyConfig {
        PolicyConfig {
            target,
            at_rcpt: true,
            at_end: false,
            timeout: Duration::from_secs(10),
            default_action: DefaultAction::Defer,
        }
    }
}

/// `--rate-connections`, `--rate-messages`, `--rate-recipients`: events
/// per minute; 0 turns a limit off (the default for all three).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RateLimits {
    pub connections: usize,
    pub messages: usize,
    pub recipients: usize,
}

impl RateLimits {
    pub fn any(&self) -> bool {
        self.connections + self.messages + self.recipients > 0
    }
}
