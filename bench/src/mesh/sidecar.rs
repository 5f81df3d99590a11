//! One simulated sidecar: a keep-alive mTLS connection with its current
//! SVID, on which it long-polls `GET /v1/policies` and, every
//! `endpoints_refresh`, fetches `GET /v1/endpoints` between two polls (the
//! poll's `wait` ends when the next fetch is due). A renewed SVID (a new
//! value in its `watch`) is picked up with a new connection after the
//! current poll, as a proxy's next request would present it.

use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use palisade_identity::api::{EndpointsResponse, PoliciesResponse};
use palisade_identity::client::{ApiClient, ApiConnection, ClientError};
use tokio::sync::{mpsc, watch, Semaphore};
use tokio::time::{timeout, Instant};

/// Slack over a poll's `wait` before the sidecar gives up on the answer.
const ANSWER_GRACE: Duration = Duration::from_secs(10);

/// What the sidecars share with the driver.
pub struct Mesh {
    /// The push being measured (0: none yet); its marker is [`marker`].
    pub push: AtomicU32,
    /// `(push, sidecar)` when a sidecar first sees a push's marker.
    pub reached: mpsc::UnboundedSender<(u32, usize, Instant)>,
    /// Sidecars connected that hold their first policy answer.
    pub parked: AtomicUsize,
    /// First connections in flight at once (the setup's concurrency).
    pub connect_slots: Semaphore,
    pub endpoints_refresh: Duration,
    /// Sidecars in the mesh, to spread the endpoint refreshes over the period.
    pub size: usize,
    pub counters: Counters,
}

/// Requests the sidecars made, and the ones that failed.
#[derive(Debug, Default)]
pub struct Counters {
    pub polls: AtomicU64,
    pub endpoint_fetches: AtomicU64,
    pub connects: AtomicU64,
    pub failures: AtomicU64,
    /// The first few failures, for the report.
    pub first_failures: std::sync::Mutex<Vec<String>>,
}

/// How many failure messages the report keeps.
const KEPT_FAILURES: usize = 8;

/// The policy rule name that marks push `k`.
pub fn marker(k: u32) -> String {
    format!("mesh-push-{k:05}")
}

/// Runs sidecar `index` until aborted.
pub async fn run(index: usize, mut svid: watch::Receiver<ApiClient>, mesh: Arc<Mesh>) {
    let refresh = mesh.endpoints_refresh;
    // Spread the refreshes over the period, as independent pods would be.
    let phase = refresh.mul_f64(index as f64 / mesh.size.max(1) as f64);
    let mut endpoints_due = Instant::now() + phase;
    let mut known: Option<u64> = None;
    let mut conn: Option<ApiConnection> = None;
    let mut setup = Some(
        mesh.connect_slots
            .acquire()
            .await
            .expect("the semaphore is never closed"),
    );
    let mut failures = 0u32;
    loop {
        if conn.is_none() || svid.has_changed().unwrap_or(false) {
            let client = svid.borrow_and_update().clone();
            mesh.counters.connects.fetch_add(1, Ordering::Relaxed);
            match within(ANSWER_GRACE, client.connect()).await {
                Ok(c) => conn = Some(c),
                Err(e) => {
                    fail(&mesh, "connect", e, &mut conn, &mut failures).await;
                    continue;
                }
            }
        }
        let c = conn.as_mut().expect("connected above");
        if Instant::now() >= endpoints_due {
            endpoints_due += refresh;
            mesh.counters
                .endpoint_fetches
                .fetch_add(1, Ordering::Relaxed);
            let fetch = c.get_json::<EndpointsResponse>("/v1/endpoints");
            if let Err(e) = within(ANSWER_GRACE, fetch).await {
                fail(&mesh, "endpoints", e, &mut conn, &mut failures).await;
                continue;
            }
        }
        let wait = endpoints_due
            .saturating_duration_since(Instant::now())
            .as_secs()
            .max(1);
        let path = match known {
            Some(v) => format!("/v1/policies?version={v}&wait={wait}"),
            None => "/v1/policies".to_owned(),
        };
        mesh.counters.polls.fetch_add(1, Ordering::Relaxed);
        let poll = c.get_json::<PoliciesResponse>(&path);
        let resp = match within(Duration::from_secs(wait) + ANSWER_GRACE, poll).await {
            Ok(resp) => resp,
            Err(e) => {
                fail(&mesh, "poll", e, &mut conn, &mut failures).await;
                continue;
            }
        };
        failures = 0;
        if known != Some(resp.version) {
            known = Some(resp.version);
            seen(&mesh, index, &resp);
        }
        if setup.take().is_some() {
            mesh.parked.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// `f`'s answer, or why there is none by `limit`.
async fn within<T>(
    limit: Duration,
    f: impl std::future::Future<Output = Result<T, ClientError>>,
) -> Result<T, String> {
    match timeout(limit, f).await {
        Ok(r) => r.map_err(|e| e.to_string()),
        Err(_) => Err(format!("no answer within {limit:?}")),
    }
}

/// Reports the push being measured if this answer carries its marker.
fn seen(mesh: &Mesh, index: usize, resp: &PoliciesResponse) {
    let k = mesh.push.load(Ordering::Relaxed);
    if k == 0 {
        return;
    }
    let m = marker(k);
    if resp.documents.iter().any(|d| d.yaml.contains(&m)) {
        let _ = mesh.reached.send((k, index, Instant::now()));
    }
}

/// Counts a failed request (keeping the first few), drops the connection
/// and backs off.
async fn fail(
    mesh: &Mesh,
    stage: &str,
    error: String,
    conn: &mut Option<ApiConnection>,
    failures: &mut u32,
) {
    mesh.counters.failures.fetch_add(1, Ordering::Relaxed);
    {
        let mut kept = mesh.counters.first_failures.lock().expect("failures lock");
        if kept.len() < KEPT_FAILURES {
            kept.push(format!("{stage}: {error}"));
        }
    }
    *conn = None;
    let backoff = palisade_identity::renew::backoff(*failures, &mut rand::rng());
    *failures = failures.saturating_add(1);
    tokio::time::sleep(backoff).await;
}
