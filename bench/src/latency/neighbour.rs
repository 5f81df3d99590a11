//! Noisy neighbours: threads that spin for a fixed share of every period and
//! sleep the rest, each pinned to one CPU, competing with the proxies the way
//! other pods on a node do. The same neighbours run during every trial of
//! every path.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::Context;
use nix::sched::{sched_getaffinity, sched_setaffinity, CpuSet};
use nix::unistd::Pid;
use serde::Serialize;

/// How many neighbours, how busy, and where they are pinned.
#[derive(Debug, Clone, Serialize)]
pub struct NeighbourSpec {
    pub threads: usize,
    /// Percent of each period a neighbour spins.
    pub duty_percent: u8,
    #[serde(rename = "period_ms", serialize_with = "as_ms")]
    pub period: Duration,
    /// Neighbour `i` runs on `cpus[i]`: round-robin over the CPUs the bench may use.
    pub cpus: Vec<usize>,
}

fn as_ms<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64() * 1000.0)
}

impl NeighbourSpec {
    /// `threads` neighbours pinned round-robin over the CPUs this process may use.
    pub fn new(
        threads: usize,
        duty_percent: u8,
        period: Duration,
    ) -> anyhow::Result<NeighbourSpec> {
        let allowed = sched_getaffinity(Pid::from_raw(0)).context("reading the CPU affinity")?;
        let allowed: Vec<usize> = (0..CpuSet::count())
            .filter(|&c| allowed.is_set(c).unwrap_or(false))
            .collect();
        anyhow::ensure!(
            !allowed.is_empty(),
            "no CPU in this process's affinity mask"
        );
        Ok(NeighbourSpec {
            threads,
            duty_percent: duty_percent.clamp(1, 100),
            period,
            cpus: (0..threads).map(|i| allowed[i % allowed.len()]).collect(),
        })
    }

    /// Start the neighbours; they run until the returned guard drops.
    pub fn start(&self) -> anyhow::Result<Neighbours> {
        let stop = Arc::new(AtomicBool::new(false));
        let busy = self.period.mul_f64(f64::from(self.duty_percent) / 100.0);
        let mut threads = Vec::with_capacity(self.threads);
        for (i, &cpu) in self.cpus.iter().enumerate() {
            let (stop, period) = (stop.clone(), self.period);
            let thread = std::thread::Builder::new()
                .name(format!("bench-neighbour-{i}"))
                .spawn(move || -> nix::Result<u64> {
                    let mut only = CpuSet::new();
                    only.set(cpu)?;
                    sched_setaffinity(Pid::from_raw(0), &only)?;
                    Ok(spin(&stop, busy, period))
                })?;
            threads.push(thread);
        }
        Ok(Neighbours { stop, threads })
    }
}

/// Spin for `busy` of each `period` until `stop`; returns the periods run. A
/// period that overruns (the neighbour was preempted) is not made up for.
fn spin(stop: &AtomicBool, busy: Duration, period: Duration) -> u64 {
    let mut start = Instant::now();
    let mut periods = 0;
    while !stop.load(Ordering::Relaxed) {
        periods += 1;
        while start.elapsed() < busy {
            std::hint::spin_loop();
        }
        let next = start + period;
        let now = Instant::now();
        if next > now {
            std::thread::sleep(next - now);
            start = next;
        } else {
            start = now;
        }
    }
    periods
}

/// Running neighbours; dropping this stops and joins them.
pub struct Neighbours {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<nix::Result<u64>>>,
}

impl Neighbours {
    /// Stop them; returns each one's busy periods, or fails if one could
    /// not pin itself.
    pub fn finish(mut self) -> anyhow::Result<Vec<u64>> {
        self.stop.store(true, Ordering::Relaxed);
        self.threads
            .drain(..)
            .map(|thread| {
                let periods = thread
                    .join()
                    .map_err(|_| anyhow::anyhow!("a noisy neighbour panicked"))?;
                periods.context("pinning a noisy neighbour to its CPU")
            })
            .collect()
    }
}

impl Drop for Neighbours {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn neighbours_are_pinned_round_robin_and_run_until_stopped() {
        let spec = NeighbourSpec::new(3, 50, Duration::from_millis(10)).unwrap();
        let cores = std::thread::available_parallelism().unwrap().get();
        assert_eq!(spec.cpus.len(), 3);
        if cores > 1 {
            assert_ne!(spec.cpus[0], spec.cpus[1], "{:?}", spec.cpus);
        }
        let running = spec.start().unwrap();
        std::thread::sleep(Duration::from_millis(200));
        let periods = running.finish().unwrap();
        assert_eq!(periods.len(), 3);
        assert!(periods.iter().all(|&p| p >= 1), "{periods:?}");
    }
}
