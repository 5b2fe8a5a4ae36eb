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
        } else {
            f.write_str(&self.0.to_rfc3339_opts(SecondsFormat::Millis, true))
        }
    }
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

    #[test]
    fn times_have_milliseconds_and_z() {
        let t = DateTime::parse_from_rfc3339("2026-12-02T05:00:00.123456Z")
            .expect("time")
            .to_utc();
        assert_eq!(Timestamp(t).to_string(), "2026-12-02T05:00:00.123Z");
    }
}
