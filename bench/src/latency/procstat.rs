//! What a proxy process costs, read from /proc: CPU time from
//! `/proc/<pid>/stat`, resident memory from `/proc/<pid>/status`, context
//! switches from each thread's status, and the host's steal time from `/proc/stat`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, Context};

/// /proc reports CPU times in USER_HZ, which is 100 on every mainstream Linux ABI
/// (it is fixed for user space, whatever the kernel's own HZ).
const USER_HZ: f64 = 100.0;

/// utime + stime of `pid` (all its threads), in seconds.
pub fn cpu_seconds(pid: u32) -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("reading /proc/{pid}/stat"))?;
    parse_cpu_seconds(&stat).ok_or_else(|| anyhow!("unexpected /proc/{pid}/stat format"))
}

fn parse_cpu_seconds(stat: &str) -> Option<f64> {
    // The command name (field 2) may hold spaces and parentheses; the fields
    // after its last ')' start at field 3 (state). utime and stime are 14 and 15.
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some((utime + stime) as f64 / USER_HZ)
}

/// Seconds all of `pid`'s threads have spent on a CPU and waiting for one
/// (runnable on a run queue: time lost to other processes), from
/// `/proc/<pid>/task/*/schedstat`. Threads that ended are not counted.
pub fn sched_seconds(pid: u32) -> anyhow::Result<SchedTimes> {
    let mut total = SchedTimes::default();
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))? {
        let Ok(text) = std::fs::read_to_string(task?.path().join("schedstat")) else {
            continue; // the thread ended meanwhile
        };
        let t = parse_schedstat(&text).ok_or_else(|| anyhow!("unexpected schedstat {text:?}"))?;
        total.on_cpu += t.on_cpu;
        total.waiting += t.waiting;
    }
    Ok(total)
}

#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct SchedTimes {
    pub on_cpu: f64,
    pub waiting: f64,
}

fn parse_schedstat(text: &str) -> Option<SchedTimes> {
    let mut f = text.split_whitespace().map(|v| v.parse::<u64>().ok());
    let (on_cpu, waiting) = (f.next()??, f.next()??);
    Some(SchedTimes {
        on_cpu: on_cpu as f64 / 1e9,
        waiting: waiting as f64 / 1e9,
    })
}

pub use palisadectl::local::{peak_rss_kib, rss_kib};

/// Context switches of a process, summed over its threads.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CtxSwitches {
    /// The thread blocked (waited for I/O, a lock, a timer).
    pub voluntary: u64,
    /// The scheduler took the CPU away (time slice over, quota spent).
    pub nonvoluntary: u64,
}

impl CtxSwitches {
    /// `/proc/<pid>/status` counts only the main thread, so this sums
    /// `/proc/<pid>/task/*/status`. A thread that exits takes its counts along.
    pub fn of(pid: u32) -> anyhow::Result<CtxSwitches> {
        let dir = format!("/proc/{pid}/task");
        let mut sum = CtxSwitches::default();
        for task in std::fs::read_dir(&dir).with_context(|| format!("reading {dir}"))? {
            let status = match std::fs::read_to_string(task?.path().join("status")) {
                Ok(s) => s,
                // The thread exited between the listing and the read.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e).with_context(|| format!("reading a thread of {pid}")),
            };
            let t = parse_ctx_switches(&status)
                .ok_or_else(|| anyhow!("no context switch counts in {dir}/*/status"))?;
            sum.voluntary += t.voluntary;
            sum.nonvoluntary += t.nonvoluntary;
        }
        Ok(sum)
    }

    pub fn since(self, before: CtxSwitches) -> CtxSwitches {
        CtxSwitches {
            voluntary: self.voluntary.saturating_sub(before.voluntary),
            nonvoluntary: self.nonvoluntary.saturating_sub(before.nonvoluntary),
        }
    }
}

fn parse_ctx_switches(status: &str) -> Option<CtxSwitches> {
    let field = |name: &str| -> Option<u64> {
        let line = status.lines().find(|l| l.starts_with(name))?;
        line[name.len()..].trim().parse().ok()
    };
    Some(CtxSwitches {
        voluntary: field("voluntary_ctxt_switches:")?,
        nonvoluntary: field("nonvoluntary_ctxt_switches:")?,
    })
}

/// The host's CPU time so far, from the `cpu` line of `/proc/stat`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostCpu {
    /// Every state's ticks: user, nice, system, idle, iowait, irq, softirq, steal.
    total: u64,
    /// Ticks the hypervisor ran something else while this guest wanted the CPU.
    steal: u64,
}

impl HostCpu {
    pub fn read() -> anyhow::Result<HostCpu> {
        let stat = std::fs::read_to_string("/proc/stat").context("reading /proc/stat")?;
        parse_host_cpu(&stat).ok_or_else(|| anyhow!("no `cpu` line in /proc/stat"))
    }

    /// Steal as a percentage of all CPU time since `before` (0 when no time passed).
    pub fn steal_percent_since(self, before: HostCpu) -> f64 {
        let total = self.total.saturating_sub(before.total);
        if total == 0 {
            return 0.0;
        }
        100.0 * self.steal.saturating_sub(before.steal) as f64 / total as f64
    }
}

fn parse_host_cpu(stat: &str) -> Option<HostCpu> {
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    // guest and guest_nice (fields 9 and 10) are already inside user and nice.
    let ticks: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .take(8)
        .map(|v| v.parse().ok())
        .collect::<Option<_>>()?;
    (ticks.len() == 8).then(|| HostCpu {
        total: ticks.iter().sum(),
        steal: ticks[7],
    })
}

/// Samples the RSS of a set of processes every 100 ms while load runs, keeping
/// each one's highest; stop it with [`RssSampler::finish`].
pub struct RssSampler {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<Vec<u64>>,
}

impl RssSampler {
    pub fn start(pids: Vec<u32>) -> std::io::Result<RssSampler> {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name("bench-rss".into())
            .spawn(move || {
                let mut max = vec![0; pids.len()];
                // Bounded even if nobody calls finish: at most an hour of samples.
                for _ in 0..36_000 {
                    for (m, &pid) in max.iter_mut().zip(&pids) {
                        *m = (*m).max(rss_kib(pid).unwrap_or(0));
                    }
                    if flag.load(Ordering::Relaxed) {
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(100));
                }
                max
            })?;
        Ok(RssSampler { stop, thread })
    }

    /// The highest RSS seen for each process, in KiB, in the order given.
    pub fn finish(self) -> Vec<u64> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn cpu_time_is_read_after_a_command_name_with_spaces_and_parens() {
        let stat = "42 (my (odd) proxy) S 1 42 42 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 3 0";
        assert_eq!(parse_cpu_seconds(stat), Some(3.0));
    }

    #[test]
    fn schedstat_gives_time_on_cpu_and_waiting_in_seconds() {
        let t = parse_schedstat("2500000000 500000000 42\n").unwrap();
        assert_eq!(
            t,
            SchedTimes {
                on_cpu: 2.5,
                waiting: 0.5
            }
        );
        assert!(sched_seconds(std::process::id()).unwrap().on_cpu > 0.0);
    }

    #[test]
    fn steal_is_a_share_of_all_cpu_time_between_two_reads() {
        let before = parse_host_cpu("cpu  100 0 50 800 10 0 5 35 7 0\ncpu0 1 2 3\n").unwrap();
        let after = parse_host_cpu("cpu  160 0 70 880 10 0 5 75 9 0\n").unwrap();
        assert_eq!(after.steal_percent_since(before), 20.0);
        assert_eq!(before.steal_percent_since(before), 0.0);
        assert!(HostCpu::read().is_ok());
    }

    #[test]
    fn context_switches_are_summed_over_threads() {
        let status = "Name:\tx\nvoluntary_ctxt_switches:\t12\nnonvoluntary_ctxt_switches:\t3\n";
        assert_eq!(
            parse_ctx_switches(status),
            Some(CtxSwitches {
                voluntary: 12,
                nonvoluntary: 3
            })
        );
        // A second thread blocks a few times, then stays alive: the process
        // sum holds its switches as well as the main thread's.
        let me = std::process::id();
        let (tx, rx) = std::sync::mpsc::channel();
        let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
        let worker = std::thread::spawn(move || {
            for _ in 0..5 {
                std::thread::sleep(Duration::from_millis(2));
            }
            let task = std::fs::read_link("/proc/thread-self").unwrap();
            tx.send(task).unwrap();
            let _ = done_rx.recv();
        });
        let thread_status = |task: &std::path::Path| {
            let status = std::fs::read_to_string(Path::new("/proc").join(task).join("status"));
            parse_ctx_switches(&status.unwrap()).unwrap()
        };
        let task = rx.recv().unwrap();
        let worker_counts = thread_status(&task);
        let main_counts = thread_status(Path::new(&format!("{me}/task/{me}")));
        let sum = CtxSwitches::of(me).unwrap();
        done_tx.send(()).unwrap();
        worker.join().unwrap();
        assert!(worker_counts.voluntary >= 5, "{worker_counts:?}");
        assert!(
            sum.voluntary >= worker_counts.voluntary + main_counts.voluntary,
            "sum {sum:?}, worker {worker_counts:?}, main {main_counts:?}"
        );
    }

    #[test]
    fn own_process_has_cpu_time_and_resident_memory() {
        let me = std::process::id();
        assert!(cpu_seconds(me).is_ok());
        assert!(rss_kib(me).unwrap() > 0);
    }
}
