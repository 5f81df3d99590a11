//! Policy denials as security events from a real sidecar: a denied
//! connection is one OCSF Network Activity line, a denied HTTP request one
//! HTTP Activity line, each naming the policy and rule; a reload that closes
//! live connections is one Network Activity `Close` line; allowed traffic
//! raises none.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use palisade_tests::cp::ControlPlane;
use palisade_tests::eventually;
use palisade_tests::http::{default_ingress, HttpMesh};
use palisade_tests::policy::{policy_doc, spec, use_policy, write_atomic, PolicyFile};
use palisade_tests::proxy::{echo_roundtrip, http, Mesh, Proxy, CLIENT_ID, SERVER_ID};
use serde_json::Value;

const INTRUDER_ID: &str = "spiffe://cluster.local/ns/demo/sa/intruder";

/// `events:` with one file sink at `path`.
fn file_sink(path: &Path) -> String {
    format!(
        "events:\n  sinks:\n    - type: file\n      path: {}\n",
        path.display()
    )
}

fn lines(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).expect("each line is one JSON event"))
        .collect()
}

/// Waits for the first event line, then returns every line written.
fn events_after_one(path: &Path) -> Vec<Value> {
    eventually("an event line", Duration::from_secs(10), || {
        Some(lines(path)).filter(|l| !l.is_empty())
    })
}

fn events_file() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("events.jsonl");
    (dir, path)
}

#[test]
fn a_denied_connection_is_one_network_activity_event_naming_the_rule() {
    let (_dir, events) = events_file();
    let body = format!(
        "  ingress:\n    - name: no-intruder\n      action: deny\n      from: [{{identity: {INTRUDER_ID}}}]\n    \
         - name: from-client\n      action: allow\n      from: [{{identity: {CLIENT_ID}}}]\n"
    );
    let policy = PolicyFile::new(&policy_doc("server", SERVER_ID, &body));
    let p = Mesh::start(ControlPlane::start(), |b| {
        use_policy(b, &policy.path, "");
        b.extra_yaml += &file_sink(&events);
    });
    let mut c = spec(&p.cp, "intruder", INTRUDER_ID);
    let c_out = c.route(p.b_in, SERVER_ID);
    let c = Proxy::start_ready(c);

    // Allowed first: the sink is in order, so a line for it would come first.
    assert_eq!(echo_roundtrip(p.a_out, b"allowed").unwrap(), b"allowed");
    let denied = echo_roundtrip(c_out, b"let me in");
    assert!(denied.map(|b| b.is_empty()).unwrap_or(true));

    let all = events_after_one(&events);
    assert_eq!(
        all.len(),
        1,
        "one denial, no event for the allowed connection: {all:?}"
    );
    let e = &all[0];
    assert_eq!(e["class_uid"], 4001);
    assert_eq!(e["action_id"], 2);
    assert_eq!(e["disposition_id"], 2);
    assert_eq!(e["policy"]["name"], "demo/server");
    assert_eq!(e["firewall_rule"]["name"], "no-intruder");
    assert_eq!(e["firewall_rule"]["uid"], "demo/server/no-intruder");
    assert_eq!(e["src_endpoint"]["uid"], INTRUDER_ID);
    assert_eq!(e["dst_endpoint"]["uid"], SERVER_ID);
    assert_eq!(e["dst_endpoint"]["port"], p.echo.addr.port());
    assert_eq!(e["connection_info"]["direction"], "Inbound");
    assert_eq!(
        p.b.metric("events_emitted_total", &[("kind", "denied")]),
        1.0
    );
    drop(c);
}

#[test]
fn a_denied_http_request_is_one_http_activity_event_and_allowed_ones_none() {
    let (_dir, events) = events_file();
    let mesh = HttpMesh::start(
        &default_ingress(),
        |_| {},
        |b| b.extra_yaml += &file_sink(&events),
    );
    assert_eq!(http(mesh.a_out, "GET", "/v1/items").0, 200);
    assert_eq!(http(mesh.a_out, "GET", "/v1/items/2").0, 200);
    assert_eq!(http(mesh.a_out, "DELETE", "/v1/items").0, 403);

    let all = events_after_one(&events);
    assert_eq!(
        all.len(),
        1,
        "one denial, none for allowed requests: {all:?}"
    );
    let e = &all[0];
    assert_eq!(e["class_uid"], 4002);
    assert_eq!(e["activity_id"], 2, "DELETE");
    assert_eq!(e["http_request"]["http_method"], "DELETE");
    assert_eq!(e["http_request"]["url"]["path"], "/v1/items");
    // No rule matched in the selecting policy: its default denied.
    assert_eq!(e["policy"]["name"], "demo/server");
    assert_eq!(e["firewall_rule"]["uid"], "demo/server");
    assert_eq!(e["unmapped"]["palisade"]["http_status"], 403);
    assert_eq!(e["src_endpoint"]["uid"], CLIENT_ID);
    assert_eq!(e["dst_endpoint"]["uid"], SERVER_ID);
}

/// An opaque connection through A to B's echo, proven open by one exchange.
fn live_connection(entry: std::net::SocketAddr) -> TcpStream {
    let mut s = TcpStream::connect(entry).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"ping").unwrap();
    let mut back = [0u8; 4];
    s.read_exact(&mut back).unwrap();
    assert_eq!(&back, b"ping");
    s
}

#[test]
fn a_reload_that_closes_live_connections_is_one_network_activity_close_event() {
    let (_dir, events) = events_file();
    let rule = |name: &str, action: &str| {
        let body = format!(
            "  ingress:\n    - name: {name}\n      action: {action}\n      from: [{{identity: {CLIENT_ID}}}]\n"
        );
        policy_doc("server", SERVER_ID, &body)
    };
    let policy = PolicyFile::new(&rule("from-client", "allow"));
    let p = Mesh::start(ControlPlane::start(), |b| {
        use_policy(b, &policy.path, "  debounce: 10ms\n");
        b.extra_yaml += &file_sink(&events);
    });
    let mut live = [live_connection(p.a_out), live_connection(p.a_out)];

    write_atomic(&policy.path, &rule("lockdown", "deny"));
    for s in &mut live {
        let mut buf = [0u8; 4];
        let closed = match s.read(&mut buf) {
            Ok(n) => n == 0,
            Err(e) => e.kind() != std::io::ErrorKind::WouldBlock,
        };
        assert!(closed, "the reload closes each live connection");
    }
    eventually("both closings counted", Duration::from_secs(10), || {
        (p.b.metric("tcp_authz_terminate_total", &[("rule", "lockdown")]) == 2.0).then_some(())
    });
    // The same flow twice: one event, the other counted as a duplicate.
    let all = events_after_one(&events);
    assert_eq!(
        p.b.metric("events_emitted_total", &[("kind", "denied")]),
        1.0
    );
    assert_eq!(
        p.b.metric(
            "events_suppressed_total",
            &[("kind", "denied"), ("reason", "duplicate")]
        ),
        1.0
    );
    assert_eq!(all.len(), 1, "{all:?}");
    let e = &all[0];
    assert_eq!(e["class_uid"], 4001);
    assert_eq!(
        (e["activity_id"].as_u64(), e["activity_name"].as_str()),
        (Some(2), Some("Close"))
    );
    assert_eq!(
        (e["action_id"].as_u64(), e["disposition_id"].as_u64()),
        (Some(2), Some(2))
    );
    assert_eq!(e["firewall_rule"]["uid"], "demo/server/lockdown");
    assert_eq!(e["policy"]["name"], "demo/server");
    assert_eq!(e["unmapped"]["palisade"]["reason"], "policy_reload");
    assert_eq!(e["src_endpoint"]["uid"], CLIENT_ID);
    assert_eq!(e["dst_endpoint"]["uid"], SERVER_ID);
    assert_eq!(e["dst_endpoint"]["port"], p.echo.addr.port());

    // A connection refused as it comes is its own event, not a duplicate.
    let refused = echo_roundtrip(p.a_out, b"again");
    assert!(refused.map(|b| b.is_empty()).unwrap_or(true));
    let all = eventually("the refusal's event", Duration::from_secs(10), || {
        Some(lines(&events)).filter(|l| l.len() == 2)
    });
    assert_eq!(all[1]["activity_id"], 5, "Refuse");
    assert!(all[1]["unmapped"]["palisade"].get("reason").is_none());
}
