//! HTTP in transparent mode: pods in network namespaces with the init
//! program's redirection. An unmodified HTTP client in pod A calls pod B's
//! app by IP; B's sidecar authorizes each request on A's identity, the app
//! sees XFCC naming both, and a request outside the policy gets 403.

use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use palisade_tests::cp::{ControlPlane, ControlPlaneSpec};
use palisade_tests::http::{read_until_quiet, status_of, HttpApp};
use palisade_tests::netns::Network;
use palisade_tests::pods::{
    admin_metrics, install_redirect, logs, shared_dir, shared_file, skip_unless_root,
    start_sidecar, TD,
};
use palisade_tests::policy::policy_doc;
use palisade_tests::proxy::metric;

const APP_PORT: u16 = 8080;

/// One HTTP/1.1 request with `Connection: close`; the whole answer.
fn get(target: SocketAddr, path: &str) -> String {
    let mut s = TcpStream::connect_timeout(&target, Duration::from_secs(5)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: b.shop\r\nx-forwarded-client-cert: By=forged\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    String::from_utf8_lossy(&read_until_quiet(&mut s)).into_owned()
}

#[test]
fn http_between_pods_is_authorized_per_request_on_the_callers_identity() {
    if skip_unless_root() {
        return;
    }
    let mut net = Network::new();
    let a = net.pod("a");
    let b = net.pod("b");
    let id_a = format!("spiffe://{TD}/ns/shop/sa/a");
    let id_b = format!("spiffe://{TD}/ns/shop/sa/b");

    let dir = shared_dir();
    let endpoints = shared_file(
        dir.path(),
        "endpoints.yaml",
        &format!(
            "- {{address: \"{}\", identity: \"{id_a}\"}}\n- {{address: \"{}\", identity: \"{id_b}\"}}\n",
            a.ip, b.ip
        ),
    );
    let ingress = format!(
        "  ingress:\n    - name: a-reads\n      action: allow\n      from: [{{identity: {id_a}}}]\n      \
         http: [{{methods: [GET], paths: [\"/v1/*\"]}}]\n"
    );
    let policy = shared_file(dir.path(), "policy.yaml", &policy_doc("b", &id_b, &ingress));
    let cp = ControlPlane::start_with(ControlPlaneSpec {
        extra_args: vec!["--endpoints".into(), endpoints.display().to_string()],
        ..Default::default()
    });
    let cp_in_pods = net.expose(8443, cp.addr());

    let app = b.enter(|| HttpApp::bind(&format!("0.0.0.0:{APP_PORT}")));
    install_redirect(&a);
    install_redirect(&b);
    let _proxy_a = start_sidecar(&a, dir.path(), &cp, cp_in_pods, &id_a, "");
    let b_policy = format!("policy:\n  path: \"{}\"\n", policy.display());
    let _proxy_b = start_sidecar(&b, dir.path(), &cp, cp_in_pods, &id_b, &b_policy);

    let target = SocketAddr::from((b.ip, APP_PORT));
    let ok = a.enter(move || get(target, "/v1/hello"));
    assert_eq!(
        status_of(ok.as_bytes()),
        Some(200),
        "{ok}\n{}",
        logs(dir.path())
    );
    assert!(
        ok.contains(&format!("xfcc=By={id_b};URI={id_a}\n")),
        "the app sees who called, and only that: {ok}"
    );
    let denied = a.enter(move || get(target, "/admin"));
    assert_eq!(status_of(denied.as_bytes()), Some(403), "{denied}");
    assert!(denied.contains("x-palisade-denied: demo/b"), "{denied}");
    assert_eq!(app.seen(), vec!["/v1/hello"]);

    let m = admin_metrics(&b);
    let allow = [
        ("policy", "demo/b"),
        ("rule", "a-reads"),
        ("peer", id_a.as_str()),
    ];
    assert_eq!(
        metric(&m, "inbound_http_authz_allow_total", &allow),
        1.0,
        "{m}"
    );
    let deny = [("policy", "demo/b"), ("peer", id_a.as_str())];
    assert_eq!(metric(&m, "inbound_http_authz_deny_total", &deny), 1.0);
    // The hop between the pods was mTLS from A's identity.
    let tls = [
        ("direction", "inbound"),
        ("peer", id_a.as_str()),
        ("tls", "true"),
    ];
    assert!(metric(&m, "tcp_open_total", &tls) >= 1.0);
}
