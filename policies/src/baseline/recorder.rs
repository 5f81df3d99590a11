//! The recorder: one workload's learned flows in a sharded map, and
//! `observe()`, the one check the proxy makes per connection and per request
//! after policy allowed it. A flow already known costs one shard lock and no
//! allocation; only new flows allocate.

use std::collections::hash_map::RandomState;
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use serde::Serialize;

use super::check::{Action, Check, Deviation, DeviationKind, EntryView, Outcome};
use super::key::{FlowKey, FlowRef, Hashes, Lookup};
use super::rate::RateProfile;
use super::settings::{BaselineMode, BaselineSettings};
use super::snapshot::{Entry, Snapshot, SnapshotError};
use crate::spiffe::SpiffeId;

/// Shards per table: enough that the proxy's worker threads rarely meet on
/// one lock, few enough that a snapshot's walk is cheap.
const SHARDS: usize = 64;

/// The learning status of a workload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// A new flow was learned within the last two buckets (or none yet).
    Learning,
    /// No new flow for two buckets.
    Stabilizing,
    /// No new flow for `stable_after`.
    Stable,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Learning => "learning",
            Status::Stabilizing => "stabilizing",
            Status::Stable => "stable",
        }
    }
}

/// A workload's baseline at a glance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Summary {
    pub identity: SpiffeId,
    pub status: Status,
    pub entries: usize,
    pub max_entries: usize,
    pub overflow: u64,
    /// When the last new flow was learned (unix ms).
    pub last_new_flow: Option<u64>,
}

#[derive(Debug, Clone, Copy)]
struct Stats {
    count: u64,
    first_seen: u64,
    last_seen: u64,
    rate: RateProfile,
}

struct Slot {
    key: Arc<FlowKey>,
    stats: Stats,
}

impl Slot {
    fn view(&self) -> EntryView {
        EntryView {
            flow: self.key.clone(),
            count: self.stats.count,
            first_seen: self.stats.first_seen,
            last_seen: self.stats.last_seen,
            rate_mean: self.stats.rate.mean,
            rate_stddev: self.stats.rate.stddev(),
        }
    }
}

/// Keys are already hashes: the inner maps use them as they are.
#[derive(Default)]
struct PassThrough(u64);

impl Hasher for PassThrough {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

/// A sharded map from a 64-bit hash to the values with that hash (more than
/// one only on a collision; values are compared in full).
struct Table<V> {
    shards: Box<[Mutex<Shard<V>>]>,
}

type Shard<V> = HashMap<u64, Vec<V>, BuildHasherDefault<PassThrough>>;

impl<V> Table<V> {
    fn new() -> Self {
        Table {
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
        }
    }

    fn lock(&self, hash: u64) -> MutexGuard<'_, Shard<V>> {
        // The high bits pick the shard; the map uses the whole hash.
        let shard = (hash >> 58) as usize % SHARDS;
        self.shards[shard]
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

/// One workload's baseline: the recorder the proxy shares between its
/// connections (behind an `Arc`).
pub struct Baseline {
    identity: SpiffeId,
    settings: BaselineSettings,
    hasher: RandomState,
    flows: Table<Slot>,
    /// The first flow learned with each (direction, peer), and with each
    /// (direction, peer, port, protocol): what makes a new flow a new peer,
    /// a new port or a new route.
    peers: Table<Arc<FlowKey>>,
    ports: Table<Arc<FlowKey>>,
    entries: AtomicUsize,
    overflow: AtomicU64,
    /// When the last new flow was learned (unix ms); meaningful once
    /// `entries > 0`.
    last_new_flow: AtomicU64,
}

impl std::fmt::Debug for Baseline {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Baseline")
            .field("identity", &self.identity)
            .field("entries", &self.len())
            .finish_non_exhaustive()
    }
}

impl Baseline {
    /// An empty baseline for `identity`. `settings` should be validated.
    pub fn new(identity: SpiffeId, settings: BaselineSettings) -> Self {
        Baseline {
            identity,
            settings,
            hasher: RandomState::new(),
            flows: Table::new(),
            peers: Table::new(),
            ports: Table::new(),
            entries: AtomicUsize::new(0),
            overflow: AtomicU64::new(0),
            last_new_flow: AtomicU64::new(0),
        }
    }

    pub fn identity(&self) -> &SpiffeId {
        &self.identity
    }

    pub fn settings(&self) -> &BaselineSettings {
        &self.settings
    }

    /// The number of learned flows (`baseline_entries`).
    pub fn len(&self) -> usize {
        self.entries.load(Ordering::Relaxed)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Observations of new flows not learned because `max_entries` was
    /// reached (each connection or request counts).
    pub fn overflow_total(&self) -> u64 {
        self.overflow.load(Ordering::Relaxed)
    }

    /// `learning` until the first flow and for two buckets after each new
    /// one, `stabilizing` after that, `stable` after `stable_after`.
    pub fn status(&self, now: u64) -> Status {
        if self.is_empty() {
            return Status::Learning;
        }
        let quiet = now.saturating_sub(self.last_new_flow.load(Ordering::Relaxed));
        if quiet >= self.settings.stable_after_ms() {
            Status::Stable
        } else if quiet >= 2 * self.settings.bucket_ms() {
            Status::Stabilizing
        } else {
            Status::Learning
        }
    }

    /// Status and counts, as `/config_dump` and the metrics show them.
    pub fn summary(&self, now: u64) -> Summary {
        Summary {
            identity: self.identity.clone(),
            status: self.status(now),
            entries: self.len(),
            max_entries: self.settings.max_entries,
            overflow: self.overflow_total(),
            last_new_flow: (!self.is_empty()).then(|| self.last_new_flow.load(Ordering::Relaxed)),
        }
    }

    /// Whether a workload in `mode` should now move from `learn` to
    /// `monitor`: `auto_promote` is set and the workload is stable.
    pub fn should_promote(&self, mode: BaselineMode, now: u64) -> bool {
        mode == BaselineMode::Learn
            && self.settings.auto_promote
            && self.status(now) == Status::Stable
    }

    /// Records and checks one connection (`flow.http == None`) or request
    /// that policy allowed, at `now` (unix ms), in `mode`.
    pub fn observe(&self, flow: &FlowRef<'_>, mode: BaselineMode, now: u64) -> Check {
        if mode == BaselineMode::Off {
            return Check::pass(Outcome::Off);
        }
        let look = Lookup::of_ref(flow, &self.settings);
        let h = look.hashes(&self.hasher);
        if let Some(check) = self.observe_known(&look, h.flow, mode, now) {
            return check;
        }
        match mode {
            BaselineMode::Learn => self.learn(&look, h, || flow.to_key(&self.settings), now),
            _ => self.deviation(&look, &h, mode),
        }
    }

    /// Updates a known flow's figures; `None` if the flow is not known.
    fn observe_known(
        &self,
        look: &Lookup<'_>,
        hash: u64,
        mode: BaselineMode,
        now: u64,
    ) -> Option<Check> {
        let bucket_ms = self.settings.bucket_ms();
        let b = now / bucket_ms;
        let mut shard = self.flows.lock(hash);
        let slot = shard
            .get_mut(&hash)?
            .iter_mut()
            .find(|s| look.same_flow(&s.key))?;
        let st = &mut slot.stats;
        st.count = st.count.saturating_add(1);
        st.last_seen = st.last_seen.max(now);
        // Learning takes a legitimate rise in load as it comes; afterwards a
        // burst is learned only up to the ceiling.
        let clamp = mode != BaselineMode::Learn;
        let spike = st.rate.record(b, &self.settings.rate_spike, clamp);
        let Some(excess) = spike.filter(|_| mode != BaselineMode::Learn) else {
            return Some(Check::pass(Outcome::Known));
        };
        let action = match mode {
            BaselineMode::Protect => Action::Throttle {
                retry_after_ms: (b + 1) * bucket_ms - now,
            },
            _ => Action::Pass,
        };
        Some(Check {
            outcome: Outcome::Deviation(Deviation {
                kind: DeviationKind::RateSpike,
                compared: Some(slot.view()),
                rate: Some(excess),
            }),
            action,
        })
    }

    /// Learns a new flow (or finds it learned meanwhile), within the cap.
    fn learn(
        &self,
        look: &Lookup<'_>,
        h: Hashes,
        key: impl FnOnce() -> FlowKey,
        now: u64,
    ) -> Check {
        let b = now / self.settings.bucket_ms();
        let mut shard = self.flows.lock(h.flow);
        let known = shard
            .get_mut(&h.flow)
            .and_then(|same| same.iter_mut().find(|s| look.same_flow(&s.key)));
        if let Some(slot) = known {
            // Learned by another connection since `observe_known` looked.
            slot.stats.count = slot.stats.count.saturating_add(1);
            slot.stats.last_seen = slot.stats.last_seen.max(now);
            slot.stats.rate.record(b, &self.settings.rate_spike, false);
            return Check::pass(Outcome::Known);
        }
        // Nothing is stored for a flow past the cap, not even its hash.
        if !self.reserve() {
            return Check::pass(Outcome::Overflow);
        }
        let key = Arc::new(key());
        let mut rate = RateProfile::new(b);
        rate.record(b, &self.settings.rate_spike, false);
        shard.entry(h.flow).or_default().push(Slot {
            key: key.clone(),
            stats: Stats {
                count: 1,
                first_seen: now,
                last_seen: now,
                rate,
            },
        });
        drop(shard);
        self.index(&key, h);
        self.last_new_flow.fetch_max(now, Ordering::Relaxed);
        Check::pass(Outcome::Learned)
    }

    /// Takes one of `max_entries`, or counts an overflow.
    fn reserve(&self) -> bool {
        let max = self.settings.max_entries;
        let ok = self
            .entries
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                (n < max).then_some(n + 1)
            })
            .is_ok();
        if !ok {
            self.overflow.fetch_add(1, Ordering::Relaxed);
        }
        ok
    }

    fn index(&self, key: &Arc<FlowKey>, h: Hashes) {
        let look = Lookup::of_key(key);
        let mut peers = self.peers.lock(h.peer);
        let list = peers.entry(h.peer).or_default();
        if !list.iter().any(|k| look.same_peer(k)) {
            list.push(key.clone());
        }
        drop(peers);
        let mut ports = self.ports.lock(h.port);
        let list = ports.entry(h.port).or_default();
        if !list.iter().any(|k| look.same_port(k)) {
            list.push(key.clone());
        }
    }

    /// A never-seen flow in monitor or protect mode.
    fn deviation(&self, look: &Lookup<'_>, h: &Hashes, mode: BaselineMode) -> Check {
        let find = |table: &Table<Arc<FlowKey>>, hash: u64, same: &dyn Fn(&FlowKey) -> bool| {
            let shard = table.lock(hash);
            shard
                .get(&hash)
                .and_then(|l| l.iter().find(|k| same(k)).cloned())
        };
        let peer = find(&self.peers, h.peer, &|k| look.same_peer(k));
        let port = peer
            .as_ref()
            .and_then(|_| find(&self.ports, h.port, &|k| look.same_port(k)));
        let (kind, compared) = match (peer, port) {
            (None, _) => (DeviationKind::NewPeer, None),
            (Some(p), None) => (DeviationKind::NewPort, Some(p)),
            // A connection on a port whose requests were learned is known:
            // requests never come without one.
            (Some(_), Some(_)) if look.route.is_none() => return Check::pass(Outcome::Known),
            (Some(_), Some(p)) => (DeviationKind::NewRoute, Some(p)),
        };
        let action = match mode {
            BaselineMode::Protect => Action::Block,
            _ => Action::Pass,
        };
        Check {
            outcome: Outcome::Deviation(Deviation {
                kind,
                compared: compared.and_then(|k| self.view(&k)),
                rate: None,
            }),
            action,
        }
    }

    /// The current figures of a learned flow.
    pub fn view(&self, key: &FlowKey) -> Option<EntryView> {
        let look = Lookup::of_key(key);
        let h = look.hashes(&self.hasher);
        let shard = self.flows.lock(h.flow);
        shard
            .get(&h.flow)?
            .iter()
            .find(|s| look.same_flow(&s.key))
            .map(Slot::view)
    }

    /// Every learned flow, sorted, as a snapshot taken at `now`.
    pub fn snapshot(&self, now: u64) -> Snapshot {
        let mut entries = Vec::with_capacity(self.len());
        for shard in self.flows.shards.iter() {
            let shard = shard.lock().unwrap_or_else(PoisonError::into_inner);
            entries.extend(shard.values().flatten().map(|s| Entry {
                flow: FlowKey::clone(&s.key),
                count: s.stats.count,
                first_seen: s.stats.first_seen,
                last_seen: s.stats.last_seen,
                rate: s.stats.rate,
            }));
        }
        entries.sort_by(|a, b| a.flow.cmp(&b.flow));
        Snapshot {
            version: super::snapshot::SNAPSHOT_VERSION,
            identity: self.identity.clone(),
            taken_at: now,
            bucket_ms: self.settings.bucket_ms(),
            last_new_flow: (!self.is_empty()).then(|| self.last_new_flow.load(Ordering::Relaxed)),
            overflow: self.overflow_total(),
            promoted_at: None,
            entries,
        }
    }

    /// Merges a snapshot in: this workload's own, read back after a restart,
    /// or one learned by the same service elsewhere. Entries add up as in
    /// `Snapshot::merge`; new ones are learned within `max_entries` (the
    /// rest are counted as overflow). Rate profiles learned with another
    /// bucket length are not comparable and start afresh. Returns the
    /// number of entries that did not fit; a snapshot of another identity
    /// is refused.
    pub fn merge(&self, snap: &Snapshot) -> Result<u64, SnapshotError> {
        if snap.identity != self.identity {
            return Err(SnapshotError::OtherIdentity {
                ours: self.identity.clone(),
                theirs: snap.identity.clone(),
            });
        }
        let same_bucket = snap.bucket_ms == self.settings.bucket_ms();
        let mut dropped = 0;
        for e in &snap.entries {
            let look = Lookup::of_key(&e.flow);
            let h = look.hashes(&self.hasher);
            let mut rate = e.rate;
            if !same_bucket {
                rate = RateProfile::new(e.last_seen / self.settings.bucket_ms());
            }
            let mut shard = self.flows.lock(h.flow);
            let known = shard
                .get_mut(&h.flow)
                .and_then(|same| same.iter_mut().find(|s| look.same_flow(&s.key)));
            if let Some(slot) = known {
                let st = &mut slot.stats;
                st.count = st.count.saturating_add(e.count);
                st.first_seen = st.first_seen.min(e.first_seen);
                st.last_seen = st.last_seen.max(e.last_seen);
                st.rate.merge(&rate);
                continue;
            }
            if !self.reserve() {
                dropped += 1;
                continue;
            }
            let key = Arc::new(e.flow.clone());
            shard.entry(h.flow).or_default().push(Slot {
                key: key.clone(),
                stats: Stats {
                    count: e.count,
                    first_seen: e.first_seen,
                    last_seen: e.last_seen,
                    rate,
                },
            });
            drop(shard);
            self.index(&key, h);
        }
        // A snapshot that does not say when it last learned a flow: its
        // newest first sighting.
        let newest = snap.entries.iter().map(|e| e.first_seen).max();
        if let Some(t) = snap.last_new_flow.or(newest) {
            self.last_new_flow.fetch_max(t, Ordering::Relaxed);
        }
        Ok(dropped)
    }
}

// The proxy shares one recorder across its worker threads.
const _: fn() = || {
    fn is_send_sync<T: Send + Sync>() {}
    is_send_sync::<Baseline>();
};
