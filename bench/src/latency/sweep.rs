//! `palisade-bench sweep`: every path at rising request rates, open loop and
//! corrected for coordinated omission like `latency`, once with an HTTP/1.1
//! client and once with an HTTP/2 one. It plots p50 and p99 against the
//! achieved rate and reports each path's highest rate whose p99 stays under
//! the limit. A path stops climbing at its first rate over the limit, so the
//! sweep ends by itself.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use clap::Args;
use serde::Serialize;
use tracing::info;

use super::client::ClientHttp;
use super::conditions::{ConditionArgs, Conditions};
use super::load::{open_loop, LoadSpec};
use super::machine::Machine;
use super::report::{config_value, PathReport, Trial};
use super::stage::Stage;
use super::topology::PathKind;
use super::{plot, PathArgs, DEFAULT_OUT};

#[derive(Debug, Clone, Args)]
pub struct SweepArgs {
    #[command(flatten)]
    pub setup: PathArgs,
    #[command(flatten)]
    pub conditions: ConditionArgs,
    /// Target request rates, lowest first; each round runs every path at one rate.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "500,1000,2000,4000,8000,16000"
    )]
    pub rates: Vec<u32>,
    /// HTTP versions of the load client; the sweep runs once per version.
    #[arg(long, value_delimiter = ',', default_value = "http1,http2")]
    pub clients: Vec<ClientHttp>,
    /// Requests in flight at most: HTTP/1.1 connections, or HTTP/2 streams.
    #[arg(long, default_value_t = 64)]
    pub connections: usize,
    /// TCP connections the HTTP/2 client's streams are spread over.
    #[arg(long, default_value_t = 4)]
    pub h2_connections: usize,
    /// Size of each request body (echoed back).
    #[arg(long, default_value_t = 1024)]
    pub body_bytes: usize,
    /// Seconds at each rate.
    #[arg(long, default_value_t = 5.0)]
    pub duration: f64,
    /// Seconds of load at the lowest rate on each path first, not recorded.
    #[arg(long, default_value_t = 2.0)]
    pub warmup: f64,
    /// A rate holds while the path's p99 stays under this many milliseconds
    /// and no request errors.
    #[arg(long, default_value_t = 10.0)]
    pub p99_limit_ms: f64,
    /// Directory for JSON, Markdown and SVG results.
    #[arg(long, default_value = DEFAULT_OUT)]
    pub out: PathBuf,
    /// A few seconds for CI: direct and palisade only, two low rates, short steps.
    #[arg(long)]
    pub smoke: bool,
}

impl SweepArgs {
    fn effective(mut self) -> SweepArgs {
        if self.smoke {
            self.setup.smoke();
            self.rates = vec![100, 200];
            self.duration = 1.0;
            self.warmup = 0.5;
            self.connections = self.connections.min(8);
            self.h2_connections = self.h2_connections.min(2);
        }
        self.rates.retain(|&r| r > 0);
        self.rates.sort_unstable();
        self.rates.dedup();
        self
    }
}

/// One path at one rate: the latency command's trial record, at a target rate.
#[derive(Debug, Clone, Serialize)]
pub struct Point {
    pub target_rps: u32,
    #[serde(flatten)]
    pub trial: Trial,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_error: Option<String>,
}

impl Point {
    fn holds(&self, p99_limit_ms: f64) -> bool {
        self.trial.errors == 0 && self.trial.latency_ms.p99 < p99_limit_ms
    }
}

/// One path's sweep with one client.
#[derive(Debug, Serialize)]
pub struct Curve {
    pub path: &'static str,
    pub client: ClientHttp,
    pub points: Vec<Point>,
    /// The highest target rate reached with every rate up to it holding.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub highest_rate_under_limit: Option<u32>,
}

#[derive(Debug, Serialize)]
pub struct SweepReport {
    pub machine: Machine,
    pub conditions: Conditions,
    pub config: serde_json::Value,
    pub curves: Vec<Curve>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub skipped: Vec<PathReport>,
    /// Failed requests over the whole sweep (at saturation, expected).
    pub total_errors: u64,
    /// Paths that failed requests at the lowest rate: broken, not saturated.
    pub broken: Vec<String>,
}

pub fn run(args: SweepArgs) -> anyhow::Result<ExitCode> {
    let args = args.effective();
    anyhow::ensure!(!args.rates.is_empty(), "--rates lists no rate above 0");
    let mut stage = Stage::open(&args.setup, &args.conditions)?;
    let request_timeout = Duration::from_secs_f64(args.setup.request_timeout);
    let mut curves = Vec::new();
    let mut skipped: Vec<PathReport> = Vec::new();
    let mut envoy_ran = false;
    for &http in &args.clients {
        let (mut paths, left_out) = stage.start_paths(http)?;
        for s in left_out {
            if !skipped.iter().any(|k| k.path == s.path) {
                skipped.push(s);
            }
        }
        envoy_ran |= paths.iter().any(|p| p.kind == PathKind::Envoy);
        let spec = |target, rps, seconds: f64| LoadSpec {
            target,
            rps,
            connections: args.connections,
            http,
            h2_connections: args.h2_connections,
            body_bytes: args.body_bytes,
            duration: Duration::from_secs_f64(seconds),
            request_timeout,
        };
        let mut sweep: Vec<Curve> = paths
            .iter()
            .map(|p| Curve {
                path: p.label,
                client: http,
                points: Vec::new(),
                highest_rate_under_limit: None,
            })
            .collect();
        for path in &paths {
            info!(path = path.label, client = http.name(), "warming up");
            stage
                .rt
                .block_on(open_loop(&spec(path.http, args.rates[0], args.warmup)))?;
        }
        for &rate in &args.rates {
            for (path, curve) in paths.iter_mut().zip(&mut sweep) {
                if curve
                    .points
                    .last()
                    .is_some_and(|p| !p.holds(args.p99_limit_ms))
                {
                    continue;
                }
                info!(path = path.label, client = http.name(), rate, "sweep step");
                let load = spec(path.http, rate, args.duration);
                let (outcome, cost) = stage
                    .contention
                    .trial(path, || stage.rt.block_on(open_loop(&load)))?;
                curve.points.push(Point {
                    target_rps: rate,
                    trial: Trial::new(&outcome, &cost),
                    first_error: outcome.first_error,
                });
                path.ensure_running()?;
            }
        }
        for curve in &mut sweep {
            curve.highest_rate_under_limit = highest_holding(&curve.points, args.p99_limit_ms);
        }
        curves.extend(sweep);
        // The paths (and their CPU-limit groups) go before the next client's start.
        drop(paths);
    }
    stage.ensure_control_plane()?;

    let steal: Vec<_> = curves
        .iter()
        .flat_map(|c| {
            let label = format!("{} {}", c.path, c.client.name());
            c.points
                .iter()
                .enumerate()
                .map(move |(i, p)| (label.clone(), i, p.trial.steal_percent))
        })
        .collect();
    let broken: Vec<String> = curves
        .iter()
        .filter(|c| c.points.first().is_some_and(|p| p.trial.errors > 0))
        .map(|c| format!("{} {}", c.path, c.client.name()))
        .collect();
    let report = SweepReport {
        machine: stage.machine(envoy_ran),
        conditions: stage.contention.report(&steal),
        config: serde_json::json!({
            "paths": args.setup.paths,
            "baseline": args.setup.baseline,
            "rates": args.rates,
            "clients": args.clients,
            "connections": args.connections,
            "h2_connections": args.h2_connections,
            "body_bytes": args.body_bytes,
            "step_seconds": args.duration,
            "warmup_seconds": args.warmup,
            "p99_limit_ms": args.p99_limit_ms,
            "proxy_workers": args.setup.proxy_workers,
            "request_timeout_seconds": args.setup.request_timeout,
            "certs": stage.cert_source,
            "smoke": args.smoke,
        }),
        total_errors: curves
            .iter()
            .flat_map(|c| &c.points)
            .map(|p| p.trial.errors)
            .sum(),
        curves,
        skipped,
        broken,
    };
    write_outputs(&args.out, &report, args.p99_limit_ms)?;
    print!("{}", report.markdown(args.p99_limit_ms));
    if !report.broken.is_empty() {
        eprintln!(
            "\nFAILED: requests errored at the lowest rate on {}; see the results JSON",
            report.broken.join(", ")
        );
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}

/// The highest rate of the unbroken run of holding points from the lowest.
fn highest_holding(points: &[Point], p99_limit_ms: f64) -> Option<u32> {
    points
        .iter()
        .take_while(|p| p.holds(p99_limit_ms))
        .last()
        .map(|p| p.target_rps)
}

impl SweepReport {
    pub fn markdown(&self, limit: f64) -> String {
        let mut md = String::new();
        let _ = writeln!(md, "Machine: {}\n", self.machine.line());
        let c = |k: &str| config_value(&self.config, k);
        let _ = writeln!(
            md,
            "Run: open loop at {} RPS, {} requests in flight (HTTP/1.1: one per connection; \
             HTTP/2: streams over {} connections), {} B bodies, {} s per step after {} s warm-up, \
             proxy worker threads {}, SVIDs {}\n",
            c("rates"),
            c("connections"),
            c("h2_connections"),
            c("body_bytes"),
            c("step_seconds"),
            c("warmup_seconds"),
            c("proxy_workers"),
            c("certs")
        );
        let _ = writeln!(md, "{}", self.conditions.markdown());
        let _ = writeln!(
            md,
            "Highest rate with p99 under {limit} ms (every lower rate too, no errors):\n"
        );
        let _ = writeln!(
            md,
            "| path | client | highest target RPS | achieved RPS | p50 ms | p99 ms |"
        );
        let _ = writeln!(md, "|---|---|---|---|---|---|");
        for curve in &self.curves {
            let at = curve
                .highest_rate_under_limit
                .and_then(|r| curve.points.iter().find(|p| p.target_rps == r));
            match at {
                Some(p) => {
                    let _ = writeln!(
                        md,
                        "| {} | {} | {} | {:.0} | {:.3} | {:.3} |",
                        curve.path,
                        curve.client.name(),
                        p.target_rps,
                        p.trial.achieved_rps,
                        p.trial.latency_ms.p50,
                        p.trial.latency_ms.p99
                    );
                }
                None => {
                    let _ = writeln!(
                        md,
                        "| {} | {} | none | – | – | – |",
                        curve.path,
                        curve.client.name()
                    );
                }
            }
        }
        let _ = writeln!(md, "\nEvery step, latency in ms from intended send time:\n");
        let _ = writeln!(
            md,
            "| path | client | target RPS | achieved RPS | p50 | p90 | p99 | max | errors | steal % |"
        );
        let _ = writeln!(md, "|---|---|---|---|---|---|---|---|---|---|");
        for curve in &self.curves {
            for p in &curve.points {
                let (t, l) = (&p.trial, &p.trial.latency_ms);
                let _ = writeln!(
                    md,
                    "| {} | {} | {} | {:.0} | {:.3} | {:.3} | {:.3} | {:.3} | {} | {:.2} |",
                    curve.path,
                    curve.client.name(),
                    p.target_rps,
                    t.achieved_rps,
                    l.p50,
                    l.p90,
                    l.p99,
                    l.max,
                    t.errors,
                    t.steal_percent
                );
            }
        }
        for s in &self.skipped {
            let _ = writeln!(
                md,
                "- **{}** skipped: {}",
                s.path,
                s.reason.as_deref().unwrap_or("")
            );
        }
        let _ = writeln!(
            md,
            "\nA path stops climbing at its first rate over the limit. Errors: {}",
            self.total_errors
        );
        md
    }
}

/// `sweep-<run-id>.{json,md,svg}`, copied to `sweep-latest.*`.
fn write_outputs(dir: &Path, report: &SweepReport, limit: f64) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)?;
    let id = format!(
        "sweep-{}",
        SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs()
    );
    let file = |ext: &str| dir.join(format!("{id}.{ext}"));
    std::fs::write(file("json"), serde_json::to_vec_pretty(report)?)?;
    std::fs::write(file("md"), report.markdown(limit))?;
    let lines: Vec<plot::RateCurve> = report
        .curves
        .iter()
        .map(|c| plot::RateCurve {
            name: format!("{} {}", c.path, c.client.name()),
            points: c
                .points
                .iter()
                .map(|p| {
                    let t = &p.trial;
                    (t.achieved_rps, t.latency_ms.p50, t.latency_ms.p99)
                })
                .collect(),
        })
        .collect();
    plot::latency_by_rate(
        &file("svg"),
        "p50 (thin) and p99 (thick) against achieved rate",
        &lines,
        limit,
    )?;
    for ext in ["json", "md", "svg"] {
        std::fs::copy(file(ext), dir.join(format!("sweep-latest.{ext}")))?;
    }
    info!(dir = %dir.display(), %id, "sweep results written");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::latency::conditions::TrialCost;
    use crate::latency::load::LoadOutcome;

    fn point(rate: u32, p99_ms: u64, errors: u64) -> Point {
        let mut outcome = LoadOutcome::default();
        outcome.latency.record(Duration::from_millis(p99_ms));
        outcome.ok = 1;
        outcome.errors = errors;
        let cost = TrialCost {
            steal_percent: 0.0,
            proxy_cpu_s: None,
            proxies: Vec::new(),
        };
        Point {
            target_rps: rate,
            trial: Trial::new(&outcome, &cost),
            first_error: None,
        }
    }

    #[test]
    fn a_rate_holds_only_under_the_limit_and_without_errors() {
        assert!(point(500, 3, 0).holds(10.0));
        assert!(!point(500, 12, 0).holds(10.0));
        assert!(!point(500, 3, 1).holds(10.0));
    }

    #[test]
    fn highest_rate_is_the_last_of_the_unbroken_run_from_the_lowest() {
        let points = [point(500, 1, 0), point(1000, 2, 0), point(2000, 30, 0)];
        assert_eq!(highest_holding(&points, 10.0), Some(1000));
        let late_dip = [point(500, 1, 0), point(1000, 20, 0), point(2000, 5, 0)];
        assert_eq!(highest_holding(&late_dip, 10.0), Some(500));
        assert_eq!(highest_holding(&[point(500, 50, 0)], 10.0), None);
    }
}
