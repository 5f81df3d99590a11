//! Turning policy updates into a swap: keep each source's last good
//! documents, merge them (the file's copy of a `namespace/name` wins over
//! the control plane's), compile off the hot path, swap in atomically. A
//! rejected update is logged with its `file:line:col` and reason, counted,
//! recorded for /config_dump, and changes nothing.

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use palisade_policy::{compile, DefaultPolicy, Defaults, PolicyDoc};

use super::file::{self, FileRead, Shape};
use super::{ActivePolicy, LivePolicy, PolicySource};
use crate::config::SourceKind;
use crate::metrics::Metrics;

/// New documents from one source.
#[derive(Debug)]
pub enum Update {
    File(FileRead),
    ControlPlane { version: u64, docs: Vec<PolicyDoc> },
}

/// Why an update was rejected: the `reason` label of
/// `policy_reload_errors_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RejectReason {
    /// The path, or a file under it, cannot be read.
    Unreadable,
    /// A YAML, validation or compile error.
    Invalid,
    /// It would go from some policies to none.
    Emptied,
    /// The policy path turned from a file into a directory, or back.
    PathKindChanged,
}

impl RejectReason {
    pub fn as_str(self) -> &'static str {
        match self {
            RejectReason::Unreadable => "unreadable",
            RejectReason::Invalid => "invalid",
            RejectReason::Emptied => "emptied",
            RejectReason::PathKindChanged => "path_kind_changed",
        }
    }
}

/// A rejected update: why, and the errors (`file:line:col: ...` lines).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    pub reason: RejectReason,
    pub error: String,
}

impl Rejection {
    pub fn new(reason: RejectReason, error: impl Into<String>) -> Rejection {
        Rejection {
            reason,
            error: error.into(),
        }
    }
}

/// The last good documents of each source.
#[derive(Debug, Default)]
struct Inputs {
    file: Option<Vec<PolicyDoc>>,
    control_plane: Option<(u64, Vec<PolicyDoc>)>,
    /// The last accepted file read, to refuse one that empties the source.
    file_shape: Option<Shape>,
}

pub struct Reloader {
    pub live: Arc<LivePolicy>,
    metrics: Arc<Metrics>,
    default: DefaultPolicy,
    kind: SourceKind,
    path: Option<PathBuf>,
    /// Held across a compile, which also serializes reloads.
    inputs: Mutex<Inputs>,
    /// The policy replaced by the last swap, freed at the next one.
    retired: Mutex<Option<Arc<ActivePolicy>>>,
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
            retired: Mutex::default(),
        }
    }

    /// Compiles `update` (merged, with `both`, with the other source's last
    /// good documents) and swaps it in. Blocking (100k rules take a while):
    /// call it from `spawn_blocking`. Returns the new generation, or `None`
    /// when it was rejected, changed nothing, or waits for the other source.
    pub fn apply(&self, update: Update) -> Option<u64> {
        let mut inputs = self.inputs.lock().unwrap_or_else(|e| e.into_inner());
        let (origin, shape) = match &update {
            Update::File(read) => {
                if let Err(r) = file::check_shape(inputs.file_shape, read, &self.path_label()) {
                    drop(inputs);
                    self.reject("file", r);
                    return None;
                }
                ("file", Some(read.shape()))
            }
            Update::ControlPlane { .. } => ("control-plane", None),
        };
        // With one source its documents go straight to the compiler; only
        // `both` keeps copies to merge with the other source's next update.
        let (docs, source, next) = match (self.kind, update) {
            (SourceKind::File, Update::File(read)) => (read.docs, self.file_source(), None),
            (SourceKind::ControlPlane, Update::ControlPlane { version, docs }) => {
                (docs, PolicySource::ControlPlane { version }, None)
            }
            (SourceKind::Both, update) => {
                let next = match update {
                    Update::File(read) => Inputs {
                        file: Some(read.docs),
                        control_plane: inputs.control_plane.clone(),
                        file_shape: shape,
                    },
                    Update::ControlPlane { version, docs } => Inputs {
                        file: inputs.file.clone(),
                        control_plane: Some((version, docs)),
                        file_shape: inputs.file_shape,
                    },
                };
                let Some((docs, source)) = self.merge(&next) else {
                    // The swap waits for the other source's first delivery.
                    *inputs = next;
                    return None;
                };
                (docs, source, Some(next))
            }
            (kind, _) => {
                tracing::warn!(source = origin, configured = ?kind, "update from an unconfigured source ignored");
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
                self.reject(origin, Rejection::new(RejectReason::Invalid, text));
                return None;
            }
        };
        match next {
            Some(next) => *inputs = next,
            None => inputs.file_shape = shape.or(inputs.file_shape),
        }
        let active = self.live.load();
        if active.version() == compiled.version() && active.source == source {
            self.live.clear_error();
            return None;
        }
        drop(active);
        let (version, rules) = (compiled.version().to_owned(), compiled.rule_count());
        let (generation, old) = self.live.swap(compiled, source);
        self.metrics.policy.reloads.inc();
        tracing::info!(source = origin, policy.version = %version, rules, generation, "policy swapped in");
        // Freeing 100k rules takes a while: the replaced set is kept until
        // the next swap, so a connection that happened to hold the last
        // reference never frees it, and then freed off this thread.
        let mut retired = self.retired.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(previous) = retired.replace(old) {
            let free = move || drop(previous);
            if let Err(e) = std::thread::Builder::new()
                .name("policy-free".into())
                .spawn(free)
            {
                tracing::debug!(error = %e, "freeing the old policy inline");
            }
        }
        Some(generation)
    }

    fn file_source(&self) -> PolicySource {
        PolicySource::File {
            path: self.path_label(),
        }
    }

    fn path_label(&self) -> String {
        let path = self.path.as_deref().map(|p| p.display().to_string());
        path.unwrap_or_default()
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// A rejected update: the policy in force stays.
    pub fn reject(&self, origin: &'static str, rejection: Rejection) {
        let reason = rejection.reason.as_str();
        self.metrics.policy.reload_error(origin, reason);
        tracing::error!(
            source = origin,
            reason,
            error = %rejection.error,
            policy.version = %self.live.load().version(),
            "policy rejected; the last good policy stays in force"
        );
        self.live.reject(rejection);
    }

    /// `both`: the file's documents plus the control plane's whose
    /// `namespace/name` the file does not define, once both have delivered.
    fn merge(&self, i: &Inputs) -> Option<(Vec<PolicyDoc>, PolicySource)> {
        let mut docs = i.file.clone()?;
        let (version, remote) = i.control_plane.as_ref()?;
        let local: HashSet<String> = docs.iter().map(PolicyDoc::id).collect();
        docs.extend(remote.iter().filter(|d| !local.contains(&d.id())).cloned());
        let source = PolicySource::Both {
            path: self.path_label(),
            version: *version,
        };
        Some((docs, source))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use palisade_policy::parse_documents;

    fn file(docs: Vec<PolicyDoc>) -> Update {
        Update::File(FileRead {
            docs,
            kind: file::PathKind::File,
            allow_empty: false,
        })
    }

    fn doc(name: &str, rule: &str) -> Vec<PolicyDoc> {
        let yaml = format!(
            "apiVersion: palisade.dev/v1alpha1\nkind: SegmentationPolicy\n\
             metadata: {{name: {name}, namespace: demo}}\n\
             spec:\n  targets: [{{namespace: demo}}]\n  ingress: [{{name: {rule}, action: allow}}]\n"
        );
        parse_documents("test.yaml", &yaml).unwrap()
    }

    fn reloader(kind: SourceKind) -> Reloader {
        let live = Arc::new(LivePolicy::new(ActivePolicy::empty(
            DefaultPolicy::Deny,
            PolicySource::FailClosed,
        )));
        let path = Some(PathBuf::from("/p"));
        Reloader::new(live, Arc::default(), DefaultPolicy::Deny, kind, path)
    }

    fn rules(r: &Reloader) -> Vec<String> {
        let active = r.live.load();
        let docs = active.compiled.docs();
        docs.iter()
            .flat_map(|d| d.ingress.iter().flatten().map(|r| r.name.clone()))
            .collect()
    }

    #[test]
    fn both_waits_for_each_source_then_the_files_copy_of_a_name_wins() {
        let r = reloader(SourceKind::Both);
        assert_eq!(r.apply(file(doc("a", "from-file"))), None);
        assert!(
            !r.live.load().is_loaded(),
            "fail-closed until both delivered"
        );
        let mut remote = doc("a", "from-cp");
        remote.extend(doc("b", "only-cp"));
        let update = Update::ControlPlane {
            version: 7,
            docs: remote,
        };
        assert_eq!(r.apply(update), Some(1));
        assert_eq!(rules(&r), ["from-file", "only-cp"]);
        let source = &r.live.load().source;
        assert_eq!(
            *source,
            PolicySource::Both {
                path: "/p".into(),
                version: 7
            }
        );
    }

    #[test]
    fn a_duplicate_name_is_rejected_and_the_policy_in_force_stays() {
        let r = reloader(SourceKind::File);
        assert_eq!(r.apply(file(doc("a", "first"))), Some(1));
        let mut dup = doc("a", "second");
        dup.extend(doc("a", "third"));
        assert_eq!(r.apply(file(dup)), None);
        assert_eq!(rules(&r), ["first"]);
        let err = r.live.last_error().unwrap();
        assert!(err.error.contains("duplicate policy"), "{err:?}");
        assert_eq!(err.reason, RejectReason::Invalid);
        assert_eq!(
            r.metrics
                .policy
                .reload_errors
                .get_or_create(&crate::metrics::policy::ReloadErrorLabels {
                    source: "file",
                    reason: "invalid"
                })
                .get(),
            1
        );
    }

    #[test]
    fn an_identical_update_changes_nothing_and_clears_the_error() {
        let r = reloader(SourceKind::File);
        r.apply(file(doc("a", "x")));
        r.reject(
            "file",
            Rejection::new(RejectReason::Invalid, "earlier mistake"),
        );
        assert_eq!(r.apply(file(doc("a", "x"))), None);
        assert_eq!(r.live.load().generation, 1);
        assert!(r.live.last_error().is_none());
        assert_eq!(r.metrics.policy.reloads.get(), 1);
    }

    #[test]
    fn a_file_read_that_empties_the_source_is_rejected_and_the_policy_in_force_stays() {
        let r = reloader(SourceKind::File);
        assert_eq!(r.apply(file(doc("a", "kept"))), Some(1));
        assert_eq!(r.apply(file(Vec::new())), None);
        assert_eq!(rules(&r), ["kept"]);
        assert_eq!(r.live.last_error().unwrap().reason, RejectReason::Emptied);
        let marked = Update::File(FileRead {
            docs: Vec::new(),
            kind: file::PathKind::File,
            allow_empty: true,
        });
        assert_eq!(r.apply(marked), Some(2));
        assert!(rules(&r).is_empty());
        assert!(r.live.last_error().is_none());
    }
}
