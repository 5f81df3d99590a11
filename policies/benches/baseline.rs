//! What the baseline adds per connection and per request: `observe()` on a
//! known flow (opaque, and HTTP with a templated path) in learn and protect
//! mode, a never-seen flow blocked, and a baseline of 10,000 flows around.

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use palisade_policy::baseline::{Baseline, BaselineMode, BaselineSettings, FlowRef, Protocol};
use palisade_policy::{Direction, HttpInfo, Peer, SpiffeId};

fn id(s: &str) -> SpiffeId {
    SpiffeId::parse(s).unwrap()
}

fn bench(c: &mut Criterion) {
    let b = Baseline::new(
        id("spiffe://cluster.local/ns/shop/sa/api"),
        BaselineSettings::default(),
    );
    let peers: Vec<SpiffeId> = (0..100)
        .map(|i| id(&format!("spiffe://cluster.local/ns/shop/sa/client-{i}")))
        .collect();
    let paths: Vec<String> = (0..100).map(|i| format!("/v1/resource-{i}/123")).collect();
    // 100 peers x 100 routes: 10,000 flows, plus each peer's connection.
    for (t, peer) in peers.iter().enumerate() {
        let conn = FlowRef {
            direction: Direction::Ingress,
            peer: Peer::Identity(peer),
            port: 8080,
            protocol: Protocol::Http,
            http: None,
        };
        b.observe(&conn, BaselineMode::Learn, t as u64);
        for p in &paths {
            let http = Some(HttpInfo {
                method: "GET",
                path: p,
                host: None,
            });
            b.observe(&FlowRef { http, ..conn }, BaselineMode::Learn, t as u64);
        }
    }
    let peer = &peers[42];
    let conn = FlowRef {
        direction: Direction::Ingress,
        peer: Peer::Identity(peer),
        port: 8080,
        protocol: Protocol::Http,
        http: None,
    };
    let request = FlowRef {
        http: Some(HttpInfo {
            method: "GET",
            path: "/v1/resource-42/9f86d081-884c-7d65-9f86-d081884c7d65",
            host: None,
        }),
        ..conn
    };
    let never = FlowRef {
        http: Some(HttpInfo {
            method: "DELETE",
            path: "/v1/resource-42/1",
            host: None,
        }),
        ..conn
    };
    let mut now = 1_796_100_000_000u64;
    let mut tick = || {
        now += 1;
        now
    };
    let mut g = c.benchmark_group("baseline_observe");
    g.bench_function("known_connection_learn", |bch| {
        bch.iter(|| b.observe(black_box(&conn), BaselineMode::Learn, tick()))
    });
    g.bench_function("known_request_templated_learn", |bch| {
        bch.iter(|| b.observe(black_box(&request), BaselineMode::Learn, tick()))
    });
    g.bench_function("known_request_templated_protect", |bch| {
        bch.iter(|| b.observe(black_box(&request), BaselineMode::Protect, tick()))
    });
    g.bench_function("new_route_protect_blocked", |bch| {
        bch.iter(|| b.observe(black_box(&never), BaselineMode::Protect, tick()))
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    targets = bench
}
criterion_main!(benches);
