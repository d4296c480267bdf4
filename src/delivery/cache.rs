//! Idle outbound connections kept for reuse.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::client::Connection;
use crate::route::RouteTls;

/// A cached connection's peer, the TLS policy it was opened under and the
/// user it authenticated as (RFC 4954: AUTH holds for the session).
pub(super) type CacheKey = (SocketAddr, RouteTls, Option<String>);

/// Idle outbound connections kept for reuse, per next-hop address, TLS
/// policy and AUTH user: a connection opened under one route's policy
/// (plaintext under `tls = none`, or logged in as another user) is never
/// reused for a route with another.
pub struct ConnCache {
    idle: Mutex<HashMap<CacheKey, Vec<(Connection, Instant)>>>,
    max_idle: Duration,
}

impl ConnCache {
    pub fn new(max_idle: Duration) -> ConnCache {
        ConnCache {
            idle: Mutex::new(HashMap::new()),
            max_idle,
        }
    }

    /// Whether a connection to `peer` (under any policy) is idle here:
    /// the next transaction there likely opens none.
    pub(super) fn has_idle(&self, peer: SocketAddr) -> bool {
        let idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        idle.iter().any(|(k, l)| k.0 == peer && !l.is_empty())
    }

    pub(super) fn take(&self, key: &CacheKey) -> Option<Connection> {
        let mut stale = Vec::new();
        let found = {
            let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
            let list = idle.get_mut(key)?;
            let mut found = None;
            while let Some((c, since)) = list.pop() {
                if since.elapsed() < self.max_idle {
                    found = Some(c);
                    break;
                }
                stale.push(c);
            }
            found
        };
        for c in stale {
            c.quit();
        }
        found
    }

    /// Keeps `c` for reuse unless it has carried `max_transactions`
    /// (the destination's `max-messages-per-connection`): then it is
    /// closed, and the next transaction opens a new one.
    pub(super) fn put(&self, c: Connection, key: CacheKey, max_transactions: usize) {
        if !c.reusable() || c.transactions() >= max_transactions {
            c.quit();
            return;
        }
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        idle.entry(key).or_default().push((c, Instant::now()));
    }

    /// Closes every cached connection (end of a foreground flush).
    pub fn sweep_all(&self) {
        let all: Vec<Connection> = {
            let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
            idle.drain()
                .flat_map(|(_, l)| l.into_iter().map(|(c, _)| c))
                .collect()
        };
        for c in all {
            c.quit();
        }
    }

    /// Closes connections idle past the limit (called when workers idle).
    pub fn sweep(&self) {
        let mut stale = Vec::new();
        {
            let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
            for list in idle.values_mut() {
                let (keep, old): (Vec<_>, Vec<_>) = list
                    .drain(..)
                    .partition(|(_, t)| t.elapsed() < self.max_idle);
                *list = keep;
                stale.extend(old.into_iter().map(|(c, _)| c));
            }
            idle.retain(|_, l| !l.is_empty());
        }
        for c in stale {
            c.quit();
        }
    }
}
