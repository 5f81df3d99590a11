//! Why a peer's certificate is refused as an SVID. Parsing the SPIFFE ID is
//! `svid::spiffe_id_of`; this module adds the peer checks (trust domain,
//! expected server) and gives every refusal its metric reason, because
//! operators read those reasons off the proxy's failure counter.

use crate::spiffe::{SpiffeId, TrustDomain};
use crate::svid::{spiffe_id_of, SvidError};

#[derive(Debug, thiserror::Error)]
pub enum SvidRejection {
    #[error(transparent)]
    NotAnSvid(#[from] SvidError),
    #[error("peer {0} belongs to a trust domain this proxy does not accept")]
    UntrustedDomain(SpiffeId),
    #[error("server presented {got}, expected {expected}")]
    WrongServerIdentity { expected: SpiffeId, got: SpiffeId },
}

impl SvidRejection {
    /// The `reason` label of `tls_handshake_failures_total`.
    pub fn reason(&self) -> &'static str {
        match self {
            SvidRejection::NotAnSvid(SvidError::NoUriSan) => "no_uri_san",
            SvidRejection::NotAnSvid(SvidError::MultipleUriSans(_)) => "multiple_uri_sans",
            SvidRejection::NotAnSvid(SvidError::BadSpiffeId(_)) => "invalid_spiffe_id",
            SvidRejection::NotAnSvid(_) => "bad_encoding",
            SvidRejection::UntrustedDomain(_) => "untrusted_domain",
            SvidRejection::WrongServerIdentity { .. } => "wrong_server_identity",
        }
    }
}

/// The peer's SPIFFE ID, required to be in an accepted trust domain.
pub fn accepted_peer(cert_der: &[u8], accepted: &[TrustDomain]) -> Result<SpiffeId, SvidRejection> {
    let id = spiffe_id_of(cert_der)?;
    if accepted.iter().any(|td| id.is_member_of(td)) {
        Ok(id)
    } else {
        Err(SvidRejection::UntrustedDomain(id))
    }
}

/// The server's SPIFFE ID, required to be exactly `expected`.
pub fn expected_server(cert_der: &[u8], expected: &SpiffeId) -> Result<(), SvidRejection> {
    let got = spiffe_id_of(cert_der)?;
    if got == *expected {
        Ok(())
    } else {
        Err(SvidRejection::WrongServerIdentity {
            expected: expected.clone(),
            got,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{CertificateParams, KeyPair, SanType};

    fn cert(uris: &[&str]) -> Vec<u8> {
        let mut p = CertificateParams::default();
        p.subject_alt_names = uris
            .iter()
            .map(|u| SanType::URI((*u).try_into().unwrap()))
            .collect();
        p.self_signed(&KeyPair::generate().unwrap())
            .unwrap()
            .der()
            .to_vec()
    }

    #[test]
    fn each_refusal_has_its_own_metric_reason() {
        let accepted = [TrustDomain::new("td.example").unwrap()];
        let reason = |der: &[u8]| accepted_peer(der, &accepted).unwrap_err().reason();
        assert_eq!(reason(&cert(&[])), "no_uri_san");
        assert_eq!(
            reason(&cert(&["spiffe://td.example/a", "spiffe://td.example/b"])),
            "multiple_uri_sans"
        );
        assert_eq!(
            reason(&cert(&["https://td.example/a"])),
            "invalid_spiffe_id"
        );
        assert_eq!(
            reason(&cert(&["spiffe://other.example/a"])),
            "untrusted_domain"
        );
        assert_eq!(reason(b"garbage"), "bad_encoding");
        assert_eq!(
            accepted_peer(&cert(&["spiffe://td.example/a"]), &accepted)
                .unwrap()
                .as_str(),
            "spiffe://td.example/a"
        );
    }

    #[test]
    fn a_server_must_present_exactly_the_expected_identity() {
        let want = SpiffeId::parse("spiffe://td.example/ns/a/sa/db").unwrap();
        assert!(expected_server(&cert(&["spiffe://td.example/ns/a/sa/db"]), &want).is_ok());
        let err = expected_server(&cert(&["spiffe://td.example/ns/a/sa/evil"]), &want).unwrap_err();
        assert_eq!(err.reason(), "wrong_server_identity");
    }
}
