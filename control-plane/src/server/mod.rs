//! The control-plane server: opens the state store, builds the shared state
//! (CA, attestors, metrics, endpoint map, serving TLS), binds the workload
//! API, the admin socket and the optional metrics port, keeps the CA and
//! serving SVID fresh, and follows what other replicas write to the store.

pub mod admin;
pub mod baselines;
pub mod events;
pub mod http;
pub mod listener;
pub mod tls;
pub mod webhook;
pub mod workload;

use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use palisade_policy::SpiffeId;
use tokio::net::{TcpListener, UnixListener};

use crate::attest::join_token::JoinTokens;
use crate::attest::k8s::{JwksError, K8sVerifier};
use crate::ca::{Authority, CaError, Upstream};
use crate::config::Config;
use crate::endpoints::{EndpointMap, EndpointsError};
use crate::metrics::Metrics;
use crate::policy_source::{PolicySourceError, PolicyStore};
use crate::store::{Store, StoreError, Topic};
use tls::{ServingTls, TlsError};

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error(transparent)]
    Ca(#[from] CaError),
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error(transparent)]
    Jwks(#[from] JwksError),
    #[error(transparent)]
    Endpoints(#[from] EndpointsError),
    #[error("policies: {0}")]
    Policies(#[from] PolicySourceError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot listen on {0}: {1}")]
    Bind(String, std::io::Error),
}

/// How often the store's health is checked (and how soon a replica notices
/// a lost or regained etcd quorum).
const STORE_CHECK_EVERY: Duration = Duration::from_secs(1);

/// Everything request handlers share.
pub struct State {
    pub config: Config,
    pub store: Arc<dyn Store>,
    /// Whether the store answered its last health check: readiness, and
    /// whether SVIDs are issued.
    store_ready: AtomicBool,
    pub authority: Authority,
    pub tokens: JoinTokens,
    pub k8s: Option<K8sVerifier>,
    pub metrics: Metrics,
    pub endpoints: Arc<EndpointMap>,
    /// The stored policies (`--policy-dir` or etcd), served at GET /v1/policies.
    pub policies: Option<Arc<PolicyStore>>,
    pub tls: ArcSwap<ServingTls>,
    /// The admission webhook, with `--webhook-listen`.
    pub webhook: Option<webhook::Webhook>,
    pub control_plane_id: SpiffeId,
    /// The latest security events workloads POSTed.
    pub events: events::EventLog,
    /// The learned baselines sidecars reported, persisted in the store.
    pub baselines: baselines::Baselines,
}

impl State {
    pub async fn new(config: Config) -> Result<State, ServerError> {
        let upstream = match (&config.upstream_cert, &config.upstream_key) {
            (Some(c), Some(k)) => Some(Upstream::load(c, k)?),
            _ => None,
        };
        let store = crate::store::open(&config).await?;
        // A replica starting while the store is down waits for it: it has
        // nothing to serve without its CA.
        while let Err(e) = store.check().await {
            tracing::warn!(store = store.kind(), error = %e, "waiting for the state store");
            tokio::time::sleep(STORE_CHECK_EVERY).await;
        }
        let authority = Authority::open_in(
            config.trust_domain.clone(),
            store.clone(),
            config.bundle_path(),
            config.ca_ttl,
            config.svid_ttl,
            upstream,
        )
        .await?;
        let k8s = match (&config.jwks, &config.k8s_issuer) {
            (Some(jwks), Some(iss)) => {
                Some(K8sVerifier::load(jwks, iss, config.trust_domain.clone())?)
            }
            _ => None,
        };
        let policies = if config.policy_dir.is_some() || store.shared() {
            Some(PolicyStore::open(store.clone()).await?)
        } else {
            None
        };
        let serving = tls::build(&authority)?;
        let webhook = webhook::Webhook::new(&config, &authority)?;
        let control_plane_id = tls::control_plane_id(&authority);
        let baselines = baselines::Baselines::open(store.clone()).await?;
        let state = State {
            config,
            tokens: JoinTokens::new(store.clone()),
            store,
            store_ready: AtomicBool::new(true),
            authority,
            k8s,
            metrics: Metrics::default(),
            endpoints: Arc::new(EndpointMap::default()),
            policies,
            tls: ArcSwap::from_pointee(serving),
            webhook,
            control_plane_id,
            events: events::EventLog::default(),
            baselines,
        };
        state.record_bundle();
        state.metrics.store_up.set(1);
        Ok(state)
    }

    /// Whether the store is reachable: the replica is ready and issues SVIDs.
    pub fn store_ready(&self) -> bool {
        self.store_ready.load(Ordering::Relaxed)
    }

    /// Checks the store's health every `STORE_CHECK_EVERY`; a change is
    /// logged once, and shows in `store_up` and `/readyz`.
    async fn watch_store(self: Arc<Self>) {
        let mut tick = tokio::time::interval(STORE_CHECK_EVERY);
        loop {
            tick.tick().await;
            let checked = tokio::time::timeout(STORE_CHECK_EVERY * 2, self.store.check())
                .await
                .unwrap_or_else(|_| Err(StoreError::Unavailable("health check timed out".into())));
            let up = checked.is_ok();
            if up != self.store_ready.swap(up, Ordering::Relaxed) {
                match &checked {
                    Ok(()) => tracing::info!(
                        store = self.store.kind(),
                        "state store is back; ready and issuing again"
                    ),
                    Err(e) => {
                        tracing::error!(store = self.store.kind(), error = %e, "state store unavailable; not ready, and SVID issuance is refused until it is back")
                    }
                }
            }
            if let Err(e) = &checked {
                self.metrics.store_error(e.reason());
            }
            self.metrics.store_up.set(i64::from(up));
        }
    }

    /// Serves the CA state other replicas write, as soon as they do.
    async fn follow_ca(self: Arc<Self>) {
        let mut rx = match self.store.watch(Topic::Ca).await {
            Ok(rx) => rx,
            Err(e) => {
                tracing::error!(error = %e, "cannot watch the CA state");
                return;
            }
        };
        while rx.changed().await.is_ok() {
            match self.authority.reload().await {
                Ok(true) => {
                    tracing::info!(
                        bundle_sequence = self.authority.snapshot().bundle_sequence,
                        "CA state changed in the store"
                    );
                    self.refresh_tls(false);
                }
                Ok(false) => {}
                Err(e) => tracing::warn!(error = %e, "cannot read the CA state from the store"),
            }
        }
    }

    fn record_bundle(&self) {
        let set = self.authority.snapshot();
        self.metrics.bundle_cas.set(set.bundle().len() as i64);
        self.metrics.bundle_sequence.set(set.bundle_sequence as i64);
    }

    /// Rebuilds the serving TLS configs (API and webhook) if the bundle
    /// changed or the serving SVID passed half-life (or always, with `force`).
    pub fn refresh_tls(&self, force: bool) {
        let seq = self.authority.snapshot().bundle_sequence;
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        let renew = |current: &ArcSwap<ServingTls>,
                     build: &dyn Fn() -> Result<ServingTls, TlsError>| {
            if !force && !current.load().is_stale(seq, now) {
                return;
            }
            match build() {
                Ok(t) => current.store(Arc::new(t)),
                // The current config stays in use; the next tick tries again.
                Err(e) => {
                    tracing::error!(error = %e, "cannot renew the control plane's serving certificate")
                }
            }
        };
        renew(&self.tls, &|| tls::build(&self.authority));
        if let Some(w) = &self.webhook {
            renew(&w.tls, &|| tls::build_webhook(&self.authority, &w.dns));
        }
        self.record_bundle();
    }

    /// Periodic upkeep: CA rotation schedule, serving certificate, token pruning.
    async fn maintain(self: Arc<Self>) {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        let mut n: u64 = 0;
        loop {
            tick.tick().await;
            n += 1;
            let active_before = self.authority.snapshot().active().seq;
            if let Err(e) = self.authority.maintain().await {
                tracing::error!(error = %e, "CA upkeep failed");
            }
            if self.authority.snapshot().active().seq != active_before {
                self.metrics.ca_rotations.inc();
            }
            self.refresh_tls(false);
            if n.is_multiple_of(60) {
                if let Err(e) = self.tokens.prune().await {
                    tracing::warn!(error = %e, "cannot prune join tokens");
                }
            }
        }
    }
}

/// Runs the control plane until SIGINT or SIGTERM.
pub async fn run(config: Config) -> Result<(), ServerError> {
    let admin_path = config.admin_socket_path();
    let state = Arc::new(State::new(config).await?);
    state.endpoints.watch(state.store.clone()).await?;
    let _publisher = match (&state.config.endpoints, state.store.shared()) {
        (Some(path), true) => Some(crate::endpoints::publish(
            path.clone(),
            state.store.clone(),
        )?),
        _ => None,
    };
    if let Some(p) = &state.policies {
        let m = &state.metrics;
        p.watch(m.policy_dir_reads.clone(), m.policy_reload_errors.clone())
            .await?;
    }
    if state.store.shared() {
        tokio::spawn(state.clone().follow_ca());
    }
    tokio::spawn(state.clone().watch_store());

    let listen = state.config.listen;
    let api = TcpListener::bind(listen)
        .await
        .map_err(|e| ServerError::Bind(listen.to_string(), e))?;
    let admin = bind_admin_socket(&admin_path)?;
    if let Some(addr) = state.config.metrics_listen {
        let l = TcpListener::bind(addr)
            .await
            .map_err(|e| ServerError::Bind(addr.to_string(), e))?;
        tokio::spawn(listener::serve_metrics(l, state.clone()));
    }
    if let Some(addr) = state.config.webhook.webhook_listen {
        let l = TcpListener::bind(addr)
            .await
            .map_err(|e| ServerError::Bind(addr.to_string(), e))?;
        tokio::spawn(listener::serve_tls(
            l,
            state.clone(),
            listener::Port::Webhook,
        ));
    }
    tokio::spawn(listener::serve_tls(api, state.clone(), listener::Port::Api));
    tokio::spawn(admin::serve(admin, state.clone()));
    tokio::spawn(state.clone().maintain());

    let set = state.authority.snapshot();
    tracing::info!(
        listen = %listen,
        webhook = ?state.config.webhook.webhook_listen,
        admin_socket = %admin_path.display(),
        trust_domain = %state.authority.trust_domain(),
        store = state.store.kind(),
        active_ca = %set.active().serial_hex,
        bundle = %state.config.bundle_path().display(),
        "palisade-control-plane ready"
    );

    shutdown_signal().await;
    tracing::info!("shutting down");
    let _ = std::fs::remove_file(&admin_path);
    Ok(())
}

/// Binds the admin socket mode 0600, replacing a stale socket left by a
/// crash (but never a regular file someone put there).
fn bind_admin_socket(path: &std::path::Path) -> Result<UnixListener, ServerError> {
    let err = |e| ServerError::Bind(path.display().to_string(), e);
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if !meta.file_type().is_socket() {
            return Err(err(std::io::Error::new(
                std::io::ErrorKind::AlreadyExists,
                "exists and is not a socket",
            )));
        }
        std::fs::remove_file(path).map_err(err)?;
    }
    // Created 0600 from the start (umask), not just chmod-ed after, so there is
    // no moment when another user could connect.
    let old = nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o177));
    let bound = UnixListener::bind(path);
    nix::sys::stat::umask(old);
    let l = bound.map_err(err)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(err)?;
    Ok(l)
}

async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
