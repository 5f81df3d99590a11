//! `palisade-bench issuance`: SVID issuance throughput and latency of a real
//! control plane on loopback. Each worker holds one SVID (got with a join
//! token) and renews over one keep-alive mTLS connection, sending a fresh CSR
//! (generated before the clock starts) with every request.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use hdrhistogram::Histogram;
use palisade_identity::api::{Attestation, SvidRequest, SvidResponse};
use palisade_identity::client::{AdminClient, ApiClient};
use palisade_identity::csr::new_key_and_csr;
use palisade_identity::svid::{certs_from_pem, private_key_from_pem};
use palisade_policy::TrustDomain;
use palisadectl::local::{ControlPlane, ControlPlaneSpec};
use rcgen::KeyPair;
use rustls::pki_types::CertificateDer;

use crate::latency::procstat::cpu_seconds;

#[derive(Debug, clap::Args)]
pub struct IssuanceArgs {
    /// Measured duration.
    #[arg(long, default_value_t = 10)]
    pub seconds: u64,
    /// Concurrent clients, each on its own keep-alive mTLS connection.
    #[arg(long, default_value_t = 16)]
    pub concurrency: usize,
    /// Unmeasured warm-up before the clock starts.
    #[arg(long, default_value_t = 1)]
    pub warmup_seconds: u64,
    /// The control-plane binary (default: `palisade-control-plane` next to this one).
    #[arg(long)]
    pub control_plane_bin: Option<PathBuf>,
    /// Fresh CSRs generated up front (default: 12,000 per second of run); they
    /// are reused round-robin only if the run outpaces them.
    #[arg(long)]
    pub csrs: Option<usize>,
}

/// `palisade-control-plane` next to this binary.
pub(crate) fn default_bin() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let bin = exe.with_file_name("palisade-control-plane");
    if !bin.exists() {
        bail!(
            "{} not found: build it first (`cargo build --release -p palisade-control-plane`) or pass --control-plane-bin",
            bin.display()
        );
    }
    Ok(bin)
}

/// CSRs over fresh P-256 keys, generated on every core before the run.
fn make_csrs(n: usize) -> Vec<String> {
    keys_and_csrs(n).into_iter().map(|(_, csr)| csr).collect()
}

/// `n` fresh P-256 keys, each with its CSR, generated on every core.
pub(crate) fn keys_and_csrs(n: usize) -> Vec<(KeyPair, String)> {
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2);
    let per = n.div_ceil(threads);
    let handles: Vec<_> = (0..threads)
        .map(|_| {
            std::thread::spawn(move || {
                (0..per)
                    .map(|_| new_key_and_csr().expect("key and CSR"))
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    handles
        .into_iter()
        .flat_map(|h| h.join().expect("csr thread"))
        .take(n)
        .collect()
}

/// A workload API client that authenticates with `svid` and its `key`.
pub(crate) fn client_with_svid(
    addr: &str,
    td: &TrustDomain,
    bundle: &[CertificateDer<'static>],
    svid: &SvidResponse,
    key: &KeyPair,
) -> anyhow::Result<ApiClient> {
    let chain = certs_from_pem(svid.svid_chain.as_bytes())?;
    let private = private_key_from_pem(key.serialize_pem().as_bytes())?;
    Ok(ApiClient::new(addr, td, bundle, Some((chain, private)))?)
}

struct WorkerResult {
    hist: Histogram<u64>,
    ok: u64,
    errors: u64,
}

pub fn run(args: IssuanceArgs) -> anyhow::Result<ExitCode> {
    let bin = match &args.control_plane_bin {
        Some(b) => b.clone(),
        None => default_bin()?,
    };
    let n_csrs = args
        .csrs
        .unwrap_or((args.seconds + args.warmup_seconds) as usize * 12_000);
    eprintln!("generating {n_csrs} CSRs over fresh P-256 keys ...");
    let csrs = Arc::new(make_csrs(n_csrs));
    let dir = tempfile::Builder::new()
        .prefix("palisade-bench-cp-")
        .tempdir()?;
    let spec = ControlPlaneSpec {
        extra_args: vec!["--max-connections".into(), "4096".into()],
        log_filter: "warn".into(),
        ..ControlPlaneSpec::default()
    };
    // Join tokens come from the admin API directly, not from palisadectl.
    let cp = ControlPlane::start(&bin, &bin.with_file_name("palisadectl"), dir.path(), spec)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(drive(&cp, &args, csrs))
}

async fn drive(
    cp: &ControlPlane,
    args: &IssuanceArgs,
    csrs: Arc<Vec<String>>,
) -> anyhow::Result<ExitCode> {
    let td = TrustDomain::new("cluster.local")?;
    let bundle = certs_from_pem(&std::fs::read(cp.bundle_path())?)?;
    let admin = AdminClient::new(&cp.admin_socket());
    let addr = cp.addr().to_string();
    let pid = cp.pid().context("the control plane is stopped")?;
    let bootstrap = ApiClient::new(&addr, &td, &bundle, None)?;

    // One SVID per worker, through a join token each.
    let mut clients = Vec::new();
    for i in 0..args.concurrency {
        let id = format!("spiffe://cluster.local/ns/bench/sa/worker-{i}");
        let token = admin
            .create_join_token(&id, Duration::from_secs(600))
            .await?
            .token;
        let (key, csr) = new_key_and_csr()?;
        let svid = bootstrap
            .issue(&SvidRequest {
                csr,
                attestation: Attestation::JoinToken(token),
            })
            .await?;
        clients.push(client_with_svid(&addr, &td, &bundle, &svid, &key)?);
    }

    let next = Arc::new(AtomicUsize::new(0));
    let warm_until = Instant::now() + Duration::from_secs(args.warmup_seconds);
    let end = warm_until + Duration::from_secs(args.seconds);
    let cpu_start = Arc::new(std::sync::Mutex::new(None::<f64>));
    let mut tasks = Vec::new();
    for client in clients {
        let (csrs, next) = (csrs.clone(), next.clone());
        tasks.push(tokio::spawn(async move {
            let mut res = WorkerResult {
                hist: Histogram::new_with_bounds(1, 60_000_000, 3).unwrap(),
                ok: 0,
                errors: 0,
            };
            let mut conn = None;
            while Instant::now() < end {
                if conn.is_none() {
                    conn = client.connect().await.ok();
                    if conn.is_none() {
                        res.errors += 1;
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        continue;
                    }
                }
                let csr = &csrs[next.fetch_add(1, Ordering::Relaxed) % csrs.len()];
                let t0 = Instant::now();
                let outcome = conn.as_mut().expect("connected").renew(csr).await;
                let measured = t0 >= warm_until;
                match outcome {
                    Ok(_) if measured => {
                        res.ok += 1;
                        res.hist.saturating_record(t0.elapsed().as_micros() as u64);
                    }
                    Ok(_) => {}
                    Err(e) => {
                        if measured {
                            res.errors += 1;
                        }
                        tracing::debug!(error = %e, "renewal failed");
                        conn = None;
                    }
                }
            }
            res
        }));
    }
    tokio::time::sleep_until(warm_until.into()).await;
    *cpu_start.lock().expect("cpu lock") = Some(cpu_seconds(pid)?);
    let issued_before_clock = next.load(Ordering::Relaxed);

    let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    let (mut ok, mut errors) = (0, 0);
    for t in tasks {
        let r = t.await?;
        hist.add(&r.hist)?;
        ok += r.ok;
        errors += r.errors;
    }
    let cpu = cpu_seconds(pid)? - cpu_start.lock().expect("cpu lock").unwrap_or(0.0);
    let secs = args.seconds as f64;
    let used = next.load(Ordering::Relaxed);
    let q = |p: f64| hist.value_at_quantile(p) as f64 / 1000.0;
    println!(
        "issuance: {} SVIDs in {secs:.0} s over {} mTLS renewal connections",
        ok, args.concurrency
    );
    println!("  throughput:  {:.0} SVIDs/s", ok as f64 / secs);
    println!(
        "  latency:     p50 {:.2} ms, p90 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        q(0.5),
        q(0.9),
        q(0.99),
        hist.max() as f64 / 1000.0
    );
    println!("  errors:      {errors}");
    println!(
        "  control plane CPU: {:.2} cores (client shares the same machine)",
        cpu / secs
    );
    println!(
        "  CSRs:        {} pre-generated, {} used{}",
        csrs.len(),
        used,
        if used > csrs.len() {
            " (some reused: raise --csrs)"
        } else {
            " (every request a fresh key)"
        }
    );
    let _ = issued_before_clock;
    Ok(if errors == 0 && ok > 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
