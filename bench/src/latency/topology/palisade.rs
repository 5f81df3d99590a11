//! The Palisade path: client → outbound palisade-proxy → mTLS → inbound
//! palisade-proxy → server, both proxies in explicit mode (proxy/README.md),
//! attesting to the bench's control plane with join tokens, and enforcing a
//! policy whose one HTTP rule allows the client's `POST /echo` (plus the TCP
//! sink's port at L4). Runs only when asked for (`--palisade`).

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;

use super::{sidecar_pair, PathKind, RunningPath, Setup, StartError};
use crate::latency::certs::{CLIENT_ID, SERVER_ID};
use crate::latency::child::{free_addr, ProxyProcess};
use crate::latency::client::ECHO_PATH;
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

    let policy = setup.work_dir.join("palisade-policy.yaml");
    std::fs::write(
        &policy,
        policy_yaml(setup.backends.http.port(), setup.backends.tcp.port()),
    )
    .map_err(anyhow::Error::from)?;
    // Protocols are fixed rather than detected, as Envoy's listeners are.
    let inbound = format!(
        "mode: explicit\n\
         inbound:\n  ports:\n\
         \x20   - {{ listen: \"{in_http}\", app: \"{}\", protocol: http1 }}\n\
         \x20   - {{ listen: \"{in_tcp}\", app: \"{}\", protocol: opaque }}\n{}",
        setup.backends.http,
        setup.backends.tcp,
        common(cp, SERVER_ID, &policy)?,
    );
    let outbound = format!(
        "mode: explicit\n\
         outbound:\n  routes:\n\
         \x20   - {{ listen: \"{out_http}\", destination: \"{in_http}\", identity: \"{SERVER_ID}\", protocol: http1 }}\n\
         \x20   - {{ listen: \"{out_tcp}\", destination: \"{in_tcp}\", identity: \"{SERVER_ID}\", protocol: opaque }}\n{}",
        common(cp, CLIENT_ID, &policy)?,
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

/// The server's ingress: the client may `POST /echo` on the echo port, and
/// connect to the sink port. Nothing selects the client, so its egress falls
/// to the default (any authenticated peer), as Envoy's client side has no RBAC.
fn policy_yaml(http_port: u16, tcp_port: u16) -> String {
    format!(
        "apiVersion: palisade.dev/v1alpha1\n\
         kind: SegmentationPolicy\n\
         metadata: {{name: bench-server, namespace: bench}}\n\
         spec:\n\
         \x20 targets:\n    - identity: {SERVER_ID}\n\
         \x20 ingress:\n\
         \x20   - name: client-echo\n      action: allow\n\
         \x20     from:\n        - identity: {CLIENT_ID}\n\
         \x20     ports: [{http_port}]\n\
         \x20     http:\n        - methods: [POST]\n          paths: [\"{ECHO_PATH}\"]\n\
         \x20   - name: client-sink\n      action: allow\n\
         \x20     from:\n        - identity: {CLIENT_ID}\n\
         \x20     ports: [{tcp_port}]\n"
    )
}

/// Admin listener, policy file and identity (a fresh single-use join token for `id`).
fn common(cp: &ControlPlane, id: &str, policy: &Path) -> anyhow::Result<String> {
    let admin: SocketAddr = free_addr()?;
    Ok(format!(
        "admin:\n  bind: \"{admin}\"\n\
         policy:\n  path: \"{}\"\n\
         identity:\n  control_plane: \"{}\"\n  trust_domain: cluster.local\n\
         \x20 bootstrap_bundle: \"{}\"\n  join_token: \"{}\"\n",
        policy.display(),
        cp.addr,
        cp.bundle().display(),
        cp.join_token(id)?,
    ))
}

fn spawn(bin: &Path, name: &str, config: &str, setup: &Setup<'_>) -> anyhow::Result<ProxyProcess> {
    let path = setup.work_dir.join(format!("{name}.yaml"));
    std::fs::write(&path, config)?;
    let mut cmd = Command::new(bin);
    cmd.arg("--config").arg(&path).env("PALISADE_LOG", "warn");
    ProxyProcess::spawn(name, cmd, setup.work_dir)
}
