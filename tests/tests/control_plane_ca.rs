//! The CA's life: automatic rotation at half-life, chaining to an upstream
//! CA, and the endpoint map it serves to sidecars.

use std::time::Duration;

use palisade_identity::client::ClientError;
use palisade_identity::svid::check_x509_svid_ca;
use palisade_tests::cp::{ControlPlane, ControlPlaneSpec};
use palisade_tests::eventually;
use palisade_tests::pki::{bundle_of, chain_of, identity, verify_chain};
use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair, KeyUsagePurpose};
use x509_parser::prelude::*;

const API: &str = "spiffe://cluster.local/ns/shop/sa/api";

#[tokio::test]
async fn ca_rotates_by_itself_at_half_life_and_the_old_one_leaves_after_the_overlap() {
    // Successor prepared at 8 s, signing from 11 s, first CA gone from ~14 s.
    let cp = ControlPlane::start_with(ControlPlaneSpec {
        ca_ttl: "16s".into(),
        svid_ttl: "3s".into(),
        ..Default::default()
    });
    let first = cp.bundle();
    assert_eq!(first.len(), 1);

    // At half-life the successor joins the bundle before it signs anything.
    let both = eventually(
        "successor CA in the bundle",
        Duration::from_secs(30),
        || {
            let b = cp.bundle();
            (b.len() == 2).then_some(b)
        },
    );
    assert!(both.contains(&first[0]));
    let (_k, during) = cp.issue_svid(API).await;
    verify_chain(&chain_of(&during), &first)
        .expect("the first CA still signs while its successor propagates");
    verify_chain(&chain_of(&during), &both).unwrap();

    // Then the successor signs: new SVIDs no longer verify against the first CA.
    let mut switched = None;
    for _ in 0..300 {
        let (_k, svid) = cp.issue_svid(API).await;
        if verify_chain(&chain_of(&svid), &first).is_err() {
            switched = Some(svid);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let svid = switched.expect("successor CA started signing");
    verify_chain(&chain_of(&svid), &bundle_of(&svid)).unwrap();

    // Once every SVID of the first CA has expired, it leaves the bundle.
    eventually(
        "first CA to leave the bundle",
        Duration::from_secs(30),
        || {
            let b = cp.bundle();
            (b.len() == 1 && b[0] != first[0]).then_some(())
        },
    );
    assert!(cp.metric("ca_rotations_total") >= 1.0);
}

/// An operator's root CA, written as PEM files in `dir`.
fn upstream_root(dir: &std::path::Path) -> (std::path::PathBuf, std::path::PathBuf, Vec<u8>) {
    let key = KeyPair::generate().unwrap();
    let mut p = CertificateParams::default();
    p.distinguished_name
        .push(rcgen::DnType::CommonName, "Example Corp Root CA");
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let cert = p.self_signed(&key).unwrap();
    let (c, k) = (dir.join("upstream.crt"), dir.join("upstream.key"));
    std::fs::write(&c, cert.pem()).unwrap();
    std::fs::write(&k, key.serialize_pem()).unwrap();
    (c, k, cert.der().to_vec())
}

#[tokio::test]
async fn with_an_upstream_ca_svids_chain_through_a_spiffe_intermediate_to_it() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key, root_der) = upstream_root(dir.path());
    let mut cp = ControlPlane::start_with(ControlPlaneSpec {
        extra_args: vec![
            "--upstream-cert".into(),
            cert.display().to_string(),
            "--upstream-key".into(),
            key.display().to_string(),
        ],
        ..Default::default()
    });
    assert_eq!(cp.bundle().len(), 1);
    assert_eq!(
        cp.bundle()[0].as_ref(),
        root_der.as_slice(),
        "peers trust the upstream root"
    );

    let (k, svid) = cp.issue_svid(API).await;
    let chain = chain_of(&svid);
    assert_eq!(
        chain.len(),
        2,
        "leaf, then the control plane's signing intermediate"
    );
    let violations = check_x509_svid_ca(&chain[1]);
    assert!(
        violations.is_empty(),
        "intermediate breaks the spec: {violations:?}"
    );
    let (_, inter) = X509Certificate::from_der(&chain[1]).unwrap();
    assert!(inter.issuer().to_string().contains("Example Corp Root CA"));
    verify_chain(&chain, &cp.bundle()).expect("leaf verifies up to the upstream root");

    // Renewal and restart work the same; rotation makes a new intermediate.
    let csr = palisade_tests::pki::csr_pem(&KeyPair::generate().unwrap());
    let renewed = cp
        .client(Some(identity(&svid, &k)))
        .renew(&csr)
        .await
        .unwrap();
    assert_eq!(renewed.spiffe_id, API);
    cp.rotate_ca();
    let (_k, after) = cp.issue_svid(API).await;
    assert_ne!(chain_of(&after)[1], chain[1], "a new signing intermediate");
    verify_chain(&chain_of(&after), &cp.bundle()).unwrap();
    cp.restart();
    verify_chain(&chain_of(&after), &cp.bundle()).unwrap();
}

#[test]
fn upstream_key_that_does_not_match_its_certificate_is_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, _key, _) = upstream_root(dir.path());
    let other = dir.path().join("other.key");
    std::fs::write(&other, KeyPair::generate().unwrap().serialize_pem()).unwrap();
    let out = std::process::Command::new(palisade_tests::bin("palisade-control-plane"))
        .arg("--state-dir")
        .arg(dir.path().join("state"))
        .args([
            "--listen",
            &format!("127.0.0.1:{}", palisade_tests::free_port()),
        ])
        .arg("--upstream-cert")
        .arg(&cert)
        .arg("--upstream-key")
        .arg(&other)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("does not belong to"), "{err}");
}

#[tokio::test]
async fn endpoint_map_is_served_to_svid_holders_and_reloaded_when_the_file_changes() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("endpoints.yaml");
    std::fs::write(
        &file,
        "- address: 10.0.0.7:8080\n  identity: spiffe://cluster.local/ns/shop/sa/api\n",
    )
    .unwrap();
    let cp = ControlPlane::start_with(ControlPlaneSpec {
        extra_args: vec!["--endpoints".into(), file.display().to_string()],
        ..Default::default()
    });
    let err = cp.client(None).endpoints().await.unwrap_err();
    assert!(
        matches!(err, ClientError::Status { status: 401, .. }),
        "{err:?}"
    );

    let (k, svid) = cp.issue_svid(API).await;
    let client = cp.client(Some(identity(&svid, &k)));
    let map = client.endpoints().await.unwrap();
    assert_eq!(map.endpoints.len(), 1, "{map:?}\n{}", cp.log());
    assert_eq!(map.version, 1, "{map:?}\n{}", cp.log());
    assert_eq!(map.endpoints[0].address, "10.0.0.7:8080");

    // A broken edit keeps the last good map; a good one bumps the version.
    std::fs::write(
        &file,
        "- address: not-an-address\n  identity: spiffe://cluster.local/x\n",
    )
    .unwrap();
    eventually(
        "the broken edit to be read",
        Duration::from_secs(10),
        || cp.log().contains("endpoints reload failed").then_some(()),
    );
    assert_eq!(client.endpoints().await.unwrap().version, 1);
    std::fs::write(
        &file,
        "- address: 10.0.0.8\n  identity: spiffe://cluster.local/ns/shop/sa/db\n",
    )
    .unwrap();
    let mut version = 0;
    for _ in 0..100 {
        let m = client.endpoints().await.unwrap();
        if m.version > 1 {
            assert_eq!(
                m.endpoints[0].identity,
                "spiffe://cluster.local/ns/shop/sa/db"
            );
            version = m.version;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(version > 1, "reloaded");
}
