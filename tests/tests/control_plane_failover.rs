//! Proxies configured with two control-plane replicas (started from the same
//! state, so the same CA): killing the one in use under traffic fails no
//! request through the mesh, the proxies renew and long-poll through the
//! other at once, and a policy change on the survivor reaches them; with
//! neither up, the last good policy stays.

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use palisade_tests::cp::{ControlPlane, ControlPlaneSpec};
use palisade_tests::eventually;
use palisade_tests::policy::{policy_doc, write_atomic};
use palisade_tests::proxy::{echo_roundtrip, Echo, Proxy, ProxySpec, CLIENT_ID, SERVER_ID};

const OTHER_ID: &str = "spiffe://cluster.local/ns/demo/sa/other";

/// The server's policy: ingress from `peer` only.
fn allow(peer: &str) -> String {
    let body = format!(
        "  ingress:\n    - name: allowed\n      action: allow\n      from:\n        - identity: {peer}\n"
    );
    policy_doc("server", SERVER_ID, &body)
}

/// A replica serving `policies`, issuing 4-second SVIDs so that renewals
/// happen all through the test.
fn spec(policies: &Path) -> ControlPlaneSpec {
    ControlPlaneSpec {
        svid_ttl: "4s".into(),
        extra_args: vec!["--policy-dir".into(), policies.display().to_string()],
        ..Default::default()
    }
}

fn in_use(p: &Proxy, cp: &ControlPlane) -> f64 {
    let addr = cp.addr().to_string();
    p.metric("control_plane_in_use", &[("address", &addr)])
}

#[test]
fn killing_the_replica_in_use_fails_no_request_and_the_survivor_takes_over() {
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    for d in [&dir_a, &dir_b] {
        std::fs::write(d.path().join("server.yaml"), allow(CLIENT_ID)).unwrap();
    }
    let mut first = ControlPlane::start_with(spec(dir_a.path()));
    let mut second = first.replica(spec(dir_b.path()));
    assert_eq!(first.bundle_pem(), second.bundle_pem(), "one CA");

    let echo = Echo::start();
    let both = vec![first.addr(), second.addr()];
    let bundle = first.bundle_path();
    let mut server = ProxySpec::new(
        "server",
        first.addr(),
        &bundle,
        &first.join_token(SERVER_ID),
    );
    server.control_plane = both.clone();
    server.extra_yaml = "policy:\n  source: control-plane\n".into();
    let server_in = server.inbound(echo.addr, false);
    let mut client = ProxySpec::new(
        "client",
        first.addr(),
        &bundle,
        &first.join_token(CLIENT_ID),
    );
    client.control_plane = both;
    let entry = client.route(server_in, SERVER_ID);
    let server = Proxy::start_ready(server);
    let client = Proxy::start_ready(client);
    for p in [&server, &client] {
        eventually("the first replica in use", Duration::from_secs(10), || {
            (in_use(p, &first) == 1.0).then_some(())
        });
    }

    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let traffic = {
        let (stop, ok, failed) = (stop.clone(), ok.clone(), failed.clone());
        std::thread::spawn(move || {
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let msg = format!("request {i}");
                match echo_roundtrip(entry, msg.as_bytes()) {
                    Ok(back) if back == msg.as_bytes() => ok.fetch_add(1, Ordering::Relaxed),
                    _ => failed.fetch_add(1, Ordering::Relaxed),
                };
                i += 1;
                std::thread::sleep(Duration::from_millis(10));
            }
        })
    };
    std::thread::sleep(Duration::from_millis(500));
    let renewed = |p: &Proxy| p.metric("identity_cert_refresh_total", &[]);
    let before = [renewed(&server), renewed(&client)];
    first.kill();

    // Both renew through the survivor, more than once, with no failed attempt.
    for (p, before) in [(&server, before[0]), (&client, before[1])] {
        eventually(
            "renewals through the survivor",
            Duration::from_secs(20),
            || (renewed(p) >= before + 2.0 && in_use(p, &second) == 1.0).then_some(()),
        );
        assert_eq!(in_use(p, &first), 0.0);
        assert!(p.metric("control_plane_failovers_total", &[]) >= 1.0);
        assert_eq!(
            p.metric("identity_cert_refresh_failures_total", &[]),
            0.0,
            "{}",
            p.log()
        );
    }
    stop.store(true, Ordering::Relaxed);
    traffic.join().unwrap();
    let (ok, failed) = (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    assert_eq!(failed, 0, "{ok} requests went through");
    assert!(ok > 50, "the traffic ran: {ok} requests");

    // The server's policy long poll now parks on the survivor.
    let version = server.config_dump()["policy"]["source"]["version"].clone();
    write_atomic(&dir_b.path().join("server.yaml"), &allow(OTHER_ID));
    eventually(
        "the survivor's policy applies",
        Duration::from_secs(15),
        || {
            let allowed = echo_roundtrip(entry, b"ping").is_ok_and(|b| b == b"ping");
            (!allowed).then_some(())
        },
    );
    let applied = server.config_dump()["policy"]["source"]["version"].clone();
    assert_ne!(applied, version);

    // Neither up: renewals fail against both and are counted, and the last
    // good policy stays in force.
    second.kill();
    eventually("renewals failing", Duration::from_secs(15), || {
        (server.metric("identity_cert_refresh_failures_total", &[]) >= 1.0).then_some(())
    });
    let dump = server.config_dump();
    assert_eq!(dump["policy"]["source"]["version"], applied);
    assert!(dump["policy"]["last_error"].is_null(), "{dump}");
    assert!(!echo_roundtrip(entry, b"ping").is_ok_and(|b| b == b"ping"));
}
