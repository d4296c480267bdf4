//! `smtp-relay send` (the sendmail command line's essentials) and
//! [`queue_message`], which queues a message read from a local program
//! without SMTP; the maildrop pick-up (`spool/maildrop.rs`) uses it too.

use std::io::{self, Read, Write};

use super::content::{refusal_error, Content, Outcome};
use super::prepare::{prepare_message, PrepareError, Prepared};
use super::{open_spool, AdminError, EX_DATAERR, EX_IOERR, EX_TEMPFAIL};
use crate::config::Config;
use crate::smtp::{Path, ReversePath};
use crate::spool::{Envelope, Hold, QueueId, RcptState, Recipient, Request, Spool, SpoolError};
use crate::time::{now_unix, rfc5322_date};

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
    /// How the command was called, for the `queued` line's `via=`.
    pub via: Via,
}

/// How a local message came: `smtp-relay send`, the sendmail command
/// line (`sendmail`, `smtp-relay sendmail`), or a non-root submitter's
/// drop that the server picked up from `maildrop/`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Via {
    #[default]
    Send,
    Sendmail,
    Maildrop,
}

impl Via {
    pub fn as_str(self) -> &'static str {
        match self {
            Via::Send => "send",
            Via::Sendmail => "sendmail",
            Via::Maildrop => "maildrop",
        }
    }
}

/// The envelope's `client` of a local message: `local`, the submitter's
/// uid and user, and how it came (README "Logs": the `queued` line).
pub fn local_client(uid: u32, login: &str, via: Via) -> String {
    format!("local uid={uid} user={login} via={}", via.as_str())
}

/// The `queued` line of a message (README "Logs"), as a session logs
/// it for SMTP; for local mail the server logs it when it learns of the
/// message (`send`'s request, the maildrop pick-up).
pub fn log_queued(env: &Envelope) {
    log::info!(
        "{} queued from={} size={} nrcpt={} client={}",
        env.id,
        env.from,
        env.size,
        env.rcpts.len(),
        env.client
    );
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
    // the keys are read before anything is queued: a bad one is 66 or 78
    let content = Content::load(config)?;
    let sub = Submitter {
        client: local_client(crate::sys::real_uid(), &login, opts.via),
        login,
        received: String::new(),
        hold: None,
        content: &content,
        bounce_refused: false,
    };
    match queue_message(config, &spool, &opts, &sub, input, |_| Ok(()))? {
        Queued::Committed(env) => {
            // the server logs its `queued` line and delivers it now rather
            // than at its next scan; one not running reads the request
            // when it starts
            let _ = spool.request(&[Request::New(env.id)]);
            Ok(env.id.to_string())
        }
        Queued::Discarded(id) => Ok(format!("{id} (discarded by a milter: nothing queued)")),
    }
}

/// Who gives a message to [`queue_message`], as the envelope and our
/// `Received:` field record it, and what runs before the commit.
pub struct Submitter<'a> {
    /// The login name: the default envelope sender's local part.
    pub login: String,
    /// The envelope's `client`.
    pub client: String,
    /// Text for `Received: from …` (empty: no `from` clause).
    pub received: String,
    /// Committed held (a maildrop pick-up, released once the drop is gone).
    pub hold: Option<Hold>,
    /// The milters serving `local`, and DKIM signing.
    pub content: &'a Content,
    /// A milter's 5xx is queued as a bounce to the sender (the maildrop
    /// pick-up: its submitter is gone) rather than returned as an error.
    pub bounce_refused: bool,
}

/// What [`queue_message`] did with a message.
#[derive(Debug)]
pub enum Queued {
    Committed(Box<Envelope>),
    /// A milter discarded it: nothing was queued.
    Discarded(QueueId),
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
) -> Result<Queued, AdminError> {
    let from = envelope_sender(opts.from.as_deref(), &sub.login, &config.hostname)?;
    let tempfail = |e: SpoolError| AdminError {
        code: EX_TEMPFAIL,
        message: e.to_string(),
    };
    let mut incoming = spool.incoming().map_err(tempfail)?;
    let id = incoming.id();
    let now = now_unix();
    incoming
        .write_all(received_field(&sub.received, &config.hostname, id, now).as_bytes())
        .map_err(|e| tempfail(SpoolError::io(spool.tmp_dir(), e)))?;
    let mut reader = io::BufReader::with_capacity(64 * 1024, input);
    // on any error `incoming` is dropped here, and with it its tmp file:
    // nothing is queued
    let prepared = prepare_message(
        &mut reader,
        opts,
        &config.hostname,
        id,
        now,
        config.max_size,
        &mut incoming,
    )
    .map_err(|e| prepare_error(e, config.max_size, spool))?;
    let rcpts = envelope_recipients(opts, &prepared, &config.hostname)?;
    let mut env = new_envelope(id, now, from, rcpts, sub, &config.hostname);
    env.body = prepared
        .eight_bit
        .then_some(crate::smtp::Body::EightBitMime);
    let outcome = sub
        .content
        .run(&config.hostname, config.max_size, &mut incoming, &mut env)
        .map_err(|e| tempfail(SpoolError::io(spool.tmp_dir(), e)))?;
    match outcome {
        Outcome::Commit => {}
        Outcome::Discard => {
            log::info!("{id} discarded by milter client={}: not queued", env.client);
            return Ok(Queued::Discarded(id));
        }
        Outcome::Refused { reply, by } if sub.bounce_refused && reply.code().is_permanent() => {
            log::info!(
                "{id} refused by milter {by} client={}: returned to the sender reply=\"{reply}\"",
                env.client
            );
            return_refused(&mut env, &reply, &by);
        }
        Outcome::Refused { reply, by } => return Err(refusal_error(&reply, &by)),
    }
    env.size = incoming.written();
    before_commit(id).map_err(|e| tempfail(SpoolError::io(spool.root(), e)))?;
    env.id = incoming.commit(&env).map_err(tempfail)?;
    log_queued(&env);
    Ok(Queued::Committed(Box::new(env)))
}

/// A milter's 5xx on mail whose submitter cannot be told now (the
/// maildrop): every recipient is bouncing with the milter's reply, so the
/// first delivery attempt returns the message to its sender in a DSN
/// (RFC 3464) and tries no next hop: refused, never silently dropped.
fn return_refused(env: &mut Envelope, reply: &crate::smtp::Reply, by: &str) {
    let enhanced = reply
        .enhanced()
        .unwrap_or(crate::smtp::reply::Enhanced::new(5, 7, 1));
    let text = format!("refused by milter {by}: {}", reply.lines().join(" "));
    for r in &mut env.rcpts {
        r.state = RcptState::Bouncing;
        r.last_reply = Some(crate::status::Status::local(
            crate::status::LocalReason::Milter,
            reply.code().value(),
            enhanced,
            text.clone(),
        ));
    }
}

/// `-f` (`<>` or empty: the null sender; a bare local part qualified), or
/// else the login name at our host name.
fn envelope_sender(
    from: Option<&str>,
    login: &str,
    hostname: &str,
) -> Result<ReversePath, AdminError> {
    Ok(match from {
        None => ReversePath::Path(
            parse_mailbox(&format!("{login}@{hostname}")).map_err(AdminError::usage)?,
        ),
        Some("") | Some("<>") => ReversePath::Null,
        Some(f) => {
            ReversePath::Path(parse_mailbox(&qualify(f, hostname)).map_err(AdminError::usage)?)
        }
    })
}

/// Our `Received:` field (RFC 5321 §4.4), `from` only when the submitter
/// names a source.
fn received_field(received: &str, hostname: &str, id: QueueId, now: u64) -> String {
    let from_clause = if received.is_empty() {
        String::new()
    } else {
        format!("from {received} ")
    };
    format!(
        "Received: {from_clause}by {hostname} (smtp-relay) id {id}; {}\r\n",
        rfc5322_date(now)
    )
}

/// The exit code and message for a message that could not be prepared.
fn prepare_error(e: PrepareError, max_size: u64, spool: &Spool) -> AdminError {
    match e {
        PrepareError::TooBig => AdminError {
            code: EX_DATAERR,
            message: format!("message larger than --max-size ({max_size} octets): not queued"),
        },
        PrepareError::Read(e) => AdminError {
            code: EX_TEMPFAIL,
            message: format!("reading the message: {e}"),
        },
        PrepareError::Write(e) => AdminError {
            code: EX_TEMPFAIL,
            message: SpoolError::io(spool.tmp_dir(), e).to_string(),
        },
    }
}

/// The recipients named on the command line, then those `-t` found in
/// the header, qualified, each once; none is a usage error.
fn envelope_recipients(
    opts: &SendOpts,
    prepared: &Prepared,
    hostname: &str,
) -> Result<Vec<Path>, AdminError> {
    let mut rcpts: Vec<Path> = Vec::new();
    for r in opts.rcpts.iter().chain(prepared.rcpts.iter()) {
        let p = parse_mailbox(&qualify(r, hostname)).map_err(AdminError::usage)?;
        if !rcpts.contains(&p) {
            rcpts.push(p);
        }
    }
    if rcpts.is_empty() {
        return Err(AdminError::usage("no recipients (name them, or use -t)"));
    }
    Ok(rcpts)
}

/// The envelope of a new local message, every recipient pending, due now;
/// size and body type are filled in once the message is written.
fn new_envelope(
    id: QueueId,
    now: u64,
    from: ReversePath,
    rcpts: Vec<Path>,
    sub: &Submitter,
    hostname: &str,
) -> Envelope {
    let smtputf8 =
        rcpts.iter().any(|r| r.mailbox().is_utf8()) || from.mailbox().is_some_and(|m| m.is_utf8());
    Envelope {
        id,
        arrived: now,
        client: sub.client.clone(),
        helo: hostname.to_string(),
        auth: None,
        from,
        size: 0,
        body: None,
        smtputf8,
        requiretls: false,
        attempts: 0,
        next_try: now,
        integrity: None,
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
    }
}
