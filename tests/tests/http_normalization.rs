//! What is authorized is what the app gets. Two real sidecars in front of a
//! lenient app (it decodes `%2f`, maps `\` and `;`, resolves `..`), with a
//! policy that allows the client but denies `/admin/*` and the host
//! `admin.demo`. Every path, host and request-line trick is sent over
//! HTTP/1.1 and HTTP/2, through the client's sidecar (plaintext to A's
//! outbound listener) and straight to the server's sidecar over mTLS with
//! a real client SVID. The app's own log is the ground truth: the secret
//! and the denied host never reach it, the legitimate request does, with
//! the normalized path and one authority.

use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use palisade_tests::http::{runtime, status_of, HttpMesh};
use palisade_tests::lenient::{LenientApp, SECRET_PATH};
use palisade_tests::proxy::CLIENT_ID;
use palisade_tests::route::{Route, Routes, ROUTES};
use palisadectl::local::Protocol;

const QUIET: Duration = Duration::from_secs(3);

/// Allow the client at L4; deny `/admin/*` and the host `admin.demo` per request.
fn ingress() -> String {
    format!(
        "  ingress:\n    - name: client\n      action: allow\n      from: [{{identity: {CLIENT_ID}}}]\n    \
         - name: no-admin\n      action: deny\n      http:\n        - paths: [\"/admin/*\"]\n    \
         - name: no-admin-host\n      action: deny\n      http:\n        - hosts: [admin.demo]\n"
    )
}

fn mesh(tweak_b: impl FnOnce(&mut palisade_tests::proxy::ProxySpec)) -> HttpMesh<LenientApp> {
    HttpMesh::with_app(LenientApp::start(), &ingress(), |_| {}, tweak_b)
}

/// Both routes, with the request shapes these tables use.
struct Net(Routes);

impl Net {
    fn of(m: &HttpMesh<LenientApp>) -> Net {
        Net(Routes::of(m))
    }

    /// Raw HTTP/1 bytes; returns everything that came back.
    fn h1_raw(&self, route: Route, bytes: &[u8]) -> Vec<u8> {
        self.0.raw(route, bytes, QUIET)
    }

    /// `GET <target>` with these header lines (`Connection: close` added).
    fn h1(&self, route: Route, target: &str, headers: &[&str]) -> (Option<u16>, String) {
        let mut req = format!("GET {target} HTTP/1.1\r\n");
        for h in headers {
            req += &format!("{h}\r\n");
        }
        req += "Connection: close\r\n\r\n";
        let back = self.h1_raw(route, req.as_bytes());
        (
            status_of(&back),
            String::from_utf8_lossy(&back).into_owned(),
        )
    }

    /// One HTTP/2 request on a fresh connection; `None` if the client
    /// library itself cannot express it.
    fn h2(
        &self,
        route: Route,
        authority: &str,
        path: &str,
        headers: &[(&str, &str)],
    ) -> Option<(u16, String)> {
        let mut b = Request::builder()
            .method("GET")
            .uri(format!("http://{authority}{path}"));
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        let req = b.body(Full::new(Bytes::new())).ok()?;
        runtime().block_on(async {
            match self.0.client(route, true).await.request(req).await {
                Ok(a) => Some((a.status, a.body)),
                // A stream reset is a refusal too; report it as status 0.
                Err(e) => Some((0, e.to_string())),
            }
        })
    }
}

/// Nothing outside the policy reached the app: not the secret, not the
/// denied host; and every request it got named exactly one host.
fn assert_app_saw_nothing_denied(app: &LenientApp) {
    for s in app.log() {
        assert_ne!(s.path, SECRET_PATH, "the secret reached the app: {s:?}");
        assert_eq!(s.hosts.len(), 1, "not exactly one Host: {s:?}");
        let host = s.hosts[0].to_ascii_lowercase();
        assert!(
            !host.trim_end_matches('.').starts_with("admin.demo"),
            "the denied host reached the app: {s:?}"
        );
    }
}

/// (request target, status for the default normalization)
const PATH_TRICKS_H1: &[(&str, u16)] = &[
    ("/admin/secret.txt", 403),
    ("/public/../admin/secret.txt", 403),
    ("/%61dmin/secret.txt", 403),
    ("//admin/secret.txt", 403),
    ("/admin/./secret.txt", 403),
    ("/./admin/secret.txt", 403),
    ("/admin//secret.txt", 403),
    ("/%2e%2e/admin/secret.txt", 403),
    ("/public/%2e%2e/admin/secret.txt", 403),
    ("/public/%2E%2E/admin/secret.txt", 403),
    ("/public/ok.txt/../../admin/secret.txt", 403),
    ("/../../admin/secret.txt", 403),
    ("/admin/secret.txt?x=1", 403),
    ("http://public.demo/admin/secret.txt", 403),
    ("/admin%2fsecret.txt", 400),
    ("/admin%2Fsecret.txt", 400),
    ("/public/..%2fadmin/secret.txt", 400),
    ("/admin%5csecret.txt", 400),
    ("/admin\\secret.txt", 400),
    ("/public\\..\\admin\\secret.txt", 400),
    ("\\admin\\secret.txt", 400),
    ("/admin;x=1/secret.txt", 400),
    ("/admin/..;/admin/secret.txt", 400),
    ("/admin%3bx/secret.txt", 400),
    ("/admin/secret.txt#x", 400),
    ("/admin%00/secret.txt", 400),
    ("/admin/secret.txt%00", 400),
    ("/%zzadmin/secret.txt", 400),
    ("/admin/secret.txt%", 400),
    ("/admin/secret.txt%2", 400),
    ("/%%32%65%%32%65/admin/secret.txt", 400),
    // Allowed, and harmless: the app maps them elsewhere.
    ("/ADMIN/secret.txt", 200),
    ("/%2561dmin/secret.txt", 200),
    ("/public/%c0%ae%c0%ae/admin/secret.txt", 200),
];

/// (absolute-form prefix of `/public/ok.txt`, header lines, status)
type HostTrick = (&'static str, &'static [&'static str], u16);

/// HTTP/1.1 host tricks on `/public/ok.txt`.
const HOST_TRICKS_H1: &[HostTrick] = &[
    ("", &["Host: admin.demo"], 403),
    ("", &["Host: ADMIN.DEMO."], 403),
    ("", &["Host: admin.demo:80"], 403),
    ("", &["Host: Admin.Demo:080"], 403),
    ("http://admin.demo.", &["Host: admin.demo"], 403),
    ("http://public.demo", &["Host: admin.demo"], 400),
    ("http://admin.demo", &["Host: public.demo"], 400),
    ("", &["Host: public.demo", "Host: admin.demo"], 400),
    ("", &["Host: public.demo", "Host: public.demo"], 400),
    ("", &["Host: user@admin.demo"], 400),
    ("", &["Host: admin..demo"], 400),
    ("", &["Host: public.demo:99999"], 400),
];

#[test]
fn http1_path_and_host_tricks_never_reach_the_app_by_either_route() {
    let m = mesh(|_| {});
    let net = Net::of(&m);
    for route in ROUTES {
        for (target, want) in PATH_TRICKS_H1 {
            let (status, text) = net.h1(route, target, &["Host: public.demo"]);
            assert_eq!(status, Some(*want), "{route:?} {target}: {text}");
            assert!(!text.contains("SECRET"), "{route:?} {target}: {text}");
        }
        for (prefix, headers, want) in HOST_TRICKS_H1 {
            let target = format!("{prefix}/public/ok.txt");
            let (status, text) = net.h1(route, &target, headers);
            assert_eq!(
                status,
                Some(*want),
                "{route:?} {target} {headers:?}: {text}"
            );
        }
        // B's port says `http1`: the HTTP/1 server refuses what is not (a
        // lower-case method is one, and decided per request).
        for line in NOT_HTTP1 {
            let back = net.h1_raw(route, line);
            let status = status_of(&back);
            assert!(
                matches!(status, None | Some(400) | Some(403)),
                "{route:?} {line:?}: {status:?}"
            );
        }
    }
    assert_app_saw_nothing_denied(&m.app);
    // Each class is counted where it was refused: A for its app, B for mTLS.
    for (proxy, direction) in [(&m.a, "outbound"), (&m.b, "inbound")] {
        for reason in [
            "escaped_slash",
            "backslash",
            "path_parameters",
            "fragment",
            "encoded_nul",
            "invalid_percent_encoding",
            "conflicting_authority",
            "duplicate_host",
            "invalid_authority",
        ] {
            let n = proxy.metric(
                "http_limit_violations_total",
                &[("direction", direction), ("reason", reason)],
            );
            assert!(n >= 1.0, "{direction} {reason} not counted");
        }
    }
    // The allowed oddities arrive as normalized, case kept.
    let seen: Vec<String> = m.app.log().iter().map(|s| s.target.clone()).collect();
    for t in [
        "/ADMIN/secret.txt",
        "/%2561dmin/secret.txt",
        "/public/%C0%AE%C0%AE/admin/secret.txt",
    ] {
        assert_eq!(
            seen.iter().filter(|s| *s == t).count(),
            2,
            "{t} in {seen:?}"
        );
    }
}

/// (`:authority`, `:path`, extra headers, status)
type H2Trick = (
    &'static str,
    &'static str,
    &'static [(&'static str, &'static str)],
    u16,
);

/// HTTP/2 cannot carry a path starting with `\` or a fragment, so those
/// are HTTP/1 only.
const TRICKS_H2: &[H2Trick] = &[
    ("public.demo", "/admin/secret.txt", &[], 403),
    ("public.demo", "/public/../admin/secret.txt", &[], 403),
    ("public.demo", "/%61dmin/secret.txt", &[], 403),
    ("public.demo", "//admin/secret.txt", &[], 403),
    ("public.demo", "/admin/./secret.txt", &[], 403),
    ("public.demo", "/%2e%2e/admin/secret.txt", &[], 403),
    ("public.demo", "/public/%2e%2e/admin/secret.txt", &[], 403),
    ("public.demo", "/admin%2fsecret.txt", &[], 400),
    ("public.demo", "/admin%5csecret.txt", &[], 400),
    ("public.demo", "/admin\\secret.txt", &[], 400),
    ("public.demo", "/admin;x=1/secret.txt", &[], 400),
    ("public.demo", "/admin%00/secret.txt", &[], 400),
    ("public.demo", "/%zzadmin/secret.txt", &[], 400),
    ("admin.demo", "/public/ok.txt", &[], 403),
    ("ADMIN.DEMO.", "/public/ok.txt", &[], 403),
    ("admin.demo:80", "/public/ok.txt", &[], 403),
    (
        "public.demo",
        "/public/ok.txt",
        &[("host", "admin.demo")],
        400,
    ),
    (
        "admin.demo",
        "/public/ok.txt",
        &[("host", "public.demo")],
        400,
    ),
    (
        "public.demo",
        "/public/ok.txt",
        &[("host", "public.demo"), ("host", "admin.demo")],
        400,
    ),
    ("public.demo", "/ADMIN/secret.txt", &[], 200),
];

#[test]
fn http2_path_and_authority_tricks_never_reach_the_app_by_either_route() {
    let m = mesh(|_| {});
    let net = Net::of(&m);
    for route in ROUTES {
        for (authority, path, headers, want) in TRICKS_H2 {
            let (status, text) = net
                .h2(route, authority, path, headers)
                .unwrap_or_else(|| panic!("cannot build {authority} {path}"));
            assert_eq!(
                status, *want,
                "{route:?} {authority} {path} {headers:?}: {text}"
            );
            assert!(!text.contains("SECRET"), "{route:?} {path}: {text}");
        }
    }
    assert_app_saw_nothing_denied(&m.app);
}

#[test]
fn the_app_receives_exactly_what_was_authorized_and_the_access_log_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("access.log");
    let m = mesh(|b| {
        b.extra_yaml += &format!(
            "access_log:\n  enabled: true\n  path: \"{}\"\n",
            log.display()
        )
    });
    let net = Net::of(&m);
    for route in ROUTES {
        m.app.clear();
        let (status, text) = net.h1(
            route,
            "/public/./x/../ok.txt?q=%2f..",
            &["Host: PUBLIC.demo.:80"],
        );
        assert_eq!(status, Some(200), "{route:?}: {text}");
        let (status, text) = net
            .h2(route, "Public.Demo", "//public/%6fk.txt?q=1", &[])
            .unwrap();
        assert_eq!(status, 200, "{route:?}: {text}");
        let seen = m.app.log();
        assert_eq!(seen.len(), 2, "{route:?}: {seen:?}");
        assert_eq!(seen[0].target, "/public/ok.txt?q=%2f..", "{route:?}");
        assert_eq!(seen[1].target, "/public/ok.txt?q=1", "{route:?}");
        for s in &seen {
            assert_eq!(s.hosts, vec!["public.demo"], "{route:?}: {s:?}");
            assert_eq!(s.version, "HTTP/1.1");
            assert_eq!(s.xfcc.len(), 1, "{route:?}: {s:?}");
            assert!(s.xfcc[0].ends_with(&format!("URI={CLIENT_ID}")), "{s:?}");
        }
    }
    let text = palisade_tests::eventually("four access log lines", Duration::from_secs(5), || {
        let t = std::fs::read_to_string(&log).unwrap_or_default();
        (t.lines().count() >= 4).then_some(t)
    });
    for line in text.lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        assert_eq!(v["authority"], "public.demo", "{line}");
        assert!(
            v["path"] == "/public/ok.txt?q=%2f.." || v["path"] == "/public/ok.txt?q=1",
            "{line}"
        );
    }
}

#[test]
fn escaped_slashes_set_to_normalize_are_decoded_then_authorized() {
    let m = mesh(|b| {
        b.extra_yaml += "http:\n  normalization:\n    escaped_slashes: normalize\n    \
                         path_parameters: normalize\n    backslash: normalize\n"
    });
    let net = Net::of(&m);
    let route = Route::DirectMtls;
    for (target, want) in [
        ("/admin%2fsecret.txt", 403),
        ("/admin%5Csecret.txt", 403),
        ("/admin\\secret.txt", 403),
        ("/admin;x=1/secret.txt", 403),
        ("/public/..;/admin/secret.txt", 403),
        ("/public%2Fok.txt;jsessionid=1", 200),
    ] {
        let (status, text) = net.h1(route, target, &["Host: public.demo"]);
        assert_eq!(status, Some(want), "{target}: {text}");
    }
    assert_app_saw_nothing_denied(&m.app);
    assert_eq!(
        m.app
            .log()
            .iter()
            .map(|s| s.target.as_str())
            .collect::<Vec<_>>(),
        vec!["/public/ok.txt"]
    );
}

/// Request lines a lenient server reads but that are not HTTP/1.x.
const NOT_HTTP1: &[&[u8]] = &[
    b"GET /admin/secret.txt HTTP/1.2\r\nHost: public.demo\r\n\r\n",
    b"GET\t/admin/secret.txt\tHTTP/1.1\r\nHost: public.demo\r\n\r\n",
    b"GET /admin/secret.txt HTTP/1.1 \r\nHost: public.demo\r\n\r\n",
    b"GET /admin/secret.txt HTTP/01.1\r\nHost: public.demo\r\n\r\n",
    b"GET /admin/secret.txt\r\n",
    b"GET /admin/secret.txt\r\n\r\n",
    b"get /admin/secret.txt HTTP/1.1\r\nHost: public.demo\r\n\r\n",
];

/// Request lines detection does not call HTTP/1.x: on a port with an HTTP
/// rule they are refused, never forwarded as opaque bytes. (On a port set
/// to `http1` the HTTP/1 server itself answers them 400: see
/// `http1_path_and_host_tricks_never_reach_the_app_by_either_route`.)
#[test]
fn request_lines_that_are_not_http1_never_reach_the_app_and_are_counted() {
    // B detects the protocol (as a transparent port does by default).
    let m = mesh(|b| b.inbound[0].protocol = Protocol::Detect);
    let net = Net::of(&m);
    let lines = NOT_HTTP1;
    let refused = |m: &HttpMesh<LenientApp>| {
        m.b.metric(
            "tls_handshake_failures_total",
            &[("direction", "inbound"), ("reason", "http_only")],
        )
    };
    let mut expected = 0.0;
    for route in ROUTES {
        for line in lines {
            let back = net.h1_raw(route, line);
            let text = String::from_utf8_lossy(&back);
            assert!(!text.contains("SECRET"), "{route:?} {line:?}: {text}");
            expected += 1.0;
            palisade_tests::eventually("the refusal is counted", Duration::from_secs(5), || {
                (refused(&m) >= expected).then_some(())
            });
        }
    }
    assert!(m.app.log().is_empty(), "{:?}", m.app.log());
    // A real HTTP/1.1 request still gets through on the same port.
    let (status, text) = net.h1(Route::DirectMtls, "/public/ok.txt", &["Host: public.demo"]);
    assert_eq!(status, Some(200), "{text}");
    assert!(m.app.reached("/public/ok.txt"));
}

/// Egress rules get the same treatment at the client's sidecar: the host
/// the rule allowed is the one sent, and nothing else leaves.
#[test]
fn an_egress_host_rule_is_decided_and_forwarded_on_one_authority() {
    use palisade_tests::policy::{policy_doc, use_policy};
    use palisade_tests::proxy::SERVER_ID;
    let dir = tempfile::tempdir().unwrap();
    let egress = dir.path().join("client.yaml");
    let body = format!(
        "  egress:\n    - name: public-only\n      action: allow\n      to: [{{identity: {SERVER_ID}}}]\n      \
         http:\n        - hosts: [public.demo]\n"
    );
    std::fs::write(&egress, policy_doc("client", CLIENT_ID, &body)).unwrap();
    let m = HttpMesh::with_app(
        LenientApp::start(),
        &ingress(),
        |a| use_policy(a, &egress, "  debounce: 10ms\n"),
        |_| {},
    );
    let net = Net::of(&m);
    let via = Route::ViaClientSidecar;
    for (prefix, headers, want) in [
        ("", &["Host: public.demo"][..], 200),
        ("", &["Host: PUBLIC.DEMO."], 200),
        ("", &["Host: public.demo:80"], 200),
        ("", &["Host: admin.demo"], 403),
        ("http://public.demo", &["Host: admin.demo"], 400),
        ("http://admin.demo", &["Host: public.demo"], 400),
        ("", &["Host: public.demo", "Host: admin.demo"], 400),
    ] {
        let target = format!("{prefix}/public/ok.txt");
        let (status, text) = net.h1(via, &target, headers);
        assert_eq!(status, Some(want), "{target} {headers:?}: {text}");
    }
    for (authority, headers, want) in [
        ("public.demo", &[][..], 200),
        ("Public.Demo.", &[], 200),
        ("admin.demo", &[], 403),
        ("public.demo", &[("host", "admin.demo")], 400),
        ("admin.demo", &[("host", "public.demo")], 400),
    ] {
        let (status, text) = net.h2(via, authority, "/public/ok.txt", headers).unwrap();
        assert_eq!(status, want, "{authority} {headers:?}: {text}");
    }
    // Bytes that are not HTTP/1.x or HTTP/2 do not leave as opaque TCP.
    let back = net.h1_raw(
        via,
        b"GET /public/ok.txt HTTP/1.2\r\nHost: admin.demo\r\n\r\n",
    );
    assert!(
        status_of(&back).is_none(),
        "{}",
        String::from_utf8_lossy(&back)
    );
    palisade_tests::eventually("the refusal is counted", Duration::from_secs(5), || {
        let labels = [("direction", "outbound"), ("reason", "http_only")];
        (m.a.metric("tls_handshake_failures_total", &labels) == 1.0).then_some(())
    });
    assert_app_saw_nothing_denied(&m.app);
    let log = m.app.log();
    assert_eq!(log.len(), 5, "{log:?}");
    assert!(log.iter().all(|s| s.hosts == ["public.demo"]), "{log:?}");
}
