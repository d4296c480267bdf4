//! AUTH (RFC 4954): whether it is offered, the AUTH command's checks,
//! and the SASL PLAIN (RFC 4616) / LOGIN dialogue that follows, down to
//! the password check (`auth::Verifier`) and the failure limits across
//! sessions (`auth_limit::FailureLimiter`).

use std::io;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::conn::{Conn, Context};
use super::{AuthStart, Phase, Session, Step};
use crate::auth::{self, Mechanism};
use crate::config::Config;
use crate::smtp::data::{self, Line};
use crate::smtp::Reply;

impl Session<'_> {
    /// AUTH is offered after TLS, or to a loopback client (whose password
    /// never leaves the machine): RFC 4954 §4 forbids plaintext PLAIN and
    /// LOGIN on an open network unless the channel is protected. On a
    /// submission listener only after TLS, loopback or not, unless
    /// `--submission-plaintext-auth` says otherwise.
    pub(super) fn auth_offered(&self) -> bool {
        let plaintext_ok = if self.mode.submission {
            self.cfg.submission_plaintext_auth
        } else {
            self.client.is_loopback()
        };
        self.cfg.auth_file.is_some() && (self.tls.is_some() || plaintext_ok)
    }

    /// AUTH succeeded for `user`.
    pub fn authenticated(&mut self, user: String) -> Step {
        self.auth = Some(user);
        Step::Reply(Reply::auth_ok())
    }

    /// AUTH failed: 535, counted as an error; returns the reply and how
    /// many failures this session has had.
    pub fn auth_failed(&mut self) -> (Step, u32) {
        self.auth_failures += 1;
        (
            self.finish(Step::Reply(Reply::auth_failed())),
            self.auth_failures,
        )
    }

    /// The AUTH command: is it allowed now, with a known mechanism?
    pub(super) fn auth(&mut self, mechanism: &str, initial: Option<String>) -> Step {
        if self.cfg.auth_file.is_none() {
            return Step::Reply(Reply::not_implemented("AUTH"));
        }
        if !self.auth_offered() {
            return Step::Reply(Reply::auth_needs_tls());
        }
        match &self.phase {
            // RFC 4954 §4: AUTH is an ESMTP extension: EHLO first
            Phase::Connected => return Step::Reply(Reply::bad_sequence("Send EHLO first")),
            Phase::Ready { helo } if !helo.esmtp => {
                return Step::Reply(Reply::bad_sequence("Send EHLO first"))
            }
            // RFC 4954 §4: not during a mail transaction
            Phase::Mail { .. } => {
                return Step::Reply(Reply::bad_sequence(
                    "AUTH not allowed during a mail transaction",
                ))
            }
            Phase::Ready { .. } => {}
        }
        // RFC 4954 §4: after a successful AUTH, further AUTH commands get 503
        if self.auth.is_some() {
            return Step::Reply(Reply::bad_sequence("Already authenticated"));
        }
        let Some(mechanism) = Mechanism::parse(mechanism) else {
            return Step::Reply(Reply::auth_unknown_mechanism());
        };
        let challenge = match mechanism {
            // RFC 4616 §2: the server's first challenge is empty
            Mechanism::Plain => Reply::auth_challenge(""),
            Mechanism::Login => Reply::auth_challenge(&auth::encode_base64(b"Username:")),
        };
        Step::Auth(AuthStart {
            mechanism,
            initial,
            challenge,
        })
    }
}

/// RFC 4954 §4: a server must take response lines of 12288 octets.
const MAX_AUTH_LINE: usize = 12288;

/// What a SASL step yields: the client's decoded response, or the reply
/// that ends the exchange (cancelled, undecodable).
type Exchange<T> = io::Result<Result<T, Reply>>;

/// A response to a challenge (or an initial response): `*` cancels,
/// anything else must be base64 (RFC 4954 §4).
fn decode_response(text: &[u8], initial: bool) -> Result<Vec<u8>, Reply> {
    if text == b"*" {
        return Err(Reply::auth_cancelled());
    }
    // RFC 4954 §4: "=" is an empty initial response
    if initial && text == b"=" {
        return Ok(Vec::new());
    }
    let text = std::str::from_utf8(text).map_err(|_| Reply::auth_bad_response())?;
    auth::decode_base64(text.trim()).ok_or_else(Reply::auth_bad_response)
}

/// Sends a 334 challenge and reads the client's response line.
fn challenge(conn: &mut Conn, cfg: &Config, reply: &Reply) -> Exchange<Vec<u8>> {
    conn.reply_now(reply)?;
    conn.io.set_deadline(Some(Instant::now() + cfg.timeout));
    let mut line = Vec::new();
    match data::read_line(&mut conn.io, &mut line, MAX_AUTH_LINE)? {
        Line::Complete => Ok(decode_response(&line, false)),
        Line::TooLong => Ok(Err(Reply::line_too_long())),
        Line::Eof => Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "client left during AUTH",
        )),
    }
}

/// The user name and password, by the mechanism's exchange.
fn credentials(start: &AuthStart, conn: &mut Conn, cfg: &Config) -> Exchange<(String, String)> {
    let first = match &start.initial {
        Some(i) => decode_response(i.as_bytes(), true),
        None => challenge(conn, cfg, &start.challenge)?,
    };
    let first = match first {
        Ok(f) => f,
        Err(r) => return Ok(Err(r)),
    };
    match start.mechanism {
        Mechanism::Plain => Ok(auth::parse_plain(&first).ok_or_else(Reply::auth_bad_response)),
        Mechanism::Login => {
            let ask = Reply::auth_challenge(&auth::encode_base64(b"Password:"));
            let pass = match challenge(conn, cfg, &ask)? {
                Ok(p) => p,
                Err(r) => return Ok(Err(r)),
            };
            match (String::from_utf8(first), String::from_utf8(pass)) {
                (Ok(u), Ok(p)) if !u.is_empty() => Ok(Ok((u, p))),
                _ => Ok(Err(Reply::auth_bad_response())),
            }
        }
    }
}

/// Runs an accepted AUTH to its reply. A failure is answered 535 after a
/// pause that grows with each failure of the session (bounded), and is
/// logged with the user name, never the password. Failures also count
/// across sessions, per client address and per user name: past the
/// limits AUTH gets `454 4.7.0` without a password check.
pub(super) fn authenticate(
    session: &mut Session,
    start: AuthStart,
    conn: &mut Conn,
    ctx: &Context,
) -> io::Result<Step> {
    let cfg = &*ctx.config;
    let peer = &conn.peer.clone();
    let Some(path) = cfg.auth_file.as_deref() else {
        return Ok(Step::Reply(Reply::not_implemented("AUTH")));
    };
    let mech = start.mechanism.as_str();
    // RFC 4954 §6: 454 4.7.0 may answer the AUTH command itself; a locked
    // out address is told at once, before any challenge
    if ctx.auth_failures.address_locked(peer.ip(), Instant::now()) {
        log::debug!("{peer} auth mechanism={mech} refused: address locked out");
        return Ok(Step::Reply(Reply::auth_locked_out()));
    }
    let (user, pass) = match credentials(&start, conn, cfg)? {
        Ok(c) => c,
        Err(r) => {
            log::info!("{peer} auth mechanism={mech} ended: {r}");
            return Ok(session.finish(Step::Reply(r)));
        }
    };
    let shown: String = crate::smtp::escape(&user).chars().take(64).collect();
    // only a name the file could hold is counted per user: others cannot
    // log in anyway, and would only fill the table
    let counted = auth::valid_user(&user).then_some(user.as_str());
    let attempt = match ctx.auth_failures.admit(peer.ip(), counted, Instant::now()) {
        Ok(a) => a,
        Err(why) => {
            log::debug!("{peer} auth user={shown} mechanism={mech} refused: {why:?} locked out");
            return Ok(Step::Reply(Reply::auth_locked_out()));
        }
    };
    // a free verifier slot is awaited no longer than a client may stay
    // silent (the session's own timeout)
    let deadline = Instant::now() + cfg.timeout;
    let verdict = ctx.verifier.verify(path, &user, &pass, deadline);
    if !matches!(verdict, Ok(false)) {
        // only a wrong password counts against the limits
        ctx.auth_failures.succeeded(&attempt);
    }
    match verdict {
        Ok(true) => {
            log::info!("{peer} auth ok user={shown} mechanism={mech}");
            Ok(session.authenticated(user))
        }
        Ok(false) => Ok(failed(session, &attempt, &shown, mech, peer, ctx)),
        Err(auth::AuthError::Busy) => {
            log::info!(
                "{peer} auth user={shown} mechanism={mech}: no password check free within {:?}",
                cfg.timeout
            );
            Ok(Step::Reply(Reply::auth_busy()))
        }
        Err(e) => {
            log::error!("{peer} auth: password file {}: {e}", path.display());
            Ok(Step::Reply(Reply::auth_unavailable()))
        }
    }
}

/// A wrong password: 535 after a pause that grows with the session's
/// failures, logged with the user name, and the lockouts it reached.
fn failed(
    session: &mut Session,
    attempt: &crate::auth_limit::Attempt,
    shown: &str,
    mech: &str,
    peer: &SocketAddr,
    ctx: &Context,
) -> Step {
    let (step, n) = session.auth_failed();
    log::warn!("{peer} auth failed user={shown} mechanism={mech} failures={n}");
    let limits = ctx.auth_failures.limits();
    if attempt.reached.address {
        log::info!(
            "{peer} auth lockout address={} failures={} window={:?}: AUTH refused (454) until the window slides",
            peer.ip(),
            limits.per_address,
            limits.window
        );
    }
    if attempt.reached.user {
        log::info!(
            "{peer} auth lockout user={shown} failures={} window={:?}: AUTH as this user refused (454) until the window slides",
            limits.per_user,
            limits.window
        );
    }
    // slow down guessing: 0.5 s more per failure, at most 5 s
    let pause = AUTH_FAILURE_PAUSE
        .saturating_mul(n)
        .min(Duration::from_secs(5));
    std::thread::sleep(pause);
    step
}

const AUTH_FAILURE_PAUSE: Duration = Duration::from_millis(500);
