//! The only module with `unsafe` code: what a child process does to itself before it becomes the
//! job's program, and handing a timerfd to tokio's reactor.
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

/// What a child does to itself before it becomes the job's program, on either spawn path: in the
/// forked child before `exec` (the fallback, see `process::Spawner`) or in `tickd __exec` (the exec
/// helper). Everything in [`Hardening::apply`] is async-signal-safe (raw syscalls, no allocation,
/// no locks), so the same code is correct in a child forked from the multi-threaded daemon.
///
/// A hardened child:
/// - runs as `run_as`, if given: that user's groups, group and user id (as `initgroups`,
///   `setgid`, `setuid` would), taken first because a change of credentials clears the
///   parent-death signal;
/// - receives SIGKILL when the thread that started it exits (`PR_SET_PDEATHSIG`). Children are
///   started only from a thread that lives as long as the daemon (see `process::Spawner`), so this
///   means "when the daemon dies"; a daemon that died before the `prctl` is caught by the `getppid`
///   check, and the child exits with [`Hardening::ORPHANED`];
/// - starts with default dispositions for every signal and an empty signal mask, whatever the
///   daemon inherited (a `nohup`ed daemon ignores SIGHUP, which `exec` would otherwise pass on);
/// - inherits no descriptor but 0, 1 and 2 (tickd opens everything close-on-exec, but a descriptor
///   the daemon itself inherited from its parent would otherwise leak into every job).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hardening {
    /// The daemon's pid: the child's parent, as long as the daemon lives.
    pub daemon_pid: u32,
    /// `(groups, gid, uid)` to take, for `run_as`.
    pub credentials: Option<(Vec<libc::gid_t>, libc::gid_t, libc::uid_t)>,
}

/// The step of [`Hardening::apply`] that failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HardeningStep {
    /// Taking the `run_as` user's groups and ids.
    Credentials,
    /// Setting the parent-death signal.
    ParentDeathSignal,
}

impl Hardening {
    /// The exit code of a child whose daemon died before it could run the job.
    pub const ORPHANED: i32 = 111;

    /// Applies the hardening to the calling process; see [`Hardening`]. Async-signal-safe.
    pub fn apply(&self) -> Result<(), (HardeningStep, io::Error)> {
        // SAFETY: only async-signal-safe syscalls with valid arguments; no memory is allocated.
        unsafe {
            if let Some((groups, gid, uid)) = &self.credentials {
                if libc::setgroups(groups.len(), groups.as_ptr()) != 0
                    || libc::setgid(*gid) != 0
                    || libc::setuid(*uid) != 0
                {
                    return Err((HardeningStep::Credentials, io::Error::last_os_error()));
                }
            }
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) != 0 {
                return Err((HardeningStep::ParentDeathSignal, io::Error::last_os_error()));
            }
            if libc::getppid() as u32 != self.daemon_pid {
                // The daemon is already gone: do not run a job nobody will reap or stop.
                libc::_exit(Self::ORPHANED);
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
    }

    /// Arranges for `command`'s child to apply this hardening between `fork` and `exec` (the
    /// fork path: `std` then forks instead of using `posix_spawn`).
    pub fn before_exec(self, command: &mut tokio::process::Command) {
        // SAFETY: `apply` only makes async-signal-safe calls.
        unsafe {
            command.pre_exec(move || self.apply().map_err(|(_, err)| err));
        }
    }
}

/// In the exec helper: moves the report pipe the daemon passed as descriptor 0 out of the way
/// (close-on-exec, so a successful `exec` closes it and the daemon reads EOF) and puts
/// `/dev/null` on descriptor 0, the job's stdin.
pub fn take_report_pipe() -> io::Result<std::fs::File> {
    use std::os::fd::FromRawFd;
    // SAFETY: plain descriptor syscalls; the duplicate is a fresh descriptor nobody else owns,
    // handed to the `File` that closes it.
    unsafe {
        let report = libc::fcntl(0, libc::F_DUPFD_CLOEXEC, 3);
        if report < 0 {
            return Err(io::Error::last_os_error());
        }
        let report = std::fs::File::from_raw_fd(report);
        let null = libc::open(c"/dev/null".as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC);
        if null < 0 || libc::dup2(null, 0) < 0 {
            return Err(io::Error::last_os_error());
        }
        libc::close(null);
        Ok(report)
    }
}
