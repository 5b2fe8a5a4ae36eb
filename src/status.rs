//! What the daemon shows the outside world: each job's status (written by its task, read by the
//! HTTP endpoint) and the Prometheus metrics.

use std::sync::atomic::AtomicU64;
use std::sync::{Arc, LazyLock, Mutex, PoisonError};

use chrono::{DateTime, Utc};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use serde::Serialize;

use crate::run::{Outcome, RunReport};

/// A job's status as the endpoint shows it. Written by the job's task only.
#[derive(Debug, Clone, Default, Serialize)]
pub struct JobStatus {
    /// The schedule, as text.
    pub schedule: String,
    /// The next fire, if any (not while paused).
    pub next_fire: Option<DateTime<Utc>>,
    /// Paused through the endpoint: not firing until resumed.
    pub paused: bool,
    /// Runs going now.
    pub running: usize,
    /// Runs by how they ended.
    pub runs: RunCounts,
    /// The last run that ended.
    pub last_run: Option<LastRun>,
    /// When the last successful run started.
    pub last_success: Option<DateTime<Utc>>,
    /// How often the job's task panicked and was started again (a bug in tickd).
    pub task_restarts: u64,
}

/// Runs of a job by outcome, and fires skipped by the overlap policy.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct RunCounts {
    /// Successful runs.
    pub success: u64,
    /// Failed runs.
    pub failure: u64,
    /// Runs stopped at their timeout.
    pub timeout: u64,
    /// Runs stopped by tickd (replaced, or killed at shutdown).
    pub killed: u64,
    /// Fires skipped because a run was still going (or a retry that was dropped).
    pub skipped_overlap: u64,
    /// Fires that passed without their own run because the daemon was stalled (stopped,
    /// suspended, starved) or the wall clock jumped past them; a catch-up run
    /// (`on_missed = "once"`) is counted as a run besides. Estimated from the schedule's rate
    /// around the missed fire.
    pub missed: u64,
}

/// The last run of a job that ended.
#[derive(Debug, Clone, Serialize)]
pub struct LastRun {
    /// Its id.
    pub run_id: u64,
    /// When it started.
    pub started: DateTime<Utc>,
    /// How long it took, in milliseconds.
    pub duration_ms: f64,
    /// How it ended.
    pub outcome: String,
    /// Its exit code (or HTTP status).
    pub exit_code: Option<i32>,
    /// Why it did not succeed.
    pub reason: Option<String>,
}

/// A job's status, shared between its task (writer) and the endpoint (readers).
#[derive(Debug, Clone, Default)]
pub struct SharedStatus(Arc<Mutex<JobStatus>>);

impl SharedStatus {
    /// Changes the status and returns what `change` returns; the lock is held only for
    /// `change` (never across an `.await`).
    pub fn update<R>(&self, change: impl FnOnce(&mut JobStatus) -> R) -> R {
        change(&mut self.0.lock().unwrap_or_else(PoisonError::into_inner))
    }

    /// A copy of the status.
    pub fn snapshot(&self) -> JobStatus {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct JobLabel {
    job: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RunLabels {
    job: String,
    outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabel {
    result: String,
}

/// The `outcome` label values of `tickd_runs_total`, in the order of [`JobMetrics`]' counters:
/// the runs' own outcomes, then the fires an overlap policy skipped.
const RUN_OUTCOMES: [&str; 5] = [
    outcome_label(Outcome::Success),
    outcome_label(Outcome::Failure),
    outcome_label(Outcome::Timeout),
    outcome_label(Outcome::Stopped),
    "skipped_overlap",
];

/// Log lines dropped because the log writer's queue was full (stderr not keeping up), exported by
/// every [`Metrics`] as `tickd_log_lines_dropped_total`.
///
/// A static, not a [`Metrics`] field: what drops lines is the process-wide `tracing` subscriber,
/// which the binary sets up before any daemon (and its [`Metrics`]) exists, and which outlives
/// it. The binary adds to it; a program that embeds the daemon may add its own drops, or leave
/// it at 0.
pub static LOG_LINES_DROPPED: LazyLock<Counter> = LazyLock::new(Counter::default);

/// The Prometheus metrics (the `prometheus-client` crate, text exposition format).
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    runs: Family<RunLabels, Counter>,
    duration: Family<JobLabel, Histogram>,
    lateness: Family<JobLabel, Histogram>,
    missed: Family<JobLabel, Counter>,
    in_flight: Gauge,
    last_success: Family<JobLabel, Gauge<f64, AtomicU64>>,
    reloads: Family<ResultLabel, Counter>,
    rss: Gauge,
    task_restarts: Family<JobLabel, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Registers every metric.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("tickd");
        let runs = Family::<RunLabels, Counter>::default();
        registry.register(
            "runs",
            "Runs by job and outcome (success, failure, timeout, killed, skipped_overlap)",
            runs.clone(),
        );
        let duration = Family::<JobLabel, Histogram>::new_with_constructor(|| {
            Histogram::new([0.001, 0.01, 0.1, 0.5, 1.0, 5.0, 30.0, 120.0, 600.0, 3600.0])
        });
        registry.register(
            "run_duration_seconds",
            "How long runs took, by job",
            duration.clone(),
        );
        let lateness = Family::<JobLabel, Histogram>::new_with_constructor(|| {
            Histogram::new([
                0.00001, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.005, 0.01, 0.1, 1.0,
            ])
        });
        registry.register(
            "fire_lateness_seconds",
            "Time from a run's due instant to its start, by job",
            lateness.clone(),
        );
        let missed = Family::<JobLabel, Counter>::default();
        registry.register(
            "fires_missed",
            "Fires that passed without their own run: the daemon was stalled or the wall clock jumped past them",
            missed.clone(),
        );
        let in_flight = Gauge::default();
        registry.register("runs_in_flight", "Runs going now", in_flight.clone());
        let last_success = Family::<JobLabel, Gauge<f64, AtomicU64>>::default();
        registry.register(
            "last_success_timestamp_seconds",
            "When the last successful run of each job started (Unix time)",
            last_success.clone(),
        );
        let reloads = Family::<ResultLabel, Counter>::default();
        registry.register(
            "config_reloads",
            "Configuration reloads by result (applied, rejected)",
            reloads.clone(),
        );
        let rss = Gauge::default();
        registry.register(
            "process_resident_memory_bytes",
            "The daemon's resident memory",
            rss.clone(),
        );
        let task_restarts = Family::<JobLabel, Counter>::default();
        registry.register(
            "job_task_restarts",
            "Job tasks that panicked (a bug) and were started again, by job",
            task_restarts.clone(),
        );
        registry.register(
            "log_lines_dropped",
            "Log lines dropped because stderr was not keeping up (the log queue was full)",
            LOG_LINES_DROPPED.clone(),
        );
        Metrics {
            task_restarts,
            registry,
            runs,
            duration,
            lateness,
            missed,
            in_flight,
            last_success,
            reloads,
            rss,
        }
    }

    /// Counts a restart of `job`'s task after a panic.
    pub fn job_task_restarted(&self, job: &str) {
        self.task_restarts
            .get_or_create(&JobLabel {
                job: job.to_owned(),
            })
            .inc();
    }

    /// The metrics of one job, looked up once: recording a run then takes no lock and no
    /// allocation (the handles share their values with the registry).
    pub fn for_job(&self, job: &str) -> JobMetrics {
        let label = JobLabel {
            job: job.to_owned(),
        };
        let count = |outcome: &str| {
            self.runs
                .get_or_create(&RunLabels {
                    job: job.to_owned(),
                    outcome: outcome.to_owned(),
                })
                .clone()
        };
        let [success, failure, timeout, killed, skipped] = RUN_OUTCOMES.map(count);
        JobMetrics {
            success,
            failure,
            timeout,
            killed,
            skipped,
            duration: self.duration.get_or_create(&label).clone(),
            lateness: self.lateness.get_or_create(&label).clone(),
            missed: self.missed.get_or_create(&label).clone(),
            last_success: self.last_success.get_or_create(&label).clone(),
            in_flight: self.in_flight.clone(),
        }
    }

    /// Drops a removed job's series, so that reloads which rename or remove jobs do not grow
    /// `/metrics` for ever. Runs of it still in flight record into handles no longer exported.
    pub fn forget_job(&self, job: &str) {
        let label = JobLabel {
            job: job.to_owned(),
        };
        for outcome in RUN_OUTCOMES {
            self.runs.remove(&RunLabels {
                job: job.to_owned(),
                outcome: outcome.to_owned(),
            });
        }
        self.duration.remove(&label);
        self.lateness.remove(&label);
        self.missed.remove(&label);
        self.last_success.remove(&label);
        self.task_restarts.remove(&label);
    }

    /// Exports the group keeper's `tickd_group_keeper_up` and `tickd_group_keeper_restarts_total`
    /// (only a daemon that runs a keeper has them).
    pub fn register_group_keeper(&mut self, keeper: &crate::process::GroupKeeper) {
        let (up, restarts) = keeper.metrics();
        self.registry.register(
            "group_keeper_up",
            "1 while the group keeper (which kills the jobs' process groups should the daemon die) runs",
            up,
        );
        self.registry.register(
            "group_keeper_restarts",
            "Group keepers started again after the previous one died",
            restarts,
        );
    }

    /// A reload was applied (`true`) or rejected.
    pub fn reloaded(&self, applied: bool) {
        let result = if applied { "applied" } else { "rejected" };
        self.reloads
            .get_or_create(&ResultLabel {
                result: result.to_owned(),
            })
            .inc();
    }

    /// The metrics in Prometheus text format.
    pub fn encode(&self) -> String {
        self.rss
            .set(i64::try_from(crate::process::own_rss()).unwrap_or(i64::MAX));
        let mut text = String::new();
        if prometheus_client::encoding::text::encode(&mut text, &self.registry).is_err() {
            text.clear();
        }
        text
    }
}

/// One job's metric handles; see [`Metrics::for_job`].
#[derive(Debug, Clone)]
pub struct JobMetrics {
    success: Counter,
    failure: Counter,
    timeout: Counter,
    killed: Counter,
    skipped: Counter,
    duration: Histogram,
    lateness: Histogram,
    missed: Counter,
    last_success: Gauge<f64, AtomicU64>,
    in_flight: Gauge,
}

impl JobMetrics {
    /// A run started, `lateness` after its due instant.
    pub fn run_started(&self, lateness: std::time::Duration) {
        self.in_flight.inc();
        self.lateness.observe(lateness.as_secs_f64());
    }

    /// A run ended.
    pub fn run_ended(
        &self,
        report: &RunReport,
        duration: std::time::Duration,
        started: DateTime<Utc>,
    ) {
        self.in_flight.dec();
        match report.outcome {
            Outcome::Success => {
                self.success.inc();
                self.last_success
                    .set(started.timestamp_millis() as f64 / 1000.0);
            }
            Outcome::Failure => {
                self.failure.inc();
            }
            Outcome::Timeout => {
                self.timeout.inc();
            }
            Outcome::Stopped => {
                self.killed.inc();
            }
        }
        self.duration.observe(duration.as_secs_f64());
    }

    /// A fire was skipped by the overlap policy.
    pub fn skipped(&self) {
        self.skipped.inc();
    }

    /// `count` fires were missed (see [`RunCounts::missed`]).
    pub fn missed(&self, count: u64) {
        self.missed.inc_by(count);
    }
}

/// The `outcome` label of a run.
pub const fn outcome_label(outcome: Outcome) -> &'static str {
    match outcome {
        Outcome::Success => "success",
        Outcome::Failure => "failure",
        Outcome::Timeout => "timeout",
        Outcome::Stopped => "killed",
    }
}

/// Records a finished run in a job's status.
pub fn record_run(
    status: &mut JobStatus,
    run_id: u64,
    report: &RunReport,
    started: DateTime<Utc>,
    duration_ms: f64,
) {
    status.running = status.running.saturating_sub(1);
    match report.outcome {
        Outcome::Success => {
            status.runs.success += 1;
            status.last_success = Some(started);
        }
        Outcome::Failure => status.runs.failure += 1,
        Outcome::Timeout => status.runs.timeout += 1,
        Outcome::Stopped => status.runs.killed += 1,
    }
    status.last_run = Some(LastRun {
        run_id,
        started,
        duration_ms,
        outcome: outcome_label(report.outcome).to_owned(),
        exit_code: report.exit_code,
        reason: report.reason.clone(),
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_forgotten_job_leaves_no_series_and_others_keep_theirs() {
        let metrics = Metrics::new();
        for job in ["gone", "kept"] {
            let handles = metrics.for_job(job);
            handles.run_started(std::time::Duration::from_micros(50));
            handles.skipped();
            handles.missed(3);
        }
        assert!(metrics.encode().contains("job=\"gone\""));
        metrics.forget_job("gone");
        let text = metrics.encode();
        assert!(!text.contains("job=\"gone\""), "{text}");
        assert!(
            text.contains("tickd_runs_total{job=\"kept\",outcome=\"skipped_overlap\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("tickd_fire_lateness_seconds_count{job=\"kept\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("tickd_fires_missed_total{job=\"kept\"} 3"),
            "{text}"
        );
    }
}
