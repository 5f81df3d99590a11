//! `palisadectl` subcommands, one module each.

pub mod policy;
pub mod up;
