//! SVID issuance against the real control plane: what it signs conforms to
//! the X509-SVID spec, and it alone decides the identity.

use palisade_identity::api::{Attestation, SvidRequest};
use palisade_identity::svid::{check_x509_svid, check_x509_svid_ca, spiffe_id_of};
use palisade_tests::cp::ControlPlane;
use palisade_tests::pki::{bundle_of, chain_of, csr_pem, csr_pem_with, verify_chain};
use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair, KeyUsagePurpose, SanType};
use x509_parser::prelude::*;

const API: &str = "spiffe://cluster.local/ns/shop/sa/api";

#[tokio::test]
async fn issued_svid_conforms_to_the_x509_svid_spec() {
    let cp = ControlPlane::start();
    let before = ::time::OffsetDateTime::now_utc().unix_timestamp();
    let (_key, resp) = cp.issue_svid(API).await;
    let after = ::time::OffsetDateTime::now_utc().unix_timestamp();

    assert_eq!(resp.spiffe_id, API);
    let chain = chain_of(&resp);
    assert_eq!(
        chain.len(),
        1,
        "self-signed mode: the leaf alone, the CA is in the bundle"
    );
    let violations = check_x509_svid(&chain[0]);
    assert!(
        violations.is_empty(),
        "leaf breaks the spec: {violations:?}"
    );

    let (_, leaf) = X509Certificate::from_der(&chain[0]).unwrap();
    let san = leaf
        .subject_alternative_name()
        .unwrap()
        .expect("SAN present");
    assert_eq!(
        san.value.general_names,
        vec![GeneralName::URI(API)],
        "exactly one URI SAN, nothing else"
    );
    let bc = leaf
        .basic_constraints()
        .unwrap()
        .expect("basicConstraints present");
    assert!(!bc.value.ca);
    let ku = leaf.key_usage().unwrap().expect("keyUsage present");
    assert!(ku.critical && ku.value.digital_signature() && !ku.value.key_cert_sign());
    let eku = leaf.extended_key_usage().unwrap().expect("EKU present");
    assert!(eku.value.server_auth && eku.value.client_auth);
    assert!(
        leaf.raw_serial().len() >= 8,
        "serial is random, not a counter"
    );

    let nb = leaf.validity().not_before.timestamp();
    let na = leaf.validity().not_after.timestamp();
    assert!(
        nb <= before && before - nb <= 60,
        "notBefore backdated at most a minute (nb={nb}, issued at {before})"
    );
    assert!(
        na - after <= 3600 && na - before >= 3600 - 60,
        "default TTL is one hour (na={na})"
    );
    assert_eq!(resp.expires_at, na);

    let bundle = bundle_of(&resp);
    assert_eq!(
        bundle,
        cp.bundle(),
        "the answer carries the same bundle as bundle.pem"
    );
    for ca in &bundle {
        let v = check_x509_svid_ca(ca);
        assert!(v.is_empty(), "CA breaks the spec: {v:?}");
        let (_, ca) = X509Certificate::from_der(ca).unwrap();
        let ku = ca.key_usage().unwrap().unwrap();
        assert!(ku.value.key_cert_sign() && ku.value.crl_sign());
        let san = ca.subject_alternative_name().unwrap().unwrap();
        assert_eq!(
            san.value.general_names,
            vec![GeneralName::URI("spiffe://cluster.local")]
        );
        assert!(
            na <= ca.validity().not_after.timestamp(),
            "leaf never outlives its CA"
        );
    }
    verify_chain(&chain, &bundle).expect("leaf verifies against the bundle");
}

#[tokio::test]
async fn svid_ttl_flag_sets_the_lifetime_and_never_passes_the_ca() {
    let cp = ControlPlane::start_with(palisade_tests::cp::ControlPlaneSpec {
        svid_ttl: "2h".into(),
        ca_ttl: "1h".into(),
        ..Default::default()
    });
    let (_key, resp) = cp.issue_svid(API).await;
    let chain = chain_of(&resp);
    let (_, leaf) = X509Certificate::from_der(&chain[0]).unwrap();
    let bundle = cp.bundle();
    let (_, ca) = X509Certificate::from_der(&bundle[0]).unwrap();
    assert_eq!(
        leaf.validity().not_after.timestamp(),
        ca.validity().not_after.timestamp(),
        "a 2h SVID from a 1h CA is cut at the CA's notAfter"
    );
}

#[tokio::test]
async fn issued_san_is_the_tokens_identity_whatever_the_csr_asks() {
    let cp = ControlPlane::start();
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(vec!["evil.example".into()]).unwrap();
    params.subject_alt_names.push(SanType::URI(
        "spiffe://cluster.local/ns/kube-system/sa/admin"
            .try_into()
            .unwrap(),
    ));
    params.subject_alt_names.push(SanType::URI(
        "spiffe://other.domain/ns/x/sa/y".try_into().unwrap(),
    ));
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "root of all evil");
    let req = SvidRequest {
        csr: csr_pem_with(&key, params),
        attestation: Attestation::JoinToken(cp.join_token(API)),
    };
    let resp = cp
        .client(None)
        .issue(&req)
        .await
        .expect("the request is valid; only its wishes are ignored");

    let leaf_der = &chain_of(&resp)[0];
    assert_eq!(spiffe_id_of(leaf_der).unwrap().as_str(), API);
    let (_, leaf) = X509Certificate::from_der(leaf_der).unwrap();
    let names = &leaf
        .subject_alternative_name()
        .unwrap()
        .unwrap()
        .value
        .general_names;
    assert_eq!(names, &vec![GeneralName::URI(API)], "no extra SANs");
    assert!(
        !leaf.basic_constraints().unwrap().unwrap().value.ca,
        "CA=true was not granted"
    );
    assert!(!leaf.key_usage().unwrap().unwrap().value.key_cert_sign());
    assert!(
        !leaf.subject().to_string().contains("evil"),
        "subject is not taken from the CSR"
    );
    assert!(check_x509_svid(leaf_der).is_empty());
}

#[tokio::test]
async fn csr_whose_signature_does_not_verify_is_rejected_and_counted() {
    let cp = ControlPlane::start();
    let key = KeyPair::generate().unwrap();
    let pem = csr_pem_with(
        &key,
        CertificateParams::new(vec!["aaaaaaaa.example".into()]).unwrap(),
    );
    let mut der = rustls::pki_types::pem::PemObject::from_pem_slice(pem.as_bytes())
        .map(|d: rustls::pki_types::CertificateSigningRequestDer| d.as_ref().to_vec())
        .unwrap();
    let at = der.windows(8).position(|w| w == b"aaaaaaaa").unwrap();
    der[at] = b'b';
    let tampered = format!(
        "-----BEGIN CERTIFICATE REQUEST-----\n{}\n-----END CERTIFICATE REQUEST-----\n",
        base64::Engine::encode(&base64::engine::general_purpose::STANDARD, &der)
    );
    let token = cp.join_token(API);
    let req = SvidRequest {
        csr: tampered,
        attestation: Attestation::JoinToken(token.clone()),
    };
    let err = cp.client(None).issue(&req).await.unwrap_err().to_string();
    assert!(
        err.contains("400") && err.contains("csr_bad_signature"),
        "{err}"
    );
    assert_eq!(
        cp.metric("svid_rejected_total{reason=\"csr_bad_signature\"}"),
        1.0
    );

    // The bad CSR did not burn the single-use token.
    let good = SvidRequest {
        csr: csr_pem(&key),
        attestation: Attestation::JoinToken(token),
    };
    cp.client(None)
        .issue(&good)
        .await
        .expect("token still valid after a refused CSR");
    assert_eq!(cp.metric("svid_issued_total{method=\"join_token\"}"), 1.0);
}

#[test]
fn cert_inspect_prints_identity_and_spec_violations() {
    let cp = ControlPlane::start();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (_key, resp) = rt.block_on(cp.issue_svid(API));
    let svid = cp.work_dir().join("svid.pem");
    std::fs::write(&svid, &resp.svid_chain).unwrap();
    let out = cp.palisadectl(&["cert", "inspect", svid.to_str().unwrap()]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "a conforming SVID exits 0: {text}");
    assert!(
        text.contains(API) && text.contains("conforms") && text.contains("issuer:"),
        "{text}"
    );

    // A certificate without a URI SAN and without key usage is called out.
    let key = KeyPair::generate().unwrap();
    let plain = CertificateParams::new(vec!["web.example".into()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    let bad = cp.work_dir().join("plain.pem");
    std::fs::write(&bad, plain.pem()).unwrap();
    let out = cp.palisadectl(&["cert", "inspect", bad.to_str().unwrap()]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "violations exit 1: {text}");
    assert!(
        text.contains("no URI SAN") && text.contains("keyUsage is missing"),
        "{text}"
    );
}
