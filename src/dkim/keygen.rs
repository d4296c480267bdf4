//! `smtp-relay dkim keygen DOMAIN SELECTOR`: a new private key in a file
//! (PKCS#8 PEM, mode 0600) and the DNS TXT record that publishes its
//! public half (RFC 6376 §3.6.1; Ed25519: RFC 8463 §4.2).

use std::io::{self, Write};
use std::path::{Path, PathBuf};

use base64ct::{Base64, Encoding};
use rsa::pkcs8::{EncodePrivateKey, EncodePublicKey, LineEnding};

/// `--algorithm`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyAlgorithm {
    Rsa,
    Ed25519,
}

/// A parsed `dkim keygen` invocation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Keygen {
    pub domain: String,
    pub selector: String,
    pub algorithm: KeyAlgorithm,
    /// RSA modulus size (`--bits`, default 2048).
    pub bits: usize,
    /// `--out`, default `SELECTOR._domainkey.DOMAIN.pem`.
    pub out: PathBuf,
}

/// Why no key was written.
#[derive(Debug)]
pub enum KeygenError {
    /// The key file cannot be created (exists already, or the directory
    /// is not writable): EX_CANTCREAT is not in our set, so EX_IOERR.
    Create(PathBuf, io::Error),
    /// The generator failed.
    Generate(String),
}

impl std::fmt::Display for KeygenError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            KeygenError::Create(p, e) => write!(f, "{}: {e}", p.display()),
            KeygenError::Generate(why) => write!(f, "key generation failed: {why}"),
        }
    }
}

/// Writes the key (never over an existing file) and returns the TXT
/// record to publish.
pub fn run(k: &Keygen) -> Result<String, KeygenError> {
    // the file first: an existing one is said before seconds of RSA work
    let file = create_private(&k.out).map_err(|e| KeygenError::Create(k.out.clone(), e))?;
    let result = generate(k).and_then(|(pem, record)| {
        write_private(file, pem.as_bytes()).map_err(|e| KeygenError::Create(k.out.clone(), e))?;
        Ok(record)
    });
    if result.is_err() {
        let _ = std::fs::remove_file(&k.out);
    }
    result
}

/// The key's PEM and its TXT record.
fn generate(k: &Keygen) -> Result<(String, String), KeygenError> {
    let (pem, tag, public) = match k.algorithm {
        KeyAlgorithm::Rsa => {
            let key = rsa::RsaPrivateKey::new(&mut rsa::rand_core::OsRng, k.bits)
                .map_err(|e| KeygenError::Generate(e.to_string()))?;
            let pem = key
                .to_pkcs8_pem(LineEnding::LF)
                .map_err(|e| KeygenError::Generate(e.to_string()))?;
            // p= is the SubjectPublicKeyInfo, as opendkim-genkey writes it
            // and every verifier reads it (RFC 6376 §3.6.1)
            let spki = rsa::RsaPublicKey::from(&key)
                .to_public_key_der()
                .map_err(|e| KeygenError::Generate(e.to_string()))?;
            (pem.to_string(), "rsa", spki.as_bytes().to_vec())
        }
        KeyAlgorithm::Ed25519 => {
            let der = mail_auth::common::crypto::Ed25519Key::generate_pkcs8()
                .map_err(|e| KeygenError::Generate(e.to_string()))?;
            let key = mail_auth::common::crypto::Ed25519Key::from_pkcs8_der(&der)
                .map_err(|e| KeygenError::Generate(e.to_string()))?;
            let pem = rsa::pkcs8::der::pem::encode_string("PRIVATE KEY", LineEnding::LF, &der)
                .map_err(|e| KeygenError::Generate(e.to_string()))?;
            // RFC 8463 §4.2: p= is the bare 32-octet public key
            (pem, "ed25519", key.public_key())
        }
    };
    Ok((pem, txt_record(&k.domain, &k.selector, tag, &public)))
}

/// Creates `path` with mode 0600, never replacing a file.
fn create_private(path: &Path) -> io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
}

/// Writes the key, flushed to disk.
fn write_private(mut f: std::fs::File, pem: &[u8]) -> io::Result<()> {
    f.write_all(pem)?;
    f.sync_all()
}

/// `SELECTOR._domainkey.DOMAIN. IN TXT ( "v=DKIM1; k=rsa; p=..." ... )`,
/// the value split into strings of at most 255 octets (RFC 1035 §3.3:
/// one character-string holds 255; RFC 6376 §3.6.2.2: a verifier joins
/// them without spaces).
pub fn txt_record(domain: &str, selector: &str, tag: &str, public: &[u8]) -> String {
    let value = format!("v=DKIM1; k={tag}; p={}", Base64::encode_string(public));
    let strings: Vec<String> = value
        .as_bytes()
        .chunks(255)
        .map(|c| format!("\"{}\"", String::from_utf8_lossy(c)))
        .collect();
    format!(
        "{selector}._domainkey.{domain}. IN TXT ( {} )",
        strings.join(" ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_records_are_split_at_255() {
        let r = txt_record("example.org", "s1", "rsa", &[7u8; 294]);
        assert!(r.starts_with("s1._domainkey.example.org. IN TXT ( \"v=DKIM1; k=rsa; p="));
        let strings: Vec<&str> = r.split('"').skip(1).step_by(2).collect();
        assert_eq!(strings.len(), 2, "{r}");
        assert_eq!(strings[0].len(), 255);
        let joined = strings.concat();
        assert_eq!(
            joined,
            format!("v=DKIM1; k=rsa; p={}", Base64::encode_string(&[7u8; 294]))
        );
    }
}
