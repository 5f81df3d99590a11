//! CPU limits the way a pod's `resources.limits.cpu` sets them: each proxy
//! process in a cgroup of its own with a CFS quota, through cgroup v2
//! (`cpu.max`) or v1 (`cpu.cfs_quota_us`, `cpu.cfs_period_us`). A group is
//! removed when its guard drops, on success, error or panic alike; groups
//! left by a bench that was killed are removed at the next start.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use anyhow::{anyhow, Context};
use serde::Serialize;
use tracing::{info, warn};

/// Every group the bench makes is `palisade-bench-<bench pid>-<n>-<proxy>`.
const PREFIX: &str = "palisade-bench-";
/// The CFS period Kubernetes uses.
pub const PERIOD_US: u64 = 100_000;

/// Which cgroup hierarchy holds the `cpu` controller.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Version {
    V1,
    V2,
}

/// The mounted `cpu` controller the bench makes its groups in.
#[derive(Debug, Clone)]
pub struct CpuController {
    pub version: Version,
    /// The hierarchy's mount point; groups go directly under it.
    pub root: PathBuf,
}

impl CpuController {
    /// The v2 hierarchy if it offers the `cpu` controller, else the v1
    /// hierarchy that mounts `cpu`, from `/proc/self/mountinfo`.
    pub fn find() -> anyhow::Result<CpuController> {
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo")
            .context("reading /proc/self/mountinfo")?;
        let offers_cpu = |mount: &Path| {
            std::fs::read_to_string(mount.join("cgroup.controllers"))
                .is_ok_and(|c| c.split_whitespace().any(|c| c == "cpu"))
        };
        find_in(&mountinfo, offers_cpu).ok_or_else(|| {
            anyhow!(
                "--cpu-limit needs the cgroup `cpu` controller: neither a cgroup2 mount \
                 offering `cpu` nor a cgroup v1 mount of `cpu` is in /proc/self/mountinfo"
            )
        })
    }

    /// Put `pid` in a fresh group that may use `millicores` of a CPU per
    /// period; `name` says whose group it is.
    pub fn limit(&self, name: &str, millicores: u32, pid: u32) -> anyhow::Result<Cgroup> {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let path = self
            .root
            .join(format!("{PREFIX}{}-{n}-{name}", std::process::id()));
        if self.version == Version::V2 {
            self.enable_cpu_for_children()?;
        }
        std::fs::create_dir(&path)
            .with_context(|| format!("creating cgroup {}", path.display()))?;
        // From here on the guard removes the group, whatever fails next.
        let group = Cgroup {
            path,
            parent: self.root.clone(),
        };
        let quota = quota_us(millicores);
        match self.version {
            Version::V2 => group.write("cpu.max", &format!("{quota} {PERIOD_US}"))?,
            Version::V1 => {
                group.write("cpu.cfs_period_us", &PERIOD_US.to_string())?;
                group.write("cpu.cfs_quota_us", &quota.to_string())?;
            }
        }
        group.write("cgroup.procs", &pid.to_string())?;
        info!(proxy = name, pid, cgroup = %group.path.display(), quota_us = quota, period_us = PERIOD_US, "CPU limit applied");
        Ok(group)
    }

    /// Remove the groups of benches that are no longer running (killed
    /// before their guards ran); returns what was removed.
    pub fn remove_stale(&self) -> Vec<PathBuf> {
        let Ok(entries) = std::fs::read_dir(&self.root) else {
            return Vec::new();
        };
        let mut removed = Vec::new();
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Some(owner) = name.to_str().and_then(owner_pid) else {
                continue;
            };
            if Path::new(&format!("/proc/{owner}")).exists() {
                continue;
            }
            let path = entry.path();
            match remove(&path, &self.root) {
                Ok(()) => removed.push(path),
                Err(e) => {
                    warn!(cgroup = %path.display(), error = %e, "could not remove a stale cgroup")
                }
            }
        }
        removed
    }

    /// cgroup v2 hands a controller to children only once the parent's
    /// `cgroup.subtree_control` lists it.
    fn enable_cpu_for_children(&self) -> anyhow::Result<()> {
        let control = self.root.join("cgroup.subtree_control");
        let enabled = std::fs::read_to_string(&control)
            .with_context(|| format!("reading {}", control.display()))?;
        if enabled.split_whitespace().any(|c| c == "cpu") {
            return Ok(());
        }
        std::fs::write(&control, "+cpu")
            .with_context(|| format!("enabling the cpu controller in {}", control.display()))
    }
}

/// CFS quota per period for `millicores` thousandths of a CPU.
pub fn quota_us(millicores: u32) -> u64 {
    u64::from(millicores) * PERIOD_US / 1000
}

/// The bench pid in a group name of ours.
fn owner_pid(name: &str) -> Option<u32> {
    name.strip_prefix(PREFIX)?.split('-').next()?.parse().ok()
}

/// `offers_cpu` says whether a cgroup2 mount's `cgroup.controllers` lists `cpu`.
fn find_in(mountinfo: &str, offers_cpu: impl Fn(&Path) -> bool) -> Option<CpuController> {
    // "<id> <parent> <maj:min> <root> <mount point> <options> [<optional>...] - <fstype> <source> <super options>"
    let mounts: Vec<(&str, &str, &str)> = mountinfo
        .lines()
        .filter_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            let point = left.split_whitespace().nth(4)?;
            let mut right = right.split_whitespace();
            let fstype = right.next()?;
            let options = right.nth(1).unwrap_or("");
            Some((point, fstype, options))
        })
        .collect();
    let v2 = mounts
        .iter()
        .find(|(point, fstype, _)| *fstype == "cgroup2" && offers_cpu(Path::new(point)));
    if let Some((point, _, _)) = v2 {
        return Some(CpuController {
            version: Version::V2,
            root: PathBuf::from(point),
        });
    }
    mounts
        .iter()
        .find(|(_, fstype, options)| *fstype == "cgroup" && options.split(',').any(|o| o == "cpu"))
        .map(|(point, _, _)| CpuController {
            version: Version::V1,
            root: PathBuf::from(point),
        })
}

/// A group of ours; dropping it removes it.
#[derive(Debug)]
pub struct Cgroup {
    path: PathBuf,
    parent: PathBuf,
}

impl Cgroup {
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn write(&self, file: &str, value: &str) -> anyhow::Result<()> {
        let at = self.path.join(file);
        std::fs::write(&at, value).with_context(|| format!("writing {value:?} to {}", at.display()))
    }
}

/// Move anything still inside `group` back to `parent` (a process that
/// outlived its path), then remove the directory.
fn remove(group: &Path, parent: &Path) -> std::io::Result<()> {
    let procs = std::fs::read_to_string(group.join("cgroup.procs")).unwrap_or_default();
    for pid in procs.split_whitespace() {
        // The process may have exited meanwhile; rmdir says if it is still there.
        let _ = std::fs::write(parent.join("cgroup.procs"), pid);
    }
    // A process killed a moment ago may still be leaving the group.
    let mut last = None;
    for _ in 0..50 {
        match std::fs::remove_dir(group) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => last = Some(e),
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Err(last.expect("the loop ran"))
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        if let Err(e) = remove(&self.path, &self.parent) {
            warn!(cgroup = %self.path.display(), error = %e, "could not remove the cgroup");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::{Child, Command};

    fn sleeper() -> Child {
        Command::new("sleep").arg("30").spawn().unwrap()
    }

    #[test]
    fn v2_is_preferred_when_it_offers_cpu_and_v1_cpu_is_found_among_other_controllers() {
        let hybrid = "30 25 0:26 / /sys/fs/cgroup/cpu,cpuacct rw,nosuid shared:12 - cgroup cgroup rw,cpu,cpuacct\n\
                      31 25 0:27 / /sys/fs/cgroup/cpuset rw shared:13 - cgroup cgroup rw,cpuset\n\
                      32 25 0:28 / /sys/fs/cgroup/unified rw shared:14 - cgroup2 cgroup2 rw\n";
        let found = find_in(hybrid, |_| false).unwrap();
        assert_eq!(found.version, Version::V1);
        assert_eq!(found.root, Path::new("/sys/fs/cgroup/cpu,cpuacct"));
        let found = find_in(hybrid, |p| p == Path::new("/sys/fs/cgroup/unified")).unwrap();
        assert_eq!(found.version, Version::V2);
        assert_eq!(found.root, Path::new("/sys/fs/cgroup/unified"));
        let only_cpuset =
            "31 25 0:27 / /sys/fs/cgroup/cpuset rw shared:13 - cgroup cgroup rw,cpuset\n";
        assert!(find_in(only_cpuset, |_| true).is_none());
        assert_eq!(quota_us(500), 50_000);
        assert_eq!(quota_us(2000), 200_000);
    }

    #[test]
    fn limited_process_is_in_its_group_under_the_quota_and_a_panic_removes_the_group() {
        let cpu = CpuController::find().expect("this machine mounts the cpu controller");
        let mut child = sleeper();
        let pid = child.id();
        let seen = std::sync::Mutex::new(None);
        let result = std::panic::catch_unwind(|| {
            let group = cpu.limit("unit-test", 250, pid).unwrap();
            let procs = std::fs::read_to_string(group.path().join("cgroup.procs")).unwrap();
            assert!(
                procs.split_whitespace().any(|p| p == pid.to_string()),
                "{procs}"
            );
            let quota = match cpu.version {
                Version::V1 => std::fs::read_to_string(group.path().join("cpu.cfs_quota_us")),
                Version::V2 => std::fs::read_to_string(group.path().join("cpu.max")),
            };
            assert!(quota.unwrap().starts_with("25000"));
            *seen.lock().unwrap() = Some(group.path().to_owned());
            panic!("the run failed half-way");
        });
        assert!(result.is_err());
        let path = seen.lock().unwrap().clone().expect("the group was made");
        assert!(!path.exists(), "{} outlived the panic", path.display());
        assert!(
            child.try_wait().unwrap().is_none(),
            "the process itself lives on"
        );
        child.kill().unwrap();
        child.wait().unwrap();
    }

    #[test]
    fn groups_of_a_bench_that_died_are_removed_and_live_ones_kept() {
        let cpu = CpuController::find().expect("this machine mounts the cpu controller");
        let mut gone = Command::new("true").spawn().unwrap();
        let dead_pid = gone.id();
        gone.wait().unwrap();
        let stale = cpu.root.join(format!("{PREFIX}{dead_pid}-0-stale-test"));
        std::fs::create_dir(&stale).unwrap();
        let mut child = sleeper();
        let live = cpu.limit("live-test", 500, child.id()).unwrap();

        let removed = cpu.remove_stale();
        assert!(removed.contains(&stale), "{removed:?}");
        assert!(!stale.exists());
        assert!(live.path().exists(), "a running bench's group was removed");

        child.kill().unwrap();
        child.wait().unwrap();
        let path = live.path().to_owned();
        drop(live);
        assert!(!path.exists());
    }
}
