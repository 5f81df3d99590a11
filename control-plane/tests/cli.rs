//! The palisade-control-plane command line, run as a process. (These
//! integration tests also make `cargo test --workspace` build the binary
//! that the end-to-end tests in tests/ start.)

use std::process::Command;

#[test]
fn control_plane_refuses_a_bad_trust_domain() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_palisade-control-plane"))
        .arg("--state-dir")
        .arg(dir.path())
        .args(["--trust-domain", "Not A Domain"])
        .output()
        .unwrap();
    assert!(
        !out.status.success(),
        "started with an invalid trust domain"
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("trust"), "{err}");
}
