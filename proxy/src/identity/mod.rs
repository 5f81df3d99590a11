//! The workload's identity: a key generated in memory, a CSR sent to the
//! control plane, and an SVID kept fresh (renewed at half-life with jitter,
//! retried with capped exponential backoff). Each new SVID is validated and
//! published through an `ArcSwapOption`, so new handshakes use it at once.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwapOption;
use palisade_identity::api::{Attestation, SvidResponse};
use palisade_identity::csr::new_key_and_csr;
use palisade_identity::renew::{backoff, now_unix, renew_after};
use palisade_identity::verify::SpiffeServerVerifier;
use palisade_policy::baseline::Snapshot;
use palisade_policy::{SpiffeId, TrustDomain};
use rcgen::KeyPair;
use rustls::client::danger::ServerCertVerifier;
use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::sign::CertifiedKey;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

pub use palisade_identity::client::workload::{ControlPlane, CpError};

pub mod app;

use crate::metrics::Metrics;
use crate::tls::{self, Bundle, Credentials, Svid};

/// The live credentials; `None` until the first SVID arrives.
pub type CredentialsCell = Arc<ArcSwapOption<Credentials>>;

#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error(transparent)]
    ControlPlane(#[from] CpError),
    #[error("no attestation configured (join_token, join_token_file or k8s_sa_token_file) and no valid SVID to renew with")]
    NoAttestation,
    #[error("reading attestation file {path}: {source}")]
    AttestationFile {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("generating the key or CSR: {0}")]
    Keygen(#[from] rcgen::Error),
    #[error("control plane sent an unusable SVID: {0}")]
    BadSvid(String),
    #[error("no SVID yet to authenticate to the control plane with")]
    NoSvid,
}

/// Reports the workload's cumulative learned baseline to the control plane
/// as `instance` (its pod), over mTLS with the current SVID. The control
/// plane keeps the latest snapshot per instance, so each report replaces
/// the previous one. Returns the entries it kept.
pub async fn report_baseline(
    cp: &ControlPlane,
    creds: &CredentialsCell,
    instance: &str,
    snapshot: &Snapshot,
) -> Result<usize, IdentityError> {
    let current = creds.load_full().ok_or(IdentityError::NoSvid)?;
    let body = snapshot.to_json().into_bytes();
    Ok(cp.post_baseline(&current, instance, body).await?.entries)
}

/// How the workload proves who it is the first time.
#[derive(Debug, Clone)]
pub enum AttestationSource {
    JoinToken(String),
    JoinTokenFile(PathBuf),
    /// Re-read on every use: projected tokens are rotated by the kubelet.
    K8sSaTokenFile(PathBuf),
    None,
}

impl AttestationSource {
    fn load(&self) -> Result<Attestation, IdentityError> {
        let read = |p: &PathBuf| {
            std::fs::read_to_string(p)
                .map(|s| s.trim().to_owned())
                .map_err(|source| IdentityError::AttestationFile {
                    path: p.clone(),
                    source,
                })
        };
        match self {
            AttestationSource::JoinToken(t) => Ok(Attestation::JoinToken(t.clone())),
            AttestationSource::JoinTokenFile(p) => Ok(Attestation::JoinToken(read(p)?)),
            AttestationSource::K8sSaTokenFile(p) => Ok(Attestation::K8sSaToken(read(p)?)),
            AttestationSource::None => Err(IdentityError::NoAttestation),
        }
    }
}

pub struct IdentityManager {
    pub cp: Arc<ControlPlane>,
    pub attestation: AttestationSource,
    pub accepted: Arc<[TrustDomain]>,
    pub cell: CredentialsCell,
    pub metrics: Arc<Metrics>,
    /// Counts the SVIDs published in `cell`; the app's SVID follows it.
    pub renewed: watch::Sender<u64>,
}

impl IdentityManager {
    /// Obtain and keep renewing the SVID until `stop` fires.
    pub async fn run(self, stop: CancellationToken) {
        let mut failures: u32 = 0;
        loop {
            let wait = match self.refresh().await {
                Ok(creds) => {
                    failures = 0;
                    let remaining =
                        Duration::from_secs((creds.svid.expires_at - now_unix()).max(0) as u64);
                    let wait = renew_after(remaining, &mut rand::rng());
                    tracing::info!(
                        spiffe_id = %creds.svid.id,
                        expires_at = creds.svid.expires_at,
                        renew_in_ms = wait.as_millis() as u64,
                        "new SVID in use"
                    );
                    wait
                }
                Err(e) => {
                    self.metrics.cert_refresh_failures.inc();
                    let wait = backoff(failures, &mut rand::rng());
                    failures = failures.saturating_add(1);
                    let current = self.cell.load();
                    tracing::warn!(
                        error = %e,
                        retry_in_ms = wait.as_millis() as u64,
                        current_expires_at = current.as_ref().map(|c| c.svid.expires_at),
                        "SVID request failed; keeping the current SVID while it is valid"
                    );
                    wait
                }
            };
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }

    /// One issuance or renewal; publishes and returns the new credentials.
    pub async fn refresh(&self) -> Result<Arc<Credentials>, IdentityError> {
        let (key, csr) = new_key_and_csr()?;
        let current = self.cell.load_full();
        let usable = current
            .as_ref()
            .filter(|c| c.svid.expires_at > now_unix() + 1);
        let resp = match usable {
            Some(c) => self.cp.renew(&csr, c).await?,
            None => self.cp.issue(csr, self.attestation.load()?).await?,
        };
        let creds = Arc::new(self.validate(resp, key, usable.map(|c| &c.svid.id))?);
        self.cell.store(Some(creds.clone()));
        self.renewed.send_modify(|n| *n += 1);
        self.metrics.cert_refresh.inc();
        self.metrics.cert_expiration.set(creds.svid.expires_at);
        Ok(creds)
    }

    /// The sidecar's credentials from a checked answer.
    fn validate(
        &self,
        resp: SvidResponse,
        key: KeyPair,
        previous: Option<&SpiffeId>,
    ) -> Result<Credentials, IdentityError> {
        let (svid, bundle) = validate(resp, key, previous)?;
        Credentials::new(svid, bundle, self.accepted.clone())
            .map_err(|e| IdentityError::BadSvid(e.to_string()))
    }
}

/// Refuse anything but a well-formed SVID for `key`, chaining to the bundle
/// that came with it, for the identity `expected` (if any).
fn validate(
    resp: SvidResponse,
    key: KeyPair,
    expected: Option<&SpiffeId>,
) -> Result<(Svid, Bundle), IdentityError> {
    let bad = |m: String| IdentityError::BadSvid(m);
    let id = SpiffeId::parse(&resp.spiffe_id).map_err(|e| bad(e.to_string()))?;
    if let Some(prev) = expected {
        if *prev != id {
            return Err(bad(format!(
                "renewal changed the identity from {prev} to {id}"
            )));
        }
    }
    let chain = tls::certs_from_pem(resp.svid_chain.as_bytes()).map_err(|e| bad(e.to_string()))?;
    let bundle = Bundle::from_pem(&resp.bundle).map_err(|e| bad(format!("bundle: {e}")))?;
    let leaf_id = tls::spiffe_id_of(&chain[0]).map_err(|e| bad(e.to_string()))?;
    if leaf_id != id {
        return Err(bad(format!(
            "certificate names {leaf_id}, the answer says {id}"
        )));
    }
    SpiffeServerVerifier::new(bundle.roots.clone(), id.clone(), tls::provider())
        .verify_server_cert(
            &chain[0],
            &chain[1..],
            &ServerName::try_from("svid.invalid").expect("static name"),
            &[],
            UnixTime::now(),
        )
        .map_err(|e| {
            bad(format!(
                "certificate does not verify against its bundle: {e}"
            ))
        })?;
    let key_der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
    let key = CertifiedKey::from_der(chain, key_der.clone_key(), &tls::provider())
        .map_err(|e| bad(format!("certificate is not for the key we sent: {e}")))?;
    let svid = Svid {
        id,
        key: Arc::new(key),
        key_der: Arc::new(key_der),
        expires_at: resp.expires_at,
    };
    Ok((svid, bundle))
}
