//! The aggregate report (RFC 8460 §4.4) as JSON, gzipped (§5.1), in the
//! message that carries it (§5.3).

use std::io::Write as _;

use super::counters::{DomainCounts, Failure, PolicyCounts, PolicyKey, PolicyType};
use crate::admin::json_str;
use crate::bounce::ascii_field;

/// Who reports, for the report's fields and the message's headers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Submitter {
    /// §4.4 `organization-name`, and `TLS-Report-Submitter` (§5.3).
    pub org: String,
    /// §4.4 `contact-info`.
    pub contact: String,
    /// The report's From (and envelope sender).
    pub from: String,
    /// Our host name: the §5.1 file name's `sender`, the Message-ID.
    pub hostname: String,
}

/// One report: a domain's counts over `[start, end)`.
pub struct Report<'a> {
    pub domain: &'a str,
    pub start: u64,
    pub end: u64,
    pub counts: &'a DomainCounts,
}

impl Report<'_> {
    /// §4.4 `report-id`: the same for the same domain and period, so a
    /// report queued twice (a crash between queueing and forgetting the
    /// counts) is recognisably the same report.
    pub fn id(&self, s: &Submitter) -> String {
        format!("{}.{}@{}", self.start, self.domain, s.hostname)
    }

    /// §4.4: the JSON report. `end-datetime` is the last second of the
    /// period, as in the RFC's example.
    pub fn json(&self, s: &Submitter) -> String {
        let policies: Vec<String> = self
            .counts
            .policies
            .iter()
            .map(|(k, c)| policy_json(self.domain, k, c))
            .collect();
        format!(
            "{{\"organization-name\":{},\"date-range\":{{\"start-datetime\":{},\"end-datetime\":{}}},\"contact-info\":{},\"report-id\":{},\"policies\":[{}]}}",
            json_str(&s.org),
            json_str(&crate::time::iso8601(self.start)),
            json_str(&crate::time::iso8601(self.end.saturating_sub(1))),
            json_str(&s.contact),
            json_str(&self.id(s)),
            policies.join(",")
        )
    }

    /// §5.1: `sender!policy-domain!begin-timestamp!end-timestamp.json.gz`.
    pub fn filename(&self, s: &Submitter) -> String {
        format!(
            "{}!{}!{}!{}.json.gz",
            s.hostname,
            self.domain,
            self.start,
            self.end.saturating_sub(1)
        )
    }

    /// §5.3: the message to `to`, the report gzipped (§5.1) in an
    /// `application/tlsrpt+gzip` part of a `multipart/report;
    /// report-type="tlsrpt"` (§6.4). CRLF line ends, as stored. Carries
    /// `TLS-Required: No` (RFC 8689 §4.1): §5.3 says reports "MUST
    /// [be delivered] despite any TLS-related failures".
    pub fn message(&self, s: &Submitter, to: &[String], now: u64) -> std::io::Result<Vec<u8>> {
        let gz = gzip(self.json(s).as_bytes())?;
        let id = self.id(s);
        let boundary = format!("tlsrpt-{}-{now}", self.start);
        let mut m = format!(
            "From: <{from}>\r\nTo: {to}\r\nDate: {date}\r\nMessage-ID: <tlsrpt.{now}.{id}>\r\n\
             Subject: Report Domain: {domain} Submitter: {org} Report-ID: <{id}>\r\n\
             TLS-Report-Domain: {domain}\r\nTLS-Report-Submitter: {org}\r\nTLS-Required: No\r\n\
             MIME-Version: 1.0\r\n\
             Content-Type: multipart/report; report-type=\"tlsrpt\"; boundary=\"{boundary}\"\r\n\r\n\
             This is a multi-part message in MIME format.\r\n\r\n--{boundary}\r\n\
             Content-Type: text/plain; charset=us-ascii\r\n\r\n\
             This is an aggregate TLS report (RFC 8460) from {org} for {domain}.\r\n\r\n\
             --{boundary}\r\nContent-Type: application/tlsrpt+gzip\r\n\
             Content-Transfer-Encoding: base64\r\n\
             Content-Disposition: attachment; filename=\"{file}\"\r\n\r\n",
            from = s.from,
            to = to.join(", "),
            date = crate::time::rfc5322_date(now),
            domain = self.domain,
            org = ascii_field(&s.org),
            file = self.filename(s),
        );
        let b64 = base64ct::Base64::encode_string(&gz);
        for chunk in b64.as_bytes().chunks(76) {
            m.push_str(&String::from_utf8_lossy(chunk));
            m.push_str("\r\n");
        }
        m.push_str(&format!("\r\n--{boundary}--\r\n"));
        Ok(m.into_bytes())
    }
}

use base64ct::Encoding as _;

fn policy_json(domain: &str, k: &PolicyKey, c: &PolicyCounts) -> String {
    let list = |v: &[String]| v.iter().map(|s| json_str(s)).collect::<Vec<_>>().join(",");
    let mut policy = format!("\"policy-type\":{}", json_str(k.kind.as_str()));
    if k.kind != PolicyType::NoPolicyFound {
        policy.push_str(&format!(",\"policy-string\":[{}]", list(&k.strings)));
    }
    policy.push_str(&format!(",\"policy-domain\":{}", json_str(domain)));
    if !k.mx_host.is_empty() {
        policy.push_str(&format!(",\"mx-host\":[{}]", list(&k.mx_host)));
    }
    let details: Vec<String> = c.details.iter().map(|(f, n)| failure_json(f, *n)).collect();
    format!(
        "{{\"policy\":{{{policy}}},\"summary\":{{\"total-successful-session-count\":{},\"total-failure-session-count\":{}}},\"failure-details\":[{}]}}",
        c.successes,
        c.failures,
        details.join(",")
    )
}

fn failure_json(f: &Failure, n: u64) -> String {
    let mut out = format!("{{\"result-type\":{}", json_str(f.result.as_str()));
    if let Some(ip) = f.sending_ip {
        out.push_str(&format!(
            ",\"sending-mta-ip\":{}",
            json_str(&ip.to_string())
        ));
    }
    if let Some(ip) = f.receiving_ip {
        out.push_str(&format!(",\"receiving-ip\":{}", json_str(&ip.to_string())));
    }
    if let Some(mx) = &f.mx_host {
        out.push_str(&format!(",\"receiving-mx-hostname\":{}", json_str(mx)));
    }
    out.push_str(&format!(",\"failed-session-count\":{n}"));
    if let Some(r) = &f.reason {
        out.push_str(&format!(",\"failure-reason-code\":{}", json_str(r)));
    }
    out.push('}');
    out
}

/// §5.1: "application/tlsrpt+gzip": gzip (RFC 1952), by flate2.
fn gzip(data: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(data)?;
    e.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tlsrpt::counters::ResultType;
    use std::io::Read as _;

    #[test]
    fn json_and_message() {
        let mut counts = DomainCounts::default();
        let key = PolicyKey {
            kind: PolicyType::Sts,
            strings: vec!["version: STSv1".into(), "mode: \"enforce\"".into()],
            mx_host: vec!["*.a.example".into()],
        };
        counts.count(&key, None);
        counts.count(
            &key,
            Some(Failure {
                result: ResultType::ValidationFailure,
                sending_ip: None,
                receiving_ip: Some("10.1.1.1".parse().unwrap()),
                mx_host: Some("mx.b.example".into()),
                reason: Some("mx not in policy".into()),
            }),
        );
        let s = Submitter {
            org: "Org".into(),
            contact: "c@r.example".into(),
            from: "tlsrpt@r.example".into(),
            hostname: "r.example".into(),
        };
        let r = Report {
            domain: "a.example",
            start: 86_400,
            end: 2 * 86_400,
            counts: &counts,
        };
        let j = r.json(&s);
        assert!(
            j.contains("\"start-datetime\":\"1970-01-02T00:00:00Z\""),
            "{j}"
        );
        assert!(
            j.contains("\"end-datetime\":\"1970-01-02T23:59:59Z\""),
            "{j}"
        );
        assert!(j.contains("\"mode: \\\"enforce\\\"\""), "{j}");
        assert!(
            j.contains("\"total-successful-session-count\":1,\"total-failure-session-count\":1")
        );
        assert_eq!(r.filename(&s), "r.example!a.example!86400!172799.json.gz");
        let m = String::from_utf8(r.message(&s, &["<x@a.example>".into()], 3).unwrap()).unwrap();
        assert!(m.contains("Report-ID: <86400.a.example@r.example>"), "{m}");
        let gz = gzip(j.as_bytes()).unwrap();
        let mut back = String::new();
        flate2::read::GzDecoder::new(&gz[..])
            .read_to_string(&mut back)
            .unwrap();
        assert_eq!(back, j);
    }
}
