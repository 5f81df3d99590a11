//! `palisadectl cert inspect` against a real control plane: its SVIDs conform
//! and verify against its bundle (a PEM file, the SPIFFE bundle JSON, or
//! fetched from its URL); a self-signed leaf, a stranger CA's leaf and a leaf
//! of another trust domain are each a finding and exit 1.

use std::path::{Path, PathBuf};
use std::process::Output;

use palisade_identity::svid::certs_to_pem;
use palisade_tests::badcerts::{self_signed_leaf, Leaf, TestCa};
use palisade_tests::cp::ControlPlane;

const API: &str = "spiffe://cluster.local/ns/shop/sa/api";

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

fn leaf_pem(leaf: &Leaf) -> String {
    certs_to_pem(&leaf.chain)
}

/// Runs `palisadectl cert inspect` with `args`; stdout and the exit code.
fn inspect(cp: &ControlPlane, args: &[&str]) -> (String, Option<i32>) {
    let mut all = vec!["cert", "inspect"];
    all.extend_from_slice(args);
    let Output {
        status,
        stdout,
        stderr,
    } = cp.palisadectl(&all);
    let text = String::from_utf8_lossy(&stdout).into_owned();
    let err = String::from_utf8_lossy(&stderr);
    (format!("{text}{err}"), status.code())
}

fn url(cp: &ControlPlane) -> String {
    format!("https://{}/v1/bundle", cp.addr())
}

/// An SVID for `API` issued by `cp`, in `svid.pem` in its work directory.
fn issued_svid(cp: &ControlPlane, rt: &tokio::runtime::Runtime) -> PathBuf {
    let (_key, resp) = rt.block_on(cp.issue_svid(API));
    write(cp.work_dir(), "svid.pem", &resp.svid_chain)
}

/// The arguments that check `leaf` against the bundle fetched from `url`
/// (trusting `pem` for the fetch), then `more`.
fn with_fetched_bundle<'a>(
    leaf: &'a str,
    url: &'a str,
    pem: &'a str,
    more: &[&'a str],
) -> Vec<&'a str> {
    let mut args = vec![leaf, "--bundle", url, "--bootstrap-bundle", pem];
    args.extend_from_slice(more);
    args
}

#[test]
fn a_control_plane_svid_verifies_against_its_bundle_from_a_file_the_json_and_the_url() {
    let cp = ControlPlane::start();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let svid = issued_svid(&cp, &rt);
    let doc = rt
        .block_on(cp.client(None).bundle())
        .expect("GET /v1/bundle");
    let json = write(
        cp.work_dir(),
        "bundle.json",
        &serde_json::to_string(&doc).unwrap(),
    );
    let pem = cp.bundle_path();
    let (svid, json, pem) = (
        svid.to_str().unwrap(),
        json.to_str().unwrap(),
        pem.to_str().unwrap(),
    );
    let url = url(&cp);
    for args in [
        vec![svid, "--bundle", pem],
        vec![svid, "--bundle", json],
        with_fetched_bundle(svid, &url, pem, &[]),
        with_fetched_bundle(svid, &url, pem, &["--trust-domain", "cluster.local"]),
    ] {
        let (text, code) = inspect(&cp, &args);
        assert_eq!(code, Some(0), "{args:?}: {text}");
        assert!(text.contains("conforms"), "{text}");
        assert!(
            text.contains("the chain verifies against the bundle")
                && text.contains("trust domain cluster.local, as expected")
                && !text.contains("finding"),
            "{args:?}: {text}"
        );
    }
}

#[test]
fn a_self_signed_leaf_is_flagged_with_and_without_a_bundle() {
    let cp = ControlPlane::start();
    let leaf = write(cp.work_dir(), "self.pem", &leaf_pem(&self_signed_leaf(API)));
    let leaf = leaf.to_str().unwrap();
    let (text, code) = inspect(&cp, &[leaf]);
    assert_eq!(code, Some(1), "{text}");
    assert!(
        text.contains("self-signed: its own key verifies its signature")
            && !text.contains("conforms"),
        "{text}"
    );

    let pem = cp.bundle_path();
    let (text, code) = inspect(&cp, &[leaf, "--bundle", pem.to_str().unwrap()]);
    assert_eq!(code, Some(1), "{text}");
    assert!(text.contains("self-signed"), "{text}");
    assert!(
        text.contains("finding: the chain does not verify against the bundle"),
        "{text}"
    );
}

#[test]
fn a_leaf_from_a_stranger_ca_is_flagged_against_the_control_planes_bundle() {
    let cp = ControlPlane::start();
    // Same trust domain name, same SPIFFE ID, a CA the control plane never had.
    let stranger = TestCa::new("cluster.local").leaf(&[API]);
    let leaf = write(cp.work_dir(), "stranger.pem", &leaf_pem(&stranger));
    let leaf = leaf.to_str().unwrap();
    let pem = cp.bundle_path();
    let (pem, url) = (pem.to_str().unwrap(), url(&cp));
    for args in [
        vec![leaf, "--bundle", pem],
        with_fetched_bundle(leaf, &url, pem, &[]),
    ] {
        let (text, code) = inspect(&cp, &args);
        assert_eq!(code, Some(1), "{args:?}: {text}");
        assert!(
            text.contains("finding: the chain does not verify against the bundle"),
            "{args:?}: {text}"
        );
    }
}

#[test]
fn a_control_plane_svid_held_to_another_trust_domain_is_flagged() {
    let cp = ControlPlane::start();
    let svid = issued_svid(&cp, &tokio::runtime::Runtime::new().unwrap());
    let pem = cp.bundle_path();
    let (svid, pem) = (svid.to_str().unwrap(), pem.to_str().unwrap());
    let url = url(&cp);
    let held_to = ["--trust-domain", "prod.example"];
    for args in [
        [&[svid, "--bundle", pem][..], &held_to].concat(),
        with_fetched_bundle(svid, &url, pem, &held_to),
    ] {
        let (text, code) = inspect(&cp, &args);
        assert_eq!(code, Some(1), "{args:?}: {text}");
        assert!(
            text.contains("ok:      the chain verifies")
                && text.contains(
                    "finding: the leaf is in trust domain cluster.local, not prod.example"
                ),
            "{args:?}: {text}"
        );
    }
}

#[test]
fn a_leaf_of_another_trust_domain_is_flagged_even_when_its_chain_verifies() {
    let cp = ControlPlane::start();
    let dir = cp.work_dir();
    // A CA that claims cluster.local signs a leaf of evil.example.
    let ca = TestCa::new("cluster.local");
    let evil = ca.leaf(&["spiffe://evil.example/ns/shop/sa/api"]);
    let leaf = write(dir, "evil.pem", &leaf_pem(&evil));
    let bundle = write(dir, "ca.pem", &certs_to_pem([&ca.cert]));
    let (leaf, bundle) = (leaf.to_str().unwrap(), bundle.to_str().unwrap());

    let (text, code) = inspect(&cp, &[leaf, "--bundle", bundle]);
    assert_eq!(code, Some(1), "{text}");
    assert!(text.contains("ok:      the chain verifies"), "{text}");
    assert!(
        text.contains("finding: the leaf is in trust domain evil.example, not cluster.local"),
        "{text}"
    );

    // An explicit --trust-domain is what the leaf is held to.
    let (text, code) = inspect(
        &cp,
        &[leaf, "--bundle", bundle, "--trust-domain", "prod.example"],
    );
    assert_eq!(code, Some(1), "{text}");
    assert!(text.contains("not prod.example"), "{text}");
    let (text, _) = inspect(
        &cp,
        &[leaf, "--bundle", bundle, "--trust-domain", "evil.example"],
    );
    assert!(
        text.contains("ok:      trust domain evil.example, as expected")
            && !text.contains("finding"),
        "{text}"
    );
}
