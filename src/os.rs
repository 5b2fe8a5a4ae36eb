//! The only module with `unsafe` code: what a child process does between `fork` and `exec`, and
//! handing a timerfd to tokio's reactor.
#![allow(unsafe_code)]

use std::io;
use std::os::fd::{AsFd, AsRawFd, RawFd};

use nix::sys::timerfd::TimerFd;
use tokio::io::unix::AsyncFd;

/// A timerfd owned by its `AsyncFd`, so the descriptor stays open and the same for as long as
/// the reactor watches it.
#[derive(Debug)]
pub struct OwnedTimerFd(TimerFd);

impl OwnedTimerFd {
    /// The timer itself.
    pub fn timer(&self) -> &TimerFd {
        &self.0
    }
}

impl AsRawFd for OwnedTimerFd {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_fd().as_raw_fd()
    }
}

/// Registers a timerfd with the current tokio reactor (read interest only).
pub fn watch_timerfd(fd: TimerFd) -> io::Result<AsyncFd<OwnedTimerFd>> {
    // SAFETY: `OwnedTimerFd` owns the descriptor (an `OwnedFd` inside `TimerFd`) and never
    // replaces it, so it stays valid and the same until the `AsyncFd` is dropped.
    unsafe {
        AsyncFd::register_with_interest(OwnedTimerFd(fd), tokio::io::Interest::READABLE)
            .map_err(|e| e.into_parts().1)
    }
}

/// Runs in the forked child before `exec`, so it may only call async-signal-safe functions (raw
/// syscalls through `libc`): no allocation, no locks. Arranges for `command`'s child to:
/// - receive SIGKILL when the thread that forked it exits (`PR_SET_PDEATHSIG`). The caller forks
///   only from a thread that lives as long as the daemon (see `process::Spawner`), so this means
///   "when the daemon dies"; a daemon that died before the `prctl` is caught by the `getppid` check;
/// - start with default dispositions for every signal and an empty signal mask, whatever the
///   daemon inherited (a `nohup`ed daemon ignores SIGHUP, which `exec` would otherwise pass on);
/// - inherit no descriptor but 0, 1 and 2 (tickd opens everything close-on-exec, but a descriptor
///   the daemon itself inherited from its parent would otherwise leak into every job).
///
/// With `run_as`, it first takes that user's groups, group and user id (as `initgroups`,
/// `setgid`, `setuid` would): the parent-death signal is cleared by a change of credentials, so
/// it is set after.
pub fn harden_child(command: &mut tokio::process::Command, run_as: Option<&crate::config::RunAs>) {
    let daemon_pid = std::process::id();
    // Prepared before the fork: the child may not allocate.
    let credentials: Option<(Vec<libc::gid_t>, libc::gid_t, libc::uid_t)> =
        run_as.map(|r| (r.groups.clone(), r.gid, r.uid));
    let harden = move || -> io::Result<()> {
        // SAFETY: only async-signal-safe syscalls with valid arguments; no memory is allocated.
        unsafe {
            if let Some((groups, gid, uid)) = &credentials {
                if libc::setgroups(groups.len(), groups.as_ptr()) != 0
                    || libc::setgid(*gid) != 0
                    || libc::setuid(*uid) != 0
                {
                    return Err(io::Error::last_os_error());
                }
            }
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) != 0 {
                return Err(io::Error::last_os_error());
            }
            if libc::getppid() as u32 != daemon_pid {
                // The daemon is already gone: do not run a job nobody will reap or stop.
                libc::_exit(111);
            }
            // The raw syscall, not libc's `signal()`: glibc refuses to touch signals 32 and 33
            // (reserved for its threads), yet a parent may have left them ignored. An all-zero
            // kernel `struct sigaction` is SIG_DFL with no flags and an empty mask (large enough
            // for every architecture's layout).
            let default_action = [0u64; 4];
            for signal in 1..=64 {
                if signal != libc::SIGKILL && signal != libc::SIGSTOP {
                    libc::syscall(
                        libc::SYS_rt_sigaction,
                        signal,
                        default_action.as_ptr(),
                        std::ptr::null_mut::<libc::c_void>(),
                        8usize,
                    );
                }
            }
            let mut empty: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut empty);
            libc::pthread_sigmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut());
            // close_range(3, ~0, CLOSE_RANGE_CLOEXEC): Linux >= 5.11; on older kernels the
            // descriptors inherited from our own parent stay as they were.
            const CLOSE_RANGE_CLOEXEC: libc::c_uint = 1 << 2;
            libc::syscall(
                libc::SYS_close_range,
                3 as libc::c_uint,
                libc::c_uint::MAX,
                CLOSE_RANGE_CLOEXEC,
            );
        }
        Ok(())
    };
    // SAFETY: the closure above only makes async-signal-safe calls.
    unsafe {
        command.pre_exec(harden);
    }
}
