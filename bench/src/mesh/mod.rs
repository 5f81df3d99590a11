//! `palisade-bench mesh`: thousands of simulated sidecars in one process
//! against a real control plane. Each holds its own SVID and keep-alive mTLS
//! connection, long-polls its policies and refreshes the endpoint map while
//! SVIDs renew at a steady rate; the bench times how long one policy change
//! takes to reach them and reads the control plane's CPU and memory.

mod cluster;
mod enroll;
mod plot;
mod push;
mod renew;
mod report;
mod run;
mod sidecar;

use std::path::PathBuf;
use std::time::Duration;

use palisade_identity::duration;

pub use run::run;

/// Where results go unless `--out` says otherwise: `bench/results/`.
const DEFAULT_OUT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/results");

#[derive(Debug, Clone, clap::Args)]
pub struct MeshArgs {
    /// Mesh sizes, each run against a fresh control plane.
    #[arg(long, value_delimiter = ',', default_value = "1000,5000,10000")]
    pub sidecars: Vec<usize>,
    /// Control-plane replicas the sidecars spread over, round-robin. More
    /// than one run on a 3-member etcd cluster (`--store etcd`) the bench
    /// starts, from Debian's `etcd-server`.
    #[arg(long, default_value_t = 1)]
    pub replicas: usize,
    /// SVID renewals per second across the whole mesh, from the steady
    /// window to the last push.
    #[arg(long, default_value_t = 100.0)]
    pub renewals_per_sec: f64,
    /// Policy changes pushed per mesh size.
    #[arg(long, default_value_t = 3)]
    pub pushes: u32,
    /// A push that has not reached every sidecar by then counts the rest as missed.
    #[arg(long, default_value = "30s", value_parser = duration::parse)]
    pub push_timeout: Duration,
    /// Parked sidecars and renewals only, before the first push: the window
    /// the control plane's steady CPU is read over.
    #[arg(long, default_value = "10s", value_parser = duration::parse)]
    pub steady: Duration,
    /// How often each sidecar fetches `/v1/endpoints` (the proxy's
    /// `outbound.endpoints_refresh` default); also the long poll's `wait`.
    #[arg(long, default_value = "10s", value_parser = duration::parse)]
    pub endpoints_refresh: Duration,
    /// Entries in the endpoint map the control plane serves.
    #[arg(long, default_value_t = 100)]
    pub endpoints: usize,
    /// First SVIDs and first connections in flight at once
    /// while the mesh is set up.
    #[arg(long, default_value_t = 64)]
    pub setup_concurrency: usize,
    #[arg(long, env = "PALISADE_CONTROL_PLANE_BIN")]
    pub control_plane_bin: Option<PathBuf>,
    /// Directory for `mesh.json`, `mesh.md` and `mesh.svg` (with several
    /// replicas `mesh-replicas<N>.*`).
    #[arg(long, default_value = DEFAULT_OUT)]
    pub out: PathBuf,
    /// How the machine was used during the run, copied into the report
    /// (e.g. "shared with compiler jobs").
    #[arg(long)]
    pub note: Option<String>,
}

/// The SPIFFE ID of simulated sidecar `i`: all in namespace `mesh`, so one
/// policy selecting the namespace reaches every one.
fn sidecar_id(i: usize) -> String {
    format!("spiffe://cluster.local/ns/mesh/sa/sidecar-{i}")
}
