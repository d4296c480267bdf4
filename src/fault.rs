//! Fault injection for tests, compiled into debug builds only.
//!
//! `SMTP_RELAY_FAULT=session-panic[:N],delivery-panic[:N],commit-panic[:N]`
//! makes the named place panic the first N times it runs (N defaults to
//! 1), so the integration tests (which run the debug binary) can show
//! that a panic costs neither a thread nor a message (README "Panics").
//! `commit-flush-fail[:N]` makes the committer's flush after a batch's
//! renames fail N times with an I/O error instead (`fails`), as a disk
//! that failed writeback would. `checkpoint-hold[:N]` makes the
//! committer put off its checkpoint of the messages in its commit log N
//! times, so a test can kill the server while they are in the log only
//! (`spool/commit_log.rs`). `done-record-fail[:N]` makes the committer's
//! `done` record fail N times with an I/O error, as a log write the disk
//! refused (`committer::Run::retire`).
//! The variable is read once, on the first `hit`. In a release build
//! `hit` is empty and the variable means nothing.
//!
//! `recovery-stall` in the same variable makes start-up recovery wait,
//! before it reads the first envelope, until a file the test creates
//! exists (`stall_recovery`): the server then runs with the queue not yet
//! read, a state that otherwise lasts only as long as reading takes.

/// A place that can be made to panic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Point {
    /// A session, on a command line it has read.
    Session = 0,
    /// A delivery worker, at the start of an attempt.
    Delivery = 1,
    /// The committer, on a batch it has taken.
    Commit = 2,
    /// The committer's flush after a batch's renames (fails, not panics).
    CommitFlush = 3,
    /// The committer's checkpoint of its commit log (put off).
    Checkpoint = 4,
    /// The committer's `done` record of a finished message (fails).
    DoneRecord = 5,
}

#[cfg_attr(not(debug_assertions), allow(dead_code))]
const POINTS: [(Point, &str); N_POINTS] = [
    (Point::Session, "session-panic"),
    (Point::Delivery, "delivery-panic"),
    (Point::Commit, "commit-panic"),
    (Point::CommitFlush, "commit-flush-fail"),
    (Point::Checkpoint, "checkpoint-hold"),
    (Point::DoneRecord, "done-record-fail"),
];

const N_POINTS: usize = 6;

/// How many panics each point has left, by `Point as usize`; unknown
/// names are ignored (with a warning).
#[cfg_attr(not(debug_assertions), allow(dead_code))]
fn parse(spec: &str) -> [usize; N_POINTS] {
    let mut left = [0; N_POINTS];
    for item in spec.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let (name, n) = match item.split_once(':') {
            Some((name, n)) => (name, n.parse().ok()),
            None => (item, Some(1)),
        };
        match (POINTS.iter().find(|(_, s)| *s == name), n) {
            (Some((p, _)), Some(n)) => left[*p as usize] = n,
            (None, _) if name == RECOVERY_STALL => {}
            _ => log::warn!("SMTP_RELAY_FAULT: ignoring {item:?}"),
        }
    }
    left
}

/// Whether `point` is armed and has faults left (taking one).
#[cfg(debug_assertions)]
fn take(point: Point) -> bool {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::OnceLock;
    static LEFT: OnceLock<[AtomicUsize; N_POINTS]> = OnceLock::new();
    let left = LEFT.get_or_init(|| {
        let spec = std::env::var("SMTP_RELAY_FAULT").unwrap_or_default();
        let left = parse(&spec);
        if left.iter().any(|n| *n > 0) {
            log::warn!("SMTP_RELAY_FAULT={spec}: fault injection armed (debug build)");
        }
        left.map(AtomicUsize::new)
    });
    left[point as usize]
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_ok()
}

/// Panics if `point` is armed and has panics left.
#[cfg(debug_assertions)]
pub fn hit(point: Point) {
    if take(point) {
        let name = POINTS[point as usize].1;
        panic!("fault injected: {name}");
    }
}

/// An I/O error if `point` is armed and has failures left.
#[cfg(debug_assertions)]
pub fn fails(point: Point) -> std::io::Result<()> {
    if take(point) {
        let name = POINTS[point as usize].1;
        return Err(std::io::Error::other(format!("fault injected: {name}")));
    }
    Ok(())
}

/// Release builds: nothing.
#[cfg(not(debug_assertions))]
#[inline(always)]
pub fn fails(_point: Point) -> std::io::Result<()> {
    Ok(())
}

/// Release builds: nothing.
#[cfg(not(debug_assertions))]
#[inline(always)]
pub fn hit(_point: Point) {}

#[cfg_attr(not(debug_assertions), allow(dead_code))]
const RECOVERY_STALL: &str = "recovery-stall";

/// With `recovery-stall` armed, waits until `go` exists (a minute at
/// most); otherwise returns at once.
#[cfg(debug_assertions)]
pub fn stall_recovery(go: &std::path::Path) {
    let spec = std::env::var("SMTP_RELAY_FAULT").unwrap_or_default();
    if !spec.split(',').any(|s| s.trim() == RECOVERY_STALL) {
        return;
    }
    log::warn!("SMTP_RELAY_FAULT: recovery waits for {}", go.display());
    let end = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while !go.exists() && std::time::Instant::now() < end {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// Release builds: nothing.
#[cfg(not(debug_assertions))]
#[inline(always)]
pub fn stall_recovery(_go: &std::path::Path) {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec() {
        assert_eq!(parse(""), [0, 0, 0, 0, 0, 0]);
        assert_eq!(parse("session-panic"), [1, 0, 0, 0, 0, 0]);
        assert_eq!(parse("session-panic:2, commit-panic"), [2, 0, 1, 0, 0, 0]);
        assert_eq!(
            parse("delivery-panic:3,bogus,commit-panic:x"),
            [0, 3, 0, 0, 0, 0]
        );
        assert_eq!(parse("checkpoint-hold:9"), [0, 0, 0, 0, 9, 0]);
        assert_eq!(parse("recovery-stall,commit-panic"), [0, 0, 1, 0, 0, 0]);
        assert_eq!(parse("commit-flush-fail:2"), [0, 0, 0, 2, 0, 0]);
        assert_eq!(parse("done-record-fail"), [0, 0, 0, 0, 0, 1]);
    }
}
