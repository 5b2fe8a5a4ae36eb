//! The log's vocabulary, shared by every line tickd writes: how times are shown (RFC 3339 with
//! milliseconds, in UTC or the machine's zone) and which `TICKD_LOG` values are accepted. The
//! binary sets the subscriber up (`cli::logging`); the library only formats.

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};

use chrono::{DateTime, SecondsFormat, Utc};

/// The zone times are shown in, in the log (`tickd run --log-time`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogTime {
    /// UTC, with a `Z` (the default): the same on every machine.
    #[default]
    Utc,
    /// The machine's zone (`TZ`, else `/etc/localtime`), with its offset (`+01:00`).
    Local,
}

/// Whether times are shown in the machine's zone. A process-wide setting, like the tracing
/// subscriber it serves: set once at start, read by every line that shows a time.
static LOCAL_TIME: AtomicBool = AtomicBool::new(false);

/// Shows every time of the log (the line's own and its fields) in `zone` from now on.
pub fn set_log_time(zone: LogTime) {
    LOCAL_TIME.store(zone == LogTime::Local, Ordering::Relaxed);
}

/// A time as the log shows it: `2026-12-02T05:00:00.000Z`, or with `--log-time local`
/// `2026-12-02T06:00:00.000+01:00`. Use it for every time field (`scheduled = %Timestamp(t)`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timestamp(pub DateTime<Utc>);

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if LOCAL_TIME.load(Ordering::Relaxed) {
            let local = self.0.with_timezone(&chrono::Local);
            f.write_str(&local.to_rfc3339_opts(SecondsFormat::Millis, true))
        } else if let Some(text) = utc_millis(self.0) {
            // The buffer holds ASCII digits and separators only.
            f.write_str(std::str::from_utf8(&text).map_err(|_| fmt::Error)?)
        } else {
            f.write_str(&self.0.to_rfc3339_opts(SecondsFormat::Millis, true))
        }
    }
}

/// `2026-12-02T05:00:00.123Z` in a buffer on the stack, what chrono's
/// `to_rfc3339_opts(SecondsFormat::Millis, true)` gives; `None` for what it shows otherwise (a
/// year outside 0..=9999, a leap second). By hand because every log line has a time, most two,
/// and chrono's formatter allocates a `String` and walks its format items for each.
fn utc_millis(time: DateTime<Utc>) -> Option<[u8; 24]> {
    use chrono::{Datelike, Timelike};
    let millis = time.timestamp_subsec_millis();
    let year = u32::try_from(time.year()).ok().filter(|y| *y <= 9999)?;
    if millis > 999 {
        return None;
    }
    let mut text = *b"0000-00-00T00:00:00.000Z";
    let mut digits = |at: usize, width: usize, mut value: u32| {
        for i in (at..at + width).rev() {
            // `value % 10` is below 10.
            text[i] = b'0' + (value % 10) as u8;
            value /= 10;
        }
    };
    digits(0, 4, year);
    digits(5, 2, time.month());
    digits(8, 2, time.day());
    digits(11, 2, time.hour());
    digits(14, 2, time.minute());
    digits(17, 2, time.second());
    digits(20, 3, millis);
    Some(text)
}

/// The time at the start of each line, in the same format as the time fields.
#[derive(Debug, Clone, Copy, Default)]
pub struct LineTime;

impl tracing_subscriber::fmt::time::FormatTime for LineTime {
    fn format_time(&self, w: &mut tracing_subscriber::fmt::format::Writer<'_>) -> fmt::Result {
        write!(w, "{}", Timestamp(Utc::now()))
    }
}

/// The levels `TICKD_LOG` takes, for messages.
pub const LEVELS: &str = "error, warn, info, debug, trace, off";

/// A `TICKD_LOG` value that is not a filter.
#[derive(Debug, thiserror::Error)]
pub enum LogFilterError {
    /// A bare word that is not a level: tracing would read it as a target (`warning` would show
    /// only the lines of a module called `warning`, which is none), silencing the log.
    #[error(
        "TICKD_LOG: {word:?} is not a level; use one of {LEVELS}, or target=level directives \
         separated by commas (e.g. info,tickd::output=warn)"
    )]
    NotALevel {
        /// The word.
        word: String,
    },
    /// Not valid directive syntax.
    #[error(
        "TICKD_LOG: {text:?} is not a valid filter ({source}); use one of {LEVELS}, or \
         target=level directives separated by commas (e.g. info,tickd::output=warn)"
    )]
    Syntax {
        /// The whole value.
        text: String,
        /// What tracing's parser said.
        #[source]
        source: tracing_subscriber::filter::ParseError,
    },
}

/// The filter `TICKD_LOG` asks for: `None` or empty is `info`. A full `EnvFilter` value works
/// (`info,tickd::output=warn`, `tickd[run]=debug`), except a bare word that is not a level.
pub fn log_filter(text: Option<&str>) -> Result<tracing_subscriber::EnvFilter, LogFilterError> {
    use tracing_subscriber::filter::LevelFilter;
    let text = text
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .unwrap_or("info");
    for directive in text.split(',').map(str::trim).filter(|d| !d.is_empty()) {
        let bare = !directive.contains('=') && !directive.contains('[');
        if bare && directive.parse::<LevelFilter>().is_err() {
            return Err(LogFilterError::NotALevel {
                word: directive.to_owned(),
            });
        }
    }
    tracing_subscriber::EnvFilter::builder()
        .parse(text)
        .map_err(|source| LogFilterError::Syntax {
            text: text.to_owned(),
            source,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn typos_in_the_level_are_refused_with_the_valid_values() {
        for typo in [
            "warning",
            "verbose",
            "info,warning",
            "debug,tickd=verbose",
            "x=y=z",
        ] {
            let err = log_filter(Some(typo)).expect_err(typo).to_string();
            assert!(err.contains(LEVELS), "{typo}: {err}");
            assert!(err.contains("target=level"), "{typo}: {err}");
        }
    }

    #[test]
    fn levels_and_full_directives_are_accepted() {
        for good in [
            "error",
            "WARN",
            "info",
            "debug",
            "trace",
            "off",
            "",
            " info ",
            "info,tickd::output=warn",
            "tickd=debug",
            "warn,tickd::job[run]=trace",
        ] {
            assert!(log_filter(Some(good)).is_ok(), "{good}");
        }
        assert_eq!(
            log_filter(None).expect("default").to_string(),
            log_filter(Some("info")).expect("info").to_string()
        );
    }

    /// The hand-made format is chrono's, on times all over the calendar; chrono's own for what
    /// it leaves to chrono.
    #[test]
    fn utc_times_are_shown_as_chrono_shows_them() {
        let mut seconds: i64 = -62_167_219_200; // 0000-01-01T00:00:00Z
        let last = 253_402_300_799; // 9999-12-31T23:59:59Z
        let mut checked = 0;
        while seconds <= last {
            for nanos in [0, 999_999, 1_000_000, 123_456_789, 999_999_999] {
                let t = DateTime::from_timestamp(seconds, nanos).expect("in range");
                assert_eq!(
                    Timestamp(t).to_string(),
                    t.to_rfc3339_opts(SecondsFormat::Millis, true),
                    "{seconds} {nanos}"
                );
                checked += 1;
            }
            seconds += 86_400 * 17 + 3_607;
        }
        assert!(checked > 100_000, "{checked}");
        let leap = chrono::NaiveDate::from_ymd_opt(2016, 12, 31)
            .and_then(|d| d.and_hms_milli_opt(23, 59, 59, 1_500))
            .expect("a leap second")
            .and_utc();
        assert_eq!(Timestamp(leap).to_string(), "2016-12-31T23:59:60.500Z");
        let far = DateTime::from_timestamp(300_000_000_000, 0).expect("in range");
        assert_eq!(
            Timestamp(far).to_string(),
            far.to_rfc3339_opts(SecondsFormat::Millis, true)
        );
    }

    #[test]
    fn times_have_milliseconds_and_z() {
        let t = DateTime::parse_from_rfc3339("2026-12-02T05:00:00.123456Z")
            .expect("time")
            .to_utc();
        assert_eq!(Timestamp(t).to_string(), "2026-12-02T05:00:00.123Z");
    }
}
