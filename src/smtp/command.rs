//! One command line → `Command`, or the `Reply` that rejects it.
//!
//! No I/O and no session state here: whether a command is allowed *now* is
//! the session's business; this module only answers "what did the client
//! say". Verbs are case-insensitive (RFC 5321 §2.4).

use super::address::{AddressError, Domain, Path, ReversePath};
use super::reply::Reply;

/// RFC 1652 / RFC 6152 `BODY=` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Body {
    SevenBit,
    EightBitMime,
}

impl Body {
    pub fn as_str(self) -> &'static str {
        match self {
            Body::SevenBit => "7BIT",
            Body::EightBitMime => "8BITMIME",
        }
    }
}

/// RFC 3461 §4.3 `RET=`: what a failure DSN returns of the message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ret {
    Full,
    Hdrs,
}

impl Ret {
    pub fn as_str(self) -> &'static str {
        match self {
            Ret::Full => "FULL",
            Ret::Hdrs => "HDRS",
        }
    }

    pub fn parse(s: &str) -> Option<Ret> {
        if s.eq_ignore_ascii_case("FULL") {
            Some(Ret::Full)
        } else if s.eq_ignore_ascii_case("HDRS") {
            Some(Ret::Hdrs)
        } else {
            None
        }
    }
}

/// RFC 3461 §4.1 `NOTIFY=`: which DSNs the sender wants for a recipient;
/// all false is `NEVER`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Notify {
    pub success: bool,
    pub failure: bool,
    pub delay: bool,
}

impl Notify {
    pub const NEVER: Notify = Notify {
        success: false,
        failure: false,
        delay: false,
    };

    /// `NEVER`, or a comma list of `SUCCESS`, `FAILURE`, `DELAY`.
    pub fn parse(s: &str) -> Option<Notify> {
        if s.eq_ignore_ascii_case("NEVER") {
            return Some(Notify::NEVER);
        }
        let mut n = Notify::default();
        for word in s.split(',') {
            let flag = match word.to_ascii_uppercase().as_str() {
                "SUCCESS" => &mut n.success,
                "FAILURE" => &mut n.failure,
                "DELAY" => &mut n.delay,
                _ => return None,
            };
            if *flag {
                return None;
            }
            *flag = true;
        }
        Some(n)
    }
}

impl std::fmt::Display for Notify {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let words: Vec<&str> = [
            (self.success, "SUCCESS"),
            (self.failure, "FAILURE"),
            (self.delay, "DELAY"),
        ]
        .iter()
        .filter(|(on, _)| *on)
        .map(|(_, w)| *w)
        .collect();
        if words.is_empty() {
            f.write_str("NEVER")
        } else {
            f.write_str(&words.join(","))
        }
    }
}

/// RFC 3461 §4 per-recipient parameters, kept as received: `orcpt` is
/// `addr-type;xtext`, still xtext-encoded, so it can be passed on as is.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RcptDsn {
    pub notify: Option<Notify>,
    pub orcpt: Option<String>,
}

impl RcptDsn {
    pub fn is_empty(&self) -> bool {
        self.notify.is_none() && self.orcpt.is_none()
    }
}

/// RFC 3461 §4 per-message parameters; `envid` is still xtext-encoded.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MailDsn {
    pub ret: Option<Ret>,
    pub envid: Option<String>,
}

/// RFC 3461 §4: xtext = *( xchar / hexchar ), xchar = "!".."~" except
/// "+" and "=", hexchar = "+" 2 uppercase hex digits.
pub fn is_xtext(s: &str) -> bool {
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => {
                let hex = |c: u8| c.is_ascii_digit() || (b'A'..=b'F').contains(&c);
                match (b.get(i + 1), b.get(i + 2)) {
                    (Some(&h1), Some(&h2)) if hex(h1) && hex(h2) => i += 3,
                    _ => return false,
                }
            }
            b'=' => return false,
            33..=126 => i += 1,
            _ => return false,
        }
    }
    true
}

/// Decodes xtext (for the text of a DSN); `None` if it is not xtext.
pub fn xtext_decode(s: &str) -> Option<String> {
    if !is_xtext(s) {
        return None;
    }
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'+' {
            let v = u8::from_str_radix(&s[i + 1..i + 3], 16).ok()?;
            out.push(v);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    Some(String::from_utf8_lossy(&out).into_owned())
}

/// Parameters of MAIL FROM that we implement (the EHLO keywords we offer).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MailParams {
    /// RFC 1870 §4: the client's estimate of the message size.
    pub size: Option<u64>,
    pub body: Option<Body>,
    /// RFC 6531 §3.4.
    pub smtputf8: bool,
    /// RFC 3461 §4.3, §4.4: RET and ENVID.
    pub dsn: MailDsn,
    /// RFC 8689 §3: REQUIRETLS (no value).
    pub requiretls: bool,
}

/// The recipient of RCPT TO.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RcptTarget {
    Path(Path),
    /// RFC 5321 §4.1.1.3: `<Postmaster>` without a domain.
    Postmaster,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Ehlo(String),
    Helo(String),
    Mail {
        from: ReversePath,
        params: MailParams,
    },
    Rcpt(RcptTarget),
    /// RCPT with RFC 3461 parameters (NOTIFY, ORCPT); without any it is
    /// `Rcpt`.
    RcptDsn(RcptTarget, RcptDsn),
    Data,
    Rset,
    Noop,
    Quit,
    Vrfy,
    Expn,
    Help,
    /// RFC 3207 §4: STARTTLS, no parameters.
    StartTls,
    /// RFC 3030 §2: `BDAT chunk-size [LAST]`.
    Bdat {
        size: u64,
        last: bool,
    },
    /// RFC 4954 §4: `AUTH mechanism [initial-response]`.
    Auth {
        mechanism: String,
        initial: Option<String>,
    },
    /// Known commands of extensions we do not offer (
    /// ETRN, TURN): answered 502, not 500, as Postfix does.
    NotImplemented(String),
}

const MAIL_HINT: &str =
    "MAIL FROM:<reverse-path> [SIZE=n] [BODY=7BIT|8BITMIME] [SMTPUTF8] [REQUIRETLS]";
const RCPT_HINT: &str = "RCPT TO:<forward-path>";
const BDAT_HINT: &str = "BDAT chunk-size [LAST]";

/// Parses one command line, CRLF already removed.
pub fn parse(line: &[u8]) -> Result<Command, Reply> {
    // RFC 5321 §2.3.8 / §4.1.1: commands are text; a NUL or other control
    // character has no business in one (RFC 5321 §4.1.1 ASCII). UTF-8 is
    // allowed for SMTPUTF8 arguments.
    let line =
        std::str::from_utf8(line).map_err(|_| Reply::syntax("command is not valid UTF-8 text"))?;
    if line.chars().any(|c| c.is_control() && c != '\t') {
        return Err(Reply::syntax(
            "control characters are not allowed in commands",
        ));
    }
    let (verb, args) = match line.find(' ') {
        Some(i) => (&line[..i], &line[i + 1..]),
        None => (line, ""),
    };
    let verb = verb.to_ascii_uppercase();
    let no_args = |cmd: Command, hint: &str| {
        if args.trim().is_empty() {
            Ok(cmd)
        } else {
            Err(Reply::syntax(hint))
        }
    };
    match verb.as_str() {
        "EHLO" | "HELO" => {
            let name = args.trim();
            // RFC 5321 §4.1.1.1: EHLO takes a domain or address literal.
            // Many real clients send odd names; accept anything that is one
            // token of printable text, reject empty or several words.
            if name.is_empty() || name.contains(' ') || name.contains('\t') {
                return Err(Reply::syntax(&format!("{verb} hostname")));
            }
            Ok(if verb == "EHLO" {
                Command::Ehlo(name.to_string())
            } else {
                Command::Helo(name.to_string())
            })
        }
        "MAIL" => parse_mail(args),
        "RCPT" => parse_rcpt(args),
        "DATA" => no_args(Command::Data, "DATA (no arguments)"),
        "RSET" => no_args(Command::Rset, "RSET (no arguments)"),
        // RFC 5321 §4.1.1.9: NOOP's parameter, if any, is ignored.
        "NOOP" => Ok(Command::Noop),
        "QUIT" => no_args(Command::Quit, "QUIT (no arguments)"),
        "VRFY" => {
            if args.trim().is_empty() {
                Err(Reply::syntax("VRFY <string>"))
            } else {
                Ok(Command::Vrfy)
            }
        }
        "EXPN" => Ok(Command::Expn),
        "HELP" => Ok(Command::Help),
        // RFC 3207 §4: "501 Syntax error (no parameters allowed)"
        "STARTTLS" => no_args(Command::StartTls, "STARTTLS (no parameters allowed)"),
        "AUTH" => {
            let mut words = args.split(' ').filter(|w| !w.is_empty());
            let (Some(mechanism), initial, None) = (words.next(), words.next(), words.next())
            else {
                return Err(Reply::syntax("AUTH mechanism [initial-response]"));
            };
            Ok(Command::Auth {
                mechanism: mechanism.to_string(),
                initial: initial.map(str::to_string),
            })
        }
        "BDAT" => parse_bdat(args),
        "ETRN" | "TURN" | "ATRN" | "SEND" | "SOML" | "SAML" => Ok(Command::NotImplemented(verb)),
        _ => Err(Reply::unknown_command()),
    }
}

/// `keyword:` prefix, case-insensitive, with optional spaces after the
/// colon (RFC 5321 says none, but real clients send one; Postfix accepts).
fn strip_keyword<'a>(args: &'a str, keyword: &str) -> Option<&'a str> {
    let head = args.get(..keyword.len())?;
    if head.eq_ignore_ascii_case(keyword) {
        Some(args[keyword.len()..].trim_start_matches(' '))
    } else {
        None
    }
}

/// Splits `<...> rest` at the `>` that closes the path, minding quoted
/// strings, which may contain `>` and spaces.
fn split_path(s: &str) -> Option<(&str, &str)> {
    if !s.starts_with('<') {
        return None;
    }
    let mut quoted = false;
    let mut escaped = false;
    for (i, c) in s.char_indices() {
        if escaped {
            escaped = false;
            continue;
        }
        match c {
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            '>' if !quoted => return Some((&s[..=i], &s[i + 1..])),
            _ => {}
        }
    }
    None
}

fn address_reply(e: AddressError) -> Reply {
    match e {
        AddressError::NeedsSmtpUtf8 => Reply::utf8_without_smtputf8(),
        AddressError::NotAllowed(why) => Reply::address_not_allowed(why),
        other => Reply::bad_address(other.enhanced(), &other.to_string()),
    }
}

/// Splits ESMTP parameters, `keyword[=value]` separated by spaces
/// (RFC 5321 §4.1.2 Mail-parameters).
fn params(rest: &str) -> Result<Vec<(String, Option<&str>)>, Reply> {
    if !rest.is_empty() && !rest.starts_with(' ') {
        return Err(Reply::syntax("expected a space after the path"));
    }
    let mut out = Vec::new();
    for p in rest.split(' ').filter(|p| !p.is_empty()) {
        let (k, v) = match p.split_once('=') {
            Some((k, v)) => (k, Some(v)),
            None => (p, None),
        };
        // esmtp-keyword = (ALPHA / DIGIT) *(ALPHA / DIGIT / "-")
        let ok = k.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
            && k.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
        if !ok || v.is_some_and(|v| v.is_empty()) {
            return Err(Reply::syntax("bad ESMTP parameter"));
        }
        out.push((k.to_ascii_uppercase(), v));
    }
    Ok(out)
}

fn parse_mail(args: &str) -> Result<Command, Reply> {
    let rest = strip_keyword(args, "FROM:").ok_or_else(|| Reply::syntax(MAIL_HINT))?;
    let (path, rest) = split_path(rest).ok_or_else(|| Reply::syntax(MAIL_HINT))?;
    let mut mp = MailParams::default();
    let mut seen = Vec::new();
    for (k, v) in params(rest)? {
        if seen.contains(&k) {
            return Err(Reply::syntax(&format!("duplicate parameter {k}")));
        }
        seen.push(k.clone());
        match (k.as_str(), v) {
            // RFC 1870 §3: size-value = 1*20DIGIT
            ("SIZE", Some(v)) if v.len() <= 20 && v.bytes().all(|b| b.is_ascii_digit()) => {
                mp.size = Some(v.parse().unwrap_or(u64::MAX));
            }
            ("SIZE", _) => return Err(Reply::syntax("SIZE=<number of octets>")),
            ("BODY", Some(v)) if v.eq_ignore_ascii_case("7BIT") => mp.body = Some(Body::SevenBit),
            ("BODY", Some(v)) if v.eq_ignore_ascii_case("8BITMIME") => {
                mp.body = Some(Body::EightBitMime)
            }
            // RFC 6152 §3: BODY=BINARYMIME needs CHUNKING, which we lack.
            ("BODY", _) => return Err(Reply::syntax("BODY=7BIT or BODY=8BITMIME")),
            ("SMTPUTF8", None) => mp.smtputf8 = true,
            ("SMTPUTF8", Some(_)) => return Err(Reply::syntax("SMTPUTF8 takes no value")),
            // RFC 8689 §3: `REQUIRETLS` takes no value; whether the
            // session is under TLS is the session's check
            ("REQUIRETLS", None) => mp.requiretls = true,
            ("REQUIRETLS", Some(_)) => return Err(Reply::syntax("REQUIRETLS takes no value")),
            // RFC 3461 §4.3
            ("RET", Some(v)) => {
                mp.dsn.ret =
                    Some(Ret::parse(v).ok_or_else(|| Reply::syntax("RET=FULL or RET=HDRS"))?)
            }
            // RFC 3461 §4.4: ENVID=xtext, at most 100 characters
            ("ENVID", Some(v)) if v.len() <= 100 && is_xtext(v) => {
                mp.dsn.envid = Some(v.to_string())
            }
            ("RET" | "ENVID", _) => {
                return Err(Reply::syntax(
                    "RET=FULL|HDRS ENVID=xtext (at most 100 characters)",
                ))
            }
            // RFC 4954 §5: the submitter's identity as the client knows it;
            // accepted and not relied on (we trust our own AUTH only)
            ("AUTH", Some(_)) => {}
            (k, _) => return Err(Reply::unsupported_parameter(k)),
        }
    }
    let from = ReversePath::parse(path, mp.smtputf8).map_err(address_reply)?;
    Ok(Command::Mail { from, params: mp })
}

/// RFC 3030 §2: bdat-cmd = "BDAT" SP chunk-size [ SP end-marker ] CR LF,
/// chunk-size = 1*DIGIT, end-marker = "LAST".
pub fn parse_bdat(args: &str) -> Result<Command, Reply> {
    let bad = || Reply::syntax(BDAT_HINT);
    let mut words = args.split(' ');
    let size = words.next().ok_or_else(bad)?;
    if size.is_empty() || size.len() > 19 || !size.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    let size: u64 = size.parse().map_err(|_| bad())?;
    let last = match words.next() {
        None => false,
        Some(w) if w.eq_ignore_ascii_case("LAST") => true,
        Some(_) => return Err(bad()),
    };
    if words.next().is_some() {
        return Err(bad());
    }
    Ok(Command::Bdat { size, last })
}

fn parse_rcpt(args: &str) -> Result<Command, Reply> {
    let rest = strip_keyword(args, "TO:").ok_or_else(|| Reply::syntax(RCPT_HINT))?;
    let (path, rest) = split_path(rest).ok_or_else(|| Reply::syntax(RCPT_HINT))?;
    let mut dsn = RcptDsn::default();
    let mut seen = Vec::new();
    for (k, v) in params(rest)? {
        if seen.contains(&k) {
            return Err(Reply::syntax(&format!("duplicate parameter {k}")));
        }
        seen.push(k.clone());
        match (k.as_str(), v) {
            // RFC 3461 §4.1: NEVER alone, or SUCCESS/FAILURE/DELAY
            ("NOTIFY", Some(v)) => {
                dsn.notify =
                    Some(Notify::parse(v).ok_or_else(|| {
                        Reply::syntax("NOTIFY=NEVER or NOTIFY=SUCCESS,FAILURE,DELAY")
                    })?)
            }
            // RFC 3461 §4.2: ORCPT=addr-type;xtext, at most 500 characters
            ("ORCPT", Some(v)) if v.len() <= 500 && valid_orcpt(v) => {
                dsn.orcpt = Some(v.to_string())
            }
            ("NOTIFY" | "ORCPT", _) => {
                return Err(Reply::syntax(
                    "ORCPT=addr-type;xtext (at most 500 characters)",
                ))
            }
            (k, _) => return Err(Reply::unsupported_parameter(k)),
        }
    }
    let target = if path.eq_ignore_ascii_case("<postmaster>") {
        RcptTarget::Postmaster
    } else {
        // Whether UTF-8 is allowed depends on the transaction's MAIL; parse
        // permissively here and let the session check `is_utf8()` against it.
        RcptTarget::Path(Path::parse(path, true).map_err(address_reply)?)
    };
    if dsn.is_empty() {
        Ok(Command::Rcpt(target))
    } else {
        Ok(Command::RcptDsn(target, dsn))
    }
}

/// `addr-type ";" xtext`, addr-type an atom (RFC 3461 §4.2; the address
/// itself is not held to the addr-type's syntax).
fn valid_orcpt(v: &str) -> bool {
    let Some((kind, addr)) = v.split_once(';') else {
        return false;
    };
    !kind.is_empty()
        && kind.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        && !addr.is_empty()
        && is_xtext(addr)
}

/// A HELO/EHLO argument as a domain when it is one (for logs and Received).
pub fn helo_domain(name: &str) -> Option<Domain> {
    Domain::parse(name, true).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xtext_and_notify() {
        assert!(is_xtext("abc+2Bdef"));
        assert!(!is_xtext("a b") && !is_xtext("a=b") && !is_xtext("+2") && !is_xtext("+2b"));
        assert_eq!(
            xtext_decode("u+2Bx@d.example").as_deref(),
            Some("u+x@d.example")
        );
        assert_eq!(
            Notify::parse("failure,Delay").unwrap().to_string(),
            "FAILURE,DELAY"
        );
        assert_eq!(Notify::parse("NEVER"), Some(Notify::NEVER));
        assert_eq!(Notify::NEVER.to_string(), "NEVER");
        let Ok(Command::RcptDsn(RcptTarget::Path(p), dsn)) =
            parse(b"RCPT TO:<c@d.example> NOTIFY=SUCCESS ORCPT=rfc822;c+2Bx@d.example")
        else {
            panic!("parse failed")
        };
        assert_eq!(p.to_string(), "<c@d.example>");
        assert!(dsn.notify.unwrap().success);
        assert_eq!(dsn.orcpt.as_deref(), Some("rfc822;c+2Bx@d.example"));
    }

    fn code(line: &str) -> u16 {
        match parse(line.as_bytes()) {
            Ok(_) => 0,
            Err(r) => r.code().value(),
        }
    }

    #[test]
    fn table() {
        // input → 0 for Ok, else the reply code
        let cases: &[(&str, u16)] = &[
            ("EHLO client.example", 0),
            ("ehlo client.example", 0),
            ("EHLO [127.0.0.1]", 0),
            ("EHLO", 501),
            ("EHLO a b", 501),
            ("HELO x", 0),
            ("MAIL FROM:<a@b.example>", 0),
            ("mail from:<a@b.example>", 0),
            ("MAIL FROM: <a@b.example>", 0),
            ("MAIL FROM:<>", 0),
            ("MAIL FROM:<a@b.example> SIZE=1000", 0),
            ("MAIL FROM:<a@b.example> SIZE=1000 BODY=8BITMIME", 0),
            ("MAIL FROM:<a@b.example> BODY=7bit", 0),
            ("MAIL FROM:<a@b.example> BODY=BINARYMIME", 501),
            ("MAIL FROM:<a@b.example> SIZE=abc", 501),
            ("MAIL FROM:<a@b.example> SIZE=1 SIZE=2", 501),
            ("MAIL FROM:<a@b.example> FOO=bar", 555),
            ("MAIL FROM:<a@b.example> RET=HDRS", 0),
            ("MAIL FROM:<a@b.example> RET=full ENVID=abc+2Bdef", 0),
            ("MAIL FROM:<a@b.example> RET=SOME", 501),
            ("MAIL FROM:<a@b.example> ENVID=a=b", 501),
            ("MAIL FROM:<a@b.example> ENVID=a+2", 501),
            (
                "RCPT TO:<c@d.example> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;c@d.example",
                0,
            ),
            ("RCPT TO:<c@d.example> NOTIFY=NEVER,SUCCESS", 501),
            ("RCPT TO:<c@d.example> NOTIFY=DELAY,DELAY", 501),
            ("RCPT TO:<c@d.example> ORCPT=c@d.example", 501),
            ("RCPT TO:<c@d.example> ORCPT=rfc822;c=d", 501),
            ("RCPT TO:<c@d.example> FOO=1", 555),
            ("MAIL FROM:<üser@b.example>", 553),
            ("MAIL FROM:<üser@b.example> SMTPUTF8", 0),
            ("MAIL FROM:a@b.example", 501),
            ("MAIL TO:<a@b.example>", 501),
            ("MAIL", 501),
            ("MAIL FROM:<a@b.example>x", 501),
            ("MAIL FROM:<\"a > b\"@c.example>", 0),
            ("RCPT TO:<c@d.example>", 0),
            ("RCPT TO:<Postmaster>", 0),
            ("RCPT TO:<@a.example,@b.example:c@d.example>", 0),
            ("RCPT TO:<c@d.example> NOTIFY=NEVER", 0),
            ("RCPT TO:<c@@d.example>", 501),
            ("RCPT TO:c@d.example", 501),
            ("RCPT FROM:<c@d.example>", 501),
            ("DATA", 0),
            ("DATA x", 501),
            ("RSET", 0),
            ("NOOP", 0),
            ("NOOP anything", 0),
            ("QUIT", 0),
            ("VRFY someone", 0),
            ("VRFY", 501),
            ("EXPN list", 0),
            ("HELP", 0),
            ("STARTTLS", 0),
            ("STARTTLS now", 501),
            ("BDAT 100", 0),
            ("BDAT 0 LAST", 0),
            ("bdat 5 last", 0),
            ("BDAT", 501),
            ("BDAT x", 501),
            ("BDAT -1", 501),
            ("BDAT 5 LAST x", 501),
            ("BDAT 5 FIRST", 501),
            ("BDAT 99999999999999999999", 501),
            ("AUTH PLAIN", 0),
            ("AUTH PLAIN AHVAAHA=", 0),
            ("AUTH", 501),
            ("AUTH PLAIN a b", 501),
            ("MAIL FROM:<a@b.example> AUTH=<>", 0),
            ("FOO", 500),
            ("", 500),
            ("NO\0OP", 501),
            ("MAIL FROM:<a\x01@b.example>", 501),
        ];
        for (line, want) in cases {
            assert_eq!(code(line), *want, "{line:?}");
        }
    }

    #[test]
    fn mail_parameters() {
        let Ok(Command::Mail { from, params }) =
            parse(b"MAIL FROM:<a@b.example> SIZE=1234 BODY=8BITMIME SMTPUTF8")
        else {
            panic!("parse failed")
        };
        assert_eq!(from.to_string(), "<a@b.example>");
        assert_eq!(params.size, Some(1234));
        assert_eq!(params.body, Some(Body::EightBitMime));
        assert!(params.smtputf8);
    }

    #[test]
    fn source_route_kept() {
        let Ok(Command::Rcpt(RcptTarget::Path(p))) =
            parse(b"RCPT TO:<@hosta.example,@hostb.example:user@final.example>")
        else {
            panic!("parse failed")
        };
        assert_eq!(p.route().len(), 2);
        assert_eq!(p.mailbox().to_string(), "user@final.example");
    }
}
