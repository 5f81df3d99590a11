//! The CA's state directory: key and certificate files written atomically with
//! mode 0600 inside a 0700 directory, and the index of signing CAs.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::CaError;

/// Where a signing CA stands in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CaStatus {
    /// In the bundle, not yet signing: peers learn it before it is used.
    Prepared,
    /// Signs every new SVID.
    Active,
    /// Signs nothing; stays in the bundle until `retire_after` (Unix seconds),
    /// when every SVID it signed has expired.
    Retired { retire_after: i64 },
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CaRecord {
    pub seq: u64,
    pub status: CaStatus,
}

/// `ca/index.json`: the signing CAs on disk and the bundle's sequence number.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct CaIndex {
    /// SPIFFE bundle `spiffe_sequence`: bumped on every bundle change.
    pub bundle_sequence: u64,
    /// Next CA sequence number to hand out.
    pub next_seq: u64,
    /// SHA-256 of the upstream CA certificate the signing CAs chain to, if any.
    pub upstream: Option<String>,
    pub cas: Vec<CaRecord>,
}

/// The state directory layout.
#[derive(Debug, Clone)]
pub struct StateDir {
    root: PathBuf,
}

impl StateDir {
    /// Creates the directory (mode 0700) if needed and tightens its mode if an
    /// operator created it looser.
    pub fn open(root: &Path) -> Result<StateDir, CaError> {
        let io = |e| CaError::Io(root.display().to_string(), e);
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(root)
            .map_err(io)?;
        fs::set_permissions(root, fs::Permissions::from_mode(0o700)).map_err(io)?;
        let ca = root.join("ca");
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&ca)
            .map_err(|e| CaError::Io(ca.display().to_string(), e))?;
        Ok(StateDir {
            root: root.to_owned(),
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn cert_path(&self, seq: u64) -> PathBuf {
        self.root.join("ca").join(format!("{seq}.crt.pem"))
    }

    pub fn key_path(&self, seq: u64) -> PathBuf {
        self.root.join("ca").join(format!("{seq}.key.pem"))
    }

    pub fn bundle_path(&self) -> PathBuf {
        self.root.join("bundle.pem")
    }

    fn index_path(&self) -> PathBuf {
        self.root.join("ca").join("index.json")
    }

    pub fn load_index(&self) -> Result<Option<CaIndex>, CaError> {
        let path = self.index_path();
        match fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|e| CaError::Corrupt(format!("{}: {e}", path.display()))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(CaError::Io(path.display().to_string(), e)),
        }
    }

    pub fn save_index(&self, index: &CaIndex) -> Result<(), CaError> {
        let json = serde_json::to_vec_pretty(index).expect("index serializes");
        write_private(&self.index_path(), &json)
    }

    pub fn read(&self, path: &Path) -> Result<String, CaError> {
        fs::read_to_string(path).map_err(|e| CaError::Io(path.display().to_string(), e))
    }

    pub fn remove_ca(&self, seq: u64) {
        // Best effort: a leftover file of a dropped CA is harmless.
        let _ = fs::remove_file(self.cert_path(seq));
        let _ = fs::remove_file(self.key_path(seq));
    }
}

/// Writes `bytes` to `path` atomically (temp file + rename), mode 0600, so a
/// crash never leaves a half-written key or index behind.
pub fn write_private(path: &Path, bytes: &[u8]) -> Result<(), CaError> {
    let io = |e| CaError::Io(path.display().to_string(), e);
    let tmp = path.with_extension("tmp");
    let _ = fs::remove_file(&tmp);
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(io)?;
    f.write_all(bytes).map_err(io)?;
    f.sync_all().map_err(io)?;
    fs::rename(&tmp, path).map_err(io)
}
