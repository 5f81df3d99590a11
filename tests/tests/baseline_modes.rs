//! Learned baselines in a real sidecar: learn records exactly the flows
//! policy allowed (path templates included), the status moves on and
//! auto-promotion switches to monitor, monitor raises one finding per
//! deviation while traffic flows, and protect, after a restart that keeps
//! the baseline, blocks or throttles deviations while learned flows pass.

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use palisade_tests::baseline::{
    baseline_dump, baseline_yaml, baseline_yaml_every, findings, flows, ingress, learn_traffic,
    mesh, snapshot, wait_findings, OTHER_ID,
};
use palisade_tests::eventually;
use palisade_tests::http::{runtime, Client, HttpApp, HttpMesh};
use palisade_tests::policy::spec;
use palisade_tests::proxy::{echo_roundtrip, http, Echo, Proxy, ProxySpec, CLIENT_ID, SERVER_ID};
use serde_json::Value;

/// Requests on one kept-alive connection to `addr` for `how_long`; the
/// statuses and `retry-after` values seen.
fn burst(addr: SocketAddr, path: &str, how_long: Duration) -> (Vec<u16>, Vec<String>) {
    runtime().block_on(async {
        let mut c = Client::http1(addr).await;
        let (mut statuses, mut retry) = (Vec::new(), Vec::new());
        let start = Instant::now();
        while start.elapsed() < how_long {
            let a = c.send("GET", path, &[], "").await.expect("an answer");
            if let Some(v) = a.headers.get("retry-after") {
                retry.push(v.to_str().unwrap().to_owned());
            }
            statuses.push(a.status);
        }
        (statuses, retry)
    })
}

/// A sidecar for `id` with one route to B's inbound listener.
fn caller(m: &HttpMesh, name: &str, id: &str) -> (Proxy, SocketAddr) {
    let mut s: ProxySpec = spec(&m.cp, name, id);
    let out = s.route(m.b_in, SERVER_ID);
    (Proxy::start_ready(s), out)
}

#[test]
fn learn_records_exactly_the_allowed_flows_with_templates_and_never_a_denied_one() {
    let (state, client_state) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let yaml = baseline_yaml("learn", state.path(), "");
    let client_yaml = baseline_yaml("learn", client_state.path(), "");
    let app = HttpApp::start();
    let ports = ingress(app.addr.port(), 1);
    let m = HttpMesh::with_app(
        app,
        &ports,
        |a| a.extra_yaml += &client_yaml,
        |b| b.extra_yaml += &yaml,
    );
    assert_eq!(baseline_dump(&m.b)["status"], "learning");
    assert_eq!(baseline_dump(&m.b)["entries"], 0);

    learn_traffic(m.a_out);
    let port = m.app.addr.port();
    let want = vec![
        format!("{CLIENT_ID} {port} http"),
        format!("{CLIENT_ID} {port} http GET /v1/api"),
        format!("{CLIENT_ID} {port} http GET /v1/orders/{{id}}"),
        format!("{CLIENT_ID} {port} http GET /v1/users/{{id}}"),
    ];
    let snap = eventually("the baseline file", Duration::from_secs(10), || {
        snapshot(state.path()).filter(|s| s.entries.len() == want.len())
    });
    assert_eq!(flows(&snap), want);
    assert_eq!(snap.identity.as_str(), SERVER_ID);
    let users = snap
        .entries
        .iter()
        .find(|e| {
            e.flow
                .route
                .as_ref()
                .is_some_and(|r| r.template == "/v1/users/{id}")
        })
        .unwrap();
    assert_eq!(users.count, 2);

    let dump = baseline_dump(&m.b);
    assert_eq!(dump["mode"], "learn");
    assert_eq!(dump["entries"], 4);
    assert_eq!(m.b.metric("baseline_entries", &[]), 4.0);
    assert_eq!(
        m.b.metric("baseline_deviation_total", &[]),
        0.0,
        "learn reports nothing"
    );
    assert!(findings(state.path(), "baseline.new_route").is_empty());

    // The client's sidecar learns the same requests as egress, and not the
    // ones B's policy denied either: they were allowed on its side.
    let b_port = m.b_in.port();
    let server = SERVER_ID;
    let egress = eventually("the client's baseline", Duration::from_secs(10), || {
        snapshot(client_state.path()).filter(|s| s.entries.len() >= 4)
    });
    let got = flows(&egress);
    for want in [
        format!("{server} {b_port} http GET /v1/users/{{id}}"),
        format!("{server} {b_port} http GET /v2/secret"),
        format!("{server} {b_port} http POST /v1/users/{{id}}"),
    ] {
        assert!(got.contains(&want), "{want} in {got:?}");
    }
    assert!(egress
        .entries
        .iter()
        .all(|e| e.flow.direction == palisade_policy::Direction::Egress));
}

#[test]
fn status_stabilizes_then_auto_promotion_switches_learn_to_monitor() {
    let state = tempfile::tempdir().unwrap();
    let m = mesh("learn", state.path(), "  auto_promote: true\n");
    learn_traffic(m.a_out);
    eventually("stabilizing", Duration::from_secs(10), || {
        (baseline_dump(&m.b)["status"] == "stabilizing").then_some(())
    });
    assert_eq!(baseline_dump(&m.b)["mode"], "learn");
    eventually("stable and promoted", Duration::from_secs(10), || {
        let d = baseline_dump(&m.b);
        (d["status"] == "stable" && d["mode"] == "monitor").then_some(())
    });
    assert_eq!(m.b.metric("baseline_mode", &[("mode", "monitor")]), 1.0);
    assert_eq!(m.b.metric("baseline_status", &[("status", "stable")]), 1.0);
    // A new flow now is a deviation, not a lesson.
    assert_eq!(http(m.a_out, "GET", "/v1/brand-new").0, 200);
    wait_findings(state.path(), "baseline.new_route", 1);
    assert_eq!(baseline_dump(&m.b)["entries"], 4);
}

/// A request through A to B, retried while A reconnects to a restarted B.
fn status_after_restart(m: &HttpMesh, path: &str) -> u16 {
    eventually("B answers again", Duration::from_secs(10), || {
        Some(http(m.a_out, "GET", path).0).filter(|s| *s != 502 && *s != 503)
    })
}

#[test]
fn auto_promotion_survives_a_restart_until_an_explicit_mode_ends_it() {
    let state = tempfile::tempdir().unwrap();
    let mut m = mesh("learn", state.path(), "  auto_promote: true\n");
    learn_traffic(m.a_out);
    eventually("promotion to monitor", Duration::from_secs(10), || {
        (baseline_dump(&m.b)["mode"] == "monitor").then_some(())
    });
    let at = baseline_dump(&m.b)["promoted_at"]
        .as_u64()
        .expect("promoted_at");
    eventually("the promotion in the file", Duration::from_secs(10), || {
        snapshot(state.path()).filter(|s| s.promoted_at == Some(at))
    });

    // Restarted with a `stable_after` the restored baseline is far from:
    // only the file can make this workload `monitor`.
    m.b.restart(m.cp.join_token(SERVER_ID), |b| {
        b.extra_yaml = b
            .extra_yaml
            .replace("stable_after: 1500ms", "stable_after: 1h")
    });
    let d = eventually("the restored baseline", Duration::from_secs(10), || {
        let d = baseline_dump(&m.b);
        (d["entries"] == 4 && d["promoted_at"] != Value::Null).then_some(d)
    });
    assert_eq!(d["mode"], "monitor", "{d}");
    assert_eq!(d["promoted_at"], at, "{d}");
    assert_ne!(d["status"], "stable", "{d}");
    assert_eq!(m.b.metric("baseline_mode", &[("mode", "monitor")]), 1.0);
    assert_eq!(status_after_restart(&m, "/v1/never/seen"), 200);
    let f = wait_findings(state.path(), "baseline.new_route", 1);
    assert_eq!(f[0]["unmapped"]["palisade"]["mode"], "monitor");
    assert_eq!(baseline_dump(&m.b)["entries"], 4, "monitor learns nothing");

    // An explicit mode wins and ends the promotion, in the file too.
    m.b.restart(m.cp.join_token(SERVER_ID), |b| {
        b.extra_yaml = b.extra_yaml.replace("mode: learn", "mode: protect")
    });
    assert_eq!(status_after_restart(&m, "/v1/users/77"), 200, "learned");
    assert_eq!(http(m.a_out, "GET", "/v1/admin/x").0, 403, "protect blocks");
    eventually("the promotion dropped", Duration::from_secs(10), || {
        (baseline_dump(&m.b)["promoted_at"] == Value::Null).then_some(())
    });
    assert_eq!(baseline_dump(&m.b)["mode"], "protect");
    eventually(
        "the promotion gone from the file",
        Duration::from_secs(10),
        || snapshot(state.path()).filter(|s| s.promoted_at.is_none()),
    );

    // `learn` set again learns again.
    m.b.restart(m.cp.join_token(SERVER_ID), |b| {
        b.extra_yaml = b.extra_yaml.replace("mode: protect", "mode: learn")
    });
    assert_eq!(status_after_restart(&m, "/v1/fresh"), 200);
    let d = baseline_dump(&m.b);
    assert_eq!(
        (&d["mode"], &d["entries"]),
        (&"learn".into(), &5.into()),
        "{d}"
    );
}

#[test]
fn monitor_raises_one_finding_per_deviation_and_traffic_still_flows() {
    let state = tempfile::tempdir().unwrap();
    let echo = Echo::start();
    let yaml = baseline_yaml("learn", state.path(), "  auto_promote: true\n");
    let mut echo_in = None;
    let app = HttpApp::start();
    let ports = ingress(app.addr.port(), echo.addr.port());
    let m = HttpMesh::with_app(
        app,
        &ports,
        |_| {},
        |b| {
            b.extra_yaml += &yaml;
            echo_in = Some(b.inbound(echo.addr, false));
        },
    );
    let (other, other_out) = caller(&m, "proxy-c", OTHER_ID);
    let mut a2 = spec(&m.cp, "proxy-a2", CLIENT_ID);
    let echo_out = a2.route(echo_in.unwrap(), SERVER_ID);
    let a2 = Proxy::start_ready(a2);

    learn_traffic(m.a_out);
    eventually("promotion to monitor", Duration::from_secs(10), || {
        (baseline_dump(&m.b)["mode"] == "monitor").then_some(())
    });

    // New route, twice: one finding.
    for _ in 0..2 {
        assert_eq!(http(m.a_out, "GET", "/v1/never/seen").0, 200);
    }
    let f = wait_findings(state.path(), "baseline.new_route", 1);
    assert_eq!(f[0]["class_uid"], 2004);
    // New port, opaque: the echo still answers.
    let back = echo_roundtrip(echo_out, b"hello").unwrap_or_default();
    assert_eq!(back, b"hello", "{}\n{}", m.b.log(), a2.log());
    wait_findings(state.path(), "baseline.new_port", 1);
    // New peer on a learned route.
    assert_eq!(http(other_out, "GET", "/v1/users/7").0, 200);
    wait_findings(state.path(), "baseline.new_peer", 1);
    // A burst on a learned flow, well past the floor for two buckets.
    let (statuses, _) = burst(m.a_out, "/v1/users/9", Duration::from_millis(600));
    assert!(
        statuses.iter().all(|s| *s == 200),
        "monitor lets the burst through"
    );
    wait_findings(state.path(), "baseline.rate_spike", 1);

    std::thread::sleep(Duration::from_millis(300));
    for kind in ["new_route", "new_port", "new_peer", "rate_spike"] {
        let n = findings(state.path(), &format!("baseline.{kind}")).len();
        assert_eq!(n, 1, "exactly one baseline.{kind} finding");
        assert!(
            m.b.metric(
                "baseline_deviation_total",
                &[("kind", kind), ("action", "pass")]
            ) >= 1.0,
            "{kind} counted"
        );
    }
    assert_eq!(
        baseline_dump(&m.b)["entries"],
        4,
        "monitor learns no new flow"
    );
    drop((other, a2));
}

/// Learns in one mesh and keeps the file in `state`; the app's port stays
/// the same for the next mesh.
fn learned_baseline(state: &Path) -> u16 {
    let m = mesh("learn", state, "");
    learn_traffic(m.a_out);
    // Enough buckets for the flows' rates to warm up.
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(http(m.a_out, "GET", "/v1/users/1").0, 200);
    let (status, _) = m.b.post("/shutdown");
    assert_eq!(status, 200);
    eventually(
        "the baseline written on drain",
        Duration::from_secs(10),
        || snapshot(state).filter(|s| s.entries.iter().any(|e| e.count == 3)),
    );
    m.app.addr.port()
}

#[test]
fn protect_after_a_restart_blocks_and_throttles_deviations_while_learned_flows_pass() {
    let state = tempfile::tempdir().unwrap();
    let port = learned_baseline(state.path());
    let _ = std::fs::remove_file(state.path().join("events.jsonl"));

    let yaml = baseline_yaml("protect", state.path(), "");
    let app = HttpApp::bind(&format!("127.0.0.1:{port}"));
    let echo = Echo::start();
    let mut echo_in = None;
    let m = HttpMesh::with_app(
        app,
        &ingress(port, echo.addr.port()),
        |_| {},
        |b| {
            b.extra_yaml += &yaml;
            echo_in = Some(b.inbound(echo.addr, false));
        },
    );
    assert_eq!(baseline_dump(&m.b)["mode"], "protect");
    eventually("the restored baseline", Duration::from_secs(10), || {
        (baseline_dump(&m.b)["entries"] == 4).then_some(())
    });
    // Learned flows pass, on a fresh connection from a fresh client sidecar.
    for path in ["/v1/users/42", "/v1/orders/deadbeef99", "/v1/api"] {
        assert_eq!(http(m.a_out, "GET", path).0, 200, "learned {path}");
    }
    assert_eq!(baseline_dump(&m.b)["entries"], 4, "no flow was added");

    // A new route: 403 naming the baseline, and the app never sees it.
    let answer = runtime().block_on(async {
        let mut c = Client::http1(m.a_out).await;
        c.send("GET", "/v1/admin/export", &[], "").await.unwrap()
    });
    assert_eq!(answer.status, 403);
    assert_eq!(answer.headers["x-palisade-denied"], "baseline");
    assert!(!m.app.seen().iter().any(|p| p.contains("admin")));
    // A new port: the connection is closed without reaching the echo.
    let mut a2 = spec(&m.cp, "proxy-a2", CLIENT_ID);
    let echo_out = a2.route(echo_in.unwrap(), SERVER_ID);
    let _a2 = Proxy::start_ready(a2);
    let back = echo_roundtrip(echo_out, b"hello").unwrap_or_default();
    assert!(back.is_empty(), "a new port is closed in protect mode");
    assert_eq!(
        m.b.metric("tls_handshake_failures_total", &[("reason", "baseline")]),
        1.0
    );
    // A new peer, on a route learned from another: its connection is closed.
    let (_other, other_out) = caller(&m, "proxy-c", OTHER_ID);
    assert_eq!(http(other_out, "GET", "/v1/users/42").0, 502);
    // A burst on a learned flow: the excess gets 429 with retry-after.
    let (statuses, retry) = burst(m.a_out, "/v1/users/5", Duration::from_millis(600));
    assert!(statuses.contains(&429), "{statuses:?}");
    assert!(
        statuses.iter().all(|s| *s == 200 || *s == 429),
        "{statuses:?}"
    );
    assert!(retry.iter().all(|r| r == "1"), "{retry:?}");
    // Learned flows keep passing.
    std::thread::sleep(Duration::from_millis(300));
    for path in ["/v1/orders/deadbeef99", "/v1/api"] {
        assert_eq!(http(m.a_out, "GET", path).0, 200, "learned {path}");
    }
    wait_findings(state.path(), "baseline.new_route", 1);
    wait_findings(state.path(), "baseline.new_port", 1);
    wait_findings(state.path(), "baseline.new_peer", 1);
    let spike = wait_findings(state.path(), "baseline.rate_spike", 1);
    assert_eq!(
        m.b.metric("baseline_deviation_total", &[("action", "block")]),
        3.0
    );
    assert!(
        m.b.metric(
            "baseline_deviation_total",
            &[("kind", "rate_spike"), ("action", "throttle")]
        ) >= 1.0
    );
    assert_eq!(spike[0]["class_uid"], 2004);
}

#[test]
fn flows_past_max_entries_are_counted_not_learned() {
    let state = tempfile::tempdir().unwrap();
    let m = mesh("learn", state.path(), "  max_entries: 2\n");
    learn_traffic(m.a_out);
    assert_eq!(baseline_dump(&m.b)["entries"], 2);
    assert_eq!(m.b.metric("baseline_entries", &[]), 2.0);
    // The connection and users/{id} fit; orders and api do not.
    assert_eq!(m.b.metric("baseline_overflow_total", &[]), 2.0);
    assert_eq!(baseline_dump(&m.b)["overflow"], 2);
}

#[test]
fn the_baseline_is_written_on_drain() {
    let state = tempfile::tempdir().unwrap();
    let yaml = baseline_yaml_every("learn", state.path(), "1h", "");
    let app = HttpApp::start();
    let ports = ingress(app.addr.port(), 1);
    let m = HttpMesh::with_app(app, &ports, |_| {}, |b| b.extra_yaml += &yaml);
    learn_traffic(m.a_out);
    assert!(snapshot(state.path()).is_none(), "not before the interval");
    assert_eq!(m.b.post("/shutdown").0, 200);
    let snap = eventually(
        "the baseline written on drain",
        Duration::from_secs(10),
        || snapshot(state.path()),
    );
    assert_eq!(snap.entries.len(), 4);
}

#[test]
fn a_corrupt_baseline_file_is_kept_aside_counted_and_learning_starts_afresh() {
    let state = tempfile::tempdir().unwrap();
    std::fs::write(
        state.path().join("baseline.json"),
        "{\"version\": 1, \"entr",
    )
    .unwrap();
    let m = mesh("learn", state.path(), "");
    eventually(
        "the failed restore counted",
        Duration::from_secs(10),
        || {
            let n =
                m.b.metric("baseline_file_failures_total", &[("operation", "restore")]);
            (n == 1.0).then_some(())
        },
    );
    assert!(
        m.b.log().contains("the baseline file is corrupt"),
        "{}",
        m.b.log()
    );
    let aside = std::fs::read_to_string(state.path().join("baseline.json.corrupt")).unwrap();
    assert_eq!(aside, "{\"version\": 1, \"entr");
    learn_traffic(m.a_out);
    let snap = eventually("a fresh baseline file", Duration::from_secs(10), || {
        snapshot(state.path()).filter(|s| s.entries.len() == 4)
    });
    assert_eq!(snap.entries.len(), 4);
}

#[test]
fn a_policy_sets_the_baseline_mode_of_its_targets_over_the_config() {
    let state = tempfile::tempdir().unwrap();
    let yaml = baseline_yaml("off", state.path(), "");
    let app = HttpApp::start();
    let body = ingress(app.addr.port(), 1) + "  baseline: {mode: learn}\n";
    let m = HttpMesh::with_app(app, &body, |_| {}, |b| b.extra_yaml += &yaml);
    eventually("the policy's mode", Duration::from_secs(10), || {
        (baseline_dump(&m.b)["mode"] == "learn").then_some(())
    });
    learn_traffic(m.a_out);
    assert_eq!(baseline_dump(&m.b)["entries"], 4);

    // Without the policy's say, the config's `off` is back: nothing more
    // is recorded.
    m.set_ingress(&ingress(m.app.addr.port(), 1));
    eventually("the config's mode", Duration::from_secs(10), || {
        (baseline_dump(&m.b)["mode"] == "off").then_some(())
    });
    assert_eq!(http(m.a_out, "GET", "/v1/unseen").0, 200);
    assert_eq!(baseline_dump(&m.b)["entries"], 4);
}
