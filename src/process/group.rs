//! Signals to a run's process group, and whether anything in it still lives.
//!
//! Shared by the supervision of a run and the group keeper; it reads `/proc` only through
//! [`super::procfs`].

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;

use super::procfs;

/// SIGTERM, then SIGCONT so that a stopped process sees it.
pub(super) fn terminate(group: Pid) {
    signal_group(group, Signal::SIGTERM);
    signal_group(group, Signal::SIGCONT);
}

/// Signals a process group; a group that no longer exists is not an error.
pub(super) fn signal_group(group: Pid, signal: Signal) {
    match killpg(group, signal) {
        Ok(()) | Err(nix::errno::Errno::ESRCH) => {}
        Err(err) => {
            tracing::warn!(pgid = group.as_raw(), %signal, "cannot signal process group: {err}")
        }
    }
}

/// Whether a live process is left in `group`. `killpg(group, 0)` also succeeds for a zombie (one
/// whose new parent, PID 1, has not reaped it yet; one that never reaps would make every run
/// wait its `kill_grace`), so a hit is checked against `/proc`: a zombie is not alive.
fn group_alive(group: Pid) -> bool {
    if killpg(group, None).is_err() {
        return false;
    }
    // Without a readable /proc, trust killpg: alive.
    procfs::group_has_live_member(group).unwrap_or(true)
}

/// [`group_alive`] off the workers: its scan of `/proc` is polled often while leftovers are
/// stopped.
pub(super) async fn group_alive_off_workers(group: Pid) -> bool {
    crate::blocking::off_the_workers("a process group check", move || group_alive(group)).await
}
