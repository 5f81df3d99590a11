//! `palisadectl policy ...`: check, explain, test and diff segmentation policies.

#[derive(Debug, clap::Subcommand)]
pub enum PolicyCmd {
    /// Validate policy files or directories.
    Check { paths: Vec<std::path::PathBuf> },
}

/// Runs a policy subcommand; returns the process exit code.
pub fn run(cmd: PolicyCmd) -> anyhow::Result<i32> {
    match cmd {
        PolicyCmd::Check { .. } => anyhow::bail!("policy check is not built yet"),
    }
}
