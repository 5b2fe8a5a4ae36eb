//! `tickd run`: the daemon, with the process-wide set-up it needs (descriptor limit, signals,
//! runtime) and its stop mapped to an exit code.

use std::path::{Path, PathBuf};

use tickd::{Clock, DaemonOptions, Handlers, Stopped};

use super::{exit, load_config};

pub(crate) fn run_daemon(file: &Path, subreaper: bool) -> u8 {
    // Before the runtime, so that its threads and everything they open see the raised limit.
    raise_descriptor_limit();
    // The control signals are held (by `main`, before any thread started): until `os_controls`
    // listens, one waits instead of being lost.
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("tickd-worker")
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            tracing::error!("cannot start the runtime: {err}");
            return exit::FATAL;
        }
    };
    runtime.block_on(async {
        // Signal handlers go in before anything else, so an early SIGHUP or SIGTERM is never
        // fatal by default disposition. This is the thread that held them, as it must be.
        let controls = match tickd::signals::os_controls() {
            Ok(controls) => controls,
            Err(err) => {
                tracing::error!("cannot install signal handlers: {err}");
                return exit::FATAL;
            }
        };
        let Some(config) = load_config(file) else {
            return exit::INVALID;
        };
        let clock = match test_clock_skew() {
            Ok(skew) => Clock::system_skewed(skew),
            Err(err) => {
                tracing::error!("{err}");
                return exit::INVALID;
            }
        };
        let options = DaemonOptions {
            config_path: file.to_owned(),
            handlers: Handlers::with_builtins(),
            clock,
            group_keeper: keeper_program(),
            subreaper,
            notifier: match tickd::notify::Notifier::from_env() {
                Ok(notifier) => notifier,
                Err(err) => {
                    tracing::warn!("NOTIFY_SOCKET is set but unusable, not notifying: {err}");
                    None
                }
            },
        };
        match tickd::run(config, options, controls).await {
            Ok(Stopped::Drained) => exit::OK,
            Ok(Stopped::RunsStopped) => exit::RUNS_STOPPED,
            Ok(Stopped::Recycled { .. }) => exit::RECYCLE,
            Err(err) => {
                tracing::error!("{err}");
                exit::FATAL
            }
        }
    })
}

/// Raises the soft descriptor limit (`RLIMIT_NOFILE`) to the hard one, as many daemons do: the
/// usual soft limit of 1,024 (systemd's default, which `contrib/systemd/tickd.service` raises) is
/// little for a daemon whose runs and HTTP clients each hold descriptors, and running out makes
/// every run fail with EMFILE. Children get the original soft limit back (see
/// `tickd::process::set_child_descriptor_limit`). A failure leaves the limit as it was: the HTTP
/// endpoint sizes its connection cap from the limit it finds.
fn raise_descriptor_limit() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (soft, hard) = match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok(limits) => limits,
        Err(err) => {
            tracing::warn!("cannot read the descriptor limit: {err}");
            return;
        }
    };
    if soft >= hard {
        tracing::debug!(
            limit = soft,
            "the descriptor limit is already the hard limit"
        );
        return;
    }
    match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
        Ok(()) => {
            tickd::process::set_child_descriptor_limit(soft, hard);
            tracing::debug!(from = soft, to = hard, "raised the descriptor limit");
        }
        Err(err) => {
            tracing::warn!(
                limit = soft,
                "cannot raise the descriptor limit to {hard}: {err}"
            );
        }
    }
}

/// This binary, for the group keeper; without it (no /proc?) only each run's first process is
/// tied to the daemon's life.
fn keeper_program() -> Option<PathBuf> {
    match std::env::current_exe() {
        Ok(path) => Some(path),
        Err(err) => {
            tracing::warn!("cannot find my own binary, running without a group keeper: {err}");
            None
        }
    }
}

/// `TICKD_TEST_CLOCK_SKEW` (`+3s`, `-1.5s`): this daemon reads the wall clock that much off, as
/// if the machine's clock were wrong. For the tests of a cluster whose nodes' clocks disagree;
/// unset, zero.
fn test_clock_skew() -> Result<chrono::Duration, String> {
    let Ok(text) = std::env::var("TICKD_TEST_CLOCK_SKEW") else {
        return Ok(chrono::Duration::zero());
    };
    let (negative, amount) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text.strip_prefix('+').unwrap_or(&text)),
    };
    let skew = humantime::parse_duration(amount)
        .ok()
        .and_then(|d| chrono::Duration::from_std(d).ok())
        .ok_or_else(|| {
            format!("TICKD_TEST_CLOCK_SKEW: {text:?} is not a duration such as +3s or -500ms")
        })?;
    Ok(if negative { -skew } else { skew })
}
