//! The `workload_api:` settings: whether the sidecar serves the SPIFFE
//! Workload API to its app, and on which Unix socket.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Where the socket is when only `enabled` is set; apps find it through
/// `SPIFFE_ENDPOINT_SOCKET=unix:///run/palisade/spiffe/workload.sock`.
pub const DEFAULT_SOCKET: &str = "/run/palisade/spiffe/workload.sock";

/// `workload_api:` in the proxy config. Off unless `enabled` or `socket`
/// is set.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WorkloadApiConfig {
    pub enabled: bool,
    /// The Unix socket to serve on; setting it turns the API on.
    pub socket: Option<PathBuf>,
}

impl WorkloadApiConfig {
    /// The socket to serve on, or `None` when the API is off.
    pub fn socket_path(&self) -> Option<&Path> {
        match (&self.socket, self.enabled) {
            (Some(p), _) => Some(p),
            (None, true) => Some(Path::new(DEFAULT_SOCKET)),
            (None, false) => None,
        }
    }

    pub fn validate(&self) -> Result<(), String> {
        match &self.socket {
            Some(p) if !p.is_absolute() || p.file_name().is_none() => Err(format!(
                "workload_api.socket: {} must be an absolute path to a socket file",
                p.display()
            )),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::tests::env_of;
    use crate::config::Config;

    #[test]
    fn off_by_default_and_on_with_either_setting() {
        assert_eq!(Config::default().workload_api.socket_path(), None);
        let c = Config::from_yaml("workload_api: {enabled: true}").unwrap();
        assert_eq!(
            c.workload_api.socket_path(),
            Some(Path::new(DEFAULT_SOCKET))
        );
        let c = Config::default()
            .with_env(env_of(&[(
                "PALISADE_WORKLOAD_API_SOCKET",
                "/run/x/api.sock",
            )]))
            .unwrap();
        assert_eq!(
            c.workload_api.socket_path(),
            Some(Path::new("/run/x/api.sock"))
        );
        let c = Config::default()
            .with_env(env_of(&[("PALISADE_WORKLOAD_API_ENABLED", "true")]))
            .unwrap();
        assert_eq!(
            c.workload_api.socket_path(),
            Some(Path::new(DEFAULT_SOCKET))
        );
    }

    #[test]
    fn a_relative_socket_path_is_refused_with_its_setting() {
        let mut c = Config::from_yaml("workload_api: {socket: api.sock}").unwrap();
        let err = c.validate().unwrap_err().to_string();
        assert!(err.contains("workload_api.socket"), "{err}");
    }
}
