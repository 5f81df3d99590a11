//! Palisade's control plane: who is who. The CA, attestation, the issuance
//! API, and the operator CLI's building blocks.
#![forbid(unsafe_code)]

pub mod api;
pub mod attest;
pub mod bundle;
pub mod ca;
pub mod cli;
pub mod client;
pub mod config;
pub mod endpoints;
pub mod metrics;
pub mod policy_source;
pub mod server;
pub mod svid;
