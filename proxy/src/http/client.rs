//! HTTP clients. Inbound: pooled connections to the local app (HTTP/1.1, or
//! HTTP/2 with prior knowledge). Outbound: one multiplexed HTTP/2 connection
//! per destination sidecar over mTLS (ALPN `h2`), shared by every request
//! whatever the app spoke; upgrades get a dedicated HTTP/1.1 connection.
//! A pooled connection is found with one atomic load and a map lookup.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use arc_swap::ArcSwap;
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper::{Request, Response};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use palisade_policy::SpiffeId;
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

use super::body::ReqBody;
use crate::{tls, Runtime};

/// Why a request could not be sent upstream; the proxy answers 502.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("connecting to {0}: {1}")]
    Connect(SocketAddr, std::io::Error),
    #[error("connecting to {0} timed out")]
    ConnectTimeout(SocketAddr),
    #[error("TLS to {0}: {1} ({2})")]
    Tls(SocketAddr, std::io::Error, &'static str),
    #[error("TLS handshake with {0} timed out")]
    TlsTimeout(SocketAddr),
    #[error("no SVID yet")]
    NoIdentity,
    #[error("{0} did not negotiate {1}")]
    Alpn(SocketAddr, &'static str),
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
        Box::pin(async move {
            let tcp = tokio::time::timeout(timeout, TcpStream::connect(addr))
                .await
                .map_err(|_| {
                    std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out")
                })??;
            let _ = tcp.set_nodelay(true);
            Ok(TokioIo::new(tcp))
        })
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

type PeerConn = (SpiffeId, http2::SendRequest<ReqBody>);

/// HTTP/2 connections to other sidecars, one per destination address.
#[derive(Default)]
pub struct PeerPool {
    conns: ArcSwap<HashMap<SocketAddr, PeerConn>>,
}

impl PeerPool {
    /// Send over the pooled connection to `dst` (which must prove `id`),
    /// opening one if there is none or it closed.
    pub async fn send(
        &self,
        rt: &Runtime,
        dst: SocketAddr,
        id: &SpiffeId,
        req: Request<ReqBody>,
    ) -> Result<Response<Incoming>, UpstreamError> {
        let mut sender = match self.conns.load().get(&dst) {
            Some((have, s)) if have == id && s.is_ready() => s.clone(),
            _ => self.open(rt, dst, id).await?,
        };
        sender
            .send_request(req)
            .await
            .map_err(|e| UpstreamError::Http(dst, e))
    }

    async fn open(
        &self,
        rt: &Runtime,
        dst: SocketAddr,
        id: &SpiffeId,
    ) -> Result<http2::SendRequest<ReqBody>, UpstreamError> {
        let tls = connect_peer(rt, dst, id, b"h2").await?;
        let (sender, conn) = http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .keep_alive_interval(Duration::from_secs(30))
            .handshake(TokioIo::new(tls))
            .await
            .map_err(|e| UpstreamError::Http(dst, e))?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(server.addr = %dst, error = %e, "HTTP/2 connection to sidecar ended");
            }
        });
        tracing::debug!(server.addr = %dst, server.id = %id, "HTTP/2 connection to sidecar opened");
        let entry = (id.clone(), sender.clone());
        self.conns.rcu(|m| {
            let mut m = HashMap::clone(m);
            m.insert(dst, entry.clone());
            m
        });
        Ok(sender)
    }
}

/// A dedicated HTTP/1.1 connection to a sidecar, for one upgrade.
pub async fn upgrade_connection(
    rt: &Runtime,
    dst: SocketAddr,
    id: &SpiffeId,
) -> Result<http1::SendRequest<ReqBody>, UpstreamError> {
    let tls = connect_peer(rt, dst, id, b"http/1.1").await?;
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

/// TCP, then TLS 1.3 with the current SVID, requiring `id` from the server
/// and negotiating `alpn`.
async fn connect_peer(
    rt: &Runtime,
    dst: SocketAddr,
    id: &SpiffeId,
    alpn: &'static [u8],
) -> Result<TlsStream<TcpStream>, UpstreamError> {
    let t = &rt.timeouts;
    // A new connection is rare (pooled), so a config per connection is fine.
    let config = {
        let creds = rt.creds.load_full().ok_or(UpstreamError::NoIdentity)?;
        let mut c = (*creds.client_config(id)).clone();
        c.alpn_protocols = vec![alpn.to_vec()];
        std::sync::Arc::new(c)
    };
    let tcp = match tokio::time::timeout(t.connect, TcpStream::connect(dst)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => return Err(UpstreamError::Connect(dst, e)),
        Err(_) => return Err(UpstreamError::ConnectTimeout(dst)),
    };
    let _ = tcp.set_nodelay(true);
    let name = ServerName::IpAddress(dst.ip().into());
    let stream = match tokio::time::timeout(
        t.handshake,
        TlsConnector::from(config).connect(name, tcp),
    )
    .await
    {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            let reason = tls::failure_reason(&e);
            return Err(UpstreamError::Tls(dst, e, reason));
        }
        Err(_) => return Err(UpstreamError::TlsTimeout(dst)),
    };
    if stream.get_ref().1.alpn_protocol() != Some(alpn) {
        return Err(UpstreamError::Alpn(
            dst,
            if alpn == b"h2" { "h2" } else { "http/1.1" },
        ));
    }
    Ok(stream)
}
