//! The proxy binary's command line, run as a process. (Its integration
//! tests also make `cargo test --workspace` build the binary that the
//! end-to-end tests in tests/ start.)

use std::process::Command;

fn proxy() -> Command {
    Command::new(env!("CARGO_BIN_EXE_palisade-proxy"))
}

#[test]
fn help_names_the_config_flag_and_its_environment_variable() {
    let out = proxy().arg("--help").output().unwrap();
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(
        help.contains("--config") && help.contains("PALISADE_CONFIG"),
        "{help}"
    );
}

#[test]
fn missing_config_file_is_an_error_that_names_it() {
    let out = proxy()
        .args(["--config", "/nonexistent/palisade-proxy.yaml"])
        .output()
        .unwrap();
    assert!(!out.status.success(), "started without its config file");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("/nonexistent/palisade-proxy.yaml"), "{err}");
}
