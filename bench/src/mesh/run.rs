//! One mesh size end to end: fresh control-plane replicas with the policy
//! and an endpoint map, the sidecars enrolled and parked (sidecar i on
//! replica i mod replicas), a steady window of renewals, then the pushes;
//! each replica's CPU and memory read from /proc around each phase.

use std::path::Path;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use palisade_identity::client::AdminClient;
use palisade_identity::svid::certs_from_pem;
use palisade_policy::TrustDomain;
use palisadectl::local::{peak_rss_kib, rss_kib};
use tokio::sync::{mpsc, watch, Semaphore};

use super::cluster::Cluster;
use super::enroll::{enroll, Target};
use super::push::push;
use super::renew::{Churn, Issuer};
use super::report::{ms, ControlPlaneCost, MeshReport, SizeResult};
use super::sidecar::{self, Counters, Mesh};
use super::{sidecar_id, MeshArgs};
use crate::latency::procstat::cpu_seconds;

/// How long the sidecars get to connect and receive their first policy.
const PARK_TIMEOUT: Duration = Duration::from_secs(300);
/// Quiet time between two pushes (renewals go on).
const BETWEEN_PUSHES: Duration = Duration::from_secs(2);

pub fn run(args: MeshArgs) -> anyhow::Result<ExitCode> {
    if args.sidecars.is_empty() || args.sidecars.contains(&0) {
        bail!("--sidecars takes mesh sizes of at least 1");
    }
    let bin = match &args.control_plane_bin {
        Some(b) => b.clone(),
        None => crate::issuance::default_bin()?,
    };
    if args.replicas == 0 {
        bail!("--replicas takes at least 1");
    }
    let largest = *args.sidecars.iter().max().expect("not empty");
    raise_fd_limit(largest)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let mut report = MeshReport::new(&args);
    for &n in &args.sidecars {
        eprintln!("mesh: {n} sidecars");
        let result =
            run_size(&rt, &bin, &args, n).with_context(|| format!("the run with {n} sidecars"))?;
        eprintln!("{}", result.summary());
        report.sizes.push(result);
    }
    let md = report.write(&args.out)?;
    eprintln!("wrote {}", md.display());
    Ok(if report.every_push_reached_everyone() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// Every sidecar holds a socket here and one in the control plane, which
/// inherits this limit; renewals and setup open a few hundred more.
fn raise_fd_limit(sidecars: usize) -> anyhow::Result<()> {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let want = sidecars as u64 + 4096;
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
    if soft >= want {
        return Ok(());
    }
    setrlimit(Resource::RLIMIT_NOFILE, want, hard.max(want)).with_context(|| {
        format!(
            "{sidecars} sidecars need {want} open files, over the limit of {soft} (hard {hard}): \
             raise `ulimit -n` or run fewer sidecars"
        )
    })
}

fn run_size(
    rt: &tokio::runtime::Runtime,
    bin: &Path,
    args: &MeshArgs,
    n: usize,
) -> anyhow::Result<SizeResult> {
    let dir = tempfile::Builder::new()
        .prefix("palisade-bench-mesh-")
        .tempdir()?;
    let map = endpoint_map(args.endpoints);
    let cluster = rt.block_on(Cluster::start(bin, dir.path(), args.replicas, n, &map))?;
    let result = rt.block_on(measure(&cluster, args, n));
    if result.is_err() {
        eprintln!("{}", cluster.log_tails(30));
    }
    result
}

/// `count` meshed destinations, each with its SPIFFE ID.
fn endpoint_map(count: usize) -> String {
    (0..count)
        .map(|i| {
            format!(
                "- {{address: \"10.{}.{}.{}:8080\", identity: \"{}\"}}\n",
                i >> 16 & 0xff,
                i >> 8 & 0xff,
                i & 0xff,
                sidecar_id(i)
            )
        })
        .collect()
}

async fn measure(cluster: &Cluster, args: &MeshArgs, n: usize) -> anyhow::Result<SizeResult> {
    let pids = cluster.pids()?;
    let first = &cluster.replicas[0];
    let td = TrustDomain::new(first.trust_domain())?;
    let bundle = certs_from_pem(&std::fs::read(first.bundle_path())?)?;
    let addrs = cluster.addrs();
    let admin = AdminClient::new(&first.admin_socket());
    let target = Target {
        admin: &admin,
        addrs: &addrs,
        trust_domain: &td,
        bundle: &bundle,
    };
    let (clients, setup) = enroll(&target, n, args.setup_concurrency).await?;
    eprintln!(
        "  enrolled: {n} join tokens in {:.1} s, {n} SVIDs in {:.1} s",
        setup.tokens_secs, setup.svids_secs
    );

    let (reached_tx, mut reached) = mpsc::unbounded_channel();
    let mesh = Arc::new(Mesh {
        push: AtomicU32::new(0),
        reached: reached_tx,
        parked: AtomicUsize::new(0),
        connect_slots: Semaphore::new(args.setup_concurrency),
        endpoints_refresh: args.endpoints_refresh,
        size: n,
        counters: Counters::default(),
    });
    let started = Instant::now();
    let mut sidecars = tokio::task::JoinSet::new();
    let mut svids = Vec::with_capacity(n);
    for (i, client) in clients.into_iter().enumerate() {
        let (tx, rx) = watch::channel(client);
        svids.push(tx);
        sidecars.spawn(sidecar::run(i, rx, mesh.clone()));
    }
    while mesh.parked.load(Ordering::Relaxed) < n {
        if started.elapsed() > PARK_TIMEOUT {
            bail!(
                "only {} of {n} sidecars connected and got their policy within {PARK_TIMEOUT:?}",
                mesh.parked.load(Ordering::Relaxed)
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let connect_secs = started.elapsed().as_secs_f64();
    let failures_at_park = mesh.counters.failures.load(Ordering::Relaxed);
    eprintln!("  parked: {n} sidecars long-polling after {connect_secs:.1} s");

    let issuer = Issuer {
        addrs: addrs.clone(),
        trust_domain: td.clone(),
        bundle: bundle.clone(),
    };
    let churn = Churn::start(issuer, Arc::new(svids), args.renewals_per_sec);
    let cpu0 = cpu_seconds_each(&pids)?;
    tokio::time::sleep(args.steady).await;
    let cpu1 = cpu_seconds_each(&pids)?;
    let rss_steady = pids
        .iter()
        .map(|&p| rss_kib(p))
        .collect::<Result<Vec<_>, _>>()?;

    let mut pushes = Vec::new();
    let pushes_started = Instant::now();
    for k in 1..=args.pushes {
        let r = push(cluster, &mesh, &mut reached, k, n, args.push_timeout).await?;
        eprintln!(
            "  push {k}: {} of {n}, 50% {} ms, 99% {} ms, 100% {} ms; control plane {:.0} ms on CPU, {:.0} ms waiting for one",
            r.received,
            ms(r.p50_ms),
            ms(r.p99_ms),
            ms(r.all_ms),
            r.cp_cpu_ms,
            r.cp_waiting_ms
        );
        pushes.push(r);
        tokio::time::sleep(BETWEEN_PUSHES).await;
    }
    let push_secs = pushes_started.elapsed().as_secs_f64();
    let cpu2 = cpu_seconds_each(&pids)?;
    let renewals = churn.stop().await;
    let per_replica = (0..pids.len())
        .map(|r| {
            Ok(ControlPlaneCost {
                cpu_cores_steady: (cpu1[r] - cpu0[r]) / args.steady.as_secs_f64(),
                cpu_cores_pushes: (cpu2[r] - cpu1[r]) / push_secs,
                rss_mib_steady: rss_steady[r] as f64 / 1024.0,
                rss_mib_peak: peak_rss_kib(pids[r])? as f64 / 1024.0,
            })
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let control_plane_errors = cluster.errors().await;
    sidecars.abort_all();
    while sidecars.join_next().await.is_some() {}
    let c = &mesh.counters;
    let sidecar_first_failures = c.first_failures.lock().expect("failures lock").clone();
    Ok(SizeResult {
        sidecars: n,
        replicas: pids.len(),
        setup,
        connect_secs,
        pushes,
        renewals,
        control_plane: ControlPlaneCost::sum(&per_replica),
        per_replica,
        polls: c.polls.load(Ordering::Relaxed),
        endpoint_fetches: c.endpoint_fetches.load(Ordering::Relaxed),
        connects: c.connects.load(Ordering::Relaxed),
        sidecar_failures_setup: failures_at_park,
        sidecar_failures_measured: c.failures.load(Ordering::Relaxed) - failures_at_park,
        sidecar_first_failures,
        control_plane_errors,
    })
}

/// [`cpu_seconds`] of each of `pids`.
fn cpu_seconds_each(pids: &[u32]) -> anyhow::Result<Vec<f64>> {
    pids.iter().map(|&p| cpu_seconds(p)).collect()
}
