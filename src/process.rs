//! The one module that spawns, watches and stops child processes.
//!
//! Each run is its own process group (`setpgid(0, 0)`), so a timeout, a replace or a shutdown
//! stops the job *and* whatever it started: SIGTERM and SIGCONT to the group (a stopped process
//! never sees SIGTERM otherwise), SIGKILL to the group after `kill_grace`. A run ends when its
//! process exits, not when its pipes close (a backgrounded grandchild may hold them forever);
//! processes left in its group after that are stopped the same way, so nothing outlives its run.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::{OsStr, OsString};
use std::io::{self, BufRead, Write};
use std::os::fd::OwnedFd;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::Path;
use std::process::{ExitStatus, Stdio};
use std::sync::{mpsc as std_mpsc, Mutex, OnceLock, PoisonError};
use std::time::Duration;

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio_util::sync::CancellationToken;
use tokio_util::task::AbortOnDropHandle;

use crate::clock::Clock;
use crate::config::{OutputMode, ProcessSpec, RunAs, NEVER_INHERITED};
use crate::handler::RunId;
use crate::os::{ExecPlan, Hardening};

mod spawner;
use spawner::resolve_program;
pub use spawner::{ChildProcess, Spawner};

/// The descriptor limit (`RLIMIT_NOFILE`: soft, hard) every child starts with, when the daemon
/// changed its own; see [`set_child_descriptor_limit`]. Process-wide, as the limit itself is.
static CHILD_DESCRIPTOR_LIMIT: OnceLock<(u64, u64)> = OnceLock::new();

/// Starts every child from now on with the descriptor limit `soft`, `hard`, not the daemon's.
///
/// For a daemon that raised its own soft limit (the binary raises it to the hard limit at start,
/// so that HTTP clients and runs cannot exhaust it): its children get back the soft limit it was
/// started with, as systemd and nginx do, since a program using `select()` breaks on descriptors
/// numbered 1024 and above; a child that wants more can raise its own up to `hard`. The first call
/// wins; without one, children inherit the daemon's limit.
pub fn set_child_descriptor_limit(soft: u64, hard: u64) {
    let _ = CHILD_DESCRIPTOR_LIMIT.set((soft, hard));
}

/// The longest output line logged whole; longer lines are cut and marked.
pub const MAX_LINE: usize = 64 * 1024;
/// How long output is still read after the process exited (its pipes may be held open by a
/// backgrounded grandchild, which must not keep the run going).
const OUTPUT_DRAIN: Duration = Duration::from_millis(100);
/// Output bytes a pump reads before it lets other tasks run.
const YIELD_EVERY: usize = 64 * 1024;
/// How often leftover group members are checked for while they are being stopped.
const LEFTOVER_POLL: Duration = Duration::from_millis(20);

/// Our children that have exited and wait to be reaped (state `Z` in `/proc`).
fn zombie_children() -> Vec<i32> {
    let me = std::process::id().to_string();
    processes()
        .filter(|(_, stat)| stat.state == "Z" && stat.ppid == me)
        .map(|(pid, _)| pid)
        .collect()
}

/// The fields of `/proc/PID/stat` that tickd reads.
struct ProcStat {
    state: String,
    ppid: String,
    pgrp: String,
    /// Resident set size, in pages.
    rss_pages: u64,
}

/// Every process in `/proc`, with its stat fields; processes that vanish meanwhile are skipped.
fn processes() -> impl Iterator<Item = (i32, ProcStat)> {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let pid = entry.file_name().to_string_lossy().parse::<i32>().ok()?;
            let stat = std::fs::read_to_string(entry.path().join("stat")).ok()?;
            // The fields after the command name (which may hold spaces and parentheses) start
            // after the last ')': state, ppid, pgrp, ..., rss (the 22nd of them).
            let (_, rest) = stat.rsplit_once(')')?;
            let fields: Vec<&str> = rest.split_whitespace().collect();
            Some((
                pid,
                ProcStat {
                    state: (*fields.first()?).to_owned(),
                    ppid: (*fields.get(1)?).to_owned(),
                    pgrp: (*fields.get(2)?).to_owned(),
                    rss_pages: fields.get(21)?.parse().ok()?,
                },
            ))
        })
}

/// A helper process that SIGKILLs the process groups of runs in flight if the daemon dies
/// without stopping them (SIGKILL, OOM kill, crash).
///
/// `PR_SET_PDEATHSIG` reaches only a run's first process; whatever it started (in the same process
/// group) would survive. The keeper is the daemon's own binary run as `tickd __keeper`, in a process
/// group of its own, reading `+PGID` / `-PGID` lines on a pipe. When the pipe reaches EOF, the
/// daemon is gone, and the keeper kills every group still registered, then exits. Groups are
/// unregistered as soon as their run ends, so a recycled process-group id is never hit.
///
/// The daemon side never blocks on the keeper: the pipe is non-blocking, and what cannot be
/// written now is not queued as lines but kept as the set of groups whose registration the keeper
/// has not been told yet (so a stopped keeper costs memory for the groups in flight, not for every
/// run since it stopped). [`GroupKeeper::check`] (every [`KEEPER_CHECK`], from the supervisor)
/// retries those, reaps a keeper that died, starts a new one and registers every live group
/// with it again.
#[derive(Debug)]
pub struct GroupKeeper {
    /// `tickd`, started again as `tickd __keeper` when the keeper dies.
    program: std::path::PathBuf,
    /// A std mutex: held for set updates and non-blocking writes, never across an `.await`.
    state: Mutex<KeeperState>,
    /// 1 while a keeper runs (`tickd_group_keeper_up`).
    up: prometheus_client::metrics::gauge::Gauge,
    /// Keepers started after the first (`tickd_group_keeper_restarts_total`).
    restarts: prometheus_client::metrics::counter::Counter,
}

/// How often the supervisor calls [`GroupKeeper::check`]: how long a dead keeper may go unnoticed
/// (a write to it notices at once) and how long a backlog waits when no run starts or ends.
pub const KEEPER_CHECK: Duration = Duration::from_secs(1);

/// The mutable side of a [`GroupKeeper`].
#[derive(Debug)]
struct KeeperState {
    /// The keeper process; `None` while it is down. Kept to reap it when it dies.
    child: Option<std::process::Child>,
    /// Its stdin, non-blocking; `None` once a write failed (it is gone).
    pipe: Option<std::process::ChildStdin>,
    /// Every group registered now: what a new keeper is told.
    groups: BTreeSet<i32>,
    /// The groups the keeper will hold once it has read everything written so far.
    told: BTreeSet<i32>,
    /// Groups whose registration may differ between `groups` and `told`: the backlog.
    dirty: BTreeSet<i32>,
    /// The tail of a batch the pipe took only in part (it is finished before anything else).
    partial: Vec<u8>,
    /// Why the keeper is down, for `/healthz`; `None` while it runs.
    down: Option<String>,
}

impl GroupKeeper {
    /// Starts `program __keeper`.
    pub fn start(program: &Path) -> io::Result<Self> {
        let (child, pipe) = spawn_keeper(program)?;
        let up = prometheus_client::metrics::gauge::Gauge::default();
        up.set(1);
        Ok(GroupKeeper {
            program: program.to_owned(),
            state: Mutex::new(KeeperState {
                child: Some(child),
                pipe: Some(pipe),
                groups: BTreeSet::new(),
                told: BTreeSet::new(),
                dirty: BTreeSet::new(),
                partial: Vec::new(),
                down: None,
            }),
            up,
            restarts: prometheus_client::metrics::counter::Counter::default(),
        })
    }

    /// Registers a run's process group: it is killed if the daemon dies.
    pub fn register(&self, group: Pid) {
        self.update(group, true);
    }

    /// Unregisters a run's process group (its run ended).
    pub fn unregister(&self, group: Pid) {
        self.update(group, false);
    }

    fn update(&self, group: Pid, registered: bool) {
        let mut state = self.lock();
        let pgid = group.as_raw();
        if registered {
            state.groups.insert(pgid);
        } else {
            state.groups.remove(&pgid);
        }
        // Only a group whose news the keeper has not been sent is backlog: one registered and
        // unregistered while the keeper was stopped is owed nothing.
        if state.groups.contains(&pgid) == state.told.contains(&pgid) {
            state.dirty.remove(&pgid);
        } else {
            state.dirty.insert(pgid);
        }
        state.flush();
        self.up.set(i64::from(state.down.is_none()));
    }

    /// Why the keeper is not running (for `/healthz`), or `None` while it runs.
    pub fn down(&self) -> Option<String> {
        self.lock().down.clone()
    }

    /// The `tickd_group_keeper_up` gauge and `tickd_group_keeper_restarts_total` counter (shared
    /// handles, for [`crate::status::Metrics`]).
    pub fn metrics(
        &self,
    ) -> (
        prometheus_client::metrics::gauge::Gauge,
        prometheus_client::metrics::counter::Counter,
    ) {
        (self.up.clone(), self.restarts.clone())
    }

    /// Reaps a keeper that died and starts a new one, telling it every live group; writes what
    /// the pipe could not take before. Never blocks on the keeper (starting one is a spawn).
    pub fn check(&self) {
        let mut state = self.lock();
        let exited = match state.child.as_mut().map(std::process::Child::try_wait) {
            Some(Ok(None)) => None,
            Some(Ok(Some(status))) => Some(format!("it exited ({status})")),
            // Reaped by someone else (the subreaper): gone all the same.
            Some(Err(err)) => Some(format!("it is gone ({err})")),
            None => Some(String::new()),
        };
        if let Some(exited) = exited {
            if state.child.take().is_some() {
                // A failed write may have told already.
                if state.down.is_none() {
                    tracing::warn!("the group keeper is down: {exited}; starting a new one");
                }
                state.down = Some(format!("the group keeper is down: {exited}"));
                state.pipe = None;
            }
            self.restart(&mut state);
        } else if state.pipe.is_none() {
            // Alive but its pipe failed: it cannot be told anything, so a fresh one replaces it.
            if let Some(mut child) = state.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
            self.restart(&mut state);
        }
        state.flush();
        self.up.set(i64::from(state.down.is_none()));
    }

    fn restart(&self, state: &mut KeeperState) {
        match spawn_keeper(&self.program) {
            Ok((child, pipe)) => {
                state.child = Some(child);
                state.pipe = Some(pipe);
                state.told.clear();
                state.partial.clear();
                state.dirty = state.groups.clone();
                state.down = None;
                self.restarts.inc();
                tracing::info!(
                    groups = state.groups.len(),
                    "started a new group keeper; every live process group is registered again"
                );
            }
            Err(err) => {
                let reason = format!("the group keeper is down and cannot be started again: {err}");
                // Once per cause, not once per check.
                if state.down.as_deref() != Some(reason.as_str()) {
                    tracing::error!("{reason}; a killed daemon may leave job processes behind");
                }
                state.down = Some(reason);
            }
        }
    }

    /// The keeper's pid, while one runs.
    #[cfg(test)]
    fn pid(&self) -> Option<u32> {
        self.lock().child.as_ref().map(std::process::Child::id)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, KeeperState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl KeeperState {
    /// Writes the backlog while the pipe takes it. Batches stay within `PIPE_BUF`, which a
    /// non-blocking pipe takes whole or not at all, so lines are not split in practice
    /// (`partial` covers it anyway).
    fn flush(&mut self) {
        while self.pipe.is_some() {
            if self.partial.is_empty() {
                let mut batch = Vec::new();
                let mut settled = Vec::new();
                for &pgid in &self.dirty {
                    let wanted = self.groups.contains(&pgid);
                    if wanted != self.told.contains(&pgid) {
                        let line = format!("{}{pgid}\n", if wanted { '+' } else { '-' });
                        if batch.len() + line.len() > libc::PIPE_BUF {
                            break;
                        }
                        batch.extend_from_slice(line.as_bytes());
                    }
                    settled.push(pgid);
                }
                if batch.is_empty() {
                    for pgid in settled {
                        self.dirty.remove(&pgid);
                    }
                    return;
                }
                match self.write(&batch) {
                    Some(written) => {
                        for pgid in settled {
                            self.dirty.remove(&pgid);
                            if self.groups.contains(&pgid) {
                                self.told.insert(pgid);
                            } else {
                                self.told.remove(&pgid);
                            }
                        }
                        self.partial = batch.split_off(written);
                    }
                    None => return,
                }
            } else {
                let partial = std::mem::take(&mut self.partial);
                match self.write(&partial) {
                    Some(written) => self.partial = partial[written..].to_vec(),
                    None => {
                        self.partial = partial;
                        return;
                    }
                }
            }
        }
    }

    /// One non-blocking write: the bytes taken, or `None` when the pipe is full or broken (then
    /// dropped, for [`GroupKeeper::check`] to replace the keeper).
    fn write(&mut self, bytes: &[u8]) -> Option<usize> {
        let pipe = self.pipe.as_mut()?;
        loop {
            match pipe.write(bytes) {
                Ok(written) => return Some(written),
                Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => return None,
                Err(err) => {
                    let reason = format!("the group keeper is down: its pipe failed ({err})");
                    tracing::warn!("{reason}; starting a new one");
                    self.down = Some(reason);
                    self.pipe = None;
                    return None;
                }
            }
        }
    }
}

/// Starts `program __keeper` with a non-blocking pipe to its stdin.
fn spawn_keeper(program: &Path) -> io::Result<(std::process::Child, std::process::ChildStdin)> {
    use std::os::fd::AsRawFd;
    let mut child = std::process::Command::new(program)
        .arg("__keeper")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        // Its own group: a Ctrl-C or a group kill aimed at the daemon must not take it along.
        .process_group(0)
        .spawn()?;
    let pipe = child
        .stdin
        .take()
        .ok_or_else(|| io::Error::other("the keeper has no stdin"))?;
    // Only our end: the keeper's reads stay blocking. The keeper outlives the daemon by design
    // (it exits on EOF); the `Child` is kept only to reap it should it die first.
    nix::fcntl::fcntl(
        pipe.as_raw_fd(),
        nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK),
    )
    .map_err(io::Error::from)?;
    Ok((child, pipe))
}

/// The body of `tickd __keeper`: see [`GroupKeeper`]. Reads `input` to EOF, then kills the groups
/// still registered.
pub fn keeper_main(input: impl BufRead) {
    let mut groups = BTreeSet::new();
    for line in input.lines() {
        let Ok(line) = line else { break };
        let (sign, pgid) = line.split_at(line.len().min(1));
        match (sign, pgid.parse::<i32>()) {
            ("+", Ok(pgid)) if pgid > 1 => {
                groups.insert(pgid);
            }
            ("-", Ok(pgid)) => {
                groups.remove(&pgid);
            }
            _ => {}
        }
    }
    for pgid in groups {
        signal_group(Pid::from_raw(pgid), Signal::SIGKILL);
    }
}

/// Everything a child run needs besides the process spec.
#[derive(Debug)]
pub struct ChildRun<'a> {
    /// The job's name, for log lines.
    pub job: &'a str,
    /// The run's id, for log lines.
    pub run_id: RunId,
    /// Where output goes.
    pub output: OutputMode,
    /// Stop the run after this long.
    pub timeout: Option<Duration>,
    /// Between SIGTERM and SIGKILL.
    pub kill_grace: Duration,
    /// Cancelled to stop the run (replace, shutdown).
    pub cancel: &'a CancellationToken,
    /// For the timeout and the grace period.
    pub clock: &'a Clock,
    /// Starts the child.
    pub spawner: &'a Spawner,
    /// Told about the run's process group, if the daemon runs one.
    pub keeper: Option<&'a GroupKeeper>,
    /// Stop the run when its process group's resident memory exceeds this many bytes.
    pub max_rss: Option<u64>,
    /// Run the process as this user.
    pub run_as: Option<&'a RunAs>,
    /// Variables tickd sets for this run (`TICKD_JOB`, `TICKD_RUN_ID`, `TICKD_SCHEDULED`), on
    /// top of everything else: a job's `env` cannot fake them.
    pub run_vars: &'a [(&'static str, String)],
}

/// How a child run ended.
#[derive(Debug)]
pub enum ChildEnd {
    /// The process could not be started.
    SpawnFailed(String),
    /// The process exited on its own.
    Exited(ExitStatus),
    /// The process was stopped by tickd. `killed` says whether SIGKILL was needed.
    Stopped {
        /// The process's status.
        status: ExitStatus,
        /// Why it was stopped.
        cause: StopCause,
        /// Whether the group had to be SIGKILLed after the grace period.
        killed: bool,
    },
}

/// Why tickd stopped a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopCause {
    /// The job's `timeout` passed.
    Timeout,
    /// The run was cancelled (replaced, or shut down after the drain timeout).
    Cancelled,
    /// The run's process group used more memory than the job's `max_rss`; the figure is the
    /// resident size seen, in bytes.
    MaxRss(u64),
}

/// How often a run's memory is sampled when the job has `max_rss`.
const RSS_SAMPLE: Duration = Duration::from_secs(1);

/// Runs `spec` as a child process to its end.
pub async fn run_child(spec: &ProcessSpec, run: ChildRun<'_>) -> ChildEnd {
    let (plan, stdout, stderr) = match plan(spec, &run) {
        Ok(prepared) => prepared,
        Err(err) => return ChildEnd::SpawnFailed(describe_spawn_error(spec, &err)),
    };
    let mut child = match run.spawner.spawn(plan).await {
        Ok(child) => child,
        Err(err) => return ChildEnd::SpawnFailed(describe_spawn_error(spec, &err)),
    };
    let pid = child.id();
    // The child is the leader of its own group, so its pid is the group id.
    let group = Pid::from_raw(pid as i32);
    tracing::debug!(job = run.job, run = %run.run_id, pid, "process started");
    if let Some(keeper) = run.keeper {
        keeper.register(group);
    }

    // Output is read on the output thread (see `output_runtime`); the tasks are aborted when
    // this run is done with them (dropped handles).
    let pump_on = |pipe: Option<OwnedFd>, stream: &'static str| {
        pipe.map(|pipe| {
            let job = run.job.to_owned();
            let run_id = run.run_id;
            let clock = run.clock.clone();
            let task = async move { pump(pipe, &job, run_id, stream, clock).await };
            AbortOnDropHandle::new(match output_runtime() {
                Some(output) => output.spawn(task),
                None => tokio::spawn(task),
            })
        })
    };
    let (stdout, stderr) = (pump_on(stdout, "stdout"), pump_on(stderr, "stderr"));
    let pumps = async {
        if let Some(task) = stdout {
            let _ = task.await;
        }
        if let Some(task) = stderr {
            let _ = task.await;
        }
    };
    tokio::pin!(pumps);
    let supervise = supervise(&mut child, group, &run);
    tokio::pin!(supervise);

    let mut pumps_done = false;
    let end = loop {
        tokio::select! {
            end = &mut supervise => break end,
            _ = &mut pumps, if !pumps_done => pumps_done = true,
        }
    };
    if !pumps_done {
        tokio::select! {
            _ = &mut pumps => {}
            _ = run.clock.sleep(OUTPUT_DRAIN) => {}
        }
    }
    stop_leftovers(group, &run).await;
    if let Some(keeper) = run.keeper {
        keeper.unregister(group);
    }
    end
}

/// The environment `spec` runs with: the daemon's, as the job's policy lets it through, plus the
/// job's own variables, plus the user's `HOME`, `USER` and `LOGNAME` for `run_as`.
fn job_environment(
    spec: &ProcessSpec,
    run_as: Option<&RunAs>,
    run_vars: &[(&'static str, String)],
) -> BTreeMap<OsString, OsString> {
    let policy = &spec.inherit;
    let mut env: BTreeMap<OsString, OsString> = if policy.clear {
        policy
            .keep
            .iter()
            .filter_map(|name| Some((name.into(), std::env::var_os(name)?)))
            .collect()
    } else {
        std::env::vars_os().collect()
    };
    for name in policy
        .remove
        .iter()
        .map(String::as_str)
        .chain(NEVER_INHERITED.iter().copied())
    {
        env.remove(OsStr::new(name));
    }
    env.extend(spec.env.iter().map(|(k, v)| (k.into(), v.into())));
    if let Some(run_as) = run_as {
        env.insert("HOME".into(), run_as.home.clone().into());
        env.insert("USER".into(), run_as.user.clone().into());
        env.insert("LOGNAME".into(), run_as.user.clone().into());
    }
    env.extend(run_vars.iter().map(|(k, v)| (k.into(), v.into())));
    env
}

type OutputPipe = Option<OwnedFd>;

/// Everything needed to start `spec`: the plan, and the read ends of its output pipes when its
/// output is logged.
fn plan(spec: &ProcessSpec, run: &ChildRun<'_>) -> io::Result<(ExecPlan, OutputPipe, OutputPipe)> {
    let env = job_environment(spec, run.run_as, run.run_vars);
    let cwd = match &spec.cwd {
        Some(cwd) => cwd.clone(),
        None => std::env::current_dir()?,
    };
    let program = resolve_program(&spec.argv[0], env.get(OsStr::new("PATH")), &cwd)?;
    let null = || {
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/null")
            .map(OwnedFd::from)
    };
    let pipe = || nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC);
    let (stdout, stderr, stdio) = match run.output {
        OutputMode::Log => {
            let (out_read, out_write) = pipe()?;
            let (err_read, err_write) = pipe()?;
            (
                Some(out_read),
                Some(err_read),
                [Some(null()?), Some(out_write), Some(err_write)],
            )
        }
        OutputMode::Inherit => (None, None, [Some(null()?), None, None]),
        OutputMode::Discard => (None, None, [Some(null()?), Some(null()?), Some(null()?)]),
    };
    let hardening = Hardening {
        daemon_pid: std::process::id(),
        credentials: run.run_as.map(|r| (r.groups.clone(), r.gid, r.uid)),
        descriptor_limit: CHILD_DESCRIPTOR_LIMIT.get().copied(),
    };
    let plan = ExecPlan::new(
        &program,
        &spec.argv,
        env,
        spec.cwd.as_deref(),
        stdio,
        hardening,
    )?;
    Ok((plan, stdout, stderr))
}

/// Waits for the process, stopping it on timeout, cancellation or too much memory.
async fn supervise(child: &mut ChildProcess, group: Pid, run: &ChildRun<'_>) -> ChildEnd {
    let deadline = run.timeout.map(|t| run.clock.now() + t);
    let cause = tokio::select! {
        status = child.wait() => return exited(status),
        _ = run.cancel.cancelled() => StopCause::Cancelled,
        _ = async { match deadline {
            Some(at) => run.clock.sleep_until(at).await,
            None => std::future::pending().await,
        } } => StopCause::Timeout,
        rss = watch_memory(group, run) => StopCause::MaxRss(rss),
    };
    let why = match cause {
        StopCause::Timeout => "timeout reached".to_owned(),
        StopCause::Cancelled => "stopping run".to_owned(),
        StopCause::MaxRss(rss) => format!(
            "memory limit exceeded ({} > {})",
            bytesize::ByteSize(rss),
            bytesize::ByteSize(run.max_rss.unwrap_or_default())
        ),
    };
    tracing::info!(
        job = run.job,
        run = %run.run_id,
        grace = %humantime::format_duration(run.kill_grace),
        "{why}; sending SIGTERM to the process group"
    );
    terminate(group);
    let (status, killed) = tokio::select! {
        status = child.wait() => (status, false),
        _ = run.clock.sleep(run.kill_grace) => {
            tracing::warn!(job = run.job, run = %run.run_id, "still running after the grace period; sending SIGKILL");
            signal_group(group, Signal::SIGKILL);
            (child.wait().await, true)
        }
    };
    match status {
        Ok(status) => ChildEnd::Stopped {
            status,
            cause,
            killed,
        },
        Err(err) => ChildEnd::SpawnFailed(format!("waiting for the process failed: {err}")),
    }
}

/// Resolves with the group's resident size once it exceeds the job's `max_rss` (sampled every
/// second); never without one.
async fn watch_memory(group: Pid, run: &ChildRun<'_>) -> u64 {
    let Some(limit) = run.max_rss else {
        return std::future::pending().await;
    };
    loop {
        run.clock.sleep(RSS_SAMPLE).await;
        // A scan of all of /proc: not on a worker that fires jobs.
        let rss =
            crate::blocking::off_the_workers("a memory sample", move || group_rss(group)).await;
        if rss > limit {
            return rss;
        }
    }
}

fn page_size() -> u64 {
    nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE)
        .ok()
        .flatten()
        .and_then(|p| u64::try_from(p).ok())
        .unwrap_or(4096)
}

/// This process's resident memory, in bytes (from `/proc/self/statm`).
pub fn own_rss() -> u64 {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|statm| statm.split_whitespace().nth(1)?.parse::<u64>().ok())
        .unwrap_or(0)
        * page_size()
}

/// The resident memory of every process in `group`, in bytes (from `/proc`).
pub fn group_rss(group: Pid) -> u64 {
    let group = group.as_raw().to_string();
    processes()
        .filter(|(_, stat)| stat.pgrp == group)
        .map(|(_, stat)| stat.rss_pages)
        .sum::<u64>()
        * page_size()
}

fn exited(status: io::Result<ExitStatus>) -> ChildEnd {
    match status {
        Ok(status) => ChildEnd::Exited(status),
        Err(err) => ChildEnd::SpawnFailed(format!("waiting for the process failed: {err}")),
    }
}

/// Stops what is left of the run's process group after its leader exited (e.g. a backgrounded
/// grandchild), so that no process outlives its run.
async fn stop_leftovers(group: Pid, run: &ChildRun<'_>) {
    if !group_alive_off_workers(group).await {
        return;
    }
    tracing::warn!(
        job = run.job,
        run = %run.run_id,
        "processes are left in the run's process group after it ended; stopping them"
    );
    terminate(group);
    let deadline = run.clock.now() + run.kill_grace;
    while group_alive_off_workers(group).await {
        if run.clock.now() >= deadline {
            signal_group(group, Signal::SIGKILL);
            return;
        }
        run.clock.sleep(LEFTOVER_POLL).await;
    }
}

/// SIGTERM, then SIGCONT so that a stopped process sees it.
fn terminate(group: Pid) {
    signal_group(group, Signal::SIGTERM);
    signal_group(group, Signal::SIGCONT);
}

/// Signals a process group; a group that no longer exists is not an error.
fn signal_group(group: Pid, signal: Signal) {
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
    // Without a readable /proc (not mounted, another namespace's), trust killpg: alive.
    if std::fs::read_dir("/proc").is_err() {
        return true;
    }
    let pgrp = group.as_raw().to_string();
    processes().any(|(_, stat)| stat.pgrp == pgrp && !matches!(stat.state.as_str(), "Z" | "X"))
}

/// [`group_alive`] off the workers: its scan of `/proc` is polled every [`LEFTOVER_POLL`] while
/// leftovers are stopped.
async fn group_alive_off_workers(group: Pid) -> bool {
    crate::blocking::off_the_workers("a process group check", move || group_alive(group)).await
}

fn describe_spawn_error(spec: &ProcessSpec, err: &io::Error) -> String {
    let program = &spec.argv[0];
    match (&spec.cwd, err.kind()) {
        (Some(cwd), io::ErrorKind::NotFound) if !cwd.is_dir() => format!(
            "cannot start \"{program}\": working directory {} does not exist",
            cwd.display()
        ),
        (_, io::ErrorKind::NotFound) => {
            format!("cannot start \"{program}\": command not found ({err})")
        }
        (_, io::ErrorKind::PermissionDenied) => {
            format!("cannot start \"{program}\": permission denied ({err})")
        }
        (_, io::ErrorKind::WouldBlock) => format!(
            "cannot start \"{program}\": too many processes (the user's process limit, `ulimit -u`, \
             or the system's) ({err})"
        ),
        _ => format!("cannot start \"{program}\": {err}"),
    }
}

/// A child's status as an exit code, and the signal that killed it, if any.
pub fn status_parts(status: &ExitStatus) -> (Option<i32>, Option<i32>) {
    (status.code(), status.signal())
}

/// The runtime of the output thread, which reads and logs every child's output, so that reading,
/// formatting and writing log lines never holds up the workers that run the jobs' fires. Each
/// stream is read at up to [`OUTPUT_RATE`]; a child that writes faster waits on its full pipe.
/// `None` if the thread could not be started: output is then read on the caller's runtime.
fn output_runtime() -> Option<&'static tokio::runtime::Handle> {
    start_output_thread()
}

/// Starts the output thread (see `output_runtime`) if it is not running yet. The run environment
/// calls it at start, so the thread and its descriptors exist before the first run.
pub fn start_output_thread() -> Option<&'static tokio::runtime::Handle> {
    static OUTPUT: OnceLock<Option<tokio::runtime::Handle>> = OnceLock::new();
    OUTPUT
        .get_or_init(|| {
            let (handle_tx, handle_rx) = std_mpsc::channel();
            let started = std::thread::Builder::new()
                .name("tickd-output".to_owned())
                .spawn(move || {
                    match tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                    {
                        Ok(runtime) => {
                            let _ = handle_tx.send(Ok(runtime.handle().clone()));
                            runtime.block_on(std::future::pending::<()>());
                        }
                        Err(err) => {
                            let _ = handle_tx.send(Err(err));
                        }
                    }
                });
            match started.map(|_| handle_rx.recv()) {
                Ok(Ok(Ok(handle))) => Some(handle),
                Ok(Ok(Err(err))) | Err(err) => {
                    tracing::warn!("cannot start the output thread, reading output on the scheduler's threads: {err}");
                    None
                }
                Ok(Err(_)) => None,
            }
        })
        .as_ref()
}

/// The most output a run's stream is read at, in bytes per second, beyond short bursts: far more
/// than any log needs, far less than a child writing as fast as it can (several GB/s), whose
/// pipe copying would otherwise take two cores' worth of CPU from the scheduler.
const OUTPUT_RATE: u64 = 128 * 1024 * 1024;
/// How far ahead of [`OUTPUT_RATE`] a stream may read in a burst.
const OUTPUT_BURST: Duration = Duration::from_millis(50);

/// Logs a child's output line by line. Lines longer than [`MAX_LINE`] are cut and marked, so a
/// child that never prints a newline cannot grow the daemon's memory; bytes that are not UTF-8
/// are shown lossily.
async fn pump(pipe: OwnedFd, job: &str, run_id: RunId, stream: &str, clock: Clock) {
    let reader = match tokio::net::unix::pipe::Receiver::from_owned_fd(pipe) {
        Ok(reader) => reader,
        Err(err) => {
            tracing::warn!(job, run = %run_id, stream, "cannot read output: {err}");
            return;
        }
    };
    let mut reader = BufReader::with_capacity(64 * 1024, reader);
    let mut line: Vec<u8> = Vec::new();
    // True while skipping the rest of a line that was already cut.
    let mut cutting = false;
    let mut since_yield = 0usize;
    // When the stream's output so far would have been read at exactly OUTPUT_RATE (a GCRA
    // token bucket): reading pauses while it is more than OUTPUT_BURST ahead of now.
    let mut paced_until = clock.now();
    loop {
        let chunk = match reader.fill_buf().await {
            Ok([]) => break,
            Ok(chunk) => chunk,
            Err(err) => {
                tracing::warn!(job, run = %run_id, stream, "cannot read output: {err}");
                break;
            }
        };
        let (piece, newline) = match chunk.iter().position(|&b| b == b'\n') {
            Some(i) => (&chunk[..i], true),
            None => (chunk, false),
        };
        let consumed = piece.len() + usize::from(newline);
        if !cutting {
            let room = MAX_LINE - line.len();
            line.extend_from_slice(&piece[..piece.len().min(room)]);
            if piece.len() > room {
                emit(job, run_id, stream, &line, true);
                line.clear();
                cutting = true;
            }
        }
        if newline {
            if !cutting {
                emit(job, run_id, stream, &line, false);
            }
            line.clear();
            cutting = false;
        }
        reader.consume(consumed);
        // A child that floods its output would otherwise keep the output thread to itself for
        // milliseconds between yields (tokio's budget counts reads, not bytes): let the other
        // runs' output through every 64 KiB.
        since_yield += consumed;
        if since_yield >= YIELD_EVERY {
            paced_until = paced_until.max(clock.now())
                + Duration::from_secs_f64(since_yield as f64 / OUTPUT_RATE as f64);
            since_yield = 0;
            let allowed = paced_until.checked_sub(OUTPUT_BURST);
            if allowed.is_some_and(|at| at > clock.now()) {
                // A flood: the child waits on its full pipe meanwhile, instead of taking the
                // CPU from the scheduler.
                clock.sleep_until(paced_until - OUTPUT_BURST).await;
            } else {
                tokio::task::yield_now().await;
            }
        }
    }
    if !line.is_empty() {
        emit(job, run_id, stream, &line, false);
    }
}

fn emit(job: &str, run_id: RunId, stream: &str, line: &[u8], cut: bool) {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let text = String::from_utf8_lossy(line);
    if cut {
        tracing::info!(target: "tickd::output", job, run = %run_id, stream, "{text} [line cut at {MAX_LINE} bytes]");
    } else {
        tracing::info!(target: "tickd::output", job, run = %run_id, stream, "{text}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A stand-in keeper: a script in `dir` run as `keeper __keeper`, with `body` as its shell code.
    fn fake_keeper(dir: &Path, body: &str) -> std::path::PathBuf {
        use std::os::unix::fs::PermissionsExt;
        let path = dir.join("keeper");
        std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).expect("write the fake keeper");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        path
    }

    /// `tell` wrote to a blocking pipe: with the keeper stopped, the 64 KiB pipe filled after
    /// ~4,900 runs and every later run start blocked its worker thread for good.
    #[test]
    fn telling_a_keeper_that_stopped_reading_never_blocks() {
        let dir = tempfile::tempdir().expect("tempdir");
        let keeper = GroupKeeper::start(&fake_keeper(dir.path(), "exec sleep 1000 2>/dev/null"))
            .expect("start the fake keeper");
        let pid = keeper.pid().expect("a keeper");
        let (done, finished) = std_mpsc::channel();
        std::thread::spawn(move || {
            // Ten times what fills the pipe (each run is a "+PGID" and a "-PGID" line).
            for run in 0..50_000 {
                let group = Pid::from_raw(1000 + run % 30_000);
                keeper.register(group);
                keeper.unregister(group);
            }
            keeper.register(Pid::from_raw(77));
            keeper.check();
            let _ = done.send(keeper);
        });
        let outcome = finished.recv_timeout(Duration::from_secs(30));
        let _ = nix::sys::signal::kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
        let keeper = outcome.expect("50,000 runs told without blocking");
        let state = keeper.lock();
        // The backlog is the groups whose news the keeper is missing, not every line since.
        assert!(state.dirty.len() <= 30_001, "{}", state.dirty.len());
        assert_eq!(state.groups, BTreeSet::from([77]));
        assert!(state.down.is_none(), "a stopped keeper is not a dead one");
    }

    /// A SIGKILLed keeper stayed a zombie, was never replaced, and the groups registered with it
    /// were no longer killed with the daemon.
    #[test]
    fn a_dead_keeper_is_reaped_and_replaced_and_told_every_live_group() {
        let dir = tempfile::tempdir().expect("tempdir");
        let told = dir.path().join("told");
        let script = format!("exec cat >> '{}' 2>/dev/null", told.display());
        let keeper =
            GroupKeeper::start(&fake_keeper(dir.path(), &script)).expect("start the fake keeper");
        for pgid in [101, 102, 103] {
            keeper.register(Pid::from_raw(pgid));
        }
        keeper.unregister(Pid::from_raw(102));
        let first = keeper.pid().expect("a keeper");
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        let wait_for = |what: &str, condition: &dyn Fn() -> bool| {
            while !condition() {
                assert!(std::time::Instant::now() < deadline, "timed out: {what}");
                std::thread::sleep(Duration::from_millis(10));
            }
        };
        wait_for("the first keeper reads", &|| {
            std::fs::read_to_string(&told).is_ok_and(|t| t.ends_with("-102\n"))
        });
        nix::sys::signal::kill(Pid::from_raw(first as i32), Signal::SIGKILL).expect("kill");
        wait_for("the keeper is found dead", &|| {
            keeper.check();
            keeper.pid() != Some(first)
        });
        assert!(keeper.down().is_none(), "{:?}", keeper.down());
        assert_eq!(keeper.metrics().1.get(), 1, "one restart");
        assert_eq!(keeper.metrics().0.get(), 1, "up again");
        // Reaped: no zombie left (its /proc entry is gone).
        assert!(
            !std::path::Path::new(&format!("/proc/{first}")).exists(),
            "the dead keeper was reaped"
        );
        let second = keeper.pid().expect("a new keeper");
        wait_for("the new keeper is told the live groups", &|| {
            std::fs::read_to_string(&told)
                .is_ok_and(|t| t == "+101\n+102\n+103\n-102\n+101\n+103\n")
        });
        let _ = nix::sys::signal::kill(Pid::from_raw(second as i32), Signal::SIGKILL);
    }
}
