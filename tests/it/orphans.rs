//! Nothing outlives the daemon: a SIGKILLed tickd takes its runs' whole process groups with it
//! (the parent-death signal, then the group keeper), the keeper can neither stall the daemon nor
//! die unnoticed, and a subreaper tickd reaps the orphans reparented to it.

use std::fs;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::Duration;

use nix::sys::signal::Signal;

use crate::support::{
    eventually, is_alive, live_group_members, read_pid_wait, tickd, zombies_of, Daemon,
};

#[test]
fn a_sigkilled_daemon_takes_its_child_with_it() {
    let mut d = Daemon::start(
        r#"
[jobs.sleeper]
every = "100ms"
shell = "echo $$ > child.pid; exec sleep 1000"
"#,
    );
    let child = read_pid_wait(&d, "child.pid");
    assert!(is_alive(child));
    d.signal(Signal::SIGKILL);
    d.wait_exit();
    eventually("the child died with the daemon", || !is_alive(child));
}

#[test]
fn a_sigkilled_daemon_takes_grandchildren_in_the_job_group_with_it() {
    let mut d = Daemon::start(
        r#"
[jobs.family]
every = "100ms"
shell = "sh -c 'echo $$ > grandchild.pid; exec sleep 1000' & echo $$ > child.pid; wait"
"#,
    );
    let child = read_pid_wait(&d, "child.pid");
    let grandchild = read_pid_wait(&d, "grandchild.pid");
    assert!(is_alive(grandchild));
    d.signal(Signal::SIGKILL);
    d.wait_exit();
    eventually("the whole job group died with the daemon", || {
        live_group_members(child).is_empty()
    });
    assert!(!is_alive(grandchild));
}

#[test]
fn the_group_keeper_kills_registered_groups_at_eof_only() {
    // A stand-in job group: a process in a group of its own.
    let mut job = Command::new("sleep")
        .arg("1000")
        .process_group(0)
        .spawn()
        .expect("sleep");
    let pgid = job.id() as i32;
    let mut keeper = tickd()
        .arg("__keeper")
        .stdin(Stdio::piped())
        .spawn()
        .expect("keeper");
    {
        use std::io::Write;
        let mut pipe = keeper.stdin.take().expect("stdin");
        // Registered, unregistered, registered again: alive until EOF.
        writeln!(pipe, "+{pgid}\n-{pgid}\n+{pgid}\ngarbage").expect("write");
        std::thread::sleep(Duration::from_millis(100));
        assert!(is_alive(pgid));
    } // EOF: the daemon is "gone".
    assert!(keeper.wait().expect("keeper exit").success());
    let status = job.wait().expect("job");
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&status),
        Some(9)
    );
}

/// The daemon's group keeper: its child whose command line holds `__keeper`.
fn keeper_of(daemon: &Daemon) -> Option<i32> {
    let me = daemon.child.id() as i32;
    crate::support::all_processes()
        .into_iter()
        .filter(|(_, state, ppid, _)| *ppid == me && state != "Z")
        .map(|(pid, ..)| pid)
        .find(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|cmdline| String::from_utf8_lossy(&cmdline).contains("__keeper"))
        })
}

/// The keeper's pipe was written blocking, under a lock: with the keeper SIGSTOPped, once the
/// pipe was full (~4,900 runs) every run start blocked its worker, in-process jobs stopped too
/// and SIGTERM was ignored. The pipe is shrunk to one page here so that it fills in seconds.
#[test]
fn a_stopped_group_keeper_stalls_neither_runs_nor_shutdown() {
    use std::os::unix::fs::OpenOptionsExt;
    use std::time::{Duration, Instant};

    let mut d = Daemon::start(
        r#"
[jobs.child]
every = "50ms"
command = ["true"]

[jobs.busy]
every = "20ms"
command = ["true"]

[jobs.inproc]
every = "50ms"
handler = "log"
"#,
    );
    let keeper = keeper_of(&d).expect("a group keeper");
    {
        let pipe = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(nix::fcntl::OFlag::O_NONBLOCK.bits())
            .open(format!("/proc/{keeper}/fd/0"))
            .expect("the keeper's pipe");
        nix::fcntl::fcntl(
            std::os::fd::AsRawFd::as_raw_fd(&pipe),
            nix::fcntl::FcntlArg::F_SETPIPE_SZ(4096),
        )
        .expect("shrink the pipe");
    }
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(keeper), Signal::SIGSTOP).expect("stop");
    let started = |log: &str, job: &str| {
        log.lines()
            .filter(|l| l.contains("run started") && l.contains(&format!("job={job} ")))
            .count()
    };
    let processes = |log: &str| log.matches("process started").count();
    let log = d.log();
    let (child, inproc, spawned) = (
        started(&log, "child"),
        started(&log, "inproc"),
        processes(&log),
    );
    let since = Instant::now();
    std::thread::sleep(Duration::from_secs(12));
    let log = d.log();
    let expected = since.elapsed().as_secs_f64() * 20.0;
    let spawned = processes(&log) - spawned;
    // Each process is a "+PGID\n" and a "-PGID\n" line (6 to 8 bytes each): far more than the
    // 4096 bytes the stopped keeper's pipe holds.
    assert!(spawned > 600, "{spawned} processes started");
    for (job, before) in [("child", child), ("inproc", inproc)] {
        let fired = started(&log, job) - before;
        assert!(
            fired as f64 >= 0.6 * expected,
            "{job}: {fired} runs in 12 s, {expected:.0} expected"
        );
    }
    d.signal(Signal::SIGTERM);
    assert_eq!(d.wait_exit(), 0, "{}", d.log());
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(keeper), Signal::SIGCONT);
}

/// A SIGKILLed keeper was logged once, stayed a zombie, was never replaced, `/healthz` stayed
/// 200, and a daemon killed later left its jobs' grandchildren alive. Here the first restart
/// fails (the binary is moved away), so the outage is seen; then it is put back.
#[test]
fn a_killed_group_keeper_is_reaped_reported_and_replaced() {
    use crate::support::{eventually, http, is_alive, proc_stat, sample};

    let bin = tempfile::tempdir().expect("tempdir");
    let program = bin.path().join("tickd");
    let moved = bin.path().join("tickd.away");
    std::fs::copy(env!("CARGO_BIN_EXE_tickd"), &program).expect("copy tickd");
    let port = crate::support::free_port();
    let mut d = Daemon::launch_program(
        &program,
        &format!(
            r#"
[daemon]
http = "127.0.0.1:{port}"

[jobs.family]
every = "1h"
run_on_start = true
shell = "sleep 300 & echo $! > gc; wait"
"#
        ),
        |command, log| {
            command
                .args(["run", "jobs.toml"])
                .stderr(std::fs::File::create(log).expect("log file"));
        },
    );
    d.wait_log("scheduler started");
    let grandchild: i32 = d.wait_file("gc").trim().parse().expect("a pid");
    let metric = |name: &str| sample(&http(port, "GET", "/metrics", None).1, name);
    assert_eq!(metric("tickd_group_keeper_up"), 1.0);
    let first = keeper_of(&d).expect("a group keeper");
    std::fs::rename(&program, &moved).expect("move the binary away");
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(first), Signal::SIGKILL).expect("kill");
    eventually("/healthz reports the keeper down", || {
        let (code, body) = http(port, "GET", "/healthz", None);
        code == 503 && body.contains("group keeper")
    });
    assert_eq!(metric("tickd_group_keeper_up"), 0.0);
    eventually("the dead keeper is reaped", || proc_stat(first).is_none());
    std::fs::rename(&moved, &program).expect("put the binary back");
    eventually("a new keeper runs", || {
        keeper_of(&d).is_some_and(|pid| pid != first)
    });
    eventually("/healthz is fine again", || {
        http(port, "GET", "/healthz", None).0 == 200
    });
    assert_eq!(metric("tickd_group_keeper_up"), 1.0);
    assert_eq!(metric("tickd_group_keeper_restarts_total"), 1.0);
    // The group registered before the restart was registered with the new keeper too.
    assert!(is_alive(grandchild));
    d.signal(Signal::SIGKILL);
    d.wait_exit();
    eventually("the grandchild died with the daemon", || {
        !is_alive(grandchild)
    });
}

#[test]
fn as_a_subreaper_tickd_reaps_orphaned_grandchildren() {
    let mut d = Daemon::launch(
        // Each run double-forks a short-lived grandchild: orphaned, it is reparented to tickd.
        "[jobs.orphans]\nevery = \"50ms\"\nshell = \"(sleep 0.01 &); echo run >> runs\"\n",
        |command, log| {
            command
                .args(["run", "--subreaper", "jobs.toml"])
                .stderr(fs::File::create(log).expect("log file"));
        },
    );
    d.wait_log("reaping orphaned processes");
    eventually("40 runs", || {
        fs::read_to_string(d.path("runs")).is_ok_and(|r| r.lines().count() >= 40)
    });
    let tickd_pid = d.child.id();
    // Zombies may exist for an instant between an exit and its reaping; none accumulate.
    eventually("no zombie children of tickd", || {
        zombies_of(tickd_pid).is_empty()
    });
    // tokio still got the exit status of every run it waits for.
    let log = d.wait_log_n("outcome=success", 40);
    assert!(!log.contains("waiting for the process failed"), "{log}");
    d.signal(Signal::SIGTERM);
    assert_eq!(d.wait_exit(), 0);
}
