//! MTA-STS (RFC 8461): which policy a recipient domain publishes.
//!
//! `policy.rs` the TXT record and policy text, `fetch.rs` the HTTPS GET,
//! `cache.rs` the policies kept in the spool. [`MtaSts::lookup`] ties
//! them together as §5.1 asks:
//! - the `_mta-sts.DOMAIN` TXT id equals the cached policy's: the cached
//!   one (no fetch);
//! - a new id (or nothing cached): fetch; on success cache and use it; on
//!   failure keep using a cached policy that has not expired;
//! - no TXT record, or DNS trouble: a cached unexpired policy still
//!   applies (§5.1: senders keep a policy for `max_age`, so removing the
//!   record does not strip protection), else there is none.
//!
//! Concurrent lookups of one domain may fetch twice; both write the same
//! kind of file by rename, so the cache stays whole.

pub mod cache;
pub mod fetch;
pub mod policy;

use std::sync::Arc;
use std::time::Duration;

use crate::dns::{Dns, DnsError};
use crate::time::Clock;
use cache::{Cached, PolicyCache};
pub use policy::{Mode, Policy};

/// A policy in force for a domain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    pub id: String,
    pub policy: Policy,
}

/// The MTA-STS resolver: DNS for TXT and addresses, the verifying TLS
/// config, the cache. Shared by every delivery thread.
pub struct MtaSts {
    dns: Dns,
    tls: Arc<rustls::ClientConfig>,
    cache: PolicyCache,
    /// 443 (RFC 8461 §3.3); tests point it elsewhere (`--mta-sts-port`).
    port: u16,
    timeout: Duration,
    clock: Arc<dyn Clock>,
}

impl std::fmt::Debug for MtaSts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MtaSts")
            .field("port", &self.port)
            .field("cache", &self.cache)
            .finish_non_exhaustive()
    }
}

impl MtaSts {
    pub fn new(
        dns: Dns,
        tls: Arc<rustls::ClientConfig>,
        cache: PolicyCache,
        port: u16,
        timeout: Duration,
        clock: Arc<dyn Clock>,
    ) -> MtaSts {
        MtaSts {
            dns,
            tls,
            cache,
            port,
            timeout,
            clock,
        }
    }

    /// The policy in force for `domain`, if any (module doc). A policy of
    /// mode `none` is returned as found: the caller applies nothing.
    pub fn lookup(&self, domain: &str) -> Option<Found> {
        self.lookup_noting(domain).0
    }

    /// `lookup`, and why a due policy fetch failed, if it did (for TLS
    /// reports, RFC 8460 §4.3.2.2).
    pub fn lookup_noting(&self, domain: &str) -> (Option<Found>, Option<String>) {
        let now = self.clock.now_unix();
        let cached = self.cache.load(domain).filter(|c| c.fresh(now));
        let txt = format!("_mta-sts.{domain}");
        let id = match self.dns.txt(&txt) {
            Ok(records) => match policy::record_id(&records) {
                Ok(id) => id,
                Err(why) => {
                    log::debug!("mta-sts {domain}: {txt}: {why}");
                    return (cached.map(found), None);
                }
            },
            Err(DnsError::Temporary(why)) => {
                log::info!("mta-sts {domain}: TXT lookup failed: {why}");
                return (cached.map(found), None);
            }
            Err(_) => return (cached.map(found), None),
        };
        if let Some(c) = cached.as_ref().filter(|c| c.id == id) {
            return (Some(found(c.clone())), None);
        }
        match self.fetch(domain) {
            Ok((text, policy)) => {
                let fresh = Cached {
                    id: id.clone(),
                    fetched: now,
                    policy,
                    text,
                };
                if let Err(e) = self.cache.store(domain, &fresh) {
                    log::warn!("mta-sts {domain}: cannot cache the policy: {e}");
                }
                log::info!(
                    "mta-sts {domain}: policy id={id} mode={} max_age={} fetched",
                    fresh.policy.mode,
                    fresh.policy.max_age
                );
                (Some(found(fresh)), None)
            }
            Err(why) => {
                // §5.1: a failed refresh keeps the cached policy in force
                match &cached {
                    Some(c) => log::warn!(
                        "mta-sts {domain}: policy fetch failed ({why}); the cached policy id={} stays in force",
                        c.id
                    ),
                    None => log::warn!(
                        "mta-sts {domain}: policy fetch failed ({why}); no cached policy: none applies"
                    ),
                }
                (cached.map(found), Some(why))
            }
        }
    }

    /// §3.3: the policy host's addresses, the GET, and §3.2's parse.
    fn fetch(&self, domain: &str) -> Result<(String, Policy), String> {
        let host = format!("mta-sts.{domain}");
        let addrs = self.dns.addrs(&host).map_err(|e| format!("{host}: {e}"))?;
        let text = fetch::fetch(&fetch::Fetch {
            host: &host,
            addrs: &addrs,
            port: self.port,
            tls: self.tls.clone(),
            timeout: self.timeout,
        })?;
        let policy = Policy::parse(&text).map_err(|e| format!("bad policy: {e}"))?;
        Ok((text, policy))
    }
}

fn found(c: Cached) -> Found {
    Found {
        id: c.id,
        policy: c.policy,
    }
}
