//! The endpoint map served at GET /v1/endpoints: which SPIFFE ID each meshed
//! destination must present. Loaded from a YAML file and reloaded when it
//! changes; a bad file keeps the last good map.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use palisade_policy::watch::{PathWatch, WatchError};
use palisade_policy::SpiffeId;

use palisade_identity::api::{Endpoint, EndpointsResponse};

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

    /// Reloads from `path`; on error the previous map stays in force.
    pub fn reload(&self, path: &Path) -> Result<u64, EndpointsError> {
        let endpoints = load(path)?;
        let old = self.current.load();
        if old.version > 0 && old.endpoints == endpoints {
            return Ok(old.version);
        }
        let version = old.version + 1;
        self.current
            .store(Arc::new(EndpointsResponse { version, endpoints }));
        Ok(version)
    }

    /// Loads `path` now and reloads it after each burst of changes, once it
    /// has been quiet for `DEBOUNCE`, so a file rewritten in place is read
    /// once it is complete rather than while truncated. The returned watch
    /// must be kept alive.
    pub fn watch(self: &Arc<Self>, path: PathBuf) -> Result<PathWatch, EndpointsError> {
        self.reload(&path)?;
        let map = Arc::clone(self);
        let file = path.clone();
        let w = palisade_policy::watch::watch(
            &path,
            DEBOUNCE,
            "endpoints-watch",
            move || match map.reload(&file) {
                Ok(v) => {
                    tracing::info!(endpoints.version = v, file = %file.display(), "endpoints loaded")
                }
                Err(e) => {
                    tracing::warn!(error = %e, "endpoints reload failed; keeping the last good map")
                }
            },
        )?;
        Ok(w)
    }
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
