//! Reading policy files from disk (feature `fs`): one file, a multi-document
//! file, or a directory of `*.yaml`/`*.yml`. Shared by the CLI, the proxy and
//! the control plane so all see exactly the same files, and agree on when
//! an empty source is deliberate.

use std::path::{Path, PathBuf};

use crate::diag::Diagnostic;
use crate::model::PolicyDoc;
use crate::parse::parse_documents;

/// The marker file that makes removing every policy deliberate: a running
/// proxy or control plane otherwise refuses a reload that empties its policy
/// source, because the default would then apply to everything.
pub const ALLOW_EMPTY_MARKER: &str = ".palisade-allow-empty";

/// Whether an empty policy source at `path` is deliberate: the marker sits in
/// the directory `path`, or next to `path` (in the directory holding it).
pub fn empty_allowed(path: &Path) -> bool {
    let next_to = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    path.join(ALLOW_EMPTY_MARKER).is_file() || next_to.join(ALLOW_EMPTY_MARKER).is_file()
}

/// The documents read from a path, and which files they came from.
#[derive(Debug)]
pub struct Loaded {
    pub docs: Vec<PolicyDoc>,
    pub files: Vec<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("cannot read {}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}", render(.0))]
    Invalid(Vec<Diagnostic>),
}

fn render(diags: &[Diagnostic]) -> String {
    diags
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("\n")
}

/// One policy file as read from disk, named as diagnostics name it.
#[derive(Debug, Clone)]
pub struct PolicyFile {
    pub path: PathBuf,
    /// `path` as text: the `file` in `file:line:col`.
    pub name: String,
    pub text: String,
}

/// Reads every policy file under `paths`, in order: the one reader the CLI,
/// the proxy and the control plane use. A directory is read
/// non-recursively, in name order; hidden entries (such as a Kubernetes
/// ConfigMap's `..data`) are skipped, symlinks are followed.
pub fn read_files<P: AsRef<Path>>(paths: &[P]) -> Result<Vec<PolicyFile>, LoadError> {
    let mut out = Vec::new();
    for p in paths {
        for path in policy_files(p.as_ref())? {
            let text = std::fs::read_to_string(&path).map_err(|source| LoadError::Io {
                path: path.clone(),
                source,
            })?;
            let name = path.display().to_string();
            out.push(PolicyFile { path, name, text });
        }
    }
    Ok(out)
}

/// Reads and validates every policy document under `paths`, merged. All
/// files are validated before reporting, so one run shows every mistake.
pub fn load_paths<P: AsRef<Path>>(paths: &[P]) -> Result<Loaded, LoadError> {
    let mut files = Vec::new();
    let mut docs = Vec::new();
    let mut errors = Vec::new();
    for file in read_files(paths)? {
        match parse_documents(&file.name, &file.text) {
            Ok(d) => docs.extend(d),
            Err(e) => errors.extend(e),
        }
        files.push(file.path);
    }
    if errors.is_empty() {
        Ok(Loaded { docs, files })
    } else {
        Err(LoadError::Invalid(errors))
    }
}

/// The policy files a path names: itself, or a directory's YAML files.
fn policy_files(path: &Path) -> Result<Vec<PathBuf>, LoadError> {
    let io = |source| LoadError::Io {
        path: path.to_owned(),
        source,
    };
    let meta = std::fs::metadata(path).map_err(io)?;
    if !meta.is_dir() {
        return Ok(vec![path.to_owned()]);
    }
    let mut files = Vec::new();
    for entry in std::fs::read_dir(path).map_err(io)? {
        let entry = entry.map_err(io)?;
        let p = entry.path();
        let name = entry.file_name();
        let name = name.to_string_lossy();
        let yaml = name.ends_with(".yaml") || name.ends_with(".yml");
        if name.starts_with('.') || !yaml {
            continue;
        }
        // Follows symlinks, as ConfigMap mounts are symlinks into `..data`.
        if std::fs::metadata(&p).map(|m| m.is_file()).unwrap_or(false) {
            files.push(p);
        }
    }
    files.sort();
    Ok(files)
}
