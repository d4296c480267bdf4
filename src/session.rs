//! The SMTP server session (RFC 5321, rooted in RFC 821's MAIL/RCPT/DATA).
//!
//! Two halves: `Session` is the pure state machine (a `Command` in, a
//! `Step` out, no I/O), and `run` is the blocking loop that reads lines
//! from the socket, feeds the machine, streams DATA into the spool and
//! writes replies. The loop never answers 250 to DATA before
//! `Incoming::commit` returned: that reply is the promise that the message
//! survives a crash.

use std::io::{self, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::Sender;

use crate::auth::{self, Mechanism};
use crate::channel::Channel;
use crate::config::{BareLineEndings, Config};
use crate::smtp::command::{self, helo_domain};
use crate::smtp::data::{self, ChunkReader, DataSummary, DotReader, Line};
use crate::smtp::{Command, Host, MailParams, Path, RcptDsn, RcptTarget, Reply, ReversePath};
use crate::spool::{Envelope, Incoming, QueueId, RcptState, Recipient, Spool};
use crate::time::{now_unix, rfc5322_date};
use crate::tls::TlsInfo;

/// RFC 5321 §4.5.3.1.4: a command line is at most 512 octets with CRLF.
pub const MAX_COMMAND_LINE: usize = 512;

/// The client's greeting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Helo {
    pub name: String,
    /// EHLO (extensions allowed) rather than HELO.
    pub esmtp: bool,
}

/// One mail transaction (RFC 5321 §3.3): a sender and its recipients.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transaction {
    pub from: ReversePath,
    pub params: MailParams,
    /// Each forward-path with its RFC 3461 NOTIFY/ORCPT.
    pub rcpts: Vec<(Path, RcptDsn)>,
    /// A BDAT chunk was accepted: the data has begun (RFC 3030), so no
    /// more RCPT and no DATA in this transaction.
    pub chunking: bool,
}

/// Where the session stands. A transaction exists only inside `Mail`, so
/// a recipient without a sender cannot be represented.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Phase {
    /// Greeting sent, no HELO/EHLO yet.
    Connected,
    Ready {
        helo: Helo,
    },
    Mail {
        helo: Helo,
        tx: Transaction,
    },
}

/// What the I/O loop must do after a command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    Reply(Reply),
    /// Send the 354 and read the message.
    StartData(Reply),
    /// Send the reply and close the connection.
    Close(Reply),
    /// Send the 220 and run the TLS handshake (RFC 3207 §4).
    StartTls(Reply),
    /// Run the SASL exchange (RFC 4954 §4).
    Auth(AuthStart),
    /// Read a BDAT chunk (RFC 3030 §2).
    Chunk(Chunk),
}

/// A BDAT command: its octets follow it whatever the answer, so the I/O
/// loop always reads them, into the message when `reply` is positive,
/// else to throw away before sending `reply`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chunk {
    pub size: u64,
    pub last: bool,
    /// The refusal, or the provisional 250 of an accepted chunk.
    pub reply: Reply,
}

/// An accepted AUTH command: the exchange the I/O loop runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthStart {
    pub mechanism: Mechanism,
    /// RFC 4954 §4 initial response (`=` is the empty one).
    pub initial: Option<String>,
    /// The first challenge, when there is no initial response.
    pub challenge: Reply,
}

impl Step {
    pub fn reply(&self) -> &Reply {
        match self {
            Step::Reply(r) | Step::StartData(r) | Step::Close(r) | Step::StartTls(r) => r,
            Step::Auth(a) => &a.challenge,
            Step::Chunk(c) => &c.reply,
        }
    }
}

pub struct Session<'a> {
    cfg: &'a Config,
    client: IpAddr,
    phase: Phase,
    errors: usize,
    /// Set once STARTTLS completed.
    tls: Option<TlsInfo>,
    /// The user name, once AUTH succeeded.
    auth: Option<String>,
    auth_failures: u32,
}

impl<'a> Session<'a> {
    pub fn new(cfg: &'a Config, client: IpAddr) -> Session<'a> {
        Session {
            cfg,
            client: client.to_canonical(),
            phase: Phase::Connected,
            errors: 0,
            tls: None,
            auth: None,
            auth_failures: 0,
        }
    }

    pub fn greeting(&self) -> Reply {
        Reply::greeting(&self.cfg.hostname)
    }

    pub fn phase(&self) -> &Phase {
        &self.phase
    }

    pub fn tls(&self) -> Option<&TlsInfo> {
        self.tls.as_ref()
    }

    /// The TLS handshake completed. RFC 3207 §4.2: the server must discard
    /// any knowledge obtained from the client before it, such as the EHLO
    /// argument; the client starts over with EHLO.
    pub fn tls_started(&mut self, info: TlsInfo) {
        self.tls = Some(info);
        self.auth = None;
        self.phase = Phase::Connected;
    }

    /// The authenticated user, if any.
    pub fn user(&self) -> Option<&str> {
        self.auth.as_deref()
    }

    /// AUTH is offered after TLS, or to a loopback client (whose password
    /// never leaves the machine): RFC 4954 §4 forbids plaintext PLAIN and
    /// LOGIN on an open network unless the channel is protected.
    fn auth_offered(&self) -> bool {
        self.cfg.auth_file.is_some() && (self.tls.is_some() || self.client.is_loopback())
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

    /// One command (or the parser's rejection of one) → what to do.
    pub fn step(&mut self, cmd: Result<Command, Reply>) -> Step {
        let step = match cmd {
            Ok(c) => self.command(c),
            Err(r) => Step::Reply(r),
        };
        self.finish(step)
    }

    /// Counts a 5xx as an error; too many close the session.
    pub fn finish(&mut self, step: Step) -> Step {
        if step.reply().code().value() >= 500 {
            self.errors += 1;
            if self.errors > self.cfg.max_errors {
                return Step::Close(Reply::too_many_errors(&self.cfg.hostname));
            }
        }
        step
    }

    fn command(&mut self, cmd: Command) -> Step {
        let host = &self.cfg.hostname;
        match cmd {
            // RFC 5321 §4.1.4: EHLO/HELO may come at any time and reset
            // the state as RSET does.
            Command::Ehlo(name) => {
                let reply = Reply::ehlo(host, &name, &self.ehlo_keywords());
                self.phase = Phase::Ready {
                    helo: Helo { name, esmtp: true },
                };
                Step::Reply(reply)
            }
            Command::Helo(name) => {
                let reply = Reply::helo(host, &name);
                self.phase = Phase::Ready {
                    helo: Helo { name, esmtp: false },
                };
                Step::Reply(reply)
            }
            Command::Mail { from, params } => self.mail(from, params),
            Command::Rcpt(target) => self.rcpt(target, RcptDsn::default()),
            Command::RcptDsn(target, dsn) => self.rcpt(target, dsn),
            Command::Data => match &self.phase {
                // RFC 3030 §3: DATA and BDAT do not mix in one transaction
                Phase::Mail { tx, .. } if tx.chunking => {
                    Step::Reply(Reply::bad_sequence("DATA not allowed after BDAT"))
                }
                Phase::Mail { tx, .. } if !tx.rcpts.is_empty() => {
                    Step::StartData(Reply::start_data())
                }
                // RFC 5321 §3.3: DATA without an accepted RCPT → 503 (or 554)
                Phase::Mail { .. } => Step::Reply(Reply::bad_sequence("No valid recipients")),
                _ => Step::Reply(Reply::bad_sequence("Need MAIL and RCPT before DATA")),
            },
            // RFC 5321 §4.1.1.5: RSET aborts the transaction, keeps HELO.
            Command::Rset => {
                if let Phase::Mail { helo, .. } = &self.phase {
                    self.phase = Phase::Ready { helo: helo.clone() };
                }
                Step::Reply(Reply::ok("Ok"))
            }
            Command::Noop => Step::Reply(Reply::ok("Ok")),
            Command::Quit => Step::Close(Reply::bye(host)),
            // RFC 5321 §3.5.3: a relay cannot verify remote users.
            Command::Vrfy => Step::Reply(Reply::cannot_verify()),
            // RFC 5321 §3.5.2: a server may refuse to expand lists.
            Command::Expn => Step::Reply(Reply::not_implemented("EXPN")),
            Command::Help => Step::Reply(Reply::help()),
            Command::StartTls => self.starttls(),
            Command::Bdat { size, last } => self.bdat(size, last),
            Command::Auth { mechanism, initial } => self.auth(&mechanism, initial),
            Command::NotImplemented(verb) => Step::Reply(Reply::not_implemented(&verb)),
        }
    }

    fn bdat(&mut self, size: u64, last: bool) -> Step {
        let reply = match &mut self.phase {
            Phase::Mail { tx, .. } if !tx.rcpts.is_empty() => {
                tx.chunking = true;
                Reply::chunk_ok(size)
            }
            // RFC 3030 §2: BDAT without a transaction → 503, data discarded
            Phase::Mail { .. } => Reply::bad_sequence("No valid recipients"),
            _ => Reply::bad_sequence("Need MAIL and RCPT before BDAT"),
        };
        Step::Chunk(Chunk { size, last, reply })
    }

    fn starttls(&mut self) -> Step {
        if self.cfg.tls.is_none() {
            return Step::Reply(Reply::not_implemented("STARTTLS"));
        }
        if self.tls.is_some() {
            // RFC 3207 §4.2: STARTTLS is not offered again after TLS
            return Step::Reply(Reply::bad_sequence("TLS already active"));
        }
        if matches!(self.phase, Phase::Mail { .. }) {
            // the transaction would be forgotten by the reset of RFC 3207 §4.2
            return Step::Reply(Reply::bad_sequence(
                "STARTTLS not allowed during a mail transaction",
            ));
        }
        Step::StartTls(Reply::ready_for_tls())
    }

    fn auth(&mut self, mechanism: &str, initial: Option<String>) -> Step {
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

    /// EHLO keywords (RFC 5321 §4.1.1.1), one per extension we implement.
    fn ehlo_keywords(&self) -> Vec<String> {
        let mut k = vec![
            "PIPELINING".into(),                   // RFC 2920
            format!("SIZE {}", self.cfg.max_size), // RFC 1870
            "8BITMIME".into(),                     // RFC 6152
            "ENHANCEDSTATUSCODES".into(),          // RFC 2034
            "SMTPUTF8".into(),                     // RFC 6531
            "CHUNKING".into(),                     // RFC 3030 (BINARYMIME is not offered)
            "DSN".into(),                          // RFC 3461
        ];
        // RFC 3207 §4.2: not offered again once TLS is active
        if self.cfg.tls.is_some() && self.tls.is_none() {
            k.push("STARTTLS".into());
        }
        if self.auth_offered() {
            k.push("AUTH PLAIN LOGIN".into()); // RFC 4954 §3
        }
        k.push("HELP".into());
        k
    }

    fn mail(&mut self, from: ReversePath, params: MailParams) -> Step {
        let helo = match &self.phase {
            Phase::Connected => return Step::Reply(Reply::bad_sequence("Send HELO/EHLO first")),
            Phase::Mail { .. } => return Step::Reply(Reply::bad_sequence("Nested MAIL command")),
            Phase::Ready { helo } => helo.clone(),
        };
        // RFC 3207 §4: a server that requires TLS answers 530 until it is on
        if self.cfg.require_tls && self.tls.is_none() {
            return Step::Reply(Reply::must_starttls());
        }
        // RFC 5321 §4.1.1.11 / §2.2.1: parameters are for EHLO sessions only.
        if !helo.esmtp && params != MailParams::default() {
            return Step::Reply(Reply::unsupported_parameter("(parameters require EHLO)"));
        }
        // RFC 1870 §6.1: a declared size above the maximum → 552 at MAIL.
        if params.size.is_some_and(|s| s > self.cfg.max_size) {
            return Step::Reply(Reply::too_big(self.cfg.max_size));
        }
        self.phase = Phase::Mail {
            helo,
            tx: Transaction {
                from,
                params,
                rcpts: Vec::new(),
                chunking: false,
            },
        };
        Step::Reply(Reply::sender_ok())
    }

    fn rcpt(&mut self, target: RcptTarget, dsn: RcptDsn) -> Step {
        // an authenticated client may relay anywhere (RFC 4954 §1)
        let client_may_relay = self.cfg.is_relay_client(self.client) || self.auth.is_some();
        let Phase::Mail { tx, helo } = &mut self.phase else {
            return Step::Reply(Reply::bad_sequence("Need MAIL before RCPT"));
        };
        // RFC 5321 §4.1.1.11: parameters are for EHLO sessions only
        if !helo.esmtp && !dsn.is_empty() {
            return Step::Reply(Reply::unsupported_parameter("(parameters require EHLO)"));
        }
        if tx.chunking {
            return Step::Reply(Reply::bad_sequence("RCPT not allowed after BDAT"));
        }
        let path = match target {
            RcptTarget::Path(p) => p,
            // RFC 5321 §4.5.1 wants <Postmaster> accepted for local
            // delivery; this relay has no local mailboxes.
            RcptTarget::Postmaster => {
                return Step::Reply(Reply::no_such_user(
                    "This relay has no local mailboxes; use postmaster@domain",
                ))
            }
        };
        // RFC 6531 §3.4: UTF-8 addresses only in an SMTPUTF8 transaction.
        if path.to_string().bytes().any(|b| !b.is_ascii()) && !tx.params.smtputf8 {
            return Step::Reply(Reply::utf8_without_smtputf8());
        }
        // Relay control on the parsed final mailbox only: its domain is
        // whatever follows the last unquoted '@'; route hops, '%' and '!'
        // in the local part never make a domain a relay domain.
        let relay_domain = match path.mailbox().host() {
            Host::Name(d) => self.cfg.is_relay_domain(d),
            _ => false,
        };
        if !client_may_relay && !relay_domain {
            return Step::Reply(Reply::relay_denied());
        }
        if tx.rcpts.iter().any(|(p, _)| *p == path) {
            // the same forward-path twice is delivered once
            return Step::Reply(Reply::recipient_ok());
        }
        // RFC 5321 §4.5.3.1.10: 452 beyond our limit, the client sends the
        // rest in a later transaction.
        if tx.rcpts.len() >= self.cfg.max_recipients {
            return Step::Reply(Reply::too_many_recipients());
        }
        tx.rcpts.push((path, dsn));
        Step::Reply(Reply::recipient_ok())
    }

    /// The current transaction, while in `Phase::Mail`.
    pub fn transaction(&self) -> Option<(&Helo, &Transaction)> {
        match &self.phase {
            Phase::Mail { helo, tx } => Some((helo, tx)),
            _ => None,
        }
    }

    /// Ends the transaction after DATA, whatever its outcome (RFC 5321
    /// §4.1.1.4: the state is cleared after the end-of-data reply).
    pub fn end_transaction(&mut self) {
        if let Phase::Mail { helo, .. } = &self.phase {
            self.phase = Phase::Ready { helo: helo.clone() };
        }
    }

    /// Refusal of a received message, or `None` when it may be committed.
    pub fn data_verdict(&self, summary: &DataSummary) -> Option<Reply> {
        if summary.too_big {
            return Some(Reply::too_big(self.cfg.max_size));
        }
        if summary.bare_line_ending && self.cfg.bare_line_endings == BareLineEndings::Reject {
            return Some(Reply::bare_line_ending());
        }
        // RFC 5321 §6.3: count Received headers to detect loops.
        if summary.received_headers >= self.cfg.max_hops {
            return Some(Reply::too_many_hops(summary.received_headers + 1));
        }
        None
    }

    /// RFC 5321 §4.4 trace header for a message about to be received.
    pub fn received_header(&self, id: QueueId, now: u64) -> String {
        let Some((helo, tx)) = self.transaction() else {
            return String::new();
        };
        let literal = match self.client {
            IpAddr::V4(a) => format!("[{a}]"),
            IpAddr::V6(a) => format!("[IPv6:{a}]"),
        };
        let from = match helo_domain(&helo.name) {
            Some(d) => format!("{d} ({literal})"),
            None if helo.name.starts_with('[') => {
                format!("{} ({literal})", crate::spool::envelope::clean(&helo.name))
            }
            None => format!("unknown ({literal})"),
        };
        // RFC 3848 / RFC 6531 §4.3 protocol names: "S" for TLS, "A" for AUTH
        let base = match (helo.esmtp, tx.params.smtputf8) {
            (false, _) => "SMTP",
            (true, false) => "ESMTP",
            (true, true) => "UTF8SMTP",
        };
        let a = if self.auth.is_some() { "A" } else { "" };
        let (s, tls_note) = match &self.tls {
            Some(t) => (
                "S",
                format!("\r\n\t(using {} with cipher {})", t.version, t.cipher),
            ),
            None => ("", String::new()),
        };
        let with = format!("{base}{s}{a}");
        // RFC 5321 §7.6: name the recipient only when there is one.
        let for_clause = match tx.rcpts.as_slice() {
            [(one, _)] => format!("\r\n\tfor {one}"),
            _ => String::new(),
        };
        format!(
            "Received: from {from}{tls_note}\r\n\tby {} (smtp-relay) with {with} id {id}{for_clause};\r\n\t{}\r\n",
            self.cfg.hostname,
            rfc5322_date(now)
        )
    }

    /// The envelope of the current transaction, for commit.
    pub fn envelope(&self, id: QueueId, size: u64, now: u64) -> Option<Envelope> {
        let (helo, tx) = self.transaction()?;
        Some(Envelope {
            id,
            arrived: now,
            client: self.client.to_string(),
            helo: helo.name.clone(),
            from: tx.from.clone(),
            size,
            body: tx.params.body,
            smtputf8: tx.params.smtputf8,
            attempts: 0,
            next_try: now,
            hold: None,
            dsn: tx.params.dsn.clone(),
            rcpts: tx
                .rcpts
                .iter()
                .map(|(p, dsn)| Recipient {
                    path: p.clone(),
                    state: RcptState::Pending,
                    last_reply: None,
                    dsn: dsn.clone(),
                    tries: Default::default(),
                })
                .collect(),
            delay_warned: None,
        })
    }
}

/// What a session worker needs besides the socket.
pub struct Context {
    pub config: Arc<Config>,
    pub spool: Arc<Spool>,
    /// Told of each committed message (the scheduler); a full or missing
    /// channel only delays delivery until the next spool scan.
    pub committed: Option<Sender<QueueId>>,
    pub space: SpaceCheck,
    /// Password checks: a few at a time, in reused memory.
    pub verifier: auth::Verifier,
    /// AUTH failures across sessions, per address and per user name.
    pub auth_failures: crate::auth_limit::FailureLimiter,
    /// STARTTLS: built by `app.rs` from `config.tls`'s files.
    pub tls: Option<Arc<rustls::ServerConfig>>,
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

/// Swallows writes after the first error, so DATA is still read to its end
/// (keeping the dialogue in step) when the disk fails mid-message.
struct SpoolSink<W: Write> {
    inner: W,
    error: Option<io::Error>,
}

impl<W: Write> Write for SpoolSink<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.error.is_none() {
            if let Err(e) = self.inner.write_all(buf) {
                self.error = Some(e);
            }
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        if self.error.is_none() {
            if let Err(e) = self.inner.flush() {
                self.error = Some(e);
            }
        }
        Ok(())
    }
}

fn is_timeout(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

/// Sends one reply through the session's single writer, logging it.
fn send(out: &mut impl Write, peer: &SocketAddr, reply: &Reply) -> io::Result<()> {
    log::debug!("{peer} > {reply}");
    reply.write_to(out)
}

/// Runs one SMTP session on an accepted connection until QUIT, EOF,
/// timeout or error.
pub fn run(stream: TcpStream, peer: SocketAddr, ctx: &Context) {
    if let Err(e) = run_inner(stream, peer, ctx) {
        log::debug!("{peer} session ended: {e}");
    }
}

fn run_inner(stream: TcpStream, peer: SocketAddr, ctx: &Context) -> io::Result<()> {
    let cfg = &*ctx.config;
    stream.set_write_timeout(Some(cfg.timeout))?;
    stream.set_nodelay(true)?;
    let mut io = Channel::new(stream, cfg.timeout, 32 * 1024, 8 * 1024);
    let mut session = Session::new(cfg, peer.ip());
    log::debug!("{peer} connected");
    send(&mut io, &peer, &session.greeting())?;
    io.flush()?;
    let mut line = Vec::with_capacity(MAX_COMMAND_LINE);
    // a message arriving in BDAT chunks, between its first and LAST chunk
    let mut chunked: Option<Chunked> = None;
    loop {
        // a partial BDAT message whose transaction ended (RSET, EHLO, a
        // refusal) is dropped, and with it its tmp file
        if chunked.is_some() && !session.transaction().is_some_and(|(_, tx)| tx.chunking) {
            chunked = None;
        }
        // a whole command line must arrive within the idle timeout, not
        // merely each of its bytes
        io.set_deadline(Some(Instant::now() + cfg.timeout));
        let read = data::read_line(&mut io, &mut line, MAX_COMMAND_LINE);
        let parsed = match read {
            Ok(Line::Complete) => {
                log::trace!("{peer} < {}", String::from_utf8_lossy(&line));
                crate::fault::hit(crate::fault::Point::Session);
                let parsed = command::parse(&line);
                // RFC 3030 §2: an unreadable chunk size leaves the octets
                // that follow unknown; reading them as commands would let
                // message data be executed, so the session ends
                if parsed.is_err() && line.len() >= 4 && line[..4].eq_ignore_ascii_case(b"BDAT") {
                    if let Err(r) = parsed {
                        send(&mut io, &peer, &r)?;
                    }
                    send(&mut io, &peer, &Reply::bdat_lost(&cfg.hostname))?;
                    io.flush()?;
                    return Ok(());
                }
                parsed
            }
            Ok(Line::TooLong) => Err(Reply::line_too_long()),
            Ok(Line::Eof) => {
                log::debug!("{peer} disconnected");
                return Ok(());
            }
            Err(e) if is_timeout(&e) => {
                log::info!("{peer} timeout after {:?} of silence", cfg.timeout);
                let _ = send(&mut io, &peer, &Reply::timeout(&cfg.hostname));
                let _ = io.flush();
                return Ok(());
            }
            Err(e) => return Err(e),
        };
        // RFC 5321 §4.5.3.1.10 / Postfix: refuse new mail while the spool
        // is short of space, before the client sends anything big
        if matches!(parsed, Ok(Command::Mail { .. }))
            && session.transaction().is_none()
            && !matches!(session.phase(), Phase::Connected)
            && ctx.space.short_of_space(&ctx.spool, cfg.min_free_space)
        {
            send(&mut io, &peer, &Reply::insufficient_storage())?;
            if io.buffer().is_empty() {
                io.flush()?;
            }
            continue;
        }
        match session.step(parsed) {
            Step::Reply(r) => {
                send(&mut io, &peer, &r)?;
                // RFC 2920 §3.1: answer a pipelined group in order, and
                // flush once no more commands are waiting.
                if io.buffer().is_empty() {
                    io.flush()?;
                }
            }
            Step::Close(r) => {
                send(&mut io, &peer, &r)?;
                io.flush()?;
                return Ok(());
            }
            Step::StartData(r) => {
                let reply = receive_message(&mut session, r, &mut io, &peer, ctx)?;
                send(&mut io, &peer, &reply)?;
                if io.buffer().is_empty() {
                    io.flush()?;
                }
                session.end_transaction();
            }
            Step::StartTls(r) => {
                let Some(tls) = ctx.tls.clone() else {
                    return Err(io::Error::other("STARTTLS without a TLS config"));
                };
                // RFC 3207 §5 / CVE-2011-0411: anything the client sent after
                // STARTTLS in plaintext is not executed after the handshake
                let discarded = io.discard_buffered();
                if discarded > 0 {
                    log::warn!(
                        "{peer} discarded {discarded} octets pipelined after STARTTLS (plaintext injection)"
                    );
                }
                send(&mut io, &peer, &r)?;
                io.flush()?;
                let conn = rustls::ServerConnection::new(tls).map_err(io::Error::other)?;
                if let Err(e) = io.start_tls(conn.into(), cfg.timeout) {
                    log::info!("{peer} TLS handshake failed: {e}");
                    return Ok(());
                }
                let Some(info) = io.tls_info() else {
                    return Err(io::Error::other("TLS session without version or cipher"));
                };
                log::info!(
                    "{peer} starttls version={} cipher={}",
                    info.version,
                    info.cipher
                );
                session.tls_started(info);
            }
            Step::Chunk(c) => {
                let reply = if c.reply.code().is_positive() {
                    receive_chunk(&mut session, &mut chunked, c, &mut io, &peer, ctx)?
                } else {
                    io.set_deadline(Some(Instant::now() + cfg.data_timeout));
                    data::skip_exact(&mut io, c.size)?;
                    c.reply
                };
                send(&mut io, &peer, &reply)?;
                if io.buffer().is_empty() {
                    io.flush()?;
                }
            }
            Step::Auth(start) => {
                let step = match authenticate(&mut session, start, &mut io, &peer, ctx) {
                    Ok(step) => step,
                    Err(e) if is_timeout(&e) => {
                        log::info!("{peer} timeout during AUTH");
                        Step::Close(Reply::timeout(&cfg.hostname))
                    }
                    Err(e) => return Err(e),
                };
                send(&mut io, &peer, step.reply())?;
                if matches!(step, Step::Close(_)) {
                    io.flush()?;
                    return Ok(());
                }
                if io.buffer().is_empty() {
                    io.flush()?;
                }
            }
        }
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
fn challenge(
    io: &mut Channel,
    peer: &SocketAddr,
    cfg: &Config,
    reply: &Reply,
) -> Exchange<Vec<u8>> {
    send(io, peer, reply)?;
    io.flush()?;
    io.set_deadline(Some(Instant::now() + cfg.timeout));
    let mut line = Vec::new();
    match data::read_line(io, &mut line, MAX_AUTH_LINE)? {
        Line::Complete => Ok(decode_response(&line, false)),
        Line::TooLong => Ok(Err(Reply::line_too_long())),
        Line::Eof => Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "client left during AUTH",
        )),
    }
}

/// The user name and password, by the mechanism's exchange.
fn credentials(
    start: &AuthStart,
    io: &mut Channel,
    peer: &SocketAddr,
    cfg: &Config,
) -> Exchange<(String, String)> {
    let first = match &start.initial {
        Some(i) => decode_response(i.as_bytes(), true),
        None => challenge(io, peer, cfg, &start.challenge)?,
    };
    let first = match first {
        Ok(f) => f,
        Err(r) => return Ok(Err(r)),
    };
    match start.mechanism {
        Mechanism::Plain => Ok(auth::parse_plain(&first).ok_or_else(Reply::auth_bad_response)),
        Mechanism::Login => {
            let ask = Reply::auth_challenge(&auth::encode_base64(b"Password:"));
            let pass = match challenge(io, peer, cfg, &ask)? {
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
fn authenticate(
    session: &mut Session,
    start: AuthStart,
    io: &mut Channel,
    peer: &SocketAddr,
    ctx: &Context,
) -> io::Result<Step> {
    let cfg = &*ctx.config;
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
    let (user, pass) = match credentials(&start, io, peer, cfg)? {
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
        Ok(false) => {
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
            Ok(step)
        }
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

const AUTH_FAILURE_PAUSE: Duration = Duration::from_millis(500);

/// DATA: open the spool file, send 354, stream the body in, decide, and
/// commit. Returns the final reply; an `Err` ends the session (the client
/// vanished mid-message, and the uncommitted files are already gone).
fn receive_message(
    session: &mut Session,
    go_ahead: Reply,
    io: &mut Channel,
    peer: &SocketAddr,
    ctx: &Context,
) -> io::Result<Reply> {
    let cfg = &*ctx.config;
    if ctx.space.short_of_space(&ctx.spool, cfg.min_free_space) {
        return Ok(Reply::insufficient_storage());
    }
    // Open the spool file before the 354, so a spool that cannot take the
    // message is said before the client sends it.
    let mut incoming = match ctx.spool.incoming() {
        Ok(i) => i,
        Err(e) => {
            log::error!("{peer} cannot open spool file: {e}");
            return Ok(if e.is_out_of_space() {
                Reply::insufficient_storage()
            } else {
                Reply::local_error()
            });
        }
    };
    let id = incoming.id();
    let now = now_unix();
    send(io, peer, &go_ahead)?;
    io.flush()?;

    let header = session.received_header(id, now);
    let mut sink = SpoolSink {
        inner: &mut incoming,
        error: None,
    };
    let _ = sink.write_all(header.as_bytes());
    io.set_deadline(Some(Instant::now() + cfg.data_timeout));
    let summary = match DotReader::new(cfg.max_size).read(io, &mut sink) {
        Ok(s) => s,
        Err(e) => {
            if is_timeout(&e) {
                log::info!("{id} client={peer} timeout during DATA, nothing queued");
                let _ = send(io, peer, &Reply::timeout(&cfg.hostname));
                let _ = io.flush();
            } else {
                log::info!("{id} client={peer} lost during DATA ({e}), nothing queued");
            }
            return Err(e);
        }
    };
    let _ = sink.flush();
    let write_error = sink.error.take();
    Ok(finish_message(
        session,
        incoming,
        write_error,
        &summary,
        now,
        peer,
        ctx,
    ))
}

/// The end of a message, DATA or BDAT LAST: the verdict, then the commit;
/// only a commit that returned makes the 250.
fn finish_message(
    session: &Session,
    incoming: Incoming,
    write_error: Option<io::Error>,
    summary: &DataSummary,
    now: u64,
    peer: &SocketAddr,
    ctx: &Context,
) -> Reply {
    let id = incoming.id();
    if let Some(e) = write_error {
        log::error!("{id} spool write failed: {e}");
        return if crate::spool::fsutil::is_out_of_space(&e) {
            Reply::insufficient_storage()
        } else {
            Reply::local_error()
        };
    }
    if let Some(reply) = session.data_verdict(summary) {
        log::info!("{id} rejected client={peer} reply=\"{reply}\"");
        return reply;
    }
    let Some(env) = session.envelope(id, incoming.written(), now) else {
        return Reply::local_error();
    };
    match incoming.commit(&env) {
        Ok(id) => {
            let tls = session
                .tls()
                .map(|t| t.to_string())
                .unwrap_or_else(|| "none".into());
            log::info!(
                "{id} queued from={} size={} nrcpt={} client=[{}] helo={} tls={tls}",
                crate::smtp::Escaped(&env.from.to_string()),
                env.size,
                env.rcpts.len(),
                env.client,
                crate::smtp::Escaped(&crate::spool::envelope::clean(&env.helo)),
            );
            if let Some(tx) = &ctx.committed {
                let _ = tx.try_send(id);
            }
            Reply::queued(&id)
        }
        Err(e) => {
            log::error!("{id} commit failed, not accepted: {e}");
            if e.is_out_of_space() {
                Reply::insufficient_storage()
            } else {
                Reply::local_error()
            }
        }
    }
}

/// A message arriving in BDAT chunks (RFC 3030): its spool file and the
/// reader that counts it, from the first chunk to the LAST one. Dropping
/// it removes the uncommitted files.
struct Chunked<'a> {
    incoming: Incoming<'a>,
    reader: ChunkReader,
    write_error: Option<io::Error>,
    now: u64,
}

/// One accepted BDAT chunk: into the spool file (opened at the first
/// chunk, our Received header first), then 250 for a middle chunk, or the
/// verdict and commit for the LAST. The limits are DATA's: too big is
/// 552 at the end of the chunk that crosses the limit, nothing stored,
/// the transaction over; the hop count is checked at the end.
fn receive_chunk<'a>(
    session: &mut Session,
    chunked: &mut Option<Chunked<'a>>,
    chunk: Chunk,
    io: &mut Channel,
    peer: &SocketAddr,
    ctx: &'a Context,
) -> io::Result<Reply> {
    let cfg = &*ctx.config;
    let refuse = |session: &mut Session, io: &mut Channel, reply: Reply| -> io::Result<Reply> {
        io.set_deadline(Some(Instant::now() + cfg.data_timeout));
        data::skip_exact(io, chunk.size)?;
        session.end_transaction();
        Ok(reply)
    };
    if chunked.is_none() {
        if ctx.space.short_of_space(&ctx.spool, cfg.min_free_space) {
            return refuse(session, io, Reply::insufficient_storage());
        }
        let mut incoming = match ctx.spool.incoming() {
            Ok(i) => i,
            Err(e) => {
                log::error!("{peer} cannot open spool file: {e}");
                let r = if e.is_out_of_space() {
                    Reply::insufficient_storage()
                } else {
                    Reply::local_error()
                };
                return refuse(session, io, r);
            }
        };
        let now = now_unix();
        let header = session.received_header(incoming.id(), now);
        let write_error = incoming.write_all(header.as_bytes()).err();
        *chunked = Some(Chunked {
            incoming,
            reader: ChunkReader::new(cfg.max_size),
            write_error,
            now,
        });
    }
    let Some(st) = chunked.as_mut() else {
        return Ok(Reply::local_error());
    };
    let id = st.incoming.id();
    io.set_deadline(Some(Instant::now() + cfg.data_timeout));
    let mut sink = SpoolSink {
        inner: &mut st.incoming,
        error: st.write_error.take(),
    };
    let read = st.reader.read_chunk(io, chunk.size, &mut sink);
    st.write_error = sink.error.take();
    if let Err(e) = read {
        if is_timeout(&e) {
            log::info!("{id} client={peer} timeout during BDAT, nothing queued");
            let _ = send(io, peer, &Reply::timeout(&cfg.hostname));
            let _ = io.flush();
        } else {
            log::info!("{id} client={peer} lost during BDAT ({e}), nothing queued");
        }
        *chunked = None;
        return Err(e);
    }
    if st.reader.summary().too_big {
        // RFC 1870 §6 / RFC 3030 §4: refuse now; later chunks of this
        // message find no transaction (503) and are thrown away
        log::info!("{id} rejected client={peer}: too big (BDAT)");
        *chunked = None;
        session.end_transaction();
        return Ok(Reply::too_big(cfg.max_size));
    }
    if !chunk.last {
        return Ok(chunk.reply);
    }
    let Some(mut st) = chunked.take() else {
        return Ok(Reply::local_error());
    };
    if st.write_error.is_none() {
        st.write_error = st.incoming.flush().err();
    }
    let summary = st.reader.summary().clone();
    let reply = finish_message(
        session,
        st.incoming,
        st.write_error,
        &summary,
        st.now,
        peer,
        ctx,
    );
    session.end_transaction();
    Ok(reply)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> Config {
        let mut c = Config::new();
        c.hostname = "relay.test".into();
        c.max_size = 1000;
        c.max_recipients = 2;
        c.relay_domains = vec![crate::smtp::Domain::parse("open.example", false).unwrap()];
        c
    }

    fn code(s: &mut Session, line: &str) -> u16 {
        s.step(command::parse(line.as_bytes()))
            .reply()
            .code()
            .value()
    }

    #[test]
    fn order_of_commands() {
        let c = cfg();
        let mut s = Session::new(&c, "127.0.0.1".parse().unwrap());
        assert_eq!(code(&mut s, "MAIL FROM:<a@b.example>"), 503);
        assert_eq!(code(&mut s, "RCPT TO:<a@b.example>"), 503);
        assert_eq!(code(&mut s, "DATA"), 503);
        assert_eq!(code(&mut s, "EHLO c.example"), 250);
        assert_eq!(code(&mut s, "RCPT TO:<a@b.example>"), 503);
        assert_eq!(code(&mut s, "MAIL FROM:<a@b.example>"), 250);
        assert_eq!(code(&mut s, "MAIL FROM:<a@b.example>"), 503);
        assert_eq!(code(&mut s, "DATA"), 503);
        assert_eq!(code(&mut s, "RCPT TO:<x@y.example>"), 250);
        assert_eq!(code(&mut s, "RCPT TO:<x2@y.example>"), 250);
        assert_eq!(
            code(&mut s, "RCPT TO:<x@y.example>"),
            250,
            "duplicate kept once"
        );
        assert_eq!(code(&mut s, "RCPT TO:<x3@y.example>"), 452);
        assert_eq!(s.transaction().unwrap().1.rcpts.len(), 2);
        assert!(matches!(s.step(Ok(Command::Data)), Step::StartData(_)));
        assert_eq!(code(&mut s, "RSET"), 250);
        assert!(s.transaction().is_none());
        assert_eq!(code(&mut s, "MAIL FROM:<> SIZE=1001"), 552);
        assert_eq!(code(&mut s, "MAIL FROM:<> SIZE=1000"), 250);
        assert!(matches!(s.step(Ok(Command::Quit)), Step::Close(_)));
    }

    #[test]
    fn helo_sessions_take_no_parameters() {
        let c = cfg();
        let mut s = Session::new(&c, "127.0.0.1".parse().unwrap());
        assert_eq!(code(&mut s, "HELO c.example"), 250);
        assert_eq!(code(&mut s, "MAIL FROM:<a@b.example> SIZE=10"), 555);
        assert_eq!(code(&mut s, "MAIL FROM:<a@b.example>"), 250);
    }

    #[test]
    fn relay_control() {
        let c = cfg();
        let outside: IpAddr = "192.0.2.9".parse().unwrap();
        let mapped: IpAddr = "::ffff:192.0.2.9".parse().unwrap();
        for ip in [outside, mapped] {
            let mut s = Session::new(&c, ip);
            code(&mut s, "EHLO x");
            code(&mut s, "MAIL FROM:<a@b.example>");
            for rcpt in [
                "<u@elsewhere.example>",
                "<u%elsewhere.example@open.example.evil>",
                "<\"u@elsewhere.example\"@other.example>",
                "<@open.example:u@elsewhere.example>",
                "<elsewhere.example!u@other.example>",
                "<u@sub.open.example>",
            ] {
                assert_eq!(
                    code(&mut s, &format!("RCPT TO:{rcpt}")),
                    550,
                    "{rcpt} from {ip}"
                );
            }
            assert_eq!(code(&mut s, "RCPT TO:<u@OPEN.example>"), 250);
            assert_eq!(
                code(&mut s, "RCPT TO:<u%elsewhere.example@open.example>"),
                250
            );
        }
        let mut s = Session::new(&c, "127.0.0.5".parse().unwrap());
        code(&mut s, "EHLO x");
        code(&mut s, "MAIL FROM:<a@b.example>");
        assert_eq!(code(&mut s, "RCPT TO:<u@anywhere.example>"), 250);
    }

    #[test]
    fn auth_is_offered_after_tls_or_on_loopback() {
        let mut c = cfg();
        let ehlo = |s: &mut Session| match s.step(command::parse(b"EHLO x")) {
            Step::Reply(r) => r.lines().join("\n"),
            other => panic!("{other:?}"),
        };
        let remote: IpAddr = "192.0.2.9".parse().unwrap();
        // not configured: not offered, 502
        let mut s = Session::new(&c, "127.0.0.1".parse().unwrap());
        assert!(!ehlo(&mut s).contains("AUTH"));
        assert_eq!(code(&mut s, "AUTH PLAIN"), 502);
        c.auth_file = Some("/nonexistent".into());
        let mut s = Session::new(&c, "127.0.0.1".parse().unwrap());
        assert_eq!(code(&mut s, "AUTH PLAIN"), 503, "before EHLO");
        assert!(ehlo(&mut s).contains("AUTH PLAIN LOGIN"));
        assert_eq!(code(&mut s, "AUTH CRAM-MD5"), 504);
        assert!(matches!(
            s.step(command::parse(b"AUTH LOGIN")),
            Step::Auth(AuthStart {
                mechanism: Mechanism::Login,
                ..
            })
        ));
        code(&mut s, "MAIL FROM:<a@b.example>");
        assert_eq!(code(&mut s, "AUTH PLAIN"), 503, "in a transaction");
        // a remote client in plaintext: not offered, 538 (RFC 4954 §4)
        let mut s = Session::new(&c, remote);
        assert!(!ehlo(&mut s).contains("AUTH"));
        assert_eq!(code(&mut s, "AUTH PLAIN"), 538);
        assert_eq!(code(&mut s, "MAIL FROM:<a@b.example>"), 250);
        assert_eq!(code(&mut s, "RCPT TO:<u@elsewhere.example>"), 550);
        // after TLS: offered; once authenticated, relaying is allowed
        s.tls_started(TlsInfo {
            version: "TLSv1.3".into(),
            cipher: "TLS13_AES_128_GCM_SHA256".into(),
        });
        assert!(ehlo(&mut s).contains("AUTH PLAIN LOGIN"));
        assert!(matches!(
            s.step(command::parse(b"AUTH PLAIN")),
            Step::Auth(_)
        ));
        assert_eq!(s.authenticated("alice".into()).reply().code().value(), 235);
        assert_eq!(code(&mut s, "AUTH PLAIN"), 503, "already authenticated");
        code(&mut s, "MAIL FROM:<a@b.example>");
        assert_eq!(code(&mut s, "RCPT TO:<u@elsewhere.example>"), 250);
        let h = s.received_header(QueueId::generate(), 0);
        assert!(h.contains("with ESMTPSA id"), "{h}");
        let (step, n) = s.auth_failed();
        assert_eq!((step.reply().code().value(), n), (535, 1));
    }

    #[test]
    fn too_many_errors_closes() {
        let c = cfg();
        let mut s = Session::new(&c, "127.0.0.1".parse().unwrap());
        for _ in 0..c.max_errors {
            assert_eq!(code(&mut s, "BOGUS"), 500);
        }
        assert!(
            matches!(s.step(command::parse(b"BOGUS")), Step::Close(r) if r.code().value() == 421)
        );
    }

    #[test]
    fn verdicts() {
        let c = cfg();
        let s = Session::new(&c, "127.0.0.1".parse().unwrap());
        let ok = DataSummary::default();
        assert_eq!(s.data_verdict(&ok), None);
        let big = DataSummary {
            too_big: true,
            ..ok.clone()
        };
        assert_eq!(s.data_verdict(&big).unwrap().code().value(), 552);
        let bare = DataSummary {
            bare_line_ending: true,
            ..ok.clone()
        };
        assert_eq!(s.data_verdict(&bare).unwrap().code().value(), 550);
        let looped = DataSummary {
            received_headers: 100,
            ..ok
        };
        assert_eq!(s.data_verdict(&looped).unwrap().code().value(), 554);
    }

    #[test]
    fn received_header_names_one_recipient() {
        let c = cfg();
        let mut s = Session::new(&c, "127.0.0.1".parse().unwrap());
        code(&mut s, "EHLO client.example");
        code(&mut s, "MAIL FROM:<a@b.example>");
        code(&mut s, "RCPT TO:<x@y.example>");
        let h = s.received_header(QueueId::parse("0006464A1B2C3D4E").unwrap(), 1_795_886_410);
        assert_eq!(
            h,
            "Received: from client.example ([127.0.0.1])\r\n\tby relay.test (smtp-relay) with ESMTP id 0006464A1B2C3D4E\r\n\tfor <x@y.example>;\r\n\tSat, 28 Nov 2026 17:20:10 +0000\r\n"
        );
        code(&mut s, "RCPT TO:<z@y.example>");
        assert!(!s.received_header(QueueId::generate(), 0).contains(" for "));
    }
}
