//! The commit log: a lone message made durable with one write and one
//! device flush.
//!
//! A message alone in its group commit (one session, or a quiet server)
//! used to cost two device flushes before its 250 on a disk without a
//! journal (`committer::Order::SyncfsThenFolder`): its new files, then
//! the names in `queue/`. Here its envelope and body are instead written
//! as one record into `SPOOL/commit.log`, a file of fixed size whose
//! blocks were written once when it was made, and one fdatasync makes the
//! record durable: no block is allocated and no size changes, so on any
//! filesystem that is a data write and one flush, the way a database's
//! write-ahead log commits. The message's files are renamed into
//! `queue/` right after (delivery reads them there, at once) and become
//! durable at the next checkpoint, a syncfs (and fsync of `queue/`) the
//! committer runs about `REMOVAL_FLUSH_DELAY` later for every message
//! logged since.
//!
//! After a crash the newest chain of records is replayed at start-up,
//! before the queue is read: a logged message whose envelope is missing or
//! torn, or whose body is not the logged one, is written again from its
//! record. A delivered message is never brought back: its removal first
//! appends a `done` record (kill -9 after that leaves it in the page
//! cache; a power loss before the next flush can lose it with the
//! removal itself, which then brings the message back in `queue/` to be
//! delivered twice, as before the log).
//!
//! Layout. The file is two halves; records of one epoch are appended
//! from the start of one half, and a checkpoint that made every record of
//! that epoch durable in `queue/` moves the next epoch to the other half.
//! An epoch begins with an `epoch` record made durable before anything
//! else happens in it (start-up, after the restore; each checkpoint,
//! after its flushes), so the newest chain on disk is always the epoch
//! being written, and a message checkpointed before it and removed since
//! is never replayed. A chain is the run of valid records at a half's
//! start with the epoch of its first; only the chain with the higher
//! epoch can hold records not yet checkpointed, so only it is replayed. No header is ever
//! rewritten: a half being refilled may be torn anywhere (the page cache
//! writes pages back in any order), and both its old chain and its new
//! one end at the first bad record, so its epoch decides alone. A record
//! is acknowledged only after an fdatasync that also covered every record
//! before it, so a chain's first bad record and everything after it were
//! never acknowledged.
//!
//! Record (little-endian): magic `u32`, epoch `u64`, kind `u8`, id length
//! `u8`, two zero octets, envelope length `u32`, body length `u32`, the
//! id, the envelope text, the body, CRC-32 `u32` of everything before it.

use std::collections::HashSet;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use super::fsutil;
use super::queue_id::QueueId;

/// The log's file name under the spool.
pub const FILE_NAME: &str = "commit.log";
/// Its size: two halves of 4 MiB. An epoch lasts about 50 ms; at a
/// thousand 10 KB messages a second that is half a megabyte, and a full
/// half only makes the next batch checkpoint first.
const SIZE: u64 = 8 << 20;
const MAGIC: u32 = 0x4c43_5253; // "SRCL"
const HEAD: usize = 24;
const KIND_PUBLISH: u8 = 1;
const KIND_DONE: u8 = 2;
/// The first record of every epoch (no id, no content).
const KIND_EPOCH: u8 = 3;
/// Its length.
const EPOCH_LEN: u64 = HEAD as u64 + 4;
/// Room kept for a `done` record (its id is at most 64 octets).
const DONE_LEN: u64 = HEAD as u64 + 64 + 4;
/// The largest body a session puts in a record (bigger ones take the
/// flushes of the batch commit: their data write dominates anyway).
pub const BODY_MAX: usize = 64 * 1024;

/// A logged message found at start-up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Logged {
    pub id: String,
    pub envelope: Vec<u8>,
    pub body: Vec<u8>,
}

/// Builds a publish record for the committer to seal with its epoch.
pub fn publish_record(id: QueueId, envelope: &[u8], body: &[u8]) -> Vec<u8> {
    record(KIND_PUBLISH, &id.to_string(), envelope, body)
}

fn record(kind: u8, id: &str, envelope: &[u8], body: &[u8]) -> Vec<u8> {
    let mut r = Vec::with_capacity(HEAD + id.len() + envelope.len() + body.len() + 4);
    r.extend_from_slice(&MAGIC.to_le_bytes());
    r.extend_from_slice(&0u64.to_le_bytes()); // epoch: sealed later
    r.push(kind);
    r.push(id.len() as u8);
    r.extend_from_slice(&[0, 0]);
    r.extend_from_slice(&(envelope.len() as u32).to_le_bytes());
    r.extend_from_slice(&(body.len() as u32).to_le_bytes());
    r.extend_from_slice(id.as_bytes());
    r.extend_from_slice(envelope);
    r.extend_from_slice(body);
    r.extend_from_slice(&[0; 4]); // CRC: sealed later
    r
}

/// Writes `epoch` and the CRC into a record.
fn seal(r: &mut [u8], epoch: u64) {
    r[4..12].copy_from_slice(&epoch.to_le_bytes());
    let end = r.len() - 4;
    let crc = crc32fast::hash(&r[..end]);
    r[end..].copy_from_slice(&crc.to_le_bytes());
}

/// The log, owned by the committer thread.
#[derive(Debug)]
pub struct CommitLog {
    file: File,
    path: PathBuf,
    half: u64,
    /// The half being written (0 or 1), its epoch, the next offset in it.
    side: u64,
    epoch: u64,
    pos: u64,
    /// Ids published in this epoch (a removal of one appends `done`).
    logged: HashSet<QueueId>,
}

/// One record read back.
struct Read {
    kind: u8,
    epoch: u64,
    id: String,
    envelope: Vec<u8>,
    body: Vec<u8>,
    len: u64,
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    let mut a = [0; 4];
    a.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(a)
}

/// The record at `at` if it is whole and has `epoch` (any epoch when
/// `None`).
fn read_at(f: &File, at: u64, end: u64, epoch: Option<u64>) -> io::Result<Option<Read>> {
    if at + HEAD as u64 + 4 > end {
        return Ok(None);
    }
    let mut head = [0u8; HEAD];
    f.read_exact_at(&mut head, at)?;
    if u32_at(&head, 0) != MAGIC {
        return Ok(None);
    }
    let mut e = [0; 8];
    e.copy_from_slice(&head[4..12]);
    let rec_epoch = u64::from_le_bytes(e);
    if epoch.is_some_and(|want| want != rec_epoch) {
        return Ok(None);
    }
    let (kind, id_len) = (head[12], head[13] as u64);
    let (env_len, body_len) = (u32_at(&head, 16) as u64, u32_at(&head, 20) as u64);
    let len = HEAD as u64 + id_len + env_len + body_len + 4;
    if at + len > end || !(KIND_PUBLISH..=KIND_EPOCH).contains(&kind) {
        return Ok(None);
    }
    let mut all = vec![0u8; len as usize];
    f.read_exact_at(&mut all, at)?;
    let crc_at = all.len() - 4;
    if crc32fast::hash(&all[..crc_at]) != u32_at(&all, crc_at) {
        return Ok(None);
    }
    let id_end = HEAD + id_len as usize;
    let env_end = id_end + env_len as usize;
    let Ok(id) = std::str::from_utf8(&all[HEAD..id_end]).map(str::to_string) else {
        return Ok(None);
    };
    Ok(Some(Read {
        kind,
        epoch: rec_epoch,
        id,
        envelope: all[id_end..env_end].to_vec(),
        body: all[env_end..crc_at].to_vec(),
        len,
    }))
}

/// The chain at the start of the half at `start`: its epoch and records.
fn chain(f: &File, start: u64, end: u64) -> io::Result<Option<(u64, Vec<Read>)>> {
    let Some(first) = read_at(f, start, end, None)? else {
        return Ok(None);
    };
    let epoch = first.epoch;
    let mut at = start + first.len;
    let mut records = vec![first];
    while let Some(r) = read_at(f, at, end, Some(epoch))? {
        at += r.len;
        records.push(r);
    }
    Ok(Some((epoch, records)))
}

impl CommitLog {
    /// Opens the log under `root` (making it when missing) and returns it
    /// with the messages of its newest chain that were not removed. The
    /// caller restores them into `queue/` and then calls
    /// [`CommitLog::begin_epoch`] before the first append.
    pub fn open(root: &Path) -> io::Result<(CommitLog, Vec<Logged>)> {
        let path = root.join(FILE_NAME);
        let file = match OpenOptions::new().read(true).write(true).open(&path) {
            Ok(f) if f.metadata()?.len() == SIZE => f,
            Ok(f) => {
                // another size (made by hand?): replayed as it is, then
                // replaced once what it held is restored
                let found = Self::newest(&f, f.metadata()?.len() / 2)?;
                if !found.1.is_empty() {
                    return Err(io::Error::other(format!(
                        "{} is not {SIZE} octets long but holds records: move it aside after checking it",
                        path.display()
                    )));
                }
                drop(f);
                Self::make(root, &path)?
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Self::make(root, &path)?,
            Err(e) => return Err(e),
        };
        let half = SIZE / 2;
        let (newest, logged) = Self::newest(&file, half)?;
        let (side, epoch) = match newest {
            // the next epoch goes to the other half
            Some((side, epoch)) => (1 - side, epoch + 1),
            None => (0, 1),
        };
        let log = CommitLog {
            file,
            path,
            half,
            side,
            epoch,
            pos: side * half,
            logged: HashSet::new(),
        };
        Ok((log, logged))
    }

    /// Writes this epoch's first record at the start of its half and makes
    /// it durable: from then on the chains before it are never replayed.
    pub fn begin_epoch(&mut self) -> io::Result<()> {
        let mut r = record(KIND_EPOCH, "", &[], &[]);
        seal(&mut r, self.epoch);
        let start = self.side * self.half;
        self.file.write_all_at(&r, start)?;
        self.file.sync_data()?;
        self.pos = start + r.len() as u64;
        Ok(())
    }

    /// The newest chain's side and epoch, and its messages not removed.
    #[allow(clippy::type_complexity)]
    fn newest(f: &File, half: u64) -> io::Result<(Option<(u64, u64)>, Vec<Logged>)> {
        let a = chain(f, 0, half)?;
        let b = chain(f, half, 2 * half)?;
        let pick = match (a, b) {
            (Some(a), Some(b)) if b.0 > a.0 => Some((1, b)),
            (Some(a), _) => Some((0, a)),
            (None, Some(b)) => Some((1, b)),
            (None, None) => None,
        };
        let Some((side, (epoch, records))) = pick else {
            return Ok((None, Vec::new()));
        };
        let done: HashSet<String> = records
            .iter()
            .filter(|r| r.kind == KIND_DONE)
            .map(|r| r.id.clone())
            .collect();
        let mut seen = HashSet::new();
        let logged = records
            .into_iter()
            .filter(|r| r.kind == KIND_PUBLISH && !done.contains(&r.id))
            .filter(|r| seen.insert(r.id.clone()))
            .map(|r| Logged {
                id: r.id,
                envelope: r.envelope,
                body: r.body,
            })
            .collect();
        Ok((Some((side, epoch)), logged))
    }

    /// A new log: every block written once (so a record never allocates
    /// one), made durable with its name.
    fn make(root: &Path, path: &Path) -> io::Result<File> {
        let tmp = root.join(format!("{FILE_NAME}.new"));
        let _ = fs::remove_file(&tmp);
        let made = Self::fill(root, &tmp, path);
        if made.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        made
    }

    fn fill(root: &Path, tmp: &Path, path: &Path) -> io::Result<File> {
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(tmp)?;
        let zeros = vec![0u8; 1 << 20];
        let mut at = 0;
        while at < SIZE {
            f.write_all_at(&zeros, at)?;
            at += zeros.len() as u64;
        }
        f.sync_all()?;
        fs::rename(tmp, path)?;
        fsutil::fsync_dir(root)?;
        Ok(f)
    }

    /// Whether `n` more publish records of `len` octets in all fit in
    /// this epoch's half, with room kept for a `done` record of every
    /// message logged in it.
    pub fn has_room(&self, len: usize, n: usize) -> bool {
        let done = (self.logged.len() + n) as u64 * DONE_LEN;
        self.pos + len as u64 + done <= (self.side + 1) * self.half
    }

    /// Whether this epoch holds no record but its first (a checkpoint has
    /// nothing to end).
    pub fn is_empty(&self) -> bool {
        self.pos <= self.side * self.half + EPOCH_LEN
    }

    /// Appends publish records (from [`publish_record`]) for `ids` and
    /// makes them durable: one write, one fdatasync.
    pub fn append_durably(&mut self, records: &mut [(QueueId, Vec<u8>)]) -> io::Result<()> {
        let total: usize = records.iter().map(|(_, r)| r.len()).sum();
        let mut all = Vec::with_capacity(total);
        for (id, r) in records.iter_mut() {
            seal(r, self.epoch);
            all.extend_from_slice(r);
            self.logged.insert(*id);
        }
        self.file.write_all_at(&all, self.pos)?;
        self.pos += all.len() as u64;
        self.file.sync_data()
    }

    /// Whether `id` was published in this epoch.
    pub fn holds(&self, id: QueueId) -> bool {
        self.logged.contains(&id)
    }

    /// Appends a `done` record for `id` (written, not flushed: see the
    /// module doc). With no room left it is skipped: the caller
    /// checkpoints before the next publish anyway.
    pub fn append_done(&mut self, id: QueueId) -> io::Result<()> {
        let mut r = record(KIND_DONE, &id.to_string(), &[], &[]);
        if self.pos + r.len() as u64 > (self.side + 1) * self.half {
            return Err(io::Error::other("commit log half full"));
        }
        seal(&mut r, self.epoch);
        self.file.write_all_at(&r, self.pos)?;
        self.pos += r.len() as u64;
        self.logged.remove(&id);
        Ok(())
    }

    /// Every record of this epoch is durable in `queue/` now: the next
    /// epoch begins in the other half (`begin_epoch`).
    pub fn checkpointed(&mut self) -> io::Result<()> {
        if self.is_empty() {
            return Ok(());
        }
        let (side, epoch) = (self.side, self.epoch);
        self.side = 1 - side;
        self.epoch = epoch + 1;
        if let Err(e) = self.begin_epoch() {
            // still the old epoch: a caller that goes on appends where a
            // replay looks
            (self.side, self.epoch) = (side, epoch);
            return Err(e);
        }
        self.logged.clear();
        Ok(())
    }

    /// The log failed: removes it (an old chain left behind could bring
    /// back messages delivered since). What it held was made durable in
    /// `queue/` by the caller's checkpoint, or never acknowledged.
    pub fn discard(self) {
        if let Err(e) = fs::remove_file(&self.path) {
            // then no chain may start where a replay looks
            let zeros = [0u8; HEAD];
            let cleared = self
                .file
                .write_all_at(&zeros, 0)
                .and_then(|()| self.file.write_all_at(&zeros, self.half))
                .and_then(|()| self.file.sync_data());
            log::error!(
                "{}: could not remove it ({e}); its chains cleared: {cleared:?}",
                self.path.display()
            );
        }
        if let Some(root) = self.path.parent() {
            let _ = fsutil::fsync_dir(root);
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Restores logged messages into `queue/` (start-up, before the queue is
/// read): an envelope missing or not intact is written again, and a body
/// missing or not the logged one (`fsutil::write_atomic`); then what was
/// found whole is made durable too. Returns how many messages needed it.
pub fn restore(tmp: &Path, queue: &Path, logged: &[Logged]) -> io::Result<usize> {
    let mut restored = 0;
    for m in logged {
        // ids come from our own records, but never trust a name to stay
        // inside `queue/`
        if QueueId::parse(&m.id).is_none() {
            continue;
        }
        let env_path = queue.join(format!("{}.env", m.id));
        let msg_path = queue.join(format!("{}.msg", m.id));
        let env_ok = fs::read(&env_path).is_ok_and(|t| envelope_is_ours(&t, m));
        let body_ok = fs::read(&msg_path).is_ok_and(|b| b == m.body);
        if env_ok && body_ok {
            continue;
        }
        if !body_ok {
            fsutil::write_atomic(tmp, queue, &format!("{}.msg", m.id), &m.body)?;
        }
        if !env_ok {
            fsutil::write_atomic(tmp, queue, &format!("{}.env", m.id), &m.envelope)?;
        }
        log::warn!("{}: restored from the commit log", m.id);
        restored += 1;
    }
    if !logged.is_empty() {
        // files found whole may be whole in the page cache only (a kill -9
        // before the checkpoint): durable before the caller's next epoch
        // retires their records
        crate::sys::syncfs(&File::open(queue)?)?;
        fsutil::fsync_dir(queue)?;
    }
    Ok(restored)
}

/// Whether `text`, found in `queue/` under a logged message's name, is an
/// envelope of that message: it parses, names the id, is what its own
/// CRC-32 says, and records the logged body. A power loss can leave an
/// empty or zeroed file, or a recycled file's earlier envelope, under the
/// name; a later intact state of the message (a deferral) is kept.
fn envelope_is_ours(text: &[u8], m: &Logged) -> bool {
    let Ok(text) = std::str::from_utf8(text) else {
        return false;
    };
    let Ok(env) = super::envelope::Envelope::parse(text) else {
        return false;
    };
    let body = super::envelope::Integrity {
        run: None,
        body_len: m.body.len() as u64,
        body_crc32: crc32fast::hash(&m.body),
    };
    env.id.to_string() == m.id
        && super::envelope::text_is_intact(text)
        && env.integrity.as_ref().is_some_and(|i| i.same_body(&body))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("commit-log-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(&d).unwrap();
        d
    }

    fn publish(log: &mut CommitLog, id: QueueId, body: &[u8]) {
        let mut r = vec![(id, publish_record(id, b"envelope\n", body))];
        log.append_durably(&mut r).unwrap();
    }

    #[test]
    fn a_fresh_log_holds_nothing_and_its_records_come_back() {
        let d = dir("fresh");
        let (mut log, found) = CommitLog::open(&d).unwrap();
        assert!(found.is_empty());
        log.begin_epoch().unwrap();
        assert_eq!(fs::metadata(log.path()).unwrap().len(), SIZE);
        let (a, b) = (QueueId::generate(), QueueId::generate());
        publish(&mut log, a, b"body a");
        publish(&mut log, b, b"body b");
        drop(log);
        let (_, found) = CommitLog::open(&d).unwrap();
        let ids: Vec<_> = found.iter().map(|m| m.id.clone()).collect();
        assert_eq!(ids, vec![a.to_string(), b.to_string()]);
        assert_eq!(found[1].body, b"body b");
        assert_eq!(found[1].envelope, b"envelope\n");
    }

    #[test]
    fn a_done_record_keeps_a_removed_message_out() {
        let d = dir("done");
        let (mut log, _) = CommitLog::open(&d).unwrap();
        log.begin_epoch().unwrap();
        let (a, b) = (QueueId::generate(), QueueId::generate());
        publish(&mut log, a, b"a");
        publish(&mut log, b, b"b");
        assert!(log.holds(a));
        log.append_done(a).unwrap();
        assert!(!log.holds(a));
        drop(log);
        let (_, found) = CommitLog::open(&d).unwrap();
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].id, b.to_string());
    }

    #[test]
    fn only_the_newest_chain_is_replayed_and_a_torn_record_ends_it() {
        let d = dir("chain");
        let (mut log, _) = CommitLog::open(&d).unwrap();
        log.begin_epoch().unwrap();
        let (a, b, c) = (
            QueueId::generate(),
            QueueId::generate(),
            QueueId::generate(),
        );
        publish(&mut log, a, b"a");
        log.checkpointed().unwrap();
        publish(&mut log, b, b"b");
        let torn_at = log.pos;
        publish(&mut log, c, b"c");
        drop(log);
        // the newest epoch (second half) wins over the first half's
        let (_, found) = CommitLog::open(&d).unwrap();
        let ids: Vec<_> = found.iter().map(|m| m.id.clone()).collect();
        assert_eq!(ids, vec![b.to_string(), c.to_string()]);
        // a flipped octet in c ends the chain before it
        let f = OpenOptions::new()
            .write(true)
            .open(d.join(FILE_NAME))
            .unwrap();
        f.write_all_at(b"X", torn_at + HEAD as u64 + 2).unwrap();
        drop(f);
        let (log, found) = CommitLog::open(&d).unwrap();
        let ids: Vec<_> = found.iter().map(|m| m.id.clone()).collect();
        assert_eq!(ids, vec![b.to_string()]);
        // the next epoch goes to the half that did not hold the newest
        assert_eq!(log.side, 0);
        assert_eq!(log.epoch, 3);
    }

    #[test]
    fn a_message_checkpointed_and_then_removed_never_comes_back() {
        let d = dir("after-checkpoint");
        let (mut log, _) = CommitLog::open(&d).unwrap();
        log.begin_epoch().unwrap();
        let a = QueueId::generate();
        publish(&mut log, a, b"a");
        log.checkpointed().unwrap();
        // removed in the next epoch: no done record (not logged in it)
        assert!(!log.holds(a));
        drop(log);
        let (mut log, found) = CommitLog::open(&d).unwrap();
        assert!(found.is_empty(), "{found:?}");
        // a start-up begins an epoch too: what it restored is not
        // restored again after a second crash
        log.begin_epoch().unwrap();
        drop(log);
        let (_, found) = CommitLog::open(&d).unwrap();
        assert!(found.is_empty(), "{found:?}");
    }

    #[test]
    fn a_half_being_refilled_never_brings_back_its_old_epoch() {
        let d = dir("refill");
        let (mut log, _) = CommitLog::open(&d).unwrap();
        log.begin_epoch().unwrap();
        let old = QueueId::generate();
        publish(&mut log, old, b"o"); // epoch 1, first half
        publish(&mut log, QueueId::generate(), &[b'p'; 5000]);
        log.checkpointed().unwrap();
        publish(&mut log, QueueId::generate(), b"x"); // epoch 2, second half

        // epoch 3 is refilling the first half, and only a page past its
        // start reached the disk (its first record did not): the first
        // half's chain is epoch 1 up to that page, older than epoch 2
        let f = OpenOptions::new()
            .write(true)
            .open(d.join(FILE_NAME))
            .unwrap();
        f.write_all_at(&[0xAB; 100], 4096).unwrap();
        drop(f);
        drop(log);
        let (_, found) = CommitLog::open(&d).unwrap();
        assert_eq!(found.len(), 1, "epoch 2's record only");
        assert_ne!(found[0].id, old.to_string());
    }

    #[test]
    fn restore_writes_back_only_what_is_missing_or_damaged() {
        let d = dir("restore");
        let (tmp, queue) = (d.join("tmp"), d.join("queue"));
        fs::create_dir_all(&tmp).unwrap();
        fs::create_dir_all(&queue).unwrap();
        let id = QueueId::generate();
        let env = crate::spool::tests::env_for(id);
        let text = env.to_text_with(Some(&crate::spool::envelope::Integrity {
            run: None,
            body_len: 4,
            body_crc32: crc32fast::hash(b"body"),
        }));
        let logged = vec![Logged {
            id: id.to_string(),
            envelope: text.clone().into_bytes(),
            body: b"body".to_vec(),
        }];
        assert_eq!(restore(&tmp, &queue, &logged).unwrap(), 1, "both missing");
        assert_eq!(fs::read(queue.join(format!("{id}.msg"))).unwrap(), b"body");
        assert_eq!(
            fs::read_to_string(queue.join(format!("{id}.env"))).unwrap(),
            text
        );
        assert_eq!(restore(&tmp, &queue, &logged).unwrap(), 0, "both whole");
        fs::write(queue.join(format!("{id}.msg")), b"bo").unwrap();
        assert_eq!(restore(&tmp, &queue, &logged).unwrap(), 1, "a torn body");
        assert_eq!(fs::read(queue.join(format!("{id}.msg"))).unwrap(), b"body");
        // an envelope rewritten since (a deferral) is intact: kept
        let mut later = env.clone();
        later.helo = "later.example".into();
        later.integrity = Some(crate::spool::envelope::Integrity {
            run: None,
            body_len: 4,
            body_crc32: crc32fast::hash(b"body"),
        });
        let later = later.to_text();
        fs::write(queue.join(format!("{id}.env")), &later).unwrap();
        assert_eq!(restore(&tmp, &queue, &logged).unwrap(), 0);
        // an empty file, or another message's envelope, under the name is
        // not the message's
        for found in [
            String::new(),
            crate::spool::tests::env_for(QueueId::generate()).to_text(),
        ] {
            fs::write(queue.join(format!("{id}.env")), found).unwrap();
            assert_eq!(restore(&tmp, &queue, &logged).unwrap(), 1);
            assert_eq!(
                fs::read_to_string(queue.join(format!("{id}.env"))).unwrap(),
                text
            );
        }
        fs::write(queue.join(format!("{id}.env")), &later).unwrap();
        assert!(
            fs::read_dir(&tmp).unwrap().next().is_none(),
            "tmp/ left empty"
        );
    }
}
