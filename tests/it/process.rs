//! A child run of the real binary: how it starts or fails to, what it inherits (descriptors,
//! signal state, environment), its output in the log, how a timeout or a leftover process ends it,
//! and that thousands of runs grow nothing.

use std::fs;
use std::process::{Command, Stdio};
use std::time::Duration;

use nix::sys::signal::Signal;

use crate::support::{eventually, is_alive, read_pid_wait, Daemon};

#[test]
fn child_jobs_run_and_their_output_is_logged() {
    let mut d = Daemon::start(
        r#"
[jobs.hello]
every = "200ms"
command = ["echo", "hello; $(not a shell) 'quoted'"]

[jobs.errors]
every = "200ms"
shell = "echo oops >&2; exit 3"

[jobs.missing]
every = "200ms"
command = ["/nonexistent/program"]

[jobs.not-executable]
every = "200ms"
command = ["./not-executable.sh"]

[jobs.bad-cwd]
every = "200ms"
command = ["true"]
cwd = "/nonexistent/dir"
"#,
    );
    let log = d.wait_log_n("hello; $(not a shell) 'quoted'", 2);
    assert!(
        log.contains("job=hello run="),
        "output lines carry job and run id:\n{log}"
    );
    let log = d.wait_log("oops");
    assert!(log.contains("job=errors"), "{log}");
    assert!(
        log.contains("stream=\"stderr\"") || log.contains("stream=stderr"),
        "{log}"
    );
    let log = d.wait_log("exit_code=3");
    assert!(log.contains("reason=\"exited with code 3\""), "{log}");
    let log = d.wait_log("command not found");
    assert!(log.contains("job=missing"), "{log}");
    {
        use std::os::unix::fs::PermissionsExt;
        let script = d.path("not-executable.sh");
        fs::write(&script, "echo hi\n").expect("script");
        fs::set_permissions(&script, fs::Permissions::from_mode(0o644)).expect("chmod");
    }
    let log = d.wait_log("permission denied");
    assert!(log.contains("job=not-executable"), "{log}");
    let log = d.wait_log("working directory /nonexistent/dir does not exist");
    assert!(log.contains("job=bad-cwd"), "{log}");
    // A failed start is a failed run, not a dead daemon.
    d.wait_log_n("command not found", 3);
    d.signal(Signal::SIGTERM);
    assert_eq!(d.wait_exit(), 0, "{}", d.log());
}

#[test]
fn long_lines_are_cut_and_marked() {
    let mut d = Daemon::start(
        r#"
[jobs.long-line]
every = "100ms"
shell = "head -c 70000 /dev/zero | tr '\\0' x; echo; echo after-the-long-line"
"#,
    );
    let log = d.wait_log("after-the-long-line");
    assert!(log.contains("[line cut at 65536 bytes]"), "no cut marker");
    let longest = log.lines().map(str::len).max().unwrap_or(0);
    assert!(longest < 66_000, "a log line of {longest} bytes");
    d.signal(Signal::SIGTERM);
    assert_eq!(d.wait_exit(), 0);
}

#[test]
fn output_abuse_does_not_grow_the_daemon() {
    let mut d = Daemon::launch(
        r#"
[jobs.flood]
every = "1h"
run_on_start = true
shell = "head -c 2000000000 /dev/zero; printf 'binary \\377\\376\\000 end\\n'; echo done > flood.done"

[jobs.closed-stdout]
every = "100ms"
shell = "exec >&-; echo gone; echo still-running >&2"
"#,
        |command, _| {
            command
                .args(["run", "jobs.toml"])
                .env("TICKD_LOG", "info")
                .stderr(Stdio::null());
        },
    );
    let pid = d.child.id();
    let rss_mb = || {
        fs::read_to_string(format!("/proc/{pid}/status"))
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with("VmHWM:"))
                    .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
            })
            .unwrap_or(0)
            / 1024
    };
    // 2 GB without a newline, read as 64 KiB cut lines, then a binary line: the daemon's peak
    // memory stays far below the output's size. (The job can only finish once tickd has read
    // all of it: the pipe holds 64 KiB.)
    let _ = d.wait_file("flood.done");
    assert!(
        d.child.try_wait().expect("try_wait").is_none(),
        "tickd died"
    );
    assert!(rss_mb() < 64, "peak RSS {} MB", rss_mb());
    d.signal(Signal::SIGTERM);
    d.signal(Signal::SIGTERM);
    let code = d.wait_exit();
    assert!(code == 0 || code == 3, "exit {code}");
}

#[test]
fn children_get_only_stdio_descriptors_and_clean_signal_state() {
    let mut d = Daemon::launch(
        r#"
[jobs.inspect]
every = "100ms"
shell = "echo $$ > child.pid; exec sleep 1000"

[jobs.status]
every = "100ms"
shell = "exit 3"
"#,
        |command, log| {
            // The daemon itself inherits ignored signals (SIGCHLD among them, which would let the
            // kernel reap children before their status is read) and a descriptor without
            // close-on-exec.
            command
                .env("TICKD", env!("CARGO_BIN_EXE_tickd"))
                .stderr(fs::File::create(log).expect("log file"));
            // (dash will not ignore SIGCHLD; Python's exec keeps it ignored.)
            let shell = "trap '' USR1 USR2; exec 7</dev/null; exec python3 -c \
                'import os, signal, sys; signal.signal(signal.SIGCHLD, signal.SIG_IGN); \
                 os.execv(sys.argv[1], sys.argv[1:])' \"$TICKD\" run jobs.toml";
            let mut wrapped = Command::new("/bin/sh");
            wrapped.arg("-c").arg(shell);
            std::mem::swap(command, &mut wrapped);
            // `wrapped` is now the original: carry its settings over.
            command
                .current_dir(wrapped.get_current_dir().expect("cwd"))
                .envs(wrapped.get_envs().filter_map(|(k, v)| v.map(|v| (k, v))))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(fs::File::create(log).expect("log file"));
        },
    );
    let child = read_pid_wait(&d, "child.pid");
    // Exit statuses still arrive.
    d.wait_log("job=status run=");
    d.wait_log("exit_code=3");
    eventually("the job exec'd sleep", || {
        fs::read_to_string(format!("/proc/{child}/comm")).is_ok_and(|c| c == "sleep\n")
    });
    // As it starts, `sleep` opens (and closes) its libraries' and locale's files as descriptor 3:
    // its descriptors are counted once it sleeps, in clock_nanosleep.
    let clock_nanosleep = if cfg!(target_arch = "aarch64") {
        "115"
    } else {
        "230"
    };
    eventually("the job's sleep sleeps", || {
        fs::read_to_string(format!("/proc/{child}/syscall"))
            .is_ok_and(|call| call.split(' ').next() == Some(clock_nanosleep))
    });
    let mut fds: Vec<String> = fs::read_dir(format!("/proc/{child}/fd"))
        .expect("child fds")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    fds.sort();
    assert_eq!(fds, ["0", "1", "2"]);
    let status = fs::read_to_string(format!("/proc/{child}/status")).expect("status");
    assert!(status.contains("SigBlk:\t0000000000000000\n"), "{status}");
    assert!(status.contains("SigIgn:\t0000000000000000\n"), "{status}");
    // The daemon really did have the extra descriptor and the ignored signals.
    let daemon_pid = d.child.id();
    let fds: Vec<String> = fs::read_dir(format!("/proc/{daemon_pid}/fd"))
        .expect("daemon fds")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert!(fds.contains(&"7".to_owned()), "{fds:?}");
    let status = fs::read_to_string(format!("/proc/{daemon_pid}/status")).expect("status");
    assert!(!status.contains("SigIgn:\t0000000000000000"), "{status}");
    // A second SIGTERM during the drain skips the (default, 30 s) wait.
    d.signal(Signal::SIGTERM);
    d.wait_log("stopping: waiting for");
    d.signal(Signal::SIGTERM);
    assert_eq!(d.wait_exit(), 3);
    assert!(d.log().contains("second stop request"));
}

#[test]
fn the_environment_policy_decides_what_jobs_inherit() {
    let run_env = |daemon: &str| {
        let d = Daemon::launch(
            &format!("[daemon]\n{daemon}\n[jobs.env]\nevery = \"100ms\"\nshell = \"env > env.tmp; mv env.tmp env.txt\"\nenv = {{ OWN = \"mine\" }}\n"),
            |command, log| {
                command
                    .args(["run", "jobs.toml"])
                    .env("SECRET_TOKEN", "hunter2")
                    .env("KEEPME", "kept")
                    .env("NOTIFY_SOCKET", "/nonexistent/notify.sock")
                    .env("WATCHDOG_USEC", "0")
                    .stderr(fs::File::create(log).expect("log file"));
            },
        );
        d.wait_file("env.txt")
    };
    let inherited = run_env("");
    assert!(inherited.contains("SECRET_TOKEN=hunter2\n") && inherited.contains("OWN=mine\n"));
    // Variables for tickd itself never reach a job.
    assert!(
        !inherited.contains("NOTIFY_SOCKET") && !inherited.contains("WATCHDOG_USEC"),
        "{inherited}"
    );
    let removed = run_env("env_remove = [\"SECRET_TOKEN\"]");
    assert!(
        !removed.contains("SECRET_TOKEN") && removed.contains("KEEPME=kept\n"),
        "{removed}"
    );
    let cleared = run_env("env_clear = true\nenv_keep = [\"KEEPME\", \"PATH\"]");
    assert!(!cleared.contains("SECRET_TOKEN"), "{cleared}");
    assert!(
        cleared.contains("KEEPME=kept\n") && cleared.contains("OWN=mine\n"),
        "{cleared}"
    );
    assert!(cleared.contains("PATH="), "{cleared}");
    assert!(!cleared.contains("HOME="), "{cleared}");
}

#[test]
fn a_timeout_stops_the_whole_group_and_the_job_goes_on() {
    let mut d = Daemon::start(
        r#"
[jobs.slow]
every = "100ms"
timeout = "200ms"
kill_grace = "200ms"
shell = "sleep 1000 & echo $! >> sleepers; wait"
"#,
    );
    d.wait_log_n("outcome=timeout", 2);
    let sleepers: Vec<i32> = fs::read_to_string(d.path("sleepers"))
        .expect("sleepers")
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect();
    assert!(sleepers.len() >= 2);
    // Every run's background sleeper (in the run's group) was stopped with its run, except
    // possibly the current one.
    eventually("stopped runs left no process", || {
        sleepers[..sleepers.len() - 1].iter().all(|&p| !is_alive(p))
    });
    d.signal(Signal::SIGTERM);
    d.wait_exit();
}

#[test]
fn a_stopped_job_is_continued_so_it_sees_sigterm() {
    let mut d = Daemon::start(
        r#"
[jobs.frozen]
every = "100ms"
timeout = "200ms"
kill_grace = "60s"
shell = "kill -STOP $$; sleep 1000"
"#,
    );
    let log = d.wait_log("outcome=timeout");
    // SIGTERM alone would never reach a stopped process; without the SIGCONT this would wait for
    // the 60 s grace and need SIGKILL.
    assert!(!log.contains("sending SIGKILL"), "{log}");
    d.signal(Signal::SIGTERM);
    assert_eq!(d.wait_exit(), 0);
}

#[test]
fn a_run_ends_when_its_process_exits_even_if_a_grandchild_holds_the_pipe() {
    let mut d = Daemon::start(
        r#"
[jobs.bg]
every = "100ms"
shell = "sleep 1000 & echo $! > sleeper.pid; echo started"
kill_grace = "200ms"
"#,
    );
    let sleeper = read_pid_wait(&d, "sleeper.pid");
    let log = d.wait_log("outcome=success");
    assert!(log.contains("job=bg"), "{log}");
    // The background process left in the run's group was stopped when the run ended.
    assert!(
        log.contains("processes are left in the run's process group"),
        "{log}"
    );
    eventually("the leftover sleeper was stopped", || !is_alive(sleeper));
    d.signal(Signal::SIGTERM);
    assert_eq!(d.wait_exit(), 0);
}

/// A zombie left in a run's process group (exited, its parent gone to another group and not
/// reaping it) counted as alive: the run waited its whole `kill_grace` for it.
#[test]
fn a_zombie_left_in_the_run_group_is_not_alive() {
    // The leader's background python forks a child that exits at once, then moves itself to a
    // group of its own and never reaps it: the run's group holds only that zombie.
    let mut d = Daemon::start(
        r#"
[jobs.z]
every = "1h"
run_on_start = true
kill_grace = "30s"
shell = 'python3 -c "$SCRIPT" & sleep 0.5'
env = { SCRIPT = "import os, time\nif os.fork() == 0:\n    os._exit(0)\nos.setpgid(0, 0)\nopen('parent', 'w').write(str(os.getpid()) + '\\n')\ntime.sleep(60)\n" }
"#,
    );
    let log = d.wait_log("run finished");
    let parent: i32 = d.wait_file("parent").trim().parse().expect("pid");
    let finished = log
        .lines()
        .find(|l| l.contains("run finished"))
        .expect("line");
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(parent), Signal::SIGKILL);
    assert!(!log.contains("processes are left"), "{log}");
    let duration: f64 = finished
        .split("duration_ms=")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|ms| ms.parse().ok())
        .expect("duration");
    // Well under the 30 s grace the zombie used to cost.
    assert!(duration < 15_000.0, "{finished}");
    d.signal(Signal::SIGTERM);
    assert_eq!(d.wait_exit(), 0, "{}", d.log());
}

#[test]
fn no_descriptor_or_thread_growth_over_thousands_of_child_runs() {
    let d = Daemon::start(
        "[jobs.c1]\nevery = \"10ms\"\ncommand = [\"true\"]\n[jobs.c2]\nevery = \"10ms\"\nshell = \"echo out; echo err >&2\"\n[jobs.h]\nevery = \"10ms\"\nhandler = \"log\"\n",
    );
    let pid = d.child.id();
    // Runs in flight hold pipes: the floor over a few samples is what a leak would raise.
    let count = |what: &str| {
        (0..20)
            .map(|_| {
                std::thread::sleep(Duration::from_millis(5));
                fs::read_dir(format!("/proc/{pid}/{what}"))
                    .expect("proc")
                    .count()
            })
            .min()
            .unwrap_or(0)
    };
    d.wait_log_n("outcome=success", 300);
    let (fds, threads) = (count("fd"), count("task"));
    d.wait_log_n("outcome=success", 3000);
    let (fds_after, threads_after) = (count("fd"), count("task"));
    assert!(fds_after <= fds + 2, "fds {fds} -> {fds_after}");
    assert!(
        threads_after <= threads + 2,
        "threads {threads} -> {threads_after}"
    );
}
