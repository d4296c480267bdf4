//! The outbound SMTP client: one blocking connection to a next hop.
//!
//! A straight-line client in qmail-remote's manner, with a verdict per
//! recipient (one refused RCPT never fails the others) and a named timeout
//! per phase (RFC 5321 §4.5.3.2). It only ever sends CRLF line ends and
//! dot-stuffs the body (`smtp::data::write_dot_stuffed`). Whether a reply
//! means "delivered", "try again" or "give up" is decided by the caller
//! from the `Reply` codes; this module only reports what happened.

use std::fmt;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use crate::auth::encode_base64;
use crate::channel::Channel;
use crate::secrets::Credentials;
use crate::smtp::data::{self, Line};
use crate::smtp::{Body, Enhanced, MailDsn, Path, RcptDsn, Reply, ReplyParser, ReversePath};
use crate::tls::{ClientTls, OutboundTls, TlsInfo};

pub use crate::config::delivery::Timeouts;

/// Where in the dialogue something happened, for logs and diagnostics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Connect,
    Greeting,
    Ehlo,
    StartTls,
    /// RFC 8314 §3: the handshake that opens an implicit-TLS connection.
    Tls,
    /// RFC 4954: AUTH.
    Auth,
    Mail,
    Rcpt,
    Data,
    Body,
    EndOfData,
    Rset,
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Phase::Connect => "connect",
            Phase::Greeting => "greeting",
            Phase::Ehlo => "EHLO",
            Phase::StartTls => "STARTTLS",
            Phase::Tls => "TLS handshake",
            Phase::Auth => "AUTH",
            Phase::Mail => "MAIL",
            Phase::Rcpt => "RCPT",
            Phase::Data => "DATA",
            Phase::Body => "message body",
            Phase::EndOfData => "end of data",
            Phase::Rset => "RSET",
        })
    }
}

#[derive(Debug)]
pub enum ClientError {
    /// TCP connect failed (refused, unreachable, timed out).
    Connect(io::Error),
    /// The peer was silent past the phase's timeout.
    Timeout(Phase),
    /// The connection broke.
    Io(Phase, io::Error),
    /// The peer said something that is not SMTP.
    Protocol(Phase, String),
    /// A reply that refuses the whole transaction (greeting, EHLO, MAIL,
    /// DATA, end of data), or our own refusal to send (`local_refusal`).
    Rejected(Phase, Reply),
    /// SMTP AUTH did not succeed: always temporary for the caller, however
    /// the hop's reply is coded (a 535 means "wrong password", which an
    /// operator fixes; bouncing the queue for it would lose mail).
    Auth(AuthError),
}

impl ClientError {
    /// The RSET that `Connection::reset` wrote ahead of a transaction on a
    /// cached connection failed: the peer had closed it, or will not go
    /// on with it. Nothing of the transaction was answered.
    pub fn is_failed_rset(&self) -> bool {
        matches!(
            self,
            ClientError::Io(Phase::Rset, _)
                | ClientError::Timeout(Phase::Rset)
                | ClientError::Protocol(Phase::Rset, _)
                | ClientError::Rejected(Phase::Rset, _)
        )
    }
}

/// Why AUTH to a hop did not succeed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthError {
    /// The hop's reply to AUTH or to a response (535, 534, 454, 530 ...).
    Refused(Reply),
    /// The hop offers no AUTH (RFC 4954 §3: no `AUTH` EHLO keyword).
    NotOffered,
    /// The hop offers AUTH, but neither PLAIN nor LOGIN.
    NoMechanism(String),
    /// The credentials would go in plaintext, and the policy does not
    /// allow that: nothing was sent.
    NotOverTls,
    /// The route names a user the secrets file does not have (checked at
    /// start, so only after the file changed under a running server).
    NoCredentials(String),
}

impl fmt::Display for AuthError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AuthError::Refused(r) => write!(f, "authentication failed: {r}"),
            AuthError::NotOffered => f.write_str("the server does not offer AUTH"),
            AuthError::NoMechanism(m) => {
                write!(
                    f,
                    "no common AUTH mechanism (server offers {m}; we speak PLAIN, LOGIN)"
                )
            }
            AuthError::NotOverTls => {
                f.write_str("AUTH refused locally: the connection is not encrypted")
            }
            AuthError::NoCredentials(u) => write!(f, "no credentials for {u} in the secrets file"),
        }
    }
}

impl fmt::Display for ClientError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClientError::Connect(e) => write!(f, "connect failed: {e}"),
            ClientError::Timeout(p) => write!(f, "timeout waiting for reply to {p}"),
            ClientError::Io(p, e) => write!(f, "connection lost during {p}: {e}"),
            ClientError::Protocol(p, what) => write!(f, "protocol error after {p}: {what}"),
            ClientError::Rejected(p, r) => write!(f, "{p} rejected: {r}"),
            ClientError::Auth(e) => e.fmt(f),
        }
    }
}

impl std::error::Error for ClientError {}

fn io_error(phase: Phase, e: io::Error) -> ClientError {
    match e.kind() {
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => ClientError::Timeout(phase),
        _ => ClientError::Io(phase, e),
    }
}

/// What the server's EHLO reply offered.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Extensions {
    pub esmtp: bool,
    pub pipelining: bool,
    /// RFC 1870: the advertised limit, 0 = no fixed limit.
    pub size: Option<u64>,
    pub eightbitmime: bool,
    pub smtputf8: bool,
    /// RFC 3207.
    pub starttls: bool,
    /// RFC 3461.
    pub dsn: bool,
    /// RFC 4954 §3: the SASL mechanisms offered, upper case.
    pub auth: Vec<String>,
    /// RFC 8689 §3.
    pub requiretls: bool,
}

impl Extensions {
    fn from_ehlo(reply: &Reply) -> Extensions {
        let mut e = Extensions {
            esmtp: true,
            ..Extensions::default()
        };
        for line in reply.lines().iter().skip(1) {
            let mut words = line.split_whitespace();
            let Some(kw) = words.next() else { continue };
            match kw.to_ascii_uppercase().as_str() {
                "PIPELINING" => e.pipelining = true,
                "8BITMIME" => e.eightbitmime = true,
                "SMTPUTF8" => e.smtputf8 = true,
                "STARTTLS" => e.starttls = true,
                "DSN" => e.dsn = true,
                "REQUIRETLS" => e.requiretls = true,
                "SIZE" => e.size = Some(words.next().and_then(|n| n.parse().ok()).unwrap_or(0)),
                "AUTH" => e.auth.extend(words.map(str::to_ascii_uppercase)),
                // the pre-RFC 2554 form some servers still send beside it
                kw if kw.starts_with("AUTH=") => e.auth.extend(
                    std::iter::once(&kw[5..])
                        .chain(words)
                        .map(str::to_ascii_uppercase),
                ),
                _ => {}
            }
        }
        e
    }
}

/// A message to send in one transaction.
pub struct Outgoing<'a> {
    pub from: &'a ReversePath,
    pub rcpts: &'a [Path],
    /// Octets of the stored message.
    pub size: u64,
    pub body: Option<Body>,
    pub smtputf8: bool,
    /// RFC 3461 requests: the message's, and one per recipient (in the
    /// order of `rcpts`), passed on when the server offers DSN.
    pub dsn: Option<(&'a MailDsn, &'a [RcptDsn])>,
    /// RFC 8689 §4.2.1: passed on as `REQUIRETLS` on MAIL; the caller
    /// has checked the hop (verified TLS, REQUIRETLS offered).
    pub requiretls: bool,
}

/// The outcome of one transaction that got as far as the recipients.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sent {
    /// The reply to each RCPT, in the order of `Outgoing::rcpts`.
    pub rcpt_replies: Vec<Reply>,
    /// The reply to the end of data (or to DATA when it failed), which
    /// applies to every recipient whose RCPT was accepted; `None` when no
    /// recipient was accepted and no data was sent.
    pub data_reply: Option<Reply>,
    /// The server offered DSN and took our requests (RFC 3461 §5.2): the
    /// duty to report on these recipients passed on with the message.
    pub dsn_passed: bool,
}

/// RFC 5321 §4.5.3.1.5 says reply lines are at most 512 octets; we allow
/// more, but never unbounded.
const MAX_REPLY_LINE: usize = 4096;
const MAX_REPLY_LINES: usize = 100;

/// How one hop is reached: the route's TLS policy and credentials, with
/// the hop's name. A cached connection is only reused under the policy it
/// was opened with (the caller keys its cache on it).
#[derive(Debug, Clone, Copy)]
pub struct HopPolicy<'a> {
    /// `None`: no TLS at all (route `tls = none`).
    pub tls: Option<&'a ClientTls>,
    /// The hop's host name as the route names it: SNI, and under
    /// `verify`/`implicit` the name the certificate must carry (never the
    /// address dialled).
    pub server_name: &'a str,
    /// AUTH with these, after TLS (RFC 4954 §4).
    pub auth: Option<&'a Credentials>,
    /// The route explicitly allows AUTH without TLS.
    pub auth_plaintext: bool,
}

#[derive(Debug)]
pub struct Connection {
    io: Channel,
    peer: SocketAddr,
    ext: Extensions,
    timeouts: Timeouts,
    transactions: usize,
    greeting: String,
    line: Vec<u8>,
    /// Set once the connection is in an unknown state: never reuse it.
    broken: bool,
    /// A RSET written ahead of the next transaction's commands and not
    /// answered yet (`reset`).
    rset_pending: bool,
    /// Set once STARTTLS completed.
    tls: Option<TlsInfo>,
    /// TLS is up and the certificate was checked for the hop's name
    /// (`verify`, `implicit`): what RFC 8689 §4.2.1 asks of a hop.
    verified: bool,
}

impl Connection {
    /// Connects, reads the greeting and says EHLO (HELO if EHLO is refused,
    /// RFC 5321 §3.2); no TLS.
    pub fn open(
        peer: SocketAddr,
        helo_name: &str,
        timeouts: Timeouts,
    ) -> Result<Connection, ClientError> {
        let policy = HopPolicy {
            tls: None,
            server_name: "",
            auth: None,
            auth_plaintext: false,
        };
        Connection::open_once(peer, helo_name, timeouts, &policy)
    }

    /// `open`, then STARTTLS as `tls` says, checking the certificate for
    /// `server_name` under `verify`. Under `may` a failed handshake costs
    /// the connection, so the host is dialled again and the dialogue goes
    /// on in plaintext.
    pub fn open_with_tls(
        peer: SocketAddr,
        helo_name: &str,
        timeouts: Timeouts,
        tls: &ClientTls,
        server_name: &str,
    ) -> Result<Connection, ClientError> {
        let policy = HopPolicy {
            tls: Some(tls),
            server_name,
            auth: None,
            auth_plaintext: false,
        };
        Connection::open_hop(peer, helo_name, timeouts, &policy)
    }

    /// Opens a connection to one hop under a route's policy: TLS (none,
    /// STARTTLS as `may`/`encrypt`/`verify`, or implicit TLS from the
    /// first byte, RFC 8314 §3), then AUTH when the policy carries
    /// credentials (RFC 4954 §4). Under `may` a failed STARTTLS handshake
    /// costs the connection, so the host is dialled again in plaintext
    /// (where AUTH then refuses to go, unless `auth_plaintext`).
    pub fn open_hop(
        peer: SocketAddr,
        helo_name: &str,
        timeouts: Timeouts,
        policy: &HopPolicy,
    ) -> Result<Connection, ClientError> {
        let mut c = match Connection::open_once(peer, helo_name, timeouts, policy) {
            Err(ClientError::Rejected(Phase::StartTls, r))
                if policy.tls.is_some_and(|t| t.mode == OutboundTls::May) =>
            {
                log::info!("{peer} {r}; again without TLS (TLS policy may)");
                let plain = HopPolicy {
                    tls: None,
                    ..*policy
                };
                Connection::open_once(peer, helo_name, timeouts, &plain)?
            }
            other => other?,
        };
        if let Some(creds) = policy.auth {
            if let Err(e) = c.authenticate(creds, policy.auth_plaintext) {
                c.broken = true;
                // once per connection, with the hop's reply (never the secret)
                log::warn!("{peer} AUTH as {}: {e}", creds.user);
                c.quit();
                return Err(e);
            }
        }
        Ok(c)
    }

    fn open_once(
        peer: SocketAddr,
        helo_name: &str,
        timeouts: Timeouts,
        policy: &HopPolicy,
    ) -> Result<Connection, ClientError> {
        let stream =
            TcpStream::connect_timeout(&peer, timeouts.connect).map_err(ClientError::Connect)?;
        let _ = stream.set_nodelay(true);
        stream
            .set_write_timeout(Some(timeouts.data_block))
            .map_err(|e| ClientError::Io(Phase::Connect, e))?;
        let mut c = Connection {
            io: Channel::new(stream, timeouts.greeting, 16 * 1024, 64 * 1024),
            peer,
            ext: Extensions::default(),
            timeouts,
            transactions: 0,
            greeting: String::new(),
            line: Vec::with_capacity(512),
            broken: false,
            rset_pending: false,
            tls: None,
            verified: false,
        };
        let tls = policy.tls.map(|t| (t, policy.server_name));
        if let Some((tls, name)) = tls.filter(|(t, _)| t.mode == OutboundTls::Implicit) {
            c.implicit_tls(tls, name)?;
        }
        let greeting = c.read_reply(Phase::Greeting, timeouts.greeting)?;
        if greeting.code().value() != 220 {
            let _ = c.command("QUIT", Phase::Greeting, Duration::from_secs(5));
            return Err(ClientError::Rejected(Phase::Greeting, greeting));
        }
        c.greeting = greeting.text();
        c.hello(helo_name)?;
        if let Some((tls, name)) = tls.filter(|(t, _)| t.mode != OutboundTls::Implicit) {
            c.starttls(tls, name)?;
            if c.tls.is_some() {
                // RFC 3207 §4.2: forget what the server said before TLS
                c.hello(helo_name)?;
            }
        }
        Ok(c)
    }

    /// RFC 8314 §3: the TLS handshake comes first, before the greeting.
    /// A failure is temporary (454 4.7.5, as for STARTTLS).
    fn implicit_tls(&mut self, tls: &ClientTls, name: &str) -> Result<(), ClientError> {
        let refuse = |text: String| {
            ClientError::Rejected(Phase::Tls, Reply::new(454, Enhanced::new(4, 7, 5), text))
        };
        self.broken = true;
        let conn = tls
            .connect(name)
            .map_err(|e| refuse(format!("TLS set-up failed: {e}")))?;
        self.io
            .start_tls(conn.into(), self.timeouts.greeting)
            .map_err(|e| refuse(format!("TLS handshake failed: {e}")))?;
        self.broken = false;
        self.tls = self.io.tls_info();
        self.verified = self.tls.is_some();
        Ok(())
    }

    /// RFC 4954 §4 as a client: PLAIN (RFC 4616) when offered, else LOGIN
    /// (draft-murchison-sasl-login), with the first response on the AUTH
    /// line where the mechanism allows it. Only after TLS, unless the
    /// policy explicitly allows plaintext: a password is never offered to
    /// whoever can watch the wire by default. Any reply but 235 is an
    /// `AuthError`; a challenge we did not expect is cancelled with `*`.
    fn authenticate(&mut self, creds: &Credentials, plaintext: bool) -> Result<(), ClientError> {
        let fail = |e| Err(ClientError::Auth(e));
        if self.tls.is_none() && !plaintext {
            return fail(AuthError::NotOverTls);
        }
        if self.ext.auth.is_empty() {
            return fail(AuthError::NotOffered);
        }
        let t = self.timeouts.greeting;
        let offered = |m: &str| self.ext.auth.iter().any(|a| a == m);
        let steps: Vec<(String, String)> = if offered("PLAIN") {
            // RFC 4616 §2: [authzid] NUL authcid NUL passwd, authzid empty
            let msg = format!("\0{}\0{}", creds.user, creds.password.expose());
            vec![(
                format!("AUTH PLAIN {}", encode_base64(msg.as_bytes())),
                "AUTH PLAIN ***".into(),
            )]
        } else if offered("LOGIN") {
            vec![
                ("AUTH LOGIN".into(), "AUTH LOGIN".into()),
                (encode_base64(creds.user.as_bytes()), creds.user.clone()),
                (
                    encode_base64(creds.password.expose().as_bytes()),
                    "***".into(),
                ),
            ]
        } else {
            return fail(AuthError::NoMechanism(self.ext.auth.join(" ")));
        };
        let last = steps.len() - 1;
        for (i, (line, shown)) in steps.iter().enumerate() {
            self.write_shown(line, shown, Phase::Auth)?;
            self.flush(Phase::Auth)?;
            let r = self.read_reply(Phase::Auth, t)?;
            match r.code().value() {
                235 => return Ok(()),
                334 if i < last => {}
                334 => {
                    // RFC 4954 §4: "*" cancels the exchange; the server
                    // answers 501
                    let _ = self.command("*", Phase::Auth, t);
                    return fail(AuthError::Refused(r));
                }
                _ => return fail(AuthError::Refused(r)),
            }
        }
        // every step ended in 334: a PLAIN server asking for more
        let _ = self.command("*", Phase::Auth, t);
        fail(AuthError::Refused(Reply::new(
            535,
            Enhanced::new(5, 7, 8),
            "the server wanted more than the credentials",
        )))
    }

    fn hello(&mut self, helo_name: &str) -> Result<(), ClientError> {
        let t = self.timeouts.greeting;
        let ehlo = self.command(&format!("EHLO {helo_name}"), Phase::Ehlo, t)?;
        if ehlo.code().value() == 250 {
            self.ext = Extensions::from_ehlo(&ehlo);
        } else if ehlo.code().is_permanent() {
            let helo = self.command(&format!("HELO {helo_name}"), Phase::Ehlo, t)?;
            if helo.code().value() != 250 {
                return Err(ClientError::Rejected(Phase::Ehlo, helo));
            }
            self.ext = Extensions::default();
        } else {
            return Err(ClientError::Rejected(Phase::Ehlo, ehlo));
        }
        Ok(())
    }

    /// STARTTLS when offered (RFC 3207 §4); an `Err` when TLS was required
    /// and could not be had, or the handshake failed. TLS failures are
    /// temporary (454/451 4.7.x): the next try may find it working, and
    /// a message is never sent in plaintext instead under `encrypt`.
    fn starttls(&mut self, tls: &ClientTls, name: &str) -> Result<(), ClientError> {
        let required = tls.mode != OutboundTls::May;
        let refuse = |code: u16, detail: u16, text: String| {
            ClientError::Rejected(
                Phase::StartTls,
                Reply::new(code, Enhanced::new(4, 7, detail), text),
            )
        };
        if !self.ext.starttls {
            if required {
                self.broken = true;
                // RFC 3463 X.7.4: security features not supported
                return Err(refuse(
                    451,
                    4,
                    "TLS is required, but the server does not offer STARTTLS".into(),
                ));
            }
            return Ok(());
        }
        let r = self.command("STARTTLS", Phase::StartTls, self.timeouts.greeting)?;
        if r.code().value() != 220 {
            if required {
                self.broken = true;
                return Err(refuse(
                    451,
                    4,
                    format!("TLS is required, but STARTTLS got: {r}"),
                ));
            }
            // RFC 3207 §4: after a refusal the dialogue goes on in plaintext
            return Ok(());
        }
        let conn = tls.connect(name).map_err(|e| {
            self.broken = true;
            refuse(454, 5, format!("TLS set-up failed: {e}"))
        })?;
        if let Err(e) = self.io.start_tls(conn.into(), self.timeouts.greeting) {
            self.broken = true;
            // RFC 3463 X.7.5: cryptographic failure (also a bad certificate)
            return Err(refuse(454, 5, format!("TLS handshake failed: {e}")));
        }
        self.tls = self.io.tls_info();
        self.verified = self.tls.is_some() && tls.verifies();
        Ok(())
    }

    /// TLS with a certificate checked for the hop's name (RFC 8689
    /// §4.2.1, RFC 8461 §4.2).
    pub fn verified(&self) -> bool {
        self.verified
    }

    /// What `verify` would have said of this connection to `name`: for a
    /// policy that is only tested (RFC 8461 §5 `testing`), logged.
    pub fn would_verify(&self, tls: &ClientTls, name: &str) -> Result<(), String> {
        if self.verified {
            return Ok(());
        }
        let certs = self
            .io
            .peer_certificates()
            .ok_or("no TLS (STARTTLS not used)")?;
        tls.judge(certs, name)
    }

    /// `TLSv1.3/TLS13_AES_256_GCM_SHA384`, or `none`, for the logs.
    pub fn tls_label(&self) -> String {
        self.tls
            .as_ref()
            .map(|t| t.to_string())
            .unwrap_or_else(|| "none".into())
    }

    pub fn peer(&self) -> SocketAddr {
        self.peer
    }

    /// Our address on this connection (RFC 8460 §4.4 `sending-mta-ip`).
    pub fn local_ip(&self) -> Option<std::net::IpAddr> {
        self.io.socket().local_addr().ok().map(|a| a.ip())
    }

    /// Whether TLS is up on this connection.
    pub fn is_tls(&self) -> bool {
        self.tls.is_some()
    }

    pub fn extensions(&self) -> &Extensions {
        &self.ext
    }

    /// Transactions completed on this connection.
    pub fn transactions(&self) -> usize {
        self.transactions
    }

    /// False once anything went wrong: such a connection is closed, not cached.
    pub fn reusable(&self) -> bool {
        !self.broken
    }

    /// Reads one complete (possibly multi-line) reply, bounded in size.
    /// RFC 5321 §4.5.3.2: the phase's timeout is for the whole reply, all
    /// its lines: one deadline, which the channel checks before every
    /// socket read (under TLS too), so a next hop trickling a byte at a
    /// time cannot hold the delivery thread past it.
    fn read_reply(&mut self, phase: Phase, timeout: Duration) -> Result<Reply, ClientError> {
        self.io.set_idle(timeout);
        self.io.set_deadline(Some(Instant::now() + timeout));
        let mut parser = ReplyParser::new();
        for _ in 0..MAX_REPLY_LINES {
            let read = data::read_line_strict(&mut self.io, &mut self.line, MAX_REPLY_LINE);
            match read {
                Ok(Line::Complete) => {}
                Ok(Line::TooLong) => {
                    self.broken = true;
                    return Err(ClientError::Protocol(phase, "reply line too long".into()));
                }
                Ok(Line::Eof) => {
                    self.broken = true;
                    return Err(ClientError::Io(
                        phase,
                        io::Error::new(io::ErrorKind::UnexpectedEof, "connection closed by peer"),
                    ));
                }
                Err(e) => {
                    self.broken = true;
                    return Err(io_error(phase, e));
                }
            }
            let text = String::from_utf8_lossy(&self.line);
            log::trace!("{} < {}", self.peer, text);
            match parser.feed(&text) {
                Ok(Some(reply)) => return Ok(reply),
                Ok(None) => {}
                Err(e) => {
                    self.broken = true;
                    return Err(ClientError::Protocol(phase, e.to_string()));
                }
            }
        }
        self.broken = true;
        Err(ClientError::Protocol(
            phase,
            "reply has too many lines".into(),
        ))
    }

    fn write_line(&mut self, line: &str, phase: Phase) -> Result<(), ClientError> {
        self.write_shown(line, line, phase)
    }

    /// Writes `line`, tracing `shown` instead: AUTH responses carry the
    /// password, which never goes into a log.
    fn write_shown(&mut self, line: &str, shown: &str, phase: Phase) -> Result<(), ClientError> {
        log::trace!("{} > {}", self.peer, shown);
        let r = self
            .io
            .write_all(line.as_bytes())
            .and_then(|_| self.io.write_all(b"\r\n"));
        r.map_err(|e| {
            self.broken = true;
            io_error(phase, e)
        })
    }

    fn flush(&mut self, phase: Phase) -> Result<(), ClientError> {
        self.io.flush().map_err(|e| {
            self.broken = true;
            io_error(phase, e)
        })
    }

    fn command(
        &mut self,
        line: &str,
        phase: Phase,
        timeout: Duration,
    ) -> Result<Reply, ClientError> {
        self.write_line(line, phase)?;
        self.flush(phase)?;
        self.read_reply(phase, timeout)
    }

    /// Our own refusal to send, as a reply the caller can classify and
    /// put in a DSN.
    fn local_refusal(code: u16, enhanced: Enhanced, text: &str) -> ClientError {
        ClientError::Rejected(Phase::Mail, Reply::new(code, enhanced, text))
    }

    /// `MAIL FROM:` with the parameters this hop takes for `msg`, or our
    /// refusal when the hop cannot take the message as it is.
    fn mail_line(&self, msg: &Outgoing) -> Result<String, ClientError> {
        // RFC 6531 §3.2: an SMTPUTF8 message cannot go to a server without
        // SMTPUTF8; there is no downgrade.
        if msg.smtputf8 && !self.ext.smtputf8 {
            return Err(Self::local_refusal(
                553,
                Enhanced::new(5, 6, 7),
                "next hop does not support SMTPUTF8",
            ));
        }
        // RFC 6152 §3: an 8BITMIME message to a server without 8BITMIME
        // must be converted or returned; we do not convert, we return it.
        let eight_bit = msg.body == Some(Body::EightBitMime);
        if eight_bit && !self.ext.eightbitmime {
            return Err(Self::local_refusal(
                554,
                Enhanced::new(5, 6, 3),
                "next hop does not support 8BITMIME and conversion is not done",
            ));
        }
        // RFC 1870 §5: do not send what the server already said is too big.
        if let Some(max) = self.ext.size.filter(|&m| m > 0) {
            if msg.size > max {
                return Err(Self::local_refusal(
                    552,
                    Enhanced::new(5, 3, 4),
                    &format!(
                        "message size {} exceeds next hop's limit of {max}",
                        msg.size
                    ),
                ));
            }
        }
        let mut mail = format!("MAIL FROM:{}", msg.from);
        if self.ext.size.is_some() {
            mail.push_str(&format!(" SIZE={}", msg.size));
        }
        if let (Some(b), true) = (msg.body, self.ext.eightbitmime) {
            mail.push_str(&format!(" BODY={}", b.as_str()));
        }
        if msg.smtputf8 {
            mail.push_str(" SMTPUTF8");
        }
        // RFC 8689 §4.2.1: the requirement travels with the message; a
        // hop that does not offer it never gets the message (checked
        // by the caller, and again here)
        if msg.requiretls {
            if !self.ext.requiretls || !self.verified {
                return Err(Self::local_refusal(
                    550,
                    Enhanced::new(5, 7, 30),
                    "REQUIRETLS: next hop is not verified TLS offering REQUIRETLS",
                ));
            }
            mail.push_str(" REQUIRETLS");
        }
        Ok(mail)
    }

    /// Sends one message to the recipients in `msg`, reading the body from
    /// `body`. `Err` means the transaction failed as a whole (for all
    /// recipients); `Ok` carries each recipient's verdict.
    pub fn send(&mut self, msg: &Outgoing, body: &mut impl Read) -> Result<Sent, ClientError> {
        let t = self.timeouts;
        let mut mail = self.mail_line(msg)?;
        // RFC 3461 §5.2.1: a relay passes the DSN parameters on to a
        // server that offers DSN (and cannot to one that does not)
        let dsn = msg.dsn.filter(|_| self.ext.dsn);
        if let Some((m, _)) = dsn {
            if let Some(ret) = m.ret {
                mail.push_str(&format!(" RET={}", ret.as_str()));
            }
            if let Some(envid) = &m.envid {
                mail.push_str(&format!(" ENVID={envid}"));
            }
        }
        let rcpt_lines: Vec<String> = msg
            .rcpts
            .iter()
            .enumerate()
            .map(|(i, r)| {
                let mut line = format!("RCPT TO:{r}");
                if let Some(d) = dsn.and_then(|(_, rd)| rd.get(i)) {
                    if let Some(n) = d.notify {
                        line.push_str(&format!(" NOTIFY={n}"));
                    }
                    if let Some(o) = &d.orcpt {
                        line.push_str(&format!(" ORCPT={o}"));
                    }
                }
                line
            })
            .collect();
        let dsn_passed = self.ext.dsn;

        let (mail_reply, rcpt_replies, data_reply) = if self.ext.pipelining {
            // RFC 2920 §3.1: MAIL, the RCPTs and DATA go as one group;
            // replies come back in order.
            self.write_line(&mail, Phase::Mail)?;
            for l in &rcpt_lines {
                self.write_line(l, Phase::Rcpt)?;
            }
            self.write_line("DATA", Phase::Data)?;
            if let Err(e) = self.flush(Phase::Data) {
                // a peer that closed the cached connection may refuse
                // the write already: the RSET failed
                return Err(match (std::mem::take(&mut self.rset_pending), e) {
                    (true, ClientError::Io(_, e)) => ClientError::Io(Phase::Rset, e),
                    (true, ClientError::Timeout(_)) => ClientError::Timeout(Phase::Rset),
                    (_, e) => e,
                });
            }
            self.read_pending_rset()?;
            let mail_reply = self.read_reply(Phase::Mail, t.mail)?;
            let mut rr = Vec::with_capacity(rcpt_lines.len());
            for _ in &rcpt_lines {
                rr.push(self.read_reply(Phase::Rcpt, t.rcpt)?);
            }
            let data_reply = self.read_reply(Phase::Data, t.data_init)?;
            (mail_reply, rr, Some(data_reply))
        } else {
            let mail_reply = self.command(&mail, Phase::Mail, t.mail)?;
            if !mail_reply.code().is_positive() {
                self.reset_after_failure();
                return Err(ClientError::Rejected(Phase::Mail, mail_reply));
            }
            let mut rr = Vec::with_capacity(rcpt_lines.len());
            for l in &rcpt_lines {
                rr.push(self.command(l, Phase::Rcpt, t.rcpt)?);
            }
            let any = rr.iter().any(|r| r.code().is_positive());
            let data_reply = if any {
                Some(self.command("DATA", Phase::Data, t.data_init)?)
            } else {
                None
            };
            (mail_reply, rr, data_reply)
        };

        let accepted = rcpt_replies.iter().any(|r| r.code().is_positive());
        if !mail_reply.code().is_positive() {
            if data_reply.as_ref().is_some_and(|r| r.code().value() == 354) {
                self.abandon_data()?;
            }
            self.reset_after_failure();
            return Err(ClientError::Rejected(Phase::Mail, mail_reply));
        }
        let Some(data_reply) = data_reply else {
            self.reset_after_failure();
            return Ok(Sent {
                rcpt_replies,
                data_reply: None,
                dsn_passed,
            });
        };
        if data_reply.code().value() != 354 {
            self.reset_after_failure();
            if !accepted {
                // the DATA refusal is just the consequence of no recipients
                return Ok(Sent {
                    rcpt_replies,
                    data_reply: None,
                    dsn_passed,
                });
            }
            return Err(ClientError::Rejected(Phase::Data, data_reply));
        }
        if !accepted {
            // RFC 2920 §3.1: 354 with no accepted recipient; end the empty
            // data and ignore the verdict.
            self.abandon_data()?;
            self.reset_after_failure();
            return Ok(Sent {
                rcpt_replies,
                data_reply: None,
                dsn_passed,
            });
        }
        data::write_dot_stuffed(body, &mut self.io).map_err(|e| {
            self.broken = true;
            io_error(Phase::Body, e)
        })?;
        self.flush(Phase::Body)?;
        let end = self.read_reply(Phase::EndOfData, t.data_end)?;
        self.transactions += 1;
        Ok(Sent {
            rcpt_replies,
            data_reply: Some(end),
            dsn_passed,
        })
    }

    /// Ends a DATA we do not want to fill (after an unexpected 354).
    fn abandon_data(&mut self) -> Result<(), ClientError> {
        self.write_line(".", Phase::Body)?;
        self.flush(Phase::Body)?;
        let _ = self.read_reply(Phase::EndOfData, self.timeouts.data_end)?;
        Ok(())
    }

    /// After a failed transaction the connection may still serve others,
    /// if RSET works; otherwise it is marked broken.
    fn reset_after_failure(&mut self) {
        if self.broken {
            return;
        }
        match self.command("RSET", Phase::Rset, self.timeouts.mail) {
            Ok(r) if r.code().is_positive() => {}
            _ => self.broken = true,
        }
    }

    /// Address verification (the inbound side's `--verify-recipients`):
    /// `MAIL FROM:<>` and one `RCPT TO`, never DATA, then RSET. The null
    /// sender (RFC 5321 §4.5.5) so the next hop never answers to anyone.
    /// `Ok` carries the reply to the RCPT; a refused MAIL is an `Err`.
    pub fn probe_rcpt(&mut self, rcpt: &Path) -> Result<Reply, ClientError> {
        let t = self.timeouts;
        let mail = self.command("MAIL FROM:<>", Phase::Mail, t.mail)?;
        if !mail.code().is_positive() {
            self.reset_after_failure();
            return Err(ClientError::Rejected(Phase::Mail, mail));
        }
        let reply = self.command(&format!("RCPT TO:{rcpt}"), Phase::Rcpt, t.rcpt)?;
        self.reset_after_failure();
        Ok(reply)
    }

    /// Prepares a cached connection for another transaction, and finds
    /// out whether the peer still holds it (it may have closed it while
    /// idle). With PIPELINING the RSET is only written: it leaves with
    /// the next transaction's MAIL, RCPT and DATA (RFC 2920 §3.1 allows
    /// RSET anywhere in a group), and `send` reads its reply first, so
    /// the probe costs no round trip of its own. A failed RSET is then a
    /// `Phase::Rset` error of `send` (`ClientError::is_failed_rset`), before any other
    /// command of the transaction was answered.
    pub fn reset(&mut self) -> Result<(), ClientError> {
        if self.ext.pipelining {
            if !self.rset_pending {
                self.write_line("RSET", Phase::Rset)?;
                self.rset_pending = true;
            }
            return Ok(());
        }
        let r = self.command("RSET", Phase::Rset, self.timeouts.mail)?;
        self.rset_answered(r)
    }

    /// The reply to a RSET: a refusal leaves the connection unusable.
    fn rset_answered(&mut self, r: Reply) -> Result<(), ClientError> {
        if r.code().is_positive() {
            Ok(())
        } else {
            self.broken = true;
            Err(ClientError::Rejected(Phase::Rset, r))
        }
    }

    /// Reads the reply to a RSET that `reset` wrote ahead of this
    /// transaction's commands, if there is one.
    fn read_pending_rset(&mut self) -> Result<(), ClientError> {
        if !std::mem::take(&mut self.rset_pending) {
            return Ok(());
        }
        match self.read_reply(Phase::Rset, self.timeouts.mail) {
            Ok(r) => self.rset_answered(r),
            Err(e) => {
                self.broken = true;
                Err(e)
            }
        }
    }

    /// Says QUIT and closes, without waiting long for the answer.
    pub fn quit(mut self) {
        if !self.broken {
            let _ = self.command("QUIT", Phase::Rset, Duration::from_secs(2));
        }
        self.io.shutdown();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::BufRead;
    use std::net::TcpListener;
    use std::thread;

    /// A one-connection scripted server: for each line read, the reply
    /// from `answer`; DATA content is collected until the lone dot.
    fn server(
        pipelining: bool,
        answer: fn(&str) -> Option<&'static str>,
    ) -> (SocketAddr, thread::JoinHandle<Vec<String>>) {
        let ehlo = if pipelining {
            "250-test\r\n250-PIPELINING\r\n250-8BITMIME\r\n250 SIZE 1000000\r\n"
        } else {
            "250 test\r\n"
        };
        scripted(ehlo, answer)
    }

    /// `server` with the EHLO reply given.
    fn scripted(
        ehlo: &'static str,
        answer: fn(&str) -> Option<&'static str>,
    ) -> (SocketAddr, thread::JoinHandle<Vec<String>>) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let h = thread::spawn(move || {
            let (s, _) = l.accept().unwrap();
            let mut r = io::BufReader::new(s.try_clone().unwrap());
            let mut w = s;
            let mut seen = Vec::new();
            w.write_all(b"220 test ESMTP\r\n").unwrap();
            let mut in_data = false;
            loop {
                let mut line = String::new();
                if r.read_line(&mut line).unwrap() == 0 {
                    break;
                }
                let line = line.trim_end_matches("\r\n").to_string();
                seen.push(line.clone());
                if in_data {
                    if line == "." {
                        in_data = false;
                        w.write_all(b"250 2.0.0 queued\r\n").unwrap();
                    }
                    continue;
                }
                let up = line.to_ascii_uppercase();
                let reply: String = if up.starts_with("EHLO") {
                    ehlo.into()
                } else if let Some(a) = answer(&line) {
                    format!("{a}\r\n")
                } else if up == "DATA" {
                    in_data = true;
                    "354 go\r\n".into()
                } else if up == "QUIT" {
                    w.write_all(b"221 bye\r\n").unwrap();
                    break;
                } else {
                    "250 2.1.0 ok\r\n".into()
                };
                w.write_all(reply.as_bytes()).unwrap();
            }
            seen
        });
        (addr, h)
    }

    fn paths(v: &[&str]) -> Vec<Path> {
        v.iter().map(|s| Path::parse(s, false).unwrap()).collect()
    }

    #[test]
    fn per_recipient_verdicts_with_and_without_pipelining() {
        for pipelining in [true, false] {
            let (addr, h) = server(pipelining, |l| {
                l.contains("<bad@x.example>")
                    .then_some("550 5.1.1 no such user")
            });
            let mut c =
                Connection::open(addr, "me.test", Timeouts::all(Duration::from_secs(5))).unwrap();
            assert_eq!(c.extensions().pipelining, pipelining);
            let from = ReversePath::parse("<s@x.example>", false).unwrap();
            let rcpts = paths(&["<a@x.example>", "<bad@x.example>"]);
            let msg = Outgoing {
                from: &from,
                rcpts: &rcpts,
                size: 20,
                body: None,
                smtputf8: false,
                dsn: None,
                requiretls: false,
            };
            let sent = c
                .send(&msg, &mut &b"Subject: t\r\n\r\n.dot\r\n"[..])
                .unwrap();
            assert_eq!(sent.rcpt_replies[0].code().value(), 250);
            assert_eq!(sent.rcpt_replies[1].code().value(), 550);
            assert_eq!(sent.data_reply.unwrap().code().value(), 250);
            c.quit();
            let seen = h.join().unwrap();
            assert!(seen.contains(&"..dot".to_string()), "dot stuffed: {seen:?}");
            if pipelining {
                assert!(seen.iter().any(|l| l.contains("SIZE=20")));
            }
        }
    }

    #[test]
    fn all_recipients_refused_sends_no_data() {
        let (addr, h) = server(false, |l| l.starts_with("RCPT").then_some("450 4.2.0 busy"));
        let mut c =
            Connection::open(addr, "me.test", Timeouts::all(Duration::from_secs(5))).unwrap();
        let from = ReversePath::Null;
        let rcpts = paths(&["<a@x.example>"]);
        let msg = Outgoing {
            from: &from,
            rcpts: &rcpts,
            size: 5,
            body: None,
            smtputf8: false,
            dsn: None,
            requiretls: false,
        };
        let sent = c.send(&msg, &mut &b"x\r\n"[..]).unwrap();
        assert_eq!(sent.data_reply, None);
        assert_eq!(sent.rcpt_replies[0].code().value(), 450);
        c.quit();
        let seen = h.join().unwrap();
        assert!(!seen.contains(&"DATA".to_string()), "{seen:?}");
    }

    #[test]
    fn mail_refused_is_an_error() {
        let (addr, _h) = server(true, |l| l.starts_with("MAIL").then_some("451 4.3.0 later"));
        let mut c =
            Connection::open(addr, "me.test", Timeouts::all(Duration::from_secs(5))).unwrap();
        let from = ReversePath::Null;
        let rcpts = paths(&["<a@x.example>"]);
        let msg = Outgoing {
            from: &from,
            rcpts: &rcpts,
            size: 5,
            body: Some(Body::EightBitMime),
            smtputf8: false,
            dsn: None,
            requiretls: false,
        };
        match c.send(&msg, &mut &b"x\r\n"[..]) {
            Err(ClientError::Rejected(Phase::Mail, r)) => assert_eq!(r.code().value(), 451),
            other => panic!("{other:?}"),
        }
    }

    fn creds() -> Credentials {
        Credentials {
            user: "u".into(),
            password: crate::secrets::Secret::new("p"),
        }
    }

    /// AUTH over a plaintext test connection (`auth_plaintext`).
    fn open_auth(addr: SocketAddr, plaintext: bool) -> Result<Connection, ClientError> {
        let c = creds();
        let policy = HopPolicy {
            tls: None,
            server_name: "test",
            auth: Some(&c),
            auth_plaintext: plaintext,
        };
        Connection::open_hop(
            addr,
            "me.test",
            Timeouts::all(Duration::from_secs(5)),
            &policy,
        )
    }

    #[test]
    fn auth_plain_is_preferred() {
        // RFC 4616: base64("\0u\0p") = AHUAcA==
        let (addr, h) = scripted("250-test\r\n250 AUTH LOGIN PLAIN\r\n", |l| {
            (l == "AUTH PLAIN AHUAcA==").then_some("235 2.7.0 ok")
        });
        let c = open_auth(addr, true).unwrap();
        c.quit();
        let seen = h.join().unwrap();
        assert!(
            seen.contains(&"AUTH PLAIN AHUAcA==".to_string()),
            "{seen:?}"
        );
    }

    #[test]
    fn auth_login_when_plain_is_not_offered() {
        let (addr, h) = scripted(
            "250-test\r\n250-AUTH=LOGIN\r\n250 AUTH LOGIN\r\n",
            |l| match l {
                "AUTH LOGIN" => Some("334 VXNlcm5hbWU6"),
                "dQ==" => Some("334 UGFzc3dvcmQ6"),
                "cA==" => Some("235 2.7.0 ok"),
                _ => None,
            },
        );
        let c = open_auth(addr, true).unwrap();
        c.quit();
        let seen = h.join().unwrap();
        assert_eq!(&seen[1..4], ["AUTH LOGIN", "dQ==", "cA=="], "{seen:?}");
    }

    #[test]
    fn auth_refusals_are_auth_errors() {
        for answer in [
            (|l: &str| l.starts_with("AUTH").then_some("535 5.7.8 bad credentials"))
                as fn(&str) -> Option<&'static str>,
            |l| l.starts_with("AUTH").then_some("454 4.7.0 try later"),
            |l| l.starts_with("AUTH").then_some("534 5.7.9 too weak"),
        ] {
            let (addr, _h) = scripted("250-test\r\n250 AUTH PLAIN\r\n", answer);
            match open_auth(addr, true) {
                Err(ClientError::Auth(AuthError::Refused(r))) => {
                    assert!([535, 454, 534].contains(&r.code().value()))
                }
                other => panic!("{other:?}"),
            }
        }
        let (addr, _h) = scripted("250 test\r\n", |_| None);
        assert!(matches!(
            open_auth(addr, true),
            Err(ClientError::Auth(AuthError::NotOffered))
        ));
        let (addr, _h) = scripted("250-test\r\n250 AUTH CRAM-MD5\r\n", |_| None);
        assert!(matches!(
            open_auth(addr, true),
            Err(ClientError::Auth(AuthError::NoMechanism(_)))
        ));
    }

    #[test]
    fn auth_is_never_sent_in_plaintext_by_default() {
        let (addr, h) = scripted("250-test\r\n250 AUTH PLAIN LOGIN\r\n", |l| {
            l.starts_with("AUTH").then_some("235 2.7.0 ok")
        });
        assert!(matches!(
            open_auth(addr, false),
            Err(ClientError::Auth(AuthError::NotOverTls))
        ));
        let seen = h.join().unwrap();
        assert!(!seen.iter().any(|l| l.starts_with("AUTH")), "{seen:?}");
    }

    #[test]
    fn refused_connection_and_silent_server() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        drop(l);
        assert!(matches!(
            Connection::open(addr, "me", Timeouts::all(Duration::from_secs(2))),
            Err(ClientError::Connect(_))
        ));
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let start = Instant::now();
        let r = Connection::open(addr, "me", Timeouts::all(Duration::from_millis(300)));
        assert!(
            matches!(r, Err(ClientError::Timeout(Phase::Greeting))),
            "{r:?}"
        );
        assert!(start.elapsed() < Duration::from_secs(5));
        drop(l);
    }
}
