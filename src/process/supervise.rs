//! Supervising a run to its end: start the child, log its output, stop it on timeout,
//! cancellation or too much memory, and stop whatever it left in its process group.

use std::future::Future;
use std::io;
use std::os::unix::process::ExitStatusExt;
use std::pin::Pin;
use std::process::ExitStatus;
use std::time::Duration;

use nix::sys::signal::Signal;
use nix::unistd::Pid;
use tokio_util::sync::CancellationToken;

use super::group::{group_alive_off_workers, signal_group, terminate};
use super::keeper::GroupKeeper;
use super::output::{log_output, OutputSink};
use super::plan::{plan, OutputPipe};
use super::procfs::group_rss;
use super::spawner::{ChildProcess, Spawner};
use crate::clock::{sleep_or_never, Clock};
use crate::config::{OutputMode, ProcessSpec, RunAs};
use crate::handler::RunId;

/// How long output is still read after the process exited (its pipes may be held open by a
/// backgrounded grandchild, which must not keep the run going).
const OUTPUT_DRAIN: Duration = Duration::from_millis(100);
/// How often leftover group members are checked for while they are being stopped.
const LEFTOVER_POLL: Duration = Duration::from_millis(20);
/// How often a run's memory is sampled when the job has `max_rss`.
const RSS_SAMPLE: Duration = Duration::from_secs(1);

/// Everything a child run needs besides the process spec.
#[derive(Debug)]
pub struct ChildRun<'a> {
    /// The job's name, for log lines.
    pub job: &'a str,
    /// The run's id, for log lines.
    pub run_id: RunId,
    /// Where output goes.
    pub output: OutputMode,
    /// With `output = "log"`: logged as it comes, or held until the run ends.
    pub sink: OutputSink,
    /// Stop the run after this long.
    pub timeout: Option<Duration>,
    /// Between SIGTERM and SIGKILL.
    pub kill_grace: Duration,
    /// Cancelled to stop the run (replace, shutdown).
    pub cancel: &'a CancellationToken,
    /// For the timeout and the grace period.
    pub clock: &'a Clock,
    /// Starts the child.
    pub spawner: &'a Spawner,
    /// Told about the run's process group, if the daemon runs one.
    pub keeper: Option<&'a GroupKeeper>,
    /// Stop the run when its process group's resident memory exceeds this many bytes.
    pub max_rss: Option<u64>,
    /// Run the process as this user.
    pub run_as: Option<&'a RunAs>,
    /// Variables tickd sets for this run (`TICKD_JOB`, `TICKD_RUN_ID`, `TICKD_SCHEDULED`), on
    /// top of everything else: a job's `env` cannot fake them.
    pub run_vars: &'a [(&'static str, String)],
}

/// How a child run ended.
#[derive(Debug)]
pub enum ChildEnd {
    /// The process could not be started.
    SpawnFailed(String),
    /// The process exited on its own.
    Exited(ExitStatus),
    /// The process was stopped by tickd. `killed` says whether SIGKILL was needed.
    Stopped {
        /// The process's status.
        status: ExitStatus,
        /// Why it was stopped.
        cause: StopCause,
        /// Whether the group had to be SIGKILLed after the grace period.
        killed: bool,
    },
}

/// Why tickd stopped a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopCause {
    /// The job's `timeout` passed.
    Timeout,
    /// The run was cancelled (replaced, or shut down after the drain timeout).
    Cancelled,
    /// The run's process group used more memory than the job's `max_rss`; the figure is the
    /// resident size seen, in bytes.
    MaxRss(u64),
}

/// Runs `spec` as a child process to its end.
pub async fn run_child(spec: &ProcessSpec, run: ChildRun<'_>) -> ChildEnd {
    let (mut child, stdout, stderr) = match spawn(spec, &run).await {
        Ok(spawned) => spawned,
        Err(err) => return ChildEnd::SpawnFailed(describe_spawn_error(spec, &err)),
    };
    let pid = child.id();
    // The child is the leader of its own group, so its pid is the group id.
    let group = Pid::from_raw(pid as i32);
    tracing::debug!(job = %run.job, run = %run.run_id, pid, "process started");
    if let Some(keeper) = run.keeper {
        keeper.register(group);
    }
    // Read until this function returns, so that what leftovers print while they are stopped is
    // logged too.
    let output = log_output(stdout, stderr, run.job, run.run_id, run.clock, &run.sink);
    tokio::pin!(output);
    let end = with_output(
        supervise(&mut child, group, &run),
        output.as_mut(),
        run.clock,
    )
    .await;
    stop_leftovers(group, &run).await;
    if let Some(keeper) = run.keeper {
        keeper.unregister(group);
    }
    end
}

/// Plans and spawns `spec`: the child, and the read ends of its output pipes.
async fn spawn(
    spec: &ProcessSpec,
    run: &ChildRun<'_>,
) -> io::Result<(ChildProcess, OutputPipe, OutputPipe)> {
    let (plan, stdout, stderr) = plan(spec, run.output, run.run_as, run.run_vars)?;
    let child = run.spawner.spawn(plan).await?;
    Ok((child, stdout, stderr))
}

/// Runs `supervise` to its end while `output` is read, then gives the output up to
/// [`OUTPUT_DRAIN`] more to reach its end.
async fn with_output(
    supervise: impl Future<Output = ChildEnd>,
    mut output: Pin<&mut impl Future<Output = ()>>,
    clock: &Clock,
) -> ChildEnd {
    tokio::pin!(supervise);
    let mut output_done = false;
    let end = loop {
        tokio::select! {
            end = &mut supervise => break end,
            _ = &mut output, if !output_done => output_done = true,
        }
    };
    if !output_done {
        tokio::select! {
            _ = &mut output => {}
            _ = clock.sleep(OUTPUT_DRAIN) => {}
        }
    }
    end
}

/// Waits for the process, stopping it on timeout, cancellation or too much memory.
async fn supervise(child: &mut ChildProcess, group: Pid, run: &ChildRun<'_>) -> ChildEnd {
    let mut deadline = run.timeout.map(|timeout| run.clock.sleep(timeout));
    let cause = tokio::select! {
        status = child.wait() => return exited(status),
        _ = run.cancel.cancelled() => StopCause::Cancelled,
        () = sleep_or_never(deadline.as_mut()) => StopCause::Timeout,
        rss = watch_memory(group, run) => StopCause::MaxRss(rss),
    };
    stop(child, group, run, cause).await
}

/// Stops the run for `cause`: SIGTERM to its group, SIGKILL once `kill_grace` has passed.
async fn stop(
    child: &mut ChildProcess,
    group: Pid,
    run: &ChildRun<'_>,
    cause: StopCause,
) -> ChildEnd {
    let why = match cause {
        StopCause::Timeout => "timeout reached".to_owned(),
        StopCause::Cancelled => "stopping run".to_owned(),
        StopCause::MaxRss(rss) => format!(
            "memory limit exceeded ({} > {})",
            bytesize::ByteSize(rss),
            bytesize::ByteSize(run.max_rss.unwrap_or_default())
        ),
    };
    tracing::info!(
        job = %run.job,
        run = %run.run_id,
        grace = %humantime::format_duration(run.kill_grace),
        "{why}; sending SIGTERM to the process group"
    );
    terminate(group);
    let (status, killed) = tokio::select! {
        status = child.wait() => (status, false),
        _ = run.clock.sleep(run.kill_grace) => {
            tracing::warn!(job = %run.job, run = %run.run_id, "still running after the grace period; sending SIGKILL");
            signal_group(group, Signal::SIGKILL);
            (child.wait().await, true)
        }
    };
    match status {
        Ok(status) => ChildEnd::Stopped {
            status,
            cause,
            killed,
        },
        Err(err) => ChildEnd::SpawnFailed(format!("waiting for the process failed: {err}")),
    }
}

/// Resolves with the group's resident size once it exceeds the job's `max_rss` (sampled every
/// [`RSS_SAMPLE`]); never without one.
async fn watch_memory(group: Pid, run: &ChildRun<'_>) -> u64 {
    let Some(limit) = run.max_rss else {
        return std::future::pending().await;
    };
    loop {
        run.clock.sleep(RSS_SAMPLE).await;
        // A scan of all of /proc: not on a worker that fires jobs.
        let rss =
            crate::blocking::off_the_workers("a memory sample", move || group_rss(group)).await;
        if rss > limit {
            return rss;
        }
    }
}

fn exited(status: io::Result<ExitStatus>) -> ChildEnd {
    match status {
        Ok(status) => ChildEnd::Exited(status),
        Err(err) => ChildEnd::SpawnFailed(format!("waiting for the process failed: {err}")),
    }
}

/// Stops what is left of the run's process group after its leader exited (e.g. a backgrounded
/// grandchild), so that no process outlives its run. Polls every [`LEFTOVER_POLL`].
async fn stop_leftovers(group: Pid, run: &ChildRun<'_>) {
    if !group_alive_off_workers(group).await {
        return;
    }
    tracing::warn!(
        job = %run.job,
        run = %run.run_id,
        "processes are left in the run's process group after it ended; stopping them"
    );
    terminate(group);
    let deadline = run.clock.now() + run.kill_grace;
    while group_alive_off_workers(group).await {
        if run.clock.now() >= deadline {
            signal_group(group, Signal::SIGKILL);
            return;
        }
        run.clock.sleep(LEFTOVER_POLL).await;
    }
}

fn describe_spawn_error(spec: &ProcessSpec, err: &io::Error) -> String {
    let program = &spec.argv()[0];
    match (&spec.cwd(), err.kind()) {
        (Some(cwd), io::ErrorKind::NotFound) if !cwd.is_dir() => format!(
            "cannot start \"{program}\": working directory {} does not exist",
            cwd.display()
        ),
        (_, io::ErrorKind::NotFound) => {
            format!("cannot start \"{program}\": command not found ({err})")
        }
        (_, io::ErrorKind::PermissionDenied) => {
            format!("cannot start \"{program}\": permission denied ({err})")
        }
        (_, io::ErrorKind::WouldBlock) => format!(
            "cannot start \"{program}\": too many processes (the user's process limit, `ulimit -u`, \
             or the system's) ({err})"
        ),
        _ => format!("cannot start \"{program}\": {err}"),
    }
}

/// A child's status as an exit code, and the signal that killed it, if any.
pub fn status_parts(status: &ExitStatus) -> (Option<i32>, Option<i32>) {
    (status.code(), status.signal())
}
