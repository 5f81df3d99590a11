//! CSR intake, PEM or DER: any bytes are refused with a reason or verified,
//! never a panic. A verified CSR can always be signed by the CA, and the
//! certificate it gets certifies exactly the key the CSR proved it holds.
#![no_main]

use std::sync::OnceLock;
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use palisade_control_plane::ca::csr::{verify_csr_der, verify_csr_pem, VerifiedCsr};
use palisade_control_plane::ca::Authority;
use palisade_identity::svid::{parse_cert, spiffe_id_of};
use palisade_policy::{SpiffeId, TrustDomain};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateSigningRequestDer;
use x509_parser::certification_request::X509CertificationRequest;
use x509_parser::prelude::FromDer;

fn authority() -> &'static Authority {
    static CA: OnceLock<Authority> = OnceLock::new();
    CA.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("palisade-fuzz-csr-{}", std::process::id()));
        let ca = Authority::open(
            TrustDomain::new("cluster.local").unwrap(),
            &dir,
            Duration::from_secs(24 * 3600),
            Duration::from_secs(3600),
            None,
        )
        .expect("a fresh CA opens");
        // Issuance needs only what the CA holds in memory.
        let _ = std::fs::remove_dir_all(&dir);
        ca
    })
}

fn check_issued(der: &[u8], csr: &VerifiedCsr) {
    let id = SpiffeId::parse("spiffe://cluster.local/ns/demo/sa/fuzz").unwrap();
    let issued = authority()
        .issue(&csr.public_key, &id, &[])
        .unwrap_or_else(|e| panic!("a verified CSR cannot be signed: {e}"));
    let leaf = &issued.chain[0];
    assert_eq!(spiffe_id_of(leaf).as_ref(), Ok(&id));
    let cert = parse_cert(leaf).expect("the CA's own certificate parses");
    let (_, req) = X509CertificationRequest::from_der(der).expect("it verified, so it parses");
    assert_eq!(
        cert.public_key().subject_public_key.data,
        req.certification_request_info
            .subject_pki
            .subject_public_key
            .data,
        "the certificate carries another key than the CSR"
    );
}

fuzz_target!(|data: &[u8]| {
    if let Ok(csr) = verify_csr_der(data) {
        check_issued(data, &csr);
    }
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(csr) = verify_csr_pem(text) {
        let der = CertificateSigningRequestDer::from_pem_slice(data).expect("it verified");
        check_issued(der.as_ref(), &csr);
    }
});
