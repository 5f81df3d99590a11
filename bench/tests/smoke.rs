//! The CI smoke run: the real bench binary, a few seconds, direct (and palisade
//! once it can run). Asserts that results were produced and nothing errored;
//! it asserts no timing.

use std::path::Path;

use std::process::Command;

use serde_json::Value;

/// Runs `latency --smoke --palisade <extra>` and returns its JSON report.
fn smoke(out: &Path, extra: &[&str]) -> Value {
    let run = Command::new(env!("CARGO_BIN_EXE_palisade-bench"))
        .args(["latency", "--smoke", "--palisade"])
        .args(extra)
        .arg("--out")
        .arg(out)
        .output()
        .expect("running palisade-bench");
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(
        run.status.success(),
        "bench failed: {}\n{stderr}",
        run.status
    );
    let json = std::fs::read_to_string(out.join("latest.json")).expect("latest.json");
    serde_json::from_str(&json).unwrap()
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
