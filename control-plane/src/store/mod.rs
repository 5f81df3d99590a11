//! Where the control plane keeps its state, behind one trait: a local
//! directory (the default, one replica) or an etcd v3 cluster shared by
//! several replicas. The store holds the CA material (private keys sealed
//! under the key-encryption key), join tokens, policy documents, the
//! endpoint map, baselines and recent security events.

pub mod dir;
pub mod etcd;
pub mod kek;

use std::sync::Arc;

use async_trait::async_trait;
use palisade_identity::api::Endpoint;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::ca::store::CaState;
use crate::config::{Config, StoreKind};
pub use kek::Kek;

/// A version of a stored value, compared on every conditional write.
pub type Revision = i64;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The store cannot serve (etcd without quorum, unreachable, timing out).
    #[error("the state store is unavailable: {0}")]
    Unavailable(String),
    #[error("{0}: {1}")]
    Io(String, std::io::Error),
    #[error("stored state is corrupt: {0}")]
    Corrupt(String),
    #[error("key-encryption key: {0}")]
    Kek(String),
    #[error("{0}")]
    Refused(String),
    #[error(transparent)]
    Watch(#[from] palisade_policy::watch::WatchError),
}

impl StoreError {
    /// The `op` label of `store_errors_total` and a short machine reason.
    pub fn reason(&self) -> &'static str {
        match self {
            StoreError::Unavailable(_) => "unavailable",
            StoreError::Io(..) => "io",
            StoreError::Corrupt(_) => "corrupt",
            StoreError::Kek(_) => "kek",
            StoreError::Refused(_) => "refused",
            StoreError::Watch(_) => "watch",
        }
    }
}

/// What a store can be asked to watch: each change anywhere under a topic
/// ticks the topic's receiver.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Topic {
    Ca,
    Policies,
    Endpoints,
}

/// A join token as stored: only its SHA-256 is the key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredToken {
    pub spiffe_id: String,
    pub expires_at: i64,
}

/// What spending a join token found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Redeemed {
    /// This caller spent it; nobody else ever will.
    Spent(StoredToken),
    /// Someone spent it before.
    Replayed,
    Unknown,
}

/// One policy file: its name (`shop.yaml`) and its YAML text.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyText {
    pub name: String,
    pub text: String,
}

/// The policy files in the store, and whether an empty set is deliberate.
#[derive(Debug, Clone, Default)]
pub struct PolicySet {
    pub files: Vec<PolicyText>,
    pub allow_empty: bool,
}

/// A store-wide lock held through a lease: released when dropped, or by
/// the store when the holder dies and its lease expires.
pub trait Held: Send + Sync {}

/// The control plane's persistent state.
#[async_trait]
pub trait Store: Send + Sync {
    /// `directory` or `etcd`, for logs and metrics.
    fn kind(&self) -> &'static str;

    /// Whether other replicas write to it too: they must be watched and a
    /// CA rotation elected.
    fn shared(&self) -> bool;

    /// Ok while the store can serve a read that needs its quorum.
    async fn check(&self) -> Result<(), StoreError>;

    /// The CA state and its revision; `None` before the first CA.
    async fn load_ca(&self) -> Result<Option<(CaState, Revision)>, StoreError>;

    /// Writes the whole CA state in one step, if what is stored is still at
    /// `expected` (`None`: nothing stored). `Ok(None)` when someone else
    /// wrote first: reload and decide again.
    async fn save_ca(
        &self,
        state: &CaState,
        expected: Option<Revision>,
    ) -> Result<Option<Revision>, StoreError>;

    /// Stores a new join token under its digest, until it expires.
    async fn create_token(&self, digest: &[u8; 32], token: &StoredToken) -> Result<(), StoreError>;

    /// Spends a join token: exactly one caller, across every replica, ever
    /// gets `Spent`.
    async fn redeem_token(&self, digest: &[u8; 32]) -> Result<Redeemed, StoreError>;

    /// Forgets tokens well past their expiry.
    async fn prune_tokens(&self, cutoff: i64) -> Result<(), StoreError>;

    async fn load_policies(&self) -> Result<PolicySet, StoreError>;

    /// Replaces every policy file with `files` (already validated).
    async fn apply_policies(&self, files: &[PolicyText]) -> Result<(), StoreError>;

    /// The endpoint map; `None` when there is none.
    async fn load_endpoints(&self) -> Result<Option<Vec<Endpoint>>, StoreError>;

    /// Publishes an endpoint map read from a file (shared stores only).
    async fn put_endpoints(&self, endpoints: &[Endpoint]) -> Result<(), StoreError>;

    /// Keeps one baseline snapshot (JSON) under `name`, replacing it.
    async fn put_baseline(&self, name: &str, json: &[u8]) -> Result<(), StoreError>;

    /// Every stored baseline snapshot, by name.
    async fn load_baselines(&self) -> Result<Vec<(String, Vec<u8>)>, StoreError>;

    /// Appends a batch of security events (JSON); `None` when the store
    /// keeps no events (the directory: they live in memory).
    async fn append_events(&self, events: &[serde_json::Value]) -> Result<Option<u64>, StoreError>;

    /// The most recent stored events with their sequence numbers, oldest
    /// first, at most `limit`, from `since` on.
    async fn recent_events(
        &self,
        since: u64,
        limit: usize,
    ) -> Result<Vec<(u64, serde_json::Value)>, StoreError>;

    /// A receiver that ticks each time `topic` changes, whoever wrote it.
    async fn watch(&self, topic: Topic) -> Result<watch::Receiver<u64>, StoreError>;

    /// Takes the store-wide lock `name`, waiting at most `wait`.
    async fn lock(
        &self,
        name: &str,
        wait: std::time::Duration,
    ) -> Result<Box<dyn Held>, StoreError>;
}

/// Opens the store `config` names.
pub async fn open(config: &Config) -> Result<Arc<dyn Store>, StoreError> {
    let kek = config.kek_file.as_deref().map(Kek::load).transpose()?;
    match config.store {
        StoreKind::Directory => Ok(Arc::new(dir::DirStore::open(
            &config.state_dir,
            config.policy_dir.clone(),
            config.endpoints.clone(),
            kek,
        )?)),
        StoreKind::Etcd => {
            let kek = kek.ok_or_else(|| {
                StoreError::Kek("--store etcd needs --kek-file: CA keys are sealed in etcd".into())
            })?;
            // Still local: the admin socket and the bootstrap bundle.
            dir::private_dir(&config.state_dir)?;
            Ok(Arc::new(etcd::EtcdStore::connect(config, kek).await?))
        }
    }
}
