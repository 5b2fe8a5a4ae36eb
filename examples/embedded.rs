//! tickd as a library: jobs from a TOML file and from code, with your own in-process handlers.
//!
//! ```sh
//! cargo run --example embedded -- examples/embedded.toml
//! ```
//!
//! The file may use `handler = "count-orders"` next to the built-in `log`; the job `flush`
//! comes from code. Stop it with Ctrl-C: runs in flight are drained.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tickd::{Daemon, Every, RunContext, Stopped};

fn main() -> anyhow::Result<std::process::ExitCode> {
    let path = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "examples/embedded.toml".to_owned());
    let processed = Arc::new(AtomicU64::new(0));
    let counter = processed.clone();
    let stopped = Daemon::from_file(path)
        .handler("count-orders", move |ctx: RunContext| {
            let counter = counter.clone();
            async move {
                // Real work would go here; it must give up when the token is cancelled
                // (timeout, replace, or shutdown after the drain timeout).
                tokio::select! {
                    _ = ctx.cancel.cancelled() => anyhow::bail!("cancelled"),
                    _ = tokio::time::sleep(Duration::from_millis(50)) => {}
                }
                let total = counter.fetch_add(1, Ordering::Relaxed) + 1;
                tracing::info!(job = %ctx.job, run = %ctx.run_id, total, "orders counted");
                Ok(())
            }
        })
        .job("flush", Every::secs(5), |ctx: RunContext| async move {
            tracing::info!(job = %ctx.job, run = %ctx.run_id, "cache flushed");
            anyhow::Ok(())
        })
        // Holds the signals, builds the runtime, logs to stderr (TICKD_LOG), runs until stopped.
        .run_blocking()?;
    tracing::info!(runs = processed.load(Ordering::Relaxed), "example stopped");
    Ok(match stopped {
        Stopped::Drained => std::process::ExitCode::SUCCESS,
        Stopped::RunsStopped => std::process::ExitCode::from(3),
        Stopped::Recycled { .. } => std::process::ExitCode::from(75),
    })
}
