//! The CI smoke run: the real bench binary, a few seconds, direct (and palisade
//! once it can run). Asserts that results were produced and nothing errored;
//! it asserts no timing.

use std::process::Command;

use serde_json::Value;

#[test]
fn smoke_run_writes_results_and_no_request_errors() {
    let out = tempfile::tempdir().unwrap();
    let run = Command::new(env!("CARGO_BIN_EXE_palisade-bench"))
        .args(["latency", "--smoke", "--palisade", "--out"])
        .arg(out.path())
        .output()
        .expect("running palisade-bench");
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(
        run.status.success(),
        "bench failed: {}\n{stderr}",
        run.status
    );

    let json = std::fs::read_to_string(out.path().join("latest.json")).expect("latest.json");
    let report: Value = serde_json::from_str(&json).unwrap();
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
