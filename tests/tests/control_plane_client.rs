//! The control-plane API client checks its server with the same SPIFFE peer
//! verifier as the mesh: a server must chain to the bundle and present
//! exactly `spiffe://<td>/palisade/control-plane`. Real TLS on loopback.

use std::sync::Arc;

use palisade_identity::client::{ApiClient, ClientError};
use palisade_policy::TrustDomain;
use palisade_tests::badcerts::{Leaf, TestCa};
use rustls::ServerConfig;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

const TD: &str = "td.example";

/// A TLS 1.3 server on loopback presenting `leaf` to one client.
async fn serve_once(leaf: Leaf) -> String {
    let config =
        ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(leaf.chain, leaf.key)
            .unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let _ = TlsAcceptor::from(Arc::new(config)).accept(tcp).await;
    });
    addr
}

async fn connect(ca: &TestCa, server: Leaf) -> Result<(), ClientError> {
    let addr = serve_once(server).await;
    let td = TrustDomain::new(TD).unwrap();
    let client = ApiClient::new(&addr, &td, std::slice::from_ref(&ca.cert), None)?;
    client.connect_tls().await.map(drop)
}

#[tokio::test]
async fn the_client_accepts_the_control_plane_identity_from_its_bundle() {
    let ca = TestCa::new(TD);
    let server = ca.leaf(&["spiffe://td.example/palisade/control-plane"]);
    connect(&ca, server)
        .await
        .expect("the control plane is accepted");
}

#[tokio::test]
async fn the_client_refuses_a_workload_posing_as_the_control_plane() {
    let ca = TestCa::new(TD);
    let server = ca.leaf(&["spiffe://td.example/ns/shop/sa/api"]);
    let err = connect(&ca, server)
        .await
        .expect_err("a workload SVID is refused");
    let text = err.to_string();
    assert!(
        text.contains("spiffe://td.example/ns/shop/sa/api")
            && text.contains("spiffe://td.example/palisade/control-plane"),
        "{text}"
    );
}

#[tokio::test]
async fn the_client_refuses_the_control_plane_identity_from_another_ca() {
    let ca = TestCa::new(TD);
    let impostor = TestCa::new(TD);
    let server = impostor.leaf(&["spiffe://td.example/palisade/control-plane"]);
    let err = connect(&ca, server)
        .await
        .expect_err("an unknown CA is refused");
    assert!(matches!(err, ClientError::Connect(..)), "{err}");
}
