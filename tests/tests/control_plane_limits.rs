//! The workload API port under abuse: garbage, half-open connections,
//! oversized bodies and connection floods get errors and counters, never a
//! crash or unbounded memory, and the server keeps serving. Connections over
//! the cap are reset and logged once a second; a refused sidecar backs off
//! and gets in when a slot frees.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use palisade_tests::cp::{ControlPlane, ControlPlaneSpec};
use palisade_tests::proxy::{Echo, Proxy, ProxySpec};
use palisade_tests::rss_kib;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const API: &str = "spiffe://cluster.local/ns/shop/sa/api";

fn strict(extra: &[&str]) -> ControlPlane {
    let mut extra_args = vec!["--handshake-timeout".to_owned(), "1s".to_owned()];
    extra_args.extend(extra.iter().map(|s| s.to_string()));
    ControlPlane::start_with(ControlPlaneSpec {
        extra_args,
        ..Default::default()
    })
}

/// Reads until the server closes the connection (EOF or reset).
fn wait_closed(s: &mut TcpStream) {
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
    }
}

#[tokio::test]
async fn garbage_bytes_get_an_error_and_the_server_keeps_serving() {
    let cp = strict(&[]);
    for _ in 0..20 {
        let mut s = TcpStream::connect(cp.addr()).unwrap();
        let junk: Vec<u8> = (0..4096).map(|_| rand::random::<u8>()).collect();
        let _ = s.write_all(&junk);
        wait_closed(&mut s);
    }
    assert!(cp.metric("api_errors_total{kind=\"tls_handshake\"}") >= 20.0);

    // Garbage inside a good TLS session gets an HTTP 400.
    let mut tls = cp.client(None).connect_tls().await.unwrap();
    tls.write_all(b"\x00\x01 NOT HTTP AT ALL\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    let _ = tls.read_to_end(&mut answer).await;
    assert!(
        String::from_utf8_lossy(&answer).starts_with("HTTP/1.1 400"),
        "{}",
        String::from_utf8_lossy(&answer)
    );
    assert!(cp.metric("api_errors_total{kind=\"bad_http\"}") >= 1.0);

    let (_k, resp) = cp.issue_svid(API).await;
    assert_eq!(resp.spiffe_id, API, "still serving");
}

#[tokio::test]
async fn half_open_connections_are_closed_by_the_server_which_keeps_serving() {
    let cp = strict(&[]);
    // TCP connections that never start TLS.
    let mut silent: Vec<TcpStream> = (0..50)
        .map(|_| TcpStream::connect(cp.addr()).unwrap())
        .collect();
    // TLS sessions that never send a request.
    let client = cp.client(None);
    let mut idle = Vec::new();
    for _ in 0..10 {
        idle.push(client.connect_tls().await.unwrap());
    }
    let (_k, resp) = cp.issue_svid(API).await;
    assert_eq!(resp.spiffe_id, API, "served while 60 connections hang");

    for s in &mut silent {
        wait_closed(s);
    }
    for t in &mut idle {
        let mut buf = [0u8; 64];
        let n = tokio::time::timeout(Duration::from_secs(30), t.read(&mut buf))
            .await
            .expect("server closes idle TLS");
        assert!(matches!(n, Ok(0) | Err(_)), "no answer to no request");
    }
    assert!(cp.metric("api_errors_total{kind=\"handshake_timeout\"}") >= 50.0);
    assert_eq!(
        cp.metric("api_connections_open"),
        0.0,
        "every hanging connection was released"
    );
}

#[tokio::test]
async fn oversized_bodies_get_413_without_growing_memory() {
    let cp = strict(&[]);
    let pid = cp.pid().unwrap();
    let client = cp.client(None);
    let before = rss_kib(pid);
    for _ in 0..100 {
        // Declared 64 MiB: refused from the header alone, nothing buffered.
        let mut tls = client.connect_tls().await.unwrap();
        tls.write_all(b"POST /v1/svid HTTP/1.1\r\nHost: x\r\nContent-Length: 67108864\r\n\r\n")
            .await
            .unwrap();
        let mut head = [0u8; 12];
        tls.read_exact(&mut head).await.unwrap();
        assert_eq!(&head, b"HTTP/1.1 413");
    }
    for _ in 0..20 {
        // Chunked, no length: cut off once it passes 64 KiB. The chunk is
        // sent whole and unterminated, so the server has read every byte
        // when it answers (no reset eats the answer).
        let mut tls = client.connect_tls().await.unwrap();
        let size = 65 * 1024;
        let head = format!(
            "POST /v1/svid HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n{size:x}\r\n"
        );
        tls.write_all(head.as_bytes()).await.unwrap();
        tls.write_all(&vec![b' '; size]).await.unwrap();
        let mut head = [0u8; 12];
        tls.read_exact(&mut head).await.unwrap();
        assert_eq!(&head, b"HTTP/1.1 413");
    }
    let grown = rss_kib(pid).saturating_sub(before);
    assert!(
        grown < 32 * 1024,
        "RSS grew {grown} KiB over 120 oversized requests"
    );
    assert!(cp.metric("svid_rejected_total{reason=\"body_too_large\"}") >= 120.0);
    assert_eq!(cp.issue_svid(API).await.1.spiffe_id, API);
}

/// The refusals the control plane's rate-limited log lines report, one
/// count per line.
fn refusal_lines(cp: &ControlPlane) -> Vec<u64> {
    cp.log()
        .lines()
        .filter_map(|l| {
            let (_, rest) = l.split_once("refused ")?;
            rest.split_once(" connections since the last report")?
                .0
                .parse()
                .ok()
        })
        .collect()
}

#[tokio::test]
async fn connections_beyond_the_limit_are_reset_counted_and_logged_once_a_second() {
    // Started with a low soft open-file limit (children inherit this
    // process's), it raises it to the hard one.
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
    setrlimit(Resource::RLIMIT_NOFILE, hard.min(1024), hard).unwrap();
    let cp = ControlPlane::start_with(ControlPlaneSpec {
        extra_args: ["--handshake-timeout", "5s", "--max-connections", "4"]
            .map(String::from)
            .to_vec(),
        ..Default::default()
    });
    // Its soft open-file limit was raised to the hard one, and logged.
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", cp.pid().unwrap())).unwrap();
    let files: Vec<&str> = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap()
        .split_whitespace()
        .skip(3)
        .take(2)
        .collect();
    assert_eq!(
        files[0],
        hard.to_string(),
        "soft limit raised to the hard one: {limits}"
    );
    assert_eq!(files[1], hard.to_string());
    assert!(cp.log().contains("open-file limit"), "{}", cp.log());

    let open = || cp.metric("api_connections_open");
    // The readiness probes' connections are released first.
    palisade_tests::eventually("no connections open", Duration::from_secs(10), || {
        (open() == 0.0).then_some(())
    });
    let refused_before = cp.metric("api_errors_total{kind=\"connection_limit\"}");
    let mut held: Vec<TcpStream> = (0..4)
        .map(|_| TcpStream::connect(cp.addr()).unwrap())
        .collect();
    palisade_tests::eventually("4 connections open", Duration::from_secs(10), || {
        (open() == 4.0).then_some(())
    });
    const BURST: u64 = 30;
    for _ in 0..BURST {
        let mut extra = TcpStream::connect(cp.addr()).unwrap();
        extra
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let err = extra.read(&mut [0u8; 1]).expect_err("reset, not an answer");
        assert_eq!(err.kind(), std::io::ErrorKind::ConnectionReset, "{err}");
    }
    assert_eq!(
        cp.metric("api_errors_total{kind=\"connection_limit\"}"),
        refused_before + BURST as f64
    );
    // Every refusal is reported within a second or so, in a line or two.
    let lines = palisade_tests::eventually("the refusals logged", Duration::from_secs(5), || {
        let lines = refusal_lines(&cp);
        (lines.iter().sum::<u64>() == BURST).then_some(lines)
    });
    assert!(lines.len() <= 3, "rate-limited: {lines:?}");

    // Once the hanging ones time out, the slots are free again.
    for s in &mut held {
        wait_closed(s);
    }
    assert_eq!(cp.issue_svid(API).await.1.spiffe_id, API);
}

#[test]
fn a_sidecar_refused_at_the_limit_backs_off_and_gets_its_svid_and_policy_once_a_slot_frees() {
    let policies = tempfile::tempdir().unwrap();
    std::fs::write(
        policies.path().join("api.yaml"),
        palisade_tests::policy::policy_doc("api", API, "  ingress: []\n"),
    )
    .unwrap();
    let cp = ControlPlane::start_with(ControlPlaneSpec {
        extra_args: vec![
            "--handshake-timeout".into(),
            "60s".into(),
            "--max-connections".into(),
            "2".into(),
            "--policy-dir".into(),
            policies.path().display().to_string(),
        ],
        ..Default::default()
    });
    let open = || cp.metric("api_connections_open");
    palisade_tests::eventually("no connections open", Duration::from_secs(10), || {
        (open() == 0.0).then_some(())
    });
    let mut held: Vec<TcpStream> = (0..2)
        .map(|_| TcpStream::connect(cp.addr()).unwrap())
        .collect();
    palisade_tests::eventually("2 connections open", Duration::from_secs(10), || {
        (open() == 2.0).then_some(())
    });

    let app = Echo::start();
    let mut spec = ProxySpec::new("api", cp.addr(), &cp.bundle_path(), &cp.join_token(API));
    spec.inbound(app.addr, false);
    spec.extra_yaml = "policy:\n  source: control-plane\n".into();
    let mut proxy = Proxy::start(spec);
    palisade_tests::eventually("the sidecar refused", Duration::from_secs(10), || {
        (proxy.metric("identity_cert_refresh_failures_total", &[]) >= 2.0).then_some(())
    });
    assert_eq!(proxy.get("/ready").0, 503, "no SVID while refused");
    assert!(cp.metric("api_errors_total{kind=\"connection_limit\"}") >= 2.0);
    palisade_tests::eventually("the refusal logged", Duration::from_secs(5), || {
        (!refusal_lines(&cp).is_empty()).then_some(())
    });

    drop(held.pop());
    proxy.wait_ready();
    palisade_tests::eventually(
        "the control plane's policy",
        Duration::from_secs(20),
        || {
            let dump = proxy.config_dump();
            (dump["policy"]["source"]["kind"] == "control-plane" && dump["policy"]["policies"] == 1)
                .then_some(())
        },
    );
}

#[tokio::test]
async fn unknown_routes_and_methods_get_json_errors() {
    let cp = ControlPlane::start();
    let mut conn = cp.client(None).connect().await.unwrap();
    let (status, body) = conn
        .request(http::Method::GET, "/nope", vec![])
        .await
        .unwrap();
    assert_eq!(status, 404);
    let err: palisade_identity::api::ApiError = serde_json::from_slice(&body).unwrap();
    assert_eq!(err.error, "not_found");
    let (status, _) = conn
        .request(http::Method::GET, "/v1/svid", vec![])
        .await
        .unwrap();
    assert_eq!(status, 405);
    let (status, body) = conn
        .request(http::Method::POST, "/v1/svid", b"{not json".to_vec())
        .await
        .unwrap();
    assert_eq!(status, 400, "{}", String::from_utf8_lossy(&body));
    assert!(cp.metric("svid_rejected_total{reason=\"bad_request\"}") >= 1.0);
}
