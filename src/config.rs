//! The configuration schema, and the one `load()` shared by start-up, `tickd check` and SIGHUP.
//!
//! Loading is two-phase, so nothing ever acts on half-parsed input:
//! 1. **Parse**: TOML into `Raw*` structs with serde. Unknown keys and wrong types are rejected
//!    there, and every value keeps its byte span so later errors can point at it.
//! 2. **Validate**: raw values into typed [`Config`] / [`JobSpec`] values that cannot hold an
//!    invalid state (non-zero periods, parsed cron expressions, known zones and handlers, exactly one
//!    schedule and one action). All problems are collected and reported together.
//!
//! Every problem names the file, line, column, job and key.

use std::collections::BTreeMap;
use std::fmt;
use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use chrono_tz::Tz;
use serde::Deserialize;
use toml::Spanned;

use crate::handler::Handlers;
use crate::schedule::{CronSchedule, EveryMode, EverySchedule, Schedule};

/// Default for `[daemon] shutdown_timeout`.
pub const DEFAULT_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(30);
/// Default for a job's `kill_grace`.
pub const DEFAULT_KILL_GRACE: Duration = Duration::from_secs(10);

/// The longest duration any key accepts: 100 years (humantime's `100y`, of 365.25 days). Every
/// duration enters through [`DurationRange::check`], so no later `instant + duration` anywhere
/// in the daemon can overflow (a monotonic instant has ~292 years of nanoseconds to spare).
pub const MAX_DURATION: Duration = Duration::from_secs(100 * 31_557_600);

/// The shortest `every` period: 1 ms. Shorter periods cannot be kept (a fire costs
/// microseconds of CPU) and would only burn a core reporting missed fires.
pub const MIN_PERIOD: Duration = Duration::from_millis(1);

/// The range a duration key accepts. All durations in the file are checked against one, so the
/// typed [`Config`] never holds a duration over [`MAX_DURATION`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DurationRange {
    /// The shortest allowed value.
    pub min: Duration,
    /// The longest allowed value.
    pub max: Duration,
}

impl DurationRange {
    /// Zero up to [`MAX_DURATION`] (`kill_grace`, `shutdown_timeout`).
    pub const ZERO_OR_MORE: Self = DurationRange {
        min: Duration::ZERO,
        max: MAX_DURATION,
    };
    /// Greater than zero, up to [`MAX_DURATION`] (timeouts, `max_uptime`, `jitter`).
    pub const POSITIVE: Self = DurationRange {
        min: Duration::from_nanos(1),
        max: MAX_DURATION,
    };
    /// A schedule period or a retry backoff: [`MIN_PERIOD`] up to [`MAX_DURATION`].
    pub const PERIOD: Self = DurationRange {
        min: MIN_PERIOD,
        max: MAX_DURATION,
    };

    /// Parses `text` (humantime: `"200ms"`, `"10s"`, `"1h30m"`) and checks it is in range; the
    /// error says what is wrong in words for a config message.
    pub fn check(self, text: &str) -> Result<Duration, String> {
        let value = humantime::parse_duration(text.trim()).map_err(|e| {
            format!("invalid duration \"{text}\": {e} (examples: \"200ms\", \"10s\", \"1h30m\")")
        })?;
        if value.is_zero() && !self.min.is_zero() {
            return Err("must be greater than zero".to_owned());
        }
        if value < self.min || value > self.max {
            let max = humantime::format_duration(self.max);
            return Err(if self.min <= Duration::from_nanos(1) {
                format!("\"{text}\" is out of range: at most {max}")
            } else {
                let min = humantime::format_duration(self.min);
                format!("\"{text}\" is out of range: from {min} to {max}")
            });
        }
        Ok(value)
    }
}

/// A validated configuration file.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file it was loaded from.
    pub source: PathBuf,
    /// Daemon-wide settings.
    pub daemon: DaemonSettings,
    /// The jobs, by name.
    pub jobs: BTreeMap<String, Arc<JobSpec>>,
    /// Things that load but deserve a look (a state directory others can write): `tickd check`
    /// prints them, the daemon logs them at start and reload.
    pub warnings: Vec<Problem>,
    /// The file has an explicit, empty `[jobs]` table. A reload to a file with no jobs is refused
    /// without it: an empty or truncated file (an editor or a `>` redirect caught mid-write) must
    /// not stop every job.
    pub no_jobs_on_purpose: bool,
}

/// The `[daemon]` table.
#[derive(Debug, Clone, PartialEq)]
pub struct DaemonSettings {
    /// How long SIGTERM/SIGINT waits for runs in flight before stopping them.
    pub shutdown_timeout: Duration,
    /// The default zone for cron schedules.
    pub timezone: Tz,
    /// After this long, drain and exit with the recycle code (75) so the process manager starts
    /// a fresh daemon.
    pub max_uptime: Option<Duration>,
    /// Where the last fire time of `on_missed = "once"` jobs is kept across restarts (a relative
    /// path is relative to the configuration file's directory).
    pub state_file: Option<PathBuf>,
    /// After this many runs (all jobs together), drain and exit with the recycle code.
    pub max_runs: Option<u64>,
    /// When the daemon's own resident memory exceeds this many bytes, drain and exit with the
    /// recycle code.
    pub max_rss: Option<u64>,
    /// Where the HTTP endpoint listens; off when `None`.
    pub http: Option<std::net::SocketAddr>,
    /// The bearer token the endpoint requires (all routes but `/healthz`).
    pub http_token: Option<String>,
    /// What jobs inherit of the daemon's environment.
    pub env: EnvPolicy,
}

/// One validated job.
#[derive(Debug, Clone, PartialEq)]
pub struct JobSpec {
    /// The job's name (its table key).
    pub name: String,
    /// When it fires.
    pub schedule: Schedule,
    /// What a run does.
    pub action: Action,
    /// What a fire does while a previous run is still going.
    pub overlap: Overlap,
    /// A run longer than this is stopped (process group: TERM, then KILL after `kill_grace`).
    pub timeout: Option<Duration>,
    /// Time between the polite stop request and the forced one.
    pub kill_grace: Duration,
    /// Where a child's stdout/stderr go.
    pub output: OutputMode,
    /// A delay added before each run.
    pub jitter: Option<Jitter>,
    /// Run once right after the job is scheduled (daemon start, or the reload that adds it).
    pub run_on_start: bool,
    /// What to do about fires missed while the daemon was down, stopped or the clock jumped.
    pub on_missed: OnMissed,
    /// A child run whose process group's resident memory exceeds this many bytes is stopped
    /// like a timeout and fails.
    pub max_rss: Option<u64>,
    /// Retries of failed runs.
    pub retry: Option<Retry>,
    /// A command run (argv) when a run has failed for good, for alerting.
    pub on_failure: Option<Vec<String>>,
    /// The user (and groups) child processes run as; `None`: the daemon's own.
    pub run_as: Option<RunAs>,
    /// What this job's processes (and its `on_failure` hook) inherit of the daemon's environment.
    pub env_policy: EnvPolicy,
}

/// Retries of a failed run: up to `attempts` more runs, `backoff` after the failure and doubling
/// each time up to `max_backoff`. A retry that would reach the next scheduled fire is dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retry {
    /// How many retries at most after a failed run.
    pub attempts: u32,
    /// The delay before the first retry.
    pub backoff: Duration,
    /// The longest delay between retries.
    pub max_backoff: Duration,
}

impl Retry {
    /// The delay before retry number `attempt` (1-based).
    pub fn delay(&self, attempt: u32) -> Duration {
        let factor = 1u32
            .checked_shl(attempt.saturating_sub(1))
            .unwrap_or(u32::MAX);
        self.backoff.saturating_mul(factor).min(self.max_backoff)
    }
}

/// Who a child process runs as, resolved from the user database at load.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunAs {
    /// The user's name.
    pub user: String,
    /// The user id.
    pub uid: u32,
    /// The primary group id.
    pub gid: u32,
    /// Every group id (primary and supplementary), as `initgroups` would set them.
    pub groups: Vec<u32>,
    /// The user's home directory.
    pub home: PathBuf,
}

/// A delay added before each run, so a fleet does not hit the same backend at :00.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Jitter {
    /// Delays are in `[0, max)`.
    pub max: Duration,
    /// A stable delay per job and machine (`spread = true`) instead of a random one per run.
    pub spread: bool,
}

/// What happens to fires that were missed (daemon down, stopped, stalled, wall clock jumped).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum OnMissed {
    /// Missed fires are dropped; the next fire is the next one in the future.
    #[default]
    Skip,
    /// One catch-up run for any number of missed fires (never a burst).
    Once,
}

/// What a run does.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// A child process (`command = [...]`, or `shell = "..."` run by `/bin/sh -c`).
    Process(ProcessSpec),
    /// An in-process HTTP request (`http = { url = ... }`); success is a 2xx status.
    Http(HttpSpec),
    /// An in-process handler registered through the library API.
    Handler(String),
}

/// A child process to start for each run.
#[derive(Debug, Clone, PartialEq)]
pub struct ProcessSpec {
    /// Program and arguments; never interpreted by a shell unless the program is the shell.
    pub argv: Vec<String>,
    /// Working directory; the daemon's own when unset.
    pub cwd: Option<PathBuf>,
    /// Extra environment variables, on top of what `inherit` lets through.
    pub env: BTreeMap<String, String>,
    /// Which of the daemon's own environment variables the child gets.
    pub inherit: EnvPolicy,
}

/// Which of the daemon's environment variables jobs inherit (`[daemon] env_clear`, `env_keep`,
/// `env_remove`). Variables addressed to tickd by its service manager (`NOTIFY_SOCKET`,
/// `WATCHDOG_USEC`, `WATCHDOG_PID`, `LISTEN_FDS`, `LISTEN_PID`, `LISTEN_FDNAMES`) are never
/// passed on, whatever the policy.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EnvPolicy {
    /// Start from an empty environment instead of the daemon's.
    pub clear: bool,
    /// With `clear`: the variables passed through anyway.
    pub keep: Vec<String>,
    /// Without `clear`: the variables taken out.
    pub remove: Vec<String>,
}

/// The service manager's variables for tickd itself, never inherited by jobs.
pub const NEVER_INHERITED: &[&str] = &[
    "NOTIFY_SOCKET",
    "WATCHDOG_USEC",
    "WATCHDOG_PID",
    "LISTEN_FDS",
    "LISTEN_PID",
    "LISTEN_FDNAMES",
];

/// What `env_keep` is when `env_clear = true` and it is not given.
pub const DEFAULT_ENV_KEEP: &[&str] = &["PATH", "LANG", "LC_ALL", "TZ", "HOME", "USER", "LOGNAME"];

/// An HTTP request to make for each run.
#[derive(Debug, Clone, PartialEq)]
pub struct HttpSpec {
    /// Absolute `http://` or `https://` URL.
    pub url: String,
    /// The method, `GET` by default (any token is a valid extension method, e.g. `PURGE`).
    pub method: reqwest::Method,
    /// Request headers.
    pub headers: BTreeMap<String, String>,
    /// Request body.
    pub body: Option<String>,
    /// Timeout of the request itself (the job's `timeout` also applies).
    pub timeout: Option<Duration>,
}

/// The overlap policy: what a fire does while a previous run of the job is still going.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Overlap {
    /// Skip the fire (logged at debug and counted).
    Skip,
    /// Keep at most one pending run, started when the current one ends.
    Queue,
    /// Start concurrent runs, up to `max_concurrent` if set (further fires are skipped).
    Allow {
        /// The most runs of this job at once; unlimited when `None`.
        max_concurrent: Option<NonZeroUsize>,
    },
    /// Stop the running one the way a timeout does, then start the new one.
    Replace,
}

/// Where a child's output goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum OutputMode {
    /// Read line by line and log each line with the job name and run id.
    #[default]
    Log,
    /// The child writes straight to the daemon's stdout/stderr.
    Inherit,
    /// Thrown away (`/dev/null`).
    Discard,
}

/// Why a configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The daemon runs as root and the file could be changed by someone else (as cron refuses
    /// such crontabs): a symlink, a file not owned by root, or one writable by group or others.
    #[error("refusing {}: {reason}", path.display())]
    Unsafe {
        /// The file.
        path: PathBuf,
        /// What is wrong and how to fix it.
        reason: String,
    },
    /// The file was read but is not a valid configuration.
    #[error("{}", format_problems(problems))]
    Invalid {
        /// Every problem found, in file order.
        problems: Vec<Problem>,
    },
}

fn format_problems(problems: &[Problem]) -> String {
    let lines: Vec<String> = problems.iter().map(Problem::to_string).collect();
    lines.join("\n")
}

/// One problem in a configuration file, with its location.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The file.
    pub path: PathBuf,
    /// 1-based line.
    pub line: usize,
    /// 1-based column (in characters).
    pub column: usize,
    /// The job concerned, if any.
    pub job: Option<String>,
    /// The key concerned (dotted, relative to the job or the file), if known.
    pub key: Option<String>,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}: ", self.path.display(), self.line, self.column)?;
        match (&self.job, &self.key) {
            (Some(job), Some(key)) => write!(f, "job \"{job}\", key \"{key}\": ")?,
            (Some(job), None) => write!(f, "job \"{job}\": ")?,
            (None, Some(key)) => write!(f, "key \"{key}\": ")?,
            (None, None) => {}
        }
        f.write_str(&self.message)
    }
}

/// Reads and validates a configuration file. `handlers` names the in-process handlers a job may
/// use.
pub fn load(path: &Path, handlers: &Handlers) -> Result<Config, ConfigError> {
    if nix::unistd::Uid::effective().is_root() {
        check_owner_and_mode(path)?;
    }
    let bytes = read_settled(path, SETTLE).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })?;
    let text = match String::from_utf8(bytes) {
        Ok(text) => text,
        Err(err) => {
            let valid_up_to = err.utf8_error().valid_up_to();
            let text = String::from_utf8_lossy(err.as_bytes()).into_owned();
            let locator = Locator { path, text: &text };
            return Err(ConfigError::Invalid {
                problems: vec![locator.problem(
                    valid_up_to,
                    None,
                    None,
                    "the file is not valid UTF-8".to_owned(),
                )],
            });
        }
    };
    parse(path, &text, handlers)
}

/// How long a file must have been left alone before it is read as a whole: an editor or a `>`
/// redirect writing it is caught between two writes far less often than this.
pub const SETTLE: Duration = Duration::from_millis(100);

/// How long [`read_settled`] waits for a file that keeps changing before it gives up.
const SETTLE_LIMIT: Duration = Duration::from_secs(5);

/// Reads `path` once it has been still for `quiet`: its size, inode and modification time are
/// the same before and after the read, and the modification is at least `quiet` old (else it
/// waits and reads again). A modification time in the future (a clock that was set back, files
/// unpacked with their times) cannot say how old it is: then two reads `quiet` apart must agree.
/// A file still changing after [`SETTLE_LIMIT`] is an error, so a half-written file is never
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

/// Validates configuration text; `path` is only used in messages and as [`Config::source`].
pub fn parse(path: &Path, text: &str, handlers: &Handlers) -> Result<Config, ConfigError> {
    let locator = Locator { path, text };
    let raw: RawConfig = match serde_path_to_error::deserialize(toml::Deserializer::new(text)) {
        Ok(raw) => raw,
        Err(err) => {
            return Err(ConfigError::Invalid {
                problems: vec![locator.serde_problem(&err)],
            })
        }
    };
    let mut problems = Vec::new();
    let config = Validator {
        locator: &locator,
        handlers,
        problems: &mut problems,
        warnings: Vec::new(),
    }
    .config(raw);
    if problems.is_empty() {
        Ok(config)
    } else {
        problems.sort_by_key(|p| (p.line, p.column));
        Err(ConfigError::Invalid { problems })
    }
}

/// The longest an HTTP request waits when neither `timeout` nor `http.timeout` is set.
pub const DEFAULT_HTTP_TIMEOUT: Duration = Duration::from_secs(30);

/// The shortest default HTTP timeout, however often the job fires.
pub const MIN_DEFAULT_HTTP_TIMEOUT: Duration = Duration::from_secs(1);

/// An HTTP job's timeout when none is set: [`DEFAULT_HTTP_TIMEOUT`], or the job's period when
/// that is shorter (a request still going at the next fire only makes the fires pile up), but
/// at least [`MIN_DEFAULT_HTTP_TIMEOUT`]. A cron job's period is the gap between its next two
/// fires.
fn default_http_timeout(schedule: &Schedule) -> Duration {
    let period = match schedule {
        Schedule::Every(every) => Some(every.period),
        Schedule::Cron(cron) => {
            let first = cron.next_after(chrono::Utc::now());
            let second = first.and_then(|t| cron.next_after(t));
            first.zip(second).and_then(|(a, b)| (b - a).to_std().ok())
        }
    };
    period
        .unwrap_or(DEFAULT_HTTP_TIMEOUT)
        .clamp(MIN_DEFAULT_HTTP_TIMEOUT, DEFAULT_HTTP_TIMEOUT)
}

/// Why the directory of the state file `path` deserves a warning: another user who can write
/// it can delete or replace the state (and so cause or suppress catch-up runs). A sticky
/// directory such as `/tmp` still lets them create names there first.
fn writable_by_others(path: &Path) -> Option<String> {
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

/// The longest single argument or `NAME=value` string `execve` takes on Linux (`MAX_ARG_STRLEN`,
/// 32 pages, counting its terminating NUL).
const MAX_EXEC_STRING: usize = 32 * 4096;

/// Why `execve` would refuse `argv` with `env` on top of the inherited environment (E2BIG on every
/// run), or `None`. A single string over [`MAX_EXEC_STRING`] never fits; all together may use at
/// most half of the system's `ARG_MAX`, leaving the rest for the inherited environment.
fn exec_size_problem(argv: &[String], env: &BTreeMap<String, String>) -> Option<String> {
    let strings = argv
        .iter()
        .map(String::len)
        .chain(env.iter().map(|(k, v)| k.len() + 1 + v.len()));
    let mut total = 0usize;
    for len in strings {
        if len + 1 > MAX_EXEC_STRING {
            return Some(format!(
                "an argument or variable of {} is longer than the {} the kernel passes to a program (execve would fail with E2BIG)",
                bytesize::ByteSize(len as u64),
                bytesize::ByteSize((MAX_EXEC_STRING - 1) as u64),
            ));
        }
        // Each string also takes a pointer in the argv or envp array.
        total += len + 1 + std::mem::size_of::<usize>();
    }
    let arg_max = nix::unistd::sysconf(nix::unistd::SysconfVar::ARG_MAX)
        .ok()
        .flatten()
        .and_then(|n| usize::try_from(n).ok())
        .unwrap_or(2 * 1024 * 1024);
    (total > arg_max / 2).then(|| {
        format!(
            "the arguments and variables take {}, more than half of the system's limit of {} for a program's arguments and environment (ARG_MAX)",
            bytesize::ByteSize(total as u64),
            bytesize::ByteSize(arg_max as u64),
        )
    })
}

// ---------------------------------------------------------------------------------------------
// Phase 1: the raw, spanned shape of the file.

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    daemon: RawDaemon,
    /// `None` when the file has no `[jobs]` table at all (see [`Config::no_jobs_on_purpose`]).
    jobs: Option<BTreeMap<String, Spanned<RawJob>>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawDaemon {
    shutdown_timeout: Option<Spanned<String>>,
    timezone: Option<Spanned<String>>,
    max_uptime: Option<Spanned<String>>,
    state_file: Option<Spanned<String>>,
    max_runs: Option<Spanned<i64>>,
    max_rss: Option<Spanned<String>>,
    http: Option<Spanned<String>>,
    http_token: Option<Spanned<String>>,
    env_clear: Option<bool>,
    env_keep: Option<Spanned<Vec<String>>>,
    env_remove: Option<Vec<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawJob {
    every: Option<Spanned<String>>,
    cron: Option<Spanned<String>>,
    timezone: Option<Spanned<String>>,
    command: Option<Spanned<Vec<String>>>,
    shell: Option<Spanned<String>>,
    http: Option<Spanned<RawHttp>>,
    handler: Option<Spanned<String>>,
    overlap: Option<Spanned<RawOverlap>>,
    max_concurrent: Option<Spanned<i64>>,
    timeout: Option<Spanned<String>>,
    kill_grace: Option<Spanned<String>>,
    cwd: Option<Spanned<String>>,
    env: Option<Spanned<BTreeMap<String, String>>>,
    output: Option<Spanned<OutputMode>>,
    mode: Option<Spanned<EveryMode>>,
    align: Option<Spanned<bool>>,
    jitter: Option<Spanned<String>>,
    spread: Option<Spanned<bool>>,
    run_on_start: Option<bool>,
    on_missed: Option<Spanned<OnMissed>>,
    max_rss: Option<Spanned<String>>,
    retry: Option<Spanned<RawRetry>>,
    on_failure: Option<Spanned<Vec<String>>>,
    user: Option<Spanned<String>>,
    group: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRetry {
    attempts: Spanned<i64>,
    backoff: Option<Spanned<String>>,
    max_backoff: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHttp {
    url: Spanned<String>,
    method: Option<Spanned<String>>,
    #[serde(default)]
    headers: BTreeMap<String, String>,
    body: Option<String>,
    timeout: Option<Spanned<String>>,
}

#[derive(Deserialize, Clone, Copy)]
#[serde(rename_all = "lowercase")]
enum RawOverlap {
    Skip,
    Queue,
    Allow,
    Replace,
}

// ---------------------------------------------------------------------------------------------
// Phase 2: validation into typed values.

/// Turns byte offsets into line/column problems.
struct Locator<'a> {
    path: &'a Path,
    text: &'a str,
}

impl Locator<'_> {
    fn problem(
        &self,
        offset: usize,
        job: Option<&str>,
        key: Option<&str>,
        message: String,
    ) -> Problem {
        let offset = offset.min(self.text.len());
        let before = self.text.get(..offset).unwrap_or(self.text);
        let line = before.matches('\n').count() + 1;
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        let column = before.get(line_start..).map_or(0, |s| s.chars().count()) + 1;
        Problem {
            path: self.path.to_owned(),
            line,
            column,
            job: job.map(str::to_owned),
            key: key.map(str::to_owned),
            message,
        }
    }

    /// A parse error, located by toml's span and named by serde's path (`jobs.NAME.key`).
    fn serde_problem(&self, err: &serde_path_to_error::Error<toml::de::Error>) -> Problem {
        let inner = err.inner();
        let offset = inner.span().map_or(0, |s| s.start);
        // `Spanned` wrappers show up in serde's path under a private name: leave them out.
        let segments: Vec<String> = err
            .path()
            .iter()
            .map(|segment| segment.to_string())
            .filter(|segment| !segment.starts_with("$__serde_spanned"))
            .collect();
        let (job, key) = match segments.as_slice() {
            [jobs, job, rest @ ..] if jobs == "jobs" => (
                Some(job.clone()),
                (!rest.is_empty()).then(|| rest.join(".")),
            ),
            [] => (None, None),
            all => (None, Some(all.join("."))),
        };
        let message = inner.message().trim().to_owned();
        self.problem(offset, job.as_deref(), key.as_deref(), message)
    }
}

struct Validator<'a> {
    locator: &'a Locator<'a>,
    handlers: &'a Handlers,
    problems: &'a mut Vec<Problem>,
    warnings: Vec<Problem>,
}

/// The job and key a value belongs to, for messages.
#[derive(Clone, Copy)]
struct At<'a> {
    job: Option<&'a str>,
    key: &'a str,
}

impl Validator<'_> {
    fn report(&mut self, offset: usize, job: Option<&str>, key: Option<&str>, message: String) {
        let problem = self.locator.problem(offset, job, key, message);
        self.problems.push(problem);
    }

    fn config(&mut self, raw: RawConfig) -> Config {
        let daemon_at = |key| At { job: None, key };
        let shutdown_timeout = raw
            .daemon
            .shutdown_timeout
            .as_ref()
            .and_then(|v| {
                self.duration(
                    v,
                    daemon_at("daemon.shutdown_timeout"),
                    DurationRange::ZERO_OR_MORE,
                )
            })
            .unwrap_or(DEFAULT_SHUTDOWN_TIMEOUT);
        let timezone = raw
            .daemon
            .timezone
            .as_ref()
            .and_then(|v| self.timezone(v, daemon_at("daemon.timezone")))
            .unwrap_or(Tz::UTC);
        let max_uptime = raw.daemon.max_uptime.as_ref().and_then(|v| {
            self.duration(v, daemon_at("daemon.max_uptime"), DurationRange::POSITIVE)
        });
        let state_file = raw.daemon.state_file.as_ref().and_then(|v| {
            let base = self.locator.path.parent().unwrap_or(Path::new("."));
            let path = base.join(v.get_ref());
            if let Some(why) = crate::state::unusable_path(&path) {
                self.report(
                    v.span().start,
                    None,
                    Some("daemon.state_file"),
                    format!("{}: {why}", path.display()),
                );
                return None;
            }
            if let Some(why) = writable_by_others(&path) {
                let warning =
                    self.locator
                        .problem(v.span().start, None, Some("daemon.state_file"), why);
                self.warnings.push(warning);
            }
            Some(path)
        });
        let max_runs =
            raw.daemon
                .max_runs
                .as_ref()
                .and_then(|v| match u64::try_from(*v.get_ref()) {
                    Ok(n) if n > 0 => Some(n),
                    _ => {
                        self.report(
                            v.span().start,
                            None,
                            Some("daemon.max_runs"),
                            "must be a whole number of at least 1".to_owned(),
                        );
                        None
                    }
                });
        let max_rss = raw
            .daemon
            .max_rss
            .as_ref()
            .and_then(|v| self.bytes(v, daemon_at("daemon.max_rss")));
        let http = raw.daemon.http.as_ref().and_then(|v| {
            // A bare port ("9187" or ":9187") means loopback.
            let text = v.get_ref().trim();
            let port_only = text.strip_prefix(':').unwrap_or(text);
            let text = if port_only.parse::<u16>().is_ok() {
                format!("127.0.0.1:{port_only}")
            } else {
                text.to_owned()
            };
            match text.parse::<std::net::SocketAddr>() {
                Ok(addr) => Some(addr),
                Err(e) => {
                    self.report(
                        v.span().start,
                        None,
                        Some("daemon.http"),
                        format!(
                            "invalid address \"{}\": {e} (e.g. \"127.0.0.1:9187\")",
                            v.get_ref()
                        ),
                    );
                    None
                }
            }
        });
        let http_token = raw.daemon.http_token.as_ref().map(|v| v.get_ref().clone());
        if let (Some(addr), Some(v)) = (http, &raw.daemon.http) {
            if !addr.ip().is_loopback() && http_token.as_deref().is_none_or(str::is_empty) {
                self.report(
                    v.span().start,
                    None,
                    Some("daemon.http"),
                    format!("{addr} is not a loopback address: set [daemon] http_token, the bearer token every request must carry"),
                );
            }
        }
        let clear = raw.daemon.env_clear.unwrap_or(false);
        if let (Some(keep), false) = (&raw.daemon.env_keep, clear) {
            self.report(
                keep.span().start,
                None,
                Some("daemon.env_keep"),
                "\"env_keep\" applies with env_clear = true (without it, everything is inherited; use env_remove to take variables out)".to_owned(),
            );
        }
        let env = EnvPolicy {
            clear,
            keep: raw.daemon.env_keep.as_ref().map_or_else(
                || DEFAULT_ENV_KEEP.iter().map(|s| (*s).to_owned()).collect(),
                |keep| keep.get_ref().clone(),
            ),
            remove: raw.daemon.env_remove.clone().unwrap_or_default(),
        };
        let daemon = DaemonSettings {
            shutdown_timeout,
            timezone,
            max_uptime,
            state_file,
            max_runs,
            max_rss,
            http,
            http_token,
            env,
        };
        let mut jobs = BTreeMap::new();
        let no_jobs_on_purpose = raw.jobs.as_ref().is_some_and(BTreeMap::is_empty);
        for (name, job) in raw.jobs.unwrap_or_default() {
            if let Some(spec) = self.job(&name, job, &daemon) {
                jobs.insert(name, Arc::new(spec));
            }
        }
        Config {
            source: self.locator.path.to_owned(),
            daemon,
            jobs,
            warnings: std::mem::take(&mut self.warnings),
            no_jobs_on_purpose,
        }
    }

    fn job(
        &mut self,
        name: &str,
        raw: Spanned<RawJob>,
        daemon: &DaemonSettings,
    ) -> Option<JobSpec> {
        let job_offset = raw.span().start;
        let raw = raw.into_inner();
        let at = |key| At {
            job: Some(name),
            key,
        };
        let problems_before = self.problems.len();

        if name.is_empty()
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        {
            self.report(
                job_offset,
                Some(name),
                None,
                "a job name may contain only ASCII letters, digits, '-', '_' and '.'".to_owned(),
            );
        }

        // Exactly one schedule.
        let timezone = match &raw.timezone {
            Some(v) => self.timezone(v, at("timezone")),
            None => Some(daemon.timezone),
        };
        let schedule = match (&raw.every, &raw.cron) {
            (Some(every), None) => {
                if let Some(v) = &raw.timezone {
                    self.report(
                        v.span().start,
                        Some(name),
                        Some("timezone"),
                        "\"timezone\" applies to cron schedules only, not to \"every\"".to_owned(),
                    );
                }
                let mode = raw
                    .mode
                    .as_ref()
                    .map_or(EveryMode::FixedRate, |m| *m.get_ref());
                let align = raw.align.as_ref().is_some_and(|a| *a.get_ref());
                if let (Some(a), EveryMode::FixedDelay) = (&raw.align, mode) {
                    if *a.get_ref() {
                        self.report(
                            a.span().start,
                            Some(name),
                            Some("align"),
                            "\"align\" needs mode = \"fixed-rate\": a fixed-delay schedule has no grid"
                                .to_owned(),
                        );
                    }
                }
                self.duration(every, at("every"), DurationRange::PERIOD)
                    .map(|period| {
                        Schedule::Every(EverySchedule {
                            period,
                            mode,
                            align,
                        })
                    })
            }
            (None, Some(cron)) => timezone.and_then(|tz| {
                for (key, offset) in [
                    ("mode", raw.mode.as_ref().map(|v| v.span().start)),
                    ("align", raw.align.as_ref().map(|v| v.span().start)),
                ] {
                    if let Some(offset) = offset {
                        self.report(
                            offset,
                            Some(name),
                            Some(key),
                            format!("\"{key}\" applies to \"every\" schedules only"),
                        );
                    }
                }
                CronSchedule::parse(cron.get_ref(), tz)
                    .map_err(|e| {
                        self.report(cron.span().start, Some(name), Some("cron"), e.to_string())
                    })
                    .ok()
                    .map(|c| Schedule::Cron(Box::new(c)))
            }),
            (Some(_), Some(cron)) => {
                self.report(
                    cron.span().start,
                    Some(name),
                    Some("cron"),
                    "a job has exactly one schedule: \"every\" or \"cron\", not both".to_owned(),
                );
                None
            }
            (None, None) => {
                self.report(
                    job_offset,
                    Some(name),
                    None,
                    "a job needs a schedule: \"every\" (e.g. \"10s\") or \"cron\"".to_owned(),
                );
                None
            }
        };

        // Exactly one action.
        let action_spans: Vec<(&str, usize)> = [
            ("command", raw.command.as_ref().map(|v| v.span().start)),
            ("shell", raw.shell.as_ref().map(|v| v.span().start)),
            ("http", raw.http.as_ref().map(|v| v.span().start)),
            ("handler", raw.handler.as_ref().map(|v| v.span().start)),
        ]
        .into_iter()
        .filter_map(|(key, span)| span.map(|s| (key, s)))
        .collect();
        if action_spans.len() > 1 {
            let (key, offset) = action_spans[1];
            let keys: Vec<&str> = action_spans.iter().map(|(k, _)| *k).collect();
            self.report(
                offset,
                Some(name),
                Some(key),
                format!("a job has exactly one action, found {}", keys.join(" and ")),
            );
        } else if action_spans.is_empty() {
            self.report(
                job_offset,
                Some(name),
                None,
                "a job needs an action: \"command\", \"shell\", \"http\" or \"handler\"".to_owned(),
            );
        }
        let is_process = raw.command.is_some() || raw.shell.is_some();
        if !is_process {
            for (key, offset) in [
                ("cwd", raw.cwd.as_ref().map(|v| v.span().start)),
                ("env", raw.env.as_ref().map(|v| v.span().start)),
                ("output", raw.output.as_ref().map(|v| v.span().start)),
                ("max_rss", raw.max_rss.as_ref().map(|v| v.span().start)),
                ("user", raw.user.as_ref().map(|v| v.span().start)),
                ("group", raw.group.as_ref().map(|v| v.span().start)),
            ] {
                if let Some(offset) = offset {
                    self.report(
                        offset,
                        Some(name),
                        Some(key),
                        format!("\"{key}\" applies to \"command\" and \"shell\" jobs only"),
                    );
                }
            }
        }
        let process = |argv: Vec<String>| {
            Action::Process(ProcessSpec {
                argv,
                cwd: raw.cwd.as_ref().map(|v| PathBuf::from(v.get_ref())),
                env: raw
                    .env
                    .as_ref()
                    .map(|v| v.get_ref().clone())
                    .unwrap_or_default(),
                inherit: daemon.env.clone(),
            })
        };
        if let Some(env) = &raw.env {
            if let Some(why) = exec_size_problem(&[], env.get_ref()) {
                self.report(env.span().start, Some(name), Some("env"), why);
            }
        }
        let action = if let Some(command) = &raw.command {
            if command.get_ref().first().is_none_or(|p| p.is_empty()) {
                self.report(
                    command.span().start,
                    Some(name),
                    Some("command"),
                    "the command needs at least a program name".to_owned(),
                );
                None
            } else if let Some(why) = exec_size_problem(command.get_ref(), &BTreeMap::new()) {
                self.report(command.span().start, Some(name), Some("command"), why);
                None
            } else {
                Some(process(command.get_ref().clone()))
            }
        } else if let Some(shell) = &raw.shell {
            if shell.get_ref().trim().is_empty() {
                self.report(
                    shell.span().start,
                    Some(name),
                    Some("shell"),
                    "the shell script is empty".to_owned(),
                );
                None
            } else {
                let argv = vec![
                    "/bin/sh".to_owned(),
                    "-c".to_owned(),
                    shell.get_ref().clone(),
                ];
                match exec_size_problem(&argv, &BTreeMap::new()) {
                    Some(why) => {
                        self.report(shell.span().start, Some(name), Some("shell"), why);
                        None
                    }
                    None => Some(process(argv)),
                }
            }
        } else if let Some(http) = raw.http {
            self.http(name, http).map(Action::Http)
        } else if let Some(handler) = &raw.handler {
            if self.handlers.contains(handler.get_ref()) {
                Some(Action::Handler(handler.get_ref().clone()))
            } else {
                let known = self.handlers.names().collect::<Vec<_>>().join(", ");
                self.report(
                    handler.span().start,
                    Some(name),
                    Some("handler"),
                    format!(
                        "unknown handler \"{}\" (registered: {known})",
                        handler.get_ref()
                    ),
                );
                None
            }
        } else {
            None
        };

        // Overlap policy.
        let max_concurrent = match &raw.max_concurrent {
            Some(v) => match usize::try_from(*v.get_ref())
                .ok()
                .and_then(NonZeroUsize::new)
            {
                Some(n) => Some(n),
                None => {
                    self.report(
                        v.span().start,
                        Some(name),
                        Some("max_concurrent"),
                        "must be a whole number of at least 1".to_owned(),
                    );
                    None
                }
            },
            None => None,
        };
        let overlap = match raw.overlap.as_ref().map(|v| *v.get_ref()) {
            None | Some(RawOverlap::Skip) => Overlap::Skip,
            Some(RawOverlap::Queue) => Overlap::Queue,
            Some(RawOverlap::Allow) => Overlap::Allow { max_concurrent },
            Some(RawOverlap::Replace) => Overlap::Replace,
        };
        if let (Some(v), false) = (
            &raw.max_concurrent,
            matches!(overlap, Overlap::Allow { .. }),
        ) {
            self.report(
                v.span().start,
                Some(name),
                Some("max_concurrent"),
                "\"max_concurrent\" applies only with overlap = \"allow\"".to_owned(),
            );
        }

        let timeout = raw
            .timeout
            .as_ref()
            .and_then(|v| self.duration(v, at("timeout"), DurationRange::POSITIVE));
        let kill_grace = raw
            .kill_grace
            .as_ref()
            .and_then(|v| self.duration(v, at("kill_grace"), DurationRange::ZERO_OR_MORE))
            .unwrap_or(DEFAULT_KILL_GRACE);
        let output = raw
            .output
            .as_ref()
            .map(|v| *v.get_ref())
            .unwrap_or_default();

        let jitter = raw
            .jitter
            .as_ref()
            .and_then(|v| self.duration(v, at("jitter"), DurationRange::POSITIVE))
            .map(|max| Jitter {
                max,
                spread: raw.spread.as_ref().is_some_and(|s| *s.get_ref()),
            });
        if let (Some(spread), None) = (&raw.spread, &raw.jitter) {
            self.report(
                spread.span().start,
                Some(name),
                Some("spread"),
                "\"spread\" needs \"jitter\", the range to spread over (e.g. jitter = \"30s\")"
                    .to_owned(),
            );
        }
        let on_missed = raw
            .on_missed
            .as_ref()
            .map_or(OnMissed::Skip, |v| *v.get_ref());
        if let (Some(v), OnMissed::Once, None) = (&raw.on_missed, on_missed, &daemon.state_file) {
            self.report(
                v.span().start,
                Some(name),
                Some("on_missed"),
                "on_missed = \"once\" needs [daemon] state_file, where the last fire times are kept"
                    .to_owned(),
            );
        }

        let max_rss = raw
            .max_rss
            .as_ref()
            .and_then(|v| self.bytes(v, at("max_rss")));
        let retry = raw
            .retry
            .as_ref()
            .and_then(|v| self.retry(name, v.get_ref()));
        let on_failure = match &raw.on_failure {
            Some(v) if v.get_ref().first().is_none_or(|p| p.is_empty()) => {
                self.report(
                    v.span().start,
                    Some(name),
                    Some("on_failure"),
                    "the on_failure command needs at least a program name".to_owned(),
                );
                None
            }
            Some(v) => match exec_size_problem(v.get_ref(), &BTreeMap::new()) {
                Some(why) => {
                    self.report(v.span().start, Some(name), Some("on_failure"), why);
                    None
                }
                None => Some(v.get_ref().clone()),
            },
            None => None,
        };
        let run_as = match (&raw.user, &raw.group) {
            (Some(user), group) => self.run_as(name, user, group.as_ref()),
            (None, Some(group)) => {
                self.report(
                    group.span().start,
                    Some(name),
                    Some("group"),
                    "\"group\" needs \"user\"".to_owned(),
                );
                None
            }
            (None, None) => None,
        };

        if self.problems.len() != problems_before {
            return None;
        }
        let schedule = schedule?;
        let mut action = action?;
        if let (Action::Http(http), None) = (&mut action, timeout) {
            // A server that accepts and never answers would hold the run, and with
            // `overlap = "skip"` stop the job, forever.
            http.timeout = http.timeout.or(Some(default_http_timeout(&schedule)));
        }
        Some(JobSpec {
            name: name.to_owned(),
            schedule,
            action,
            overlap,
            timeout,
            kill_grace,
            output,
            jitter,
            run_on_start: raw.run_on_start.unwrap_or(false),
            on_missed,
            max_rss,
            retry,
            on_failure,
            run_as,
            env_policy: daemon.env.clone(),
        })
    }

    fn retry(&mut self, job: &str, raw: &RawRetry) -> Option<Retry> {
        let at = |key| At {
            job: Some(job),
            key,
        };
        let attempts = match u32::try_from(*raw.attempts.get_ref()) {
            Ok(n) if n > 0 => Some(n),
            _ => {
                self.report(
                    raw.attempts.span().start,
                    Some(job),
                    Some("retry.attempts"),
                    "must be a whole number of at least 1".to_owned(),
                );
                None
            }
        };
        // A floor on the backoff: a job that fails at once would otherwise retry in a hot loop
        // (`attempts` may be four billion, the next fire a century away).
        let backoff = match &raw.backoff {
            Some(v) => self.duration(v, at("retry.backoff"), DurationRange::PERIOD)?,
            None => Duration::from_secs(1),
        };
        let max_backoff = match &raw.max_backoff {
            Some(v) => {
                let max = self.duration(v, at("retry.max_backoff"), DurationRange::PERIOD)?;
                if max < backoff {
                    self.report(
                        v.span().start,
                        Some(job),
                        Some("retry.max_backoff"),
                        format!(
                            "is shorter than the backoff ({}): the delays start at backoff and double up to max_backoff",
                            humantime::format_duration(backoff)
                        ),
                    );
                    return None;
                }
                max
            }
            None => Duration::from_secs(60).max(backoff),
        };
        Some(Retry {
            attempts: attempts?,
            backoff,
            max_backoff,
        })
    }

    /// Resolves `user` (and `group`) in the user database. Running as another user needs root.
    fn run_as(
        &mut self,
        job: &str,
        user: &Spanned<String>,
        group: Option<&Spanned<String>>,
    ) -> Option<RunAs> {
        use nix::unistd::{getgrouplist, Group, Uid, User};
        let found = match User::from_name(user.get_ref()) {
            Ok(Some(found)) => found,
            Ok(None) => {
                self.report(
                    user.span().start,
                    Some(job),
                    Some("user"),
                    format!("no such user \"{}\"", user.get_ref()),
                );
                return None;
            }
            Err(err) => {
                self.report(
                    user.span().start,
                    Some(job),
                    Some("user"),
                    format!(
                        "cannot look up user \"{}\": the user database failed ({err}); check /etc/nsswitch.conf and its services (LDAP, sssd)",
                        user.get_ref()
                    ),
                );
                return None;
            }
        };
        if !Uid::effective().is_root() && found.uid != Uid::effective() {
            self.report(
                user.span().start,
                Some(job),
                Some("user"),
                format!(
                    "running jobs as \"{}\" needs tickd to run as root (it runs as uid {})",
                    user.get_ref(),
                    Uid::effective()
                ),
            );
            return None;
        }
        let gid = match group {
            Some(group) => match Group::from_name(group.get_ref()) {
                Ok(Some(found)) => found.gid,
                Ok(None) => {
                    self.report(
                        group.span().start,
                        Some(job),
                        Some("group"),
                        format!("no such group \"{}\"", group.get_ref()),
                    );
                    return None;
                }
                Err(err) => {
                    self.report(
                        group.span().start,
                        Some(job),
                        Some("group"),
                        format!(
                            "cannot look up group \"{}\": the group database failed ({err}); check /etc/nsswitch.conf and its services",
                            group.get_ref()
                        ),
                    );
                    return None;
                }
            },
            None => found.gid,
        };
        // A user name from the database holds no NUL; a failure to list the groups is reported,
        // never a run that silently lacks its supplementary groups.
        let groups = std::ffi::CString::new(found.name.clone())
            .map_err(|e| e.to_string())
            .and_then(|name| getgrouplist(&name, gid).map_err(|e| e.to_string()));
        let groups = match groups {
            Ok(groups) => groups,
            Err(err) => {
                self.report(
                    user.span().start,
                    Some(job),
                    Some("user"),
                    format!(
                        "cannot list the groups of user \"{}\" ({err}); its runs would lack their supplementary groups",
                        user.get_ref()
                    ),
                );
                return None;
            }
        };
        Some(RunAs {
            user: found.name,
            uid: found.uid.as_raw(),
            gid: gid.as_raw(),
            groups: groups.into_iter().map(|g| g.as_raw()).collect(),
            home: found.dir,
        })
    }

    fn bytes(&mut self, value: &Spanned<String>, at: At<'_>) -> Option<u64> {
        match value.get_ref().trim().parse::<bytesize::ByteSize>() {
            Ok(size) if size.as_u64() > 0 => Some(size.as_u64()),
            Ok(_) => {
                self.report(
                    value.span().start,
                    at.job,
                    Some(at.key),
                    "must be greater than zero".to_owned(),
                );
                None
            }
            Err(e) => {
                self.report(
                    value.span().start,
                    at.job,
                    Some(at.key),
                    format!(
                        "invalid size \"{}\": {e} (examples: \"50MB\", \"1GiB\")",
                        value.get_ref()
                    ),
                );
                None
            }
        }
    }

    fn http(&mut self, job: &str, raw: Spanned<RawHttp>) -> Option<HttpSpec> {
        let raw = raw.into_inner();
        let url = raw.url.get_ref();
        let url_ok = reqwest::Url::parse(url)
            .map_err(|e| e.to_string())
            .and_then(|u| match u.scheme() {
                "http" | "https" => Ok(()),
                other => Err(format!("scheme \"{other}\" is not http or https")),
            });
        if let Err(why) = url_ok {
            self.report(
                raw.url.span().start,
                Some(job),
                Some("http.url"),
                format!("invalid URL \"{url}\": {why}"),
            );
        }
        let method = match &raw.method {
            None => reqwest::Method::GET,
            Some(m) => {
                match reqwest::Method::from_bytes(m.get_ref().to_ascii_uppercase().as_bytes()) {
                    Ok(method) => method,
                    Err(_) => {
                        self.report(
                            m.span().start,
                            Some(job),
                            Some("http.method"),
                            format!(
                                "invalid HTTP method \"{}\" (e.g. \"GET\", \"POST\")",
                                m.get_ref()
                            ),
                        );
                        reqwest::Method::GET
                    }
                }
            }
        };
        let timeout = raw.timeout.as_ref().and_then(|v| {
            self.duration(
                v,
                At {
                    job: Some(job),
                    key: "http.timeout",
                },
                DurationRange::POSITIVE,
            )
        });
        Some(HttpSpec {
            url: url.clone(),
            method,
            headers: raw.headers,
            body: raw.body,
            timeout,
        })
    }

    fn duration(
        &mut self,
        value: &Spanned<String>,
        at: At<'_>,
        range: DurationRange,
    ) -> Option<Duration> {
        range
            .check(value.get_ref())
            .map_err(|message| self.report(value.span().start, at.job, Some(at.key), message))
            .ok()
    }

    fn timezone(&mut self, value: &Spanned<String>, at: At<'_>) -> Option<Tz> {
        match value.get_ref().parse::<Tz>() {
            Ok(tz) => Some(tz),
            Err(_) => {
                self.report(
                    value.span().start,
                    at.job,
                    Some(at.key),
                    format!(
                        "unknown time zone \"{}\" (use an IANA name such as \"Europe/Berlin\")",
                        value.get_ref()
                    ),
                );
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(text: &str) -> Result<Config, ConfigError> {
        parse(Path::new("jobs.toml"), text, &Handlers::with_builtins())
    }

    /// The single problem of an invalid config, as text.
    fn error(text: &str) -> String {
        match check(text) {
            Ok(_) => panic!("expected an error for:\n{text}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn a_full_config_validates_into_typed_jobs() {
        let config = check(
            r#"
[daemon]
shutdown_timeout = "5s"
timezone = "Europe/Berlin"

[jobs.heartbeat]
every = "200ms"
handler = "log"

[jobs.reports]
cron = "*/10 * * * * *"
timezone = "America/New_York"
command = ["php", "reports.php", "--quick"]
overlap = "queue"
timeout = "5m"
kill_grace = "1s"
cwd = "/tmp"
env = { APP_ENV = "prod" }

[jobs.ping]
cron = "@hourly"
http = { url = "http://127.0.0.1/cron.php", method = "post", headers = { X-A = "1" }, body = "x", timeout = "5s" }
overlap = "allow"
max_concurrent = 2

[jobs.sh]
every = "1h30m"
shell = "echo hi | tr a-z A-Z"
output = "discard"
"#,
        )
        .expect("valid config");
        assert_eq!(config.daemon.shutdown_timeout, Duration::from_secs(5));
        assert_eq!(config.daemon.timezone, chrono_tz::Europe::Berlin);
        let heartbeat = &config.jobs["heartbeat"];
        assert_eq!(
            heartbeat.schedule,
            Schedule::Every(EverySchedule::fixed_rate(Duration::from_millis(200)))
        );
        assert_eq!(heartbeat.action, Action::Handler("log".to_owned()));
        assert_eq!(heartbeat.overlap, Overlap::Skip);
        assert_eq!(heartbeat.kill_grace, DEFAULT_KILL_GRACE);
        let reports = &config.jobs["reports"];
        match &reports.schedule {
            Schedule::Cron(c) => assert_eq!(c.timezone(), chrono_tz::America::New_York),
            other => panic!("unexpected schedule {other:?}"),
        }
        assert_eq!(reports.overlap, Overlap::Queue);
        assert_eq!(reports.timeout, Some(Duration::from_secs(300)));
        match &reports.action {
            Action::Process(p) => {
                assert_eq!(p.argv, ["php", "reports.php", "--quick"]);
                assert_eq!(p.env["APP_ENV"], "prod");
                assert_eq!(p.cwd.as_deref(), Some(Path::new("/tmp")));
            }
            other => panic!("unexpected action {other:?}"),
        }
        match &config.jobs["ping"].action {
            Action::Http(h) => assert_eq!(h.method, reqwest::Method::POST),
            other => panic!("unexpected action {other:?}"),
        }
        assert_eq!(
            config.jobs["ping"].overlap,
            Overlap::Allow {
                max_concurrent: NonZeroUsize::new(2)
            }
        );
        assert_eq!(
            config.jobs["sh"].schedule,
            Schedule::Every(EverySchedule::fixed_rate(Duration::from_secs(5400)))
        );
        // A job that names no zone takes the daemon's.
        match &config.jobs["ping"].schedule {
            Schedule::Cron(c) => assert_eq!(c.timezone(), chrono_tz::Europe::Berlin),
            other => panic!("unexpected schedule {other:?}"),
        }
    }

    #[test]
    fn schedule_options_validate() {
        let config = check(
            r#"
[daemon]
max_uptime = "12h"
state_file = "state/tickd.state"
[jobs.a]
every = "10s"
align = true
jitter = "2s"
spread = true
run_on_start = true
on_missed = "once"
handler = "log"
[jobs.b]
every = "10s"
mode = "fixed-delay"
handler = "log"
"#,
        )
        .expect("valid");
        assert_eq!(
            config.daemon.max_uptime,
            Some(Duration::from_secs(12 * 3600))
        );
        assert_eq!(
            config.daemon.state_file.as_deref(),
            Some(Path::new("state/tickd.state"))
        );
        let a = &config.jobs["a"];
        assert_eq!(
            a.schedule,
            Schedule::Every(EverySchedule {
                period: Duration::from_secs(10),
                mode: EveryMode::FixedRate,
                align: true
            })
        );
        assert_eq!(
            a.jitter,
            Some(Jitter {
                max: Duration::from_secs(2),
                spread: true
            })
        );
        assert!(a.run_on_start);
        assert_eq!(a.on_missed, OnMissed::Once);
        match &config.jobs["b"].schedule {
            Schedule::Every(e) => assert_eq!(e.mode, EveryMode::FixedDelay),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn schedule_option_errors() {
        let msg = error("[jobs.a]\ncron = \"* * * * *\"\nalign = true\nhandler = \"log\"\n");
        assert!(
            msg.contains("job \"a\", key \"align\": \"align\" applies to \"every\""),
            "{msg}"
        );
        let msg = error(
            "[jobs.a]\nevery = \"1s\"\nmode = \"fixed-delay\"\nalign = true\nhandler = \"log\"\n",
        );
        assert!(msg.contains("key \"align\": \"align\" needs mode"), "{msg}");
        let msg = error("[jobs.a]\nevery = \"1s\"\nmode = \"sometimes\"\nhandler = \"log\"\n");
        assert!(msg.contains("key \"mode\""), "{msg}");
        let msg = error("[jobs.a]\nevery = \"1s\"\nspread = true\nhandler = \"log\"\n");
        assert!(
            msg.contains("key \"spread\": \"spread\" needs \"jitter\""),
            "{msg}"
        );
        let msg = error("[jobs.a]\nevery = \"1s\"\njitter = \"0s\"\nhandler = \"log\"\n");
        assert!(
            msg.contains("key \"jitter\": must be greater than zero"),
            "{msg}"
        );
        let msg = error("[jobs.a]\nevery = \"1s\"\non_missed = \"once\"\nhandler = \"log\"\n");
        assert!(msg.contains("jobs.toml:3:13: job \"a\", key \"on_missed\": on_missed = \"once\" needs [daemon] state_file"), "{msg}");
        let msg = error("[jobs.a]\nevery = \"1s\"\non_missed = \"twice\"\nhandler = \"log\"\n");
        assert!(msg.contains("key \"on_missed\""), "{msg}");
        let msg = error("[daemon]\nmax_uptime = \"0s\"\n");
        assert!(
            msg.contains("key \"daemon.max_uptime\": must be greater than zero"),
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

    #[test]
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

    #[test]
    fn unknown_key_names_file_line_column_job_and_key() {
        let msg = error("[jobs.a]\nevery = \"1s\"\nhandler = \"log\"\nevry = \"2s\"\n");
        assert!(msg.starts_with("jobs.toml:4:1: job \"a\""), "{msg}");
        assert!(msg.contains("unknown field `evry`"), "{msg}");
    }

    #[test]
    fn unknown_key_at_top_level_and_in_daemon() {
        let msg = error("[daemon]\nshutdown_timout = \"1s\"\n");
        assert!(msg.starts_with("jobs.toml:2:1:"), "{msg}");
        assert!(msg.contains("unknown field `shutdown_timout`"), "{msg}");
        let msg = error("[jbos.a]\nevery = \"1s\"\n");
        assert!(msg.contains("unknown field `jbos`"), "{msg}");
    }

    #[test]
    fn wrong_type_is_located() {
        let msg = error("[jobs.a]\nevery = 5\nhandler = \"log\"\n");
        assert!(
            msg.starts_with("jobs.toml:2:9: job \"a\", key \"every\""),
            "{msg}"
        );
        assert!(msg.contains("invalid type"), "{msg}");
    }

    #[test]
    fn zero_and_malformed_periods_are_rejected() {
        let msg = error("[jobs.a]\nevery = \"0s\"\nhandler = \"log\"\n");
        assert!(
            msg.starts_with("jobs.toml:2:9: job \"a\", key \"every\""),
            "{msg}"
        );
        assert!(msg.contains("greater than zero"), "{msg}");
        let msg = error("[jobs.a]\nevery = \"-5s\"\nhandler = \"log\"\n");
        assert!(msg.contains("key \"every\": invalid duration"), "{msg}");
        let msg = error("[jobs.a]\nevery = \"soon\"\nhandler = \"log\"\n");
        assert!(msg.contains("invalid duration \"soon\""), "{msg}");
    }

    /// Every duration key, with the table it sits in and a valid rest of the job around it.
    const DURATION_KEYS: &[(&str, &str)] = &[
        ("daemon.shutdown_timeout", "[daemon]\nshutdown_timeout = V\n[jobs.a]\nevery = \"1s\"\nhandler = \"log\"\n"),
        ("daemon.max_uptime", "[daemon]\nmax_uptime = V\n[jobs.a]\nevery = \"1s\"\nhandler = \"log\"\n"),
        ("every", "[jobs.a]\nevery = V\nhandler = \"log\"\n"),
        ("timeout", "[jobs.a]\nevery = \"1s\"\ntimeout = V\nhandler = \"log\"\n"),
        ("kill_grace", "[jobs.a]\nevery = \"1s\"\nkill_grace = V\nhandler = \"log\"\n"),
        ("jitter", "[jobs.a]\nevery = \"1s\"\njitter = V\nhandler = \"log\"\n"),
        ("retry.backoff", "[jobs.a]\nevery = \"1s\"\nretry = { attempts = 1, backoff = V }\nhandler = \"log\"\n"),
        ("retry.max_backoff", "[jobs.a]\nevery = \"1s\"\nretry = { attempts = 1, max_backoff = V }\nhandler = \"log\"\n"),
        ("http.timeout", "[jobs.a]\nevery = \"1s\"\nhttp = { url = \"http://x\", timeout = V }\n"),
    ];

    /// `max_uptime = "300000000000y"` passed `check` and panicked `run` (an `Instant` overflow);
    /// so did every other duration that is ever added to an instant.
    #[test]
    fn durations_over_100_years_are_refused_with_their_range() {
        for (key, template) in DURATION_KEYS {
            for huge in ["300000000000y", "101y", "3155760001s"] {
                let text = template.replace('V', &format!("\"{huge}\""));
                let msg = error(&text);
                assert!(msg.contains(&format!("key \"{key}\"")), "{key}: {msg}");
                assert!(msg.contains("out of range"), "{key}: {msg}");
                assert!(msg.contains("100years"), "{key}: {msg}");
                let line = text.lines().position(|l| l.contains(huge)).expect("line") + 1;
                assert!(
                    msg.starts_with(&format!("jobs.toml:{line}:")),
                    "{key}: {msg}"
                );
            }
            let text = template.replace('V', "\"100y\"");
            assert!(check(&text).is_ok(), "{key} = 100y is the documented bound");
        }
    }

    /// `every = "1ns"` passed `check` and burned a core logging missed fires.
    #[test]
    fn every_has_a_floor_of_one_millisecond() {
        for short in ["1ns", "999us", "999999ns"] {
            let msg = error(&format!(
                "[jobs.a]\nevery = \"{short}\"\nhandler = \"log\"\n"
            ));
            assert!(msg.contains("key \"every\""), "{msg}");
            assert!(msg.contains("out of range: from 1ms to 100years"), "{msg}");
        }
        let config = check("[jobs.a]\nevery = \"1ms\"\nhandler = \"log\"\n").expect("1ms");
        assert_eq!(
            config.jobs["a"].schedule,
            Schedule::Every(EverySchedule::fixed_rate(MIN_PERIOD))
        );
    }

    /// `backoff = "0s"` (or `max_backoff = "0s"`) with many attempts retried a failing job in a
    /// hot loop until its next fire, which may be a century away.
    #[test]
    fn retries_cannot_loop_hot() {
        let msg = error("[jobs.a]\nevery = \"1s\"\nretry = { attempts = 9, backoff = \"0s\" }\nhandler = \"log\"\n");
        assert!(
            msg.contains("key \"retry.backoff\": must be greater than zero"),
            "{msg}"
        );
        let msg = error("[jobs.a]\nevery = \"1s\"\nretry = { attempts = 9, backoff = \"100us\" }\nhandler = \"log\"\n");
        assert!(
            msg.contains("key \"retry.backoff\": \"100us\" is out of range: from 1ms"),
            "{msg}"
        );
        let msg = error("[jobs.a]\nevery = \"1s\"\nretry = { attempts = 9, backoff = \"1s\", max_backoff = \"500ms\" }\nhandler = \"log\"\n");
        assert!(
            msg.contains("key \"retry.max_backoff\": is shorter than the backoff"),
            "{msg}"
        );
    }

    /// A 10 MB argument passed `check` and failed every run with E2BIG.
    #[test]
    fn arguments_or_variables_too_large_for_execve_are_refused() {
        let big = "x".repeat(10 * 1024 * 1024);
        let just_too_long = "x".repeat(MAX_EXEC_STRING);
        let longest = "x".repeat(MAX_EXEC_STRING - 1);
        for (key, job) in [
            ("command", format!("command = [\"echo\", \"{big}\"]")),
            (
                "command",
                format!("command = [\"echo\", \"{just_too_long}\"]"),
            ),
            ("shell", format!("shell = \"echo {big}\"")),
            (
                "env",
                format!("command = [\"env\"]\nenv = {{ BIG = \"{big}\" }}"),
            ),
            (
                "on_failure",
                format!("handler = \"log\"\non_failure = [\"echo\", \"{big}\"]"),
            ),
        ] {
            let msg = error(&format!("[jobs.a]\nevery = \"1s\"\n{job}\n"));
            assert!(
                msg.contains(&format!("key \"{key}\"")),
                "{key}: {}",
                &msg[..200.min(msg.len())]
            );
            assert!(
                msg.contains("E2BIG") || msg.contains("ARG_MAX"),
                "{key}: {}",
                &msg[..200.min(msg.len())]
            );
        }
        // Many arguments that fit one by one but not together.
        let many: Vec<String> = (0..40).map(|_| format!("\"{longest}\"")).collect();
        let msg = error(&format!(
            "[jobs.a]\nevery = \"1s\"\ncommand = [\"echo\", {}]\n",
            many.join(", ")
        ));
        assert!(msg.contains("ARG_MAX"), "{}", &msg[..200.min(msg.len())]);
        // The longest single argument the kernel takes is fine.
        assert!(check(&format!(
            "[jobs.a]\nevery = \"1s\"\ncommand = [\"echo\", \"{longest}\"]\n"
        ))
        .is_ok());
    }

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

    /// An HTTP job had no default timeout: a server that never answers held its run forever.
    #[test]
    fn http_jobs_get_a_default_timeout_no_longer_than_their_period() {
        let timeout_of = |job: &str| {
            let config = check(&format!(
                "[jobs.a]\n{job}\nhttp = {{ url = \"http://x\" }}\n"
            ))
            .expect("valid");
            match &config.jobs["a"].action {
                Action::Http(h) => h.timeout,
                other => panic!("unexpected action {other:?}"),
            }
        };
        let secs = |s| Some(Duration::from_secs(s));
        assert_eq!(timeout_of("every = \"100ms\""), secs(1));
        assert_eq!(timeout_of("every = \"10s\""), secs(10));
        assert_eq!(timeout_of("every = \"1h\""), secs(30));
        assert_eq!(timeout_of("cron = \"*/5 * * * * *\""), secs(5));
        assert_eq!(timeout_of("cron = \"@daily\""), secs(30));
        // A job timeout is the user's choice: no shorter default under it.
        assert_eq!(timeout_of("every = \"10s\"\ntimeout = \"5m\""), None);
        let config =
            check("[jobs.a]\nevery = \"1s\"\nhttp = { url = \"http://x\", timeout = \"2m\" }\n")
                .expect("valid");
        match &config.jobs["a"].action {
            Action::Http(h) => assert_eq!(h.timeout, Some(Duration::from_secs(120))),
            other => panic!("unexpected action {other:?}"),
        }
    }

    /// The method was a `String` that fell back to GET at run time; it is a method type now.
    #[test]
    fn http_method_is_validated_into_a_method() {
        let config =
            check("[jobs.a]\nevery = \"1s\"\nhttp = { url = \"http://x\", method = \"purge\" }\n")
                .expect("an extension method is a method");
        match &config.jobs["a"].action {
            Action::Http(h) => assert_eq!(h.method.as_str(), "PURGE"),
            other => panic!("unexpected action {other:?}"),
        }
        for bad in ["GE T", "", "GET\\n", "(x)"] {
            let msg = error(&format!(
                "[jobs.a]\nevery = \"1s\"\nhttp = {{ url = \"http://x\", method = \"{bad}\" }}\n"
            ));
            assert!(
                msg.contains("key \"http.method\": invalid HTTP method"),
                "{bad}: {msg}"
            );
        }
    }

    #[test]
    fn bad_cron_expression_is_located() {
        let msg = error("[jobs.a]\ncron = \"61 * * * *\"\nhandler = \"log\"\n");
        assert!(
            msg.starts_with("jobs.toml:2:8: job \"a\", key \"cron\""),
            "{msg}"
        );
        assert!(msg.contains("invalid cron expression"), "{msg}");
    }

    #[test]
    fn unknown_zone_is_located() {
        let msg = error(
            "[jobs.a]\ncron = \"* * * * *\"\ntimezone = \"Mars/Olympus\"\nhandler = \"log\"\n",
        );
        assert!(
            msg.starts_with("jobs.toml:3:12: job \"a\", key \"timezone\""),
            "{msg}"
        );
        assert!(msg.contains("unknown time zone"), "{msg}");
        let msg = error("[daemon]\ntimezone = \"Nowhere\"\n");
        assert!(msg.contains("key \"daemon.timezone\""), "{msg}");
    }

    #[test]
    fn unknown_handler_lists_the_registered_ones() {
        let msg = error("[jobs.a]\nevery = \"1s\"\nhandler = \"nope\"\n");
        assert!(
            msg.starts_with("jobs.toml:3:11: job \"a\", key \"handler\""),
            "{msg}"
        );
        assert!(
            msg.contains("unknown handler \"nope\" (registered: log)"),
            "{msg}"
        );
    }

    #[test]
    fn two_schedules_or_two_actions_or_none_are_rejected() {
        let msg = error("[jobs.a]\nevery = \"1s\"\ncron = \"* * * * *\"\nhandler = \"log\"\n");
        assert!(
            msg.contains("job \"a\", key \"cron\": a job has exactly one schedule"),
            "{msg}"
        );
        let msg = error("[jobs.a]\nevery = \"1s\"\nhandler = \"log\"\nshell = \"true\"\n");
        assert!(
            msg.contains("exactly one action, found shell and handler"),
            "{msg}"
        );
        let msg = error("[jobs.a]\nhandler = \"log\"\n");
        assert!(msg.contains("job \"a\": a job needs a schedule"), "{msg}");
        let msg = error("[jobs.a]\nevery = \"1s\"\n");
        assert!(msg.contains("job \"a\": a job needs an action"), "{msg}");
    }

    #[test]
    fn bad_overlap_and_max_concurrent() {
        let msg = error("[jobs.a]\nevery = \"1s\"\nhandler = \"log\"\noverlap = \"sometimes\"\n");
        assert!(msg.contains("job \"a\", key \"overlap\""), "{msg}");
        assert!(msg.contains("unknown variant `sometimes`"), "{msg}");
        let msg = error("[jobs.a]\nevery = \"1s\"\nhandler = \"log\"\nmax_concurrent = 2\n");
        assert!(
            msg.contains("applies only with overlap = \"allow\""),
            "{msg}"
        );
        let msg = error(
            "[jobs.a]\nevery = \"1s\"\nhandler = \"log\"\noverlap = \"allow\"\nmax_concurrent = 0\n",
        );
        assert!(
            msg.contains("key \"max_concurrent\": must be a whole number"),
            "{msg}"
        );
    }

    #[test]
    fn duplicate_job_names_are_toml_errors() {
        let msg = error("[jobs.a]\nevery = \"1s\"\nhandler = \"log\"\n[jobs.a]\nevery = \"2s\"\n");
        assert!(msg.starts_with("jobs.toml:4:"), "{msg}");
        assert!(msg.to_lowercase().contains("duplicate"), "{msg}");
    }

    #[test]
    fn all_problems_are_reported_in_file_order() {
        let msg = error(
            "[jobs.a]\nevery = \"0s\"\nhandler = \"log\"\n[jobs.b]\ncron = \"x\"\nhandler = \"log\"\n",
        );
        let lines: Vec<&str> = msg.lines().collect();
        assert_eq!(lines.len(), 2, "{msg}");
        assert!(lines[0].starts_with("jobs.toml:2:"), "{msg}");
        assert!(lines[1].starts_with("jobs.toml:5:"), "{msg}");
    }

    #[test]
    fn process_only_keys_are_rejected_on_other_actions() {
        let msg = error("[jobs.a]\nevery = \"1s\"\nhandler = \"log\"\ncwd = \"/tmp\"\n");
        assert!(
            msg.contains("key \"cwd\": \"cwd\" applies to \"command\""),
            "{msg}"
        );
    }

    #[test]
    fn bad_http_url_and_method() {
        let msg = error("[jobs.a]\nevery = \"1s\"\nhttp = { url = \"ftp://x\" }\n");
        assert!(msg.contains("key \"http.url\": invalid URL"), "{msg}");
        let msg =
            error("[jobs.a]\nevery = \"1s\"\nhttp = { url = \"http://x\", method = \"GE T\" }\n");
        assert!(msg.contains("key \"http.method\""), "{msg}");
    }

    #[test]
    fn empty_command_and_bad_names() {
        let msg = error("[jobs.a]\nevery = \"1s\"\ncommand = []\n");
        assert!(msg.contains("needs at least a program"), "{msg}");
        let msg = error("[jobs.\"a b\"]\nevery = \"1s\"\nhandler = \"log\"\n");
        assert!(msg.contains("a job name may contain only"), "{msg}");
    }

    #[test]
    fn syntax_errors_are_located() {
        let msg = error("[jobs.a]\nevery = \"1s\nhandler = \"log\"\n");
        assert!(msg.starts_with("jobs.toml:2:"), "{msg}");
    }

    #[test]
    fn invalid_utf8_is_located() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("bad.toml");
        std::fs::write(&path, b"[jobs.a]\nevery = \"1s\xff\"\n").expect("write");
        let msg = load(&path, &Handlers::with_builtins())
            .expect_err("invalid")
            .to_string();
        assert!(
            msg.contains("bad.toml:2:12: the file is not valid UTF-8"),
            "{msg}"
        );
    }

    /// Every file of the corpus is refused with a located message, never a panic.
    #[test]
    fn a_corpus_of_broken_files_is_refused_with_locations() {
        let deep = format!("a = {}1{}", "[".repeat(2000), "]".repeat(2000));
        let mut huge = String::from("[jobs.a]\nevery = \"1s\"\nhandler = \"log\"\n# ");
        huge.push_str(&"x".repeat(10 * 1024 * 1024));
        huge.push_str("\n[jobs.b]\nevery = 1\n");
        let mut many = String::new();
        for i in 0..100_000 {
            many.push_str(&format!("[jobs.j{i}]\nevery = \"1s\"\nhandler = \"log\"\n"));
        }
        many.push_str("[jobs.last]\nevery = \"1s\"\nhandler = \"nope\"\n");
        let corpus: Vec<(&str, String)> = vec![
            ("truncated", "[jobs.a]\nevery = \"1".to_owned()),
            ("truncated table", "[jobs.a".to_owned()),
            ("wrong type", "[jobs.a]\nevery = [1, 2]\nhandler = \"log\"\n".to_owned()),
            ("jobs not a table", "jobs = 3\n".to_owned()),
            ("daemon not a table", "daemon = \"x\"\n".to_owned()),
            ("huge number", "[jobs.a]\nevery = \"1s\"\nhandler = \"log\"\noverlap = \"allow\"\nmax_concurrent = 99999999999999999999\n".to_owned()),
            ("huge duration", "[jobs.a]\nevery = \"99999999999999999999h\"\nhandler = \"log\"\n".to_owned()),
            ("negative count", "[daemon]\nmax_runs = -5\n".to_owned()),
            ("deep nesting", deep),
            ("10 MB", huge),
            ("100k jobs", many),
            ("unknown key in http", "[jobs.a]\nevery = \"1s\"\nhttp = { url = \"http://x\", verb = \"GET\" }\n".to_owned()),
            ("unknown key in retry", "[jobs.a]\nevery = \"1s\"\nhandler = \"log\"\nretry = { attempts = 1, tries = 2 }\n".to_owned()),
            ("reversed range", "[jobs.a]\ncron = \"30-10 * * * *\"\nhandler = \"log\"\n".to_owned()),
            ("out of range", "[jobs.a]\ncron = \"* 25 * * *\"\nhandler = \"log\"\n".to_owned()),
            ("out of range month", "[jobs.a]\ncron = \"* * * 13 *\"\nhandler = \"log\"\n".to_owned()),
            ("bad size", "[jobs.a]\nevery = \"1s\"\nshell = \"true\"\nmax_rss = \"lots\"\n".to_owned()),
            ("no such user", "[jobs.a]\nevery = \"1s\"\nshell = \"true\"\nuser = \"no-such-user-tickd\"\n".to_owned()),
        ];
        for (name, text) in corpus {
            let err = match check(&text) {
                Ok(_) => panic!("{name}: accepted"),
                Err(err) => err,
            };
            let ConfigError::Invalid { problems } = &err else {
                panic!("{name}: {err}");
            };
            assert!(!problems.is_empty(), "{name}");
            assert!(
                problems[0].line >= 1 && problems[0].column >= 1,
                "{name}: {err}"
            );
            let message = err.to_string();
            assert!(message.starts_with("jobs.toml:"), "{name}: {message}");
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(500))]
        /// Random TOML-ish text: an answer (valid or located error), never a panic.
        #[test]
        fn random_text_never_panics(text in "(\\[jobs\\.[a-z]{1,3}\\]\n|[a-z_]{1,12} = (\"[a-z0-9 */@-]{0,12}\"|[0-9-]{1,4}|true|\\[\\]|\\{\\})\n|[\\x00-\\x7f]{0,8}\n){0,12}") {
            match check(&text) {
                Ok(_) => {}
                Err(ConfigError::Invalid { problems }) => {
                    proptest::prop_assert!(problems.iter().all(|p| p.line >= 1 && p.column >= 1));
                }
                Err(other) => proptest::prop_assert!(false, "unexpected {other}"),
            }
        }
    }

    #[test]
    fn a_missing_file_is_a_read_error() {
        let err = load(
            Path::new("/nonexistent/jobs.toml"),
            &Handlers::with_builtins(),
        )
        .expect_err("missing");
        assert!(matches!(err, ConfigError::Read { .. }));
        assert!(err.to_string().contains("/nonexistent/jobs.toml"));
    }
}
