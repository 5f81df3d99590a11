//! Steady SVID churn: at a fixed total rate, the next sidecar in turn makes a
//! fresh key and CSR and renews over a new mTLS connection with its current
//! SVID (as the proxy does), then publishes the new SVID to its sidecar.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use hdrhistogram::Histogram;
use palisade_identity::client::ApiClient;
use palisade_identity::csr::new_key_and_csr;
use palisade_policy::TrustDomain;
use rustls::pki_types::CertificateDer;
use serde::Serialize;
use tokio::sync::{watch, Semaphore};
use tokio::time::{Instant, MissedTickBehavior};

use super::sidecar_id;
use crate::issuance::client_with_svid;

/// Renewals in flight at most; a tick finding none free is counted as skipped.
const MAX_IN_FLIGHT: usize = 512;
const RENEW_TIMEOUT: Duration = Duration::from_secs(10);

/// Where renewals go and with which trust.
#[derive(Clone)]
pub struct Issuer {
    /// Every replica's API address; sidecar `i` renews at `i` mod their count.
    pub addrs: Vec<String>,
    pub trust_domain: TrustDomain,
    pub bundle: Vec<CertificateDer<'static>>,
}

#[derive(Debug, Clone, Serialize)]
pub struct RenewalStats {
    pub target_per_sec: f64,
    pub achieved_per_sec: f64,
    pub seconds: f64,
    pub ok: u64,
    pub errors: u64,
    /// Ticks that found `MAX_IN_FLIGHT` renewals still running.
    pub skipped: u64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    /// The first few errors.
    pub first_errors: Vec<String>,
}

#[derive(Default)]
struct Tally {
    hist: Option<Histogram<u64>>,
    ok: u64,
    errors: u64,
    skipped: u64,
    first_errors: Vec<String>,
}

/// Renewals running until the returned handle is stopped.
pub struct Churn {
    task: tokio::task::JoinHandle<()>,
    tally: Arc<Mutex<Tally>>,
    started: Instant,
    rate: f64,
    in_flight: Arc<Semaphore>,
}

impl Churn {
    /// Renews `rate` SVIDs per second, cycling through `svids`.
    pub fn start(issuer: Issuer, svids: Arc<Vec<watch::Sender<ApiClient>>>, rate: f64) -> Churn {
        let tally = Arc::new(Mutex::new(Tally {
            hist: Some(Histogram::new_with_bounds(1, 60_000_000, 3).expect("bounds")),
            ..Tally::default()
        }));
        let in_flight = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
        let (t, slots) = (tally.clone(), in_flight.clone());
        let task = tokio::spawn(async move {
            if rate <= 0.0 || svids.is_empty() {
                return;
            }
            let issuer = Arc::new(issuer);
            // Bursts after a stall keep the average at `rate` (open loop).
            let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
            tick.set_missed_tick_behavior(MissedTickBehavior::Burst);
            for i in (0..svids.len()).cycle() {
                tick.tick().await;
                let Ok(permit) = slots.clone().try_acquire_owned() else {
                    t.lock().expect("tally").skipped += 1;
                    continue;
                };
                let (issuer, svids, t) = (issuer.clone(), svids.clone(), t.clone());
                tokio::spawn(async move {
                    let t0 = Instant::now();
                    let outcome = renew_one(&issuer, &svids[i], i).await;
                    let mut tally = t.lock().expect("tally");
                    match outcome {
                        Ok(()) => {
                            tally.ok += 1;
                            if let Some(h) = &mut tally.hist {
                                h.saturating_record(t0.elapsed().as_micros() as u64);
                            }
                        }
                        Err(e) => {
                            tally.errors += 1;
                            if tally.first_errors.len() < 8 {
                                tally.first_errors.push(format!("{e:#}"));
                            }
                        }
                    }
                    drop(permit);
                });
            }
        });
        Churn {
            task,
            tally,
            started: Instant::now(),
            rate,
            in_flight,
        }
    }

    /// Stops issuing, waits for the renewals in flight, and sums them up.
    pub async fn stop(self) -> RenewalStats {
        self.task.abort();
        let seconds = self.started.elapsed().as_secs_f64();
        let _ = tokio::time::timeout(
            RENEW_TIMEOUT,
            self.in_flight.acquire_many(MAX_IN_FLIGHT as u32),
        )
        .await;
        let tally = self.tally.lock().expect("tally");
        let hist = tally.hist.as_ref().expect("histogram");
        let ms = |q: f64| hist.value_at_quantile(q) as f64 / 1000.0;
        RenewalStats {
            target_per_sec: self.rate,
            achieved_per_sec: tally.ok as f64 / seconds,
            seconds,
            ok: tally.ok,
            errors: tally.errors,
            skipped: tally.skipped,
            p50_ms: ms(0.5),
            p99_ms: ms(0.99),
            max_ms: hist.max() as f64 / 1000.0,
            first_errors: tally.first_errors.clone(),
        }
    }
}

/// One renewal of sidecar `i`: new key, CSR, `POST /v1/svid/renew` with the
/// current SVID, and the new SVID published.
async fn renew_one(
    issuer: &Issuer,
    svid: &watch::Sender<ApiClient>,
    i: usize,
) -> anyhow::Result<()> {
    let (key, csr) = new_key_and_csr()?;
    let current = svid.borrow().clone();
    let resp = tokio::time::timeout(RENEW_TIMEOUT, current.renew(&csr)).await??;
    anyhow::ensure!(
        resp.spiffe_id == sidecar_id(i),
        "renewed as {}, not {}",
        resp.spiffe_id,
        sidecar_id(i)
    );
    let next = client_with_svid(
        &issuer.addrs[i % issuer.addrs.len()],
        &issuer.trust_domain,
        &issuer.bundle,
        &resp,
        &key,
    )?;
    svid.send_replace(next);
    Ok(())
}
