//! The SMTP server session (RFC 5321, rooted in RFC 821's MAIL/RCPT/DATA).
//!
//! Two halves: `Session` here is the pure state machine (a `Command` in,
//! a `Step` out, no I/O); `conn::run` is the blocking loop that reads
//! lines from the socket, feeds the machine and writes replies through
//! its one writer. `auth` holds AUTH (the command's checks and the SASL
//! dialogue), `message` the DATA/BDAT intake into the spool, the envelope
//! and the checks at the end of the data. The loop never answers 250 to
//! DATA before `Incoming::commit` returned: that reply is the promise
//! that the message survives a crash.
//!
//! Every phase change goes through `Session::enter`, which logs it at
//! trace level (OpenSMTPD's `smtp_enter_state`).

mod auth;
mod authres;
mod conn;
mod filter;
mod fixup;
mod inbound;
mod message;

use std::net::IpAddr;

use crate::auth::Mechanism;
use crate::config::{Config, ListenMode};
use crate::sender_map::SenderMap;
use crate::smtp::{Command, Host, MailParams, Path, RcptDsn, RcptTarget, Reply, ReversePath};
use crate::tls::TlsInfo;

pub use conn::{run, Context, SpaceCheck};

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
    /// DNS list verdict, policy connection, PREPEND/HOLD (issue 13).
    edge: inbound::EdgeState,
    /// SPF of the transaction, our header's length (issue 14).
    authres: authres::AuthState,
    /// The filter stage (access rules, recipient validation), if any.
    gate: Option<&'a crate::check::Gate>,
    /// The client's reverse name, looked up once, when a rule needs it.
    ptr: std::cell::OnceCell<Option<String>>,
    /// Refused at connect: only QUIT is served (RFC 5321 §3.1).
    refused: bool,
    /// A `hold` rule matched at connect/HELO, or in this transaction.
    hold_session: bool,
    hold_tx: bool,
    /// The filter stage's word on the reply it just decided, for the
    /// reply writer's one log line (`metrics::reply`).
    refusal: Option<crate::metrics::Refusal>,
    /// The listener's mode: implicit TLS, submission (RFC 6409).
    mode: ListenMode,
    /// `--sender-map`, loaded at start.
    senders: Option<&'a SenderMap>,
    /// Every phase change, old → new, as `enter` saw it.
    #[cfg(test)]
    entered: Vec<(&'static str, &'static str)>,
}

impl Phase {
    /// The phase's name in logs.
    pub fn name(&self) -> &'static str {
        match self {
            Phase::Connected => "connected",
            Phase::Ready { .. } => "ready",
            Phase::Mail { .. } => "mail",
        }
    }
}

impl<'a> Session<'a> {
    pub fn new(cfg: &'a Config, client: IpAddr) -> Session<'a> {
        Session::on_listener(cfg, client, ListenMode::PLAIN, None)
    }

    /// A session on a listener of `mode`, with the sender map if any.
    pub fn on_listener(
        cfg: &'a Config,
        client: IpAddr,
        mode: ListenMode,
        senders: Option<&'a SenderMap>,
    ) -> Session<'a> {
        Session {
            mode,
            senders,
            cfg,
            client: client.to_canonical(),
            phase: Phase::Connected,
            errors: 0,
            tls: None,
            auth: None,
            auth_failures: 0,
            edge: inbound::EdgeState::default(),
            authres: authres::AuthState::default(),
            gate: None,
            ptr: std::cell::OnceCell::new(),
            refused: false,
            hold_session: false,
            hold_tx: false,
            refusal: None,
            #[cfg(test)]
            entered: Vec::new(),
        }
    }

    /// The one way the phase changes: logged old → new at trace level
    /// (OpenSMTPD's `smtp_enter_state`).
    fn enter(&mut self, new: Phase) {
        log::trace!(
            "{} phase {} -> {}",
            self.client,
            self.phase.name(),
            new.name()
        );
        #[cfg(test)]
        self.entered.push((self.phase.name(), new.name()));
        self.phase = new;
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
        self.enter(Phase::Connected);
    }

    /// The authenticated user, if any.
    pub fn user(&self) -> Option<&str> {
        self.auth.as_deref()
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
    /// A rule of the filter stage refused with `reply`: the writer logs
    /// and counts it under `reason`, with the rule (one line per refusal).
    pub(super) fn refuse(
        &mut self,
        reason: crate::metrics::Reason,
        stage: Option<&'static str>,
        rule: String,
        reply: &Reply,
    ) {
        self.refusal = Some(crate::metrics::Refusal {
            reason,
            stage,
            rule,
            reply: reply.clone(),
        });
    }

    /// The refusal noted since the last reply, for the reply writer.
    pub(super) fn take_refusal(&mut self) -> Option<crate::metrics::Refusal> {
        self.refusal.take()
    }

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
        // RFC 5321 §3.1: after a 554 greeting, only QUIT
        if self.refused && cmd != Command::Quit {
            return Step::Reply(Reply::bad_sequence("Connection refused; send QUIT"));
        }
        match cmd {
            // RFC 5321 §4.1.4: EHLO/HELO may come at any time and reset
            // the state as RSET does.
            Command::Ehlo(name) => {
                if let Some(r) = self.filter_helo(&name) {
                    return Step::Reply(r);
                }
                let reply = Reply::ehlo(host, &name, &self.ehlo_keywords());
                self.enter(Phase::Ready {
                    helo: Helo { name, esmtp: true },
                });
                Step::Reply(reply)
            }
            Command::Helo(name) => {
                if let Some(r) = self.filter_helo(&name) {
                    return Step::Reply(r);
                }
                let reply = Reply::helo(host, &name);
                self.enter(Phase::Ready {
                    helo: Helo { name, esmtp: false },
                });
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
                    let helo = helo.clone();
                    self.enter(Phase::Ready { helo });
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
        // RFC 8689 §4: REQUIRETLS only once TLS is active
        if self.tls.is_some() {
            k.push("REQUIRETLS".into());
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
        // RFC 6409 §4.3 / RFC 4954 §6: submission takes MAIL only after AUTH
        if self.mode.submission && self.auth.is_none() {
            return Step::Reply(Reply::auth_required());
        }
        if let Some(user) = self.auth.as_deref() {
            if !self.owns_sender(user, &from) {
                return Step::Reply(Reply::sender_not_owned(user));
            }
        }
        // RFC 5321 §4.1.1.11 / §2.2.1: parameters are for EHLO sessions only.
        if !helo.esmtp && params != MailParams::default() {
            return Step::Reply(Reply::unsupported_parameter("(parameters require EHLO)"));
        }
        // RFC 8689 §4.1: REQUIRETLS is only taken over TLS (it is not
        // offered before); 530 5.7.10 as for a server requiring TLS
        if params.requiretls && self.tls.is_none() {
            return Step::Reply(Reply::requiretls_needs_tls());
        }
        // RFC 1870 §6.1: a declared size above the maximum → 552 at MAIL.
        if params.size.is_some_and(|s| s > self.cfg.max_size) {
            return Step::Reply(Reply::too_big(self.cfg.max_size));
        }
        if let Some(r) = self.filter_mail(&helo.name, &from) {
            return Step::Reply(r);
        }
        self.enter(Phase::Mail {
            helo,
            tx: Transaction {
                from,
                params,
                rcpts: Vec::new(),
                chunking: false,
            },
        });
        Step::Reply(Reply::sender_ok())
    }

    /// Sender ownership (RFC 6409 §6.1: the MSA may check the sender is
    /// the user's): by `--sender-map` on every listener when there is one;
    /// without one, on submission listeners, the user name when it is an
    /// address; on other listeners any sender, as before AUTH had a map.
    /// The null sender names no one and is always allowed.
    fn owns_sender(&self, user: &str, from: &ReversePath) -> bool {
        from.mailbox().is_none_or(|m| self.owns_mailbox(user, m))
    }

    /// Whether sender ownership is checked in this session: with a map,
    /// or on a submission listener.
    fn checks_senders(&self) -> bool {
        self.senders.is_some() || self.mode.submission
    }

    fn owns_mailbox(&self, user: &str, mailbox: &crate::smtp::Mailbox) -> bool {
        let address = mailbox.to_string();
        let domain = mailbox.host().to_string();
        match self.senders {
            Some(map) => map.owns(user, &address, &domain),
            None if self.mode.submission => crate::sender_map::owns_by_name(user, &address),
            None => true,
        }
    }

    fn rcpt(&mut self, target: RcptTarget, dsn: RcptDsn) -> Step {
        // an authenticated client may relay anywhere (RFC 4954 §1); on a
        // submission listener only an authenticated one (RFC 6409 §4.3)
        let client_may_relay =
            self.auth.is_some() || (!self.mode.submission && self.cfg.is_relay_client(self.client));
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
            // RFC 5321 §4.5.1: <Postmaster> must be accepted; it goes to
            // the configured postmaster, past relay control and filters
            RcptTarget::Postmaster => match self.cfg.postmaster() {
                Some(p) => {
                    if !tx.rcpts.iter().any(|(q, _)| *q == p) {
                        if tx.rcpts.len() >= self.cfg.max_recipients {
                            return Step::Reply(Reply::too_many_recipients());
                        }
                        tx.rcpts.push((p, dsn));
                    }
                    return Step::Reply(Reply::recipient_ok());
                }
                None => {
                    return Step::Reply(Reply::no_such_user(
                        "No postmaster address is configured; use postmaster@domain",
                    ))
                }
            },
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
        let (helo, from) = (helo.name.clone(), tx.from.clone());
        if let Some(r) = self.filter_rcpt(&helo, &from, &path) {
            return Step::Reply(r);
        }
        if let Phase::Mail { tx, .. } = &mut self.phase {
            tx.rcpts.push((path, dsn));
        }
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
            let helo = helo.clone();
            self.enter(Phase::Ready { helo });
        }
    }
}
#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::smtp::command;
    use crate::smtp::data::DataSummary;
    use crate::spool::QueueId;

    fn cfg() -> Config {
        let mut c = Config::new();
        c.hostname = "relay.test".into();
        c.max_size = 1000;
        c.max_recipients = 2;
        c.relay_domains = vec![crate::smtp::Domain::parse("open.example", false).unwrap()];
        c
    }

    /// The reply code `line` gets (also used by filter.rs's tests).
    pub(crate) fn code(s: &mut Session, line: &str) -> u16 {
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

    const SUBMISSION: ListenMode = ListenMode {
        implicit_tls: false,
        submission: true,
        auth_results: false,
    };

    fn tls_info() -> crate::tls::TlsInfo {
        crate::tls::TlsInfo {
            version: "TLSv1.3".into(),
            cipher: "TLS13_AES_128_GCM_SHA256".into(),
        }
    }

    /// RFC 6409 §4.3, RFC 4954 §4/§6: on a submission listener AUTH comes
    /// only over TLS (loopback or not), MAIL only after AUTH, and relay
    /// networks do not count.
    #[test]
    fn submission_requires_auth_over_tls() {
        let mut c = cfg();
        c.auth_file = Some("/nonexistent".into());
        c.relay_nets = vec![crate::config::Cidr::parse("127.0.0.0/8").unwrap()];
        let mut s = Session::on_listener(&c, "127.0.0.1".parse().unwrap(), SUBMISSION, None);
        let ehlo = s.step(command::parse(b"EHLO c.example"));
        assert!(
            !ehlo.reply().to_string().contains("AUTH"),
            "{}",
            ehlo.reply()
        );
        assert_eq!(code(&mut s, "AUTH PLAIN AGFAYg=="), 538);
        let r = s.step(command::parse(b"MAIL FROM:<a@b.example>"));
        assert_eq!(r.reply().to_string(), "530 5.7.0 Authentication required");
        s.tls_started(tls_info());
        let ehlo = s.step(command::parse(b"EHLO c.example"));
        assert!(ehlo.reply().to_string().contains("AUTH PLAIN LOGIN"));
        assert_eq!(code(&mut s, "MAIL FROM:<a@b.example>"), 530);
        // --submission-plaintext-auth: offered before TLS as well
        c.submission_plaintext_auth = true;
        let mut s = Session::on_listener(&c, "192.0.2.9".parse().unwrap(), SUBMISSION, None);
        code(&mut s, "EHLO c.example");
        assert!(matches!(
            s.step(command::parse(b"AUTH PLAIN")),
            Step::Auth(_)
        ));
        // a plain listener is as before: relay networks relay, no AUTH needed
        let mut s = Session::new(&c, "127.0.0.1".parse().unwrap());
        code(&mut s, "EHLO c.example");
        code(&mut s, "MAIL FROM:<a@b.example>");
        assert_eq!(code(&mut s, "RCPT TO:<u@elsewhere.example>"), 250);
    }

    /// Sender ownership: by the map on any listener; without a map the
    /// user name on submission listeners, anything on plain ones; `<>`
    /// always.
    #[test]
    fn sender_ownership() {
        let c = cfg();
        let map = SenderMap::parse("alice: @example.org\n").unwrap();
        let try_from = |mode, map, user: &str, from: &str| {
            let mut s = Session::on_listener(&c, "127.0.0.1".parse().unwrap(), mode, map);
            code(&mut s, "EHLO c.example");
            s.authenticated(user.to_string());
            let step = s.step(command::parse(format!("MAIL FROM:{from}").as_bytes()));
            step.reply().to_string()
        };
        let refused = "553 5.7.1 Sender address rejected: not owned by user alice";
        let plain = ListenMode::PLAIN;
        assert_eq!(
            try_from(SUBMISSION, Some(&map), "alice", "<a@example.org>"),
            "250 2.1.0 Sender OK"
        );
        assert_eq!(
            try_from(SUBMISSION, Some(&map), "alice", "<ceo@bigbank.test>"),
            refused
        );
        assert_eq!(
            try_from(plain, Some(&map), "alice", "<ceo@bigbank.test>"),
            refused
        );
        assert!(try_from(SUBMISSION, Some(&map), "bob", "<b@example.org>").starts_with("553"));
        assert!(try_from(SUBMISSION, Some(&map), "alice", "<>").starts_with("250"));
        // no map
        assert!(try_from(SUBMISSION, None, "alice", "<alice@example.org>").starts_with("553"));
        assert!(try_from(SUBMISSION, None, "b@example.org", "<B@example.org>").starts_with("250"));
        assert!(try_from(SUBMISSION, None, "b@example.org", "<c@example.org>").starts_with("553"));
        assert!(try_from(plain, None, "alice", "<ceo@bigbank.test>").starts_with("250"));
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

    /// Every phase change goes through `enter`: EHLO, MAIL, RSET, MAIL,
    /// the end of DATA, HELO and a TLS restart each show up once, old →
    /// new, and commands that change no phase add nothing.
    #[test]
    fn phase_changes_go_through_enter() {
        let c = cfg();
        let mut s = Session::new(&c, "127.0.0.1".parse().unwrap());
        for line in [
            "NOOP",
            "EHLO c.example",
            "MAIL FROM:<a@b.example>",
            "RCPT TO:<x@y.example>",
            "RSET",
            "RSET",
            "MAIL FROM:<a@b.example>",
            "RCPT TO:<x@y.example>",
        ] {
            s.step(command::parse(line.as_bytes()));
        }
        assert!(matches!(s.step(Ok(Command::Data)), Step::StartData(_)));
        s.end_transaction();
        s.step(command::parse(b"HELO c.example"));
        s.tls_started(crate::tls::TlsInfo {
            version: "TLSv1.3".into(),
            cipher: "TLS13_AES_128_GCM_SHA256".into(),
        });
        assert_eq!(
            s.entered,
            [
                ("connected", "ready"),
                ("ready", "mail"),
                ("mail", "ready"),
                ("ready", "mail"),
                ("mail", "ready"),
                ("ready", "ready"),
                ("ready", "connected"),
            ]
        );
        assert_eq!(s.phase().name(), "connected");
    }
}
