//! From baseline to policy as code: the exported policy parses, compiles,
//! allows every learned flow and denies flows never seen; its cases file
//! agrees; and `diff` compares a baseline with the policy in force.

use std::net::IpAddr;

use palisade_policy::baseline::{
    diff, export, Baseline, BaselineMode, BaselineSettings, FlowRef, Protocol, Snapshot,
};
use palisade_policy::cases::{parse_cases, run_cases};
use palisade_policy::{
    compile, decide, parse_documents, CompiledPolicy, DefaultPolicy, Defaults, Direction, HttpInfo,
    Peer, Request, SpiffeId, Verdict,
};
use proptest::prelude::*;

const API: &str = "spiffe://cluster.local/ns/shop/sa/api";
const FRONTEND: &str = "spiffe://cluster.local/ns/shop/sa/frontend";
const DB: &str = "spiffe://cluster.local/ns/shop/sa/db";
const MONITORING: &str = "spiffe://cluster.local/ns/ops/sa/prometheus";

fn id(s: &str) -> SpiffeId {
    SpiffeId::parse(s).unwrap()
}

/// One observed flow, owned, for building baselines in tests.
#[derive(Debug, Clone)]
struct Obs {
    direction: Direction,
    peer: Result<SpiffeId, IpAddr>,
    port: u16,
    protocol: Protocol,
    http: Option<(String, String)>,
}

impl Obs {
    fn flow(&self) -> FlowRef<'_> {
        FlowRef {
            direction: self.direction,
            peer: match &self.peer {
                Ok(id) => Peer::Identity(id),
                Err(ip) => Peer::Address(*ip),
            },
            port: self.port,
            protocol: self.protocol,
            http: self.http.as_ref().map(|(m, p)| HttpInfo {
                method: m,
                path: p,
                host: None,
            }),
        }
    }
}

fn tcp(direction: Direction, peer: &str, port: u16) -> Obs {
    Obs {
        direction,
        peer: peer
            .parse::<IpAddr>()
            .map_err(|_| ())
            .map_or_else(|_| Ok(id(peer)), Err),
        port,
        protocol: Protocol::Opaque,
        http: None,
    }
}

fn http(peer: &str, port: u16, route: Option<(&str, &str)>) -> Obs {
    Obs {
        direction: Direction::Ingress,
        peer: Ok(id(peer)),
        port,
        protocol: Protocol::Http,
        http: route.map(|(m, p)| (m.to_owned(), p.to_owned())),
    }
}

fn learn(observed: &[Obs]) -> Snapshot {
    let b = Baseline::new(id(API), BaselineSettings::default());
    for (t, o) in observed.iter().enumerate() {
        b.observe(
            &o.flow(),
            BaselineMode::Learn,
            1_796_100_000_000 + t as u64 * 1000,
        );
    }
    b.snapshot(1_796_200_000_000)
}

fn shop() -> Vec<Obs> {
    vec![
        http(FRONTEND, 8080, None),
        http(FRONTEND, 8080, Some(("GET", "/v1/users/123"))),
        http(
            FRONTEND,
            8080,
            Some(("GET", "/v1/users/456/orders/9f86d081884c7d65")),
        ),
        http(FRONTEND, 8080, Some(("POST", "/v1/users"))),
        http(FRONTEND, 8080, Some(("GET", "/healthz"))),
        http(MONITORING, 9090, None),
        http(MONITORING, 9090, Some(("GET", "/metrics"))),
        tcp(Direction::Ingress, "10.1.2.3", 9000),
        tcp(Direction::Egress, DB, 5432),
        tcp(Direction::Egress, "203.0.113.7", 443),
    ]
}

fn compiled(policy: &str) -> CompiledPolicy {
    let docs = parse_documents("baseline.yaml", policy)
        .unwrap_or_else(|e| panic!("export does not parse: {e:?}\n{policy}"));
    compile(docs, Defaults::new(DefaultPolicy::AllAuthenticated))
        .unwrap()
        .0
}

/// The verdict of the local sidecar's check: the connection, then the
/// request if any; opaque bytes need a connection without `http_required`.
fn verdict(policy: &CompiledPolicy, o: &Obs) -> Verdict {
    let api = id(API);
    let f = o.flow();
    let req = Request {
        direction: f.direction,
        local: &api,
        peer: f.peer,
        port: f.port,
        http: None,
    };
    let conn = decide(policy, &req);
    if !conn.is_allowed()
        || (f.http.is_none() && f.protocol == Protocol::Opaque && conn.http_required)
    {
        return Verdict::Deny;
    }
    match f.http {
        None => Verdict::Allow,
        Some(h) => {
            decide(
                policy,
                &Request {
                    http: Some(h),
                    ..req
                },
            )
            .verdict
        }
    }
}

#[test]
fn the_exported_policy_allows_every_learned_flow_and_denies_the_never_seen() {
    let learned = shop();
    let snap = learn(&learned);
    let out = export(&snap);
    let policy = compiled(&out.policy);
    for o in &learned {
        assert_eq!(verdict(&policy, o), Verdict::Allow, "{o:?}\n{}", out.policy);
    }
    // Same peers and ports as learned, other routes; other ports; other peers.
    let never = [
        http(FRONTEND, 8080, Some(("DELETE", "/v1/users/1"))),
        http(FRONTEND, 8080, Some(("GET", "/admin"))),
        // `{id}` is one segment, not a prefix.
        http(FRONTEND, 8080, Some(("GET", "/v1/users/1/admin"))),
        http(FRONTEND, 8080, Some(("GET", "/v1/users/1/orders"))),
        http(FRONTEND, 8080, Some(("GET", "/v1/users"))),
        http(MONITORING, 9090, Some(("POST", "/metrics"))),
        tcp(Direction::Ingress, FRONTEND, 8080),
        tcp(Direction::Ingress, FRONTEND, 8081),
        tcp(Direction::Ingress, DB, 8080),
        tcp(Direction::Ingress, "10.1.3.1", 9000),
        tcp(Direction::Egress, DB, 6379),
        tcp(Direction::Egress, FRONTEND, 5432),
    ];
    for o in &never {
        assert_eq!(verdict(&policy, o), Verdict::Deny, "{o:?}\n{}", out.policy);
    }
    // A learned subnet allows its other addresses: the bucket is the peer.
    assert_eq!(
        verdict(&policy, &tcp(Direction::Ingress, "10.1.2.250", 9000)),
        Verdict::Allow
    );
    // The policy says what it stands for.
    assert!(
        out.policy
            .contains("# GET /v1/users/{id}: 1 seen, first 2026-"),
        "{}",
        out.policy
    );
    assert!(
        out.policy.contains("paths: [\"/v1/users/{id}\"]"),
        "{}",
        out.policy
    );
    assert!(
        out.policy.contains("paths: [\"/healthz\"]"),
        "{}",
        out.policy
    );
}

#[test]
fn the_exported_cases_pass_against_the_exported_policy() {
    let out = export(&learn(&shop()));
    let policy = compiled(&out.policy);
    let cases = parse_cases("baseline-cases.yaml", &out.cases)
        .unwrap_or_else(|e| panic!("{e:?}\n{}", out.cases));
    let results = run_cases(&policy, &cases.cases);
    for r in &results {
        assert!(
            r.passed(),
            "{}: {:?}\n{}",
            r.case.name,
            r.decision,
            out.cases
        );
    }
    let denies = cases
        .cases
        .iter()
        .filter(|c| c.expect == Verdict::Deny)
        .count();
    // A stranger in each direction, a route never seen, and a path below
    // each of the two templates.
    assert_eq!(denies, 5, "{}", out.cases);
    let allows = cases.cases.len() - denies;
    // 6 routes and opaque flows (HTTP connections are covered by their requests).
    assert_eq!(allows, 8, "{}", out.cases);
}

#[test]
fn an_empty_baseline_exports_a_lock_down() {
    let out = export(&learn(&[]));
    let policy = compiled(&out.policy);
    assert_eq!(
        verdict(&policy, &tcp(Direction::Ingress, FRONTEND, 8080)),
        Verdict::Deny
    );
    assert_eq!(
        verdict(&policy, &tcp(Direction::Egress, DB, 5432)),
        Verdict::Deny
    );
}

const IN_FORCE: &str = r#"
apiVersion: palisade.dev/v1alpha1
kind: SegmentationPolicy
metadata: {name: api, namespace: shop}
spec:
  targets: [{identity: "spiffe://cluster.local/ns/shop/sa/api"}]
  ingress:
    - name: frontend-users
      action: allow
      from: [{identity: "spiffe://cluster.local/ns/shop/sa/frontend"}]
      ports: [8080]
      http: [{methods: [GET], paths: ["/v1/users/*"]}]
    - name: legacy-batch
      action: allow
      from: [{identity: "spiffe://cluster.local/ns/shop/sa/batch"}]
      ports: [7000]
  egress:
    - name: to-db
      action: allow
      to: [{identity: "spiffe://cluster.local/ns/shop/sa/db"}]
      ports: [5432]
"#;

#[test]
fn diff_lists_learned_flows_the_policy_denies_and_rules_nothing_used() {
    let snap = learn(&[
        http(FRONTEND, 8080, None),
        http(FRONTEND, 8080, Some(("GET", "/v1/users/1"))),
        http(FRONTEND, 8080, Some(("POST", "/v1/users"))),
        tcp(Direction::Egress, DB, 5432),
        tcp(Direction::Egress, DB, 6379),
    ]);
    let d = diff(&snap, &compiled(IN_FORCE));
    let unallowed: Vec<String> = d.unallowed.iter().map(|u| u.flow.to_string()).collect();
    assert_eq!(
        unallowed,
        [
            format!("ingress from {FRONTEND} port 8080/http POST /v1/users"),
            format!("egress to {DB} port 6379/opaque"),
        ]
    );
    assert_eq!(d.unallowed[1].decision.label(), "shop/api");
    let unused: Vec<String> = d
        .unused
        .iter()
        .map(|u| format!("{}/{} {}", u.policy, u.rule, u.direction))
        .collect();
    assert_eq!(unused, ["shop/api/legacy-batch ingress"]);

    // Against its own export, a baseline has nothing to report.
    let own = compiled(&export(&snap).policy);
    assert!(diff(&snap, &own).is_empty(), "{:?}", diff(&snap, &own));
}

fn segment() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-z]{1,8}",
        "[0-9]{1,6}",
        "[a-f0-9]{8,12}",
        "[A-Za-z0-9]{16,20}",
        Just("v1".to_owned()),
        Just("a*b".to_owned()),
        Just("%20x".to_owned()),
        Just("{id}".to_owned()),
    ]
}

fn observation() -> impl Strategy<Value = Obs> {
    let peer = prop_oneof![
        Just(Ok(id(FRONTEND))),
        Just(Ok(id(DB))),
        Just(Ok(id("spiffe://other.org/workload/x"))),
        any::<[u8; 4]>().prop_map(|o| Err(IpAddr::from(o))),
        any::<[u8; 16]>().prop_map(|o| Err(IpAddr::from(o))),
    ];
    let method = prop_oneof![
        Just("GET"),
        Just("POST"),
        Just("DELETE"),
        Just("M-SEARCH"),
        Just("get"),
        Just("X\n  evil: [1]"),
        Just("")
    ];
    let path = prop_oneof![
        prop::collection::vec(segment(), 0..5).prop_map(|s| format!("/{}", s.join("/"))),
        Just("*".to_owned()),
    ];
    let route = prop::option::of((method, path).prop_map(|(m, p)| (m.to_owned(), p)));
    (any::<bool>(), peer, 1..=65535u16, any::<bool>(), route).prop_map(
        |(ingress, peer, port, opaque, http)| Obs {
            direction: if ingress {
                Direction::Ingress
            } else {
                Direction::Egress
            },
            peer,
            port,
            protocol: if opaque && http.is_none() {
                Protocol::Opaque
            } else {
                Protocol::Http
            },
            http,
        },
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn any_export_parses_allows_what_was_learned_and_its_cases_pass(
        observed in prop::collection::vec(observation(), 0..24)
    ) {
        let snap = learn(&observed);
        let out = export(&snap);
        let policy = compiled(&out.policy);
        for o in &observed {
            prop_assert_eq!(verdict(&policy, o), Verdict::Allow, "{:?}\n{}", o, out.policy);
        }
        prop_assert!(diff(&snap, &policy).unallowed.is_empty());
        let cases = parse_cases("cases.yaml", &out.cases);
        prop_assert!(cases.is_ok(), "{:?}\n{}", cases.err(), out.cases);
        let cases = cases.unwrap();
        for r in run_cases(&policy, &cases.cases) {
            prop_assert!(r.passed(), "{}: {:?}\n{}\n{}", r.case.name, r.decision, out.policy, out.cases);
        }
    }
}
