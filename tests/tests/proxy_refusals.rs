//! Certificates that are not acceptable SVIDs are refused at the handshake,
//! nothing reaches the app, and each refusal is counted with its reason. The
//! outbound side refuses a server that proves the wrong identity.

use std::time::Duration;

use palisade_tests::badcerts::{self_signed_leaf, tls_probe, Leaf, TestCa};
use palisade_tests::cp::ControlPlane;
use palisade_tests::eventually;
use palisade_tests::proxy::{echo_roundtrip, Mesh, Proxy, ProxySpec, CLIENT_ID};

const SECRET: &[u8] = b"must never reach the app";

/// Present `leaf` to B's inbound port: the app must not answer, and B must
/// count exactly one inbound refusal with `reason`.
fn assert_refused(leaf: Leaf, reason: &str) {
    let m = Mesh::start(ControlPlane::start(), |_| {});
    let answer = tls_probe(m.b_in, &leaf, SECRET);
    assert!(
        answer.as_ref().map(|b| b.is_empty()).unwrap_or(true),
        "refused client got an answer: {answer:?}"
    );
    let labels = [("direction", "inbound"), ("reason", reason)];
    eventually(
        &format!("refusal counted as {reason}"),
        Duration::from_secs(10),
        || (m.b.metric("tls_handshake_failures_total", &labels) == 1.0).then_some(()),
    );
    let all =
        m.b.metric("tls_handshake_failures_total", &[("direction", "inbound")]);
    assert_eq!(
        all,
        1.0,
        "counted once, under {reason} only:\n{}",
        m.b.metrics()
    );
    assert_eq!(
        m.b.metric("tcp_open_total", &[]),
        0.0,
        "nothing was forwarded"
    );
    // The proxy is unharmed: the real client still gets through.
    assert_eq!(echo_roundtrip(m.a_out, b"ok").unwrap(), b"ok");
}

#[test]
fn client_cert_from_another_trust_domain_is_refused_and_counted() {
    let other = TestCa::new("other.example");
    assert_refused(
        other.leaf(&["spiffe://other.example/ns/demo/sa/client"]),
        "untrusted_domain",
    );
}

#[test]
fn expired_client_cert_is_refused_and_counted() {
    let ca = TestCa::new("cluster.local");
    assert_refused(ca.expired_leaf(CLIENT_ID), "expired");
}

#[test]
fn client_cert_without_uri_san_is_refused_and_counted() {
    let ca = TestCa::new("cluster.local");
    assert_refused(ca.leaf(&[]), "no_uri_san");
}

#[test]
fn client_cert_with_two_uri_sans_is_refused_and_counted() {
    let ca = TestCa::new("cluster.local");
    let two = ca.leaf(&[CLIENT_ID, "spiffe://cluster.local/ns/demo/sa/admin"]);
    assert_refused(two, "multiple_uri_sans");
}

#[test]
fn self_signed_client_cert_claiming_a_mesh_identity_is_refused_and_counted() {
    assert_refused(self_signed_leaf(CLIENT_ID), "unknown_issuer");
}

#[test]
fn client_cert_from_a_foreign_ca_claiming_a_mesh_identity_is_refused_and_counted() {
    let impostor_ca = TestCa::new("cluster.local");
    assert_refused(impostor_ca.leaf(&[CLIENT_ID]), "unknown_issuer");
}

#[test]
fn server_presenting_the_wrong_identity_is_refused_by_the_outbound_side() {
    let m = Mesh::start(ControlPlane::start(), |_| {});
    // A second client proxy that expects someone else behind B's port.
    let expected = "spiffe://cluster.local/ns/demo/sa/database";
    let mut spec = ProxySpec::new(
        "proxy-c",
        m.cp.addr(),
        &m.cp.bundle_path(),
        &m.cp.join_token(CLIENT_ID),
    );
    let c_out = spec.route(m.b_in, expected);
    let c = Proxy::start_ready(spec);

    let answer = echo_roundtrip(c_out, SECRET);
    assert!(
        answer.as_ref().map(|b| b.is_empty()).unwrap_or(true),
        "got {answer:?}"
    );
    let labels = [
        ("direction", "outbound"),
        ("reason", "wrong_server_identity"),
    ];
    eventually(
        "wrong_server_identity counted",
        Duration::from_secs(10),
        || (c.metric("tls_handshake_failures_total", &labels) == 1.0).then_some(()),
    );
    assert_eq!(
        c.metric("tcp_open_total", &[]),
        0.0,
        "nothing was forwarded"
    );
    // B never forwarded the aborted connection to its app.
    assert_eq!(m.b.metric("tcp_open_total", &[]), 0.0);
}
