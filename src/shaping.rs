//! Traffic shaping per destination: concurrent connections, messages per
//! connection, message and connection rates, and the backoff of a
//! destination that throttles us (README "Traffic shaping").
//!
//! A destination is what delivery counts transactions under: the first
//! next hop of a group of recipients, by name and port (an MX host, or a
//! route's first host). The limits are the defaults of the command line
//! and config file, overridden per `[route DOMAIN]` section.
//!
//! [`Rate`], [`DestShaping`] and [`Shaping`] are plain data (the config
//! holds them, `config/shaping.rs`); [`DestLimiter`] is the live state, built in `app.rs` and
//! shared by the delivery workers (which take a slot without waiting) and
//! the scheduler (which reads what is free to release waiting messages,
//! and when something will be). Its time is the scheduler's `Clock`, so
//! the tests below run in milliseconds.
//!
//! Rates are token buckets that hold at most [`BURST`] tokens: sends are
//! spaced evenly at the configured rate, and a worker's latency between a
//! token becoming due and its use is not lost. A bucket may go into debt
//! (a connection opened that was not foreseen: a failover, a cached
//! connection that turned out dead), which later sends pay back.

use std::collections::HashMap;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

pub use crate::config::shaping::{DestShaping, Rate, Shaping};
use crate::time::Clock;

/// Tokens a rate bucket holds at most: two sends back to back at most.
const BURST: f64 = 2.0;

/// One destination's limits, defaults and override merged.
#[derive(Debug, Clone, Copy)]
struct Limits {
    max_connections: usize,
    max_messages: usize,
    message_rate: Option<Rate>,
    connection_rate: Option<Rate>,
}

/// A token bucket read off the clock.
#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at_ms: u64,
}

impl Bucket {
    fn new(now_ms: u64) -> Bucket {
        Bucket {
            tokens: 1.0,
            at_ms: now_ms,
        }
    }

    fn refill(&mut self, rate: Rate, now_ms: u64) {
        let gained = now_ms.saturating_sub(self.at_ms) as f64 / rate.interval_ms();
        self.tokens = (self.tokens + gained).min(BURST);
        self.at_ms = self.at_ms.max(now_ms);
    }

    /// Milliseconds until a whole token is there (0: now).
    fn wait_ms(&self, rate: Rate) -> u64 {
        if self.tokens >= 1.0 {
            return 0;
        }
        ((1.0 - self.tokens) * rate.interval_ms()).ceil() as u64
    }

    fn full(&self) -> bool {
        self.tokens >= BURST
    }
}

/// A destination that answered with a throttling reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Throttle {
    /// Unix milliseconds until which nothing is sent there.
    pub until_ms: u64,
    /// Throttling replies in a row (the backoff doubles with each).
    pub level: u32,
    /// The reply, as `queue list --summary` shows it.
    pub reply: String,
}

#[derive(Debug, Default)]
struct DestState {
    busy: usize,
    messages: Option<Bucket>,
    connections: Option<Bucket>,
    /// A release found no connection token (and no idle connection):
    /// nothing is released until one is due, or the scheduler would
    /// spin releasing and parking the same message.
    wants_connection: bool,
    throttle: Option<Throttle>,
}

impl DestState {
    /// Nothing here differs from a fresh entry: it can be forgotten.
    fn idle(&self) -> bool {
        self.busy == 0
            && self.throttle.is_none()
            && self.messages.is_none_or(|b| b.full())
            && self.connections.is_none_or(|b| b.full())
    }
}

/// Why a destination takes no transaction now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// Every connection slot is taken.
    Full,
    /// The message or connection rate has no token now.
    Rate,
    /// Backing off after a throttling reply.
    Throttled,
}

/// The live per-destination state (module doc). Cloning shares it.
#[derive(Clone)]
pub struct DestLimiter {
    inner: Arc<LimiterInner>,
}

struct LimiterInner {
    dests: Mutex<HashMap<String, DestState>>,
    freed: Condvar,
    /// The defaults and the routes' own limits by destination key;
    /// replaced by a reload (`set_limits`), the counts and throttles stay.
    config: std::sync::RwLock<(Shaping, HashMap<String, DestShaping>)>,
    clock: Arc<dyn Clock>,
}

impl LimiterInner {
    fn config(&self) -> std::sync::RwLockReadGuard<'_, (Shaping, HashMap<String, DestShaping>)> {
        self.config.read().unwrap_or_else(|p| p.into_inner())
    }

    fn limits(&self, key: &str) -> Limits {
        let config = self.config();
        let d = &config.0;
        let o = config.1.get(key).copied().unwrap_or_default();
        Limits {
            max_connections: o.max_connections.unwrap_or(d.max_connections).max(1),
            max_messages: o
                .max_messages_per_connection
                .unwrap_or(d.max_messages_per_connection)
                .max(1),
            message_rate: o.message_rate.or(d.message_rate),
            connection_rate: o.connection_rate.or(d.connection_rate),
        }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, DestState>> {
        self.dests.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The destination's state with its buckets refilled to `now_ms`.
    fn state<'a>(
        &self,
        dests: &'a mut HashMap<String, DestState>,
        key: &str,
        now_ms: u64,
    ) -> &'a mut DestState {
        let l = self.limits(key);
        let st = dests.entry(key.to_string()).or_default();
        if let Some(rate) = l.message_rate {
            st.messages
                .get_or_insert_with(|| Bucket::new(now_ms))
                .refill(rate, now_ms);
        }
        if let Some(rate) = l.connection_rate {
            let b = st.connections.get_or_insert_with(|| Bucket::new(now_ms));
            b.refill(rate, now_ms);
            if b.tokens >= 1.0 {
                st.wants_connection = false;
            }
        }
        if st.throttle.as_ref().is_some_and(|t| t.until_ms <= now_ms) {
            // the pause is over; the level stays until a success
            if let Some(t) = &mut st.throttle {
                t.until_ms = 0;
            }
        }
        st
    }

    fn why_not(&self, st: &DestState, key: &str, now_ms: u64, new_conn: bool) -> Option<Refused> {
        if st.throttle.as_ref().is_some_and(|t| t.until_ms > now_ms) {
            return Some(Refused::Throttled);
        }
        if st.busy >= self.limits(key).max_connections {
            return Some(Refused::Full);
        }
        let short = |b: &Option<Bucket>| b.is_some_and(|b| b.tokens < 1.0);
        if short(&st.messages) || (new_conn && short(&st.connections)) {
            return Some(Refused::Rate);
        }
        None
    }
}

/// One transaction's slot; dropping it frees the slot.
pub struct DestSlot {
    inner: Arc<LimiterInner>,
    key: String,
}

impl DestLimiter {
    /// `max` connections for every destination, no rates (tests).
    pub fn new(max: usize) -> DestLimiter {
        let defaults = Shaping {
            max_connections: max,
            ..Shaping::default()
        };
        DestLimiter::with_limits(defaults, HashMap::new(), Arc::new(crate::time::SystemClock))
    }

    /// `defaults` for every destination but those in `overrides` (a
    /// route's section, by the destination key of its first host).
    pub fn with_limits(
        defaults: Shaping,
        overrides: HashMap<String, DestShaping>,
        clock: Arc<dyn Clock>,
    ) -> DestLimiter {
        DestLimiter {
            inner: Arc::new(LimiterInner {
                dests: Mutex::new(HashMap::new()),
                freed: Condvar::new(),
                config: std::sync::RwLock::new((defaults, overrides)),
                clock,
            }),
        }
    }

    /// A reload's new limits, for every holder of this limiter; slots
    /// taken stay taken (a lowered limit only stops new ones), throttles
    /// and tokens stay.
    pub fn set_limits(&self, defaults: Shaping, overrides: HashMap<String, DestShaping>) {
        *self.inner.config.write().unwrap_or_else(|p| p.into_inner()) = (defaults, overrides);
        self.inner.freed.notify_all();
    }

    /// A slot for `key` now, taking a message token (and a connection
    /// token when `new_conn`: no idle connection to reuse). Never waits.
    pub fn try_acquire(&self, key: &str, new_conn: bool) -> Result<DestSlot, Refused> {
        let now = self.inner.clock.now_millis();
        let mut dests = self.inner.lock();
        let st = self.inner.state(&mut dests, key, now);
        if let Some(why) = self.inner.why_not(st, key, now, new_conn) {
            if why == Refused::Rate && new_conn {
                st.wants_connection = st.connections.is_some_and(|b| b.tokens < 1.0);
            }
            return Err(why);
        }
        st.busy += 1;
        if let Some(b) = &mut st.messages {
            b.tokens -= 1.0;
        }
        Ok(DestSlot {
            inner: self.inner.clone(),
            key: key.to_string(),
        })
    }

    /// A new connection to `key` was opened: it takes a connection token,
    /// into debt when none was foreseen.
    pub fn connected(&self, key: &str) {
        let now = self.inner.clock.now_millis();
        let mut dests = self.inner.lock();
        let st = self.inner.state(&mut dests, key, now);
        if let Some(b) = &mut st.connections {
            b.tokens -= 1.0;
        }
    }

    /// Transactions on one connection to `key` before it is closed.
    pub fn max_messages(&self, key: &str) -> usize {
        self.inner.limits(key).max_messages
    }

    /// Transactions `key` could start now: free slots, capped by the
    /// tokens; 0 while throttled.
    pub fn available(&self, key: &str) -> usize {
        let now = self.inner.clock.now_millis();
        self.available_in(&mut self.inner.lock(), key, now)
    }

    fn available_in(&self, dests: &mut HashMap<String, DestState>, key: &str, now: u64) -> usize {
        let st = self.inner.state(dests, key, now);
        if st.throttle.as_ref().is_some_and(|t| t.until_ms > now) || st.wants_connection {
            return 0;
        }
        let free = self
            .inner
            .limits(key)
            .max_connections
            .saturating_sub(st.busy);
        match &st.messages {
            Some(b) => free.min(b.tokens.max(0.0) as usize),
            None => free,
        }
    }

    /// How long until `key` may take more without a slot being freed: a
    /// token coming due or a throttle ending; `None` when only a freed
    /// slot can help (or it is free now).
    pub fn ready_in(&self, key: &str) -> Option<Duration> {
        let now = self.inner.clock.now_millis();
        self.ready_in_locked(&mut self.inner.lock(), key, now)
    }

    fn ready_in_locked(
        &self,
        dests: &mut HashMap<String, DestState>,
        key: &str,
        now: u64,
    ) -> Option<Duration> {
        let l = self.inner.limits(key);
        let st = self.inner.state(dests, key, now);
        let mut wait = 0;
        if let Some(t) = &st.throttle {
            wait = wait.max(t.until_ms.saturating_sub(now));
        }
        if let (Some(b), Some(r)) = (&st.messages, l.message_rate) {
            wait = wait.max(b.wait_ms(r));
        }
        if let (true, Some(b), Some(r)) = (st.wants_connection, &st.connections, l.connection_rate)
        {
            wait = wait.max(b.wait_ms(r));
        }
        (wait > 0).then(|| Duration::from_millis(wait))
    }

    /// A throttling reply from `key`: nothing more goes there for the
    /// backoff, which doubles with each reply in a row (capped).
    pub fn throttle(&self, key: &str, reply: String) -> Throttle {
        let now = self.inner.clock.now_millis();
        let d = self.inner.config().0;
        let mut dests = self.inner.lock();
        let st = self.inner.state(&mut dests, key, now);
        let level = st.throttle.as_ref().map_or(0, |t| t.level) + 1;
        let pause = d
            .backoff_min
            .saturating_mul(1 << (level - 1).min(20))
            .min(d.backoff_max.max(d.backoff_min));
        let t = Throttle {
            until_ms: now + pause.as_millis() as u64,
            level,
            reply,
        };
        st.throttle = Some(t.clone());
        t
    }

    /// `key` accepted a transaction: its backoff starts over. Returns
    /// whether there was one.
    pub fn clear_throttle(&self, key: &str) -> bool {
        let mut dests = self.inner.lock();
        dests
            .get_mut(key)
            .and_then(|st| st.throttle.take())
            .is_some()
    }

    /// Destinations backing off now, with their throttle.
    pub fn throttled(&self) -> Vec<(String, Throttle)> {
        let now = self.inner.clock.now_millis();
        let dests = self.inner.lock();
        let mut out: Vec<(String, Throttle)> = dests
            .iter()
            .filter_map(|(k, st)| Some((k.clone(), st.throttle.clone()?)))
            .filter(|(_, t)| t.until_ms > now)
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    /// Throttles read back at start (`Spool::read_throttled`), so a
    /// restart does not knock at once on a door that said "later".
    pub fn restore(&self, saved: Vec<(String, Throttle)>) {
        let mut dests = self.inner.lock();
        for (k, t) in saved {
            dests.entry(k).or_default().throttle = Some(t);
        }
    }

    /// Blocks until one of `keys` could take a transaction (for callers
    /// without a scheduler; they hold no message and no slot while
    /// waiting). Woken by the [`DestSlot`] drop that frees a slot, or by
    /// the clock when a token or the end of a throttle is due, never by a
    /// polling timer: the condition is read under the lock the drop
    /// takes, so no free is missed.
    pub fn wait_free(&self, keys: &[String]) {
        let mut dests = self.inner.lock();
        loop {
            let now = self.inner.clock.now_millis();
            if keys.is_empty()
                || keys
                    .iter()
                    .any(|k| self.available_in(&mut dests, k, now) > 0)
            {
                return;
            }
            let by_clock = keys
                .iter()
                .filter_map(|k| self.ready_in_locked(&mut dests, k, now))
                .min();
            dests = match by_clock {
                Some(wait) => {
                    self.inner
                        .freed
                        .wait_timeout(dests, wait)
                        .unwrap_or_else(|p| p.into_inner())
                        .0
                }
                None => self
                    .inner
                    .freed
                    .wait(dests)
                    .unwrap_or_else(|p| p.into_inner()),
            };
        }
    }

    /// Forgets destinations with nothing to remember (called now and
    /// then by the scheduler: the map stays as big as the busy set).
    pub fn prune(&self) {
        let now = self.inner.clock.now_millis();
        let mut dests = self.inner.lock();
        let keys: Vec<String> = dests.keys().cloned().collect();
        for k in keys {
            // refilled first: a bucket full by now is nothing to remember
            self.inner.state(&mut dests, &k, now);
        }
        dests.retain(|_, st| !st.idle());
    }
}

impl Drop for DestSlot {
    fn drop(&mut self) {
        let mut dests = self.inner.lock();
        if let Some(st) = dests.get_mut(&self.key) {
            st.busy = st.busy.saturating_sub(1);
            if st.idle() {
                dests.remove(&self.key);
            }
        }
        self.inner.freed.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::time::ManualClock;
    use std::time::Instant;

    const T0: u64 = 1_000_000_000;

    fn limiter(
        defaults: Shaping,
        overrides: &[(&str, DestShaping)],
    ) -> (DestLimiter, Arc<ManualClock>) {
        let clock = Arc::new(ManualClock::new(T0));
        let o = overrides.iter().map(|(k, s)| (k.to_string(), *s)).collect();
        (DestLimiter::with_limits(defaults, o, clock.clone()), clock)
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn rates_parse_and_print() {
        let r = Rate::parse("300/min").unwrap();
        assert_eq!((r.count, r.per), (300, Duration::from_secs(60)));
        assert_eq!(r.to_string(), "300/min");
        assert_eq!(Rate::parse("5/s").unwrap().interval_ms(), 200.0);
        assert_eq!(Rate::parse("2/h").unwrap().to_string(), "2/h");
        for bad in ["", "100", "0/min", "x/min", "10/week", "-1/s"] {
            assert!(Rate::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn limiter_never_waits() {
        let l = DestLimiter::new(2);
        let a = l.try_acquire("mx.a:25", true).unwrap();
        let _b = l.try_acquire("mx.a:25", true).unwrap();
        let started = Instant::now();
        assert_eq!(l.try_acquire("mx.a:25", true).err(), Some(Refused::Full));
        assert!(started.elapsed() < Duration::from_millis(100));
        assert_eq!(l.available("mx.a:25"), 0);
        // another destination has its own slots
        assert!(l.try_acquire("mx.b:25", true).is_ok());
        drop(a);
        assert_eq!(l.available("mx.a:25"), 1);
        l.wait_free(&["mx.a:25".into()]);
    }

    /// A foreground flush waiting for a slot is woken by the slot's
    /// release and not before (no polling step: the message is not
    /// claimed, loaded and routed again every second while it waits).
    #[test]
    fn a_waiter_wakes_when_a_slot_frees_and_not_before() {
        use std::sync::atomic::{AtomicBool, Ordering};
        let l = DestLimiter::new(1);
        let slot = l.try_acquire("mx.slow:25", true).unwrap();
        let freed = Arc::new(AtomicBool::new(false));
        let waiter = {
            let (l, freed) = (l.clone(), freed.clone());
            std::thread::spawn(move || {
                l.wait_free(&["mx.slow:25".into()]);
                (freed.load(Ordering::SeqCst), l.available("mx.slow:25"))
            })
        };
        // longer than the old polling step; no assertion on time
        std::thread::sleep(Duration::from_millis(1500));
        freed.store(true, Ordering::SeqCst);
        drop(slot);
        let (was_freed, free) = waiter.join().unwrap();
        assert!(was_freed, "woke before the slot was freed (polling)");
        assert_eq!(free, 1);
        l.wait_free(&["mx.slow:25".into()]);
        l.wait_free(&[]);
    }

    /// A reload's limits apply at once; the throttles and counts stay.
    #[test]
    fn set_limits_keeps_counts_and_throttles() {
        let (l, _) = limiter(Shaping::default(), &[]);
        let _a = l.try_acquire("mx:25", true).unwrap();
        l.throttle("t:25", "421 later".into());
        let two = DestShaping {
            max_connections: Some(2),
            ..DestShaping::default()
        };
        l.set_limits(Shaping::default(), [("mx:25".to_string(), two)].into());
        assert_eq!(l.available("mx:25"), 1, "one of two taken");
        assert_eq!(l.throttled().len(), 1);
    }

    /// A route's limits replace the defaults for its key only.
    #[test]
    fn route_limits_override_the_defaults() {
        let o = DestShaping {
            max_connections: Some(1),
            max_messages_per_connection: Some(7),
            ..DestShaping::default()
        };
        let defaults = Shaping {
            max_connections: 3,
            ..Shaping::default()
        };
        let (l, _) = limiter(defaults, &[("smtp.p:587", o)]);
        let _a = l.try_acquire("smtp.p:587", true).unwrap();
        assert!(l.try_acquire("smtp.p:587", true).is_err());
        assert_eq!(l.available("smtp.p:587"), 0);
        assert_eq!(l.available("mx.other:25"), 3);
        assert_eq!(l.max_messages("smtp.p:587"), 7);
        assert_eq!(l.max_messages("mx.other:25"), 100);
    }

    /// 300/min: one message per 200 ms by the clock, a burst of at most
    /// two, and a waiting time that says when the next token is due.
    /// Another destination is not limited by it.
    #[test]
    fn message_rate_spaces_sends_by_the_clock() {
        let o = DestShaping {
            message_rate: Some(Rate::parse("300/min").unwrap()),
            ..DestShaping::default()
        };
        let (l, clock) = limiter(Shaping::default(), &[("slow:25", o)]);
        let take = || l.try_acquire("slow:25", false).map(drop);
        assert!(take().is_ok());
        assert_eq!(take(), Err(Refused::Rate));
        assert_eq!(l.available("slow:25"), 0);
        assert_eq!(l.ready_in("slow:25"), Some(ms(200)));
        clock.advance(ms(150));
        assert_eq!(take(), Err(Refused::Rate));
        assert_eq!(l.ready_in("slow:25"), Some(ms(50)));
        clock.advance(ms(50));
        assert!(take().is_ok());
        // a long pause saves up two tokens, not more
        clock.advance(Duration::from_secs(60));
        assert_eq!(l.available("slow:25"), 2);
        assert!(take().is_ok() && take().is_ok());
        assert_eq!(take(), Err(Refused::Rate));
        // over 10 s: 50 sends, as the rate says
        let mut sent = 0;
        for _ in 0..1000 {
            clock.advance(ms(10));
            if take().is_ok() {
                sent += 1;
            }
        }
        assert_eq!(sent, 50);
        // positive control: unlimited elsewhere
        for _ in 0..100 {
            assert!(l.try_acquire("fast:25", false).is_ok());
        }
    }

    /// The connection rate counts only new connections; a reused one
    /// takes no token, and an unforeseen connection goes into debt.
    #[test]
    fn connection_rate_counts_new_connections_only() {
        let defaults = Shaping {
            connection_rate: Some(Rate::parse("60/min").unwrap()),
            ..Shaping::default()
        };
        let (l, clock) = limiter(defaults, &[]);
        let s = l.try_acquire("mx:25", true).unwrap();
        l.connected("mx:25");
        drop(s);
        assert_eq!(l.try_acquire("mx:25", true).err(), Some(Refused::Rate));
        // the scheduler now waits for the token, it does not spin
        assert_eq!(l.available("mx:25"), 0);
        assert_eq!(l.ready_in("mx:25"), Some(ms(1000)));
        // reuse of an idle connection needs no token
        for _ in 0..10 {
            assert!(l.try_acquire("mx:25", false).is_ok());
        }
        clock.advance(ms(1000));
        assert_eq!(l.available("mx:25"), 20);
        l.connected("mx:25");
        l.connected("mx:25");
        assert!(l.try_acquire("mx:25", true).is_err(), "debt is paid first");
        clock.advance(ms(1999));
        assert!(l.try_acquire("mx:25", true).is_err());
        clock.advance(ms(1));
        assert!(l.try_acquire("mx:25", true).is_ok());
    }

    /// A throttling reply stops the destination for the backoff, which
    /// doubles per reply in a row up to the cap and starts over after a
    /// success; other destinations go on.
    #[test]
    fn throttle_backs_off_growing_capped_and_resets() {
        let defaults = Shaping {
            backoff_min: Duration::from_secs(10),
            backoff_max: Duration::from_secs(35),
            ..Shaping::default()
        };
        let (l, clock) = limiter(defaults, &[]);
        let t = l.throttle("mx:25", "421 4.7.0 slow down".into());
        assert_eq!(t.until_ms, (T0 + 10) * 1000);
        assert_eq!(
            l.try_acquire("mx:25", false).err(),
            Some(Refused::Throttled)
        );
        assert!(l.try_acquire("other:25", false).is_ok());
        assert_eq!(l.available("mx:25"), 0);
        assert_eq!(l.ready_in("mx:25"), Some(Duration::from_secs(10)));
        assert_eq!(l.throttled().len(), 1);
        clock.advance(Duration::from_secs(10));
        assert!(l.throttled().is_empty());
        assert!(l.try_acquire("mx:25", false).is_ok());
        let steps: Vec<u64> = (0..3)
            .map(|_| {
                let now = clock.now_millis();
                let t = l.throttle("mx:25", "421 4.7.0 slow down".into());
                clock.advance(ms(t.until_ms - now));
                (t.until_ms - now) / 1000
            })
            .collect();
        assert_eq!(steps, [20, 35, 35], "doubling, capped");
        assert!(l.clear_throttle("mx:25"));
        assert!(!l.clear_throttle("mx:25"));
        let now = clock.now_millis();
        assert_eq!(l.throttle("mx:25", "x".into()).until_ms - now, 10_000);
        // read back after a restart
        let (l2, _) = limiter(defaults, &[]);
        l2.restore(l.throttled());
        assert_eq!(
            l2.try_acquire("mx:25", false).err(),
            Some(Refused::Throttled)
        );
    }

    /// Idle destinations are forgotten; busy, throttled or short of
    /// tokens ones are not.
    #[test]
    fn prune_keeps_only_what_matters() {
        let defaults = Shaping {
            message_rate: Some(Rate::parse("1/s").unwrap()),
            ..Shaping::default()
        };
        let (l, clock) = limiter(defaults, &[]);
        let busy = l.try_acquire("a:25", false).unwrap();
        drop(l.try_acquire("b:25", false).unwrap());
        l.throttle("c:25", "421".into());
        l.prune();
        assert_eq!(l.inner.lock().len(), 3);
        clock.advance(Duration::from_secs(2));
        drop(busy);
        l.prune();
        assert_eq!(l.inner.lock().len(), 1, "only the throttled one");
    }
}
