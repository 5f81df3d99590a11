//! Per-request authorization and the answers to a denied request: 403 with
//! a short body, or for gRPC a trailers-only response with grpc-status 7
//! (PERMISSION_DENIED), both naming the policy and rule in
//! `x-palisade-denied`.

use http::header::{self, HeaderValue};
use http::{Request, Response, StatusCode};
use palisade_policy::{Decision, Direction as PolicyDirection, HttpInfo, Peer};

use super::body::RespBody;
use super::{authority, headers, Conn};
use crate::authz;
use crate::metrics::Direction;

/// Decide one request against the policy in force now (one atomic load),
/// and count the decision.
pub fn check<B>(conn: &Conn, req: &Request<B>) -> Decision {
    let (method, path, host) = (req.method().as_str(), req.uri().path(), authority(req));
    let rt = &conn.rt;
    let d = match conn.direction {
        Direction::Inbound => authz::http_request(
            rt,
            conn.peer.as_ref(),
            conn.client,
            conn.port,
            method,
            path,
            host,
        ),
        Direction::Outbound => {
            let peer = match &conn.peer {
                Some(id) => Peer::Identity(id),
                None => Peer::Address(conn.upstream.ip()),
            };
            let http = HttpInfo { method, path, host };
            authz::decide_now(rt, PolicyDirection::Egress, peer, conn.port, Some(http))
        }
    };
    rt.metrics
        .http
        .authz(conn.direction)
        .count(&d, conn.peer_label());
    if !d.is_allowed() {
        tracing::info!(
            direction = conn.direction.as_str(),
            client.addr = %conn.client,
            peer = %conn.peer_name,
            method,
            path,
            authz.policy = %d.label(),
            "HTTP request denied"
        );
    }
    d
}

pub fn is_grpc<B>(req: &Request<B>) -> bool {
    req.headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
}

/// The answer to a denied request.
pub fn denied<B>(req: &Request<B>, d: &Decision) -> Response<RespBody> {
    let label = d.label();
    let named = HeaderValue::try_from(label.as_str()).unwrap_or(HeaderValue::from_static("policy"));
    if is_grpc(req) {
        // Trailers-only: status and grpc-status in one HEADERS frame.
        let mut r = Response::new(RespBody::empty());
        let h = r.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/grpc"),
        );
        h.insert("grpc-status", HeaderValue::from_static("7"));
        if let Ok(m) = HeaderValue::try_from(format!("denied by policy {label}")) {
            h.insert("grpc-message", m);
        }
        h.insert(headers::DENIED.clone(), named);
        return r;
    }
    let mut r = Response::new(RespBody::local(format!("denied by policy {label}\n")));
    *r.status_mut() = StatusCode::FORBIDDEN;
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    h.insert(headers::DENIED.clone(), named);
    r
}
