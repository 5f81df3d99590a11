//! The app's own SVID, served by the SPIFFE Workload API: a second key made
//! here and a second SVID for the sidecar's identity, asked for by CSR over
//! mTLS with the sidecar's SVID each time that one is renewed, so both
//! rotate together. The sidecar's own key is never handed out.

use std::sync::Arc;

use palisade_identity::csr::new_key_and_csr;
use palisade_identity::renew::backoff;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::{validate, ControlPlane, CredentialsCell, IdentityError};
use crate::metrics::Metrics;
use crate::tls::{Bundle, Svid};

/// An SVID for the app and the trust bundle that came with it.
#[derive(Debug)]
pub struct AppSvid {
    pub svid: Svid,
    pub bundle: Bundle,
}

/// The app's current SVID; `None` until the first one arrives.
pub type AppSvidWatch = watch::Receiver<Option<Arc<AppSvid>>>;

pub struct AppIdentity {
    pub cp: Arc<ControlPlane>,
    /// The sidecar's credentials, which authenticate each request.
    pub sidecar: CredentialsCell,
    /// Bumped by the sidecar's `IdentityManager` on each new SVID.
    pub renewed: watch::Receiver<u64>,
    pub publish: watch::Sender<Option<Arc<AppSvid>>>,
    pub metrics: Arc<Metrics>,
}

impl AppIdentity {
    /// After each of the sidecar's SVIDs, obtain one for the app (retried
    /// with backoff), until `stop` fires.
    pub async fn run(mut self, stop: CancellationToken) {
        let mut failures: u32 = 0;
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                r = self.renewed.changed() => if r.is_err() { return },
            }
            loop {
                self.renewed.borrow_and_update();
                match self.refresh().await {
                    Ok(app) => {
                        failures = 0;
                        tracing::info!(
                            spiffe_id = %app.svid.id,
                            expires_at = app.svid.expires_at,
                            "new SVID for the app"
                        );
                        break;
                    }
                    Err(e) => {
                        self.metrics.workload_api.svid_refresh_failures.inc();
                        let wait = backoff(failures, &mut rand::rng());
                        failures = failures.saturating_add(1);
                        tracing::warn!(
                            error = %e,
                            retry_in_ms = wait.as_millis() as u64,
                            "app SVID request failed; the app keeps its current SVID while it is valid"
                        );
                        tokio::select! {
                            _ = stop.cancelled() => return,
                            _ = tokio::time::sleep(wait) => {}
                        }
                    }
                }
            }
        }
    }

    /// One request: a fresh key, a CSR, an SVID for the sidecar's identity.
    pub async fn refresh(&self) -> Result<Arc<AppSvid>, IdentityError> {
        let sidecar = self.sidecar.load_full().ok_or(IdentityError::NoSvid)?;
        let (key, csr) = new_key_and_csr()?;
        let resp = self.cp.renew(&csr, &sidecar).await?;
        let (svid, bundle) = validate(resp, key, Some(&sidecar.svid.id))?;
        let app = Arc::new(AppSvid { svid, bundle });
        self.publish.send_replace(Some(app.clone()));
        self.metrics.workload_api.svid_refresh.inc();
        Ok(app)
    }
}
