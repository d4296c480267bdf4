//! The `_smtp._tls.DOMAIN` TXT record (RFC 8460 §3): where a domain
//! wants its TLS reports.

use crate::smtp::Path;

/// One reporting URI of `rua=` (RFC 8460 §3).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rua {
    /// `mailto:`: sent by mail (§5.3).
    Mailto(Path),
    /// `https:`: a POST (§5.4); not supported here (README "TLS
    /// reporting"), logged and skipped.
    Https(String),
}

/// The policy of a domain that implements TLSRPT.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub rua: Vec<Rua>,
}

impl Record {
    /// The mail addresses among the URIs.
    pub fn mailto(&self) -> Vec<&Path> {
        self.rua
            .iter()
            .filter_map(|r| match r {
                Rua::Mailto(p) => Some(p),
                Rua::Https(_) => None,
            })
            .collect()
    }
}

/// RFC 8460 §3: "records that do not begin with `v=TLSRPTv1;` are
/// discarded. If the number of resulting records is not one, or if the
/// resulting record is syntactically invalid, senders MUST assume the
/// recipient domain does not implement TLSRPT."
pub fn from_txt(records: &[String]) -> Result<Record, String> {
    let ours: Vec<&String> = records
        .iter()
        .filter(|r| r.starts_with("v=TLSRPTv1;") || r.trim_end() == "v=TLSRPTv1")
        .collect();
    match ours.as_slice() {
        [one] => parse(one),
        [] => Err("no v=TLSRPTv1 record".into()),
        _ => Err(format!("{} v=TLSRPTv1 records (must be one)", ours.len())),
    }
}

/// §3's grammar: `v=TLSRPTv1`, then `;`-separated fields of which `rua=`
/// (a `,`-separated list of URIs) is the one that counts; extensions
/// (`name=value`) are ignored.
pub fn parse(text: &str) -> Result<Record, String> {
    let mut fields = text.split(';').map(|f| f.trim_matches([' ', '\t']));
    if fields.next() != Some("v=TLSRPTv1") {
        return Err("does not start with v=TLSRPTv1".into());
    }
    let mut rua: Option<Vec<Rua>> = None;
    for field in fields.filter(|f| !f.is_empty()) {
        let Some((name, value)) = field.split_once('=') else {
            return Err(format!("field {field:?} is not name=value"));
        };
        if name == "rua" {
            if rua.is_some() {
                return Err("two rua= fields".into());
            }
            let uris = value.split(',').map(|u| uri(u.trim_matches([' ', '\t'])));
            rua = Some(uris.collect::<Result<_, _>>()?);
        } else if !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
            return Err(format!("bad field name {name:?}"));
        }
    }
    match rua {
        Some(rua) if !rua.is_empty() => Ok(Record { rua }),
        _ => Err("no rua= field".into()),
    }
}

/// One URI: `mailto:` (RFC 6068: the address before any `?`, with
/// %-escapes) or `https:`; anything else makes the record invalid.
fn uri(u: &str) -> Result<Rua, String> {
    let lower = u.to_ascii_lowercase();
    if lower.starts_with("https:") {
        return Ok(Rua::Https(u.to_string()));
    }
    if !lower.starts_with("mailto:") {
        return Err(format!("rua {u:?} is neither mailto: nor https:"));
    }
    let addr = &u["mailto:".len()..];
    let addr = addr.split('?').next().unwrap_or_default();
    let addr = percent_decode(addr).ok_or_else(|| format!("rua {u:?}: bad %-escape"))?;
    Path::parse(&format!("<{addr}>"), true)
        .map(|p| Rua::Mailto(p.without_route()))
        .map_err(|e| format!("rua {u:?}: not a mail address: {e}"))
}

/// `%XX` escapes decoded (RFC 3986 §2.1); `None` for a bad escape or
/// a result that is not UTF-8.
pub(super) fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn txt(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn records() {
        let r = from_txt(&txt(&[
            "v=STSv1; id=1",
            "v=TLSRPTv1; rua=mailto:tls%2Drpt@example.com?subject=x, https://r.example/x; ext=1;",
        ]))
        .unwrap();
        assert_eq!(r.rua.len(), 2);
        assert_eq!(r.mailto()[0].to_string(), "<tls-rpt@example.com>");
        assert!(matches!(&r.rua[1], Rua::Https(u) if u == "https://r.example/x"));
        // §3: not exactly one record, no rua, a bad URI: no TLSRPT
        for bad in [
            vec![],
            vec![
                "v=TLSRPTv1; rua=mailto:a@b.example",
                "v=TLSRPTv1; rua=mailto:c@d.example",
            ],
            vec!["v=TLSRPTv1;"],
            vec!["v=TLSRPTv1; rua=ftp://x.example"],
            vec!["v=TLSRPTv1; rua=mailto:not an address"],
            vec!["v=TLSRPTv1; rua=mailto:a@b.example; rua=mailto:c@d.example"],
            vec!["v=TLSRPTv2; rua=mailto:a@b.example"],
        ] {
            assert!(from_txt(&txt(&bad)).is_err(), "{bad:?}");
        }
    }
}
