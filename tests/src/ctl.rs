//! `palisadectl` run as the real binary, the way an operator or a network
//! team's CI runs it: exit code and output, with asserts that show the
//! output when they fail.

use std::process::{Command, Stdio};

use crate::bin;

/// One finished run.
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    /// Asserts the exit code, showing the output when it differs.
    pub fn exits(self, code: i32) -> Run {
        assert_eq!(
            self.code, code,
            "stdout:\n{}\nstderr:\n{}",
            self.stdout, self.stderr
        );
        self
    }

    /// Asserts that stdout contains `needle`.
    pub fn prints(&self, needle: &str) -> &Run {
        assert!(
            self.stdout.contains(needle),
            "expected {needle:?} in:\n{}",
            self.stdout
        );
        self
    }

    /// Stdout as JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| panic!("{e}: {}", self.stdout))
    }
}

/// Runs `palisadectl` with `args`, its output captured.
pub fn palisadectl(args: &[&str]) -> Run {
    palisadectl_to(args, Stdio::piped())
}

/// Runs `palisadectl` with its stdout on `stdout` (captured when piped).
/// `PALISADE_ADMIN_SOCKET` is not passed on: a run reads only what its
/// arguments name.
pub fn palisadectl_to(args: &[&str], stdout: Stdio) -> Run {
    let out = Command::new(bin("palisadectl"))
        .args(args)
        .env_remove("PALISADE_ADMIN_SOCKET")
        .stdout(stdout)
        .output()
        .expect("run palisadectl");
    Run {
        code: out.status.code().expect("palisadectl exited normally"),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}
