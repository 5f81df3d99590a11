//! The README's main job: `palisadectl up` brings up a local mesh with the
//! example demo policy and shows allowed and denied traffic, then stops
//! every child by itself.

use std::process::Command;

use palisade_tests::bin;

#[test]
fn local_mesh_shows_allowed_and_denied_traffic_and_stops_cleanly() {
    let repo = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let out = Command::new(bin("palisadectl"))
        .current_dir(&repo)
        .args(["up", "--duration", "4", "--interval-ms", "500", "--plain"])
        .output()
        .expect("run palisadectl up");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "palisadectl up failed:\n{stdout}\n{stderr}"
    );
    let line = |verdict: &str, from: &str, to: &str| {
        stdout
            .lines()
            .any(|l| l.starts_with(verdict) && l.contains(&format!("{from} -> {to} ")))
    };
    assert!(
        line("ALLOWED", "frontend", "api"),
        "frontend -> api was not allowed:\n{stdout}"
    );
    assert!(
        line("ALLOWED", "api", "db"),
        "api -> db was not allowed:\n{stdout}"
    );
    assert!(
        line("DENIED", "frontend", "db"),
        "frontend -> db was not denied:\n{stdout}"
    );
    assert!(
        !line("ALLOWED", "frontend", "db"),
        "frontend -> db got through:\n{stdout}"
    );
    assert!(!stdout.contains("ERROR"), "a call failed:\n{stdout}");
    // The sidecars' own view: verified identities and the rule that decided.
    assert!(
        stdout.contains("inbound_tcp_authz_allow_total")
            && stdout.contains("spiffe://cluster.local/ns/demo/sa/frontend"),
        "{stdout}"
    );
    assert!(stdout.contains("outbound_tcp_authz_deny_total"), "{stdout}");
}

#[test]
fn ctrl_c_stops_every_child() {
    use std::io::{BufRead, BufReader};
    let repo = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(bin("palisadectl"))
        .current_dir(&repo)
        .args(["up", "--plain", "--dir"])
        .arg(dir.path())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let up = lines
        .by_ref()
        .map_while(Result::ok)
        .any(|l| l.starts_with("palisade local mesh is up"));
    assert!(up, "the mesh never came up");
    let children = |d: &std::path::Path| -> Vec<String> {
        let needle = d.to_string_lossy().into_owned();
        std::fs::read_dir("/proc")
            .unwrap()
            .flatten()
            .filter_map(|e| std::fs::read(e.path().join("cmdline")).ok())
            .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
            .filter(|c| c.contains(&needle) && !c.contains("palisadectl"))
            .collect()
    };
    assert!(
        !children(dir.path()).is_empty(),
        "no control plane or sidecar was running"
    );
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .unwrap();
    let status = child.wait().unwrap();
    assert!(
        status.success(),
        "palisadectl up exited with {status} on Ctrl-C"
    );
    assert_eq!(
        children(dir.path()),
        Vec::<String>::new(),
        "children left running after Ctrl-C"
    );
}
