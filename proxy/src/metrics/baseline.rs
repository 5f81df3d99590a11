//! Learned-baseline metrics: entries, overflow, deviations by kind and
//! action, the learning status and mode, and persistence failures. Every
//! series is created at start, so the hot path only increments.

use palisade_policy::baseline::{Action, BaselineMode, DeviationKind, Status};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DeviationLabels {
    kind: &'static str,
    action: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StatusLabels {
    status: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ModeLabels {
    mode: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FailureLabels {
    /// `restore` (an unreadable or corrupt file at start), `persist`, or
    /// `merge` (a `merge_from` file refused).
    operation: &'static str,
}

pub const KINDS: [DeviationKind; 4] = [
    DeviationKind::NewPeer,
    DeviationKind::NewPort,
    DeviationKind::NewRoute,
    DeviationKind::RateSpike,
];
const ACTIONS: [&str; 3] = ["pass", "block", "throttle"];
const STATUSES: [Status; 3] = [Status::Learning, Status::Stabilizing, Status::Stable];

/// The `kind` label of a deviation.
pub fn kind_label(k: DeviationKind) -> &'static str {
    match k {
        DeviationKind::NewPeer => "new_peer",
        DeviationKind::NewPort => "new_port",
        DeviationKind::NewRoute => "new_route",
        DeviationKind::RateSpike => "rate_spike",
    }
}

fn kind_index(k: DeviationKind) -> usize {
    KINDS.iter().position(|x| *x == k).unwrap_or(0)
}

fn action_index(a: Action) -> usize {
    match a {
        Action::Pass => 0,
        Action::Block => 1,
        Action::Throttle { .. } => 2,
    }
}

pub struct BaselineMetrics {
    pub entries: Gauge,
    pub overflow: Counter,
    /// [kind][pass, block, throttle]
    deviations: [[Counter; 3]; 4],
    status: [Gauge; 3],
    mode: [Gauge; 4],
    pub restore_failures: Counter,
    pub persist_failures: Counter,
    pub merge_failures: Counter,
    /// Reports to the control plane that did not arrive.
    pub report_failures: Counter,
    deviation_family: Family<DeviationLabels, Counter>,
    status_family: Family<StatusLabels, Gauge>,
    mode_family: Family<ModeLabels, Gauge>,
    failure_family: Family<FailureLabels, Counter>,
}

impl Default for BaselineMetrics {
    fn default() -> Self {
        let deviation_family = Family::<DeviationLabels, Counter>::default();
        let status_family = Family::<StatusLabels, Gauge>::default();
        let mode_family = Family::<ModeLabels, Gauge>::default();
        let failure_family = Family::<FailureLabels, Counter>::default();
        let op = |operation| failure_family.get_or_create_owned(&FailureLabels { operation });
        BaselineMetrics {
            entries: Gauge::default(),
            overflow: Counter::default(),
            deviations: KINDS.map(|k| {
                ACTIONS.map(|action| {
                    deviation_family.get_or_create_owned(&DeviationLabels {
                        kind: kind_label(k),
                        action,
                    })
                })
            }),
            status: STATUSES
                .map(|s| status_family.get_or_create_owned(&StatusLabels { status: s.as_str() })),
            mode: BaselineMode::ALL
                .map(|m| mode_family.get_or_create_owned(&ModeLabels { mode: m.as_str() })),
            restore_failures: op("restore"),
            persist_failures: op("persist"),
            merge_failures: op("merge"),
            report_failures: Counter::default(),
            deviation_family,
            status_family,
            mode_family,
            failure_family,
        }
    }
}

impl BaselineMetrics {
    pub fn register(&self, registry: &mut Registry) {
        let r = registry.sub_registry_with_prefix("baseline");
        r.register("entries", "Flows learned", self.entries.clone());
        r.register(
            "overflow",
            "New flows not learned because baseline.max_entries was reached",
            self.overflow.clone(),
        );
        r.register(
            "deviation",
            "Flows that departed from the baseline, by kind and action taken",
            self.deviation_family.clone(),
        );
        r.register(
            "status",
            "The learning status: 1 for the current one",
            self.status_family.clone(),
        );
        r.register(
            "mode",
            "The baseline mode in force: 1 for the current one",
            self.mode_family.clone(),
        );
        r.register(
            "file_failures",
            "Baseline files that could not be restored, written or merged",
            self.failure_family.clone(),
        );
        r.register(
            "report_failures",
            "Baseline reports the control plane did not accept",
            self.report_failures.clone(),
        );
    }

    pub fn deviation(&self, kind: DeviationKind, action: Action) {
        self.deviations[kind_index(kind)][action_index(action)].inc();
    }

    pub fn set_status(&self, status: Status) {
        for (s, g) in STATUSES.iter().zip(&self.status) {
            g.set(i64::from(*s == status));
        }
    }

    pub fn set_mode(&self, mode: BaselineMode) {
        for (m, g) in BaselineMode::ALL.iter().zip(&self.mode) {
            g.set(i64::from(*m == mode));
        }
    }
}
