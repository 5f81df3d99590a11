//! The paths a request can take from the load client to the backends. Each
//! starts its proxies and hands back the two entry points the load uses: one for
//! HTTP requests and one for raw TCP (bulk transfers and connection churn).

mod envoy;
mod haproxy;
mod palisade;

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;

use palisadectl::local::{ControlPlane, Process};
use serde::Serialize;

use super::backend::Backends;
use super::certs::Credentials;
use super::tools::Tools;

/// One way from client to server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PathKind {
    /// Client straight to the backends: the baseline.
    Direct,
    /// Client → outbound palisade-proxy → mTLS → inbound palisade-proxy → server.
    Palisade,
    /// Client → Envoy → mTLS (SPIFFE SVIDs, RBAC on the client's URI SAN) → Envoy → server.
    Envoy,
    /// Client → HAProxy → mTLS → HAProxy → server, at L4.
    Haproxy,
}

impl PathKind {
    pub fn name(self) -> &'static str {
        match self {
            PathKind::Direct => "direct",
            PathKind::Palisade => "palisade",
            PathKind::Envoy => "envoy",
            PathKind::Haproxy => "haproxy",
        }
    }
}

/// What a path is built from.
pub struct Setup<'a> {
    pub backends: &'a Backends,
    pub creds: &'a Credentials,
    /// The real control plane, when it issued the SVIDs; Palisade's proxies
    /// attest to it with join tokens.
    pub control_plane: Option<&'a ControlPlane>,
    pub work_dir: &'a Path,
    pub tools: &'a Tools,
    /// Worker threads per proxy, the same for every proxy so the comparison is fair.
    pub proxy_workers: usize,
}

/// A started path; its proxies stop when it is dropped.
pub struct RunningPath {
    pub kind: PathKind,
    pub http: SocketAddr,
    pub tcp: SocketAddr,
    pub proxies: Vec<Process>,
}

impl PathKind {
    /// Whether the path enforces an HTTP rule (only `POST /echo` allowed).
    pub fn enforces_http_rule(self) -> bool {
        matches!(self, PathKind::Palisade | PathKind::Envoy)
    }
}

impl RunningPath {
    pub fn pids(&self) -> Vec<u32> {
        self.proxies.iter().map(Process::pid).collect()
    }

    /// Fails if any proxy has died, naming it and quoting its log.
    pub fn ensure_running(&mut self) -> anyhow::Result<()> {
        self.proxies
            .iter_mut()
            .try_for_each(Process::ensure_running)
    }
}

/// Why a path did not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// Skipped, with the reason and what to do about it.
    #[error("{0}")]
    Unavailable(String),
    /// The tool is there but the path is broken: the run fails.
    #[error(transparent)]
    Failed(#[from] anyhow::Error),
}

impl From<std::io::Error> for StartError {
    fn from(e: std::io::Error) -> Self {
        StartError::Failed(e.into())
    }
}

pub fn start(kind: PathKind, setup: &Setup<'_>) -> Result<RunningPath, StartError> {
    match kind {
        PathKind::Direct => Ok(RunningPath {
            kind,
            http: setup.backends.http,
            tcp: setup.backends.tcp,
            proxies: Vec::new(),
        }),
        PathKind::Palisade => palisade::start(setup),
        PathKind::Envoy => envoy::start(setup),
        PathKind::Haproxy => haproxy::start(setup),
    }
}

/// Wait until both proxies of a sidecar pair listen, then hand out the
/// outbound side's HTTP and TCP entry points.
fn sidecar_pair(
    kind: PathKind,
    mut outbound: Process,
    entry: [SocketAddr; 2],
    mut inbound: Process,
    inbound_addrs: [SocketAddr; 2],
) -> anyhow::Result<RunningPath> {
    let timeout = std::time::Duration::from_secs(20);
    inbound.wait_listening(&inbound_addrs, timeout)?;
    outbound.wait_listening(&entry, timeout)?;
    Ok(RunningPath {
        kind,
        http: entry[0],
        tcp: entry[1],
        proxies: vec![outbound, inbound],
    })
}

/// Start a proxy of the run with its output in `<work_dir>/<name>.log`.
fn spawn(name: &str, mut cmd: Command, setup: &Setup<'_>) -> anyhow::Result<Process> {
    let log = setup.work_dir.join(format!("{name}.log"));
    Process::spawn_logged(name, &mut cmd, &log)
}
