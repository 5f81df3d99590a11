//! The run's results: the JSON document, and the Markdown tables made from it.

use std::fmt::Write as _;

use serde::Serialize;

use super::conditions::{Conditions, SchedRate, TrialCost};
use super::hist::Percentiles;
use super::load::LoadOutcome;
use super::machine::Machine;
use super::stats::{PercentileSpread, Spread};
use super::topology::BaselineRun;

#[derive(Debug, Serialize)]
pub struct Report {
    pub machine: Machine,
    pub conditions: Conditions,
    pub config: serde_json::Value,
    /// "open-loop" or "max-throughput".
    pub mode: &'static str,
    pub paths: Vec<PathReport>,
    /// Every failed request, transfer and connection across the run.
    pub total_errors: u64,
}

#[derive(Debug, Serialize)]
pub struct PathReport {
    pub path: &'static str,
    /// "ok", or "skipped" with a reason.
    pub status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub latency: Option<LatencyReport>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bulk: Option<BulkReport>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub connections: Option<ChurnReport>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub proxies: Vec<ProxyResources>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub baseline: Option<BaselineReport>,
}

/// The learned baseline of a `palisade+<mode>` path, read at the end of the run.
#[derive(Debug, Serialize)]
pub struct BaselineReport {
    /// The `--baseline` mode the path was run in.
    pub run: BaselineRun,
    /// The mode in force in each sidecar, outbound then inbound.
    pub modes: Vec<String>,
    /// Flows learned, both sidecars together.
    pub entries: u64,
    /// `baseline_deviation_total`, both sidecars together: 0 when the
    /// measured traffic was all known.
    pub deviations: u64,
}

impl PathReport {
    pub fn skipped(path: &'static str, reason: String) -> PathReport {
        PathReport {
            path,
            status: "skipped",
            reason: Some(reason),
            latency: None,
            bulk: None,
            connections: None,
            proxies: Vec::new(),
            baseline: None,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Trial {
    /// Milliseconds, from intended send time (open loop) or send time (max throughput).
    pub latency_ms: Percentiles,
    /// Milliseconds from the actual send: what a closed-loop tool would show.
    pub service_ms: Percentiles,
    pub requests_ok: u64,
    pub errors: u64,
    pub achieved_rps: f64,
    /// CPU time of the path's proxies during the trial, per 1,000 requests.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub proxy_cpu_ms_per_1000_requests: Option<f64>,
    /// The host's steal over the trial, % of all CPU time.
    pub steal_percent: f64,
    /// Each proxy's context switches (and perf counts) per 1,000 requests.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub proxy_sched_per_1000_requests: Vec<SchedRate>,
}

impl Trial {
    pub fn new(outcome: &LoadOutcome, cost: &TrialCost) -> Trial {
        let per_1000 = cost
            .proxy_cpu_s
            .filter(|_| outcome.ok > 0)
            .map(|s| s * 1000.0 * 1000.0 / outcome.ok as f64);
        Trial {
            latency_ms: outcome.latency.summary(),
            service_ms: outcome.service.summary(),
            requests_ok: outcome.ok,
            errors: outcome.errors,
            achieved_rps: outcome.achieved_rps(),
            proxy_cpu_ms_per_1000_requests: per_1000,
            steal_percent: cost.steal_percent,
            proxy_sched_per_1000_requests: cost.sched_per_1000(outcome.ok),
        }
    }
}

/// One proxy's scheduling per 1,000 requests, median across trials.
#[derive(Debug, Clone, Serialize)]
pub struct SchedSummary {
    pub proxy: String,
    pub voluntary_ctxt_switches: Spread,
    pub nonvoluntary_ctxt_switches: Spread,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub perf_context_switches: Option<Spread>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub perf_cpu_migrations: Option<Spread>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub perf_wakeups: Option<Spread>,
}

impl SchedSummary {
    /// Per proxy, in the order the trials list them.
    pub fn of(trials: &[Trial]) -> Vec<SchedSummary> {
        let Some(first) = trials.first() else {
            return Vec::new();
        };
        (0..first.proxy_sched_per_1000_requests.len())
            .filter_map(|i| {
                let rates: Vec<&SchedRate> = trials
                    .iter()
                    .filter_map(|t| t.proxy_sched_per_1000_requests.get(i))
                    .collect();
                let spread = |f: fn(&SchedRate) -> Option<f64>| {
                    Spread::of(&rates.iter().filter_map(|r| f(r)).collect::<Vec<_>>())
                };
                Some(SchedSummary {
                    proxy: rates.first()?.proxy.clone(),
                    voluntary_ctxt_switches: spread(|r| Some(r.voluntary_ctxt_switches))?,
                    nonvoluntary_ctxt_switches: spread(|r| Some(r.nonvoluntary_ctxt_switches))?,
                    perf_context_switches: spread(|r| r.perf_context_switches),
                    perf_cpu_migrations: spread(|r| r.perf_cpu_migrations),
                    perf_wakeups: spread(|r| r.perf_wakeups),
                })
            })
            .collect()
    }
}

#[derive(Debug, Serialize)]
pub struct LatencyReport {
    pub trials: Vec<Trial>,
    pub latency_ms: PercentileSpread,
    /// Path minus direct, paired by round; absent for direct itself.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub added_over_direct_ms: Option<PercentileSpread>,
    pub achieved_rps: Spread,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub proxy_cpu_ms_per_1000_requests: Option<Spread>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub proxy_sched_per_1000_requests: Vec<SchedSummary>,
    pub errors: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_error: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct BulkReport {
    pub bytes_per_trial: u64,
    pub gbit_per_s: Spread,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub proxy_cpu_s_per_gb: Option<Spread>,
    pub errors: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_error: Option<String>,
}

/// New connections per second; through sidecars each is a full mTLS handshake.
#[derive(Debug, Serialize)]
pub struct ChurnReport {
    pub per_second: Spread,
    pub errors: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_error: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct ProxyResources {
    pub name: String,
    /// VmRSS after start-up and one request, before any load.
    pub rss_idle_kib: u64,
    /// Highest VmRSS sampled while the latency trials ran.
    pub rss_load_kib: u64,
    /// VmHWM at the end of the run: the peak over every phase.
    pub rss_peak_kib: u64,
}

impl Report {
    /// The tables for README and terminal.
    pub fn markdown(&self) -> String {
        let mut md = String::new();
        let _ = writeln!(md, "Machine: {}\n", self.machine.line());
        let _ = writeln!(md, "Run: {}\n", run_line(&self.config, self.mode));
        let _ = writeln!(md, "{}", self.conditions.markdown());
        self.latency_table(&mut md);
        self.added_table(&mut md);
        self.cost_table(&mut md);
        self.sched_table(&mut md);
        for (p, b) in self
            .paths
            .iter()
            .filter_map(|p| Some((p, p.baseline.as_ref()?)))
        {
            let _ = writeln!(
                md,
                "- **{}**: baseline mode in force {}, {} flows learned, {} deviations",
                p.path,
                b.modes.join(" / "),
                b.entries,
                b.deviations
            );
        }
        for p in self.paths.iter().filter(|p| p.status != "ok") {
            let _ = writeln!(
                md,
                "- **{}** skipped: {}",
                p.path,
                p.reason.as_deref().unwrap_or("")
            );
        }
        let _ = writeln!(md, "\nErrors: {}", self.total_errors);
        md
    }

    fn latency_table(&self, md: &mut String) {
        let _ = writeln!(
            md,
            "Latency in ms ({}), median of trials with [min–max]:\n",
            if self.mode == "open-loop" {
                "from intended send time"
            } else {
                "closed loop"
            }
        );
        let _ = writeln!(
            md,
            "| path | p50 | p90 | p99 | p99.9 | max | achieved RPS | errors |"
        );
        let _ = writeln!(md, "|---|---|---|---|---|---|---|---|");
        for (p, l) in self
            .paths
            .iter()
            .filter_map(|p| Some((p, p.latency.as_ref()?)))
        {
            let cells = cells(&l.latency_ms);
            let _ = writeln!(
                md,
                "| {} | {} | {:.0} | {} |",
                p.path,
                cells.join(" | "),
                l.achieved_rps.median,
                l.errors
            );
        }
        md.push('\n');
    }

    fn added_table(&self, md: &mut String) {
        let rows: Vec<_> = self
            .paths
            .iter()
            .filter_map(|p| Some((p.path, p.latency.as_ref()?.added_over_direct_ms.as_ref()?)))
            .collect();
        if rows.is_empty() {
            return;
        }
        let _ = writeln!(
            md,
            "Added over direct in ms (paired by round), median [min–max]:\n"
        );
        let _ = writeln!(md, "| path | p50 | p90 | p99 | p99.9 | max |");
        let _ = writeln!(md, "|---|---|---|---|---|---|");
        for (path, added) in rows {
            let _ = writeln!(md, "| {path} | {} |", cells(added).join(" | "));
        }
        md.push('\n');
    }

    fn cost_table(&self, md: &mut String) {
        let _ = writeln!(md, "Throughput and cost, median of trials:\n");
        let _ = writeln!(
            md,
            "| path | bulk Gbit/s | proxy CPU-s per GB | new conns/s (mTLS handshakes) | proxy CPU ms per 1k req | RSS idle MiB | RSS under load MiB |"
        );
        let _ = writeln!(md, "|---|---|---|---|---|---|---|");
        for p in self.paths.iter().filter(|p| p.status == "ok") {
            let bulk = p.bulk.as_ref();
            let mib = |f: fn(&ProxyResources) -> u64| -> String {
                if p.proxies.is_empty() {
                    return "–".into();
                }
                format!(
                    "{:.1}",
                    p.proxies.iter().map(f).sum::<u64>() as f64 / 1024.0
                )
            };
            let _ = writeln!(
                md,
                "| {} | {} | {} | {} | {} | {} | {} |",
                p.path,
                opt(bulk.map(|b| b.gbit_per_s.median), 2),
                opt(bulk.and_then(|b| b.proxy_cpu_s_per_gb).map(|s| s.median), 2),
                opt(p.connections.as_ref().map(|c| c.per_second.median), 0),
                opt(
                    p.latency
                        .as_ref()
                        .and_then(|l| l.proxy_cpu_ms_per_1000_requests)
                        .map(|s| s.median),
                    1
                ),
                mib(|r| r.rss_idle_kib),
                mib(|r| r.rss_load_kib),
            );
        }
        md.push('\n');
        if self.paths.iter().any(|p| p.proxies.len() > 1) {
            let _ = writeln!(md, "RSS is the sum of the path's two proxies.\n");
        }
    }

    /// One row per proxy of every path, when any had proxies.
    fn sched_table(&self, md: &mut String) {
        let rows: Vec<_> = self
            .paths
            .iter()
            .filter_map(|p| Some((p.path, &p.latency.as_ref()?.proxy_sched_per_1000_requests)))
            .flat_map(|(path, proxies)| proxies.iter().map(move |s| (path, s)))
            .collect();
        if rows.is_empty() {
            return;
        }
        let _ = writeln!(
            md,
            "Scheduling per 1,000 requests, median of trials (context switches summed over each proxy's threads from /proc; perf where available):\n"
        );
        let _ = writeln!(
            md,
            "| path | proxy | voluntary ctx sw | involuntary ctx sw | perf context-switches | perf cpu-migrations | perf sched_wakeup |"
        );
        let _ = writeln!(md, "|---|---|---|---|---|---|---|");
        for (path, s) in rows {
            let _ = writeln!(
                md,
                "| {path} | {} | {:.1} | {:.1} | {} | {} | {} |",
                s.proxy,
                s.voluntary_ctxt_switches.median,
                s.nonvoluntary_ctxt_switches.median,
                opt(s.perf_context_switches.map(|s| s.median), 1),
                opt(s.perf_cpu_migrations.map(|s| s.median), 1),
                opt(s.perf_wakeups.map(|s| s.median), 1),
            );
        }
        md.push('\n');
    }
}

fn cells(s: &PercentileSpread) -> Vec<String> {
    let (med, min, max) = (s.median.values(), s.min.values(), s.max.values());
    (0..5)
        .map(|i| format!("{:.3} [{:.3}–{:.3}]", med[i], min[i], max[i]))
        .collect()
}

fn opt(v: Option<f64>, decimals: usize) -> String {
    v.map_or_else(|| "–".to_owned(), |v| format!("{v:.decimals$}"))
}

/// A config value as the Markdown shows it: strings bare, lists comma-separated.
pub fn config_value(config: &serde_json::Value, key: &str) -> String {
    match config.get(key) {
        Some(serde_json::Value::String(s)) => s.clone(),
        Some(serde_json::Value::Array(items)) => items
            .iter()
            .map(|v| v.as_str().map_or_else(|| v.to_string(), str::to_owned))
            .collect::<Vec<_>>()
            .join(", "),
        Some(v) => v.to_string(),
        None => String::new(),
    }
}

fn run_line(config: &serde_json::Value, mode: &str) -> String {
    let get = |k: &str| config_value(config, k);
    let load = if mode == "open-loop" {
        format!("open loop at {} RPS", get("rps"))
    } else {
        "closed loop, as fast as possible".to_owned()
    };
    format!(
        "{load} over {} connections, {} B bodies, {} trials of {} s after {} s warm-up, \
         proxy worker threads {}, SVIDs {}",
        get("connections"),
        get("body_bytes"),
        get("trials"),
        get("trial_seconds"),
        get("warmup_seconds"),
        get("proxy_workers"),
        get("certs"),
    )
}
