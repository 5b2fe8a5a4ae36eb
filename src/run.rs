//! One run of a job: performs its action (child process, HTTP request or in-process handler) and
//! reports how it ended. A run's failure is a report, never an error of the daemon.

use std::fmt;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::clock::Clock;
use crate::config::{Action, HttpSpec, JobSpec};
use crate::handler::{HandlerFuture, Handlers, RunContext, RunId};
use crate::process::{self, ChildEnd, ChildRun, GroupKeeper, Spawner, StopCause};
use crate::state::StateStore;

/// What every run needs from the daemon, shared by all jobs.
#[derive(Debug)]
pub struct RunEnv {
    /// The one source of time.
    pub clock: Clock,
    /// In-process handlers.
    pub handlers: Handlers,
    /// Starts child processes.
    pub spawner: Spawner,
    /// Kills runs' process groups if the daemon dies; `None` when not configured.
    pub keeper: Option<GroupKeeper>,
    /// Last fire times of `on_missed = "once"` jobs; `None` without `[daemon] state_file`.
    pub state: Option<Arc<StateStore>>,
    /// This machine's identity (`/etc/machine-id`, else the host name): seeds `spread` delays.
    pub machine_id: String,
    /// `[daemon] max_runs` (0: none), kept current across reloads.
    pub max_runs: AtomicU64,
    /// Signalled when the daemon should recycle itself (`max_runs` reached).
    pub recycle: tokio::sync::Notify,
    /// Prometheus metrics.
    pub metrics: crate::status::Metrics,
    /// Shared HTTP client (connection pool) for `http` jobs.
    pub http: reqwest::Client,
    /// Parent of every run's cancellation token: cancelled when shutdown stops the runs that
    /// outlived the drain timeout.
    pub stop_runs: CancellationToken,
    next_run_id: AtomicU64,
}

/// Why a [`RunEnv`] could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum RunEnvError {
    /// The thread that spawns child processes could not be started.
    #[error("cannot start the process spawner: {0}")]
    Spawner(#[source] std::io::Error),
    /// The HTTP client for `http` jobs could not be built (its TLS roots, a resolver thread).
    #[error("cannot set up the HTTP client for http jobs: {0}")]
    HttpClient(#[source] reqwest::Error),
}

impl RunEnv {
    /// A run environment; must be created inside a tokio runtime (it starts the spawner thread).
    pub fn new(
        clock: Clock,
        handlers: Handlers,
        keeper: Option<GroupKeeper>,
        state: Option<Arc<StateStore>>,
    ) -> Result<Self, RunEnvError> {
        process::start_output_thread();
        let mut metrics = crate::status::Metrics::new();
        if let Some(keeper) = &keeper {
            metrics.register_group_keeper(keeper);
        }
        Ok(RunEnv {
            clock,
            handlers,
            spawner: Spawner::start().map_err(RunEnvError::Spawner)?,
            keeper,
            state,
            machine_id: machine_id(),
            max_runs: AtomicU64::new(0),
            recycle: tokio::sync::Notify::new(),
            metrics,
            http: reqwest::Client::builder()
                .user_agent(concat!("tickd/", env!("CARGO_PKG_VERSION")))
                .build()
                .map_err(RunEnvError::HttpClient)?,
            stop_runs: CancellationToken::new(),
            next_run_id: AtomicU64::new(1),
        })
    }

    /// A fresh run id.
    pub fn next_run_id(&self) -> RunId {
        RunId(self.next_run_id.fetch_add(1, Ordering::Relaxed))
    }

    /// Counts a started run (run ids count runs from 1) against `max_runs`.
    pub fn count_run(&self, run_id: RunId) {
        let max = self.max_runs.load(Ordering::Relaxed);
        if max > 0 && run_id.0 == max {
            self.recycle.notify_one();
        }
    }
}

/// `/etc/machine-id` (stable per installation, as systemd uses it), else the host name.
pub fn machine_id() -> String {
    ["/etc/machine-id", "/proc/sys/kernel/hostname"]
        .iter()
        .find_map(|path| {
            std::fs::read_to_string(path)
                .ok()
                .map(|s| s.trim().to_owned())
                .filter(|s| !s.is_empty())
        })
        .unwrap_or_default()
}

/// How a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Exit code 0, a 2xx response, or `Ok(())` from a handler.
    Success,
    /// Anything else the action did on its own: non-zero exit, death by signal, failure to start,
    /// an HTTP error, an `Err` or a panic from a handler.
    Failure,
    /// Stopped by tickd because the job's `timeout` passed.
    Timeout,
    /// Stopped by tickd: replaced by a newer run, or shut down after the drain timeout.
    Stopped,
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Outcome::Success => "success",
            Outcome::Failure => "failure",
            Outcome::Timeout => "timeout",
            Outcome::Stopped => "stopped",
        })
    }
}

/// The result of one run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunReport {
    /// How it ended.
    pub outcome: Outcome,
    /// The child's exit code, or the HTTP status code.
    pub exit_code: Option<i32>,
    /// Why it did not succeed, for the log.
    pub reason: Option<String>,
    /// Whether it had to be killed (SIGKILL, or a handler aborted) after its grace period.
    pub killed: bool,
}

impl RunReport {
    fn success(exit_code: Option<i32>) -> Self {
        RunReport {
            outcome: Outcome::Success,
            exit_code,
            reason: None,
            killed: false,
        }
    }

    /// A failed run, with why.
    pub(crate) fn failure(exit_code: Option<i32>, reason: impl Into<String>) -> Self {
        RunReport {
            outcome: Outcome::Failure,
            exit_code,
            reason: Some(reason.into()),
            killed: false,
        }
    }

    fn stopped(timed_out: bool, killed: bool, exit_code: Option<i32>) -> Self {
        let (outcome, reason) = if timed_out {
            (Outcome::Timeout, "timeout reached")
        } else {
            (Outcome::Stopped, "stopped by tickd")
        };
        RunReport {
            outcome,
            exit_code,
            reason: Some(reason.to_owned()),
            killed,
        }
    }
}

/// What identifies a run to what it starts, as `(environment variable, HTTP header, value)`:
/// a child gets the variables, an HTTP request the headers, a handler has the same in its
/// [`RunContext`]. Jobs use them to log and to make their work idempotent; `TICKD_SCHEDULED` is
/// the due time in RFC 3339 with milliseconds, as the log's `scheduled` field shows it.
pub fn run_identity(ctx: &RunContext) -> [(&'static str, &'static str, String); 3] {
    [
        ("TICKD_JOB", "X-Tickd-Job", ctx.job.to_string()),
        ("TICKD_RUN_ID", "X-Tickd-Run-Id", ctx.run_id.to_string()),
        (
            "TICKD_SCHEDULED",
            "X-Tickd-Scheduled",
            ctx.scheduled
                .to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        ),
    ]
}

/// Performs one run of `spec`. `ctx.cancel` stops it early; the job's timeout stops it too.
pub async fn execute(spec: &JobSpec, ctx: RunContext, env: &RunEnv) -> RunReport {
    match &spec.action {
        Action::Process(process) => {
            // Built for the actions that pass it on: a handler has it in its context.
            let run_vars: Vec<(&'static str, String)> = run_identity(&ctx)
                .into_iter()
                .map(|(var, _, value)| (var, value))
                .collect();
            let end = process::run_child(
                process,
                ChildRun {
                    job: &spec.name,
                    run_id: ctx.run_id,
                    output: spec.output,
                    timeout: spec.timeout,
                    kill_grace: spec.kill_grace,
                    cancel: &ctx.cancel,
                    clock: &env.clock,
                    spawner: &env.spawner,
                    keeper: env.keeper.as_ref(),
                    max_rss: spec.max_rss,
                    run_as: spec.run_as.as_ref(),
                    run_vars: &run_vars,
                },
            )
            .await;
            child_report(end)
        }
        Action::Http(http) => {
            let headers = run_identity(&ctx).map(|(_, header, value)| (header, value));
            run_http(http, &headers, spec.timeout, &ctx.cancel, env).await
        }
        Action::Handler(name) => match env.handlers.get(name) {
            Some(handler) => {
                let cancel = ctx.cancel.clone();
                // Run inline in the run's task (one task per run, not two: this is the hot path
                // of in-process jobs); a panic is caught by `CatchUnwind`.
                let future = CatchUnwind(
                    std::panic::catch_unwind(AssertUnwindSafe(|| handler(ctx)))
                        .map_err(|panic| panic_message(&*panic)),
                );
                run_handler(future, cancel, spec.timeout, spec.kill_grace, &env.clock).await
            }
            None => RunReport::failure(None, format!("handler \"{name}\" is not registered")),
        },
    }
}

fn child_report(end: ChildEnd) -> RunReport {
    match end {
        ChildEnd::SpawnFailed(reason) => RunReport::failure(None, reason),
        ChildEnd::Exited(status) => match process::status_parts(&status) {
            (Some(0), _) => RunReport::success(Some(0)),
            (Some(code), _) => RunReport::failure(Some(code), format!("exited with code {code}")),
            (None, Some(signal)) => {
                RunReport::failure(None, format!("killed by signal {}", signal_name(signal)))
            }
            (None, None) => RunReport::failure(None, format!("ended with {status}")),
        },
        ChildEnd::Stopped {
            status,
            cause: StopCause::MaxRss(rss),
            killed,
        } => RunReport {
            killed,
            ..RunReport::failure(
                status.code(),
                format!(
                    "stopped: its processes used {} of memory, over max_rss",
                    bytesize::ByteSize(rss)
                ),
            )
        },
        ChildEnd::Stopped {
            status,
            cause,
            killed,
        } => RunReport::stopped(cause == StopCause::Timeout, killed, status.code()),
    }
}

fn signal_name(signal: i32) -> String {
    nix::sys::signal::Signal::try_from(signal)
        .map_or_else(|_| signal.to_string(), |s| s.to_string())
}

/// Sleeps until `timeout` from now, or forever when there is none.
async fn timeout_elapsed(clock: &Clock, timeout: Option<Duration>) {
    match timeout {
        Some(timeout) => clock.sleep(timeout).await,
        None => std::future::pending().await,
    }
}

async fn run_http(
    http: &HttpSpec,
    identity: &[(&'static str, String)],
    job_timeout: Option<Duration>,
    cancel: &CancellationToken,
    env: &RunEnv,
) -> RunReport {
    let method = http.method.clone();
    let mut request = env.http.request(method, &http.url);
    for (name, value) in &http.headers {
        request = request.header(name, value);
    }
    if let Some(body) = &http.body {
        request = request.body(body.clone());
    }
    if let Some(timeout) = http.timeout {
        request = request.timeout(timeout);
    }
    let mut request = match request.build() {
        Ok(request) => request,
        Err(err) => return RunReport::failure(None, format!("request failed: {err}")),
    };
    // Replacing, not appending: a job's `headers` cannot fake the run's identity.
    for (name, value) in identity {
        let name = reqwest::header::HeaderName::from_bytes(name.as_bytes());
        let value = reqwest::header::HeaderValue::from_str(value);
        if let (Ok(name), Ok(value)) = (name, value) {
            request.headers_mut().insert(name, value);
        }
    }
    tokio::select! {
        response = env.http.execute(request) => match response {
            Ok(response) => {
                let status = response.status();
                let code = Some(i32::from(status.as_u16()));
                if status.is_success() {
                    RunReport::success(code)
                } else {
                    RunReport::failure(code, format!("HTTP {status}"))
                }
            }
            Err(err) if err.is_timeout() => RunReport::stopped(true, false, None),
            Err(err) => RunReport::failure(None, format!("request failed: {err}")),
        },
        _ = cancel.cancelled() => RunReport::stopped(false, false, None),
        _ = timeout_elapsed(&env.clock, job_timeout) => RunReport::stopped(true, false, None),
    }
}

/// A handler's future with its panics caught: a panic is a failed run, not a dead daemon.
struct CatchUnwind(Result<HandlerFuture, String>);

impl Future for CatchUnwind {
    type Output = Result<(), String>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match &mut self.0 {
            Err(panic) => Poll::Ready(Err(format!("handler panicked: {panic}"))),
            Ok(future) => {
                match std::panic::catch_unwind(AssertUnwindSafe(|| future.as_mut().poll(cx))) {
                    Ok(Poll::Pending) => Poll::Pending,
                    Ok(Poll::Ready(Ok(()))) => Poll::Ready(Ok(())),
                    Ok(Poll::Ready(Err(err))) => Poll::Ready(Err(err.to_string())),
                    Err(panic) => {
                        let message = panic_message(&*panic);
                        self.0 = Err(message.clone());
                        Poll::Ready(Err(format!("handler panicked: {message}")))
                    }
                }
            }
        }
    }
}

/// The text of a caught panic.
pub(crate) fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(no message)".to_owned())
}

/// Drives a handler; on timeout or cancellation, cancels its token and gives it `kill_grace` to
/// return before dropping it (the in-process equivalent of SIGKILL).
async fn run_handler(
    mut future: CatchUnwind,
    cancel: CancellationToken,
    timeout: Option<Duration>,
    kill_grace: Duration,
    clock: &Clock,
) -> RunReport {
    let timed_out = tokio::select! {
        result = &mut future => return match result {
            Ok(()) => RunReport::success(None),
            Err(reason) => RunReport::failure(None, reason),
        },
        _ = cancel.cancelled() => false,
        _ = timeout_elapsed(clock, timeout) => true,
    };
    cancel.cancel();
    tokio::select! {
        _ = &mut future => RunReport::stopped(timed_out, false, None),
        _ = clock.sleep(kill_grace) => RunReport::stopped(timed_out, true, None),
    }
}
