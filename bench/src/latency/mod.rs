//! `palisade-bench latency`: what a sidecar adds to each request, measured
//! against direct connections and Envoy in one run with interleaved trials.

mod backend;
pub mod certs;
mod cgroup;
mod client;
mod closed_loop;
mod conditions;
mod hist;
mod load;
pub(crate) mod machine;
mod neighbour;
mod perf;
mod plot;
pub(crate) mod procstat;
mod report;
mod run;
mod stage;
mod stats;
pub mod sweep;
mod tcp;
pub(crate) mod tools;
mod topology;

use std::path::PathBuf;

use clap::Args;

pub use conditions::ConditionArgs;
pub use run::run;
pub use topology::{BaselineRun, PathKind};

/// Where results go unless `--out` says otherwise: `bench/results/`.
const DEFAULT_OUT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/results");

/// Which paths to start and with what: shared by `latency` and `sweep`.
#[derive(Debug, Clone, Args)]
pub struct PathArgs {
    /// Paths to measure, in this order within each round.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "direct,palisade,envoy,haproxy"
    )]
    pub paths: Vec<PathKind>,
    /// Include the Palisade path (needs the palisade-proxy binary).
    #[arg(long)]
    pub palisade: bool,
    /// Baseline modes to run the Palisade path in, each as its own path in
    /// the same rounds (`palisade`, `palisade+learn`, `palisade+monitor`).
    #[arg(long, value_delimiter = ',', default_value = "off")]
    pub baseline: Vec<BaselineRun>,
    /// Worker threads for Envoy (--concurrency) and HAProxy (nbthread). The
    /// default matches palisade-proxy, which always runs two.
    #[arg(long, default_value_t = 2)]
    pub proxy_workers: usize,
    /// A request slower than this counts as an error.
    #[arg(long, default_value_t = 5.0)]
    pub request_timeout: f64,
    /// Where the SPIFFE SVIDs come from.
    #[arg(long, value_enum, default_value_t = certs::CertSource::Auto)]
    pub certs: certs::CertSource,
    #[arg(long, env = "ENVOY_BIN")]
    pub envoy_bin: Option<PathBuf>,
    #[arg(long, env = "HAPROXY_BIN")]
    pub haproxy_bin: Option<PathBuf>,
    #[arg(long, env = "PALISADE_PROXY_BIN")]
    pub palisade_bin: Option<PathBuf>,
    #[arg(long, env = "PALISADE_CONTROL_PLANE_BIN")]
    pub control_plane_bin: Option<PathBuf>,
    #[arg(long, env = "PALISADECTL_BIN")]
    pub palisadectl_bin: Option<PathBuf>,
}

impl PathArgs {
    /// `--smoke` runs only the paths CI cares about.
    fn smoke(&mut self) {
        self.paths
            .retain(|p| matches!(p, PathKind::Direct | PathKind::Palisade));
    }
}

#[derive(Debug, Clone, Args)]
pub struct LatencyArgs {
    #[command(flatten)]
    pub setup: PathArgs,
    #[command(flatten)]
    pub conditions: ConditionArgs,
    /// Target request rate of the open-loop load.
    #[arg(long, default_value_t = 1000)]
    pub rps: u32,
    /// Persistent HTTP/1.1 connections the load is spread over.
    #[arg(long, default_value_t = 4)]
    pub connections: usize,
    /// Size of each request body (echoed back).
    #[arg(long, default_value_t = 1024)]
    pub body_bytes: usize,
    /// Seconds per latency trial.
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
    /// Seconds of load on each path before the trials, not recorded.
    #[arg(long, default_value_t = 5.0)]
    pub warmup: f64,
    /// Rounds of latency trials; each round runs every path once.
    #[arg(long, default_value_t = 5)]
    pub trials: usize,
    /// Closed loop, as fast as possible, instead of the constant-rate open loop.
    #[arg(long)]
    pub max_throughput: bool,
    /// Bytes per bulk TCP transfer.
    #[arg(long, default_value_t = 1 << 30)]
    pub bulk_bytes: u64,
    /// Rounds of bulk transfers (0 skips them).
    #[arg(long, default_value_t = 3)]
    pub bulk_trials: usize,
    /// Seconds per new-connection (handshake) trial.
    #[arg(long, default_value_t = 3.0)]
    pub churn_duration: f64,
    /// Rounds of new-connection trials (0 skips them).
    #[arg(long, default_value_t = 3)]
    pub churn_trials: usize,
    /// Directory for JSON, Markdown and SVG results.
    #[arg(long, default_value = DEFAULT_OUT)]
    pub out: PathBuf,
    /// A few seconds for CI: direct and palisade only, short trials, small transfers.
    #[arg(long)]
    pub smoke: bool,
}

impl LatencyArgs {
    /// Apply `--smoke`: everything short, only the paths CI cares about.
    pub fn effective(mut self) -> LatencyArgs {
        if self.smoke {
            self.setup.smoke();
            self.rps = self.rps.min(200);
            self.duration = 1.0;
            self.warmup = 0.5;
            self.trials = 2;
            self.bulk_bytes = 8 << 20;
            self.bulk_trials = 1;
            self.churn_duration = 0.5;
            self.churn_trials = 1;
        }
        self
    }
}
