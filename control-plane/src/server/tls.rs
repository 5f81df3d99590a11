//! The workload API's TLS: the control plane's own SVID (issued by its own CA,
//! key in memory only), TLS 1.3, and an optional client certificate verified
//! against the current bundle (renewal and /v1/endpoints need one). The
//! admission webhook's TLS: an SVID from the same CA for the Service's DNS
//! name, which the API server verifies against the webhook's `caBundle`.

use std::sync::Arc;

use palisade_identity::api::{CONTROL_PLANE_PATH, SERVER_NAME};
use palisade_policy::SpiffeId;
use rcgen::KeyPair;
use rustls::crypto::ring;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};

use crate::ca::{Authority, CaError};

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error(transparent)]
    Ca(#[from] CaError),
    #[error("building TLS config: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("building client verifier: {0}")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
}

/// A serving config and what it was built from, to know when to rebuild.
pub struct ServingTls {
    pub config: Arc<ServerConfig>,
    pub bundle_sequence: u64,
    pub not_before: i64,
    pub expires_at: i64,
}

impl ServingTls {
    /// Rebuild once the bundle changed or the serving SVID passed half-life.
    pub fn is_stale(&self, bundle_sequence: u64, now: i64) -> bool {
        bundle_sequence != self.bundle_sequence
            || now >= self.not_before + (self.expires_at - self.not_before) / 2
    }
}

/// The control plane's own SPIFFE ID.
pub fn control_plane_id(auth: &Authority) -> SpiffeId {
    auth.trust_domain()
        .id(CONTROL_PLANE_PATH)
        .expect("constant path is a valid SPIFFE path")
}

/// Issues a fresh serving SVID and builds the server config around it.
pub fn build(auth: &Authority) -> Result<ServingTls, TlsError> {
    let set = auth.snapshot();
    let (chain, private, expires_at) = serving_svid(auth, SERVER_NAME)?;

    let mut roots = RootCertStore::empty();
    for ca in set.bundle() {
        roots.add(ca.clone())?;
    }
    let provider = Arc::new(ring::default_provider());
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .allow_unauthenticated()
        .build()?;
    let config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, private)?;
    Ok(serving(config, set.bundle_sequence, expires_at))
}

/// The webhook's config: a serving SVID for `dns`, TLS 1.2 or 1.3 (what the
/// API server's client offers), no client certificate.
pub fn build_webhook(auth: &Authority, dns: &str) -> Result<ServingTls, TlsError> {
    let set = auth.snapshot();
    let (chain, private, expires_at) = serving_svid(auth, dns)?;
    let config = ServerConfig::builder_with_provider(Arc::new(ring::default_provider()))
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(chain, private)?;
    Ok(serving(config, set.bundle_sequence, expires_at))
}

/// A fresh SVID for the control plane's ID and `dns`: chain, key, notAfter.
fn serving_svid(
    auth: &Authority,
    dns: &str,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>, i64), TlsError> {
    let key = KeyPair::generate().map_err(CaError::from)?;
    let issued = auth.issue(&key, &control_plane_id(auth), &[dns])?;
    let private = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
    Ok((issued.chain, private, issued.expires_at))
}

fn serving(mut config: ServerConfig, bundle_sequence: u64, expires_at: i64) -> ServingTls {
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    ServingTls {
        config: Arc::new(config),
        bundle_sequence,
        not_before: now,
        expires_at,
    }
}
