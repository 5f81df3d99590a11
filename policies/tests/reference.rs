//! Property test: on random policies and requests, the compiled, indexed
//! `decide()` agrees with a naive evaluator that scans every rule.

use std::net::IpAddr;
use std::sync::Arc;

use palisade_policy::model::{
    Action, HostMatch, HttpMatch, IdMatch, PathMatch, PeerMatch, PortRange, Rule, Target,
};
use palisade_policy::{
    compile, decide, CompiledPolicy, DefaultPolicy, Defaults, Direction, HttpInfo, Mode, Peer,
    PolicyDoc, Pos, Request, SpiffeId, Verdict,
};
use proptest::prelude::*;

const IDS: &[&str] = &[
    "spiffe://cluster.local/ns/a/sa/x",
    "spiffe://cluster.local/ns/a/sa/y",
    "spiffe://cluster.local/ns/b/sa/x",
    "spiffe://cluster.local/ns/c/sa/z",
    "spiffe://cluster.local/svc/q",
    "spiffe://other.org/ns/a/sa/x",
    "spiffe://other.org/ns/b/sa/y",
];
const GLOBS: &[&str] = &[
    "spiffe://cluster.local/ns/a/",
    "spiffe://cluster.local/ns/a/sa/",
    "spiffe://cluster.local/",
    "spiffe://other.org/ns/b/",
];
const NAMESPACES: &[&str] = &["a", "b", "c"];
const CIDRS: &[&str] = &[
    "10.0.0.0/8",
    "10.1.0.0/16",
    "10.1.2.0/24",
    "10.1.2.3/32",
    "0.0.0.0/0",
    "192.168.0.0/16",
    "fd00::/8",
    "::/0",
];
const ADDRS: &[&str] = &[
    "10.1.2.3",
    "10.1.9.9",
    "10.200.0.1",
    "192.168.1.1",
    "8.8.8.8",
    "fd00::1",
    "2001:db8::1",
    "::ffff:10.1.2.3",
];
const PATHS: &[&str] = &[
    "/a", "/a/b", "/c", "/a?x=1", "/a/../c", "/c/../a", "/%61/b", "//a", "/a/./b", "/a%2Fb",
    "/a\\b", "/a;x/b", "*", "/a/b/c", "/a/", "/a/b/", "/x/b", "/x/b/c", "/c/b?y",
];
const HOSTS: &[Option<&str>] = &[
    None,
    Some("h.x"),
    Some("z.h.x:8080"),
    Some("other"),
    Some("H.X"),
    Some("h.x."),
    Some("z.h.x:80"),
];

fn id(s: &str) -> SpiffeId {
    SpiffeId::parse(s).unwrap()
}

fn id_match() -> impl Strategy<Value = IdMatch> {
    prop_oneof![
        prop::sample::select(IDS).prop_map(|s| IdMatch::Exact(id(s))),
        prop::sample::select(GLOBS).prop_map(|s| IdMatch::Prefix(s.to_owned())),
    ]
}

fn target() -> impl Strategy<Value = Target> {
    prop_oneof![
        3 => id_match().prop_map(Target::Identity),
        1 => prop::sample::select(NAMESPACES).prop_map(|s| Target::Namespace(s.to_owned())),
    ]
}

fn peer_match() -> impl Strategy<Value = PeerMatch> {
    prop_oneof![
        3 => id_match().prop_map(PeerMatch::Identity),
        1 => prop::sample::select(NAMESPACES).prop_map(|s| PeerMatch::Namespace(s.to_owned())),
        2 => prop::sample::select(CIDRS).prop_map(|s| PeerMatch::Cidr(s.parse().unwrap())),
    ]
}

fn port_range() -> impl Strategy<Value = PortRange> {
    prop_oneof![
        (1u16..24, 0u16..6).prop_map(|(lo, len)| PortRange { lo, hi: lo + len }),
        Just(PortRange {
            lo: 65530,
            hi: 65535
        }),
    ]
}

fn http_match() -> impl Strategy<Value = HttpMatch> {
    let path = prop::sample::select(vec![
        PathMatch::Exact("/a".into()),
        PathMatch::Exact("/a/b".into()),
        PathMatch::Prefix("/a".into()),
        PathMatch::Prefix(String::new()),
        PathMatch::Template {
            path: "/a/{id}".into(),
            prefix: false,
        },
        PathMatch::Template {
            path: "/{x}/b".into(),
            prefix: true,
        },
    ]);
    let host = prop::sample::select(vec![
        HostMatch::Exact("h.x".into()),
        HostMatch::Suffix(".h.x".into()),
    ]);
    (
        prop::collection::vec(
            prop::sample::select(vec!["GET".to_owned(), "POST".to_owned()]),
            0..2,
        ),
        prop::collection::vec(path, 0..2),
        prop::collection::vec(host, 0..2),
    )
        .prop_map(|(methods, paths, hosts)| HttpMatch {
            methods,
            paths,
            hosts,
        })
}

/// Rule `r<i>`.
fn numbered_rule(
    i: usize,
    deny: bool,
    peers: Option<Vec<PeerMatch>>,
    ports: Option<Vec<PortRange>>,
    http: Option<Vec<HttpMatch>>,
) -> Rule {
    Rule {
        pos: Pos::default(),
        name: format!("r{i}"),
        action: if deny { Action::Deny } else { Action::Allow },
        peers,
        ports,
        http,
    }
}

/// Policy `<namespace>/p<i>` in `source`, with no rules yet.
fn numbered_doc(
    source: &str,
    namespace: &str,
    i: usize,
    targets: Vec<Target>,
    audit: bool,
) -> PolicyDoc {
    PolicyDoc {
        source: Arc::from(source),
        pos: Pos::default(),
        namespace: namespace.to_owned(),
        name: format!("p{i}"),
        targets,
        mode: if audit { Mode::Audit } else { Mode::Enforce },
        ingress: None,
        egress: None,
        baseline: None,
    }
}

fn rules() -> impl Strategy<Value = Vec<Rule>> {
    let rule = (
        prop::bool::ANY,
        prop::option::of(prop::collection::vec(peer_match(), 1..3)),
        prop::option::of(prop::collection::vec(port_range(), 1..3)),
        prop::option::weighted(0.3, prop::collection::vec(http_match(), 1..3)),
    );
    prop::collection::vec(rule, 0..4).prop_map(|rs| {
        rs.into_iter()
            .enumerate()
            .map(|(i, (deny, peers, ports, http))| numbered_rule(i, deny, peers, ports, http))
            .collect()
    })
}

fn docs() -> impl Strategy<Value = Vec<PolicyDoc>> {
    let doc = (
        prop::sample::select(NAMESPACES),
        prop::collection::vec(target(), 1..3),
        prop::bool::weighted(0.25),
        prop::option::weighted(0.8, rules()),
        prop::option::weighted(0.6, rules()),
    );
    prop::collection::vec(doc, 0..6).prop_map(|ds| {
        ds.into_iter()
            .enumerate()
            .map(|(i, (ns, targets, audit, ingress, egress))| {
                let mut d = numbered_doc("gen.yaml", ns, i, targets, audit);
                (d.ingress, d.egress) = (ingress, egress);
                d
            })
            .collect()
    })
}

#[derive(Debug, Clone)]
struct Req {
    direction: Direction,
    local: &'static str,
    peer: Result<&'static str, IpAddr>,
    port: u16,
    http: Option<(&'static str, &'static str, Option<&'static str>)>,
}

fn request() -> impl Strategy<Value = Req> {
    let peer = prop_oneof![
        2 => prop::sample::select(IDS).prop_map(Ok),
        1 => prop::sample::select(ADDRS).prop_map(|a| Err(a.parse().unwrap())),
    ];
    let http = prop::option::weighted(
        0.4,
        (
            prop::sample::select(vec!["GET", "POST", "PUT"]),
            prop::sample::select(PATHS),
            prop::sample::select(HOSTS),
        ),
    );
    let port = prop_oneof![0u16..26, Just(65535u16)];
    (prop::bool::ANY, prop::sample::select(IDS), peer, port, http).prop_map(
        |(ingress, local, peer, port, http)| Req {
            direction: if ingress {
                Direction::Ingress
            } else {
                Direction::Egress
            },
            local,
            peer,
            port,
            http,
        },
    )
}

fn default_policy() -> impl Strategy<Value = DefaultPolicy> {
    prop::sample::select(DefaultPolicy::ALL.to_vec())
}

/// What the reference computes, in the engine's terms.
#[derive(Debug, PartialEq)]
struct Outcome {
    verdict: Verdict,
    would_deny: bool,
    label: String,
    mode: Mode,
    http_required: bool,
}

// ---- The naive reference: scan every rule of every document. ----

fn namespace_of(id: &str) -> Option<&str> {
    let path = id.strip_prefix("spiffe://")?.split_once('/')?.1;
    match path.split('/').collect::<Vec<_>>().as_slice() {
        ["ns", ns, "sa", _] => Some(ns),
        _ => None,
    }
}

fn trust_domain(id: &str) -> &str {
    id.strip_prefix("spiffe://")
        .unwrap()
        .split('/')
        .next()
        .unwrap()
}

fn ref_id_match(m: &IdMatch, id: &str) -> bool {
    match m {
        IdMatch::Exact(e) => e.as_str() == id,
        IdMatch::Prefix(p) => id.starts_with(p.as_str()) && id.len() > p.len(),
    }
}

fn ref_target(t: &Target, local: &str) -> bool {
    match t {
        Target::Identity(m) => ref_id_match(m, local),
        Target::Namespace(ns) => namespace_of(local) == Some(ns),
    }
}

fn ref_peer(p: &PeerMatch, local: &str, peer: &Result<&str, IpAddr>) -> bool {
    match (p, peer) {
        (PeerMatch::Identity(m), Ok(id)) => ref_id_match(m, id),
        (PeerMatch::Namespace(ns), Ok(id)) => {
            namespace_of(id) == Some(ns) && trust_domain(id) == trust_domain(local)
        }
        (PeerMatch::Cidr(net), Err(ip)) => net.contains(&ip.to_canonical()),
        _ => false,
    }
}

/// How a request fits a rule's `http` entries: `Some(true)` matches,
/// `Some(false)` does not, `None` is ambiguous (a path or host that is not
/// in normal form, with nothing else ruling the entry out).
fn ref_http(
    entries: &[HttpMatch],
    (method, raw_path, host): (&str, &str, Option<&str>),
) -> Option<bool> {
    let path = raw_path.split('?').next().unwrap();
    // Not normal: anything a normalizer would rewrite or refuse.
    let odd_path = !path.starts_with('/')
        || ["//", "%", "\\", ";", "#"].iter().any(|t| path.contains(t))
        || path.split('/').any(|s| s == ".." || s == ".");
    let odd_host = host.is_some_and(|h| {
        h.ends_with('.') || h.ends_with(":80") || h.chars().any(|c| c.is_ascii_uppercase())
    });
    let host = host.map(|h| h.split(':').next().unwrap());
    let fits: Vec<Option<bool>> = entries
        .iter()
        .map(|e| {
            let m = e.methods.is_empty() || e.methods.iter().any(|x| x == method);
            let p = if e.paths.is_empty() {
                Some(true)
            } else if odd_path {
                None
            } else {
                Some(e.paths.iter().any(|p| match p {
                    PathMatch::Exact(x) => x == path,
                    PathMatch::Prefix(x) => path == x || path.starts_with(&format!("{x}/")),
                    PathMatch::Template { path: t, prefix } => {
                        let want: Vec<&str> = t.split('/').collect();
                        let got: Vec<&str> = path.split('/').collect();
                        (got.len() == want.len() || (*prefix && got.len() > want.len()))
                            && want
                                .iter()
                                .zip(&got)
                                .all(|(w, g)| match w.starts_with('{') {
                                    true => !g.is_empty(),
                                    false => w == g,
                                })
                    }
                }))
            };
            let h = if e.hosts.is_empty() {
                Some(true)
            } else if host.is_none() {
                Some(false)
            } else if odd_host {
                None
            } else {
                let h = host.unwrap();
                Some(e.hosts.iter().any(|m| match m {
                    HostMatch::Exact(x) => x == h,
                    HostMatch::Suffix(s) => h.ends_with(s.as_str()) && h.len() > s.len(),
                }))
            };
            if !m || p == Some(false) || h == Some(false) {
                Some(false)
            } else if p.is_none() || h.is_none() {
                None
            } else {
                Some(true)
            }
        })
        .collect();
    if fits.contains(&Some(true)) {
        Some(true)
    } else if fits.contains(&None) {
        None
    } else {
        Some(false)
    }
}

fn reference(docs: &[PolicyDoc], default: DefaultPolicy, req: &Req) -> Outcome {
    let mut sorted: Vec<&PolicyDoc> = docs.iter().collect();
    sorted.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    // One pass per evaluation: enforce-only (`audit == false`) or all.
    let evaluate = |include_audit: bool| -> Option<(Verdict, String, bool)> {
        let mut selected = None;
        let (mut deny, mut allow, mut http_allow) = (None, None, None);
        // At L4: any rule with `http` for this peer and port.
        let mut http_seen = false;
        for doc in sorted
            .iter()
            .filter(|d| include_audit || d.mode == Mode::Enforce)
        {
            let Some(rules) = doc.rules(req.direction) else {
                continue;
            };
            if !doc.targets.iter().any(|t| ref_target(t, req.local)) {
                continue;
            }
            selected.get_or_insert(doc.id());
            for r in rules {
                let peer_ok = r
                    .peers
                    .as_ref()
                    .is_none_or(|ps| ps.iter().any(|p| ref_peer(p, req.local, &req.peer)));
                let port_ok = r
                    .ports
                    .as_ref()
                    .is_none_or(|ps| ps.iter().any(|p| p.lo <= req.port && req.port <= p.hi));
                if !peer_ok || !port_ok {
                    continue;
                }
                let label = format!("{}/{}", doc.id(), r.name);
                let (http_ok, l4_http_allow) = match (&r.http, req.http) {
                    (None, _) => (true, false),
                    (Some(_), None) => {
                        http_seen = true;
                        (false, r.action == Action::Allow)
                    }
                    // Ambiguity counts for a deny, against an allow.
                    (Some(h), Some(info)) => match ref_http(h, info) {
                        Some(fits) => (fits, false),
                        None => (r.action == Action::Deny, false),
                    },
                };
                if l4_http_allow {
                    http_allow.get_or_insert(label.clone());
                }
                if http_ok {
                    match r.action {
                        Action::Deny => deny.get_or_insert(label),
                        Action::Allow => allow.get_or_insert(label),
                    };
                }
            }
        }
        let selected = selected?;
        Some(match (deny, allow, http_allow) {
            (Some(d), _, _) => (Verdict::Deny, d, false),
            (None, Some(a), _) => (Verdict::Allow, a, http_seen),
            (None, None, Some(h)) => (Verdict::Allow, h, true),
            (None, None, None) => (Verdict::Deny, selected, false),
        })
    };
    let authenticated = req.peer.is_ok();
    let default_outcome = || {
        let label = format!("default/{default}");
        match default {
            DefaultPolicy::Deny => Outcome {
                verdict: Verdict::Deny,
                would_deny: false,
                label,
                mode: Mode::Enforce,
                http_required: false,
            },
            DefaultPolicy::AllAuthenticated => Outcome {
                verdict: if authenticated {
                    Verdict::Allow
                } else {
                    Verdict::Deny
                },
                would_deny: false,
                label,
                mode: Mode::Enforce,
                http_required: false,
            },
            DefaultPolicy::AllUnauthenticated => Outcome {
                verdict: Verdict::Allow,
                would_deny: false,
                label,
                mode: Mode::Enforce,
                http_required: false,
            },
            DefaultPolicy::Audit => Outcome {
                verdict: Verdict::Allow,
                would_deny: true,
                label,
                mode: Mode::Audit,
                http_required: false,
            },
        }
    };
    let all = evaluate(true);
    match evaluate(false) {
        None => {
            let base = default_outcome();
            match all {
                Some((v, label, _)) if base.verdict == Verdict::Allow => Outcome {
                    verdict: Verdict::Allow,
                    would_deny: v == Verdict::Deny,
                    label,
                    mode: Mode::Audit,
                    http_required: false,
                },
                _ => base,
            }
        }
        Some((Verdict::Deny, label, _)) => Outcome {
            verdict: Verdict::Deny,
            would_deny: false,
            label,
            mode: Mode::Enforce,
            http_required: false,
        },
        Some((Verdict::Allow, label, http_required)) => match all {
            Some((Verdict::Deny, audit_label, _)) => Outcome {
                verdict: Verdict::Allow,
                would_deny: true,
                label: audit_label,
                mode: Mode::Audit,
                http_required,
            },
            _ => Outcome {
                verdict: Verdict::Allow,
                would_deny: false,
                label,
                mode: Mode::Enforce,
                http_required,
            },
        },
    }
}

/// What the compiled policy decides for `req`.
fn decided(policy: &CompiledPolicy, req: &Req) -> Outcome {
    let local = id(req.local);
    let peer_id = req.peer.ok().map(id);
    let peer = match (&peer_id, req.peer) {
        (Some(p), _) => Peer::Identity(p),
        (None, Err(ip)) => Peer::Address(ip),
        (None, Ok(_)) => unreachable!(),
    };
    let http = req
        .http
        .map(|(method, path, host)| HttpInfo { method, path, host });
    let request = Request {
        direction: req.direction,
        local: &local,
        peer,
        port: req.port,
        http,
    };
    let d = decide(policy, &request);
    Outcome {
        verdict: d.verdict,
        would_deny: d.would_deny,
        label: d.label(),
        mode: d.mode,
        http_required: d.http_required,
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn compiled_decide_agrees_with_naive_reference(
        docs in docs(),
        default in default_policy(),
        reqs in prop::collection::vec(request(), 1..16),
    ) {
        let (policy, _) = compile(docs.clone(), Defaults::new(default)).unwrap();
        for req in &reqs {
            prop_assert_eq!(decided(&policy, req), reference(&docs, default, req), "request {:?}", req);
        }
    }
}

/// A fixed scramble, so the large policy below is the same on every run.
struct Lcg(u64);

impl Lcg {
    fn below(&mut self, n: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (self.0 >> 33) % n
    }
}

fn peer_id(i: u64) -> String {
    format!("spiffe://cluster.local/ns/n{}/sa/peer{i}", i % 7)
}

/// Many distinct peers, nested and overlapping CIDRs, overlapping port
/// ranges and HTTP rules spanning many port segments, on a few workloads:
/// the shapes the index files into hash maps, shared tables and segment
/// trees rather than scanning.
fn large_policy(rng: &mut Lcg) -> Vec<PolicyDoc> {
    let nets: Vec<String> = (0..300)
        .map(|_| {
            let len = 8 + rng.below(25) as u8;
            let ip = 0x0a00_0000u32 | (rng.below(1 << 24) as u32);
            let v4 = std::net::Ipv4Addr::from(ip & (u32::MAX << (32 - u32::from(len))));
            format!("{v4}/{len}")
        })
        .collect();
    (0..4)
        .map(|p| {
            let ingress = (0..600)
                .map(|r| {
                    let deny = rng.below(12) == 0;
                    let peers = match rng.below(10) {
                        // Deny rules always name peers, so not everything is denied.
                        0 if !deny => None,
                        1..=3 => Some(vec![PeerMatch::Cidr(
                            nets[rng.below(nets.len() as u64) as usize].parse().unwrap(),
                        )]),
                        4 => Some(vec![PeerMatch::Namespace(format!("n{}", rng.below(7)))]),
                        _ => Some(vec![PeerMatch::Identity(IdMatch::Exact(id(&peer_id(
                            rng.below(400),
                        ))))]),
                    };
                    let ports = match rng.below(4) {
                        0 => None,
                        1 => {
                            let lo = 1 + rng.below(60) as u16;
                            Some(vec![PortRange {
                                lo,
                                hi: lo + rng.below(30) as u16,
                            }])
                        }
                        _ => {
                            let p = 1 + rng.below(80) as u16;
                            Some(vec![PortRange { lo: p, hi: p }])
                        }
                    };
                    let http = (rng.below(4) == 0).then(|| {
                        vec![HttpMatch {
                            methods: vec![],
                            paths: vec![PathMatch::Prefix(format!("/p{}", rng.below(5)))],
                            hosts: vec![],
                        }]
                    });
                    numbered_rule(r, deny, peers, ports, http)
                })
                .collect();
            let targets = vec![Target::Identity(IdMatch::Exact(id(IDS[p % 2])))];
            let mut d = numbered_doc("large.yaml", "a", p, targets, p == 3);
            d.ingress = Some(ingress);
            d
        })
        .collect()
}

#[test]
fn many_distinct_peers_and_overlapping_cidrs_decide_like_the_reference() {
    let mut rng = Lcg(7);
    let docs = large_policy(&mut rng);
    let (policy, _) = compile(docs.clone(), Defaults::new(DefaultPolicy::Deny)).unwrap();
    let peers: Vec<&'static str> = (0..420)
        .map(|i| &*Box::leak(peer_id(i).into_boxed_str()))
        .collect();
    let paths = ["/p0/x", "/p3", "/q"];
    let (mut allowed, mut denied) = (0, 0);
    for _ in 0..3000 {
        let peer = if rng.below(2) == 0 {
            Ok(peers[rng.below(peers.len() as u64) as usize])
        } else {
            let ip = 0x0a00_0000u32 | (rng.below(1 << 24) as u32);
            Err(IpAddr::from(std::net::Ipv4Addr::from(ip)))
        };
        let http = (rng.below(3) == 0).then(|| ("GET", paths[rng.below(3) as usize], None));
        let req = Req {
            direction: Direction::Ingress,
            local: IDS[rng.below(2) as usize],
            peer,
            port: rng.below(100) as u16,
            http,
        };
        let got = decided(&policy, &req);
        assert_eq!(got, reference(&docs, DefaultPolicy::Deny, &req), "{req:?}");
        match got.verdict {
            Verdict::Allow => allowed += 1,
            Verdict::Deny => denied += 1,
        }
    }
    // Both verdicts are exercised, not just the default.
    assert!(
        allowed > 300 && denied > 300,
        "{allowed} allowed, {denied} denied"
    );
}
