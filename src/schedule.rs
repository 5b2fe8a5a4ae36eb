//! Schedule maths: when a job fires next. Pure functions, no clock, no runtime.
//!
//! - `every` schedules are a drift-free grid: the k-th fire is due at `anchor + k * period`, never
//!   "previous end + period". A missed grid point is skipped, never caught up in a burst.
//! - `cron` schedules are evaluated by the `croner` crate in an IANA time zone (`chrono-tz`), with
//!   cronie's daylight-saving rules (croner implements them; the tests below pin them down).

use std::fmt;
use std::time::Duration;

use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use croner::parser::{CronParser, Seconds};
use croner::Cron;

/// When a job fires.
#[derive(Debug, Clone, PartialEq)]
pub enum Schedule {
    /// A fixed period.
    Every(EverySchedule),
    /// A calendar schedule (boxed: the parsed expression is large and `every` jobs are common).
    Cron(Box<CronSchedule>),
}

impl Schedule {
    /// The first slot strictly after `after`: a calendar time, or for `every` a multiple of the
    /// period since the Unix epoch (the grid a cluster's nodes agree on).
    pub fn slot_after(&self, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        match self {
            Schedule::Every(every) => {
                let last = aligned_slot_at_or_before(every.period, after)?;
                Some(last + chrono::Duration::from_std(every.period).ok()?)
            }
            Schedule::Cron(cron) => cron.next_after(after),
        }
    }

    /// The last slot at or before `at` (see [`Schedule::slot_after`]).
    pub fn slot_at_or_before(&self, at: DateTime<Utc>) -> Option<DateTime<Utc>> {
        match self {
            Schedule::Every(every) => aligned_slot_at_or_before(every.period, at),
            Schedule::Cron(cron) => cron.last_at_or_before(at),
        }
    }
}

/// The last multiple of `period` since the Unix epoch at or before `at`.
fn aligned_slot_at_or_before(period: Duration, at: DateTime<Utc>) -> Option<DateTime<Utc>> {
    let since = at
        .signed_duration_since(DateTime::UNIX_EPOCH)
        .to_std()
        .ok()?;
    let past = offset_past_alignment(period, since);
    Some(at - chrono::Duration::from_std(past).ok()?)
}

/// An `every` schedule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EverySchedule {
    /// The period.
    pub period: Duration,
    /// Fixed rate (a grid) or fixed delay (after each run ends).
    pub mode: EveryMode,
    /// Put the grid on multiples of the period since the Unix epoch (`every = "10s"` fires at
    /// :00, :10, ...) instead of starting it when the job is scheduled.
    pub align: bool,
}

impl EverySchedule {
    /// A fixed-rate, unaligned schedule: the common case.
    pub fn fixed_rate(period: Duration) -> Self {
        EverySchedule {
            period,
            mode: EveryMode::FixedRate,
            align: false,
        }
    }
}

/// How an `every` schedule places its fires.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum EveryMode {
    /// The k-th fire is due at `anchor + k * period`, however long runs take (drift-free).
    FixedRate,
    /// The next fire is due `period` after the previous run ended.
    FixedDelay,
}

impl fmt::Display for Schedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Schedule::Every(every) => {
                write!(f, "every {}", humantime::format_duration(every.period))?;
                if every.mode == EveryMode::FixedDelay {
                    f.write_str(" after each run")?;
                }
                if every.align {
                    f.write_str(", aligned")?;
                }
                Ok(())
            }
            Schedule::Cron(cron) => write!(f, "cron \"{}\" ({})", cron.expression, cron.timezone),
        }
    }
}

/// A parsed cron expression together with the zone it is evaluated in.
#[derive(Debug, Clone)]
pub struct CronSchedule {
    expression: String,
    timezone: Tz,
    cron: Cron,
}

impl PartialEq for CronSchedule {
    /// Two schedules are equal when their source text and zone are: the parsed form follows.
    fn eq(&self, other: &Self) -> bool {
        self.expression == other.expression && self.timezone == other.timezone
    }
}

/// Why a cron expression was rejected.
#[derive(Debug, thiserror::Error)]
#[error("invalid cron expression \"{expression}\": {reason}")]
pub struct CronParseError {
    expression: String,
    reason: String,
}

impl CronSchedule {
    /// Parses a 5-field crontab expression, a 6-field one with seconds first, or a nickname
    /// (`@yearly`, `@annually`, `@monthly`, `@weekly`, `@daily`, `@hourly`).
    ///
    /// Day-of-month and day-of-week combine as in Vixie cron, cronie and Debian's cron (their
    /// `DOM_STAR`/`DOW_STAR` flags): a day matches when it matches **both** fields if either of
    /// them starts with `*` (`*`, `*/2`), and when it matches **either** field otherwise. So
    /// `0 6 */2 * 1-5` fires on odd days that are weekdays, `0 9 1 * */1` on the 1st only, and
    /// `0 0 1,15 * 5` on the 1st, the 15th and every Friday.
    ///
    /// Beyond crontab's dialect, the Quartz extensions croner implements are accepted in the day
    /// fields: `L` (last day of the month; `5L` the month's last Friday), `W` (`15W`: the weekday
    /// nearest the 15th), `#` (`5#2`: the second Friday) and `?` (the same as `*`).
    pub fn parse(expression: &str, timezone: Tz) -> Result<Self, CronParseError> {
        let trimmed = expression.trim();
        let error = |reason: String| CronParseError {
            expression: expression.to_owned(),
            reason,
        };
        // croner also accepts a 7th (year) field and Quartz extensions; tickd documents the
        // crontab dialect, so reject a year field rather than silently accepting it.
        if trimmed.split_whitespace().count() > 6 {
            return Err(error("expected 5 or 6 fields".to_owned()));
        }
        // croner's own AND switch in the day-of-week field (`+5`) is not cron: refuse it.
        if trimmed.contains('+') {
            return Err(error(
                "'+' is not cron syntax (day-of-month and day-of-week combine as in cron)"
                    .to_owned(),
            ));
        }
        let cron = CronParser::builder()
            .seconds(Seconds::Optional)
            .dom_and_dow(days_are_anded(trimmed))
            .build()
            .parse(trimmed)
            .map_err(|e| error(out_of_range(trimmed).unwrap_or_else(|| e.to_string())))?;
        // An expression that can never match (e.g. February 30th) is a config error, not a job
        // that silently never runs. Without a year field an expression that matches at all
        // matches from any time on, so the probe starts at a fixed one: parsing reads no clock.
        let probe = DateTime::UNIX_EPOCH.with_timezone(&timezone);
        cron.find_next_occurrence(&probe, false)
            .map_err(|e| error(format!("it never matches ({e})")))?;
        Ok(CronSchedule {
            expression: trimmed.to_owned(),
            timezone,
            cron,
        })
    }

    /// The expression as written.
    pub fn expression(&self) -> &str {
        &self.expression
    }

    /// The zone the expression is evaluated in.
    pub fn timezone(&self) -> Tz {
        self.timezone
    }

    /// The last fire time at or before `at`, or `None` if there is none.
    pub fn last_at_or_before(&self, at: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let local = at.with_timezone(&self.timezone);
        self.cron
            .find_previous_occurrence(&local, true)
            .ok()
            .map(|last| last.with_timezone(&Utc))
    }

    /// The first fire time strictly after `after`, or `None` if there is none (searches give up
    /// after several years).
    ///
    /// The answer is remembered: jobs with the same expression due at the same second (every
    /// `* * * * *` job at :00) ask the same question, and the search was 40 % of such a fire's
    /// start (croner walks the fields, 1-2 µs). Fires fall on whole seconds (and zones are
    /// whole seconds off UTC), so the first strictly after `after` is the first strictly after
    /// its second: that second is what is asked and remembered.
    pub fn next_after(&self, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let second = DateTime::from_timestamp(after.timestamp(), 0).unwrap_or(after);
        RECENT_SEARCHES.with_borrow_mut(|recent| {
            if let Some(next) = recent.find(self, second) {
                return next;
            }
            let next = self.search_after(second);
            recent.keep(self, second, next);
            next
        })
    }

    /// [`CronSchedule::next_after`], searched.
    fn search_after(&self, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let local = after.with_timezone(&self.timezone);
        self.cron
            .find_next_occurrence(&local, false)
            .ok()
            .map(|next| next.with_timezone(&Utc))
    }
}

thread_local! {
    /// The last answers of [`CronSchedule::next_after`] on this thread.
    static RECENT_SEARCHES: std::cell::RefCell<RecentSearches> =
        const { std::cell::RefCell::new(RecentSearches { kept: Vec::new(), oldest: 0 }) };
}

/// A few searches' answers, the oldest replaced first: enough for the distinct expressions due
/// at one second in a large crontab, small enough to look through on every fire.
struct RecentSearches {
    kept: Vec<KeptSearch>,
    /// The entry to replace next, once `kept` is full.
    oldest: usize,
}

/// One search: for the expression and zone, the first fire strictly after the second `after`.
struct KeptSearch {
    after: DateTime<Utc>,
    timezone: Tz,
    expression: String,
    next: Option<DateTime<Utc>>,
}

/// How many searches a thread remembers.
const KEPT_SEARCHES: usize = 8;

impl RecentSearches {
    fn find(&self, schedule: &CronSchedule, after: DateTime<Utc>) -> Option<Option<DateTime<Utc>>> {
        self.kept
            .iter()
            .find(|kept| {
                kept.after == after
                    && kept.timezone == schedule.timezone
                    && kept.expression == schedule.expression
            })
            .map(|kept| kept.next)
    }

    fn keep(&mut self, schedule: &CronSchedule, after: DateTime<Utc>, next: Option<DateTime<Utc>>) {
        let search = KeptSearch {
            after,
            timezone: schedule.timezone,
            expression: schedule.expression.clone(),
            next,
        };
        if self.kept.len() < KEPT_SEARCHES {
            self.kept.push(search);
        } else {
            self.kept[self.oldest] = search;
            self.oldest = (self.oldest + 1) % KEPT_SEARCHES;
        }
    }
}

/// Whether an expression's day-of-month and day-of-week fields must both match: Vixie cron sets
/// `DOM_STAR`/`DOW_STAR` when a field's text starts with `*`, and ORs the two fields only when
/// neither flag is set. `?` is Quartz's `*`. Nicknames have no day fields to combine.
/// Which field of `expression` holds a number out of its range, in words ("minute: 61 is out
/// of range 0-59"): croner says only "Number out of bounds".
fn out_of_range(expression: &str) -> Option<String> {
    const FIELDS: [(&str, u32, u32); 6] = [
        ("second", 0, 59),
        ("minute", 0, 59),
        ("hour", 0, 23),
        ("day of month", 1, 31),
        ("month", 1, 12),
        ("day of week", 0, 7),
    ];
    let fields: Vec<&str> = expression.split_whitespace().collect();
    let named = match fields.len() {
        5 => &FIELDS[1..],
        6 => &FIELDS[..],
        _ => return None,
    };
    for (field, (name, low, high)) in fields.iter().zip(named) {
        // The values of a list's items and of a range's ends; a step (`/15`) is a count, and
        // `L`, `W` and `#` suffixes qualify a day.
        let values = field
            .split(',')
            .filter_map(|item| item.split('/').next())
            .flat_map(|range| range.split('-'))
            .map(|value| value.split('#').next().unwrap_or(value))
            .map(|value| value.trim_end_matches(['L', 'W']));
        for value in values {
            if let Ok(number) = value.parse::<u32>() {
                if number < *low || number > *high {
                    return Some(format!("{name}: {number} is out of range {low}-{high}"));
                }
            }
        }
    }
    None
}

fn days_are_anded(expression: &str) -> bool {
    let fields: Vec<&str> = expression.split_whitespace().collect();
    let (dom, dow) = match fields.as_slice() {
        [_, _, dom, _, dow] | [_, _, _, dom, _, dow] => (*dom, *dow),
        _ => return false,
    };
    let starred = |field: &str| field.starts_with('*') || field.starts_with('?');
    starred(dom) || starred(dow)
}

/// The index k >= 1 of the first grid point `anchor + k * period` that lies strictly after
/// `anchor + elapsed`. Grid point 0 is the anchor itself, which is not a fire.
pub fn next_grid_index(period: Duration, elapsed: Duration) -> u64 {
    let period_ns = period.as_nanos().max(1);
    let index = elapsed.as_nanos() / period_ns + 1;
    u64::try_from(index).unwrap_or(u64::MAX)
}

/// The offset from the anchor of grid point `index`, saturating.
pub fn grid_offset(period: Duration, index: u64) -> Duration {
    let nanos = period.as_nanos().saturating_mul(u128::from(index));
    Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
}

/// How far past the last multiple of `period` since the Unix epoch the time `since_epoch` is:
/// subtracting it from "now" gives the anchor of an aligned grid.
pub fn offset_past_alignment(period: Duration, since_epoch: Duration) -> Duration {
    let period_ns = period.as_nanos().max(1);
    let offset = since_epoch.as_nanos() % period_ns;
    Duration::from_nanos(u64::try_from(offset).unwrap_or(0))
}

/// A delay in `[0, max)` that is stable for one job on one machine (systemd's
/// `FixedRandomDelay`): the same job fires at the same offset on every run, different machines
/// spread out.
///
/// Hand-written FNV-1a: std's `DefaultHasher` may change between Rust releases, which would
/// move every job's offset on upgrade; this must stay put.
pub fn stable_delay(machine: &str, job: &str, max: Duration) -> Duration {
    let hash = stable_hash(machine.bytes().chain([0u8]).chain(job.bytes()));
    let max_ns = u64::try_from(max.as_nanos()).unwrap_or(u64::MAX).max(1);
    Duration::from_nanos(hash % max_ns)
}

/// FNV-1a over `bytes`: the same on every machine and every Rust release (what `spread` delays
/// and a cluster's comparison of its nodes' jobs need; std's hashers promise neither).
pub fn stable_hash(bytes: impl IntoIterator<Item = u8>) -> u64 {
    const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const FNV_PRIME: u64 = 0x0100_0000_01b3;
    bytes.into_iter().fold(FNV_OFFSET, |hash, byte| {
        (hash ^ u64::from(byte)).wrapping_mul(FNV_PRIME)
    })
}

#[cfg(test)]
mod tests {
    /// `next_after` answers from the second of `after`, and from what it remembers: it must
    /// give what a search from `after` itself gives, for any fraction of a second, in zones
    /// with daylight-saving changes, with more expressions in turn than it remembers.
    #[test]
    fn the_next_fire_is_the_same_remembered_or_searched() {
        let expressions = [
            "* * * * * *",
            "*/7 * * * * *",
            "30 * * * * *",
            "* * * * *",
            "*/5 * * * *",
            "0 2 * * *",
            "30 2 * * 0",
            "0 0 1 * *",
            "59 23 31 12 *",
            "0 */3 * * * *",
        ];
        let zones = [
            chrono_tz::UTC,
            chrono_tz::Europe::Berlin,
            chrono_tz::Asia::Kolkata,
        ];
        let schedules: Vec<super::CronSchedule> = zones
            .iter()
            .flat_map(|zone| {
                expressions
                    .iter()
                    .map(|expression| super::CronSchedule::parse(expression, *zone).expect("valid"))
            })
            .collect();
        // Around Berlin's spring-forward change (2026-03-29 01:00 UTC) and a month's end.
        let starts = ["2026-03-29T00:58:58Z", "2026-12-31T23:58:59Z"];
        let fractions_ns = [0, 1, 499_999_999, 999_999_999];
        for start in starts {
            let start: super::DateTime<super::Utc> = start.parse().expect("time");
            for step in 0..130 {
                for fraction in fractions_ns {
                    let after = start
                        + chrono::Duration::seconds(step)
                        + chrono::Duration::nanoseconds(fraction);
                    for schedule in &schedules {
                        assert_eq!(
                            schedule.next_after(after),
                            schedule.search_after(after),
                            "{} in {} after {after}",
                            schedule.expression,
                            schedule.timezone
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn a_number_out_of_range_names_its_field_and_the_range() {
        let message = |expression: &str| {
            super::CronSchedule::parse(expression, chrono_tz::UTC)
                .err()
                .map(|err| err.to_string())
                .unwrap_or_default()
        };
        assert!(
            message("61 * * * *").contains("minute: 61 is out of range 0-59"),
            "{}",
            message("61 * * * *")
        );
        assert!(message("0 0 24 * * *").contains("hour: 24 is out of range 0-23"));
        assert!(message("0 0 1-32 * *").contains("day of month: 32 is out of range 1-31"));
        assert!(message("0 0 1 13 *").contains("month: 13 is out of range 1-12"));
        assert!(message("0 0 * * 5#9,8").contains("day of week: 8 is out of range 0-7"));
    }

    use super::*;
    use chrono::TimeZone;

    fn utc(y: i32, mo: u32, d: u32, h: u32, mi: u32, s: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(y, mo, d, h, mi, s)
            .single()
            .expect("valid time")
    }

    fn fires(expr: &str, tz: Tz, from: DateTime<Utc>, n: usize) -> Vec<DateTime<Utc>> {
        let schedule = CronSchedule::parse(expr, tz).expect("valid expression");
        let mut out = Vec::new();
        let mut t = from;
        for _ in 0..n {
            t = schedule.next_after(t).expect("has a next fire");
            out.push(t);
        }
        out
    }

    #[test]
    fn grid_index_skips_missed_points_without_catching_up() {
        let p = Duration::from_millis(200);
        assert_eq!(next_grid_index(p, Duration::ZERO), 1);
        assert_eq!(next_grid_index(p, Duration::from_millis(199)), 1);
        // Exactly on a grid point: that point is due now (fired), the next is strictly after.
        assert_eq!(next_grid_index(p, Duration::from_millis(200)), 2);
        // A stall of 10 periods lands on the next future point, not on the 10 missed ones.
        assert_eq!(next_grid_index(p, Duration::from_millis(2050)), 11);
        assert_eq!(grid_offset(p, 11), Duration::from_millis(2200));
    }

    #[test]
    fn alignment_offset_puts_the_grid_on_epoch_multiples() {
        let p = Duration::from_secs(10);
        assert_eq!(
            offset_past_alignment(p, Duration::from_millis(1_700_000_003_250)),
            Duration::from_millis(3_250)
        );
        assert_eq!(
            offset_past_alignment(p, Duration::from_secs(1_700_000_000)),
            Duration::ZERO
        );
    }

    #[test]
    fn stable_delay_is_stable_bounded_and_spread() {
        let max = Duration::from_secs(2);
        let a = stable_delay("machine-1", "backup", max);
        assert_eq!(a, stable_delay("machine-1", "backup", max));
        assert!(a < max);
        // Different machines and jobs land at different offsets.
        let offsets: std::collections::BTreeSet<Duration> = (0..50)
            .map(|i| stable_delay(&format!("machine-{i}"), "backup", max))
            .collect();
        assert!(offsets.len() > 45, "{offsets:?}");
        assert_ne!(a, stable_delay("machine-1", "reports", max));
    }

    #[test]
    fn last_at_or_before_finds_the_previous_fire() {
        let c = CronSchedule::parse("0 */15 * * * *", Tz::UTC).expect("valid");
        assert_eq!(
            c.last_at_or_before(utc(2026, 1, 1, 10, 7, 0)),
            Some(utc(2026, 1, 1, 10, 0, 0))
        );
        assert_eq!(
            c.last_at_or_before(utc(2026, 1, 1, 10, 15, 0)),
            Some(utc(2026, 1, 1, 10, 15, 0))
        );
    }

    #[test]
    fn cron_with_seconds_fires_every_ten_seconds() {
        let got = fires("*/10 * * * * *", Tz::UTC, utc(2026, 1, 1, 0, 0, 3), 3);
        assert_eq!(
            got,
            vec![
                utc(2026, 1, 1, 0, 0, 10),
                utc(2026, 1, 1, 0, 0, 20),
                utc(2026, 1, 1, 0, 0, 30)
            ]
        );
    }

    #[test]
    fn five_fields_and_nicknames_are_minute_granular() {
        assert_eq!(
            fires("*/15 * * * *", Tz::UTC, utc(2026, 1, 1, 0, 7, 0), 1),
            vec![utc(2026, 1, 1, 0, 15, 0)]
        );
        assert_eq!(
            fires("@hourly", Tz::UTC, utc(2026, 1, 1, 0, 7, 0), 1),
            vec![utc(2026, 1, 1, 1, 0, 0)]
        );
        assert_eq!(
            fires("@daily", Tz::UTC, utc(2026, 1, 1, 0, 7, 0), 1),
            vec![utc(2026, 1, 2, 0, 0, 0)]
        );
    }

    #[test]
    fn day_of_month_and_day_of_week_combine_with_or_like_vixie_cron() {
        // The 13th, or any Friday: 2026-02-06 is a Friday, before the 13th.
        let got = fires("0 0 13 * 5", Tz::UTC, utc(2026, 2, 1, 0, 0, 0), 3);
        assert_eq!(
            got,
            vec![
                utc(2026, 2, 6, 0, 0, 0),
                utc(2026, 2, 13, 0, 0, 0),
                utc(2026, 2, 20, 0, 0, 0)
            ]
        );
    }

    #[test]
    fn a_time_zone_moves_the_fire() {
        // 09:00 in Berlin is 08:00 UTC in winter.
        let got = fires(
            "0 0 9 * * *",
            chrono_tz::Europe::Berlin,
            utc(2026, 1, 5, 0, 0, 0),
            1,
        );
        assert_eq!(got, vec![utc(2026, 1, 5, 8, 0, 0)]);
    }

    // Berlin springs forward on 2026-03-29 at 02:00 local (01:00 UTC) to 03:00.
    #[test]
    fn dst_skipped_hour_fixed_time_fires_once_right_after_the_jump() {
        let got = fires(
            "30 2 * * *",
            chrono_tz::Europe::Berlin,
            utc(2026, 3, 28, 12, 0, 0),
            2,
        );
        // 02:30 does not exist on the 29th: it fires at 03:00 CEST (01:00 UTC), then normally.
        assert_eq!(
            got,
            vec![utc(2026, 3, 29, 1, 0, 0), utc(2026, 3, 30, 0, 30, 0)]
        );
    }

    #[test]
    fn dst_skipped_hour_wildcard_hour_has_no_fires_in_the_gap() {
        let got = fires(
            "30 * * * *",
            chrono_tz::Europe::Berlin,
            utc(2026, 3, 28, 23, 45, 0),
            3,
        );
        // 00:30 CET (23:30 UTC on the 28th is before `from`), 01:30 CET, then 03:30 CEST.
        assert_eq!(
            got,
            vec![
                utc(2026, 3, 29, 0, 30, 0),
                utc(2026, 3, 29, 1, 30, 0),
                utc(2026, 3, 29, 2, 30, 0)
            ]
        );
    }

    // Berlin falls back on 2026-10-25 at 03:00 CEST (01:00 UTC) to 02:00 CET: 02:xx happens twice.
    #[test]
    fn dst_repeated_hour_fixed_time_fires_once() {
        let got = fires(
            "30 2 * * *",
            chrono_tz::Europe::Berlin,
            utc(2026, 10, 24, 12, 0, 0),
            2,
        );
        assert_eq!(
            got,
            vec![utc(2026, 10, 25, 0, 30, 0), utc(2026, 10, 26, 1, 30, 0)]
        );
    }

    #[test]
    fn dst_repeated_hour_wildcard_hour_fires_at_every_real_occurrence() {
        let got = fires(
            "30 * * * *",
            chrono_tz::Europe::Berlin,
            utc(2026, 10, 24, 23, 45, 0),
            3,
        );
        // 02:30 CEST (00:30 UTC), 02:30 CET (01:30 UTC), 03:30 CET (02:30 UTC).
        assert_eq!(
            got,
            vec![
                utc(2026, 10, 25, 0, 30, 0),
                utc(2026, 10, 25, 1, 30, 0),
                utc(2026, 10, 25, 2, 30, 0)
            ]
        );
    }

    /// The same rules in zones that change at other hours, by other amounts, or in the other
    /// hemisphere. Transitions (2026): New York 03-08 02:00 -> 03:00 and 11-01 02:00 -> 01:00;
    /// Sydney 10-04 02:00 -> 03:00 and 04-05 03:00 -> 02:00; Lord Howe by half an hour, 10-04
    /// 02:00 -> 02:30 and 04-05 02:00 -> 01:30; Santiago at midnight, 09-06 00:00 -> 01:00 and
    /// 04-05 00:00 -> 04-04 23:00.
    #[test]
    fn dst_rules_hold_in_other_zones() {
        use chrono_tz::America::{New_York, Santiago};
        use chrono_tz::Australia::{Lord_Howe, Sydney};
        /// (expression, zone, search from, the fires expected after it)
        type Case = (&'static str, Tz, DateTime<Utc>, Vec<DateTime<Utc>>);
        let cases: [Case; 11] = [
            // Skipped time: once, right after the jump.
            (
                "30 2 * * *",
                New_York,
                utc(2026, 3, 7, 12, 0, 0),
                vec![utc(2026, 3, 8, 7, 0, 0), utc(2026, 3, 9, 6, 30, 0)],
            ),
            (
                "30 2 * * *",
                Sydney,
                utc(2026, 10, 3, 0, 0, 0),
                vec![utc(2026, 10, 3, 16, 0, 0), utc(2026, 10, 4, 15, 30, 0)],
            ),
            (
                "15 2 * * *",
                Lord_Howe,
                utc(2026, 10, 3, 0, 0, 0),
                vec![utc(2026, 10, 3, 15, 30, 0), utc(2026, 10, 4, 15, 15, 0)],
            ),
            (
                "0 0 * * *",
                Santiago,
                utc(2026, 9, 5, 12, 0, 0),
                vec![utc(2026, 9, 6, 4, 0, 0), utc(2026, 9, 7, 3, 0, 0)],
            ),
            // Repeated time, fixed hour: once.
            (
                "30 1 * * *",
                New_York,
                utc(2026, 10, 31, 12, 0, 0),
                vec![utc(2026, 11, 1, 5, 30, 0), utc(2026, 11, 2, 6, 30, 0)],
            ),
            (
                "30 2 * * *",
                Sydney,
                utc(2026, 4, 4, 0, 0, 0),
                vec![utc(2026, 4, 4, 15, 30, 0), utc(2026, 4, 5, 16, 30, 0)],
            ),
            (
                "45 1 * * *",
                Lord_Howe,
                utc(2026, 4, 4, 0, 0, 0),
                vec![utc(2026, 4, 4, 14, 45, 0), utc(2026, 4, 5, 15, 15, 0)],
            ),
            (
                "30 23 * * *",
                Santiago,
                utc(2026, 4, 4, 12, 0, 0),
                vec![utc(2026, 4, 5, 2, 30, 0), utc(2026, 4, 6, 3, 30, 0)],
            ),
            // Repeated time, wildcard hour: every real occurrence.
            (
                "30 * * * *",
                New_York,
                utc(2026, 11, 1, 4, 45, 0),
                vec![
                    utc(2026, 11, 1, 5, 30, 0),
                    utc(2026, 11, 1, 6, 30, 0),
                    utc(2026, 11, 1, 7, 30, 0),
                ],
            ),
            (
                "45 * * * *",
                Lord_Howe,
                utc(2026, 4, 4, 13, 50, 0),
                vec![
                    utc(2026, 4, 4, 14, 45, 0),
                    utc(2026, 4, 4, 15, 15, 0),
                    utc(2026, 4, 4, 16, 15, 0),
                ],
            ),
            // Skipped time, wildcard hour: none in the gap (02:00-02:29 local): 00:15 and
            // 01:15 at +10:30, then 03:15 at +11.
            (
                "15 * * * *",
                Lord_Howe,
                utc(2026, 10, 3, 13, 30, 0),
                vec![
                    utc(2026, 10, 3, 13, 45, 0),
                    utc(2026, 10, 3, 14, 45, 0),
                    utc(2026, 10, 3, 16, 15, 0),
                ],
            ),
        ];
        for (expression, tz, from, want) in cases {
            let got = fires(expression, tz, from, want.len());
            assert_eq!(got, want, "{expression} in {tz} after {from}");
        }
    }

    /// An every-second job across each zone's transitions fires once per real second: no burst
    /// (croner #286 fired every millisecond), no repeat, no stall.
    #[test]
    fn every_second_crosses_dst_transitions_one_fire_per_second() {
        let transitions = [
            (chrono_tz::America::New_York, utc(2026, 3, 8, 7, 0, 0)),
            (chrono_tz::America::New_York, utc(2026, 11, 1, 6, 0, 0)),
            (chrono_tz::Australia::Lord_Howe, utc(2026, 4, 4, 15, 0, 0)),
            (chrono_tz::Australia::Lord_Howe, utc(2026, 10, 3, 15, 30, 0)),
            (chrono_tz::America::Santiago, utc(2026, 9, 6, 4, 0, 0)),
            (chrono_tz::Europe::Berlin, utc(2026, 10, 25, 1, 0, 0)),
        ];
        for (tz, at) in transitions {
            let from = at - chrono::Duration::seconds(5);
            let got = fires("* * * * * *", tz, from, 10);
            let want: Vec<_> = (1..=10)
                .map(|k| from + chrono::Duration::seconds(k))
                .collect();
            assert_eq!(got, want, "{tz} around {at}");
        }
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        /// One cron field: wildcards, numbers in and out of range, ranges (also reversed),
        /// steps, lists and names.
        fn field() -> impl Strategy<Value = String> {
            let atom = prop_oneof![
                Just("*".to_owned()),
                (0u32..70).prop_map(|n| n.to_string()),
                (0u32..70, 0u32..70).prop_map(|(a, b)| format!("{a}-{b}")),
                (0u32..70, 0u32..70).prop_map(|(a, b)| format!("*/{}", a % 13 + b % 2)),
                (0u32..70, 0u32..70, 1u32..20).prop_map(|(a, b, c)| format!("{a}-{b}/{c}")),
                prop::sample::select(vec!["MON", "fri", "JAN", "dec", "L", "?", "5#2", "x", ""])
                    .prop_map(str::to_owned),
            ];
            prop::collection::vec(atom, 1..3).prop_map(|atoms| atoms.join(","))
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(300))]
            #[test]
            fn random_expressions_parse_or_error_and_fire_in_order(
                fields in prop::collection::vec(field(), 4..8),
                start in 1_600_000_000i64..1_900_000_000,
            ) {
                let expression = fields.join(" ");
                let Ok(schedule) = CronSchedule::parse(&expression, chrono_tz::Europe::Berlin) else {
                    return Ok(()); // an error is a fine answer; a panic is not
                };
                let mut t = DateTime::from_timestamp(start, 0).expect("in range");
                for _ in 0..5 {
                    let Some(next) = schedule.next_after(t) else { break };
                    prop_assert!(next > t, "{expression}: {next} after {t}");
                    let local = next.with_timezone(&schedule.timezone);
                    prop_assert!(
                        schedule.cron.is_time_matching(&local).unwrap_or(false),
                        "{expression}: {local} does not match"
                    );
                    t = next;
                }
            }
        }
    }

    /// Days of December 2026 (and later) at `h:m`, for the expected fire lists below.
    fn days(list: &[(i32, u32, u32)], h: u32, m: u32) -> Vec<DateTime<Utc>> {
        list.iter()
            .map(|&(y, mo, d)| utc(y, mo, d, h, m, 0))
            .collect()
    }

    /// README promised Vixie cron's day rule, but tickd always ORed the two day fields. A day
    /// field that starts with `*` makes them AND (cron's `DOM_STAR`/`DOW_STAR`). The expected
    /// days are worked out by hand from the calendar: 2026-12-01 is a Tuesday.
    #[test]
    fn a_starred_day_field_makes_the_day_fields_and_like_vixie_cron() {
        let from = utc(2026, 11, 30, 12, 0, 0);
        // Odd days that are weekdays: not Sat 5th, not Sun 13th.
        assert_eq!(
            fires("0 6 */2 * 1-5", Tz::UTC, from, 6),
            days(
                &[
                    (2026, 12, 1),
                    (2026, 12, 3),
                    (2026, 12, 7),
                    (2026, 12, 9),
                    (2026, 12, 11),
                    (2026, 12, 15)
                ],
                6,
                0
            )
        );
        // The 1st only, not every day.
        assert_eq!(
            fires("0 9 1 * */1", Tz::UTC, from, 3),
            days(&[(2026, 12, 1), (2027, 1, 1), (2027, 2, 1)], 9, 0)
        );
        // Days 1, 11, 21, 31 that are Sundays: none in December 2026, then January 31st.
        assert_eq!(
            fires("0 0 */10 * 0", Tz::UTC, from, 1),
            days(&[(2027, 1, 31)], 0, 0)
        );
        // The same with seconds (6 fields), and `*` in day-of-month: every Monday.
        assert_eq!(
            fires("0 30 8 * * 1", Tz::UTC, from, 2),
            days(&[(2026, 12, 7), (2026, 12, 14)], 8, 30)
        );
        assert_eq!(
            fires("0 0 0 */2 * 1-5", Tz::UTC, from, 3),
            days(&[(2026, 12, 1), (2026, 12, 3), (2026, 12, 7)], 0, 0)
        );
    }

    /// Neither day field starts with `*`: a day matching either one fires.
    #[test]
    fn two_restricted_day_fields_combine_with_or_like_vixie_cron() {
        let from = utc(2026, 11, 30, 12, 0, 0);
        // The 1st and 15th, and every Friday (4, 11, 18, 25); January 1st is both, once.
        assert_eq!(
            fires("0 0 1,15 * 5", Tz::UTC, from, 7),
            days(
                &[
                    (2026, 12, 1),
                    (2026, 12, 4),
                    (2026, 12, 11),
                    (2026, 12, 15),
                    (2026, 12, 18),
                    (2026, 12, 25),
                    (2027, 1, 1)
                ],
                0,
                0
            )
        );
        // The classic trap: not "the first Monday" but days 1-7 and every Monday.
        let got = fires("0 0 1-7 * 1", Tz::UTC, from, 9);
        let mut want: Vec<(i32, u32, u32)> = (1..=7).map(|d| (2026, 12, d)).collect();
        want.extend([(2026, 12, 14), (2026, 12, 21)]);
        assert_eq!(got, days(&want, 0, 0));
    }

    /// The Quartz extensions are documented: `L`, `W`, `#`, and `?` (a star, so the fields AND).
    #[test]
    fn quartz_day_extensions_fire_as_documented() {
        let from = utc(2026, 11, 30, 12, 0, 0);
        // The second Friday.
        assert_eq!(
            fires("0 0 0 ? * 5#2", Tz::UTC, from, 2),
            days(&[(2026, 12, 11), (2027, 1, 8)], 0, 0)
        );
        // The last day of the month.
        assert_eq!(
            fires("0 0 0 L * ?", Tz::UTC, from, 3),
            days(&[(2026, 12, 31), (2027, 1, 31), (2027, 2, 28)], 0, 0)
        );
        // The last Friday.
        assert_eq!(
            fires("0 0 0 ? * 5L", Tz::UTC, from, 2),
            days(&[(2026, 12, 25), (2027, 1, 29)], 0, 0)
        );
        // The weekday nearest the 15th: Saturday 2027-05-15 moves to Friday the 14th.
        let may = utc(2027, 5, 1, 0, 0, 0);
        assert_eq!(
            fires("0 0 0 15W * ?", Tz::UTC, may, 1),
            days(&[(2027, 5, 14)], 0, 0)
        );
        // croner's '+' (AND) modifier is not cron: refused.
        assert!(CronSchedule::parse("0 0 1 * +5", Tz::UTC).is_err());
    }

    #[test]
    fn bad_expressions_are_rejected() {
        for bad in [
            "",
            "* * *",
            "61 * * * *",
            "* * * * * * * *",
            "0 0 30 2 *",
            "5-1 * * * *",
            "nonsense",
        ] {
            assert!(
                CronSchedule::parse(bad, Tz::UTC).is_err(),
                "{bad:?} should be rejected"
            );
        }
    }
}
