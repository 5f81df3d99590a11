//! The compiled index `decide()` walks: per direction, target identity,
//! namespace or glob; then peer identity, namespace, glob or CIDR; then a
//! port table. Every step is a hash lookup or a binary search, so a decision
//! costs the same however many rules there are. Building it is linear in
//! rules (n log n at worst), whatever their shape.

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

/// One rule applied to one port range.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Atom {
    pub lo: u16,
    pub hi: u16,
    pub rule: u32,
}

/// Every port table of one direction, in shared arrays: a peer costs a few
/// dozen bytes, not a handful of allocations.
#[derive(Debug, Default)]
struct Tables {
    heads: Vec<Head>,
    /// Segment starts: table `t`'s segment `i` covers ports
    /// `starts[s + i]..starts[s + i + 1]` (`s = heads[t].seg`).
    starts: Vec<u16>,
    best: Vec<Best>,
    /// Rules with `http` conditions, resolved per request. Each table that
    /// has any keeps a segment tree over its segments (node `n`'s rules are
    /// `http[nodes[h + n]..nodes[h + n + 1]]`), so a rule spanning many
    /// segments is stored O(log segments) times, not once per segment.
    nodes: Vec<u32>,
    http: Vec<u32>,
}

#[derive(Debug, Clone, Copy)]
struct Head {
    seg: u32,
    segs: u32,
    /// Offset of the tree in `nodes`; its leaf count (a power of two), or 0
    /// when the table has no HTTP rules.
    tree: u32,
    leaves: u32,
}

/// One peer key's rules by port.
#[derive(Clone, Copy)]
pub(crate) struct PortTable<'a> {
    starts: &'a [u16],
    best: &'a [Best],
    nodes: &'a [u32],
    http: &'a [u32],
    leaves: usize,
}

impl<'a> PortTable<'a> {
    /// The best L4 matches at `port`, and the HTTP rules whose ports
    /// include it (in no particular order).
    pub fn lookup(&self, port: u16) -> (Best, HttpRules<'a>) {
        let i = self.starts.partition_point(|&s| s <= port) - 1;
        let rules = if self.leaves == 0 {
            HttpRules::empty()
        } else {
            let node = self.leaves + i;
            HttpRules {
                nodes: self.nodes,
                http: self.http,
                node,
                cur: self.node_rules(node).iter(),
            }
        };
        (self.best[i], rules)
    }

    fn node_rules(&self, node: usize) -> &'a [u32] {
        &self.http[self.nodes[node] as usize..self.nodes[node + 1] as usize]
    }
}

/// The HTTP rules of one port: a walk from a segment's leaf to the root.
pub(crate) struct HttpRules<'a> {
    nodes: &'a [u32],
    http: &'a [u32],
    node: usize,
    cur: std::slice::Iter<'a, u32>,
}

impl HttpRules<'_> {
    fn empty() -> HttpRules<'static> {
        HttpRules {
            nodes: &[],
            http: &[],
            node: 0,
            cur: [].iter(),
        }
    }
}

impl<'a> Iterator for HttpRules<'a> {
    type Item = &'a u32;

    fn next(&mut self) -> Option<&'a u32> {
        loop {
            if let Some(r) = self.cur.next() {
                return Some(r);
            }
            if self.node <= 1 {
                return None;
            }
            self.node >>= 1;
            let (a, b) = (self.nodes[self.node], self.nodes[self.node + 1]);
            self.cur = self.http[a as usize..b as usize].iter();
        }
    }
}

impl Tables {
    fn get(&self, id: u32) -> PortTable<'_> {
        let h = self.heads[id as usize];
        let (seg, segs) = (h.seg as usize, h.segs as usize);
        let nodes = if h.leaves == 0 {
            &[][..]
        } else {
            &self.nodes[h.tree as usize..h.tree as usize + 2 * h.leaves as usize + 1]
        };
        PortTable {
            starts: &self.starts[seg..seg + segs],
            best: &self.best[seg..seg + segs],
            nodes,
            http: &self.http,
            leaves: h.leaves as usize,
        }
    }

    /// Sweeps the range boundaries once, keeping the live rules of each kind
    /// in ordered multisets: O(n log n) even for many overlapping ranges.
    fn build(&mut self, atoms: &[Atom], kinds: &[RuleKind], s: &mut Scratch) -> u32 {
        s.points.clear();
        s.points.push(0);
        for a in atoms {
            s.points.push(a.lo);
            if a.hi < u16::MAX {
                s.points.push(a.hi + 1);
            }
        }
        s.points.sort_unstable();
        s.points.dedup();
        let points = &s.points;
        let segs = points.len();
        let seg_of = |p: u16| points.partition_point(|&x| x < p) as u32;
        // The end of a range, as a segment index (exclusive).
        let end_of = |a: &Atom| {
            if a.hi == u16::MAX {
                segs as u32
            } else {
                seg_of(a.hi + 1)
            }
        };

        s.events.clear();
        s.tree.clear();
        let leaves = if atoms.iter().any(|a| kinds[a.rule as usize].has_http) {
            segs.next_power_of_two()
        } else {
            0
        };
        for a in atoms {
            let (lo, hi) = (seg_of(a.lo), end_of(a));
            if kinds[a.rule as usize].has_http {
                // The canonical cover of [lo, hi) in a bottom-up segment tree.
                let (mut l, mut r) = (lo as usize + leaves, hi as usize + leaves);
                while l < r {
                    if l & 1 == 1 {
                        s.tree.push((l as u32, a.rule));
                        l += 1;
                    }
                    if r & 1 == 1 {
                        r -= 1;
                        s.tree.push((r as u32, a.rule));
                    }
                    l >>= 1;
                    r >>= 1;
                }
            } else {
                s.events.push((lo, true, a.rule));
                if (hi as usize) < segs {
                    s.events.push((hi, false, a.rule));
                }
            }
        }

        s.events.sort_unstable_by_key(|e| e.0);
        let seg = self.starts.len() as u32;
        self.starts.extend_from_slice(points);
        let mut events = s.events.iter().peekable();
        for i in 0..segs as u32 {
            while let Some(&(_, add, rule)) = events.next_if(|e| e.0 == i) {
                for &set in sets_for(kinds[rule as usize]) {
                    let live = &mut s.live[set];
                    if add {
                        *live.entry(rule).or_insert(0) += 1;
                    } else if let Some(count) = live.get_mut(&rule) {
                        *count -= 1;
                        if *count == 0 {
                            live.remove(&rule);
                        }
                    }
                }
            }
            let min = |set: usize| s.live[set].keys().next().copied().unwrap_or(NONE);
            self.best.push(Best {
                deny: [min(0), min(1)],
                allow: [min(2), min(3)],
            });
        }
        for live in &mut s.live {
            live.clear();
        }

        let tree = self.nodes.len() as u32;
        if leaves > 0 {
            s.tree.sort_unstable();
            let mut pairs = s.tree.iter().peekable();
            for node in 0..2 * leaves as u32 {
                self.nodes.push(self.http.len() as u32);
                while let Some(&(_, rule)) = pairs.next_if(|p| p.0 == node) {
                    self.http.push(rule);
                }
            }
            self.nodes.push(self.http.len() as u32);
        }
        self.heads.push(Head {
            seg,
            segs: segs as u32,
            tree,
            leaves: leaves as u32,
        });
        (self.heads.len() - 1) as u32
    }
}

/// Buffers reused across every table built.
#[derive(Default)]
struct Scratch {
    points: Vec<u16>,
    /// (segment, added, rule) for L4 rules.
    events: Vec<(u32, bool, u32)>,
    /// (tree node, rule) for HTTP rules.
    tree: Vec<(u32, u32)>,
    /// deny-enforce, deny-any, allow-enforce, allow-any.
    live: [BTreeMap<u32, u32>; 4],
}

fn sets_for(kind: RuleKind) -> &'static [usize] {
    match (kind.action, kind.mode) {
        (Action::Deny, Mode::Enforce) => &[0, 1],
        (Action::Deny, Mode::Audit) => &[1],
        (Action::Allow, Mode::Enforce) => &[2, 3],
        (Action::Allow, Mode::Audit) => &[3],
    }
}

/// How a rule names a peer, as an index key (borrowed from the documents
/// while the index is built).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum PeerKey<'a> {
    Exact(&'a str),
    Namespace(&'a str),
    Prefix(&'a str),
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
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum TargetKey<'a> {
    Exact(&'a str),
    Namespace(&'a str),
    Prefix(&'a str),
}

/// Port tables (ids into the direction's `Tables`) by peer key.
#[derive(Debug, Default)]
struct PeerIndex {
    exact: HashMap<Box<str>, u32>,
    namespace: HashMap<Box<str>, u32>,
    prefix: PrefixMap<u32>,
    cidr: HashMap<Cidr, u32>,
    /// The prefix lengths present, per family: the only ones worth a lookup.
    cidr_lens: [Vec<u8>; 2],
    any: Option<u32>,
}

/// The rules of every policy that selects one target key.
#[derive(Debug)]
struct Slot {
    /// The first selecting policy: enforce-mode only (`[0]`), any (`[1]`).
    selected: [u32; 2],
    peers: PeerIndex,
}

/// One slot as `decide()` sees it.
pub(crate) struct SlotRef<'a> {
    pub selected: [u32; 2],
    pub peers: PeersRef<'a>,
}

pub(crate) struct PeersRef<'a> {
    index: &'a PeerIndex,
    tables: &'a Tables,
}

impl<'a> PeersRef<'a> {
    /// Calls `f` with every port table whose peer key matches `peer`.
    pub fn for_each(&self, local: &SpiffeId, peer: Peer<'_>, mut f: impl FnMut(PortTable<'a>)) {
        let idx = self.index;
        let mut f = |id: u32| f(self.tables.get(id));
        match peer {
            Peer::Identity(id) => {
                if let Some(&t) = idx.exact.get(id.as_str()) {
                    f(t);
                }
                if !idx.namespace.is_empty() && id.trust_domain_str() == local.trust_domain_str() {
                    if let Some(&t) = id.namespace().and_then(|ns| idx.namespace.get(ns)) {
                        f(t);
                    }
                }
                idx.prefix.for_each(id.as_str(), |&t| f(t));
            }
            Peer::Address(ip) => {
                let (family, bits) = Cidr::family_and_bits(ip.to_canonical());
                for &len in &idx.cidr_lens[family as usize] {
                    if let Some(&t) = idx.cidr.get(&Cidr::new(family, bits, len)) {
                        f(t);
                    }
                }
            }
        }
        if let Some(t) = idx.any {
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
    fn for_each<'m>(&'m self, s: &str, mut f: impl FnMut(&'m T)) {
        for &len in &self.lens {
            // Globs end in `/`, so a match must end on a segment boundary.
            if s.len() > len && s.as_bytes()[len - 1] == b'/' {
                if let Some(t) = self.map.get(&s[..len]) {
                    f(t);
                }
            }
        }
    }

    fn insert(&mut self, key: &str, value: T) {
        if !self.lens.contains(&key.len()) {
            self.lens.push(key.len());
            self.lens.sort_unstable();
        }
        self.map.insert(key.into(), value);
    }
}

/// One direction's index.
#[derive(Debug, Default)]
pub(crate) struct DirIndex {
    exact: HashMap<Box<str>, Slot>,
    namespace: HashMap<Box<str>, Slot>,
    prefix: PrefixMap<Slot>,
    tables: Tables,
}

impl DirIndex {
    /// Calls `f` with every slot whose target key selects `local`.
    pub fn for_each<'a>(&'a self, local: &SpiffeId, mut f: impl FnMut(SlotRef<'a>)) {
        let mut f = |slot: &'a Slot| {
            f(SlotRef {
                selected: slot.selected,
                peers: PeersRef {
                    index: &slot.peers,
                    tables: &self.tables,
                },
            })
        };
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
pub(crate) struct DirBuilder<'a> {
    targets: HashMap<TargetKey<'a>, u32>,
    /// Per target: its key and first selecting policies.
    slots: Vec<(TargetKey<'a>, [u32; 2])>,
    /// (target, peer) pairs, numbered in first-seen order.
    groups: HashMap<(u32, PeerKey<'a>), u32>,
    atoms: Vec<(u32, Atom)>,
}

impl<'a> DirBuilder<'a> {
    /// Records that `policy` (an ordinal; lower wins) selects `target`.
    pub fn select(&mut self, target: TargetKey<'a>, policy: u32, mode: Mode) {
        let slot = self.slot(target);
        let selected = &mut self.slots[slot as usize].1;
        if mode == Mode::Enforce {
            selected[0] = selected[0].min(policy);
        }
        selected[1] = selected[1].min(policy);
    }

    pub fn add(&mut self, target: TargetKey<'a>, peer: PeerKey<'a>, atom: Atom) {
        let slot = self.slot(target);
        let next = self.groups.len() as u32;
        let group = *self.groups.entry((slot, peer)).or_insert(next);
        self.atoms.push((group, atom));
    }

    fn slot(&mut self, target: TargetKey<'a>) -> u32 {
        let next = self.slots.len() as u32;
        *self.targets.entry(target).or_insert_with(|| {
            self.slots.push((target, [NONE; 2]));
            next
        })
    }

    pub fn build(self, kinds: &[RuleKind]) -> DirIndex {
        // Atoms by group: a counting sort, then one table per group.
        let mut start = vec![0u32; self.groups.len() + 1];
        for &(g, _) in &self.atoms {
            start[g as usize + 1] += 1;
        }
        for i in 1..start.len() {
            start[i] += start[i - 1];
        }
        let mut fill = start.clone();
        let mut sorted = vec![
            Atom {
                lo: 0,
                hi: 0,
                rule: 0
            };
            self.atoms.len()
        ];
        for &(g, a) in &self.atoms {
            sorted[fill[g as usize] as usize] = a;
            fill[g as usize] += 1;
        }
        drop(fill);
        drop(self.atoms);

        let mut tables = Tables::default();
        let mut scratch = Scratch::default();
        let mut peers: Vec<PeerIndex> = (0..self.slots.len())
            .map(|_| PeerIndex::default())
            .collect();
        let mut groups: Vec<_> = self.groups.into_iter().collect();
        groups.sort_unstable_by_key(|&(_, g)| g);
        for ((slot, key), g) in groups {
            let atoms = &sorted[start[g as usize] as usize..start[g as usize + 1] as usize];
            let t = tables.build(atoms, kinds, &mut scratch);
            let idx = &mut peers[slot as usize];
            match key {
                PeerKey::Exact(s) => {
                    idx.exact.insert(s.into(), t);
                }
                PeerKey::Namespace(s) => {
                    idx.namespace.insert(s.into(), t);
                }
                PeerKey::Prefix(s) => idx.prefix.insert(s, t),
                PeerKey::Cidr(c) => {
                    idx.cidr.insert(c, t);
                    let lens = &mut idx.cidr_lens[c.family as usize];
                    if !lens.contains(&c.len) {
                        lens.push(c.len);
                        lens.sort_unstable();
                    }
                }
                PeerKey::Any => idx.any = Some(t),
            }
        }

        let mut dir = DirIndex {
            tables,
            ..DirIndex::default()
        };
        for ((key, selected), peers) in self.slots.into_iter().zip(peers) {
            let slot = Slot { selected, peers };
            match key {
                TargetKey::Exact(s) => {
                    dir.exact.insert(s.into(), slot);
                }
                TargetKey::Namespace(s) => {
                    dir.namespace.insert(s.into(), slot);
                }
                TargetKey::Prefix(s) => dir.prefix.insert(s, slot),
            }
        }
        dir.tables.shrink_to_fit();
        dir
    }
}

impl Tables {
    fn shrink_to_fit(&mut self) {
        self.heads.shrink_to_fit();
        self.starts.shrink_to_fit();
        self.best.shrink_to_fit();
        self.nodes.shrink_to_fit();
        self.http.shrink_to_fit();
    }
}
