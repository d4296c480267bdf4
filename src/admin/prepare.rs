//! A message handed to `send` on standard input, made ready for the
//! spool: line ends made CRLF, `-t` applied (recipients from the header,
//! Bcc removed), `From:`, `Date:` and `Message-ID:` added when missing
//! (RFC 5322 §3.6 requires the first two; RFC 6409 §8 lets a submission
//! agent complete a message). Only the header is held in memory, never
//! more than the size limit of it; the body streams through in pieces.

use std::io::{self, BufRead, Read, Write};

use super::headers::header_addresses;
use super::send::SendOpts;
use crate::spool::QueueId;
use crate::time::rfc5322_date;

/// What `prepare_message` wrote.
#[derive(Debug)]
pub struct Prepared {
    /// Recipients found in To, Cc and Bcc (with `-t`).
    pub rcpts: Vec<String>,
    /// Octets written.
    pub size: u64,
    /// Some octet was 8-bit (the envelope then says 8BITMIME).
    pub eight_bit: bool,
}

#[derive(Debug)]
pub enum PrepareError {
    /// More than the size limit: nothing may be queued.
    TooBig,
    Read(io::Error),
    Write(io::Error),
}

/// Octets of a body line read at once: longer lines stream through in
/// pieces, so memory never depends on the input.
const BODY_CHUNK: u64 = 64 * 1024;

/// Writes to `out`, counting against the size limit.
struct Limited<'a, W: Write> {
    out: &'a mut W,
    size: u64,
    max: u64,
    eight_bit: bool,
}

impl<W: Write> Limited<'_, W> {
    fn put(&mut self, bytes: &[u8]) -> Result<(), PrepareError> {
        self.size += bytes.len() as u64;
        if self.size > self.max {
            return Err(PrepareError::TooBig);
        }
        if !self.eight_bit {
            self.eight_bit = bytes.iter().any(|&b| b >= 0x80);
        }
        self.out.write_all(bytes).map_err(PrepareError::Write)
    }
}

/// Reads up to `limit` octets of one line (its `\n` included) into `buf`.
fn read_line_upto(input: &mut impl BufRead, buf: &mut Vec<u8>, limit: u64) -> io::Result<usize> {
    input.take(limit).read_until(b'\n', buf)
}

fn strip_line_end(buf: &mut Vec<u8>) {
    while buf.last() == Some(&b'\n') || buf.last() == Some(&b'\r') {
        buf.pop();
    }
}

/// Streams the message from `input` to `out`: line ends made CRLF, `-t`
/// applied (recipients from headers, Bcc removed), Date and Message-ID
/// added when missing. Only the header is held in memory, and never more
/// than `max_size` of it; the body goes through in pieces. More than
/// `max_size` octets written is `TooBig` (the caller queues nothing).
pub fn prepare_message(
    input: &mut impl BufRead,
    opts: &SendOpts,
    hostname: &str,
    id: QueueId,
    now: u64,
    max_size: u64,
    out: &mut impl Write,
) -> Result<Prepared, PrepareError> {
    // sendmail: without -i a lone "." ends the message
    let ends = |line: &[u8]| !opts.ignore_dots && line == b".";
    let (lines, blank_line) = read_header(input, max_size, &ends)?;
    let fields = unfold(lines);
    let mut rcpts = Vec::new();
    if opts.extract {
        for f in &fields {
            if matches!(f.name().as_str(), "to" | "cc" | "bcc") {
                rcpts.extend(header_addresses(&f.value()));
            }
        }
    }
    let mut w = Limited {
        out,
        size: 0,
        max: max_size,
        eight_bit: false,
    };
    write_header(&mut w, &fields, opts, hostname, id, now)?;
    drop(fields);
    if blank_line {
        w.put(b"\r\n")?;
        stream_body(input, &mut w, &ends)?;
    }
    Ok(Prepared {
        rcpts,
        size: w.size,
        eight_bit: w.eight_bit,
    })
}

/// The header's lines, without their line ends, and whether a blank line
/// ended it (the body follows) rather than the end of the message. More
/// than `max_size` octets of header is `TooBig`.
fn read_header(
    input: &mut impl BufRead,
    max_size: u64,
    ends: &impl Fn(&[u8]) -> bool,
) -> Result<(Vec<Vec<u8>>, bool), PrepareError> {
    let mut lines: Vec<Vec<u8>> = Vec::new();
    let mut header_octets = 0u64;
    let mut buf = Vec::new();
    loop {
        buf.clear();
        let limit = max_size.saturating_sub(header_octets) + 1;
        let n = read_line_upto(input, &mut buf, limit).map_err(PrepareError::Read)?;
        if n == 0 {
            return Ok((lines, false));
        }
        header_octets += n as u64;
        if header_octets > max_size {
            return Err(PrepareError::TooBig);
        }
        strip_line_end(&mut buf);
        if ends(&buf) {
            return Ok((lines, false));
        }
        if buf.is_empty() {
            return Ok((lines, true));
        }
        lines.push(buf.clone());
    }
}

/// One header field: its first line and the folded lines after it.
struct Field(Vec<Vec<u8>>);

impl Field {
    /// The field name, lower case.
    fn name(&self) -> String {
        let first = String::from_utf8_lossy(&self.0[0]).to_string();
        first
            .split(':')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase()
    }

    /// The unfolded value (RFC 5322 §2.2.3), after the colon.
    fn value(&self) -> String {
        let joined: Vec<String> = self
            .0
            .iter()
            .map(|l| String::from_utf8_lossy(l).to_string())
            .collect();
        let all = joined.join(" ");
        all.split_once(':')
            .map(|(_, v)| v.to_string())
            .unwrap_or_default()
    }
}

/// Groups header lines into fields: a line starting with white space
/// continues the field before it (RFC 5322 §2.2.3).
fn unfold(lines: Vec<Vec<u8>>) -> Vec<Field> {
    let mut fields: Vec<Field> = Vec::new();
    for l in lines {
        let folded = l.first() == Some(&b' ') || l.first() == Some(&b'\t');
        match fields.last_mut() {
            Some(f) if folded => f.0.push(l),
            _ => fields.push(Field(vec![l])),
        }
    }
    fields
}

/// The added fields, then the message's own (without Bcc under `-t`).
fn write_header<W: Write>(
    w: &mut Limited<'_, W>,
    fields: &[Field],
    opts: &SendOpts,
    hostname: &str,
    id: QueueId,
    now: u64,
) -> Result<(), PrepareError> {
    let has = |n: &str| fields.iter().any(|f| f.name() == n);
    if let Some(author) = opts.author.as_deref().filter(|_| !has("from")) {
        w.put(format!("From: {author}\r\n").as_bytes())?;
    }
    if !has("date") {
        w.put(format!("Date: {}\r\n", rfc5322_date(now)).as_bytes())?;
    }
    if !has("message-id") {
        w.put(format!("Message-ID: <{id}@{hostname}>\r\n").as_bytes())?;
    }
    for f in fields {
        // -t: Bcc is removed from what is sent (sendmail's behaviour)
        if opts.extract && f.name() == "bcc" {
            continue;
        }
        for l in &f.0 {
            w.put(l)?;
            w.put(b"\r\n")?;
        }
    }
    Ok(())
}

/// The body, a piece of at most `BODY_CHUNK` octets at a time.
fn stream_body<W: Write>(
    input: &mut impl BufRead,
    w: &mut Limited<'_, W>,
    ends: &impl Fn(&[u8]) -> bool,
) -> Result<(), PrepareError> {
    let mut buf = Vec::new();
    let mut line_start = true;
    // a CR ending a piece may be the start of its line's CRLF
    let mut held_cr = false;
    loop {
        buf.clear();
        if held_cr {
            buf.push(b'\r');
        }
        let n = read_line_upto(input, &mut buf, BODY_CHUNK).map_err(PrepareError::Read)?;
        if n == 0 {
            if held_cr {
                w.put(b"\r")?;
            }
            if !line_start {
                w.put(b"\r\n")?;
            }
            return Ok(());
        }
        if buf.last() == Some(&b'\n') {
            strip_line_end(&mut buf);
            if line_start && ends(&buf) {
                return Ok(());
            }
            w.put(&buf)?;
            w.put(b"\r\n")?;
            line_start = true;
            held_cr = false;
        } else {
            held_cr = buf.last() == Some(&b'\r');
            if held_cr {
                buf.pop();
            }
            w.put(&buf)?;
            line_start = false;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bcc_removed_and_fields_added_with_t() {
        let opts = SendOpts {
            extract: true,
            ..SendOpts::default()
        };
        let input = b"To: a@x.example\nBcc: secret@y.example\nSubject: s\n\nbody\n.\nafter\n";
        let id = QueueId::parse("0006464A1B2C3D4E").unwrap();
        let mut msg = Vec::new();
        let p =
            prepare_message(&mut &input[..], &opts, "h.test", id, 0, 1 << 20, &mut msg).unwrap();
        assert_eq!(p.size, msg.len() as u64);
        let text = String::from_utf8(msg).unwrap();
        assert_eq!(p.rcpts, vec!["a@x.example", "secret@y.example"]);
        assert!(!text.contains("secret"), "{text}");
        assert!(text.contains("Message-ID: <0006464A1B2C3D4E@h.test>\r\n"));
        assert!(text.contains("Date: "));
        assert!(text.ends_with("\r\n\r\nbody\r\n"), "{text:?}");
        let opts_i = SendOpts {
            ignore_dots: true,
            ..SendOpts::default()
        };
        let mut msg = Vec::new();
        prepare_message(&mut &input[..], &opts_i, "h.test", id, 0, 1 << 20, &mut msg).unwrap();
        assert!(String::from_utf8(msg)
            .unwrap()
            .ends_with("body\r\n.\r\nafter\r\n"));
    }

    /// The body streams in pieces: a line longer than a piece, a CRLF cut
    /// between two pieces, a last line without a line end, and the limit.
    #[test]
    fn body_streams_in_pieces_within_the_limit() {
        let id = QueueId::parse("0006464A1B2C3D4E").unwrap();
        let opts = SendOpts::default();
        let long = "x".repeat(BODY_CHUNK as usize - 1);
        let input = format!("Date: d\nMessage-ID: <m@h>\n\n{long}\r\n{long}y\r\nlast");
        let mut out = Vec::new();
        let p =
            prepare_message(&mut input.as_bytes(), &opts, "h", id, 0, 1 << 20, &mut out).unwrap();
        let want = format!("Date: d\r\nMessage-ID: <m@h>\r\n\r\n{long}\r\n{long}y\r\nlast\r\n");
        assert!(out == want.as_bytes(), "stream differs");
        assert!(!p.eight_bit);
        for max in [10, want.len() as u64 - 1] {
            let r = prepare_message(
                &mut input.as_bytes(),
                &opts,
                "h",
                id,
                0,
                max,
                &mut Vec::new(),
            );
            assert!(matches!(r, Err(PrepareError::TooBig)), "max {max}: {r:?}");
        }
        // an endless header line is cut at the limit, not buffered
        let mut endless = io::BufReader::new(io::repeat(b'h'));
        let r = prepare_message(&mut endless, &opts, "h", id, 0, 1 << 16, &mut Vec::new());
        assert!(matches!(r, Err(PrepareError::TooBig)), "{r:?}");
    }
}
