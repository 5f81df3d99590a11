//! `palisadectl`: the operator and network-team CLI.
#![forbid(unsafe_code)]

use clap::{Parser, Subcommand};
use palisadectl as cli;

#[derive(Debug, Parser)]
#[command(
    name = "palisadectl",
    version,
    about = "Operate Palisade: identities, CA, certificates and policies"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Join tokens for workload attestation.
    #[command(subcommand)]
    Token(cli::token::TokenCmd),
    /// The control plane's certificate authority.
    #[command(subcommand)]
    Ca(cli::ca::CaCmd),
    /// Inspect X.509-SVIDs.
    #[command(subcommand)]
    Cert(cli::cert::CertCmd),
    /// Check, apply, explain, test and diff segmentation policies.
    #[command(subcommand)]
    Policy(cli::policy::PolicyCmd),
    /// Show, export, diff and draw learned traffic baselines.
    #[command(subcommand)]
    Baseline(cli::baseline::BaselineCmd),
    /// Run a local demo mesh on loopback.
    Up(cli::up::UpArgs),
    /// Add the Palisade init container and sidecar to Kubernetes manifests.
    Inject(cli::inject::InjectArgs),
    /// The Kubernetes admission webhook that injects sidecars.
    #[command(subcommand)]
    Webhook(cli::webhook::WebhookCmd),
}

#[tokio::main]
async fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let result = match Cli::parse().cmd {
        Cmd::Token(c) => cli::token::run(c).await.map(|()| 0),
        Cmd::Ca(c) => cli::ca::run(c).await.map(|()| 0),
        Cmd::Cert(c) => cli::cert::run(c).await,
        Cmd::Policy(c) => cli::policy::run(c).await,
        Cmd::Baseline(c) => cli::baseline::run(c).await,
        Cmd::Up(a) => cli::up::run(a).await.map(|()| 0),
        Cmd::Inject(a) => cli::inject::run(a),
        Cmd::Webhook(c) => cli::webhook::run(c).map(|()| 0),
    };
    match result {
        Ok(code) => std::process::exit(code),
        Err(e) if cli::stdout_closed(&e) => std::process::exit(0),
        Err(e) => {
            eprintln!("palisadectl: {e:#}");
            std::process::exit(1);
        }
    }
}
