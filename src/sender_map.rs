//! `--sender-map`: which envelope senders an authenticated user may use
//! (Postfix's `smtpd_sender_login_maps` with
//! `reject_sender_login_mismatch`, turned around: keyed by user). RFC 6409
//! §6.1 lets a submission server check that the sender is the user's.
//!
//! The file, read once at start (README "Submission for applications"):
//!
//! ```text
//! # user: pattern, pattern, ...
//! alice: alice@example.org, a.smith@example.org
//! app@example.org: @example.org        # any address at example.org
//! ops: *                               # any sender
//! ```
//!
//! A pattern is an address (`local@domain`), `@domain` (any local part
//! at that domain, not its subdomains) or `*`. Addresses and domains are
//! compared ignoring ASCII case, as Postfix's tables do. A user may have
//! several lines; a user without a line owns no sender.
//!
//! Without a map, on submission listeners, a user owns exactly the
//! address that is its user name (if the name is an address); the null
//! sender `<>` is always allowed (it names no one: delivery status
//! notifications and read receipts, RFC 3461, RFC 8098).

use std::collections::HashMap;
use std::fmt;
use std::path::Path;

/// One pattern of a user's line.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Pattern {
    /// Any sender.
    Any,
    /// `@domain`, lower-cased.
    Domain(String),
    /// `local@domain`, lower-cased.
    Address(String),
}

impl Pattern {
    fn parse(s: &str) -> Result<Pattern, String> {
        if s == "*" {
            return Ok(Pattern::Any);
        }
        if let Some(d) = s.strip_prefix('@') {
            if d.is_empty() || d.contains('@') || d.contains(char::is_whitespace) {
                return Err(format!("bad domain pattern {s:?} (use @example.org)"));
            }
            return Ok(Pattern::Domain(d.to_ascii_lowercase()));
        }
        match s.rsplit_once('@') {
            Some((l, d)) if !l.is_empty() && !d.is_empty() && !s.contains(char::is_whitespace) => {
                Ok(Pattern::Address(s.to_ascii_lowercase()))
            }
            _ => Err(format!(
                "bad pattern {s:?} (use local@domain, @domain or *)"
            )),
        }
    }

    fn matches(&self, address: &str, domain: &str) -> bool {
        match self {
            Pattern::Any => true,
            Pattern::Domain(d) => d.eq_ignore_ascii_case(domain),
            Pattern::Address(a) => a.eq_ignore_ascii_case(address),
        }
    }
}

/// Why the map cannot be used; `line` 0 is the file as a whole.
#[derive(Debug)]
pub enum MapError {
    Io(std::io::Error),
    Syntax { line: usize, why: String },
}

impl fmt::Display for MapError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MapError::Io(e) => write!(f, "{e}"),
            MapError::Syntax { line, why } => write!(f, "line {line}: {why}"),
        }
    }
}

/// The users and the senders each may use.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SenderMap {
    users: HashMap<String, Vec<Pattern>>,
}

impl SenderMap {
    pub fn load(path: &Path) -> Result<SenderMap, MapError> {
        let text = std::fs::read_to_string(path).map_err(MapError::Io)?;
        SenderMap::parse(&text)
    }

    /// `user: pattern, pattern` lines; `#` starts a comment.
    pub fn parse(text: &str) -> Result<SenderMap, MapError> {
        let mut users: HashMap<String, Vec<Pattern>> = HashMap::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.split('#').next().unwrap_or("").trim();
            if line.is_empty() {
                continue;
            }
            let bad = |why: String| MapError::Syntax { line: n + 1, why };
            // the user name may itself be an address: split at ": "
            // or the last ':'
            let (user, rest) = line
                .split_once(": ")
                .or_else(|| line.rsplit_once(':'))
                .ok_or_else(|| bad("expected 'user: pattern, ...'".into()))?;
            let user = user.trim();
            if user.is_empty() {
                return Err(bad("empty user name".into()));
            }
            let entry = users.entry(user.to_string()).or_default();
            for p in rest.split(',').map(str::trim).filter(|p| !p.is_empty()) {
                entry.push(Pattern::parse(p).map_err(bad)?);
            }
        }
        Ok(SenderMap { users })
    }

    pub fn len(&self) -> usize {
        self.users.len()
    }

    pub fn is_empty(&self) -> bool {
        self.users.is_empty()
    }

    /// Whether `user` may use the sender `local@domain` (`address`).
    pub fn owns(&self, user: &str, address: &str, domain: &str) -> bool {
        self.users
            .get(user)
            .is_some_and(|ps| ps.iter().any(|p| p.matches(address, domain)))
    }
}

/// The default without a map: the user name, when it is an address, is
/// the one sender the user owns.
pub fn owns_by_name(user: &str, address: &str) -> bool {
    user.contains('@') && user.eq_ignore_ascii_case(address)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_per_user() {
        let m = SenderMap::parse(
            "# comment\nalice: alice@example.org, A.Smith@Example.ORG\n\
             app@example.org: @example.org # the whole domain\n\
             ops: *\nalice: alice@other.example\n\nnobody:\n",
        )
        .unwrap();
        assert_eq!(m.len(), 4);
        assert!(m.owns("alice", "alice@example.org", "example.org"));
        assert!(m.owns("alice", "a.smith@example.org", "example.org"));
        assert!(m.owns("alice", "ALICE@EXAMPLE.ORG", "EXAMPLE.ORG"));
        assert!(m.owns("alice", "alice@other.example", "other.example"));
        assert!(!m.owns("alice", "ceo@bigbank.test", "bigbank.test"));
        assert!(m.owns("app@example.org", "x@example.org", "example.org"));
        assert!(m.owns("app@example.org", "y@Example.Org", "Example.Org"));
        assert!(!m.owns("app@example.org", "x@sub.example.org", "sub.example.org"));
        assert!(m.owns("ops", "ceo@bigbank.test", "bigbank.test"));
        assert!(!m.owns("nobody", "nobody@example.org", "example.org"));
        assert!(!m.owns("mallory", "mallory@example.org", "example.org"));
        // user names are exact
        assert!(!m.owns("Alice", "alice@example.org", "example.org"));
    }

    #[test]
    fn bad_lines_name_their_number() {
        for (text, line) in [
            ("alice alice@example.org\n", 1),
            ("a: x@y\nb: @\n", 2),
            ("a: x@y\n\nb: notanaddress\n", 3),
            (": x@y\n", 1),
            ("a: @a@b\n", 1),
        ] {
            match SenderMap::parse(text) {
                Err(MapError::Syntax { line: l, .. }) => assert_eq!(l, line, "{text:?}"),
                other => panic!("{text:?}: {other:?}"),
            }
        }
    }

    #[test]
    fn default_is_the_user_name() {
        assert!(owns_by_name("bob@example.org", "Bob@Example.org"));
        assert!(!owns_by_name("bob@example.org", "ceo@bigbank.test"));
        assert!(!owns_by_name("bob", "bob"));
    }
}
