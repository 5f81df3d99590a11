//! What HTTP mode adds over L4 mode per request, on loopback: one kept-alive
//! HTTP/1.1 client, closed loop, through two sidecars to the same app, once
//! over routes set to `opaque` (L4 forwarding) and once detected as HTTP
//! (parsed, authorized per request, HTTP/2 between the sidecars). Rounds
//! alternate between the two so drift hits both. A measurement, not a
//! test: run it in release and read the printed figures.
//!
//! `cargo test --release -p palisade-tests --test http_overhead -- --ignored --nocapture`

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use palisade_tests::cp::ControlPlane;
use palisade_tests::http::{runtime, Client, HttpApp};
use palisade_tests::policy::spec;
use palisade_tests::proxy::{Proxy, CLIENT_ID, SERVER_ID};
use palisadectl::local::Protocol;

const ROUNDS: usize = 10;
const PER_ROUND: usize = 2_000;
const WARMUP: usize = 500;

fn quantile(sorted: &[Duration], q: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * q).round() as usize;
    sorted[i].as_secs_f64() * 1e6
}

async fn run(c: &mut Client, n: usize, out: &mut Vec<Duration>) {
    for _ in 0..n {
        let t = Instant::now();
        let a = c.send("GET", "/v1/x", &[], "").await.unwrap();
        assert_eq!(a.status, 200);
        out.push(t.elapsed());
    }
}

#[test]
#[ignore = "a measurement; run with --ignored --nocapture, in release"]
fn http_mode_overhead_over_l4_per_request() {
    let cp = ControlPlane::start();
    let app = HttpApp::start();
    let mut b = spec(&cp, "proxy-b", SERVER_ID);
    let b_http = b.inbound(app.addr, false);
    let b_l4 = b.inbound(app.addr, false);
    b.inbound[1].protocol = Protocol::Opaque;
    let mut a = spec(&cp, "proxy-a", CLIENT_ID);
    let a_http = a.route(b_http, SERVER_ID);
    let a_l4 = a.route(b_l4, SERVER_ID);
    a.routes[1].protocol = Protocol::Opaque;
    let _b = Proxy::start_ready(b);
    let _a = Proxy::start_ready(a);
    let direct: SocketAddr = app.addr;

    let rt = runtime();
    let (mut l4, mut l7, mut base) = (Vec::new(), Vec::new(), Vec::new());
    rt.block_on(async {
        let mut c4 = Client::http1(a_l4).await;
        let mut c7 = Client::http1(a_http).await;
        let mut cd = Client::http1(direct).await;
        let mut sink = Vec::new();
        run(&mut c4, WARMUP, &mut sink).await;
        run(&mut c7, WARMUP, &mut sink).await;
        run(&mut cd, WARMUP, &mut sink).await;
        for _ in 0..ROUNDS {
            run(&mut c4, PER_ROUND, &mut l4).await;
            run(&mut c7, PER_ROUND, &mut l7).await;
            run(&mut cd, PER_ROUND, &mut base).await;
        }
    });
    for v in [&mut l4, &mut l7, &mut base] {
        v.sort();
    }
    println!("requests per path: {}", l4.len());
    for (name, v) in [("direct", &base), ("L4 (opaque)", &l4), ("HTTP", &l7)] {
        println!(
            "{name:>12}: p50 {:>7.1} us  p99 {:>7.1} us",
            quantile(v, 0.5),
            quantile(v, 0.99)
        );
    }
    println!(
        "HTTP over L4: p50 +{:.1} us, p99 +{:.1} us",
        quantile(&l7, 0.5) - quantile(&l4, 0.5),
        quantile(&l7, 0.99) - quantile(&l4, 0.99)
    );
}
