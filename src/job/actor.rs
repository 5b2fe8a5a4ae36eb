//! A job's state ([`JobActor`], behind the lock of its [`JobCell`]) and all that acts on it:
//! the dispatcher (`dispatch`) calls [`JobCell::deadline_reached`] when the job's deadline
//! comes, a run's end calls back through the cell, commands arrive through
//! [`JobCell::command`] and the clock's steps through `steps`. No job has a task of its own;
//! one is spawned only to restart a job after a panic.

use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio_util::sync::CancellationToken;

use crate::action::{self, Outcome, RunReport};
use crate::clock::{Instant, Now, RemoteClock};
use crate::config::{JobSpec, OnMissed, OnNodeLoss, RunLog, Scope};
use crate::handler::{ClusterFire, HandlerFn, RunContext, RunId};
use crate::metrics::JobMetrics;
use crate::status::{record_run, RunRecord, SharedStatus};

use super::dispatch::Entry;
use super::hook::FailureHook;
use super::plan::{Due, Plan};
use super::runs::{self, AfterFailure, FireAction, PendingRetry, Runs, SkipNotices};
use super::{FireResult, JobCommand, JobEnv};

/// How a run ended, as its job learns it.
#[derive(Debug)]
struct RunEnded {
    run_id: RunId,
    /// Which attempt the run was: 0 for a scheduled run, n for the n-th retry.
    attempt: u32,
    report: RunReport,
    /// How long the handler's first poll took, when it blocked the thread that started it.
    first_poll_blocked: Option<Duration>,
}

/// A job: its state, behind one lock shared by all that act on it (the dispatcher at its
/// deadlines, its runs as they end, the commands of the daemon and the endpoint, the clock's
/// steps). The lock serializes them, as a task's mailbox would, without a task per job: a job
/// costs its state and nothing that waits (a tokio task, its channel and its stop token were
/// 1.1 KB of every job's 5.3).
pub(super) struct JobCell {
    /// A std mutex: every holder does a few steps of bookkeeping and returns; nothing awaits
    /// under it.
    actor: Mutex<JobActor>,
    /// The job's handle stopped it for good: a restart after a panic does not bring it back.
    retired: AtomicBool,
}

impl JobCell {
    /// Starts the job `spec`: its first deadline is set, and its start-up fire (a catch-up, or
    /// `run_on_start`) is made.
    pub fn start(spec: Arc<JobSpec>, env: Arc<JobEnv>, status: SharedStatus) -> Arc<Self> {
        let cell = Arc::new_cyclic(|me| JobCell {
            actor: Mutex::new(JobActor::new(spec, env.clone(), status, me.clone())),
            retired: AtomicBool::new(false),
        });
        let cluster_time = env.cluster.as_ref().map(crate::cluster::Cluster::time);
        env.steps.follow(&cell, env.clock(), cluster_time);
        cell.act(|actor| actor.scheduled(false));
        cell
    }

    /// Acts on the job, unless it stopped. A panic does not unwind into the caller, which may
    /// serve other jobs too: the job stops, and is started again from its schedule after a
    /// backoff (see [`JobCell::restart_after`]).
    pub(super) fn act(self: &Arc<Self>, act: impl FnOnce(&mut JobActor)) {
        let Ok(actor) = self.actor.lock() else {
            return;
        };
        let launches = self.act_locked(actor, act);
        launch_all(launches, None);
    }

    /// Acts under the lock and returns the runs the act decided on, to start once the lock is
    /// released.
    fn act_locked(
        self: &Arc<Self>,
        actor: std::sync::MutexGuard<'_, JobActor>,
        act: impl FnOnce(&mut JobActor),
    ) -> Vec<Launch> {
        let mut launches = Vec::new();
        self.act_into(actor, act, &mut launches);
        launches
    }

    /// Acts under the lock and puts the runs the act decided on in `launches` (empty when
    /// given). The act pushes them into `launches` itself, lent to the job for the act: the
    /// dispatcher's, kept across batches, takes a batch's fires without an allocation each,
    /// and the job keeps no capacity of its own between acts.
    fn act_into(
        self: &Arc<Self>,
        mut actor: std::sync::MutexGuard<'_, JobActor>,
        act: impl FnOnce(&mut JobActor),
        launches: &mut Vec<Launch>,
    ) {
        if actor.stopped {
            return;
        }
        actor.now_in_act.set(None);
        std::mem::swap(&mut actor.launches, launches);
        let acted = std::panic::catch_unwind(AssertUnwindSafe(|| {
            act(&mut actor);
            actor.reschedule(self);
        }));
        std::mem::swap(&mut actor.launches, launches);
        actor.now_in_act.set(None);
        match acted {
            Ok(()) => {}
            Err(panic) => {
                actor.stopped = true;
                let restart = Restart {
                    name: actor.name.clone(),
                    env: actor.env.clone(),
                    status: actor.status.clone(),
                    backoff: actor.restart_backoff,
                };
                drop(actor);
                // Runs decided before the panic report as stopped when dropped, after the lock.
                launches.clear();
                self.restart_after(restart, crate::action::panic_message(&*panic));
            }
        }
    }

    /// The job panicked while acted on (a bug): it is logged, counted in its status and
    /// `tickd_job_task_restarts_total`, and, after a backoff that doubles at each panic (one
    /// that panics at once must not spin), started again from its schedule with the definition
    /// it last had. Runs it had in flight go on, unknown to the new state.
    fn restart_after(self: &Arc<Self>, restart: Restart, why: String) {
        let name = &restart.name;
        tracing::error!(job = %name, "the job's task panicked (a bug: please report it); restarting it from its schedule: {why}");
        restart.env.metrics.job_task_restarted(name);
        restart.status.update(|s| s.task_restarts += 1);
        // Without a runtime (it is shutting down) there is nothing left to restart for.
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let cell = Arc::downgrade(self);
        runtime.spawn(async move {
            restart.env.clock().sleep(restart.backoff).await;
            let Some(cell) = cell.upgrade() else { return };
            if cell.retired.load(Ordering::Acquire) {
                return;
            }
            let Ok(mut actor) = cell.actor.lock() else {
                return;
            };
            // The definition last given, also while the job waited for its restart.
            let spec = actor.spec.clone();
            let mut fresh = JobActor::new(
                spec,
                restart.env,
                restart.status.clone(),
                Arc::downgrade(&cell),
            );
            // What the endpoint set survives the restart.
            fresh.paused = restart.status.snapshot().paused;
            fresh.restart_backoff = (restart.backoff * 2).min(TASK_RESTART_BACKOFF_MAX);
            *actor = fresh;
            let launches = cell.act_locked(actor, |actor| actor.scheduled(true));
            launch_all(launches, None);
        });
    }

    /// Serves `command`; `false` if the job stopped (removed, or restarting after a panic).
    /// While a job waits for its restart, a new definition and a pause or resume are kept for
    /// it; a run now or a catch-up is refused.
    pub fn command(self: &Arc<Self>, command: JobCommand) -> bool {
        let Ok(mut actor) = self.actor.lock() else {
            return false;
        };
        if actor.stopped {
            if self.retired.load(Ordering::Acquire) {
                return false;
            }
            return match command {
                JobCommand::Update(spec) => {
                    actor.spec = spec;
                    true
                }
                JobCommand::Pause | JobCommand::Resume => {
                    let paused = matches!(command, JobCommand::Pause);
                    actor.status.update(|s| s.paused = paused);
                    true
                }
                _ => false,
            };
        }
        let launches = self.act_locked(actor, |actor| actor.command(command));
        launch_all(launches, None);
        true
    }

    /// Whether the job answers: `Some(true)` when its state is free to act on, `Some(false)` when
    /// it stopped, `None` while another holds it (ask again).
    #[cfg(feature = "http")]
    pub fn answers(&self) -> Option<bool> {
        match self.actor.try_lock() {
            Ok(actor) => Some(!actor.stopped),
            Err(std::sync::TryLockError::Poisoned(_)) => Some(false),
            Err(std::sync::TryLockError::WouldBlock) => None,
        }
    }

    /// The wall clock was stepped: a calendar job recomputes its next fire (a cluster job's time
    /// does not follow this machine's wall clock).
    pub fn wall_clock_stepped(self: &Arc<Self>) {
        self.act(|actor| {
            if actor.plan.is_calendar() && actor.cluster_time.is_none() {
                actor.time_stepped("the wall clock jumped past them");
            }
        });
    }

    /// The estimate of the database's clock was corrected: a cluster job retimes its fires.
    pub fn cluster_time_corrected(self: &Arc<Self>) {
        self.act(|actor| {
            if actor.cluster_time.is_some() {
                actor.cluster_time_corrected();
            }
        });
    }

    /// Holds the job's state, as a stuck job would, until `held` says (or its sender is
    /// dropped); says on `taken` once it holds it.
    #[cfg(all(test, feature = "http"))]
    pub fn hold_until(
        &self,
        taken: &std::sync::mpsc::Sender<()>,
        held: &std::sync::mpsc::Receiver<()>,
    ) {
        let _actor = self.actor.lock();
        let _ = taken.send(());
        let _ = held.recv();
    }

    /// Stops firing for good; runs in flight go on.
    pub fn stop(self: &Arc<Self>) {
        self.retired.store(true, Ordering::Release);
        self.act(JobActor::stop);
    }

    /// Asks the CPU to bring what a fire of the job reads first into its cache: its
    /// definition, status and metrics, each in an allocation of its own. Skipped while another
    /// holds the job.
    pub fn read_ahead(&self) {
        if let Ok(actor) = self.actor.try_lock() {
            crate::os::prefetch(Arc::as_ptr(&actor.spec));
            crate::os::prefetch(Arc::as_ptr(&actor.metrics));
            crate::os::prefetch(Arc::as_ptr(&actor.name).cast::<u8>());
            actor.status.read_ahead();
        }
    }

    /// The dispatcher's call: the job's deadline `entry` came. A stale entry (the job moved its
    /// deadline meanwhile) does nothing. The runs it starts that end at their first poll go to
    /// the `batch`, for the dispatcher to book once every fire due with this one has started.
    pub fn deadline_reached(self: &Arc<Self>, entry: Entry, batch: &mut Batch) {
        let Ok(mut actor) = self.actor.lock() else {
            return;
        };
        if actor.registered != Some(entry) {
            return;
        }
        // The dispatcher took the entry out of its queue.
        actor.registered = None;
        self.act_into(actor, JobActor::deadline_reached, &mut batch.launches);
        launch_all(batch.launches.drain(..), Some(&mut batch.ended));
    }
}

impl std::fmt::Debug for JobCell {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JobCell")
            .field("retired", &self.retired)
            .finish_non_exhaustive()
    }
}

/// What a job's restart after a panic starts from (its definition: the latest given).
struct Restart {
    name: Arc<str>,
    env: Arc<JobEnv>,
    status: SharedStatus,
    backoff: Duration,
}

/// The wait before a panicked job is started again, doubling up to
/// [`TASK_RESTART_BACKOFF_MAX`].
const TASK_RESTART_BACKOFF: Duration = Duration::from_secs(1);
/// The longest wait before a panicked job is started again.
const TASK_RESTART_BACKOFF_MAX: Duration = Duration::from_secs(60);

pub(super) struct JobActor {
    /// The definition last given (reloads; also while a panicked job waits for its restart,
    /// which starts from it).
    spec: Arc<JobSpec>,
    /// The job's name, shared with every run's context (a reload keeps a job's name).
    name: Arc<str>,
    env: Arc<JobEnv>,
    plan: Plan,
    /// For a cluster job, the database's clock: its slots are named and fired in the
    /// database's time, so that every node agrees on them whatever its own clock says.
    cluster_time: Option<RemoteClock>,
    /// The latest slot this cluster job fired: a correction of the clock that moves it back
    /// must not fire a slot twice.
    last_slot: Option<DateTime<Utc>>,
    /// The next fire, or `None` when there is none (a `fixed-delay` job with a run going, or a
    /// cron expression with no future match).
    next: Option<Due>,
    runs: Runs,
    /// The cell this state is in: what a run's end reports to.
    me: Weak<JobCell>,
    /// This job's entry in the dispatcher's queue: its deadline (the next fire or retry).
    registered: Option<Entry>,
    /// What the status last showed: (next start, paused).
    published: Option<(Option<Instant>, bool)>,
    /// The task stopped: nothing acts on the job any more (a run that ends after is only
    /// counted, as it was by the run itself).
    stopped: bool,
    /// For the test of a panic in the dispatcher.
    #[cfg(test)]
    panic_at_next_fire: bool,
    /// Parent of this job's run tokens (a child of the daemon's stop-runs token): creating a
    /// run's token locks this node, not the root that every job shares.
    runs_cancel: CancellationToken,
    /// What the endpoint shows of this job.
    status: SharedStatus,
    /// This job's metric handles.
    metrics: Arc<JobMetrics>,
    /// Paused through the endpoint.
    pub paused: bool,
    /// The wait before the next restart after a panic.
    restart_backoff: Duration,
    hook: FailureHook,
    /// The overlap skips not told in the log yet (rate-limited).
    skip_notices: SkipNotices,
    /// Runs decided under the lock, started by whoever holds it once it is released: empty
    /// between acts, lent a buffer for each (see [`JobCell::act_into`]).
    launches: Vec<Launch>,
    /// The in-process handler of a `handler` job, looked up once (at start and at each new
    /// definition) rather than by name at each fire.
    handler: Option<HandlerFn>,
    /// The job's in-process handler is called and first polled where its fire is decided (the
    /// dispatcher's task); cleared for good once a first poll blocked for longer than
    /// [`BLOCKING_FIRST_POLL`], so that one job's blocking code does not delay the others.
    starts_inline: bool,
    /// The time read once per act: every step of one act sees the same now, and a fire reads
    /// the clocks once rather than at each of its steps.
    now_in_act: std::cell::Cell<Option<Now>>,
}

/// A first poll longer than this moves the job's runs onto tasks of their own.
const BLOCKING_FIRST_POLL: Duration = Duration::from_millis(1);

impl JobActor {
    fn new(spec: Arc<JobSpec>, env: Arc<JobEnv>, status: SharedStatus, me: Weak<JobCell>) -> Self {
        let cluster_time = cluster_time(&env, &spec);
        let (plan, next) = plan(&env, &spec, cluster_time.as_ref());
        JobActor {
            next,
            plan,
            cluster_time,
            last_slot: None,
            runs: Runs::default(),
            me,
            registered: None,
            published: None,
            stopped: false,
            #[cfg(test)]
            panic_at_next_fire: false,
            runs_cancel: env.stop_runs.child_token(),
            metrics: Arc::new(env.metrics.for_job(spec.name())),
            status,
            paused: false,
            restart_backoff: TASK_RESTART_BACKOFF,
            hook: FailureHook::default(),
            skip_notices: SkipNotices::default(),
            launches: Vec::new(),
            handler: action::handler_of(&spec, &env.actions),
            starts_inline: true,
            now_in_act: std::cell::Cell::new(None),
            name: Arc::from(spec.name()),
            spec,
            env,
        }
    }

    /// Now, in the job's time: the database's for a cluster job, this machine's otherwise.
    fn now(&self) -> Now {
        if let Some(now) = self.now_in_act.get() {
            return now;
        }
        let now = now_in(&self.env, self.cluster_time.as_ref());
        self.now_in_act.set(Some(now));
        now
    }

    /// The job is scheduled: the status shows its schedule, and unless `restarted` after a
    /// panic (which made it already) its start-up fire is made.
    fn scheduled(&mut self, restarted: bool) {
        let schedule = self.spec.schedule().to_string();
        self.status.update(|s| s.schedule = schedule);
        tracing::debug!(job = %self.spec.name(), schedule = %self.spec.schedule(), "job scheduled");
        if !restarted {
            if let Some(due) = self.startup_fire() {
                self.fire(due);
            }
        }
    }

    /// The job stops: no fire after this, and a queued run is dropped.
    fn stop(&mut self) {
        self.stopped = true;
        if let Some(entry) = self.registered.take() {
            self.env.dispatcher.remove(entry);
        }
        if self.runs.queued.take().is_some() {
            tracing::info!(job = %self.spec.name(), "job stopped; its pending run is dropped");
        }
        if let Some(skipped) = self.skip_notices.rest() {
            self.tell_skips(skipped, "a run was still going");
        }
        let skipped = self.status.snapshot().runs.skipped_overlap;
        tracing::debug!(job = %self.spec.name(), skipped, "job stopped firing");
    }

    /// The deadline the dispatcher holds for this job: its next fire or retry, whichever comes
    /// first; none while paused (a paused job does not retry either).
    fn deadline(&self) -> Option<Instant> {
        if self.paused {
            return None;
        }
        let fire = self.next.map(|due| due.start_at());
        let retry = self.runs.retry.map(|retry| retry.at);
        match (fire, retry) {
            (Some(fire), Some(retry)) => Some(fire.min(retry)),
            (fire, retry) => fire.or(retry),
        }
    }

    /// Brings the dispatcher's entry and the status's next fire up to date after an act.
    fn reschedule(&mut self, cell: &Arc<JobCell>) {
        if self.stopped {
            return;
        }
        let deadline = self.deadline();
        if self.registered.map(|(at, _)| at) != deadline {
            self.registered =
                self.env
                    .dispatcher
                    .reschedule(cell, self.registered.take(), deadline);
        }
        let next = if self.paused { None } else { self.next };
        let shown = (next.map(|due| due.start_at()), self.paused);
        if self.published != Some(shown) {
            self.published = Some(shown);
            self.publish_next(next);
        }
    }

    /// The job's deadline came: a retry due starts (retries first, as they were asked for
    /// before the fire), then a fire due.
    fn deadline_reached(&mut self) {
        if self.paused {
            return;
        }
        let now = self.now().instant;
        if let Some(retry) = self.runs.retry.filter(|retry| retry.at <= now) {
            self.runs.retry = None;
            self.start_retry(retry);
        }
        if let Some(due) = self.next.filter(|due| due.start_at() <= now) {
            #[cfg(test)]
            if self.panic_at_next_fire {
                panic!("a bug at a fire");
            }
            self.due(due);
        }
    }

    fn publish_next(&self, next: Option<Due>) {
        let next_fire = next.map(|due| due.scheduled_wall(self.now()));
        let paused = self.paused;
        self.status.update(|s| {
            s.next_fire = next_fire;
            s.paused = paused;
        });
    }

    /// The run to start as soon as the job is scheduled, if any: one catch-up for fires missed
    /// while the daemon was down (`on_missed = "once"`), or the `run_on_start` run.
    fn startup_fire(&mut self) -> Option<Due> {
        let now = self.now();
        let Some(missed) = self.missed_while_down(now.wall) else {
            return self.spec.run_on_start().then_some(Due::at(now.instant));
        };
        let count = if missed.estimated {
            format!("about {}", missed.count)
        } else {
            missed.count.to_string()
        };
        tracing::warn!(
            job = %self.spec.name(),
            missed = %count,
            last_recorded = %rfc3339_millis(missed.recorded),
            latest_missed = %rfc3339_millis(missed.latest),
            "fires were missed while the daemon was down; running one catch-up"
        );
        self.count_missed(missed.count);
        Some(Due {
            wall: Some(missed.latest),
            ..Due::at(now.instant)
        })
    }

    /// The fires missed since the last one recorded in the state file. A recorded time in the
    /// future (a clock that was set back, a hand-edited file) is clamped to now with a warning:
    /// nothing is missed, and the next fire overwrites it.
    fn missed_while_down(&self, now: DateTime<Utc>) -> Option<super::plan::MissedWhileDown> {
        if self.spec.on_missed() != OnMissed::Once {
            return None;
        }
        let recorded = self.env.state.as_ref()?.last_fire(self.spec.name())?;
        if recorded > now {
            tracing::warn!(
                job = %self.spec.name(),
                last_recorded = %rfc3339_millis(recorded),
                "the state file's last fire of this job is in the future (the clock was set back, or the file was edited); no catch-up, counting from now"
            );
            return None;
        }
        self.plan.missed_since(recorded, now)
    }

    /// The timer went off for `due`.
    fn due(&mut self, due: Due) {
        let now = self.now();
        if let (Some(wall), true) = (due.wall, self.plan.is_calendar()) {
            // Calendar deadlines are converted to monotonic ones when computed; if the wall clock
            // went back since, it is not time yet: sleep again instead of firing early.
            if now.wall < wall + due.delay {
                self.next = Some(Due {
                    instant: now.instant_for_wall(wall),
                    ..due
                });
                return;
            }
        }
        let lateness = now.instant.saturating_duration_since(due.start_at());
        match self.plan.gap_after(&due, lateness) {
            // Superseded: the fire after this one is due too. The daemon was stalled (stopped,
            // suspended, starved): never a burst, at most one catch-up.
            Some(gap) if lateness >= gap => {
                let count = self.plan.fires_in(&due, lateness);
                self.fires_missed(due, count, "the daemon was stalled");
            }
            _ => {
                self.fire(due);
            }
        }
        let going = self.runs.going() > 0;
        self.next = self.plan.after(due, self.now(), going);
    }

    /// The wall clock was stepped: recompute the calendar fire from the new time. A step forward
    /// past the due fire is a miss (`cause`): one catch-up with `on_missed = "once"`, none
    /// otherwise.
    fn time_stepped(&mut self, cause: &str) {
        let now = self.now();
        if let Some(
            due @ Due {
                wall: Some(wall), ..
            },
        ) = self.next
        {
            if now.wall >= wall {
                let past = (now.wall - wall).to_std().unwrap_or_default();
                let count = self.plan.fires_in(&due, past);
                self.fires_missed(due, count, cause);
            } else {
                tracing::info!(job = %self.spec.name(), "wall clock changed; recomputing the next fire");
            }
        }
        self.next = self.plan.calendar_after(now.wall, self.now());
    }

    /// The estimate of the database's clock was corrected: a cluster job's slots stay what they
    /// are (every node names them alike), only the instants they fire at move. A slot the
    /// correction moved into the past fires at once, so none is lost on the owner.
    fn cluster_time_corrected(&mut self) {
        let now = self.now();
        self.plan.retime(now);
        if let Some(
            due @ Due {
                wall: Some(slot), ..
            },
        ) = self.next
        {
            self.next = Some(Due {
                instant: now.instant_for_wall(slot),
                ..due
            });
        }
    }

    fn count_missed(&self, count: u64) {
        self.metrics.missed(count);
        self.status
            .update(|s| s.runs.missed = s.runs.missed.saturating_add(count));
    }

    /// `count` fires up to `latest` passed without a run: counted, logged once, and caught up
    /// by a single run of `latest` with `on_missed = "once"`; never a burst.
    fn fires_missed(&mut self, latest: Due, count: u64, cause: &str) {
        self.count_missed(count);
        match self.spec.on_missed() {
            OnMissed::Skip => tracing::warn!(
                job = %self.spec.name(),
                missed = count,
                "fires missed ({cause}); skipping to the next one"
            ),
            OnMissed::Once => {
                tracing::warn!(
                    job = %self.spec.name(),
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
                tracing::info!(job = %self.spec.name(), "run requested through the endpoint");
                // Asked of this node: it runs here, owner of the cluster or not. One the overlap
                // policy would skip is refused (the caller hears 409), not a skipped fire.
                let result = match self.runs.decide(&self.spec.overlap()) {
                    FireAction::Skip(why) => self.refuse(why),
                    _ => self.start_or_overlap(Due::at(self.now().instant)),
                };
                let _ = reply.send(result);
            }
            JobCommand::Pause => {
                tracing::info!(job = %self.spec.name(), "paused");
                self.paused = true;
            }
            JobCommand::Resume if self.paused => {
                tracing::info!(job = %self.spec.name(), "resumed");
                self.paused = false;
                // Fires that came due while paused are dropped: go on from now.
                let now = self.now();
                if let Some(due) = self.next.filter(|due| due.start_at() <= now.instant) {
                    self.next = self.plan.after(due, now, self.runs.going() > 0);
                }
            }
            JobCommand::Resume => {}
            JobCommand::CatchUp { slot, epoch } => {
                // A slot due about now may come both as a catch-up and as the plan's own fire.
                if self.last_slot.is_some_and(|last| slot <= last) {
                    return;
                }
                self.last_slot = Some(slot);
                let now = self.now();
                self.count_missed(1);
                self.start_owned(Due {
                    wall: Some(slot),
                    epoch: Some(epoch),
                    ..Due::at(now.instant)
                });
            }
            #[cfg(test)]
            JobCommand::Panic => panic!("a bug in the job task"),
            #[cfg(test)]
            JobCommand::PanicAtNextFire => self.panic_at_next_fire = true,
        }
    }

    /// A fire of the schedule. A cluster job fires only on the node that owns the slot.
    fn fire(&mut self, due: Due) -> FireResult {
        let Some(cluster) = self
            .env
            .cluster
            .as_ref()
            .filter(|_| self.spec.scope() == Scope::Cluster)
        else {
            return self.start_or_overlap(due);
        };
        let slot = due.slot(self.now());
        if self.last_slot.is_some_and(|last| slot <= last) {
            tracing::debug!(job = %self.spec.name(), slot = %rfc3339_millis(slot), "slot already fired here (the clock was corrected back)");
            return FireResult::Skipped;
        }
        match cluster.may_fire(self.spec.name(), slot) {
            Some(epoch) => {
                self.last_slot = Some(slot);
                self.start_owned(Due {
                    epoch: Some(epoch),
                    ..due
                })
            }
            None => {
                tracing::debug!(job = %self.spec.name(), slot = %rfc3339_millis(slot), "not this node's fire: it does not own the cluster");
                FireResult::Skipped
            }
        }
    }

    /// Starts a run for a cluster slot this node owns (or applies the overlap policy); a slot
    /// the policy lets go is settled: there is nothing to run again.
    fn start_owned(&mut self, due: Due) -> FireResult {
        let result = self.start_or_overlap(due);
        if let (FireResult::Skipped, Some(slot), Some(cluster)) =
            (&result, self.settles(&due, self.now()), &self.env.cluster)
        {
            cluster.run_settled(self.spec.name(), slot);
        }
        result
    }

    /// The cluster slot a run of `due` settles, for an `on_node_loss = "rerun"` job fired under
    /// an epoch.
    fn settles(&self, due: &Due, now: Now) -> Option<DateTime<Utc>> {
        let rerun = self.spec.on_node_loss() == OnNodeLoss::Rerun;
        (rerun && due.epoch.is_some()).then(|| due.slot(now))
    }

    /// Starts a run for `due`, or applies the overlap policy.
    fn start_or_overlap(&mut self, due: Due) -> FireResult {
        if self.spec.on_missed() == OnMissed::Once {
            if let Some(state) = &self.env.state {
                state.record(self.spec.name(), due.scheduled_wall(self.now()));
            }
        }
        self.warn_of_long_runs();
        match self.runs.decide(&self.spec.overlap()) {
            FireAction::Start => {
                if let Some(skipped) = self.skip_notices.due(self.now().instant) {
                    self.tell_skips(skipped, "a run was still going");
                }
                FireResult::Started(self.start_run(due))
            }
            FireAction::Skip(why) => self.skip(why),
            FireAction::Queue => {
                tracing::debug!(job = %self.spec.name(), "previous run still going; run queued");
                self.runs.queued = Some(due);
                FireResult::Queued
            }
            FireAction::Replace => {
                tracing::info!(job = %self.spec.name(), "previous run still going; replacing it");
                self.runs.stop_all();
                self.runs.queued = Some(due);
                FireResult::Queued
            }
        }
    }

    /// Counts a fire against each run in flight and warns about a run that has outlasted
    /// 10 (then 100, 1000 ...) fires: a hung HTTP call or script would otherwise only show as
    /// skipped fires at debug level.
    fn warn_of_long_runs(&mut self) {
        if self.runs.going() == 0 {
            return;
        }
        for long in self.runs.count_fire(self.now().instant) {
            let fires = long.fires;
            tracing::warn!(
                job = %self.spec.name(),
                run = %long.run_id,
                fires,
                going_for = %humantime::format_duration(long.going_for),
                "a run has been going for {fires} fires of its job; set a timeout if it hangs"
            );
        }
    }

    fn skip(&mut self, why: &str) -> FireResult {
        self.metrics.skipped();
        let skipped_total = self.status.update(|s| {
            s.runs.skipped_overlap += 1;
            s.runs.skipped_overlap
        });
        match self.skip_notices.skipped(self.now().instant) {
            Some(skipped) => self.tell_skips(skipped, why),
            None => tracing::debug!(job = %self.spec.name(), skipped_total, "fire skipped: {why}"),
        }
        FireResult::Skipped
    }

    /// Tells, at info, how many fires were skipped for overlap since the last time it did.
    fn tell_skips(&self, skipped: u64, why: &str) {
        tracing::info!(
            job = %self.spec.name(),
            skipped,
            "fires skipped: {why} (told at most once a minute; skipped counts them since the last notice)"
        );
    }

    fn refuse(&mut self, why: &str) -> FireResult {
        self.metrics.refused();
        self.status.update(|s| s.runs.refused += 1);
        tracing::info!(job = %self.spec.name(), "run request refused: {why}");
        FireResult::Skipped
    }

    fn retry_dropped(&mut self, attempt: u32, why: &str) {
        self.metrics.retry_dropped();
        self.status.update(|s| s.runs.retries_dropped += 1);
        tracing::warn!(job = %self.spec.name(), attempt, "retry dropped: {why}");
    }

    fn run_ended(&mut self, ended: RunEnded) {
        // A run started before a restart after a panic ends unknown to this state.
        if !self.runs.ended(ended.run_id) {
            return;
        }
        if let (Some(blocked), true) = (ended.first_poll_blocked, self.starts_inline) {
            self.starts_inline = false;
            tracing::warn!(
                job = %self.spec.name(),
                blocked_ms = millis(blocked),
                "the handler blocked for {} before it first returned; its runs now start on tasks of their own (do blocking work in spawn_blocking)",
                humantime::format_duration(Duration::from_micros(blocked.as_micros() as u64))
            );
        }
        if matches!(ended.report.outcome, Outcome::Failure | Outcome::Timeout) {
            self.run_failed(&ended);
        }
        if self.runs.going() > 0 {
            return;
        }
        if let Some(due) = self.runs.queued.take() {
            self.start_run(due);
        } else if self.next.is_none() {
            self.next = self.plan.after_run(self.now());
        }
    }

    /// A run failed: schedule a retry if the job has attempts left and it would come before the
    /// next scheduled fire; otherwise the failure is final and the `on_failure` hook runs.
    fn run_failed(&mut self, ended: &RunEnded) {
        let next_fire = self.next.map(|due| due.start_at());
        let now = self.now().instant;
        match runs::after_failure(self.spec.retry(), ended.attempt, now, next_fire) {
            AfterFailure::Retry(retry) => {
                if self.spec.log() != RunLog::Nothing {
                    tracing::info!(
                    job = %self.spec.name(),
                    run = %ended.run_id,
                    attempt = retry.attempt,
                    delay = %humantime::format_duration(retry.at - now),
                    "run failed; retrying"
                    );
                }
                self.runs.retry = Some(retry);
                return;
            }
            AfterFailure::RetryDropped { attempt } => {
                self.retry_dropped(attempt, "it would reach the next scheduled fire");
            }
            AfterFailure::Final => {}
        }
        let cancel = self.runs_cancel.child_token();
        self.hook
            .spawn(&self.spec, ended.run_id, &ended.report, &self.env, cancel);
    }

    /// Starts a retry, unless a run of the job is going (then it is dropped, like an overlap).
    fn start_retry(&mut self, retry: PendingRetry) {
        if self.runs.going() > 0 {
            self.retry_dropped(retry.attempt, "a run is still going");
            return;
        }
        self.start_attempt(Due::at(retry.at), retry.attempt);
    }

    fn start_run(&mut self, due: Due) -> RunId {
        // A scheduled run supersedes a retry still waiting.
        self.runs.retry = None;
        self.start_attempt(due, 0)
    }

    fn start_attempt(&mut self, due: Due, attempt: u32) -> RunId {
        let run_id = self.env.run_ids.next();
        let cancel = self.runs_cancel.child_token();
        let now = self.now();
        self.runs.started(run_id, cancel.clone(), now.instant);
        let scheduled = due.scheduled_wall(now);
        let lateness = now.instant.saturating_duration_since(due.start_at());
        let spec = self.spec.clone();
        let ctx = RunContext {
            job: self.name.clone(),
            run_id,
            scheduled,
            cancel,
            cluster: due
                .epoch
                .zip(self.env.cluster.as_ref())
                .map(|(epoch, cluster)| ClusterFire {
                    fire_id: crate::cluster::fire_id(spec.name(), due.slot(now)),
                    node: cluster.node_name(),
                    epoch,
                }),
            log_runs: spec.log() == RunLog::Runs,
        };
        let end = RunEnd {
            spec,
            env: self.env.clone(),
            run_id,
            attempt,
            started: now.instant,
            started_wall: now.wall,
            scheduled,
            lateness,
            metrics: self.metrics.clone(),
            status: self.status.clone(),
            settles: self.settles(&due, now),
            first_poll_blocked: None,
            in_flight: false,
            ended: Some(self.me.clone()),
        };
        self.launches.push(Launch {
            ctx,
            end,
            handler: self.handler.clone(),
            inline: self.starts_inline,
        });
        run_id
    }

    fn update(&mut self, spec: Arc<JobSpec>) {
        self.spec = spec;
        self.handler = action::handler_of(&self.spec, &self.env.actions);
        let schedule = self.spec.schedule().to_string();
        self.status.update(|s| s.schedule = schedule);
        let cluster_time = cluster_time(&self.env, &self.spec);
        if cluster_time.is_some() != self.cluster_time.is_some() {
            tracing::info!(job = %self.spec.name(), scope = %self.spec.scope().as_str(), "scope changed; the job's fires are planned anew");
            self.cluster_time = cluster_time;
            (self.plan, self.next) = plan(&self.env, &self.spec, self.cluster_time.as_ref());
            self.last_slot = None;
            return;
        }
        if self.plan.update(self.spec.clone(), &self.env.machine_id) {
            tracing::info!(job = %self.spec.name(), schedule = %self.spec.schedule(), "schedule changed; the grid restarts now");
            self.next = self.plan.first(self.now());
            // A fixed-delay job with a run going waits for its end.
            if self.runs.going() > 0 && self.plan.is_fixed_delay() {
                self.next = None;
            }
        } else {
            tracing::info!(job = %self.spec.name(), "definition changed; effective from the next fire");
        }
    }
}

/// The database's clock, for a cluster job of a node in a cluster.
fn cluster_time(env: &JobEnv, spec: &JobSpec) -> Option<RemoteClock> {
    let cluster = env.cluster.as_ref()?;
    (spec.scope() == Scope::Cluster).then(|| cluster.time().clone())
}

/// Now, on `cluster_time` if given, else on this machine's clock.
fn now_in(env: &JobEnv, cluster_time: Option<&RemoteClock>) -> Now {
    match cluster_time {
        Some(time) => time.read(env.clock().now()),
        None => env.clock().read(),
    }
}

/// The plan of `spec` from now, and its first fire.
fn plan(
    env: &JobEnv,
    spec: &Arc<JobSpec>,
    cluster_time: Option<&RemoteClock>,
) -> (Plan, Option<Due>) {
    let now = now_in(env, cluster_time);
    let mut plan = Plan::new(spec.clone(), &env.machine_id, now);
    if cluster_time.is_some() {
        plan = plan.with_cluster_slots();
    }
    let next = plan.first(now);
    (plan, next)
}

/// A run decided under its job's lock, started once the lock is released: neither a handler's
/// first poll nor a task's spawn holds up the job's other parties.
pub(super) struct Launch {
    ctx: RunContext,
    end: RunEnd,
    /// The job's handler, if it has one.
    handler: Option<HandlerFn>,
    /// Start it on the caller's thread (see [`JobActor::starts_inline`]).
    inline: bool,
}

/// A run that ended at its first poll, not yet booked (metrics, status, history, its log lines,
/// its job told): the dispatcher books these after every fire due at the same instant started,
/// so that booking one run does not delay the start of the next.
pub(crate) struct EndedAtOnce {
    end: RunEnd,
    report: RunReport,
}

impl EndedAtOnce {
    /// Books the run.
    pub fn book(self) {
        self.end.metrics.run_started(self.end.lateness, false);
        self.end.log_started();
        self.end.finish(self.report);
    }
}

/// What the dispatcher keeps across the batches of fires it serves, so that a batch allocates
/// nothing per fire: the runs decided for the job at hand, and the runs that ended at their
/// first poll, to book once every fire of the batch started.
#[derive(Default)]
pub(crate) struct Batch {
    launches: Vec<Launch>,
    ended: Vec<EndedAtOnce>,
}

impl Batch {
    /// Books the runs of the batch that ended at their first poll.
    pub fn book(&mut self) {
        for run in self.ended.drain(..) {
            run.book();
        }
    }
}

/// Starts `launches`; those that end at once go to `ended` if given, else are booked now.
fn launch_all(
    launches: impl IntoIterator<Item = Launch>,
    mut ended: Option<&mut Vec<EndedAtOnce>>,
) {
    for launch in launches {
        launch.start(ended.as_deref_mut());
    }
}

impl Launch {
    fn start(self, ended: Option<&mut Vec<EndedAtOnce>>) {
        let Launch {
            ctx,
            mut end,
            handler,
            inline,
        } = self;
        let started = if inline {
            let began = std::time::Instant::now();
            let started = action::start_with(&end.spec, handler.as_ref(), ctx, &end.env.actions);
            let took = began.elapsed();
            end.first_poll_blocked = (took > BLOCKING_FIRST_POLL).then_some(took);
            started
        } else {
            action::later(&end.spec, ctx, &end.env.actions)
        };
        match (started, ended) {
            (action::Started::Ended(report), Some(ended)) => {
                ended.push(EndedAtOnce { end, report })
            }
            (action::Started::Ended(report), None) => EndedAtOnce { end, report }.book(),
            // A run shows in the status as going once it goes on after its first poll.
            (action::Started::Going(run), _) => {
                end.status
                    .update(|s| s.run_started(end.run_id.0, end.started_wall));
                end.in_flight = true;
                end.metrics.run_started(end.lateness, true);
                end.log_started();
                let runs = end.env.runs.clone();
                runs.spawn(async move {
                    let report = run.await;
                    end.finish(report);
                });
            }
        }
    }
}

/// The end of a run, reported exactly once: by [`RunEnd::finish`] with the run's report, or,
/// if the run's task panicked (or was aborted) before that, by its `Drop` as a failure. Without
/// it a panic outside the handler's own catch (a future whose drop panics) never told the job,
/// and with `overlap = "skip"` the job never fired again.
struct RunEnd {
    spec: Arc<JobSpec>,
    env: Arc<JobEnv>,
    run_id: RunId,
    attempt: u32,
    started: Instant,
    started_wall: DateTime<Utc>,
    /// When the run was due, and how late it started: for the run history.
    scheduled: DateTime<Utc>,
    lateness: Duration,
    metrics: Arc<JobMetrics>,
    status: SharedStatus,
    /// The cluster slot this run settles when it ends (`on_node_loss = "rerun"` jobs).
    settles: Option<DateTime<Utc>>,
    /// How long the handler's first poll blocked the thread that started the run, if too long.
    first_poll_blocked: Option<Duration>,
    /// Counted in the runs-in-flight gauge: it went on after its start.
    in_flight: bool,
    /// The job to tell; taken by the one report.
    ended: Option<Weak<JobCell>>,
}

impl RunEnd {
    /// The run's "run started" line, for a job that logs its runs. A run that ended at its
    /// first poll in a batch of fires has it written when it is booked, after the batch started.
    fn log_started(&self) {
        if self.spec.log() == RunLog::Runs {
            tracing::info!(
                job = %self.spec.name(),
                run = %self.run_id,
                scheduled = %rfc3339_millis(self.scheduled),
                lateness_ms = millis(self.lateness),
                attempt = self.attempt,
                "run started"
            );
        }
    }

    fn finish(mut self, report: RunReport) {
        self.report(report, true);
    }

    /// Counts, logs and tells the job how the run ended; a no-op after the first call. `wait`
    /// for the job's lock, or (from a `Drop`, which may come while it is held: a run dropped
    /// by a runtime that is shutting down) tell the job from a task of its own if it is busy.
    fn report(&mut self, mut report: RunReport, wait: bool) {
        let Some(ended) = self.ended.take() else {
            return;
        };
        let (spec, run_id) = (&self.spec, self.run_id);
        let duration = self
            .env
            .clock()
            .now()
            .saturating_duration_since(self.started);
        let duration_ms = millis(duration);
        self.metrics
            .run_ended(&report, duration, self.started_wall, self.in_flight);
        let started_wall = self.started_wall;
        let node = self.env.cluster.as_ref().map(|cluster| cluster.node());
        self.status
            .update(|s| record_run(s, run_id.0, &report, started_wall, duration_ms, node));
        self.keep_in_history(&mut report, duration_ms, node);
        // A run stopped (by a shutdown whose drain ran out, say) did not do its work: with
        // `on_node_loss = "rerun"` the next owner runs it again.
        if let (Some(slot), Some(cluster), false) = (
            self.settles,
            &self.env.cluster,
            report.outcome == Outcome::Stopped,
        ) {
            cluster.run_settled(spec.name(), slot);
        }
        let reason = report.reason.as_deref();
        // Only what the run has: an exit code or a signal for a child, a status for HTTP, and
        // `forced` only when force was needed.
        let (exit_code, status) = (report.exit_code, report.http_status);
        let signal = report.signal_name().map(tracing::field::display);
        let forced = report.forced.then_some(true);
        match (report.outcome, spec.log()) {
            (_, RunLog::Nothing) | (Outcome::Success | Outcome::Stopped, RunLog::Failures) => {}
            (Outcome::Success, RunLog::Runs) => {
                tracing::info!(job = %spec.name(), run = %run_id, outcome = %report.outcome, duration_ms, exit_code, status, "run finished")
            }
            _ => {
                tracing::warn!(job = %spec.name(), run = %run_id, outcome = %report.outcome, duration_ms, exit_code, signal, status, forced, reason, "run finished")
            }
        }
        let ended_run = RunEnded {
            run_id,
            attempt: self.attempt,
            report,
            first_poll_blocked: self.first_poll_blocked,
        };
        // The job may have been removed meanwhile; then nobody needs to know.
        let Some(cell) = ended.upgrade() else {
            return;
        };
        if wait {
            cell.act(|actor| actor.run_ended(ended_run));
            return;
        }
        let busy = match cell.actor.try_lock() {
            Ok(actor) => {
                let launches = cell.act_locked(actor, |actor| actor.run_ended(ended_run));
                launch_all(launches, None);
                None
            }
            Err(std::sync::TryLockError::Poisoned(_)) => None,
            Err(std::sync::TryLockError::WouldBlock) => Some(ended_run),
        };
        if let (Some(ended_run), Ok(runtime)) = (busy, tokio::runtime::Handle::try_current()) {
            runtime.spawn(async move { cell.act(|actor| actor.run_ended(ended_run)) });
        }
    }
}

impl RunEnd {
    /// Keeps the run in the job's history, moving its output there (nothing after needs it).
    fn keep_in_history(&self, report: &mut RunReport, duration_ms: f64, node: Option<&str>) {
        let limit = self.env.history;
        if limit == 0 {
            return;
        }
        let run = RunRecord {
            run_id: self.run_id.0,
            started: self.started_wall,
            scheduled: self.scheduled,
            lateness_ms: millis(self.lateness),
            duration_ms,
            outcome: std::borrow::Cow::Borrowed(report.outcome.as_str()),
            exit_code: report.exit_code,
            signal: report.signal_name(),
            status: report.http_status,
            reason: report.reason.clone(),
            node: node.map(str::to_owned),
            output: report.output.take(),
        };
        self.status
            .record_history(run, limit, self.env.actions.output_tail);
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
            self.report(RunReport::failure(why), false);
        }
    }
}

/// A time as the log shows it.
fn rfc3339_millis(time: DateTime<Utc>) -> crate::logging::Timestamp {
    crate::logging::Timestamp(time)
}

/// Milliseconds with microsecond resolution, for log fields.
fn millis(duration: Duration) -> f64 {
    (duration.as_micros() as f64) / 1000.0
}
