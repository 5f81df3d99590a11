//! HTTP request metrics: `request_total`, `response_total{status_code,
//! classification}` and `response_latency_ms`, labelled {direction, peer};
//! per-request authorization counters; limit violations by reason. Per-peer
//! handles are cached lock-free, so a request from a known peer costs atomic
//! adds and no allocation.

use std::collections::HashMap;
use std::fmt::Write;
use std::sync::Arc;

use arc_swap::ArcSwap;
use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::{Family, MetricConstructor};
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use palisade_policy::Direction;

use super::direction_label;
use super::policy::DecisionCounters;

/// Milliseconds, Linkerd's buckets, so existing dashboards read them.
const LATENCY_BUCKETS_MS: [f64; 25] = [
    1.0, 2.0, 3.0, 4.0, 5.0, 10.0, 20.0, 30.0, 40.0, 50.0, 100.0, 200.0, 300.0, 400.0, 500.0,
    1000.0, 2000.0, 3000.0, 4000.0, 5000.0, 10000.0, 20000.0, 30000.0, 40000.0, 50000.0,
];

/// Above this many distinct peers the per-peer cache stops growing.
const MAX_CACHED_PEERS: usize = 4096;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PeerLabels {
    pub direction: &'static str,
    pub peer: String,
}

#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq)]
pub struct Status(pub u16);

impl EncodeLabelValue for Status {
    fn encode(&self, e: &mut LabelValueEncoder<'_>) -> Result<(), std::fmt::Error> {
        write!(e, "{}", self.0)
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResponseLabels {
    pub direction: &'static str,
    pub peer: String,
    pub status_code: Status,
    /// `success` or `failure`.
    pub classification: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ViolationLabels {
    pub direction: &'static str,
    pub reason: &'static str,
}

#[derive(Clone)]
struct LatencyHistogram;

impl MetricConstructor<Histogram> for LatencyHistogram {
    fn new_metric(&self) -> Histogram {
        Histogram::new(LATENCY_BUCKETS_MS)
    }
}

/// One peer's request handles in one direction.
pub struct PeerHttp {
    pub requests: Counter,
    pub latency_ms: Histogram,
    labels: PeerLabels,
    family: Family<ResponseLabels, Counter>,
    /// Keyed by (status, failure).
    responses: ArcSwap<HashMap<(u16, bool), Counter>>,
}

impl PeerHttp {
    /// Count one response.
    pub fn response(&self, status: u16, failure: bool) {
        if let Some(c) = self.responses.load().get(&(status, failure)) {
            c.inc();
            return;
        }
        let c = self.family.get_or_create_owned(&ResponseLabels {
            direction: self.labels.direction,
            peer: self.labels.peer.clone(),
            status_code: Status(status),
            classification: if failure { "failure" } else { "success" },
        });
        c.inc();
        self.responses.rcu(|m| {
            let mut m = HashMap::clone(m);
            m.entry((status, failure)).or_insert_with(|| c.clone());
            m
        });
    }

    pub fn peer(&self) -> &str {
        &self.labels.peer
    }
}

type PeerMap = HashMap<String, Arc<PeerHttp>>;

pub struct HttpMetrics {
    requests: Family<PeerLabels, Counter>,
    responses: Family<ResponseLabels, Counter>,
    latency: Family<PeerLabels, Histogram, LatencyHistogram>,
    violations: Family<ViolationLabels, Counter>,
    pub inbound_authz: DecisionCounters,
    pub outbound_authz: DecisionCounters,
    pub access_log_dropped: Counter,
    cache: [ArcSwap<PeerMap>; 2],
}

impl Default for HttpMetrics {
    fn default() -> Self {
        HttpMetrics {
            requests: Family::default(),
            responses: Family::default(),
            latency: Family::new_with_constructor(LatencyHistogram),
            violations: Family::default(),
            inbound_authz: DecisionCounters::default(),
            outbound_authz: DecisionCounters::default(),
            access_log_dropped: Counter::default(),
            cache: Default::default(),
        }
    }
}

impl HttpMetrics {
    pub fn register(&self, registry: &mut Registry) {
        // The text encoder appends `_total` to counters itself.
        registry.register("request", "HTTP requests received", self.requests.clone());
        registry.register(
            "response",
            "HTTP responses sent, by status code and classification",
            self.responses.clone(),
        );
        registry.register(
            "response_latency_ms",
            "Time from a request's headers to its response's headers, in milliseconds",
            self.latency.clone(),
        );
        registry.register(
            "http_limit_violations",
            "HTTP requests or connections refused for breaking a limit, by reason",
            self.violations.clone(),
        );
        registry.register(
            "access_log_dropped",
            "Access log lines dropped because the writer fell behind",
            self.access_log_dropped.clone(),
        );
        self.inbound_authz
            .register(registry, "inbound_http_authz", "Inbound HTTP requests");
        self.outbound_authz
            .register(registry, "outbound_http_authz", "Outbound HTTP requests");
    }

    /// The per-request decision counters of one direction.
    pub fn decisions(&self, direction: Direction) -> &DecisionCounters {
        match direction {
            Direction::Ingress => &self.inbound_authz,
            Direction::Egress => &self.outbound_authz,
        }
    }

    /// The handles for one peer: an atomic load and a map lookup once seen.
    pub fn peer(&self, direction: Direction, peer: &str) -> Arc<PeerHttp> {
        let slot = &self.cache[direction as usize];
        if let Some(m) = slot.load().get(peer) {
            return m.clone();
        }
        let labels = PeerLabels {
            direction: direction_label(direction),
            peer: peer.to_owned(),
        };
        let m = Arc::new(PeerHttp {
            requests: self.requests.get_or_create_owned(&labels),
            latency_ms: self.latency.get_or_create_owned(&labels),
            labels,
            family: self.responses.clone(),
            responses: Default::default(),
        });
        if slot.load().len() < MAX_CACHED_PEERS {
            slot.rcu(|map| {
                let mut map = PeerMap::clone(map);
                map.entry(peer.to_owned()).or_insert_with(|| m.clone());
                map
            });
        }
        m
    }

    /// Count a limit violation; off the hot path (only on attacks and errors).
    pub fn violation(&self, direction: Direction, reason: &'static str) {
        self.violations
            .get_or_create(&ViolationLabels {
                direction: direction_label(direction),
                reason,
            })
            .inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_responses_and_latency_are_labelled_by_direction_and_peer() {
        let m = HttpMetrics::default();
        let mut reg = Registry::default();
        m.register(&mut reg);
        let p = m.peer(Direction::Ingress, "spiffe://td/a");
        p.requests.inc();
        p.response(200, false);
        p.response(200, false);
        p.response(503, true);
        p.latency_ms.observe(3.5);
        m.violation(Direction::Egress, "header_too_large");
        assert!(Arc::ptr_eq(
            &p,
            &m.peer(Direction::Ingress, "spiffe://td/a")
        ));
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &reg).unwrap();
        for line in [
            r#"request_total{direction="inbound",peer="spiffe://td/a"} 1"#,
            r#"response_total{direction="inbound",peer="spiffe://td/a",status_code="200",classification="success"} 2"#,
            r#"response_total{direction="inbound",peer="spiffe://td/a",status_code="503",classification="failure"} 1"#,
            r#"response_latency_ms_count{direction="inbound",peer="spiffe://td/a"} 1"#,
            r#"http_limit_violations_total{direction="outbound",reason="header_too_large"} 1"#,
        ] {
            assert!(text.contains(line), "missing {line} in\n{text}");
        }
    }
}
