//! Maps the process's OS signals to [`Control`] messages for [`crate::run`].
//!
//! The daemon itself never installs signal handlers: a program passes this receiver (the binary
//! does), or any channel of its own (tests do).

use nix::sys::signal::{SigSet, Signal};
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::mpsc;

use crate::daemon::Control;

/// The signals [`os_controls`] turns into controls.
fn control_signals() -> SigSet {
    [Signal::SIGTERM, Signal::SIGINT, Signal::SIGHUP]
        .into_iter()
        .collect()
}

/// Blocks SIGTERM, SIGINT and SIGHUP on the calling thread, and so on every thread it starts
/// afterwards: call it before building the runtime, then [`os_controls`] from that same thread.
///
/// Why: tokio drops a signal that its driver (on any worker thread) handles between installing
/// the handler and subscribing the listener, so a SIGTERM in the first milliseconds could be
/// lost and the daemon would never stop. Blocked, such a signal stays pending until
/// [`os_controls`] unblocks it with its listeners in place.
pub fn hold_control_signals() -> nix::Result<()> {
    control_signals().thread_block()
}

/// Installs handlers for SIGTERM and SIGINT (→ [`Control::Shutdown`]) and SIGHUP
/// (→ [`Control::Reload`]) and returns the stream of controls. Call it from within a tokio
/// runtime, as early as possible: until it runs, those signals have their default, fatal, effect
/// (or, after [`hold_control_signals`], wait). It unblocks them on the calling thread last.
pub fn os_controls() -> std::io::Result<mpsc::Receiver<Control>> {
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut hup = signal(SignalKind::hangup())?;
    let (tx, rx) = mpsc::channel(64);
    tokio::spawn(async move {
        loop {
            let control = tokio::select! {
                _ = term.recv() => Control::Shutdown,
                _ = int.recv() => Control::Shutdown,
                _ = hup.recv() => Control::Reload,
            };
            tracing::debug!(?control, "signal received");
            if tx.send(control).await.is_err() {
                break;
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
