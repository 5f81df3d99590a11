//! A short `palisade-bench mesh` run in CI: 1,000 simulated sidecars on the
//! real control plane, one policy push. It asserts that every sidecar got
//! the change while SVIDs were being renewed; it asserts no timing.

use std::process::Command;

use serde_json::Value;

#[test]
fn every_simulated_sidecar_receives_the_policy_change() {
    let out = tempfile::tempdir().unwrap();
    let run = Command::new(env!("CARGO_BIN_EXE_palisade-bench"))
        .args([
            "mesh",
            "--sidecars",
            "1000",
            "--pushes",
            "1",
            "--steady",
            "1s",
            "--push-timeout",
            "60s",
        ])
        .arg("--out")
        .arg(out.path())
        .output()
        .expect("running palisade-bench");
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(
        run.status.success(),
        "mesh run failed: {}\n{stderr}",
        run.status
    );
    let report: Value =
        serde_json::from_str(&std::fs::read_to_string(out.path().join("mesh.json")).unwrap())
            .unwrap();
    let size = &report["sizes"][0];
    assert_eq!(size["sidecars"], 1000);
    let push = &size["pushes"][0];
    assert_eq!(push["received"], 1000, "{push}\n{stderr}");
    assert!(
        size["renewals"]["ok"].as_u64() > Some(0),
        "{}",
        size["renewals"]
    );
    for file in ["mesh.md", "mesh.svg"] {
        assert!(out.path().join(file).exists(), "{file} not written");
    }
}
