//! Each job's status as the endpoint, the status report and `tickd status` show it, and its last
//! runs (`/jobs/{name}/runs`, `tickd history`, `tickd logs`): written by the job's task and its
//! runs' tasks, read by the HTTP endpoint.

use std::borrow::Cow;
use std::collections::VecDeque;
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
    /// Runs by how they ended.
    pub runs: RunCounts,
    /// The last run that ended.
    pub last_run: Option<LastRun>,
    /// When the last successful run started.
    pub last_success: Option<DateTime<Utc>>,
    /// How often the job's task panicked and was started again (a bug in tickd).
    pub task_restarts: u64,
    /// The runs going now, by id, with when each started (the status page's "running for"); the
    /// JSON has only their number, as `running`.
    #[serde(rename = "running", serialize_with = "count")]
    pub going: smallvec::SmallVec<[(u64, DateTime<Utc>); 1]>,
}

impl JobStatus {
    /// A run started at `started`: counted in `running` until [`record_run`] records its end.
    pub fn run_started(&mut self, run_id: u64, started: DateTime<Utc>) {
        self.going.push((run_id, started));
    }

    /// How many runs are going now.
    pub fn running(&self) -> usize {
        self.going.len()
    }

    /// When the oldest run going now started, if one is going.
    pub fn running_since(&self) -> Option<DateTime<Utc>> {
        self.going.iter().map(|(_, started)| *started).min()
    }
}

/// Serializes a list as its length.
fn count<T, S: serde::Serializer>(items: &[T], serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_u64(items.len() as u64)
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
    pub outcome: Cow<'static, str>,
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

/// One ended run as the run history keeps it (`GET /jobs/{name}/runs`).
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq)]
pub struct RunRecord {
    /// Its id.
    pub run_id: u64,
    /// When it started.
    pub started: DateTime<Utc>,
    /// When it was due (without jitter).
    pub scheduled: DateTime<Utc>,
    /// How long after it was due it started, in milliseconds.
    pub lateness_ms: f64,
    /// How long it took, in milliseconds.
    pub duration_ms: f64,
    /// How it ended (`success`, `failure`, `timeout`, `stopped`).
    pub outcome: Cow<'static, str>,
    /// A child's exit code, when it exited.
    pub exit_code: Option<i32>,
    /// The signal that ended a child (`TERM`), if one did.
    pub signal: Option<String>,
    /// An HTTP job's response status.
    pub status: Option<u16>,
    /// Why it did not succeed.
    pub reason: Option<String>,
    /// In a cluster: the node that ran it.
    pub node: Option<String>,
    /// The end of a child's output (at most `[daemon] history_output` bytes); `null` for HTTP
    /// jobs, handlers, and runs that printed nothing.
    pub output: Option<String>,
}

/// A job's last runs, newest first: at most `limit` of them, each holding at most
/// `[daemon] history_output` bytes of output (cut before it gets here), so a job's history
/// holds at most `limit × history_output` bytes of output.
#[derive(Debug, Default)]
pub struct RunHistory {
    /// Newest first.
    runs: VecDeque<KeptRun>,
}

/// A [`RunRecord`] as the history keeps it: what most runs have (a handler's, a child's that
/// exited with a code, an HTTP job's status, in a single node) inline and small, the rest behind
/// one pointer. A quarter of the size (48 bytes, not 184): 20 runs of each of 100,000 jobs are
/// 96 MB, not 368; the history is the largest part of a job's memory.
#[derive(Debug)]
struct KeptRun {
    run_id: u64,
    /// `started`, in nanoseconds since 1970 (8 bytes, not chrono's 12); `rest` has both
    /// instants when one is beyond what this holds (before 1677 or after 2262).
    started_ns: i64,
    /// `scheduled`, likewise.
    scheduled_ns: i64,
    rest: Option<Box<KeptRest>>,
    /// The lateness in whole microseconds, as runs measure it (up to 71 minutes); `rest` has
    /// both times when one is not.
    lateness_us: u32,
    /// The duration, likewise.
    duration_us: u32,
    /// The exit code, when `has_exit_code`.
    exit_code: i32,
    has_exit_code: bool,
    /// The HTTP status; 0 (never a status) when there is none or `rest` has it.
    status: u16,
    /// `outcome` as its place in [`KEPT_OUTCOMES`]; [`OUTCOME_IN_REST`] when `rest` has it.
    outcome: u8,
}

/// [`KeptRun::outcome`] when the outcome is not one of [`KEPT_OUTCOMES`].
const OUTCOME_IN_REST: u8 = u8::MAX;

/// `ms` in whole microseconds, when that gives back exactly `ms` and fits 32 bits: a run's times
/// are measured in microseconds and given in milliseconds (`micros / 1000.0`).
fn whole_micros(ms: f64) -> Option<u32> {
    let micros = (ms * 1000.0).round();
    let fits = (0.0..=f64::from(u32::MAX)).contains(&micros) && micros / 1000.0 == ms;
    // The cast is exact: `micros` is whole and within u32's range.
    fits.then_some(micros as u32)
}

/// The outcomes a [`KeptRun`] keeps inline.
const KEPT_OUTCOMES: [&str; 4] = [
    Outcome::Success.as_str(),
    Outcome::Failure.as_str(),
    Outcome::Timeout.as_str(),
    Outcome::Stopped.as_str(),
];

/// The fields of a kept run that most runs do not have.
#[derive(Debug, Default)]
struct KeptRest {
    signal: Option<String>,
    reason: Option<String>,
    node: Option<String>,
    output: Option<String>,
    /// An outcome not in [`KEPT_OUTCOMES`] (read from a newer tickd's state, say).
    outcome: Option<String>,
    /// `(started, scheduled)`, when [`KeptRun`]'s nanoseconds cannot hold them.
    instants: Option<(DateTime<Utc>, DateTime<Utc>)>,
    /// `(lateness_ms, duration_ms)`, when [`KeptRun`]'s microseconds cannot hold them.
    times: Option<(f64, f64)>,
    /// An HTTP status of 0, which [`KeptRun::status`] cannot tell from none.
    status: Option<u16>,
}

impl KeptRun {
    fn of(run: RunRecord) -> Self {
        let outcome = KEPT_OUTCOMES
            .iter()
            .position(|known| *known == run.outcome)
            .and_then(|i| u8::try_from(i).ok());
        let nanos = run
            .started
            .timestamp_nanos_opt()
            .zip(run.scheduled.timestamp_nanos_opt());
        let micros = whole_micros(run.lateness_ms).zip(whole_micros(run.duration_ms));
        let rest = KeptRest {
            signal: run.signal,
            reason: run.reason,
            node: run.node,
            output: run.output,
            outcome: outcome.is_none().then(|| run.outcome.into_owned()),
            instants: nanos.is_none().then_some((run.started, run.scheduled)),
            times: micros
                .is_none()
                .then_some((run.lateness_ms, run.duration_ms)),
            status: run.status.filter(|status| *status == 0),
        };
        let rare = rest.signal.is_some()
            || rest.reason.is_some()
            || rest.node.is_some()
            || rest.output.is_some()
            || rest.outcome.is_some()
            || rest.instants.is_some()
            || rest.times.is_some()
            || rest.status.is_some();
        let (started_ns, scheduled_ns) = nanos.unwrap_or_default();
        KeptRun {
            run_id: run.run_id,
            started_ns,
            scheduled_ns,
            rest: rare.then(|| Box::new(rest)),
            lateness_us: micros.map_or(0, |(lateness, _)| lateness),
            duration_us: micros.map_or(0, |(_, duration)| duration),
            exit_code: run.exit_code.unwrap_or_default(),
            has_exit_code: run.exit_code.is_some(),
            status: run.status.unwrap_or_default(),
            outcome: outcome.unwrap_or(OUTCOME_IN_REST),
        }
    }

    fn record(&self) -> RunRecord {
        let rest = self.rest.as_deref();
        let field = |pick: fn(&KeptRest) -> &Option<String>| rest.and_then(|r| pick(r).clone());
        let (started, scheduled) = rest.and_then(|r| r.instants).unwrap_or((
            DateTime::from_timestamp_nanos(self.started_ns),
            DateTime::from_timestamp_nanos(self.scheduled_ns),
        ));
        let outcome = match KEPT_OUTCOMES.get(usize::from(self.outcome)) {
            Some(known) => Cow::Borrowed(*known),
            None => Cow::Owned(field(|r| &r.outcome).unwrap_or_default()),
        };
        let (lateness_ms, duration_ms) = rest.and_then(|r| r.times).unwrap_or((
            f64::from(self.lateness_us) / 1000.0,
            f64::from(self.duration_us) / 1000.0,
        ));
        let status = match self.status {
            0 => rest.and_then(|r| r.status),
            status => Some(status),
        };
        RunRecord {
            run_id: self.run_id,
            started,
            scheduled,
            lateness_ms,
            duration_ms,
            outcome,
            exit_code: self.has_exit_code.then_some(self.exit_code),
            signal: field(|r| &r.signal),
            status,
            reason: field(|r| &r.reason),
            node: field(|r| &r.node),
            output: field(|r| &r.output),
        }
    }
}

impl RunHistory {
    /// Keeps `run` as the newest with at most the last `output_limit` bytes of its output,
    /// letting the oldest go beyond `limit` runs (0: keeps nothing).
    pub fn record(&mut self, mut run: RunRecord, limit: usize, output_limit: usize) {
        if limit == 0 {
            self.runs.clear();
            return;
        }
        if let Some(output) = &mut run.output {
            crate::process::keep_end(output, output_limit);
            output.shrink_to_fit();
        }
        if run.output.as_deref() == Some("") {
            run.output = None;
        }
        self.runs.truncate(limit - 1);
        if self.runs.capacity() < limit {
            // Once, to its full size: growing it step by step copies it each time.
            self.runs.reserve_exact(limit - self.runs.len());
        }
        self.runs.push_front(KeptRun::of(run));
    }

    /// Copies of the runs kept, newest first.
    pub fn runs(&self) -> impl Iterator<Item = RunRecord> + '_ {
        self.runs.iter().map(KeptRun::record)
    }
}

/// A job's status and run history, shared between its task and runs (writers) and the endpoint
/// (readers). Two locks, so that `/jobs` copies the status without the history's output.
#[derive(Debug, Clone, Default)]
pub struct SharedStatus {
    /// The status: std locks, held only for a change or a copy (never across an `.await`).
    status: Arc<Mutex<JobStatus>>,
    /// The last runs.
    history: Arc<Mutex<RunHistory>>,
}

impl SharedStatus {
    /// Changes the status and returns what `change` returns; the lock is held only for
    /// `change` (never across an `.await`).
    pub fn update<R>(&self, change: impl FnOnce(&mut JobStatus) -> R) -> R {
        change(&mut self.status.lock().unwrap_or_else(PoisonError::into_inner))
    }

    /// Asks the CPU to bring the status and the history's head into its cache (see
    /// `JobCell::read_ahead`).
    pub(crate) fn read_ahead(&self) {
        crate::os::prefetch(Arc::as_ptr(&self.status));
        crate::os::prefetch(Arc::as_ptr(&self.history));
    }

    /// A copy of the status.
    pub fn snapshot(&self) -> JobStatus {
        self.status
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Keeps an ended run in the history, which holds at most `limit` runs of at most
    /// `output_limit` bytes of output each.
    pub fn record_history(&self, run: RunRecord, limit: usize, output_limit: usize) {
        self.history
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .record(run, limit, output_limit);
    }

    /// A copy of the runs kept, newest first.
    pub fn history(&self) -> Vec<RunRecord> {
        self.history
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .runs()
            .collect()
    }
}

/// What the daemon itself is doing, as the status page shows it: its configuration file and
/// when that was loaded, the last reload's result, and why it stops when it does. Written by
/// the supervisor (`daemon::run`), read by the endpoint; a std lock held only for a change or a
/// copy.
#[derive(Debug, Clone)]
pub struct DaemonFacts {
    /// The jobs file the daemon runs (and re-reads on SIGHUP).
    pub config_path: std::path::PathBuf,
    /// When the running configuration was loaded: at start, then at each applied reload.
    pub loaded_at: DateTime<Utc>,
    /// When the daemon started (wall clock), shown beside the uptime.
    pub started_at: DateTime<Utc>,
    /// When the daemon started on the monotonic clock: the uptime is measured from it.
    pub started: crate::clock::Instant,
    /// `[daemon] timezone`: the zone the page shows times in.
    pub timezone: chrono_tz::Tz,
    /// The last reload asked for (SIGHUP), if any since the start.
    pub last_reload: Option<ReloadResult>,
    /// Why the daemon stops, once it does (it then drains: fires nothing, waits for runs).
    pub stopping: Option<String>,
}

/// The result of a reload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReloadResult {
    /// When it was asked for.
    pub at: DateTime<Utc>,
    /// `Ok` with what changed (`2 added, 1 removed, 0 changed, 5 unchanged`), or `Err` with the
    /// problems that made it refused (the running configuration stayed in force).
    pub result: Result<String, String>,
}

/// [`DaemonFacts`] shared between the supervisor and the endpoint.
#[derive(Debug, Clone)]
pub struct SharedDaemonFacts(Arc<Mutex<DaemonFacts>>);

impl SharedDaemonFacts {
    /// Facts starting as `facts`.
    pub fn new(facts: DaemonFacts) -> Self {
        SharedDaemonFacts(Arc::new(Mutex::new(facts)))
    }

    /// Changes the facts; the lock is held only for `change`.
    pub fn update(&self, change: impl FnOnce(&mut DaemonFacts)) {
        change(&mut self.0.lock().unwrap_or_else(PoisonError::into_inner));
    }

    /// A copy of the facts.
    pub fn snapshot(&self) -> DaemonFacts {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

/// A duration in its largest unit: 4s, 12m, 3h, 2d (`tickd status`, the status page).
pub fn relative(duration: chrono::Duration) -> String {
    let seconds = duration.num_seconds().max(0);
    match seconds {
        0..=59 => format!("{seconds}s"),
        60..=3599 => format!("{}m", seconds / 60),
        3600..=86_399 => format!("{}h", seconds / 3600),
        _ => format!("{}d", seconds / 86_400),
    }
}

/// A duration in at most 8 characters: `12ms`, `1.50s`, `2m03s`, `5h07m` (`tickd status`,
/// `tickd history`, the status page).
pub fn short_duration(ms: f64) -> String {
    let secs = (ms / 1000.0) as u64;
    match ms {
        ms if ms < 1000.0 => format!("{ms:.0}ms"),
        ms if ms < 60_000.0 => format!("{:.2}s", ms / 1000.0),
        _ if secs < 3600 => format!("{}m{:02}s", secs / 60, secs % 60),
        _ => format!("{}h{:02}m", secs / 3600, secs % 3600 / 60),
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
    status.going.retain(|(id, _)| *id != run_id);
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
        outcome: Cow::Borrowed(report.outcome.as_str()),
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

    fn record(run_id: u64) -> RunRecord {
        RunRecord {
            run_id,
            started: Utc::now(),
            scheduled: Utc::now(),
            lateness_ms: 0.0,
            duration_ms: 1.0,
            outcome: "success".into(),
            exit_code: Some(0),
            signal: None,
            status: None,
            reason: None,
            node: None,
            output: None,
        }
    }

    #[test]
    fn a_kept_run_is_a_quarter_of_a_run_record() {
        assert!(
            std::mem::size_of::<KeptRun>() <= 48,
            "{} against {}",
            std::mem::size_of::<KeptRun>(),
            std::mem::size_of::<RunRecord>()
        );
    }

    #[test]
    fn a_kept_run_gives_back_every_outcome_and_instant_it_was_given() {
        let mut history = RunHistory::default();
        let mut runs = Vec::new();
        for (i, outcome) in [
            "success",
            "failure",
            "timeout",
            "stopped",
            "from a newer tickd",
        ]
        .into_iter()
        .enumerate()
        {
            let mut run = record(i as u64);
            run.outcome = Cow::Owned(outcome.to_owned());
            run.started = DateTime::from_timestamp(1_800_000_000, 123_456_789).expect("valid");
            runs.push(run);
        }
        // An instant beyond what 64 bits of nanoseconds hold still comes back as it went in.
        runs[4].scheduled = DateTime::from_timestamp(300_000_000_000, 7).expect("valid");
        for run in &runs {
            history.record(run.clone(), 10, 16);
        }
        let kept: Vec<RunRecord> = history.runs().collect();
        runs.reverse();
        assert_eq!(kept, runs);
    }

    /// What the inline fields cannot hold (a time that is not whole microseconds or beyond 71
    /// minutes, an HTTP status of 0, a negative exit code) comes back as it went in.
    #[test]
    fn a_kept_run_gives_back_every_time_code_and_status_it_was_given() {
        let mut history = RunHistory::default();
        let mut runs = Vec::new();
        let cases = [
            (0.0, 0.0, None, None),
            (0.106, 1234.5, Some(0), Some(200)),
            (4_294_967.295, 0.001, Some(-1), Some(0)),
            (4_294_967.296, 9e12, Some(255), None),
            (0.000_1, f64::MAX, None, Some(999)),
            (1.5, 2.25, Some(i32::MIN), Some(u16::MAX)),
        ];
        for (i, (lateness_ms, duration_ms, exit_code, status)) in cases.into_iter().enumerate() {
            runs.push(RunRecord {
                lateness_ms,
                duration_ms,
                exit_code,
                status,
                ..record(i as u64)
            });
        }
        for run in &runs {
            history.record(run.clone(), 10, 16);
        }
        let kept: Vec<RunRecord> = history.runs().collect();
        runs.reverse();
        assert_eq!(kept, runs);
        let boxed = history.runs.iter().filter(|run| run.rest.is_some()).count();
        assert_eq!(boxed, 3, "only the runs beyond the inline fields are boxed");
    }

    #[test]
    fn a_run_keeps_its_rarer_fields_through_the_history() {
        let mut history = RunHistory::default();
        let mut run = record(7);
        run.signal = Some("TERM".into());
        run.reason = Some("timeout reached".into());
        run.node = Some("n1".into());
        run.output = Some("last words".into());
        let newer = record(8);
        history.record(run.clone(), 5, 1024);
        history.record(newer.clone(), 5, 1024);
        let kept: Vec<RunRecord> = history.runs().collect();
        assert_eq!(kept, [newer, run]);
    }

    #[test]
    fn the_history_keeps_the_last_n_runs_newest_first() {
        let status = SharedStatus::default();
        for run_id in 1..=5 {
            status.record_history(record(run_id), 3, 16);
        }
        let ids: Vec<u64> = status.history().iter().map(|r| r.run_id).collect();
        assert_eq!(ids, [5, 4, 3]);
        // A smaller limit (a restart with a new setting) lets the oldest go at the next run.
        status.record_history(record(6), 2, 16);
        let ids: Vec<u64> = status.history().iter().map(|r| r.run_id).collect();
        assert_eq!(ids, [6, 5]);
        status.record_history(record(7), 0, 16);
        assert!(status.history().is_empty(), "0 turns it off");
    }

    #[test]
    fn each_run_keeps_at_most_k_bytes_of_the_end_of_its_output() {
        let status = SharedStatus::default();
        for run_id in 1..=3 {
            let run = RunRecord {
                output: Some(format!("{}end {run_id}\n", "x".repeat(10_000))),
                ..record(run_id)
            };
            status.record_history(run, 2, 8);
        }
        let outputs: Vec<Option<String>> = status.history().into_iter().map(|r| r.output).collect();
        assert_eq!(
            outputs,
            [Some("xxend 3\n".to_owned()), Some("xxend 2\n".to_owned())]
        );
        status.record_history(record(4), 2, 0);
        status.record_history(
            RunRecord {
                output: Some("dropped".into()),
                ..record(5)
            },
            2,
            0,
        );
        assert_eq!(status.history()[0].output, None, "K = 0 keeps no output");
    }

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
            output: None,
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
            output: None,
        });
        assert_eq!(child["signal"], "TERM");
        assert!(child.get("status").is_none());
    }
}
