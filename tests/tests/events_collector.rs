//! The control plane as a security-events collector: workloads POST OCSF
//! events over mTLS, the operator reads the latest on the admin socket.

use std::sync::Arc;
use std::time::Duration;

use http::{Method, StatusCode};
use palisade_policy::Direction;
use palisade_policy::Matched;
use palisade_proxy::events::{
    ControlPlaneLink, Denial, Emitter, Endpoint, EventsConfig, Finding, FindingAction, FindingKind,
    FindingMode, Flow, SinkConfig,
};
use palisade_proxy::identity::{AttestationSource, CredentialsCell, IdentityManager};
use palisade_proxy::metrics::Metrics;
use palisade_tests::cp::ControlPlane;
use palisade_tests::pki;
use prometheus_client::registry::Registry;
use serde_json::{json, Value};

/// GET on the admin socket; the JSON body.
fn admin_get(cp: &ControlPlane, path: &str) -> Value {
    let (status, body) = cp.admin_get(path);
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).expect("a JSON body")
}

fn finding(kind: &str, port: u16) -> Value {
    json!({
        "class_uid": 2004,
        "category_uid": 2,
        "type_uid": 200401,
        "finding_info": {"uid": format!("f-{port}"), "types": [kind]},
        "evidences": [{"dst_endpoint": {"ip": "10.0.0.9", "port": port}}],
    })
}

#[tokio::test]
async fn workloads_post_events_over_mtls_and_the_admin_reads_the_latest() {
    let cp = ControlPlane::start();
    let id = "spiffe://cluster.local/ns/shop/sa/api";
    let (key, svid) = cp.issue_svid(id).await;
    let client = cp.client(Some(pki::identity(&svid, &key)));
    let mut conn = client.connect().await.unwrap();

    let batch = json!([
        finding("baseline.new_peer", 5432),
        finding("baseline.new_port", 6379)
    ]);
    let (status, body) = conn
        .request(
            Method::POST,
            "/v1/events",
            serde_json::to_vec(&batch).unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
    let answer: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(answer["accepted"], 2);

    let page = admin_get(&cp, "/v1/events");
    let events = page["events"].as_array().unwrap();
    assert_eq!(events.len(), 2);
    assert_eq!(events[0]["reporter"], id);
    assert_eq!(
        events[0]["event"]["finding_info"]["types"][0],
        "baseline.new_peer"
    );
    assert_eq!(
        events[1]["event"]["evidences"][0]["dst_endpoint"]["port"],
        6379
    );

    // Paging: only what came after `next`.
    let next = page["next"].as_u64().unwrap();
    let (status, _) = conn
        .request(
            Method::POST,
            "/v1/events",
            serde_json::to_vec(&json!([finding("baseline.rate_spike", 80)])).unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(status, StatusCode::OK);
    let newer = admin_get(&cp, &format!("/v1/events?since={next}"));
    let newer = newer["events"].as_array().unwrap();
    assert_eq!(newer.len(), 1);
    assert_eq!(
        newer[0]["event"]["finding_info"]["types"][0],
        "baseline.rate_spike"
    );
}

#[tokio::test]
async fn posting_events_needs_a_workload_svid() {
    let cp = ControlPlane::start();
    let mut conn = cp.client(None).connect().await.unwrap();
    let (status, _) = conn
        .request(
            Method::POST,
            "/v1/events",
            serde_json::to_vec(&json!([finding("baseline.new_peer", 1)])).unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(admin_get(&cp, "/v1/events")["events"]
        .as_array()
        .unwrap()
        .is_empty());
}

#[tokio::test]
async fn a_malformed_batch_is_refused_with_a_reason_and_counted() {
    let cp = ControlPlane::start();
    let (key, svid) = cp.issue_svid("spiffe://cluster.local/ns/shop/sa/api").await;
    let mut conn = cp
        .client(Some(pki::identity(&svid, &key)))
        .connect()
        .await
        .unwrap();
    let (status, body) = conn
        .request(
            Method::POST,
            "/v1/events",
            br#"[{"class_uid":2004},{"not":"ocsf"}]"#.to_vec(),
        )
        .await
        .unwrap();
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let err: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(err["error"], "bad_events");
    assert!(
        err["message"].as_str().unwrap().contains("event 1"),
        "{err}"
    );
    assert_eq!(cp.metric(r#"api_errors_total{kind="bad_events"}"#), 1.0);
    // Nothing of a refused batch is kept.
    assert!(admin_get(&cp, "/v1/events")["events"]
        .as_array()
        .unwrap()
        .is_empty());
}

#[tokio::test]
async fn the_proxys_control_plane_sink_delivers_its_events_to_the_collector() {
    let cp = ControlPlane::start();
    let id = "spiffe://cluster.local/ns/shop/sa/api";
    // The proxy's own identity flow: a join token, then the SVID in the cell.
    let client = || {
        palisade_proxy::identity::ControlPlane::new(
            cp.addr(),
            cp.trust_domain(),
            cp.bundle(),
            Duration::from_secs(10),
        )
    };
    let creds = CredentialsCell::default();
    IdentityManager {
        cp: Arc::new(client()),
        attestation: AttestationSource::JoinToken(cp.join_token(id)),
        accepted: Arc::from([cp.trust_domain()]),
        cell: creds.clone(),
        metrics: Arc::new(Metrics::new()),
    }
    .refresh()
    .await
    .expect("SVID");

    let cfg = EventsConfig {
        sinks: vec![SinkConfig::ControlPlane {
            batch: 100,
            flush_interval: Duration::from_secs(30),
        }],
        ..Default::default()
    };
    let mut reg = Registry::default();
    let link = ControlPlaneLink {
        cp: Arc::new(client()),
        creds,
    };
    let emitter = Emitter::start(&cfg, &mut reg, Some(link)).unwrap();
    let flow = Flow {
        direction: Direction::Egress,
        src: Endpoint {
            addr: "10.0.0.7:40112".parse().unwrap(),
            id: Some(id),
        },
        dst: Endpoint {
            addr: "10.0.0.9:5432".parse().unwrap(),
            id: Some("spiffe://cluster.local/ns/shop/sa/db"),
        },
        http: None,
    };
    let matched = Matched::NoRule {
        policy: Arc::from("shop/db"),
    };
    emitter.denied(&Denial {
        flow,
        matched: &matched,
        http_status: None,
    });
    emitter.finding(&Finding {
        kind: FindingKind::NewPort,
        flow,
        baseline: None,
        observed_rate: None,
        mode: FindingMode::Protect,
        action: FindingAction::Blocked,
    });
    emitter.flush(Duration::from_secs(20)).await;

    let page = admin_get(&cp, "/v1/events");
    let events = page["events"].as_array().unwrap();
    assert_eq!(events.len(), 2, "{page}");
    assert!(events.iter().all(|e| e["reporter"] == id));
    assert_eq!(events[0]["event"]["class_uid"], 4001);
    assert_eq!(events[0]["event"]["policy"]["name"], "shop/db");
    assert_eq!(events[1]["event"]["class_uid"], 2004);
    assert_eq!(
        events[1]["event"]["finding_info"]["types"][0],
        "baseline.new_port"
    );
    assert_eq!(events[1]["event"]["disposition_id"], 2);
}
