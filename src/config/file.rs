//! Reading the configuration file: only once it has settled, only as UTF-8, and (for a root
//! daemon) only when no one but root can change it.

use std::path::Path;
use std::time::Duration;

use super::error::{ConfigError, Locator};

/// How long a file must have been left alone before it is read as a whole: an editor or a `>`
/// redirect writing it is caught between two writes far less often than this.
pub const SETTLE: Duration = Duration::from_millis(100);

/// How long [`read_settled`] waits for a file that keeps changing before it gives up.
const SETTLE_LIMIT: Duration = Duration::from_secs(5);

/// The text of the configuration file at `path`, read once it has settled; a root daemon first
/// checks that only root can change it.
pub(super) fn read_text(path: &Path) -> Result<String, ConfigError> {
    if nix::unistd::Uid::effective().is_root() {
        check_owner_and_mode(path)?;
    }
    let bytes = read_settled(path, SETTLE).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })?;
    String::from_utf8(bytes).map_err(|err| {
        let valid_up_to = err.utf8_error().valid_up_to();
        let text = String::from_utf8_lossy(err.as_bytes()).into_owned();
        let locator = Locator { path, text: &text };
        ConfigError::Invalid {
            problems: vec![locator.problem(
                valid_up_to,
                None,
                None,
                "the file is not valid UTF-8".to_owned(),
            )],
        }
    })
}

/// Reads `path` once it has been still for `quiet`: its size, inode and modification time are
/// the same before and after the read, and the modification is at least `quiet` old (else it
/// waits and reads again). A modification time in the future (a clock that was set back, files
/// unpacked with their times) cannot say how old it is: then two reads `quiet` apart must agree.
/// A file still changing after `SETTLE_LIMIT` (5 s) is an error, so a half-written file is never
/// applied.
///
/// Modification times are wall-clock times by nature, so this compares them with the system's
/// wall clock rather than the daemon's injected [`crate::Clock`].
pub fn read_settled(path: &Path, quiet: Duration) -> std::io::Result<Vec<u8>> {
    use std::os::unix::fs::MetadataExt;
    let stamp = |meta: &std::fs::Metadata| (meta.ino(), meta.len(), meta.modified().ok());
    let started = std::time::Instant::now();
    let mut previous: Option<Vec<u8>> = None;
    loop {
        let before = std::fs::metadata(path)?;
        let bytes = std::fs::read(path)?;
        // A pipe or a device (`tickd check /dev/stdin`) can be read only once, and a writer
        // that replaces the file does so through a regular one.
        if !before.is_file() {
            return Ok(bytes);
        }
        let after = std::fs::metadata(path)?;
        let age = after
            .modified()
            .ok()
            .and_then(|m| std::time::SystemTime::now().duration_since(m).ok());
        let settled = stamp(&before) == stamp(&after)
            && match age {
                Some(age) => age >= quiet,
                // In the future: fall back to comparing two reads.
                None => previous.as_ref() == Some(&bytes),
            };
        if settled {
            return Ok(bytes);
        }
        if started.elapsed() > SETTLE_LIMIT {
            return Err(std::io::Error::other(format!(
                "the file kept changing for {} while it was read; not applying a half-written file",
                humantime::format_duration(SETTLE_LIMIT)
            )));
        }
        let wait = age
            .map_or(quiet, |age| quiet.saturating_sub(age))
            .max(Duration::from_millis(5));
        std::thread::sleep(wait);
        previous = Some(bytes);
    }
}

/// A root daemon runs what the file says as any user: only root may be able to change it.
fn check_owner_and_mode(path: &Path) -> Result<(), ConfigError> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let unsafe_file = |reason: String| ConfigError::Unsafe {
        path: path.to_owned(),
        reason,
    };
    let meta = std::fs::symlink_metadata(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })?;
    if meta.file_type().is_symlink() {
        return Err(unsafe_file(
            "it is a symbolic link; tickd running as root loads only a regular file (point tickd at the target instead)".to_owned(),
        ));
    }
    if meta.uid() != 0 {
        return Err(unsafe_file(format!(
            "it is owned by uid {}, not root; fix with: chown root {}",
            meta.uid(),
            path.display()
        )));
    }
    let mode = meta.permissions().mode();
    if mode & 0o022 != 0 {
        return Err(unsafe_file(format!(
            "it is writable by group or others (mode {:o}); fix with: chmod go-w {}",
            mode & 0o7777,
            path.display()
        )));
    }
    Ok(())
}

/// Why the directory of the state file `path` deserves a warning: another user who can write
/// it can delete or replace the state (and so cause or suppress catch-up runs). A sticky
/// directory such as `/tmp` still lets them create names there first.
pub(super) fn writable_by_others(path: &Path) -> Option<String> {
    use std::os::unix::fs::PermissionsExt;
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let mode = std::fs::metadata(dir).ok()?.permissions().mode();
    (mode & 0o022 != 0).then(|| {
        format!(
            "warning: the state file's directory {} is writable by group or others (mode {:o}): they could replace the state and cause or suppress catch-up runs; fix with: chmod go-w {}",
            dir.display(),
            mode & 0o7777,
            dir.display()
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A reload read the file while it was being written and applied the first half.
    #[test]
    fn a_file_is_read_only_once_it_has_been_still() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("jobs.toml");
        let full = "[jobs.a]\nevery = \"1s\"\nhandler = \"log\"\n[jobs.b]\nevery = \"1s\"\nhandler = \"log\"\n";
        std::fs::write(&path, &full[..full.len() / 2]).expect("first half");
        // The writer finishes 200 ms later; a generous quiet period keeps this test out of
        // timing trouble on a loaded machine.
        let writer = {
            let path = path.clone();
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(200));
                std::fs::write(&path, full).expect("whole");
            })
        };
        let read = read_settled(&path, Duration::from_secs(2)).expect("read");
        writer.join().expect("writer");
        assert_eq!(String::from_utf8(read).expect("utf-8"), full);

        // A modification time in the future cannot be trusted: two reads must agree.
        let future = nix::sys::time::TimeSpec::new(4_000_000_000, 0);
        nix::sys::stat::utimensat(
            None,
            &path,
            &future,
            &future,
            nix::sys::stat::UtimensatFlags::FollowSymlink,
        )
        .expect("utimensat");
        let read = read_settled(&path, Duration::from_millis(10)).expect("read");
        assert_eq!(String::from_utf8(read).expect("utf-8"), full);
    }
}
