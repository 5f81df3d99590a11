//! One child process of a local run: started with its output in a log file,
//! watched for early exit while it gets ready, and killed when dropped so a
//! failed run leaves nothing behind.

use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

/// A running child process, killed (SIGKILL) when dropped.
pub struct Process {
    /// The OS process, for signals and stdio.
    pub child: Child,
    name: String,
    log: Option<PathBuf>,
}

impl Process {
    /// Start `cmd` with stdout and stderr appended to `log`.
    pub fn spawn_logged(name: &str, cmd: &mut Command, log: &Path) -> anyhow::Result<Process> {
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .with_context(|| format!("opening {}", log.display()))?;
        cmd.stdout(out.try_clone()?).stderr(out);
        let mut process = Process::spawn(name, cmd)?;
        process.log = Some(log.to_owned());
        Ok(process)
    }

    /// Start `cmd` with whatever stdout and stderr the caller set; stdin is closed.
    pub fn spawn(name: &str, cmd: &mut Command) -> anyhow::Result<Process> {
        let child = cmd
            .stdin(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {name} ({:?})", cmd.get_program()))?;
        Ok(Process {
            child,
            name: name.to_owned(),
            log: None,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Everything the process logged so far (empty without a log file).
    pub fn log(&self) -> String {
        self.log
            .as_ref()
            .and_then(|p| std::fs::read_to_string(p).ok())
            .unwrap_or_default()
    }

    /// The last lines of the log, for error messages.
    pub fn log_tail(&self) -> String {
        let text = self.log();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    /// Fails with the tail of the log if the process has exited.
    pub fn ensure_running(&mut self) -> anyhow::Result<()> {
        if let Some(status) = self.child.try_wait()? {
            bail!(
                "{} exited ({status}); last lines of its log:\n{}",
                self.name,
                self.log_tail()
            );
        }
        Ok(())
    }

    /// Poll `ready` until it returns `Some`; fails if the process exits first
    /// or `timeout` passes, with the log's tail.
    pub fn wait_until<T>(
        &mut self,
        what: &str,
        timeout: Duration,
        mut ready: impl FnMut() -> Option<T>,
    ) -> anyhow::Result<T> {
        let deadline = Instant::now() + timeout;
        loop {
            self.ensure_running()?;
            if let Some(v) = ready() {
                return Ok(v);
            }
            if Instant::now() >= deadline {
                bail!(
                    "{}: {what} not seen after {timeout:?}; last lines of its log:\n{}",
                    self.name,
                    self.log_tail()
                );
            }
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    /// Wait until the process accepts TCP connections on every address.
    pub fn wait_listening(
        &mut self,
        addrs: &[SocketAddr],
        timeout: Duration,
    ) -> anyhow::Result<()> {
        for addr in addrs {
            self.wait_until(&format!("a listener on {addr}"), timeout, || {
                TcpStream::connect_timeout(addr, Duration::from_millis(200)).ok()
            })?;
        }
        Ok(())
    }

    /// SIGTERM, then wait up to `timeout` for the exit; `None` if it is still running.
    pub fn terminate(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
