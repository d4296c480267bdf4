//! AUTH failures counted across sessions: per client address and per
//! user name, over a sliding window. The session's own pause and error
//! limit end with the connection; this does not, so a client that opens a
//! new connection for every guess is held to `per_address` guesses per
//! `window` (issue 10: 27 guesses a second before).
//!
//! Shared by every session thread behind one mutex, held only to update
//! a few timestamps. Bounded: each key keeps at most its limit of
//! timestamps, and each map at most `MAX_KEYS` keys (the stalest go
//! first). Nothing is stored on disk: a restart forgets the counts.

use std::collections::{HashMap, VecDeque};
use std::hash::Hash;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

pub use crate::config::limits::AuthLimits;

/// Keys kept per map; beyond it the entry whose last failure is oldest
/// is forgotten.
const MAX_KEYS: usize = 100_000;

/// What a client address is counted as: IPv4 as it is (an IPv4-mapped
/// IPv6 address as its IPv4), IPv6 by its /64, which one host usually
/// has whole (RFC 4291 §2.5.1's interface identifier).
pub(crate) fn address_key(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(a) => IpAddr::V6((u128::from(a) & !u128::from(u64::MAX)).into()),
        v4 => v4,
    }
}

/// Event times per key, at most `limit` of them, oldest first: the
/// sliding window of the AUTH failure limits and of `edge::rate`.
pub(crate) struct Window<K> {
    limit: usize,
    span: Duration,
    times: HashMap<K, VecDeque<Instant>>,
}

impl<K: Hash + Eq + Clone> Window<K> {
    pub(crate) fn new(limit: usize, span: Duration) -> Window<K> {
        Window {
            limit,
            span,
            times: HashMap::new(),
        }
    }

    /// Until when `key` is locked out, if it is: the moment its oldest
    /// counted failure leaves the window.
    pub(crate) fn locked_until(&mut self, key: &K, now: Instant) -> Option<Instant> {
        if self.limit == 0 {
            return None;
        }
        let span = self.span;
        let q = self.times.get_mut(key)?;
        while q
            .front()
            .is_some_and(|&t| now.saturating_duration_since(t) >= span)
        {
            q.pop_front();
        }
        if q.is_empty() {
            self.times.remove(key);
            return None;
        }
        (q.len() >= self.limit).then(|| q[0] + span)
    }

    /// Counts a failure; true when it is the one that reaches the limit.
    pub(crate) fn record(&mut self, key: &K, now: Instant) -> bool {
        if self.limit == 0 {
            return false;
        }
        let was_locked = self.locked_until(key, now).is_some();
        if !self.times.contains_key(key) && self.times.len() >= MAX_KEYS {
            self.make_room(now);
        }
        let q = self.times.entry(key.clone()).or_default();
        q.push_back(now);
        while q.len() > self.limit {
            q.pop_front();
        }
        !was_locked && q.len() >= self.limit
    }

    /// Takes back one failure recorded at `at` (a provisional one).
    fn forget(&mut self, key: &K, at: Instant) {
        let Some(q) = self.times.get_mut(key) else {
            return;
        };
        if let Some(i) = q.iter().rposition(|&t| t == at) {
            q.remove(i);
        }
        if q.is_empty() {
            self.times.remove(key);
        }
    }

    fn make_room(&mut self, now: Instant) {
        let span = self.span;
        self.times.retain(|_, q| {
            q.back()
                .is_some_and(|&t| now.saturating_duration_since(t) < span)
        });
        if self.times.len() >= MAX_KEYS {
            let stalest = self
                .times
                .iter()
                .min_by_key(|(_, q)| q.back().copied())
                .map(|(k, _)| k.clone());
            if let Some(k) = stalest {
                self.times.remove(&k);
            }
        }
    }
}

/// Why an AUTH is refused before its password is checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lockout {
    Address,
    User,
}

/// What a failure changed: the limit it reached, if it was the one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Reached {
    pub address: bool,
    pub user: bool,
}

/// The failure counts of every session.
pub struct FailureLimiter {
    limits: AuthLimits,
    inner: Mutex<(Window<IpAddr>, Window<String>)>,
}

impl FailureLimiter {
    pub fn new(limits: AuthLimits) -> FailureLimiter {
        FailureLimiter {
            limits,
            inner: Mutex::new((
                Window::new(limits.per_address, limits.window),
                Window::new(limits.per_user, limits.window),
            )),
        }
    }

    pub fn limits(&self) -> AuthLimits {
        self.limits
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, (Window<IpAddr>, Window<String>)> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether AUTH from `ip` is refused now, before anything is read.
    pub fn address_locked(&self, ip: IpAddr, now: Instant) -> bool {
        self.lock().0.locked_until(&address_key(ip), now).is_some()
    }

    /// Admits an AUTH attempt from `ip` as `user` (a name the password
    /// file could hold; others are counted by address only), or says
    /// which lockout refuses it. An admitted attempt is counted as a
    /// failure at once, so attempts checked at the same time cannot
    /// overrun the limit together (45 concurrent sessions would otherwise
    /// all pass before the first failure is recorded); `succeeded` takes
    /// it back.
    pub fn admit(&self, ip: IpAddr, user: Option<&str>, now: Instant) -> Result<Attempt, Lockout> {
        let mut g = self.lock();
        let (addresses, users) = &mut *g;
        let ip = address_key(ip);
        let user = user.map(str::to_string);
        if addresses.locked_until(&ip, now).is_some() {
            return Err(Lockout::Address);
        }
        if let Some(u) = &user {
            if users.locked_until(u, now).is_some() {
                return Err(Lockout::User);
            }
        }
        let reached = Reached {
            address: addresses.record(&ip, now),
            user: user.as_ref().is_some_and(|u| users.record(u, now)),
        };
        Ok(Attempt {
            ip,
            user,
            at: now,
            reached,
        })
    }

    /// The attempt was a success: it no longer counts as a failure.
    pub fn succeeded(&self, attempt: &Attempt) {
        let mut g = self.lock();
        g.0.forget(&attempt.ip, attempt.at);
        if let Some(u) = &attempt.user {
            g.1.forget(u, attempt.at);
        }
    }
}

/// An admitted AUTH attempt, counted as a failure unless it succeeds.
#[derive(Debug)]
pub struct Attempt {
    ip: IpAddr,
    user: Option<String>,
    at: Instant,
    /// The limits this attempt reaches if it fails.
    pub reached: Reached,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    /// One failed attempt; what it reached (nothing when refused).
    fn fail(l: &FailureLimiter, ip: IpAddr, user: Option<&str>, now: Instant) -> Reached {
        l.admit(ip, user, now)
            .map(|a| a.reached)
            .unwrap_or_default()
    }

    fn limiter(per_address: usize, per_user: usize) -> FailureLimiter {
        FailureLimiter::new(AuthLimits {
            per_address,
            per_user,
            window: Duration::from_secs(300),
        })
    }

    #[test]
    fn an_address_is_locked_for_the_rest_of_the_window() {
        let l = limiter(3, 0);
        let t0 = Instant::now();
        let a = ip("192.0.2.7");
        for i in 0..2 {
            assert_eq!(fail(&l, a, Some("alice"), t0), Reached::default(), "{i}");
            assert!(!l.address_locked(a, t0));
        }
        let third = t0 + Duration::from_secs(10);
        assert!(fail(&l, a, Some("alice"), third).address);
        assert!(l.address_locked(a, third));
        assert_eq!(l.admit(a, None, third).unwrap_err(), Lockout::Address);
        assert!(!l.address_locked(ip("192.0.2.8"), third), "others are not");
        // the window slides: once the two oldest failures are 5 min old,
        // two more guesses are allowed, and the second locks again
        assert!(l.address_locked(a, t0 + Duration::from_secs(299)));
        let later = t0 + Duration::from_secs(300);
        assert!(!l.address_locked(a, later));
        assert!(!fail(&l, a, None, later).address);
        assert!(!l.address_locked(a, later));
        assert!(fail(&l, a, None, later).address);
        assert!(l.address_locked(a, later));
        // the same host under another IPv4-mapped or IPv6 /64 form
        let l = limiter(2, 0);
        fail(&l, ip("::ffff:192.0.2.9"), None, t0);
        fail(&l, ip("192.0.2.9"), None, t0);
        assert!(l.address_locked(ip("192.0.2.9"), t0));
        fail(&l, ip("2001:db8:1:2::1"), None, t0);
        fail(&l, ip("2001:db8:1:2:ffff::9"), None, t0);
        assert!(l.address_locked(ip("2001:db8:1:2::77"), t0));
        assert!(!l.address_locked(ip("2001:db8:1:3::1"), t0));
    }

    #[test]
    fn a_user_name_is_limited_across_addresses() {
        let l = limiter(0, 3);
        let t0 = Instant::now();
        for i in 1..=3 {
            let r = fail(&l, ip(&format!("198.51.100.{i}")), Some("alice"), t0);
            assert_eq!(r.user, i == 3, "{i}");
        }
        assert_eq!(
            l.admit(ip("203.0.113.1"), Some("alice"), t0).unwrap_err(),
            Lockout::User
        );
        assert!(l.admit(ip("203.0.113.1"), Some("bob"), t0).is_ok());
        assert!(
            !l.address_locked(ip("198.51.100.1"), t0),
            "address limit off"
        );
    }

    #[test]
    fn attempts_in_flight_count_and_a_success_is_taken_back() {
        let l = limiter(2, 2);
        let t0 = Instant::now();
        let a = ip("192.0.2.1");
        // two checks running at once use up the limit before either ends
        let first = l.admit(a, Some("alice"), t0).unwrap();
        let second = l.admit(a, Some("alice"), t0).unwrap();
        assert!(second.reached.address && second.reached.user);
        assert_eq!(l.admit(a, Some("bob"), t0).unwrap_err(), Lockout::Address);
        // the first was the right password: it no longer counts
        l.succeeded(&first);
        assert!(!l.address_locked(a, t0));
        assert!(l.admit(a, Some("alice"), t0).is_ok());
    }

    #[test]
    fn memory_stays_bounded() {
        let l = limiter(5, 5);
        let t0 = Instant::now();
        let a = ip("192.0.2.1");
        for _ in 0..1000 {
            fail(&l, a, Some("alice"), t0);
        }
        assert_eq!(l.lock().0.times[&a].len(), 5);
        let mut w: Window<u32> = Window::new(1, Duration::from_secs(300));
        for k in 0..(MAX_KEYS as u32 + 10) {
            w.record(&k, t0 + Duration::from_millis(u64::from(k)));
        }
        assert_eq!(w.times.len(), MAX_KEYS);
        assert!(!w.times.contains_key(&0), "the stalest went first");
    }
}
