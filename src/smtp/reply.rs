//! SMTP replies: the code, the enhanced status code (RFC 3463) and the text.
//!
//! Every reply the server sends is built by a named constructor here, so the
//! wording and the codes live in one place (the Postfix `cleanup_strerror`
//! idea). The same type parses replies for the outbound client.

use std::fmt;
use std::io::{self, Write};

/// A three-digit SMTP reply code (RFC 5321 §4.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Code(u16);

impl Code {
    /// Builds a code; `None` unless it has three digits with a first digit 2–5.
    pub fn new(n: u16) -> Option<Code> {
        if (200..600).contains(&n) {
            Some(Code(n))
        } else {
            None
        }
    }

    pub fn value(self) -> u16 {
        self.0
    }

    /// RFC 5321 §4.2.1: 2yz positive completion.
    pub fn is_positive(self) -> bool {
        self.0 < 400
    }

    /// RFC 5321 §4.2.1: 4yz transient negative completion.
    pub fn is_transient(self) -> bool {
        (400..500).contains(&self.0)
    }

    /// RFC 5321 §4.2.1: 5yz permanent negative completion.
    pub fn is_permanent(self) -> bool {
        self.0 >= 500
    }
}

impl fmt::Display for Code {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// An enhanced mail system status code, `class.subject.detail` (RFC 3463 §2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Enhanced {
    pub class: u8,
    pub subject: u16,
    pub detail: u16,
}

impl Enhanced {
    pub const fn new(class: u8, subject: u16, detail: u16) -> Enhanced {
        Enhanced {
            class,
            subject,
            detail,
        }
    }

    /// Parses `2.1.5`; RFC 3463 §2: class is 2, 4 or 5, subject and detail
    /// are 1–3 digits.
    pub fn parse(s: &str) -> Option<Enhanced> {
        let mut parts = s.split('.');
        let class: u8 = parts.next()?.parse().ok()?;
        let subject = parts.next()?;
        let detail = parts.next()?;
        if parts.next().is_some() || !matches!(class, 2 | 4 | 5) {
            return None;
        }
        let ok = |p: &str| !p.is_empty() && p.len() <= 3 && p.bytes().all(|b| b.is_ascii_digit());
        if !ok(subject) || !ok(detail) {
            return None;
        }
        Some(Enhanced::new(
            class,
            subject.parse().ok()?,
            detail.parse().ok()?,
        ))
    }
}

impl fmt::Display for Enhanced {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.class, self.subject, self.detail)
    }
}

/// One SMTP reply, possibly multi-line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    code: Code,
    enhanced: Option<Enhanced>,
    lines: Vec<String>,
}

fn code(n: u16) -> Code {
    Code::new(n).expect("reply constructors use valid literal codes")
}

impl Reply {
    /// A reply with an enhanced code, which RFC 2034 §4 requires on every
    /// 2yz/4yz/5yz reply except the greeting and HELO/EHLO.
    pub fn new(n: u16, enhanced: Enhanced, text: impl Into<String>) -> Reply {
        Reply {
            code: code(n),
            enhanced: Some(enhanced),
            lines: vec![text.into()],
        }
    }

    /// A reply without an enhanced code (greeting, HELO, EHLO).
    pub fn plain(n: u16, lines: Vec<String>) -> Reply {
        Reply {
            code: code(n),
            enhanced: None,
            lines: if lines.is_empty() {
                vec![String::new()]
            } else {
                lines
            },
        }
    }

    pub fn code(&self) -> Code {
        self.code
    }

    pub fn enhanced(&self) -> Option<Enhanced> {
        self.enhanced
    }

    pub fn lines(&self) -> &[String] {
        &self.lines
    }

    /// The text of all lines joined by a space, without codes: for logs and
    /// for the envelope's record of a remote reply.
    pub fn text(&self) -> String {
        self.lines.join(" ")
    }

    /// RFC 5321 §3.8 / §4.2.2: 421 means the server closes the channel.
    pub fn closes_session(&self) -> bool {
        self.code.0 == 421
    }

    /// Writes the reply on the wire, continuation lines as `code-text`
    /// (RFC 5321 §4.2.1).
    pub fn write_to(&self, out: &mut impl Write) -> io::Result<()> {
        let last = self.lines.len() - 1;
        for (i, line) in self.lines.iter().enumerate() {
            let sep = if i == last { ' ' } else { '-' };
            match self.enhanced {
                Some(e) => write!(out, "{}{}{} {}\r\n", self.code, sep, e, line)?,
                None if line.is_empty() => write!(out, "{}{}\r\n", self.code, sep)?,
                None => write!(out, "{}{}{}\r\n", self.code, sep, line)?,
            }
        }
        Ok(())
    }

    // ---- the server's replies, one constructor per situation ----

    pub fn greeting(hostname: &str) -> Reply {
        Reply::plain(220, vec![format!("{hostname} ESMTP smtp-relay")])
    }

    pub fn ehlo(hostname: &str, client: &str, keywords: &[String]) -> Reply {
        let mut lines = vec![format!("{hostname} greets {client}")];
        lines.extend(keywords.iter().cloned());
        Reply::plain(250, lines)
    }

    pub fn helo(hostname: &str, client: &str) -> Reply {
        Reply::plain(250, vec![format!("{hostname} greets {client}")])
    }

    pub fn ok(text: &str) -> Reply {
        Reply::new(250, Enhanced::new(2, 0, 0), text)
    }

    pub fn sender_ok() -> Reply {
        Reply::new(250, Enhanced::new(2, 1, 0), "Sender OK")
    }

    pub fn recipient_ok() -> Reply {
        Reply::new(250, Enhanced::new(2, 1, 5), "Recipient OK")
    }

    pub fn start_data() -> Reply {
        Reply::new(
            354,
            Enhanced::new(2, 0, 0),
            "End data with <CR><LF>.<CR><LF>",
        )
    }

    pub fn queued(id: &impl fmt::Display) -> Reply {
        Reply::new(250, Enhanced::new(2, 0, 0), format!("Ok: queued as {id}"))
    }

    pub fn bye(hostname: &str) -> Reply {
        Reply::new(
            221,
            Enhanced::new(2, 0, 0),
            format!("{hostname} closing connection"),
        )
    }

    /// RFC 5321 §3.5.3: 252 when the server will not verify an address.
    pub fn cannot_verify() -> Reply {
        Reply::new(
            252,
            Enhanced::new(2, 5, 2),
            "Cannot VRFY user, but will accept message and attempt delivery",
        )
    }

    pub fn help() -> Reply {
        Reply {
            code: code(214),
            enhanced: Some(Enhanced::new(2, 0, 0)),
            lines: vec![
                "Commands: EHLO HELO MAIL RCPT DATA RSET NOOP QUIT VRFY HELP".into(),
                "See RFC 5321; this server relays mail between hosts".into(),
            ],
        }
    }

    /// 220 2.0.0: RFC 3207 §4, go ahead with the TLS handshake.
    pub fn ready_for_tls() -> Reply {
        Reply::new(220, Enhanced::new(2, 0, 0), "Ready to start TLS")
    }

    /// 530 5.7.0: RFC 3207 §4, `--require-tls` and no STARTTLS yet.
    pub fn must_starttls() -> Reply {
        Reply::new(
            530,
            Enhanced::new(5, 7, 0),
            "Must issue a STARTTLS command first",
        )
    }

    /// 530 5.7.10: RFC 8689 §4.1, `REQUIRETLS` on MAIL in plaintext (it is
    /// only offered over TLS); X.7.10 "encryption needed" (RFC 5248).
    pub fn requiretls_needs_tls() -> Reply {
        Reply::new(
            530,
            Enhanced::new(5, 7, 10),
            "REQUIRETLS needs TLS: issue STARTTLS first",
        )
    }

    /// 530 5.7.0: RFC 4954 §6, a submission listener (RFC 6409 §4.3)
    /// takes MAIL only after AUTH.
    pub fn auth_required() -> Reply {
        Reply::new(530, Enhanced::new(5, 7, 0), "Authentication required")
    }

    /// 553 5.7.1: RFC 6409 §6.1 / RFC 5321 §4.2.5 (mailbox name not
    /// allowed): the authenticated user may not use this sender.
    pub fn sender_not_owned(user: &str) -> Reply {
        Reply::new(
            553,
            Enhanced::new(5, 7, 1),
            format!(
                "Sender address rejected: not owned by user {}",
                crate::smtp::escape(user)
            ),
        )
    }

    /// 550 5.7.23 at MAIL: SPF says `fail` for the sender
    /// (`--auth-results-spf-reject`). RFC 7208 §8.4 asks for 550; RFC
    /// 7372 §3.2 names X.7.23 "SPF validation failed".
    pub fn spf_fail(domain: &str, ip: std::net::IpAddr) -> Reply {
        Reply::new(
            550,
            Enhanced::new(5, 7, 23),
            format!(
                "SPF of {} does not permit {ip} to send its mail (RFC 7208)",
                crate::smtp::escape(domain)
            ),
        )
    }

    /// 550 5.7.1 at the end of the data: DMARC failed for a domain whose
    /// policy is `p=reject` (`--auth-results-dmarc reject`); RFC 7489
    /// §6.6.2 lets the receiver reject, §10.3 suggests 550 5.7.1.
    pub fn dmarc_reject(domain: &str) -> Reply {
        Reply::new(
            550,
            Enhanced::new(5, 7, 1),
            format!(
                "Message rejected: DMARC policy of {} is reject and the message fails it (RFC 7489)",
                crate::smtp::escape(domain)
            ),
        )
    }

    /// 451 4.4.3 at the end of the data: a DNS failure during the
    /// authentication checks (`--auth-results-defer-temperror`); RFC 3463
    /// §3.5 X.4.3 "Directory server failure", RFC 7208 §8.6 / RFC 7489
    /// §6.6.2 let the receiver defer on temperror.
    pub fn auth_temperror() -> Reply {
        Reply::new(
            451,
            Enhanced::new(4, 4, 3),
            "Temporary DNS failure checking SPF/DKIM/DMARC; try again later",
        )
    }

    /// 550 5.7.1 at the end of the data (RFC 5321 §4.3.2 lists 550 there):
    /// `--sender-check-from` and a `From:` address the user does not own.
    pub fn from_not_owned(user: &str) -> Reply {
        Reply::new(
            550,
            Enhanced::new(5, 7, 1),
            format!(
                "From: header address rejected: not owned by user {}",
                crate::smtp::escape(user)
            ),
        )
    }

    /// 454 4.7.0: RFC 3207 §4, TLS cannot be started now.
    pub fn tls_unavailable(why: &str) -> Reply {
        Reply::new(
            454,
            Enhanced::new(4, 7, 0),
            format!("TLS not available: {why}"),
        )
    }

    /// 250 2.0.0: RFC 3030 §2, a BDAT chunk that is not the last.
    pub fn chunk_ok(octets: u64) -> Reply {
        Reply::new(
            250,
            Enhanced::new(2, 0, 0),
            format!("{octets} octets received"),
        )
    }

    /// 421 4.5.0: a BDAT whose size cannot be read; its data would be
    /// taken for commands, so the session ends (RFC 3030 §2).
    pub fn bdat_lost(hostname: &str) -> Reply {
        Reply::new(
            421,
            Enhanced::new(4, 5, 0),
            format!("{hostname} BDAT chunk size unreadable, closing connection"),
        )
    }

    /// 334: RFC 4954 §4, a server challenge (base64); no enhanced code.
    pub fn auth_challenge(base64: &str) -> Reply {
        Reply::plain(334, vec![base64.to_string()])
    }

    /// 235 2.7.0: RFC 4954 §6.
    pub fn auth_ok() -> Reply {
        Reply::new(235, Enhanced::new(2, 7, 0), "Authentication successful")
    }

    /// 535 5.7.8: RFC 4954 §6, wrong user name or password.
    pub fn auth_failed() -> Reply {
        Reply::new(
            535,
            Enhanced::new(5, 7, 8),
            "Authentication credentials invalid",
        )
    }

    /// 501 5.7.0: RFC 4954 §4, the client answered a challenge with `*`.
    pub fn auth_cancelled() -> Reply {
        Reply::new(501, Enhanced::new(5, 7, 0), "Authentication cancelled")
    }

    /// 501 5.5.2: RFC 4954 §4, a response that is not base64.
    pub fn auth_bad_response() -> Reply {
        Reply::new(
            501,
            Enhanced::new(5, 5, 2),
            "Cannot decode the authentication response",
        )
    }

    /// 504 5.5.4: RFC 4954 §4, a mechanism we do not offer.
    pub fn auth_unknown_mechanism() -> Reply {
        Reply::new(
            504,
            Enhanced::new(5, 5, 4),
            "Unrecognized authentication type (PLAIN and LOGIN are offered)",
        )
    }

    /// 538 5.7.11: RFC 4954 §6, AUTH in plaintext from a remote client.
    pub fn auth_needs_tls() -> Reply {
        Reply::new(
            538,
            Enhanced::new(5, 7, 11),
            "Encryption required for requested authentication mechanism; use STARTTLS",
        )
    }

    /// 454 4.7.0: RFC 4954 §6, the password file cannot be read now.
    pub fn auth_unavailable() -> Reply {
        Reply::new(
            454,
            Enhanced::new(4, 7, 0),
            "Temporary authentication failure",
        )
    }

    /// 454 4.7.0: RFC 4954 §6's temporary failure, for a client address
    /// or user name with too many recent AUTH failures (a lockout).
    pub fn auth_locked_out() -> Reply {
        Reply::new(
            454,
            Enhanced::new(4, 7, 0),
            "Too many authentication failures, try again later",
        )
    }

    /// 454 4.7.0: RFC 4954 §6, every password check is busy and none
    /// became free before the session's deadline.
    pub fn auth_busy() -> Reply {
        Reply::new(
            454,
            Enhanced::new(4, 7, 0),
            "Temporary authentication failure, server busy",
        )
    }

    /// 503 5.5.1: a command out of order (RFC 5321 §4.1.4).
    pub fn bad_sequence(text: &str) -> Reply {
        Reply::new(503, Enhanced::new(5, 5, 1), text)
    }

    /// 500 5.5.2: unrecognized command (RFC 5321 §4.2.4).
    pub fn unknown_command() -> Reply {
        Reply::new(500, Enhanced::new(5, 5, 2), "Command unrecognized")
    }

    /// 500 5.5.2: RFC 5321 §4.5.3.1.4, command line over 512 octets.
    pub fn line_too_long() -> Reply {
        Reply::new(500, Enhanced::new(5, 5, 2), "Line too long")
    }

    /// 501 5.5.4: bad arguments; the text carries the expected syntax.
    pub fn syntax(hint: &str) -> Reply {
        Reply::new(501, Enhanced::new(5, 5, 4), format!("Syntax: {hint}"))
    }

    /// 501 5.1.3 / 501 5.1.7: a path that does not parse (RFC 3463 §3.2).
    pub fn bad_address(enhanced: Enhanced, why: &str) -> Reply {
        Reply::new(501, enhanced, why)
    }

    /// 555 5.5.4: MAIL/RCPT parameter not recognized (RFC 5321 §4.1.1.11).
    pub fn unsupported_parameter(param: &str) -> Reply {
        Reply::new(
            555,
            Enhanced::new(5, 5, 4),
            format!("Unsupported parameter {param}"),
        )
    }

    /// 502 5.5.1: a command we know but do not offer (RFC 5321 §4.2.4).
    pub fn not_implemented(verb: &str) -> Reply {
        Reply::new(
            502,
            Enhanced::new(5, 5, 1),
            format!("{verb} not implemented"),
        )
    }

    /// 550 5.7.1: not a relay network client and not a relay domain.
    pub fn relay_denied() -> Reply {
        Reply::new(550, Enhanced::new(5, 7, 1), "Relaying denied")
    }

    /// 550 5.1.1: addresses we never accept (bare `<postmaster>`: this relay
    /// has no local mailboxes).
    pub fn no_such_user(text: &str) -> Reply {
        Reply::new(550, Enhanced::new(5, 1, 1), text)
    }

    /// 452 4.5.3: RFC 5321 §4.5.3.1.10, too many recipients; the client
    /// sends the rest in another transaction.
    pub fn too_many_recipients() -> Reply {
        Reply::new(452, Enhanced::new(4, 5, 3), "Too many recipients")
    }

    /// 552 5.3.4: RFC 1870 §6, message larger than the fixed maximum.
    pub fn too_big(max: u64) -> Reply {
        Reply::new(
            552,
            Enhanced::new(5, 3, 4),
            format!("Message size exceeds fixed maximum of {max} bytes"),
        )
    }

    /// 554 5.4.6: RFC 5321 §6.3, too many Received headers (a mail loop).
    pub fn too_many_hops(n: usize) -> Reply {
        Reply::new(
            554,
            Enhanced::new(5, 4, 6),
            format!("Too many hops ({n} Received headers): mail loop?"),
        )
    }

    /// 550 5.6.11: bare CR or LF in DATA (SMTP smuggling defence,
    /// CVE-2023-51764/5/6; RFC 5321 §2.3.8 allows only CRLF).
    pub fn bare_line_ending() -> Reply {
        Reply::new(
            550,
            Enhanced::new(5, 6, 11),
            "Bare CR or LF in message data is not allowed; use CRLF",
        )
    }

    /// 553 5.6.7 / 553 5.1.3: SMTPUTF8 address without the SMTPUTF8 parameter
    /// (RFC 6531 §3.4).
    pub fn utf8_without_smtputf8() -> Reply {
        Reply::new(
            553,
            Enhanced::new(5, 6, 7),
            "Non-ASCII address requires the SMTPUTF8 parameter",
        )
    }

    /// 553 5.1.3: a well-formed address we refuse, e.g. a domain that is
    /// not IDNA2008 (RFC 6531 §3.3, RFC 5891 §5.4); RFC 5321 §4.2.2:
    /// "mailbox name not allowed".
    pub fn address_not_allowed(why: &str) -> Reply {
        Reply::new(
            553,
            Enhanced::new(5, 1, 3),
            format!("Address not allowed: {why}"),
        )
    }

    /// 451 4.3.0: we could not store the message; nothing was accepted.
    pub fn local_error() -> Reply {
        Reply::new(
            451,
            Enhanced::new(4, 3, 0),
            "Local error in processing, message not accepted; try again later",
        )
    }

    /// 452 4.3.1: the spool is out of space.
    pub fn insufficient_storage() -> Reply {
        Reply::new(
            452,
            Enhanced::new(4, 3, 1),
            "Insufficient system storage; try again later",
        )
    }

    /// 421 4.3.2: every worker is busy and the backlog is full.
    pub fn too_busy(hostname: &str) -> Reply {
        Reply::new(
            421,
            Enhanced::new(4, 3, 2),
            format!("{hostname} Service not available, too busy, try again later"),
        )
    }

    /// 421 4.7.0: too many connections from one client address.
    pub fn too_many_connections(hostname: &str) -> Reply {
        Reply::new(
            421,
            Enhanced::new(4, 7, 0),
            format!("{hostname} Too many connections from your address, try again later"),
        )
    }

    /// 421 4.4.2: the client was silent too long (RFC 5321 §4.5.3.2.7).
    pub fn timeout(hostname: &str) -> Reply {
        Reply::new(
            421,
            Enhanced::new(4, 4, 2),
            format!("{hostname} Timeout, closing connection"),
        )
    }

    /// 421 4.3.2: the server is shutting down.
    pub fn shutting_down(hostname: &str) -> Reply {
        Reply::new(
            421,
            Enhanced::new(4, 3, 2),
            format!("{hostname} Service shutting down, closing connection"),
        )
    }

    /// 421 4.7.0: too many errors in one session.
    pub fn too_many_errors(hostname: &str) -> Reply {
        Reply::new(
            421,
            Enhanced::new(4, 7, 0),
            format!("{hostname} Too many errors, closing connection"),
        )
    }
}

impl fmt::Display for Reply {
    /// The reply as it travels, without the final CRLF (for logs).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.enhanced {
            Some(e) => write!(f, "{} {} {}", self.code, e, self.text()),
            None => write!(f, "{} {}", self.code, self.text()),
        }
    }
}

/// Why a reply could not be parsed (client side).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReplyParseError {
    /// A line that is not `ddd[ -]text`.
    Malformed(String),
    /// A continuation line whose code differs from the first line's.
    CodeMismatch,
}

impl fmt::Display for ReplyParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReplyParseError::Malformed(l) => write!(f, "malformed reply line {l:?}"),
            ReplyParseError::CodeMismatch => write!(f, "multi-line reply changes its code"),
        }
    }
}

impl std::error::Error for ReplyParseError {}

/// Builds a reply from lines read off the wire, one call per line.
/// RFC 5321 §4.2.1: `ddd-text` continues, `ddd text` (or `ddd`) ends.
#[derive(Debug, Default)]
pub struct ReplyParser {
    code: Option<Code>,
    enhanced: Option<Enhanced>,
    lines: Vec<String>,
}

impl ReplyParser {
    pub fn new() -> ReplyParser {
        ReplyParser::default()
    }

    /// Feeds one line without its CRLF. Returns the reply once the last line
    /// has been fed.
    pub fn feed(&mut self, line: &str) -> Result<Option<Reply>, ReplyParseError> {
        let bytes = line.as_bytes();
        let malformed = || {
            let shown: String = line.chars().take(80).collect();
            ReplyParseError::Malformed(super::printable::escape(&shown).into_owned())
        };
        if bytes.len() < 3 || !bytes[..3].iter().all(u8::is_ascii_digit) {
            return Err(malformed());
        }
        let n: u16 = line[..3].parse().map_err(|_| malformed())?;
        let code = Code::new(n).ok_or_else(malformed)?;
        let (last, rest) = match bytes.get(3) {
            None => (true, ""),
            Some(b' ') => (true, &line[4..]),
            Some(b'-') => (false, &line[4..]),
            Some(_) => return Err(malformed()),
        };
        match self.code {
            Some(c) if c != code => return Err(ReplyParseError::CodeMismatch),
            _ => self.code = Some(code),
        }
        // RFC 3463 / 2034: an enhanced code leads the text of each line when
        // the server uses them; keep it only when its class matches the code.
        let mut text = rest;
        if let Some((first, tail)) = rest.split_once(' ').or(Some((rest, ""))) {
            if let Some(e) = Enhanced::parse(first) {
                if u16::from(e.class) == n / 100 {
                    if self.lines.is_empty() {
                        self.enhanced = Some(e);
                    }
                    text = tail;
                }
            }
        }
        // a next hop's text ends up in logs, `queue list` and DSNs: its
        // unprintable characters are escaped once, here
        self.lines.push(super::printable::escape(text).into_owned());
        if last {
            let reply = Reply {
                code,
                enhanced: self.enhanced,
                lines: std::mem::take(&mut self.lines),
            };
            self.code = None;
            self.enhanced = None;
            Ok(Some(reply))
        } else {
            Ok(None)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wire(r: &Reply) -> String {
        let mut v = Vec::new();
        r.write_to(&mut v).unwrap();
        String::from_utf8(v).unwrap()
    }

    #[test]
    fn renders_single_and_multi_line() {
        assert_eq!(
            wire(&Reply::bad_sequence("need MAIL first")),
            "503 5.5.1 need MAIL first\r\n"
        );
        let ehlo = Reply::ehlo("mx", "c", &["PIPELINING".into(), "8BITMIME".into()]);
        assert_eq!(
            wire(&ehlo),
            "250-mx greets c\r\n250-PIPELINING\r\n250 8BITMIME\r\n"
        );
    }

    #[test]
    fn parses_replies() {
        let mut p = ReplyParser::new();
        assert_eq!(p.feed("250-mx.example greets you").unwrap(), None);
        assert_eq!(p.feed("250-SIZE 1000").unwrap(), None);
        let r = p.feed("250 PIPELINING").unwrap().unwrap();
        assert_eq!(r.code().value(), 250);
        assert_eq!(r.lines().len(), 3);
        assert_eq!(r.enhanced(), None);

        let r = p.feed("550 5.1.1 no such user").unwrap().unwrap();
        assert_eq!(r.enhanced(), Some(Enhanced::new(5, 1, 1)));
        assert_eq!(r.text(), "no such user");

        // enhanced class that contradicts the code is text, not a code
        let r = p.feed("250 5.1.1 odd").unwrap().unwrap();
        assert_eq!(r.enhanced(), None);
        assert_eq!(r.text(), "5.1.1 odd");

        assert_eq!(p.feed("354").unwrap().unwrap().code().value(), 354);
        assert!(p.feed("25O ok").is_err());
        assert!(p.feed("2500 ok").is_err());
        assert!(p.feed("999 ok").is_err());
        assert_eq!(p.feed("250-a").unwrap(), None);
        assert_eq!(p.feed("251 b"), Err(ReplyParseError::CodeMismatch));
    }

    #[test]
    fn enhanced_parse() {
        assert_eq!(Enhanced::parse("4.7.0"), Some(Enhanced::new(4, 7, 0)));
        assert_eq!(Enhanced::parse("5.1.10"), Some(Enhanced::new(5, 1, 10)));
        assert_eq!(Enhanced::parse("3.1.1"), None);
        assert_eq!(Enhanced::parse("5.1"), None);
        assert_eq!(Enhanced::parse("5.1.1.1"), None);
        assert_eq!(Enhanced::parse("5.1.1234"), None);
    }
}
