//! A real `palisade-control-plane` for a test, started by the shared harness
//! (`palisadectl::local`) in a temp dir: panicking accessors, CA rotation,
//! metrics, API clients and SVID issuance.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Output;

use palisade_identity::api::SvidResponse;
use palisade_identity::client::{ApiClient, ClientIdentity};
use palisade_policy::TrustDomain;
use rustls::pki_types::CertificateDer;

pub use palisadectl::local::ControlPlaneSpec;

use crate::bin;

/// A running control plane, killed and its directory removed on drop.
pub struct ControlPlane {
    cp: palisadectl::local::ControlPlane,
    dir: tempfile::TempDir,
}

impl ControlPlane {
    /// Starts one with default options (trust domain `cluster.local`).
    pub fn start() -> ControlPlane {
        Self::start_with(ControlPlaneSpec::default())
    }

    pub fn start_with(opts: ControlPlaneSpec) -> ControlPlane {
        Self::start_in(Self::temp_dir(), opts)
    }

    /// Another replica: a control plane started from a copy of this one's
    /// state directory, so it signs under the same CA and either one renews
    /// the SVIDs the other issued.
    pub fn replica(&self, opts: ControlPlaneSpec) -> ControlPlane {
        let dir = Self::temp_dir();
        copy_state(&self.state_dir(), &dir.path().join("control-plane"));
        Self::start_in(dir, opts)
    }

    fn temp_dir() -> tempfile::TempDir {
        tempfile::Builder::new()
            .prefix("palisade-cp-")
            .tempdir()
            .expect("tempdir")
    }

    fn start_in(dir: tempfile::TempDir, opts: ControlPlaneSpec) -> ControlPlane {
        let cp = palisadectl::local::ControlPlane::start(
            &bin("palisade-control-plane"),
            &bin("palisadectl"),
            dir.path(),
            opts,
        )
        .unwrap_or_else(|e| panic!("{e:#}"));
        ControlPlane { cp, dir }
    }

    /// Workload API address (HTTPS).
    pub fn addr(&self) -> SocketAddr {
        self.cp.addr()
    }

    pub fn trust_domain(&self) -> TrustDomain {
        TrustDomain::new(self.cp.trust_domain()).expect("valid trust domain")
    }

    pub fn state_dir(&self) -> PathBuf {
        self.cp.state_dir()
    }

    /// `<state-dir>/bundle.pem`: the bootstrap trust bundle.
    pub fn bundle_path(&self) -> PathBuf {
        self.cp.bundle_path()
    }

    pub fn bundle_pem(&self) -> String {
        std::fs::read_to_string(self.bundle_path()).expect("read bundle.pem")
    }

    pub fn bundle(&self) -> Vec<CertificateDer<'static>> {
        palisade_identity::svid::certs_from_pem(self.bundle_pem().as_bytes())
            .expect("bundle.pem parses")
    }

    pub fn admin_socket(&self) -> PathBuf {
        self.cp.admin_socket()
    }

    /// A scratch directory that lives as long as this control plane.
    pub fn work_dir(&self) -> &Path {
        self.dir.path()
    }

    /// Everything the control plane logged so far (all runs).
    pub fn log(&self) -> String {
        self.cp.log()
    }

    pub fn pid(&self) -> Option<u32> {
        self.cp.pid()
    }

    /// Runs `palisadectl` with `args` and returns its output.
    pub fn palisadectl(&self, args: &[&str]) -> Output {
        self.cp.palisadectl(args).expect("run palisadectl")
    }

    /// Runs `palisadectl token create`, successful or not.
    pub fn token_create(&self, spiffe_id: &str, ttl: &str) -> Output {
        self.cp
            .token_create(spiffe_id, ttl)
            .expect("run palisadectl")
    }

    /// A fresh join token for `spiffe_id`, via `palisadectl token create`.
    pub fn join_token(&self, spiffe_id: impl AsRef<str>) -> String {
        self.join_token_ttl(spiffe_id, "10m")
    }

    pub fn join_token_ttl(&self, spiffe_id: impl AsRef<str>, ttl: &str) -> String {
        self.cp
            .join_token(spiffe_id.as_ref(), ttl)
            .unwrap_or_else(|e| panic!("{e:#}"))
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
        self.cp.stop();
    }

    /// Starts it again on the same ports with the same state dir.
    pub fn start_again(&mut self) {
        self.cp.start_again().unwrap_or_else(|e| panic!("{e:#}"));
    }

    /// SIGKILL, as in a crash, and reap it. The state dir stays.
    pub fn kill(&mut self) {
        if let Some(pid) = self.pid() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        self.stop();
    }

    pub fn restart(&mut self) {
        self.stop();
        self.start_again();
    }

    /// Prometheus text from the plain-HTTP metrics port.
    pub fn metrics(&self) -> String {
        crate::proxy::http(self.cp.metrics_addr(), "GET", "/metrics").1
    }

    /// Value of one series, e.g. `svid_rejected_total{reason="join_token_replayed"}`;
    /// 0 when absent.
    pub fn metric(&self, series: &str) -> f64 {
        metric_value(&self.metrics(), series)
    }

    /// An API client trusting the current bundle.pem, with an optional SVID.
    pub fn client(&self, identity: Option<ClientIdentity>) -> ApiClient {
        ApiClient::new(
            &self.addr().to_string(),
            &self.trust_domain(),
            &self.bundle(),
            identity,
        )
        .expect("API client")
    }

    /// An API client holding a fresh SVID for `spiffe_id`, as its sidecar
    /// would after attestation.
    pub async fn svid_client(&self, spiffe_id: &str) -> ApiClient {
        let (key, svid) = self.issue_svid(spiffe_id).await;
        self.client(Some(crate::pki::identity(&svid, &key)))
    }

    /// GET `path` on the admin socket: the status and the body.
    pub fn admin_get(&self, path: &str) -> (u16, String) {
        use std::io::{Read, Write};
        let mut s =
            std::os::unix::net::UnixStream::connect(self.admin_socket()).expect("admin socket");
        s.set_read_timeout(Some(std::time::Duration::from_secs(10)))
            .unwrap();
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        let (head, body) = out.split_once("\r\n\r\n").expect("an HTTP answer");
        let status = head
            .split(' ')
            .nth(1)
            .and_then(|c| c.parse().ok())
            .expect("a status line");
        (status, body.to_owned())
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

/// Copies a state directory (modes kept, sockets left out).
fn copy_state(from: &Path, to: &Path) {
    use std::os::unix::fs::{DirBuilderExt, FileTypeExt};
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(to)
        .unwrap_or_else(|e| panic!("creating {}: {e}", to.display()));
    for entry in std::fs::read_dir(from).expect("read the state dir") {
        let entry = entry.unwrap();
        let kind = entry.file_type().unwrap();
        let target = to.join(entry.file_name());
        if kind.is_dir() {
            copy_state(&entry.path(), &target);
        } else if !kind.is_socket() {
            std::fs::copy(entry.path(), &target)
                .unwrap_or_else(|e| panic!("copying {}: {e}", entry.path().display()));
        }
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
