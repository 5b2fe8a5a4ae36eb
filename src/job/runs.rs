//! The runs of one job that its task keeps track of (going, queued, waiting to retry), and the
//! pure decisions about them: what a fire does under the overlap policy, what a failure does
//! under the retry policy, when a long run is worth a warning. No runtime and no clock here:
//! the task passes in what time it is.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::clock::Instant;
use crate::config::{Overlap, Retry};
use crate::handler::RunId;

use super::plan::Due;

/// A run that has been going for this many of its job's fires is reported (and again at ten
/// times as many, and so on): with `overlap = "skip"` each of those fires was lost.
const LONG_RUN_FIRES: u64 = 10;

/// A run of this job in flight.
#[derive(Debug)]
pub(crate) struct Running {
    /// Stops it.
    pub cancel: CancellationToken,
    /// When it started.
    pub started: Instant,
    /// Fires of the job since it started: a run that outlasts many of them is worth a warning.
    pub fires_since: u64,
}

/// A retry waiting for its time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct PendingRetry {
    /// When it starts.
    pub at: Instant,
    /// Which attempt it is: n for the n-th retry.
    pub attempt: u32,
}

/// What a fire does, by the job's overlap policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FireAction {
    /// Start a run now.
    Start,
    /// Queue the run behind the ones going (`queue`).
    Queue,
    /// Stop the runs going and start this one when they have ended (`replace`).
    Replace,
    /// Nothing runs; the reason is logged.
    Skip(&'static str),
}

/// What a failed run leads to, by the job's retry policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AfterFailure {
    /// Retry at the given time.
    Retry(PendingRetry),
    /// A retry is due by the policy but would reach the next scheduled fire: dropped, and the
    /// failure is final.
    RetryDropped {
        /// The attempt that was dropped.
        attempt: u32,
    },
    /// No attempts left (or no retry policy): the failure is final.
    Final,
}

/// The overlap decision: what a fire does when `going` runs are in flight and a run is
/// (`queued`) or is not waiting behind them.
pub(crate) fn decide(overlap: &Overlap, going: usize, queued: bool) -> FireAction {
    let busy = going > 0;
    match *overlap {
        Overlap::Skip if busy => FireAction::Skip("the previous run is still going"),
        Overlap::Allow {
            max_concurrent: Some(max),
        } if going >= max.get() => FireAction::Skip("max_concurrent runs are going"),
        Overlap::Queue if busy && queued => FireAction::Skip("a run is already queued"),
        Overlap::Queue if busy => FireAction::Queue,
        Overlap::Replace if busy => FireAction::Replace,
        _ => FireAction::Start,
    }
}

/// The retry decision for a run that was attempt `attempt` (0 for the scheduled run) and failed
/// at `now`, the job's next fire being `next_fire`: a retry only if attempts are left and it
/// would start before that fire.
pub(crate) fn after_failure(
    policy: Option<Retry>,
    attempt: u32,
    now: Instant,
    next_fire: Option<Instant>,
) -> AfterFailure {
    let Some(policy) = policy.filter(|policy| attempt < policy.attempts()) else {
        return AfterFailure::Final;
    };
    let attempt = attempt + 1;
    let at = now + policy.delay(attempt);
    if next_fire.is_none_or(|next| at < next) {
        AfterFailure::Retry(PendingRetry { at, attempt })
    } else {
        AfterFailure::RetryDropped { attempt }
    }
}

/// Whether a run going for `fires` of its job's fires has just reached a count worth a
/// warning: [`LONG_RUN_FIRES`], then ten times as many, and so on.
pub(crate) fn is_long_run(fires: u64) -> bool {
    let mut threshold = LONG_RUN_FIRES;
    while threshold < fires {
        threshold = threshold.saturating_mul(10);
    }
    fires == threshold
}

/// A long run to warn about: see [`Runs::count_fire`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct LongRun {
    /// The run.
    pub run_id: RunId,
    /// Fires of its job since it started.
    pub fires: u64,
    /// How long it has been going, in whole seconds.
    pub going_for: Duration,
}

/// The runs one job knows of.
#[derive(Debug, Default)]
pub(crate) struct Runs {
    /// The runs in flight, with the tokens that stop them, oldest first: a list, as a job has
    /// one run going, or a few (a map hashed each run id twice per fire); the one inline, so
    /// that no job keeps an allocation for it between runs.
    going: smallvec::SmallVec<[(RunId, Running); 1]>,
    /// A run waiting for the ones going to end (`queue`, `replace`).
    pub queued: Option<Due>,
    /// A retry of a failed run, waiting for its backoff.
    pub retry: Option<PendingRetry>,
}

impl Runs {
    /// How many runs are in flight.
    pub fn going(&self) -> usize {
        self.going.len()
    }

    /// What a fire does now, by `overlap`.
    pub fn decide(&self, overlap: &Overlap) -> FireAction {
        decide(overlap, self.going.len(), self.queued.is_some())
    }

    /// A run started at `started`; `cancel` stops it.
    pub fn started(&mut self, run_id: RunId, cancel: CancellationToken, started: Instant) {
        self.going.push((
            run_id,
            Running {
                cancel,
                started,
                fires_since: 0,
            },
        ));
    }

    /// The run `run_id` ended; `false` if it was not one of these.
    pub fn ended(&mut self, run_id: RunId) -> bool {
        let Some(i) = self.going.iter().position(|(id, _)| *id == run_id) else {
            return false;
        };
        self.going.remove(i);
        true
    }

    /// Asks every run in flight to stop.
    pub fn stop_all(&self) {
        for (_, run) in &self.going {
            run.cancel.cancel();
        }
    }

    /// Counts a fire of the job against each run in flight, at `now`; returns the runs that
    /// have just become long enough to warn about.
    pub fn count_fire(&mut self, now: Instant) -> Vec<LongRun> {
        let mut long = Vec::new();
        for (run_id, run) in &mut self.going {
            run.fires_since += 1;
            if is_long_run(run.fires_since) {
                let going = now.saturating_duration_since(run.started);
                long.push(LongRun {
                    run_id: *run_id,
                    fires: run.fires_since,
                    going_for: Duration::from_secs(going.as_secs()),
                });
            }
        }
        long
    }
}

/// How often, at most, a job's overlap skips are told at info level.
pub(crate) const SKIP_NOTICE_EVERY: Duration = Duration::from_secs(60);

/// The overlap skips of a job the log has not told yet: the first is told at once, the next
/// at most once per [`SKIP_NOTICE_EVERY`] with how many there were since, so a job whose runs
/// outlast its period shows it at the default level without a line per fire.
#[derive(Debug, Default)]
pub(crate) struct SkipNotices {
    /// When the last notice was given.
    told: Option<Instant>,
    /// Skips since that notice.
    untold: u64,
}

impl SkipNotices {
    /// Counts a skip at `now`; returns the number of skips to tell now (this one included), if
    /// a notice is due.
    pub fn skipped(&mut self, now: Instant) -> Option<u64> {
        self.untold += 1;
        self.due(now)
    }

    /// The skips to tell at `now` if a notice is due (a fire that did not skip asks, so the last
    /// skips of a burst are told within a fire of the minute passing).
    pub fn due(&mut self, now: Instant) -> Option<u64> {
        if self.untold == 0 {
            return None;
        }
        match self.told {
            Some(told) if now.saturating_duration_since(told) < SKIP_NOTICE_EVERY => None,
            _ => {
                self.told = Some(now);
                Some(std::mem::take(&mut self.untold))
            }
        }
    }

    /// The skips not told yet, whatever the time (the job stops).
    pub fn rest(&mut self) -> Option<u64> {
        (self.untold > 0).then(|| std::mem::take(&mut self.untold))
    }
}

#[cfg(test)]
mod tests {
    use std::num::NonZeroUsize;

    use super::*;

    fn allow(max: Option<usize>) -> Overlap {
        Overlap::Allow {
            max_concurrent: max.and_then(NonZeroUsize::new),
        }
    }

    #[test]
    fn an_idle_job_starts_a_run_under_every_policy() {
        for overlap in [
            Overlap::Skip,
            Overlap::Queue,
            Overlap::Replace,
            allow(None),
            allow(Some(1)),
        ] {
            assert_eq!(decide(&overlap, 0, false), FireAction::Start, "{overlap:?}");
        }
    }

    #[test]
    fn a_busy_job_applies_its_overlap_policy() {
        assert!(matches!(
            decide(&Overlap::Skip, 1, false),
            FireAction::Skip(_)
        ));
        assert_eq!(decide(&Overlap::Queue, 1, false), FireAction::Queue);
        assert!(matches!(
            decide(&Overlap::Queue, 1, true),
            FireAction::Skip(_)
        ));
        assert_eq!(decide(&Overlap::Replace, 1, false), FireAction::Replace);
        assert_eq!(decide(&Overlap::Replace, 2, true), FireAction::Replace);
        assert_eq!(decide(&allow(None), 50, false), FireAction::Start);
        assert_eq!(decide(&allow(Some(3)), 2, false), FireAction::Start);
        assert!(matches!(
            decide(&allow(Some(3)), 3, false),
            FireAction::Skip(_)
        ));
    }

    #[test]
    fn a_retry_comes_before_the_next_fire_or_not_at_all() {
        let now = Instant::now();
        let policy = Retry::new(2, Duration::from_secs(1), Duration::from_secs(60)).expect("valid");
        let second = Duration::from_secs(1);
        assert_eq!(after_failure(None, 0, now, None), AfterFailure::Final);
        let retry = after_failure(Some(policy), 0, now, Some(now + 10 * second));
        assert_eq!(
            retry,
            AfterFailure::Retry(PendingRetry {
                at: now + policy.delay(1),
                attempt: 1
            })
        );
        assert_eq!(
            after_failure(Some(policy), 0, now, Some(now + policy.delay(1))),
            AfterFailure::RetryDropped { attempt: 1 }
        );
        assert_eq!(
            after_failure(Some(policy), 2, now, None),
            AfterFailure::Final
        );
    }

    #[test]
    fn long_runs_are_reported_at_ten_then_each_tenfold() {
        let reported: Vec<u64> = (1..=2000).filter(|&fires| is_long_run(fires)).collect();
        assert_eq!(reported, [10, 100, 1000]);
    }

    #[test]
    fn overlap_skips_are_told_at_once_then_once_a_minute_with_their_count() {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let mut notices = SkipNotices::default();
        assert_eq!(notices.skipped(at(0)), Some(1), "the first at once");
        // A skip every 200 ms for the rest of the minute: none told.
        for ms in (200..60_000).step_by(200) {
            assert_eq!(notices.skipped(at(ms)), None, "at {ms} ms");
        }
        // The minute is over: the next one tells the 299 before it and itself.
        assert_eq!(notices.skipped(at(60_000)), Some(300));
        // A few more, then fires that start runs again: told by the first fire past the minute.
        assert_eq!(notices.skipped(at(61_000)), None);
        assert_eq!(notices.skipped(at(62_000)), None);
        assert_eq!(notices.due(at(100_000)), None);
        assert_eq!(notices.due(at(120_000)), Some(2));
        assert_eq!(notices.due(at(500_000)), None, "nothing left to tell");
        // A skip long after the last notice is told at once.
        assert_eq!(notices.skipped(at(600_000)), Some(1));
        assert_eq!(notices.skipped(at(600_100)), None);
        assert_eq!(notices.rest(), Some(1));
        assert_eq!(notices.rest(), None);
    }
}
