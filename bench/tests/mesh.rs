//! Short `palisade-bench mesh` runs in CI: simulated sidecars on the real
//! control plane, one policy push, with one replica and with three on a
//! real etcd cluster. They assert that every sidecar got the change while
//! SVIDs were being renewed; they assert no timing.

use std::path::Path;
use std::process::Command;

use serde_json::Value;

/// Runs `palisade-bench mesh` with `args` into `out`: the report's first
/// size and the bench's stderr. Fails unless the run succeeded and wrote
/// `<basename>.{json,md,svg}`.
fn mesh(out: &Path, basename: &str, args: &[&str]) -> (Value, String) {
    let run = Command::new(env!("CARGO_BIN_EXE_palisade-bench"))
        .args([
            "mesh",
            "--pushes",
            "1",
            "--steady",
            "1s",
            "--push-timeout",
            "60s",
        ])
        .args(args)
        .arg("--out")
        .arg(out)
        .output()
        .expect("running palisade-bench");
    let stderr = String::from_utf8_lossy(&run.stderr).into_owned();
    assert!(
        run.status.success(),
        "mesh run failed: {}\n{stderr}",
        run.status
    );
    for ext in ["md", "svg"] {
        let file = out.join(format!("{basename}.{ext}"));
        assert!(file.exists(), "{} not written", file.display());
    }
    let json = std::fs::read_to_string(out.join(format!("{basename}.json"))).unwrap();
    let report: Value = serde_json::from_str(&json).unwrap();
    (report["sizes"][0].clone(), stderr)
}

#[test]
fn every_simulated_sidecar_receives_the_policy_change() {
    let out = tempfile::tempdir().unwrap();
    let (size, stderr) = mesh(out.path(), "mesh", &["--sidecars", "1000"]);
    assert_eq!(size["sidecars"], 1000);
    let push = &size["pushes"][0];
    assert_eq!(push["received"], 1000, "{push}\n{stderr}");
    assert!(
        size["renewals"]["ok"].as_u64() > Some(0),
        "{}",
        size["renewals"]
    );
}

/// Two thirds of the sidecars sit on replicas the change was not applied
/// through: they can only get it through the etcd store's watch.
#[test]
fn a_change_applied_through_one_of_three_replicas_reaches_every_sidecar() {
    let out = tempfile::tempdir().unwrap();
    let (size, stderr) = mesh(
        out.path(),
        "mesh-replicas3",
        &["--sidecars", "600", "--replicas", "3"],
    );
    assert_eq!(size["sidecars"], 600);
    assert_eq!(size["replicas"], 3);
    assert_eq!(
        size["per_replica"].as_array().map(Vec::len),
        Some(3),
        "{size}"
    );
    let push = &size["pushes"][0];
    assert_eq!(push["received"], 600, "{push}\n{stderr}");
    assert!(
        size["renewals"]["ok"].as_u64() > Some(0),
        "{}",
        size["renewals"]
    );
    assert!(
        !out.path().join("mesh.json").exists(),
        "a three-replica run overwrote the one-replica report"
    );
}
