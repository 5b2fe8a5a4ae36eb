//! Starting child processes: the spawner thread, the child handle, and the subreaper.
//!
//! Children are started by [`crate::os::spawn_hardened`] (a `vfork`-style clone, as glibc's
//! `posix_spawn` does, plus the hardening `posix_spawn` cannot do), always from one dedicated
//! thread, and watched through a pidfd.

use std::collections::HashSet;
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::process::ExitStatusExt;
use std::process::ExitStatus;
use std::sync::{mpsc as std_mpsc, Arc, Mutex, PoisonError};

use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use tokio::io::unix::AsyncFd;
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

use crate::os::{ExecPlan, HardeningStep, SpawnStep};

/// The clone child's stack: it only makes a handful of syscalls.
const CHILD_STACK: usize = 64 * 1024;

type SpawnReply = oneshot::Sender<io::Result<(i32, OwnedFd)>>;

/// Starts every child from one dedicated thread.
///
/// `PR_SET_PDEATHSIG` fires when the *thread* that started the child exits, not the process (Go
/// #27505). Spawning from tokio's worker or blocking threads would tie a job's life to a thread
/// that may be retired; this thread lives as long as any [`Spawner`] clone, and the daemon keeps
/// one until every run has ended. It blocks every signal, which [`crate::os::spawn_hardened`]
/// requires.
#[derive(Clone, Debug)]
pub struct Spawner {
    requests: std_mpsc::Sender<(ExecPlan, SpawnReply)>,
    /// The children we wait for (our own runs), so that the subreaper leaves them alone.
    /// Locked across the spawn and the insertion, so no child is ever unregistered while it lives.
    own: Arc<Mutex<HashSet<i32>>>,
}

impl Spawner {
    /// Starts the spawner thread.
    pub fn start() -> io::Result<Self> {
        crate::os::default_sigchld();
        let (requests, queue) = std_mpsc::channel::<(ExecPlan, SpawnReply)>();
        let own: Arc<Mutex<HashSet<i32>>> = Arc::default();
        let registry = own.clone();
        let (blocked_tx, blocked) = std_mpsc::sync_channel(1);
        std::thread::Builder::new()
            .name("tickd-spawner".to_owned())
            .spawn(move || serve(&queue, &registry, &blocked_tx))?;
        match blocked.recv() {
            Ok(Ok(())) => Ok(Spawner { requests, own }),
            Ok(Err(errno)) => Err(io::Error::other(format!(
                "cannot block signals on the spawner thread: {errno}"
            ))),
            Err(_) => Err(io::Error::other("the spawner thread ended at its start")),
        }
    }

    /// Starts `plan` on the spawner thread.
    pub async fn spawn(&self, plan: ExecPlan) -> io::Result<ChildProcess> {
        let (reply, response) = oneshot::channel();
        self.requests
            .send((plan, reply))
            .map_err(|_| io::Error::other("the spawner thread is gone"))?;
        let (pid, pidfd) = response
            .await
            .map_err(|_| io::Error::other("the spawner thread is gone"))??;
        Ok(ChildProcess {
            pid,
            exited: crate::os::watch_pidfd(pidfd)?,
            status: None,
            spawner: self.clone(),
        })
    }

    /// The pids of the children started and not reaped yet.
    pub fn live_children(&self) -> Vec<i32> {
        let mut pids: Vec<i32> = self
            .own
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .copied()
            .collect();
        pids.sort_unstable();
        pids
    }

    /// Forgets a child we have reaped.
    fn forget(&self, pid: i32) {
        self.own
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&pid);
    }

    /// Becomes a child subreaper (orphaned descendants are reparented to this process instead of
    /// init) and reaps every such orphan when it exits, until `stop`. For tickd as PID 1 in a
    /// container, or under `--subreaper`.
    ///
    /// A `waitpid(-1)` reaper would steal the exit statuses our runs wait for (supercronic #171);
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
                // The scan of /proc runs off the workers and outside the lock the spawner
                // needs; the lock is taken only to tell our runs from orphans and reap those.
                // A run that exited while being registered is in `own` by the time we hold it.
                let zombies = crate::blocking::off_the_workers(
                    "the orphan reaper",
                    super::procfs::zombie_children,
                )
                .await;
                let own = own.lock().unwrap_or_else(PoisonError::into_inner);
                for pid in zombies {
                    if !own.contains(&pid) {
                        let _ = waitpid(Pid::from_raw(pid), Some(WaitPidFlag::WNOHANG));
                    }
                }
            }
        });
        Ok(())
    }
}

/// The spawner thread: blocks every signal (told on `blocked`), then starts what is asked on
/// `queue` until every [`Spawner`] is gone, registering each child in `registry`.
fn serve(
    queue: &std_mpsc::Receiver<(ExecPlan, SpawnReply)>,
    registry: &Mutex<HashSet<i32>>,
    blocked: &std_mpsc::SyncSender<nix::Result<()>>,
) {
    // Signals go to the daemon's other threads; a clone child inherits this mask and resets
    // every disposition before it unblocks anything. Without the mask that precondition of the
    // clone child breaks: then no child is ever started.
    let mask = nix::sys::signal::SigSet::all().thread_block();
    let failed = mask.is_err();
    let _ = blocked.send(mask);
    if failed {
        return;
    }
    let mut stack = vec![0u8; CHILD_STACK];
    while let Ok((plan, reply)) = queue.recv() {
        let mut own = registry.lock().unwrap_or_else(PoisonError::into_inner);
        let spawned = crate::os::spawn_hardened(&plan, &mut stack);
        if let Ok((pid, _)) = &spawned {
            own.insert(*pid);
        }
        drop(own);
        // Closes our copies of the child's ends of its output pipes, so that the readers see
        // EOF when the child's side closes.
        drop(plan);
        if let Err(Ok((pid, _))) = reply.send(spawned.map_err(describe_step)) {
            // The requester has gone (cancelled): stop and reap the child.
            kill_and_reap(pid);
            registry
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .remove(&pid);
        }
    }
}

fn describe_step((step, err): (SpawnStep, io::Error)) -> io::Error {
    let what = match step {
        SpawnStep::Exec | SpawnStep::Create => return err,
        SpawnStep::Setup => "cannot set up the process",
        SpawnStep::WorkingDirectory => "cannot enter the working directory",
        SpawnStep::Hardening(HardeningStep::Credentials) => "cannot switch to the job's user",
        SpawnStep::Hardening(HardeningStep::ParentDeathSignal) => {
            "cannot set the parent-death signal"
        }
    };
    io::Error::new(err.kind(), format!("{what}: {err}"))
}

fn kill_and_reap(pid: i32) {
    let _ = nix::sys::signal::kill(Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
    let _ = waitpid(Pid::from_raw(pid), None);
}

/// A child started by [`Spawner::spawn`], in its own process group. Dropped before it was
/// waited for, it is killed and reaped in the background.
#[derive(Debug)]
pub struct ChildProcess {
    pid: i32,
    /// The pidfd: readable once the child has exited.
    exited: AsyncFd<OwnedFd>,
    status: Option<ExitStatus>,
    spawner: Spawner,
}

impl ChildProcess {
    /// The child's pid (also its process group id).
    pub fn id(&self) -> u32 {
        self.pid as u32
    }

    /// Waits for the child to exit and reaps it; cancel-safe, and answers again once reaped.
    pub async fn wait(&mut self) -> io::Result<ExitStatus> {
        if let Some(status) = self.status {
            return Ok(status);
        }
        loop {
            let mut ready = self.exited.readable().await?;
            match waitpid(Pid::from_raw(self.pid), Some(WaitPidFlag::WNOHANG))? {
                WaitStatus::Exited(_, code) => return Ok(self.reaped(code << 8)),
                WaitStatus::Signaled(_, signal, core) => {
                    return Ok(self.reaped(signal as i32 | if core { 0x80 } else { 0 }))
                }
                // Stopped or continued (not reported without WUNTRACED) or not yet: wait on.
                _ => ready.clear_ready(),
            }
        }
    }

    fn reaped(&mut self, raw: i32) -> ExitStatus {
        let status = ExitStatus::from_raw(raw);
        self.status = Some(status);
        self.spawner.forget(self.pid);
        status
    }
}

impl Drop for ChildProcess {
    fn drop(&mut self) {
        if self.status.is_none() {
            let pid = self.pid;
            let spawner = self.spawner.clone();
            let _ = nix::sys::signal::kill(Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
            // Reaped off the runtime: after SIGKILL the wait is short.
            std::thread::spawn(move || {
                let _ = waitpid(Pid::from_raw(pid), None);
                spawner.forget(pid);
            });
        }
    }
}
