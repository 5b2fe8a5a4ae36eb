//! The clock's steps, told to the jobs: one task for the whole daemon watches the wall clock's
//! steps (and, in a cluster, the corrections of the database's clock) and calls each job, where
//! every job once had a task of its own waiting for both.

use std::sync::{Arc, Mutex, OnceLock, PoisonError, Weak};

use tokio_util::sync::CancellationToken;

use crate::clock::{Clock, ClockSteps, RemoteClock};

use super::actor::JobCell;

/// The jobs to tell of the clock's steps (one per [`JobEnv`](super::JobEnv)); its task starts
/// when the first job follows and stops when this is dropped.
#[derive(Debug, Default)]
pub(crate) struct StepFollowers {
    shared: Arc<Followers>,
    started: OnceLock<()>,
    stop: CancellationToken,
}

#[derive(Debug, Default)]
struct Followers {
    /// A std mutex, held only to add jobs or copy the list, never while a job is acted on.
    jobs: Mutex<Jobs>,
}

#[derive(Debug, Default)]
struct Jobs {
    cells: Vec<Weak<JobCell>>,
    /// How many were live at the last sweep of the stopped ones: the next sweep waits until the
    /// list has doubled, so adding a job costs O(1) on average, also across reloads.
    live_at_sweep: usize,
}

impl Jobs {
    fn sweep(&mut self) {
        self.cells.retain(|cell| cell.strong_count() > 0);
        self.live_at_sweep = self.cells.len();
    }
}

impl StepFollowers {
    /// Tells `job` of every step of `clock` (this machine's wall clock) and `cluster_time`
    /// (the database's, in a cluster) from now on, until it is dropped. Every job of one
    /// environment gives the same clocks.
    pub(super) fn follow(
        &self,
        job: &Arc<JobCell>,
        clock: &Clock,
        cluster_time: Option<&RemoteClock>,
    ) {
        self.started.get_or_init(|| {
            // Subscribed before the first job is scheduled: a step from then on is kept until
            // the task looks, however busy it is.
            let wall_steps = clock.wall_steps();
            let corrections = cluster_time.map_or_else(ClockSteps::never, RemoteClock::corrections);
            let shared = Arc::downgrade(&self.shared);
            let stop = self.stop.clone();
            tokio::spawn(async move {
                tokio::select! {
                    _ = stop.cancelled() => {}
                    _ = serve(shared, wall_steps, corrections) => {}
                }
            });
        });
        let mut jobs = self.shared.lock();
        jobs.cells.push(Arc::downgrade(job));
        if jobs.cells.len() > 2 * jobs.live_at_sweep + 64 {
            jobs.sweep();
        }
    }
}

impl Drop for StepFollowers {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl Followers {
    fn lock(&self) -> std::sync::MutexGuard<'_, Jobs> {
        self.jobs.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The jobs still there.
    fn live(&self) -> Vec<Arc<JobCell>> {
        let mut jobs = self.lock();
        jobs.sweep();
        jobs.cells.iter().filter_map(Weak::upgrade).collect()
    }
}

/// Tells every job of each step, until the followers are gone.
async fn serve(shared: Weak<Followers>, mut wall_steps: ClockSteps, mut corrections: ClockSteps) {
    loop {
        let wall = tokio::select! {
            () = wall_steps.changed() => true,
            () = corrections.changed() => false,
        };
        let Some(shared) = shared.upgrade() else {
            return;
        };
        for job in shared.live() {
            if wall {
                job.wall_clock_stepped();
            } else {
                job.cluster_time_corrected();
            }
        }
    }
}
