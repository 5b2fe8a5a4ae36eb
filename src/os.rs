//! The only module with `unsafe` code: what a child process does to itself before it becomes the
//! job's program, handing a timerfd to tokio's reactor, giving freed memory back, and the
//! prefetch hint the dispatcher reads a batch's jobs ahead with.
#![allow(unsafe_code)]

use std::ffi::{CString, OsString};
use std::io;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::Path;

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

/// Gives the memory the allocator holds free back to the system, where the allocator can
/// (glibc's `malloc_trim`; elsewhere nothing).
pub fn return_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: `malloc_trim` only returns free pages of glibc's own heap; it takes no pointer.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Restores the default disposition of SIGCHLD. A parent that left it ignored would make the
/// kernel reap our children itself, and their exit statuses would be lost.
pub fn default_sigchld() {
    // SAFETY: installs SIG_DFL, which runs no code of ours.
    unsafe {
        libc::signal(libc::SIGCHLD, libc::SIG_DFL);
    }
}

/// Registers a child's pidfd with the current tokio reactor (readable once the child exits).
pub fn watch_pidfd(fd: OwnedFd) -> io::Result<AsyncFd<OwnedFd>> {
    // SAFETY: the `OwnedFd` owns the descriptor and cannot replace it, so it stays valid and the
    // same until the `AsyncFd` is dropped.
    unsafe {
        AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE)
            .map_err(|e| e.into_parts().1)
    }
}

/// What a child does to itself before it becomes the job's program (in [`spawn_hardened`]'s
/// child, between the clone and `execve`). Everything in [`Hardening::apply`] is
/// async-signal-safe (raw syscalls, no allocation, no locks): the child shares the memory of the
/// multi-threaded daemon, whose other threads may hold any lock.
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
/// - starts with `descriptor_limit` as its `RLIMIT_NOFILE`, if given (the limit the daemon was
///   started with, before it raised its own: see `process::set_child_descriptor_limit`);
/// - inherits no descriptor but 0, 1 and 2 (tickd opens everything close-on-exec, but a descriptor
///   the daemon itself inherited from its parent would otherwise leak into every job).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hardening {
    /// The daemon's pid: the child's parent, as long as the daemon lives.
    pub daemon_pid: u32,
    /// `(groups, gid, uid)` to take, for `run_as`.
    pub credentials: Option<(Vec<libc::gid_t>, libc::gid_t, libc::uid_t)>,
    /// `(soft, hard)` descriptor limit to take instead of the daemon's.
    pub descriptor_limit: Option<(u64, u64)>,
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
                // Raw syscalls, not glibc's wrappers: those change the credentials of every
                // thread they know of (the SIGSETXID broadcast), and this child shares the
                // daemon's memory, thread list included. The kernel calls change this task only.
                if libc::syscall(libc::SYS_setgroups, groups.len(), groups.as_ptr()) != 0
                    || libc::syscall(libc::SYS_setresgid, *gid, *gid, *gid) != 0
                    || libc::syscall(libc::SYS_setresuid, *uid, *uid, *uid) != 0
                {
                    return Err((HardeningStep::Credentials, io::Error::last_os_error()));
                }
            }
            if let Some((soft, hard)) = self.descriptor_limit {
                // prlimit64 on ourselves (pid 0): a raw syscall, async-signal-safe. The kernel's
                // `struct rlimit64` is two u64s, current (soft) then maximum (hard). A failure is
                // ignored: lowering the soft limit below the hard one cannot fail, and a child
                // left with the daemon's larger limit still runs.
                let limit: [u64; 2] = [soft, hard];
                libc::syscall(
                    libc::SYS_prlimit64,
                    0 as libc::pid_t,
                    libc::RLIMIT_NOFILE,
                    limit.as_ptr(),
                    std::ptr::null_mut::<[u64; 2]>(),
                );
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
}

/// Everything [`spawn_hardened`] needs, prepared (allocated) before the clone: the child may not
/// allocate.
#[derive(Debug)]
pub struct ExecPlan {
    program: CString,
    argv: Vec<CString>,
    envp: Vec<CString>,
    cwd: Option<CString>,
    /// Descriptors to put on 0, 1 and 2 (`None`: keep the daemon's own).
    stdio: [Option<OwnedFd>; 3],
    hardening: Hardening,
}

/// The step of [`spawn_hardened`]'s child that failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpawnStep {
    /// Creating the process (`EAGAIN`: a process limit is reached).
    Create,
    /// Putting the descriptors on 0, 1, 2, or making a new process group.
    Setup,
    /// Changing to the working directory.
    WorkingDirectory,
    /// A step of [`Hardening::apply`].
    Hardening(HardeningStep),
    /// `execve` itself.
    Exec,
}

impl ExecPlan {
    /// A plan to run `program` (a path: resolved from `PATH` by the caller) with `argv` (the
    /// program name first) and exactly the environment `env`.
    pub fn new(
        program: &Path,
        argv: &[String],
        env: impl IntoIterator<Item = (OsString, OsString)>,
        cwd: Option<&Path>,
        stdio: [Option<OwnedFd>; 3],
        hardening: Hardening,
    ) -> io::Result<Self> {
        let c = |bytes: &[u8]| {
            CString::new(bytes).map_err(|_| {
                io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "a NUL byte in a command or variable",
                )
            })
        };
        Ok(ExecPlan {
            program: c(program.as_os_str().as_bytes())?,
            argv: argv
                .iter()
                .map(|a| c(a.as_bytes()))
                .collect::<Result<_, _>>()?,
            envp: env
                .into_iter()
                .map(|(name, value)| {
                    let mut pair = name.into_vec();
                    pair.push(b'=');
                    pair.extend_from_slice(value.as_bytes());
                    c(&pair)
                })
                .collect::<Result<_, _>>()?,
            cwd: cwd.map(|d| c(d.as_os_str().as_bytes())).transpose()?,
            stdio,
            hardening,
        })
    }
}

/// Starts `plan` as a child in a new process group, the way glibc's `posix_spawn` does: a
/// `clone(CLONE_VM | CLONE_VFORK)` child borrows the daemon's memory (and `stack`) until its
/// `execve`, so the daemon's page tables are neither copied nor write-protected. A `fork` of the
/// multi-threaded daemon write-protects every page, and the copy-on-write faults that follow
/// stalled in-process jobs by milliseconds per spawn (bench `inproc-100x5hz-with-children`);
/// `posix_spawn` itself cannot change credentials or set the parent-death signal, so this is
/// written by hand.
///
/// The calling thread must block every signal (the child inherits the mask and resets every
/// disposition before unblocking, so no daemon signal handler ever runs in it). Returns the
/// child's pid and a pidfd for it, or the step that failed and its error.
pub fn spawn_hardened(
    plan: &ExecPlan,
    stack: &mut [u8],
) -> Result<(i32, OwnedFd), (SpawnStep, io::Error)> {
    use std::sync::atomic::{AtomicI32, Ordering};
    // Written by the child (same memory), read after it has exec'd or exited (CLONE_VFORK).
    let failed_step = AtomicI32::new(-1);
    let failed_errno = AtomicI32::new(0);
    let mut argv: Vec<*const libc::c_char> = plan.argv.iter().map(|a| a.as_ptr()).collect();
    argv.push(std::ptr::null());
    let mut envp: Vec<*const libc::c_char> = plan.envp.iter().map(|e| e.as_ptr()).collect();
    envp.push(std::ptr::null());
    let stdio: [libc::c_int; 3] =
        std::array::from_fn(|i| plan.stdio[i].as_ref().map_or(-1, |fd| fd.as_raw_fd()));
    let child = || -> isize {
        let fail = |step: i32| -> isize {
            failed_errno.store(
                io::Error::last_os_error().raw_os_error().unwrap_or(0),
                Ordering::Relaxed,
            );
            failed_step.store(step, Ordering::Relaxed);
            // SAFETY: `_exit` is async-signal-safe and never returns.
            unsafe { libc::_exit(127) }
        };
        // SAFETY: async-signal-safe syscalls on descriptors and C strings the parent keeps alive
        // (it is suspended until we exec or exit); nothing here allocates.
        unsafe {
            if libc::setpgid(0, 0) != 0 {
                return fail(0);
            }
            for (target, &source) in stdio.iter().enumerate() {
                // dup2 onto a different number clears close-on-exec; the sources keep it.
                if source >= 0 && libc::dup2(source, target as libc::c_int) < 0 {
                    return fail(0);
                }
            }
            if let Some(cwd) = &plan.cwd {
                if libc::chdir(cwd.as_ptr()) != 0 {
                    return fail(1);
                }
            }
            if let Err((step, err)) = plan.hardening.apply() {
                failed_errno.store(err.raw_os_error().unwrap_or(0), Ordering::Relaxed);
                failed_step.store(2 + step as i32, Ordering::Relaxed);
                libc::_exit(127);
            }
            libc::execve(plan.program.as_ptr(), argv.as_ptr(), envp.as_ptr());
            fail(9)
        }
    };
    // The descriptor the child's pidfd will take, reserved before the child starts: at the
    // descriptor limit (EMFILE) the run then fails before anything ran, instead of after the
    // child had exec'd (when it ran unwatched, was never reaped, and a retry ran it twice).
    let reserved = std::fs::File::open("/dev/null").map_err(|err| (SpawnStep::Setup, err))?;
    // SAFETY: CLONE_VM | CLONE_VFORK: the child runs on `stack`, shares our memory and keeps us
    // suspended until it execs or exits, so everything it borrows stays valid; it makes only
    // async-signal-safe calls (above).
    let pid = unsafe {
        nix::sched::clone(
            Box::new(child),
            stack,
            nix::sched::CloneFlags::CLONE_VM | nix::sched::CloneFlags::CLONE_VFORK,
            Some(libc::SIGCHLD),
        )
    }
    .map_err(|errno| (SpawnStep::Create, io::Error::from(errno)))?
    .as_raw();
    let step = failed_step.load(Ordering::Relaxed);
    if step >= 0 {
        let err = io::Error::from_raw_os_error(failed_errno.load(Ordering::Relaxed));
        // The child has exited (it only returns from the clone by exec or exit): reap it.
        let _ = nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(pid), None);
        let step = match step {
            0 => SpawnStep::Setup,
            1 => SpawnStep::WorkingDirectory,
            2 => SpawnStep::Hardening(HardeningStep::Credentials),
            3 => SpawnStep::Hardening(HardeningStep::ParentDeathSignal),
            _ => SpawnStep::Exec,
        };
        return Err((step, err));
    }
    drop(reserved);
    match pidfd_open(pid) {
        Ok(fd) => Ok((pid, fd)),
        Err(err) => {
            // Another thread took the reserved descriptor: a child we cannot watch is not left
            // running unsupervised (its own group, so this reaches what it started too).
            let _ = nix::sys::signal::killpg(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
            let _ = nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(pid), None);
            Err((SpawnStep::Setup, err))
        }
    }
}

/// A pidfd for our child `pid` (Linux >= 5.3): readable once it has exited.
fn pidfd_open(pid: i32) -> io::Result<OwnedFd> {
    // SAFETY: a plain syscall; on success the descriptor is new and ours alone.
    unsafe {
        let fd = libc::syscall(libc::SYS_pidfd_open, pid, 0);
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(OwnedFd::from_raw_fd(fd as RawFd))
    }
}

/// Asks the CPU to bring `*value` and the 16 bytes before it (where an `Arc` keeps its counts),
/// 512 bytes at most in all, into its caches for a read soon, line by line from those 16 (a
/// partial last line may be left out: the hint only saves time). A hint: it reads nothing and
/// faults on no address, whatever the pointer; a no-op but on x86-64.
pub(crate) fn prefetch<T>(value: *const T) {
    #[cfg(target_arch = "x86_64")]
    {
        const LINE: usize = 64;
        let start = value.cast::<i8>().wrapping_sub(16);
        let lines = (std::mem::size_of::<T>() + 16).min(512).div_ceil(LINE);
        for line in 0..lines {
            // SAFETY: `_mm_prefetch` is a hint; it dereferences nothing, so any address is sound.
            unsafe {
                std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(
                    start.wrapping_add(line * LINE),
                )
            };
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = value;
}
