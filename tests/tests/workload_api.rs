//! The SPIFFE Workload API as an app sees it: py-spiffe (PyPI `spiffe`, an
//! independent client) and raw grpcio calls against a real sidecar and
//! control plane. The app's SVID verifies against its bundle, is for the
//! sidecar's identity but with a key of its own, follows every rotation,
//! and a call without the security header is refused.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use palisade_tests::cp::{ControlPlane, ControlPlaneSpec};
use palisade_tests::eventually;
use palisade_tests::proxy::{Echo, Proxy, ProxySpec, SERVER_ID};
use serde_json::Value;

/// A sidecar serving the Workload API on a socket in its own temp dir, with
/// an inbound listener where it presents its own SVID.
struct App {
    proxy: Proxy,
    socket: PathBuf,
    inbound: std::net::SocketAddr,
    _echo: Echo,
    _dir: tempfile::TempDir,
}

impl App {
    fn start(cp: &ControlPlane) -> App {
        let dir = tempfile::tempdir().expect("tempdir");
        let socket = dir.path().join("spiffe/workload.sock");
        let echo = Echo::start();
        let mut spec = ProxySpec::new(
            "sidecar",
            cp.addr(),
            &cp.bundle_path(),
            &cp.join_token(SERVER_ID),
        );
        let inbound = spec.inbound(echo.addr, false);
        spec.extra_yaml = format!("workload_api:\n  socket: {}\n", socket.display());
        let proxy = Proxy::start_ready(spec);
        eventually("the app's first SVID", Duration::from_secs(20), || {
            (proxy.metric("workload_api_svid_refresh_total", &[]) >= 1.0).then_some(())
        });
        App {
            proxy,
            socket,
            inbound,
            _echo: echo,
            _dir: dir,
        }
    }

    /// tests/scripts/workload_api_client.py with `args`, the socket in
    /// `SPIFFE_ENDPOINT_SOCKET` as an app gets it.
    fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new("python3");
        c.arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/workload_api_client.py"))
            .args(args)
            .env(
                "SPIFFE_ENDPOINT_SOCKET",
                format!("unix://{}", self.socket.display()),
            );
        c
    }

    /// Starts the client and waits until it prints `ready`.
    fn start_client(&self, args: &[&str]) -> Child {
        let mut child = self
            .command(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("python3 runs");
        let mut first = String::new();
        BufReader::new(child.stdout.as_mut().unwrap())
            .read_line(&mut first)
            .unwrap();
        if first.trim() != "ready" {
            let out = child.wait_with_output().unwrap();
            panic!("{args:?}: {first}{}", String::from_utf8_lossy(&out.stderr));
        }
        child
    }

    /// Runs the client to the end; its JSON report.
    fn client(&self, args: &[&str]) -> Value {
        let out = self.command(args).output().expect("python3 runs");
        self.report(args, out)
    }

    fn report(&self, args: &[&str], out: Output) -> Value {
        assert!(
            out.status.success(),
            "workload_api_client.py {args:?} failed (needs `pip install spiffe`): {}\n----- sidecar log -----\n{}",
            String::from_utf8_lossy(&out.stderr),
            self.proxy.log()
        );
        let stdout = String::from_utf8_lossy(&out.stdout);
        let json = stdout.lines().last().unwrap_or_default();
        serde_json::from_str(json).unwrap_or_else(|e| panic!("{e}: {stdout}"))
    }
}

#[test]
fn the_app_gets_an_svid_for_the_sidecars_identity_with_its_own_key_that_verifies_against_the_bundle(
) {
    let cp = ControlPlane::start();
    let app = App::start(&cp);
    let r = app.client(&["fetch", &app.inbound.to_string()]);

    assert_eq!(r["spiffe_id"], SERVER_ID, "{r}");
    assert_eq!(r["leaf_uri_sans"], serde_json::json!([SERVER_ID]), "{r}");
    assert_eq!(r["chain_verifies"], "ok", "{r}");
    assert_eq!(
        r["key_spki_sha256"], r["leaf_spki_sha256"],
        "the private key handed out is the leaf's: {r}"
    );
    assert_eq!(
        r["bundle_trust_domains"],
        serde_json::json!(["cluster.local"]),
        "{r}"
    );
    // The same identity as the sidecar presents to its peers, another key.
    assert_eq!(
        r["sidecar"]["uri_sans"],
        serde_json::json!([SERVER_ID]),
        "{r}"
    );
    assert_ne!(
        r["sidecar"]["spki_sha256"], r["key_spki_sha256"],
        "the app must not get the sidecar's key: {r}"
    );
    assert!(app.proxy.metric("workload_api_svids_served_total", &[]) >= 1.0);
    assert!(app.proxy.metric("workload_api_bundles_served_total", &[]) >= 1.0);
}

#[test]
fn an_open_stream_receives_a_new_svid_with_a_new_key_on_every_rotation() {
    let cp = ControlPlane::start_with(ControlPlaneSpec {
        svid_ttl: "4s".into(),
        ..Default::default()
    });
    let app = App::start(&cp);
    let r = app.client(&["rotations", "3", "30"]);

    let svids = r["svids"].as_array().expect("a list of SVIDs");
    assert_eq!(svids.len(), 3, "three distinct SVIDs on one stream: {r}");
    assert_eq!(r["errors"], serde_json::json!([]), "{r}");
    let keys: std::collections::BTreeSet<&str> = svids
        .iter()
        .map(|s| s["key_spki_sha256"].as_str().unwrap())
        .collect();
    for s in svids {
        assert_eq!(s["spiffe_id"], SERVER_ID, "{s}");
        assert_eq!(s["chain_verifies"], "ok", "{s}");
        assert_eq!(s["key_spki_sha256"], s["leaf_spki_sha256"], "{s}");
    }
    assert_eq!(keys.len(), 3, "each rotation brings a new key: {r}");
    assert!(
        app.proxy.metric("identity_cert_refresh_total", &[]) >= 3.0,
        "the sidecar rotated as often"
    );
    eventually(
        "the stream to close with the client",
        Duration::from_secs(10),
        || {
            let open = app
                .proxy
                .metric("workload_api_streams", &[("method", "FetchX509SVID")]);
            (open == 0.0).then_some(())
        },
    );
}

#[test]
fn an_open_bundle_stream_stays_quiet_while_svids_rotate_under_the_same_ca() {
    let cp = ControlPlane::start_with(ControlPlaneSpec {
        svid_ttl: "4s".into(),
        ..Default::default()
    });
    let app = App::start(&cp);
    let rotations = || app.proxy.metric("workload_api_svid_refresh_total", &[]);
    let before = rotations();
    // Waits 10 s for a second message.
    let r = app.client(&["bundles", "2", "10"]);

    assert_eq!(
        r["bundles"],
        serde_json::json!([{"spiffe://cluster.local": 1}]),
        "{r}"
    );
    assert_eq!(r["error"], "DEADLINE_EXCEEDED", "{r}");
    assert!(
        rotations() >= before + 3.0,
        "the app's SVID rotated meanwhile"
    );
    assert_eq!(
        app.proxy.metric("workload_api_bundles_served_total", &[]),
        1.0
    );
}

#[test]
fn a_call_without_the_security_header_is_refused_and_counted() {
    let cp = ControlPlane::start();
    let app = App::start(&cp);
    let r = app.client(&["raw"]);

    assert_eq!(r["no_header"]["code"], "INVALID_ARGUMENT", "{r}");
    assert!(
        r["no_header"]["details"]
            .as_str()
            .unwrap()
            .contains("workload.spiffe.io"),
        "{r}"
    );
    assert_eq!(r["header_false"]["code"], "INVALID_ARGUMENT", "{r}");
    assert!(r["with_header_bytes"].as_u64().unwrap() > 200, "{r}");
    assert_eq!(r["jwt"]["code"], "UNIMPLEMENTED", "{r}");
    let refusals = |reason| {
        app.proxy
            .metric("workload_api_refusals_total", &[("reason", reason)])
    };
    assert_eq!(refusals("missing_security_header"), 2.0);
    assert_eq!(refusals("unimplemented"), 1.0);
    assert_eq!(r["broken_framing_closed"], true, "{r}");
    assert_eq!(refusals("malformed_http2"), 1.0);
}

#[test]
fn the_socket_is_world_connectable_only_the_sidecar_can_replace_it_and_drain_removes_it() {
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};
    let cp = ControlPlane::start();
    let mut app = App::start(&cp);
    let meta = std::fs::metadata(&app.socket).unwrap();
    assert!(meta.file_type().is_socket());
    assert_eq!(meta.permissions().mode() & 0o777, 0o666);
    let dir = std::fs::metadata(app.socket.parent().unwrap()).unwrap();
    assert_eq!(dir.permissions().mode() & 0o777, 0o755);

    // A stream open across the drain ends cleanly instead of holding it up.
    let args = ["hold"];
    let holder = app.start_client(&args);
    assert_eq!(
        app.proxy
            .metric("workload_api_streams", &[("method", "FetchX509SVID")]),
        1.0
    );
    let status = app
        .proxy
        .child
        .terminate(Duration::from_secs(10))
        .expect("the sidecar exits after drain");
    assert!(status.success(), "{status}");
    assert!(!app.socket.exists(), "the socket is removed on drain");
    let r = app.report(&args, holder.wait_with_output().unwrap());
    assert_eq!(r["ended"], "OK", "{r}");
}
