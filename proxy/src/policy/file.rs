//! The file source: load `policy.path` at start, then reload it after each
//! burst of changes (`palisade_policy::watch`). A read that would empty the
//! source, or turn the path from a file into a directory (or back), is
//! refused unless `.palisade-allow-empty` says it is deliberate.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use palisade_policy::fs::{empty_allowed, read_files, PolicyFile, ALLOW_EMPTY_MARKER};
use palisade_policy::watch::{PathWatch, WatchError};
use palisade_policy::{parse_documents, PolicyDoc};

use super::reload::{RejectReason, Rejection, Reloader, Update};

/// Whether the policy path is a file or a directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathKind {
    File,
    Directory,
}

/// One read of the policy path.
#[derive(Debug)]
pub struct FileRead {
    pub docs: Vec<PolicyDoc>,
    pub kind: PathKind,
    /// `.palisade-allow-empty` is present: emptying the source is deliberate.
    pub allow_empty: bool,
}

/// What a read found, kept for the last accepted one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shape {
    pub kind: PathKind,
    pub docs: usize,
}

impl FileRead {
    pub fn shape(&self) -> Shape {
        Shape {
            kind: self.kind,
            docs: self.docs.len(),
        }
    }
}

/// Reads `path` and applies it. Blocking.
pub fn load_now(reloader: &Reloader, path: &Path) {
    reloader.metrics().policy.file_reads.inc();
    match read(path) {
        Ok(read) => {
            reloader.apply(Update::File(read));
        }
        Err(e) => reloader.reject("file", e),
    }
}

/// Reads `path`: its kind, its documents and whether emptying it is allowed.
pub fn read(path: &Path) -> Result<FileRead, Rejection> {
    let kind = match std::fs::metadata(path) {
        Ok(m) if m.is_dir() => PathKind::Directory,
        Ok(_) => PathKind::File,
        Err(e) => {
            return Err(Rejection::new(
                RejectReason::Unreadable,
                format!("cannot read {}: {e}", path.display()),
            ))
        }
    };
    Ok(FileRead {
        docs: read_path(path)?,
        kind,
        allow_empty: empty_allowed(path),
    })
}

/// Refuses a read that empties the source or changes the path's kind,
/// compared with the last accepted one, unless the marker allows it. Before
/// any accepted read there is nothing to drop: an empty source at start
/// leaves `policy.default` in force, as a proxy without `policy.path` has.
pub fn check_shape(last: Option<Shape>, read: &FileRead, path: &str) -> Result<(), Rejection> {
    let Some(last) = last else {
        if read.docs.is_empty() {
            tracing::warn!(path, "the policy path holds no policy document; policy.default applies to every workload");
        }
        return Ok(());
    };
    let kind_changed = last.kind != read.kind;
    let emptied = last.docs > 0 && read.docs.is_empty();
    if !kind_changed && !emptied {
        return Ok(());
    }
    let what = match (kind_changed, read.kind) {
        (true, PathKind::Directory) => format!("{path} was a file and is now a directory"),
        (true, PathKind::File) => format!("{path} was a directory and is now a file"),
        (false, _) => format!("{path} no longer holds any policy"),
    };
    let count = match read.docs.len() {
        0 => "no policy document".to_owned(),
        n => format!("{n} policy document(s)"),
    };
    if read.allow_empty {
        tracing::warn!(
            path,
            marker = ALLOW_EMPTY_MARKER,
            "{what} ({count}); accepted because the marker is present"
        );
        return Ok(());
    }
    let (reason, why) = if kind_changed {
        let why = "a path that changes kind is most often a volume mounted wrong";
        (RejectReason::PathKindChanged, why)
    } else {
        let why = "policy.default would then decide everything";
        (RejectReason::Emptied, why)
    };
    Err(Rejection::new(
        reason,
        format!(
            "{what} ({count}): refused, as {why}; to accept it, create {ALLOW_EMPTY_MARKER} in the policy directory or next to the policy file"
        ),
    ))
}

/// Reads every policy file under `path` (a file, or a directory's
/// `*.yaml`/`*.yml`, following ConfigMap symlinks), parsing files on a few
/// threads: parsing dominates a large reload. Unlike the CLI, a file with no
/// document is an error: it is most likely caught mid-write, and reading it
/// as "no policies" would open everything to the default.
pub fn read_path(path: &Path) -> Result<Vec<PolicyDoc>, Rejection> {
    let unreadable = |e: String| Rejection::new(RejectReason::Unreadable, e);
    let files = read_files(&[path]).map_err(|e| unreadable(e.to_string()))?;
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .clamp(1, 4)
        .min(files.len().max(1));
    let parsed: Vec<Result<Vec<PolicyDoc>, Vec<String>>> = if threads == 1 {
        files.iter().map(parse_file).collect()
    } else {
        let chunk = files.len().div_ceil(threads);
        std::thread::scope(|s| {
            let parts: Vec<_> = files
                .chunks(chunk)
                .map(|part| s.spawn(move || part.iter().map(parse_file).collect::<Vec<_>>()))
                .collect();
            parts
                .into_iter()
                .flat_map(|p| p.join().expect("policy parser thread panicked"))
                .collect()
        })
    };
    let mut docs = Vec::new();
    let mut errors = Vec::new();
    for r in parsed {
        match r {
            Ok(d) => docs.extend(d),
            Err(e) => errors.extend(e),
        }
    }
    if errors.is_empty() {
        Ok(docs)
    } else {
        Err(Rejection::new(RejectReason::Invalid, errors.join("\n")))
    }
}

fn parse_file(file: &PolicyFile) -> Result<Vec<PolicyDoc>, Vec<String>> {
    let name = &file.name;
    match parse_documents(name, &file.text) {
        Ok(d) if d.is_empty() => Err(vec![format!(
            "{name}:1:1: error: no policy document (empty, or caught mid-write?); delete the file to remove its policies"
        )]),
        Ok(d) => Ok(d),
        Err(diags) => Err(diags.iter().map(ToString::to_string).collect()),
    }
}

/// Starts watching; the returned watch must be kept alive. Each burst of
/// changes is read once, after `debounce` of quiet, until `stop`.
pub fn watch(
    reloader: Arc<Reloader>,
    path: PathBuf,
    debounce: Duration,
    stop: CancellationToken,
) -> Result<PathWatch, WatchError> {
    let p = path.clone();
    let w = palisade_policy::watch::watch(&path, debounce, "policy-watch", move || {
        if !stop.is_cancelled() {
            load_now(&reloader, &p);
        }
    })?;
    tracing::info!(path = %path.display(), "watching the policy");
    Ok(w)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read_of(kind: PathKind, docs: usize, allow_empty: bool) -> FileRead {
        let doc = palisade_policy::parse_documents(
            "p.yaml",
            "apiVersion: palisade.dev/v1alpha1\nkind: SegmentationPolicy\n\
             metadata: {name: a, namespace: demo}\nspec:\n  targets: [{namespace: demo}]\n",
        )
        .unwrap();
        FileRead {
            docs: doc.into_iter().cycle().take(docs).collect(),
            kind,
            allow_empty,
        }
    }

    #[test]
    fn an_emptied_source_or_a_kind_change_is_refused_unless_the_marker_allows_it() {
        use PathKind::{Directory as Dir, File};
        use RejectReason::{Emptied, PathKindChanged};
        let was = |kind, docs| Some(Shape { kind, docs });
        // (last accepted read, this read's kind, documents, marker, verdict)
        let cases = [
            (None, Dir, 0, false, Ok(())),
            (was(Dir, 0), Dir, 0, false, Ok(())),
            (was(Dir, 2), Dir, 1, false, Ok(())),
            (was(Dir, 1), Dir, 0, false, Err(Emptied)),
            (was(File, 1), Dir, 0, false, Err(PathKindChanged)),
            (was(Dir, 1), File, 1, false, Err(PathKindChanged)),
            (was(Dir, 1), Dir, 0, true, Ok(())),
            (was(File, 1), Dir, 0, true, Ok(())),
        ];
        for (last, kind, docs, marker, verdict) in cases {
            let read = read_of(kind, docs, marker);
            let got = check_shape(last, &read, "/p").map_err(|r| r.reason);
            assert_eq!(
                got, verdict,
                "{last:?}, then {kind:?} with {docs} document(s), marker {marker}"
            );
        }
    }
}
