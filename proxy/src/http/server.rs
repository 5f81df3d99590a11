//! Serving one HTTP connection with hyper, with the limits applied: for
//! HTTP/1 the head guard (smuggling, header size/count, 408) and hyper's
//! own caps; for HTTP/2 concurrent streams, per-stream flow control, the
//! preface and header-block timeouts, keep-alive pings, the rapid-reset and
//! CONTINUATION-flood caps (GOAWAY ENHANCE_YOUR_CALM) and the header list
//! size. A drain asks the connection to finish gracefully.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use http::header::{HeaderValue, CONNECTION};
use http::{Method, Request, Response};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use palisade_policy::normalize::Handling;
use palisade_policy::SpiffeId;
use tokio::io::{AsyncRead, AsyncWrite};

use super::body::RespBody;
use super::detect::Detected;
use super::h1_guard::{GuardLimits, H1Guard};
use super::h2_frames::{FrameCounter, FrameCounts};
use super::io::Metered;
use super::Conn;
use crate::config::Protocol;
use crate::metrics::{Direction, OpenConn};
use crate::{authz, Runtime};

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
/// limit, or a drain ends it. `handle` answers each request.
pub async fn serve<S, F, Fut>(conn: Arc<Conn>, io: S, proto: Detected, handle: F)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    F: Fn(Arc<Conn>, Request<Incoming>) -> Fut + Send + Sync + Copy + 'static,
    Fut: Future<Output = Result<Response<RespBody>, Infallible>> + Send + 'static,
{
    let rt = conn.rt.clone();
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
            direction = conn.direction.as_str(),
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

/// After a refused upgrade the HTTP/1 framing cannot be trusted any more
/// (the guard stopped following it): close once this response is sent.
pub fn close_after<B>(resp: &mut Response<B>) {
    resp.headers_mut()
        .insert(CONNECTION, HeaderValue::from_static("close"));
}

/// Once both sides switched protocols, copy bytes between them.
pub fn splice_upgrade(down: OnUpgrade, up: OnUpgrade, conn: Arc<Conn>) {
    tokio::spawn(async move {
        let (down, up) = match tokio::try_join!(down, up) {
            Ok(x) => x,
            Err(e) => {
                tracing::debug!(client.addr = %conn.client, error = %e, "upgrade failed");
                return;
            }
        };
        let (mut down, mut up) = (TokioIo::new(down), TokioIo::new(up));
        match tokio::io::copy_bidirectional(&mut down, &mut up).await {
            Ok((from_client, from_server)) => tracing::debug!(
                client.addr = %conn.client,
                from_client,
                from_server,
                "upgraded connection closed"
            ),
            Err(e) => {
                tracing::debug!(client.addr = %conn.client, error = %e, "upgraded connection ended")
            }
        }
    });
}

/// An inbound HTTP connection: counted like any connection, then served.
#[allow(clippy::too_many_arguments)]
pub async fn serve_inbound<S>(
    rt: Arc<Runtime>,
    io: S,
    peer: Option<SpiffeId>,
    client: SocketAddr,
    app: SocketAddr,
    protocol: Protocol,
    allow_get_body: bool,
    detected: Detected,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let open = OpenConn::new(rt.metrics.conn(
        Direction::Inbound,
        authz::peer_label(peer.as_ref()),
        peer.is_some(),
    ));
    tracing::debug!(client.addr = %client, app = %app, protocol = detected.as_str(), "inbound HTTP connection");
    let io = Metered::new(io, open.0.clone());
    let mut conn = Conn::new(
        rt,
        Direction::Inbound,
        peer,
        client,
        app,
        app.port(),
        protocol,
        detected,
    );
    conn.allow_get_body = allow_get_body;
    serve(Arc::new(conn), io, detected, super::inbound::handle).await;
}

/// An outbound HTTP connection from the app to a meshed destination.
pub async fn serve_outbound<S>(
    rt: Arc<Runtime>,
    io: S,
    destination_id: SpiffeId,
    client: SocketAddr,
    destination: SocketAddr,
    protocol: Protocol,
    detected: Detected,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let open = OpenConn::new(
        rt.metrics
            .conn(Direction::Outbound, destination_id.as_str(), true),
    );
    tracing::debug!(client.addr = %client, server.addr = %destination, protocol = detected.as_str(), "outbound HTTP connection");
    let io = Metered::new(io, open.0.clone());
    let conn = Conn::new(
        rt,
        Direction::Outbound,
        Some(destination_id),
        client,
        destination,
        destination.port(),
        protocol,
        detected,
    );
    serve(Arc::new(conn), io, detected, super::outbound::handle).await;
}
