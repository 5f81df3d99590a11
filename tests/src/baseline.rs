//! Learned-baseline helpers shared by the baseline tests: B's policy and
//! `baseline:` settings, a mesh that learns, the learning traffic, baseline
//! files recorded through the model the proxy records with, and readers of
//! the baseline file, the findings and `/config_dump`.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use palisade_policy::baseline::{
    Baseline, BaselineMode, BaselineSettings, FlowRef, Protocol, Snapshot,
};
use palisade_policy::{Direction, HttpInfo, Peer, SpiffeId};
use serde_json::Value;

use crate::eventually;
use crate::http::{HttpApp, HttpMesh};
use crate::proxy::{http, Proxy, CLIENT_ID};

/// A second caller the ingress below allows.
pub const OTHER_ID: &str = "spiffe://cluster.local/ns/demo/sa/other";

/// Ingress: `client` and `other` may GET under `/v1/*` on `app_port`;
/// `client` may also open opaque connections on `echo_port`. Anything else
/// is denied.
pub fn ingress(app_port: u16, echo_port: u16) -> String {
    format!(
        "  ingress:\n    - name: reads\n      action: allow\n      \
         from: [{{identity: {CLIENT_ID}}}, {{identity: {OTHER_ID}}}]\n      ports: [{app_port}]\n      \
         http:\n        - {{methods: [GET], paths: [\"/v1/*\"]}}\n    \
         - name: echo\n      action: allow\n      from: [{{identity: {CLIENT_ID}}}]\n      \
         ports: [{echo_port}]\n"
    )
}

/// B's `baseline:` and `events:` sections: short buckets, a file sink.
pub fn baseline_yaml(mode: &str, state: &Path, extra: &str) -> String {
    baseline_yaml_every(mode, state, "100ms", extra)
}

pub fn baseline_yaml_every(mode: &str, state: &Path, persist: &str, extra: &str) -> String {
    format!(
        "baseline:\n  mode: {mode}\n  path: {}\n  persist_interval: {persist}\n  bucket: 100ms\n  \
         stable_after: 1500ms\n  rate_spike: {{k: 3, floor: 5, window: 2, warmup: 3}}\n{extra}\
         events:\n  sinks: [{{type: file, path: {}}}]\n",
        state.join("baseline.json").display(),
        state.join("events.jsonl").display(),
    )
}

/// A+B in front of a fresh app, B under `ingress(app port, -)` with
/// `baseline_yaml(mode, state, extra)`.
pub fn mesh(mode: &str, state: &Path, extra: &str) -> HttpMesh {
    let yaml = baseline_yaml(mode, state, extra);
    let app = HttpApp::start();
    let ports = ingress(app.addr.port(), 1);
    HttpMesh::with_app(app, &ports, |_| {}, |b| b.extra_yaml += &yaml)
}

/// One connection or request a sidecar saw; peers are SPIFFE IDs or IP
/// addresses.
#[derive(Debug, Clone, Copy)]
pub enum Seen<'a> {
    /// An opaque connection: direction, peer, port.
    Tcp(Direction, &'a str, u16),
    /// An inbound HTTP connection, before its requests: peer, port.
    HttpConn(&'a str, u16),
    /// An inbound request: peer, port, method, path.
    Http(&'a str, u16, &'a str, &'a str),
}

/// Records `seen` as `identity`'s sidecar would in learn mode, from `t0`
/// (unix ms) a second apart, and writes the snapshot taken an hour after
/// `t0` to `dir/file`, as the proxy writes its baseline file.
pub fn record(dir: &Path, file: &str, identity: &str, seen: &[Seen], t0: u64) -> PathBuf {
    let b = Baseline::new(
        SpiffeId::parse(identity).unwrap(),
        BaselineSettings::default(),
    );
    // An address, else an identity (owned here: `Peer` borrows it).
    let peers: Vec<Result<IpAddr, SpiffeId>> = seen
        .iter()
        .map(|s| {
            let (Seen::Tcp(_, p, _) | Seen::HttpConn(p, _) | Seen::Http(p, ..)) = *s;
            p.parse::<IpAddr>()
                .map_err(|_| SpiffeId::parse(p).expect("a SPIFFE ID or an IP address"))
        })
        .collect();
    for (i, (s, p)) in seen.iter().zip(&peers).enumerate() {
        let peer = match p {
            Ok(ip) => Peer::Address(*ip),
            Err(id) => Peer::Identity(id),
        };
        let conn = |direction, port, protocol| FlowRef {
            direction,
            peer,
            port,
            protocol,
            http: None,
        };
        let flow = match *s {
            Seen::Tcp(direction, _, port) => conn(direction, port, Protocol::Opaque),
            Seen::HttpConn(_, port) => conn(Direction::Ingress, port, Protocol::Http),
            Seen::Http(_, port, method, path) => FlowRef {
                http: Some(HttpInfo {
                    method,
                    path,
                    host: None,
                }),
                ..conn(Direction::Ingress, port, Protocol::Http)
            },
        };
        b.observe(&flow, BaselineMode::Learn, t0 + i as u64 * 1000);
    }
    let path = dir.join(file);
    std::fs::write(&path, b.snapshot(t0 + 3_600_000).to_json()).unwrap();
    path
}

/// The baseline file as the proxy last wrote it.
pub fn snapshot(state: &Path) -> Option<Snapshot> {
    let bytes = std::fs::read(state.join("baseline.json")).ok()?;
    Some(Snapshot::from_json(&bytes, 20_000).expect("the proxy writes a valid baseline"))
}

/// Each learned flow as `peer port protocol [method path]`.
pub fn flows(s: &Snapshot) -> Vec<String> {
    let mut out: Vec<String> = s
        .entries
        .iter()
        .map(|e| {
            let f = &e.flow;
            let route = f
                .route
                .as_ref()
                .map(|r| format!(" {} {}", r.method, r.template))
                .unwrap_or_default();
            format!("{} {} {}{route}", f.peer, f.port, f.protocol.as_str())
        })
        .collect();
    out.sort();
    out
}

/// The findings in the events file, by their `finding_info.types[0]`.
pub fn findings(state: &Path, kind: &str) -> Vec<Value> {
    let text = std::fs::read_to_string(state.join("events.jsonl")).unwrap_or_default();
    text.lines()
        .map(|l| serde_json::from_str::<Value>(l).expect("one JSON event a line"))
        .filter(|e| e["finding_info"]["types"][0] == kind)
        .collect()
}

pub fn wait_findings(state: &Path, kind: &str, n: usize) -> Vec<Value> {
    eventually(
        &format!("{n} {kind} finding(s)"),
        Duration::from_secs(10),
        || Some(findings(state, kind)).filter(|f| f.len() >= n),
    )
}

pub fn baseline_dump(p: &Proxy) -> Value {
    p.config_dump()["baseline"].clone()
}

/// The learning traffic: two users, an order with a hex ID, a word route,
/// and a request the policy denies.
pub fn learn_traffic(a_out: SocketAddr) {
    for path in [
        "/v1/users/123",
        "/v1/users/456",
        "/v1/orders/abc12345def",
        "/v1/api",
    ] {
        assert_eq!(http(a_out, "GET", path).0, 200, "GET {path}");
    }
    assert_eq!(http(a_out, "GET", "/v2/secret").0, 403, "policy denies /v2");
    assert_eq!(
        http(a_out, "POST", "/v1/users/1").0,
        403,
        "policy denies POST"
    );
}
