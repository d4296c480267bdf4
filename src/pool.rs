//! A fixed-size pool of named threads fed by a bounded channel.
//!
//! The size never grows: when every thread is busy the channel fills, and
//! whoever feeds it decides what "full" means (the listener answers 421).

use std::io;
use std::thread::{self, JoinHandle};

use crossbeam_channel::Receiver;

pub struct Pool {
    handles: Vec<JoinHandle<()>>,
}

impl Pool {
    /// Starts `n` threads named `name-0` … that run `work` on each item
    /// until the channel's senders are all gone.
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
