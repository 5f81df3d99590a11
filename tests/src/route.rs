//! The two ways a test client reaches the server's sidecar in an `HttpMesh`:
//! plaintext through the client's sidecar, or straight to B over mTLS with
//! the client's real SVID from the test control plane.

use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ClientConnection, StreamOwned};
use tokio::io::{AsyncRead, AsyncWrite};

use crate::badcerts::{client_config, Leaf};
use crate::http::{raw_exchange, read_until_quiet, runtime, Client, HttpMesh};
use crate::pki;
use crate::proxy::CLIENT_ID;

/// How a request gets to the server's sidecar.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// Plaintext to A's outbound listener, then A's HTTP/2 over mTLS to B.
    ViaClientSidecar,
    /// Straight to B's inbound listener over mTLS, with the client's SVID.
    DirectMtls,
}

pub const ROUTES: [Route; 2] = [Route::ViaClientSidecar, Route::DirectMtls];

/// A byte stream of either route.
pub trait Io: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Io for T {}

/// Both ways into one mesh.
pub struct Routes {
    a_out: SocketAddr,
    b_in: SocketAddr,
    /// No ALPN, so a detecting port reads the bytes.
    h1_tls: Arc<ClientConfig>,
    h2_tls: Arc<ClientConfig>,
}

impl Routes {
    pub fn of<A>(m: &HttpMesh<A>) -> Routes {
        let (key, resp) = runtime().block_on(m.cp.issue_svid(CLIENT_ID));
        let (chain, key) = pki::identity(&resp, &key);
        let leaf = Leaf { chain, key };
        Routes {
            a_out: m.a_out,
            b_in: m.b_in,
            h1_tls: Arc::new(client_config(&leaf, &[]).unwrap()),
            h2_tls: Arc::new(client_config(&leaf, &[b"h2"]).unwrap()),
        }
    }

    /// Write `bytes` on a fresh connection and read until the peer closes
    /// or nothing arrives for `quiet`.
    pub fn raw(&self, route: Route, bytes: &[u8], quiet: Duration) -> Vec<u8> {
        match route {
            Route::ViaClientSidecar => raw_exchange(self.a_out, bytes, quiet),
            Route::DirectMtls => {
                let name = ServerName::try_from("server.invalid").unwrap();
                let conn = ClientConnection::new(self.h1_tls.clone(), name).unwrap();
                let tcp = TcpStream::connect_timeout(&self.b_in, Duration::from_secs(5)).unwrap();
                tcp.set_read_timeout(Some(quiet)).unwrap();
                let mut tls = StreamOwned::new(conn, tcp);
                let _ = std::io::Write::write_all(&mut tls, bytes)
                    .and_then(|_| std::io::Write::flush(&mut tls));
                read_until_quiet(&mut tls)
            }
        }
    }

    /// A fresh connection by `route`; over mTLS it offers `h2` by ALPN when
    /// asked to.
    pub async fn connect(&self, route: Route, h2: bool) -> Box<dyn Io> {
        match route {
            Route::ViaClientSidecar => Box::new(
                tokio::net::TcpStream::connect(self.a_out)
                    .await
                    .expect("connect"),
            ),
            Route::DirectMtls => {
                let tcp = tokio::net::TcpStream::connect(self.b_in)
                    .await
                    .expect("connect");
                let tls = if h2 { &self.h2_tls } else { &self.h1_tls };
                let name = ServerName::try_from("server.invalid").unwrap();
                Box::new(
                    tokio_rustls::TlsConnector::from(tls.clone())
                        .connect(name, tcp)
                        .await
                        .expect("mTLS handshake"),
                )
            }
        }
    }

    /// A kept-alive HTTP/1.1 or HTTP/2 client by `route`.
    pub async fn client(&self, route: Route, h2: bool) -> Client {
        let io = self.connect(route, h2).await;
        match h2 {
            false => Client::http1_on(io).await,
            true => Client::http2_on(io).await,
        }
    }
}
