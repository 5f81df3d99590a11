//! The control plane aggregates learned baselines: each sidecar POSTs its
//! cumulative snapshot over mTLS, the latest per instance is kept and
//! persisted, and the operator reads them merged per identity.

use std::sync::Arc;
use std::time::Duration;

use palisade_policy::baseline::{Entry, FlowKey, FlowPeer, Protocol, RateProfile, Route, Snapshot};
use palisade_policy::{Direction, SpiffeId};
use palisade_proxy::identity::{
    report_baseline, AttestationSource, CredentialsCell, IdentityManager,
};
use palisade_proxy::metrics::Metrics;
use palisade_tests::cp::ControlPlane;
use serde_json::Value;

const API: &str = "spiffe://cluster.local/ns/shop/sa/api";
const DB: &str = "spiffe://cluster.local/ns/shop/sa/db";

fn id(s: &str) -> SpiffeId {
    SpiffeId::parse(s).unwrap()
}

/// `identity`'s baseline: egress to db on 5432 `count` times, and on 8080
/// `GET /v1/users/{id}` `gets` times (when nonzero).
fn snapshot(identity: &str, count: u64, gets: u64) -> Snapshot {
    let mut snap = Snapshot::empty(id(identity), 10_000, 1_800_000_000_000);
    let entry = |port, protocol, route, count| Entry {
        flow: FlowKey {
            direction: Direction::Egress,
            peer: FlowPeer::Identity(id(DB)),
            port,
            protocol,
            route,
        },
        count,
        first_seen: 1_700_000_000_000,
        last_seen: 1_800_000_000_000,
        rate: RateProfile {
            mean: 1.0,
            variance: 0.0,
            buckets: 5,
            bucket: 180_000_000,
            open: 0,
            over: 0,
        },
    };
    snap.entries
        .push(entry(5432, Protocol::Opaque, None, count));
    if gets > 0 {
        let route = Route {
            method: "GET".into(),
            template: "/v1/users/{id}".into(),
        };
        snap.entries
            .push(entry(8080, Protocol::Http, Some(route), gets));
    }
    // Re-read, so the entries are in the order and shape the proxy writes.
    Snapshot::from_json(snap.to_json().as_bytes(), 100).unwrap()
}

fn counts(snap: &Value) -> Vec<(u64, u64)> {
    snap["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["flow"]["port"].as_u64().unwrap(),
                e["count"].as_u64().unwrap(),
            )
        })
        .collect()
}

fn merged(cp: &ControlPlane, identity: &str) -> Value {
    let (status, body) = cp.admin_get(&format!("/v1/baselines?identity={identity}"));
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

#[tokio::test]
async fn two_instances_merge_and_a_repost_replaces_its_own_snapshot() {
    let mut cp = ControlPlane::start();
    let api = cp.svid_client(API).await;
    let post = |instance: &'static str, snap: Snapshot| {
        let api = api.clone();
        async move {
            api.connect()
                .await
                .unwrap()
                .post_baseline(instance, snap.to_json().into_bytes())
                .await
                .unwrap()
        }
    };
    assert_eq!(post("api-0", snapshot(API, 3, 0)).await.entries, 1);
    assert_eq!(post("api-1", snapshot(API, 4, 2)).await.entries, 2);
    assert_eq!(counts(&merged(&cp, API)), [(5432, 7), (8080, 2)]);

    // Cumulative: api-0's newer snapshot replaces its older one.
    post("api-0", snapshot(API, 10, 0)).await;
    assert_eq!(counts(&merged(&cp, API)), [(5432, 14), (8080, 2)]);

    // The list holds one merged baseline per identity.
    let (status, body) = cp.admin_get("/v1/baselines");
    assert_eq!(status, 200);
    let all: Vec<Value> = serde_json::from_str(&body).unwrap();
    assert_eq!(all.len(), 1);
    assert_eq!(all[0]["identity"], API);

    // Persisted under the state dir: a restart keeps them.
    cp.restart();
    assert_eq!(counts(&merged(&cp, API)), [(5432, 14), (8080, 2)]);
}

#[tokio::test]
async fn a_workload_cannot_report_another_identitys_baseline() {
    let cp = ControlPlane::start();
    let db = cp.svid_client(DB).await;
    let err = db
        .connect()
        .await
        .unwrap()
        .post_baseline("db-0", snapshot(API, 1, 0).to_json().into_bytes())
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("baseline_identity_mismatch"),
        "{err}"
    );
    assert_eq!(
        cp.metric(r#"api_errors_total{kind="baseline_identity_mismatch"}"#),
        1.0
    );
    let (status, body) = cp.admin_get(&format!("/v1/baselines?identity={API}"));
    assert_eq!(status, 404, "{body}");
    assert_eq!(cp.admin_get("/v1/baselines").1, "[]");
}

#[tokio::test]
async fn a_bad_instance_or_snapshot_is_refused_with_a_reason() {
    let cp = ControlPlane::start();
    let api = cp.svid_client(API).await;
    let mut conn = api.connect().await.unwrap();
    let err = conn
        .post_baseline("../x", snapshot(API, 1, 0).to_json().into_bytes())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("bad_instance"), "{err}");
    let err = conn
        .post_baseline("api-0", b"{\"version\":1,".to_vec())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("bad_baseline"), "{err}");
    assert_eq!(cp.admin_get("/v1/baselines").1, "[]");
}

#[tokio::test]
async fn the_sidecar_reports_its_baseline_with_its_own_svid() {
    let cp = ControlPlane::start();
    let client = Arc::new(palisade_proxy::identity::ControlPlane::new(
        cp.addr(),
        cp.trust_domain(),
        cp.bundle(),
        Duration::from_secs(10),
    ));
    let creds = CredentialsCell::default();
    let snap = snapshot(API, 5, 1);
    // Before the first SVID there is nothing to authenticate with.
    assert!(report_baseline(&client, &creds, "api-0", &snap)
        .await
        .is_err());
    IdentityManager {
        cp: client.clone(),
        attestation: AttestationSource::JoinToken(cp.join_token(API)),
        accepted: Arc::from([cp.trust_domain()]),
        cell: creds.clone(),
        metrics: Arc::new(Metrics::new()),
    }
    .refresh()
    .await
    .expect("SVID");
    let kept = report_baseline(&client, &creds, "api-0", &snap)
        .await
        .unwrap();
    assert_eq!(kept, 2);
    assert_eq!(counts(&merged(&cp, API)), [(5432, 5), (8080, 1)]);
}
