//! In-process handlers: the library API through which a Rust program registers named async jobs.
//!
//! ```no_run
//! use tickd::handler::{Handlers, RunContext};
//!
//! let mut handlers = Handlers::with_builtins();
//! handlers.register("flush-cache", |ctx: RunContext| async move {
//!     tokio::select! {
//!         _ = ctx.cancel.cancelled() => Err("cancelled"),
//!         _ = async { /* the work */ } => Ok(()),
//!     }
//! });
//! ```

use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use chrono::{DateTime, Utc};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// A run's identity: unique for the life of the daemon, increasing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RunId(pub u64);

impl fmt::Display for RunId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// Hands out [`RunId`]s, which count the daemon's runs from 1, and tells whoever waits on
/// [`RunIds::limit_reached`] when the run numbered by [`RunIds::set_limit`] starts (`[daemon]
/// max_runs`: the supervisor then recycles the daemon).
#[derive(Debug)]
pub struct RunIds {
    next: AtomicU64,
    /// The run whose start reaches the limit; 0 for none.
    limit: AtomicU64,
    reached: Notify,
}

impl Default for RunIds {
    fn default() -> Self {
        RunIds {
            next: AtomicU64::new(1),
            limit: AtomicU64::new(0),
            reached: Notify::new(),
        }
    }
}

impl RunIds {
    /// A fresh id for a run that starts now.
    pub fn next(&self) -> RunId {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let limit = self.limit.load(Ordering::Relaxed);
        if limit > 0 && id == limit {
            self.reached.notify_one();
        }
        RunId(id)
    }

    /// Sets (or with `None` clears) how many runs reach the limit.
    pub fn set_limit(&self, runs: Option<u64>) {
        self.limit.store(runs.unwrap_or(0), Ordering::Relaxed);
    }

    /// Resolves once the limit's run has started (at once if it started since the last wait).
    pub async fn limit_reached(&self) {
        self.reached.notified().await
    }
}

/// What a handler is told about the run it performs.
#[derive(Debug, Clone)]
pub struct RunContext {
    /// The job's name.
    pub job: Arc<str>,
    /// This run's id (also in every log line of the run).
    pub run_id: RunId,
    /// The wall-clock time the run was due.
    pub scheduled: DateTime<Utc>,
    /// Cancelled when the run must stop: its timeout passed, it is being replaced, or the daemon
    /// is shutting down after the drain timeout. A handler that ignores it is aborted after the
    /// job's `kill_grace`.
    pub cancel: CancellationToken,
    /// With `[cluster]`, for a job that fires once per cluster: which fire this is.
    pub cluster: Option<ClusterFire>,
    /// Whether the job logs each of its runs (`log = "runs"`, the default): a handler that
    /// writes a line per run, like the built-in `log`, writes it only then.
    pub log_runs: bool,
}

/// A fire's identity in a cluster: the same on every node, so a job can make its work
/// idempotent with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterFire {
    /// `job@slot` (the slot in RFC 3339 with milliseconds): `TICKD_FIRE_ID`, and
    /// `Idempotency-Key` on HTTP jobs.
    pub fire_id: String,
    /// The node that runs it: `TICKD_NODE`.
    pub node: Arc<str>,
    /// The epoch of the node's ownership under which it fired.
    pub epoch: i64,
}

/// The error a handler returns; its text is logged as the reason of the failed run.
pub type HandlerError = Box<dyn std::error::Error + Send + Sync>;

/// The future a handler returns.
pub type HandlerFuture = Pin<Box<dyn Future<Output = Result<(), HandlerError>> + Send>>;

/// A registered handler.
pub type HandlerFn = Arc<dyn Fn(RunContext) -> HandlerFuture + Send + Sync>;

/// `handler` as a [`HandlerFn`]: its future boxed, its error made a [`HandlerError`].
pub(crate) fn boxed<F, Fut, E>(handler: F) -> HandlerFn
where
    F: Fn(RunContext) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), E>> + Send + 'static,
    E: Into<HandlerError> + 'static,
{
    Arc::new(move |ctx| {
        let run = handler(ctx);
        Box::pin(async move { run.await.map_err(Into::into) })
    })
}

/// The named handlers a configuration may refer to with `handler = "name"`.
#[derive(Clone, Default)]
pub struct Handlers {
    by_name: BTreeMap<String, HandlerFn>,
}

impl fmt::Debug for Handlers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(self.by_name.keys()).finish()
    }
}

impl Handlers {
    /// No handlers at all.
    pub fn new() -> Self {
        Self::default()
    }

    /// The handlers the `tickd` binary ships: `log`, which writes one log line per run.
    pub fn with_builtins() -> Self {
        let mut handlers = Self::new();
        handlers.register("log", |ctx: RunContext| async move {
            if !ctx.log_runs {
                return Ok(());
            }
            tracing::info!(job = %ctx.job, run = %ctx.run_id, scheduled = %crate::logging::Timestamp(ctx.scheduled), "tick");
            Ok::<(), HandlerError>(())
        });
        handlers
    }

    /// Registers (or replaces) the handler called `name`. It may fail with any error that
    /// converts into a [`HandlerError`]: `anyhow::Error` (so `anyhow::bail!` works), a
    /// `thiserror` type, a `String`, a `Box<dyn Error + Send + Sync>`.
    ///
    /// A handler whose body names no error type at all (only `Ok(())`, or `?` alone) leaves the
    /// compiler to ask which: say it with `Ok::<(), tickd::HandlerError>(())`, or write the
    /// handler as an `async fn` returning `anyhow::Result<()>` or another `Result`.
    ///
    /// ```
    /// let mut handlers = tickd::Handlers::new();
    /// handlers.register("flush", |ctx: tickd::RunContext| async move {
    ///     if ctx.cancel.is_cancelled() {
    ///         anyhow::bail!("cancelled before it started");
    ///     }
    ///     Ok(())
    /// });
    /// async fn report(_ctx: tickd::RunContext) -> Result<(), std::io::Error> {
    ///     Ok(())
    /// }
    /// handlers.register("report", report);
    /// assert!(handlers.contains("flush") && handlers.contains("report"));
    /// ```
    pub fn register<F, Fut, E>(&mut self, name: impl Into<String>, handler: F) -> &mut Self
    where
        F: Fn(RunContext) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), E>> + Send + 'static,
        E: Into<HandlerError> + 'static,
    {
        self.by_name.insert(name.into(), boxed(handler));
        self
    }

    /// The handler called `name`.
    pub fn get(&self, name: &str) -> Option<HandlerFn> {
        self.by_name.get(name).cloned()
    }

    /// The handler registered as `name`, borrowed (no reference count touched per run).
    pub(crate) fn find(&self, name: &str) -> Option<&HandlerFn> {
        self.by_name.get(name)
    }

    /// Whether a handler called `name` is registered.
    pub fn contains(&self, name: &str) -> bool {
        self.by_name.contains_key(name)
    }

    /// The registered names, sorted.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.by_name.keys().map(String::as_str)
    }
}
