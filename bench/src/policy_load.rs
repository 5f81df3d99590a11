//! `palisade-bench policy-load`: what a large policy push costs, per shape
//! (`policy_shapes`): parse and compile time in this process, then the
//! resident memory a real `palisade-proxy` gains when the set is swapped in.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use palisade_policy::{compile, parse_documents, DefaultPolicy, Defaults};

use crate::latency::child::{free_addr, is_executable, ProxyProcess};
use crate::latency::control_plane::ControlPlane;
use crate::latency::procstat::{peak_rss_kib, rss_kib};
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
        Some(ControlPlane::start(&server, &ctl, dir.path())?)
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
    let (admin, listen, app) = (free_addr()?, free_addr()?, free_addr()?);
    let config = dir.join(format!("{name}-proxy.yaml"));
    std::fs::write(
        &config,
        format!(
            "mode: explicit\n\
             inbound:\n  ports:\n    - {{ listen: \"{listen}\", app: \"{app}\" }}\n\
             admin:\n  bind: \"{admin}\"\n\
             policy:\n  path: \"{}\"\n  default: deny\n\
             identity:\n  control_plane: \"{}\"\n  trust_domain: cluster.local\n\
             \x20 bootstrap_bundle: \"{}\"\n  join_token: \"{}\"\n",
            policy.display(),
            cp.addr,
            cp.bundle().display(),
            cp.join_token(LOCAL)?,
        ),
    )?;
    let mut cmd = Command::new(bin);
    cmd.arg("--config").arg(&config).env("PALISADE_LOG", "warn");
    let mut proxy = ProxyProcess::spawn(&format!("palisade-proxy-{name}"), cmd, dir)?;
    proxy.wait_listening(&[admin], Duration::from_secs(30))?;
    wait_for(&mut proxy, Duration::from_secs(30), || {
        Ok(get(admin, "/ready")?.starts_with("HTTP/1.1 200"))
    })?;
    std::thread::sleep(Duration::from_secs(1));
    let before = rss_kib(proxy.pid())?;

    let tmp = dir.join(format!("{name}.yaml.tmp"));
    std::fs::write(&tmp, yaml)?;
    let t = Instant::now();
    std::fs::rename(&tmp, &policy)?;
    wait_for(&mut proxy, Duration::from_secs(300), || {
        Ok(policy_rules(&get(admin, "/config_dump")?) == Some(rules as u64))
    })?;
    let reload = t.elapsed();
    // The replaced set is freed on another thread; let it finish.
    std::thread::sleep(Duration::from_secs(1));
    Ok(Memory {
        reload,
        before,
        after: rss_kib(proxy.pid())?,
        peak: peak_rss_kib(proxy.pid())?,
    })
}

fn wait_for(
    proxy: &mut ProxyProcess,
    timeout: Duration,
    mut done: impl FnMut() -> anyhow::Result<bool>,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        proxy.ensure_running()?;
        if done().unwrap_or(false) {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!("{} timed out; its log:\n{}", proxy.name, proxy.log_tail());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `policy.rules` from a /config_dump response.
fn policy_rules(response: &str) -> Option<u64> {
    let (_, body) = response.split_once("\r\n\r\n")?;
    let dump: serde_json::Value = serde_json::from_str(body).ok()?;
    dump["policy"]["rules"].as_u64()
}

/// One `GET` on the admin port; the whole response as text.
fn get(addr: SocketAddr, path: &str) -> anyhow::Result<String> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n"
    )?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    Ok(out)
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
