//! The policy fetch (RFC 8461 §3.3): one HTTPS/1.1 GET of
//! `https://mta-sts.DOMAIN/.well-known/mta-sts.txt`, blocking, over
//! rustls with the certificate checked for `mta-sts.DOMAIN`.
//!
//! Hand-written rather than an HTTP client crate: the one request needs
//! no redirects (§3.3 forbids following them), no cookies, no proxies and
//! no connection reuse, and the blocking clients (ureq, reqwest's
//! blocking mode) would bring their own TLS set-up and, for reqwest, a
//! second async runtime. What is here: a status line, headers, a body
//! delimited by Content-Length, chunked coding or the end of the
//! connection, every read under one deadline and a size limit.

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// RFC 8461 §3.3 suggests 64 KiB as the most a sender should read.
pub const MAX_POLICY: usize = 64 * 1024;
/// Headers beyond this are refused (they are not the policy).
const MAX_HEAD: usize = 16 * 1024;

/// Where and how to fetch.
pub struct Fetch<'a> {
    /// `mta-sts.DOMAIN`: the TLS name and the Host header.
    pub host: &'a str,
    pub addrs: &'a [IpAddr],
    /// 443 but for tests (`--mta-sts-port`).
    pub port: u16,
    pub tls: Arc<rustls::ClientConfig>,
    /// For the whole fetch: connect, handshake, request and body.
    pub timeout: Duration,
}

/// The policy text, or why there is none.
pub fn fetch(f: &Fetch) -> Result<String, String> {
    let deadline = Instant::now() + f.timeout;
    let mut last = "no address".to_string();
    for ip in f.addrs {
        let addr = SocketAddr::new(*ip, f.port);
        match get(f, addr, deadline) {
            Ok(text) => return Ok(text),
            Err(e) => last = format!("{addr}: {e}"),
        }
        if Instant::now() >= deadline {
            break;
        }
    }
    Err(last)
}

fn get(f: &Fetch, addr: SocketAddr, deadline: Instant) -> Result<String, String> {
    let left = || deadline.saturating_duration_since(Instant::now());
    let tcp = TcpStream::connect_timeout(&addr, left().max(Duration::from_millis(1)))
        .map_err(|e| format!("connect: {e}"))?;
    let name = rustls::pki_types::ServerName::try_from(f.host.to_string())
        .map_err(|e| format!("{:?} is not a TLS name: {e}", f.host))?;
    let conn =
        rustls::ClientConnection::new(f.tls.clone(), name).map_err(|e| format!("TLS: {e}"))?;
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    let request = format!(
        "GET /.well-known/mta-sts.txt HTTP/1.1\r\nHost: {}\r\nUser-Agent: smtp-relay\r\nAccept: text/plain\r\nConnection: close\r\n\r\n",
        f.host
    );
    tls.sock
        .set_write_timeout(Some(left().max(Duration::from_millis(1))))
        .map_err(|e| e.to_string())?;
    // the handshake happens in this first write (certificate checked)
    tls.write_all(request.as_bytes())
        .and_then(|_| tls.flush())
        .map_err(|e| format!("TLS or request: {e}"))?;
    let raw = read_bounded(&mut tls, deadline)?;
    parse_response(&raw)
}

/// Reads until the server closes, the deadline passes, or more than a
/// policy and its headers could be.
fn read_bounded(
    r: &mut rustls::StreamOwned<rustls::ClientConnection, TcpStream>,
    deadline: Instant,
) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err("no complete answer in time".into());
        }
        r.sock
            .set_read_timeout(Some(left))
            .map_err(|e| e.to_string())?;
        match r.read(&mut buf) {
            Ok(0) => return Ok(out),
            Ok(n) => out.extend_from_slice(&buf[..n]),
            // a server closing without close_notify: what it sent counts,
            // the length checks below decide whether it is complete
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(out),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return Err("no complete answer in time".into())
            }
            Err(e) => return Err(format!("read: {e}")),
        }
        if out.len() > MAX_HEAD + MAX_POLICY + 1024 {
            return Err(format!("answer larger than {MAX_POLICY} octets"));
        }
    }
}

/// Status 200, `Content-Type: text/plain` (§3.2), the body within
/// [`MAX_POLICY`]; a redirect is a failure (§3.3).
pub fn parse_response(raw: &[u8]) -> Result<String, String> {
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or("incomplete HTTP header")?;
    let head = std::str::from_utf8(&raw[..end]).map_err(|_| "HTTP header is not text")?;
    let body = &raw[end + 4..];
    let mut lines = head.split("\r\n");
    let status = lines.next().unwrap_or_default();
    let code = status
        .split(' ')
        .nth(1)
        .filter(|_| status.starts_with("HTTP/1."))
        .ok_or_else(|| format!("bad status line {status:?}"))?;
    if code.starts_with('3') {
        return Err(format!(
            "{status}: redirects are not followed (RFC 8461 §3.3)"
        ));
    }
    if code != "200" {
        return Err(format!("HTTP status {status:?}"));
    }
    let header = |name: &str| {
        head.split("\r\n").skip(1).find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_string())
        })
    };
    let ctype = header("content-type").unwrap_or_default();
    let mime = ctype.split(';').next().unwrap_or_default().trim();
    if !mime.eq_ignore_ascii_case("text/plain") {
        return Err(format!(
            "Content-Type {ctype:?}, not text/plain (RFC 8461 §3.2)"
        ));
    }
    let chunked = header("transfer-encoding").is_some_and(|t| t.eq_ignore_ascii_case("chunked"));
    let body = if chunked {
        dechunk(body)?
    } else if let Some(len) = header("content-length") {
        let len: usize = len
            .parse()
            .map_err(|_| format!("bad Content-Length {len:?}"))?;
        if len > MAX_POLICY {
            return Err(format!("policy of {len} octets, more than {MAX_POLICY}"));
        }
        body.get(..len)
            .ok_or("body shorter than its Content-Length")?
            .to_vec()
    } else {
        body.to_vec()
    };
    if body.len() > MAX_POLICY {
        return Err(format!("policy larger than {MAX_POLICY} octets"));
    }
    String::from_utf8(body).map_err(|_| "policy is not UTF-8 text".into())
}

/// RFC 9112 §7.1: `size[;ext] CRLF data CRLF ... 0 CRLF CRLF`.
fn dechunk(mut b: &[u8]) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    loop {
        let eol = b.windows(2).position(|w| w == b"\r\n").ok_or("bad chunk")?;
        let line = std::str::from_utf8(&b[..eol]).map_err(|_| "bad chunk size")?;
        let size = line.split(';').next().unwrap_or_default().trim();
        let n = usize::from_str_radix(size, 16).map_err(|_| format!("bad chunk size {size:?}"))?;
        b = &b[eol + 2..];
        if n == 0 {
            return Ok(out);
        }
        if out.len() + n > MAX_POLICY {
            return Err(format!("policy larger than {MAX_POLICY} octets"));
        }
        let data = b.get(..n).ok_or("truncated chunk")?;
        out.extend_from_slice(data);
        b = b.get(n + 2..).ok_or("truncated chunk")?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn responses() {
        let ok = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: 5\r\n\r\nhelloXX";
        assert_eq!(parse_response(ok).unwrap(), "hello");
        let chunked = b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nhel\r\n2;x=y\r\nlo\r\n0\r\n\r\n";
        assert_eq!(parse_response(chunked).unwrap(), "hello");
        let closed = b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\nhello";
        assert_eq!(parse_response(closed).unwrap(), "hello");
        let redirect = b"HTTP/1.1 301 Moved\r\nLocation: https://x/\r\n\r\n";
        assert!(parse_response(redirect).unwrap_err().contains("redirects"));
        let html = b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\n\r\nhello";
        assert!(parse_response(html).unwrap_err().contains("text/plain"));
        let big = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n",
            MAX_POLICY + 1
        );
        assert!(parse_response(big.as_bytes()).is_err());
        assert!(parse_response(b"HTTP/1.1 404 Not Found\r\n\r\n").is_err());
        assert!(parse_response(b"HTTP/1.1 200 OK\r\n").is_err());
    }
}
