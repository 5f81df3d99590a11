//! Opening connections: TCP within the connect timeout (to the local app or
//! a destination), and TLS 1.3 with the current SVID to a peer sidecar that
//! must prove the identity expected of it. L4 and HTTP both open them here.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use palisade_policy::SpiffeId;
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

use crate::io::{tls_transport, TlsTransport};
use crate::{tls, Runtime};

/// Why a connection could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("no SVID yet")]
    NoIdentity,
    #[error("connecting to {0}: {1}")]
    Failed(SocketAddr, io::Error),
    #[error("connecting to {0} timed out")]
    Timeout(SocketAddr),
    #[error("TLS to {0}: {1} ({2})")]
    Tls(SocketAddr, io::Error, &'static str),
    #[error("TLS handshake with {0} timed out")]
    TlsTimeout(SocketAddr),
    #[error("{0} did not negotiate {1}")]
    Alpn(SocketAddr, &'static str),
}

impl ConnectError {
    /// The `reason` label of `tls_handshake_failures_total` for a
    /// connection refused because this one could not be opened.
    pub fn reason(&self) -> &'static str {
        match self {
            ConnectError::NoIdentity => "no_identity",
            ConnectError::Failed(..) => "connect_failed",
            ConnectError::Timeout(_) => "connect_timeout",
            ConnectError::Tls(_, _, reason) => reason,
            ConnectError::TlsTimeout(_) => "timeout",
            ConnectError::Alpn(..) => "alpn",
        }
    }
}

impl From<ConnectError> for io::Error {
    fn from(e: ConnectError) -> io::Error {
        match e {
            ConnectError::Failed(_, e) => e,
            ConnectError::Timeout(_) => {
                io::Error::new(io::ErrorKind::TimedOut, "connect timed out")
            }
            e => io::Error::other(e),
        }
    }
}

/// TCP to `addr` within `timeout`, with Nagle off.
pub async fn tcp(addr: SocketAddr, timeout: Duration) -> Result<TcpStream, ConnectError> {
    match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
        Ok(Ok(s)) => {
            let _ = s.set_nodelay(true);
            Ok(s)
        }
        Ok(Err(e)) => Err(ConnectError::Failed(addr, e)),
        Err(_) => Err(ConnectError::Timeout(addr)),
    }
}

/// TCP, then TLS 1.3 with the current SVID, requiring `id` from the server.
/// With `alpn`, that protocol must be negotiated (HTTP); without, none is
/// offered (opaque TCP). The credentials are loaded before connecting, so a
/// proxy without an SVID opens no connection it cannot use.
pub async fn mtls(
    rt: &Runtime,
    dst: SocketAddr,
    id: &SpiffeId,
    alpn: Option<&'static [u8]>,
) -> Result<TlsStream<TlsTransport>, ConnectError> {
    let t = &rt.timeouts;
    let config = {
        let creds = rt.creds.load_full().ok_or(ConnectError::NoIdentity)?;
        let config = creds.client_config(id);
        match alpn {
            None => config,
            // Only for a new pooled HTTP connection (rare): a copy is fine.
            Some(p) => {
                let mut c = (*config).clone();
                c.alpn_protocols = vec![p.to_vec()];
                Arc::new(c)
            }
        }
    };
    let tcp = tcp(dst, t.connect).await?;
    let name = ServerName::IpAddress(dst.ip().into());
    let stream = match tokio::time::timeout(
        t.handshake,
        TlsConnector::from(config).connect(name, tls_transport(tcp)),
    )
    .await
    {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            let reason = tls::failure_reason(&e);
            return Err(ConnectError::Tls(dst, e, reason));
        }
        Err(_) => return Err(ConnectError::TlsTimeout(dst)),
    };
    if let Some(p) = alpn {
        if stream.get_ref().1.alpn_protocol() != Some(p) {
            let name = if p == b"h2" { "h2" } else { "http/1.1" };
            return Err(ConnectError::Alpn(dst, name));
        }
    }
    Ok(stream)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    #[tokio::test]
    async fn without_an_svid_no_connection_to_the_peer_is_opened() {
        let rt = Runtime::without_identity();
        let peer = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = peer.local_addr().unwrap();
        let id = SpiffeId::parse("spiffe://td.example/ns/a/sa/db").unwrap();
        for alpn in [None, Some(&b"h2"[..])] {
            let e = mtls(&rt, addr, &id, alpn).await.unwrap_err();
            assert_eq!(e.reason(), "no_identity");
        }
        // The first connection the peer sees is this one: none came before.
        let ours = TcpStream::connect(addr).await.unwrap();
        let (_, from) = peer.accept().await.unwrap();
        assert_eq!(from, ours.local_addr().unwrap());
    }

    #[tokio::test]
    async fn a_refused_connect_is_connect_failed_and_keeps_its_io_error() {
        let addr = TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap()
            .local_addr()
            .unwrap();
        // The listener is gone: the port refuses.
        let e = tcp(addr, Duration::from_secs(5)).await.unwrap_err();
        assert_eq!(e.reason(), "connect_failed");
        assert_eq!(io::Error::from(e).kind(), io::ErrorKind::ConnectionRefused);
    }
}
