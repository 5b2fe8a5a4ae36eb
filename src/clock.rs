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
        Clock {
            kind: Arc::new(ClockKind::System {
                wall_watch: OnceLock::new(),
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
            ClockKind::System { .. } => Utc::now(),
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
    /// while its task is busy elsewhere is seen at its next [`WallSteps::changed`].
    pub fn wall_steps(&self) -> WallSteps {
        let receiver = match &*self.kind {
            ClockKind::System { wall_watch, .. } => {
                precise::WallWatch::get(wall_watch).map(|watch| watch.stepped.subscribe())
            }
            ClockKind::Manual { stepped, .. } => Some(stepped.subscribe()),
        };
        WallSteps { receiver }
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

/// Steps of the wall clock since the subscription or the last [`WallSteps::changed`]; see
/// [`Clock::wall_steps`].
#[derive(Debug)]
pub struct WallSteps {
    /// `None` when steps cannot be watched (no realtime timerfd): they are then noticed when
    /// calendar deadlines fire.
    receiver: Option<watch::Receiver<u64>>,
}

impl WallSteps {
    /// Resolves once the wall clock has been stepped since the last call (at once if that
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
}
