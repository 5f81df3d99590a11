//! Transparent mode's map of meshed destinations to the SPIFFE ID each must
//! present, fetched from the control plane (GET /v1/endpoints) and swapped in
//! whole; a failed fetch keeps the last good map.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use palisade_identity::api::EndpointsResponse;
use palisade_policy::SpiffeId;
use tokio_util::sync::CancellationToken;

use crate::identity::{ControlPlane, CredentialsCell};
use crate::metrics::Metrics;

#[derive(Debug, Default)]
pub struct EndpointMap {
    pub version: u64,
    /// False until the first answer from the control plane: transparent
    /// mode is not ready before it knows which destinations are meshed.
    pub loaded: bool,
    exact: HashMap<SocketAddr, SpiffeId>,
    any_port: HashMap<IpAddr, SpiffeId>,
}

impl EndpointMap {
    /// Build from the API answer, skipping (and logging) malformed entries.
    pub fn from_response(resp: &EndpointsResponse) -> EndpointMap {
        let mut map = EndpointMap {
            version: resp.version,
            loaded: true,
            ..Default::default()
        };
        for e in &resp.endpoints {
            let Ok(id) = SpiffeId::parse(&e.identity) else {
                tracing::warn!(address = %e.address, identity = %e.identity, "endpoint with a bad SPIFFE ID skipped");
                continue;
            };
            if let Ok(sa) = e.address.parse::<SocketAddr>() {
                map.exact.insert(sa, id);
            } else if let Ok(ip) = e.address.parse::<IpAddr>() {
                map.any_port.insert(ip, id);
            } else {
                tracing::warn!(address = %e.address, "endpoint with a bad address skipped");
            }
        }
        map
    }

    /// The identity `dst` must present, or `None` if it is not meshed.
    pub fn lookup(&self, dst: SocketAddr) -> Option<&SpiffeId> {
        self.exact
            .get(&dst)
            .or_else(|| self.any_port.get(&dst.ip()))
    }

    pub fn len(&self) -> usize {
        self.exact.len() + self.any_port.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Refresh `map` every `every` once credentials exist, until `stop`.
pub async fn refresh_loop(
    cp: Arc<ControlPlane>,
    creds: CredentialsCell,
    map: Arc<ArcSwap<EndpointMap>>,
    metrics: Arc<Metrics>,
    every: Duration,
    stop: CancellationToken,
) {
    loop {
        let wait = match creds.load_full() {
            None => Duration::from_millis(200),
            Some(c) => {
                match cp.endpoints(&c).await {
                    Ok(resp) if resp.version != map.load().version || !map.load().loaded => {
                        let new = EndpointMap::from_response(&resp);
                        tracing::info!(
                            version = new.version,
                            endpoints = new.len(),
                            "endpoint map updated"
                        );
                        map.store(Arc::new(new));
                    }
                    Ok(_) => {}
                    Err(e) => {
                        metrics.endpoints_refresh_failures.inc();
                        tracing::warn!(error = %e, "endpoint map fetch failed; keeping the last one");
                    }
                }
                every
            }
        };
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use palisade_identity::api::Endpoint;

    #[test]
    fn exact_address_wins_over_any_port_and_bad_entries_are_skipped() {
        let ep = |a: &str, i: &str| Endpoint {
            address: a.into(),
            identity: i.into(),
        };
        let m = EndpointMap::from_response(&EndpointsResponse {
            version: 3,
            endpoints: vec![
                ep("10.0.0.7", "spiffe://td/ns/a/sa/any"),
                ep("10.0.0.7:8080", "spiffe://td/ns/a/sa/web"),
                ep("nonsense", "spiffe://td/x"),
                ep("10.0.0.8:1", "not-a-spiffe-id"),
            ],
        });
        assert_eq!(m.len(), 2);
        let id = |s: &str| m.lookup(s.parse().unwrap()).map(|i| i.as_str().to_owned());
        assert_eq!(
            id("10.0.0.7:8080").as_deref(),
            Some("spiffe://td/ns/a/sa/web")
        );
        assert_eq!(
            id("10.0.0.7:9090").as_deref(),
            Some("spiffe://td/ns/a/sa/any")
        );
        assert_eq!(id("10.0.0.8:1"), None);
    }
}
