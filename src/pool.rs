//! A fixed-size pool of named threads fed by a bounded hand-off queue
//! (`handoff.rs`: the thread idle the shortest time takes the next item).
//!
//! The size never grows: when every thread is busy the queue fills, and
//! whoever feeds it decides what "full" means (the listener answers 421).

use std::io;
use std::thread::{self, JoinHandle};

use crate::handoff::Receiver;

pub struct Pool {
    handles: Vec<JoinHandle<()>>,
}

impl Pool {
    /// Starts `n` threads named `name-0` … that run `work` on each item
    /// until the queue's senders are all gone.
    pub fn spawn<T, F>(
        name: &str,
        n: usize,
        stack: usize,
        rx: Receiver<T>,
        work: F,
    ) -> io::Result<Pool>
    where
        T: Send + 'static,
        F: Fn(T) + Send + Sync + Clone + 'static,
    {
        let mut handles = Vec::with_capacity(n);
        for i in 0..n {
            let rx = rx.clone();
            let work = work.clone();
            let h = thread::Builder::new()
                .name(format!("{name}-{i}"))
                .stack_size(stack)
                .spawn(move || {
                    for item in rx.iter() {
                        work(item);
                    }
                })?;
            handles.push(h);
        }
        Ok(Pool { handles })
    }

    /// Waits for every thread to finish (after the senders are dropped).
    pub fn join(self) {
        for h in self.handles {
            let _ = h.join();
        }
    }
}

/// Runs `f`, catching a panic: logs it at ERROR as `what panicked: MSG`
/// and returns `None`, so the calling thread lives on (README "Panics").
/// Only for work whose state a panic cannot leave half-changed: sockets
/// and files are closed by unwinding, locks here are poison-tolerant, and
/// every spool change is a rename that either happened or did not.
pub fn catch<R>(what: impl std::fmt::Display, f: impl FnOnce() -> R) -> Option<R> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        Ok(r) => Some(r),
        Err(payload) => {
            let msg = payload
                .downcast_ref::<&str>()
                .copied()
                .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
                .unwrap_or("(no message)");
            log::error!("{what} panicked: {msg}");
            None
        }
    }
}

/// Runs a thread's whole loop; a panic in it aborts the process. For the
/// threads that own state nothing else can rebuild while running (the
/// scheduler's heap, a listener): a server that stays up without them
/// would look healthy and do nothing, while an abort lets the supervisor
/// restart it, and every start recovers the spool.
pub fn or_abort(what: impl std::fmt::Display, f: impl FnOnce()) {
    if catch(&what, f).is_none() {
        log::error!("{what} is gone: aborting so that the supervisor restarts the server");
        std::process::abort();
    }
}
