//! One task per job: it owns the job's schedule state and its runs in flight, and decides what
//! each fire does. Overlap is state, not timing: a fire looks at the runs this task knows are
//! still going and applies the job's policy.
//!
//! The task sleeps until the next due instant (asking the [`Clock`](crate::clock::Clock)), and is
//! otherwise woken only by a run ending, a definition update (reload), a wall-clock step, or its
//! stop token (removal or shutdown).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::clock::Instant;
use crate::config::{JobSpec, Overlap};
use crate::handler::{RunContext, RunId};
use crate::run::{self, Outcome, RunEnv};
use crate::schedule::{grid_offset, next_grid_index, Schedule};

/// The daemon's handle on a job task.
#[derive(Debug)]
pub(crate) struct JobHandle {
    /// The definition the task was last given.
    pub spec: Arc<JobSpec>,
    updates: mpsc::UnboundedSender<Arc<JobSpec>>,
    stop: CancellationToken,
    task: JoinHandle<()>,
}

impl JobHandle {
    /// Starts the task for `spec`. It stops firing when `stop` is cancelled; its runs are spawned
    /// on `runs`, so they outlive it and are drained by the daemon.
    pub fn spawn(
        spec: Arc<JobSpec>,
        env: Arc<RunEnv>,
        runs: TaskTracker,
        stop: CancellationToken,
    ) -> Self {
        let (updates, updates_rx) = mpsc::unbounded_channel();
        let actor = JobActor::new(spec.clone(), env, runs);
        let task = tokio::spawn(actor.run(updates_rx, stop.clone()));
        JobHandle {
            spec,
            updates,
            stop,
            task,
        }
    }

    /// Gives the job a new definition, effective from its next fire. The grid is kept when the
    /// schedule is unchanged.
    pub fn update(&mut self, spec: Arc<JobSpec>) {
        self.spec = spec.clone();
        // The task only ends after `stop`, and then an update has nothing left to do.
        let _ = self.updates.send(spec);
    }

    /// Stops firing; runs in flight go on. Returns the task to await.
    pub fn stop(self) -> JoinHandle<()> {
        self.stop.cancel();
        self.task
    }
}

/// A fire that is due: when on the monotonic clock, and (for calendar schedules) on the wall clock.
#[derive(Debug, Clone, Copy)]
struct Due {
    instant: Instant,
    /// The calendar time, for `cron` schedules; `None` for `every` grids.
    wall: Option<DateTime<Utc>>,
}

/// A message from a run to its job.
#[derive(Debug)]
struct RunEnded {
    run_id: RunId,
}

struct JobActor {
    spec: Arc<JobSpec>,
    env: Arc<RunEnv>,
    runs: TaskTracker,
    /// Where an `every` grid starts (grid point 0).
    anchor: Instant,
    /// The next fire, or `None` when the schedule has no more.
    next: Option<Due>,
    /// The grid index of `next` for `every` schedules.
    next_index: u64,
    /// This job's runs in flight, with the tokens that stop them.
    running: HashMap<RunId, CancellationToken>,
    /// A run waiting for the current ones to end (`queue`, `replace`).
    pending: Option<Due>,
    ended_tx: mpsc::UnboundedSender<RunEnded>,
    ended_rx: mpsc::UnboundedReceiver<RunEnded>,
    /// Fires not run because of the overlap policy.
    skipped: u64,
}

impl JobActor {
    fn new(spec: Arc<JobSpec>, env: Arc<RunEnv>, runs: TaskTracker) -> Self {
        let (ended_tx, ended_rx) = mpsc::unbounded_channel();
        let anchor = env.clock.now();
        let mut actor = JobActor {
            spec,
            env,
            runs,
            anchor,
            next: None,
            next_index: 0,
            running: HashMap::new(),
            pending: None,
            ended_tx,
            ended_rx,
            skipped: 0,
        };
        actor.next = actor.first_due();
        actor
    }

    async fn run(
        mut self,
        mut updates: mpsc::UnboundedReceiver<Arc<JobSpec>>,
        stop: CancellationToken,
    ) {
        tracing::debug!(job = %self.spec.name, schedule = %self.spec.schedule, "job scheduled");
        loop {
            let next = self.next;
            tokio::select! {
                biased;
                _ = stop.cancelled() => break,
                Some(spec) = updates.recv() => self.update(spec),
                Some(ended) = self.ended_rx.recv() => self.run_ended(ended.run_id),
                _ = self.env.clock.wall_clock_changed(), if matches!(next, Some(Due { wall: Some(_), .. })) => {
                    tracing::info!(job = %self.spec.name, "wall clock changed; recomputing the next fire");
                    self.next = self.calendar_due_after(self.env.clock.wall_now());
                }
                _ = sleep_until_due(&self.env, next) => {
                    if let Some(due) = next {
                        self.due(due);
                    }
                }
            }
        }
        if self.pending.take().is_some() {
            tracing::info!(job = %self.spec.name, "job stopped; its pending run is dropped");
        }
        tracing::debug!(job = %self.spec.name, skipped = self.skipped, "job stopped firing");
    }

    /// The timer went off for `due`.
    fn due(&mut self, due: Due) {
        if let Some(wall) = due.wall {
            // Calendar deadlines are converted to monotonic ones when computed; if the wall clock
            // went back since, it is not time yet: sleep again instead of firing early.
            if self.env.clock.wall_now() < wall {
                self.next = Some(Due {
                    instant: self.env.clock.instant_for_wall(wall),
                    wall: Some(wall),
                });
                return;
            }
        }
        self.fire(due);
        self.next = self.due_after(due);
    }

    /// The first fire after the job is (re)scheduled.
    fn first_due(&mut self) -> Option<Due> {
        match &self.spec.schedule {
            Schedule::Every(period) => {
                self.next_index = 1;
                Some(Due {
                    instant: self.anchor + *period,
                    wall: None,
                })
            }
            Schedule::Cron(_) => self.calendar_due_after(self.env.clock.wall_now()),
        }
    }

    /// The fire after `fired`: the next grid point or calendar time in the future. Points missed
    /// while the daemon was stalled or the run was going are skipped, never caught up.
    fn due_after(&mut self, fired: Due) -> Option<Due> {
        match &self.spec.schedule {
            Schedule::Every(period) => {
                let now = self.env.clock.now();
                let index = next_grid_index(*period, now.saturating_duration_since(self.anchor))
                    .max(self.next_index + 1);
                let missed = index - self.next_index - 1;
                if missed > 0 {
                    tracing::warn!(job = %self.spec.name, missed, "fires missed (the daemon was stalled); skipping to the next one");
                }
                self.next_index = index;
                Some(Due {
                    instant: self.anchor + grid_offset(*period, index),
                    wall: None,
                })
            }
            Schedule::Cron(_) => {
                let fired_wall = fired.wall.unwrap_or_else(|| self.env.clock.wall_now());
                self.calendar_due_after(fired_wall.max(self.env.clock.wall_now()))
            }
        }
    }

    fn calendar_due_after(&self, after: DateTime<Utc>) -> Option<Due> {
        let Schedule::Cron(cron) = &self.spec.schedule else {
            return None;
        };
        let next = cron.next_after(after);
        if next.is_none() {
            tracing::warn!(job = %self.spec.name, "the cron expression has no future fire time; the job will not run again");
        }
        next.map(|wall| Due {
            instant: self.env.clock.instant_for_wall(wall),
            wall: Some(wall),
        })
    }

    /// A fire: start a run, or apply the overlap policy.
    fn fire(&mut self, due: Due) {
        let busy = !self.running.is_empty();
        match self.spec.overlap {
            Overlap::Skip if busy => self.skip("the previous run is still going"),
            Overlap::Allow {
                max_concurrent: Some(max),
            } if self.running.len() >= max.get() => self.skip("max_concurrent runs are going"),
            Overlap::Queue if busy => {
                if self.pending.is_some() {
                    self.skip("a run is already queued");
                } else {
                    tracing::debug!(job = %self.spec.name, "previous run still going; run queued");
                    self.pending = Some(due);
                }
            }
            Overlap::Replace if busy => {
                tracing::info!(job = %self.spec.name, "previous run still going; replacing it");
                for cancel in self.running.values() {
                    cancel.cancel();
                }
                self.pending = Some(due);
            }
            _ => self.start_run(due),
        }
    }

    fn skip(&mut self, why: &str) {
        self.skipped += 1;
        tracing::debug!(job = %self.spec.name, skipped_total = self.skipped, "fire skipped: {why}");
    }

    fn run_ended(&mut self, run_id: RunId) {
        self.running.remove(&run_id);
        if self.running.is_empty() {
            if let Some(due) = self.pending.take() {
                self.start_run(due);
            }
        }
    }

    fn start_run(&mut self, due: Due) {
        let env = self.env.clone();
        let clock = &env.clock;
        let run_id = env.next_run_id();
        let cancel = env.stop_runs.child_token();
        self.running.insert(run_id, cancel.clone());
        let started = clock.now();
        let scheduled = due
            .wall
            .unwrap_or_else(|| clock.wall_for_instant(due.instant));
        let lateness = started.saturating_duration_since(due.instant);
        let spec = self.spec.clone();
        tracing::info!(
            job = %spec.name,
            run = %run_id,
            scheduled = %scheduled.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            lateness_ms = millis(lateness),
            "run started"
        );
        let ctx = RunContext {
            job: Arc::from(spec.name.as_str()),
            run_id,
            scheduled,
            cancel,
        };
        let ended = self.ended_tx.clone();
        self.runs.spawn(async move {
            let report = run::execute(&spec, ctx, &env).await;
            let duration = env.clock.now().saturating_duration_since(started);
            let duration_ms = millis(duration);
            let exit_code = report.exit_code.map(i64::from);
            let reason = report.reason.as_deref().unwrap_or("");
            match report.outcome {
                Outcome::Success => tracing::info!(job = %spec.name, run = %run_id, outcome = %report.outcome, duration_ms, exit_code, "run finished"),
                _ => tracing::warn!(job = %spec.name, run = %run_id, outcome = %report.outcome, duration_ms, exit_code, killed = report.killed, reason, "run finished"),
            }
            // The job may have been removed meanwhile; then nobody needs to know.
            let _ = ended.send(RunEnded { run_id });
        });
    }

    fn update(&mut self, spec: Arc<JobSpec>) {
        let schedule_changed = spec.schedule != self.spec.schedule;
        self.spec = spec;
        if schedule_changed {
            tracing::info!(job = %self.spec.name, schedule = %self.spec.schedule, "schedule changed; the grid restarts now");
            self.anchor = self.env.clock.now();
            self.next = self.first_due();
        } else {
            tracing::info!(job = %self.spec.name, "definition changed; effective from the next fire");
        }
    }
}

async fn sleep_until_due(env: &RunEnv, due: Option<Due>) {
    match due {
        Some(due) => env.clock.sleep_until(due.instant).await,
        None => std::future::pending().await,
    }
}

/// Milliseconds with microsecond resolution, for log fields.
fn millis(duration: Duration) -> f64 {
    (duration.as_micros() as f64) / 1000.0
}
