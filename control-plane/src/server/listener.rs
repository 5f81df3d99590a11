//! Accept loops. The workload API port is hostile ground: a cap on
//! connections, a deadline for the TLS handshake and for request headers, a
//! small header buffer and bounded bodies, so garbage, half-open connections
//! and floods cost a bounded amount of memory and never take the server down.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use rustls::pki_types::CertificateDer;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_rustls::TlsAcceptor;

use super::{workload, State};

/// Largest request head (request line plus headers) hyper buffers.
const MAX_HEAD_BYTES: usize = 16 * 1024;

/// Serves the HTTPS workload API until the process exits.
pub async fn serve_api(listener: TcpListener, state: Arc<State>) {
    let max = state.config.max_connections;
    let slots = Arc::new(Semaphore::new(max));
    let mut refused = Refusals::default();
    let mut report = tokio::time::interval(REFUSAL_LOG_INTERVAL);
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = report.tick() => {
                refused.log_if_due(max);
                continue;
            }
        };
        let (tcp, _peer) = match accepted {
            Ok(c) => c,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                state.metrics.api_error("accept");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            state.metrics.api_error("connection_limit");
            refuse(tcp);
            refused.count += 1;
            refused.log_if_due(max);
            continue;
        };
        tokio::spawn(serve_conn(state.clone(), tcp, permit));
    }
}

/// Raises the soft open-file limit to the hard one, since each connection
/// is a descriptor, and says what it got and whether `max_connections` fits.
pub fn raise_open_file_limit(max_connections: usize) {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    // The state directory, the admin socket, watchers, logs.
    const RESERVED: u64 = 64;
    let (soft, hard) = match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok(l) => l,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the open-file limit");
            return;
        }
    };
    let soft = if soft < hard {
        match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
            Ok(()) => hard,
            Err(e) => {
                tracing::warn!(error = %e, soft, hard, "cannot raise the open-file limit");
                soft
            }
        }
    } else {
        soft
    };
    if (max_connections as u64).saturating_add(RESERVED) > soft {
        tracing::warn!(
            open_files = soft,
            max_connections,
            "the open-file limit is below --max-connections: accepts past it fail; raise the hard limit (LimitNOFILE, ulimit -Hn) or lower --max-connections"
        );
    } else {
        tracing::info!(open_files = soft, max_connections, "open-file limit");
    }
}

/// At most one log line per this long about refused connections.
const REFUSAL_LOG_INTERVAL: Duration = Duration::from_secs(1);

/// Closes a connection over the cap with a reset: answering in TLS would
/// cost a handshake per refusal, and a reset is what clients already treat
/// as "this replica is unavailable" (the sidecar tries the next address,
/// then backs off with jitter).
fn refuse(tcp: TcpStream) {
    let _ = tcp.set_zero_linger();
}

/// Refusals since the last log line.
#[derive(Default)]
struct Refusals {
    count: u64,
    logged_at: Option<Instant>,
}

impl Refusals {
    /// One line for the refusals so far, unless a line went out less than
    /// `REFUSAL_LOG_INTERVAL` ago (the accept loop's tick catches up).
    fn log_if_due(&mut self, max: usize) {
        let due = self
            .logged_at
            .is_none_or(|t| t.elapsed() >= REFUSAL_LOG_INTERVAL);
        if self.count == 0 || !due {
            return;
        }
        tracing::warn!(
            refused = self.count,
            max_connections = max,
            "workload API at its connection limit: refused {} connections since the last report (raise --max-connections, or add replicas)",
            self.count
        );
        self.count = 0;
        self.logged_at = Some(Instant::now());
    }
}

/// Decrements the open-connections gauge however the connection ends.
struct OpenGuard(Arc<State>);

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.metrics.api_connections_open.dec();
    }
}

async fn serve_conn(state: Arc<State>, tcp: TcpStream, _permit: OwnedSemaphorePermit) {
    state.metrics.api_connections_open.inc();
    let _open = OpenGuard(state.clone());
    let _ = tcp.set_nodelay(true);
    let deadline = state.config.handshake_timeout;
    let acceptor = TlsAcceptor::from(state.tls.load().config.clone());
    let tls = match tokio::time::timeout(deadline, acceptor.accept(tcp)).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "TLS handshake failed");
            state.metrics.api_error("tls_handshake");
            return;
        }
        Err(_) => {
            state.metrics.api_error("handshake_timeout");
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
        async move { Ok::<_, Infallible>(workload::handle(&state, peer.as_ref().as_ref(), req).await) }
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
        state.metrics.api_error(kind);
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
