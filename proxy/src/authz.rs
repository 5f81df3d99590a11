//! Authorization: the one place the proxy asks the policy engine. Each call
//! loads the policy in force once (arc-swap) and the local identity from the
//! current SVID, builds a `Request` and calls `palisade_policy::decide`.

use std::net::SocketAddr;

use palisade_policy::{
    decide, Decision, DefaultPolicy, Direction, HttpInfo, Matched, Mode, Peer, Request, SpiffeId,
    Verdict,
};

use tokio::sync::watch;

use crate::events::{Denial, Endpoint, Flow, HttpFlow};
use crate::metrics::{direction_label, UNAUTHENTICATED};
use crate::Runtime;

/// What the proxy knows about an inbound connection once it is identified.
#[derive(Debug)]
pub struct InboundCheck<'a> {
    /// `None` for plaintext on a permissive port.
    pub peer: Option<&'a SpiffeId>,
    pub source: SocketAddr,
    /// The local app's port the connection is for.
    pub port: u16,
}

/// What the proxy knows about an outbound connection before connecting.
#[derive(Debug)]
pub struct OutboundCheck<'a> {
    /// The identity the destination must prove; `None` when unmeshed.
    pub destination_id: Option<&'a SpiffeId>,
    pub destination: SocketAddr,
}

/// The connection-level (L4) decision for an inbound connection: on the
/// peer's identity, or its source address when plaintext, and the port.
pub fn inbound(rt: &Runtime, check: &InboundCheck<'_>) -> Decision {
    let peer = peer(check.peer, check.source);
    decide_now(rt, Direction::Ingress, peer, check.port, None)
}

/// The connection-level (L4) decision for an outbound connection: on the
/// identity the destination must prove, or its address when unmeshed.
pub fn outbound(rt: &Runtime, check: &OutboundCheck<'_>) -> Decision {
    let peer = peer(check.destination_id, check.destination);
    decide_now(rt, Direction::Egress, peer, check.destination.port(), None)
}

/// The per-request (L7) decision for an HTTP request, against the policy in
/// force right now, so a reload applies to the next request on a kept-alive
/// connection. `id` is the peer's identity (inbound: the caller, `None` for
/// plaintext; outbound: the destination's), else `addr` is matched against
/// `cidr` peers; `port` is the local app port or the destination port.
pub fn http_request(
    rt: &Runtime,
    direction: Direction,
    id: Option<&SpiffeId>,
    addr: SocketAddr,
    port: u16,
    http: HttpInfo<'_>,
) -> Decision {
    decide_now(rt, direction, peer(id, addr), port, Some(http))
}

/// The peer as policies match it: its identity when it proved one, else its
/// address.
fn peer(id: Option<&SpiffeId>, addr: SocketAddr) -> Peer<'_> {
    match id {
        Some(id) => Peer::Identity(id),
        None => Peer::Address(addr.ip()),
    }
}

/// One policy load, one credentials load, one `decide()`.
pub fn decide_now(
    rt: &Runtime,
    direction: Direction,
    peer: Peer<'_>,
    port: u16,
    http: Option<HttpInfo<'_>>,
) -> Decision {
    let creds = rt.creds.load();
    // Without an SVID the proxy does not know which policies select it:
    // fail closed.
    let Some(local) = creds.as_ref().map(|c| &c.svid.id) else {
        return no_local_identity();
    };
    let policy = rt.policy.load();
    decide(
        &policy.compiled,
        &Request {
            direction,
            local,
            peer,
            port,
            http,
        },
    )
}

/// The `peer` metrics label: the SPIFFE ID, or `unauthenticated` for an
/// address (IPs are not labels: unbounded cardinality).
pub fn peer_label(peer: Option<&SpiffeId>) -> &str {
    peer.map_or(UNAUTHENTICATED, SpiffeId::as_str)
}

/// Counts a connection-level decision; logs a denial (or an audit-mode
/// would-deny) with the policy and rule that made it, and reports a denial
/// as a security event. `peer` is the remote side (inbound: the caller;
/// outbound: the destination) at `peer_addr`; `local_addr` the local app.
pub fn record(
    rt: &Runtime,
    direction: Direction,
    d: &Decision,
    peer: Option<&SpiffeId>,
    peer_addr: SocketAddr,
    local_addr: SocketAddr,
) {
    let label = peer_label(peer);
    rt.metrics.policy.tcp(direction).count(d, label);
    let (client, port) = match direction {
        Direction::Ingress => (peer_addr, local_addr.port()),
        Direction::Egress => (local_addr, peer_addr.port()),
    };
    if !d.is_allowed() {
        tracing::info!(
            direction = direction_label(direction), client.addr = %client, peer = label, port,
            authz.policy = d.matched.policy_label(), authz.rule = d.matched.rule_label(),
            reason = %d.matched, "connection denied by policy"
        );
        report_denial(
            rt,
            direction,
            d,
            peer,
            peer_addr,
            local_addr,
            Denied::Connection,
        );
    } else if d.would_deny {
        tracing::info!(
            direction = direction_label(direction), client.addr = %client, peer = label, port,
            authz.policy = d.matched.policy_label(), authz.rule = d.matched.rule_label(),
            reason = %d.matched, "audit: connection would be denied by policy; let through"
        );
    }
}

/// What a policy denial stopped.
#[derive(Debug, Clone, Copy)]
pub enum Denied<'a> {
    /// A connection, as it came.
    Connection,
    /// An open connection, closed because a reloaded policy denies it.
    Revoked,
    /// A request: its method and path, and the status answered.
    Request(HttpFlow<'a>, u16),
}

/// Reports a policy denial to the security-event sinks. Sides as in
/// [`record`]. Called only for denials, so the local identity is loaded
/// only then.
pub fn report_denial(
    rt: &Runtime,
    direction: Direction,
    d: &Decision,
    peer: Option<&SpiffeId>,
    peer_addr: SocketAddr,
    local_addr: SocketAddr,
    what: Denied<'_>,
) {
    if !rt.events.is_enabled() {
        return;
    }
    let creds = rt.creds.load();
    let remote = Endpoint {
        addr: peer_addr,
        id: peer.map(SpiffeId::as_str),
    };
    let local = Endpoint {
        addr: local_addr,
        id: creds.as_ref().map(|c| c.svid.id.as_str()),
    };
    let (src, dst) = match direction {
        Direction::Ingress => (remote, local),
        Direction::Egress => (local, remote),
    };
    let (http, http_status) = match what {
        Denied::Request(h, status) => (Some(h), Some(status)),
        Denied::Connection | Denied::Revoked => (None, None),
    };
    rt.events.denied(&Denial {
        flow: Flow {
            direction,
            src,
            dst,
            http,
        },
        matched: &d.matched,
        http_status,
        revoked: matches!(what, Denied::Revoked),
    });
}

/// Resolves once a policy swap denies a live opaque connection, with the
/// denying decision; until then it sleeps on the generation watch (`policy`
/// must be subscribed before the connection's first decision, so no swap
/// is missed). A connection that only HTTP rules allow is denied too:
/// opaque bytes are never checked per request.
pub async fn revoked(
    policy: &mut watch::Receiver<u64>,
    mut recheck: impl FnMut() -> Decision,
) -> Decision {
    loop {
        if policy.changed().await.is_err() {
            // The runtime is going away; the connection ends with it.
            return std::future::pending().await;
        }
        let d = recheck();
        if !d.is_allowed() || d.http_required {
            return d;
        }
    }
}

/// Counts, logs and reports as a security event a live connection closed
/// by a policy swap. Sides as in [`record`].
pub fn terminated(
    rt: &Runtime,
    direction: Direction,
    d: &Decision,
    peer: Option<&SpiffeId>,
    peer_addr: SocketAddr,
    local_addr: SocketAddr,
) {
    let label = peer_label(peer);
    rt.metrics.policy.terminated(direction, d, label);
    let client = match direction {
        Direction::Ingress => peer_addr,
        Direction::Egress => local_addr,
    };
    tracing::info!(
        direction = direction_label(direction), client.addr = %client, peer = label,
        authz.policy = d.matched.policy_label(), authz.rule = d.matched.rule_label(),
        reason = %d.matched, "open connection closed: the new policy denies it"
    );
    report_denial(
        rt,
        direction,
        d,
        peer,
        peer_addr,
        local_addr,
        Denied::Revoked,
    );
}

fn no_local_identity() -> Decision {
    Decision {
        verdict: Verdict::Deny,
        would_deny: false,
        matched: Matched::Default(DefaultPolicy::Deny),
        mode: Mode::Enforce,
        http_required: false,
    }
}
