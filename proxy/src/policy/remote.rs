//! The control-plane source: long-poll `GET /v1/policies?version=N` over
//! mTLS with the current SVID and apply each new version. Unreachable
//! control plane: retry with backoff, the policy in force stays.

use std::sync::Arc;
use std::time::Duration;

use palisade_identity::api::PoliciesResponse;
use palisade_identity::renew::backoff;
use palisade_policy::parse_documents;
use tokio_util::sync::CancellationToken;

use super::reload::{RejectReason, Rejection, Reloader, Update};
use crate::identity::{ControlPlane, CredentialsCell};

/// How long the control plane may hold a poll open.
pub const LONG_POLL: Duration = Duration::from_secs(30);

/// Polls until `stop`.
pub async fn poll_loop(
    cp: Arc<ControlPlane>,
    creds: CredentialsCell,
    reloader: Arc<Reloader>,
    stop: CancellationToken,
) {
    let mut known: Option<u64> = None;
    let mut failures = 0u32;
    loop {
        let Some(current) = creds.load_full() else {
            // The first SVID authenticates the poll.
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(Duration::from_millis(200)) => continue,
            }
        };
        let answer = tokio::select! {
            _ = stop.cancelled() => return,
            r = cp.policies(&current, known, LONG_POLL) => r,
        };
        drop(current);
        match answer {
            Ok(resp) if Some(resp.version) == known => failures = 0,
            Ok(resp) => {
                failures = 0;
                // Remembered even when rejected: the same bad version is not
                // fetched again; the next change arrives as a new one.
                known = Some(resp.version);
                let r = reloader.clone();
                if let Err(e) = tokio::task::spawn_blocking(move || apply(&r, resp)).await {
                    tracing::error!(error = %e, "policy reload task failed");
                }
            }
            Err(e) => {
                let wait = backoff(failures, &mut rand::rng());
                failures = failures.saturating_add(1);
                tracing::warn!(error = %e, retry_in = ?wait, "cannot fetch policies from the control plane; the policy in force stays");
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(wait) => {}
                }
            }
        }
    }
}

/// Parses and applies one answer. Blocking.
fn apply(reloader: &Reloader, resp: PoliciesResponse) {
    let mut docs = Vec::new();
    let mut errors = Vec::new();
    for d in &resp.documents {
        match parse_documents(&format!("control-plane:{}", d.source), &d.yaml) {
            Ok(parsed) => docs.extend(parsed),
            Err(diags) => errors.extend(diags.iter().map(ToString::to_string)),
        }
    }
    if !errors.is_empty() {
        let rejection = Rejection::new(RejectReason::Invalid, errors.join("\n"));
        return reloader.reject("control-plane", rejection);
    }
    reloader.apply(Update::ControlPlane {
        version: resp.version,
        docs,
    });
}
