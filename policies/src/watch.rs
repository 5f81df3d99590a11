//! Watching a policy path for changes (feature `watch`): the one watcher the
//! proxy and the control plane use. It wakes on writes, creates, removes and
//! renames only, once per burst, so a reload's own reads never wake it again.

use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::time::Duration;

use notify::event::{AccessKind, AccessMode};
use notify::{Event, EventKind, RecommendedWatcher, RecursiveMode, Watcher};

use crate::fs::ALLOW_EMPTY_MARKER;

/// A running watch; dropping it stops the watch and its thread.
pub struct PathWatch {
    _watcher: RecommendedWatcher,
}

#[derive(Debug, thiserror::Error)]
#[error("cannot watch {}: {source}", dir.display())]
pub struct WatchError {
    pub dir: PathBuf,
    #[source]
    pub source: notify::Error,
}

/// Watches `path` and calls `on_change` on a thread named `thread` once the
/// path has been quiet for `debounce` after a change. A file is watched
/// through its parent directory, so an editor's rename and a Kubernetes
/// ConfigMap's `..data` symlink flip are both seen; a directory is watched
/// itself. The caller decides whether the content really changed.
pub fn watch(
    path: &Path,
    debounce: Duration,
    thread: &str,
    mut on_change: impl FnMut() + Send + 'static,
) -> Result<PathWatch, WatchError> {
    let (dir, only) = watched(path);
    let err = |source| WatchError {
        dir: dir.clone(),
        source,
    };
    let (tx, rx) = mpsc::channel::<()>();
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<Event>| {
        let wake = match event {
            Ok(e) => changes(&e.kind) && only.as_ref().is_none_or(|f| relevant(&e, f)),
            // Overflowed queues and the like: reading again is always safe.
            Err(_) => true,
        };
        if wake {
            let _ = tx.send(());
        }
    })
    .map_err(err)?;
    watcher
        .watch(&dir, RecursiveMode::NonRecursive)
        .map_err(err)?;
    std::thread::Builder::new()
        .name(thread.to_owned())
        .spawn(move || {
            // Both loops end when the watcher, and so the sender, is dropped.
            while rx.recv().is_ok() {
                // Let a burst (write, chmod, rename, symlink flip) settle:
                // every event in it is absorbed by the one call that follows.
                loop {
                    match rx.recv_timeout(debounce) {
                        Ok(()) => continue,
                        Err(RecvTimeoutError::Timeout) => break,
                        Err(RecvTimeoutError::Disconnected) => return,
                    }
                }
                on_change();
            }
        })
        .map_err(|e| err(notify::Error::io(e)))?;
    Ok(PathWatch { _watcher: watcher })
}

/// Whether an event can change what a read returns. Opening, reading and
/// closing after a read cannot, and a reload does exactly that: counting them
/// would make every read wake the next one. A metadata change is counted, as
/// a `chmod` can make an unreadable file readable.
fn changes(kind: &EventKind) -> bool {
    match kind {
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
        EventKind::Access(_) => false,
        EventKind::Create(_) | EventKind::Modify(_) | EventKind::Remove(_) => true,
        EventKind::Any | EventKind::Other => true,
    }
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

/// An event about the file itself, the allow-empty marker next to it, or a
/// ConfigMap's `..data`/`..<timestamp>` entries; siblings in a shared
/// directory are ignored.
fn relevant(e: &Event, file: &Path) -> bool {
    e.paths.iter().any(|p| match p.file_name() {
        Some(name) => {
            name == file.as_os_str()
                || name == ALLOW_EMPTY_MARKER
                || name.to_string_lossy().starts_with("..")
        }
        None => true,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    #[test]
    fn a_file_is_watched_through_its_directory_and_siblings_are_ignored() {
        let (dir, only) = watched(Path::new("/etc/palisade/policy.yaml"));
        assert_eq!(dir, Path::new("/etc/palisade"));
        let only = only.unwrap();
        let event = |p: &str| Event::default().add_path(PathBuf::from(p));
        assert!(relevant(&event("/etc/palisade/policy.yaml"), &only));
        assert!(relevant(&event("/etc/palisade/..data"), &only));
        assert!(relevant(&event("/etc/palisade/..2024_05_01"), &only));
        assert!(relevant(
            &event("/etc/palisade/.palisade-allow-empty"),
            &only
        ));
        assert!(!relevant(&event("/etc/palisade/other.conf"), &only));
    }

    #[test]
    fn reading_the_policy_is_not_a_change_but_writing_it_is() {
        use notify::event::{CreateKind, ModifyKind, RemoveKind, RenameMode};
        let open = EventKind::Access(AccessKind::Open(AccessMode::Any));
        let read = EventKind::Access(AccessKind::Read);
        let read_close = EventKind::Access(AccessKind::Close(AccessMode::Read));
        assert!(!changes(&open) && !changes(&read) && !changes(&read_close));
        let write_close = EventKind::Access(AccessKind::Close(AccessMode::Write));
        assert!(changes(&write_close));
        assert!(changes(&EventKind::Modify(ModifyKind::Any)));
        assert!(changes(&EventKind::Modify(ModifyKind::Name(
            RenameMode::To
        ))));
        assert!(changes(&EventKind::Create(CreateKind::File)));
        assert!(changes(&EventKind::Remove(RemoveKind::File)));
    }

    /// Watches `path`, counting calls and signalling each one.
    fn counted(path: &Path) -> (PathWatch, Arc<AtomicUsize>, mpsc::Receiver<()>) {
        let calls = Arc::new(AtomicUsize::new(0));
        let (tx, rx) = mpsc::channel();
        let c = calls.clone();
        let w = watch(path, Duration::from_millis(100), "test-watch", move || {
            c.fetch_add(1, Ordering::SeqCst);
            let _ = tx.send(());
        })
        .unwrap();
        (w, calls, rx)
    }

    /// Ten debounce periods: a watch woken by a read would have called by then.
    const QUIET: Duration = Duration::from_secs(1);

    #[test]
    fn a_read_of_the_directory_is_no_change_and_a_burst_of_writes_is_one() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("shop.yaml");
        std::fs::write(&file, "a: 1\n").unwrap();
        let (_w, calls, rx) = counted(dir.path());

        for entry in std::fs::read_dir(dir.path()).unwrap() {
            std::fs::read_to_string(entry.unwrap().path()).unwrap();
        }
        assert!(rx.recv_timeout(QUIET).is_err(), "a read woke the watch");

        for n in 0..5 {
            std::fs::write(&file, format!("a: {n}\n")).unwrap();
        }
        rx.recv_timeout(Duration::from_secs(10))
            .expect("a write wakes the watch");
        assert!(rx.recv_timeout(QUIET).is_err(), "one call per burst");
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn a_watched_file_wakes_on_a_rename_over_it_and_not_on_a_sibling() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("policy.yaml");
        std::fs::write(&file, "a: 1\n").unwrap();
        let (_w, calls, rx) = counted(&file);

        std::fs::write(dir.path().join("other.conf"), "x").unwrap();
        std::fs::read_to_string(&file).unwrap();
        assert!(rx.recv_timeout(QUIET).is_err(), "a sibling woke the watch");

        let tmp = dir.path().join("policy.yaml.tmp");
        std::fs::write(&tmp, "a: 2\n").unwrap();
        std::fs::rename(&tmp, &file).unwrap();
        rx.recv_timeout(Duration::from_secs(10))
            .expect("a rename over the file wakes the watch");
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }
}
