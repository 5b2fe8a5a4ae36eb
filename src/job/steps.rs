//! The clock's steps, told to the jobs: one task for the whole daemon watches the wall clock's
//! steps (and, in a cluster, the corrections of the database's clock) and calls each job, where
//! every job once had a task of its own waiting for both.

use std::sync::{Arc, Mutex, PoisonError, Weak};

use crate::clock::{Clock, ClockSteps, RemoteClock};

use super::actor::JobCell;
use super::OwnedTask;

/// The jobs to tell of the clock's steps (one per [`JobEnv`](super::JobEnv)); its task starts
/// when the first job follows and stops when this is dropped.
#[derive(Debug, Default)]
pub(crate) struct StepFollowers {
    /// A std mutex, held only to add jobs or copy the list, never while a job is acted on.
    jobs: Arc<Mutex<Jobs>>,
    task: OwnedTask,
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

fn lock(jobs: &Mutex<Jobs>) -> std::sync::MutexGuard<'_, Jobs> {
    jobs.lock().unwrap_or_else(PoisonError::into_inner)
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
        self.task.start_once(|| {
            // Subscribed before the first job is scheduled: a step from then on is kept until
            // the task looks, however busy it is.
            let wall_steps = clock.wall_steps();
            let corrections = cluster_time.map_or_else(ClockSteps::never, RemoteClock::corrections);
            serve(Arc::downgrade(&self.jobs), wall_steps, corrections)
        });
        let mut jobs = lock(&self.jobs);
        jobs.cells.push(Arc::downgrade(job));
        if jobs.cells.len() > 2 * jobs.live_at_sweep + 64 {
            jobs.sweep();
        }
    }
}

/// Tells every job of each step, until the followers are gone.
async fn serve(jobs: Weak<Mutex<Jobs>>, mut wall_steps: ClockSteps, mut corrections: ClockSteps) {
    loop {
        let wall = tokio::select! {
            () = wall_steps.changed() => true,
            () = corrections.changed() => false,
        };
        let Some(jobs) = jobs.upgrade() else {
            return;
        };
        // Copied out, so that no job is acted on under the list's lock.
        let live: Vec<Arc<JobCell>> = {
            let mut jobs = lock(&jobs);
            jobs.sweep();
            jobs.cells.iter().filter_map(Weak::upgrade).collect()
        };
        for job in live {
            if wall {
                job.wall_clock_stepped();
            } else {
                job.cluster_time_corrected();
            }
        }
    }
}
