//! `smtp-relay queue …` and `smtp-relay send`: the spool for people and
//! scripts.
//!
//! Every command works whether or not a server runs on the spool. Changes
//! to a message are made under its claim (`spool::Claim`, an flock on its
//! body), the same claim a delivery holds for its whole attempt, so a command never edits or deletes a
//! message in the middle of a delivery. A message still being received
//! lives in `tmp/` or in a reused file in `free/` and is never seen here:
//! only committed messages (those with an envelope in `queue/`) are
//! listed.
//!
//! Output is stable for scripts: `list` prints one tab-separated line per
//! message; `--json` one JSON object per line whose fields are documented
//! in README and versioned by `"v": 1`.
//!
//! Exit codes (sysexits, `exit.rs`): 0 done (flush: nothing selected is
//! left deferred), 64 usage, 66 no such message (show), 69 server
//! unreachable, 74 spool I/O error, 75 some selected messages still
//! deferred, or busy, 77 cannot act as the spool's owner, 78 no spool or
//! an unsafe one.

mod change;
pub mod content;
mod flush;
pub mod headers;
mod prepare;
pub mod render;
pub mod select;
mod send;

pub use flush::BuildDeliverer;
pub use headers::header_addresses;
pub use prepare::{prepare_message, PrepareError, Prepared};
pub use render::{json_str, list_json, list_line, summary};
pub use select::{glob, select, Selector, StateFilter};
pub use send::{
    author_field, local_client, log_queued, queue_message, run_send, Queued, SendOpts, Submitter,
    Via,
};
pub(crate) use send::{parse_mailbox, qualify};

use std::io::{self, BufRead, Write};
use std::path::Path as FsPath;
use std::time::Duration;

use crate::config::Config;
use crate::exit::Exit;
use crate::spool::{QueueId, Spool, SpoolError};
use crate::time::now_unix;
use flush::{FlushOpts, Foreground};

// the codes as the queue commands name them (exit.rs has them all)
pub const EX_OK: Exit = Exit::Ok;
pub const EX_USAGE: Exit = Exit::Usage;
pub const EX_DATAERR: Exit = Exit::DataErr;
pub const EX_NOINPUT: Exit = Exit::NoInput;
pub const EX_UNAVAILABLE: Exit = Exit::Unavailable;
pub const EX_IOERR: Exit = Exit::IoErr;
pub const EX_TEMPFAIL: Exit = Exit::TempFail;
pub const EX_NOPERM: Exit = Exit::NoPerm;

/// The queue subcommands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QueueCmd {
    List {
        json: bool,
        summary: bool,
    },
    Show {
        id: String,
        body: bool,
        json: bool,
    },
    Flush {
        wait: bool,
        timeout: Duration,
        quiet: bool,
    },
    Hold {
        duration: Option<Duration>,
    },
    Release,
    Delete,
    Bounce,
    Requeue,
}

/// What went wrong in a queue command, with its exit code.
#[derive(Debug)]
pub struct AdminError {
    pub code: Exit,
    pub message: String,
}

impl std::fmt::Display for AdminError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl AdminError {
    fn usage(m: impl Into<String>) -> AdminError {
        AdminError {
            code: EX_USAGE,
            message: m.into(),
        }
    }
}

impl From<SpoolError> for AdminError {
    fn from(e: SpoolError) -> AdminError {
        AdminError {
            code: match Exit::from(&e) {
                // a queue command waits for no lock on the whole spool
                Exit::TempFail => EX_IOERR,
                code => code,
            },
            message: e.to_string(),
        }
    }
}

/// Opens the spool a command works on; never creates one. Run as root on
/// a spool that belongs to another user (the `serve --user` set-up), the
/// command first becomes that user (the spool folder's owner and group),
/// so that every file it writes is one the server can read, and root
/// never acts inside folders that user can change.
fn open_spool(root: &FsPath) -> Result<Spool, AdminError> {
    if crate::sys::is_root() {
        use std::os::unix::fs::MetadataExt;
        let md = match std::fs::metadata(root) {
            Ok(md) => md,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(SpoolError::Missing(root.to_path_buf()).into())
            }
            Err(e) => return Err(SpoolError::io(root, e).into()),
        };
        if md.uid() != 0 {
            let owner = crate::sys::User {
                uid: md.uid(),
                gid: md.gid(),
            };
            crate::sys::drop_privileges(owner).map_err(|e| AdminError {
                code: EX_NOPERM,
                message: format!(
                    "cannot act as the owner of {} (uid {}): {e}",
                    root.display(),
                    owner.uid
                ),
            })?;
            log::debug!(
                "acting as the spool's owner, uid {} gid {}",
                owner.uid,
                owner.gid
            );
        }
    }
    Ok(Spool::open_existing(root)?)
}

impl From<io::Error> for AdminError {
    fn from(e: io::Error) -> AdminError {
        AdminError {
            code: EX_IOERR,
            message: e.to_string(),
        }
    }
}

/// Runs a queue command; returns the exit code.
pub fn run_queue(
    config: &Config,
    cmd: &QueueCmd,
    sel: &Selector,
    dry_run: bool,
    deliverer: BuildDeliverer,
) -> Result<Exit, AdminError> {
    let spool = open_spool(&config.spool)?;
    let now = now_unix();
    let mut out = io::stdout().lock();
    match cmd {
        QueueCmd::List { json, summary } => {
            if *summary {
                let mut all = render::Summary::default();
                let parts =
                    select::fold_selected(&spool, sel, now, render::Summary::default, |s, env| {
                        s.add(&env, now)
                    })?;
                for part in parts {
                    all.merge(part);
                }
                out.write_all(all.render(*json).as_bytes())?;
                let throttled = spool.read_throttled();
                out.write_all(render::throttled_summary(&throttled, now, *json).as_bytes())?;
                return Ok(EX_OK);
            }
            select::each_selected(&spool, sel, now, |env| -> Result<(), AdminError> {
                let line = if *json {
                    list_json(env, now)
                } else {
                    list_line(env, now)
                };
                Ok(writeln!(out, "{line}")?)
            })?;
            Ok(EX_OK)
        }
        QueueCmd::Show { id, body, json } => show(&spool, id, *body, *json, now, &mut out),
        QueueCmd::Flush {
            wait,
            timeout,
            quiet,
        } => {
            let fg = Foreground {
                build: deliverer,
                workers: config.delivery_workers,
            };
            let opts = FlushOpts {
                wait: *wait,
                timeout: *timeout,
                quiet: *quiet,
                dry_run,
            };
            flush::flush(&fg, &spool, sel, &opts)
        }
        QueueCmd::Hold { duration } => change::hold(&spool, sel, dry_run, *duration, now),
        QueueCmd::Release => change::release(&spool, sel, dry_run, now),
        QueueCmd::Requeue => change::requeue(&spool, sel, dry_run, now),
        QueueCmd::Delete => change::delete(&spool, sel, dry_run, now, &mut out),
        QueueCmd::Bounce => change::bounce(&spool, sel, dry_run, &config.hostname),
    }
}

/// `queue show ID [--body | --json]`; 66 when there is no such message.
fn show(
    spool: &Spool,
    id: &str,
    body: bool,
    json: bool,
    now: u64,
    out: &mut impl Write,
) -> Result<Exit, AdminError> {
    let qid =
        QueueId::parse(id).ok_or_else(|| AdminError::usage(format!("{id:?} is not a queue id")))?;
    let env = match spool.load(qid) {
        Ok(e) => e,
        Err(SpoolError::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound => {
            return Err(AdminError {
                code: EX_NOINPUT,
                message: format!("{qid}: no such message in the queue"),
            })
        }
        Err(e) => return Err(e.into()),
    };
    if body {
        // another message's bytes under this name are not this message's
        // body (a commit cut short by a power loss: `Integrity`)
        if let Some(differs) = spool.body_differs(&env)? {
            return Err(AdminError {
                code: EX_DATAERR,
                message: format!("{qid}: {differs}; the server moves it to corrupt/ unsent"),
            });
        }
        let mut f = spool.read_body(qid)?;
        io::copy(&mut f, out)?;
    } else if json {
        writeln!(out, "{}", list_json(&env, now))?;
    } else {
        out.write_all(render::show_text(spool, &env, now).as_bytes())?;
    }
    Ok(EX_OK)
}

/// Reads queue ids, one per line, for the `-` argument.
pub fn read_ids(input: &mut impl BufRead) -> Result<Vec<QueueId>, AdminError> {
    let mut ids = Vec::new();
    for line in input.lines() {
        let line = line?;
        let t = line.split_whitespace().next().unwrap_or("");
        if t.is_empty() {
            continue;
        }
        ids.push(
            QueueId::parse(t)
                .ok_or_else(|| AdminError::usage(format!("{t:?} is not a queue id")))?,
        );
    }
    Ok(ids)
}

/// True if `path` looks like a spool (for friendlier errors).
pub fn looks_like_spool(path: &FsPath) -> bool {
    path.join("queue").is_dir()
}
