//! Sub-millisecond timers for the system clock, and wall-clock step detection.
//!
//! tokio's timer wheel rounds every deadline up to the next millisecond (and `epoll_wait` takes
//! whole milliseconds), so a tokio `sleep_until` fires 0-1 ms late plus scheduling noise. Here,
//! every deadline goes into one ordered map served by one thread, `tickd-timer`:
//! - it blocks on a `CLOCK_MONOTONIC` `timerfd` armed with the *absolute* time of the earliest
//!   deadline minus [`LEAD`] (re-arming it from another thread moves a blocked read, so an
//!   earlier deadline needs no extra wake-up channel);
//! - the kernel's wake-up takes some 70 µs on a loaded VM, which eats most of the lead; the thread
//!   spins out the rest with `spin_loop` and wakes the due sleeps at their nanosecond;
//! - the waker hands the task to a tokio worker, which takes a few tens of µs more.
//!
//! While the thread is awake it serves every deadline that comes due within `LEAD` without going
//! back to the kernel, and the timerfd is re-armed only when it goes back to sleep: programming a
//! timer is a VM exit on virtual machines, far dearer than the spin. New deadlines are published
//! in an atomic that the spinning thread watches.
//!
//! The spin is bounded by `LEAD` per wake-up and costs nothing between deadlines. No crate offers
//! such a timer for tokio (tokio-timerfd uses one descriptor per sleep and tokio's own reactor
//! hop), so it is written here, in the module that owns time.
//!
//! A second, `CLOCK_REALTIME` timerfd armed with `TFD_TIMER_CANCEL_ON_SET` reports wall-clock steps
//! (settimeofday, NTP steps), so calendar schedules are recomputed instead of firing late or twice.

use std::collections::BTreeMap;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant as StdInstant};

use nix::errno::Errno;
use nix::sys::time::TimeSpec;
use nix::sys::timerfd::{ClockId, Expiration, TimerFd, TimerFlags, TimerSetTimeFlags};
use nix::time::{clock_gettime, ClockId as TimeClockId};
use std::os::fd::AsRawFd;

use super::Instant;

/// The longest lead: how long before a deadline the timer thread asks the kernel to wake it at
/// most; the rest is spun. The lead in use adapts to the kernel's measured wake-up latency
/// (plus [`LEAD_MARGIN`]), so the spin stays short where wake-ups are prompt.
const LEAD: Duration = Duration::from_micros(200);
/// Added to the measured wake-up latency to make the lead.
const LEAD_MARGIN: Duration = Duration::from_micros(10);
/// Below this, the timer thread spins without yielding the CPU.
const SPIN: Duration = Duration::from_micros(20);

/// Where a sleep sits in the deadline map: its deadline, then a tie-breaking id.
type Key = (StdInstant, u64);

/// The deadline map.
struct Deadlines {
    wakers: BTreeMap<Key, Waker>,
    next_id: u64,
    /// The timer thread is awake (spinning or waking): it will see any new deadline through
    /// `earliest_ns`, so nobody needs to touch the timerfd.
    awake: bool,
    /// The deadline the timerfd is armed for while the thread sleeps.
    armed: Option<StdInstant>,
}

/// The monotonic timer service: one thread per process, started on first use.
pub(super) struct PreciseTimer {
    /// A std mutex: held for map operations and one `timerfd_settime`, never across an `.await`.
    deadlines: Mutex<Deadlines>,
    /// The earliest deadline, in ns after `base` (`u64::MAX`: none), read by the spinning thread
    /// without the lock so that a new, earlier deadline interrupts a spin.
    earliest_ns: AtomicU64,
    /// The lead in use (ns): a moving average of the kernel's wake-up latency plus a margin.
    lead_ns: AtomicU64,
    /// When the timerfd was last asked to wake the thread (ns after `base`).
    armed_wake_ns: AtomicU64,
    fd: TimerFd,
    /// `CLOCK_MONOTONIC` at `base`, to turn an `Instant` (opaque, but `CLOCK_MONOTONIC` on Linux)
    /// into the absolute timespec the timerfd wants.
    base: StdInstant,
    base_monotonic: Duration,
}

impl PreciseTimer {
    /// The process's timer service, started on first use. `None` if a timerfd or the thread
    /// cannot be had; callers then use tokio's timer.
    pub(super) fn get() -> Option<Arc<PreciseTimer>> {
        static TIMER: OnceLock<Option<Arc<PreciseTimer>>> = OnceLock::new();
        TIMER
            .get_or_init(|| match PreciseTimer::start() {
                Ok(timer) => Some(timer),
                Err(err) => {
                    tracing::warn!(
                        "no precise timer ({err}); timers fall back to millisecond precision"
                    );
                    None
                }
            })
            .clone()
    }

    fn start() -> io::Result<Arc<PreciseTimer>> {
        // Blocking reads: the timer thread waits in `read`.
        let fd = TimerFd::new(ClockId::CLOCK_MONOTONIC, TimerFlags::TFD_CLOEXEC)?;
        let base = StdInstant::now();
        let base_monotonic = Duration::from(clock_gettime(TimeClockId::CLOCK_MONOTONIC)?);
        let timer = Arc::new(PreciseTimer {
            deadlines: Mutex::new(Deadlines {
                wakers: BTreeMap::new(),
                next_id: 0,
                awake: false,
                armed: None,
            }),
            earliest_ns: AtomicU64::new(u64::MAX),
            lead_ns: AtomicU64::new(LEAD.as_nanos() as u64 / 2),
            armed_wake_ns: AtomicU64::new(0),
            fd,
            base,
            base_monotonic,
        });
        let driver = timer.clone();
        std::thread::Builder::new()
            .name("tickd-timer".to_owned())
            .spawn(move || driver.drive())?;
        Ok(timer)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Deadlines> {
        self.deadlines
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn ns_after_base(&self, at: StdInstant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.base).as_nanos()).unwrap_or(u64::MAX - 1)
    }

    /// Publishes the earliest deadline to the timer thread; if it sleeps and the new earliest
    /// deadline is before the one its timerfd is armed for, re-arms it. Call with the lock held.
    fn publish(&self, deadlines: &mut Deadlines) {
        let earliest = deadlines.wakers.keys().next().map(|(at, _)| *at);
        let ns = earliest.map_or(u64::MAX, |at| self.ns_after_base(at));
        self.earliest_ns.store(ns, Ordering::Release);
        if deadlines.awake {
            return;
        }
        // A deadline that went away leaves the timerfd armed: the thread wakes, finds nothing
        // due and sleeps again, which is cheaper than a disarm every time a sleep is dropped.
        if let Some(at) = earliest {
            if deadlines.armed.is_none_or(|armed| at < armed) {
                self.arm(at);
                deadlines.armed = Some(at);
            }
        }
    }

    fn lead(&self) -> Duration {
        Duration::from_nanos(self.lead_ns.load(Ordering::Relaxed))
    }

    /// Learns the kernel's wake-up latency from a wake-up that was due at `armed` (ns after
    /// `base`) and came at `now`: an exponential moving average (1/8), plus the margin, capped.
    fn learn_latency(&self, now: StdInstant) {
        let armed = self.armed_wake_ns.load(Ordering::Relaxed);
        let late = self.ns_after_base(now).saturating_sub(armed);
        // A wake-up much later than any lead is an outlier (a stalled VM), not the norm.
        if late == 0 || late > 4 * LEAD.as_nanos() as u64 {
            return;
        }
        let margin = LEAD_MARGIN.as_nanos() as u64;
        let old = self.lead_ns.load(Ordering::Relaxed).saturating_sub(margin);
        let average = old - old / 8 + late / 8;
        let lead = (average + margin).min(LEAD.as_nanos() as u64);
        self.lead_ns.store(lead, Ordering::Relaxed);
    }

    /// Arms the timerfd the current lead before `at`.
    fn arm(&self, at: StdInstant) {
        let lead = self.lead();
        self.armed_wake_ns.store(
            self.ns_after_base(at)
                .saturating_sub(lead.as_nanos() as u64),
            Ordering::Relaxed,
        );
        let wake = self.base_monotonic + at.saturating_duration_since(self.base);
        // A zero timespec would disarm; the earliest possible instant is 1 ns.
        let wake = wake.saturating_sub(lead).max(Duration::from_nanos(1));
        let result = self.fd.set(
            Expiration::OneShot(TimeSpec::from_duration(wake)),
            TimerSetTimeFlags::TFD_TIMER_ABSTIME,
        );
        if let Err(err) = result {
            tracing::error!("cannot arm the timerfd: {err}");
        }
    }

    /// The timer thread: wait for the kernel, then serve every deadline that comes due within
    /// the lead (spinning, yielding the CPU while the wait is long), then sleep again.
    fn drive(&self) {
        loop {
            if let Err(err) = self.fd.wait() {
                tracing::error!("the timer thread stops: {err}");
                return;
            }
            self.learn_latency(StdInstant::now());
            {
                let mut deadlines = self.lock();
                deadlines.awake = true;
                deadlines.armed = None;
            }
            loop {
                let ns = self.earliest_ns.load(Ordering::Acquire);
                let now = StdInstant::now();
                let due_at = (ns != u64::MAX).then(|| self.base + Duration::from_nanos(ns));
                match due_at {
                    Some(at) if now >= at => {
                        let due = {
                            let mut deadlines = self.lock();
                            let later = deadlines.wakers.split_off(&(now, u64::MAX));
                            let due = std::mem::replace(&mut deadlines.wakers, later);
                            self.publish(&mut deadlines);
                            due
                        };
                        for waker in due.into_values() {
                            waker.wake();
                        }
                    }
                    Some(at) if at - now <= self.lead() => {
                        // Close: spin. Further out: let the workers have the CPU meanwhile (two
                        // cores are common, and they are the ones running the jobs).
                        if at - now > SPIN {
                            std::thread::yield_now();
                        } else {
                            std::hint::spin_loop();
                        }
                    }
                    _ => {
                        let mut deadlines = self.lock();
                        // Re-check under the lock: a deadline may have been added meanwhile.
                        let earliest = deadlines.wakers.keys().next().map(|(at, _)| *at);
                        if earliest.is_some_and(|at| {
                            at.saturating_duration_since(StdInstant::now()) <= self.lead()
                        }) {
                            continue;
                        }
                        deadlines.awake = false;
                        match earliest {
                            Some(at) => {
                                self.arm(at);
                                deadlines.armed = Some(at);
                            }
                            None => {
                                if let Err(err) = self.fd.unset() {
                                    tracing::error!("cannot disarm the timerfd: {err}");
                                }
                            }
                        }
                        break;
                    }
                }
            }
        }
    }

    /// A future that completes at `deadline`.
    pub(super) fn sleep_until(self: Arc<Self>, deadline: Instant) -> PreciseSleep {
        PreciseSleep {
            timer: self,
            deadline: deadline.into_std(),
            key: None,
        }
    }
}

/// A sleep on the [`PreciseTimer`].
pub(super) struct PreciseSleep {
    timer: Arc<PreciseTimer>,
    deadline: StdInstant,
    /// Set while registered in the deadline map.
    key: Option<Key>,
}

impl Future for PreciseSleep {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if StdInstant::now() >= self.deadline {
            self.unregister();
            return Poll::Ready(());
        }
        let timer = self.timer.clone();
        let mut deadlines = timer.lock();
        match self.key {
            Some(key) => match deadlines.wakers.get_mut(&key) {
                Some(waker) => {
                    if !waker.will_wake(cx.waker()) {
                        waker.clone_from(cx.waker());
                    }
                }
                // Woken, yet not due (cannot happen with a monotonic clock, but cheap to
                // handle): register again.
                None => {
                    deadlines.wakers.insert(key, cx.waker().clone());
                    timer.publish(&mut deadlines);
                }
            },
            None => {
                let key = (self.deadline, deadlines.next_id);
                deadlines.next_id += 1;
                deadlines.wakers.insert(key, cx.waker().clone());
                timer.publish(&mut deadlines);
                self.key = Some(key);
            }
        }
        Poll::Pending
    }
}

impl PreciseSleep {
    fn unregister(&mut self) {
        if let Some(key) = self.key.take() {
            let mut deadlines = self.timer.lock();
            if deadlines.wakers.remove(&key).is_some() {
                self.timer.publish(&mut deadlines);
            }
        }
    }
}

impl Drop for PreciseSleep {
    fn drop(&mut self) {
        self.unregister();
    }
}

/// Watches `CLOCK_REALTIME` for steps: a realtime timerfd armed far in the future with
/// `TFD_TIMER_CANCEL_ON_SET` becomes readable, with `ECANCELED`, when the clock is set.
pub(super) struct WallWatch {
    /// Counts the steps seen (a generation that subscribers compare, so none is missed).
    pub(super) stepped: tokio::sync::watch::Sender<u64>,
}

impl WallWatch {
    /// The watcher in `slot`, started there on first use (inside a tokio runtime). `None` if a
    /// realtime timerfd cannot be had: steps are then noticed only when calendar deadlines fire.
    pub(super) fn get(slot: &OnceLock<Option<Arc<WallWatch>>>) -> Option<Arc<WallWatch>> {
        slot.get_or_init(|| match WallWatch::start() {
            Ok(watch) => Some(watch),
            Err(err) => {
                tracing::warn!("cannot watch for wall-clock changes ({err})");
                None
            }
        })
        .clone()
    }

    fn start() -> io::Result<Arc<WallWatch>> {
        let fd = TimerFd::new(
            ClockId::CLOCK_REALTIME,
            TimerFlags::TFD_NONBLOCK | TimerFlags::TFD_CLOEXEC,
        )?;
        arm_far_realtime(&fd)?;
        let fd = crate::os::watch_timerfd(fd)?;
        let watch = Arc::new(WallWatch {
            stepped: tokio::sync::watch::Sender::new(0),
        });
        let notify = watch.clone();
        tokio::spawn(async move {
            loop {
                let Ok(mut ready) = fd.readable().await else {
                    return;
                };
                let result = ready.try_io(|fd| {
                    let mut buf = [0u8; 8];
                    match nix::unistd::read(fd.as_raw_fd(), &mut buf) {
                        Ok(_) => Ok(false),
                        Err(Errno::ECANCELED) => Ok(true),
                        Err(Errno::EAGAIN) => Err(io::ErrorKind::WouldBlock.into()),
                        Err(err) => Err(err.into()),
                    }
                });
                if let Ok(Ok(stepped)) = result {
                    if stepped {
                        tracing::info!("the wall clock was set");
                        notify.stepped.send_modify(|generation| *generation += 1);
                    }
                    // Either way (stepped, or the far deadline passed): arm again.
                    if let Err(err) = arm_far_realtime(fd.get_ref().timer()) {
                        tracing::warn!("cannot re-arm the wall-clock watch: {err}");
                        return;
                    }
                }
            }
        });
        Ok(watch)
    }
}

/// Arms a realtime timerfd about a year ahead, cancelled on any clock step.
fn arm_far_realtime(fd: &TimerFd) -> io::Result<()> {
    let now = Duration::from(clock_gettime(TimeClockId::CLOCK_REALTIME)?);
    let far = now + Duration::from_secs(365 * 24 * 3600);
    fd.set(
        Expiration::OneShot(TimeSpec::from_duration(far)),
        TimerSetTimeFlags::TFD_TIMER_ABSTIME | TimerSetTimeFlags::TFD_TIMER_CANCEL_ON_SET,
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    // Correctness of the timer service (ordering, cancellation, re-arming), on real time but
    // with no bound on lateness: only "not early" and "in order" are asserted. On one thread,
    // so that the order the tasks run in is the order the timer woke them: on two workers a
    // loaded machine ran the task woken for 25 ms before the one woken for 20 ms (a CI failure).
    #[tokio::test]
    async fn sleeps_complete_in_deadline_order_and_never_early() {
        let timer = PreciseTimer::get().expect("timerfd available");
        let start = Instant::now();
        let order = Arc::new(Mutex::new(Vec::new()));
        let mut tasks = Vec::new();
        for (i, ms) in [30u64, 10, 20, 5, 25].into_iter().enumerate() {
            let timer = timer.clone();
            let order = order.clone();
            tasks.push(tokio::spawn(async move {
                let deadline = start + Duration::from_millis(ms);
                timer.sleep_until(deadline).await;
                assert!(Instant::now() >= deadline, "sleep {i} woke early");
                order.lock().expect("lock").push(ms);
            }));
        }
        for task in tasks {
            task.await.expect("task");
        }
        assert_eq!(*order.lock().expect("lock"), vec![5, 10, 20, 25, 30]);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_dropped_sleep_is_unregistered_and_the_timer_rearms() {
        let timer = PreciseTimer::get().expect("timerfd available");
        let early = Instant::now() + Duration::from_millis(5);
        let later = Instant::now() + Duration::from_millis(20);
        {
            let mut cancelled = Box::pin(timer.clone().sleep_until(early));
            // Register it, then drop it: the timer must re-arm for the later deadline.
            let waker = futures_noop_waker();
            let mut cx = Context::from_waker(&waker);
            assert!(cancelled.as_mut().poll(&mut cx).is_pending());
        }
        timer.clone().sleep_until(later).await;
        assert!(Instant::now() >= later);
        // Nothing stale is left behind.
        assert!(timer
            .lock()
            .wakers
            .keys()
            .all(|(at, _)| *at > later.into_std()));
    }

    fn futures_noop_waker() -> Waker {
        Waker::noop().clone()
    }

    #[tokio::test]
    async fn a_past_deadline_completes_at_once() {
        let timer = PreciseTimer::get().expect("timerfd available");
        timer
            .sleep_until(Instant::now() - Duration::from_millis(1))
            .await;
    }
}
