//! The file source: load `policy.path` at start, then watch it with notify
//! and reload after a quiet period. A file is watched through its parent
//! directory, so an editor's rename and a Kubernetes ConfigMap's `..data`
//! symlink flip are both seen; a directory is watched itself.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use notify::{Event, RecommendedWatcher, RecursiveMode, Watcher};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::reload::{read_path, Reloader, Update};

/// Reads `path` and applies it. Blocking.
pub fn load_now(reloader: &Reloader, path: &Path) {
    match read_path(path) {
        Ok(docs) => {
            reloader.apply(Update::File(docs));
        }
        Err(e) => reloader.reject("file", e),
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
    let mut watcher = notify::recommended_watcher({
        let wake = wake.clone();
        move |event: notify::Result<Event>| match event {
            Ok(e) if only.as_ref().is_none_or(|f| relevant(&e, f)) => wake.notify_one(),
            Ok(_) => {}
            // Overflowed queues and the like: reloading is always safe.
            Err(_) => wake.notify_one(),
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
}
