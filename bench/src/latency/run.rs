//! One `latency` run from start to finish: the stage set (credentials,
//! backends, conditions, paths), warm-up, interleaved rounds of each
//! measurement, then the results written out. Any failed request makes the
//! run fail after the results are written.

use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use tracing::{info, warn};

use super::client::ClientHttp;
use super::conditions::{total_cpu, Conditions, TrialCost};
use super::hist::LatencyHistogram;
use super::load::{LoadOutcome, LoadSpec};
use super::machine::Machine;
use super::procstat::{peak_rss_kib, rss_kib, RssSampler};
use super::report::{
    BaselineReport, BulkReport, ChurnReport, LatencyReport, PathReport, ProxyResources, Report,
    SchedSummary, Trial,
};
use super::stage::Stage;
use super::stats::{added_over, PercentileSpread, Spread};
use super::topology::{BaselineRun, PathKind, RunningPath};
use super::{certs, closed_loop, load, plot, tcp, LatencyArgs};

/// Everything measured on one path over the run.
struct Measured {
    path: RunningPath,
    rss_idle: Vec<u64>,
    rss_load: Vec<u64>,
    trials: Vec<Trial>,
    merged: LatencyHistogram,
    load_errors: (u64, Option<String>),
    bulk: Vec<(f64, Option<f64>)>,
    bulk_errors: (u64, Option<String>),
    churn: Vec<f64>,
    churn_errors: (u64, Option<String>),
}

pub fn run(args: LatencyArgs) -> anyhow::Result<ExitCode> {
    let args = args.effective();
    let mut stage = Stage::open(&args.setup, &args.conditions)?;
    let (paths, skipped) = stage.start_paths(ClientHttp::Http1)?;
    let mut measured: Vec<Measured> = paths.into_iter().map(Measured::new).collect();
    for m in &mut measured {
        m.rss_idle = m
            .path
            .pids()
            .iter()
            .map(|&p| rss_kib(p).unwrap_or(0))
            .collect();
    }
    let rt = &stage.rt;

    let request_timeout = Duration::from_secs_f64(args.setup.request_timeout);
    let spec = |m: &Measured, seconds: f64| LoadSpec {
        target: m.path.http,
        rps: args.rps,
        connections: args.connections,
        http: ClientHttp::Http1,
        h2_connections: 1,
        body_bytes: args.body_bytes,
        duration: Duration::from_secs_f64(seconds),
        request_timeout,
    };
    let load = |spec: &LoadSpec| {
        if args.max_throughput {
            rt.block_on(closed_loop::max_throughput(spec))
        } else {
            rt.block_on(load::open_loop(spec))
        }
    };

    for m in &mut measured {
        info!(path = m.path.label, seconds = args.warmup, "warming up");
        let warm = load(&spec(m, args.warmup))?;
        m.count_load_errors(&warm);
        if m.path.baseline == BaselineRun::Monitor {
            m.path.wait_monitor(Duration::from_secs(30))?;
        }
    }
    for round in 0..args.trials {
        for m in &mut measured {
            info!(path = m.path.label, round, "latency trial");
            let sampler = RssSampler::start(m.path.pids())?;
            let (outcome, cost) = stage
                .contention
                .trial(&m.path, || load(&spec(m, args.duration)))?;
            let rss = sampler.finish();
            m.rss_load = m
                .rss_load
                .iter()
                .zip(&rss)
                .map(|(a, b)| *a.max(b))
                .collect();
            m.record_trial(outcome, &cost);
            m.path.ensure_running()?;
        }
    }
    for round in 0..args.bulk_trials {
        for m in &mut measured {
            info!(
                path = m.path.label,
                round,
                bytes = args.bulk_bytes,
                "bulk transfer"
            );
            let pids = m.path.pids();
            let neighbours = stage.contention.neighbours()?;
            let cpu_before = total_cpu(&pids);
            let timeout = Duration::from_secs(120);
            let result = rt.block_on(tcp::bulk(m.path.tcp, args.bulk_bytes, timeout));
            drop(neighbours);
            match result {
                Ok(took) => {
                    let gb = args.bulk_bytes as f64 / 1e9;
                    let cpu = total_cpu(&pids).zip(cpu_before).map(|(a, b)| (a - b) / gb);
                    m.bulk.push((gb * 8.0 / took.as_secs_f64(), cpu));
                }
                Err(e) => note(&mut m.bulk_errors, 1, Some(format!("{e:#}"))),
            }
            m.path.ensure_running()?;
        }
    }
    for round in 0..args.churn_trials {
        for m in &mut measured {
            info!(path = m.path.label, round, "new-connection trial");
            let duration = Duration::from_secs_f64(args.churn_duration);
            let neighbours = stage.contention.neighbours()?;
            let (out, first) = rt.block_on(tcp::churn(
                m.path.tcp,
                args.connections,
                duration,
                request_timeout,
            ))?;
            drop(neighbours);
            m.churn.push(out.per_second());
            note(&mut m.churn_errors, out.errors, first);
            m.path.ensure_running()?;
        }
    }

    let mut baselines = Vec::with_capacity(measured.len());
    for m in &measured {
        let report = m.path.baseline_report()?;
        if let Some(b) = report.as_ref().filter(|b| b.run == BaselineRun::Monitor) {
            if b.deviations > 0 {
                warn!(
                    path = m.path.label,
                    deviations = b.deviations,
                    "the measured traffic was not all known to the baseline"
                );
            }
        }
        baselines.push(report);
    }

    stage.ensure_control_plane()?;
    let machine = stage.machine(measured.iter().any(|m| m.path.kind == PathKind::Envoy));
    let steal: Vec<_> = measured
        .iter()
        .flat_map(|m| {
            let label = m.path.label;
            m.trials
                .iter()
                .enumerate()
                .map(move |(i, t)| (label.to_owned(), i, t.steal_percent))
        })
        .collect();
    let conditions = stage.contention.report(&steal);
    let report = build_report(
        &args,
        stage.cert_source,
        machine,
        conditions,
        &measured,
        baselines,
        skipped,
    );
    write_outputs(&args.out, &report, &measured)?;
    print!("{}", report.markdown());
    if report.total_errors > 0 {
        eprintln!("\nFAILED: {} request(s), transfer(s) or connection(s) errored; see the table and results JSON", report.total_errors);
        for p in &report.paths {
            let firsts = [
                p.latency.as_ref().and_then(|l| l.first_error.as_deref()),
                p.bulk.as_ref().and_then(|b| b.first_error.as_deref()),
                p.connections
                    .as_ref()
                    .and_then(|c| c.first_error.as_deref()),
            ];
            for e in firsts.into_iter().flatten() {
                eprintln!("  {}: {e}", p.path);
            }
        }
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}

impl Measured {
    fn new(path: RunningPath) -> Measured {
        let n = path.proxies.len();
        Measured {
            path,
            rss_idle: vec![0; n],
            rss_load: vec![0; n],
            trials: Vec::new(),
            merged: LatencyHistogram::default(),
            load_errors: (0, None),
            bulk: Vec::new(),
            bulk_errors: (0, None),
            churn: Vec::new(),
            churn_errors: (0, None),
        }
    }

    fn count_load_errors(&mut self, outcome: &LoadOutcome) {
        note(
            &mut self.load_errors,
            outcome.errors,
            outcome.first_error.clone(),
        );
    }

    fn record_trial(&mut self, outcome: LoadOutcome, cost: &TrialCost) {
        self.count_load_errors(&outcome);
        self.merged.merge(&outcome.latency);
        self.trials.push(Trial::new(&outcome, cost));
    }
}

fn note(errors: &mut (u64, Option<String>), count: u64, first: Option<String>) {
    errors.0 += count;
    if errors.1.is_none() {
        errors.1 = first;
    }
}

fn build_report(
    args: &LatencyArgs,
    cert_source: certs::CertSource,
    machine: Machine,
    conditions: Conditions,
    measured: &[Measured],
    baselines: Vec<Option<BaselineReport>>,
    skipped: Vec<PathReport>,
) -> Report {
    let direct = measured.iter().find(|m| m.path.kind == PathKind::Direct);
    let direct_trials: Vec<_> = direct
        .map(|d| d.trials.iter().map(|t| t.latency_ms).collect())
        .unwrap_or_default();
    let mut paths: Vec<PathReport> = measured
        .iter()
        .zip(baselines)
        .map(|(m, baseline)| {
            let lat: Vec<_> = m.trials.iter().map(|t| t.latency_ms).collect();
            let cpu: Vec<f64> = m
                .trials
                .iter()
                .filter_map(|t| t.proxy_cpu_ms_per_1000_requests)
                .collect();
            let rps: Vec<f64> = m.trials.iter().map(|t| t.achieved_rps).collect();
            let bulk_rates: Vec<f64> = m.bulk.iter().map(|b| b.0).collect();
            let bulk_cpu: Vec<f64> = m.bulk.iter().filter_map(|b| b.1).collect();
            let pids = m.path.pids();
            PathReport {
                path: m.path.label,
                status: "ok",
                reason: None,
                latency: PercentileSpread::of(&lat).map(|latency_ms| LatencyReport {
                    trials: m.trials.clone(),
                    latency_ms,
                    added_over_direct_ms: (m.path.kind != PathKind::Direct)
                        .then(|| added_over(&lat, &direct_trials))
                        .flatten(),
                    achieved_rps: Spread::of(&rps).unwrap_or_default(),
                    proxy_cpu_ms_per_1000_requests: Spread::of(&cpu),
                    proxy_sched_per_1000_requests: SchedSummary::of(&m.trials),
                    errors: m.load_errors.0,
                    first_error: m.load_errors.1.clone(),
                }),
                bulk: (!m.bulk.is_empty() || m.bulk_errors.0 > 0).then(|| BulkReport {
                    bytes_per_trial: args.bulk_bytes,
                    gbit_per_s: Spread::of(&bulk_rates).unwrap_or_default(),
                    proxy_cpu_s_per_gb: Spread::of(&bulk_cpu),
                    errors: m.bulk_errors.0,
                    first_error: m.bulk_errors.1.clone(),
                }),
                connections: Spread::of(&m.churn).map(|per_second| ChurnReport {
                    per_second,
                    errors: m.churn_errors.0,
                    first_error: m.churn_errors.1.clone(),
                }),
                proxies: m
                    .path
                    .proxies
                    .iter()
                    .enumerate()
                    .map(|(i, p)| ProxyResources {
                        name: p.name().to_owned(),
                        rss_idle_kib: m.rss_idle[i],
                        rss_load_kib: m.rss_load[i],
                        rss_peak_kib: peak_rss_kib(pids[i]).unwrap_or(0),
                    })
                    .collect(),
                baseline,
            }
        })
        .collect();
    paths.extend(skipped);
    let total_errors = measured
        .iter()
        .map(|m| m.load_errors.0 + m.bulk_errors.0 + m.churn_errors.0)
        .sum();
    Report {
        machine,
        conditions,
        config: serde_json::json!({
            "paths": args.setup.paths,
            "baseline": args.setup.baseline,
            "rps": args.rps,
            "connections": args.connections,
            "body_bytes": args.body_bytes,
            "trials": args.trials,
            "trial_seconds": args.duration,
            "warmup_seconds": args.warmup,
            "bulk_bytes": args.bulk_bytes,
            "bulk_trials": args.bulk_trials,
            "churn_seconds": args.churn_duration,
            "churn_trials": args.churn_trials,
            "proxy_workers": args.setup.proxy_workers,
            "request_timeout_seconds": args.setup.request_timeout,
            "certs": cert_source,
            "smoke": args.smoke,
        }),
        mode: if args.max_throughput {
            "max-throughput"
        } else {
            "open-loop"
        },
        paths,
        total_errors,
    }
}

/// `<run-id>.{json,md,svg}`, copied to `latest.*` (the committed report).
fn write_outputs(dir: &Path, report: &Report, measured: &[Measured]) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let id = format!(
        "run-{}",
        SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs()
    );
    let file = |ext: &str| dir.join(format!("{id}.{ext}"));
    std::fs::write(file("json"), serde_json::to_vec_pretty(report)?)?;
    std::fs::write(file("md"), report.markdown())?;
    let series: Vec<_> = measured.iter().map(|m| (m.path.label, &m.merged)).collect();
    let title = format!(
        "Latency by percentile ({}, {} RPS)",
        report.mode, report.config["rps"]
    );
    plot::latency_by_percentile(&file("svg"), &title, &series)?;
    for ext in ["json", "md", "svg"] {
        std::fs::copy(file(ext), dir.join(format!("latest.{ext}")))?;
    }
    info!(dir = %dir.display(), %id, "results written");
    Ok(())
}
