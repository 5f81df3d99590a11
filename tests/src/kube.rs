//! Independent Kubernetes tools for the tests: `tests/kubernetes/k8s_tools.py`
//! runs kubernetes-validate (the official schemas), jsonschema, jsonpatch
//! and checkov (all from PyPI, installed by `.ci/run`).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// The repository's root.
pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ is in the repository")
        .to_owned()
}

/// What a tool run printed, and whether every check passed.
#[derive(Debug)]
pub struct ToolRun {
    pub passed: bool,
    pub stdout: String,
}

impl ToolRun {
    /// Panics with the output unless every check passed.
    pub fn passes(self) -> String {
        assert!(self.passed, "{}", self.stdout);
        self.stdout
    }
}

/// Runs `k8s_tools.py args…` with `stdin`.
pub fn tools(args: &[&str], stdin: &str) -> ToolRun {
    let script = repo().join("tests/kubernetes/k8s_tools.py");
    let mut child = Command::new("python3")
        .arg(&script)
        .args(args)
        .current_dir(repo())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3 runs");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !stderr.contains("ModuleNotFoundError"),
        "{stderr}\ninstall the tools: pip install kubernetes-validate checkov jsonpatch jsonschema"
    );
    ToolRun {
        passed: out.status.success(),
        stdout: format!("{}{stderr}", String::from_utf8_lossy(&out.stdout)),
    }
}

/// Validates `docs` (written as one multi-document file) for Kubernetes
/// 1.29 and the newest version kubernetes-validate knows.
pub fn validate_objects(docs: &[serde_json::Value]) -> ToolRun {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("objects.yaml");
    let text: Vec<String> = docs.iter().map(|d| d.to_string()).collect();
    std::fs::write(&file, text.join("\n---\n")).unwrap();
    tools(&["validate", file.to_str().unwrap()], "")
}
