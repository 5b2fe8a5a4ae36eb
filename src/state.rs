//! The state file: the last fire time of every `on_missed = "once"` job, kept across restarts so
//! that a restarted daemon knows what it missed while it was down.
//!
//! Writes are debounced (at most one a second) and atomic (temporary file, fsync, rename), so a
//! crash leaves either the old file or the new one. A missing or corrupt file is a warning, never
//! a failure: the jobs then simply have no missed fires to catch up.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::clock::Clock;

/// How long a change may wait before it is written.
const WRITE_DELAY: Duration = Duration::from_secs(1);

/// The last fire times, in memory and on disk.
#[derive(Debug)]
pub struct StateStore {
    path: PathBuf,
    /// A std mutex: held for map operations only, never across an `.await`.
    inner: Mutex<Inner>,
    changed: Notify,
}

#[derive(Debug, Default)]
struct Inner {
    last_fire: BTreeMap<String, DateTime<Utc>>,
    dirty: bool,
}

/// The file's format.
#[derive(Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct StateFile {
    #[serde(default)]
    last_fire: BTreeMap<String, DateTime<Utc>>,
}

impl StateStore {
    /// Reads `path`; a missing file is an empty state, a corrupt one is logged and ignored.
    pub fn open(path: &Path) -> Self {
        let last_fire = match std::fs::read_to_string(path) {
            Ok(text) => match toml::from_str::<StateFile>(&text) {
                Ok(file) => file.last_fire,
                Err(err) => {
                    tracing::warn!(state_file = %path.display(), "the state file is corrupt and is ignored (no catch-up runs this time): {}", err.message());
                    BTreeMap::new()
                }
            },
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
            Err(err) => {
                tracing::warn!(state_file = %path.display(), "cannot read the state file, ignoring it: {err}");
                BTreeMap::new()
            }
        };
        StateStore {
            path: path.to_owned(),
            inner: Mutex::new(Inner {
                last_fire,
                dirty: false,
            }),
            changed: Notify::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The last recorded fire of `job`.
    pub fn last_fire(&self, job: &str) -> Option<DateTime<Utc>> {
        self.lock().last_fire.get(job).copied()
    }

    /// Records a fire of `job`; written to disk within a second.
    pub fn record(&self, job: &str, at: DateTime<Utc>) {
        let mut inner = self.lock();
        inner.last_fire.insert(job.to_owned(), at);
        inner.dirty = true;
        drop(inner);
        self.changed.notify_one();
    }

    /// Writes the state if it changed since the last write.
    pub fn flush(&self) -> std::io::Result<()> {
        let text = {
            let mut inner = self.lock();
            if !inner.dirty {
                return Ok(());
            }
            inner.dirty = false;
            let file = StateFile {
                last_fire: inner.last_fire.clone(),
            };
            toml::to_string(&file).map_err(std::io::Error::other)?
        };
        let result = write_atomically(&self.path, &text);
        if result.is_err() {
            self.lock().dirty = true;
        }
        result
    }

    /// Writes changes (debounced) until `stop`, then writes once more.
    pub async fn write_until(self: Arc<Self>, clock: Clock, stop: CancellationToken) {
        loop {
            tokio::select! {
                _ = self.changed.notified() => clock.sleep(WRITE_DELAY).await,
                _ = stop.cancelled() => break,
            }
            self.flush_logged().await;
        }
        self.flush_logged().await;
    }

    async fn flush_logged(self: &Arc<Self>) {
        let store = self.clone();
        let result = tokio::task::spawn_blocking(move || store.flush()).await;
        match result {
            Ok(Ok(())) => {}
            Ok(Err(err)) => {
                tracing::warn!(state_file = %self.path.display(), "cannot write the state file: {err}")
            }
            Err(err) => tracing::warn!("state writer failed: {err}"),
        }
    }
}

fn write_atomically(path: &Path, text: &str) -> std::io::Result<()> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let (temp_path, mut temp) = tempfile_in(dir, path)?;
    let header = "# tickd state: the last fire time of each job with on_missed = \"once\".\n# Written by tickd; safe to delete (no catch-up runs then).\n";
    let written = temp
        .write_all(header.as_bytes())
        .and_then(|()| temp.write_all(text.as_bytes()))
        .and_then(|()| temp.sync_all());
    drop(temp);
    if let Err(err) = written.and_then(|()| std::fs::rename(&temp_path, path)) {
        // The old state file is untouched; the partial copy would only take space on a disk
        // that is probably full.
        let _ = std::fs::remove_file(&temp_path);
        return Err(err);
    }
    // Make the rename itself durable.
    std::fs::File::open(dir)?.sync_all()
}

/// A new file next to `path`, named after it and our pid.
fn tempfile_in(dir: &Path, path: &Path) -> std::io::Result<(PathBuf, std::fs::File)> {
    let name = path
        .file_name()
        .map_or_else(|| "state".into(), |n| n.to_string_lossy().into_owned());
    let temp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    let file = std::fs::File::create(&temp)?;
    Ok((temp, file))
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn records_survive_a_round_trip_and_corruption_is_not_fatal() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("sub/tickd.state");
        let at = Utc
            .with_ymd_and_hms(2026, 1, 1, 3, 0, 0)
            .single()
            .expect("time");
        let store = StateStore::open(&path);
        assert_eq!(store.last_fire("a"), None);
        store.record("a", at);
        store.flush().expect("write");
        assert_eq!(StateStore::open(&path).last_fire("a"), Some(at));
        std::fs::write(&path, "last_fire = 12\n[[[").expect("corrupt");
        assert_eq!(StateStore::open(&path).last_fire("a"), None);
        std::fs::write(&path, b"\xff\xfe").expect("binary");
        assert_eq!(StateStore::open(&path).last_fire("a"), None);
    }
}
