//! Reachability diff between two policy versions: over every identity,
//! namespace, CIDR, port range and HTTP route either version names, which
//! (source, destination, port, route) flows the change opens and closes.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use serde::Serialize;

use crate::compile::CompiledPolicy;
use crate::decision::Verdict;
use crate::flow::{decide_flow, Endpoint, Flow, HttpRequest};
use crate::model::{
    is_placeholder, HostMatch, IdMatch, PathMatch, PeerMatch, PolicyDoc, PortRange, Target,
};
use crate::spiffe::SpiffeId;

/// A stand-in path segment for "some workload the policies do not name".
const OTHER: &str = "_other";
/// The route label for a whole connection (every request, or opaque TCP).
pub const ANY_ROUTE: &str = "any";
const OPAQUE_ROUTE: &str = "non-HTTP";

/// One flow whose reachability changed.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct ReachPath {
    pub source: String,
    pub destination: String,
    pub port: String,
    pub route: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ReachDiff {
    pub opened: Vec<ReachPath>,
    pub closed: Vec<ReachPath>,
}

impl ReachDiff {
    pub fn is_empty(&self) -> bool {
        self.opened.is_empty() && self.closed.is_empty()
    }
}

/// A representative point of the universe, and how to show it.
struct Point<T> {
    label: String,
    value: T,
}

/// Computes the reachability diff. Each side keeps its own default policy.
pub fn diff(old: &CompiledPolicy, new: &CompiledPolicy) -> ReachDiff {
    let docs: Vec<&PolicyDoc> = old.docs().iter().chain(new.docs()).collect();
    let endpoints = endpoints(&docs);
    let ports = ports(&docs);
    let routes = routes(&docs);
    let mut out = ReachDiff::default();
    for src in &endpoints {
        for dst in &endpoints {
            let meshed = matches!(src.value, Endpoint::Identity(_))
                || matches!(dst.value, Endpoint::Identity(_));
            if src.label == dst.label || !meshed {
                continue;
            }
            for port in &ports {
                let mut changed: Vec<(&str, bool)> = Vec::new();
                for route in &routes {
                    let flow = Flow {
                        from: src.value.clone(),
                        to: dst.value.clone(),
                        port: port.value,
                        http: route.value.clone(),
                    };
                    let before = allowed(old, &flow);
                    let after = allowed(new, &flow);
                    if before != after {
                        changed.push((&route.label, after));
                    }
                }
                let row = |route: &str| ReachPath {
                    source: src.label.clone(),
                    destination: dst.label.clone(),
                    port: port.label.clone(),
                    route: route.to_owned(),
                };
                // Every route moved the same way: the whole connection did.
                let whole =
                    changed.len() == routes.len() && changed.iter().all(|c| c.1 == changed[0].1);
                if whole {
                    let list = if changed[0].1 {
                        &mut out.opened
                    } else {
                        &mut out.closed
                    };
                    list.push(row(ANY_ROUTE));
                    continue;
                }
                for (route, now_open) in changed {
                    let list = if now_open {
                        &mut out.opened
                    } else {
                        &mut out.closed
                    };
                    list.push(row(route));
                }
            }
        }
    }
    out.opened.sort();
    out.closed.sort();
    out
}

fn allowed(policy: &CompiledPolicy, flow: &Flow) -> bool {
    decide_flow(policy, flow, None).is_ok_and(|d| d.verdict() == Verdict::Allow)
}

/// Named identities, a stand-in for the unnamed rest of each namespace and
/// glob, one for "any other identity" per trust domain, and one address
/// per distinct CIDR region.
fn endpoints(docs: &[&PolicyDoc]) -> Vec<Point<Endpoint>> {
    let mut ids: BTreeMap<String, SpiffeId> = BTreeMap::new();
    let mut namespaces = BTreeSet::new();
    let mut prefixes = BTreeSet::new();
    let mut cidrs = BTreeSet::new();
    let id_match = |m: &IdMatch,
                    ids: &mut BTreeMap<String, SpiffeId>,
                    prefixes: &mut BTreeSet<String>| match m {
        IdMatch::Exact(id) => {
            ids.insert(id.to_string(), id.clone());
        }
        IdMatch::Prefix(p) => {
            prefixes.insert(p.clone());
        }
    };
    for doc in docs {
        for t in &doc.targets {
            match t {
                Target::Identity(m) => id_match(m, &mut ids, &mut prefixes),
                Target::Namespace(ns) => {
                    namespaces.insert(ns.clone());
                }
            }
        }
        let rules = doc.ingress.iter().chain(doc.egress.iter()).flatten();
        for peer in rules.flat_map(|r| r.peers.iter().flatten()) {
            match peer {
                PeerMatch::Identity(m) => id_match(m, &mut ids, &mut prefixes),
                PeerMatch::Namespace(ns) => {
                    namespaces.insert(ns.clone());
                }
                PeerMatch::Cidr(net) => {
                    cidrs.insert(*net);
                }
            }
        }
    }
    let mut tds: BTreeSet<String> = ids
        .values()
        .map(|id| id.trust_domain_str().to_owned())
        .collect();
    tds.extend(
        prefixes
            .iter()
            .filter_map(|p| SpiffeId::parse(p.trim_end_matches('/')).ok())
            .map(|id| id.trust_domain_str().to_owned()),
    );
    if tds.is_empty() {
        tds.insert("cluster.local".into());
    }
    let mut out: Vec<Point<Endpoint>> = ids
        .into_iter()
        .map(|(label, id)| Point {
            label,
            value: Endpoint::Identity(id),
        })
        .collect();
    let mut add_stand_in = |label: String, id: String| {
        if let Ok(id) = SpiffeId::parse(&id) {
            if !out.iter().any(|p| p.label == label) {
                out.push(Point {
                    label,
                    value: Endpoint::Identity(id),
                });
            }
        }
    };
    for td in &tds {
        for ns in &namespaces {
            add_stand_in(
                format!("spiffe://{td}/ns/{ns}/sa/*"),
                format!("spiffe://{td}/ns/{ns}/sa/{OTHER}"),
            );
        }
        add_stand_in(
            format!("spiffe://{td}/*"),
            format!("spiffe://{td}/ns/{OTHER}/sa/{OTHER}"),
        );
    }
    for p in &prefixes {
        add_stand_in(format!("{p}*"), format!("{p}{OTHER}"));
    }
    out.extend(address_points(&cidrs));
    out
}

/// For each CIDR, one address inside it but outside every smaller named
/// CIDR (if any is left), plus one address outside all of them.
fn address_points(cidrs: &BTreeSet<IpNet>) -> Vec<Point<Endpoint>> {
    let mut out = Vec::new();
    let families = [
        IpNet::V4(Ipv4Net::new(Ipv4Addr::UNSPECIFIED, 0).expect("/0 is valid")),
        IpNet::V6(Ipv6Net::new(Ipv6Addr::UNSPECIFIED, 0).expect("/0 is valid")),
    ];
    for root in families {
        let named: Vec<&IpNet> = cidrs.iter().filter(|c| root.contains(*c)).collect();
        if named.is_empty() && root.addr().is_ipv6() {
            continue;
        }
        for net in named
            .iter()
            .copied()
            .chain((!named.contains(&&root)).then_some(&root))
        {
            let inner: Vec<&IpNet> = named
                .iter()
                .copied()
                .filter(|c| *c != net && net.contains(*c))
                .collect();
            if let Some(ip) = first_uncovered(net, &inner) {
                let label = if net == &root {
                    format!("{root} (any other address)")
                } else {
                    net.to_string()
                };
                out.push(Point {
                    label,
                    value: Endpoint::Address(ip),
                });
            }
        }
    }
    out
}

fn first_uncovered(net: &IpNet, inner: &[&IpNet]) -> Option<IpAddr> {
    let mut ip = net.network();
    while let Some(sub) = inner.iter().find(|c| c.contains(&ip)) {
        ip = next_ip(sub.broadcast())?;
        if !net.contains(&ip) {
            return None;
        }
    }
    Some(ip)
}

fn next_ip(ip: IpAddr) -> Option<IpAddr> {
    match ip {
        IpAddr::V4(v4) => u32::from(v4).checked_add(1).map(|n| IpAddr::V4(n.into())),
        IpAddr::V6(v6) => u128::from(v6).checked_add(1).map(|n| IpAddr::V6(n.into())),
    }
}

/// The elementary port ranges every named range splits 1-65535 into.
fn ports(docs: &[&PolicyDoc]) -> Vec<Point<u16>> {
    let mut bounds: BTreeSet<u32> = [1, 65536].into();
    let rules = docs
        .iter()
        .flat_map(|d| d.ingress.iter().chain(d.egress.iter()).flatten());
    for r in rules.flat_map(|r| r.ports.iter().flatten()) {
        bounds.insert(u32::from(r.lo.max(1)));
        bounds.insert(u32::from(r.hi) + 1);
    }
    let bounds: Vec<u32> = bounds.into_iter().collect();
    bounds
        .windows(2)
        .map(|w| {
            let range = PortRange {
                lo: w[0] as u16,
                hi: (w[1] - 1) as u16,
            };
            Point {
                label: range.to_string(),
                value: range.lo,
            }
        })
        .collect()
}

/// Non-HTTP traffic, plus one request per named method/path/host.
fn routes(docs: &[&PolicyDoc]) -> Vec<Point<Option<HttpRequest>>> {
    let mut out = vec![Point {
        label: OPAQUE_ROUTE.to_owned(),
        value: None,
    }];
    let rules = docs
        .iter()
        .flat_map(|d| d.ingress.iter().chain(d.egress.iter()).flatten());
    for m in rules.flat_map(|r| r.http.iter().flatten()) {
        let methods: Vec<Option<&str>> = opt_list(m.methods.iter().map(String::as_str));
        let paths: Vec<Option<&PathMatch>> = opt_list(m.paths.iter());
        let hosts: Vec<Option<&HostMatch>> = opt_list(m.hosts.iter());
        for method in &methods {
            for path in &paths {
                for host in &hosts {
                    let mut label = format!(
                        "{} {}",
                        method.unwrap_or("*"),
                        path.map_or("/*".to_owned(), |p| p.to_string())
                    );
                    if let Some(h) = host {
                        label.push_str(&format!(" (host {h})"));
                    }
                    let request = HttpRequest {
                        method: method.unwrap_or("GET").to_owned(),
                        path: match path {
                            Some(PathMatch::Exact(p)) => p.clone(),
                            Some(PathMatch::Prefix(p)) => format!("{p}/{OTHER}"),
                            Some(PathMatch::Template { path, prefix }) => {
                                let mut p = path
                                    .split('/')
                                    .map(|s| if is_placeholder(s) { OTHER } else { s })
                                    .collect::<Vec<_>>()
                                    .join("/");
                                if *prefix {
                                    p = format!("{p}/{OTHER}");
                                }
                                p
                            }
                            None => format!("/{OTHER}"),
                        },
                        host: host.map(|h| match h {
                            HostMatch::Exact(e) => e.clone(),
                            HostMatch::Suffix(s) => format!("{OTHER}{s}"),
                        }),
                    };
                    if !out.iter().any(|p| p.label == label) {
                        out.push(Point {
                            label,
                            value: Some(request),
                        });
                    }
                }
            }
        }
    }
    out
}

/// The items as `Some`, or a single `None` ("any") when there are none.
fn opt_list<T>(items: impl Iterator<Item = T>) -> Vec<Option<T>> {
    let v: Vec<Option<T>> = items.map(Some).collect();
    if v.is_empty() {
        vec![None]
    } else {
        v
    }
}
