//! The file source: load `policy.path` at start, then watch it with notify
//! and reload after a quiet period. A file is watched through its parent
//! directory, so an editor's rename and a Kubernetes ConfigMap's `..data`
//! symlink flip are both seen; a directory is watched itself.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use notify::event::{AccessKind, AccessMode};
use notify::{Event, EventKind, RecommendedWatcher, RecursiveMode, Watcher};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use palisade_policy::{parse_documents, PolicyDoc};

use super::reload::{Reloader, Update};

/// Reads `path` and applies it. Blocking.
pub fn load_now(reloader: &Reloader, path: &Path) {
    match read_path(path) {
        Ok(docs) => {
            reloader.apply(Update::File(docs));
        }
        Err(e) => reloader.reject("file", e),
    }
}

/// Reads every policy file under `path` (a file, or a directory's
/// `*.yaml`/`*.yml`, following ConfigMap symlinks), parsing files on a few
/// threads: parsing dominates a large reload. Unlike the CLI, a file with no
/// document is an error: it is most likely caught mid-write, and reading it
/// as "no policies" would open everything to the default.
pub fn read_path(path: &Path) -> Result<Vec<PolicyDoc>, String> {
    let files = palisade_policy::fs::policy_files(path).map_err(|e| e.to_string())?;
    let mut texts = Vec::with_capacity(files.len());
    for file in files {
        let text = std::fs::read_to_string(&file)
            .map_err(|e| format!("cannot read {}: {e}", file.display()))?;
        texts.push((file.display().to_string(), text));
    }
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .clamp(1, 4)
        .min(texts.len().max(1));
    let parsed: Vec<Result<Vec<PolicyDoc>, Vec<String>>> = if threads == 1 {
        texts.iter().map(parse_file).collect()
    } else {
        let chunk = texts.len().div_ceil(threads);
        std::thread::scope(|s| {
            let parts: Vec<_> = texts
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
        Err(errors.join("\n"))
    }
}

fn parse_file((name, text): &(String, String)) -> Result<Vec<PolicyDoc>, Vec<String>> {
    match parse_documents(name, text) {
        Ok(d) if d.is_empty() => Err(vec![format!(
            "{name}:1:1: error: no policy document (empty, or caught mid-write?); delete the file to remove its policies"
        )]),
        Ok(d) => Ok(d),
        Err(diags) => Err(diags.iter().map(ToString::to_string).collect()),
    }
}

/// Starts watching; the returned watcher must be kept alive. Reloads run on
/// the blocking pool, one at a time, until `stop`.
pub fn watch(
    reloader: Arc<Reloader>,
    path: PathBuf,
    debounce: Duration,
    stop: CancellationToken,
) -> notify::Result<RecommendedWatcher> {
    let (dir, only) = watched(&path);
    let wake = Arc::new(Notify::new());
    // Set by every event, cleared by the reload that covers it: the events
    // of one burst make one reload, not one now and one after it.
    let dirty = Arc::new(AtomicBool::new(false));
    let mut watcher = notify::recommended_watcher({
        let (wake, dirty) = (wake.clone(), dirty.clone());
        move |event: notify::Result<Event>| {
            // Overflowed queues and the like: reloading is always safe.
            if event.is_err() || event.is_ok_and(|e| wakes(&e, only.as_deref())) {
                dirty.store(true, Ordering::SeqCst);
                wake.notify_one();
            }
        }
    })?;
    watcher.watch(&dir, RecursiveMode::NonRecursive)?;
    tracing::info!(path = %path.display(), watching = %dir.display(), "watching the policy");
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = wake.notified() => {}
            }
            // Let a burst of events (write, chmod, rename, symlink flip) settle.
            tokio::time::sleep(debounce).await;
            if !dirty.swap(false, Ordering::SeqCst) {
                continue;
            }
            let (r, p) = (reloader.clone(), path.clone());
            if let Err(e) = tokio::task::spawn_blocking(move || load_now(&r, &p)).await {
                tracing::error!(error = %e, "policy reload task failed");
            }
        }
    });
    Ok(watcher)
}

/// The directory to watch, and for a file, its name to filter events by.
fn watched(path: &Path) -> (PathBuf, Option<PathBuf>) {
    if path.is_dir() {
        return (path.to_owned(), None);
    }
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
        _ => PathBuf::from("."),
    };
    (parent, path.file_name().map(PathBuf::from))
}

/// Whether `e` may have changed the policy. Opening and reading the file
/// (as every reload does) must not wake another reload, or the proxy
/// re-parses its policy forever; a writer closing it still does.
fn wakes(e: &Event, only: Option<&Path>) -> bool {
    let read_only = match e.kind {
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => false,
        EventKind::Access(_) => true,
        _ => false,
    };
    !read_only && only.is_none_or(|f| relevant(e, f))
}

/// An event about the file itself or a ConfigMap's `..data`/`..<timestamp>`
/// entries; siblings in a shared directory are ignored.
fn relevant(e: &Event, file: &Path) -> bool {
    e.paths.iter().any(|p| match p.file_name() {
        Some(name) => name == file.as_os_str() || name.to_string_lossy().starts_with(".."),
        None => true,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_is_watched_through_its_directory_and_siblings_are_ignored() {
        let (dir, only) = watched(Path::new("/etc/palisade/policy.yaml"));
        assert_eq!(dir, Path::new("/etc/palisade"));
        let only = only.unwrap();
        let event = |p: &str| Event::default().add_path(PathBuf::from(p));
        assert!(relevant(&event("/etc/palisade/policy.yaml"), &only));
        assert!(relevant(&event("/etc/palisade/..data"), &only));
        assert!(relevant(&event("/etc/palisade/..2024_05_01"), &only));
        assert!(!relevant(&event("/etc/palisade/other.conf"), &only));
    }

    #[test]
    fn reading_the_policy_does_not_wake_a_reload() {
        use notify::event::ModifyKind;
        let file = Path::new("policy.yaml");
        let at = |kind| Event::new(kind).add_path(PathBuf::from("/etc/palisade/policy.yaml"));
        let open = at(EventKind::Access(AccessKind::Open(AccessMode::Any)));
        let read = at(EventKind::Access(AccessKind::Close(AccessMode::Read)));
        assert!(!wakes(&open, Some(file)) && !wakes(&read, Some(file)));
        assert!(!wakes(&open, None));
        assert!(wakes(&at(EventKind::Modify(ModifyKind::Any)), Some(file)));
        let written = at(EventKind::Access(AccessKind::Close(AccessMode::Write)));
        assert!(wakes(&written, Some(file)));
    }
}
