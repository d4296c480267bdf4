//! DKIM signing (RFC 6376; Ed25519-SHA256, RFC 8463) of mail we relay for
//! our own clients, with Stalwart's `mail-auth` doing canonicalization,
//! hashing and the `DKIM-Signature` field.
//!
//! What is signed is the message exactly as the next hop will read it:
//! the stored octets with delivery's line-end repair applied
//! ([`crate::smtp::data::as_transmitted`]); dot-stuffing is undone by the
//! receiver and so is not part of it. The signature goes above everything
//! else in the spool file, our `Received:` included, before the commit
//! (the 250 still comes only after the fsync). `Received:` is not signed:
//! trace fields are added and reordered in transit (RFC 6376 §5.4.1).
//!
//! Signed header fields ([`SIGNED_FIELDS`]): those of the list that the
//! message has, every instance of each, and `From` once more (RFC 6376
//! §5.4.2, §8.15: a second `From:` added in transit then breaks the
//! signature). Fields the message lacks are not named in `h=`, so a next
//! hop that adds a missing `Date:` or `Message-ID:` does not break it.

pub mod keygen;
pub use crate::config::dkim as settings;

use std::sync::Arc;

use mail_auth::common::crypto::{Algorithm, DkimKey, Ed25519Key, RsaKey, Sha256, SigningKey};
use mail_auth::common::headers::{HeaderWriter, Writable};
use mail_auth::dkim::{Canonicalization, DkimSigner};
use rsa::traits::PublicKeyParts;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::PrivateKeyDer;

pub use settings::DkimSettings;
use settings::{Canon, DomainFrom, KeyFile, SignFrom};

/// The header fields signed when present, in this order; `From` is
/// signed once more than it occurs (see the module header).
pub const SIGNED_FIELDS: &[&str] = &[
    "From",
    "Reply-To",
    "Subject",
    "Date",
    "To",
    "Cc",
    "Message-ID",
    "In-Reply-To",
    "References",
    "MIME-Version",
    "Content-Type",
    "Content-Transfer-Encoding",
    "Content-ID",
    "Content-Description",
    "List-Id",
    "List-Unsubscribe",
    "List-Unsubscribe-Post",
    "Sender",
];

/// RFC 8301 §3.2: RSA keys must be at least 1024 bits; 2048 is what
/// receivers expect now, and what we require.
pub const MIN_RSA_BITS: usize = 2048;

/// A private key read from a `--dkim-key` file, shared by every session.
#[derive(Clone)]
struct SharedKey(Arc<DkimKey>);

impl SigningKey for SharedKey {
    type Hasher = Sha256;

    fn sign(&self, input: impl Writable) -> mail_auth::Result<Vec<u8>> {
        self.0.sign(input)
    }

    fn algorithm(&self) -> Algorithm {
        self.0.algorithm()
    }
}

/// One configured key, read.
struct Key {
    domain: String,
    selector: String,
    key: SharedKey,
}

/// Why a `--dkim-key` file cannot be used.
#[derive(Debug)]
pub enum KeyError {
    /// The file cannot be read (EX_NOINPUT).
    Unreadable(std::io::Error),
    /// Read, but not a usable key (EX_CONFIG).
    Invalid(String),
}

/// Where a message came from, as far as `--dkim-sign-from` cares.
#[derive(Debug, Clone, Copy)]
pub struct Source {
    pub relay_net: bool,
    pub auth: bool,
    /// Injected on this host (`send`, `sendmail`, the maildrop).
    pub local: bool,
}

/// The signer of a running server: every key, read at start.
pub struct Signer {
    keys: Vec<Key>,
    sign_from: SignFrom,
    header_canon: Canonicalization,
    body_canon: Canonicalization,
    domain_from: DomainFrom,
}

fn canonicalization(c: Canon) -> Canonicalization {
    match c {
        Canon::Relaxed => Canonicalization::Relaxed,
        Canon::Simple => Canonicalization::Simple,
    }
}

/// Reads one private key: PKCS#8 PEM (RSA or Ed25519, what `dkim keygen`
/// writes) or PKCS#1 PEM (`BEGIN RSA PRIVATE KEY`, what `opendkim-genkey`
/// writes). RSA under [`MIN_RSA_BITS`] is refused.
pub fn read_key(path: &std::path::Path) -> Result<DkimKey, KeyError> {
    let pem = std::fs::read(path).map_err(KeyError::Unreadable)?;
    let der = PrivateKeyDer::from_pem_slice(&pem).map_err(|e| {
        KeyError::Invalid(format!("not a PEM private key (PKCS#8 or PKCS#1): {e:?}"))
    })?;
    if let PrivateKeyDer::Pkcs8(p8) = &der {
        if let Ok(k) = Ed25519Key::from_pkcs8_der(p8.secret_pkcs8_der()) {
            return Ok(DkimKey::Ed25519(k));
        }
    }
    let bits = rsa_bits(&der)?;
    if bits < MIN_RSA_BITS {
        return Err(KeyError::Invalid(format!(
            "RSA key of {bits} bits; at least {MIN_RSA_BITS} are required (RFC 8301 §3.2)"
        )));
    }
    let key = RsaKey::<Sha256>::from_key_der(der)
        .map_err(|e| KeyError::Invalid(format!("not an RSA or Ed25519 key: {e}")))?;
    Ok(DkimKey::Rsa(key))
}

fn rsa_bits(der: &PrivateKeyDer<'_>) -> Result<usize, KeyError> {
    use rsa::pkcs1::DecodeRsaPrivateKey;
    use rsa::pkcs8::DecodePrivateKey;
    let key = match der {
        PrivateKeyDer::Pkcs1(d) => rsa::RsaPrivateKey::from_pkcs1_der(d.secret_pkcs1_der()),
        PrivateKeyDer::Pkcs8(d) => {
            rsa::RsaPrivateKey::from_pkcs8_der(d.secret_pkcs8_der()).map_err(Into::into)
        }
        _ => {
            return Err(KeyError::Invalid(
                "an EC (SEC1) key; DKIM keys are RSA or Ed25519".into(),
            ))
        }
    };
    key.map(|k| k.size() * 8)
        .map_err(|e| KeyError::Invalid(format!("not an RSA or Ed25519 key: {e}")))
}

impl Signer {
    /// Reads every `--dkim-key`; `Ok(None)` when there is none. The error
    /// names the key's `DOMAIN:SELECTOR` and file.
    pub fn load(s: &DkimSettings) -> Result<Option<Signer>, (KeyFile, KeyError)> {
        if s.keys.is_empty() {
            return Ok(None);
        }
        let mut keys = Vec::with_capacity(s.keys.len());
        for k in &s.keys {
            let key = read_key(&k.path).map_err(|e| (k.clone(), e))?;
            log::info!(
                "dkim key {}:{} ({}) from {}",
                k.domain,
                k.selector,
                match key {
                    DkimKey::Rsa(_) => "rsa-sha256",
                    DkimKey::Ed25519(_) => "ed25519-sha256",
                },
                k.path.display()
            );
            keys.push(Key {
                domain: k.domain.clone(),
                selector: k.selector.clone(),
                key: SharedKey(Arc::new(key)),
            });
        }
        Ok(Some(Signer {
            keys,
            sign_from: s.sign_from,
            header_canon: canonicalization(s.header_canon),
            body_canon: canonicalization(s.body_canon),
            domain_from: s.domain_from,
        }))
    }

    /// `--dkim-sign-from` in words, for the start-up log line.
    pub fn sources(&self) -> String {
        let f = self.sign_from;
        let names: Vec<&str> = [
            (f.relay_net, "--relay-net clients"),
            (f.auth, "authenticated users"),
            (f.local, "local injection (send, sendmail, maildrop)"),
        ]
        .iter()
        .filter(|(on, _)| *on)
        .map(|(_, n)| *n)
        .collect();
        if names.is_empty() {
            "nobody (--dkim-sign-from none)".into()
        } else {
            names.join(", ")
        }
    }

    /// Whether `--dkim-sign-from` covers mail from this source.
    pub fn signs_for(&self, source: Source) -> bool {
        (self.sign_from.relay_net && source.relay_net)
            || (self.sign_from.auth && source.auth)
            || (self.sign_from.local && source.local)
    }

    /// Signs the uncommitted message in `incoming` when a key's domain
    /// matches: the fields go above everything in the file, before the
    /// commit (and so before the 250 or `send`'s exit 0). A message that
    /// cannot be signed (no `From:`) goes unsigned, logged; only a spool
    /// write error is an `Err`. The caller has checked `signs_for`.
    pub fn sign_incoming(
        &self,
        incoming: &mut crate::spool::Incoming,
        envelope_domain: Option<&str>,
    ) -> std::io::Result<()> {
        let id = incoming.id();
        incoming.prepend_with(|stored| match self.sign(stored, envelope_domain) {
            Ok(Some(fields)) => {
                log::info!("{id} dkim signed");
                Some(fields)
            }
            Ok(None) => {
                log::debug!("{id} dkim: no key for the signing domain, not signed");
                None
            }
            Err(why) => {
                log::warn!("{id} dkim: not signed: {why}");
                None
            }
        })
    }

    /// The `DKIM-Signature` fields (one per key of the signing domain,
    /// CRLF-ended) for a stored message, or `None` when no key's domain
    /// matches. `envelope_domain` is MAIL FROM's domain.
    pub fn sign(
        &self,
        stored: &[u8],
        envelope_domain: Option<&str>,
    ) -> Result<Option<Vec<u8>>, String> {
        let message = crate::smtp::data::as_transmitted(stored);
        let header_end = header_section_end(&message);
        let fields = header_fields(&message[..header_end]);
        let domain = match self.domain_from {
            DomainFrom::Header => from_domain(&fields),
            DomainFrom::Envelope => envelope_domain.map(str::to_ascii_lowercase),
        };
        let Some(keys) = domain.as_deref().and_then(|d| self.keys_for(d)) else {
            return Ok(None);
        };
        let names = signed_names(&fields);
        if names.is_empty() {
            return Err("the message has no From: field".into());
        }
        let mut out = Vec::new();
        for k in keys {
            let sig = DkimSigner::from_key(k.key.clone())
                .domain(k.domain.clone())
                .selector(k.selector.clone())
                .headers(names.iter().copied())
                .header_canonicalization(self.header_canon)
                .body_canonicalization(self.body_canon)
                .sign(&message)
                .map_err(|e| format!("{}:{}: {e}", k.domain, k.selector))?;
            out.extend_from_slice(sig.to_header().as_bytes());
        }
        Ok(Some(out))
    }

    /// The keys of `domain`, or of its nearest parent domain that has
    /// keys (a `d=` that is a parent of the From domain still aligns
    /// under DMARC's relaxed mode, RFC 7489 §3.1.1).
    fn keys_for(&self, domain: &str) -> Option<Vec<&Key>> {
        let mut d = domain.trim_end_matches('.');
        loop {
            let keys: Vec<&Key> = self.keys.iter().filter(|k| k.domain == d).collect();
            if !keys.is_empty() {
                return Some(keys);
            }
            d = d.split_once('.')?.1;
            if !d.contains('.') {
                return None; // never a top-level domain
            }
        }
    }
}

/// Where the header section ends (after its last CRLF), or the end.
fn header_section_end(message: &[u8]) -> usize {
    if message.starts_with(b"\r\n") {
        return 0;
    }
    message
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|p| p + 2)
        .unwrap_or(message.len())
}

/// The fields of a CRLF-ended header section as (name, value), a folded
/// value with its CRLFs (RFC 5322 §2.2.3); a line without a colon is
/// skipped.
fn header_fields(section: &[u8]) -> Vec<(&[u8], &[u8])> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut from = 0;
    while let Some(p) = section[from..].windows(2).position(|w| w == b"\r\n") {
        let end = from + p;
        from = end + 2;
        if matches!(section.get(from), Some(b' ' | b'\t')) {
            continue; // folded: the field goes on
        }
        let field = &section[start..end];
        if let Some(colon) = field.iter().position(|&b| b == b':') {
            out.push((&field[..colon], &field[colon + 1..]));
        }
        start = from;
    }
    out
}

/// The names for `h=`: each field of [`SIGNED_FIELDS`] the message has
/// (mail-auth signs every instance of a named field), then `From` again
/// for the oversigning.
fn signed_names<'a>(fields: &[(&[u8], &[u8])]) -> Vec<&'a str> {
    let present = |n: &str| {
        fields
            .iter()
            .any(|(name, _)| name.trim_ascii().eq_ignore_ascii_case(n.as_bytes()))
    };
    if !present("From") {
        return Vec::new();
    }
    let mut names: Vec<&str> = SIGNED_FIELDS
        .iter()
        .copied()
        .filter(|n| present(n))
        .collect();
    names.push("From");
    names
}

/// The domain of the first address of the first `From:` field, lower case.
fn from_domain(fields: &[(&[u8], &[u8])]) -> Option<String> {
    let (_, value) = fields
        .iter()
        .find(|(name, _)| name.trim_ascii().eq_ignore_ascii_case(b"From"))?;
    let value = String::from_utf8_lossy(value).replace(['\r', '\n'], "");
    let address = crate::admin::header_addresses(&value).into_iter().next()?;
    let (_, domain) = address.rsplit_once('@')?;
    let domain = domain.trim().trim_end_matches('>').to_ascii_lowercase();
    (!domain.is_empty()).then_some(domain)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(h: &[u8]) -> Vec<(&[u8], &[u8])> {
        header_fields(h)
    }

    #[test]
    fn signed_names_oversign_from_and_skip_absent_fields() {
        let h = b"Received: x\r\nFrom: A <a@Example.ORG>\r\nSubject: s\r\nTo: b@c\r\n\r\n";
        assert_eq!(
            signed_names(&fields(h)),
            vec!["From", "Subject", "To", "From"]
        );
        assert!(signed_names(&fields(b"Subject: s\r\n\r\n")).is_empty());
    }

    #[test]
    fn from_domain_is_the_first_address() {
        let h = b"From: \"x, y\" (c@d) <a@Example.ORG>,\r\n b@other.example\r\n\r\n";
        assert_eq!(from_domain(&fields(h)).as_deref(), Some("example.org"));
        assert_eq!(from_domain(&fields(b"From: nobody\r\n\r\n")), None);
    }

    #[test]
    fn folded_fields() {
        let f = fields(b"A: 1\r\n\t2\r\nno colon\r\nB:3\r\n");
        assert_eq!(
            f,
            vec![(&b"A"[..], &b" 1\r\n\t2"[..]), (&b"B"[..], &b"3"[..])]
        );
    }

    /// The cost of signing one 10 KB message (as_transmitted, header
    /// scan, canonicalization, hashes, the signature), RSA-2048 and
    /// Ed25519. Prints figures, asserts nothing about them; run with
    /// `cargo test --release --lib dkim::tests::signing_cost -- --ignored --nocapture`.
    #[test]
    #[ignore]
    fn signing_cost() {
        use rsa::pkcs8::EncodePrivateKey;
        let dir = std::env::temp_dir().join(format!("dkimcost-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let rsa = rsa::RsaPrivateKey::new(&mut rsa::rand_core::OsRng, 2048).unwrap();
        let rsa_pem = rsa.to_pkcs8_pem(rsa::pkcs8::LineEnding::LF).unwrap();
        let ed_der = Ed25519Key::generate_pkcs8().unwrap();
        let ed_pem =
            rsa::pkcs8::der::pem::encode_string("PRIVATE KEY", rsa::pkcs8::LineEnding::LF, &ed_der)
                .unwrap();
        let mut message = b"Received: from x\r\n\tby y; Mon, 30 Nov 2026 00:00:00 +0000\r\n\
From: A <a@example.test>\r\nTo: b@dest.test\r\nSubject: cost\r\n\
Date: Mon, 30 Nov 2026 00:00:00 +0000\r\nMessage-ID: <c@example.test>\r\n\r\n"
            .to_vec();
        while message.len() < 10 * 1024 {
            message
                .extend_from_slice(b"The quick brown fox jumps over the lazy dog, 0123456789.\r\n");
        }
        for (name, pem) in [
            ("rsa-2048", rsa_pem.as_bytes()),
            ("ed25519", ed_pem.as_bytes()),
        ] {
            let path = dir.join(format!("{name}.pem"));
            std::fs::write(&path, pem).unwrap();
            let settings = DkimSettings {
                keys: vec![KeyFile {
                    domain: "example.test".into(),
                    selector: "s".into(),
                    path,
                }],
                ..Default::default()
            };
            let signer = Signer::load(&settings).ok().flatten().unwrap();
            let n = 300;
            for _ in 0..20 {
                signer.sign(&message, None).unwrap().unwrap();
            }
            // the thread's CPU time too: on a loaded machine the wall
            // clock also counts the time other processes ran
            let cpu = || {
                let mut t = libc::timespec {
                    tv_sec: 0,
                    tv_nsec: 0,
                };
                // SAFETY: a valid out-pointer to a timespec
                unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut t) };
                t.tv_sec as f64 * 1e6 + t.tv_nsec as f64 / 1e3
            };
            let (start, cpu_start) = (std::time::Instant::now(), cpu());
            for _ in 0..n {
                signer.sign(&message, None).unwrap().unwrap();
            }
            let wall = start.elapsed().as_secs_f64() * 1e6 / f64::from(n);
            let cpu = (cpu() - cpu_start) / f64::from(n);
            println!(
                "dkim sign {name}: {cpu:.0} us CPU ({wall:.0} us wall) per {} octet message",
                message.len()
            );
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn header_section() {
        assert_eq!(header_section_end(b"A: b\r\n\r\nbody"), 6);
        assert_eq!(header_section_end(b"\r\nbody"), 0);
        assert_eq!(header_section_end(b"A: b\r\n"), 6);
    }
}
