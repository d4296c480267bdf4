//! The spool: the on-disk queue, and the only code that touches it: it
//! alone opens, locks, renames and removes queue files. Others change a
//! message through a `Claim` (`claim.rs`) and ask the server to flush
//! through `flush.rs`.
//!
//! Layout (all plain files, inspectable with `ls` and `cat`):
//! ```text
//! SPOOL/lock          held (flock) by the running server: one server per spool
//! SPOOL/tmp/          messages being received; emptied at start-up
//! SPOOL/free/         files of delivered messages kept for reuse; a new
//!                     message is written into one where it lies and
//!                     renamed from there into queue/ (recycle.rs);
//!                     emptied at start-up
//! SPOOL/queue/ID.msg  the message as received, our Received header first
//! SPOOL/queue/ID.env  its envelope (see `envelope.rs`), renamed in after
//!                     ID.msg is complete; the flush after it is the
//!                     commit (see `incoming.rs`)
//! SPOOL/corrupt/      envelopes that do not parse, moved aside, never deleted
//! SPOOL/flush.d/      flush requests for the running server: one file per
//!                     request, one queue id per line, `*` for everything
//! SPOOL/maildrop/     submissions of users who cannot write the queue, and
//! SPOOL/pickup/       the server's markers while it queues them (maildrop.rs)
//! SPOOL/flush         `touch` it to make every waiting message due now
//! SPOOL/throttled     destinations backing off after "421 try later" (throttled.rs)
//! ```
//! A message leaves the queue envelope first, then body, so a crash in
//! between leaves a body without envelope, which start-up removes (it was
//! already delivered or bounced).

pub mod claim;
pub mod commit_log;
pub mod committer;
pub mod envelope;
pub mod flush;
pub mod fsutil;
pub mod incoming;
pub mod maildrop;
pub mod owner;
pub mod queue_id;
pub mod recycle;
pub mod scan;
pub mod throttled;

use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

pub use claim::{Body, Claim, Claimed};
pub use envelope::{Attempt, DelayWarned, Envelope, Hold, RcptState, Recipient, Tries};
pub use flush::{FlushRequest, Request};
pub use incoming::Incoming;
pub use queue_id::QueueId;

#[derive(Debug)]
pub enum SpoolError {
    Io {
        path: PathBuf,
        source: io::Error,
    },
    Corrupt {
        id: QueueId,
        why: String,
    },
    /// Another server holds the spool lock.
    Locked(PathBuf),
    /// The spool is laid out so that using it could touch files outside
    /// it: a folder or the lock is a symbolic link, or, for a process
    /// running as root, a part of it belongs to another user.
    Unsafe {
        path: PathBuf,
        why: String,
    },
    /// No spool at this path (a queue command or `send`, which never
    /// create one).
    Missing(PathBuf),
}

impl SpoolError {
    pub fn io(path: impl AsRef<Path>, source: io::Error) -> SpoolError {
        SpoolError::Io {
            path: path.as_ref().to_path_buf(),
            source,
        }
    }

    /// Out of disk space or quota: the caller answers 452, not 451.
    pub fn is_out_of_space(&self) -> bool {
        matches!(self, SpoolError::Io { source, .. } if fsutil::is_out_of_space(source))
    }
}

impl fmt::Display for SpoolError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SpoolError::Io { path, source } => write!(f, "{}: {source}", path.display()),
            SpoolError::Corrupt { id, why } => write!(f, "{id}: corrupt envelope: {why}"),
            SpoolError::Locked(p) => write!(
                f,
                "{}: spool is locked by another running smtp-relay",
                p.display()
            ),
            SpoolError::Unsafe { path, why } => {
                write!(f, "{}: unsafe spool: {why}", path.display())
            }
            SpoolError::Missing(p) => write!(
                f,
                "{}: no spool here (only `smtp-relay serve` creates one; give --spool, or set spool in the config file)",
                p.display()
            ),
        }
    }
}

impl std::error::Error for SpoolError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            SpoolError::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}

/// The spool's folders, each a real folder (never a symbolic link).
pub(crate) const SUBDIRS: [&str; 6] = ["tmp", "queue", "corrupt", "flush.d", "free", "pickup"];

/// Most files kept in `free/` for reuse (two per message).
const RECYCLE_MAX: usize = 4096;

/// Held by the running server; released when dropped or when the process
/// dies (flock), so a crash never leaves the spool locked.
pub struct SpoolLock {
    _file: File,
}

#[derive(Debug, Clone)]
pub struct Spool {
    root: PathBuf,
    tmp: PathBuf,
    queue: PathBuf,
    corrupt: PathBuf,
    flush: PathBuf,
    /// Group commit (the server's); without it each commit fsyncs alone.
    committer: Option<committer::Committer>,
    /// Files of delivered messages, reused by new ones (with the committer).
    recycler: Option<std::sync::Arc<recycle::Recycler>>,
    free: PathBuf,
    syncfs: bool,
    /// The committer has a commit log (`commit_log.rs`).
    logging: bool,
    /// This run's id, made at open (`new_run_id`), recorded in every new
    /// envelope's `Integrity`.
    run: Option<std::sync::Arc<str>>,
}

/// A queued message as start-up recovery hands it to the scheduler: its
/// id and when it is due, nothing more. Keeping whole envelopes of a big
/// spool until the scheduler has taken them cost about 2 KB per message
/// of resident memory that the allocator never gave back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Queued {
    pub id: QueueId,
    pub next_try: u64,
}

/// What [`Spool::load_recovered`] read: messages handed over, corrupt
/// envelopes moved aside, and the first error other than those.
#[derive(Debug, Default)]
pub struct Loaded {
    pub queued: usize,
    pub corrupt_moved: usize,
    pub error: Option<SpoolError>,
}

/// What start-up recovery found and did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Recovery {
    pub queued: usize,
    pub tmp_removed: usize,
    pub orphans_removed: usize,
    pub corrupt_moved: usize,
}

impl Spool {
    /// Opens the spool under `root`, creating it and its folders if
    /// needed (`serve`). Refuses folders that are symbolic links, and,
    /// when running as root, a spool that belongs to another user (root
    /// would act in folders that user can change under it: use `--user`).
    pub fn open(root: &Path) -> Result<Spool, SpoolError> {
        fsutil::ensure_dir(root).map_err(|e| SpoolError::io(root, e))?;
        Spool::open_dirs(root)
    }

    /// Opens an existing spool (queue commands and `send`): a missing one
    /// is [`SpoolError::Missing`], never created.
    pub fn open_existing(root: &Path) -> Result<Spool, SpoolError> {
        match fs::symlink_metadata(root.join("queue")) {
            Ok(_) => Spool::open_dirs(root),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                Err(SpoolError::Missing(root.to_path_buf()))
            }
            Err(e) => Err(SpoolError::io(root, e)),
        }
    }

    fn open_dirs(root: &Path) -> Result<Spool, SpoolError> {
        let spool = Spool {
            root: root.to_path_buf(),
            tmp: root.join("tmp"),
            queue: root.join("queue"),
            corrupt: root.join("corrupt"),
            flush: root.join("flush.d"),
            committer: None,
            recycler: None,
            free: root.join("free"),
            syncfs: false,
            logging: false,
            run: new_run_id().map(Into::into),
        };
        let as_root = crate::sys::is_root();
        let md = fs::metadata(root).map_err(|e| SpoolError::io(root, e))?;
        if as_root {
            not_foreign(root, &md)?;
        }
        for name in SUBDIRS {
            let d = root.join(name);
            match fs::symlink_metadata(&d) {
                Ok(md) => {
                    let kind = if md.file_type().is_symlink() {
                        crate::sys::FileKind::Symlink
                    } else if md.is_dir() {
                        crate::sys::FileKind::Dir
                    } else {
                        crate::sys::FileKind::Other
                    };
                    owner::check_dir_kind(&d, kind)?;
                    if as_root {
                        not_foreign(&d, &md)?;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    fsutil::ensure_dir(&d).map_err(|e| SpoolError::io(&d, e))?
                }
                Err(e) => return Err(SpoolError::io(&d, e)),
            }
        }
        Ok(spool)
    }

    /// Routes commits through a group-commit thread (see `committer.rs`).
    /// `syncfs`: the committer flushes the files of every message in its
    /// batch with one syncfs of the spool's filesystem, instead of an
    /// fdatasync per file in its session; on ext4 with a journal that one
    /// syncfs, after the renames, is the whole commit (see
    /// `committer::Order`).
    pub fn start_committer(&mut self, syncfs: bool) -> Result<(), SpoolError> {
        let order = if !syncfs {
            committer::Order::Folder
        } else if crate::sys::journaled_ext4(&self.queue) {
            committer::Order::SyncfsOnce
        } else {
            committer::Order::SyncfsThenFolder
        };
        log::info!(
            "spool {}: {}",
            self.root.display(),
            match order {
                committer::Order::SyncfsOnce =>
                    "ext4 with a journal: one syncfs per group commit, after the renames",
                committer::Order::SyncfsThenFolder =>
                    "no journal that orders names behind data (or not ext4): one syncfs per group commit before the renames, one fsync of queue/ after",
                committer::Order::Folder => "an fdatasync per file, one fsync of queue/ per group commit",
            }
        );
        self.start_committer_with(order, committer::REMOVAL_FLUSH_DELAY)
    }

    /// `start_committer` with the order and removal delay given.
    pub(crate) fn start_committer_with(
        &mut self,
        order: committer::Order,
        removal_delay: std::time::Duration,
    ) -> Result<(), SpoolError> {
        self.syncfs = order.flushes_files();
        let log = if self.syncfs {
            self.open_commit_log()?
        } else {
            // `--sync fsync`: a log left by a run with syncfs is replayed
            // once and removed (kept, a later run would replay it again,
            // bringing back what was delivered in between)
            if self.has_commit_log() {
                if let Some(log) = self.open_commit_log()? {
                    log.discard();
                }
            }
            None
        };
        self.logging = log.is_some();
        let recycler = std::sync::Arc::new(recycle::Recycler::new(self.free.clone(), RECYCLE_MAX));
        let c = committer::Committer::start(
            self.queue.clone(),
            recycler.clone(),
            order,
            removal_delay,
            log,
        )
        .map_err(|e| SpoolError::io(&self.queue, e))?;
        self.committer = Some(c);
        self.recycler = Some(recycler);
        Ok(())
    }

    /// Opens the commit log (`commit_log.rs`) and restores into `queue/`
    /// what its newest records hold and `queue/` lost (a crash before a
    /// checkpoint); before anything reads the queue.
    /// A log that cannot be made (a spool filesystem too small for it) is
    /// done without: every batch then takes the flushes.
    fn open_commit_log(&self) -> Result<Option<commit_log::CommitLog>, SpoolError> {
        let path = self.root.join(commit_log::FILE_NAME);
        let (mut log, logged) = match commit_log::CommitLog::open(&self.root) {
            Ok(opened) => opened,
            Err(e) if !path.exists() => {
                log::warn!(
                    "{}: cannot make it ({e}): every group commit takes its flushes",
                    path.display()
                );
                return Ok(None);
            }
            // one that exists may hold acknowledged messages: never
            // started past
            Err(e) => return Err(SpoolError::io(&path, e)),
        };
        // a message the operator deleted or returned (`queue delete`,
        // `queue bounce`) after it was logged, whose request the server
        // has not taken yet (it crashed, or none ran), is finished: the
        // replay must not bring it back
        let finished = self.finished_by_operator();
        let logged: Vec<commit_log::Logged> = logged
            .into_iter()
            .filter(|m| QueueId::parse(&m.id).is_none_or(|id| !finished.contains(&id)))
            .collect();
        let restored = commit_log::restore(&self.tmp, &self.queue, &logged)
            .map_err(|e| SpoolError::io(&self.queue, e))?;
        log.begin_epoch().map_err(|e| SpoolError::io(&path, e))?;
        if restored > 0 {
            log::warn!(
                "{}: {restored} message(s) restored into queue/ from the commit log",
                path.display()
            );
        }
        Ok(Some(log))
    }

    /// Whether the spool has a commit log (one a server made, maybe with
    /// records a replay brings back).
    pub fn has_commit_log(&self) -> bool {
        self.root.join(commit_log::FILE_NAME).exists()
    }

    /// Whether commits go through the commit log when they can (the
    /// sessions then hand their records to the committer).
    pub(crate) fn logs_commits(&self) -> bool {
        self.logging
    }

    /// Makes the removals the committer has not flushed yet durable (the
    /// server is stopping; see `committer.rs`). Without a committer every
    /// removal was flushed already.
    pub fn flush_removals(&self) -> Result<(), SpoolError> {
        match &self.committer {
            Some(c) => c.flush(),
            None => Ok(()),
        }
    }

    /// The operator finished `id` outside the server (`queue delete`,
    /// `queue bounce`): the commit log, if the server keeps one, is told,
    /// so that a crash and the replay after it do not bring the message
    /// back (`Committer::forget`).
    pub fn forget_logged(&self, id: QueueId) -> Result<(), SpoolError> {
        match &self.committer {
            Some(c) if self.logging => c.forget(id),
            _ => Ok(()),
        }
    }

    pub(crate) fn committer(&self) -> Option<&committer::Committer> {
        self.committer.as_ref()
    }

    /// The committer flushes new messages' files (`start_committer`
    /// with `syncfs`): the writer leaves them unflushed.
    pub(crate) fn uses_syncfs(&self) -> bool {
        self.syncfs
    }

    /// This run's id, `None` when none could be made (`new_run_id`).
    pub(crate) fn run_id(&self) -> Option<&str> {
        self.run.as_deref()
    }

    pub(crate) fn recycler(&self) -> Option<&recycle::Recycler> {
        self.recycler.as_deref()
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn tmp_dir(&self) -> &Path {
        &self.tmp
    }

    pub fn queue_dir(&self) -> &Path {
        &self.queue
    }

    pub fn corrupt_dir(&self) -> &Path {
        &self.corrupt
    }

    pub fn flush_dir(&self) -> &Path {
        &self.flush
    }

    /// Where message `id`'s body lies. Only the spool opens it: others
    /// read a body through a `Claim` or `read_body`.
    pub fn msg_path(&self, id: QueueId) -> PathBuf {
        self.queue.join(format!("{id}.msg"))
    }

    /// Where message `id`'s envelope lies; read it with `load` or a
    /// `Claim`.
    pub fn env_path(&self, id: QueueId) -> PathBuf {
        self.queue.join(format!("{id}.env"))
    }

    /// Takes the server's exclusive lock without waiting.
    pub fn lock(&self) -> Result<SpoolLock, SpoolError> {
        let path = self.root.join("lock");
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&path)
            .map_err(|e| owner::unsafe_or_io(&path, e))?;
        match file.try_lock() {
            Ok(()) => Ok(SpoolLock { _file: file }),
            Err(fs::TryLockError::WouldBlock) => Err(SpoolError::Locked(path)),
            Err(fs::TryLockError::Error(e)) => Err(SpoolError::io(&path, e)),
        }
    }

    /// True while a server holds the lock (for the queue commands).
    pub fn is_locked(&self) -> bool {
        matches!(self.lock(), Err(SpoolError::Locked(_)))
    }

    /// Starts receiving a new message (into `tmp/`, or a reused file in
    /// `free/`).
    pub fn incoming(&self) -> Result<Incoming<'_>, SpoolError> {
        Incoming::create(self)
    }

    /// Start-up recovery in one go (tests and tools); call only while
    /// holding the lock. [`Spool::recover_names`], then
    /// [`Spool::load_recovered`]: the queued messages by id.
    pub fn recover(&self, lock: &SpoolLock) -> Result<(Vec<Queued>, Recovery), SpoolError> {
        let (ids, mut rec) = self.recover_names(lock)?;
        let queued = std::sync::Mutex::new(Vec::with_capacity(ids.len()));
        let loaded = self.load_recovered(&ids, &|batch| {
            queued
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .extend(batch);
            true
        });
        if let Some(e) = loaded.error {
            return Err(e);
        }
        let mut queued = queued.into_inner().unwrap_or_else(|p| p.into_inner());
        queued.sort_by_key(|q| q.id);
        rec.corrupt_moved += loaded.corrupt_moved;
        rec.queued = queued.len();
        Ok((queued, rec))
    }

    /// The quick part of start-up recovery, from file names alone; call
    /// only while holding the lock, before anything else writes the
    /// queue. Empties `tmp/`, removes bodies without an envelope and
    /// envelopes without a body (a message finished but for that file;
    /// one that does not parse goes to `corrupt/`), seeds the id
    /// generator past every id present, and returns the ids of complete
    /// messages, sorted, for [`Spool::load_recovered`]. No envelope of a
    /// complete message is opened: that is what takes time in a big spool,
    /// and the server does it while already accepting mail.
    pub fn recover_names(&self, _lock: &SpoolLock) -> Result<(Vec<QueueId>, Recovery), SpoolError> {
        let mut rec = Recovery::default();
        for entry in read_dir(&self.tmp)? {
            let path = entry.path();
            if fs::remove_file(&path).is_ok() {
                rec.tmp_removed += 1;
                log::warn!("recovery removed unfinished file {}", path.display());
            }
        }
        match recycle::clean_free(&self.free, &self.queue) {
            Ok(n) if n > 0 => log::debug!("recovery removed {n} recycled files"),
            Ok(_) => {}
            Err(e) => log::warn!("cannot clean {}: {e}", self.free.display()),
        }
        // (id, is envelope): sorted, a message's body comes before its envelope
        let mut names: Vec<(QueueId, bool)> = Vec::new();
        for entry in read_dir(&self.queue)? {
            let name = entry.file_name();
            let Some((stem, ext)) = name.to_str().and_then(|n| n.split_once('.')) else {
                continue;
            };
            let Some(id) = QueueId::parse(stem) else {
                continue;
            };
            match ext {
                "env" => names.push((id, true)),
                "msg" => names.push((id, false)),
                _ => {}
            }
        }
        names.sort_unstable();
        // ids in the spool are never handed out again, whatever the clock says
        if let Some(&(max, _)) = names.last() {
            QueueId::seed_after(max);
        }
        let mut ids = Vec::with_capacity(names.len() / 2);
        let mut i = 0;
        while i < names.len() {
            let id = names[i].0;
            let body = !names[i].1;
            let env = names[i..].iter().take(2).any(|&(n, e)| n == id && e);
            i += usize::from(body) + usize::from(env);
            match (body, env) {
                (true, true) => ids.push(id),
                (true, false) => {
                    if fs::remove_file(self.msg_path(id)).is_ok() {
                        rec.orphans_removed += 1;
                        log::warn!("{id} recovery removed body without envelope");
                    }
                }
                // the body goes last: a removal cut short, or an envelope
                // rewritten by a queue command while the message was removed
                (false, _) => self.remove_finished_envelope(id, &mut rec)?,
            }
        }
        rec.queued = ids.len();
        Ok((ids, rec))
    }

    /// An envelope without its body: removed, or moved to `corrupt/` when
    /// it does not parse (a torn write is kept for a human to look at).
    fn remove_finished_envelope(&self, id: QueueId, rec: &mut Recovery) -> Result<(), SpoolError> {
        match self.load(id) {
            Err(SpoolError::Corrupt { why, .. }) => {
                log::error!("{id} corrupt envelope moved to corrupt/: {why}");
                self.move_to_corrupt(id)?;
                rec.corrupt_moved += 1;
            }
            _ => {
                if fs::remove_file(self.env_path(id)).is_ok() {
                    rec.orphans_removed += 1;
                    log::warn!("{id} recovery removed envelope without body (finished message)");
                }
            }
        }
        Ok(())
    }

    /// The slow part of start-up recovery: reads the envelopes of `ids`
    /// (from [`Spool::recover_names`]) on a few threads and hands them to
    /// `deliver` in batches, roughly oldest first, as id and next try. An
    /// envelope that does not parse goes to `corrupt/`; one gone meanwhile
    /// (a queue command, or a delivery of a message flushed by id) is
    /// skipped. `deliver` returning false stops the reading (the server is
    /// stopping). Reading never changes a queued message, so a crash
    /// during it loses nothing: the next start reads again.
    pub fn load_recovered(
        &self,
        ids: &[QueueId],
        deliver: &(dyn Fn(Vec<Queued>) -> bool + Sync),
    ) -> Loaded {
        const BATCH: usize = 1024;
        let states = scan::load_each(
            self,
            ids,
            || (Vec::with_capacity(BATCH), Loaded::default()),
            |(batch, loaded), id, env| {
                match env {
                    Ok(env) => batch.push(Queued {
                        id,
                        next_try: env.next_try,
                    }),
                    Err(SpoolError::Corrupt { why, .. }) => {
                        log::error!("{id} corrupt envelope moved to corrupt/: {why}");
                        match self.move_to_corrupt(id) {
                            Ok(()) => loaded.corrupt_moved += 1,
                            Err(e) => loaded.error = loaded.error.take().or(Some(e)),
                        }
                    }
                    Err(SpoolError::Io { source, .. })
                        if source.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => {
                        log::error!("{id} not scheduled (the next rescan tries again): {e}");
                        loaded.error = loaded.error.take().or(Some(e));
                    }
                }
                if batch.len() >= BATCH {
                    loaded.queued += batch.len();
                    if !deliver(std::mem::replace(batch, Vec::with_capacity(BATCH))) {
                        return std::ops::ControlFlow::Break(());
                    }
                }
                std::ops::ControlFlow::Continue(())
            },
        );
        let mut total = Loaded::default();
        for (batch, loaded) in states {
            total.queued += loaded.queued + batch.len();
            total.corrupt_moved += loaded.corrupt_moved;
            total.error = total.error.or(loaded.error);
            if !batch.is_empty() {
                deliver(batch);
            }
        }
        total
    }

    /// Reads and parses one envelope.
    pub fn load(&self, id: QueueId) -> Result<Envelope, SpoolError> {
        let path = self.env_path(id);
        let text = fs::read_to_string(&path).map_err(|e| match e.kind() {
            io::ErrorKind::InvalidData => SpoolError::Corrupt {
                id,
                why: "not UTF-8 text".into(),
            },
            _ => SpoolError::io(&path, e),
        })?;
        let env = Envelope::parse(&text).map_err(|e| SpoolError::Corrupt {
            id,
            why: e.to_string(),
        })?;
        if env.id != id {
            return Err(SpoolError::Corrupt {
                id,
                why: format!("envelope names id {}", env.id),
            });
        }
        // written by another run: a power loss during its commit's flush
        // may have left other bytes under the name (`Integrity`)
        let from_another_run = env
            .integrity
            .as_ref()
            .is_some_and(|i| !i.made_in(self.run_id()));
        if from_another_run && !envelope::text_is_intact(&text) {
            return Err(SpoolError::Corrupt {
                id,
                why: "not the text that was written (its CRC-32 differs): most likely a commit cut short by a power loss (which never got its 250)".into(),
            });
        }
        Ok(env)
    }

    /// For readers without a claim (`queue show`): how message `env`'s
    /// body differs from what its envelope recorded at the commit, when it
    /// was written by another run (see `Claim::load`, which moves such a
    /// message to `corrupt/` before anything else reads it).
    pub fn body_differs(&self, env: &Envelope) -> Result<Option<String>, SpoolError> {
        let Some(check) = env.integrity.as_ref() else {
            return Ok(None);
        };
        let path = self.msg_path(env.id);
        File::open(&path)
            .and_then(|f| check.check_body(self.run_id(), f))
            .map_err(|e| SpoolError::io(&path, e))
    }

    /// Replaces an envelope atomically (delivery state changes).
    pub fn store(&self, env: &Envelope) -> Result<(), SpoolError> {
        let name = format!("{}.env", env.id);
        fsutil::write_atomic(&self.tmp, &self.queue, &name, env.to_text().as_bytes())
            .map_err(|e| SpoolError::io(self.queue.join(&name), e))
    }

    /// Removes a finished message: envelope first, so a crash in between
    /// leaves only a body, which recovery removes. With the group
    /// committer, the removal is answered once renamed and made durable by
    /// a later flush shared with other commits (`committer.rs`).
    pub fn remove(&self, id: QueueId) -> Result<(), SpoolError> {
        if let Some(c) = &self.committer {
            return c.remove(id, self.env_path(id), self.msg_path(id));
        }
        let env = self.env_path(id);
        match fs::remove_file(&env) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(SpoolError::io(&env, e)),
        }
        fsutil::fsync_dir(&self.queue).map_err(|e| SpoolError::io(&self.queue, e))?;
        let msg = self.msg_path(id);
        match fs::remove_file(&msg) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(SpoolError::io(&msg, e)),
        }
    }

    /// Moves a message whose envelope does not parse, or whose body is not
    /// what its envelope says, to `corrupt/`.
    fn move_to_corrupt(&self, id: QueueId) -> Result<(), SpoolError> {
        for ext in ["env", "msg"] {
            let from = self.queue.join(format!("{id}.{ext}"));
            let to = self.corrupt.join(format!("{id}.{ext}"));
            match fs::rename(&from, &to) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(SpoolError::io(&from, e)),
            }
        }
        fsutil::fsync_dir(&self.corrupt).map_err(|e| SpoolError::io(&self.corrupt, e))?;
        fsutil::fsync_dir(&self.queue).map_err(|e| SpoolError::io(&self.queue, e))
    }

    /// Ids of every committed message (those with an envelope), sorted.
    pub fn list_ids(&self) -> Result<Vec<QueueId>, SpoolError> {
        let mut ids: Vec<QueueId> = read_dir(&self.queue)?
            .filter_map(|e| {
                let name = e.file_name();
                let stem = name.to_str()?.strip_suffix(".env")?;
                QueueId::parse(stem)
            })
            .collect();
        ids.sort();
        Ok(ids)
    }
}

/// Root refuses to work in a spool folder another user owns.
fn not_foreign(path: &Path, md: &fs::Metadata) -> Result<(), SpoolError> {
    use std::os::unix::fs::MetadataExt;
    if md.uid() == 0 {
        return Ok(());
    }
    Err(SpoolError::Unsafe {
        path: path.to_path_buf(),
        why: format!(
            "belongs to uid {}, and this process runs as root: run serve with --user, or run as that user",
            md.uid()
        ),
    })
}

/// A fresh random id for this opening of the spool (`Integrity::run`):
/// 128 bits as 32 hex digits; `None` if the kernel gives no randomness.
fn new_run_id() -> Option<String> {
    let mut bytes = [0u8; 16];
    crate::sys::random_bytes(&mut bytes).ok()?;
    Some(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

fn read_dir(dir: &Path) -> Result<impl Iterator<Item = fs::DirEntry>, SpoolError> {
    Ok(fs::read_dir(dir)
        .map_err(|e| SpoolError::io(dir, e))?
        .filter_map(Result::ok))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::smtp::{Path as SmtpPath, ReversePath};
    use std::io::Write;

    pub(super) fn temp_spool(name: &str) -> Spool {
        let dir = std::env::temp_dir().join(format!(
            "smtp-relay-spool-test-{name}-{}",
            std::process::id()
        ));
        let _ = fs::remove_dir_all(&dir);
        Spool::open(&dir).unwrap()
    }

    pub(crate) fn env_for(id: QueueId) -> Envelope {
        Envelope {
            id,
            arrived: 1,
            client: "127.0.0.1".into(),
            helo: "h".into(),
            auth: None,
            from: ReversePath::Null,
            size: 5,
            body: None,
            smtputf8: false,
            requiretls: false,
            attempts: 0,
            next_try: 1,
            integrity: None,
            hold: None,
            dsn: Default::default(),
            rcpts: vec![Recipient {
                path: SmtpPath::parse("<a@b.example>", false).unwrap(),
                state: RcptState::Pending,
                last_reply: None,
                dsn: Default::default(),
                tries: Default::default(),
            }],
            hold_reason: None,
            delay_warned: None,
        }
    }

    /// A milter reads the message as this transaction left it: not a
    /// longer tail left by a replace that shortened it (the DMARC header
    /// step removing a forged header) or by a recycled file.
    #[test]
    fn a_reader_sees_only_what_this_message_wrote() {
        use std::io::Read;
        let spool = temp_spool("reader");
        let mut inc = spool.incoming().unwrap();
        inc.write_all(b"Subject: a long first version\r\n\r\nbody\r\n")
            .unwrap();
        inc.replace(b"Subject: short\r\n\r\nbody\r\n").unwrap();
        let mut read = Vec::new();
        inc.reader().unwrap().read_to_end(&mut read).unwrap();
        assert_eq!(read, b"Subject: short\r\n\r\nbody\r\n");
    }

    /// Every commit records the body's length and CRC-32 and this run,
    /// however the message was written: appended, replaced, a header put
    /// on top, rewritten by a milter; each check is what the queued file
    /// reads.
    #[test]
    fn a_commit_records_what_the_body_is() {
        let spool = temp_spool("check");
        type Write = fn(&mut Incoming<'_>);
        let ways: [(&str, Write); 4] = [
            ("appended", |inc| {
                inc.write_all(b"Subject: a\r\n\r\nbody\r\n").unwrap()
            }),
            ("replaced", |inc| {
                inc.write_all(b"Subject: a long first version\r\n\r\nbody\r\n")
                    .unwrap();
                inc.replace(b"Subject: b\r\n\r\nbody\r\n").unwrap();
            }),
            ("prepended", |inc| {
                inc.write_all(b"Subject: c\r\n\r\nbody\r\n").unwrap();
                inc.prepend_with(|_| Some(b"X-Top: 1\r\n".to_vec()))
                    .unwrap();
                inc.write_all(b"more\r\n").unwrap();
            }),
            ("rewritten", |inc| {
                inc.write_all(b"Subject: d\r\n\r\nbody\r\n").unwrap();
                inc.rewrite(|w| w.write_all(b"Subject: e\r\n\r\nnew body\r\n"))
                    .unwrap();
            }),
        ];
        for (how, write) in ways {
            let mut inc = spool.incoming().unwrap();
            let id = inc.id();
            write(&mut inc);
            inc.commit(&env_for(id)).unwrap();
            let stored = spool.load(id).unwrap().integrity.expect(how);
            let file = fs::read(spool.msg_path(id)).unwrap();
            let found = envelope::Integrity::of_body(&file[..], None).unwrap();
            assert!(stored.same_body(&found), "{how}: {stored:?} vs {found:?}");
            assert_eq!(stored.run.as_deref(), spool.run_id(), "{how}");
        }
        let _ = fs::remove_dir_all(spool.root());
    }

    /// An envelope from another run is loaded only if its text is what
    /// was written (its own CRC-32); in its own run, an edited one loads.
    #[test]
    fn an_envelope_from_another_run_must_be_intact() {
        let spool = temp_spool("env-intact");
        let mut inc = spool.incoming().unwrap();
        let id = inc.id();
        inc.write_all(b"hello").unwrap();
        inc.commit(&env_for(id)).unwrap();
        let text = fs::read_to_string(spool.env_path(id)).unwrap();
        let edited = text.replace("helo: h\n", "helo: x\n");
        assert_ne!(edited, text);
        fs::write(spool.env_path(id), &edited).unwrap();
        if spool.run_id().is_some() {
            assert_eq!(spool.load(id).unwrap().helo, "x", "loads in its own run");
        }
        let run = spool.run_id().unwrap_or("-").to_string();
        let rerun = text.replace(&format!("integrity: {run}\t"), "integrity: other\t");
        assert_ne!(rerun, text);
        fs::write(spool.env_path(id), &rerun).unwrap();
        assert_eq!(spool.load(id).unwrap().helo, "h", "intact in another run");
        fs::write(spool.env_path(id), rerun.replace("helo: h\n", "helo: x\n")).unwrap();
        match spool.load(id) {
            Err(SpoolError::Corrupt { why, .. }) => assert!(why.contains("CRC-32"), "{why}"),
            other => panic!("an edited envelope from another run gave {other:?}"),
        }
        let _ = fs::remove_dir_all(spool.root());
    }

    /// A finished message's lock is held until its files are out of
    /// `queue/`: another claimer (a `queue bounce` waiting for the
    /// delivery) never gets the message with its envelope still there.
    /// Given up before the removal, as it was with recycling, the claimer
    /// spinning here took the message in most of these rounds.
    #[test]
    fn a_finished_message_is_never_claimed_again() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let mut spool = temp_spool("finish-lock");
        spool
            .start_committer_with(
                committer::Order::SyncfsThenFolder,
                std::time::Duration::from_millis(50),
            )
            .unwrap();
        let spool = std::sync::Arc::new(spool);
        let reclaimed = std::sync::Arc::new(AtomicUsize::new(0));
        for _ in 0..50 {
            let mut inc = spool.incoming().unwrap();
            let id = inc.id();
            inc.write_all(&[b'x'; 100 * 1024]).unwrap();
            inc.commit(&env_for(id)).unwrap();
            let Claimed::Mine(claim) = spool.claim(id).unwrap() else {
                panic!("not claimed")
            };
            let other = {
                let (spool, reclaimed) = (spool.clone(), reclaimed.clone());
                std::thread::spawn(move || loop {
                    match spool.claim(id).unwrap() {
                        Claimed::Busy => std::hint::spin_loop(),
                        Claimed::Gone => return,
                        Claimed::Mine(c) => {
                            if c.load().unwrap().is_some() {
                                reclaimed.fetch_add(1, Ordering::SeqCst);
                            }
                            return;
                        }
                    }
                })
            };
            std::thread::sleep(std::time::Duration::from_millis(2));
            claim.finish().unwrap();
            other.join().unwrap();
        }
        assert_eq!(
            reclaimed.load(Ordering::SeqCst),
            0,
            "finished messages claimed again"
        );
        let _ = fs::remove_dir_all(spool.root());
    }

    /// With the group committer a removal is answered once its files
    /// are out of `queue/`, and its files are reused only after a flush
    /// made that durable: the next batch commit's (a message too big for
    /// the commit log: a logged one flushes only the log), a flush asked
    /// for (the server stopping), or, when nothing comes, one of its own
    /// after the removal delay. Reuse shows as the next message taking the
    /// removed body's inode.
    #[test]
    fn removed_files_are_reused_only_after_a_flush() {
        use std::os::unix::fs::MetadataExt;
        use std::time::{Duration, Instant};
        let queue_sized = |spool: &Spool, len: usize| {
            let mut inc = spool.incoming().unwrap();
            let id = inc.id();
            inc.write_all(&vec![b'x'; len]).unwrap();
            inc.commit(&env_for(id)).unwrap();
            id
        };
        let queue_one = |spool: &Spool| queue_sized(spool, 5);
        let remove = |spool: &Spool| {
            let id = queue_one(spool);
            let inode = fs::metadata(spool.msg_path(id)).unwrap().ino();
            spool.remove(id).unwrap();
            assert!(!spool.msg_path(id).exists() && !spool.env_path(id).exists());
            inode
        };
        let order = committer::Order::SyncfsThenFolder;
        for how in ["next commit", "flush asked", "delay"] {
            let mut spool = temp_spool("removal-flush");
            let delay = match how {
                "delay" => Duration::from_millis(50),
                _ => Duration::from_secs(3600),
            };
            spool.start_committer_with(order, delay).unwrap();
            let inode = remove(&spool);
            let recycler = spool.recycler().unwrap();
            if how != "delay" {
                assert_eq!(recycler.free_len(), 0, "{how}: reusable before a flush");
            }
            match how {
                "next commit" => {
                    queue_one(&spool);
                    assert_eq!(
                        recycler.free_len(),
                        0,
                        "a logged commit flushes the log only"
                    );
                    queue_sized(&spool, commit_log::BODY_MAX + 1);
                }
                "flush asked" => spool.flush_removals().unwrap(),
                _ => {
                    let deadline = Instant::now() + Duration::from_secs(10);
                    while recycler.free_len() < 2 && Instant::now() < deadline {
                        std::thread::sleep(Duration::from_millis(10));
                    }
                }
            }
            assert_eq!(recycler.free_len(), 2, "{how}: not flushed");
            let inc = spool.incoming().unwrap();
            let body = inc.body_path().to_path_buf();
            assert!(
                body.starts_with(spool.root().join("free")),
                "{how}: written in place"
            );
            assert_eq!(fs::metadata(&body).unwrap().ino(), inode, "{how}");
            drop(inc);
            assert!(!body.exists(), "{how}: an abandoned message leaves nothing");
            let _ = fs::remove_dir_all(spool.root());
        }
    }

    #[test]
    fn commit_recover_remove() {
        let spool = temp_spool("crr");
        let lock = spool.lock().unwrap();
        assert!(matches!(spool.lock(), Err(SpoolError::Locked(_))));

        let mut inc = spool.incoming().unwrap();
        let id = inc.id();
        inc.write_all(b"hello").unwrap();
        let committed = inc.commit(&env_for(id)).unwrap();
        assert_eq!(committed, id);
        assert_eq!(fs::read(spool.msg_path(id)).unwrap(), b"hello");
        assert_eq!(fs::read_dir(spool.tmp_dir()).unwrap().count(), 0);

        // an abandoned message leaves nothing
        let mut inc = spool.incoming().unwrap();
        inc.write_all(b"partial").unwrap();
        drop(inc);
        assert_eq!(fs::read_dir(spool.tmp_dir()).unwrap().count(), 0);

        // crash leftovers: a tmp file, an orphan body, a torn envelope
        fs::write(spool.tmp_dir().join("0000000000000001.msg"), b"x").unwrap();
        fs::write(spool.queue_dir().join("0000000000000002.msg"), b"x").unwrap();
        fs::write(
            spool.queue_dir().join("0000000000000003.env"),
            b"smtp-relay-envelope: 1\nid: 0000000000000003\n",
        )
        .unwrap();
        // an envelope whose body is gone: a finished message
        let finished = QueueId::parse("0000000000000004").unwrap();
        fs::write(spool.env_path(finished), env_for(finished).to_text()).unwrap();
        let (envs, rec) = spool.recover(&lock).unwrap();
        assert_eq!(envs.len(), 1);
        assert_eq!(envs[0].id, id);
        assert_eq!(
            rec,
            Recovery {
                queued: 1,
                tmp_removed: 1,
                orphans_removed: 2,
                corrupt_moved: 1
            }
        );
        assert!(!spool.env_path(finished).exists());
        assert!(spool.corrupt_dir().join("0000000000000003.env").exists());

        spool.remove(id).unwrap();
        assert!(spool.list_ids().unwrap().is_empty());
        let _ = fs::remove_dir_all(spool.root());
    }

    /// Another process (same 12 pid bits, same microsecond) committed a
    /// message under our id: the commit takes a fresh id and leaves the
    /// other message as it was, with and without the group committer,
    /// whether the body or only the envelope is in the way.
    #[test]
    fn commit_never_replaces_a_queued_file() {
        for (n, group) in [(0, false), (1, true), (2, false), (3, true)] {
            let mut spool = temp_spool(&format!("collide{n}"));
            if group {
                spool.start_committer(false).unwrap();
            }
            let mut inc = spool.incoming().unwrap();
            let id = inc.id();
            inc.write_all(b"ours").unwrap();
            let theirs = env_for(id).to_text();
            if n < 2 {
                fs::write(spool.msg_path(id), b"theirs").unwrap();
            }
            fs::write(spool.env_path(id), &theirs).unwrap();

            let got = inc.commit(&env_for(id)).unwrap();
            assert_ne!(got, id, "case {n}: committed over the other message");
            assert_eq!(fs::read(spool.msg_path(got)).unwrap(), b"ours");
            assert_eq!(spool.load(got).unwrap().id, got);
            assert_eq!(fs::read_to_string(spool.env_path(id)).unwrap(), theirs);
            if n < 2 {
                assert_eq!(fs::read(spool.msg_path(id)).unwrap(), b"theirs");
            } else {
                assert!(
                    !spool.msg_path(id).exists(),
                    "case {n}: our body left under the old id"
                );
            }
            assert_eq!(fs::read_dir(spool.tmp_dir()).unwrap().count(), 0);
            let _ = fs::remove_dir_all(spool.root());
        }
    }

    /// STYLE rule 5: outside `src/spool`, no code (tests aside) names a
    /// queue file's path, takes a message's flock or touches the flush
    /// requests; it goes through `Claim`, `read_body` and `flush.rs`.
    #[test]
    fn the_spool_alone_touches_queue_files() {
        let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let forbidden = [
            ".msg_path(",
            ".env_path(",
            ".try_lock(",
            "flush_dir(",
            "join(\"flush\")",
        ];
        let mut found = Vec::new();
        let mut dirs = vec![src.clone()];
        while let Some(dir) = dirs.pop() {
            for e in fs::read_dir(&dir).unwrap() {
                let path = e.unwrap().path();
                if path == src.join("spool") {
                    continue;
                }
                if path.is_dir() {
                    dirs.push(path);
                    continue;
                }
                if path.extension().is_none_or(|x| x != "rs") {
                    continue;
                }
                let text = fs::read_to_string(&path).unwrap();
                // the unit tests at the end may inspect files
                let code = text.split("mod tests {").next().unwrap_or("");
                for (n, line) in code.lines().enumerate() {
                    if forbidden.iter().any(|f| line.contains(f)) {
                        found.push(format!("{}:{}: {}", path.display(), n + 1, line.trim()));
                    }
                }
            }
        }
        assert!(
            found.is_empty(),
            "queue files touched outside the spool:\n{}",
            found.join("\n")
        );
    }
}
