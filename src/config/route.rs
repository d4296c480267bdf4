//! Static routes as the operator writes them (`--route`, `[route
//! DOMAIN]` sections): plain data, parsed and checked without I/O. The
//! `Router` (`route.rs`) decides with them.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr};

use super::shaping::DestShaping;
use super::OutboundTls;
use crate::smtp::{Domain, Host};

/// Which recipient domains a static route covers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Pattern {
    /// `*`: every domain and address literal (a smarthost).
    Any,
    /// `.example.org`: strict subdomains of `example.org` (lower case,
    /// stored without the leading dot).
    Subdomains(String),
    /// `example.org`, compared case-insensitively (RFC 5321 §2.4).
    Exact(String),
}

/// Where a static route sends mail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Target {
    /// A host name: its A/AAAA records are used, never its MX.
    Name(String),
    /// `[192.0.2.1]`, `[::1]`, `[IPv6:::1]` (or a bare dotted quad): no DNS.
    Addr(IpAddr),
}

/// A route's `tls =`: STARTTLS to its hosts, in place of the global
/// `--outbound-tls`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RouteTls {
    /// Never STARTTLS, even when offered (a host whose TLS is known to
    /// be broken).
    None,
    /// STARTTLS as `--outbound-tls` would: `may`, `encrypt` or `verify`.
    Starttls(OutboundTls),
    /// RFC 8314 §3: TLS from the first octet (a provider's port 465), the
    /// certificate verified for the route's host name as under `verify`.
    Implicit,
    /// DANE (RFC 7672 §2.2): STARTTLS mandatory, the certificate matched
    /// against the hop's TLSA records. Never configured: set by
    /// `tls_policy.rs` for an MX host with usable TLSA records.
    Dane,
}

impl RouteTls {
    /// `none`, `may`, `encrypt`, `verify`, `implicit` (RFC 8314 §3, TLS
    /// from the first octet, port 465).
    pub fn parse(s: &str) -> Result<RouteTls, String> {
        match s {
            "none" => Ok(RouteTls::None),
            "implicit" => Ok(RouteTls::Implicit),
            other => OutboundTls::parse(other)
                .map(RouteTls::Starttls)
                .ok_or_else(|| {
                    format!("tls {other:?} is not none, may, encrypt, verify or implicit")
                }),
        }
    }
}

impl fmt::Display for RouteTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            RouteTls::None => "none",
            RouteTls::Starttls(OutboundTls::May) => "may",
            RouteTls::Starttls(OutboundTls::Encrypt) => "encrypt",
            RouteTls::Starttls(OutboundTls::Verify) => "verify",
            RouteTls::Starttls(OutboundTls::Implicit) | RouteTls::Implicit => "implicit",
            RouteTls::Dane => "dane",
        })
    }
}

/// A route's SMTP AUTH (RFC 4954): the user (or key) whose password the
/// secrets file holds, and whether AUTH may go without TLS.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RouteAuth {
    /// `auth = REF`; under `by_sender`, the fallback (none: a sender
    /// without a line of its own is deferred).
    pub user: Option<String>,
    /// `sender-auth = yes`: the credentials are looked up by the
    /// message's envelope sender first (`Secrets::for_sender`).
    pub by_sender: bool,
    /// `auth-plaintext = yes`: the operator's explicit choice; otherwise
    /// AUTH is only ever sent over TLS.
    pub plaintext: bool,
}

impl RouteAuth {
    /// For people (`route`, logs): the user, or `sender` with its
    /// fallback; never a password.
    pub fn describe(&self) -> String {
        match (self.by_sender, &self.user) {
            (false, Some(u)) => u.clone(),
            (true, Some(u)) => format!("sender (fallback {u})"),
            (_, None) => "sender (no fallback: defer)".into(),
        }
    }
}

/// A static route: `--route DOMAIN=HOST[:PORT][,HOST[:PORT]...]`, or a
/// `[route DOMAIN]` section of the config file (`cli.rs`), which may also
/// set the route's TLS policy.
///
/// DOMAIN is `*` (smarthost: matches everything), `.example.org` (its
/// subdomains, not `example.org` itself) or an exact domain. HOST is a host
/// name or an address literal `[192.0.2.1]`, `[::1]`, `[IPv6:::1]`; PORT
/// defaults to the router's SMTP port. Several hosts are tried in the
/// order given (failover).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StaticRoute {
    pub(crate) pattern: Pattern,
    pub(crate) targets: Vec<(Target, Option<u16>)>,
    /// `None`: the global `--outbound-tls`.
    pub(crate) tls: Option<RouteTls>,
    /// `auth = USER` of a route section.
    pub(crate) auth: Option<RouteAuth>,
    /// `max-connections`, `max-messages-per-connection`, `message-rate`,
    /// `connection-rate` of a route section: the limits of the route's
    /// first host in place of the defaults (`shaping`).
    pub(crate) shaping: DestShaping,
}

impl StaticRoute {
    /// Parses `DOMAIN=HOST[:PORT][,HOST[:PORT]...]`; the error names the
    /// problem.
    pub fn parse(s: &str) -> Result<StaticRoute, String> {
        let (domain, hosts) = s
            .split_once('=')
            .ok_or_else(|| format!("route {s:?}: expected DOMAIN=HOST[:PORT]"))?;
        StaticRoute::new(domain, hosts, None).map_err(|e| format!("route {s:?}: {e}"))
    }

    /// A route for DOMAIN to `hosts` (`HOST[:PORT]`, comma-separated, in
    /// the order to try them) with its own TLS policy, if any.
    pub fn new(domain: &str, hosts: &str, tls: Option<RouteTls>) -> Result<StaticRoute, String> {
        let pattern = parse_pattern(domain)?;
        let targets = hosts
            .split(',')
            .map(|h| parse_target(h.trim()))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(StaticRoute {
            pattern,
            targets,
            tls,
            auth: None,
            shaping: DestShaping::default(),
        })
    }

    /// The route with its own per-destination limits.
    pub fn with_shaping(self, shaping: DestShaping) -> StaticRoute {
        StaticRoute { shaping, ..self }
    }

    /// `(destination key, limits)` when the route has its own limits: the
    /// key is the one delivery counts transactions under (the first
    /// host's name, lower case, and port).
    pub fn limit(&self, smtp_port: u16) -> Option<(String, DestShaping)> {
        if self.shaping.is_empty() {
            return None;
        }
        let n = self.shaping;
        let (target, port) = self.targets.first()?;
        let name = match target {
            Target::Name(n) => n.to_lowercase(),
            Target::Addr(a) => format!("[{a}]"),
        };
        Some((format!("{name}:{}", port.unwrap_or(smtp_port)), n))
    }

    /// The route with SMTP AUTH to its hosts.
    pub fn with_auth(self, auth: Option<RouteAuth>) -> StaticRoute {
        StaticRoute { auth, ..self }
    }

    /// The route's AUTH, if it has one.
    pub fn auth(&self) -> Option<&RouteAuth> {
        self.auth.as_ref()
    }

    /// Whether both routes cover the same destinations.
    pub fn same_domain(&self, other: &StaticRoute) -> bool {
        self.pattern == other.pattern
    }

    /// The route's own TLS policy, if it has one.
    pub fn tls(&self) -> Option<RouteTls> {
        self.tls
    }

    /// How specifically this route matches `host`; `None` when it does
    /// not. Higher wins: exact, then the longest `.suffix`, then `*`.
    pub(crate) fn rank(&self, host: &Host) -> Option<(u8, usize)> {
        match (&self.pattern, host) {
            (Pattern::Any, _) => Some((0, 0)),
            (Pattern::Exact(d), Host::Name(name)) if name.key() == *d => Some((2, d.len())),
            (Pattern::Subdomains(d), Host::Name(name))
                if name.key().ends_with(&format!(".{d}")) =>
            {
                Some((1, d.len()))
            }
            _ => None,
        }
    }

    pub(crate) fn why(&self) -> &'static str {
        match self.pattern {
            Pattern::Any => "'*' matches every destination",
            Pattern::Subdomains(_) => "subdomain match",
            Pattern::Exact(_) => "exact domain match",
        }
    }
}

impl fmt::Display for StaticRoute {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.pattern {
            Pattern::Any => f.write_str("*")?,
            Pattern::Subdomains(d) => write!(f, ".{d}")?,
            Pattern::Exact(d) => f.write_str(d)?,
        }
        f.write_str("=")?;
        for (i, (target, port)) in self.targets.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            match target {
                Target::Name(n) => f.write_str(n)?,
                Target::Addr(a) => write!(f, "[{a}]")?,
            }
            if let Some(p) = port {
                write!(f, ":{p}")?;
            }
        }
        let mut policy = Vec::new();
        if let Some(tls) = self.tls {
            policy.push(format!("tls {tls}"));
        }
        if let Some(a) = &self.auth {
            policy.push(format!("auth {}", a.describe()));
        }
        policy.extend(self.shaping.describe());
        if policy.is_empty() {
            return Ok(());
        }
        write!(f, " ({})", policy.join(", "))
    }
}

fn parse_pattern(s: &str) -> Result<Pattern, String> {
    if s == "*" {
        return Ok(Pattern::Any);
    }
    if s.is_empty() {
        return Err("empty DOMAIN (use '*' for all domains)".into());
    }
    let (sub, name) = match s.strip_prefix('.') {
        Some(rest) => (true, rest),
        None => (false, s),
    };
    let d = Domain::parse(name, true).map_err(|e| format!("bad DOMAIN {s:?}: {e}"))?;
    Ok(if sub {
        Pattern::Subdomains(d.key())
    } else {
        Pattern::Exact(d.key())
    })
}

fn parse_target(s: &str) -> Result<(Target, Option<u16>), String> {
    if s.is_empty() {
        return Err("empty HOST".into());
    }
    let (target, port) = if let Some(rest) = s.strip_prefix('[') {
        let (inner, after) = rest
            .split_once(']')
            .ok_or_else(|| format!("unterminated address literal {s:?}"))?;
        // RFC 5321 §4.1.3: `[IPv6:...]`; a plain `[::1]` is accepted too.
        let text = match inner.get(..5) {
            Some(p) if p.eq_ignore_ascii_case("IPv6:") => &inner[5..],
            _ => inner,
        };
        let addr: IpAddr = text
            .parse()
            .map_err(|_| format!("bad address literal {s:?}"))?;
        if inner.len() != text.len() && addr.is_ipv4() {
            return Err(format!("bad address literal {s:?}: IPv4 after 'IPv6:'"));
        }
        let port = match after {
            "" => None,
            p => Some(
                p.strip_prefix(':')
                    .ok_or_else(|| format!("unexpected {p:?} after the address literal"))?,
            ),
        };
        (Target::Addr(addr), port)
    } else {
        let (host, port) = match s.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (s, None),
        };
        if port.is_some_and(|p| p.contains(':')) {
            return Err(format!(
                "HOST {s:?} has several ':'; write an IPv6 address as [IPv6:addr]"
            ));
        }
        let target = match host.parse::<Ipv4Addr>() {
            Ok(a) => Target::Addr(IpAddr::V4(a)),
            Err(_) => {
                let d = Domain::parse(host, true).map_err(|e| format!("bad HOST {host:?}: {e}"))?;
                Target::Name(d.as_str().to_string())
            }
        };
        (target, port)
    };
    let port = match port {
        None => None,
        Some(p) => match p.parse::<u16>() {
            Ok(n) if n > 0 => Some(n),
            _ => return Err(format!("bad PORT {p:?}: expected 1-65535")),
        },
    };
    Ok((target, port))
}
