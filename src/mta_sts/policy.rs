//! MTA-STS records and policies (RFC 8461 §3.1, §3.2) and MX matching
//! (§4.1): text in, data out, no I/O.

use std::fmt;

/// RFC 8461 §3.2: `max_age` is at most 31557600 seconds (about a year).
pub const MAX_AGE_LIMIT: u64 = 31_557_600;

/// RFC 8461 §5: how a sender applies the policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Only matching MX hosts, with a certificate valid for their name.
    Enforce,
    /// Deliver as usual; report (here: log) what enforce would refuse.
    Testing,
    /// The domain withdrew its policy.
    None,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Enforce => "enforce",
            Mode::Testing => "testing",
            Mode::None => "none",
        }
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A parsed policy file (RFC 8461 §3.2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    pub mode: Mode,
    /// `mx` patterns, lower case, without a trailing dot: `mx.example.com`
    /// or `*.example.com`.
    pub mx: Vec<String>,
    /// Seconds the policy may be cached.
    pub max_age: u64,
}

/// RFC 8461 §3.1: the `id` of a `v=STSv1; id=...;` TXT record, from the
/// records at `_mta-sts.DOMAIN`. Records not starting with `v=STSv1` are
/// ignored; none, or more than one, means no policy (§3.1: "If multiple
/// TXT records for _mta-sts are returned by the resolver, records that do
/// not begin with v=STSv1; are discarded. If the number of resulting
/// records is not one ... senders MUST assume the recipient domain does
/// not have an available MTA-STS policy").
pub fn record_id(records: &[String]) -> Result<String, String> {
    let sts: Vec<&String> = records
        .iter()
        .filter(|r| r.starts_with("v=STSv1;") || r.trim_end() == "v=STSv1")
        .collect();
    let [record] = sts.as_slice() else {
        return Err(format!("{} v=STSv1 TXT records, not one", sts.len()));
    };
    let mut id = None;
    for field in record.split(';').skip(1) {
        let field = field.trim_matches([' ', '\t']);
        if let Some(v) = field.strip_prefix("id=") {
            // sts-id-value = 1*32(ALPHA / DIGIT)
            if v.is_empty() || v.len() > 32 || !v.bytes().all(|b| b.is_ascii_alphanumeric()) {
                return Err(format!("bad id {v:?}"));
            }
            id = Some(v.to_string());
        }
    }
    id.ok_or_else(|| "TXT record has no id".to_string())
}

impl Policy {
    /// RFC 8461 §3.2: `key: value` lines (CRLF or LF), `version: STSv1`,
    /// `mode`, `max_age` and (for enforce and testing) at least one `mx`.
    /// Unknown keys are ignored (§3.2: for extension).
    pub fn parse(text: &str) -> Result<Policy, String> {
        let mut version = None;
        let mut mode = None;
        let mut max_age = None;
        let mut mx = Vec::new();
        for line in text.split('\n') {
            let line = line.strip_suffix('\r').unwrap_or(line);
            if line.trim().is_empty() {
                continue;
            }
            let Some((key, value)) = line.split_once(':') else {
                return Err(format!("line {line:?} is not key: value"));
            };
            let value = value.trim_matches([' ', '\t']);
            match key {
                "version" => version = Some(value.to_string()),
                "mode" => {
                    mode = Some(match value {
                        "enforce" => Mode::Enforce,
                        "testing" => Mode::Testing,
                        "none" => Mode::None,
                        other => return Err(format!("unknown mode {other:?}")),
                    })
                }
                "max_age" => {
                    // max-age-value = 1*10(DIGIT)
                    let ok = !value.is_empty()
                        && value.len() <= 10
                        && value.bytes().all(|b| b.is_ascii_digit());
                    let n: u64 = value
                        .parse()
                        .ok()
                        .filter(|_| ok)
                        .ok_or_else(|| format!("bad max_age {value:?}"))?;
                    max_age = Some(n.min(MAX_AGE_LIMIT));
                }
                "mx" => mx.push(mx_pattern(value)?),
                _ => {}
            }
        }
        if version.as_deref() != Some("STSv1") {
            return Err("no version: STSv1".into());
        }
        let mode = mode.ok_or("no mode")?;
        let max_age = max_age.ok_or("no max_age")?;
        if mx.is_empty() && mode != Mode::None {
            return Err(format!("mode {mode} without any mx"));
        }
        Ok(Policy { mode, mx, max_age })
    }

    /// RFC 8461 §4.1: whether MX host `host` is one the policy names. A
    /// `*.` pattern matches exactly one more label on the left
    /// (`*.example.com` matches `mx.example.com`, not `example.com` nor
    /// `a.b.example.com`); names compare case-insensitively.
    pub fn matches(&self, host: &str) -> bool {
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        self.mx.iter().any(|p| match p.strip_prefix("*.") {
            Some(base) => host
                .split_once('.')
                .is_some_and(|(first, rest)| !first.is_empty() && rest == base),
            None => *p == host,
        })
    }
}

/// An `mx` value: a host name, or `*.` and one (RFC 8461 §3.2).
fn mx_pattern(value: &str) -> Result<String, String> {
    let p = value.trim_end_matches('.').to_ascii_lowercase();
    let name = p.strip_prefix("*.").unwrap_or(&p);
    let ok = !name.is_empty()
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        });
    if ok {
        Ok(p)
    } else {
        Err(format!("bad mx pattern {value:?}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RFC_EXAMPLE: &str = "version: STSv1\r\nmode: enforce\r\nmx: mail.example.com\r\nmx: *.example.net\r\nmx: backupmx.example.com\r\nmax_age: 604800\r\n";

    #[test]
    fn the_rfc_example_parses() {
        let p = Policy::parse(RFC_EXAMPLE).unwrap();
        assert_eq!(p.mode, Mode::Enforce);
        assert_eq!(p.max_age, 604800);
        assert_eq!(
            p.mx,
            ["mail.example.com", "*.example.net", "backupmx.example.com"]
        );
        // LF line ends too, unknown keys ignored
        let lf = RFC_EXAMPLE.replace("\r\n", "\n") + "future_key: x\n";
        assert_eq!(Policy::parse(&lf).unwrap(), p);
    }

    #[test]
    fn bad_policies_are_refused() {
        for bad in [
            "",
            "mode: enforce\nmx: a.example\nmax_age: 1\n",
            "version: STSv2\nmode: enforce\nmx: a.example\nmax_age: 1\n",
            "version: STSv1\nmode: sometimes\nmx: a.example\nmax_age: 1\n",
            "version: STSv1\nmode: enforce\nmax_age: 1\n",
            "version: STSv1\nmode: enforce\nmx: a.example\n",
            "version: STSv1\nmode: enforce\nmx: a.example\nmax_age: -1\n",
            "version: STSv1\nmode: enforce\nmx: a..example\nmax_age: 1\n",
            "version: STSv1\nmode: enforce\nmx a.example\nmax_age: 1\n",
        ] {
            assert!(Policy::parse(bad).is_err(), "{bad:?}");
        }
        // mode none needs no mx; a huge max_age is capped
        let p = Policy::parse("version: STSv1\nmode: none\nmax_age: 99999999999\n");
        assert!(p.is_err(), "11 digits");
        let p = Policy::parse("version: STSv1\nmode: none\nmax_age: 9999999999\n").unwrap();
        assert_eq!(p.max_age, MAX_AGE_LIMIT);
    }

    #[test]
    fn mx_matching() {
        let p = Policy::parse(RFC_EXAMPLE).unwrap();
        assert!(p.matches("mail.example.com"));
        assert!(p.matches("MAIL.Example.COM."));
        assert!(p.matches("mx1.example.net"));
        assert!(!p.matches("example.net"), "the wildcard needs a label");
        assert!(!p.matches("a.b.example.net"), "only one label");
        assert!(!p.matches("mail.example.org"));
        assert!(!p.matches("xmail.example.com"));
    }

    #[test]
    fn txt_records() {
        let one = |s: &str| vec![s.to_string()];
        assert_eq!(
            record_id(&one("v=STSv1; id=20160831085700Z;")).unwrap(),
            "20160831085700Z"
        );
        assert_eq!(record_id(&one("v=STSv1;id=abc")).unwrap(), "abc");
        assert!(record_id(&one("v=STSv1; id=;")).is_err());
        assert!(record_id(&one("v=STSv1; id=a-b;")).is_err());
        assert!(record_id(&one("v=STSv1;")).is_err());
        assert!(record_id(&one("v=spf1 -all")).is_err());
        // others are discarded; two STS records are none
        let mixed = vec!["v=spf1 -all".to_string(), "v=STSv1; id=x1".to_string()];
        assert_eq!(record_id(&mixed).unwrap(), "x1");
        let two = vec!["v=STSv1; id=a".to_string(), "v=STSv1; id=b".to_string()];
        assert!(record_id(&two).is_err());
    }
}
