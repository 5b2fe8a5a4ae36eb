//! One task per job: it owns the job's plan and its runs in flight, and decides what each fire
//! does. Overlap is state, not timing: a fire looks at the runs this task knows are still going
//! and applies the job's policy.
//!
//! - [`plan`]: when the next fire is due (pure maths over a given "now");
//! - `runs`: the runs going, queued and waiting to retry, and the pure overlap and
//!   retry decisions;
//! - `actor`: the task's `select!` loop that wires them to the clock, the commands and the runs'
//!   ends;
//! - `hook`: the `on_failure` command, one at a time.
//!
//! This module: the handles the daemon and the endpoint hold, and the supervision that restarts
//! a task that panicked.

mod actor;
mod dispatch;
mod hook;
pub mod plan;
pub(crate) mod runs;

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::action::RunEnv;
use crate::clock::Clock;
use crate::config::JobSpec;
use crate::handler::{RunId, RunIds};
use crate::metrics::Metrics;
use crate::state::StateStore;
use crate::status::SharedStatus;

use actor::JobCell;
pub(crate) use dispatch::Dispatcher;

pub use hook::run_failure_hook;
pub use plan::{machine_id, upcoming, Upcoming};

/// What every job task shares with the others.
#[derive(Debug)]
pub(crate) struct JobEnv {
    /// What runs need to perform their actions.
    pub actions: Arc<RunEnv>,
    /// The daemon's metrics; each job takes its handles once.
    pub metrics: Arc<Metrics>,
    /// Last fire times of `on_missed = "once"` jobs; `None` without `[daemon] state_file`.
    pub state: Option<Arc<StateStore>>,
    /// This machine's identity: seeds `spread` delays.
    pub machine_id: String,
    /// Numbers the runs (and tells the supervisor when `max_runs` is reached).
    pub run_ids: Arc<RunIds>,
    /// Parent of every run's cancellation token: cancelled when shutdown stops the runs that
    /// outlived the drain timeout.
    pub stop_runs: CancellationToken,
    /// Every run of every job: what the shutdown drains.
    pub runs: TaskTracker,
    /// With `[cluster]`: this node's part in it, asked before a cluster job fires.
    pub cluster: Option<crate::cluster::Cluster>,
    /// How many ended runs each job keeps for `/jobs/{name}/runs` (`[daemon] history`; 0: none).
    pub history: usize,
    /// Acts on the jobs when their fires and retries come due.
    pub dispatcher: Dispatcher,
}

impl JobEnv {
    /// An environment of its own for a job under test.
    #[cfg(test)]
    pub fn for_test(
        clock: Clock,
        handlers: crate::Handlers,
        state: Option<Arc<StateStore>>,
    ) -> Arc<Self> {
        let clock_for_dispatch = clock.clone();
        Arc::new(JobEnv {
            actions: Arc::new(RunEnv::new(clock, handlers, None).expect("run env")),
            metrics: Arc::default(),
            state,
            machine_id: machine_id(),
            run_ids: Arc::default(),
            stop_runs: CancellationToken::new(),
            runs: TaskTracker::new(),
            cluster: None,
            history: crate::config::DEFAULT_HISTORY,
            dispatcher: Dispatcher::new(clock_for_dispatch),
        })
    }

    /// The one source of time.
    pub fn clock(&self) -> &Clock {
        &self.actions.clock
    }
}

/// The sending end of a job's commands. futures' unbounded channel, not tokio's: it allocates
/// per message and next to nothing up front, where tokio's takes a block of 32 slots and a
/// cache-padded header (1.3 KB per job, 13 MB at 10,000 jobs) for a queue that sees a command
/// now and then; fires never go through it.
pub(crate) type CommandSender = futures_channel::mpsc::UnboundedSender<JobCommand>;

/// The job task's end of its commands (see [`CommandSender`]).
pub(crate) type CommandInbox = futures_channel::mpsc::UnboundedReceiver<JobCommand>;

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
    #[cfg(feature = "http")]
    Ping(oneshot::Sender<()>),
    /// Run a cluster slot the previous owner did not take, once (see `cluster::marks`).
    CatchUp {
        /// The slot.
        slot: chrono::DateTime<chrono::Utc>,
        /// The epoch under which this node took it.
        epoch: i64,
    },
    /// Panic, as a bug in the task would: for the test of its restart.
    #[cfg(test)]
    Panic,
    /// Panic at the next fire, in the dispatcher: for the test of that restart.
    #[cfg(test)]
    PanicAtNextFire,
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

/// The jobs by name, as the HTTP endpoint sees them, kept current by the supervisor across
/// reloads.
pub type Directory =
    std::sync::Arc<std::sync::RwLock<std::collections::BTreeMap<String, JobControl>>>;

/// A handle to talk to a job task from outside (the HTTP endpoint). Cheap to clone.
#[derive(Debug, Clone)]
pub struct JobControl {
    commands: CommandSender,
    /// The job's status, written by its task.
    pub status: SharedStatus,
}

impl JobControl {
    /// Asks for a run now; `None` if the job is gone.
    pub async fn run_now(&self) -> Option<FireResult> {
        let (reply, answer) = oneshot::channel();
        self.commands
            .unbounded_send(JobCommand::RunNow(reply))
            .ok()?;
        answer.await.ok()
    }

    /// Pauses (`true`) or resumes the job; `false` if the job is gone.
    pub fn set_paused(&self, paused: bool) -> bool {
        let command = if paused {
            JobCommand::Pause
        } else {
            JobCommand::Resume
        };
        self.commands.unbounded_send(command).is_ok()
    }

    /// A control whose commands land in the returned receiver, for tests that play the task.
    #[cfg(all(test, feature = "http"))]
    pub(crate) fn detached() -> (Self, CommandInbox) {
        let (commands, receiver) = futures_channel::mpsc::unbounded();
        let status = SharedStatus::default();
        (JobControl { commands, status }, receiver)
    }

    /// Hands the job a cluster slot to run once as a catch-up; `false` if the job is gone.
    pub(crate) fn catch_up(&self, slot: chrono::DateTime<chrono::Utc>, epoch: i64) -> bool {
        self.commands
            .unbounded_send(JobCommand::CatchUp { slot, epoch })
            .is_ok()
    }

    /// Asks the job's task to answer; the receiver yields `Err` if the task is gone. The caller
    /// bounds the wait: a task that never answers is stuck.
    #[cfg(feature = "http")]
    pub(crate) fn ping(&self) -> oneshot::Receiver<()> {
        let (reply, answer) = oneshot::channel();
        // A failed send drops `reply`, so `answer` reports the task gone.
        let _ = self.commands.unbounded_send(JobCommand::Ping(reply));
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
    /// on `env.runs`, so they outlive it and are drained by the daemon.
    pub fn spawn(spec: Arc<JobSpec>, env: Arc<JobEnv>, stop: CancellationToken) -> Self {
        let (commands, commands_rx) = futures_channel::mpsc::unbounded();
        let status = SharedStatus::default();
        let task = tokio::spawn(supervise_actor(
            spec.clone(),
            env,
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
        let _ = self
            .control
            .commands
            .unbounded_send(JobCommand::Update(spec));
    }

    /// Stops firing; runs in flight go on. Returns the task to await.
    pub fn stop(self) -> JoinHandle<()> {
        self.stop.cancel();
        self.task
    }
}

/// Runs a job's actor until `stop`; an actor that panics (a bug) is logged, counted in the job's
/// status and `tickd_job_task_restarts_total`, and started again from its schedule with the
/// definition it last had, so a bug cannot silently stop a job for good. Runs it had in flight
/// go on, unknown to the new actor.
async fn supervise_actor(
    spec: Arc<JobSpec>,
    env: Arc<JobEnv>,
    status: SharedStatus,
    mut commands: CommandInbox,
    stop: CancellationToken,
) {
    use futures_util::FutureExt;
    let mut spec = spec;
    let mut restarted = false;
    let mut backoff = TASK_RESTART_BACKOFF;
    loop {
        let cell = JobCell::new(spec.clone(), env.clone(), status.clone());
        let latest = cell.with(|actor| {
            // What the endpoint set survives the restart.
            actor.paused = restarted && status.snapshot().paused;
            actor.latest_spec.clone()
        });
        let ran = std::panic::AssertUnwindSafe(cell.run(&mut commands, stop.clone(), restarted))
            .catch_unwind()
            .await;
        let Err(panic) = ran else { return };
        let message = crate::action::panic_message(&*panic);
        spec = latest
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        tracing::error!(job = %spec.name(), "the job's task panicked (a bug: please report it); restarting it from its schedule: {message}");
        env.metrics.job_task_restarted(spec.name());
        status.update(|s| s.task_restarts += 1);
        // A task that panics at once must not spin: wait, longer each time.
        tokio::select! {
            _ = env.clock().sleep(backoff) => {}
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

#[cfg(test)]
mod tests {
    use chrono::{DateTime, Utc};

    use super::*;
    use crate::handler::{Handlers, RunContext};

    /// The scheduled times the `record` handler's runs were given.
    type Seen = Arc<std::sync::Mutex<Vec<DateTime<Utc>>>>;

    /// A run environment whose `record` handler writes its runs' scheduled times to [`Seen`].
    fn recording_env(clock: Clock, state: Arc<crate::state::StateStore>) -> (Arc<JobEnv>, Seen) {
        let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
        let mut handlers = Handlers::with_builtins();
        let record = seen.clone();
        handlers.register("record", move |ctx: RunContext| {
            record.lock().expect("lock").push(ctx.scheduled);
            async { Ok::<(), crate::handler::HandlerError>(()) }
        });
        (JobEnv::for_test(clock, handlers, Some(state)), seen)
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
            handlers.register("record", |_ctx: RunContext| async {
                Ok::<(), crate::handler::HandlerError>(())
            });
            let text = format!("[daemon]\nstate_file = \"unused\"\n[jobs.{name}]\n{schedule}\nhandler = \"record\"\non_missed = \"once\"\n");
            crate::config::parse(std::path::Path::new("jobs.toml"), &text, &handlers)
                .expect("valid")
                .jobs()[name]
                .clone()
        };
        let stop = CancellationToken::new();
        let run = |spec| JobHandle::spawn(spec, env.clone(), stop.clone());
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
        handlers.register("record", |_ctx: RunContext| async {
            Ok::<(), crate::handler::HandlerError>(())
        });
        let spec = crate::config::parse(
            std::path::Path::new("jobs.toml"),
            "[jobs.c]\ncron = \"0 * * * * *\"\nhandler = \"record\"\n",
            &handlers,
        )
        .expect("valid")
        .jobs()["c"]
            .clone();
        let stop = CancellationToken::new();
        let job = JobHandle::spawn(spec, env, stop.clone());
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

    /// A cluster job fires on the database's clock: a step of this node's wall clock moves
    /// nothing, and a correction of the estimate moves when its slots fire, never which: the
    /// slot that a correction forward moved into the past fires at once, then the grid goes on.
    #[tokio::test(start_paused = true)]
    async fn a_cluster_job_fires_on_the_databases_clock_whatever_the_wall_clock_does() {
        let start = DateTime::parse_from_rfc3339("2026-01-01T00:00:30Z")
            .expect("time")
            .with_timezone(&Utc);
        let clock = Clock::manual(start);
        let dir = tempfile::tempdir().expect("tempdir");
        let state = Arc::new(crate::state::StateStore::open(&dir.path().join("state")));
        let (env, seen) = recording_env(clock.clone(), state);
        let config = crate::config::parse(
            std::path::Path::new("jobs.toml"),
            "[cluster]\npostgres = \"postgres://db/app\"\n[jobs.c]\nevery = \"250ms\"\nhandler = \"record\"\n",
            &env.actions.handlers,
        )
        .expect("valid");
        let cluster = crate::cluster::Cluster::owning_all_slots(&config, &clock);
        let mut env = Arc::try_unwrap(env).expect("one owner");
        env.cluster = Some(cluster.clone());
        let stop = CancellationToken::new();
        let _job = JobHandle::spawn(config.jobs()["c"].clone(), Arc::new(env), stop.clone());
        let ms = chrono::Duration::milliseconds;
        tokio::time::sleep(Duration::from_millis(510)).await;
        // The wall clock is stepped an hour: the slots go on from 30.5.
        clock.step_wall(chrono::Duration::hours(1));
        tokio::time::sleep(Duration::from_millis(500)).await;
        // 31.010 by the estimate: the database's clock turns out to be 2 s ahead. Slot 31.25 is
        // in the past then: it fires at once, and the grid goes on from 33.25.
        let now = clock.now();
        cluster
            .time()
            .observe(now, now, start + ms(3_010), clock.read());
        tokio::time::sleep(Duration::from_millis(300)).await;
        let want: Vec<DateTime<Utc>> = [250, 500, 750, 1_000, 1_250, 3_250]
            .into_iter()
            .map(|m| start + ms(m))
            .collect();
        assert_eq!(*seen.lock().expect("lock"), want);
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
            .jobs()["j"]
                .clone()
        };
        let env = JobEnv::for_test(Clock::manual(start), handlers.clone(), None);
        let stop = CancellationToken::new();
        let mut job = JobHandle::spawn(spec("1s"), env.clone(), stop.clone());
        tokio::time::sleep(Duration::from_millis(1_500)).await;
        job.update(spec("500ms"));
        tokio::time::sleep(Duration::from_millis(100)).await;
        job.control
            .commands
            .unbounded_send(JobCommand::Panic)
            .expect("send");
        tokio::time::sleep(Duration::from_millis(2_050)).await;
        let status = job.control.status.snapshot();
        assert_eq!(status.task_restarts, 1);
        // 1 run before the panic; the restart 1 s later (the backoff), then every 500 ms (the
        // latest definition): at 3.1 s and 3.6 s.
        assert_eq!(status.runs.success, 1 + 2, "{status:?}");
        assert_eq!(status.schedule, "every 500ms");
        let metrics = env.metrics.encode();
        assert!(
            metrics.contains("tickd_job_task_restarts_total{job_name=\"j\"} 1"),
            "{metrics}"
        );
        stop.cancel();
        job.stop().await.expect("the task ends when stopped");
    }

    /// A panic where the dispatcher acts on a job must not stop the dispatcher (every job would
    /// stop firing): the job is restarted like a task that panicked, and the others go on.
    #[tokio::test(start_paused = true)]
    async fn a_panic_at_a_fire_restarts_that_job_and_the_others_go_on_firing() {
        let start = DateTime::parse_from_rfc3339("2026-01-01T00:00:00Z")
            .expect("time")
            .with_timezone(&Utc);
        let handlers = Handlers::with_builtins();
        let config = crate::config::parse(
            std::path::Path::new("jobs.toml"),
            "[jobs.a]\nevery = \"500ms\"\nhandler = \"log\"\n[jobs.b]\nevery = \"500ms\"\nhandler = \"log\"\n",
            &handlers,
        )
        .expect("valid");
        let env = JobEnv::for_test(Clock::manual(start), handlers.clone(), None);
        let stop = CancellationToken::new();
        let a = JobHandle::spawn(config.jobs()["a"].clone(), env.clone(), stop.clone());
        let b = JobHandle::spawn(config.jobs()["b"].clone(), env.clone(), stop.clone());
        tokio::time::sleep(Duration::from_millis(1_200)).await;
        a.control
            .commands
            .unbounded_send(JobCommand::PanicAtNextFire)
            .expect("send");
        tokio::time::sleep(Duration::from_millis(2_400)).await;
        let (a_status, b_status) = (a.control.status.snapshot(), b.control.status.snapshot());
        assert_eq!(a_status.task_restarts, 1, "{a_status:?}");
        // a: at 0.5 s and 1 s; the panic at 1.5 s; restarted 1 s later, at 3 s and 3.5 s.
        assert_eq!(a_status.runs.success, 2 + 2, "{a_status:?}");
        // b: every 500 ms throughout.
        assert_eq!(b_status.runs.success, 7, "{b_status:?}");
        assert_eq!(b_status.task_restarts, 0);
        stop.cancel();
        a.stop().await.expect("a ends");
        b.stop().await.expect("b ends");
    }

    /// The fires due at one instant all start before any of their runs is booked (metrics,
    /// status, history, log lines): booking one run must not delay the start of the next.
    #[tokio::test(start_paused = true)]
    async fn the_runs_of_one_instant_all_start_before_any_is_booked() {
        let start = DateTime::parse_from_rfc3339("2026-01-01T00:00:00Z")
            .expect("time")
            .with_timezone(&Utc);
        let statuses: Arc<std::sync::OnceLock<Vec<SharedStatus>>> = Arc::default();
        let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
        let mut handlers = Handlers::with_builtins();
        let (statuses_in, seen_in) = (statuses.clone(), seen.clone());
        handlers.register("count", move |_ctx: RunContext| {
            // Runs booked so far, over the three jobs, as each run starts.
            let booked: u64 = statuses_in
                .get()
                .map_or(0, |all| all.iter().map(|s| s.snapshot().runs.success).sum());
            seen_in.lock().expect("lock").push(booked);
            async { Ok::<(), crate::handler::HandlerError>(()) }
        });
        // The statuses are only known once the jobs are spawned: share them through the cell
        // from the first run on (the first instant sees none either way).
        let text: String = ["a", "b", "c"]
            .iter()
            .map(|job| format!("[jobs.{job}]\nevery = \"1s\"\nalign = true\nhandler = \"count\"\n"))
            .collect();
        let config = crate::config::parse(std::path::Path::new("jobs.toml"), &text, &handlers)
            .expect("valid");
        let env = JobEnv::for_test(Clock::manual(start), handlers, None);
        let stop = CancellationToken::new();
        let jobs: Vec<JobHandle> = ["a", "b", "c"]
            .iter()
            .map(|job| JobHandle::spawn(config.jobs()[*job].clone(), env.clone(), stop.clone()))
            .collect();
        let _ = statuses.set(jobs.iter().map(|job| job.control.status.clone()).collect());
        tokio::time::sleep(Duration::from_millis(3_500)).await;
        stop.cancel();
        for job in jobs {
            job.stop().await.expect("job ends");
        }
        // Three instants of three runs each: every run of an instant saw the runs of the
        // instants before it booked, and none of its own.
        assert_eq!(*seen.lock().expect("lock"), [0, 0, 0, 3, 3, 3, 6, 6, 6]);
    }

    /// A handler that blocks its thread at its first poll would hold up every job due with it
    /// (its first poll is made where the fire is decided): after one such poll, the job's runs
    /// start on tasks of their own, and the others' still start where their fires are decided.
    #[tokio::test(start_paused = true)]
    async fn a_handler_that_blocks_its_first_poll_gets_tasks_of_its_own() {
        let start = DateTime::parse_from_rfc3339("2026-01-01T00:00:00Z")
            .expect("time")
            .with_timezone(&Utc);
        let tasks = Arc::new(std::sync::Mutex::new(Vec::new()));
        let mut handlers = Handlers::with_builtins();
        let (blocking, quick) = (tasks.clone(), tasks.clone());
        handlers.register("blocking", move |_ctx: RunContext| {
            // Blocking where it must not: in the handler's synchronous part.
            std::thread::sleep(Duration::from_millis(3));
            blocking
                .lock()
                .expect("lock")
                .push(("blocking", tokio::task::try_id()));
            async { Ok::<(), crate::handler::HandlerError>(()) }
        });
        handlers.register("quick", move |_ctx: RunContext| {
            quick
                .lock()
                .expect("lock")
                .push(("quick", tokio::task::try_id()));
            async { Ok::<(), crate::handler::HandlerError>(()) }
        });
        let config = crate::config::parse(
            std::path::Path::new("jobs.toml"),
            "[jobs.a]\nevery = \"1s\"\nalign = true\nhandler = \"blocking\"\n[jobs.b]\nevery = \"1s\"\nalign = true\nhandler = \"quick\"\n",
            &handlers,
        )
        .expect("valid");
        let env = JobEnv::for_test(Clock::manual(start), handlers, None);
        let stop = CancellationToken::new();
        let a = JobHandle::spawn(config.jobs()["a"].clone(), env.clone(), stop.clone());
        let b = JobHandle::spawn(config.jobs()["b"].clone(), env.clone(), stop.clone());
        tokio::time::sleep(Duration::from_millis(3_500)).await;
        stop.cancel();
        a.stop().await.expect("a ends");
        b.stop().await.expect("b ends");
        let tasks = tasks.lock().expect("lock").clone();
        let of = |job| -> Vec<_> {
            tasks
                .iter()
                .filter(|(j, _)| *j == job)
                .map(|(_, id)| *id)
                .collect()
        };
        let (blocking, quick) = (of("blocking"), of("quick"));
        assert_eq!((blocking.len(), quick.len()), (3, 3), "{tasks:?}");
        // The quick job always starts in the dispatcher's task; the blocking one did once.
        let dispatcher = quick[0];
        assert!(quick.iter().all(|id| *id == dispatcher), "{tasks:?}");
        assert_eq!(blocking[0], dispatcher, "{tasks:?}");
        assert!(
            blocking[1..].iter().all(|id| *id != dispatcher),
            "{tasks:?}"
        );
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
                Ok::<(), crate::handler::HandlerError>(())
            }
        });
        let spec = crate::config::parse(
            std::path::Path::new("jobs.toml"),
            "[jobs.p]\nevery = \"1s\"\ntimeout = \"100ms\"\nkill_grace = \"0s\"\nhandler = \"stuck\"\n",
            &handlers,
        )
        .expect("valid")
        .jobs()["p"]
        .clone();
        let env = JobEnv::for_test(Clock::manual(start), handlers, None);
        let stop = CancellationToken::new();
        let job = JobHandle::spawn(spec, env, stop.clone());
        tokio::time::sleep(Duration::from_millis(3_500)).await;
        let status = job.control.status.snapshot();
        // Runs at 1 s, 2 s and 3 s, each ended (as a failure), none left "running".
        assert_eq!(status.runs.failure, 3, "{status:?}");
        assert_eq!(status.running(), 0, "{status:?}");
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
        let env = JobEnv::for_test(clock.clone(), handlers, None);
        let stop = CancellationToken::new();
        let jobs: Vec<JobHandle> = config
            .jobs()
            .values()
            .map(|spec| JobHandle::spawn(spec.clone(), env.clone(), stop.clone()))
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
            let series = format!("tickd_fires_missed_total{{job_name=\"{job}\"}} {missed}");
            assert!(metrics.contains(&series), "{series} in\n{metrics}");
        }
        stop.cancel();
    }
}
