//! `palisadectl up --scenario compromised`: the sidecars learn the demo's
//! traffic, then the policy sets their baseline mode to `monitor` and `api`
//! turns hostile (it probes `db` on a new port and a new route, and bursts
//! requests once a phase), then to `protect`, which blocks and throttles the probes while
//! the learned flows keep passing. Findings are read from the event files.

use std::collections::VecDeque;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context;

use super::mesh::{Mesh, Port};
use super::traffic::Call;
use super::{view, NAMESPACE, WORKLOADS};

/// `db`'s further services: an HTTP API that `api` uses from the start (so
/// it is learned), and an admin port that `api` only calls once compromised.
pub const PORTS: [Port; 2] = [
    Port {
        name: "db-http",
        workload: "db",
        caller: "api",
        http: true,
    },
    Port {
        name: "db-admin",
        workload: "db",
        caller: "api",
        http: false,
    },
];

const LEARN_FOR: Duration = Duration::from_secs(3);
const MONITOR_FOR: Duration = Duration::from_secs(5);
/// How long a burst lasts: several buckets, so it is a spike.
const BURST_FOR: Duration = Duration::from_millis(800);
/// The policy file that carries only `spec.baseline.mode`.
const MODE_POLICY: &str = "palisade-up-baseline.yaml";
/// Lines kept for the redrawn screen.
const STORY_LINES: usize = 16;

/// Each sidecar's baseline and events settings: 200 ms buckets, so a few
/// seconds of traffic are learned and warmed up, and a 1 s dedup window, so
/// each phase raises its own findings.
pub fn sidecar_yaml(name: &str, dir: &Path) -> String {
    format!(
        "baseline:\n  mode: learn\n  path: {}\n  persist_interval: 5s\n  bucket: 200ms\n  \
         stable_after: 2s\n  rate_spike: {{k: 3, floor: 5, window: 2, warmup: 5}}\n\
         events:\n  sinks: [{{type: file, path: {}}}]\n  dedup_window: 1s\n",
        baseline_path(dir, name).display(),
        events_path(dir, name).display(),
    )
}

fn baseline_path(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!("{name}-baseline.json"))
}

fn events_path(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!("{name}-events.jsonl"))
}

/// The sidecars' policy directory under `dir`: a copy of `policy` (a file,
/// or a directory's YAML files) and one more policy that sets only the
/// baseline mode of every demo workload. It has no `ingress` or `egress`, so
/// it decides no traffic. A previous run's baselines and events are removed:
/// each run learns afresh.
pub fn policy_dir(dir: &Path, policy: Option<&Path>) -> anyhow::Result<PathBuf> {
    let out = dir.join("policy");
    if out.exists() {
        std::fs::remove_dir_all(&out)?;
    }
    std::fs::create_dir_all(&out)?;
    let files = match policy {
        None => Vec::new(),
        Some(p) if p.is_dir() => std::fs::read_dir(p)?
            .map(|e| e.map(|e| e.path()))
            .collect::<std::io::Result<Vec<_>>>()?
            .into_iter()
            .filter(|p| p.extension().is_some_and(|e| e == "yaml" || e == "yml"))
            .collect(),
        Some(p) => vec![p.to_owned()],
    };
    for file in files {
        let name = file.file_name().context("a policy file without a name")?;
        std::fs::copy(&file, out.join(name))
            .with_context(|| format!("copying {}", file.display()))?;
    }
    for name in WORKLOADS {
        let _ = std::fs::remove_file(baseline_path(dir, name));
        let _ = std::fs::remove_file(events_path(dir, name));
    }
    set_mode(&out, Phase::Learn.mode())?;
    Ok(out)
}

/// Rewrite the mode policy: written aside (a dot file, which the policy
/// loader skips) and renamed over, so a sidecar never reads half of it.
fn set_mode(policy_dir: &Path, mode: &str) -> anyhow::Result<()> {
    let yaml = format!(
        "# Written by `palisadectl up --scenario compromised`: only the learned-baseline mode.\n\
         apiVersion: palisade.dev/v1alpha1\nkind: SegmentationPolicy\n\
         metadata: {{name: up-baseline, namespace: {NAMESPACE}}}\n\
         spec:\n  targets:\n    - namespace: {NAMESPACE}\n  baseline: {{mode: {mode}}}\n"
    );
    let tmp = policy_dir.join(format!(".{MODE_POLICY}"));
    std::fs::write(&tmp, yaml).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, policy_dir.join(MODE_POLICY))?;
    Ok(())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Learn,
    Monitor,
    Protect,
}

impl Phase {
    fn at(elapsed: Duration) -> Phase {
        if elapsed < LEARN_FOR {
            Phase::Learn
        } else if elapsed < LEARN_FOR + MONITOR_FOR {
            Phase::Monitor
        } else {
            Phase::Protect
        }
    }

    fn mode(self) -> &'static str {
        match self {
            Phase::Learn => "learn",
            Phase::Monitor => "monitor",
            Phase::Protect => "protect",
        }
    }

    fn banner(self) -> String {
        let what = match self {
            Phase::Learn => format!(
                "the sidecars learn the traffic policy allows for {} s",
                LEARN_FOR.as_secs()
            ),
            Phase::Monitor => "api is compromised: it probes db on a new port and a new \
                 route, and bursts requests once; deviations pass and are reported"
                .to_owned(),
            Phase::Protect => "deviations are blocked (403, closed connection) or throttled \
                 (429); learned flows keep passing"
                .to_owned(),
        };
        format!(
            "phase {}: spec.baseline.mode: {} on every sidecar; {what}",
            self.mode(),
            self.mode()
        )
    }
}

/// The scenario's state between rounds.
pub struct Attack {
    started: Instant,
    phase: Option<Phase>,
    policy_dir: PathBuf,
    learned: Call,
    /// A route `api` only calls while learning: learned, then idle, until
    /// the burst.
    learned_rarely: Call,
    new_port: Call,
    new_route: Call,
    burst: Call,
    /// The phase that had its burst.
    burst_in: Option<Phase>,
    /// Each sidecar's event file and how far it has been read.
    events: Vec<(&'static str, PathBuf, u64)>,
    story: VecDeque<String>,
}

impl Attack {
    pub fn new(mesh: &Mesh) -> anyhow::Result<Attack> {
        let call = |route: &str, what: &str, path: Option<&str>| {
            let mut c = mesh.call_via("api", "db", route)?;
            c.what = what.to_owned();
            c.http_path = path.map(str::to_owned);
            anyhow::Ok(c)
        };
        Ok(Attack {
            started: Instant::now(),
            phase: None,
            policy_dir: mesh
                .policy()
                .context("the scenario runs with a policy directory")?
                .to_owned(),
            learned: call("db-http", "GET /v1/orders/1042", Some("/v1/orders/1042"))?,
            new_port: call("db-admin", "admin port", None)?,
            new_route: call("db-http", "GET /admin/export", Some("/admin/export"))?,
            learned_rarely: call("db-http", "GET /v1/users/42", Some("/v1/users/42"))?,
            burst: call("db-http", "GET /v1/users/7", Some("/v1/users/7"))?,
            burst_in: None,
            events: mesh
                .workload_names()
                .map(|name| (name, events_path(mesh.dir(), name), 0))
                .collect(),
            story: VecDeque::new(),
        })
    }

    /// The learned HTTP call `api` makes every round, in every phase.
    pub fn learned_call(&self) -> &Call {
        &self.learned
    }

    /// Before a round's calls: switch the mode when the phase changes, and
    /// wait until every sidecar has it in force.
    pub async fn begin_round(&mut self, mesh: &Mesh, plain: bool) -> anyhow::Result<()> {
        let phase = Phase::at(self.started.elapsed());
        if self.phase != Some(phase) {
            set_mode(&self.policy_dir, phase.mode())?;
            wait_mode(mesh, phase.mode()).await?;
            self.phase = Some(phase);
            self.say(plain, phase.banner());
        }
        Ok(())
    }

    /// After a round's calls: probe once learning is over, then show the
    /// findings raised so far.
    pub async fn end_round(&mut self, plain: bool) {
        if self.phase == Some(Phase::Learn) {
            let outcome = self.learned_rarely.run().await;
            let line = view::line(&self.learned_rarely, &outcome);
            self.say(plain, line);
        } else {
            let mut lines = Vec::new();
            for probe in [&self.new_port, &self.new_route] {
                let outcome = probe.run().await;
                lines.push(format!("probe    {}", view::line(probe, &outcome)));
            }
            // One burst a phase: a burst that recurs every round teaches
            // the learned ceiling to climb, bucket after bucket.
            if self.burst_in != self.phase {
                self.burst_in = self.phase;
                let statuses = self.burst.burst(BURST_FOR).await;
                lines.push(format!(
                    "probe    {}",
                    view::burst_line(&self.burst, BURST_FOR, &statuses)
                ));
            }
            for l in lines {
                self.say(plain, l);
            }
        }
        self.read_findings(plain);
    }

    /// The last findings, once the sinks have written them.
    pub async fn finish(&mut self, plain: bool) {
        tokio::time::sleep(Duration::from_millis(500)).await;
        self.read_findings(plain);
    }

    /// The phase and the latest probes and findings, for the screen.
    pub fn story(&self) -> String {
        let mut out = String::from("\n");
        for l in &self.story {
            out.push_str(l);
            out.push('\n');
        }
        out
    }

    fn say(&mut self, plain: bool, line: String) {
        if plain {
            println!("{line}");
        }
        if self.story.len() == STORY_LINES {
            self.story.pop_front();
        }
        self.story.push_back(line);
    }

    /// The findings (OCSF Detection Findings) appended to each sidecar's
    /// event file since the last read, one line each.
    fn read_findings(&mut self, plain: bool) {
        let mut lines = Vec::new();
        for (workload, path, offset) in &mut self.events {
            let Ok(mut f) = std::fs::File::open(&*path) else {
                continue;
            };
            let mut text = String::new();
            if f.seek(SeekFrom::Start(*offset)).is_err() || f.read_to_string(&mut text).is_err() {
                continue;
            }
            // Only whole lines: the sink may be mid-write.
            let Some(end) = text.rfind('\n') else {
                continue;
            };
            *offset += end as u64 + 1;
            for event in text[..end].lines() {
                if let Some(l) = view::finding(workload, event) {
                    lines.push(l);
                }
            }
        }
        for l in lines {
            self.say(plain, l);
        }
    }
}

/// Wait until every sidecar reports `mode` in force (the policy swap is
/// picked up within a bucket of the file's change).
async fn wait_mode(mesh: &Mesh, mode: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let dumps = mesh.config_dumps().await;
        if dumps.iter().all(|(_, d)| d["baseline"]["mode"] == mode) {
            return Ok(());
        }
        if Instant::now() >= deadline {
            let modes: Vec<String> = dumps
                .iter()
                .map(|(name, d)| format!("{name}: {}", d["baseline"]["mode"]))
                .collect();
            anyhow::bail!(
                "the sidecars did not switch to baseline mode {mode} within 10 s ({})",
                modes.join(", ")
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
