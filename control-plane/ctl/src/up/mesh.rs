//! Starting and stopping the demo mesh's processes: the control plane, one
//! echo service per workload, and one explicit-mode sidecar per workload,
//! all through `crate::local`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;

use super::traffic::{serve_echo, Call};
use super::{NAMESPACE, TRUST_DOMAIN, WORKLOADS};
use crate::local::{http_request, ControlPlane, ControlPlaneSpec, Sidecar, SidecarSpec};

pub struct Workload {
    pub name: &'static str,
    pub id: String,
    /// Outbound listener per callee.
    pub routes: BTreeMap<&'static str, SocketAddr>,
    sidecar: Sidecar,
}

pub struct Mesh {
    dir: PathBuf,
    remove_dir: bool,
    control_plane: ControlPlane,
    workloads: Vec<Workload>,
}

fn workload_id(name: &str) -> String {
    format!("spiffe://{TRUST_DOMAIN}/ns/{NAMESPACE}/sa/{name}")
}

impl Mesh {
    pub async fn start(
        bin_dir: &Path,
        dir: Option<PathBuf>,
        policy: Option<&Path>,
    ) -> anyhow::Result<Mesh> {
        let remove_dir = dir.is_none();
        let dir = match dir {
            Some(d) => d,
            None => std::env::temp_dir().join(format!("palisade-up-{}", std::process::id())),
        };
        std::fs::create_dir_all(&dir)?;
        let dir = std::fs::canonicalize(&dir)?;
        let mut apps = Vec::new();
        for name in WORKLOADS {
            let app = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
            apps.push((name, app.local_addr()?));
            tokio::spawn(serve_echo(name, app));
        }
        // Starting children and waiting for them blocks; the echo services
        // keep running on the other workers.
        let started = tokio::task::block_in_place(|| {
            let spec = ControlPlaneSpec {
                trust_domain: TRUST_DOMAIN.to_owned(),
                ..ControlPlaneSpec::default()
            };
            let control_plane = ControlPlane::start(
                &bin_dir.join("palisade-control-plane"),
                &bin_dir.join("palisadectl"),
                &dir,
                spec,
            )?;
            let workloads = start_workloads(
                &bin_dir.join("palisade-proxy"),
                &control_plane,
                &dir,
                &apps,
                policy,
            )?;
            anyhow::Ok((control_plane, workloads))
        });
        let (control_plane, workloads) = match started {
            Ok(s) => s,
            Err(e) => {
                if remove_dir {
                    let _ = std::fs::remove_dir_all(&dir);
                }
                return Err(e);
            }
        };
        Ok(Mesh {
            dir,
            remove_dir,
            control_plane,
            workloads,
        })
    }

    pub fn call(&self, from: &str, to: &str) -> anyhow::Result<Call> {
        let caller = self
            .workloads
            .iter()
            .find(|w| w.name == from)
            .context("unknown caller")?;
        let callee = self
            .workloads
            .iter()
            .find(|w| w.name == to)
            .context("unknown callee")?;
        Ok(Call {
            from: from.to_owned(),
            to: to.to_owned(),
            from_id: caller.id.clone(),
            to_id: callee.id.clone(),
            via: *caller.routes.get(callee.name).context("no route")?,
        })
    }

    pub fn control_plane_addr(&self) -> SocketAddr {
        self.control_plane.addr()
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Each sidecar's Prometheus text, by workload name.
    pub async fn scrape(&self) -> Vec<(&'static str, String)> {
        let admins: Vec<_> = self
            .workloads
            .iter()
            .map(|w| (w.name, w.sidecar.admin))
            .collect();
        tokio::task::block_in_place(|| {
            admins
                .into_iter()
                .filter_map(
                    |(name, admin)| match http_request(admin, "GET", "/metrics") {
                        Ok((200, body)) => Some((name, body)),
                        _ => None,
                    },
                )
                .collect()
        })
    }

    /// SIGTERM every child (sidecars first, so they drain), then wait.
    pub async fn stop(&mut self) {
        tokio::task::block_in_place(|| {
            for w in &mut self.workloads {
                w.sidecar.child.terminate(Duration::from_secs(5));
            }
            self.control_plane.stop();
        });
        if self.remove_dir {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// One sidecar per workload, each with a route to every other, all ready.
fn start_workloads(
    proxy: &Path,
    cp: &ControlPlane,
    dir: &Path,
    apps: &[(&'static str, SocketAddr)],
    policy: Option<&Path>,
) -> anyhow::Result<Vec<Workload>> {
    // Every spec (and so every inbound address) first, so each sidecar's
    // routes can name the others.
    let mut specs = Vec::new();
    for &(name, app) in apps {
        let token = cp.join_token(&workload_id(name), "10m")?;
        let mut spec = SidecarSpec::new(name, cp.addr(), &cp.bundle_path(), &token)?;
        spec.trust_domain = TRUST_DOMAIN.to_owned();
        spec.inbound(app, false)?;
        spec.policy = policy.map(Path::to_owned);
        spec.drain_grace_period = Some(Duration::from_secs(2));
        specs.push((name, spec));
    }
    let inbound: Vec<(&str, SocketAddr)> = specs
        .iter()
        .map(|(name, spec)| (*name, spec.inbound[0].listen))
        .collect();
    let mut workloads = Vec::new();
    for (name, mut spec) in specs {
        let mut routes = BTreeMap::new();
        for &(other, other_inbound) in inbound.iter().filter(|(other, _)| *other != name) {
            routes.insert(other, spec.route(other_inbound, &workload_id(other))?);
        }
        workloads.push(Workload {
            name,
            id: workload_id(name),
            routes,
            sidecar: Sidecar::start(proxy, spec, dir)?,
        });
    }
    for w in &mut workloads {
        w.sidecar.wait_ready(Duration::from_secs(30))?;
    }
    Ok(workloads)
}
