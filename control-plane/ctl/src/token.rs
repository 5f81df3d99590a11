//! `palisadectl token create`: single-use join tokens, each bound to one
//! SPIFFE ID; one, or a batch minted over one admin-socket connection.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use palisade_identity::api::JoinTokenBatchEntry;
use palisade_identity::client::AdminClient;

#[derive(Debug, clap::Subcommand)]
pub enum TokenCmd {
    /// Create join tokens; prints only the tokens, one a line in the order
    /// asked for, so scripts can capture them.
    Create(CreateArgs),
}

#[derive(Debug, clap::Args)]
pub struct CreateArgs {
    /// The control plane's admin socket (default <state-dir>/admin.sock).
    #[arg(long, env = "PALISADE_ADMIN_SOCKET")]
    pub admin_socket: PathBuf,
    /// SPIFFE ID the token attests, e.g. spiffe://cluster.local/ns/shop/sa/api.
    #[arg(
        long,
        required_unless_present = "from_file",
        conflicts_with = "from_file"
    )]
    pub identity: Option<String>,
    /// A file of SPIFFE IDs, one a line (blank lines and `#` comments
    /// skipped); `-` reads standard input.
    #[arg(long)]
    pub from_file: Option<PathBuf>,
    /// Tokens to create for each identity.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    pub count: u32,
    /// How long the tokens stay redeemable (30s, 10m, 1h 30m, ...).
    #[arg(long, default_value = "10m", value_parser = palisade_identity::duration::parse)]
    pub ttl: Duration,
    /// Print a JSON array of `{token, spiffe_id, expires_at}` instead.
    #[arg(long)]
    pub json: bool,
}

pub async fn run(cmd: TokenCmd) -> anyhow::Result<()> {
    match cmd {
        TokenCmd::Create(a) => create(a).await,
    }
}

async fn create(a: CreateArgs) -> anyhow::Result<()> {
    let admin = AdminClient::new(&a.admin_socket);
    let ids = match (&a.identity, &a.from_file) {
        (Some(id), _) => vec![id.clone()],
        (None, Some(path)) => read_identities(path)?,
        (None, None) => unreachable!("clap requires --identity or --from-file"),
    };
    let tokens = if ids.len() == 1 && a.count == 1 && !a.json {
        vec![admin.create_join_token(&ids[0], a.ttl).await?]
    } else {
        let entries: Vec<_> = ids
            .into_iter()
            .map(|spiffe_id| JoinTokenBatchEntry {
                spiffe_id,
                count: a.count,
            })
            .collect();
        admin.create_join_tokens(&entries, a.ttl).await?
    };
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    if a.json {
        serde_json::to_writer_pretty(&mut out, &tokens)?;
        writeln!(out)?;
    } else {
        for t in &tokens {
            writeln!(out, "{}", t.token)?;
        }
    }
    out.flush()?;
    Ok(())
}

fn read_identities(path: &Path) -> anyhow::Result<Vec<String>> {
    let text = if path.as_os_str() == "-" {
        std::io::read_to_string(std::io::stdin())?
    } else {
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?
    };
    let ids: Vec<String> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_owned)
        .collect();
    if ids.is_empty() {
        anyhow::bail!("{}: no SPIFFE IDs in it", path.display());
    }
    Ok(ids)
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
