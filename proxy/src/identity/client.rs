//! HTTPS client for the control plane's workload API. Every request verifies
//! the control plane's certificate against the bootstrap bundle (plus the
//! current bundle, so a CA rotation does not lock the proxy out) and checks
//! its URI SAN; renewals and endpoint fetches present the current SVID.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use palisade_control_plane::api::{
    ApiError, Attestation, EndpointsResponse, RenewRequest, SvidRequest, SvidResponse,
};
use palisade_policy::SpiffeId;
use rustls::pki_types::ServerName;
use serde::de::DeserializeOwned;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use crate::tls::{self, Bundle, Credentials};

/// Largest answer accepted from the control plane.
const MAX_RESPONSE_BYTES: usize = 4 * 1024 * 1024;
/// The DNS SAN the control plane carries; sent as SNI only, the check is on
/// the SPIFFE ID.
const SNI: &str = "palisade-control-plane";

#[derive(Debug, thiserror::Error)]
pub enum CpError {
    #[error("connecting to the control plane at {addr}: {source}")]
    Connect {
        addr: String,
        source: std::io::Error,
    },
    #[error("TLS with the control plane failed ({reason}): {source}")]
    Tls {
        reason: &'static str,
        source: std::io::Error,
    },
    #[error("HTTP exchange with the control plane failed: {0}")]
    Http(String),
    #[error("control plane answered {status}: {error}: {message}")]
    Refused {
        status: StatusCode,
        error: String,
        message: String,
    },
    #[error("control plane answer is not the expected JSON: {0}")]
    Decode(#[from] serde_json::Error),
    #[error("control plane did not answer within {0:?}")]
    Timeout(Duration),
}

impl CpError {
    /// A 4xx answer: retrying the same request will not help.
    pub fn is_refusal(&self) -> bool {
        matches!(self, CpError::Refused { status, .. } if status.is_client_error())
    }
}

pub struct ControlPlane {
    addr: String,
    server_id: SpiffeId,
    bootstrap: Bundle,
    timeout: Duration,
}

impl ControlPlane {
    pub fn new(addr: String, server_id: SpiffeId, bootstrap: Bundle, timeout: Duration) -> Self {
        ControlPlane {
            addr,
            server_id,
            bootstrap,
            timeout,
        }
    }

    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// First issuance, authenticated by an attestation credential.
    pub async fn issue(
        &self,
        csr: String,
        attestation: Attestation,
    ) -> Result<SvidResponse, CpError> {
        let body = serde_json::to_vec(&SvidRequest { csr, attestation })?;
        self.call(Method::POST, "/v1/svid", Some(body), None).await
    }

    /// Renewal over mTLS with the SVID being replaced.
    pub async fn renew(&self, csr: String, current: &Credentials) -> Result<SvidResponse, CpError> {
        let body = serde_json::to_vec(&RenewRequest { csr })?;
        self.call(Method::POST, "/v1/svid/renew", Some(body), Some(current))
            .await
    }

    pub async fn endpoints(&self, current: &Credentials) -> Result<EndpointsResponse, CpError> {
        self.call(Method::GET, "/v1/endpoints", None, Some(current))
            .await
    }

    async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
        creds: Option<&Credentials>,
    ) -> Result<T, CpError> {
        let exchange = self.exchange(method, path, body, creds);
        let (status, bytes) = tokio::time::timeout(self.timeout, exchange)
            .await
            .map_err(|_| CpError::Timeout(self.timeout))??;
        if !status.is_success() {
            let (error, message) = match serde_json::from_slice::<ApiError>(&bytes) {
                Ok(e) => (e.error, e.message),
                Err(_) => (
                    "unknown".into(),
                    String::from_utf8_lossy(&bytes).into_owned(),
                ),
            };
            return Err(CpError::Refused {
                status,
                error,
                message,
            });
        }
        Ok(serde_json::from_slice(&bytes)?)
    }

    async fn exchange(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
        creds: Option<&Credentials>,
    ) -> Result<(StatusCode, Bytes), CpError> {
        let roots = match creds {
            Some(c) => self.bootstrap.union(&c.bundle).roots,
            None => self.bootstrap.roots.clone(),
        };
        let config = tls::client_config(
            roots,
            self.server_id.clone(),
            creds.map(|c| c.svid.key.clone()),
        );
        let tcp = TcpStream::connect(&self.addr)
            .await
            .map_err(|source| CpError::Connect {
                addr: self.addr.clone(),
                source,
            })?;
        let _ = tcp.set_nodelay(true);
        let name = ServerName::try_from(SNI).expect("static DNS name");
        let stream = TlsConnector::from(config)
            .connect(name, tcp)
            .await
            .map_err(|source| CpError::Tls {
                reason: tls::failure_reason(&source),
                source,
            })?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| CpError::Http(e.to_string()))?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header(hyper::header::HOST, SNI)
            .header(hyper::header::USER_AGENT, "palisade-proxy");
        if body.is_some() {
            req = req.header(hyper::header::CONTENT_TYPE, "application/json");
        }
        let req = req
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .map_err(|e| CpError::Http(e.to_string()))?;
        let resp = sender
            .send_request(req)
            .await
            .map_err(|e| CpError::Http(e.to_string()))?;
        let status = resp.status();
        let bytes = Limited::new(resp.into_body(), MAX_RESPONSE_BYTES)
            .collect()
            .await
            .map_err(|e| CpError::Http(e.to_string()))?
            .to_bytes();
        Ok((status, bytes))
    }
}
