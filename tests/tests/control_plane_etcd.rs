//! Control-plane replicas sharing one real 3-member etcd cluster: a join
//! token raced at three replicas is spent exactly once, a policy applied
//! through one replica reaches a proxy on another, one etcd member killed
//! under traffic fails no proxy request, a lost quorum makes replicas not
//! ready and refuse issuance with a clear error until it is back (with
//! nothing lost), a replica with an empty disk comes back from the store,
//! and a replica killed in the middle of a CA rotation leaves a consistent
//! bundle that another replica finishes rotating. Replicas also reach etcd
//! over TLS with client certificates, and read the events and baselines
//! posted to each other.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use palisade_identity::api::{Attestation, SvidRequest};
use palisade_identity::client::ClientError;
use palisade_tests::cp::{ControlPlane, ControlPlaneSpec};
use palisade_tests::etcd::EtcdCluster;
use palisade_tests::eventually;
use palisade_tests::policy::policy_doc;
use palisade_tests::proxy::{echo_roundtrip, Mesh, CLIENT_ID, SERVER_ID};

const OTHER_ID: &str = "spiffe://cluster.local/ns/demo/sa/other";

fn replica(etcd: &EtcdCluster) -> ControlPlane {
    replica_with(etcd, ControlPlaneSpec::default())
}

fn replica_with(etcd: &EtcdCluster, spec: ControlPlaneSpec) -> ControlPlane {
    ControlPlane::start_with(ControlPlaneSpec {
        etcd: Some(etcd.store_spec()),
        ..spec
    })
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// The server's policy: ingress from `peer` only.
fn allow(peer: &str) -> String {
    let body = format!(
        "  ingress:\n    - name: from-peer\n      action: allow\n      from:\n        - identity: {peer}\n"
    );
    policy_doc("server", SERVER_ID, &body)
}

/// `palisadectl policy apply` of one file holding `text`, through `cp`.
fn apply(cp: &ControlPlane, text: &str) -> std::process::Output {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("server.yaml"), text).unwrap();
    let sock = cp.admin_socket();
    cp.palisadectl(&[
        "policy",
        "apply",
        dir.path().to_str().unwrap(),
        "--admin-socket",
        sock.to_str().unwrap(),
    ])
}

fn applied(cp: &ControlPlane, text: &str) {
    let out = apply(cp, text);
    assert!(
        out.status.success(),
        "policy apply failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn allowed(m: &Mesh) -> bool {
    echo_roundtrip(m.a_out, b"ping").is_ok_and(|b| b == b"ping")
}

fn request(token: &str) -> SvidRequest {
    let key = rcgen::KeyPair::generate().unwrap();
    SvidRequest {
        csr: palisade_tests::pki::csr_pem(&key),
        attestation: Attestation::JoinToken(token.to_owned()),
    }
}

fn error_code(r: &Result<palisade_identity::api::SvidResponse, ClientError>) -> String {
    match r {
        Err(ClientError::Status { error, .. }) => error.clone(),
        other => format!("{other:?}"),
    }
}

#[test]
fn a_token_raced_at_three_replicas_is_spent_exactly_once() {
    let etcd = EtcdCluster::start(3);
    let replicas = [replica(&etcd), replica(&etcd), replica(&etcd)];
    let bundles: Vec<String> = replicas.iter().map(ControlPlane::bundle_pem).collect();
    assert!(
        bundles.iter().all(|b| *b == bundles[0]),
        "every replica serves the one CA in the store"
    );
    let clients: Vec<_> = replicas.iter().map(|cp| cp.client(None)).collect();
    let rt = rt();
    for race in 0..25 {
        // Made through a different replica each time: all share the tokens.
        let token = replicas[race % 3].join_token("spiffe://cluster.local/ns/demo/sa/racer");
        let results = rt.block_on(async {
            let attempts = clients.iter().map(|c| {
                let req = request(&token);
                async move { c.issue(&req).await }
            });
            futures_util::future::join_all(attempts).await
        });
        let won = results.iter().filter(|r| r.is_ok()).count();
        assert_eq!(
            won, 1,
            "race {race}: exactly one replica issues: {results:?}"
        );
        for r in results.iter().filter(|r| r.is_err()) {
            assert_eq!(error_code(r), "join_token_replayed", "race {race}");
        }
    }
}

#[test]
fn a_policy_applied_through_one_replica_reaches_a_proxy_connected_to_another() {
    let etcd = EtcdCluster::start(3);
    let a = replica(&etcd);
    let b = replica(&etcd);
    applied(&a, &allow(OTHER_ID));
    let m = Mesh::start(b, |s| s.extra_yaml += "policy:\n  source: control-plane\n");
    eventually(
        "B's proxies get the denying policy",
        Duration::from_secs(15),
        || (!allowed(&m)).then_some(()),
    );

    applied(&a, &allow(CLIENT_ID));
    eventually(
        "the policy applied through A reaches the proxy on B",
        Duration::from_secs(15),
        || allowed(&m).then_some(()),
    );

    // `apply` refuses what `check` refuses, and nothing reaches the store.
    let out = apply(&a, &allow(CLIENT_ID).replace("ingress:", "ingres:"));
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("server.yaml:"),
        "located like `policy check`: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    std::thread::sleep(Duration::from_millis(500));
    assert!(allowed(&m), "the last good policy stays");
}

/// Traffic through the mesh on a thread; counts failed round trips.
struct Traffic {
    stop: Arc<AtomicBool>,
    failed: Arc<AtomicU64>,
    ok: Arc<AtomicU64>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Traffic {
    fn start(m: &Mesh) -> Traffic {
        let (stop, failed, ok) = (Arc::default(), Arc::default(), Arc::default());
        let thread = {
            let (stop, failed, ok): (Arc<AtomicBool>, Arc<AtomicU64>, Arc<AtomicU64>) =
                (Arc::clone(&stop), Arc::clone(&failed), Arc::clone(&ok));
            let addr = m.a_out;
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    match echo_roundtrip(addr, b"through the mesh") {
                        Ok(b) if b == b"through the mesh" => ok.fetch_add(1, Ordering::Relaxed),
                        other => {
                            eprintln!("request failed: {other:?}");
                            failed.fetch_add(1, Ordering::Relaxed)
                        }
                    };
                    std::thread::sleep(Duration::from_millis(10));
                }
            })
        };
        Traffic {
            stop,
            failed,
            ok,
            thread: Some(thread),
        }
    }

    /// Stops it: (succeeded, failed).
    fn finish(mut self) -> (u64, u64) {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.take().unwrap().join().unwrap();
        (
            self.ok.load(Ordering::Relaxed),
            self.failed.load(Ordering::Relaxed),
        )
    }
}

#[test]
fn killing_one_etcd_member_under_traffic_fails_no_proxy_request() {
    let mut etcd = EtcdCluster::start(3);
    let spec = ControlPlaneSpec {
        svid_ttl: "6s".into(),
        ..Default::default()
    };
    let m = Mesh::start(replica_with(&etcd, spec), |_| {});
    let traffic = Traffic::start(&m);
    std::thread::sleep(Duration::from_millis(500));
    for member in [0, 1] {
        etcd.kill(member);
        // Renewals (6 s SVIDs) and new tokens keep being served meanwhile.
        std::thread::sleep(Duration::from_secs(3));
        let rt = rt();
        rt.block_on(m.cp.issue_svid("spiffe://cluster.local/ns/demo/sa/late"));
        assert!(m.cp.ready(), "two members of three are a quorum");
        etcd.restart(member);
        etcd.wait_healthy(Duration::from_secs(20));
    }
    let (ok, failed) = traffic.finish();
    assert_eq!(failed, 0, "{failed} of {} requests failed", ok + failed);
    assert!(ok > 100, "traffic flowed: {ok}");
    assert!(
        m.cp.metric("svid_issued_total{method=\"renew\"}") >= 2.0,
        "the proxies renewed while members were down"
    );
}

#[test]
fn losing_quorum_makes_replicas_unready_and_refuse_issuance_then_everything_resumes() {
    let mut etcd = EtcdCluster::start(3);
    let a = replica(&etcd);
    applied(&a, &allow(CLIENT_ID));
    let m = Mesh::start(replica(&etcd), |s| {
        s.extra_yaml += "policy:\n  source: control-plane\n"
    });
    let b = &m.cp;
    let serial = b.bundle_pem();
    let early_token = a.join_token("spiffe://cluster.local/ns/demo/sa/early");
    assert!(allowed(&m));

    let traffic = Traffic::start(&m);
    etcd.lose_quorum();
    for cp in [&a, b] {
        eventually(
            "the replica reports not ready",
            Duration::from_secs(10),
            || (!cp.ready()).then_some(()),
        );
    }
    assert_eq!(b.metric("store_up"), 0.0);
    let (status, body) =
        palisadectl::local::http_request(b.metrics_addr(), "GET", "/readyz").unwrap();
    assert_eq!(status, 503);
    assert!(body.contains("state store is unavailable"), "{body}");

    let rt = rt();
    let refused = rt.block_on(b.client(None).issue(&request(&early_token)));
    match &refused {
        Err(ClientError::Status {
            status,
            error,
            message,
        }) => {
            assert_eq!((*status, error.as_str()), (503, "store_unavailable"));
            assert!(message.contains("etcd has no quorum"), "{message}");
        }
        other => panic!("issuance must be refused: {other:?}"),
    }
    assert!(b.metric("svid_rejected_total{reason=\"store_unavailable\"}") >= 1.0);
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        allowed(&m),
        "proxies keep serving on their SVIDs and policy"
    );

    etcd.restore_quorum();
    for cp in [&a, b] {
        eventually(
            "the replica is ready again",
            Duration::from_secs(15),
            || cp.ready().then_some(()),
        );
    }
    let (ok, failed) = traffic.finish();
    assert_eq!(failed, 0, "{failed} of {} requests failed", ok + failed);
    // Nothing lost: the token made before, the CA, the policy.
    let issued = rt
        .block_on(b.client(None).issue(&request(&early_token)))
        .expect("the token made before the outage is still good");
    assert_eq!(issued.spiffe_id, "spiffe://cluster.local/ns/demo/sa/early");
    assert_eq!(b.bundle_pem(), serial);
    assert!(allowed(&m));
    applied(&a, &allow(OTHER_ID));
    eventually("policies flow again", Duration::from_secs(15), || {
        (!allowed(&m)).then_some(())
    });
}

#[test]
fn a_replica_restarted_with_an_empty_disk_comes_back_from_the_store() {
    let etcd = EtcdCluster::start(3);
    let mut a = replica(&etcd);
    applied(&a, &allow(CLIENT_ID));
    let bundle = a.bundle_pem();
    let token = a.join_token("spiffe://cluster.local/ns/demo/sa/later");
    a.stop();
    std::fs::remove_dir_all(a.state_dir()).unwrap();
    a.start_again();
    assert_eq!(a.bundle_pem(), bundle, "the same CA, from the store");
    let rt = rt();
    let issued = rt
        .block_on(a.client(None).issue(&request(&token)))
        .expect("tokens come back too");
    assert!(issued.bundle.contains(bundle.trim()));
    let m = Mesh::start(a, |s| s.extra_yaml += "policy:\n  source: control-plane\n");
    assert_eq!(
        m.b.config_dump()["policy"]["policies"],
        1,
        "and the policies"
    );
    // The CA keys in etcd are sealed under the KEK, never in the clear.
    assert!(!std::fs::read_to_string(etcd.kek_file()).unwrap().is_empty());
    assert!(!m.cp.log().contains("BEGIN PRIVATE KEY"));
}

/// The serials in a bundle PEM, sorted.
fn serials(pem: &str) -> Vec<String> {
    let mut s: Vec<String> = palisade_identity::svid::certs_from_pem(pem.as_bytes())
        .unwrap()
        .iter()
        .map(|c| {
            let parsed = palisade_identity::svid::parse_cert(c).unwrap();
            hex_of(parsed.raw_serial())
        })
        .collect();
    s.sort();
    s
}

fn hex_of(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn count(log: &str, what: &str) -> usize {
    log.matches(what).count()
}

#[test]
fn killing_the_rotating_replica_mid_rotation_leaves_a_consistent_bundle_and_another_finishes() {
    let etcd = EtcdCluster::start(3);
    // Half-life at 10 s prepares a successor; it signs 2 s later (one SVID
    // lifetime): a rotation in two steps, by whichever replica leads.
    let spec = || ControlPlaneSpec {
        ca_ttl: "20s".into(),
        svid_ttl: "2s".into(),
        ..Default::default()
    };
    let mut a = replica_with(&etcd, spec());
    let mut b = replica_with(&etcd, spec());
    let prepared = "prepared its successor";
    let a_rotates = eventually(
        "one replica starts a rotation",
        Duration::from_secs(30),
        || {
            if count(&a.log(), prepared) > 0 {
                Some(true)
            } else if count(&b.log(), prepared) > 0 {
                Some(false)
            } else {
                None
            }
        },
    );
    let (rotating, other) = if a_rotates {
        (&mut a, &mut b)
    } else {
        (&mut b, &mut a)
    };
    // Killed between the steps (or while writing the first): the bundle
    // holds the old CA and its one successor, never a half-written CA.
    rotating.kill();
    eventually(
        "the surviving replica serves the old and the prepared CA",
        Duration::from_secs(20),
        || (serials(&other.bundle_pem()).len() == 2).then_some(()),
    );
    eventually(
        "the surviving replica finishes the rotation",
        Duration::from_secs(20),
        || (count(&other.log(), "prepared CA is now signing") > 0).then_some(()),
    );
    let rt = rt();
    let (_, svid) = rt.block_on(other.issue_svid("spiffe://cluster.local/ns/demo/sa/after"));
    let chain = palisade_identity::svid::certs_from_pem(svid.svid_chain.as_bytes()).unwrap();
    let leaf = palisade_identity::svid::parse_cert(&chain[0]).unwrap();
    let issuer_serials = serials(&svid.bundle);
    assert!(
        issuer_serials.len() >= 2,
        "the retired CA stays trusted: {issuer_serials:?}"
    );
    // The leaf is signed by the prepared CA, now active and in the bundle.
    let signers = palisade_identity::svid::certs_from_pem(svid.bundle.as_bytes())
        .unwrap()
        .into_iter()
        .filter(|ca| {
            let ca = palisade_identity::svid::parse_cert(ca).unwrap();
            leaf.verify_signature(Some(ca.public_key())).is_ok()
        })
        .count();
    assert_eq!(
        signers, 1,
        "exactly one CA in the bundle signed the new SVID"
    );
    // A replica starting now reads the same finished state.
    let c = replica_with(&etcd, spec());
    assert_eq!(serials(&c.bundle_pem()), serials(&other.bundle_pem()));
}

#[test]
fn replicas_reach_etcd_over_tls_with_their_client_certificate() {
    let etcd = EtcdCluster::start_tls(1);
    let a = replica(&etcd);
    let b = replica(&etcd);
    assert_eq!(a.bundle_pem(), b.bundle_pem(), "one CA, through TLS");
    let token = a.join_token("spiffe://cluster.local/ns/demo/sa/tls");
    let rt = rt();
    let issued = rt
        .block_on(b.client(None).issue(&request(&token)))
        .expect("a token made on A redeems on B");
    assert_eq!(issued.spiffe_id, "spiffe://cluster.local/ns/demo/sa/tls");
    assert!(a.ready() && b.ready());
}

#[test]
fn events_and_baselines_posted_to_one_replica_are_read_on_another() {
    let etcd = EtcdCluster::start(3);
    let a = replica(&etcd);
    let b = replica(&etcd);
    let id = "spiffe://cluster.local/ns/demo/sa/reporter";
    let rt = rt();
    rt.block_on(async {
        let (key, svid) = a.issue_svid(id).await;
        let mut conn = a
            .client(Some(palisade_tests::pki::identity(&svid, &key)))
            .connect()
            .await
            .unwrap();
        let events = serde_json::json!([{"class_uid": 2004, "n": 1}, {"class_uid": 2004, "n": 2}]);
        let accepted = conn
            .post_events(serde_json::to_vec(&events).unwrap())
            .await
            .unwrap();
        assert_eq!(accepted.accepted, 2);
        let snap = palisade_policy::baseline::Snapshot::empty(
            palisade_policy::SpiffeId::parse(id).unwrap(),
            10_000,
            1,
        );
        conn.post_baseline("pod-0", snap.to_json().into_bytes())
            .await
            .unwrap();
    });

    let (status, body) = b.admin_get("/v1/events");
    assert_eq!(status, 200, "{body}");
    let page: serde_json::Value = serde_json::from_str(&body).unwrap();
    let got = page["events"].as_array().unwrap();
    assert_eq!(got.len(), 2, "{body}");
    assert_eq!(got[0]["reporter"], id);
    assert_eq!(got[1]["event"]["n"], 2);
    let (_, again) = b.admin_get(&format!("/v1/events?since={}", page["next"]));
    assert!(again.contains("\"events\":[]"), "paged past them: {again}");

    let (status, body) = b.admin_get(&format!("/v1/baselines?identity={id}"));
    assert_eq!(status, 200, "{body}");
    assert!(body.contains(id), "{body}");
}
