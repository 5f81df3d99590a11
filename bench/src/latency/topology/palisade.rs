//! The Palisade path: client → outbound palisade-proxy → mTLS → inbound
//! palisade-proxy → server, both proxies in explicit mode (proxy/README.md) and
//! attesting to the bench's control plane with join tokens. Runs only when asked
//! for (`--palisade`) and the binary exists.

use std::net::SocketAddr;
use std::process::Command;

use super::{sidecar_pair, PathKind, RunningPath, Setup, StartError};
use crate::latency::certs::{CLIENT_ID, SERVER_ID};
use crate::latency::child::{free_addr, ProxyProcess};
use crate::latency::control_plane::ControlPlane;

pub fn start(setup: &Setup<'_>) -> Result<RunningPath, StartError> {
    if !setup.tools.palisade_enabled {
        return Err(StartError::Unavailable(
            "not requested: pass --palisade to include it".to_owned(),
        ));
    }
    let Some(bin) = &setup.tools.palisade else {
        return Err(StartError::Unavailable(
            "palisade-proxy binary not found: build it with \
             `cargo build --release -p palisade-proxy`, or pass --palisade-bin"
                .to_owned(),
        ));
    };
    let Some(cp) = setup.control_plane else {
        return Err(StartError::Unavailable(
            "palisade-proxy gets its SVID from the control plane, which is not running: \
             build palisade-control-plane and palisadectl, and leave --certs at auto"
                .to_owned(),
        ));
    };
    let (out_http, out_tcp, in_http, in_tcp) =
        (free_addr()?, free_addr()?, free_addr()?, free_addr()?);

    let inbound = format!(
        "mode: explicit\n\
         inbound:\n  ports:\n\
         \x20   - {{ listen: \"{in_http}\", app: \"{}\" }}\n\
         \x20   - {{ listen: \"{in_tcp}\", app: \"{}\" }}\n{}",
        setup.backends.http,
        setup.backends.tcp,
        common(cp, SERVER_ID)?,
    );
    let outbound = format!(
        "mode: explicit\n\
         outbound:\n  routes:\n\
         \x20   - {{ listen: \"{out_http}\", destination: \"{in_http}\", identity: \"{SERVER_ID}\" }}\n\
         \x20   - {{ listen: \"{out_tcp}\", destination: \"{in_tcp}\", identity: \"{SERVER_ID}\" }}\n{}",
        common(cp, CLIENT_ID)?,
    );

    let server = spawn(bin, "palisade-inbound", &inbound, setup)?;
    let client = spawn(bin, "palisade-outbound", &outbound, setup)?;
    Ok(sidecar_pair(
        PathKind::Palisade,
        client,
        [out_http, out_tcp],
        server,
        [in_http, in_tcp],
    )?)
}

/// Admin listener and identity: a fresh single-use join token for `id`.
fn common(cp: &ControlPlane, id: &str) -> anyhow::Result<String> {
    let admin: SocketAddr = free_addr()?;
    Ok(format!(
        "admin:\n  bind: \"{admin}\"\n\
         identity:\n  control_plane: \"{}\"\n  trust_domain: cluster.local\n\
         \x20 bootstrap_bundle: \"{}\"\n  join_token: \"{}\"\n",
        cp.addr,
        cp.bundle().display(),
        cp.join_token(id)?,
    ))
}

fn spawn(
    bin: &std::path::Path,
    name: &str,
    config: &str,
    setup: &Setup<'_>,
) -> anyhow::Result<ProxyProcess> {
    let path = setup.work_dir.join(format!("{name}.yaml"));
    std::fs::write(&path, config)?;
    let mut cmd = Command::new(bin);
    cmd.arg("--config").arg(&path).env("PALISADE_LOG", "warn");
    ProxyProcess::spawn(name, cmd, setup.work_dir)
}
