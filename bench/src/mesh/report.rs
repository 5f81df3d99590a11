//! The mesh run's results: JSON (everything), Markdown (the tables) and an
//! SVG (push latency and control-plane memory against mesh size).

use std::fmt::Write as _;
use std::path::Path;

use anyhow::Context;
use serde::Serialize;

use super::enroll::SetupTimes;
use super::push::PushResult;
use super::renew::RenewalStats;
use super::MeshArgs;
use crate::latency::machine::Machine;

/// `mesh.{json,md,svg}` under `--out` for one replica, `mesh-replicas<N>.*`
/// for several, so each keeps its own figures.
pub fn basename(replicas: usize) -> String {
    match replicas {
        1 => "mesh".to_owned(),
        n => format!("mesh-replicas{n}"),
    }
}

/// The goal for one replica.
const GOAL_SIDECARS: usize = 10_000;
const GOAL_PUSH_MS: f64 = 2000.0;
const GOAL_RSS_MIB: f64 = 1024.0;

#[derive(Debug, Serialize)]
pub struct MeshReport {
    pub machine: Machine,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    pub replicas: usize,
    pub renewals_per_sec: f64,
    pub pushes_per_size: u32,
    pub steady_secs: f64,
    pub endpoints_refresh_secs: f64,
    pub endpoint_map_entries: usize,
    pub sizes: Vec<SizeResult>,
}

/// What the control plane used, read from /proc.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ControlPlaneCost {
    /// Over the steady window: parked polls, endpoint refreshes, renewals.
    pub cpu_cores_steady: f64,
    /// From the first push to the end of the last one's quiet time.
    pub cpu_cores_pushes: f64,
    /// At the end of the steady window.
    pub rss_mib_steady: f64,
    /// Highest since it started (`VmHWM`), setup included.
    pub rss_mib_peak: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct SizeResult {
    pub sidecars: usize,
    pub replicas: usize,
    pub setup: SetupTimes,
    /// From starting the sidecars until every one held its first policy.
    pub connect_secs: f64,
    pub pushes: Vec<PushResult>,
    pub renewals: RenewalStats,
    /// Summed over the replicas.
    pub control_plane: ControlPlaneCost,
    /// Each replica's own.
    pub per_replica: Vec<ControlPlaneCost>,
    pub polls: u64,
    pub endpoint_fetches: u64,
    pub connects: u64,
    /// Failed sidecar requests (connect, poll, endpoints) before all were parked.
    pub sidecar_failures_setup: u64,
    /// Failed sidecar requests afterwards.
    pub sidecar_failures_measured: u64,
    /// The first few failed sidecar requests.
    pub sidecar_first_failures: Vec<String>,
    /// The control plane's own count of refused connections and requests
    /// (`api_errors_total`, `svid_rejected_total` by label), at the end.
    pub control_plane_errors: std::collections::BTreeMap<String, u64>,
}

impl ControlPlaneCost {
    /// What `replicas` used together (peak RSS: the sum of each one's peak).
    pub fn sum(replicas: &[ControlPlaneCost]) -> ControlPlaneCost {
        replicas
            .iter()
            .fold(ControlPlaneCost::default(), |a, c| ControlPlaneCost {
                cpu_cores_steady: a.cpu_cores_steady + c.cpu_cores_steady,
                cpu_cores_pushes: a.cpu_cores_pushes + c.cpu_cores_pushes,
                rss_mib_steady: a.rss_mib_steady + c.rss_mib_steady,
                rss_mib_peak: a.rss_mib_peak + c.rss_mib_peak,
            })
    }
}

impl SizeResult {
    /// The slowest push at each percentile (`None` if one missed sidecars).
    pub fn worst(&self, at: impl Fn(&PushResult) -> Option<f64>) -> Option<f64> {
        self.pushes
            .iter()
            .map(at)
            .try_fold(0.0f64, |m, v| v.map(|v| m.max(v)))
    }

    pub fn every_push_reached_everyone(&self) -> bool {
        self.pushes.iter().all(|p| p.received == self.sidecars)
    }

    /// One line for the terminal.
    pub fn summary(&self) -> String {
        format!(
            "  {} sidecars: push 100% in {} ms (worst of {}), renewals {:.0}/s, control plane {:.2} cores parked, RSS {:.0} MiB parked, {:.0} MiB peak",
            self.sidecars,
            ms(self.worst(|p| p.all_ms)),
            self.pushes.len(),
            self.renewals.achieved_per_sec,
            self.control_plane.cpu_cores_steady,
            self.control_plane.rss_mib_steady,
            self.control_plane.rss_mib_peak,
        )
    }
}

impl MeshReport {
    pub fn new(args: &MeshArgs) -> MeshReport {
        MeshReport {
            machine: Machine::probe(),
            note: args.note.clone(),
            replicas: args.replicas,
            renewals_per_sec: args.renewals_per_sec,
            pushes_per_size: args.pushes,
            steady_secs: args.steady.as_secs_f64(),
            endpoints_refresh_secs: args.endpoints_refresh.as_secs_f64(),
            endpoint_map_entries: args.endpoints,
            sizes: Vec::new(),
        }
    }

    pub fn every_push_reached_everyone(&self) -> bool {
        self.sizes
            .iter()
            .all(SizeResult::every_push_reached_everyone)
    }

    /// Writes the report's `.json`, `.md` and `.svg` into `out`; the path of
    /// the Markdown.
    pub fn write(&self, out: &Path) -> anyhow::Result<std::path::PathBuf> {
        std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
        let base = out.join(basename(self.replicas));
        let md = base.with_extension("md");
        std::fs::write(
            base.with_extension("json"),
            serde_json::to_string_pretty(self)?,
        )?;
        std::fs::write(&md, self.markdown())?;
        super::plot::against_size(&base.with_extension("svg"), &self.sizes)?;
        Ok(md)
    }

    pub fn markdown(&self) -> String {
        let mut md = String::new();
        let _ = writeln!(md, "# Control plane at mesh scale\n");
        let _ = writeln!(md, "Machine: {}\n", self.machine.line());
        if let Some(note) = &self.note {
            let _ = writeln!(md, "Conditions: {note}\n");
        }
        let _ = writeln!(
            md,
            "Run: {} replica(s){}; {} SVID renewals/s across the mesh; each sidecar long-polls its policies \
             and fetches an endpoint map of {} entries every {} s on one keep-alive mTLS connection; \
             {} policy pushes per size after a {} s steady window. Simulated sidecars and control plane \
             share the machine.\n",
            self.replicas,
            if self.replicas > 1 {
                " on a 3-member etcd cluster, sidecar i on replica i mod replicas, each push \
                 applied through the first replica (`PUT /v1/policies`); CPU and RSS summed over \
                 the replicas"
            } else {
                ""
            },
            self.renewals_per_sec,
            self.endpoint_map_entries,
            self.endpoints_refresh_secs,
            self.pushes_per_size,
            self.steady_secs,
        );
        let _ = writeln!(
            md,
            "| sidecars | push reaches 50% | 99% | 100% | renewals/s | renewal p50 / p99 | control-plane CPU parked | during pushes | RSS parked | RSS peak |"
        );
        let _ = writeln!(md, "|---|---|---|---|---|---|---|---|---|---|");
        for s in &self.sizes {
            let r = &s.renewals;
            let c = &s.control_plane;
            let _ = writeln!(
                md,
                "| {} | {} ms | {} ms | {} ms | {:.0} of {:.0} ({} errors) | {:.1} / {:.1} ms | {:.2} cores | {:.2} cores | {:.0} MiB | {:.0} MiB |",
                s.sidecars,
                ms(s.worst(|p| p.p50_ms)),
                ms(s.worst(|p| p.p99_ms)),
                ms(s.worst(|p| p.all_ms)),
                r.achieved_per_sec,
                r.target_per_sec,
                r.errors,
                r.p50_ms,
                r.p99_ms,
                c.cpu_cores_steady,
                c.cpu_cores_pushes,
                c.rss_mib_steady,
                c.rss_mib_peak,
            );
        }
        let _ = writeln!(
            md,
            "\nPush times are the slowest of the {} pushes at each percentile, from just before {} \
             to the sidecar's answer.\n",
            self.pushes_per_size,
            if self.replicas == 1 {
                "the policy file is replaced (the control plane's 100 ms debounce included)"
            } else {
                "the policy is applied through the first replica"
            }
        );
        if self.replicas == 1 {
            let _ = writeln!(md, "{}\n", self.goal());
        } else {
            self.per_replica_table(&mut md);
        }
        let _ = writeln!(md, "Each push:\n");
        let _ = writeln!(
            md,
            "| sidecars | push | reached | 50% | 99% | 100% | control plane on CPU | waiting for a CPU | sidecars on CPU | waiting for a CPU |"
        );
        let _ = writeln!(md, "|---|---|---|---|---|---|---|---|---|---|");
        for s in &self.sizes {
            for p in &s.pushes {
                let _ = writeln!(
                    md,
                    "| {} | {} | {} | {} ms | {} ms | {} ms | {:.0} ms | {:.0} ms | {:.0} ms | {:.0} ms |",
                    s.sidecars,
                    p.push,
                    p.received,
                    ms(p.p50_ms),
                    ms(p.p99_ms),
                    ms(p.all_ms),
                    p.cp_cpu_ms,
                    p.cp_waiting_ms,
                    p.sidecars_cpu_ms,
                    p.sidecars_waiting_ms
                );
            }
        }
        let _ = writeln!(md, "\nSetup and sidecar requests:\n");
        let _ = writeln!(
            md,
            "| sidecars | join tokens | first SVIDs | all parked after | polls | endpoint fetches | connections | failed requests (setup / measured) |"
        );
        let _ = writeln!(md, "|---|---|---|---|---|---|---|---|");
        for s in &self.sizes {
            let _ = writeln!(
                md,
                "| {} | {:.0}/s | {:.0}/s | {:.1} s | {} | {} | {} | {} / {} |",
                s.sidecars,
                s.setup.tokens_per_sec,
                s.setup.svids_per_sec,
                s.connect_secs,
                s.polls,
                s.endpoint_fetches,
                s.connects,
                s.sidecar_failures_setup,
                s.sidecar_failures_measured,
            );
        }
        md
    }

    /// Each replica's CPU and RSS.
    fn per_replica_table(&self, md: &mut String) {
        let _ = writeln!(md, "Each replica:\n");
        let _ = writeln!(
            md,
            "| sidecars | replica | CPU parked | during pushes | RSS parked | RSS peak |"
        );
        let _ = writeln!(md, "|---|---|---|---|---|---|");
        for s in &self.sizes {
            for (r, c) in s.per_replica.iter().enumerate() {
                let _ = writeln!(
                    md,
                    "| {} | {r} | {:.2} cores | {:.2} cores | {:.0} MiB | {:.0} MiB |",
                    s.sidecars,
                    c.cpu_cores_steady,
                    c.cpu_cores_pushes,
                    c.rss_mib_steady,
                    c.rss_mib_peak,
                );
            }
        }
        let _ = writeln!(md);
    }

    /// Whether the run meets the goal for one replica.
    fn goal(&self) -> String {
        let head = format!(
            "Goal: one replica serves {GOAL_SIDECARS} sidecars, a push reaches all within {:.0} s while {:.0} renewals/s go on, RSS under {:.0} GiB:",
            GOAL_PUSH_MS / 1000.0,
            self.renewals_per_sec,
            GOAL_RSS_MIB / 1024.0
        );
        let Some(s) = self.sizes.iter().find(|s| s.sidecars >= GOAL_SIDECARS) else {
            return format!("{head} not measured (no run with {GOAL_SIDECARS} sidecars or more).");
        };
        let mut missed = Vec::new();
        match s.worst(|p| p.all_ms) {
            Some(t) if t <= GOAL_PUSH_MS => {}
            Some(t) => missed.push(format!("slowest push {t:.0} ms")),
            None => missed.push("a push missed sidecars".to_owned()),
        }
        if s.control_plane.rss_mib_peak >= GOAL_RSS_MIB {
            missed.push(format!("peak RSS {:.0} MiB", s.control_plane.rss_mib_peak));
        }
        if s.renewals.errors > 0 || s.renewals.achieved_per_sec < 0.95 * s.renewals.target_per_sec {
            missed.push(format!(
                "renewals {:.0}/s with {} errors",
                s.renewals.achieved_per_sec, s.renewals.errors
            ));
        }
        if missed.is_empty() {
            format!("{head} **met** at {} sidecars.", s.sidecars)
        } else {
            format!(
                "{head} **missed** at {} sidecars ({}).",
                s.sidecars,
                missed.join(", ")
            )
        }
    }
}

/// Milliseconds, or `missed` for a push that did not reach everyone.
pub(super) fn ms(v: Option<f64>) -> String {
    v.map_or_else(|| "missed".to_owned(), |v| format!("{v:.0}"))
}
