//! tickd: a job-scheduler daemon that replaces minutely cron.
//!
//! # Theory of operation
//!
//! A TOML file is read and validated by [`config::load`] into a [`config::Config`]: the typed
//! definitions every other module works from, whose fields only `config` can set, so they hold
//! no invalid value (a bad file is refused whole, with each problem located). [`daemon::run`] then starts what the jobs share ([`action::RunEnv`], the metrics, the
//! state file) and the jobs ([`job`]): each job's state sits behind one lock, and whatever acts
//! on it (the dispatcher at its deadline, its runs as they end, a command) takes that lock.
//!
//! 1. **Plan.** The job's [`job::plan`] says when the next fire is due, as pure maths over a
//!    reading of both clocks ([`clock::Now`]): `every` jobs sit on a drift-free monotonic grid
//!    (`anchor + k * period`), `cron` jobs are computed in wall-clock time by [`schedule`] and
//!    converted to a monotonic deadline. [`clock`] is the only module that reads time or sleeps.
//! 2. **Fire.** One dispatcher task sleeps until the earliest deadline of all jobs. On a fire,
//!    `job::runs` decides what the overlap policy (`skip`, `queue`, `allow`, `replace`) makes of
//!    it, from the runs the job knows are going; a decision is a value, tested without a runtime.
//! 3. **Run.** A run is a task on the daemon's run tracker: [`action`] performs the job's action
//!    (a child process in its own process group through [`process`], an HTTP request, or an
//!    in-process [`handler`]) and returns a report. A failing run never stops the daemon.
//! 4. **End.** The report is counted ([`metrics`], [`status`]), logged with its outcome, and sent
//!    back to the job, which may retry, queue the next run, or plan a fixed-delay fire. Fires
//!    missed while the daemon was stalled are skipped, never caught up in a burst.
//!
//! Control comes from outside as [`daemon::Control`] messages (the binary maps OS signals to
//! them, see [`signals`]): `Reload` re-reads the file and applies it whole or not at all;
//! `Shutdown` stops firing, waits for runs in flight up to the drain timeout, then stops what is
//! left (TERM the process group, KILL after the grace period).
//!
//! # Embedding
//!
//! [`Daemon`] ([`builder`]) puts a daemon together with defaults for everything internal: jobs
//! from a file ([`Daemon::from_file`]), from code ([`builder::DaemonBuilder::job`]) or both,
//! your handlers, then `.run().await` or `.run_blocking()` (which holds the control signals and
//! builds the runtime, as `tickd run` does). A [`DaemonHandle`] changes the jobs from code while
//! it runs, through the path a reload takes.
//!
//! ```no_run
//! # fn main() -> Result<(), tickd::builder::BuildError> {
//! tickd::Daemon::from_file("jobs.toml")
//!     .handler("flush-cache", |ctx: tickd::RunContext| async move {
//!         // ... do the work, giving up when ctx.cancel is cancelled ...
//!         anyhow::Ok(())
//!     })
//!     .run_blocking()?;
//! # Ok(())
//! # }
//! ```
//!
//! Underneath, [`run`] takes a validated [`Config`], [`DaemonOptions`] and a stream of
//! [`Control`]s; the builder is a thin layer over it.
//!
//! Cargo features, all on by default: `http` (the endpoint and the status page), `http-jobs`
//! (jobs with `http = "..."`) and `cli` (the binary's own crates; takes both). With
//! `default-features = false` a file that needs a left-out feature is refused at load, naming it.
//!
//! The binary (`src/main.rs` and `src/cli/`) is a thin layer: command line, logging, OS signals
//! mapped to [`daemon::Control`], the client of a running daemon's endpoint, and exit codes.

pub mod action;
mod blocking;
pub mod builder;
pub mod clock;
pub mod cluster;
pub mod config;
pub mod crontab;
pub mod daemon;
pub mod handler;
#[cfg(feature = "http")]
pub mod http;
pub mod job;
pub mod logging;
pub mod metrics;
pub mod notify;
mod os;
#[cfg(feature = "http")]
pub mod page;
pub mod process;
pub mod schedule;
pub mod signals;
pub mod state;
pub mod status;

pub use builder::{Cron, Daemon, DaemonHandle, Every};
pub use clock::Clock;
pub use config::{load, Config, ConfigError};
pub use daemon::{run, Control, DaemonError, DaemonOptions, Stopped};
pub use handler::{HandlerError, Handlers, RunContext, RunId};
