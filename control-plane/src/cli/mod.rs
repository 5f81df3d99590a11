//! `palisadectl` subcommands, one module each.

pub mod ca;
pub mod cert;
pub mod inject;
pub mod policy;
pub mod token;
pub mod up;
