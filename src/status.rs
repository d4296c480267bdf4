//! Delivery status, typed: what was said about one recipient, and who said
//! it.
//!
//! A [`Status`] is built once, where the reply is received (`delivery`
//! from the outbound client's `Reply`) or where a local decision is made
//! (connect failed, no route, expired, returned by the operator), and is
//! then read everywhere as fields: the classification below, the DSN
//! (`bounce`: Status, Remote-MTA, Diagnostic-Code), the log line, expiry
//! and `queue list/show`. Nothing parses a reply back out of text, except
//! the loader of version 1 envelopes (which stored text).

use std::fmt;
use std::net::SocketAddr;

use crate::smtp::{Enhanced, Reply};

/// An SMTP-shaped reply: RFC 5321 §4.2 code, RFC 3463 enhanced code, text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub code: u16,
    pub enhanced: Option<Enhanced>,
    /// One line: control characters are replaced before it is stored.
    pub text: String,
}

impl Response {
    pub fn new(code: u16, enhanced: Enhanced, text: impl Into<String>) -> Response {
        Response {
            code,
            enhanced: Some(enhanced),
            text: text.into(),
        }
    }

    /// A server's reply, multi-line text joined with spaces.
    pub fn from_reply(r: &Reply) -> Response {
        Response {
            code: r.code().value(),
            enhanced: r.enhanced(),
            text: r.lines().join(" "),
        }
    }
}

impl fmt::Display for Response {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.enhanced {
            Some(e) => write!(f, "{} {e} {}", self.code, self.text),
            None => write!(f, "{} {}", self.code, self.text),
        }
    }
}

/// Why we, not a server, decided a recipient's outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LocalReason {
    /// The host answered the greeting with 5xx (we skip it and defer).
    GreetingRefused,
    ConnectFailed,
    Timeout,
    ConnectionLost,
    ProtocolError,
    /// Routing failed for now (DNS trouble).
    RouteTemporary,
    /// Routing says the destination takes no mail (null MX, no such domain).
    NoRoute,
    /// Every hop of the route was tried and none answered usefully.
    NoUsableHop,
    /// SMTP AUTH to the next hop failed or could not be done safely
    /// (RFC 4954 §4): always temporary, the hop's reply in the text, so an
    /// operator's wrong password defers the queue and never bounces it.
    AuthFailed,
    /// A TLS policy forbade the hop: MTA-STS enforce (RFC 8461 §4.1) or
    /// REQUIRETLS (RFC 8689 §4.2.1).
    TlsPolicy,
    /// The queued message could not be read.
    SpoolRead,
    /// RFC 5321 §4.5.4.1: given up after the queue lifetime.
    Expired,
    /// `queue bounce`.
    Operator,
    /// A milter refused mail injected locally (the maildrop pick-up
    /// returns it to the submitter).
    Milter,
    /// Loaded from a version 1 envelope that did not say.
    Unknown,
}

impl LocalReason {
    const ALL: [LocalReason; 15] = [
        LocalReason::GreetingRefused,
        LocalReason::ConnectFailed,
        LocalReason::Timeout,
        LocalReason::ConnectionLost,
        LocalReason::ProtocolError,
        LocalReason::RouteTemporary,
        LocalReason::NoRoute,
        LocalReason::NoUsableHop,
        LocalReason::AuthFailed,
        LocalReason::TlsPolicy,
        LocalReason::SpoolRead,
        LocalReason::Expired,
        LocalReason::Operator,
        LocalReason::Milter,
        LocalReason::Unknown,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            LocalReason::GreetingRefused => "greeting-refused",
            LocalReason::ConnectFailed => "connect-failed",
            LocalReason::Timeout => "timeout",
            LocalReason::ConnectionLost => "connection-lost",
            LocalReason::ProtocolError => "protocol-error",
            LocalReason::RouteTemporary => "route-temporary",
            LocalReason::NoRoute => "no-route",
            LocalReason::NoUsableHop => "no-usable-hop",
            LocalReason::AuthFailed => "auth-failed",
            LocalReason::TlsPolicy => "tls-policy",
            LocalReason::SpoolRead => "spool-read",
            LocalReason::Expired => "expired",
            LocalReason::Operator => "operator",
            LocalReason::Milter => "milter",
            LocalReason::Unknown => "unknown",
        }
    }

    pub fn parse(s: &str) -> Option<LocalReason> {
        LocalReason::ALL.into_iter().find(|r| r.as_str() == s)
    }
}

/// Who said it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// A server we talked to: its name (an MX or route host, or `[addr]`
    /// for a literal) and the address the reply came from.
    Remote {
        host: String,
        addr: Option<SocketAddr>,
    },
    /// This relay.
    Local(LocalReason),
}

impl fmt::Display for Source {
    /// `remote NAME ADDR` / `local REASON`: the envelope's form.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Remote {
                host,
                addr: Some(a),
            } => write!(f, "remote {host} {a}"),
            Source::Remote { host, addr: None } => write!(f, "remote {host} -"),
            Source::Local(r) => write!(f, "local {}", r.as_str()),
        }
    }
}

impl Source {
    pub fn parse(s: &str) -> Option<Source> {
        let mut w = s.split(' ');
        match (w.next()?, w.next()?, w.next(), w.next()) {
            ("local", r, None, None) => LocalReason::parse(r).map(Source::Local),
            ("remote", host, Some(addr), None) if !host.is_empty() => Some(Source::Remote {
                host: host.to_string(),
                addr: match addr {
                    "-" => None,
                    a => Some(a.parse().ok()?),
                },
            }),
            _ => None,
        }
    }
}

/// RFC 5321 §4.2.1: the first digit decides.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    Success,
    Temporary,
    Permanent,
}

/// One recipient's outcome of one attempt (or a local decision about it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    pub response: Response,
    pub source: Source,
}

impl Status {
    pub fn remote(r: &Reply, host: &str, addr: SocketAddr) -> Status {
        Status {
            response: Response::from_reply(r),
            source: Source::Remote {
                host: host.to_string(),
                addr: Some(addr),
            },
        }
    }

    pub fn local(
        reason: LocalReason,
        code: u16,
        enhanced: Enhanced,
        text: impl Into<String>,
    ) -> Status {
        Status {
            response: Response::new(code, enhanced, text),
            source: Source::Local(reason),
        }
    }

    /// The one classification of replies and local decisions. Anything
    /// outside 2xx/4xx/5xx (a 3xx where none belongs) is permanent, as
    /// RFC 5321 §4.2.1 treats an unexpected reply as a failure.
    pub fn class(&self) -> Class {
        match self.response.code / 100 {
            2 => Class::Success,
            4 => Class::Temporary,
            _ => Class::Permanent,
        }
    }

    /// The RFC 3463 status: the enhanced code when given, else the class's
    /// generic one (X.0.0), so a plain `250 ok` is 2.0.0.
    pub fn dsn_code(&self) -> Enhanced {
        self.response.enhanced.unwrap_or(match self.class() {
            Class::Success => Enhanced::new(2, 0, 0),
            Class::Temporary => Enhanced::new(4, 0, 0),
            Class::Permanent => Enhanced::new(5, 0, 0),
        })
    }

    /// RFC 3464 §2.3.5 Remote-MTA: the name of the server that said it.
    pub fn remote_mta(&self) -> Option<&str> {
        match &self.source {
            Source::Remote { host, .. } => Some(host),
            Source::Local(_) => None,
        }
    }

    /// RFC 3464 §2.3.6 Diagnostic-Code: `smtp;` when a server said it,
    /// our own type for local decisions.
    pub fn diagnostic(&self) -> String {
        match self.source {
            Source::Remote { .. } => format!("smtp; {}", self.response),
            Source::Local(_) => format!("X-smtp-relay; {}", self.response),
        }
    }

    /// The envelope's form: `CODE<TAB>ENHANCED|-<TAB>SOURCE<TAB>TEXT`.
    pub fn to_fields(&self) -> String {
        let enhanced = self
            .response
            .enhanced
            .map(|e| e.to_string())
            .unwrap_or_else(|| "-".into());
        format!(
            "{}\t{enhanced}\t{}\t{}",
            self.response.code,
            self.source,
            one_line(&self.response.text)
        )
    }

    pub fn from_fields(s: &str) -> Option<Status> {
        let mut f = s.splitn(4, '\t');
        let code: u16 = f.next()?.parse().ok().filter(|c| (200..600).contains(c))?;
        let enhanced = match f.next()? {
            "-" => None,
            e => Some(Enhanced::parse(e)?),
        };
        let source = Source::parse(f.next()?)?;
        // cleaned as `to_fields` cleans it: parse and print are a fixed point
        let text = one_line(f.next()?);
        Some(Status {
            response: Response {
                code,
                enhanced,
                text,
            },
            source,
        })
    }

    /// Reads a version 1 envelope's free-text reply (`550 5.1.1 text`, or
    /// a local error without a code). `relay` is that envelope's history
    /// label (`name[ip]:port`, `[ip]:port` or `-`): a reply with a code
    /// and a relay came from that server. Only the v1 loader uses this.
    pub fn from_v1(text: &str, relay: Option<&str>) -> Status {
        let mut words = text.splitn(2, ' ');
        let first = words.next().unwrap_or("");
        let rest = words.next().unwrap_or("");
        let Some(code) = first.parse::<u16>().ok().filter(|c| (200..600).contains(c)) else {
            return Status::local(LocalReason::Unknown, 451, Enhanced::new(4, 0, 0), text);
        };
        let (enhanced, text) = match rest.split_once(' ') {
            Some((e, t)) if Enhanced::parse(e).is_some() => (Enhanced::parse(e), t),
            None if Enhanced::parse(rest).is_some() => (Enhanced::parse(rest), ""),
            _ => (None, rest),
        };
        let response = Response {
            code,
            enhanced,
            text: text.to_string(),
        };
        let source = match relay.and_then(v1_relay) {
            Some((host, addr)) if !is_v1_local(&response) => Source::Remote { host, addr },
            _ => Source::Local(v1_reason(&response)),
        };
        Status { response, source }
    }
}

impl fmt::Display for Status {
    /// `550 5.1.1 text`: the form of logs and listings.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.response.fmt(f)
    }
}

fn one_line(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

/// `name[ip]:port` or `[ip]:port` → (name, address).
fn v1_relay(label: &str) -> Option<(String, Option<SocketAddr>)> {
    if label.contains(' ') {
        return None;
    }
    let open = label.find('[')?;
    let close = label.find(']')?;
    let ip = label.get(open + 1..close)?;
    let port = label.get(close + 1..)?.strip_prefix(':')?;
    let addr = format!("{ip}:{port}")
        .parse::<SocketAddr>()
        .ok()
        .or_else(|| format!("[{ip}]:{port}").parse().ok());
    let host = if open == 0 {
        format!("[{ip}]")
    } else {
        label[..open].to_string()
    };
    Some((host, addr))
}

/// Version 1 wrote these local errors with the hop's label as relay.
const V1_LOCAL: [(&str, LocalReason); 8] = [
    ("4.4.0", LocalReason::GreetingRefused),
    ("4.4.1", LocalReason::ConnectFailed),
    ("4.4.2", LocalReason::Timeout),
    ("4.5.0", LocalReason::ProtocolError),
    ("4.4.3", LocalReason::RouteTemporary),
    ("4.4.4", LocalReason::NoUsableHop),
    ("4.3.0", LocalReason::SpoolRead),
    ("4.4.7", LocalReason::Expired),
];

fn v1_local_reason(r: &Response) -> Option<LocalReason> {
    let e = r.enhanced?.to_string();
    let reason = V1_LOCAL.iter().find(|(c, _)| *c == e)?.1;
    // 4.4.2 and 4.3.0 are also what servers say: only our own wording counts
    let ours = match reason {
        LocalReason::GreetingRefused => r.text.starts_with("host refused service"),
        LocalReason::ConnectFailed => r.text.starts_with("connect failed"),
        LocalReason::Timeout => {
            r.text.starts_with("timeout waiting") || r.text.starts_with("connection lost")
        }
        LocalReason::ProtocolError => r.text.starts_with("protocol error"),
        LocalReason::NoUsableHop => r.text.starts_with("no usable next hop"),
        LocalReason::SpoolRead => r.text.starts_with("cannot read queued message"),
        LocalReason::Expired => r.text.starts_with("message expired"),
        _ => true,
    };
    ours.then_some(
        if reason == LocalReason::Timeout && r.text.starts_with("connection lost") {
            LocalReason::ConnectionLost
        } else {
            reason
        },
    )
}

fn is_v1_local(r: &Response) -> bool {
    v1_local_reason(r).is_some() || r.text.starts_with("returned to sender by the operator")
}

fn v1_reason(r: &Response) -> LocalReason {
    if r.text.starts_with("returned to sender by the operator") {
        return LocalReason::Operator;
    }
    v1_local_reason(r).unwrap_or(LocalReason::Unknown)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply(s: &str) -> Reply {
        let mut p = crate::smtp::ReplyParser::new();
        p.feed(s).unwrap().unwrap()
    }

    fn peer() -> SocketAddr {
        "192.0.2.1:25".parse().unwrap()
    }

    #[test]
    fn classes_and_dsn_codes() {
        let s = |r: &str| Status::remote(&reply(r), "mx.example", peer());
        assert_eq!(s("250 ok").class(), Class::Success);
        // a plain 250 is 2.0.0, not 4.0.0 (the old default)
        assert_eq!(s("250 ok").dsn_code(), Enhanced::new(2, 0, 0));
        assert_eq!(s("250 2.1.5 fine").dsn_code(), Enhanced::new(2, 1, 5));
        assert_eq!(s("451 later").class(), Class::Temporary);
        assert_eq!(s("451 later").dsn_code(), Enhanced::new(4, 0, 0));
        assert_eq!(s("554 no").class(), Class::Permanent);
        assert_eq!(s("550 5.1.1 no user").dsn_code(), Enhanced::new(5, 1, 1));
        assert_eq!(s("550 5.1.1 no user").remote_mta(), Some("mx.example"));
        assert_eq!(
            s("550 5.1.1 no user").diagnostic(),
            "smtp; 550 5.1.1 no user"
        );
        let l = Status::local(
            LocalReason::ConnectFailed,
            451,
            Enhanced::new(4, 4, 1),
            "connect failed: refused",
        );
        assert_eq!(l.class(), Class::Temporary);
        assert_eq!(l.remote_mta(), None);
        assert_eq!(
            l.diagnostic(),
            "X-smtp-relay; 451 4.4.1 connect failed: refused"
        );
        assert_eq!(l.to_string(), "451 4.4.1 connect failed: refused");
    }

    #[test]
    fn fields_round_trip() {
        let all = [
            Status::remote(&reply("250 ok"), "mx.example", peer()),
            Status::remote(&reply("550 5.1.1 no\tuser"), "[192.0.2.1]", peer()),
            Status::remote(
                &reply("451 later"),
                "mx6.example",
                "[2001:db8::1]:2525".parse().unwrap(),
            ),
            Status::local(LocalReason::Expired, 554, Enhanced::new(4, 4, 7), "gone"),
        ];
        for s in all {
            let text = s.to_fields();
            assert_eq!(text.matches('\t').count(), 3, "{text:?}");
            let back = Status::from_fields(&text).unwrap();
            assert_eq!(back.response.code, s.response.code);
            assert_eq!(back.response.enhanced, s.response.enhanced);
            assert_eq!(back.source, s.source);
            assert_eq!(back.response.text, s.response.text.replace('\t', " "));
        }
        assert!(Status::from_fields("99\t-\tlocal unknown\tx").is_none());
        assert!(Status::from_fields("250\t-\tlocal nonsense\tx").is_none());
        assert!(Status::from_fields("250\t-\tremote\tx").is_none());
    }

    #[test]
    fn version_1_text() {
        let s = Status::from_v1("550 5.1.1 no such user", Some("mx.b.example[192.0.2.7]:25"));
        assert_eq!(s.response.code, 550);
        assert_eq!(s.response.enhanced, Some(Enhanced::new(5, 1, 1)));
        assert_eq!(s.response.text, "no such user");
        assert_eq!(s.remote_mta(), Some("mx.b.example"));
        let s = Status::from_v1("250 ok", Some("[127.0.0.1]:2525"));
        assert_eq!(s.response.enhanced, None);
        assert_eq!(s.remote_mta(), Some("[127.0.0.1]"));
        assert_eq!(
            s.source,
            Source::Remote {
                host: "[127.0.0.1]".into(),
                addr: Some("127.0.0.1:2525".parse().unwrap())
            }
        );
        let s = Status::from_v1(
            "451 4.4.1 connect failed: refused",
            Some("[127.0.0.1]:2525"),
        );
        assert_eq!(s.source, Source::Local(LocalReason::ConnectFailed));
        let s = Status::from_v1("451 4.4.3 no route", Some("-"));
        assert_eq!(s.source, Source::Local(LocalReason::RouteTemporary));
        let s = Status::from_v1("something odd", None);
        assert_eq!(s.source, Source::Local(LocalReason::Unknown));
        assert_eq!(s.class(), Class::Temporary);
    }
}
