//! Client of the HTTPS workload API: TLS 1.3, the server verified by the
//! SPIFFE peer verifier (chains to the trust bundle, presents the control
//! plane's SPIFFE ID), optionally authenticating with the caller's current
//! SVID (renewal).

use std::sync::Arc;

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use rustls::crypto::ring;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, RootCertStore};
use serde::de::DeserializeOwned;
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

use super::admin::decode;
use super::ClientError;
use crate::api::{
    BaselineAccepted, EndpointsResponse, EventsAccepted, RenewRequest, SvidRequest, SvidResponse,
    CONTROL_PLANE_PATH, SERVER_NAME,
};
use crate::bundle::SpiffeBundle;
use crate::spiffe::TrustDomain;
use crate::verify::SpiffeServerVerifier;

/// A workload API client bound to one control plane and one trust bundle.
#[derive(Clone)]
pub struct ApiClient {
    addr: String,
    connector: TlsConnector,
}

/// The caller's SVID (chain, leaf first) and key, for mTLS.
pub type ClientIdentity = (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>);

impl ApiClient {
    /// `addr` is `host:port`. The server must chain to `bundle` and present
    /// `spiffe://<td>/palisade/control-plane`.
    pub fn new(
        addr: &str,
        td: &TrustDomain,
        bundle: &[CertificateDer<'static>],
        identity: Option<ClientIdentity>,
    ) -> Result<ApiClient, ClientError> {
        let expected = td.id(CONTROL_PLANE_PATH).expect("constant path is valid");
        let mut roots = RootCertStore::empty();
        for ca in bundle {
            roots.add(ca.clone()).map_err(ClientError::Tls)?;
        }
        let provider = Arc::new(ring::default_provider());
        let verifier = SpiffeServerVerifier::new(Arc::new(roots), expected, provider.clone());
        let builder = ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(ClientError::Tls)?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(verifier));
        let mut config = match identity {
            Some((chain, key)) => builder
                .with_client_auth_cert(chain, key)
                .map_err(ClientError::Tls)?,
            None => builder.with_no_client_auth(),
        };
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(ApiClient {
            addr: addr.to_owned(),
            connector: TlsConnector::from(Arc::new(config)),
        })
    }

    /// The same client (trust, identity) for another address.
    pub fn at(&self, addr: impl ToString) -> ApiClient {
        ApiClient {
            addr: addr.to_string(),
            connector: self.connector.clone(),
        }
    }

    /// A verified TLS connection with no HTTP on it yet.
    pub async fn connect_tls(&self) -> Result<TlsStream<TcpStream>, ClientError> {
        let tcp = TcpStream::connect(&self.addr)
            .await
            .map_err(|e| ClientError::Connect(self.addr.clone(), e))?;
        let _ = tcp.set_nodelay(true);
        let name = ServerName::try_from(SERVER_NAME).expect("static DNS name");
        self.connector
            .connect(name, tcp)
            .await
            .map_err(|e| ClientError::Connect(self.addr.clone(), e))
    }

    /// Opens one keep-alive connection for several requests.
    pub async fn connect(&self) -> Result<ApiConnection, ClientError> {
        let tls = self.connect_tls().await?;
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls)).await?;
        tokio::spawn(conn);
        Ok(ApiConnection { sender })
    }

    pub async fn issue(&self, req: &SvidRequest) -> Result<SvidResponse, ClientError> {
        self.connect().await?.issue(req).await
    }

    pub async fn renew(&self, csr_pem: &str) -> Result<SvidResponse, ClientError> {
        self.connect().await?.renew(csr_pem).await
    }

    pub async fn bundle(&self) -> Result<SpiffeBundle, ClientError> {
        self.connect().await?.get_json("/v1/bundle").await
    }

    pub async fn endpoints(&self) -> Result<EndpointsResponse, ClientError> {
        self.connect().await?.get_json("/v1/endpoints").await
    }
}

pub struct ApiConnection {
    sender: SendRequest<Full<Bytes>>,
}

impl ApiConnection {
    /// One raw request: status and body.
    pub async fn request(
        &mut self,
        method: Method,
        path: &str,
        body: impl Into<Bytes>,
    ) -> Result<(StatusCode, Bytes), ClientError> {
        self.sender.ready().await?;
        let req = Request::builder()
            .method(method)
            .uri(path)
            .header(http::header::HOST, SERVER_NAME)
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(Full::new(body.into()))
            .map_err(|e| ClientError::Config(e.to_string()))?;
        let resp = self.sender.send_request(req).await?;
        let status = resp.status();
        Ok((status, resp.into_body().collect().await?.to_bytes()))
    }

    pub async fn issue(&mut self, req: &SvidRequest) -> Result<SvidResponse, ClientError> {
        let body = serde_json::to_vec(req).expect("API types serialize");
        let (status, bytes) = self.request(Method::POST, "/v1/svid", body).await?;
        decode(status, &bytes)
    }

    pub async fn renew(&mut self, csr_pem: &str) -> Result<SvidResponse, ClientError> {
        let body = serde_json::to_vec(&RenewRequest {
            csr: csr_pem.to_owned(),
        })
        .expect("API types serialize");
        let (status, bytes) = self.request(Method::POST, "/v1/svid/renew", body).await?;
        decode(status, &bytes)
    }

    /// `POST /v1/events` with a JSON array of security events.
    pub async fn post_events(
        &mut self,
        body: impl Into<Bytes>,
    ) -> Result<EventsAccepted, ClientError> {
        let (status, bytes) = self.request(Method::POST, "/v1/events", body).await?;
        decode(status, &bytes)
    }

    /// `POST /v1/baselines?instance=` with a baseline snapshot's JSON.
    pub async fn post_baseline(
        &mut self,
        instance: &str,
        snapshot_json: impl Into<Bytes>,
    ) -> Result<BaselineAccepted, ClientError> {
        let path = format!("/v1/baselines?instance={instance}");
        let (status, bytes) = self.request(Method::POST, &path, snapshot_json).await?;
        decode(status, &bytes)
    }

    pub async fn get_json<R: DeserializeOwned>(&mut self, path: &str) -> Result<R, ClientError> {
        let (status, bytes) = self.request(Method::GET, path, Vec::new()).await?;
        decode(status, &bytes)
    }
}
