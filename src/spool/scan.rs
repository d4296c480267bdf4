//! Reading many envelopes at once: start-up recovery and the queue
//! commands of a big spool (README "At scale").
//!
//! Each envelope is its own small file, so reading a million of them is a
//! million opens and reads, nearly all of it kernel time on one core. The
//! ids are split into chunks that a few threads take in turn (oldest
//! chunk first), each folding what it reads into its own state, so
//! nothing waits on a lock per message and no envelope is kept unless
//! the caller keeps it.

use std::ops::ControlFlow;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use super::{Envelope, QueueId, Spool, SpoolError};

/// Ids a thread takes at a time: large enough that taking one is rare,
/// small enough that the threads end together and the oldest go first.
const CHUNK: usize = 256;
/// Threads for a scan: one per core, at least two so that one waits on
/// the disk while another parses, at most a few (more only contend for
/// the folder's lock in the kernel).
const MAX_THREADS: usize = 4;

/// How many threads a scan of `n` envelopes uses.
fn threads_for(n: usize) -> usize {
    let cores = std::thread::available_parallelism().map_or(1, |c| c.get());
    cores.clamp(2, MAX_THREADS).min(n.div_ceil(CHUNK)).max(1)
}

/// Loads the envelope of every id in `ids` on a few threads. `each` gets
/// the thread's own state (made by `init`), the id and what loading it
/// gave; the states come back, one per thread, for the caller to merge.
/// Within a thread, ids come in the order of `ids`. `each` breaking
/// stops every thread soon after (at its next id).
pub fn load_each<T, I, F>(spool: &Spool, ids: &[QueueId], init: I, each: F) -> Vec<T>
where
    T: Send,
    I: Fn() -> T + Sync,
    F: Fn(&mut T, QueueId, Result<Envelope, SpoolError>) -> ControlFlow<()> + Sync,
{
    let next = AtomicUsize::new(0);
    let stop = AtomicBool::new(false);
    let work = |state: &mut T| loop {
        let start = next.fetch_add(CHUNK, Ordering::Relaxed);
        if start >= ids.len() {
            return;
        }
        for &id in &ids[start..(start + CHUNK).min(ids.len())] {
            if stop.load(Ordering::Relaxed) {
                return;
            }
            if each(state, id, spool.load(id)).is_break() {
                stop.store(true, Ordering::Relaxed);
                return;
            }
        }
    };
    let n = threads_for(ids.len());
    if n <= 1 {
        let mut state = init();
        work(&mut state);
        return vec![state];
    }
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..n)
            .map(|_| {
                s.spawn(|| {
                    let mut state = init();
                    work(&mut state);
                    state
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
            .collect()
    })
}

#[cfg(test)]
mod tests {
    use super::super::tests::{env_for, temp_spool};
    use super::*;

    /// Every id is loaded exactly once whatever the thread count, and a
    /// missing one says so instead of stopping the scan.
    #[test]
    fn every_id_is_loaded_once() {
        let spool = temp_spool("scan-each");
        let mut ids = Vec::new();
        for _ in 0..(CHUNK * 3 + 7) {
            let env = env_for(QueueId::generate());
            spool.store(&env).unwrap();
            ids.push(env.id);
        }
        let missing = QueueId::generate();
        ids.push(missing);
        let states = load_each(&spool, &ids, Vec::new, |seen, id, r| {
            seen.push((id, r.map(|e| e.id).ok()));
            ControlFlow::Continue(())
        });
        let mut seen: Vec<_> = states.into_iter().flatten().collect();
        seen.sort();
        assert_eq!(seen.len(), ids.len());
        for (id, loaded) in &seen {
            assert_eq!(*loaded, (*id != missing).then_some(*id));
        }
    }
}
