//! Maps the process's OS signals to [`Control`] messages for [`crate::run`].
//!
//! The daemon itself never installs signal handlers: a program passes this receiver (the binary
//! does), or any channel of its own (tests do).

use nix::sys::signal::{SigSet, Signal};
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::mpsc;

use crate::daemon::Control;

/// What each signal tickd listens for means. Every signal whose default action would end the
/// daemon without a word and that a user or a tool may plausibly send has a meaning here;
/// README's "Signals" section documents the table.
#[derive(Debug, Clone)]
enum Meaning {
    /// A control for the daemon.
    Control(Control),
    /// Logged and otherwise ignored (logrotate's habit of sending SIGUSR2, a stray alarm).
    Ignore,
}

/// The signals [`os_controls`] handles, with their meaning.
const SIGNALS: [(Signal, Meaning); 7] = [
    (Signal::SIGTERM, Meaning::Control(Control::Shutdown)),
    (Signal::SIGINT, Meaning::Control(Control::Shutdown)),
    // As supercronic does: a drain, not a core dump (the default) that kills the runs.
    (Signal::SIGQUIT, Meaning::Control(Control::Shutdown)),
    (Signal::SIGHUP, Meaning::Control(Control::Reload)),
    // As PHP-Daemon does: a status summary in the log.
    (Signal::SIGUSR1, Meaning::Control(Control::Report)),
    (Signal::SIGUSR2, Meaning::Ignore),
    (Signal::SIGALRM, Meaning::Ignore),
];

/// The signals [`os_controls`] handles, as a set.
fn control_signals() -> SigSet {
    SIGNALS.iter().map(|(signal, _)| *signal).collect()
}

/// Blocks the signals tickd handles (SIGTERM, SIGINT, SIGQUIT, SIGHUP, SIGUSR1, SIGUSR2,
/// SIGALRM) on the calling thread, and so on every thread it starts afterwards: call it on the
/// main thread before any other thread starts (the runtime's, and a log writer's too: a thread
/// started earlier does not block them), then [`os_controls`] from that same thread.
///
/// Why: tokio drops a signal that its driver (on any worker thread) handles between installing
/// the handler and subscribing the listener, so a SIGTERM in the first milliseconds could be
/// lost and the daemon would never stop. Blocked, such a signal stays pending until
/// [`os_controls`] unblocks it with its listeners in place.
pub fn hold_control_signals() -> nix::Result<()> {
    control_signals().thread_block()
}

/// Installs handlers for SIGTERM, SIGINT and SIGQUIT (→ [`Control::Shutdown`]), SIGHUP
/// (→ [`Control::Reload`]) and SIGUSR1 (→ [`Control::Report`]); SIGUSR2 and SIGALRM are logged
/// and ignored. Returns the stream of controls. Call it from within a tokio runtime, as early as
/// possible: until it runs, those signals have their default, fatal, effect (or, after
/// [`hold_control_signals`], wait). It unblocks them on the calling thread last.
pub fn os_controls() -> std::io::Result<mpsc::Receiver<Control>> {
    let mut streams = Vec::with_capacity(SIGNALS.len());
    for (sig, meaning) in SIGNALS {
        streams.push((sig, meaning, signal(SignalKind::from_raw(sig as i32))?));
    }
    let (tx, rx) = mpsc::channel(64);
    tokio::spawn(async move {
        loop {
            // The first signal that arrives, of any kind.
            let (sig, meaning) = std::future::poll_fn(|cx| {
                for (sig, meaning, stream) in &mut streams {
                    if stream.poll_recv(cx).is_ready() {
                        return std::task::Poll::Ready((*sig, meaning.clone()));
                    }
                }
                std::task::Poll::Pending
            })
            .await;
            match meaning {
                Meaning::Control(control) => {
                    tracing::debug!(signal = %crate::action::signal_name(sig as i32), "signal received");
                    if tx.send(control).await.is_err() {
                        break;
                    }
                }
                Meaning::Ignore => {
                    tracing::info!(signal = %crate::action::signal_name(sig as i32), "signal received; it has no meaning to tickd and is ignored");
                }
            }
        }
    });
    control_signals().thread_unblock()?;
    Ok(rx)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signal_that_arrives_before_the_listeners_waits_for_them() {
        hold_control_signals().expect("block");
        // Sent to this thread, which blocks it: without the hold, this would end the test run.
        nix::sys::signal::raise(Signal::SIGTERM).expect("raise");
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let control = runtime.block_on(async {
            let mut controls = os_controls().expect("controls");
            tokio::time::timeout(std::time::Duration::from_secs(30), controls.recv()).await
        });
        assert!(
            matches!(control, Ok(Some(Control::Shutdown))),
            "{control:?}"
        );
    }
}
