//! Warnings about allow rules that can never apply because a deny rule
//! matches everything they match (deny wins). Conservative: it only warns
//! when the cover is certain.

use std::collections::HashMap;

use ipnet::IpNet;

use crate::diag::Diagnostic;
use crate::http::path_matches;
use crate::model::{
    Action, Direction, HttpMatch, IdMatch, Mode, PathMatch, PeerMatch, PolicyDoc, PortRange, Rule,
    Target,
};

/// Bounds the checks per allow rule for pathological inputs (thousands of
/// deny rules on one workload, peer and port); real policies stay far below.
const MAX_CANDIDATES: usize = 32;

#[derive(Clone, Copy)]
struct Deny<'a> {
    doc: &'a PolicyDoc,
    rule: &'a Rule,
}

pub(crate) fn warnings(docs: &[PolicyDoc]) -> Vec<Diagnostic> {
    let mut out = Vec::new();
    for direction in Direction::ALL {
        let denies = DenyIndex::new(docs, direction);
        if denies.targets.is_empty() {
            continue;
        }
        for doc in docs {
            for rule in doc.rules(direction).unwrap_or(&[]) {
                if rule.action != Action::Allow {
                    continue;
                }
                let Some(d) = denies.shadowing(doc, rule) else {
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

/// Deny rules by target key, then by peer key, then by port, so an allow
/// rule meets only the denies that could cover its first target, peer and
/// port: linear in rules whatever their shape.
struct DenyIndex<'a> {
    targets: HashMap<Key<'a>, Bucket<'a>>,
    /// The lengths of the glob targets present.
    glob_lens: Vec<usize>,
}

/// A target or peer, as a key.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
enum Key<'a> {
    Exact(&'a str),
    Namespace(&'a str),
    Glob(&'a str),
    Cidr(IpNet),
    Any,
}

#[derive(Default)]
struct Bucket<'a> {
    peers: HashMap<Key<'a>, Ports<'a>>,
    glob_lens: Vec<usize>,
    cidr_lens: Vec<u8>,
    namespaces: bool,
}

/// Denies whose ports are all single ports, by port; the others.
#[derive(Default)]
struct Ports<'a> {
    single: HashMap<u16, Vec<Deny<'a>>>,
    wide: Vec<Deny<'a>>,
}

impl<'a> DenyIndex<'a> {
    fn new(docs: &'a [PolicyDoc], direction: Direction) -> Self {
        let mut idx = DenyIndex {
            targets: HashMap::new(),
            glob_lens: Vec::new(),
        };
        for doc in docs {
            for rule in doc
                .rules(direction)
                .unwrap_or(&[])
                .iter()
                .filter(|r| r.action == Action::Deny)
            {
                let d = Deny { doc, rule };
                for t in &doc.targets {
                    let tk = target_key(t);
                    if let Key::Glob(g) = tk {
                        insert_len(&mut idx.glob_lens, g.len());
                    }
                    let bucket = idx.targets.entry(tk).or_default();
                    for pk in peer_keys(rule.peers.as_deref()) {
                        match pk {
                            Key::Glob(g) => insert_len(&mut bucket.glob_lens, g.len()),
                            Key::Cidr(net) => insert_len(&mut bucket.cidr_lens, net.prefix_len()),
                            Key::Namespace(_) => bucket.namespaces = true,
                            Key::Exact(_) | Key::Any => {}
                        }
                        let ports = bucket.peers.entry(pk).or_default();
                        match rule.ports.as_deref() {
                            Some(rs) if rs.iter().all(|r| r.lo == r.hi) => {
                                for r in rs {
                                    ports.single.entry(r.lo).or_default().push(d);
                                }
                            }
                            _ => ports.wide.push(d),
                        }
                    }
                }
            }
        }
        idx
    }

    /// A deny rule that matches everything `allow` (of `doc`) matches.
    fn shadowing(&self, doc: &PolicyDoc, allow: &Rule) -> Option<Deny<'a>> {
        let port = allow.ports.as_deref().map_or(0, |rs| rs[0].lo);
        let mut budget = MAX_CANDIDATES;
        let mut found = None;
        let mut check = |list: &[Deny<'a>]| {
            for d in list.iter().take(budget) {
                budget -= 1;
                if shadows(d, doc, allow) {
                    found = Some(*d);
                    return true;
                }
            }
            false
        };
        for_each_cover(&doc.targets[0], &self.glob_lens, |tk| {
            let Some(bucket) = self.targets.get(&tk) else {
                return false;
            };
            bucket.for_each_peer_cover(allow.peers.as_deref(), |pk| {
                bucket.peers.get(&pk).is_some_and(|ports| {
                    ports.single.get(&port).is_some_and(|l| check(l)) || check(&ports.wide)
                })
            })
        });
        found
    }
}

impl Bucket<'_> {
    /// Calls `f` with every peer key that could cover the allow rule's
    /// first peer, until `f` returns true.
    fn for_each_peer_cover(
        &self,
        peers: Option<&[PeerMatch]>,
        mut f: impl FnMut(Key<'_>) -> bool,
    ) -> bool {
        let found = match peers.and_then(<[_]>::first) {
            None => false,
            Some(PeerMatch::Identity(m)) => {
                let ns = match m {
                    IdMatch::Exact(id) if self.namespaces => id.namespace(),
                    _ => None,
                };
                ns.is_some_and(|ns| f(Key::Namespace(ns)))
                    || for_each_id_cover(m, &self.glob_lens, &mut f)
            }
            Some(PeerMatch::Namespace(ns)) => f(Key::Namespace(ns)),
            Some(PeerMatch::Cidr(net)) => self.cidr_lens.iter().any(|&len| {
                len <= net.prefix_len()
                    && IpNet::new(net.addr(), len).is_ok_and(|n| f(Key::Cidr(n.trunc())))
            }),
        };
        found || f(Key::Any)
    }
}

/// Calls `f` with every target key that selects at least what `t` selects,
/// until `f` returns true.
fn for_each_cover(t: &Target, glob_lens: &[usize], mut f: impl FnMut(Key<'_>) -> bool) -> bool {
    match t {
        Target::Identity(m) => {
            let ns = match m {
                IdMatch::Exact(id) => id.namespace(),
                IdMatch::Prefix(_) => None,
            };
            ns.is_some_and(|ns| f(Key::Namespace(ns))) || for_each_id_cover(m, glob_lens, &mut f)
        }
        Target::Namespace(ns) => f(Key::Namespace(ns)),
    }
}

/// The identity keys (exact, or a glob of one of `glob_lens`) that match at
/// least every identity `m` matches.
fn for_each_id_cover(
    m: &IdMatch,
    glob_lens: &[usize],
    f: &mut impl FnMut(Key<'_>) -> bool,
) -> bool {
    let (s, strict) = match m {
        IdMatch::Exact(id) => {
            if f(Key::Exact(id.as_str())) {
                return true;
            }
            (id.as_str(), true)
        }
        IdMatch::Prefix(q) => (q.as_str(), false),
    };
    glob_lens.iter().any(|&len| {
        let fits = if strict {
            s.len() > len
        } else {
            s.len() >= len
        };
        // Globs end in `/`, so a cover ends on a segment boundary.
        fits && s.as_bytes()[len - 1] == b'/' && f(Key::Glob(&s[..len]))
    })
}

fn target_key(t: &Target) -> Key<'_> {
    match t {
        Target::Identity(m) => id_key(m),
        Target::Namespace(ns) => Key::Namespace(ns),
    }
}

fn peer_keys(peers: Option<&[PeerMatch]>) -> Vec<Key<'_>> {
    match peers {
        None => vec![Key::Any],
        Some(list) => list
            .iter()
            .map(|p| match p {
                PeerMatch::Identity(m) => id_key(m),
                PeerMatch::Namespace(ns) => Key::Namespace(ns),
                PeerMatch::Cidr(net) => Key::Cidr(net.trunc()),
            })
            .collect(),
    }
}

fn id_key(m: &IdMatch) -> Key<'_> {
    match m {
        IdMatch::Exact(id) => Key::Exact(id.as_str()),
        IdMatch::Prefix(p) => Key::Glob(p),
    }
}

fn insert_len<T: Ord + Copy>(lens: &mut Vec<T>, len: T) {
    if let Err(i) = lens.binary_search(&len) {
        lens.insert(i, len);
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

/// Every path `small` matches, `big` matches. A `{name}` segment of `small`
/// is matched as written: only a placeholder (or a prefix) of `big` covers
/// it, since no literal segment of a rule is written with braces.
fn path_covers(big: &PathMatch, small: &PathMatch) -> bool {
    (big.is_prefix() || !small.is_prefix()) && path_matches(big, small.base())
}
