//! Signals to the real binary: TERM, INT and QUIT drain the runs in flight (until the drain
//! timeout), a SIGTERM at any moment of start-up, USR1, USR2 and ALRM, and STOP then CONT. HUP is
//! in `reload`.

use std::fs;
use std::process::Stdio;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::support::{
    eventually, free_port, http, is_alive, live_group_members, read_pid_wait, sample, tickd,
    Daemon, PATIENCE,
};

#[test]
fn sigterm_waits_for_a_long_child_run_and_exits_0() {
    let mut d = Daemon::start(
        r#"
[daemon]
shutdown_timeout = "60s"

[jobs.long]
every = "100ms"
shell = "echo $$ > started.pid; sleep 2; echo finished > done"
"#,
    );
    let _ = d.wait_file("started.pid");
    d.signal(Signal::SIGTERM);
    assert_eq!(d.wait_exit(), 0, "{}", d.log());
    assert_eq!(
        fs::read_to_string(d.path("done")).expect("run finished"),
        "finished\n"
    );
    let log = d.log();
    // Acknowledged at once, with the real drain timeout: before the run in flight ends.
    let position = |what: &str| {
        log.find(what)
            .unwrap_or_else(|| panic!("no {what:?} in the log:\n{log}"))
    };
    let ack = position("stopping: waiting for 1 run, up to 1m");
    assert!(ack < position("run finished"), "{log}");
    assert!(log.contains("every run finished"), "{log}");
    // Exactly one run: nothing fired after the SIGTERM.
    assert_eq!(log.matches("run started").count(), 1, "{log}");
}

/// Issue 18: a stop with nothing running said nothing until "shut down".
#[test]
fn a_stop_with_no_run_in_flight_is_acknowledged() {
    for signal in [Signal::SIGTERM, Signal::SIGINT] {
        let mut d = Daemon::start("[jobs.rare]\nevery = \"1h\"\nhandler = \"log\"\n");
        d.wait_log("scheduler started");
        d.signal(signal);
        assert_eq!(d.wait_exit(), 0, "{}", d.log());
        let log = d.log();
        assert!(
            log.contains("stopping: no runs in flight"),
            "{signal}: {log}"
        );
    }
}

#[test]
fn drain_timeout_kills_the_process_group_with_grandchildren_and_exits_3() {
    let mut d = Daemon::start(
        r#"
[daemon]
shutdown_timeout = "300ms"

[jobs.stubborn]
every = "100ms"
kill_grace = "300ms"
shell = "trap '' TERM; sh -c 'echo $$ > grandchild.pid; exec sleep 1000' & echo $$ > child.pid; wait; sleep 1000"
"#,
    );
    let child = read_pid_wait(&d, "child.pid");
    let grandchild = read_pid_wait(&d, "grandchild.pid");
    assert!(is_alive(child) && is_alive(grandchild));
    d.signal(Signal::SIGTERM);
    assert_eq!(d.wait_exit(), 3, "{}", d.log());
    eventually("the job's process group is gone", || {
        live_group_members(child).is_empty()
    });
    assert!(!is_alive(grandchild));
    let log = d.log();
    assert!(log.contains("sending SIGKILL"), "{log}");
}

/// A SIGTERM was lost once in 1,000 starts under load: the log threads, started before the
/// control signals were held, did not block them, so a signal arriving while tokio registered
/// its listeners ran the handler there and was broadcast before the listener subscribed. Every
/// thread started before the listeners must block the control signals, so that they wait for the
/// one thread that unblocks them once it listens.
#[test]
fn threads_started_before_the_signal_listeners_block_the_control_signals() {
    let mut d = Daemon::start("[jobs.a]\nevery = \"1s\"\nhandler = \"log\"\n");
    let pid = d.child.id();
    const SIGTERM_BIT: u64 = 1 << (15 - 1);
    let mut checked = Vec::new();
    for task in fs::read_dir(format!("/proc/{pid}/task"))
        .expect("tasks")
        .flatten()
    {
        let dir = task.path();
        let name = fs::read_to_string(dir.join("comm")).unwrap_or_default();
        let name = name.trim().to_owned();
        if !name.starts_with("tickd-log") {
            continue;
        }
        let status = fs::read_to_string(dir.join("status")).unwrap_or_default();
        let blocked = status
            .lines()
            .find_map(|line| line.strip_prefix("SigBlk:"))
            .and_then(|mask| u64::from_str_radix(mask.trim(), 16).ok())
            .unwrap_or(0);
        assert!(
            blocked & SIGTERM_BIT != 0,
            "thread {name} does not block SIGTERM (SigBlk {blocked:x})"
        );
        checked.push(name);
    }
    assert!(!checked.is_empty(), "the log's thread: {checked:?}");
    d.signal(Signal::SIGTERM);
    assert_eq!(d.wait_exit(), 0, "{}", d.log());
}

#[test]
fn sigterm_right_after_start_always_exits_cleanly() {
    let dir = tempfile::tempdir().expect("tempdir");
    fs::write(
        dir.path().join("jobs.toml"),
        "[jobs.a]\nevery = \"10ms\"\nshell = \"true\"\n[jobs.b]\nevery = \"10ms\"\nhandler = \"log\"\n",
    )
    .expect("write");
    // At varying moments of start-up: before the handlers are in, while jobs are scheduled, once
    // runs are going. Never a hang, never a code other than the documented ones.
    for i in 0..1000u64 {
        let mut child = tickd()
            .args(["run", "jobs.toml"])
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start");
        std::thread::sleep(Duration::from_micros((i % 100) * 200));
        let pid = Pid::from_raw(child.id() as i32);
        let _ = kill(pid, Signal::SIGTERM);
        let deadline = Instant::now() + PATIENCE;
        let status = loop {
            if let Some(status) = child.try_wait().expect("try_wait") {
                break status;
            }
            assert!(Instant::now() < deadline, "tickd hung after SIGTERM #{i}");
            std::thread::sleep(Duration::from_millis(5));
        };
        // 0 (drained), or killed by the signal itself before the handler was installed
        // (the first microseconds of the process: the default action of SIGTERM).
        let ok = status.code() == Some(0)
            || std::os::unix::process::ExitStatusExt::signal(&status) == Some(15);
        assert!(ok, "attempt {i}: {status:?}");
    }
}

/// SIGUSR1, SIGUSR2, SIGQUIT and SIGALRM killed tickd at once, without a log line or a drain.
#[test]
fn every_signal_tickd_handles_has_its_documented_meaning() {
    let mut d = Daemon::start(
        r#"
[daemon]
shutdown_timeout = "60s"

[jobs.tick]
every = "100ms"
handler = "log"

[jobs.long]
every = "1h"
run_on_start = true
shell = "echo started > started; while [ ! -e go ]; do sleep 0.05; done; echo done > done"
"#,
    );
    d.wait_file("started");
    // SIGUSR1: a status summary, one line per job, the running one shown as running.
    d.signal(Signal::SIGUSR1);
    let log = d.wait_log_n("status report", 3);
    let long = log
        .lines()
        .find(|l| l.contains("status report") && l.contains("job=long"))
        .unwrap_or_else(|| panic!("no report line for long:\n{log}"));
    assert!(long.contains("running=1"), "{long}");
    assert!(
        log.lines()
            .any(|l| l.contains("status report") && l.contains("job=tick")),
        "{log}"
    );
    // SIGUSR2 and SIGALRM: logged, ignored, and the jobs keep firing.
    for (signal, name) in [(Signal::SIGUSR2, "USR2"), (Signal::SIGALRM, "ALRM")] {
        let runs = d.log().matches("job=tick").count();
        d.signal(signal);
        let log = d.wait_log(&format!("signal={name}"));
        assert!(log.contains("ignored"), "{log}");
        d.wait_log_n("job=tick", runs + 4);
    }
    // SIGQUIT: a drain like SIGTERM, not a core dump: the run in flight finishes, exit 0. A
    // report during the drain says so.
    d.signal(Signal::SIGQUIT);
    d.wait_log("stopping: waiting for");
    d.signal(Signal::SIGUSR1);
    let log = d.wait_log("draining");
    assert!(
        log.lines()
            .any(|l| l.contains("status report") && l.contains("draining")),
        "{log}"
    );
    // The run in flight may end now (it waited for this file, not for a clock).
    std::fs::write(d.path("go"), "").expect("go");
    assert_eq!(d.wait_exit(), 0, "{}", d.log());
    assert_eq!(
        std::fs::read_to_string(d.path("done")).ok().as_deref(),
        Some("done\n"),
        "the run was drained"
    );
    assert!(
        d.log().contains("shut down: every run finished"),
        "{}",
        d.log()
    );
}

#[test]
fn a_stopped_and_continued_daemon_does_not_burst() {
    let port = free_port();
    let d = Daemon::start(&format!(
        "[jobs.tick]\nevery = \"100ms\"\nshell = \"date +%s%N >> ticks\"\n[jobs.once]\nevery = \"100ms\"\nhandler = \"log\"\non_missed = \"once\"\n[daemon]\nstate_file = \"state\"\nhttp = \"127.0.0.1:{port}\"\n",
    ));
    d.wait_log_n("outcome=success", 10);
    d.signal(Signal::SIGSTOP);
    let stopped = Instant::now();
    std::thread::sleep(Duration::from_secs(3)); // about 30 fires due meanwhile
    let before = fs::read_to_string(d.path("ticks"))
        .unwrap_or_default()
        .lines()
        .count();
    let continued = chrono::Utc::now().timestamp_nanos_opt().unwrap_or(0);
    d.signal(Signal::SIGCONT);
    // Fires due while stopped, measured: a loaded machine may sleep longer than asked.
    let due_while_stopped = (stopped.elapsed().as_millis() / 100) as usize;
    let resumed = Instant::now();
    d.wait_log("fires missed (the daemon was stalled)");
    std::thread::sleep(Duration::from_millis(550));
    let due_since = (resumed.elapsed().as_millis() / 100) as usize;
    let ticks: Vec<i64> = fs::read_to_string(d.path("ticks"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.parse().ok())
        .collect();
    let after: Vec<&i64> = ticks[before..]
        .iter()
        .filter(|t| **t >= continued)
        .collect();
    // Back on the grid at 10 a second: the runs due since SIGCONT (about 5), never also the
    // 30 that were missed.
    assert!(
        after.len() <= due_since + 2,
        "{} runs right after SIGCONT, {due_since} due",
        after.len()
    );
    let log = d.log();
    assert!(log.contains("skipping to the next one"), "{log}");
    // The `once` job ran exactly one catch-up.
    assert_eq!(log.matches("running one catch-up").count(), 1, "{log}");
    // The fires passed over are counted: those due while stopped, give or take the edges.
    let metrics = http(port, "GET", "/metrics", None).1;
    let expected = due_while_stopped as f64;
    for job in ["tick", "once"] {
        let missed = sample(
            &metrics,
            &format!("tickd_fires_missed_total{{job_name=\"{job}\"}}"),
        );
        assert!(
            (expected - 5.0..=expected + 5.0).contains(&missed),
            "{job}: {missed}, {expected} due while stopped, in\n{metrics}"
        );
    }
}
