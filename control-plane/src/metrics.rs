//! The control plane's Prometheus metrics, served at GET /metrics.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::{Metric, Registry};

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
pub struct OutcomeLabel {
    pub outcome: &'static str,
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
    pub store_up: Gauge,
    pub store_errors: Family<ReasonLabel, Counter>,
    pub webhook_reviews: Family<OutcomeLabel, Counter>,
    pub webhook_errors: Family<KindLabel, Counter>,
}

impl Default for Metrics {
    #[rustfmt::skip]
    fn default() -> Metrics {
        let mut r = Registry::default();
        // The text encoder appends `_total` to counters itself.
        Metrics {
            svid_issued: registered(&mut r, "svid_issued", "SVIDs signed, by attestation method"),
            svid_rejected: registered(&mut r, "svid_rejected", "SVID requests refused, by reason"),
            api_errors: registered(&mut r, "api_errors", "Workload API connections and requests that failed, by kind"),
            join_tokens_created: registered(&mut r, "join_tokens_created", "Join tokens created"),
            ca_rotations: registered(&mut r, "ca_rotations", "Signing CA rotations"),
            bundle_cas: registered(&mut r, "bundle_cas", "CA certificates in the trust bundle"),
            bundle_sequence: registered(&mut r, "bundle_sequence", "SPIFFE bundle sequence number"),
            api_connections_open: registered(&mut r, "api_connections_open", "Open connections on the workload API and webhook ports"),
            policy_dir_reads: registered(&mut r, "policy_dir_reads", "Reads of the stored policies (--policy-dir, or etcd) after a change to them, accepted or not"),
            policy_reload_errors: registered(&mut r, "policy_reload_errors", "Changes to --policy-dir rejected (the last good set is still served), by reason"),
            store_up: registered(&mut r, "store_up", "Whether the state store answered its last health check (0: not ready, issuance refused)"),
            store_errors: registered(&mut r, "store_errors", "Failed state store health checks and operations, by reason"),
            webhook_reviews: registered(&mut r, "webhook_reviews", "AdmissionReviews answered (every pod is admitted), by outcome: injected, already_injected, opted_out, host_network, not_create, not_a_pod, bad_object"),
            webhook_errors: registered(&mut r, "webhook_errors", "Admission webhook connections and requests that failed, by kind"),
            registry: r,
        }
    }
}

impl Metrics {
    pub fn rejected(&self, reason: &'static str) {
        self.svid_rejected
            .get_or_create(&ReasonLabel { reason })
            .inc();
    }

    pub fn store_error(&self, reason: &'static str) {
        self.store_errors
            .get_or_create(&ReasonLabel { reason })
            .inc();
    }

    pub fn api_error(&self, kind: &'static str) {
        self.api_errors.get_or_create(&KindLabel { kind }).inc();
    }

    pub fn webhook_error(&self, kind: &'static str) {
        self.webhook_errors.get_or_create(&KindLabel { kind }).inc();
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

/// A new metric, registered under `name`: each metric is named in one place.
fn registered<M: Metric + Clone + Default>(registry: &mut Registry, name: &str, help: &str) -> M {
    let metric = M::default();
    registry.register(name, help, metric.clone());
    metric
}
