//! The SPIFFE peer verifiers, used by the proxy's mTLS and the control-plane
//! API client alike. SVIDs carry no DNS name, so a server is checked against
//! an expected SPIFFE ID instead of a host name; both sides refuse with a
//! typed reason (`peer::SvidRejection`) that ends up in a metric.

use std::sync::Arc;

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
/// SPIFFE ID in an accepted trust domain.
#[derive(Debug)]
pub struct SpiffeClientVerifier {
    chain: Arc<dyn ClientCertVerifier>,
    accepted: Arc<[TrustDomain]>,
    algorithms: WebPkiSupportedAlgorithms,
}

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
            algorithms,
        })
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
        // an unknown issuer.
        accepted_peer(end_entity, &self.accepted).map_err(reject)?;
        self.chain
            .verify_client_cert(end_entity, intermediates, now)
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
