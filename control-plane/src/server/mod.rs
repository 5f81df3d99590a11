//! The control-plane server: builds the shared state (CA, attestors, metrics,
//! endpoint map, serving TLS), binds the workload API, the admin socket and
//! the optional metrics port, and keeps the CA and serving SVID fresh.

pub mod admin;
pub mod baselines;
pub mod events;
pub mod http;
pub mod listener;
pub mod tls;
pub mod webhook;
pub mod workload;

use std::os::unix::fs::{FileTypeExt, PermissionsExt};
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
    #[error("--policy-dir: {0}")]
    Policies(#[from] PolicySourceError),
    #[error("baselines under the state directory: {0}")]
    Baselines(std::io::Error),
    #[error("cannot listen on {0}: {1}")]
    Bind(String, std::io::Error),
}

/// Everything request handlers share.
pub struct State {
    pub config: Config,
    pub authority: Authority,
    pub tokens: JoinTokens,
    pub k8s: Option<K8sVerifier>,
    pub metrics: Metrics,
    pub endpoints: Arc<EndpointMap>,
    /// `--policy-dir`, served at GET /v1/policies.
    pub policies: Option<Arc<PolicyStore>>,
    pub tls: ArcSwap<ServingTls>,
    /// The admission webhook, with `--webhook-listen`.
    pub webhook: Option<webhook::Webhook>,
    pub control_plane_id: SpiffeId,
    /// The latest security events workloads POSTed.
    pub events: events::EventLog,
    /// The learned baselines sidecars reported, persisted under the state dir.
    pub baselines: baselines::Baselines,
}

impl State {
    pub fn new(config: Config) -> Result<State, ServerError> {
        let upstream = match (&config.upstream_cert, &config.upstream_key) {
            (Some(c), Some(k)) => Some(Upstream::load(c, k)?),
            _ => None,
        };
        let authority = Authority::open(
            config.trust_domain.clone(),
            &config.state_dir,
            config.ca_ttl,
            config.svid_ttl,
            upstream,
        )?;
        let k8s = match (&config.jwks, &config.k8s_issuer) {
            (Some(jwks), Some(iss)) => {
                Some(K8sVerifier::load(jwks, iss, config.trust_domain.clone())?)
            }
            _ => None,
        };
        let policies = config
            .policy_dir
            .clone()
            .map(PolicyStore::open)
            .transpose()?;
        let serving = tls::build(&authority)?;
        let webhook = webhook::Webhook::new(&config, &authority)?;
        let control_plane_id = tls::control_plane_id(&authority);
        let baselines =
            baselines::Baselines::open(&config.state_dir).map_err(ServerError::Baselines)?;
        let state = State {
            config,
            authority,
            tokens: JoinTokens::default(),
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
        Ok(state)
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
            if let Err(e) = self.authority.maintain() {
                tracing::error!(error = %e, "CA upkeep failed");
            }
            if self.authority.snapshot().active().seq != active_before {
                self.metrics.ca_rotations.inc();
            }
            self.refresh_tls(false);
            if n.is_multiple_of(60) {
                self.tokens.prune();
            }
        }
    }
}

/// Runs the control plane until SIGINT or SIGTERM.
pub async fn run(config: Config) -> Result<(), ServerError> {
    let admin_path = config.admin_socket_path();
    let state = Arc::new(State::new(config)?);
    let _watcher = match state.config.endpoints.clone() {
        Some(path) => Some(state.endpoints.watch(path)?),
        None => None,
    };
    let _policy_watcher = state
        .policies
        .as_ref()
        .map(|p| {
            let m = &state.metrics;
            p.watch(m.policy_dir_reads.clone(), m.policy_reload_errors.clone())
        })
        .transpose()?;

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
