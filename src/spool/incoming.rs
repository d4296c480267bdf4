//! `Incoming`: a message being received, not yet promised to anyone.
//!
//! Crash story, step by step (what a crash at each point leaves behind):
//! 1. `tmp/ID.msg` created (or a recycled file taken, written where it
//!    lies in `free/`) and written: only tmp files; start-up empties
//!    `tmp/` and `free/`. The client got no 250 and will retry.
//! 2. The envelope written to `tmp/` (or a recycled file), recording the
//!    server run, the body's length and CRC-32 and its own CRC-32
//!    (`Integrity`); with `--sync fsync` both files are fdatasynced here:
//!    same as 1.
//! 3. `ID.msg` renamed into `queue/`: a body without an envelope; start-up
//!    deletes it (no 250 was sent).
//! 4. `ID.env` renamed into `queue/`: the message exists for every reader
//!    of `queue/`. Then the committer's flush makes the files and both
//!    names durable (`committer::Order`: on ext4 with a journal one syncfs
//!    after the renames; elsewhere the files were flushed before them and
//!    `queue/` is fsynced after), and only then is the client answered
//!    250: **the commit instant** is the end of that flush. `kill -9`
//!    anywhere in 3 or 4 loses nothing (the page cache holds the files):
//!    the message is delivered, and the client, which got no 250, may
//!    send it again (a duplicate, never a loss). A failed flush takes the
//!    message back out of `queue/` before the 451. With the single
//!    syncfs, a power loss during it can leave names whose bytes never
//!    reached the disk (zeros, a recycled file's earlier message): an
//!    envelope that does not parse, names another id or is not what its
//!    own CRC-32 says goes to `corrupt/` at the next start
//!    (`Spool::load`); a body that is not what its envelope recorded is
//!    found by the first claim in the next run and moved to `corrupt/`
//!    unsent (`claim.rs`). None of them had a 250.
//!
//! Dropping an `Incoming` that was not committed removes its files, so an
//! interrupted DATA (client gone, timeout, too big) leaves nothing.

use std::fs::{self, File};
use std::io::{self, BufWriter, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use super::envelope::{Envelope, Integrity};
use super::fsutil;
use super::queue_id::QueueId;
use super::{Spool, SpoolError};

pub struct Incoming<'a> {
    spool: &'a Spool,
    id: QueueId,
    /// Where the body is written until the commit: `tmp/ID.msg`, or a
    /// recycled file in `free/` (`Recycler::take`).
    msg_path: PathBuf,
    /// Where the envelope was written, once `commit` made it.
    env_path: Option<PathBuf>,
    file: Option<BufWriter<File>>,
    written: u64,
    /// CRC-32 of everything written, while the file is just that (for
    /// the envelope's `Integrity`); `None` after a rewrite, when the
    /// commit reads the file back instead.
    crc: Option<crc32fast::Hasher>,
    /// A copy of everything written while it is at most
    /// `commit_log::BODY_MAX` octets and the spool logs commits: the
    /// committer may make such a message durable with one flush
    /// (`commit_log.rs`). `None` past that size and after any rewrite.
    copy: Option<Vec<u8>>,
    committed: bool,
}

impl<'a> Incoming<'a> {
    pub(super) fn create(spool: &'a Spool) -> Result<Incoming<'a>, SpoolError> {
        // ids are unique (see queue_id.rs); create_new is the last guard
        for _ in 0..100 {
            let id = QueueId::generate();
            let (file, msg_path) = match spool.recycler().and_then(|r| r.take()) {
                Some(taken) => taken,
                None => {
                    let path = spool.tmp_dir().join(format!("{id}.msg"));
                    match fsutil::create_new(&path) {
                        Ok(f) => (f, path),
                        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                        Err(e) => return Err(SpoolError::io(path, e)),
                    }
                }
            };
            return Ok(Incoming {
                spool,
                id,
                msg_path,
                env_path: None,
                file: Some(BufWriter::with_capacity(64 * 1024, file)),
                written: 0,
                crc: Some(crc32fast::Hasher::new()),
                copy: spool.logs_commits().then(|| Vec::with_capacity(16 * 1024)),
                committed: false,
            });
        }
        Err(SpoolError::io(
            spool.tmp_dir(),
            io::Error::other("could not find a free queue id"),
        ))
    }

    pub fn id(&self) -> QueueId {
        self.id
    }

    /// Where the body is being written (tests).
    #[cfg(test)]
    pub(crate) fn body_path(&self) -> &std::path::Path {
        &self.msg_path
    }

    /// Octets written so far.
    pub fn written(&self) -> u64 {
        self.written
    }

    /// Everything written so far, read back from its file (checks
    /// that need the whole message, such as DKIM verification).
    pub fn read_back(&mut self) -> io::Result<Vec<u8>> {
        use std::os::unix::fs::FileExt;
        let w = self
            .file
            .as_mut()
            .ok_or_else(|| io::Error::other("message already committed"))?;
        w.flush()?;
        let len = usize::try_from(self.written).map_err(io::Error::other)?;
        let mut buf = vec![0; len];
        // our file is open for writing only: read it by its name (a
        // recycled file may be longer: only what this message wrote)
        File::open(&self.msg_path)?.read_exact_at(&mut buf, 0)?;
        Ok(buf)
    }

    /// Replaces everything written so far with `content` (a header added
    /// or removed before the commit). Still not in `queue/`: a crash
    /// here is step 1 of the module header.
    pub fn replace(&mut self, content: &[u8]) -> io::Result<()> {
        let w = self
            .file
            .as_mut()
            .ok_or_else(|| io::Error::other("message already committed"))?;
        // BufWriter's seek flushes its buffer first
        w.seek(SeekFrom::Start(0))?;
        w.write_all(content)?;
        // commit cuts the file to this length
        self.written = content.len() as u64;
        self.copy = self
            .copy
            .take()
            .filter(|_| content.len() <= super::commit_log::BODY_MAX)
            .map(|mut c| {
                c.clear();
                c.extend_from_slice(content);
                c
            });
        let mut crc = crc32fast::Hasher::new();
        crc.update(content);
        self.crc = Some(crc);
        Ok(())
    }

    /// A reader of the message as written so far, from its first octet
    /// (milters read the received message back before the commit).
    pub fn reader(&mut self) -> io::Result<File> {
        self.flush()?;
        // a recycled file may be longer than this message: cut it first,
        // or a milter would read another message's tail (commit cuts it
        // to the same length anyway)
        if let Some(w) = self.file.as_ref() {
            w.get_ref().set_len(self.written)?;
        }
        File::open(&self.msg_path)
    }

    /// Replaces the message with what `fill` writes (a milter changed
    /// it): written to a new file in `tmp/` (`own_tmp_path`), then
    /// renamed over the body's file, so a failure leaves the received
    /// message as it was. Nothing is promised yet: the commit that
    /// follows syncs the new file.
    pub fn rewrite(
        &mut self,
        fill: impl FnOnce(&mut dyn Write) -> io::Result<()>,
    ) -> io::Result<()> {
        let new = self.own_tmp_path("new");
        // only a file this call made is removed on failure
        let created = fsutil::create_new(&new)?;
        let result = (|| {
            let mut w = BufWriter::with_capacity(64 * 1024, created);
            fill(&mut w)?;
            w.flush()?;
            let f = w.into_inner().map_err(|e| e.into_error())?;
            let len = f.metadata()?.len();
            fs::rename(&new, &self.msg_path)?;
            Ok((f, len))
        })();
        match result {
            Ok((f, len)) => {
                self.file = Some(BufWriter::with_capacity(64 * 1024, f));
                self.written = len;
                self.crc = None;
                self.copy = None;
                Ok(())
            }
            Err(e) => {
                let _ = fs::remove_file(&new);
                Err(e)
            }
        }
    }

    /// Puts header lines above everything written so far: `make` is shown
    /// the message as written and returns the lines (CRLF-ended), or
    /// `None` for none. For a DKIM-Signature (`dkim.rs`), which can only
    /// be computed once the whole message is in. The message is read back
    /// into memory (it was just written: page cache) and written again
    /// behind the lines, in the same file: still step 1 of the crash
    /// story, nothing is promised yet.
    pub fn prepend_with(&mut self, make: impl FnOnce(&[u8]) -> Option<Vec<u8>>) -> io::Result<()> {
        use std::os::unix::fs::FileExt;
        // flushed: the writer's buffer is empty, the file is the message
        let message = self.read_back()?;
        let Some(lines) = make(&message) else {
            return Ok(());
        };
        let w = self
            .file
            .as_mut()
            .ok_or_else(|| io::Error::other("message already committed"))?;
        let f = w.get_mut();
        f.write_all_at(&lines, 0)?;
        f.write_all_at(&message, lines.len() as u64)?;
        self.written += lines.len() as u64;
        self.copy = None;
        let mut crc = crc32fast::Hasher::new();
        crc.update(&lines);
        crc.update(&message);
        self.crc = Some(crc);
        f.seek(SeekFrom::Start(self.written))?;
        Ok(())
    }

    fn tmp_path(&self, ext: &str) -> PathBuf {
        self.spool.tmp_dir().join(format!("{}.{ext}", self.id))
    }

    /// A name in `tmp/` for a file of this message other than a body
    /// named by its id (the envelope, a rewrite), with the process id in
    /// it: a body in a reused file reserves no `tmp/ID.msg`, so another
    /// process (`send`) may draw the same queue id meanwhile, and must
    /// never meet these files. Only the names in `queue/` carry the id
    /// alone (a clash there is a reroll, `commit`).
    fn own_tmp_path(&self, ext: &str) -> PathBuf {
        self.spool
            .tmp_dir()
            .join(format!("{}.{}.{ext}", self.id, crate::sys::pid()))
    }

    /// Makes the message durable and visible to delivery, as described in
    /// the module header. On `Err` nothing was committed and the files are
    /// removed (by `Drop`). Returns the id the message was committed
    /// under: the one from `create`, unless another process committed a
    /// message with that id meanwhile (ids carry only 12 bits of the pid),
    /// in which case the message moves to a fresh id and the envelope is
    /// rewritten with it; a queued file is never replaced.
    pub fn commit(mut self, env: &Envelope) -> Result<QueueId, SpoolError> {
        let msg_tmp = self.msg_path.clone();
        let mut w = self
            .file
            .take()
            .expect("an Incoming holds its file until commit or drop");
        let whole_body = self.copy.take().filter(|c| c.len() as u64 == self.written);
        w.flush().map_err(|e| SpoolError::io(&msg_tmp, e))?;
        let f = w
            .into_inner()
            .map_err(|e| SpoolError::io(&msg_tmp, e.into_error()))?;
        // a recycled file may be longer than this message: cut it
        f.set_len(self.written)
            .map_err(|e| SpoolError::io(&msg_tmp, e))?;

        // what a load and a claim after a power loss check the files
        // against (step 4)
        let run = self.spool.run_id().map(str::to_string);
        let check = match self.crc.take() {
            Some(crc) => Integrity {
                run,
                body_len: self.written,
                body_crc32: crc.finalize(),
            },
            None => File::open(&msg_tmp)
                .and_then(|r| Integrity::of_body(r, run))
                .map_err(|e| SpoolError::io(&msg_tmp, e))?,
        };
        let text = env.to_text_with(Some(&check));
        let (mut ef, env_tmp) = match self.spool.recycler().and_then(|r| r.take()) {
            Some(taken) => taken,
            None => {
                let path = self.own_tmp_path("env");
                let f = fsutil::create_new(&path).map_err(|e| SpoolError::io(&path, e))?;
                (f, path)
            }
        };
        // from here `Drop` removes it, should the commit fail
        self.env_path = Some(env_tmp.clone());
        ef.write_all(text.as_bytes())
            .and_then(|_| ef.set_len(text.len() as u64))
            .map_err(|e| SpoolError::io(&env_tmp, e))?;
        // With `--sync syncfs` (the server's default) the committer makes
        // the files durable: one syncfs for every message of its batch
        // (`committer.rs`), instead of two fdatasyncs per message: one
        // device flush less on the path of every 250, and at 50 sessions
        // one per batch instead of one per session (a syncfs walks the
        // whole filesystem's dirty inodes: it was 11 % of the relay's CPU
        // at 50 sessions). Otherwise, and for `send`, each file is
        // fdatasynced here, before its rename.
        if !self.spool.uses_syncfs() {
            f.sync_data().map_err(|e| SpoolError::io(&msg_tmp, e))?;
            ef.sync_data().map_err(|e| SpoolError::io(&env_tmp, e))?;
        }
        drop(f);

        let mut record = whole_body.map(|body| {
            (
                self.id,
                super::commit_log::publish_record(self.id, text.as_bytes(), &body),
            )
        });
        for _ in 0..MAX_REROLLS {
            match self.publish(&env_tmp, record.take()) {
                Err(SpoolError::Io { source, .. }) if fsutil::is_collision(&source) => {
                    self.reroll(env, &check, &mut ef, &env_tmp)?;
                }
                other => return other,
            }
        }
        Err(SpoolError::io(
            self.spool.queue_dir(),
            io::Error::other("could not find a free queue id"),
        ))
    }

    /// Steps 3 and 4 of the module header, through the group committer
    /// when the server runs one.
    fn publish(
        &mut self,
        env_tmp: &Path,
        record: Option<(QueueId, Vec<u8>)>,
    ) -> Result<QueueId, SpoolError> {
        let id = self.id;
        let queue = self.spool.queue_dir();
        let msg_tmp = self.msg_path.clone();
        let msg_final = queue.join(format!("{id}.msg"));
        let env_final = queue.join(format!("{id}.env"));
        if let Some(c) = self.spool.committer() {
            c.commit(msg_tmp, env_tmp.to_path_buf(), msg_final, env_final, record)?;
            self.committed = true;
            return Ok(id);
        }
        fsutil::publish(&msg_tmp, env_tmp, &msg_final, &env_final)
            .map_err(|e| SpoolError::io(&env_final, e))?;
        // From here the message exists. If the directory fsync fails we
        // cannot promise it survives a crash, so we answer 4xx; the message
        // may still be delivered (a duplicate is acceptable, a loss is not).
        self.committed = true;
        fsutil::fsync_dir(queue).map_err(|e| SpoolError::io(queue, e))?;
        Ok(id)
    }

    /// The id was taken in `queue/`: takes a fresh id and rewrites the
    /// envelope (the only file that names it; the Received header keeps
    /// the id the message was received under). A body in `tmp/` is named
    /// by its id and moves with it (`tmp/NEW.msg` taken first reserves
    /// the id there); a reused file in `free/` and the envelope's file
    /// stay where they are. The tmp rename needs no fsync: only the final
    /// ones publish.
    fn reroll(
        &mut self,
        env: &Envelope,
        check: &Integrity,
        ef: &mut File,
        env_path: &Path,
    ) -> Result<(), SpoolError> {
        let old = self.id;
        let msg_old = self.tmp_path("msg");
        let msg_named = self.msg_path == msg_old;
        for _ in 0..MAX_REROLLS {
            self.id = QueueId::generate();
            if !msg_named {
                break;
            }
            let msg_new = self.tmp_path("msg");
            match crate::sys::rename_noreplace(&msg_old, &msg_new) {
                Ok(()) => {
                    self.msg_path = msg_new;
                    break;
                }
                Err(e) if fsutil::is_collision(&e) => {
                    self.id = old;
                    continue;
                }
                Err(e) => {
                    self.id = old;
                    return Err(SpoolError::io(&msg_new, e));
                }
            }
        }
        if self.id == old {
            return Err(SpoolError::io(
                &msg_old,
                io::Error::other("could not find a free queue id"),
            ));
        }
        log::warn!(
            "{old} queue id already taken by another process; committing as {}",
            self.id
        );
        // the envelope's file keeps its name (`own_tmp_path`, or a reused
        // file): only its text names the id
        let mut renamed = env.clone();
        renamed.id = self.id;
        let text = renamed.to_text_with(Some(check));
        ef.seek(SeekFrom::Start(0))
            .and_then(|_| ef.write_all(text.as_bytes()))
            .and_then(|_| ef.set_len(text.len() as u64))
            .and_then(|_| ef.sync_data())
            .map_err(|e| SpoolError::io(env_path, e))
    }
}

/// Fresh ids tried when a commit finds its id taken.
const MAX_REROLLS: usize = 100;

impl Write for Incoming<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let f = self
            .file
            .as_mut()
            .ok_or_else(|| io::Error::other("message already committed"))?;
        let n = f.write(buf)?;
        self.written += n as u64;
        if let Some(crc) = self.crc.as_mut() {
            crc.update(&buf[..n]);
        }
        if let Some(c) = self.copy.as_mut() {
            if c.len() + n > super::commit_log::BODY_MAX {
                self.copy = None;
            } else {
                c.extend_from_slice(&buf[..n]);
            }
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        match self.file.as_mut() {
            Some(f) => f.flush(),
            None => Ok(()),
        }
    }
}

impl Drop for Incoming<'_> {
    fn drop(&mut self) {
        drop(self.file.take());
        if self.committed {
            return;
        }
        // an uncommitted message leaves nothing behind
        let _ = fs::remove_file(&self.msg_path);
        if let Some(env) = &self.env_path {
            let _ = fs::remove_file(env);
        }
    }
}
