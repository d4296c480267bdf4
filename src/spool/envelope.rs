//! `Envelope`: everything about a queued message except its bytes.
//!
//! Stored as versioned `key: value` text so an operator can `cat` and
//! `grep` the spool. The last line is `end`: an envelope without it was
//! torn and is never trusted (Postfix's END record). Fields with free text
//! (HELO names, remote replies) have control characters replaced, so one
//! field is always one line and tabs only ever separate fields.
//!
//! ```text
//! smtp-relay-envelope: 1
//! id: 0006464A1B2C3D4E
//! arrived: 1795886410
//! client: 127.0.0.1
//! helo: client.example
//! from: <sender@example.org>
//! size: 1234
//! body: 8BITMIME
//! smtputf8: no
//! attempts: 1
//! next-try: 1795886710
//! rcpt: deferred<TAB><user@example.net><TAB>451 4.3.0 try later
//! rcpt: sent<TAB><@relay.example:other@example.com><TAB>250 2.0.0 ok
//! rcpt-dsn: SUCCESS,FAILURE<TAB>rfc822;other@example.com
//! attempt: 1795886411<TAB>user@example.net<TAB>mx.example.net[192.0.2.1]:25<TAB>451 4.3.0 try later
//! end
//! ```
//!
//! RFC 3461 DSN requests are optional keys (envelopes without them, from
//! before them, parse as ever): `ret: FULL|HDRS` and `envid: XTEXT` for
//! the message, and a `rcpt-dsn: NOTIFY<TAB>ORCPT` line (`-` for absent)
//! right after the `rcpt` line it belongs to.

use std::fmt::{self, Write as _};

use super::queue_id::QueueId;
use crate::smtp::command::is_xtext;
use crate::smtp::{Body, MailDsn, Notify, Path, RcptDsn, Ret, ReversePath};

const MAGIC: &str = "smtp-relay-envelope: 1";

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
    /// The last reply or error about this recipient, for `queue show` and DSNs.
    pub last_reply: Option<String>,
    /// RFC 3461 NOTIFY and ORCPT, as the client gave them.
    pub dsn: RcptDsn,
}

/// One delivery try of one recipient, kept for `queue show`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attempt {
    pub time: u64,
    pub rcpt: String,
    pub host: String,
    pub reply: String,
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

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    pub id: QueueId,
    /// Unix seconds.
    pub arrived: u64,
    /// The client's IP address, or `local` for messages injected by `send`.
    pub client: String,
    pub helo: String,
    pub from: ReversePath,
    /// Octets of the stored message, our Received header included.
    pub size: u64,
    pub body: Option<Body>,
    pub smtputf8: bool,
    pub attempts: u32,
    /// Unix seconds.
    pub next_try: u64,
    pub hold: Option<Hold>,
    /// RFC 3461 RET and ENVID, as the client gave them.
    pub dsn: MailDsn,
    pub rcpts: Vec<Recipient>,
    pub history: Vec<Attempt>,
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

impl Envelope {
    /// True when every recipient is final: the message can leave the queue.
    pub fn is_done(&self) -> bool {
        self.rcpts.iter().all(|r| r.state.is_final())
    }

    pub fn to_text(&self) -> String {
        let mut s = String::with_capacity(256 + 80 * self.rcpts.len());
        let body = self.body.map(Body::as_str).unwrap_or("-");
        // writing to a String cannot fail
        let _ = write!(
            s,
            "{MAGIC}\nid: {}\narrived: {}\nclient: {}\nhelo: {}\nfrom: {}\nsize: {}\nbody: {}\nsmtputf8: {}\nattempts: {}\nnext-try: {}\n",
            self.id,
            self.arrived,
            clean(&self.client),
            clean(&self.helo),
            self.from,
            self.size,
            body,
            if self.smtputf8 { "yes" } else { "no" },
            self.attempts,
            self.next_try,
        );
        match self.hold {
            Some(Hold::Forever) => s.push_str("hold: forever\n"),
            Some(Hold::Until(t)) => {
                let _ = writeln!(s, "hold: {t}");
            }
            None => {}
        }
        if let Some(ret) = self.dsn.ret {
            let _ = writeln!(s, "ret: {}", ret.as_str());
        }
        if let Some(envid) = &self.dsn.envid {
            let _ = writeln!(s, "envid: {envid}");
        }
        for r in &self.rcpts {
            let reply = r
                .last_reply
                .as_deref()
                .map(clean)
                .unwrap_or_else(|| "-".into());
            let _ = writeln!(s, "rcpt: {}\t{}\t{}", r.state.as_str(), r.path, reply);
            if !r.dsn.is_empty() {
                let notify = r.dsn.notify.map(|n| n.to_string());
                let _ = writeln!(
                    s,
                    "rcpt-dsn: {}\t{}",
                    notify.as_deref().unwrap_or("-"),
                    r.dsn.orcpt.as_deref().unwrap_or("-")
                );
            }
        }
        for a in &self.history {
            let _ = writeln!(
                s,
                "attempt: {}\t{}\t{}\t{}",
                a.time,
                clean(&a.rcpt),
                clean(&a.host),
                clean(&a.reply)
            );
        }
        s.push_str("end\n");
        s
    }

    pub fn parse(text: &str) -> Result<Envelope, ParseError> {
        let mut lines = text.split('\n').enumerate().map(|(i, l)| (i + 1, l));
        match lines.next() {
            Some((_, l)) if l == MAGIC => {}
            _ => {
                return Err(ParseError {
                    line: 1,
                    why: "not a version 1 envelope",
                })
            }
        }
        let mut id = None;
        let mut arrived = None;
        let mut client = None;
        let mut helo = None;
        let mut from = None;
        let mut size = None;
        let mut body = None;
        let mut smtputf8 = None;
        let mut attempts = None;
        let mut next_try = None;
        let mut hold = None;
        let mut dsn = MailDsn::default();
        let mut rcpts: Vec<Recipient> = Vec::new();
        let mut history = Vec::new();
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
                "attempts" => attempts = value.parse::<u32>().ok(),
                "next-try" => next_try = num(value),
                "hold" => {
                    hold = Some(match value {
                        "forever" => Hold::Forever,
                        t => match num(t) {
                            Some(t) => Hold::Until(t),
                            None => return err("bad hold"),
                        },
                    })
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
                    rcpts.push(Recipient {
                        path,
                        state,
                        last_reply: Some(clean(reply)).filter(|r| r != "-"),
                        dsn: RcptDsn::default(),
                    });
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
                "attempt" => {
                    let mut f = value.splitn(4, '\t');
                    let (Some(t), Some(rcpt), Some(host), Some(reply)) =
                        (f.next(), f.next(), f.next(), f.next())
                    else {
                        return err("attempt needs time, rcpt, host and reply");
                    };
                    let Some(time) = num(t) else {
                        return err("bad attempt time");
                    };
                    history.push(Attempt {
                        time,
                        rcpt: clean(rcpt),
                        host: clean(host),
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
        Ok(Envelope {
            id: id.ok_or(missing("missing or bad id"))?,
            arrived: arrived.ok_or(missing("missing or bad arrived"))?,
            client: client.ok_or(missing("missing client"))?,
            helo: helo.ok_or(missing("missing helo"))?,
            from: from.ok_or(missing("missing or bad from"))?,
            size: size.ok_or(missing("missing or bad size"))?,
            body: body.ok_or(missing("missing body"))?,
            smtputf8: smtputf8.ok_or(missing("missing smtputf8"))?,
            attempts: attempts.ok_or(missing("missing or bad attempts"))?,
            next_try: next_try.ok_or(missing("missing or bad next-try"))?,
            hold,
            dsn,
            rcpts,
            history,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Envelope {
        Envelope {
            id: QueueId::generate(),
            arrived: 1_795_886_410,
            client: "127.0.0.1".into(),
            helo: "client\r\n.example".into(),
            from: ReversePath::parse("<a@b.example>", false).unwrap(),
            size: 1234,
            body: Some(Body::EightBitMime),
            smtputf8: false,
            attempts: 1,
            next_try: 1_795_886_710,
            hold: Some(Hold::Until(1_795_999_999)),
            dsn: MailDsn {
                ret: Some(Ret::Hdrs),
                envid: Some("QQ+2B314".into()),
            },
            rcpts: vec![
                Recipient {
                    path: Path::parse("<@r.example:u@d.example>", false).unwrap(),
                    state: RcptState::Deferred,
                    last_reply: Some("451 4.3.0 try\tlater".into()),
                    dsn: RcptDsn {
                        notify: Some(Notify::parse("SUCCESS,DELAY").unwrap()),
                        orcpt: Some("rfc822;u@d.example".into()),
                    },
                },
                Recipient {
                    path: Path::parse("<\"x y\"@e.example>", false).unwrap(),
                    state: RcptState::Pending,
                    last_reply: None,
                    dsn: RcptDsn::default(),
                },
            ],
            history: vec![Attempt {
                time: 1_795_886_411,
                rcpt: "u@d.example".into(),
                host: "mx.d.example[192.0.2.1]:25".into(),
                reply: "451 4.3.0 try later".into(),
            }],
        }
    }

    #[test]
    fn roundtrip_cleans_text() {
        let env = sample();
        let text = env.to_text();
        assert!(text.ends_with("\nend\n"));
        let back = Envelope::parse(&text).unwrap();
        assert_eq!(back.helo, "client  .example");
        assert_eq!(
            back.rcpts[0].last_reply.as_deref(),
            Some("451 4.3.0 try later")
        );
        assert_eq!(back.rcpts[1].path, env.rcpts[1].path);
        assert_eq!(back.history, env.history);
        assert_eq!(back.id, env.id);
        assert_eq!(back.hold, env.hold);
        assert_eq!(back.dsn, env.dsn);
        assert_eq!(back.rcpts[0].dsn, env.rcpts[0].dsn);
        assert_eq!(back.rcpts[1].dsn, RcptDsn::default());
        assert!(text.contains("rcpt-dsn: SUCCESS,DELAY\trfc822;u@d.example\n"));
        // an envelope from before DSN support parses with no requests
        let old: String = text
            .lines()
            .filter(|l| {
                !l.starts_with("rcpt-dsn") && !l.starts_with("ret") && !l.starts_with("envid")
            })
            .map(|l| format!("{l}\n"))
            .collect();
        let back = Envelope::parse(&old).unwrap();
        assert_eq!(back.dsn, MailDsn::default());
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
    }
}
