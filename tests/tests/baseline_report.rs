//! The learned baseline leaves the sidecar and comes back in: real
//! sidecars report it to a real control plane every `report_interval` and
//! on drain (a refused report is counted, never fatal), and baseline files
//! learned by other pods are merged in at start, while files of another
//! identity or corrupt ones are refused.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use palisade_policy::baseline::Snapshot;
use palisade_tests::baseline::{
    baseline_dump, baseline_yaml, findings, flows, ingress, learn_traffic, mesh, record,
    wait_findings, Seen, OTHER_ID,
};
use palisade_tests::cp::ControlPlane;
use palisade_tests::eventually;
use palisade_tests::http::{HttpApp, HttpMesh};
use palisade_tests::proxy::{http, CLIENT_ID, SERVER_ID};

/// The server's baseline as the control plane merged it from the reports.
fn reported(cp: &ControlPlane) -> Option<Snapshot> {
    let (status, body) = cp.admin_get(&format!("/v1/baselines?identity={SERVER_ID}"));
    (status == 200).then(|| Snapshot::from_json(body.as_bytes(), 20_000).expect("a snapshot"))
}

/// The instances whose reports the control plane keeps on disk
/// (`<identity digest>.<instance>.json`).
fn kept_files(cp: &ControlPlane) -> Vec<String> {
    std::fs::read_dir(cp.state_dir().join("baselines"))
        .unwrap()
        .filter_map(|f| {
            let name = f.unwrap().file_name().to_string_lossy().into_owned();
            let (_, instance) = name.strip_suffix(".json")?.split_once('.')?;
            Some(instance.to_owned())
        })
        .collect()
}

/// The four flows `learn_traffic` teaches B about the app on `port`.
fn learned_flows(port: u16) -> Vec<String> {
    vec![
        format!("{CLIENT_ID} {port} http"),
        format!("{CLIENT_ID} {port} http GET /v1/api"),
        format!("{CLIENT_ID} {port} http GET /v1/orders/{{id}}"),
        format!("{CLIENT_ID} {port} http GET /v1/users/{{id}}"),
    ]
}

fn users_count(s: &Snapshot) -> u64 {
    s.entries
        .iter()
        .find(|e| {
            e.flow
                .route
                .as_ref()
                .is_some_and(|r| r.template == "/v1/users/{id}")
        })
        .map_or(0, |e| e.count)
}

#[test]
fn learned_flows_reach_the_control_plane_every_report_interval() {
    let state = tempfile::tempdir().unwrap();
    let extra = "  report_interval: 200ms\n  instance: b-0\n";
    let m = mesh("learn", state.path(), extra);
    learn_traffic(m.a_out);
    let want = learned_flows(m.app.addr.port());
    let snap = eventually("the reported baseline", Duration::from_secs(10), || {
        reported(&m.cp).filter(|s| s.entries.len() == want.len())
    });
    assert_eq!(flows(&snap), want);
    assert_eq!(users_count(&snap), 2);
    assert_eq!(kept_files(&m.cp), ["b-0"], "kept under the configured name");

    // Reports are cumulative: a later one replaces the earlier, so the
    // count grows by the one new request, not by a whole report.
    assert_eq!(http(m.a_out, "GET", "/v1/users/789").0, 200);
    eventually("the next report", Duration::from_secs(10), || {
        reported(&m.cp).filter(|s| users_count(s) == 3)
    });
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(users_count(&reported(&m.cp).unwrap()), 3);
    assert_eq!(m.b.metric("baseline_report_failures_total", &[]), 0.0);
}

#[test]
fn the_report_on_drain_carries_what_was_learned_since_the_last_one() {
    let state = tempfile::tempdir().unwrap();
    let m = mesh("learn", state.path(), "  report_interval: 1h\n");
    learn_traffic(m.a_out);
    assert!(reported(&m.cp).is_none(), "no report before the interval");
    assert_eq!(m.b.post("/shutdown").0, 200);
    let snap = eventually("the report on drain", Duration::from_secs(15), || {
        reported(&m.cp)
    });
    assert_eq!(flows(&snap), learned_flows(m.app.addr.port()));
    // Without `baseline.instance`: the pod's name, else the host's.
    let instance = std::env::var("POD_NAME")
        .ok()
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| {
            let h = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
            h.trim().to_owned()
        });
    assert_eq!(kept_files(&m.cp), [instance]);
}

#[test]
fn a_refused_report_is_counted_logged_once_and_traffic_goes_on() {
    let state = tempfile::tempdir().unwrap();
    // The control plane refuses an instance name that is no pod name.
    let extra = "  report_interval: 100ms\n  instance: not/a/pod\n";
    let m = mesh("learn", state.path(), extra);
    learn_traffic(m.a_out);
    eventually("three refused reports", Duration::from_secs(10), || {
        (m.b.metric("baseline_report_failures_total", &[]) >= 3.0).then_some(())
    });
    let log = m.b.log();
    let logged = log.matches("cannot report the baseline").count();
    assert_eq!(logged, 1, "rate-limited:\n{log}");
    assert!(
        log.contains("bad_instance"),
        "the control plane's reason:\n{log}"
    );
    assert_eq!(http(m.a_out, "GET", "/v1/users/1").0, 200);
    assert!(reported(&m.cp).is_none());
}

/// A baseline file `identity`'s sidecar could have written in another pod,
/// up to now: `CLIENT_ID`'s HTTP connection on `port` and a `GET` of each
/// path.
fn recorded_elsewhere(
    dir: &Path,
    file: &str,
    identity: &str,
    port: u16,
    paths: &[&str],
) -> PathBuf {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let mut seen = vec![Seen::HttpConn(CLIENT_ID, port)];
    seen.extend(paths.iter().map(|p| Seen::Http(CLIENT_ID, port, "GET", p)));
    record(dir, file, identity, &seen, now - 3_600_000)
}

#[test]
fn a_merged_baseline_makes_its_flows_known_and_bad_files_are_refused() {
    let (state, seeds) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let app = HttpApp::start();
    let port = app.addr.port();
    let seed = recorded_elsewhere(
        seeds.path(),
        "b-1.json",
        SERVER_ID,
        port,
        &["/v1/orders/abc12345def"],
    );
    let foreign = recorded_elsewhere(seeds.path(), "other.json", OTHER_ID, port, &["/v1/users/1"]);
    let corrupt = seeds.path().join("corrupt.json");
    std::fs::write(&corrupt, "{\"version\": 1, \"entr").unwrap();
    let extra = format!(
        "  merge_from: [{}, {}, {}]\n",
        seed.display(),
        foreign.display(),
        corrupt.display()
    );
    let yaml = baseline_yaml("monitor", state.path(), &extra);
    let m = HttpMesh::with_app(app, &ingress(port, 1), |_| {}, |b| b.extra_yaml += &yaml);
    eventually("the merged baseline", Duration::from_secs(10), || {
        (baseline_dump(&m.b)["entries"] == 2).then_some(())
    });
    assert_eq!(
        m.b.metric("baseline_file_failures_total", &[("operation", "merge")]),
        2.0
    );
    let log = m.b.log();
    assert!(
        log.contains("baseline.merge_from file refused")
            && log.contains("baselines merge per identity"),
        "{log}"
    );
    assert!(log.contains("is corrupt at line"), "{log}");

    // The proxy never saw this flow; the merged file makes it known.
    assert_eq!(http(m.a_out, "GET", "/v1/orders/deadbeef99").0, 200);
    // A route no pod learned is a deviation, so findings do get written.
    assert_eq!(http(m.a_out, "GET", "/v1/users/1").0, 200);
    wait_findings(state.path(), "baseline.new_route", 1);
    std::thread::sleep(Duration::from_millis(300));
    let f = findings(state.path(), "baseline.new_route");
    assert_eq!(f.len(), 1, "{f:?}");
    assert!(f[0].to_string().contains("/v1/users/{id}"), "{}", f[0]);
    assert!(findings(state.path(), "baseline.new_peer").is_empty());
    assert_eq!(m.b.metric("baseline_deviation_total", &[]), 1.0);
}
