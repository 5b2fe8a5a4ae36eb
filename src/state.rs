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
    /// Reads `path`; a missing file is an empty state, a corrupt or unreadable one is logged and
    /// ignored. The path is opened without following a symbolic link and without blocking (a
    /// FIFO put there would otherwise hang start-up), must be a regular file, and is read up to
    /// [`MAX_STATE_BYTES`].
    pub fn open(path: &Path) -> Self {
        let last_fire = match read_state(path) {
            Ok(Some(text)) => match toml::from_str::<StateFile>(&text) {
                Ok(file) => file.last_fire,
                Err(err) => {
                    tracing::warn!(state_file = %path.display(), "the state file is corrupt and is ignored (no catch-up runs this time): {}", err.message());
                    BTreeMap::new()
                }
            },
            Ok(None) => BTreeMap::new(),
            Err(err) => {
                tracing::warn!(state_file = %path.display(), "cannot read the state file, ignoring it (no catch-up runs this time): {err}");
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
        let result =
            crate::blocking::off_the_workers("the state file", move || store.flush()).await;
        if let Err(err) = result {
            tracing::warn!(state_file = %self.path.display(), "cannot write the state file: {err}")
        }
    }
}

/// The most the state file is read: a few dozen bytes a job, so this is room for hundreds of
/// thousands of jobs, and a huge file put at the path costs no more than this.
pub const MAX_STATE_BYTES: u64 = 16 * 1024 * 1024;

/// Why the thing at `path` cannot be the state file, or `None` when it can (a regular file, or
/// nothing yet). Used at load (so `tickd check` refuses it too) and before every write.
pub fn unusable_path(path: &Path) -> Option<String> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(meta) => meta,
        Err(_) => return None,
    };
    let kind = meta.file_type();
    if kind.is_file() {
        return None;
    }
    Some(
        if kind.is_symlink() {
            "it is a symbolic link; tickd replaces the state file by renaming a new one over it and never follows links: name the target instead"
        } else if kind.is_dir() {
            "it is a directory; name a file in it instead (e.g. tickd.state)"
        } else {
            "it is not a regular file (a device, FIFO or socket); tickd would replace it: name a regular file instead"
        }
        .to_owned(),
    )
}

/// The state file's text, `None` if there is none.
fn read_state(path: &Path) -> std::io::Result<Option<String>> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path);
    let file = match file {
        Ok(file) => file,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(err) => return Err(err),
    };
    if !file.metadata()?.file_type().is_file() {
        return Err(std::io::Error::other("it is not a regular file"));
    }
    let mut bytes = Vec::new();
    file.take(MAX_STATE_BYTES + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > MAX_STATE_BYTES {
        return Err(std::io::Error::other(format!(
            "it is larger than {}",
            bytesize::ByteSize(MAX_STATE_BYTES)
        )));
    }
    String::from_utf8(bytes)
        .map(Some)
        .map_err(|_| std::io::Error::other("it is not UTF-8 text"))
}

fn write_atomically(path: &Path, text: &str) -> std::io::Result<()> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    // Checked again at every write: something else may have been put at the path since load.
    if let Some(why) = unusable_path(path) {
        return Err(std::io::Error::other(format!(
            "not replacing {}: {why}",
            path.display()
        )));
    }
    // A new file with a random name, created exclusively (O_EXCL: never an existing file or the
    // target of a link a local user planted), removed again if anything below fails.
    let mut temp = tempfile::Builder::new()
        .prefix(".tickd-state.")
        .suffix(".tmp")
        .tempfile_in(dir)?;
    let header = "# tickd state: the last fire time of each job with on_missed = \"once\".\n# Written by tickd; safe to delete (no catch-up runs then).\n";
    temp.write_all(header.as_bytes())?;
    temp.write_all(text.as_bytes())?;
    temp.as_file().sync_all()?;
    temp.persist(path).map_err(|e| e.error)?;
    // Make the rename itself durable.
    std::fs::File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    /// A FIFO at the path hung start-up in `open()`; a symbolic link was followed; a 1 GB file
    /// was read whole. Each is now ignored with a warning, at once.
    #[test]
    fn the_state_file_is_never_followed_blocked_on_or_read_whole() {
        let dir = tempfile::tempdir().expect("tempdir");
        let fifo = dir.path().join("fifo");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).expect("fifo");
        // Nobody writes the FIFO: a blocking open would never return.
        assert_eq!(StateStore::open(&fifo).last_fire("a"), None);
        assert!(read_state(&fifo).is_err());

        let real = dir.path().join("real");
        std::fs::write(&real, "[last_fire]\na = \"2026-01-01T00:00:00Z\"\n").expect("real");
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&real, &link).expect("symlink");
        assert_eq!(
            StateStore::open(&link).last_fire("a"),
            None,
            "the link is not followed"
        );
        assert!(StateStore::open(&real).last_fire("a").is_some());

        let big = dir.path().join("big");
        let file = std::fs::File::create(&big).expect("big");
        file.set_len(MAX_STATE_BYTES + 1).expect("sparse file");
        let err = read_state(&big).expect_err("over the cap");
        assert!(err.to_string().contains("larger than"), "{err}");
    }

    /// The write renamed over whatever was at the path (a `state_file = "/dev/zero"` replaced the
    /// machine's `/dev/zero`) through a temporary file with a predictable name, opened
    /// following links. Now a non-regular path is refused, and the temporary file is created
    /// exclusively under a random name, so a planted link is never written through.
    #[test]
    fn the_state_write_never_replaces_or_follows_anything() {
        let dir = tempfile::tempdir().expect("tempdir");
        let victim = dir.path().join("victim");
        std::fs::write(&victim, "precious").expect("victim");
        // The old predictable temporary names, planted as links to the victim.
        for name in [
            format!(".state.{}.tmp", std::process::id()),
            ".state.tmp".to_owned(),
        ] {
            std::os::unix::fs::symlink(&victim, dir.path().join(name)).expect("plant");
        }
        let path = dir.path().join("state");
        let store = StateStore::open(&path);
        store.record("a", Utc::now());
        store.flush().expect("write");
        assert_eq!(
            std::fs::read_to_string(&victim).expect("victim"),
            "precious"
        );
        assert!(std::fs::symlink_metadata(&path)
            .expect("state")
            .file_type()
            .is_file());

        // A FIFO or a link put at the path after start is not replaced.
        for (name, make) in [
            (
                "fifo",
                Box::new(|p: &Path| {
                    nix::unistd::mkfifo(p, nix::sys::stat::Mode::from_bits_truncate(0o600))
                        .map_err(std::io::Error::from)
                }) as Box<dyn Fn(&Path) -> std::io::Result<()>>,
            ),
            (
                "link",
                Box::new(|p: &Path| std::os::unix::fs::symlink("/dev/null", p)),
            ),
        ] {
            let path = dir.path().join(name);
            make(&path).expect("make");
            let store = StateStore::open(&path);
            store.record("a", Utc::now());
            let err = store.flush().expect_err("refused");
            assert!(err.to_string().contains("not replacing"), "{err}");
            let kind = std::fs::symlink_metadata(&path)
                .expect("still there")
                .file_type();
            assert!(!kind.is_file(), "{name} was replaced");
        }
        // No temporary file is left behind.
        let leftovers: Vec<_> = std::fs::read_dir(dir.path())
            .expect("dir")
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with(".tickd-state."))
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
    }

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
