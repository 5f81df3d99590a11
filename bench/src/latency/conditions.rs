//! The conditions a run measures under, the same for every path: a CPU limit
//! on each proxy, noisy neighbours during every trial, and what the host
//! took (steal). Each trial also counts the proxies' context switches.

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use serde::Serialize;
use tracing::{info, warn};

use super::cgroup::{self, CpuController, Version};
use super::neighbour::{NeighbourSpec, Neighbours};
use super::perf::{Perf, PerfCounts, PerfRun};
use super::procstat::{cpu_seconds, CtxSwitches, HostCpu};
use super::stats::Spread;
use super::topology::RunningPath;

/// Trials whose host steal is above this share of CPU time are flagged.
pub const STEAL_FLAG_PERCENT: f64 = 3.0;

#[derive(Debug, Clone, Args)]
pub struct ConditionArgs {
    /// CPU limit of each proxy process in millicores, as a pod's
    /// `resources.limits.cpu`: a CFS quota of MILLICORES/1000 CPU per 100 ms,
    /// every proxy in a cgroup of its own (cgroup v2 or the v1 `cpu` controller).
    #[arg(long, value_name = "MILLICORES", value_parser = clap::value_parser!(u32).range(10..))]
    pub cpu_limit: Option<u32>,
    /// Busy competitor threads running during every trial of every path,
    /// pinned round-robin to the CPUs the bench may use.
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub noisy_neighbour: usize,
    /// Percent of each period a noisy neighbour spins (the rest it sleeps).
    #[arg(long, value_name = "PERCENT", default_value_t = 80,
          value_parser = clap::value_parser!(u8).range(1..=100))]
    pub neighbour_duty: u8,
    /// A noisy neighbour's period.
    #[arg(long, default_value = "10ms", value_parser = palisade_identity::duration::parse)]
    pub neighbour_period: Duration,
    /// Do not run `perf stat` on the proxies, even where perf works.
    #[arg(long)]
    pub no_perf: bool,
}

/// The conditions in force for the whole run, set up once.
pub struct Contention {
    cpu: Option<(CpuController, u32)>,
    neighbours: Option<NeighbourSpec>,
    perf: Result<Perf, String>,
    /// Every group made this run, for the report (all removed by the end).
    cgroups: Vec<PathBuf>,
    work_dir: PathBuf,
}

impl Contention {
    /// Find the cgroup controller (removing groups that killed benches left
    /// behind), plan the neighbours and look for perf.
    pub fn new(args: &ConditionArgs, work_dir: PathBuf) -> anyhow::Result<Contention> {
        let cpu = match args.cpu_limit {
            Some(millicores) => {
                let controller = CpuController::find()?;
                for stale in controller.remove_stale() {
                    info!(cgroup = %stale.display(), "removed a cgroup left by an earlier run");
                }
                Some((controller, millicores))
            }
            None => None,
        };
        let neighbours = (args.noisy_neighbour > 0)
            .then(|| {
                NeighbourSpec::new(
                    args.noisy_neighbour,
                    args.neighbour_duty,
                    args.neighbour_period,
                )
            })
            .transpose()?;
        let perf = if args.no_perf {
            Err("--no-perf".to_owned())
        } else {
            Perf::detect()
        };
        if let Err(reason) = &perf {
            warn!(%reason, "context switches from /proc only, no perf stat");
        }
        Ok(Contention {
            cpu,
            neighbours,
            perf,
            cgroups: Vec::new(),
            work_dir,
        })
    }

    /// Put each of the path's proxies under the CPU limit, if there is one;
    /// the groups go when the path is dropped.
    pub fn limit(&mut self, path: &mut RunningPath) -> anyhow::Result<()> {
        let Some((controller, millicores)) = &self.cpu else {
            return Ok(());
        };
        for proxy in &path.proxies {
            let group = controller.limit(proxy.name(), *millicores, proxy.pid())?;
            self.cgroups.push(group.path().to_owned());
            path.cgroups.push(group);
        }
        Ok(())
    }

    /// The neighbours for one trial, if any; they stop when dropped.
    pub fn neighbours(&self) -> anyhow::Result<Option<Neighbours>> {
        self.neighbours
            .as_ref()
            .map(NeighbourSpec::start)
            .transpose()
    }

    /// Run `load` on `path` with the neighbours going, and count what the
    /// host and the proxies spent meanwhile.
    pub fn trial<T>(
        &self,
        path: &RunningPath,
        load: impl FnOnce() -> anyhow::Result<T>,
    ) -> anyhow::Result<(T, TrialCost)> {
        let pids = path.pids();
        let neighbours = self.neighbours()?;
        // perf is an extra: a counter that fails is a gap in the table
        // (warned about), not a failed trial.
        let perf: Vec<Option<PerfRun>> = match &self.perf {
            Ok(perf) => pids
                .iter()
                .map(|&pid| {
                    let out = self.work_dir.join(format!("perf-{pid}.csv"));
                    perf.attach(pid, &out)
                        .inspect_err(|e| warn!(pid, error = %format!("{e:#}"), "perf stat"))
                        .ok()
                })
                .collect(),
            Err(_) => Vec::new(),
        };
        let host = HostCpu::read()?;
        let cpu = total_cpu(&pids);
        let ctx: Vec<CtxSwitches> = pids
            .iter()
            .map(|&p| CtxSwitches::of(p))
            .collect::<anyhow::Result<_>>()?;

        let out = load()?;

        let ctx_after: Vec<CtxSwitches> = pids
            .iter()
            .map(|&p| CtxSwitches::of(p))
            .collect::<anyhow::Result<_>>()?;
        let cpu = total_cpu(&pids).zip(cpu).map(|(a, b)| a - b);
        let steal = HostCpu::read()?.steal_percent_since(host);
        let perf: Vec<Option<PerfCounts>> = perf
            .into_iter()
            .map(|run| {
                run?.finish()
                    .inspect_err(|e| warn!(error = %format!("{e:#}"), "perf stat"))
                    .ok()
            })
            .collect();
        if let Some(n) = neighbours {
            n.finish()?;
        }
        let proxies = path
            .proxies
            .iter()
            .enumerate()
            .map(|(i, p)| ProxySched {
                name: p.name().to_owned(),
                ctx: ctx_after[i].since(ctx[i]),
                perf: perf.get(i).copied().flatten(),
            })
            .collect();
        Ok((
            out,
            TrialCost {
                steal_percent: steal,
                proxy_cpu_s: cpu,
                proxies,
            },
        ))
    }

    /// What the report says about the conditions, given every trial's steal.
    pub fn report(&self, steal: &[(String, usize, f64)]) -> Conditions {
        Conditions {
            cpu_limit: self.cpu.as_ref().map(|(c, millicores)| CpuLimitReport {
                millicores: *millicores,
                cfs_quota_us: cgroup::quota_us(*millicores),
                cfs_period_us: cgroup::PERIOD_US,
                cgroup: c.version,
                groups: self.cgroups.clone(),
            }),
            noisy_neighbours: self.neighbours.clone(),
            perf: match &self.perf {
                Ok(_) => {
                    "perf stat -e context-switches,cpu-migrations,sched:sched_wakeup".to_owned()
                }
                Err(reason) => format!("not used: {reason}"),
            },
            steal_percent: Spread::of(&steal.iter().map(|s| s.2).collect::<Vec<_>>()),
            steal_flag_percent: STEAL_FLAG_PERCENT,
            high_steal_trials: steal
                .iter()
                .filter(|s| s.2 > STEAL_FLAG_PERCENT)
                .map(|(path, round, percent)| HighSteal {
                    path: path.clone(),
                    trial: *round,
                    steal_percent: *percent,
                })
                .collect(),
        }
    }
}

/// Summed CPU seconds of the proxies; `None` for a path without any.
pub fn total_cpu(pids: &[u32]) -> Option<f64> {
    if pids.is_empty() {
        return None;
    }
    pids.iter().map(|&p| cpu_seconds(p).ok()).sum()
}

/// What one trial cost beyond its latency.
#[derive(Debug, Clone)]
pub struct TrialCost {
    /// The host's steal over the trial, as a share of all CPU time.
    pub steal_percent: f64,
    /// The path's proxies' CPU seconds; `None` without proxies.
    pub proxy_cpu_s: Option<f64>,
    pub proxies: Vec<ProxySched>,
}

/// One proxy's scheduling over a trial.
#[derive(Debug, Clone)]
pub struct ProxySched {
    pub name: String,
    pub ctx: CtxSwitches,
    /// `None` where perf is not used.
    pub perf: Option<PerfCounts>,
}

/// One proxy's scheduling per 1,000 requests of a trial.
#[derive(Debug, Clone, Serialize)]
pub struct SchedRate {
    pub proxy: String,
    pub voluntary_ctxt_switches: f64,
    pub nonvoluntary_ctxt_switches: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub perf_context_switches: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub perf_cpu_migrations: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub perf_wakeups: Option<f64>,
}

impl TrialCost {
    /// Each proxy's counts per 1,000 of `requests`; empty for none.
    pub fn sched_per_1000(&self, requests: u64) -> Vec<SchedRate> {
        if requests == 0 {
            return Vec::new();
        }
        let per = |n: u64| n as f64 * 1000.0 / requests as f64;
        self.proxies
            .iter()
            .map(|p| SchedRate {
                proxy: p.name.clone(),
                voluntary_ctxt_switches: per(p.ctx.voluntary),
                nonvoluntary_ctxt_switches: per(p.ctx.nonvoluntary),
                perf_context_switches: p.perf.map(|c| per(c.context_switches)),
                perf_cpu_migrations: p.perf.map(|c| per(c.cpu_migrations)),
                perf_wakeups: p.perf.map(|c| per(c.wakeups)),
            })
            .collect()
    }
}

/// The run's conditions, in the JSON and at the top of the Markdown.
#[derive(Debug, Serialize)]
pub struct Conditions {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpu_limit: Option<CpuLimitReport>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub noisy_neighbours: Option<NeighbourSpec>,
    /// How context switches were counted besides /proc.
    pub perf: String,
    /// Host steal per trial, across every trial of the run.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub steal_percent: Option<Spread>,
    pub steal_flag_percent: f64,
    /// Trials where the host took more than `steal_flag_percent`.
    pub high_steal_trials: Vec<HighSteal>,
}

#[derive(Debug, Serialize)]
pub struct CpuLimitReport {
    pub millicores: u32,
    pub cfs_quota_us: u64,
    pub cfs_period_us: u64,
    pub cgroup: Version,
    /// One group per proxy process, all removed at the end of the run.
    pub groups: Vec<PathBuf>,
}

#[derive(Debug, Serialize)]
pub struct HighSteal {
    pub path: String,
    /// The round (latency) or the step (sweep), from 0.
    pub trial: usize,
    pub steal_percent: f64,
}

impl Conditions {
    /// One Markdown paragraph: limit, neighbours, perf, steal.
    pub fn markdown(&self) -> String {
        let limit = match &self.cpu_limit {
            Some(l) => format!(
                "CPU limit {}m per proxy (CFS quota {} µs per {} µs, cgroup {})",
                l.millicores,
                l.cfs_quota_us,
                l.cfs_period_us,
                match l.cgroup {
                    Version::V1 => "v1",
                    Version::V2 => "v2",
                }
            ),
            None => "no CPU limit".to_owned(),
        };
        let neighbours = match &self.noisy_neighbours {
            Some(n) => format!(
                "{} noisy neighbour(s) busy {}% of every {} ms, pinned to CPU {:?}",
                n.threads,
                n.duty_percent,
                n.period.as_secs_f64() * 1000.0,
                n.cpus
            ),
            None => "no noisy neighbours".to_owned(),
        };
        let steal = match &self.steal_percent {
            Some(s) => format!(
                "host steal per trial {:.2}% median [{:.2}–{:.2}%]",
                s.median, s.min, s.max
            ),
            None => "host steal not measured".to_owned(),
        };
        let mut md = format!(
            "Conditions: {limit}; {neighbours}; {steal}; context switches from /proc, {}.\n",
            self.perf
        );
        for t in &self.high_steal_trials {
            md.push_str(&format!(
                "\n- **steal {:.1}%** in {} trial {} (over {}%): the host took CPU time, read that trial with care",
                t.steal_percent, t.path, t.trial, self.steal_flag_percent
            ));
        }
        if !self.high_steal_trials.is_empty() {
            md.push('\n');
        }
        md
    }
}
