//! `perf stat` on a proxy during a trial: context switches, CPU migrations
//! and `sched:sched_wakeup`, when Debian's `linux-perf` is installed and the
//! kernel lets it count them; otherwise the bench says why and goes on.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde::Serialize;

use super::tools::which;

const EVENTS: &str = "context-switches,cpu-migrations,sched:sched_wakeup";

/// A `perf` that counts [`EVENTS`].
#[derive(Debug, Clone)]
pub struct Perf {
    bin: PathBuf,
}

/// What perf counted on one process over a trial. `wakeups` are the
/// `sched_wakeup` events the process's threads raised: wakeups they caused,
/// of their own threads or of others.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct PerfCounts {
    pub context_switches: u64,
    pub cpu_migrations: u64,
    pub wakeups: u64,
}

impl Perf {
    /// `perf` on `PATH` that can count the events; the error says why not.
    pub fn detect() -> Result<Perf, String> {
        let bin = which("perf")
            .ok_or("perf not found: apt-get install linux-perf for context switches from perf")?;
        let out = Command::new(&bin)
            .args(["stat", "-x,", "-e", EVENTS, "--", "true"])
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("running {}: {e}", bin.display()))?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        if !out.status.success() {
            return Err(format!(
                "`perf stat` does not run here: {}",
                stderr.lines().last().unwrap_or("").trim()
            ));
        }
        parse(&stderr).map_err(|e| format!("`perf stat -e {EVENTS}`: {e:#}"))?;
        Ok(Perf { bin })
    }

    /// Start counting on every thread of `pid`; the counts are read by
    /// [`PerfRun::finish`]. Returns once perf has a counter open per event
    /// and thread (or after 2 s, if threads came and went meanwhile).
    pub fn attach(&self, pid: u32, out: &Path) -> anyhow::Result<PerfRun> {
        let child = Command::new(&self.bin)
            .args(["stat", "-x,", "-e", EVENTS, "-o"])
            .arg(out)
            .args(["-p", &pid.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {}", self.bin.display()))?;
        let mut run = PerfRun {
            child,
            out: out.to_owned(),
        };
        let events = EVENTS.split(',').count();
        let deadline = Instant::now() + Duration::from_secs(2);
        while perf_fds(run.child.id()) < events * threads(pid) && Instant::now() < deadline {
            if run.child.try_wait()?.is_some() {
                bail!("perf stat exited instead of attaching to {pid}");
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        Ok(run)
    }
}

/// Threads of `pid` right now.
fn threads(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/task")).map_or(0, |d| d.count())
}

/// Open perf_event file descriptors of `pid`.
fn perf_fds(pid: u32) -> usize {
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return 0;
    };
    fds.flatten()
        .filter(|fd| {
            std::fs::read_link(fd.path()).is_ok_and(|l| l.as_os_str() == "anon_inode:[perf_event]")
        })
        .count()
}

/// `perf stat` counting on a process; killed if dropped unfinished.
pub struct PerfRun {
    child: Child,
    out: PathBuf,
}

impl PerfRun {
    /// Stop counting (SIGINT makes perf print its counts) and read them.
    pub fn finish(mut self) -> anyhow::Result<PerfCounts> {
        kill(Pid::from_raw(self.child.id() as i32), Signal::SIGINT)?;
        let deadline = Instant::now() + Duration::from_secs(5);
        while self.child.try_wait()?.is_none() {
            if Instant::now() >= deadline {
                bail!("perf stat did not stop within 5 s of SIGINT");
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        let text = std::fs::read_to_string(&self.out)
            .with_context(|| format!("reading {}", self.out.display()))?;
        parse(&text)
    }
}

impl Drop for PerfRun {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// `perf stat -x,` lines: `<value>,<unit>,<event>,...`; a value of
/// `<not counted>` or `<not supported>` is an error naming the event.
fn parse(text: &str) -> anyhow::Result<PerfCounts> {
    let mut counts = [None; 3];
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let mut fields = line.split(',');
        let (Some(value), Some(_unit), Some(event)) = (fields.next(), fields.next(), fields.next())
        else {
            continue;
        };
        let Some(i) = EVENTS.split(',').position(|e| e == event) else {
            continue;
        };
        let n: u64 = value
            .trim()
            .parse()
            .map_err(|_| anyhow!("{event} was {value}"))?;
        counts[i] = Some(n);
    }
    let [Some(context_switches), Some(cpu_migrations), Some(wakeups)] = counts else {
        bail!("not every event was reported: {}", text.trim());
    };
    Ok(PerfCounts {
        context_switches,
        cpu_migrations,
        wakeups,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_counts_are_read_and_uncounted_events_refused() {
        let text = "# started on Wed Dec  2 10:32:09 2026\n\n\
                    189,,context-switches,474794003,100.00,398.068,/sec\n\
                    3,,cpu-migrations,474794003,100.00,6.3,/sec\n\
                    41,,sched:sched_wakeup,474794003,100.00,,\n";
        assert_eq!(
            parse(text).unwrap(),
            PerfCounts {
                context_switches: 189,
                cpu_migrations: 3,
                wakeups: 41
            }
        );
        let uncounted = text.replace("189,,context", "<not counted>,,context");
        assert!(parse(&uncounted).is_err());
        assert!(parse("# started\n").is_err());
    }

    /// On a machine with perf, a thread that sleeps in a loop shows context
    /// switches in its process's counts.
    #[test]
    fn perf_counts_a_running_process_when_installed() {
        let Ok(perf) = Perf::detect() else {
            eprintln!("perf is not usable here; only the parser is tested");
            return;
        };
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stop.clone();
        let sleeper = std::thread::spawn(move || {
            while !flag.load(std::sync::atomic::Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(5));
            }
        });
        let dir = tempfile::tempdir().unwrap();
        let run = perf
            .attach(std::process::id(), &dir.path().join("perf.csv"))
            .unwrap();
        std::thread::sleep(Duration::from_millis(300));
        let counts = run.finish().unwrap();
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        sleeper.join().unwrap();
        assert!(counts.context_switches > 0, "{counts:?}");
    }
}
