//! A child process's end, as a run's report.

use crate::process::{self, ChildEnd, StopCause};

use super::RunReport;

/// How the run of a child that ended as `end` went.
pub(super) fn report(end: ChildEnd) -> RunReport {
    match end {
        ChildEnd::SpawnFailed(reason) => RunReport::failure(None, reason),
        ChildEnd::Exited(status) => match process::status_parts(&status) {
            (Some(0), _) => RunReport::success(Some(0)),
            (Some(code), _) => RunReport::failure(Some(code), format!("exited with code {code}")),
            (None, Some(signal)) => {
                RunReport::failure(None, format!("killed by signal {}", signal_name(signal)))
            }
            (None, None) => RunReport::failure(None, format!("ended with {status}")),
        },
        ChildEnd::Stopped {
            status,
            cause: StopCause::MaxRss(rss),
            killed,
        } => RunReport {
            forced: killed,
            ..RunReport::failure(
                status.code(),
                format!(
                    "stopped: its processes used {} of memory, over max_rss",
                    bytesize::ByteSize(rss)
                ),
            )
        },
        ChildEnd::Stopped {
            status,
            cause,
            killed,
        } => RunReport::stopped(cause == StopCause::Timeout, killed, status.code()),
    }
}

fn signal_name(signal: i32) -> String {
    nix::sys::signal::Signal::try_from(signal)
        .map_or_else(|_| signal.to_string(), |s| s.to_string())
}
