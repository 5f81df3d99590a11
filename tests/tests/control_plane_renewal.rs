//! Renewal over mTLS, CA persistence across restarts, and CA rotation: during
//! the overlap SVIDs from the old and the new CA both verify against the bundle.

use palisade_identity::api::SvidResponse;
use palisade_identity::bundle::SpiffeBundle;
use palisade_identity::client::{ClientError, ClientIdentity};
use palisade_identity::svid::{certs_from_pem, spiffe_id_of};
use palisade_tests::cp::ControlPlane;
use palisade_tests::pki::{bundle_of, chain_of, csr_pem, identity, verify_chain};
use rcgen::KeyPair;

const API: &str = "spiffe://cluster.local/ns/shop/sa/api";
const DB: &str = "spiffe://cluster.local/ns/shop/sa/db";

/// Asks `cp` to renew, as `who`, for a fresh key.
async fn renew(
    cp: &ControlPlane,
    who: Option<ClientIdentity>,
) -> Result<SvidResponse, ClientError> {
    let csr = csr_pem(&KeyPair::generate().unwrap());
    cp.client(who).renew(&csr).await
}

#[tokio::test]
async fn renewal_over_mtls_keeps_the_identity_of_the_client_certificate() {
    let cp = ControlPlane::start();
    let (key, first) = cp.issue_svid(API).await;
    let new_key = KeyPair::generate().unwrap();
    let renewed = cp
        .client(Some(identity(&first, &key)))
        .renew(&csr_pem(&new_key))
        .await
        .expect("renew");
    assert_eq!(renewed.spiffe_id, API);
    let leaf = &chain_of(&renewed)[0];
    assert_eq!(spiffe_id_of(leaf).unwrap().as_str(), API);
    assert_ne!(leaf, &chain_of(&first)[0], "a new certificate");
    assert!(
        leaf.windows(65).any(|w| w == new_key.public_key_raw()),
        "for the key in the new CSR"
    );
    assert_eq!(cp.metric("svid_issued_total{method=\"renew\"}"), 1.0);

    // The renewed SVID renews in turn: no token needed, ever again.
    let again = renew(&cp, Some(identity(&renewed, &new_key))).await;
    assert_eq!(again.expect("second renewal").spiffe_id, API);
}

#[tokio::test]
async fn renewal_without_a_client_certificate_is_refused_and_counted() {
    let cp = ControlPlane::start();
    let err = renew(&cp, None).await.unwrap_err();
    match err {
        ClientError::Status { status, error, .. } => {
            assert_eq!((status, error.as_str()), (401, "renew_no_client_cert"))
        }
        other => panic!("expected 401, got {other:?}"),
    }
    assert_eq!(
        cp.metric("svid_rejected_total{reason=\"renew_no_client_cert\"}"),
        1.0
    );
    assert_eq!(cp.metric("svid_issued_total{method=\"renew\"}"), 0.0);
}

#[tokio::test]
async fn renewal_with_a_certificate_this_ca_did_not_sign_fails_the_handshake() {
    let cp = ControlPlane::start();
    // Claims the right SPIFFE ID, but nobody in the bundle signed it.
    let key = KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::default();
    params.subject_alt_names = vec![rcgen::SanType::URI(API.try_into().unwrap())];
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    let forged = params.self_signed(&key).unwrap();
    let private = rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into());
    let err = renew(&cp, Some((vec![forged.der().clone()], private)))
        .await
        .unwrap_err();
    assert!(
        matches!(err, ClientError::Connect(..) | ClientError::Http(_)),
        "refused during TLS: {err:?}"
    );
    assert!(cp.metric("api_errors_total{kind=\"tls_handshake\"}") >= 1.0);
}

#[tokio::test]
async fn restart_keeps_the_ca_and_earlier_svids_still_verify_and_renew() {
    let mut cp = ControlPlane::start();
    let bundle_before = cp.bundle_pem();
    let (key, svid) = cp.issue_svid(API).await;
    cp.restart();
    assert_eq!(cp.bundle_pem(), bundle_before, "same CA after restart");
    verify_chain(&chain_of(&svid), &cp.bundle())
        .expect("old SVID verifies against the bundle after restart");
    let renewed = renew(&cp, Some(identity(&svid, &key))).await;
    assert_eq!(renewed.expect("renew after restart").spiffe_id, API);
}

#[tokio::test]
async fn during_rotation_overlap_old_and_new_svids_both_verify_against_the_bundle() {
    let cp = ControlPlane::start();
    let (old_key, old) = cp.issue_svid(API).await;
    let old_ca = cp.bundle();
    assert_eq!(old_ca.len(), 1);

    cp.rotate_ca();
    let (_new_key, new) = cp.issue_svid(DB).await;
    let bundle = bundle_of(&new);
    assert_eq!(
        bundle.len(),
        2,
        "the bundle is the union of the old and the new CA"
    );
    assert!(bundle.contains(&old_ca[0]));
    assert_eq!(
        certs_from_pem(cp.bundle_pem().as_bytes()).unwrap(),
        bundle,
        "bundle.pem follows"
    );
    verify_chain(&chain_of(&old), &bundle).expect("SVID from the old CA verifies");
    verify_chain(&chain_of(&new), &bundle).expect("SVID from the new CA verifies");
    verify_chain(&chain_of(&new), &old_ca).expect_err("the new SVID is signed by a different CA");

    // A workload holding an old-CA SVID renews and gets a new-CA SVID.
    let renewed = renew(&cp, Some(identity(&old, &old_key))).await.unwrap();
    verify_chain(&chain_of(&renewed), &old_ca).expect_err("renewal is signed by the new CA");
    verify_chain(&chain_of(&renewed), &bundle).unwrap();
    assert_eq!(cp.metric("ca_rotations_total"), 1.0);
    assert_eq!(cp.metric("bundle_cas"), 2.0);

    // The SPIFFE bundle endpoint carries both, with a bumped sequence.
    let doc: SpiffeBundle = cp.client(None).bundle().await.unwrap();
    assert_eq!(doc.keys.len(), 2);
    assert!(doc.spiffe_sequence >= 2);
}

#[tokio::test]
async fn retired_ca_leaves_the_bundle_once_its_svids_have_expired() {
    // Tiny SVID TTL so the old CA's last SVID expires within the test.
    let cp = ControlPlane::start_with(palisade_tests::cp::ControlPlaneSpec {
        svid_ttl: "2s".into(),
        ..Default::default()
    });
    let (_k, _old) = cp.issue_svid(API).await;
    cp.rotate_ca();
    assert_eq!(cp.bundle().len(), 2);
    palisade_tests::eventually(
        "old CA to leave the bundle",
        std::time::Duration::from_secs(20),
        || (cp.bundle().len() == 1).then_some(()),
    );
}

#[tokio::test]
async fn spiffe_bundle_endpoint_serves_jwks_with_x509_svid_keys() {
    let cp = ControlPlane::start();
    let doc = cp.client(None).bundle().await.unwrap();
    assert_eq!(doc.keys.len(), 1);
    let k = &doc.keys[0];
    assert_eq!(
        (k.use_.as_str(), k.kty.as_str(), k.crv.as_deref()),
        ("x509-svid", "EC", Some("P-256"))
    );
    assert!(k.x.is_some() && k.y.is_some());
    let der =
        base64::Engine::decode(&base64::engine::general_purpose::STANDARD, &k.x5c[0]).unwrap();
    assert_eq!(
        der,
        cp.bundle()[0].as_ref(),
        "x5c is the CA certificate of bundle.pem"
    );
    assert!(doc.spiffe_refresh_hint > 0 && doc.spiffe_sequence >= 1);
}
