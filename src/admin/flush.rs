//! `queue flush`: attempt the selected messages now. With a server on
//! the spool, the request goes to it through the spool (`spool/flush.rs`)
//! and `--wait` follows the messages' progress; without one, the messages
//! are delivered in this process, like `sendmail -q`.

use std::collections::HashMap;
use std::io::{self, IsTerminal, Write};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use super::render::list_line;
use super::select::{select, Selector};
use super::{AdminError, EX_OK, EX_TEMPFAIL, EX_UNAVAILABLE};
use crate::delivery::{Deliverer, Outcome};
use crate::exit::Exit;
use crate::spool::{Envelope, FlushRequest, QueueId, RcptState, Spool, SpoolError};
use crate::time::now_unix;

/// How `queue flush` builds a delivery engine when no server runs on the
/// spool (app.rs supplies it: the queue commands build nothing).
pub type BuildDeliverer<'a> = &'a dyn Fn(Arc<Spool>) -> Result<Deliverer, AdminError>;

/// A foreground flush's engine: how to build it, and how many threads.
pub(super) struct Foreground<'a> {
    pub build: BuildDeliverer<'a>,
    pub workers: usize,
}

/// What `queue flush` was asked to do.
pub(super) struct FlushOpts {
    pub wait: bool,
    pub timeout: Duration,
    pub quiet: bool,
    pub dry_run: bool,
}

/// Counts of where the selected messages stand, for `flush --wait`.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Progress {
    done: usize,
    deferred: usize,
    waiting: usize,
}

impl Progress {
    /// The exit code once nothing is waiting: 75 while any is deferred.
    fn exit(&self) -> Exit {
        if self.deferred > 0 {
            EX_TEMPFAIL
        } else {
            EX_OK
        }
    }

    /// The progress line on a terminal (stderr), rewritten in place.
    fn show(&self) {
        eprint!(
            "\rflush: {} done, {} deferred again, {} waiting   ",
            self.done, self.deferred, self.waiting
        );
    }
}

pub(super) fn flush(
    fg: &Foreground,
    spool: &Spool,
    sel: &Selector,
    opts: &FlushOpts,
) -> Result<Exit, AdminError> {
    // everything, with a server running: one `*` request, as `touch
    // SPOOL/flush` is, and no envelope read here (a drain of 100,000
    // spent 1.3 s of CPU reading them to name each in the request, and
    // the server as long parsing the names)
    let everything = sel.is_everything() && !opts.dry_run && !opts.wait;
    let lock = if everything {
        match spool.lock() {
            Err(SpoolError::Locked(_)) => return flush_all_by_server(spool, opts.quiet),
            Ok(lock) => Some(lock),
            Err(e) => return Err(e.into()),
        }
    } else {
        None
    };
    let now = now_unix();
    let envs: Vec<Envelope> = select(spool, sel, now)?
        .into_iter()
        .filter(|e| !e.hold.is_some_and(|h| h.active(now)) && !e.is_done())
        .collect();
    let mut out = io::stdout().lock();
    if opts.dry_run {
        for e in &envs {
            writeln!(out, "would flush {}", list_line(e, now))?;
        }
        return Ok(EX_OK);
    }
    if envs.is_empty() {
        if !opts.quiet {
            writeln!(out, "flush: nothing selected")?;
        }
        return Ok(EX_OK);
    }
    let ids: Vec<QueueId> = envs.iter().map(|e| e.id).collect();
    let show = !opts.quiet && io::stderr().is_terminal();
    match lock.map_or_else(|| spool.lock(), Ok) {
        Ok(lock) => {
            // No server: deliver in the foreground, like `sendmail -q`.
            let result = flush_foreground(fg, spool, &ids, show);
            drop(lock);
            let p = result?;
            report(&mut out, opts.quiet, &p)?;
            Ok(p.exit())
        }
        Err(SpoolError::Locked(_)) => {
            let request = spool.request_flush(&ids)?;
            if !opts.wait {
                // taken in (its gauges too) before we return, when the
                // server is alive; the attempts themselves are not awaited
                let _ = request.wait_done(Duration::from_secs(5));
                if !opts.quiet {
                    writeln!(
                        out,
                        "flush: asked the server to attempt {} message(s) now",
                        ids.len()
                    )?;
                }
                return Ok(EX_OK);
            }
            let before: HashMap<QueueId, u32> = envs.iter().map(|e| (e.id, e.attempts)).collect();
            wait_for_server(spool, request, &before, opts, show, &mut out)
        }
        Err(e) => Err(e.into()),
    }
}

/// `queue flush` of everything with a server on the spool: it makes
/// every waiting message due (held ones stay held), as for `touch
/// SPOOL/flush`; returns once it took the request in (at most 5 s).
fn flush_all_by_server(spool: &Spool, quiet: bool) -> Result<Exit, AdminError> {
    let queued = spool.list_ids()?.len();
    let mut out = io::stdout().lock();
    if queued == 0 {
        if !quiet {
            writeln!(out, "flush: nothing selected")?;
        }
        return Ok(EX_OK);
    }
    let request = spool.request_flush(&[])?;
    let _ = request.wait_done(Duration::from_secs(5));
    if !quiet {
        writeln!(
            out,
            "flush: asked the server to attempt every waiting message now ({queued} queued)"
        )?;
    }
    Ok(EX_OK)
}

/// `--wait` with a server on the spool: follows the messages' progress
/// until none is waiting or `--timeout`; unavailable (69) when the server
/// does not pick the request up within 10 s. The server's progress is
/// only seen in the spool's files, so this reads them every 100 ms.
fn wait_for_server(
    spool: &Spool,
    request: FlushRequest,
    before: &HashMap<QueueId, u32>,
    opts: &FlushOpts,
    show: bool,
    out: &mut impl Write,
) -> Result<Exit, AdminError> {
    let deadline = Instant::now() + opts.timeout;
    let pickup = Instant::now() + Duration::from_secs(10).min(opts.timeout);
    let end_line = || {
        if show {
            eprintln!();
        }
    };
    loop {
        let p = progress(spool, before)?;
        if show {
            p.show();
        }
        if p.waiting == 0 {
            end_line();
            report(out, opts.quiet, &p)?;
            return Ok(p.exit());
        }
        if !request.picked_up() && Instant::now() > pickup {
            request.withdraw();
            end_line();
            return Err(AdminError {
                code: EX_UNAVAILABLE,
                message: "the server holding the spool did not pick up the flush request".into(),
            });
        }
        if Instant::now() > deadline {
            end_line();
            report(out, opts.quiet, &p)?;
            return Ok(EX_TEMPFAIL);
        }
        thread::sleep(Duration::from_millis(100));
    }
}

fn report(out: &mut impl Write, quiet: bool, p: &Progress) -> io::Result<()> {
    if !quiet {
        writeln!(
            out,
            "flush: {} done, {} still deferred, {} not attempted in time",
            p.done, p.deferred, p.waiting
        )?;
    }
    Ok(())
}

/// Where each message stands relative to its attempt count before flush:
/// gone = done; attempted again and unlocked = deferred; else waiting.
fn progress(spool: &Spool, before: &HashMap<QueueId, u32>) -> Result<Progress, SpoolError> {
    let mut p = Progress::default();
    for (id, attempts) in before {
        match spool.load(*id) {
            Ok(env) if env.is_done() => p.done += 1,
            Ok(env) if env.attempts > *attempts && !spool.is_claimed(*id) => {
                if env
                    .rcpts
                    .iter()
                    .any(|r| r.state == RcptState::Deferred || r.state == RcptState::Pending)
                {
                    p.deferred += 1
                } else {
                    p.done += 1
                }
            }
            Ok(_) => p.waiting += 1,
            Err(SpoolError::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound => {
                p.done += 1
            }
            Err(SpoolError::Corrupt { .. }) => p.waiting += 1,
            Err(e) => return Err(e),
        }
    }
    Ok(p)
}

/// One delivery pass over `ids` in this process (no server running).
fn flush_foreground(
    fg: &Foreground,
    spool: &Spool,
    ids: &[QueueId],
    show: bool,
) -> Result<Progress, AdminError> {
    let deliverer = Arc::new((fg.build)(Arc::new(spool.clone()))?);
    let (tx, rx) = crossbeam_channel::bounded::<QueueId>(ids.len());
    for id in ids {
        let _ = tx.send(*id);
    }
    drop(tx);
    let (rtx, rrx) = crossbeam_channel::unbounded::<Option<Outcome>>();
    let workers = fg.workers.clamp(1, 64).min(ids.len());
    let mut handles = Vec::new();
    for i in 0..workers {
        let rx = rx.clone();
        let rtx = rtx.clone();
        let d = deliverer.clone();
        handles.push(
            thread::Builder::new()
                .name(format!("flush-{i}"))
                .spawn(move || {
                    for id in rx.iter() {
                        let o = match d.attempt(id) {
                            Ok(o) => Some(o),
                            Err(e) => {
                                log::error!("{id} delivery attempt failed: {e}");
                                None
                            }
                        };
                        let _ = rtx.send(o);
                    }
                })
                .map_err(AdminError::from)?,
        );
    }
    drop(rtx);
    let mut p = Progress {
        waiting: ids.len(),
        ..Progress::default()
    };
    for o in rrx.iter() {
        p.waiting -= 1;
        match o {
            Some(Outcome::Done) | Some(Outcome::Gone) => p.done += 1,
            Some(Outcome::Held) => {}
            Some(Outcome::Retry(_)) | None => p.deferred += 1,
        }
        if show {
            p.show();
        }
    }
    if show {
        eprintln!();
    }
    for h in handles {
        let _ = h.join();
    }
    deliverer.cache.sweep_all();
    Ok(p)
}
