//! The palisadectl command line, run as a process. (These integration tests
//! also make `cargo test --workspace` build the binary that the end-to-end
//! tests in tests/ start.)

use std::process::Command;

#[test]
fn palisadectl_help_lists_every_command_group() {
    let out = Command::new(env!("CARGO_BIN_EXE_palisadectl"))
        .arg("--help")
        .output()
        .unwrap();
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for cmd in ["token", "ca", "cert", "policy", "up"] {
        assert!(
            help.lines().any(|l| l.trim_start().starts_with(cmd)),
            "`{cmd}` missing:\n{help}"
        );
    }
}

#[test]
fn cert_inspect_of_a_file_without_a_certificate_fails_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("not-a-cert.pem");
    std::fs::write(&file, "hello\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_palisadectl"))
        .args(["cert", "inspect"])
        .arg(&file)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("not-a-cert.pem"), "{err}");
}
