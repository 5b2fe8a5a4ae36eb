//! The real binary against hostile input, files and signals (the hardening issues): each test is
//! named after what it pins down.

use nix::sys::signal::Signal;

use crate::binary::{http_server, Daemon};

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
    for (signal, name) in [(Signal::SIGUSR2, "SIGUSR2"), (Signal::SIGALRM, "SIGALRM")] {
        let runs = d.log().matches("job=tick").count();
        d.signal(signal);
        let log = d.wait_log(&format!("signal={name}"));
        assert!(log.contains("ignored"), "{log}");
        d.wait_log_n("job=tick", runs + 4);
    }
    // SIGQUIT: a drain like SIGTERM, not a core dump: the run in flight finishes, exit 0. A
    // report during the drain says so.
    d.signal(Signal::SIGQUIT);
    d.wait_log("waiting for runs in flight");
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

/// An HTTP job had no default timeout: against a server that accepts and never answers, the run
/// hung and the job (overlap `skip`) never fired again, silently.
#[test]
fn an_http_job_against_a_server_that_never_answers_times_out_and_fires_again() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind loopback");
    let port = listener.local_addr().expect("addr").port();
    // Accepts and holds every connection, answering nothing (bounded: a handful is enough).
    std::thread::spawn(move || {
        let held: Vec<_> = listener.incoming().take(20).collect();
        std::thread::sleep(std::time::Duration::from_secs(120));
        drop(held);
    });
    let mut d = Daemon::start(&format!(
        "[jobs.silent]\nevery = \"200ms\"\nhttp = {{ url = \"http://127.0.0.1:{port}/\" }}\n"
    ));
    // The default timeout is the period, at least 1 s: the run ends as a timeout, and the job
    // goes on firing.
    let log = d.wait_log_n("outcome=timeout", 2);
    assert!(log.contains("job=silent"), "{log}");
    d.signal(Signal::SIGTERM);
    assert_eq!(d.wait_exit(), 0, "{}", d.log());
}

/// A run that outlasts many fires of its job is reported, not just counted as skipped fires at
/// debug level.
#[test]
fn a_run_going_for_many_fires_is_reported() {
    let mut d = Daemon::start("[jobs.stuck]\nevery = \"50ms\"\ncommand = [\"sleep\", \"30\"]\n");
    let log = d.wait_log("a run has been going for 10 fires of its job");
    let line = log
        .lines()
        .find(|l| l.contains("has been going for 10 fires"))
        .expect("line");
    assert!(
        line.contains("job=stuck") && line.contains("WARN"),
        "{line}"
    );
    d.signal(Signal::SIGINT);
    d.wait_log("waiting for runs in flight");
    d.signal(Signal::SIGINT);
    assert_eq!(d.wait_exit(), 3, "{}", d.log());
}

/// Every child run gets `TICKD_JOB`, `TICKD_RUN_ID` and `TICKD_SCHEDULED` (the log's value) in
/// its environment, and every HTTP request the same as `X-Tickd-*` headers.
#[test]
fn runs_know_their_job_run_id_and_scheduled_time() {
    let (port, requests) = http_server();
    let mut d = Daemon::start(&format!(
        r#"
[jobs.child]
every = "1h"
run_on_start = true
shell = 'echo "$TICKD_JOB $TICKD_RUN_ID $TICKD_SCHEDULED" > ids'
env = {{ TICKD_JOB = "fake" }}

[jobs.web]
every = "1h"
run_on_start = true
http = {{ url = "http://127.0.0.1:{port}/ok", headers = {{ X-Tickd-Job = "fake" }} }}
"#
    ));
    let ids = d.wait_file("ids");
    let mut fields = ids.split_whitespace();
    assert_eq!(
        fields.next(),
        Some("child"),
        "a job's env cannot fake them: {ids}"
    );
    let run = fields.next().expect("run id");
    let scheduled = fields.next().expect("scheduled");
    let log = d.log();
    let started = log
        .lines()
        .find(|l| l.contains("run started") && l.contains("job=child"))
        .expect("run started");
    assert!(
        started.contains(&format!("run={run} ")),
        "{started} / {ids}"
    );
    assert!(
        started.contains(&format!("scheduled={scheduled} ")),
        "{started} / {ids}"
    );
    assert!(
        scheduled.ends_with('Z') && scheduled.len() == "2026-12-01T00:00:00.000Z".len(),
        "{scheduled}"
    );

    let request = requests
        .recv_timeout(crate::binary::PATIENCE)
        .expect("a request")
        .to_ascii_lowercase();
    assert!(request.contains("x-tickd-job: web\r\n"), "{request}");
    assert!(
        !request.contains("fake"),
        "a job's headers cannot fake it: {request}"
    );
    assert!(request.contains("x-tickd-run-id: "), "{request}");
    assert!(request.contains("x-tickd-scheduled: 20"), "{request}");
    d.signal(Signal::SIGTERM);
    assert_eq!(d.wait_exit(), 0, "{}", d.log());
}

/// `tickd status` printed an empty table and exited 0 when the endpoint's answer was not the
/// jobs list (another program on the port, a proxy's error page).
#[test]
fn status_fails_clearly_on_an_answer_that_is_not_the_jobs_list() {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind loopback");
    let port = listener.local_addr().expect("addr").port();
    std::thread::spawn(move || {
        if let Some(Ok(mut stream)) = listener.incoming().next() {
            let mut buf = [0u8; 4096];
            let _ = stream.read(&mut buf);
            let _ = stream.write_all(
                b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: 13\r\nConnection: close\r\n\r\n<html></html>",
            );
        }
    });
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(
        dir.path().join("jobs.toml"),
        format!("[daemon]\nhttp = \"127.0.0.1:{port}\"\n"),
    )
    .expect("config");
    let out = crate::binary::tickd()
        .current_dir(dir.path())
        .args(["status", "jobs.toml"])
        .output()
        .expect("tickd status");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("not the list of jobs"), "{stderr}");
    assert!(
        out.stdout.is_empty(),
        "no table: {}",
        String::from_utf8_lossy(&out.stdout)
    );
}

/// "Hardening, part 2": 1,100 loopback connections, each sending a partial request head and then
/// nothing, took every descriptor the daemon had; every child run failed with EMFILE and
/// `/healthz` did not answer. Here, under a limit of 200 descriptors, 400 such connections: the
/// endpoint refuses those over its cap, closes the rest after the header-read timeout, and runs
/// and `/healthz` go on.
#[test]
fn slow_http_clients_cannot_take_the_descriptors_runs_and_healthz_need() {
    use std::io::{Read, Write};
    use std::net::{SocketAddr, TcpStream};
    use std::time::{Duration, Instant};

    use crate::binary::{eventually, PATIENCE};

    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let mut d = Daemon::start_with_nofile_limit(
        &format!(
            "[daemon]\nhttp = \"127.0.0.1:{port}\"\n\n\
             [jobs.tick]\nevery = \"200ms\"\nshell = \"date +%s%N >> ticks\"\n"
        ),
        200,
        200,
    );
    let ticks = || {
        std::fs::read_to_string(d.path("ticks"))
            .unwrap_or_default()
            .lines()
            .count()
    };
    eventually("the job ticks", || ticks() >= 2);

    // The slow clients: a partial head each, then nothing. Bounded in count, and in time: a
    // connect that does not complete in 2 s (a full backlog) ends the opening.
    let mut slow = Vec::new();
    for _ in 0..400 {
        let Ok(mut stream) = TcpStream::connect_timeout(&addr, Duration::from_secs(2)) else {
            break;
        };
        let _ = stream.write_all(b"GET /jobs HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ");
        slow.push(stream);
    }
    let descriptors = || {
        std::fs::read_dir(format!("/proc/{}/fd", d.child.id()))
            .map(|dir| dir.count())
            .unwrap_or(0)
    };
    std::thread::sleep(Duration::from_millis(500));
    let in_use = descriptors();
    eprintln!(
        "{} slow connections opened; the daemon holds {in_use} descriptors of 200",
        slow.len()
    );
    assert!(
        in_use < 200 - 32,
        "{in_use} descriptors in use: no room for runs"
    );

    // (b) Runs go on while the slow connections are open.
    let before = ticks();
    eventually("runs go on while slow clients are connected", || {
        ticks() >= before + 5
    });

    // (a) `/healthz` answers; it may have to wait for the slow connections in the cap to time out.
    let deadline = Instant::now() + PATIENCE;
    let answer = loop {
        let answer = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).and_then(|mut s| {
            s.set_read_timeout(Some(Duration::from_secs(5)))?;
            s.write_all(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")?;
            let mut answer = String::new();
            s.read_to_string(&mut answer)?;
            Ok(answer)
        });
        match answer {
            Ok(answer) if answer.starts_with("HTTP/1.1 200") => break answer,
            _ => {
                assert!(
                    Instant::now() < deadline,
                    "/healthz never answered 200 ({answer:?}); log:\n{}",
                    d.log()
                );
                std::thread::sleep(Duration::from_millis(200));
            }
        }
    };
    assert!(answer.ends_with("ok\n"), "{answer}");

    // (c) The server ends every slow connection: refused at once over the cap, closed after the
    // header-read timeout under it. A read that times out means the server still holds it.
    let deadline = Instant::now() + PATIENCE;
    for (i, stream) in slow.iter_mut().enumerate() {
        let left = deadline.saturating_duration_since(Instant::now());
        stream
            .set_read_timeout(Some(left.max(Duration::from_millis(1))))
            .expect("read timeout");
        let mut rest = Vec::new();
        if let Err(err) = stream.read_to_end(&mut rest) {
            assert!(
                !matches!(
                    err.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ),
                "slow connection {i} is still open"
            );
        }
    }
    drop(slow);
    let before = ticks();
    eventually("runs go on after the slow clients", || {
        ticks() >= before + 2
    });

    let log = d.log();
    assert!(!log.contains("Too many open files"), "{log}");
    assert!(
        log.contains("the HTTP endpoint is at its connection cap"),
        "{log}"
    );
    d.signal(Signal::SIGTERM);
    assert_eq!(d.wait_exit(), 0, "{}", d.log());
}

/// tickd raises its soft descriptor limit to the hard one, so that HTTP clients and runs have room,
/// but its children start with the soft limit tickd was given: a program using `select()` breaks
/// on descriptors numbered 1,024 and above.
#[test]
fn the_daemon_raises_its_descriptor_limit_and_children_keep_the_original() {
    let mut d = Daemon::start_with_nofile_limit(
        "[jobs.limits]\nevery = \"1h\"\nrun_on_start = true\n\
         shell = 'echo \"$(ulimit -S -n) $(ulimit -H -n)\" > limits'\n",
        100,
        300,
    );
    assert_eq!(d.wait_file("limits"), "100 300\n", "{}", d.log());
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", d.child.id()))
        .expect("/proc/PID/limits");
    let open_files: Vec<&str> = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .expect("the open files line")
        .split_whitespace()
        .collect();
    assert_eq!(open_files[3..5], ["300", "300"], "{limits}");
    assert!(
        d.log().contains("raised the descriptor limit"),
        "{}",
        d.log()
    );
    d.signal(Signal::SIGTERM);
    assert_eq!(d.wait_exit(), 0, "{}", d.log());
}

/// A job failing at 10 Hz with a slow `on_failure` hook started a hook for every failure (66
/// after 5 s, 3 descriptors each) until unrelated jobs failed with EMFILE. One hook at a time;
/// the failures meanwhile are told to the next one.
#[test]
fn on_failure_hooks_do_not_pile_up() {
    let mut d = Daemon::start(
        r#"
[jobs.flaky]
every = "100ms"
command = ["false"]
on_failure = ["sh", "-c", "echo $TICKD_FAILURES_WITHOUT_HOOK >> hooks; sleep 1"]
"#,
    );
    d.wait_log_n("on_failure hook ended", 3);
    let hooks = std::fs::read_to_string(d.path("hooks")).unwrap_or_default();
    let counts: Vec<u64> = hooks
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect();
    // About one hook a second, while the job failed ten times a second.
    assert!(counts.len() <= 6, "{} hooks: {hooks}", counts.len());
    assert!(
        counts.iter().skip(1).any(|n| *n >= 3),
        "failures told to the next hook: {counts:?}"
    );
    d.signal(Signal::SIGTERM);
    assert_eq!(d.wait_exit(), 0, "{}", d.log());
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

/// Log lines were written to stderr synchronously by the task that logged them: with stderr on a
/// pipe nobody reads, every worker blocked in a write, a 5 Hz job stopped firing next to a chatty
/// in-process job, and SIGTERM was ignored. Lines now go through a bounded queue to a writer
/// thread; what does not fit is dropped and counted.
#[test]
fn a_stderr_pipe_nobody_reads_stalls_neither_jobs_nor_shutdown() {
    use std::process::Stdio;
    use std::time::{Duration, Instant};

    let port = crate::binary::free_port();
    // The read end stays open (so writes block instead of failing) and is not read until the
    // drops are counted.
    let (read_end, write_end) =
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).expect("a pipe for stderr");
    let mut d = Daemon::launch(
        &format!(
            r#"
[daemon]
http = "127.0.0.1:{port}"

[jobs.chatty]
every = "10ms"
handler = "log"

[jobs.tick]
every = "200ms"
shell = "echo x >> ticks"
"#
        ),
        |command, _log| {
            command
                .args(["run", "jobs.toml"])
                .stderr(Stdio::from(write_end));
        },
    );
    let ticks = || std::fs::read_to_string(d.path("ticks")).map_or(0, |text| text.lines().count());
    crate::binary::eventually("the 5 Hz job fires", || ticks() > 0);
    let first = ticks();
    let started = Instant::now();
    std::thread::sleep(Duration::from_secs(10));
    let fired = ticks() - first;
    let expected = started.elapsed().as_secs_f64() * 5.0;
    // Generous: only a stall (the bug took it to 0) must fail this.
    assert!(
        fired as f64 >= 0.6 * expected,
        "{fired} fires in 10 s, {expected:.0} expected"
    );
    // The queue fills in seconds more: lines are dropped, and counted.
    let dropped = || {
        let metrics = crate::binary::http(port, "GET", "/metrics", None).1;
        crate::binary::sample(&metrics, "tickd_log_lines_dropped_total")
    };
    crate::binary::eventually("dropped log lines are counted", || dropped() > 0.0);
    // Once stderr is read again, one line tells how many were lost; then it blocks again.
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::Read;
        let mut pipe = std::fs::File::from(read_end);
        let mut text = Vec::new();
        let mut buf = [0u8; 65536];
        while let Ok(n @ 1..) = pipe.read(&mut buf) {
            text.extend_from_slice(&buf[..n]);
            let notice = String::from_utf8_lossy(&text)
                .lines()
                .find(|l| l.contains("log lines were dropped"))
                .map(str::to_owned);
            if let Some(notice) = notice {
                // Keeps the read end open, unread, for the rest of the test.
                let _ = tx.send((notice, pipe));
                return;
            }
        }
    });
    let (notice, _read_end) = rx
        .recv_timeout(crate::binary::PATIENCE)
        .expect("a line saying log lines were dropped");
    let count: u64 = notice
        .split_once("dropped=")
        .and_then(|(_, n)| n.split_whitespace().next()?.parse().ok())
        .unwrap_or(0);
    assert!(count > 0 && count as f64 <= dropped(), "{notice}");
    d.signal(Signal::SIGTERM);
    assert_eq!(d.wait_exit(), 0, "SIGTERM with stderr blocked");
}

/// The daemon's group keeper: its child whose command line holds `__keeper`.
fn keeper_of(daemon: &Daemon) -> Option<i32> {
    let me = daemon.child.id() as i32;
    crate::binary::all_processes()
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
    use crate::binary::{eventually, http, is_alive, proc_stat, sample};

    let bin = tempfile::tempdir().expect("tempdir");
    let program = bin.path().join("tickd");
    let moved = bin.path().join("tickd.away");
    std::fs::copy(env!("CARGO_BIN_EXE_tickd"), &program).expect("copy tickd");
    let port = crate::binary::free_port();
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

/// At `ulimit -n 40`, `pidfd_open` failed after the child had exec'd: 35 runs logged "Too many
/// open files" yet ran (with `retry` they would have run twice), and each left a zombie. A run
/// that fails for want of a descriptor now never starts its process, and nothing is left behind.
#[test]
fn a_run_that_fails_for_want_of_descriptors_did_not_run_and_leaves_no_zombie() {
    let jobs: String = (0..20)
        .map(|k| format!("[jobs.j{k}]\nevery = \"200ms\"\nshell = \"echo $TICKD_JOB/$TICKD_RUN_ID >> ran\"\n"))
        .collect();
    let mut d = Daemon::start_with_nofile_limit(&jobs, 40, 40);
    let log = d.wait_log_n("open files", 20);
    let pid = d.child.id();
    let zombies_before = crate::binary::zombies_of(pid);
    std::thread::sleep(std::time::Duration::from_secs(2));
    let zombies_after = crate::binary::zombies_of(pid);
    let lasting: Vec<_> = zombies_before
        .iter()
        .filter(|z| zombies_after.contains(z))
        .collect();
    assert!(lasting.is_empty(), "zombies left: {lasting:?}");
    d.signal(Signal::SIGTERM);
    d.wait_exit();
    let ran = std::fs::read_to_string(d.path("ran")).unwrap_or_default();
    let ran: std::collections::HashSet<&str> = ran.lines().collect();
    let failed: Vec<String> = log
        .lines()
        .filter(|l| l.contains("run finished") && l.contains("open files"))
        .filter_map(|l| {
            let job = l.split("job=").nth(1)?.split_whitespace().next()?;
            let run = l.split("run=").nth(1)?.split_whitespace().next()?;
            Some(format!("{job}/{run}"))
        })
        .collect();
    assert!(!failed.is_empty(), "{log}");
    let ran_anyway: Vec<&String> = failed
        .iter()
        .filter(|id| ran.contains(id.as_str()))
        .collect();
    assert!(
        ran_anyway.is_empty(),
        "failed runs that ran anyway: {ran_anyway:?}"
    );
}

/// Waiting for a file to settle read a pipe twice: `tickd check` on a FIFO (or `/dev/stdin` for
/// a user) saw an empty second read, or waited for a second writer for ever.
#[test]
fn a_jobs_file_on_a_pipe_is_read_once() {
    use std::io::Write;
    let dir = tempfile::tempdir().expect("tempdir");
    let fifo = dir.path().join("jobs.toml");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).expect("fifo");
    let writer = {
        let fifo = fifo.clone();
        std::thread::spawn(move || {
            let mut file = std::fs::OpenOptions::new()
                .write(true)
                .open(&fifo)
                .expect("open");
            file.write_all(b"[jobs.a]\nevery = \"1s\"\nhandler = \"log\"\n")
                .expect("write");
        })
    };
    let mut child = crate::binary::tickd()
        .arg("check")
        .arg(&fifo)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("tickd check");
    let deadline = std::time::Instant::now() + crate::binary::PATIENCE;
    while child.try_wait().expect("try_wait").is_none() {
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("tickd check hung on a FIFO");
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    writer.join().expect("writer");
    let out = child.wait_with_output().expect("output");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("OK, 1 jobs"), "{stdout}");
}

/// Under a thread limit tokio's blocking pool panicked "OS can't spawn worker thread": once in
/// the HTTP client's DNS lookup (the `http` job then stayed "running" for ever and every later
/// fire was skipped) and once in the state writer (the state was never written again). The
/// daemon runs as an otherwise unused uid that then may start no thread or process at all.
#[test]
fn a_thread_limit_fails_runs_and_degrades_loudly_but_wedges_nothing() {
    use std::os::unix::fs::PermissionsExt;
    use std::os::unix::process::CommandExt;
    use std::process::{Command, Stdio};

    use crate::binary::{free_port, http, is_root, tickd, PATIENCE};
    if !is_root() {
        assert!(
            std::env::var_os("CI").is_none(),
            "needs root to run the daemon as another uid"
        );
        return;
    }
    const UID: u32 = 47_223;
    let port = free_port();
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).expect("chmod");
    std::fs::write(
        dir.path().join("jobs.toml"),
        format!(
            "[daemon]\nhttp = \"127.0.0.1:{port}\"\nstate_file = \"tickd.state\"\n\
             [jobs.web]\nevery = \"1h\"\nhttp = {{ url = \"http://localhost:9/\" }}\n\
             [jobs.kept]\nevery = \"1h\"\nhandler = \"log\"\non_missed = \"once\"\n"
        ),
    )
    .expect("config");
    let log = dir.path().join("tickd.log");
    let child = tickd()
        .args(["run", "jobs.toml"])
        .current_dir(dir.path())
        .env("TICKD_LOG", "info")
        .uid(UID)
        .gid(UID)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).expect("log file"))
        .spawn()
        .expect("start tickd");
    let mut d = Daemon { child, dir, log };
    d.wait_log("HTTP endpoint listening");
    // From here this uid may start nothing: no thread, no process.
    // As the daemon's own uid, as an unprivileged `prlimit` may.
    let status = Command::new("setpriv")
        .args([
            &format!("--reuid={UID}"),
            &format!("--regid={UID}"),
            "--clear-groups",
            "prlimit",
            "--pid",
            &d.child.id().to_string(),
            "--nproc=1:",
        ])
        .status()
        .expect("prlimit");
    assert!(status.success());
    // The HTTP job's lookup cannot get a thread: the run fails, and the job is not wedged.
    for runs in 1..=2 {
        let (code, body) = http(port, "POST", "/jobs/web/run", None);
        assert_eq!(code, 202, "run {runs}: {body}\n{}", d.log());
        d.wait_log_n("job=web", 2 * runs);
        let deadline = std::time::Instant::now() + PATIENCE;
        while d
            .log()
            .lines()
            .filter(|l| l.contains("run finished") && l.contains("job=web"))
            .count()
            < runs
        {
            assert!(
                std::time::Instant::now() < deadline,
                "the web run never ended:\n{}",
                d.log()
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }
    // The state writer cannot get a thread either: it says so and writes anyway.
    let (code, _) = http(port, "POST", "/jobs/kept/run", None);
    assert_eq!(code, 202);
    d.wait_log("cannot start a thread for the state file");
    let deadline = std::time::Instant::now() + PATIENCE;
    while !std::fs::read_to_string(d.path("tickd.state"))
        .unwrap_or_default()
        .contains("kept")
    {
        assert!(
            std::time::Instant::now() < deadline,
            "no state written:\n{}",
            d.log()
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    d.signal(Signal::SIGTERM);
    assert_eq!(d.wait_exit(), 0, "{}", d.log());
}
