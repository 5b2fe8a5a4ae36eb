//! A job's `on_failure` hook: a command run after a run's final failure, at most one at a time
//! per job, so a job failing fast cannot pile up hooks (and their descriptors) until other jobs
//! fail with EMFILE. Failures that found the hook busy are counted and told to the next one.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::action::{RunEnv, RunReport};
use crate::config::{JobSpec, OutputMode, ProcessSpec, RunAs};
use crate::handler::RunId;
use crate::process::{self, ChildRun};

use super::JobEnv;

/// The longest an `on_failure` hook may run.
const HOOK_TIMEOUT: Duration = Duration::from_secs(60);

/// One job's hook slot.
#[derive(Debug, Default)]
pub(crate) struct FailureHook {
    /// Set while the hook runs.
    running: Arc<AtomicBool>,
    /// Final failures that got no hook because one was running; told to the next hook.
    failures_without_hook: u64,
}

impl FailureHook {
    /// Runs `spec`'s `on_failure` command for the failed run `run_id` (with TICKD_JOB,
    /// TICKD_RUN_ID, TICKD_EXIT_CODE, TICKD_REASON and TICKD_FAILURES_WITHOUT_HOOK in its
    /// environment, in the job's working directory and as its user) on the run tracker, so a
    /// shutdown drains it too; `cancel` stops it.
    pub fn spawn(
        &mut self,
        spec: &JobSpec,
        run_id: RunId,
        report: &RunReport,
        env: &Arc<JobEnv>,
        cancel: CancellationToken,
    ) {
        if spec.on_failure().is_none() {
            return;
        }
        if self.running.swap(true, Ordering::AcqRel) {
            self.failures_without_hook += 1;
            tracing::debug!(job = %spec.name(), run = %run_id, "on_failure hook still running; this failure is told to the next one");
            return;
        }
        let failures_without_hook = std::mem::take(&mut self.failures_without_hook);
        let Some(hook) =
            spec.failure_hook(failure_vars(spec, run_id, report, failures_without_hook))
        else {
            return;
        };
        let slot = HookSlot(self.running.clone());
        let (env, job, run_as, kill_grace) = (
            env.clone(),
            spec.name().to_owned(),
            spec.run_as().cloned(),
            spec.kill_grace(),
        );
        env.runs.clone().spawn(async move {
            // Frees the job's hook slot however this task ends.
            let _slot = slot;
            let run = HookRun {
                job: &job,
                run_id,
                output: OutputMode::Log,
                kill_grace,
                run_as: run_as.as_ref(),
            };
            run.run(&hook, &cancel, &env.actions).await;
        });
    }
}

/// Runs `spec`'s `on_failure` hook for its failed run `run_id` (ended as `report`) here, to its
/// end, with its output on tickd's own stdout and stderr: what `tickd exec` does after a final
/// failure, as the daemon would (the same `TICKD_*` variables, `cwd`, user and timeout).
/// `None` when the job has no hook.
pub async fn run_failure_hook(
    spec: &JobSpec,
    run_id: RunId,
    report: &RunReport,
    env: &RunEnv,
    cancel: &CancellationToken,
) -> Option<RunReport> {
    let hook = spec.failure_hook(failure_vars(spec, run_id, report, 0))?;
    let run = HookRun {
        job: spec.name(),
        run_id,
        output: OutputMode::Inherit,
        kill_grace: spec.kill_grace(),
        run_as: spec.run_as(),
    };
    Some(run.run(&hook, cancel, env).await)
}

/// One run of a job's hook, for the daemon or for `tickd exec`.
struct HookRun<'a> {
    job: &'a str,
    run_id: RunId,
    output: OutputMode,
    kill_grace: Duration,
    run_as: Option<&'a RunAs>,
}

impl HookRun<'_> {
    /// Runs `hook` (bounded by [`HOOK_TIMEOUT`]) and logs how it ended.
    async fn run(self, hook: &ProcessSpec, cancel: &CancellationToken, env: &RunEnv) -> RunReport {
        let hook_job = format!("{}/on_failure", self.job);
        let end = process::run_child(
            hook,
            ChildRun {
                job: &hook_job,
                run_id: self.run_id,
                output: self.output,
                sink: process::OutputSink::Log,
                timeout: Some(HOOK_TIMEOUT),
                kill_grace: self.kill_grace,
                cancel,
                clock: &env.clock,
                spawner: &env.spawner,
                keeper: env.keeper.as_deref(),
                max_rss: None,
                run_as: self.run_as,
                run_vars: &[],
            },
        )
        .await;
        let report = crate::action::child_report(end);
        tracing::info!(
            job = %self.job,
            run = %self.run_id,
            outcome = %report.outcome,
            exit_code = report.exit_code,
            signal = report.signal_name().map(tracing::field::display),
            reason = report.reason.as_deref(),
            "on_failure hook ended"
        );
        report
    }
}

/// What the hook is told of the failure, in `TICKD_*` variables.
fn failure_vars(
    spec: &JobSpec,
    run_id: RunId,
    report: &RunReport,
    failures_without_hook: u64,
) -> [(String, String); 5] {
    // An HTTP job's status stands in for the exit code, as it always has here.
    let exit_code = report
        .exit_code
        .or(report.http_status.map(i32::from))
        .map(|c| c.to_string())
        .unwrap_or_default();
    [
        ("TICKD_JOB", spec.name().to_owned()),
        ("TICKD_RUN_ID", run_id.to_string()),
        ("TICKD_EXIT_CODE", exit_code),
        ("TICKD_REASON", report.reason.clone().unwrap_or_default()),
        (
            "TICKD_FAILURES_WITHOUT_HOOK",
            failures_without_hook.to_string(),
        ),
    ]
    .map(|(name, value)| (name.to_owned(), value))
}

/// A job's `on_failure` slot, freed when the hook's task ends (or unwinds).
struct HookSlot(Arc<AtomicBool>);

impl Drop for HookSlot {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}
