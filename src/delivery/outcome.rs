//! What an attempt did to each recipient: the retry schedule, the typed
//! status of a failed exchange, recording each result in the envelope,
//! expiry and the "delayed" warning. Every `RcptState` transition is made
//! here, those of the queue commands and of DSN reporting included:
//!
//! ```text
//! pending/deferred --2xx--> sent          (record)
//! pending/deferred --4xx--> deferred      (record)
//! pending/deferred --5xx--> bouncing      (record; expire; return_to_sender)
//! deferred --queue requeue--> pending     (requeue)
//! bouncing --DSN queued--> failed         (failure_reported)
//! ```

use std::net::SocketAddr;
use std::time::Duration;

use super::{Deliverer, Group};
use crate::bounce::{self, Action, RcptReport};
use crate::client::{ClientError, Phase};
use crate::route::{Hop, RouteError};
use crate::smtp::Enhanced;
use crate::spool::{Attempt, Claim, DelayWarned, Envelope, RcptState, SpoolError};
use crate::status::{Class, LocalReason, Response, Source, Status};
use crate::time::format_duration;

pub use crate::config::delivery::RetryPolicy;

impl RetryPolicy {
    /// Delay before the next try after `attempts` tries: min doubling up to
    /// max, with ±10% jitter so a burst of deferrals does not come due as one.
    pub fn backoff(&self, attempts: u32, salt: u64) -> Duration {
        let shift = attempts.saturating_sub(1).min(30);
        let base = self.min.saturating_mul(1 << shift).min(self.max);
        let ms = base.as_millis() as u64;
        let spread = ms / 10;
        if spread == 0 {
            return base;
        }
        let r = splitmix(salt) % (2 * spread + 1);
        Duration::from_millis(ms - spread + r)
    }
}

impl RetryPolicy {
    /// When to try again, at `now` after `attempts` tries (at least a
    /// second away).
    pub fn next_try(&self, attempts: u32, now: u64, salt: u64) -> u64 {
        let delay = self.backoff(attempts, u64::from(attempts) ^ salt);
        now + delay.as_secs().max(1)
    }
}

/// RFC 5321 §4.5.4.1: give up after the queue lifetime. Every recipient
/// still waiting becomes `bouncing` with a local `4.4.7` status naming
/// the last error.
/// `queue requeue`: deferred recipients are tried again as if new.
pub fn requeue(env: &mut Envelope) {
    for r in env
        .rcpts
        .iter_mut()
        .filter(|r| r.state == RcptState::Deferred)
    {
        r.state = RcptState::Pending;
    }
}

/// `queue bounce`: every recipient not yet final is returned to the
/// sender, with a local 5.0.0 naming the last error.
pub fn return_to_sender(env: &mut Envelope) {
    for r in env.rcpts.iter_mut().filter(|r| !r.state.is_final()) {
        r.state = RcptState::Bouncing;
        let last = r.last_reply.as_ref().map(|st| st.to_string());
        r.last_reply = Some(Status::local(
            LocalReason::Operator,
            550,
            Enhanced::new(5, 0, 0),
            format!(
                "returned to sender by the operator; last error: {}",
                last.as_deref().unwrap_or("none")
            ),
        ));
    }
}

/// The failure DSN for the `bouncing` recipients is queued: they are
/// `failed` now (`bounce::report_bouncing`).
pub fn failure_reported(env: &mut Envelope) {
    for r in env
        .rcpts
        .iter_mut()
        .filter(|r| r.state == RcptState::Bouncing)
    {
        r.state = RcptState::Failed;
    }
}

pub(super) fn expire(env: &mut Envelope, now: u64, lifetime: Duration) {
    let age = Duration::from_secs(now.saturating_sub(env.arrived));
    if age < lifetime {
        return;
    }
    let id = env.id;
    for r in env
        .rcpts
        .iter_mut()
        .filter(|r| !r.state.is_final() && r.state != RcptState::Bouncing)
    {
        let last = r
            .last_reply
            .as_ref()
            .map(|st| st.to_string())
            .unwrap_or_else(|| "no attempt succeeded".into());
        let permanent = r
            .last_reply
            .as_ref()
            .is_some_and(|st| st.class() == Class::Permanent);
        log::info!(
            "{id} to={} status=expired after {} ({last})",
            crate::smtp::Escaped(&r.path.mailbox().to_string()),
            format_duration(age)
        );
        crate::metrics::delivery(
            crate::metrics::Outcome::Expired,
            crate::metrics::Dest::Unknown,
            age.as_secs(),
        );
        r.state = RcptState::Bouncing;
        r.last_reply = Some(Status::local(
            LocalReason::Expired,
            if permanent { 554 } else { 451 },
            Enhanced::new(4, 4, 7),
            format!(
                "message expired after {} in the queue; last error: {last}",
                format_duration(age)
            ),
        ));
    }
}

fn splitmix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// One recipient's result of one attempt: the hop's label for logs and
/// history, the typed status, and (for a success) whether the next hop
/// took the DSN requests along (RFC 3461 §5.2; false: a NOTIFY=SUCCESS is
/// ours to answer).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct RcptResult {
    pub(super) relay: String,
    pub(super) status: Status,
    pub(super) dsn_passed: bool,
}

/// The status of a failed exchange with `hop` at `peer`: the server's
/// reply when it gave one, else our local reason.
pub(super) fn error_status(e: &ClientError, hop: &Hop, peer: SocketAddr) -> Status {
    let local = |reason, enhanced, text: String| Status::local(reason, 451, enhanced, text);
    match e {
        // A 5xx greeting says "no service at this host", not "no such
        // recipient": skip the host and defer, as Postfix does by default
        // (smtp_skip_5xx_greeting), so the outcome does not depend on which
        // MX happened to be tried last.
        // ... but a throttling greeting ("421 4.7.0 try again later") is
        // this host's word on us: kept as its reply, so the destination
        // backs off (`is_throttling`)
        ClientError::Rejected(Phase::Greeting, r) if throttling(&Response::from_reply(r)) => {
            Status::remote(r, &remote_name(hop, peer), peer)
        }
        ClientError::Rejected(Phase::Greeting, r) => local(
            LocalReason::GreetingRefused,
            Enhanced::new(4, 4, 0),
            format!("host refused service at greeting: {r}"),
        ),
        ClientError::Rejected(_, r) => Status::remote(r, &remote_name(hop, peer), peer),
        // RFC 4954 §6 names 454 4.7.0 for a temporary failure; every AUTH
        // failure is treated as one (a wrong password is the operator's
        // to fix, not the sender's), with the hop's reply in the text so
        // `queue list --summary` shows it as the top error
        ClientError::Auth(err) => Status::local(
            LocalReason::AuthFailed,
            454,
            Enhanced::new(4, 7, 0),
            format!("{} at {}", err, remote_name(hop, peer)),
        ),
        ClientError::Connect(err) => local(
            LocalReason::ConnectFailed,
            Enhanced::new(4, 4, 1),
            format!("connect failed: {err}"),
        ),
        ClientError::Timeout(p) => local(
            LocalReason::Timeout,
            Enhanced::new(4, 4, 2),
            format!("timeout waiting for reply to {p}"),
        ),
        ClientError::Io(p, err) => local(
            LocalReason::ConnectionLost,
            Enhanced::new(4, 4, 2),
            format!("connection lost during {p}: {err}"),
        ),
        ClientError::Protocol(p, what) => local(
            LocalReason::ProtocolError,
            Enhanced::new(4, 5, 0),
            format!("protocol error after {p}: {what}"),
        ),
    }
}

/// Whether a server's reply says "you are sending too much, later": the
/// destination as a whole backs off (`shaping`) instead of each message.
/// RFC 5321 §4.2.2/§3.8: 421 is the server closing the channel on us;
/// 450/451 with an RFC 3463 X.7.X (security or policy, e.g. 4.7.0,
/// 4.7.1 "rate limited"), or without an enhanced code, a text that says
/// so. Our own decisions
/// (connect failed, timeouts) never throttle: a down host is retried per
/// message as before.
pub fn is_throttling(status: &Status) -> bool {
    matches!(status.source, Source::Remote { .. }) && throttling(&status.response)
}

fn throttling(r: &Response) -> bool {
    const WORDS: [&str; 6] = [
        "try again later",
        "rate limit",
        "too many",
        "throttl",
        "slow down",
        "try later",
    ];
    match r.code {
        421 => true,
        // the enhanced code, when given, is the server's own machine-
        // readable word and decides ("451 4.3.0 try again later" is a
        // local problem of that server, retried per message); the text
        // only for a server that gives none
        450 | 451 => match r.enhanced {
            Some(e) => e.class == 4 && e.subject == 7,
            None => {
                let text = r.text.to_ascii_lowercase();
                WORDS.iter().any(|w| text.contains(w))
            }
        },
        _ => false,
    }
}

pub(super) fn route_status(e: &RouteError) -> Status {
    match e {
        RouteError::Permanent {
            code,
            enhanced,
            text,
        } => Status::local(LocalReason::NoRoute, *code, *enhanced, text.clone()),
        RouteError::Temporary(t) => Status::local(
            LocalReason::RouteTemporary,
            451,
            Enhanced::new(4, 4, 3),
            t.clone(),
        ),
    }
}

impl Deliverer {
    /// Records one group's results in the envelope (state, last status,
    /// history), reports relayed successes, and stores the envelope
    /// before anything else happens: a sent recipient must never be sent
    /// again.
    pub(super) fn record(
        &self,
        claim: &Claim,
        env: &mut Envelope,
        group: &Group,
        results: Vec<RcptResult>,
    ) -> Result<(), SpoolError> {
        let now = self.clock.now_unix();
        let mut relayed = Vec::new();
        use crate::metrics::Outcome::{Bounced, Deferred, Sent};
        let dest = group
            .rcpts
            .first()
            .map_or(crate::metrics::Dest::Literal, |(_, p)| {
                self.router.dest_class(p.mailbox().host())
            });
        for ((i, _), res) in group.rcpts.iter().zip(results) {
            let r = &mut env.rcpts[*i];
            let (state, word) = match res.status.class() {
                Class::Success => (RcptState::Sent, ("sent", Sent)),
                Class::Temporary => (RcptState::Deferred, ("deferred", Deferred)),
                Class::Permanent => (RcptState::Bouncing, ("bounced", Bounced)),
            };
            if state == RcptState::Sent && !res.dsn_passed {
                relayed.push(*i);
            }
            log::info!(
                "{} to={} relay={} delay={} attempts={} dsn={} status={} ({})",
                env.id,
                crate::smtp::Escaped(&r.path.mailbox().to_string()),
                res.relay,
                format_duration(Duration::from_secs(now.saturating_sub(env.arrived))),
                env.attempts,
                res.status.dsn_code(),
                word.0,
                res.status,
            );
            crate::metrics::delivery(word.1, dest, now.saturating_sub(env.arrived));
            r.state = state;
            r.last_reply = Some(res.status.clone());
            r.tries.record(Attempt {
                time: now,
                relay: res.relay,
                status: res.status,
            });
        }
        // RFC 3461 §5.2.2: NOTIFY=SUCCESS past a non-DSN next hop
        bounce::report_relayed(
            claim,
            &self.hostname,
            env,
            &relayed,
            now,
            self.committed.as_ref(),
        )?;
        // stored by the caller: once per attempt (`deliver_groups`)
        Ok(())
    }

    pub(super) fn report_failures(
        &self,
        claim: &Claim,
        env: &mut Envelope,
        now: u64,
    ) -> Result<(), SpoolError> {
        bounce::double_bounce(
            claim,
            &self.hostname,
            self.postmaster.as_ref(),
            env,
            now,
            self.committed.as_ref(),
        )?;
        bounce::report_bouncing(claim, &self.hostname, env, now, self.committed.as_ref())
            .map(|_| ())
    }

    /// `--delay-warning`: one "delayed" DSN once the message is that old.
    pub(super) fn maybe_warn_delay(
        &self,
        claim: &Claim,
        env: &mut Envelope,
        now: u64,
    ) -> Result<(), SpoolError> {
        let Some(after) = self.delay_warning else {
            return Ok(());
        };
        let age = now.saturating_sub(env.arrived);
        let already = env.delay_warned.is_some();
        if age < after.as_secs() || already || env.from.is_null() {
            return Ok(());
        }
        let reports: Vec<RcptReport> = env
            .rcpts
            .iter()
            .filter(|r| r.state == RcptState::Deferred)
            .map(|r| bounce::report_for(r, Action::Delayed))
            .collect();
        if let Some(dsn) = bounce::enqueue(claim, &self.hostname, env, &reports, now)? {
            if let Some(tx) = &self.committed {
                let _ = tx.try_send(dsn);
            }
            env.delay_warned = Some(DelayWarned { time: now, dsn });
        }
        Ok(())
    }
}

/// The name a reply from `peer` is attributed to (RFC 3464 §2.3.5
/// Remote-MTA): the hop's name, or `[192.0.2.1]` for a literal.
pub(super) fn remote_name(hop: &Hop, peer: SocketAddr) -> String {
    if hop.name.starts_with('[') {
        format!("[{}]", peer.ip())
    } else {
        hop.name.clone()
    }
}

/// `mx.example.org[192.0.2.1]:25`, or `[192.0.2.1]:25` for a literal.
pub(super) fn relay_label(hop: &Hop, peer: SocketAddr) -> String {
    if hop.name.starts_with('[') {
        format!("[{}]:{}", peer.ip(), peer.port())
    } else {
        format!("{}[{}]:{}", hop.name, peer.ip(), peer.port())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(s: &str) -> crate::smtp::Reply {
        let mut p = crate::smtp::ReplyParser::new();
        p.feed(s).unwrap().unwrap()
    }

    fn hop_named(name: &str) -> Hop {
        Hop {
            name: name.into(),
            addrs: vec![],
            port: 25,
            tls: None,
            auth: None,
        }
    }

    #[test]
    fn backoff_doubles_with_jitter_and_cap() {
        let p = RetryPolicy {
            min: Duration::from_secs(100),
            max: Duration::from_secs(1000),
            lifetime: Duration::from_secs(10_000),
        };
        for salt in 0..50 {
            let d1 = p.backoff(1, salt).as_secs();
            let d3 = p.backoff(3, salt).as_secs();
            let d9 = p.backoff(9, salt).as_secs();
            assert!((90..=110).contains(&d1), "{d1}");
            assert!((360..=440).contains(&d3), "{d3}");
            assert!((900..=1100).contains(&d9), "{d9}");
        }
    }

    #[test]
    fn classification() {
        let hop = hop_named("mx.example");
        let peer: SocketAddr = "192.0.2.1:25".parse().unwrap();
        let rejected =
            |s: &str, phase| error_status(&ClientError::Rejected(phase, r(s)), &hop, peer);
        let st = rejected("550 5.1.1 no", Phase::Rcpt);
        assert_eq!(st.class(), Class::Permanent);
        assert_eq!(st.remote_mta(), Some("mx.example"));
        assert_eq!(
            rejected("451 4.3.0 later", Phase::Rcpt).class(),
            Class::Temporary
        );
        // a 5xx greeting skips the host: ours, temporary
        let st = rejected("554 go away", Phase::Greeting);
        assert_eq!(st.class(), Class::Temporary);
        assert_eq!(
            st.source,
            crate::status::Source::Local(LocalReason::GreetingRefused)
        );
        let refused =
            ClientError::Connect(std::io::Error::from(std::io::ErrorKind::ConnectionRefused));
        let st = error_status(&refused, &hop, peer);
        assert_eq!(st.class(), Class::Temporary);
        assert_eq!(st.remote_mta(), None);
        assert_eq!(
            error_status(&ClientError::Timeout(Phase::Data), &hop, peer).class(),
            Class::Temporary
        );
        // a wrong password (535) defers, with the hop's reply in the text
        let auth = ClientError::Auth(crate::client::AuthError::Refused(r(
            "535 5.7.8 Error: authentication failed",
        )));
        let st = error_status(&auth, &hop, peer);
        assert_eq!(st.class(), Class::Temporary);
        assert_eq!(
            st.source,
            crate::status::Source::Local(LocalReason::AuthFailed)
        );
        assert!(
            st.to_string()
                .contains("535 5.7.8 Error: authentication failed at mx.example"),
            "{st}"
        );
        assert_eq!(remote_name(&hop_named("[192.0.2.1]"), peer), "[192.0.2.1]");
    }

    /// The one place that says which replies throttle a destination.
    #[test]
    fn throttling_replies() {
        let hop = hop_named("mx.example");
        let peer: SocketAddr = "192.0.2.1:25".parse().unwrap();
        let at = |s: &str, phase| {
            is_throttling(&error_status(
                &ClientError::Rejected(phase, r(s)),
                &hop,
                peer,
            ))
        };
        for yes in [
            "421 4.7.0 Try again later",
            "421 Service not available",
            "451 4.7.1 Rate limited",
            "450 4.7.28 too many messages",
            "451 Please try again later",
            "450 Too many connections from your IP",
            "451 Throttled",
        ] {
            assert!(at(yes, Phase::Rcpt), "{yes}");
            assert!(at(yes, Phase::Mail), "{yes}");
        }
        // at the greeting too, and kept as the host's own reply
        assert!(at("421 4.7.0 Try again later", Phase::Greeting));
        for no in [
            "451 4.3.0 Temporary local problem",
            // the enhanced code decides over the words
            "451 4.3.0 try again later",
            "450 4.2.1 too many messages for this mailbox, slow down",
            "450 4.2.1 Mailbox busy",
            "452 4.2.2 Mailbox full",
            "550 5.7.1 Rate limited for ever",
            "554 too many errors",
            "250 ok",
        ] {
            assert!(!at(no, Phase::Rcpt), "{no}");
        }
        // a 5xx greeting stays ours (skip the host), never a throttle
        assert!(!at("554 go away", Phase::Greeting));
        // our own temporary failures are not the host throttling
        let refused =
            ClientError::Connect(std::io::Error::from(std::io::ErrorKind::ConnectionRefused));
        assert!(!is_throttling(&error_status(&refused, &hop, peer)));
        assert!(!is_throttling(&error_status(
            &ClientError::Timeout(Phase::Data),
            &hop,
            peer
        )));
    }

    /// The queue commands' and DSN reporting's transitions: requeue
    /// takes only deferred back to pending, return_to_sender bounces
    /// everything not final with the operator's 5.0.0, and
    /// failure_reported turns only bouncing into failed.
    #[test]
    fn operator_and_report_transitions() {
        use crate::spool::Recipient;
        let states = [
            RcptState::Pending,
            RcptState::Deferred,
            RcptState::Sent,
            RcptState::Bouncing,
            RcptState::Failed,
        ];
        let mut env = crate::spool::tests::env_for(crate::spool::QueueId::generate());
        env.rcpts = states
            .iter()
            .map(|st| {
                let mut r = Recipient::new(
                    crate::smtp::Path::parse("<u@b.example>", false).unwrap(),
                    Default::default(),
                );
                r.state = *st;
                r
            })
            .collect();
        let after = |env: &Envelope| env.rcpts.iter().map(|r| r.state).collect::<Vec<_>>();
        let mut e = env.clone();
        requeue(&mut e);
        use RcptState::*;
        assert_eq!(after(&e), [Pending, Pending, Sent, Bouncing, Failed]);
        let mut e = env.clone();
        failure_reported(&mut e);
        assert_eq!(after(&e), [Pending, Deferred, Sent, Failed, Failed]);
        let mut e = env.clone();
        return_to_sender(&mut e);
        assert_eq!(after(&e), [Bouncing, Bouncing, Sent, Bouncing, Failed]);
        let st = e.rcpts[0].last_reply.as_ref().unwrap();
        assert_eq!(st.class(), Class::Permanent);
        assert_eq!(
            st.source,
            crate::status::Source::Local(LocalReason::Operator)
        );
        assert!(
            e.rcpts[2].last_reply.is_none(),
            "a sent recipient keeps its status"
        );
    }
}
