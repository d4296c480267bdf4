//! The PROXY protocol, versions 1 and 2 (HAProxy's `proxy-protocol.txt`):
//! a load balancer in front of the relay opens each connection with a
//! header naming the real client, so relay control, per-IP limits, AUTH
//! failure limits, `Received:` and the logs see the client, not the
//! balancer.
//!
//! Only a peer in `--proxy-from` is read from at all (server.rs closes
//! anyone else unread), so a header from an untrusted peer never changes
//! the client address.
//!
//! [`parse`] is pure: it looks at the bytes read so far and says how many
//! more it needs at least, so the reader never reads past the header into
//! the SMTP dialogue (a v1 line is read a byte at a time; a v2 header in
//! two reads). The whole header must arrive within a deadline.

use std::io::{self, Read};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

/// The v2 signature (spec §2.2): it cannot begin any v1 line or any SMTP
/// command, and contains `QUIT\n` so a server not expecting it quits.
pub const V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";

/// Spec §2.1: a v1 line is at most 107 bytes, CRLF included.
pub const V1_MAX: usize = 107;

/// The most address and TLV bytes taken after a v2 header's first 16:
/// an IPv6 block is 36, a UNIX one 216; the rest are TLVs, which are
/// skipped. The spec bounds the length only by its 16-bit field; a
/// longer header is refused rather than buffered.
pub const V2_MAX_PAYLOAD: usize = 1024;

/// The longest a header may take to arrive, at most (also bounded by
/// `--timeout`): a proxy writes it at once on connecting.
pub const HEADER_DEADLINE: Duration = Duration::from_secs(5);

const V1_PREFIX: &[u8] = b"PROXY ";

/// Every header is longer than this, so it is always safe to read.
const FIRST_READ: usize = 8;

/// What a complete header says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Header {
    /// v2 `LOCAL` (a health check of the proxy's own), v1 `UNKNOWN`, or a
    /// v2 `PROXY` for a family without IP addresses (`UNSPEC`, `UNIX`):
    /// the connection's own endpoints stand (spec §2.1, §2.2).
    Local,
    /// The client's address and the address it connected to.
    Proxied {
        source: SocketAddr,
        destination: SocketAddr,
    },
}

/// Where [`parse`] got to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Parse {
    /// At least this many more bytes are needed; reading no more than
    /// this never reads past the header.
    More(usize),
    /// A header, and its length in bytes (what follows is SMTP).
    Done(Header, usize),
}

/// Why a header was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Malformed {
    /// Starts like neither version.
    NotProxy,
    /// A v1 line past 107 bytes, or a v2 length past [`V2_MAX_PAYLOAD`].
    TooLong,
    /// A v1 line that breaks the grammar, and how.
    V1(&'static str),
    /// A v2 header that breaks the format, and how.
    V2(&'static str),
}

impl std::fmt::Display for Malformed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Malformed::NotProxy => write!(f, "not a PROXY protocol header"),
            Malformed::TooLong => write!(f, "header too long"),
            Malformed::V1(why) => write!(f, "bad v1 header: {why}"),
            Malformed::V2(why) => write!(f, "bad v2 header: {why}"),
        }
    }
}

/// Parses the bytes received so far.
pub fn parse(buf: &[u8]) -> Result<Parse, Malformed> {
    let v1 = starts_like(buf, V1_PREFIX);
    let v2 = starts_like(buf, &V2_SIGNATURE);
    if !v1 && !v2 {
        return Err(Malformed::NotProxy);
    }
    if buf.len() < FIRST_READ {
        return Ok(Parse::More(FIRST_READ - buf.len()));
    }
    if v1 {
        parse_v1(buf)
    } else {
        parse_v2(buf)
    }
}

/// Whether `buf` and `prefix` agree on their common length.
fn starts_like(buf: &[u8], prefix: &[u8]) -> bool {
    let n = buf.len().min(prefix.len());
    buf[..n] == prefix[..n]
}

/// Spec §2.1: `PROXY TCP4|TCP6 SRC DST SPORT DPORT\r\n` with single
/// spaces, or `PROXY UNKNOWN` and anything up to the CRLF.
fn parse_v1(buf: &[u8]) -> Result<Parse, Malformed> {
    let Some(lf) = buf.iter().position(|&b| b == b'\n') else {
        return if buf.len() >= V1_MAX {
            Err(Malformed::TooLong)
        } else {
            Ok(Parse::More(1))
        };
    };
    let len = lf + 1;
    if len > V1_MAX {
        return Err(Malformed::TooLong);
    }
    if buf[lf - 1] != b'\r' {
        return Err(Malformed::V1("line not ended by CRLF"));
    }
    let line = std::str::from_utf8(&buf[V1_PREFIX.len()..lf - 1])
        .map_err(|_| Malformed::V1("not ASCII"))?;
    if !line.is_ascii() {
        return Err(Malformed::V1("not ASCII"));
    }
    // "the receiver must ignore anything presented before the CRLF is
    // found" after UNKNOWN
    if line == "UNKNOWN" || line.starts_with("UNKNOWN ") {
        return Ok(Parse::Done(Header::Local, len));
    }
    let fields: Vec<&str> = line.split(' ').collect();
    let [proto, src, dst, sport, dport] = fields[..] else {
        return Err(Malformed::V1("not PROTO SRC DST SPORT DPORT"));
    };
    let (src, dst): (IpAddr, IpAddr) = match proto {
        "TCP4" => (
            v1_addr::<Ipv4Addr>(src)?.into(),
            v1_addr::<Ipv4Addr>(dst)?.into(),
        ),
        "TCP6" => (
            v1_addr::<Ipv6Addr>(src)?.into(),
            v1_addr::<Ipv6Addr>(dst)?.into(),
        ),
        _ => return Err(Malformed::V1("protocol not TCP4, TCP6 or UNKNOWN")),
    };
    Ok(Parse::Done(
        Header::Proxied {
            source: SocketAddr::new(src, v1_port(sport)?),
            destination: SocketAddr::new(dst, v1_port(dport)?),
        },
        len,
    ))
}

fn v1_addr<A: std::str::FromStr>(s: &str) -> Result<A, Malformed> {
    s.parse()
        .map_err(|_| Malformed::V1("address does not match the protocol"))
}

/// A port: 1 to 5 decimal digits, at most 65535 (no sign, no spaces).
fn v1_port(s: &str) -> Result<u16, Malformed> {
    if s.is_empty() || s.len() > 5 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(Malformed::V1("bad port"));
    }
    s.parse().map_err(|_| Malformed::V1("bad port"))
}

/// Spec §2.2: signature, version 2 and command, family and transport,
/// length, then addresses and TLVs (skipped).
fn parse_v2(buf: &[u8]) -> Result<Parse, Malformed> {
    if buf.len() < 16 {
        return Ok(Parse::More(16 - buf.len()));
    }
    if buf[12] >> 4 != 2 {
        return Err(Malformed::V2("version not 2"));
    }
    let local = match buf[12] & 0x0f {
        0x0 => true,
        0x1 => false,
        _ => return Err(Malformed::V2("command not LOCAL or PROXY")),
    };
    let payload = usize::from(u16::from_be_bytes([buf[14], buf[15]]));
    if payload > V2_MAX_PAYLOAD {
        return Err(Malformed::TooLong);
    }
    let len = 16 + payload;
    if buf.len() < len {
        return Ok(Parse::More(len - buf.len()));
    }
    let block = &buf[16..len];
    // "the receiver must accept this connection as valid and must use
    // the real connection endpoints and discard the protocol block
    // including the family"
    if local {
        return Ok(Parse::Done(Header::Local, len));
    }
    let header = match buf[13] {
        // UNSPEC, and UNIX stream/datagram: no IP address to use
        0x00 | 0x31 | 0x32 => Header::Local,
        // TCP over IPv4: 4 + 4 + 2 + 2
        0x11 => {
            let a = block
                .get(..12)
                .ok_or(Malformed::V2("address block too short"))?;
            let ip = |i: usize| IpAddr::from([a[i], a[i + 1], a[i + 2], a[i + 3]]);
            proxied(ip(0), ip(4), &a[8..12])
        }
        // TCP over IPv6: 16 + 16 + 2 + 2
        0x21 => {
            let a = block
                .get(..36)
                .ok_or(Malformed::V2("address block too short"))?;
            let ip = |i: usize| {
                let mut o = [0u8; 16];
                o.copy_from_slice(&a[i..i + 16]);
                IpAddr::from(o)
            };
            proxied(ip(0), ip(16), &a[32..36])
        }
        0x12 | 0x22 => return Err(Malformed::V2("UDP on a TCP listener")),
        _ => return Err(Malformed::V2("unknown family or transport")),
    };
    Ok(Parse::Done(header, len))
}

/// A v2 `PROXY` header's addresses; `ports` is source then destination,
/// in network byte order.
fn proxied(src: IpAddr, dst: IpAddr, ports: &[u8]) -> Header {
    Header::Proxied {
        source: SocketAddr::new(src, u16::from_be_bytes([ports[0], ports[1]])),
        destination: SocketAddr::new(dst, u16::from_be_bytes([ports[2], ports[3]])),
    }
}

/// Why no header was read from a trusted peer.
#[derive(Debug)]
pub enum ReadError {
    /// The peer closed before sending anything: a TCP health check.
    Closed,
    /// Closed after `n` bytes of a header.
    Truncated(usize),
    /// Not complete by the deadline.
    Timeout,
    Malformed(Malformed),
    Io(io::Error),
}

impl std::fmt::Display for ReadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ReadError::Closed => write!(f, "closed before any header"),
            ReadError::Truncated(n) => write!(f, "closed after {n} bytes of a header"),
            ReadError::Timeout => write!(f, "header not complete in time"),
            ReadError::Malformed(m) => write!(f, "{m}"),
            ReadError::Io(e) => write!(f, "{e}"),
        }
    }
}

/// Reads one header from `stream`, and not a byte more, by `deadline`.
/// Leaves the stream's read timeout set; the session sets its own.
pub fn read_header(stream: &mut TcpStream, deadline: Instant) -> Result<Header, ReadError> {
    let mut buf = Vec::with_capacity(64);
    loop {
        let want = match parse(&buf).map_err(ReadError::Malformed)? {
            Parse::Done(header, _) => return Ok(header),
            Parse::More(n) => n,
        };
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(ReadError::Timeout);
        }
        stream.set_read_timeout(Some(left)).map_err(ReadError::Io)?;
        let start = buf.len();
        buf.resize(start + want, 0);
        match stream.read(&mut buf[start..]) {
            Ok(0) if start == 0 => return Err(ReadError::Closed),
            Ok(0) => return Err(ReadError::Truncated(start)),
            Ok(n) => buf.truncate(start + n),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => buf.truncate(start),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                return Err(ReadError::Timeout)
            }
            Err(e) => return Err(ReadError::Io(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v2(cmd: u8, fam: u8, block: &[u8]) -> Vec<u8> {
        let mut h = V2_SIGNATURE.to_vec();
        h.push(0x20 | cmd);
        h.push(fam);
        h.extend_from_slice(&(block.len() as u16).to_be_bytes());
        h.extend_from_slice(block);
        h
    }

    fn v4_block() -> Vec<u8> {
        let mut b = vec![192, 0, 2, 7, 127, 0, 0, 1];
        b.extend_from_slice(&40000u16.to_be_bytes());
        b.extend_from_slice(&25u16.to_be_bytes());
        b
    }

    /// Feeds `input` as the reader does: only as many bytes as asked for.
    fn feed(input: &[u8]) -> Result<(Header, usize), Malformed> {
        let mut got = 0;
        loop {
            match parse(&input[..got])? {
                Parse::Done(h, n) => return Ok((h, n)),
                Parse::More(n) => {
                    assert!(got + n <= input.len(), "asked past the input");
                    got += n;
                }
            }
        }
    }

    fn proxied(src: &str, dst: &str) -> Header {
        Header::Proxied {
            source: src.parse().unwrap(),
            destination: dst.parse().unwrap(),
        }
    }

    #[test]
    fn v1_tcp4_tcp6_unknown() {
        let line = b"PROXY TCP4 192.0.2.7 127.0.0.1 40000 25\r\n";
        assert_eq!(
            feed(line),
            Ok((proxied("192.0.2.7:40000", "127.0.0.1:25"), line.len()))
        );
        let line = b"PROXY TCP6 2001:db8::7 ::1 65535 0\r\n";
        assert_eq!(
            feed(line),
            Ok((proxied("[2001:db8::7]:65535", "[::1]:0"), line.len()))
        );
        assert_eq!(feed(b"PROXY UNKNOWN\r\n"), Ok((Header::Local, 15)));
        let line = b"PROXY UNKNOWN ffff:f...f:ffff 0 0\r\n";
        assert_eq!(feed(line), Ok((Header::Local, line.len())));
    }

    #[test]
    fn v1_at_the_limit() {
        // the spec's worst case: TCP6 with the longest addresses, 104 bytes
        let max = "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff";
        let line = format!("PROXY TCP6 {max} {max} 65535 65535\r\n");
        assert!(line.len() <= V1_MAX);
        assert!(matches!(
            feed(line.as_bytes()),
            Ok((Header::Proxied { .. }, _))
        ));
        let mut unknown = b"PROXY UNKNOWN ".to_vec();
        unknown.resize(V1_MAX - 2, b'x');
        unknown.extend_from_slice(b"\r\n");
        assert_eq!(feed(&unknown), Ok((Header::Local, V1_MAX)));
        unknown.insert(20, b'x');
        assert_eq!(feed(&unknown), Err(Malformed::TooLong));
    }

    #[test]
    fn v1_never_reads_past_the_line() {
        let mut input = b"PROXY TCP4 192.0.2.7 127.0.0.1 40000 25\r\n".to_vec();
        let n = input.len();
        input.extend_from_slice(b"EHLO x\r\n");
        assert_eq!(feed(&input).map(|(_, len)| len), Ok(n));
    }

    #[test]
    fn v2_families() {
        let h = v2(1, 0x11, &v4_block());
        assert_eq!(
            feed(&h),
            Ok((proxied("192.0.2.7:40000", "127.0.0.1:25"), 28))
        );
        let mut b6 = Vec::new();
        b6.extend_from_slice(&"2001:db8::7".parse::<Ipv6Addr>().unwrap().octets());
        b6.extend_from_slice(&Ipv6Addr::LOCALHOST.octets());
        b6.extend_from_slice(&[0x9c, 0x40, 0, 25]);
        assert_eq!(
            feed(&v2(1, 0x21, &b6)),
            Ok((proxied("[2001:db8::7]:40000", "[::1]:25"), 52))
        );
        // UNSPEC and UNIX: no IP address, the proxy's stands
        assert_eq!(feed(&v2(1, 0x00, &[])), Ok((Header::Local, 16)));
        assert_eq!(feed(&v2(1, 0x31, &[0; 216])), Ok((Header::Local, 232)));
    }

    #[test]
    fn v2_local_ignores_the_family_and_tlvs_are_skipped() {
        assert_eq!(feed(&v2(0, 0x11, &v4_block())), Ok((Header::Local, 28)));
        assert_eq!(feed(&v2(0, 0x00, &[])), Ok((Header::Local, 16)));
        assert_eq!(feed(&v2(0, 0x77, &[])), Ok((Header::Local, 16)));
        // TLVs after the addresses (type 0x05 UNIQUE_ID, 0x04 NOOP)
        let mut b = v4_block();
        b.extend_from_slice(&[0x05, 0, 3, b'a', b'b', b'c', 0x04, 0, 0]);
        assert_eq!(
            feed(&v2(1, 0x11, &b)),
            Ok((proxied("192.0.2.7:40000", "127.0.0.1:25"), 16 + b.len()))
        );
        let big = vec![0u8; V2_MAX_PAYLOAD];
        assert_eq!(feed(&v2(0, 0, &big)), Ok((Header::Local, 16 + big.len())));
    }

    #[test]
    fn asks_for_no_more_than_the_shortest_header() {
        // the first read fits in the shortest v1 (15) and v2 (16) headers
        assert_eq!(parse(b""), Ok(Parse::More(FIRST_READ)));
        assert_eq!(parse(b"PROXY UN"), Ok(Parse::More(1)));
        assert_eq!(parse(&V2_SIGNATURE[..8]), Ok(Parse::More(8)));
        let h = v2(1, 0x11, &v4_block());
        assert_eq!(parse(&h[..16]), Ok(Parse::More(12)));
    }

    /// Fuzz-style table: each input is refused, never taken as a header
    /// and never a panic.
    #[test]
    fn malformed_table() {
        let v4 = v4_block();
        let mut bad_version = v2(1, 0x11, &v4);
        bad_version[12] = 0x11;
        let mut huge = v2(1, 0x11, &v4);
        huge[14..16].copy_from_slice(&((V2_MAX_PAYLOAD + 1) as u16).to_be_bytes());
        let mut bad_sig = v2(1, 0x11, &v4);
        bad_sig[11] = b'X';
        let mut long_line = b"PROXY TCP4 ".to_vec();
        long_line.resize(200, b'1');
        let table: Vec<(&str, Vec<u8>, Malformed)> = vec![
            (
                "smtp",
                b"EHLO client.test\r\n".to_vec(),
                Malformed::NotProxy,
            ),
            (
                "lower case",
                b"proxy TCP4 1.2.3.4 5.6.7.8 1 2\r\n".to_vec(),
                Malformed::NotProxy,
            ),
            (
                "no space",
                b"PROXYTCP4 1.2.3.4 5.6.7.8 1 2\r\n".to_vec(),
                Malformed::NotProxy,
            ),
            ("binary", vec![0xff; 40], Malformed::NotProxy),
            ("v2 signature typo", bad_sig, Malformed::NotProxy),
            (
                "bare LF",
                b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n".to_vec(),
                Malformed::V1("line not ended by CRLF"),
            ),
            ("no CRLF within 107", long_line, Malformed::TooLong),
            (
                "TCP5",
                b"PROXY TCP5 1.2.3.4 5.6.7.8 1 2\r\n".to_vec(),
                Malformed::V1("protocol not TCP4, TCP6 or UNKNOWN"),
            ),
            (
                "empty",
                b"PROXY \r\n".to_vec(),
                Malformed::V1("not PROTO SRC DST SPORT DPORT"),
            ),
            (
                "missing port",
                b"PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n".to_vec(),
                Malformed::V1("not PROTO SRC DST SPORT DPORT"),
            ),
            (
                "extra field",
                b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 3\r\n".to_vec(),
                Malformed::V1("not PROTO SRC DST SPORT DPORT"),
            ),
            (
                "double space",
                b"PROXY TCP4  1.2.3.4 5.6.7.8 1 2\r\n".to_vec(),
                Malformed::V1("not PROTO SRC DST SPORT DPORT"),
            ),
            (
                "v6 in TCP4",
                b"PROXY TCP4 ::1 ::1 1 2\r\n".to_vec(),
                Malformed::V1("address does not match the protocol"),
            ),
            (
                "v4 in TCP6",
                b"PROXY TCP6 1.2.3.4 5.6.7.8 1 2\r\n".to_vec(),
                Malformed::V1("address does not match the protocol"),
            ),
            (
                "octet > 255",
                b"PROXY TCP4 1.2.3.256 5.6.7.8 1 2\r\n".to_vec(),
                Malformed::V1("address does not match the protocol"),
            ),
            (
                "host name",
                b"PROXY TCP4 example.org 5.6.7.8 1 2\r\n".to_vec(),
                Malformed::V1("address does not match the protocol"),
            ),
            (
                "port > 65535",
                b"PROXY TCP4 1.2.3.4 5.6.7.8 65536 2\r\n".to_vec(),
                Malformed::V1("bad port"),
            ),
            (
                "signed port",
                b"PROXY TCP4 1.2.3.4 5.6.7.8 +1 2\r\n".to_vec(),
                Malformed::V1("bad port"),
            ),
            (
                "negative port",
                b"PROXY TCP4 1.2.3.4 5.6.7.8 -1 2\r\n".to_vec(),
                Malformed::V1("bad port"),
            ),
            (
                "long port",
                b"PROXY TCP4 1.2.3.4 5.6.7.8 000001 2\r\n".to_vec(),
                Malformed::V1("bad port"),
            ),
            (
                "not UTF-8",
                b"PROXY TCP4 1.2.3.4 5.6.7.8 1 \xff\r\n".to_vec(),
                Malformed::V1("not ASCII"),
            ),
            (
                "not ASCII",
                "PROXY TCP4 1.2.3.4 5.6.7.8 1 ２\r\n".as_bytes().to_vec(),
                Malformed::V1("not ASCII"),
            ),
            (
                "NUL in line",
                b"PROXY TCP4 1.2.3.4\0 5.6.7.8 1 2\r\n".to_vec(),
                Malformed::V1("address does not match the protocol"),
            ),
            ("v2 version 1", bad_version, Malformed::V2("version not 2")),
            (
                "v2 command 2",
                {
                    let mut h = v2(1, 0x11, &v4);
                    h[12] = 0x22;
                    h
                },
                Malformed::V2("command not LOCAL or PROXY"),
            ),
            ("v2 length past the limit", huge, Malformed::TooLong),
            (
                "v2 inet block short",
                v2(1, 0x11, &v4[..11]),
                Malformed::V2("address block too short"),
            ),
            (
                "v2 inet6 block short",
                v2(1, 0x21, &[0; 35]),
                Malformed::V2("address block too short"),
            ),
            (
                "v2 UDP4",
                v2(1, 0x12, &v4),
                Malformed::V2("UDP on a TCP listener"),
            ),
            (
                "v2 UDP6",
                v2(1, 0x22, &[0; 36]),
                Malformed::V2("UDP on a TCP listener"),
            ),
            (
                "v2 family 4",
                v2(1, 0x41, &v4),
                Malformed::V2("unknown family or transport"),
            ),
            (
                "v2 transport 3",
                v2(1, 0x13, &v4),
                Malformed::V2("unknown family or transport"),
            ),
            (
                "v2 inet unspec transport",
                v2(1, 0x10, &v4),
                Malformed::V2("unknown family or transport"),
            ),
        ];
        for (name, input, want) in table {
            assert_eq!(feed(&input).map(|_| ()), Err(want), "{name}");
        }
    }

    /// Every prefix of a valid header asks for more, never fails, never
    /// claims a header: a slow proxy is waited for (up to the deadline).
    #[test]
    fn every_prefix_asks_for_more() {
        let headers = [
            b"PROXY TCP4 192.0.2.7 127.0.0.1 40000 25\r\n".to_vec(),
            b"PROXY UNKNOWN\r\n".to_vec(),
            v2(1, 0x11, &v4_block()),
            v2(0, 0, &[]),
        ];
        for h in headers {
            for cut in 0..h.len() {
                assert!(
                    matches!(parse(&h[..cut]), Ok(Parse::More(n)) if cut + n <= h.len()),
                    "{:?} cut at {cut}",
                    String::from_utf8_lossy(&h)
                );
            }
        }
    }

    /// A crude fuzz: random mutations of valid headers never panic, and
    /// the length of any header found is within the input.
    #[test]
    fn mutations_never_panic() {
        let seeds = [
            b"PROXY TCP4 192.0.2.7 127.0.0.1 40000 25\r\n".to_vec(),
            b"PROXY TCP6 2001:db8::7 ::1 65535 0\r\n".to_vec(),
            v2(1, 0x11, &v4_block()),
            v2(1, 0x21, &[7; 40]),
        ];
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for _ in 0..20_000 {
            let mut input = seeds[(next() % 4) as usize].clone();
            for _ in 0..(next() % 4 + 1) {
                let i = (next() as usize) % input.len();
                match next() % 3 {
                    0 => input[i] = next() as u8,
                    1 => input.truncate(i.max(1)),
                    _ => input.insert(i, next() as u8),
                }
            }
            let mut got = 0;
            loop {
                match parse(&input[..got]) {
                    Ok(Parse::More(n)) if got + n <= input.len() => got += n,
                    Ok(Parse::More(_)) | Err(_) => break,
                    Ok(Parse::Done(_, n)) => {
                        assert!(n <= input.len());
                        break;
                    }
                }
            }
        }
    }
}
