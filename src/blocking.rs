//! Work that may block (file system, `/proc` scans, user lookups) runs on tokio's blocking pool,
//! never on the workers that fire jobs. When the pool cannot start a thread (a process or thread
//! limit: `ulimit -u`), tokio panics in `spawn_blocking`; here that becomes a loud error and the
//! work is done on the calling worker instead, so a limit degrades timing, never correctness (a
//! state file never written again, a run that never ends).

use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex, PoisonError};

/// Runs `work` on the blocking pool, or, if no thread can be started for it, here (logged as an
/// error naming `what`). A panic inside `work` is passed on to the caller.
pub(crate) async fn off_the_workers<T, F>(what: &str, work: F) -> T
where
    T: Send + 'static,
    F: FnOnce() -> T + Send + 'static,
{
    // The work stays reachable here if tokio drops the task it could not start.
    let slot = Arc::new(Mutex::new(Some(work)));
    let theirs = slot.clone();
    let spawned = std::panic::catch_unwind(AssertUnwindSafe(|| {
        tokio::task::spawn_blocking(move || {
            let work = theirs.lock().unwrap_or_else(PoisonError::into_inner).take();
            work.map(|work| work())
        })
    }));
    if let Ok(task) = spawned {
        match task.await {
            Ok(Some(value)) => return value,
            Ok(None) => {}
            Err(err) if err.is_panic() => std::panic::resume_unwind(err.into_panic()),
            Err(_) => {}
        }
    }
    tracing::error!(
        "cannot start a thread for {what} (a process or thread limit?); doing it on a worker, which delays jobs"
    );
    let work = slot.lock().unwrap_or_else(PoisonError::into_inner).take();
    match work {
        Some(work) => work(),
        // Taken by a pool thread that then went away: cannot happen without a panic above.
        None => unreachable!("the blocking work ran but returned nothing"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Under a thread limit tokio's blocking pool panicked ("OS can't spawn worker thread"),
    /// killing the task that asked (the state writer never wrote again).
    #[test]
    fn work_is_done_here_when_no_thread_can_be_started() {
        // A stack no machine can map: every new blocking thread fails to start.
        let runtime = tokio::runtime::Builder::new_current_thread()
            .thread_stack_size(1 << 46)
            .build()
            .expect("runtime");
        let here = std::thread::current().id();
        let (value, ran_on) = runtime.block_on(off_the_workers("a test", || {
            (42, std::thread::current().id())
        }));
        assert_eq!(value, 42);
        assert_eq!(ran_on, here);
        // And on a normal runtime, off this thread.
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
        let ran_on = runtime.block_on(off_the_workers("a test", || std::thread::current().id()));
        assert_ne!(ran_on, here);
    }
}
