//! Which messages a queue command applies to: `--from`, `--to`,
//! `--older-than`, `--state`, `--error` and ids, and loading the envelopes
//! that match.

use std::io;
use std::ops::ControlFlow;
use std::time::Duration;

use crate::smtp::Mailbox;
use crate::spool::{scan, Envelope, QueueId, RcptState, Spool, SpoolError};

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

impl Selector {
    /// No id and no filter: every message.
    pub fn is_everything(&self) -> bool {
        let Selector {
            ids,
            from,
            to,
            older_than,
            state,
            error,
        } = self;
        ids.is_empty()
            && from.is_none()
            && to.is_none()
            && older_than.is_none()
            && state.is_none()
            && error.is_none()
    }
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

/// Loads every committed envelope that the selector matches, by id order.
/// Envelopes that vanish or fail to parse while we read are skipped (a
/// delivery may finish under our feet); parse failures are reported.
pub fn select(spool: &Spool, sel: &Selector, now: u64) -> Result<Vec<Envelope>, SpoolError> {
    let mut out: Vec<Envelope> = fold_selected(spool, sel, now, Vec::new, Vec::push)?
        .into_iter()
        .flatten()
        .collect();
    out.sort_by_key(|e| e.id);
    Ok(out)
}

/// Folds every envelope the selector matches into per-thread states
/// (`spool::scan`: a big queue is read on a few threads, and nothing is
/// kept that `each` does not keep), skipping as [`select`] does.
pub fn fold_selected<T, I, F>(
    spool: &Spool,
    sel: &Selector,
    now: u64,
    init: I,
    each: F,
) -> Result<Vec<T>, SpoolError>
where
    T: Send,
    I: Fn() -> T + Sync,
    F: Fn(&mut T, Envelope) + Sync,
{
    fold_ids(spool, &selected_ids(spool, sel)?, sel, now, init, each)
}

/// Calls `each` on every envelope the selector matches, by id order, as
/// [`select`] would return them, holding only a few thousand at a time:
/// `queue list` of a million messages, not two gigabytes of envelopes.
pub fn each_selected<E: From<SpoolError>>(
    spool: &Spool,
    sel: &Selector,
    now: u64,
    each: impl FnMut(&Envelope) -> Result<(), E>,
) -> Result<(), E> {
    each_selected_by(spool, sel, now, 8192, each)
}

fn each_selected_by<E: From<SpoolError>>(
    spool: &Spool,
    sel: &Selector,
    now: u64,
    at_once: usize,
    mut each: impl FnMut(&Envelope) -> Result<(), E>,
) -> Result<(), E> {
    for ids in selected_ids(spool, sel)?.chunks(at_once) {
        let mut envs: Vec<Envelope> = fold_ids(spool, ids, sel, now, Vec::new, Vec::push)?
            .into_iter()
            .flatten()
            .collect();
        envs.sort_by_key(|e| e.id);
        for env in &envs {
            each(env)?;
        }
    }
    Ok(())
}

/// The ids a selector names, or every committed one; sorted, once each.
fn selected_ids(spool: &Spool, sel: &Selector) -> Result<Vec<QueueId>, SpoolError> {
    if sel.ids.is_empty() {
        return spool.list_ids();
    }
    let mut ids = sel.ids.clone();
    ids.sort();
    ids.dedup();
    Ok(ids)
}

fn fold_ids<T, I, F>(
    spool: &Spool,
    ids: &[QueueId],
    sel: &Selector,
    now: u64,
    init: I,
    each: F,
) -> Result<Vec<T>, SpoolError>
where
    T: Send,
    I: Fn() -> T + Sync,
    F: Fn(&mut T, Envelope) + Sync,
{
    let states = scan::load_each(
        spool,
        ids,
        || (init(), None),
        |(state, error), id, loaded| {
            match loaded {
                Ok(env) if sel.matches(&env, now) => each(state, env),
                Ok(_) => {}
                Err(SpoolError::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound => {}
                Err(SpoolError::Corrupt { why, .. }) => {
                    eprintln!("smtp-relay: {id}: skipped, corrupt envelope: {why}")
                }
                Err(e) => {
                    *error = Some(e);
                    return ControlFlow::Break(());
                }
            }
            ControlFlow::Continue(())
        },
    );
    let mut out = Vec::with_capacity(states.len());
    for (state, error) in states {
        if let Some(e) = error {
            return Err(e);
        }
        out.push(state);
    }
    Ok(out)
}

/// The ids a selector matches now, and a selector for exactly those: the
/// change may make them stop matching, and only they are to be flushed.
pub(super) fn pin_selection(
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

#[cfg(test)]
mod tests {
    use super::*;

    /// In slices of the queue, every message comes once, in id order,
    /// the selector applied, as `select` gives them.
    #[test]
    fn each_selected_keeps_the_order_across_slices() {
        let spool = crate::delivery::tests::temp_spool("each-selected");
        let mut ids = Vec::new();
        for i in 0..10 {
            let rcpt = if i % 3 == 0 {
                "<x@skip.example>"
            } else {
                "<y@keep.example>"
            };
            ids.push(crate::delivery::tests::queue(&spool, 1, &[rcpt]));
        }
        let sel = Selector {
            to: Some("*@keep.example".into()),
            ..Selector::default()
        };
        let mut seen = Vec::new();
        each_selected_by(&spool, &sel, 1, 3, |env| -> Result<(), SpoolError> {
            seen.push(env.id);
            Ok(())
        })
        .unwrap();
        let want: Vec<QueueId> = select(&spool, &sel, 1)
            .unwrap()
            .iter()
            .map(|e| e.id)
            .collect();
        assert_eq!(want.len(), 6);
        assert_eq!(seen, want);
        assert!(seen.windows(2).all(|w| w[0] < w[1]));
    }

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
}
