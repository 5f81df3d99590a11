//! Attacks on the HTTP listener, each answered with the right status (or
//! GOAWAY) and counted, while the proxy stays up and keeps serving a normal
//! client, and nothing reaches the app past the guard: a header bomb, every
//! request-smuggling form, slowloris, HTTP/2 rapid reset and a CONTINUATION
//! flood. They hit proxy A's outbound listener, where the app's plaintext
//! HTTP arrives; the same server code runs after TLS on inbound.

use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use palisade_tests::http::{
    default_ingress, raw_exchange, read_until_quiet, runtime, status_of, Client, HttpMesh,
};
use palisadectl::local::Protocol;

const QUIET: Duration = Duration::from_secs(3);

fn mesh() -> HttpMesh {
    HttpMesh::start(
        &default_ingress(),
        |a| a.extra_yaml += "http:\n  header_read_timeout: 1s\n",
        |_| {},
    )
}

fn violations(m: &HttpMesh, reason: &str) -> f64 {
    m.a.metric(
        "http_limit_violations_total",
        &[("direction", "outbound"), ("reason", reason)],
    )
}

/// A normal request still gets through.
fn still_serves(m: &HttpMesh) {
    let rt = runtime();
    rt.block_on(async {
        let mut c = Client::http1(m.a_out).await;
        let a = c.send("GET", "/v1/still-here", &[], "").await.unwrap();
        assert_eq!(a.status, 200, "the proxy stopped serving: {a:?}");
    });
}

#[test]
fn a_header_bomb_gets_431_and_the_proxy_keeps_serving() {
    let m = mesh();
    let big = format!(
        "GET /v1/bomb HTTP/1.1\r\nHost: s\r\nX-Bomb: {}\r\n\r\n",
        "a".repeat(70 * 1024)
    );
    assert_eq!(
        status_of(&raw_exchange(m.a_out, big.as_bytes(), QUIET)),
        Some(431)
    );
    let many: String = (0..150).map(|i| format!("X-H{i}: v\r\n")).collect();
    let many = format!("GET /v1/bomb HTTP/1.1\r\nHost: s\r\n{many}\r\n");
    assert_eq!(
        status_of(&raw_exchange(m.a_out, many.as_bytes(), QUIET)),
        Some(431)
    );
    assert_eq!(violations(&m, "header_too_large"), 1.0);
    assert_eq!(violations(&m, "too_many_headers"), 1.0);
    still_serves(&m);
    assert_eq!(m.app.seen(), vec!["/v1/still-here"]);
}

#[test]
fn every_request_smuggling_form_gets_400_and_nothing_reaches_the_app() {
    let m = mesh();
    let smuggled = "GET /v1/smuggled HTTP/1.1\r\nHost: s\r\n\r\n";
    let forms = [
        (
            "Content-Length: 5\r\nTransfer-Encoding: chunked\r\n",
            "0\r\n\r\n",
            "content_length_with_transfer_encoding",
        ),
        (
            "Transfer-Encoding: chunked\r\nContent-Length: 5\r\n",
            "0\r\n\r\n",
            "content_length_with_transfer_encoding",
        ),
        (
            "Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n",
            "0\r\n\r\n",
            "repeated_transfer_encoding",
        ),
        (
            "Transfer-Encoding: chunked, chunked\r\n",
            "0\r\n\r\n",
            "repeated_transfer_encoding",
        ),
        ("Content-Length: +5\r\n", "hello", "invalid_content_length"),
        (
            "Content-Length: 5\r\nContent-Length: 6\r\n",
            "hello",
            "repeated_content_length",
        ),
        (
            "Transfer-Encoding: gzip\r\n",
            "",
            "unsupported_transfer_encoding",
        ),
    ];
    for (headers, body, reason) in forms {
        let before = violations(&m, reason);
        let req = format!("GET /v1/a HTTP/1.1\r\nHost: s\r\n{headers}\r\n{body}{smuggled}");
        let got = raw_exchange(m.a_out, req.as_bytes(), QUIET);
        assert_eq!(
            status_of(&got),
            Some(400),
            "{headers:?}: {}",
            String::from_utf8_lossy(&got)
        );
        assert_eq!(violations(&m, reason), before + 1.0, "{headers:?}");
    }
    still_serves(&m);
    assert_eq!(
        m.app.seen(),
        vec!["/v1/still-here"],
        "nothing smuggled reached the app"
    );
}

#[test]
fn a_pipelined_valid_request_after_a_chunked_body_still_works() {
    let m = mesh();
    let req = "POST /v1/a HTTP/1.1\r\nHost: s\r\nTransfer-Encoding: chunked\r\n\r\n\
               5;ext=1\r\nhello\r\n0\r\nX-Trailer: t\r\n\r\n\
               GET /v1/b HTTP/1.1\r\nHost: s\r\nContent-Length: 0\r\n\r\n\
               GET /v1/c HTTP/1.1\r\nHost: s\r\nConnection: close\r\n\r\n";
    let got = String::from_utf8_lossy(&raw_exchange(m.a_out, req.as_bytes(), QUIET)).into_owned();
    // POST is not allowed by the policy (403); both GETs are.
    assert_eq!(got.matches("HTTP/1.1 403").count(), 1, "{got}");
    assert_eq!(got.matches("HTTP/1.1 200").count(), 2, "{got}");
    assert_eq!(m.app.seen(), vec!["/v1/b", "/v1/c"]);
}

#[test]
fn slowloris_gets_408_after_the_header_read_timeout() {
    let m = mesh();
    let mut s = TcpStream::connect(m.a_out).unwrap();
    s.set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    s.write_all(b"GET /v1/slow HTTP/1.1\r\nHost: s\r\n")
        .unwrap();
    let started = Instant::now();
    let mut got = Vec::new();
    // One header line every 300 ms, for at most 10 s.
    for i in 0..33 {
        if s.write_all(format!("X-Slow-{i}: z\r\n").as_bytes())
            .is_err()
        {
            break;
        }
        got.extend(read_until_quiet(&mut s));
        if !got.is_empty() {
            break;
        }
        // Meanwhile others are served.
        if i == 1 {
            still_serves(&m);
        }
    }
    assert_eq!(
        status_of(&got),
        Some(408),
        "{}",
        String::from_utf8_lossy(&got)
    );
    assert!(started.elapsed() < Duration::from_secs(10));
    assert_eq!(violations(&m, "header_read_timeout"), 1.0);
    assert!(!m.app.seen().contains(&"/v1/slow".to_owned()));
}

/// One HTTP/2 frame.
fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

const HEADERS: u8 = 0x1;
const RST_STREAM: u8 = 0x3;
const SETTINGS: u8 = 0x4;
const GOAWAY: u8 = 0x7;
const CONTINUATION: u8 = 0x9;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const CANCEL: u32 = 0x8;
const ENHANCE_YOUR_CALM: u32 = 0xb;

/// GET /v1/rr for server.demo in HPACK: static-table method and scheme,
/// path and authority as literals without indexing.
fn request_block() -> Vec<u8> {
    let mut b = vec![0x82, 0x86, 0x04, 6];
    b.extend_from_slice(b"/v1/rr");
    b.extend_from_slice(&[0x01, 11]);
    b.extend_from_slice(b"server.demo");
    b
}

/// The error code of the first GOAWAY in `raw` (frames from the server).
fn goaway_code(raw: &[u8]) -> Option<u32> {
    let mut i = 0;
    while i + 9 <= raw.len() {
        let len = u32::from_be_bytes([0, raw[i], raw[i + 1], raw[i + 2]]) as usize;
        if raw[i + 3] == GOAWAY && i + 9 + 8 <= raw.len() {
            let p = &raw[i + 9..];
            return Some(u32::from_be_bytes([p[4], p[5], p[6], p[7]]));
        }
        i += 9 + len;
    }
    None
}

/// What an HTTP/2 client sends first.
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

fn h2_attack(addr: SocketAddr, frames: Vec<u8>) -> Vec<u8> {
    let mut bytes = PREFACE.to_vec();
    bytes.extend(frame(SETTINGS, 0, 0, &[]));
    bytes.extend(frames);
    raw_exchange(addr, &bytes, QUIET)
}

#[test]
fn http2_rapid_reset_gets_goaway_and_the_proxy_keeps_serving() {
    let m = mesh();
    let block = request_block();
    let mut frames = Vec::new();
    for i in 0..5000u32 {
        let id = 2 * i + 1;
        frames.extend(frame(HEADERS, END_HEADERS | END_STREAM, id, &block));
        frames.extend(frame(RST_STREAM, 0, id, &CANCEL.to_be_bytes()));
    }
    let got = h2_attack(m.a_out, frames);
    assert_eq!(goaway_code(&got), Some(ENHANCE_YOUR_CALM));
    palisade_tests::eventually("rapid reset counted", QUIET, || {
        (violations(&m, "h2_rapid_reset") == 1.0).then_some(())
    });
    still_serves(&m);
    assert!(
        m.app.seen().len() < 5000,
        "the resets were refused, not all served"
    );
}

#[test]
fn a_continuation_flood_gets_goaway_and_the_proxy_keeps_serving() {
    let m = mesh();
    let mut frames = frame(HEADERS, END_STREAM, 1, &request_block());
    for i in 0..10_000u32 {
        // A literal header without indexing, new name each time.
        let name = format!("x-flood-{i}");
        let mut block = vec![0x00, name.len() as u8];
        block.extend_from_slice(name.as_bytes());
        block.extend_from_slice(&[1, b'v']);
        frames.extend(frame(CONTINUATION, 0, 1, &block));
    }
    let got = h2_attack(m.a_out, frames);
    assert_eq!(goaway_code(&got), Some(ENHANCE_YOUR_CALM));
    palisade_tests::eventually("CONTINUATION flood counted", QUIET, || {
        (violations(&m, "h2_continuation_flood") == 1.0).then_some(())
    });
    still_serves(&m);
    assert!(m.app.seen().iter().all(|p| p == "/v1/still-here"));
}

/// Streams the stalling client opens: as many as one connection may.
const STALLED_STREAMS: usize = 100;
const LARGE_MIB: usize = 8;

#[test]
fn a_client_that_stops_reading_many_large_responses_does_not_starve_the_others() {
    // A 504 rather than a wait if a request cannot even start.
    let m = HttpMesh::start(
        &default_ingress(),
        |a| a.extra_yaml += "http:\n  request_timeout: 10s\n",
        |_| {},
    );
    // The connection between the sidecars is open before the attack.
    still_serves(&m);
    let rt = runtime();
    rt.block_on(async {
        // The stalling client: HTTP/2 with a zero stream window, so not one
        // byte of its responses can be delivered, and it never reads.
        let tcp = tokio::net::TcpStream::connect(m.a_out).await.unwrap();
        let (mut h2c, conn) = h2::client::Builder::new()
            .initial_window_size(0)
            .handshake::<_, bytes::Bytes>(tcp)
            .await
            .expect("HTTP/2 handshake");
        tokio::spawn(conn);
        let mut pending = Vec::new();
        for _ in 0..STALLED_STREAMS {
            h2c = h2c.ready().await.expect("a stream slot");
            let req = http::Request::get(format!("http://server.demo/v1/large/{LARGE_MIB}"))
                .body(())
                .unwrap();
            let (resp, _) = h2c.send_request(req, true).expect("send");
            pending.push(resp);
        }
        let mut held = Vec::new();
        for resp in pending {
            let resp = resp.await.expect("response head");
            assert_eq!(resp.status(), 200);
            held.push(resp);
        }
        assert_eq!(
            m.app.seen().len(),
            STALLED_STREAMS + 1,
            "every stalled request reached the app"
        );

        // Meanwhile other clients of the same route are served in full.
        let others = (0..4).map(|i| async move {
            let mut c = Client::connect(m.a_out, i % 2 == 1).await;
            let small = c.send("GET", "/v1/small", &[], "").await.unwrap();
            assert_eq!(small.status, 200, "{small:?}");
            let large = c.send("GET", "/v1/large/1", &[], "").await.unwrap();
            assert_eq!(large.status, 200, "{:?}", large.headers);
            assert_eq!(large.body.len(), 1 << 20, "the whole body arrives");
        });
        let served = tokio::time::timeout(
            Duration::from_secs(60),
            futures_util::future::join_all(others),
        )
        .await;
        assert!(
            served.is_ok(),
            "other clients were starved while one client held its streams"
        );
        // The stalled streams are still open: nothing of theirs was delivered.
        assert_eq!(held.len(), STALLED_STREAMS);
        drop(held);
    });
    still_serves(&m);
}

/// Read until the peer closes; panics if it is still open after `limit`.
fn read_until_closed(s: &mut TcpStream, limit: Duration) -> Vec<u8> {
    s.set_read_timeout(Some(limit)).unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    loop {
        match std::io::Read::read(s, &mut buf) {
            Ok(0) => return out,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                panic!("the connection is still open after {limit:?}")
            }
            Err(_) => return out,
        }
    }
}

#[test]
fn http2_slowloris_is_closed_after_the_header_read_timeout_and_frees_its_slots() {
    let m = HttpMesh::start(
        &default_ingress(),
        |a| {
            a.routes[0].protocol = Protocol::Http2;
            a.extra_yaml += "max_connections: 3\nhttp:\n  header_read_timeout: 3s\n";
        },
        |_| {},
    );
    let connect = |bytes: &[u8]| {
        let mut s = TcpStream::connect(m.a_out).unwrap();
        s.write_all(bytes).unwrap();
        s
    };
    let mut slow = vec![
        // The preface, half of it.
        connect(&PREFACE[..16]),
        // The preface, never followed by SETTINGS.
        connect(PREFACE),
        // HEADERS without END_HEADERS, and no CONTINUATION ever.
        connect(
            &[
                PREFACE,
                &frame(SETTINGS, 0, 0, &[]),
                &frame(HEADERS, END_STREAM, 1, &request_block()),
            ]
            .concat(),
        ),
    ];
    // They hold every connection slot: a legitimate client is turned away.
    palisade_tests::eventually("the slots are taken", QUIET, || {
        let mut s = TcpStream::connect(m.a_out).unwrap();
        let _ = s.write_all(PREFACE);
        let refused = m.a.metric(
            "tls_handshake_failures_total",
            &[("reason", "max_connections")],
        );
        (refused >= 1.0 && read_until_closed(&mut s, QUIET).is_empty()).then_some(())
    });

    for s in &mut slow {
        read_until_closed(s, Duration::from_secs(20));
    }
    palisade_tests::eventually("the timeouts counted", QUIET, || {
        (violations(&m, "h2_preface_timeout") == 2.0
            && violations(&m, "h2_header_read_timeout") == 1.0)
            .then_some(())
    });
    runtime().block_on(async {
        let mut c = Client::http2(m.a_out).await;
        let a = c.send("GET", "/v1/after", &[], "").await.unwrap();
        assert_eq!(a.status, 200, "{a:?}");
    });
    assert_eq!(
        m.app.seen(),
        vec!["/v1/after"],
        "the slow request never reached the app"
    );
}

const PING: u8 = 0x6;

/// Whether `raw` (frames from the server) holds a frame of `kind`.
fn has_frame(raw: &[u8], kind: u8) -> bool {
    let mut i = 0;
    while i + 9 <= raw.len() {
        if raw[i + 3] == kind {
            return true;
        }
        i += 9 + u32::from_be_bytes([0, raw[i], raw[i + 1], raw[i + 2]]) as usize;
    }
    false
}

#[test]
fn an_idle_http2_connection_is_pinged_and_closed_when_the_ping_goes_unanswered() {
    let m = HttpMesh::start(
        &default_ingress(),
        |a| a.extra_yaml += "http:\n  ping_interval: 1s\n  ping_timeout: 1s\n",
        |_| {},
    );
    let mut s = TcpStream::connect(m.a_out).unwrap();
    s.write_all(&[PREFACE, &frame(SETTINGS, 0, 0, &[])].concat())
        .unwrap();
    let got = read_until_closed(&mut s, Duration::from_secs(20));
    assert!(has_frame(&got, PING), "no PING before the close");
    still_serves(&m);
}
