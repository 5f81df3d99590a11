//! `palisadectl token create`: a single-use join token bound to one SPIFFE ID.

use std::path::PathBuf;
use std::time::Duration;

use palisade_control_plane::config::parse_duration;
use palisade_identity::client::AdminClient;

#[derive(Debug, clap::Subcommand)]
pub enum TokenCmd {
    /// Create a join token; prints only the token, so scripts can capture it.
    Create(CreateArgs),
}

#[derive(Debug, clap::Args)]
pub struct CreateArgs {
    /// The control plane's admin socket (default <state-dir>/admin.sock).
    #[arg(long, env = "PALISADE_ADMIN_SOCKET")]
    pub admin_socket: PathBuf,
    /// SPIFFE ID the token attests, e.g. spiffe://cluster.local/ns/shop/sa/api.
    #[arg(long)]
    pub identity: String,
    /// How long the token stays redeemable (30s, 10m, 1h, ...).
    #[arg(long, default_value = "10m", value_parser = parse_duration)]
    pub ttl: Duration,
}

pub async fn run(cmd: TokenCmd) -> anyhow::Result<()> {
    match cmd {
        TokenCmd::Create(a) => {
            let resp = AdminClient::new(&a.admin_socket)
                .create_join_token(&a.identity, a.ttl)
                .await?;
            println!("{}", resp.token);
            Ok(())
        }
    }
}
