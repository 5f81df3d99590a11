//! Starting and stopping the demo mesh's processes: the control plane, one
//! echo service per workload (and a scenario's further services), and one
//! explicit-mode sidecar per workload, all through `crate::local`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;

use super::traffic::{serve_echo, serve_http, Call};
use super::{compromised, Scenario, NAMESPACE, TRUST_DOMAIN, WORKLOADS};
use crate::local::{http_request, ControlPlane, ControlPlaneSpec, Sidecar, SidecarSpec};

pub struct Workload {
    pub name: &'static str,
    pub id: String,
    /// Outbound listener per callee, and per further service it may call.
    pub routes: BTreeMap<&'static str, SocketAddr>,
    sidecar: Sidecar,
}

/// A further service a scenario adds: on its own port of `workload`, with a
/// route to it from `caller` only, named `name` in that caller's routes.
pub struct Port {
    pub name: &'static str,
    pub workload: &'static str,
    pub caller: &'static str,
    /// HTTP/1.1 rather than line echo.
    pub http: bool,
}

pub struct Mesh {
    dir: PathBuf,
    remove_dir: bool,
    policy: Option<PathBuf>,
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
        scenario: Scenario,
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
        let ports: &[Port] = match scenario {
            Scenario::Default => &[],
            Scenario::Compromised => &compromised::PORTS,
        };
        let mut served = Vec::new();
        for port in ports {
            let app = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
            served.push((port, app.local_addr()?));
            if port.http {
                tokio::spawn(serve_http(port.name, app));
            } else {
                tokio::spawn(serve_echo(port.name, app));
            }
        }
        // Starting children and waiting for them blocks; the echo services
        // keep running on the other workers.
        let started = tokio::task::block_in_place(|| {
            let policy = match scenario {
                Scenario::Default => policy.map(Path::to_owned),
                Scenario::Compromised => Some(compromised::policy_dir(&dir, policy)?),
            };
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
                &served,
                policy.as_deref(),
                scenario,
            )?;
            anyhow::Ok((control_plane, workloads, policy))
        });
        let (control_plane, workloads, policy) = match started {
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
            policy,
            control_plane,
            workloads,
        })
    }

    pub fn call(&self, from: &str, to: &str) -> anyhow::Result<Call> {
        self.call_via(from, to, to)
    }

    /// A call from `from` to workload `to` through `from`'s route named
    /// `route` (the callee's name, or a further service's).
    pub fn call_via(&self, from: &str, to: &str, route: &str) -> anyhow::Result<Call> {
        let workload = |name: &str| {
            self.workloads
                .iter()
                .find(|w| w.name == name)
                .with_context(|| format!("unknown workload {name}"))
        };
        let (caller, callee) = (workload(from)?, workload(to)?);
        Ok(Call {
            from: from.to_owned(),
            to: to.to_owned(),
            from_id: caller.id.clone(),
            to_id: callee.id.clone(),
            via: *caller
                .routes
                .get(route)
                .with_context(|| format!("{from} has no route {route}"))?,
            what: String::new(),
            http_path: None,
        })
    }

    /// The policy file or directory the sidecars enforce.
    pub fn policy(&self) -> Option<&Path> {
        self.policy.as_deref()
    }

    pub fn workload_names(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.workloads.iter().map(|w| w.name)
    }

    /// Each sidecar's `/config_dump`, by workload name (`Null` when it did
    /// not answer).
    pub async fn config_dumps(&self) -> Vec<(&'static str, serde_json::Value)> {
        tokio::task::block_in_place(|| {
            self.workloads
                .iter()
                .map(|w| {
                    let dump = match w.sidecar.admin_request("GET", "/config_dump") {
                        Ok((200, body)) => serde_json::from_str(&body).unwrap_or_default(),
                        _ => serde_json::Value::Null,
                    };
                    (w.name, dump)
                })
                .collect()
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

/// One sidecar per workload, each with a route to every other (and to the
/// further services it may call), all ready.
fn start_workloads(
    proxy: &Path,
    cp: &ControlPlane,
    dir: &Path,
    apps: &[(&'static str, SocketAddr)],
    served: &[(&Port, SocketAddr)],
    policy: Option<&Path>,
    scenario: Scenario,
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
        if scenario == Scenario::Compromised {
            spec.extra_yaml = compromised::sidecar_yaml(name, dir);
        }
        specs.push((name, spec));
    }
    // Each further service's inbound listener, on its workload's sidecar.
    let mut further = Vec::new();
    for &(port, app) in served {
        let (_, spec) = specs
            .iter_mut()
            .find(|(name, _)| *name == port.workload)
            .context("a further service on an unknown workload")?;
        further.push((port, spec.inbound(app, false)?));
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
        for &(port, listen) in further.iter().filter(|(p, _)| p.caller == name) {
            routes.insert(port.name, spec.route(listen, &workload_id(port.workload))?);
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
