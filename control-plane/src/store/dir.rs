//! The directory store: one replica's state under `--state-dir` (CA files
//! mode 0600 in 0700 directories, written atomically), policies in
//! `--policy-dir`, the endpoint map in `--endpoints`, join tokens and
//! events in memory. Nothing else to run.

use std::collections::HashMap;
use std::fs;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use palisade_identity::api::Endpoint;
use palisade_policy::fs::{empty_allowed, read_files, LoadError};
use palisade_policy::watch::PathWatch;
use tokio::sync::watch;

use super::{
    Held, Kek, PolicySet, PolicyText, Redeemed, Revision, Store, StoreError, StoredToken, Topic,
};
use crate::attest::join_token::MAX_TOKENS;
use crate::ca::store::{CaIndex, CaMaterial, CaState, StoredKey};

/// Quiet time after the last file event before a watched path is read again.
const POLICY_DEBOUNCE: Duration = Duration::from_millis(100);
const ENDPOINTS_DEBOUNCE: Duration = Duration::from_millis(200);

pub struct DirStore {
    root: PathBuf,
    policy_dir: Option<PathBuf>,
    endpoints: Option<PathBuf>,
    kek: Option<Kek>,
    tokens: Mutex<HashMap<[u8; 32], (StoredToken, bool)>>,
    /// Kept alive while the store is: the file watches and the senders of
    /// topics nothing else writes to.
    watches: Mutex<Vec<PathWatch>>,
    quiet: Mutex<Vec<watch::Sender<u64>>>,
    lock: Arc<tokio::sync::Mutex<()>>,
}

impl Held for tokio::sync::OwnedMutexGuard<()> {}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> StoreError + '_ {
    move |e| StoreError::Io(path.display().to_string(), e)
}

/// Creates `dir` mode 0700 if needed, and tightens it if an operator
/// created it looser.
pub(crate) fn private_dir(dir: &Path) -> Result<(), StoreError> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(io(dir))?;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).map_err(io(dir))
}

impl DirStore {
    pub fn open(
        root: &Path,
        policy_dir: Option<PathBuf>,
        endpoints: Option<PathBuf>,
        kek: Option<Kek>,
    ) -> Result<DirStore, StoreError> {
        private_dir(root)?;
        private_dir(&root.join("ca"))?;
        fs::create_dir_all(root.join("baselines")).map_err(io(root))?;
        Ok(DirStore {
            root: root.to_owned(),
            policy_dir,
            endpoints,
            kek,
            tokens: Mutex::default(),
            watches: Mutex::default(),
            quiet: Mutex::default(),
            lock: Arc::default(),
        })
    }

    fn ca_path(&self, file: &str) -> PathBuf {
        self.root.join("ca").join(file)
    }

    fn read_index(&self) -> Result<Option<CaIndex>, StoreError> {
        let path = self.ca_path("index.json");
        match fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|e| StoreError::Corrupt(format!("{}: {e}", path.display()))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(StoreError::Io(path.display().to_string(), e)),
        }
    }

    fn read_key(&self, seq: u64) -> Result<String, StoreError> {
        let sealed = self.ca_path(&format!("{seq}.key.sealed"));
        let key = match fs::read(&sealed) {
            Ok(bytes) => StoredKey::Sealed(
                serde_json::from_slice(&bytes)
                    .map_err(|e| StoreError::Corrupt(format!("{}: {e}", sealed.display())))?,
            ),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let pem = self.ca_path(&format!("{seq}.key.pem"));
                StoredKey::Pem(fs::read_to_string(&pem).map_err(io(&pem))?)
            }
            Err(e) => return Err(StoreError::Io(sealed.display().to_string(), e)),
        };
        key.open(self.kek.as_ref(), seq)
    }

    fn remove_ca(&self, seq: u64) {
        // Best effort: a leftover file of a dropped CA is harmless.
        for ext in ["crt.pem", "key.pem", "key.sealed"] {
            let _ = fs::remove_file(self.ca_path(&format!("{seq}.{ext}")));
        }
    }

    fn file_watch(
        &self,
        path: &Path,
        debounce: Duration,
        name: &str,
    ) -> Result<watch::Receiver<u64>, StoreError> {
        let (tx, rx) = watch::channel(0);
        let w = palisade_policy::watch::watch(path, debounce, name, move || {
            tx.send_modify(|g| *g += 1)
        })?;
        self.watches.lock().expect("watches lock").push(w);
        Ok(rx)
    }
}

#[async_trait]
impl Store for DirStore {
    fn kind(&self) -> &'static str {
        "directory"
    }

    fn shared(&self) -> bool {
        false
    }

    async fn check(&self) -> Result<(), StoreError> {
        Ok(())
    }

    async fn load_ca(&self) -> Result<Option<(CaState, Revision)>, StoreError> {
        let Some(index) = self.read_index()? else {
            return Ok(None);
        };
        let mut state = CaState {
            index,
            ..CaState::default()
        };
        for rec in &state.index.cas {
            let crt = self.ca_path(&format!("{}.crt.pem", rec.seq));
            let cert_pem = fs::read_to_string(&crt).map_err(io(&crt))?;
            let key_pem = self.read_key(rec.seq)?;
            state
                .material
                .insert(rec.seq, CaMaterial { cert_pem, key_pem });
        }
        let rev = state.index.bundle_sequence as Revision;
        Ok(Some((state, rev)))
    }

    async fn save_ca(
        &self,
        state: &CaState,
        expected: Option<Revision>,
    ) -> Result<Option<Revision>, StoreError> {
        let old = self.read_index()?;
        if old.as_ref().map(|i| i.bundle_sequence as Revision) != expected {
            return Ok(None);
        }
        for (seq, m) in &state.material {
            write_private(
                &self.ca_path(&format!("{seq}.crt.pem")),
                m.cert_pem.as_bytes(),
            )?;
            match StoredKey::seal(self.kek.as_ref(), *seq, &m.key_pem) {
                StoredKey::Sealed(s) => {
                    let json = serde_json::to_vec(&s).expect("sealed key serializes");
                    write_private(&self.ca_path(&format!("{seq}.key.sealed")), &json)?;
                    // Sealed from now on: no plaintext copy stays behind.
                    let _ = fs::remove_file(self.ca_path(&format!("{seq}.key.pem")));
                }
                StoredKey::Pem(p) => {
                    write_private(&self.ca_path(&format!("{seq}.key.pem")), p.as_bytes())?
                }
            }
        }
        let json = serde_json::to_vec_pretty(&state.index).expect("index serializes");
        write_private(&self.ca_path("index.json"), &json)?;
        for gone in old
            .iter()
            .flat_map(|i| &i.cas)
            .filter(|r| !state.material.contains_key(&r.seq))
        {
            self.remove_ca(gone.seq);
        }
        Ok(Some(state.index.bundle_sequence as Revision))
    }

    async fn create_token(&self, digest: &[u8; 32], token: &StoredToken) -> Result<(), StoreError> {
        let mut map = self.tokens.lock().expect("tokens lock");
        if map.len() >= MAX_TOKENS {
            let now = time::OffsetDateTime::now_utc().unix_timestamp();
            map.retain(|_, (t, _)| t.expires_at > now);
            if map.len() >= MAX_TOKENS {
                return Err(StoreError::Refused(format!(
                    "too many outstanding join tokens ({MAX_TOKENS}); wait for some to expire"
                )));
            }
        }
        map.insert(*digest, (token.clone(), false));
        Ok(())
    }

    async fn redeem_token(&self, digest: &[u8; 32]) -> Result<Redeemed, StoreError> {
        let mut map = self.tokens.lock().expect("tokens lock");
        Ok(match map.get_mut(digest) {
            None => Redeemed::Unknown,
            Some((_, true)) => Redeemed::Replayed,
            Some((t, used)) => {
                *used = true;
                Redeemed::Spent(t.clone())
            }
        })
    }

    async fn prune_tokens(&self, cutoff: i64) -> Result<(), StoreError> {
        self.tokens
            .lock()
            .expect("tokens lock")
            .retain(|_, (t, _)| t.expires_at > cutoff);
        Ok(())
    }

    async fn load_policies(&self) -> Result<PolicySet, StoreError> {
        let Some(dir) = &self.policy_dir else {
            return Ok(PolicySet {
                files: Vec::new(),
                allow_empty: true,
            });
        };
        let files = read_files(&[dir]).map_err(|e| match e {
            LoadError::Io { path, source } => StoreError::Io(path.display().to_string(), source),
            LoadError::Invalid(_) => StoreError::Corrupt(e.to_string()),
        })?;
        Ok(PolicySet {
            files: files
                .into_iter()
                .map(|f| PolicyText {
                    name: f.name,
                    text: f.text,
                })
                .collect(),
            allow_empty: empty_allowed(dir),
        })
    }

    async fn apply_policies(&self, files: &[PolicyText]) -> Result<(), StoreError> {
        let Some(dir) = &self.policy_dir else {
            return Err(StoreError::Refused(
                "this control plane has no --policy-dir to apply policies to".into(),
            ));
        };
        for f in files {
            write_atomic(&dir.join(&f.name), f.text.as_bytes(), 0o644)?;
        }
        for entry in fs::read_dir(dir).map_err(io(dir))? {
            let entry = entry.map_err(io(dir))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let yaml = name.ends_with(".yaml") || name.ends_with(".yml");
            if yaml && !name.starts_with('.') && !files.iter().any(|f| f.name == name) {
                fs::remove_file(entry.path()).map_err(io(&entry.path()))?;
            }
        }
        Ok(())
    }

    async fn load_endpoints(&self) -> Result<Option<Vec<Endpoint>>, StoreError> {
        let Some(file) = &self.endpoints else {
            return Ok(None);
        };
        crate::endpoints::load(file)
            .map(Some)
            .map_err(|e| StoreError::Corrupt(e.to_string()))
    }

    async fn put_endpoints(&self, _: &[Endpoint]) -> Result<(), StoreError> {
        Err(StoreError::Refused(
            "the directory store reads --endpoints itself".into(),
        ))
    }

    async fn put_baseline(&self, name: &str, json: &[u8]) -> Result<(), StoreError> {
        write_private(&self.root.join("baselines").join(name), json)
    }

    async fn load_baselines(&self) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        let dir = self.root.join("baselines");
        let mut out = Vec::new();
        for entry in fs::read_dir(&dir).map_err(io(&dir))? {
            let path = entry.map_err(io(&dir))?.path();
            let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
                continue;
            };
            match fs::read(&path) {
                Ok(bytes) => out.push((name.to_owned(), bytes)),
                Err(e) => {
                    tracing::warn!(file = %path.display(), error = %e, "skipping an unreadable baseline")
                }
            }
        }
        Ok(out)
    }

    async fn append_events(&self, _: &[serde_json::Value]) -> Result<Option<u64>, StoreError> {
        Ok(None)
    }

    async fn recent_events(
        &self,
        _: u64,
        _: usize,
    ) -> Result<Vec<(u64, serde_json::Value)>, StoreError> {
        Ok(Vec::new())
    }

    async fn watch(&self, topic: Topic) -> Result<watch::Receiver<u64>, StoreError> {
        let path = match topic {
            Topic::Policies => self
                .policy_dir
                .as_ref()
                .map(|p| (p, POLICY_DEBOUNCE, "policy-watch")),
            Topic::Endpoints => self
                .endpoints
                .as_ref()
                .map(|p| (p, ENDPOINTS_DEBOUNCE, "endpoints-watch")),
            // One replica: only it writes the CA.
            Topic::Ca => None,
        };
        match path {
            Some((p, debounce, name)) => self.file_watch(p, debounce, name),
            None => {
                let (tx, rx) = watch::channel(0);
                self.quiet.lock().expect("quiet lock").push(tx);
                Ok(rx)
            }
        }
    }

    async fn lock(&self, _: &str, _: Duration) -> Result<Box<dyn Held>, StoreError> {
        Ok(Box::new(self.lock.clone().lock_owned().await))
    }
}

/// Writes `bytes` to `path` atomically (temp file + rename), mode 0600, so a
/// crash never leaves a half-written key or index behind.
pub fn write_private(path: &Path, bytes: &[u8]) -> Result<(), StoreError> {
    write_atomic(path, bytes, 0o600)
}

fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> Result<(), StoreError> {
    let tmp = path.with_extension("tmp");
    let _ = fs::remove_file(&tmp);
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)
        .map_err(io(path))?;
    f.write_all(bytes).map_err(io(path))?;
    f.sync_all().map_err(io(path))?;
    fs::rename(&tmp, path).map_err(io(path))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ca::Authority;
    use palisade_policy::TrustDomain;

    async fn authority(root: &Path, kek: Option<Kek>) -> Result<Authority, crate::ca::CaError> {
        let store = DirStore::open(root, None, None, kek)?;
        Authority::open_in(
            TrustDomain::new("cluster.local").unwrap(),
            Arc::new(store),
            root.join("bundle.pem"),
            Duration::from_secs(86_400),
            Duration::from_secs(3600),
            None,
        )
        .await
    }

    fn kek(dir: &Path, byte: u8) -> Kek {
        let path = dir.join(format!("kek-{byte}"));
        fs::write(&path, [byte; 32]).unwrap();
        Kek::load(&path).unwrap()
    }

    #[tokio::test]
    async fn with_a_kek_the_ca_key_is_sealed_on_disk_and_needs_that_kek_to_open() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("state");
        let serial = authority(&root, Some(kek(tmp.path(), 1)))
            .await
            .unwrap()
            .snapshot()
            .active()
            .serial_hex
            .clone();
        assert!(!root.join("ca/1.key.pem").exists(), "no plaintext key");
        let sealed = fs::read_to_string(root.join("ca/1.key.sealed")).unwrap();
        assert!(!sealed.contains("PRIVATE KEY"), "{sealed}");

        let again = authority(&root, Some(kek(tmp.path(), 1))).await.unwrap();
        assert_eq!(again.snapshot().active().serial_hex, serial);
        let wrong = authority(&root, Some(kek(tmp.path(), 2)))
            .await
            .err()
            .expect("another KEK cannot open the key");
        assert!(wrong.to_string().contains("wrong --kek-file"), "{wrong}");
        let none = authority(&root, None)
            .await
            .err()
            .expect("no KEK cannot open the key");
        assert!(none.to_string().contains("--kek-file"), "{none}");
    }

    #[tokio::test]
    async fn a_kek_given_later_seals_the_plaintext_keys_at_the_next_change() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("state");
        drop(authority(&root, None).await.unwrap());
        assert!(
            root.join("ca/1.key.pem").exists(),
            "today's layout without a KEK"
        );
        let ca = authority(&root, Some(kek(tmp.path(), 3))).await.unwrap();
        ca.rotate().await.unwrap();
        for seq in [1, 2] {
            assert!(!root.join(format!("ca/{seq}.key.pem")).exists());
            assert!(root.join(format!("ca/{seq}.key.sealed")).exists());
        }
    }
}
