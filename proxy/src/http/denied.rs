//! The answer to a request the policy denies: 403 with a short body, or for
//! gRPC a trailers-only response with grpc-status 7 (PERMISSION_DENIED),
//! both naming the policy and rule in `x-palisade-denied`.

use http::header::{self, HeaderValue};
use http::{Request, Response, StatusCode};
use palisade_policy::Decision;

use super::body::RespBody;
use super::headers;

pub fn is_grpc<B>(req: &Request<B>) -> bool {
    req.headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
}

/// The status a denied request is answered with: 403, or 200 for gRPC
/// (the denial is in `grpc-status`).
pub fn status<B>(req: &Request<B>) -> StatusCode {
    if is_grpc(req) {
        StatusCode::OK
    } else {
        StatusCode::FORBIDDEN
    }
}

/// The answer to a denied request.
pub fn response<B>(req: &Request<B>, d: &Decision) -> Response<RespBody> {
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
    *r.status_mut() = status(req);
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    h.insert(headers::DENIED.clone(), named);
    r
}

/// A request the learned baseline blocks (protect mode): 403 with
/// `x-palisade-denied: baseline`.
pub fn baseline_blocked() -> Response<RespBody> {
    let mut r = Response::new(RespBody::local("denied: not in the learned baseline\n"));
    *r.status_mut() = StatusCode::FORBIDDEN;
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    h.insert(
        headers::DENIED.clone(),
        HeaderValue::from_static("baseline"),
    );
    r
}

/// A request over its flow's learned rate (protect mode): 429, with
/// `retry-after` in whole seconds (rounded up) until the bucket ends.
pub fn baseline_throttled(retry_after_ms: u64) -> Response<RespBody> {
    let mut r = Response::new(RespBody::local("throttled: over the learned rate\n"));
    *r.status_mut() = StatusCode::TOO_MANY_REQUESTS;
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    h.insert(
        header::RETRY_AFTER,
        HeaderValue::from(retry_after_ms.div_ceil(1000).max(1)),
    );
    h.insert(
        headers::DENIED.clone(),
        HeaderValue::from_static("baseline"),
    );
    r
}
