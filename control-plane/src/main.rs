//! `palisade-control-plane`: the SPIFFE CA and workload identity API.
#![forbid(unsafe_code)]

use clap::Parser;
use palisade_control_plane::config::Config;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let config = Config::parse();
    palisade_control_plane::server::listener::raise_open_file_limit(config.max_connections);
    palisade_control_plane::server::run(config).await?;
    Ok(())
}
