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
pub mod webhook;

/// Whether `e` is stdout closed by its reader (`palisadectl … | head`): the
/// rest of the output is not wanted, so the command ends quietly with 0.
pub fn stdout_closed(e: &anyhow::Error) -> bool {
    e.downcast_ref::<std::io::Error>()
        .is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe)
}
