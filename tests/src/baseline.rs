//! Learned-baseline helpers shared by the baseline tests: B's policy and
//! `baseline:` settings, the learning traffic, and readers of the baseline
//! file, the findings and `/config_dump`.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use palisade_policy::baseline::Snapshot;
use serde_json::Value;

use crate::eventually;
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
