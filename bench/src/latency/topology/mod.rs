//! The paths a request can take from the load client to the backends. Each
//! starts its proxies and hands back the two entry points the load uses: one for
//! HTTP requests and one for raw TCP (bulk transfers and connection churn).

mod envoy;
mod haproxy;
mod palisade;

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;

use palisadectl::local::{http_request, ControlPlane, Process};
use serde::Serialize;

use super::backend::Backends;
use super::certs::Credentials;
use super::cgroup::Cgroup;
use super::client::ClientHttp;
use super::report::BaselineReport;
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

/// What the Palisade sidecars do with their learned baseline
/// (`baseline.mode`, proxy/README.md) while the path is measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum BaselineRun {
    /// No baseline: the hot path does one atomic load.
    Off,
    /// Every allowed flow is recorded; the warm-up teaches the flows, the
    /// trials record known ones.
    Learn,
    /// The warm-up learns, the sidecars promote themselves to monitor, and
    /// the trials check known traffic, as in production.
    Monitor,
}

impl BaselineRun {
    /// The path's label in the report: `palisade`, `palisade+learn`, ...
    pub fn label(self) -> &'static str {
        match self {
            BaselineRun::Off => "palisade",
            BaselineRun::Learn => "palisade+learn",
            BaselineRun::Monitor => "palisade+monitor",
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
    /// What the load client speaks to the HTTP entry.
    pub http: ClientHttp,
}

/// A started path; its proxies stop when it is dropped.
pub struct RunningPath {
    pub kind: PathKind,
    /// The name in logs and the report: the kind's, or the baseline run's.
    pub label: &'static str,
    /// The sidecars' baseline mode (off for paths without sidecars).
    pub baseline: BaselineRun,
    /// The sidecars' admin listeners, in the order of `proxies`.
    pub admins: Vec<SocketAddr>,
    pub http: SocketAddr,
    pub tcp: SocketAddr,
    pub proxies: Vec<Process>,
    /// The proxies' CPU-limit groups; after `proxies`, so the processes are
    /// gone before their groups are removed.
    pub cgroups: Vec<Cgroup>,
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

    /// Wait until every sidecar has promoted itself to monitor
    /// (`/config_dump`'s `baseline.mode`).
    pub fn wait_monitor(&mut self, timeout: std::time::Duration) -> anyhow::Result<()> {
        let deadline = std::time::Instant::now() + timeout;
        for &admin in &self.admins {
            loop {
                let (_, body) = http_request(admin, "GET", "/config_dump")?;
                let dump: serde_json::Value = serde_json::from_str(&body)?;
                let mode = &dump["baseline"]["mode"];
                if mode == "monitor" {
                    break;
                }
                anyhow::ensure!(
                    std::time::Instant::now() < deadline,
                    "{}: the sidecar on admin {admin} is still in baseline mode {mode} after {timeout:?}: {}",
                    self.label,
                    dump["baseline"]
                );
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
        }
        self.ensure_running()
    }

    /// What the sidecars' baselines hold at the end of the run: the mode in
    /// force and flows learned (`/config_dump`), and deviations
    /// (`baseline_deviation_total`); `None` with the baseline off.
    pub fn baseline_report(&self) -> anyhow::Result<Option<BaselineReport>> {
        if self.baseline == BaselineRun::Off {
            return Ok(None);
        }
        let mut report = BaselineReport {
            run: self.baseline,
            modes: Vec::new(),
            entries: 0,
            deviations: 0,
        };
        for &admin in &self.admins {
            let (_, body) = http_request(admin, "GET", "/config_dump")?;
            let dump: serde_json::Value = serde_json::from_str(&body)?;
            let b = &dump["baseline"];
            report
                .modes
                .push(b["mode"].as_str().unwrap_or("?").to_owned());
            report.entries += b["entries"].as_u64().unwrap_or(0);
            let (_, metrics) = http_request(admin, "GET", "/metrics")?;
            report.deviations += metrics
                .lines()
                .filter(|l| l.starts_with("baseline_deviation_total"))
                .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                .sum::<f64>() as u64;
        }
        Ok(Some(report))
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

/// Start `kind`; `baseline` matters only to the Palisade path.
pub fn start(
    kind: PathKind,
    baseline: BaselineRun,
    setup: &Setup<'_>,
) -> Result<RunningPath, StartError> {
    match kind {
        PathKind::Direct => Ok(RunningPath {
            kind,
            label: kind.name(),
            baseline: BaselineRun::Off,
            admins: Vec::new(),
            http: setup.backends.http,
            tcp: setup.backends.tcp,
            proxies: Vec::new(),
            cgroups: Vec::new(),
        }),
        PathKind::Palisade => palisade::start(baseline, setup),
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
        label: kind.name(),
        baseline: BaselineRun::Off,
        admins: Vec::new(),
        http: entry[0],
        tcp: entry[1],
        proxies: vec![outbound, inbound],
        cgroups: Vec::new(),
    })
}

/// Start a proxy of the run with its output in `<work_dir>/<name>.log`.
fn spawn(name: &str, mut cmd: Command, setup: &Setup<'_>) -> anyhow::Result<Process> {
    let log = setup.work_dir.join(format!("{name}.log"));
    Process::spawn_logged(name, &mut cmd, &log)
}
