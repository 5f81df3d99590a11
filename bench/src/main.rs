//! `palisade-bench`: one subcommand per measurement.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use palisade_bench::{issuance, latency, mesh, policy_load};

#[derive(Parser)]
#[command(
    name = "palisade-bench",
    about = "Palisade's benches: latency, throughput and their cost"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Latency (open loop or max throughput), bulk throughput, handshakes/s, RSS
    /// and CPU of each path: direct, palisade, envoy, haproxy.
    Latency(latency::LatencyArgs),
    /// Each path at rising request rates (HTTP/1.1 and HTTP/2 clients): p50
    /// and p99 against achieved rate, and the highest rate with p99 under a limit.
    Sweep(latency::sweep::SweepArgs),
    /// SVID issuance throughput and latency of a real control plane.
    Issuance(issuance::IssuanceArgs),
    /// Parse and compile time of a large policy set of each shape, and the
    /// memory a real proxy gains holding it.
    PolicyLoad(policy_load::PolicyLoadArgs),
    /// Thousands of simulated sidecars against one control plane: how fast a
    /// policy change reaches them under SVID renewal churn, and what the
    /// control plane spends.
    Mesh(mesh::MeshArgs),
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let result = match Cli::parse().command {
        Cmd::Latency(args) => latency::run(args),
        Cmd::Sweep(args) => latency::sweep::run(args),
        Cmd::Issuance(args) => issuance::run(args),
        Cmd::PolicyLoad(args) => policy_load::run(args),
        Cmd::Mesh(args) => mesh::run(args),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("palisade-bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}
