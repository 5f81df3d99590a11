//! `decide()` cost at 10, 1,000 and 100,000 rules (it must stay flat), also
//! on 100,000-rule sets of every shape (`policy_shapes`), and the time to
//! compile 100,000 rules (what a policy reload pays off the hot path).

use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BatchSize, BenchmarkId, Criterion};
use palisade_bench::policy_shapes::{ProbePeer, Shape};
use palisade_policy::model::{
    Action, HttpMatch, IdMatch, PathMatch, PeerMatch, PortRange, Rule, Target,
};
use palisade_policy::{
    compile, decide, parse_documents, CompiledPolicy, DefaultPolicy, Defaults, Direction, HttpInfo,
    Mode, Peer, PolicyDoc, Pos, Request, SpiffeId,
};

const RULES_PER_POLICY: usize = 10;
const SIZES: [usize; 3] = [10, 1_000, 100_000];

fn workload(i: usize) -> String {
    format!("spiffe://cluster.local/ns/ns{}/sa/svc{i}", i % 100)
}

/// `rules` rules spread over `rules / 10` workloads, one policy each: every
/// rule allows one peer on one port, the last of each policy is a CIDR rule
/// and every fifth has an HTTP condition. `one_target` puts every rule on
/// a single workload instead (the worst case for a per-target scan).
fn synthetic(rules: usize, one_target: bool) -> Vec<PolicyDoc> {
    let policies = rules.div_ceil(RULES_PER_POLICY);
    (0..policies)
        .map(|p| {
            let target = if one_target { workload(0) } else { workload(p) };
            let ingress = (0..RULES_PER_POLICY.min(rules - p * RULES_PER_POLICY))
                .map(|r| {
                    let n = p * RULES_PER_POLICY + r;
                    let peer = if r == RULES_PER_POLICY - 1 {
                        PeerMatch::Cidr(
                            format!("10.{}.{}.0/24", (n / 256) % 256, n % 256)
                                .parse()
                                .unwrap(),
                        )
                    } else {
                        PeerMatch::Identity(IdMatch::Exact(
                            SpiffeId::parse(&workload(n + 7)).unwrap(),
                        ))
                    };
                    let http = (r % 5 == 4).then(|| {
                        vec![HttpMatch {
                            methods: vec!["GET".into()],
                            paths: vec![PathMatch::Prefix("/v1".into())],
                            hosts: vec![],
                        }]
                    });
                    let port = 1000 + (n % 60_000) as u16;
                    Rule {
                        pos: Pos::default(),
                        name: format!("r{r}"),
                        action: if r == 3 { Action::Deny } else { Action::Allow },
                        peers: Some(vec![peer]),
                        ports: Some(vec![PortRange { lo: port, hi: port }]),
                        http,
                    }
                })
                .collect();
            PolicyDoc {
                source: Arc::from("bench.yaml"),
                pos: Pos::default(),
                namespace: format!("ns{}", p % 100),
                name: format!("p{p}"),
                targets: vec![Target::Identity(IdMatch::Exact(
                    SpiffeId::parse(&target).unwrap(),
                ))],
                mode: Mode::Enforce,
                ingress: Some(ingress),
                egress: None,
                baseline: None,
            }
        })
        .collect()
}

fn compiled(rules: usize, one_target: bool) -> CompiledPolicy {
    compile(
        synthetic(rules, one_target),
        Defaults::new(DefaultPolicy::Deny),
    )
    .unwrap()
    .0
}

/// The request that rule 0 of the policy in the middle allows.
fn probe(rules: usize, one_target: bool) -> (SpiffeId, SpiffeId, u16) {
    let p = rules.div_ceil(RULES_PER_POLICY) / 2;
    let n = p * RULES_PER_POLICY;
    let local = if one_target { workload(0) } else { workload(p) };
    (
        SpiffeId::parse(&local).unwrap(),
        SpiffeId::parse(&workload(n + 7)).unwrap(),
        1000 + (n % 60_000) as u16,
    )
}

fn bench_decide(c: &mut Criterion) {
    let mut group = c.benchmark_group("decide");
    for one_target in [false, true] {
        let shape = if one_target { "one_target" } else { "spread" };
        for rules in SIZES {
            let policy = compiled(rules, one_target);
            let (local, peer, port) = probe(rules, one_target);
            let allow = Request {
                direction: Direction::Ingress,
                local: &local,
                peer: Peer::Identity(&peer),
                port,
                http: None,
            };
            assert!(
                decide(&policy, &allow).is_allowed(),
                "the probe must hit an allow rule"
            );
            group.bench_with_input(
                BenchmarkId::new(format!("{shape}/l4_allow"), rules),
                &allow,
                |b, req| b.iter(|| decide(black_box(&policy), black_box(req))),
            );
            let miss = Request { port: 1, ..allow };
            assert!(!decide(&policy, &miss).is_allowed());
            group.bench_with_input(
                BenchmarkId::new(format!("{shape}/l4_deny"), rules),
                &miss,
                |b, req| b.iter(|| decide(black_box(&policy), black_box(req))),
            );
            let addr = Request {
                peer: Peer::Address("10.200.3.4".parse().unwrap()),
                ..allow
            };
            group.bench_with_input(
                BenchmarkId::new(format!("{shape}/address_peer"), rules),
                &addr,
                |b, req| b.iter(|| decide(black_box(&policy), black_box(req))),
            );
            let l7 = Request {
                http: Some(HttpInfo {
                    method: "GET",
                    path: "/v1/items/7",
                    host: Some("api"),
                }),
                ..allow
            };
            group.bench_with_input(
                BenchmarkId::new(format!("{shape}/http_request"), rules),
                &l7,
                |b, req| b.iter(|| decide(black_box(&policy), black_box(req))),
            );
        }
    }
    group.finish();
}

/// Renders documents as YAML, to time what a reload really does.
fn to_yaml(docs: &[PolicyDoc]) -> String {
    let mut out = String::new();
    for d in docs {
        out.push_str("---\napiVersion: palisade.dev/v1alpha1\nkind: SegmentationPolicy\n");
        out.push_str(&format!(
            "metadata: {{name: {}, namespace: {}}}\nspec:\n  targets:\n",
            d.name, d.namespace
        ));
        for t in &d.targets {
            if let Target::Identity(m) = t {
                out.push_str(&format!("    - identity: {m}\n"));
            }
        }
        out.push_str("  ingress:\n");
        for r in d.ingress.iter().flatten() {
            out.push_str(&format!(
                "    - name: {}\n      action: {}\n      from:\n",
                r.name,
                r.action.as_str()
            ));
            for p in r.peers.iter().flatten() {
                match p {
                    PeerMatch::Cidr(net) => out.push_str(&format!("        - cidr: {net}\n")),
                    other => out.push_str(&format!("        - identity: {other}\n")),
                }
            }
            let ports: Vec<String> = r.ports.iter().flatten().map(|p| p.to_string()).collect();
            out.push_str(&format!("      ports: [{}]\n", ports.join(", ")));
            if r.http.is_some() {
                out.push_str(
                    "      http:\n        - methods: [GET]\n          paths: [\"/v1/*\"]\n",
                );
            }
        }
    }
    out
}

fn bench_compile(c: &mut Criterion) {
    let mut group = c.benchmark_group("reload");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(10));
    let docs = synthetic(100_000, false);
    group.bench_function("compile/100000", |b| {
        b.iter_batched(
            || docs.clone(),
            |docs| compile(docs, Defaults::new(DefaultPolicy::Deny)).unwrap(),
            BatchSize::LargeInput,
        )
    });
    let yaml = to_yaml(&docs);
    assert_eq!(
        parse_documents("bench.yaml", &yaml).unwrap().len(),
        docs.len()
    );
    group.bench_function("parse_and_compile_yaml/100000", |b| {
        b.iter(|| {
            let docs = parse_documents("bench.yaml", black_box(&yaml)).unwrap();
            compile(docs, Defaults::new(DefaultPolicy::Deny)).unwrap()
        })
    });
    group.finish();
}

/// The request each shape's probe describes, allowed by a rule in the middle.
fn bench_decide_shapes(c: &mut Criterion) {
    const RULES: usize = 100_000;
    let mut group = c.benchmark_group("decide_shapes");
    for shape in Shape::ALL {
        let docs = parse_documents("shape.yaml", &shape.yaml(RULES, 0)).unwrap();
        let policy = compile(docs, Defaults::new(DefaultPolicy::Deny)).unwrap().0;
        let probe = shape.probe(RULES);
        let local = SpiffeId::parse(&probe.local).unwrap();
        let peer_id;
        let peer = match &probe.peer {
            ProbePeer::Identity(id) => {
                peer_id = SpiffeId::parse(id).unwrap();
                Peer::Identity(&peer_id)
            }
            ProbePeer::Address(ip) => Peer::Address(ip.parse().unwrap()),
        };
        let req = Request {
            direction: Direction::Ingress,
            local: &local,
            peer,
            port: probe.port,
            http: probe.path.as_deref().map(|path| HttpInfo {
                method: "GET",
                path,
                host: None,
            }),
        };
        group.bench_with_input(BenchmarkId::new(shape.name(), RULES), &req, |b, req| {
            b.iter(|| decide(black_box(&policy), black_box(req)))
        });
    }
    group.finish();
}

criterion_group!(benches, bench_decide, bench_decide_shapes, bench_compile);
criterion_main!(benches);
