//! DANE for SMTP (RFC 7672): TLSA records (RFC 6698) and the rustls
//! certificate verifier that checks a server's chain against them.
//!
//! Which TLSA records count, and what the DNS answers mean (secure,
//! insecure, bogus), is decided in `tls_policy.rs` with the validating
//! resolver of `dns.rs`; this file only matches certificates.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};

/// One TLSA record (RFC 6698 §2.1), as numbers.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Tlsa {
    pub usage: u8,
    pub selector: u8,
    pub matching: u8,
    pub data: Vec<u8>,
}

/// RFC 7672 §3.1.1: DANE-EE, the server's own certificate or key.
pub const DANE_EE: u8 = 3;
/// RFC 7672 §3.1.2: DANE-TA, a trust anchor in the server's chain.
pub const DANE_TA: u8 = 2;

impl Tlsa {
    /// RFC 7672 §3.1.3: PKIX-TA(0) and PKIX-EE(1) are unusable for SMTP
    /// (no agreed roots); unknown selectors and matching types are
    /// unusable too (RFC 6698 §4.1). A set with none usable means
    /// opportunistic TLS (RFC 7672 §2.2).
    pub fn usable(&self) -> bool {
        matches!(self.usage, DANE_EE | DANE_TA)
            && self.selector <= 1
            && self.matching <= 2
            && (self.matching != 0 || !self.data.is_empty())
    }

    /// Whether `cert` (DER) matches: the selected part (RFC 6698 §2.1.3:
    /// 0 the whole certificate, 1 its SubjectPublicKeyInfo) hashed as
    /// the matching type says (§2.1.4: 0 exact, 1 SHA-256, 2 SHA-512).
    pub fn matches(&self, cert: &CertificateDer<'_>) -> bool {
        let selected: Vec<u8> = match self.selector {
            0 => cert.as_ref().to_vec(),
            1 => match webpki::EndEntityCert::try_from(cert) {
                Ok(c) => c.subject_public_key_info().as_ref().to_vec(),
                Err(_) => return false,
            },
            _ => return false,
        };
        let digest = |alg| ring::digest::digest(alg, &selected).as_ref().to_vec();
        let found = match self.matching {
            0 => selected,
            1 => digest(&ring::digest::SHA256),
            2 => digest(&ring::digest::SHA512),
            _ => return false,
        };
        // not secret: a plain comparison is fine
        found == self.data
    }
}

impl std::fmt::Display for Tlsa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {} {} ", self.usage, self.selector, self.matching)?;
        for b in &self.data {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

/// The rustls verifier of a DANE hop: the chain passes when a usable
/// TLSA record matches (RFC 7672 §3). DANE-EE: the leaf matches, its
/// names and dates are not looked at (§3.1.1). DANE-TA: a certificate
/// of the chain matches, and the leaf chains to it with a name that is
/// one of `names` (the MX host, or the next-hop domain, §3.2.2).
#[derive(Debug)]
pub struct DaneVerifier {
    tlsa: Vec<Tlsa>,
    names: Vec<String>,
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl DaneVerifier {
    pub fn new(tlsa: Vec<Tlsa>, names: Vec<String>) -> DaneVerifier {
        DaneVerifier {
            tlsa: tlsa.into_iter().filter(Tlsa::usable).collect(),
            names,
            provider: crate::tls::provider(),
        }
    }

    /// A client config that verifies with this verifier.
    pub fn config(self) -> Result<Arc<rustls::ClientConfig>, String> {
        let provider = self.provider.clone();
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(self))
            .with_no_client_auth();
        Ok(Arc::new(config))
    }

    /// DANE-TA: the chain from `leaf` to a matching certificate of
    /// `chain` (the TA itself must be sent by the server, RFC 7672
    /// §3.1.2), checked by webpki with that certificate as the only root,
    /// and the leaf's name against `names`.
    fn trust_anchor_ok(
        &self,
        leaf: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<(), String> {
        let anchors: Vec<&CertificateDer<'_>> = intermediates
            .iter()
            .filter(|c| self.tlsa.iter().any(|t| t.usage == DANE_TA && t.matches(c)))
            .collect();
        if anchors.is_empty() {
            return Err("no certificate of the chain matches a TLSA record".into());
        }
        let mut roots = rustls::RootCertStore::empty();
        for a in anchors {
            roots.add(a.clone()).map_err(|e| e.to_string())?;
        }
        let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(
            Arc::new(roots),
            self.provider.clone(),
        )
        .build()
        .map_err(|e| e.to_string())?;
        let mut why = String::from("no names to check");
        for name in &self.names {
            let Ok(server_name) = ServerName::try_from(name.clone()) else {
                continue;
            };
            match verifier.verify_server_cert(leaf, intermediates, &server_name, &[], now) {
                Ok(_) => return Ok(()),
                Err(e) => why = e.to_string(),
            }
        }
        Err(why)
    }
}

impl ServerCertVerifier for DaneVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if self
            .tlsa
            .iter()
            .any(|t| t.usage == DANE_EE && t.matches(end_entity))
        {
            return Ok(ServerCertVerified::assertion());
        }
        if self.tlsa.iter().any(|t| t.usage == DANE_TA) {
            return match self.trust_anchor_ok(end_entity, intermediates, now) {
                Ok(()) => Ok(ServerCertVerified::assertion()),
                Err(why) => Err(rustls::Error::General(format!("DANE-TA: {why}"))),
            };
        }
        Err(rustls::Error::General(
            "DANE: the certificate matches no TLSA record".into(),
        ))
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tlsa(usage: u8, selector: u8, matching: u8, data: Vec<u8>) -> Tlsa {
        Tlsa {
            usage,
            selector,
            matching,
            data,
        }
    }

    #[test]
    fn usable_records() {
        assert!(tlsa(3, 1, 1, vec![1]).usable());
        assert!(tlsa(2, 0, 2, vec![1]).usable());
        // RFC 7672 §3.1.3: PKIX usages are not for SMTP
        assert!(!tlsa(0, 0, 1, vec![1]).usable());
        assert!(!tlsa(1, 1, 1, vec![1]).usable());
        assert!(!tlsa(3, 2, 1, vec![1]).usable());
        assert!(!tlsa(3, 1, 3, vec![1]).usable());
    }

    #[test]
    fn matching_types_and_selectors() {
        // not a certificate: selector 1 cannot match, selector 0 can
        let cert = CertificateDer::from(vec![0x30, 0x03, 0x02, 0x01, 0x05]);
        let sha256 = ring::digest::digest(&ring::digest::SHA256, cert.as_ref());
        let sha512 = ring::digest::digest(&ring::digest::SHA512, cert.as_ref());
        assert!(tlsa(3, 0, 0, cert.as_ref().to_vec()).matches(&cert));
        assert!(tlsa(3, 0, 1, sha256.as_ref().to_vec()).matches(&cert));
        assert!(tlsa(3, 0, 2, sha512.as_ref().to_vec()).matches(&cert));
        assert!(!tlsa(3, 0, 1, sha512.as_ref().to_vec()).matches(&cert));
        assert!(!tlsa(3, 1, 1, sha256.as_ref().to_vec()).matches(&cert));
        assert_eq!(tlsa(3, 1, 1, vec![0xab, 1]).to_string(), "3 1 1 ab01");
    }
}
