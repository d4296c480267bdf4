//! SMTP TLS reporting (RFC 8460): what became of our TLS sessions to
//! each recipient domain that asks (an `_smtp._tls` TXT record, §3), sent
//! to it once a day as an aggregate report (§4) by mail (§5.3).
//!
//! `record.rs` the TXT record, `counters.rs` the counts and their file
//! form, `report.rs` the JSON, gzip and message. [`Reporter`] ties them:
//! - delivery calls [`Reporter::record`] once per TLS session attempt
//!   (`delivery/tls_report.rs` decides the policy and the result type);
//!   domains without a valid record are not counted (the answer is
//!   cached for an hour, so DNS is asked once per domain and hour);
//! - counts live in memory, bounded ([`MAX_DOMAINS`] per period,
//!   `counters::MAX_POLICIES`, `counters::MAX_DETAILS`), and the changed
//!   ones are written every [`FLUSH_EVERY`] to `SPOOL/tlsrpt/START/DOMAIN`
//!   (write and rename, no fsync: statistics, not acknowledged mail; a
//!   crash loses the last seconds' counts, a restart reads the files
//!   back and loses nothing, as the last flush runs at shutdown);
//! - after a period (a UTC day) ends, plus a delay, each domain's report
//!   is queued in the spool like any message (retries, durability) to
//!   the `mailto:` URIs its record names then, and its file removed.
//!   Queued before removed: a crash in between sends it twice, with the
//!   same `report-id`. `https:` URIs are logged and skipped.
//!
//! Nothing here can cost a message: every failure is logged, and the
//! delivery that recorded goes on.

pub mod counters;
pub mod record;
pub mod report;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use crate::dns::{Dns, DnsError};
use crate::smtp::{Path as MailPath, ReversePath};
use crate::spool::{Envelope, QueueId, Recipient, Spool, SpoolError};
use crate::time::Clock;
use counters::{DomainCounts, Failure, PolicyKey};
pub use record::Record;
pub use report::Submitter;

/// The envelope `client` of a queued report: its own delivery is not
/// counted in the next report (RFC 8460 §5.3: a report's SMTP session
/// "SHOULD NOT [be included] in the next report"), so reports never
/// breed reports.
pub const REPORT_CLIENT: &str = "local-tls-report";
/// At most this many domains are counted per period; more are logged
/// once and not counted (memory stays bounded whatever the traffic).
pub const MAX_DOMAINS: usize = 10_000;
/// How often changed counts are written to the spool.
pub const FLUSH_EVERY: Duration = Duration::from_secs(5);
/// How long the answer "does DOMAIN want reports" is kept.
const RECORD_TTL: u64 = 3600;

/// `--tls-reports` settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    pub submitter: Submitter,
    /// The envelope sender and From of the reports.
    pub from: MailPath,
    /// Seconds per report: 86400 (§4.1: a UTC day); tests shorten it.
    pub period: u64,
}

impl Settings {
    /// §4.1 leaves the send time to the sender; shortly after the period
    /// (5 minutes after UTC midnight), so late sessions of the day are in.
    fn delay(&self) -> u64 {
        (self.period / 10).min(300)
    }
}

#[derive(Default)]
struct State {
    /// Period start → domain → counts.
    periods: BTreeMap<u64, HashMap<String, DomainCounts>>,
    dirty: HashSet<(u64, String)>,
    /// Period whose [`MAX_DOMAINS`] overflow was logged.
    overflow_logged: Option<u64>,
}

/// The TLS reporter, shared by every delivery thread and generation.
pub struct Reporter {
    dir: PathBuf,
    dns: Dns,
    settings: Settings,
    clock: Arc<dyn Clock>,
    dkim: Option<Arc<crate::dkim::Signer>>,
    state: Mutex<State>,
    /// Domain → (until, whether it has a valid record).
    wants: Mutex<HashMap<String, (u64, bool)>>,
}

impl std::fmt::Debug for Reporter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reporter")
            .field("dir", &self.dir)
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl Reporter {
    /// The reporter on `SPOOL/tlsrpt`, with the counts a previous run left.
    pub fn open(
        spool_root: &Path,
        dns: Dns,
        settings: Settings,
        clock: Arc<dyn Clock>,
        dkim: Option<Arc<crate::dkim::Signer>>,
    ) -> Reporter {
        let dir = spool_root.join("tlsrpt");
        let state = State {
            periods: load(&dir),
            ..State::default()
        };
        let kept: usize = state.periods.values().map(HashMap::len).sum();
        if kept > 0 {
            log::info!(
                "tls-report: {kept} domain report(s) in progress read from {}",
                dir.display()
            );
        }
        Reporter {
            dir,
            dns,
            settings,
            clock,
            dkim,
            state: Mutex::new(state),
            wants: Mutex::default(),
        }
    }

    /// The domain's `_smtp._tls` record now, from DNS (§3).
    pub fn lookup(&self, domain: &str) -> Result<Record, String> {
        lookup(&self.dns, domain)
    }

    /// Whether `domain` asks for reports (cached, module doc).
    fn wanted(&self, domain: &str, now: u64) -> bool {
        if let Some(&(until, yes)) = lock(&self.wants).get(domain) {
            if until > now {
                return yes;
            }
        }
        let yes = match self.lookup(domain) {
            Ok(_) => true,
            Err(why) => {
                log::debug!("tls-report {domain}: not reported: {why}");
                false
            }
        };
        let mut wants = lock(&self.wants);
        if wants.len() >= MAX_DOMAINS {
            wants.clear();
        }
        let ttl = RECORD_TTL.min(self.settings.period);
        wants.insert(domain.to_string(), (now + ttl, yes));
        yes
    }

    /// Counts one TLS session attempt to `domain` (the A-label policy
    /// domain) under `policy`: a success, or `failure`.
    pub fn record(&self, domain: &str, policy: &PolicyKey, failure: Option<Failure>) {
        let now = self.clock.now_unix();
        let domain = domain.to_ascii_lowercase();
        if !self.wanted(&domain, now) {
            return;
        }
        let start = now - now % self.settings.period;
        let mut st = lock(&self.state);
        let st = &mut *st;
        let period = st.periods.entry(start).or_default();
        if !period.contains_key(&domain) && period.len() >= MAX_DOMAINS {
            if st.overflow_logged != Some(start) {
                log::warn!("tls-report: more than {MAX_DOMAINS} domains this period; {domain} and further ones are not counted");
                st.overflow_logged = Some(start);
            }
            return;
        }
        if period
            .entry(domain.clone())
            .or_default()
            .count(policy, failure)
        {
            st.dirty.insert((start, domain));
        }
    }

    /// Writes the changed counts (module doc: no fsync). A failure is
    /// logged; the counts stay in memory and dirty.
    pub fn flush(&self) {
        let texts: Vec<((u64, String), String)> = {
            let mut st = lock(&self.state);
            let dirty: Vec<(u64, String)> = st.dirty.drain().collect();
            dirty
                .into_iter()
                .filter_map(|k| {
                    let text = st.periods.get(&k.0)?.get(&k.1)?.to_text();
                    Some((k, text))
                })
                .collect()
        };
        for ((start, domain), text) in texts {
            if let Err(e) = self.write(start, &domain, &text) {
                log::warn!("tls-report {domain}: cannot write the counts: {e}");
                lock(&self.state).dirty.insert((start, domain));
            }
        }
    }

    fn write(&self, start: u64, domain: &str, text: &str) -> std::io::Result<()> {
        let dir = self.dir.join(start.to_string());
        std::fs::create_dir_all(&dir)?;
        let tmp = dir.join(format!(".{domain}.tmp"));
        std::fs::write(&tmp, text)?;
        std::fs::rename(&tmp, dir.join(domain))
    }

    /// Queues the reports of every period that is over (plus the delay);
    /// a domain whose report is queued, or that has no valid record now,
    /// is forgotten; one whose report could not be queued is tried again
    /// at the next call.
    pub fn send_due(&self, spool: &Spool, committed: Option<&crossbeam_channel::Sender<QueueId>>) {
        let now = self.clock.now_unix();
        let due: Vec<(u64, Vec<(String, DomainCounts)>)> = {
            let st = lock(&self.state);
            st.periods
                .iter()
                .filter(|(start, _)| **start + self.settings.period + self.settings.delay() <= now)
                .map(|(s, d)| (*s, d.iter().map(|(k, v)| (k.clone(), v.clone())).collect()))
                .collect()
        };
        for (start, domains) in due {
            for (domain, counts) in domains {
                let r = report::Report {
                    domain: &domain,
                    start,
                    end: start + self.settings.period,
                    counts: &counts,
                };
                match self.send(&r, spool, now) {
                    Ok(Some(id)) => {
                        if let Some(tx) = committed {
                            let _ = tx.try_send(id);
                        }
                    }
                    Ok(None) => {}
                    Err(e) => {
                        log::warn!(
                            "tls-report {domain}: cannot queue the report: {e}; tried again later"
                        );
                        continue;
                    }
                }
                self.forget(start, &domain);
            }
        }
    }

    /// Removes a reported domain's counts, in memory and on disk.
    fn forget(&self, start: u64, domain: &str) {
        let mut st = lock(&self.state);
        st.dirty.remove(&(start, domain.to_string()));
        if let Some(p) = st.periods.get_mut(&start) {
            p.remove(domain);
            if p.is_empty() {
                st.periods.remove(&start);
            }
        }
        let dir = self.dir.join(start.to_string());
        if let Err(e) = std::fs::remove_file(dir.join(domain)) {
            if e.kind() != std::io::ErrorKind::NotFound {
                log::warn!("tls-report {domain}: cannot remove {}: {e}", dir.display());
            }
        }
        // the period's folder goes once empty (fails while it is not)
        let _ = std::fs::remove_dir(&dir);
    }

    /// Queues one report to the `mailto:` URIs of the domain's record.
    /// `Ok(None)`: nothing to send (no valid record, no mailto URI).
    fn send(
        &self,
        r: &report::Report,
        spool: &Spool,
        now: u64,
    ) -> Result<Option<QueueId>, SpoolError> {
        let domain = r.domain;
        let rec = match self.lookup(domain) {
            Ok(rec) => rec,
            Err(why) => {
                log::info!("tls-report {domain}: report dropped: {why}");
                return Ok(None);
            }
        };
        for uri in &rec.rua {
            if let record::Rua::Https(u) = uri {
                log::info!("tls-report {domain}: rua {u} skipped: https reporting is not supported (mailto only)");
            }
        }
        let to: Vec<MailPath> = rec.mailto().into_iter().cloned().collect();
        if to.is_empty() {
            log::info!("tls-report {domain}: report dropped: no mailto: rua");
            return Ok(None);
        }
        let s = &self.settings.submitter;
        let names: Vec<String> = to.iter().map(|p| p.to_string()).collect();
        let mut body = r
            .message(s, &names, now)
            .map_err(|e| SpoolError::io(spool.tmp_dir(), e))?;
        self.sign(&mut body, domain);
        let id = queue(spool, &self.settings, &to, &body, now)?;
        log::info!(
            "tls-report {domain}: report {} queued as {id} to {}",
            r.id(s),
            names.join(",")
        );
        Ok(Some(id))
    }

    /// §5.3: reports "MUST contain a valid DKIM signature by the
    /// reporting domain": signed with `--dkim-key` when one covers the
    /// From domain (else sent unsigned, logged).
    fn sign(&self, body: &mut Vec<u8>, domain: &str) {
        let from_domain = self.settings.from.mailbox().host().to_string();
        let signed = self.dkim.as_ref().map(|d| d.sign(body, Some(&from_domain)));
        match signed {
            Some(Ok(Some(fields))) => {
                let mut out = fields;
                out.extend_from_slice(body);
                *body = out;
            }
            Some(Err(why)) => log::warn!("tls-report {domain}: not DKIM-signed: {why}"),
            _ => {
                log::info!("tls-report {domain}: not DKIM-signed: no --dkim-key for {from_domain}")
            }
        }
    }

    /// The thread that flushes every [`FLUSH_EVERY`] (or faster for a
    /// short test period) and sends what is due; flushes once more when
    /// stopped.
    pub fn start(
        self: Arc<Self>,
        spool: Arc<Spool>,
        committed: Option<crossbeam_channel::Sender<QueueId>>,
    ) -> std::io::Result<ReporterThread> {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let tick = FLUSH_EVERY.min(Duration::from_secs((self.settings.period / 10).max(1)));
        let me = self.clone();
        let handle = thread::Builder::new()
            .name("tls-report".into())
            .spawn(move || {
                let mut waited = Duration::ZERO;
                while !flag.load(Ordering::Relaxed) {
                    thread::sleep(Duration::from_millis(100));
                    waited += Duration::from_millis(100);
                    if waited >= tick {
                        waited = Duration::ZERO;
                        me.flush();
                        me.send_due(&spool, committed.as_ref());
                    }
                }
                me.flush();
            })?;
        Ok(ReporterThread {
            stop,
            handle: Some(handle),
        })
    }
}

/// The running reporter thread; [`ReporterThread::stop`] at shutdown.
pub struct ReporterThread {
    stop: Arc<AtomicBool>,
    handle: Option<thread::JoinHandle<()>>,
}

impl ReporterThread {
    /// Stops the thread after its last flush.
    pub fn stop(mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

/// `domain`'s `_smtp._tls` record (RFC 8460 §3), or why it has none
/// that counts.
pub fn lookup(dns: &Dns, domain: &str) -> Result<Record, String> {
    match dns.txt(&format!("_smtp._tls.{domain}")) {
        Ok(txt) => record::from_txt(&txt),
        Err(DnsError::NoRecords | DnsError::NxDomain) => Err("no _smtp._tls record".into()),
        Err(e) => Err(format!("_smtp._tls lookup: {e}")),
    }
}

/// Puts the report in the spool as a message from `--tls-report-from`.
fn queue(
    spool: &Spool,
    settings: &Settings,
    to: &[MailPath],
    body: &[u8],
    now: u64,
) -> Result<QueueId, SpoolError> {
    let mut incoming = spool.incoming()?;
    let id = incoming.id();
    incoming
        .write_all(body)
        .map_err(|e| SpoolError::io(spool.tmp_dir(), e))?;
    let env = Envelope {
        id,
        arrived: now,
        client: REPORT_CLIENT.into(),
        helo: settings.submitter.hostname.clone(),
        auth: None,
        from: ReversePath::Path(settings.from.clone()),
        size: body.len() as u64,
        body: None,
        smtputf8: to.iter().any(|p| p.mailbox().is_utf8()),
        requiretls: false,
        attempts: 0,
        next_try: now,
        integrity: None,
        hold: None,
        hold_reason: None,
        dsn: Default::default(),
        rcpts: to
            .iter()
            .map(|p| Recipient::new(p.clone(), Default::default()))
            .collect(),
        delay_warned: None,
    };
    incoming.commit(&env)
}

/// Reads `SPOOL/tlsrpt/START/DOMAIN` files; unreadable ones are logged
/// and left alone.
fn load(dir: &Path) -> BTreeMap<u64, HashMap<String, DomainCounts>> {
    let mut out: BTreeMap<u64, HashMap<String, DomainCounts>> = BTreeMap::new();
    let Ok(periods) = std::fs::read_dir(dir) else {
        return out;
    };
    for p in periods.flatten() {
        let Some(start) = p.file_name().to_str().and_then(|s| s.parse::<u64>().ok()) else {
            continue;
        };
        let Ok(files) = std::fs::read_dir(p.path()) else {
            continue;
        };
        for f in files.flatten() {
            let name = f.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') {
                continue; // an unfinished write
            }
            match std::fs::read_to_string(f.path())
                .map_err(|e| e.to_string())
                .and_then(|t| DomainCounts::from_text(&t))
            {
                Ok(c) => {
                    out.entry(start).or_default().insert(name, c);
                }
                Err(e) => log::warn!("tls-report: {}: {e}; left alone", f.path().display()),
            }
        }
    }
    out
}

/// A poisoned lock only means a panic elsewhere mid-update of counts.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
