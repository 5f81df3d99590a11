//! `baseline graph`: the learned service graph as a self-contained SVG.
//! Identities sit on a circle in name order, one edge per (source,
//! destination, port), so the same baselines always draw the same file.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::Write;

use palisade_policy::baseline::{diff, FlowKey, Snapshot};
use palisade_policy::{CompiledPolicy, Direction, Matched, Verdict};

/// An edge's color, from best to worst: an edge takes its worst flow's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum State {
    /// Every flow is allowed by the policy.
    Allowed,
    /// Learned, and no rule names it (or no policy was given).
    LearnedOnly,
    /// Some flows allowed, others not: the edge departs from the policy.
    Deviating,
    /// A deny rule matches a learned flow.
    Denied,
}

impl State {
    fn color(self) -> &'static str {
        match self {
            State::Allowed => "#2e7d32",
            State::LearnedOnly => "#1565c0",
            State::Deviating => "#ef6c00",
            State::Denied => "#c62828",
        }
    }

    fn name(self) -> &'static str {
        match self {
            State::Allowed => "allowed",
            State::LearnedOnly => "learned-only",
            State::Deviating => "deviating",
            State::Denied => "denied",
        }
    }

    const ALL: [State; 4] = [
        State::Allowed,
        State::LearnedOnly,
        State::Deviating,
        State::Denied,
    ];
}

#[derive(Default)]
struct Edge {
    routes: BTreeSet<(String, String)>,
    count: u64,
    allowed: usize,
    not_named: usize,
    denied: usize,
}

impl Edge {
    fn state(&self, with_policy: bool) -> State {
        if !with_policy {
            State::LearnedOnly
        } else if self.denied > 0 {
            State::Denied
        } else if self.not_named == 0 {
            State::Allowed
        } else if self.allowed == 0 {
            State::LearnedOnly
        } else {
            State::Deviating
        }
    }
}

/// Short node labels: a service account, or the last path segment.
fn label(node: &str) -> &str {
    node.rsplit('/')
        .find(|s| !s.is_empty())
        .filter(|_| node.starts_with("spiffe://"))
        .unwrap_or(node)
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// The SVG of `snaps`' flows, colored against `policy` when given.
pub(super) fn svg(snaps: &[Snapshot], policy: Option<&CompiledPolicy>) -> String {
    let mut nodes: BTreeSet<String> = BTreeSet::new();
    let mut edges: BTreeMap<(String, String, u16), Edge> = BTreeMap::new();
    for snap in snaps {
        let local = snap.identity.to_string();
        nodes.insert(local.clone());
        // The flows the policy does not allow, and whether a rule said so.
        let refused: HashMap<FlowKey, bool> = match policy {
            None => HashMap::new(),
            Some(p) => diff(snap, p)
                .unallowed
                .into_iter()
                .map(|u| {
                    let by_rule = matches!(u.decision.matched, Matched::Rule { .. })
                        && u.decision.verdict == Verdict::Deny;
                    (u.flow, by_rule)
                })
                .collect(),
        };
        for e in &snap.entries {
            let peer = e.flow.peer.to_string();
            nodes.insert(peer.clone());
            let (src, dst) = match e.flow.direction {
                Direction::Ingress => (peer, local.clone()),
                Direction::Egress => (local.clone(), peer),
            };
            let edge = edges.entry((src, dst, e.flow.port)).or_default();
            edge.count = edge.count.saturating_add(e.count);
            if let Some(r) = &e.flow.route {
                edge.routes.insert((r.method.clone(), r.template.clone()));
            }
            match refused.get(&e.flow) {
                None => edge.allowed += 1,
                Some(false) => edge.not_named += 1,
                Some(true) => edge.denied += 1,
            }
        }
    }

    let nodes: Vec<String> = nodes.into_iter().collect();
    let n = nodes.len().max(1);
    let radius = (60.0 * n as f64 / std::f64::consts::PI).max(160.0);
    let (cx, cy) = (radius + 200.0, radius + 120.0);
    let (width, height) = (2.0 * cx, 2.0 * cy + 40.0);
    let at: HashMap<&str, (f64, f64)> = nodes
        .iter()
        .enumerate()
        .map(|(i, name)| {
            let a = std::f64::consts::TAU * i as f64 / n as f64 - std::f64::consts::FRAC_PI_2;
            (
                name.as_str(),
                (cx + radius * a.cos(), cy + radius * a.sin()),
            )
        })
        .collect();

    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width:.0}" height="{height:.0}" viewBox="0 0 {width:.0} {height:.0}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(s, "<title>Palisade learned service graph</title>");
    let _ = writeln!(s, "<defs>");
    for st in State::ALL {
        let _ = writeln!(
            s,
            r#"<marker id="arrow-{}" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="8" markerHeight="8" orient="auto-start-reverse"><path d="M0,0 L10,5 L0,10 z" fill="{}"/></marker>"#,
            st.name(),
            st.color()
        );
    }
    let _ = writeln!(s, "</defs>");
    let _ = writeln!(s, r##"<rect width="100%" height="100%" fill="#ffffff"/>"##);

    // Parallel edges between one pair (ports, or both directions) fan out.
    let mut fan: HashMap<(&str, &str), usize> = HashMap::new();
    let node_r = 22.0;
    for ((src, dst, port), edge) in &edges {
        let (a, b) = (at[src.as_str()], at[dst.as_str()]);
        let pair = if src <= dst {
            (src.as_str(), dst.as_str())
        } else {
            (dst.as_str(), src.as_str())
        };
        let k = fan.entry(pair).or_default();
        let offset = 16.0 * (*k as f64) + 8.0;
        *k += 1;
        let (dx, dy) = (b.0 - a.0, b.1 - a.1);
        let len = (dx * dx + dy * dy).sqrt().max(1.0);
        let (ux, uy) = (dx / len, dy / len);
        // Offset to the edge's right, so a→b and b→a do not overlap.
        let (ox, oy) = (-uy * offset, ux * offset);
        let (x1, y1) = (a.0 + ux * node_r + ox, a.1 + uy * node_r + oy);
        let (x2, y2) = (b.0 - ux * node_r + ox, b.1 - uy * node_r + oy);
        let st = edge.state(policy.is_some());
        let text = match edge.routes.len() {
            0 => format!("{port}"),
            1 => format!("{port} · 1 route"),
            r => format!("{port} · {r} routes"),
        };
        let routes: Vec<String> = edge
            .routes
            .iter()
            .map(|(m, t)| format!("{m} {t}"))
            .collect();
        let _ = writeln!(
            s,
            r#"<g class="edge {st}"><title>{title}</title><line x1="{x1:.1}" y1="{y1:.1}" x2="{x2:.1}" y2="{y2:.1}" stroke="{color}" stroke-width="2" marker-end="url(#arrow-{st})"/><text x="{tx:.1}" y="{ty:.1}" fill="{color}" text-anchor="middle">{text}</text></g>"#,
            st = st.name(),
            color = st.color(),
            title = esc(&format!(
                "{src} -> {dst} port {port}: {} seen, {}{}",
                edge.count,
                st.name(),
                if routes.is_empty() {
                    String::new()
                } else {
                    format!("; {}", routes.join(", "))
                }
            )),
            tx = (x1 + x2) / 2.0 + ox * 0.6,
            ty = (y1 + y2) / 2.0 + oy * 0.6,
            text = esc(&text),
        );
    }
    for name in &nodes {
        let (x, y) = at[name.as_str()];
        let _ = writeln!(
            s,
            r##"<g class="node"><title>{id}</title><circle cx="{x:.1}" cy="{y:.1}" r="{node_r}" fill="#eceff1" stroke="#37474f" stroke-width="1.5"/><text x="{x:.1}" y="{ty:.1}" text-anchor="middle">{short}</text></g>"##,
            id = esc(name),
            ty = y + node_r + 16.0,
            short = esc(label(name)),
        );
    }
    for (i, st) in State::ALL.iter().enumerate() {
        let y = height - 24.0;
        let x = 20.0 + 130.0 * i as f64;
        let _ = writeln!(
            s,
            r#"<g class="legend"><line x1="{x:.1}" y1="{y:.1}" x2="{x2:.1}" y2="{y:.1}" stroke="{c}" stroke-width="3"/><text x="{tx:.1}" y="{ty:.1}">{name}</text></g>"#,
            x2 = x + 24.0,
            c = st.color(),
            tx = x + 30.0,
            ty = y + 4.0,
            name = st.name(),
        );
    }
    s.push_str("</svg>\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn edge(allowed: usize, not_named: usize, denied: usize) -> Edge {
        Edge {
            allowed,
            not_named,
            denied,
            ..Edge::default()
        }
    }

    #[test]
    fn an_edge_takes_its_worst_flows_color() {
        assert_eq!(edge(3, 0, 0).state(true), State::Allowed);
        assert_eq!(edge(0, 2, 0).state(true), State::LearnedOnly);
        assert_eq!(edge(1, 1, 0).state(true), State::Deviating);
        assert_eq!(edge(5, 1, 1).state(true), State::Denied);
        // Without a policy, nothing is known to be allowed.
        assert_eq!(edge(3, 0, 0).state(false), State::LearnedOnly);
    }

    #[test]
    fn node_labels_are_short_and_text_is_escaped() {
        assert_eq!(label("spiffe://cluster.local/ns/shop/sa/api"), "api");
        assert_eq!(label("10.0.0.0/24"), "10.0.0.0/24");
        assert_eq!(label("fd00::/64"), "fd00::/64");
        assert_eq!(esc(r#"a<b>&"c""#), "a&lt;b&gt;&amp;&quot;c&quot;");
    }

    #[test]
    fn no_baselines_draw_an_empty_graph() {
        let svg = svg(&[], None);
        assert!(
            svg.starts_with("<svg ") && svg.ends_with("</svg>\n"),
            "{svg}"
        );
        assert!(!svg.contains("class=\"node\""), "{svg}");
    }
}
