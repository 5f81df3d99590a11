//! A full TLS 1.3 mutual-TLS handshake between rustls (ring) client and server
//! over an in-memory pipe, with SPIFFE SVIDs (ECDSA P-256) from a throwaway CA.
//! Resumption is off on both sides: this is the cost of every new connection
//! between two sidecars, without the network.

use std::sync::Arc;

use criterion::{criterion_group, criterion_main, Criterion};
use palisade_bench::latency::certs::{MintedCa, CLIENT_ID, SERVER_ID};
use rustls::client::Resumption;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use rustls::server::{NoServerSessionStorage, WebPkiClientVerifier};
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use tokio_rustls::{TlsAcceptor, TlsConnector};

/// rustls' stock verifier insists on a server name, so the bench's server SVID
/// carries this DNS SAN next to its SPIFFE URI SAN.
const SERVER_NAME: &str = "server.bench";

fn configs() -> (Arc<ServerConfig>, Arc<ClientConfig>) {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let ca = MintedCa::new().expect("CA");
    let mut roots = RootCertStore::empty();
    roots
        .add(CertificateDer::from(ca.cert_der.clone()))
        .expect("CA cert");
    let roots = Arc::new(roots);
    let identity = |id, dns| {
        let svid = ca.svid(id, dns).expect("SVID");
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(svid.key_der));
        (vec![CertificateDer::from(svid.cert_der)], key)
    };

    let (chain, key) = identity(SERVER_ID, Some(SERVER_NAME));
    let verifier = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone())
        .build()
        .expect("client verifier");
    let mut server = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("TLS 1.3")
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .expect("server config");
    server.session_storage = Arc::new(NoServerSessionStorage {});
    server.send_tls13_tickets = 0;

    let (chain, key) = identity(CLIENT_ID, None);
    let mut client = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("TLS 1.3")
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .expect("client config");
    client.resumption = Resumption::disabled();
    (Arc::new(server), Arc::new(client))
}

async fn handshake(acceptor: &TlsAcceptor, connector: &TlsConnector) {
    let (client_io, server_io) = tokio::io::duplex(64 * 1024);
    let name = ServerName::try_from(SERVER_NAME).expect("server name");
    let (client, server) = tokio::join!(
        connector.connect(name, client_io),
        acceptor.accept(server_io)
    );
    client.expect("client handshake");
    let server = server.expect("server handshake");
    assert!(
        server.get_ref().1.peer_certificates().is_some(),
        "client presented no certificate"
    );
}

fn bench(c: &mut Criterion) {
    let (server, client) = configs();
    let (acceptor, connector) = (TlsAcceptor::from(server), TlsConnector::from(client));
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    c.bench_function("mtls_handshake_tls13_p256_full", |b| {
        b.iter(|| rt.block_on(handshake(&acceptor, &connector)))
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
