//! Prometheus metrics (prometheus-client). Connection metrics are looked up
//! once per connection from a lock-free cache keyed by peer, so the hot path
//! never takes the registry's locks once a peer has been seen.

pub mod baseline;
pub mod http;
pub mod policy;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use arc_swap::ArcSwap;

use palisade_identity::client::failover::OnSwitch;
use palisade_policy::Direction;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// The `direction` label, and the word logs use: the proxy names the side
/// a connection arrived on, where policies name the side a rule guards.
pub fn direction_label(direction: Direction) -> &'static str {
    match direction {
        Direction::Ingress => "inbound",
        Direction::Egress => "outbound",
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ConnLabels {
    /// `inbound` or `outbound` ([`direction_label`]).
    pub direction: &'static str,
    /// The peer's SPIFFE ID, or "unauthenticated".
    pub peer: String,
    /// "true" or "false".
    pub tls: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FailureLabels {
    pub direction: &'static str,
    pub reason: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AddressLabels {
    pub address: String,
}

/// The peer label for connections without an authenticated identity.
pub const UNAUTHENTICATED: &str = "unauthenticated";

/// Handles for one (direction, peer, tls) label set.
#[derive(Debug, Clone)]
pub struct ConnMetrics {
    pub open_total: Counter,
    pub close_total: Counter,
    pub open: Gauge,
    /// Bytes read from the accepted connection.
    pub read_bytes: Counter,
    /// Bytes written to the accepted connection.
    pub write_bytes: Counter,
}

type PeerMap = HashMap<String, Arc<ConnMetrics>>;

pub struct Metrics {
    registry: Registry,
    open_total: Family<ConnLabels, Counter>,
    close_total: Family<ConnLabels, Counter>,
    open: Family<ConnLabels, Gauge>,
    read_bytes: Family<ConnLabels, Counter>,
    write_bytes: Family<ConnLabels, Counter>,
    handshake_failures: Family<FailureLabels, Counter>,
    pub cert_expiration: Gauge,
    pub cert_refresh: Counter,
    pub cert_refresh_failures: Counter,
    pub endpoints_refresh_failures: Counter,
    /// 1 for the control-plane address answering now, 0 for those left.
    control_plane_in_use: Family<AddressLabels, Gauge>,
    control_plane_failovers: Counter,
    /// Policy decisions, terminations and reloads.
    pub policy: policy::PolicyMetrics,
    /// HTTP requests, responses, per-request decisions and limits.
    pub http: http::HttpMetrics,
    /// Learned-baseline entries, deviations and status.
    pub baseline: baseline::BaselineMetrics,
    /// Indexed by [`Self::slot`]: (direction, tls).
    cache: [ArcSwap<PeerMap>; 4],
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
            open_total: Family::default(),
            close_total: Family::default(),
            open: Family::default(),
            read_bytes: Family::default(),
            write_bytes: Family::default(),
            handshake_failures: Family::default(),
            cert_expiration: Gauge::default(),
            cert_refresh: Counter::default(),
            cert_refresh_failures: Counter::default(),
            endpoints_refresh_failures: Counter::default(),
            control_plane_in_use: Family::default(),
            control_plane_failovers: Counter::default(),
            policy: Default::default(),
            http: Default::default(),
            baseline: Default::default(),
            cache: Default::default(),
            registry: Registry::default(),
        };
        // The text encoder appends `_total` to counters itself.
        registry.register("tcp_open", "TCP connections opened", m.open_total.clone());
        registry.register("tcp_close", "TCP connections closed", m.close_total.clone());
        registry.register(
            "tcp_open_connections",
            "TCP connections currently open",
            m.open.clone(),
        );
        registry.register(
            "tcp_read_bytes",
            "Bytes read from accepted connections",
            m.read_bytes.clone(),
        );
        registry.register(
            "tcp_write_bytes",
            "Bytes written to accepted connections",
            m.write_bytes.clone(),
        );
        registry.register(
            "tls_handshake_failures",
            "Connections refused before forwarding, by reason",
            m.handshake_failures.clone(),
        );
        registry.register(
            "identity_cert_expiration_timestamp_seconds",
            "Expiry of the current SVID, Unix seconds",
            m.cert_expiration.clone(),
        );
        registry.register(
            "identity_cert_refresh",
            "SVIDs obtained",
            m.cert_refresh.clone(),
        );
        registry.register(
            "identity_cert_refresh_failures",
            "Failed SVID requests to the control plane",
            m.cert_refresh_failures.clone(),
        );
        registry.register(
            "endpoints_refresh_failures",
            "Failed endpoint map fetches",
            m.endpoints_refresh_failures.clone(),
        );
        registry.register(
            "control_plane_in_use",
            "1 for the control-plane address requests go to, 0 for those left",
            m.control_plane_in_use.clone(),
        );
        registry.register(
            "control_plane_failovers",
            "Moves from one control-plane address to another after it failed",
            m.control_plane_failovers.clone(),
        );
        m.policy.register(&mut registry);
        m.http.register(&mut registry);
        m.baseline.register(&mut registry);
        Metrics { registry, ..m }
    }

    /// The registry, for a subsystem that registers its own metrics at
    /// start (before the `Metrics` are shared).
    pub fn registry_mut(&mut self) -> &mut Registry {
        &mut self.registry
    }

    /// Keeps `control_plane_*` current as the control-plane client moves
    /// between addresses, and logs each move.
    pub fn control_plane_switch(&self) -> OnSwitch {
        let in_use = self.control_plane_in_use.clone();
        let failovers = self.control_plane_failovers.clone();
        Box::new(move |from, to| {
            let label = |a: SocketAddr| AddressLabels {
                address: a.to_string(),
            };
            if let Some(from) = from {
                in_use.get_or_create(&label(from)).set(0);
                failovers.inc();
                tracing::warn!(from = %from, to = %to, "control plane failed over to another address");
            } else {
                tracing::info!(address = %to, "control plane answering");
            }
            in_use.get_or_create(&label(to)).set(1);
        })
    }

    fn slot(direction: Direction, tls: bool) -> usize {
        (direction as usize) * 2 + tls as usize
    }

    /// The handles for a connection's labels: one atomic load and a map
    /// lookup when the peer was seen before.
    pub fn conn(&self, direction: Direction, peer: &str, tls: bool) -> Arc<ConnMetrics> {
        let slot = &self.cache[Self::slot(direction, tls)];
        if let Some(m) = slot.load().get(peer) {
            return m.clone();
        }
        let labels = ConnLabels {
            direction: direction_label(direction),
            peer: peer.to_owned(),
            tls: if tls { "true" } else { "false" }.to_owned(),
        };
        let m = Arc::new(ConnMetrics {
            open_total: self.open_total.get_or_create_owned(&labels),
            close_total: self.close_total.get_or_create_owned(&labels),
            open: self.open.get_or_create_owned(&labels),
            read_bytes: self.read_bytes.get_or_create_owned(&labels),
            write_bytes: self.write_bytes.get_or_create_owned(&labels),
        });
        slot.rcu(|map| {
            let mut map = PeerMap::clone(map);
            map.entry(peer.to_owned()).or_insert_with(|| m.clone());
            map
        });
        m
    }

    pub fn handshake_failure(&self, direction: Direction, reason: &'static str) {
        self.handshake_failures
            .get_or_create(&FailureLabels {
                direction: direction_label(direction),
                reason,
            })
            .inc();
    }

    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }
}

/// Tracks one open connection: counts open on creation, close on drop.
pub struct OpenConn(pub Arc<ConnMetrics>);

impl OpenConn {
    pub fn new(m: Arc<ConnMetrics>) -> OpenConn {
        m.open_total.inc();
        m.open.inc();
        OpenConn(m)
    }
}

impl Drop for OpenConn {
    fn drop(&mut self) {
        self.0.open.dec();
        self.0.close_total.inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_metrics_are_labelled_and_closed_on_drop() {
        let m = Metrics::new();
        {
            let c = OpenConn::new(m.conn(Direction::Ingress, "spiffe://td/a", true));
            c.0.read_bytes.inc_by(5);
            let text = m.encode();
            assert!(text.contains(
                r#"tcp_open_connections{direction="inbound",peer="spiffe://td/a",tls="true"} 1"#
            ));
        }
        let text = m.encode();
        assert!(text
            .contains(r#"tcp_close_total{direction="inbound",peer="spiffe://td/a",tls="true"} 1"#));
        assert!(text.contains(
            r#"tcp_read_bytes_total{direction="inbound",peer="spiffe://td/a",tls="true"} 5"#
        ));
        assert!(text.contains(
            r#"tcp_open_connections{direction="inbound",peer="spiffe://td/a",tls="true"} 0"#
        ));
        // The cached handle is the same series.
        assert!(Arc::ptr_eq(
            &m.conn(Direction::Ingress, "spiffe://td/a", true),
            &m.conn(Direction::Ingress, "spiffe://td/a", true)
        ));
    }

    #[test]
    fn handshake_failures_are_counted_by_reason() {
        let m = Metrics::new();
        m.handshake_failure(Direction::Ingress, "expired");
        assert!(m
            .encode()
            .contains(r#"tls_handshake_failures_total{direction="inbound",reason="expired"} 1"#));
    }
}
