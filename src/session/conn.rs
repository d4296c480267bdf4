//! The blocking half of a session: read a command line, let
//! `Session::step` decide, carry out the `Step` (DATA, BDAT, STARTTLS,
//! AUTH), and write the replies through `Conn`, the session's only writer,
//! where the reply-and-flush rule lives.

use std::io::{self, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use crossbeam_channel::Sender;

use super::auth::authenticate;
use super::message::{receive_chunk, receive_message, Chunked, Finished};
use super::{Phase, Session, Step, MAX_COMMAND_LINE};
use crate::auth;
use crate::channel::Channel;
use crate::config::{Config, ListenMode};
use crate::smtp::command;
use crate::smtp::data::{self, Line};
use crate::smtp::{Command, Reply};
use crate::spool::{QueueId, Spool};

/// What a session worker needs besides the socket: one generation of
/// settings (`app::Generation`), which the session keeps to its end even
/// when a SIGHUP makes a new one current. The spool, the channel to the
/// scheduler, the space check and the password-check pool are the same
/// in every generation.
pub struct Context {
    pub config: Arc<Config>,
    pub spool: Arc<Spool>,
    /// Told of each committed message (the scheduler); a full or missing
    /// channel only delays delivery until the next spool scan.
    pub committed: Option<Sender<QueueId>>,
    pub space: Arc<SpaceCheck>,
    /// Password checks: a few at a time, in reused memory.
    pub verifier: Arc<auth::Verifier>,
    /// AUTH failures across sessions, per address and per user name
    /// (kept across a reload that leaves the limits as they were).
    pub auth_failures: Arc<crate::auth_limit::FailureLimiter>,
    /// STARTTLS and implicit TLS: built by `app.rs` from `config.tls`'s
    /// files.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// DNS lists, policy service, rate limits (issue 13).
    pub edge: crate::edge::Edge,
    /// Access rules and recipient validation (`check.rs`).
    pub gate: Arc<crate::check::Gate>,
    /// `--sender-map`, read at start by `app.rs`.
    pub senders: Option<crate::sender_map::SenderMap>,
    /// `--auth-results`: SPF, DKIM, DMARC checks, when a listener has them.
    pub authres: Option<Arc<crate::authres::Verifier>>,
    /// `--dkim-key`: the signer, keys read at start by `app.rs`.
    pub dkim: Option<Arc<crate::dkim::Signer>>,
}

/// "Is there room for new mail?", asked at every MAIL and DATA, answered
/// from a statvfs at most once a second.
#[derive(Default)]
pub struct SpaceCheck {
    /// Unix milliseconds of the last look, and whether it was short.
    last_ms: AtomicU64,
    short: std::sync::atomic::AtomicBool,
}

impl SpaceCheck {
    pub fn short_of_space(&self, spool: &Spool, min_free: u64) -> bool {
        if min_free == 0 {
            return false;
        }
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        let last = self.last_ms.load(Ordering::Relaxed);
        if now_ms.saturating_sub(last) >= 1000
            && self
                .last_ms
                .compare_exchange(last, now_ms, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            let short = match crate::sys::free_space(spool.root()) {
                Ok(f) => f.bytes < min_free || f.inodes.is_some_and(|n| n < 1000),
                Err(e) => {
                    log::warn!("cannot read free space of the spool: {e}");
                    false
                }
            };
            if short != self.short.swap(short, Ordering::Relaxed) {
                if short {
                    log::warn!(
                        "spool short of space (under {min_free} bytes free): new mail gets 452"
                    );
                } else {
                    log::info!("spool has room again: accepting mail");
                }
            }
        }
        self.short.load(Ordering::Relaxed)
    }
}

pub(super) fn is_timeout(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

/// The client connection: what is read from it, and the one writer of
/// replies. Every reply is logged here, and flushed by one of two rules.
pub(super) struct Conn {
    pub(super) io: Channel,
    pub(super) peer: SocketAddr,
    /// The filter stage's refusal of the next reply (its reason and rule
    /// go on the reply's one log line), taken from the session before it.
    refusal: Option<crate::metrics::Refusal>,
}

impl Conn {
    /// A reply in the dialogue. RFC 2920 §3.1: replies to a pipelined
    /// group go out in order, flushed once no more commands are waiting.
    pub(super) fn reply(&mut self, reply: &Reply) -> io::Result<()> {
        self.write(reply)?;
        if self.io.buffer().is_empty() {
            self.io.flush()?;
        }
        Ok(())
    }

    /// A reply the client must see before anything else happens: the
    /// greeting, 354 before the data, a 334 challenge, 220 before the TLS
    /// handshake, the last reply before closing.
    pub(super) fn reply_now(&mut self, reply: &Reply) -> io::Result<()> {
        self.write(reply)?;
        self.io.flush()
    }

    /// The last words to a client that timed out or is being dropped:
    /// best effort, a failure changes nothing.
    pub(super) fn farewell(&mut self, reply: &Reply) {
        let _ = self.reply_now(reply);
    }

    fn write(&mut self, reply: &Reply) -> io::Result<()> {
        log::debug!("{} > {reply}", self.peer);
        crate::metrics::reply(&self.peer, reply, self.refusal.take());
        reply.write_to(&mut self.io)
    }
}

/// Whether the session goes on after a step.
enum Flow {
    Continue,
    Close,
}

/// Runs one SMTP session on an accepted connection of a listener of
/// `mode` until QUIT, EOF, timeout or error.
pub fn run(stream: TcpStream, peer: SocketAddr, mode: ListenMode, ctx: &Context) {
    if let Err(e) = run_inner(stream, peer, mode, ctx) {
        log::debug!("{peer} session ended: {e}");
    }
}

fn run_inner(
    stream: TcpStream,
    peer: SocketAddr,
    mode: ListenMode,
    ctx: &Context,
) -> io::Result<()> {
    let cfg = &*ctx.config;
    stream.set_write_timeout(Some(cfg.timeout))?;
    stream.set_nodelay(true)?;
    let mut conn = Conn {
        io: Channel::new(stream, cfg.timeout, 32 * 1024, 8 * 1024),
        peer,
        refusal: None,
    };
    let mut session = Session::on_listener(cfg, peer.ip(), mode, ctx.senders.as_ref());
    session.set_gate(&ctx.gate);
    log::debug!("{peer} connected ({mode})");
    // RFC 8314 §3.3: on an implicit-TLS listener the handshake comes
    // first, the greeting after it, inside TLS
    if mode.implicit_tls {
        let Some(info) = handshake(&mut conn, ctx)? else {
            return Ok(());
        };
        log::info!("{peer} tls version={} cipher={}", info.version, info.cipher);
        session.tls_started(info);
    }
    if let Some(r) = super::inbound::on_connect(&mut session, ctx) {
        conn.refusal = session.take_refusal();
        conn.reply_now(&r)?;
        return Ok(());
    }
    session.set_milters(crate::milter::Conversation::new(
        &cfg.milters,
        mode,
        &cfg.hostname,
    ));
    if let Some(r) = super::milters::on_connect(&mut session, peer) {
        conn.refusal = session.take_refusal();
        conn.reply_now(&r)?;
        return Ok(());
    }
    let greeting = session.open();
    conn.refusal = session.take_refusal();
    conn.reply_now(&greeting)?;
    if greeting.code().value() == 421 {
        return Ok(());
    }
    let mut line = Vec::with_capacity(MAX_COMMAND_LINE);
    // a message arriving in BDAT chunks, between its first and LAST chunk
    let mut chunked: Option<Chunked> = None;
    loop {
        // a partial BDAT message whose transaction ended (RSET, EHLO, a
        // refusal) is dropped, and with it its tmp file
        if chunked.is_some() && !session.transaction().is_some_and(|(_, tx)| tx.chunking) {
            chunked = None;
        }
        let Some(parsed) = read_command(&mut conn, &mut line, cfg)? else {
            return Ok(());
        };
        // RFC 5321 §4.5.3.1.10 / Postfix: refuse new mail while the spool
        // is short of space, before the client sends anything big
        if matches!(parsed, Ok(Command::Mail { .. }))
            && session.transaction().is_none()
            && !matches!(session.phase(), Phase::Connected)
            && ctx.space.short_of_space(&ctx.spool, cfg.min_free_space)
        {
            conn.reply(&Reply::insufficient_storage())?;
            continue;
        }
        let probe = super::inbound::Probe::of(&parsed, &session);
        let mail = matches!(parsed, Ok(Command::Mail { .. }));
        let milter_probe = super::milters::Probe::of(&parsed, &session);
        let step = session.step(parsed);
        let step = super::inbound::after(&mut session, probe, step, ctx);
        let step = if mail {
            super::authres::after_mail(&mut session, step, ctx)
        } else {
            step
        };
        let step = super::milters::after(&mut session, milter_probe, step);
        if let Flow::Close = perform(&mut session, &mut chunked, step, &mut conn, ctx)? {
            return Ok(());
        }
    }
}

/// Reads and parses one command line; `None` when the session is over
/// (the client left or stayed silent past the idle timeout, or sent a
/// BDAT whose size cannot be read).
fn read_command(
    conn: &mut Conn,
    line: &mut Vec<u8>,
    cfg: &Config,
) -> io::Result<Option<Result<Command, Reply>>> {
    let peer = conn.peer;
    // a whole command line must arrive within the idle timeout, not
    // merely each of its bytes
    conn.io.set_deadline(Some(Instant::now() + cfg.timeout));
    match data::read_line(&mut conn.io, line, MAX_COMMAND_LINE) {
        Ok(Line::Complete) => {
            log::trace!("{peer} < {}", String::from_utf8_lossy(line));
            crate::fault::hit(crate::fault::Point::Session);
            let parsed = command::parse(line);
            // RFC 3030 §2: an unreadable chunk size leaves the octets
            // that follow unknown; reading them as commands would let
            // message data be executed, so the session ends
            if line.len() >= 4 && line[..4].eq_ignore_ascii_case(b"BDAT") {
                if let Err(r) = &parsed {
                    conn.reply(r)?;
                    conn.reply_now(&Reply::bdat_lost(&cfg.hostname))?;
                    return Ok(None);
                }
            }
            Ok(Some(parsed))
        }
        Ok(Line::TooLong) => Ok(Some(Err(Reply::line_too_long()))),
        Ok(Line::Eof) => {
            log::debug!("{peer} disconnected");
            Ok(None)
        }
        Err(e) if is_timeout(&e) => {
            log::info!("{peer} timeout after {:?} of silence", cfg.timeout);
            conn.farewell(&Reply::timeout(&cfg.hostname));
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

/// Carries out what the state machine decided, down to its reply.
fn perform<'a>(
    session: &mut Session,
    chunked: &mut Option<Chunked<'a>>,
    step: Step,
    conn: &mut Conn,
    ctx: &'a Context,
) -> io::Result<Flow> {
    let cfg = &*ctx.config;
    // the filter stage's word on this step's reply, if it refused
    conn.refusal = session.take_refusal();
    match step {
        Step::Reply(r) => conn.reply(&r)?,
        Step::Close(r) => {
            conn.reply_now(&r)?;
            return Ok(Flow::Close);
        }
        Step::StartData(r) => {
            let finished = receive_message(session, r, conn, ctx)?;
            conn.refusal = session.take_refusal();
            session.end_transaction();
            return end_of_message(conn, finished, ctx);
        }
        Step::StartTls(r) => return start_tls(session, r, conn, ctx),
        Step::Chunk(c) => {
            let finished = if c.reply.code().is_positive() {
                receive_chunk(session, chunked, c, conn, ctx)?
            } else {
                conn.io
                    .set_deadline(Some(Instant::now() + cfg.data_timeout));
                data::skip_exact(&mut conn.io, c.size)?;
                c.reply.into()
            };
            conn.refusal = session.take_refusal();
            return end_of_message(conn, finished, ctx);
        }
        Step::Auth(start) => {
            let step = match authenticate(session, start, conn, ctx) {
                Ok(step) => step,
                Err(e) if is_timeout(&e) => {
                    log::info!("{} timeout during AUTH", conn.peer);
                    Step::Close(Reply::timeout(&cfg.hostname))
                }
                Err(e) => return Err(e),
            };
            if let Step::Close(r) = &step {
                conn.reply_now(r)?;
                return Ok(Flow::Close);
            }
            conn.reply(step.reply())?;
        }
    }
    Ok(Flow::Continue)
}

/// The reply that ends DATA or a BDAT chunk, then, for a message just
/// queued, the scheduler's word (`Finished::announce`): after the reply
/// is written, and also when writing it failed, since the message is
/// queued all the same.
fn end_of_message(conn: &mut Conn, finished: Finished, ctx: &Context) -> io::Result<Flow> {
    // RFC 5321 §3.8: a 421 (a milter's SMFIR_SHUTDOWN) closes
    let closes = finished.reply.closes_session();
    let sent = if closes {
        conn.reply_now(&finished.reply)
    } else {
        conn.reply(&finished.reply)
    };
    finished.announce(ctx);
    sent?;
    Ok(if closes { Flow::Close } else { Flow::Continue })
}

/// STARTTLS accepted: send the 220, run the handshake, and start the
/// session over (RFC 3207 §4.2). A failed handshake ends the session.
fn start_tls(
    session: &mut Session,
    go_ahead: Reply,
    conn: &mut Conn,
    ctx: &Context,
) -> io::Result<Flow> {
    let peer = conn.peer;
    // RFC 3207 §5 / CVE-2011-0411: anything the client sent after
    // STARTTLS in plaintext is not executed after the handshake
    let discarded = conn.io.discard_buffered();
    if discarded > 0 {
        log::warn!(
            "{peer} discarded {discarded} octets pipelined after STARTTLS (plaintext injection)"
        );
    }
    conn.reply_now(&go_ahead)?;
    let Some(info) = handshake(conn, ctx)? else {
        return Ok(Flow::Close);
    };
    log::info!(
        "{peer} starttls version={} cipher={}",
        info.version,
        info.cipher
    );
    session.tls_started(info);
    Ok(Flow::Continue)
}

/// The server side of a TLS handshake, within `--timeout` (STARTTLS and
/// implicit TLS alike). A failed handshake is logged and ends this
/// connection only: `None`.
fn handshake(conn: &mut Conn, ctx: &Context) -> io::Result<Option<crate::tls::TlsInfo>> {
    let Some(tls) = ctx.tls.clone() else {
        return Err(io::Error::other("TLS without a TLS config"));
    };
    let tls_conn = rustls::ServerConnection::new(tls).map_err(io::Error::other)?;
    if let Err(e) = conn.io.start_tls(tls_conn.into(), ctx.config.timeout) {
        log::info!("{} TLS handshake failed: {e}", conn.peer);
        return Ok(None);
    }
    match conn.io.tls_info() {
        Some(info) => Ok(Some(info)),
        None => Err(io::Error::other("TLS session without version or cipher")),
    }
}
