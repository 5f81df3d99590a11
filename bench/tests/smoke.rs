//! The CI smoke runs: the real bench binary, a few seconds, direct and
//! palisade (when built). They assert that results were produced, nothing
//! errored and CPU-limit groups are gone afterwards; they assert no timing.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

/// Runs `palisade-bench <args> --out <out>`; returns its pid and output.
fn bench(args: &[&str], out: &Path) -> (u32, Output) {
    let child = Command::new(env!("CARGO_BIN_EXE_palisade-bench"))
        .args(args)
        .arg("--out")
        .arg(out)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("running palisade-bench");
    let pid = child.id();
    (pid, child.wait_with_output().unwrap())
}

/// Runs `<command> --smoke --palisade <extra>`, which must succeed, and
/// returns its JSON report (`<latest>.json`).
fn smoke_run(command: &str, latest: &str, out: &Path, extra: &[&str]) -> Value {
    let args = [&[command, "--smoke", "--palisade"], extra].concat();
    let (_, run) = bench(&args, out);
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(
        run.status.success(),
        "bench failed: {}\n{stderr}",
        run.status
    );
    let json = std::fs::read_to_string(out.join(format!("{latest}.json"))).expect("results JSON");
    serde_json::from_str(&json).unwrap()
}

fn smoke(out: &Path, extra: &[&str]) -> Value {
    smoke_run("latency", "latest", out, extra)
}

/// Whether `cargo build` put the Palisade path's binaries next to the bench.
fn palisade_built() -> bool {
    let bench = Path::new(env!("CARGO_BIN_EXE_palisade-bench"));
    ["palisade-proxy", "palisade-control-plane", "palisadectl"]
        .iter()
        .all(|b| bench.with_file_name(b).exists())
}

/// Every cgroup path of bench `pid` its log names (`cgroup=<path>`).
fn groups_logged(stderr: &str, pid: u32) -> Vec<PathBuf> {
    // The log may be coloured: drop each `ESC [ ... m` first.
    let mut plain = String::with_capacity(stderr.len());
    let mut chars = stderr.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            chars.by_ref().find(|&c| c == 'm');
        } else {
            plain.push(c);
        }
    }
    let mut groups: Vec<PathBuf> = plain
        .split_whitespace()
        .filter_map(|field| field.strip_prefix("cgroup="))
        .filter(|path| path.contains(&format!("/palisade-bench-{pid}-")))
        .map(PathBuf::from)
        .collect();
    groups.sort();
    groups.dedup();
    groups
}

/// The group was real (its controller mount is there) and is gone.
fn assert_removed(group: &Path) {
    let controller = group.parent().unwrap();
    assert!(
        controller.is_dir(),
        "{} is no cgroup mount",
        controller.display()
    );
    assert!(!group.exists(), "{} outlived the run", group.display());
}

#[test]
fn smoke_run_writes_results_and_no_request_errors() {
    let out = tempfile::tempdir().unwrap();
    let report = smoke(out.path(), &[]);
    assert_eq!(report["total_errors"], 0);
    let direct = report["paths"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["path"] == "direct")
        .expect("direct path in results");
    assert_eq!(direct["status"], "ok");
    assert!(direct["latency"]["trials"]
        .as_array()
        .is_some_and(|t| !t.is_empty()));
    for p in report["paths"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["status"] == "ok")
    {
        assert_eq!(p["latency"]["errors"], 0, "{} had errors", p["path"]);
        assert!(p["latency"]["trials"][0]["requests_ok"].as_u64() > Some(0));
    }
    for file in ["latest.md", "latest.svg"] {
        assert!(out.path().join(file).exists(), "{file} not written");
    }
}

#[test]
fn baseline_modes_run_as_their_own_paths_and_monitor_measures_known_traffic() {
    let out = tempfile::tempdir().unwrap();
    let report = smoke(out.path(), &["--baseline", "off,learn,monitor"]);
    assert_eq!(report["total_errors"], 0);
    let paths = report["paths"].as_array().unwrap();
    let labels: Vec<_> = paths.iter().map(|p| p["path"].as_str().unwrap()).collect();
    assert_eq!(
        labels,
        ["direct", "palisade", "palisade+learn", "palisade+monitor"]
    );
    let path = |label: &str| paths.iter().find(|p| p["path"] == label).unwrap();
    if path("palisade")["status"] != "ok" {
        return; // palisade-proxy or the control plane is not built
    }
    assert!(path("palisade").get("baseline").is_none());
    let learn = &path("palisade+learn")["baseline"];
    assert_eq!(learn["modes"], serde_json::json!(["learn", "learn"]));
    assert!(learn["entries"].as_u64() > Some(0), "{learn}");
    let monitor = &path("palisade+monitor")["baseline"];
    assert_eq!(monitor["modes"], serde_json::json!(["monitor", "monitor"]));
    assert_eq!(monitor["deviations"], 0, "{monitor}");
}

#[test]
fn cpu_limit_and_a_noisy_neighbour_are_reported_and_the_groups_removed() {
    let out = tempfile::tempdir().unwrap();
    let report = smoke(
        out.path(),
        &[
            "--cpu-limit",
            "500",
            "--noisy-neighbour",
            "1",
            "--rps",
            "100",
        ],
    );
    assert_eq!(report["total_errors"], 0);
    let conditions = &report["conditions"];
    assert_eq!(conditions["cpu_limit"]["millicores"], 500);
    assert_eq!(conditions["cpu_limit"]["cfs_quota_us"], 50_000);
    assert_eq!(conditions["noisy_neighbours"]["threads"], 1);
    assert!(
        conditions["steal_percent"]["max"].is_number(),
        "{conditions}"
    );
    let md = std::fs::read_to_string(out.path().join("latest.md")).unwrap();
    assert!(md.contains("CPU limit 500m per proxy"), "{md}");
    assert!(md.contains("1 noisy neighbour(s)"), "{md}");

    let groups = conditions["cpu_limit"]["groups"].as_array().unwrap();
    let paths = report["paths"].as_array().unwrap();
    let palisade = paths.iter().find(|p| p["path"] == "palisade").unwrap();
    if palisade["status"] != "ok" {
        assert!(groups.is_empty(), "no proxy ran, yet groups: {groups:?}");
        return; // palisade-proxy or the control plane is not built
    }
    assert_eq!(groups.len(), 2, "one group per proxy: {groups:?}");
    for group in groups {
        assert_removed(Path::new(group.as_str().unwrap()));
    }
    let trial = &palisade["latency"]["trials"][0];
    assert!(trial["steal_percent"].is_number());
    let sched = trial["proxy_sched_per_1000_requests"].as_array().unwrap();
    assert_eq!(sched.len(), 2, "{trial}");
    assert!(
        sched[0]["voluntary_ctxt_switches"].as_f64() > Some(0.0),
        "{trial}"
    );
}

#[test]
fn cpu_limit_groups_are_removed_when_the_run_fails() {
    if !palisade_built() {
        eprintln!("palisade-proxy and the control plane are not built: nothing to limit");
        return;
    }
    let out = tempfile::tempdir().unwrap();
    // The palisade path starts (and is put under the limit); the envoy path's
    // binary exits at once, so the run fails while palisade's groups exist.
    // Without --smoke, which would drop the envoy path.
    let (pid, run) = bench(
        &[
            "latency",
            "--palisade",
            "--paths",
            "direct,palisade,envoy",
            "--envoy-bin",
            "/bin/false",
            "--cpu-limit",
            "300",
        ],
        out.path(),
    );
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(!run.status.success(), "the run should fail:\n{stderr}");
    assert!(stderr.contains("starting the envoy path"), "{stderr}");
    let groups = groups_logged(&stderr, pid);
    assert_eq!(groups.len(), 2, "palisade's two groups were made: {stderr}");
    for group in groups {
        assert_removed(&group);
    }
}

#[test]
fn sweep_writes_results_and_plot_over_both_clients_without_errors() {
    let out = tempfile::tempdir().unwrap();
    let report = smoke_run(
        "sweep",
        "sweep-latest",
        out.path(),
        &["--cpu-limit", "1000"],
    );
    assert_eq!(report["total_errors"], 0, "{report}");
    for file in ["sweep-latest.md", "sweep-latest.svg"] {
        assert!(out.path().join(file).exists(), "{file} not written");
    }
    let svg = std::fs::read_to_string(out.path().join("sweep-latest.svg")).unwrap();
    let curves = report["curves"].as_array().unwrap();
    let find = |path: &str, client: &str| {
        curves
            .iter()
            .find(|c| c["path"] == path && c["client"] == client)
    };
    let mut expected = vec!["direct"];
    if palisade_built() {
        expected.push("palisade");
    }
    for path in expected {
        for client in ["http1", "http2"] {
            let curve = find(path, client).unwrap_or_else(|| panic!("no {path} {client} curve"));
            let points = curve["points"].as_array().unwrap();
            // Both rates ran, unless the path stopped climbing at the first.
            let first_held = points[0]["latency_ms"]["p99"].as_f64() < Some(10.0);
            assert_eq!(
                points.len(),
                if first_held { 2 } else { 1 },
                "{path} {client}: {curve}"
            );
            for p in points {
                assert_eq!(p["errors"], 0, "{path} {client}: {p}");
                assert!(p["requests_ok"].as_u64() > Some(0), "{p}");
            }
            assert!(
                svg.contains(&format!("{path} {client}")),
                "{path} {client} not plotted"
            );
        }
    }
    let groups = report["conditions"]["cpu_limit"]["groups"]
        .as_array()
        .unwrap();
    if palisade_built() {
        // Palisade's two proxies, started once per client.
        assert_eq!(groups.len(), 4, "{groups:?}");
    }
    for group in groups {
        assert_removed(Path::new(group.as_str().unwrap()));
    }
}
