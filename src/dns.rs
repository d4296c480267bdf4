//! Blocking DNS for the delivery threads: MX, address and TXT lookups.
//!
//! Owns a small private tokio runtime and a hickory `TokioResolver` (with
//! its response cache). Async never leaves this file: callers on ordinary
//! threads get blocking `mx()`/`addrs()` that each end within the timeout
//! given to `Dns::new`. No state is kept on disk, so there is no crash story
//! beyond "the cache is lost".
//!
//! Errors are classified once, here, into what routing needs: the name does
//! not exist (`NxDomain`, permanent), it exists without records of the type
//! asked (`NoRecords`, e.g. no MX: RFC 5321 §5.1 implicit MX), or anything
//! else (`Temporary`: SERVFAIL, REFUSED, timeouts, I/O), which must only ever
//! defer a message.

use std::collections::BTreeSet;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use hickory_resolver::config::{
    ConnectionConfig, LookupIpStrategy, NameServerConfig, ResolveHosts, ResolverConfig,
    ResolverOpts,
};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::net::NetError;
use hickory_resolver::proto::dnssec::{Proof, TrustAnchors};
use hickory_resolver::proto::rr::{Name, RData, RecordType};
use hickory_resolver::TokioResolver;

/// One MX record (RFC 1035 §3.3.9).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mx {
    pub preference: u16,
    /// The exchange without its trailing dot; `""` for the null MX `.`
    /// (RFC 7505).
    pub exchange: String,
}

impl Mx {
    /// RFC 7505 §3: an MX whose exchange is the root name `.`.
    pub fn is_null(&self) -> bool {
        self.exchange.is_empty()
    }
}

/// An answer and whether DNSSEC proved it (RFC 4035 §4.3 "secure").
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Validated<T> {
    pub value: T,
    pub secure: bool,
}

/// Why a lookup gave no answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DnsError {
    /// NXDOMAIN: the name does not exist. Permanent.
    NxDomain,
    /// NOERROR without records of the type asked (NODATA).
    NoRecords,
    /// SERVFAIL, REFUSED, timeout, I/O, a malformed answer: retry later.
    Temporary(String),
}

impl DnsError {
    pub fn is_temporary(&self) -> bool {
        matches!(self, DnsError::Temporary(_))
    }
}

impl fmt::Display for DnsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DnsError::NxDomain => f.write_str("no such domain (NXDOMAIN)"),
            DnsError::NoRecords => f.write_str("no records of the requested type"),
            DnsError::Temporary(why) => write!(f, "temporary DNS failure: {why}"),
        }
    }
}

impl std::error::Error for DnsError {}

/// A blocking resolver. `Send + Sync`: share one (e.g. in an `Arc`) between
/// all delivery threads; each call blocks only its caller. Call it from
/// ordinary threads only: blocking inside an async task would panic, and
/// nothing outside this file is async.
pub struct Dns {
    // Declared before `rt` so it is dropped first, while the runtime that
    // runs its background connection tasks still exists.
    resolver: TokioResolver,
    rt: tokio::runtime::Runtime,
    timeout: Duration,
}

impl fmt::Debug for Dns {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Dns")
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl Dns {
    /// `server`: `None` reads the system configuration (`/etc/resolv.conf`);
    /// `Some(addr)` asks only that nameserver, over UDP and TCP (tests use a
    /// dnsmasq on `127.0.0.1:PORT`). `timeout` bounds every `mx()`/`addrs()`
    /// call as a whole.
    pub fn new(server: Option<SocketAddr>, timeout: Duration) -> Result<Dns, DnsError> {
        Dns::build(server, timeout, None)
    }

    /// A DNSSEC-validating resolver (RFC 4033 §5, RFC 4035 §5) for DANE
    /// (RFC 7672 §2.2): hickory validates every answer itself from the
    /// trust anchor (`anchor`: a file of DNSKEY records, or the root
    /// zone's keys compiled into hickory) up, through `server` or the
    /// system's resolvers, which need only pass DNSSEC records on. Why
    /// not trust a resolver's AD bit instead: README "DANE".
    pub fn validating(
        server: Option<SocketAddr>,
        timeout: Duration,
        anchor: Option<&Path>,
    ) -> Result<Dns, DnsError> {
        let anchors = match anchor {
            Some(path) => TrustAnchors::from_file(path).map_err(|e| {
                DnsError::Temporary(format!("trust anchor {}: {e}", path.display()))
            })?,
            None => TrustAnchors::default(),
        };
        Dns::build(server, timeout, Some(Arc::new(anchors)))
    }

    fn build(
        server: Option<SocketAddr>,
        timeout: Duration,
        anchors: Option<Arc<TrustAnchors>>,
    ) -> Result<Dns, DnsError> {
        let rt = small_runtime("dns")?;
        // Building the resolver may spawn onto the current runtime.
        let enter = rt.enter();
        let (config, opts) = resolver_setup(server, timeout)?;
        let mut builder =
            TokioResolver::builder_with_config(config, TokioRuntimeProvider::default())
                .with_options(opts);
        if let Some(anchors) = anchors {
            builder = builder.with_trust_anchor(anchors);
        }
        let resolver = builder
            .build()
            .map_err(|e| DnsError::Temporary(format!("cannot build the resolver: {e}")))?;
        drop(enter);
        Ok(Dns {
            resolver,
            rt,
            timeout,
        })
    }

    /// How long one lookup (or one batch of [`Dns::a_all`]) may take.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// The MX records of `domain`, sorted by preference (equal preferences
    /// keep the server's order: shuffling them is routing's business).
    /// `Err(NoRecords)` when the domain exists without MX.
    pub fn mx(&self, domain: &str) -> Result<Vec<Mx>, DnsError> {
        let name = fqdn(domain)?;
        let resolver = &self.resolver;
        let lookup = self.block_on(async move { resolver.mx_lookup(name).await })?;
        let mut mxs: Vec<Mx> = lookup
            .answers()
            .iter()
            .filter_map(|r| match &r.data {
                RData::MX(mx) => Some(Mx {
                    preference: mx.preference,
                    exchange: name_text(&mx.exchange),
                }),
                _ => None,
            })
            .collect();
        if mxs.is_empty() {
            // e.g. only a CNAME chain came back
            return Err(DnsError::NoRecords);
        }
        mxs.sort_by_key(|m| m.preference);
        mxs.dedup();
        Ok(mxs)
    }

    /// The A and AAAA addresses of `host`, IPv4 first, without duplicates.
    /// `Err(NoRecords)` when the name exists with neither.
    pub fn addrs(&self, host: &str) -> Result<Vec<IpAddr>, DnsError> {
        let name = fqdn(host)?;
        let resolver = &self.resolver;
        let lookup = self.block_on(async move { resolver.lookup_ip(name).await })?;
        let mut seen = BTreeSet::new();
        let addrs: Vec<IpAddr> = lookup.iter().filter(|a| seen.insert(*a)).collect();
        if addrs.is_empty() {
            return Err(DnsError::NoRecords);
        }
        Ok(addrs)
    }

    /// The A records of each of `names`, in order, asked at once (the DNS
    /// lists of one client, RFC 5782 §2.1): the lookups run concurrently
    /// on the private runtime, and all of them end by `deadline` and
    /// within the timeout; a lookup still unanswered then is abandoned.
    pub fn a_all(
        &self,
        names: &[String],
        deadline: std::time::Instant,
    ) -> Vec<Result<Vec<std::net::Ipv4Addr>, DnsError>> {
        let deadline = deadline.min(std::time::Instant::now() + self.timeout);
        let lookups: Vec<_> = names
            .iter()
            .map(|n| {
                let (name, resolver) = (fqdn(n), self.resolver.clone());
                self.rt.spawn(async move {
                    let lookup = resolver
                        .lookup(name?, hickory_resolver::proto::rr::RecordType::A)
                        .await
                        .map_err(|e| classify(&e))?;
                    a_records(&lookup)
                })
            })
            .collect();
        // The timer must be made inside the runtime: hence the async block.
        self.rt.block_on(async move {
            let deadline = tokio::time::Instant::from_std(deadline);
            let mut answers = Vec::with_capacity(lookups.len());
            for lookup in lookups {
                let abort = lookup.abort_handle();
                answers.push(match tokio::time::timeout_at(deadline, lookup).await {
                    Ok(Ok(answer)) => answer,
                    Ok(Err(e)) => Err(DnsError::Temporary(format!("lookup failed: {e}"))),
                    Err(_) => {
                        abort.abort();
                        Err(DnsError::Temporary("no answer in time".into()))
                    }
                });
            }
            answers
        })
    }

    /// The TXT records of `name`, each its strings joined (RFC 7208 §3.3
    /// style; RFC 8461 §3.1 records are one string in practice).
    /// `Err(NoRecords)` when it has none.
    pub fn txt(&self, name: &str) -> Result<Vec<String>, DnsError> {
        let name = fqdn(name)?;
        let resolver = &self.resolver;
        let lookup = self.block_on(async move {
            resolver
                .lookup(name, hickory_resolver::proto::rr::RecordType::TXT)
                .await
        })?;
        let records: Vec<String> = lookup
            .answers()
            .iter()
            .filter_map(|r| match &r.data {
                RData::TXT(t) => Some(
                    t.txt_data
                        .iter()
                        .map(|part| String::from_utf8_lossy(part).into_owned())
                        .collect(),
                ),
                _ => None,
            })
            .collect();
        if records.is_empty() {
            return Err(DnsError::NoRecords);
        }
        Ok(records)
    }

    /// The reverse name of `ip` (the first PTR record), for access rules
    /// on the client's name. `Err(NoRecords)` when it has none.
    pub fn ptr(&self, ip: IpAddr) -> Result<String, DnsError> {
        let name = Name::from(ip);
        let resolver = &self.resolver;
        let lookup = self.block_on(async move { resolver.reverse_lookup(name).await })?;
        lookup
            .answers()
            .iter()
            .find_map(|r| match &r.data {
                RData::PTR(p) => Some(name_text(&p.0)),
                _ => None,
            })
            .ok_or(DnsError::NoRecords)
    }

    /// The MX records of `domain` from a validating resolver
    /// ([`Dns::validating`]), and whether they are secure (RFC 7672
    /// §2.2.1). A bogus answer is an `Err` (temporary: RFC 7672 §2.1
    /// has the message wait, never go out unprotected).
    pub fn mx_validated(&self, domain: &str) -> Result<Validated<Vec<Mx>>, DnsError> {
        let (data, secure) = self.validated(domain, RecordType::MX)?;
        let mut mxs: Vec<Mx> = data
            .iter()
            .filter_map(|d| match d {
                RData::MX(mx) => Some(Mx {
                    preference: mx.preference,
                    exchange: name_text(&mx.exchange),
                }),
                _ => None,
            })
            .collect();
        mxs.sort_by_key(|m| m.preference);
        Ok(Validated { value: mxs, secure })
    }

    /// Whether the A and AAAA records of `host` are all secure (RFC 7672
    /// §2.2.2: TLSA records of a host whose address is insecure are not
    /// looked up). `Err` for a bogus or failed lookup.
    pub fn addrs_secure(&self, host: &str) -> Result<bool, DnsError> {
        let mut secure = true;
        let mut found = false;
        for rtype in [RecordType::A, RecordType::AAAA] {
            match self.validated(host, rtype) {
                Ok((_, s)) => {
                    secure &= s;
                    found = true;
                }
                Err(DnsError::NoRecords) => {}
                Err(e) => return Err(e),
            }
        }
        if !found {
            return Err(DnsError::NoRecords);
        }
        Ok(secure)
    }

    /// The TLSA records at `_PORT._tcp.HOST` (RFC 6698 §3, RFC 7672
    /// §2.2.3) from a validating resolver, and whether they are secure.
    /// `Err(NoRecords)` or `Err(NxDomain)`: none (a secure denial and an
    /// insecure one mean the same here, opportunistic TLS).
    pub fn tlsa(
        &self,
        host: &str,
        port: u16,
    ) -> Result<Validated<Vec<crate::dane::Tlsa>>, DnsError> {
        let name = format!("_{port}._tcp.{host}");
        let (data, secure) = self.validated(&name, RecordType::TLSA)?;
        let records = data
            .iter()
            .filter_map(|d| match d {
                RData::TLSA(t) => Some(crate::dane::Tlsa {
                    usage: t.cert_usage.into(),
                    selector: t.selector.into(),
                    matching: t.matching.into(),
                    data: t.cert_data.clone(),
                }),
                _ => None,
            })
            .collect();
        Ok(Validated {
            value: records,
            secure,
        })
    }

    /// One validated lookup: the records of type `rtype` and whether
    /// every record of the answer (CNAMEs included) is secure. Bogus or
    /// indeterminate records make the whole answer a temporary error.
    fn validated(&self, name: &str, rtype: RecordType) -> Result<(Vec<RData>, bool), DnsError> {
        let fq = fqdn(name)?;
        let resolver = &self.resolver;
        let lookup = self.block_on(async move { resolver.lookup(fq, rtype).await })?;
        let answers = lookup.answers();
        if answers
            .iter()
            .any(|r| matches!(r.proof, Proof::Bogus | Proof::Indeterminate))
        {
            return Err(DnsError::Temporary(format!(
                "DNSSEC validation failed (bogus) for {name} {rtype}"
            )));
        }
        let secure = answers.iter().all(|r| r.proof == Proof::Secure);
        let data: Vec<RData> = answers
            .iter()
            .filter(|r| r.record_type() == rtype)
            .map(|r| r.data.clone())
            .collect();
        if data.is_empty() {
            return Err(DnsError::NoRecords);
        }
        Ok((data, secure))
    }

    /// Runs one lookup on the private runtime, bounded by the timeout.
    /// Callable from any number of non-runtime threads at once.
    fn block_on<T>(
        &self,
        lookup: impl std::future::Future<Output = Result<T, NetError>>,
    ) -> Result<T, DnsError> {
        // The timer must be made inside the runtime: hence the async block.
        let bounded = async { tokio::time::timeout(self.timeout, lookup).await };
        match self.rt.block_on(bounded) {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(classify(&e)),
            Err(_) => Err(DnsError::Temporary(format!(
                "no answer within {:?}",
                self.timeout
            ))),
        }
    }
}

/// The private runtime a blocking resolver owns: one worker thread for
/// the sockets and timers; each caller's future runs on the caller's
/// thread (`Runtime::block_on`), so any number of threads may wait at once.
pub fn small_runtime(name: &str) -> Result<tokio::runtime::Runtime, DnsError> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name(name)
        .enable_all()
        .build()
        .map_err(|e| DnsError::Temporary(format!("cannot start the {name} runtime: {e}")))
}

/// The nameservers and options every resolver of the relay uses (MX
/// lookups here, the authentication checks in `authres`): `server`
/// `None` reads the system configuration (`/etc/resolv.conf`), `Some`
/// asks only that nameserver, over UDP and TCP (tests use a dnsmasq on
/// `127.0.0.1:PORT`). Each query tries twice within `timeout`.
pub fn resolver_setup(
    server: Option<SocketAddr>,
    timeout: Duration,
) -> Result<(ResolverConfig, ResolverOpts), DnsError> {
    let (config, mut opts) = match server {
        None => hickory_resolver::system_conf::read_system_conf().map_err(|e| {
            DnsError::Temporary(format!("cannot read the system DNS configuration: {e}"))
        })?,
        Some(addr) => {
            let mut udp = ConnectionConfig::udp();
            udp.port = addr.port();
            let mut tcp = ConnectionConfig::tcp();
            tcp.port = addr.port();
            let ns = NameServerConfig::new(addr.ip(), true, vec![udp, tcp]);
            // No domain and no search list: every name is an FQDN.
            let config = ResolverConfig::from_parts(None, Vec::new(), vec![ns]);
            (config, ResolverOpts::default())
        }
    };
    // Two tries per query, each given half the budget, so a lost UDP
    // datagram is retried before the caller's deadline fires.
    opts.attempts = 2;
    opts.timeout = (timeout / 2).max(Duration::from_millis(100));
    opts.ip_strategy = LookupIpStrategy::Ipv4AndIpv6;
    // RFC 5321 §2.3.5: names in SMTP are fully qualified; never extend
    // them with the search list (we also send them with a final dot).
    opts.ndots = 0;
    if server.is_some() {
        // A private server is the whole truth: no /etc/hosts.
        opts.use_hosts_file = ResolveHosts::Never;
    }
    Ok((config, opts))
}

/// The A records of an answer; none is `NoRecords`.
fn a_records(
    lookup: &hickory_resolver::lookup::Lookup,
) -> Result<Vec<std::net::Ipv4Addr>, DnsError> {
    let addrs: Vec<std::net::Ipv4Addr> = lookup
        .answers()
        .iter()
        .filter_map(|r| match &r.data {
            RData::A(a) => Some(a.0),
            _ => None,
        })
        .collect();
    if addrs.is_empty() {
        return Err(DnsError::NoRecords);
    }
    Ok(addrs)
}

/// The one place that reads hickory's errors.
fn classify(e: &NetError) -> DnsError {
    if e.is_nx_domain() {
        DnsError::NxDomain
    } else if e.is_no_records_found() {
        // NOERROR with an empty answer section (NODATA). hickory reports an
        // NXDOMAIN through the same variant; it was handled above.
        DnsError::NoRecords
    } else {
        DnsError::Temporary(e.to_string())
    }
}

/// `domain` as an absolute name (RFC 1034 §3.1), so no search domain is
/// ever appended. U-labels become A-labels (IDNA).
fn fqdn(domain: &str) -> Result<Name, DnsError> {
    let mut name = Name::from_utf8(domain)
        .map_err(|e| DnsError::Temporary(format!("bad domain name {domain:?}: {e}")))?;
    name.set_fqdn(true);
    Ok(name)
}

/// A name as text without the trailing dot; the root becomes `""`.
fn name_text(name: &Name) -> String {
    if name.is_root() {
        return String::new();
    }
    let s = name.to_ascii();
    s.strip_suffix('.').unwrap_or(&s).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert_eq!(name_text(&Name::root()), "");
        let n = Name::from_ascii("mx1.Example.org.").unwrap();
        assert_eq!(name_text(&n), "mx1.Example.org");
        assert!(fqdn("example.org").unwrap().is_fqdn());
        assert!(fqdn("example.org").unwrap().to_ascii().ends_with('.'));
        assert!(Mx {
            preference: 0,
            exchange: String::new()
        }
        .is_null());
    }

    #[test]
    fn is_send_and_sync() {
        fn check<T: Send + Sync>() {}
        check::<Dns>();
    }
}
