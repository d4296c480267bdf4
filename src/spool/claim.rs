//! A claim on one queued message: its body held open under an exclusive
//! flock, through which the holder reads the body, loads and stores the
//! envelope, and finally removes the message. Delivery, bounce and the
//! queue commands change a message only through a claim, so a command
//! never edits or deletes a message in the middle of a delivery, and two
//! deliveries of one message never overlap.
//!
//! Crash story: the flock belongs to the open body and dies with the
//! process, so a crashed holder never leaves a message claimed; what it
//! had stored is what the next claim loads (each `store` replaces the
//! envelope atomically, see `fsutil::write_atomic`), and a `finish` cut
//! short is finished by start-up recovery (see `Spool::remove`).

use std::fs::{File, TryLockError};
use std::io::{self, Read, Seek, SeekFrom};
use std::os::unix::fs::FileExt;
use std::thread;
use std::time::{Duration, Instant};

use super::{Envelope, QueueId, Spool, SpoolError};

/// What `Spool::claim` found.
pub enum Claimed<'a> {
    /// The message is ours until the claim is dropped or finished.
    Mine(Claim<'a>),
    /// Someone else holds it (a delivery, a queue command).
    Busy,
    /// Not in the queue (any more).
    Gone,
}

/// One message, locked (module doc).
pub struct Claim<'a> {
    spool: &'a Spool,
    id: QueueId,
    body: File,
}

impl Spool {
    /// Claims message `id` without waiting.
    pub fn claim(&self, id: QueueId) -> Result<Claimed<'_>, SpoolError> {
        let path = self.msg_path(id);
        let body = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Claimed::Gone),
            Err(e) => return Err(SpoolError::io(&path, e)),
        };
        match body.try_lock() {
            Ok(()) => Ok(Claimed::Mine(Claim {
                spool: self,
                id,
                body,
            })),
            Err(TryLockError::WouldBlock) => Ok(Claimed::Busy),
            Err(TryLockError::Error(e)) => Err(SpoolError::io(&path, e)),
        }
    }

    /// Claims message `id`, waiting up to `wait` for its holder to let
    /// go (a queue command waiting out a delivery in progress).
    pub fn claim_wait(&self, id: QueueId, wait: Duration) -> Result<Claimed<'_>, SpoolError> {
        let deadline = Instant::now() + wait;
        loop {
            match self.claim(id)? {
                Claimed::Busy if Instant::now() < deadline => {
                    thread::sleep(Duration::from_millis(50))
                }
                other => return Ok(other),
            }
        }
    }

    /// Whether someone holds a claim on `id` right now (for display).
    pub fn is_claimed(&self, id: QueueId) -> bool {
        matches!(self.claim(id), Ok(Claimed::Busy))
    }

    /// The body of message `id` for reading without a claim (`queue
    /// show`): it may be removed meanwhile, never changed.
    pub fn read_body(&self, id: QueueId) -> Result<Body<'static>, SpoolError> {
        let path = self.msg_path(id);
        let file = File::open(&path).map_err(|e| SpoolError::io(&path, e))?;
        Ok(Body {
            file: Src::Owned(file),
            pos: 0,
        })
    }
}

impl<'a> Claim<'a> {
    pub fn id(&self) -> QueueId {
        self.id
    }

    /// The spool the message is in (to queue a DSN about it).
    pub fn spool(&self) -> &'a Spool {
        self.spool
    }

    /// A reader of the message from its first octet. Each reader keeps
    /// its own position (positioned reads): no seek on the shared file.
    pub fn body(&self) -> Body<'_> {
        Body {
            file: Src::Borrowed(&self.body),
            pos: 0,
        }
    }

    /// The envelope; `None` when it is gone (the message was finished by
    /// someone who held it before us), or when the body is not what the
    /// envelope recorded at the commit and the message was moved to
    /// `corrupt/` (`check_body`).
    pub fn load(&self) -> Result<Option<Envelope>, SpoolError> {
        let mut env = match self.spool.load(self.id) {
            Ok(env) => env,
            Err(SpoolError::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound => {
                return Ok(None)
            }
            Err(e) => return Err(e),
        };
        if !self.check_body(&mut env)? {
            return Ok(None);
        }
        Ok(Some(env))
    }

    /// A message committed in another server run is read once and compared
    /// with the length and CRC-32 its envelope recorded (`Integrity`)
    /// before anything reads it: a power loss during its commit's flush
    /// can have left the name over bytes that never reached the disk (a
    /// recycled file's earlier message, zeros), and those must never be
    /// sent or quoted in a bounce. Such a message never had its 250
    /// (`incoming.rs`, step 4); it goes to `corrupt/`, unsent. A body that
    /// matches is marked as known whole in this run (kept at the next
    /// `store`). Messages of this run, and envelopes written before
    /// checks existed, are not read.
    fn check_body(&self, env: &mut Envelope) -> Result<bool, SpoolError> {
        let now = self.spool.run_id();
        let Some(check) = env.integrity.as_mut() else {
            return Ok(true);
        };
        let differs = check
            .check_body(now, self.body())
            .map_err(|e| SpoolError::io(self.spool.msg_path(self.id), e))?;
        let Some(differs) = differs else {
            check.run = now.map(str::to_string);
            return Ok(true);
        };
        log::error!(
            "{} {differs}: most likely a commit cut short by a power loss (which never got its 250); moved to corrupt/, not sent",
            self.id
        );
        self.spool.move_to_corrupt(self.id)?;
        Ok(false)
    }

    /// Replaces the envelope atomically (`Spool::store`).
    pub fn store(&self, env: &Envelope) -> Result<(), SpoolError> {
        debug_assert_eq!(env.id, self.id, "storing another message's envelope");
        self.spool.store(env)
    }

    /// Removes the finished message (`Spool::remove`: envelope first),
    /// holding the lock through the removal, so nobody claims the message
    /// in between: a `queue bounce` waiting for a delivery would otherwise
    /// take it there and return a message already delivered. (A reused
    /// body file goes to a new message only after the flush that follows
    /// the removal, later; should that message's first claim still find
    /// the lock, it is busy and tried again a second later.)
    pub fn finish(self) -> Result<(), SpoolError> {
        let Claim { spool, id, body } = self;
        let done = spool.remove(id);
        drop(body);
        done
    }
}

enum Src<'a> {
    Borrowed(&'a File),
    Owned(File),
}

/// A reader of a queued message's body (`Claim::body`,
/// `Spool::read_body`).
pub struct Body<'a> {
    file: Src<'a>,
    pos: u64,
}

impl Body<'_> {
    fn file(&self) -> &File {
        match &self.file {
            Src::Borrowed(f) => f,
            Src::Owned(f) => f,
        }
    }

    /// The body's size in octets.
    pub fn len(&self) -> io::Result<u64> {
        Ok(self.file().metadata()?.len())
    }

    pub fn is_empty(&self) -> io::Result<bool> {
        Ok(self.len()? == 0)
    }
}

impl Read for Body<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.file().read_at(buf, self.pos)?;
        self.pos += n as u64;
        Ok(n)
    }
}

impl Seek for Body<'_> {
    fn seek(&mut self, to: SeekFrom) -> io::Result<u64> {
        let base = match to {
            SeekFrom::Start(n) => {
                self.pos = n;
                return Ok(n);
            }
            SeekFrom::Current(d) => (self.pos, d),
            SeekFrom::End(d) => (self.len()?, d),
        };
        self.pos = base
            .0
            .checked_add_signed(base.1)
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "seek before the start"))?;
        Ok(self.pos)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::delivery::tests::queue;
    use crate::spool::tests::temp_spool;
    use std::fs;

    /// A message committed in another run is checked once before use:
    /// a body that is not what its envelope recorded (what a power loss
    /// during its commit's flush can leave: here the same length, other
    /// bytes, as a recycled file's earlier message) goes to `corrupt/`,
    /// byte for byte, and the claim finds no message; a whole one loads,
    /// marked as checked in this run, which a `store` keeps. A message
    /// of this run is not read.
    #[test]
    fn a_body_from_another_run_is_checked_before_use() {
        let spool = temp_spool("claim-check");
        let from_another_run = |id| {
            let mut env = spool.load(id).unwrap();
            env.integrity.as_mut().unwrap().run = Some("another-run".into());
            spool.store(&env).unwrap();
        };
        let stale = b"Subject: y\r\n\r\nho\r\n";
        let claim = |id| match spool.claim(id).unwrap() {
            Claimed::Mine(c) => c,
            _ => panic!("{id} not claimed"),
        };

        let damaged = queue(&spool, 1, &["<a@b.example>"]);
        from_another_run(damaged);
        fs::write(spool.msg_path(damaged), stale).unwrap();
        assert!(claim(damaged).load().unwrap().is_none());
        assert!(matches!(spool.claim(damaged).unwrap(), Claimed::Gone));
        let corrupt = spool.root().join("corrupt");
        assert_eq!(
            fs::read(corrupt.join(format!("{damaged}.msg"))).unwrap(),
            stale
        );
        assert!(corrupt.join(format!("{damaged}.env")).exists());

        let whole = queue(&spool, 1, &["<a@b.example>"]);
        from_another_run(whole);
        let c = claim(whole);
        let env = c.load().unwrap().expect("a whole body loads");
        let now = spool.run_id().map(str::to_string);
        assert_eq!(env.integrity.as_ref().unwrap().run, now);
        c.store(&env).unwrap();
        let stored = spool.load(whole).unwrap().integrity.unwrap();
        assert_eq!(stored.run, now, "the check is kept with the envelope");
        drop(c);

        if now.is_some() {
            let this_run = queue(&spool, 1, &["<a@b.example>"]);
            fs::write(spool.msg_path(this_run), stale).unwrap();
            assert!(
                claim(this_run).load().unwrap().is_some(),
                "read in its own run"
            );
        }
        let _ = fs::remove_dir_all(spool.root());
    }

    /// One claim at a time; busy while held, free again once dropped,
    /// gone once finished; two readers of one claim keep their own place.
    #[test]
    fn one_claim_at_a_time_and_finish_removes() {
        let spool = temp_spool("claim");
        let id = queue(&spool, 1, &["<a@b.example>"]);
        let Claimed::Mine(c) = spool.claim(id).unwrap() else {
            panic!("not claimed");
        };
        assert!(matches!(spool.claim(id).unwrap(), Claimed::Busy));
        assert!(spool.is_claimed(id));
        let started = Instant::now();
        assert!(matches!(
            spool.claim_wait(id, Duration::from_millis(200)).unwrap(),
            Claimed::Busy
        ));
        assert!(started.elapsed() >= Duration::from_millis(200));

        let (mut a, mut b) = (c.body(), c.body());
        let mut first = [0u8; 9];
        a.read_exact(&mut first).unwrap();
        let mut all = Vec::new();
        b.read_to_end(&mut all).unwrap();
        assert_eq!(&first, b"Subject: ");
        assert_eq!(all, b"Subject: x\r\n\r\nhi\r\n");
        assert_eq!(b.seek(SeekFrom::End(-4)).unwrap(), 14);
        assert_eq!(c.body().len().unwrap(), 18);

        let mut env = c.load().unwrap().unwrap();
        env.attempts = 3;
        c.store(&env).unwrap();
        drop(c);
        let Claimed::Mine(c) = spool.claim(id).unwrap() else {
            panic!("a dropped claim is not free again");
        };
        assert_eq!(c.load().unwrap().unwrap().attempts, 3);
        c.finish().unwrap();
        assert!(matches!(spool.claim(id).unwrap(), Claimed::Gone));
        assert!(!spool.msg_path(id).exists());
        assert!(spool.load(id).is_err());
        let _ = fs::remove_dir_all(spool.root());
    }
}
