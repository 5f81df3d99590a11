//! The workload's learned baseline in the sidecar: the mode in force, the
//! one check every connection and request makes after policy allowed it,
//! the findings it raises, the file that keeps it across restarts, and the
//! baselines of other pods merged in at start.

pub mod report;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use palisade_policy::baseline::{
    Action, Baseline, BaselineMode, BaselineSettings, Deviation, DeviationKind, FlowRef, Outcome,
    Protocol, Snapshot,
};
use palisade_policy::{docs_selecting, CompiledPolicy, Direction, HttpInfo, Peer, SpiffeId};
use tokio_util::sync::CancellationToken;

use crate::config::BaselineConfig;
use crate::events::{
    BaselineEntry, Endpoint, Finding, FindingAction, FindingKind, FindingMode, Flow, HttpFlow,
};
use crate::metrics::baseline::BaselineMetrics;
use crate::Runtime;

/// The baseline state shared by every connection.
pub struct Live {
    /// The mode in force, as a byte: read with one atomic load per flow.
    /// It is `baseline.mode`, or the strictest `spec.baseline.mode` of the
    /// policies selecting the workload, and `monitor` instead of `learn`
    /// once auto-promoted; `maintain` keeps it current.
    mode: AtomicU8,
    /// When `auto_promote` moved `learn` to `monitor` (unix ms), 0 if it
    /// did not. Persisted with the baseline and restored with it.
    promoted_at: AtomicU64,
    settings: BaselineSettings,
    path: PathBuf,
    persist_interval: Duration,
    merge_from: Vec<PathBuf>,
    /// Created, with the file read back (or else `merge_from` merged in),
    /// once the SVID names the workload and the mode is not `off`.
    recorder: OnceLock<Baseline>,
    /// One writer of the file at a time (the periodic one, and drain's).
    writing: Mutex<()>,
    clock: Clock,
}

impl Default for Live {
    fn default() -> Self {
        Live::new(&BaselineConfig::default())
    }
}

/// Unix milliseconds from a monotonic clock read against one wall-clock
/// reading at start: no wall-clock call per flow.
struct Clock {
    start: Instant,
    epoch_ms: u64,
}

impl Clock {
    fn new() -> Clock {
        let epoch_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        Clock {
            start: Instant::now(),
            epoch_ms,
        }
    }

    fn now(&self) -> u64 {
        self.epoch_ms + self.start.elapsed().as_millis() as u64
    }
}

fn mode_from(b: u8) -> BaselineMode {
    BaselineMode::ALL
        .get(b as usize)
        .copied()
        .unwrap_or_default()
}

fn mode_byte(m: BaselineMode) -> u8 {
    BaselineMode::ALL.iter().position(|x| *x == m).unwrap_or(0) as u8
}

impl Live {
    /// The baseline as configured; nothing is read until it is needed.
    pub fn new(cfg: &BaselineConfig) -> Live {
        Live {
            mode: AtomicU8::new(mode_byte(cfg.settings.mode)),
            promoted_at: AtomicU64::new(0),
            settings: cfg.settings.clone(),
            path: cfg.path.clone(),
            persist_interval: cfg.persist_interval,
            merge_from: cfg.merge_from.clone(),
            recorder: OnceLock::new(),
            writing: Mutex::new(()),
            clock: Clock::new(),
        }
    }

    pub fn mode(&self) -> BaselineMode {
        mode_from(self.mode.load(Ordering::Relaxed))
    }

    fn set_mode(&self, m: BaselineMode) {
        self.mode.store(mode_byte(m), Ordering::Relaxed);
    }

    /// The mode `local` is set to under `policy`: `baseline.mode`, or the
    /// strictest `spec.baseline.mode` of the policies selecting it.
    fn configured_mode(&self, policy: &CompiledPolicy, local: Option<&SpiffeId>) -> BaselineMode {
        let target = local.and_then(|id| {
            docs_selecting(policy, id)
                .filter_map(|d| d.baseline)
                .max_by_key(|m| mode_byte(*m))
        });
        target.unwrap_or(self.settings.mode)
    }

    /// When the workload was auto-promoted, if it was.
    pub fn promoted_at(&self) -> Option<u64> {
        Some(self.promoted_at.load(Ordering::Relaxed)).filter(|t| *t != 0)
    }

    /// The mode in force for a configured mode: `learn` is `monitor` once
    /// promoted.
    fn effective(&self, configured: BaselineMode) -> BaselineMode {
        match configured {
            BaselineMode::Learn if self.promoted_at().is_some() => BaselineMode::Monitor,
            m => m,
        }
    }

    /// Restores the promotion a restored file records, while `auto_promote`
    /// is on (`tick` drops it if the mode set is not `learn`).
    fn restore_promotion(&self, at: u64) {
        if !self.settings.auto_promote {
            tracing::info!("baseline promotion not restored: auto_promote is off; learning");
            return;
        }
        self.promoted_at.store(at.max(1), Ordering::Relaxed);
        // No flow goes on learning until the next tick.
        let _ = self.mode.compare_exchange(
            mode_byte(BaselineMode::Learn),
            mode_byte(BaselineMode::Monitor),
            Ordering::Relaxed,
            Ordering::Relaxed,
        );
        tracing::info!(
            promoted_at = at,
            "baseline promotion restored: learn -> monitor"
        );
    }

    /// The recorder, once a flow was seen.
    pub fn recorder(&self) -> Option<&Baseline> {
        self.recorder.get()
    }

    fn recorder_for(&self, local: &SpiffeId, metrics: &BaselineMetrics) -> &Baseline {
        self.recorder.get_or_init(|| {
            let b = Baseline::new(local.clone(), self.settings.clone());
            let restored = self
                .read_file(metrics)
                .is_some_and(|snap| match b.merge(&snap) {
                    Ok(dropped) => {
                        tracing::info!(
                            entries = b.len(), dropped, path = %self.path.display(),
                            "baseline restored"
                        );
                        if let Some(at) = snap.promoted_at {
                            self.restore_promotion(at);
                        }
                        true
                    }
                    Err(e) => {
                        tracing::error!(
                            error = %e, path = %self.path.display(),
                            "baseline file not restored; learning afresh"
                        );
                        false
                    }
                });
            // The own file already holds what was merged before a restart;
            // merging again would count those flows twice.
            match restored {
                false => self.merge_others(&b, metrics),
                true if !self.merge_from.is_empty() => tracing::info!(
                    path = %self.path.display(),
                    "baseline.merge_from not read: the restored baseline already holds it"
                ),
                true => {}
            }
            b
        })
    }

    /// Merges each `merge_from` file into `b`. A file that cannot be read,
    /// is corrupt, or is another identity's is logged, counted and skipped.
    fn merge_others(&self, b: &Baseline, metrics: &BaselineMetrics) {
        for path in &self.merge_from {
            let merged = std::fs::read(path)
                .map_err(|e| e.to_string())
                .and_then(|bytes| {
                    Snapshot::from_json(&bytes, self.settings.max_entries)
                        .map_err(|e| e.to_string())
                })
                .and_then(|snap| b.merge(&snap).map_err(|e| e.to_string()));
            match merged {
                Ok(dropped) => tracing::info!(
                    path = %path.display(), entries = b.len(), dropped,
                    "baseline learned elsewhere merged in"
                ),
                Err(e) => {
                    metrics.merge_failures.inc();
                    tracing::error!(
                        path = %path.display(), error = %e,
                        "baseline.merge_from file refused; the proxy goes on without it"
                    );
                }
            }
        }
    }

    /// Reads the baseline file back. A missing file is a fresh start; a
    /// corrupt one is logged, counted, moved aside (`<path>.corrupt`) and
    /// the baseline starts empty.
    fn read_file(&self, metrics: &BaselineMetrics) -> Option<Snapshot> {
        let bytes = match std::fs::read(&self.path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
            Err(e) => {
                metrics.restore_failures.inc();
                tracing::error!(path = %self.path.display(), error = %e, "cannot read the baseline file; learning afresh");
                return None;
            }
        };
        match Snapshot::from_json(&bytes, self.settings.max_entries) {
            Ok(snap) => Some(snap),
            Err(e) => {
                metrics.restore_failures.inc();
                let aside = aside_path(&self.path);
                let moved = std::fs::rename(&self.path, &aside);
                tracing::error!(
                    path = %self.path.display(), error = %e, kept_as = %aside.display(),
                    moved = moved.is_ok(), "the baseline file is corrupt; learning afresh"
                );
                None
            }
        }
    }

    /// Writes the baseline atomically (a temporary file renamed over the
    /// old one). Nothing is written before the first flow.
    pub fn persist(&self, metrics: &BaselineMetrics) {
        let _one = self.writing.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(mut snap) = self.snapshot() else {
            return;
        };
        snap.promoted_at = self.promoted_at();
        let json = snap.to_json();
        if let Err(e) = write_atomic(&self.path, json.as_bytes()) {
            metrics.persist_failures.inc();
            tracing::warn!(path = %self.path.display(), error = %e, "cannot write the baseline file");
        }
    }

    /// Everything learned so far; `None` before the recorder exists.
    pub fn snapshot(&self) -> Option<Snapshot> {
        Some(self.recorder()?.snapshot(self.clock.now()))
    }

    /// Mode, status and counts, for `/config_dump`.
    pub fn dump(&self) -> serde_json::Value {
        let summary = self.recorder().map(|b| b.summary(self.clock.now()));
        serde_json::json!({
            "mode": self.mode(),
            "path": self.path,
            "status": summary.as_ref().map_or("learning", |s| s.status.as_str()),
            "entries": summary.as_ref().map_or(0, |s| s.entries),
            "max_entries": self.settings.max_entries,
            "overflow": summary.as_ref().map_or(0, |s| s.overflow),
            "last_new_flow": summary.as_ref().and_then(|s| s.last_new_flow),
            "promoted_at": self.promoted_at(),
        })
    }

    /// Updates the status gauges and auto-promotes a stable workload. The
    /// recorder (and what was restored) is there as soon as the SVID names
    /// the workload, before the first flow. A mode set to anything but
    /// `learn`, or `auto_promote` off, ends a promotion: `learn` set again
    /// learns again. True when it promoted.
    fn tick(&self, rt: &Runtime) -> bool {
        let metrics = &rt.metrics.baseline;
        let creds = rt.creds.load();
        let local = creds.as_ref().map(|c| &c.svid.id);
        let configured = self.configured_mode(&rt.policy.load().compiled, local);
        let recorder = match (local, configured) {
            (Some(local), m) if m != BaselineMode::Off => Some(self.recorder_for(local, metrics)),
            _ => None,
        };
        let promotable = configured == BaselineMode::Learn && self.settings.auto_promote;
        if !promotable && configured != BaselineMode::Off && self.promoted_at().is_some() {
            self.promoted_at.store(0, Ordering::Relaxed);
            tracing::info!(
                mode = configured.as_str(),
                "baseline promotion dropped: the mode set is not learn with auto_promote"
            );
        }
        let mode = self.effective(configured);
        if mode != self.mode() {
            tracing::info!(mode = mode.as_str(), "baseline mode");
            self.set_mode(mode);
        }
        metrics.set_mode(mode);
        let Some(b) = recorder else {
            return false;
        };
        let now = self.clock.now();
        metrics.set_status(b.status(now));
        metrics.entries.set(b.len() as i64);
        if b.should_promote(mode, now) {
            self.promoted_at.store(now.max(1), Ordering::Relaxed);
            self.set_mode(BaselineMode::Monitor);
            metrics.set_mode(BaselineMode::Monitor);
            tracing::info!(entries = b.len(), "baseline stable: learn -> monitor");
            return true;
        }
        false
    }
}

fn aside_path(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".corrupt");
    PathBuf::from(name)
}

fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path)
}

/// Keeps the status gauges current, promotes, and persists every
/// `persist_interval`, and at once after a promotion, until `stop`.
pub async fn maintain(rt: Arc<Runtime>, stop: CancellationToken) {
    let live = &rt.baseline;
    let step = live
        .settings
        .bucket
        .min(Duration::from_secs(1))
        .max(Duration::from_millis(10));
    let mut last_persist = Instant::now();
    let mut promoted = live.tick(&rt);
    loop {
        if promoted || last_persist.elapsed() >= live.persist_interval {
            last_persist = Instant::now();
            let rt = rt.clone();
            let _ = tokio::task::spawn_blocking(move || rt.baseline.persist(&rt.metrics.baseline))
                .await;
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(step) => {}
        }
        promoted = live.tick(&rt);
    }
}

/// A connection or request that policy allowed, as the baseline sees it.
#[derive(Debug, Clone, Copy)]
pub struct Observed<'a> {
    pub direction: Direction,
    /// Inbound: the caller's identity; outbound: the destination's. `None`
    /// for a plaintext or unmeshed peer.
    pub peer: Option<&'a SpiffeId>,
    /// Inbound: the caller's address; outbound: the destination's.
    pub peer_addr: SocketAddr,
    /// Inbound: the app's address; outbound: the app's own socket.
    pub local_addr: SocketAddr,
    /// The port policy decided on: the app port, or the destination port.
    pub port: u16,
    pub protocol: Protocol,
    /// Per request: the method and normalized path authorization matched.
    pub http: Option<HttpInfo<'a>>,
}

/// Records and checks one allowed connection or request; says whether it
/// passes, is blocked or is throttled. With mode `off` this is one atomic
/// load.
pub fn observe(rt: &Runtime, o: &Observed<'_>) -> Action {
    let live = &rt.baseline;
    let mode = live.mode();
    if mode == BaselineMode::Off {
        return Action::Pass;
    }
    let creds = rt.creds.load();
    let Some(local) = creds.as_ref().map(|c| &c.svid.id) else {
        return Action::Pass;
    };
    let b = live.recorder_for(local, &rt.metrics.baseline);
    let flow = FlowRef {
        direction: o.direction,
        peer: match o.peer {
            Some(id) => Peer::Identity(id),
            None => Peer::Address(o.peer_addr.ip()),
        },
        port: o.port,
        protocol: o.protocol,
        http: o.http,
    };
    let check = b.observe(&flow, mode, live.clock.now());
    match &check.outcome {
        Outcome::Learned => {
            rt.metrics.baseline.entries.set(b.len() as i64);
        }
        Outcome::Overflow => {
            rt.metrics.baseline.overflow.inc();
        }
        // A request from a new peer or on a new port rides on a connection
        // that was reported as such already.
        Outcome::Deviation(d)
            if o.http.is_some()
                && matches!(d.kind, DeviationKind::NewPeer | DeviationKind::NewPort) => {}
        Outcome::Deviation(d) => report(rt, b, o, &flow, local, d, mode, check.action),
        Outcome::Off | Outcome::Known => {}
    }
    check.action
}

/// Counts a deviation and raises its finding (the events module
/// deduplicates and rate-limits).
#[allow(clippy::too_many_arguments)]
fn report(
    rt: &Runtime,
    b: &Baseline,
    o: &Observed<'_>,
    flow: &FlowRef<'_>,
    local: &SpiffeId,
    d: &Deviation,
    mode: BaselineMode,
    action: Action,
) {
    rt.metrics.baseline.deviation(d.kind, action);
    // A spike compares the flow with its own entry: no key to build.
    let key = match &d.compared {
        Some(e) if d.kind == DeviationKind::RateSpike => e.flow.clone(),
        _ => Arc::new(flow.to_key(b.settings())),
    };
    tracing::debug!(kind = crate::metrics::baseline::kind_label(d.kind), action = action.as_str(), flow = %key, "baseline deviation");
    let events = &rt.events;
    let peer = Endpoint {
        addr: o.peer_addr,
        id: o.peer.map(SpiffeId::as_str),
    };
    let me = Endpoint {
        addr: o.local_addr,
        id: Some(local.as_str()),
    };
    let (src, dst) = match o.direction {
        Direction::Ingress => (peer, me),
        Direction::Egress => (me, peer),
    };
    let http = key.route.as_ref().map(|r| HttpFlow {
        method: &r.method,
        path: &r.template,
    });
    events.finding(&Finding {
        kind: match d.kind {
            DeviationKind::NewPeer => FindingKind::NewPeer,
            DeviationKind::NewPort => FindingKind::NewPort,
            DeviationKind::NewRoute => FindingKind::NewRoute,
            DeviationKind::RateSpike => FindingKind::RateSpike,
        },
        flow: Flow {
            direction: o.direction,
            src,
            dst,
            http,
        },
        baseline: d.compared.as_ref().map(|e| BaselineEntry {
            count: e.count,
            first_seen: e.first_seen as i64,
            last_seen: e.last_seen as i64,
            rate_mean: e.rate_mean,
            rate_stddev: e.rate_stddev,
        }),
        observed_rate: d.rate.map(|r| f64::from(r.observed)),
        mode: match mode {
            BaselineMode::Protect => FindingMode::Protect,
            _ => FindingMode::Monitor,
        },
        action: match action {
            Action::Pass => FindingAction::Allowed,
            Action::Block => FindingAction::Blocked,
            Action::Throttle { .. } => FindingAction::Throttled,
        },
    });
}

/// The baseline's say on a connection policy allowed: `false` closes it
/// (a deviation in protect mode, counted as refused with reason
/// `baseline`); a throttled connection is accepted once the bucket ends.
pub async fn admit_connection(rt: &Runtime, o: &Observed<'_>, client: SocketAddr) -> bool {
    match observe(rt, o) {
        Action::Pass => true,
        Action::Block => {
            crate::refuse(
                rt,
                o.direction,
                client,
                "baseline",
                &"the flow departs from the learned baseline",
            );
            false
        }
        Action::Throttle { retry_after_ms } => {
            tokio::time::sleep(Duration::from_millis(retry_after_ms)).await;
            true
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mode_round_trips_through_its_byte() {
        for m in BaselineMode::ALL {
            assert_eq!(mode_from(mode_byte(m)), m);
        }
    }

    #[test]
    fn a_corrupt_file_is_counted_and_kept_aside() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("baseline.json");
        std::fs::write(&path, b"{not json").unwrap();
        let mut cfg = BaselineConfig {
            path: path.clone(),
            ..Default::default()
        };
        cfg.settings.mode = BaselineMode::Learn;
        let live = Live::new(&cfg);
        let m = BaselineMetrics::default();
        assert!(live.read_file(&m).is_none());
        assert_eq!(m.restore_failures.get(), 1);
        assert!(!path.exists());
        assert_eq!(
            std::fs::read(aside_path(&path)).unwrap(),
            b"{not json".to_vec()
        );
    }
}
