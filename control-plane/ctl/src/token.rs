//! `palisadectl token create`: a single-use join token bound to one SPIFFE ID.

use std::path::PathBuf;
use std::time::Duration;

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
    /// How long the token stays redeemable (30s, 10m, 1h 30m, ...).
    #[arg(long, default_value = "10m", value_parser = palisade_identity::duration::parse)]
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

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(subcommand)]
        token: TokenCmd,
    }

    fn ttl(arg: &str) -> Result<Duration, clap::Error> {
        let cli =
            Cli::try_parse_from(["token", "create", "--admin-socket=/a", "--identity=x", arg])?;
        let TokenCmd::Create(a) = cli.token;
        Ok(a.ttl)
    }

    #[test]
    fn ttl_takes_the_shared_duration_grammar() {
        assert_eq!(ttl("--ttl=500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(ttl("--ttl=1h 30m").unwrap(), Duration::from_secs(5400));
        assert_eq!(ttl("--ttl=1.5s").unwrap(), Duration::from_millis(1500));
        let err = ttl("--ttl=soon").unwrap_err().to_string();
        assert!(err.contains("--ttl"), "{err}");
    }
}
