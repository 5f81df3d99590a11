//! Clients of the control plane's two APIs: the HTTPS workload API (raw,
//! and as a workload uses it) and the admin Unix socket.

pub mod admin;
pub mod api;
pub mod workload;

pub use crate::verify::SpiffeServerVerifier;
pub use admin::AdminClient;
pub use api::{ApiClient, ApiConnection, ClientIdentity};

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
