//! The inbound edge (issue 13): DNS block- and allowlists on the client
//! address, a Postfix policy-service client, and rate limits per client
//! address and per authenticated user. `EdgeConfig` is plain data in the
//! `Config`; `Edge` the live objects `app.rs` builds from it and every
//! session shares. The session's hooks are in `session/inbound.rs`.

pub mod dnsbl;
pub mod policy;
pub mod rate;

use std::net::SocketAddr;
use std::sync::Arc;

use crate::dns::{Dns, DnsError};
use crate::smtp::reply::Enhanced;
use crate::smtp::Reply;

pub use crate::config::edge::EdgeConfig;

/// What every session shares.
pub struct Edge {
    pub dnsbl: Option<dnsbl::Dnsbl>,
    pub policy: Option<policy::PolicyConfig>,
    /// Shared, so that a reload with the same limits keeps the windows.
    pub rates: Arc<rate::RateLimiter>,
}

impl Edge {
    /// The lists get a resolver of their own, with their short timeout;
    /// `dns` is `--dns` resolved (`None`: the system's).
    pub fn build(cfg: &EdgeConfig, dns: Option<SocketAddr>) -> Result<Edge, DnsError> {
        let dnsbl = if cfg.dnsbl.is_on() {
            let resolver = Arc::new(Dns::new(dns, cfg.dnsbl_timeout)?);
            Some(dnsbl::Dnsbl::new(cfg.dnsbl.clone(), resolver))
        } else {
            None
        };
        Ok(Edge {
            dnsbl,
            policy: cfg.policy.clone(),
            rates: Arc::new(rate::RateLimiter::new(cfg.rates)),
        })
    }
}

/// RFC 5321 §3.1 / §4.2.3: 554 for a client we refuse; RFC 3463 5.7.1
/// (delivery not authorized). The text is Postfix's, naming the list.
pub fn blocked_reply(client: std::net::IpAddr, zone: &str) -> Reply {
    Reply::new(
        554,
        Enhanced::new(5, 7, 1),
        format!("Service unavailable; client [{client}] blocked using {zone}"),
    )
}

/// RFC 5321 §3.8: 421 and the channel closes; 4.7.0 (security or
/// policy status, RFC 3463).
pub fn too_many_connections(client: std::net::IpAddr) -> Reply {
    Reply::new(
        421,
        Enhanced::new(4, 7, 0),
        format!("Too many connections from {client}"),
    )
}

/// RFC 5321 §4.2.5: 450 (not taken now, try later) at MAIL or RCPT.
pub fn rate_exceeded() -> Reply {
    Reply::new(450, Enhanced::new(4, 7, 1), "Rate limit exceeded")
}

/// The service could not be asked and the default action is defer:
/// Postfix's `451 4.3.5 Server configuration problem`.
pub fn policy_unavailable() -> Reply {
    Reply::new(451, Enhanced::new(4, 3, 5), "Server configuration problem")
}
