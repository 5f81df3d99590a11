//! Synthetic policy sets of a given shape and size, as YAML, with a request
//! each allows: what the compile and decide benches and `policy-load` feed
//! the parser, the compiler and a real proxy. Every shape must stay cheap.

use std::fmt::Write as _;

/// The workload that most shapes' single policy selects.
pub const LOCAL: &str = "spiffe://cluster.local/ns/shop/sa/api";
/// The single peer of the one-peer shapes.
pub const PEER: &str = "spiffe://cluster.local/ns/web/sa/frontend";

/// How the rules of a policy set are spread.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    /// One policy; every rule has its own `from` identity (one in ten denies).
    DistinctPeers,
    /// One policy; every rule from the same identity, each on its own port.
    OnePeer,
    /// One policy; every rule from its own `/32`.
    DistinctCidrs,
    /// One policy; nested networks of every length from `/8` to `/32`.
    OverlappingCidrs,
    /// One policy; every rule from the same identity with its own HTTP path.
    HttpPaths,
    /// One policy, one identity: half the rules HTTP paths on every port,
    /// half L4 on their own port, so every port range holds every HTTP rule.
    HttpOnEveryPort,
    /// One policy; overlapping port ranges from a thousand peers.
    PortRanges,
    /// Ten rules per policy, each policy selecting its own workload.
    ManyTargets,
}

impl Shape {
    pub const ALL: [Shape; 8] = [
        Shape::DistinctPeers,
        Shape::OnePeer,
        Shape::DistinctCidrs,
        Shape::OverlappingCidrs,
        Shape::HttpPaths,
        Shape::HttpOnEveryPort,
        Shape::PortRanges,
        Shape::ManyTargets,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Shape::DistinctPeers => "distinct_peers",
            Shape::OnePeer => "one_peer",
            Shape::DistinctCidrs => "distinct_cidrs",
            Shape::OverlappingCidrs => "overlapping_cidrs",
            Shape::HttpPaths => "http_paths",
            Shape::HttpOnEveryPort => "http_on_every_port",
            Shape::PortRanges => "port_ranges",
            Shape::ManyTargets => "many_targets",
        }
    }

    pub fn from_name(name: &str) -> Option<Shape> {
        Shape::ALL.into_iter().find(|s| s.name() == name)
    }

    /// `rules` rules of this shape as one multi-document YAML stream.
    /// `variant` renames one rule, so two variants have different versions.
    pub fn yaml(self, rules: usize, variant: u32) -> String {
        let mut out = String::with_capacity(rules * 120);
        if self == Shape::ManyTargets {
            for p in 0..rules.div_ceil(10) {
                header(&mut out, &format!("p{p}"), &target(p));
                for r in (p * 10)..((p + 1) * 10).min(rules) {
                    self.rule(&mut out, r, variant);
                }
            }
        } else {
            header(&mut out, "all", LOCAL);
            for r in 0..rules {
                self.rule(&mut out, r, variant);
            }
        }
        out
    }

    fn rule(self, out: &mut String, i: usize, variant: u32) {
        let name = if i == 0 {
            format!("r0-v{variant}")
        } else {
            format!("r{i}")
        };
        let action = if i % 10 == 3 { "deny" } else { "allow" };
        let _ = write!(out, "    - name: {name}\n      action: {action}\n");
        let (from, ports, path) = self.parts(i);
        let _ = writeln!(out, "      from: [{{{from}}}]");
        if let Some(ports) = ports {
            let _ = writeln!(out, "      ports: [{ports}]");
        }
        if let Some(path) = path {
            let _ = writeln!(out, "      http: [{{methods: [GET], paths: [\"{path}\"]}}]");
        }
    }

    /// Rule `i`'s peer, ports and HTTP path.
    fn parts(self, i: usize) -> (String, Option<String>, Option<String>) {
        let one_port = |i: usize| Some((1000 + i % 60_000).to_string());
        match self {
            Shape::DistinctPeers => (format!("identity: {}", peer(i)), Some("8080".into()), None),
            Shape::OnePeer => (format!("identity: {PEER}"), one_port(i), None),
            Shape::DistinctCidrs => {
                let ip = 0x0a00_0000u32 | (i as u32 & 0x00ff_ffff);
                (format!("cidr: {}/32", ipv4(ip)), Some("8080".into()), None)
            }
            Shape::OverlappingCidrs => {
                let len = 8 + (i % 25) as u32;
                let ip = 0x0a00_0000u32 | (spread(i) & 0x00ff_ffff);
                let net = ip & (u32::MAX << (32 - len));
                let port = (8000 + i % 100).to_string();
                (format!("cidr: {}/{len}", ipv4(net)), Some(port), None)
            }
            Shape::HttpPaths => (
                format!("identity: {PEER}"),
                Some("8080".into()),
                Some(format!("/api/item{i}/*")),
            ),
            Shape::HttpOnEveryPort if i.is_multiple_of(2) => (
                format!("identity: {PEER}"),
                None,
                Some(format!("/api/item{i}/*")),
            ),
            Shape::HttpOnEveryPort => (format!("identity: {PEER}"), one_port(i), None),
            Shape::PortRanges => {
                let lo = 1 + spread(i) as usize % 60_000;
                let hi = lo + spread(i + 1) as usize % 5_000;
                (
                    format!("identity: {}", peer(i % 1000)),
                    Some(format!("\"{lo}-{hi}\"")),
                    None,
                )
            }
            Shape::ManyTargets => (format!("identity: {}", peer(i + 7)), one_port(i), None),
        }
    }

    /// A request (local workload, peer, port, HTTP path) that an allow rule
    /// in the middle of the set matches.
    pub fn probe(self, rules: usize) -> Probe {
        // An allow rule: never i % 10 == 3; even, for the HTTP shape's halves.
        let i = rules / 2 / 10 * 10;
        let (from, ports, path) = self.parts(i);
        let local = match self {
            Shape::ManyTargets => target(i / 10),
            _ => LOCAL.to_owned(),
        };
        let peer = if let Some(id) = from.strip_prefix("identity: ") {
            ProbePeer::Identity(id.to_owned())
        } else {
            let net = from.strip_prefix("cidr: ").expect("identity or cidr");
            let ip = net.split('/').next().expect("a network");
            ProbePeer::Address(ip.to_owned())
        };
        let port = ports.map_or(8080, |p| {
            let p = p.trim_matches('"');
            p.split('-').next().unwrap().parse().expect("a port")
        });
        Probe {
            local,
            peer,
            port,
            path: path.map(|p| p.replace('*', "x")),
        }
    }
}

/// A request a shape's policy allows.
#[derive(Debug, Clone)]
pub struct Probe {
    pub local: String,
    pub peer: ProbePeer,
    pub port: u16,
    /// `GET` this path; `None`: an L4 connection.
    pub path: Option<String>,
}

#[derive(Debug, Clone)]
pub enum ProbePeer {
    Identity(String),
    Address(String),
}

fn header(out: &mut String, name: &str, target: &str) {
    let _ = write!(
        out,
        "---\napiVersion: palisade.dev/v1alpha1\nkind: SegmentationPolicy\n\
         metadata: {{name: {name}, namespace: shop}}\n\
         spec:\n  targets:\n    - identity: {target}\n  ingress:\n"
    );
}

fn peer(i: usize) -> String {
    format!("spiffe://cluster.local/ns/ns{}/sa/peer{i}", i % 100)
}

fn target(p: usize) -> String {
    format!("spiffe://cluster.local/ns/ns{}/sa/svc{p}", p % 100)
}

fn ipv4(ip: u32) -> std::net::Ipv4Addr {
    std::net::Ipv4Addr::from(ip)
}

/// A cheap, fixed scramble of `i`, so networks and ranges do not line up.
fn spread(i: usize) -> u32 {
    (i as u32).wrapping_mul(2_654_435_761).rotate_left(13)
}

#[cfg(test)]
mod tests {
    use super::*;
    use palisade_policy::{parse_documents, Direction};

    #[test]
    fn every_shape_parses_to_the_asked_number_of_rules() {
        for shape in Shape::ALL {
            let docs = parse_documents("shape.yaml", &shape.yaml(1000, 0))
                .unwrap_or_else(|e| panic!("{}: {e:?}", shape.name()));
            let rules: usize = docs
                .iter()
                .map(|d| d.rules(Direction::Ingress).map_or(0, <[_]>::len))
                .sum();
            assert_eq!(rules, 1000, "{}", shape.name());
        }
    }
}
