//! A file an operator edits while the node runs (the users file, the apps file),
//! parsed once and kept current by a reloader that does its file I/O and parsing on a
//! blocking thread, never on the async workers.
//!
//! Readers ([`Watched::current`]) only load an `Arc` (`arc-swap`: no lock, no I/O), so
//! a large file or a slow disk cannot stall a request. A change that fails to load is
//! logged as an error and the last good copy stays in force: a typo in the users file
//! must not log everybody out.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use tokio_util::sync::CancellationToken;

/// Parses an operator's TOML file of one section of named entries (`[users.alice]`,
/// `[apps.billing]`), refusing every key that no one reads, with the nearest known one:
/// `[app.billing]` or `pasword = …` must not pass in silence (the entry would be
/// ignored, or the field left at its default).
pub(crate) fn parse_sections<T: serde::de::DeserializeOwned>(
    text: &str,
    section: &str,
    fields: &[&str],
) -> Result<T, String> {
    use crate::config::unknown_key;

    let table: toml::Table = text.parse().map_err(|e: toml::de::Error| e.to_string())?;
    let mut unknown = Vec::new();
    for (key, value) in &table {
        if key != section {
            unknown.push(unknown_key(key, [section]));
            continue;
        }
        // A value of the wrong shape is left to serde, which says what it expected.
        let Some(entries) = value.as_table() else {
            continue;
        };
        for (name, entry) in entries {
            let Some(entry) = entry.as_table() else {
                continue;
            };
            for field in entry.keys().filter(|f| !fields.contains(&f.as_str())) {
                unknown.push(format!(
                    "[{section}.{name}]: {}",
                    unknown_key(field, fields.iter().copied())
                ));
            }
        }
    }
    if !unknown.is_empty() {
        return Err(unknown.join("; "));
    }
    table.try_into().map_err(|e: toml::de::Error| e.to_string())
}

/// How often a watched file's modification time is looked at.
pub(crate) const RELOAD_EVERY: Duration = Duration::from_secs(1);

/// Parses a file's bytes; the error text names what is wrong (not the file: the
/// caller adds it).
pub(crate) type Parse<T> = fn(&str) -> Result<T, String>;

/// A parsed file, swapped in whole when the file changes.
pub(crate) struct Watched<T> {
    path: Option<PathBuf>,
    parse: Parse<T>,
    value: ArcSwap<T>,
    /// The modification time of the copy in force, `Some(None)` for a missing file,
    /// `None` before the first load (a std mutex: only the reloader, on a blocking
    /// thread, takes it).
    seen: std::sync::Mutex<Option<Option<SystemTime>>>,
}

/// Why a watched file could not be loaded.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {message}")]
pub(crate) struct LoadError {
    /// The file.
    pub(crate) path: PathBuf,
    /// What is wrong.
    pub(crate) message: String,
}

impl<T: Default + Send + Sync + 'static> Watched<T> {
    /// Reads and parses `path` now (at start, where failing is right); no path, or a
    /// missing file, is the default value.
    pub(crate) fn open(path: Option<&Path>, parse: Parse<T>) -> Result<Watched<T>, LoadError> {
        let watched = Watched {
            path: path.map(Path::to_owned),
            parse,
            value: ArcSwap::from_pointee(T::default()),
            seen: std::sync::Mutex::new(None),
        };
        watched.reload_if_changed()?;
        Ok(watched)
    }

    /// The copy in force.
    pub(crate) fn current(&self) -> Arc<T> {
        self.value.load_full()
    }

    /// Re-reads the file if its modification time changed, on the calling thread
    /// (blocking I/O: call it from a blocking thread). `Ok(true)` when a new copy is in
    /// force; on error the old one stays.
    pub(crate) fn reload_if_changed(&self) -> Result<bool, LoadError> {
        let Some(path) = &self.path else {
            return Ok(false);
        };
        let error = |message: String| LoadError {
            path: path.clone(),
            message,
        };
        let mtime = std::fs::metadata(path).and_then(|m| m.modified()).ok();
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        if *seen == Some(mtime) {
            return Ok(false);
        }
        let value = match std::fs::read_to_string(path) {
            Ok(text) => (self.parse)(&text).map_err(error)?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => T::default(),
            Err(e) => return Err(error(e.to_string())),
        };
        self.value.store(Arc::new(value));
        *seen = Some(mtime);
        Ok(true)
    }

    /// Looks at the file every `every` until `stop`, reloading it off the async
    /// workers when it changed. A file that fails to load is logged as an error once
    /// per change, and the last good copy stays in force.
    pub(crate) async fn watch(self: Arc<Self>, every: Duration, stop: CancellationToken) {
        if self.path.is_none() {
            return;
        }
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut failing: Option<String> = None;
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                _ = tick.tick() => {}
            }
            let this = self.clone();
            let reloaded = tokio::task::spawn_blocking(move || this.reload_if_changed()).await;
            match reloaded {
                Ok(Ok(true)) => {
                    failing = None;
                    tracing::info!(file = %self.path_text(), "reloaded");
                }
                Ok(Ok(false)) => {}
                Ok(Err(e)) => {
                    let message = e.to_string();
                    if failing.as_ref() != Some(&message) {
                        tracing::error!(cause = %message, "file changed but does not load; the last good copy stays in force");
                        failing = Some(message);
                    }
                }
                Err(e) => tracing::error!(cause = %e, "file reload task failed"),
            }
        }
    }

    fn path_text(&self) -> String {
        self.path
            .as_deref()
            .map(|p| p.display().to_string())
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(text: &str) -> Result<Vec<String>, String> {
        if text.contains("broken") {
            return Err("broken on purpose".into());
        }
        Ok(text.lines().map(str::to_owned).collect())
    }

    fn touch_later(path: &Path, text: &str) {
        // Modification times can be coarse: make sure the new one differs.
        std::thread::sleep(Duration::from_millis(20));
        std::fs::write(path, text).expect("write");
        let later = SystemTime::now() + Duration::from_secs(5);
        let file = std::fs::File::options()
            .write(true)
            .open(path)
            .expect("open");
        file.set_modified(later).expect("set mtime");
    }

    #[tokio::test]
    async fn a_change_is_swapped_in_and_a_broken_one_keeps_the_last_good_copy() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("f");
        std::fs::write(&path, "a\n").expect("write");
        let watched = Arc::new(Watched::open(Some(&path), lines).expect("open"));
        assert_eq!(*watched.current(), ["a"]);
        let stop = CancellationToken::new();
        let task = tokio::spawn(
            watched
                .clone()
                .watch(Duration::from_millis(10), stop.clone()),
        );

        touch_later(&path, "a\nb\n");
        wait_for(|| watched.current().len() == 2).await;

        std::fs::write(&path, "broken").expect("write");
        let later = SystemTime::now() + Duration::from_secs(10);
        std::fs::File::options()
            .write(true)
            .open(&path)
            .expect("open")
            .set_modified(later)
            .expect("mtime");
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(*watched.current(), ["a", "b"], "the last good copy stays");

        stop.cancel();
        task.await.expect("watch ends on stop");
    }

    /// Readers never touch the file: with the file replaced by a FIFO that nobody
    /// writes (a read of it blocks until a writer comes), `current` still answers at
    /// once. The reloader's read blocks on its own blocking thread, not on a worker.
    #[cfg(unix)]
    #[tokio::test(flavor = "current_thread")]
    async fn readers_never_wait_for_the_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("f");
        std::fs::write(&path, "a\n").expect("write");
        let watched = Arc::new(Watched::open(Some(&path), lines).expect("open"));
        std::fs::remove_file(&path).expect("rm");
        let made = std::process::Command::new("mkfifo")
            .arg(&path)
            .status()
            .expect("mkfifo runs");
        assert!(made.success());
        let stop = CancellationToken::new();
        let task = tokio::spawn(
            watched
                .clone()
                .watch(Duration::from_millis(5), stop.clone()),
        );
        // On one worker thread: if the reloader read on it, this sleep would never end.
        for _ in 0..20 {
            tokio::time::sleep(Duration::from_millis(5)).await;
            assert_eq!(*watched.current(), ["a"]);
        }
        stop.cancel();
        // Unblock the reloader's read: a writer opens and closes the FIFO (on a thread
        // of its own, as that open waits for the reader).
        let fifo = path.clone();
        std::thread::spawn(move || drop(std::fs::File::options().write(true).open(fifo)));
        task.await.expect("watch ends on stop");
    }

    /// A file that does not exist (no users yet) is the default value, read once: it
    /// is not "reloaded" every second until it appears.
    #[test]
    fn a_missing_file_is_loaded_once_and_again_when_it_appears() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("f");
        let watched = Watched::open(Some(&path), lines).expect("open");
        assert!(watched.current().is_empty());
        assert!(!watched.reload_if_changed().expect("reload"));
        std::fs::write(&path, "a\n").expect("write");
        assert!(watched.reload_if_changed().expect("reload"));
        assert_eq!(*watched.current(), ["a"]);
    }

    async fn wait_for(done: impl Fn() -> bool) {
        for _ in 0..500 {
            if done() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("condition not reached in 5 s");
    }
}
