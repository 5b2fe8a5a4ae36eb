//! Starting child processes: the spawner thread, the exec helper, and the subreaper.
//!
//! Two ways to start a hardened child (see [`Hardening`]):
//! - **exec helper** (the daemon binary): `posix_spawn` of `tickd __exec ... -- program args`.
//!   glibc's `posix_spawn` is a `vfork`-style clone that shares the daemon's memory until the
//!   helper's `exec`, so the daemon's page tables are never copied or write-protected. The helper
//!   applies the hardening in a fresh single-threaded process, then `exec`s the job's program in
//!   place (same pid). A `fork` of the multi-threaded daemon, by contrast, write-protects every
//!   page: the copy-on-write faults that follow stalled in-process jobs by milliseconds per
//!   spawn (bench `inproc-100x5hz-with-children`).
//! - **fork** (an embedding program that does not dispatch `__exec`, see [`helper_main`]): `fork`
//!   with the hardening as a pre-exec hook.
//!
//! The helper reports a failure (say, the program does not exist) on a pipe the daemon passes as
//! its descriptor 0; the pipe is close-on-exec in the helper, so EOF without a word means the
//! job's program is running.

use std::collections::HashSet;
use std::ffi::{CString, OsString};
use std::io::{self, Write};
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{mpsc as std_mpsc, Arc, Mutex, PoisonError};

use nix::unistd::Pid;
use tokio::io::AsyncReadExt;
use tokio::process::{Child, Command};
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

use crate::config::RunAs;
use crate::os::{Hardening, HardeningStep};

/// The hidden subcommand that runs [`helper_main`].
pub const HELPER_SUBCOMMAND: &str = "__exec";

type SpawnRequest = (Command, oneshot::Sender<io::Result<Child>>);

/// Starts every child from one dedicated thread.
///
/// `PR_SET_PDEATHSIG` fires when the *thread* that started the child exits, not the process (Go
/// #27505). Spawning from tokio's worker or blocking threads would tie a job's life to a thread
/// that may be retired; this thread lives as long as any [`Spawner`] clone, and the daemon keeps
/// one until every run has ended.
#[derive(Clone, Debug)]
pub struct Spawner {
    requests: std_mpsc::Sender<SpawnRequest>,
    /// The children tokio waits for (our own runs), so that the subreaper leaves them alone.
    /// Locked across `spawn` and the insertion, so no child is ever unregistered while it lives.
    own: Arc<Mutex<HashSet<i32>>>,
    /// The exec helper's binary; `None`: fork with a pre-exec hook.
    helper: Option<PathBuf>,
}

/// A command ready for [`Spawner::spawn`], with the read end of the helper's report pipe.
#[derive(Debug)]
pub struct Launch {
    /// The command; the caller adds environment, working directory and output.
    pub command: Command,
    report: Option<OwnedFd>,
}

impl Spawner {
    /// Starts the spawner thread, bound to the current tokio runtime (children register with its
    /// reaper). Must be called from within a runtime. `helper` is a binary that runs
    /// [`helper_main`] for `__exec` (tickd's own); without one, children are forked.
    pub fn start(helper: Option<PathBuf>) -> io::Result<Self> {
        let runtime = tokio::runtime::Handle::current();
        let (requests, queue) = std_mpsc::channel::<SpawnRequest>();
        let own: Arc<Mutex<HashSet<i32>>> = Arc::default();
        let registry = own.clone();
        std::thread::Builder::new()
            .name("tickd-spawner".to_owned())
            .spawn(move || {
                let _runtime = runtime.enter();
                while let Ok((mut command, reply)) = queue.recv() {
                    let mut own = registry.lock().unwrap_or_else(PoisonError::into_inner);
                    let child = command.spawn();
                    if let Some(pid) = child.as_ref().ok().and_then(Child::id) {
                        own.insert(pid as i32);
                    }
                    drop(own);
                    // Closes our copy of the helper's report pipe, so that its reader sees EOF.
                    drop(command);
                    // The requester may have gone (cancelled): the child then is dropped and
                    // tokio reaps it; it was started with kill_on_drop, so it is killed first.
                    let _ = reply.send(child);
                }
            })?;
        Ok(Spawner {
            requests,
            own,
            helper,
        })
    }

    /// A command that runs `argv` hardened (as `run_as`, if given), stdin on `/dev/null`.
    pub fn command(&self, argv: &[String], run_as: Option<&RunAs>) -> io::Result<Launch> {
        let hardening = Hardening {
            daemon_pid: std::process::id(),
            credentials: run_as.map(|r| (r.groups.clone(), r.gid, r.uid)),
        };
        let Some(helper) = &self.helper else {
            let mut command = Command::new(&argv[0]);
            command.args(&argv[1..]).stdin(Stdio::null());
            hardening.before_exec(&mut command);
            return Ok(Launch {
                command,
                report: None,
            });
        };
        let (read, write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
        let mut command = Command::new(helper);
        command
            .arg0(format!("tickd {HELPER_SUBCOMMAND} {}", argv[0]))
            .arg(HELPER_SUBCOMMAND)
            .arg(hardening.daemon_pid.to_string())
            .arg(match &hardening.credentials {
                None => "-".to_owned(),
                Some((groups, gid, uid)) => format!(
                    "{uid}:{gid}:{}",
                    groups
                        .iter()
                        .map(u32::to_string)
                        .collect::<Vec<_>>()
                        .join(",")
                ),
            })
            .arg("--")
            .args(argv)
            .stdin(Stdio::from(write));
        Ok(Launch {
            command,
            report: Some(read),
        })
    }

    /// Starts `launch` on the spawner thread; with the exec helper, resolves once the job's
    /// program runs (or with why it could not be started).
    pub async fn spawn(&self, launch: Launch) -> io::Result<Child> {
        let (reply, response) = oneshot::channel();
        self.requests
            .send((launch.command, reply))
            .map_err(|_| io::Error::other("the spawner thread is gone"))?;
        let mut child = response
            .await
            .map_err(|_| io::Error::other("the spawner thread is gone"))??;
        let Some(report) = launch.report else {
            return Ok(child);
        };
        match read_report(report).await {
            Ok(None) => Ok(child),
            Ok(Some(failure)) => {
                // The helper exits right after its report.
                let _ = child.wait().await;
                if let Some(pid) = child.id() {
                    self.forget(pid);
                }
                Err(failure)
            }
            Err(err) => {
                let _ = child.start_kill();
                let _ = child.wait().await;
                Err(io::Error::other(format!(
                    "cannot read the exec helper's report: {err}"
                )))
            }
        }
    }

    /// Forgets a child tokio has reaped.
    pub(super) fn forget(&self, pid: u32) {
        self.own
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&(pid as i32));
    }

    /// Becomes a child subreaper (orphaned descendants are reparented to this process instead of
    /// init) and reaps every such orphan when it exits, until `stop`. For tickd as PID 1 in a
    /// container, or under `--subreaper`.
    ///
    /// A `waitpid(-1)` reaper would steal the exit statuses tokio waits for (supercronic #171);
    /// this one reaps only zombies that are not our own runs, by pid, holding the lock the
    /// spawner holds while it spawns and registers, so it never races a new run.
    pub fn reap_orphans(&self, stop: CancellationToken) -> io::Result<()> {
        nix::sys::prctl::set_child_subreaper(true)?;
        let mut sigchld = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::child())?;
        let own = self.own.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = sigchld.recv() => {}
                    _ = stop.cancelled() => return,
                }
                let own = own.lock().unwrap_or_else(PoisonError::into_inner);
                for pid in super::zombie_children() {
                    if !own.contains(&pid) {
                        let _ = nix::sys::wait::waitpid(
                            Pid::from_raw(pid),
                            Some(nix::sys::wait::WaitPidFlag::WNOHANG),
                        );
                    }
                }
            }
        });
        Ok(())
    }
}

/// The helper's report: empty when the job's program runs, else a step code and an `errno`.
const REPORT_LEN: usize = 8;
const STEP_EXEC: u32 = 0;
const STEP_CREDENTIALS: u32 = 1;
const STEP_PARENT_DEATH: u32 = 2;
const STEP_ARGUMENTS: u32 = 3;

/// Reads the helper's report to EOF: `None` if the program runs, else the failure.
async fn read_report(report: OwnedFd) -> io::Result<Option<io::Error>> {
    let mut pipe = tokio::net::unix::pipe::Receiver::from_owned_fd(report)?;
    let mut bytes = Vec::with_capacity(REPORT_LEN);
    (&mut pipe)
        .take(REPORT_LEN as u64)
        .read_to_end(&mut bytes)
        .await?;
    if bytes.is_empty() {
        return Ok(None);
    }
    let (Some(step), Some(errno)) = (
        bytes.get(..4).and_then(|b| b.try_into().ok()),
        bytes.get(4..8).and_then(|b| b.try_into().ok()),
    ) else {
        return Ok(Some(io::Error::other("the exec helper sent a short report")));
    };
    let err = io::Error::from_raw_os_error(i32::from_le_bytes(errno));
    let what = match u32::from_le_bytes(step) {
        STEP_EXEC => return Ok(Some(err)),
        STEP_CREDENTIALS => "cannot switch to the job's user",
        STEP_PARENT_DEATH => "cannot set the parent-death signal",
        STEP_ARGUMENTS => "the exec helper did not understand its arguments",
        _ => "the exec helper failed",
    };
    Ok(Some(io::Error::new(err.kind(), format!("{what}: {err}"))))
}

/// The body of `tickd __exec DAEMON_PID CREDENTIALS -- PROGRAM ARGS...` (see the module docs):
/// hardens this process and `exec`s the program, searching `PATH` as `execvp` does. Returns
/// only on failure, with the exit code, after reporting it to the daemon.
///
/// An embedding program that wants this spawn path calls it when its first argument is
/// [`HELPER_SUBCOMMAND`], and passes its own binary as `DaemonOptions::helper_binary`.
pub fn helper_main(args: &[OsString]) -> i32 {
    let Ok(mut report) = crate::os::take_report_pipe() else {
        return 126;
    };
    let mut send = |step: u32, errno: i32| {
        let mut bytes = [0u8; REPORT_LEN];
        bytes[..4].copy_from_slice(&step.to_le_bytes());
        bytes[4..].copy_from_slice(&errno.to_le_bytes());
        let _ = report.write_all(&bytes);
    };
    let Some((hardening, argv)) = parse_helper_args(args) else {
        send(STEP_ARGUMENTS, libc::EINVAL);
        return 126;
    };
    if let Err((step, err)) = hardening.apply() {
        let step = match step {
            HardeningStep::Credentials => STEP_CREDENTIALS,
            HardeningStep::ParentDeathSignal => STEP_PARENT_DEATH,
        };
        send(step, err.raw_os_error().unwrap_or(libc::EIO));
        return 126;
    }
    let Err(errno) = nix::unistd::execvp(&argv[0], &argv);
    send(STEP_EXEC, errno as i32);
    127
}

/// `DAEMON_PID CREDENTIALS -- PROGRAM ARGS...`, CREDENTIALS being `-` or `UID:GID:G1,G2,...`.
fn parse_helper_args(args: &[OsString]) -> Option<(Hardening, Vec<CString>)> {
    let [pid, credentials, dashes, argv @ ..] = args else {
        return None;
    };
    if dashes != "--" || argv.is_empty() {
        return None;
    }
    let daemon_pid = pid.to_str()?.parse().ok()?;
    let credentials = match credentials.to_str()? {
        "-" => None,
        text => {
            let mut parts = text.splitn(3, ':');
            let uid = parts.next()?.parse().ok()?;
            let gid = parts.next()?.parse().ok()?;
            let groups = match parts.next()? {
                "" => Vec::new(),
                list => list
                    .split(',')
                    .map(|g| g.parse().ok())
                    .collect::<Option<Vec<_>>>()?,
            };
            Some((groups, gid, uid))
        }
    };
    let argv = argv
        .iter()
        .map(|a| CString::new(a.as_bytes()).ok())
        .collect::<Option<Vec<_>>>()?;
    Some((
        Hardening {
            daemon_pid,
            credentials,
        },
        argv,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Vec<OsString> {
        list.iter().map(OsString::from).collect()
    }

    #[test]
    fn helper_arguments_round_trip() {
        let (hardening, argv) =
            parse_helper_args(&args(&["42", "1000:100:100,27", "--", "ls", "-l"])).expect("parse");
        assert_eq!(hardening.daemon_pid, 42);
        assert_eq!(hardening.credentials, Some((vec![100, 27], 100, 1000)));
        assert_eq!(argv, vec![c"ls".to_owned(), c"-l".to_owned()]);
        let (hardening, _) = parse_helper_args(&args(&["7", "-", "--", "x"])).expect("parse");
        assert_eq!(hardening.credentials, None);
    }

    #[test]
    fn malformed_helper_arguments_are_refused() {
        for bad in [
            &["42", "-", "--"][..],
            &["42", "-", "ls"],
            &["x", "-", "--", "ls"],
            &["42", "1000", "--", "ls"],
            &["42", "1000:100:a", "--", "ls"],
        ] {
            assert!(parse_helper_args(&args(bad)).is_none(), "{bad:?}");
        }
    }
}
