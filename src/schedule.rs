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
#[derive(Debug, Clone)]
pub enum Schedule {
    /// A fixed period on a drift-free grid that starts when the job is scheduled.
    Every(Duration),
    /// A calendar schedule (boxed: the parsed expression is large and `every` jobs are common).
    Cron(Box<CronSchedule>),
}

impl PartialEq for Schedule {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (Schedule::Every(a), Schedule::Every(b)) => a == b,
            (Schedule::Cron(a), Schedule::Cron(b)) => a == b,
            _ => false,
        }
    }
}

impl fmt::Display for Schedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Schedule::Every(period) => write!(f, "every {}", humantime::format_duration(*period)),
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
    /// (`@yearly`, `@annually`, `@monthly`, `@weekly`, `@daily`, `@hourly`). Day-of-month and
    /// day-of-week combine with OR when both are restricted, as in Vixie cron.
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
        let cron = CronParser::builder()
            .seconds(Seconds::Optional)
            .build()
            .parse(trimmed)
            .map_err(|e| error(e.to_string()))?;
        // An expression that can never match (e.g. February 30th) is a config error, not a job
        // that silently never runs.
        let probe = Utc::now().with_timezone(&timezone);
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

    /// The first fire time strictly after `after`, or `None` if there is none (searches give up
    /// after several years).
    pub fn next_after(&self, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let local = after.with_timezone(&self.timezone);
        self.cron
            .find_next_occurrence(&local, false)
            .ok()
            .map(|next| next.with_timezone(&Utc))
    }
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

#[cfg(test)]
mod tests {
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
