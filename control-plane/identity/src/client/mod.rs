//! Clients of the control plane's two APIs: the HTTPS workload API (raw,
//! and as a workload uses it) and the admin Unix socket.

pub mod admin;
pub mod api;
pub mod failover;
pub mod workload;

pub use crate::verify::SpiffeServerVerifier;
pub use admin::AdminClient;
pub use api::{ApiClient, ApiConnection, ClientIdentity};
pub use failover::ControlPlaneAddrs;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot connect to {0}: {1}")]
    Connect(String, std::io::Error),
    #[error("TLS: {0}")]
    Tls(rustls::Error),
    #[error("client configuration: {0}")]
    Config(String),
    #[error("HTTP: {0}")]
    Http(#[from] hyper::Error),
    #[error("control plane answered {status} {error}: {message}")]
    Status {
        status: u16,
        error: String,
        message: String,
    },
    #[error("cannot decode the answer: {0}")]
    Decode(String),
}

impl ClientError {
    /// Whether another control-plane replica might answer: the connection
    /// failed (refused, reset, handshake cut) or the server failed (5xx).
    /// A 4xx is an answer about the request, the same from every replica.
    pub fn is_unavailable(&self) -> bool {
        match self {
            ClientError::Connect(..) | ClientError::Http(_) => true,
            ClientError::Status { status, .. } => *status >= 500,
            ClientError::Tls(_) | ClientError::Config(_) | ClientError::Decode(_) => false,
        }
    }
}
