//! Accept loops. The workload API port is hostile ground: a cap on
//! connections, a deadline for the TLS handshake and for request headers, a
//! small header buffer and bounded bodies, so garbage, half-open connections
//! and floods cost a bounded amount of memory and never take the server down.

use std::convert::Infallible;
use std::sync::Arc;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use rustls::pki_types::CertificateDer;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_rustls::TlsAcceptor;

use super::{webhook, workload, State};

/// Largest request head (request line plus headers) hyper buffers.
const MAX_HEAD_BYTES: usize = 16 * 1024;

/// The HTTPS ports: each has its own TLS config, routes and error metric.
#[derive(Debug, Clone, Copy)]
pub enum Port {
    /// The workload API.
    Api,
    /// The admission webhook (only bound when configured).
    Webhook,
}

impl Port {
    fn error(self, state: &State, kind: &'static str) {
        match self {
            Port::Api => state.metrics.api_error(kind),
            Port::Webhook => state.metrics.webhook_error(kind),
        }
    }

    fn tls(self, state: &State) -> Arc<rustls::ServerConfig> {
        match self {
            Port::Api => state.tls.load().config.clone(),
            Port::Webhook => {
                let w = state.webhook.as_ref().expect("bound only when configured");
                w.tls.load().config.clone()
            }
        }
    }
}

/// Serves one HTTPS port until the process exits.
pub async fn serve_tls(listener: TcpListener, state: Arc<State>, port: Port) {
    let slots = Arc::new(Semaphore::new(state.config.max_connections));
    loop {
        let (tcp, _peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                port.error(&state, "accept");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            port.error(&state, "connection_limit");
            drop(tcp);
            continue;
        };
        tokio::spawn(serve_conn(state.clone(), tcp, permit, port));
    }
}

/// Decrements the open-connections gauge however the connection ends.
struct OpenGuard(Arc<State>);

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.metrics.api_connections_open.dec();
    }
}

async fn serve_conn(state: Arc<State>, tcp: TcpStream, _permit: OwnedSemaphorePermit, port: Port) {
    state.metrics.api_connections_open.inc();
    let _open = OpenGuard(state.clone());
    let _ = tcp.set_nodelay(true);
    let deadline = state.config.handshake_timeout;
    let acceptor = TlsAcceptor::from(port.tls(&state));
    let tls = match tokio::time::timeout(deadline, acceptor.accept(tcp)).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "TLS handshake failed");
            port.error(&state, "tls_handshake");
            return;
        }
        Err(_) => {
            port.error(&state, "handshake_timeout");
            return;
        }
    };
    let peer: Arc<Option<CertificateDer<'static>>> = Arc::new(
        tls.get_ref()
            .1
            .peer_certificates()
            .and_then(|c| c.first())
            .map(|c| c.clone().into_owned()),
    );
    let svc_state = state.clone();
    let svc = service_fn(move |req| {
        let state = svc_state.clone();
        let peer = peer.clone();
        async move {
            let resp = match port {
                Port::Api => workload::handle(&state, peer.as_ref().as_ref(), req).await,
                Port::Webhook => webhook::handle(&state, req).await,
            };
            Ok::<_, Infallible>(resp)
        }
    });
    let conn = http1::Builder::new()
        .timer(TokioTimer::new())
        // Also bounds how long an idle keep-alive connection is kept.
        .header_read_timeout(deadline)
        .max_buf_size(MAX_HEAD_BYTES)
        .serve_connection(TokioIo::new(tls), svc);
    if let Err(e) = conn.await {
        let kind = if e.is_timeout() {
            "header_timeout"
        } else if e.is_parse() || e.is_parse_too_large() {
            "bad_http"
        } else {
            "connection"
        };
        tracing::debug!(error = %e, kind, "connection ended with an error");
        port.error(&state, kind);
    }
}

/// Plain-HTTP /metrics for scrapers that do not speak the API's TLS.
pub async fn serve_metrics(listener: TcpListener, state: Arc<State>) {
    loop {
        let Ok((tcp, _)) = listener.accept().await else {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            continue;
        };
        let state = state.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |_req| {
                let body = state.metrics.encode();
                async move {
                    Ok::<_, Infallible>(super::http::text(
                        http::StatusCode::OK,
                        workload::METRICS_CONTENT_TYPE,
                        body,
                    ))
                }
            });
            let _ = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(std::time::Duration::from_secs(10))
                .serve_connection(TokioIo::new(tcp), svc)
                .await;
        });
    }
}
