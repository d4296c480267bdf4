//! Flush requests: how `queue flush`, `queue release` and `send` ask the
//! running server to attempt messages now, both sides. A request is a
//! file in `flush.d/` (one queue id per line, `*` for everything),
//! written atomically through `tmp/`; the server reads and removes it at
//! its next look, which is how the asking side knows it was picked up.
//! `touch SPOOL/flush` asks for everything.
//!
//! Crash story: a request is a whole file or none (rename); one the
//! server dies before reading is read by the next server at start-up,
//! when it is stale but harmless (it only makes messages due now).

use std::fs;
use std::path::PathBuf;

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

    /// Takes back a request nobody picked up.
    pub fn withdraw(self) {
        let _ = fs::remove_file(&self.path);
    }
}

impl Spool {
    /// Asks the running server to attempt `ids` now (all waiting messages
    /// when empty).
    pub fn request_flush(&self, ids: &[QueueId]) -> Result<FlushRequest, SpoolError> {
        let mut text = String::new();
        if ids.is_empty() {
            text.push_str("*\n");
        }
        for id in ids {
            text.push_str(&format!("{id}\n"));
        }
        let name = format!("{}-{}", QueueId::generate(), std::process::id());
        fsutil::write_atomic(&self.tmp, &self.flush, &name, text.as_bytes())
            .map_err(|e| SpoolError::io(&self.flush, e))?;
        Ok(FlushRequest {
            path: self.flush.join(name),
        })
    }

    /// Takes the pending flush requests (the server's side), the `flush`
    /// trigger file included: `None` in the list stands for "everything".
    pub fn take_flush_requests(&self) -> Vec<Option<QueueId>> {
        let mut out = Vec::new();
        if fs::remove_file(self.root.join("flush")).is_ok() {
            out.push(None);
        }
        let Ok(entries) = fs::read_dir(&self.flush) else {
            return out;
        };
        for e in entries.filter_map(Result::ok) {
            let path = e.path();
            let text = fs::read_to_string(&path).unwrap_or_default();
            let _ = fs::remove_file(&path);
            for line in text.lines().map(str::trim) {
                if line == "*" {
                    out.push(None);
                } else if let Some(id) = QueueId::parse(line) {
                    out.push(Some(id));
                }
            }
        }
        out
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
        assert!(!one.picked_up() && !all.picked_up());
        let mut got = spool.take_flush_requests();
        got.sort();
        assert_eq!(got, vec![None, Some(id)]);
        assert!(one.picked_up() && all.picked_up());
        assert!(spool.take_flush_requests().is_empty());
        fs::write(dir.join("flush"), b"").unwrap();
        assert_eq!(spool.take_flush_requests(), vec![None]);
        let left = spool.request_flush(&[id]).unwrap();
        left.withdraw();
        assert!(spool.take_flush_requests().is_empty());
        let _ = fs::remove_dir_all(&dir);
    }
}
