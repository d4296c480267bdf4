//! `DotReader::read` over input delivered in chunks of sizes drawn from
//! the first byte (byte 2 picks the size limit), checked against a
//! separately written model of RFC 5321 §4.5.2 with this relay's bare
//! CR/LF rules:
//! - data ends at the first `.` CRLF that starts a line, a line starting
//!   only after a real CRLF (or at the very beginning); a bare LF or CR
//!   never starts a line, so it never leads to the end of data;
//! - the reader consumes exactly up to that end marker and nothing after
//!   it (those bytes are the next pipelined command), and without an end
//!   marker it fails at EOF;
//! - the output is the model's: leading dots removed at line starts, bare
//!   CR/LF written as CRLF and reported, nothing beyond `--max-size`
//!   written, and no bare CR or LF in the output.
#![no_main]

use std::io::{self, BufRead, Read};

use libfuzzer_sys::fuzz_target;
use smtp_relay::smtp::data::DotReader;

/// A `BufRead` that hands out the input in chunks of pseudo-random sizes
/// (1..=64) from a seed, like a socket.
struct Chunked<'a> {
    data: &'a [u8],
    pos: usize,
    end: usize,
    seed: u64,
}

impl Chunked<'_> {
    fn next_size(&mut self) -> usize {
        self.seed = self
            .seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        1 + (self.seed >> 33) as usize % 64
    }
}

impl Read for Chunked<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let chunk = self.fill_buf()?;
        let n = chunk.len().min(buf.len());
        buf[..n].copy_from_slice(&chunk[..n]);
        self.consume(n);
        Ok(n)
    }
}

impl BufRead for Chunked<'_> {
    fn fill_buf(&mut self) -> io::Result<&[u8]> {
        if self.pos == self.end {
            let n = self.next_size();
            self.end = (self.pos + n).min(self.data.len());
        }
        Ok(&self.data[self.pos..self.end])
    }

    fn consume(&mut self, n: usize) {
        assert!(
            self.pos + n <= self.end,
            "consumed more than was handed out"
        );
        self.pos += n;
    }
}

/// What the model says: (end of the marker, output, bare CR/LF seen), or
/// `None` when there is no end marker.
fn model(d: &[u8]) -> Option<(usize, Vec<u8>, bool)> {
    let mut out = Vec::new();
    let mut bare = false;
    let mut line_start = true;
    let mut i = 0;
    while i < d.len() {
        if line_start && d[i..].starts_with(b".\r\n") {
            return Some((i + 3, out, bare));
        }
        if line_start && d[i] == b'.' {
            // RFC 5321 §4.5.2: the first dot of a line is removed
            line_start = false;
            i += 1;
            continue;
        }
        if d[i..].starts_with(b"\r\n") {
            out.extend_from_slice(b"\r\n");
            line_start = true;
            i += 2;
            continue;
        }
        if d[i] == b'\r' || d[i] == b'\n' {
            out.extend_from_slice(b"\r\n");
            bare = true;
        } else {
            out.push(d[i]);
        }
        line_start = false;
        i += 1;
    }
    None
}

fuzz_target!(|input: &[u8]| {
    if input.len() < 2 {
        return;
    }
    let max = u64::from(input[1]) * 16;
    let data = &input[2..];
    let mut reader = Chunked {
        data,
        pos: 0,
        end: 0,
        seed: u64::from(input[0]),
    };
    let mut out = Vec::new();
    let result = DotReader::new(max).read(&mut reader, &mut out);
    // no bare CR or LF is ever written
    for (i, &b) in out.iter().enumerate() {
        if b == b'\n' {
            assert!(i > 0 && out[i - 1] == b'\r', "bare LF written: {out:?}");
        }
        if b == b'\r' {
            assert_eq!(out.get(i + 1), Some(&b'\n'), "bare CR written: {out:?}");
        }
    }
    match (model(data), result) {
        (None, Ok(s)) => panic!("end of data without CRLF.CRLF: {data:?} → {s:?}"),
        (None, Err(e)) => assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof),
        (Some((end, _, _)), Err(e)) => {
            panic!("missed the end marker at {end}: {e} for {data:?}")
        }
        (Some((end, want, bare)), Ok(s)) => {
            assert_eq!(reader.pos, end, "consumed {} of {data:?}", reader.pos);
            assert_eq!(s.bare_line_ending, bare, "{data:?}");
            assert_eq!(s.size, want.len() as u64, "{data:?}");
            assert_eq!(s.too_big, s.size > max, "{data:?}");
            if s.too_big {
                assert!(out.len() as u64 <= max, "wrote past the limit");
                assert!(
                    want.starts_with(&out),
                    "{out:?} is not a prefix of {want:?}"
                );
            } else {
                assert_eq!(out, want, "for {data:?}");
            }
            assert!(s.longest_line as u64 <= s.size);
        }
    }
});
