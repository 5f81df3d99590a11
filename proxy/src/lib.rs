//! palisade-proxy: the sidecar. It moves bytes between workloads over SPIFFE
//! mTLS and asks `authz` before it does. One module per concern; the order of
//! work on a connection reads top to bottom in `inbound` and `outbound`.
#![forbid(unsafe_code)]

pub mod admin;
pub mod authz;
pub mod baseline;
pub mod config;
pub mod connect;
pub mod drain;
pub mod events;
pub mod forward;
pub mod http;
pub mod identity;
pub mod inbound;
pub mod io;
pub mod metrics;
pub mod outbound;
pub mod policy;
pub mod tls;
pub mod transparent;
pub mod workload_api;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use palisade_policy::Direction;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

use crate::config::Timeouts;
use crate::identity::CredentialsCell;
use crate::metrics::{direction_label, Metrics};

/// State shared by every listener; read-only on the hot path except for
/// atomics (credentials load, permit, counters).
pub struct Runtime {
    pub timeouts: Timeouts,
    pub creds: CredentialsCell,
    pub metrics: Arc<Metrics>,
    /// One permit per open proxied connection (`max_connections`).
    pub permits: Arc<Semaphore>,
    pub drain: drain::Drain,
    /// The segmentation policy in force; `authz` loads it once per decision.
    pub policy: Arc<policy::LivePolicy>,
    /// HTTP settings, the access log and pooled upstream connections.
    pub http: http::Http,
    /// Security events; disabled (no sinks) unless `events.sinks` is set.
    pub events: events::Emitter,
    /// The learned baseline every allowed flow is checked against.
    pub baseline: baseline::Live,
}

#[cfg(test)]
impl Runtime {
    /// Default settings, no SVID yet, no policy: for unit tests.
    pub(crate) fn without_identity() -> Runtime {
        Runtime {
            timeouts: Default::default(),
            creds: Default::default(),
            metrics: Arc::new(Metrics::new()),
            permits: Arc::new(Semaphore::new(1)),
            drain: Default::default(),
            policy: Default::default(),
            http: Default::default(),
            events: Default::default(),
            baseline: Default::default(),
        }
    }
}

/// Accept on `listener` until drain, running `handle` for each connection
/// under a connection permit. Over the limit, connections are closed at once
/// and counted with reason `max_connections`.
pub async fn accept_loop<T, F, Fut>(
    rt: Arc<Runtime>,
    listener: TcpListener,
    direction: Direction,
    target: T,
    handle: F,
) where
    T: Send + Sync + 'static,
    F: Fn(Arc<Runtime>, Arc<T>, TcpStream, SocketAddr) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let target = Arc::new(target);
    let stop = rt.drain.stop_accepting().clone();
    loop {
        let (tcp, client) = tokio::select! {
            _ = stop.cancelled() => return,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // Usually EMFILE: back off instead of spinning.
                    tracing::warn!(error = %e, direction = direction_label(direction), "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Ok(permit) = rt.permits.clone().try_acquire_owned() else {
            refuse(
                &rt,
                direction,
                client,
                "max_connections",
                &"connection limit reached",
            );
            continue;
        };
        let _ = tcp.set_nodelay(true);
        let conn = handle(rt.clone(), target.clone(), tcp, client);
        rt.drain.connections.spawn(async move {
            conn.await;
            drop(permit);
        });
    }
}

/// The kernel's host name (in a pod, the pod's name); `None` if unknown.
pub fn hostname() -> Option<String> {
    let h = std::fs::read_to_string("/proc/sys/kernel/hostname").ok()?;
    Some(h.trim().to_owned()).filter(|h| !h.is_empty())
}

/// Count a connection refused before forwarding, and say why.
pub fn refuse(
    rt: &Runtime,
    direction: Direction,
    client: SocketAddr,
    reason: &'static str,
    detail: &dyn std::fmt::Display,
) {
    rt.metrics.handshake_failure(direction, reason);
    tracing::info!(direction = direction_label(direction), client.addr = %client, reason, error = %detail, "connection refused");
}
