//! SPIFFE Workload API metrics: open streams, messages served, refused
//! calls, and the app's own SVID renewals.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MethodLabels {
    /// `FetchX509SVID` or `FetchX509Bundles`.
    pub method: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RefusalLabels {
    /// `missing_security_header`, `unimplemented` (the JWT methods) or
    /// `malformed_http2` (a connection whose framing the relay refused).
    pub reason: &'static str,
}

#[derive(Debug, Default)]
pub struct WorkloadApiMetrics {
    streams: Family<MethodLabels, Gauge>,
    /// `X509SVIDResponse` messages sent.
    pub svids_served: Counter,
    /// `X509BundlesResponse` messages sent.
    pub bundles_served: Counter,
    refusals: Family<RefusalLabels, Counter>,
    /// SVIDs obtained for the app.
    pub svid_refresh: Counter,
    pub svid_refresh_failures: Counter,
}

impl WorkloadApiMetrics {
    pub fn register(&self, registry: &mut Registry) {
        let r = registry.sub_registry_with_prefix("workload_api");
        r.register(
            "streams",
            "Workload API streams open, by method",
            self.streams.clone(),
        );
        r.register(
            "svids_served",
            "X509SVIDResponse messages sent to the app",
            self.svids_served.clone(),
        );
        r.register(
            "bundles_served",
            "X509BundlesResponse messages sent to the app",
            self.bundles_served.clone(),
        );
        r.register(
            "refusals",
            "Workload API calls refused, by reason",
            self.refusals.clone(),
        );
        r.register(
            "svid_refresh",
            "SVIDs obtained for the app (its own key)",
            self.svid_refresh.clone(),
        );
        r.register(
            "svid_refresh_failures",
            "Failed requests for the app's SVID",
            self.svid_refresh_failures.clone(),
        );
    }

    /// The open-streams gauge of `method`.
    pub fn streams(&self, method: &'static str) -> Gauge {
        self.streams.get_or_create_owned(&MethodLabels { method })
    }

    pub fn refused(&self, reason: &'static str) {
        self.refusals.get_or_create(&RefusalLabels { reason }).inc();
    }
}
