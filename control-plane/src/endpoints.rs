//! The endpoint map served at GET /v1/endpoints: which SPIFFE ID each meshed
//! destination must present. Written as a YAML file (`--endpoints`), kept in
//! the state store and reloaded when it changes there; a bad file keeps the
//! last good map.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use palisade_policy::watch::{PathWatch, WatchError};
use palisade_policy::SpiffeId;

use palisade_identity::api::{Endpoint, EndpointsResponse};

use crate::store::{Store, StoreError, Topic};

#[derive(Debug, thiserror::Error)]
pub enum EndpointsError {
    #[error("{0}: {1}")]
    Io(String, std::io::Error),
    #[error("{0}: {1}")]
    Yaml(String, String),
    #[error("{file}: entry {index}: address {address:?} is neither `ip:port` nor `ip`")]
    BadAddress {
        file: String,
        index: usize,
        address: String,
    },
    #[error("{file}: entry {index}: identity: {error}")]
    BadIdentity {
        file: String,
        index: usize,
        error: String,
    },
    #[error(transparent)]
    Watch(#[from] WatchError),
}

/// Reads and validates an endpoints file.
pub fn load(path: &Path) -> Result<Vec<Endpoint>, EndpointsError> {
    let file = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| EndpointsError::Io(file.clone(), e))?;
    let list: Vec<Endpoint> = if text.trim().is_empty() {
        Vec::new()
    } else {
        serde_saphyr::from_str(&text)
            .map_err(|e| EndpointsError::Yaml(file.clone(), e.to_string()))?
    };
    for (index, ep) in list.iter().enumerate() {
        if ep.address.parse::<SocketAddr>().is_err() && ep.address.parse::<IpAddr>().is_err() {
            return Err(EndpointsError::BadAddress {
                file,
                index,
                address: ep.address.clone(),
            });
        }
        if let Err(e) = SpiffeId::parse(&ep.identity) {
            return Err(EndpointsError::BadIdentity {
                file,
                index,
                error: e.to_string(),
            });
        }
    }
    Ok(list)
}

/// The live endpoint map, versioned: each successful reload bumps `version`.
pub struct EndpointMap {
    current: ArcSwap<EndpointsResponse>,
}

impl Default for EndpointMap {
    fn default() -> Self {
        EndpointMap {
            current: ArcSwap::from_pointee(EndpointsResponse::default()),
        }
    }
}

impl EndpointMap {
    pub fn load(&self) -> Arc<EndpointsResponse> {
        self.current.load_full()
    }

    /// Serves `endpoints`; the version moves only when they changed.
    pub fn install(&self, endpoints: Vec<Endpoint>) -> u64 {
        let old = self.current.load();
        if old.version > 0 && old.endpoints == endpoints {
            return old.version;
        }
        let version = old.version + 1;
        self.current
            .store(Arc::new(EndpointsResponse { version, endpoints }));
        version
    }

    /// Reads the map from `store` now and again each time it changes there
    /// (the `--endpoints` file, or etcd); a bad map keeps the last good one.
    pub async fn watch(self: &Arc<Self>, store: Arc<dyn Store>) -> Result<(), StoreError> {
        let mut rx = store.watch(Topic::Endpoints).await?;
        let map = Arc::clone(self);
        let reload = move |store: Arc<dyn Store>, map: Arc<EndpointMap>| async move {
            match store.load_endpoints().await {
                Ok(Some(list)) => {
                    let v = map.install(list);
                    tracing::info!(endpoints.version = v, "endpoints loaded");
                }
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "endpoints reload failed; keeping the last good map")
                }
            }
        };
        reload(store.clone(), map.clone()).await;
        tokio::spawn(async move {
            while rx.changed().await.is_ok() {
                reload(store.clone(), map.clone()).await;
            }
        });
        Ok(())
    }
}

/// With a shared store: publishes the `--endpoints` file to it now and
/// after each change, so every replica serves it. The returned watch must
/// be kept alive.
pub fn publish(path: PathBuf, store: Arc<dyn Store>) -> Result<PathWatch, EndpointsError> {
    let rt = tokio::runtime::Handle::current();
    let push = move |path: &Path| match load(path) {
        Ok(list) => {
            let store = store.clone();
            rt.spawn(async move {
                if let Err(e) = store.put_endpoints(&list).await {
                    tracing::warn!(error = %e, "cannot publish the endpoint map to the store");
                }
            });
        }
        Err(e) => {
            tracing::warn!(error = %e, "endpoints file rejected; the store keeps the last good map")
        }
    };
    push(&path);
    let file = path.clone();
    Ok(palisade_policy::watch::watch(
        &path,
        DEBOUNCE,
        "endpoints-publish",
        move || push(&file),
    )?)
}

/// Quiet time after the last file event before the file is read again.
const DEBOUNCE: Duration = Duration::from_millis(200);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn yaml_list_of_endpoints_loads_and_bad_addresses_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("e.yaml");
        std::fs::write(&f, "- address: 10.0.0.7:8080\n  identity: spiffe://td/ns/a/sa/b\n- address: 10.0.0.8\n  identity: spiffe://td/x\n").unwrap();
        let list = load(&f).unwrap();
        assert_eq!(list.len(), 2);
        assert_eq!(list[1].address, "10.0.0.8");
        std::fs::write(&f, "- address: nope\n  identity: spiffe://td/x\n").unwrap();
        assert!(load(&f)
            .unwrap_err()
            .to_string()
            .contains("entry 0: address \"nope\""));
    }
}
