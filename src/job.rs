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
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::clock::{Instant, Sleep};
use crate::config::{JobSpec, OnMissed, Overlap};
use crate::handler::{RunContext, RunId};
use crate::run::{self, Outcome, RunEnv, RunReport};
use crate::schedule::{
    grid_offset, next_grid_index, offset_past_alignment, stable_delay, EveryMode, Schedule,
};
use crate::status::{record_run, JobMetrics, SharedStatus};

/// The finest step of a cron expression: two of its fires are at least this far apart.
const CRON_RESOLUTION: Duration = Duration::from_secs(1);

/// The longest an `on_failure` hook may run.
const HOOK_TIMEOUT: Duration = Duration::from_secs(60);

/// How many fires `gap` apart fell in `late` (the first at its start): at least one.
fn missed_count(late: Duration, gap: Duration) -> u64 {
    let count = late.as_nanos() / gap.as_nanos().max(1) + 1;
    u64::try_from(count).unwrap_or(u64::MAX)
}

/// Fires a job missed while the daemon was down, from the state file.
#[derive(Debug, Clone, Copy)]
struct MissedWhileDown {
    /// The last fire the state file recorded.
    recorded: DateTime<Utc>,
    /// The latest fire missed since: what the catch-up run stands for.
    latest: DateTime<Utc>,
    /// How many fires were missed.
    count: u64,
    /// Whether `count` is estimated from the rate of the first ones (a long downtime).
    estimated: bool,
}

/// How many calendar fires fall in `[first, until]`, `first` being one: counted one by one up to
/// [`COUNTED_FIRES`], then estimated from their rate, so a state file from long ago costs a few
/// searches, not millions.
fn count_calendar_fires(
    cron: &crate::schedule::CronSchedule,
    first: DateTime<Utc>,
    until: DateTime<Utc>,
) -> (u64, bool) {
    let mut count = 1u64;
    let mut at = first;
    while count < COUNTED_FIRES {
        match cron.next_after(at) {
            Some(next) if next <= until => {
                count += 1;
                at = next;
            }
            _ => return (count, false),
        }
    }
    let counted_span = (at - first).num_seconds().max(1) as f64;
    let rest = (until - at).num_seconds().max(0) as f64;
    let estimate = count as f64 + rest * (count - 1) as f64 / counted_span;
    (estimate as u64, true)
}

/// How many missed calendar fires are counted exactly before the rest is estimated.
const COUNTED_FIRES: u64 = 64;

/// What can be asked of a job task.
#[derive(Debug)]
pub(crate) enum JobCommand {
    /// A new definition (reload).
    Update(Arc<JobSpec>),
    /// Start a run now, subject to the overlap policy.
    RunNow(oneshot::Sender<FireResult>),
    /// Stop firing until resumed.
    Pause,
    /// Fire again, from the next fire after now.
    Resume,
    /// Answer at once: the health check's proof that the task is alive and not blocked.
    Ping(oneshot::Sender<()>),
    /// Panic, as a bug in the task would: for the test of its restart.
    #[cfg(test)]
    Panic,
}

/// What a fire did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FireResult {
    /// A run started.
    Started(RunId),
    /// A run is queued behind the current one (`queue`), or will replace it (`replace`).
    Queued,
    /// Nothing will run: the overlap policy skipped the fire.
    Skipped,
}

/// A handle to talk to a job task from outside (the HTTP endpoint). Cheap to clone.
#[derive(Debug, Clone)]
pub struct JobControl {
    commands: mpsc::UnboundedSender<JobCommand>,
    /// The job's status, written by its task.
    pub status: SharedStatus,
}

impl JobControl {
    /// Asks for a run now; `None` if the job is gone.
    pub async fn run_now(&self) -> Option<FireResult> {
        let (reply, answer) = oneshot::channel();
        self.commands.send(JobCommand::RunNow(reply)).ok()?;
        answer.await.ok()
    }

    /// Pauses (`true`) or resumes the job; `false` if the job is gone.
    pub fn set_paused(&self, paused: bool) -> bool {
        let command = if paused {
            JobCommand::Pause
        } else {
            JobCommand::Resume
        };
        self.commands.send(command).is_ok()
    }

    /// A control whose commands land in the returned receiver, for tests that play the task.
    #[cfg(test)]
    pub(crate) fn detached() -> (Self, mpsc::UnboundedReceiver<JobCommand>) {
        let (commands, receiver) = mpsc::unbounded_channel();
        let status = SharedStatus::default();
        (JobControl { commands, status }, receiver)
    }

    /// Asks the job's task to answer; the receiver yields `Err` if the task is gone. The caller
    /// bounds the wait: a task that never answers is stuck.
    pub(crate) fn ping(&self) -> oneshot::Receiver<()> {
        let (reply, answer) = oneshot::channel();
        // A failed send drops `reply`, so `answer` reports the task gone.
        let _ = self.commands.send(JobCommand::Ping(reply));
        answer
    }
}

/// The daemon's handle on a job task.
#[derive(Debug)]
pub(crate) struct JobHandle {
    /// The definition the task was last given.
    pub spec: Arc<JobSpec>,
    /// For the endpoint.
    pub control: JobControl,
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
        let (commands, commands_rx) = mpsc::unbounded_channel();
        let status = SharedStatus::default();
        let task = tokio::spawn(supervise_actor(
            spec.clone(),
            env,
            runs,
            status.clone(),
            commands_rx,
            stop.clone(),
        ));
        JobHandle {
            spec,
            control: JobControl { commands, status },
            stop,
            task,
        }
    }

    /// Gives the job a new definition, effective from its next fire. The grid is kept when the
    /// schedule is unchanged.
    pub fn update(&mut self, spec: Arc<JobSpec>) {
        self.spec = spec.clone();
        // The task only ends after `stop`, and then an update has nothing left to do.
        let _ = self.control.commands.send(JobCommand::Update(spec));
    }

    /// Stops firing; runs in flight go on. Returns the task to await.
    pub fn stop(self) -> JoinHandle<()> {
        self.stop.cancel();
        self.task
    }
}

/// A fire that is due.
#[derive(Debug, Clone, Copy)]
struct Due {
    /// The fire's monotonic instant (grid point, or calendar time converted), before jitter.
    instant: Instant,
    /// The fire's calendar time: set for `cron` schedules and for catch-up runs.
    wall: Option<DateTime<Utc>>,
    /// The jitter delay added before the run starts.
    delay: Duration,
}

impl Due {
    /// When the run should start.
    fn start_at(&self) -> Instant {
        self.instant + self.delay
    }
}

/// A message from a run to its job.
#[derive(Debug)]
struct RunEnded {
    run_id: RunId,
    /// Which attempt the run was: 0 for a scheduled run, n for the n-th retry.
    attempt: u32,
    report: RunReport,
}

/// A run of this job in flight.
#[derive(Debug)]
struct Running {
    /// Stops it.
    cancel: CancellationToken,
    /// When it started.
    started: Instant,
    /// Fires of the job since it started: a run that outlasts many of them is worth a warning.
    fires_since: u64,
}

/// A run that has been going for this many of its job's fires is reported (and again at ten
/// times as many, and so on): with `overlap = "skip"` each of those fires was lost.
const LONG_RUN_FIRES: u64 = 10;

/// A retry waiting for its time.
#[derive(Debug, Clone, Copy)]
struct PendingRetry {
    at: Instant,
    attempt: u32,
}

struct JobActor {
    spec: Arc<JobSpec>,
    env: Arc<RunEnv>,
    runs: TaskTracker,
    /// Where an `every` grid starts (grid point 0).
    anchor: Instant,
    /// The next fire, or `None` when there is none (a `fixed-delay` job with a run going, or a
    /// cron expression with no future match).
    next: Option<Due>,
    /// The grid index of `next` for fixed-rate `every` schedules.
    next_index: u64,
    /// This job's runs in flight, with the tokens that stop them.
    running: HashMap<RunId, Running>,
    /// A run waiting for the current ones to end (`queue`, `replace`).
    pending: Option<Due>,
    /// A retry of a failed run, waiting for its backoff.
    retry: Option<PendingRetry>,
    ended_tx: mpsc::UnboundedSender<RunEnded>,
    ended_rx: mpsc::UnboundedReceiver<RunEnded>,
    /// Parent of this job's run tokens (a child of the daemon's stop-runs token): creating a
    /// run's token locks this node, not the root that every job shares.
    runs_cancel: CancellationToken,
    /// What the endpoint shows of this job.
    status: SharedStatus,
    /// This job's metric handles.
    metrics: Arc<JobMetrics>,
    /// Paused through the endpoint.
    paused: bool,
    /// The definition last given (reloads), for a restart of the task after a panic.
    latest_spec: Arc<std::sync::Mutex<Arc<JobSpec>>>,
    /// Set while this job's `on_failure` hook runs: at most one at a time, so a job failing
    /// fast cannot pile up hooks (and their descriptors) until other jobs fail with EMFILE.
    hook_running: Arc<std::sync::atomic::AtomicBool>,
    /// Final failures that got no hook because one was running; told to the next hook.
    failures_without_hook: u64,
}

impl JobActor {
    fn new(spec: Arc<JobSpec>, env: Arc<RunEnv>, runs: TaskTracker, status: SharedStatus) -> Self {
        let spec_for_restart = spec.clone();
        let (ended_tx, ended_rx) = mpsc::unbounded_channel();
        let anchor = env.clock.now();
        let runs_cancel = env.stop_runs.child_token();
        let metrics = Arc::new(env.metrics.for_job(&spec.name));
        let mut actor = JobActor {
            spec,
            env,
            runs,
            anchor,
            next: None,
            next_index: 0,
            running: HashMap::new(),
            pending: None,
            retry: None,
            ended_tx,
            ended_rx,
            runs_cancel,
            status,
            metrics,
            paused: false,
            latest_spec: Arc::new(std::sync::Mutex::new(spec_for_restart)),
            hook_running: Arc::default(),
            failures_without_hook: 0,
        };
        actor.restart_schedule();
        actor
    }

    /// Runs the actor until `stop`; `restarted` after a panic of the one before, which already
    /// made the start-up fire.
    async fn run(
        mut self,
        commands: &mut mpsc::UnboundedReceiver<JobCommand>,
        stop: CancellationToken,
        restarted: bool,
    ) {
        let schedule = self.spec.schedule.to_string();
        self.status.update(|s| s.schedule = schedule);
        tracing::debug!(job = %self.spec.name, schedule = %self.spec.schedule, "job scheduled");
        if !restarted {
            if let Some(due) = self.startup_fire() {
                self.fire(due);
            }
        }
        // Long-lived futures, created once: re-registering a cancellation waiter and a timer
        // deadline on every wake-up is measurable at thousands of fires a second.
        let stopped = stop.cancelled();
        tokio::pin!(stopped);
        // Subscribed once: a step while this task is busy elsewhere is kept until it looks.
        let mut wall_steps = self.env.clock.wall_steps();
        let mut timer: Option<(Instant, Sleep)> = None;
        let mut retry_timer: Option<(Instant, Sleep)> = None;
        // What the status shows: (next start, paused).
        let mut published: Option<(Option<Instant>, bool)> = None;
        loop {
            let next = if self.paused { None } else { self.next };
            let start_at = next.map(|due| due.start_at());
            if published != Some((start_at, self.paused)) {
                published = Some((start_at, self.paused));
                let next_fire = next.map(|due| self.scheduled_wall(&due));
                let paused = self.paused;
                self.status.update(|s| {
                    s.next_fire = next_fire;
                    s.paused = paused;
                });
            }
            if timer.as_ref().map(|(at, _)| *at) != start_at {
                timer = start_at.map(|at| (at, self.env.clock.sleep_until(at)));
            }
            // A paused job does not retry either.
            let retry_at = if self.paused {
                None
            } else {
                self.retry.map(|r| r.at)
            };
            if retry_timer.as_ref().map(|(at, _)| *at) != retry_at {
                retry_timer = retry_at.map(|at| (at, self.env.clock.sleep_until(at)));
            }
            tokio::select! {
                biased;
                _ = &mut stopped => break,
                Some(command) = commands.recv() => self.command(command),
                Some(ended) = self.ended_rx.recv() => self.run_ended(ended),
                _ = wait(&mut retry_timer) => {
                    retry_timer = None;
                    if let Some(retry) = self.retry.take() {
                        self.start_retry(retry);
                    }
                }
                _ = wall_steps.changed(), if self.is_calendar() => self.wall_clock_stepped(),
                _ = wait(&mut timer) => {
                    timer = None;
                    if let Some(due) = next {
                        self.due(due);
                    }
                }
            }
        }
        if self.pending.take().is_some() {
            tracing::info!(job = %self.spec.name, "job stopped; its pending run is dropped");
        }
        let skipped = self.status.snapshot().runs.skipped_overlap;
        tracing::debug!(job = %self.spec.name, skipped, "job stopped firing");
    }

    fn is_calendar(&self) -> bool {
        matches!(self.spec.schedule, Schedule::Cron(_))
    }

    /// (Re)starts the schedule from now: a new grid anchor and the first due fire.
    fn restart_schedule(&mut self) {
        let clock = &self.env.clock;
        let now = clock.now();
        self.next = match &self.spec.schedule {
            Schedule::Every(every) => {
                self.anchor = now;
                if every.align {
                    let since_epoch = clock.wall_now().signed_duration_since(DateTime::UNIX_EPOCH);
                    let offset = offset_past_alignment(
                        every.period,
                        since_epoch.to_std().unwrap_or_default(),
                    );
                    self.anchor = now.checked_sub(offset).unwrap_or(now);
                }
                self.next_index = next_grid_index(every.period, now - self.anchor);
                Some(self.with_delay(Due {
                    instant: self.anchor + grid_offset(every.period, self.next_index),
                    wall: None,
                    delay: Duration::ZERO,
                }))
            }
            Schedule::Cron(_) => self.calendar_due_after(clock.wall_now()),
        };
    }

    /// The run to start as soon as the job is scheduled, if any: one catch-up for fires missed
    /// while the daemon was down (`on_missed = "once"`), or the `run_on_start` run.
    fn startup_fire(&mut self) -> Option<Due> {
        let clock = &self.env.clock;
        let now = Due {
            instant: clock.now(),
            wall: None,
            delay: Duration::ZERO,
        };
        if let Some(missed) = self.missed_while_down() {
            let count = if missed.estimated {
                format!("about {}", missed.count)
            } else {
                missed.count.to_string()
            };
            tracing::warn!(
                job = %self.spec.name,
                missed = %count,
                last_recorded = %missed.recorded.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
                latest_missed = %missed.latest.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
                "fires were missed while the daemon was down; running one catch-up"
            );
            self.metrics.missed(missed.count);
            self.status
                .update(|s| s.runs.missed = s.runs.missed.saturating_add(missed.count));
            return Some(Due {
                wall: Some(missed.latest),
                ..now
            });
        }
        self.spec.run_on_start.then_some(now)
    }

    /// The fires missed since the last one recorded in the state file. A recorded time in the
    /// future (a clock that was set back, a hand-edited file) is clamped to now with a warning:
    /// nothing is missed, and the next fire overwrites it.
    fn missed_while_down(&self) -> Option<MissedWhileDown> {
        if self.spec.on_missed != OnMissed::Once {
            return None;
        }
        let recorded = self.env.state.as_ref()?.last_fire(&self.spec.name)?;
        let now = self.env.clock.wall_now();
        if recorded > now {
            tracing::warn!(
                job = %self.spec.name,
                last_recorded = %recorded.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
                "the state file's last fire of this job is in the future (the clock was set back, or the file was edited); no catch-up, counting from now"
            );
            return None;
        }
        // Whole nanoseconds since, without chrono's i64 limit (~292 years).
        let since = (now - recorded).to_std().ok()?;
        match &self.spec.schedule {
            Schedule::Every(every) => {
                let period = every.period.as_nanos().max(1);
                let periods = since.as_nanos() / period;
                if periods == 0 {
                    return None;
                }
                // The latest grid point after `recorded`: now, less the part of a period since.
                let past_it = Duration::from_nanos(
                    u64::try_from(since.as_nanos() % period).unwrap_or(u64::MAX),
                );
                let latest = now - chrono::Duration::from_std(past_it).ok()?;
                Some(MissedWhileDown {
                    recorded,
                    latest,
                    count: u64::try_from(periods).unwrap_or(u64::MAX),
                    estimated: false,
                })
            }
            Schedule::Cron(cron) => {
                let first = cron.next_after(recorded)?;
                if first > now {
                    return None;
                }
                let latest = cron.last_at_or_before(now).unwrap_or(first);
                let (count, estimated) = count_calendar_fires(cron, first, now);
                Some(MissedWhileDown {
                    recorded,
                    latest,
                    count,
                    estimated,
                })
            }
        }
    }

    /// Adds this job's jitter to a due fire.
    fn with_delay(&self, due: Due) -> Due {
        let delay = match self.spec.jitter {
            None => Duration::ZERO,
            Some(jitter) if jitter.spread => {
                stable_delay(&self.env.machine_id, &self.spec.name, jitter.max)
            }
            Some(jitter) => {
                let max_ns = u64::try_from(jitter.max.as_nanos()).unwrap_or(u64::MAX);
                Duration::from_nanos(fastrand::u64(..max_ns))
            }
        };
        Due { delay, ..due }
    }

    /// The timer went off for `due`.
    fn due(&mut self, due: Due) {
        let clock = &self.env.clock;
        if let (Some(wall), true) = (due.wall, self.is_calendar()) {
            // Calendar deadlines are converted to monotonic ones when computed; if the wall clock
            // went back since, it is not time yet: sleep again instead of firing early.
            if clock.wall_now() < wall + due.delay {
                self.next = Some(Due {
                    instant: clock.instant_for_wall(wall),
                    ..due
                });
                return;
            }
        }
        let lateness = clock.now().saturating_duration_since(due.start_at());
        match self.gap_after(&due, lateness) {
            // Superseded: the fire after this one is due too. The daemon was stalled (stopped,
            // suspended, starved): never a burst, at most one catch-up.
            Some(gap) if lateness >= gap => {
                self.fires_missed(due, missed_count(lateness, gap), "the daemon was stalled");
            }
            _ => {
                self.fire(due);
            }
        }
        self.next = self.due_after(due);
    }

    /// The time from `due` to the fire after it; `None` for fixed-delay schedules, which have no
    /// "next" until the run ends. For a calendar fire less than a second late the answer is
    /// "more than `lateness`" without asking the expression: its fires are whole seconds apart,
    /// and the search is the costliest step of a fire when a thousand jobs share a second.
    fn gap_after(&self, due: &Due, lateness: Duration) -> Option<Duration> {
        match &self.spec.schedule {
            Schedule::Every(every) if every.mode == EveryMode::FixedRate => Some(every.period),
            Schedule::Every(_) => None,
            Schedule::Cron(_) if lateness < CRON_RESOLUTION => None,
            Schedule::Cron(cron) => {
                let wall = due.wall?;
                (cron.next_after(wall)? - wall).to_std().ok()
            }
        }
    }

    /// The fire after `fired`: the next grid point or calendar time in the future. Points missed
    /// while the daemon was stalled or the run was going are skipped, never caught up.
    fn due_after(&mut self, fired: Due) -> Option<Due> {
        let clock = &self.env.clock;
        match &self.spec.schedule {
            Schedule::Every(every) if every.mode == EveryMode::FixedRate => {
                let elapsed = clock.now().saturating_duration_since(self.anchor);
                self.next_index = next_grid_index(every.period, elapsed).max(self.next_index + 1);
                Some(self.with_delay(Due {
                    instant: self.anchor + grid_offset(every.period, self.next_index),
                    wall: None,
                    delay: Duration::ZERO,
                }))
            }
            // Fixed delay: the next fire is set when the run ends (see `run_ended`); if the fire
            // started no run, count from now.
            Schedule::Every(every) => self
                .running
                .is_empty()
                .then(|| self.fixed_delay_due(every.period)),
            Schedule::Cron(_) => {
                let fired_wall = fired.wall.unwrap_or_else(|| clock.wall_now());
                self.calendar_due_after(fired_wall.max(clock.wall_now()))
            }
        }
    }

    fn fixed_delay_due(&self, period: Duration) -> Due {
        self.with_delay(Due {
            instant: self.env.clock.now() + period,
            wall: None,
            delay: Duration::ZERO,
        })
    }

    fn calendar_due_after(&self, after: DateTime<Utc>) -> Option<Due> {
        let Schedule::Cron(cron) = &self.spec.schedule else {
            return None;
        };
        let next = cron.next_after(after);
        if next.is_none() {
            tracing::warn!(job = %self.spec.name, "the cron expression has no future fire time; the job will not run again");
        }
        next.map(|wall| {
            self.with_delay(Due {
                instant: self.env.clock.instant_for_wall(wall),
                wall: Some(wall),
                delay: Duration::ZERO,
            })
        })
    }

    /// The wall clock was stepped: recompute the calendar fire from the new time. A step forward
    /// past the due fire is a miss: one catch-up with `on_missed = "once"`, none otherwise.
    fn wall_clock_stepped(&mut self) {
        let wall_now = self.env.clock.wall_now();
        if let Some(
            due @ Due {
                wall: Some(wall), ..
            },
        ) = self.next
        {
            if wall_now >= wall {
                let past = (wall_now - wall).to_std().unwrap_or_default();
                let count = match self.gap_after(&due, past) {
                    Some(gap) => missed_count(past, gap),
                    None => 1,
                };
                self.fires_missed(due, count, "the wall clock jumped past them");
            } else {
                tracing::info!(job = %self.spec.name, "wall clock changed; recomputing the next fire");
            }
        }
        self.next = self.calendar_due_after(wall_now);
    }

    /// `count` fires up to `latest` passed without a run: counted, logged once, and caught up
    /// by a single run of `latest` with `on_missed = "once"`; never a burst.
    fn fires_missed(&mut self, latest: Due, count: u64, cause: &str) {
        self.metrics.missed(count);
        self.status
            .update(|s| s.runs.missed = s.runs.missed.saturating_add(count));
        match self.spec.on_missed {
            OnMissed::Skip => tracing::warn!(
                job = %self.spec.name,
                missed = count,
                "fires missed ({cause}); skipping to the next one"
            ),
            OnMissed::Once => {
                tracing::warn!(
                    job = %self.spec.name,
                    missed = count,
                    "fires missed ({cause}); running one catch-up"
                );
                self.fire(latest);
            }
        }
    }

    fn command(&mut self, command: JobCommand) {
        match command {
            JobCommand::Update(spec) => self.update(spec),
            JobCommand::RunNow(reply) => {
                let now = Due {
                    instant: self.env.clock.now(),
                    wall: None,
                    delay: Duration::ZERO,
                };
                tracing::info!(job = %self.spec.name, "run requested through the endpoint");
                let _ = reply.send(self.fire(now));
            }
            JobCommand::Pause => {
                tracing::info!(job = %self.spec.name, "paused");
                self.paused = true;
            }
            JobCommand::Resume if self.paused => {
                tracing::info!(job = %self.spec.name, "resumed");
                self.paused = false;
                // Fires that came due while paused are dropped: go on from now.
                if let Some(due) = self.next {
                    if due.start_at() <= self.env.clock.now() {
                        self.next = self.due_after(due);
                    }
                }
            }
            JobCommand::Resume => {}
            JobCommand::Ping(reply) => {
                let _ = reply.send(());
            }
            #[cfg(test)]
            JobCommand::Panic => panic!("a bug in the job task"),
        }
    }

    /// A fire: start a run, or apply the overlap policy.
    fn fire(&mut self, due: Due) -> FireResult {
        if self.spec.on_missed == OnMissed::Once {
            if let Some(state) = &self.env.state {
                state.record(&self.spec.name, self.scheduled_wall(&due));
            }
        }
        self.note_long_runs();
        let busy = !self.running.is_empty();
        match self.spec.overlap {
            Overlap::Skip if busy => self.skip("the previous run is still going"),
            Overlap::Allow {
                max_concurrent: Some(max),
            } if self.running.len() >= max.get() => self.skip("max_concurrent runs are going"),
            Overlap::Queue if busy => {
                if self.pending.is_some() {
                    self.skip("a run is already queued")
                } else {
                    tracing::debug!(job = %self.spec.name, "previous run still going; run queued");
                    self.pending = Some(due);
                    FireResult::Queued
                }
            }
            Overlap::Replace if busy => {
                tracing::info!(job = %self.spec.name, "previous run still going; replacing it");
                for run in self.running.values() {
                    run.cancel.cancel();
                }
                self.pending = Some(due);
                FireResult::Queued
            }
            _ => FireResult::Started(self.start_run(due)),
        }
    }

    /// Counts a fire against each run in flight and warns about a run that has outlasted
    /// [`LONG_RUN_FIRES`] (then 10x, 100x ...) fires: a hung HTTP call or script would otherwise
    /// only show as skipped fires at debug level.
    fn note_long_runs(&mut self) {
        if self.running.is_empty() {
            return;
        }
        let now = self.env.clock.now();
        for (run_id, run) in &mut self.running {
            run.fires_since += 1;
            let fires = run.fires_since;
            let mut threshold = LONG_RUN_FIRES;
            while threshold < fires {
                threshold = threshold.saturating_mul(10);
            }
            if fires == threshold {
                let going =
                    Duration::from_secs(now.saturating_duration_since(run.started).as_secs());
                tracing::warn!(
                    job = %self.spec.name,
                    run = %run_id,
                    fires,
                    going_for = %humantime::format_duration(going),
                    "a run has been going for {fires} fires of its job; set a timeout if it hangs"
                );
            }
        }
    }

    fn skip(&mut self, why: &str) -> FireResult {
        self.metrics.skipped();
        let skipped_total = self.status.update(|s| {
            s.runs.skipped_overlap += 1;
            s.runs.skipped_overlap
        });
        tracing::debug!(job = %self.spec.name, skipped_total, "fire skipped: {why}");
        FireResult::Skipped
    }

    fn run_ended(&mut self, ended: RunEnded) {
        self.running.remove(&ended.run_id);
        if matches!(ended.report.outcome, Outcome::Failure | Outcome::Timeout) {
            self.run_failed(&ended);
        }
        if !self.running.is_empty() {
            return;
        }
        if let Some(due) = self.pending.take() {
            self.start_run(due);
        } else if let Schedule::Every(every) = &self.spec.schedule {
            if every.mode == EveryMode::FixedDelay && self.next.is_none() {
                self.next = Some(self.fixed_delay_due(every.period));
            }
        }
    }

    /// A run failed: schedule a retry if the job has attempts left and it would come before the
    /// next scheduled fire; otherwise the failure is final and the `on_failure` hook runs.
    fn run_failed(&mut self, ended: &RunEnded) {
        if let Some(policy) = self.spec.retry {
            if ended.attempt < policy.attempts {
                let attempt = ended.attempt + 1;
                let at = self.env.clock.now() + policy.delay(attempt);
                let next_fire = self.next.map(|due| due.start_at());
                if next_fire.is_none_or(|next| at < next) {
                    tracing::info!(
                        job = %self.spec.name,
                        run = %ended.run_id,
                        attempt,
                        delay = %humantime::format_duration(policy.delay(attempt)),
                        "run failed; retrying"
                    );
                    self.retry = Some(PendingRetry { at, attempt });
                    return;
                }
                self.skip("a retry would reach the next scheduled fire");
                tracing::warn!(job = %self.spec.name, run = %ended.run_id, attempt, "retry dropped: it would reach the next scheduled fire");
            }
        }
        self.spawn_failure_hook(ended);
    }

    /// Starts a retry, unless a run of the job is going (then it is dropped, like an overlap).
    fn start_retry(&mut self, retry: PendingRetry) {
        if !self.running.is_empty() {
            self.skip("a retry found a run still going");
            tracing::warn!(job = %self.spec.name, attempt = retry.attempt, "retry dropped: a run is still going");
            return;
        }
        let due = Due {
            instant: retry.at,
            wall: None,
            delay: Duration::ZERO,
        };
        self.start_attempt(due, retry.attempt);
    }

    /// Runs the job's `on_failure` command (with TICKD_JOB, TICKD_RUN_ID, TICKD_EXIT_CODE and
    /// TICKD_REASON in its environment, the job's working directory and user) on the run tracker,
    /// so a shutdown drains it too.
    fn spawn_failure_hook(&mut self, ended: &RunEnded) {
        use std::sync::atomic::Ordering;
        let Some(argv) = self.spec.on_failure.clone() else {
            return;
        };
        if self.hook_running.swap(true, Ordering::AcqRel) {
            self.failures_without_hook += 1;
            tracing::debug!(job = %self.spec.name, run = %ended.run_id, "on_failure hook still running; this failure is told to the next one");
            return;
        }
        let hook_running = self.hook_running.clone();
        let failures_without_hook = std::mem::take(&mut self.failures_without_hook);
        let env = self.env.clone();
        let job = self.spec.name.clone();
        let mut vars = match &self.spec.action {
            crate::config::Action::Process(p) => p.env.clone(),
            _ => Default::default(),
        };
        vars.insert("TICKD_JOB".to_owned(), job.clone());
        vars.insert("TICKD_RUN_ID".to_owned(), ended.run_id.to_string());
        vars.insert(
            "TICKD_EXIT_CODE".to_owned(),
            ended
                .report
                .exit_code
                .map(|c| c.to_string())
                .unwrap_or_default(),
        );
        vars.insert(
            "TICKD_REASON".to_owned(),
            ended.report.reason.clone().unwrap_or_default(),
        );
        vars.insert(
            "TICKD_FAILURES_WITHOUT_HOOK".to_owned(),
            failures_without_hook.to_string(),
        );
        // The hook runs where and as whom the job runs.
        let cwd = match &self.spec.action {
            crate::config::Action::Process(p) => p.cwd.clone(),
            _ => None,
        };
        let spec = crate::config::ProcessSpec {
            argv,
            cwd,
            env: vars,
            inherit: self.spec.env_policy.clone(),
        };
        let run_as = self.spec.run_as.clone();
        let run_id = ended.run_id;
        let cancel = self.runs_cancel.child_token();
        let kill_grace = self.spec.kill_grace;
        self.runs.spawn(async move {
            // Frees the job's hook slot however this task ends.
            let _slot = HookSlot(hook_running);
            let hook_job = format!("{job}/on_failure");
            let end = crate::process::run_child(
                &spec,
                crate::process::ChildRun {
                    job: &hook_job,
                    run_id,
                    output: crate::config::OutputMode::Log,
                    timeout: Some(HOOK_TIMEOUT),
                    kill_grace,
                    cancel: &cancel,
                    clock: &env.clock,
                    spawner: &env.spawner,
                    keeper: env.keeper.as_ref(),
                    max_rss: None,
                    run_as: run_as.as_ref(),
                    run_vars: &[],
                },
            )
            .await;
            tracing::info!(job = %job, run = %run_id, "on_failure hook ended: {end:?}");
        });
    }

    /// The calendar time a fire stands for: its own for cron and catch-ups, else the wall time of
    /// its start instant.
    fn scheduled_wall(&self, due: &Due) -> DateTime<Utc> {
        let delay = chrono::Duration::from_std(due.delay).unwrap_or_default();
        match due.wall {
            Some(wall) => wall + delay,
            None => self.env.clock.wall_for_instant(due.start_at()),
        }
    }

    fn start_run(&mut self, due: Due) -> RunId {
        // A scheduled run supersedes a retry still waiting.
        self.retry = None;
        self.start_attempt(due, 0)
    }

    fn start_attempt(&mut self, due: Due, attempt: u32) -> RunId {
        let env = self.env.clone();
        let clock = &env.clock;
        let run_id = env.next_run_id();
        env.count_run(run_id);
        let cancel = self.runs_cancel.child_token();
        self.running.insert(
            run_id,
            Running {
                cancel: cancel.clone(),
                started: clock.now(),
                fires_since: 0,
            },
        );
        let started = clock.now();
        let scheduled = self.scheduled_wall(&due);
        let lateness = started.saturating_duration_since(due.start_at());
        let spec = self.spec.clone();
        tracing::info!(
            job = %spec.name,
            run = %run_id,
            scheduled = %scheduled.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            lateness_ms = millis(lateness),
            attempt,
            "run started"
        );
        self.metrics.run_started(lateness);
        let metrics = self.metrics.clone();
        let started_wall = clock.wall_now();
        self.status.update(|s| s.running += 1);
        let status = self.status.clone();
        let ctx = RunContext {
            job: Arc::from(spec.name.as_str()),
            run_id,
            scheduled,
            cancel,
        };
        let end = RunEnd {
            spec: spec.clone(),
            env: env.clone(),
            run_id,
            attempt,
            started,
            started_wall,
            metrics,
            status,
            ended: Some(self.ended_tx.clone()),
        };
        self.runs.spawn(async move {
            let report = run::execute(&spec, ctx, &env).await;
            end.finish(report);
        });
        run_id
    }

    fn update(&mut self, spec: Arc<JobSpec>) {
        let schedule_changed = spec.schedule != self.spec.schedule;
        *self
            .latest_spec
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = spec.clone();
        self.spec = spec;
        let schedule = self.spec.schedule.to_string();
        self.status.update(|s| s.schedule = schedule);
        if schedule_changed {
            tracing::info!(job = %self.spec.name, schedule = %self.spec.schedule, "schedule changed; the grid restarts now");
            self.restart_schedule();
            // A fixed-delay job with a run going waits for its end.
            if !self.running.is_empty() && self.is_fixed_delay() {
                self.next = None;
            }
        } else {
            tracing::info!(job = %self.spec.name, "definition changed; effective from the next fire");
        }
    }

    fn is_fixed_delay(&self) -> bool {
        matches!(&self.spec.schedule, Schedule::Every(e) if e.mode == EveryMode::FixedDelay)
    }
}

/// Runs a job's actor until `stop`; an actor that panics (a bug) is logged, counted in the job's
/// status and `tickd_job_task_restarts_total`, and started again from its schedule with the
/// definition it last had, so a bug cannot silently stop a job for good. Runs it had in flight
/// go on, unknown to the new actor.
async fn supervise_actor(
    spec: Arc<JobSpec>,
    env: Arc<RunEnv>,
    runs: TaskTracker,
    status: SharedStatus,
    mut commands: mpsc::UnboundedReceiver<JobCommand>,
    stop: CancellationToken,
) {
    use futures_util::FutureExt;
    let mut spec = spec;
    let mut restarted = false;
    let mut backoff = TASK_RESTART_BACKOFF;
    loop {
        let mut actor = JobActor::new(spec.clone(), env.clone(), runs.clone(), status.clone());
        // What the endpoint set survives the restart.
        actor.paused = restarted && status.snapshot().paused;
        let latest = actor.latest_spec.clone();
        let ran = std::panic::AssertUnwindSafe(actor.run(&mut commands, stop.clone(), restarted))
            .catch_unwind()
            .await;
        let Err(panic) = ran else { return };
        let message = crate::run::panic_message(&*panic);
        spec = latest
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        tracing::error!(job = %spec.name, "the job's task panicked (a bug: please report it); restarting it from its schedule: {message}");
        env.metrics.job_task_restarted(&spec.name);
        status.update(|s| s.task_restarts += 1);
        // A task that panics at once must not spin: wait, longer each time.
        tokio::select! {
            _ = env.clock.sleep(backoff) => {}
            _ = stop.cancelled() => return,
        }
        backoff = (backoff * 2).min(TASK_RESTART_BACKOFF_MAX);
        restarted = true;
    }
}

/// The wait before a panicked job task is started again, doubling up to
/// [`TASK_RESTART_BACKOFF_MAX`].
const TASK_RESTART_BACKOFF: Duration = Duration::from_secs(1);
/// The longest wait before a panicked job task is started again.
const TASK_RESTART_BACKOFF_MAX: Duration = Duration::from_secs(60);

/// A job's `on_failure` slot, freed when the hook's task ends (or unwinds).
struct HookSlot(Arc<std::sync::atomic::AtomicBool>);

impl Drop for HookSlot {
    fn drop(&mut self) {
        self.0.store(false, std::sync::atomic::Ordering::Release);
    }
}

/// The end of a run, reported exactly once: by [`RunEnd::finish`] with the run's report, or,
/// if the run's task panicked (or was aborted) before that, by its `Drop` as a failure. Without
/// it a panic outside the handler's own catch (a future whose drop panics) never told the job,
/// and with `overlap = "skip"` the job never fired again.
struct RunEnd {
    spec: Arc<JobSpec>,
    env: Arc<RunEnv>,
    run_id: RunId,
    attempt: u32,
    started: Instant,
    started_wall: DateTime<Utc>,
    metrics: Arc<JobMetrics>,
    status: SharedStatus,
    /// Taken by the one report.
    ended: Option<mpsc::UnboundedSender<RunEnded>>,
}

impl RunEnd {
    fn finish(mut self, report: RunReport) {
        self.report(report);
    }

    /// Counts, logs and tells the job how the run ended; a no-op after the first call.
    fn report(&mut self, report: RunReport) {
        let Some(ended) = self.ended.take() else {
            return;
        };
        let (spec, run_id) = (&self.spec, self.run_id);
        let duration = self.env.clock.now().saturating_duration_since(self.started);
        let duration_ms = millis(duration);
        self.metrics.run_ended(&report, duration, self.started_wall);
        let started_wall = self.started_wall;
        self.status
            .update(|s| record_run(s, run_id.0, &report, started_wall, duration_ms));
        let exit_code = report.exit_code.map(i64::from);
        let reason = report.reason.as_deref().unwrap_or("");
        match report.outcome {
            Outcome::Success => {
                tracing::info!(job = %spec.name, run = %run_id, outcome = %report.outcome, duration_ms, exit_code, "run finished")
            }
            _ => {
                tracing::warn!(job = %spec.name, run = %run_id, outcome = %report.outcome, duration_ms, exit_code, killed = report.killed, reason, "run finished")
            }
        }
        // The job may have been removed meanwhile; then nobody needs to know.
        let _ = ended.send(RunEnded {
            run_id,
            attempt: self.attempt,
            report,
        });
    }
}

impl Drop for RunEnd {
    fn drop(&mut self) {
        if self.ended.is_some() {
            let why = if std::thread::panicking() {
                "the run's task panicked (a bug: please report it)"
            } else {
                "the run's task was stopped before it reported"
            };
            self.report(RunReport::failure(None, why));
        }
    }
}

/// Waits for the job's timer, or forever when it has none.
async fn wait(timer: &mut Option<(Instant, Sleep)>) {
    crate::clock::sleep_or_never(timer.as_mut().map(|(_, sleep)| sleep)).await
}

/// Milliseconds with microsecond resolution, for log fields.
fn millis(duration: Duration) -> f64 {
    (duration.as_micros() as f64) / 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::Clock;
    use crate::handler::Handlers;

    /// The scheduled times the `record` handler's runs were given.
    type Seen = Arc<std::sync::Mutex<Vec<DateTime<Utc>>>>;

    /// A run environment whose `record` handler writes its runs' scheduled times to [`Seen`].
    fn recording_env(clock: Clock, state: Arc<crate::state::StateStore>) -> (Arc<RunEnv>, Seen) {
        let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
        let mut handlers = Handlers::with_builtins();
        let record = seen.clone();
        handlers.register("record", move |ctx: RunContext| {
            record.lock().expect("lock").push(ctx.scheduled);
            async { Ok(()) }
        });
        let env = RunEnv::new(clock, handlers, None, Some(state)).expect("env");
        (Arc::new(env), seen)
    }

    /// A state file from year 0001 made the catch-up stand for 0069-01-19 (an `i32` of periods
    /// overflowed); one from year 9999 gave no catch-up and no warning. The catch-up stands for
    /// the latest missed fire, every missed fire is counted, and a future time counts from now.
    #[tokio::test(start_paused = true)]
    async fn state_file_times_from_long_ago_or_the_future_are_clamped() {
        let now = DateTime::parse_from_rfc3339("2026-01-01T00:00:00.500Z")
            .expect("time")
            .with_timezone(&Utc);
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("state");
        std::fs::write(
            &path,
            "[last_fire]\nevery = \"0001-01-01T00:00:00Z\"\ncron = \"0001-01-01T00:00:00Z\"\nfuture = \"9999-12-31T23:59:59Z\"\n",
        )
        .expect("state");
        let state = Arc::new(crate::state::StateStore::open(&path));
        let (env, seen) = recording_env(Clock::manual(now), state);
        let handlers = Handlers::with_builtins();
        let spec = |name: &str, schedule: &str| {
            let mut handlers = handlers.clone();
            handlers.register("record", |_ctx: RunContext| async { Ok(()) });
            let text = format!("[daemon]\nstate_file = \"unused\"\n[jobs.{name}]\n{schedule}\nhandler = \"record\"\non_missed = \"once\"\n");
            crate::config::parse(std::path::Path::new("jobs.toml"), &text, &handlers)
                .expect("valid")
                .jobs[name]
                .clone()
        };
        let stop = CancellationToken::new();
        let run = |spec| JobHandle::spawn(spec, env.clone(), TaskTracker::new(), stop.clone());
        let every = run(spec("every", "every = \"1s\""));
        tokio::time::sleep(Duration::from_millis(100)).await;
        // One catch-up, standing for 00:00:00 (not year 69), for ~63.9 billion missed seconds.
        assert_eq!(
            *seen.lock().expect("lock"),
            [now - chrono::Duration::milliseconds(500)]
        );
        let missed = every.control.status.snapshot().runs.missed;
        assert!(
            (63_000_000_000..64_000_000_000).contains(&missed),
            "{missed}"
        );

        seen.lock().expect("lock").clear();
        let cron = run(spec("cron", "cron = \"0 * * * * *\""));
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(
            *seen.lock().expect("lock"),
            [now - chrono::Duration::milliseconds(500)]
        );
        // 2025 years of minutes, estimated: about 1.065 billion.
        let missed = cron.control.status.snapshot().runs.missed;
        assert!((1_060_000_000..1_070_000_000).contains(&missed), "{missed}");

        seen.lock().expect("lock").clear();
        let future = run(spec("future", "every = \"1s\""));
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(
            seen.lock().expect("lock").is_empty(),
            "no catch-up from the future"
        );
        assert_eq!(future.control.status.snapshot().runs.missed, 0);
        tokio::time::sleep(Duration::from_secs(1)).await;
        let runs = future.control.status.snapshot().runs.success;
        assert_eq!(runs, 1, "then the job runs on its grid");
        stop.cancel();
    }

    /// The step notification stored no permit and the task made a new waiter each loop: a step
    /// that landed while the task was in another branch (here: handling a command) was lost, and
    /// the cron job fired at its stale deadline, standing for 00:01:00 ten minutes late.
    #[tokio::test(start_paused = true)]
    async fn a_wall_clock_step_while_the_job_task_is_busy_is_not_lost() {
        let start = DateTime::parse_from_rfc3339("2026-01-01T00:00:30Z")
            .expect("time")
            .with_timezone(&Utc);
        let clock = Clock::manual(start);
        let dir = tempfile::tempdir().expect("tempdir");
        let state = Arc::new(crate::state::StateStore::open(&dir.path().join("state")));
        let (env, seen) = recording_env(clock.clone(), state);
        let mut handlers = Handlers::with_builtins();
        handlers.register("record", |_ctx: RunContext| async { Ok(()) });
        let spec = crate::config::parse(
            std::path::Path::new("jobs.toml"),
            "[jobs.c]\ncron = \"0 * * * * *\"\nhandler = \"record\"\n",
            &handlers,
        )
        .expect("valid")
        .jobs["c"]
            .clone();
        let stop = CancellationToken::new();
        let job = JobHandle::spawn(spec, env, TaskTracker::new(), stop.clone());
        tokio::time::sleep(Duration::from_millis(100)).await;
        // Wake the task with a command, and step the clock before it runs.
        assert!(job.control.set_paused(false));
        clock.step_wall(chrono::Duration::minutes(10));
        tokio::time::sleep(Duration::from_secs(31)).await;
        let at = |m| start - chrono::Duration::seconds(30) + chrono::Duration::minutes(m);
        assert_eq!(*seen.lock().expect("lock"), [at(11)]);
        assert_eq!(job.control.status.snapshot().runs.missed, 10);
        stop.cancel();
    }

    /// A panicked job task's `JoinError` was dropped: the job stopped firing for good, silently.
    #[tokio::test(start_paused = true)]
    async fn a_job_task_that_panics_is_restarted_with_its_latest_definition() {
        let start = DateTime::parse_from_rfc3339("2026-01-01T00:00:00Z")
            .expect("time")
            .with_timezone(&Utc);
        let handlers = Handlers::with_builtins();
        let spec = |every: &str| {
            crate::config::parse(
                std::path::Path::new("jobs.toml"),
                &format!("[jobs.j]\nevery = \"{every}\"\nhandler = \"log\"\n"),
                &handlers,
            )
            .expect("valid")
            .jobs["j"]
                .clone()
        };
        let env =
            Arc::new(RunEnv::new(Clock::manual(start), handlers.clone(), None, None).expect("env"));
        let stop = CancellationToken::new();
        let mut job = JobHandle::spawn(spec("1s"), env.clone(), TaskTracker::new(), stop.clone());
        tokio::time::sleep(Duration::from_millis(1_500)).await;
        job.update(spec("500ms"));
        tokio::time::sleep(Duration::from_millis(100)).await;
        job.control.commands.send(JobCommand::Panic).expect("send");
        tokio::time::sleep(Duration::from_millis(2_050)).await;
        let status = job.control.status.snapshot();
        assert_eq!(status.task_restarts, 1);
        // 1 run before the panic; the restart 1 s later (the backoff), then every 500 ms (the
        // latest definition): at 3.1 s and 3.6 s.
        assert_eq!(status.runs.success, 1 + 2, "{status:?}");
        assert_eq!(status.schedule, "every 500ms");
        let metrics = env.metrics.encode();
        assert!(
            metrics.contains("tickd_job_task_restarts_total{job=\"j\"} 1"),
            "{metrics}"
        );
        stop.cancel();
        job.stop().await.expect("the task ends when stopped");
    }

    /// Panics in its drop: a handler future holding one panics where the handler's
    /// `catch_unwind` does not reach, when it is dropped after its timeout and grace.
    struct PanicsOnDrop;

    impl Drop for PanicsOnDrop {
        fn drop(&mut self) {
            panic!("a bug in a handler's state");
        }
    }

    /// A panicking run task never sent `RunEnded`: with `overlap = "skip"` the job never fired
    /// again, silently.
    #[tokio::test(start_paused = true)]
    async fn a_run_task_that_panics_still_ends_its_run() {
        let start = DateTime::parse_from_rfc3339("2026-01-01T00:00:00Z")
            .expect("time")
            .with_timezone(&Utc);
        let mut handlers = Handlers::with_builtins();
        handlers.register("stuck", |_ctx: RunContext| {
            let guard = PanicsOnDrop;
            async move {
                let _guard = guard;
                std::future::pending::<()>().await;
                Ok(())
            }
        });
        let spec = crate::config::parse(
            std::path::Path::new("jobs.toml"),
            "[jobs.p]\nevery = \"1s\"\ntimeout = \"100ms\"\nkill_grace = \"0s\"\nhandler = \"stuck\"\n",
            &handlers,
        )
        .expect("valid")
        .jobs["p"]
        .clone();
        let env = Arc::new(RunEnv::new(Clock::manual(start), handlers, None, None).expect("env"));
        let stop = CancellationToken::new();
        let job = JobHandle::spawn(spec, env, TaskTracker::new(), stop.clone());
        tokio::time::sleep(Duration::from_millis(3_500)).await;
        let status = job.control.status.snapshot();
        // Runs at 1 s, 2 s and 3 s, each ended (as a failure), none left "running".
        assert_eq!(status.runs.failure, 3, "{status:?}");
        assert_eq!(status.running, 0, "{status:?}");
        let reason = status.last_run.and_then(|r| r.reason).unwrap_or_default();
        assert!(reason.contains("panicked"), "{reason}");
        stop.cancel();
    }

    /// Wall-clock steps forward by an hour, three hours and a day: each gives at most one
    /// catch-up per job (robfig/cron ran one 720 times), and the fires passed over are counted
    /// in the job's status and metrics.
    #[tokio::test(start_paused = true)]
    async fn wall_clock_jumps_run_at_most_one_catch_up_and_are_counted() {
        let handlers = Handlers::with_builtins();
        let config = crate::config::parse(
            std::path::Path::new("jobs.toml"),
            "[daemon]\nstate_file = \"unused\"\n\
             [jobs.once]\ncron = \"0 * * * * *\"\nhandler = \"log\"\non_missed = \"once\"\n\
             [jobs.skip]\ncron = \"0 * * * * *\"\nhandler = \"log\"\n",
            &handlers,
        )
        .expect("valid config");
        let start = DateTime::parse_from_rfc3339("2026-01-01T00:00:30Z")
            .expect("valid time")
            .with_timezone(&Utc);
        let clock = Clock::manual(start);
        let env = Arc::new(RunEnv::new(clock.clone(), handlers, None, None).expect("env"));
        let stop = CancellationToken::new();
        let jobs: Vec<JobHandle> = config
            .jobs
            .values()
            .map(|spec| {
                JobHandle::spawn(spec.clone(), env.clone(), TaskTracker::new(), stop.clone())
            })
            .collect();
        let counts = || {
            jobs.iter()
                .map(|job| job.control.status.snapshot().runs)
                .collect::<Vec<_>>()
        };
        tokio::time::sleep(Duration::from_secs(31)).await; // both fire at 00:01:00
        assert_eq!(
            counts().iter().map(|c| c.success).collect::<Vec<_>>(),
            [1, 1]
        );

        // (step, fires passed over): from 00:01:01 the next fire is 00:02:00, so an hour's step
        // passes 00:02 ... 01:01; each later step starts 1 min 0.1 s after the one before.
        let steps = [(1, 60), (3, 180), (24, 1440)];
        let mut missed = 0;
        for (k, (hours, passed)) in steps.into_iter().enumerate() {
            let k = k as u64;
            clock.step_wall(chrono::Duration::hours(hours));
            tokio::time::sleep(Duration::from_millis(100)).await;
            missed += passed;
            let now = counts();
            // `once`: its one catch-up at the jump; `skip`: nothing until the next minute.
            assert_eq!(
                (now[0].success, now[1].success),
                (2 + 2 * k, 1 + k),
                "{hours} h"
            );
            assert_eq!(
                (now[0].missed, now[1].missed),
                (missed, missed),
                "{hours} h"
            );
            tokio::time::sleep(Duration::from_secs(60)).await;
            let now = counts();
            assert_eq!(
                (now[0].success, now[1].success),
                (3 + 2 * k, 2 + k),
                "{hours} h"
            );
        }
        let metrics = env.metrics.encode();
        for job in ["once", "skip"] {
            let series = format!("tickd_fires_missed_total{{job=\"{job}\"}} {missed}");
            assert!(metrics.contains(&series), "{series} in\n{metrics}");
        }
        stop.cancel();
    }
}
