//! Client of the admin API (HTTP/1.1 over the control plane's Unix socket),
//! used by `palisadectl token create`, `ca rotate`, `policy apply` and
//! `baseline`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::net::UnixStream;

use super::ClientError;
use crate::api::{
    ApiError, JoinTokenRequest, JoinTokenResponse, PolicyApplyRequest, PolicyApplyResponse,
    PolicyFileText, RotateResponse,
};

pub struct AdminClient {
    socket: PathBuf,
}

impl AdminClient {
    pub fn new(socket: &Path) -> AdminClient {
        AdminClient {
            socket: socket.to_owned(),
        }
    }

    /// Creates a single-use join token bound to `spiffe_id`.
    pub async fn create_join_token(
        &self,
        spiffe_id: &str,
        ttl: Duration,
    ) -> Result<JoinTokenResponse, ClientError> {
        let req = JoinTokenRequest {
            spiffe_id: spiffe_id.to_owned(),
            ttl_seconds: ttl.as_secs(),
        };
        self.post("/v1/join-tokens", Some(&req)).await
    }

    /// Replaces every policy the control plane serves with `files`.
    pub async fn apply_policies(
        &self,
        files: Vec<PolicyFileText>,
        allow_empty: bool,
    ) -> Result<PolicyApplyResponse, ClientError> {
        let req = PolicyApplyRequest { files, allow_empty };
        self.send(Method::PUT, "/v1/policies", Some(&req)).await
    }

    /// Rotates the signing CA now.
    pub async fn rotate_ca(&self) -> Result<RotateResponse, ClientError> {
        self.post::<(), _>("/v1/ca/rotate", None).await
    }

    /// The merged baselines the control plane keeps, as JSON snapshots
    /// (the caller validates them): all of them, or `identity`'s alone
    /// (a SPIFFE ID, whose characters need no escaping in a query).
    pub async fn baselines(
        &self,
        identity: Option<&str>,
    ) -> Result<Vec<serde_json::Value>, ClientError> {
        let path = match identity {
            None => "/v1/baselines".to_owned(),
            Some(id) => format!("/v1/baselines?identity={id}"),
        };
        match self.send::<(), _>(Method::GET, &path, None).await? {
            serde_json::Value::Array(all) => Ok(all),
            one => Ok(vec![one]),
        }
    }

    async fn post<B: Serialize, R: DeserializeOwned>(
        &self,
        path: &str,
        body: Option<&B>,
    ) -> Result<R, ClientError> {
        self.send(Method::POST, path, body).await
    }

    async fn send<B: Serialize, R: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&B>,
    ) -> Result<R, ClientError> {
        let stream = UnixStream::connect(&self.socket)
            .await
            .map_err(|e| ClientError::Connect(self.socket.display().to_string(), e))?;
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(conn);
        let bytes = match body {
            Some(b) => serde_json::to_vec(b).expect("API types serialize"),
            None => Vec::new(),
        };
        let req = Request::builder()
            .method(method)
            .uri(path)
            .header(http::header::HOST, "palisade-admin")
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(bytes)))
            .expect("valid request parts");
        let resp = sender.send_request(req).await?;
        let status = resp.status();
        let body = resp.into_body().collect().await?.to_bytes();
        decode(status, &body)
    }
}

/// Decodes a JSON answer, or turns an error answer into `ClientError::Status`.
pub(super) fn decode<R: DeserializeOwned>(
    status: http::StatusCode,
    body: &[u8],
) -> Result<R, ClientError> {
    if !status.is_success() {
        let (error, message) = match serde_json::from_slice::<ApiError>(body) {
            Ok(e) => (e.error, e.message),
            Err(_) => (
                String::new(),
                String::from_utf8_lossy(body).chars().take(200).collect(),
            ),
        };
        return Err(ClientError::Status {
            status: status.as_u16(),
            error,
            message,
        });
    }
    serde_json::from_slice(body).map_err(|e| ClientError::Decode(e.to_string()))
}
