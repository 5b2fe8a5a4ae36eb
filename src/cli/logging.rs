//! The daemon's log: formatted where it is logged, written to stderr by a thread of its own
//! (`cli::log_queue`).

use tickd::logging::{LogFilterError, LogTime};

use super::log_queue::{LogGuard, LogQueue};
use super::LogFormat;

/// Why the log could not be set up.
#[derive(Debug, thiserror::Error)]
pub(crate) enum LogSetupError {
    /// `TICKD_LOG` is not a filter: the user's to fix (exit 2).
    #[error(transparent)]
    Filter(#[from] LogFilterError),
    /// The writer thread could not be started (the machine's thread limit).
    #[error("cannot start the log's writer thread: {0}")]
    Thread(#[source] std::io::Error),
}

/// Sets up logging to stderr through the writer thread; dropping the guard flushes it (waiting
/// about a second at most if stderr is stuck).
///
/// Lines are formatted where they are logged and queued (bounded, lossy) for the `tickd-log`
/// thread, which alone writes to stderr: a stderr that blocks (a pipe nobody reads) stalls that
/// thread, never a job task or the shutdown. Lines that do not fit are dropped, counted in
/// `tickd_log_lines_dropped_total` and reported in a line of their own once stderr takes lines
/// again.
///
/// A `TICKD_LOG` that is not a filter is refused before anything is set up: read as tracing reads
/// it, a typo such as `warning` would silence the whole log.
///
/// `daemon`: lines are written in bursts (see `log_queue::GATHER`); a command in the foreground
/// writes each as it comes, in order with what it prints to stderr itself.
pub(crate) fn init_logging(
    format: LogFormat,
    time: LogTime,
    daemon: bool,
) -> Result<LogGuard, LogSetupError> {
    let gather = if daemon {
        super::log_queue::GATHER
    } else {
        std::time::Duration::ZERO
    };
    let level = std::env::var("TICKD_LOG").ok();
    let filter = tickd::logging::log_filter(level.as_deref())?;
    tickd::logging::set_log_time(time);
    let mut reported = 0;
    let started = LogQueue::start(std::io::stderr(), gather, move |dropped: u64| {
        tracing::warn!(
            dropped = dropped - reported,
            "log lines were dropped: stderr was not keeping up"
        );
        reported = dropped;
    });
    let (writer, guard) = started.map_err(LogSetupError::Thread)?;
    // Write errors (a closed or full stderr) are dropped instead of reported with `eprintln!`,
    // which would panic: logging must never stop the scheduler.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer)
        .with_timer(tickd::logging::LineTime)
        .log_internal_errors(false);
    match format {
        LogFormat::Human => builder.with_ansi(false).init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
    Ok(guard)
}
