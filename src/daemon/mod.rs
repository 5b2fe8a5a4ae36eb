//! The supervisor: starts what the jobs share and one task per job, applies reloads, recycles
//! the daemon at its limits (`recycle`), and runs the shutdown sequence.
//!
//! Control comes in from outside as [`Control`] messages (the binary maps OS signals to them;
//! tests send them directly), so the daemon has no `if test` branches and no signal handling of
//! its own.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::action::RunEnv;
use crate::clock::Clock;
use crate::cluster::Cluster;
use crate::config::{self, Config};
use crate::handler::Handlers;
use crate::job::Directory;
use crate::job::{JobEnv, JobHandle};
use crate::metrics::Metrics;
use crate::notify::Notifier;
use crate::process::GroupKeeper;
use crate::state::StateStore;

mod recycle;
use recycle::Recycler;

/// What the outside world asks of a running daemon.
#[derive(Debug, Clone)]
pub enum Control {
    /// Re-read the configuration file (SIGHUP).
    Reload,
    /// Apply this configuration as a reload would, without reading the file: jobs added,
    /// changed and removed from code ([`crate::builder::DaemonHandle`]). The sender validated it.
    Apply(Box<Config>),
    /// Stop (SIGTERM, SIGINT, SIGQUIT). The first one starts the drain; a second one skips the
    /// wait.
    Shutdown,
    /// Write a status summary to the log: one line for the daemon, one per job (SIGUSR1).
    Report,
}

/// How the daemon stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stopped {
    /// Stop requested; every run in flight finished on its own.
    Drained,
    /// Stop requested; runs were still going after the drain timeout (or a second stop request)
    /// and were stopped.
    RunsStopped,
    /// The daemon recycled itself (`max_uptime` reached) so that its process manager starts a
    /// fresh one; `runs_stopped` as for [`Stopped::RunsStopped`].
    Recycled {
        /// Whether runs had to be stopped after the drain timeout.
        runs_stopped: bool,
    },
}

/// A fatal error of the daemon itself (never of a job).
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// What runs need (the process spawner, the HTTP client) could not be set up.
    #[error(transparent)]
    RunEnv(#[from] crate::action::RunEnvError),
    /// The orphan reaper could not be set up.
    #[error("cannot become a subreaper: {0}")]
    Subreaper(#[source] std::io::Error),
    /// The HTTP endpoint could not listen.
    #[error("cannot listen on {addr} for the HTTP endpoint: {source}")]
    Http {
        /// The address.
        addr: std::net::SocketAddr,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The group keeper process could not be started.
    #[error("cannot start the group keeper: {0}")]
    Keeper(#[source] std::io::Error),
}

/// What the daemon needs besides its first configuration.
#[derive(Debug, Clone)]
pub struct DaemonOptions {
    /// The file re-read on [`Control::Reload`].
    pub config_path: PathBuf,
    /// In-process handlers jobs may name.
    pub handlers: Handlers,
    /// The source of time.
    pub clock: Clock,
    /// The `tickd` binary, run as `tickd __keeper` to kill the jobs' process groups should the
    /// daemon be killed (see [`crate::process::GroupKeeper`]). `None`: only each run's first
    /// process dies with the daemon.
    pub group_keeper: Option<PathBuf>,
    /// The service manager to tell about readiness, reloads, stopping and liveness (systemd's
    /// notify protocol); `None` when not run under one.
    pub notifier: Option<Notifier>,
    /// Become a child subreaper and reap orphaned descendants (tickd as PID 1 in a container).
    pub subreaper: bool,
}

/// Every [`crate::process::KEEPER_CHECK`]: replaces a dead group keeper and writes what its pipe
/// could not take (see [`GroupKeeper::check`]), until `stop`.
async fn watch_keeper(keeper: Arc<GroupKeeper>, clock: Clock, stop: CancellationToken) {
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            () = clock.sleep(crate::process::KEEPER_CHECK) => keeper.check(),
        }
    }
}

/// Runs the daemon with an already validated `config` until a [`Control::Shutdown`] arrives or
/// `controls` closes, then drains: stop firing, wait for runs in flight up to the configured
/// `shutdown_timeout`, stop what is left (TERM, KILL after each job's `kill_grace`).
pub async fn run(
    config: Config,
    options: DaemonOptions,
    mut controls: mpsc::Receiver<Control>,
) -> Result<Stopped, DaemonError> {
    for warning in config.warnings() {
        tracing::warn!("{warning}");
    }
    // Stopped when this function returns, however it does.
    let background = CancellationToken::new();
    let _background = background.clone().drop_guard();
    let jobs = start_services(&config, &options, &background)?;
    let state_writer = jobs.state.clone().map(|state| {
        tokio::spawn(state.write_until(options.clock.clone(), background.child_token()))
    });
    // Without the `http` feature validation refuses `[daemon] http`, so there is nothing to bind.
    #[cfg(feature = "http")]
    let http_listener = match config.daemon().http() {
        Some(addr) => Some(
            tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|source| DaemonError::Http { addr, source })?,
        ),
        None => None,
    };
    let mut supervisor = Supervisor::start(config, options, jobs);
    let http_stop = CancellationToken::new();
    #[cfg(feature = "http")]
    let http_task = http_listener.map(|listener| supervisor.serve_endpoint(listener, &http_stop));
    tracing::info!(
        jobs = supervisor.jobs.len(),
        config = %supervisor.options.config_path.display(),
        "scheduler started"
    );
    supervisor.notify(&format!("READY=1\nSTATUS={}", supervisor.status()));
    let recycle = supervisor.supervise(&mut controls).await;
    let (cluster, clock) = (
        supervisor.env.cluster.clone(),
        supervisor.options.clock.clone(),
    );
    // The release sends two statements, each bounded by the cluster's window.
    let leave_bound = supervisor
        .config
        .cluster()
        .map_or(Duration::ZERO, |settings| {
            settings.window().saturating_mul(2) + Duration::from_secs(1)
        });
    let runs_stopped = supervisor.shut_down(controls).await;
    if let Some(cluster) = cluster {
        tokio::select! {
            () = cluster.left() => {}
            () = clock.sleep(leave_bound) => tracing::warn!("cluster: leaving took too long; exiting (other nodes take over once they see the renewals stopped)"),
        }
    }
    http_stop.cancel();
    #[cfg(feature = "http")]
    if let Some(task) = http_task {
        let _ = task.await;
    }
    background.cancel();
    if let Some(writer) = state_writer {
        let _ = writer.await;
    }
    Ok(match (recycle, runs_stopped) {
        (true, runs_stopped) => Stopped::Recycled { runs_stopped },
        (false, false) => Stopped::Drained,
        (false, true) => Stopped::RunsStopped,
    })
}

/// Starts what the jobs share, the background tasks that serve it (the orphan reaper, the group
/// keeper's watch) running until `background` is cancelled.
fn start_services(
    config: &Config,
    options: &DaemonOptions,
    background: &CancellationToken,
) -> Result<JobEnv, DaemonError> {
    let keeper = match &options.group_keeper {
        Some(program) => Some(Arc::new(
            GroupKeeper::start(program).map_err(DaemonError::Keeper)?,
        )),
        None => None,
    };
    let mut actions = RunEnv::new(
        options.clock.clone(),
        options.handlers.clone(),
        keeper.clone(),
    )
    .map_err(DaemonError::RunEnv)?;
    actions.output_tail = config.daemon().history_output();
    if options.subreaper {
        actions
            .spawner
            .reap_orphans(background.child_token())
            .map_err(DaemonError::Subreaper)?;
        tracing::info!("reaping orphaned processes (child subreaper)");
    }
    let cluster = config.cluster().map(|settings| {
        tracing::info!(
            node = settings.node(),
            cluster = settings.name(),
            "joining the cluster"
        );
        Cluster::join(
            settings,
            config,
            options.clock.clone(),
            background.child_token(),
        )
    });
    let mut metrics = Metrics::new();
    metrics.set_per_job(config.daemon().job_metrics());
    if let Some(cluster) = &cluster {
        metrics.register_cluster(cluster.clone());
    }
    if let Some(keeper) = keeper {
        metrics.register_group_keeper(&keeper);
        tokio::spawn(watch_keeper(
            keeper,
            options.clock.clone(),
            background.child_token(),
        ));
    }
    Ok(JobEnv {
        actions: Arc::new(actions),
        metrics: Arc::new(metrics),
        state: config
            .daemon()
            .state_file()
            .map(|path| Arc::new(StateStore::open(path))),
        machine_id: crate::job::machine_id(),
        run_ids: Arc::default(),
        stop_runs: CancellationToken::new(),
        runs: TaskTracker::new(),
        history: config.daemon().history(),
        dispatcher: crate::job::Dispatcher::new(options.clock.clone()),
        steps: crate::job::StepFollowers::default(),
        cluster,
    })
}

struct Supervisor {
    /// What the jobs share; its run tracker is what the shutdown drains.
    env: Arc<JobEnv>,
    jobs: BTreeMap<String, JobHandle>,
    /// The jobs as the HTTP endpoint sees them.
    directory: Directory,
    /// Set when the shutdown starts (`/healthz` answers 503).
    draining: Arc<std::sync::atomic::AtomicBool>,
    /// When the daemon started, for the uptime in reports.
    started: crate::clock::Instant,
    /// What the status page shows of the daemon itself (configuration, reloads, stopping).
    facts: crate::status::SharedDaemonFacts,
    config: Config,
    options: DaemonOptions,
}

impl Supervisor {
    /// Starts a task for each job of `config`.
    fn start(config: Config, options: DaemonOptions, env: JobEnv) -> Self {
        let now = options.clock.read();
        let facts = crate::status::SharedDaemonFacts::new(crate::status::DaemonFacts {
            config_path: options.config_path.clone(),
            loaded_at: now.wall,
            started_at: now.wall,
            started: now.instant,
            timezone: config.daemon().timezone(),
            last_reload: None,
            stopping: None,
        });
        let mut supervisor = Supervisor {
            env: Arc::new(env),
            jobs: BTreeMap::new(),
            directory: Directory::default(),
            draining: Arc::default(),
            started: now.instant,
            facts,
            config,
            options,
        };
        for spec in supervisor.config.jobs().values() {
            let handle = supervisor.spawn_job(spec.clone());
            supervisor.jobs.insert(spec.name().to_string(), handle);
        }
        supervisor.publish_directory();
        supervisor
    }

    /// Serves the HTTP endpoint on `listener` until `stop`.
    #[cfg(feature = "http")]
    fn serve_endpoint(
        &self,
        listener: tokio::net::TcpListener,
        stop: &CancellationToken,
    ) -> tokio::task::JoinHandle<()> {
        if let Ok(addr) = listener.local_addr() {
            tracing::info!(%addr, "HTTP endpoint listening");
        }
        let state = crate::http::ApiState {
            directory: self.directory.clone(),
            draining: self.draining.clone(),
            metrics: self.env.metrics.clone(),
            keeper: self.env.actions.keeper.clone(),
            token: self.config.daemon().http_token().map(Arc::from),
            clock: self.options.clock.clone(),
            cluster: self.env.cluster.clone(),
            daemon: self.facts.clone(),
        };
        tokio::spawn(crate::http::serve(
            listener,
            state,
            stop.clone(),
            crate::http::Limits::for_this_process(),
        ))
    }

    /// Serves controls until a stop request (`false`) or a recycle limit (`true`).
    async fn supervise(&mut self, controls: &mut mpsc::Receiver<Control>) -> bool {
        // The timers are pinned here, once: re-created on every pass of the loop, each reload or
        // watchdog ping restarted the others (reloads faster than the watchdog interval starved
        // WATCHDOG=1).
        let clock = self.options.clock.clone();
        let watchdog = self
            .options
            .notifier
            .as_ref()
            .and_then(Notifier::watchdog_interval);
        let mut watchdog_timer = watchdog.map(|interval| clock.sleep(interval));
        let mut recycler = Recycler::new(clock.clone(), self.started, self.env.run_ids.clone());
        let mut catch_ups = self.env.cluster.as_ref().and_then(Cluster::take_catch_ups);
        loop {
            let settings = self.config.daemon().clone();
            recycler.apply(&settings);
            tokio::select! {
                control = controls.recv() => match control {
                    Some(Control::Reload) => {
                        self.notify(&format!("RELOADING=1\nMONOTONIC_USEC={}", crate::clock::monotonic_usec()));
                        self.reload().await;
                        self.notify(&format!("READY=1\nSTATUS={}", self.status()));
                    }
                    Some(Control::Apply(new)) => {
                        self.notify(&format!("RELOADING=1\nMONOTONIC_USEC={}", crate::clock::monotonic_usec()));
                        self.apply(*new);
                        self.notify(&format!("READY=1\nSTATUS={}", self.status()));
                    }
                    Some(Control::Report) => self.report("running"),
                    // A closed control channel means nobody can ask us to stop any more.
                    Some(Control::Shutdown) | None => {
                        self.facts.update(|f| f.stopping = Some("a stop was requested".to_owned()));
                        return false;
                    }
                },
                why = recycler.due(&settings) => {
                    self.facts.update(|f| f.stopping = Some(why));
                    return true;
                }
                Some(catch_up) = next_catch_up(&mut catch_ups) => {
                    if let Some(job) = self.jobs.get(&catch_up.job) {
                        job.control.catch_up(catch_up.slot, catch_up.epoch);
                    }
                }
                // Pinged from this loop itself, so a stuck scheduler stops pinging.
                _ = crate::clock::sleep_or_never(watchdog_timer.as_mut()) => {
                    self.notify(&format!("WATCHDOG=1\nSTATUS={}", self.status()));
                    watchdog_timer = watchdog.map(|interval| clock.sleep(interval));
                }
            }
        }
    }

    /// Publishes the current jobs to the HTTP endpoint.
    fn publish_directory(&self) {
        let jobs = self
            .jobs
            .iter()
            .map(|(name, job)| (name.clone(), job.control.clone()))
            .collect();
        *self
            .directory
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = jobs;
    }

    fn notify(&self, message: &str) {
        if let Some(notifier) = &self.options.notifier {
            notifier.send(message);
        }
    }

    /// A one-line status for the service manager.
    fn status(&self) -> String {
        format!(
            "{} jobs, {} runs in flight",
            self.jobs.len(),
            self.env.runs.len()
        )
    }

    /// Writes the status report ([`Control::Report`]); `state` says what the daemon is doing.
    fn report(&self, state: &str) {
        report(
            &self.directory,
            &self.env.runs,
            &self.options.clock,
            self.started,
            state,
        )
    }

    fn spawn_job(&self, spec: Arc<config::JobSpec>) -> JobHandle {
        JobHandle::start(spec, self.env.clone())
    }

    /// The file's new configuration, or `None` (logged) if it must be rejected: invalid, or with
    /// no jobs while jobs run and no explicit empty `[jobs]`.
    async fn load_for_reload(&self) -> Result<Config, String> {
        let path = self.options.config_path.clone();
        tracing::info!(config = %path.display(), "reloading configuration");
        // Reading waits for the file to settle and resolves users (NSS may ask LDAP): not on a
        // worker that fires jobs.
        let handlers = self.options.handlers.clone();
        let loaded =
            crate::blocking::off_the_workers("a reload", move || config::load(&path, &handlers))
                .await;
        let rejected = match loaded {
            Ok(new) => match refusal(&new, self.jobs.len()) {
                Some(why) => why.to_owned(),
                None => return Ok(new),
            },
            Err(err) => err.to_string(),
        };
        tracing::error!("reload rejected, the running configuration stays in force:\n{rejected}");
        Err(rejected)
    }

    /// Loads the file anew and applies it whole, or not at all: the new configuration is built
    /// and validated completely before any running job is touched.
    async fn reload(&mut self) {
        let at = self.options.clock.wall_now();
        let new = match self.load_for_reload().await {
            Ok(new) => new,
            Err(problems) => {
                self.env.metrics.reloaded(false);
                let result = crate::status::ReloadResult {
                    at,
                    result: Err(problems),
                };
                self.facts.update(|f| f.last_reload = Some(result));
                return;
            }
        };
        self.apply(new);
    }

    /// Applies a new, valid configuration whole: new jobs start, removed ones stop firing,
    /// changed ones take their new definition, unchanged ones keep their grid.
    fn apply(&mut self, new: Config) {
        let at = self.options.clock.wall_now();
        for warning in new.warnings() {
            tracing::warn!("{warning}");
        }
        if new.cluster() != self.config.cluster() {
            tracing::warn!("[cluster] changes take effect at the next start");
        }
        if let Some(cluster) = &self.env.cluster {
            cluster.jobs_changed(&new);
        }
        if new.daemon().http() != self.config.daemon().http()
            || new.daemon().http_token() != self.config.daemon().http_token()
        {
            tracing::warn!("[daemon] http and http_token take effect at the next start");
        }
        if new.daemon().history() != self.config.daemon().history()
            || new.daemon().history_output() != self.config.daemon().history_output()
        {
            tracing::warn!("[daemon] history and history_output take effect at the next start");
        }
        if new.daemon().job_metrics() != self.config.daemon().job_metrics() {
            tracing::warn!("[daemon] job_metrics takes effect at the next start");
        }
        let (mut added, mut removed, mut changed) = (0, 0, 0);
        let gone: Vec<String> = self
            .jobs
            .keys()
            .filter(|name| !new.jobs().contains_key(*name))
            .cloned()
            .collect();
        for name in gone {
            if let Some(job) = self.jobs.remove(&name) {
                // Its runs in flight finish (they are on `runs`).
                job.stop();
                self.env.metrics.forget_job(&name);
                tracing::info!(job = %name, "job removed; runs in flight will finish");
                removed += 1;
            }
        }
        for (name, spec) in new.jobs() {
            match self.jobs.get_mut(name) {
                Some(job) if job.spec == *spec => {}
                Some(job) => {
                    job.update(spec.clone());
                    changed += 1;
                }
                None => {
                    let handle = self.spawn_job(spec.clone());
                    self.jobs.insert(name.clone(), handle);
                    tracing::info!(job = %name, schedule = %spec.schedule(), "job added");
                    added += 1;
                }
            }
        }
        let unchanged = new.jobs().len() - added - changed;
        // Keep the endpoint's settings as they were bound.
        self.config = new.with_endpoint_of(&self.config);
        self.publish_directory();
        self.env.metrics.reloaded(true);
        tracing::info!(added, removed, changed, unchanged, "configuration reloaded");
        let result = crate::status::ReloadResult {
            at,
            result: Ok(format!(
                "{added} added, {removed} removed, {changed} changed, {unchanged} unchanged"
            )),
        };
        let zone = self.config.daemon().timezone();
        self.facts.update(|f| {
            f.last_reload = Some(result);
            f.loaded_at = at;
            f.timezone = zone;
        });
    }

    /// Returns whether runs had to be stopped.
    async fn shut_down(mut self, mut controls: mpsc::Receiver<Control>) -> bool {
        let timeout = self.config.daemon().shutdown_timeout();
        // Said first, before anything that may take time: whoever sent the signal sees it was
        // heard, and how long the wait may be.
        let runs = self.env.runs.len();
        let timeout_text = humantime::format_duration(timeout);
        match runs {
            0 => tracing::info!("stopping: no runs in flight"),
            1 => {
                tracing::info!(runs, timeout = %timeout_text, "stopping: waiting for 1 run, up to {timeout_text}")
            }
            _ => {
                tracing::info!(runs, timeout = %timeout_text, "stopping: waiting for {runs} runs, up to {timeout_text}")
            }
        }
        self.notify(&format!(
            "STOPPING=1\nSTATUS=stopping: {runs} runs in flight"
        ));
        self.draining
            .store(true, std::sync::atomic::Ordering::Relaxed);
        // 1. Stop firing.
        for (_, job) in std::mem::take(&mut self.jobs) {
            job.stop();
        }
        // Nothing fires here any more: another node may take over now, not after dead_after.
        if let Some(cluster) = &self.env.cluster {
            cluster.leave();
        }
        // 2. Wait for runs in flight, up to the drain timeout or a second stop request.
        self.env.runs.close();
        let report_drain = || self.report("draining");
        let drained = tokio::select! {
            _ = self.env.runs.wait() => true,
            _ = self.options.clock.sleep(timeout) => false,
            _ = second_stop(&mut controls, report_drain) => false,
        };
        if drained {
            tracing::info!("shut down: every run finished");
            return false;
        }
        // 3. Stop what is left: cancel handlers, TERM process groups, KILL after the grace.
        tracing::warn!(
            runs = self.env.runs.len(),
            "runs still going; stopping them"
        );
        self.env.stop_runs.cancel();
        // 4. Bounded too: a process in uninterruptible sleep outlives even SIGKILL.
        let longest_grace = self
            .config
            .jobs()
            .values()
            .map(|job| job.kill_grace())
            .max()
            .unwrap_or(config::DEFAULT_KILL_GRACE);
        let bound = longest_grace.saturating_add(AFTER_KILL_BOUND);
        if !wait_for_runs(&self.env.runs, &self.options.clock, bound).await {
            tracing::error!(
                pids = ?self.env.actions.spawner.live_children(),
                bound = %humantime::format_duration(bound),
                "shut down: runs would not end even after SIGKILL (a process in uninterruptible sleep?); exiting without them"
            );
            return true;
        }
        tracing::warn!("shut down: runs had to be stopped");
        true
    }
}

/// How long, after the longest `kill_grace`, the shutdown still waits for stopped runs to end
/// before it exits without them.
pub const AFTER_KILL_BOUND: std::time::Duration = std::time::Duration::from_secs(10);

/// The next catch-up the cluster hands over; never, without a cluster.
async fn next_catch_up(
    catch_ups: &mut Option<mpsc::UnboundedReceiver<crate::cluster::CatchUp>>,
) -> Option<crate::cluster::CatchUp> {
    match catch_ups {
        Some(receiver) => receiver.recv().await,
        None => std::future::pending().await,
    }
}

/// Waits up to `bound` for every run on `runs` to end; `false` if some did not.
async fn wait_for_runs(runs: &TaskTracker, clock: &Clock, bound: std::time::Duration) -> bool {
    tokio::select! {
        _ = runs.wait() => true,
        _ = clock.sleep(bound) => false,
    }
}

/// Why a reload to `new` must be refused although it is valid, while `running` jobs run: a file
/// with no jobs and no explicit empty `[jobs]` (an empty or half-written file must not stop
/// every job).
pub(crate) fn refusal(new: &Config, running: usize) -> Option<&'static str> {
    (new.jobs().is_empty() && running > 0 && !new.no_jobs_on_purpose()).then_some(
        "the file has no jobs: it may be empty or half-written, so every job keeps running; to remove every job, leave an empty [jobs] table in the file",
    )
}

/// Resolves on the next [`Control::Shutdown`]; reloads during the drain are ignored, reports
/// are written with `report`.
async fn second_stop(controls: &mut mpsc::Receiver<Control>, report: impl Fn()) {
    loop {
        match controls.recv().await {
            Some(Control::Shutdown) => {
                tracing::warn!("second stop request: not waiting any longer");
                return;
            }
            Some(Control::Reload | Control::Apply(_)) => {
                tracing::info!("reload ignored while shutting down")
            }
            Some(Control::Report) => report(),
            None => std::future::pending().await,
        }
    }
}

/// The status summary asked for by [`Control::Report`]: one log line for the daemon, then one
/// per job, at info level so the default filter shows them.
fn report(
    directory: &Directory,
    runs: &TaskTracker,
    clock: &Clock,
    started: crate::clock::Instant,
    state: &str,
) {
    let jobs = directory
        .read()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .clone();
    let uptime = clock.now().saturating_duration_since(started);
    let uptime = humantime::format_duration(std::time::Duration::from_secs(uptime.as_secs()));
    tracing::info!(state, jobs = jobs.len(), runs_in_flight = runs.len(), %uptime, "status report");
    for (name, job) in jobs {
        let status = job.status.snapshot();
        let next_fire = match (status.paused, status.next_fire) {
            (true, _) => "paused".to_owned(),
            (false, Some(next)) => crate::logging::Timestamp(next).to_string(),
            (false, None) => "none".to_owned(),
        };
        let last = status.last_run.as_ref();
        let counts = status.runs;
        tracing::info!(
            job = %name,
            schedule = %status.schedule,
            next_fire = %next_fire,
            running = status.running(),
            last_outcome = last.map_or("-", |l| l.outcome.as_ref()),
            last_duration_ms = last.map(|l| l.duration_ms),
            success = counts.success,
            failure = counts.failure,
            timeout = counts.timeout,
            stopped = counts.stopped,
            retries_dropped = counts.retries_dropped,
            skipped = counts.skipped_overlap,
            missed = counts.missed,
            "status report"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// After SIGKILL the wait for runs had no bound: a child in uninterruptible sleep hung the
    /// daemon. A run that never ends is given up after the bound.
    #[tokio::test(start_paused = true)]
    async fn the_last_wait_for_stopped_runs_is_bounded() {
        let clock = Clock::manual(chrono::Utc::now());
        let runs = TaskTracker::new();
        runs.spawn(std::future::pending::<()>());
        runs.spawn(async {});
        runs.close();
        let started = clock.now();
        let bound = std::time::Duration::from_secs(20);
        assert!(!wait_for_runs(&runs, &clock, bound).await);
        assert_eq!(clock.now() - started, bound);

        let runs = TaskTracker::new();
        runs.spawn(async {});
        runs.close();
        assert!(wait_for_runs(&runs, &clock, bound).await);
    }
}
