//! Serving one HTTP connection with hyper, with the limits applied: for
//! HTTP/1 the head guard (smuggling, header size/count, 408) and hyper's
//! own caps; for HTTP/2 concurrent streams, per-stream flow control, the
//! preface and header-block timeouts, keep-alive pings, the rapid-reset and
//! CONTINUATION-flood caps (GOAWAY ENHANCE_YOUR_CALM) and the header list
//! size. A drain asks the connection to finish gracefully.

use std::convert::Infallible;
use std::future::Future;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use http::{Method, Request, Response};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use palisade_policy::normalize::Handling;
use tokio::io::{AsyncRead, AsyncWrite};

use super::body::RespBody;
use super::detect::Detected;
use super::h1_guard::{GuardLimits, H1Guard};
use super::h2_frames::{FrameCounter, FrameCounts};
use super::Conn;
use crate::io::Counted;
use crate::metrics::{direction_label, OpenConn};

/// Drive a hyper connection; on drain, ask it to finish what it has
/// started (GOAWAY / `Connection: close`) and wait for that. A macro: the
/// HTTP/1 and HTTP/2 connection types share no trait for it.
macro_rules! until_drained {
    ($conn:expr, $stop:expr) => {{
        let c = $conn;
        tokio::pin!(c);
        tokio::select! {
            r = c.as_mut() => r,
            _ = $stop.cancelled() => {
                c.as_mut().graceful_shutdown();
                c.await
            }
        }
    }};
}

/// Serve `io` as `proto` until the client is done, the connection breaks a
/// limit, or a drain ends it, counted like any connection under the peer's
/// label. `handle` answers each request.
pub async fn serve<S, F, Fut>(conn: Arc<Conn>, io: S, proto: Detected, handle: F)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    F: Fn(Arc<Conn>, Request<Incoming>) -> Fut + Send + Sync + Copy + 'static,
    Fut: Future<Output = Result<Response<RespBody>, Infallible>> + Send + 'static,
{
    let rt = conn.rt.clone();
    let tls = conn.peer.is_some();
    let open = OpenConn::new(rt.metrics.conn(conn.direction, conn.peer_label(), tls));
    let io = Counted::new(io, open.0.clone());
    let s = &rt.http.settings;
    let svc = {
        let conn = conn.clone();
        service_fn(move |req: Request<Incoming>| {
            let head = req.method() == Method::HEAD;
            let answer = handle(conn.clone(), req);
            async move {
                let resp = answer.await?;
                // A HEAD answer has no body: over HTTP/2 one would reset the
                // stream. Only the proxy's own answers can carry one.
                Ok::<_, Infallible>(if head {
                    resp.map(RespBody::headless)
                } else {
                    resp
                })
            }
        })
    };
    let stop = rt.drain.stop_accepting().clone();
    let frames = Arc::new(FrameCounts::default());
    let result = match proto {
        Detected::Http2 => {
            let io = FrameCounter::new(io, frames.clone(), s.header_read_timeout);
            let mut b = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
            b.timer(TokioTimer::new())
                .max_concurrent_streams(s.max_concurrent_streams)
                .max_pending_accept_reset_streams(s.max_pending_resets)
                .max_header_list_size(s.max_header_bytes.min(u32::MAX as usize) as u32)
                .initial_stream_window_size(s.stream_window_bytes)
                .initial_connection_window_size(s.connection_window())
                .adaptive_window(false)
                .keep_alive_interval(s.ping_interval)
                .keep_alive_timeout(s.ping_timeout);
            until_drained!(b.serve_connection(TokioIo::new(io), svc), stop)
        }
        Detected::Http1 | Detected::Opaque => {
            let limits = GuardLimits {
                max_header_bytes: s.max_header_bytes,
                max_headers: s.max_headers,
                header_read_timeout: s.header_read_timeout,
                idle_timeout: rt.timeouts.idle,
                reject_fragment: s.normalization.fragment == Handling::Reject,
            };
            let guard = H1Guard::new(io, limits, conn.clone(), conn.guard.clone());
            let mut b = hyper::server::conn::http1::Builder::new();
            b.timer(TokioTimer::new())
                .max_buf_size(s.max_header_bytes)
                .max_headers(s.max_headers)
                // The guard answers slow heads with 408; hyper would only close.
                .header_read_timeout(None);
            let c = b.serve_connection(TokioIo::new(guard), svc);
            until_drained!(c.with_upgrades(), stop)
        }
    };
    if let Err(e) = result {
        let reason = classify(&e, &frames);
        if let Some(reason) = reason {
            if !conn.guard.reported.swap(true, Ordering::Relaxed) {
                rt.metrics.http.violation(conn.direction, reason);
            }
        }
        tracing::debug!(
            direction = direction_label(conn.direction),
            client.addr = %conn.client,
            reason = reason.unwrap_or("other"),
            error = ?e,
            "HTTP connection ended with an error"
        );
    }
}

/// The limit a connection error stands for, if any. Only on the error path,
/// so formatting the error chain is fine.
fn classify(e: &hyper::Error, frames: &FrameCounts) -> Option<&'static str> {
    if e.is_parse_too_large() {
        return Some("header_too_large");
    }
    if e.is_parse() {
        return Some("malformed_request");
    }
    if let Some(reason) = frames.timeout_reason() {
        return Some(reason);
    }
    let mut text = format!("{e:?}");
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    // h2 drops the GOAWAY's debug data from the error it returns.
    if text.contains("ENHANCE_YOUR_CALM") {
        Some(frames.calm_reason())
    } else {
        None
    }
}
