//! The typed configuration that validation builds and the rest of the daemon reads.

use std::collections::BTreeMap;
use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};
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

/// Why a job with `http = ...` is refused by a build without the `http-jobs` feature.
#[cfg(not(feature = "http-jobs"))]
pub(crate) const NO_HTTP_JOBS: &str =
    "this build of tickd runs no http jobs (it was built without the `http-jobs` feature)";
/// Why `[daemon] http` is refused by a build without the `http` feature.
#[cfg(not(feature = "http"))]
pub(crate) const NO_ENDPOINT: &str =
    "this build of tickd has no HTTP endpoint (it was built without the `http` feature)";
/// The shortest default HTTP timeout, however often the job fires.
pub const MIN_DEFAULT_HTTP_TIMEOUT: Duration = Duration::from_secs(1);

/// A validated configuration file.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file it was loaded from.
    pub(in crate::config) source: PathBuf,
    /// Daemon-wide settings.
    pub(in crate::config) daemon: DaemonSettings,
    /// The jobs, by name.
    pub(in crate::config) jobs: BTreeMap<String, Arc<JobSpec>>,
    /// Things that load but deserve a look (a state directory others can write): `tickd check`
    /// prints them, the daemon logs them at start and reload.
    pub(in crate::config) warnings: Vec<Problem>,
    /// The file has an explicit, empty `[jobs]` table. A reload to a file with no jobs is refused
    /// without it: an empty or truncated file (an editor or a `>` redirect caught mid-write) must
    /// not stop every job.
    pub(in crate::config) no_jobs_on_purpose: bool,
    /// The `[cluster]` table: `None` when tickd runs alone.
    pub(in crate::config) cluster: Option<ClusterSettings>,
}

/// The `[cluster]` table: several tickd share one PostgreSQL so that each fire runs once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterSettings {
    /// The database, as a `postgres://` URL (a password may come from `PGPASSWORD` instead).
    pub(in crate::config) postgres: String,
    /// This node's name, unique in the cluster (default: the host name).
    pub(in crate::config) node: String,
    /// The cluster's name: several clusters may share one database.
    pub(in crate::config) name: String,
    /// How far ahead the database confirms ownership to the owner at each renewal.
    pub(in crate::config) window: Duration,
    /// How often the owner renews (and a follower looks for a dead owner).
    pub(in crate::config) renew: Duration,
    /// How long the owner's renewals must have stopped before a follower takes over.
    pub(in crate::config) dead_after: Duration,
    /// How late a slot of a job of 1 s or slower may still run, as a catch-up, on a node that
    /// took over from one that did not run it.
    pub(in crate::config) catch_up: Duration,
    /// How many shards the cluster's jobs fall into (each has an owner of its own).
    pub(in crate::config) shards: u32,
    /// This node's share of the shards, relative to the other nodes' weights.
    pub(in crate::config) weight: u32,
}

impl ClusterSettings {
    /// How many shards the cluster's jobs fall into: each has an owner of its own, and the live
    /// nodes share them out.
    pub fn shards(&self) -> u32 {
        self.shards
    }

    /// This node's share of the shards, relative to the other nodes' weights (a bigger machine
    /// takes more).
    pub fn weight(&self) -> u32 {
        self.weight
    }

    /// The database, as a `postgres://` URL (it may hold a password: never log it whole).
    pub fn postgres(&self) -> &str {
        &self.postgres
    }

    /// This node's name, unique in the cluster.
    pub fn node(&self) -> &str {
        &self.node
    }

    /// The cluster's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// How far ahead the database confirms ownership to the owner at each renewal.
    pub fn window(&self) -> Duration {
        self.window
    }

    /// How often the owner renews (and a follower looks for a dead owner).
    pub fn renew(&self) -> Duration {
        self.renew
    }

    /// How long the owner's renewals must have stopped before a follower takes over.
    pub fn dead_after(&self) -> Duration {
        self.dead_after
    }

    /// How late a slot may still run as a catch-up after a takeover.
    pub fn catch_up(&self) -> Duration {
        self.catch_up
    }
}

/// Where a job runs when tickd runs as a cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// Once per fire in the whole cluster, on the node that owns the cluster.
    #[default]
    Cluster,
    /// On every node (clearing a local cache, rotating local logs).
    Node,
}

impl Scope {
    /// The value as the file spells it.
    pub const fn as_str(self) -> &'static str {
        match self {
            Scope::Cluster => "cluster",
            Scope::Node => "node",
        }
    }
}

/// What becomes of a cluster job's run that was in flight on a node that died.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum OnNodeLoss {
    /// Nothing: the slot ran at most once (its run may have been cut short).
    #[default]
    Skip,
    /// The next owner runs the slot again: at least once (the run may have completed, or may
    /// still be going on a node that was only paused; `TICKD_FIRE_ID` tells the two apart).
    Rerun,
}

impl Config {
    /// This configuration with the endpoint settings (`[daemon] http`, `http_token`) of
    /// `running`: the endpoint stays as it was bound until the next start.
    pub fn with_endpoint_of(mut self, running: &Config) -> Config {
        self.daemon.http = running.daemon.http;
        self.daemon.http_token = running.daemon.http_token.clone();
        self
    }

    /// The file it was loaded from.
    pub fn source(&self) -> &Path {
        &self.source
    }

    /// Daemon-wide settings.
    pub fn daemon(&self) -> &DaemonSettings {
        &self.daemon
    }

    /// The jobs, by name.
    pub fn jobs(&self) -> &BTreeMap<String, Arc<JobSpec>> {
        &self.jobs
    }

    /// Things that load but deserve a look (a state directory others can write): `tickd check`
    /// prints them, the daemon logs them at start and reload.
    pub fn warnings(&self) -> &[Problem] {
        &self.warnings
    }

    /// The file has an explicit, empty `[jobs]` table. A reload to a file with no jobs is refused
    /// without it: an empty or truncated file (an editor or a `>` redirect caught mid-write) must
    /// not stop every job.
    pub fn no_jobs_on_purpose(&self) -> bool {
        self.no_jobs_on_purpose
    }

    /// The `[cluster]` table: `None` when tickd runs alone.
    pub fn cluster(&self) -> Option<&ClusterSettings> {
        self.cluster.as_ref()
    }
}

/// The `[daemon]` table.
#[derive(Debug, Clone, PartialEq)]
pub struct DaemonSettings {
    /// How long SIGTERM/SIGINT waits for runs in flight before stopping them.
    pub(in crate::config) shutdown_timeout: Duration,
    /// The default zone for cron schedules.
    pub(in crate::config) timezone: Tz,
    /// After this long, drain and exit with the recycle code (75) so the process manager starts
    /// a fresh daemon.
    pub(in crate::config) max_uptime: Option<Duration>,
    /// Where the last fire time of `on_missed = "once"` jobs is kept across restarts (a relative
    /// path is relative to the configuration file's directory).
    pub(in crate::config) state_file: Option<PathBuf>,
    /// After this many runs (all jobs together), drain and exit with the recycle code.
    pub(in crate::config) max_runs: Option<u64>,
    /// When the daemon's own resident memory exceeds this many bytes, drain and exit with the
    /// recycle code.
    pub(in crate::config) max_rss: Option<u64>,
    /// Where the HTTP endpoint listens; off when `None`.
    pub(in crate::config) http: Option<std::net::SocketAddr>,
    /// The bearer token the endpoint requires (all routes but `/healthz`).
    pub(in crate::config) http_token: Option<String>,
    /// What jobs inherit of the daemon's environment.
    pub(in crate::config) env: EnvPolicy,
    /// How many ended runs each job keeps in memory for `/jobs/{name}/runs` (0: none).
    pub(in crate::config) history: usize,
    /// How many bytes of each kept run's output (its end) are kept with it (0: none).
    pub(in crate::config) history_output: usize,
    /// Metric series per job, or only totals over all jobs.
    pub(in crate::config) job_metrics: bool,
}

impl DaemonSettings {
    /// How long SIGTERM/SIGINT waits for runs in flight before stopping them.
    pub fn shutdown_timeout(&self) -> Duration {
        self.shutdown_timeout
    }

    /// The default zone for cron schedules.
    pub fn timezone(&self) -> Tz {
        self.timezone
    }

    /// After this long, drain and exit with the recycle code (75) so the process manager starts
    /// a fresh daemon.
    pub fn max_uptime(&self) -> Option<Duration> {
        self.max_uptime
    }

    /// Where the last fire time of `on_missed = "once"` jobs is kept across restarts (a relative
    /// path is relative to the configuration file's directory).
    pub fn state_file(&self) -> Option<&Path> {
        self.state_file.as_deref()
    }

    /// After this many runs (all jobs together), drain and exit with the recycle code.
    pub fn max_runs(&self) -> Option<u64> {
        self.max_runs
    }

    /// When the daemon's own resident memory exceeds this many bytes, drain and exit with the
    /// recycle code.
    pub fn max_rss(&self) -> Option<u64> {
        self.max_rss
    }

    /// Where the HTTP endpoint listens; off when `None`.
    pub fn http(&self) -> Option<std::net::SocketAddr> {
        self.http
    }

    /// The bearer token the endpoint requires (all routes but `/healthz`).
    pub fn http_token(&self) -> Option<&str> {
        self.http_token.as_deref()
    }

    /// What jobs inherit of the daemon's environment.
    pub fn env(&self) -> &EnvPolicy {
        &self.env
    }

    /// Whether the metrics have series per job (`job_name="..."`), or only totals over all
    /// jobs (`[daemon] job_metrics = false`).
    pub fn job_metrics(&self) -> bool {
        self.job_metrics
    }

    /// How many ended runs each job keeps in memory for `/jobs/{name}/runs` (0: none).
    pub fn history(&self) -> usize {
        self.history
    }

    /// How many bytes of each kept run's output (its end) are kept with it; 0 when
    /// [`history`](Self::history) is 0, since there is nowhere to keep it.
    pub fn history_output(&self) -> usize {
        if self.history == 0 {
            0
        } else {
            self.history_output
        }
    }
}

/// Runs each job keeps by default (`[daemon] history`).
pub const DEFAULT_HISTORY: usize = 20;
/// The most runs `[daemon] history` may keep per job.
pub const MAX_HISTORY: usize = 1000;
/// Bytes of output each kept run keeps by default (`[daemon] history_output`).
pub const DEFAULT_HISTORY_OUTPUT: usize = 4 * 1024;
/// The most output `[daemon] history_output` may keep per run.
pub const MAX_HISTORY_OUTPUT: usize = 1024 * 1024;

/// One validated job.
#[derive(Debug, Clone, PartialEq)]
pub struct JobSpec {
    /// The job's name (its table key).
    pub(in crate::config) name: String,
    /// When it fires.
    pub(in crate::config) schedule: Schedule,
    /// What a run does.
    pub(in crate::config) action: Action,
    /// What a fire does while a previous run is still going.
    pub(in crate::config) overlap: Overlap,
    /// A run longer than this is stopped (process group: TERM, then KILL after `kill_grace`).
    pub(in crate::config) timeout: Option<Duration>,
    /// Time between the polite stop request and the forced one.
    pub(in crate::config) kill_grace: Duration,
    /// Where a child's stdout/stderr go.
    pub(in crate::config) output: OutputMode,
    /// What of its runs the log shows.
    pub(in crate::config) log: RunLog,
    /// A delay added before each run.
    pub(in crate::config) jitter: Option<Jitter>,
    /// Run once right after the job is scheduled (daemon start, or the reload that adds it).
    pub(in crate::config) run_on_start: bool,
    /// What to do about fires missed while the daemon was down, stopped or the clock jumped.
    pub(in crate::config) on_missed: OnMissed,
    /// A child run whose process group's resident memory exceeds this many bytes is stopped
    /// like a timeout and fails.
    pub(in crate::config) max_rss: Option<u64>,
    /// Retries of failed runs.
    pub(in crate::config) retry: Option<Retry>,
    /// A command run (argv) when a run has failed for good, for alerting.
    pub(in crate::config) on_failure: Option<Vec<String>>,
    /// The user (and groups) child processes run as; `None`: the daemon's own.
    pub(in crate::config) run_as: Option<Box<RunAs>>,
    /// What this job's processes (and its `on_failure` hook) inherit of the daemon's environment.
    pub(in crate::config) env_policy: EnvPolicy,
    /// With `[cluster]`: once per cluster (the default) or on every node.
    pub(in crate::config) scope: Scope,
    /// With `[cluster]`: whether a run in flight on a node that died runs again.
    pub(in crate::config) on_node_loss: OnNodeLoss,
}

impl JobSpec {
    /// This job with its children's output going to `output` (`tickd exec` shows it on the
    /// terminal).
    pub fn with_output(mut self, output: OutputMode) -> JobSpec {
        self.output = output;
        self
    }

    /// The process of the job's `on_failure` hook, if it has one: its command, run in the job's
    /// working directory with the job's variables and `vars` on top, under the job's
    /// environment policy.
    pub fn failure_hook(
        &self,
        vars: impl IntoIterator<Item = (String, String)>,
    ) -> Option<ProcessSpec> {
        let argv = self.on_failure.clone()?;
        let (mut env, cwd) = match &self.action {
            Action::Process(process) => (process.env.clone(), process.cwd.clone()),
            _ => Default::default(),
        };
        env.extend(vars);
        Some(ProcessSpec {
            argv,
            cwd,
            env,
            inherit: self.env_policy.clone(),
        })
    }

    /// The job's name (its table key).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// When it fires.
    pub fn schedule(&self) -> &Schedule {
        &self.schedule
    }

    /// What a run does.
    pub fn action(&self) -> &Action {
        &self.action
    }

    /// What a fire does while a previous run is still going.
    pub fn overlap(&self) -> Overlap {
        self.overlap
    }

    /// A run longer than this is stopped (process group: TERM, then KILL after `kill_grace`).
    pub fn timeout(&self) -> Option<Duration> {
        self.timeout
    }

    /// Time between the polite stop request and the forced one.
    pub fn kill_grace(&self) -> Duration {
        self.kill_grace
    }

    /// Where a child's stdout/stderr go.
    pub fn output(&self) -> OutputMode {
        self.output
    }

    /// What of its runs the log shows.
    pub fn log(&self) -> RunLog {
        self.log
    }

    /// A delay added before each run.
    pub fn jitter(&self) -> Option<Jitter> {
        self.jitter
    }

    /// Run once right after the job is scheduled (daemon start, or the reload that adds it).
    pub fn run_on_start(&self) -> bool {
        self.run_on_start
    }

    /// What to do about fires missed while the daemon was down, stopped or the clock jumped.
    pub fn on_missed(&self) -> OnMissed {
        self.on_missed
    }

    /// A child run whose process group's resident memory exceeds this many bytes is stopped
    /// like a timeout and fails.
    pub fn max_rss(&self) -> Option<u64> {
        self.max_rss
    }

    /// Retries of failed runs.
    pub fn retry(&self) -> Option<Retry> {
        self.retry
    }

    /// A command run (argv) when a run has failed for good, for alerting.
    pub fn on_failure(&self) -> Option<&[String]> {
        self.on_failure.as_deref()
    }

    /// The user (and groups) child processes run as; `None`: the daemon's own.
    pub fn run_as(&self) -> Option<&RunAs> {
        self.run_as.as_deref()
    }

    /// What this job's processes (and its `on_failure` hook) inherit of the daemon's environment.
    pub fn env_policy(&self) -> &EnvPolicy {
        &self.env_policy
    }

    /// With `[cluster]`: once per cluster (the default) or on every node.
    pub fn scope(&self) -> Scope {
        self.scope
    }

    /// With `[cluster]`: whether a run in flight on a node that died runs again on the next
    /// owner (at least once) or not (at most once, the default).
    pub fn on_node_loss(&self) -> OnNodeLoss {
        self.on_node_loss
    }
}

/// Retries of a failed run: up to `attempts` more runs, `backoff` after the failure and doubling
/// each time up to `max_backoff`. A retry that would reach the next scheduled fire is dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retry {
    /// How many retries at most after a failed run.
    pub(in crate::config) attempts: u32,
    /// The delay before the first retry.
    pub(in crate::config) backoff: Duration,
    /// The longest delay between retries.
    pub(in crate::config) max_backoff: Duration,
}

impl Retry {
    /// A retry policy, if it is one validation would accept: a backoff of at least
    /// [`MIN_PERIOD`](super::MIN_PERIOD) (a shorter one retries in a hot loop) and a longest
    /// backoff not below it.
    pub fn new(attempts: u32, backoff: Duration, max_backoff: Duration) -> Option<Retry> {
        (backoff >= super::MIN_PERIOD && max_backoff >= backoff).then_some(Retry {
            attempts,
            backoff,
            max_backoff,
        })
    }

    /// How many retries at most after a failed run.
    pub fn attempts(&self) -> u32 {
        self.attempts
    }

    /// The delay before the first retry.
    pub fn backoff(&self) -> Duration {
        self.backoff
    }

    /// The longest delay between retries.
    pub fn max_backoff(&self) -> Duration {
        self.max_backoff
    }

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
    pub(in crate::config) user: String,
    /// The user id.
    pub(in crate::config) uid: u32,
    /// The primary group id.
    pub(in crate::config) gid: u32,
    /// Every group id (primary and supplementary), as `initgroups` would set them.
    pub(in crate::config) groups: Vec<u32>,
    /// The user's home directory.
    pub(in crate::config) home: PathBuf,
}

impl RunAs {
    /// The user's name.
    pub fn user(&self) -> &str {
        &self.user
    }

    /// The user id.
    pub fn uid(&self) -> u32 {
        self.uid
    }

    /// The primary group id.
    pub fn gid(&self) -> u32 {
        self.gid
    }

    /// Every group id (primary and supplementary), as `initgroups` would set them.
    pub fn groups(&self) -> &[u32] {
        &self.groups
    }

    /// The user's home directory.
    pub fn home(&self) -> &Path {
        &self.home
    }
}

/// A delay added before each run, so a fleet does not hit the same backend at :00.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Jitter {
    /// Delays are in `[0, max)`.
    pub(in crate::config) max: Duration,
    /// A stable delay per job and machine (`spread = true`) instead of a random one per run.
    pub(in crate::config) spread: bool,
}

impl Jitter {
    /// Delays are in `[0, max)`.
    pub fn max(&self) -> Duration {
        self.max
    }

    /// A stable delay per job and machine (`spread = true`) instead of a random one per run.
    pub fn spread(&self) -> bool {
        self.spread
    }
}

/// What happens to fires that were missed (daemon down, stopped, stalled, wall clock jumped).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum OnMissed {
    /// Missed fires are dropped; the next fire is the next one in the future.
    #[default]
    Skip,
    /// One catch-up run for any number of missed fires (never a burst).
    Once,
}

/// What a run does. The two larger kinds are boxed: a handler job's definition is 300 bytes, not
/// 470 (memory per job, at 100,000 jobs).
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// A child process (`command = [...]`, or `shell = "..."` run by `/bin/sh -c`).
    Process(Box<ProcessSpec>),
    /// An in-process HTTP request (`http = { url = ... }`); success is a 2xx status.
    Http(Box<HttpSpec>),
    /// An in-process handler registered through the library API.
    Handler(String),
}

/// A child process to start for each run.
#[derive(Debug, Clone, PartialEq)]
pub struct ProcessSpec {
    /// Program and arguments; never interpreted by a shell unless the program is the shell.
    pub(in crate::config) argv: Vec<String>,
    /// Working directory; the daemon's own when unset.
    pub(in crate::config) cwd: Option<PathBuf>,
    /// Extra environment variables, on top of what `inherit` lets through.
    pub(in crate::config) env: BTreeMap<String, String>,
    /// Which of the daemon's own environment variables the child gets.
    pub(in crate::config) inherit: EnvPolicy,
}

impl ProcessSpec {
    /// Program and arguments; never interpreted by a shell unless the program is the shell.
    pub fn argv(&self) -> &[String] {
        &self.argv
    }

    /// Working directory; the daemon's own when unset.
    pub fn cwd(&self) -> Option<&Path> {
        self.cwd.as_deref()
    }

    /// Extra environment variables, on top of what `inherit` lets through.
    pub fn env(&self) -> &BTreeMap<String, String> {
        &self.env
    }

    /// Which of the daemon's own environment variables the child gets.
    pub fn inherit(&self) -> &EnvPolicy {
        &self.inherit
    }
}

/// An HTTP request to make for each run.
#[derive(Debug, Clone, PartialEq)]
pub struct HttpSpec {
    /// Absolute `http://` or `https://` URL.
    pub(in crate::config) url: String,
    /// The method, `GET` by default (any token is a valid extension method, e.g. `PURGE`).
    pub(in crate::config) method: http::Method,
    /// Request headers.
    pub(in crate::config) headers: BTreeMap<String, String>,
    /// Request body.
    pub(in crate::config) body: Option<String>,
    /// Timeout of the request itself (the job's `timeout` also applies).
    pub(in crate::config) timeout: Option<Duration>,
}

impl HttpSpec {
    /// Absolute `http://` or `https://` URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The method, `GET` by default (any token is a valid extension method, e.g. `PURGE`).
    pub fn method(&self) -> &http::Method {
        &self.method
    }

    /// Request headers.
    pub fn headers(&self) -> &BTreeMap<String, String> {
        &self.headers
    }

    /// Request body.
    pub fn body(&self) -> Option<&str> {
        self.body.as_deref()
    }

    /// Timeout of the request itself (the job's `timeout` also applies).
    pub fn timeout(&self) -> Option<Duration> {
        self.timeout
    }
}

/// The overlap policy: what a fire does while a previous run of the job is still going.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Overlap {
    /// Skip the fire (counted; logged at info at most once a minute per job, each at debug).
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

/// What of a job's runs the log shows (`log = "runs" | "failures" | "none"`). The metrics and
/// the status count every run whatever it says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum RunLog {
    /// A line when each run starts and one when it ends, and its output (`output = "log"`).
    #[default]
    Runs,
    /// Only the runs that fail or time out: their end, and the output they printed (its last
    /// [`crate::process::HELD_OUTPUT`] bytes, held until the run ends).
    Failures,
    /// No line for any run, nor its output: for jobs that fire so often that their lines would
    /// drown the rest.
    #[serde(rename = "none")]
    Nothing,
}

/// Where a child's output goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default, schemars::JsonSchema)]
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
