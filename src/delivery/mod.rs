//! One delivery attempt of one queued message.
//!
//! Claim the message (`spool::Claim`: an flock on its body, which a
//! crashed process cannot leave behind), route each unfinished recipient, send one transaction
//! per (message, destination), and record every recipient's outcome in the
//! envelope *before* the next step. Crash story:
//! - killed during a transaction: nothing was recorded for it; the next
//!   attempt sends it again (a duplicate only for that transaction).
//! - killed after a transaction: the envelope already marks its
//!   recipients `sent`, `deferred` or `bouncing`; `sent` is never resent.
//! - killed between marking `bouncing` and queueing the DSN: the next
//!   attempt finds `bouncing` recipients and queues the DSN then.
//! - killed while removing a finished message: see `Spool::remove`.

mod cache;
pub mod outcome;
mod tls_report;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use crossbeam_channel::Sender;

use crate::client::{ClientError, Connection, HopPolicy, Outgoing, Phase, Timeouts};
use crate::route::{Hop, RouteError, RouteTls, Router};
pub use crate::scheduler::DestLimiter;
use crate::smtp::{Enhanced, Host, Path};
use crate::spool::{Claim, Claimed, Envelope, Hold, QueueId, RcptState, Spool, SpoolError};
use crate::status::{Class, LocalReason, Status};
use crate::time::Clock;
use crate::tls_policy::{DestTls, HopDane, MxVerdict, TlsPolicies};

use cache::CacheKey;
pub use cache::ConnCache;
pub use outcome::RetryPolicy;
use outcome::{error_status, expire, relay_label, remote_name, route_status, RcptResult};

/// Everything a delivery worker needs; shared by all of them.
pub struct Deliverer {
    pub spool: std::sync::Arc<Spool>,
    pub router: Router,
    pub hostname: String,
    pub timeouts: Timeouts,
    pub retry: RetryPolicy,
    pub cache: ConnCache,
    /// In-flight transactions per destination; the scheduler decides from
    /// it when a waiting message is released (`scheduler` module doc).
    pub limiter: DestLimiter,
    /// Forward to the next host of an RFC 821 source route.
    pub honor_source_routes: bool,
    /// Send a "delayed" DSN once a message has waited this long.
    pub delay_warning: Option<Duration>,
    /// Where newly queued DSNs are announced (the scheduler).
    pub committed: Option<Sender<QueueId>>,
    /// `--outbound-tls`: STARTTLS to next hops.
    pub tls: std::sync::Arc<crate::tls::ClientTls>,
    /// `--secrets-file`: the credentials routes' `auth =` name.
    pub secrets: std::sync::Arc<crate::secrets::Secrets>,
    /// The time for backoff, expiry and delay warnings.
    pub clock: std::sync::Arc<dyn Clock>,
    /// Where double bounces go (`--postmaster`).
    pub postmaster: Option<crate::smtp::Path>,
    /// Per-destination TLS policy sources (MTA-STS), `tls_policy.rs`.
    pub tls_policies: std::sync::Arc<TlsPolicies>,
    /// `--tls-reports`: counts each TLS session (RFC 8460), `tlsrpt`.
    pub tls_reports: Option<std::sync::Arc<crate::tlsrpt::Reporter>>,
}

/// What became of a message handed to a worker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Attempted {
    /// The attempt ran (perhaps for some of its destinations only, see
    /// `Wait`).
    Finished(Outcome),
    /// These destinations were at their limit: their recipients were not
    /// tried, nothing about them was recorded, and the message waits for
    /// a free slot of the first (not an attempt, not a deferral).
    Wait(Vec<String>),
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

const MAX_RCPTS_PER_TRANSACTION: usize = 100;
/// Within one attempt over several destinations, how often the
/// recipients' new states are stored before its end (`deliver_groups`).
const STORE_EVERY: Duration = Duration::from_secs(1);

/// What one next-hop address made of a group's transaction.
enum Tried {
    /// The server answered: a result per recipient, in the group's order.
    Answered(Vec<RcptResult>),
    /// Final for this attempt, for every recipient: a permanent refusal,
    /// or a failure after the data went out.
    Final(Status),
    /// This address could not take it: try the next one.
    Next(Status),
}

/// Recipients that share a next hop: one transaction carries them all.
struct Group {
    /// The hops to try, or why there are none.
    route: Result<Vec<Hop>, RouteError>,
    /// Names the destination for logs and the concurrency limit.
    key: String,
    /// Index into `env.rcpts`, and the forward-path to send.
    rcpts: Vec<(usize, Path)>,
    /// The destination's TLS policy (`tls_policy.rs`).
    tls: DestTls,
    /// The policy domain its TLS sessions are reported for (RFC 8460):
    /// the recipient domain, A-label; `None`: not reported.
    report_domain: Option<String>,
}

/// What the hops of a group came to when none took the message: the
/// last hop's status, except that a temporary failure (a host down, a
/// timeout) is not replaced by a permanent policy refusal (RFC 8689
/// §4.2.1 5.7.30) of another hop: the message is deferred while some
/// hop may still take it, and bounced only when every hop refused.
struct HopsFailed {
    status: Status,
    host: String,
    temporary_seen: bool,
}

impl HopsFailed {
    fn new(placeholder: Status) -> HopsFailed {
        HopsFailed {
            status: placeholder,
            host: "-".into(),
            temporary_seen: false,
        }
    }

    fn note(&mut self, st: Status, host: &str) {
        let temporary = st.class() == Class::Temporary;
        if temporary || !self.temporary_seen {
            self.status = st;
            self.host = host.to_string();
        }
        self.temporary_seen |= temporary;
    }
}

/// One address of one hop, and the TLS policy to reach it under.
struct Target<'a> {
    hop: &'a Hop,
    peer: SocketAddr,
    label: String,
    tls: RouteTls,
    /// The hop's TLSA records under `RouteTls::Dane`.
    dane: &'a HopDane,
    /// The destination's key for its limits (messages per connection,
    /// connection rate).
    limit_key: &'a str,
    /// Where its TLS sessions are reported (RFC 8460), if anywhere.
    report: Option<&'a tls_report::ReportTo>,
}

/// What `--max-per-destination` counts: the first next hop, by name and
/// port (a literal's name is the address). Unrouted groups open no
/// connection and need no slot.
fn limit_key(route: &Result<Vec<Hop>, RouteError>) -> Option<String> {
    let first = route.as_ref().ok()?.first()?;
    Some(format!("{}:{}", first.name.to_lowercase(), first.port))
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

    /// Routes every unfinished recipient (each destination once), looks
    /// up its TLS policy, and groups them by next hop. `tls_optional`:
    /// the message says `TLS-Required: No` (RFC 8689 §4.1).
    fn groups(&self, env: &Envelope, tls_optional: bool) -> Vec<Group> {
        type Routed = (Result<Vec<Hop>, RouteError>, DestTls);
        let mut routes: HashMap<String, Routed> = HashMap::new();
        let mut groups: Vec<Group> = Vec::new();
        for (i, r) in env.rcpts.iter().enumerate() {
            if !matches!(r.state, RcptState::Pending | RcptState::Deferred) {
                continue;
            }
            let (dest, path) = self.destination(&r.path);
            let (route, tls) = routes
                .entry(dest.key())
                .or_insert_with(|| {
                    let route = self.router.route(&dest);
                    let by_route = self.router.has_static_route(&dest);
                    let mut tls = match &route {
                        Ok(_) => self.tls_policies.for_destination(&dest, by_route),
                        Err(_) => DestTls::none(),
                    };
                    tls.ignore_failures = tls_optional;
                    (route, tls)
                })
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
                    report_domain: self.report_domain(env, &dest, &tls),
                    route,
                    key,
                    rcpts: vec![(i, path)],
                    tls,
                }),
            }
        }
        groups
    }

    /// RFC 8460: the policy domain to report `dest`'s TLS sessions for,
    /// when reporting is on: the recipient domain (A-label) of mail routed
    /// by MX; never for a static route (the operator's policy, not the
    /// domain's), and never for a report's own delivery (§5.3, see
    /// `tlsrpt::REPORT_CLIENT`).
    fn report_domain(&self, env: &Envelope, dest: &Host, tls: &DestTls) -> Option<String> {
        self.tls_reports.as_ref()?;
        if env.client == crate::tlsrpt::REPORT_CLIENT
            || tls.source == crate::tls_policy::Source::Route
        {
            return None;
        }
        let Host::Name(d) = dest else {
            return None;
        };
        idna::domain_to_ascii(d.as_str()).ok()
    }

    /// Counts one TLS session attempt of `report` (a success, or
    /// `failure`) for its domain's next report.
    fn report_tls(
        &self,
        report: Option<&tls_report::ReportTo>,
        failure: Option<crate::tlsrpt::counters::Failure>,
    ) {
        if let (Some(r), Some(reporter)) = (report, &self.tls_reports) {
            reporter.record(&r.domain, &r.policy, failure);
        }
    }

    /// Runs one attempt on message `id` for a caller without a scheduler
    /// (the foreground `queue flush`): when destinations are at their
    /// limit it waits, without holding the message, until one of them has
    /// a free slot (woken by its release), and tries again.
    pub fn attempt(&self, id: QueueId) -> Result<Outcome, SpoolError> {
        loop {
            match self.attempt_released(id)? {
                Attempted::Finished(o) => return Ok(o),
                Attempted::Wait(dests) => {
                    // a throttle lasts minutes: deferred until it ends
                    // rather than holding this flush that long
                    if let Some(until) = self.throttled_until(&dests) {
                        return Ok(Outcome::Retry(until));
                    }
                    self.limiter.wait_free(&dests);
                }
            }
        }
    }

    /// When every one of `dests` is backing off: the Unix time the last
    /// backoff ends.
    fn throttled_until(&self, dests: &[String]) -> Option<u64> {
        let throttled = self.limiter.throttled();
        dests
            .iter()
            .map(|d| {
                let (_, t) = throttled.iter().find(|(k, _)| k == d)?;
                Some(t.until_ms.div_ceil(1000))
            })
            .try_fold(0, |acc, t| Some(acc.max(t?)))
    }

    /// Runs one attempt on message `id`, released by the scheduler. A
    /// destination at its limit is skipped, not waited for: its
    /// recipients are left as they are and the answer is `Wait`.
    pub fn attempt_released(&self, id: QueueId) -> Result<Attempted, SpoolError> {
        let finished = |o| Ok(Attempted::Finished(o));
        let claim = match self.spool.claim(id)? {
            Claimed::Mine(c) => c,
            Claimed::Gone => return finished(Outcome::Gone),
            Claimed::Busy => {
                log::debug!("{id} busy (locked by another process), retry soon");
                return finished(Outcome::Retry(self.clock.now_unix() + 1));
            }
        };
        let Some(mut env) = claim.load()? else {
            return finished(Outcome::Gone);
        };
        let start = self.clock.now_unix();
        // `queue hold`: not now; a timed hold comes due by itself
        match env.hold {
            Some(Hold::Forever) => return finished(Outcome::Held),
            Some(h @ Hold::Until(t)) if h.active(start) => return finished(Outcome::Retry(t)),
            Some(Hold::Until(_)) => {
                env.hold = None;
            }
            None => {}
        }
        let (counted, waiting) = self.deliver_groups(&mut env, &claim)?;
        if !counted {
            if !waiting.is_empty() {
                // every destination is at its limit: nothing was tried and
                // nothing is written; the scheduler holds the message
                log::debug!("{id} waits for a slot: {}", waiting.join(" "));
                return Ok(Attempted::Wait(waiting));
            }
            // only bouncing recipients left: their DSN is this attempt
            env.attempts += 1;
        }

        let now = self.clock.now_unix();
        expire(&mut env, now, self.retry.lifetime);
        self.report_failures(&claim, &mut env, now)?;
        if env.is_done() {
            claim.finish()?;
            log::debug!("{id} removed (all recipients final)");
            return finished(Outcome::Done);
        }
        self.maybe_warn_delay(&claim, &mut env, now)?;
        if !waiting.is_empty() {
            // some destinations were tried, the rest wait for a slot; due
            // at once should the server restart before that
            env.next_try = now;
            claim.store(&env)?;
            return Ok(Attempted::Wait(waiting));
        }
        env.next_try = self.retry.next_try(env.attempts, now, start ^ id_salt(id));
        claim.store(&env)?;
        finished(Outcome::Retry(env.next_try))
    }

    /// Delivers every group whose destination has a free slot, counting
    /// the attempt at the first. Returns whether it was counted and the
    /// destinations that were at their limit (their groups untouched).
    fn deliver_groups(
        &self,
        env: &mut Envelope,
        claim: &Claim,
    ) -> Result<(bool, Vec<String>), SpoolError> {
        let mut waiting: Vec<String> = Vec::new();
        let mut counted = false;
        // RFC 8689 §4.1: the header is ignored when REQUIRETLS was given
        let tls_optional = !env.requiretls && tls_required_no(claim);
        let groups = self.groups(env, tls_optional);
        let last = groups.len().saturating_sub(1);
        let mut stored_at = std::time::Instant::now();
        for (k, group) in groups.into_iter().enumerate() {
            let key = limit_key(&group.route);
            let slot = match &key {
                Some(k) => match self.limiter.try_acquire(k, self.needs_connection(&group)) {
                    Ok(slot) => Some(slot),
                    Err(why) => {
                        log::trace!("{} {k}: not now ({why:?})", env.id);
                        if !waiting.contains(k) {
                            waiting.push(k.clone());
                        }
                        continue;
                    }
                },
                None => None,
            };
            if !counted {
                env.attempts += 1;
                counted = true;
            }
            let dest = key.as_deref().unwrap_or("-");
            let results = self.deliver_group(env, &group, claim, dest);
            if let Some(k) = &key {
                // before the slot is freed: no other worker may find the
                // destination free between its "later" and the backoff
                if self.note_throttling(env.id, k, &results) && !waiting.contains(k) {
                    // tried once; now it waits with the rest of its
                    // destination instead of its own retry delay
                    waiting.push(k.clone());
                }
            }
            drop(slot);
            self.record(claim, env, &group, results)?;
            // What this attempt did is stored once at its end (or the
            // message removed): a fan-out to ten domains is one rewrite,
            // not ten. An attempt that takes long (a slow hop) stores as
            // it goes, so a crash re-sends at most about a second's worth
            // of its deliveries: a duplicate, never a loss.
            if k < last && stored_at.elapsed() >= STORE_EVERY && !env.is_done() {
                claim.store(env)?;
                stored_at = std::time::Instant::now();
            }
        }
        Ok((counted, waiting))
    }

    /// Whether the group's transaction would open a new connection (no
    /// idle one to its first address): only then does it take a token of
    /// the destination's connection rate.
    fn needs_connection(&self, group: &Group) -> bool {
        let first = group
            .route
            .as_ref()
            .ok()
            .and_then(|hops| hops.first())
            .and_then(|h| Some(SocketAddr::new(*h.addrs.first()?, h.port)));
        first.is_none_or(|peer| !self.cache.has_idle(peer))
    }

    /// A throttling reply among `results` backs destination `key` off as a
    /// whole; a success ends its backoff. Keeps `SPOOL/throttled` in step
    /// for `queue list --summary`. Returns whether `key` is throttled now.
    fn note_throttling(&self, id: QueueId, key: &str, results: &[RcptResult]) -> bool {
        let throttled = results.iter().find(|r| outcome::is_throttling(&r.status));
        let changed = match throttled {
            Some(r) => {
                let t = self.limiter.throttle(key, r.status.response.to_string());
                log::warn!(
                    "{id} {key} throttles us ({}): backing off until {} (level {})",
                    r.status.response,
                    crate::time::iso8601(t.until_ms / 1000),
                    t.level
                );
                true
            }
            None => {
                let ok = results.iter().any(|r| r.status.class() == Class::Success);
                ok && self.limiter.clear_throttle(key)
            }
        };
        if changed {
            if let Err(e) = self.spool.write_throttled(&self.limiter.throttled()) {
                log::warn!("throttle state not saved: {e}");
            }
        }
        throttled.is_some()
    }

    /// Delivers one group; returns a result per recipient, in the
    /// group's order.
    fn deliver_group(
        &self,
        env: &Envelope,
        group: &Group,
        claim: &Claim,
        limit_key: &str,
    ) -> Vec<RcptResult> {
        let all = |relay: &str, status: Status| {
            let r = RcptResult {
                relay: relay.to_string(),
                status,
                dsn_passed: false,
            };
            vec![r; group.rcpts.len()]
        };
        let hops = match &group.route {
            Ok(h) => h,
            Err(e) => return all("-", route_status(e)),
        };
        let key = hops
            .first()
            .map(|h| h.name.to_lowercase())
            .unwrap_or_default();
        let paths: Vec<Path> = group.rcpts.iter().map(|(_, p)| p.clone()).collect();
        let rcpt_dsn: Vec<crate::smtp::RcptDsn> = group
            .rcpts
            .iter()
            .map(|(i, _)| env.rcpts[*i].dsn.clone())
            .collect();
        let mut last = HopsFailed::new(Status::local(
            LocalReason::NoUsableHop,
            451,
            Enhanced::new(4, 4, 4),
            format!("no usable next hop for {key}"),
        ));
        let msg = Outgoing {
            from: &env.from,
            rcpts: &paths,
            size: env.size,
            body: env.body,
            smtputf8: env.smtputf8,
            requiretls: env.requiretls,
            dsn: Some((&env.dsn, &rcpt_dsn)),
        };
        // RFC 5321 §5.1: try the hosts in order until one answers.
        for hop in hops {
            let (tls, dane) = match self.hop_policy(env, group, hop) {
                Ok(policy) => policy,
                Err(st) => {
                    last.note(st, &hop.name);
                    continue;
                }
            };
            let report =
                tls_report::ReportTo::new(group.report_domain.as_deref(), &group.tls, &dane);
            for addr in &hop.addrs {
                let peer = SocketAddr::new(*addr, hop.port);
                let label = relay_label(hop, peer);
                let target = Target {
                    hop,
                    peer,
                    label,
                    tls,
                    dane: &dane,
                    limit_key,
                    report: report.as_ref(),
                };
                match self.try_peer(env.id, &msg, claim, &target, &group.tls) {
                    Tried::Answered(results) => return results,
                    Tried::Final(st) => return all(&target.label, st),
                    Tried::Next(st) => last.note(st, &target.label),
                }
            }
        }
        all(&last.host, last.status)
    }

    /// The TLS mode to reach `hop` under the destination's policy, or why
    /// the hop may not be used: an MX outside an enforced MTA-STS policy
    /// (RFC 8461 §4.1, deferred 4.7.5: the policy or the MX may change),
    /// a bogus or failed DANE lookup (RFC 7672 §2.1, deferred 4.7.5),
    /// or a REQUIRETLS message to a hop whose name nothing authenticates
    /// (RFC 8689 §4.2.1, 5.7.30: retrying would not change that).
    fn hop_policy(
        &self,
        env: &Envelope,
        group: &Group,
        hop: &Hop,
    ) -> Result<(RouteTls, HopDane), Status> {
        let dest = &group.tls;
        let refuse = |enhanced: Enhanced, text: String| {
            let code = if enhanced.class == 5 { 550 } else { 451 };
            Err(Status::local(LocalReason::TlsPolicy, code, enhanced, text))
        };
        let dane = self.tls_policies.dane_hop(dest, hop);
        // RFC 8460 §4.3: a hop refused by policy is a failed session too
        let report_refusal = |result, why: &str| {
            let report = tls_report::ReportTo::new(group.report_domain.as_deref(), dest, &dane);
            let f = tls_report::failure(result, &hop.name, None, None, why);
            self.report_tls(report.as_ref(), Some(f));
        };
        match &dane {
            HopDane::Failed(why) => {
                // §4.3.2.1: no valid (DNSSEC-validated) records
                report_refusal(crate::tlsrpt::counters::ResultType::DnssecInvalid, why);
                return refuse(Enhanced::new(4, 7, 5), format!("DANE: {why}"));
            }
            HopDane::Usable { tlsa, .. } => log::info!(
                "{} tls-policy DANE: {} usable TLSA records for {}",
                env.id,
                tlsa.len(),
                hop.name
            ),
            HopDane::None => {}
        }
        // RFC 8461 §2: DANE, where it applies, is used instead of MTA-STS
        let mx = match dane {
            HopDane::Usable { .. } => MxVerdict::Allowed,
            _ => dest.mx(&hop.name, env.requiretls),
        };
        match mx {
            MxVerdict::Allowed => {}
            MxVerdict::WouldFail => log::info!(
                "{} tls-policy {dest}: MX {} is not in the policy; delivering anyway (policy not enforced)",
                env.id,
                hop.name
            ),
            MxVerdict::Refused if env.requiretls => {
                return refuse(
                    REQUIRETLS_FAILED,
                    format!("REQUIRETLS: MX {} is not in the MTA-STS policy", hop.name),
                )
            }
            MxVerdict::Refused => {
                // §4.3.1: no result type of its own for an MX outside
                // the policy; the general one, with our reason
                report_refusal(
                    crate::tlsrpt::counters::ResultType::ValidationFailure,
                    "MX not in the MTA-STS policy",
                );
                return refuse(
                    Enhanced::new(4, 7, 5),
                    format!("MTA-STS: MX {} is not in the policy ({dest})", hop.name),
                )
            }
        }
        if env.requiretls && !dest.authenticates(hop, &dane, self.tls.mode) {
            return refuse(
                REQUIRETLS_FAILED,
                format!(
                    "REQUIRETLS: the name of {} is not authenticated (no DANE, no MTA-STS policy, nor a route with tls = verify)",
                    hop.name
                ),
            );
        }
        let tls = dest.hop_tls(hop, &dane, self.tls.mode, env.requiretls);
        Ok((tls, dane))
    }

    /// One transaction with one address of a hop.
    fn try_peer(
        &self,
        id: QueueId,
        msg: &Outgoing,
        claim: &Claim,
        target: &Target,
        dest: &DestTls,
    ) -> Tried {
        // a cached connection whose peer closed it while idle fails its
        // RSET, the first reply `send` reads: then another one, cached or
        // new (each such one has left the cache, and a new one has no
        // RSET)
        loop {
            let (hop, peer, label) = (target.hop, target.peer, target.label.as_str());
            let (mut conn, key, fresh) = match self.connection(hop, peer, msg.from, target) {
                Ok(c) => c,
                Err(e) => {
                    log::debug!("{id} {label}: {e}");
                    if let ClientError::Rejected(Phase::StartTls | Phase::Tls, r) = &e {
                        let text = r.text();
                        let result = tls_report::classify(&text, target.tls == RouteTls::Dane);
                        let f =
                            tls_report::failure(result, &hop.name, Some(peer.ip()), None, &text);
                        self.report_tls(target.report, Some(f));
                    }
                    if let Some(st) = tls_failure(&e, msg.requiretls, dest, target.tls) {
                        log::info!("{id} relay={label} {st}");
                        return Tried::Next(st);
                    }
                    // a 5xx greeting is that host's answer; try others
                    return Tried::Next(error_status(&e, hop, peer));
                }
            };
            let would_fail = self.log_would_fail(id, &conn, target, dest, msg.requiretls);
            if fresh {
                self.report_session(&conn, target, dest, msg.requiretls, would_fail);
            }
            if let Some(st) = requiretls_unmet(msg.requiretls, &conn) {
                log::info!("{id} relay={label} {st}");
                let max = self.limiter.max_messages(target.limit_key);
                self.cache.put(conn, key, max);
                return Tried::Next(st);
            }
            // each try reads the body from its first octet; unbuffered: the
            // dot-stuffer reads it in 16 KiB pieces, and a BufReader over a
            // reader without `read_buf` zeroed its 64 KiB buffer per message
            let mut reader = claim.body();
            let result = conn.send(msg, &mut reader);
            if !fresh && result.as_ref().is_err_and(ClientError::is_failed_rset) {
                log::debug!("{id} {label}: cached connection no longer usable, another one");
                conn.quit();
                continue;
            }
            match &key.2 {
                // the user only, never the secret
                Some(user) => log::info!("{id} relay={label} tls={} auth={user}", conn.tls_label()),
                None => log::info!("{id} relay={label} tls={}", conn.tls_label()),
            }
            self.cache
                .put(conn, key, self.limiter.max_messages(target.limit_key));
            let name = remote_name(hop, peer);
            return match result {
                Ok(sent) => Tried::Answered(
                    sent.rcpt_replies
                        .iter()
                        .map(|rr| {
                            // the DATA reply speaks for every accepted
                            // recipient (RFC 5321 §4.1.1.4)
                            let reply = match (&sent.data_reply, rr.code().is_positive()) {
                                (Some(data), true) => data,
                                _ => rr,
                            };
                            RcptResult {
                                relay: label.to_string(),
                                status: Status::remote(reply, &name, peer),
                                dsn_passed: sent.dsn_passed,
                            }
                        })
                        .collect(),
                ),
                Err(e) => {
                    let st = error_status(&e, hop, peer);
                    let data_was_sent = matches!(
                        &e,
                        ClientError::Io(Phase::EndOfData, _)
                            | ClientError::Timeout(Phase::EndOfData)
                    );
                    // a permanent refusal, or a failure after the data went
                    // out, is final for this attempt
                    if st.class() == Class::Permanent || data_was_sent {
                        Tried::Final(st)
                    } else {
                        Tried::Next(st)
                    }
                }
            };
        }
    }

    /// RFC 8461 §5: a `testing` policy delivers as usual; what `enforce`
    /// would refuse (a certificate that does not verify for the MX name,
    /// no TLS at all) is reported, here logged.
    /// Returns what `enforce` would have refused, if anything.
    fn log_would_fail(
        &self,
        id: QueueId,
        conn: &Connection,
        target: &Target,
        dest: &DestTls,
        requiretls: bool,
    ) -> Option<String> {
        if dest.mode(requiretls) != Some(crate::mta_sts::Mode::Testing) {
            return None;
        }
        if let Err(why) = conn.would_verify(&self.tls, &target.hop.name) {
            log::info!(
                "{id} relay={} tls-policy {dest}: {why}; delivering anyway (policy not enforced)",
                target.label
            );
            return Some(why);
        }
        None
    }

    /// RFC 8460 §4.3/§4.4: a new connection's TLS session for the report:
    /// a success, or under a `testing` policy what `enforce` would have
    /// refused (an MX outside the policy, `would_fail`), or no TLS at all.
    fn report_session(
        &self,
        conn: &Connection,
        target: &Target,
        dest: &DestTls,
        requiretls: bool,
        would_fail: Option<String>,
    ) {
        let Some(report) = target.report else {
            return;
        };
        use crate::tlsrpt::counters::ResultType;
        let name = &target.hop.name;
        let fetch_failed = report.policy.kind == crate::tlsrpt::counters::PolicyType::Sts
            && report.policy.strings.is_empty();
        let why = if target.tls == RouteTls::Dane {
            None
        } else if let Some(e) = dest.sts_error.as_ref().filter(|_| fetch_failed) {
            Some((tls_report::sts_fetch_result(e), e.clone()))
        } else if dest.mx(name, requiretls) == MxVerdict::WouldFail {
            let why = "MX not in the MTA-STS policy".to_string();
            Some((ResultType::ValidationFailure, why))
        } else if let Some(why) = would_fail {
            Some((tls_report::classify(&why, false), why))
        } else if !conn.is_tls() {
            let why = "no TLS (STARTTLS not used)".to_string();
            Some((ResultType::StarttlsNotSupported, why))
        } else {
            None
        };
        let failure = why.map(|(result, why)| {
            let receiving = Some(target.peer.ip());
            tls_report::failure(result, name, receiving, conn.local_ip(), &why)
        });
        self.report_tls(Some(report), failure);
    }

    /// A connection to `peer` under the hop's policy (the route's TLS,
    /// else the global `--outbound-tls`, and its AUTH): a cached one
    /// opened under the same policy, or a new one; with its cache key.
    fn connection(
        &self,
        hop: &Hop,
        peer: SocketAddr,
        from: &crate::smtp::ReversePath,
        target: &Target,
    ) -> Result<(Connection, CacheKey, bool), ClientError> {
        let tls_policy = target.tls;
        let creds = match &hop.auth {
            Some(a) => Some(credentials(&self.secrets, a, from)?),
            None => None,
        };
        let key = (peer, tls_policy, creds.map(|c| c.user.clone()));
        while let Some(mut c) = self.cache.take(&key) {
            // the peer may have closed an idle connection: probe it (with
            // PIPELINING the probe's reply is read by `send`, `try_peer`)
            if c.reset().is_ok() {
                return Ok((c, key, false));
            }
            c.quit();
        }
        let tls = match tls_policy {
            RouteTls::None => None,
            RouteTls::Starttls(mode) if mode == self.tls.mode => Some((*self.tls).clone()),
            RouteTls::Starttls(mode) => Some(self.tls.with_mode(mode)),
            RouteTls::Implicit => Some(self.tls.with_mode(crate::tls::OutboundTls::Implicit)),
            RouteTls::Dane => Some(self.tls.with_dane(dane_config(target.dane)?)),
        };
        let policy = HopPolicy {
            tls: tls.as_ref(),
            // verify: the route's host name, never the address dialled
            server_name: &hop.name,
            auth: creds,
            auth_plaintext: hop.auth.as_ref().is_some_and(|a| a.plaintext),
        };
        // a connection attempt counts in the connection rate, answered or not
        self.limiter.connected(target.limit_key);
        let c = Connection::open_hop(peer, &self.hostname, self.timeouts, &policy)?;
        Ok((c, key, true))
    }
}

/// The credentials a hop's `auth` gives for a message from `from`: the
/// route's `auth = REF`, or under `sender-auth = yes` the sender's own
/// line, its domain's, then the fallback. None found: the attempt defers
/// with 454 4.7.0 (RFC 4954 §6), never sends without AUTH, see README
/// "Sender-dependent credentials".
fn credentials<'a>(
    secrets: &'a crate::secrets::Secrets,
    auth: &crate::route::RouteAuth,
    from: &crate::smtp::ReversePath,
) -> Result<&'a crate::secrets::Credentials, ClientError> {
    let found = if auth.by_sender {
        let sender = from.mailbox().map(|m| m.to_string());
        secrets.for_sender(sender.as_deref(), auth.user.as_deref())
    } else {
        auth.user.as_deref().and_then(|u| secrets.resolve(u))
    };
    found.ok_or_else(|| {
        let what = match (auth.by_sender, &auth.user) {
            (true, Some(u)) => format!("sender {from} (nor fallback {u})"),
            (true, None) => format!("sender {from}"),
            (false, u) => u.clone().unwrap_or_default(),
        };
        ClientError::Auth(crate::client::AuthError::NoCredentials(what))
    })
}

/// RFC 8689 §5: 5.7.30 "REQUIRETLS support required".
const REQUIRETLS_FAILED: Enhanced = Enhanced::new(5, 7, 30);

/// A TLS failure (STARTTLS missing, handshake or certificate refused)
/// that a policy makes something else than the usual deferral: for a
/// REQUIRETLS message a bounce (RFC 8689 §4.2.1, 5.7.30); under MTA-STS
/// enforce a 4.7.5 deferral naming the policy (RFC 8461 §5: never
/// delivered in the clear, never bounced at once); likewise for a DANE
/// hop (RFC 7672 §2.2: STARTTLS and a matching certificate mandatory).
fn tls_failure(
    e: &ClientError,
    requiretls: bool,
    dest: &DestTls,
    hop_tls: RouteTls,
) -> Option<Status> {
    let ClientError::Rejected(Phase::StartTls | Phase::Tls, r) = e else {
        return None;
    };
    if requiretls {
        return Some(Status::local(
            LocalReason::TlsPolicy,
            550,
            REQUIRETLS_FAILED,
            format!("REQUIRETLS: no verified TLS: {r}"),
        ));
    }
    if hop_tls == RouteTls::Dane {
        return Some(Status::local(
            LocalReason::TlsPolicy,
            451,
            Enhanced::new(4, 7, 5),
            format!("DANE: {r}"),
        ));
    }
    if dest.mode(false) == Some(crate::mta_sts::Mode::Enforce) {
        return Some(Status::local(
            LocalReason::TlsPolicy,
            451,
            Enhanced::new(4, 7, 5),
            format!("MTA-STS ({dest}): {r}"),
        ));
    }
    None
}

/// The TLS config that checks a DANE hop's certificate against its TLSA
/// records (RFC 7672 §3).
fn dane_config(dane: &HopDane) -> Result<std::sync::Arc<rustls::ClientConfig>, ClientError> {
    let refuse = |why: String| {
        ClientError::Rejected(
            Phase::StartTls,
            crate::smtp::Reply::new(454, Enhanced::new(4, 7, 5), format!("DANE: {why}")),
        )
    };
    let HopDane::Usable { tlsa, names } = dane else {
        return Err(refuse("no usable TLSA records".into()));
    };
    crate::dane::DaneVerifier::new(tlsa.clone(), names.clone())
        .config()
        .map_err(refuse)
}

/// RFC 8689 §4.2.1: the hop must be verified TLS and offer REQUIRETLS;
/// otherwise QUIT (here: the connection goes back to the cache unused)
/// and the next MX.
fn requiretls_unmet(requiretls: bool, conn: &Connection) -> Option<Status> {
    let why = match (conn.verified(), conn.extensions().requiretls) {
        _ if !requiretls => return None,
        (false, _) => "the next hop's certificate was not verified",
        (true, false) => "the next hop does not offer REQUIRETLS",
        (true, true) => return None,
    };
    Some(Status::local(
        LocalReason::TlsPolicy,
        550,
        REQUIRETLS_FAILED,
        format!("REQUIRETLS: {why}"),
    ))
}

/// RFC 8689 §4.1: the message carries `TLS-Required: No`. Read from the
/// stored header section; an unreadable body counts as without it.
fn tls_required_no(claim: &Claim) -> bool {
    let headers = crate::bounce::read_headers(claim.body()).unwrap_or_default();
    let text = String::from_utf8_lossy(&headers);
    let mut lines = text.split('\n').peekable();
    while let Some(line) = lines.next() {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        if !name.trim().eq_ignore_ascii_case("TLS-Required") {
            continue;
        }
        // unfold continuation lines (RFC 5322 §2.2.3)
        let mut value = value.to_string();
        while let Some(next) = lines.next_if(|l| l.starts_with([' ', '\t'])) {
            value.push_str(next);
        }
        if value.trim().eq_ignore_ascii_case("no") {
            return true;
        }
    }
    false
}

fn id_salt(id: QueueId) -> u64 {
    let s = id.to_string();
    u64::from_str_radix(&s, 16).unwrap_or(0)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::smtp::ReversePath;
    use crate::spool::DelayWarned;
    use crate::spool::Recipient;
    use crate::status::Source;
    use crate::time::ManualClock;
    use std::io::Write as _;
    use std::sync::Arc;

    /// Far from the real time, so a reading of the system clock shows.
    pub(crate) const T0: u64 = 1_000_000_000;

    pub(crate) fn temp_spool(tag: &str) -> Arc<Spool> {
        let dir = std::env::temp_dir().join(format!(
            "smtp-relay-delivery-test-{tag}-{}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        Arc::new(Spool::open(&dir).unwrap())
    }

    /// A loopback port nothing listens on: connecting is refused at once.
    fn closed_port() -> u16 {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    }

    /// Every recipient routed to a closed loopback port.
    fn deliverer(tag: &str, clock: Arc<ManualClock>, delay_warning: Option<Duration>) -> Deliverer {
        let route = crate::route::StaticRoute::parse(&format!("*=127.0.0.1:{}", closed_port()));
        Deliverer {
            spool: temp_spool(tag),
            router: Router::new(
                vec![route.unwrap()],
                None,
                25,
                vec!["relay.test".into()],
                vec![],
            ),
            hostname: "relay.test".into(),
            timeouts: Timeouts::default(),
            retry: RetryPolicy::default(),
            cache: ConnCache::new(Duration::from_secs(5)),
            limiter: DestLimiter::new(20),
            honor_source_routes: false,
            delay_warning,
            committed: None,
            tls: Arc::new(crate::tls::ClientTls::unverified(
                crate::tls::OutboundTls::May,
            )),
            secrets: Arc::default(),
            clock,
            postmaster: None,
            tls_reports: None,
            tls_policies: Default::default(),
        }
    }

    pub(crate) fn queue(spool: &Spool, arrived: u64, rcpts: &[&str]) -> QueueId {
        let mut inc = spool.incoming().unwrap();
        let id = inc.id();
        inc.write_all(b"Subject: x\r\n\r\nhi\r\n").unwrap();
        let env = Envelope {
            id,
            arrived,
            client: "127.0.0.1".into(),
            helo: "h".into(),
            auth: None,
            from: ReversePath::parse("<s@a.example>", false).unwrap(),
            size: 18,
            body: None,
            smtputf8: false,
            requiretls: false,
            attempts: 0,
            next_try: arrived,
            integrity: None,
            hold: None,
            dsn: Default::default(),
            rcpts: rcpts
                .iter()
                .map(|r| Recipient::new(Path::parse(r, false).unwrap(), Default::default()))
                .collect(),
            hold_reason: None,
            delay_warned: None,
        };
        inc.commit(&env).unwrap()
    }

    fn others(spool: &Spool, id: QueueId) -> Vec<Envelope> {
        let ids = spool.list_ids().unwrap();
        ids.into_iter()
            .filter(|i| *i != id)
            .map(|i| spool.load(i).unwrap())
            .collect()
    }

    /// A destination at its limit is not an attempt: the worker does not
    /// wait, the envelope is not touched, and the answer names the
    /// destination; with a slot free the same message is tried.
    /// RFC 8689 §4.2.1: a REQUIRETLS refusal of one hop bounces only
    /// when no other hop failed temporarily.
    #[test]
    fn a_policy_refusal_does_not_hide_a_temporary_failure() {
        let temp = || {
            Status::local(
                LocalReason::ConnectFailed,
                451,
                Enhanced::new(4, 4, 1),
                "down",
            )
        };
        let refused = || Status::local(LocalReason::TlsPolicy, 550, REQUIRETLS_FAILED, "no");
        for order in [[temp(), refused()], [refused(), temp()]] {
            let mut h = HopsFailed::new(temp());
            h.note(order[0].clone(), "a");
            h.note(order[1].clone(), "b");
            assert_eq!(h.status.class(), Class::Temporary, "{order:?}");
        }
        let mut h = HopsFailed::new(temp());
        h.note(refused(), "a");
        h.note(refused(), "b");
        assert_eq!((h.status.class(), h.host.as_str()), (Class::Permanent, "b"));
    }

    #[test]
    fn a_full_destination_is_not_an_attempt() {
        let clock = Arc::new(ManualClock::new(T0));
        let d = deliverer("full", clock, None);
        let id = queue(&d.spool, T0, &["<u@b.example>"]);
        let host = Path::parse("<u@b.example>", false)
            .unwrap()
            .mailbox()
            .host()
            .clone();
        let key = limit_key(&d.router.route(&host)).unwrap();
        let held: Vec<_> = (0..20)
            .map(|_| d.limiter.try_acquire(&key, true).unwrap())
            .collect();
        let before = std::fs::read(d.spool.env_path(id)).unwrap();
        let started = std::time::Instant::now();
        assert_eq!(d.attempt_released(id).unwrap(), Attempted::Wait(vec![key]));
        assert!(started.elapsed() < Duration::from_secs(1), "it waited");
        assert_eq!(std::fs::read(d.spool.env_path(id)).unwrap(), before);
        drop(held);
        assert!(matches!(
            d.attempt_released(id).unwrap(),
            Attempted::Finished(Outcome::Retry(_))
        ));
        assert_eq!(d.spool.load(id).unwrap().attempts, 1);
    }

    /// Backoff is read off the clock: first retry 5 min (±10%) later, the
    /// next twice that, with no real waiting.
    #[test]
    fn retry_backoff_follows_the_clock() {
        let clock = Arc::new(ManualClock::new(T0));
        let d = deliverer("backoff", clock.clone(), None);
        let id = queue(&d.spool, T0, &["<u@b.example>"]);
        let Outcome::Retry(t1) = d.attempt(id).unwrap() else {
            panic!("not deferred");
        };
        assert!((T0 + 270..=T0 + 330).contains(&t1), "{t1}");
        let env = d.spool.load(id).unwrap();
        assert_eq!(env.next_try, t1);
        assert_eq!(env.rcpts[0].state, RcptState::Deferred);
        let st = env.rcpts[0].last_reply.as_ref().unwrap();
        assert_eq!(st.source, Source::Local(LocalReason::ConnectFailed));
        clock.set(t1);
        let Outcome::Retry(t2) = d.attempt(id).unwrap() else {
            panic!("not deferred");
        };
        assert!((t1 + 540..=t1 + 660).contains(&t2), "{t2}");
        let env = d.spool.load(id).unwrap();
        assert_eq!((env.attempts, env.rcpts[0].tries.total), (2, 2));
        assert_eq!(env.rcpts[0].tries.last, t1);
    }

    /// RFC 5321 §4.5.4.1: at the queue lifetime the message bounces with
    /// 4.4.7 and leaves the queue; before it, it does not.
    #[test]
    fn expiry_follows_the_clock() {
        let clock = Arc::new(ManualClock::new(T0));
        let d = deliverer("expiry", clock.clone(), None);
        let id = queue(&d.spool, T0, &["<u@b.example>"]);
        assert!(matches!(d.attempt(id).unwrap(), Outcome::Retry(_)));
        clock.set(T0 + d.retry.lifetime.as_secs() - 1);
        assert!(matches!(d.attempt(id).unwrap(), Outcome::Retry(_)));
        assert!(others(&d.spool, id).is_empty(), "no DSN before expiry");
        clock.set(T0 + d.retry.lifetime.as_secs());
        assert_eq!(d.attempt(id).unwrap(), Outcome::Done);
        assert!(d.spool.load(id).is_err(), "expired message left the queue");
        let dsns = others(&d.spool, id);
        assert_eq!(dsns.len(), 1, "one DSN");
        assert!(dsns[0].from.is_null());
        assert_eq!(dsns[0].arrived, T0 + d.retry.lifetime.as_secs());
        let body = std::fs::read_to_string(d.spool.msg_path(dsns[0].id)).unwrap();
        assert!(
            body.contains("Action: failed\r\nStatus: 4.4.7\r\n"),
            "{body}"
        );
        assert!(
            body.contains("Diagnostic-Code: X-smtp-relay; 451 4.4.7 message expired after 5d"),
            "{body}"
        );
    }

    /// `--delay-warning`: one "delayed" DSN once the message is that old
    /// by the clock, recorded in the typed field, never a second.
    #[test]
    fn delay_warning_follows_the_clock_and_is_sent_once() {
        let clock = Arc::new(ManualClock::new(T0));
        let d = deliverer("delay", clock.clone(), Some(Duration::from_secs(3600)));
        let id = queue(&d.spool, T0, &["<u@b.example>"]);
        d.attempt(id).unwrap();
        assert!(others(&d.spool, id).is_empty());
        clock.set(T0 + 3600);
        d.attempt(id).unwrap();
        let dsns = others(&d.spool, id);
        assert_eq!(dsns.len(), 1, "one delay DSN");
        let env = d.spool.load(id).unwrap();
        assert_eq!(
            env.delay_warned,
            Some(DelayWarned {
                time: T0 + 3600,
                dsn: dsns[0].id
            })
        );
        clock.set(T0 + 7200);
        d.attempt(id).unwrap();
        assert_eq!(others(&d.spool, id).len(), 1, "still one");
    }
}
