//! The job's task: a `select!` loop that wires the plan, the runs and the outside together. It
//! sleeps until the plan's next fire (or a retry), and is otherwise woken only by a run ending,
//! a command (reload, run now, pause), a wall-clock step (or, for a cluster job, a correction of
//! the database's clock), or its stop token.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::action::{self, Outcome, RunReport};
use crate::clock::{ClockSteps, Instant, Now, RemoteClock, Sleep};
use crate::config::{JobSpec, OnMissed, OnNodeLoss, RunLog, Scope};
use crate::handler::{ClusterFire, RunContext, RunId};
use crate::metrics::JobMetrics;
use crate::status::{record_run, RunRecord, SharedStatus};

use super::hook::FailureHook;
use super::plan::{Due, Plan};
use super::runs::{self, AfterFailure, FireAction, PendingRetry, Runs, SkipNotices};
use super::{FireResult, JobCommand, JobEnv};

/// A message from a run to its job.
#[derive(Debug)]
struct RunEnded {
    run_id: RunId,
    /// Which attempt the run was: 0 for a scheduled run, n for the n-th retry.
    attempt: u32,
    report: RunReport,
}

pub(super) struct JobActor {
    spec: Arc<JobSpec>,
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
    pub paused: bool,
    /// The definition last given (reloads), for a restart of the task after a panic.
    pub latest_spec: Arc<Mutex<Arc<JobSpec>>>,
    hook: FailureHook,
    /// The overlap skips not told in the log yet (rate-limited).
    skip_notices: SkipNotices,
}

impl JobActor {
    pub fn new(spec: Arc<JobSpec>, env: Arc<JobEnv>, status: SharedStatus) -> Self {
        let (ended_tx, ended_rx) = mpsc::unbounded_channel();
        let cluster_time = cluster_time(&env, &spec);
        let (plan, next) = plan(&env, &spec, cluster_time.as_ref());
        JobActor {
            next,
            plan,
            cluster_time,
            last_slot: None,
            runs: Runs::default(),
            ended_tx,
            ended_rx,
            runs_cancel: env.stop_runs.child_token(),
            metrics: Arc::new(env.metrics.for_job(spec.name())),
            status,
            paused: false,
            latest_spec: Arc::new(Mutex::new(spec.clone())),
            hook: FailureHook::default(),
            skip_notices: SkipNotices::default(),
            spec,
            env,
        }
    }

    /// Now, in the job's time: the database's for a cluster job, this machine's otherwise.
    fn now(&self) -> Now {
        now_in(&self.env, self.cluster_time.as_ref())
    }

    /// Runs the actor until `stop`; `restarted` after a panic of the one before, which already
    /// made the start-up fire.
    pub async fn run(
        mut self,
        commands: &mut mpsc::UnboundedReceiver<JobCommand>,
        stop: CancellationToken,
        restarted: bool,
    ) {
        let schedule = self.spec.schedule().to_string();
        self.status.update(|s| s.schedule = schedule);
        tracing::debug!(job = %self.spec.name(), schedule = %self.spec.schedule(), "job scheduled");
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
        let mut wall_steps = self.env.clock().wall_steps();
        let mut time_corrections = self
            .cluster_time
            .as_ref()
            .map_or_else(ClockSteps::never, RemoteClock::corrections);
        let mut timer = Timer::default();
        let mut retry_timer = Timer::default();
        // What the status shows: (next start, paused).
        let mut published: Option<(Option<Instant>, bool)> = None;
        loop {
            let next = if self.paused { None } else { self.next };
            let start_at = next.map(|due| due.start_at());
            if published != Some((start_at, self.paused)) {
                published = Some((start_at, self.paused));
                self.publish_next(next);
            }
            timer.set(start_at, self.env.clock());
            // A paused job does not retry either.
            let retry_at = self.runs.retry.filter(|_| !self.paused).map(|r| r.at);
            retry_timer.set(retry_at, self.env.clock());
            tokio::select! {
                biased;
                _ = &mut stopped => break,
                Some(command) = commands.recv() => self.command(command),
                Some(ended) = self.ended_rx.recv() => self.run_ended(ended),
                _ = retry_timer.wait() => {
                    if let Some(retry) = self.runs.retry.take() {
                        self.start_retry(retry);
                    }
                }
                // A cluster job's time does not follow this machine's wall clock.
                _ = wall_steps.changed(), if self.plan.is_calendar() && self.cluster_time.is_none() => {
                    self.time_stepped("the wall clock jumped past them");
                }
                _ = time_corrections.changed() => self.cluster_time_corrected(),
                _ = timer.wait() => {
                    if let Some(due) = next {
                        self.due(due);
                    }
                }
            }
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
            JobCommand::Ping(reply) => {
                let _ = reply.send(());
            }
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
        self.runs.ended(ended.run_id);
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
        if spec.log() == RunLog::Runs {
            tracing::info!(
                job = %spec.name(),
                run = %run_id,
                scheduled = %rfc3339_millis(scheduled),
                lateness_ms = millis(lateness),
                attempt,
                "run started"
            );
        }
        self.metrics.run_started(lateness);
        self.status.update(|s| s.run_started(run_id.0, now.wall));
        let ctx = RunContext {
            job: Arc::from(spec.name()),
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
            spec: spec.clone(),
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
            ended: Some(self.ended_tx.clone()),
        };
        let env = self.env.clone();
        self.env.runs.spawn(async move {
            let report = action::execute(&spec, ctx, &env.actions).await;
            end.finish(report);
        });
        run_id
    }

    fn update(&mut self, spec: Arc<JobSpec>) {
        *self
            .latest_spec
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = spec.clone();
        self.spec = spec;
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

/// One of the actor's timers: a sleep kept while its deadline stays the same, so a wake-up for
/// something else does not re-register it.
#[derive(Default)]
struct Timer(Option<(Instant, Sleep)>);

impl Timer {
    /// Makes the timer go off at `at`, or never.
    fn set(&mut self, at: Option<Instant>, clock: &crate::clock::Clock) {
        if self.0.as_ref().map(|(deadline, _)| *deadline) != at {
            self.0 = at.map(|at| (at, clock.sleep_until(at)));
        }
    }

    /// Waits for the deadline (forever when there is none), then clears it.
    async fn wait(&mut self) {
        crate::clock::sleep_or_never(self.0.as_mut().map(|(_, sleep)| sleep)).await;
        self.0 = None;
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
    /// Taken by the one report.
    ended: Option<mpsc::UnboundedSender<RunEnded>>,
}

impl RunEnd {
    fn finish(mut self, report: RunReport) {
        self.report(report);
    }

    /// Counts, logs and tells the job how the run ended; a no-op after the first call.
    fn report(&mut self, mut report: RunReport) {
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
        self.metrics.run_ended(&report, duration, self.started_wall);
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
        // The job may have been removed meanwhile; then nobody needs to know.
        let _ = ended.send(RunEnded {
            run_id,
            attempt: self.attempt,
            report,
        });
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
            outcome: report.outcome.as_str().to_owned(),
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
            self.report(RunReport::failure(why));
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
