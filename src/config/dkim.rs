//! `--dkim-*` settings as the operator wrote them: plain data (domains,
//! selectors, key file paths, choices). The keys themselves are read at
//! start by the composition root (`app.rs` → `dkim::Signer::load`).

use std::path::PathBuf;

/// `--dkim-key DOMAIN:SELECTOR:FILE`: one signing key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyFile {
    /// The signing domain (`d=`), lower case.
    pub domain: String,
    /// The selector (`s=`): the key is published at
    /// `SELECTOR._domainkey.DOMAIN` (RFC 6376 §3.6.2.1).
    pub selector: String,
    /// A PKCS#8 (or PKCS#1 RSA) private key in PEM.
    pub path: PathBuf,
}

impl KeyFile {
    /// `DOMAIN:SELECTOR:FILE`; the file name may itself hold colons.
    pub fn parse(s: &str) -> Result<KeyFile, String> {
        let mut parts = s.splitn(3, ':');
        let (Some(domain), Some(selector), Some(path)) = (parts.next(), parts.next(), parts.next())
        else {
            return Err(format!("{s:?} is not DOMAIN:SELECTOR:FILE"));
        };
        let domain = domain.trim_end_matches('.').to_ascii_lowercase();
        if crate::smtp::Domain::parse(&domain, false).is_err() {
            return Err(format!("{domain:?} is not a domain name"));
        }
        // RFC 6376 §3.1: selector = sub-domain *( "." sub-domain )
        let label_ok = |l: &str| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        };
        if !selector.split('.').all(label_ok) {
            return Err(format!(
                "{selector:?} is not a selector (letters, digits, '-', '.')"
            ));
        }
        if path.is_empty() {
            return Err(format!("{s:?}: no key file"));
        }
        Ok(KeyFile {
            domain,
            selector: selector.to_string(),
            path: PathBuf::from(path),
        })
    }
}

/// RFC 6376 §3.4: the canonicalization of the header or the body.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Canon {
    #[default]
    Relaxed,
    Simple,
}

/// `--dkim-canonicalization HEADER[/BODY]`, the form of the `c=` tag
/// (RFC 6376 §3.5: a lone algorithm is the header's, the body's is then
/// `simple`).
pub fn parse_canonicalization(s: &str) -> Option<(Canon, Canon)> {
    let one = |w: &str| match w {
        "relaxed" => Some(Canon::Relaxed),
        "simple" => Some(Canon::Simple),
        _ => None,
    };
    match s.split_once('/') {
        Some((h, b)) => Some((one(h)?, one(b)?)),
        None => Some((one(s)?, Canon::Simple)),
    }
}

/// Which identity names the signing domain (`--dkim-domain-from`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DomainFrom {
    /// The `From:` header's domain (the one DMARC aligns with, RFC 7489
    /// §3.1.1), or its nearest parent domain that has a key.
    #[default]
    Header,
    /// The envelope sender's (MAIL FROM) domain, likewise.
    Envelope,
}

/// Whose mail is signed (`--dkim-sign-from`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SignFrom {
    /// Clients in `--relay-net`.
    pub relay_net: bool,
    /// Clients that authenticated (SMTP AUTH).
    pub auth: bool,
    /// Mail injected on this host: `send`, `sendmail` and the maildrop
    /// (OpenDKIM's and Postfix's view: the local host is internal).
    pub local: bool,
}

impl SignFrom {
    /// A comma list of `relay-net`, `auth` and `local`, or `none`.
    pub fn parse(s: &str) -> Option<SignFrom> {
        let mut f = SignFrom {
            relay_net: false,
            auth: false,
            local: false,
        };
        if s == "none" {
            return Some(f);
        }
        for w in s.split(',').map(str::trim) {
            match w {
                "relay-net" => f.relay_net = true,
                "auth" => f.auth = true,
                "local" => f.local = true,
                _ => return None,
            }
        }
        Some(f)
    }
}

/// Every DKIM setting of `serve`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DkimSettings {
    pub keys: Vec<KeyFile>,
    pub sign_from: SignFrom,
    pub header_canon: Canon,
    pub body_canon: Canon,
    pub domain_from: DomainFrom,
}

impl Default for DkimSettings {
    fn default() -> Self {
        DkimSettings {
            keys: Vec::new(),
            sign_from: SignFrom {
                relay_net: true,
                auth: true,
                local: true,
            },
            header_canon: Canon::Relaxed,
            body_canon: Canon::Relaxed,
            domain_from: DomainFrom::Header,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_file_spec() {
        let k = KeyFile::parse("Example.ORG:mail-2026:/etc/k:x.pem").unwrap();
        assert_eq!(k.domain, "example.org");
        assert_eq!(k.selector, "mail-2026");
        assert_eq!(k.path, PathBuf::from("/etc/k:x.pem"));
        assert!(KeyFile::parse("example.org:sel").is_err());
        assert!(KeyFile::parse("example.org:bad_sel:/k").is_err());
        assert!(KeyFile::parse("exa mple:sel:/k").is_err());
        assert!(KeyFile::parse("example.org:sel:").is_err());
    }

    #[test]
    fn canonicalization_and_sources() {
        use Canon::*;
        assert_eq!(
            parse_canonicalization("relaxed/simple"),
            Some((Relaxed, Simple))
        );
        assert_eq!(parse_canonicalization("simple"), Some((Simple, Simple)));
        assert_eq!(parse_canonicalization("relaxed"), Some((Relaxed, Simple)));
        assert_eq!(parse_canonicalization("loose"), None);
        let f = SignFrom::parse("auth").unwrap();
        assert!(f.auth && !f.relay_net);
        assert!(SignFrom::parse("relay-net,auth").is_some_and(|f| f.auth && f.relay_net));
        assert!(SignFrom::parse("none").is_some_and(|f| !f.auth && !f.relay_net && !f.local));
        assert!(SignFrom::parse("local").is_some_and(|f| f.local && !f.auth && !f.relay_net));
        assert!(SignFrom::parse("everyone").is_none());
    }
}
