//! The dispatcher: one task that sleeps until the earliest deadline of every job and, when it
//! comes, acts on all the jobs due at that instant, in due order, without waking their tasks.
//!
//! Before, each job's task slept on its own timer: 1,000 jobs due at :00 were 1,000 wake-ups
//! from the timer thread (each a hop onto a worker's queue) and 1,000 polls of a `select!`,
//! before the first run had started; then each run's end woke its job's task again. Now a
//! job's state sits behind one lock ([`JobCell`](super::actor::JobCell)), shared by all that act
//! on it: this dispatcher (fires and retries), its runs as they end, the commands and the
//! clock's steps; no job has a task of its own. The lock serializes them as a task's mailbox
//! would, so overlap is still state: a fire looks at the runs the job knows are going.
//!
//! The dispatcher starts the runs of every job of a batch before it books any of them (see
//! `serve_batch`). It acts on a batch alone: sharing 1,000 jobs due at once with a second
//! thread (half of the batch to a spawned task, a second task woken by the timer, a thread of
//! the blocking pool taking slices) measured no better on 2 cores: the second thread often
//! started its share only when the first was done, and when both ran, each fire cost more.

use std::cell::RefCell;
use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};

use tokio::sync::Notify;

use crate::clock::{Clock, Instant};

use super::actor::{Batch, JobCell};
use super::OwnedTask;

/// Where a job's deadline sits in the queue: the deadline, then a tie-breaking sequence number
/// (also the entry's identity, so a job can tell a stale entry from its current one).
pub(super) type Entry = (Instant, u64);

/// A deadline and the job it is for.
type Queued = (Entry, Weak<JobCell>);

/// The daemon's dispatcher (one per [`JobEnv`](super::JobEnv)); its task starts on first use
/// and stops when this is dropped.
#[derive(Debug)]
pub(crate) struct Dispatcher {
    shared: Arc<Shared>,
    task: OwnedTask,
}

#[derive(Debug)]
struct Shared {
    /// A std mutex: held for map operations only, never across an `.await` and never while a
    /// job's lock is taken (the dispatcher takes the due entries out first).
    queue: Mutex<Queue>,
    /// An earlier deadline than the one the task sleeps for was set.
    earlier: Notify,
    /// Numbers the entries.
    next_seq: AtomicU64,
    clock: Clock,
}

#[derive(Debug, Default)]
struct Queue {
    deadlines: BTreeMap<Entry, Weak<JobCell>>,
}

thread_local! {
    /// The deadlines set on this thread while the dispatcher acts on a batch: put in the queue
    /// in one go when it is done, rather than one lock of the queue per job and fire. The
    /// dispatcher reads the queue again only after the batch, so none is missed.
    static HELD: RefCell<Option<Vec<Queued>>> = const { RefCell::new(None) };
}

/// Holds the deadlines set on this thread until it is dropped, then puts them in the queue
/// (also if acting on the batch panicked).
struct HoldDeadlines<'a>(&'a Shared);

impl<'a> HoldDeadlines<'a> {
    fn new(shared: &'a Shared) -> Self {
        HELD.with_borrow_mut(|held| *held = Some(Vec::new()));
        HoldDeadlines(shared)
    }
}

impl Drop for HoldDeadlines<'_> {
    fn drop(&mut self) {
        let held = HELD.with_borrow_mut(Option::take).unwrap_or_default();
        if !held.is_empty() {
            self.0.lock().deadlines.extend(held);
        }
    }
}

impl Dispatcher {
    /// A dispatcher on `clock`; no task runs until a deadline is set.
    pub fn new(clock: Clock) -> Self {
        Dispatcher {
            shared: Arc::new(Shared {
                queue: Mutex::default(),
                earlier: Notify::new(),
                next_seq: AtomicU64::new(0),
                clock,
            }),
            task: OwnedTask::default(),
        }
    }

    /// Moves `job`'s deadline from `old` (its entry, if it has one) to `at` (or none), and
    /// returns the new entry. Call with the job's lock held, so that entries and the job's own
    /// record of them change together.
    pub(super) fn reschedule(
        &self,
        job: &Arc<JobCell>,
        old: Option<Entry>,
        at: Option<Instant>,
    ) -> Option<Entry> {
        self.task.start_once(|| {
            let shared = self.shared.clone();
            async move { shared.serve().await }
        });
        let entry = at.map(|at| (at, self.shared.next_seq.fetch_add(1, Ordering::Relaxed)));
        // In a batch (see `HELD`), a new deadline waits for its end; an old one is in the queue
        // or, set earlier in the batch, held: then it stays, stale, and is ignored when due.
        let held = old.is_none()
            && HELD.with_borrow_mut(|held| match (held.as_mut(), entry) {
                (Some(held), Some(entry)) => {
                    held.push((entry, Arc::downgrade(job)));
                    true
                }
                _ => false,
            });
        if held {
            return entry;
        }
        let mut queue = self.shared.lock();
        if let Some(old) = old {
            queue.deadlines.remove(&old);
        }
        let entry = entry?;
        let earliest = queue
            .deadlines
            .keys()
            .next()
            .is_none_or(|first| entry < *first);
        queue.deadlines.insert(entry, Arc::downgrade(job));
        drop(queue);
        if earliest {
            self.shared.earlier.notify_one();
        }
        Some(entry)
    }

    /// Removes a job's entry (its task stops).
    pub(super) fn remove(&self, entry: Entry) {
        self.shared.lock().deadlines.remove(&entry);
    }
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The task: sleep until the earliest deadline (or until an earlier one is set), then act
    /// on every job due.
    async fn serve(self: Arc<Self>) {
        // Kept across batches: a thousand runs ended at once fill a quarter of a megabyte,
        // grown and freed again at every instant otherwise.
        let mut batch = Batch::default();
        // The entries due, kept across batches likewise.
        let mut due = Vec::new();
        loop {
            // Before reading the queue: a deadline set after the read is then not missed.
            let earlier = self.earlier.notified();
            tokio::pin!(earlier);
            earlier.as_mut().enable();
            let first = self.lock().deadlines.keys().next().map(|(at, _)| *at);
            match first {
                None => earlier.await,
                Some(at) => {
                    tokio::select! {
                        biased;
                        _ = self.clock.sleep_until(at) => {}
                        _ = &mut earlier => continue,
                    }
                }
            }
            self.serve_batch(&mut due, &mut batch);
        }
    }

    /// Acts on every job due, in due order: starts every run they decide on first, then books
    /// those that ended at their first poll (metrics, status, history, log lines), so that the
    /// bookkeeping of one run does not delay the start of the next.
    fn serve_batch(&self, due: &mut Vec<Queued>, batch: &mut Batch) {
        {
            let mut queue = self.lock();
            let later = queue.deadlines.split_off(&(self.clock.now(), u64::MAX));
            due.extend(std::mem::replace(&mut queue.deadlines, later));
        }
        let _held = HoldDeadlines::new(self);
        for (entry, job) in ReadAhead::new(due) {
            if let Some(job) = job {
                job.deadline_reached(entry, batch);
            }
        }
        due.clear();
        batch.book();
    }
}

/// The jobs of a batch, in due order, each read ahead of its turn. They are far apart in
/// memory, and waiting for the first touches of each (its cell, then its definition, status
/// and metrics, each an allocation of its own) was much of a fire's start: the CPU is asked
/// to bring in the cell of the job [`CELL_AHEAD`] places on, and what the cell points to for
/// the one [`STATE_AHEAD`] on, whose cell came in meanwhile. With 1,000 jobs due at once, a
/// job's start took 30 % less (1.75 -> 1.23 µs, batches of one run alternating with and without,
/// 2026-12-04); distances of 4 and 2 gained less, 12 and 6 no more.
struct ReadAhead<'a> {
    due: &'a [Queued],
    /// The next job's index.
    next: usize,
    /// The jobs from `next` on whose state was read ahead (`None`: removed).
    upcoming: VecDeque<Option<Arc<JobCell>>>,
}

/// How many places ahead a batch's cells are prefetched (see [`ReadAhead`]).
const CELL_AHEAD: usize = 8;
/// How many places ahead a batch's jobs have their state prefetched (see [`ReadAhead`]).
const STATE_AHEAD: usize = 4;

impl<'a> ReadAhead<'a> {
    fn new(due: &'a [Queued]) -> Self {
        for (_, job) in due.iter().take(CELL_AHEAD) {
            crate::os::prefetch(job.as_ptr());
        }
        let mut jobs = ReadAhead {
            due,
            next: 0,
            upcoming: VecDeque::with_capacity(STATE_AHEAD + 1),
        };
        for index in 0..STATE_AHEAD.min(due.len()) {
            let job = jobs.read(index);
            jobs.upcoming.push_back(job);
        }
        jobs
    }

    /// The job at `index`, its state prefetched.
    fn read(&self, index: usize) -> Option<Arc<JobCell>> {
        let job = self.due[index].1.upgrade()?;
        job.read_ahead();
        Some(job)
    }
}

impl Iterator for ReadAhead<'_> {
    /// A job's entry, and the job unless it was removed.
    type Item = (Entry, Option<Arc<JobCell>>);

    fn next(&mut self) -> Option<Self::Item> {
        let index = self.next;
        let (entry, _) = self.due.get(index)?;
        self.next += 1;
        if let Some((_, cell)) = self.due.get(index + CELL_AHEAD) {
            crate::os::prefetch(cell.as_ptr());
        }
        if index + STATE_AHEAD < self.due.len() {
            let job = self.read(index + STATE_AHEAD);
            self.upcoming.push_back(job);
        }
        Some((*entry, self.upcoming.pop_front().flatten()))
    }
}
