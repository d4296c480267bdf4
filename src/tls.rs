//! TLS set-up for STARTTLS (RFC 3207): the server's certificate and key,
//! and what a session or delivery reports about the TLS it got.
//!
//! rustls with its `ring` provider only; the bytes on the wire are the
//! `Channel`'s business. Nothing here holds state after start-up: configs
//! are built once by `app.rs` (a bad file stops the start, exit 66 when it
//! cannot be read, 78 when it holds no usable certificate or key, never a
//! surprise in the middle of a session) and shared behind `Arc`.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// Version and cipher suite of an established TLS session, for logs and
/// the Received header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsInfo {
    /// `TLSv1.3`, `TLSv1.2`.
    pub version: String,
    /// The IANA name, e.g. `TLS13_AES_256_GCM_SHA384`.
    pub cipher: String,
}

impl TlsInfo {
    pub fn of(conn: &rustls::Connection) -> Option<TlsInfo> {
        let version = match conn.protocol_version()? {
            rustls::ProtocolVersion::TLSv1_3 => "TLSv1.3".to_string(),
            rustls::ProtocolVersion::TLSv1_2 => "TLSv1.2".to_string(),
            other => format!("{other:?}"),
        };
        let suite = conn.negotiated_cipher_suite()?.suite();
        let cipher = suite
            .as_str()
            .map(str::to_string)
            .unwrap_or_else(|| format!("{suite:?}"));
        Some(TlsInfo { version, cipher })
    }
}

impl fmt::Display for TlsInfo {
    /// `TLSv1.3/TLS13_AES_256_GCM_SHA384`, the `tls=` value of log lines.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.version, self.cipher)
    }
}

pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Why a certificate, key or CA file cannot be used.
#[derive(Debug)]
pub enum TlsFileError {
    /// The file cannot be read.
    Read { path: PathBuf, source: io::Error },
    /// It was read, but holds no usable certificate or key, or the key
    /// does not fit the certificate.
    Invalid(String),
}

impl fmt::Display for TlsFileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TlsFileError::Read { path, source } => write!(f, "{}: {source}", path.display()),
            TlsFileError::Invalid(why) => f.write_str(why),
        }
    }
}

fn read_file(path: &Path) -> Result<Vec<u8>, TlsFileError> {
    std::fs::read(path).map_err(|source| TlsFileError::Read {
        path: path.to_path_buf(),
        source,
    })
}

/// Reads a PEM certificate chain (leaf first).
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsFileError> {
    parse_certs(path, &read_file(path)?)
}

fn parse_certs(path: &Path, pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, TlsFileError> {
    let bad = |e: &dyn fmt::Display| TlsFileError::Invalid(format!("{}: {e}", path.display()));
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad(&e))?;
    if certs.is_empty() {
        return Err(bad(&"no certificate in the file"));
    }
    Ok(certs)
}

/// The server side of STARTTLS: a certificate chain and its private key
/// (PKCS#8, PKCS#1 or SEC1 PEM), checked against each other now.
pub fn server_config(cert: &Path, key: &Path) -> Result<Arc<rustls::ServerConfig>, TlsFileError> {
    // both read before either is parsed: a file that cannot be read is
    // reported as such, whatever the other holds
    let (cert_pem, key_pem) = (read_file(cert)?, read_file(key)?);
    let certs = parse_certs(cert, &cert_pem)?;
    let key = PrivateKeyDer::from_pem_slice(&key_pem)
        .map_err(|e| TlsFileError::Invalid(format!("{}: {e}", key.display())))?;
    let config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsFileError::Invalid(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| TlsFileError::Invalid(format!("certificate and key do not fit: {e}")))?;
    Ok(Arc::new(config))
}

pub use crate::config::delivery::OutboundTls;

/// The client side of STARTTLS, built once per process: the mode, and
/// the rustls configs a route's own `tls =` may switch to
/// ([`ClientTls::with_mode`]).
#[derive(Debug, Clone)]
pub struct ClientTls {
    pub mode: OutboundTls,
    /// Any certificate (`may`, `encrypt`).
    unverified: Arc<rustls::ClientConfig>,
    /// Roots to verify against (`verify`), when loaded.
    verified: Option<Arc<rustls::ClientConfig>>,
    /// The same roots' verifier, to judge a certificate after an
    /// unverified handshake (MTA-STS `testing`, RFC 8461 §5).
    judge: Option<Arc<rustls::client::WebPkiServerVerifier>>,
    /// DANE (RFC 7672): one hop's TLSA verifier ([`ClientTls::with_dane`]),
    /// used in place of the others.
    dane: Option<Arc<rustls::ClientConfig>>,
}

impl ClientTls {
    /// `may` and `encrypt`: any certificate is accepted. RFC 7435 §1.3:
    /// unauthenticated encryption still beats plaintext, and most MX
    /// certificates would not verify (RFC 3207 §4.1 leaves the decision
    /// to the client).
    pub fn unverified(mode: OutboundTls) -> ClientTls {
        let provider = provider();
        let config = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .expect("the ring provider supports the default TLS versions")
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)))
            .with_no_client_auth();
        ClientTls {
            mode,
            unverified: Arc::new(config),
            verified: None,
            judge: None,
            dane: None,
        }
    }

    /// The same configs under another mode (a route's `tls =`); `verify`
    /// and `implicit` work only when the roots were loaded
    /// ([`ClientTls::verified`]).
    pub fn with_mode(&self, mode: OutboundTls) -> ClientTls {
        ClientTls {
            mode,
            ..self.clone()
        }
    }

    /// DANE (RFC 7672 §2.2): TLS mandatory (as `encrypt`), the certificate
    /// judged by `config`'s TLSA verifier ([`crate::dane::DaneVerifier`]).
    pub fn with_dane(&self, config: Arc<rustls::ClientConfig>) -> ClientTls {
        ClientTls {
            mode: OutboundTls::Encrypt,
            dane: Some(config),
            ..self.clone()
        }
    }

    /// `verify`: roots from `ca_file` (PEM), else the system's.
    pub fn verified(ca_file: Option<&Path>) -> Result<ClientTls, TlsFileError> {
        let mut roots = rustls::RootCertStore::empty();
        match ca_file {
            Some(path) => {
                for c in load_certs(path)? {
                    roots
                        .add(c)
                        .map_err(|e| TlsFileError::Invalid(format!("{}: {e}", path.display())))?;
                }
            }
            None => {
                let found = rustls_native_certs::load_native_certs();
                for e in &found.errors {
                    log::warn!("system CA certificates: {e}");
                }
                let (added, _) = roots.add_parsable_certificates(found.certs);
                if added == 0 {
                    return Err(TlsFileError::Invalid("no system CA certificates found (install ca-certificates, or give --ca-file)".into()));
                }
            }
        }
        let judge = rustls::client::WebPkiServerVerifier::builder_with_provider(
            Arc::new(roots),
            provider(),
        )
        .build()
        .map_err(|e| TlsFileError::Invalid(e.to_string()))?;
        let config = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsFileError::Invalid(e.to_string()))?
            .with_webpki_verifier(judge.clone())
            .with_no_client_auth();
        Ok(ClientTls {
            verified: Some(Arc::new(config)),
            judge: Some(judge),
            ..ClientTls::unverified(OutboundTls::Verify)
        })
    }

    /// Whether a handshake under this mode checks the certificate.
    pub fn verifies(&self) -> bool {
        self.dane.is_some() || matches!(self.mode, OutboundTls::Verify | OutboundTls::Implicit)
    }

    /// The verifying config (roots loaded), for other HTTPS/TLS clients
    /// such as the MTA-STS policy fetch (RFC 8461 §3.3).
    pub fn verified_config(&self) -> Option<Arc<rustls::ClientConfig>> {
        self.verified.clone()
    }

    /// Whether `certs` (the server's chain, leaf first) would pass
    /// `verify` for `name`: chain to the roots, and the name (RFC 8461
    /// §4.2). For logging what an unenforced policy would refuse.
    pub fn judge(&self, certs: &[CertificateDer<'_>], name: &str) -> Result<(), String> {
        use rustls::client::danger::ServerCertVerifier as _;
        let judge = self
            .judge
            .as_ref()
            .ok_or("no CA certificates were loaded")?;
        let (leaf, rest) = certs.split_first().ok_or("no certificate")?;
        let server_name = server_name(name)?;
        judge
            .verify_server_cert(
                leaf,
                rest,
                &server_name,
                &[],
                rustls::pki_types::UnixTime::now(),
            )
            .map(|_| ())
            .map_err(|e| e.to_string())
    }

    /// A client connection for a next hop called `name` (a host name, an
    /// IP address, or a `[literal]`): the name checked under `verify`, and
    /// sent as SNI when it is a host name.
    pub fn connect(&self, name: &str) -> Result<rustls::ClientConnection, String> {
        let server_name = server_name(name)?;
        if let Some(dane) = &self.dane {
            return rustls::ClientConnection::new(dane.clone(), server_name)
                .map_err(|e| e.to_string());
        }
        let config = match self.mode {
            OutboundTls::Verify | OutboundTls::Implicit => self
                .verified
                .clone()
                .ok_or("verify: no CA certificates were loaded")?,
            OutboundTls::May | OutboundTls::Encrypt => self.unverified.clone(),
        };
        rustls::ClientConnection::new(config, server_name).map_err(|e| e.to_string())
    }
}

/// A next hop's name (a host name, an IP address, a `[literal]`) as a
/// TLS server name.
fn server_name(name: &str) -> Result<rustls::pki_types::ServerName<'static>, String> {
    let bare = name.trim_start_matches('[').trim_end_matches(']');
    let bare = bare.strip_prefix("IPv6:").unwrap_or(bare);
    rustls::pki_types::ServerName::try_from(bare.to_string())
        .map_err(|e| format!("{name:?} is not a TLS server name: {e}"))
}

/// The verifier of `may` and `encrypt`: the certificate is not judged,
/// but the handshake signatures still are (so the session key is the
/// holder's of that certificate, whoever it is).
#[derive(Debug)]
struct AnyCertificate(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
