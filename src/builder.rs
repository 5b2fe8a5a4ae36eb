//! The easy way to embed tickd: a [`Daemon`] built from a jobs file, from jobs defined in code,
//! or both, run with [`DaemonBuilder::run`] or [`DaemonBuilder::run_blocking`], and changed
//! while it runs through a [`DaemonHandle`].
//!
//! ```no_run
//! use tickd::builder::{Daemon, Every};
//!
//! fn main() -> Result<(), tickd::builder::BuildError> {
//!     Daemon::builder()
//!         .job("flush", Every::millis(200), |ctx: tickd::RunContext| async move {
//!             // ... the work, giving up when ctx.cancel is cancelled ...
//!             anyhow::Ok(())
//!         })
//!         .run_blocking()?;
//!     Ok(())
//! }
//! ```
//!
//! Everything here is built on [`crate::run`], [`crate::DaemonOptions`] and
//! [`crate::Control`]: jobs from code are TOML tables appended to the file's text (so they are
//! validated as any job is, and the file's problems keep their lines), and a change from code is
//! a [`Control::Apply`] of the whole new configuration, the path a reload takes. A SIGHUP
//! re-reads the file and keeps the jobs from code.

use std::collections::BTreeMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::mpsc;

use crate::config::{self, Config, ConfigError};
use crate::daemon::{Control, DaemonError, DaemonOptions, Stopped};
use crate::handler::{boxed, HandlerError, HandlerFn, Handlers, RunContext};
use crate::Clock;

/// The name under which every job from code finds its handler: one handler that looks the
/// job's own up by the job's name, so jobs added after the start need no new registration.
const CODE_HANDLER: &str = "(code)";

/// A period, for a job from code: `every = "..."`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Every(Duration);

impl Every {
    /// Every `period`.
    pub fn new(period: Duration) -> Self {
        Every(period)
    }

    /// Every `ms` milliseconds.
    pub fn millis(ms: u64) -> Self {
        Every(Duration::from_millis(ms))
    }

    /// Every `secs` seconds.
    pub fn secs(secs: u64) -> Self {
        Every(Duration::from_secs(secs))
    }
}

/// A cron expression, for a job from code: `cron = "..."` (5 fields, 6 with seconds, `@hourly`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cron(String);

impl Cron {
    /// The expression, checked when the job is validated.
    pub fn new(expression: impl Into<String>) -> Self {
        Cron(expression.into())
    }
}

/// When a job from code fires: an [`Every`] or a [`Cron`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum When {
    /// A period on a drift-free grid.
    Every(Duration),
    /// A cron expression, in the daemon's `timezone`.
    Cron(String),
}

impl From<Every> for When {
    fn from(every: Every) -> Self {
        When::Every(every.0)
    }
}

impl From<Cron> for When {
    fn from(cron: Cron) -> Self {
        When::Cron(cron.0)
    }
}

impl When {
    /// The job's table in the jobs file's syntax.
    fn table(&self, name: &str) -> String {
        let quoted = |text: &str| toml::Value::from(text).to_string();
        let schedule = match self {
            // Whole milliseconds: what the file's `every` reads back exactly.
            When::Every(period) => format!("every = \"{}ms\"", period.as_millis()),
            When::Cron(expression) => format!("cron = {}", quoted(expression)),
        };
        format!(
            "[jobs.{}]\n{schedule}\nhandler = {}\n",
            quoted(name),
            quoted(CODE_HANDLER)
        )
    }
}

/// Why a daemon could not be built or run.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// The jobs (the file's and the code's) are not a valid configuration.
    #[error("invalid configuration:\n{0}")]
    Config(#[from] ConfigError),
    /// The control signals could not be held or listened to.
    #[error("cannot set up the control signals: {0}")]
    Signals(#[source] std::io::Error),
    /// The runtime could not be started.
    #[error("cannot start the runtime: {0}")]
    Runtime(#[source] std::io::Error),
    /// The daemon failed (never a job: see [`DaemonError`]).
    #[error(transparent)]
    Daemon(#[from] DaemonError),
}

/// Why a change from code was not applied.
#[derive(Debug, thiserror::Error)]
pub enum ChangeError {
    /// The configuration with the change is invalid: nothing was changed.
    #[error("the change is refused, nothing changed:\n{0}")]
    Invalid(#[from] ConfigError),
    /// The daemon has stopped: there is nothing to change.
    #[error("the daemon has stopped")]
    Stopped,
    /// The file could not be read off the runtime's workers.
    #[error("the configuration could not be loaded: {0}")]
    Load(String),
}

/// Where a daemon built here takes its jobs from.
pub struct Daemon;

impl Daemon {
    /// A daemon on the jobs file at `path` (re-read on SIGHUP), to which code may add jobs and
    /// handlers.
    pub fn from_file(path: impl Into<PathBuf>) -> DaemonBuilder {
        let mut builder = DaemonBuilder::new();
        builder.file = Some(path.into());
        builder
    }

    /// A daemon whose jobs all come from code.
    pub fn builder() -> DaemonBuilder {
        DaemonBuilder::new()
    }
}

/// What the daemon's jobs come from, shared with its [`DaemonHandle`]s.
struct Sources {
    /// The jobs file, if any.
    file: Option<PathBuf>,
    /// The jobs from code, by name, with their schedules.
    jobs: Mutex<BTreeMap<String, When>>,
    /// The handler of each job from code, which [`CODE_HANDLER`] calls.
    functions: Arc<Mutex<BTreeMap<String, HandlerFn>>>,
    /// One change at a time: a change is validated against the jobs as they are.
    changing: tokio::sync::Mutex<()>,
}

impl Sources {
    /// The configuration of the file and `jobs`, validated with `handlers`.
    fn config(
        &self,
        jobs: &BTreeMap<String, When>,
        handlers: &Handlers,
    ) -> Result<Config, ConfigError> {
        let extra: String = jobs.iter().map(|(name, when)| when.table(name)).collect();
        config::load_with_extra(self.file.as_deref(), &extra, handlers)
    }

    /// [`Sources::config`] off the runtime's workers: reading the file waits for it to settle
    /// and resolving users may ask a remote database.
    async fn config_off_workers(
        self: &Arc<Self>,
        jobs: BTreeMap<String, When>,
        handlers: &Handlers,
    ) -> Result<Config, ChangeError> {
        let (sources, handlers) = (self.clone(), handlers.clone());
        tokio::task::spawn_blocking(move || sources.config(&jobs, &handlers))
            .await
            .map_err(|err| ChangeError::Load(err.to_string()))?
            .map_err(ChangeError::from)
    }

    fn jobs(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, When>> {
        self.jobs.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn functions(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, HandlerFn>> {
        self.functions
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

/// A daemon being put together: its jobs file, jobs and handlers from code, and what it needs
/// inside (each with the default `tickd run` would use, or none where only the binary can
/// provide it).
pub struct DaemonBuilder {
    file: Option<PathBuf>,
    jobs: BTreeMap<String, When>,
    functions: BTreeMap<String, HandlerFn>,
    handlers: Handlers,
    clock: Clock,
    group_keeper: Option<PathBuf>,
    subreaper: bool,
    /// The channel the daemon's controls come through, made here so that handles can be had
    /// before it runs.
    controls: (mpsc::Sender<Control>, mpsc::Receiver<Control>),
    sources: Option<Arc<Sources>>,
}

impl DaemonBuilder {
    fn new() -> Self {
        DaemonBuilder {
            file: None,
            jobs: BTreeMap::new(),
            functions: BTreeMap::new(),
            handlers: Handlers::with_builtins(),
            clock: Clock::system(),
            group_keeper: None,
            // As `tickd run` does: as PID 1 (a container's entrypoint), reap orphans.
            subreaper: std::process::id() == 1,
            controls: mpsc::channel(64),
            sources: None,
        }
    }

    /// Adds (or replaces) the job `name`, firing `when` and running `handler`.
    pub fn job<F, Fut, E>(
        mut self,
        name: impl Into<String>,
        when: impl Into<When>,
        handler: F,
    ) -> Self
    where
        F: Fn(RunContext) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), E>> + Send + 'static,
        E: Into<HandlerError> + 'static,
    {
        let name = name.into();
        self.jobs.insert(name.clone(), when.into());
        self.functions.insert(name, boxed(handler));
        self
    }

    /// Registers the handler `name`, for the file's `handler = "name"` jobs.
    pub fn handler<F, Fut, E>(mut self, name: impl Into<String>, handler: F) -> Self
    where
        F: Fn(RunContext) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), E>> + Send + 'static,
        E: Into<HandlerError> + 'static,
    {
        self.handlers.register(name, handler);
        self
    }

    /// The source of time (default: the system's). Tests pass [`Clock::manual`].
    pub fn clock(mut self, clock: Clock) -> Self {
        self.clock = clock;
        self
    }

    /// The `tickd` binary, run as `tickd __keeper` so the jobs' process groups die with the
    /// daemon even if it is killed (default: none; see [`crate::process::GroupKeeper`]).
    pub fn group_keeper(mut self, tickd_binary: impl Into<PathBuf>) -> Self {
        self.group_keeper = Some(tickd_binary.into());
        self
    }

    /// Become a child subreaper (default: only as PID 1).
    pub fn subreaper(mut self, subreaper: bool) -> Self {
        self.subreaper = subreaper;
        self
    }

    /// A handle to change the daemon's jobs from code while it runs (and before: changes wait
    /// for it to start).
    pub fn handle(&mut self) -> DaemonHandle {
        DaemonHandle {
            sources: self.sources(),
            handlers: self.all_handlers(),
            controls: self.controls.0.clone(),
        }
    }

    /// The jobs' sources, made once and shared with the handles.
    fn sources(&mut self) -> Arc<Sources> {
        let sources = self.sources.get_or_insert_with(|| {
            Arc::new(Sources {
                file: self.file.clone(),
                jobs: Mutex::new(BTreeMap::new()),
                functions: Arc::new(Mutex::new(BTreeMap::new())),
                changing: tokio::sync::Mutex::new(()),
            })
        });
        // Jobs added to the builder since the last call join the shared ones.
        sources.jobs().append(&mut self.jobs);
        sources.functions().append(&mut self.functions);
        sources.clone()
    }

    /// The registered handlers and the one that runs every job from code.
    fn all_handlers(&mut self) -> Handlers {
        let functions = self.sources().functions.clone();
        let mut handlers = self.handlers.clone();
        handlers.register(CODE_HANDLER, move |ctx: RunContext| {
            let function = functions
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .get(&*ctx.job)
                .cloned();
            async move {
                match function {
                    Some(function) => function(ctx).await,
                    None => Err(HandlerError::from(format!(
                        "job {} names the handler {CODE_HANDLER:?}, which runs only jobs from code",
                        ctx.job
                    ))),
                }
            }
        });
        handlers
    }

    /// Runs the daemon until it is stopped (SIGTERM, SIGINT, SIGQUIT, or
    /// [`DaemonHandle::shutdown`]) or recycles itself. Listens to the control signals first:
    /// call [`crate::signals::hold_control_signals`] on the main thread before any thread
    /// starts, or use [`DaemonBuilder::run_blocking`], which does.
    pub async fn run(self) -> Result<Stopped, BuildError> {
        let signals = crate::signals::os_controls().map_err(BuildError::Signals)?;
        self.run_with_controls(signals).await
    }

    /// [`DaemonBuilder::run`] with `controls` instead of the OS signals: a reload there
    /// re-reads the file and keeps the jobs from code.
    pub async fn run_with_controls(
        mut self,
        mut controls: mpsc::Receiver<Control>,
    ) -> Result<Stopped, BuildError> {
        let handle = self.handle();
        let config = {
            let jobs = handle.sources.jobs().clone();
            handle.sources.config(&jobs, &handle.handlers)?
        };
        let options = DaemonOptions {
            // Only named in logs: reloads come through `forward` below.
            config_path: self.file.clone().unwrap_or_else(|| "(code)".into()),
            handlers: handle.handlers.clone(),
            clock: self.clock.clone(),
            group_keeper: self.group_keeper.clone(),
            notifier: crate::notify::Notifier::from_env().unwrap_or_else(|err| {
                tracing::warn!("NOTIFY_SOCKET is set but unusable, not notifying: {err}");
                None
            }),
            subreaper: self.subreaper,
        };
        let (_, inbox) = self.controls;
        // Outside controls reach the daemon through here, so that a reload keeps the jobs
        // from code: it becomes an `Apply` of the file and those jobs.
        let forward = tokio::spawn(async move {
            while let Some(control) = controls.recv().await {
                let control = match control {
                    Control::Reload => match handle.reloaded().await {
                        Some(config) => Control::Apply(Box::new(config)),
                        None => continue,
                    },
                    other => other,
                };
                if handle.controls.send(control).await.is_err() {
                    break;
                }
            }
            // Nobody outside can ask for a stop any more: stop, as `crate::run` does when its
            // controls close.
            let _ = handle.controls.send(Control::Shutdown).await;
        });
        let stopped = crate::run(config, options, inbox).await;
        forward.abort();
        Ok(stopped?)
    }

    /// Builds a multi-threaded runtime and runs the daemon on it, as `tickd run` does: the
    /// control signals are held first, on this thread, before any other thread starts, so a
    /// SIGTERM in the first milliseconds is not lost. Call it from `main`, outside any runtime.
    /// Without a tracing subscriber of the program's own, tickd's log (`TICKD_LOG`, info by
    /// default) goes to stderr, so the jobs' output is not silently lost.
    pub fn run_blocking(self) -> Result<Stopped, BuildError> {
        crate::signals::hold_control_signals().map_err(|err| BuildError::Signals(err.into()))?;
        if !tracing::dispatcher::has_been_set() {
            let filter = crate::logging::log_filter(std::env::var("TICKD_LOG").ok().as_deref())
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
            let _ = tracing_subscriber::fmt()
                .with_env_filter(filter)
                .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
                .with_writer(std::io::stderr)
                .try_init();
        }
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .thread_name("tickd-worker")
            .build()
            .map_err(BuildError::Runtime)?;
        runtime.block_on(self.run())
    }
}

/// Changes a daemon's jobs from code while it runs. Each change builds the whole new
/// configuration (the file's jobs and those from code) and applies it as a reload would:
/// refused whole, with nothing changed, when it is invalid. Cheap to clone.
#[derive(Clone)]
pub struct DaemonHandle {
    sources: Arc<Sources>,
    handlers: Handlers,
    controls: mpsc::Sender<Control>,
}

impl DaemonHandle {
    /// Adds the job `name`, or changes it if code added it before (its schedule and handler):
    /// an unchanged schedule keeps its grid, a new one starts a grid now.
    pub async fn upsert_job<F, Fut, E>(
        &self,
        name: impl Into<String>,
        when: impl Into<When>,
        handler: F,
    ) -> Result<(), ChangeError>
    where
        F: Fn(RunContext) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), E>> + Send + 'static,
        E: Into<HandlerError> + 'static,
    {
        let name = name.into();
        let when = when.into();
        self.change(&name, Some((when, boxed(handler)))).await
    }

    /// Removes the job `name` that code added: it stops firing, its runs in flight finish.
    pub async fn remove_job(&self, name: &str) -> Result<(), ChangeError> {
        self.change(name, None).await
    }

    /// Asks the daemon to stop, as SIGTERM does.
    pub async fn shutdown(&self) -> Result<(), ChangeError> {
        self.controls
            .send(Control::Shutdown)
            .await
            .map_err(|_| ChangeError::Stopped)
    }

    /// Validates the jobs with `name` set to `job` (`None`: removed) and applies them.
    async fn change(&self, name: &str, job: Option<(When, HandlerFn)>) -> Result<(), ChangeError> {
        let _one_at_a_time = self.sources.changing.lock().await;
        let mut jobs = self.sources.jobs().clone();
        match &job {
            Some((when, _)) => jobs.insert(name.to_owned(), when.clone()),
            None => jobs.remove(name),
        };
        let config = self
            .sources
            .config_off_workers(jobs.clone(), &self.handlers)
            .await?;
        // The handler is in place before the job can fire.
        if let Some((_, function)) = job {
            self.sources.functions().insert(name.to_owned(), function);
        }
        *self.sources.jobs() = jobs;
        self.controls
            .send(Control::Apply(Box::new(config)))
            .await
            .map_err(|_| ChangeError::Stopped)
    }

    /// The configuration a reload applies (the file re-read, the jobs from code kept), or
    /// `None` with why logged, as the daemon logs a rejected reload.
    async fn reloaded(&self) -> Option<Config> {
        let _one_at_a_time = self.sources.changing.lock().await;
        let jobs = self.sources.jobs().clone();
        tracing::info!("reloading configuration");
        let rejected = match self.sources.config_off_workers(jobs, &self.handlers).await {
            // With jobs from code there are jobs whatever the file says; without, an empty file
            // is refused as the daemon refuses it.
            Ok(config) => match crate::daemon::refusal(&config, 1) {
                Some(why) => why.to_owned(),
                None => return Some(config),
            },
            Err(err) => err.to_string(),
        };
        tracing::error!("reload rejected, the running configuration stays in force:\n{rejected}");
        None
    }
}

impl std::fmt::Debug for DaemonHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let file = self.sources.file.as_deref().map(Path::display);
        f.debug_struct("DaemonHandle")
            .field("file", &file.map(|f| f.to_string()))
            .field("jobs", &self.sources.jobs().keys().collect::<Vec<_>>())
            .finish()
    }
}

// The test watches the jobs through the endpoint.
#[cfg(all(test, feature = "http"))]
mod tests {
    use std::time::{Duration, Instant};

    use super::*;

    /// The job names `GET /jobs` lists, once they satisfy `wanted` (within a generous deadline).
    async fn jobs_once(port: u16, wanted: impl Fn(&[String]) -> bool) -> Vec<String> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let names: Vec<String> =
                match reqwest::get(format!("http://127.0.0.1:{port}/jobs")).await {
                    Ok(answer) => serde_json::from_str::<Vec<serde_json::Value>>(
                        &answer.text().await.unwrap_or_default(),
                    )
                    .unwrap_or_default()
                    .iter()
                    .filter_map(|job| job["name"].as_str().map(str::to_owned))
                    .collect(),
                    Err(_) => Vec::new(),
                };
            if wanted(&names) {
                return names;
            }
            assert!(Instant::now() < deadline, "jobs still {names:?}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Jobs from the file and from code, changed from code while the daemon runs (an invalid
    /// change refused whole), kept by a reload of the file, and a stop through the handle.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn jobs_change_from_code_and_a_reload_keeps_them() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("port")
            .port();
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("jobs.toml");
        let text = format!("[daemon]\nhttp = \"127.0.0.1:{port}\"\n[jobs.from-file]\nevery = \"1h\"\nhandler = \"log\"\n");
        std::fs::write(&file, &text).expect("jobs file");
        let (runs, mut ran) = mpsc::unbounded_channel();
        let mut builder =
            Daemon::from_file(&file).job("from-code", Every::secs(3600), |_ctx| async {
                Ok::<(), HandlerError>(())
            });
        let handle = builder.handle();
        let (controls, inbox) = mpsc::channel(4);
        let daemon = tokio::spawn(builder.run_with_controls(inbox));
        jobs_once(port, |names| names == ["from-code", "from-file"]).await;

        let refused = handle
            .upsert_job("bad", Every::millis(0), |_ctx| async {
                Ok::<(), HandlerError>(())
            })
            .await;
        assert!(
            matches!(&refused, Err(ChangeError::Invalid(e)) if e.to_string().contains("job \"bad\", key \"every\"")),
            "{refused:?}"
        );
        handle
            .upsert_job("added", Every::millis(50), move |ctx: RunContext| {
                let runs = runs.clone();
                async move {
                    let _ = runs.send(ctx.job.to_string());
                    anyhow::Ok(())
                }
            })
            .await
            .expect("added");
        assert_eq!(ran.recv().await.as_deref(), Some("added"));
        handle.remove_job("from-code").await.expect("removed");
        jobs_once(port, |names| names == ["added", "from-file"]).await;

        // A reload re-reads the file (a job more) and keeps the jobs from code.
        std::fs::write(
            &file,
            format!("{text}[jobs.second]\nevery = \"1h\"\nhandler = \"log\"\n"),
        )
        .expect("jobs file");
        controls.send(Control::Reload).await.expect("reload");
        jobs_once(port, |names| names == ["added", "from-file", "second"]).await;

        handle.shutdown().await.expect("shutdown");
        let stopped = daemon.await.expect("join").expect("run");
        assert_eq!(stopped, Stopped::Drained);
    }
}
