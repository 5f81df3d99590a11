//! `palisadectl`'s subcommands, one module each, and the loopback process
//! helpers that `palisadectl up`, the end-to-end tests and the bench share.
#![forbid(unsafe_code)]

pub mod baseline;
pub mod ca;
pub mod cert;
pub mod inject;
pub mod local;
pub mod policy;
pub mod token;
pub mod up;
