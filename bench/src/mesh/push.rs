//! One policy change and how long it takes to reach the mesh: the policy
//! file in the control plane's `--policy-dir` is replaced (written aside,
//! then renamed over, as a ConfigMap update or an editor does), or with
//! several replicas applied through one of them, and each sidecar's first
//! answer that carries the new rule is timed from just before the change.

use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::Context;
use serde::Serialize;
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::cluster::Cluster;
use super::sidecar::{marker, Mesh};
use crate::latency::procstat::{sched_seconds, SchedTimes};

/// The policy file's name in the policy directory.
pub const FILE: &str = "mesh.yaml";

/// One push: when it reached half, 99% and all of the sidecars.
#[derive(Debug, Clone, Serialize)]
pub struct PushResult {
    pub push: u32,
    pub received: usize,
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    /// When the last sidecar got it; `None` if some never did.
    pub all_ms: Option<f64>,
    /// What the control plane (every replica, summed) spent from the
    /// change until the last answer (or the timeout): CPU time, and time its
    /// threads were runnable but waiting for a CPU that other processes held.
    pub cp_cpu_ms: f64,
    pub cp_waiting_ms: f64,
    /// The same for the bench process, where the sidecars run.
    pub sidecars_cpu_ms: f64,
    pub sidecars_waiting_ms: f64,
}

/// The policy selecting every sidecar, its one rule named after push `k`.
pub fn policy(k: u32) -> String {
    format!(
        "apiVersion: palisade.dev/v1alpha1\n\
         kind: SegmentationPolicy\n\
         metadata: {{name: mesh, namespace: mesh}}\n\
         spec:\n  \
           targets: [{{namespace: mesh}}]\n  \
           ingress:\n    \
             - name: {}\n      \
               action: allow\n      \
               from: [{{namespace: mesh}}]\n      \
               ports: [{}]\n",
        marker(k),
        8000 + k % 1000
    )
}

/// Replaces the policy with push `k`'s: written to a hidden file (which the
/// control plane skips), then renamed over.
pub fn write_policy(dir: &Path, k: u32) -> anyhow::Result<()> {
    let tmp = dir.join(format!(".{FILE}.tmp"));
    std::fs::write(&tmp, policy(k)).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, dir.join(FILE)).context("renaming the policy into place")
}

/// Pushes change `k` and waits until every one of `n` sidecars has it or
/// `timeout` passes.
pub async fn push(
    cluster: &Cluster,
    mesh: &Mesh,
    reached: &mut mpsc::UnboundedReceiver<(u32, usize, Instant)>,
    k: u32,
    n: usize,
    timeout: Duration,
) -> anyhow::Result<PushResult> {
    mesh.push.store(k, Ordering::Relaxed);
    let pids = cluster.pids()?;
    let (cp0, own0) = (sched_summed(&pids)?, sched_seconds(std::process::id())?);
    let t0 = Instant::now();
    cluster.apply(k).await?;
    let deadline = t0 + timeout;
    let mut got = vec![false; n];
    let mut latencies = Vec::with_capacity(n);
    while latencies.len() < n {
        let Ok(Some((push, i, at))) = tokio::time::timeout_at(deadline, reached.recv()).await
        else {
            break;
        };
        if push == k && !std::mem::replace(&mut got[i], true) {
            latencies.push((at - t0).as_secs_f64() * 1000.0);
        }
    }
    let (cp1, own1) = (sched_summed(&pids)?, sched_seconds(std::process::id())?);
    latencies.sort_by(f64::total_cmp);
    // The time by which a fraction q of all n sidecars had it.
    let by = |q: f64| {
        let rank = ((q * n as f64).ceil() as usize).max(1);
        latencies.get(rank - 1).copied()
    };
    Ok(PushResult {
        push: k,
        received: latencies.len(),
        p50_ms: by(0.5),
        p99_ms: by(0.99),
        all_ms: by(1.0),
        cp_cpu_ms: (cp1.on_cpu - cp0.on_cpu) * 1000.0,
        cp_waiting_ms: (cp1.waiting - cp0.waiting) * 1000.0,
        sidecars_cpu_ms: (own1.on_cpu - own0.on_cpu) * 1000.0,
        sidecars_waiting_ms: (own1.waiting - own0.waiting) * 1000.0,
    })
}

/// [`sched_seconds`] summed over `pids`.
fn sched_summed(pids: &[u32]) -> anyhow::Result<SchedTimes> {
    pids.iter().try_fold(SchedTimes::default(), |sum, &pid| {
        let s = sched_seconds(pid)?;
        Ok(SchedTimes {
            on_cpu: sum.on_cpu + s.on_cpu,
            waiting: sum.waiting + s.waiting,
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_push_is_a_valid_policy_selecting_the_whole_mesh() {
        for k in [1, 2, 999] {
            let text = policy(k);
            let docs = palisade_policy::parse_documents("mesh.yaml", &text).expect("valid");
            let id = palisade_policy::SpiffeId::parse(&super::super::sidecar_id(7)).unwrap();
            assert!(docs[0].selects(&id), "{text}");
            assert!(text.contains(&marker(k)));
            assert!(!policy(k + 1).contains(&marker(k)));
        }
    }
}
