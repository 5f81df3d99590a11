//! What every measuring command sets up the same way: the SVIDs, the
//! backends, the run's conditions, and each path started, checked (it
//! answers, and enforces its HTTP rule) and put under the CPU limit.

use std::time::Duration;

use anyhow::Context;
use palisadectl::local::ControlPlane;
use tracing::{info, warn};

use super::backend::Backends;
use super::certs::{self, CertSource, Credentials};
use super::client::{self, ClientHttp};
use super::conditions::{ConditionArgs, Contention};
use super::machine::Machine;
use super::report::PathReport;
use super::tcp;
use super::tools::{envoy_version, Tools};
use super::topology::{self, BaselineRun, PathKind, RunningPath, Setup, StartError};
use super::PathArgs;

pub struct Stage {
    /// The load client's runtime; the backends run on their own.
    pub rt: tokio::runtime::Runtime,
    pub tools: Tools,
    pub cert_source: CertSource,
    pub contention: Contention,
    control_plane: Option<ControlPlane>,
    creds: Credentials,
    backends: Backends,
    variants: Vec<(PathKind, BaselineRun)>,
    proxy_workers: usize,
    request_timeout: Duration,
    /// Last, so it is removed after everything that wrote into it stopped.
    work: tempfile::TempDir,
}

impl Stage {
    pub fn open(args: &PathArgs, conditions: &ConditionArgs) -> anyhow::Result<Stage> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let work = tempfile::Builder::new()
            .prefix("palisade-bench-")
            .tempdir()?;
        let contention = Contention::new(conditions, work.path().to_owned())?;
        let tools = Tools::find(args);
        let (creds, control_plane) = rt.block_on(certs::obtain(args.certs, &tools, work.path()))?;
        info!(certs = ?creds.source, "SVIDs ready");
        let backends = Backends::start()?;
        Ok(Stage {
            rt,
            tools,
            cert_source: creds.source,
            contention,
            control_plane,
            creds,
            backends,
            variants: variants(args),
            proxy_workers: args.proxy_workers,
            request_timeout: Duration::from_secs_f64(args.request_timeout),
            work,
        })
    }

    /// Start every path for a load client speaking `http`; a path whose tool
    /// is missing is skipped (the report says why), one that fails fails the run.
    pub fn start_paths(
        &mut self,
        http: ClientHttp,
    ) -> anyhow::Result<(Vec<RunningPath>, Vec<PathReport>)> {
        let setup = Setup {
            backends: &self.backends,
            creds: &self.creds,
            control_plane: self.control_plane.as_ref(),
            work_dir: self.work.path(),
            tools: &self.tools,
            proxy_workers: self.proxy_workers,
            http,
        };
        let mut started = Vec::new();
        let mut skipped = Vec::new();
        for &(kind, baseline) in &self.variants {
            let label = match kind {
                PathKind::Palisade => baseline.label(),
                _ => kind.name(),
            };
            match topology::start(kind, baseline, &setup) {
                Ok(mut path) => {
                    // Under the limit at once: if a later path fails to
                    // start, this one's groups go with it.
                    self.contention
                        .limit(&mut path)
                        .with_context(|| format!("{label}: applying the CPU limit"))?;
                    started.push(path);
                }
                Err(StartError::Unavailable(reason)) => {
                    warn!(path = label, %reason, "skipping path");
                    skipped.push(PathReport::skipped(label, reason));
                }
                Err(StartError::Failed(e)) => {
                    return Err(e.context(format!("starting the {label} path")))
                }
            }
        }
        anyhow::ensure!(!started.is_empty(), "no path could be started");
        for path in &started {
            self.check(path, http)?;
        }
        Ok((started, skipped))
    }

    /// The path answers, refuses what its policy does not allow, and (with
    /// a baseline) has learned every flow the trials use.
    fn check(&self, path: &RunningPath, http: ClientHttp) -> anyhow::Result<()> {
        self.rt
            .block_on(client::probe(path.http, http, Duration::from_secs(10)))
            .with_context(|| format!("{} path does not answer HTTP", path.label))?;
        if path.kind.enforces_http_rule() {
            self.rt
                .block_on(client::expect_denied(path.http, http))
                .with_context(|| format!("{} path", path.label))?;
        }
        if path.baseline != BaselineRun::Off {
            // The probe taught the HTTP flow; one transfer makes sure of the
            // TCP sink's (the listener check's connect does not carry data),
            // right away, so that every flow the trials use is learned
            // before a monitor sidecar can promote itself.
            self.rt
                .block_on(tcp::bulk(path.tcp, 64 << 10, self.request_timeout))
                .with_context(|| format!("{} path: teaching the TCP flow", path.label))?;
        }
        Ok(())
    }

    /// Fails if the control plane (when one issues the SVIDs) has died.
    pub fn ensure_control_plane(&mut self) -> anyhow::Result<()> {
        match self.control_plane.as_mut() {
            Some(cp) => cp.ensure_running(),
            None => Ok(()),
        }
    }

    /// The machine, with Envoy's version when an Envoy path ran.
    pub fn machine(&self, envoy_ran: bool) -> Machine {
        let mut machine = Machine::probe();
        if envoy_ran {
            machine.envoy = self.tools.envoy.as_deref().and_then(envoy_version);
        }
        machine
    }
}

/// Each path in `--paths` order; the Palisade path once per `--baseline` mode.
fn variants(args: &PathArgs) -> Vec<(PathKind, BaselineRun)> {
    let mut out = Vec::new();
    for &kind in &args.paths {
        match kind {
            PathKind::Palisade => out.extend(args.baseline.iter().map(|&b| (kind, b))),
            _ => out.push((kind, BaselineRun::Off)),
        }
    }
    let mut seen = std::collections::HashSet::new();
    out.retain(|v| seen.insert(*v));
    out
}
