//! Turning policy updates into a swap: keep each source's last good
//! documents, merge them (the file's copy of a `namespace/name` wins over
//! the control plane's), compile off the hot path, swap in atomically. A
//! rejected update is logged with its `file:line:col`, counted, recorded for
//! /config_dump, and changes nothing.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use palisade_policy::{compile, parse_documents, DefaultPolicy, Defaults, PolicyDoc};

use super::{LivePolicy, PolicySource};
use crate::config::SourceKind;
use crate::metrics::Metrics;

/// New documents from one source.
#[derive(Debug)]
pub enum Update {
    File(Vec<PolicyDoc>),
    ControlPlane { version: u64, docs: Vec<PolicyDoc> },
}

/// The last good documents of each source.
#[derive(Debug, Default)]
struct Inputs {
    file: Option<Vec<PolicyDoc>>,
    control_plane: Option<(u64, Vec<PolicyDoc>)>,
}

pub struct Reloader {
    pub live: Arc<LivePolicy>,
    metrics: Arc<Metrics>,
    default: DefaultPolicy,
    kind: SourceKind,
    path: Option<PathBuf>,
    /// Held across a compile, which also serializes reloads.
    inputs: Mutex<Inputs>,
}

impl Reloader {
    pub fn new(
        live: Arc<LivePolicy>,
        metrics: Arc<Metrics>,
        default: DefaultPolicy,
        kind: SourceKind,
        path: Option<PathBuf>,
    ) -> Reloader {
        Reloader {
            live,
            metrics,
            default,
            kind,
            path,
            inputs: Mutex::default(),
        }
    }

    /// Merges `update` with the other source's last good documents,
    /// compiles and swaps. Blocking (compiling 100k rules takes a while):
    /// call it from `spawn_blocking`. Returns the new generation, or `None`
    /// when nothing changed or a source has not delivered yet.
    pub fn apply(&self, update: Update) -> Option<u64> {
        let mut inputs = self.inputs.lock().unwrap_or_else(|e| e.into_inner());
        let mut next = Inputs {
            file: inputs.file.clone(),
            control_plane: inputs.control_plane.clone(),
        };
        let origin = match update {
            Update::File(docs) => {
                next.file = Some(docs);
                "file"
            }
            Update::ControlPlane { version, docs } => {
                next.control_plane = Some((version, docs));
                "control-plane"
            }
        };
        let (docs, source) = match self.merge(&next) {
            Some(x) => x,
            None => {
                // Remember it; the swap waits for the other source.
                *inputs = next;
                return None;
            }
        };
        let compiled = match compile(docs, Defaults::new(self.default)) {
            Ok((compiled, warnings)) => {
                for w in &warnings {
                    tracing::warn!(source = origin, warning = %w, "policy warning");
                }
                compiled
            }
            Err(errors) => {
                let text = errors
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join("\n");
                drop(inputs);
                self.reject(origin, text);
                return None;
            }
        };
        *inputs = next;
        let active = self.live.load();
        if active.version() == compiled.version() && active.source == source {
            self.live.clear_error();
            return None;
        }
        drop(active);
        let (version, rules) = (compiled.version().to_owned(), compiled.rule_count());
        let generation = self.live.swap(compiled, source);
        self.metrics.authz.reloads.inc();
        tracing::info!(source = origin, policy.version = %version, rules, generation, "policy swapped in");
        Some(generation)
    }

    /// A rejected update: the policy in force stays.
    pub fn reject(&self, origin: &'static str, error: String) {
        self.metrics.authz.reload_errors.inc();
        tracing::error!(
            source = origin,
            error = %error,
            policy.version = %self.live.load().version(),
            "policy rejected; the last good policy stays in force"
        );
        self.live.reject(error);
    }

    /// The documents to compile and where they came from, once every
    /// configured source has delivered.
    fn merge(&self, i: &Inputs) -> Option<(Vec<PolicyDoc>, PolicySource)> {
        let path = || {
            self.path
                .as_deref()
                .map(|p| p.display().to_string())
                .unwrap_or_default()
        };
        match self.kind {
            SourceKind::File => Some((i.file.clone()?, PolicySource::File { path: path() })),
            SourceKind::ControlPlane => {
                let (version, docs) = i.control_plane.clone()?;
                Some((docs, PolicySource::ControlPlane { version }))
            }
            SourceKind::Both => {
                let mut docs = i.file.clone()?;
                let (version, remote) = i.control_plane.as_ref()?;
                let local: HashSet<String> = docs.iter().map(PolicyDoc::id).collect();
                docs.extend(remote.iter().filter(|d| !local.contains(&d.id())).cloned());
                let source = PolicySource::Both {
                    path: path(),
                    version: *version,
                };
                Some((docs, source))
            }
        }
    }
}

/// Reads every policy file under `path` (a file, or a directory's
/// `*.yaml`/`*.yml`, following ConfigMap symlinks). Unlike the CLI, a file
/// with no document is an error: it is most likely caught mid-write, and
/// reading it as "no policies" would open everything to the default.
pub fn read_path(path: &Path) -> Result<Vec<PolicyDoc>, String> {
    let files = palisade_policy::fs::policy_files(path).map_err(|e| e.to_string())?;
    let mut docs = Vec::new();
    let mut errors = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(&file)
            .map_err(|e| format!("cannot read {}: {e}", file.display()))?;
        let name = file.display().to_string();
        match parse_documents(&name, &text) {
            Ok(d) if d.is_empty() => errors.push(format!(
                "{name}:1:1: error: no policy document (empty, or caught mid-write?); delete the file to remove its policies"
            )),
            Ok(d) => docs.extend(d),
            Err(diags) => errors.extend(diags.iter().map(ToString::to_string)),
        }
    }
    if errors.is_empty() {
        Ok(docs)
    } else {
        Err(errors.join("\n"))
    }
}
