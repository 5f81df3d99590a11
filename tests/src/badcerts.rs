//! Certificates a sidecar must refuse (another trust domain's CA, expired, no
//! URI SAN, two URI SANs, self-signed), minted with rcgen, and a blocking
//! TLS 1.3 probe client that presents them (or a real SVID).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, ClientConnection, DigitallySignedStruct, SignatureScheme, StreamOwned};

/// A certificate chain and its key, ready to present.
pub struct Leaf {
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
}

/// A signing CA for any trust domain; not the control plane's.
pub struct TestCa {
    issuer: Issuer<'static, KeyPair>,
    pub cert: CertificateDer<'static>,
}

fn uri(s: &str) -> SanType {
    SanType::URI(s.try_into().expect("valid IA5 URI"))
}

fn leaf_params(uris: &[&str]) -> CertificateParams {
    let mut p = CertificateParams::default();
    p.distinguished_name
        .push(DnType::CommonName, "palisade test leaf");
    p.subject_alt_names = uris.iter().map(|u| uri(u)).collect();
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    p.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    p
}

fn pkcs8(key: &KeyPair) -> PrivateKeyDer<'static> {
    PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()))
}

impl TestCa {
    /// A self-signed CA whose URI SAN is `spiffe://<trust_domain>`.
    pub fn new(trust_domain: &str) -> TestCa {
        let key = KeyPair::generate().expect("CA key");
        let mut p = CertificateParams::default();
        p.distinguished_name
            .push(DnType::CommonName, format!("test CA {trust_domain}"));
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        p.subject_alt_names = vec![uri(&format!("spiffe://{trust_domain}"))];
        let cert = p.self_signed(&key).expect("self-sign CA").der().clone();
        TestCa {
            issuer: Issuer::new(p, key),
            cert,
        }
    }

    /// A leaf carrying `uris` as URI SANs (none, one or several).
    pub fn leaf(&self, uris: &[&str]) -> Leaf {
        self.sign(leaf_params(uris))
    }

    /// A leaf for `id` whose validity ended in 2021.
    pub fn expired_leaf(&self, id: &str) -> Leaf {
        let mut p = leaf_params(&[id]);
        p.not_before = rcgen::date_time_ymd(2020, 1, 1);
        p.not_after = rcgen::date_time_ymd(2021, 1, 1);
        self.sign(p)
    }

    fn sign(&self, p: CertificateParams) -> Leaf {
        let key = KeyPair::generate().expect("leaf key");
        let cert = p.signed_by(&key, &self.issuer).expect("sign leaf");
        Leaf {
            chain: vec![cert.der().clone()],
            key: pkcs8(&key),
        }
    }
}

/// A self-signed leaf claiming `id`.
pub fn self_signed_leaf(id: &str) -> Leaf {
    let key = KeyPair::generate().expect("leaf key");
    let cert = leaf_params(&[id]).self_signed(&key).expect("self-sign");
    Leaf {
        chain: vec![cert.der().clone()],
        key: pkcs8(&key),
    }
}

/// Accepts any server: the probe exists to test what the *server* refuses.
#[derive(Debug)]
struct AnyServer(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for AnyServer {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(m, c, d, &self.0.signature_verification_algorithms)
    }
    fn verify_tls13_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(m, c, d, &self.0.signature_verification_algorithms)
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// A TLS 1.3 client config that presents `leaf`, offers `alpn`, and
/// accepts any server (tests check what the server does, not who it is).
pub fn client_config(leaf: &Leaf, alpn: &[&[u8]]) -> std::io::Result<ClientConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("TLS 1.3")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyServer(provider)))
        .with_client_auth_cert(leaf.chain.clone(), leaf.key.clone_key())
        .map_err(std::io::Error::other)?;
    cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(cfg)
}

/// Connect to `addr` over TLS 1.3 presenting `leaf`, send `msg`, half-close
/// and read the answer. In TLS 1.3 the server checks the client certificate
/// after the client's handshake is done, so a refusal shows up as a read error
/// or an empty answer.
pub fn tls_probe(addr: SocketAddr, leaf: &Leaf, msg: &[u8]) -> std::io::Result<Vec<u8>> {
    let cfg = client_config(leaf, &[])?;
    let conn = ClientConnection::new(
        Arc::new(cfg),
        ServerName::try_from("probe.invalid").unwrap(),
    )
    .map_err(std::io::Error::other)?;
    let tcp = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    tcp.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut tls = StreamOwned::new(conn, tcp);
    tls.write_all(msg)?;
    tls.flush()?;
    tls.conn.send_close_notify();
    tls.flush()?;
    let mut back = Vec::new();
    tls.read_to_end(&mut back)?;
    Ok(back)
}
