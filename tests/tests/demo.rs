//! The README's main job: `palisadectl up` brings up a local mesh with the
//! example demo policy and shows allowed and denied traffic, then stops
//! every child by itself; `--scenario compromised` shows learned baselines
//! reporting, then blocking, a compromised workload's probes.

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
fn compromised_api_is_reported_in_monitor_then_blocked_in_protect_while_learned_flows_pass() {
    let repo = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let out = Command::new(bin("palisadectl"))
        .current_dir(&repo)
        .args(["up", "--scenario", "compromised", "--duration", "12"])
        .args(["--interval-ms", "500", "--plain"])
        .output()
        .expect("run palisadectl up");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "palisadectl up failed:\n{stdout}\n{stderr}"
    );
    let at = |marker: &str| {
        stdout
            .find(marker)
            .unwrap_or_else(|| panic!("no {marker:?} in:\n{stdout}"))
    };
    let (learn, monitor, protect) = (
        at("phase learn:"),
        at("phase monitor:"),
        at("phase protect:"),
    );
    assert!(learn < monitor && monitor < protect, "{stdout}");

    // The learned flows pass in every phase: never denied, throttled or
    // failed, and still answered once protect is in force.
    let learned = |l: &&str| {
        !l.starts_with("probe")
            && (l.contains(" frontend -> api ")
                || l.contains(" api -> db  (")
                || l.contains(" api -> db GET /v1/orders/1042 ")
                || l.contains(" api -> db GET /v1/users/42 "))
    };
    let learned_lines: Vec<&str> = stdout.lines().filter(learned).collect();
    for l in &learned_lines {
        assert!(
            l.starts_with("ALLOWED"),
            "a learned flow was refused: {l}\n{stdout}"
        );
    }
    let after_protect: Vec<&str> = stdout[protect..].lines().filter(learned).collect();
    for call in [
        " frontend -> api ",
        " api -> db  (",
        " api -> db GET /v1/orders/1042 ",
    ] {
        assert!(
            after_protect.iter().any(|l| l.contains(call)),
            "{call} not seen in protect:\n{stdout}"
        );
    }
    assert!(!stdout.contains("ERROR"), "a call failed:\n{stdout}");

    // Each deviation raised in monitor (the traffic passed), then blocked or
    // throttled in protect.
    let finding = |kind: &str, how: &str| {
        stdout.lines().any(|l| {
            l.starts_with("FINDING") && l.contains(&format!("baseline.{kind} ")) && l.contains(how)
        })
    };
    for kind in ["new_port", "new_route", "rate_spike"] {
        assert!(
            finding(kind, "(monitor mode, allowed)"),
            "no {kind} finding in monitor:\n{stdout}"
        );
    }
    for (kind, how) in [
        ("new_port", "(protect mode, blocked)"),
        ("new_route", "(protect mode, blocked)"),
        ("rate_spike", "(protect mode, throttled)"),
    ] {
        assert!(finding(kind, how), "no {kind} finding {how}:\n{stdout}");
    }

    // What the compromised caller saw: its probes passed in monitor, and in
    // protect the new port was closed, the new route got 403 naming the
    // baseline, and the burst got 429s.
    let probe = |part: &str, verdict: &str, what: &str| {
        part.lines()
            .any(|l| l.starts_with(&format!("probe    {verdict}")) && l.contains(what))
    };
    let in_monitor = &stdout[monitor..protect];
    assert!(
        probe(in_monitor, "ALLOWED", "api -> db admin port"),
        "{stdout}"
    );
    assert!(
        probe(in_monitor, "ALLOWED", "api -> db GET /admin/export"),
        "{stdout}"
    );
    let in_protect = &stdout[protect..];
    assert!(
        probe(in_protect, "DENIED", "api -> db admin port"),
        "{stdout}"
    );
    assert!(
        probe(in_protect, "DENIED", "x-palisade-denied: baseline"),
        "{stdout}"
    );
    assert!(
        probe(in_protect, "THROTTLED", "api -> db GET /v1/users/7 burst"),
        "{stdout}"
    );
    assert!(
        !probe(in_protect, "ALLOWED", "api -> db admin port")
            && !probe(in_protect, "ALLOWED", "GET /admin/export"),
        "a probe passed in protect:\n{stdout}"
    );
    // The sidecars count them too.
    assert!(
        stdout.contains("baseline_deviation_total") && stdout.contains("action throttle"),
        "{stdout}"
    );
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
