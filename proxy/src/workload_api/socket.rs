//! The Workload API's Unix socket. A socket left by an earlier run is
//! replaced; anything else at the path is refused. The socket is 0666 so an
//! app running as another user in the pod can connect; a directory the
//! sidecar creates is 0755, so only the sidecar can replace the socket.
//! Which containers see it at all is decided by who mounts the directory.

use std::io;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};

use tokio::net::UnixListener;

const SOCKET_MODE: u32 = 0o666;
const DIR_MODE: u32 = 0o755;

#[derive(Debug, thiserror::Error)]
pub enum SocketError {
    #[error("creating the Workload API directory {path}: {source}")]
    Dir { path: PathBuf, source: io::Error },
    #[error("{0} exists and is not a socket; refusing to replace it (fix workload_api.socket)")]
    NotASocket(PathBuf),
    #[error("removing the stale Workload API socket {path}: {source}")]
    Stale { path: PathBuf, source: io::Error },
    #[error("binding the Workload API socket {path}: {source}")]
    Bind { path: PathBuf, source: io::Error },
}

/// Listen on `path`, replacing a stale socket, with the modes above.
pub fn bind(path: &Path) -> Result<UnixListener, SocketError> {
    let parent = path.parent().unwrap_or(Path::new("/"));
    let dir_err = |source| SocketError::Dir {
        path: parent.to_owned(),
        source,
    };
    match std::fs::metadata(parent) {
        Ok(meta) if meta.permissions().mode() & 0o1002 == 0o002 => tracing::warn!(
            path = %parent.display(),
            mode = format!("{:o}", meta.permissions().mode() & 0o7777),
            "the Workload API directory is writable by everyone: another process with it mounted could replace the socket"
        ),
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            std::fs::create_dir_all(parent).map_err(dir_err)?;
            std::fs::set_permissions(parent, std::fs::Permissions::from_mode(DIR_MODE))
                .map_err(dir_err)?;
        }
        Err(e) => return Err(dir_err(e)),
    }
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => {
            std::fs::remove_file(path).map_err(|source| SocketError::Stale {
                path: path.to_owned(),
                source,
            })?;
            tracing::info!(path = %path.display(), "removed a stale Workload API socket");
        }
        Ok(_) => return Err(SocketError::NotASocket(path.to_owned())),
        Err(_) => {}
    }
    let bind_err = |source| SocketError::Bind {
        path: path.to_owned(),
        source,
    };
    let listener = UnixListener::bind(path).map_err(bind_err)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(SOCKET_MODE))
        .map_err(bind_err)?;
    Ok(listener)
}

/// Remove the socket on drain, so no new client connects to a sidecar
/// that is going away.
pub fn remove(path: &Path) {
    match std::fs::remove_file(path) {
        Ok(()) => tracing::info!(path = %path.display(), "Workload API socket removed"),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "cannot remove the Workload API socket")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_stale_socket_is_replaced_and_modes_are_set() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("spiffe/workload.sock");
        let first = bind(&path).unwrap();
        drop(first);
        // The file outlives the listener, as after a crash.
        assert!(path.exists());
        let _second = bind(&path).unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&path), 0o666);
        assert_eq!(mode(path.parent().unwrap()), 0o755);
        tokio::net::UnixStream::connect(&path).await.unwrap();
        remove(&path);
        assert!(!path.exists());
    }

    #[tokio::test]
    async fn a_file_that_is_not_a_socket_is_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("workload.sock");
        std::fs::write(&path, "data").unwrap();
        let err = bind(&path).unwrap_err();
        assert!(matches!(err, SocketError::NotASocket(_)), "{err}");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "data");
    }
}
