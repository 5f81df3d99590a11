//! Workload-side PKI for tests: CSRs made locally with rcgen, SVID answers
//! turned into a presentable identity, and chain verification against a
//! trust bundle with rustls' own WebPKI verifier.

use std::sync::Arc;

use palisade_control_plane::api::SvidResponse;
use palisade_control_plane::client::ClientIdentity;
use palisade_control_plane::svid::certs_from_pem;
use rcgen::{CertificateParams, KeyPair};
use rustls::crypto::ring;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::RootCertStore;

/// A CSR that asks for nothing: the control plane decides every name.
pub fn csr_pem(key: &KeyPair) -> String {
    csr_pem_with(key, CertificateParams::default())
}

/// A CSR carrying whatever `params` requests (names, CA=true, ...).
pub fn csr_pem_with(key: &KeyPair, params: CertificateParams) -> String {
    params
        .serialize_request(key)
        .expect("serialize CSR")
        .pem()
        .expect("CSR PEM")
}

/// The SVID chain of an answer, leaf first.
pub fn chain_of(resp: &SvidResponse) -> Vec<CertificateDer<'static>> {
    certs_from_pem(resp.svid_chain.as_bytes()).expect("svid_chain parses")
}

/// The bundle of an answer.
pub fn bundle_of(resp: &SvidResponse) -> Vec<CertificateDer<'static>> {
    certs_from_pem(resp.bundle.as_bytes()).expect("bundle parses")
}

/// The issued chain plus its key, ready for mTLS.
pub fn identity(resp: &SvidResponse, key: &KeyPair) -> ClientIdentity {
    (
        chain_of(resp),
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
    )
}

/// Verifies `chain` (leaf first) against `bundle` as an mTLS peer would.
pub fn verify_chain(
    chain: &[CertificateDer<'static>],
    bundle: &[CertificateDer<'static>],
) -> Result<(), String> {
    let mut roots = RootCertStore::empty();
    for ca in bundle {
        roots.add(ca.clone()).map_err(|e| e.to_string())?;
    }
    let verifier = WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        Arc::new(ring::default_provider()),
    )
    .build()
    .map_err(|e| e.to_string())?;
    verifier
        .verify_client_cert(&chain[0], &chain[1..], UnixTime::now())
        .map(|_| ())
        .map_err(|e| e.to_string())
}
