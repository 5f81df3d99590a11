//! HTTP through two real sidecars on loopback: HTTP/1.1 and HTTP/2 clients,
//! per-request authorization with 403 naming the rule (without a body for
//! HEAD, also straight to the server's sidecar over mTLS), gRPC denied with
//! status 7, a policy change applied to the next request on a kept-alive
//! connection, WebSocket upgrades, XFCC, request metrics and the access log.

use std::time::Duration;

use palisade_tests::eventually;
use palisade_tests::http::{default_ingress, grpc_status, runtime, Client, HttpMesh};
use palisade_tests::proxy::{CLIENT_ID, SERVER_ID};
use palisade_tests::route::{Routes, ROUTES};

const SPOOFED: &str =
    "By=spiffe://cluster.local/ns/evil/sa/x;URI=spiffe://cluster.local/ns/demo/sa/admin";

fn ingress_with_admin_deny() -> String {
    default_ingress()
        + &format!(
            "    - name: no-admin\n      action: deny\n      from: [{{identity: {CLIENT_ID}}}]\n      \
             http:\n        - {{paths: [\"/v1/admin/*\"]}}\n"
        )
}

#[test]
fn http1_and_http2_requests_are_authorized_per_route_and_denials_name_the_rule() {
    let m = HttpMesh::start(&ingress_with_admin_deny(), |_| {}, |_| {});
    let rt = runtime();
    for (h2, app_version) in [(false, "HTTP/1.1"), (true, "HTTP/2.0")] {
        rt.block_on(async {
            let mut c = Client::connect(m.a_out, h2).await;
            let ok = c
                .send(
                    "GET",
                    "/v1/items?page=2",
                    &[("x-forwarded-client-cert", SPOOFED)],
                    "",
                )
                .await
                .unwrap();
            assert_eq!(ok.status, 200, "{ok:?}");
            assert!(ok.body.contains("path=/v1/items"), "{}", ok.body);
            // The app speaks what the client spoke, although the hop between
            // the sidecars is HTTP/2.
            assert!(
                ok.body.contains(&format!("version={app_version}")),
                "{}",
                ok.body
            );
            // Exactly one XFCC reaches the app: B's own, naming A. The copy the
            // client forged never does.
            assert!(
                ok.body
                    .contains(&format!("xfcc=By={SERVER_ID};URI={CLIENT_ID}\n")),
                "{}",
                ok.body
            );

            let not_listed = c.send("POST", "/v1/items", &[], "x").await.unwrap();
            assert_eq!(not_listed.status, 403);
            assert_eq!(not_listed.headers["x-palisade-denied"], "demo/server");
            assert_eq!(not_listed.body, "denied by policy demo/server\n");

            let by_rule = c.send("GET", "/v1/admin/users", &[], "").await.unwrap();
            assert_eq!(by_rule.status, 403);
            assert_eq!(by_rule.headers["x-palisade-denied"], "demo/server/no-admin");
            // Dot segments are resolved before any rule: the climb lands on
            // the admin deny, it cannot walk around it.
            let climb = c.send("GET", "/v1/../v1/admin/x", &[], "").await.unwrap();
            assert_eq!(climb.status, 403);
            assert_eq!(climb.headers["x-palisade-denied"], "demo/server/no-admin");
        });
    }
    let seen = m.app.seen();
    assert_eq!(
        seen,
        vec!["/v1/items", "/v1/items"],
        "only allowed requests reach the app"
    );

    let peer = ("peer", CLIENT_ID);
    let allow = [("policy", "demo/server"), ("rule", "client-reads"), peer];
    assert_eq!(m.b.metric("inbound_http_authz_allow_total", &allow), 2.0);
    let by_rule = [("policy", "demo/server"), ("rule", "no-admin"), peer];
    assert_eq!(m.b.metric("inbound_http_authz_deny_total", &by_rule), 4.0);
    let no_rule = [("policy", "demo/server"), ("rule", ""), peer];
    assert_eq!(m.b.metric("inbound_http_authz_deny_total", &no_rule), 2.0);

    let inbound = [("direction", "inbound"), peer];
    assert_eq!(m.b.metric("request_total", &inbound), 8.0);
    let forbidden = [
        ("direction", "inbound"),
        peer,
        ("status_code", "403"),
        ("classification", "success"),
    ];
    assert_eq!(m.b.metric("response_total", &forbidden), 6.0);
    assert_eq!(m.b.metric("response_latency_ms_count", &inbound), 8.0);
    let outbound = [("direction", "outbound"), ("peer", SERVER_ID)];
    assert_eq!(m.a.metric("request_total", &outbound), 8.0);
    let ok = [
        ("direction", "outbound"),
        ("peer", SERVER_ID),
        ("status_code", "200"),
        ("classification", "success"),
    ];
    assert_eq!(m.a.metric("response_total", &ok), 2.0);

    // Two client connections, one multiplexed HTTP/2 connection between the
    // sidecars.
    let between = [("direction", "inbound"), peer, ("tls", "true")];
    assert_eq!(m.b.metric("tcp_open_total", &between), 1.0);
    assert_eq!(
        m.a.metric("tcp_open_total", &[("direction", "outbound")]),
        2.0
    );
}

#[test]
fn a_policy_change_applies_to_the_next_request_on_a_kept_alive_connection() {
    let m = HttpMesh::start(&default_ingress(), |_| {}, |_| {});
    let rt = runtime();
    rt.block_on(async {
        let mut c = Client::http1(m.a_out).await;
        assert_eq!(c.send("GET", "/v1/a", &[], "").await.unwrap().status, 200);
        // Only /v2 is allowed from now on.
        m.set_ingress(&default_ingress().replace("/v1/*", "/v2/*"));
        let after = c.send("GET", "/v1/a", &[], "").await.unwrap();
        assert_eq!(after.status, 403, "{after:?}");
        assert_eq!(c.send("GET", "/v2/a", &[], "").await.unwrap().status, 200);
    });
    // All three requests went over the one client connection.
    assert_eq!(
        m.a.metric("tcp_open_total", &[("direction", "outbound")]),
        1.0
    );
    assert_eq!(m.app.seen(), vec!["/v1/a", "/v2/a"]);
}

#[test]
fn a_denied_grpc_call_gets_permission_denied_and_an_allowed_one_keeps_its_trailers() {
    let m = HttpMesh::start(&default_ingress(), |_| {}, |_| {});
    let rt = runtime();
    rt.block_on(async {
        let mut c = Client::http2(m.a_out).await;
        let ok = c.grpc("Allowed", b"hello").await.unwrap();
        assert_eq!(ok.status, 200);
        assert_eq!(grpc_status(&ok).as_deref(), Some("0"), "{ok:?}");
        assert!(ok.body.ends_with("hello"), "{ok:?}");
        assert!(ok.trailers.is_some(), "trailers crossed both sidecars");

        let denied = c.grpc("Forbidden", b"hello").await.unwrap();
        assert_eq!(denied.status, 200, "gRPC errors travel as HTTP 200");
        assert_eq!(grpc_status(&denied).as_deref(), Some("7"), "{denied:?}");
        assert_eq!(denied.headers["x-palisade-denied"], "demo/server");
        assert!(denied.body.is_empty());
    });
    assert_eq!(m.app.seen(), vec!["/demo.Echo/Allowed"]);
    let failed = [("direction", "inbound"), ("classification", "failure")];
    assert_eq!(m.b.metric("response_total", &failed), 1.0);
}

#[test]
fn a_denied_head_gets_403_without_a_body_over_http1_and_http2_by_either_route() {
    let m = HttpMesh::start(&default_ingress(), |_| {}, |_| {});
    let net = Routes::of(&m);
    let rt = runtime();
    for route in ROUTES {
        for h2 in [false, true] {
            rt.block_on(async {
                let mut c = net.client(route, h2).await;
                // Only GET is allowed: HEAD is denied. Over HTTP/2 a body on
                // this answer would reset the stream instead.
                let denied = c.send("HEAD", "/v1/items", &[], "").await;
                let denied = denied.unwrap_or_else(|e| panic!("{route:?} h2={h2}: {e:?}"));
                assert_eq!(denied.status, 403, "{route:?} h2={h2}: {denied:?}");
                assert_eq!(denied.headers["x-palisade-denied"], "demo/server");
                assert!(denied.body.is_empty(), "{route:?} h2={h2}: {denied:?}");
                // The connection is still good.
                let ok = c.send("GET", "/v1/items", &[], "").await.unwrap();
                assert_eq!(ok.status, 200, "{route:?} h2={h2}");
            });
        }
    }
    assert_eq!(m.app.seen(), vec!["/v1/items"; 4]);
}

#[test]
fn a_websocket_upgrade_passes_through_both_sidecars_and_a_denied_one_gets_403() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let m = HttpMesh::start(&default_ingress(), |_| {}, |_| {});
    let rt = runtime();
    rt.block_on(async {
        let tcp = tokio::net::TcpStream::connect(m.a_out).await.unwrap();
        let (mut ws, resp) = tokio_tungstenite::client_async("ws://server.demo/ws", tcp)
            .await
            .expect("WebSocket handshake through the mesh");
        assert_eq!(resp.status(), 101);
        for i in 0..3 {
            let msg = format!("ping {i}");
            ws.send(Message::text(msg.clone())).await.unwrap();
            let back = tokio::time::timeout(Duration::from_secs(10), ws.next())
                .await
                .expect("echo in time")
                .expect("a message")
                .unwrap();
            assert_eq!(back.into_text().unwrap().as_str(), msg);
        }
        ws.close(None).await.unwrap();

        let tcp = tokio::net::TcpStream::connect(m.a_out).await.unwrap();
        let refused = tokio_tungstenite::client_async("ws://server.demo/admin", tcp).await;
        match refused {
            Err(tokio_tungstenite::tungstenite::Error::Http(r)) => assert_eq!(r.status(), 403),
            other => panic!("expected 403, got {other:?}"),
        }
    });
    assert_eq!(m.app.seen(), vec!["/ws"]);
}

#[test]
fn the_access_log_has_one_json_line_per_request_with_identities_and_decision() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("access.log");
    let yaml = format!(
        "access_log:\n  enabled: true\n  path: \"{}\"\n",
        log.display()
    );
    let m = HttpMesh::start(&default_ingress(), |_| {}, |b| b.extra_yaml += &yaml);
    let rt = runtime();
    rt.block_on(async {
        let mut c = Client::http1(m.a_out).await;
        assert_eq!(
            c.send("GET", "/v1/x?q=1", &[], "").await.unwrap().status,
            200
        );
        assert_eq!(
            c.send("DELETE", "/v1/x", &[], "").await.unwrap().status,
            403
        );
    });
    let lines: Vec<serde_json::Value> =
        eventually("two access log lines", Duration::from_secs(10), || {
            let text = std::fs::read_to_string(&log).ok()?;
            let lines: Vec<_> = text
                .lines()
                .map(|l| serde_json::from_str(l).unwrap())
                .collect();
            (lines.len() == 2).then_some(lines)
        });
    let ok = &lines[0];
    assert_eq!(ok["direction"], "inbound");
    assert_eq!(ok["source"], CLIENT_ID);
    assert_eq!(ok["destination"], SERVER_ID);
    assert_eq!(ok["method"], "GET");
    assert_eq!(ok["path"], "/v1/x?q=1");
    assert_eq!(ok["authority"], "server.demo");
    assert_eq!(ok["status"], 200);
    assert_eq!(ok["decision"], "allow");
    assert_eq!(ok["policy"], "demo/server/client-reads");
    assert!(ok["response_bytes"].as_u64().unwrap() > 0);
    assert!(ok["duration_us"].as_u64().is_some());
    assert!(ok["time"].as_str().unwrap().ends_with('Z'));
    let denied = &lines[1];
    assert_eq!(denied["status"], 403);
    assert_eq!(denied["decision"], "deny");
    assert_eq!(denied["policy"], "demo/server");
}
