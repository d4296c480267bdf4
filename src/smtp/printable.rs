//! Text a peer chose, made safe to show a person: in logs and in `queue
//! list`/`show`, every character that is not printable becomes `\u{...}`
//! (Rust's escape form), so a U+202E cannot reverse the rest of a log
//! line, a U+2028 cannot start a fake one, and an invisible character
//! cannot make two addresses look the same.
//!
//! Also the character classes the address parser refuses in SMTPUTF8
//! local parts (RFC 6531 §3.3 leaves their syntax to RFC 6532, which
//! allows any UTF-8; the refusal is our policy, see `address.rs`).

use std::borrow::Cow;
use std::fmt::{self, Write};

/// Unicode general category Cf (format), Unicode 15.1: invisible
/// characters that change how the text around them is shown.
pub fn is_format(c: char) -> bool {
    matches!(c as u32,
        0x00AD | 0x0600..=0x0605 | 0x061C | 0x06DD | 0x070F | 0x0890..=0x0891
        | 0x08E2 | 0x180E | 0x200B..=0x200F | 0x202A..=0x202E | 0x2060..=0x2064
        | 0x2066..=0x206F | 0xFEFF | 0xFFF9..=0xFFFB | 0x110BD | 0x110CD
        | 0x13430..=0x1343F | 0x1BCA0..=0x1BCA3 | 0x1D173..=0x1D17A
        | 0xE0001 | 0xE0020..=0xE007F)
}

/// Not printable: controls (Cc: C0, DEL, C1), format characters (Cf),
/// and the line and paragraph separators (Zl U+2028, Zp U+2029).
pub fn is_unprintable(c: char) -> bool {
    c.is_control() || is_format(c) || matches!(c, '\u{2028}' | '\u{2029}')
}

/// What an SMTPUTF8 local part may not contain: the unprintable
/// characters, except ZERO WIDTH NON-JOINER and JOINER (U+200C, U+200D),
/// which Persian and Indic names need (RFC 5892 Appendix A.1/A.2 allows
/// them in domains too, in context), and the script-specific number and
/// format marks (Arabic, Syriac, Kaithi, Egyptian, shorthand, musical
/// notation) that are part of the text they sit in. What stays refused is
/// what only hides or reorders text: bidi marks, embeddings, overrides
/// and isolates, zero-width spaces and joiners of words, the soft hyphen,
/// the BOM, interlinear annotations, tags, line and paragraph separators.
pub fn is_forbidden_in_local_part(c: char) -> bool {
    if c.is_control() || matches!(c, '\u{2028}' | '\u{2029}') {
        return true;
    }
    matches!(c as u32,
        0x00AD | 0x061C | 0x180E | 0x200B | 0x200E | 0x200F | 0x202A..=0x202E
        | 0x2060..=0x2064 | 0x2066..=0x206F | 0xFEFF | 0xFFF9..=0xFFFB
        | 0xE0001 | 0xE0020..=0xE007F)
}

/// `s` for display: see the module header. Borrowed when nothing needs
/// escaping (the usual case).
pub fn escape(s: &str) -> Cow<'_, str> {
    if !s.chars().any(is_unprintable) {
        return Cow::Borrowed(s);
    }
    Cow::Owned(Escaped(s).to_string())
}

/// Displays its text with the unprintable characters escaped.
#[derive(Debug, Clone, Copy)]
pub struct Escaped<'a>(pub &'a str);

impl fmt::Display for Escaped<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for c in self.0.chars() {
            if is_unprintable(c) {
                write!(f, "\\u{{{:x}}}", c as u32)?;
            } else {
                f.write_char(c)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes() {
        let cases: &[(&str, &str)] = &[
            ("user@example.org", "user@example.org"),
            ("pelé@exämple.org", "pelé@exämple.org"),
            ("a\u{202e}gro.elpmaxe", "a\\u{202e}gro.elpmaxe"),
            ("x\u{2028}y", "x\\u{2028}y"),
            ("tab\there", "tab\\u{9}here"),
            ("nul\0", "nul\\u{0}"),
            ("del\u{7f}c1\u{85}", "del\\u{7f}c1\\u{85}"),
            ("zw\u{200b}sp", "zw\\u{200b}sp"),
            ("tag\u{e0041}", "tag\\u{e0041}"),
            ("zwj\u{200d}", "zwj\\u{200d}"),
            ("", ""),
        ];
        for (input, want) in cases {
            assert_eq!(escape(input), *want, "{input:?}");
            assert_eq!(Escaped(input).to_string(), *want, "{input:?}");
        }
        assert!(matches!(escape("plain"), Cow::Borrowed(_)));
    }

    #[test]
    fn local_part_classes() {
        for c in [
            '\u{202e}',
            '\u{2066}',
            '\u{2069}',
            '\u{2028}',
            '\u{2029}',
            '\u{85}',
            '\u{7f}',
            '\0',
            '\u{200b}',
            '\u{200f}',
            '\u{feff}',
            '\u{e0001}',
        ] {
            assert!(is_forbidden_in_local_part(c), "{c:?}");
            assert!(is_unprintable(c), "{c:?}");
        }
        for c in ['é', 'ß', '中', '\u{200c}', '\u{200d}', ' ', '\u{a0}'] {
            assert!(!is_forbidden_in_local_part(c), "{c:?}");
        }
    }
}
