//! A child process's end, as a run's report.

use crate::process::{ChildEnd, StopCause};

use super::{signal_name, RunReport};

/// How the run of a child that ended as `end` went.
pub(crate) fn report(end: ChildEnd) -> RunReport {
    match end {
        ChildEnd::SpawnFailed(reason) => RunReport::failure(reason),
        ChildEnd::Exited(status) => match (
            status.code(),
            std::os::unix::process::ExitStatusExt::signal(&status),
        ) {
            (Some(0), _) => RunReport::success().exited(&status),
            (Some(code), _) => {
                RunReport::failure(format!("exited with code {code}")).exited(&status)
            }
            (None, Some(signal)) => {
                // The prose says SIGTERM; the log's `signal` field, TERM.
                RunReport::failure(format!("killed by signal SIG{}", signal_name(signal)))
                    .exited(&status)
            }
            (None, None) => RunReport::failure(format!("ended with {status}")),
        },
        ChildEnd::Stopped {
            status,
            cause: StopCause::MaxRss(rss),
            killed,
        } => RunReport {
            forced: killed,
            ..RunReport::failure(format!(
                "stopped: its processes used {} of memory, over max_rss",
                bytesize::ByteSize(rss)
            ))
            .exited(&status)
        },
        ChildEnd::Stopped {
            status,
            cause,
            killed,
        } => RunReport::stopped(cause == StopCause::Timeout, killed).exited(&status),
    }
}
