//! Setting the mesh up the way sidecars join: a single-use join token per
//! sidecar, minted in batches over the admin socket, then a fresh key and CSR each, redeemed
//! for the first SVID at `POST /v1/svid`.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use palisade_identity::api::{Attestation, JoinTokenBatchEntry, SvidRequest};
use palisade_identity::client::{AdminClient, ApiClient};
use palisade_policy::TrustDomain;
use rustls::pki_types::CertificateDer;
use serde::Serialize;

use super::sidecar_id;
use crate::issuance::{client_with_svid, keys_and_csrs};

/// How long each setup step took.
#[derive(Debug, Clone, Serialize)]
pub struct SetupTimes {
    pub tokens_secs: f64,
    pub tokens_per_sec: f64,
    pub keys_secs: f64,
    pub svids_secs: f64,
    pub svids_per_sec: f64,
}

/// Where the sidecars enroll.
pub struct Target<'a> {
    pub admin: &'a AdminClient,
    /// Every replica's API address: sidecar `i` stays on replica `i` mod
    /// their count, and the first SVIDs are redeemed across all of them.
    pub addrs: &'a [String],
    pub trust_domain: &'a TrustDomain,
    pub bundle: &'a [CertificateDer<'static>],
}

/// One mTLS client per sidecar, holding its first SVID, for its replica.
pub async fn enroll(
    target: &Target<'_>,
    n: usize,
    concurrency: usize,
) -> anyhow::Result<(Vec<ApiClient>, SetupTimes)> {
    let started = Instant::now();
    let identities: Vec<JoinTokenBatchEntry> = (0..n)
        .map(|i| JoinTokenBatchEntry {
            spiffe_id: sidecar_id(i),
            count: 1,
        })
        .collect();
    let tokens: Vec<String> = target
        .admin
        .create_join_tokens(&identities, Duration::from_secs(3600))
        .await
        .context("minting the join tokens")?
        .into_iter()
        .map(|t| t.token)
        .collect();
    anyhow::ensure!(
        tokens.len() == n,
        "asked for {n} join tokens, got {}",
        tokens.len()
    );
    let tokens_secs = started.elapsed().as_secs_f64();

    let started = Instant::now();
    let keys = tokio::task::spawn_blocking(move || keys_and_csrs(n)).await?;
    let keys_secs = started.elapsed().as_secs_f64();

    let started = Instant::now();
    let clients = issue_all(target, tokens, keys, concurrency).await?;
    let svids_secs = started.elapsed().as_secs_f64();
    let times = SetupTimes {
        tokens_secs,
        tokens_per_sec: n as f64 / tokens_secs,
        keys_secs,
        svids_secs,
        svids_per_sec: n as f64 / svids_secs,
    };
    Ok((clients, times))
}

/// Redeems every token over `concurrency` keep-alive bootstrap connections.
async fn issue_all(
    target: &Target<'_>,
    tokens: Vec<String>,
    keys: Vec<(rcgen::KeyPair, String)>,
    concurrency: usize,
) -> anyhow::Result<Vec<ApiClient>> {
    let n = tokens.len();
    let bootstrap = ApiClient::new(&target.addrs[0], target.trust_domain, target.bundle, None)?;
    let work = Arc::new((tokens, keys));
    let next = Arc::new(AtomicUsize::new(0));
    let out: Arc<Mutex<Vec<Option<ApiClient>>>> = Arc::new(Mutex::new(vec![None; n]));
    let mut workers = tokio::task::JoinSet::new();
    for w in 0..concurrency.min(n).max(1) {
        let bootstrap = bootstrap.at(&target.addrs[w % target.addrs.len()]);
        let (work, next, out) = (work.clone(), next.clone(), out.clone());
        let (addrs, td, bundle) = (
            target.addrs.to_vec(),
            target.trust_domain.clone(),
            target.bundle.to_vec(),
        );
        workers.spawn(async move {
            let mut conn = bootstrap.connect().await?;
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(token) = work.0.get(i) else {
                    return anyhow::Ok(());
                };
                let (key, csr) = &work.1[i];
                let svid = conn
                    .issue(&SvidRequest {
                        csr: csr.clone(),
                        attestation: Attestation::JoinToken(token.clone()),
                    })
                    .await
                    .with_context(|| format!("first SVID of {}", sidecar_id(i)))?;
                let addr = &addrs[i % addrs.len()];
                let client = client_with_svid(addr, &td, &bundle, &svid, key)?;
                out.lock().expect("enroll lock")[i] = Some(client);
            }
        });
    }
    while let Some(done) = workers.join_next().await {
        done??;
    }
    let clients = std::mem::take(&mut *out.lock().expect("enroll lock"));
    Ok(clients
        .into_iter()
        .map(|c| c.expect("every index was issued"))
        .collect())
}
