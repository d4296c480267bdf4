//! Group commit: one thread publishes finished messages into `queue/` (and
//! removes delivered ones), and makes every change of a batch durable
//! with one flush.
//!
//! Each session writes its two tmp files, hands the pair to the committer
//! and waits. The committer takes every request waiting at that moment
//! and renames each body and then its envelope into `queue/`. Then one
//! flush makes the batch durable:
//! - `--sync syncfs` (the default): one syncfs of the spool's filesystem
//!   writes the new files' data and the folder's new names together: one
//!   device flush on the way to every 250, where flushing the files
//!   before the renames and the folder after them took two in a row. The
//!   price is that a power loss during that flush can leave a name in
//!   `queue/` over bytes that never reached the disk (a recycled file's
//!   old message, zeros). No such message was acknowledged, and none is
//!   ever sent: its envelope records the body's length and checksum and
//!   the kernel boot it was written in, and a claim after a reboot checks
//!   the body first (`claim.rs`; the crash story is in `incoming.rs`).
//! - `--sync fsync`: the sessions fdatasynced their files before handing
//!   them over, and one fsync of `queue/` makes the names durable.
//!
//! Only then is each session answered, and only then does it say 250.
//!
//! Removals (a delivered message's two files renamed into `free/`) are
//! answered as soon as their renames are done, and made durable by the
//! next batch's flush or, when no message arrives, at most
//! `REMOVAL_FLUSH_DELAY` later. Waiting for a flush of their own put a
//! device flush between every delivery and its worker's next message, and
//! made the next 250 wait behind it. The renames are done at once, so no
//! reader of `queue/` (a rescan, a queue command, a restart after
//! `kill -9`) ever sees the message again; only a power loss within that
//! delay can bring a delivered message back, to be delivered twice, as a
//! Postfix queue file unlinked without a folder fsync can. A removed
//! file is reused for a new message only after that flush.

use std::fs;
use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, Receiver, RecvTimeoutError, Sender};

use std::sync::Arc;

use super::fsutil;
use super::recycle::Recycler;
use super::SpoolError;

/// One folder change to make durable.
enum Op {
    /// A message ready to publish: its written tmp files and final names.
    Publish {
        msg_tmp: PathBuf,
        env_tmp: PathBuf,
        msg_final: PathBuf,
        env_final: PathBuf,
    },
    /// A finished message to remove, envelope first.
    Remove { env: PathBuf, msg: PathBuf },
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

/// Longest a removal waits for a batch's flush to make it durable (module
/// doc).
pub(crate) const REMOVAL_FLUSH_DELAY: Duration = Duration::from_millis(50);

impl Committer {
    /// Starts the thread for the folder `queue`.
    /// `syncfs`: the sessions left their files unflushed; one syncfs per
    /// batch flushes them with the renames (module doc).
    pub fn start(
        queue: PathBuf,
        recycler: Arc<Recycler>,
        syncfs: bool,
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
                while crate::pool::catch(what, || run(&queue, &recycler, syncfs, &rx)).is_none() {}
            })?;
        Ok(Committer { tx })
    }

    /// Publishes one message whose tmp files are written (and fdatasynced
    /// unless the committer syncfs's); returns once it is durable in
    /// `queue/`.
    pub(super) fn commit(
        &self,
        msg_tmp: PathBuf,
        env_tmp: PathBuf,
        msg_final: PathBuf,
        env_final: PathBuf,
    ) -> Result<(), SpoolError> {
        self.submit(Op::Publish {
            msg_tmp,
            env_tmp,
            msg_final,
            env_final,
        })
    }

    /// Removes a finished message; returns once it is out of `queue/`,
    /// durable within `REMOVAL_FLUSH_DELAY` (module doc).
    pub(super) fn remove(&self, env: PathBuf, msg: PathBuf) -> Result<(), SpoolError> {
        self.submit(Op::Remove { env, msg })
    }

    fn submit(&self, op: Op) -> Result<(), SpoolError> {
        let (done, done_rx) = bounded(1);
        let queue_hint = match &op {
            Op::Publish { env_final, .. } => env_final.clone(),
            Op::Remove { env, .. } => env.clone(),
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

fn run(queue: &Path, recycler: &Recycler, syncfs: bool, rx: &Receiver<Request>) {
    let mut kept: Option<fs::File> = None;
    let mut batch: Vec<Request> = Vec::with_capacity(MAX_BATCH);
    // removed files, renamed into free/, waiting for the flush that makes
    // their removal durable; since when the oldest has waited
    let mut freed: Vec<PathBuf> = Vec::new();
    let mut unflushed_since: Option<Instant> = None;
    loop {
        let first = match unflushed_since {
            None => rx.recv().ok(),
            Some(t) => match rx.recv_timeout(REMOVAL_FLUSH_DELAY.saturating_sub(t.elapsed())) {
                Ok(r) => Some(r),
                Err(RecvTimeoutError::Timeout) => None,
                Err(RecvTimeoutError::Disconnected) => {
                    // the server is stopping: its removals are made durable
                    let _ = flush(queue, &mut kept, syncfs, recycler, &mut freed);
                    return;
                }
            },
        };
        match first {
            Some(r) => batch.push(r),
            None if unflushed_since.is_none() => return,
            None => {}
        }
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(r) => batch.push(r),
                Err(_) => break,
            }
        }
        crate::fault::hit(crate::fault::Point::Commit);
        let mut published = Vec::with_capacity(batch.len());
        for r in batch.drain(..) {
            let removal = matches!(r.op, Op::Remove { .. });
            match apply(&r, recycler, &mut freed) {
                Ok(()) if removal => {
                    let _ = r.done.send(Ok(()));
                    unflushed_since.get_or_insert_with(Instant::now);
                }
                Ok(()) => published.push(r),
                Err(e) => {
                    let _ = r.done.send(Err(e));
                }
            }
        }
        let removals_due = unflushed_since.is_some_and(|t| t.elapsed() >= REMOVAL_FLUSH_DELAY);
        if published.is_empty() && !removals_due {
            continue;
        }
        unflushed_since = None;
        let flushed = flush(queue, &mut kept, syncfs, recycler, &mut freed);
        if published.len() > 1 {
            log::trace!("group commit of {} messages", published.len());
        }
        for r in published {
            let result = match &flushed {
                Ok(()) => Ok(()),
                Err(e) => Err(SpoolError::io(
                    queue,
                    std::io::Error::new(e.kind(), e.to_string()),
                )),
            };
            let _ = r.done.send(result);
        }
    }
}

/// Makes every rename so far durable (module doc), then hands the files
/// removed so far to the recycler, or, when the flush failed, unlinks
/// them (their leaving `queue/` is not known to be durable, so they are
/// never reused).
fn flush(
    queue: &Path,
    kept: &mut Option<fs::File>,
    syncfs: bool,
    recycler: &Recycler,
    freed: &mut Vec<PathBuf>,
) -> std::io::Result<()> {
    let flushed = queue_dir(kept, queue).and_then(|d| {
        if syncfs {
            crate::sys::syncfs(d)
        } else {
            d.sync_all()
        }
    });
    if let Err(e) = &flushed {
        log::error!(
            "{}: {}: {e}",
            queue.display(),
            if syncfs { "syncfs" } else { "fsync" }
        );
        *kept = None;
        for p in freed.drain(..) {
            let _ = fs::remove_file(p);
        }
    } else if !freed.is_empty() {
        recycler.give(std::mem::take(freed));
    }
    flushed
}

/// `queue/`, opened at the first batch and kept for every batch's flush
/// (an open and a close per batch less); opened again after a failure
/// dropped it.
fn queue_dir<'a>(kept: &'a mut Option<fs::File>, queue: &Path) -> std::io::Result<&'a fs::File> {
    let dir = match kept.take() {
        Some(d) => d,
        None => fs::File::open(queue)?,
    };
    Ok(kept.insert(dir))
}

/// The renames of one request. Publish: body first, then envelope (the
/// envelope's rename is the commit). Remove: envelope first, then body.
fn apply(r: &Request, recycler: &Recycler, freed: &mut Vec<PathBuf>) -> Result<(), SpoolError> {
    match &r.op {
        Op::Publish {
            msg_tmp,
            env_tmp,
            msg_final,
            env_final,
        } => fsutil::publish(msg_tmp, env_tmp, msg_final, env_final)
            .map_err(|e| SpoolError::io(env_final, e)),
        Op::Remove { env, msg } => {
            for p in [env, msg] {
                if let Some(slot) = recycler.slot() {
                    match fs::rename(p, &slot) {
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
    }
}
