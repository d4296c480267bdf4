//! The `Authentication-Results:` field (RFC 8601 §2.2) we write, and the
//! removal of fields that claim to be ours (RFC 8601 §5). Pure text work.

use mail_auth::{AuthenticationResults, DkimOutput, DmarcOutput};

use super::SpfResults;

/// How far a check got.
pub enum Outcome<'a, T: ?Sized> {
    Done(&'a T),
    /// It ran out of the time budget: `temperror`.
    TimedOut,
    /// There was nothing to check (no header section).
    Skipped,
}

impl<'a, T: ?Sized> Outcome<'a, T> {
    /// `None` from a timed-out check.
    pub fn of(done: Option<&'a T>) -> Outcome<'a, T> {
        match done {
            Some(t) => Outcome::Done(t),
            None => Outcome::TimedOut,
        }
    }
}

const TIMED_OUT: &str = "temperror (verification timed out)";

/// The whole field, CRLF-ended: `authserv-id` is `hostname` (RFC 8601
/// §2.5); one resinfo per method, SPF's for HELO and MAIL FROM, one per
/// DKIM signature (`dkim=none` without any, RFC 8601 §2.7.1), DMARC's.
pub fn field(
    hostname: &str,
    spf: &SpfResults,
    dkim: Outcome<[DkimOutput]>,
    dmarc: Outcome<DmarcOutput>,
    header_from: &str,
) -> String {
    // mail-auth writes each resinfo as ";\r\n\tmethod=result ..." after
    // the authserv-id it is given: given none, the pieces join in order
    let part = || AuthenticationResults::new("");
    let mut text = format!("Authentication-Results: {hostname}");
    if let Some((helo, out)) = &spf.helo {
        text += &part().with_spf_ehlo_result(out, spf.ip, helo).to_string();
    }
    let helo = spf.helo.as_ref().map(|(h, _)| h.as_str()).unwrap_or("");
    match &spf.mail_from {
        Some((identity, _, out)) => {
            text += &part()
                .with_spf_mailfrom_result(out, spf.ip, identity, helo)
                .to_string()
        }
        None => text.push_str(";\r\n\tspf=none (no domain to check)"),
    }
    match dkim {
        Outcome::Done([]) => text.push_str(";\r\n\tdkim=none (no signatures)"),
        Outcome::Done(outputs) => {
            text += &part().with_dkim_results(outputs, header_from).to_string()
        }
        Outcome::TimedOut => text.push_str(&format!(";\r\n\tdkim={TIMED_OUT}")),
        Outcome::Skipped => text.push_str(";\r\n\tdkim=none (no header section)"),
    }
    match dmarc {
        Outcome::Done(out) if !out.domain().is_empty() => {
            text += &part().with_dmarc_result(out).to_string()
        }
        Outcome::Done(_) => text.push_str(";\r\n\tdmarc=none (no From: domain)"),
        Outcome::TimedOut => text.push_str(&format!(";\r\n\tdmarc={TIMED_OUT}")),
        Outcome::Skipped => text.push_str(";\r\n\tdmarc=none (no header section)"),
    }
    text + "\r\n"
}

/// `method=result` of each resinfo of a field we wrote, for the log:
/// `spf=pass dkim=fail dmarc=fail`.
pub fn summary(field: &str) -> String {
    field
        .split(';')
        .skip(1)
        .filter_map(|r| r.split_whitespace().next())
        .collect::<Vec<_>>()
        .join(" ")
}

/// `message` (a header section, an empty line, a body) without the
/// `Authentication-Results:` fields whose authserv-id is `ours`
/// (compared without case): RFC 8601 §5, a receiver removes such fields
/// arriving from outside, as they may be forged. Returns the message and
/// how many fields went. The body is not looked at.
pub fn remove_ours(message: &[u8], ours: &str) -> (Vec<u8>, usize) {
    let mut out = Vec::with_capacity(message.len());
    let mut removed = 0;
    let mut rest = message;
    // one field at a time: its first line and the folded lines after it
    while !rest.is_empty() && !starts_body(rest) {
        let mut end = line_end(rest, 0);
        while end < rest.len() && matches!(rest[end], b' ' | b'\t') {
            end = line_end(rest, end);
        }
        let field = &rest[..end];
        if authserv_id(field).is_some_and(|id| id.eq_ignore_ascii_case(ours)) {
            removed += 1;
        } else {
            out.extend_from_slice(field);
        }
        rest = &rest[end..];
    }
    out.extend_from_slice(rest);
    (out, removed)
}

/// The empty line that ends the header section.
fn starts_body(rest: &[u8]) -> bool {
    rest.starts_with(b"\r\n") || rest.starts_with(b"\n")
}

/// The index after the LF of the line starting at `from`.
fn line_end(s: &[u8], from: usize) -> usize {
    s[from..]
        .iter()
        .position(|&b| b == b'\n')
        .map_or(s.len(), |i| from + i + 1)
}

/// The authserv-id of an `Authentication-Results:` field (RFC 8601
/// §2.2: `authserv-id = value`, after optional CFWS), `None` for any
/// other field.
fn authserv_id(field: &[u8]) -> Option<String> {
    let text = String::from_utf8_lossy(field);
    let (name, value) = text.split_once(':')?;
    if !name
        .trim_end()
        .eq_ignore_ascii_case("Authentication-Results")
    {
        return None;
    }
    let value = skip_cfws(value);
    if let Some(quoted) = value.strip_prefix('"') {
        // value = token / quoted-string (RFC 2045 §5.1)
        let mut id = String::new();
        let mut chars = quoted.chars();
        while let Some(c) = chars.next() {
            match c {
                '"' => return Some(id),
                '\\' => id.extend(chars.next()),
                c => id.push(c),
            }
        }
        return None;
    }
    let end = value
        .find(|c: char| c == ';' || c == '(' || c.is_ascii_whitespace())
        .unwrap_or(value.len());
    Some(value[..end].to_string())
}

/// `s` after leading white space, line folds and (nested) comments
/// (RFC 5322 §3.2.2 CFWS).
fn skip_cfws(mut s: &str) -> &str {
    loop {
        s = s.trim_start();
        if !s.starts_with('(') {
            return s;
        }
        let mut depth = 0usize;
        let mut end = s.len();
        let mut escaped = false;
        for (i, c) in s.char_indices() {
            match c {
                _ if escaped => escaped = false,
                '\\' => escaped = true,
                '(' => depth += 1,
                ')' => {
                    depth -= 1;
                    if depth == 0 {
                        end = i + 1;
                        break;
                    }
                }
                _ => {}
            }
        }
        s = &s[end..];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_authserv_id() {
        let id = |f: &str| authserv_id(f.as_bytes());
        assert_eq!(
            id("Authentication-Results: mx.test; spf=pass\r\n").as_deref(),
            Some("mx.test")
        );
        assert_eq!(
            id("authentication-results :mx.test;\r\n\tdkim=pass\r\n").as_deref(),
            Some("mx.test")
        );
        assert_eq!(
            id("Authentication-Results: (a (nested) comment)\r\n mx.test 1; none\r\n").as_deref(),
            Some("mx.test")
        );
        assert_eq!(
            id("Authentication-Results: \"mx.test\"; none\r\n").as_deref(),
            Some("mx.test")
        );
        assert_eq!(
            id("Authentication-Results: mx.test(c); none\r\n").as_deref(),
            Some("mx.test")
        );
        assert_eq!(id("Subject: Authentication-Results: mx.test\r\n"), None);
        assert_eq!(id("X-Authentication-Results: mx.test; none\r\n"), None);
    }

    #[test]
    fn removes_only_our_fields_from_the_header_section() {
        let msg = b"Authentication-Results: MX.test;\r\n\tspf=pass smtp.mailfrom=a@b\r\n\
            Authentication-Results: other.test; dkim=pass\r\n\
            Subject: hi\r\n\
            Authentication-Results: mx.test; none\r\n\
            \r\n\
            Authentication-Results: mx.test; this is body text\r\n";
        let (out, n) = remove_ours(msg, "mx.test");
        assert_eq!(n, 2);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "Authentication-Results: other.test; dkim=pass\r\n\
             Subject: hi\r\n\
             \r\n\
             Authentication-Results: mx.test; this is body text\r\n"
        );
        // nothing to remove: the same octets
        let plain = b"Subject: x\r\n\r\nbody\r\n";
        assert_eq!(remove_ours(plain, "mx.test"), (plain.to_vec(), 0));
        // a message that is all header, and one that is empty
        let (out, n) = remove_ours(b"Authentication-Results: mx.test; none\r\n", "mx.test");
        assert_eq!((out.as_slice(), n), (&b""[..], 1));
        assert_eq!(remove_ours(b"", "mx.test"), (Vec::new(), 0));
    }
}
