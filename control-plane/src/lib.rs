//! Palisade's control plane: who is who. The CA, attestation, the issuance
//! API and the policy source. The CLI is `palisadectl` (control-plane/ctl).
#![forbid(unsafe_code)]

pub mod attest;
pub mod ca;
pub mod config;
pub mod endpoints;
pub mod metrics;
pub mod policy_source;
pub mod server;
pub mod store;
