//! A client of Postfix's policy delegation protocol
//! (<https://www.postfix.org/SMTPD_POLICY_README.html>): a request is
//! `name=value` lines ended by an empty line; the reply is `action=...`
//! (other attributes ignored) ended by an empty line. One connection per
//! session, reused for each request; a request that cannot be written or
//! answered within the timeout closes it, and the caller applies
//! `--policy-default-action`.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use crate::smtp::reply::Enhanced;
use crate::smtp::Reply;

pub use crate::config::edge::{DefaultAction, PolicyConfig, Target};

/// The service's decision, classified once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// OK: accepted (no later check of ours is skipped: there is none).
    Ok,
    /// DUNNO, or an action we do not carry out (logged).
    Dunno,
    /// REJECT, DEFER, DEFER_IF_PERMIT, `4xx`/`5xx text`: this reply.
    Refuse(Reply),
    /// HOLD: accepted, and kept in the queue until `queue release`.
    Hold,
    /// PREPEND: this header line goes on top of the message.
    Prepend(String),
}

/// RFC 2034 §4 wants an enhanced code on every 4yz/5yz reply: the service's
/// own, or x.7.1 as Postfix adds.
fn refusal(code: u16, text: &str, default_text: &str) -> Option<Reply> {
    if !(400..600).contains(&code) {
        return None;
    }
    let class = (code / 100) as u8;
    let (enhanced, text) = match text.split_once(' ') {
        Some((e, rest)) if Enhanced::parse(e).is_some_and(|e| e.class == class) => {
            (Enhanced::parse(e), rest.trim())
        }
        _ => (None, text.trim()),
    };
    let enhanced = enhanced.unwrap_or(Enhanced::new(class, 7, 1));
    let text = if text.is_empty() { default_text } else { text };
    Some(Reply::new(code, enhanced, clean(text)))
}

/// A reply text without control characters.
fn clean(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

/// An `action=` value → what to do. `None` for an action we do not
/// know or carry out (the caller logs it and goes on as DUNNO).
pub fn parse_action(value: &str) -> Option<Action> {
    let value = value.trim();
    let (word, text) = match value.split_once([' ', '\t']) {
        Some((w, t)) => (w, t.trim()),
        None => (value, ""),
    };
    // Postfix access(5): REJECT is $access_map_reject_code (554), DEFER
    // and DEFER_IF_PERMIT $access_map_defer_code (450), both x.7.1.
    match word.to_ascii_uppercase().as_str() {
        "OK" => Some(Action::Ok),
        "DUNNO" => Some(Action::Dunno),
        "REJECT" => refusal(554, text, "Access denied").map(Action::Refuse),
        "DEFER" | "DEFER_IF_PERMIT" => refusal(450, text, "Try again later").map(Action::Refuse),
        "HOLD" => Some(Action::Hold),
        "PREPEND" => {
            // a header field: a name of printable characters but ':',
            // then ':' (RFC 5322 §2.2)
            let (name, _) = text.split_once(':')?;
            let name_ok = !name.is_empty() && name.bytes().all(|b| (33..=126).contains(&b));
            (name_ok && !text.contains(['\r', '\n'])).then(|| Action::Prepend(text.to_string()))
        }
        w if w.len() == 3 && w.bytes().all(|b| b.is_ascii_digit()) => {
            let code: u16 = w.parse().ok()?;
            refusal(code, text, "Access denied").map(Action::Refuse)
        }
        _ => None,
    }
}

enum Stream {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl Stream {
    fn set_timeouts(&self, t: Option<Duration>) -> io::Result<()> {
        match self {
            Stream::Tcp(s) => {
                s.set_read_timeout(t)?;
                s.set_write_timeout(t)
            }
            Stream::Unix(s) => {
                s.set_read_timeout(t)?;
                s.set_write_timeout(t)
            }
        }
    }
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.read(buf),
            Stream::Unix(s) => s.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.write(buf),
            Stream::Unix(s) => s.write(buf),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        match self {
            Stream::Tcp(s) => s.flush(),
            Stream::Unix(s) => s.flush(),
        }
    }
}

/// A reply is at most this many lines of at most this many octets.
const MAX_REPLY_LINES: usize = 100;
const MAX_REPLY_LINE: u64 = 4096;

/// One session's connection to the service, opened at its first request.
pub struct PolicyClient {
    stream: Option<BufReader<Stream>>,
    /// Requests sent on the open connection.
    used: usize,
}

impl Default for PolicyClient {
    fn default() -> PolicyClient {
        PolicyClient::new()
    }
}

impl PolicyClient {
    pub fn new() -> PolicyClient {
        PolicyClient {
            stream: None,
            used: 0,
        }
    }

    fn connect(cfg: &PolicyConfig) -> io::Result<Stream> {
        let s = match &cfg.target {
            Target::Unix(p) => Stream::Unix(UnixStream::connect(p)?),
            Target::Inet { host, port } => {
                let mut last = io::Error::other("no address");
                let mut found = None;
                for a in (host.as_str(), *port).to_socket_addrs()? {
                    match TcpStream::connect_timeout(&a, cfg.timeout) {
                        Ok(s) => {
                            found = Some(s);
                            break;
                        }
                        Err(e) => last = e,
                    }
                }
                Stream::Tcp(found.ok_or(last)?)
            }
        };
        Ok(s)
    }

    /// Sends `attrs` and reads the `action=` value. A connection kept
    /// from an earlier request may have been closed by the service while
    /// idle: then the request is sent once more on a new one.
    pub fn ask(&mut self, cfg: &PolicyConfig, attrs: &[(&str, String)]) -> io::Result<String> {
        let mut request = String::new();
        for (k, v) in attrs {
            // one attribute per line: a value never carries a line end
            let v: String = v
                .chars()
                .map(|c| if c == '\n' || c == '\r' { ' ' } else { c })
                .collect();
            request.push_str(&format!("{k}={v}\n"));
        }
        request.push('\n');
        let reused = self.stream.is_some() && self.used > 0;
        match self.exchange(cfg, request.as_bytes()) {
            Ok(a) => Ok(a),
            Err(e) if reused && !matches!(e.kind(), io::ErrorKind::TimedOut) => {
                log::debug!("policy service {}: reconnecting after {e}", cfg.target);
                self.exchange(cfg, request.as_bytes())
            }
            Err(e) => Err(e),
        }
    }

    fn exchange(&mut self, cfg: &PolicyConfig, request: &[u8]) -> io::Result<String> {
        let deadline = Instant::now() + cfg.timeout;
        let result = self.exchange_inner(cfg, request, deadline);
        if result.is_err() {
            self.stream = None;
            self.used = 0;
        }
        result
    }

    fn exchange_inner(
        &mut self,
        cfg: &PolicyConfig,
        request: &[u8],
        deadline: Instant,
    ) -> io::Result<String> {
        if self.stream.is_none() {
            self.stream = Some(BufReader::new(Self::connect(cfg)?));
            self.used = 0;
        }
        let Some(r) = self.stream.as_mut() else {
            return Err(io::Error::other("no connection"));
        };
        let left = |d: Instant| {
            let l = d.saturating_duration_since(Instant::now());
            if l.is_zero() {
                Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "policy reply timeout",
                ))
            } else {
                Ok(l)
            }
        };
        r.get_ref().set_timeouts(Some(left(deadline)?))?;
        r.get_mut().write_all(request)?;
        r.get_mut().flush()?;
        self.used += 1;
        let mut action = None;
        let mut line = Vec::new();
        for _ in 0..MAX_REPLY_LINES {
            r.get_ref().set_timeouts(Some(left(deadline)?))?;
            line.clear();
            let n = r.by_ref().take(MAX_REPLY_LINE).read_until(b'\n', &mut line);
            let n = n.map_err(|e| match e.kind() {
                io::ErrorKind::WouldBlock => {
                    io::Error::new(io::ErrorKind::TimedOut, "policy reply timeout")
                }
                _ => e,
            })?;
            if n == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the service closed the connection",
                ));
            }
            if line.last() != Some(&b'\n') {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "reply line too long",
                ));
            }
            let text = String::from_utf8_lossy(&line);
            let text = text.trim_end_matches(['\r', '\n']);
            if text.is_empty() {
                return action.ok_or_else(|| {
                    io::Error::new(io::ErrorKind::InvalidData, "reply without action=")
                });
            }
            if let Some(v) = text.strip_prefix("action=") {
                action.get_or_insert_with(|| v.to_string());
            }
        }
        Err(io::Error::new(io::ErrorKind::InvalidData, "reply too long"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(a: &str) -> String {
        match parse_action(a) {
            Some(Action::Refuse(r)) => r.to_string(),
            other => panic!("{a}: {other:?}"),
        }
    }

    #[test]
    fn actions() {
        assert_eq!(parse_action("OK"), Some(Action::Ok));
        assert_eq!(parse_action("dunno"), Some(Action::Dunno));
        assert_eq!(refused("REJECT"), "554 5.7.1 Access denied");
        assert_eq!(refused("REJECT go away"), "554 5.7.1 go away");
        assert_eq!(refused("DEFER busy"), "450 4.7.1 busy");
        assert_eq!(
            refused("DEFER_IF_PERMIT greylisted"),
            "450 4.7.1 greylisted"
        );
        assert_eq!(
            refused("550 5.7.23 SPF fail"),
            "550 5.7.23 SPF fail",
            "the service's own enhanced code"
        );
        assert_eq!(refused("451 slow down"), "451 4.7.1 slow down");
        assert_eq!(
            refused("550 4.7.1 x"),
            "550 5.7.1 4.7.1 x",
            "class mismatch"
        );
        assert_eq!(parse_action("250 fine"), None);
        assert_eq!(parse_action("HOLD"), Some(Action::Hold));
        assert_eq!(
            parse_action("PREPEND X-Policy: yes"),
            Some(Action::Prepend("X-Policy: yes".into()))
        );
        assert_eq!(parse_action("PREPEND no colon"), None);
        assert_eq!(parse_action("FILTER smtp:x"), None);
        assert_eq!(parse_action("WARN"), None);
    }

    #[test]
    fn targets() {
        assert_eq!(
            Target::parse("inet:127.0.0.1:10023").unwrap(),
            Target::Inet {
                host: "127.0.0.1".into(),
                port: 10023
            }
        );
        assert_eq!(
            Target::parse("inet:[::1]:9").unwrap(),
            Target::Inet {
                host: "::1".into(),
                port: 9
            }
        );
        assert_eq!(
            Target::parse("unix:/run/p.sock").unwrap(),
            Target::Unix("/run/p.sock".into())
        );
        assert!(Target::parse("127.0.0.1:1").is_err());
        assert!(Target::parse("inet:host").is_err());
    }
}
