//! TLS for the mesh: rustls configs built from the current SVID and bundle
//! (TLS 1.3 only, ring provider), the SPIFFE verifiers (`palisade-identity`'s), ClientHello detection and
//! the classification of handshake failures into metric reasons.

use std::collections::HashMap;
use std::io;
use std::sync::{Arc, OnceLock};

use arc_swap::ArcSwap;
use palisade_identity::verify::{SpiffeClientVerifier, SpiffeServerVerifier};
use palisade_policy::{SpiffeId, TrustDomain};
use rustls::client::ResolvesClientCert;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, NoServerSessionStorage, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{CertificateError, ClientConfig, RootCertStore, ServerConfig};
use sha2::{Digest, Sha256};

pub use palisade_identity::peer::SvidRejection;
pub use palisade_identity::svid::{certs_from_pem, spiffe_id_of};

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error(transparent)]
    Pem(#[from] palisade_identity::svid::SvidError),
    #[error("trust bundle certificate rejected: {0}")]
    BadAnchor(rustls::Error),
    #[error("building the client verifier: {0}")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
    #[error("{0}")]
    Rustls(#[from] rustls::Error),
}

/// The ring provider, shared by every config.
pub fn provider() -> Arc<CryptoProvider> {
    static P: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    P.get_or_init(|| Arc::new(rustls::crypto::ring::default_provider()))
        .clone()
}

/// A set of trust anchors, with the DER kept for fingerprints and unions.
#[derive(Clone, Debug)]
pub struct Bundle {
    pub roots: Arc<RootCertStore>,
    pub certs: Vec<CertificateDer<'static>>,
}

impl Bundle {
    pub fn from_pem(pem: &str) -> Result<Bundle, TlsError> {
        Bundle::from_certs(certs_from_pem(pem.as_bytes())?)
    }

    pub fn from_certs(certs: Vec<CertificateDer<'static>>) -> Result<Bundle, TlsError> {
        let mut roots = RootCertStore::empty();
        for c in &certs {
            roots.add(c.clone()).map_err(TlsError::BadAnchor)?;
        }
        Ok(Bundle {
            roots: Arc::new(roots),
            certs,
        })
    }

    /// Both bundles' anchors, without duplicates.
    pub fn union(&self, other: &Bundle) -> Bundle {
        let mut certs = self.certs.clone();
        for c in &other.certs {
            if !certs.contains(c) {
                certs.push(c.clone());
            }
        }
        Bundle::from_certs(certs).expect("anchors were accepted before")
    }

    /// SHA-256 of each anchor's DER, hex.
    pub fn fingerprints(&self) -> Vec<String> {
        self.certs
            .iter()
            .map(|c| hex::encode(Sha256::digest(c.as_ref())))
            .collect()
    }
}

/// The workload's own SVID and its private key (which never leaves memory).
#[derive(Debug)]
pub struct Svid {
    pub id: SpiffeId,
    pub key: Arc<CertifiedKey>,
    /// The same key, PKCS#8, for the control-plane client's mTLS.
    pub key_der: Arc<PrivateKeyDer<'static>>,
    /// Unix seconds.
    pub expires_at: i64,
}

#[derive(Debug)]
struct Always(Arc<CertifiedKey>);

impl ResolvesServerCert for Always {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }
}

impl ResolvesClientCert for Always {
    fn resolve(&self, _: &[&[u8]], _: &[rustls::SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// A client config that expects `expected` from the server and presents
/// `client_cert` if given. Resumption is off: a resumed session would skip
/// the identity check and outlive a rotation.
pub fn client_config(
    roots: Arc<RootCertStore>,
    expected: SpiffeId,
    client_cert: Option<Arc<CertifiedKey>>,
) -> Arc<ClientConfig> {
    let p = provider();
    let builder = ClientConfig::builder_with_provider(p.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("ring supports TLS 1.3")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(SpiffeServerVerifier::new(roots, expected, p)));
    let mut cfg = match client_cert {
        Some(k) => builder.with_client_cert_resolver(Arc::new(Always(k))),
        None => builder.with_no_client_auth(),
    };
    cfg.resumption = rustls::client::Resumption::disabled();
    Arc::new(cfg)
}

/// Everything a handshake needs, built once per SVID rotation and then only
/// read: each accepted connection does a single load of the current value.
#[derive(Debug)]
pub struct Credentials {
    pub svid: Svid,
    pub bundle: Bundle,
    pub server: Arc<ServerConfig>,
    /// The inbound verifier `server` uses; it keeps the IDs it accepted.
    clients_verified: Arc<SpiffeClientVerifier>,
    /// Outbound configs, one per expected server identity, built on first use.
    clients: ArcSwap<HashMap<SpiffeId, Arc<ClientConfig>>>,
}

/// Above this many distinct destination identities the cache stops growing.
const MAX_CACHED_CLIENT_CONFIGS: usize = 4096;

/// What the control-plane client presents: the current bundle and SVID.
impl palisade_identity::client::workload::Current for Credentials {
    fn bundle(&self) -> &[CertificateDer<'static>] {
        &self.bundle.certs
    }

    fn identity(&self) -> palisade_identity::client::ClientIdentity {
        (self.svid.key.cert.clone(), self.svid.key_der.clone_key())
    }
}

impl Credentials {
    pub fn new(svid: Svid, bundle: Bundle, accepted: Arc<[TrustDomain]>) -> Result<Self, TlsError> {
        let p = provider();
        let verifier = Arc::new(SpiffeClientVerifier::new(
            bundle.roots.clone(),
            accepted,
            p.clone(),
        )?);
        let mut server = ServerConfig::builder_with_provider(p)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .expect("ring supports TLS 1.3")
            .with_client_cert_verifier(verifier.clone())
            .with_cert_resolver(Arc::new(Always(svid.key.clone())));
        // Sidecars negotiate HTTP/2 (or HTTP/1.1 for upgrades) between them;
        // a client offering nothing gets opaque TCP as before.
        server.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        server.session_storage = Arc::new(NoServerSessionStorage {});
        server.send_tls13_tickets = 0;
        Ok(Credentials {
            svid,
            bundle,
            server: Arc::new(server),
            clients_verified: verifier,
            clients: Default::default(),
        })
    }

    /// The SPIFFE ID of a client `server` accepted, from its verification
    /// (the certificate is not parsed again).
    pub fn peer_id(&self, leaf: &[u8]) -> Result<SpiffeId, SvidRejection> {
        self.clients_verified.peer_id(leaf)
    }

    /// The outbound config that requires the server to be `expected`.
    pub fn client_config(&self, expected: &SpiffeId) -> Arc<ClientConfig> {
        if let Some(c) = self.clients.load().get(expected) {
            return c.clone();
        }
        let cfg = client_config(
            self.bundle.roots.clone(),
            expected.clone(),
            Some(self.svid.key.clone()),
        );
        if self.clients.load().len() < MAX_CACHED_CLIENT_CONFIGS {
            self.clients.rcu(|m| {
                let mut m = HashMap::clone(m);
                m.entry(expected.clone()).or_insert_with(|| cfg.clone());
                m
            });
        }
        cfg
    }
}

/// A TLS connection starts with a handshake record (content type 22).
pub fn looks_like_client_hello(first_byte: u8) -> bool {
    first_byte == 0x16
}

/// The `reason` label for a failed handshake.
pub fn failure_reason(err: &io::Error) -> &'static str {
    if err.kind() == io::ErrorKind::TimedOut {
        return "timeout";
    }
    match err
        .get_ref()
        .and_then(|e| e.downcast_ref::<rustls::Error>())
    {
        Some(e) => rustls_reason(e),
        None => "other",
    }
}

pub fn rustls_reason(err: &rustls::Error) -> &'static str {
    use rustls::Error as E;
    match err {
        E::InvalidCertificate(c) => match c {
            CertificateError::UnknownIssuer => "unknown_issuer",
            CertificateError::Expired | CertificateError::ExpiredContext { .. } => "expired",
            CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
                "not_yet_valid"
            }
            CertificateError::BadEncoding => "bad_encoding",
            CertificateError::Other(o) => {
                o.0.downcast_ref::<SvidRejection>()
                    .map(SvidRejection::reason)
                    .unwrap_or("other")
            }
            _ => "invalid_certificate",
        },
        E::NoCertificatesPresented => "no_client_cert",
        E::AlertReceived(_) => "peer_refused",
        E::PeerIncompatible(_) => "incompatible",
        E::InvalidMessage(_) | E::InappropriateHandshakeMessage { .. } => "protocol",
        _ => "other",
    }
}
