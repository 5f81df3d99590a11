//! Running a real `palisade-control-plane` for a test: temp state dir, free
//! ports, readiness, join tokens and CA rotation through the real
//! `palisadectl`, metrics over plain HTTP, restart.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use palisade_identity::api::SvidResponse;
use palisade_identity::client::{ApiClient, ClientIdentity};
use palisade_policy::TrustDomain;
use rustls::pki_types::CertificateDer;

use crate::{bin, free_port, ChildGuard};

/// How a test control plane is started.
#[derive(Debug, Clone)]
pub struct ControlPlaneOptions {
    pub trust_domain: String,
    pub svid_ttl: String,
    pub ca_ttl: String,
    /// Extra flags, e.g. `["--jwks", path, "--k8s-issuer", url]`.
    pub extra_args: Vec<String>,
}

impl Default for ControlPlaneOptions {
    fn default() -> Self {
        ControlPlaneOptions {
            trust_domain: "cluster.local".into(),
            svid_ttl: "1h".into(),
            ca_ttl: "7d".into(),
            extra_args: Vec::new(),
        }
    }
}

/// A running control plane, killed and its state dir removed on drop.
pub struct ControlPlane {
    child: Option<ChildGuard>,
    dir: tempfile::TempDir,
    addr: SocketAddr,
    metrics_addr: SocketAddr,
    opts: ControlPlaneOptions,
}

impl ControlPlane {
    /// Starts one with default options (trust domain `cluster.local`).
    pub fn start() -> ControlPlane {
        Self::start_with(ControlPlaneOptions::default())
    }

    pub fn start_with(opts: ControlPlaneOptions) -> ControlPlane {
        let dir = tempfile::Builder::new()
            .prefix("palisade-cp-")
            .tempdir()
            .expect("tempdir");
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let metrics_addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let mut cp = ControlPlane {
            child: None,
            dir,
            addr,
            metrics_addr,
            opts,
        };
        cp.spawn();
        cp
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .expect("open control-plane log");
        let mut cmd = Command::new(bin("palisade-control-plane"));
        cmd.arg("--state-dir")
            .arg(self.state_dir())
            .args(["--listen", &self.addr.to_string()])
            .args(["--metrics-listen", &self.metrics_addr.to_string()])
            .args(["--trust-domain", &self.opts.trust_domain])
            .args(["--svid-ttl", &self.opts.svid_ttl])
            .args(["--ca-ttl", &self.opts.ca_ttl])
            .args(&self.opts.extra_args)
            .env("RUST_LOG", "info")
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        let mut guard = ChildGuard::spawn("palisade-control-plane", &mut cmd);
        self.wait_ready(&mut guard);
        self.child = Some(guard);
    }

    /// Ready = the API port, the metrics port and the admin socket all accept.
    fn wait_ready(&self, guard: &mut ChildGuard) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(Some(status)) = guard.child.try_wait() {
                panic!(
                    "palisade-control-plane exited with {status} before it was ready:\n{}",
                    self.log()
                );
            }
            let ok = TcpStream::connect_timeout(&self.addr, Duration::from_millis(200)).is_ok()
                && TcpStream::connect_timeout(&self.metrics_addr, Duration::from_millis(200))
                    .is_ok()
                && UnixStream::connect(self.admin_socket()).is_ok();
            if ok {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "control plane not ready after 30s:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    /// Workload API address (HTTPS).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn trust_domain(&self) -> TrustDomain {
        TrustDomain::new(&self.opts.trust_domain).expect("valid trust domain")
    }

    pub fn state_dir(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    /// `<state-dir>/bundle.pem`: the bootstrap trust bundle.
    pub fn bundle_path(&self) -> PathBuf {
        self.state_dir().join("bundle.pem")
    }

    pub fn bundle_pem(&self) -> String {
        std::fs::read_to_string(self.bundle_path()).expect("read bundle.pem")
    }

    pub fn bundle(&self) -> Vec<CertificateDer<'static>> {
        palisade_identity::svid::certs_from_pem(self.bundle_pem().as_bytes())
            .expect("bundle.pem parses")
    }

    pub fn admin_socket(&self) -> PathBuf {
        self.state_dir().join("admin.sock")
    }

    /// A scratch directory that lives as long as this control plane.
    pub fn work_dir(&self) -> &Path {
        self.dir.path()
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("control-plane.log")
    }

    /// Everything the control plane logged so far (all runs).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.pid())
    }

    /// Runs `palisadectl` with `args` and returns its output.
    pub fn palisadectl(&self, args: &[&str]) -> Output {
        Command::new(bin("palisadectl"))
            .args(args)
            .output()
            .expect("run palisadectl")
    }

    /// Runs `palisadectl token create`, successful or not.
    pub fn token_create(&self, spiffe_id: &str, ttl: &str) -> Output {
        let sock = self.admin_socket();
        self.palisadectl(&[
            "token",
            "create",
            "--admin-socket",
            sock.to_str().unwrap(),
            "--identity",
            spiffe_id,
            "--ttl",
            ttl,
        ])
    }

    /// A fresh join token for `spiffe_id`, via `palisadectl token create`.
    pub fn join_token(&self, spiffe_id: impl AsRef<str>) -> String {
        self.join_token_ttl(spiffe_id, "10m")
    }

    pub fn join_token_ttl(&self, spiffe_id: impl AsRef<str>, ttl: &str) -> String {
        let out = self.token_create(spiffe_id.as_ref(), ttl);
        assert!(
            out.status.success(),
            "palisadectl token create failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap().trim().to_owned()
    }

    /// `palisadectl ca rotate`.
    pub fn rotate_ca(&self) {
        let sock = self.admin_socket();
        let out = self.palisadectl(&["ca", "rotate", "--admin-socket", sock.to_str().unwrap()]);
        assert!(
            out.status.success(),
            "palisadectl ca rotate failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// SIGTERM, then wait for exit. The state dir stays.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.terminate(Duration::from_secs(10));
        }
    }

    /// Starts it again on the same ports with the same state dir.
    pub fn start_again(&mut self) {
        assert!(self.child.is_none(), "control plane is still running");
        self.spawn();
    }

    pub fn restart(&mut self) {
        self.stop();
        self.start_again();
    }

    /// Prometheus text from the plain-HTTP metrics port.
    pub fn metrics(&self) -> String {
        let mut s = TcpStream::connect(self.metrics_addr).expect("connect metrics port");
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).expect("read metrics");
        out
    }

    /// Value of one series, e.g. `svid_rejected_total{reason="join_token_replayed"}`;
    /// 0 when absent.
    pub fn metric(&self, series: &str) -> f64 {
        metric_value(&self.metrics(), series)
    }

    /// An API client trusting the current bundle.pem, with an optional SVID.
    pub fn client(&self, identity: Option<ClientIdentity>) -> ApiClient {
        ApiClient::new(
            &self.addr.to_string(),
            &self.trust_domain(),
            &self.bundle(),
            identity,
        )
        .expect("API client")
    }

    /// Issues an SVID for `spiffe_id` with a fresh key, through a join token:
    /// the key and the answer.
    pub async fn issue_svid(&self, spiffe_id: &str) -> (rcgen::KeyPair, SvidResponse) {
        let key = rcgen::KeyPair::generate().unwrap();
        let req = palisade_identity::api::SvidRequest {
            csr: crate::pki::csr_pem(&key),
            attestation: palisade_identity::api::Attestation::JoinToken(self.join_token(spiffe_id)),
        };
        let resp = self.client(None).issue(&req).await.expect("issue SVID");
        (key, resp)
    }
}

/// Value of one series in Prometheus text; 0 when absent.
pub fn metric_value(text: &str, series: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| {
            let (name, value) = l.rsplit_once(' ')?;
            (name == series).then(|| value.parse().ok()).flatten()
        })
        .unwrap_or(0.0)
}
