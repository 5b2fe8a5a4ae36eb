//! Each job's status as the endpoint, the status report and `tickd status` show it: written by the
//! job's task and its runs' tasks, read by the HTTP endpoint.

use std::sync::{Arc, Mutex, PoisonError};

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::action::{Outcome, RunReport};

/// A job's status as the endpoint shows it. Written by the job's task (schedule, fires) and by its
/// runs' tasks as they end.
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

/// Runs of a job by outcome, and the fires, retries and run-now requests that did not run.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct RunCounts {
    /// Successful runs.
    pub success: u64,
    /// Failed runs.
    pub failure: u64,
    /// Runs stopped at their timeout.
    pub timeout: u64,
    /// Runs stopped by tickd (replaced, or stopped at shutdown).
    pub stopped: u64,
    /// Fires skipped because a run was still going (the overlap policy).
    pub skipped_overlap: u64,
    /// Retries of a failed run that were dropped: one would have reached the job's next fire, or
    /// found a run still going.
    pub retries_dropped: u64,
    /// Run-now requests (`POST /jobs/{name}/run`, `tickd run-now`) the overlap policy refused
    /// (answered 409): asked for, not scheduled, so not counted in `skipped_overlap`.
    pub refused: u64,
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
    /// A child's exit code (absent for HTTP jobs, which have `status`, and for handlers).
    pub exit_code: Option<i32>,
    /// The signal that ended a child (`TERM`), if one did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub signal: Option<String>,
    /// An HTTP job's response status.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    /// Why it did not succeed.
    pub reason: Option<String>,
    /// In a cluster: the node that ran it.
    pub node: Option<String>,
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

/// Records a finished run in a job's status.
pub fn record_run(
    status: &mut JobStatus,
    run_id: u64,
    report: &RunReport,
    started: DateTime<Utc>,
    duration_ms: f64,
    node: Option<&str>,
) {
    status.running = status.running.saturating_sub(1);
    match report.outcome {
        Outcome::Success => {
            status.runs.success += 1;
            status.last_success = Some(started);
        }
        Outcome::Failure => status.runs.failure += 1,
        Outcome::Timeout => status.runs.timeout += 1,
        Outcome::Stopped => status.runs.stopped += 1,
    }
    status.last_run = Some(LastRun {
        run_id,
        started,
        duration_ms,
        outcome: report.outcome.as_str().to_owned(),
        exit_code: report.exit_code,
        signal: report.signal_name(),
        status: report.http_status,
        reason: report.reason.clone(),
        node: node.map(str::to_owned),
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An HTTP job's status was shown as `exit_code`; it has its own field now, and a process
    /// job keeps `exit_code` (the endpoint's old field), with `signal` when one ended it.
    #[test]
    fn the_last_run_says_status_for_http_and_exit_code_or_signal_for_a_child() {
        let run = |report: RunReport| {
            let mut status = JobStatus::default();
            record_run(&mut status, 1, &report, chrono::Utc::now(), 1.0, None);
            serde_json::to_value(status.last_run).expect("json")
        };
        let http = run(RunReport {
            outcome: Outcome::Failure,
            exit_code: None,
            signal: None,
            http_status: Some(503),
            reason: Some("HTTP 503".into()),
            forced: false,
        });
        assert_eq!(http["status"], 503);
        assert!(http["exit_code"].is_null());
        let child = run(RunReport {
            outcome: Outcome::Failure,
            exit_code: None,
            signal: Some(15),
            http_status: None,
            reason: Some("killed by signal SIGTERM".into()),
            forced: false,
        });
        assert_eq!(child["signal"], "TERM");
        assert!(child.get("status").is_none());
    }
}
