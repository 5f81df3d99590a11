//! The CA as a library: persistence in the state directory, rotation and the
//! bundle it forms, without a server in the way.

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use palisade_control_plane::ca::{Authority, CaStatus};
use palisade_identity::svid::{check_x509_svid, check_x509_svid_ca};
use palisade_policy::{SpiffeId, TrustDomain};
use rcgen::KeyPair;

fn open(dir: &std::path::Path) -> Authority {
    let td = TrustDomain::new("cluster.local").unwrap();
    Authority::open(
        td,
        dir,
        Duration::from_secs(86_400),
        Duration::from_secs(3600),
        None,
    )
    .unwrap()
}

fn id() -> SpiffeId {
    SpiffeId::parse("spiffe://cluster.local/ns/a/sa/b").unwrap()
}

#[test]
fn first_open_creates_a_private_state_dir_and_reopen_keeps_the_ca() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("state");
    let serial = open(&dir).snapshot().active().serial_hex.clone();
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&dir), 0o700);
    for f in [
        "bundle.pem",
        "ca/1.key.pem",
        "ca/1.crt.pem",
        "ca/index.json",
    ] {
        assert_eq!(mode(&dir.join(f)), 0o600, "{f}");
    }
    assert_eq!(
        open(&dir).snapshot().active().serial_hex,
        serial,
        "same CA after reopening"
    );
}

#[test]
fn signing_ca_and_issued_leaf_conform_to_the_spec() {
    let tmp = tempfile::tempdir().unwrap();
    let auth = open(tmp.path());
    let set = auth.snapshot();
    assert!(check_x509_svid_ca(&set.active().cert).is_empty());
    let issued = auth
        .issue(&KeyPair::generate().unwrap(), &id(), &[])
        .unwrap();
    assert!(
        check_x509_svid(&issued.chain[0]).is_empty(),
        "{:?}",
        check_x509_svid(&issued.chain[0])
    );
    assert!(issued.expires_at <= set.active().not_after.unix_timestamp());
}

#[test]
fn rotation_retires_the_old_ca_into_the_bundle_and_survives_reopen() {
    let tmp = tempfile::tempdir().unwrap();
    let auth = open(tmp.path());
    let old = auth.snapshot().active().seq;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let set = rt.block_on(auth.rotate()).unwrap();
    assert_ne!(set.active().seq, old);
    assert_eq!(set.bundle().len(), 2);
    let statuses: Vec<CaStatus> = set.entries().map(|(_, s)| s).collect();
    assert!(statuses
        .iter()
        .any(|s| matches!(s, CaStatus::Retired { .. })));
    let seq = set.bundle_sequence;
    drop(auth);

    let again = open(tmp.path());
    let set2 = again.snapshot();
    assert_eq!(set2.active().seq, set.active().seq);
    assert_eq!(
        set2.bundle().len(),
        2,
        "the retired CA is still trusted after a restart"
    );
    assert_eq!(
        set2.bundle_sequence, seq,
        "the same bundle keeps its sequence across a restart"
    );
}

#[test]
fn corrupt_key_file_is_reported_not_replaced() {
    let tmp = tempfile::tempdir().unwrap();
    drop(open(tmp.path()));
    std::fs::write(
        tmp.path().join("ca/1.key.pem"),
        KeyPair::generate().unwrap().serialize_pem(),
    )
    .unwrap();
    let td = TrustDomain::new("cluster.local").unwrap();
    let err = Authority::open(
        td,
        tmp.path(),
        Duration::from_secs(86_400),
        Duration::from_secs(3600),
        None,
    )
    .err()
    .expect("a key that does not match its certificate must stop the start");
    assert!(
        err.to_string().contains("key does not match certificate"),
        "{err}"
    );
}
