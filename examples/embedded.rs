//! tickd as a library: register your own in-process handlers and run the daemon on a TOML file.
//!
//! ```sh
//! cargo run --example embedded -- examples/embedded.toml
//! ```
//!
//! The file may use `handler = "count-orders"` next to the built-in `log`.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tickd::{Clock, DaemonOptions, Handlers, RunContext, Stopped};

fn main() -> anyhow::Result<std::process::ExitCode> {
    // Held before any thread exists, so none of them takes a SIGTERM that tokio would drop
    // before it listens; `os_controls` (on this same thread) lets them through.
    tickd::signals::hold_control_signals()?;
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .init();
    tokio::runtime::Runtime::new()?.block_on(run())
}

async fn run() -> anyhow::Result<std::process::ExitCode> {
    // Signals first, so an early SIGTERM is handled, not fatal.
    let controls = tickd::signals::os_controls()?;
    let path = PathBuf::from(
        std::env::args()
            .nth(1)
            .unwrap_or_else(|| "examples/embedded.toml".to_owned()),
    );

    let processed = Arc::new(AtomicU64::new(0));
    let mut handlers = Handlers::with_builtins();
    let counter = processed.clone();
    handlers.register("count-orders", move |ctx: RunContext| {
        let counter = counter.clone();
        async move {
            // Real work would go here; it must give up when the token is cancelled (timeout,
            // replace, or shutdown after the drain timeout).
            tokio::select! {
                _ = ctx.cancel.cancelled() => anyhow::bail!("cancelled"),
                _ = tokio::time::sleep(Duration::from_millis(50)) => {}
            }
            let total = counter.fetch_add(1, Ordering::Relaxed) + 1;
            tracing::info!(job = %ctx.job, run = %ctx.run_id, total, "orders counted");
            Ok(())
        }
    });

    let config = tickd::load(&path, &handlers)?;
    let options = DaemonOptions {
        config_path: path,
        handlers,
        clock: Clock::system(),
        group_keeper: None,
        notifier: None,
        subreaper: false,
    };
    let stopped = tickd::run(config, options, controls).await?;
    tracing::info!(runs = processed.load(Ordering::Relaxed), "example stopped");
    Ok(match stopped {
        Stopped::Drained => std::process::ExitCode::SUCCESS,
        Stopped::RunsStopped => std::process::ExitCode::from(3),
        Stopped::Recycled { .. } => std::process::ExitCode::from(75),
    })
}
