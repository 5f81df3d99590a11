//! `palisadectl up`: a local mesh on loopback. It starts a control plane and
//! three demo workloads (frontend, api, db), each a small echo service behind
//! its own `palisade-proxy` in explicit mode, drives traffic between them and
//! shows who talked to whom, with identities and decisions. Ctrl-C stops it.
//! `--scenario compromised` adds learned baselines (see `compromised`).

mod compromised;
mod mesh;
mod traffic;
mod view;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use tokio::signal::unix::{signal, Signal, SignalKind};

use compromised::Attack;
use mesh::Mesh;
use traffic::{Call, Tally};

/// The demo's trust domain and namespace.
pub const TRUST_DOMAIN: &str = "cluster.local";
pub const NAMESPACE: &str = "demo";
pub const WORKLOADS: [&str; 3] = ["frontend", "api", "db"];

#[derive(Debug, clap::Args)]
pub struct UpArgs {
    /// Policy file or directory the sidecars enforce. Default:
    /// policies/examples/demo.yaml when it exists, else no policy (allow all
    /// meshed traffic).
    #[arg(long)]
    pub policy: Option<PathBuf>,
    /// Run without any policy: every meshed connection is allowed.
    #[arg(long, conflicts_with = "policy")]
    pub no_policy: bool,
    /// Stop by itself after this many seconds (default: run until Ctrl-C).
    #[arg(long)]
    pub duration: Option<u64>,
    /// Milliseconds between rounds of demo traffic.
    #[arg(long, default_value_t = 1000)]
    pub interval_ms: u64,
    /// Working directory for state, configs and logs (default: a fresh
    /// directory under the system temp dir, removed on exit).
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Print one line per call instead of a redrawn table (the default when
    /// stdout is not a terminal).
    #[arg(long)]
    pub plain: bool,
    /// Directory holding palisade-control-plane and palisade-proxy (default:
    /// next to this palisadectl).
    #[arg(long)]
    pub bin_dir: Option<PathBuf>,
    /// What the demo shows: allowed and denied traffic (`default`), or a
    /// workload learned, then watched and locked down while `api` turns
    /// hostile (`compromised`).
    #[arg(long, value_enum, default_value_t = Scenario::Default)]
    pub scenario: Scenario,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Scenario {
    /// The policy's allowed and denied calls, round after round.
    Default,
    /// Learn, monitor, then protect, while `api` probes `db`.
    Compromised,
}

/// The calls the demo makes every round: (caller, callee).
pub const CALLS: [(&str, &str); 4] = [
    ("frontend", "api"),
    ("api", "db"),
    ("frontend", "db"),
    ("db", "api"),
];

pub async fn run(args: UpArgs) -> anyhow::Result<()> {
    let policy = match (&args.policy, args.no_policy) {
        (_, true) => None,
        (Some(p), false) => Some(p.clone()),
        (None, false) => {
            let p = PathBuf::from("policies/examples/demo.yaml");
            p.exists().then_some(p)
        }
    };
    let policy = policy
        .map(|p| std::fs::canonicalize(&p).with_context(|| format!("policy {}", p.display())))
        .transpose()?;
    let bin_dir = match &args.bin_dir {
        Some(d) => d.clone(),
        None => std::env::current_exe()?
            .parent()
            .context("palisadectl has no parent directory")?
            .to_path_buf(),
    };

    // Registered before anything starts, so a Ctrl-C at any moment (even
    // mid-call) is kept until the loop sees it.
    let stop = Stop {
        interrupt: signal(SignalKind::interrupt())?,
        terminate: signal(SignalKind::terminate())?,
    };
    let mut mesh =
        Mesh::start(&bin_dir, args.dir.clone(), policy.as_deref(), args.scenario).await?;
    let result = drive(&mesh, &args, stop).await;
    mesh.stop().await;
    result
}

/// Ctrl-C and SIGTERM, both of which stop the demo.
struct Stop {
    interrupt: Signal,
    terminate: Signal,
}

async fn drive(mesh: &Mesh, args: &UpArgs, mut stop: Stop) -> anyhow::Result<()> {
    let policy = mesh.policy();
    let plain = args.plain || !std::io::IsTerminal::is_terminal(&std::io::stdout());
    let mut calls: Vec<Call> = CALLS
        .iter()
        .map(|(from, to)| mesh.call(from, to))
        .collect::<anyhow::Result<_>>()?;
    let mut attack = match args.scenario {
        Scenario::Default => None,
        Scenario::Compromised => Some(Attack::new(mesh)?),
    };
    if let Some(a) = &attack {
        calls.push(a.learned_call().clone());
    }
    let mut tally = Tally::new(&calls);
    println!(
        "palisade local mesh is up: control plane {}, workloads {}, policy {}",
        mesh.control_plane_addr(),
        WORKLOADS.join(", "),
        policy
            .map(|p| p.display().to_string())
            .unwrap_or_else(|| "none (all meshed traffic allowed)".into())
    );
    println!("logs and configs: {}", mesh.dir().display());
    let deadline = args
        .duration
        .map(|s| tokio::time::Instant::now() + Duration::from_secs(s));
    let mut ticker = tokio::time::interval(Duration::from_millis(args.interval_ms.max(50)));
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = stop.interrupt.recv() => break,
            _ = stop.terminate.recv() => break,
        }
        if deadline.is_some_and(|d| tokio::time::Instant::now() >= d) {
            break;
        }
        if let Some(a) = &mut attack {
            a.begin_round(mesh, plain).await?;
        }
        for (i, call) in calls.iter().enumerate() {
            let outcome = call.run().await;
            if plain {
                println!("{}", view::line(call, &outcome));
            }
            tally.record(i, outcome);
        }
        if let Some(a) = &mut attack {
            a.end_round(plain).await;
        }
        if !plain {
            let seen = mesh.scrape().await;
            let story = attack.as_ref().map(Attack::story).unwrap_or_default();
            print!("{}", view::screen(&calls, &tally, &seen, policy, &story));
        }
    }
    if let Some(a) = &mut attack {
        a.finish(plain).await;
    }
    let seen = mesh.scrape().await;
    println!("{}", view::summary(&calls, &tally, &seen));
    Ok(())
}
