//! `palisade-bench policy-load`: what a large policy push costs, per shape
//! (`policy_shapes`): parse and compile time in this process, then the
//! resident memory a real `palisade-proxy` gains when the set is swapped in.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use palisade_policy::{compile, parse_documents, DefaultPolicy, Defaults};
use palisadectl::local::{
    free_addr, http_request, ControlPlane, ControlPlaneSpec, Sidecar, SidecarSpec,
};

use crate::latency::procstat::{peak_rss_kib, rss_kib};
use crate::latency::tools::is_executable;
use crate::policy_shapes::{Shape, LOCAL};

#[derive(Debug, clap::Args)]
pub struct PolicyLoadArgs {
    /// Rules per policy set.
    #[arg(long, default_value_t = 100_000)]
    pub rules: usize,
    /// Shapes to run (default: all): distinct_peers, one_peer, distinct_cidrs,
    /// overlapping_cidrs, http_paths, http_on_every_port, port_ranges, many_targets.
    #[arg(long, value_delimiter = ',')]
    pub shapes: Vec<String>,
    /// Only time parsing and compiling; start no proxy.
    #[arg(long)]
    pub compile_only: bool,
    /// The binaries (default: next to this one).
    #[arg(long)]
    pub palisade_bin: Option<PathBuf>,
    #[arg(long)]
    pub control_plane_bin: Option<PathBuf>,
    #[arg(long)]
    pub palisadectl_bin: Option<PathBuf>,
}

pub fn run(args: PolicyLoadArgs) -> anyhow::Result<ExitCode> {
    let shapes = if args.shapes.is_empty() {
        Shape::ALL.to_vec()
    } else {
        let mut out = Vec::new();
        for name in &args.shapes {
            out.push(Shape::from_name(name).with_context(|| format!("unknown shape `{name}`"))?);
        }
        out
    };
    let dir = tempfile::Builder::new()
        .prefix("palisade-policy-load-")
        .tempdir()?;
    let cp = if args.compile_only {
        None
    } else {
        let server = binary(&args.control_plane_bin, "palisade-control-plane")?;
        let ctl = binary(&args.palisadectl_bin, "palisadectl")?;
        Some(ControlPlane::start(
            &server,
            &ctl,
            dir.path(),
            ControlPlaneSpec::default(),
        )?)
    };
    println!(
        "| shape | rules | parse | compile | proxy reload seen | RSS before | RSS after | growth | peak growth |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    for shape in shapes {
        let yaml = shape.yaml(args.rules, 1);
        let t = Instant::now();
        let docs = parse_documents("shape.yaml", &yaml)
            .map_err(|e| anyhow::anyhow!("{}: {e:?}", shape.name()))?;
        let parse = t.elapsed();
        let t = Instant::now();
        let compiled = compile(docs, Defaults::new(DefaultPolicy::Deny))
            .map_err(|e| anyhow::anyhow!("{}: {e:?}", shape.name()))?;
        let compile_time = t.elapsed();
        drop(compiled);
        let row = format!(
            "| {} | {} | {:.3} s | {:.3} s",
            shape.name(),
            args.rules,
            parse.as_secs_f64(),
            compile_time.as_secs_f64()
        );
        let Some(cp) = &cp else {
            println!("{row} | | | | | |");
            continue;
        };
        let bin = binary(&args.palisade_bin, "palisade-proxy")?;
        let m = proxy_memory(&bin, cp, dir.path(), shape.name(), &yaml, args.rules)?;
        println!(
            "{row} | {:.2} s | {:.1} MiB | {:.1} MiB | {:.1} MiB | {:.1} MiB |",
            m.reload.as_secs_f64(),
            mib(m.before),
            mib(m.after),
            mib(m.after.saturating_sub(m.before)),
            mib(m.peak.saturating_sub(m.before)),
        );
    }
    Ok(ExitCode::SUCCESS)
}

struct Memory {
    reload: Duration,
    before: u64,
    after: u64,
    peak: u64,
}

/// Starts a proxy on a one-rule policy, then replaces the file with `yaml`
/// and reads VmRSS and VmHWM once /config_dump reports `rules` rules.
fn proxy_memory(
    bin: &Path,
    cp: &ControlPlane,
    dir: &Path,
    name: &str,
    yaml: &str,
    rules: usize,
) -> anyhow::Result<Memory> {
    let policy = dir.join(format!("{name}.yaml"));
    std::fs::write(&policy, Shape::DistinctPeers.yaml(1, 0))?;
    let token = cp.join_token(LOCAL, "10m")?;
    let mut spec = SidecarSpec::new(
        &format!("palisade-proxy-{name}"),
        cp.addr(),
        &cp.bundle_path(),
        &token,
    )?;
    spec.inbound(free_addr()?, false)?;
    spec.policy = Some(policy.clone());
    spec.extra_yaml = "policy:\n  default: deny\n".to_owned();
    spec.log_filter = Some("warn".to_owned());
    let mut proxy = Sidecar::start(bin, spec, dir)?;
    proxy.wait_ready(Duration::from_secs(30))?;
    std::thread::sleep(Duration::from_secs(1));
    let before = rss_kib(proxy.child.pid())?;

    let tmp = dir.join(format!("{name}.yaml.tmp"));
    std::fs::write(&tmp, yaml)?;
    let t = Instant::now();
    std::fs::rename(&tmp, &policy)?;
    let admin = proxy.admin;
    proxy
        .child
        .wait_until("the new policy", Duration::from_secs(300), || {
            let (_, dump) = http_request(admin, "GET", "/config_dump").ok()?;
            (policy_rules(&dump) == Some(rules as u64)).then_some(())
        })?;
    let reload = t.elapsed();
    // The replaced set is freed on another thread; let it finish.
    std::thread::sleep(Duration::from_secs(1));
    Ok(Memory {
        reload,
        before,
        after: rss_kib(proxy.child.pid())?,
        peak: peak_rss_kib(proxy.child.pid())?,
    })
}

/// `policy.rules` from a /config_dump body.
fn policy_rules(body: &str) -> Option<u64> {
    let dump: serde_json::Value = serde_json::from_str(body).ok()?;
    dump["policy"]["rules"].as_u64()
}

fn binary(explicit: &Option<PathBuf>, name: &str) -> anyhow::Result<PathBuf> {
    let path = match explicit {
        Some(p) => p.clone(),
        None => std::env::current_exe()?
            .parent()
            .context("no parent dir")?
            .join(name),
    };
    if !is_executable(&path) {
        bail!(
            "{} not found: build it with `cargo build --release -p palisade-proxy -p palisade-control-plane`",
            path.display()
        );
    }
    Ok(path)
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}
