//! Workload-side PKI for tests: CSRs made locally with rcgen, SVID answers
//! turned into a presentable identity, and chain verification against a
//! trust bundle (the control plane's, which uses rustls' WebPKI verifier).

use palisade_identity::api::SvidResponse;
use palisade_identity::client::ClientIdentity;
use palisade_identity::svid::certs_from_pem;
use rcgen::{CertificateParams, KeyPair};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

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

pub use palisade_identity::svid::verify_chain;
