//! Maps the process's OS signals to [`Control`] messages for [`crate::run`].
//!
//! The daemon itself never installs signal handlers: a program passes this receiver (the binary
//! does), or any channel of its own (tests do).

use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::mpsc;

use crate::daemon::Control;

/// Installs handlers for SIGTERM and SIGINT (→ [`Control::Shutdown`]) and SIGHUP
/// (→ [`Control::Reload`]) and returns the stream of controls. Call it from within a tokio
/// runtime, as early as possible: until it runs, those signals have their default, fatal, effect.
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
    Ok(rx)
}
