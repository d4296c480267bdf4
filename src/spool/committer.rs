//! Group commit: one thread publishes finished messages into `queue/` (and
//! removes delivered ones), and makes every change of a batch durable
//! with as few device flushes as the filesystem allows.
//!
//! Each session writes its two tmp files, hands the pair to the committer
//! and waits. The committer takes every request waiting at that moment,
//! renames each body and then its envelope into `queue/`, and makes files
//! and names durable in one of three orders ([`Order`], chosen at start
//! by the filesystem under the spool):
//! - `SyncfsOnce` (ext4 with a journal, `--sync syncfs`): the renames,
//!   then one syncfs. syncfs writes and waits for every file's data, then
//!   commits the journal holding the renames and sizes behind it and
//!   flushes the device after: one device flush on the way to every 250.
//!   A power loss during that flush can leave a name in `queue/` over
//!   bytes that never reached the disk (a recycled file's earlier
//!   message, zeros); no such message had its 250, and none is ever sent:
//!   its envelope records a CRC-32 of both files (`Integrity`), checked
//!   by the first load and claim of another server run (`claim.rs`).
//! - `SyncfsThenFolder` (other filesystems, `--sync syncfs`): one syncfs
//!   of the new files, the renames, one fsync of `queue/`. Two flushes:
//!   without a journal (ext2, ext4 without one) syncfs writes inodes and
//!   folders after its device flush, and on XFS it may not flush at all
//!   after data whose log records someone else already forced, so only
//!   a flush after the renames covers them.
//! - `Folder` (`--sync fsync`): the sessions fdatasynced their files; the
//!   renames, then one fsync of `queue/`.
//!
//! With either syncfs order a small batch (at most `LOG_BATCH_MAX`
//! messages, each with its record) skips those flushes: its records go to
//! the commit log with one write and one fdatasync, then the renames, then
//! the answers, and a checkpoint about `REMOVAL_FLUSH_DELAY` later makes
//! the files of every message logged since durable in the order above
//! (`commit_log.rs`). One flush instead of two before a lone client's
//! 250, and no syncfs per message.
//!
//! Only then is each session answered, and only then does it say 250. If
//! the flush fails, the batch's messages are taken back out of `queue/`
//! (envelope first) before their sessions are answered 451: nothing that
//! failed to reach the disk stays queued behind its client's back.
//!
//! Removals (a delivered message's two files renamed into `free/`) are
//! answered as soon as their renames are done and made durable by the
//! next batch's flush or, when no message arrives, by an fsync of
//! `queue/` about `REMOVAL_FLUSH_DELAY` later (and at stop). Waiting for a
//! flush of their own put a device flush between every delivery and its
//! worker's next message, and made the next 250 wait behind it. The
//! renames are done at once, so no reader of `queue/` (a rescan, a queue
//! command, a restart after `kill -9`) sees the message again; only a
//! power loss before that flush can bring a delivered message back, to be
//! delivered twice, as a Postfix queue file unlinked without a folder
//! fsync can. A removed file is reused for a new message only after it.

use std::fs;
use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, Receiver, RecvTimeoutError, Sender};

use std::sync::Arc;

use super::commit_log::CommitLog;
use super::fsutil;
use super::queue_id::QueueId;
use super::recycle::Recycler;
use super::SpoolError;

/// How a batch is made durable (module doc).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Order {
    /// The renames, then one syncfs.
    SyncfsOnce,
    /// One syncfs of the new files, the renames, one fsync of `queue/`.
    SyncfsThenFolder,
    /// The files are fdatasynced by their writers: the renames, then one
    /// fsync of `queue/`.
    Folder,
}

impl Order {
    /// Whether the writers leave their files unflushed for the committer.
    pub fn flushes_files(self) -> bool {
        self != Order::Folder
    }
}

/// One folder change to make durable.
enum Op {
    /// A message ready to publish: its written tmp files and final names.
    Publish {
        msg_tmp: PathBuf,
        env_tmp: PathBuf,
        msg_final: PathBuf,
        env_final: PathBuf,
        /// Its commit-log record, when the session had the whole body at
        /// hand (`commit_log::publish_record`).
        record: Option<(QueueId, Vec<u8>)>,
    },
    /// A finished message to remove, envelope first.
    Remove {
        id: QueueId,
        env: PathBuf,
        msg: PathBuf,
    },
    /// Make the removals so far durable now (the server is stopping).
    Flush,
    /// A message the operator finished outside the server (`queue
    /// delete`, `queue bounce`): a `done` record, so that a replay does
    /// not bring it back.
    Forget { id: QueueId },
}

struct Request {
    op: Op,
    done: Sender<Result<(), SpoolError>>,
}

/// Handle to the committer thread; cheap to clone.
#[derive(Debug, Clone)]
pub struct Committer {
    tx: Sender<Request>,
}

/// Most requests published under one flush.
const MAX_BATCH: usize = 256;

/// Most messages a batch through the commit log holds (`fits_the_log`).
const LOG_BATCH_MAX: usize = 4;

/// About how long a removal waits for a batch's flush to make it durable
/// before it gets one of its own (module doc).
pub(crate) const REMOVAL_FLUSH_DELAY: Duration = Duration::from_millis(50);

/// What the committer keeps across batches, and across a panic of its
/// loop (so removals already answered are still flushed, and their files
/// still reused).
#[derive(Default)]
struct State {
    /// `queue/`, opened at the first flush and kept (an open and a close
    /// per batch less); dropped after a failure, opened again.
    kept: Option<fs::File>,
    /// Removed files, renamed into `free/`, waiting for the flush that
    /// makes their removal durable.
    freed: Vec<PathBuf>,
    /// Since when removals, or messages made durable in the commit log,
    /// have waited for that flush (a checkpoint for the latter).
    unflushed_since: Option<Instant>,
    /// The commit log (module doc of `commit_log.rs`), with the syncfs
    /// orders.
    log: Log,
}

/// The commit log as the committer holds it. Only an `Open` log takes
/// publish records; `done` records go into any log there is (they only
/// keep finished messages out of a replay).
#[derive(Default)]
enum Log {
    /// None: `--sync fsync`, a spool without room for one, or removed
    /// after a failure (batches then take the flushes).
    #[default]
    Off,
    Open(CommitLog),
    /// An append failed: the next checkpoint removes it.
    Failed(CommitLog),
    /// A checkpoint failed: kept for the next start's replay, never
    /// advanced or removed in this run (a retried flush can succeed
    /// without the writes the failed one lost, the error being reported
    /// once).
    Frozen(CommitLog),
}

impl Log {
    /// The log in any state.
    fn any(&mut self) -> Option<&mut CommitLog> {
        match self {
            Log::Off => None,
            Log::Open(l) | Log::Failed(l) | Log::Frozen(l) => Some(l),
        }
    }

    /// Whether `id` is in the log's epoch, in any state.
    fn holds(&self, id: QueueId) -> bool {
        match self {
            Log::Off => false,
            Log::Open(l) | Log::Failed(l) | Log::Frozen(l) => l.holds(id),
        }
    }

    /// An `Open` log, after an append failed, fails.
    fn fail(&mut self) {
        if let Log::Open(l) = std::mem::take(self) {
            *self = Log::Failed(l);
        }
    }

    /// After a failed checkpoint; whether it just froze (to log once).
    fn freeze(&mut self) -> bool {
        match std::mem::take(self) {
            Log::Open(l) | Log::Failed(l) => {
                *self = Log::Frozen(l);
                true
            }
            other => {
                *self = other;
                false
            }
        }
    }

    /// Whether a checkpoint has logged messages to make durable (and so
    /// the log's next epoch to start after it).
    fn has_records(&self) -> bool {
        match self {
            Log::Open(l) => !l.is_empty(),
            // its records' fate is unknown: checkpointed, then removed
            Log::Failed(_) => true,
            Log::Off | Log::Frozen(_) => false,
        }
    }
}

impl Committer {
    /// Starts the thread for the folder `queue`, flushing in `order`;
    /// removals wait about `removal_delay` for a batch's flush.
    pub fn start(
        queue: PathBuf,
        recycler: Arc<Recycler>,
        order: Order,
        removal_delay: Duration,
        log: Option<CommitLog>,
    ) -> std::io::Result<Committer> {
        let (tx, rx) = bounded::<Request>(1024);
        thread::Builder::new()
            .name("committer".into())
            .spawn(move || {
                // a panic drops its batch, so each waiting session gets an
                // error and answers 451 (nothing acknowledged); requests
                // still in the channel go to a fresh loop. A half-done
                // batch leaves what a crash leaves (see incoming.rs), and
                // the client's retry is at worst a duplicate.
                let what = "committer (its batch answered 451, a new loop takes over)";
                let c = Run {
                    queue: &queue,
                    recycler: &recycler,
                    order,
                    removal_delay,
                };
                let mut state = State {
                    log: log.map_or(Log::Off, Log::Open),
                    ..State::default()
                };
                while crate::pool::catch(what, || c.run(&rx, &mut state)).is_none() {}
            })?;
        Ok(Committer { tx })
    }

    /// Publishes one message whose tmp files are written (and fdatasynced
    /// when the order is `Folder`); returns once it is durable in
    /// `queue/`.
    pub(super) fn commit(
        &self,
        msg_tmp: PathBuf,
        env_tmp: PathBuf,
        msg_final: PathBuf,
        env_final: PathBuf,
        record: Option<(QueueId, Vec<u8>)>,
    ) -> Result<(), SpoolError> {
        self.submit(Op::Publish {
            msg_tmp,
            env_tmp,
            msg_final,
            env_final,
            record,
        })
    }

    /// Removes a finished message; returns once it is out of `queue/`,
    /// durable soon after (module doc).
    pub(super) fn remove(&self, id: QueueId, env: PathBuf, msg: PathBuf) -> Result<(), SpoolError> {
        self.submit(Op::Remove { id, env, msg })
    }

    /// Makes every removal so far durable; returns once it is.
    pub(super) fn flush(&self) -> Result<(), SpoolError> {
        self.submit(Op::Flush)
    }

    /// Tells the commit log that `id` was finished outside the server;
    /// returns once its `done` record is written, or the log's epoch no
    /// longer holds it.
    pub(super) fn forget(&self, id: QueueId) -> Result<(), SpoolError> {
        self.submit(Op::Forget { id })
    }

    fn submit(&self, op: Op) -> Result<(), SpoolError> {
        let (done, done_rx) = bounded(1);
        let queue_hint = match &op {
            Op::Publish { env_final, .. } => env_final.clone(),
            Op::Remove { env, .. } => env.clone(),
            Op::Flush | Op::Forget { .. } => PathBuf::from("queue"),
        };
        let req = Request { op, done };
        self.tx.send(req).map_err(|_| {
            SpoolError::io(
                &queue_hint,
                std::io::Error::other("committer thread is gone"),
            )
        })?;
        done_rx.recv().map_err(|_| {
            SpoolError::io(
                &queue_hint,
                std::io::Error::other("committer thread is gone"),
            )
        })?
    }
}

/// The committer thread's settings.
struct Run<'a> {
    queue: &'a Path,
    recycler: &'a Recycler,
    order: Order,
    removal_delay: Duration,
}

impl Run<'_> {
    fn run(&self, rx: &Receiver<Request>, state: &mut State) {
        let mut batch: Vec<Request> = Vec::with_capacity(MAX_BATCH);
        loop {
            // a checkpoint due is not put off by a steady stream of
            // requests
            if state
                .unflushed_since
                .is_some_and(|t| t.elapsed() >= self.removal_delay)
            {
                let _ = self.checkpoint(state);
            }
            let first = match state.unflushed_since {
                None => match rx.recv() {
                    Ok(r) => Some(r),
                    Err(_) => return,
                },
                Some(t) => match rx.recv_timeout(self.removal_delay.saturating_sub(t.elapsed())) {
                    Ok(r) => Some(r),
                    Err(RecvTimeoutError::Timeout) => None,
                    Err(RecvTimeoutError::Disconnected) => {
                        // the server is gone: what it answered is made
                        // durable
                        let _ = self.checkpoint(state);
                        return;
                    }
                },
            };
            let Some(first) = first else {
                // waited long enough and no batch came to share a flush
                let _ = self.checkpoint(state);
                continue;
            };
            batch.push(first);
            while batch.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(r) => batch.push(r),
                    Err(_) => break,
                }
            }
            crate::fault::hit(crate::fault::Point::Commit);
            if self.fits_the_log(&batch, state) {
                self.batch_logged(&mut batch, state);
            } else {
                self.batch(&mut batch, state);
            }
        }
    }

    /// Whether a batch goes through the commit log: a few messages (one
    /// flush instead of two on the way to their 250s; a big batch shares
    /// its flushes already, and writing its bodies twice would cost more
    /// than it saves), each with its record, with room for them (a full
    /// half is checkpointed first).
    fn fits_the_log(&self, batch: &[Request], state: &mut State) -> bool {
        let mut n = 0;
        let mut len = 0;
        for r in batch {
            match &r.op {
                Op::Publish {
                    record: Some((_, rec)),
                    ..
                } => {
                    n += 1;
                    len += rec.len();
                }
                Op::Publish { record: None, .. } => return false,
                _ => {}
            }
        }
        if n == 0 || n > LOG_BATCH_MAX {
            return false;
        }
        let Log::Open(log) = &state.log else {
            return false;
        };
        if log.has_room(len, n) {
            return true;
        }
        self.checkpoint(state).is_ok() && matches!(&state.log, Log::Open(l) if l.has_room(len, n))
    }

    /// A batch through the commit log: its records written and
    /// fdatasynced, then its renames, then its answers; its files are made
    /// durable by a checkpoint about `removal_delay` later.
    fn batch_logged(&self, batch: &mut Vec<Request>, state: &mut State) {
        let mut records = Vec::new();
        let mut published = Vec::new();
        let mut flush_asked = Vec::new();
        for mut r in batch.drain(..) {
            match &mut r.op {
                Op::Publish { record, .. } => {
                    if let Some(rec) = record.take() {
                        records.push(rec);
                    }
                    published.push(r);
                }
                Op::Remove { .. } => {
                    let result = self.remove(&r.op, state);
                    let _ = r.done.send(result);
                }
                Op::Forget { id } => {
                    let result = self.forget(*id, state);
                    let _ = r.done.send(result);
                }
                Op::Flush => flush_asked.push(r),
            }
        }
        let ids: Vec<QueueId> = records.iter().map(|(id, _)| *id).collect();
        let appended = match &mut state.log {
            Log::Open(log) => crate::fault::fails(crate::fault::Point::CommitFlush)
                .and_then(|()| log.append_durably(&mut records)),
            _ => Err(std::io::Error::other("no commit log")),
        };
        if let Err(e) = appended {
            // not known durable: never renamed into queue/, answered 451.
            // A record that did reach the disk may bring its message back
            // after a crash, to be delivered although its client was told
            // to retry: a duplicate, never a loss
            if let Some(log) = state.log.any() {
                log::error!(
                    "{}: {e}; {} messages answered 451, and group commits take their flushes without the log from now on",
                    log.path().display(),
                    published.len()
                );
            }
            state.log.fail();
            state.unflushed_since.get_or_insert_with(Instant::now);
            for r in published {
                let _ = r.done.send(Err(self.error(&e)));
            }
        } else {
            state.unflushed_since.get_or_insert_with(Instant::now);
            for (r, id) in published.into_iter().zip(ids) {
                let result = apply(&r.op, self.recycler, &mut state.freed);
                if result.is_err() {
                    // the session retries under another id (or gives up):
                    // a replay must not make this one
                    if let Some(log) = state.log.any() {
                        let _ = log.append_done(id);
                    }
                }
                let _ = r.done.send(result);
            }
        }
        if !flush_asked.is_empty() {
            let flushed = self.checkpoint(state);
            for r in flush_asked {
                let _ = r
                    .done
                    .send(flushed.as_ref().map_err(|e| self.error(e)).copied());
            }
        }
    }

    /// A removal: a `done` record first when the message is in the commit
    /// log's current epoch (so a replay never brings it back), then the
    /// renames.
    fn remove(&self, op: &Op, state: &mut State) -> Result<(), SpoolError> {
        if let Op::Remove { id, env, .. } = op {
            if !self.retire(*id, state) {
                // a replay would bring it back: it stays queued for now
                return Err(SpoolError::io(
                    env,
                    std::io::Error::other("commit log: no done record"),
                ));
            }
        }
        apply(op, self.recycler, &mut state.freed)
    }

    /// `Op::Forget`: the `done` record of a message the operator
    /// finished.
    fn forget(&self, id: QueueId, state: &mut State) -> Result<(), SpoolError> {
        if self.retire(id, state) {
            Ok(())
        } else {
            Err(SpoolError::io(
                self.queue,
                std::io::Error::other(format!("commit log: no done record for {id}")),
            ))
        }
    }

    /// Makes sure a replay of the commit log does not bring `id` back: a
    /// `done` record when the log's epoch holds it. With no room, or when
    /// the write failed, a checkpoint makes the message's files durable
    /// and the epoch after it no longer holds the message. Whether the
    /// log is rid of it.
    fn retire(&self, id: QueueId, state: &mut State) -> bool {
        let Some(log) = state.log.any() else {
            return true;
        };
        if !log.holds(id)
            || crate::fault::fails(crate::fault::Point::DoneRecord)
                .and_then(|()| log.append_done(id))
                .is_ok()
        {
            return true;
        }
        self.checkpoint(state).is_ok() && !state.log.holds(id)
    }

    /// Makes everything answered so far durable: the files of the
    /// messages in the commit log's epoch (one syncfs, and with
    /// `SyncfsThenFolder` one fsync of `queue/` after it for the names),
    /// then the next epoch starts; with nothing logged, the removals (one
    /// fsync of `queue/`).
    fn checkpoint(&self, state: &mut State) -> std::io::Result<()> {
        if !state.log.has_records() {
            return self.flush_folder(state);
        }
        if let Err(e) = crate::fault::fails(crate::fault::Point::Checkpoint) {
            // a test holds the checkpoint off (debug builds only)
            state.unflushed_since = Some(Instant::now());
            return Err(e);
        }
        let flushed = if self.order == Order::SyncfsOnce {
            self.after_flush(state, "syncfs", crate::sys::syncfs)
        } else {
            self.syncfs(state).and_then(|()| self.flush_folder(state))
        };
        match &flushed {
            Ok(()) => self.next_epoch(state),
            Err(e) => {
                // a retry could succeed without the lost writes (the error
                // is reported once): the epoch is never retired in this
                // run, no record goes in after it, and the next start
                // replays it
                if state.log.freeze() {
                    log::error!(
                        "{}: checkpoint failed ({e}): the commit log is kept for the next start and takes no more records",
                        self.queue.display()
                    );
                }
            }
        }
        flushed
    }

    /// After a flush that made every logged message durable in `queue/`:
    /// the log's next epoch. If that fails the log is removed and not used
    /// again (`CommitLog::discard`).
    fn next_epoch(&self, state: &mut State) {
        match std::mem::take(&mut state.log) {
            Log::Failed(log) => log.discard(),
            Log::Open(mut log) => match log.checkpointed() {
                Ok(()) => state.log = Log::Open(log),
                Err(e) => {
                    log::error!(
                        "{}: {e}; removed, and group commits take their flushes without it from now on",
                        log.path().display()
                    );
                    log.discard();
                }
            },
            kept @ (Log::Off | Log::Frozen(_)) => state.log = kept,
        }
    }

    /// Renames and flushes one batch, then answers it.
    fn batch(&self, batch: &mut Vec<Request>, state: &mut State) {
        if self.order == Order::SyncfsThenFolder {
            self.flush_new_files(batch, state);
        }
        let mut published = Vec::with_capacity(batch.len());
        let mut flush_asked = Vec::new();
        for r in batch.drain(..) {
            match &r.op {
                Op::Publish { .. } => match apply(&r.op, self.recycler, &mut state.freed) {
                    Ok(()) => published.push(r),
                    Err(e) => {
                        let _ = r.done.send(Err(e));
                    }
                },
                Op::Remove { .. } => {
                    let result = self.remove(&r.op, state);
                    let _ = r.done.send(result);
                }
                Op::Forget { id } => {
                    let result = self.forget(*id, state);
                    let _ = r.done.send(result);
                }
                Op::Flush => flush_asked.push(r),
            }
        }
        if !state.freed.is_empty() {
            state.unflushed_since.get_or_insert_with(Instant::now);
        }
        if published.is_empty() && flush_asked.is_empty() {
            return;
        }
        let flushed = if published.is_empty() {
            self.checkpoint(state)
        } else {
            let f = crate::fault::fails(crate::fault::Point::CommitFlush)
                .and_then(|()| self.flush_all(state));
            if f.is_ok() {
                // the flush covered every earlier logged message too
                self.next_epoch(state);
            }
            f
        };
        if let Err(e) = &flushed {
            // not durable, so never queued: out again, envelope first,
            // before the sessions answer 451 and remove their tmp files
            for r in &published {
                if let Op::Publish {
                    msg_tmp,
                    env_tmp,
                    msg_final,
                    env_final,
                    ..
                } = &r.op
                {
                    let _ = fs::rename(env_final, env_tmp);
                    let _ = fs::rename(msg_final, msg_tmp);
                }
            }
            log::error!(
                "{}: commit failed, {} messages taken back out (answered 451): {e}",
                self.queue.display(),
                published.len()
            );
        } else if published.len() > 1 {
            log::trace!("group commit of {} messages", published.len());
        }
        for r in published.into_iter().chain(flush_asked) {
            let _ = r
                .done
                .send(flushed.as_ref().map_err(|e| self.error(e)).copied());
        }
    }

    /// `SyncfsThenFolder`: makes the tmp files of every message in the
    /// batch durable with one syncfs, before any of them is renamed into
    /// `queue/`. If it fails, those messages are answered with the error
    /// (their sessions say 451 and remove the files).
    fn flush_new_files(&self, batch: &mut Vec<Request>, state: &mut State) {
        if !batch.iter().any(|r| matches!(r.op, Op::Publish { .. })) {
            return;
        }
        if let Err(e) = self.syncfs(state) {
            for r in batch.extract_if(.., |r| matches!(r.op, Op::Publish { .. })) {
                let _ = r.done.send(Err(self.error(&e)));
            }
        }
    }

    /// One syncfs of the spool's filesystem (logged when it fails).
    fn syncfs(&self, state: &mut State) -> std::io::Result<()> {
        let flushed = queue_dir(&mut state.kept, self.queue).and_then(crate::sys::syncfs);
        if let Err(e) = &flushed {
            log::error!("{}: syncfs: {e}", self.queue.display());
            state.kept = None;
        }
        flushed
    }

    /// A failed flush's error, as each session of the batch gets it.
    fn error(&self, e: &std::io::Error) -> SpoolError {
        SpoolError::io(self.queue, std::io::Error::new(e.kind(), e.to_string()))
    }

    /// The flush after a batch's renames: one syncfs (`SyncfsOnce`) or one
    /// fsync of `queue/`.
    fn flush_all(&self, state: &mut State) -> std::io::Result<()> {
        if self.order == Order::SyncfsOnce {
            self.after_flush(state, "syncfs", crate::sys::syncfs)
        } else {
            self.flush_folder(state)
        }
    }

    /// One fsync of `queue/`: enough for removals, which only change names.
    fn flush_folder(&self, state: &mut State) -> std::io::Result<()> {
        self.after_flush(state, "fsync", |d| d.sync_all())
    }

    /// Runs `flush` on `queue/`, then hands the files removed so far to the
    /// recycler, or, when it failed, unlinks them (their leaving `queue/`
    /// is not known to be durable, so they are never reused).
    fn after_flush(
        &self,
        state: &mut State,
        what: &str,
        flush: impl FnOnce(&fs::File) -> std::io::Result<()>,
    ) -> std::io::Result<()> {
        state.unflushed_since = None;
        let flushed = queue_dir(&mut state.kept, self.queue).and_then(flush);
        if let Err(e) = &flushed {
            log::error!("{}: {what}: {e}", self.queue.display());
            state.kept = None;
            for p in state.freed.drain(..) {
                let _ = fs::remove_file(p);
            }
        } else if !state.freed.is_empty() {
            self.recycler.give(std::mem::take(&mut state.freed));
        }
        flushed
    }
}

/// `queue/`, opened once and kept (see `State::kept`).
fn queue_dir<'a>(kept: &'a mut Option<fs::File>, queue: &Path) -> std::io::Result<&'a fs::File> {
    let dir = match kept.take() {
        Some(d) => d,
        None => fs::File::open(queue)?,
    };
    Ok(kept.insert(dir))
}

/// The renames of one request. Publish: body first, then envelope (the
/// envelope's rename is the commit). Remove: envelope first, then body.
fn apply(op: &Op, recycler: &Recycler, freed: &mut Vec<PathBuf>) -> Result<(), SpoolError> {
    match op {
        Op::Publish {
            msg_tmp,
            env_tmp,
            msg_final,
            env_final,
            ..
        } => fsutil::publish(msg_tmp, env_tmp, msg_final, env_final)
            .map_err(|e| SpoolError::io(env_final, e)),
        Op::Remove { env, msg, .. } => {
            for p in [env, msg] {
                if let Some(slot) = recycler.slot() {
                    // never over a name in `free/`: one a previous run
                    // with the same pid left there (`clean_free` keeps a
                    // name whose inode `queue/` also links)
                    match crate::sys::rename_noreplace(p, &slot) {
                        Ok(()) => {
                            freed.push(slot);
                            continue;
                        }
                        Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                        Err(_) => {} // fall back to unlink
                    }
                }
                match fs::remove_file(p) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(SpoolError::io(p, e)),
                }
            }
            Ok(())
        }
        Op::Flush | Op::Forget { .. } => Ok(()),
    }
}
