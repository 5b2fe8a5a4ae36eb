//! The group keeper: a helper process that kills the process groups of runs in flight should the
//! daemon die without stopping them. See [`GroupKeeper`].

use std::collections::BTreeSet;
use std::io::{self, BufRead, Write};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Stdio;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use nix::sys::signal::Signal;
use nix::unistd::Pid;

use super::group::signal_group;

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
            let more = if self.partial.is_empty() {
                self.write_batch()
            } else {
                self.write_partial()
            };
            if !more {
                return;
            }
        }
    }

    /// The next lines of the backlog, as many as fit in `PIPE_BUF`, and the groups they settle
    /// (with those in `dirty` that are owed no line after all).
    fn next_batch(&self) -> (Vec<u8>, Vec<i32>) {
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
        (batch, settled)
    }

    /// Writes the next batch of the backlog; `false` when there is none or the pipe took nothing.
    fn write_batch(&mut self) -> bool {
        let (mut batch, settled) = self.next_batch();
        if batch.is_empty() {
            for pgid in settled {
                self.dirty.remove(&pgid);
            }
            return false;
        }
        let Some(written) = self.write(&batch) else {
            return false;
        };
        for pgid in settled {
            self.dirty.remove(&pgid);
            if self.groups.contains(&pgid) {
                self.told.insert(pgid);
            } else {
                self.told.remove(&pgid);
            }
        }
        self.partial = batch.split_off(written);
        true
    }

    /// Writes what is left of a batch the pipe took only in part; `false` when it took nothing.
    fn write_partial(&mut self) -> bool {
        let partial = std::mem::take(&mut self.partial);
        match self.write(&partial) {
            Some(written) => {
                self.partial = partial[written..].to_vec();
                true
            }
            None => {
                self.partial = partial;
                false
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

#[cfg(test)]
mod tests {
    use std::sync::mpsc as std_mpsc;

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
