//! The counts one report is made of: per policy domain and period, per
//! policy applied, the successful sessions and the failures by kind
//! (RFC 8460 §4.4), bounded in memory, and their file form in the spool.

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;

/// At most this many distinct policies per domain and period (a domain
/// changes its policy a few times a day at most); sessions under more
/// are not counted.
pub const MAX_POLICIES: usize = 8;
/// At most this many distinct failure-details per policy; further
/// failures still count in the summary (§4.4 `total-failure-session-count`).
pub const MAX_DETAILS: usize = 64;
/// Free text (reasons, host names) is cut to this many characters.
const MAX_TEXT: usize = 255;

/// RFC 8460 §4.4 `policy-type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum PolicyType {
    Sts,
    Tlsa,
    NoPolicyFound,
}

impl PolicyType {
    pub fn as_str(self) -> &'static str {
        match self {
            PolicyType::Sts => "sts",
            PolicyType::Tlsa => "tlsa",
            PolicyType::NoPolicyFound => "no-policy-found",
        }
    }

    fn parse(s: &str) -> Option<PolicyType> {
        [PolicyType::Sts, PolicyType::Tlsa, PolicyType::NoPolicyFound]
            .into_iter()
            .find(|t| t.as_str() == s)
    }
}

/// RFC 8460 §4.3 result types.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ResultType {
    // §4.3.1 negotiation failures
    StarttlsNotSupported,
    CertificateHostMismatch,
    CertificateExpired,
    CertificateNotTrusted,
    ValidationFailure,
    // §4.3.2.1 DANE
    TlsaInvalid,
    DnssecInvalid,
    DaneRequired,
    // §4.3.2.2 MTA-STS
    StsPolicyFetchError,
    StsPolicyInvalid,
    StsWebpkiInvalid,
}

const RESULT_TYPES: [ResultType; 11] = [
    ResultType::StarttlsNotSupported,
    ResultType::CertificateHostMismatch,
    ResultType::CertificateExpired,
    ResultType::CertificateNotTrusted,
    ResultType::ValidationFailure,
    ResultType::TlsaInvalid,
    ResultType::DnssecInvalid,
    ResultType::DaneRequired,
    ResultType::StsPolicyFetchError,
    ResultType::StsPolicyInvalid,
    ResultType::StsWebpkiInvalid,
];

impl ResultType {
    pub fn as_str(self) -> &'static str {
        match self {
            ResultType::StarttlsNotSupported => "starttls-not-supported",
            ResultType::CertificateHostMismatch => "certificate-host-mismatch",
            ResultType::CertificateExpired => "certificate-expired",
            ResultType::CertificateNotTrusted => "certificate-not-trusted",
            ResultType::ValidationFailure => "validation-failure",
            ResultType::TlsaInvalid => "tlsa-invalid",
            ResultType::DnssecInvalid => "dnssec-invalid",
            ResultType::DaneRequired => "dane-required",
            ResultType::StsPolicyFetchError => "sts-policy-fetch-error",
            ResultType::StsPolicyInvalid => "sts-policy-invalid",
            ResultType::StsWebpkiInvalid => "sts-webpki-invalid",
        }
    }

    fn parse(s: &str) -> Option<ResultType> {
        RESULT_TYPES.into_iter().find(|t| t.as_str() == s)
    }
}

impl fmt::Display for ResultType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The policy a session was tried under (§4.4 `policy`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PolicyKey {
    pub kind: PolicyType,
    /// `policy-string`: the MTA-STS policy's lines, or the TLSA records.
    pub strings: Vec<String>,
    /// `mx-host`: the MTA-STS policy's `mx` patterns.
    pub mx_host: Vec<String>,
}

/// One §4.4 `failure-details` entry, without its count.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Failure {
    pub result: ResultType,
    pub sending_ip: Option<IpAddr>,
    pub receiving_ip: Option<IpAddr>,
    pub mx_host: Option<String>,
    /// `failure-reason-code`: our own words.
    pub reason: Option<String>,
}

impl Failure {
    /// `reason` and names cut to a bounded length.
    pub fn bounded(mut self) -> Failure {
        let cut = |s: String| s.chars().take(MAX_TEXT).collect::<String>();
        self.mx_host = self.mx_host.map(cut);
        self.reason = self.reason.map(cut);
        self
    }
}

/// The counts under one policy.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PolicyCounts {
    pub successes: u64,
    pub failures: u64,
    pub details: BTreeMap<Failure, u64>,
}

/// One domain's counts for one period.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DomainCounts {
    pub policies: BTreeMap<PolicyKey, PolicyCounts>,
}

impl DomainCounts {
    /// Counts one session: a success (`None`) or a failure. False when the
    /// policy is one too many (not counted).
    pub fn count(&mut self, policy: &PolicyKey, failure: Option<Failure>) -> bool {
        if !self.policies.contains_key(policy) && self.policies.len() >= MAX_POLICIES {
            return false;
        }
        let c = self.policies.entry(policy.clone()).or_default();
        match failure {
            None => c.successes += 1,
            Some(f) => {
                c.failures += 1;
                let f = f.bounded();
                if c.details.contains_key(&f) || c.details.len() < MAX_DETAILS {
                    *c.details.entry(f).or_default() += 1;
                }
            }
        }
        true
    }

    /// The file form: a `P` line per policy, then its `F` lines;
    /// tab-separated fields, each %-escaped (`esc`), lists `,`-joined.
    pub fn to_text(&self) -> String {
        let mut out = String::new();
        for (p, c) in &self.policies {
            let list = |v: &[String]| v.iter().map(|s| esc(s)).collect::<Vec<_>>().join(",");
            out.push_str(&format!(
                "P\t{}\t{}\t{}\t{}\t{}\n",
                p.kind.as_str(),
                c.successes,
                c.failures,
                list(&p.mx_host),
                list(&p.strings)
            ));
            for (f, n) in &c.details {
                let opt = |o: &Option<String>| o.as_deref().map(esc).unwrap_or_default();
                let ip = |o: &Option<IpAddr>| o.map(|i| i.to_string()).unwrap_or_default();
                out.push_str(&format!(
                    "F\t{}\t{n}\t{}\t{}\t{}\t{}\n",
                    f.result,
                    ip(&f.sending_ip),
                    ip(&f.receiving_ip),
                    opt(&f.mx_host),
                    opt(&f.reason)
                ));
            }
        }
        out
    }

    /// Reads `to_text`'s form back.
    pub fn from_text(text: &str) -> Result<DomainCounts, String> {
        let mut d = DomainCounts::default();
        let mut current: Option<PolicyKey> = None;
        for (n, line) in text.lines().enumerate() {
            let bad = |what: &str| format!("line {}: {what}", n + 1);
            let f: Vec<&str> = line.split('\t').collect();
            match f.as_slice() {
                ["P", kind, ok, failed, mx, strings] => {
                    let list = |s: &str| -> Result<Vec<String>, String> {
                        s.split(',')
                            .filter(|x| !x.is_empty())
                            .map(|x| unesc(x).ok_or_else(|| bad("bad escape")))
                            .collect()
                    };
                    let key = PolicyKey {
                        kind: PolicyType::parse(kind).ok_or_else(|| bad("policy type"))?,
                        strings: list(strings)?,
                        mx_host: list(mx)?,
                    };
                    let c = d.policies.entry(key.clone()).or_default();
                    c.successes = ok.parse().map_err(|_| bad("count"))?;
                    c.failures = failed.parse().map_err(|_| bad("count"))?;
                    current = Some(key);
                }
                ["F", result, count, sending, receiving, mx, reason] => {
                    let key = current.as_ref().ok_or_else(|| bad("F before P"))?;
                    let ip = |s: &str| -> Result<Option<IpAddr>, String> {
                        (!s.is_empty())
                            .then(|| s.parse().map_err(|_| bad("address")))
                            .transpose()
                    };
                    let text = |s: &str| -> Result<Option<String>, String> {
                        (!s.is_empty())
                            .then(|| unesc(s).ok_or_else(|| bad("bad escape")))
                            .transpose()
                    };
                    let failure = Failure {
                        result: ResultType::parse(result).ok_or_else(|| bad("result type"))?,
                        sending_ip: ip(sending)?,
                        receiving_ip: ip(receiving)?,
                        mx_host: text(mx)?,
                        reason: text(reason)?,
                    };
                    let n: u64 = count.parse().map_err(|_| bad("count"))?;
                    let c = d.policies.entry(key.clone()).or_default();
                    c.details.insert(failure, n);
                }
                _ => return Err(bad("not a P or F line")),
            }
        }
        Ok(d)
    }
}

/// %-escapes what would break the line form: `%`, `,`, tab, line ends
/// and other controls.
fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if c == '%' || c == ',' || c.is_control() {
            let mut buf = [0u8; 4];
            for b in c.encode_utf8(&mut buf).bytes() {
                out.push_str(&format!("%{b:02X}"));
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// The reverse of `esc` (the same %-escapes as a `mailto:` URI's).
fn unesc(s: &str) -> Option<String> {
    super::record::percent_decode(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sts() -> PolicyKey {
        PolicyKey {
            kind: PolicyType::Sts,
            strings: vec!["version: STSv1".into(), "mode: enforce".into()],
            mx_host: vec!["*.a,b.example".into()],
        }
    }

    fn failure(result: ResultType, n: u8) -> Failure {
        Failure {
            result,
            sending_ip: Some("127.0.0.1".parse().unwrap()),
            receiving_ip: Some(format!("10.0.0.{n}").parse().unwrap()),
            mx_host: Some("mx.example".into()),
            reason: Some("bad\tthing, 100%\n".into()),
        }
    }

    #[test]
    fn counts_round_trip_through_text() {
        let mut d = DomainCounts::default();
        d.count(&sts(), None);
        d.count(&sts(), None);
        d.count(&sts(), Some(failure(ResultType::CertificateExpired, 1)));
        d.count(&sts(), Some(failure(ResultType::CertificateExpired, 1)));
        let none = PolicyKey {
            kind: PolicyType::NoPolicyFound,
            strings: vec![],
            mx_host: vec![],
        };
        d.count(
            &none,
            Some(Failure {
                result: ResultType::StarttlsNotSupported,
                sending_ip: None,
                receiving_ip: None,
                mx_host: None,
                reason: None,
            }),
        );
        let back = DomainCounts::from_text(&d.to_text()).unwrap();
        assert_eq!(back, d);
        let c = &back.policies[&sts()];
        assert_eq!((c.successes, c.failures), (2, 2));
        assert_eq!(c.details.values().copied().collect::<Vec<_>>(), vec![2]);
        assert!(DomainCounts::from_text("F\tx").is_err());
    }

    #[test]
    fn bounded_policies_and_details() {
        let mut d = DomainCounts::default();
        for i in 0..MAX_DETAILS + 10 {
            d.count(&sts(), Some(failure(ResultType::TlsaInvalid, i as u8)));
        }
        let c = &d.policies[&sts()];
        assert_eq!(c.failures, (MAX_DETAILS + 10) as u64);
        assert_eq!(c.details.len(), MAX_DETAILS);
        for i in 0..MAX_POLICIES + 3 {
            let p = PolicyKey {
                kind: PolicyType::Tlsa,
                strings: vec![i.to_string()],
                mx_host: vec![],
            };
            d.count(&p, None);
        }
        assert_eq!(d.policies.len(), MAX_POLICIES);
    }
}
