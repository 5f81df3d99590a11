//! What a proxy process costs, read from /proc: CPU time from
//! `/proc/<pid>/stat` and resident memory from `/proc/<pid>/status`.

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
    fn own_process_has_cpu_time_and_resident_memory() {
        let me = std::process::id();
        assert!(cpu_seconds(me).is_ok());
        assert!(rss_kib(me).unwrap() > 0);
    }
}
