//! A job's plan: when its next fire is due. Pure maths over a [`Now`] it is given: a drift-free
//! grid for `every` (fixed rate), a delay from the end of the last run (fixed delay), or the
//! calendar for `cron`, each with the job's jitter. The job and `tickd next` both ask it.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::clock::{Instant, Now};
use crate::config::{Jitter, JobSpec};
use crate::schedule::{
    grid_offset, next_grid_index, offset_past_alignment, stable_delay, CronSchedule, EveryMode,
    Schedule,
};

/// The finest step of a cron expression: two of its fires are at least this far apart.
const CRON_RESOLUTION: Duration = Duration::from_secs(1);

/// How many missed calendar fires are counted exactly before the rest is estimated.
const COUNTED_FIRES: u64 = 64;

/// A fire that is due.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Due {
    /// The fire's monotonic instant (grid point, or calendar time converted), before jitter.
    pub instant: Instant,
    /// The fire's calendar time: set for `cron` schedules and for catch-up runs.
    pub wall: Option<DateTime<Utc>>,
    /// The jitter delay added before the run starts.
    pub delay: Duration,
    /// The cluster epoch under which this node may fire it (`None`: alone, or a node job).
    pub epoch: Option<i64>,
    /// The fire's wall time is a whole millisecond (a grid aligned to the epoch): read back
    /// through its instant, it is rounded to it.
    pub round_wall: bool,
}

impl Due {
    /// A fire at `instant` with no calendar time and no delay: a run asked for now, a retry.
    pub fn at(instant: Instant) -> Self {
        Due {
            instant,
            wall: None,
            delay: Duration::ZERO,
            epoch: None,
            round_wall: false,
        }
    }

    /// The slot the fire stands for, without its jitter: the same on every node of a cluster.
    pub fn slot(&self, now: Now) -> DateTime<Utc> {
        self.wall
            .unwrap_or_else(|| now.wall_for_instant(self.instant))
    }

    /// When the run should start.
    pub fn start_at(&self) -> Instant {
        self.instant + self.delay
    }

    /// The calendar time the fire stands for: its own for cron and catch-ups, else the wall time
    /// of its start instant.
    pub fn scheduled_wall(&self, now: Now) -> DateTime<Utc> {
        let delay = chrono::Duration::from_std(self.delay).unwrap_or_default();
        match self.wall {
            Some(wall) => wall + delay,
            // The two clocks of `now` are read one after the other, so an aligned grid point's
            // wall time is off by the microseconds between the readings: rounded to the
            // millisecond, an aligned fire is `:00.000`, not `:59.999`. Any other grid point
            // keeps its microseconds (a handler measures its lateness from it).
            None if self.round_wall => {
                nearest_millisecond(now.wall_for_instant(self.instant)) + delay
            }
            None => now.wall_for_instant(self.instant) + delay,
        }
    }
}

/// `time` rounded to the nearest millisecond.
fn nearest_millisecond(time: DateTime<Utc>) -> DateTime<Utc> {
    // On the nanosecond count: chrono's `duration_round` goes through the calendar date, and
    // this is on every aligned fire's path.
    match time.timestamp_nanos_opt() {
        Some(nanos) => {
            DateTime::from_timestamp_nanos((nanos + 500_000).div_euclid(1_000_000) * 1_000_000)
        }
        None => time,
    }
}

/// The delay a job's jitter adds to each fire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FireDelay {
    None,
    /// The same for every fire (`spread`): stable per job and machine.
    Stable(Duration),
    /// Drawn afresh for each fire, below this.
    Random(Duration),
}

impl FireDelay {
    fn of(jitter: Option<Jitter>, job: &str, machine_id: &str) -> Self {
        match jitter {
            None => FireDelay::None,
            Some(jitter) if jitter.spread() => {
                FireDelay::Stable(stable_delay(machine_id, job, jitter.max()))
            }
            Some(jitter) => FireDelay::Random(jitter.max()),
        }
    }

    fn draw(self) -> Duration {
        match self {
            FireDelay::None => Duration::ZERO,
            FireDelay::Stable(delay) => delay,
            FireDelay::Random(max) => {
                let max_ns = u64::try_from(max.as_nanos()).unwrap_or(u64::MAX);
                Duration::from_nanos(fastrand::u64(..max_ns))
            }
        }
    }
}

/// Fires a job missed while the daemon was down, from the state file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct MissedWhileDown {
    /// The last fire the state file recorded.
    pub recorded: DateTime<Utc>,
    /// The latest fire missed since: what the catch-up run stands for.
    pub latest: DateTime<Utc>,
    /// How many fires were missed.
    pub count: u64,
    /// Whether `count` is estimated from the rate of the first ones (a long downtime).
    pub estimated: bool,
}

/// When a job fires. Kept by the job across fires; see the module doc.
#[derive(Debug, Clone)]
pub(crate) struct Plan {
    /// The definition: shared with the job, not copied (a cron schedule is kilobytes).
    spec: Arc<JobSpec>,
    delay: FireDelay,
    /// Where an `every` grid starts (grid point 0).
    anchor: Instant,
    /// The grid index of the last fire handed out, for fixed-rate `every` schedules.
    next_index: u64,
    /// Fires are slots the nodes of a cluster agree on: an `every` grid is aligned to the
    /// epoch, and each grid fire carries its exact wall-clock slot.
    cluster_slots: bool,
    /// The wall-clock time of grid point 0, with `cluster_slots`.
    anchor_wall: Option<DateTime<Utc>>,
}

impl Plan {
    /// The plan of `spec`, its grid anchored at `now`; `machine_id` seeds `spread` delays.
    pub fn new(spec: Arc<JobSpec>, machine_id: &str, now: Now) -> Self {
        Plan {
            delay: FireDelay::of(spec.jitter(), spec.name(), machine_id),
            spec,
            anchor: now.instant,
            next_index: 0,
            cluster_slots: false,
            anchor_wall: None,
        }
    }

    /// This plan, for a job that fires once per cluster: its fires are slots every node
    /// computes alike (see [`Due::slot`]).
    pub fn with_cluster_slots(mut self) -> Self {
        self.cluster_slots = true;
        self
    }

    /// Moves the grid's monotonic anchor to where `now`, read on a corrected clock, puts its
    /// wall-clock time (with cluster slots): the slots stay, the instants they fire at move.
    pub fn retime(&mut self, now: Now) {
        if let Some(anchor_wall) = self.anchor_wall {
            self.anchor = match (now.wall - anchor_wall).to_std() {
                Ok(since) => now.instant.checked_sub(since).unwrap_or(now.instant),
                Err(_) => now.instant_for_wall(anchor_wall),
            };
        }
    }

    /// Takes a new definition; returns whether the schedule changed (then [`Plan::first`] must
    /// be asked again: the grid restarts). An unchanged schedule keeps its grid.
    pub fn update(&mut self, spec: Arc<JobSpec>, machine_id: &str) -> bool {
        self.delay = FireDelay::of(spec.jitter(), spec.name(), machine_id);
        let changed = spec.schedule() != self.spec.schedule();
        self.spec = spec;
        changed
    }

    /// Whether fires are calendar times (and so move when the wall clock is stepped).
    pub fn is_calendar(&self) -> bool {
        matches!(self.spec.schedule(), Schedule::Cron(_))
    }

    /// Whether the next fire is counted from the end of the last run.
    pub fn is_fixed_delay(&self) -> bool {
        matches!(self.spec.schedule(), Schedule::Every(e) if e.mode == EveryMode::FixedDelay)
    }

    /// (Re)starts the plan from `now`: a new grid anchor, and the first fire.
    pub fn first(&mut self, now: Now) -> Option<Due> {
        match self.spec.schedule() {
            Schedule::Every(every) => {
                self.anchor = now.instant;
                if every.align || self.cluster_slots {
                    let since_epoch = now.wall.signed_duration_since(DateTime::UNIX_EPOCH);
                    let offset = offset_past_alignment(
                        every.period,
                        since_epoch.to_std().unwrap_or_default(),
                    );
                    self.anchor = now.instant.checked_sub(offset).unwrap_or(now.instant);
                    self.anchor_wall = self
                        .cluster_slots
                        .then(|| now.wall - chrono::Duration::from_std(offset).unwrap_or_default());
                }
                self.next_index = next_grid_index(every.period, now.instant - self.anchor);
                Some(self.grid_point(every.period))
            }
            Schedule::Cron(_) => self.calendar_after(now.wall, now),
        }
    }

    /// The fire after `fired`: the next grid point or calendar time in the future. Points missed
    /// while the daemon was stalled or the run was going are skipped, never caught up. A
    /// fixed-delay job has none while `runs_going` (see [`Plan::after_run`]).
    pub fn after(&mut self, fired: Due, now: Now, runs_going: bool) -> Option<Due> {
        match self.spec.schedule() {
            Schedule::Every(every) if every.mode == EveryMode::FixedRate => {
                // Counted from when the fire would have started without its jitter: a delay
                // close to the period (`spread` over all of it) plus a little lateness would
                // otherwise pass the next point and skip it, uncounted.
                let undelayed = now.instant.checked_sub(fired.delay).unwrap_or(now.instant);
                let elapsed = undelayed.saturating_duration_since(self.anchor);
                self.next_index = next_grid_index(every.period, elapsed).max(self.next_index + 1);
                Some(self.grid_point(every.period))
            }
            // If the fire started no run, count from now.
            Schedule::Every(every) => (!runs_going).then(|| self.delayed(every.period, now)),
            Schedule::Cron(_) => {
                let fired_wall = fired.wall.unwrap_or(now.wall);
                self.calendar_after(fired_wall.max(now.wall), now)
            }
        }
    }

    /// The fire after the job's last run ended at `now`: only fixed-delay jobs have one.
    pub fn after_run(&self, now: Now) -> Option<Due> {
        match self.spec.schedule() {
            Schedule::Every(every) if every.mode == EveryMode::FixedDelay => {
                Some(self.delayed(every.period, now))
            }
            _ => None,
        }
    }

    /// The first calendar fire after `after`.
    pub fn calendar_after(&self, after: DateTime<Utc>, now: Now) -> Option<Due> {
        let Schedule::Cron(cron) = self.spec.schedule() else {
            return None;
        };
        let next = cron.next_after(after);
        if next.is_none() {
            tracing::warn!(job = %self.spec.name(), "the cron expression has no future fire time; the job will not run again");
        }
        next.map(|wall| {
            self.with_delay(Due {
                wall: Some(wall),
                ..Due::at(now.instant_for_wall(wall))
            })
        })
    }

    /// The time from `due` to the fire after it; `None` for fixed-delay schedules, which have no
    /// "next" until the run ends. For a calendar fire less than a second late the answer is
    /// "more than `lateness`" without asking the expression: its fires are whole seconds apart,
    /// and the search is the costliest step of a fire when a thousand jobs share a second.
    pub fn gap_after(&self, due: &Due, lateness: Duration) -> Option<Duration> {
        match self.spec.schedule() {
            Schedule::Every(every) if every.mode == EveryMode::FixedRate => Some(every.period),
            Schedule::Every(_) => None,
            Schedule::Cron(_) if lateness < CRON_RESOLUTION => None,
            Schedule::Cron(cron) => {
                let wall = due.wall?;
                (cron.next_after(wall)? - wall).to_std().ok()
            }
        }
    }

    /// How many fires `late` past `due` stands for (`due` itself included): at least one.
    pub fn fires_in(&self, due: &Due, late: Duration) -> u64 {
        match self.gap_after(due, late) {
            Some(gap) => missed_count(late, gap),
            None => 1,
        }
    }

    /// The fires missed between `recorded` (the last fire the state file knows) and `now`, for
    /// the one catch-up run of `on_missed = "once"`. `None` when none were missed or `recorded`
    /// is in the future.
    pub fn missed_since(
        &self,
        recorded: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Option<MissedWhileDown> {
        if recorded > now {
            return None;
        }
        // Whole nanoseconds since, without chrono's i64 limit (~292 years).
        let since = (now - recorded).to_std().ok()?;
        match self.spec.schedule() {
            Schedule::Every(every) => {
                let period = every.period.as_nanos().max(1);
                let periods = since.as_nanos() / period;
                if periods == 0 {
                    return None;
                }
                // The latest grid point after `recorded`: now, less the part of a period since.
                let past_it = Duration::from_nanos(
                    u64::try_from(since.as_nanos() % period).unwrap_or(u64::MAX),
                );
                let latest = now - chrono::Duration::from_std(past_it).ok()?;
                Some(MissedWhileDown {
                    recorded,
                    latest,
                    count: u64::try_from(periods).unwrap_or(u64::MAX),
                    estimated: false,
                })
            }
            Schedule::Cron(cron) => {
                let first = cron.next_after(recorded)?;
                if first > now {
                    return None;
                }
                let latest = cron.last_at_or_before(now).unwrap_or(first);
                let (count, estimated) = count_calendar_fires(cron, first, now);
                Some(MissedWhileDown {
                    recorded,
                    latest,
                    count,
                    estimated,
                })
            }
        }
    }

    fn grid_point(&self, period: Duration) -> Due {
        let offset = grid_offset(period, self.next_index);
        let wall = self
            .anchor_wall
            .map(|anchor| anchor + chrono::Duration::from_std(offset).unwrap_or_default());
        let aligned = matches!(self.spec.schedule(), Schedule::Every(every) if every.align);
        self.with_delay(Due {
            wall,
            // (A cluster slot has its wall time: it is never read back through its instant.)
            round_wall: aligned,
            ..Due::at(self.anchor + offset)
        })
    }

    fn delayed(&self, period: Duration, now: Now) -> Due {
        self.with_delay(Due::at(now.instant + period))
    }

    fn with_delay(&self, due: Due) -> Due {
        Due {
            delay: self.delay.draw(),
            ..due
        }
    }
}

/// The next `count` fire times of `spec` after `now`, as a daemon started then would fire them
/// (each run taking no time): what `tickd next` prints. A random jitter's delay cannot be
/// told in advance; it is returned instead of being added.
pub fn upcoming(spec: &Arc<JobSpec>, machine_id: &str, now: Now, count: usize) -> Upcoming {
    let mut plan = Plan::new(spec.clone(), machine_id, now);
    let random_delay = match plan.delay {
        FireDelay::Random(max) => {
            plan.delay = FireDelay::None;
            Some(max)
        }
        _ => None,
    };
    let mut times = Vec::with_capacity(count);
    let mut next = plan.first(now);
    while let Some(due) = next.filter(|_| times.len() < count) {
        let at = now.advanced_to(due.start_at());
        times.push(due.scheduled_wall(at));
        next = plan.after(due, now.advanced_to(due.instant), false);
    }
    Upcoming {
        times,
        random_delay,
    }
}

/// A job's next fire times; see [`upcoming`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upcoming {
    /// The fire times, a `spread` delay included.
    pub times: Vec<DateTime<Utc>>,
    /// The job's random jitter: each run starts up to this much after its time.
    pub random_delay: Option<Duration>,
}

/// `/etc/machine-id` (stable per installation, as systemd uses it), else the host name: what
/// seeds `spread` delays.
pub fn machine_id() -> String {
    ["/etc/machine-id", "/proc/sys/kernel/hostname"]
        .iter()
        .find_map(|path| {
            std::fs::read_to_string(path)
                .ok()
                .map(|s| s.trim().to_owned())
                .filter(|s| !s.is_empty())
        })
        .unwrap_or_default()
}

/// How many fires `gap` apart fell in `late` (the first at its start): at least one.
fn missed_count(late: Duration, gap: Duration) -> u64 {
    let count = late.as_nanos() / gap.as_nanos().max(1) + 1;
    u64::try_from(count).unwrap_or(u64::MAX)
}

/// How many calendar fires fall in `[first, until]`, `first` being one: counted one by one up to
/// [`COUNTED_FIRES`], then estimated from their rate, so a state file from long ago costs a few
/// searches, not millions.
fn count_calendar_fires(
    cron: &CronSchedule,
    first: DateTime<Utc>,
    until: DateTime<Utc>,
) -> (u64, bool) {
    let mut count = 1u64;
    let mut at = first;
    while count < COUNTED_FIRES {
        match cron.next_after(at) {
            Some(next) if next <= until => {
                count += 1;
                at = next;
            }
            _ => return (count, false),
        }
    }
    let counted_span = (at - first).num_seconds().max(1) as f64;
    let rest = (until - at).num_seconds().max(0) as f64;
    let estimate = count as f64 + rest * (count - 1) as f64 / counted_span;
    (estimate as u64, true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::handler::Handlers;

    fn spec(body: &str) -> Arc<JobSpec> {
        let text = format!("[jobs.j]\n{body}\nhandler = \"log\"\n");
        let config = crate::config::parse(
            std::path::Path::new("jobs.toml"),
            &text,
            &Handlers::with_builtins(),
        )
        .expect("valid");
        config.jobs()["j"].clone()
    }

    fn at(text: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(text)
            .expect("time")
            .with_timezone(&Utc)
    }

    fn now(wall: &str) -> Now {
        Now {
            instant: Instant::now(),
            wall: at(wall),
        }
    }

    #[test]
    fn a_fixed_rate_grid_skips_the_points_a_stall_passed_over() {
        let start = now("2026-01-01T00:00:00Z");
        let mut plan = Plan::new(spec("every = \"10s\""), "m", start);
        let first = plan.first(start).expect("a first fire");
        assert_eq!(first.instant - start.instant, Duration::from_secs(10));
        // Fired 35 s late: the points at 20, 30 and 40 s are gone; the next is at 50 s.
        let late = start.advanced_to(start.instant + Duration::from_secs(45));
        let next = plan.after(first, late, false).expect("a next fire");
        assert_eq!(next.instant - start.instant, Duration::from_secs(50));
        assert_eq!(
            plan.gap_after(&next, Duration::ZERO),
            Some(Duration::from_secs(10))
        );
    }

    #[test]
    fn a_fire_its_jitter_delayed_past_the_next_point_does_not_skip_that_point() {
        // Spread over the whole period: some job's delay is close to the period itself.
        let start = now("2026-01-01T00:00:00Z");
        let mut plan = Plan::new(
            spec("every = \"1s\"\njitter = \"1s\"\nspread = true"),
            "m",
            start,
        );
        let first = plan.first(start).expect("a first fire");
        let mut due = Due {
            delay: Duration::from_micros(999_900),
            ..first
        };
        // It started 0.2 ms late: 0.1 ms after the next grid point, which is still its own fire.
        let ran = start.advanced_to(due.instant + due.delay + Duration::from_micros(200));
        due = plan.after(due, ran, false).expect("a next fire");
        assert_eq!(due.instant - first.instant, Duration::from_secs(1));
        // A real stall still skips: started 2.5 s after its delayed start, the next point is
        // the one 3 s after it.
        let stalled = start.advanced_to(due.instant + due.delay + Duration::from_millis(2500));
        let next = plan.after(due, stalled, false).expect("a next fire");
        assert_eq!(next.instant - due.instant, Duration::from_secs(3));
    }

    #[test]
    fn an_aligned_grid_fires_on_multiples_of_its_period_since_the_epoch() {
        let start = now("2026-01-01T12:00:07.300Z");
        let mut plan = Plan::new(spec("every = \"10s\"\nalign = true"), "m", start);
        let first = plan.first(start).expect("a first fire");
        assert_eq!(first.scheduled_wall(start), at("2026-01-01T12:00:10Z"));
    }

    /// An aligned fire was logged as `...:59.999Z`: the grid point's wall time is read through
    /// the instant it fires at, and the two clocks, read one after the other, disagree by a few
    /// microseconds; the label truncated to the millisecond below.
    #[test]
    fn an_aligned_fire_is_labelled_with_its_millisecond_not_the_one_before() {
        let start = now("2026-01-01T12:00:07.300Z");
        let mut plan = Plan::new(spec("every = \"10s\"\nalign = true"), "m", start);
        let first = plan.first(start).expect("a first fire");
        // At the fire, the wall clock was read 3 µs before the instant was.
        let fired = Now {
            instant: first.instant,
            wall: at("2026-01-01T12:00:09.999997Z"),
        };
        assert_eq!(first.scheduled_wall(fired), at("2026-01-01T12:00:10Z"));
        let after = Now {
            instant: first.instant,
            wall: at("2026-01-01T12:00:10.000004Z"),
        };
        assert_eq!(first.scheduled_wall(after), at("2026-01-01T12:00:10Z"));
    }

    /// Rounding every grid point to its millisecond put a handler's `scheduled` up to 0.5 ms
    /// off its real due time: an unaligned grid point keeps its microseconds.
    #[test]
    fn an_unaligned_grid_point_keeps_its_microseconds() {
        let start = now("2026-01-01T12:00:07.300400Z");
        let mut plan = Plan::new(spec("every = \"10s\""), "m", start);
        let first = plan.first(start).expect("a first fire");
        assert_eq!(
            first.scheduled_wall(start),
            at("2026-01-01T12:00:17.300400Z")
        );
    }

    #[test]
    fn a_corrected_clock_moves_a_cluster_grids_instants_not_its_slots() {
        let start = now("2026-01-01T12:00:07.300Z");
        let mut plan = Plan::new(spec("every = \"1s\""), "m", start).with_cluster_slots();
        let first = plan.first(start).expect("a first fire");
        assert_eq!(first.wall, Some(at("2026-01-01T12:00:08Z")));
        assert_eq!(first.instant - start.instant, Duration::from_millis(700));
        // The database's clock turns out to be 250 ms ahead of the estimate: the same instant
        // reads 07.550. Slot 08 now comes 250 ms sooner, and the grid after it with it.
        let corrected = Now {
            wall: at("2026-01-01T12:00:07.550Z"),
            ..start
        };
        plan.retime(corrected);
        let later = corrected.advanced_to(start.instant + Duration::from_millis(450));
        let next = plan.after(first, later, false).expect("a next fire");
        assert_eq!(next.wall, Some(at("2026-01-01T12:00:09Z")));
        assert_eq!(next.instant - start.instant, Duration::from_millis(1450));
    }

    #[test]
    fn a_fixed_delay_job_has_no_next_fire_while_its_run_goes() {
        let start = now("2026-01-01T00:00:00Z");
        let mut plan = Plan::new(spec("every = \"5s\"\nmode = \"fixed-delay\""), "m", start);
        let first = plan.first(start).expect("a first fire");
        assert_eq!(plan.after(first, start, true), None);
        let ended = start.advanced_to(start.instant + Duration::from_secs(8));
        let next = plan.after_run(ended).expect("counted from the run's end");
        assert_eq!(next.instant - start.instant, Duration::from_secs(13));
    }

    #[test]
    fn upcoming_fires_follow_the_calendar_and_include_a_stable_delay_only() {
        let start = now("2026-01-01T10:07:00Z");
        let cron = upcoming(&spec("cron = \"0 */15 * * * *\""), "m", start, 3);
        assert_eq!(
            cron.times,
            [
                at("2026-01-01T10:15:00Z"),
                at("2026-01-01T10:30:00Z"),
                at("2026-01-01T10:45:00Z")
            ]
        );
        assert_eq!(cron.random_delay, None);

        let spread = spec("every = \"1m\"\njitter = \"30s\"\nspread = true");
        let delay = stable_delay("m", "j", Duration::from_secs(30));
        let delay = chrono::Duration::from_std(delay).expect("small");
        let times = upcoming(&spread, "m", start, 2).times;
        assert_eq!(
            times,
            [
                at("2026-01-01T10:08:00Z") + delay,
                at("2026-01-01T10:09:00Z") + delay
            ]
        );

        let random = upcoming(&spec("every = \"1m\"\njitter = \"30s\""), "m", start, 2);
        assert_eq!(
            random.times,
            [at("2026-01-01T10:08:00Z"), at("2026-01-01T10:09:00Z")]
        );
        assert_eq!(random.random_delay, Some(Duration::from_secs(30)));
    }

    #[test]
    fn fires_missed_while_down_are_counted_from_the_recorded_one() {
        let every = Plan::new(spec("every = \"1m\""), "m", now("2026-01-01T00:00:00Z"));
        let missed = every
            .missed_since(at("2026-01-01T09:00:00Z"), at("2026-01-01T10:00:30Z"))
            .expect("missed");
        assert_eq!((missed.count, missed.estimated), (60, false));
        assert_eq!(missed.latest, at("2026-01-01T10:00:00Z"));
        assert_eq!(
            every.missed_since(at("2026-01-01T10:00:00Z"), at("2026-01-01T10:00:30Z")),
            None
        );

        let cron = Plan::new(
            spec("cron = \"0 0 * * * *\""),
            "m",
            now("2026-01-01T00:00:00Z"),
        );
        let missed = cron
            .missed_since(at("2026-01-01T07:00:00Z"), at("2026-01-01T10:30:00Z"))
            .expect("missed");
        assert_eq!(
            (missed.count, missed.latest),
            (3, at("2026-01-01T10:00:00Z"))
        );
    }
}
