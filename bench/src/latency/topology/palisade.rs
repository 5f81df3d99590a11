//! The Palisade path: client → outbound palisade-proxy → mTLS → inbound
//! palisade-proxy → server, both proxies in explicit mode (proxy/README.md),
//! attesting to the bench's control plane with join tokens, and enforcing a
//! policy whose one HTTP rule allows the client's `POST /echo` (plus the TCP
//! sink's port at L4). Runs only when asked for (`--palisade`), once per
//! `--baseline` mode.

use std::path::Path;
use std::time::Duration;

use palisadectl::local::{ControlPlane, Process, Protocol, Sidecar, SidecarSpec};

use super::{sidecar_pair, BaselineRun, PathKind, RunningPath, Setup, StartError};
use crate::latency::certs::{CLIENT_ID, SERVER_ID};
use crate::latency::client::{ClientHttp, ECHO_PATH};

pub fn start(baseline: BaselineRun, setup: &Setup<'_>) -> Result<RunningPath, StartError> {
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
    let policy = setup.work_dir.join("palisade-policy.yaml");
    std::fs::write(
        &policy,
        policy_yaml(setup.backends.http.port(), setup.backends.tcp.port()),
    )
    .map_err(anyhow::Error::from)?;

    // Protocols are fixed rather than detected: the app speaks the load
    // client's HTTP version to the outbound side, HTTP/1.1 comes out inbound.
    let name = |side: &str| match baseline {
        BaselineRun::Off => format!("palisade-{side}"),
        _ => format!("{}-{side}", baseline.label().replace('+', "-")),
    };
    let mut inbound = spec(cp, &name("inbound"), SERVER_ID, &policy)?;
    inbound.extra_yaml = baseline_yaml(baseline, &setup.work_dir.join(name("inbound")));
    let in_http = inbound.inbound(setup.backends.http, false)?;
    let in_tcp = inbound.inbound(setup.backends.tcp, false)?;
    inbound.inbound[0].protocol = Protocol::Http1;
    inbound.inbound[1].protocol = Protocol::Opaque;
    let mut outbound = spec(cp, &name("outbound"), CLIENT_ID, &policy)?;
    outbound.extra_yaml = baseline_yaml(baseline, &setup.work_dir.join(name("outbound")));
    let out_http = outbound.route(in_http, SERVER_ID)?;
    let out_tcp = outbound.route(in_tcp, SERVER_ID)?;
    outbound.routes[0].protocol = match setup.http {
        ClientHttp::Http1 => Protocol::Http1,
        ClientHttp::Http2 => Protocol::Http2,
    };
    outbound.routes[1].protocol = Protocol::Opaque;

    let admins = [outbound.admin, inbound.admin];
    let server = start_ready(bin, inbound, setup)?;
    let client = start_ready(bin, outbound, setup)?;
    let mut path = sidecar_pair(
        PathKind::Palisade,
        client,
        [out_http, out_tcp],
        server,
        [in_http, in_tcp],
    )?;
    path.label = baseline.label();
    path.baseline = baseline;
    path.admins = admins.to_vec();
    Ok(path)
}

/// The `baseline:` section for a run, its file under `<base>.baseline.json`.
/// Monitor starts in learn with `auto_promote`: a workload with no new flow
/// for `stable_after` (1s here, 10m by default) moves to monitor by itself,
/// so the warm-up's flows are the known ones. The bucket and the rate-spike
/// settings stay at their defaults, so the per-flow work is production's.
fn baseline_yaml(baseline: BaselineRun, base: &Path) -> String {
    let file = base.with_extension("baseline.json");
    match baseline {
        BaselineRun::Off => String::new(),
        BaselineRun::Learn => format!("baseline:\n  mode: learn\n  path: {}\n", file.display()),
        BaselineRun::Monitor => format!(
            "baseline:\n  mode: learn\n  auto_promote: true\n  stable_after: 1s\n  path: {}\n",
            file.display()
        ),
    }
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

/// A sidecar enforcing `policy`, attesting as `id` with a fresh single-use join token.
fn spec(cp: &ControlPlane, name: &str, id: &str, policy: &Path) -> anyhow::Result<SidecarSpec> {
    let token = cp.join_token(id, "10m")?;
    let mut spec = SidecarSpec::new(name, cp.addr(), &cp.bundle_path(), &token)?;
    spec.policy = Some(policy.to_owned());
    spec.log_filter = Some("warn".to_owned());
    Ok(spec)
}

/// Start it and wait until it holds its SVID, so the first trial is not a
/// sidecar still fetching one.
fn start_ready(bin: &Path, spec: SidecarSpec, setup: &Setup<'_>) -> anyhow::Result<Process> {
    let mut sidecar = Sidecar::start(bin, spec, setup.work_dir)?;
    sidecar.wait_ready(Duration::from_secs(20))?;
    Ok(sidecar.child)
}
