//! Meshed pods for transparent-mode tests: the init program's redirection,
//! a sidecar started in a pod as the proxy user, and its admin API read
//! through the pod's own loopback. Built on `netns`.

use std::net::{SocketAddr, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::bin;
use crate::cp::ControlPlane;
use crate::netns::{self, Pod};
use crate::proxy::http;
use palisadectl::local::{Interception, Sidecar, SidecarSpec};

/// The UID sidecars run as; the init program excludes it from redirection.
pub const PROXY_UID: u32 = 2102;
pub const TD: &str = "cluster.local";
const ADMIN: &str = "127.0.0.1:4191";

pub fn init_program() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/init/palisade-init")
}

pub fn run_ok(mut cmd: Command) -> String {
    let out = cmd.output().expect("run command");
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// True (after saying why) when this machine cannot build pods.
pub fn skip_unless_root() -> bool {
    if netns::available() && Command::new("iptables").arg("--version").output().is_ok() {
        return false;
    }
    eprintln!("skipped: needs root, iproute2 and iptables (bash .ci/run installs them)");
    true
}

/// A directory the unprivileged proxy user can read.
pub fn shared_dir() -> tempfile::TempDir {
    let dir = tempfile::Builder::new()
        .prefix("palisade-tp-")
        .tempdir()
        .unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    dir
}

/// Write `text` to `dir/name`, readable by the proxy user.
pub fn shared_file(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    path
}

pub fn install_redirect(pod: &Pod) {
    let mut c = pod.command(init_program());
    c.args(["install", "--proxy-uid", &PROXY_UID.to_string()]);
    run_ok(c);
}

/// Start a transparent-mode sidecar in `pod` as the proxy user, with
/// `extra_yaml` laid over its configuration, and wait for its readiness.
pub fn start_sidecar(
    pod: &Pod,
    dir: &Path,
    cp: &ControlPlane,
    cp_addr: SocketAddr,
    id: &str,
    extra_yaml: &str,
) -> Sidecar {
    let bundle = dir.join("bundle.pem");
    std::fs::copy(cp.bundle_path(), &bundle).unwrap();
    std::fs::set_permissions(&bundle, std::fs::Permissions::from_mode(0o644)).unwrap();
    let mut spec = SidecarSpec::new(&pod.ns, cp_addr, &bundle, &cp.join_token(id)).unwrap();
    spec.interception = Interception::Transparent;
    spec.admin = ADMIN.parse().unwrap();
    spec.trust_domain = TD.to_owned();
    spec.drain_grace_period = Some(Duration::from_secs(1));
    spec.extra_yaml = extra_yaml.to_owned();
    let cmd = pod.command_as(PROXY_UID, bin("palisade-proxy"));
    let mut sidecar = Sidecar::spawn(cmd, spec, dir).unwrap_or_else(|e| panic!("{e:#}"));
    sidecar
        .child
        .wait_until("/ready in the pod", Duration::from_secs(30), || {
            pod.enter(|| {
                let admin = ADMIN.parse().unwrap();
                TcpStream::connect_timeout(&admin, Duration::from_millis(200))
                    .ok()
                    .map(|_| http(admin, "GET", "/ready").0)
            })
            .filter(|s| *s == 200)
        })
        .unwrap_or_else(|e| panic!("{e:#}"));
    sidecar
}

/// The sidecar's metrics, read inside the pod.
pub fn admin_metrics(pod: &Pod) -> String {
    pod.enter(|| http(ADMIN.parse().unwrap(), "GET", "/metrics").1)
}

/// Every sidecar log in `dir`, for failure messages.
pub fn logs(dir: &Path) -> String {
    let mut out = String::new();
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        if entry.path().extension().is_some_and(|e| e == "log") {
            out += &format!(
                "--- {}\n{}",
                entry.path().display(),
                std::fs::read_to_string(entry.path()).unwrap_or_default()
            );
        }
    }
    out
}
