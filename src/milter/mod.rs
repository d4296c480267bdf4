//! The milter client (Sendmail/Postfix milter protocol, version 6):
//! each session talks to its listener's milters, in order, over its own
//! blocking connections (no state shared between sessions), and honours
//! their replies at every step and their changes at the end of the
//! message.
//!
//! - `protocol.rs`: the packets, without I/O;
//! - `conn.rs`: one milter's socket, every wait bounded by a deadline;
//! - `edit.rs`: the header fields and body as milters change them;
//! - `spooled.rs`: the end of message on the spool file, and the
//!   envelope changes;
//! - this file: the per-session [`Conversation`]; the settings are plain
//!   data in `config/milter.rs`.
//!
//! A milter that cannot be reached, is too slow, or answers what the
//! protocol does not allow is a fault: logged at WARN, its connection
//! closed for the rest of the session, and its default action applied
//! (`tempfail`: the session's mail gets `451 4.7.1`; `accept`: it is
//! left out).

pub mod conn;
pub mod edit;
pub mod protocol;
pub mod spooled;

use std::io::{Read, Seek, SeekFrom};
use std::time::{Duration, Instant};

pub use crate::config::milter::{DefaultAction, MilterConfig};
use crate::config::ListenMode;
pub use crate::edge::policy::Target;
use crate::smtp::reply::Enhanced;
use crate::smtp::Reply;
use conn::{Link, LinkError};
use edit::Headers;
use protocol::{act, cmd, step, Event, Garbage, Response};

/// Where one milter stands in the session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Active,
    /// Accepted the connection: no more events this session.
    AcceptedConnection,
    /// Accepted the message: no more events until the next MAIL.
    AcceptedMessage,
    /// Faulted: its default action applies for the rest of the session.
    Down,
}

struct Milter {
    cfg: MilterConfig,
    link: Option<Link>,
    actions: u32,
    steps: u32,
    state: State,
    /// Events of a message were sent and no end of message closed it:
    /// the next transaction starts with `SMFIC_ABORT`.
    in_message: bool,
    /// The macros it asked for per stage (`SMFIF_SETSYMLIST`); `None`:
    /// our default set.
    wanted: [Option<Vec<String>>; protocol::MACRO_STAGES as usize],
}

/// What a milter's words mean for the command or message at hand.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Continue,
    /// Refuse the command (or message) with this reply.
    Refuse(Reply),
    /// Accept the message with 250, but queue nothing.
    Discard,
    /// Send this reply and end the session (`SMFIR_SHUTDOWN`).
    Close(Reply),
}

/// One milter's answer to one event.
enum Answer {
    Continue,
    Accept,
    Skip,
    Verdict(Verdict),
}

/// The changes milters made at the end of the message.
#[derive(Debug, Default)]
pub struct Changes {
    pub headers: Headers,
    /// Where the body starts in the received file.
    pub body_at: u64,
    pub body: Option<Vec<u8>>,
    pub sender: Option<String>,
    pub added: Vec<String>,
    pub deleted: Vec<String>,
    pub quarantine: Option<String>,
}

impl Changes {
    /// The message file must be rewritten.
    pub fn content_changed(&self) -> bool {
        self.headers.changed || self.body.is_some()
    }
}

/// The `{daemon_name}` macro: what OpenDKIM's `MTA` setting matches.
pub const DAEMON_NAME: &str = "smtp-relay";

/// The macros of one event, `(name, value)`.
pub type Macros = Vec<(&'static str, String)>;

/// The reply for `SMFIR_REJECT` (Postfix's).
pub fn rejected() -> Reply {
    Reply::new(550, Enhanced::new(5, 7, 1), "Command rejected")
}

/// The reply for `SMFIR_TEMPFAIL` and for a faulted milter whose
/// default action is tempfail (Postfix's).
pub fn tempfailed() -> Reply {
    Reply::new(
        451,
        Enhanced::new(4, 7, 1),
        "Service unavailable - try again later",
    )
}

/// `SMFIR_SHUTDOWN`: the milter asks us to close the session (RFC 5321
/// §3.8: 421).
pub fn shut_down(hostname: &str) -> Reply {
    Reply::new(
        421,
        Enhanced::new(4, 7, 0),
        format!("{hostname} closing connection"),
    )
}

/// Most lines of a milter's reply we pass on, and most octets per line.
const MAX_REPLY_LINES: usize = 10;
const MAX_REPLY_LINE: usize = 400;
/// Most modifications one milter may make to one message.
const MAX_CHANGES: usize = 1000;

/// A milter's `SMFIR_REPLYCODE` text made into a reply: every line
/// `4yz` or `5yz` with the same code, an enhanced code of the same class
/// (or none), printable text (control and 8-bit octets become `?`),
/// multi-line replies kept (`550-5.7.1 ...`), up to 10 lines of 400.
/// Anything else is garbage.
pub fn custom_reply(text: &str) -> Result<Reply, Garbage> {
    let bad = |why: &str| Garbage(format!("reply code {why}: {text:?}"));
    let mut code = None;
    let mut enhanced = None;
    let mut lines = Vec::new();
    for raw in text.split('\n').map(|l| l.trim_end_matches('\r')) {
        if raw.is_empty() && !lines.is_empty() {
            continue;
        }
        let n: u16 = raw
            .get(..3)
            .and_then(|c| c.parse().ok())
            .ok_or_else(|| bad("without a code"))?;
        if !(400..600).contains(&n) || code.is_some_and(|c| c != n) {
            return Err(bad("not one 4xx or 5xx"));
        }
        code = Some(n);
        let rest = match raw.as_bytes().get(3) {
            None => "",
            Some(b' ' | b'-') => &raw[4..],
            Some(_) => return Err(bad("malformed")),
        };
        let (e, rest) = match rest.split_once(' ') {
            Some((first, t)) => match Enhanced::parse(first) {
                Some(e) => (Some(e), t),
                None => (None, rest),
            },
            None => (
                Enhanced::parse(rest),
                if Enhanced::parse(rest).is_some() {
                    ""
                } else {
                    rest
                },
            ),
        };
        if let Some(e) = e {
            if u16::from(e.class) != n / 100 {
                return Err(bad("with an enhanced code of another class"));
            }
            enhanced = enhanced.or(Some(e));
        }
        let clean: String = rest
            .chars()
            .take(MAX_REPLY_LINE)
            .map(|c| {
                if c.is_ascii() && !c.is_ascii_control() {
                    c
                } else {
                    '?'
                }
            })
            .collect();
        if lines.len() < MAX_REPLY_LINES {
            lines.push(clean);
        }
    }
    let n = code.ok_or_else(|| bad("empty"))?;
    // RFC 2034 §4 wants an enhanced code on 4yz/5yz replies
    let e = enhanced.unwrap_or(Enhanced::new((n / 100) as u8, 7, 1));
    let mut reply = Reply::new(n, e, lines.remove(0));
    for l in lines {
        reply = reply.with_line(l);
    }
    Ok(reply)
}

impl Milter {
    fn name(&self) -> String {
        self.cfg.target.to_string()
    }

    /// Connects and negotiates: version 6, every action and step we can
    /// do offered; the milter's choice must be a subset.
    fn open(&mut self) -> Result<(), LinkError> {
        let deadline = Instant::now() + self.cfg.connect_timeout;
        let mut link = Link::open(&self.cfg.target, self.cfg.connect_timeout)?;
        link.send(&protocol::optneg(act::ALL, step::OFFERED), deadline)?;
        let (c, data) = link.recv(deadline)?;
        let Response::OptNeg {
            version,
            actions,
            steps,
            macro_lists,
        } = protocol::parse(c, &data)?
        else {
            return Err(Garbage("no option negotiation".into()).into());
        };
        if !(2..=protocol::VERSION).contains(&version) {
            return Err(Garbage(format!("protocol version {version}")).into());
        }
        if actions & !act::ALL != 0 || steps & !(step::OFFERED | step::MDS) != 0 {
            return Err(Garbage(format!(
                "asks for what was not offered: actions 0x{actions:x}, steps 0x{steps:x}"
            ))
            .into());
        }
        log::debug!(
            "milter {}: version {version} actions 0x{actions:x} steps 0x{steps:x}",
            self.name()
        );
        self.wanted = Default::default();
        if actions & act::SETSYMLIST != 0 {
            for (stage, names) in macro_lists {
                self.wanted[stage as usize] = Some(names);
            }
        } else if !macro_lists.is_empty() {
            log::debug!(
                "milter {}: macro lists without SMFIF_SETSYMLIST, ignored",
                self.name()
            );
        }
        (self.actions, self.steps, self.link) = (actions, steps, Some(link));
        Ok(())
    }

    /// Sends the event (its macros first) and reads the reply, unless
    /// the milter said it sends none; `SMFIR_PROGRESS` keeps waiting,
    /// within the same deadline.
    fn exchange(
        &mut self,
        event: Event,
        macros: &Macros,
        packet: &[u8],
        deadline: Instant,
    ) -> Result<Option<Response>, LinkError> {
        let Some(link) = self.link.as_mut() else {
            return Err(LinkError::Io(std::io::Error::other("not connected")));
        };
        let wanted = event
            .macro_stage()
            .and_then(|stage| self.wanted[stage as usize].as_deref());
        let macros = match wanted {
            Some(names) => asked(macros, names),
            None => macros.clone(),
        };
        if !macros.is_empty() {
            link.send(&protocol::macros(event.command(), &macros), deadline)?;
        }
        link.send(packet, deadline)?;
        if self.steps & event.no_reply() != 0 {
            return Ok(None);
        }
        loop {
            let (c, data) = link.recv(deadline)?;
            match protocol::parse(c, &data)? {
                Response::Progress => continue,
                r => return Ok(Some(r)),
            }
        }
    }

    /// One event's reply, as a verdict on the command at hand.
    fn answer(
        &self,
        event: Event,
        response: Option<Response>,
        hostname: &str,
    ) -> Result<Answer, Garbage> {
        Ok(match response {
            None | Some(Response::Continue) => Answer::Continue,
            Some(Response::Accept) => Answer::Accept,
            Some(Response::Reject) => Answer::Verdict(Verdict::Refuse(rejected())),
            Some(Response::Tempfail) => Answer::Verdict(Verdict::Refuse(tempfailed())),
            Some(Response::ReplyCode(t)) => Answer::Verdict(Verdict::Refuse(custom_reply(&t)?)),
            Some(Response::Discard) => Answer::Verdict(Verdict::Discard),
            Some(Response::Shutdown) => Answer::Verdict(Verdict::Close(shut_down(hostname))),
            Some(Response::Skip) if event == Event::Body && self.steps & step::SKIP != 0 => {
                Answer::Skip
            }
            Some(other) => return Err(Garbage(format!("{other:?} in reply to {}", event.name()))),
        })
    }

    /// One event to this milter: its verdict, `None` to go on.
    fn deliver(
        &mut self,
        event: Event,
        macros: &Macros,
        packet: &[u8],
        hostname: &str,
    ) -> Option<Verdict> {
        match self.state {
            State::Down => self.down_verdict(event),
            State::AcceptedConnection | State::AcceptedMessage => None,
            State::Active if self.steps & event.not_wanted() != 0 => None,
            State::Active => {
                let deadline = Instant::now() + self.cfg.command_timeout;
                self.in_message |= event.is_message();
                let answer = self
                    .exchange(event, macros, packet, deadline)
                    .and_then(|r| self.answer(event, r, hostname).map_err(LinkError::from));
                match answer {
                    Err(e) => self.fault(event, &e),
                    Ok(Answer::Continue | Answer::Skip) => None,
                    Ok(Answer::Accept) => {
                        self.state = if event.is_message() {
                            State::AcceptedMessage
                        } else {
                            State::AcceptedConnection
                        };
                        None
                    }
                    Ok(Answer::Verdict(v)) => Some(v),
                }
            }
        }
    }

    /// A fault: logged, the connection closed, the default action taken.
    fn fault(&mut self, event: Event, why: &LinkError) -> Option<Verdict> {
        log::warn!(
            "milter {} at {}: {why}; default action {:?}",
            self.name(),
            event.name(),
            self.cfg.default_action
        );
        self.link = None;
        self.state = State::Down;
        self.down_verdict(event)
    }

    /// What a faulted milter means for an event: a message event gets
    /// the tempfail of the default action; connect and HELO go on (the
    /// refusal comes at MAIL, as Postfix does).
    fn down_verdict(&self, event: Event) -> Option<Verdict> {
        (self.cfg.default_action == DefaultAction::Tempfail && event.is_message())
            .then(|| Verdict::Refuse(tempfailed()))
    }
}

/// The macros of `ours` a milter's list names (Sendmail's rule: a stage
/// with a list gets those macros only, the ones we have). A name may be
/// written with or without its braces.
fn asked(ours: &Macros, names: &[String]) -> Macros {
    let bare = |n: &str| n.trim_start_matches('{').trim_end_matches('}').to_string();
    let names: Vec<String> = names.iter().map(|n| bare(n)).collect();
    ours.iter()
        .filter(|(n, _)| names.contains(&bare(n)))
        .cloned()
        .collect()
}

/// A session's milters and where each stands.
#[derive(Default)]
pub struct Conversation {
    milters: Vec<Milter>,
    hostname: String,
    /// A milter said DISCARD for the message (or, at connect or HELO,
    /// for every message of the session).
    discard_message: bool,
    discard_session: bool,
    /// The milter whose refusal was returned last, for the refusal's
    /// log line.
    refused_by: Option<String>,
    /// The connect and HELO events as sent, replayed to a milter that is
    /// reconnected.
    replay: Vec<(Event, Macros, Vec<u8>)>,
}

impl Conversation {
    /// The milters of a listener of `mode`; none are contacted yet.
    pub fn new(all: &[MilterConfig], mode: ListenMode, hostname: &str) -> Conversation {
        Conversation::of(all.iter().filter(|c| c.serves(mode)), hostname)
    }

    /// The milters of mail injected on this host (`listeners=local`).
    pub fn local(all: &[MilterConfig], hostname: &str) -> Conversation {
        Conversation::of(all.iter().filter(|c| c.serves_local()), hostname)
    }

    fn of<'a>(milters: impl Iterator<Item = &'a MilterConfig>, hostname: &str) -> Conversation {
        Conversation {
            milters: milters
                .map(|cfg| Milter {
                    cfg: cfg.clone(),
                    link: None,
                    actions: 0,
                    steps: 0,
                    state: State::Active,
                    in_message: false,
                    wanted: Default::default(),
                })
                .collect(),
            hostname: hostname.to_string(),
            discard_message: false,
            discard_session: false,
            refused_by: None,
            replay: Vec::new(),
        }
    }

    /// `inet:...`/`unix:...` of the milter that gave the last refusal.
    pub fn take_refuser(&mut self) -> String {
        self.refused_by.take().unwrap_or_default()
    }

    pub fn is_empty(&self) -> bool {
        self.milters.is_empty()
    }

    /// Whether the current message is to be discarded.
    pub fn discards(&self) -> bool {
        self.discard_message || self.discard_session
    }

    /// One event to every milter in order, until one refuses.
    fn event(&mut self, event: Event, macros: &Macros, packet: &[u8]) -> Verdict {
        let hostname = self.hostname.clone();
        if event.is_message() && self.discards() {
            return Verdict::Continue;
        }
        for m in &mut self.milters {
            let verdict = m.deliver(event, macros, packet, &hostname);
            match verdict {
                None | Some(Verdict::Continue) => {}
                Some(Verdict::Discard) => {
                    log::info!("milter {} at {}: discard", m.name(), event.name());
                    if event.is_message() {
                        self.discard_message = true;
                    } else {
                        self.discard_session = true;
                    }
                    return Verdict::Continue;
                }
                Some(v) => {
                    log::debug!("milter {} at {}: {v:?}", m.name(), event.name());
                    self.refused_by = Some(m.name());
                    return v;
                }
            }
        }
        Verdict::Continue
    }

    /// Connect: each milter is reached and negotiated with, then told of
    /// the client (RFC-less; libmilter's `xxfi_connect`).
    pub fn connect(
        &mut self,
        client_name: &str,
        client: std::net::SocketAddr,
        macros: &Macros,
    ) -> Verdict {
        for m in &mut self.milters {
            if let Err(e) = m.open() {
                m.fault(Event::Connect, &e);
            }
        }
        let packet = protocol::connect(client_name, Some(client));
        self.replay = vec![(Event::Connect, macros.clone(), packet.clone())];
        self.event(Event::Connect, macros, &packet)
    }

    pub fn helo(&mut self, name: &str, macros: &Macros) -> Verdict {
        self.abort();
        let packet = protocol::args(cmd::HELO, &[name.to_string()]);
        // the last HELO is the one a reconnected milter hears
        self.replay.truncate(1);
        self.replay
            .push((Event::Helo, macros.clone(), packet.clone()));
        self.event(Event::Helo, macros, &packet)
    }

    /// MAIL: a new message, so milters still in an old one get
    /// `SMFIC_ABORT` first, and milters that failed earlier in the
    /// session are reconnected.
    pub fn mail(&mut self, args: &[String], macros: &Macros) -> Verdict {
        self.abort();
        if let Some(v) = self.reconnect() {
            return v;
        }
        self.event(Event::Mail, macros, &protocol::args(cmd::MAIL, args))
    }

    /// Sendmail's behaviour for a milter that failed (dropped, timed
    /// out, spoke garbage; a connection it closed between transactions is
    /// seen here first): at the next transaction it is connected
    /// again and hears the session's connect and HELO replayed, so one
    /// dropped connection does not cost every later message of the
    /// session its filter. One try per transaction: a milter still down
    /// keeps its default action for this one. A refusal in the replay is
    /// this MAIL's refusal.
    fn reconnect(&mut self) -> Option<Verdict> {
        let hostname = self.hostname.clone();
        for m in &mut self.milters {
            // one that accepted the connection is done with us anyway
            if m.state == State::Active && m.link.as_ref().is_some_and(Link::peer_closed) {
                log::warn!("milter {}: closed its connection", m.name());
                (m.link, m.state) = (None, State::Down);
            }
            if m.state != State::Down || self.replay.is_empty() {
                continue;
            }
            if let Err(e) = m.open() {
                m.fault(Event::Connect, &e);
                continue;
            }
            m.state = State::Active;
            log::info!(
                "milter {}: reconnected, connect and HELO replayed",
                m.name()
            );
            for (event, macros, packet) in &self.replay {
                match m.deliver(*event, macros, packet, &hostname) {
                    None | Some(Verdict::Continue) => {}
                    Some(Verdict::Discard) => self.discard_session = true,
                    Some(v) => {
                        // closed again: the next MAIL replays, and hears
                        // the same refusal, as the session's connect would
                        m.link = None;
                        m.state = State::Down;
                        self.refused_by = Some(m.name());
                        return Some(v);
                    }
                }
            }
        }
        None
    }

    pub fn rcpt(&mut self, args: &[String], macros: &Macros) -> Verdict {
        self.event(Event::Rcpt, macros, &protocol::args(cmd::RCPT, args))
    }

    pub fn data(&mut self, macros: &Macros) -> Verdict {
        self.event(Event::Data, macros, &protocol::packet(cmd::DATA, b""))
    }

    /// Ends the message for every milter still in one (`SMFIC_ABORT`,
    /// which has no reply), and forgets message-level accepts.
    pub fn abort(&mut self) {
        for m in &mut self.milters {
            if m.state == State::AcceptedMessage {
                m.state = State::Active;
            }
            if !std::mem::take(&mut m.in_message) {
                continue;
            }
            if let Some(link) = m.link.as_mut() {
                let deadline = Instant::now() + m.cfg.command_timeout;
                if let Err(e) = link.send(&protocol::packet(cmd::ABORT, b""), deadline) {
                    m.fault(Event::Mail, &e);
                }
            }
        }
        self.discard_message = false;
    }

    /// The end of the message: headers, end of headers, body chunks and
    /// end of message to each milter in turn, each seeing the message as
    /// the ones before it changed it. `file` is the received message
    /// (our Received header first); `max_size` bounds a replaced body.
    pub fn end_of_message(
        &mut self,
        file: &mut (impl Read + Seek),
        macros: &Macros,
        max_size: u64,
    ) -> Result<(Verdict, Changes), std::io::Error> {
        let mut changes = read_headers(file, max_size)?;
        if self.discards() {
            return Ok((Verdict::Discard, changes));
        }
        let hostname = self.hostname.clone();
        for i in 0..self.milters.len() {
            let m = &mut self.milters[i];
            let verdict = match m.state {
                State::Down => m.down_verdict(Event::Eom),
                State::AcceptedConnection | State::AcceptedMessage => None,
                State::Active => {
                    let r = eom_one(m, file, macros, &mut changes, max_size, &hostname);
                    match r {
                        Ok(v) => v,
                        Err(e) => m.fault(Event::Eom, &e),
                    }
                }
            };
            match verdict {
                None | Some(Verdict::Continue) => {}
                Some(Verdict::Discard) => {
                    let name = self.milters[i].name();
                    log::info!("milter {name} at eom: discard");
                    self.discard_message = true;
                    return Ok((Verdict::Discard, changes));
                }
                Some(v) => {
                    log::debug!("milter {} at eom: {v:?}", self.milters[i].name());
                    self.refused_by = Some(self.milters[i].name());
                    return Ok((v, changes));
                }
            }
        }
        Ok((Verdict::Continue, changes))
    }
}

impl Drop for Conversation {
    /// `SMFIC_QUIT` to every milter still connected, best effort, within
    /// a second.
    fn drop(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(1);
        for m in &mut self.milters {
            if let Some(link) = m.link.as_mut() {
                let _ = link.send(&protocol::packet(cmd::QUIT, b""), deadline);
            }
        }
    }
}

/// The header section of the received file (up to its empty line, or
/// `max_size` octets), read once; each new block is searched for the
/// empty line with three octets of the one before, so a long header
/// section costs its length, not its square.
fn read_headers(file: &mut (impl Read + Seek), max_size: u64) -> std::io::Result<Changes> {
    file.seek(SeekFrom::Start(0))?;
    let mut text = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        let n = file.read(&mut buf)?;
        let from = text.len().saturating_sub(3);
        text.extend_from_slice(&buf[..n]);
        let tail = &text[from..];
        let ended =
            tail.windows(2).any(|w| w == b"\n\n") || tail.windows(4).any(|w| w == b"\r\n\r\n");
        if n == 0 || ended || text.len() as u64 > max_size {
            break;
        }
    }
    let (headers, body_at) = Headers::parse(&text);
    Ok(Changes {
        headers,
        body_at: body_at as u64,
        ..Changes::default()
    })
}

/// Headers, end of headers, body and end of message to one milter, its
/// modifications applied to `changes`.
fn eom_one(
    m: &mut Milter,
    file: &mut (impl Read + Seek),
    macros: &Macros,
    changes: &mut Changes,
    max_size: u64,
    hostname: &str,
) -> Result<Option<Verdict>, LinkError> {
    m.in_message = true;
    let lead = m.steps & step::HDR_LEADSPC != 0;
    let none = Macros::new();
    let mut content = Vec::new();
    if m.steps & step::NOHDRS == 0 {
        for f in &changes.headers.fields {
            content.push((
                Event::Header,
                protocol::header(&f.name, &Headers::shown_value(f, lead)),
            ));
        }
    }
    if m.steps & step::NOEOH == 0 {
        content.push((Event::Eoh, protocol::packet(cmd::EOH, b"")));
    }
    for (event, packet) in content {
        let deadline = Instant::now() + m.cfg.command_timeout;
        let macros = if event == Event::Eoh { macros } else { &none };
        let r = m.exchange(event, macros, &packet, deadline)?;
        match m.answer(event, r, hostname)? {
            Answer::Continue | Answer::Skip => {}
            Answer::Accept => {
                m.state = State::AcceptedMessage;
                return Ok(None);
            }
            Answer::Verdict(v) => return Ok(Some(v)),
        }
    }
    if m.steps & step::NOBODY == 0 {
        if let Some(v) = send_body(m, file, changes, hostname)? {
            return Ok(v);
        }
    }
    let deadline = Instant::now() + m.cfg.eom_timeout;
    let first = m.exchange(
        Event::Eom,
        macros,
        &protocol::packet(cmd::BODYEOB, b""),
        deadline,
    )?;
    eom_replies(m, first, deadline, changes, max_size, hostname)
}

/// The end of message's replies: modifications (each one negotiated,
/// at most [`MAX_CHANGES`]) applied to `changes` until the final reply,
/// all before `deadline` (`SMFIR_PROGRESS` does not extend it).
fn eom_replies(
    m: &mut Milter,
    first: Option<Response>,
    deadline: Instant,
    changes: &mut Changes,
    max_size: u64,
    hostname: &str,
) -> Result<Option<Verdict>, LinkError> {
    let mut response = first;
    let mut replaced = false;
    for _ in 0..=MAX_CHANGES {
        let Some(r) = response.take() else {
            return Err(Garbage("no reply to end of message".into()).into());
        };
        if r.action() == 0 {
            m.in_message = false;
            return match m.answer(Event::Eom, Some(r), hostname)? {
                Answer::Continue | Answer::Accept | Answer::Skip => Ok(None),
                Answer::Verdict(v) => Ok(Some(v)),
            };
        }
        if m.actions & r.action() == 0 {
            return Err(Garbage(format!("{r:?} not negotiated")).into());
        }
        apply(r, changes, &mut replaced, max_size)?;
        let link = m.link.as_mut().ok_or(LinkError::Timeout)?;
        while response.is_none() {
            let (c, data) = link.recv(deadline)?;
            response = Some(protocol::parse(c, &data)?).filter(|r| *r != Response::Progress);
        }
    }
    Err(Garbage(format!("over {MAX_CHANGES} modifications")).into())
}

/// The body in chunks of at most 65535 octets: the replacement an
/// earlier milter made, else the received file from `body_at`.
/// `Some(verdict)` when the milter decided during the body.
fn send_body(
    m: &mut Milter,
    file: &mut (impl Read + Seek),
    changes: &Changes,
    hostname: &str,
) -> Result<Option<Option<Verdict>>, LinkError> {
    let mut buf = vec![0u8; protocol::CHUNK];
    let mut offset = 0usize;
    file.seek(SeekFrom::Start(changes.body_at))
        .map_err(LinkError::Io)?;
    loop {
        let n = match &changes.body {
            Some(b) => {
                let n = (b.len() - offset).min(protocol::CHUNK);
                buf[..n].copy_from_slice(&b[offset..offset + n]);
                offset += n;
                n
            }
            None => read_some(file, &mut buf).map_err(LinkError::Io)?,
        };
        if n == 0 {
            return Ok(None);
        }
        let deadline = Instant::now() + m.cfg.command_timeout;
        let r = m.exchange(
            Event::Body,
            &Macros::new(),
            &protocol::packet(cmd::BODY, &buf[..n]),
            deadline,
        )?;
        match m.answer(Event::Body, r, hostname)? {
            Answer::Continue => {}
            Answer::Skip => return Ok(None),
            Answer::Accept => {
                m.state = State::AcceptedMessage;
                return Ok(Some(None));
            }
            Answer::Verdict(v) => return Ok(Some(Some(v))),
        }
    }
}

/// Fills `buf` as far as the file allows (a chunk is full unless it is
/// the last).
fn read_some(file: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match file.read(&mut buf[got..])? {
            0 => break,
            n => got += n,
        }
    }
    Ok(got)
}

/// One modification into `changes`.
fn apply(
    r: Response,
    changes: &mut Changes,
    replaced: &mut bool,
    max_size: u64,
) -> Result<(), Garbage> {
    let bad = |e: edit::BadEdit| Garbage(e.0.to_string());
    match r {
        Response::AddHeader { name, value } => changes.headers.add(&name, &value).map_err(bad)?,
        Response::InsHeader { index, name, value } => {
            changes.headers.insert(index, &name, &value).map_err(bad)?
        }
        Response::ChgHeader { index, name, value } => {
            changes.headers.change(index, &name, &value).map_err(bad)?
        }
        Response::ChgFrom { sender, .. } => changes.sender = Some(sender),
        Response::AddRcpt { rcpt, .. } => changes.added.push(rcpt),
        Response::DelRcpt(rcpt) => changes.deleted.push(rcpt),
        Response::Quarantine(reason) => changes.quarantine = Some(reason),
        Response::ReplBody(chunk) => {
            // the first chunk of this milter's replacement starts it over
            let body = changes.body.get_or_insert_with(Vec::new);
            if !*replaced {
                body.clear();
                *replaced = true;
            }
            if (body.len() + chunk.len()) as u64 > max_size {
                return Err(Garbage("replacement body over the size limit".into()));
            }
            body.extend_from_slice(&chunk);
        }
        other => return Err(Garbage(format!("{other:?} is not a modification"))),
    }
    if changes.headers.fields.len() > MAX_CHANGES * 10 {
        return Err(Garbage("too many header fields".into()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_section_is_read_to_its_empty_line() {
        let mut msg = b"A: 1\r\nB: 2\r\n\r\n".to_vec();
        msg.extend(vec![b'x'; 100_000]);
        let c = read_headers(&mut std::io::Cursor::new(&msg), 1 << 20).unwrap();
        assert_eq!((c.headers.fields.len(), c.body_at), (2, 14));
        // the empty line across two reads
        let mut msg = format!("A: {}\n", "y".repeat(8186)).into_bytes();
        msg.extend_from_slice(b"\nbody");
        let c = read_headers(&mut std::io::Cursor::new(&msg), 1 << 20).unwrap();
        assert_eq!(c.body_at as usize, msg.len() - 4);
        // no empty line at all: bounded by the size
        let msg = vec![b'z'; 3_000_000];
        let c = read_headers(&mut std::io::Cursor::new(&msg), 1 << 20).unwrap();
        assert!(c.headers.fields.is_empty());
    }

    #[test]
    fn custom_replies_are_checked_and_cleaned() {
        let r = custom_reply("550 5.7.1 Go away").unwrap();
        assert_eq!(r.to_string(), "550 5.7.1 Go away");
        let r = custom_reply("451 4.7.1 first\r\n451 4.7.1 second").unwrap();
        assert_eq!(r.lines(), ["first", "second"]);
        assert_eq!(r.code().value(), 451);
        // no enhanced code: one of the reply's class is supplied
        let r = custom_reply("554 no\x07bell\u{e9}").unwrap();
        assert_eq!(r.enhanced(), Some(Enhanced::new(5, 7, 1)));
        assert_eq!(r.lines(), ["no?bell?"]);
        assert_eq!(
            custom_reply(&format!("550 {}", "x".repeat(999)))
                .unwrap()
                .lines()[0]
                .len(),
            MAX_REPLY_LINE
        );
        for bad in [
            "250 ok",
            "hello",
            "",
            "550 5.7.1 a\n451 4.7.1 b",
            "550 4.7.1 class",
            "5501 x",
        ] {
            assert!(custom_reply(bad).is_err(), "{bad:?}");
        }
    }
}
