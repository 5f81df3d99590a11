use std::sync::Arc;

use palisade_policy::Matched;
use serde_json::Value;

use super::*;

fn flow<'a>(http: Option<HttpFlow<'a>>) -> Flow<'a> {
    Flow {
        direction: Direction::Ingress,
        src: Endpoint {
            addr: "10.0.0.7:40112".parse().unwrap(),
            id: Some("spiffe://td/ns/shop/sa/api"),
        },
        dst: Endpoint {
            addr: "10.0.0.9:5432".parse().unwrap(),
            id: Some("spiffe://td/ns/shop/sa/db"),
        },
        http,
    }
}

#[test]
fn a_tcp_denial_is_network_activity_refuse_with_the_deciding_rule() {
    let matched = Matched::NoRule {
        policy: Arc::from("shop/db"),
    };
    let d = Denial {
        flow: flow(None),
        matched: &matched,
        http_status: None,
        revoked: false,
    };
    let v: Value = serde_json::from_str(&ocsf::denial(&d, "u1", 1_700_000_000_000)).unwrap();
    assert_eq!(v["class_uid"], 4001);
    assert_eq!(v["category_uid"], 4);
    assert_eq!(v["activity_id"], 5);
    assert_eq!(v["type_uid"], 400105);
    assert_eq!(v["action_id"], 2);
    assert_eq!(v["disposition_id"], 2);
    assert_eq!(v["time"], 1_700_000_000_000i64);
    assert_eq!(v["metadata"]["uid"], "u1");
    assert_eq!(v["metadata"]["product"]["name"], "Palisade");
    assert_eq!(v["metadata"]["profiles"][0], "security_control");
    assert_eq!(v["policy"]["name"], "shop/db");
    assert_eq!(v["firewall_rule"]["uid"], "shop/db");
    assert_eq!(v["src_endpoint"]["uid"], "spiffe://td/ns/shop/sa/api");
    assert_eq!(v["src_endpoint"]["ip"], "10.0.0.7");
    assert_eq!(v["dst_endpoint"]["port"], 5432);
    assert_eq!(v["connection_info"]["direction_id"], 1);
    assert!(v.get("http_request").is_none());
    assert!(v["unmapped"]["palisade"].get("reason").is_none());
}

#[test]
fn a_connection_closed_by_a_reload_is_network_activity_close_with_the_reason() {
    let matched = Matched::Rule {
        policy: Arc::from("shop/db"),
        rule: Arc::from("lockdown"),
    };
    let d = Denial {
        flow: flow(None),
        matched: &matched,
        http_status: None,
        revoked: true,
    };
    let v: Value = serde_json::from_str(&ocsf::denial(&d, "u5", 1)).unwrap();
    assert_eq!(v["class_uid"], 4001);
    assert_eq!(
        (v["activity_id"].as_u64(), v["activity_name"].as_str()),
        (Some(2), Some("Close"))
    );
    assert_eq!(v["type_uid"], 400102);
    assert_eq!(
        (v["action_id"].as_u64(), v["disposition_id"].as_u64()),
        (Some(2), Some(2))
    );
    assert_eq!(v["firewall_rule"]["uid"], "shop/db/lockdown");
    assert_eq!(v["unmapped"]["palisade"]["reason"], "policy_reload");
    let message = v["message"].as_str().unwrap();
    assert!(
        message.contains("closed: the reloaded policy denies it"),
        "{message}"
    );
}

#[test]
fn an_http_denial_is_http_activity_by_method_with_the_path() {
    let matched = Matched::Rule {
        policy: Arc::from("shop/db"),
        rule: Arc::from("reads"),
    };
    let d = Denial {
        flow: flow(Some(HttpFlow {
            method: "POST",
            path: "/v1/orders",
        })),
        matched: &matched,
        http_status: Some(403),
        revoked: false,
    };
    let v: Value = serde_json::from_str(&ocsf::denial(&d, "u2", 1)).unwrap();
    assert_eq!(v["class_uid"], 4002);
    assert_eq!(v["activity_id"], 6);
    assert_eq!(v["type_uid"], 400206);
    assert_eq!(v["http_request"]["http_method"], "POST");
    assert_eq!(v["http_request"]["url"]["path"], "/v1/orders");
    assert_eq!(v["firewall_rule"]["name"], "reads");
    assert_eq!(v["firewall_rule"]["uid"], "shop/db/reads");
    assert_eq!(v["unmapped"]["palisade"]["http_status"], 403);
}

#[test]
fn a_finding_carries_its_kind_flow_baseline_mode_and_action() {
    let f = Finding {
        kind: FindingKind::RateSpike,
        flow: flow(Some(HttpFlow {
            method: "GET",
            path: "/v1/users/{id}",
        })),
        baseline: Some(BaselineEntry {
            count: 420,
            first_seen: 10,
            last_seen: 20,
            rate_mean: 4.5,
            rate_stddev: 1.25,
        }),
        observed_rate: Some(80.0),
        mode: FindingMode::Protect,
        action: FindingAction::Throttled,
    };
    let v: Value = serde_json::from_str(&ocsf::finding(&f, "u3", 5)).unwrap();
    assert_eq!(v["class_uid"], 2004);
    assert_eq!(v["category_uid"], 2);
    assert_eq!(v["type_uid"], 200401);
    assert_eq!(v["finding_info"]["uid"], "u3");
    assert_eq!(v["finding_info"]["types"][0], "baseline.rate_spike");
    assert_eq!(v["action_id"], 2);
    let e = &v["evidences"][0];
    assert_eq!(e["src_endpoint"]["uid"], "spiffe://td/ns/shop/sa/api");
    assert_eq!(e["http_request"]["url"]["path"], "/v1/users/{id}");
    let p = &v["unmapped"]["palisade"];
    assert_eq!(p["mode"], "protect");
    assert_eq!(p["action"], "throttled");
    assert_eq!(p["baseline"]["count"], 420);
    assert_eq!(p["observed_rate"], 80.0);
}

#[test]
fn a_finding_without_a_baseline_entry_says_so() {
    let f = Finding {
        kind: FindingKind::NewPeer,
        flow: flow(None),
        baseline: None,
        observed_rate: None,
        mode: FindingMode::Monitor,
        action: FindingAction::Allowed,
    };
    let v: Value = serde_json::from_str(&ocsf::finding(&f, "u4", 5)).unwrap();
    assert_eq!(v["finding_info"]["types"][0], "baseline.new_peer");
    assert!(v["unmapped"]["palisade"]["baseline"].is_null());
    assert_eq!(v["action_id"], 1);
    assert_eq!(v["disposition_id"], 1);
}

#[test]
fn sinks_are_configured_by_type_with_defaults_and_unknown_fields_refused() {
    let cfg: EventsConfig = serde_saphyr::from_str(
        "sinks:\n  - type: file\n    path: /tmp/x.jsonl\n  - type: syslog\n    address: 127.0.0.1:514\n  - type: http\n    url: http://127.0.0.1:9/v1/events\n    format: ndjson\ndedup_window: 30s\n",
    )
    .unwrap();
    assert_eq!(cfg.sinks.len(), 3);
    assert_eq!(cfg.dedup_window, Duration::from_secs(30));
    assert_eq!(cfg.queue, 1024);
    assert!(matches!(
        &cfg.sinks[1],
        SinkConfig::Syslog { facility: 4, .. }
    ));
    assert!(matches!(
        &cfg.sinks[2],
        SinkConfig::Http {
            format: HttpFormat::Ndjson,
            batch: 100,
            ..
        }
    ));
    let err = serde_saphyr::from_str::<EventsConfig>("sinks:\n  - type: file\n    pth: /tmp/x\n")
        .unwrap_err()
        .to_string();
    assert!(err.contains("pth"), "{err}");
}

#[tokio::test]
async fn a_bad_sink_fails_the_start_with_a_reason() {
    let mut reg = Registry::default();
    let cfg = |s: SinkConfig| EventsConfig {
        sinks: vec![s],
        ..Default::default()
    };
    let e = Emitter::start(
        &cfg(SinkConfig::Http {
            url: "https://siem.example/v1".into(),
            format: HttpFormat::Json,
            batch: 10,
            flush_interval: Duration::from_secs(1),
            timeout: Duration::from_secs(1),
        }),
        &mut reg,
        None,
    )
    .err()
    .unwrap();
    assert!(e.to_string().contains("use http://"), "{e}");
    let e = Emitter::start(
        &cfg(SinkConfig::File {
            path: "/nonexistent-dir/events.jsonl".into(),
        }),
        &mut reg,
        None,
    )
    .err()
    .unwrap();
    assert!(
        e.to_string().contains("/nonexistent-dir/events.jsonl"),
        "{e}"
    );
}

#[test]
fn no_sinks_means_a_disabled_emitter() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let _g = rt.enter();
    let e = Emitter::start(&EventsConfig::default(), &mut Registry::default(), None).unwrap();
    assert!(!e.is_enabled());
}
