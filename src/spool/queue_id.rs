//! `QueueId`: the name of a message in the spool.
//!
//! Sixteen upper-case hex digits of microseconds since the Unix epoch,
//! made strictly increasing within the process, so ids sort by arrival
//! time and read well in logs. Uniqueness across restarts comes from the
//! clock moving on plus `create_new` on the spool files: an id whose files
//! exist is never handed out again (see `Spool::incoming`).

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct QueueId(u64);

static LAST: AtomicU64 = AtomicU64::new(0);

impl QueueId {
    /// A fresh id, later than every id this process made before.
    pub fn generate() -> QueueId {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_micros() as u64)
            .unwrap_or(0);
        let mut last = LAST.load(Ordering::Relaxed);
        loop {
            let next = now.max(last + 1);
            match LAST.compare_exchange_weak(last, next, Ordering::Relaxed, Ordering::Relaxed) {
                Ok(_) => return QueueId(next),
                Err(seen) => last = seen,
            }
        }
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
        self.0 / 1_000_000
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
