//! PKCS#10 CSR intake: parse, check the proof of possession (the CSR's
//! signature) and keep only the public key. Requested names and extensions
//! are deliberately dropped here, so nothing downstream can honour them.

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateSigningRequestDer;
use x509_parser::certification_request::X509CertificationRequest;
use x509_parser::prelude::FromDer;
use x509_parser::public_key::PublicKey;

/// A CSR whose signature checked out, reduced to its public key.
#[derive(Debug, Clone)]
pub struct VerifiedCsr {
    pub public_key: rcgen::SubjectPublicKeyInfo,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CsrError {
    #[error("csr is not a PEM `CERTIFICATE REQUEST`: {0}")]
    Pem(String),
    #[error("csr is not a valid PKCS#10 request: {0}")]
    Parse(String),
    #[error("csr signature does not verify: the request was not signed by the key it carries")]
    BadSignature,
    #[error("csr key type is not accepted ({0}); use ECDSA P-256/P-384, Ed25519 or RSA of 2048 bits or more")]
    UnsupportedKey(String),
}

impl CsrError {
    /// Short label for metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            CsrError::Pem(_) | CsrError::Parse(_) => "csr_malformed",
            CsrError::BadSignature => "csr_bad_signature",
            CsrError::UnsupportedKey(_) => "csr_unsupported_key",
        }
    }
}

/// Parses a PEM CSR and verifies its self-signature.
pub fn verify_csr_pem(pem: &str) -> Result<VerifiedCsr, CsrError> {
    let der = CertificateSigningRequestDer::from_pem_slice(pem.as_bytes())
        .map_err(|e| CsrError::Pem(e.to_string()))?;
    verify_csr_der(der.as_ref())
}

/// Parses a DER CSR and verifies its self-signature.
pub fn verify_csr_der(der: &[u8]) -> Result<VerifiedCsr, CsrError> {
    let (rest, csr) =
        X509CertificationRequest::from_der(der).map_err(|e| CsrError::Parse(e.to_string()))?;
    if !rest.is_empty() {
        return Err(CsrError::Parse(format!("{} trailing bytes", rest.len())));
    }
    let spki = &csr.certification_request_info.subject_pki;
    match spki.parsed() {
        Ok(PublicKey::EC(_)) | Ok(PublicKey::Unknown(_)) => {}
        Ok(PublicKey::RSA(rsa)) => {
            let bits = rsa.key_size();
            if bits < 2048 {
                return Err(CsrError::UnsupportedKey(format!("RSA {bits} bits")));
            }
        }
        Ok(other) => {
            return Err(CsrError::UnsupportedKey(
                format!("{other:?}").chars().take(40).collect(),
            ))
        }
        Err(e) => return Err(CsrError::Parse(e.to_string())),
    }
    csr.verify_signature().map_err(|_| CsrError::BadSignature)?;
    // rcgen recognises exactly the key types it can put into a certificate
    // (P-256, P-384, Ed25519, RSA); anything else is refused here.
    let public_key = rcgen::SubjectPublicKeyInfo::from_der(spki.raw)
        .map_err(|e| CsrError::UnsupportedKey(e.to_string()))?;
    Ok(VerifiedCsr { public_key })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{CertificateParams, KeyPair};

    #[test]
    fn csr_signed_by_its_own_key_verifies() {
        let key = KeyPair::generate().unwrap();
        let csr = CertificateParams::new(vec!["x.example".into()])
            .unwrap()
            .serialize_request(&key)
            .unwrap();
        verify_csr_pem(&csr.pem().unwrap()).unwrap();
    }

    #[test]
    fn tampered_csr_fails_signature_check() {
        let key = KeyPair::generate().unwrap();
        let csr = CertificateParams::new(vec!["aaaa.example".into()])
            .unwrap()
            .serialize_request(&key)
            .unwrap();
        let mut der = csr.der().to_vec();
        let pos = der.windows(4).position(|w| w == b"aaaa").unwrap();
        der[pos] = b'b';
        assert_eq!(verify_csr_der(&der).unwrap_err(), CsrError::BadSignature);
    }

    #[test]
    fn garbage_is_a_parse_error() {
        assert!(matches!(verify_csr_pem("hello"), Err(CsrError::Pem(_))));
        assert!(matches!(
            verify_csr_der(b"\x30\x03abc"),
            Err(CsrError::Parse(_))
        ));
    }
}
