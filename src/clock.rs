//! The one module that owns time.
//!
//! Nothing else in tickd reads a clock or sleeps: the scheduler asks a [`Clock`] for "now" (both the
//! monotonic instant and the wall-clock time) and to sleep until a monotonic deadline. Code that
//! computes with time (a job's plan, `tickd next`) is given one reading of both, a [`Now`], and
//! stays pure.
//!
//! Two kinds of time are involved and they are kept apart on purpose:
//! - **Monotonic instants** ([`Instant`], tokio's) drive every deadline. Periodic (`every`) grids are
//!   pure monotonic arithmetic, so a wall-clock step never moves them.
//! - **Wall-clock time** ([`DateTime<Utc>`]) is only used to compute calendar (`cron`) fire times, and
//!   is then converted into a monotonic deadline. When the wall clock is stepped, the scheduler is
//!   told through [`Clock::wall_steps`] and recomputes calendar deadlines from the new "now".
//!
//! Tests use [`Clock::manual`] together with `tokio::time::pause()`: tokio's paused time drives the
//! monotonic side, and the manual wall clock follows it and can be stepped by hand.

mod precise;

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::sync::watch;

pub use tokio::time::Instant;

/// A source of time and the only way tickd sleeps. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Clock {
    kind: Arc<ClockKind>,
}

enum ClockKind {
    /// The operating system's clocks, with sub-millisecond timers (see `precise`). The
    /// wall-clock watch starts on first use, inside the runtime that uses it.
    System {
        wall_watch: OnceLock<Option<Arc<precise::WallWatch>>>,
        /// Added to every wall-clock reading: zero, except for the tests that give one node of a
        /// cluster a clock that is off ([`Clock::system_skewed`]).
        skew: chrono::Duration,
    },
    /// A wall clock that advances with tokio's (possibly paused) monotonic time and can be stepped.
    Manual {
        /// A std mutex: held only for a few arithmetic operations, never across an `.await`.
        anchor: Mutex<WallAnchor>,
        /// Counts wall-clock steps, like a `TFD_TIMER_CANCEL_ON_SET` timer would report them.
        stepped: watch::Sender<u64>,
    },
}

impl std::fmt::Debug for ClockKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ClockKind::System { .. } => f.write_str("System"),
            ClockKind::Manual { anchor, .. } => f.debug_tuple("Manual").field(anchor).finish(),
        }
    }
}

/// The manual wall clock: `wall = anchor.wall + (Instant::now() - anchor.instant)`.
#[derive(Debug, Clone, Copy)]
struct WallAnchor {
    instant: Instant,
    wall: DateTime<Utc>,
}

impl Clock {
    /// The real clocks of the machine. Sleeps are precise to the kernel's timer resolution; a
    /// clock (and its clones) must be used within one tokio runtime.
    pub fn system() -> Self {
        Self::system_skewed(chrono::Duration::zero())
    }

    /// The machine's clocks with the wall clock read `skew` off: how the tests give one node of
    /// a cluster a wrong clock (`TICKD_TEST_CLOCK_SKEW`) without changing the machine's.
    pub fn system_skewed(skew: chrono::Duration) -> Self {
        Clock {
            kind: Arc::new(ClockKind::System {
                wall_watch: OnceLock::new(),
                skew,
            }),
        }
    }

    /// A controllable clock for tests: its wall clock reads `wall_now` at this moment and then
    /// advances with tokio's monotonic time (pause it with `tokio::time::pause()` and move it with
    /// `tokio::time::advance`); [`Clock::step_wall`] steps the wall clock alone.
    pub fn manual(wall_now: DateTime<Utc>) -> Self {
        Clock {
            kind: Arc::new(ClockKind::Manual {
                anchor: Mutex::new(WallAnchor {
                    instant: Instant::now(),
                    wall: wall_now,
                }),
                stepped: watch::Sender::new(0),
            }),
        }
    }

    /// The current monotonic instant.
    pub fn now(&self) -> Instant {
        Instant::now()
    }

    /// The current wall-clock time.
    pub fn wall_now(&self) -> DateTime<Utc> {
        match &*self.kind {
            ClockKind::System { skew, .. } => Utc::now() + *skew,
            ClockKind::Manual { anchor, .. } => {
                let anchor = *anchor.lock().unwrap_or_else(PoisonError::into_inner);
                anchor.wall + to_chrono(Instant::now().saturating_duration_since(anchor.instant))
            }
        }
    }

    /// Both clocks, read together: "now" for the pure schedule maths.
    pub fn read(&self) -> Now {
        Now {
            instant: self.now(),
            wall: self.wall_now(),
        }
    }

    /// The monotonic instant at which the wall clock will read `wall`, assuming it is not stepped
    /// meanwhile. A time in the past maps to "now".
    pub fn instant_for_wall(&self, wall: DateTime<Utc>) -> Instant {
        self.read().instant_for_wall(wall)
    }

    /// The wall-clock time that corresponds to a monotonic instant (past or future).
    pub fn wall_for_instant(&self, instant: Instant) -> DateTime<Utc> {
        self.read().wall_for_instant(instant)
    }

    /// A future that completes at the monotonic `deadline`. It registers its deadline when first
    /// polled and keeps it across polls, so a long-lived sleep costs nothing per poll.
    pub fn sleep_until(&self, deadline: Instant) -> Sleep {
        let inner = match &*self.kind {
            ClockKind::System { .. } => match precise::PreciseTimer::get() {
                Some(timer) => SleepInner::Precise(timer.sleep_until(deadline)),
                None => SleepInner::Tokio(Box::pin(tokio::time::sleep_until(deadline))),
            },
            ClockKind::Manual { .. } => {
                SleepInner::Tokio(Box::pin(tokio::time::sleep_until(deadline)))
            }
        };
        Sleep { inner }
    }

    /// A future that completes after `duration` of monotonic time.
    pub fn sleep(&self, duration: Duration) -> Sleep {
        self.sleep_until(self.now() + duration)
    }

    /// A subscription to steps of the wall clock (not its mere advance), from now on.
    ///
    /// For the manual clock this follows [`Clock::step_wall`]; for the system clock, a realtime
    /// `timerfd` with `TFD_TIMER_CANCEL_ON_SET` reports every step of `CLOCK_REALTIME`. A step is
    /// kept until the subscriber looks (a generation counter, not a wake-up): one that lands
    /// while its task is busy elsewhere is seen at its next [`ClockSteps::changed`].
    pub fn wall_steps(&self) -> ClockSteps {
        let receiver = match &*self.kind {
            ClockKind::System { wall_watch, .. } => {
                precise::WallWatch::get(wall_watch).map(|watch| watch.stepped.subscribe())
            }
            ClockKind::Manual { stepped, .. } => Some(stepped.subscribe()),
        };
        ClockSteps { receiver }
    }

    /// Steps the manual wall clock by `by` (negative to go back). No-op on the system clock: tickd
    /// never changes the machine's clock.
    pub fn step_wall(&self, by: chrono::Duration) {
        if let ClockKind::Manual { anchor, stepped } = &*self.kind {
            anchor.lock().unwrap_or_else(PoisonError::into_inner).wall += by;
            stepped.send_modify(|generation| *generation += 1);
        }
    }
}

/// One reading of both clocks, taken together ([`Clock::read`]): what functions that compute
/// with time are given instead of a clock, so that they stay pure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Now {
    /// The monotonic instant.
    pub instant: Instant,
    /// The wall-clock time.
    pub wall: DateTime<Utc>,
}

impl Now {
    /// The monotonic instant at which the wall clock will read `wall`, assuming it is not
    /// stepped meanwhile. A time in the past maps to this instant.
    pub fn instant_for_wall(&self, wall: DateTime<Utc>) -> Instant {
        match (wall - self.wall).to_std() {
            Ok(ahead) => self.instant + ahead,
            Err(_) => self.instant,
        }
    }

    /// The wall-clock time that corresponds to a monotonic instant (past or future).
    pub fn wall_for_instant(&self, instant: Instant) -> DateTime<Utc> {
        if instant >= self.instant {
            self.wall + to_chrono(instant - self.instant)
        } else {
            self.wall - to_chrono(self.instant - instant)
        }
    }

    /// What both clocks read at `instant`, the wall clock not being stepped meanwhile.
    pub fn advanced_to(&self, instant: Instant) -> Now {
        Now {
            instant,
            wall: self.wall_for_instant(instant),
        }
    }
}

/// How far an estimate of a [`RemoteClock`] may be off before it is corrected (and the fires
/// planned on it are planned again): well below what a scheduler can be asked for, well above
/// the drift of two disciplined clocks between corrections.
const REMOTE_TOLERANCE: Duration = Duration::from_millis(1);

/// Another machine's clock (the cluster database's), estimated on this machine's monotonic
/// clock from readings of it: the time the cluster's slots are named and fired in.
///
/// It is a function of the monotonic clock alone, so neither this machine's wall clock being
/// off (skew) nor its being stepped moves it; only a correction does, when a reading shows the
/// estimate off by more than [`REMOTE_TOLERANCE`] beyond the reading's own uncertainty (half
/// its round trip). Each correction is counted in [`RemoteClock::corrections`], for whoever
/// planned with it to plan again. Cheap to clone; read without a lock.
#[derive(Debug, Clone)]
pub struct RemoteClock {
    shared: Arc<RemoteShared>,
}

#[derive(Debug)]
struct RemoteShared {
    /// A fixed monotonic instant ...
    base: Instant,
    /// ... and the remote clock's estimated reading then, in nanoseconds since the Unix epoch
    /// (an `i64` lasts until 2262).
    at_base: AtomicI64,
    /// The remote clock's offset to this machine's wall clock at the last correction, in
    /// nanoseconds (for the status: "this node's clock is 3 s behind the database's").
    offset: AtomicI64,
    corrections: watch::Sender<u64>,
}

impl RemoteClock {
    /// A remote clock first estimated to read what this machine's wall clock reads at `now`.
    pub fn like(now: Now) -> Self {
        RemoteClock {
            shared: Arc::new(RemoteShared {
                base: now.instant,
                at_base: AtomicI64::new(now.wall.timestamp_nanos_opt().unwrap_or(0)),
                offset: AtomicI64::new(0),
                corrections: watch::Sender::new(0),
            }),
        }
    }

    /// "Now" in the remote clock's time: the monotonic `instant` and the remote time then.
    pub fn read(&self, instant: Instant) -> Now {
        let at_base = self.shared.at_base.load(Ordering::Acquire);
        let since = i64::try_from(
            instant
                .saturating_duration_since(self.shared.base)
                .as_nanos(),
        )
        .unwrap_or(i64::MAX);
        Now {
            instant,
            wall: DateTime::from_timestamp_nanos(at_base.saturating_add(since)),
        }
    }

    /// A reading of the remote clock, `remote`, taken between the local instants `sent` and
    /// `received` (one round trip), as seen by `local` (this machine's clocks, read at
    /// `received`). Returns the correction if the estimate was corrected.
    pub fn observe(
        &self,
        sent: Instant,
        received: Instant,
        remote: DateTime<Utc>,
        local: Now,
    ) -> Option<chrono::Duration> {
        let round_trip = received.saturating_duration_since(sent);
        let midpoint = sent + round_trip / 2;
        let error = remote - self.read(midpoint).wall;
        let uncertainty = to_chrono(round_trip / 2 + REMOTE_TOLERANCE);
        if error.abs() <= uncertainty {
            return None;
        }
        let error_nanos = error.num_nanoseconds().unwrap_or(i64::MAX);
        self.shared.at_base.fetch_add(error_nanos, Ordering::AcqRel);
        let offset = self.read(local.instant).wall - local.wall;
        self.shared.offset.store(
            offset.num_nanoseconds().unwrap_or(i64::MAX),
            Ordering::Release,
        );
        self.shared
            .corrections
            .send_modify(|generation| *generation += 1);
        Some(error)
    }

    /// The remote clock's time less this machine's wall clock, as of the last correction.
    pub fn offset(&self) -> chrono::Duration {
        chrono::Duration::nanoseconds(self.shared.offset.load(Ordering::Acquire))
    }

    /// A subscription to the corrections of the estimate, from now on (see [`ClockSteps`]: a
    /// correction is kept until the subscriber looks).
    pub fn corrections(&self) -> ClockSteps {
        ClockSteps {
            receiver: Some(self.shared.corrections.subscribe()),
        }
    }
}

/// `CLOCK_BOOTTIME`: like the monotonic clock, but it also counts the time the machine was
/// suspended, so a lease measured with it cannot look younger after a suspend than it is.
pub fn boot_time() -> Duration {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_BOOTTIME)
        .map(Duration::from)
        .unwrap_or_default()
}

/// `CLOCK_MONOTONIC` in microseconds, for the service manager's `RELOADING=1`, which wants the
/// kernel's clock itself (not tokio's, which a test may pause).
pub fn monotonic_usec() -> u128 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
        .map(|ts| Duration::from(ts).as_micros())
        .unwrap_or(0)
}

/// Waits for `timer`, or forever when there is none: for a `select!` branch whose timer is
/// optional.
pub(crate) async fn sleep_or_never(timer: Option<&mut Sleep>) {
    match timer {
        Some(sleep) => sleep.await,
        None => std::future::pending().await,
    }
}

/// Steps of a clock since the subscription or the last [`ClockSteps::changed`]: of the wall
/// clock ([`Clock::wall_steps`]) or of a remote clock's estimate ([`RemoteClock::corrections`]).
#[derive(Debug)]
pub struct ClockSteps {
    /// `None` when steps cannot be watched (no realtime timerfd): they are then noticed when
    /// calendar deadlines fire.
    receiver: Option<watch::Receiver<u64>>,
}

impl ClockSteps {
    /// Steps of a clock that is never stepped.
    pub fn never() -> Self {
        ClockSteps { receiver: None }
    }

    /// Resolves once the clock has been stepped since the last call (at once if that
    /// happened already); never, if steps cannot be watched.
    pub async fn changed(&mut self) {
        match &mut self.receiver {
            Some(receiver) => {
                if receiver.changed().await.is_err() {
                    std::future::pending::<()>().await;
                }
            }
            None => std::future::pending().await,
        }
    }
}

/// A sleep on a [`Clock`]; see [`Clock::sleep_until`].
#[must_use = "a sleep does nothing unless awaited"]
pub struct Sleep {
    inner: SleepInner,
}

enum SleepInner {
    Precise(precise::PreciseSleep),
    Tokio(std::pin::Pin<Box<tokio::time::Sleep>>),
}

impl std::fmt::Debug for Sleep {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Sleep")
    }
}

impl std::future::Future for Sleep {
    type Output = ();

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<()> {
        match &mut self.inner {
            SleepInner::Precise(sleep) => std::pin::Pin::new(sleep).poll(cx),
            SleepInner::Tokio(sleep) => sleep.as_mut().poll(cx),
        }
    }
}

/// Converts a std duration to chrono's, saturating (durations here are far below chrono's range).
fn to_chrono(duration: Duration) -> chrono::Duration {
    chrono::Duration::from_std(duration).unwrap_or(chrono::Duration::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn t0() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 3, 1, 12, 0, 0)
            .single()
            .expect("valid")
    }

    #[tokio::test(start_paused = true)]
    async fn manual_wall_clock_follows_paused_time() {
        let clock = Clock::manual(t0());
        tokio::time::advance(Duration::from_millis(1500)).await;
        assert_eq!(
            clock.wall_now(),
            t0() + chrono::Duration::milliseconds(1500)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn wall_and_instant_convert_both_ways() {
        let clock = Clock::manual(t0());
        let at = clock.instant_for_wall(t0() + chrono::Duration::seconds(10));
        assert_eq!(at - clock.now(), Duration::from_secs(10));
        assert_eq!(
            clock.wall_for_instant(at),
            t0() + chrono::Duration::seconds(10)
        );
        // The past maps to now, never to an instant before it.
        assert_eq!(
            clock.instant_for_wall(t0() - chrono::Duration::hours(1)),
            clock.now()
        );
    }

    #[tokio::test(start_paused = true)]
    async fn stepping_the_wall_clock_wakes_waiters_and_moves_only_the_wall() {
        let clock = Clock::manual(t0());
        let mono = clock.now();
        let mut steps = clock.wall_steps();
        let waiter = tokio::spawn(async move { steps.changed().await });
        tokio::task::yield_now().await;
        clock.step_wall(chrono::Duration::hours(-1));
        waiter.await.expect("waiter finished");
        assert_eq!(clock.wall_now(), t0() - chrono::Duration::hours(1));
        assert_eq!(clock.now(), mono);
    }

    /// `notify_waiters` stores no permit: a step while nobody waited was lost.
    #[tokio::test(start_paused = true)]
    async fn a_step_while_nobody_waits_is_kept_for_the_next_look() {
        let clock = Clock::manual(t0());
        let mut steps = clock.wall_steps();
        clock.step_wall(chrono::Duration::hours(1));
        tokio::time::timeout(Duration::from_secs(1), steps.changed())
            .await
            .expect("the step was kept");
        // Seen once: the next look waits for the next step.
        assert!(
            tokio::time::timeout(Duration::from_secs(1), steps.changed())
                .await
                .is_err()
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_remote_clock_is_corrected_only_past_its_readings_uncertainty() {
        let clock = Clock::manual(t0());
        let remote = RemoteClock::like(clock.read());
        let mut corrections = remote.corrections();
        let ms = chrono::Duration::milliseconds;
        // A reading 3 s ahead, over a 10 ms round trip: the estimate moves to it.
        let sent = clock.now();
        tokio::time::advance(Duration::from_millis(10)).await;
        let corrected = remote.observe(sent, clock.now(), t0() + ms(3_005), clock.read());
        assert_eq!(corrected, Some(ms(3_000)));
        assert_eq!(remote.read(clock.now()).wall, t0() + ms(3_010));
        assert_eq!(remote.offset(), ms(3_000));
        tokio::time::timeout(Duration::from_secs(1), corrections.changed())
            .await
            .expect("the correction is told");
        // Off by 4 ms over a 10 ms round trip is within its uncertainty (5 ms + 1 ms): kept.
        let sent = clock.now();
        tokio::time::advance(Duration::from_millis(10)).await;
        let reading = remote.read(sent + Duration::from_millis(5)).wall + ms(4);
        assert_eq!(
            remote.observe(sent, clock.now(), reading, clock.read()),
            None
        );
        // A step of this machine's wall clock does not move the remote time.
        let before = remote.read(clock.now()).wall;
        clock.step_wall(chrono::Duration::hours(1));
        assert_eq!(remote.read(clock.now()).wall, before);
        // The remote clock going back 2 s is followed too.
        let sent = clock.now();
        let reading = remote.read(sent).wall - ms(2_000);
        assert_eq!(
            remote.observe(sent, sent, reading, clock.read()),
            Some(ms(-2_000))
        );
        assert_eq!(remote.read(sent).wall, reading);
    }
}
