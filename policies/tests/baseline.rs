//! The learned baseline: templates, learning status, deviations, rate
//! spikes, the cap, snapshots and merges. Time is passed in; nothing sleeps.

use std::borrow::Cow;
use std::net::IpAddr;
use std::time::Duration;

use palisade_policy::baseline::{
    is_id_segment, template, Action, Baseline, BaselineMode, BaselineSettings, Check,
    DeviationKind, FlowPeer, FlowRef, Outcome, Protocol, RateSpikeSettings, Snapshot,
    SnapshotError, Status,
};
use palisade_policy::{Direction, HttpInfo, Peer, SpiffeId};

const API: &str = "spiffe://cluster.local/ns/shop/sa/api";
const FRONTEND: &str = "spiffe://cluster.local/ns/shop/sa/frontend";
const DB: &str = "spiffe://cluster.local/ns/shop/sa/db";

fn id(s: &str) -> SpiffeId {
    SpiffeId::parse(s).unwrap()
}

/// 1 s buckets, 10 s to stable, a spike after 5 buckets of warm-up held
/// for 2 buckets above max(mean + 3σ, 10).
fn settings() -> BaselineSettings {
    BaselineSettings {
        bucket: Duration::from_secs(1),
        stable_after: Duration::from_secs(10),
        rate_spike: RateSpikeSettings {
            k: 3.0,
            floor: 10,
            window: 2,
            warmup: 5,
            alpha: 0.2,
        },
        ..Default::default()
    }
}

fn conn<'a>(dir: Direction, peer: &'a SpiffeId, port: u16, protocol: Protocol) -> FlowRef<'a> {
    FlowRef {
        direction: dir,
        peer: Peer::Identity(peer),
        port,
        protocol,
        http: None,
    }
}

fn req<'a>(peer: &'a SpiffeId, port: u16, method: &'a str, path: &'a str) -> FlowRef<'a> {
    FlowRef {
        direction: Direction::Ingress,
        peer: Peer::Identity(peer),
        port,
        protocol: Protocol::Http,
        http: Some(HttpInfo {
            method,
            path,
            host: None,
        }),
    }
}

fn kind(c: &Check) -> Option<DeviationKind> {
    c.deviation().map(|d| d.kind)
}

#[test]
fn identifiers_collapse_to_id_and_words_never_do() {
    let cases = [
        ("/v1/users/123", "/v1/users/{id}"),
        (
            "/api/v2/orders/42/items/7",
            "/api/v2/orders/{id}/items/{id}",
        ),
        (
            "/v1/users/3f2504e0-4f89-11d3-9a0c-0305e82c3301",
            "/v1/users/{id}",
        ),
        ("/blobs/9f86d081884c7d65", "/blobs/{id}"),
        ("/blobs/DEADBEEF", "/blobs/{id}"),
        ("/t/aZ3kP9qL2mX7vB4n", "/t/{id}"),
        ("/t/QwErTyUiOpAsDfGhJk", "/t/{id}"),
        ("/v1/users/123?expand=orders", "/v1/users/{id}"),
        ("/", "/"),
        ("/v1/", "/v1/"),
    ];
    for (path, want) in cases {
        assert_eq!(template(path), want, "{path}");
    }
    for word in [
        "v1",
        "v2",
        "api",
        "users",
        "healthz",
        "getUserProfileById",
        "2fa",
        "deadbee",
        "oauth2callback",
        "authentication2fa",
        "feedback",
        "well-known",
    ] {
        assert!(!is_id_segment(word), "{word} must stay a word");
    }
    assert!(matches!(template("/v1/users/me"), Cow::Borrowed(_)));
}

#[test]
fn learn_records_each_flow_once_with_templates_and_counts() {
    let b = Baseline::new(id(API), settings());
    let fe = id(FRONTEND);
    let t0 = 1_000_000;
    let c = b.observe(
        &conn(Direction::Ingress, &fe, 8080, Protocol::Http),
        BaselineMode::Learn,
        t0,
    );
    assert_eq!(c.outcome, Outcome::Learned);
    for (i, path) in ["/v1/users/1", "/v1/users/2", "/v1/users/3"]
        .iter()
        .enumerate()
    {
        let c = b.observe(
            &req(&fe, 8080, "GET", path),
            BaselineMode::Learn,
            t0 + i as u64,
        );
        let want = if i == 0 {
            Outcome::Learned
        } else {
            Outcome::Known
        };
        assert_eq!(c.outcome, want, "{path}");
        assert_eq!(c.action, Action::Pass);
    }
    b.observe(
        &req(&fe, 8080, "POST", "/v1/users"),
        BaselineMode::Learn,
        t0 + 5,
    );
    assert_eq!(b.len(), 3);
    let snap = b.snapshot(t0 + 10);
    let got: Vec<String> = snap
        .entries
        .iter()
        .map(|e| format!("{} x{}", e.flow, e.count))
        .collect();
    assert_eq!(
        got,
        [
            format!("ingress from {FRONTEND} port 8080/http x1"),
            format!("ingress from {FRONTEND} port 8080/http GET /v1/users/{{id}} x3"),
            format!("ingress from {FRONTEND} port 8080/http POST /v1/users x1"),
        ]
    );
    let users = &snap.entries[1];
    assert_eq!((users.first_seen, users.last_seen), (t0, t0 + 2));
}

#[test]
fn plaintext_peers_are_learned_by_their_cidr_bucket() {
    let b = Baseline::new(id(API), settings());
    let flow = |ip: &str| FlowRef {
        direction: Direction::Ingress,
        peer: Peer::Address(ip.parse::<IpAddr>().unwrap()),
        port: 9000,
        protocol: Protocol::Opaque,
        http: None,
    };
    assert_eq!(
        b.observe(&flow("10.1.2.3"), BaselineMode::Learn, 1).outcome,
        Outcome::Learned
    );
    assert_eq!(
        b.observe(&flow("10.1.2.200"), BaselineMode::Learn, 2)
            .outcome,
        Outcome::Known
    );
    assert_eq!(
        b.observe(&flow("::ffff:10.1.2.9"), BaselineMode::Learn, 3)
            .outcome,
        Outcome::Known
    );
    assert_eq!(
        b.observe(&flow("10.1.3.1"), BaselineMode::Learn, 4).outcome,
        Outcome::Learned
    );
    let peers: Vec<FlowPeer> = b
        .snapshot(5)
        .entries
        .into_iter()
        .map(|e| e.flow.peer)
        .collect();
    assert_eq!(
        peers,
        [
            FlowPeer::Cidr("10.1.2.0/24".parse().unwrap()),
            FlowPeer::Cidr("10.1.3.0/24".parse().unwrap())
        ]
    );
}

#[test]
fn off_records_nothing() {
    let b = Baseline::new(id(API), settings());
    let fe = id(FRONTEND);
    let c = b.observe(
        &conn(Direction::Ingress, &fe, 8080, Protocol::Opaque),
        BaselineMode::Off,
        1,
    );
    assert_eq!(c.outcome, Outcome::Off);
    assert!(b.is_empty());
}

#[test]
fn status_moves_from_learning_to_stabilizing_to_stable_and_a_new_flow_resets_it() {
    let b = Baseline::new(
        id(API),
        BaselineSettings {
            auto_promote: true,
            ..settings()
        },
    );
    let fe = id(FRONTEND);
    let learn = BaselineMode::Learn;
    assert_eq!(b.status(0), Status::Learning, "nothing learned yet");
    assert_eq!(
        b.status(1_000_000),
        Status::Learning,
        "nothing learned, however long"
    );
    b.observe(
        &conn(Direction::Ingress, &fe, 8080, Protocol::Opaque),
        learn,
        10_000,
    );
    assert_eq!(b.status(11_999), Status::Learning);
    assert_eq!(
        b.status(12_000),
        Status::Stabilizing,
        "two 1 s buckets without a new flow"
    );
    // A known flow changes nothing.
    b.observe(
        &conn(Direction::Ingress, &fe, 8080, Protocol::Opaque),
        learn,
        15_000,
    );
    assert_eq!(b.status(19_999), Status::Stabilizing);
    assert!(!b.should_promote(learn, 19_999));
    assert_eq!(b.status(20_000), Status::Stable, "10 s without a new flow");
    assert!(b.should_promote(learn, 20_000));
    assert!(
        !b.should_promote(BaselineMode::Monitor, 20_000),
        "only learn promotes"
    );
    b.observe(
        &conn(Direction::Ingress, &fe, 8081, Protocol::Opaque),
        learn,
        21_000,
    );
    assert_eq!(b.status(21_000), Status::Learning, "a new flow resets it");
    let summary = serde_json::to_value(b.summary(21_000)).unwrap();
    assert_eq!(summary["status"], "learning");
    assert_eq!(summary["entries"], 2);
    assert_eq!(summary["last_new_flow"], 21_000);
    let no_auto = Baseline::new(id(API), settings());
    no_auto.observe(
        &conn(Direction::Ingress, &fe, 8080, Protocol::Opaque),
        learn,
        0,
    );
    assert_eq!(no_auto.status(60_000), Status::Stable);
    assert!(
        !no_auto.should_promote(learn, 60_000),
        "auto_promote is off"
    );
}

/// api learned: ingress from frontend on 8080 (HTTP, GET /v1/users/{id}),
/// egress to db on 5432 (opaque).
fn learned() -> Baseline {
    let b = Baseline::new(id(API), settings());
    let (fe, db) = (id(FRONTEND), id(DB));
    b.observe(
        &conn(Direction::Ingress, &fe, 8080, Protocol::Http),
        BaselineMode::Learn,
        0,
    );
    b.observe(
        &req(&fe, 8080, "GET", "/v1/users/1"),
        BaselineMode::Learn,
        0,
    );
    b.observe(
        &conn(Direction::Egress, &db, 5432, Protocol::Opaque),
        BaselineMode::Learn,
        0,
    );
    b
}

#[test]
fn monitor_reports_each_kind_of_new_flow_once_and_lets_it_pass() {
    let b = learned();
    let (fe, db) = (id(FRONTEND), id(DB));
    let mon = BaselineMode::Monitor;
    let checks = [
        // db never connected in to api: a new peer (in that direction).
        b.observe(
            &conn(Direction::Ingress, &db, 8080, Protocol::Http),
            mon,
            10,
        ),
        b.observe(
            &conn(Direction::Egress, &db, 6379, Protocol::Opaque),
            mon,
            10,
        ),
        b.observe(&req(&fe, 8080, "DELETE", "/v1/users/1"), mon, 10),
        b.observe(&req(&fe, 8080, "GET", "/v1/users/2"), mon, 10),
        b.observe(
            &conn(Direction::Ingress, &fe, 8080, Protocol::Http),
            mon,
            10,
        ),
    ];
    let kinds: Vec<_> = checks.iter().map(kind).collect();
    assert_eq!(
        kinds,
        [
            Some(DeviationKind::NewPeer),
            Some(DeviationKind::NewPort),
            Some(DeviationKind::NewRoute),
            None,
            None
        ]
    );
    assert!(checks.iter().all(|c| c.action == Action::Pass));
    // What each was compared with.
    assert!(checks[0].deviation().unwrap().compared.is_none());
    let port = checks[1].deviation().unwrap().compared.as_ref().unwrap();
    assert_eq!(
        (port.flow.port, port.flow.direction),
        (5432, Direction::Egress)
    );
    let route = checks[2].deviation().unwrap().compared.as_ref().unwrap();
    assert_eq!(route.flow.port, 8080);
    assert_eq!(b.len(), 3, "monitor learns nothing new");
    // A new protocol on a known port is a new port.
    let c = b.observe(
        &conn(Direction::Ingress, &fe, 8080, Protocol::Opaque),
        mon,
        10,
    );
    assert_eq!(kind(&c), Some(DeviationKind::NewPort));
}

#[test]
fn protect_blocks_new_flows_and_passes_learned_ones() {
    let b = learned();
    let (fe, db) = (id(FRONTEND), id(DB));
    let p = BaselineMode::Protect;
    assert_eq!(
        b.observe(&conn(Direction::Ingress, &db, 8080, Protocol::Http), p, 10)
            .action,
        Action::Block
    );
    assert_eq!(
        b.observe(&conn(Direction::Egress, &db, 6379, Protocol::Opaque), p, 10)
            .action,
        Action::Block
    );
    assert_eq!(
        b.observe(&req(&fe, 8080, "DELETE", "/v1/users/1"), p, 10)
            .action,
        Action::Block
    );
    for t in 0..50 {
        let c = b.observe(&req(&fe, 8080, "GET", "/v1/users/9"), p, 10 + t);
        assert_eq!((c.outcome, c.action), (Outcome::Known, Action::Pass));
        let c = b.observe(
            &conn(Direction::Egress, &db, 5432, Protocol::Opaque),
            p,
            10 + t,
        );
        assert_eq!((c.outcome, c.action), (Outcome::Known, Action::Pass));
    }
}

/// Requests per 1 s bucket `bucket`, spread over it.
fn burst(b: &Baseline, peer: &SpiffeId, mode: BaselineMode, bucket: u64, n: u64) -> Vec<Check> {
    (0..n)
        .map(|i| {
            let t = bucket * 1000 + i * 1000 / n.max(1);
            b.observe(&req(peer, 8080, "GET", "/v1/users/1"), mode, t)
        })
        .collect()
}

fn spikes(checks: &[Check]) -> usize {
    checks
        .iter()
        .filter(|c| kind(c) == Some(DeviationKind::RateSpike))
        .count()
}

#[test]
fn steady_traffic_with_noise_never_spikes() {
    let b = Baseline::new(id(API), settings());
    let fe = id(FRONTEND);
    // 40-60 per bucket, a fixed pseudo-random pattern.
    let mut x: u64 = 7;
    let mut all = Vec::new();
    for bucket in 0..200 {
        x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let n = 40 + (x >> 33) % 21;
        let mode = if bucket < 20 {
            BaselineMode::Learn
        } else {
            BaselineMode::Monitor
        };
        all.extend(burst(&b, &fe, mode, bucket, n));
    }
    assert_eq!(spikes(&all), 0);
}

#[test]
fn a_rate_spike_needs_the_warm_up_and_a_full_window() {
    let fe = id(FRONTEND);
    let mon = BaselineMode::Monitor;
    // Before the warm-up (5 buckets), no burst is a spike.
    let b = Baseline::new(id(API), settings());
    burst(&b, &fe, BaselineMode::Learn, 0, 20);
    for bucket in 1..5 {
        assert_eq!(
            spikes(&burst(&b, &fe, mon, bucket, 500)),
            0,
            "bucket {bucket}"
        );
    }

    // Warmed up at 20 per bucket: one bucket above the ceiling is not yet a
    // spike (the window is 2); the second in a row is, for the excess.
    let b = Baseline::new(id(API), settings());
    for bucket in 0..10 {
        burst(&b, &fe, BaselineMode::Learn, bucket, 20);
    }
    assert_eq!(
        spikes(&burst(&b, &fe, mon, 10, 100)),
        0,
        "first bucket above"
    );
    assert_eq!(
        spikes(&burst(&b, &fe, mon, 11, 20)),
        0,
        "back to normal breaks the run"
    );
    assert_eq!(spikes(&burst(&b, &fe, mon, 12, 100)), 0);
    let second = burst(&b, &fe, mon, 13, 100);
    let first_spike = second.iter().position(|c| kind(c).is_some()).unwrap();
    // The ceiling is max(mean + 3σ, 10): the first 20-something pass.
    let d = second[first_spike].deviation().unwrap();
    let excess = d.rate.unwrap();
    assert_eq!(
        excess.observed,
        excess.ceiling.floor() as u32 + 1,
        "{excess:?}"
    );
    assert!(
        excess.ceiling >= 20.0 && excess.ceiling < 40.0,
        "{excess:?}"
    );
    assert_eq!(spikes(&second), 100 - first_spike);
    assert_eq!(
        d.compared
            .as_ref()
            .unwrap()
            .flow
            .route
            .as_ref()
            .unwrap()
            .template,
        "/v1/users/{id}"
    );
    assert!(
        second.iter().all(|c| c.action == Action::Pass),
        "monitor passes"
    );
}

#[test]
fn protect_throttles_the_excess_of_a_spike_until_the_bucket_ends() {
    let fe = id(FRONTEND);
    let b = Baseline::new(id(API), settings());
    for bucket in 0..10 {
        burst(&b, &fe, BaselineMode::Learn, bucket, 20);
    }
    let p = BaselineMode::Protect;
    burst(&b, &fe, p, 10, 100);
    let checks = burst(&b, &fe, p, 11, 100);
    let throttled: Vec<_> = checks
        .iter()
        .enumerate()
        .filter_map(|(i, c)| match c.action {
            Action::Throttle { retry_after_ms } => Some((i, retry_after_ms)),
            _ => None,
        })
        .collect();
    let (first, _) = throttled[0];
    assert!(
        (20..40).contains(&first),
        "the ceiling's worth passes: {first}"
    );
    assert_eq!(
        throttled.len(),
        100 - first,
        "every request past the ceiling"
    );
    for (i, retry) in throttled {
        // Request i of bucket 11 is at 11_000 + i*10 ms; the bucket ends at 12_000.
        assert_eq!(retry, 1000 - i as u64 * 10);
    }
    // Bucket 10's 100 were not learned, which would have raised the mean
    // to 36.
    let key = req(&fe, 8080, "GET", "/v1/users/1").to_key(b.settings());
    let mean = b.view(&key).unwrap().rate_mean;
    assert!((mean - 20.0).abs() < 1e-9, "{mean}");
}

#[test]
fn bursts_that_come_back_every_bucket_never_raise_their_own_ceiling() {
    let fe = id(FRONTEND);
    let b = Baseline::new(id(API), settings());
    // Learned: 15 and 25 in turn, so the ceiling sits above the mean.
    for bucket in 0..20 {
        burst(&b, &fe, BaselineMode::Learn, bucket, 15 + 10 * (bucket % 2));
    }
    // A spike is a window (2) of buckets over the ceiling; from then on
    // every bucket's excess is throttled. The first burst closes the last
    // learned bucket.
    burst(&b, &fe, BaselineMode::Protect, 20, 100);
    let key = req(&fe, 8080, "GET", "/v1/users/1").to_key(b.settings());
    let learned = b.view(&key).unwrap().rate_mean;
    for bucket in 21..60 {
        let checks = burst(&b, &fe, BaselineMode::Protect, bucket, 100);
        let throttled = checks
            .iter()
            .filter(|c| matches!(c.action, Action::Throttle { .. }))
            .count();
        assert!(
            throttled >= 50,
            "bucket {bucket}: only {throttled} of 100 throttled"
        );
    }
    let mean = b.view(&key).unwrap().rate_mean;
    assert!((mean - learned).abs() < 1e-9, "{learned} became {mean}");
}

#[test]
fn the_cap_stops_learning_and_counts_the_overflow() {
    let b = Baseline::new(
        id(API),
        BaselineSettings {
            max_entries: 3,
            ..settings()
        },
    );
    let fe = id(FRONTEND);
    let outcomes: Vec<Outcome> = (1..=5)
        .map(|port| {
            b.observe(
                &conn(Direction::Ingress, &fe, port, Protocol::Opaque),
                BaselineMode::Learn,
                0,
            )
            .outcome
        })
        .collect();
    assert_eq!(
        outcomes,
        [
            Outcome::Learned,
            Outcome::Learned,
            Outcome::Learned,
            Outcome::Overflow,
            Outcome::Overflow
        ]
    );
    assert_eq!((b.len(), b.overflow_total()), (3, 2));
    // Known flows still count.
    let c = b.observe(
        &conn(Direction::Ingress, &fe, 1, Protocol::Opaque),
        BaselineMode::Learn,
        1,
    );
    assert_eq!(c.outcome, Outcome::Known);
    assert_eq!(b.snapshot(2).overflow, 2);
}

#[test]
fn snapshots_round_trip_through_json_and_restore_a_recorder() {
    let b = learned();
    let fe = id(FRONTEND);
    for t in 0..30 {
        b.observe(
            &req(&fe, 8080, "GET", "/v1/users/7"),
            BaselineMode::Learn,
            t * 100,
        );
    }
    let snap = b.snapshot(5000);
    let json = snap.to_json();
    let back = Snapshot::from_json(json.as_bytes(), 100).unwrap();
    assert_eq!(back, snap);

    let restored = Baseline::new(id(API), settings());
    assert_eq!(restored.merge(&back).unwrap(), 0);
    assert_eq!(restored.snapshot(5000), snap);
    assert_eq!(restored.status(5000), b.status(5000));
    let c = restored.observe(
        &req(&fe, 8080, "GET", "/v1/users/8"),
        BaselineMode::Protect,
        6000,
    );
    assert_eq!(c.outcome, Outcome::Known, "learned before the restart");
}

#[test]
fn a_promotion_round_trips_through_the_file_and_a_merge_drops_it() {
    let b = learned();
    let plain = b.snapshot(5000).to_json();
    assert!(!plain.contains("promoted_at"), "absent unless promoted");
    let mut snap = b.snapshot(5000);
    snap.promoted_at = Some(4000);
    let back = Snapshot::from_json(snap.to_json().as_bytes(), 100).unwrap();
    assert_eq!(back.promoted_at, Some(4000));
    let mut merged = b.snapshot(6000);
    merged.promoted_at = Some(4000);
    merged.merge(&back, 100).unwrap();
    assert_eq!(merged.promoted_at, None, "a merge is no pod's promotion");
}

#[test]
fn a_corrupt_oversized_or_foreign_snapshot_is_refused_with_a_reason() {
    let json = learned().snapshot(1).to_json();
    let cut = &json.as_bytes()[..json.len() - 10];
    match Snapshot::from_json(cut, 100) {
        Err(e @ SnapshotError::Corrupt { line: 1, .. }) => {
            assert!(e.to_string().contains("corrupt at line 1, column"), "{e}")
        }
        other => panic!("{other:?}"),
    }
    let huge = vec![b' '; Snapshot::max_bytes(1) + 1];
    assert!(matches!(
        Snapshot::from_json(&huge, 1),
        Err(SnapshotError::TooLarge { .. })
    ));
    assert!(matches!(
        Snapshot::from_json(json.as_bytes(), 2),
        Err(SnapshotError::TooManyEntries { entries: 3, max: 2 })
    ));
    let v2 = json.replacen("\"version\":1", "\"version\":2", 1);
    assert!(matches!(
        Snapshot::from_json(v2.as_bytes(), 100),
        Err(SnapshotError::UnsupportedVersion { found: 2 })
    ));
    let bad_path = json.replace("/v1/users/{id}", "/v1/../users");
    let e = Snapshot::from_json(bad_path.as_bytes(), 100).unwrap_err();
    assert!(
        e.to_string().contains("not a normalized path template"),
        "{e}"
    );
    let bad_cidr = Snapshot::from_json(
        br#"{"version":1,"identity":"spiffe://cluster.local/ns/shop/sa/api","taken_at":0,"bucket_ms":1000,"last_new_flow":null,"overflow":0,
        "entries":[{"flow":{"direction":"ingress","peer":{"cidr":"10.1.2.3/24"},"port":80,"protocol":"opaque"},"count":1,"first_seen":0,"last_seen":0,
        "rate":{"mean":0.0,"variance":0.0,"buckets":0,"bucket":0,"open":1,"over":0}}]}"#,
        100,
    )
    .unwrap_err();
    assert!(bad_cidr.to_string().contains("host bits"), "{bad_cidr}");
}

#[test]
fn a_hand_written_path_is_templated_on_read_and_folds_into_its_route() {
    let mut v: serde_json::Value = serde_json::from_str(&learned().snapshot(1).to_json()).unwrap();
    let entries = v["entries"].as_array_mut().unwrap();
    let i = entries
        .iter()
        .position(|e| e["flow"]["path"].is_string())
        .unwrap();
    let mut copy = entries[i].clone();
    copy["flow"]["path"] = "/v1/users/42".into();
    copy["count"] = 4.into();
    entries.push(copy);
    let snap = Snapshot::from_json(v.to_string().as_bytes(), 100).unwrap();
    let routes: Vec<_> = snap
        .entries
        .iter()
        .filter(|e| e.flow.route.is_some())
        .collect();
    assert_eq!(routes.len(), 1);
    assert_eq!(
        routes[0].flow.route.as_ref().unwrap().template,
        "/v1/users/{id}"
    );
    assert_eq!(routes[0].count, 5);
}

#[test]
fn merging_pods_adds_counts_and_widens_first_and_last_seen() {
    let (fe, db) = (id(FRONTEND), id(DB));
    let a = Baseline::new(id(API), settings());
    let b = Baseline::new(id(API), settings());
    for t in 0..10 {
        a.observe(
            &req(&fe, 8080, "GET", "/v1/users/1"),
            BaselineMode::Learn,
            5_000 + t,
        );
    }
    for t in 0..4 {
        b.observe(
            &req(&fe, 8080, "GET", "/v1/users/2"),
            BaselineMode::Learn,
            1_000 + t * 10_000,
        );
    }
    b.observe(
        &conn(Direction::Egress, &db, 5432, Protocol::Opaque),
        BaselineMode::Learn,
        2_000,
    );
    let mut merged = a.snapshot(50_000);
    let dropped = merged.merge(&b.snapshot(60_000), 100).unwrap();
    assert_eq!(dropped, 0);
    assert_eq!(merged.entries.len(), 2);
    let users = merged
        .entries
        .iter()
        .find(|e| e.flow.route.is_some())
        .unwrap();
    assert_eq!(users.count, 14);
    assert_eq!((users.first_seen, users.last_seen), (1_000, 31_000));
    assert_eq!(merged.taken_at, 60_000);
    // A cap counts what did not fit.
    let mut small = a.snapshot(1);
    assert_eq!(small.merge(&b.snapshot(1), 1).unwrap(), 1);
    assert_eq!(small.overflow, 1);
    // Baselines merge per identity.
    let other = Baseline::new(id(DB), settings()).snapshot(1);
    assert!(matches!(
        merged.merge(&other, 100),
        Err(SnapshotError::OtherIdentity { .. })
    ));
    // And into a live recorder.
    let live = Baseline::new(id(API), settings());
    live.merge(&a.snapshot(1)).unwrap();
    live.merge(&b.snapshot(1)).unwrap();
    assert!(matches!(
        live.merge(&other),
        Err(SnapshotError::OtherIdentity { .. })
    ));
    assert_eq!(live.snapshot(1).entries, merged.entries);
}

#[test]
fn a_connection_on_a_port_known_through_its_requests_is_known() {
    let b = Baseline::new(id(API), settings());
    let fe = id(FRONTEND);
    b.observe(
        &req(&fe, 8080, "GET", "/v1/users/1"),
        BaselineMode::Learn,
        0,
    );
    let c = b.observe(
        &conn(Direction::Ingress, &fe, 8080, Protocol::Http),
        BaselineMode::Protect,
        10,
    );
    assert_eq!((c.outcome, c.action), (Outcome::Known, Action::Pass));
}

#[test]
fn threads_recording_at_once_lose_no_count_and_learn_each_flow_once() {
    let b = Baseline::new(id(API), settings());
    let peers: Vec<SpiffeId> = (0..8)
        .map(|i| id(&format!("spiffe://cluster.local/ns/shop/sa/client-{i}")))
        .collect();
    std::thread::scope(|s| {
        for t in 0..4u64 {
            let (b, peers) = (&b, &peers);
            s.spawn(move || {
                for i in 0..2_000u64 {
                    let peer = &peers[(i % 8) as usize];
                    let path = format!("/v1/items/{}", i + t);
                    b.observe(&req(peer, 8080, "GET", &path), BaselineMode::Learn, i);
                }
            });
        }
    });
    let snap = b.snapshot(10_000);
    assert_eq!(snap.entries.len(), 8, "one route per peer");
    assert_eq!(snap.entries.iter().map(|e| e.count).sum::<u64>(), 8_000);
    assert!(snap.entries.iter().all(|e| e.count == 1_000));
}

#[test]
fn a_check_serializes_with_its_outcome_kind_and_action() {
    let b = learned();
    let fe = id(FRONTEND);
    let c = b.observe(
        &req(&fe, 8080, "DELETE", "/v1/users/1"),
        BaselineMode::Protect,
        10,
    );
    let v = serde_json::to_value(&c).unwrap();
    assert_eq!(v["outcome"], "deviation");
    assert_eq!(v["kind"], "baseline.new_route");
    assert_eq!(v["action"], "block");
    assert_eq!(v["compared"]["flow"]["port"], 8080);
    assert_eq!(DeviationKind::NewRoute.label(), "new_route");
}

#[test]
fn a_path_out_of_normal_form_or_a_long_method_still_makes_a_readable_baseline() {
    let b = Baseline::new(id(API), settings());
    let fe = id(FRONTEND);
    let long = "X".repeat(500);
    b.observe(&req(&fe, 8080, "GET", "/a/../b"), BaselineMode::Learn, 0);
    b.observe(&req(&fe, 8080, &long, "/b"), BaselineMode::Learn, 0);
    // Each is known again as it was learned.
    assert_eq!(
        b.observe(&req(&fe, 8080, "GET", "/x//y"), BaselineMode::Monitor, 1)
            .outcome,
        Outcome::Known
    );
    assert_eq!(
        b.observe(&req(&fe, 8080, &long, "/b"), BaselineMode::Monitor, 1)
            .outcome,
        Outcome::Known
    );
    let snap = b.snapshot(2);
    let routes: Vec<_> = snap
        .entries
        .iter()
        .filter_map(|e| e.flow.route.clone())
        .collect();
    assert_eq!(
        (routes[0].method.as_str(), routes[0].template.as_str()),
        ("GET", "/{rest}")
    );
    assert_eq!(
        (routes[1].method.len(), routes[1].template.as_str()),
        (64, "/b")
    );
    assert_eq!(
        Snapshot::from_json(snap.to_json().as_bytes(), 10).unwrap(),
        snap
    );
}
