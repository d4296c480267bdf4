//! `smtp-relay queue …` and `smtp-relay send`: the spool for people and
//! scripts.
//!
//! Every command works whether or not a server runs on the spool. Changes
//! to a message are made under its claim (`spool::Claim`, an flock on its
//! body), the same claim a delivery holds for its whole attempt, so a command never edits or deletes a
//! message in the middle of a delivery. A message still being received
//! lives in `tmp/` and is never seen here: only committed messages (those
//! with an envelope in `queue/`) are listed.
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

use std::collections::HashMap;
use std::fmt::Write as _;
use std::io::{self, BufRead, IsTerminal, Read, Write};
use std::path::Path as FsPath;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use crate::bounce;
use crate::config::Config;
use crate::delivery::{outcome, Deliverer, Outcome};
use crate::exit::Exit;
use crate::smtp::printable::is_unprintable;
use crate::smtp::{escape, Escaped, Mailbox, Path, ReversePath};
use crate::spool::{
    Claim, Claimed, Envelope, Hold, QueueId, RcptState, Recipient, Spool, SpoolError,
};
use crate::time::{format_duration, iso8601, now_unix, rfc5322_date};

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

/// Message-level view of the recipient states, for `--state`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StateFilter {
    Pending,
    Deferred,
    Held,
    Sent,
    Failed,
    Bouncing,
}

impl StateFilter {
    pub fn parse(s: &str) -> Option<StateFilter> {
        Some(match s {
            "pending" => StateFilter::Pending,
            "deferred" => StateFilter::Deferred,
            "held" => StateFilter::Held,
            "sent" => StateFilter::Sent,
            "failed" => StateFilter::Failed,
            "bouncing" => StateFilter::Bouncing,
            _ => return None,
        })
    }
}

/// Which messages a command applies to; all given criteria must match.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Selector {
    pub ids: Vec<QueueId>,
    pub from: Option<String>,
    pub to: Option<String>,
    pub older_than: Option<Duration>,
    pub state: Option<StateFilter>,
    pub error: Option<String>,
}

/// Case-insensitive glob with `*` (any run) and `?` (one character).
pub fn glob(pattern: &str, text: &str) -> bool {
    let p: Vec<char> = pattern.to_lowercase().chars().collect();
    let t: Vec<char> = text.to_lowercase().chars().collect();
    let (mut pi, mut ti) = (0, 0);
    let (mut star, mut mark) = (None, 0);
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some(pi);
            mark = ti;
            pi += 1;
        } else if let Some(s) = star {
            pi = s + 1;
            mark += 1;
            ti = mark;
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

/// An address pattern: with `@` inside it matches the whole address
/// (`user@example.org`, `*@example.org`); without, or with a leading `@`,
/// it matches the domain and its subdomains (`example.org`, `@example.org`).
/// `<>` matches the null sender.
fn address_matches(pattern: &str, mailbox: Option<&Mailbox>) -> bool {
    let Some(m) = mailbox else {
        return pattern == "<>";
    };
    let pattern = pattern.trim_start_matches('<').trim_end_matches('>');
    match pattern.strip_prefix('@') {
        None if pattern.contains('@') => glob(pattern, &m.to_string()),
        stripped => {
            let d = stripped.unwrap_or(pattern).to_lowercase();
            let host = m.host().key();
            glob(&d, &host) || host.ends_with(&format!(".{d}"))
        }
    }
}

impl Selector {
    pub fn is_empty(&self) -> bool {
        *self == Selector::default()
    }

    pub fn matches(&self, env: &Envelope, now: u64) -> bool {
        if !self.ids.is_empty() && !self.ids.contains(&env.id) {
            return false;
        }
        if let Some(p) = &self.from {
            if !address_matches(p, env.from.mailbox()) {
                return false;
            }
        }
        if let Some(p) = &self.to {
            if !env
                .rcpts
                .iter()
                .any(|r| address_matches(p, Some(r.path.mailbox())))
            {
                return false;
            }
        }
        if let Some(age) = self.older_than {
            if now.saturating_sub(env.arrived) < age.as_secs() {
                return false;
            }
        }
        if let Some(state) = self.state {
            let held = env.hold.is_some_and(|h| h.active(now));
            let has = |s: RcptState| env.rcpts.iter().any(|r| r.state == s);
            let ok = match state {
                StateFilter::Held => held,
                StateFilter::Pending => !held && has(RcptState::Pending),
                StateFilter::Deferred => !held && has(RcptState::Deferred),
                StateFilter::Sent => has(RcptState::Sent),
                StateFilter::Failed => has(RcptState::Failed),
                StateFilter::Bouncing => has(RcptState::Bouncing),
            };
            if !ok {
                return false;
            }
        }
        if let Some(p) = &self.error {
            let p = p.to_lowercase();
            let hit = env
                .rcpts
                .iter()
                .filter_map(|r| r.last_reply.as_ref())
                .any(|e| e.to_string().to_lowercase().contains(&p));
            if !hit {
                return false;
            }
        }
        true
    }
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

/// Loads every committed envelope that the selector matches, by id order.
/// Envelopes that vanish or fail to parse while we read are skipped (a
/// delivery may finish under our feet); parse failures are reported.
pub fn select(spool: &Spool, sel: &Selector, now: u64) -> Result<Vec<Envelope>, SpoolError> {
    let ids = if sel.ids.is_empty() {
        spool.list_ids()?
    } else {
        let mut ids = sel.ids.clone();
        ids.sort();
        ids.dedup();
        ids
    };
    let mut out = Vec::with_capacity(ids.len());
    for id in ids {
        match spool.load(id) {
            Ok(env) => {
                if sel.matches(&env, now) {
                    out.push(env);
                }
            }
            Err(SpoolError::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound => {}
            Err(SpoolError::Corrupt { id, why }) => {
                eprintln!("smtp-relay: {id}: skipped, corrupt envelope: {why}")
            }
            Err(e) => return Err(e),
        }
    }
    Ok(out)
}

/// Minimal JSON string encoding (RFC 8259 §7).
pub fn json_str(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            // RFC 8259 §7: any character may be escaped; these are, so
            // that a terminal never shows them raw (UTF-16 for non-BMP)
            c if (c as u32) < 0x20 || is_unprintable(c) => {
                for unit in c.encode_utf16(&mut [0; 2]) {
                    let _ = write!(out, "\\u{:04x}", unit);
                }
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn opt_json(s: Option<&str>) -> String {
    s.map(json_str).unwrap_or_else(|| "null".into())
}

fn sender_text(from: &ReversePath) -> String {
    match from {
        ReversePath::Null => "<>".into(),
        ReversePath::Path(p) => escape(&p.mailbox().to_string()).into_owned(),
    }
}

fn hold_text(h: Option<Hold>, now: u64) -> Option<String> {
    match h {
        Some(Hold::Forever) => Some("forever".into()),
        Some(Hold::Until(t)) if t > now => Some(iso8601(t)),
        _ => None,
    }
}

/// One `list` line: id, arrival, size, sender, then one field per
/// recipient, all tab-separated.
pub fn list_line(env: &Envelope, now: u64) -> String {
    let mut s = format!(
        "{}\t{}\t{}\t{}",
        env.id,
        iso8601(env.arrived),
        env.size,
        sender_text(&env.from)
    );
    let held = hold_text(env.hold, now);
    for r in &env.rcpts {
        let state = match (&held, r.state) {
            (Some(_), RcptState::Pending | RcptState::Deferred) => "held",
            (_, st) => st.as_str(),
        };
        let _ = write!(s, "\t{state} {}", Escaped(&r.path.mailbox().to_string()));
        if let Some(h) = &held {
            let _ = write!(s, " until={h}");
        } else if r.state == RcptState::Deferred {
            let _ = write!(s, " next={}", iso8601(env.next_try));
        }
        if let Some(reply) = &r.last_reply {
            let _ = write!(
                s,
                " reply=\"{}\"",
                escape(&reply.to_string()).replace('"', "'")
            );
        }
    }
    s
}

/// One `list --json` object (schema version 1, documented in README).
pub fn list_json(env: &Envelope, now: u64) -> String {
    let mut s = format!(
        "{{\"v\":1,\"id\":\"{}\",\"arrived\":{},\"arrived_iso\":\"{}\",\"size\":{},\"from\":{},\"client\":{},\"helo\":{},\"attempts\":{},\"next_try\":{},\"held_until\":{},\"rcpts\":[",
        env.id,
        env.arrived,
        iso8601(env.arrived),
        env.size,
        json_str(&env.from.mailbox().map(|m| m.to_string()).unwrap_or_default()),
        json_str(&env.client),
        json_str(&env.helo),
        env.attempts,
        env.next_try,
        match env.hold {
            Some(Hold::Forever) => "\"forever\"".to_string(),
            Some(Hold::Until(t)) if t > now => t.to_string(),
            _ => "null".to_string(),
        },
    );
    for (i, r) in env.rcpts.iter().enumerate() {
        if i > 0 {
            s.push(',');
        }
        let _ = write!(
            s,
            "{{\"to\":{},\"forward_path\":{},\"state\":\"{}\",\"last_reply\":{}}}",
            json_str(&r.path.mailbox().to_string()),
            json_str(&r.path.to_string()),
            r.state.as_str(),
            opt_json(r.last_reply.as_ref().map(|st| st.to_string()).as_deref())
        );
    }
    s.push_str("]}");
    s
}

/// Per destination domain: messages, oldest age, most common last error
/// (Postfix's qshape, flattened).
pub fn summary(envs: &[Envelope], now: u64, json: bool) -> String {
    #[derive(Default)]
    struct Row {
        messages: usize,
        recipients: usize,
        oldest: u64,
        errors: HashMap<String, usize>,
    }
    let mut rows: HashMap<String, Row> = HashMap::new();
    for env in envs {
        let mut seen = Vec::new();
        for r in env.rcpts.iter().filter(|r| !r.state.is_final()) {
            let d = r.path.mailbox().host().key();
            let row = rows.entry(d.clone()).or_default();
            row.recipients += 1;
            if !seen.contains(&d) {
                row.messages += 1;
                seen.push(d);
            }
            row.oldest = row.oldest.max(now.saturating_sub(env.arrived));
            if let Some(e) = &r.last_reply {
                *row.errors.entry(e.to_string()).or_default() += 1;
            }
        }
    }
    let mut rows: Vec<(String, Row)> = rows.into_iter().collect();
    rows.sort_by(|a, b| b.1.messages.cmp(&a.1.messages).then(a.0.cmp(&b.0)));
    let mut out = String::new();
    if !json {
        out.push_str("domain\tmessages\trecipients\toldest\ttop_error\n");
    }
    for (domain, row) in rows {
        let top = row
            .errors
            .iter()
            .max_by(|a, b| a.1.cmp(b.1).then(b.0.cmp(a.0)))
            .map(|(e, _)| e.clone());
        if json {
            let _ = writeln!(
                out,
                "{{\"v\":1,\"domain\":{},\"messages\":{},\"recipients\":{},\"oldest_seconds\":{},\"top_error\":{}}}",
                json_str(&domain),
                row.messages,
                row.recipients,
                row.oldest,
                opt_json(top.as_deref())
            );
        } else {
            let _ = writeln!(
                out,
                "{}\t{}\t{}\t{}\t{}",
                Escaped(&domain),
                row.messages,
                row.recipients,
                format_duration(Duration::from_secs(row.oldest)),
                escape(top.as_deref().unwrap_or("-"))
            );
        }
    }
    out
}

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

/// How `queue flush` builds a delivery engine when no server runs on the
/// spool (app.rs supplies it: the queue commands build nothing).
pub type BuildDeliverer<'a> = &'a dyn Fn(Arc<Spool>) -> Result<Deliverer, AdminError>;

/// A foreground flush's engine: how to build it, and how many threads.
struct Foreground<'a> {
    build: BuildDeliverer<'a>,
    workers: usize,
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
        QueueCmd::List {
            json,
            summary: true,
        } => {
            let envs = select(&spool, sel, now)?;
            out.write_all(summary(&envs, now, *json).as_bytes())?;
            Ok(EX_OK)
        }
        QueueCmd::List { json, .. } => {
            let envs = select(&spool, sel, now)?;
            for env in &envs {
                let line = if *json {
                    list_json(env, now)
                } else {
                    list_line(env, now)
                };
                writeln!(out, "{line}")?;
            }
            Ok(EX_OK)
        }
        QueueCmd::Show { id, body, json } => {
            let qid = QueueId::parse(id)
                .ok_or_else(|| AdminError::usage(format!("{id:?} is not a queue id")))?;
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
            if *body {
                let mut f = spool.read_body(qid)?;
                io::copy(&mut f, &mut out)?;
            } else if *json {
                writeln!(out, "{}", list_json(&env, now))?;
            } else {
                out.write_all(show_text(&spool, &env, now).as_bytes())?;
            }
            Ok(EX_OK)
        }
        QueueCmd::Flush {
            wait,
            timeout,
            quiet,
        } => {
            let fg = Foreground {
                build: deliverer,
                workers: config.delivery_workers,
            };
            flush(&fg, &spool, sel, *wait, *timeout, *quiet, dry_run)
        }
        QueueCmd::Hold { duration } => {
            let hold = match duration {
                Some(d) => Hold::Until(now + d.as_secs()),
                None => Hold::Forever,
            };
            change(&spool, sel, dry_run, "hold", |_, env| {
                env.hold = Some(hold);
                Ok(After::Store)
            })
        }
        QueueCmd::Release => {
            // the ids now: once released they no longer match --state held
            let (ids, sel) = pin_selection(&spool, sel, now)?;
            if ids.is_empty() {
                return Ok(EX_OK);
            }
            let code = change(&spool, &sel, dry_run, "release", |_, env| {
                env.hold = None;
                env.hold_reason = None;
                env.next_try = now_unix();
                Ok(After::Store)
            })?;
            if !dry_run && spool.is_locked() {
                spool.request_flush(&ids)?;
            }
            Ok(code)
        }
        QueueCmd::Requeue => {
            let (ids, sel) = pin_selection(&spool, sel, now)?;
            if ids.is_empty() {
                return Ok(EX_OK);
            }
            let code = change(&spool, &sel, dry_run, "requeue", |_, env| {
                outcome::requeue(env);
                env.next_try = now_unix();
                Ok(After::Store)
            })?;
            if !dry_run && spool.is_locked() {
                spool.request_flush(&ids)?;
            }
            Ok(code)
        }
        QueueCmd::Delete => {
            let envs = select(&spool, sel, now)?;
            let mut busy = 0;
            for env in &envs {
                if dry_run {
                    writeln!(out, "would delete {}", list_line(env, now))?;
                    continue;
                }
                match with_claim(&spool, env.id, LOCK_WAIT, |_, _| Ok(After::Finish))? {
                    Some(true) => {
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
        QueueCmd::Bounce => {
            let host = config.hostname.clone();
            let code = change(&spool, sel, dry_run, "bounce", |claim, env| {
                let now = now_unix();
                outcome::return_to_sender(env);
                claim.store(env)?;
                let dsn = bounce::report_bouncing(claim, &host, env, now, None)?;
                log::info!(
                    "{} returned to sender by the operator (DSN {dsn:?})",
                    env.id
                );
                if let (Some(dsn), true) = (dsn, claim.spool().is_locked()) {
                    let _ = claim.spool().request_flush(&[dsn]);
                }
                Ok(After::Finish)
            })?;
            Ok(code)
        }
    }
}

/// The ids a selector matches now, and a selector for exactly those: the
/// change may make them stop matching, and only they are to be flushed.
fn pin_selection(
    spool: &Spool,
    sel: &Selector,
    now: u64,
) -> Result<(Vec<QueueId>, Selector), SpoolError> {
    let ids: Vec<QueueId> = select(spool, sel, now)?.iter().map(|e| e.id).collect();
    let pinned = Selector {
        ids: ids.clone(),
        ..Selector::default()
    };
    Ok((ids, pinned))
}

/// Applies `f` to every selected message under its lock; prints one line
/// per message. `--dry-run` prints what would change and changes nothing.
fn change(
    spool: &Spool,
    sel: &Selector,
    dry_run: bool,
    verb: &str,
    f: impl Fn(&Claim, &mut Envelope) -> Result<After, SpoolError>,
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
            Some(true) => writeln!(out, "{verb} {}", env.id)?,
            Some(false) => writeln!(out, "gone {}", env.id)?,
            None => {
                busy += 1;
                writeln!(out, "busy {} (being delivered; try again)", env.id)?;
            }
        }
    }
    Ok(if busy > 0 { EX_TEMPFAIL } else { EX_OK })
}

/// `queue show`: the envelope, each recipient with its history, headers.
fn show_text(spool: &Spool, env: &Envelope, now: u64) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "id:        {}", env.id);
    let _ = writeln!(
        s,
        "arrived:   {} ({} ago)",
        iso8601(env.arrived),
        format_duration(Duration::from_secs(now.saturating_sub(env.arrived)))
    );
    let _ = writeln!(s, "from:      {}", Escaped(&env.from.to_string()));
    let _ = writeln!(s, "client:    [{}] helo={}", env.client, Escaped(&env.helo));
    if let Some(user) = &env.auth {
        let _ = writeln!(s, "auth:      {}", Escaped(user));
    }
    let _ = writeln!(s, "size:      {}", env.size);
    let _ = writeln!(s, "attempts:  {}", env.attempts);
    let _ = writeln!(s, "next try:  {}", iso8601(env.next_try));
    if let Some(h) = hold_text(env.hold, now) {
        let _ = writeln!(s, "held:      until {h}");
        if let Some(r) = &env.hold_reason {
            let _ = writeln!(s, "reason:    {}", Escaped(r));
        }
    }
    for r in &env.rcpts {
        let path = r.path.to_string();
        let _ = writeln!(s, "recipient: {} {}", Escaped(&path), r.state.as_str());
        let t = &r.tries;
        if t.total > t.recent.len() as u32 {
            let _ = writeln!(
                s,
                "  {} attempts since {}; the last {}:",
                t.total,
                iso8601(t.first),
                t.recent.len()
            );
        }
        for a in &t.recent {
            let (relay, status) = (Escaped(&a.relay), Escaped(&a.status.to_string()));
            let _ = writeln!(s, "  {} {relay} {status}", iso8601(a.time));
        }
    }
    let _ = writeln!(s, "headers:");
    match spool
        .read_body(env.id)
        .map_err(|e| e.to_string())
        .and_then(|b| bounce::read_headers(b).map_err(|e| e.to_string()))
    {
        Ok(h) => {
            for line in String::from_utf8_lossy(&h).lines() {
                // folding keeps its tabs; everything else unprintable is escaped
                let parts: Vec<_> = line.split('\t').map(escape).collect();
                let _ = writeln!(s, "  {}", parts.join("\t"));
            }
        }
        Err(e) => {
            let _ = writeln!(s, "  (unreadable: {e})");
        }
    }
    s
}

/// Counts of where the selected messages stand, for `flush --wait`.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Progress {
    done: usize,
    deferred: usize,
    waiting: usize,
}

fn flush(
    fg: &Foreground,
    spool: &Spool,
    sel: &Selector,
    wait: bool,
    timeout: Duration,
    quiet: bool,
    dry_run: bool,
) -> Result<Exit, AdminError> {
    let now = now_unix();
    let mut sel = sel.clone();
    let envs: Vec<Envelope> = select(spool, &sel, now)?
        .into_iter()
        .filter(|e| !e.hold.is_some_and(|h| h.active(now)) && !e.is_done())
        .collect();
    let mut out = io::stdout().lock();
    if dry_run {
        for e in &envs {
            writeln!(out, "would flush {}", list_line(e, now))?;
        }
        return Ok(EX_OK);
    }
    if envs.is_empty() {
        if !quiet {
            writeln!(out, "flush: nothing selected")?;
        }
        return Ok(EX_OK);
    }
    let ids: Vec<QueueId> = envs.iter().map(|e| e.id).collect();
    let before: HashMap<QueueId, u32> = envs.iter().map(|e| (e.id, e.attempts)).collect();
    sel.ids = ids.clone();
    let show = !quiet && io::stderr().is_terminal();

    match spool.lock() {
        Ok(lock) => {
            // No server: deliver in the foreground, like `sendmail -q`.
            let result = flush_foreground(fg, spool, &ids, show);
            drop(lock);
            let p = result?;
            report(&mut out, quiet, &p)?;
            Ok(if p.deferred > 0 { EX_TEMPFAIL } else { EX_OK })
        }
        Err(SpoolError::Locked(_)) => {
            let request = spool.request_flush(&ids)?;
            if !wait {
                if !quiet {
                    writeln!(
                        out,
                        "flush: asked the server to attempt {} message(s) now",
                        ids.len()
                    )?;
                }
                return Ok(EX_OK);
            }
            let deadline = Instant::now() + timeout;
            let pickup = Instant::now() + Duration::from_secs(10).min(timeout);
            loop {
                let p = progress(spool, &before)?;
                if show {
                    eprint!(
                        "\rflush: {} done, {} deferred again, {} waiting   ",
                        p.done, p.deferred, p.waiting
                    );
                }
                if p.waiting == 0 {
                    if show {
                        eprintln!();
                    }
                    report(&mut out, quiet, &p)?;
                    return Ok(if p.deferred > 0 { EX_TEMPFAIL } else { EX_OK });
                }
                if !request.picked_up() && Instant::now() > pickup {
                    request.withdraw();
                    if show {
                        eprintln!();
                    }
                    return Err(AdminError {
                        code: EX_UNAVAILABLE,
                        message: "the server holding the spool did not pick up the flush request"
                            .into(),
                    });
                }
                if Instant::now() > deadline {
                    if show {
                        eprintln!();
                    }
                    report(&mut out, quiet, &p)?;
                    return Ok(EX_TEMPFAIL);
                }
                thread::sleep(Duration::from_millis(100));
            }
        }
        Err(e) => Err(e.into()),
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
            eprint!(
                "\rflush: {} done, {} deferred again, {} waiting   ",
                p.done, p.deferred, p.waiting
            );
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

/// `smtp-relay send`: the sendmail command line's essentials.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SendOpts {
    /// `-f`: the envelope sender (`<>` or empty for the null sender).
    pub from: Option<String>,
    /// `-t`: recipients from To/Cc/Bcc; Bcc is removed.
    pub extract: bool,
    /// `-i`/`-oi`: a line with a single "." does not end the input.
    pub ignore_dots: bool,
    pub rcpts: Vec<String>,
    /// `-F`: the full name for the `From:` field added when missing.
    pub full_name: Option<String>,
    /// The `From:` value added when the message has none (RFC 5322 §3.6
    /// requires one; RFC 6409 §8 lets the MSA complete a message from
    /// the submitter's identity); `None` adds
    /// nothing. Set by `run_send` from the login name.
    pub author: Option<String>,
}

/// `"Full Name" <login@host>`, or the bare address without a name (RFC
/// 5322 §3.4: a display-name is a phrase, quoted here whole).
pub fn author_field(login: &str, hostname: &str, full_name: Option<&str>) -> String {
    let addr = format!("{login}@{hostname}");
    match full_name.map(str::trim).filter(|n| !n.is_empty()) {
        None => addr,
        Some(n) => {
            let q: String = n
                .chars()
                .filter(|c| !c.is_control())
                .flat_map(|c| match c {
                    '"' | '\\' => vec!['\\', c],
                    c => vec![c],
                })
                .collect();
            format!("\"{q}\" <{addr}>")
        }
    }
}

/// A bare local part (`root`, as cron gives it) gets `@host`, as sendmail
/// qualifies unqualified addresses with the local domain.
pub(crate) fn qualify(s: &str, host: &str) -> String {
    let t = s.trim();
    if t.contains('@') || t.is_empty() || t == "<>" {
        t.to_string()
    } else {
        let t = t.trim_start_matches('<').trim_end_matches('>');
        format!("{t}@{host}")
    }
}

pub(crate) fn parse_mailbox(s: &str) -> Result<Path, String> {
    let s = s.trim();
    let text = if s.starts_with('<') {
        s.to_string()
    } else {
        format!("<{s}>")
    };
    Path::parse(&text, true).map_err(|e| format!("{s:?}: {e}"))
}

/// Addresses in an RFC 5322 address-list header value: the `<...>` parts,
/// or bare `local@domain` words; group names and comments are skipped.
pub fn header_addresses(value: &str) -> Vec<String> {
    let mut out = Vec::new();
    // drop comments (...) first
    let mut clean = String::new();
    let mut depth = 0;
    let mut quoted = false;
    for c in value.chars() {
        match c {
            '"' if depth == 0 => {
                quoted = !quoted;
                clean.push(c);
            }
            '(' if !quoted => depth += 1,
            ')' if !quoted && depth > 0 => depth -= 1,
            _ if depth > 0 => {}
            _ => clean.push(c),
        }
    }
    for part in split_unquoted(&clean, ',') {
        let part = part.trim();
        // "group: a, b;" — the group name ends at ':' when no '<' precedes it
        let part = match (part.find(':'), part.find('<')) {
            (Some(c), None) | (Some(c), Some(_))
                if !part[..c].contains('@') && !part[..c].contains('<') =>
            {
                &part[c + 1..]
            }
            _ => part,
        };
        let part = part.trim().trim_end_matches(';').trim();
        if let (Some(a), Some(b)) = (part.rfind('<'), part.rfind('>')) {
            if a < b {
                let addr = part[a + 1..b].trim();
                if !addr.is_empty() {
                    out.push(addr.to_string());
                }
                continue;
            }
        }
        if part.contains('@') {
            out.push(part.to_string());
        }
    }
    out
}

fn split_unquoted(s: &str, sep: char) -> Vec<&str> {
    let mut parts = Vec::new();
    let mut quoted = false;
    let mut angle = 0;
    let mut start = 0;
    for (i, c) in s.char_indices() {
        match c {
            '"' => quoted = !quoted,
            '<' if !quoted => angle += 1,
            '>' if !quoted && angle > 0 => angle -= 1,
            c if c == sep && !quoted && angle == 0 => {
                parts.push(&s[start..i]);
                start = i + c.len_utf8();
            }
            _ => {}
        }
    }
    parts.push(&s[start..]);
    parts
}

/// What `prepare_message` wrote.
#[derive(Debug)]
pub struct Prepared {
    /// Recipients found in To, Cc and Bcc (with `-t`).
    pub rcpts: Vec<String>,
    /// Octets written.
    pub size: u64,
    /// Some octet was 8-bit (the envelope then says 8BITMIME).
    pub eight_bit: bool,
}

#[derive(Debug)]
pub enum PrepareError {
    /// More than the size limit: nothing may be queued.
    TooBig,
    Read(io::Error),
    Write(io::Error),
}

/// Octets of a body line read at once: longer lines stream through in
/// pieces, so memory never depends on the input.
const BODY_CHUNK: u64 = 64 * 1024;

/// Writes to `out`, counting against the size limit.
struct Limited<'a, W: Write> {
    out: &'a mut W,
    size: u64,
    max: u64,
    eight_bit: bool,
}

impl<W: Write> Limited<'_, W> {
    fn put(&mut self, bytes: &[u8]) -> Result<(), PrepareError> {
        self.size += bytes.len() as u64;
        if self.size > self.max {
            return Err(PrepareError::TooBig);
        }
        if !self.eight_bit {
            self.eight_bit = bytes.iter().any(|&b| b >= 0x80);
        }
        self.out.write_all(bytes).map_err(PrepareError::Write)
    }
}

/// Reads up to `limit` octets of one line (its `\n` included) into `buf`.
fn read_line_upto(input: &mut impl BufRead, buf: &mut Vec<u8>, limit: u64) -> io::Result<usize> {
    input.take(limit).read_until(b'\n', buf)
}

fn strip_line_end(buf: &mut Vec<u8>) {
    while buf.last() == Some(&b'\n') || buf.last() == Some(&b'\r') {
        buf.pop();
    }
}

/// Streams the message from `input` to `out`: line ends made CRLF, `-t`
/// applied (recipients from headers, Bcc removed), Date and Message-ID
/// added when missing. Only the header is held in memory, and never more
/// than `max_size` of it; the body goes through in pieces. More than
/// `max_size` octets written is `TooBig` (the caller queues nothing).
pub fn prepare_message(
    input: &mut impl BufRead,
    opts: &SendOpts,
    hostname: &str,
    id: QueueId,
    now: u64,
    max_size: u64,
    out: &mut impl Write,
) -> Result<Prepared, PrepareError> {
    // sendmail: without -i a lone "." ends the message
    let ends = |line: &[u8]| !opts.ignore_dots && line == b".";
    let mut lines: Vec<Vec<u8>> = Vec::new();
    let mut header_octets = 0u64;
    let mut buf = Vec::new();
    // what ended the header: the blank line (the body follows), or the
    // end of the message
    let mut blank_line = false;
    loop {
        buf.clear();
        let limit = max_size.saturating_sub(header_octets) + 1;
        let n = read_line_upto(input, &mut buf, limit).map_err(PrepareError::Read)?;
        if n == 0 {
            break;
        }
        header_octets += n as u64;
        if header_octets > max_size {
            return Err(PrepareError::TooBig);
        }
        strip_line_end(&mut buf);
        if ends(&buf) {
            break;
        }
        if buf.is_empty() {
            blank_line = true;
            break;
        }
        lines.push(buf.clone());
    }
    // unfold header fields: (name, full text lines)
    let mut fields: Vec<Vec<Vec<u8>>> = Vec::new();
    for l in lines {
        if (l.first() == Some(&b' ') || l.first() == Some(&b'\t')) && !fields.is_empty() {
            if let Some(f) = fields.last_mut() {
                f.push(l);
            }
        } else {
            fields.push(vec![l]);
        }
    }
    let name_of = |f: &Vec<Vec<u8>>| -> String {
        let first = String::from_utf8_lossy(&f[0]).to_string();
        first
            .split(':')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase()
    };
    let value_of = |f: &Vec<Vec<u8>>| -> String {
        let joined: Vec<String> = f
            .iter()
            .map(|l| String::from_utf8_lossy(l).to_string())
            .collect();
        let all = joined.join(" ");
        all.split_once(':')
            .map(|(_, v)| v.to_string())
            .unwrap_or_default()
    };
    let mut rcpts = Vec::new();
    if opts.extract {
        for f in &fields {
            if matches!(name_of(f).as_str(), "to" | "cc" | "bcc") {
                rcpts.extend(header_addresses(&value_of(f)));
            }
        }
    }
    let has = |n: &str| fields.iter().any(|f| name_of(f) == n);
    let mut w = Limited {
        out,
        size: 0,
        max: max_size,
        eight_bit: false,
    };
    if let Some(author) = opts.author.as_deref().filter(|_| !has("from")) {
        w.put(format!("From: {author}\r\n").as_bytes())?;
    }
    if !has("date") {
        w.put(format!("Date: {}\r\n", rfc5322_date(now)).as_bytes())?;
    }
    if !has("message-id") {
        w.put(format!("Message-ID: <{id}@{hostname}>\r\n").as_bytes())?;
    }
    for f in &fields {
        // -t: Bcc is removed from what is sent (sendmail's behaviour)
        if opts.extract && name_of(f) == "bcc" {
            continue;
        }
        for l in f {
            w.put(l)?;
            w.put(b"\r\n")?;
        }
    }
    drop(fields);
    if blank_line {
        w.put(b"\r\n")?;
        stream_body(input, &mut w, &ends)?;
    }
    Ok(Prepared {
        rcpts,
        size: w.size,
        eight_bit: w.eight_bit,
    })
}

/// The body, a piece of at most `BODY_CHUNK` octets at a time.
fn stream_body<W: Write>(
    input: &mut impl BufRead,
    w: &mut Limited<'_, W>,
    ends: &impl Fn(&[u8]) -> bool,
) -> Result<(), PrepareError> {
    let mut buf = Vec::new();
    let mut line_start = true;
    // a CR ending a piece may be the start of its line's CRLF
    let mut held_cr = false;
    loop {
        buf.clear();
        if held_cr {
            buf.push(b'\r');
        }
        let n = read_line_upto(input, &mut buf, BODY_CHUNK).map_err(PrepareError::Read)?;
        if n == 0 {
            if held_cr {
                w.put(b"\r")?;
            }
            if !line_start {
                w.put(b"\r\n")?;
            }
            return Ok(());
        }
        if buf.last() == Some(&b'\n') {
            strip_line_end(&mut buf);
            if line_start && ends(&buf) {
                return Ok(());
            }
            w.put(&buf)?;
            w.put(b"\r\n")?;
            line_start = true;
            held_cr = false;
        } else {
            held_cr = buf.last() == Some(&b'\r');
            if held_cr {
                buf.pop();
            }
            w.put(&buf)?;
            line_start = false;
        }
    }
}

/// `smtp-relay send`: queue a message from stdin durably, without SMTP.
/// Exit 0 once it is in the spool, 75 when it could not be queued, 64 for
/// bad addresses. A user who cannot write the spool (neither root nor
/// its owner) leaves the message in `maildrop/` for the server instead
/// (spool/maildrop.rs); the result then names the maildrop file.
pub fn run_send(
    config: &Config,
    opts: &SendOpts,
    input: &mut impl Read,
) -> Result<String, AdminError> {
    if crate::spool::maildrop::should_use(&config.spool) {
        return crate::spool::maildrop::submit(&config.spool, opts, config.max_size, input)
            .map(|name| format!("maildrop/{name}"));
    }
    let login = crate::sys::login_name();
    let mut opts = opts.clone();
    opts.author = Some(author_field(
        &login,
        &config.hostname,
        opts.full_name.as_deref(),
    ));
    let spool = open_spool(&config.spool).map_err(|e| match e.code {
        EX_IOERR => AdminError {
            code: EX_TEMPFAIL,
            ..e
        },
        _ => e,
    })?;
    let sub = Submitter {
        login,
        client: "local".into(),
        received: String::new(),
        hold: None,
    };
    let env = queue_message(config, &spool, &opts, &sub, input, |_| Ok(()))?;
    if spool.is_locked() {
        // the running server delivers it now rather than at its next scan
        let _ = spool.request_flush(&[env.id]);
    }
    Ok(env.id.to_string())
}

/// Who gives a message to [`queue_message`], as the envelope and our
/// `Received:` field record it.
pub struct Submitter {
    /// The login name: the default envelope sender's local part.
    pub login: String,
    /// The envelope's `client`.
    pub client: String,
    /// Text for `Received: from …` (empty: no `from` clause).
    pub received: String,
    /// Committed held (a maildrop pick-up, released once the drop is gone).
    pub hold: Option<Hold>,
}

/// Queues the message read from `input` under `opts`; `before_commit` runs
/// with the id the commit will use, once everything is written.
pub fn queue_message(
    config: &Config,
    spool: &Spool,
    opts: &SendOpts,
    sub: &Submitter,
    input: &mut impl Read,
    before_commit: impl FnOnce(QueueId) -> io::Result<()>,
) -> Result<Envelope, AdminError> {
    let from = match opts.from.as_deref() {
        None => ReversePath::Path(
            parse_mailbox(&format!("{}@{}", sub.login, config.hostname))
                .map_err(AdminError::usage)?,
        ),
        Some("") | Some("<>") => ReversePath::Null,
        Some(f) => ReversePath::Path(
            parse_mailbox(&qualify(f, &config.hostname)).map_err(AdminError::usage)?,
        ),
    };
    let tempfail = |e: SpoolError| AdminError {
        code: EX_TEMPFAIL,
        message: e.to_string(),
    };
    let mut incoming = spool.incoming().map_err(tempfail)?;
    let id = incoming.id();
    let now = now_unix();
    let from_clause = if sub.received.is_empty() {
        String::new()
    } else {
        format!("from {} ", sub.received)
    };
    let header = format!(
        "Received: {from_clause}by {} (smtp-relay) id {id}; {}\r\n",
        config.hostname,
        rfc5322_date(now)
    );
    incoming
        .write_all(header.as_bytes())
        .map_err(|e| tempfail(SpoolError::io(spool.tmp_dir(), e)))?;
    let mut reader = io::BufReader::with_capacity(64 * 1024, input);
    // on any error `incoming` is dropped here, and with it its tmp file:
    // nothing is queued
    let prepared = match prepare_message(
        &mut reader,
        opts,
        &config.hostname,
        id,
        now,
        config.max_size,
        &mut incoming,
    ) {
        Ok(p) => p,
        Err(PrepareError::TooBig) => {
            return Err(AdminError {
                code: EX_DATAERR,
                message: format!(
                    "message larger than --max-size ({} octets): not queued",
                    config.max_size
                ),
            })
        }
        Err(PrepareError::Read(e)) => {
            return Err(AdminError {
                code: EX_TEMPFAIL,
                message: format!("reading the message: {e}"),
            })
        }
        Err(PrepareError::Write(e)) => return Err(tempfail(SpoolError::io(spool.tmp_dir(), e))),
    };
    let mut rcpts: Vec<Path> = Vec::new();
    for r in opts.rcpts.iter().chain(prepared.rcpts.iter()) {
        let p = parse_mailbox(&qualify(r, &config.hostname)).map_err(AdminError::usage)?;
        if !rcpts.contains(&p) {
            rcpts.push(p);
        }
    }
    if rcpts.is_empty() {
        return Err(AdminError::usage("no recipients (name them, or use -t)"));
    }
    let smtputf8 =
        rcpts.iter().any(|r| r.mailbox().is_utf8()) || from.mailbox().is_some_and(|m| m.is_utf8());
    let mut env = Envelope {
        id,
        arrived: now,
        client: sub.client.clone(),
        helo: config.hostname.clone(),
        auth: None,
        from,
        size: incoming.written(),
        body: prepared
            .eight_bit
            .then_some(crate::smtp::Body::EightBitMime),
        smtputf8,
        attempts: 0,
        next_try: now,
        hold: sub.hold,
        dsn: Default::default(),
        rcpts: rcpts
            .into_iter()
            .map(|path| Recipient {
                path,
                state: RcptState::Pending,
                last_reply: None,
                dsn: Default::default(),
                tries: Default::default(),
            })
            .collect(),
        hold_reason: None,
        delay_warned: None,
    };
    before_commit(id).map_err(|e| tempfail(SpoolError::io(spool.root(), e)))?;
    env.id = incoming.commit(&env).map_err(tempfail)?;
    log::info!(
        "{} queued from={} size={} nrcpt={} client={}",
        env.id,
        env.from,
        env.size,
        env.rcpts.len(),
        env.client
    );
    Ok(env)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globbing() {
        assert!(glob("*@example.org", "User@Example.ORG"));
        assert!(glob("a?c", "abc"));
        assert!(!glob("a?c", "abbc"));
        assert!(glob("*", ""));
        assert!(!glob("x*", "y"));
    }

    #[test]
    fn address_patterns() {
        let m = crate::smtp::Mailbox::parse("user@mx.example.org", false).unwrap();
        assert!(address_matches("example.org", Some(&m)));
        assert!(address_matches("@example.org", Some(&m)));
        assert!(address_matches("mx.example.org", Some(&m)));
        assert!(address_matches("user@mx.example.org", Some(&m)));
        assert!(address_matches("<user@mx.example.org>", Some(&m)));
        assert!(!address_matches("other@mx.example.org", Some(&m)));
        assert!(!address_matches("example.net", Some(&m)));
        assert!(address_matches("<>", None));
        assert!(!address_matches("example.org", None));
    }

    #[test]
    fn headers_and_t() {
        assert_eq!(
            header_addresses(
                " \"Doe, J\" <j@x.example>, k@y.example (Kay), team: a@z.example, b@z.example;"
            ),
            vec!["j@x.example", "k@y.example", "a@z.example", "b@z.example"]
        );
        let opts = SendOpts {
            extract: true,
            ..SendOpts::default()
        };
        let input = b"To: a@x.example\nBcc: secret@y.example\nSubject: s\n\nbody\n.\nafter\n";
        let id = QueueId::parse("0006464A1B2C3D4E").unwrap();
        let mut msg = Vec::new();
        let p =
            prepare_message(&mut &input[..], &opts, "h.test", id, 0, 1 << 20, &mut msg).unwrap();
        assert_eq!(p.size, msg.len() as u64);
        let text = String::from_utf8(msg).unwrap();
        assert_eq!(p.rcpts, vec!["a@x.example", "secret@y.example"]);
        assert!(!text.contains("secret"), "{text}");
        assert!(text.contains("Message-ID: <0006464A1B2C3D4E@h.test>\r\n"));
        assert!(text.contains("Date: "));
        assert!(text.ends_with("\r\n\r\nbody\r\n"), "{text:?}");
        let opts_i = SendOpts {
            ignore_dots: true,
            ..SendOpts::default()
        };
        let mut msg = Vec::new();
        prepare_message(&mut &input[..], &opts_i, "h.test", id, 0, 1 << 20, &mut msg).unwrap();
        assert!(String::from_utf8(msg)
            .unwrap()
            .ends_with("body\r\n.\r\nafter\r\n"));
    }

    /// The body streams in pieces: a line longer than a piece, a CRLF cut
    /// between two pieces, a last line without a line end, and the limit.
    #[test]
    fn body_streams_in_pieces_within_the_limit() {
        let id = QueueId::parse("0006464A1B2C3D4E").unwrap();
        let opts = SendOpts::default();
        let long = "x".repeat(BODY_CHUNK as usize - 1);
        let input = format!("Date: d\nMessage-ID: <m@h>\n\n{long}\r\n{long}y\r\nlast");
        let mut out = Vec::new();
        let p =
            prepare_message(&mut input.as_bytes(), &opts, "h", id, 0, 1 << 20, &mut out).unwrap();
        let want = format!("Date: d\r\nMessage-ID: <m@h>\r\n\r\n{long}\r\n{long}y\r\nlast\r\n");
        assert!(out == want.as_bytes(), "stream differs");
        assert!(!p.eight_bit);
        for max in [10, want.len() as u64 - 1] {
            let r = prepare_message(
                &mut input.as_bytes(),
                &opts,
                "h",
                id,
                0,
                max,
                &mut Vec::new(),
            );
            assert!(matches!(r, Err(PrepareError::TooBig)), "max {max}: {r:?}");
        }
        // an endless header line is cut at the limit, not buffered
        let mut endless = io::BufReader::new(io::repeat(b'h'));
        let r = prepare_message(&mut endless, &opts, "h", id, 0, 1 << 16, &mut Vec::new());
        assert!(matches!(r, Err(PrepareError::TooBig)), "{r:?}");
    }

    #[test]
    fn json_escaping() {
        assert_eq!(json_str("a\"b\\c\n\u{1}"), "\"a\\\"b\\\\c\\n\\u0001\"");
    }
}
