//! Bodies an app may not read. A body on GET, HEAD, OPTIONS, DELETE or
//! TRACE is refused with 400 before anything reaches the app, unless the
//! port allows it; and an app connection that answered before the request
//! body was all sent never gets the rest of it, nor another request. The
//! app is one that, like many, never reads a GET body: what it parsed is
//! the ground truth. Bodies are sent through the client's sidecar and
//! straight to the server's over mTLS.

use std::io::Write;
use std::net::TcpStream;
use std::time::Duration;

use palisade_tests::http::{read_until_quiet, runtime, status_of, Client, HttpMesh};
use palisade_tests::lenient::{LenientApp, EARLY_PATH, SECRET_PATH};
use palisade_tests::proxy::CLIENT_ID;
use palisade_tests::route::{Route, Routes, ROUTES};

const QUIET: Duration = Duration::from_secs(3);

/// The request an attacker hides in a body: 43 bytes.
const SMUGGLED: &str = "GET /admin/secret.txt HTTP/1.1\r\nHost: x\r\n\r\n";

fn public_ingress() -> String {
    format!(
        "  ingress:\n    - name: public\n      action: allow\n      from: [{{identity: {CLIENT_ID}}}]\n      \
         http:\n        - {{methods: [GET, HEAD, OPTIONS, DELETE, TRACE, POST], paths: [\"/public/*\"]}}\n"
    )
}

fn lenient_mesh() -> HttpMesh<LenientApp> {
    HttpMesh::with_app(LenientApp::start(), &public_ingress(), |_| {}, |_| {})
}

fn refused(m: &HttpMesh<LenientApp>) -> f64 {
    m.b.metric(
        "http_limit_violations_total",
        &[("direction", "inbound"), ("reason", "body_not_allowed")],
    )
}

/// A plain GET of the public file gets the app's answer.
fn legitimate_get_is_served(net: &Routes, route: Route) {
    runtime().block_on(async {
        let mut c = net.client(route, false).await;
        let a = c.send("GET", "/public/ok.txt", &[], "").await.unwrap();
        assert_eq!((a.status, a.body.as_str()), (200, "ok"), "{route:?}: {a:?}");
    });
}

#[test]
fn a_body_on_get_and_the_like_gets_400_and_the_request_in_it_never_reaches_the_app() {
    assert_eq!(SMUGGLED.len(), 43);
    let m = lenient_mesh();
    let net = Routes::of(&m);
    let chunked = format!("{:x}\r\n{SMUGGLED}\r\n0\r\n\r\n", SMUGGLED.len());
    let forms = [
        ("GET", "Content-Length: 43\r\n", SMUGGLED.to_owned()),
        ("GET", "Transfer-Encoding: chunked\r\n", chunked),
        ("HEAD", "Content-Length: 43\r\n", SMUGGLED.to_owned()),
        ("OPTIONS", "Content-Length: 43\r\n", SMUGGLED.to_owned()),
        ("DELETE", "Content-Length: 43\r\n", SMUGGLED.to_owned()),
        ("TRACE", "Content-Length: 43\r\n", SMUGGLED.to_owned()),
    ];
    let mut count = 0.0;
    for route in ROUTES {
        for (method, framing, body) in &forms {
            let req = format!(
                "{method} /public/ok.txt HTTP/1.1\r\nHost: server.demo\r\nConnection: close\r\n{framing}\r\n{body}"
            );
            let got = net.raw(route, req.as_bytes(), QUIET);
            assert_eq!(
                status_of(&got),
                Some(400),
                "{route:?} {method} {framing:?}: {}",
                String::from_utf8_lossy(&got)
            );
            count += 1.0;
            assert_eq!(refused(&m), count, "{route:?} {method} {framing:?}");
        }

        // HTTP/2: a content-length, or DATA after HEADERS without END_STREAM.
        runtime().block_on(async {
            let mut c = net.client(route, true).await;
            let a = c
                .send("GET", "/public/ok.txt", &[], SMUGGLED)
                .await
                .unwrap();
            assert_eq!(a.status, 400, "{route:?}: {a:?}");

            let (h2c, conn) = h2::client::handshake(net.connect(route, true).await)
                .await
                .unwrap();
            tokio::spawn(conn);
            let get = || {
                http::Request::get("http://server.demo/public/ok.txt")
                    .body(())
                    .unwrap()
            };
            let mut h2c = h2c.ready().await.unwrap();
            let (resp, mut body) = h2c.send_request(get(), false).unwrap();
            body.send_data(bytes::Bytes::from_static(SMUGGLED.as_bytes()), true)
                .unwrap();
            assert_eq!(resp.await.unwrap().status(), 400, "{route:?}");
            // An empty DATA frame that only ends the stream is no body.
            let mut h2c = h2c.ready().await.unwrap();
            let (resp, mut body) = h2c.send_request(get(), false).unwrap();
            body.send_data(bytes::Bytes::new(), true).unwrap();
            assert_eq!(resp.await.unwrap().status(), 200, "{route:?}");
        });
        count += 2.0;
        assert_eq!(refused(&m), count, "{route:?}");

        legitimate_get_is_served(&net, route);
    }
    assert!(!m.app.reached(SECRET_PATH), "{:?}", m.app.log());
    let paths: Vec<_> = m.app.log().into_iter().map(|s| s.path).collect();
    assert_eq!(paths, vec!["/public/ok.txt"; 4]);
}

#[test]
fn a_port_that_allows_get_bodies_passes_them_to_the_app() {
    let m = HttpMesh::start(
        &palisade_tests::http::default_ingress(),
        |_| {},
        |b| b.inbound[0].allow_get_body = true,
    );
    runtime().block_on(async {
        for h2 in [false, true] {
            let mut c = Client::connect(m.a_out, h2).await;
            let a = c
                .send("GET", "/v1/search", &[], "{\"q\": 1}")
                .await
                .unwrap();
            assert_eq!(a.status, 200, "{a:?}");
            assert!(
                a.body.ends_with("{\"q\": 1}"),
                "the app got the body: {a:?}"
            );
        }
    });
    assert_eq!(m.app.seen(), vec!["/v1/search", "/v1/search"]);
}

#[test]
fn an_app_that_answers_before_reading_the_body_never_gets_the_rest_as_a_request() {
    let m = lenient_mesh();
    // The app answers this POST at once and never reads its body.
    let mut s = TcpStream::connect(m.a_out).unwrap();
    write!(
        s,
        "POST {EARLY_PATH} HTTP/1.1\r\nHost: server.demo\r\nContent-Length: 43\r\n\r\n"
    )
    .unwrap();
    s.set_read_timeout(Some(QUIET)).unwrap();
    let answer = read_until_quiet(&mut s);
    assert_eq!(
        status_of(&answer),
        Some(200),
        "{}",
        String::from_utf8_lossy(&answer)
    );
    // Only now does the rest of the body come: the app would read it as the
    // next request on that connection.
    let _ = s.write_all(SMUGGLED.as_bytes());
    let _ = read_until_quiet(&mut s);

    let net = Routes::of(&m);
    legitimate_get_is_served(&net, Route::ViaClientSidecar);
    legitimate_get_is_served(&net, Route::ViaClientSidecar);
    assert!(!m.app.reached(SECRET_PATH), "{:?}", m.app.log());
    let paths: Vec<_> = m.app.log().into_iter().map(|s| s.path).collect();
    assert_eq!(paths, vec![EARLY_PATH, "/public/ok.txt", "/public/ok.txt"]);
}
