//! Requests to the running server, both sides: how `queue flush`,
//! `queue release` and `send` ask it to attempt messages now, `send`
//! tells it of a message it queued (the server logs its `queued` line),
//! and the changing `queue` commands tell it a message's state changed
//! (so its queue gauges are right at once). A request is a file in
//! `flush.d/`, one item a line (`*` for everything, `ID`, `new ID`,
//! `changed ID`, `deleted ID`, `returned ID [DSNID]`), written atomically through `tmp/`; the server reads it,
//! acts on it, publishes its gauges, and only then removes it, which is
//! how the asking side knows it was done. `touch SPOOL/flush` asks for
//! everything.
//!
//! Crash story: a request is a whole file or none (rename); one the
//! server dies before removing is read by the next server at start-up,
//! when it is stale but harmless (it makes messages due now, logs a
//! `queued` line again, or looks at a message's state again).

use std::collections::HashSet;
use std::fs;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use super::{fsutil, QueueId, Spool, SpoolError};

/// A request left for the server.
#[derive(Debug)]
pub struct FlushRequest {
    path: PathBuf,
}

impl FlushRequest {
    /// The server has read (and removed) the request.
    pub fn picked_up(&self) -> bool {
        !self.path.exists()
    }

    /// Waits up to `limit` for the server to have done the request.
    pub fn wait_done(&self, limit: Duration) -> bool {
        let until = Instant::now() + limit;
        while !self.picked_up() {
            if Instant::now() >= until {
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        true
    }

    /// Takes back a request nobody picked up.
    pub fn withdraw(self) {
        let _ = fs::remove_file(&self.path);
    }
}

/// One line of a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Request {
    /// `*`: every waiting message due now.
    All,
    /// `ID`: this message due now.
    Due(QueueId),
    /// `new ID`: queued outside the server (`send`): log it, due now.
    New(QueueId),
    /// `changed ID`: held by the operator: look at its state again.
    Changed(QueueId),
    /// `deleted ID`: removed by `queue delete` (logged by the server).
    Deleted(QueueId),
    /// `returned ID [DSNID]`: returned to its sender by `queue bounce`,
    /// with the DSN queued for it, if any (logged by the server).
    Returned(QueueId, Option<QueueId>),
}

impl Request {
    fn line(self) -> String {
        match self {
            Request::All => "*".into(),
            Request::Due(id) => id.to_string(),
            Request::New(id) => format!("new {id}"),
            Request::Changed(id) => format!("changed {id}"),
            Request::Deleted(id) => format!("deleted {id}"),
            Request::Returned(id, None) => format!("returned {id}"),
            Request::Returned(id, Some(dsn)) => format!("returned {id} {dsn}"),
        }
    }

    /// The message this request says the operator finished (deleted,
    /// or returned to its sender).
    fn finished(&self) -> Option<QueueId> {
        match *self {
            Request::Deleted(id) | Request::Returned(id, _) => Some(id),
            _ => None,
        }
    }

    fn parse(line: &str) -> Option<Request> {
        let id = |w: &str| QueueId::parse(w.trim());
        match line.split_once(' ') {
            None if line == "*" => Some(Request::All),
            None => id(line).map(Request::Due),
            Some(("new", w)) => id(w).map(Request::New),
            Some(("changed", w)) => id(w).map(Request::Changed),
            Some(("deleted", w)) => id(w).map(Request::Deleted),
            Some(("returned", w)) => match w.split_once(' ') {
                None => id(w).map(|i| Request::Returned(i, None)),
                Some((a, b)) => Some(Request::Returned(id(a)?, Some(id(b)?))),
            },
            Some(_) => None,
        }
    }
}

/// The requests the server took: acted on, then [`Taken::done`].
#[derive(Debug, Default)]
pub struct Taken {
    pub requests: Vec<Request>,
    /// Each request file with the messages it says the operator
    /// finished (`deleted ID`, `returned ID`).
    files: Vec<(PathBuf, Vec<QueueId>)>,
    /// Finished messages whose `done` record could not be written
    /// ([`Taken::keep_for`]).
    unforgotten: HashSet<QueueId>,
}

impl Taken {
    /// Message `id`'s `done` record could not be written: the files that
    /// name it are kept by [`Taken::done`], since only they keep it out
    /// of the commit log's replay at the next start
    /// (`Spool::finished_by_operator`).
    pub fn keep_for(&mut self, id: QueueId) {
        self.unforgotten.insert(id);
    }

    /// Removes the request files (their askers see them done), but for
    /// those [`Taken::keep_for`] keeps. Returns the files kept.
    pub fn done(self) -> Vec<PathBuf> {
        let mut kept = Vec::new();
        for (f, finished) in self.files {
            if finished.iter().any(|id| self.unforgotten.contains(id)) {
                kept.push(f);
            } else {
                let _ = fs::remove_file(f);
            }
        }
        kept
    }
}

impl Spool {
    /// Asks the running server to attempt `ids` now (all waiting messages
    /// when empty).
    pub fn request_flush(&self, ids: &[QueueId]) -> Result<FlushRequest, SpoolError> {
        let requests: Vec<Request> = if ids.is_empty() {
            vec![Request::All]
        } else {
            ids.iter().map(|&id| Request::Due(id)).collect()
        };
        self.request(&requests)
    }

    /// Leaves `requests` for the server (read at its next tick, or at its
    /// start when none runs).
    pub fn request(&self, requests: &[Request]) -> Result<FlushRequest, SpoolError> {
        let mut text = String::new();
        for r in requests {
            text.push_str(&r.line());
            text.push('\n');
        }
        let name = format!("{}-{}", QueueId::generate(), std::process::id());
        fsutil::write_atomic(&self.tmp, &self.flush, &name, text.as_bytes())
            .map_err(|e| SpoolError::io(&self.flush, e))?;
        Ok(FlushRequest {
            path: self.flush.join(name),
        })
    }

    /// Takes the pending requests (the server's side), the `flush`
    /// trigger file included (as [`Request::All`]), but for the files in
    /// `kept` (taken before and kept by [`Taken::done`]); the files stay
    /// until [`Taken::done`].
    pub fn take_flush_requests(&self, kept: &HashSet<PathBuf>) -> Taken {
        let mut out = Taken::default();
        if fs::remove_file(self.root.join("flush")).is_ok() {
            out.requests.push(Request::All);
        }
        for (path, requests) in self.pending_requests() {
            if kept.contains(&path) {
                continue;
            }
            let finished = requests.iter().filter_map(|r| r.finished()).collect();
            out.requests.extend(requests);
            out.files.push((path, finished));
        }
        out
    }

    /// Every request file in `flush.d/` with the requests it holds, the
    /// files left where they are.
    fn pending_requests(&self) -> Vec<(PathBuf, Vec<Request>)> {
        let Ok(entries) = fs::read_dir(&self.flush) else {
            return Vec::new();
        };
        entries
            .filter_map(Result::ok)
            .map(|e| {
                let path = e.path();
                let text = fs::read_to_string(&path).unwrap_or_default();
                let requests = text
                    .lines()
                    .map(str::trim)
                    .filter_map(Request::parse)
                    .collect();
                (path, requests)
            })
            .collect()
    }

    /// The messages pending requests say the operator finished
    /// (`deleted ID`, `returned ID`), the requests left where they are.
    /// The commit log's replay at start-up skips them
    /// (`open_commit_log`).
    pub(crate) fn finished_by_operator(&self) -> HashSet<QueueId> {
        self.pending_requests()
            .into_iter()
            .flat_map(|(_, requests)| requests)
            .filter_map(|r| r.finished())
            .collect()
    }

    /// Whether message `id` is committed in the queue (its envelope is
    /// there).
    pub fn is_queued(&self, id: QueueId) -> bool {
        self.env_path(id).exists()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Both sides: a request names its ids (or everything), is picked up
    /// by being taken, and the trigger file asks for everything.
    #[test]
    fn requests_are_taken_once() {
        let dir =
            std::env::temp_dir().join(format!("smtp-relay-flush-test-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let spool = Spool::open(&dir).unwrap();
        let id = QueueId::generate();
        let one = spool.request_flush(&[id]).unwrap();
        let all = spool.request_flush(&[]).unwrap();
        let other = spool
            .request(&[
                Request::New(id),
                Request::Changed(id),
                Request::Deleted(id),
                Request::Returned(id, None),
                Request::Returned(id, Some(id)),
            ])
            .unwrap();
        let none = HashSet::new();
        let taken = spool.take_flush_requests(&none);
        // taken, not done yet: the askers wait
        assert!(!one.picked_up() && !all.picked_up() && !other.picked_up());
        let mut got = taken.requests.clone();
        got.sort();
        assert_eq!(
            got,
            vec![
                Request::All,
                Request::Due(id),
                Request::New(id),
                Request::Changed(id),
                Request::Deleted(id),
                Request::Returned(id, None),
                Request::Returned(id, Some(id)),
            ]
        );
        assert!(taken.done().is_empty());
        assert!(one.picked_up() && all.picked_up() && other.picked_up());
        assert!(one.wait_done(Duration::ZERO));
        assert!(spool.take_flush_requests(&none).requests.is_empty());
        fs::write(dir.join("flush"), b"").unwrap();
        assert_eq!(
            spool.take_flush_requests(&none).requests,
            vec![Request::All]
        );
        let left = spool.request_flush(&[id]).unwrap();
        assert!(!left.wait_done(Duration::from_millis(50)));
        left.withdraw();
        assert!(spool.take_flush_requests(&none).requests.is_empty());

        // a deletion whose done record failed: its file is kept, not
        // taken again in this run, and still read by the next start
        let deleted = QueueId::generate();
        let kept_req = spool.request(&[Request::Deleted(deleted)]).unwrap();
        let plain = spool.request_flush(&[id]).unwrap();
        let mut taken = spool.take_flush_requests(&none);
        taken.keep_for(deleted);
        let kept: HashSet<PathBuf> = taken.done().into_iter().collect();
        assert_eq!(kept, HashSet::from([kept_req.path.clone()]));
        assert!(plain.picked_up() && !kept_req.picked_up());
        assert!(spool.take_flush_requests(&kept).requests.is_empty());
        assert!(spool.finished_by_operator().contains(&deleted));
        let _ = fs::remove_file(&kept_req.path);
        let _ = fs::remove_dir_all(&dir);
    }
}
