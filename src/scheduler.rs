//! The scheduler: sole owner of "what is due".
//!
//! One thread keeps a min-heap of (next attempt, id) and hands due ids to
//! a fixed pool of delivery threads: one id to an idle thread at a time
//! (the pool's backpressure), through a channel of that thread's own, and
//! to the thread idle the shortest time, so that light load stays on a
//! few warm threads instead of going round all of them (`handoff.rs` says
//! why). A worker's report of its attempt makes it idle again: the stack
//! is the scheduler's own, not a `handoff` queue, because this loop must
//! know a worker is idle when it reads the report, or a ready id could
//! wait for the next tick while a worker waits for it. The
//! scheduler learns of new mail from the sessions at once, of each
//! attempt's outcome from the workers, and rescans the spool now and then
//! as a safety net (a lost notice only delays a message, never loses it).
//! A `flush` file in the spool makes every waiting message due now.
//!
//! Destinations (`--max-per-destination`). A destination is the first
//! next hop of a group of recipients (name and port), which only routing
//! knows, and routing may need DNS, which this thread must never wait
//! for. So the design is a slot per (message, destination) transaction:
//! - a worker routes the message it was given and, for each destination,
//!   takes a slot from the [`DestLimiter`] without waiting
//!   (`try_acquire`); the slot is held for that one transaction only.
//!   A destination without a free slot is skipped: its recipients are not
//!   tried and nothing is recorded about them. When nothing at all could
//!   be tried the envelope is not even rewritten. The worker answers
//!   `Wait(destinations)` and is free at once for other mail.
//! - the scheduler parks such a message in that destination's ready
//!   queue (`parked`), and releases parked messages to the workers only
//!   as slots of their destination come free (counting the ones already
//!   released and not yet back, so it never releases more than there are
//!   slots). A limit reached is never an attempt, a deferral or a retry
//!   delay, and no worker waits on another domain's limit.
//! - a message whose destinations are not known yet (new mail, a retry
//!   that came due) is released as before; its first look tells.
//!   A message for several destinations is delivered to those with a free
//!   slot and parked on the first of the others; when released, its
//!   not-yet-final recipients are tried again (for a deferred one of
//!   another destination, that retry comes early).
//!
//! - rates and throttles (`shaping`): a destination without a token of
//!   its message rate, or backing off after a throttling reply, takes no
//!   transaction either; the scheduler releases its parked messages when
//!   the clock says a token is due or the backoff ends (`release_parked`
//!   returns how long to sleep until then).
//!
//! Without a scheduler (the foreground `queue flush`), `Deliverer::attempt`
//! waits for a slot between tries of a message, holding no lock, and is
//! woken by the release of a slot (`DestLimiter::wait_free`).

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, Receiver, RecvTimeoutError, Select, Sender, TrySendError};

use crate::delivery::{Attempted, Deliverer, Outcome};
pub use crate::shaping::DestLimiter;
use crate::spool::{Hold, QueueId, Request};
use crate::swap::Swap;
use crate::time::Clock;

/// How often the spool is rescanned for messages the scheduler missed.
const RESCAN: Duration = Duration::from_secs(60);
/// Queue sizes beyond which the rescan and the queue gauges, each a pass
/// over the whole queue, come less often (`every`).
const RESCAN_PER: usize = 100_000;
const METRICS_PER: usize = 50_000;

/// `base`, once per `per` queued messages: with a million queued, a
/// rescan (reading a folder of two million names) every ten minutes and
/// the gauges every ten seconds, instead of several percent of a core
/// spent on them while nothing else happens.
fn every(base: Duration, queued: usize, per: usize) -> Duration {
    base * u32::try_from(queued / per).unwrap_or(u32::MAX).max(1)
}
/// How often the flush trigger is looked for.
const TICK: Duration = Duration::from_millis(500);

#[derive(Debug, Clone, PartialEq, Eq)]
enum Slot {
    Waiting(u64),
    Ready,
    InFlight,
    /// In the ready queue of this destination, for a free slot.
    Parked(String),
}

/// A worker's word on one id; the worker is idle again from then on.
#[derive(Debug, Clone)]
struct Report {
    worker: usize,
    id: QueueId,
    outcome: Option<Attempted>,
}

pub struct SchedulerHandle {
    stop: Sender<()>,
    threads: Vec<JoinHandle<()>>,
}

impl SchedulerHandle {
    /// Stops the scheduler; workers finish their current attempt.
    pub fn stop(self, grace: Duration) {
        let _ = self.stop.send(());
        let deadline = Instant::now() + grace;
        for t in self.threads {
            while !t.is_finished() && Instant::now() < deadline {
                thread::sleep(Duration::from_millis(20));
            }
            if t.is_finished() {
                let _ = t.join();
            }
        }
    }
}

/// Starts the scheduler thread and `workers` delivery threads. Each
/// attempt runs with the deliverer `current` holds when it starts (a
/// reload swaps it; an attempt in flight finishes on the old one). The
/// spool, the clock and the limiter's counts are the same in every one.
/// `recovered` brings the messages start-up recovery finds, in batches,
/// while the server already runs (`Spool::load_recovered`); the rescan
/// waits until it is closed.
pub fn start(
    current: Arc<Swap<Deliverer>>,
    workers: usize,
    recovered: Receiver<Vec<crate::spool::Queued>>,
    committed: Receiver<QueueId>,
) -> std::io::Result<SchedulerHandle> {
    let (report_tx, report_rx) = bounded::<Report>(workers * 2 + 16);
    let (stop_tx, stop_rx) = bounded::<()>(1);
    let mut threads = Vec::new();
    let mut jobs_tx = Vec::with_capacity(workers);
    for i in 0..workers {
        // room for one: an id goes only to a worker that is idle
        let (job_tx, jobs) = bounded::<QueueId>(1);
        jobs_tx.push(job_tx);
        let reports = report_tx.clone();
        let d = current.clone();
        threads.push(
            thread::Builder::new()
                .name(format!("deliver-{i}"))
                .spawn(move || worker(i, &d, &jobs, &reports))?,
        );
    }
    drop(report_tx);
    let deliverer = current.load();
    let spool = deliverer.spool.clone();
    let clock = deliverer.clock.clone();
    let limiter = deliverer.limiter.clone();
    threads.push(
        thread::Builder::new()
            .name("scheduler".into())
            .spawn(move || {
                crate::pool::or_abort("scheduler", || {
                    let mut s = Scheduler::new(spool, clock, limiter);
                    s.recovering = Some(recovered);
                    s.run(&committed, &report_rx, &jobs_tx, &stop_rx);
                })
            })?,
    );
    Ok(SchedulerHandle {
        stop: stop_tx,
        threads,
    })
}

fn worker(
    index: usize,
    current: &Swap<Deliverer>,
    jobs: &Receiver<QueueId>,
    reports: &Sender<Report>,
) {
    loop {
        match jobs.recv_timeout(Duration::from_secs(1)) {
            Ok(id) => {
                let d = current.load();
                crate::metrics::attempt();
                let attempt = || {
                    crate::fault::hit(crate::fault::Point::Delivery);
                    d.attempt_released(id)
                };
                let outcome =
                    match crate::pool::catch(format_args!("{id} delivery attempt"), attempt) {
                        Some(Ok(o)) => Some(o),
                        Some(Err(e)) => {
                            log::error!("{id} delivery attempt failed: {e}");
                            None
                        }
                        // a local failure: deferred, retried after the
                        // shortest delay; the envelope is as before the attempt
                        None => {
                            let at = d.clock.now_unix() + d.retry.min.as_secs().max(1);
                            log::warn!(
                            "{id} deferred: local error (delivery attempt panicked), retry at {at}"
                        );
                            Some(Attempted::Finished(Outcome::Retry(at)))
                        }
                    };
                let report = Report {
                    worker: index,
                    id,
                    outcome,
                };
                if reports.send(report).is_err() {
                    return;
                }
            }
            Err(RecvTimeoutError::Timeout) => current.load().cache.sweep(),
            Err(RecvTimeoutError::Disconnected) => return,
        }
    }
}

struct Scheduler {
    spool: Arc<crate::spool::Spool>,
    clock: Arc<dyn Clock>,
    limiter: DestLimiter,
    /// Per destination: messages waiting for one of its slots, in order.
    parked: HashMap<String, VecDeque<QueueId>>,
    /// Parked messages released and not reported back yet, by destination
    /// (each will take a slot of it).
    released: HashMap<QueueId, String>,
    heap: BinaryHeap<Reverse<(u64, QueueId)>>,
    slots: HashMap<QueueId, Slot>,
    ready: VecDeque<QueueId>,
    /// Flushed while in flight: attempt again as soon as it comes back.
    flush_again: std::collections::HashSet<QueueId>,
    last_scan: Instant,
    /// Messages on hold and their hold, as the last look at each found
    /// it (a worker's report, an operator's `changed` request, a rescan):
    /// a held message is counted as held whatever its slot.
    held: HashMap<QueueId, Hold>,
    /// Start-up recovery still reading the spool: what it found so far
    /// comes here; no rescan until it is done (it would read the same).
    recovering: Option<Receiver<Vec<crate::spool::Queued>>>,
    /// Request files kept for the next start's replay (`Taken::done`):
    /// not taken again in this run.
    kept_requests: std::collections::HashSet<std::path::PathBuf>,
}

impl Scheduler {
    fn new(
        spool: Arc<crate::spool::Spool>,
        clock: Arc<dyn Clock>,
        limiter: DestLimiter,
    ) -> Scheduler {
        Scheduler {
            spool,
            clock,
            limiter,
            parked: HashMap::new(),
            released: HashMap::new(),
            heap: BinaryHeap::new(),
            slots: HashMap::new(),
            ready: VecDeque::new(),
            flush_again: std::collections::HashSet::new(),
            last_scan: Instant::now(),
            held: HashMap::new(),
            recovering: None,
            kept_requests: std::collections::HashSet::new(),
        }
    }

    fn schedule(&mut self, id: QueueId, at: u64) {
        if at <= self.clock.now_unix() {
            self.slots.insert(id, Slot::Ready);
            self.ready.push_back(id);
        } else {
            self.slots.insert(id, Slot::Waiting(at));
            self.heap.push(Reverse((at, id)));
        }
    }

    /// Moves due entries from the heap to the ready queue; returns how long
    /// until the next one is due.
    fn promote_due(&mut self) -> Option<Duration> {
        let now = self.clock.now_unix();
        while let Some(Reverse((at, id))) = self.heap.peek().copied() {
            if at > now {
                return Some(Duration::from_secs(at - now));
            }
            self.heap.pop();
            // stale heap entries (rescheduled since) are skipped
            if self.slots.get(&id) == Some(&Slot::Waiting(at)) {
                self.slots.insert(id, Slot::Ready);
                self.ready.push_back(id);
            }
        }
        None
    }

    /// Every waiting message becomes due now (`queue flush`).
    fn flush_all(&mut self) {
        let mut n = 0;
        while let Some(Reverse((at, id))) = self.heap.pop() {
            if self.slots.get(&id) == Some(&Slot::Waiting(at)) {
                self.slots.insert(id, Slot::Ready);
                self.ready.push_back(id);
                n += 1;
            }
        }
        log::info!("flush: {n} waiting message(s) made due now");
    }

    /// `touch SPOOL/flush` flushes everything; `queue flush` and `queue
    /// release` leave requests naming ids in `flush.d/`, `send` tells of
    /// the messages it queued and the changing `queue` commands of those
    /// they changed (spool/flush.rs). The caller publishes the gauges,
    /// then marks the requests done.
    fn check_flush_trigger(&mut self) -> crate::spool::flush::Taken {
        let mut taken = self.spool.take_flush_requests(&self.kept_requests);
        let mut unforgotten = Vec::new();
        if taken.requests.contains(&Request::All) {
            self.flush_all();
        }
        let mut n = 0;
        for &r in &taken.requests {
            match r {
                Request::All => {}
                Request::Due(id) => n += usize::from(self.make_due(id)),
                Request::New(id) => {
                    self.log_injected(id);
                    n += usize::from(self.make_due(id));
                }
                Request::Changed(id) => self.look_again(id),
                // the operator's command logs only on its own stderr:
                // here the message's last line is in the server's log
                Request::Deleted(id) => {
                    log::info!("{id} deleted by the operator");
                    if !self.forget_logged(id) {
                        unforgotten.push(id);
                    }
                    self.look_again(id);
                }
                Request::Returned(id, dsn) => {
                    let dsn = dsn.map(|d| format!(" (DSN {d})")).unwrap_or_default();
                    log::info!("{id} returned to sender by the operator{dsn}");
                    if !self.forget_logged(id) {
                        unforgotten.push(id);
                    }
                    self.look_again(id);
                }
            }
        }
        if n > 0 {
            log::info!("flush: {n} requested message(s) made due now");
        }
        for id in unforgotten {
            taken.keep_for(id);
        }
        taken
    }

    /// A message the operator finished: out of the commit log's replay
    /// before the request is removed (the request itself keeps it out of
    /// a replay until then, `Spool::finished_by_operator`). Whether its
    /// `done` record was written; when not, the request stays in
    /// `flush.d/` for the next start (`Taken::keep_for`).
    fn forget_logged(&self, id: QueueId) -> bool {
        match self.spool.forget_logged(id) {
            Ok(()) => true,
            Err(e) => {
                log::error!("{id}: {e}; its request stays in flush.d/ to keep it out of the next start's replay");
                false
            }
        }
    }

    /// Makes `id` due now, if it is queued and waiting; whether it was.
    fn make_due(&mut self, id: QueueId) -> bool {
        match self.slots.get(&id) {
            // waiting for a slot: a flush cannot make one
            Some(Slot::Ready | Slot::Parked(_)) => false,
            Some(Slot::InFlight) => {
                self.flush_again.insert(id);
                false
            }
            Some(Slot::Waiting(_)) | None => {
                // unknown ids: new (`send`) or released from a hold
                self.look_again(id);
                if !self.spool.is_queued(id) {
                    return false;
                }
                self.slots.insert(id, Slot::Ready);
                self.ready.push_back(id);
                true
            }
        }
    }

    /// The `queued` line of a message `send` queued without the server:
    /// the same line a session or the maildrop pick-up writes, so that a
    /// message's whole life is in the server's log.
    fn log_injected(&self, id: QueueId) {
        match self.spool.load(id) {
            Ok(env) => crate::admin::log_queued(&env),
            Err(e) => log::debug!("{id} announced but not loaded: {e}"),
        }
    }

    /// An operator changed `id` (`queue hold`, `delete`, `bounce`,
    /// `release`): its hold and whether it is still queued are read
    /// again, so the gauges count it right at the next scrape. A message
    /// gone or held leaves its waiting slot (a stale heap entry is
    /// skipped); one in flight keeps it until its worker reports.
    fn look_again(&mut self, id: QueueId) {
        let hold = match self.spool.load(id) {
            Ok(env) => env.hold,
            Err(_) => None,
        };
        let gone = !self.spool.is_queued(id);
        let now = self.clock.now_unix();
        match hold.filter(|h| h.active(now)) {
            Some(h) => {
                self.held.insert(id, h);
            }
            None => {
                self.held.remove(&id);
            }
        }
        let waiting = matches!(self.slots.get(&id), Some(Slot::Waiting(_)));
        if waiting && (gone || matches!(hold, Some(Hold::Forever))) {
            self.slots.remove(&id);
        }
    }

    fn rescan(&mut self) {
        self.last_scan = Instant::now();
        let ids = match self.spool.list_ids() {
            Ok(ids) => ids,
            Err(e) => {
                log::error!("spool rescan failed: {e}");
                return;
            }
        };
        let mut found = 0;
        let now = self.clock.now_unix();
        let queued: std::collections::HashSet<QueueId> = ids.iter().copied().collect();
        self.held.retain(|id, _| queued.contains(id));
        for id in ids {
            if self.slots.contains_key(&id) {
                continue;
            }
            match self.spool.load(id) {
                Ok(env) => match env.hold.filter(|h| h.active(now)) {
                    // waits for `queue release` (a flush request)
                    Some(h @ Hold::Forever) => {
                        self.held.insert(id, h);
                    }
                    Some(h @ Hold::Until(t)) => {
                        self.held.insert(id, h);
                        self.schedule(id, t.max(env.next_try));
                    }
                    None => {
                        found += 1;
                        self.held.remove(&id);
                        self.schedule(id, env.next_try);
                    }
                },
                Err(e) => log::debug!("{id} rescan skipped: {e}"),
            }
        }
        if found > 0 {
            log::info!("rescan found {found} message(s) not yet scheduled");
        }
    }

    /// Messages start-up recovery read. One the scheduler knows already
    /// (flushed by id, or delivered and gone since it was read) is left
    /// as it is: recovery read it before that happened.
    fn on_recovered(&mut self, batch: Option<Vec<crate::spool::Queued>>) {
        match batch {
            Some(batch) => {
                for q in batch {
                    if !self.slots.contains_key(&q.id) {
                        self.schedule(q.id, q.next_try);
                    }
                }
            }
            None => {
                self.recovering = None;
                self.last_scan = Instant::now();
            }
        }
    }

    fn on_report(&mut self, r: Report) {
        let again = self.flush_again.remove(&r.id);
        let now = self.clock.now_unix();
        if matches!(r.outcome, Some(Attempted::Finished(Outcome::Held))) {
            // only a hold without an end stops an attempt (delivery/mod.rs)
            self.held.insert(r.id, Hold::Forever);
        } else if !self.held.get(&r.id).is_some_and(|h| h.active(now)) {
            self.held.remove(&r.id);
        }
        let was_released_for = self.released.remove(&r.id);
        match r.outcome {
            Some(Attempted::Wait(dests)) => match dests.into_iter().next() {
                Some(dest) => {
                    // released for a slot that new mail took first: it
                    // keeps its place at the head of the queue
                    let front = was_released_for.as_ref() == Some(&dest);
                    self.park(r.id, dest, front);
                }
                None => self.schedule(r.id, 0),
            },
            Some(Attempted::Finished(Outcome::Done | Outcome::Gone | Outcome::Held)) => {
                self.slots.remove(&r.id);
            }
            Some(Attempted::Finished(Outcome::Retry(_))) if again => self.schedule(r.id, 0),
            Some(Attempted::Finished(Outcome::Retry(at))) => {
                crate::metrics::retry();
                self.schedule(r.id, at)
            }
            // a spool error: try again later rather than lose track
            None => self.schedule(r.id, self.clock.now_unix() + 60),
        }
        self.release_parked();
    }

    /// The queue gauges (README "Metrics"), from what the scheduler holds:
    /// one pass over its slots each tick, never a spool scan.
    fn publish_metrics(&self) {
        use crate::metrics::QueueState;
        let now = self.clock.now_unix();
        let held = |id: &QueueId| self.held.get(id).is_some_and(|h| h.active(now));
        let mut n = [0usize; 4];
        for (id, slot) in &self.slots {
            if held(id) {
                continue;
            }
            n[match slot {
                Slot::Ready => 0,
                Slot::Waiting(_) => 1,
                Slot::InFlight => 2,
                Slot::Parked(_) => 3,
            }] += 1;
        }
        let counts = [
            (QueueState::Pending, n[0]),
            (QueueState::Deferred, n[1]),
            (QueueState::InFlight, n[2]),
            (QueueState::Parked, n[3]),
            (
                QueueState::Held,
                self.held.keys().filter(|id| held(id)).count(),
            ),
        ];
        let oldest = self.slots.keys().min().map(|id| id.unix_secs());
        crate::metrics::queue(&counts, oldest, now);
    }

    /// Puts `id` in the ready queue of `dest`, to wait for a free slot.
    fn park(&mut self, id: QueueId, dest: String, front: bool) {
        let queue = self.parked.entry(dest.clone()).or_default();
        if front {
            queue.push_front(id);
        } else {
            queue.push_back(id);
        }
        self.slots.insert(id, Slot::Parked(dest));
    }

    /// Releases parked messages into the slots free now: per destination,
    /// what it can take now (free slots, rate tokens, not throttled) minus
    /// the messages released for it and not yet back. Returns how long
    /// until a destination still waiting can take more by the clock alone
    /// (a token, the end of a throttle).
    fn release_parked(&mut self) -> Option<Duration> {
        let mut out = Vec::new();
        let mut wake: Option<Duration> = None;
        for (dest, queue) in &mut self.parked {
            let pending = self.released.values().filter(|d| *d == dest).count();
            let free = self.limiter.available(dest).saturating_sub(pending);
            for _ in 0..free {
                match queue.pop_front() {
                    Some(id) => out.push((id, dest.clone())),
                    None => break,
                }
            }
            if !queue.is_empty() {
                if let Some(w) = self.limiter.ready_in(dest) {
                    wake = Some(wake.map_or(w, |x| x.min(w)));
                }
            }
        }
        self.parked.retain(|_, q| !q.is_empty());
        // they have waited: ahead of new mail
        for (id, dest) in out.into_iter().rev() {
            self.slots.insert(id, Slot::Ready);
            self.ready.push_front(id);
            self.released.insert(id, dest);
        }
        wake
    }

    fn run(
        &mut self,
        committed: &Receiver<QueueId>,
        reports: &Receiver<Report>,
        jobs: &[Sender<QueueId>],
        stop: &Receiver<()>,
    ) {
        // the workers waiting for an id, the one idle the shortest time
        // on top; all of them at first
        let mut idle: Vec<usize> = (0..jobs.len()).rev().collect();
        let mut last_tick = Instant::now();
        let mut last_metrics = Instant::now();
        loop {
            let mut until_due = self.promote_due().unwrap_or(TICK).min(TICK);
            if last_tick.elapsed() >= TICK {
                last_tick = Instant::now();
                let requests = self.check_flush_trigger();
                let queued = self.slots.len();
                // an operator's request is answered with the gauges right
                if !requests.requests.is_empty()
                    || last_metrics.elapsed() >= every(TICK, queued, METRICS_PER)
                {
                    last_metrics = Instant::now();
                    self.publish_metrics();
                }
                // the askers wait for this: the gauges are right by now
                self.kept_requests.extend(requests.done());
                if self.recovering.is_none()
                    && self.last_scan.elapsed() >= every(RESCAN, queued, RESCAN_PER)
                {
                    self.rescan();
                    self.limiter.prune();
                }
            }
            // a rate token or the end of a throttle comes due by the clock
            if let Some(wait) = self.release_parked() {
                until_due = until_due.min(wait);
            }
            self.dispatch(&mut idle, jobs);
            let mut sel = Select::new();
            let i_stop = sel.recv(stop);
            let i_commit = sel.recv(committed);
            let i_report = sel.recv(reports);
            let recovering = self.recovering.clone();
            let i_recovered = recovering.as_ref().map(|r| sel.recv(r));
            let op = match sel.select_timeout(until_due) {
                Ok(op) => op,
                Err(_) => continue,
            };
            match op.index() {
                i if i == i_stop => {
                    let _ = op.recv(stop);
                    return;
                }
                i if i == i_commit => match op.recv(committed) {
                    Ok(id) => {
                        // a maildrop pick-up commits held, then releases
                        self.held.remove(&id);
                        if !self.slots.contains_key(&id) {
                            self.schedule(id, 0);
                        }
                    }
                    Err(_) => {
                        // every session sender is gone: keep running on
                        // reports, rescans and the trigger
                        thread::sleep(TICK);
                    }
                },
                i if i == i_report => match op.recv(reports) {
                    Ok(r) => {
                        idle.push(r.worker);
                        self.on_report(r);
                    }
                    Err(_) => return,
                },
                i if Some(i) == i_recovered => {
                    if let Some(r) = &recovering {
                        self.on_recovered(op.recv(r).ok());
                    }
                }
                _ => {}
            }
        }
    }

    /// Hands ready ids to idle workers, most recently idle first, while
    /// there are both.
    fn dispatch(&mut self, idle: &mut Vec<usize>, jobs: &[Sender<QueueId>]) {
        while !self.ready.is_empty() {
            let Some(w) = idle.pop() else {
                return;
            };
            let Some(id) = self.ready.pop_front() else {
                return;
            };
            match jobs[w].try_send(id) {
                Ok(()) => {
                    self.slots.insert(id, Slot::InFlight);
                }
                // an idle worker's channel is empty; should it not be,
                // the worker is busy after all and reports when done
                Err(TrySendError::Full(id)) => self.ready.push_front(id),
                // a worker thread that ended (it never does while this
                // thread runs, short of a panic outside an attempt) is
                // not idle again: the others take its share
                Err(TrySendError::Disconnected(id)) => self.ready.push_front(id),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::delivery::tests::{queue, temp_spool, T0};
    use crate::time::ManualClock;

    fn scheduler(tag: &str) -> (Scheduler, Arc<ManualClock>) {
        let clock = Arc::new(ManualClock::new(T0));
        let limiter = DestLimiter::new(2);
        (
            Scheduler::new(temp_spool(tag), clock.clone(), limiter),
            clock,
        )
    }

    fn set_hold(spool: &crate::spool::Spool, id: QueueId, hold: Option<Hold>) {
        let crate::spool::Claimed::Mine(c) = spool.claim(id).unwrap() else {
            panic!("{id} not claimed");
        };
        let mut env = c.load().unwrap().unwrap();
        env.hold = hold;
        c.store(&env).unwrap();
    }

    /// Ready ids go to the worker idle the shortest time first, one each,
    /// and wait in order when no worker is idle; a worker whose channel is
    /// unexpectedly taken is skipped and not made idle again.
    #[test]
    fn ready_ids_go_to_the_last_idle_worker() {
        let (mut s, _clock) = scheduler("sched-lifo");
        let ids: Vec<QueueId> = (0..4)
            .map(|i| {
                let rcpt = format!("<u{i}@b.example>");
                queue(&s.spool, T0, &[rcpt.as_str()])
            })
            .collect();
        let (txs, rxs): (Vec<_>, Vec<_>) = (0..3).map(|_| bounded::<QueueId>(1)).unzip();
        // worker 0 is busy after all: its channel holds an id already
        txs[0].send(ids[3]).unwrap();
        let mut idle = vec![0, 1, 2];
        s.ready.extend([ids[0], ids[1], ids[2]]);
        s.dispatch(&mut idle, &txs);
        assert_eq!(rxs[2].try_recv(), Ok(ids[0]), "the last idle worker first");
        assert_eq!(rxs[1].try_recv(), Ok(ids[1]));
        assert_eq!(rxs[0].try_recv(), Ok(ids[3]), "nothing more for a busy one");
        assert!(idle.is_empty());
        assert_eq!(s.ready, [ids[2]], "waits for a worker");
        assert_eq!(s.slots.get(&ids[0]), Some(&Slot::InFlight));
        assert_eq!(s.slots.get(&ids[1]), Some(&Slot::InFlight));

        // a report makes its worker idle again: the waiting id goes to it
        idle.push(1);
        s.dispatch(&mut idle, &txs);
        assert_eq!(rxs[1].try_recv(), Ok(ids[2]));
        assert!(s.ready.is_empty());
    }

    /// Run as the server runs it: a report puts its worker back on top of
    /// the idle stack, so messages one after another all go to the same
    /// worker, the one idle the shortest time, and none waits for a
    /// worker while one is idle.
    #[test]
    fn one_message_after_another_goes_to_the_same_worker() {
        let (s, _clock) = scheduler("sched-run");
        let spool = s.spool.clone();
        let (committed_tx, committed_rx) = bounded::<QueueId>(16);
        let (report_tx, report_rx) = bounded::<Report>(16);
        let (stop_tx, stop_rx) = bounded::<()>(1);
        let (txs, rxs): (Vec<_>, Vec<_>) = (0..3).map(|_| bounded::<QueueId>(1)).unzip();
        let run = thread::spawn(move || {
            let mut s = s;
            s.run(&committed_rx, &report_rx, &txs, &stop_rx);
        });
        for i in 0..4 {
            let rcpt = format!("<u{i}@b.example>");
            let id = queue(&spool, T0, &[rcpt.as_str()]);
            committed_tx.send(id).unwrap();
            let end = Instant::now() + Duration::from_secs(10);
            let (worker, got) = loop {
                if let Some(w) = rxs.iter().position(|r| !r.is_empty()) {
                    break (w, rxs[w].try_recv().unwrap());
                }
                assert!(Instant::now() < end, "message {i} never handed to a worker");
                thread::sleep(Duration::from_millis(1));
            };
            assert_eq!(got, id);
            assert_eq!(worker, 0, "message {i} went to worker {worker}");
            report_tx
                .send(Report {
                    worker,
                    id,
                    outcome: Some(Attempted::Finished(Outcome::Done)),
                })
                .unwrap();
        }
        stop_tx.send(()).unwrap();
        run.join().unwrap();
    }

    /// An operator's hold is seen when the scheduler is told of it: the
    /// message leaves its waiting slot and counts as held; a rescan
    /// leaves a hold without an end out of the slots (no attempt a
    /// minute); a timed hold waits in its slot until its end; a release
    /// makes it due and no longer held.
    #[test]
    fn holds_are_seen_when_told_and_kept_by_rescans() {
        let (mut s, _clock) = scheduler("sched-held");
        let id = queue(&s.spool, T0, &["<u@b.example>"]);
        s.schedule(id, T0 + 600);
        set_hold(&s.spool, id, Some(Hold::Forever));
        s.look_again(id);
        assert!(!s.slots.contains_key(&id));
        assert_eq!(s.held.get(&id), Some(&Hold::Forever));
        s.rescan();
        assert!(!s.slots.contains_key(&id));
        assert_eq!(s.held.get(&id), Some(&Hold::Forever));

        set_hold(&s.spool, id, None);
        assert!(s.make_due(id));
        assert!(s.held.is_empty());
        assert_eq!(s.slots.get(&id), Some(&Slot::Ready));

        let timed = queue(&s.spool, T0, &["<v@b.example>"]);
        set_hold(&s.spool, timed, Some(Hold::Until(T0 + 3600)));
        s.rescan();
        assert_eq!(s.slots.get(&timed), Some(&Slot::Waiting(T0 + 3600)));
        assert_eq!(s.held.get(&timed), Some(&Hold::Until(T0 + 3600)));

        // deleted: out of the slots and the held set at once
        let crate::spool::Claimed::Mine(c) = s.spool.claim(timed).unwrap() else {
            panic!("not claimed");
        };
        c.finish().unwrap();
        s.look_again(timed);
        assert!(!s.slots.contains_key(&timed) && s.held.is_empty());
    }

    /// A retry comes due when the clock reaches it, not before.
    #[test]
    fn due_times_follow_the_clock() {
        let (mut s, clock) = scheduler("sched-due");
        let id = queue(&s.spool, T0, &["<u@b.example>"]);
        s.schedule(id, T0 + 300);
        assert_eq!(s.promote_due(), Some(Duration::from_secs(300)));
        assert!(s.ready.is_empty());
        clock.advance(Duration::from_secs(299));
        assert_eq!(s.promote_due(), Some(Duration::from_secs(1)));
        assert!(s.ready.is_empty());
        clock.advance(Duration::from_secs(1));
        assert_eq!(s.promote_due(), None);
        assert_eq!(s.ready, [id]);
        assert_eq!(s.slots.get(&id), Some(&Slot::Ready));
    }

    /// The passes over the whole queue come less often as it grows, in
    /// proportion, never more often than their base.
    #[test]
    fn whole_queue_passes_thin_out_with_its_size() {
        assert_eq!(every(RESCAN, 0, RESCAN_PER), RESCAN);
        assert_eq!(every(RESCAN, 99_999, RESCAN_PER), RESCAN);
        assert_eq!(every(RESCAN, 1_000_000, RESCAN_PER), RESCAN * 10);
        assert_eq!(every(TICK, 1_000_000, METRICS_PER), Duration::from_secs(10));
    }

    /// What a worker reports decides when the message is next due.
    #[test]
    fn reports_reschedule_by_the_clock() {
        let (mut s, clock) = scheduler("sched-report");
        let a = queue(&s.spool, T0, &["<u@b.example>"]);
        let b = queue(&s.spool, T0, &["<u@c.example>"]);
        s.slots.insert(a, Slot::InFlight);
        s.slots.insert(b, Slot::InFlight);
        s.on_report(Report {
            worker: 0,
            id: a,
            outcome: Some(Attempted::Finished(Outcome::Retry(T0 + 600))),
        });
        // a spool error: again in a minute, by the clock
        s.on_report(Report {
            worker: 0,
            id: b,
            outcome: None,
        });
        assert_eq!(s.slots.get(&b), Some(&Slot::Waiting(T0 + 60)));
        clock.set(T0 + 60);
        s.promote_due();
        assert_eq!(s.ready, [b]);
        clock.set(T0 + 600);
        s.promote_due();
        assert_eq!(s.ready, [b, a]);
        let c = queue(&s.spool, T0, &["<u@d.example>"]);
        s.slots.insert(c, Slot::InFlight);
        s.on_report(Report {
            worker: 0,
            id: c,
            outcome: Some(Attempted::Finished(Outcome::Done)),
        });
        assert!(!s.slots.contains_key(&c));
    }

    /// Messages that found their destination full wait in its queue and
    /// are released one per free slot, never more than the slots, in
    /// order, and without touching another destination's queue.
    #[test]
    fn parked_messages_are_released_into_free_slots() {
        let (mut s, _clock) = scheduler("sched-park");
        let wait = |dest: &str| Some(Attempted::Wait(vec![dest.to_string()]));
        let ids: Vec<QueueId> = (0..4)
            .map(|_| queue(&s.spool, T0, &["<u@b.example>"]))
            .collect();
        // two transactions in flight to mx.b fill its two slots
        let t1 = s.limiter.try_acquire("mx.b:25", true).unwrap();
        let t2 = s.limiter.try_acquire("mx.b:25", true).unwrap();
        for &id in &ids[..3] {
            s.slots.insert(id, Slot::InFlight);
            s.on_report(Report {
                worker: 0,
                id,
                outcome: wait("mx.b:25"),
            });
        }
        s.slots.insert(ids[3], Slot::InFlight);
        s.on_report(Report {
            worker: 0,
            id: ids[3],
            outcome: wait("mx.c:25"),
        });
        // mx.c has free slots: released at once; mx.b none
        assert_eq!(s.ready, [ids[3]]);
        s.ready.clear();
        assert_eq!(s.slots.get(&ids[0]), Some(&Slot::Parked("mx.b:25".into())));
        drop(t1);
        s.release_parked();
        assert_eq!(s.ready, [ids[0]], "one slot, one message");
        s.release_parked();
        assert_eq!(s.ready, [ids[0]], "not twice for the same slot");
        drop(t2);
        s.release_parked();
        assert_eq!(s.ready, [ids[1], ids[0]]);
        // ids[0] comes back done: its slot is free again for ids[2]
        s.ready.clear();
        s.on_report(Report {
            worker: 0,
            id: ids[0],
            outcome: Some(Attempted::Finished(Outcome::Done)),
        });
        assert_eq!(s.ready, [ids[2]]);
        assert!(s.parked.is_empty());
        // ids[2] finds its slot taken by new mail: back at the head of
        // the queue, ahead of a message parked after it
        s.ready.clear();
        let t3 = s.limiter.try_acquire("mx.b:25", true).unwrap();
        let late = queue(&s.spool, T0, &["<u@b.example>"]);
        s.slots.insert(late, Slot::InFlight);
        s.on_report(Report {
            worker: 0,
            id: late,
            outcome: wait("mx.b:25"),
        });
        s.on_report(Report {
            worker: 0,
            id: ids[2],
            outcome: wait("mx.b:25"),
        });
        assert_eq!(s.parked["mx.b:25"], [ids[2], late]);
        drop(t3);
    }

    /// A rate-limited or throttled destination's messages are released
    /// by the clock: as tokens come due, or when the backoff ends; the
    /// scheduler is told how long to sleep, and releases nothing early.
    #[test]
    fn rates_and_throttles_release_by_the_clock() {
        use crate::shaping::{DestShaping, Rate, Shaping};
        let clock = Arc::new(ManualClock::new(T0));
        let slow = DestShaping {
            message_rate: Rate::parse("60/min").ok(),
            ..DestShaping::default()
        };
        let defaults = Shaping {
            backoff_min: Duration::from_secs(30),
            ..Shaping::default()
        };
        let overrides = [("slow:25".to_string(), slow)].into_iter().collect();
        let limiter = DestLimiter::with_limits(defaults, overrides, clock.clone());
        let mut s = Scheduler::new(temp_spool("sched-rate"), clock.clone(), limiter);
        let ids: Vec<QueueId> = (0..4)
            .map(|_| queue(&s.spool, T0, &["<u@b.example>"]))
            .collect();
        // the first send took the only token
        drop(s.limiter.try_acquire("slow:25", false).unwrap());
        for &id in &ids[..2] {
            s.park(id, "slow:25".into(), false);
        }
        assert_eq!(s.release_parked(), Some(Duration::from_secs(1)));
        assert!(s.ready.is_empty());
        clock.advance(Duration::from_millis(999));
        assert!(s.release_parked().is_some());
        assert!(s.ready.is_empty(), "not before the token");
        clock.advance(Duration::from_millis(1));
        s.release_parked();
        assert_eq!(s.ready, [ids[0]]);
        // the one released takes that token: nothing more until the next
        assert!(s.limiter.try_acquire("slow:25", false).is_ok());
        s.released.clear();
        assert_eq!(s.release_parked(), Some(Duration::from_secs(1)));
        // a throttled destination: nothing until the backoff ends
        s.limiter.throttle("mx.t:25", "421 4.7.0 later".into());
        for &id in &ids[2..] {
            s.park(id, "mx.t:25".into(), false);
        }
        s.ready.clear();
        clock.advance(Duration::from_millis(500));
        assert_eq!(s.release_parked(), Some(Duration::from_millis(500)));
        clock.advance(Duration::from_millis(500));
        assert_eq!(s.release_parked(), Some(Duration::from_secs(29)));
        assert_eq!(s.ready, [ids[1]], "the slow one's next token");
        clock.advance(Duration::from_secs(29));
        s.release_parked();
        assert_eq!(s.ready, [ids[2], ids[3], ids[1]]);
    }
}
