//! Message fix-ups for submission (RFC 6409 §8): a message without a
//! `Date:` gets one (§8.3, RFC 5322 §3.6 requires it), and one without a
//! `Message-ID:` gets one naming our host (§8.3 lets the MSA add it; RFC
//! 5322 §3.6.4 says it should be there). Nothing else is touched (RFC
//! 6409 §8: an MSA changes only what it must).
//!
//! The added fields go at the top of the header section (after our
//! `Received:`, which the session writes first). To know what is missing
//! the header section is held back until its end (the empty line), the
//! end of the data, or [`MAX_HELD`] octets; a header section longer than
//! that is passed on untouched (a second `Date:` is worse than none added).
//!
//! The same pass collects the `From:` addresses, for the optional check
//! that they are the authenticated user's (`--sender-check-from`).

use std::io::{self, Write};

/// The most header octets held back while looking for the empty line.
pub const MAX_HELD: usize = 64 * 1024;

/// The fix-ups of one message, fed its data in pieces of any size.
pub(super) struct Fixups {
    held: Vec<u8>,
    /// The header section was seen (or given up on): pass through.
    passing: bool,
    /// `Date:` and `Message-ID:` values to add when missing; `None` adds
    /// nothing (only `From:` is looked at).
    add: Option<(String, String)>,
    /// The values of the `From:` fields, unfolded, once the header
    /// section was read.
    from: Vec<String>,
    /// The header section was too long to read whole.
    gave_up: bool,
}

impl Fixups {
    /// Fix-ups `add` (or none): an RFC 5322 date-time and a Message-ID
    /// with its `<>`; the `From:` fields are collected either way.
    pub(super) fn watch(add: Option<(String, String)>) -> Fixups {
        Fixups {
            held: Vec::new(),
            passing: false,
            add,
            from: Vec::new(),
            gave_up: false,
        }
    }

    /// The `From:` field values; `None` when the header section was too
    /// long to read.
    pub(super) fn author_fields(&self) -> Option<&[String]> {
        (!self.gave_up).then_some(self.from.as_slice())
    }

    /// Some message data, on its way to `out`.
    pub(super) fn write(&mut self, data: &[u8], out: &mut impl Write) -> io::Result<()> {
        if self.passing {
            return out.write_all(data);
        }
        self.held.extend_from_slice(data);
        if let Some(end) = header_end(&self.held) {
            return self.release(end, out);
        }
        if self.held.len() > MAX_HELD {
            log::info!(
                "header section over {MAX_HELD} octets: Date/Message-ID fix-ups not applied"
            );
            self.passing = true;
            self.gave_up = true;
            return out.write_all(&std::mem::take(&mut self.held));
        }
        Ok(())
    }

    /// The end of the data: a message that is all header section (or
    /// nothing) is fixed up now.
    pub(super) fn finish(&mut self, out: &mut impl Write) -> io::Result<()> {
        if self.passing {
            return Ok(());
        }
        let end = self.held.len();
        self.release(end, out)
    }

    /// Writes the missing fields, then what was held; `end` is the length
    /// of the header section within it.
    fn release(&mut self, end: usize, out: &mut impl Write) -> io::Result<()> {
        self.passing = true;
        let held = std::mem::take(&mut self.held);
        let (mut date, mut id) = (false, false);
        for (name, value) in fields(&held[..end]) {
            date |= name.eq_ignore_ascii_case("date");
            id |= name.eq_ignore_ascii_case("message-id");
            if name.eq_ignore_ascii_case("from") {
                self.from.push(value);
            }
        }
        if let Some((new_date, new_id)) = &self.add {
            if !date {
                write!(out, "Date: {new_date}\r\n")?;
            }
            if !id {
                write!(out, "Message-ID: {new_id}\r\n")?;
            }
        }
        out.write_all(&held)
    }
}

/// Where the header section ends: before the empty line (`CRLF CRLF`, or a
/// message that starts with its empty line).
fn header_end(held: &[u8]) -> Option<usize> {
    if held.starts_with(b"\r\n") {
        return Some(0);
    }
    held.windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|p| p + 2)
}

/// The header fields: name and unfolded value (RFC 5322 §2.2: a field
/// starts on a line that does not start with white space, its name ends
/// at the colon; §2.2.3: lines that do start with it continue the value).
fn fields(header: &[u8]) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    for line in header.split(|&b| b == b'\n') {
        let line = String::from_utf8_lossy(line);
        let line = line.trim_end_matches('\r');
        if line.starts_with([' ', '\t']) {
            if let Some((_, value)) = out.last_mut() {
                value.push_str(line);
            }
            continue;
        }
        if let Some((name, value)) = line.split_once(':') {
            // RFC 5322 §4.5.1 (obsolete syntax): white space before the colon
            out.push((name.trim_end().to_string(), value.trim().to_string()));
        }
    }
    out
}

/// [`Fixups`] as a `Write`, in front of the spool file.
pub(super) struct Fixing<'a, W: Write> {
    pub(super) fixups: &'a mut Fixups,
    pub(super) out: W,
}

impl<W: Write> Write for Fixing<'_, W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.fixups.write(buf, &mut self.out)?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixed(pieces: &[&[u8]]) -> String {
        let mut f = Fixups::watch(Some((
            "Sun, 29 Nov 2026 22:00:00 +0000".into(),
            "<X@h.test>".into(),
        )));
        let mut out = Vec::new();
        for p in pieces {
            f.write(p, &mut out).unwrap();
        }
        f.finish(&mut out).unwrap();
        String::from_utf8(out).unwrap()
    }

    const ADDED: &str = "Date: Sun, 29 Nov 2026 22:00:00 +0000\r\nMessage-ID: <X@h.test>\r\n";

    #[test]
    fn missing_fields_are_added_at_the_top() {
        let m = "From: a@b.example\r\nSubject: hi\r\n\r\nbody\r\n";
        assert_eq!(fixed(&[m.as_bytes()]), format!("{ADDED}{m}"));
        // in pieces that split the empty line and a field name
        let pieces: Vec<&[u8]> = vec![b"From: a@b.example\r", b"\n\r", b"\nbody\r\n"];
        assert_eq!(
            fixed(&pieces),
            format!("{ADDED}From: a@b.example\r\n\r\nbody\r\n")
        );
        // header only, no body; no data at all
        assert_eq!(
            fixed(&[b"Subject: x\r\n"]),
            format!("{ADDED}Subject: x\r\n")
        );
        assert_eq!(fixed(&[]), ADDED);
        // a message that starts with its empty line has no header fields
        assert_eq!(
            fixed(&[b"\r\nDate: no\r\n"]),
            format!("{ADDED}\r\nDate: no\r\n")
        );
    }

    #[test]
    fn present_fields_are_left_alone() {
        let m = "DATE : Mon, 1 Jan 2024 00:00:00 +0000\r\nmessage-id: <a@b>\r\n\r\nx\r\n";
        assert_eq!(fixed(&[m.as_bytes()]), m);
        // only one of them present: only the other is added
        let m = "Message-ID: <a@b>\r\n\r\n";
        assert_eq!(
            fixed(&[m.as_bytes()]),
            format!("Date: Sun, 29 Nov 2026 22:00:00 +0000\r\n{m}")
        );
        // a folded line that mentions Date: is not a Date field; one in
        // the body is not either
        let m = "Subject: a\r\n Date: b\r\n\r\nDate: c\r\n";
        assert_eq!(fixed(&[m.as_bytes()]), format!("{ADDED}{m}"));
    }

    #[test]
    fn author_fields_are_collected_unfolded() {
        let mut f = Fixups::watch(None);
        let mut out = Vec::new();
        let m = b"from: Alice <a@b.example>,\r\n\tc@d.example\r\nSubject: x\r\n\r\nFrom: body\r\n";
        f.write(m, &mut out).unwrap();
        f.finish(&mut out).unwrap();
        // nothing added without fix-ups
        assert_eq!(out, m);
        assert_eq!(
            f.author_fields().unwrap(),
            ["Alice <a@b.example>,\tc@d.example"]
        );
    }

    #[test]
    fn an_endless_header_section_passes_untouched() {
        // fed line by line, as DATA arrives
        let line: &[u8] = b"X-Filler: 0123456789012345678901234567890123456789\r\n";
        let mut pieces = vec![line; MAX_HELD / line.len() + 1];
        pieces.push(b"Date: late\r\n\r\nbody\r\n");
        assert_eq!(fixed(&pieces).as_bytes(), pieces.concat());
        let mut f = Fixups::watch(None);
        for p in &pieces {
            f.write(p, &mut Vec::new()).unwrap();
        }
        assert_eq!(f.author_fields(), None);
    }
}
