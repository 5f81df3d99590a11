//! The SPIFFE peer verifiers, used by the proxy's mTLS and the control-plane
//! API client alike. SVIDs carry no DNS name, so a server is checked against
//! an expected SPIFFE ID instead of a host name; both sides refuse with a
//! typed reason (`peer::SvidRejection`) that ends up in a metric.

use std::collections::HashMap;
use std::sync::Arc;

use arc_swap::ArcSwap;

use crate::spiffe::{SpiffeId, TrustDomain};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{
    verify_tls12_signature, verify_tls13_signature, CryptoProvider, WebPkiSupportedAlgorithms,
};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ParsedCertificate, WebPkiClientVerifier};
use rustls::{
    CertificateError, DigitallySignedStruct, DistinguishedName, OtherError, RootCertStore,
};

use crate::peer::{accepted_peer, expected_server, SvidRejection};

fn reject(r: SvidRejection) -> rustls::Error {
    rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(r))))
}

/// The handshake-signature methods, alike in both verifier traits: checked
/// with the crypto provider's algorithms, kept in the field `$algs`. Each
/// TLS version's method calls rustls's function of the same name.
macro_rules! signatures_checked_with {
    ($algs:ident) => {
        signatures_checked_with!($algs: verify_tls12_signature, verify_tls13_signature);

        fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
            self.$algs.supported_schemes()
        }
    };
    ($algs:ident: $($check:ident),+) => {$(
        fn $check(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            $check(message, cert, dss, &self.$algs)
        }
    )+};
}

/// Inbound: a client certificate chaining to the bundle, carrying exactly one
/// SPIFFE ID in an accepted trust domain. The IDs of accepted certificates
/// are kept, so a connection learns its peer's ID from [`Self::peer_id`]
/// without parsing the certificate again, and a peer's next connection with
/// the same certificate skips the parse too (the chain is always verified).
#[derive(Debug)]
pub struct SpiffeClientVerifier {
    chain: Arc<dyn ClientCertVerifier>,
    accepted: Arc<[TrustDomain]>,
    verified: ArcSwap<HashMap<Arc<[u8]>, SpiffeId>>,
    algorithms: WebPkiSupportedAlgorithms,
}

/// Distinct accepted client certificates kept; when full, the set starts
/// over (rotated-away certificates would otherwise stay forever).
const MAX_VERIFIED: usize = 1024;

impl SpiffeClientVerifier {
    pub fn new(
        roots: Arc<RootCertStore>,
        accepted: Arc<[TrustDomain]>,
        provider: Arc<CryptoProvider>,
    ) -> Result<SpiffeClientVerifier, rustls::server::VerifierBuilderError> {
        let algorithms = provider.signature_verification_algorithms;
        let chain = WebPkiClientVerifier::builder_with_provider(roots, provider)
            // Hints would list every CA; workloads always send their one SVID.
            .clear_root_hint_subjects()
            .build()?;
        Ok(SpiffeClientVerifier {
            chain,
            accepted,
            verified: Default::default(),
            algorithms,
        })
    }

    /// The SPIFFE ID of a client certificate this verifier accepted: kept
    /// from its verification; checked as in the handshake if no longer kept.
    pub fn peer_id(&self, end_entity: &[u8]) -> Result<SpiffeId, SvidRejection> {
        match self.verified.load().get(end_entity) {
            Some(id) => Ok(id.clone()),
            None => accepted_peer(end_entity, &self.accepted),
        }
    }

    fn keep(&self, end_entity: &[u8], id: SpiffeId) {
        let der: Arc<[u8]> = end_entity.into();
        self.verified.rcu(|m| {
            let mut m = if m.len() < MAX_VERIFIED {
                HashMap::clone(m)
            } else {
                HashMap::new()
            };
            m.insert(der.clone(), id.clone());
            m
        });
    }
}

impl ClientCertVerifier for SpiffeClientVerifier {
    fn client_auth_mandatory(&self) -> bool {
        true
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        // The identity checks come first so that a certificate from a foreign
        // CA is reported as what it is (another trust domain), not merely as
        // an unknown issuer. Kept bytes passed them already.
        if self.verified.load().contains_key(end_entity.as_ref()) {
            return self
                .chain
                .verify_client_cert(end_entity, intermediates, now);
        }
        let id = accepted_peer(end_entity, &self.accepted).map_err(reject)?;
        let verified = self
            .chain
            .verify_client_cert(end_entity, intermediates, now)?;
        self.keep(end_entity, id);
        Ok(verified)
    }

    signatures_checked_with!(algorithms);
}

/// Outbound: the server's chain verified with webpki against the bundle, and
/// its SPIFFE ID equal to the one expected for this destination.
#[derive(Debug)]
pub struct SpiffeServerVerifier {
    roots: Arc<RootCertStore>,
    expected: SpiffeId,
    algorithms: WebPkiSupportedAlgorithms,
}

impl SpiffeServerVerifier {
    pub fn new(
        roots: Arc<RootCertStore>,
        expected: SpiffeId,
        provider: Arc<CryptoProvider>,
    ) -> SpiffeServerVerifier {
        SpiffeServerVerifier {
            roots,
            expected,
            algorithms: provider.signature_verification_algorithms,
        }
    }
}

impl ServerCertVerifier for SpiffeServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        expected_server(end_entity, &self.expected).map_err(reject)?;
        let cert = ParsedCertificate::try_from(end_entity)?;
        rustls::client::verify_server_cert_signed_by_trust_anchor(
            &cert,
            &self.roots,
            intermediates,
            now,
            self.algorithms.all,
        )?;
        Ok(ServerCertVerified::assertion())
    }

    signatures_checked_with!(algorithms);
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair, SanType};
    use std::time::Duration;

    struct Ca {
        der: CertificateDer<'static>,
        issuer: Issuer<'static, KeyPair>,
    }

    fn ca() -> Ca {
        let mut p = CertificateParams::default();
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let key = KeyPair::generate().unwrap();
        let der = p.self_signed(&key).unwrap().der().clone();
        Ca {
            der,
            issuer: Issuer::new(p, key),
        }
    }

    fn leaf(ca: &Ca, uri: &str) -> CertificateDer<'static> {
        let mut p = CertificateParams::default();
        p.subject_alt_names = vec![SanType::URI(uri.try_into().unwrap())];
        p.not_after = time::OffsetDateTime::now_utc() + time::Duration::hours(1);
        p.signed_by(&KeyPair::generate().unwrap(), &ca.issuer)
            .unwrap()
            .der()
            .clone()
    }

    fn verifier(ca: &Ca) -> SpiffeClientVerifier {
        let mut roots = RootCertStore::empty();
        roots.add(ca.der.clone()).unwrap();
        let accepted: Arc<[TrustDomain]> = Arc::new([TrustDomain::new("td.example").unwrap()]);
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        SpiffeClientVerifier::new(Arc::new(roots), accepted, provider).unwrap()
    }

    fn reason(e: rustls::Error) -> &'static str {
        match e {
            rustls::Error::InvalidCertificate(CertificateError::Other(o)) => {
                o.0.downcast_ref::<SvidRejection>().unwrap().reason()
            }
            rustls::Error::InvalidCertificate(CertificateError::Expired)
            | rustls::Error::InvalidCertificate(CertificateError::ExpiredContext { .. }) => {
                "expired"
            }
            e => panic!("unexpected {e:?}"),
        }
    }

    #[test]
    fn an_accepted_client_keeps_its_id_and_is_still_chain_checked_each_time() {
        let ca = ca();
        let v = verifier(&ca);
        let good = leaf(&ca, "spiffe://td.example/ns/a/sa/api");
        v.verify_client_cert(&good, &[], UnixTime::now()).unwrap();
        assert_eq!(
            v.peer_id(&good).unwrap().as_str(),
            "spiffe://td.example/ns/a/sa/api"
        );
        // Kept, yet the chain (here its validity) is checked again.
        let later = UnixTime::since_unix_epoch(
            Duration::from_secs(time::OffsetDateTime::now_utc().unix_timestamp() as u64)
                + Duration::from_secs(2 * 3600),
        );
        let e = v.verify_client_cert(&good, &[], later).unwrap_err();
        assert_eq!(reason(e), "expired");

        // A refused certificate is never kept: its refusal stays the same.
        let foreign = leaf(&ca, "spiffe://other.example/ns/a/sa/api");
        let e = v
            .verify_client_cert(&foreign, &[], UnixTime::now())
            .unwrap_err();
        assert_eq!(reason(e), "untrusted_domain");
        assert_eq!(
            v.peer_id(&foreign).unwrap_err().reason(),
            "untrusted_domain"
        );
    }
}
