//! Outbound: accept the app's connection, find its destination and the
//! identity that destination must prove, authorize, then originate mTLS with
//! the workload's SVID (or pass plaintext through / deny when unmeshed).

pub mod endpoints;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;

use arc_swap::ArcSwap;
use palisade_policy::{Direction, SpiffeId};
use tokio::net::{TcpListener, TcpStream};

use crate::authz::{self, OutboundCheck};
use crate::config::{Protocol, Unmeshed};
use crate::forward::{forward, log_end};
use crate::http;
use crate::http::detect::{detect, Detected};
use crate::io::Prefixed;
use crate::metrics::{OpenConn, UNAUTHENTICATED};
use crate::{accept_loop, baseline, connect, transparent, Runtime};
use palisade_policy::baseline::Protocol as Carried;

pub use endpoints::EndpointMap;

const DIR: Direction = Direction::Egress;

/// Where a listener's connections go: the destination and the identity it
/// must prove.
#[derive(Debug, Clone)]
pub enum Upstream {
    /// Explicit mode: this listener always goes to one sidecar.
    Route {
        destination: SocketAddr,
        identity: SpiffeId,
        protocol: Protocol,
    },
    /// Transparent mode: the original destination, looked up in the map.
    Transparent {
        endpoints: Arc<ArcSwap<EndpointMap>>,
        unmeshed: Unmeshed,
        /// Destination port → protocol; absent ports are detected.
        protocols: Arc<BTreeMap<u16, Protocol>>,
    },
}

impl Upstream {
    /// What the app speaks to a destination on `port`.
    fn protocol(&self, port: u16) -> Protocol {
        match self {
            Upstream::Route { protocol, .. } => *protocol,
            Upstream::Transparent { protocols, .. } => {
                protocols.get(&port).copied().unwrap_or_default()
            }
        }
    }
}

pub async fn serve(rt: Arc<Runtime>, listener: TcpListener, upstream: Upstream) {
    accept_loop(rt, listener, DIR, upstream, handle).await
}

fn refuse(rt: &Runtime, client: SocketAddr, reason: &'static str, detail: &dyn std::fmt::Display) {
    crate::refuse(rt, DIR, client, reason, detail)
}

async fn handle(rt: Arc<Runtime>, upstream: Arc<Upstream>, app: TcpStream, client: SocketAddr) {
    let t = &rt.timeouts;
    let (dst, expected, unmeshed) = match &*upstream {
        Upstream::Route {
            destination,
            identity,
            ..
        } => (*destination, Some(identity.clone()), Unmeshed::Deny),
        Upstream::Transparent {
            endpoints,
            unmeshed,
            ..
        } => {
            let dst = match transparent::original_dst(&app) {
                Ok(d) if app.local_addr().ok() != Some(d) => d,
                _ => {
                    return refuse(
                        &rt,
                        client,
                        "no_original_dst",
                        &"connection was not redirected",
                    )
                }
            };
            (dst, endpoints.load().lookup(dst).cloned(), *unmeshed)
        }
    };
    // Subscribe before deciding, so no policy swap goes unseen.
    let mut policy = rt.policy.subscribe();
    let check = OutboundCheck {
        destination_id: expected.as_ref(),
        destination: dst,
    };
    let peer = authz::peer_label(expected.as_ref());
    let decision = authz::outbound(&rt, &check);
    authz::record(&rt, DIR, &decision, expected.as_ref(), dst, client);
    if !decision.is_allowed() {
        return;
    }
    // Only meshed destinations are spoken to in HTTP: their sidecar enforces
    // ingress per request. Unmeshed traffic stays opaque.
    let protocol = upstream.protocol(dst.port());
    let (proto, app) = match &expected {
        Some(_) => match detect(app, protocol, None, t.detect).await {
            Ok(x) => x,
            Err(e) => {
                return tracing::debug!(client.addr = %client, error = %e, "closed during detection")
            }
        },
        None => (Detected::Opaque, Prefixed::new(app)),
    };
    let seen = |protocol| baseline::Observed {
        direction: DIR,
        peer: expected.as_ref(),
        peer_addr: dst,
        local_addr: client,
        port: dst.port(),
        protocol,
        http: None,
    };
    if let (Some(id), true) = (&expected, proto != Detected::Opaque) {
        if !baseline::admit_connection(&rt, &seen(Carried::Http), client).await {
            return;
        }
        let id = id.clone();
        return http::outbound::serve(rt, app, id, client, dst, protocol, proto).await;
    }
    if decision.http_required {
        return refuse(
            &rt,
            client,
            "http_only",
            &format_args!("{} allows only HTTP requests", decision.matched),
        );
    }
    if expected.is_none() && unmeshed == Unmeshed::Deny {
        return refuse(
            &rt,
            client,
            "unmeshed_denied",
            &format_args!("{dst} is not in the mesh"),
        );
    }
    if !baseline::admit_connection(&rt, &seen(Carried::Opaque), client).await {
        return;
    }
    let Some(expected) = &expected else {
        // Unmeshed destination, passthrough chosen.
        let tcp = match connect::tcp(dst, t.connect).await {
            Ok(s) => s,
            Err(e) => return refuse(&rt, client, e.reason(), &e),
        };
        let open = OpenConn::new(rt.metrics.conn(DIR, UNAUTHENTICATED, false));
        let ended = tokio::select! {
            ended = forward(app, tcp, &open.0, t.idle) => ended,
            d = authz::revoked(&mut policy, || authz::outbound(&rt, &check)) => {
                return authz::terminated(&rt, DIR, &d, None, dst, client);
            }
        };
        return log_end(client, UNAUTHENTICATED, ended);
    };
    let stream = match connect::mtls(&rt, dst, expected, None).await {
        Ok(s) => s,
        Err(e) => return refuse(&rt, client, e.reason(), &e),
    };
    let open = OpenConn::new(rt.metrics.conn(DIR, expected.as_str(), true));
    tracing::debug!(client.addr = %client, server.addr = %dst, server.id = %expected, "outbound mTLS connection");
    let ended = tokio::select! {
        ended = forward(app, stream, &open.0, t.idle) => ended,
        d = authz::revoked(&mut policy, || authz::outbound(&rt, &check)) => {
            return authz::terminated(&rt, DIR, &d, Some(expected), dst, client);
        }
    };
    log_end(client, peer, ended);
}
