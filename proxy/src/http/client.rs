//! HTTP clients. Inbound: pooled connections to the local app (HTTP/1.1, or
//! HTTP/2 with prior knowledge). Outbound: multiplexed HTTP/2 connections
//! per destination sidecar over mTLS (ALPN `h2`), shared by every request
//! whatever the app spoke; upgrades get a dedicated HTTP/1.1 connection.
//! A pooled connection is found with two atomic loads and a map lookup.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use arc_swap::ArcSwap;
use hyper::client::conn::{http1, http2};
use hyper::{Request, Response};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use palisade_policy::SpiffeId;
use tokio::net::TcpStream;

use super::body::{ReqBody, RespBody, StreamSlot, Streams};
use crate::config::http::MAX_WINDOW;
use crate::connect::{self, ConnectError};
use crate::Runtime;

/// Why a request could not be sent upstream; the proxy answers 502.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error(transparent)]
    Connect(#[from] ConnectError),
    #[error("HTTP to {0}: {1}")]
    Http(SocketAddr, hyper::Error),
    #[error("HTTP to the app: {0}")]
    App(#[from] hyper_util::client::legacy::Error),
}

/// Connects to one fixed address whatever the request's authority says:
/// the authority stays the caller's, the socket goes to the app.
#[derive(Clone)]
pub struct FixedConnector {
    addr: SocketAddr,
    timeout: Duration,
}

impl tower::Service<hyper::Uri> for FixedConnector {
    type Response = TokioIo<TcpStream>;
    type Error = std::io::Error;
    type Future = Pin<Box<dyn Future<Output = std::io::Result<TokioIo<TcpStream>>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: hyper::Uri) -> Self::Future {
        let (addr, timeout) = (self.addr, self.timeout);
        Box::pin(async move { Ok(TokioIo::new(connect::tcp(addr, timeout).await?)) })
    }
}

pub type AppClient = Client<FixedConnector, ReqBody>;

/// Clients to local apps, keyed by (address, HTTP/2).
#[derive(Default)]
pub struct AppClients {
    clients: ArcSwap<HashMap<(SocketAddr, bool), AppClient>>,
}

impl AppClients {
    pub fn get(&self, rt: &Runtime, app: SocketAddr, h2: bool) -> AppClient {
        if let Some(c) = self.clients.load().get(&(app, h2)) {
            return c.clone();
        }
        let s = &rt.http.settings;
        let client = Client::builder(TokioExecutor::new())
            .timer(TokioTimer::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(s.pool_idle_timeout)
            .http2_only(h2)
            // Streams to the app are not capped here (the app's own limit
            // applies), so only the stream window bounds what one holds.
            .http2_initial_stream_window_size(s.stream_window_bytes)
            .http2_initial_connection_window_size(MAX_WINDOW)
            .http2_adaptive_window(false)
            .http2_keep_alive_interval(s.ping_interval)
            .http2_keep_alive_timeout(s.ping_timeout)
            .http2_keep_alive_while_idle(true)
            .http1_max_headers(s.max_headers.max(100))
            .build(FixedConnector {
                addr: app,
                timeout: rt.timeouts.connect,
            });
        self.clients.rcu(|m| {
            let mut m = HashMap::clone(m);
            m.entry((app, h2)).or_insert_with(|| client.clone());
            m
        });
        client
    }
}

/// One pooled HTTP/2 connection to a sidecar and the streams it carries now.
struct PeerConn {
    id: SpiffeId,
    sender: http2::SendRequest<ReqBody>,
    streams: AtomicU32,
    /// The destination's entry, to leave it once idle.
    peer: Weak<Peer>,
}

/// The connections to one destination sidecar.
#[derive(Default)]
struct Peer {
    conns: ArcSwap<Vec<Arc<PeerConn>>>,
    /// One connection opened at a time per destination, so a burst of
    /// requests does not open one each.
    opening: tokio::sync::Mutex<()>,
}

/// A stream counts on its connection until the response ends. The last
/// stream of a connection beyond a destination's first closes it.
impl Streams for PeerConn {
    fn release(&self) {
        if self.streams.fetch_sub(1, Ordering::AcqRel) != 1 {
            return;
        }
        let Some(peer) = self.peer.upgrade() else {
            return;
        };
        let this = |c: &Arc<PeerConn>| std::ptr::eq(Arc::as_ptr(c), self);
        let extra = |v: &[Arc<PeerConn>]| v.iter().skip(1).any(this);
        if !extra(&peer.conns.load()) {
            return;
        }
        peer.conns.rcu(|v| {
            let mut v = Vec::clone(v);
            if extra(&v) && self.streams.load(Ordering::Acquire) == 0 {
                v.retain(|c| !this(c));
            }
            v
        });
    }
}

/// HTTP/2 connections to other sidecars. A connection carries at most
/// `http.max_concurrent_streams` requests (what the other side admits); past
/// that, another connection to the same destination is opened, so streams
/// held by a client that stopped reading never keep others waiting.
#[derive(Default)]
pub struct PeerPool {
    peers: ArcSwap<HashMap<SocketAddr, Arc<Peer>>>,
}

impl PeerPool {
    /// Send over a pooled connection to `dst` (which must prove `id`) with a
    /// free stream, opening one if there is none. The response body holds
    /// the stream until it ends.
    pub async fn send(
        &self,
        rt: &Runtime,
        dst: SocketAddr,
        id: &SpiffeId,
        req: Request<ReqBody>,
    ) -> Result<Response<RespBody>, UpstreamError> {
        let limit = rt.http.settings.max_concurrent_streams;
        let peer = self.peer(dst);
        let conn = match claim(&peer, id, limit) {
            Some(c) => c,
            None => {
                let _one = peer.opening.lock().await;
                match claim(&peer, id, limit) {
                    Some(c) => c,
                    None => open(rt, &peer, dst, id).await?,
                }
            }
        };
        let mut sender = conn.sender.clone();
        let slot = StreamSlot::claimed(conn);
        let resp = sender
            .send_request(req)
            .await
            .map_err(|e| UpstreamError::Http(dst, e))?;
        Ok(resp.map(|b| RespBody::upstream(b).holding(slot)))
    }

    fn peer(&self, dst: SocketAddr) -> Arc<Peer> {
        if let Some(p) = self.peers.load().get(&dst) {
            return p.clone();
        }
        let mut peer = None;
        self.peers.rcu(|m| {
            let mut m = HashMap::clone(m);
            peer = Some(m.entry(dst).or_default().clone());
            m
        });
        peer.expect("rcu ran")
    }
}

/// An open connection to the right identity with room for one more stream,
/// which is counted on it.
fn claim(peer: &Peer, id: &SpiffeId, limit: u32) -> Option<Arc<PeerConn>> {
    peer.conns.load().iter().find_map(|c| {
        if c.id != *id || !c.sender.is_ready() {
            return None;
        }
        c.streams
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < limit).then_some(n + 1)
            })
            .ok()
            .map(|_| c.clone())
    })
}

/// A new connection to `dst`, added to the pool with one stream claimed.
async fn open(
    rt: &Runtime,
    peer: &Arc<Peer>,
    dst: SocketAddr,
    id: &SpiffeId,
) -> Result<Arc<PeerConn>, UpstreamError> {
    let s = &rt.http.settings;
    let tls = connect::mtls(rt, dst, id, Some(b"h2")).await?;
    let (sender, conn) = http2::Builder::new(TokioExecutor::new())
        .timer(TokioTimer::new())
        .initial_stream_window_size(s.stream_window_bytes)
        .initial_connection_window_size(s.connection_window())
        .adaptive_window(false)
        .keep_alive_interval(s.ping_interval)
        .keep_alive_timeout(s.ping_timeout)
        .keep_alive_while_idle(true)
        .handshake(TokioIo::new(tls))
        .await
        .map_err(|e| UpstreamError::Http(dst, e))?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(server.addr = %dst, error = %e, "HTTP/2 connection to sidecar ended");
        }
    });
    let conn = Arc::new(PeerConn {
        id: id.clone(),
        sender,
        streams: AtomicU32::new(1),
        peer: Arc::downgrade(peer),
    });
    peer.conns.rcu(|v| {
        let mut v: Vec<_> = v
            .iter()
            .filter(|c| !c.sender.is_closed())
            .cloned()
            .collect();
        v.push(conn.clone());
        v
    });
    tracing::debug!(server.addr = %dst, server.id = %id, "HTTP/2 connection to sidecar opened");
    Ok(conn)
}

/// A dedicated HTTP/1.1 connection to a sidecar, for one upgrade.
pub async fn upgrade_connection(
    rt: &Runtime,
    dst: SocketAddr,
    id: &SpiffeId,
) -> Result<http1::SendRequest<ReqBody>, UpstreamError> {
    let tls = connect::mtls(rt, dst, id, Some(b"http/1.1")).await?;
    let (sender, conn) = http1::handshake(TokioIo::new(tls))
        .await
        .map_err(|e| UpstreamError::Http(dst, e))?;
    tokio::spawn(async move {
        if let Err(e) = conn.with_upgrades().await {
            tracing::debug!(server.addr = %dst, error = %e, "upgrade connection to sidecar ended");
        }
    });
    Ok(sender)
}
