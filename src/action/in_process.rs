//! An in-process handler's run: its panics caught, its timeout and cancellation applied, and
//! dropped after `kill_grace` if it does not return (the in-process equivalent of SIGKILL).

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::clock::Clock;
use crate::config::JobSpec;
use crate::handler::{HandlerFn, HandlerFuture, RunContext};

use super::{timeout_elapsed, RunReport};

/// How a run stood after it was started where its fire was decided.
pub enum Started {
    /// It ended there: an in-process handler that was done at its first poll (most are).
    Ended(RunReport),
    /// It goes on: its future wants a task of its own.
    Going(Pin<Box<dyn Future<Output = RunReport> + Send>>),
}

impl Started {
    /// The run's report: at once if it ended, else when its future does.
    pub async fn report(self) -> RunReport {
        match self {
            Started::Ended(report) => report,
            Started::Going(run) => run.await,
        }
    }
}

/// Calls `handler` for one run of `spec` and polls its future once, on the caller's thread: a
/// handler done then needs no task, no cancellation waiter and no timer. One that is not goes
/// on in [`Started::Going`], under its timeout and cancellation. Its first poll had a waker that
/// wakes nobody, and the task's first poll registers its own: a future must wake the waker of
/// its latest poll only, so nothing is missed.
pub(super) fn start(
    handler: &HandlerFn,
    ctx: RunContext,
    spec: &JobSpec,
    clock: &Clock,
) -> Started {
    let cancel = ctx.cancel.clone();
    let mut future = CatchUnwind(
        std::panic::catch_unwind(AssertUnwindSafe(|| handler(ctx)))
            .map_err(|panic| panic_message(&*panic)),
    );
    let mut first = Context::from_waker(std::task::Waker::noop());
    if let Poll::Ready(result) = Pin::new(&mut future).poll(&mut first) {
        return Started::Ended(report_of(result));
    }
    let (timeout, kill_grace, clock) = (spec.timeout(), spec.kill_grace(), clock.clone());
    Started::Going(Box::pin(async move {
        drive(future, cancel, timeout, kill_grace, &clock).await
    }))
}

fn report_of(result: Result<(), String>) -> RunReport {
    match result {
        Ok(()) => RunReport::success(),
        Err(reason) => RunReport::failure(reason),
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
async fn drive(
    mut future: CatchUnwind,
    cancel: CancellationToken,
    timeout: Option<Duration>,
    kill_grace: Duration,
    clock: &Clock,
) -> RunReport {
    let timed_out = tokio::select! {
        // The handler first: one that is done at its first poll (most are) registers neither
        // a cancellation waiter nor a timer.
        biased;
        result = &mut future => return report_of(result),
        _ = cancel.cancelled() => false,
        _ = timeout_elapsed(clock, timeout) => true,
    };
    cancel.cancel();
    tokio::select! {
        _ = &mut future => RunReport::stopped(timed_out, false),
        _ = clock.sleep(kill_grace) => RunReport::stopped(timed_out, true),
    }
}
