//! The workload's identity: a key generated in memory, a CSR sent to the
//! control plane, and an SVID kept fresh (renewed at half-life with jitter,
//! retried with capped exponential backoff). Each new SVID is validated and
//! published through an `ArcSwapOption`, so new handshakes use it at once.

pub mod client;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwapOption;
use palisade_control_plane::api::{Attestation, SvidResponse};
use palisade_policy::{SpiffeId, TrustDomain};
use rand::Rng;
use rcgen::{CertificateParams, KeyPair, PKCS_ECDSA_P256_SHA256};
use rustls::client::danger::ServerCertVerifier;
use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::sign::CertifiedKey;
use tokio_util::sync::CancellationToken;

pub use client::{ControlPlane, CpError};

use crate::metrics::Metrics;
use crate::tls::{self, verify::SpiffeServerVerifier, Bundle, Credentials, Svid};

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

/// Retry delays while the control plane is unreachable or refusing.
const BACKOFF_BASE: Duration = Duration::from_millis(250);
const BACKOFF_CAP: Duration = Duration::from_secs(15);

pub struct IdentityManager {
    pub cp: ControlPlane,
    pub attestation: AttestationSource,
    pub accepted: Arc<[TrustDomain]>,
    pub cell: CredentialsCell,
    pub metrics: Arc<Metrics>,
}

fn now_unix() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// When to renew an SVID that expires in `remaining`: at half of it, less up
/// to a tenth as jitter so a fleet started together does not renew together.
pub fn renew_after(remaining: Duration, rng: &mut impl Rng) -> Duration {
    let half = remaining / 2;
    let jitter = remaining.mul_f64(rng.random_range(0.0..0.1));
    half.saturating_sub(jitter).max(Duration::from_millis(100))
}

/// Capped exponential backoff with full jitter.
pub fn backoff(attempt: u32, rng: &mut impl Rng) -> Duration {
    let exp = BACKOFF_BASE
        .saturating_mul(1u32 << attempt.min(16))
        .min(BACKOFF_CAP);
    exp.mul_f64(rng.random_range(0.5..1.0))
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
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
        // The control plane decides every name; the CSR only proves the key.
        let csr = CertificateParams::new(Vec::<String>::new())?
            .serialize_request(&key)?
            .pem()?;
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
        self.metrics.cert_refresh.inc();
        self.metrics.cert_expiration.set(creds.svid.expires_at);
        Ok(creds)
    }

    /// Refuse anything but a well-formed SVID for our key, chaining to the
    /// bundle that came with it, for the identity we already had (if any).
    fn validate(
        &self,
        resp: SvidResponse,
        key: KeyPair,
        previous: Option<&SpiffeId>,
    ) -> Result<Credentials, IdentityError> {
        let bad = |m: String| IdentityError::BadSvid(m);
        let id = SpiffeId::parse(&resp.spiffe_id).map_err(|e| bad(e.to_string()))?;
        if let Some(prev) = previous {
            if *prev != id {
                return Err(bad(format!(
                    "renewal changed the identity from {prev} to {id}"
                )));
            }
        }
        let chain =
            tls::certs_from_pem(resp.svid_chain.as_bytes()).map_err(|e| bad(e.to_string()))?;
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
        Credentials::new(svid, bundle, self.accepted.clone()).map_err(|e| bad(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renewal_happens_around_half_life_never_after_it() {
        let mut rng = rand::rng();
        for _ in 0..1000 {
            let d = renew_after(Duration::from_secs(3600), &mut rng);
            assert!(
                d <= Duration::from_secs(1800) && d >= Duration::from_secs(1440),
                "{d:?}"
            );
        }
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        let mut rng = rand::rng();
        assert!(backoff(0, &mut rng) <= BACKOFF_BASE);
        assert!(backoff(3, &mut rng) >= BACKOFF_BASE * 4);
        for a in [10, 40, u32::MAX] {
            assert!(backoff(a, &mut rng) <= BACKOFF_CAP);
        }
    }
}
