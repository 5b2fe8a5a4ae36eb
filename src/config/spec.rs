//! The typed configuration that validation builds and the rest of the daemon reads.

use std::collections::BTreeMap;
use std::num::NonZeroUsize;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use chrono_tz::Tz;
use serde::Deserialize;

use super::env::EnvPolicy;
use super::error::Problem;
use crate::schedule::Schedule;

/// Default for `[daemon] shutdown_timeout`.
pub const DEFAULT_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(30);
/// Default for a job's `kill_grace`.
pub const DEFAULT_KILL_GRACE: Duration = Duration::from_secs(10);

/// The longest an HTTP request waits when neither `timeout` nor `http.timeout` is set.
pub const DEFAULT_HTTP_TIMEOUT: Duration = Duration::from_secs(30);

/// The shortest default HTTP timeout, however often the job fires.
pub const MIN_DEFAULT_HTTP_TIMEOUT: Duration = Duration::from_secs(1);

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
