//! Security events for a SIEM: policy denials and baseline deviations as OCSF
//! JSON lines, rate-limited per flow and fanned out to the configured sinks
//! through bounded queues, so the hot path never blocks on a slow collector.

mod config;
mod limit;
pub mod ocsf;
mod sink;

use std::hash::{BuildHasher, Hash, Hasher, RandomState};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use palisade_policy::Matched;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use serde::Serialize;
use tokio::sync::{mpsc, oneshot};

use crate::identity::{ControlPlane, CredentialsCell};
pub use config::{EventsConfig, EventsError, HttpFormat, SinkConfig};
pub use limit::Suppressed;
use palisade_policy::Direction;
use sink::{Msg, Record};

/// How the `control_plane` sink reaches the collector: the proxy's
/// control-plane client and its live SVID.
#[derive(Clone)]
pub struct ControlPlaneLink {
    pub cp: Arc<ControlPlane>,
    pub creds: CredentialsCell,
}

// ---- what the proxy reports ----

/// One side of a flow.
#[derive(Debug, Clone, Copy)]
pub struct Endpoint<'a> {
    pub addr: SocketAddr,
    /// The SPIFFE ID, when this side proved one.
    pub id: Option<&'a str>,
}

/// The request of an HTTP flow. For findings, `path` is the learned template.
#[derive(Debug, Clone, Copy)]
pub struct HttpFlow<'a> {
    pub method: &'a str,
    pub path: &'a str,
}

#[derive(Debug, Clone, Copy)]
pub struct Flow<'a> {
    pub direction: Direction,
    pub src: Endpoint<'a>,
    pub dst: Endpoint<'a>,
    pub http: Option<HttpFlow<'a>>,
}

/// A connection or request that policy denied.
#[derive(Debug, Clone, Copy)]
pub struct Denial<'a> {
    pub flow: Flow<'a>,
    /// The rule, or the default, that denied.
    pub matched: &'a Matched,
    /// The status answered to an HTTP request (403), if any.
    pub http_status: Option<u16>,
    /// An open connection closed because a reloaded policy denies it, not
    /// a connection or request refused as it came.
    pub revoked: bool,
}

/// What kind of deviation from the learned baseline.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FindingKind {
    NewPeer,
    NewPort,
    NewRoute,
    RateSpike,
}

impl FindingKind {
    /// The stable type in `finding_info.types`.
    pub fn as_str(self) -> &'static str {
        match self {
            FindingKind::NewPeer => "baseline.new_peer",
            FindingKind::NewPort => "baseline.new_port",
            FindingKind::NewRoute => "baseline.new_route",
            FindingKind::RateSpike => "baseline.rate_spike",
        }
    }
}

/// The baseline mode a finding was raised in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FindingMode {
    Monitor,
    Protect,
}

impl FindingMode {
    pub fn as_str(self) -> &'static str {
        match self {
            FindingMode::Monitor => "monitor",
            FindingMode::Protect => "protect",
        }
    }
}

/// What the proxy did with the deviating traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FindingAction {
    Allowed,
    Blocked,
    Throttled,
}

impl FindingAction {
    pub fn as_str(self) -> &'static str {
        match self {
            FindingAction::Allowed => "allowed",
            FindingAction::Blocked => "blocked",
            FindingAction::Throttled => "throttled",
        }
    }
}

/// The learned entry a flow was compared with.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct BaselineEntry {
    pub count: u64,
    /// Milliseconds since the Unix epoch.
    pub first_seen: i64,
    pub last_seen: i64,
    /// Requests per bucket: the learned mean and standard deviation.
    pub rate_mean: f64,
    pub rate_stddev: f64,
}

/// A deviation from the learned baseline.
#[derive(Debug, Clone)]
pub struct Finding<'a> {
    pub kind: FindingKind,
    pub flow: Flow<'a>,
    /// The closest learned entry (for a rate spike, the flow's own); `None`
    /// when the baseline has nothing for it.
    pub baseline: Option<BaselineEntry>,
    /// Requests per bucket observed, for a rate spike.
    pub observed_rate: Option<f64>,
    pub mode: FindingMode,
    pub action: FindingAction,
}

// ---- metrics ----

/// Event kinds, the `kind` label of the emitted and suppressed counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Kind {
    Denied,
    Finding(FindingKind),
}

const KINDS: [Kind; 5] = [
    Kind::Denied,
    Kind::Finding(FindingKind::NewPeer),
    Kind::Finding(FindingKind::NewPort),
    Kind::Finding(FindingKind::NewRoute),
    Kind::Finding(FindingKind::RateSpike),
];

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Denied => "denied",
            Kind::Finding(k) => k.as_str(),
        }
    }

    fn index(self) -> usize {
        match self {
            Kind::Denied => 0,
            Kind::Finding(FindingKind::NewPeer) => 1,
            Kind::Finding(FindingKind::NewPort) => 2,
            Kind::Finding(FindingKind::NewRoute) => 3,
            Kind::Finding(FindingKind::RateSpike) => 4,
        }
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabels {
    kind: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SuppressedLabels {
    kind: &'static str,
    reason: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SinkLabels {
    sink: &'static str,
}

/// Counter handles looked up once at start, so emitting costs no label
/// lookup and no allocation.
struct Counters {
    emitted: [Counter; 5],
    /// [kind][duplicate, rate_limit]
    suppressed: [[Counter; 2]; 5],
}

// ---- the emitter ----

/// Hands events to the sinks. Cheap to clone; a disabled emitter (no sinks)
/// does nothing at all.
#[derive(Clone, Default)]
pub struct Emitter {
    inner: Option<Arc<Inner>>,
}

struct Inner {
    limiter: limit::Limiter,
    hasher: RandomState,
    counters: Counters,
    sinks: Vec<SinkHandle>,
    /// Random per process, so event IDs from several proxies do not collide.
    uid_prefix: u64,
    seq: AtomicU64,
}

struct SinkHandle {
    tx: mpsc::Sender<Msg>,
    dropped: Counter,
}

impl Emitter {
    /// Validates the config, registers the `events_*` metrics and starts one
    /// writer task per sink. `control_plane` is needed only by a
    /// `control_plane` sink. Must run inside the Tokio runtime.
    pub fn start(
        cfg: &EventsConfig,
        registry: &mut Registry,
        control_plane: Option<ControlPlaneLink>,
    ) -> Result<Emitter, EventsError> {
        if cfg.queue == 0 {
            return Err(EventsError::EmptyQueue);
        }
        let writers = cfg
            .sinks
            .iter()
            .map(|s| sink::Writer::open(s, control_plane.as_ref()))
            .collect::<Result<Vec<_>, _>>()?;

        let reg = registry.sub_registry_with_prefix("events");
        let emitted = Family::<KindLabels, Counter>::default();
        let suppressed = Family::<SuppressedLabels, Counter>::default();
        let dropped = Family::<SinkLabels, Counter>::default();
        let sent = Family::<SinkLabels, Counter>::default();
        let errors = Family::<SinkLabels, Counter>::default();
        reg.register(
            "emitted",
            "Security events handed to the sinks, by kind",
            emitted.clone(),
        );
        reg.register(
            "suppressed",
            "Security events not emitted, by kind and reason (duplicate, rate_limit)",
            suppressed.clone(),
        );
        reg.register(
            "dropped",
            "Security events lost by a sink: its queue was full or delivery gave up",
            dropped.clone(),
        );
        reg.register("sent", "Security events delivered by a sink", sent.clone());
        reg.register(
            "sink_errors",
            "Failed writes, POSTs or connections of a sink",
            errors.clone(),
        );
        let counters = Counters {
            emitted: KINDS.map(|k| emitted.get_or_create_owned(&KindLabels { kind: k.as_str() })),
            suppressed: KINDS.map(|k| {
                [Suppressed::Duplicate, Suppressed::RateLimit].map(|r| {
                    suppressed.get_or_create_owned(&SuppressedLabels {
                        kind: k.as_str(),
                        reason: r.as_str(),
                    })
                })
            }),
        };
        if writers.is_empty() {
            return Ok(Emitter::default());
        }

        let mut sinks = Vec::with_capacity(writers.len());
        for w in writers {
            let labels = SinkLabels { sink: w.label() };
            let (tx, rx) = mpsc::channel(cfg.queue);
            let m = sink::SinkMetrics {
                sent: sent.get_or_create_owned(&labels),
                errors: errors.get_or_create_owned(&labels),
                dropped: dropped.get_or_create_owned(&labels),
            };
            sinks.push(SinkHandle {
                tx,
                dropped: m.dropped.clone(),
            });
            tokio::spawn(w.run(rx, m));
        }
        Ok(Emitter {
            inner: Some(Arc::new(Inner {
                limiter: limit::Limiter::new(cfg.dedup_flows, cfg.dedup_window, cfg.max_per_second),
                hasher: RandomState::new(),
                counters,
                sinks,
                uid_prefix: rand::random(),
                seq: AtomicU64::new(0),
            })),
        })
    }

    /// Whether any sink is configured.
    pub fn is_enabled(&self) -> bool {
        self.inner.is_some()
    }

    /// Reports a policy denial. Never blocks; allocates only when the event
    /// is actually emitted.
    pub fn denied(&self, d: &Denial<'_>) {
        if let Some(inner) = &self.inner {
            // A reload closing open connections is not a duplicate of the
            // same flow refused as it came.
            let key = inner.flow_hash(Kind::Denied, d.revoked, &d.flow);
            inner.emit(Kind::Denied, key, |uid, time| ocsf::denial(d, uid, time));
        }
    }

    /// Reports a baseline deviation. Never blocks; allocates only when the
    /// event is actually emitted.
    pub fn finding(&self, f: &Finding<'_>) {
        if let Some(inner) = &self.inner {
            let kind = Kind::Finding(f.kind);
            let key = inner.flow_hash(kind, false, &f.flow);
            inner.emit(kind, key, |uid, time| ocsf::finding(f, uid, time));
        }
    }

    /// Waits until every sink has written (or given up on) what was queued
    /// before the call, for at most `within`. For drain and for tests.
    pub async fn flush(&self, within: Duration) {
        let Some(inner) = &self.inner else { return };
        let acks = inner.sinks.iter().map(|s| async move {
            let (tx, rx) = oneshot::channel();
            if s.tx.send(Msg::Flush(tx)).await.is_ok() {
                let _ = rx.await;
            }
        });
        let _ = tokio::time::timeout(within, futures_util::future::join_all(acks)).await;
    }
}

impl Inner {
    /// Emits unless the limiter holds back `key` (the flow's hash).
    fn emit(&self, kind: Kind, key: u64, build: impl FnOnce(&str, i64) -> String) {
        if let Err(why) = self.limiter.admit(key) {
            self.counters.suppressed[kind.index()][why as usize].inc();
            return;
        }
        self.counters.emitted[kind.index()].inc();
        let time = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64);
        let seq = self.seq.fetch_add(1, Ordering::Relaxed);
        let uid = format!("{:016x}{seq:016x}", self.uid_prefix);
        let record = Arc::new(Record {
            kind: kind.as_str(),
            severity_id: ocsf::SEVERITY_MEDIUM,
            time,
            json: build(&uid, time),
        });
        for s in &self.sinks {
            if s.tx.try_send(Msg::Event(record.clone())).is_err() {
                s.dropped.inc();
            }
        }
    }

    /// A flow is its direction, both sides' identities (or addresses when
    /// unauthenticated), the destination port and the HTTP method and path;
    /// never the ephemeral source port. `revoked` tells a reload's closing
    /// from a refusal.
    fn flow_hash(&self, kind: Kind, revoked: bool, flow: &Flow<'_>) -> u64 {
        let mut h = self.hasher.build_hasher();
        kind.hash(&mut h);
        revoked.hash(&mut h);
        (flow.direction as u8).hash(&mut h);
        for e in [&flow.src, &flow.dst] {
            match e.id {
                Some(id) => id.hash(&mut h),
                None => e.addr.ip().hash(&mut h),
            }
        }
        flow.dst.addr.port().hash(&mut h);
        if let Some(http) = flow.http {
            http.method.hash(&mut h);
            http.path.hash(&mut h);
        }
        h.finish()
    }
}

#[cfg(test)]
mod tests;
