//! A real `palisade-control-plane` on loopback: its flags, its state under a
//! working directory, readiness, join tokens through `palisadectl token
//! create`, stop and restart on the same ports.

use std::ffi::OsString;
use std::net::{SocketAddr, TcpStream};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use anyhow::{bail, Context};

use super::{free_addr, Process};

/// How a control plane is started. Durations are in the control plane's own
/// grammar (`30s`, `10m`, `1h`, `7d`).
#[derive(Debug, Clone)]
pub struct ControlPlaneSpec {
    pub trust_domain: String,
    pub svid_ttl: String,
    pub ca_ttl: String,
    /// Further flags, e.g. `["--policy-dir", path]`.
    pub extra_args: Vec<String>,
    /// Keep the state in etcd rather than the state directory.
    pub etcd: Option<EtcdStoreSpec>,
    /// `RUST_LOG`.
    pub log_filter: String,
}

impl Default for ControlPlaneSpec {
    fn default() -> Self {
        ControlPlaneSpec {
            trust_domain: "cluster.local".into(),
            svid_ttl: "1h".into(),
            ca_ttl: "7d".into(),
            extra_args: Vec::new(),
            etcd: None,
            log_filter: "info".into(),
        }
    }
}

/// `--store etcd`: the cluster's client URLs and the key-encryption key.
#[derive(Debug, Clone)]
pub struct EtcdStoreSpec {
    pub endpoints: Vec<String>,
    pub kek_file: PathBuf,
    /// Client TLS: the etcd CA, and this replica's certificate and key.
    pub tls: Option<[PathBuf; 3]>,
}

impl EtcdStoreSpec {
    fn args(&self) -> Vec<OsString> {
        let mut args: Vec<OsString> = vec![
            "--store".into(),
            "etcd".into(),
            "--etcd-endpoints".into(),
            self.endpoints.join(",").into(),
            "--kek-file".into(),
            self.kek_file.clone().into(),
        ];
        if let Some([ca, cert, key]) = &self.tls {
            for (flag, path) in [
                ("--etcd-ca", ca),
                ("--etcd-cert", cert),
                ("--etcd-key", key),
            ] {
                args.push(flag.into());
                args.push(path.into());
            }
        }
        args
    }
}

/// A running control plane; killed when dropped, its directory kept.
pub struct ControlPlane {
    process: Option<Process>,
    bin: PathBuf,
    palisadectl: PathBuf,
    dir: PathBuf,
    addr: SocketAddr,
    metrics_addr: SocketAddr,
    spec: ControlPlaneSpec,
}

impl ControlPlane {
    /// Start `bin` with its state in `<dir>/control-plane` and its log in
    /// `<dir>/control-plane.log`, and wait until it is ready. `palisadectl`
    /// makes the join tokens (only needed for those).
    pub fn start(
        bin: &Path,
        palisadectl: &Path,
        dir: &Path,
        spec: ControlPlaneSpec,
    ) -> anyhow::Result<ControlPlane> {
        if !bin.exists() {
            bail!(
                "{} not found: build it first (`cargo build -p palisade-control-plane`)",
                bin.display()
            );
        }
        let mut cp = ControlPlane {
            process: None,
            bin: bin.to_owned(),
            palisadectl: palisadectl.to_owned(),
            dir: dir.to_owned(),
            addr: free_addr()?,
            metrics_addr: free_addr()?,
            spec,
        };
        cp.start_again()?;
        Ok(cp)
    }

    /// Every flag the control plane is started with, in one place.
    fn args(&self) -> Vec<OsString> {
        let mut args: Vec<OsString> = vec!["--state-dir".into(), self.state_dir().into()];
        for (flag, value) in [
            ("--listen", self.addr.to_string()),
            ("--metrics-listen", self.metrics_addr.to_string()),
            ("--trust-domain", self.spec.trust_domain.clone()),
            ("--svid-ttl", self.spec.svid_ttl.clone()),
            ("--ca-ttl", self.spec.ca_ttl.clone()),
        ] {
            args.push(flag.into());
            args.push(value.into());
        }
        if let Some(etcd) = &self.spec.etcd {
            args.extend(etcd.args());
        }
        args.extend(self.spec.extra_args.iter().map(OsString::from));
        args
    }

    /// Start it (again, after [`stop`](Self::stop)) on the same ports and
    /// state, and wait until the API port, the metrics port and the admin
    /// socket all accept and the bundle is written.
    pub fn start_again(&mut self) -> anyhow::Result<()> {
        if self.process.is_some() {
            bail!("the control plane is still running");
        }
        let mut cmd = Command::new(&self.bin);
        cmd.args(self.args()).env("RUST_LOG", &self.spec.log_filter);
        let mut process =
            Process::spawn_logged("palisade-control-plane", &mut cmd, &self.log_path())?;
        let (addr, metrics, socket, bundle) = (
            self.addr,
            self.metrics_addr,
            self.admin_socket(),
            self.bundle_path(),
        );
        process.wait_until("readiness", Duration::from_secs(30), || {
            let up = TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
                && TcpStream::connect_timeout(&metrics, Duration::from_millis(200)).is_ok()
                && UnixStream::connect(&socket).is_ok()
                && bundle.exists();
            up.then_some(())
        })?;
        self.process = Some(process);
        Ok(())
    }

    /// SIGTERM, then wait for the exit. The state stays.
    pub fn stop(&mut self) {
        if let Some(mut p) = self.process.take() {
            p.terminate(Duration::from_secs(10));
        }
    }

    /// SIGKILL, mid-whatever it was doing. The state stays.
    pub fn kill(&mut self) {
        self.process = None;
    }

    /// Fails with its log if it has died.
    pub fn ensure_running(&mut self) -> anyhow::Result<()> {
        match &mut self.process {
            Some(p) => p.ensure_running(),
            None => bail!("the control plane is stopped"),
        }
    }

    /// Whether `GET /readyz` answers 200 (the state store is reachable).
    pub fn ready(&self) -> bool {
        super::http_request(self.metrics_addr, "GET", "/readyz").is_ok_and(|(s, _)| s == 200)
    }

    /// Workload API address (HTTPS).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Plain-HTTP `/metrics` address.
    pub fn metrics_addr(&self) -> SocketAddr {
        self.metrics_addr
    }

    pub fn trust_domain(&self) -> &str {
        &self.spec.trust_domain
    }

    pub fn state_dir(&self) -> PathBuf {
        self.dir.join("control-plane")
    }

    /// The bootstrap trust bundle it writes.
    pub fn bundle_path(&self) -> PathBuf {
        self.state_dir().join("bundle.pem")
    }

    pub fn admin_socket(&self) -> PathBuf {
        self.state_dir().join("admin.sock")
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.join("control-plane.log")
    }

    /// Everything it logged so far (all runs).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    pub fn pid(&self) -> Option<u32> {
        self.process.as_ref().map(Process::pid)
    }

    /// Run `palisadectl` with `args`, successful or not.
    pub fn palisadectl(&self, args: &[&str]) -> std::io::Result<Output> {
        Command::new(&self.palisadectl).args(args).output()
    }

    /// `palisadectl token create` against this control plane, successful or not.
    pub fn token_create(&self, spiffe_id: &str, ttl: &str) -> std::io::Result<Output> {
        Command::new(&self.palisadectl)
            .args(["token", "create", "--admin-socket"])
            .arg(self.admin_socket())
            .args(["--identity", spiffe_id, "--ttl", ttl])
            .output()
    }

    /// A single-use join token for `spiffe_id`, redeemable for `ttl`.
    pub fn join_token(&self, spiffe_id: &str, ttl: &str) -> anyhow::Result<String> {
        let out = self
            .token_create(spiffe_id, ttl)
            .with_context(|| format!("running {}", self.palisadectl.display()))?;
        if !out.status.success() {
            bail!(
                "palisadectl token create failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8(out.stdout)?.trim().to_owned())
    }
}
