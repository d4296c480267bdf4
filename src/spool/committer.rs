//! Group commit: one thread publishes finished messages into `queue/` (and
//! removes delivered ones) and fsyncs the folder once for every batch.
//!
//! Each session writes its two tmp files and hands the pair to the
//! committer and waits (with `--sync fsync` it fdatasyncs them first).
//! The committer takes every request waiting at that moment, flushes the
//! files of all of them with one syncfs (`--sync syncfs`, the default),
//! renames each body and then its envelope into `queue/`, fsyncs `queue/`
//! once, and only then answers each session, which only then says 250.
//! The crash story is the one in `incoming.rs`; batching changes nothing
//! in it, because no session is answered before the folder fsync that
//! covers its rename.

use std::fs;
use std::path::PathBuf;
use std::thread;

use crossbeam_channel::{bounded, Receiver, Sender};

use std::sync::Arc;

use super::fsutil;
use super::recycle::Recycler;
use super::SpoolError;

/// One folder change to make durable.
enum Op {
    /// A message ready to publish: its fsynced tmp files and final names.
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

/// Most requests published under one folder fsync.
const MAX_BATCH: usize = 256;

impl Committer {
    /// Starts the thread for the folder `queue`.
    /// `syncfs`: the sessions left their files unflushed; one syncfs per
    /// batch flushes them before any rename.
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

    /// Publishes one message whose tmp files are fsynced; returns once it
    /// is durable in `queue/`.
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

    /// Removes a finished message; returns once the removal is durable
    /// (so a crash cannot bring a delivered message back).
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

fn run(queue: &std::path::Path, recycler: &Recycler, syncfs: bool, rx: &Receiver<Request>) {
    let mut kept: Option<fs::File> = None;
    let mut batch: Vec<Request> = Vec::with_capacity(MAX_BATCH);
    let mut freed: Vec<PathBuf> = Vec::new();
    while let Ok(first) = rx.recv() {
        batch.push(first);
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(r) => batch.push(r),
                Err(_) => break,
            }
        }
        crate::fault::hit(crate::fault::Point::Commit);
        if syncfs {
            flush_new_files(queue, &mut kept, &mut batch);
        }
        let mut published = Vec::with_capacity(batch.len());
        for r in batch.drain(..) {
            match publish(&r, recycler, &mut freed) {
                Ok(()) => published.push(r),
                Err(e) => {
                    let _ = r.done.send(Err(e));
                }
            }
        }
        if published.is_empty() {
            continue;
        }
        let synced = queue_dir(&mut kept, queue)
            .and_then(|d| d.sync_all())
            .map_err(|e| SpoolError::io(queue, e));
        if synced.is_err() {
            kept = None;
        }
        if !freed.is_empty() {
            // reusable only once their leaving queue/ is durable
            if synced.is_ok() {
                recycler.give(std::mem::take(&mut freed));
            } else {
                for p in freed.drain(..) {
                    let _ = fs::remove_file(p);
                }
            }
        }
        if published.len() > 1 {
            log::trace!("group commit of {} messages", published.len());
        }
        for r in published {
            let result = match &synced {
                Ok(()) => Ok(()),
                Err(e) => Err(SpoolError::io(queue, std::io::Error::other(e.to_string()))),
            };
            let _ = r.done.send(result);
        }
    }
}

/// `queue/`, opened at the first batch and kept for every batch's syncfs
/// and folder fsync (two opens and closes per batch less); opened again
/// after a failure dropped it.
fn queue_dir<'a>(
    kept: &'a mut Option<fs::File>,
    queue: &std::path::Path,
) -> std::io::Result<&'a fs::File> {
    let dir = match kept.take() {
        Some(d) => d,
        None => fs::File::open(queue)?,
    };
    Ok(kept.insert(dir))
}

/// Makes the tmp files of every message in the batch durable with one
/// syncfs, before any of them is renamed into `queue/`. If it fails,
/// those messages are answered with the error (their sessions say 451
/// and remove the files) and only removals stay in the batch.
fn flush_new_files(queue: &std::path::Path, kept: &mut Option<fs::File>, batch: &mut Vec<Request>) {
    if !batch.iter().any(|r| matches!(r.op, Op::Publish { .. })) {
        return;
    }
    let flushed = queue_dir(kept, queue).and_then(crate::sys::syncfs);
    if let Err(e) = flushed {
        log::error!("{}: syncfs: {e}", queue.display());
        for r in batch.extract_if(.., |r| matches!(r.op, Op::Publish { .. })) {
            let e = std::io::Error::new(e.kind(), e.to_string());
            let _ = r.done.send(Err(SpoolError::io(queue, e)));
        }
    }
}

/// Publish: body first, then envelope (the envelope's rename is the
/// commit). Remove: envelope first, then body.
fn publish(r: &Request, recycler: &Recycler, freed: &mut Vec<PathBuf>) -> Result<(), SpoolError> {
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
