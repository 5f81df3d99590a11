//! L4 policy enforcement with real proxies on loopback: inbound on the
//! peer's SPIFFE ID (or a plaintext source's address) and the app port,
//! outbound before connecting on the destination's identity; each decision
//! counted with its policy, rule and peer; audit mode lets traffic through
//! and counts what it would have denied.

use std::time::Duration;

use palisade_tests::cp::ControlPlane;
use palisade_tests::eventually;
use palisade_tests::policy::{policy_doc, spec, start_pair, use_policy, PolicyFile};
use palisade_tests::proxy::{echo_roundtrip, Echo, Proxy, CLIENT_ID, SERVER_ID};

const INTRUDER_ID: &str = "spiffe://cluster.local/ns/demo/sa/intruder";
const DB_ID: &str = "spiffe://cluster.local/ns/demo/sa/db";

/// The {policy, rule, peer} labels of an authorization counter.
fn by<'a>(policy: &'a str, rule: &'a str, peer: &'a str) -> [(&'static str, &'a str); 3] {
    [("policy", policy), ("rule", rule), ("peer", peer)]
}

/// The connection was closed without the app's echo coming back.
fn refused(r: std::io::Result<Vec<u8>>) -> bool {
    r.map(|b| b.is_empty()).unwrap_or(true)
}

fn wait_metric(p: &Proxy, name: &str, labels: &[(&str, &str)], want: f64) {
    eventually(
        &format!("{} {name}{labels:?} == {want}", p.spec.name),
        Duration::from_secs(10),
        || (p.metric(name, labels) == want).then_some(()),
    );
}

#[test]
fn inbound_allows_the_listed_peer_and_denies_others_by_rule_with_labelled_counters() {
    let cp = ControlPlane::start();
    let body = format!(
        "  ingress:\n    - name: no-intruder\n      action: deny\n      from: [{{identity: {INTRUDER_ID}}}]\n    \
         - name: from-client\n      action: allow\n      from: [{{identity: {CLIENT_ID}}}]\n"
    );
    let file = PolicyFile::new(&policy_doc("server", SERVER_ID, &body));
    let p = start_pair(cp, Some(&file.path), "");
    let mut c = spec(&p.cp, "intruder", INTRUDER_ID);
    let c_out = c.route(p.b_in, SERVER_ID);
    let (b, c) = (&p.b, Proxy::start_ready(c));

    assert_eq!(echo_roundtrip(p.a_out, b"allowed").unwrap(), b"allowed");
    let allow = by("demo/server", "from-client", CLIENT_ID);
    wait_metric(b, "inbound_tcp_authz_allow_total", &allow, 1.0);

    assert!(refused(echo_roundtrip(c_out, b"let me in")));
    let deny = by("demo/server", "no-intruder", INTRUDER_ID);
    wait_metric(b, "inbound_tcp_authz_deny_total", &deny, 1.0);
    assert_eq!(
        b.metric("inbound_tcp_authz_allow_total", &[("peer", INTRUDER_ID)]),
        0.0
    );
    assert!(
        b.log().contains("connection denied by policy"),
        "the denial is logged with its reason"
    );
    assert_eq!(
        b.metric("tcp_open_total", &[("peer", INTRUDER_ID)]),
        0.0,
        "a denied connection is never forwarded"
    );
    drop(c);
}

#[test]
fn egress_is_decided_before_connecting_on_the_destination_identity() {
    let cp = ControlPlane::start();
    let body = format!(
        "  egress:\n    - name: to-server\n      action: allow\n      to: [{{identity: {SERVER_ID}}}]\n"
    );
    let file = PolicyFile::new(&policy_doc("client", CLIENT_ID, &body));
    let (server_app, db_app) = (Echo::start(), Echo::start());
    let mut b = spec(&cp, "server", SERVER_ID);
    let b_in = b.inbound(server_app.addr, false);
    let mut d = spec(&cp, "db", DB_ID);
    let d_in = d.inbound(db_app.addr, false);
    let mut a = spec(&cp, "client", CLIENT_ID);
    let to_server = a.route(b_in, SERVER_ID);
    let to_db = a.route(d_in, DB_ID);
    use_policy(&mut a, &file.path, "");
    let (b, d, a) = (
        Proxy::start_ready(b),
        Proxy::start_ready(d),
        Proxy::start_ready(a),
    );

    assert_eq!(echo_roundtrip(to_server, b"ok").unwrap(), b"ok");
    let allow = by("demo/client", "to-server", SERVER_ID);
    wait_metric(&a, "outbound_tcp_authz_allow_total", &allow, 1.0);
    // The server selects no policy: the default `all-authenticated` applies.
    let default = by("default", "all-authenticated", CLIENT_ID);
    wait_metric(&b, "inbound_tcp_authz_allow_total", &default, 1.0);

    assert!(refused(echo_roundtrip(to_db, b"select *")));
    // Selected for egress, no rule matched: default-deny, no rule label.
    let deny = by("demo/client", "", DB_ID);
    wait_metric(&a, "outbound_tcp_authz_deny_total", &deny, 1.0);
    assert_eq!(
        d.metric("tcp_open_total", &[]) + d.metric("tls_handshake_failures_total", &[]),
        0.0,
        "the db's sidecar never saw a connection"
    );
}

#[test]
fn audit_mode_lets_the_connection_through_and_counts_would_deny() {
    let cp = ControlPlane::start();
    let body = format!(
        "  mode: audit\n  ingress:\n    - name: only-intruder\n      action: allow\n      from: [{{identity: {INTRUDER_ID}}}]\n"
    );
    let file = PolicyFile::new(&policy_doc("server", SERVER_ID, &body));
    let p = start_pair(cp, Some(&file.path), "");
    let b = &p.b;

    assert_eq!(echo_roundtrip(p.a_out, b"audited").unwrap(), b"audited");
    let would = by("demo/server", "", CLIENT_ID);
    wait_metric(b, "inbound_tcp_authz_would_deny_total", &would, 1.0);
    assert_eq!(b.metric("inbound_tcp_authz_deny_total", &[]), 0.0);
    assert!(b.log().contains("audit: connection would be denied"));
}

#[test]
fn default_deny_refuses_peers_when_no_policy_selects_the_workload() {
    let p = start_pair(ControlPlane::start(), None, "policy:\n  default: deny\n");
    let b = &p.b;

    assert!(refused(echo_roundtrip(p.a_out, b"hello")));
    let deny = by("default", "deny", CLIENT_ID);
    wait_metric(b, "inbound_tcp_authz_deny_total", &deny, 1.0);
    assert_eq!(b.config_dump()["policy"]["default"], "deny");
}

#[test]
fn plaintext_on_a_permissive_port_is_matched_by_source_cidr_and_port() {
    let cp = ControlPlane::start();
    let (open_app, closed_app) = (Echo::start(), Echo::start());
    let mut b = spec(&cp, "server", SERVER_ID);
    let open_in = b.inbound(open_app.addr, true);
    let closed_in = b.inbound(closed_app.addr, true);
    let body = format!(
        "  ingress:\n    - name: loopback-clients\n      action: allow\n      from: [{{cidr: 127.0.0.0/8}}]\n      ports: [{}]\n    \
         - name: pod-network\n      action: allow\n      from: [{{cidr: 10.0.0.0/8}}]\n      ports: [{}]\n",
        open_app.addr.port(),
        closed_app.addr.port()
    );
    let file = PolicyFile::new(&policy_doc("server", SERVER_ID, &body));
    use_policy(&mut b, &file.path, "");
    let b = Proxy::start_ready(b);

    assert_eq!(echo_roundtrip(open_in, b"legacy").unwrap(), b"legacy");
    let allow = by("demo/server", "loopback-clients", "unauthenticated");
    wait_metric(&b, "inbound_tcp_authz_allow_total", &allow, 1.0);

    // 127.0.0.1 is not in 10.0.0.0/8, the only CIDR allowed on that port.
    assert!(refused(echo_roundtrip(closed_in, b"legacy")));
    let deny = by("demo/server", "", "unauthenticated");
    wait_metric(&b, "inbound_tcp_authz_deny_total", &deny, 1.0);
}
