//! The scheduler: sole owner of "what is due".
//!
//! One thread keeps a min-heap of (next attempt, id) and hands due ids to
//! a fixed pool of delivery threads over a bounded channel (the pool's
//! backpressure). It learns of new mail from the sessions at once, of each
//! attempt's outcome from the workers, and rescans the spool now and then
//! as a safety net (a lost notice only delays a message, never loses it).
//! A `flush` file in the spool makes every waiting message due now.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, Receiver, RecvTimeoutError, Select, Sender};

use crate::delivery::{Deliverer, Outcome};
use crate::spool::{Envelope, QueueId};
use crate::time::Clock;

/// How often the spool is rescanned for messages the scheduler missed.
const RESCAN: Duration = Duration::from_secs(60);
/// How often the flush trigger is looked for.
const TICK: Duration = Duration::from_millis(500);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Slot {
    Waiting(u64),
    Ready,
    InFlight,
}

/// A worker's word on one id.
#[derive(Debug, Clone, Copy)]
struct Report {
    id: QueueId,
    outcome: Option<Outcome>,
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

/// Starts the scheduler thread and `workers` delivery threads.
pub fn start(
    deliverer: Arc<Deliverer>,
    workers: usize,
    initial: Vec<Envelope>,
    committed: Receiver<QueueId>,
) -> std::io::Result<SchedulerHandle> {
    let (jobs_tx, jobs_rx) = bounded::<QueueId>(workers);
    let (report_tx, report_rx) = bounded::<Report>(workers * 2 + 16);
    let (stop_tx, stop_rx) = bounded::<()>(1);
    let mut threads = Vec::new();
    for i in 0..workers {
        let jobs = jobs_rx.clone();
        let reports = report_tx.clone();
        let d = deliverer.clone();
        threads.push(
            thread::Builder::new()
                .name(format!("deliver-{i}"))
                .spawn(move || worker(&d, &jobs, &reports))?,
        );
    }
    drop(report_tx);
    let spool = deliverer.spool.clone();
    let clock = deliverer.clock.clone();
    threads.push(
        thread::Builder::new()
            .name("scheduler".into())
            .spawn(move || {
                let mut s = Scheduler::new(spool, clock);
                for env in initial {
                    s.schedule(env.id, env.next_try);
                }
                s.run(&committed, &report_rx, &jobs_tx, &stop_rx);
            })?,
    );
    Ok(SchedulerHandle {
        stop: stop_tx,
        threads,
    })
}

fn worker(d: &Deliverer, jobs: &Receiver<QueueId>, reports: &Sender<Report>) {
    loop {
        match jobs.recv_timeout(Duration::from_secs(1)) {
            Ok(id) => {
                let outcome = match d.attempt(id) {
                    Ok(o) => Some(o),
                    Err(e) => {
                        log::error!("{id} delivery attempt failed: {e}");
                        None
                    }
                };
                if reports.send(Report { id, outcome }).is_err() {
                    return;
                }
            }
            Err(RecvTimeoutError::Timeout) => d.cache.sweep(),
            Err(RecvTimeoutError::Disconnected) => return,
        }
    }
}

struct Scheduler {
    spool: Arc<crate::spool::Spool>,
    clock: Arc<dyn Clock>,
    heap: BinaryHeap<Reverse<(u64, QueueId)>>,
    slots: HashMap<QueueId, Slot>,
    ready: VecDeque<QueueId>,
    /// Flushed while in flight: attempt again as soon as it comes back.
    flush_again: std::collections::HashSet<QueueId>,
    last_scan: Instant,
}

impl Scheduler {
    fn new(spool: Arc<crate::spool::Spool>, clock: Arc<dyn Clock>) -> Scheduler {
        Scheduler {
            spool,
            clock,
            heap: BinaryHeap::new(),
            slots: HashMap::new(),
            ready: VecDeque::new(),
            flush_again: std::collections::HashSet::new(),
            last_scan: Instant::now(),
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

    /// `touch SPOOL/flush` flushes everything; `queue flush` leaves
    /// requests naming ids in `flush.d/`.
    fn check_flush_trigger(&mut self) {
        let trigger = self.spool.root().join("flush");
        if std::fs::remove_file(&trigger).is_ok() {
            self.flush_all();
        }
        let requests = self.spool.take_flush_requests();
        if requests.contains(&None) {
            self.flush_all();
        }
        let mut n = 0;
        for id in requests.into_iter().flatten() {
            match self.slots.get(&id) {
                Some(Slot::Ready) => {}
                Some(Slot::InFlight) => {
                    self.flush_again.insert(id);
                }
                Some(Slot::Waiting(_)) | None => {
                    // unknown ids: new (`send`) or released from a hold
                    if self.spool.env_path(id).exists() {
                        self.slots.insert(id, Slot::Ready);
                        self.ready.push_back(id);
                        n += 1;
                    }
                }
            }
        }
        if n > 0 {
            log::info!("flush: {n} requested message(s) made due now");
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
        for id in ids {
            if self.slots.contains_key(&id) {
                continue;
            }
            match self.spool.load(id) {
                Ok(env) => {
                    found += 1;
                    self.schedule(id, env.next_try);
                }
                Err(e) => log::debug!("{id} rescan skipped: {e}"),
            }
        }
        if found > 0 {
            log::info!("rescan found {found} message(s) not yet scheduled");
        }
    }

    fn on_report(&mut self, r: Report) {
        let again = self.flush_again.remove(&r.id);
        match r.outcome {
            Some(Outcome::Done) | Some(Outcome::Gone) | Some(Outcome::Held) => {
                self.slots.remove(&r.id);
            }
            Some(Outcome::Retry(_)) if again => self.schedule(r.id, 0),
            Some(Outcome::Retry(at)) => self.schedule(r.id, at),
            // a spool error: try again later rather than lose track
            None => self.schedule(r.id, self.clock.now_unix() + 60),
        }
    }

    fn run(
        &mut self,
        committed: &Receiver<QueueId>,
        reports: &Receiver<Report>,
        jobs: &Sender<QueueId>,
        stop: &Receiver<()>,
    ) {
        let mut last_tick = Instant::now();
        loop {
            let until_due = self.promote_due().unwrap_or(TICK).min(TICK);
            if last_tick.elapsed() >= TICK {
                last_tick = Instant::now();
                self.check_flush_trigger();
                if self.last_scan.elapsed() >= RESCAN {
                    self.rescan();
                }
            }
            let mut sel = Select::new();
            let i_stop = sel.recv(stop);
            let i_commit = sel.recv(committed);
            let i_report = sel.recv(reports);
            let i_send = (!self.ready.is_empty()).then(|| sel.send(jobs));
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
                    Ok(r) => self.on_report(r),
                    Err(_) => return,
                },
                i if Some(i) == i_send => {
                    let Some(id) = self.ready.pop_front() else {
                        continue;
                    };
                    if op.send(jobs, id).is_err() {
                        return;
                    }
                    self.slots.insert(id, Slot::InFlight);
                }
                _ => {}
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
        (Scheduler::new(temp_spool(tag), clock.clone()), clock)
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

    /// What a worker reports decides when the message is next due.
    #[test]
    fn reports_reschedule_by_the_clock() {
        let (mut s, clock) = scheduler("sched-report");
        let a = queue(&s.spool, T0, &["<u@b.example>"]);
        let b = queue(&s.spool, T0, &["<u@c.example>"]);
        s.slots.insert(a, Slot::InFlight);
        s.slots.insert(b, Slot::InFlight);
        s.on_report(Report {
            id: a,
            outcome: Some(Outcome::Retry(T0 + 600)),
        });
        // a spool error: again in a minute, by the clock
        s.on_report(Report {
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
            id: c,
            outcome: Some(Outcome::Done),
        });
        assert!(!s.slots.contains_key(&c));
    }
}
