//! The session's milter hooks (issue 14), in the filter stage after the
//! state machine, access rules and policy (STYLE §7: check → filter →
//! proceed): connect before the greeting, HELO, MAIL and RCPT after the
//! state machine accepted them (a refusal takes the step back), DATA
//! before the 354 (or the first BDAT chunk), and the end of the message
//! before the commit: `end_of_message` is the one call on that path.
//!
//! Macros are sent before each event, the set Sendmail and Postfix send
//! that common milters read (OpenDKIM: `i`, `j`, `{auth_authen}`,
//! `{daemon_name}`; rspamd: `{client_addr}`, `{mail_addr}`, ...).

use std::net::SocketAddr;

use super::{Phase, Session, Step};
pub(super) use crate::milter::spooled::{adjust_envelope, EndOfMessage};
use crate::milter::{Conversation, Macros, Verdict};
use crate::smtp::{Command, Reply};
use crate::spool::{Incoming, QueueId};

impl Session<'_> {
    /// Puts the session's listener's milters in place (none contacted).
    pub fn set_milters(&mut self, milters: Conversation) {
        self.milters = milters;
    }
}

/// What a command was, noted before the state machine took it.
pub(super) enum Probe {
    Helo(String),
    Mail,
    Rcpt { before: usize },
    Other,
}

impl Probe {
    pub(super) fn of(cmd: &Result<Command, Reply>, s: &Session) -> Probe {
        if s.milters.is_empty() {
            return Probe::Other;
        }
        match cmd {
            Ok(Command::Ehlo(n)) | Ok(Command::Helo(n)) => Probe::Helo(n.clone()),
            Ok(Command::Mail { .. }) => Probe::Mail,
            Ok(Command::Rcpt(_)) | Ok(Command::RcptDsn(..)) => Probe::Rcpt {
                before: s.transaction().map_or(0, |(_, tx)| tx.rcpts.len()),
            },
            _ => Probe::Other,
        }
    }
}

fn bare(s: String) -> String {
    s.trim_start_matches('<').trim_end_matches('>').to_string()
}

/// Macros every event carries: our name, the client.
fn common(session: &Session) -> Macros {
    vec![
        ("j", session.cfg.hostname.clone()),
        ("{daemon_name}", crate::milter::DAEMON_NAME.into()),
        ("v", format!("smtp-relay {}", env!("CARGO_PKG_VERSION"))),
        ("{client_addr}", session.client.to_string()),
        // no reverse lookups are made (Sendmail's form without one)
        ("{client_name}", format!("[{}]", session.client)),
        ("_", format!("[{}] [{}]", session.client, session.client)),
    ]
}

/// Macros of the transaction so far: TLS, AUTH, sender, last recipient,
/// and the queue id once there is one.
fn transaction_macros(session: &Session, id: Option<QueueId>) -> Macros {
    let mut m = common(session);
    if let Some(t) = &session.tls {
        m.push(("{tls_version}", t.version.clone()));
        m.push(("{cipher}", t.cipher.clone()));
    }
    if let Some(user) = &session.auth {
        m.push(("{auth_authen}", user.clone()));
        m.push(("{auth_type}", "PLAIN".into()));
    }
    if let Some((_, tx)) = session.transaction() {
        m.push(("{mail_addr}", bare(tx.from.to_string())));
        m.push(("{mail_mailer}", "smtp".into()));
        if let Some((p, _)) = tx.rcpts.last() {
            m.push(("{rcpt_addr}", bare(p.to_string())));
            m.push(("{rcpt_mailer}", "smtp".into()));
        }
    }
    if let Some(id) = id {
        m.push(("i", id.to_string()));
    }
    m
}

/// A milter's refusal at `stage`, for the reply writer's one line
/// (`reason=milter stage=... rule="milter inet:..."`).
fn note(session: &mut Session, stage: &'static str, verdict: &Verdict) {
    if let Verdict::Refuse(r) | Verdict::Close(r) = verdict {
        let rule = format!("milter {}", session.milters.take_refuser());
        session.refuse(crate::metrics::Reason::Milter, Some(stage), rule, r);
    }
}

/// Connect, before the greeting: a refusal is said and the session
/// closes (554 for a rejection, RFC 5321 §3.1; 421 for a tempfail).
pub(super) fn on_connect(session: &mut Session, peer: SocketAddr) -> Option<Reply> {
    if session.milters.is_empty() {
        return None;
    }
    let macros = common(session);
    let name = format!("[{}]", session.client);
    let reply = match session.milters.connect(&name, peer, &macros) {
        Verdict::Continue | Verdict::Discard => return None,
        Verdict::Refuse(r) if r.code().is_permanent() => at_connect(554, &r),
        Verdict::Refuse(r) | Verdict::Close(r) => at_connect(421, &r),
    };
    note(session, "connect", &Verdict::Refuse(reply.clone()));
    Some(reply)
}

/// A refusal at connect with the code a greeting may carry.
fn at_connect(code: u16, r: &Reply) -> Reply {
    let e = r
        .enhanced()
        .unwrap_or(crate::smtp::reply::Enhanced::new((code / 100) as u8, 7, 1));
    let e = crate::smtp::reply::Enhanced::new((code / 100) as u8, e.subject, e.detail);
    let mut lines = r.lines().iter();
    let mut out = Reply::new(code, e, lines.next().cloned().unwrap_or_default());
    for l in lines {
        out = out.with_line(l.clone());
    }
    out
}

/// After the state machine: a HELO, MAIL or RCPT it accepted goes to
/// the milters; a refusal takes the command back.
pub(super) fn after(session: &mut Session, probe: Probe, step: Step) -> Step {
    if !matches!(&step, Step::Reply(r) if r.code().is_positive()) {
        return step;
    }
    let verdict = match probe {
        Probe::Helo(name) => {
            let macros = transaction_macros(session, None);
            let v = session.milters.helo(&name, &macros);
            note(session, "helo", &v);
            if matches!(v, Verdict::Refuse(_)) {
                // the greeting is not taken: MAIL needs a HELO that passes
                session.forget_helo();
            }
            v
        }
        Probe::Mail => {
            let Some((_, tx)) = session.transaction() else {
                return step;
            };
            let mut args = vec![tx.from.to_string()];
            args.extend(esmtp_args(&tx.params));
            let macros = transaction_macros(session, None);
            let v = session.milters.mail(&args, &macros);
            note(session, "mail", &v);
            if matches!(v, Verdict::Refuse(_)) {
                session.end_transaction();
            }
            v
        }
        Probe::Rcpt { before } => {
            let Some((_, tx)) = session
                .transaction()
                .filter(|(_, tx)| tx.rcpts.len() > before)
            else {
                return step;
            };
            let args = tx
                .rcpts
                .last()
                .map(|(p, _)| vec![p.to_string()])
                .unwrap_or_default();
            let macros = transaction_macros(session, None);
            let v = session.milters.rcpt(&args, &macros);
            note(session, "rcpt", &v);
            if matches!(v, Verdict::Refuse(_)) {
                if let Phase::Mail { tx, .. } = &mut session.phase {
                    tx.rcpts.pop();
                }
            }
            v
        }
        Probe::Other => return step,
    };
    match verdict {
        Verdict::Continue | Verdict::Discard => step,
        Verdict::Refuse(r) => session.finish(Step::Reply(r)),
        Verdict::Close(r) => Step::Close(r),
    }
}

/// The MAIL parameters as the client could have written them.
fn esmtp_args(p: &crate::smtp::command::MailParams) -> Vec<String> {
    let mut a = Vec::new();
    if let Some(n) = p.size {
        a.push(format!("SIZE={n}"));
    }
    if let Some(b) = p.body {
        a.push(format!("BODY={}", b.as_str()));
    }
    if p.smtputf8 {
        a.push("SMTPUTF8".into());
    }
    a
}

/// DATA (or the first BDAT chunk), once the queue id exists: a refusal
/// instead of the 354.
pub(super) fn at_data(session: &mut Session, id: QueueId) -> Option<Reply> {
    if session.milters.is_empty() {
        return None;
    }
    let macros = transaction_macros(session, Some(id));
    let v = session.milters.data(&macros);
    note(session, "data", &v);
    match v {
        Verdict::Continue | Verdict::Discard => None,
        Verdict::Refuse(r) | Verdict::Close(r) => Some(r),
    }
}

/// The end of the message: the milters read the received file, and
/// their changes to its content are written back before the commit
/// (`milter/spooled.rs`, shared with local injection).
pub(super) fn end_of_message(session: &mut Session, incoming: &mut Incoming) -> EndOfMessage {
    if session.milters.is_empty() {
        return EndOfMessage::Commit(None);
    }
    let id = incoming.id();
    let macros = transaction_macros(session, Some(id));
    // the replacement body's bound: twice what a client may send
    let max = session.cfg.max_size.max(1).saturating_mul(2);
    match crate::milter::spooled::end_of_message(&mut session.milters, incoming, &macros, max) {
        Ok(EndOfMessage::Refuse(r)) => {
            note(session, "eom", &Verdict::Refuse(r.clone()));
            EndOfMessage::Refuse(r)
        }
        Ok(eom) => eom,
        Err(e) => {
            log::error!("{id} {e}");
            EndOfMessage::Refuse(if crate::spool::fsutil::is_out_of_space(&e) {
                Reply::insufficient_storage()
            } else {
                Reply::local_error()
            })
        }
    }
}
