//! What delivery tells the TLS reporter (`tlsrpt`, RFC 8460): the policy
//! a session was tried under (§4.4 `policy`) and what became of it (a
//! success, or a §4.3 result type).

use std::net::IpAddr;

use crate::mta_sts::Found;
use crate::tls_policy::{DestTls, HopDane, Source};
use crate::tlsrpt::counters::{Failure, PolicyKey, PolicyType, ResultType};

/// Where a hop's sessions are reported: the policy domain (the
/// recipient domain, A-label) and the policy applied to the hop. A
/// static route applies the operator's policy, not the domain's: not
/// reported (`tls_policy.rs` module doc).
#[derive(Debug, Clone)]
pub(super) struct ReportTo {
    pub domain: String,
    pub policy: PolicyKey,
}

impl ReportTo {
    /// Where a hop's sessions go: `None` when the group is not reported
    /// or the hop has no policy to report under.
    pub(super) fn new(domain: Option<&str>, dest: &DestTls, dane: &HopDane) -> Option<ReportTo> {
        Some(ReportTo {
            domain: domain?.to_string(),
            policy: policy(dest, dane)?,
        })
    }
}

/// The §4.4 policy of a hop: DANE where it applies (RFC 8461 §2), else
/// the MTA-STS policy in force (mode `none` is no policy, §5), else an
/// `sts` policy without text when the domain's policy could not be
/// fetched (§4.3.2.2: its sessions fail with the fetch's result type),
/// else `no-policy-found`.
pub(super) fn policy(dest: &DestTls, dane: &HopDane) -> Option<PolicyKey> {
    let key = |kind, strings, mx_host| {
        Some(PolicyKey {
            kind,
            strings,
            mx_host,
        })
    };
    match (dane, &dest.source) {
        (_, Source::Route) => None,
        (HopDane::Usable { tlsa, .. }, _) => key(
            PolicyType::Tlsa,
            tlsa.iter().map(|t| t.to_string()).collect(),
            vec![],
        ),
        (HopDane::Failed(_), _) => key(PolicyType::Tlsa, vec![], vec![]),
        (HopDane::None, Source::MtaSts(f)) if dest.mode(false).is_some() => {
            key(PolicyType::Sts, sts_lines(f), f.policy.mx.clone())
        }
        (HopDane::None, Source::None) if dest.sts_error.is_some() => {
            key(PolicyType::Sts, vec![], vec![])
        }
        _ => key(PolicyType::NoPolicyFound, vec![], vec![]),
    }
}

/// §4.4 `policy-string` of an MTA-STS policy: its lines (RFC 8461 §3.2),
/// written back from the parsed policy.
fn sts_lines(f: &Found) -> Vec<String> {
    let mut lines = vec![
        "version: STSv1".to_string(),
        format!("mode: {}", f.policy.mode),
    ];
    lines.extend(f.policy.mx.iter().map(|m| format!("mx: {m}")));
    lines.push(format!("max_age: {}", f.policy.max_age));
    lines
}

/// The §4.3 result type of a TLS failure, from its text: the client's
/// own refusals ("does not offer STARTTLS") and rustls' certificate
/// errors (`UnknownIssuer`, "certificate expired", "not valid for
/// name"). Statistics, not a decision: an unknown text is the general
/// `validation-failure` (§4.3.1). On a DANE hop a certificate that does
/// not pass is `tlsa-invalid` (§4.3.2.1: no record matched).
pub(super) fn classify(text: &str, dane: bool) -> ResultType {
    let t = text.to_ascii_lowercase();
    if t.contains("does not offer starttls")
        || t.contains("starttls got")
        || t.contains("starttls not used")
    {
        ResultType::StarttlsNotSupported
    } else if dane {
        ResultType::TlsaInvalid
    } else if t.contains("expired") {
        ResultType::CertificateExpired
    } else if t.contains("not valid for name") || t.contains("notvalidforname") {
        ResultType::CertificateHostMismatch
    } else if t.contains("unknownissuer")
        || t.contains("unknown issuer")
        || t.contains("badsignature")
        || t.contains("self-signed")
    {
        ResultType::CertificateNotTrusted
    } else {
        ResultType::ValidationFailure
    }
}

/// §4.3.2.2: the result type of a failed MTA-STS policy fetch
/// (`mta_sts::MtaSts::lookup_noting`): the policy host's certificate
/// refused, the policy text invalid, or anything else on the way.
pub(super) fn sts_fetch_result(why: &str) -> ResultType {
    if why.starts_with("bad policy") {
        ResultType::StsPolicyInvalid
    } else if why.to_ascii_lowercase().contains("certificate") {
        ResultType::StsWebpkiInvalid
    } else {
        ResultType::StsPolicyFetchError
    }
}

/// A failure-details entry.
pub(super) fn failure(
    result: ResultType,
    mx: &str,
    receiving: Option<IpAddr>,
    sending: Option<IpAddr>,
    reason: &str,
) -> Failure {
    Failure {
        result,
        sending_ip: sending,
        receiving_ip: receiving,
        mx_host: Some(mx.to_ascii_lowercase()),
        reason: Some(reason.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn result_types_from_texts() {
        let c = |t| classify(t, false);
        assert_eq!(
            c("TLS is required, but the server does not offer STARTTLS"),
            ResultType::StarttlsNotSupported
        );
        assert_eq!(
            c("no TLS (STARTTLS not used)"),
            ResultType::StarttlsNotSupported
        );
        assert_eq!(
            c("TLS handshake failed: invalid peer certificate: UnknownIssuer"),
            ResultType::CertificateNotTrusted
        );
        assert_eq!(
            c("invalid peer certificate: certificate expired: verification time 5"),
            ResultType::CertificateExpired
        );
        assert_eq!(
            c("invalid peer certificate: certificate not valid for name \"x\""),
            ResultType::CertificateHostMismatch
        );
        assert_eq!(
            c("handshake: peer sent alert"),
            ResultType::ValidationFailure
        );
        assert_eq!(
            classify("DANE: the certificate matches no TLSA record", true),
            ResultType::TlsaInvalid
        );
        let f = sts_fetch_result;
        assert_eq!(f("bad policy: no mode"), ResultType::StsPolicyInvalid);
        assert_eq!(
            f("127.0.0.1:443: TLS or request: invalid peer certificate: UnknownIssuer"),
            ResultType::StsWebpkiInvalid
        );
        assert_eq!(f("HTTP status \"404\""), ResultType::StsPolicyFetchError);
    }
}
