//! Writing segmentation policies the ways real deployments do: an atomic
//! rename, a slow non-atomic writer, and a Kubernetes ConfigMap volume
//! (`..data` symlink flipped to a new timestamped directory); and a
//! client-to-server pair of sidecars with the server's policy.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::proxy::Mesh;

/// One `SegmentationPolicy` for `target` in namespace `demo`, with `body`
/// (the `ingress:`/`egress:`/`mode:` lines, indented under `spec:`).
pub fn policy_doc(name: &str, target: &str, body: &str) -> String {
    format!(
        "apiVersion: palisade.dev/v1alpha1\n\
         kind: SegmentationPolicy\n\
         metadata: {{name: {name}, namespace: demo}}\n\
         spec:\n  targets:\n    - identity: {target}\n{body}"
    )
}

/// Replace `path` atomically: write a sibling temp file, then rename.
pub fn write_atomic(path: &Path, text: &str) {
    static N: AtomicU64 = AtomicU64::new(0);
    let tmp = path.with_extension(format!("tmp{}", N.fetch_add(1, Ordering::Relaxed)));
    std::fs::write(&tmp, text).expect("write temp policy");
    std::fs::rename(&tmp, path).expect("rename policy into place");
}

/// Start writing `text` in place and stop after `bytes`, leaving the file
/// open, as a slow or crashed writer would. Finish with `write_all` on the
/// returned handle.
pub fn write_partial(path: &Path, text: &str, bytes: usize) -> std::fs::File {
    let mut f = std::fs::File::create(path).expect("create policy");
    f.write_all(&text.as_bytes()[..bytes]).expect("write half");
    f.flush().expect("flush");
    f
}

/// A ConfigMap volume: `dir/<file> -> ..data/<file>`, `..data -> ..<ts>`.
pub struct ConfigMapDir {
    pub dir: PathBuf,
    file: String,
    generation: u32,
}

impl ConfigMapDir {
    /// Creates the volume with `text` as `file`.
    pub fn create(dir: &Path, file: &str, text: &str) -> ConfigMapDir {
        let mut cm = ConfigMapDir {
            dir: dir.to_owned(),
            file: file.to_owned(),
            generation: 0,
        };
        cm.flip(text);
        std::os::unix::fs::symlink(format!("..data/{file}"), dir.join(file))
            .expect("symlink the key to ..data");
        cm
    }

    /// The path a pod reads: `dir/<file>`.
    pub fn path(&self) -> PathBuf {
        self.dir.join(&self.file)
    }

    /// What the kubelet does on an update: write a new timestamped
    /// directory, then atomically point `..data` at it.
    pub fn flip(&mut self, text: &str) {
        self.generation += 1;
        let ts = format!(
            "..2024_01_01_00_00_{:02}.{}",
            self.generation, self.generation
        );
        let new = self.dir.join(&ts);
        std::fs::create_dir(&new).expect("timestamped dir");
        std::fs::write(new.join(&self.file), text).expect("write key");
        let tmp = self.dir.join("..data_tmp");
        let _ = std::fs::remove_file(&tmp);
        std::os::unix::fs::symlink(&ts, &tmp).expect("symlink ..data_tmp");
        std::fs::rename(&tmp, self.dir.join("..data")).expect("flip ..data");
    }
}

/// A proxy spec for `id` against `cp` (no listeners yet).
pub fn spec(cp: &crate::cp::ControlPlane, name: &str, id: &str) -> crate::proxy::ProxySpec {
    crate::proxy::ProxySpec::new(name, cp.addr(), &cp.bundle_path(), &cp.join_token(id))
}

/// Point `spec` at a policy file or directory, with extra `policy:` keys
/// (e.g. `"  debounce: 5ms\n"`).
pub fn use_policy(spec: &mut crate::proxy::ProxySpec, path: &Path, extra: &str) {
    spec.policy = Some(path.to_owned());
    if !extra.is_empty() {
        spec.extra_yaml += &format!("policy:\n{extra}");
    }
}

/// The client and server sidecars of [`Mesh`]; the server reads its policy
/// from `policy` with the extra `policy:` keys `yaml`, or with no path, has
/// `yaml` appended to its config.
pub fn start_pair(cp: crate::cp::ControlPlane, policy: Option<&Path>, yaml: &str) -> Mesh {
    Mesh::start(cp, |b| match policy {
        Some(p) => use_policy(b, p, yaml),
        None => b.extra_yaml += yaml,
    })
}

/// A policy file in its own temporary directory.
pub struct PolicyFile {
    pub path: PathBuf,
    _dir: tempfile::TempDir,
}

impl PolicyFile {
    pub fn new(text: &str) -> PolicyFile {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("policy.yaml");
        std::fs::write(&path, text).expect("write policy");
        PolicyFile { path, _dir: dir }
    }

    /// The directory holding the file (and only it).
    pub fn dir(&self) -> &Path {
        self._dir.path()
    }
}
