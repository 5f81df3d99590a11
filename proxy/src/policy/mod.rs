//! The live segmentation policy: the compiled set in force, behind an
//! `ArcSwap` the hot path loads once per connection, and a generation
//! counter that live connections watch so a reload re-authorizes them.

pub mod file;
pub mod reload;
pub mod remote;

use std::sync::Arc;

use arc_swap::{ArcSwap, ArcSwapOption, Guard};
use palisade_identity::renew::now_unix;
use palisade_policy::watch::{PathWatch, WatchError};
use palisade_policy::{CompiledPolicy, DefaultPolicy};
use serde::Serialize;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::config::PolicyConfig;
use crate::identity::{ControlPlane, CredentialsCell};
use crate::metrics::Metrics;
use reload::{Rejection, Reloader};

/// Where the policy in force came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum PolicySource {
    /// Nothing loaded (yet): only the configured default applies.
    None,
    /// A file or directory on disk.
    File { path: String },
    /// The control plane's `GET /v1/policies`, at its version.
    ControlPlane { version: u64 },
    /// Both merged; the file's copy of a `namespace/name` wins.
    Both { path: String, version: u64 },
    /// Fail-closed stand-in while no policy could be loaded at all.
    FailClosed,
}

/// One immutable, compiled policy set and where it came from.
#[derive(Debug)]
pub struct ActivePolicy {
    pub compiled: CompiledPolicy,
    pub source: PolicySource,
    /// Increases by one per swap; 0 is the set the proxy started with.
    pub generation: u64,
    /// Unix seconds when it was swapped in.
    pub loaded_at: i64,
}

impl ActivePolicy {
    /// No policy documents: every decision falls back to `default`.
    pub fn empty(default: DefaultPolicy, source: PolicySource) -> ActivePolicy {
        ActivePolicy {
            compiled: CompiledPolicy::empty(default),
            source,
            generation: 0,
            loaded_at: now_unix(),
        }
    }

    /// The fail-closed stand-in (`FailClosed`) is replaced by the first set
    /// every configured source has delivered; until then, not ready.
    pub fn is_loaded(&self) -> bool {
        self.source != PolicySource::FailClosed
    }

    /// The content-hash version, e.g. `sha256:3fa2…`.
    pub fn version(&self) -> &str {
        self.compiled.version()
    }
}

/// The proxy's handle on the policy in force.
pub struct LivePolicy {
    active: ArcSwap<ActivePolicy>,
    generation: watch::Sender<u64>,
    last_error: ArcSwapOption<Rejection>,
}

impl LivePolicy {
    pub fn new(initial: ActivePolicy) -> LivePolicy {
        let (generation, _) = watch::channel(initial.generation);
        LivePolicy {
            active: ArcSwap::from_pointee(initial),
            generation,
            last_error: ArcSwapOption::empty(),
        }
    }

    /// The policy in force: one atomic load, no lock.
    pub fn load(&self) -> Guard<Arc<ActivePolicy>> {
        self.active.load()
    }

    pub fn load_full(&self) -> Arc<ActivePolicy> {
        self.active.load_full()
    }

    /// Wakes on every swap. A forwarded connection holds one and re-checks
    /// its decision when it changes.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.generation.subscribe()
    }

    /// Swaps in a new compiled set. Returns its generation and the set it
    /// replaced.
    pub fn swap(&self, compiled: CompiledPolicy, source: PolicySource) -> (u64, Arc<ActivePolicy>) {
        let generation = self.active.load().generation + 1;
        let old = self.active.swap(Arc::new(ActivePolicy {
            compiled,
            source,
            generation,
            loaded_at: now_unix(),
        }));
        self.last_error.store(None);
        self.generation.send_replace(generation);
        (generation, old)
    }

    /// Records a rejected reload; the policy in force does not change.
    pub fn reject(&self, rejection: Rejection) {
        self.last_error.store(Some(Arc::new(rejection)));
    }

    /// An update that changed nothing was still good: the error is stale.
    pub fn clear_error(&self) {
        self.last_error.store(None);
    }

    pub fn last_error(&self) -> Option<Arc<Rejection>> {
        self.last_error.load_full()
    }

    /// The `policy` part of /config_dump.
    pub fn dump(&self) -> serde_json::Value {
        let active = self.load();
        let error = self.last_error();
        serde_json::json!({
            "version": active.version(),
            "generation": active.generation,
            "source": active.source,
            "default": active.compiled.default_policy(),
            "policies": active.compiled.docs().len(),
            "rules": active.compiled.rule_count(),
            "loaded_at": active.loaded_at,
            "last_error": error.as_ref().map(|e| &e.error),
            "last_error_reason": error.as_ref().map(|e| e.reason.as_str()),
        })
    }
}

impl Default for LivePolicy {
    /// No documents, the documented default `all-authenticated`.
    fn default() -> Self {
        LivePolicy::new(ActivePolicy::empty(
            DefaultPolicy::AllAuthenticated,
            PolicySource::None,
        ))
    }
}

/// Keeps the policy sources running; drop it to stop watching files.
pub struct Sources {
    pub live: Arc<LivePolicy>,
    _watch: Option<PathWatch>,
}

/// Builds the live policy from `cfg`: loads the file (if any) before the
/// proxy listens, then watches it and/or long-polls the control plane.
/// Until every configured source has delivered, everything is denied.
pub async fn start(
    cfg: &PolicyConfig,
    metrics: Arc<Metrics>,
    cp: Arc<ControlPlane>,
    creds: CredentialsCell,
    stop: CancellationToken,
) -> Result<Sources, WatchError> {
    let path = cfg.path.clone().filter(|_| cfg.source.uses_file());
    let initial = if path.is_none() && !cfg.source.uses_control_plane() {
        ActivePolicy::empty(cfg.default, PolicySource::None)
    } else {
        ActivePolicy::empty(DefaultPolicy::Deny, PolicySource::FailClosed)
    };
    let live = Arc::new(LivePolicy::new(initial));
    let reloader = Arc::new(Reloader::new(
        live.clone(),
        metrics,
        cfg.default,
        cfg.source,
        path.clone(),
    ));
    let mut watch = None;
    if let Some(path) = path {
        let (r, p) = (reloader.clone(), path.clone());
        let _ = tokio::task::spawn_blocking(move || file::load_now(&r, &p)).await;
        watch = Some(file::watch(
            reloader.clone(),
            path,
            cfg.debounce,
            stop.clone(),
        )?);
    }
    if cfg.source.uses_control_plane() {
        tokio::spawn(remote::poll_loop(cp, creds, reloader, stop));
    }
    Ok(Sources {
        live,
        _watch: watch,
    })
}
