//! Message intake: DATA (RFC 5321 §4.1.1.4) and BDAT (RFC 3030) into a
//! spool file with our Received header first, the envelope of the
//! transaction, and the checks at the end of the data (size, bare line
//! endings, hop count) before the commit. Only a commit that returned
//! makes the 250: that reply is the promise that the message survives a
//! crash.

use std::io::{self, Write};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use super::conn::{is_timeout, Conn, Context};
use super::fixup::{Fixing, Fixups};
use super::milters::EndOfMessage;
use super::{Chunk, Session};
use crate::config::BareLineEndings;
use crate::smtp::command::helo_domain;
use crate::smtp::data::{self, ChunkReader, DataSummary, DotReader};
use crate::smtp::Reply;
use crate::spool::{Envelope, Incoming, QueueId, RcptState, Recipient};
use crate::time::{now_unix, rfc5322_date};

impl Session<'_> {
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

    /// Our header lines above the client's message: the policy service's
    /// PREPENDs, then our Received header. Their length is noted: the
    /// authentication checks read the client's message after them.
    fn our_headers(&mut self, id: QueueId, now: u64) -> String {
        let header = super::inbound::prepended(self) + &self.received_header(id, now);
        self.authres.ours = header.len();
        header
    }

    /// RFC 6409 §8 fix-ups for a message about to be received: on
    /// submission listeners unless `--submission-fixups no`. The
    /// Message-ID names the queue id and our host (RFC 5322 §3.6.4).
    /// With `--sender-check-from`, the header pass also runs to collect
    /// `From:` for [`Session::author_verdict`].
    pub(super) fn fixups(&self, id: QueueId, now: u64) -> Option<Fixups> {
        let add = (self.mode.submission && self.cfg.submission_fixups).then(|| {
            (
                rfc5322_date(now),
                format!("<{now}.{id}@{}>", self.cfg.hostname),
            )
        });
        (add.is_some() || self.checks_from()).then(|| Fixups::watch(add))
    }

    /// `--sender-check-from` applies: an authenticated user where the
    /// sender is checked.
    fn checks_from(&self) -> bool {
        self.cfg.sender_check_from && self.auth.is_some() && self.checks_senders()
    }

    /// `--sender-check-from`: every `From:` address must be the user's
    /// (RFC 6409 §6.1 lets the MSA check, RFC 5322 §3.6.2 names the
    /// author there). A message without `From:` is let through (it
    /// claims no one); one whose header section was too long to read is
    /// refused, as is an address that does not parse.
    pub(super) fn author_verdict(&self, fixups: Option<&Fixups>) -> Option<Reply> {
        if !self.checks_from() {
            return None;
        }
        let user = self.auth.as_deref()?;
        let refuse = || Some(Reply::from_not_owned(user));
        let Some(values) = fixups.and_then(Fixups::author_fields) else {
            return refuse();
        };
        for value in values {
            for addr in crate::admin::header_addresses(value) {
                match crate::smtp::Mailbox::parse(&addr, true) {
                    Ok(m) if self.owns_mailbox(user, &m) => {}
                    _ => return refuse(),
                }
            }
        }
        None
    }

    /// The envelope of the current transaction, for commit.
    pub fn envelope(&self, id: QueueId, size: u64, now: u64) -> Option<Envelope> {
        let (helo, tx) = self.transaction()?;
        Some(Envelope {
            id,
            arrived: now,
            client: self.client.to_string(),
            helo: helo.name.clone(),
            auth: self.auth.clone(),
            from: tx.from.clone(),
            size,
            body: tx.params.body,
            smtputf8: tx.params.smtputf8,
            requiretls: tx.params.requiretls,
            attempts: 0,
            next_try: now,
            integrity: None,
            hold: self.held().then_some(crate::spool::envelope::Hold::Forever),
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
            hold_reason: None,
            delay_warned: None,
        })
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

/// Opens the spool file for a new message, or says why the spool cannot
/// take one (short of space, or the open failed).
fn open_spool_file<'a>(ctx: &'a Context, peer: &SocketAddr) -> Result<Incoming<'a>, Reply> {
    if ctx
        .space
        .short_of_space(&ctx.spool, ctx.config.min_free_space)
    {
        return Err(Reply::insufficient_storage());
    }
    ctx.spool.incoming().map_err(|e| {
        log::error!("{peer} cannot open spool file: {e}");
        if e.is_out_of_space() {
            Reply::insufficient_storage()
        } else {
            Reply::local_error()
        }
    })
}

/// The client timed out or left in the middle of a message: said (a
/// timeout is answered 421), and nothing is queued.
fn lost_mid_message(conn: &mut Conn, id: QueueId, verb: &str, e: &io::Error, hostname: &str) {
    let peer = conn.peer;
    if is_timeout(e) {
        log::info!("{id} client={peer} timeout during {verb}, nothing queued");
        conn.farewell(&Reply::timeout(hostname));
    } else {
        log::info!("{id} client={peer} lost during {verb} ({e}), nothing queued");
    }
}

/// DATA: open the spool file, send 354, stream the body in, decide, and
/// commit. Returns the final reply; an `Err` ends the session (the client
/// vanished mid-message, and the uncommitted files are already gone).
pub(super) fn receive_message(
    session: &mut Session,
    go_ahead: Reply,
    conn: &mut Conn,
    ctx: &Context,
) -> io::Result<Finished> {
    let cfg = &*ctx.config;
    let peer = &conn.peer.clone();
    // Open the spool file before the 354, so a spool that cannot take the
    // message is said before the client sends it.
    let mut incoming = match open_spool_file(ctx, peer) {
        Ok(i) => i,
        Err(r) => return Ok(r.into()),
    };
    let id = incoming.id();
    let now = now_unix();
    if let Some(r) = super::milters::at_data(session, id) {
        return Ok(r.into());
    }
    conn.reply_now(&go_ahead)?;

    let header = session.our_headers(id, now);
    let mut sink = SpoolSink {
        inner: &mut incoming,
        error: None,
    };
    let _ = sink.write_all(header.as_bytes());
    conn.io
        .set_deadline(Some(Instant::now() + cfg.data_timeout));
    let reader = DotReader::new(cfg.max_size);
    let mut fixups = session.fixups(id, now);
    let read = match fixups.as_mut() {
        Some(fixups) => {
            let read = reader.read(
                &mut conn.io,
                &mut Fixing {
                    fixups,
                    out: &mut sink,
                },
            );
            // the SpoolSink keeps a write error for the verdict
            let _ = fixups.finish(&mut sink);
            read
        }
        None => reader.read(&mut conn.io, &mut sink),
    };
    let summary = match read {
        Ok(s) => s,
        Err(e) => {
            lost_mid_message(conn, id, "DATA", &e, &cfg.hostname);
            return Err(e);
        }
    };
    let _ = sink.flush();
    let write_error = sink.error.take();
    let verdict = session
        .data_verdict(&summary)
        .or_else(|| session.author_verdict(fixups.as_ref()));
    Ok(finish_message(
        session,
        incoming,
        write_error,
        verdict,
        now,
        peer,
        ctx,
    ))
}

/// The end of a message, DATA or BDAT LAST: the verdict (the data's
/// limits, then `From:`), the policy service, the authentication checks
/// (`--auth-results`: they may refuse, hold, and rewrite the tmp file
/// with their header), then the commit; only a commit that returned
/// makes the 250.
fn finish_message(
    session: &mut Session,
    mut incoming: Incoming,
    write_error: Option<io::Error>,
    verdict: Option<Reply>,
    now: u64,
    peer: &SocketAddr,
    ctx: &Context,
) -> Finished {
    let id = incoming.id();
    if let Some(e) = write_error {
        log::error!("{id} spool write failed: {e}");
        return Finished::from(if crate::spool::fsutil::is_out_of_space(&e) {
            Reply::insufficient_storage()
        } else {
            Reply::local_error()
        });
    }
    if let Some(reply) = verdict {
        // the reply writer logs the refusal at INFO, once
        log::debug!("{id} rejected client={peer} reply=\"{reply}\"");
        return reply.into();
    }
    if let Some(reply) = super::inbound::end_of_data(session, id, incoming.written(), ctx) {
        return reply.into();
    }
    // RFC 8601: the results of the message as received, then the
    // milters (which see our Authentication-Results), then DKIM signing
    if let Some(reply) = super::authres::end_of_data(session, &mut incoming, ctx) {
        return reply.into();
    }
    let changes = match super::milters::end_of_message(session, &mut incoming) {
        EndOfMessage::Commit(changes) => changes,
        EndOfMessage::Refuse(reply) => return reply.into(),
        EndOfMessage::Discard => return discarded(id, peer).into(),
    };
    if let Err(e) = dkim_sign(session, &mut incoming, ctx) {
        log::error!("{id} spool write failed (DKIM signature): {e}");
        return Finished::from(if crate::spool::fsutil::is_out_of_space(&e) {
            Reply::insufficient_storage()
        } else {
            Reply::local_error()
        });
    }
    let Some(mut env) = session.envelope(id, incoming.written(), now) else {
        return Reply::local_error().into();
    };
    super::inbound::adjust_envelope(session, &mut env);
    if let Some(c) = &changes {
        if !super::milters::adjust_envelope(c, &mut env) {
            return discarded(id, peer).into();
        }
    }
    match incoming.commit(&env) {
        Ok(id) => {
            let tls = session
                .tls()
                .map(|t| t.to_string())
                .unwrap_or_else(|| "none".into());
            // the AUTH user (RFC 4954), when there is one
            let auth = env
                .auth
                .as_deref()
                .map(|a| format!(" auth={}", crate::smtp::Escaped(a)))
                .unwrap_or_default();
            // logged and counted before the 250: whoever reads the log
            // or the metrics once the client has its 250 finds them
            log::info!(
                "{id} queued from={} size={} nrcpt={} client=[{}] helo={} tls={tls}{auth}",
                crate::smtp::Escaped(&env.from.to_string()),
                env.size,
                env.rcpts.len(),
                env.client,
                crate::smtp::Escaped(&crate::spool::envelope::clean(&env.helo)),
            );
            crate::metrics::received(env.size);
            Finished {
                reply: Reply::queued(&id),
                queued: Some(id),
            }
        }
        Err(e) => {
            log::error!("{id} commit failed, not accepted: {e}");
            Finished::from(if e.is_out_of_space() {
                Reply::insufficient_storage()
            } else {
                Reply::local_error()
            })
        }
    }
}

/// The end of a message: its reply and, when the message was queued,
/// its id for the scheduler once that reply is written
/// ([`Finished::announce`]).
pub(super) struct Finished {
    pub(super) reply: Reply,
    /// The id it was queued under (`env.id` unless a collision rerolled
    /// it).
    queued: Option<QueueId>,
}

impl From<Reply> for Finished {
    fn from(reply: Reply) -> Finished {
        Finished {
            reply,
            queued: None,
        }
    }
}

impl Finished {
    /// Tells the scheduler of a queued message. The session calls it
    /// after writing the 250, also when that write failed (the message
    /// is queued all the same): the scheduler's wake-up is then off the
    /// path between the commit and the client's next command.
    pub(super) fn announce(self, ctx: &Context) {
        if let (Some(id), Some(tx)) = (self.queued, &ctx.committed) {
            let _ = tx.try_send(id);
        }
    }
}

/// A milter said DISCARD (or deleted every recipient): the client is
/// told 250, as it would be by Sendmail and Postfix, and nothing is
/// queued.
fn discarded(id: QueueId, peer: &SocketAddr) -> Reply {
    log::info!("{id} discarded by milter client={peer}: not queued");
    Reply::queued(&id)
}

/// DKIM: when `--dkim-sign-from` covers this client and a key's domain
/// matches, the signature goes above the stored message, before the
/// commit and so before the 250 (`dkim.rs`). A message that cannot be
/// signed (no `From:`) goes unsigned, logged; only a spool write error
/// is an `Err`.
fn dkim_sign(session: &Session, incoming: &mut Incoming, ctx: &Context) -> io::Result<()> {
    let Some(signer) = ctx.dkim.as_deref() else {
        return Ok(());
    };
    let source = crate::dkim::Source {
        relay_net: ctx.config.is_relay_client(session.client),
        auth: session.auth.is_some(),
        local: false,
    };
    if !signer.signs_for(source) {
        return Ok(());
    }
    let envelope_domain = session
        .transaction()
        .and_then(|(_, tx)| tx.from.mailbox())
        .and_then(|m| m.host().domain())
        .map(|d| d.as_str().to_string());
    signer.sign_incoming(incoming, envelope_domain.as_deref())
}

/// A message arriving in BDAT chunks (RFC 3030): its spool file and the
/// reader that counts it, from the first chunk to the LAST one. Dropping
/// it removes the uncommitted files.
pub(super) struct Chunked<'a> {
    incoming: Incoming<'a>,
    reader: ChunkReader,
    write_error: Option<io::Error>,
    now: u64,
    /// RFC 6409 §8 fix-ups, across the chunks.
    fixups: Option<Fixups>,
}

/// One accepted BDAT chunk: into the spool file (opened at the first
/// chunk, our Received header first), then 250 for a middle chunk, or the
/// verdict and commit for the LAST. The limits are DATA's: too big is
/// 552 at the end of the chunk that crosses the limit, nothing stored,
/// the transaction over; the hop count is checked at the end.
pub(super) fn receive_chunk<'a>(
    session: &mut Session,
    chunked: &mut Option<Chunked<'a>>,
    chunk: Chunk,
    conn: &mut Conn,
    ctx: &'a Context,
) -> io::Result<Finished> {
    let cfg = &*ctx.config;
    if chunked.is_none() {
        match start_chunked(session, &chunk, conn, ctx)? {
            Ok(st) => *chunked = Some(st),
            Err(refused) => return Ok(refused.into()),
        }
    }
    let Some(st) = chunked.as_mut() else {
        return Ok(Reply::local_error().into());
    };
    let id = st.incoming.id();
    if let Err(e) = st.stage(&chunk, conn, cfg.data_timeout) {
        lost_mid_message(conn, id, "BDAT", &e, &cfg.hostname);
        *chunked = None;
        return Err(e);
    }
    if st.reader.summary().too_big {
        // RFC 1870 §6 / RFC 3030 §4: refuse now; later chunks of this
        // message find no transaction (503) and are thrown away
        log::debug!("{id} rejected client={}: too big (BDAT)", conn.peer);
        *chunked = None;
        session.end_transaction();
        return Ok(Reply::too_big(cfg.max_size).into());
    }
    if !chunk.last {
        return Ok(chunk.reply.into());
    }
    let Some(st) = chunked.take() else {
        return Ok(Reply::local_error().into());
    };
    let finished = st.commit(session, &conn.peer, ctx);
    session.end_transaction();
    Ok(finished)
}

/// The first chunk: the spool file, our Received header in it. A spool
/// that cannot take the message is refused (`Err` of the inner result)
/// after the chunk's octets are read and thrown away: they follow
/// whatever the answer (RFC 3030 §2).
fn start_chunked<'a>(
    session: &mut Session,
    chunk: &Chunk,
    conn: &mut Conn,
    ctx: &'a Context,
) -> io::Result<Result<Chunked<'a>, Reply>> {
    let cfg = &*ctx.config;
    let refused = |r: Reply, session: &mut Session, conn: &mut Conn| {
        conn.io
            .set_deadline(Some(Instant::now() + cfg.data_timeout));
        data::skip_exact(&mut conn.io, chunk.size)?;
        session.end_transaction();
        Ok(Err(r))
    };
    let mut incoming = match open_spool_file(ctx, &conn.peer) {
        Ok(i) => i,
        Err(r) => return refused(r, session, conn),
    };
    // the milters' DATA event, once the queue id exists
    if let Some(r) = super::milters::at_data(session, incoming.id()) {
        return refused(r, session, conn);
    }
    let now = now_unix();
    let header = session.our_headers(incoming.id(), now);
    let write_error = incoming.write_all(header.as_bytes()).err();
    let fixups = session.fixups(incoming.id(), now);
    Ok(Ok(Chunked {
        incoming,
        reader: ChunkReader::new(cfg.max_size),
        write_error,
        now,
        fixups,
    }))
}

impl Chunked<'_> {
    /// Reads one chunk's octets into the spool file (through the fix-ups,
    /// finished at the LAST chunk). A write error is kept for the verdict;
    /// an `Err` is the client lost or timed out.
    fn stage(&mut self, chunk: &Chunk, conn: &mut Conn, timeout: Duration) -> io::Result<()> {
        conn.io.set_deadline(Some(Instant::now() + timeout));
        let mut sink = SpoolSink {
            inner: &mut self.incoming,
            error: self.write_error.take(),
        };
        let read = match self.fixups.as_mut() {
            Some(fixups) => self.reader.read_chunk(
                &mut conn.io,
                chunk.size,
                &mut Fixing {
                    fixups,
                    out: &mut sink,
                },
            ),
            None => self.reader.read_chunk(&mut conn.io, chunk.size, &mut sink),
        };
        if chunk.last && read.is_ok() {
            if let Some(fixups) = self.fixups.as_mut() {
                let _ = fixups.finish(&mut sink);
            }
        }
        self.write_error = sink.error.take();
        read
    }

    /// BDAT LAST: the file flushed, the verdict, the commit.
    fn commit(mut self, session: &mut Session, peer: &SocketAddr, ctx: &Context) -> Finished {
        if self.write_error.is_none() {
            self.write_error = self.incoming.flush().err();
        }
        let verdict = session
            .data_verdict(self.reader.summary())
            .or_else(|| session.author_verdict(self.fixups.as_ref()));
        finish_message(
            session,
            self.incoming,
            self.write_error,
            verdict,
            self.now,
            peer,
            ctx,
        )
    }
}
