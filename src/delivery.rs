//! One delivery attempt of one queued message.
//!
//! Claim the message (an flock on its body, which a crashed process cannot
//! leave behind), route each unfinished recipient, send one transaction
//! per (message, destination), and record every recipient's outcome in the
//! envelope *before* the next step. Crash story:
//! - killed during a transaction: nothing was recorded for it; the next
//!   attempt sends it again (a duplicate only for that transaction).
//! - killed after a transaction: the envelope already marks its
//!   recipients `sent`, `deferred` or `bouncing`; `sent` is never resent.
//! - killed between marking `bouncing` and queueing the DSN: the next
//!   attempt finds `bouncing` recipients and queues the DSN then.
//! - killed while removing a finished message: see `Spool::remove`.

use std::collections::HashMap;
use std::fs::File;
use std::net::SocketAddr;
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

use crossbeam_channel::Sender;

use crate::bounce::{self, Action, RcptReport};
use crate::client::{ClientError, Connection, Outgoing, Phase, Timeouts};
use crate::route::{Hop, RouteError, RouteTls, Router};
use crate::smtp::{Enhanced, Host, Path, Reply};
use crate::spool::{Attempt, Envelope, Hold, QueueId, RcptState, Spool, SpoolError};
use crate::time::{format_duration, now_unix};

/// Retry schedule (`--retry-min`, `--retry-max`, `--max-queue-age`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    pub min: Duration,
    pub max: Duration,
    pub lifetime: Duration,
}

impl Default for RetryPolicy {
    fn default() -> RetryPolicy {
        RetryPolicy {
            min: Duration::from_secs(300),
            max: Duration::from_secs(4000),
            lifetime: Duration::from_secs(5 * 86_400),
        }
    }
}

impl RetryPolicy {
    /// Delay before the next try after `attempts` tries: min doubling up to
    /// max, with ±10% jitter so a burst of deferrals does not come due as one.
    pub fn backoff(&self, attempts: u32, salt: u64) -> Duration {
        let shift = attempts.saturating_sub(1).min(30);
        let base = self.min.saturating_mul(1 << shift).min(self.max);
        let ms = base.as_millis() as u64;
        let spread = ms / 10;
        if spread == 0 {
            return base;
        }
        let r = splitmix(salt) % (2 * spread + 1);
        Duration::from_millis(ms - spread + r)
    }
}

fn splitmix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// A cached connection's peer and the TLS policy it was opened under.
type CacheKey = (SocketAddr, RouteTls);

/// Idle outbound connections kept for reuse, per next-hop address and
/// TLS policy: a connection opened under one route's policy (plaintext
/// under `tls = none`, say) is never reused for a route with another.
pub struct ConnCache {
    idle: Mutex<HashMap<CacheKey, Vec<(Connection, Instant)>>>,
    max_idle: Duration,
    max_transactions: usize,
}

impl ConnCache {
    pub fn new(max_idle: Duration, max_transactions: usize) -> ConnCache {
        ConnCache {
            idle: Mutex::new(HashMap::new()),
            max_idle,
            max_transactions,
        }
    }

    fn take(&self, addr: SocketAddr, policy: RouteTls) -> Option<Connection> {
        let mut stale = Vec::new();
        let found = {
            let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
            let list = idle.get_mut(&(addr, policy))?;
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

    fn put(&self, c: Connection, policy: RouteTls) {
        if !c.reusable() || c.transactions() >= self.max_transactions {
            c.quit();
            return;
        }
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        idle.entry((c.peer(), policy))
            .or_default()
            .push((c, Instant::now()));
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

/// Caps concurrent connections per destination (`--max-per-destination`).
pub struct DestLimiter {
    busy: Mutex<HashMap<String, usize>>,
    freed: Condvar,
    max: usize,
}

pub struct DestSlot<'a> {
    limiter: &'a DestLimiter,
    key: String,
}

impl DestLimiter {
    pub fn new(max: usize) -> DestLimiter {
        DestLimiter {
            busy: Mutex::new(HashMap::new()),
            freed: Condvar::new(),
            max,
        }
    }

    /// Waits up to `wait` for a free slot.
    fn acquire(&self, key: &str, wait: Duration) -> Option<DestSlot<'_>> {
        let deadline = Instant::now() + wait;
        let mut busy = self.busy.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            let n = busy.get(key).copied().unwrap_or(0);
            if n < self.max {
                busy.insert(key.to_string(), n + 1);
                return Some(DestSlot {
                    limiter: self,
                    key: key.to_string(),
                });
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            busy = self
                .freed
                .wait_timeout(busy, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }
}

impl Drop for DestSlot<'_> {
    fn drop(&mut self) {
        let mut busy = self.limiter.busy.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = busy.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                busy.remove(&self.key);
            }
        }
        self.limiter.freed.notify_all();
    }
}

/// Everything a delivery worker needs; shared by all of them.
pub struct Deliverer {
    pub spool: std::sync::Arc<Spool>,
    pub router: Router,
    pub hostname: String,
    pub timeouts: Timeouts,
    pub retry: RetryPolicy,
    pub cache: ConnCache,
    pub limiter: DestLimiter,
    /// Forward to the next host of an RFC 821 source route.
    pub honor_source_routes: bool,
    /// Send a "delayed" DSN once a message has waited this long.
    pub delay_warning: Option<Duration>,
    /// Where newly queued DSNs are announced (the scheduler).
    pub committed: Option<Sender<QueueId>>,
    /// `--outbound-tls`: STARTTLS to next hops.
    pub tls: std::sync::Arc<crate::tls::ClientTls>,
}

/// What the scheduler does with the message next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Every recipient is final; the message left the queue.
    Done,
    /// Try again at this Unix time.
    Retry(u64),
    /// Gone: removed by someone else.
    Gone,
    /// Held by the operator until `queue release`.
    Held,
}

/// One recipient's result of one attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Disposition {
    /// Accepted; true when the next hop took the DSN requests along
    /// (RFC 3461 §5.2), false when a NOTIFY=SUCCESS is ours to answer.
    Sent(String, bool),
    Deferred(String),
    Failed(String),
}

/// The only place that turns replies and errors into outcomes.
fn classify_reply(r: &Reply) -> Disposition {
    let text = r.to_string();
    if r.code().is_positive() {
        Disposition::Sent(text, false)
    } else if r.code().is_transient() {
        Disposition::Deferred(text)
    } else {
        Disposition::Failed(text)
    }
}

fn classify_error(e: &ClientError) -> Disposition {
    match e {
        // A 5xx greeting says "no service at this host", not "no such
        // recipient": skip the host and defer, as Postfix does by default
        // (smtp_skip_5xx_greeting), so the outcome does not depend on which
        // MX happened to be tried last.
        ClientError::Rejected(Phase::Greeting, r) => {
            Disposition::Deferred(format!("451 4.4.0 host refused service at greeting: {r}"))
        }
        ClientError::Rejected(_, r) => classify_reply(r),
        ClientError::Connect(err) => {
            Disposition::Deferred(format!("451 4.4.1 connect failed: {err}"))
        }
        ClientError::Timeout(p) => {
            Disposition::Deferred(format!("451 4.4.2 timeout waiting for reply to {p}"))
        }
        ClientError::Io(p, err) => {
            Disposition::Deferred(format!("451 4.4.2 connection lost during {p}: {err}"))
        }
        ClientError::Protocol(p, what) => {
            Disposition::Deferred(format!("451 4.5.0 protocol error after {p}: {what}"))
        }
    }
}

fn route_disposition(e: &RouteError) -> Disposition {
    match e {
        RouteError::Permanent {
            code,
            enhanced,
            text,
        } => Disposition::Failed(format!("{code} {enhanced} {text}")),
        RouteError::Temporary(t) => Disposition::Deferred(format!("451 4.4.3 {t}")),
    }
}

const MAX_RCPTS_PER_TRANSACTION: usize = 100;

/// Recipients that share a next hop: one transaction carries them all.
struct Group {
    /// The hops to try, or why there are none.
    route: Result<Vec<Hop>, RouteError>,
    /// Names the destination for logs and the concurrency limit.
    key: String,
    /// Index into `env.rcpts`, and the forward-path to send.
    rcpts: Vec<(usize, Path)>,
}

/// Recipients whose routes are equal share a group.
fn route_key(route: &Result<Vec<Hop>, RouteError>, dest: &Host) -> String {
    match route {
        Ok(hops) => hops
            .iter()
            .map(|h| {
                let addrs: Vec<String> = h.addrs.iter().map(|a| a.to_string()).collect();
                format!("{}[{}]:{}", h.name.to_lowercase(), addrs.join(","), h.port)
            })
            .collect::<Vec<_>>()
            .join(" "),
        Err(_) => format!("unrouted {}", dest.key()),
    }
}

impl Deliverer {
    /// RFC 821 §3.6 / RFC 5321 Appendix C: with source routes honoured, a
    /// route's first hop that is us is removed and the next hop is the
    /// destination; otherwise the route is stripped (RFC 5321 §3.6.1).
    fn destination(&self, path: &Path) -> (Host, Path) {
        if self.honor_source_routes {
            let rest: Vec<_> = path
                .route()
                .iter()
                .skip_while(|d| d.as_str().eq_ignore_ascii_case(&self.hostname))
                .cloned()
                .collect();
            if let Some(first) = rest.first() {
                let next = Path::with_route(rest.clone(), path.mailbox().clone());
                return (Host::Name(first.clone()), next);
            }
        }
        (path.mailbox().host().clone(), path.without_route())
    }

    /// Routes every unfinished recipient (each destination once) and
    /// groups them by next hop.
    fn groups(&self, env: &Envelope) -> Vec<Group> {
        let mut routes: HashMap<String, Result<Vec<Hop>, RouteError>> = HashMap::new();
        let mut groups: Vec<Group> = Vec::new();
        for (i, r) in env.rcpts.iter().enumerate() {
            if !matches!(r.state, RcptState::Pending | RcptState::Deferred) {
                continue;
            }
            let (dest, path) = self.destination(&r.path);
            let route = routes
                .entry(dest.key())
                .or_insert_with(|| self.router.route(&dest))
                .clone();
            let key = route_key(&route, &dest);
            // RFC 5321 §4.5.3.1.8: a server must take 100 recipients;
            // more go in a further transaction
            match groups
                .iter_mut()
                .find(|g| g.key == key && g.rcpts.len() < MAX_RCPTS_PER_TRANSACTION)
            {
                Some(g) => g.rcpts.push((i, path)),
                None => groups.push(Group {
                    route,
                    key,
                    rcpts: vec![(i, path)],
                }),
            }
        }
        groups
    }

    /// Runs one attempt on message `id`.
    pub fn attempt(&self, id: QueueId) -> Result<Outcome, SpoolError> {
        let msg_path = self.spool.msg_path(id);
        let body_file = match File::open(&msg_path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Outcome::Gone),
            Err(e) => return Err(SpoolError::io(&msg_path, e)),
        };
        match body_file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                log::debug!("{id} busy (locked by another process), retry soon");
                return Ok(Outcome::Retry(now_unix() + 1));
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(SpoolError::io(&msg_path, e)),
        }
        let mut env = match self.spool.load(id) {
            Ok(e) => e,
            Err(SpoolError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
                return Ok(Outcome::Gone)
            }
            Err(e) => return Err(e),
        };
        let start = now_unix();
        // `queue hold`: not now; a timed hold comes due by itself
        match env.hold {
            Some(Hold::Forever) => return Ok(Outcome::Held),
            Some(h @ Hold::Until(t)) if h.active(start) => return Ok(Outcome::Retry(t)),
            Some(Hold::Until(_)) => {
                env.hold = None;
            }
            None => {}
        }
        env.attempts += 1;

        for group in self.groups(&env) {
            let results = self.deliver_group(&env, &group, &body_file);
            let now = now_unix();
            let mut relayed = Vec::new();
            for ((i, _), (host, disp)) in group.rcpts.iter().zip(results) {
                let r = &mut env.rcpts[*i];
                if let Disposition::Sent(_, false) = &disp {
                    relayed.push(*i);
                }
                let (state, text, status) = match &disp {
                    Disposition::Sent(t, _) => (RcptState::Sent, t, "sent"),
                    Disposition::Deferred(t) => (RcptState::Deferred, t, "deferred"),
                    Disposition::Failed(t) => (RcptState::Bouncing, t, "bounced"),
                };
                log::info!(
                    "{id} to={} relay={} delay={} attempts={} dsn={} status={status} ({text})",
                    crate::smtp::Escaped(&r.path.mailbox().to_string()),
                    host,
                    format_duration(Duration::from_secs(now.saturating_sub(env.arrived))),
                    env.attempts,
                    bounce::status_of(Some(text), Enhanced::new(4, 0, 0)),
                );
                r.state = state;
                r.last_reply = Some(text.clone());
                env.history.push(Attempt {
                    time: now,
                    rcpt: r.path.mailbox().to_string(),
                    host,
                    reply: text.clone(),
                });
            }
            // RFC 3461 §5.2.2: NOTIFY=SUCCESS past a non-DSN next hop
            bounce::report_relayed(
                &self.spool,
                &self.hostname,
                &env,
                &relayed,
                now,
                self.committed.as_ref(),
            )?;
            // record before anything else happens: a sent recipient must
            // never be sent again. When every recipient is now sent, the
            // removal below records that instead (one folder change, not two)
            let all_sent = env.rcpts.iter().all(|r| r.state == RcptState::Sent);
            if !all_sent {
                self.spool.store(&env)?;
            }
        }

        let now = now_unix();
        // RFC 5321 §4.5.4.1: give up after the queue lifetime.
        let age = Duration::from_secs(now.saturating_sub(env.arrived));
        if age >= self.retry.lifetime {
            for r in env
                .rcpts
                .iter_mut()
                .filter(|r| !r.state.is_final() && r.state != RcptState::Bouncing)
            {
                let last = r
                    .last_reply
                    .clone()
                    .unwrap_or_else(|| "no attempt succeeded".into());
                log::info!(
                    "{id} to={} status=expired after {} ({last})",
                    crate::smtp::Escaped(&r.path.mailbox().to_string()),
                    format_duration(age)
                );
                r.state = RcptState::Bouncing;
                r.last_reply = Some(format!(
                    "{} 4.4.7 message expired after {} in the queue; last error: {last}",
                    if last.starts_with('5') { 554 } else { 451 },
                    format_duration(age)
                ));
            }
        }
        self.report_failures(&mut env, now)?;
        if env.is_done() {
            // Give up the body's lock before its file goes to free/: the
            // file is reused for a new message, whose first delivery must
            // not find it still locked by us.
            drop(body_file);
            self.spool.remove(id)?;
            log::debug!("{id} removed (all recipients final)");
            return Ok(Outcome::Done);
        }
        self.maybe_warn_delay(&mut env, now)?;
        let delay = self
            .retry
            .backoff(env.attempts, u64::from(env.attempts) ^ start ^ id_salt(id));
        env.next_try = now + delay.as_secs().max(1);
        self.spool.store(&env)?;
        Ok(Outcome::Retry(env.next_try))
    }

    fn report_failures(&self, env: &mut Envelope, now: u64) -> Result<(), SpoolError> {
        bounce::report_bouncing(
            &self.spool,
            &self.hostname,
            env,
            now,
            self.committed.as_ref(),
        )
        .map(|_| ())
    }

    /// `--delay-warning`: one "delayed" DSN once the message is that old.
    fn maybe_warn_delay(&self, env: &mut Envelope, now: u64) -> Result<(), SpoolError> {
        let Some(after) = self.delay_warning else {
            return Ok(());
        };
        let age = now.saturating_sub(env.arrived);
        let already = env
            .history
            .iter()
            .any(|a| a.rcpt == "-" && a.host == "delay-warning");
        if age < after.as_secs() || already || env.from.is_null() {
            return Ok(());
        }
        let reports: Vec<RcptReport> = env
            .rcpts
            .iter()
            .filter(|r| r.state == RcptState::Deferred)
            .map(|r| bounce::report_for(env, r, Action::Delayed))
            .collect();
        if let Some(dsn) = bounce::enqueue(&self.spool, &self.hostname, env, &reports, now)? {
            if let Some(tx) = &self.committed {
                let _ = tx.try_send(dsn);
            }
            env.history.push(Attempt {
                time: now,
                rcpt: "-".into(),
                host: "delay-warning".into(),
                reply: format!("delay warning sent as {dsn}"),
            });
        }
        Ok(())
    }

    /// Delivers one group; returns (relay description, disposition) per
    /// recipient, in the group's order.
    fn deliver_group(
        &self,
        env: &Envelope,
        group: &Group,
        body: &File,
    ) -> Vec<(String, Disposition)> {
        let all = |host: &str, d: Disposition| vec![(host.to_string(), d); group.rcpts.len()];
        let hops = match &group.route {
            Ok(h) => h,
            Err(e) => return all("-", route_disposition(e)),
        };
        let key = hops
            .first()
            .map(|h| h.name.to_lowercase())
            .unwrap_or_default();
        let Some(_slot) = self.limiter.acquire(&key, self.timeouts.connect) else {
            return all(
                "-",
                Disposition::Deferred(format!("451 4.4.5 too many concurrent deliveries to {key}")),
            );
        };
        let paths: Vec<Path> = group.rcpts.iter().map(|(_, p)| p.clone()).collect();
        let rcpt_dsn: Vec<crate::smtp::RcptDsn> = group
            .rcpts
            .iter()
            .map(|(i, _)| env.rcpts[*i].dsn.clone())
            .collect();
        let mut last = Disposition::Deferred(format!("451 4.4.4 no usable next hop for {key}"));
        let mut last_host = "-".to_string();
        // RFC 5321 §5.1: try the hosts in order until one answers.
        for hop in hops {
            for addr in &hop.addrs {
                let peer = SocketAddr::new(*addr, hop.port);
                let label = relay_label(hop, peer);
                let policy = hop.tls.unwrap_or(RouteTls::Starttls(self.tls.mode));
                let mut conn = match self.connection(&hop.name, peer, policy) {
                    Ok(c) => c,
                    Err(e) => {
                        log::debug!("{} {label}: {e}", env.id);
                        last = classify_error(&e);
                        last_host = label;
                        // a 5xx greeting is that host's answer; try others
                        continue;
                    }
                };
                let msg = Outgoing {
                    from: &env.from,
                    rcpts: &paths,
                    size: env.size,
                    body: env.body,
                    smtputf8: env.smtputf8,
                    dsn: Some((&env.dsn, &rcpt_dsn)),
                };
                let mut reader = std::io::BufReader::with_capacity(64 * 1024, body);
                if let Err(e) = std::io::Seek::seek(&mut reader, std::io::SeekFrom::Start(0)) {
                    return all(
                        "-",
                        Disposition::Deferred(format!("451 4.3.0 cannot read queued message: {e}")),
                    );
                }
                let result = conn.send(&msg, &mut reader);
                log::info!("{} relay={label} tls={}", env.id, conn.tls_label());
                self.cache.put(conn, policy);
                match result {
                    Ok(sent) => {
                        return sent
                            .rcpt_replies
                            .iter()
                            .map(|rr| {
                                let d = match (&sent.data_reply, rr.code().is_positive()) {
                                    (Some(data), true) => classify_reply(data),
                                    _ => classify_reply(rr),
                                };
                                let d = match d {
                                    Disposition::Sent(t, _) => {
                                        Disposition::Sent(t, sent.dsn_passed)
                                    }
                                    other => other,
                                };
                                (label.clone(), d)
                            })
                            .collect();
                    }
                    Err(e) => {
                        let d = classify_error(&e);
                        let data_was_sent = matches!(
                            &e,
                            ClientError::Io(Phase::EndOfData, _)
                                | ClientError::Timeout(Phase::EndOfData)
                        );
                        // a permanent refusal, or a failure after the data
                        // went out, is final for this attempt
                        if matches!(d, Disposition::Failed(_)) || data_was_sent {
                            return all(&label, d);
                        }
                        last = d;
                        last_host = label;
                    }
                }
            }
        }
        all(&last_host, last)
    }

    /// A connection to `peer` under `policy` (the route's, else the
    /// global `--outbound-tls`): a cached one, or a new one.
    fn connection(
        &self,
        name: &str,
        peer: SocketAddr,
        policy: RouteTls,
    ) -> Result<Connection, ClientError> {
        while let Some(mut c) = self.cache.take(peer, policy) {
            // the peer may have closed an idle connection: probe it
            if c.reset().is_ok() {
                return Ok(c);
            }
            c.quit();
        }
        match policy {
            RouteTls::None => Connection::open(peer, &self.hostname, self.timeouts),
            RouteTls::Starttls(mode) if mode == self.tls.mode => {
                Connection::open_with_tls(peer, &self.hostname, self.timeouts, &self.tls, name)
            }
            RouteTls::Starttls(mode) => {
                let tls = self.tls.with_mode(mode);
                Connection::open_with_tls(peer, &self.hostname, self.timeouts, &tls, name)
            }
        }
    }
}

/// `mx.example.org[192.0.2.1]:25`, or `[192.0.2.1]:25` for a literal.
fn relay_label(hop: &Hop, peer: SocketAddr) -> String {
    if hop.name.starts_with('[') {
        format!("[{}]:{}", peer.ip(), peer.port())
    } else {
        format!("{}[{}]:{}", hop.name, peer.ip(), peer.port())
    }
}

fn id_salt(id: QueueId) -> u64 {
    let s = id.to_string();
    u64::from_str_radix(&s, 16).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_with_jitter_and_cap() {
        let p = RetryPolicy {
            min: Duration::from_secs(100),
            max: Duration::from_secs(1000),
            lifetime: Duration::from_secs(10_000),
        };
        for salt in 0..50 {
            let d1 = p.backoff(1, salt).as_secs();
            let d3 = p.backoff(3, salt).as_secs();
            let d9 = p.backoff(9, salt).as_secs();
            assert!((90..=110).contains(&d1), "{d1}");
            assert!((360..=440).contains(&d3), "{d3}");
            assert!((900..=1100).contains(&d9), "{d9}");
        }
    }

    #[test]
    fn classification() {
        let r = |s: &str| {
            let mut p = crate::smtp::ReplyParser::new();
            p.feed(s).unwrap().unwrap()
        };
        assert!(matches!(
            classify_reply(&r("250 2.0.0 ok")),
            Disposition::Sent(..)
        ));
        assert!(matches!(
            classify_reply(&r("451 4.3.0 later")),
            Disposition::Deferred(_)
        ));
        assert!(matches!(
            classify_reply(&r("550 5.1.1 no")),
            Disposition::Failed(_)
        ));
        let refused =
            ClientError::Connect(std::io::Error::from(std::io::ErrorKind::ConnectionRefused));
        assert!(matches!(classify_error(&refused), Disposition::Deferred(_)));
        assert!(matches!(
            classify_error(&ClientError::Timeout(Phase::Data)),
            Disposition::Deferred(_)
        ));
    }
}
