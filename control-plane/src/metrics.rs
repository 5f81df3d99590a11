//! The control plane's Prometheus metrics, served at GET /metrics.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MethodLabel {
    /// `join_token`, `k8s_sa_token` or `renew`.
    pub method: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    pub kind: &'static str,
}

pub struct Metrics {
    registry: Registry,
    pub svid_issued: Family<MethodLabel, Counter>,
    pub svid_rejected: Family<ReasonLabel, Counter>,
    pub api_errors: Family<KindLabel, Counter>,
    pub join_tokens_created: Counter,
    pub ca_rotations: Counter,
    pub bundle_cas: Gauge,
    pub bundle_sequence: Gauge,
    pub api_connections_open: Gauge,
    pub policy_dir_reads: Counter,
    pub policy_reload_errors: Family<ReasonLabel, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::default();
        let m = Metrics {
            svid_issued: Family::default(),
            svid_rejected: Family::default(),
            api_errors: Family::default(),
            join_tokens_created: Counter::default(),
            ca_rotations: Counter::default(),
            bundle_cas: Gauge::default(),
            bundle_sequence: Gauge::default(),
            api_connections_open: Gauge::default(),
            policy_dir_reads: Counter::default(),
            policy_reload_errors: Family::default(),
            registry: Registry::default(),
        };
        registry.register(
            "svid_issued",
            "SVIDs signed, by attestation method",
            m.svid_issued.clone(),
        );
        registry.register(
            "svid_rejected",
            "SVID requests refused, by reason",
            m.svid_rejected.clone(),
        );
        registry.register(
            "api_errors",
            "Workload API connections and requests that failed, by kind",
            m.api_errors.clone(),
        );
        registry.register(
            "join_tokens_created",
            "Join tokens created",
            m.join_tokens_created.clone(),
        );
        registry.register(
            "ca_rotations",
            "Signing CA rotations",
            m.ca_rotations.clone(),
        );
        registry.register(
            "bundle_cas",
            "CA certificates in the trust bundle",
            m.bundle_cas.clone(),
        );
        registry.register(
            "bundle_sequence",
            "SPIFFE bundle sequence number",
            m.bundle_sequence.clone(),
        );
        registry.register(
            "api_connections_open",
            "Open connections on the workload API port",
            m.api_connections_open.clone(),
        );
        registry.register(
            "policy_dir_reads",
            "Reads of --policy-dir after a change to it, accepted or not",
            m.policy_dir_reads.clone(),
        );
        registry.register(
            "policy_reload_errors",
            "Changes to --policy-dir rejected (the last good set is still served), by reason",
            m.policy_reload_errors.clone(),
        );
        Metrics { registry, ..m }
    }

    pub fn rejected(&self, reason: &'static str) {
        self.svid_rejected
            .get_or_create(&ReasonLabel { reason })
            .inc();
    }

    pub fn api_error(&self, kind: &'static str) {
        self.api_errors.get_or_create(&KindLabel { kind }).inc();
    }

    pub fn issued(&self, method: &'static str) {
        self.svid_issued
            .get_or_create(&MethodLabel { method })
            .inc();
    }

    /// Prometheus text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }
}
