//! `Envelope`: everything about a queued message except its bytes.
//!
//! Stored as versioned `key: value` text so an operator can `cat` and
//! `grep` the spool. The last line is `end`: an envelope without it was
//! torn and is never trusted (Postfix's END record). Fields with free text
//! (HELO names, remote replies) have control characters replaced, so one
//! field is always one line and tabs only ever separate fields.
//!
//! Version 2 (written since the typed delivery status):
//!
//! ```text
//! smtp-relay-envelope: 2
//! id: 0006464A1B2C3D4E
//! arrived: 1795886410
//! client: 127.0.0.1
//! helo: client.example
//! from: <sender@example.org>
//! size: 1234
//! body: 8BITMIME
//! smtputf8: no
//! attempts: 3
//! next-try: 1795886710
//! delay-warned: 1795887000<TAB>0006464A1B2C3D50
//! rcpt: deferred<TAB><user@example.net><TAB>451 4.3.0 try later
//! rcpt-reply: 451<TAB>4.3.0<TAB>remote mx.example.net 192.0.2.1:25<TAB>try later
//! rcpt-dsn: SUCCESS,DELAY<TAB>rfc822;user@example.net
//! rcpt-tries: 3<TAB>1795886411<TAB>1795887400
//! rcpt-attempt: 1795887400<TAB>mx.example.net[192.0.2.1]:25<TAB>451<TAB>4.3.0<TAB>remote mx.example.net 192.0.2.1:25<TAB>try later
//! rcpt: sent<TAB><@relay.example:other@example.com><TAB>250 ok
//! rcpt-reply: 250<TAB>-<TAB>remote mx.example.com 192.0.2.2:25<TAB>ok
//! rcpt-tries: 1<TAB>1795886411<TAB>1795886411
//! rcpt-attempt: 1795886411<TAB>mx.example.com[192.0.2.2]:25<TAB>250<TAB>-<TAB>remote mx.example.com 192.0.2.2:25<TAB>ok
//! end
//! ```
//!
//! The `rcpt-*` lines belong to the `rcpt` line above them. `rcpt-reply`
//! is the recipient's last status as fields (code, enhanced code or `-`,
//! source: `remote NAME ADDR` or `local REASON`, text); the third field of
//! `rcpt` is a readable copy of it and is not read back. `rcpt-tries`
//! counts every attempt (total, first and last time); `rcpt-attempt` keeps
//! the last few in full (relay label, then the status fields).
//! `delay-warned` records the "delayed" DSN (time, its queue id).
//!
//! `auth: NAME` (optional, after `helo`) is the SMTP AUTH user the message
//! was submitted by (RFC 4954); envelopes without it still load.
//!
//! `integrity: RUN<TAB>BODY-LEN<TAB>BODY-CRC32<TAB>ENVELOPE-CRC32`
//! (optional, after `next-try`; see [`Integrity`]) is what the commit
//! recorded to check the message after a power loss; envelopes without it
//! (written before it existed) load and are never checked.
//!
//! `requiretls: yes` (optional, after `envid`) marks a message received
//! with the REQUIRETLS MAIL parameter (RFC 8689 §4.1): it leaves only over
//! verified TLS to a hop that offers REQUIRETLS. Absent means no (so
//! envelopes written before it still load).
//!
//! RFC 3461 DSN requests are optional keys: `ret: FULL|HDRS` and
//! `envid: XTEXT` for the message, and a `rcpt-dsn: NOTIFY<TAB>ORCPT` line
//! (`-` for absent).
//!
//! Version 1 envelopes (free-text `last_reply` and one `attempt:` line per
//! try, `attempt: TIME<TAB>RCPT<TAB>RELAY<TAB>REPLY`, the delay warning as
//! a pseudo-attempt with rcpt `-`) still load: their replies are read into
//! typed statuses once, here, and they are written back as version 2.

use std::collections::VecDeque;
use std::fmt::{self, Write as _};

use super::queue_id::QueueId;
use crate::smtp::command::is_xtext;
use crate::smtp::{Body, MailDsn, Notify, Path, RcptDsn, Ret, ReversePath};
use crate::status::Status;

const MAGIC: &str = "smtp-relay-envelope: 2";
const MAGIC_V1: &str = "smtp-relay-envelope: 1";

/// Where one recipient stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RcptState {
    /// Not tried yet.
    Pending,
    /// Tried, failed temporarily; will be tried again.
    Deferred,
    /// Accepted by the next hop: final, never sent again.
    Sent,
    /// Failed permanently (or expired), and its DSN is not queued yet.
    /// Written before the DSN is made, so a crash between the two still
    /// bounces it at the next attempt.
    Bouncing,
    /// Failed permanently and reported (DSN queued, or none owed because
    /// the sender is null): final.
    Failed,
}

impl RcptState {
    pub fn as_str(self) -> &'static str {
        match self {
            RcptState::Pending => "pending",
            RcptState::Deferred => "deferred",
            RcptState::Sent => "sent",
            RcptState::Bouncing => "bouncing",
            RcptState::Failed => "failed",
        }
    }

    fn parse(s: &str) -> Option<RcptState> {
        Some(match s {
            "pending" => RcptState::Pending,
            "deferred" => RcptState::Deferred,
            "sent" => RcptState::Sent,
            "bouncing" => RcptState::Bouncing,
            "failed" => RcptState::Failed,
            _ => return None,
        })
    }

    /// Sent and Failed are final: the recipient is never tried again.
    pub fn is_final(self) -> bool {
        matches!(self, RcptState::Sent | RcptState::Failed)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recipient {
    /// The forward-path as the client gave it, source route included.
    pub path: Path,
    pub state: RcptState,
    /// The last reply or local decision about this recipient.
    pub last_reply: Option<Status>,
    /// RFC 3461 NOTIFY and ORCPT, as the client gave them.
    pub dsn: RcptDsn,
    /// The attempts at this recipient, for `queue show` and DSNs.
    pub tries: Tries,
}

impl Recipient {
    /// A recipient not tried yet.
    pub fn new(path: Path, dsn: RcptDsn) -> Recipient {
        Recipient {
            path,
            state: RcptState::Pending,
            last_reply: None,
            dsn,
            tries: Tries::default(),
        }
    }
}

/// One delivery try of one recipient.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attempt {
    pub time: u64,
    /// The hop tried (`name[ip]:port`), or `-` when none was reached.
    pub relay: String,
    pub status: Status,
}

/// Attempts kept in full per recipient; older ones are only counted.
pub const KEEP_ATTEMPTS: usize = 5;

/// A recipient's attempts: all of them counted, the last few in full, so
/// an envelope rewritten at every attempt stays the same size however
/// long the message waits.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tries {
    pub total: u32,
    /// Unix seconds of the first and the last attempt (0: none yet).
    pub first: u64,
    pub last: u64,
    /// Oldest first.
    pub recent: VecDeque<Attempt>,
}

impl Tries {
    /// Counts an attempt and keeps it, dropping the oldest kept beyond
    /// `KEEP_ATTEMPTS`.
    pub fn record(&mut self, a: Attempt) {
        if self.total == 0 {
            self.first = a.time;
        }
        self.total = self.total.saturating_add(1);
        self.last = self.last.max(a.time);
        self.recent.push_back(a);
        while self.recent.len() > KEEP_ATTEMPTS {
            self.recent.pop_front();
        }
    }
}

/// The "delayed" DSN sent for a message (`--delay-warning`): once only.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DelayWarned {
    pub time: u64,
    pub dsn: QueueId,
}

/// An operator's hold on a message (`queue hold`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hold {
    /// Until `queue release`.
    Forever,
    /// Releases itself at this Unix time.
    Until(u64),
}

impl Hold {
    /// Whether the hold still applies at `now`.
    pub fn active(self, now: u64) -> bool {
        match self {
            Hold::Forever => true,
            Hold::Until(t) => t > now,
        }
    }
}

/// What the commit recorded to check a message after a power loss: the
/// server run (a random id made at every start, `Spool::run_id`) in which
/// the message's files were last known whole, and the body's length and
/// CRC-32. On disk also the CRC-32 of the envelope's own text without its
/// `integrity:` line, computed at every write (so not kept here; see
/// [`text_is_intact`]).
///
/// Why: on ext4 with a journal the commit renames a message's files into
/// `queue/` and then makes files and names durable with one flush
/// (`committer.rs`), so a power loss during that flush can leave the
/// names over bytes that never reached the disk: zeros, or a recycled
/// file's earlier message. Such a message never had its 250. In another
/// run, an envelope whose text does not match is not loaded
/// (`Spool::load`), and a body that does not match is never read
/// (`claim.rs`): both go to `corrupt/`. A run trusts only what it wrote
/// itself (it is in the page cache); anything older, even from before a
/// `kill -9` in the same boot, is checked once, which costs one read of
/// the body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Integrity {
    /// `None` when no run id could be made: then always checked.
    pub run: Option<String>,
    pub body_len: u64,
    pub body_crc32: u32,
}

impl Integrity {
    /// The body part of the check, of what `body` reads to its end.
    pub fn of_body(
        mut body: impl std::io::Read,
        run: Option<String>,
    ) -> std::io::Result<Integrity> {
        let mut hasher = crc32fast::Hasher::new();
        let mut buf = vec![0u8; 64 * 1024];
        let mut len = 0u64;
        loop {
            match body.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    hasher.update(&buf[..n]);
                    len += n as u64;
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(Integrity {
            run,
            body_len: len,
            body_crc32: hasher.finalize(),
        })
    }

    /// Whether `found` (computed from the file) has this body's length
    /// and checksum.
    pub fn same_body(&self, found: &Integrity) -> bool {
        self.body_len == found.body_len && self.body_crc32 == found.body_crc32
    }

    /// How the body `found` (computed from the file) differs from this,
    /// in words; `None` when it has this length and checksum.
    pub fn body_differs(&self, found: &Integrity) -> Option<String> {
        (!self.same_body(found)).then(|| {
            format!(
                "body is not what its envelope recorded ({} octets, CRC-32 {:08x}; found {} octets, {:08x})",
                self.body_len, self.body_crc32, found.body_len, found.body_crc32
            )
        })
    }

    /// For a message of another run than `now`: how `body` differs from
    /// what this records (`body_differs`). `None` when it matches, or
    /// when the message is of run `now` (whose body is not read).
    pub fn check_body(
        &self,
        now: Option<&str>,
        body: impl std::io::Read,
    ) -> std::io::Result<Option<String>> {
        if self.made_in(now) {
            return Ok(None);
        }
        Ok(self.body_differs(&Integrity::of_body(body, None)?))
    }

    /// Whether the files were known whole in the run `now` (an unknown
    /// run matches nothing).
    pub fn made_in(&self, now: Option<&str>) -> bool {
        matches!((self.run.as_deref(), now), (Some(a), Some(b)) if a == b)
    }

    /// The line's value: the check, and the envelope's CRC-32.
    fn parse(value: &str) -> Option<(Integrity, u32)> {
        let hex = |v: &str| {
            (v.len() == 8 && v.bytes().all(|b| b.is_ascii_hexdigit()))
                .then(|| u32::from_str_radix(v, 16).ok())
                .flatten()
        };
        let mut f = value.split('\t');
        let run = match f.next()? {
            "-" => None,
            b => Some(b.to_string()),
        };
        let body_len = f.next()?.parse().ok()?;
        let body_crc32 = hex(f.next()?)?;
        let envelope_crc32 = hex(f.next()?)?;
        f.next().is_none().then_some((
            Integrity {
                run,
                body_len,
                body_crc32,
            },
            envelope_crc32,
        ))
    }
}

const INTEGRITY: &str = "integrity: ";

/// Whether an envelope's text is what was written: the CRC-32 on its
/// `integrity:` line is that of the rest of the text. True for a text
/// without such a line (written before it existed, or edited by hand
/// with the line removed); false for one whose line does not parse.
pub fn text_is_intact(text: &str) -> bool {
    let Some(at) = text.find(&format!("\n{INTEGRITY}")) else {
        return true;
    };
    let start = at + 1;
    let Some(len) = text[start..].find('\n') else {
        return false;
    };
    let Some((_, recorded)) = Integrity::parse(&text[start + INTEGRITY.len()..start + len]) else {
        return false;
    };
    let mut crc = crc32fast::Hasher::new();
    crc.update(&text.as_bytes()[..start]);
    crc.update(&text.as_bytes()[start + len + 1..]);
    crc.finalize() == recorded
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    pub id: QueueId,
    /// Unix seconds.
    pub arrived: u64,
    /// The client's IP address, or for a message queued locally `local
    /// uid=N user=NAME via=send|sendmail|maildrop` (admin/send.rs).
    pub client: String,
    pub helo: String,
    /// The authenticated (RFC 4954) user that submitted the message.
    pub auth: Option<String>,
    pub from: ReversePath,
    /// Octets of the stored message, our Received header included.
    pub size: u64,
    pub body: Option<Body>,
    pub smtputf8: bool,
    /// RFC 8689 §4.1: received with `MAIL FROM:<...> REQUIRETLS`.
    pub requiretls: bool,
    pub attempts: u32,
    /// Unix seconds.
    pub next_try: u64,
    /// Set by the commit (`Incoming::commit`).
    pub integrity: Option<Integrity>,
    pub hold: Option<Hold>,
    /// Why the message is held, when something said (a milter's
    /// quarantine); cleared by `queue release`.
    pub hold_reason: Option<String>,
    /// RFC 3461 RET and ENVID, as the client gave them.
    pub dsn: MailDsn,
    pub rcpts: Vec<Recipient>,
    pub delay_warned: Option<DelayWarned>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseError {
    pub line: usize,
    pub why: &'static str,
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}: {}", self.line, self.why)
    }
}

impl std::error::Error for ParseError {}

/// One line, one field: control characters (CR, LF, TAB, NUL ...) become
/// spaces, and an empty value becomes `-`.
pub fn clean(s: &str) -> String {
    let t: String = s
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if t.is_empty() {
        "-".to_string()
    } else {
        t
    }
}

/// A version 1 `attempt:` line, kept until its recipient is known.
struct V1Attempt {
    time: u64,
    rcpt: String,
    relay: String,
    reply: String,
}

impl Envelope {
    /// True when every recipient is final: the message can leave the queue.
    pub fn is_done(&self) -> bool {
        self.rcpts.iter().all(|r| r.state.is_final())
    }

    pub fn to_text(&self) -> String {
        self.to_text_with(self.integrity.as_ref())
    }

    /// The text with `integrity` on its integrity line instead of the
    /// envelope's own (a commit records it without copying the envelope).
    pub fn to_text_with(&self, integrity: Option<&Integrity>) -> String {
        let mut s = String::with_capacity(256 + 200 * self.rcpts.len());
        let body = self.body.map(Body::as_str).unwrap_or("-");
        // writing to a String cannot fail
        let _ = write!(
            s,
            "{MAGIC}\nid: {}\narrived: {}\nclient: {}\nhelo: {}\n{}from: {}\nsize: {}\nbody: {}\nsmtputf8: {}\nattempts: {}\nnext-try: {}\n",
            self.id,
            self.arrived,
            clean(&self.client),
            clean(&self.helo),
            self.auth
                .as_deref()
                .map(|a| format!("auth: {}\n", clean(a)))
                .unwrap_or_default(),
            self.from,
            self.size,
            body,
            if self.smtputf8 { "yes" } else { "no" },
            self.attempts,
            self.next_try,
        );
        // the integrity line goes here once the rest is written: it holds
        // the CRC-32 of everything else
        let integrity_at = s.len();
        match self.hold {
            Some(Hold::Forever) => s.push_str("hold: forever\n"),
            Some(Hold::Until(t)) => {
                let _ = writeln!(s, "hold: {t}");
            }
            None => {}
        }
        if let (Some(_), Some(r)) = (self.hold, &self.hold_reason) {
            let _ = writeln!(s, "hold-reason: {}", clean(r));
        }
        if let Some(ret) = self.dsn.ret {
            let _ = writeln!(s, "ret: {}", ret.as_str());
        }
        if let Some(envid) = &self.dsn.envid {
            let _ = writeln!(s, "envid: {envid}");
        }
        if self.requiretls {
            s.push_str("requiretls: yes\n");
        }
        if let Some(w) = self.delay_warned {
            let _ = writeln!(s, "delay-warned: {}\t{}", w.time, w.dsn);
        }
        for r in &self.rcpts {
            let reply = r
                .last_reply
                .as_ref()
                .map(|st| clean(&st.to_string()))
                .unwrap_or_else(|| "-".into());
            let _ = writeln!(s, "rcpt: {}\t{}\t{}", r.state.as_str(), r.path, reply);
            if let Some(st) = &r.last_reply {
                let _ = writeln!(s, "rcpt-reply: {}", st.to_fields());
            }
            if !r.dsn.is_empty() {
                let notify = r.dsn.notify.map(|n| n.to_string());
                let _ = writeln!(
                    s,
                    "rcpt-dsn: {}\t{}",
                    notify.as_deref().unwrap_or("-"),
                    r.dsn.orcpt.as_deref().unwrap_or("-")
                );
            }
            if r.tries.total > 0 {
                let t = &r.tries;
                let _ = writeln!(s, "rcpt-tries: {}\t{}\t{}", t.total, t.first, t.last);
            }
            for a in &r.tries.recent {
                let _ = writeln!(
                    s,
                    "rcpt-attempt: {}\t{}\t{}",
                    a.time,
                    clean(&a.relay),
                    a.status.to_fields()
                );
            }
        }
        s.push_str("end\n");
        if let Some(c) = integrity {
            let run = c.run.as_deref().map(clean);
            let line = format!(
                "{INTEGRITY}{}\t{}\t{:08x}\t{:08x}\n",
                run.as_deref().unwrap_or("-"),
                c.body_len,
                c.body_crc32,
                crc32fast::hash(s.as_bytes())
            );
            s.insert_str(integrity_at, &line);
        }
        s
    }

    pub fn parse(text: &str) -> Result<Envelope, ParseError> {
        let mut lines = text.split('\n').enumerate().map(|(i, l)| (i + 1, l));
        let v1 = match lines.next() {
            Some((_, l)) if l == MAGIC => false,
            Some((_, l)) if l == MAGIC_V1 => true,
            _ => {
                return Err(ParseError {
                    line: 1,
                    why: "not a version 1 or 2 envelope",
                })
            }
        };
        let mut id = None;
        let mut arrived = None;
        let mut client = None;
        let mut helo = None;
        let mut auth = None;
        let mut from = None;
        let mut size = None;
        let mut body = None;
        let mut smtputf8 = None;
        let mut requiretls = false;
        let mut attempts = None;
        let mut next_try = None;
        let mut integrity = None;
        let mut hold = None;
        let mut hold_reason = None;
        let mut dsn = MailDsn::default();
        let mut rcpts: Vec<Recipient> = Vec::new();
        let mut delay_warned = None;
        // version 1: free-text replies and history, typed at the end
        let mut v1_replies: Vec<Option<String>> = Vec::new();
        let mut v1_history: Vec<V1Attempt> = Vec::new();
        let mut ended = false;
        for (n, line) in lines {
            let err = |why| Err(ParseError { line: n, why });
            if ended {
                if line.is_empty() {
                    continue;
                }
                return err("text after end");
            }
            if line == "end" {
                ended = true;
                continue;
            }
            let Some((key, value)) = line.split_once(": ") else {
                return err("not a key: value line");
            };
            let num = |v: &str| v.parse::<u64>().ok();
            match key {
                "id" => id = QueueId::parse(value),
                "arrived" => arrived = num(value),
                // free text is cleaned as `to_text` cleans it, so a
                // hand-edited envelope reads back as it will be written
                "client" => client = Some(clean(value)),
                "helo" => helo = Some(clean(value)),
                "auth" => auth = Some(clean(value)),
                "from" => from = ReversePath::parse_stored(value).ok(),
                "size" => size = num(value),
                "body" => {
                    body = Some(match value {
                        "-" => None,
                        "7BIT" => Some(Body::SevenBit),
                        "8BITMIME" => Some(Body::EightBitMime),
                        _ => return err("bad body"),
                    })
                }
                "smtputf8" => smtputf8 = Some(value == "yes"),
                "requiretls" => requiretls = value == "yes",
                "attempts" => attempts = value.parse::<u32>().ok(),
                "next-try" => next_try = num(value),
                "integrity" if integrity.is_some() => return err("two integrity lines"),
                "integrity" => match Integrity::parse(value) {
                    Some((c, _)) => integrity = Some(c),
                    None => return err("bad integrity"),
                },
                "hold" => {
                    hold = Some(match value {
                        "forever" => Hold::Forever,
                        t => match num(t) {
                            Some(t) => Hold::Until(t),
                            None => return err("bad hold"),
                        },
                    })
                }
                "hold-reason" => hold_reason = Some(clean(value)),
                "delay-warned" if !v1 => {
                    let parsed = value.split_once('\t').and_then(|(t, id)| {
                        Some(DelayWarned {
                            time: num(t)?,
                            dsn: QueueId::parse(id)?,
                        })
                    });
                    match parsed {
                        Some(w) => delay_warned = Some(w),
                        None => return err("bad delay-warned"),
                    }
                }
                "rcpt" => {
                    let mut f = value.splitn(3, '\t');
                    let (Some(state), Some(path), Some(reply)) = (f.next(), f.next(), f.next())
                    else {
                        return err("rcpt needs state, path and reply");
                    };
                    let Some(state) = RcptState::parse(state) else {
                        return err("bad recipient state");
                    };
                    let Ok(path) = Path::parse_stored(path) else {
                        return err("bad recipient path");
                    };
                    if v1 {
                        v1_replies.push(Some(clean(reply)).filter(|r| r != "-"));
                    }
                    rcpts.push(Recipient {
                        path,
                        state,
                        last_reply: None,
                        dsn: RcptDsn::default(),
                        tries: Tries::default(),
                    });
                }
                "rcpt-reply" if !v1 => {
                    let Some(r) = rcpts.last_mut() else {
                        return err("rcpt-reply before any rcpt");
                    };
                    match Status::from_fields(value) {
                        Some(st) => r.last_reply = Some(st),
                        None => return err("bad rcpt-reply"),
                    }
                }
                "rcpt-tries" if !v1 => {
                    let Some(r) = rcpts.last_mut() else {
                        return err("rcpt-tries before any rcpt");
                    };
                    let mut f = value.split('\t');
                    let parsed = (|| {
                        let total = f.next()?.parse::<u32>().ok()?;
                        let first = num(f.next()?)?;
                        let last = num(f.next()?)?;
                        f.next().is_none().then_some((total, first, last))
                    })();
                    let Some((total, first, last)) = parsed else {
                        return err("bad rcpt-tries");
                    };
                    r.tries.total = total;
                    r.tries.first = first;
                    r.tries.last = last;
                }
                "rcpt-attempt" if !v1 => {
                    let Some(r) = rcpts.last_mut() else {
                        return err("rcpt-attempt before any rcpt");
                    };
                    let parsed = value.split_once('\t').and_then(|(t, rest)| {
                        let (relay, status) = rest.split_once('\t')?;
                        Some(Attempt {
                            time: num(t)?,
                            relay: clean(relay),
                            status: Status::from_fields(status)?,
                        })
                    });
                    match parsed {
                        Some(a) => r.tries.recent.push_back(a),
                        None => return err("bad rcpt-attempt"),
                    }
                }
                "ret" => match Ret::parse(value) {
                    Some(r) => dsn.ret = Some(r),
                    None => return err("bad ret"),
                },
                "envid" if is_xtext(value) => dsn.envid = Some(value.to_string()),
                "envid" => return err("bad envid"),
                "rcpt-dsn" => {
                    let Some((notify, orcpt)) = value.split_once('\t') else {
                        return err("rcpt-dsn needs notify and orcpt");
                    };
                    let Some(r) = rcpts.last_mut() else {
                        return err("rcpt-dsn before any rcpt");
                    };
                    if notify != "-" {
                        match Notify::parse(notify) {
                            Some(n) => r.dsn.notify = Some(n),
                            None => return err("bad notify"),
                        }
                    }
                    if orcpt != "-" {
                        if !orcpt.bytes().all(|b| (33..=126).contains(&b)) {
                            return err("bad orcpt");
                        }
                        r.dsn.orcpt = Some(orcpt.to_string());
                    }
                }
                "attempt" if v1 => {
                    let mut f = value.splitn(4, '\t');
                    let (Some(t), Some(rcpt), Some(relay), Some(reply)) =
                        (f.next(), f.next(), f.next(), f.next())
                    else {
                        return err("attempt needs time, rcpt, host and reply");
                    };
                    let Some(time) = num(t) else {
                        return err("bad attempt time");
                    };
                    v1_history.push(V1Attempt {
                        time,
                        rcpt: clean(rcpt),
                        relay: clean(relay),
                        reply: clean(reply),
                    });
                }
                _ => return err("unknown key"),
            }
        }
        let missing = |why| ParseError { line: 0, why };
        if !ended {
            return Err(missing("no end line: torn envelope"));
        }
        if rcpts.is_empty() {
            return Err(missing("no recipients"));
        }
        if v1 {
            delay_warned = upgrade_v1(&mut rcpts, &v1_replies, v1_history);
        }
        Ok(Envelope {
            id: id.ok_or(missing("missing or bad id"))?,
            arrived: arrived.ok_or(missing("missing or bad arrived"))?,
            client: client.ok_or(missing("missing client"))?,
            helo: helo.ok_or(missing("missing helo"))?,
            auth,
            from: from.ok_or(missing("missing or bad from"))?,
            size: size.ok_or(missing("missing or bad size"))?,
            body: body.ok_or(missing("missing body"))?,
            smtputf8: smtputf8.ok_or(missing("missing smtputf8"))?,
            requiretls,
            attempts: attempts.ok_or(missing("missing or bad attempts"))?,
            next_try: next_try.ok_or(missing("missing or bad next-try"))?,
            integrity,
            hold,
            hold_reason,
            dsn,
            rcpts,
            delay_warned,
        })
    }
}

/// Types a version 1 envelope's replies and history: each recipient's
/// attempts are the `attempt:` lines naming its mailbox, and its last
/// reply takes its source from the last of them. Returns the delay
/// warning that version 1 kept as a pseudo-attempt.
fn upgrade_v1(
    rcpts: &mut [Recipient],
    replies: &[Option<String>],
    history: Vec<V1Attempt>,
) -> Option<DelayWarned> {
    let mut warned = None;
    for a in history {
        if a.rcpt == "-" && a.relay == "delay-warning" {
            // "delay warning sent as ID"
            let dsn = a.reply.rsplit(' ').next().and_then(QueueId::parse);
            if let Some(dsn) = dsn {
                warned = Some(DelayWarned { time: a.time, dsn });
            }
            continue;
        }
        // a mailbox can be given twice (two source routes): the first
        // recipient with it takes the attempt, as v1's `queue show` did
        if let Some(r) = rcpts
            .iter_mut()
            .find(|r| r.path.mailbox().to_string() == a.rcpt)
        {
            r.tries.record(Attempt {
                time: a.time,
                status: Status::from_v1(&a.reply, Some(&a.relay)),
                relay: a.relay,
            });
        }
    }
    for (r, reply) in rcpts.iter_mut().zip(replies) {
        r.last_reply = reply.as_deref().map(|text| {
            let relay = r.tries.recent.back().map(|a| a.relay.as_str());
            Status::from_v1(text, relay)
        });
    }
    warned
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::smtp::Enhanced;
    use crate::status::{LocalReason, Source};

    fn deferral() -> Status {
        let mut p = crate::smtp::ReplyParser::new();
        let reply = p.feed("451 4.3.0 try later").unwrap().unwrap();
        let mut st = Status::remote(&reply, "mx.d.example", "192.0.2.1:25".parse().unwrap());
        // the parser escapes a hop's control characters; text from
        // elsewhere (an old envelope, a local reason) may still hold one
        st.response.text = "try\tlater".into();
        st
    }

    fn sample() -> Envelope {
        Envelope {
            id: QueueId::generate(),
            arrived: 1_795_886_410,
            client: "127.0.0.1".into(),
            helo: "client\r\n.example".into(),
            auth: Some("alice\tx".into()),
            from: ReversePath::parse("<a@b.example>", false).unwrap(),
            size: 1234,
            body: Some(Body::EightBitMime),
            smtputf8: false,
            requiretls: false,
            attempts: 1,
            next_try: 1_795_886_710,
            integrity: Some(Integrity {
                run: Some("3f1c0a525b7e4d2e9a510c1d2e3f4a5b".into()),
                body_len: 1234,
                body_crc32: 0x00c0ffee,
            }),
            hold: Some(Hold::Until(1_795_999_999)),
            hold_reason: Some("quarantined: looks odd".into()),
            dsn: MailDsn {
                ret: Some(Ret::Hdrs),
                envid: Some("QQ+2B314".into()),
            },
            rcpts: vec![
                Recipient {
                    path: Path::parse("<@r.example:u@d.example>", false).unwrap(),
                    state: RcptState::Deferred,
                    last_reply: Some(deferral()),
                    dsn: RcptDsn {
                        notify: Some(Notify::parse("SUCCESS,DELAY").unwrap()),
                        orcpt: Some("rfc822;u@d.example".into()),
                    },
                    tries: {
                        let mut t = Tries::default();
                        t.record(Attempt {
                            time: 1_795_886_411,
                            relay: "mx.d.example[192.0.2.1]:25".into(),
                            status: deferral(),
                        });
                        t
                    },
                },
                Recipient {
                    path: Path::parse("<\"x y\"@e.example>", false).unwrap(),
                    state: RcptState::Pending,
                    last_reply: None,
                    dsn: RcptDsn::default(),
                    tries: Tries::default(),
                },
            ],
            delay_warned: Some(DelayWarned {
                time: 1_795_886_999,
                dsn: QueueId::parse("0006464A1B2C3D50").unwrap(),
            }),
        }
    }

    #[test]
    fn roundtrip_cleans_text() {
        let env = sample();
        let text = env.to_text();
        assert!(text.ends_with("\nend\n"));
        let back = Envelope::parse(&text).unwrap();
        assert_eq!(back.helo, "client  .example");
        assert_eq!(back.auth.as_deref(), Some("alice x"));
        assert!(text.contains("\nhelo: client  .example\nauth: alice x\nfrom: "));
        let st = back.rcpts[0].last_reply.as_ref().unwrap();
        assert_eq!(st.to_string(), "451 4.3.0 try later");
        assert_eq!(st.remote_mta(), Some("mx.d.example"));
        assert_eq!(back.rcpts[1].path, env.rcpts[1].path);
        assert_eq!(back.rcpts[0].tries.total, 1);
        assert_eq!(back.rcpts[0].tries.recent.len(), 1);
        assert_eq!(back.delay_warned, env.delay_warned);
        assert!(text.contains("rcpt: deferred\t<@r.example:u@d.example>\t451 4.3.0 try later\n"));
        assert!(
            text.contains("rcpt-reply: 451\t4.3.0\tremote mx.d.example 192.0.2.1:25\ttry later\n")
        );
        // one more parse and print changes nothing
        assert_eq!(back.to_text(), text);
        assert_eq!(back.id, env.id);
        assert_eq!(back.hold, env.hold);
        assert_eq!(back.hold_reason, env.hold_reason);
        assert_eq!(back.dsn, env.dsn);
        assert_eq!(back.rcpts[0].dsn, env.rcpts[0].dsn);
        assert_eq!(back.rcpts[1].dsn, RcptDsn::default());
        assert!(text.contains("rcpt-dsn: SUCCESS,DELAY\trfc822;u@d.example\n"));
        // an envelope from before DSN support parses with no requests
        let old: String = text
            .lines()
            .filter(|l| {
                !l.starts_with("rcpt-dsn")
                    && !l.starts_with("ret")
                    && !l.starts_with("envid")
                    && !l.starts_with("auth")
            })
            .map(|l| format!("{l}\n"))
            .collect();
        let back = Envelope::parse(&old).unwrap();
        assert_eq!(back.dsn, MailDsn::default());
        // and from before the AUTH user was stored, with none
        assert_eq!(back.auth, None);
        // the integrity line reads back; an envelope from before it has
        // none and is intact
        let line = "\nintegrity: 3f1c0a525b7e4d2e9a510c1d2e3f4a5b\t1234\t00c0ffee\t";
        assert!(text.contains(line), "{text}");
        assert_eq!(back.integrity, env.integrity);
        assert!(text_is_intact(&text));
        let before: String = text
            .lines()
            .filter(|l| !l.starts_with("integrity"))
            .map(|l| format!("{l}\n"))
            .collect();
        assert_eq!(Envelope::parse(&before).unwrap().integrity, None);
        assert!(text_is_intact(&before));
        // an unknown run is written and read as `-`
        let mut unknown = env.clone();
        unknown.integrity.as_mut().unwrap().run = None;
        let text = unknown.to_text();
        assert!(text.contains("\nintegrity: -\t1234\t00c0ffee\t"));
        assert_eq!(Envelope::parse(&text).unwrap().integrity, unknown.integrity);
        assert!(back.rcpts.iter().all(|r| r.dsn.is_empty()));
    }

    #[test]
    fn torn_envelopes_are_rejected() {
        let text = sample().to_text();
        // every proper prefix that cuts off the end line is refused
        let end_at = text.rfind("end").unwrap();
        for cut in 0..end_at {
            assert!(Envelope::parse(&text[..cut]).is_err(), "cut at {cut}");
        }
        assert!(Envelope::parse(&text.replace("size: 1234", "size: x")).is_err());
        assert!(Envelope::parse(&text.replace("rcpt: pending", "rcpt: maybe")).is_err());
        let good = text.lines().find(|l| l.starts_with("integrity: ")).unwrap();
        for bad in [
            "-\t1234\tc0ffee\t00000000",
            "-\tx\t00c0ffee\t00000000",
            "-\t1234\t00c0ffee",
            "-\t1234\t00c0ffee\t0000000g",
            "-\t1234\t00c0ffee\t00000000\tmore",
        ] {
            let text = text.replace(good, &format!("integrity: {bad}"));
            assert!(Envelope::parse(&text).is_err(), "{bad:?} accepted");
            assert!(!text_is_intact(&text), "{bad:?} intact");
        }
        let twice = text.replace(good, &format!("{good}\n{good}"));
        assert!(Envelope::parse(&twice).is_err());
    }

    /// The envelope's CRC-32 covers every line but its own: a line or a
    /// byte changed anywhere else, or blocks of another envelope spliced
    /// in, make it not intact; the run on the line may change.
    #[test]
    fn an_envelope_with_other_bytes_is_not_intact() {
        let env = sample();
        let text = env.to_text();
        assert!(text_is_intact(&text));
        for (from, to) in [
            ("size: 1234", "size: 1235"),
            ("attempts: 1", "attempts: 2"),
            ("\nend\n", "\nend\n\n"),
            ("<a@b.example>", "<a@c.example>"),
        ] {
            let changed = text.replacen(from, to, 1);
            assert_ne!(changed, text, "{from}");
            assert!(Envelope::parse(&changed).is_ok(), "{from}: still parses");
            assert!(!text_is_intact(&changed), "{from}: intact");
        }
        // the first half of this one, the rest of another's
        let mut other = env.clone();
        other.rcpts[0].state = RcptState::Sent;
        let other = other.to_text();
        let half = text.len() / 2;
        let spliced = format!("{}{}", &text[..half], &other[half..]);
        assert!(!text_is_intact(&spliced));
        // the run alone may be rewritten (the line is not covered)
        let rerun = text.replace("3f1c0a525b7e4d2e9a510c1d2e3f4a5b", "another");
        assert!(text_is_intact(&rerun));
    }

    /// The body's check is its length and the standard CRC-32 (the one
    /// zlib, gzip and `cksum -a crc32b` compute).
    #[test]
    fn a_body_check_is_length_and_crc32() {
        let c = Integrity::of_body(&b"123456789"[..], None).unwrap();
        assert_eq!((c.body_len, c.body_crc32), (9, 0xcbf43926));
        let other = Integrity::of_body(&b"123456780"[..], None).unwrap();
        assert!(c.same_body(&c.clone()) && !c.same_body(&other));
        assert!(!c.made_in(Some("b")), "an unknown run matches nothing");
        let in_b = Integrity {
            run: Some("b".to_string()),
            ..c
        };
        assert!(in_b.made_in(Some("b")) && !in_b.made_in(Some("c")) && !in_b.made_in(None));
    }

    fn fixture(name: &str) -> Envelope {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/envelope-v1")
            .join(name);
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.starts_with("smtp-relay-envelope: 1\n"), "{name}");
        let env = Envelope::parse(&text).unwrap_or_else(|e| panic!("{name}: {e}"));
        // written back as version 2, it reads back the same
        let v2 = env.to_text();
        assert!(v2.starts_with("smtp-relay-envelope: 2\n"));
        assert_eq!(Envelope::parse(&v2).unwrap(), env, "{name}:\n{v2}");
        env
    }

    /// Envelopes written by version 1 (tests/fixtures/envelope-v1, made
    /// with the v1 `Envelope::to_text`) still load, typed.
    #[test]
    fn version_1_envelopes_load() {
        let env = fixture("pending.env");
        assert_eq!(env.rcpts[0].state, RcptState::Pending);
        assert_eq!(env.rcpts[0].last_reply, None);
        assert_eq!(env.rcpts[0].tries, Tries::default());

        let env = fixture("deferred-remote.env");
        assert_eq!(env.attempts, 3);
        assert_eq!(env.dsn.ret, Some(Ret::Hdrs));
        let u = &env.rcpts[0];
        assert_eq!(u.state, RcptState::Deferred);
        let st = u.last_reply.as_ref().unwrap();
        assert_eq!(st.response.code, 451);
        assert_eq!(st.response.enhanced, Some(Enhanced::new(4, 3, 0)));
        assert_eq!(st.response.text, "try later");
        assert_eq!(
            st.source,
            Source::Remote {
                host: "mx.example.net".into(),
                addr: Some("192.0.2.1:25".parse().unwrap())
            }
        );
        assert_eq!(u.dsn.orcpt.as_deref(), Some("rfc822;user@example.net"));
        assert_eq!(
            (u.tries.total, u.tries.first, u.tries.last),
            (3, 1_795_886_411, 1_795_887_400)
        );
        let o = &env.rcpts[1];
        assert_eq!(o.state, RcptState::Sent);
        let st = o.last_reply.as_ref().unwrap();
        assert_eq!((st.response.code, st.response.enhanced), (250, None));
        assert_eq!(st.dsn_code(), Enhanced::new(2, 0, 0));
        assert_eq!(st.remote_mta(), Some("mx.example.com"));
        assert_eq!(o.tries.total, 1);
        // the v1 pseudo-attempt is the typed delay warning now
        assert_eq!(
            env.delay_warned,
            Some(DelayWarned {
                time: 1_795_887_000,
                dsn: QueueId::parse("0006464A1B2C3D50").unwrap()
            })
        );

        let env = fixture("local-and-bouncing.env");
        assert_eq!(env.hold, Some(Hold::Forever));
        assert!(env.from.is_null());
        let source = |i: usize| env.rcpts[i].last_reply.as_ref().unwrap().source.clone();
        assert_eq!(source(0), Source::Local(LocalReason::ConnectFailed));
        assert_eq!(env.rcpts[0].tries.recent[0].relay, "[127.0.0.1]:2525");
        assert_eq!(env.rcpts[1].state, RcptState::Bouncing);
        assert_eq!(
            source(1),
            Source::Remote {
                host: "[127.0.0.1]".into(),
                addr: Some("127.0.0.1:2526".parse().unwrap())
            }
        );
        assert_eq!(source(2), Source::Local(LocalReason::Expired));
        assert_eq!(env.rcpts[2].last_reply.as_ref().unwrap().response.code, 554);
    }

    /// The envelope shown in README ("The spool") parses and matches its
    /// own CRC-32.
    #[test]
    fn the_readme_envelope_is_intact() {
        let readme = std::fs::read_to_string(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md"),
        )
        .unwrap();
        let start = readme.find("```\nsmtp-relay-envelope: 2\n").unwrap() + 4;
        let len = readme[start..].find("end\n```").unwrap() + 4;
        let text = &readme[start..start + len];
        let env = Envelope::parse(text).unwrap();
        assert!(env.integrity.is_some());
        assert!(text_is_intact(text), "{text}");
        assert_eq!(env.to_text(), text);
    }

    /// The README's version 2 example (also a fuzz seed) is what we write.
    #[test]
    fn readme_example_is_a_fixed_point() {
        let path =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/seeds/envelope/seed-v2");
        let text = std::fs::read_to_string(path).unwrap();
        let env = Envelope::parse(&text).unwrap();
        assert_eq!(env.rcpts[0].tries.total, 2);
        assert_eq!(env.to_text(), text);
    }

    /// Item 7 of issue 11: the envelope is rewritten at every attempt; its
    /// history must not grow with the number of attempts.
    #[test]
    fn envelope_after_100_attempts_stays_small() {
        let mut env = sample();
        env.rcpts[0].tries = Tries::default();
        let mut size_after = Vec::new();
        for n in 1..=100u64 {
            for r in &mut env.rcpts {
                r.tries.record(Attempt {
                    time: 1_795_886_411 + n * 300,
                    relay: "mx.d.example[192.0.2.1]:25".into(),
                    status: deferral(),
                });
            }
            size_after.push(env.to_text().len());
        }
        let text = env.to_text();
        let back = Envelope::parse(&text).unwrap();
        let t = &back.rcpts[0].tries;
        assert_eq!(t.total, 100);
        assert_eq!(t.first, 1_795_886_711);
        assert_eq!(t.last, 1_795_886_411 + 100 * 300);
        assert_eq!(t.recent.len(), KEEP_ATTEMPTS);
        assert_eq!(t.recent.back().unwrap().time, t.last, "the newest are kept");
        // the size after 100 attempts is the size after KEEP_ATTEMPTS,
        // give or take the digits of the counter
        let at_keep = size_after[KEEP_ATTEMPTS - 1];
        assert!(
            text.len() <= at_keep + 8,
            "{} bytes after 100 attempts, {at_keep} after {KEEP_ATTEMPTS}",
            text.len()
        );
        assert!(text.len() < 2048, "{} bytes:\n{text}", text.len());
    }
}
