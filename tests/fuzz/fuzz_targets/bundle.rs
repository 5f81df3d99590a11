//! Trust bundles from any bytes: the SPIFFE bundle document (JSON, a JWKS
//! with `x5c`) and the PEM bundle the sidecar loads. Neither panics; a
//! document that parses prints and parses back the same; each certificate in
//! it is inspected, and a bundle rebuilt from it parses back the same; PEM
//! certificates round-trip through `certs_to_pem`.
#![no_main]

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use libfuzzer_sys::fuzz_target;
use palisade_identity::bundle::{spiffe_bundle, SpiffeBundle};
use palisade_identity::svid::{
    certs_from_pem, certs_to_pem, check_x509_svid_ca, parse_cert, spiffe_id_of,
};
use palisade_proxy::tls::Bundle;
use rustls_pki_types::CertificateDer;

/// Inspect one anchor the way the tools do; none of it may panic.
fn inspect(der: &CertificateDer<'_>) {
    if parse_cert(der).is_err() {
        return;
    }
    let _ = spiffe_id_of(der);
    check_x509_svid_ca(der);
    if let Ok(rebuilt) = spiffe_bundle(std::slice::from_ref(der), 1, 300) {
        round_trip(&rebuilt);
    }
}

fn round_trip(doc: &SpiffeBundle) {
    let json = serde_json::to_value(doc).expect("a bundle serializes");
    let back: SpiffeBundle = serde_json::from_value(json.clone())
        .unwrap_or_else(|e| panic!("a printed bundle does not parse: {e}\n{json}"));
    assert_eq!(
        serde_json::to_value(&back).unwrap(),
        json,
        "bundle JSON round trip"
    );
}

fuzz_target!(|data: &[u8]| {
    if let Ok(doc) = serde_json::from_slice::<SpiffeBundle>(data) {
        round_trip(&doc);
        for key in &doc.keys {
            for x5c in &key.x5c {
                if let Ok(der) = STANDARD.decode(x5c) {
                    inspect(&CertificateDer::from(der));
                }
            }
        }
    }
    if let Ok(certs) = certs_from_pem(data) {
        for c in &certs {
            inspect(c);
        }
        let again = certs_from_pem(certs_to_pem(&certs).as_bytes()).expect("printed PEM parses");
        assert_eq!(again, certs, "PEM round trip");
        if let Ok(text) = std::str::from_utf8(data) {
            let _ = Bundle::from_pem(text);
        }
    }
});
