//! The session's side of the inbound authentication checks (issue 14,
//! `crate::authres`), on listeners with `--auth-results`: SPF once at
//! MAIL, kept in the transaction; DKIM and DMARC at the end of the data,
//! before the commit, with the `Authentication-Results:` header written
//! into the spool file then. The 250 still comes only after the commit.

use super::conn::Context;
use super::{Session, Step};
use crate::authres::{header, DmarcAction, MessageResults, SpfResults, Verifier};
use crate::metrics::Reason;
use crate::smtp::command::helo_domain;
use crate::smtp::Reply;
use crate::spool::{Incoming, QueueId};

/// The checks' state for the current transaction.
#[derive(Default)]
pub(super) struct AuthState {
    /// SPF, done at MAIL.
    spf: Option<SpfResults>,
    /// Octets of our own header lines at the top of the spool file (the
    /// policy service's PREPENDs, our Received): the client's message
    /// starts after them.
    pub(super) ours: usize,
}

fn verifier<'c>(session: &Session, ctx: &'c Context) -> Option<&'c Verifier> {
    ctx.authres.as_deref().filter(|_| session.mode.auth_results)
}

/// SPF for the current transaction's client, HELO and sender.
fn check_spf(session: &Session, v: &Verifier) -> Option<SpfResults> {
    let (helo, tx) = session.transaction()?;
    let helo = helo_domain(&helo.name).map(|d| d.to_string());
    let sender = tx.from.mailbox().map(|m| m.to_string());
    Some(v.spf(session.client, helo.as_deref(), sender.as_deref()))
}

/// After a MAIL the state machine and the edge accepted: SPF, and with
/// `--auth-results-spf-reject` the refusal of a sender SPF fails.
pub(super) fn after_mail(session: &mut Session, step: Step, ctx: &Context) -> Step {
    let Some(v) = verifier(session, ctx) else {
        return step;
    };
    if !matches!(&step, Step::Reply(r) if r.code().is_positive()) {
        return step;
    }
    session.authres = AuthState::default();
    let Some(spf) = check_spf(session, v) else {
        return step;
    };
    if let Some(domain) = spf.mail_from_failed().filter(|_| v.config().spf_reject) {
        let r = Reply::spf_fail(domain, session.client);
        let rule = format!("spf fail for {domain}");
        session.refuse(Reason::Authentication, Some("mail"), rule, &r);
        session.end_transaction();
        return session.finish(Step::Reply(r));
    }
    session.authres.spf = Some(spf);
    step
}

/// At the end of the data, before the commit: DKIM and DMARC, the
/// header written (and forged ones with our name removed), and DMARC's
/// policy followed as far as `--auth-results-dmarc` allows. A refusal
/// is returned; a hold marks the transaction held.
pub(super) fn end_of_data(
    session: &mut Session,
    incoming: &mut Incoming,
    ctx: &Context,
) -> Option<Reply> {
    let v = verifier(session, ctx)?;
    let id = incoming.id();
    let raw = match incoming.read_back() {
        Ok(raw) => raw,
        Err(e) => {
            log::error!("{id} cannot read the message back for authentication checks: {e}");
            return Some(Reply::local_error());
        }
    };
    let (ours, message) = raw.split_at(session.authres.ours.min(raw.len()));
    let spf = match session.authres.spf.take() {
        Some(spf) => spf,
        None => check_spf(session, v)?,
    };
    let results = v.message(message, &spf);
    log::info!(
        "{id} authentication client=[{}] {}",
        session.client,
        header::summary(&results.header)
    );
    if let Some(r) = follow_policy(session, v, id, &results) {
        return Some(r);
    }
    let (cleaned, removed) = header::remove_ours(message, &session.cfg.hostname);
    if removed > 0 {
        log::info!(
            "{id} removed {removed} Authentication-Results header(s) naming us (RFC 8601 §5)"
        );
    }
    let mut out = Vec::with_capacity(ours.len() + results.header.len() + cleaned.len());
    out.extend_from_slice(ours);
    out.extend_from_slice(results.header.as_bytes());
    out.extend_from_slice(&cleaned);
    if let Err(e) = incoming.replace(&out) {
        log::error!("{id} spool write failed: {e}");
        return Some(if crate::spool::fsutil::is_out_of_space(&e) {
            Reply::insufficient_storage()
        } else {
            Reply::local_error()
        });
    }
    None
}

/// What the results do to the message: a deferral for a DNS failure
/// (only with `--auth-results-defer-temperror`), and for a DMARC failure
/// the domain's policy as far as `--auth-results-dmarc` allows: a
/// refusal, or the transaction held.
fn follow_policy(
    session: &mut Session,
    v: &Verifier,
    id: QueueId,
    results: &MessageResults,
) -> Option<Reply> {
    // the reply writer logs and counts a refusal, once
    if results.temperror && v.config().defer_temperror {
        let r = Reply::auth_temperror();
        let rule = "dns temperror".to_string();
        session.refuse(Reason::Authentication, Some("data"), rule, &r);
        return Some(r);
    }
    let f = results.dmarc_failure.as_ref()?;
    match (v.config().dmarc_action, f.reject) {
        (DmarcAction::Reject, true) => {
            let r = Reply::dmarc_reject(&f.domain);
            let rule = format!("dmarc p=reject of {}", f.domain);
            session.refuse(Reason::Authentication, Some("data"), rule, &r);
            Some(r)
        }
        (DmarcAction::None, _) => None,
        // RFC 7489 §6.6.2: quarantine, here a hold for `queue release`
        _ => {
            session.hold_tx = true;
            let policy = if f.reject { "reject" } else { "quarantine" };
            log::info!(
                "{id} held: DMARC fails for {} (its policy: {policy})",
                f.domain
            );
            None
        }
    }
}
