//! The received message as milters see and change it: its header fields
//! in order, and its body, the one on disk or a replacement. Pure: the
//! caller reads the spool file into [`Headers::parse`] and writes the
//! result back with [`Headers::write`].

use std::io::{self, Write};

/// One header field. `value` is everything after the colon (its leading
/// space included), folded lines joined by CRLF, without the final CRLF.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Field {
    pub name: Vec<u8>,
    pub value: Vec<u8>,
    /// The field exactly as received, line ending included, while no
    /// milter changed it: written back octet for octet.
    raw: Option<Vec<u8>>,
}

/// Why a milter's header change cannot be carried out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadEdit(pub &'static str);

/// The header section, and where the body starts in the file.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Headers {
    pub fields: Vec<Field>,
    /// Set once a milter changed a field: the file must be rewritten.
    pub changed: bool,
}

/// RFC 5322 §2.2: a field name is printable US-ASCII except the colon.
fn valid_name(name: &[u8]) -> bool {
    !name.is_empty()
        && name.len() <= 998
        && name.iter().all(|&b| (33..=126).contains(&b) && b != b':')
}

impl Headers {
    /// Splits `text` (the start of the message) into its header fields.
    /// Returns the headers and the offset of the body (after the empty
    /// line); a line that is neither a field nor a continuation ends
    /// the header section there (RFC 5322 §2.1: the body follows).
    pub fn parse(text: &[u8]) -> (Headers, usize) {
        let mut fields: Vec<Field> = Vec::new();
        let mut pos = 0;
        while pos < text.len() {
            let end = text[pos..]
                .iter()
                .position(|&b| b == b'\n')
                .map_or(text.len(), |i| pos + i + 1);
            let line = &text[pos..end];
            let content = line
                .strip_suffix(b"\n")
                .map(|l| l.strip_suffix(b"\r").unwrap_or(l))
                .unwrap_or(line);
            if content.is_empty() {
                return (
                    Headers {
                        fields,
                        changed: false,
                    },
                    end,
                );
            }
            let folded = matches!(content[0], b' ' | b'\t');
            match (folded, fields.last_mut()) {
                (true, Some(f)) => {
                    f.value.extend_from_slice(b"\r\n");
                    f.value.extend_from_slice(content);
                    if let Some(raw) = f.raw.as_mut() {
                        raw.extend_from_slice(line);
                    }
                }
                _ => {
                    let Some(colon) = content.iter().position(|&b| b == b':') else {
                        break;
                    };
                    if !valid_name(&content[..colon]) {
                        break;
                    }
                    fields.push(Field {
                        name: content[..colon].to_vec(),
                        value: content[colon + 1..].to_vec(),
                        raw: Some(line.to_vec()),
                    });
                }
            }
            pos = end;
        }
        (
            Headers {
                fields,
                changed: false,
            },
            pos,
        )
    }

    /// The value as a milter is shown it: folded lines joined by LF, as
    /// Sendmail and Postfix pass them, and without the space after the
    /// colon unless the milter asked for it (`SMFIP_HDR_LEADSPC`).
    pub fn shown_value(field: &Field, lead_space: bool) -> Vec<u8> {
        let v = if lead_space {
            &field.value[..]
        } else {
            field.value.strip_prefix(b" ").unwrap_or(&field.value)
        };
        let mut out = Vec::with_capacity(v.len());
        let mut i = 0;
        while i < v.len() {
            if v[i] == b'\r' && v.get(i + 1) == Some(&b'\n') {
                i += 1;
                continue;
            }
            out.push(v[i]);
            i += 1;
        }
        out
    }

    /// A milter's value made into a field value: a leading space when
    /// it has none, every line ended by CRLF, every continuation line
    /// starting with white space (RFC 5322 §2.2.3), no stray CR.
    fn stored_value(value: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(value.len() + 8);
        if !matches!(value.first(), Some(b' ' | b'\t')) {
            out.push(b' ');
        }
        let lines: Vec<&[u8]> = value.split(|&b| b == b'\n').collect();
        for (i, line) in lines.iter().enumerate() {
            let line: Vec<u8> = line.iter().copied().filter(|&b| b != b'\r').collect();
            if i > 0 {
                if line.is_empty() {
                    continue;
                }
                out.extend_from_slice(b"\r\n");
                if !matches!(line[0], b' ' | b'\t') {
                    out.push(b'\t');
                }
            }
            out.extend_from_slice(&line);
        }
        out
    }

    fn field(name: &[u8], value: &[u8]) -> Result<Field, BadEdit> {
        if !valid_name(name) {
            return Err(BadEdit("bad header name"));
        }
        Ok(Field {
            name: name.to_vec(),
            value: Headers::stored_value(value),
            raw: None,
        })
    }

    /// `SMFIR_ADDHEADER`: a field at the end.
    pub fn add(&mut self, name: &[u8], value: &[u8]) -> Result<(), BadEdit> {
        self.fields.push(Headers::field(name, value)?);
        self.changed = true;
        Ok(())
    }

    /// `SMFIR_INSHEADER`: a field at position `index` (0: the first).
    pub fn insert(&mut self, index: u32, name: &[u8], value: &[u8]) -> Result<(), BadEdit> {
        let f = Headers::field(name, value)?;
        let at = (index as usize).min(self.fields.len());
        self.fields.insert(at, f);
        self.changed = true;
        Ok(())
    }

    /// `SMFIR_CHGHEADER`: the `index`th (from 1) field named `name`
    /// gets `value`; an empty value deletes it. A field that does not
    /// exist is added, as Sendmail does (`smfi_chgheader(3)`).
    pub fn change(&mut self, index: u32, name: &[u8], value: &[u8]) -> Result<(), BadEdit> {
        if !valid_name(name) {
            return Err(BadEdit("bad header name"));
        }
        let nth = index.max(1) as usize;
        let found = self
            .fields
            .iter()
            .enumerate()
            .filter(|(_, f)| f.name.eq_ignore_ascii_case(name))
            .nth(nth - 1)
            .map(|(i, _)| i);
        match (found, value.is_empty()) {
            (Some(i), true) => {
                self.fields.remove(i);
            }
            (Some(i), false) => {
                let f = Headers::field(&self.fields[i].name.clone(), value)?;
                self.fields[i] = f;
            }
            (None, true) => return Ok(()),
            (None, false) => self.fields.push(Headers::field(name, value)?),
        }
        self.changed = true;
        Ok(())
    }

    /// The header section as it goes to the spool, each field ended by
    /// CRLF (a field no milter touched: as received).
    pub fn write(&self, out: &mut dyn Write) -> io::Result<()> {
        for f in &self.fields {
            match &f.raw {
                Some(raw) => out.write_all(raw)?,
                None => {
                    out.write_all(&f.name)?;
                    out.write_all(b":")?;
                    out.write_all(&f.value)?;
                    out.write_all(b"\r\n")?;
                }
            }
        }
        Ok(())
    }
}

/// A replacement body with every line ending made CRLF (the spool
/// holds what the wire carries, RFC 5321 §2.3.8).
pub fn crlf_body(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() + body.len() / 32);
    let mut prev = 0u8;
    for &b in body {
        if b == b'\n' && prev != b'\r' {
            out.push(b'\r');
        }
        if prev == b'\r' && b != b'\n' {
            out.push(b'\n');
        }
        out.push(b);
        prev = b;
    }
    if prev == b'\r' {
        out.push(b'\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const MSG: &[u8] =
        b"Received: from x\r\n\tby y\r\nSubject: Hi\r\nX-A: 1\r\nx-a: 2\r\n\r\nbody\r\n";

    fn written(h: &Headers) -> String {
        let mut v = Vec::new();
        h.write(&mut v).unwrap();
        String::from_utf8(v).unwrap()
    }

    #[test]
    fn parse_keeps_fields_folds_and_body_offset() {
        let (h, body) = Headers::parse(MSG);
        assert_eq!(&MSG[body..], b"body\r\n");
        assert_eq!(h.fields.len(), 4);
        assert_eq!(h.fields[0].value, b" from x\r\n\tby y");
        assert_eq!(Headers::shown_value(&h.fields[0], false), b"from x\n\tby y");
        assert_eq!(Headers::shown_value(&h.fields[1], true), b" Hi");
        // untouched: written back as received
        assert_eq!(written(&h).as_bytes(), &MSG[..body - 2]);
        // bare LF (a BDAT body) and a message without a body
        let (h, body) = Headers::parse(b"A: 1\nB: 2\n\nx");
        assert_eq!((h.fields.len(), body), (2, 11));
        let (h, body) = Headers::parse(b"A: 1\r\n");
        assert_eq!((h.fields.len(), body), (1, 6));
    }

    #[test]
    fn add_insert_change_delete() {
        let (mut h, _) = Headers::parse(MSG);
        h.add(b"X-Spam", b"no").unwrap();
        h.insert(0, b"DKIM-Signature", b"v=1;\n\tb=abc").unwrap();
        h.change(2, b"X-A", b"two").unwrap();
        h.change(1, b"subject", b"").unwrap();
        h.change(1, b"X-New", b"added").unwrap();
        h.change(5, b"X-Gone", b"").unwrap();
        assert!(h.changed);
        assert_eq!(
            written(&h),
            "DKIM-Signature: v=1;\r\n\tb=abc\r\nReceived: from x\r\n\tby y\r\nX-A: 1\r\nx-a: two\r\nX-Spam: no\r\nX-New: added\r\n"
        );
        assert!(h.add(b"Bad Name", b"v").is_err());
        assert!(h.add(b"", b"v").is_err());
        assert!(h.insert(99, b"Last", b"x").is_ok());
        assert!(written(&h).ends_with("Last: x\r\n"));
    }

    #[test]
    fn stored_values_fold_safely() {
        // an injected line without white space cannot become a field
        let (mut h, _) = Headers::parse(b"");
        h.add(b"X", b"a\nBcc: evil\r\n").unwrap();
        assert_eq!(written(&h), "X: a\r\n\tBcc: evil\r\n");
    }

    #[test]
    fn replacement_bodies_get_crlf() {
        assert_eq!(crlf_body(b"a\nb\r\nc\rd"), b"a\r\nb\r\nc\r\nd");
        assert_eq!(crlf_body(b"x\r"), b"x\r\n");
    }
}
