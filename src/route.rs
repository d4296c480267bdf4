//! Where mail for one recipient host goes next: the `Router`.
//!
//! Owns the routing decision only: static routes (`--route`), address
//! literals, and MX resolution with its RFC 5321 §5.1 rules (preference
//! order, random order among equals, implicit MX, loop avoidance) and RFC
//! 7505 null MX. It never connects anywhere and keeps no state between
//! calls: the decision is re-made at every delivery attempt, so a DNS or
//! configuration change takes effect on the next retry and a crash loses
//! nothing.
//!
//! Outcomes are classified here once: `RouteError::Permanent` carries the
//! code for the bounce (NXDOMAIN, null MX, mail that would loop back to us),
//! `RouteError::Temporary` defers (DNS trouble, no MX host with an address,
//! a static route whose host does not resolve: a configuration error must
//! not bounce mail).
//!
//! "Is this hop ourselves?" needs ports as well as addresses: a test or a
//! content filter may listen on `127.0.0.1:2526` while we listen on
//! `127.0.0.1:2525`. So the router takes our listen *socket* addresses
//! (`local_listen`), not bare IPs. A listener on `0.0.0.0`/`::` stands for
//! every address of this host; an address is ours when it is loopback or a
//! socket can be bound to it.

use std::collections::hash_map::RandomState;
use std::fmt;
use std::hash::{BuildHasher, Hasher};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, ToSocketAddrs, UdpSocket};

use log::{debug, warn};

use crate::config::route::Target;
pub use crate::config::route::{RouteAuth, RouteTls, StaticRoute};
use crate::dns::{Dns, DnsError, Mx};
use crate::smtp::{Enhanced, Host};

/// One next-hop host with its addresses, tried in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hop {
    /// The MX or route host name, or `[addr]` for a literal.
    pub name: String,
    pub addrs: Vec<IpAddr>,
    pub port: u16,
    /// The route's TLS policy; `None`: the global `--outbound-tls`.
    pub tls: Option<RouteTls>,
    /// The route's AUTH; `None` for MX hops and routes without.
    pub auth: Option<RouteAuth>,
}

impl fmt::Display for Hop {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{} [", self.name, self.port)?;
        for (i, a) in self.addrs.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{a}")?;
        }
        f.write_str("]")?;
        if let Some(tls) = self.tls {
            write!(f, " tls={tls}")?;
        }
        // the user name only: the password never leaves the secrets file
        match &self.auth {
            Some(a) if a.plaintext => write!(f, " auth={} (plaintext allowed)", a.describe()),
            Some(a) => write!(f, " auth={}", a.describe()),
            None => Ok(()),
        }
    }
}

/// Why there is no hop to try now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RouteError {
    /// Bounce the recipient with this reply.
    Permanent {
        code: u16,
        enhanced: Enhanced,
        text: String,
    },
    /// Defer and retry later.
    Temporary(String),
}

impl RouteError {
    pub fn is_permanent(&self) -> bool {
        matches!(self, RouteError::Permanent { .. })
    }

    fn permanent(code: u16, enhanced: Enhanced, text: String) -> RouteError {
        RouteError::Permanent {
            code,
            enhanced,
            text,
        }
    }

    /// RFC 7505 §4.2: 556 5.1.10 for a domain with a null MX.
    fn null_mx(domain: &str) -> RouteError {
        Self::permanent(
            556,
            Enhanced::new(5, 1, 10),
            format!("Domain {domain} does not accept mail (null MX)"),
        )
    }

    /// RFC 3463 §3.2 X.1.2: bad destination system address (NXDOMAIN).
    fn no_such_domain(domain: &str) -> RouteError {
        Self::permanent(
            550,
            Enhanced::new(5, 1, 2),
            format!("Domain {domain} does not exist (NXDOMAIN)"),
        )
    }

    /// RFC 3463 §3.5 X.4.4 "unable to route": no MX and no address records.
    fn unroutable(domain: &str) -> RouteError {
        Self::permanent(
            550,
            Enhanced::new(5, 4, 4),
            format!("Domain {domain} has no MX and no address records"),
        )
    }

    /// RFC 3463 §3.5 X.4.6 routing loop; RFC 5321 §5.1.
    fn loops(dest: &str) -> RouteError {
        Self::permanent(
            554,
            Enhanced::new(5, 4, 6),
            format!("mail for {dest} loops back to myself"),
        )
    }
}

impl fmt::Display for RouteError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RouteError::Permanent {
                code,
                enhanced,
                text,
            } => write!(f, "{code} {enhanced} {text}"),
            RouteError::Temporary(why) => f.write_str(why),
        }
    }
}

impl std::error::Error for RouteError {}

/// Routing for recipient hosts. `Send + Sync`: one router serves every
/// delivery thread.
#[derive(Debug)]
pub struct Router {
    routes: Vec<StaticRoute>,
    dns: Option<Dns>,
    smtp_port: u16,
    /// Lower case, without a trailing dot.
    local_names: Vec<String>,
    local_listen: Vec<SocketAddr>,
}

/// Collects the reasoning for `explain`, and logs it at debug level.
struct Trace {
    lines: Option<Vec<String>>,
}

impl Trace {
    fn note(&mut self, line: String) {
        debug!("route {line}");
        if let Some(lines) = &mut self.lines {
            lines.push(line);
        }
    }
}

impl Router {
    /// `dns: None` routes by static routes and address literals only; any
    /// other domain gets `Temporary("no route and DNS disabled")`, and a
    /// static route's host name is then resolved by the system resolver
    /// (`getaddrinfo`: `/etc/hosts`, then whatever the system uses).
    ///
    /// `local_names` are our host names; `local_listen` our listening
    /// sockets (a `0.0.0.0`/`::` listener covers every local address). Both
    /// serve loop detection (RFC 5321 §5.1).
    pub fn new(
        routes: Vec<StaticRoute>,
        dns: Option<Dns>,
        smtp_port: u16,
        local_names: Vec<String>,
        local_listen: Vec<SocketAddr>,
    ) -> Router {
        let local_names = local_names
            .iter()
            .map(|n| n.trim_end_matches('.').to_lowercase())
            .filter(|n| !n.is_empty())
            .collect();
        Router {
            routes,
            dns,
            smtp_port,
            local_names,
            local_listen,
        }
    }

    /// The hops for a recipient host, in the order to try them.
    pub fn route(&self, host: &Host) -> Result<Vec<Hop>, RouteError> {
        self.decide(host, &mut Trace { lines: None })
    }

    /// A human explanation for `smtp-relay route ADDRESS`: the static route
    /// that matched and why, or the MX list with preferences and addresses,
    /// null/implicit MX and loops, then the decision. The flag says whether
    /// the destination is deliverable now.
    pub fn explain(&self, host: &Host) -> (String, bool) {
        let mut trace = Trace {
            lines: Some(vec![format!("destination: {host}")]),
        };
        let result = self.decide(host, &mut trace);
        let mut lines = trace.lines.unwrap_or_default();
        let ok = match result {
            Ok(hops) => {
                lines.push("decision: deliver, trying in this order:".into());
                for (i, hop) in hops.iter().enumerate() {
                    lines.push(format!("  {}. {hop}", i + 1));
                }
                true
            }
            Err(e @ RouteError::Permanent { .. }) => {
                lines.push(format!("decision: bounce: {e}"));
                false
            }
            Err(RouteError::Temporary(why)) => {
                lines.push(format!("decision: defer (temporary): {why}"));
                false
            }
        };
        let mut text = lines.join("\n");
        text.push('\n');
        (text, ok)
    }

    fn decide(&self, host: &Host, trace: &mut Trace) -> Result<Vec<Hop>, RouteError> {
        if let Some(route) = self.static_route(host) {
            trace.note(format!("static route {route} matches ({})", route.why()));
            return self.static_hop(route, &host.to_string(), trace);
        }
        let domain = match host {
            Host::Name(d) => d,
            _ => {
                // RFC 5321 §4.1.3: an address literal names the host itself;
                // deliver there directly, no DNS.
                let ip = host.ip().expect("a non-name host is an address literal");
                trace.note(format!("address literal: deliver to {ip} directly"));
                let hop = Hop {
                    name: host.to_string(),
                    addrs: vec![ip],
                    port: self.smtp_port,
                    tls: None,
                    auth: None,
                };
                if self.is_self_addr(ip, self.smtp_port) {
                    trace.note(format!("{ip} port {} is one of our listeners", hop.port));
                    return Err(RouteError::loops(&host.to_string()));
                }
                return Ok(vec![hop]);
            }
        };
        let Some(dns) = &self.dns else {
            trace.note("no static route matches and DNS is disabled".into());
            return Err(RouteError::Temporary("no route and DNS disabled".into()));
        };
        let name = domain.as_str();
        match dns.mx(name) {
            Ok(mxs) => {
                trace.note(format!("MX records for {name}: {}", mx_list(&mxs)));
                let mxs = without_null_mx(name, mxs)?;
                let ordered = order_mx(mxs, random_seed());
                self.mx_hops(name, ordered, |h| dns.addrs(h), trace)
            }
            Err(DnsError::NoRecords) => {
                // RFC 5321 §5.1: no MX records: the domain itself is the
                // implicit MX, preference 0.
                trace.note(format!(
                    "{name} has no MX records: implicit MX (its A/AAAA)"
                ));
                let addrs = match dns.addrs(name) {
                    Ok(addrs) => addrs,
                    Err(DnsError::NoRecords) => {
                        // §5.1: no MX and no address: nothing to deliver to.
                        trace.note(format!("{name} has no A/AAAA records either"));
                        return Err(RouteError::unroutable(name));
                    }
                    Err(DnsError::NxDomain) => {
                        trace.note(format!("{name} does not exist (NXDOMAIN)"));
                        return Err(RouteError::no_such_domain(name));
                    }
                    Err(DnsError::Temporary(why)) => {
                        trace.note(format!("address lookup for {name} failed: {why}"));
                        return Err(RouteError::Temporary(format!(
                            "address lookup for {name} failed: {why}"
                        )));
                    }
                };
                let implicit = vec![Mx {
                    preference: 0,
                    exchange: name.to_string(),
                }];
                self.mx_hops(name, implicit, |_| Ok(addrs.clone()), trace)
            }
            Err(DnsError::NxDomain) => {
                trace.note(format!("{name} does not exist (NXDOMAIN)"));
                Err(RouteError::no_such_domain(name))
            }
            Err(DnsError::Temporary(why)) => {
                trace.note(format!("MX lookup for {name} failed: {why}"));
                Err(RouteError::Temporary(format!(
                    "MX lookup for {name} failed: {why}"
                )))
            }
        }
    }

    /// The most specific static route for `host`; the first given wins a
    /// tie.
    /// The metrics' destination class of `host` (bounded, not the name).
    pub fn dest_class(&self, host: &Host) -> crate::metrics::Dest {
        match host {
            _ if self.static_route(host).is_some() => crate::metrics::Dest::Route,
            Host::Name(_) => crate::metrics::Dest::Mx,
            _ => crate::metrics::Dest::Literal,
        }
    }

    /// Whether a static route decides for `host` (then its TLS policy is
    /// the route's, `tls_policy.rs`).
    pub fn has_static_route(&self, host: &Host) -> bool {
        self.static_route(host).is_some()
    }

    fn static_route(&self, host: &Host) -> Option<&StaticRoute> {
        let mut best: Option<(&StaticRoute, (u8, usize))> = None;
        for route in &self.routes {
            if let Some(rank) = route.rank(host) {
                if best.is_none_or(|(_, b)| rank > b) {
                    best = Some((route, rank));
                }
            }
        }
        best.map(|(r, _)| r)
    }

    /// The hops of a static route, in the order given; a host that does
    /// not resolve is skipped while another does (failover), and defers
    /// only when none does.
    fn static_hop(
        &self,
        route: &StaticRoute,
        dest: &str,
        trace: &mut Trace,
    ) -> Result<Vec<Hop>, RouteError> {
        let mut hops = Vec::with_capacity(route.targets.len());
        let mut unresolved = Vec::new();
        for (target, port) in &route.targets {
            let port = port.unwrap_or(self.smtp_port);
            // RFC 5321 §5.1 loop avoidance, for routes: our own name on one
            // of our ports, or (below) one of our listening sockets.
            if let Target::Name(n) = target {
                let our_port = self.local_listen.is_empty()
                    || self.local_listen.iter().any(|l| l.port() == port);
                if our_port && self.is_local_name(n) {
                    trace.note(format!("route host {n} port {port} is this server"));
                    return Err(RouteError::loops(dest));
                }
            }
            let (name, addrs) = match target {
                Target::Addr(a) => (format!("[{a}]"), vec![*a]),
                Target::Name(n) => {
                    // A route's host is used as it is: its A/AAAA, never its
                    // MX. Failure defers: a broken route is for the operator
                    // to fix, not a reason to bounce.
                    let found = match &self.dns {
                        Some(dns) => dns.addrs(n).map_err(|e| e.to_string()),
                        None => system_addrs(n, port),
                    };
                    match found {
                        Ok(a) => (n.clone(), a),
                        Err(why) => {
                            trace.note(format!("route host {n}: {why}"));
                            unresolved.push(format!("route host {n} does not resolve: {why}"));
                            continue;
                        }
                    }
                }
            };
            let hop = Hop {
                name,
                addrs,
                port,
                tls: route.tls,
                auth: route.auth.clone(),
            };
            trace.note(format!("route host {hop}"));
            if hop.addrs.iter().any(|a| self.is_self_addr(*a, port)) {
                trace.note(format!("route host {hop} is one of our listeners"));
                return Err(RouteError::loops(dest));
            }
            hops.push(hop);
        }
        if hops.is_empty() {
            return Err(RouteError::Temporary(unresolved.join("; ")));
        }
        Ok(hops)
    }

    /// Resolves MX hosts (already in the order to try them), drops
    /// ourselves and everything not better than us, and builds the hops.
    fn mx_hops(
        &self,
        domain: &str,
        mxs: Vec<Mx>,
        mut resolve: impl FnMut(&str) -> Result<Vec<IpAddr>, DnsError>,
        trace: &mut Trace,
    ) -> Result<Vec<Hop>, RouteError> {
        let mut cands = Vec::with_capacity(mxs.len());
        for mx in mxs {
            let addrs = resolve(&mx.exchange);
            let is_self = self.is_local_name(&mx.exchange)
                || addrs
                    .as_ref()
                    .is_ok_and(|a| a.iter().any(|ip| self.is_self_addr(*ip, self.smtp_port)));
            trace.note(format!(
                "  {} {}: {}{}",
                mx.preference,
                mx.exchange,
                match &addrs {
                    Ok(a) => join(a),
                    Err(e) => format!("no address ({e})"),
                },
                if is_self { " (this server)" } else { "" }
            ));
            cands.push(Candidate { mx, addrs, is_self });
        }
        let (kept, ours) = drop_self_and_worse(cands);
        if let Some(pref) = ours {
            if kept.is_empty() {
                // RFC 5321 §5.1: we are the best MX and have nowhere to
                // relay to.
                trace.note(format!(
                    "this server is the best MX (preference {pref}) for {domain}"
                ));
                return Err(RouteError::loops(domain));
            }
            trace.note(format!(
                "this server is an MX with preference {pref}: only better MXs are kept"
            ));
        }
        let mut hops = Vec::new();
        let mut failures = Vec::new();
        for c in kept {
            match c.addrs {
                Ok(addrs) => hops.push(Hop {
                    name: c.mx.exchange,
                    addrs,
                    port: self.smtp_port,
                    tls: None,
                    auth: None,
                }),
                Err(e) => {
                    warn!("route {domain}: MX host {} skipped: {e}", c.mx.exchange);
                    failures.push(format!("{}: {e}", c.mx.exchange));
                }
            }
        }
        if hops.is_empty() {
            return Err(RouteError::Temporary(format!(
                "no MX host of {domain} has an address ({})",
                failures.join("; ")
            )));
        }
        Ok(hops)
    }

    fn is_local_name(&self, name: &str) -> bool {
        let name = name.trim_end_matches('.');
        self.local_names
            .iter()
            .any(|n| n.eq_ignore_ascii_case(name))
    }

    /// True when connecting to `ip`:`port` would reach one of our listeners.
    fn is_self_addr(&self, ip: IpAddr, port: u16) -> bool {
        // Connecting to 0.0.0.0 or :: reaches this host (Linux treats it as
        // loopback).
        let ip = match ip.to_canonical() {
            IpAddr::V4(a) if a.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(a) if a.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
            other => other,
        };
        self.local_listen.iter().any(|l| {
            if l.port() != port {
                return false;
            }
            let lip = l.ip().to_canonical();
            if lip.is_unspecified() {
                // 0.0.0.0 covers IPv4; :: covers both (dual-stack).
                (lip.is_ipv6() || ip.is_ipv4()) && is_local_ip(ip)
            } else {
                lip == ip
            }
        })
    }
}

/// An address of this host: loopback, or one a socket can be bound to.
fn is_local_ip(ip: IpAddr) -> bool {
    ip.is_loopback() || UdpSocket::bind(SocketAddr::new(ip, 0)).is_ok()
}

/// `name`'s addresses through the system resolver (only without `Dns`).
fn system_addrs(name: &str, port: u16) -> Result<Vec<IpAddr>, String> {
    let mut addrs = Vec::new();
    for sa in (name, port).to_socket_addrs().map_err(|e| e.to_string())? {
        if !addrs.contains(&sa.ip()) {
            addrs.push(sa.ip());
        }
    }
    if addrs.is_empty() {
        return Err("no addresses".into());
    }
    Ok(addrs)
}

/// An MX host with what its address lookup gave.
#[derive(Debug)]
struct Candidate {
    mx: Mx,
    addrs: Result<Vec<IpAddr>, DnsError>,
    is_self: bool,
}

/// RFC 5321 §5.1: when we are one of the MX hosts, discard every MX with a
/// preference equal to or greater than our own (lowest) one. Returns what
/// remains and our preference, if we were among them.
fn drop_self_and_worse(cands: Vec<Candidate>) -> (Vec<Candidate>, Option<u16>) {
    let ours = cands
        .iter()
        .filter(|c| c.is_self)
        .map(|c| c.mx.preference)
        .min();
    match ours {
        Some(p) => (
            cands.into_iter().filter(|c| c.mx.preference < p).collect(),
            Some(p),
        ),
        None => (cands, None),
    }
}

/// RFC 7505 §3: a null MX (exchange ".") says the domain takes no mail.
/// §4.1: never try it; a null MX mixed with real ones is a misconfiguration,
/// and the real ones are used.
fn without_null_mx(domain: &str, mxs: Vec<Mx>) -> Result<Vec<Mx>, RouteError> {
    if !mxs.is_empty() && mxs.iter().all(Mx::is_null) {
        return Err(RouteError::null_mx(domain));
    }
    Ok(mxs.into_iter().filter(|m| !m.is_null()).collect())
}

/// RFC 5321 §5.1: MX records in increasing preference; hosts of equal
/// preference in random order, to spread the load. `seed` drives the
/// shuffle so tests can pin it.
fn order_mx(mut mxs: Vec<Mx>, seed: u64) -> Vec<Mx> {
    mxs.sort_by_key(|m| m.preference);
    let mut rng = SplitMix(seed);
    let mut start = 0;
    while start < mxs.len() {
        let pref = mxs[start].preference;
        let end = start
            + mxs[start..]
                .iter()
                .take_while(|m| m.preference == pref)
                .count();
        // Fisher-Yates over mxs[start..end].
        for i in (start + 1..end).rev() {
            let j = start + (rng.next() % (i - start + 1) as u64) as usize;
            mxs.swap(i, j);
        }
        start = end;
    }
    mxs
}

/// SplitMix64: a tiny PRNG, plenty for shuffling equal MX records.
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

/// A fresh seed per call from std's randomly keyed hasher plus the clock:
/// no extra crate for a load-spreading shuffle.
fn random_seed() -> u64 {
    let mut h = RandomState::new().build_hasher();
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    h.write_u64(nanos);
    h.finish()
}

fn mx_list(mxs: &[Mx]) -> String {
    mxs.iter()
        .map(|m| {
            if m.is_null() {
                format!("{} . (null MX)", m.preference)
            } else {
                format!("{} {}", m.preference, m.exchange)
            }
        })
        .collect::<Vec<_>>()
        .join(", ")
}

fn join(addrs: &[IpAddr]) -> String {
    addrs
        .iter()
        .map(|a| a.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::smtp::Mailbox;
    use crate::tls::OutboundTls;

    fn host(s: &str) -> Host {
        Mailbox::parse(&format!("user@{s}"), true)
            .expect("test hosts are valid")
            .host()
            .clone()
    }

    fn route(s: &str) -> StaticRoute {
        StaticRoute::parse(s).unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    fn mx(preference: u16, exchange: &str) -> Mx {
        Mx {
            preference,
            exchange: exchange.into(),
        }
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn parse_table() {
        // (input, Ok(Display form) or Err(part of the message))
        let cases: &[(&str, Result<&str, &str>)] = &[
            ("*=smarthost.example", Ok("*=smarthost.example")),
            ("*=smarthost.example:587", Ok("*=smarthost.example:587")),
            (
                "Example.ORG=relay.example:2526",
                Ok("example.org=relay.example:2526"),
            ),
            (".example.org=[192.0.2.1]", Ok(".example.org=[192.0.2.1]")),
            (
                "example.org=[192.0.2.1]:26",
                Ok("example.org=[192.0.2.1]:26"),
            ),
            (
                "example.org=127.0.0.1:2526",
                Ok("example.org=[127.0.0.1]:2526"),
            ),
            ("example.org=[::1]", Ok("example.org=[::1]")),
            ("example.org=[IPv6:::1]:2526", Ok("example.org=[::1]:2526")),
            (
                "example.org=[ipv6:2001:db8::1]",
                Ok("example.org=[2001:db8::1]"),
            ),
            ("example.org", Err("expected DOMAIN=HOST[:PORT]")),
            ("=relay.example", Err("empty DOMAIN")),
            ("example.org=", Err("empty HOST")),
            ("exa mple.org=relay", Err("bad DOMAIN")),
            ("..example.org=relay", Err("bad DOMAIN")),
            ("example.org=relay_host", Err("bad HOST")),
            ("example.org=relay:0", Err("bad PORT")),
            ("example.org=relay:65536", Err("bad PORT")),
            ("example.org=relay:", Err("bad PORT")),
            ("example.org=relay:x", Err("bad PORT")),
            ("example.org=::1", Err("[IPv6:addr]")),
            ("example.org=[::1", Err("unterminated")),
            ("example.org=[300.1.1.1]", Err("bad address literal")),
            ("example.org=[IPv6:192.0.2.1]", Err("IPv4 after 'IPv6:'")),
            ("example.org=[::1]x", Err("after the address literal")),
            ("example.org=[::1]:", Err("bad PORT")),
        ];
        for (input, want) in cases {
            match (StaticRoute::parse(input), want) {
                (Ok(r), Ok(text)) => assert_eq!(r.to_string(), *text, "{input}"),
                (Err(e), Err(part)) => {
                    assert!(e.contains(part), "{input}: {e:?} lacks {part:?}");
                    assert!(e.contains(input), "{input}: {e:?} does not quote the route");
                }
                (got, _) => panic!("{input}: got {got:?}, want {want:?}"),
            }
        }
    }

    fn router(routes: &[&str]) -> Router {
        Router::new(
            routes.iter().map(|r| route(r)).collect(),
            None,
            25,
            vec!["MX.Self.Example.".into()],
            vec!["127.0.0.1:2525".parse().unwrap()],
        )
    }

    fn matched(r: &Router, h: &str) -> Option<String> {
        r.static_route(&host(h)).map(|r| r.to_string())
    }

    #[test]
    fn most_specific_route_wins() {
        let r = router(&[
            "*=[192.0.2.9]",
            ".example.org=[192.0.2.1]",
            ".sub.example.org=[192.0.2.2]",
            "a.sub.example.org=[192.0.2.3]",
            ".example.org=[192.0.2.4]",
        ]);
        let cases = [
            ("a.sub.example.org", "a.sub.example.org=[192.0.2.3]"),
            ("A.Sub.Example.ORG", "a.sub.example.org=[192.0.2.3]"),
            ("b.sub.example.org", ".sub.example.org=[192.0.2.2]"),
            ("x.a.sub.example.org", ".sub.example.org=[192.0.2.2]"),
            ("sub.example.org", ".example.org=[192.0.2.1]"), // first of a tie
            ("example.org", "*=[192.0.2.9]"),                // `.x` is subdomains only
            ("notexample.org", "*=[192.0.2.9]"),
            ("[192.0.2.77]", "*=[192.0.2.9]"),
        ];
        for (h, want) in cases {
            assert_eq!(matched(&r, h).as_deref(), Some(want), "{h}");
        }
        let r = router(&["example.org=[192.0.2.1]", ".example.org=[192.0.2.2]"]);
        assert_eq!(
            matched(&r, "EXAMPLE.org").as_deref(),
            Some("example.org=[192.0.2.1]")
        );
        assert_eq!(matched(&r, "other.test"), None);
        assert_eq!(matched(&r, "[192.0.2.1]"), None);
    }

    /// A route with several hosts gives one hop per host, in the order
    /// given, each carrying the route's TLS policy; any of them being
    /// this server is a loop.
    #[test]
    fn several_hosts_fail_over_in_order() {
        let tls = Some(RouteTls::Starttls(OutboundTls::Encrypt));
        let r = Router::new(
            vec![StaticRoute::new("example.org", "[192.0.2.2]:587, [192.0.2.1]", tls).unwrap()],
            None,
            25,
            vec!["relay.test".into()],
            vec!["127.0.0.1:2525".parse().unwrap()],
        );
        let hops = r.route(&host("example.org")).unwrap();
        let got: Vec<(String, u16, Option<RouteTls>)> = hops
            .iter()
            .map(|h| (h.name.clone(), h.port, h.tls))
            .collect();
        assert_eq!(
            got,
            [
                ("[192.0.2.2]".to_string(), 587, tls),
                ("[192.0.2.1]".to_string(), 25, tls)
            ]
        );
        let r = router(&["example.org=[192.0.2.1],[127.0.0.1]:2525"]);
        assert!(r.route(&host("example.org")).unwrap_err().is_permanent());
        assert_eq!(RouteTls::parse("none"), Ok(RouteTls::None));
        assert_eq!(RouteTls::parse("implicit"), Ok(RouteTls::Implicit));
        assert!(RouteTls::parse("sometimes").is_err());
    }

    #[test]
    fn static_and_literal_routing_without_dns() {
        let r = router(&["example.org=[192.0.2.1]:2526", ".example.net=[::1]"]);
        assert_eq!(
            r.route(&host("example.org")),
            Ok(vec![Hop {
                name: "[192.0.2.1]".into(),
                addrs: vec![ip("192.0.2.1")],
                port: 2526,
                tls: None,
                auth: None,
            }])
        );
        let hops = r.route(&host("a.example.net")).unwrap();
        assert_eq!((hops[0].addrs.clone(), hops[0].port), (vec![ip("::1")], 25));
        // RFC 5321 §4.1.3: a literal goes to that address.
        assert_eq!(
            r.route(&host("[IPv6:2001:db8::5]")),
            Ok(vec![Hop {
                name: "[IPv6:2001:db8::5]".into(),
                addrs: vec![ip("2001:db8::5")],
                port: 25,
                tls: None,
                auth: None,
            }])
        );
        assert_eq!(
            r.route(&host("other.test")),
            Err(RouteError::Temporary("no route and DNS disabled".into()))
        );
        let (text, ok) = r.explain(&host("example.org"));
        assert!(ok);
        assert!(text.contains("exact domain match"), "{text}");
        assert!(text.contains("[192.0.2.1]:2526"), "{text}");
        let (text, ok) = r.explain(&host("other.test"));
        assert!(!ok);
        assert!(text.contains("defer"), "{text}");
    }

    #[test]
    fn smarthost_takes_literals_too() {
        let r = router(&["*=[192.0.2.9]:587"]);
        let hops = r.route(&host("[192.0.2.1]")).unwrap();
        assert_eq!(
            (hops[0].addrs.clone(), hops[0].port),
            (vec![ip("192.0.2.9")], 587)
        );
    }

    fn assert_loop(res: Result<Vec<Hop>, RouteError>) {
        match res {
            Err(RouteError::Permanent {
                code,
                enhanced,
                text,
            }) => {
                assert_eq!((code, enhanced), (554, Enhanced::new(5, 4, 6)));
                assert!(text.contains("loops back to myself"), "{text}");
            }
            other => panic!("expected a loop, got {other:?}"),
        }
    }

    #[test]
    fn routes_to_ourselves_are_loops() {
        // Same address and port as our listener.
        assert_loop(router(&["*=[127.0.0.1]:2525"]).route(&host("example.org")));
        // Same address, another port: a different server (a sink, a filter).
        assert!(router(&["*=[127.0.0.1]:2526"])
            .route(&host("example.org"))
            .is_ok());
        // Our name on our port.
        assert_loop(router(&["*=mx.self.example:2525"]).route(&host("example.org")));
        // A literal recipient at our listener (smtp_port = listener port).
        let r = Router::new(
            vec![],
            None,
            2525,
            vec![],
            vec!["0.0.0.0:2525".parse().unwrap()],
        );
        assert_loop(r.route(&host("[127.0.0.1]")));
        assert!(r.route(&host("[192.0.2.1]")).is_ok());
        let (text, ok) = r.explain(&host("[127.0.0.1]"));
        assert!(!ok && text.contains("554 5.4.6"), "{text}");
    }

    #[test]
    fn self_address_matching() {
        let r = Router::new(
            vec![],
            None,
            25,
            vec![],
            vec![
                "127.0.0.1:25".parse().unwrap(),
                "[::]:2525".parse().unwrap(),
            ],
        );
        assert!(r.is_self_addr(ip("127.0.0.1"), 25));
        assert!(r.is_self_addr(ip("0.0.0.0"), 25));
        assert!(r.is_self_addr(ip("::ffff:127.0.0.1"), 25));
        assert!(!r.is_self_addr(ip("127.0.0.2"), 25));
        assert!(!r.is_self_addr(ip("127.0.0.1"), 26));
        // `::` covers every local address, both families.
        assert!(r.is_self_addr(ip("127.0.0.5"), 2525));
        assert!(r.is_self_addr(ip("::1"), 2525));
        assert!(!r.is_self_addr(ip("192.0.2.1"), 2525)); // TEST-NET, not ours
    }

    #[test]
    fn mx_order_by_preference_then_shuffled() {
        let mxs = vec![mx(20, "c"), mx(10, "a"), mx(30, "d"), mx(10, "b")];
        let mut seen_first = std::collections::BTreeSet::new();
        for seed in 0..64 {
            let got = order_mx(mxs.clone(), seed);
            let prefs: Vec<u16> = got.iter().map(|m| m.preference).collect();
            assert_eq!(prefs, [10, 10, 20, 30]);
            assert_eq!(
                (got[2].exchange.as_str(), got[3].exchange.as_str()),
                ("c", "d")
            );
            seen_first.insert(got[0].exchange.clone());
        }
        // Both equal-preference hosts come first for some seed.
        assert_eq!(seen_first.into_iter().collect::<Vec<_>>(), ["a", "b"]);
        // A larger group: every host leads sometimes, none is lost.
        let group: Vec<Mx> = (0..5).map(|i| mx(5, &format!("h{i}"))).collect();
        let mut leaders = std::collections::BTreeSet::new();
        for seed in 0..200 {
            let got = order_mx(group.clone(), seed);
            let mut names: Vec<_> = got.iter().map(|m| m.exchange.clone()).collect();
            leaders.insert(names[0].clone());
            names.sort();
            assert_eq!(names, ["h0", "h1", "h2", "h3", "h4"]);
        }
        assert_eq!(leaders.len(), 5);
        assert_eq!(order_mx(vec![], 1), vec![]);
    }

    #[test]
    fn null_mx() {
        match without_null_mx("nomail.test", vec![mx(0, "")]) {
            Err(RouteError::Permanent {
                code,
                enhanced,
                text,
            }) => {
                assert_eq!((code, enhanced), (556, Enhanced::new(5, 1, 10)));
                assert!(text.contains("does not accept mail (null MX)"));
            }
            other => panic!("{other:?}"),
        }
        // Mixed with real MXs: the null one is ignored.
        assert_eq!(
            without_null_mx("d", vec![mx(0, ""), mx(10, "mx")]),
            Ok(vec![mx(10, "mx")])
        );
    }

    fn cand(pref: u16, name: &str, is_self: bool) -> Candidate {
        Candidate {
            mx: mx(pref, name),
            addrs: Ok(vec![]),
            is_self,
        }
    }

    #[test]
    fn drops_self_and_worse() {
        let names = |v: Vec<Candidate>| v.into_iter().map(|c| c.mx.exchange).collect::<Vec<_>>();
        let (kept, ours) = drop_self_and_worse(vec![
            cand(10, "a", false),
            cand(20, "b", false),
            cand(20, "me", true),
            cand(30, "c", false),
        ]);
        assert_eq!((names(kept), ours), (vec!["a".to_string()], Some(20)));
        let (kept, ours) = drop_self_and_worse(vec![cand(10, "me", true), cand(20, "b", false)]);
        assert!(kept.is_empty());
        assert_eq!(ours, Some(10));
        let (kept, ours) = drop_self_and_worse(vec![cand(10, "a", false)]);
        assert_eq!((kept.len(), ours), (1, None));
    }

    #[test]
    fn mx_pipeline_with_fake_resolver() {
        let r = router(&[]);
        let resolve = |h: &str| match h {
            "mx1.test" => Ok(vec![ip("192.0.2.1")]),
            "mx2.test" => Ok(vec![ip("192.0.2.2"), ip("2001:db8::2")]),
            "gone.test" => Err(DnsError::NxDomain),
            "me.test" => Ok(vec![ip("127.0.0.1")]),
            _ => Err(DnsError::Temporary("timeout".into())),
        };
        let mut t = Trace {
            lines: Some(vec![]),
        };
        let hops = r
            .mx_hops(
                "d.test",
                vec![mx(5, "gone.test"), mx(10, "mx1.test"), mx(20, "mx2.test")],
                resolve,
                &mut t,
            )
            .unwrap();
        let got: Vec<_> = hops
            .iter()
            .map(|h| (h.name.as_str(), h.addrs.len()))
            .collect();
        assert_eq!(got, [("mx1.test", 1), ("mx2.test", 2)]);
        // Nothing resolves: temporary.
        let e = r
            .mx_hops(
                "d.test",
                vec![mx(5, "gone.test"), mx(9, "x.test")],
                resolve,
                &mut t,
            )
            .unwrap_err();
        assert!(!e.is_permanent(), "{e}");
        // We are the best MX by name (case-insensitive) or by address.
        assert_loop(r.mx_hops(
            "d.test",
            vec![mx(1, "mx.self.EXAMPLE"), mx(10, "mx1.test")],
            resolve,
            &mut t,
        ));
        let r25 = Router::new(
            vec![],
            None,
            25,
            vec![],
            vec!["127.0.0.1:25".parse().unwrap()],
        );
        assert_loop(r25.mx_hops("d.test", vec![mx(1, "me.test")], resolve, &mut t));
        // We are a backup MX: only the better ones remain.
        let hops = r25
            .mx_hops(
                "d.test",
                vec![mx(10, "mx1.test"), mx(20, "me.test"), mx(30, "mx2.test")],
                resolve,
                &mut t,
            )
            .unwrap();
        assert_eq!(hops.len(), 1);
        assert_eq!(hops[0].name, "mx1.test");
    }

    #[test]
    fn router_is_send_and_sync() {
        fn check<T: Send + Sync>() {}
        check::<Router>();
    }
}
