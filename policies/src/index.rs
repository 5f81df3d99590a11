//! The compiled index `decide()` walks: per direction, target identity,
//! namespace or glob; then peer identity, namespace, glob or CIDR; then a
//! port table. Every step is a hash lookup or a binary search, so a decision
//! costs the same however many rules there are.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;

use ipnet::IpNet;

use crate::decision::Peer;
use crate::model::{Action, Mode};
use crate::spiffe::SpiffeId;

/// "No rule" / "no policy" in the `u32` ordinal slots below.
pub(crate) const NONE: u32 = u32::MAX;

/// What the index needs to know about a rule to file it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RuleKind {
    pub action: Action,
    pub mode: Mode,
    pub has_http: bool,
}

/// The lowest-ordinal matching rules of each kind, for enforce-mode rules
/// only (`[0]`) and for all rules (`[1]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Best {
    pub deny: [u32; 2],
    pub allow: [u32; 2],
}

#[derive(Debug)]
struct Seg {
    best: Best,
    http_start: u32,
    http_end: u32,
}

/// Rules by port: `segs[i]` covers ports `starts[i]..starts[i + 1]`.
#[derive(Debug)]
pub(crate) struct PortTable {
    starts: Vec<u16>,
    segs: Vec<Seg>,
    /// Rules with `http` conditions, by segment, in ordinal order: they can
    /// only be resolved per request.
    http: Vec<u32>,
}

/// One rule applied to one port range.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Atom {
    pub lo: u16,
    pub hi: u16,
    pub rule: u32,
}

impl PortTable {
    pub fn lookup(&self, port: u16) -> (Best, &[u32]) {
        let i = self.starts.partition_point(|&s| s <= port) - 1;
        let seg = &self.segs[i];
        (
            seg.best,
            &self.http[seg.http_start as usize..seg.http_end as usize],
        )
    }

    /// Sweeps the range boundaries once, keeping the live rules of each kind
    /// in ordered multisets: O(n log n) even for many overlapping ranges.
    fn build(atoms: &[Atom], kinds: &[RuleKind]) -> PortTable {
        let mut starts: Vec<u16> = Vec::with_capacity(atoms.len() * 2 + 1);
        starts.push(0);
        for a in atoms {
            starts.push(a.lo);
            if a.hi < u16::MAX {
                starts.push(a.hi + 1);
            }
        }
        starts.sort_unstable();
        starts.dedup();
        let seg_of = |p: u16| starts.partition_point(|&s| s < p);
        let mut adds: Vec<Vec<u32>> = vec![Vec::new(); starts.len()];
        let mut removes: Vec<Vec<u32>> = vec![Vec::new(); starts.len()];
        for a in atoms {
            adds[seg_of(a.lo)].push(a.rule);
            if a.hi < u16::MAX {
                removes[seg_of(a.hi + 1)].push(a.rule);
            }
        }
        // live[0..4]: deny-enforce, deny-any, allow-enforce, allow-any; live[4]: http.
        let mut live: [BTreeMap<u32, u32>; 5] = Default::default();
        let mut segs = Vec::with_capacity(starts.len());
        let mut http = Vec::new();
        for i in 0..starts.len() {
            for (list, delta) in [(&adds[i], 1i64), (&removes[i], -1)] {
                for &rule in list {
                    for &set in sets_for(kinds[rule as usize]) {
                        let count = live[set].entry(rule).or_insert(0);
                        *count = (i64::from(*count) + delta) as u32;
                        if *count == 0 {
                            live[set].remove(&rule);
                        }
                    }
                }
            }
            let min = |set: usize| live[set].keys().next().copied().unwrap_or(NONE);
            let http_start = http.len() as u32;
            http.extend(live[4].keys().copied());
            segs.push(Seg {
                best: Best {
                    deny: [min(0), min(1)],
                    allow: [min(2), min(3)],
                },
                http_start,
                http_end: http.len() as u32,
            });
        }
        PortTable { starts, segs, http }
    }
}

fn sets_for(kind: RuleKind) -> &'static [usize] {
    match (kind.has_http, kind.action, kind.mode) {
        (true, _, _) => &[4],
        (false, Action::Deny, Mode::Enforce) => &[0, 1],
        (false, Action::Deny, Mode::Audit) => &[1],
        (false, Action::Allow, Mode::Enforce) => &[2, 3],
        (false, Action::Allow, Mode::Audit) => &[3],
    }
}

/// How a rule names a peer, as an index key.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) enum PeerKey {
    Exact(String),
    Namespace(String),
    Prefix(String),
    Cidr(Cidr),
    Any,
}

/// A network as an index key: both families in one `u128` space.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct Cidr {
    /// 0 for IPv4, 1 for IPv6.
    family: u8,
    len: u8,
    network: u128,
}

impl Cidr {
    pub fn from_net(net: &IpNet) -> Cidr {
        let (family, bits) = Cidr::family_and_bits(net.network());
        Cidr::new(family, bits, net.prefix_len())
    }

    fn family_and_bits(ip: IpAddr) -> (u8, u128) {
        match ip {
            IpAddr::V4(v4) => (0, u128::from(u32::from(v4))),
            IpAddr::V6(v6) => (1, u128::from(v6)),
        }
    }

    /// The network of `bits` with a `len`-bit prefix.
    fn new(family: u8, bits: u128, len: u8) -> Cidr {
        let width = if family == 0 { 32 } else { 128 };
        let host_bits = u32::from(width - len);
        let network = if host_bits >= 128 {
            0
        } else {
            bits >> host_bits << host_bits
        };
        Cidr {
            family,
            len,
            network,
        }
    }
}

/// How a policy names a target, as an index key.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) enum TargetKey {
    Exact(String),
    Namespace(String),
    Prefix(String),
}

#[derive(Debug, Default)]
pub(crate) struct PeerIndex {
    exact: HashMap<Box<str>, PortTable>,
    namespace: HashMap<Box<str>, PortTable>,
    prefix: PrefixMap<PortTable>,
    cidr: HashMap<Cidr, PortTable>,
    /// The prefix lengths present, per family: the only ones worth a lookup.
    cidr_lens: [Vec<u8>; 2],
    any: Option<PortTable>,
}

impl PeerIndex {
    /// Calls `f` with every port table whose peer key matches `peer`.
    pub fn for_each(&self, local: &SpiffeId, peer: Peer<'_>, mut f: impl FnMut(&PortTable)) {
        match peer {
            Peer::Identity(id) => {
                if let Some(t) = self.exact.get(id.as_str()) {
                    f(t);
                }
                if !self.namespace.is_empty() && id.trust_domain_str() == local.trust_domain_str() {
                    if let Some(t) = id.namespace().and_then(|ns| self.namespace.get(ns)) {
                        f(t);
                    }
                }
                self.prefix.for_each(id.as_str(), &mut f);
            }
            Peer::Address(ip) => {
                let (family, bits) = Cidr::family_and_bits(ip.to_canonical());
                for &len in &self.cidr_lens[family as usize] {
                    if let Some(t) = self.cidr.get(&Cidr::new(family, bits, len)) {
                        f(t);
                    }
                }
            }
        }
        if let Some(t) = &self.any {
            f(t);
        }
    }
}

/// String-prefix lookups (`spiffe://td/ns/shop/` globs) by the few prefix
/// lengths actually present.
#[derive(Debug)]
struct PrefixMap<T> {
    map: HashMap<Box<str>, T>,
    lens: Vec<usize>,
}

impl<T> Default for PrefixMap<T> {
    fn default() -> Self {
        PrefixMap {
            map: HashMap::new(),
            lens: Vec::new(),
        }
    }
}

impl<T> PrefixMap<T> {
    fn for_each(&self, s: &str, mut f: impl FnMut(&T)) {
        for &len in &self.lens {
            // Globs end in `/`, so a match must end on a segment boundary.
            if s.len() > len && s.as_bytes()[len - 1] == b'/' {
                if let Some(t) = self.map.get(&s[..len]) {
                    f(t);
                }
            }
        }
    }

    fn from_map(map: HashMap<Box<str>, T>) -> Self {
        let mut lens: Vec<usize> = map.keys().map(|k| k.len()).collect();
        lens.sort_unstable();
        lens.dedup();
        PrefixMap { map, lens }
    }
}

/// The rules of every policy that selects one target key.
#[derive(Debug)]
pub(crate) struct Slot {
    /// The first selecting policy: enforce-mode only (`[0]`), any (`[1]`).
    pub selected: [u32; 2],
    pub peers: PeerIndex,
}

/// One direction's index.
#[derive(Debug, Default)]
pub(crate) struct DirIndex {
    exact: HashMap<Box<str>, Slot>,
    namespace: HashMap<Box<str>, Slot>,
    prefix: PrefixMap<Slot>,
}

impl DirIndex {
    /// Calls `f` with every slot whose target key selects `local`.
    pub fn for_each(&self, local: &SpiffeId, mut f: impl FnMut(&Slot)) {
        if let Some(s) = self.exact.get(local.as_str()) {
            f(s);
        }
        if !self.namespace.is_empty() {
            if let Some(s) = local.namespace().and_then(|ns| self.namespace.get(ns)) {
                f(s);
            }
        }
        self.prefix.for_each(local.as_str(), f);
    }
}

/// Collects (target, peer, port range, rule) tuples, then freezes them.
#[derive(Default)]
pub(crate) struct DirBuilder {
    slots: HashMap<TargetKey, SlotBuilder>,
}

struct SlotBuilder {
    selected: [u32; 2],
    peers: HashMap<PeerKey, Vec<Atom>>,
}

impl DirBuilder {
    /// Records that `policy` (an ordinal; lower wins) selects `target`.
    pub fn select(&mut self, target: &TargetKey, policy: u32, mode: Mode) {
        let slot = self.slot(target);
        if mode == Mode::Enforce {
            slot.selected[0] = slot.selected[0].min(policy);
        }
        slot.selected[1] = slot.selected[1].min(policy);
    }

    pub fn add(&mut self, target: &TargetKey, peer: PeerKey, atom: Atom) {
        self.slot(target).peers.entry(peer).or_default().push(atom);
    }

    fn slot(&mut self, target: &TargetKey) -> &mut SlotBuilder {
        if !self.slots.contains_key(target) {
            self.slots.insert(
                target.clone(),
                SlotBuilder {
                    selected: [NONE; 2],
                    peers: HashMap::new(),
                },
            );
        }
        self.slots.get_mut(target).expect("inserted above")
    }

    pub fn build(self, kinds: &[RuleKind]) -> DirIndex {
        let mut exact = HashMap::new();
        let mut namespace = HashMap::new();
        let mut prefix = HashMap::new();
        for (key, sb) in self.slots {
            let slot = Slot {
                selected: sb.selected,
                peers: build_peers(sb.peers, kinds),
            };
            match key {
                TargetKey::Exact(s) => exact.insert(s.into_boxed_str(), slot),
                TargetKey::Namespace(s) => namespace.insert(s.into_boxed_str(), slot),
                TargetKey::Prefix(s) => prefix.insert(s.into_boxed_str(), slot),
            };
        }
        DirIndex {
            exact,
            namespace,
            prefix: PrefixMap::from_map(prefix),
        }
    }
}

fn build_peers(peers: HashMap<PeerKey, Vec<Atom>>, kinds: &[RuleKind]) -> PeerIndex {
    let mut idx = PeerIndex::default();
    let mut prefix = HashMap::new();
    for (key, atoms) in peers {
        let table = PortTable::build(&atoms, kinds);
        match key {
            PeerKey::Exact(s) => {
                idx.exact.insert(s.into_boxed_str(), table);
            }
            PeerKey::Namespace(s) => {
                idx.namespace.insert(s.into_boxed_str(), table);
            }
            PeerKey::Prefix(s) => {
                prefix.insert(s.into_boxed_str(), table);
            }
            PeerKey::Cidr(c) => {
                idx.cidr.insert(c, table);
                idx.cidr_lens[c.family as usize].push(c.len);
            }
            PeerKey::Any => idx.any = Some(table),
        }
    }
    idx.prefix = PrefixMap::from_map(prefix);
    for lens in &mut idx.cidr_lens {
        lens.sort_unstable();
        lens.dedup();
    }
    idx
}
