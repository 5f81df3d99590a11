//! X.509-SVID inspection: the SPIFFE ID a certificate carries, the ways a
//! leaf or a signing certificate breaks the X509-SVID spec, chain
//! verification against a trust bundle, and PEM helpers.

use std::sync::Arc;

use crate::spiffe::{SpiffeId, SpiffeIdError};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::RootCertStore;
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::FromDer;

/// Why a certificate does not name exactly one valid SPIFFE ID, or why PEM
/// input could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SvidError {
    #[error("cannot parse certificate: {0}")]
    Parse(String),
    #[error("certificate has no URI SAN, so it names no SPIFFE ID")]
    NoUriSan,
    #[error("certificate has {0} URI SANs; an X509-SVID carries exactly one")]
    MultipleUriSans(usize),
    #[error("URI SAN is not a valid SPIFFE ID: {0}")]
    BadSpiffeId(#[from] SpiffeIdError),
    #[error("bad PEM: {0}")]
    Pem(String),
    #[error("no {0} found in PEM input")]
    EmptyPem(&'static str),
}

/// Parses a DER certificate, mapping failures (including trailing bytes) to
/// `SvidError::Parse`.
pub fn parse_cert(cert_der: &[u8]) -> Result<X509Certificate<'_>, SvidError> {
    let (rest, cert) =
        X509Certificate::from_der(cert_der).map_err(|e| SvidError::Parse(e.to_string()))?;
    if !rest.is_empty() {
        return Err(SvidError::Parse(format!(
            "{} trailing bytes after the certificate",
            rest.len()
        )));
    }
    Ok(cert)
}

/// Every URI SAN of a parsed certificate.
fn uri_sans<'a>(cert: &'a X509Certificate<'_>) -> Result<Vec<&'a str>, SvidError> {
    let san = cert
        .subject_alternative_name()
        .map_err(|e| SvidError::Parse(e.to_string()))?;
    Ok(san
        .map(|ext| {
            ext.value
                .general_names
                .iter()
                .filter_map(|n| match n {
                    GeneralName::URI(u) => Some(*u),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default())
}

/// The SPIFFE ID of an X509-SVID: exactly one URI SAN that parses as a SPIFFE ID.
pub fn spiffe_id_of(cert_der: &[u8]) -> Result<SpiffeId, SvidError> {
    let cert = parse_cert(cert_der)?;
    spiffe_id_of_parsed(&cert)
}

/// [`spiffe_id_of`] for an already parsed certificate.
pub fn spiffe_id_of_parsed(cert: &X509Certificate<'_>) -> Result<SpiffeId, SvidError> {
    match uri_sans(cert)?.as_slice() {
        [] => Err(SvidError::NoUriSan),
        [one] => Ok(SpiffeId::parse(one)?),
        many => Err(SvidError::MultipleUriSans(many.len())),
    }
}

/// Ways a leaf certificate breaks the X509-SVID spec; empty when it conforms.
/// Validity is checked against the current time.
pub fn check_x509_svid(cert_der: &[u8]) -> Vec<String> {
    let cert = match parse_cert(cert_der) {
        Ok(c) => c,
        Err(e) => return vec![e.to_string()],
    };
    let mut v = Vec::new();
    match spiffe_id_of_parsed(&cert) {
        Ok(id) if id.path().is_empty() => {
            v.push(format!("leaf SPIFFE ID {id} has no path; only signing certificates may name a bare trust domain"))
        }
        Ok(_) => {}
        Err(e) => v.push(e.to_string()),
    }
    match cert.basic_constraints() {
        Ok(Some(bc)) if bc.value.ca => {
            v.push("basicConstraints has cA=true; a leaf SVID must set cA=false".into())
        }
        Ok(Some(_)) => {}
        Ok(None) => v.push("basicConstraints is missing; a leaf SVID must set cA=false".into()),
        Err(e) => v.push(format!("basicConstraints: {e}")),
    }
    if let Some(why) = self_signed(&cert) {
        v.push(why);
    }
    match cert.key_usage() {
        Ok(Some(ku)) => {
            if !ku.critical {
                v.push("keyUsage is not marked critical".into());
            }
            if !ku.value.digital_signature() {
                v.push("keyUsage lacks digitalSignature".into());
            }
            if ku.value.key_cert_sign() {
                v.push("keyUsage has keyCertSign, which a leaf must not have".into());
            }
            if ku.value.crl_sign() {
                v.push("keyUsage has cRLSign, which a leaf must not have".into());
            }
        }
        Ok(None) => {
            v.push("keyUsage is missing; a leaf needs digitalSignature, marked critical".into())
        }
        Err(e) => v.push(format!("keyUsage: {e}")),
    }
    match cert.extended_key_usage() {
        Ok(Some(eku)) => {
            if !eku.value.server_auth {
                v.push("extendedKeyUsage lacks serverAuth".into());
            }
            if !eku.value.client_auth {
                v.push("extendedKeyUsage lacks clientAuth".into());
            }
        }
        Ok(None) => {}
        Err(e) => v.push(format!("extendedKeyUsage: {e}")),
    }
    check_validity(&cert, &mut v);
    v
}

/// Ways a signing (CA) certificate breaks the X509-SVID spec; empty when it conforms.
pub fn check_x509_svid_ca(cert_der: &[u8]) -> Vec<String> {
    let cert = match parse_cert(cert_der) {
        Ok(c) => c,
        Err(e) => return vec![e.to_string()],
    };
    let mut v = Vec::new();
    match uri_sans(&cert) {
        Ok(uris) => match uris.as_slice() {
            [] => {}
            [one] => match SpiffeId::parse(one) {
                Ok(id) if !id.path().is_empty() => {
                    v.push(format!("signing certificate SPIFFE ID {id} has a path; it must name only the trust domain"))
                }
                Ok(_) => {}
                Err(e) => v.push(format!("URI SAN is not a valid SPIFFE ID: {e}")),
            },
            many => v.push(format!("signing certificate has {} URI SANs; at most one is allowed", many.len())),
        },
        Err(e) => v.push(e.to_string()),
    }
    match cert.basic_constraints() {
        Ok(Some(bc)) if bc.value.ca => {}
        Ok(_) => v.push("basicConstraints must be present with cA=true".into()),
        Err(e) => v.push(format!("basicConstraints: {e}")),
    }
    match cert.key_usage() {
        Ok(Some(ku)) => {
            if !ku.critical {
                v.push("keyUsage is not marked critical".into());
            }
            if !ku.value.key_cert_sign() {
                v.push("keyUsage lacks keyCertSign".into());
            }
        }
        Ok(None) => v.push("keyUsage is missing; a signing certificate needs keyCertSign".into()),
        Err(e) => v.push(format!("keyUsage: {e}")),
    }
    check_validity(&cert, &mut v);
    v
}

/// Why a leaf vouches for itself, if it does: its own key verifies its
/// signature, or it names itself as its issuer. Such a leaf conforms in
/// every field yet chains to no trust domain's CA.
fn self_signed(cert: &X509Certificate<'_>) -> Option<String> {
    let own_key = cert.verify_signature(None).is_ok();
    let self_issued = cert.issuer() == cert.subject();
    let what = match (own_key, self_issued) {
        (true, _) => "self-signed: its own key verifies its signature",
        (false, true) => "self-issued: its issuer is its own subject",
        (false, false) => return None,
    };
    Some(format!(
        "{what}; a leaf SVID must be signed by a CA of its trust domain"
    ))
}

/// Verifies `chain` (leaf first, then intermediates) against the CA
/// certificates of a trust bundle, as an mTLS peer would: path building,
/// signatures, validity now and key usage.
pub fn verify_chain(
    chain: &[CertificateDer<'static>],
    bundle: &[CertificateDer<'static>],
) -> Result<(), String> {
    let (leaf, intermediates) = chain.split_first().ok_or("no certificate")?;
    let mut roots = RootCertStore::empty();
    for ca in bundle {
        roots.add(ca.clone()).map_err(|e| e.to_string())?;
    }
    let verifier = WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        Arc::new(rustls::crypto::ring::default_provider()),
    )
    .build()
    .map_err(|e| e.to_string())?;
    verifier
        .verify_client_cert(leaf, intermediates, UnixTime::now())
        .map(|_| ())
        .map_err(|e| e.to_string())
}

fn check_validity(cert: &X509Certificate<'_>, v: &mut Vec<String>) {
    let now = time::OffsetDateTime::now_utc();
    let validity = cert.validity();
    if validity.not_after.to_datetime() < now {
        v.push(format!("expired at {}", validity.not_after));
    }
    if validity.not_before.to_datetime() > now {
        v.push(format!("not valid before {}", validity.not_before));
    }
}

/// Whether a parsed certificate is a CA (basicConstraints cA=true).
pub fn is_ca(cert: &X509Certificate<'_>) -> bool {
    matches!(cert.basic_constraints(), Ok(Some(bc)) if bc.value.ca)
}

/// Every certificate in a PEM input, in order.
pub fn certs_from_pem(pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, SvidError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| SvidError::Pem(e.to_string()))?;
    if certs.is_empty() {
        return Err(SvidError::EmptyPem("CERTIFICATE"));
    }
    Ok(certs)
}

/// The first private key (PKCS#8, SEC1 or PKCS#1) in a PEM input.
pub fn private_key_from_pem(pem: &[u8]) -> Result<PrivateKeyDer<'static>, SvidError> {
    PrivateKeyDer::from_pem_slice(pem).map_err(|e| match e {
        rustls::pki_types::pem::Error::NoItemsFound => SvidError::EmptyPem("PRIVATE KEY"),
        other => SvidError::Pem(other.to_string()),
    })
}

/// PEM text for a list of DER certificates.
pub fn certs_to_pem<'a>(certs: impl IntoIterator<Item = &'a CertificateDer<'a>>) -> String {
    use base64::Engine;
    let mut out = String::new();
    for c in certs {
        let b64 = base64::engine::general_purpose::STANDARD.encode(c.as_ref());
        out.push_str("-----BEGIN CERTIFICATE-----\n");
        for line in b64.as_bytes().chunks(64) {
            out.push_str(std::str::from_utf8(line).expect("base64 is ASCII"));
            out.push('\n');
        }
        out.push_str("-----END CERTIFICATE-----\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{CertificateParams, KeyPair, SanType};

    fn cert_with_sans(sans: Vec<SanType>) -> Vec<u8> {
        let mut p = CertificateParams::default();
        p.subject_alt_names = sans;
        let key = KeyPair::generate().unwrap();
        p.self_signed(&key).unwrap().der().to_vec()
    }

    fn uri(s: &str) -> SanType {
        SanType::URI(s.try_into().unwrap())
    }

    #[test]
    fn single_uri_san_yields_the_spiffe_id() {
        let der = cert_with_sans(vec![uri("spiffe://cluster.local/ns/a/sa/b")]);
        assert_eq!(
            spiffe_id_of(&der).unwrap().as_str(),
            "spiffe://cluster.local/ns/a/sa/b"
        );
    }

    #[test]
    fn missing_multiple_and_invalid_uri_sans_are_distinguished() {
        let none = cert_with_sans(vec![SanType::DnsName("a.example".try_into().unwrap())]);
        assert_eq!(spiffe_id_of(&none), Err(SvidError::NoUriSan));
        let two = cert_with_sans(vec![uri("spiffe://td/a"), uri("spiffe://td/b")]);
        assert_eq!(spiffe_id_of(&two), Err(SvidError::MultipleUriSans(2)));
        let bad = cert_with_sans(vec![uri("https://td/a")]);
        assert!(matches!(spiffe_id_of(&bad), Err(SvidError::BadSpiffeId(_))));
        assert!(matches!(spiffe_id_of(b"garbage"), Err(SvidError::Parse(_))));
    }

    #[test]
    fn plain_self_signed_cert_breaks_the_leaf_spec_in_named_ways() {
        let der = cert_with_sans(vec![uri("spiffe://td/a")]);
        let v = check_x509_svid(&der);
        assert!(v.iter().any(|s| s.contains("basicConstraints")), "{v:?}");
        assert!(v.iter().any(|s| s.contains("keyUsage is missing")), "{v:?}");
        assert!(v.iter().any(|s| s.starts_with("self-signed")), "{v:?}");
    }

    #[test]
    fn pem_round_trips() {
        let der = cert_with_sans(vec![uri("spiffe://td/a")]);
        let pem = certs_to_pem([&CertificateDer::from(der.clone())]);
        let back = certs_from_pem(pem.as_bytes()).unwrap();
        assert_eq!(back[0].as_ref(), der.as_slice());
        assert_eq!(
            certs_from_pem(b"nothing"),
            Err(SvidError::EmptyPem("CERTIFICATE"))
        );
    }
}
