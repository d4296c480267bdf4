//! Reusing the files of delivered messages instead of unlinking them.
//!
//! Creating and deleting two inodes per message is much of a relay's
//! kernel time, and on ext4 without a journal inode allocation gets slower
//! the more inodes were freed in the last minutes (PERF-NOTES). So a
//! removed message's files are renamed into `free/`, and a new message
//! is written into one of them where it lies and renamed from there into
//! `queue/` by its commit; a rename allocates nothing.
//!
//! Safety argument (a journaled filesystem keeps renames atomic and
//! ordered; see `clean_free` for the unjournaled case):
//! - a file enters the free list only after the flush that made
//!   its removal from `queue/` durable (the committer does both), so no
//!   crash can bring a reused inode back under its old queue name;
//! - a reused file is overwritten from offset 0 and cut to the new length
//!   (`set_len`) before the flush that acknowledges it, so no stale byte
//!   survives in a message that got its 250; a power loss during that
//!   flush can leave the old bytes under the new name, which the body
//!   check of the first claim after the restart catches (`claim.rs`);
//! - a file in `tmp/` or `free/` is never a message (a message being
//!   received in a free file has had no 250): both are emptied at
//!   start-up, except a `free/` name whose inode is also linked in
//!   `queue/` (possible only after a power loss on an unjournaled disk),
//!   which is left alone rather than unlinked.

use std::collections::HashSet;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

#[derive(Debug)]
pub struct Recycler {
    dir: PathBuf,
    free: Mutex<Vec<PathBuf>>,
    next: AtomicU64,
    max: usize,
}

impl Recycler {
    pub fn new(dir: PathBuf, max: usize) -> Recycler {
        Recycler {
            dir,
            free: Mutex::new(Vec::new()),
            next: AtomicU64::new(0),
            max,
        }
    }
}

/// Start-up: removes leftovers in `free/` (see the module header).
pub fn clean_free(free_dir: &Path, queue: &Path) -> io::Result<usize> {
    // usually empty (a clean stop leaves nothing there): then the queue,
    // which may hold a million files, is not stat'ed one by one for
    // nothing (that was a fifth of the start-up time of a big spool)
    if fs::read_dir(free_dir)?.next().is_none() {
        return Ok(0);
    }
    let mut linked = HashSet::new();
    for e in fs::read_dir(queue)?.filter_map(Result::ok) {
        if let Ok(md) = e.metadata() {
            linked.insert(md.ino());
        }
    }
    let mut removed = 0;
    for e in fs::read_dir(free_dir)?.filter_map(Result::ok) {
        let shared = e
            .metadata()
            .map(|m| linked.contains(&m.ino()))
            .unwrap_or(true);
        if shared {
            log::warn!(
                "free/{} shares its inode with a queued file; left alone",
                e.file_name().to_string_lossy()
            );
            continue;
        }
        if fs::remove_file(e.path()).is_ok() {
            removed += 1;
        }
    }
    Ok(removed)
}

impl Recycler {
    /// A name in `free/` for a file about to be removed from `queue/`, if
    /// the free list has room; `None` means "unlink it instead".
    pub fn slot(&self) -> Option<PathBuf> {
        let len = self.free.lock().unwrap_or_else(|p| p.into_inner()).len();
        if len >= self.max {
            return None;
        }
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        Some(self.dir.join(format!("{}-{n}", crate::sys::pid())))
    }

    /// Makes files in `free/` available, after their removal from `queue/`
    /// is durable.
    pub fn give(&self, files: Vec<PathBuf>) {
        let mut free = self.free.lock().unwrap_or_else(|p| p.into_inner());
        free.extend(files);
    }

    /// Files ready for reuse.
    #[cfg(test)]
    pub(crate) fn free_len(&self) -> usize {
        self.free.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// A free file, opened for writing from offset 0 where it lies in
    /// `free/` (not truncated: the writer must `set_len` before syncing),
    /// with its path. It is taken off the free list, so it is this
    /// writer's alone; no rename: the commit renames it straight into
    /// `queue/`, and a crash before that leaves it in `free/`, which
    /// start-up empties. (It used to be renamed into `tmp/` first: one
    /// rename more per file, the two of a message 3.5 % of the relay's
    /// CPU samples at one session.)
    pub fn take(&self) -> Option<(File, PathBuf)> {
        loop {
            let path = self.free.lock().unwrap_or_else(|p| p.into_inner()).pop()?;
            match OpenOptions::new().write(true).open(&path) {
                Ok(f) => return Some((f, path)),
                Err(_) => {
                    let _ = fs::remove_file(&path);
                    continue;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// With `free/` empty the queue is not read at all (a big spool's
    /// every file was stat'ed for nothing at start-up): shown with a
    /// queue folder that does not exist. With a file in `free/`, the
    /// queue is read and the file removed.
    #[test]
    fn an_empty_free_list_skips_the_queue_scan() {
        let dir = std::env::temp_dir().join(format!("smtp-relay-recycle-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let (free, queue) = (dir.join("free"), dir.join("queue"));
        fs::create_dir_all(&free).unwrap();
        assert_eq!(clean_free(&free, &queue).unwrap(), 0);
        fs::write(free.join("1-0"), b"old").unwrap();
        assert!(clean_free(&free, &queue).is_err(), "the queue is read now");
        fs::create_dir_all(&queue).unwrap();
        assert_eq!(clean_free(&free, &queue).unwrap(), 1);
        assert!(!free.join("1-0").exists());
        let _ = fs::remove_dir_all(&dir);
    }
}
