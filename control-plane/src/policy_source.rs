//! The policies served at `GET /v1/policies`: the policy files in the state
//! store (`--policy-dir`, or etcd), validated by compiling them with
//! palisade-policy, reloaded when the store says they changed (a bad change,
//! or one that removes every policy without `.palisade-allow-empty`, keeps
//! the last good set), and served to each proxy as the documents that select
//! it, with a long poll on their version.

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use palisade_policy::fs::ALLOW_EMPTY_MARKER;
use palisade_policy::{compile, parse_documents, DefaultPolicy, Defaults, PolicyDoc, SpiffeId};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use sha2::{Digest, Sha256};
use tokio::sync::watch;

use crate::metrics::ReasonLabel;
use crate::store::{PolicyText, Store, StoreError, Topic};
use palisade_identity::api::{PoliciesResponse, PolicyDocument};

/// The longest a client may ask a poll to be held.
pub const MAX_WAIT: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum PolicySourceError {
    /// Located diagnostics, one per line (`file:line:col: error: ...`).
    #[error("{0}")]
    Invalid(String),
    /// The source went from some policies to none without the marker.
    #[error("the policy source no longer holds any policy: refused, as it would drop every policy in force; to remove every policy on purpose, create {ALLOW_EMPTY_MARKER} in the policy directory")]
    Emptied,
    /// An apply of no policy at all, not marked deliberate.
    #[error("applying no policy would drop every policy in force; to remove every policy on purpose, apply with --allow-empty")]
    EmptyApply,
    #[error("policy file name {0:?} must be a plain `*.yaml` or `*.yml` file name")]
    BadName(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl PolicySourceError {
    /// The `reason` label of `policy_reload_errors_total`.
    pub fn reason(&self) -> &'static str {
        match self {
            PolicySourceError::Invalid(_) => "invalid",
            PolicySourceError::Emptied | PolicySourceError::EmptyApply => "emptied",
            PolicySourceError::BadName(_) => "bad_name",
            PolicySourceError::Store(_) => "store",
        }
    }
}

/// One servable piece of YAML and the documents in it.
#[derive(Debug)]
struct Chunk {
    served: PolicyDocument,
    docs: Vec<PolicyDoc>,
}

/// The live, validated policy set.
pub struct PolicyStore {
    store: Arc<dyn Store>,
    chunks: ArcSwap<Vec<Chunk>>,
    changed: watch::Sender<u64>,
}

impl PolicyStore {
    /// Loads the policies in `store`; an invalid set at start is an error.
    pub async fn open(store: Arc<dyn Store>) -> Result<Arc<PolicyStore>, PolicySourceError> {
        let chunks = load(&store.load_policies().await?.files)?;
        Ok(Arc::new(PolicyStore {
            store,
            chunks: ArcSwap::from_pointee(chunks),
            changed: watch::channel(0).0,
        }))
    }

    /// Reads the store again; on error the last good set stays.
    pub async fn reload(&self) -> Result<usize, PolicySourceError> {
        let set = self.store.load_policies().await?;
        let chunks = load(&set.files)?;
        if chunks.is_empty() && !self.chunks.load().is_empty() && !set.allow_empty {
            return Err(PolicySourceError::Emptied);
        }
        Ok(self.install(chunks))
    }

    /// Swaps `chunks` in and wakes the polls, unless nothing changed.
    fn install(&self, chunks: Vec<Chunk>) -> usize {
        let n = chunks.len();
        let old = self.chunks.load_full();
        if old
            .iter()
            .map(|c| &c.served)
            .eq(chunks.iter().map(|c| &c.served))
        {
            // A touch or a rewrite with the same text: no poll is woken.
            return n;
        }
        drop(old);
        self.chunks.store(Arc::new(chunks));
        self.changed.send_modify(|g| *g += 1);
        n
    }

    /// `palisadectl policy apply`: validates `files` exactly as a reload
    /// does, writes them to the store in place of every policy there, and
    /// serves them. Other replicas pick them up through their watch.
    pub async fn apply(
        &self,
        files: Vec<PolicyText>,
        allow_empty: bool,
    ) -> Result<usize, PolicySourceError> {
        if let Some(bad) = files.iter().find(|f| !valid_name(&f.name)) {
            return Err(PolicySourceError::BadName(bad.name.clone()));
        }
        let chunks = load(&files)?;
        if chunks.is_empty() && !allow_empty {
            return Err(PolicySourceError::EmptyApply);
        }
        self.store.apply_policies(&files).await?;
        Ok(self.install(chunks))
    }

    /// The documents that select `workload`, and their version.
    pub fn for_workload(&self, workload: &SpiffeId) -> PoliciesResponse {
        let chunks = self.chunks.load();
        let documents: Vec<PolicyDocument> = chunks
            .iter()
            .filter(|c| c.docs.iter().any(|d| d.selects(workload)))
            .map(|c| c.served.clone())
            .collect();
        let mut h = Sha256::new();
        for d in &documents {
            h.update(d.name.as_bytes());
            h.update([0]);
            h.update(d.yaml.as_bytes());
            h.update([0]);
        }
        let digest = h.finalize();
        let version = u64::from_be_bytes(digest[..8].try_into().expect("8 bytes"));
        PoliciesResponse { version, documents }
    }

    /// Answers at once unless the caller already has the current version
    /// (`known`); then waits until it changes or `wait` passes.
    pub async fn poll(
        &self,
        workload: &SpiffeId,
        known: Option<u64>,
        wait: Duration,
    ) -> PoliciesResponse {
        // Subscribed before the first look, so no reload is missed.
        let mut changed = self.changed.subscribe();
        let deadline = tokio::time::Instant::now() + wait.min(MAX_WAIT);
        loop {
            let resp = self.for_workload(workload);
            if known != Some(resp.version) {
                return resp;
            }
            tokio::select! {
                r = changed.changed() => if r.is_err() { return resp },
                _ = tokio::time::sleep_until(deadline) => return resp,
            }
        }
    }

    /// Reloads each time the store says the policies changed (a burst of
    /// file events counts once); each read counts in `reads`, a rejected one
    /// in `errors` by reason.
    pub async fn watch(
        self: &Arc<Self>,
        reads: Counter,
        errors: Family<ReasonLabel, Counter>,
    ) -> Result<(), PolicySourceError> {
        let mut rx = self.store.watch(Topic::Policies).await?;
        let store = Arc::clone(self);
        tokio::spawn(async move {
            while rx.changed().await.is_ok() {
                reads.inc();
                match store.reload().await {
                    Ok(n) => tracing::info!(documents = n, "policies loaded"),
                    Err(e) => {
                        errors
                            .get_or_create(&ReasonLabel { reason: e.reason() })
                            .inc();
                        tracing::error!(reason = e.reason(), error = %e, "policies rejected; the last good set is still served");
                    }
                }
            }
        });
        tracing::info!(store = self.store.kind(), "watching the policies");
        Ok(())
    }
}

/// A policy file name as applied: `name.yaml`, no directory, not hidden.
fn valid_name(name: &str) -> bool {
    (name.ends_with(".yaml") || name.ends_with(".yml"))
        && !name.starts_with('.')
        && name.len() <= 255
        && !name.contains(['/', '\\', '\0'])
}

/// Validates (by compiling) and splits policy files.
fn load(files: &[PolicyText]) -> Result<Vec<Chunk>, PolicySourceError> {
    let invalid = |e: String| PolicySourceError::Invalid(e);
    let mut chunks = Vec::new();
    let mut errors = Vec::new();
    for file in files {
        match parse_documents(&file.name, &file.text) {
            Ok(docs) => chunks.extend(split(&file.name, &file.text, docs)),
            Err(diags) => errors.extend(diags.iter().map(ToString::to_string)),
        }
    }
    if !errors.is_empty() {
        return Err(invalid(errors.join("\n")));
    }
    // Duplicate names across files are only seen when merged.
    let all: Vec<PolicyDoc> = chunks.iter().flat_map(|c| c.docs.clone()).collect();
    if let Err(diags) = compile(all, Defaults::new(DefaultPolicy::Deny)) {
        let text: Vec<String> = diags.iter().map(ToString::to_string).collect();
        return Err(invalid(text.join("\n")));
    }
    Ok(chunks)
}

/// One chunk per document, cut from the file at each document's first line,
/// so a proxy receives only the documents that select it. A cut that does
/// not parse back to the same document falls back to the whole file.
fn split(name: &str, text: &str, docs: Vec<PolicyDoc>) -> Vec<Chunk> {
    let lines: Vec<&str> = text.split_inclusive('\n').collect();
    let starts: Vec<usize> = docs.iter().map(|d| d.pos.line as usize - 1).collect();
    let mut chunks = Vec::with_capacity(docs.len());
    for (i, doc) in docs.iter().enumerate() {
        let end = starts.get(i + 1).copied().unwrap_or(lines.len());
        let mut piece = &lines[starts[i].min(end)..end];
        while let Some(last) = piece.last() {
            let t = last.trim();
            if t.is_empty() || t == "---" || t == "..." || t.starts_with('#') {
                piece = &piece[..piece.len() - 1];
            } else {
                break;
            }
        }
        let yaml = piece.concat();
        let same = match parse_documents(name, &yaml).as_deref() {
            Ok([back]) => serde_json::to_value(back).ok() == serde_json::to_value(doc).ok(),
            _ => false,
        };
        if !same {
            return vec![whole_file(name, text, docs)];
        }
        chunks.push(Chunk {
            served: PolicyDocument {
                name: doc.id(),
                source: format!("{name}:{}", doc.pos.line),
                yaml,
            },
            docs: vec![doc.clone()],
        });
    }
    chunks
}

fn whole_file(name: &str, text: &str, docs: Vec<PolicyDoc>) -> Chunk {
    tracing::warn!(
        file = name,
        "cannot cut this file into documents; serving it whole"
    );
    Chunk {
        served: PolicyDocument {
            name: docs.iter().map(PolicyDoc::id).collect::<Vec<_>>().join(","),
            source: format!("{name}:1"),
            yaml: text.to_owned(),
        },
        docs,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use palisade_policy::fs::ALLOW_EMPTY_MARKER;

    const TWO: &str = "# shop policies\n\
apiVersion: palisade.dev/v1alpha1\nkind: SegmentationPolicy\nmetadata: {name: api, namespace: shop}\n\
spec:\n  targets: [{identity: spiffe://td/ns/shop/sa/api}]\n  ingress: []\n\
---\n# the database\n\
apiVersion: palisade.dev/v1alpha1\nkind: SegmentationPolicy\nmetadata: {name: db, namespace: shop}\n\
spec:\n  targets: [{identity: spiffe://td/ns/shop/sa/db}]\n  ingress: []\n";

    /// A directory holding `shop.yaml` (= `TWO`), and its store.
    struct Shop {
        dir: tempfile::TempDir,
        file: std::path::PathBuf,
        store: Arc<PolicyStore>,
    }

    async fn shop() -> Shop {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("shop.yaml");
        std::fs::write(&file, TWO).unwrap();
        let state = dir.path().join(".state");
        let backing =
            crate::store::dir::DirStore::open(&state, Some(dir.path().to_owned()), None, None)
                .unwrap();
        let store = PolicyStore::open(Arc::new(backing)).await.unwrap();
        Shop { dir, file, store }
    }

    fn id(s: &str) -> SpiffeId {
        SpiffeId::parse(s).unwrap()
    }

    const API: &str = "spiffe://td/ns/shop/sa/api";

    #[tokio::test]
    async fn each_workload_gets_only_the_documents_that_select_it() {
        let Shop {
            dir: _dir, store, ..
        } = shop().await;
        let api = store.for_workload(&id(API));
        assert_eq!(api.documents.len(), 1);
        assert_eq!(api.documents[0].name, "shop/api");
        assert!(!api.documents[0].yaml.contains("name: db"));
        let db = store.for_workload(&id("spiffe://td/ns/shop/sa/db"));
        assert_eq!(db.documents[0].name, "shop/db");
        assert_ne!(api.version, db.version);
        let none = store.for_workload(&id("spiffe://td/ns/web/sa/x"));
        assert!(none.documents.is_empty());
    }

    #[tokio::test]
    async fn a_bad_change_is_rejected_with_its_location_and_the_last_good_set_stays() {
        let Shop {
            dir: _dir,
            file,
            store,
        } = shop().await;
        let before = store.for_workload(&id(API));
        std::fs::write(&file, TWO.replace("ingress: []", "ingres: []")).unwrap();
        let err = store.reload().await.unwrap_err().to_string();
        assert!(err.contains("shop.yaml:7:3"), "{err}");
        assert_eq!(store.for_workload(&id(API)), before);
    }

    #[tokio::test]
    async fn removing_the_last_policy_is_refused_unless_the_marker_is_there() {
        let Shop { dir, file, store } = shop().await;
        let before = store.for_workload(&id(API));
        std::fs::remove_file(&file).unwrap();
        let err = store.reload().await.unwrap_err();
        assert_eq!(err.reason(), "emptied");
        assert!(err.to_string().contains(ALLOW_EMPTY_MARKER), "{err}");
        assert_eq!(store.for_workload(&id(API)), before);
        std::fs::write(dir.path().join(ALLOW_EMPTY_MARKER), "").unwrap();
        assert_eq!(store.reload().await.unwrap(), 0);
        assert!(store.for_workload(&id(API)).documents.is_empty());
    }

    #[tokio::test]
    async fn a_poll_with_the_current_version_waits_for_a_change() {
        let Shop {
            dir: _dir,
            file,
            store,
        } = shop().await;
        let v = store.for_workload(&id(API)).version;
        let s = store.clone();
        let waiting =
            tokio::spawn(async move { s.poll(&id(API), Some(v), Duration::from_secs(30)).await });
        tokio::task::yield_now().await;
        std::fs::write(
            &file,
            TWO.replace("ingress: []\n---", "ingress: []\n  egress: []\n---"),
        )
        .unwrap();
        store.reload().await.unwrap();
        let got = waiting.await.unwrap();
        assert_ne!(got.version, v);
        assert!(got.documents[0].yaml.contains("egress: []"));
    }

    #[tokio::test]
    async fn a_reload_that_changes_nothing_wakes_no_poll() {
        let Shop {
            dir: _dir,
            file,
            store,
        } = shop().await;
        let changed = store.changed.subscribe();
        std::fs::write(&file, TWO).unwrap();
        assert_eq!(store.reload().await.unwrap(), 2);
        assert!(!changed.has_changed().unwrap(), "same text, no wake");
        std::fs::write(&file, TWO.replace("ingress: []", "egress: []")).unwrap();
        store.reload().await.unwrap();
        assert!(changed.has_changed().unwrap(), "new text wakes the polls");
    }

    #[tokio::test]
    async fn apply_validates_then_replaces_the_directorys_files() {
        let Shop { dir, file, store } = shop().await;
        std::fs::write(dir.path().join(".palisade-allow-empty"), "").unwrap();
        let text = |t: &str| PolicyText {
            name: "new.yaml".into(),
            text: t.into(),
        };
        let bad = store
            .apply(vec![text(&TWO.replace("ingress: []", "ingres: []"))], false)
            .await
            .unwrap_err();
        assert!(bad.to_string().contains("new.yaml:7:3"), "{bad}");
        assert!(file.exists(), "a rejected apply writes nothing");
        let named = PolicyText {
            name: "../escape.yaml".into(),
            text: TWO.into(),
        };
        assert_eq!(
            store.apply(vec![named], false).await.unwrap_err().reason(),
            "bad_name"
        );
        assert_eq!(
            store.apply(Vec::new(), false).await.unwrap_err().reason(),
            "emptied"
        );

        let one = TWO.split("---").next().unwrap().to_owned();
        assert_eq!(store.apply(vec![text(&one)], false).await.unwrap(), 1);
        assert!(!file.exists(), "files not in the applied set are removed");
        assert_eq!(
            std::fs::read_to_string(dir.path().join("new.yaml")).unwrap(),
            one
        );
        assert!(dir.path().join(".palisade-allow-empty").exists());
        assert!(store
            .for_workload(&id("spiffe://td/ns/shop/sa/db"))
            .documents
            .is_empty());
        assert_eq!(store.reload().await.unwrap(), 1, "what a reload reads back");
    }
}
