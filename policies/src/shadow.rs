//! Warnings about allow rules that can never apply because a deny rule
//! matches everything they match (deny wins). Conservative: it only warns
//! when the cover is certain.

use std::collections::HashMap;

use crate::diag::Diagnostic;
use crate::http::under_prefix;
use crate::model::{
    Action, Direction, HttpMatch, IdMatch, Mode, PathMatch, PeerMatch, PolicyDoc, PortRange, Rule,
    Target,
};

/// Bounds the pairwise check for pathological inputs (thousands of deny
/// rules on one workload); real policies stay far below it.
const MAX_CANDIDATES: usize = 256;

struct Deny<'a> {
    doc: &'a PolicyDoc,
    rule: &'a Rule,
}

pub(crate) fn warnings(docs: &[PolicyDoc]) -> Vec<Diagnostic> {
    let mut out = Vec::new();
    for direction in Direction::ALL {
        let denies = DenyIndex::new(docs, direction);
        if denies.is_empty() {
            continue;
        }
        for doc in docs {
            for rule in doc.rules(direction).unwrap_or(&[]) {
                if rule.action != Action::Allow {
                    continue;
                }
                let Some(d) = denies
                    .candidates(&doc.targets[0])
                    .take(MAX_CANDIDATES)
                    .find(|d| shadows(d, doc, rule))
                else {
                    continue;
                };
                out.push(Diagnostic::warning(
                    &doc.source,
                    rule.pos,
                    format!(
                        "{direction} allow rule `{}` never applies: deny rule `{}` of policy {} ({}:{}) matches everything it does, and deny wins",
                        rule.name,
                        d.rule.name,
                        d.doc.id(),
                        d.doc.source,
                        d.rule.pos
                    ),
                ));
            }
        }
    }
    out
}

/// Deny rules by the target keys of their policies.
struct DenyIndex<'a> {
    exact: HashMap<&'a str, Vec<Deny<'a>>>,
    namespace: HashMap<&'a str, Vec<Deny<'a>>>,
    prefix: Vec<(&'a str, Deny<'a>)>,
}

impl<'a> DenyIndex<'a> {
    fn new(docs: &'a [PolicyDoc], direction: Direction) -> Self {
        let mut idx = DenyIndex {
            exact: HashMap::new(),
            namespace: HashMap::new(),
            prefix: Vec::new(),
        };
        for doc in docs {
            for rule in doc
                .rules(direction)
                .unwrap_or(&[])
                .iter()
                .filter(|r| r.action == Action::Deny)
            {
                for t in &doc.targets {
                    let d = Deny { doc, rule };
                    match t {
                        Target::Identity(IdMatch::Exact(id)) => {
                            idx.exact.entry(id.as_str()).or_default().push(d)
                        }
                        Target::Identity(IdMatch::Prefix(p)) => idx.prefix.push((p, d)),
                        Target::Namespace(ns) => idx.namespace.entry(ns).or_default().push(d),
                    }
                }
            }
        }
        idx
    }

    fn is_empty(&self) -> bool {
        self.exact.is_empty() && self.namespace.is_empty() && self.prefix.is_empty()
    }

    /// Deny rules whose policy selects at least everything `t` selects.
    fn candidates<'s>(&'s self, t: &'s Target) -> impl Iterator<Item = &'s Deny<'a>> + 's {
        let (exact, ns): (Option<&str>, Option<&str>) = match t {
            Target::Identity(IdMatch::Exact(id)) => (Some(id.as_str()), id.namespace()),
            Target::Namespace(ns) => (None, Some(ns)),
            Target::Identity(IdMatch::Prefix(_)) => (None, None),
        };
        let from_exact = exact.and_then(|e| self.exact.get(e)).into_iter().flatten();
        let from_ns = ns.and_then(|n| self.namespace.get(n)).into_iter().flatten();
        let from_prefix = self.prefix.iter().filter(move |(p, _)| match t {
            Target::Identity(IdMatch::Exact(id)) => {
                id.as_str().len() > p.len() && id.as_str().starts_with(*p)
            }
            Target::Identity(IdMatch::Prefix(q)) => q.starts_with(*p),
            Target::Namespace(_) => false,
        });
        from_exact.chain(from_ns).chain(from_prefix.map(|(_, d)| d))
    }
}

fn shadows(d: &Deny<'_>, doc: &PolicyDoc, allow: &Rule) -> bool {
    let mode_ok = d.doc.mode == Mode::Enforce || doc.mode == Mode::Audit;
    mode_ok
        && doc
            .targets
            .iter()
            .all(|t| d.doc.targets.iter().any(|dt| target_covers(dt, t)))
        && peers_cover(d.rule.peers.as_deref(), allow.peers.as_deref())
        && ports_cover(d.rule.ports.as_deref(), allow.ports.as_deref())
        && http_covers(d.rule.http.as_deref(), allow.http.as_deref())
}

/// Whether `big` matches at least every identity `small` matches.
fn id_covers(big: &IdMatch, small: &IdMatch) -> bool {
    match (big, small) {
        (IdMatch::Exact(a), IdMatch::Exact(b)) => a == b,
        (IdMatch::Prefix(_), IdMatch::Exact(id)) => big.matches(id),
        (IdMatch::Prefix(p), IdMatch::Prefix(q)) => q.starts_with(p.as_str()),
        (IdMatch::Exact(_), IdMatch::Prefix(_)) => false,
    }
}

fn target_covers(big: &Target, small: &Target) -> bool {
    match (big, small) {
        (Target::Identity(a), Target::Identity(b)) => id_covers(a, b),
        (Target::Namespace(ns), Target::Identity(IdMatch::Exact(id))) => id.namespace() == Some(ns),
        (Target::Namespace(a), Target::Namespace(b)) => a == b,
        _ => false,
    }
}

fn peer_covers(big: &PeerMatch, small: &PeerMatch) -> bool {
    match (big, small) {
        (PeerMatch::Identity(a), PeerMatch::Identity(b)) => id_covers(a, b),
        (PeerMatch::Namespace(ns), PeerMatch::Identity(IdMatch::Exact(id))) => {
            id.namespace() == Some(ns)
        }
        (PeerMatch::Namespace(a), PeerMatch::Namespace(b)) => a == b,
        (PeerMatch::Cidr(a), PeerMatch::Cidr(b)) => a.contains(b),
        _ => false,
    }
}

fn peers_cover(deny: Option<&[PeerMatch]>, allow: Option<&[PeerMatch]>) -> bool {
    match (deny, allow) {
        (None, _) => true,
        (Some(_), None) => false,
        (Some(d), Some(a)) => a.iter().all(|p| d.iter().any(|q| peer_covers(q, p))),
    }
}

fn ports_cover(deny: Option<&[PortRange]>, allow: Option<&[PortRange]>) -> bool {
    let allow = allow.unwrap_or(&[PortRange::ALL]);
    let Some(deny) = deny else { return true };
    let mut merged: Vec<PortRange> = deny.to_vec();
    merged.sort();
    let mut union: Vec<PortRange> = Vec::new();
    for r in merged {
        match union.last_mut() {
            Some(last) if u32::from(r.lo) <= u32::from(last.hi) + 1 => last.hi = last.hi.max(r.hi),
            _ => union.push(r),
        }
    }
    allow
        .iter()
        .all(|a| union.iter().any(|u| u.lo <= a.lo && a.hi <= u.hi))
}

fn http_covers(deny: Option<&[HttpMatch]>, allow: Option<&[HttpMatch]>) -> bool {
    match (deny, allow) {
        (None, _) => true,
        (Some(_), None) => false,
        (Some(d), Some(a)) => a.iter().all(|m| d.iter().any(|n| http_entry_covers(n, m))),
    }
}

fn http_entry_covers(big: &HttpMatch, small: &HttpMatch) -> bool {
    let subset = |b: &[String], s: &[String]| {
        b.is_empty() || (!s.is_empty() && s.iter().all(|x| b.contains(x)))
    };
    let paths = big.paths.is_empty()
        || (!small.paths.is_empty()
            && small
                .paths
                .iter()
                .all(|s| big.paths.iter().any(|b| path_covers(b, s))));
    let hosts = big.hosts.is_empty()
        || (!small.hosts.is_empty() && small.hosts.iter().all(|h| big.hosts.contains(h)));
    subset(&big.methods, &small.methods) && paths && hosts
}

fn path_covers(big: &PathMatch, small: &PathMatch) -> bool {
    match (big, small) {
        (PathMatch::Exact(a), PathMatch::Exact(b)) => a == b,
        (PathMatch::Prefix(pre), PathMatch::Exact(p))
        | (PathMatch::Prefix(pre), PathMatch::Prefix(p)) => under_prefix(pre, p),
        (PathMatch::Exact(_), PathMatch::Prefix(_)) => false,
    }
}
