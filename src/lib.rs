//! tickd: a job-scheduler daemon that replaces minutely cron.
//!
//! # Theory of operation
//!
//! A TOML file is loaded and validated by [`config::load`] into [`config::Config`]: typed job
//! definitions that cannot hold an invalid value. [`daemon::run`] then starts one task per job
//! ([`job`]), which owns that job's schedule and its runs in flight:
//!
//! 1. The job task asks the [`clock::Clock`] to sleep until its next due instant. `every` jobs sit
//!    on a drift-free monotonic grid (`anchor + k * period`); `cron` jobs are computed in wall-clock
//!    time by [`schedule`] and converted to a monotonic deadline.
//! 2. On a fire, the job applies its overlap policy (`skip`, `queue`, `allow`, `replace`) against
//!    the runs it knows are still going, and starts a run as a task on the daemon's run tracker.
//! 3. A run ([`run`]) performs the action: a child process in its own process group
//!    ([`process`]), an HTTP request, or an in-process [`handler`]. Its end is reported back to the
//!    job task and logged with its outcome; a failing run never stops the daemon.
//! 4. The next due time is the next grid point (or calendar time) in the future: missed fires are
//!    skipped, never caught up in a burst.
//!
//! Control comes from outside as [`daemon::Control`] messages: `Reload` re-reads the file and
//! applies it whole or not at all; `Shutdown` stops firing, waits for runs in flight up to the
//! drain timeout, then stops what is left (TERM the process group, KILL after the grace period).
//!
//! # Embedding
//!
//! ```no_run
//! # async fn embed() -> Result<(), Box<dyn std::error::Error>> {
//! let mut handlers = tickd::Handlers::with_builtins();
//! handlers.register("flush-cache", |ctx: tickd::RunContext| async move {
//!     // ... do the work, giving up when ctx.cancel is cancelled ...
//!     Ok(())
//! });
//! let config = tickd::load("jobs.toml".as_ref(), &handlers)?;
//! let options = tickd::DaemonOptions {
//!     config_path: "jobs.toml".into(),
//!     handlers,
//!     clock: tickd::Clock::system(),
//!     group_keeper: None, // or Some(path to the tickd binary), see process::GroupKeeper
//!     notifier: None,     // or tickd::notify::Notifier::from_env()?
//!     subreaper: false,
//! };
//! let stopped = tickd::run(config, options, tickd::signals::os_controls()?).await?;
//! # let _ = stopped;
//! # Ok(())
//! # }
//! ```
//!
//! The binary (`src/main.rs`) is a thin layer: command line, logging, OS signals mapped to
//! [`daemon::Control`], and exit codes.

pub mod action;
mod blocking;
pub mod clock;
pub mod config;
pub mod crontab;
pub mod daemon;
pub mod handler;
pub mod http;
pub mod job;
pub mod metrics;
pub mod notify;
mod os;
pub mod process;
pub mod schedule;
pub mod signals;
pub mod state;
pub mod status;

pub use clock::Clock;
pub use config::{load, Config, ConfigError};
pub use daemon::{run, Control, DaemonError, DaemonOptions, Stopped};
pub use handler::{Handlers, RunContext, RunId};
