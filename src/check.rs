//! The filter stage of the inbound dialogue (OpenSMTPD's check → filter
//! → proceed): access rules at connect, HELO, MAIL and RCPT
//! (`access.rs`), and recipient validation for the relay domains, so an
//! unknown user is refused in the dialogue (`550 5.1.1`) instead of
//! being accepted and bounced later to a possibly forged sender
//! (backscatter). A recipient refused here was never queued, so no DSN
//! can ever be sent for it.
//!
//! Recipient validation, per relay domain:
//! - a table (`--recipients DOMAIN=FILE`): addresses and patterns, read
//!   at start into a `Swap` (a reload replaces it whole);
//! - verification (`--verify-recipients DOMAIN`): Postfix's address
//!   verification idea. A probe session to the domain's route says EHLO,
//!   `MAIL FROM:<>`, `RCPT TO:<addr>`, RSET and QUIT, never DATA. A 2xx
//!   is cached as known for `--verify-positive-ttl`, a 5xx as unknown for
//!   `--verify-negative-ttl`; anything else (4xx, no answer within
//!   `--verify-timeout`, no route) is not cached and gives `450 4.1.1`:
//!   the client tries again later, and nothing is ever accepted unverified.
//!
//! Never: a 250 for a recipient that a table or probe did not confirm;
//! probes that outlive their timeout in a session (a probe runs on its own
//! named thread, and the session waits at most the timeout for it).

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use crate::access::{AccessRules, Facts, Stage, Swap, Verdict};
use crate::client::{Connection, Timeouts};
use crate::dns::Dns;
use crate::route::Router;
use crate::smtp::{Enhanced, Host, Path, Reply};

pub use crate::config::limits::VerifySettings;

/// Addresses and patterns of one recipient table (`--recipients`).
///
/// Lines: `user@example.org` (that address), `user+*@example.org` (user
/// and every `user+detail`), `@example.org` (catch-all: every user of
/// the domain). `#` starts a comment. Comparisons ignore ASCII case.
#[derive(Debug, Default)]
pub struct RecipientTable {
    exact: std::collections::HashSet<String>,
    /// `user@domain` whose `user+*` forms are known too.
    detail: std::collections::HashSet<String>,
    catch_all: std::collections::HashSet<String>,
}

impl RecipientTable {
    pub fn parse(text: &str) -> Result<RecipientTable, String> {
        let mut t = RecipientTable::default();
        for (i, raw) in text.lines().enumerate() {
            let line = raw.split('#').next().unwrap_or("").trim();
            if line.is_empty() {
                continue;
            }
            let bad = || {
                format!(
                    "line {}: {line:?} is not user@domain, user+*@domain or @domain",
                    i + 1
                )
            };
            if line.split_whitespace().count() > 1 {
                return Err(bad());
            }
            let entry = line.to_ascii_lowercase();
            let (local, domain) = entry.rsplit_once('@').ok_or_else(bad)?;
            if domain.is_empty() || crate::smtp::Domain::parse(domain, true).is_err() {
                return Err(bad());
            }
            if local.is_empty() {
                t.catch_all.insert(domain.to_string());
            } else if let Some(user) = local.strip_suffix("+*") {
                if user.is_empty() {
                    return Err(bad());
                }
                t.detail.insert(format!("{user}@{domain}"));
            } else if local.contains('*') {
                return Err(bad());
            } else {
                t.exact.insert(entry.clone());
            }
        }
        Ok(t)
    }

    /// Whether `local@domain` is a known recipient.
    pub fn contains(&self, local: &str, domain: &str) -> bool {
        let local = local.to_ascii_lowercase();
        let domain = domain.to_ascii_lowercase();
        if self.catch_all.contains(&domain) || self.exact.contains(&format!("{local}@{domain}")) {
            return true;
        }
        // the recipient delimiter is '+', as in Postfix's common setting
        match local.split_once('+') {
            Some((user, _)) => self.detail.contains(&format!("{user}@{domain}")),
            None => self.detail.contains(&format!("{local}@{domain}")),
        }
    }

    pub fn len(&self) -> usize {
        self.exact.len() + self.detail.len() + self.catch_all.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// What a probe learnt.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Probe {
    Known,
    Unknown(Reply),
    Unsure(String),
}

/// Verification by asking the next hop, with its cache.
pub struct Verifier {
    router: Arc<Router>,
    hostname: String,
    settings: VerifySettings,
    /// address (lower case) → (known?, expiry)
    cache: Mutex<HashMap<String, (bool, Instant)>>,
    /// Probe threads running now.
    in_flight: Arc<AtomicUsize>,
}

/// Counts a probe thread from its start to its end, however it ends.
struct InFlight(Arc<AtomicUsize>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Verifier {
    pub fn new(router: Router, hostname: String, settings: VerifySettings) -> Verifier {
        Verifier {
            router: Arc::new(router),
            hostname,
            settings,
            cache: Mutex::new(HashMap::new()),
            in_flight: Arc::new(AtomicUsize::new(0)),
        }
    }

    fn cached(&self, key: &str, now: Instant) -> Option<bool> {
        let cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        cache
            .get(key)
            .filter(|(_, expiry)| *expiry > now)
            .map(|(known, _)| *known)
    }

    fn remember(&self, key: String, known: bool, now: Instant) {
        let ttl = if known {
            self.settings.positive_ttl
        } else {
            self.settings.negative_ttl
        };
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if cache.len() >= self.settings.cache_size {
            cache.retain(|_, (_, expiry)| *expiry > now);
        }
        if cache.len() >= self.settings.cache_size {
            // still full of live answers: drop the one expiring first
            if let Some(k) = cache
                .iter()
                .min_by_key(|(_, (_, e))| *e)
                .map(|(k, _)| k.clone())
            {
                cache.remove(&k);
            }
        }
        cache.insert(key, (known, now + ttl));
    }

    /// `Ok` when the next hop knows `path`, else the reply to give.
    pub fn verify(&self, path: &Path) -> Result<(), Reply> {
        let addr = path.mailbox().to_string();
        let key = addr.to_ascii_lowercase();
        let now = Instant::now();
        match self.cached(&key, now) {
            Some(true) => return Ok(()),
            Some(false) => return Err(unknown_user(&addr)),
            None => {}
        }
        match self.probe(path) {
            Probe::Known => {
                log::info!("verify {addr}: known to the next hop, cached");
                self.remember(key, true, Instant::now());
                Ok(())
            }
            Probe::Unknown(r) => {
                log::info!("verify {addr}: unknown to the next hop ({r}), cached");
                self.remember(key, false, Instant::now());
                Err(unknown_user(&addr))
            }
            Probe::Unsure(why) => {
                log::info!("verify {addr}: no answer ({why})");
                Err(verify_unsure(&addr))
            }
        }
    }

    /// Runs the probe on its own thread and waits at most the timeout: a
    /// hop that hangs costs the session the timeout, never more.
    fn probe(&self, path: &Path) -> Probe {
        let max = self.settings.max_probes;
        if self
            .in_flight
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                (n < max).then_some(n + 1)
            })
            .is_err()
        {
            return Probe::Unsure(format!("{max} probes already in flight"));
        }
        let guard = InFlight(self.in_flight.clone());
        let (tx, rx) = mpsc::sync_channel(1);
        let router = self.router.clone();
        let hostname = self.hostname.clone();
        let path = path.clone();
        let timeout = self.settings.timeout;
        let spawned = std::thread::Builder::new()
            .name("verify-probe".into())
            .stack_size(256 * 1024)
            .spawn(move || {
                let _guard = guard;
                let _ = tx.send(probe_hops(&router, &hostname, &path, timeout));
            });
        if let Err(e) = spawned {
            return Probe::Unsure(format!("cannot start a probe: {e}"));
        }
        match rx.recv_timeout(timeout) {
            Ok(p) => p,
            Err(_) => Probe::Unsure(format!("no answer within {timeout:?}")),
        }
    }
}

/// Tries the domain's hops in order until one gives a verdict on the
/// recipient. Each phase is bounded by `timeout`, so the thread ends.
fn probe_hops(router: &Router, hostname: &str, path: &Path, timeout: Duration) -> Probe {
    let hops = match router.route(path.mailbox().host()) {
        Ok(h) => h,
        Err(e) => return Probe::Unsure(format!("no route: {e}")),
    };
    let mut last = String::from("no next hop");
    for hop in hops {
        for ip in &hop.addrs {
            let peer = SocketAddr::new(*ip, hop.port);
            let mut conn = match Connection::open(peer, hostname, Timeouts::all(timeout)) {
                Ok(c) => c,
                Err(e) => {
                    last = format!("{peer}: {e}");
                    continue;
                }
            };
            let answer = conn.probe_rcpt(path);
            conn.quit();
            match answer {
                // RFC 5321 §4.2.1: 2yz accepted, 5yz refused for good
                Ok(r) if r.code().is_positive() => return Probe::Known,
                Ok(r) if r.code().is_permanent() => return Probe::Unknown(r),
                Ok(r) => last = format!("{peer}: {r}"),
                Err(e) => last = format!("{peer}: {e}"),
            }
        }
    }
    Probe::Unsure(last)
}

/// `550 5.1.1 <addr>: Recipient address rejected: user unknown`
/// (RFC 5321 §3.3 and §4.2.2: 550 mailbox unavailable; RFC 3463 X.1.1).
pub fn unknown_user(addr: &str) -> Reply {
    Reply::new(
        550,
        Enhanced::new(5, 1, 1),
        format!("<{addr}>: Recipient address rejected: user unknown"),
    )
}

/// `450 4.1.1`: the next hop could not say; try again later.
pub fn verify_unsure(addr: &str) -> Reply {
    Reply::new(
        450,
        Enhanced::new(4, 1, 1),
        format!("<{addr}>: Recipient address verification in progress or temporarily failed"),
    )
}

/// The recipient check of one relay domain.
pub enum DomainCheck {
    Table(Swap<RecipientTable>),
    Verify,
    /// The table first (unknown → 550 without a probe), then a probe.
    Both(Swap<RecipientTable>),
}

/// Everything the filter stage needs, built once by `app.rs`.
#[derive(Default)]
pub struct Gate {
    pub access: Swap<AccessRules>,
    /// Relay domain (lower case) → its check.
    pub domains: HashMap<String, DomainCheck>,
    pub verifier: Option<Verifier>,
    /// For `ptr:` rules; `None` without DNS (the name is then unknown).
    pub dns: Option<Dns>,
}

impl Gate {
    /// The client's reverse name, or `None`. Only asked when a rule has
    /// a `ptr:` key. Postfix's "reverse name" is used as the PTR says,
    /// without forward confirmation.
    pub fn reverse_name(&self, ip: IpAddr) -> Option<String> {
        let dns = self.dns.as_ref()?;
        match dns.ptr(ip) {
            Ok(name) => {
                log::debug!("{ip} reverse name {name}");
                Some(name)
            }
            Err(e) => {
                log::debug!("{ip} no reverse name: {e}");
                None
            }
        }
    }

    pub fn access(&self, stage: Stage, facts: &Facts) -> Verdict {
        self.access.load().evaluate(stage, facts)
    }

    /// Recipient validation: `Ok` when the recipient may be accepted.
    pub fn validate(&self, path: &Path) -> Result<(), Reply> {
        let mailbox = path.mailbox();
        let Host::Name(domain) = mailbox.host() else {
            return Ok(());
        };
        let Some(check) = self.domains.get(&domain.key()) else {
            return Ok(());
        };
        let addr = mailbox.to_string();
        let table = match check {
            DomainCheck::Table(t) | DomainCheck::Both(t) => Some(t.load()),
            DomainCheck::Verify => None,
        };
        if let Some(t) = table {
            if !t.contains(mailbox.local(), domain.as_str()) {
                return Err(unknown_user(&addr));
            }
        }
        match (check, &self.verifier) {
            (DomainCheck::Table(_), _) => Ok(()),
            (_, Some(v)) => v.verify(path),
            // app.rs builds a verifier whenever a domain verifies
            (_, None) => Err(verify_unsure(&addr)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recipient_table() {
        let t = RecipientTable::parse(
            "# users\nalice@example.org\nBob+*@Example.org  # bob and bob+anything\n@catch.example\n",
        )
        .unwrap();
        assert_eq!(t.len(), 3);
        assert!(t.contains("Alice", "EXAMPLE.org"));
        assert!(!t.contains("alice+x", "example.org"), "no detail for alice");
        assert!(t.contains("bob", "example.org"));
        assert!(t.contains("bob+lists", "example.org"));
        assert!(!t.contains("bobby", "example.org"));
        assert!(!t.contains("carol", "example.org"));
        assert!(t.contains("anyone", "catch.example"));
        assert!(!t.contains("alice", "other.example"));
        for bad in [
            "alice",
            "a@",
            "a b@c.example",
            "+*@x.example",
            "a*@x.example",
            "@",
        ] {
            assert!(RecipientTable::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn probes_in_flight_are_bounded() {
        let router = Router::new(Vec::new(), None, 25, vec!["h".into()], Vec::new());
        let v = Verifier::new(
            router,
            "h".into(),
            VerifySettings {
                max_probes: 1,
                ..VerifySettings::default()
            },
        );
        let path = Path::parse("<u@x.example>", false).unwrap();
        v.in_flight.store(1, Ordering::SeqCst);
        assert_eq!(
            v.probe(&path),
            Probe::Unsure("1 probes already in flight".into())
        );
        v.in_flight.store(0, Ordering::SeqCst);
        // a probe that runs (no route here) counts itself and uncounts
        assert!(matches!(v.probe(&path), Probe::Unsure(why) if why.starts_with("no route")));
        assert!(wait(|| v.in_flight.load(Ordering::SeqCst) == 0));
    }

    fn wait(f: impl Fn() -> bool) -> bool {
        let end = Instant::now() + Duration::from_secs(5);
        while Instant::now() < end {
            if f() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        false
    }

    #[test]
    fn cache_lifetimes_and_bound() {
        let router = Router::new(Vec::new(), None, 25, vec!["h".into()], Vec::new());
        let v = Verifier::new(
            router,
            "h".into(),
            VerifySettings {
                positive_ttl: Duration::from_secs(60),
                negative_ttl: Duration::from_secs(5),
                cache_size: 2,
                ..VerifySettings::default()
            },
        );
        let t0 = Instant::now();
        v.remember("a@x".into(), true, t0);
        v.remember("b@x".into(), false, t0);
        assert_eq!(v.cached("a@x", t0 + Duration::from_secs(10)), Some(true));
        assert_eq!(v.cached("b@x", t0 + Duration::from_secs(10)), None);
        assert_eq!(v.cached("b@x", t0 + Duration::from_secs(1)), Some(false));
        v.remember("c@x".into(), true, t0 + Duration::from_secs(1));
        assert_eq!(v.cache.lock().unwrap().len(), 2, "bounded");
        assert_eq!(
            v.cached("b@x", t0 + Duration::from_secs(1)),
            None,
            "evicted first"
        );
    }
}
