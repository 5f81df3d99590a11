//! The policy semantics, table-driven: deny precedence, namespace and glob
//! matches, CIDRs and port ranges, every default, audit mode, ingress and egress.

use palisade_policy::{
    compile, decide, parse_documents, CompiledPolicy, Decision, DefaultPolicy, Defaults, Direction,
    HttpInfo, Matched, Mode, Peer, Request, SpiffeId, Verdict,
};

const POLICIES: &str = r#"
apiVersion: palisade.dev/v1alpha1
kind: SegmentationPolicy
metadata: {name: payments, namespace: shop}
spec:
  targets:
    - identity: spiffe://cluster.local/ns/shop/sa/payments
  ingress:
    - name: frontend-charges
      action: allow
      from:
        - identity: spiffe://cluster.local/ns/shop/sa/frontend
        - namespace: checkout
        - cidr: 10.1.0.0/16
      ports: [8080, "9000-9010"]
    - name: shop-debug
      action: allow
      from: [{namespace: shop}]
      ports: [9999]
    - name: no-debug-from-frontend
      action: deny
      from: [{identity: spiffe://cluster.local/ns/shop/sa/frontend}]
      ports: [9999]
    - name: refunds-api
      action: allow
      from: [{identity: spiffe://cluster.local/ns/shop/sa/api}]
      ports: [8080]
      http:
        - methods: [POST]
          paths: ["/v1/refunds/*"]
    - name: no-admin
      action: deny
      ports: [8080]
      http:
        - paths: ["/admin/*"]
  egress:
    - name: to-db
      action: allow
      to:
        - identity: spiffe://cluster.local/ns/shop/sa/db
        - cidr: 10.9.0.0/24
      ports: [5432]
---
apiVersion: palisade.dev/v1alpha1
kind: SegmentationPolicy
metadata: {name: batch-jobs, namespace: batch}
spec:
  targets:
    - identity: spiffe://cluster.local/ns/batch/*
  ingress:
    - name: ops-only
      action: allow
      from: [{identity: spiffe://cluster.local/ns/ops/*}]
---
apiVersion: palisade.dev/v1alpha1
kind: SegmentationPolicy
metadata: {name: trial, namespace: monitoring}
spec:
  targets: [{namespace: monitoring}]
  mode: audit
  ingress:
    - name: prometheus-scrape
      action: allow
      from: [{identity: spiffe://cluster.local/ns/monitoring/sa/prometheus}]
      ports: [9090]
---
apiVersion: palisade.dev/v1alpha1
kind: SegmentationPolicy
metadata: {name: lockdown, namespace: vault}
spec:
  targets: [{namespace: vault}]
  ingress: []
"#;

fn id(s: &str) -> SpiffeId {
    let full = if s.starts_with("spiffe://") {
        s.to_owned()
    } else {
        format!("spiffe://cluster.local/{s}")
    };
    SpiffeId::parse(&full).unwrap()
}

fn policy(default: DefaultPolicy) -> CompiledPolicy {
    let docs = parse_documents("semantics.yaml", POLICIES).unwrap();
    compile(docs, Defaults::new(default)).unwrap().0
}

/// `peer` is a SPIFFE ID path (`ns/x/sa/y`), a full `spiffe://` ID, or an IP.
fn ask(
    p: &CompiledPolicy,
    direction: Direction,
    local: &str,
    peer: &str,
    port: u16,
    http: Option<(&str, &str)>,
) -> Decision {
    let local = id(local);
    let peer_id;
    let peer = match peer.parse() {
        Ok(ip) => Peer::Address(ip),
        Err(_) => {
            peer_id = id(peer);
            Peer::Identity(&peer_id)
        }
    };
    let http = http.map(|(method, path)| HttpInfo {
        method,
        path,
        host: None,
    });
    decide(
        p,
        &Request {
            direction,
            local: &local,
            peer,
            port,
            http,
        },
    )
}

/// (what, direction, local workload, peer, port, verdict, deciding label)
type Case = (
    &'static str,
    Direction,
    &'static str,
    &'static str,
    u16,
    Verdict,
    &'static str,
);

const IN: Direction = Direction::Ingress;
const OUT: Direction = Direction::Egress;
const ALLOW: Verdict = Verdict::Allow;
const DENY: Verdict = Verdict::Deny;
const PAYMENTS: &str = "ns/shop/sa/payments";

fn run(cases: &[Case], default: DefaultPolicy) {
    let p = policy(default);
    for &(name, direction, local, peer, port, verdict, label) in cases {
        let d = ask(&p, direction, local, peer, port, None);
        assert_eq!(
            (d.verdict, d.label().as_str()),
            (verdict, label),
            "{name}: {d}"
        );
        assert!(!d.would_deny, "{name}: no audit policy is involved: {d}");
    }
}

#[test]
#[rustfmt::skip]
fn deny_rule_wins_over_matching_allow() {
    run(
        &[
            ("namespace allow, specific deny", IN, PAYMENTS, "ns/shop/sa/frontend", 9999, DENY, "shop/payments/no-debug-from-frontend"),
            ("other shop workload", IN, PAYMENTS, "ns/shop/sa/api", 9999, ALLOW, "shop/payments/shop-debug"),
        ],
        DefaultPolicy::Deny,
    );
}

#[test]
#[rustfmt::skip]
fn selected_workload_is_default_deny_when_no_rule_matches() {
    run(
        &[
            ("unlisted port", IN, PAYMENTS, "ns/shop/sa/frontend", 22, DENY, "shop/payments"),
            ("unlisted peer", IN, PAYMENTS, "ns/other/sa/x", 8080, DENY, "shop/payments"),
            ("empty ingress list", IN, "ns/vault/sa/vault", "ns/shop/sa/api", 8200, DENY, "vault/lockdown"),
        ],
        DefaultPolicy::AllUnauthenticated,
    );
}

#[test]
#[rustfmt::skip]
fn namespace_and_glob_matches() {
    run(
        &[
            ("peer namespace", IN, PAYMENTS, "ns/checkout/sa/cart", 8080, ALLOW, "shop/payments/frontend-charges"),
            ("peer namespace in another trust domain", IN, PAYMENTS, "spiffe://other.org/ns/checkout/sa/cart", 8080, DENY, "shop/payments"),
            ("target glob and peer glob", IN, "ns/batch/sa/nightly", "ns/ops/sa/oncall", 1234, ALLOW, "batch/batch-jobs/ops-only"),
            ("peer glob does not match a sibling prefix", IN, "ns/batch/sa/nightly", "ns/opsx/sa/oncall", 1234, DENY, "batch/batch-jobs"),
            ("target glob does not match its parent", IN, "ns/batchx/sa/nightly", "ns/ops/sa/oncall", 1234, DENY, "default/deny"),
            ("target namespace", IN, "ns/vault/sa/other", "ns/ops/sa/oncall", 1, DENY, "vault/lockdown"),
        ],
        DefaultPolicy::Deny,
    );
}

#[test]
#[rustfmt::skip]
fn cidrs_and_port_ranges() {
    run(
        &[
            ("in cidr, range start", IN, PAYMENTS, "10.1.0.1", 9000, ALLOW, "shop/payments/frontend-charges"),
            ("in cidr, range end", IN, PAYMENTS, "10.1.255.254", 9010, ALLOW, "shop/payments/frontend-charges"),
            ("ipv4-mapped ipv6 source", IN, PAYMENTS, "::ffff:10.1.2.3", 8080, ALLOW, "shop/payments/frontend-charges"),
            ("past range end", IN, PAYMENTS, "10.1.0.1", 9011, DENY, "shop/payments"),
            ("before range start", IN, PAYMENTS, "10.1.0.1", 8999, DENY, "shop/payments"),
            ("outside cidr", IN, PAYMENTS, "10.2.0.1", 8080, DENY, "shop/payments"),
            ("an identity never matches a cidr", OUT, PAYMENTS, "ns/shop/sa/cache", 5432, DENY, "shop/payments"),
        ],
        DefaultPolicy::AllUnauthenticated,
    );
}

#[test]
#[rustfmt::skip]
fn ingress_and_egress_are_selected_separately() {
    run(
        &[
            ("egress to db identity", OUT, PAYMENTS, "ns/shop/sa/db", 5432, ALLOW, "shop/payments/to-db"),
            ("egress to db cidr", OUT, PAYMENTS, "10.9.0.200", 5432, ALLOW, "shop/payments/to-db"),
            ("egress elsewhere", OUT, PAYMENTS, "ns/shop/sa/api", 8080, DENY, "shop/payments"),
            // batch-jobs has no egress key: its targets fall back to the default.
            ("no egress section", OUT, "ns/batch/sa/nightly", "ns/shop/sa/api", 8080, ALLOW, "default/all-authenticated"),
            ("ingress rule is not an egress rule", OUT, PAYMENTS, "ns/shop/sa/frontend", 8080, DENY, "shop/payments"),
        ],
        DefaultPolicy::AllAuthenticated,
    );
}

/// (peer, request method and path, verdict, deciding label, http_required)
type HttpCase = (
    &'static str,
    Option<(&'static str, &'static str)>,
    Verdict,
    &'static str,
    bool,
);

#[test]
#[rustfmt::skip]
fn http_rules_allow_at_l4_pending_each_request() {
    let p = policy(DefaultPolicy::Deny);
    let table: &[HttpCase] = &[
        // An allow restricted to HTTP allows the connection pending each request.
        ("ns/shop/sa/api", None, ALLOW, "shop/payments/refunds-api", true),
        ("ns/shop/sa/api", Some(("POST", "/v1/refunds/7")), ALLOW, "shop/payments/refunds-api", false),
        ("ns/shop/sa/api", Some(("DELETE", "/v1/refunds/7")), DENY, "shop/payments", false),
        // A deny restricted to HTTP does not block the connection, only matching
        // requests; but the connection must be HTTP, or opaque bytes would skip it.
        ("ns/shop/sa/frontend", None, ALLOW, "shop/payments/frontend-charges", true),
        ("ns/shop/sa/frontend", Some(("GET", "/admin/users")), DENY, "shop/payments/no-admin", false),
        ("ns/shop/sa/frontend", Some(("POST", "/v1/charge")), ALLOW, "shop/payments/frontend-charges", false),
        // A path not in normal form cannot walk around the deny.
        ("ns/shop/sa/frontend", Some(("GET", "/v1/../admin/users")), DENY, "shop/payments/no-admin", false),
        ("ns/shop/sa/frontend", Some(("GET", "//admin/users")), DENY, "shop/payments/no-admin", false),
        ("ns/shop/sa/frontend", Some(("GET", "/%61dmin/users")), DENY, "shop/payments/no-admin", false),
        // ... nor win an allow restricted to a path.
        ("ns/shop/sa/api", Some(("POST", "/v1/refunds/../7")), DENY, "shop/payments/no-admin", false),
    ];
    for &(peer, http, verdict, label, http_required) in table {
        let d = ask(&p, IN, PAYMENTS, peer, 8080, http);
        assert_eq!((d.verdict, d.label().as_str(), d.http_required), (verdict, label, http_required), "{peer} {http:?}: {d}");
    }
}

#[test]
fn every_default_policy_applies_to_unselected_workloads() {
    let unselected = "ns/shop/sa/frontend";
    let table = [
        (DefaultPolicy::Deny, "ns/shop/sa/api", DENY, false),
        (DefaultPolicy::Deny, "10.0.0.1", DENY, false),
        (
            DefaultPolicy::AllAuthenticated,
            "ns/shop/sa/api",
            ALLOW,
            false,
        ),
        (DefaultPolicy::AllAuthenticated, "10.0.0.1", DENY, false),
        (
            DefaultPolicy::AllUnauthenticated,
            "ns/shop/sa/api",
            ALLOW,
            false,
        ),
        (DefaultPolicy::AllUnauthenticated, "10.0.0.1", ALLOW, false),
        (DefaultPolicy::Audit, "ns/shop/sa/api", ALLOW, true),
        (DefaultPolicy::Audit, "10.0.0.1", ALLOW, true),
    ];
    for (default, peer, verdict, would_deny) in table {
        let d = ask(&policy(default), IN, unselected, peer, 80, None);
        assert_eq!(d.verdict, verdict, "{default} {peer}: {d}");
        assert_eq!(d.would_deny, would_deny, "{default} {peer}: {d}");
        assert_eq!(d.matched, Matched::Default(default), "{default} {peer}");
        let mode = if default == DefaultPolicy::Audit {
            Mode::Audit
        } else {
            Mode::Enforce
        };
        assert_eq!(d.mode, mode, "{default} {peer}");
    }
}

#[test]
fn audit_mode_never_blocks_and_reports_what_it_would_deny() {
    let p = policy(DefaultPolicy::AllAuthenticated);
    let scrape = ask(
        &p,
        IN,
        "ns/monitoring/sa/grafana",
        "ns/monitoring/sa/prometheus",
        9090,
        None,
    );
    assert_eq!(
        (scrape.verdict, scrape.would_deny, scrape.mode),
        (ALLOW, false, Mode::Audit)
    );
    assert_eq!(scrape.label(), "monitoring/trial/prometheus-scrape");

    let other = ask(
        &p,
        IN,
        "ns/monitoring/sa/grafana",
        "ns/shop/sa/api",
        3000,
        None,
    );
    assert_eq!(
        (other.verdict, other.would_deny, other.mode),
        (ALLOW, true, Mode::Audit),
        "{other}"
    );
    assert_eq!(
        other.matched,
        Matched::NoRule {
            policy: "monitoring/trial".into()
        }
    );

    // The default still decides for an audited workload: audit never allows more.
    let p = policy(DefaultPolicy::Deny);
    let denied = ask(
        &p,
        IN,
        "ns/monitoring/sa/grafana",
        "ns/monitoring/sa/prometheus",
        9090,
        None,
    );
    assert_eq!(
        (denied.verdict, denied.matched),
        (DENY, Matched::Default(DefaultPolicy::Deny))
    );
}

#[test]
fn audit_deny_alongside_enforce_allow_reports_would_deny() {
    let text = format!(
        "{POLICIES}---\n{}",
        r#"
apiVersion: palisade.dev/v1alpha1
kind: SegmentationPolicy
metadata: {name: tighten, namespace: shop}
spec:
  targets: [{identity: spiffe://cluster.local/ns/shop/sa/payments}]
  mode: audit
  ingress:
    - name: no-checkout
      action: deny
      from: [{namespace: checkout}]
"#
    );
    let docs = parse_documents("x.yaml", &text).unwrap();
    let p = compile(docs, Defaults::new(DefaultPolicy::Deny)).unwrap().0;
    let d = ask(&p, IN, PAYMENTS, "ns/checkout/sa/cart", 8080, None);
    assert_eq!(
        (d.verdict, d.would_deny, d.mode),
        (ALLOW, true, Mode::Audit),
        "{d}"
    );
    assert_eq!(d.label(), "shop/tighten/no-checkout");
    let unaffected = ask(&p, IN, PAYMENTS, "ns/shop/sa/frontend", 8080, None);
    assert_eq!(
        (unaffected.verdict, unaffected.would_deny, unaffected.mode),
        (ALLOW, false, Mode::Enforce)
    );
}

#[test]
fn files_and_documents_merge_and_duplicate_names_are_rejected() {
    let a = parse_documents("a.yaml", POLICIES).unwrap();
    let b = parse_documents("b.yaml", POLICIES.split("---").next().unwrap()).unwrap();
    let errors = compile(
        a.into_iter().chain(b).collect(),
        Defaults::new(DefaultPolicy::Deny),
    )
    .unwrap_err();
    assert_eq!(errors.len(), 1);
    assert_eq!(
        errors[0].to_string(),
        "b.yaml:2:1: error: duplicate policy `shop/payments`: already defined at a.yaml:2:1"
    );
}

#[test]
fn version_depends_on_content_not_layout() {
    let docs = parse_documents("a.yaml", POLICIES).unwrap();
    let mut reversed = parse_documents("b.yaml", POLICIES).unwrap();
    reversed.reverse();
    let defaults = Defaults::new(DefaultPolicy::Deny);
    let v1 = compile(docs.clone(), defaults).unwrap().0;
    let v2 = compile(reversed, defaults).unwrap().0;
    assert_eq!(v1.version(), v2.version());
    let changed = POLICIES.replace("9999", "9998");
    let v3 = compile(parse_documents("a.yaml", &changed).unwrap(), defaults)
        .unwrap()
        .0;
    assert_ne!(v1.version(), v3.version());
    assert_ne!(
        v1.version(),
        CompiledPolicy::empty(DefaultPolicy::Deny).version()
    );
}

#[test]
fn a_flow_is_decided_on_its_normalized_request_or_rejected_before_any_rule() {
    use palisade_policy::flow::{Endpoint, Flow, HttpRequest};
    use palisade_policy::normalize::{Handling, Normalization, Rejection};
    use palisade_policy::{decide_flow, decide_flow_with};
    let p = policy(DefaultPolicy::Deny);
    let flow = |path: &str| Flow {
        from: Endpoint::Identity(id("ns/shop/sa/frontend")),
        to: Endpoint::Identity(id(PAYMENTS)),
        port: 8080,
        http: Some(HttpRequest {
            method: "GET".into(),
            path: path.into(),
            host: Some("Payments.Shop.:80".into()),
        }),
    };
    let d = decide_flow(&p, &flow("/v1/../admin/%75sers?x=1"), Some(IN)).unwrap();
    let normalized = d.request.clone().unwrap().unwrap();
    assert_eq!(normalized.path, "/admin/users?x=1");
    assert_eq!(normalized.host.as_deref(), Some("payments.shop"));
    assert_eq!(d.verdict(), DENY);
    assert_eq!(d.deciding().deciding().label(), "shop/payments/no-admin");

    let d = decide_flow(&p, &flow("/admin%2fusers"), Some(IN)).unwrap();
    assert_eq!(d.rejected(), Some(Rejection::EscapedSlash));
    assert_eq!(d.verdict(), DENY);
    assert!(d.checks[0].request.is_none());

    let loose = Normalization {
        escaped_slashes: Handling::Normalize,
        ..Normalization::default()
    };
    let d = decide_flow_with(&p, &flow("/admin%2fusers"), Some(IN), &loose).unwrap();
    assert_eq!(d.rejected(), None);
    assert_eq!(d.deciding().deciding().label(), "shop/payments/no-admin");
}
