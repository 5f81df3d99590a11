//! Starting and stopping the demo mesh's processes: the control plane, one
//! echo service per workload, and one explicit-mode sidecar per workload.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{bail, Context};
use tokio::process::{Child, Command};

use super::traffic::{serve_echo, Call};
use super::{NAMESPACE, TRUST_DOMAIN, WORKLOADS};
use crate::local::free_port;

pub struct Workload {
    pub name: &'static str,
    pub id: String,
    pub admin: SocketAddr,
    /// Outbound listener per callee.
    pub routes: BTreeMap<&'static str, SocketAddr>,
    proxy: Child,
}

pub struct Mesh {
    dir: PathBuf,
    remove_dir: bool,
    cp_addr: SocketAddr,
    control_plane: Child,
    workloads: Vec<Workload>,
}

fn free_addr() -> anyhow::Result<SocketAddr> {
    Ok(SocketAddr::from(([127, 0, 0, 1], free_port()?)))
}

fn workload_id(name: &str) -> String {
    format!("spiffe://{TRUST_DOMAIN}/ns/{NAMESPACE}/sa/{name}")
}

fn spawn(bin: &Path, args: &[&str], log: &Path) -> anyhow::Result<Child> {
    let out = std::fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
    Command::new(bin)
        .args(args)
        .stdin(Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(out)
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting {}", bin.display()))
}

fn tail(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(15)..].join("\n")
}

impl Mesh {
    pub async fn start(
        bin_dir: &Path,
        dir: Option<PathBuf>,
        policy: Option<&Path>,
    ) -> anyhow::Result<Mesh> {
        for b in ["palisade-control-plane", "palisade-proxy"] {
            if !bin_dir.join(b).exists() {
                bail!(
                    "{} not found in {}: build the workspace first (`cargo build --workspace --bins`)",
                    b,
                    bin_dir.display()
                );
            }
        }
        let remove_dir = dir.is_none();
        let dir = match dir {
            Some(d) => d,
            None => std::env::temp_dir().join(format!("palisade-up-{}", std::process::id())),
        };
        std::fs::create_dir_all(dir.join("logs"))?;
        let dir = std::fs::canonicalize(&dir)?;
        let state = dir.join("control-plane");
        let cp_addr = free_addr()?;
        let cp_log = dir.join("logs/control-plane.log");
        let control_plane = spawn(
            &bin_dir.join("palisade-control-plane"),
            &[
                "--state-dir",
                state.to_str().context("non-UTF-8 path")?,
                "--trust-domain",
                TRUST_DOMAIN,
                "--listen",
                &cp_addr.to_string(),
            ],
            &cp_log,
        )?;
        let mut mesh = Mesh {
            dir: dir.clone(),
            remove_dir,
            cp_addr,
            control_plane,
            workloads: Vec::new(),
        };
        if let Err(e) = mesh.wait_control_plane(&state, &cp_log).await {
            mesh.stop().await;
            return Err(e);
        }
        if let Err(e) = mesh.start_workloads(bin_dir, &state, policy).await {
            mesh.stop().await;
            return Err(e);
        }
        Ok(mesh)
    }

    async fn wait_control_plane(&mut self, state: &Path, log: &Path) -> anyhow::Result<()> {
        for _ in 0..200 {
            if state.join("bundle.pem").exists()
                && tokio::net::TcpStream::connect(self.cp_addr).await.is_ok()
            {
                return Ok(());
            }
            if let Ok(Some(status)) = self.control_plane.try_wait() {
                bail!("the control plane exited ({status}):\n{}", tail(log));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        bail!(
            "the control plane did not come up within 10s:\n{}",
            tail(log)
        )
    }

    async fn start_workloads(
        &mut self,
        bin_dir: &Path,
        state: &Path,
        policy: Option<&Path>,
    ) -> anyhow::Result<()> {
        // Every address first, so each sidecar's routes can name the others.
        let mut plan = Vec::new();
        for name in WORKLOADS {
            let app = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
            let app_addr = app.local_addr()?;
            tokio::spawn(serve_echo(name, app));
            plan.push((name, app_addr, free_addr()?, free_addr()?));
        }
        for &(name, app_addr, inbound, admin) in &plan {
            let token = self.join_token(bin_dir, state, &workload_id(name)).await?;
            let mut routes = BTreeMap::new();
            let mut route_yaml = String::new();
            for &(other, _, other_inbound, _) in &plan {
                if other == name {
                    continue;
                }
                let listen = free_addr()?;
                routes.insert(other, listen);
                route_yaml.push_str(&format!(
                    "    - {{listen: \"{listen}\", destination: \"{other_inbound}\", identity: \"{}\"}}\n",
                    workload_id(other)
                ));
            }
            let policy_yaml = match policy {
                Some(p) => format!("policy:\n  path: \"{}\"\n", p.display()),
                None => String::new(),
            };
            let config = format!(
                "mode: explicit\n\
                 inbound:\n  ports:\n    - {{listen: \"{inbound}\", app: \"{app_addr}\"}}\n\
                 outbound:\n  routes:\n{route_yaml}\
                 admin:\n  bind: \"{admin}\"\n\
                 drain_grace_period: 2s\n\
                 identity:\n  control_plane: \"{cp}\"\n  trust_domain: {TRUST_DOMAIN}\n  bootstrap_bundle: \"{bundle}\"\n  join_token: \"{token}\"\n\
                 {policy_yaml}",
                cp = self.cp_addr,
                bundle = state.join("bundle.pem").display(),
            );
            let cfg_path = self.dir.join(format!("{name}.yaml"));
            std::fs::write(&cfg_path, config)?;
            let log = self.dir.join(format!("logs/{name}.log"));
            let proxy = spawn(
                &bin_dir.join("palisade-proxy"),
                &["--config", cfg_path.to_str().context("non-UTF-8 path")?],
                &log,
            )?;
            self.workloads.push(Workload {
                name,
                id: workload_id(name),
                admin,
                routes,
                proxy,
            });
        }
        for i in 0..self.workloads.len() {
            self.wait_ready(i).await?;
        }
        Ok(())
    }

    async fn join_token(&self, bin_dir: &Path, state: &Path, id: &str) -> anyhow::Result<String> {
        let out = Command::new(bin_dir.join("palisadectl"))
            .args([
                "token",
                "create",
                "--identity",
                id,
                "--ttl",
                "10m",
                "--admin-socket",
            ])
            .arg(state.join("admin.sock"))
            .output()
            .await
            .context("running palisadectl token create")?;
        if !out.status.success() {
            bail!(
                "palisadectl token create failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8(out.stdout)?.trim().to_owned())
    }

    async fn wait_ready(&mut self, i: usize) -> anyhow::Result<()> {
        let log = self
            .dir
            .join(format!("logs/{}.log", self.workloads[i].name));
        for _ in 0..300 {
            if let Ok((200, _)) = admin_get(self.workloads[i].admin, "/ready").await {
                return Ok(());
            }
            if let Ok(Some(status)) = self.workloads[i].proxy.try_wait() {
                bail!(
                    "the {} sidecar exited ({status}):\n{}",
                    self.workloads[i].name,
                    tail(&log)
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        bail!(
            "the {} sidecar was not ready within 15s:\n{}",
            self.workloads[i].name,
            tail(&log)
        )
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
        self.cp_addr
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Each sidecar's Prometheus text, by workload name.
    pub async fn scrape(&self) -> Vec<(&'static str, String)> {
        let mut out = Vec::new();
        for w in &self.workloads {
            if let Ok((200, body)) = admin_get(w.admin, "/metrics").await {
                out.push((w.name, body));
            }
        }
        out
    }

    /// SIGTERM every child (sidecars first, so they drain), then wait.
    pub async fn stop(&mut self) {
        for w in &mut self.workloads {
            terminate(&mut w.proxy).await;
        }
        terminate(&mut self.control_plane).await;
        if self.remove_dir {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

async fn terminate(child: &mut Child) {
    if let Some(pid) = child.id() {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
    }
    if tokio::time::timeout(Duration::from_secs(5), child.wait())
        .await
        .is_err()
    {
        let _ = child.kill().await;
    }
}

/// A plain HTTP/1.1 GET against a sidecar's admin listener.
pub async fn admin_get(addr: SocketAddr, path: &str) -> anyhow::Result<(u16, String)> {
    use http_body_util::{BodyExt, Empty};
    let stream = tokio::net::TcpStream::connect(addr).await?;
    let (mut send, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    let req = http::Request::get(path)
        .header(http::header::HOST, addr.to_string())
        .body(Empty::<bytes::Bytes>::new())?;
    let resp = tokio::time::timeout(Duration::from_secs(2), send.send_request(req)).await??;
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await?.to_bytes();
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}
