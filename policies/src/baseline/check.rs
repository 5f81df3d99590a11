//! What `Baseline::observe()` answers: the outcome for a flow (known,
//! learned, or how it deviates, compared with which entry) and what the
//! proxy does with it.

use std::sync::Arc;

use serde::Serialize;

use super::key::FlowKey;
use super::rate::RateExcess;

/// What kind of departure from the baseline a flow is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub enum DeviationKind {
    /// The peer was never seen in this direction.
    #[serde(rename = "baseline.new_peer")]
    NewPeer,
    /// The peer was seen, never on this port with this protocol.
    #[serde(rename = "baseline.new_port")]
    NewPort,
    /// The peer and port were seen, never this method and path template.
    #[serde(rename = "baseline.new_route")]
    NewRoute,
    /// A known flow's rate stayed above its learned ceiling.
    #[serde(rename = "baseline.rate_spike")]
    RateSpike,
}

impl DeviationKind {
    pub const ALL: [DeviationKind; 4] = [
        DeviationKind::NewPeer,
        DeviationKind::NewPort,
        DeviationKind::NewRoute,
        DeviationKind::RateSpike,
    ];

    /// The stable name events and metrics use: `baseline.new_peer`, ...
    pub fn as_str(self) -> &'static str {
        match self {
            DeviationKind::NewPeer => "baseline.new_peer",
            DeviationKind::NewPort => "baseline.new_port",
            DeviationKind::NewRoute => "baseline.new_route",
            DeviationKind::RateSpike => "baseline.rate_spike",
        }
    }

    /// The `kind` metrics label: `new_peer`, ...
    pub fn label(self) -> &'static str {
        &self.as_str()["baseline.".len()..]
    }
}

/// A learned entry as it stood when compared: the flow and its figures.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EntryView {
    #[serde(serialize_with = "serialize_arc")]
    pub flow: Arc<FlowKey>,
    pub count: u64,
    pub first_seen: u64,
    pub last_seen: u64,
    /// Per bucket.
    pub rate_mean: f64,
    pub rate_stddev: f64,
}

fn serialize_arc<S: serde::Serializer>(k: &Arc<FlowKey>, s: S) -> Result<S::Ok, S::Error> {
    k.as_ref().serialize(s)
}

/// A flow that departs from the baseline.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Deviation {
    pub kind: DeviationKind,
    /// The entry it was compared with: the flow's own for a rate spike, a
    /// flow of the same port for a new route, of the same peer for a new
    /// port; `None` for a new peer.
    pub compared: Option<EntryView>,
    /// For a rate spike: this bucket's count and the ceiling.
    pub rate: Option<RateExcess>,
}

/// What happened to an observed flow.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "outcome", rename_all = "lowercase")]
pub enum Outcome {
    /// Mode `off`: nothing recorded.
    Off,
    /// A learned flow; its figures were updated.
    Known,
    /// Learn mode: a new flow, now learned.
    Learned,
    /// Learn mode: a new flow not learned because `max_entries` is reached
    /// (count it: `baseline_overflow_total`).
    Overflow,
    Deviation(Deviation),
}

/// What the proxy does with the flow. Only `protect` blocks or throttles.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(tag = "action", rename_all = "lowercase")]
pub enum Action {
    Pass,
    /// 403 with `x-palisade-denied: baseline`, or a closed connection.
    Block,
    /// 429 with `retry-after` (seconds, rounded up), or a delayed accept:
    /// this bucket's count is past the learned ceiling until it ends.
    Throttle {
        retry_after_ms: u64,
    },
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Pass => "pass",
            Action::Block => "block",
            Action::Throttle { .. } => "throttle",
        }
    }
}

/// `observe()`'s answer.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Check {
    #[serde(flatten)]
    pub outcome: Outcome,
    #[serde(flatten)]
    pub action: Action,
}

impl Check {
    pub(crate) fn pass(outcome: Outcome) -> Self {
        Check {
            outcome,
            action: Action::Pass,
        }
    }

    pub fn deviation(&self) -> Option<&Deviation> {
        match &self.outcome {
            Outcome::Deviation(d) => Some(d),
            _ => None,
        }
    }
}
