//! Security events through real sinks: a file, a local HTTP collector, and
//! the flood and back-pressure limits that keep the event log bounded.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use palisade_policy::Direction;
use palisade_policy::Matched;
use palisade_proxy::events::{
    Denial, Emitter, Endpoint, EventsConfig, Finding, FindingAction, FindingKind, FindingMode,
    Flow, HttpFlow, HttpFormat, SinkConfig,
};
use prometheus_client::registry::Registry;
use serde_json::Value;

const FLUSH: Duration = Duration::from_secs(10);

fn flow(port: u16, http: Option<HttpFlow<'static>>) -> Flow<'static> {
    Flow {
        direction: Direction::Egress,
        src: Endpoint {
            addr: "10.0.0.7:40112".parse().unwrap(),
            id: Some("spiffe://td/ns/shop/sa/api"),
        },
        dst: Endpoint {
            addr: SocketAddr::from(([10, 0, 0, 9], port)),
            id: Some("spiffe://td/ns/shop/sa/db"),
        },
        http,
    }
}

fn new_peer(port: u16) -> Finding<'static> {
    Finding {
        kind: FindingKind::NewPeer,
        flow: flow(port, None),
        baseline: None,
        observed_rate: None,
        mode: FindingMode::Monitor,
        action: FindingAction::Allowed,
    }
}

fn config(sink: SinkConfig) -> EventsConfig {
    EventsConfig {
        sinks: vec![sink],
        ..Default::default()
    }
}

/// The value of one series in the registry's text exposition.
fn metric(reg: &Registry, series: &str) -> f64 {
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, reg).unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .map_or(0.0, |v| v.trim().parse().unwrap())
}

fn lines(path: &std::path::Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).expect("each line is one JSON event"))
        .collect()
}

#[tokio::test]
async fn file_sink_appends_one_ocsf_event_per_line() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("events.jsonl");
    std::fs::write(&path, "").unwrap();
    let mut reg = Registry::default();
    let e = Emitter::start(
        &config(SinkConfig::File { path: path.clone() }),
        &mut reg,
        None,
    )
    .unwrap();
    let matched = Matched::NoRule {
        policy: Arc::from("shop/db"),
    };
    e.denied(&Denial {
        flow: flow(
            8080,
            Some(HttpFlow {
                method: "DELETE",
                path: "/v1/orders/7",
            }),
        ),
        matched: &matched,
        http_status: Some(403),
        revoked: false,
    });
    e.finding(&new_peer(5432));
    e.flush(FLUSH).await;

    let events = lines(&path);
    assert_eq!(events.len(), 2);
    assert_eq!(events[0]["class_uid"], 4002);
    assert_eq!(events[0]["http_request"]["http_method"], "DELETE");
    assert_eq!(events[0]["policy"]["name"], "shop/db");
    assert_eq!(events[1]["class_uid"], 2004);
    assert_eq!(events[1]["finding_info"]["types"][0], "baseline.new_peer");
    assert_ne!(events[0]["metadata"]["uid"], events[1]["metadata"]["uid"]);
    assert_eq!(metric(&reg, r#"events_sent_total{sink="file"}"#), 2.0);
    assert_eq!(metric(&reg, r#"events_emitted_total{kind="denied"}"#), 1.0);
}

/// What a tiny HTTP collector received: (content type, body) per POST.
type Posts = Arc<Mutex<Vec<(String, Bytes)>>>;

/// Serves POSTs on loopback answering `status`, recording each one.
async fn collector(status: u16) -> (SocketAddr, Posts) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let posts = Posts::default();
    let seen = posts.clone();
    tokio::spawn(async move {
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            let seen = seen.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    let seen = seen.clone();
                    async move {
                        let ct = req
                            .headers()
                            .get(http::header::CONTENT_TYPE)
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or("")
                            .to_owned();
                        let body = req.into_body().collect().await.unwrap().to_bytes();
                        seen.lock().unwrap().push((ct, body));
                        Ok::<_, Infallible>(
                            hyper::Response::builder()
                                .status(status)
                                .body(Full::new(Bytes::new()))
                                .unwrap(),
                        )
                    }
                });
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(tcp), svc)
                    .await;
            });
        }
    });
    (addr, posts)
}

fn http_sink(addr: SocketAddr, format: HttpFormat, batch: usize) -> SinkConfig {
    SinkConfig::Http {
        url: format!("http://{addr}/v1/events"),
        format,
        batch,
        flush_interval: Duration::from_secs(30),
        timeout: Duration::from_secs(5),
    }
}

#[tokio::test]
async fn http_sink_posts_json_array_batches_to_the_collector() {
    let (addr, posts) = collector(200).await;
    let mut reg = Registry::default();
    let e = Emitter::start(
        &config(http_sink(addr, HttpFormat::Json, 2)),
        &mut reg,
        None,
    )
    .unwrap();
    for port in [1, 2, 3] {
        e.finding(&new_peer(port));
    }
    e.flush(FLUSH).await;

    let posts = posts.lock().unwrap().clone();
    let mut ports = Vec::new();
    for (ct, body) in &posts {
        assert_eq!(ct, "application/json");
        let batch: Vec<Value> = serde_json::from_slice(body).expect("a JSON array");
        assert!(batch.len() <= 2, "a batch holds at most `batch` events");
        for ev in batch {
            assert_eq!(ev["class_uid"], 2004);
            ports.push(ev["evidences"][0]["dst_endpoint"]["port"].as_u64().unwrap());
        }
    }
    ports.sort();
    assert_eq!(ports, [1, 2, 3]);
    assert_eq!(metric(&reg, r#"events_sent_total{sink="http"}"#), 3.0);
}

#[tokio::test]
async fn http_sink_posts_ndjson_when_configured() {
    let (addr, posts) = collector(202).await;
    let mut reg = Registry::default();
    let e = Emitter::start(
        &config(http_sink(addr, HttpFormat::Ndjson, 100)),
        &mut reg,
        None,
    )
    .unwrap();
    e.finding(&new_peer(1));
    e.finding(&new_peer(2));
    e.flush(FLUSH).await;

    let posts = posts.lock().unwrap().clone();
    assert_eq!(posts.len(), 1);
    assert_eq!(posts[0].0, "application/x-ndjson");
    let body = std::str::from_utf8(&posts[0].1).unwrap();
    let events: Vec<Value> = body
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(events.len(), 2);
}

#[tokio::test]
async fn a_collector_that_refuses_counts_errors_and_drops_the_batch() {
    let (addr, posts) = collector(503).await;
    let mut reg = Registry::default();
    let e = Emitter::start(
        &config(http_sink(addr, HttpFormat::Json, 10)),
        &mut reg,
        None,
    )
    .unwrap();
    e.finding(&new_peer(1));
    e.flush(FLUSH).await;

    // Retried, then given up: nothing counted as sent.
    assert_eq!(posts.lock().unwrap().len(), 3);
    assert_eq!(
        metric(&reg, r#"events_sink_errors_total{sink="http"}"#),
        3.0
    );
    assert_eq!(metric(&reg, r#"events_dropped_total{sink="http"}"#), 1.0);
    assert_eq!(metric(&reg, r#"events_sent_total{sink="http"}"#), 0.0);
}

#[tokio::test]
async fn a_flood_of_identical_deviations_writes_one_line_and_counts_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("events.jsonl");
    let mut reg = Registry::default();
    let e = Emitter::start(
        &config(SinkConfig::File { path: path.clone() }),
        &mut reg,
        None,
    )
    .unwrap();
    for _ in 0..10_000 {
        e.finding(&new_peer(5432));
    }
    e.flush(FLUSH).await;

    assert_eq!(lines(&path).len(), 1);
    assert_eq!(
        metric(
            &reg,
            r#"events_suppressed_total{kind="baseline.new_peer",reason="duplicate"}"#
        ),
        9_999.0
    );
    assert_eq!(
        metric(&reg, r#"events_emitted_total{kind="baseline.new_peer"}"#),
        1.0
    );
}

#[tokio::test]
async fn a_flood_of_distinct_flows_is_capped_per_second_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("events.jsonl");
    let mut reg = Registry::default();
    let cfg = EventsConfig {
        max_per_second: 50,
        ..config(SinkConfig::File { path: path.clone() })
    };
    // Started before the emitter, so `seconds` covers every second of its
    // limiter's clock the loop can touch.
    let started = Instant::now();
    let e = Emitter::start(&cfg, &mut reg, None).unwrap();
    for port in 0..10_000u16 {
        e.finding(&new_peer(port));
    }
    let seconds = started.elapsed().as_secs() + 1;
    e.flush(FLUSH).await;

    let written = lines(&path).len() as u64;
    // One budget per second the loop touched.
    assert!(written <= 50 * seconds, "{written} lines in {seconds}s");
    assert!(written >= 50);
    let suppressed = metric(
        &reg,
        r#"events_suppressed_total{kind="baseline.new_peer",reason="rate_limit"}"#,
    );
    assert_eq!(written as f64 + suppressed, 10_000.0);
}

#[tokio::test(flavor = "current_thread")]
async fn a_full_queue_drops_and_counts_without_blocking_the_caller() {
    // Nothing listens here, so the syslog writer holds its first event and
    // retries; the queue (of one) stays full.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut reg = Registry::default();
    let cfg = EventsConfig {
        queue: 1,
        max_per_second: 1_000,
        ..config(SinkConfig::Syslog {
            address: format!("127.0.0.1:{port}"),
            facility: 4,
            app_name: "palisade-proxy".into(),
            reconnect_max: Duration::from_secs(1),
        })
    };
    let e = Emitter::start(&cfg, &mut reg, None).unwrap();
    // On this single-threaded runtime the writer cannot run until the test
    // yields, so exactly one event fits.
    for port in 0..100 {
        e.finding(&new_peer(port));
    }
    assert_eq!(
        metric(&reg, r#"events_emitted_total{kind="baseline.new_peer"}"#),
        100.0
    );
    assert_eq!(metric(&reg, r#"events_dropped_total{sink="syslog"}"#), 99.0);
}
