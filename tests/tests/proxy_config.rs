//! A configuration the proxy cannot use stops it at start, with an error that
//! names the offending setting.

use std::process::Command;

use palisade_tests::bin;

fn run_with(config: &str, env: &[(&str, &str)]) -> (bool, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("proxy.yaml");
    std::fs::write(&path, config).unwrap();
    let out = Command::new(bin("palisade-proxy"))
        .arg("--config")
        .arg(&path)
        .envs(env.iter().copied())
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn unknown_field_in_the_config_file_is_named_and_the_proxy_does_not_start() {
    let (ok, err) = run_with("mode: explicit\ninbound:\n  prots: []\n", &[]);
    assert!(!ok);
    assert!(err.contains("prots"), "{err}");
}

#[test]
fn bad_environment_override_is_named_and_the_proxy_does_not_start() {
    let (ok, err) = run_with("", &[("PALISADE_TIMEOUT_IDLE", "forever")]);
    assert!(!ok);
    assert!(err.contains("PALISADE_TIMEOUT_IDLE"), "{err}");
}

#[test]
fn missing_bootstrap_bundle_is_named_and_the_proxy_does_not_start() {
    let cfg = "mode: explicit\ninbound:\n  ports: [{listen: \"127.0.0.1:0\", app: \"127.0.0.1:1\"}]\nadmin: {bind: \"127.0.0.1:0\"}\nidentity: {bootstrap_bundle: /nonexistent/bundle.pem, join_token: t}\n";
    let (ok, err) = run_with(cfg, &[]);
    assert!(!ok);
    assert!(err.contains("/nonexistent/bundle.pem"), "{err}");
}

#[test]
fn a_setting_of_the_other_mode_is_named_with_the_mode_and_the_proxy_does_not_start() {
    let (ok, err) = run_with(
        "mode: explicit\noutbound:\n  unmeshed: passthrough\n  routes: []\n",
        &[],
    );
    assert!(!ok);
    assert!(err.contains("outbound.unmeshed"), "{err}");
    assert!(err.contains("mode: explicit"), "{err}");
}

#[test]
fn any_setting_is_overridden_by_the_variable_named_after_its_path() {
    let (ok, err) = run_with("", &[("PALISADE_HTTP_MAX_HEADER_BYTES", "100")]);
    assert!(!ok);
    assert!(
        err.contains("http.max_header_bytes must be at least 8192"),
        "{err}"
    );
}
