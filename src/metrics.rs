//! Metrics (`--metrics ADDR:PORT`, README "Metrics"): process-wide
//! counters and gauges, updated by one-line calls at the points where
//! things happen, and a tiny blocking HTTP server on its own thread that
//! serves `GET /metrics` (OpenMetrics text, which Prometheus scrapes) and
//! `GET /healthz`.
//!
//! Every label has a bounded set of values (an enum here): no
//! per-recipient, per-domain or per-client labels. The one exception,
//! `deliveries_in_flight{destination}`, is bounded by the delivery
//! workers: a series exists only while a delivery to its destination
//! runs, and is removed when the last one ends.
//!
//! For new inbound checks: a refusal that goes out through the session's
//! reply writer is counted and logged there ([`reply`]), once. A check
//! of the filter stage (access rules, DNS lists, rate limits, the policy
//! service, recipient validation) hands the session a [`Refusal`] naming
//! its [`Reason`] and rule, which the writer puts on that one line; any
//! other refusal is classified by the reply's enhanced status code (RFC
//! 3463) in [`Reason::of`]. A refusal that never reaches a session (a
//! connection closed at accept) is [`conn_refused`].

use std::fmt::Write as _;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::LazyLock;
use std::time::Duration;

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use crate::smtp::Reply;

/// Defines a label enum: its variants, their label values, and the
/// one-label set `{NAME="value"}` holding it.
macro_rules! label {
    ($enum:ident, $set:ident, $label:ident, { $($v:ident => $s:literal),+ $(,)? }) => {
        #[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
        pub enum $enum { $($v),+ }
        impl $enum {
            pub const ALL: &'static [$enum] = &[$($enum::$v),+];
            pub fn as_str(self) -> &'static str {
                match self { $($enum::$v => $s),+ }
            }
        }
        impl EncodeLabelValue for $enum {
            fn encode(&self, e: &mut LabelValueEncoder) -> std::fmt::Result {
                e.write_str(self.as_str())
            }
        }
        #[allow(dead_code)] // Outcome and Dest go together in DeliverySet
        #[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
        struct $set { $label: $enum }
    };
}

label!(Reason, ReasonSet, reason, {
    RelayDenied => "relay_denied",
    Recipient => "recipient",
    Sender => "sender",
    Size => "size",
    Smuggling => "smuggling",
    Hops => "hops",
    AuthFailed => "auth_failed",
    AuthRequired => "auth_or_tls_required",
    Limit => "limit",
    Storage => "storage",
    Busy => "busy",
    Timeout => "timeout",
    Syntax => "syntax",
    Policy => "policy",
    Dnsbl => "dnsbl",
    RateLimit => "rate_limit",
    PolicyService => "policy_service",
    AccessRule => "access_rule",
    RecipientValidation => "recipient_validation",
    Authentication => "authentication",
    Milter => "milter",
    Other => "other",
});

label!(ConnReason, ConnReasonSet, reason, {
    PerIpLimit => "per_ip_limit",
    Busy => "busy",
    ShuttingDown => "shutting_down",
});

label!(Outcome, OutcomeSet, outcome, {
    Sent => "sent",
    Deferred => "deferred",
    Bounced => "bounced",
    Expired => "expired",
});

label!(Dest, DestSet, dest, {
    Route => "route",
    Mx => "mx",
    Literal => "literal",
    Unknown => "unknown",
});

label!(QueueState, QueueSet, state, {
    Pending => "pending",
    Deferred => "deferred",
    InFlight => "in_flight",
    Parked => "waiting_slot",
    Held => "held",
});

label!(ReloadResult, ReloadSet, result, {
    Ok => "ok",
    Failed => "failed",
});

label!(Dsn, DsnSet, kind, {
    Failure => "failure",
    Delay => "delay",
    Success => "success",
});

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DeliverySet {
    outcome: Outcome,
    dest: Dest,
}

impl Reason {
    /// Classifies a refusal by its enhanced status code (RFC 3463) and
    /// reply code; the replies are those of `smtp::reply`.
    pub fn of(reply: &Reply) -> Reason {
        let code = reply.code().value();
        let Some(e) = reply.enhanced() else {
            return Reason::Other;
        };
        match (e.subject, e.detail) {
            (7, 1) if code == 550 => Reason::RelayDenied,
            (7, 1) => Reason::Sender,
            (7, 8) | (7, 11) => Reason::AuthFailed,
            (7, 0) if code == 530 => Reason::AuthRequired,
            (7, 0) => Reason::Limit,
            (7, _) => Reason::Policy,
            (3, 4) => Reason::Size,
            (6, 11) => Reason::Smuggling,
            (4, 6) => Reason::Hops,
            (5, 3) => Reason::Limit,
            (3, 1) | (3, 0) => Reason::Storage,
            (3, 2) => Reason::Busy,
            (4, 2) => Reason::Timeout,
            (5, _) => Reason::Syntax,
            (1, 1) => Reason::Recipient,
            (1, _) => Reason::Sender,
            _ => Reason::Other,
        }
    }
}

struct Metrics {
    registry: Registry,
    conn_accepted: Counter,
    conn_refused: Family<ConnReasonSet, Counter>,
    sessions: Gauge,
    refused: Family<ReasonSet, Counter>,
    received: Counter,
    received_bytes: Counter,
    deliveries: Family<DeliverySet, Counter>,
    latency: Histogram,
    queue: Family<QueueSet, Gauge>,
    oldest: Gauge,
    spool_free: Gauge,
    attempts: Counter,
    retries: Counter,
    dsns: Family<DsnSet, Counter>,
    in_flight: Family<DestinationSet, Gauge>,
    reloads: Family<ReloadSet, Counter>,
    reload_ok: Gauge,
    reload_ok_at: Gauge,
}

/// `{destination="mx.example.net:25"}`: the scheduler's key of a
/// destination (its first next hop, or the route's name).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DestinationSet {
    destination: String,
}

static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);

impl Metrics {
    fn new() -> Metrics {
        let mut r = Registry::with_prefix("smtp_relay");
        let m = Metrics {
            conn_accepted: Counter::default(),
            conn_refused: Family::default(),
            sessions: Gauge::default(),
            refused: Family::default(),
            received: Counter::default(),
            received_bytes: Counter::default(),
            deliveries: Family::default(),
            // 1 s .. ~2.3 days
            latency: Histogram::new(exponential_buckets(1.0, 4.0, 10)),
            queue: Family::default(),
            oldest: Gauge::default(),
            spool_free: Gauge::default(),
            attempts: Counter::default(),
            retries: Counter::default(),
            dsns: Family::default(),
            in_flight: Family::default(),
            reloads: Family::default(),
            reload_ok: Gauge::default(),
            reload_ok_at: Gauge::default(),
            registry: Registry::default(),
        };
        // every label value shows from the start (0), so rate() and
        // alerts see a series before its first event
        for &reason in ConnReason::ALL {
            let _ = m.conn_refused.get_or_create(&ConnReasonSet { reason });
        }
        for &reason in Reason::ALL {
            let _ = m.refused.get_or_create(&ReasonSet { reason });
        }
        for &outcome in Outcome::ALL {
            for &dest in Dest::ALL {
                let _ = m.deliveries.get_or_create(&DeliverySet { outcome, dest });
            }
        }
        for &state in QueueState::ALL {
            let _ = m.queue.get_or_create(&QueueSet { state });
        }
        for &kind in Dsn::ALL {
            let _ = m.dsns.get_or_create(&DsnSet { kind });
        }
        for &result in ReloadResult::ALL {
            let _ = m.reloads.get_or_create(&ReloadSet { result });
        }
        let reg = |r: &mut Registry, name: &str, help: &str, metric: &dyn RegisterClone| {
            metric.register(r, name, help)
        };
        reg(
            &mut r,
            "connections_accepted",
            "Connections handed to a session",
            &m.conn_accepted,
        );
        reg(
            &mut r,
            "connections_refused",
            "Connections refused at accept, by reason",
            &m.conn_refused,
        );
        reg(
            &mut r,
            "sessions_active",
            "SMTP sessions in progress",
            &m.sessions,
        );
        reg(
            &mut r,
            "refused",
            "SMTP commands refused with a 4xx/5xx reply, by reason",
            &m.refused,
        );
        reg(
            &mut r,
            "messages_received",
            "Messages accepted (250 after DATA/BDAT) and queued",
            &m.received,
        );
        reg(
            &mut r,
            "received_bytes",
            "Octets of the messages accepted",
            &m.received_bytes,
        );
        reg(
            &mut r,
            "deliveries",
            "Recipient delivery results, by outcome and destination class",
            &m.deliveries,
        );
        reg(
            &mut r,
            "delivery_seconds",
            "Queue arrival to final result (sent, bounced, expired) per recipient",
            &m.latency,
        );
        reg(
            &mut r,
            "queue_messages",
            "Messages the scheduler knows, by state",
            &m.queue,
        );
        reg(
            &mut r,
            "queue_oldest_seconds",
            "Age of the oldest message the scheduler knows",
            &m.oldest,
        );
        reg(
            &mut r,
            "spool_free_bytes",
            "Free space of the spool's filesystem for us",
            &m.spool_free,
        );
        reg(
            &mut r,
            "delivery_attempts",
            "Delivery attempts (one message, all its due recipients)",
            &m.attempts,
        );
        reg(
            &mut r,
            "retries",
            "Attempts that left recipients deferred for a later retry",
            &m.retries,
        );
        reg(&mut r, "dsns", "DSNs queued, by kind", &m.dsns);
        reg(
            &mut r,
            "deliveries_in_flight",
            "Deliveries running now, by destination (only busy destinations)",
            &m.in_flight,
        );
        // the names Prometheus uses for its own configuration
        // (prometheus_config_last_reload_*)
        reg(
            &mut r,
            "config_reloads",
            "SIGHUP reloads, by result (failed: refused, the running configuration stays)",
            &m.reloads,
        );
        reg(
            &mut r,
            "config_last_reload_successful",
            "1 when the last reload (or the start) loaded the configuration, 0 when it was refused",
            &m.reload_ok,
        );
        reg(
            &mut r,
            "config_last_reload_success_timestamp_seconds",
            "Unix time the running configuration was loaded (start or the last reload taken)",
            &m.reload_ok_at,
        );
        Metrics { registry: r, ..m }
    }
}

/// Registers a clone of a metric (metrics are shared handles).
trait RegisterClone {
    fn register(&self, r: &mut Registry, name: &str, help: &str);
}

impl<M: prometheus_client::registry::Metric + Clone> RegisterClone for M {
    fn register(&self, r: &mut Registry, name: &str, help: &str) {
        r.register(name, help, self.clone());
    }
}

/// A connection handed to a session.
pub fn conn_accepted() {
    METRICS.conn_accepted.inc();
}

/// A connection refused before any session with `reply` (written by the
/// caller, or not on an implicit-TLS listener): logged and counted.
pub fn conn_refused(peer: &SocketAddr, reason: ConnReason, reply: &Reply) {
    log::warn!(
        "{peer} rejected reason={} reply={:?}",
        reason.as_str(),
        reply.to_string()
    );
    METRICS
        .conn_refused
        .get_or_create(&ConnReasonSet { reason })
        .inc();
}

/// A command refused for `reason`; for checks that answer outside the
/// session's reply writer (the writer counts its own, see [`reply`]).
pub fn refused(reason: Reason) {
    METRICS.refused.get_or_create(&ReasonSet { reason }).inc();
}

/// A refusal by a rule of the filter stage, handed to the reply writer
/// with the reply it decided, so that the refusal is one log line with
/// the client, the reason, the rule and the reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub reason: Reason,
    /// The session stage (`connect`, `helo`, `mail`, `rcpt`), for access
    /// rules.
    pub stage: Option<&'static str>,
    /// The rule as an operator finds it (file line and text, list zone,
    /// policy service and its action, rate and key).
    pub rule: String,
    pub reply: Reply,
}

/// Every reply a session writes passes here: a 4xx/5xx reply is a
/// refusal, logged at INFO with the client address and counted; when it
/// is the reply of `refusal`, under its reason and with its rule.
pub fn reply(peer: &SocketAddr, reply: &Reply, refusal: Option<Refusal>) {
    let code = reply.code();
    if !(code.is_transient() || code.is_permanent()) {
        return;
    }
    let line = match refusal.filter(|r| r.reply == *reply) {
        Some(r) => {
            let stage = r.stage.map(|s| format!(" stage={s}")).unwrap_or_default();
            let rule = crate::smtp::escape(&r.rule).replace('"', "'");
            (r.reason, format!("{stage} rule=\"{rule}\""))
        }
        None => (Reason::of(reply), String::new()),
    };
    let (reason, rule) = line;
    log::info!(
        "{peer} refused reason={}{rule} reply={:?}",
        reason.as_str(),
        reply.to_string()
    );
    refused(reason);
}

/// Counts a session while the guard lives.
pub struct SessionGuard(());

pub fn session() -> SessionGuard {
    METRICS.sessions.inc();
    SessionGuard(())
}

impl Drop for SessionGuard {
    fn drop(&mut self) {
        METRICS.sessions.dec();
    }
}

/// A message accepted and queued, of `size` octets.
pub fn received(size: u64) {
    METRICS.received.inc();
    METRICS.received_bytes.inc_by(size);
}

/// One recipient's result; `age` seconds since the message arrived
/// (observed in the latency histogram for final results).
pub fn delivery(outcome: Outcome, dest: Dest, age: u64) {
    METRICS
        .deliveries
        .get_or_create(&DeliverySet { outcome, dest })
        .inc();
    if outcome != Outcome::Deferred {
        METRICS.latency.observe(age as f64);
    }
}

pub fn attempt() {
    METRICS.attempts.inc();
}

pub fn retry() {
    METRICS.retries.inc();
}

pub fn dsn(kind: Dsn) {
    METRICS.dsns.get_or_create(&DsnSet { kind }).inc();
}

/// Deliveries running now to `destination` (the per-destination slots
/// of `shaping.rs`); at 0 the series goes, so the label set stays as
/// small as the set of busy destinations.
pub fn in_flight(destination: &str, n: usize) {
    let set = DestinationSet {
        destination: destination.to_string(),
    };
    if n == 0 {
        METRICS.in_flight.remove(&set);
    } else {
        METRICS
            .in_flight
            .get_or_create(&set)
            .set(i64::try_from(n).unwrap_or(i64::MAX));
    }
}

/// The scheduler's view of the queue (set each tick): messages per
/// state, and the arrival time (Unix seconds) of the oldest, if any.
pub fn queue(counts: &[(QueueState, usize)], oldest: Option<u64>, now: u64) {
    for &(state, n) in counts {
        METRICS
            .queue
            .get_or_create(&QueueSet { state })
            .set(i64::try_from(n).unwrap_or(i64::MAX));
    }
    let age = oldest.map_or(0, |t| now.saturating_sub(t));
    METRICS.oldest.set(i64::try_from(age).unwrap_or(i64::MAX));
}

/// The configuration loaded at `now` (Unix seconds): at the start
/// (`reload` None, nothing counted) or by a SIGHUP reload, taken
/// (`Some(true)`) or refused (`Some(false)`: the running one stays, its
/// time too).
pub fn config_loaded(reload: Option<bool>, now: u64) {
    let ok = reload.unwrap_or(true);
    if let Some(taken) = reload {
        let result = if taken {
            ReloadResult::Ok
        } else {
            ReloadResult::Failed
        };
        METRICS.reloads.get_or_create(&ReloadSet { result }).inc();
    }
    METRICS.reload_ok.set(i64::from(ok));
    if ok {
        METRICS
            .reload_ok_at
            .set(i64::try_from(now).unwrap_or(i64::MAX));
    }
}

/// Whether the SMTP listeners are accepting (`/healthz`).
static LISTENING: AtomicBool = AtomicBool::new(false);

pub fn set_listening(on: bool) {
    LISTENING.store(on, Ordering::SeqCst);
}

/// The OpenMetrics text of every metric now.
pub fn render(spool: &std::path::Path) -> String {
    if let Ok(f) = crate::sys::free_space(spool) {
        METRICS
            .spool_free
            .set(i64::try_from(f.bytes).unwrap_or(i64::MAX));
    }
    let mut out = String::new();
    if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &METRICS.registry) {
        let _ = writeln!(out, "# encoding failed: {e}");
    }
    out
}

/// OpenMetrics text turned into the Prometheus text format 0.0.4, for
/// scrapers that do not ask for OpenMetrics (`promtool check metrics`,
/// curl): a counter family is named with its `_total` suffix, and the
/// `# EOF` and `# UNIT` lines go.
pub fn prometheus_text(openmetrics: &str) -> String {
    let counters: std::collections::HashSet<&str> = openmetrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(openmetrics.len());
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let meta = ["# HELP ", "# TYPE "]
            .iter()
            .find_map(|p| line.strip_prefix(p).map(|rest| (p, rest)));
        match meta {
            Some((p, rest)) => {
                let (name, tail) = rest.split_once(' ').unwrap_or((rest, ""));
                if counters.contains(name) {
                    let _ = writeln!(out, "{p}{name}_total {tail}");
                } else {
                    let _ = writeln!(out, "{line}");
                }
            }
            None => {
                let _ = writeln!(out, "{line}");
            }
        }
    }
    out
}

/// `/healthz`: `None` healthy, else why not. The spool's `tmp/` must take
/// a new file (created and removed; a new message goes there when no
/// reused file is ready in `free/`; one left by a crash is cleaned with
/// the rest of `tmp/` at the next start).
pub fn health(spool: &std::path::Path) -> Option<String> {
    if !LISTENING.load(Ordering::SeqCst) {
        return Some("listeners not running".into());
    }
    static PROBE: AtomicU64 = AtomicU64::new(0);
    let n = PROBE.fetch_add(1, Ordering::Relaxed);
    let probe = spool
        .join("tmp")
        .join(format!(".healthz-{}-{n}", std::process::id()));
    match std::fs::File::create(&probe) {
        Ok(_) => {
            let _ = std::fs::remove_file(&probe);
            None
        }
        Err(e) => Some(format!("spool not writable: {e}")),
    }
}

/// Longest request head read, and the deadline for one request.
const MAX_REQUEST: u64 = 8 * 1024;
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// Binds `addr` and serves `/metrics` and `/healthz` on a thread of its
/// own, one request at a time (a scraper is one client every few
/// seconds). Returns the bound address.
pub fn serve(addr: SocketAddr, spool: PathBuf) -> io::Result<SocketAddr> {
    let listener = TcpListener::bind(addr)?;
    let local = listener.local_addr()?;
    std::thread::Builder::new()
        .name("metrics".into())
        .spawn(move || {
            for conn in listener.incoming() {
                match conn {
                    Ok(s) => {
                        if let Err(e) = answer(s, &spool) {
                            log::debug!("metrics request: {e}");
                        }
                    }
                    Err(e) => {
                        log::warn!("metrics accept failed: {e}");
                        std::thread::sleep(Duration::from_millis(100));
                    }
                }
            }
        })?;
    Ok(local)
}

/// One HTTP/1.0-style exchange (RFC 9112): the request line and headers
/// (at most [`MAX_REQUEST`] octets), one response, close.
fn answer(stream: TcpStream, spool: &std::path::Path) -> io::Result<()> {
    stream.set_read_timeout(Some(REQUEST_TIMEOUT))?;
    stream.set_write_timeout(Some(REQUEST_TIMEOUT))?;
    let mut reader = BufReader::new((&stream).take(MAX_REQUEST));
    let mut request = String::new();
    reader.read_line(&mut request)?;
    // the headers, up to the blank line: only Accept matters
    let mut openmetrics = false;
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h)? == 0 || h == "\r\n" || h == "\n" {
            break;
        }
        let h = h.to_ascii_lowercase();
        if h.starts_with("accept:") && h.contains("application/openmetrics-text") {
            openmetrics = true;
        }
    }
    let mut parts = request.split_whitespace();
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let path = target.split('?').next().unwrap_or("");
    let (status, ctype, body) = match (method, path) {
        ("GET" | "HEAD", "/metrics") if openmetrics => (
            "200 OK",
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            render(spool),
        ),
        ("GET" | "HEAD", "/metrics") => (
            "200 OK",
            "text/plain; version=0.0.4; charset=utf-8",
            prometheus_text(&render(spool)),
        ),
        ("GET" | "HEAD", "/healthz") => match health(spool) {
            None => ("200 OK", "text/plain; charset=utf-8", "ok\n".to_string()),
            Some(why) => (
                "503 Service Unavailable",
                "text/plain; charset=utf-8",
                format!("{why}\n"),
            ),
        },
        ("GET" | "HEAD", _) => ("404 Not Found", "text/plain", "not found\n".into()),
        _ => ("405 Method Not Allowed", "text/plain", "GET only\n".into()),
    };
    let mut out = io::BufWriter::new(&stream);
    write!(
        out,
        "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )?;
    if method != "HEAD" {
        out.write_all(body.as_bytes())?;
    }
    out.flush()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::smtp::reply::Enhanced;

    #[test]
    fn reasons_of_the_session_replies() {
        assert_eq!(Reason::of(&Reply::relay_denied()), Reason::RelayDenied);
        assert_eq!(Reason::of(&Reply::too_big(10)), Reason::Size);
        assert_eq!(Reason::of(&Reply::bare_line_ending()), Reason::Smuggling);
        assert_eq!(Reason::of(&Reply::auth_failed()), Reason::AuthFailed);
        assert_eq!(Reason::of(&Reply::too_many_recipients()), Reason::Limit);
        assert_eq!(Reason::of(&Reply::auth_locked_out()), Reason::Limit);
        assert_eq!(Reason::of(&Reply::must_starttls()), Reason::AuthRequired);
        assert_eq!(
            Reason::of(&Reply::new(550, Enhanced::new(5, 1, 1), "no")),
            Reason::Recipient
        );
    }

    #[test]
    fn every_label_value_is_exposed_at_zero() {
        let text = render(std::path::Path::new("/"));
        for r in Reason::ALL {
            assert!(
                text.contains(&format!(
                    "smtp_relay_refused_total{{reason=\"{}\"}}",
                    r.as_str()
                )),
                "{r:?} missing in\n{text}"
            );
        }
        assert!(text.ends_with("# EOF\n"));
    }
}
