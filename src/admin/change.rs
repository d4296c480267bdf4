//! The queue commands that change messages: `hold`, `release`, `requeue`,
//! `delete` and `bounce`. Each change is made under the message's claim
//! (the lock a delivery holds for its whole attempt), so a command never
//! edits or deletes a message in the middle of a delivery; a message still
//! being delivered after `LOCK_WAIT` is reported busy (exit 75).

use std::io::{self, Write};
use std::time::Duration;

use super::render::list_line;
use super::select::{pin_selection, select, Selector};
use super::{AdminError, EX_OK, EX_TEMPFAIL};
use crate::bounce;
use crate::delivery::outcome;
use crate::exit::Exit;
use crate::spool::{Claim, Claimed, Envelope, Hold, QueueId, Request, Spool, SpoolError};
use crate::time::now_unix;

/// What a changing command does with a claimed message's envelope.
enum After {
    /// Store the changed envelope.
    Store,
    /// Remove the message (it is finished).
    Finish,
}

/// Runs `f` on the message's envelope under its claim (the lock a
/// delivery holds for its whole attempt), then does what `f` says. Waits
/// up to `wait` for a delivery in progress; `Ok(None)` when still busy,
/// `Ok(Some(false))` when gone.
fn with_claim(
    spool: &Spool,
    id: QueueId,
    wait: Duration,
    f: impl FnOnce(&Claim, &mut Envelope) -> Result<After, SpoolError>,
) -> Result<Option<bool>, SpoolError> {
    let claim = match spool.claim_wait(id, wait)? {
        Claimed::Mine(c) => c,
        Claimed::Busy => return Ok(None),
        Claimed::Gone => return Ok(Some(false)),
    };
    let Some(mut env) = claim.load()? else {
        return Ok(Some(false));
    };
    match f(&claim, &mut env)? {
        After::Store => claim.store(&env)?,
        After::Finish => claim.finish()?,
    }
    Ok(Some(true))
}

/// How long a changing command waits for a delivery in progress.
const LOCK_WAIT: Duration = Duration::from_secs(10);

/// How long a changing command waits for a running server to take in
/// its change (the scheduler looks every 0.5 s).
const SERVER_WAIT: Duration = Duration::from_secs(5);

/// Tells a running server what changed, and waits until it has taken it
/// in, so its queue gauges are right at the next scrape (README
/// "Metrics"). Without a server (or one too slow) there is nothing to
/// wait for: the next start or rescan reads the spool as it is.
fn tell_server(spool: &Spool, requests: &[Request]) {
    if requests.is_empty() {
        return;
    }
    let running = spool.is_locked();
    // with no server running, a deletion or a return is still left for
    // the next one when the spool has a commit log: its replay at start
    // would otherwise bring back a message finished here after it was
    // logged (a kill -9 within a checkpoint of its commit)
    let finishes = requests
        .iter()
        .any(|r| matches!(r, Request::Deleted(_) | Request::Returned(..)));
    let left_for_next = finishes && spool.has_commit_log();
    if !(running || left_for_next) {
        return;
    }
    match spool.request(requests) {
        Ok(r) if running => {
            if !r.wait_done(SERVER_WAIT) {
                // the change itself is made; only the server's view lags
                // (a busy or stuck server, or one whose commit log
                // refused the record and keeps the request for its next
                // start, which it logs)
                log::warn!(
                    "the running server has not taken in the change after {} s; \
                     the request stays in flush.d/ for it (see the server's log)",
                    SERVER_WAIT.as_secs()
                );
            }
        }
        Ok(_) => {}
        Err(e) => log::warn!("could not tell the server: {e}"),
    }
}

/// Applies `f` to every selected message under its lock; prints one line
/// per message. `--dry-run` prints what would change and changes nothing.
/// Returns the exit code and the ids changed, also those changed before
/// an error stopped it (the server is told of them all the same).
fn change(
    spool: &Spool,
    sel: &Selector,
    dry_run: bool,
    verb: &str,
    f: impl Fn(&Claim, &mut Envelope) -> Result<After, SpoolError>,
) -> (Result<Exit, AdminError>, Vec<QueueId>) {
    let mut changed = Vec::new();
    let code = change_each(spool, sel, dry_run, verb, f, &mut changed);
    (code, changed)
}

fn change_each(
    spool: &Spool,
    sel: &Selector,
    dry_run: bool,
    verb: &str,
    f: impl Fn(&Claim, &mut Envelope) -> Result<After, SpoolError>,
    changed: &mut Vec<QueueId>,
) -> Result<Exit, AdminError> {
    let now = now_unix();
    let envs = select(spool, sel, now)?;
    let mut out = io::stdout().lock();
    let mut busy = 0;
    for env in &envs {
        if dry_run {
            writeln!(out, "would {verb} {}", list_line(env, now))?;
            continue;
        }
        match with_claim(spool, env.id, LOCK_WAIT, &f)? {
            Some(true) => {
                changed.push(env.id);
                writeln!(out, "{verb} {}", env.id)?
            }
            Some(false) => writeln!(out, "gone {}", env.id)?,
            None => {
                busy += 1;
                writeln!(out, "busy {} (being delivered; try again)", env.id)?;
            }
        }
    }
    Ok(if busy > 0 { EX_TEMPFAIL } else { EX_OK })
}

/// `queue hold [--for DURATION]`.
pub(super) fn hold(
    spool: &Spool,
    sel: &Selector,
    dry_run: bool,
    duration: Option<Duration>,
    now: u64,
) -> Result<Exit, AdminError> {
    let hold = match duration {
        Some(d) => Hold::Until(now + d.as_secs()),
        None => Hold::Forever,
    };
    let (code, ids) = change(spool, sel, dry_run, "hold", |_, env| {
        env.hold = Some(hold);
        Ok(After::Store)
    });
    let changed: Vec<Request> = ids.iter().map(|&id| Request::Changed(id)).collect();
    tell_server(spool, &changed);
    code
}

/// `queue release` and `queue requeue`: `f` makes the message due now,
/// then a running server is asked to attempt exactly those messages (the
/// ids are pinned first: once changed they may no longer match, e.g.
/// `--state held`).
fn make_due(
    spool: &Spool,
    sel: &Selector,
    dry_run: bool,
    verb: &str,
    now: u64,
    f: impl Fn(&mut Envelope),
) -> Result<Exit, AdminError> {
    let (ids, sel) = pin_selection(spool, sel, now)?;
    if ids.is_empty() {
        return Ok(EX_OK);
    }
    let code = change(spool, &sel, dry_run, verb, |_, env| {
        f(env);
        env.next_try = now_unix();
        Ok(After::Store)
    })
    .0?;
    if !dry_run {
        // due now; the server reads the hold again too (`release`)
        tell_server(
            spool,
            &ids.iter().map(|&id| Request::Due(id)).collect::<Vec<_>>(),
        );
    }
    Ok(code)
}

/// `queue release`: no longer held, due now.
pub(super) fn release(
    spool: &Spool,
    sel: &Selector,
    dry_run: bool,
    now: u64,
) -> Result<Exit, AdminError> {
    make_due(spool, sel, dry_run, "release", now, |env| {
        env.hold = None;
        env.hold_reason = None;
    })
}

/// `queue requeue`: deferred recipients pending again, due now.
pub(super) fn requeue(
    spool: &Spool,
    sel: &Selector,
    dry_run: bool,
    now: u64,
) -> Result<Exit, AdminError> {
    make_due(spool, sel, dry_run, "requeue", now, outcome::requeue)
}

/// `queue delete`: removed without a DSN, logged.
pub(super) fn delete(
    spool: &Spool,
    sel: &Selector,
    dry_run: bool,
    now: u64,
    out: &mut impl Write,
) -> Result<Exit, AdminError> {
    let mut gone = Vec::new();
    let code = delete_each(spool, sel, dry_run, now, out, &mut gone);
    // also when an error stopped it: the messages deleted before it are
    // gone, and the commit log's replay must know (`tell_server`)
    tell_server(
        spool,
        &gone
            .iter()
            .map(|&id| Request::Deleted(id))
            .collect::<Vec<_>>(),
    );
    code
}

fn delete_each(
    spool: &Spool,
    sel: &Selector,
    dry_run: bool,
    now: u64,
    out: &mut impl Write,
    gone: &mut Vec<QueueId>,
) -> Result<Exit, AdminError> {
    let envs = select(spool, sel, now)?;
    let mut busy = 0;
    for env in &envs {
        if dry_run {
            writeln!(out, "would delete {}", list_line(env, now))?;
            continue;
        }
        match with_claim(spool, env.id, LOCK_WAIT, |_, _| Ok(After::Finish))? {
            Some(true) => {
                gone.push(env.id);
                log::info!("{} deleted by the operator", env.id);
                writeln!(out, "deleted {}", env.id)?;
            }
            Some(false) => writeln!(out, "gone {}", env.id)?,
            None => {
                busy += 1;
                writeln!(out, "busy {} (being delivered; try again)", env.id)?;
            }
        }
    }
    Ok(if busy > 0 { EX_TEMPFAIL } else { EX_OK })
}

/// `queue bounce`: every unfinished recipient returned to the sender
/// with a DSN, which a running server is asked to send now.
pub(super) fn bounce(
    spool: &Spool,
    sel: &Selector,
    dry_run: bool,
    hostname: &str,
) -> Result<Exit, AdminError> {
    let dsns = std::cell::RefCell::new(std::collections::HashMap::new());
    let (code, ids) = change(spool, sel, dry_run, "bounce", |claim, env| {
        let now = now_unix();
        outcome::return_to_sender(env);
        claim.store(env)?;
        let dsn = bounce::report_bouncing(claim, hostname, env, now, None)?;
        log::info!(
            "{} returned to sender by the operator (DSN {dsn:?})",
            env.id
        );
        dsns.borrow_mut().insert(env.id, dsn);
        if let (Some(dsn), true) = (dsn, claim.spool().is_locked()) {
            let _ = claim.spool().request_flush(&[dsn]);
        }
        Ok(After::Finish)
    });
    // also when an error stopped it: the messages returned before it are
    // finished, and the commit log's replay must know (`tell_server`)
    let dsns = dsns.into_inner();
    let returned: Vec<Request> = ids
        .iter()
        .map(|&id| Request::Returned(id, dsns.get(&id).copied().flatten()))
        .collect();
    tell_server(spool, &returned);
    code
}
