//! Wire types of the control-plane API (see docs/control-plane-api.md),
//! shared by the server, the proxy's identity client and palisadectl.

use serde::{Deserialize, Serialize};

/// The SPIFFE ID the control plane presents on its workload API.
pub const CONTROL_PLANE_PATH: &str = "/palisade/control-plane";
/// DNS SAN on the control plane's serving certificate, and the TLS server
/// name and `Host` its clients send.
pub const SERVER_NAME: &str = "palisade-control-plane";
/// Largest request body the APIs accept.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Attestation {
    JoinToken(String),
    K8sSaToken(String),
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SvidRequest {
    /// PKCS#10 CSR, PEM.
    pub csr: String,
    pub attestation: Attestation,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RenewRequest {
    pub csr: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SvidResponse {
    pub spiffe_id: String,
    /// Leaf first, then intermediates, PEM.
    pub svid_chain: String,
    /// Every CA certificate in the trust bundle, PEM.
    pub bundle: String,
    /// Unix seconds.
    pub expires_at: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ApiError {
    pub error: String,
    pub message: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Endpoint {
    /// `ip:port` or a bare `ip` (any port).
    pub address: String,
    pub identity: String,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct EndpointsResponse {
    pub version: u64,
    pub endpoints: Vec<Endpoint>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JoinTokenRequest {
    pub spiffe_id: String,
    pub ttl_seconds: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JoinTokenResponse {
    pub token: String,
    pub spiffe_id: String,
    pub expires_at: i64,
}

/// Most tokens one `POST /v1/join-tokens/batch` mints; palisadectl sends a
/// larger batch as several requests over one connection.
pub const MAX_JOIN_TOKEN_BATCH: u32 = 10_000;
/// Largest `POST /v1/join-tokens/batch` body the admin API reads.
pub const MAX_JOIN_TOKEN_BATCH_BYTES: usize = 2 * 1024 * 1024;

/// `POST /v1/join-tokens/batch`: `count` tokens for each identity, all
/// with the same TTL, answered in the same order.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JoinTokenBatchRequest {
    pub ttl_seconds: u64,
    pub identities: Vec<JoinTokenBatchEntry>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JoinTokenBatchEntry {
    pub spiffe_id: String,
    #[serde(default = "one")]
    pub count: u32,
}

fn one() -> u32 {
    1
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JoinTokenBatchResponse {
    pub tokens: Vec<JoinTokenResponse>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RotateResponse {
    pub active_ca_serial: String,
    pub bundle_size: usize,
}

/// `GET /v1/policies?version=N`: the segmentation policy documents that
/// select the calling workload. `version` is a hash of exactly those
/// documents, so it changes only when the caller's policies do.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoliciesResponse {
    pub version: u64,
    pub documents: Vec<PolicyDocument>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyDocument {
    /// `<namespace>/<name>`.
    pub name: String,
    /// Where the control plane read it, `file:line`.
    pub source: String,
    /// The document's YAML text, as written.
    pub yaml: String,
}

/// `POST /v1/baselines`'s answer: the entries of the snapshot kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct BaselineAccepted {
    pub entries: usize,
}

/// `POST /v1/events`'s answer: how many security events were kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventsAccepted {
    pub accepted: usize,
}
