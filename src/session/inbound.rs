//! The inbound edge's DNS lists, policy service and rate limits (issue
//! 13), beside `filter.rs` (access rules, recipient validation), after
//! the state machine's own checks (STYLE §7: check → filter → proceed):
//! DNS lists at connect, rate limits at connect, MAIL and RCPT, the
//! policy service
//! at RCPT and at the end of the data. The state machine stays pure: a
//! command it accepted may be refused here, and the recipient it added
//! is taken back.
//!
//! Every refusal is handed to the reply writer (`Session::refuse`),
//! which logs it at INFO in one line with the client, the rule and the
//! reply, and counts it under its own metrics reason.

use std::time::Instant;

use super::conn::Context;
use super::{Phase, Session, Step};
use crate::edge::policy::{Action, DefaultAction, PolicyClient, PolicyConfig};
use crate::edge::rate::{Event, Key};
use crate::edge::{self, dnsbl};
use crate::metrics::Reason;
use crate::smtp::{Command, Reply};
use crate::spool::{Envelope, QueueId};

/// A session's edge state.
#[derive(Default)]
pub(super) struct EdgeState {
    /// The blocklist that blocked the client, to refuse at each RCPT.
    blocked: Option<String>,
    policy: PolicyClient,
    /// PREPEND header lines for the current transaction.
    prepend: Vec<String>,
    /// HOLD said for the current transaction.
    hold: bool,
    /// The policy protocol's `instance`: one per transaction.
    instance: String,
}

/// What a command was, noted before the state machine took it.
pub(super) enum Probe {
    Mail,
    Rcpt { before: usize },
    Other,
}

impl Probe {
    pub(super) fn of(cmd: &Result<Command, Reply>, s: &Session) -> Probe {
        match cmd {
            Ok(Command::Mail { .. }) => Probe::Mail,
            Ok(Command::Rcpt(_)) | Ok(Command::RcptDsn(..)) => Probe::Rcpt {
                before: s.transaction().map_or(0, |(_, tx)| tx.rcpts.len()),
            },
            _ => Probe::Other,
        }
    }
}

fn refused(session: &mut Session, reason: Reason, rule: String, reply: &Reply) {
    session.refuse(reason, None, rule, reply);
}

/// Who rate limits count this session as: its user once authenticated,
/// else its address unless `--relay-net` trusts it.
fn rate_key(session: &Session) -> Option<Key> {
    match &session.auth {
        Some(u) => Some(Key::User(u.clone())),
        None if session.cfg.is_relay_client(session.client) => None,
        None => Some(Key::address(session.client)),
    }
}

/// At connect, before the greeting: the connection rate, then the DNS
/// lists. A reply means: send it and close.
pub(super) fn on_connect(session: &mut Session, ctx: &Context) -> Option<Reply> {
    let ip = session.client;
    if let Some(key) = rate_key(session) {
        if !ctx
            .edge
            .rates
            .admit(Event::Connection, &key, Instant::now())
        {
            let r = edge::too_many_connections(ip);
            refused(session, Reason::RateLimit, "rate-connections".into(), &r);
            return Some(r);
        }
    }
    let lists = ctx.edge.dnsbl.as_ref()?;
    if session.cfg.is_relay_client(ip) {
        return None;
    }
    match lists.check(ip) {
        dnsbl::Verdict::Pass => None,
        dnsbl::Verdict::Allowed(zone) => {
            log::info!("{ip} allowlisted by {zone}: blocklists skipped");
            None
        }
        dnsbl::Verdict::Blocked(zone) => match lists.config().reject_at {
            dnsbl::RejectAt::Connect => {
                let r = edge::blocked_reply(ip, &zone);
                refused(session, Reason::Dnsbl, format!("dnsbl:{zone}"), &r);
                Some(r)
            }
            dnsbl::RejectAt::Rcpt => {
                session.edge.blocked = Some(zone);
                None
            }
        },
    }
}

/// After the state machine: MAIL and RCPT it accepted go through the
/// rate limits, the DNS list verdict and the policy service.
pub(super) fn after(session: &mut Session, probe: Probe, step: Step, ctx: &Context) -> Step {
    if !matches!(&step, Step::Reply(r) if r.code().is_positive()) {
        return step;
    }
    let refusal = match probe {
        Probe::Mail => {
            session.edge.prepend.clear();
            session.edge.hold = false;
            session.edge.instance = next_instance();
            let r = rate_check(session, Event::Message, ctx);
            if r.is_some() {
                session.end_transaction();
            }
            r
        }
        Probe::Rcpt { before } => {
            let added = session
                .transaction()
                .is_some_and(|(_, tx)| tx.rcpts.len() > before);
            let r = if added {
                rcpt_checks(session, ctx)
            } else {
                None
            };
            if r.is_some() {
                if let Phase::Mail { tx, .. } = &mut session.phase {
                    tx.rcpts.pop();
                }
            }
            r
        }
        Probe::Other => None,
    };
    match refusal {
        Some(r) => session.finish(Step::Reply(r)),
        None => step,
    }
}

fn rate_check(session: &mut Session, event: Event, ctx: &Context) -> Option<Reply> {
    let key = rate_key(session)?;
    if ctx.edge.rates.admit(event, &key, Instant::now()) {
        return None;
    }
    let r = edge::rate_exceeded();
    refused(
        session,
        Reason::RateLimit,
        format!("rate-{} {key}", event.name()),
        &r,
    );
    Some(r)
}

fn rcpt_checks(session: &mut Session, ctx: &Context) -> Option<Reply> {
    if let Some(zone) = session.edge.blocked.clone() {
        let r = edge::blocked_reply(session.client, &zone);
        refused(session, Reason::Dnsbl, format!("dnsbl:{zone}"), &r);
        return Some(r);
    }
    if let Some(r) = rate_check(session, Event::Recipient, ctx) {
        return Some(r);
    }
    let cfg = ctx.edge.policy.as_ref().filter(|p| p.at_rcpt)?;
    ask_policy(session, cfg, "RCPT", None)
}

/// END-OF-MESSAGE: a refusal of the received message, if the service
/// says so. PREPEND cannot be honoured here (the message is written) and
/// is logged.
pub(super) fn end_of_data(
    session: &mut Session,
    id: QueueId,
    size: u64,
    ctx: &Context,
) -> Option<Reply> {
    let cfg = ctx.edge.policy.as_ref().filter(|p| p.at_end)?;
    ask_policy(session, cfg, "END-OF-MESSAGE", Some((id, size)))
}

/// The header lines PREPENDed for this transaction, CRLF-ended, to go
/// above our Received header (as Postfix's smtpd writes them).
pub(super) fn prepended(session: &Session) -> String {
    session
        .edge
        .prepend
        .iter()
        .map(|h| format!("{h}\r\n"))
        .collect()
}

/// HOLD: the message waits in the queue for `queue release`.
pub(super) fn adjust_envelope(session: &Session, env: &mut Envelope) {
    if session.edge.hold {
        env.hold = Some(crate::spool::envelope::Hold::Forever);
        log::info!("{} held by the policy service", env.id);
    }
}

fn next_instance() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    format!(
        "{:x}.{:x}",
        crate::sys::pid(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// The request's attributes (SMTPD_POLICY_README "Protocol description").
fn request(
    session: &Session,
    state: &str,
    end: Option<(QueueId, u64)>,
) -> Vec<(&'static str, String)> {
    let bare = |s: String| s.trim_start_matches('<').trim_end_matches('>').to_string();
    let (helo, sender, recipient, count, declared) = match &session.phase {
        Phase::Mail { helo, tx } => (
            helo.name.clone(),
            bare(tx.from.to_string()),
            match (end, tx.rcpts.last()) {
                (None, Some((p, _))) => bare(p.to_string()),
                _ => String::new(),
            },
            tx.rcpts.len(),
            tx.params.size,
        ),
        Phase::Ready { helo } => (helo.name.clone(), String::new(), String::new(), 0, None),
        Phase::Connected => Default::default(),
    };
    let esmtp =
        matches!(&session.phase, Phase::Mail { helo, .. } | Phase::Ready { helo } if helo.esmtp);
    let (queue_id, size) = match end {
        Some((id, size)) => (id.to_string(), size.to_string()),
        None => (String::new(), declared.unwrap_or(0).to_string()),
    };
    let tls = session.tls.as_ref();
    vec![
        ("request", "smtpd_access_policy".into()),
        ("protocol_state", state.into()),
        ("protocol_name", if esmtp { "ESMTP" } else { "SMTP" }.into()),
        ("helo_name", helo),
        ("queue_id", queue_id),
        ("sender", sender),
        ("recipient", recipient),
        (
            "recipient_count",
            if end.is_some() { count } else { 0 }.to_string(),
        ),
        ("client_address", session.client.to_string()),
        // no reverse lookups are made: Postfix's word for that
        ("client_name", "unknown".into()),
        ("reverse_client_name", "unknown".into()),
        ("instance", session.edge.instance.clone()),
        (
            "sasl_method",
            if session.auth.is_some() { "PLAIN" } else { "" }.into(),
        ),
        ("sasl_username", session.auth.clone().unwrap_or_default()),
        ("sasl_sender", String::new()),
        ("size", size),
        (
            "encryption_protocol",
            tls.map(|t| t.version.clone()).unwrap_or_default(),
        ),
        (
            "encryption_cipher",
            tls.map(|t| t.cipher.clone()).unwrap_or_default(),
        ),
        ("server_address", String::new()),
    ]
}

fn ask_policy(
    session: &mut Session,
    cfg: &PolicyConfig,
    state: &str,
    end: Option<(QueueId, u64)>,
) -> Option<Reply> {
    let attrs = request(session, state, end);
    let answer = session.edge.policy.ask(cfg, &attrs);
    let value = match answer {
        Ok(v) => v,
        Err(e) => {
            log::warn!(
                "{} policy service {} not answered ({e}): default action {:?}",
                session.client,
                cfg.target,
                cfg.default_action
            );
            return match cfg.default_action {
                DefaultAction::Dunno => None,
                DefaultAction::Defer => {
                    let r = edge::policy_unavailable();
                    refused(
                        session,
                        Reason::PolicyService,
                        format!("policy-default {}", cfg.target),
                        &r,
                    );
                    Some(r)
                }
            };
        }
    };
    log::debug!("{} policy {state}: action={value}", session.client);
    match crate::edge::policy::parse_action(&value) {
        Some(Action::Ok) | Some(Action::Dunno) => None,
        Some(Action::Refuse(r)) => {
            refused(
                session,
                Reason::PolicyService,
                format!("policy {} action={value}", cfg.target),
                &r,
            );
            Some(r)
        }
        Some(Action::Hold) => {
            session.edge.hold = true;
            None
        }
        Some(Action::Prepend(h)) if end.is_none() => {
            if !session.edge.prepend.contains(&h) {
                session.edge.prepend.push(h);
            }
            None
        }
        Some(Action::Prepend(_)) => {
            log::info!(
                "{} policy action={value} at END-OF-MESSAGE not carried out (the message is written)",
                session.client
            );
            None
        }
        None => {
            log::info!(
                "{} policy action={value} not supported: taken as DUNNO",
                session.client
            );
            None
        }
    }
}
