//! The daemon's log: formatted where it is logged, written to stderr by a thread of its own.

use tickd::logging::{LogFilterError, LogTime};
use tickd::metrics::LOG_LINES_DROPPED;

use super::LogFormat;

/// How many formatted lines the log queue holds before new ones are dropped: a burst (a status
/// report, a reload of many jobs) fits, while a stderr nobody reads costs at most about 1 MB.
const LOG_QUEUE_LINES: usize = 4096;

/// How often the dropped-lines count is copied into the metric and reported.
const LOG_DROPS_CHECK: std::time::Duration = std::time::Duration::from_secs(1);

/// Sets up logging to stderr through a writer thread; the guard flushes it (see [`flush_log`]).
///
/// Lines are formatted where they are logged and queued (bounded, lossy) for the `tickd-log`
/// thread, which alone writes to stderr: a stderr that blocks (a pipe nobody reads) stalls that
/// thread, never a job task or the shutdown. Lines that do not fit are dropped and counted (see
/// [`DroppedLines`]).
///
/// A `TICKD_LOG` that is not a filter is refused before anything is set up: read as tracing reads
/// it, a typo such as `warning` would silence the whole log.
pub(crate) fn init_logging(
    format: LogFormat,
    time: LogTime,
) -> Result<tracing_appender::non_blocking::WorkerGuard, LogFilterError> {
    let level = std::env::var("TICKD_LOG").ok();
    let filter = tickd::logging::log_filter(level.as_deref())?;
    tickd::logging::set_log_time(time);
    let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .lossy(true)
        .buffered_lines_limit(LOG_QUEUE_LINES)
        .thread_name("tickd-log")
        .finish(std::io::stderr());
    let dropped = writer.error_counter();
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
    // Without this thread, lines would still be dropped, just not counted or reported.
    let _ = std::thread::Builder::new()
        .name("tickd-log-drops".into())
        .spawn(move || {
            let mut reported = DroppedLines::default();
            loop {
                std::thread::sleep(LOG_DROPS_CHECK);
                reported.check(dropped.dropped_lines() as u64, || {
                    dropped.dropped_lines() as u64
                });
            }
        });
    Ok(guard)
}

/// What [`DroppedLines::check`] has counted and reported so far.
#[derive(Debug, Default)]
struct DroppedLines {
    /// Drops already added to `tickd_log_lines_dropped_total`.
    counted: u64,
    /// Drops already told about in the log.
    reported: u64,
}

impl DroppedLines {
    /// Adds new drops (`total` so far) to the metric and logs how many lines were lost since the
    /// last notice. The notice is queued like any line: if it is dropped too (`total_after`
    /// moved), the queue is still full and it is tried again at the next check, counting itself.
    fn check(&mut self, total: u64, total_after: impl FnOnce() -> u64) {
        LOG_LINES_DROPPED.inc_by(total.saturating_sub(self.counted));
        self.counted = self.counted.max(total);
        if total > self.reported {
            tracing::warn!(
                dropped = total - self.reported,
                "log lines were dropped: stderr was not keeping up"
            );
            if total_after() == total {
                self.reported = total;
            }
        }
    }
}

/// Flushes the log queue at exit (waiting about a second at most if stderr is stuck), so the
/// last lines ("shut down") are written.
pub(crate) fn flush_log(guard: tracing_appender::non_blocking::WorkerGuard) {
    // When the queue stays full, the guard reports it with `println!`, which panics on a broken
    // stdout, and a panic message would go to the stuck stderr: neither may change the exit.
    std::panic::set_hook(Box::new(|_| {}));
    let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| drop(guard)));
}
