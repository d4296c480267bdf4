//! `QueueId`: the name of a message in the spool.
//!
//! Sixteen upper-case hex digits: microseconds since the Unix epoch in the
//! high 52 bits (good until 2112), and 12 bits of the process id below,
//! so ids sort by arrival time and two processes writing one spool (the
//! server and `smtp-relay send`) rarely make the same id: only when their
//! pids agree in 12 bits and they draw in the same microsecond. The commit
//! is the guard: it never renames over a queued file and moves to a fresh
//! id when its own is taken (`Incoming::commit`). Within a process ids
//! strictly increase. At start-up the server seeds the generator past
//! every id already in the spool, so a clock set back cannot reuse one.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct QueueId(u64);

static LAST: AtomicU64 = AtomicU64::new(0);

const PID_BITS: u32 = 12;
const TICK: u64 = 1 << PID_BITS;

impl QueueId {
    /// A fresh id, later than every id this process made or was seeded with.
    pub fn generate() -> QueueId {
        let micros = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_micros() as u64)
            .unwrap_or(0);
        let pid = u64::from(crate::sys::pid()) & (TICK - 1);
        let now = (micros << PID_BITS) | pid;
        let mut last = LAST.load(Ordering::Relaxed);
        loop {
            // the next free microsecond slot, with our pid bits
            let next = if now > last {
                now
            } else {
                ((last >> PID_BITS) + 1) << PID_BITS | pid
            };
            match LAST.compare_exchange_weak(last, next, Ordering::Relaxed, Ordering::Relaxed) {
                Ok(_) => return QueueId(next),
                Err(seen) => last = seen,
            }
        }
    }

    /// Makes every later `generate` return an id above `id`.
    pub fn seed_after(id: QueueId) {
        LAST.fetch_max(id.0, Ordering::Relaxed);
    }

    /// Parses the 16-digit form; anything else (a stray file, a path with
    /// `/` or `..`) is not an id, so ids are always safe as file names.
    pub fn parse(s: &str) -> Option<QueueId> {
        if s.len() != 16
            || !s
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'A'..=b'F').contains(&b))
        {
            return None;
        }
        u64::from_str_radix(s, 16).ok().map(QueueId)
    }

    /// Arrival time encoded in the id, in seconds since the epoch.
    pub fn unix_secs(self) -> u64 {
        (self.0 >> PID_BITS) / 1_000_000
    }
}

impl fmt::Display for QueueId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016X}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unique_sorted_roundtrip() {
        let ids: Vec<QueueId> = (0..1000).map(|_| QueueId::generate()).collect();
        assert!(ids.windows(2).all(|w| w[0] < w[1]));
        let texts: Vec<String> = ids.iter().map(|i| i.to_string()).collect();
        assert!(
            texts.windows(2).all(|w| w[0] < w[1]),
            "text sorts like time"
        );
        for (i, t) in ids.iter().zip(&texts) {
            assert_eq!(QueueId::parse(t), Some(*i));
        }
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        assert!(ids[0].unix_secs().abs_diff(now) < 5);
        QueueId::seed_after(QueueId(u64::MAX >> 1));
        assert!(QueueId::generate() > QueueId(u64::MAX >> 1));
        for bad in [
            "",
            "../../etc/passwd",
            "0123456789abcdef",
            "0123456789ABCDEFF",
            "0123456789ABCDEG",
        ] {
            assert_eq!(QueueId::parse(bad), None, "{bad}");
        }
    }
}
