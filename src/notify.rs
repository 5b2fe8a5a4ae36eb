//! The systemd notify protocol (`sd_notify`), spoken over the datagram socket named by
//! `NOTIFY_SOCKET`: READY, RELOADING, STOPPING, STATUS and WATCHDOG messages. Written by hand:
//! it is one `sendto` of a few `KEY=VALUE` lines, and needs no libsystemd.

use std::io;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::sync::Arc;
use std::time::Duration;

/// A handle on the service manager's notification socket. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Notifier {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    socket: UnixDatagram,
    address: SocketAddr,
    watchdog: Option<Duration>,
}

impl Notifier {
    /// The notifier systemd (or anything speaking its protocol) asked for through
    /// `NOTIFY_SOCKET`, with the watchdog interval from `WATCHDOG_USEC` (when `WATCHDOG_PID` is
    /// unset or names this process). `None` when not run under such a manager.
    pub fn from_env() -> io::Result<Option<Notifier>> {
        let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
            return Ok(None);
        };
        let path = path.to_string_lossy().into_owned();
        let address = match path.strip_prefix('@') {
            Some(name) => {
                use std::os::linux::net::SocketAddrExt;
                SocketAddr::from_abstract_name(name.as_bytes())?
            }
            None => SocketAddr::from_pathname(&path)?,
        };
        let watchdog = Self::watchdog_from_env();
        Notifier::to(address, watchdog).map(Some)
    }

    /// A notifier for the socket at `path` whose manager expects a `WATCHDOG=1` within every
    /// `watchdog` (systemd's `WatchdogSec`), if any: for a program that runs tickd under a
    /// manager of its own, and for tests.
    pub fn new(path: &std::path::Path, watchdog: Option<Duration>) -> io::Result<Notifier> {
        Notifier::to(SocketAddr::from_pathname(path)?, watchdog)
    }

    fn to(address: SocketAddr, watchdog: Option<Duration>) -> io::Result<Notifier> {
        let socket = UnixDatagram::unbound()?;
        // A manager that does not read (its queue holds ~10 datagrams) must never block the
        // supervisor's loop: a message that does not fit is dropped (and logged at debug).
        socket.set_nonblocking(true)?;
        Ok(Notifier {
            inner: Arc::new(Inner {
                socket,
                address,
                watchdog,
            }),
        })
    }

    /// `WATCHDOG_USEC`, when `WATCHDOG_PID` is unset or names this process.
    fn watchdog_from_env() -> Option<Duration> {
        let for_us = std::env::var("WATCHDOG_PID")
            .ok()
            .and_then(|pid| pid.parse::<u32>().ok())
            .is_none_or(|pid| pid == std::process::id());
        std::env::var("WATCHDOG_USEC")
            .ok()
            .and_then(|usec| usec.parse::<u64>().ok())
            .filter(|usec| *usec > 0 && for_us)
            .map(Duration::from_micros)
    }

    /// How often to send `WATCHDOG=1`: half the manager's timeout, as systemd recommends.
    pub fn watchdog_interval(&self) -> Option<Duration> {
        self.inner.watchdog.map(|timeout| timeout / 2)
    }

    /// Sends one message (`KEY=VALUE` lines). A manager that went away is not our problem: the
    /// error is logged at debug level.
    pub fn send(&self, message: &str) {
        if let Err(err) = self
            .inner
            .socket
            .send_to_addr(message.as_bytes(), &self.inner.address)
        {
            tracing::debug!("cannot notify the service manager: {err}");
        }
    }
}
