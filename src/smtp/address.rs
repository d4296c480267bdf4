//! Addresses as RFC 5321 §4.1.2 defines them: `Domain`, `Mailbox`, `Path`,
//! `ReversePath`.
//!
//! Parsing is strict and done once; everything downstream (relay control,
//! routing, the envelope) works on the parsed types, so `%`, `!`, quoted
//! local parts containing `@` and source routes cannot change which domain a
//! recipient belongs to: it is always the part after the last unquoted `@`
//! of the mailbox, nothing else.
//!
//! Under SMTPUTF8, what arrives on the wire is held to more than syntax
//! (RFC 6531 §3.3): a non-ASCII domain must be IDNA2008 U-labels, and a
//! local part may not hide or reorder text (controls, bidi overrides,
//! separators); both are refused with `553 5.1.3` (`NotAllowed`). What
//! we stored ourselves is parsed without those checks (`parse_stored`),
//! so a message accepted by an older version never becomes unreadable.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use super::reply::Enhanced;

/// RFC 5321 §4.5.3.1.1: local part at most 64 octets.
pub const MAX_LOCAL_PART: usize = 64;
/// RFC 5321 §4.5.3.1.2: domain at most 255 octets.
pub const MAX_DOMAIN: usize = 255;
/// RFC 5321 §4.5.3.1.3: path at most 256 octets including the brackets.
pub const MAX_PATH: usize = 256;

/// Why an address did not parse; `enhanced()` gives the RFC 3463 code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AddressError {
    Syntax(&'static str),
    TooLong(&'static str),
    /// Non-ASCII where SMTPUTF8 was not negotiated (RFC 6531 §3.4).
    NeedsSmtpUtf8,
    /// Well formed, but a name we do not take: not IDNA2008, or a local
    /// part with control or format characters (`553 5.1.3`).
    NotAllowed(&'static str),
}

impl AddressError {
    pub fn enhanced(&self) -> Enhanced {
        match self {
            AddressError::Syntax(_) | AddressError::TooLong(_) | AddressError::NotAllowed(_) => {
                Enhanced::new(5, 1, 3)
            }
            AddressError::NeedsSmtpUtf8 => Enhanced::new(5, 6, 7),
        }
    }
}

impl fmt::Display for AddressError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AddressError::Syntax(s) => write!(f, "Bad address syntax: {s}"),
            AddressError::TooLong(s) => write!(f, "Address too long: {s}"),
            AddressError::NeedsSmtpUtf8 => {
                write!(f, "Non-ASCII address requires the SMTPUTF8 parameter")
            }
            AddressError::NotAllowed(s) => write!(f, "Address not allowed: {s}"),
        }
    }
}

impl std::error::Error for AddressError {}

/// How much a parser checks beyond syntax: everything for what a peer
/// sends, syntax only for what we stored (see the module header).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Check {
    Wire,
    Stored,
}

/// A domain name, stored as given (case kept for forwarding) and compared
/// case-insensitively (RFC 5321 §2.4).
#[derive(Debug, Clone, Eq)]
pub struct Domain(String);

impl Domain {
    /// RFC 5321 §4.1.2: `sub-domain *("." sub-domain)`, each `Let-dig
    /// [Ldh-str]`. With `utf8`, U-labels are allowed (RFC 6531 §3.3), and
    /// a domain with any is checked as IDNA2008 (`check_idna`).
    pub fn parse(s: &str, utf8: bool) -> Result<Domain, AddressError> {
        Domain::parse_with(s, utf8, Check::Wire)
    }

    fn parse_with(s: &str, utf8: bool, check: Check) -> Result<Domain, AddressError> {
        if s.is_empty() {
            return Err(AddressError::Syntax("empty domain"));
        }
        if s.len() > MAX_DOMAIN {
            return Err(AddressError::TooLong("domain over 255 octets"));
        }
        for label in s.split('.') {
            if label.is_empty() {
                return Err(AddressError::Syntax("empty label in domain"));
            }
            if label.len() > 63 {
                return Err(AddressError::TooLong("domain label over 63 octets"));
            }
            let ok_char = |c: char| c.is_ascii_alphanumeric() || c == '-' || (!c.is_ascii());
            for c in label.chars() {
                if !c.is_ascii() && !utf8 {
                    return Err(AddressError::NeedsSmtpUtf8);
                }
                if !ok_char(c) || c.is_control() {
                    return Err(AddressError::Syntax("invalid character in domain"));
                }
            }
            if label.starts_with('-') || label.ends_with('-') {
                return Err(AddressError::Syntax("domain label starts or ends with '-'"));
            }
        }
        if check == Check::Wire && !s.is_ascii() {
            check_idna(s)?;
        }
        Ok(Domain(s.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Lower-case form, for comparisons and map keys.
    pub fn key(&self) -> String {
        self.0.to_lowercase()
    }

    /// True when this is `other` or a subdomain of it.
    pub fn is_within(&self, other: &Domain) -> bool {
        let me = self.key();
        let them = other.key();
        me == them || me.ends_with(&format!(".{them}"))
    }
}

impl PartialEq for Domain {
    fn eq(&self, other: &Domain) -> bool {
        self.0.eq_ignore_ascii_case(&other.0) || self.key() == other.key()
    }
}

impl fmt::Display for Domain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// RFC 6531 §3.3: a non-ASCII domain is made of U-labels, which must be
/// valid IDNA2008 (RFC 5890-5893; RFC 5891 §5.4 for what a receiver
/// checks). The `idna` crate's UTS 46 processing does the work, set to
/// its strictest: nontransitional, STD3 ASCII rules, bidi rule (RFC
/// 5893), CONTEXTJ (RFC 5892 Appendix A), DNS lengths of the A-labels.
/// UTS 46 also *maps* (width, compatibility forms, ignored characters
/// such as U+00AD); IDNA2008 has no mapping in the protocol (RFC 5891
/// §5.3-5.4), so a label must come back unchanged from its A-label, case
/// aside (RFC 5321 §2.4). Hyphens: not first or last (checked above for
/// every label) and, in a U-label, not "--" in the third and fourth
/// positions (RFC 5891 §4.2.3.1).
fn check_idna(s: &str) -> Result<(), AddressError> {
    use idna::uts46::{AsciiDenyList, DnsLength, Hyphens, Uts46};
    const REFUSED: AddressError =
        AddressError::NotAllowed("domain is not valid IDNA2008 (RFC 5891)");
    let uts46 = Uts46::new();
    let ascii = uts46
        .to_ascii(
            s.as_bytes(),
            AsciiDenyList::STD3,
            Hyphens::CheckFirstLast,
            DnsLength::Verify,
        )
        .map_err(|_| REFUSED)?;
    let (back, errors) = uts46.to_unicode(
        ascii.as_bytes(),
        AsciiDenyList::STD3,
        Hyphens::CheckFirstLast,
    );
    let folded: String = s.chars().flat_map(char::to_lowercase).collect();
    if errors.is_err() || back != folded {
        return Err(REFUSED);
    }
    let dashes = |l: &str| l.chars().skip(2).take(2).eq("--".chars());
    if s.split('.').any(|l| !l.is_ascii() && dashes(l)) {
        return Err(REFUSED);
    }
    Ok(())
}

/// The part of a mailbox after `@`: a name or an address literal (§4.1.3).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Host {
    Name(Domain),
    Ipv4(Ipv4Addr),
    Ipv6(Ipv6Addr),
}

impl Host {
    fn parse(s: &str, utf8: bool, check: Check) -> Result<Host, AddressError> {
        if let Some(inner) = s.strip_prefix('[') {
            let inner = inner
                .strip_suffix(']')
                .ok_or(AddressError::Syntax("unterminated address literal"))?;
            if let Some(v6) = strip_prefix_ignore_case(inner, "IPv6:") {
                return v6
                    .parse::<Ipv6Addr>()
                    .map(Host::Ipv6)
                    .map_err(|_| AddressError::Syntax("bad IPv6 address literal"));
            }
            // RFC 5321 §4.1.3: IPv4 literal is four dotted decimal octets.
            if inner.split('.').count() == 4
                && inner.bytes().all(|b| b.is_ascii_digit() || b == b'.')
            {
                return inner
                    .parse::<Ipv4Addr>()
                    .map(Host::Ipv4)
                    .map_err(|_| AddressError::Syntax("bad IPv4 address literal"));
            }
            return Err(AddressError::Syntax("unsupported address literal"));
        }
        Domain::parse_with(s, utf8, check).map(Host::Name)
    }

    pub fn domain(&self) -> Option<&Domain> {
        match self {
            Host::Name(d) => Some(d),
            _ => None,
        }
    }

    pub fn ip(&self) -> Option<IpAddr> {
        match self {
            Host::Name(_) => None,
            Host::Ipv4(a) => Some(IpAddr::V4(*a)),
            Host::Ipv6(a) => Some(IpAddr::V6(*a)),
        }
    }

    /// Lower-case text form, for grouping recipients by destination.
    pub fn key(&self) -> String {
        match self {
            Host::Name(d) => d.key(),
            other => other.to_string(),
        }
    }
}

impl fmt::Display for Host {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Host::Name(d) => write!(f, "{d}"),
            Host::Ipv4(a) => write!(f, "[{a}]"),
            Host::Ipv6(a) => write!(f, "[IPv6:{a}]"),
        }
    }
}

fn strip_prefix_ignore_case<'a>(s: &'a str, prefix: &str) -> Option<&'a str> {
    if s.len() >= prefix.len()
        && s.is_char_boundary(prefix.len())
        && s[..prefix.len()].eq_ignore_ascii_case(prefix)
    {
        Some(&s[prefix.len()..])
    } else {
        None
    }
}

/// `Local-part "@" ( Domain / address-literal )` (RFC 5321 §4.1.2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mailbox {
    /// As given on the wire, quotes included: the local part is the
    /// destination's business (§2.4), so it is kept byte for byte.
    local: String,
    host: Host,
}

/// RFC 5322 atext, as RFC 5321 §4.1.2 uses it for Dot-string.
fn is_atext(c: char) -> bool {
    c.is_ascii_alphanumeric() || "!#$%&'*+-/=?^_`{|}~".contains(c)
}

impl Mailbox {
    pub fn parse(s: &str, utf8: bool) -> Result<Mailbox, AddressError> {
        Mailbox::parse_with(s, utf8, Check::Wire)
    }

    fn parse_with(s: &str, utf8: bool, check: Check) -> Result<Mailbox, AddressError> {
        let (local, host) = split_local(s, utf8)?;
        if local.len() > MAX_LOCAL_PART {
            return Err(AddressError::TooLong("local part over 64 octets"));
        }
        // RFC 6532 §3.2 allows any UTF-8 here; we refuse what only hides or
        // reorders text (see `printable::is_forbidden_in_local_part`)
        if check == Check::Wire
            && local
                .chars()
                .any(super::printable::is_forbidden_in_local_part)
        {
            return Err(AddressError::NotAllowed(
                "control or format character in local part",
            ));
        }
        let host = Host::parse(host, utf8, check)?;
        Ok(Mailbox {
            local: local.to_string(),
            host,
        })
    }

    pub fn local(&self) -> &str {
        &self.local
    }

    pub fn host(&self) -> &Host {
        &self.host
    }

    /// True when the address needs SMTPUTF8 to travel (RFC 6531).
    pub fn is_utf8(&self) -> bool {
        !self.to_string().is_ascii()
    }
}

/// Splits at the `@` that ends the local part, validating the local part.
/// Quoted strings may contain `@`; the split is after the closing quote.
fn split_local(s: &str, utf8: bool) -> Result<(&str, &str), AddressError> {
    let bytes = s.as_bytes();
    let end = if bytes.first() == Some(&b'"') {
        // Quoted-string = DQUOTE *QcontentSMTP DQUOTE
        let mut i = 1;
        loop {
            match bytes.get(i) {
                None => return Err(AddressError::Syntax("unterminated quoted string")),
                Some(b'"') => break i + 1,
                Some(b'\\') => match bytes.get(i + 1) {
                    // quoted-pairSMTP = %d92 %d32-126
                    Some(32..=126) => i += 2,
                    _ => return Err(AddressError::Syntax("bad quoted pair")),
                },
                // qtextSMTP = %d32-33 / %d35-91 / %d93-126, plus UTF-8
                Some(32..=126) => i += 1,
                Some(128..) if utf8 => i += 1,
                Some(128..) => return Err(AddressError::NeedsSmtpUtf8),
                Some(_) => return Err(AddressError::Syntax("control character in quoted string")),
            }
        }
    } else {
        let at = s
            .rfind('@')
            .ok_or(AddressError::Syntax("missing '@' in mailbox"))?;
        let local = &s[..at];
        if local.is_empty() {
            return Err(AddressError::Syntax("empty local part"));
        }
        for atom in local.split('.') {
            if atom.is_empty() {
                return Err(AddressError::Syntax("empty atom in local part"));
            }
            for c in atom.chars() {
                if !c.is_ascii() {
                    if !utf8 {
                        return Err(AddressError::NeedsSmtpUtf8);
                    }
                } else if !is_atext(c) {
                    return Err(AddressError::Syntax("invalid character in local part"));
                }
            }
        }
        at
    };
    if bytes.get(end) != Some(&b'@') {
        return Err(AddressError::Syntax("missing '@' after local part"));
    }
    Ok((&s[..end], &s[end + 1..]))
}

impl fmt::Display for Mailbox {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.local, self.host)
    }
}

/// A forward-path, or the non-null reverse-path: an optional RFC 821
/// source route (`@hosta,@hostb:`) and the mailbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Path {
    route: Vec<Domain>,
    mailbox: Mailbox,
}

impl Path {
    pub fn new(mailbox: Mailbox) -> Path {
        Path {
            route: Vec::new(),
            mailbox,
        }
    }

    /// A path through `route` (RFC 821 §3.6 source route) to `mailbox`.
    pub fn with_route(route: Vec<Domain>, mailbox: Mailbox) -> Path {
        Path { route, mailbox }
    }

    /// Parses `<[A-d-l ":"] Mailbox>` (RFC 5321 §4.1.2), brackets included.
    pub fn parse(s: &str, utf8: bool) -> Result<Path, AddressError> {
        if s.len() > MAX_PATH {
            return Err(AddressError::TooLong("path over 256 octets"));
        }
        Path::parse_unlimited(s, utf8, Check::Wire)
    }

    /// Parses a path we printed ourselves (the envelope): no 256-octet
    /// limit, because the printed form of an accepted path may be a few
    /// octets longer than what the client sent (an IPv6 literal such as
    /// `1::3:4:5:6:7:8` prints as `1:0:3:4:5:6:7:8`, RFC 5952 §4.2.2), and
    /// an accepted message must never become unreadable.
    pub fn parse_stored(s: &str) -> Result<Path, AddressError> {
        Path::parse_unlimited(s, true, Check::Stored)
    }

    fn parse_unlimited(s: &str, utf8: bool, check: Check) -> Result<Path, AddressError> {
        let inner = s
            .strip_prefix('<')
            .and_then(|x| x.strip_suffix('>'))
            .ok_or(AddressError::Syntax("path must be enclosed in <>"))?;
        let (route, mailbox) = match inner.strip_prefix('@') {
            // A-d-l = At-domain *( "," At-domain ); At-domain = "@" Domain
            Some(_) => {
                let colon = inner
                    .find(':')
                    .ok_or(AddressError::Syntax("source route without ':'"))?;
                let mut route = Vec::new();
                for hop in inner[..colon].split(',') {
                    let d = hop
                        .strip_prefix('@')
                        .ok_or(AddressError::Syntax("source route hop without '@'"))?;
                    route.push(Domain::parse_with(d, utf8, check)?);
                }
                (route, &inner[colon + 1..])
            }
            None => (Vec::new(), inner),
        };
        Ok(Path {
            route,
            mailbox: Mailbox::parse_with(mailbox, utf8, check)?,
        })
    }

    pub fn route(&self) -> &[Domain] {
        &self.route
    }

    pub fn mailbox(&self) -> &Mailbox {
        &self.mailbox
    }

    /// RFC 5321 §3.6.1 / Appendix C: source routes may be ignored; the path
    /// with its route stripped.
    pub fn without_route(&self) -> Path {
        Path::new(self.mailbox.clone())
    }
}

impl fmt::Display for Path {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<")?;
        for (i, d) in self.route.iter().enumerate() {
            let sep = if i + 1 == self.route.len() { ':' } else { ',' };
            write!(f, "@{d}{sep}")?;
        }
        write!(f, "{}>", self.mailbox)
    }
}

/// `MAIL FROM:` argument: the null path `<>` (used by bounces, RFC 5321
/// §4.5.5) or a path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReversePath {
    Null,
    Path(Path),
}

impl ReversePath {
    pub fn parse(s: &str, utf8: bool) -> Result<ReversePath, AddressError> {
        if s == "<>" {
            Ok(ReversePath::Null)
        } else {
            Path::parse(s, utf8).map(ReversePath::Path)
        }
    }

    pub fn is_null(&self) -> bool {
        matches!(self, ReversePath::Null)
    }

    /// See `Path::parse_stored`.
    pub fn parse_stored(s: &str) -> Result<ReversePath, AddressError> {
        if s == "<>" {
            Ok(ReversePath::Null)
        } else {
            Path::parse_stored(s).map(ReversePath::Path)
        }
    }

    pub fn mailbox(&self) -> Option<&Mailbox> {
        match self {
            ReversePath::Null => None,
            ReversePath::Path(p) => Some(p.mailbox()),
        }
    }
}

impl fmt::Display for ReversePath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReversePath::Null => f.write_str("<>"),
            ReversePath::Path(p) => write!(f, "{p}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn path(s: &str) -> Result<Path, AddressError> {
        Path::parse(s, false)
    }

    #[test]
    fn table() {
        // (input, Ok(domain key) or Err)
        let cases: &[(&str, Option<&str>)] = &[
            ("<user@example.org>", Some("example.org")),
            ("<User.Name+tag@Example.ORG>", Some("example.org")),
            ("<\"user@dest\"@relay.example>", Some("relay.example")),
            ("<\"a\\\"b\"@x.y>", Some("x.y")),
            ("<user%dest@relay.example>", Some("relay.example")),
            ("<dest!user@relay.example>", Some("relay.example")),
            ("<@hosta,@hostb:user@final.example>", Some("final.example")),
            ("<@relay.example:user@dest.example>", Some("dest.example")),
            ("<user@[192.0.2.1]>", Some("[192.0.2.1]")),
            ("<user@[IPv6:2001:db8::1]>", Some("[ipv6:2001:db8::1]")),
            ("<user@dest@relay.example>", None),
            ("<user@example.org.>", None),
            ("<user@-bad.org>", None),
            ("<user@>", None),
            ("<@example.org>", None),
            ("<user>", None),
            ("user@example.org", None),
            ("<user@example.org", None),
            ("<us er@example.org>", None),
            ("<a..b@example.org>", None),
            ("<.a@example.org>", None),
            ("<user@exa_mple.org>", None),
            ("<user@[300.1.1.1]>", None),
            ("<user@[1.2.3]>", None),
            ("<\"unterminated@example.org>", None),
            ("<üser@example.org>", None),
            ("<user@exämple.org>", None),
            ("<@a,b:user@example.org>", None),
        ];
        for (input, want) in cases {
            let got = path(input).map(|p| p.mailbox().host().key().to_lowercase());
            match want {
                Some(d) => assert_eq!(got.as_deref(), Ok(*d), "{input}"),
                None => assert!(got.is_err(), "{input} should fail, got {got:?}"),
            }
        }
    }

    #[test]
    fn limits() {
        let local = "a".repeat(64);
        assert!(path(&format!("<{local}@x.org>")).is_ok());
        assert!(path(&format!("<a{local}@x.org>")).is_err());
        let long = format!("<a@{}.org>", "b".repeat(60));
        assert!(path(&long).is_ok());
        let too_long = format!("<a@{}>", vec!["c".repeat(60); 5].join("."));
        assert_eq!(
            path(&too_long),
            Err(AddressError::TooLong("path over 256 octets"))
        );
    }

    #[test]
    fn utf8_only_when_negotiated() {
        assert_eq!(
            Path::parse("<üser@example.org>", false),
            Err(AddressError::NeedsSmtpUtf8)
        );
        assert!(Path::parse("<üser@exämple.org>", true).is_ok());
    }

    /// RFC 6531 §3.3 / RFC 5891 §5.4: what SMTPUTF8 domains and local
    /// parts may hold. `Ok(())` accepted; `Err(e)` refused as `e`.
    #[test]
    fn smtputf8_idna2008_and_local_parts() {
        const NOT: AddressError =
            AddressError::NotAllowed("domain is not valid IDNA2008 (RFC 5891)");
        const LOCAL: AddressError =
            AddressError::NotAllowed("control or format character in local part");
        let cases: &[(&str, Result<(), AddressError>)] = &[
            ("<pelé@exämple.org>", Ok(())),
            ("<user@bücher.example>", Ok(())),
            ("<user@BÜCHER.example>", Ok(())),
            ("<用户@例子.广告>", Ok(())),
            ("<δοκιμή@παράδειγμα.δοκιμή>", Ok(())),
            ("<user@faß.de>", Ok(())),
            // ZWNJ where CONTEXTJ allows it (after a virama, RFC 5892 A.1)
            ("<u@\u{0915}\u{094d}\u{200c}\u{0937}.example>", Ok(())),
            ("<مثال\u{200c}@example.org>", Ok(())),
            ("<u@x\u{2028}y.example>", Err(NOT)),
            ("<u@\u{202e}elgoog.example>", Err(NOT)),
            ("<u@a\u{200b}b.example>", Err(NOT)),
            ("<u@ex\u{ad}ample.example>", Err(NOT)),
            ("<u@ｅｘａｍｐｌｅ.org>", Err(NOT)),
            ("<u@a\u{200d}b.example>", Err(NOT)),
            ("<u@\u{5d0}a.example>", Err(NOT)),
            ("<u@xn--ü.example>", Err(NOT)),
            ("<u@ab--ü.example>", Err(NOT)),
            ("<u@☃\u{fe0f}.example>", Err(NOT)),
            (
                "<u@bücher.exa_mple>",
                Err(AddressError::Syntax("invalid character in domain")),
            ),
            ("<u\u{202e}x@example.org>", Err(LOCAL)),
            ("<u\u{2066}x@example.org>", Err(LOCAL)),
            ("<u\u{2028}@example.org>", Err(LOCAL)),
            ("<u\u{85}@example.org>", Err(LOCAL)),
            ("<\"a\u{202e}b\"@example.org>", Err(LOCAL)),
            ("<\"a\u{9f}b\"@example.org>", Err(LOCAL)),
            ("<zw\u{200b}sp@example.org>", Err(LOCAL)),
            ("<@bad\u{202e}.example:u@example.org>", Err(NOT)),
            // ASCII domains keep RFC 5321 syntax, literals unchanged
            ("<u@xn--bcher-kva.example>", Ok(())),
            ("<pelé@[192.0.2.1]>", Ok(())),
            ("<pelé@[IPv6:2001:db8::1]>", Ok(())),
        ];
        for (input, want) in cases {
            let got = Path::parse(input, true).map(|_| ());
            assert_eq!(&got, want, "{input}");
        }
        // what we stored ourselves stays readable
        for stored in ["<u\u{202e}x@example.org>", "<u@x\u{2028}y.example>"] {
            assert!(Path::parse_stored(stored).is_ok(), "{stored}");
        }
        assert_eq!(NOT.enhanced(), Enhanced::new(5, 1, 3));
    }

    #[test]
    fn display_roundtrip() {
        for s in [
            "<@hosta,@hostb:user@final.example>",
            "<\"a b\"@x.y>",
            "<u@[IPv6:2001:db8::1]>",
            "<u@[10.0.0.1]>",
        ] {
            assert_eq!(path(s).unwrap().to_string(), s);
        }
        assert_eq!(ReversePath::parse("<>", false).unwrap().to_string(), "<>");
    }
}
