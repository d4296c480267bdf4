//! Access rules (`--access FILE`): what a client, its names, its sender
//! and its recipients may do, decided at connect, HELO, MAIL and RCPT.
//!
//! Pure: the file's text in, `AccessRules` out, and `evaluate` maps the
//! facts of a stage to a `Verdict`; no I/O here (the reverse name is
//! looked up by the caller, and only when a rule needs it). The rules are
//! read once at start into an `Arc`, so a reload can swap the whole table
//! while sessions keep the one they started with (`Swap`).
//!
//! Format, one rule a line, `#` to the end of a line is a comment:
//!
//! ```text
//! STAGE  MATCH  ACTION [CODE [X.Y.Z] [TEXT...]]
//! ```
//!
//! STAGE is `connect`, `helo`, `mail` or `rcpt`. MATCH is `KIND:PATTERN`,
//! or a bare PATTERN read as the stage's own kind (connect: a client
//! address/CIDR, else a reverse name; helo: the HELO name; mail: the
//! sender; rcpt: the recipient). Kinds: `client:` CIDR, `ptr:` reverse
//! name (`ptr:unknown` = no name), `helo:` name, `from:` sender, `to:`
//! recipient. Name patterns: `host.example` exactly, `*.example` or
//! `.example` any name below. Address patterns: `user@dom` exactly,
//! `user@` that local part anywhere, `@dom` any user at `dom`, `.dom` or
//! `@.dom` any user below `dom`, `<>` the null sender. All comparisons
//! ignore ASCII case. ACTION: `accept` (skip the stage's remaining
//! rules), `reject`, `defer`, `hold` (accept, and queue the message on
//! hold), `continue` (a no-op, for readability). First match wins.

use std::net::IpAddr;

use crate::config::Cidr;
use crate::smtp::{Enhanced, Reply};

/// Where in the dialogue a rule applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    Connect,
    Helo,
    Mail,
    Rcpt,
}

impl Stage {
    fn parse(s: &str) -> Option<Stage> {
        Some(match s.to_ascii_lowercase().as_str() {
            "connect" => Stage::Connect,
            "helo" | "ehlo" => Stage::Helo,
            "mail" => Stage::Mail,
            "rcpt" => Stage::Rcpt,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Stage::Connect => "connect",
            Stage::Helo => "helo",
            Stage::Mail => "mail",
            Stage::Rcpt => "rcpt",
        }
    }

    /// Postfix's wording, for refusals without a text of their own.
    fn what(self) -> &'static str {
        match self {
            Stage::Connect => "Client host rejected",
            Stage::Helo => "Helo command rejected",
            Stage::Mail => "Sender address rejected",
            Stage::Rcpt => "Recipient address rejected",
        }
    }
}

/// A name pattern (reverse name, HELO name).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NamePattern {
    Exact(String),
    /// Any name strictly below this suffix (stored without the dot).
    Below(String),
}

impl NamePattern {
    fn parse(s: &str) -> NamePattern {
        let s = s.to_ascii_lowercase();
        match s.strip_prefix("*.").or_else(|| s.strip_prefix('.')) {
            Some(suffix) => NamePattern::Below(suffix.to_string()),
            None => NamePattern::Exact(s),
        }
    }

    fn matches(&self, name: &str) -> bool {
        let name = name.trim_end_matches('.').to_ascii_lowercase();
        match self {
            NamePattern::Exact(n) => name == *n,
            NamePattern::Below(suffix) => name
                .strip_suffix(suffix.as_str())
                .is_some_and(|head| head.ends_with('.')),
        }
    }
}

/// An address pattern (sender, recipient).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AddrPattern {
    /// `<>`.
    Null,
    Exact(String),
    /// `user@`: the local part at any domain.
    Local(String),
    /// `@dom`.
    Domain(String),
    /// `.dom` / `@.dom`: any domain below.
    Below(String),
}

impl AddrPattern {
    fn parse(s: &str) -> Result<AddrPattern, String> {
        let s = s.to_ascii_lowercase();
        if s == "<>" {
            return Ok(AddrPattern::Null);
        }
        if let Some(d) = s.strip_prefix("@.").or_else(|| s.strip_prefix('.')) {
            return Ok(AddrPattern::Below(d.to_string()));
        }
        if let Some(d) = s.strip_prefix('@') {
            return Ok(AddrPattern::Domain(d.to_string()));
        }
        match s.rsplit_once('@') {
            Some((l, "")) if !l.is_empty() => Ok(AddrPattern::Local(l.to_string())),
            Some((l, d)) if !l.is_empty() && !d.is_empty() => Ok(AddrPattern::Exact(s)),
            _ => Err(format!(
                "{s:?} is not an address pattern (user@dom, user@, @dom, .dom, <>)"
            )),
        }
    }

    /// `addr` is `local@domain` as received, or `None` for the null path.
    fn matches(&self, addr: Option<&str>) -> bool {
        let Some(addr) = addr else {
            return *self == AddrPattern::Null;
        };
        let addr = addr.to_ascii_lowercase();
        let (local, domain) = addr.rsplit_once('@').unwrap_or((addr.as_str(), ""));
        match self {
            AddrPattern::Null => false,
            AddrPattern::Exact(a) => addr == *a,
            AddrPattern::Local(l) => local == l,
            AddrPattern::Domain(d) => domain == d,
            AddrPattern::Below(d) => domain
                .strip_suffix(d.as_str())
                .is_some_and(|head| head.ends_with('.')),
        }
    }
}

/// What a rule looks at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Key {
    Client(Cidr),
    /// `None`: the client has no reverse name (`ptr:unknown`).
    Ptr(Option<NamePattern>),
    Helo(NamePattern),
    From(AddrPattern),
    To(AddrPattern),
}

/// What a matching rule does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    Accept,
    Reject(Option<Reply>),
    Defer(Option<Reply>),
    Hold,
    Continue,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    pub stage: Stage,
    pub key: Key,
    pub action: Action,
    /// Line number in the file, for logs.
    pub line: usize,
    /// The rule as written, for logs.
    pub text: String,
}

/// The facts known at a stage; later stages know the earlier ones.
#[derive(Clone, Copy)]
pub struct Facts<'a> {
    pub client: IpAddr,
    /// The reverse name: asked for only when a rule needs it.
    pub ptr: &'a dyn Fn() -> Option<String>,
    pub helo: Option<&'a str>,
    /// `Some(None)` is the null sender.
    pub from: Option<Option<&'a str>>,
    pub to: Option<&'a str>,
}

/// The outcome of a stage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// No rule matched, or `continue`.
    Pass,
    /// An `accept` rule: the stage's remaining checks are skipped.
    Accept {
        rule: String,
    },
    Hold {
        rule: String,
    },
    /// Refused with this reply.
    Refuse {
        rule: String,
        reply: Reply,
    },
}

#[derive(Debug, Default)]
pub struct AccessRules {
    rules: Vec<Rule>,
}

impl AccessRules {
    pub fn parse(text: &str) -> Result<AccessRules, String> {
        let mut rules = Vec::new();
        for (i, raw) in text.lines().enumerate() {
            let line = i + 1;
            let body = raw.split('#').next().unwrap_or("").trim();
            if body.is_empty() {
                continue;
            }
            let rule = parse_rule(body, line).map_err(|e| format!("line {line}: {e}"))?;
            rules.push(rule);
        }
        Ok(AccessRules { rules })
    }

    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// Whether any rule looks at the reverse name (then a resolver is
    /// set up for it).
    pub fn needs_ptr(&self) -> bool {
        self.rules.iter().any(|r| matches!(r.key, Key::Ptr(_)))
    }

    /// The first matching rule of `stage` decides.
    pub fn evaluate(&self, stage: Stage, facts: &Facts) -> Verdict {
        let mut ptr: Option<Option<String>> = None;
        for rule in self.rules.iter().filter(|r| r.stage == stage) {
            let hit = match &rule.key {
                Key::Client(net) => net.contains(facts.client),
                Key::Ptr(pat) => {
                    let name = ptr.get_or_insert_with(|| (facts.ptr)());
                    match (pat, name) {
                        (None, None) => true,
                        (Some(p), Some(n)) => p.matches(n),
                        _ => false,
                    }
                }
                Key::Helo(p) => facts.helo.is_some_and(|h| p.matches(h)),
                Key::From(p) => facts.from.is_some_and(|f| p.matches(f)),
                Key::To(p) => facts.to.is_some_and(|t| p.matches(Some(t))),
            };
            if !hit {
                continue;
            }
            let label = format!("line {}: {}", rule.line, rule.text);
            return match &rule.action {
                Action::Continue => Verdict::Pass,
                Action::Accept => Verdict::Accept { rule: label },
                Action::Hold => Verdict::Hold { rule: label },
                Action::Reject(r) => Verdict::Refuse {
                    rule: label,
                    reply: r.clone().unwrap_or_else(|| default_reject(stage)),
                },
                Action::Defer(r) => Verdict::Refuse {
                    rule: label,
                    reply: r.clone().unwrap_or_else(|| default_defer(stage)),
                },
            };
        }
        Verdict::Pass
    }
}

/// RFC 5321 §3.1: a server refusing a connection may answer 554 instead
/// of 220; elsewhere 550 (§4.2.2); RFC 3463 X.7.1: not authorised.
fn default_reject(stage: Stage) -> Reply {
    let code = if stage == Stage::Connect { 554 } else { 550 };
    Reply::new(
        code,
        Enhanced::new(5, 7, 1),
        format!("{}: Access denied", stage.what()),
    )
}

/// RFC 5321 §3.1: the only temporary greeting is 421 (and the session
/// closes); elsewhere 450.
fn default_defer(stage: Stage) -> Reply {
    let code = if stage == Stage::Connect { 421 } else { 450 };
    Reply::new(
        code,
        Enhanced::new(4, 7, 1),
        format!("{}: Try again later", stage.what()),
    )
}

fn parse_rule(body: &str, line: usize) -> Result<Rule, String> {
    let mut words = body.split_whitespace();
    let (Some(stage), Some(pattern), Some(action)) = (words.next(), words.next(), words.next())
    else {
        return Err("expected STAGE MATCH ACTION [CODE [X.Y.Z] TEXT]".into());
    };
    let stage = Stage::parse(stage)
        .ok_or_else(|| format!("unknown stage {stage:?} (connect, helo, mail, rcpt)"))?;
    let key = parse_key(stage, pattern)?;
    let rest: Vec<&str> = words.collect();
    let action = match action.to_ascii_lowercase().as_str() {
        "accept" | "ok" => Action::Accept,
        "continue" | "dunno" => Action::Continue,
        "hold" => Action::Hold,
        "reject" => Action::Reject(parse_reply(stage, &rest, 5)?),
        "defer" => Action::Defer(parse_reply(stage, &rest, 4)?),
        other => {
            return Err(format!(
                "unknown action {other:?} (accept, reject, defer, hold, continue)"
            ))
        }
    };
    if !rest.is_empty() && !matches!(action, Action::Reject(_) | Action::Defer(_)) {
        return Err("only reject and defer take a code and text".into());
    }
    if stage == Stage::Connect {
        if let Action::Defer(Some(r)) = &action {
            if r.code().value() != 421 {
                return Err("a connect defer must be 421 (RFC 5321 §3.1)".into());
            }
        }
    }
    Ok(Rule {
        stage,
        key,
        action,
        line,
        text: body.split_whitespace().collect::<Vec<_>>().join(" "),
    })
}

fn parse_key(stage: Stage, pattern: &str) -> Result<Key, String> {
    let (kind, pat) = match pattern.split_once(':') {
        Some((k, p)) if ["client", "ptr", "helo", "from", "to"].contains(&k) => (k, p),
        // a bare pattern is the stage's own kind (an IPv6 CIDR has ':'s)
        _ => (
            match stage {
                Stage::Connect if Cidr::parse(pattern).is_ok() => "client",
                Stage::Connect => "ptr",
                Stage::Helo => "helo",
                Stage::Mail => "from",
                Stage::Rcpt => "to",
            },
            pattern,
        ),
    };
    if pat.is_empty() {
        return Err(format!("empty pattern in {pattern:?}"));
    }
    let later = |needed: Stage, k: Key| {
        let order = |s: Stage| s as u8;
        if order(stage) < order(needed) {
            Err(format!(
                "{kind}: is not known yet at {} (from {} on)",
                stage.name(),
                needed.name()
            ))
        } else {
            Ok(k)
        }
    };
    match kind {
        "client" => Ok(Key::Client(Cidr::parse(pat)?)),
        "ptr" if pat.eq_ignore_ascii_case("unknown") => Ok(Key::Ptr(None)),
        "ptr" => Ok(Key::Ptr(Some(NamePattern::parse(pat)))),
        "helo" => later(Stage::Helo, Key::Helo(NamePattern::parse(pat))),
        "from" => later(Stage::Mail, Key::From(AddrPattern::parse(pat)?)),
        _ => later(Stage::Rcpt, Key::To(AddrPattern::parse(pat)?)),
    }
}

/// `[CODE [X.Y.Z] [TEXT...]]`; the code's class must be `class` (5 for
/// reject, 4 for defer), the enhanced code's class the same.
fn parse_reply(stage: Stage, rest: &[&str], class: u16) -> Result<Option<Reply>, String> {
    let Some(first) = rest.first() else {
        return Ok(None);
    };
    let code: u16 = first
        .parse()
        .ok()
        .filter(|c| (100..600).contains(c))
        .ok_or_else(|| format!("{first:?} is not a reply code"))?;
    if code / 100 != class {
        return Err(format!("{code} is not a {class}xx code"));
    }
    let (enhanced, text_from) = match rest.get(1).and_then(|e| Enhanced::parse(e)) {
        Some(e) => (e, 2),
        None => (Enhanced::new(class as u8, 7, 1), 1),
    };
    if u16::from(enhanced.class) != class {
        return Err(format!("{enhanced} does not match {code}"));
    }
    let text = rest[text_from..].join(" ");
    let text = if text.is_empty() {
        format!("{}: Access denied", stage.what())
    } else {
        text
    };
    Ok(Some(Reply::new(code, enhanced, text)))
}

/// A table shared by sessions and replaced whole (`swap.rs`).
pub use crate::swap::Swap;

#[cfg(test)]
mod tests {
    use super::*;

    fn facts<'a>(
        ptr: &'a dyn Fn() -> Option<String>,
        helo: Option<&'a str>,
        from: Option<Option<&'a str>>,
        to: Option<&'a str>,
    ) -> Facts<'a> {
        Facts {
            client: "192.0.2.7".parse().unwrap(),
            ptr,
            helo,
            from,
            to,
        }
    }

    fn reply_of(v: Verdict) -> String {
        match v {
            Verdict::Refuse { reply, .. } => reply.to_string(),
            other => format!("{other:?}"),
        }
    }

    #[test]
    fn table_of_rules() {
        let rules = AccessRules::parse(
            "# stage match action\n\
             connect 198.51.100.0/24 reject 554 5.7.1 go away\n\
             connect ptr:unknown defer\n\
             helo *.dynamic.example defer\n\
             helo bad.example reject 550 5.7.1 no thanks  # trailing comment\n\
             mail <> continue\n\
             mail @spam.example reject\n\
             mail .spam.example reject 553 5.7.1 sub spam\n\
             rcpt abuse@example.org accept\n\
             rcpt @example.org hold\n\
             rcpt postmaster@ reject\n",
        )
        .unwrap();
        let none = || None;
        let named = || Some("mail.example".to_string());
        let f = facts(&named, None, None, None);
        assert_eq!(rules.evaluate(Stage::Connect, &f), Verdict::Pass);
        let f = facts(&none, None, None, None);
        assert_eq!(
            reply_of(rules.evaluate(Stage::Connect, &f)),
            "421 4.7.1 Client host rejected: Try again later"
        );
        let mut f = facts(&named, Some("a.b.dynamic.example"), None, None);
        assert_eq!(
            reply_of(rules.evaluate(Stage::Helo, &f)),
            "450 4.7.1 Helo command rejected: Try again later"
        );
        f.helo = Some("dynamic.example");
        assert_eq!(rules.evaluate(Stage::Helo, &f), Verdict::Pass);
        f.helo = Some("BAD.example.");
        assert_eq!(
            reply_of(rules.evaluate(Stage::Helo, &f)),
            "550 5.7.1 no thanks"
        );
        f.from = Some(Some("x@Spam.Example"));
        assert_eq!(
            reply_of(rules.evaluate(Stage::Mail, &f)),
            "550 5.7.1 Sender address rejected: Access denied"
        );
        f.from = Some(Some("x@a.spam.example"));
        assert_eq!(
            reply_of(rules.evaluate(Stage::Mail, &f)),
            "553 5.7.1 sub spam"
        );
        f.from = Some(None);
        assert_eq!(rules.evaluate(Stage::Mail, &f), Verdict::Pass);
        f.to = Some("abuse@example.org");
        assert!(matches!(
            rules.evaluate(Stage::Rcpt, &f),
            Verdict::Accept { .. }
        ));
        f.to = Some("else@example.org");
        assert!(matches!(
            rules.evaluate(Stage::Rcpt, &f),
            Verdict::Hold { rule } if rule.starts_with("line 10:")
        ));
        f.to = Some("postmaster@other.example");
        assert_eq!(
            reply_of(rules.evaluate(Stage::Rcpt, &f)),
            "550 5.7.1 Recipient address rejected: Access denied"
        );
        let client = facts(&none, None, None, None);
        let mut c = client;
        c.client = "198.51.100.9".parse().unwrap();
        assert_eq!(
            reply_of(rules.evaluate(Stage::Connect, &c)),
            "554 5.7.1 go away",
            "first match wins over ptr:unknown"
        );
    }

    #[test]
    fn ptr_is_looked_up_only_when_needed() {
        let rules =
            AccessRules::parse("connect 10.0.0.0/8 reject\nhelo x.example reject\n").unwrap();
        let asked = std::cell::Cell::new(0);
        let ptr = || {
            asked.set(asked.get() + 1);
            None
        };
        let f = facts(&ptr, Some("y.example"), None, None);
        rules.evaluate(Stage::Connect, &f);
        rules.evaluate(Stage::Helo, &f);
        assert_eq!(asked.get(), 0);
        assert!(!rules.needs_ptr());
    }

    #[test]
    fn ipv6_networks_bare_and_with_a_kind() {
        let rules =
            AccessRules::parse("connect 2001:db8::/32 reject\nmail client:2001:db8::7 defer\n")
                .unwrap();
        let none = || None;
        let mut f = facts(&none, Some("h"), Some(None), None);
        f.client = "2001:db8:1::1".parse().unwrap();
        assert!(matches!(
            rules.evaluate(Stage::Connect, &f),
            Verdict::Refuse { .. }
        ));
        assert_eq!(rules.evaluate(Stage::Mail, &f), Verdict::Pass);
        f.client = "2001:db8::7".parse().unwrap();
        assert_eq!(
            reply_of(rules.evaluate(Stage::Mail, &f)),
            "450 4.7.1 Sender address rejected: Try again later"
        );
    }

    #[test]
    fn bad_lines() {
        for (text, why) in [
            ("connect", "expected"),
            ("greet 1.2.3.4 reject", "unknown stage"),
            ("connect 1.2.3.4 smile", "unknown action"),
            ("mail a@b reject 450", "not a 5xx"),
            ("mail a@b defer 550", "not a 4xx"),
            ("mail a@b reject 550 4.7.1 x", "does not match"),
            ("connect 1.2.3.4 defer 450", "must be 421"),
            ("connect helo:x.example reject", "not known yet"),
            ("mail to:a@b reject", "not known yet"),
            ("rcpt nodomain reject", "not an address pattern"),
            ("rcpt a@b accept 250 ok", "only reject and defer"),
            ("connect client:300.1.1.1 reject", "bad network"),
        ] {
            let e = AccessRules::parse(text).unwrap_err();
            assert!(e.contains(why) && e.starts_with("line 1:"), "{text}: {e}");
        }
    }

    #[test]
    fn swap_replaces_whole_tables() {
        let s = Swap::new(AccessRules::parse("rcpt a@b reject").unwrap());
        let old = s.load();
        s.store(AccessRules::default());
        assert!(!old.is_empty());
        assert!(s.load().is_empty());
    }
}
