//! `palisadectl baseline show | export | diff | graph`: the learned baselines,
//! read from a proxy's baseline files or from the control plane, turned into
//! tables, policy as code and a service graph by `palisade_policy::baseline`.

mod graph;
mod table;

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use palisade_identity::client::AdminClient;
use palisade_policy::baseline::{export, BaselineSettings, Snapshot};
use palisade_policy::{DefaultPolicy, SpiffeId};

use crate::policy::{load, parse_default, DEFAULT_POLICY};

/// The exit code of a command that could not run (a baseline unreadable or
/// corrupt, a policy invalid): 1 is `diff`'s "something differs".
const FAILED: i32 = 2;

#[derive(Debug, clap::Subcommand)]
pub enum BaselineCmd {
    /// Print each identity's learned flows as a table: status, counts, and
    /// per flow its direction, peer, port, protocol, route, count, first and
    /// last seen, and rate (mean and σ per bucket).
    Show {
        #[command(flatten)]
        source: Source,
        /// Only this identity.
        #[arg(long)]
        identity: Option<String>,
    },
    /// Write a SegmentationPolicy allowing every learned flow (for review,
    /// then `git commit`), and a cases file for `palisadectl policy test`.
    /// With --output DIR: DIR/<identity>.yaml and DIR/cases/<identity>.yaml,
    /// so `policy check DIR` reads the policies alone. Without: the policy
    /// YAML on stdout.
    Export {
        #[command(flatten)]
        source: Source,
        /// The identity to export.
        #[arg(long, required_unless_present = "all", conflicts_with = "all")]
        identity: Option<String>,
        /// Every identity.
        #[arg(long)]
        all: bool,
        #[arg(long)]
        output: Option<PathBuf>,
    },
    /// Compare what was learned with a policy: flows seen but not allowed,
    /// and allow rules no learned flow used. Exit 0 when they agree, 1 when
    /// anything differs, 2 when the baseline or policy cannot be read.
    Diff {
        #[command(flatten)]
        source: Source,
        /// Policy file or directory (repeatable).
        #[arg(long = "policy", required = true)]
        policies: Vec<PathBuf>,
        /// Only this identity.
        #[arg(long)]
        identity: Option<String>,
        /// What applies to workloads no policy selects; match the proxy's setting.
        #[arg(long = "default", default_value = DEFAULT_POLICY, value_parser = parse_default)]
        default_policy: DefaultPolicy,
    },
    /// Draw the learned service graph as SVG: identities as nodes, flows as
    /// edges labelled with port and route count. With --policy, edges are
    /// colored allowed, learned-only (no rule names them), deviating (some
    /// of their flows are not allowed) or denied (a deny rule matches);
    /// without, all are learned.
    Graph {
        #[command(flatten)]
        source: Source,
        /// The SVG file to write.
        #[arg(long)]
        output: PathBuf,
        /// Policy file or directory (repeatable), to color the edges.
        #[arg(long = "policy")]
        policies: Vec<PathBuf>,
        #[arg(long = "default", default_value = DEFAULT_POLICY, value_parser = parse_default)]
        default_policy: DefaultPolicy,
    },
}

/// Where the baselines come from: files, or the control plane.
#[derive(Debug, clap::Args)]
pub struct Source {
    /// A baseline file a proxy wrote (repeatable); files of one identity
    /// are merged, as the control plane merges pods of one service.
    #[arg(long = "file")]
    files: Vec<PathBuf>,
    /// The control plane's admin socket, to read the baselines it merged
    /// from every proxy (used when no --file is given).
    #[arg(long, env = "PALISADE_ADMIN_SOCKET")]
    admin_socket: Option<PathBuf>,
    /// The most entries a baseline may hold; match the proxies'
    /// baseline.max_entries.
    #[arg(long, default_value_t = BaselineSettings::default().max_entries)]
    max_entries: usize,
}

/// Runs a baseline subcommand; returns the process exit code. Errors are
/// printed here, so that they exit 2, apart from `diff`'s 1.
pub async fn run(cmd: BaselineCmd) -> anyhow::Result<i32> {
    match run_inner(cmd).await {
        Ok(code) => Ok(code),
        Err(e) if crate::stdout_closed(&e) => Ok(0),
        Err(e) => {
            eprintln!("palisadectl: {e:#}");
            Ok(FAILED)
        }
    }
}

async fn run_inner(cmd: BaselineCmd) -> anyhow::Result<i32> {
    match cmd {
        BaselineCmd::Show { source, identity } => {
            let snaps = source.read(identity.as_deref()).await?;
            let mut out = std::io::stdout().lock();
            for snap in &snaps {
                table::write(&mut out, snap)?;
            }
            if snaps.is_empty() {
                writeln!(out, "no baselines")?;
            }
            Ok(0)
        }
        BaselineCmd::Export {
            source,
            identity,
            all: _,
            output,
        } => {
            let snaps = source.read(identity.as_deref()).await?;
            write_exports(&snaps, output.as_deref())?;
            Ok(0)
        }
        BaselineCmd::Diff {
            source,
            policies,
            identity,
            default_policy,
        } => {
            let snaps = source.read(identity.as_deref()).await?;
            let Some(policy) = load(&policies, default_policy)? else {
                return Ok(FAILED);
            };
            let diffs: Vec<_> = snaps
                .iter()
                .map(|snap| palisade_policy::baseline::diff(snap, &policy))
                .collect();
            let differs = diffs.iter().any(|d| !d.is_empty());
            let mut out = std::io::stdout().lock();
            for (snap, d) in snaps.iter().zip(&diffs) {
                match table::write_diff(&mut out, snap, d) {
                    // A closed stdout (`| head`) ends the listing, not the verdict.
                    Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => break,
                    r => r?,
                }
            }
            Ok(i32::from(differs))
        }
        BaselineCmd::Graph {
            source,
            output,
            policies,
            default_policy,
        } => {
            let snaps = source.read(None).await?;
            let policy = match policies.is_empty() {
                true => None,
                false => match load(&policies, default_policy)? {
                    Some(p) => Some(p),
                    None => return Ok(FAILED),
                },
            };
            let svg = graph::svg(&snaps, policy.as_ref());
            std::fs::write(&output, svg)
                .with_context(|| format!("cannot write {}", output.display()))?;
            writeln!(
                std::io::stdout(),
                "wrote {} ({} identities)",
                output.display(),
                snaps.len()
            )?;
            Ok(0)
        }
    }
}

impl Source {
    /// The baselines, one per identity in identity order, or `identity`'s
    /// alone (an error when there is none).
    async fn read(&self, identity: Option<&str>) -> anyhow::Result<Vec<Snapshot>> {
        let wanted = identity
            .map(SpiffeId::parse)
            .transpose()
            .context("--identity")?;
        let mut read: Vec<(String, Snapshot)> = Vec::new();
        if !self.files.is_empty() {
            for path in &self.files {
                read.push((path.display().to_string(), self.read_file(path)?));
            }
        } else if let Some(socket) = &self.admin_socket {
            let all = AdminClient::new(socket)
                .baselines(wanted.as_ref().map(SpiffeId::as_str))
                .await
                .with_context(|| format!("reading baselines from {}", socket.display()))?;
            for (i, v) in all.into_iter().enumerate() {
                let what = format!("{} baseline #{i}", socket.display());
                let bytes = serde_json::to_vec(&v).expect("JSON values serialize");
                let snap =
                    Snapshot::from_json(&bytes, self.max_entries).with_context(|| what.clone())?;
                read.push((what, snap));
            }
        } else {
            bail!("give baseline files with --file, or the control plane's --admin-socket");
        }
        let mut merged: BTreeMap<String, Snapshot> = BTreeMap::new();
        for (what, snap) in read {
            if wanted.as_ref().is_some_and(|w| *w != snap.identity) {
                continue;
            }
            match merged.get_mut(snap.identity.as_str()) {
                Some(mine) => {
                    mine.merge(&snap, self.max_entries)
                        .with_context(|| format!("merging {what}"))?;
                }
                None => {
                    merged.insert(snap.identity.as_str().to_owned(), snap);
                }
            }
        }
        if let (Some(w), true) = (&wanted, merged.is_empty()) {
            bail!("no baseline for {w}");
        }
        Ok(merged.into_values().collect())
    }

    fn read_file(&self, path: &Path) -> anyhow::Result<Snapshot> {
        let bytes =
            std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
        Snapshot::from_json(&bytes, self.max_entries).with_context(|| path.display().to_string())
    }
}

/// A file name for an identity's export: its path, dashed.
fn file_stem(id: &SpiffeId) -> String {
    let stem: String = id
        .path()
        .trim_matches('/')
        .chars()
        .map(|c| match c {
            'a'..='z' | 'A'..='Z' | '0'..='9' | '-' | '_' | '.' => c,
            _ => '-',
        })
        .collect();
    if stem.is_empty() {
        id.trust_domain_str().to_owned()
    } else {
        stem
    }
}

fn write_exports(snaps: &[Snapshot], output: Option<&Path>) -> anyhow::Result<()> {
    let Some(dir) = output else {
        let mut out = std::io::stdout().lock();
        for (i, snap) in snaps.iter().enumerate() {
            if i > 0 {
                writeln!(out, "---")?;
            }
            out.write_all(export(snap).policy.as_bytes())?;
        }
        return Ok(());
    };
    let cases_dir = dir.join("cases");
    std::fs::create_dir_all(&cases_dir)
        .with_context(|| format!("cannot create {}", cases_dir.display()))?;
    for snap in snaps {
        let e = export(snap);
        let stem = file_stem(&snap.identity);
        let policy = dir.join(format!("{stem}.yaml"));
        let cases = cases_dir.join(format!("{stem}.yaml"));
        for (path, text) in [(&policy, &e.policy), (&cases, &e.cases)] {
            std::fs::write(path, text)
                .with_context(|| format!("cannot write {}", path.display()))?;
        }
        // A note only: a closed stdout must not stop the files being written.
        let _ = writeln!(
            std::io::stdout(),
            "{}: {} flows -> {} (cases: {})",
            snap.identity,
            snap.entries.len(),
            policy.display(),
            cases.display()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(subcommand)]
        baseline: BaselineCmd,
    }

    #[test]
    fn export_files_are_named_after_the_identity_path() {
        let id = |s| SpiffeId::parse(s).unwrap();
        assert_eq!(
            file_stem(&id("spiffe://cluster.local/ns/shop/sa/api")),
            "ns-shop-sa-api"
        );
        assert_eq!(file_stem(&id("spiffe://example.org")), "example.org");
    }

    #[test]
    fn export_takes_one_identity_or_all() {
        let parse = |args: &[&str]| Cli::try_parse_from([&["x", "export"], args].concat());
        assert!(parse(&["--all"]).is_ok());
        assert!(parse(&["--identity", "spiffe://td/a"]).is_ok());
        assert!(parse(&[]).is_err());
        assert!(parse(&["--all", "--identity", "spiffe://td/a"]).is_err());
    }
}
