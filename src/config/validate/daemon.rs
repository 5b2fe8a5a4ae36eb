//! The `[daemon]` table. A bad value is reported and its default used in its place, so that the
//! jobs are still checked against the rest.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use chrono_tz::Tz;
use toml::Spanned;

use super::{At, Validator};
use crate::config::env::{EnvPolicy, DEFAULT_ENV_KEEP};
use crate::config::file::writable_by_others;
use crate::config::raw::RawDaemon;
use crate::config::spec::{
    DaemonSettings, DEFAULT_HISTORY, DEFAULT_HISTORY_OUTPUT, DEFAULT_SHUTDOWN_TIMEOUT, MAX_HISTORY,
    MAX_HISTORY_OUTPUT,
};
use crate::config::values::{self, DurationRange};

impl Validator<'_> {
    /// The daemon-wide settings.
    pub(super) fn daemon(&mut self, raw: &RawDaemon) -> DaemonSettings {
        let at = At::daemon;
        let shutdown_timeout = raw
            .shutdown_timeout
            .as_ref()
            .and_then(|v| {
                self.duration(
                    v,
                    at("daemon.shutdown_timeout"),
                    DurationRange::ZERO_OR_MORE,
                )
            })
            .unwrap_or(DEFAULT_SHUTDOWN_TIMEOUT);
        let timezone = raw
            .timezone
            .as_ref()
            .and_then(|v| self.timezone(v, at("daemon.timezone")))
            .unwrap_or(Tz::UTC);
        let max_uptime = raw
            .max_uptime
            .as_ref()
            .and_then(|v| self.duration(v, at("daemon.max_uptime"), DurationRange::POSITIVE));
        let state_file = raw.state_file.as_ref().and_then(|v| self.state_file(v));
        let max_runs = raw
            .max_runs
            .as_ref()
            .and_then(|v| self.count(v, at("daemon.max_runs")));
        let max_rss = raw
            .max_rss
            .as_ref()
            .and_then(|v| self.bytes(v, at("daemon.max_rss")));
        let (http, http_token) = self.endpoint(raw);
        let env = self.env_policy(raw);
        let (history, history_output) = self.history(raw);
        DaemonSettings {
            shutdown_timeout,
            timezone,
            max_uptime,
            state_file,
            max_runs,
            max_rss,
            http,
            http_token,
            env,
            history,
            history_output,
            job_metrics: raw.job_metrics.unwrap_or(true),
        }
    }

    /// How many runs each job keeps, and how much of each run's output: both bounded, since
    /// they are kept in memory for every job (at most `history × history_output` bytes of
    /// output per job).
    fn history(&mut self, raw: &RawDaemon) -> (usize, usize) {
        let history = raw
            .history
            .as_ref()
            .and_then(|v| {
                self.checked(v, At::daemon("daemon.history"), |&n| {
                    usize::try_from(n)
                        .ok()
                        .filter(|&n| n <= MAX_HISTORY)
                        .ok_or_else(|| {
                            format!("must be a whole number from 0 (no history) to {MAX_HISTORY}")
                        })
                })
            })
            .unwrap_or(DEFAULT_HISTORY);
        let history_output = raw
            .history_output
            .as_ref()
            .and_then(|v| {
                self.checked(v, At::daemon("daemon.history_output"), |text| {
                    values::parse_size_or_zero(text)
                        .and_then(|size| usize::try_from(size).map_err(|e| e.to_string()))
                        .and_then(|size| {
                            if size <= MAX_HISTORY_OUTPUT {
                                Ok(size)
                            } else {
                                Err(format!(
                                    "{text} is more than the {} KiB a run may keep",
                                    MAX_HISTORY_OUTPUT / 1024
                                ))
                            }
                        })
                })
            })
            .unwrap_or(DEFAULT_HISTORY_OUTPUT);
        (history, history_output)
    }

    /// The state file, relative to the configuration file's directory. It must be a regular
    /// file (or none yet); a directory others can write is a warning.
    fn state_file(&mut self, value: &Spanned<String>) -> Option<PathBuf> {
        let at = At::daemon("daemon.state_file");
        let base = self.locator.path.parent().unwrap_or(Path::new("."));
        let path = base.join(value.get_ref());
        if let Some(why) = crate::state::unusable_path(&path) {
            self.reject(value, at, format!("{}: {why}", path.display()));
            return None;
        }
        if let Some(why) = writable_by_others(&path) {
            self.warn(value, at, why);
        }
        Some(path)
    }

    /// The endpoint's address and token: off loopback, a token is required, since the endpoint
    /// shows every job and its runs.
    fn endpoint(&mut self, raw: &RawDaemon) -> (Option<SocketAddr>, Option<String>) {
        let at = At::daemon("daemon.http");
        // Without the endpoint, its address is refused whole: its form and token do not matter.
        #[cfg(not(feature = "http"))]
        if let Some(v) = &raw.http {
            self.reject(v, at, crate::config::spec::NO_ENDPOINT.to_owned());
            return (None, None);
        }
        let http = raw
            .http
            .as_ref()
            .and_then(|v| self.checked(v, at, |text| values::parse_address(text)));
        let http_token = raw.http_token.as_ref().map(|v| v.get_ref().clone());
        if let (Some(addr), Some(v)) = (http, &raw.http) {
            if !addr.ip().is_loopback() && http_token.as_deref().is_none_or(str::is_empty) {
                self.reject(
                    v,
                    at,
                    format!("{addr} is not a loopback address: set [daemon] http_token, the bearer token every request must carry"),
                );
            }
        }
        (http, http_token)
    }

    /// What jobs inherit of the daemon's environment; `env_keep` means something only with
    /// `env_clear`.
    fn env_policy(&mut self, raw: &RawDaemon) -> EnvPolicy {
        let clear = raw.env_clear.unwrap_or(false);
        if let (Some(keep), false) = (&raw.env_keep, clear) {
            self.reject(
                keep,
                At::daemon("daemon.env_keep"),
                "\"env_keep\" applies with env_clear = true (without it, everything is inherited; use env_remove to take variables out)".to_owned(),
            );
        }
        EnvPolicy {
            clear,
            keep: raw.env_keep.as_ref().map_or_else(
                || DEFAULT_ENV_KEEP.iter().map(|s| (*s).to_owned()).collect(),
                |keep| keep.get_ref().clone(),
            ),
            remove: raw.env_remove.clone().unwrap_or_default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use crate::config::testing::{check, error};

    #[test]
    fn history_and_its_output_are_bounded_and_named_in_errors() {
        let config = check("").expect("empty");
        assert_eq!(
            (config.daemon.history(), config.daemon.history_output()),
            (20, 4096)
        );
        let config = check("[daemon]\nhistory = 0\nhistory_output = \"1KiB\"\n").expect("off");
        assert_eq!(
            (config.daemon.history(), config.daemon.history_output()),
            (0, 0)
        );
        let config = check("[daemon]\nhistory = 5\nhistory_output = \"0\"\n").expect("no output");
        assert_eq!(
            (config.daemon.history(), config.daemon.history_output()),
            (5, 0)
        );
        let msg = error("[daemon]\nhistory = -1\n");
        assert!(
            msg.contains("jobs.toml:2:11: key \"daemon.history\": must be a whole number from 0 (no history) to 1000"),
            "{msg}"
        );
        let msg = error("[daemon]\nhistory_output = \"lots\"\n");
        assert!(
            msg.contains("jobs.toml:2:18: key \"daemon.history_output\": invalid size \"lots\""),
            "{msg}"
        );
        let msg = error("[daemon]\nhistory_output = \"2MiB\"\n");
        assert!(
            msg.contains("key \"daemon.history_output\": 2MiB is more than the 1024 KiB"),
            "{msg}"
        );
    }

    #[test]
    fn env_keep_needs_env_clear() {
        let msg = error("[daemon]\nenv_keep = [\"PATH\"]\n");
        assert!(
            msg.contains("key \"daemon.env_keep\": \"env_keep\" applies with env_clear = true"),
            "{msg}"
        );
        let config = check("[daemon]\nenv_clear = true\n").expect("valid");
        assert!(config.daemon.env.keep.contains(&"PATH".to_owned()));
    }

    /// A build without `http` refuses `[daemon] http` at load, naming the feature, rather than
    /// starting without the endpoint the file asks for.
    #[test]
    #[cfg(not(feature = "http"))]
    fn without_the_feature_the_endpoint_is_refused_naming_it() {
        let msg = error("[daemon]\nhttp = \"127.0.0.1:9187\"\n");
        assert!(
            msg.contains("jobs.toml:2:8: key \"daemon.http\": this build of tickd has no HTTP endpoint (it was built without the `http` feature)"),
            "{msg}"
        );
    }

    #[test]
    #[cfg(feature = "http")]
    fn the_endpoint_off_loopback_needs_a_token() {
        let config = check("[daemon]\nhttp = \"127.0.0.1:9187\"\n").expect("loopback is fine");
        assert_eq!(config.daemon.http, Some(([127, 0, 0, 1], 9187).into()));
        let msg = error("[daemon]\nhttp = \"0.0.0.0:9187\"\n");
        assert!(msg.contains("jobs.toml:2:8: key \"daemon.http\": 0.0.0.0:9187 is not a loopback address: set [daemon] http_token"), "{msg}");
        check("[daemon]\nhttp = \"0.0.0.0:9187\"\nhttp_token = \"t\"\n").expect("with a token");
        for port_only in ["9187", ":9187"] {
            let config =
                check(&format!("[daemon]\nhttp = \"{port_only}\"\n")).expect("a bare port");
            assert_eq!(config.daemon.http, Some(([127, 0, 0, 1], 9187).into()));
        }
        let msg = error("[daemon]\nhttp = \"localhost\"\n");
        assert!(
            msg.contains("key \"daemon.http\": invalid address"),
            "{msg}"
        );
    }

    /// `state_file = "/dev/zero"` passed `check`, and the first write replaced the device.
    #[test]
    fn a_state_file_that_is_not_a_regular_file_is_refused_at_load() {
        let dir = tempfile::tempdir().expect("tempdir");
        let fifo = dir.path().join("fifo");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).expect("fifo");
        let link = dir.path().join("link");
        std::os::unix::fs::symlink("/etc/passwd", &link).expect("link");
        for (path, why) in [
            (Path::new("/dev/zero"), "not a regular file"),
            (fifo.as_path(), "not a regular file"),
            (dir.path(), "is a directory"),
            (link.as_path(), "symbolic link"),
        ] {
            let msg = error(&format!("[daemon]\nstate_file = \"{}\"\n", path.display()));
            assert!(
                msg.starts_with("jobs.toml:2:14: key \"daemon.state_file\""),
                "{msg}"
            );
            assert!(msg.contains(why), "{msg}");
        }
        // A regular file, or none yet, is fine.
        let config = check(&format!(
            "[daemon]\nstate_file = \"{}\"\n",
            dir.path().join("new").display()
        ))
        .expect("valid");
        assert!(config.warnings.is_empty(), "{:?}", config.warnings);
    }

    #[test]
    fn a_state_directory_others_can_write_is_a_warning() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777))
            .expect("chmod");
        let config = check(&format!(
            "[daemon]\nstate_file = \"{}\"\n",
            dir.path().join("state").display()
        ))
        .expect("a warning, not an error");
        let warning = config.warnings.first().expect("a warning").to_string();
        assert!(
            warning.starts_with("jobs.toml:2:14: key \"daemon.state_file\": warning"),
            "{warning}"
        );
        assert!(warning.contains("chmod go-w"), "{warning}");
    }
}
