//! Hot reload with real proxies: a thousand swaps under traffic break no
//! allowed connection, a swap that denies a live connection closes it, bad
//! files (truncated, half-written, a ConfigMap symlink flip to an invalid
//! file) keep the last good policy, an emptied source (the file replaced by
//! a directory, a directory's last file deleted) keeps it too until
//! `.palisade-allow-empty` says so, a read is no change and a `touch` is read
//! once (by the proxy and by the control plane), and the control plane's
//! policy directory reaches the proxies it selects.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use palisade_tests::cp::{ControlPlane, ControlPlaneSpec};
use palisade_tests::eventually;
use palisade_tests::policy::{
    policy_doc, start_pair, write_atomic, write_partial, ConfigMapDir, PolicyFile,
};
use palisade_tests::proxy::{echo_roundtrip, Mesh, Proxy, CLIENT_ID, SERVER_ID};

const OTHER_ID: &str = "spiffe://cluster.local/ns/demo/sa/other";

/// The server's policy: ingress from `peer` under rule `rule`.
fn allow(peer: &str, rule: &str) -> String {
    let body = format!(
        "  ingress:\n    - name: {rule}\n      action: allow\n      from:\n        - identity: {peer}\n"
    );
    policy_doc("server", SERVER_ID, &body)
}

/// `policy_reload_errors_total` for one reason.
fn reload_errors(p: &Proxy, reason: &str) -> f64 {
    p.metric(
        "policy_reload_errors_total",
        &[("source", "file"), ("reason", reason)],
    )
}

fn allowed(entry: SocketAddr) -> bool {
    echo_roundtrip(entry, b"ping").is_ok_and(|b| b == b"ping")
}

fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    eventually(what, Duration::from_secs(15), || f().then_some(()));
}

/// One echo exchange on a kept-open connection.
fn ping(s: &mut TcpStream, n: u64) -> std::io::Result<()> {
    let msg = n.to_be_bytes();
    s.write_all(&msg)?;
    let mut back = [0u8; 8];
    s.read_exact(&mut back)?;
    if back != msg {
        return Err(std::io::Error::other("echo mismatch"));
    }
    Ok(())
}

#[test]
fn a_thousand_reloads_under_traffic_fail_no_allowed_connection_and_a_denying_reload_closes_the_live_one(
) {
    let (v1, v2) = (
        allow(CLIENT_ID, "from-client"),
        allow(CLIENT_ID, "client-v2"),
    );
    let policy = PolicyFile::new(&v1);
    let file = &policy.path;
    let p = start_pair(ControlPlane::start(), Some(file), "  debounce: 2ms\n");
    let entry = p.a_out;

    let stop = Arc::new(AtomicBool::new(false));
    let failures = Arc::new(AtomicU64::new(0));
    let new_ok = Arc::new(AtomicU64::new(0));
    let long_pings = Arc::new(AtomicU64::new(0));
    let mut live = TcpStream::connect(entry).unwrap();
    live.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    ping(&mut live, 0).unwrap();
    let long_lived = {
        let (stop, failures, pings) = (stop.clone(), failures.clone(), long_pings.clone());
        let mut s = live.try_clone().unwrap();
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let n = pings.fetch_add(1, Ordering::Relaxed) + 1;
                if let Err(e) = ping(&mut s, n) {
                    eprintln!("long-lived connection failed: {e}");
                    failures.fetch_add(1, Ordering::Relaxed);
                    return;
                }
            }
        })
    };
    let fresh = {
        let (stop, failures, ok) = (stop.clone(), failures.clone(), new_ok.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                match echo_roundtrip(entry, b"new connection") {
                    Ok(b) if b == b"new connection" => ok.fetch_add(1, Ordering::Relaxed),
                    other => {
                        eprintln!("new connection failed: {other:?}");
                        failures.fetch_add(1, Ordering::Relaxed)
                    }
                };
            }
        })
    };

    let reloads = |p: &Proxy| p.metric("policy_reloads_total", &[]);
    let base = reloads(&p.b);
    for i in 0..1000u32 {
        write_atomic(file, if i % 2 == 0 { &v2 } else { &v1 });
        let want = base + f64::from(i) + 1.0;
        let deadline = Instant::now() + Duration::from_secs(10);
        while reloads(&p.b) < want {
            assert!(Instant::now() < deadline, "reload {i} not applied");
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    stop.store(true, Ordering::Relaxed);
    long_lived.join().unwrap();
    fresh.join().unwrap();
    assert_eq!(reloads(&p.b), base + 1000.0);
    assert_eq!(
        failures.load(Ordering::Relaxed),
        0,
        "allowed traffic failed"
    );
    assert!(new_ok.load(Ordering::Relaxed) > 0 && long_pings.load(Ordering::Relaxed) > 0);
    assert_eq!(p.b.metric("tcp_authz_terminate_total", &[]), 0.0);

    // Now a policy that no longer admits the client: the live connection
    // is closed and counted, new ones are refused.
    ping(&mut live, u64::MAX).unwrap();
    write_atomic(file, &allow(OTHER_ID, "only-other"));
    let mut buf = [0u8; 8];
    let closed = match live.read(&mut buf) {
        Ok(0) => true,
        Err(e) => !matches!(
            e.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        ),
        Ok(_) => false,
    };
    assert!(closed, "the live connection must be closed by the reload");
    let terminated = [
        ("direction", "inbound"),
        ("policy", "demo/server"),
        ("peer", CLIENT_ID),
    ];
    wait_until("terminate counted", || {
        p.b.metric("tcp_authz_terminate_total", &terminated) == 1.0
    });
    assert!(!allowed(entry), "new connections are denied too");
}

/// Checks the error was counted and shown, and the last good policy (which
/// admits the client, at `version`) is still the one in force.
fn assert_kept(p: &Mesh, errors_before: f64, version: &serde_json::Value, needle: &str) {
    wait_until("reload error counted", || {
        p.b.metric("policy_reload_errors_total", &[]) > errors_before
    });
    let dump = p.b.config_dump();
    let err = dump["policy"]["last_error"].as_str().unwrap_or_default();
    assert!(err.contains(needle), "last_error {err:?} lacks {needle:?}");
    assert_eq!(
        &dump["policy_version"], version,
        "the last good policy stays"
    );
    assert!(allowed(p.a_out), "traffic follows the last good policy");
}

/// `policy.yaml:<line>:<col>:` somewhere in `err`.
fn located(err: &str) -> bool {
    err.split("policy.yaml:").skip(1).any(|rest| {
        let mut parts = rest.splitn(3, ':');
        let digits = |s: Option<&str>| {
            s.is_some_and(|s| !s.is_empty() && s.chars().all(|c| c.is_ascii_digit()))
        };
        digits(parts.next()) && digits(parts.next())
    })
}

#[test]
fn a_truncated_file_is_rejected_with_its_location_and_the_last_good_policy_stays() {
    let good = allow(CLIENT_ID, "from-client");
    let policy = PolicyFile::new(&good);
    let file = &policy.path;
    let p = start_pair(ControlPlane::start(), Some(file), "");
    assert!(allowed(p.a_out));
    let version = p.b.config_dump()["policy_version"].clone();

    // Cut inside the rule: `action` is gone.
    let cut = good.find("      action").unwrap();
    std::fs::write(file, &good[..cut]).unwrap();
    assert_kept(&p, 0.0, &version, "policy.yaml:");
    let err = p.b.config_dump()["policy"]["last_error"].to_string();
    assert!(located(&err), "file:line:col in {err}");

    // A good file is picked up and clears the error.
    write_atomic(file, &allow(OTHER_ID, "only-other"));
    wait_until("the denying policy applies", || !allowed(p.a_out));
    assert!(p.b.config_dump()["policy"]["last_error"].is_null());
}

#[test]
fn a_half_written_file_is_rejected_until_the_writer_finishes() {
    let policy = PolicyFile::new(&allow(CLIENT_ID, "from-client"));
    let file = &policy.path;
    let p = start_pair(ControlPlane::start(), Some(file), "");
    let version = p.b.config_dump()["policy_version"].clone();

    // A slow writer stops inside a flow mapping and keeps the file open.
    let next = allow(OTHER_ID, "only-other");
    let half = next.find("identity: ").unwrap();
    let mut writer = write_partial(file, &next, half);
    assert_kept(&p, 0.0, &version, "policy.yaml:");

    writer.write_all(&next.as_bytes()[half..]).unwrap();
    drop(writer);
    wait_until("the finished file applies", || !allowed(p.a_out));
    assert_ne!(p.b.config_dump()["policy_version"], version);
}

#[test]
fn a_configmap_symlink_flip_to_an_invalid_file_keeps_the_last_good_policy() {
    let dir = tempfile::tempdir().unwrap();
    let mut cm = ConfigMapDir::create(dir.path(), "server.yaml", &allow(CLIENT_ID, "from-client"));
    let p = start_pair(ControlPlane::start(), Some(&cm.path()), "");
    assert!(allowed(p.a_out));
    let version = p.b.config_dump()["policy_version"].clone();

    let typo = allow(OTHER_ID, "only-other").replace("      from:", "      form:");
    cm.flip(&typo);
    assert_kept(&p, 0.0, &version, "unknown field `form`");

    cm.flip(&allow(OTHER_ID, "only-other"));
    wait_until("the valid flip applies", || !allowed(p.a_out));
    let dump = p.b.config_dump();
    assert!(dump["policy"]["last_error"].is_null());
    assert_eq!(dump["policy"]["source"]["kind"], "file");
}

#[test]
fn policies_from_the_control_plane_reach_the_proxy_they_select_and_follow_changes() {
    let dir = tempfile::tempdir().unwrap();
    let unrelated = policy_doc("other", OTHER_ID, "  ingress: []\n");
    std::fs::write(dir.path().join("other.yaml"), &unrelated).unwrap();
    std::fs::write(
        dir.path().join("server.yaml"),
        allow(CLIENT_ID, "from-client"),
    )
    .unwrap();
    let cp = serving_policies(dir.path());
    let p = start_pair(cp, None, "policy:\n  source: control-plane\n");
    assert!(allowed(p.a_out));
    let dump = p.b.config_dump();
    assert_eq!(dump["policy"]["source"]["kind"], "control-plane");
    assert_eq!(
        dump["policy"]["policies"], 1,
        "only the document selecting it"
    );
    let allow_labels = [("policy", "demo/server"), ("rule", "from-client")];
    assert_eq!(
        p.b.metric("inbound_tcp_authz_allow_total", &allow_labels),
        1.0
    );

    write_atomic(
        &dir.path().join("server.yaml"),
        &allow(OTHER_ID, "only-other"),
    );
    wait_until("the control plane's change applies", || !allowed(p.a_out));
    let deny = [("policy", "demo/server"), ("rule", ""), ("peer", CLIENT_ID)];
    assert!(p.b.metric("inbound_tcp_authz_deny_total", &deny) >= 1.0);
    let after = p.b.config_dump();
    assert_ne!(
        after["policy"]["source"]["version"],
        dump["policy"]["source"]["version"]
    );
}

/// The client is denied by `only-other`, and the default (`all-authenticated`)
/// would let it in: an emptied source must not.
fn assert_still_denied(p: &Mesh, reason: &str, version: &serde_json::Value) {
    wait_until("the emptied source is refused", || {
        reload_errors(&p.b, reason) >= 1.0
    });
    let deny = [("policy", "demo/server"), ("rule", ""), ("peer", CLIENT_ID)];
    let denials = p.b.metric("inbound_tcp_authz_deny_total", &deny);
    assert!(!allowed(p.a_out), "the last good policy still denies");
    assert!(p.b.metric("inbound_tcp_authz_deny_total", &deny) > denials);
    let dump = p.b.config_dump();
    assert_eq!(
        &dump["policy_version"], version,
        "the last good policy stays"
    );
    assert_eq!(dump["policy"]["policies"], 1);
    assert_eq!(dump["policy"]["last_error_reason"], reason);
    let err = dump["policy"]["last_error"].as_str().unwrap_or_default();
    assert!(
        err.contains(".palisade-allow-empty"),
        "the error says how: {err}"
    );
}

/// With the marker the removal is accepted: no policy, the default applies.
fn assert_emptied_on_purpose(p: &Mesh, marker: &Path) {
    let reloads = p.b.metric("policy_reloads_total", &[]);
    std::fs::write(marker, "").unwrap();
    wait_until("the marked removal applies", || {
        p.b.metric("policy_reloads_total", &[]) > reloads
    });
    let dump = p.b.config_dump();
    assert_eq!(dump["policy"]["policies"], 0);
    assert!(dump["policy"]["last_error"].is_null());
    assert!(
        allowed(p.a_out),
        "policy.default (all-authenticated) applies"
    );
}

/// A pair whose server reads a policy file (`whole_dir`: its directory)
/// that denies the client; the file, the pair and the policy's version.
fn denied_pair(whole_dir: bool) -> (PolicyFile, Mesh, serde_json::Value) {
    let policy = PolicyFile::new(&allow(OTHER_ID, "only-other"));
    let path = if whole_dir {
        policy.dir()
    } else {
        &policy.path
    };
    let p = start_pair(ControlPlane::start(), Some(path), "  debounce: 20ms\n");
    assert!(!allowed(p.a_out));
    let version = p.b.config_dump()["policy_version"].clone();
    (policy, p, version)
}

#[test]
fn a_policy_file_replaced_by_an_empty_directory_keeps_denying_until_the_marker_allows_it() {
    let (policy, p, version) = denied_pair(false);
    std::fs::remove_file(&policy.path).unwrap();
    std::fs::create_dir(&policy.path).unwrap();
    assert_still_denied(&p, "path_kind_changed", &version);
    assert_emptied_on_purpose(&p, &policy.dir().join(".palisade-allow-empty"));
}

#[test]
fn deleting_the_only_file_of_a_policy_directory_keeps_denying_until_the_marker_allows_it() {
    let (policy, p, version) = denied_pair(true);
    std::fs::remove_file(&policy.path).unwrap();
    assert_still_denied(&p, "emptied", &version);
    assert_emptied_on_purpose(&p, &policy.dir().join(".palisade-allow-empty"));
}

#[test]
fn touching_the_policy_file_reads_it_once_and_the_watcher_does_not_loop() {
    let policy = PolicyFile::new(&allow(CLIENT_ID, "from-client"));
    let file = &policy.path;
    let p = start_pair(ControlPlane::start(), Some(file), "  debounce: 20ms\n");
    let reads = || p.b.metric("policy_file_reads_total", &[]);
    let reloads = p.b.metric("policy_reloads_total", &[]);
    let before = reads();

    std::fs::read_to_string(file).unwrap();
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(reads(), before, "reading the file is no change");

    touch(file);
    wait_until("the touch is seen", || reads() > before);
    // Fifty debounce periods: a watcher woken by its own reads would have
    // read the file again and again by now.
    std::thread::sleep(Duration::from_secs(1));
    let settled = reads();
    assert!(settled <= before + 2.0, "{settled} reads after one touch");
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(reads(), settled, "no read without a change");
    assert_eq!(p.b.metric("policy_reloads_total", &[]), reloads);
    assert!(allowed(p.a_out));
}

/// A control plane serving the policies in `dir`.
fn serving_policies(dir: &Path) -> ControlPlane {
    ControlPlane::start_with(ControlPlaneSpec {
        extra_args: vec!["--policy-dir".into(), dir.display().to_string()],
        ..Default::default()
    })
}

/// A touch: open for writing, new mtime, close. Nothing changes.
fn touch(file: &Path) {
    let f = std::fs::OpenOptions::new().append(true).open(file).unwrap();
    f.set_modified(std::time::SystemTime::now()).unwrap();
}

#[test]
fn reading_or_touching_the_control_planes_policy_directory_does_not_make_it_reload_in_a_loop() {
    let policy = PolicyFile::new(&allow(CLIENT_ID, "from-client"));
    let cp = serving_policies(policy.dir());
    let reads = || cp.metric("policy_dir_reads_total");

    std::fs::read_to_string(&policy.path).unwrap();
    std::fs::read_dir(policy.dir()).unwrap().for_each(drop);
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(reads(), 0.0, "reading the directory is no change");

    touch(&policy.path);
    wait_until("the touch is seen", || reads() >= 1.0);
    // Ten debounce periods: a watcher woken by its own reads would have
    // read the directory again and again by now.
    std::thread::sleep(Duration::from_secs(1));
    let settled = reads();
    assert!(settled <= 2.0, "{settled} reads after one touch");
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(reads(), settled, "no read without a change");
    assert_eq!(
        cp.metric("policy_reload_errors_total{reason=\"invalid\"}"),
        0.0
    );
}

#[test]
fn emptying_the_control_planes_policy_directory_keeps_proxies_denying_until_the_marker_allows_it() {
    let policy = PolicyFile::new(&allow(OTHER_ID, "only-other"));
    let cp = serving_policies(policy.dir());
    let p = start_pair(cp, None, "policy:\n  source: control-plane\n");
    assert!(!allowed(p.a_out));

    let refused = "policy_reload_errors_total{reason=\"emptied\"}";
    std::fs::remove_file(&policy.path).unwrap();
    wait_until("the control plane refuses the empty directory", || {
        p.cp.metric(refused) >= 1.0
    });
    assert!(!allowed(p.a_out), "the proxy keeps the denying policy");
    assert_eq!(p.b.config_dump()["policy"]["policies"], 1);
    assert!(
        p.cp.log().contains(".palisade-allow-empty"),
        "the log says how"
    );
    // One refusal, not one per read of the directory.
    std::thread::sleep(Duration::from_secs(1));
    let settled = p.cp.metric(refused);
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(p.cp.metric(refused), settled, "the watcher does not loop");

    std::fs::write(policy.dir().join(".palisade-allow-empty"), "").unwrap();
    wait_until("the marked removal reaches the proxy", || {
        p.b.config_dump()["policy"]["policies"] == 0
    });
    assert!(
        allowed(p.a_out),
        "policy.default (all-authenticated) applies"
    );
}
