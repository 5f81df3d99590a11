//! Learned baselines from the sidecars: each proxy POSTs its cumulative
//! snapshot; the latest per (identity, instance) is kept and persisted in
//! the state store, and reads merge an identity's instances.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use http::{Request, StatusCode};
use hyper::body::Incoming;
use palisade_identity::api::BaselineAccepted;
use palisade_policy::baseline::Snapshot;
use palisade_policy::SpiffeId;
use sha2::{Digest, Sha256};

use super::http::{json, query_pairs, read_body_max, Failure, Resp};
use super::State;
use crate::store::{Store, StoreError};

/// A POSTed snapshot's body at most: room for a full report at about
/// 800 bytes an entry.
pub const MAX_SNAPSHOT_BYTES: usize = 16 * 1024 * 1024;
/// Entries in one snapshot at most: what a sidecar learns by default.
pub const MAX_ENTRIES: usize = palisade_policy::baseline::DEFAULT_MAX_ENTRIES;
/// Instances (pods) kept per identity; a new one past it is refused.
pub const MAX_INSTANCES: usize = 256;
/// Longest instance name.
const MAX_INSTANCE_LEN: usize = 128;

/// Latest snapshot per identity and instance, mirrored in the store.
pub struct Baselines {
    store: Arc<dyn Store>,
    by_identity: Mutex<HashMap<SpiffeId, BTreeMap<String, Snapshot>>>,
}

impl Baselines {
    /// Restores what the store holds. A snapshot that no longer reads is
    /// skipped with a warning: one bad entry must not stop the control
    /// plane.
    pub async fn open(store: Arc<dyn Store>) -> Result<Baselines, StoreError> {
        let b = Baselines {
            store,
            by_identity: Mutex::default(),
        };
        b.refresh().await?;
        Ok(b)
    }

    /// Reads every snapshot from the store again (other replicas write
    /// there too).
    pub async fn refresh(&self) -> Result<(), StoreError> {
        let mut by_identity: HashMap<SpiffeId, BTreeMap<String, Snapshot>> = HashMap::new();
        for (name, bytes) in self.store.load_baselines().await? {
            let Some(instance) = instance_of_name(&name) else {
                continue;
            };
            match Snapshot::from_json(&bytes, MAX_ENTRIES) {
                Ok(snap) => {
                    by_identity
                        .entry(snap.identity.clone())
                        .or_default()
                        .insert(instance, snap);
                }
                Err(e) => {
                    tracing::warn!(name, error = %e, "skipping an unreadable baseline")
                }
            }
        }
        *self.by_identity.lock().unwrap_or_else(|p| p.into_inner()) = by_identity;
        Ok(())
    }

    /// Keeps `snap` as `instance`'s latest, replacing what it sent before,
    /// and persists it.
    async fn put(&self, instance: &str, snap: Snapshot) -> Result<usize, Failure> {
        {
            let map = self.by_identity.lock().unwrap_or_else(|p| p.into_inner());
            let known = map
                .get(&snap.identity)
                .is_some_and(|m| m.contains_key(instance));
            let count = map.get(&snap.identity).map_or(0, BTreeMap::len);
            if !known && count >= MAX_INSTANCES {
                return Err(Failure::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    "too_many_instances",
                    format!(
                        "{} already has baselines from {MAX_INSTANCES} instances",
                        snap.identity
                    ),
                ));
            }
        }
        self.store
            .put_baseline(
                &name_of(&snap.identity, instance),
                snap.to_json().as_bytes(),
            )
            .await
            .map_err(|e| {
                Failure::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "baseline_not_saved",
                    e.to_string(),
                )
            })?;
        let entries = snap.entries.len();
        self.by_identity
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(snap.identity.clone())
            .or_default()
            .insert(instance.to_owned(), snap);
        Ok(entries)
    }

    /// The identity's instances merged into one baseline.
    pub fn merged(&self, identity: &SpiffeId) -> Option<Snapshot> {
        let map = self.by_identity.lock().unwrap_or_else(|p| p.into_inner());
        merge(map.get(identity)?)
    }

    /// Every identity's merged baseline, sorted by identity.
    pub fn all(&self) -> Vec<Snapshot> {
        let map = self.by_identity.lock().unwrap_or_else(|p| p.into_inner());
        let mut out: Vec<Snapshot> = map.values().filter_map(merge).collect();
        out.sort_by(|a, b| a.identity.as_str().cmp(b.identity.as_str()));
        out
    }
}

/// `<digest>.<instance>.json`: the stored name of an instance's snapshot.
fn name_of(identity: &SpiffeId, instance: &str) -> String {
    let digest = Sha256::digest(identity.as_str().as_bytes());
    format!("{}.{instance}.json", hex::encode(&digest[..16]))
}

/// `<digest>.<instance>.json` → the instance.
fn instance_of_name(name: &str) -> Option<String> {
    let name = name.strip_suffix(".json")?;
    let (_, instance) = name.split_once('.')?;
    valid_instance(instance).then(|| instance.to_owned())
}

/// Instances of one identity merged. Instances learned with another bucket
/// length than the first cannot pool their rates and are left out, with a
/// warning.
fn merge(instances: &BTreeMap<String, Snapshot>) -> Option<Snapshot> {
    let mut it = instances.iter();
    let (_, first) = it.next()?;
    let mut merged = first.clone();
    for (instance, snap) in it {
        if let Err(e) = merged.merge(snap, MAX_ENTRIES) {
            tracing::warn!(identity = %snap.identity, instance, error = %e, "baseline left out of the merge");
        }
    }
    Some(merged)
}

/// Pod names and the like: 1 to 128 of `A-Z a-z 0-9 . _ -`.
fn valid_instance(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_INSTANCE_LEN
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

fn query_param<'a>(query: Option<&'a str>, key: &str) -> Option<&'a str> {
    query_pairs(query).find(|(k, _)| *k == key).map(|(_, v)| v)
}

/// POST /v1/baselines?instance=ID from a workload (`caller`, proven by its
/// SVID): its own cumulative snapshot.
pub async fn post(
    state: &State,
    caller: SpiffeId,
    req: Request<Incoming>,
) -> Result<Resp, Failure> {
    let instance = query_param(req.uri().query(), "instance")
        .filter(|i| valid_instance(i))
        .ok_or_else(|| {
            Failure::new(
                StatusCode::BAD_REQUEST,
                "bad_instance",
                "?instance= must be 1 to 128 of A-Z a-z 0-9 . _ -",
            )
        })?
        .to_owned();
    let body = read_body_max(req, state.config.handshake_timeout, MAX_SNAPSHOT_BYTES).await?;
    let snap = Snapshot::from_json(&body, MAX_ENTRIES)
        .map_err(|e| Failure::new(StatusCode::BAD_REQUEST, "bad_baseline", e.to_string()))?;
    if snap.identity != caller {
        return Err(Failure::new(
            StatusCode::FORBIDDEN,
            "baseline_identity_mismatch",
            format!(
                "{caller} may report only its own baseline, not that of {}",
                snap.identity
            ),
        ));
    }
    let entries = state.baselines.put(&instance, snap).await?;
    tracing::debug!(identity = %caller, instance, entries, "baseline received");
    Ok(json(StatusCode::OK, &BaselineAccepted { entries }))
}

/// GET /v1/baselines[?identity=ID] on the admin socket.
pub async fn get(state: &State, query: Option<&str>) -> Result<Resp, Failure> {
    if state.store.shared() {
        state.baselines.refresh().await.map_err(|e| {
            Failure::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "store_unavailable",
                e.to_string(),
            )
        })?;
    }
    let Some(raw) = query_param(query, "identity") else {
        return Ok(json(StatusCode::OK, &state.baselines.all()));
    };
    let text = percent_decode(raw);
    let id = SpiffeId::parse(&text)
        .map_err(|e| Failure::new(StatusCode::BAD_REQUEST, "bad_spiffe_id", e.to_string()))?;
    match state.baselines.merged(&id) {
        Some(snap) => Ok(json(StatusCode::OK, &snap)),
        None => Err(Failure::new(
            StatusCode::NOT_FOUND,
            "unknown_identity",
            format!("no baseline reported for {id}"),
        )),
    }
}

/// `%XX` escapes decoded (a SPIFFE ID in a query is usually escaped).
fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = b
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok());
        match (b[i], hex.and_then(|h| u8::from_str_radix(h, 16).ok())) {
            (b'%', Some(v)) => {
                out.push(v);
                i += 3;
            }
            (c, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn open(dir: &std::path::Path) -> Baselines {
        let store = crate::store::dir::DirStore::open(dir, None, None, None).unwrap();
        Baselines::open(Arc::new(store)).await.unwrap()
    }

    fn snap(id: &str) -> Snapshot {
        Snapshot::empty(SpiffeId::parse(id).unwrap(), 10_000, 1)
    }

    #[tokio::test]
    async fn instances_past_the_cap_are_refused_and_known_ones_still_replace() {
        let dir = tempfile::tempdir().unwrap();
        let b = open(dir.path()).await;
        let id = "spiffe://td/ns/a/sa/api";
        for i in 0..MAX_INSTANCES {
            b.put(&format!("pod-{i}"), snap(id)).await.unwrap();
        }
        let f = b.put("pod-new", snap(id)).await.unwrap_err();
        assert_eq!(f.status, StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(f.code, "too_many_instances");
        b.put("pod-0", snap(id)).await.unwrap();
        // Another identity has its own allowance.
        b.put("pod-new", snap("spiffe://td/ns/a/sa/db"))
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn a_restart_restores_readable_files_and_skips_a_corrupt_one() {
        let dir = tempfile::tempdir().unwrap();
        let id = SpiffeId::parse("spiffe://td/ns/a/sa/api").unwrap();
        {
            let b = open(dir.path()).await;
            b.put("pod-0", snap(id.as_str())).await.unwrap();
        }
        std::fs::write(
            dir.path().join("baselines/0000.pod-1.json"),
            b"{\"version\":1,",
        )
        .unwrap();
        let b = open(dir.path()).await;
        assert_eq!(b.merged(&id).unwrap().identity, id);
        assert_eq!(b.all().len(), 1);
    }

    #[test]
    fn instances_are_names_not_paths() {
        assert!(valid_instance("api-7d9f-xk2p"));
        assert!(!valid_instance("../etc"));
        assert!(!valid_instance("a/b"));
        assert!(!valid_instance(""));
        assert_eq!(percent_decode("spiffe%3A%2F%2Ftd%2Fa"), "spiffe://td/a");
    }
}
