//! Client of the admin API (HTTP/1.1 over the control plane's Unix socket),
//! used by `palisadectl token create`, `ca rotate` and `baseline`.

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
    ApiError, JoinTokenBatchEntry, JoinTokenBatchRequest, JoinTokenBatchResponse, JoinTokenRequest,
    JoinTokenResponse, RotateResponse, MAX_JOIN_TOKEN_BATCH, MAX_JOIN_TOKEN_BATCH_BYTES,
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

    /// Creates `count` tokens for each identity (in order, with one TTL),
    /// over one connection: as few requests as the batch limits allow.
    pub async fn create_join_tokens(
        &self,
        identities: &[JoinTokenBatchEntry],
        ttl: Duration,
    ) -> Result<Vec<JoinTokenResponse>, ClientError> {
        let mut conn = self.connect().await?;
        let mut out = Vec::new();
        for identities in batches(identities) {
            let req = JoinTokenBatchRequest {
                ttl_seconds: ttl.as_secs(),
                identities,
            };
            let resp: JoinTokenBatchResponse = conn
                .send(Method::POST, "/v1/join-tokens/batch", Some(&req))
                .await?;
            out.extend(resp.tokens);
        }
        Ok(out)
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
        self.connect().await?.send(method, path, body).await
    }

    async fn connect(&self) -> Result<AdminConnection, ClientError> {
        let stream = UnixStream::connect(&self.socket)
            .await
            .map_err(|e| ClientError::Connect(self.socket.display().to_string(), e))?;
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(conn);
        Ok(AdminConnection { sender })
    }
}

/// One keep-alive connection to the admin socket.
struct AdminConnection {
    sender: hyper::client::conn::http1::SendRequest<Full<Bytes>>,
}

impl AdminConnection {
    async fn send<B: Serialize, R: DeserializeOwned>(
        &mut self,
        method: Method,
        path: &str,
        body: Option<&B>,
    ) -> Result<R, ClientError> {
        self.sender.ready().await?;
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
        let resp = self.sender.send_request(req).await?;
        let status = resp.status();
        let body = resp.into_body().collect().await?.to_bytes();
        decode(status, &body)
    }
}

/// Splits a batch into requests within the admin API's limits: at most
/// `MAX_JOIN_TOKEN_BATCH` tokens and about half the body limit each (an
/// identity asked for many times is split across requests).
fn batches(identities: &[JoinTokenBatchEntry]) -> Vec<Vec<JoinTokenBatchEntry>> {
    // JSON around each SPIFFE ID: `{"spiffe_id":"","count":4294967295},`.
    const ENTRY_OVERHEAD: usize = 40;
    let mut out = vec![Vec::new()];
    let (mut tokens, mut bytes) = (0u32, 0usize);
    for entry in identities {
        let mut left = entry.count;
        let size = entry.spiffe_id.len() + ENTRY_OVERHEAD;
        while left > 0 {
            if tokens == MAX_JOIN_TOKEN_BATCH || bytes + size > MAX_JOIN_TOKEN_BATCH_BYTES / 2 {
                out.push(Vec::new());
                (tokens, bytes) = (0, 0);
            }
            let take = left.min(MAX_JOIN_TOKEN_BATCH - tokens);
            out.last_mut()
                .expect("one batch at least")
                .push(JoinTokenBatchEntry {
                    spiffe_id: entry.spiffe_id.clone(),
                    count: take,
                });
            (tokens, bytes) = (tokens + take, bytes + size);
            left -= take;
        }
    }
    out.retain(|b| !b.is_empty());
    out
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

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(id: &str, count: u32) -> JoinTokenBatchEntry {
        JoinTokenBatchEntry {
            spiffe_id: id.to_owned(),
            count,
        }
    }

    #[test]
    fn a_large_batch_is_split_within_the_limits_keeping_its_order() {
        let ids = [entry("spiffe://td/a", 25_000), entry("spiffe://td/b", 1)];
        let split = batches(&ids);
        let counts: Vec<Vec<(&str, u32)>> = split
            .iter()
            .map(|b| b.iter().map(|e| (&e.spiffe_id[12..], e.count)).collect())
            .collect();
        assert_eq!(
            counts,
            [
                vec![("a", 10_000)],
                vec![("a", 10_000)],
                vec![("a", 5_000), ("b", 1)]
            ]
        );
        let long = "spiffe://td/".to_owned() + &"x".repeat(2000);
        let many: Vec<_> = (0..2_000).map(|_| entry(&long, 1)).collect();
        let split = batches(&many);
        assert!(split.len() > 1);
        for b in &split {
            let body = serde_json::to_vec(&JoinTokenBatchRequest {
                ttl_seconds: 600,
                identities: b.clone(),
            })
            .unwrap();
            assert!(body.len() <= MAX_JOIN_TOKEN_BATCH_BYTES, "{}", body.len());
        }
        assert_eq!(split.iter().map(Vec::len).sum::<usize>(), 2_000);
        assert!(batches(&[]).is_empty());
    }
}
