//! The etcd v3 store, shared by several control-plane replicas. Every write
//! that must not race is one etcd transaction: a join token is spent by a
//! compare-on-version, the CA state is replaced by a compare-on-revision.
//! Each replica watches the keys others write, and CA rotation is elected
//! through a lock held on this replica's lease.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use etcd_client::{
    Certificate, Client, Compare, CompareOp, ConnectOptions, GetOptions, Identity, LockOptions,
    PutOptions, SortOrder, SortTarget, TlsOptions, Txn, TxnOp, TxnOpResponse,
};
use palisade_identity::api::Endpoint;
use tokio::sync::watch;

use super::{
    Held, Kek, PolicySet, PolicyText, Redeemed, Revision, Store, StoreError, StoredToken, Topic,
};
use crate::ca::store::{CaState, StoredCa};
use crate::config::Config;

/// Longest a single etcd request may take before the store counts as down.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);
/// This replica's lease (its locks die with it): time to live, and how often
/// it is renewed.
const SESSION_TTL: i64 = 5;
const KEEPALIVE_EVERY: Duration = Duration::from_millis(1500);
/// How long stored security events are kept.
const EVENTS_TTL: i64 = 3600;
/// Events in one stored batch at most (their sequence numbers are the
/// batch's etcd revision times this, plus their index).
pub const EVENTS_PER_BATCH: u64 = 1000;
/// A join token is forgotten this long after it expired.
const TOKEN_GRACE: i64 = 60;

pub struct EtcdStore {
    client: Client,
    prefix: String,
    kek: Kek,
    /// This replica's lease while etcd keeps it alive.
    session: Arc<Mutex<Option<i64>>>,
    /// Leases shared by the join tokens that end in the same minute, by
    /// the minute's end (Unix seconds): one lease grant a minute, not one
    /// per token.
    token_leases: Mutex<BTreeMap<i64, i64>>,
}

fn unavailable(e: etcd_client::Error) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

/// Whether a request failed before it reached any member (the balanced
/// channel picked a member that is down): safe to send again.
fn not_sent(e: &etcd_client::Error) -> bool {
    match e {
        etcd_client::Error::TransportError(_) => true,
        etcd_client::Error::GRpcStatus(s) => s.message().contains("connect error"),
        _ => false,
    }
}

/// Tries a request this many times while it cannot reach a member.
const SEND_TRIES: usize = 4;

fn read_file(path: &std::path::Path) -> Result<Vec<u8>, StoreError> {
    std::fs::read(path).map_err(|e| StoreError::Io(path.display().to_string(), e))
}

/// A held etcd lock: unlocked when dropped (and by etcd when the lease ends).
struct EtcdLock {
    client: Client,
    key: Vec<u8>,
}

impl Held for EtcdLock {}

impl Drop for EtcdLock {
    fn drop(&mut self) {
        let (mut client, key) = (self.client.clone(), std::mem::take(&mut self.key));
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                let _ = tokio::time::timeout(REQUEST_TIMEOUT, client.unlock(key)).await;
            });
        }
    }
}

impl EtcdStore {
    /// Connects to `--etcd-endpoints` (with the client certificate, if
    /// given); requests fail fast while the cluster has no leader.
    pub async fn connect(config: &Config, kek: Kek) -> Result<EtcdStore, StoreError> {
        let mut options = ConnectOptions::new()
            .with_timeout(REQUEST_TIMEOUT)
            .with_connect_timeout(REQUEST_TIMEOUT)
            .with_keep_alive(Duration::from_secs(2), REQUEST_TIMEOUT)
            .with_keep_alive_while_idle(true)
            .with_require_leader(true);
        let tls = config.etcd_ca.is_some() || config.etcd_cert.is_some();
        if tls {
            let mut t = TlsOptions::new();
            if let Some(ca) = &config.etcd_ca {
                t = t.ca_certificate(Certificate::from_pem(read_file(ca)?));
            }
            if let (Some(cert), Some(key)) = (&config.etcd_cert, &config.etcd_key) {
                t = t.identity(Identity::from_pem(read_file(cert)?, read_file(key)?));
            }
            options = options.with_tls(t);
        }
        let endpoints: Vec<String> = config
            .etcd_endpoints
            .iter()
            .map(|e| match e.split_once("://") {
                Some(_) => e.clone(),
                None if tls => format!("https://{e}"),
                None => format!("http://{e}"),
            })
            .collect();
        let client = Client::connect(&endpoints, Some(options))
            .await
            .map_err(unavailable)?;
        let store = EtcdStore {
            client,
            prefix: config.etcd_prefix.clone(),
            kek,
            session: Arc::default(),
            token_leases: Mutex::default(),
        };
        tokio::spawn(keep_session(store.client.clone(), store.session.clone()));
        Ok(store)
    }

    /// Runs `op` on a client, again (on another member) while it failed
    /// without reaching one.
    async fn call<T, F, Fut>(&self, mut op: F) -> Result<T, StoreError>
    where
        F: FnMut(Client) -> Fut,
        Fut: std::future::Future<Output = Result<T, etcd_client::Error>>,
    {
        let mut tries = 1;
        loop {
            match op(self.client.clone()).await {
                Err(e) if tries < SEND_TRIES && not_sent(&e) => {
                    tries += 1;
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                r => return r.map_err(unavailable),
            }
        }
    }

    fn key(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
    }

    /// The lease a token ending at `expires_at` goes under: it ends at the
    /// end of the minute after the token's grace period.
    async fn token_lease(&self, expires_at: i64) -> Result<i64, StoreError> {
        let end = (expires_at + TOKEN_GRACE + 59) / 60 * 60;
        if let Some(id) = self.token_leases.lock().expect("leases lock").get(&end) {
            return Ok(*id);
        }
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        let ttl = (end - now).max(1);
        let id = self
            .call(|mut c| async move { c.lease_grant(ttl, None).await })
            .await?
            .id();
        let mut leases = self.token_leases.lock().expect("leases lock");
        leases.retain(|e, _| *e > now);
        // A concurrent grant for the same minute may have won: use that one
        // (this one just expires unused).
        Ok(*leases.entry(end).or_insert(id))
    }

    fn token_key(&self, digest: &[u8; 32]) -> String {
        self.key(&format!("tokens/{}", hex::encode(digest)))
    }

    async fn get_one(&self, name: &str) -> Result<Option<(Vec<u8>, Revision)>, StoreError> {
        let key = self.key(name);
        let resp = self
            .call(|mut c| {
                let key = key.clone();
                async move { c.get(key, None).await }
            })
            .await?;
        Ok(resp
            .kvs()
            .first()
            .map(|kv| (kv.value().to_vec(), kv.mod_revision())))
    }

    async fn put_json<T: serde::Serialize>(&self, name: &str, value: &T) -> Result<(), StoreError> {
        let json = serde_json::to_vec(value).expect("stored types serialize");
        let key = self.key(name);
        self.call(|mut c| {
            let (key, json) = (key.clone(), json.clone());
            async move { c.put(key, json, None).await }
        })
        .await?;
        Ok(())
    }

    async fn get_json<T: serde::de::DeserializeOwned>(
        &self,
        name: &str,
    ) -> Result<Option<T>, StoreError> {
        match self.get_one(name).await? {
            None => Ok(None),
            Some((bytes, _)) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|e| StoreError::Corrupt(format!("{}: {e}", self.key(name)))),
        }
    }
}

/// Keeps this replica's lease alive, granting a new one whenever etcd lost
/// it (after a quorum loss longer than its TTL).
async fn keep_session(mut client: Client, session: Arc<Mutex<Option<i64>>>) {
    loop {
        let granted = client.lease_grant(SESSION_TTL, None).await;
        let id = match granted {
            Ok(g) => g.id(),
            Err(e) => {
                tracing::debug!(error = %e, "cannot grant the replica's etcd lease yet");
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            }
        };
        *session.lock().expect("session lock") = Some(id);
        if let Ok((mut keeper, mut stream)) = client.lease_keep_alive(id).await {
            loop {
                if keeper.keep_alive().await.is_err() {
                    break;
                }
                match tokio::time::timeout(REQUEST_TIMEOUT, stream.message()).await {
                    Ok(Ok(Some(r))) if r.ttl() > 0 => {}
                    _ => break,
                }
                tokio::time::sleep(KEEPALIVE_EVERY).await;
            }
        }
        *session.lock().expect("session lock") = None;
        tracing::warn!(
            lease = id,
            "lost the replica's etcd lease; granting a new one"
        );
    }
}

#[async_trait]
impl Store for EtcdStore {
    fn kind(&self) -> &'static str {
        "etcd"
    }

    fn shared(&self) -> bool {
        true
    }

    async fn check(&self) -> Result<(), StoreError> {
        // A linearizable read: answered only with a quorum behind it.
        self.get_one("health").await.map(|_| ())
    }

    async fn load_ca(&self) -> Result<Option<(CaState, Revision)>, StoreError> {
        let Some((bytes, rev)) = self.get_one("ca").await? else {
            return Ok(None);
        };
        let stored: StoredCa = serde_json::from_slice(&bytes)
            .map_err(|e| StoreError::Corrupt(format!("{}: {e}", self.key("ca"))))?;
        Ok(Some((CaState::from_stored(stored, Some(&self.kek))?, rev)))
    }

    async fn save_ca(
        &self,
        state: &CaState,
        expected: Option<Revision>,
    ) -> Result<Option<Revision>, StoreError> {
        let key = self.key("ca");
        let json = serde_json::to_vec(&state.to_stored(Some(&self.kek))).expect("CA serializes");
        let guard = match expected {
            None => Compare::version(key.clone(), CompareOp::Equal, 0),
            Some(rev) => Compare::mod_revision(key.clone(), CompareOp::Equal, rev),
        };
        let txn = Txn::new()
            .when([guard])
            .and_then([TxnOp::put(key, json, None)]);
        let resp = self
            .call(|mut c| {
                let txn = txn.clone();
                async move { c.txn(txn).await }
            })
            .await?;
        Ok(resp
            .succeeded()
            .then(|| resp.header().map_or(0, |h| h.revision())))
    }

    async fn create_token(&self, digest: &[u8; 32], token: &StoredToken) -> Result<(), StoreError> {
        let json = serde_json::to_vec(token).expect("token serializes");
        let key = self.token_key(digest);
        let mut tries = 0;
        loop {
            let lease = self.token_lease(token.expires_at).await?;
            let put = self
                .call(|mut c| {
                    let (key, json) = (key.clone(), json.clone());
                    async move {
                        c.put(key, json, Some(PutOptions::new().with_lease(lease)))
                            .await
                    }
                })
                .await;
            match put {
                // A shared lease etcd no longer knows (restored from a
                // backup, say): forget it and grant another.
                Err(StoreError::Unavailable(m)) if m.contains("lease not found") && tries == 0 => {
                    tries += 1;
                    self.token_leases
                        .lock()
                        .expect("leases lock")
                        .retain(|_, id| *id != lease);
                }
                other => return other.map(drop),
            }
        }
    }

    async fn redeem_token(&self, digest: &[u8; 32]) -> Result<Redeemed, StoreError> {
        let key = self.token_key(digest);
        // Created at version 1; the one transaction that still sees version
        // 1 marks it spent (version 2) and gets the token back.
        let txn = Txn::new()
            .when([Compare::version(key.clone(), CompareOp::Equal, 1)])
            .and_then([TxnOp::put(
                key.clone(),
                "spent",
                Some(PutOptions::new().with_ignore_lease().with_prev_key()),
            )])
            .or_else([TxnOp::get(key.clone(), None)]);
        // Sent again only if it never reached a member: a second try can
        // at worst report the token as replayed, never spend it twice.
        let resp = self
            .call(|mut c| {
                let txn = txn.clone();
                async move { c.txn(txn).await }
            })
            .await?;
        let ops = resp.op_responses();
        match ops.first() {
            Some(TxnOpResponse::Put(p)) if resp.succeeded() => {
                let kv = p
                    .prev_key()
                    .ok_or_else(|| StoreError::Corrupt(format!("{key}: no previous value")))?;
                serde_json::from_slice(kv.value())
                    .map(Redeemed::Spent)
                    .map_err(|e| StoreError::Corrupt(format!("{key}: {e}")))
            }
            Some(TxnOpResponse::Get(g)) if g.kvs().is_empty() => Ok(Redeemed::Unknown),
            Some(TxnOpResponse::Get(_)) => Ok(Redeemed::Replayed),
            _ => Err(StoreError::Corrupt(format!(
                "{key}: unexpected transaction answer"
            ))),
        }
    }

    async fn prune_tokens(&self, _: i64) -> Result<(), StoreError> {
        // Each token's lease ends it.
        Ok(())
    }

    async fn load_policies(&self) -> Result<PolicySet, StoreError> {
        let files: Vec<PolicyText> = self.get_json("policies").await?.unwrap_or_default();
        // Emptiness was decided when the set was applied.
        Ok(PolicySet {
            files,
            allow_empty: true,
        })
    }

    async fn apply_policies(&self, files: &[PolicyText]) -> Result<(), StoreError> {
        self.put_json("policies", &files).await
    }

    async fn load_endpoints(&self) -> Result<Option<Vec<Endpoint>>, StoreError> {
        self.get_json("endpoints").await
    }

    async fn put_endpoints(&self, endpoints: &[Endpoint]) -> Result<(), StoreError> {
        self.put_json("endpoints", &endpoints).await
    }

    async fn put_baseline(&self, name: &str, json: &[u8]) -> Result<(), StoreError> {
        let key = self.key(&format!("baselines/{name}"));
        self.call(|mut c| {
            let (key, json) = (key.clone(), json.to_vec());
            async move { c.put(key, json, None).await }
        })
        .await?;
        Ok(())
    }

    async fn load_baselines(&self) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        let prefix = self.key("baselines/");
        let resp = self
            .call(|mut c| {
                let prefix = prefix.clone();
                async move { c.get(prefix, Some(GetOptions::new().with_prefix())).await }
            })
            .await?;
        Ok(resp
            .kvs()
            .iter()
            .filter_map(|kv| {
                let name = kv.key_str().ok()?.strip_prefix(&prefix)?.to_owned();
                Some((name, kv.value().to_vec()))
            })
            .collect())
    }

    async fn append_events(&self, events: &[serde_json::Value]) -> Result<Option<u64>, StoreError> {
        let lease = self
            .call(|mut c| async move { c.lease_grant(EVENTS_TTL, None).await })
            .await?
            .id();
        let id: u64 = rand::random();
        let json = serde_json::to_vec(events).expect("events serialize");
        let key = self.key(&format!("events/{id:016x}"));
        let resp = self
            .call(|mut c| {
                let (key, json) = (key.clone(), json.clone());
                async move {
                    c.put(key, json, Some(PutOptions::new().with_lease(lease)))
                        .await
                }
            })
            .await?;
        let rev = resp.header().map_or(0, |h| h.revision()) as u64;
        Ok(Some(rev * EVENTS_PER_BATCH))
    }

    async fn recent_events(
        &self,
        since: u64,
        limit: usize,
    ) -> Result<Vec<(u64, serde_json::Value)>, StoreError> {
        let min_rev = (since / EVENTS_PER_BATCH) as i64;
        let options = GetOptions::new()
            .with_prefix()
            .with_min_mod_revision(min_rev)
            .with_sort(SortTarget::Mod, SortOrder::Ascend);
        let key = self.key("events/");
        let resp = self
            .call(|mut c| {
                let (key, options) = (key.clone(), options.clone());
                async move { c.get(key, Some(options)).await }
            })
            .await?;
        let mut out = Vec::new();
        for kv in resp.kvs() {
            let base = kv.mod_revision() as u64 * EVENTS_PER_BATCH;
            let Ok(batch) = serde_json::from_slice::<Vec<serde_json::Value>>(kv.value()) else {
                continue;
            };
            for (i, event) in batch.into_iter().enumerate() {
                let seq = base + i as u64;
                if seq >= since {
                    out.push((seq, event));
                }
            }
        }
        // The newest `limit`.
        let skip = out.len().saturating_sub(limit);
        Ok(out.split_off(skip))
    }

    async fn watch(&self, topic: Topic) -> Result<watch::Receiver<u64>, StoreError> {
        let key = self.key(match topic {
            Topic::Ca => "ca",
            Topic::Policies => "policies",
            Topic::Endpoints => "endpoints",
        });
        let (tx, rx) = watch::channel(0);
        tokio::spawn(watch_key(self.client.clone(), key, tx));
        Ok(rx)
    }

    async fn lock(&self, name: &str, wait: Duration) -> Result<Box<dyn Held>, StoreError> {
        let deadline = tokio::time::Instant::now() + wait;
        // Just after start (or a long outage) the lease is being granted.
        let lease = loop {
            if let Some(lease) = *self.session.lock().expect("session lock") {
                break lease;
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(StoreError::Unavailable(
                    "this replica holds no etcd lease".into(),
                ));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        let name = self.key(&format!("locks/{name}"));
        let locked = tokio::time::timeout_at(
            deadline,
            self.call(|mut c| {
                let name = name.clone();
                async move {
                    c.lock(name, Some(LockOptions::new().with_lease(lease)))
                        .await
                }
            }),
        )
        .await
        .map_err(|_| StoreError::Unavailable(format!("{name} is held by another replica")))??;
        let client = self.client.clone();
        Ok(Box::new(EtcdLock {
            client,
            key: locked.key().to_vec(),
        }))
    }
}

/// Ticks `tx` on every change of `key`, and once after each reconnection
/// (a change may have been missed meanwhile), until nobody listens.
async fn watch_key(mut client: Client, key: String, tx: watch::Sender<u64>) {
    while !tx.is_closed() {
        match client.watch(key.as_str(), None).await {
            Ok(mut stream) => {
                tx.send_modify(|g| *g += 1);
                while let Ok(Some(resp)) = stream.message().await {
                    if !resp.events().is_empty() {
                        tx.send_modify(|g| *g += 1);
                    }
                }
            }
            Err(e) => tracing::debug!(key, error = %e, "cannot watch etcd yet"),
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
