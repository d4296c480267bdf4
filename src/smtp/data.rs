//! Reading and writing the bytes of SMTP: bounded command lines, the DATA
//! body with dot transparency (RFC 5321 §4.5.2) and the end-of-data mark.
//!
//! The DATA reader is a byte state machine over whatever chunks the socket
//! hands us, so `CRLF.CRLF` split across reads is found all the same. Only
//! `CRLF "." CRLF` ends the data: a bare LF or bare CR never starts a line
//! that could end it, which closes SMTP smuggling (CVE-2023-51764/5/6) in
//! every mode.

use std::io::{self, BufRead, Read, Write};

/// How a command line read ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Line {
    /// A complete line is in the buffer, CRLF (or LF) removed.
    Complete,
    /// The line was longer than the limit; the rest of it was read and
    /// thrown away, so the next read starts at the next line.
    TooLong,
    /// The peer closed the connection (a partial line is dropped).
    Eof,
}

/// Reads one line of at most `max` octets including CRLF (RFC 5321
/// §4.5.3.1.4: 512 for commands) into `buf`, never buffering more; an
/// overlong line is read to its end and discarded (the server's way: the
/// dialogue goes on).
pub fn read_line(input: &mut impl BufRead, buf: &mut Vec<u8>, max: usize) -> io::Result<Line> {
    read_line_inner(input, buf, max, true)
}

/// Like `read_line`, but gives up at once on an overlong line without
/// reading the rest (the client's way: a peer sending a 10 MB "reply" is
/// not waited for; the connection is dropped).
pub fn read_line_strict(
    input: &mut impl BufRead,
    buf: &mut Vec<u8>,
    max: usize,
) -> io::Result<Line> {
    read_line_inner(input, buf, max, false)
}

fn read_line_inner(
    input: &mut impl BufRead,
    buf: &mut Vec<u8>,
    max: usize,
    discard: bool,
) -> io::Result<Line> {
    buf.clear();
    let mut too_long = false;
    loop {
        let chunk = match input.fill_buf() {
            Ok(c) => c,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if chunk.is_empty() {
            return Ok(Line::Eof);
        }
        let (taken, done) = match chunk.iter().position(|&b| b == b'\n') {
            Some(i) => (i + 1, true),
            None => (chunk.len(), false),
        };
        if !too_long {
            if buf.len() + taken > max {
                if !discard {
                    return Ok(Line::TooLong);
                }
                too_long = true;
                buf.clear();
            } else {
                buf.extend_from_slice(&chunk[..taken]);
            }
        }
        input.consume(taken);
        if done {
            if too_long {
                return Ok(Line::TooLong);
            }
            buf.pop();
            if buf.last() == Some(&b'\r') {
                buf.pop();
            }
            return Ok(Line::Complete);
        }
    }
}

/// What the body looked like, for the session's verdict at end of data.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct DataSummary {
    /// Octets of the message after unstuffing, CRLFs included.
    pub size: u64,
    /// More than the maximum arrived; what was written is truncated and
    /// must not be committed.
    pub too_big: bool,
    /// A CR or LF that was not part of a CRLF pair.
    pub bare_line_ending: bool,
    /// `Received:` header fields in the header section (loop detection,
    /// RFC 5321 §6.3).
    pub received_headers: usize,
    /// Longest line seen, without CRLF.
    pub longest_line: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// At the start of a line that began after a real CRLF.
    LineStart,
    /// Saw `.` at such a line start.
    Dot,
    /// Saw `.` CR at a line start.
    DotCr,
    /// Inside a line.
    Mid,
    /// Saw CR inside a line.
    Cr,
}

/// Streams DATA from the client into `out` with dots unstuffed. Bare CR and
/// bare LF are written as CRLF and reported; the caller decides whether to
/// refuse the message (our default) or keep it normalized.
pub struct DotReader {
    state: State,
    max_size: u64,
    summary: DataSummary,
    in_headers: bool,
    line_len: usize,
    prefix: [u8; 9],
}

const RECEIVED: &[u8; 9] = b"received:";

impl DotReader {
    pub fn new(max_size: u64) -> DotReader {
        DotReader {
            state: State::LineStart,
            max_size,
            summary: DataSummary::default(),
            in_headers: true,
            line_len: 0,
            prefix: [0; 9],
        }
    }

    /// Reads until `CRLF.CRLF`. An `Err` means the client vanished or timed
    /// out mid-message: nothing may be committed.
    pub fn read(
        mut self,
        input: &mut impl BufRead,
        out: &mut impl Write,
    ) -> io::Result<DataSummary> {
        loop {
            let chunk = match input.fill_buf() {
                Ok(c) => c,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            if chunk.is_empty() {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "connection closed during DATA",
                ));
            }
            let (used, done) = self.feed(chunk, out)?;
            input.consume(used);
            if done {
                return Ok(self.summary);
            }
        }
    }

    /// Processes one chunk; returns how many bytes were used and whether the
    /// end-of-data mark was reached (bytes after it belong to the next
    /// pipelined command and are left unread).
    fn feed(&mut self, chunk: &[u8], out: &mut impl Write) -> io::Result<(usize, bool)> {
        let mut i = 0;
        while i < chunk.len() {
            let b = chunk[i];
            match self.state {
                State::LineStart if b == b'.' => {
                    self.state = State::Dot;
                    i += 1;
                }
                State::LineStart | State::Mid => {
                    // copy the run up to the next CR or LF in one go
                    let run = chunk[i..]
                        .iter()
                        .position(|&c| c == b'\r' || c == b'\n')
                        .unwrap_or(chunk.len() - i);
                    if run > 0 {
                        self.emit_text(&chunk[i..i + run], out)?;
                        i += run;
                        self.state = State::Mid;
                        continue;
                    }
                    i += 1;
                    if b == b'\r' {
                        self.state = State::Cr;
                    } else {
                        self.bare(out)?;
                    }
                }
                State::Dot => match b {
                    b'\r' => {
                        self.state = State::DotCr;
                        i += 1;
                    }
                    // RFC 5321 §4.5.2: the leading dot of any other line is
                    // deleted; the rest of the line is text.
                    _ => self.state = State::Mid,
                },
                State::DotCr => {
                    if b == b'\n' {
                        return Ok((i + 1, true));
                    }
                    // ".\r" then something else: the CR was bare
                    self.bare(out)?;
                }
                State::Cr => {
                    if b == b'\n' {
                        i += 1;
                        self.emit_crlf(out)?;
                        self.state = State::LineStart;
                    } else {
                        // bare CR; the byte is looked at again in Mid
                        self.bare(out)?;
                    }
                }
            }
        }
        Ok((i, false))
    }

    /// A CR or LF out of a pair: written as CRLF, remembered, and the next
    /// byte is *not* a line start, so no dot after it can end the data.
    fn bare(&mut self, out: &mut impl Write) -> io::Result<()> {
        self.summary.bare_line_ending = true;
        self.emit_crlf(out)?;
        self.state = State::Mid;
        Ok(())
    }

    fn emit_text(&mut self, text: &[u8], out: &mut impl Write) -> io::Result<()> {
        if self.in_headers && self.line_len < RECEIVED.len() {
            let n = (RECEIVED.len() - self.line_len).min(text.len());
            self.prefix[self.line_len..self.line_len + n].copy_from_slice(&text[..n]);
        }
        self.line_len += text.len();
        self.write(text, out)
    }

    fn emit_crlf(&mut self, out: &mut impl Write) -> io::Result<()> {
        if self.in_headers {
            if self.line_len == 0 {
                self.in_headers = false;
            } else if self.line_len >= RECEIVED.len() && self.prefix.eq_ignore_ascii_case(RECEIVED)
            {
                self.summary.received_headers += 1;
            }
        }
        self.summary.longest_line = self.summary.longest_line.max(self.line_len);
        self.line_len = 0;
        self.write(b"\r\n", out)
    }

    fn write(&mut self, bytes: &[u8], out: &mut impl Write) -> io::Result<()> {
        self.summary.size += bytes.len() as u64;
        if self.summary.size > self.max_size {
            // RFC 1870 §6: keep reading to the end, store nothing more.
            self.summary.too_big = true;
            return Ok(());
        }
        out.write_all(bytes)
    }
}

/// Sends `body` (stored with CRLF line ends) as DATA content: dots at line
/// starts doubled (RFC 5321 §4.5.2), any bare LF or CR sent as CRLF so the
/// client never emits a bare line ending, a CRLF added if the body does
/// not end with one, then `.CRLF`. Returns the body octets read.
pub fn write_dot_stuffed(body: &mut impl Read, out: &mut impl Write) -> io::Result<u64> {
    // a delivery thread's buffers are kept for its next message: a fresh
    // zeroed 64 KiB buffer and a 72 KiB one per message were a tenth of
    // a delivery thread's CPU
    thread_local! {
        static BUFFERS: std::cell::RefCell<(Vec<u8>, Vec<u8>)> =
            const { std::cell::RefCell::new((Vec::new(), Vec::new())) };
    }
    BUFFERS.with(|b| match b.try_borrow_mut() {
        Ok(mut b) => {
            let (buf, wire) = &mut *b;
            stuff(body, out, buf, wire)
        }
        // called again from inside `out` (never, but not a panic)
        Err(_) => stuff(body, out, &mut Vec::new(), &mut Vec::new()),
    })
}

/// Dot-stuffs one piece of a body onto `wire`, `prev` being the octet
/// before it: a bare CR or LF becomes CRLF, a dot at a line start is
/// doubled (RFC 5321 §4.5.2). The octets between line ends are copied as
/// runs (memchr finds the next CR or LF); only line ends are looked at
/// one by one.
fn stuff_piece(piece: &[u8], prev: &mut u8, wire: &mut Vec<u8>) {
    let mut rest = piece;
    while let Some(&b) = rest.first() {
        if *prev == b'\r' && b != b'\n' {
            wire.push(b'\n'); // complete a bare CR
            *prev = b'\n';
        }
        if *prev == b'\n' && b == b'.' {
            wire.push(b'.');
        }
        let run = memchr::memchr2(b'\r', b'\n', rest).unwrap_or(rest.len());
        if run > 0 {
            // no line end in it: nothing else to change
            wire.extend_from_slice(&rest[..run]);
            *prev = rest[run - 1];
            rest = &rest[run..];
            continue;
        }
        if b == b'\n' && *prev != b'\r' {
            wire.push(b'\r');
        }
        wire.push(b);
        *prev = b;
        rest = &rest[1..];
    }
}

fn stuff(
    body: &mut impl Read,
    out: &mut impl Write,
    buf: &mut Vec<u8>,
    wire: &mut Vec<u8>,
) -> io::Result<u64> {
    const CHUNK: usize = 16 * 1024;
    if buf.len() != CHUNK {
        buf.resize(CHUNK, 0);
    }
    wire.reserve(CHUNK + CHUNK / 8);
    let mut prev = b'\n'; // the data starts at a line start
    let mut read: u64 = 0;
    loop {
        let n = match body.read(buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        read += n as u64;
        wire.clear();
        stuff_piece(&buf[..n], &mut prev, wire);
        out.write_all(wire)?;
    }
    match prev {
        b'\n' => {}
        b'\r' => out.write_all(b"\n")?,
        _ => out.write_all(b"\r\n")?,
    }
    out.write_all(b".\r\n")?;
    Ok(read)
}

/// The message as the next hop's DATA reader will have it after
/// unstuffing: `body` with the line ends `write_dot_stuffed` sends (a bare
/// LF or bare CR becomes CRLF, a CRLF ends the last line). A BDAT message
/// is stored as it came, bare LFs and all (RFC 3030 §3 lets a client send
/// them), so a signature over the stored octets would not match what
/// arrives: DKIM signs this instead (RFC 6376 §5.3: sign the message in
/// the form it will be transmitted). Borrowed when nothing changes.
pub fn as_transmitted(body: &[u8]) -> std::borrow::Cow<'_, [u8]> {
    let clean = body.ends_with(b"\r\n")
        && body.iter().enumerate().all(|(i, &b)| match b {
            b'\r' => body.get(i + 1) == Some(&b'\n'),
            b'\n' => i > 0 && body[i - 1] == b'\r',
            _ => true,
        });
    if clean {
        return std::borrow::Cow::Borrowed(body);
    }
    let mut out = Vec::with_capacity(body.len() + body.len() / 16 + 2);
    let mut prev = b'\n';
    for &b in body {
        if prev == b'\r' && b != b'\n' {
            out.push(b'\n'); // complete a bare CR
        }
        if b == b'\n' && prev != b'\r' {
            out.push(b'\r');
        }
        out.push(b);
        prev = b;
    }
    match prev {
        b'\n' => {}
        b'\r' => out.push(b'\n'),
        _ => out.extend_from_slice(b"\r\n"),
    }
    std::borrow::Cow::Owned(out)
}

/// Streams BDAT chunks (RFC 3030 §2) into `out`: exactly the announced
/// octets, taken as they are (no dot-stuffing, no end-of-data mark), with
/// the same size limit and `Received:` count as `DotReader`. One reader
/// lives for the whole message, across its chunks.
#[derive(Debug)]
pub struct ChunkReader {
    max_size: u64,
    summary: DataSummary,
    in_headers: bool,
    line_len: usize,
    prefix: [u8; 9],
}

impl ChunkReader {
    pub fn new(max_size: u64) -> ChunkReader {
        ChunkReader {
            max_size,
            summary: DataSummary::default(),
            in_headers: true,
            line_len: 0,
            prefix: [0; 9],
        }
    }

    pub fn summary(&self) -> &DataSummary {
        &self.summary
    }

    /// Reads exactly `n` octets. Past the size limit nothing more is
    /// written (`too_big`), but the chunk is still read to its end so the
    /// dialogue stays in step. An `Err` means the client vanished or timed
    /// out inside the chunk.
    pub fn read_chunk(
        &mut self,
        input: &mut impl BufRead,
        n: u64,
        out: &mut impl Write,
    ) -> io::Result<()> {
        let mut left = n;
        while left > 0 {
            let chunk = match input.fill_buf() {
                Ok(c) => c,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            if chunk.is_empty() {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "connection closed inside a BDAT chunk",
                ));
            }
            let take = chunk.len().min(usize::try_from(left).unwrap_or(usize::MAX));
            let bytes = &chunk[..take];
            if self.in_headers {
                self.scan_headers(bytes);
            }
            self.summary.size += take as u64;
            if self.summary.size > self.max_size {
                self.summary.too_big = true;
            } else {
                out.write_all(bytes)?;
            }
            input.consume(take);
            left -= take as u64;
        }
        Ok(())
    }

    /// Counts `Received:` fields until the empty line ends the header.
    fn scan_headers(&mut self, bytes: &[u8]) {
        for &b in bytes {
            if !self.in_headers {
                return;
            }
            match b {
                b'\n' => {
                    if self.line_len == 0 {
                        self.in_headers = false;
                    } else if self.line_len >= RECEIVED.len()
                        && self.prefix.eq_ignore_ascii_case(RECEIVED)
                    {
                        self.summary.received_headers += 1;
                    }
                    self.line_len = 0;
                }
                // a CR before LF is not part of the line
                b'\r' => {}
                _ => {
                    if self.line_len < RECEIVED.len() {
                        self.prefix[self.line_len] = b;
                    }
                    self.line_len += 1;
                }
            }
        }
    }
}

/// Reads and throws away exactly `n` octets: the data of a refused BDAT,
/// which the client sends regardless (RFC 3030 §2).
pub fn skip_exact(input: &mut impl BufRead, n: u64) -> io::Result<()> {
    ChunkReader::new(0).read_chunk(input, n, &mut io::sink())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(input: &[u8], max: u64) -> (io::Result<DataSummary>, Vec<u8>, usize) {
        let mut reader = io::BufReader::new(input);
        let mut out = Vec::new();
        let r = DotReader::new(max).read(&mut reader, &mut out);
        let rest = reader.buffer().len();
        (r, out, rest)
    }

    /// Feeds the input in chunks of every size from 1 up, so a terminator
    /// split across reads is always exercised.
    fn run_split(input: &[u8]) -> Vec<(Vec<u8>, DataSummary, usize)> {
        (1..=input.len().min(8))
            .map(|n| {
                let mut r = DotReader::new(1 << 20);
                let mut out = Vec::new();
                let mut used_total = 0;
                for chunk in input.chunks(n) {
                    let (used, done) = r.feed(chunk, &mut out).unwrap();
                    used_total += used;
                    if done {
                        break;
                    }
                }
                (out, r.summary.clone(), used_total)
            })
            .collect()
    }

    #[test]
    fn unstuffs_and_ends_at_crlf_dot_crlf() {
        let (r, out, rest) = run(b"Subject: x\r\n\r\n..leading\r\n.\r\nQUIT\r\n", 1000);
        let s = r.unwrap();
        assert_eq!(out, b"Subject: x\r\n\r\n.leading\r\n");
        assert_eq!(s.size, out.len() as u64);
        assert!(!s.bare_line_ending);
        assert_eq!(rest, 6, "the pipelined QUIT stays in the buffer");
    }

    #[test]
    fn split_reads_agree() {
        let input = b"a\r\n..b\r\n.c\r\n\r\n.\r\nNEXT";
        for (out, s, used) in run_split(input) {
            assert_eq!(out, b"a\r\n.b\r\nc\r\n\r\n");
            assert!(!s.bare_line_ending);
            assert_eq!(used, input.len() - 4);
        }
    }

    #[test]
    fn bare_lf_never_ends_data() {
        // "\n.\n" and "\r\n.\n" and "\n.\r\n" are smuggling attempts
        for input in [
            &b"a\n.\nMAIL FROM:<x@y>\r\n.\r\n"[..],
            b"a\r\n.\nRCPT\r\n.\r\n",
            b"a\n.\r\nRCPT\r\n.\r\n",
            b"a\r.\r\nRCPT\r\n.\r\n",
            b"a\r\n.\r.\r\n.\r\n",
        ] {
            let (r, out, rest) = run(input, 1000);
            let s = r.unwrap();
            assert!(s.bare_line_ending, "{input:?}");
            assert_eq!(rest, 0, "{input:?}");
            assert!(
                out.windows(4).any(|w| w == b"RCPT" || w == b"MAIL") || out.ends_with(b".\r\n"),
                "{input:?} → {out:?}"
            );
        }
    }

    #[test]
    fn too_big_reads_to_end_and_stores_no_more() {
        let (r, out, _) = run(b"0123456789\r\n0123456789\r\n.\r\n", 15);
        let s = r.unwrap();
        assert!(s.too_big);
        assert!(out.len() <= 15);
    }

    #[test]
    fn counts_received_in_headers_only() {
        let (r, _, _) = run(
            b"Received: a\r\nreceived: b\r\n c\r\nX: y\r\nRECEIVED:z\r\n\r\nReceived: body\r\n.\r\n",
            1000,
        );
        assert_eq!(r.unwrap().received_headers, 3);
    }

    #[test]
    fn eof_is_an_error() {
        let (r, _, _) = run(b"partial\r\n", 1000);
        assert!(r.is_err());
    }

    #[test]
    fn empty_message() {
        let (r, out, _) = run(b".\r\n", 1000);
        assert_eq!(r.unwrap().size, 0);
        assert!(out.is_empty());
    }

    #[test]
    fn read_line_limits() {
        let mut input =
            io::BufReader::with_capacity(7, &b"NOOP\r\nXXXXXXXXXXXXXXXXXXXX\r\nQUIT\nlast"[..]);
        let mut buf = Vec::new();
        assert_eq!(read_line(&mut input, &mut buf, 10).unwrap(), Line::Complete);
        assert_eq!(buf, b"NOOP");
        assert_eq!(read_line(&mut input, &mut buf, 10).unwrap(), Line::TooLong);
        assert_eq!(read_line(&mut input, &mut buf, 10).unwrap(), Line::Complete);
        assert_eq!(buf, b"QUIT");
        assert_eq!(read_line(&mut input, &mut buf, 10).unwrap(), Line::Eof);
    }

    #[test]
    fn as_transmitted_is_what_the_next_hop_reads() {
        // what a receiver unstuffs from our DATA must be exactly the
        // octets DKIM signed (issue 14: BDAT bodies with bare LF)
        for body in [
            &b"a\r\nb\r\n"[..],
            b"bare\nlf\rcr\r\n",
            b"no end",
            b"cr end\r",
            b"\n\nlf only\n",
            b".dot\n..two\r\n",
            b"\r\r\n\n\r",
            b"",
        ] {
            let mut wire = Vec::new();
            write_dot_stuffed(&mut &body[..], &mut wire).unwrap();
            let mut unstuffed = Vec::new();
            DotReader::new(1 << 20)
                .read(&mut &wire[..], &mut unstuffed)
                .unwrap();
            assert_eq!(as_transmitted(body).as_ref(), &unstuffed[..], "{body:?}");
        }
        assert!(matches!(
            as_transmitted(b"a\r\nb\r\n"),
            std::borrow::Cow::Borrowed(_)
        ));
    }

    /// The octet-by-octet rule `stuff_piece` implements with runs.
    fn stuff_reference(data: &[u8], prev: &mut u8, wire: &mut Vec<u8>) {
        for &b in data {
            if *prev == b'\r' && b != b'\n' {
                wire.push(b'\n');
                *prev = b'\n';
            }
            if *prev == b'\n' && b == b'.' {
                wire.push(b'.');
            }
            if b == b'\n' && *prev != b'\r' {
                wire.push(b'\r');
            }
            wire.push(b);
            *prev = b;
        }
    }

    #[test]
    fn stuffing_in_runs_matches_the_octet_rule() {
        // every string of up to 6 octets over an alphabet of line ends,
        // dots and a letter, cut into two pieces at every point
        let alphabet = [b'\r', b'\n', b'.', b'a'];
        let mut cases = vec![Vec::new()];
        for len in 1..=6u32 {
            for mut k in 0..alphabet.len().pow(len) {
                let mut v = Vec::new();
                for _ in 0..len {
                    v.push(alphabet[k % alphabet.len()]);
                    k /= alphabet.len();
                }
                cases.push(v);
            }
        }
        for case in &cases {
            for cut in 0..=case.len() {
                let (mut p1, mut p2) = (b'\n', b'\n');
                let (mut w1, mut w2) = (Vec::new(), Vec::new());
                stuff_piece(&case[..cut], &mut p1, &mut w1);
                stuff_piece(&case[cut..], &mut p1, &mut w1);
                stuff_reference(case, &mut p2, &mut w2);
                assert_eq!((w1, p1), (w2, p2), "{case:?} cut at {cut}");
            }
        }
    }

    #[test]
    fn stuffing_roundtrip() {
        let bodies: &[&[u8]] = &[
            b"a\r\n.b\r\n..c\r\n.\r\n",
            b".start\r\nno final newline",
            b"bare\nlf\rcr\r\n",
            b"",
        ];
        for body in bodies {
            let mut wire = Vec::new();
            write_dot_stuffed(&mut &body[..], &mut wire).unwrap();
            assert!(
                !wire.windows(2).any(|w| w[1] == b'\n' && w[0] != b'\r'),
                "bare LF in {wire:?}"
            );
            let (r, out, _) = run(&wire, 1 << 20);
            let s = r.unwrap();
            assert!(!s.bare_line_ending, "{wire:?}");
            let mut expect = body.to_vec();
            if !expect.is_empty()
                && !expect.ends_with(b"\r\n")
                && !expect.ends_with(b"\n")
                && !expect.ends_with(b"\r")
            {
                expect.extend_from_slice(b"\r\n");
            }
            let normalize = |v: &[u8]| {
                String::from_utf8_lossy(v)
                    .replace("\r\n", "\n")
                    .replace('\r', "\n")
            };
            assert_eq!(normalize(&out), normalize(&expect));
        }
    }

    #[test]
    fn chunks_are_taken_exactly() {
        let msg =
            b"Received: a\r\nreceived: b\r\nSubject: x\r\n\r\nReceived: body\r\n.\r\nQUIT\r\n";
        let body_len = (msg.len() - 6) as u64;
        let mut input = io::BufReader::with_capacity(7, &msg[..]);
        let mut r = ChunkReader::new(1000);
        let mut out = Vec::new();
        r.read_chunk(&mut input, 10, &mut out).unwrap();
        r.read_chunk(&mut input, body_len - 10, &mut out).unwrap();
        assert_eq!(out, &msg[..msg.len() - 6], "no unstuffing, no end mark");
        assert_eq!(r.summary().received_headers, 2);
        assert_eq!(r.summary().size, body_len);
        let mut rest = String::new();
        input.read_to_string(&mut rest).unwrap();
        assert_eq!(rest, "QUIT\r\n");

        let mut small = ChunkReader::new(5);
        let mut out = Vec::new();
        let mut input = &b"0123456789next"[..];
        small.read_chunk(&mut input, 10, &mut out).unwrap();
        assert!(small.summary().too_big);
        assert_eq!(input, b"next", "the whole chunk is consumed");
        let mut short = &b"abc"[..];
        assert!(ChunkReader::new(9)
            .read_chunk(&mut short, 4, &mut out)
            .is_err());
        let mut input = &b"abcdef"[..];
        skip_exact(&mut input, 4).unwrap();
        assert_eq!(input, b"ef");
    }
}
