//! The binary's commands, one module per kind: the daemon (`daemon`), its log (`logging`), the
//! client of a running daemon's endpoint (`client`), the commands that need no daemon
//! (`offline`), and what packagers and editors need (`generate`: man page, completions, schema). `main.rs` only parses the command line and dispatches.

pub(crate) mod client;
pub(crate) mod daemon;
pub(crate) mod generate;
mod log_queue;
pub(crate) mod logging;
pub(crate) mod offline;

use std::io::Write;
use std::path::Path;

use clap::ValueEnum;

use tickd::config::Config;
use tickd::Handlers;

/// Exit codes, documented in README.md.
pub(crate) mod exit {
    /// Clean stop, every run drained.
    pub const OK: u8 = 0;
    /// Fatal runtime error.
    pub const FATAL: u8 = 1;
    /// Invalid configuration or usage.
    pub const INVALID: u8 = 2;
    /// Stopped, but runs had to be stopped after the drain timeout.
    pub const RUNS_STOPPED: u8 = 3;
    /// Recycled (`max_uptime`): the process manager should start a fresh daemon (EX_TEMPFAIL).
    pub const RECYCLE: u8 = 75;
}

/// Log format on stderr.
#[derive(Clone, Copy, ValueEnum)]
pub(crate) enum LogFormat {
    /// One line of text per event.
    Human,
    /// One JSON object per event.
    Json,
}

/// The zone of the log's times (`tickd run --log-time`).
#[derive(Clone, Copy, ValueEnum)]
pub(crate) enum LogTimeArg {
    /// UTC, with `Z`.
    Utc,
    /// The machine's zone (`TZ`), with its offset.
    Local,
}

impl From<LogTimeArg> for tickd::logging::LogTime {
    fn from(arg: LogTimeArg) -> Self {
        match arg {
            LogTimeArg::Utc => tickd::logging::LogTime::Utc,
            LogTimeArg::Local => tickd::logging::LogTime::Local,
        }
    }
}

/// Loads a config with the binary's handlers, printing the problems on failure.
pub(crate) fn load_config(file: &Path) -> Option<Config> {
    match tickd::load(file, &Handlers::with_builtins()) {
        Ok(config) => Some(config),
        Err(err) => {
            tracing::error!("invalid configuration:\n{err}");
            None
        }
    }
}

/// A single-threaded runtime for the short-lived commands.
pub(crate) fn small_runtime() -> Option<tokio::runtime::Runtime> {
    match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => Some(runtime),
        Err(err) => {
            eprintln_safe(&format!("tickd: cannot start the runtime: {err}"));
            None
        }
    }
}

/// Writes to stderr, ignoring a closed stderr (`eprintln!` would panic).
pub(crate) fn eprintln_safe(message: &str) {
    let _ = writeln!(std::io::stderr(), "{message}");
}
