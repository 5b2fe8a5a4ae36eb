//! The jobs. A job is its state behind one lock: its plan and its runs in flight, and what each
//! fire does. Overlap is state, not timing: a fire looks at the runs the job knows are still
//! going and applies its policy. No job has a task of its own: what acts on a job calls it.
//!
//! - [`plan`]: when the next fire is due (pure maths over a given "now");
//! - `runs`: the runs going, queued and waiting to retry, and the pure overlap and
//!   retry decisions;
//! - `actor`: the job's state and what acts on it (commands, fires, runs' ends, the clock's
//!   steps), and its restart after a panic;
//! - `dispatch`: the one task that sleeps until the earliest deadline and fires the jobs due;
//! - `steps`: the one task that tells the jobs of the clock's steps;
//! - `hook`: the `on_failure` command, one at a time.
//!
//! This module: the handles the daemon and the endpoint hold.

mod actor;
mod dispatch;
mod hook;
pub mod plan;
pub(crate) mod runs;
mod steps;

use std::sync::{Arc, Weak};

use tokio::sync::oneshot;
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
pub(crate) use steps::StepFollowers;

pub use hook::run_failure_hook;
pub use plan::{machine_id, upcoming, Upcoming};

/// What every job shares with the others.
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
    /// Tells the jobs of the clock's steps.
    pub steps: StepFollowers,
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
            steps: StepFollowers::default(),
        })
    }

    /// The one source of time.
    pub fn clock(&self) -> &Clock {
        &self.actions.clock
    }
}

/// A task of the job module's own (the dispatcher's, the step followers'), spawned at first
/// use rather than when its owner is made (which may be outside a runtime), and stopped when
/// its owner is dropped.
#[derive(Debug, Default)]
pub(super) struct OwnedTask {
    started: std::sync::OnceLock<()>,
    stop: CancellationToken,
}

impl OwnedTask {
    /// Spawns the task `serve` makes, the first time only.
    pub fn start_once<F>(&self, serve: impl FnOnce() -> F)
    where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        self.started.get_or_init(|| {
            let stop = self.stop.clone();
            let serve = serve();
            tokio::spawn(async move {
                tokio::select! {
                    _ = stop.cancelled() => {}
                    () = serve => {}
                }
            });
        });
    }
}

impl Drop for OwnedTask {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// What can be asked of a job.
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
    /// Run a cluster slot the previous owner did not take, once (see `cluster::marks`).
    CatchUp {
        /// The slot.
        slot: chrono::DateTime<chrono::Utc>,
        /// The epoch under which this node took it.
        epoch: i64,
    },
    /// Panic, as a bug in acting on the job would: for the test of its restart.
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

/// A handle to talk to a job from outside (the HTTP endpoint). Cheap to clone; it does not
/// keep a removed job.
#[derive(Debug, Clone)]
pub struct JobControl {
    job: Weak<JobCell>,
    /// The job's status, written by the job and its runs.
    pub status: SharedStatus,
}

impl JobControl {
    /// Asks for a run now; `None` if the job is gone.
    pub async fn run_now(&self) -> Option<FireResult> {
        let (reply, answer) = oneshot::channel();
        self.command(JobCommand::RunNow(reply));
        answer.await.ok()
    }

    /// Pauses (`true`) or resumes the job; `false` if the job is gone.
    pub fn set_paused(&self, paused: bool) -> bool {
        self.command(if paused {
            JobCommand::Pause
        } else {
            JobCommand::Resume
        })
    }

    /// Hands the job a cluster slot to run once as a catch-up; `false` if the job is gone.
    pub(crate) fn catch_up(&self, slot: chrono::DateTime<chrono::Utc>, epoch: i64) -> bool {
        self.command(JobCommand::CatchUp { slot, epoch })
    }

    /// Serves `command`; `false` if the job is gone (removed, or restarting after a panic).
    fn command(&self, command: JobCommand) -> bool {
        self.job.upgrade().is_some_and(|job| job.command(command))
    }

    /// Whether the job answers (its state can be acted on): the health check's proof that it is
    /// not stuck, not stopped by a panic and not gone. It waits while another holds the job,
    /// asking again each millisecond; the caller bounds the wait.
    #[cfg(feature = "http")]
    pub(crate) async fn ping(&self) -> bool {
        loop {
            let Some(job) = self.job.upgrade() else {
                return false;
            };
            if let Some(answers) = job.answers() {
                return answers;
            }
            drop(job);
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        }
    }

    /// A job whose state is held until the returned sender is dropped, as a stuck job's is: for
    /// the endpoint's tests.
    #[cfg(all(test, feature = "http"))]
    pub(crate) fn hold_for_test(&self) -> std::sync::mpsc::Sender<()> {
        let (release, held) = std::sync::mpsc::channel::<()>();
        let job = self.job.upgrade().expect("a job");
        let (taken, is_taken) = std::sync::mpsc::channel();
        std::thread::spawn(move || job.hold_until(&taken, &held));
        is_taken.recv().expect("held");
        release
    }
}

/// The daemon's handle on a job; dropped, it stops the job.
#[derive(Debug)]
pub(crate) struct JobHandle {
    /// The definition the job was last given.
    pub spec: Arc<JobSpec>,
    /// For the endpoint.
    pub control: JobControl,
    job: Arc<JobCell>,
}

impl JobHandle {
    /// Starts the job `spec`. Its runs are spawned on `env.runs`, so they outlive it and are
    /// drained by the daemon.
    pub fn start(spec: Arc<JobSpec>, env: Arc<JobEnv>) -> Self {
        let status = SharedStatus::default();
        let job = JobCell::start(spec.clone(), env, status.clone());
        JobHandle {
            spec,
            control: JobControl {
                job: Arc::downgrade(&job),
                status,
            },
            job,
        }
    }

    /// Gives the job a new definition, effective from its next fire. The grid is kept when the
    /// schedule is unchanged.
    pub fn update(&mut self, spec: Arc<JobSpec>) {
        self.spec = spec.clone();
        self.job.command(JobCommand::Update(spec));
    }

    /// Stops firing; runs in flight go on.
    pub fn stop(self) {
        drop(self);
    }

    /// A job that runs the built-in `log` handler hourly, on a manual clock: for the
    /// endpoint's tests.
    #[cfg(all(test, feature = "http"))]
    pub(crate) fn for_test() -> Self {
        let clock = Clock::manual(chrono::Utc::now());
        let env = JobEnv::for_test(clock, crate::Handlers::with_builtins(), None);
        JobHandle::start(log_job("1h"), env)
    }
}

/// Job `j`, the built-in `log` handler `every`: for tests.
#[cfg(test)]
fn log_job(every: &str) -> Arc<JobSpec> {
    crate::config::parse(
        std::path::Path::new("jobs.toml"),
        &format!("[jobs.j]\nevery = \"{every}\"\nhandler = \"log\"\n"),
        &crate::Handlers::with_builtins(),
    )
    .expect("valid")
    .jobs()["j"]
        .clone()
}

impl Drop for JobHandle {
    fn drop(&mut self) {
        self.job.stop();
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

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
        let run = |spec| JobHandle::start(spec, env.clone());
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
        let job = JobHandle::start(spec, env);
        tokio::time::sleep(Duration::from_millis(100)).await;
        // Wake the task with a command, and step the clock before it runs.
        assert!(job.control.set_paused(false));
        clock.step_wall(chrono::Duration::minutes(10));
        tokio::time::sleep(Duration::from_secs(31)).await;
        let at = |m| start - chrono::Duration::seconds(30) + chrono::Duration::minutes(m);
        assert_eq!(*seen.lock().expect("lock"), [at(11)]);
        assert_eq!(job.control.status.snapshot().runs.missed, 10);
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
        let _job = JobHandle::start(config.jobs()["c"].clone(), Arc::new(env));
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
    }

    /// An environment with the built-in handlers on a manual clock from 2026-01-01.
    fn log_job_env() -> Arc<JobEnv> {
        let start = DateTime::parse_from_rfc3339("2026-01-01T00:00:00Z")
            .expect("time")
            .with_timezone(&Utc);
        JobEnv::for_test(Clock::manual(start), Handlers::with_builtins(), None)
    }

    /// A panicked job task's `JoinError` was dropped: the job stopped firing for good, silently.
    #[tokio::test(start_paused = true)]
    async fn a_job_task_that_panics_is_restarted_with_its_latest_definition() {
        let env = log_job_env();
        let mut job = JobHandle::start(log_job("1s"), env.clone());
        tokio::time::sleep(Duration::from_millis(1_500)).await;
        job.update(log_job("500ms"));
        tokio::time::sleep(Duration::from_millis(100)).await;
        job.control.command(JobCommand::Panic);
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
        job.stop();
    }

    /// A new definition and a pause given while a panicked job waits for its restart are what
    /// the restart starts from, as they were when a task queued them: without, the restart took
    /// the definition of the moment of the panic, and a reload in the backoff was lost.
    #[tokio::test(start_paused = true)]
    async fn a_definition_given_while_a_job_waits_for_its_restart_is_kept() {
        let env = log_job_env();
        let mut job = JobHandle::start(log_job("1s"), env);
        tokio::time::sleep(Duration::from_millis(1_500)).await;
        // At 1.5 s; the restart comes 1 s later.
        assert!(job.control.command(JobCommand::Panic));
        tokio::time::sleep(Duration::from_millis(100)).await;
        job.update(log_job("200ms"));
        assert!(job.control.set_paused(true), "kept for the restart");
        assert_eq!(job.control.run_now().await, None, "refused until then");
        tokio::time::sleep(Duration::from_millis(1_450)).await;
        // 3.05 s: restarted at 2.5 s with the new definition, paused.
        let status = job.control.status.snapshot();
        assert_eq!(status.task_restarts, 1);
        assert_eq!(status.schedule, "every 200ms");
        assert!(status.paused, "{status:?}");
        assert_eq!(status.runs.success, 1, "{status:?}");
        assert!(job.control.set_paused(false));
        tokio::time::sleep(Duration::from_millis(400)).await;
        // Resumed: at 3.1 s and 3.3 s, on the new grid.
        assert_eq!(job.control.status.snapshot().runs.success, 1 + 2);
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
        let a = JobHandle::start(config.jobs()["a"].clone(), env.clone());
        let b = JobHandle::start(config.jobs()["b"].clone(), env.clone());
        tokio::time::sleep(Duration::from_millis(1_200)).await;
        a.control.command(JobCommand::PanicAtNextFire);
        tokio::time::sleep(Duration::from_millis(2_400)).await;
        let (a_status, b_status) = (a.control.status.snapshot(), b.control.status.snapshot());
        assert_eq!(a_status.task_restarts, 1, "{a_status:?}");
        // a: at 0.5 s and 1 s; the panic at 1.5 s; restarted 1 s later, at 3 s and 3.5 s.
        assert_eq!(a_status.runs.success, 2 + 2, "{a_status:?}");
        // b: every 500 ms throughout.
        assert_eq!(b_status.runs.success, 7, "{b_status:?}");
        assert_eq!(b_status.task_restarts, 0);
        a.stop();
        b.stop();
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
        let jobs: Vec<JobHandle> = ["a", "b", "c"]
            .iter()
            .map(|job| JobHandle::start(config.jobs()[*job].clone(), env.clone()))
            .collect();
        let _ = statuses.set(jobs.iter().map(|job| job.control.status.clone()).collect());
        tokio::time::sleep(Duration::from_millis(3_500)).await;
        for job in jobs {
            job.stop();
        }
        // Three instants of three runs each: every run of an instant saw the runs of the
        // instants before it booked, and none of its own.
        assert_eq!(*seen.lock().expect("lock"), [0, 0, 0, 3, 3, 3, 6, 6, 6]);
    }

    /// A job looks its handler up once, not at each fire: a new definition that names another
    /// handler must run that one from its next fire, not the one looked up at the start.
    #[tokio::test(start_paused = true)]
    async fn a_new_definition_with_another_handler_runs_that_handler_from_its_next_fire() {
        let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
        let mut handlers = Handlers::with_builtins();
        for name in ["first", "second"] {
            let seen = seen.clone();
            handlers.register(name, move |_ctx: RunContext| {
                seen.lock().expect("lock").push(name);
                async { Ok::<(), crate::handler::HandlerError>(()) }
            });
        }
        let job_with = |handler: &str| {
            let text = format!("[jobs.j]\nevery = \"1s\"\nhandler = \"{handler}\"\n");
            crate::config::parse(std::path::Path::new("jobs.toml"), &text, &handlers)
                .expect("valid")
                .jobs()["j"]
                .clone()
        };
        let start = DateTime::parse_from_rfc3339("2026-01-01T00:00:00Z")
            .expect("time")
            .with_timezone(&Utc);
        let env = JobEnv::for_test(Clock::manual(start), handlers.clone(), None);
        let mut job = JobHandle::start(job_with("first"), env);
        tokio::time::sleep(Duration::from_millis(1_500)).await;
        job.update(job_with("second"));
        tokio::time::sleep(Duration::from_millis(1_000)).await;
        job.stop();
        assert_eq!(*seen.lock().expect("lock"), ["first", "second"]);
    }

    /// The dispatcher reads a batch's jobs ahead of their turn (`dispatch::ReadAhead`, several
    /// places on): with more jobs due at one instant than it reads ahead, and one stopped
    /// among them, every other job runs once per instant, none skipped or run twice, in the
    /// same order at every instant.
    #[tokio::test(start_paused = true)]
    async fn every_job_of_a_large_instant_runs_once_in_a_stable_order() {
        let seen = Arc::new(std::sync::Mutex::new(Vec::<Arc<str>>::new()));
        let mut handlers = Handlers::with_builtins();
        let record = seen.clone();
        handlers.register("record", move |ctx: RunContext| {
            record.lock().expect("lock").push(ctx.job.clone());
            async { Ok::<(), crate::handler::HandlerError>(()) }
        });
        let names: Vec<String> = (0..20).map(|i| format!("j{i:02}")).collect();
        let text: String = names
            .iter()
            .map(|job| {
                format!("[jobs.{job}]\nevery = \"1s\"\nalign = true\nhandler = \"record\"\n")
            })
            .collect();
        let config = crate::config::parse(std::path::Path::new("jobs.toml"), &text, &handlers)
            .expect("valid");
        let start = DateTime::parse_from_rfc3339("2026-01-01T00:00:00Z")
            .expect("time")
            .with_timezone(&Utc);
        let env = JobEnv::for_test(Clock::manual(start), handlers, None);
        let mut jobs: Vec<Option<JobHandle>> = names
            .iter()
            .map(|job| {
                Some(JobHandle::start(
                    config.jobs()[job.as_str()].clone(),
                    env.clone(),
                ))
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(1_500)).await;
        // After the first instant (1 s): j05 stops.
        if let Some(job) = jobs[5].take() {
            job.stop();
        }
        tokio::time::sleep(Duration::from_millis(2_000)).await;
        for job in jobs.into_iter().flatten() {
            job.stop();
        }
        let seen = seen.lock().expect("lock");
        assert_eq!(seen.len(), 20 + 19 + 19, "{seen:?}");
        let (first, rest) = seen.split_at(20);
        let mut all: Vec<&str> = first.iter().map(|job| &**job).collect();
        all.sort_unstable();
        assert_eq!(all, names.iter().map(String::as_str).collect::<Vec<_>>());
        let without_j05: Vec<&Arc<str>> = first.iter().filter(|job| &***job != "j05").collect();
        for instant in rest.chunks(19) {
            assert_eq!(instant.iter().collect::<Vec<_>>(), without_j05, "{seen:?}");
        }
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
        let a = JobHandle::start(config.jobs()["a"].clone(), env.clone());
        let b = JobHandle::start(config.jobs()["b"].clone(), env.clone());
        tokio::time::sleep(Duration::from_millis(3_500)).await;
        a.stop();
        b.stop();
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
        let job = JobHandle::start(spec, env);
        tokio::time::sleep(Duration::from_millis(3_500)).await;
        let status = job.control.status.snapshot();
        // Runs at 1 s, 2 s and 3 s, each ended (as a failure), none left "running".
        assert_eq!(status.runs.failure, 3, "{status:?}");
        assert_eq!(status.running(), 0, "{status:?}");
        let reason = status.last_run.and_then(|r| r.reason).unwrap_or_default();
        assert!(reason.contains("panicked"), "{reason}");
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
        let jobs: Vec<JobHandle> = config
            .jobs()
            .values()
            .map(|spec| JobHandle::start(spec.clone(), env.clone()))
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
    }
}
