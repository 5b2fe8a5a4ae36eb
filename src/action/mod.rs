//! One run of a job: performs its action (a child process, an HTTP request or an in-process
//! handler) and reports how it ended. A run's failure is a report, never an error of the daemon.
//!
//! This module knows nothing of schedules, jobs' state or metrics: a job task hands it a spec,
//! the run's [`RunContext`] and the [`RunEnv`], and gets a [`RunReport`] back.

mod child;
#[cfg(feature = "http-jobs")]
mod http;
mod in_process;

use std::fmt;
use std::sync::Arc;

use crate::clock::Clock;
use crate::config::{Action, JobSpec, OutputMode, RunLog};
use crate::handler::{HandlerFn, Handlers, RunContext};
use crate::process::{self, ChildRun, GroupKeeper, HeldOutput, OutputSink, Spawner, HELD_OUTPUT};

pub(crate) use child::report as child_report;
pub(crate) use in_process::panic_message;
pub use in_process::Started;

/// What every run needs from the daemon, shared by all jobs: the means to perform actions, and
/// nothing of the daemon's own bookkeeping.
#[derive(Debug)]
#[non_exhaustive] // Fields come and go with the features (`http-jobs`): build it with `new`.
pub struct RunEnv {
    /// The one source of time.
    pub clock: Clock,
    /// In-process handlers.
    pub handlers: Handlers,
    /// Starts child processes.
    pub spawner: Spawner,
    /// Kills runs' process groups if the daemon dies; `None` when not configured.
    pub keeper: Option<Arc<GroupKeeper>>,
    /// Shared HTTP client (connection pool) for `http` jobs.
    #[cfg(feature = "http-jobs")]
    pub http: reqwest::Client,
    /// How many bytes of the end of a child's output its report keeps for the run history
    /// (`[daemon] history_output`, set by the daemon; 0, as [`RunEnv::new`] leaves it: none, and
    /// no output is held for it).
    pub output_tail: usize,
}

/// Why a [`RunEnv`] could not be set up.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive] // `HttpClient` exists with the `http-jobs` feature only.
pub enum RunEnvError {
    /// The thread that spawns child processes could not be started.
    #[error("cannot start the process spawner: {0}")]
    Spawner(#[source] std::io::Error),
    /// The HTTP client for `http` jobs could not be built (its TLS roots, a resolver thread).
    #[cfg(feature = "http-jobs")]
    #[error("cannot set up the HTTP client for http jobs: {0}")]
    HttpClient(#[source] reqwest::Error),
}

impl RunEnv {
    /// A run environment; must be created inside a tokio runtime (it starts the spawner thread).
    pub fn new(
        clock: Clock,
        handlers: Handlers,
        keeper: Option<Arc<GroupKeeper>>,
    ) -> Result<Self, RunEnvError> {
        process::start_output_thread();
        Ok(RunEnv {
            clock,
            handlers,
            spawner: Spawner::start().map_err(RunEnvError::Spawner)?,
            keeper,
            #[cfg(feature = "http-jobs")]
            http: reqwest::Client::builder()
                .user_agent(concat!("tickd/", env!("CARGO_PKG_VERSION")))
                .build()
                .map_err(RunEnvError::HttpClient)?,
            // Only the daemon keeps a history (it sets this); `tickd exec` has none.
            output_tail: 0,
        })
    }
}

/// How a run ended: one vocabulary, the same in the log (`outcome=`), the metrics' `outcome`
/// label, `/jobs` and the command line (see [`Outcome::as_str`]).
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

impl Outcome {
    /// Every outcome, in the order the status and the metrics list them.
    pub const ALL: [Outcome; 4] = [
        Outcome::Success,
        Outcome::Failure,
        Outcome::Timeout,
        Outcome::Stopped,
    ];

    /// The outcome's name everywhere it is shown.
    pub const fn as_str(self) -> &'static str {
        match self {
            Outcome::Success => "success",
            Outcome::Failure => "failure",
            Outcome::Timeout => "timeout",
            Outcome::Stopped => "stopped",
        }
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The result of one run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunReport {
    /// How it ended.
    pub outcome: Outcome,
    /// A child's exit code, when it exited (`None` for HTTP jobs and handlers).
    pub exit_code: Option<i32>,
    /// The signal that ended a child, when one did (e.g. 15 for SIGTERM).
    pub signal: Option<i32>,
    /// An HTTP job's response status, when it got one.
    pub http_status: Option<u16>,
    /// Why it did not succeed, for the log.
    pub reason: Option<String>,
    /// Whether stopping it took force after its grace period: SIGKILL for a process group, a
    /// dropped future for a handler.
    pub forced: bool,
    /// The end of a child's output (at most [`RunEnv::output_tail`] bytes), for the run
    /// history; `None` for HTTP jobs and handlers, and when nothing was printed or kept.
    pub output: Option<String>,
}

impl RunReport {
    /// A run that succeeded, with nothing else to say.
    pub(crate) fn success() -> Self {
        RunReport {
            outcome: Outcome::Success,
            exit_code: None,
            signal: None,
            http_status: None,
            reason: None,
            forced: false,
            output: None,
        }
    }

    /// A failed run, with why.
    pub(crate) fn failure(reason: impl Into<String>) -> Self {
        RunReport {
            outcome: Outcome::Failure,
            reason: Some(reason.into()),
            ..Self::success()
        }
    }

    /// A run tickd stopped: at its timeout, or for a replacement or a shutdown.
    fn stopped(timed_out: bool, forced: bool) -> Self {
        let (outcome, reason) = if timed_out {
            (Outcome::Timeout, "timeout reached")
        } else {
            (Outcome::Stopped, "stopped by tickd")
        };
        RunReport {
            outcome,
            reason: Some(reason.to_owned()),
            forced,
            ..Self::success()
        }
    }

    /// This report with how the child ended: its exit code, or the signal that ended it.
    fn exited(self, status: &std::process::ExitStatus) -> Self {
        use std::os::unix::process::ExitStatusExt;
        RunReport {
            exit_code: status.code(),
            signal: status.signal(),
            ..self
        }
    }

    /// This report with the HTTP response's status.
    #[cfg(feature = "http-jobs")]
    fn http(self, status: u16) -> Self {
        RunReport {
            http_status: Some(status),
            ..self
        }
    }

    /// The name of the signal that ended the child, as the log shows it (`TERM`, `KILL`).
    pub fn signal_name(&self) -> Option<String> {
        self.signal.map(signal_name)
    }
}

/// A signal's name without its `SIG` prefix (`TERM`), or its number when it has none.
pub fn signal_name(signal: i32) -> String {
    nix::sys::signal::Signal::try_from(signal).map_or_else(
        |_| signal.to_string(),
        |s| s.as_str().trim_start_matches("SIG").to_owned(),
    )
}

/// What identifies a run to what it starts, as `(environment variable, HTTP header, value)`:
/// a child gets the variables, an HTTP request the headers, a handler has the same in its
/// [`RunContext`]. Jobs use them to log and to make their work idempotent; `TICKD_SCHEDULED` is
/// the due time in RFC 3339 with milliseconds, as the log's `scheduled` field shows it.
/// In a cluster, `TICKD_FIRE_ID` (`Idempotency-Key`) and `TICKD_NODE` (`X-Tickd-Node`) too.
pub fn run_identity(ctx: &RunContext) -> Vec<(&'static str, &'static str, String)> {
    let mut identity = vec![
        ("TICKD_JOB", "X-Tickd-Job", ctx.job.to_string()),
        ("TICKD_RUN_ID", "X-Tickd-Run-Id", ctx.run_id.to_string()),
        (
            "TICKD_SCHEDULED",
            "X-Tickd-Scheduled",
            ctx.scheduled
                .to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        ),
    ];
    if let Some(fire) = &ctx.cluster {
        identity.push(("TICKD_FIRE_ID", "Idempotency-Key", fire.fire_id.clone()));
        identity.push(("TICKD_NODE", "X-Tickd-Node", fire.node.to_string()));
    }
    identity
}

/// Performs one run of `spec`. `ctx.cancel` stops it early; the job's timeout stops it too.
pub async fn execute(spec: &JobSpec, ctx: RunContext, env: &RunEnv) -> RunReport {
    match &spec.action() {
        Action::Process(process) => {
            // Built for the actions that pass it on: a handler has it in its context.
            let run_vars: Vec<(&'static str, String)> = run_identity(&ctx)
                .into_iter()
                .map(|(var, _, value)| (var, value))
                .collect();
            // `log = "none"` logs no output, so none is read unless the run history keeps its
            // end; `failures` holds it until the run has ended, to log it only if the run
            // failed. The history's tail comes from the same held lines.
            let tail = env.output_tail;
            let output = match (spec.output(), spec.log()) {
                (OutputMode::Log, RunLog::Nothing) if tail == 0 => OutputMode::Discard,
                (output, _) => output,
            };
            let held = match (output, spec.log()) {
                (OutputMode::Log, RunLog::Failures) => {
                    Some(Arc::new(HeldOutput::new(HELD_OUTPUT.max(tail))))
                }
                (OutputMode::Log, _) if tail > 0 => Some(Arc::new(HeldOutput::new(tail))),
                _ => None,
            };
            let sink = match (&held, spec.log()) {
                (None, _) => OutputSink::Log,
                (Some(held), RunLog::Runs) => OutputSink::LogAndHold(held.clone()),
                (Some(held), _) => OutputSink::Hold(held.clone()),
            };
            let end = process::run_child(
                process,
                ChildRun {
                    job: spec.name(),
                    run_id: ctx.run_id,
                    output,
                    sink,
                    timeout: spec.timeout(),
                    kill_grace: spec.kill_grace(),
                    cancel: &ctx.cancel,
                    clock: &env.clock,
                    spawner: &env.spawner,
                    keeper: env.keeper.as_deref(),
                    max_rss: spec.max_rss(),
                    run_as: spec.run_as(),
                    run_vars: &run_vars,
                },
            )
            .await;
            let mut report = child::report(end);
            if let Some(held) = held {
                // Before `emit`, which takes the lines.
                report.output = held.tail(tail);
                if spec.log() == RunLog::Failures
                    && matches!(report.outcome, Outcome::Failure | Outcome::Timeout)
                {
                    held.emit(spec.name(), ctx.run_id);
                }
            }
            report
        }
        #[cfg(feature = "http-jobs")]
        Action::Http(http) => {
            let headers: Vec<(&'static str, String)> = run_identity(&ctx)
                .into_iter()
                .map(|(_, header, value)| (header, value))
                .collect();
            http::run(http, &headers, spec.timeout(), &ctx.cancel, env).await
        }
        // Validation refuses such a job in a build without `http-jobs`; a spec made some other
        // way still gets a failed run with the reason, not a panic.
        #[cfg(not(feature = "http-jobs"))]
        Action::Http(_) => RunReport::failure(crate::config::NO_HTTP_JOBS),
        Action::Handler(name) => start_handler(name, None, ctx, spec, env).report().await,
    }
}

/// Starts one run of `spec` on the caller's thread: an in-process handler is called and polled
/// once there, and most have ended by then ([`Started::Ended`]); a handler still going, and
/// every other action, come back as the future a task is to drive.
pub fn start(spec: &Arc<JobSpec>, ctx: RunContext, env: &Arc<RunEnv>) -> Started {
    start_with(spec, None, ctx, env)
}

/// [`start`] with the job's handler looked up already ([`handler_of`]): a job does it once,
/// not by name at each fire.
pub(crate) fn start_with(
    spec: &Arc<JobSpec>,
    handler: Option<&HandlerFn>,
    ctx: RunContext,
    env: &Arc<RunEnv>,
) -> Started {
    match spec.action() {
        Action::Handler(name) => start_handler(name, handler, ctx, spec, env),
        _ => later(spec, ctx, env),
    }
}

/// The in-process handler `spec` runs, if it is a `handler` job and the handler is registered.
pub(crate) fn handler_of(spec: &JobSpec, env: &RunEnv) -> Option<HandlerFn> {
    match spec.action() {
        Action::Handler(name) => env.handlers.find(name).cloned(),
        _ => None,
    }
}

/// One run of `spec` as the future a task is to drive, nothing of it done yet.
pub fn later(spec: &Arc<JobSpec>, ctx: RunContext, env: &Arc<RunEnv>) -> Started {
    let (spec, env) = (spec.clone(), env.clone());
    Started::Going(Box::pin(async move { execute(&spec, ctx, &env).await }))
}

/// Calls the handler `name` (`handler`, when looked up already) and polls it once (see
/// [`in_process::start`]).
fn start_handler(
    name: &str,
    handler: Option<&HandlerFn>,
    ctx: RunContext,
    spec: &JobSpec,
    env: &RunEnv,
) -> Started {
    match handler.or_else(|| env.handlers.find(name)) {
        Some(handler) => in_process::start(handler, ctx, spec, &env.clock),
        None => Started::Ended(RunReport::failure(format!(
            "handler \"{name}\" is not registered"
        ))),
    }
}

/// Sleeps until `timeout` from now, or forever when there is none.
async fn timeout_elapsed(clock: &Clock, timeout: Option<std::time::Duration>) {
    crate::clock::sleep_or_never(timeout.map(|timeout| clock.sleep(timeout)).as_mut()).await
}
