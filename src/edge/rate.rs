//! Rate limits per client address and per authenticated user:
//! connections, messages (MAIL) and recipients (accepted RCPT) per
//! minute, over a sliding window (`auth_limit::Window`, the structure the
//! AUTH failure limits use: at most `limit` timestamps per key, at most
//! `MAX_KEYS` keys per map, the stalest forgotten first).
//!
//! Who is counted: an authenticated session by its user name; any other
//! session by its client address (an IPv6 /64), unless the address is in
//! `--relay-net` (trusted, as `--max-per-ip` exempts it). Nothing is kept
//! on disk: a restart forgets the counts.

use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::auth_limit::{address_key, Window};

pub use crate::config::edge::RateLimits;

/// The window of every limit.
pub const WINDOW: Duration = Duration::from_secs(60);

/// Who an event is counted against.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Key {
    Address(IpAddr),
    User(String),
}

impl Key {
    pub fn address(ip: IpAddr) -> Key {
        Key::Address(address_key(ip))
    }
}

impl std::fmt::Display for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Key::Address(a) => write!(f, "address {a}"),
            Key::User(u) => write!(f, "user {u}"),
        }
    }
}

/// Which limit an event is counted in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    Connection,
    Message,
    Recipient,
}

impl Event {
    pub fn name(self) -> &'static str {
        match self {
            Event::Connection => "connections",
            Event::Message => "messages",
            Event::Recipient => "recipients",
        }
    }
}

/// The counts of every session, behind one mutex held for a few
/// timestamp updates.
pub struct RateLimiter {
    windows: Mutex<[Window<Key>; 3]>,
}

impl RateLimiter {
    pub fn new(limits: RateLimits) -> RateLimiter {
        RateLimiter {
            windows: Mutex::new([
                Window::new(limits.connections, WINDOW),
                Window::new(limits.messages, WINDOW),
                Window::new(limits.recipients, WINDOW),
            ]),
        }
    }

    /// Counts one event for `key`; false (and nothing counted) when the
    /// key already had its limit of events in the last minute.
    pub fn admit(&self, event: Event, key: &Key, now: Instant) -> bool {
        let mut w = self.windows.lock().unwrap_or_else(|p| p.into_inner());
        let w = &mut w[event as usize];
        if w.locked_until(key, now).is_some() {
            return false;
        }
        w.record(key, now);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_limit_per_minute_slides() {
        let l = RateLimiter::new(RateLimits {
            connections: 2,
            messages: 0,
            recipients: 1,
        });
        let t0 = Instant::now();
        let a = Key::address("192.0.2.1".parse().unwrap());
        let b = Key::address("192.0.2.2".parse().unwrap());
        assert!(l.admit(Event::Connection, &a, t0));
        assert!(l.admit(Event::Connection, &a, t0 + Duration::from_secs(30)));
        assert!(!l.admit(Event::Connection, &a, t0 + Duration::from_secs(31)));
        assert!(l.admit(Event::Connection, &b, t0), "another address");
        // the first connection leaves the window a minute after it came
        assert!(l.admit(Event::Connection, &a, t0 + Duration::from_secs(60)));
        assert!(!l.admit(Event::Connection, &a, t0 + Duration::from_secs(61)));
        // 0 = off
        for _ in 0..100 {
            assert!(l.admit(Event::Message, &a, t0));
        }
        let u = Key::User("alice".into());
        assert!(l.admit(Event::Recipient, &u, t0));
        assert!(!l.admit(Event::Recipient, &u, t0));
        assert!(l.admit(Event::Recipient, &Key::User("bob".into()), t0));
        // an IPv6 host is counted by its /64
        let v6 = Key::address("2001:db8::1".parse().unwrap());
        assert_eq!(v6, Key::address("2001:db8::ffff".parse().unwrap()));
    }
}
