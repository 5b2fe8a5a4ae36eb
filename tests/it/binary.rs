//! The real `tickd` binary, end to end in a temp dir. These use real time, so they only wait for
//! things to happen (polling with generous deadlines) and never assert how long anything took.

use std::fs;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tempfile::TempDir;

pub(crate) const PATIENCE: Duration = Duration::from_secs(30);

/// A `tickd run` process with its log (stderr) in a file.
pub(crate) struct Daemon {
    pub(crate) child: Child,
    pub(crate) dir: TempDir,
    pub(crate) log: PathBuf,
}

pub(crate) fn tickd() -> Command {
    Command::new(env!("CARGO_BIN_EXE_tickd"))
}

impl Daemon {
    /// `tickd run jobs.toml` on `config`, logging to a file; returns once it is scheduling.
    pub(crate) fn start(config: &str) -> Daemon {
        let daemon = Daemon::launch(config, |command, log| {
            command
                .args(["run", "jobs.toml"])
                .stderr(fs::File::create(log).expect("log file"));
        });
        daemon.wait_log("scheduler started");
        daemon
    }

    /// `start`, under a descriptor limit (`RLIMIT_NOFILE`) of `soft` and `hard`, set by a shell
    /// that then execs tickd (same pid): the tests may not use `unsafe` (`pre_exec`).
    pub(crate) fn start_with_nofile_limit(config: &str, soft: u64, hard: u64) -> Daemon {
        let mut command = Command::new("sh");
        command.args([
            "-c",
            &format!("ulimit -S -n {soft} && ulimit -H -n {hard} && exec \"$0\" run jobs.toml"),
            env!("CARGO_BIN_EXE_tickd"),
        ]);
        let daemon = Daemon::launch_command(command, config, |command, log| {
            command.stderr(fs::File::create(log).expect("log file"));
        });
        daemon.wait_log("scheduler started");
        daemon
    }

    /// Starts `tickd` in a temp dir holding `config` as `jobs.toml`; `prepare` sets the arguments
    /// and stderr (given the log file's path).
    pub(crate) fn launch(config: &str, prepare: impl FnOnce(&mut Command, &Path)) -> Daemon {
        Daemon::launch_program(Path::new(env!("CARGO_BIN_EXE_tickd")), config, prepare)
    }

    /// [`Daemon::launch`] with another copy of the binary.
    pub(crate) fn launch_program(
        program: &Path,
        config: &str,
        prepare: impl FnOnce(&mut Command, &Path),
    ) -> Daemon {
        Daemon::launch_command(Command::new(program), config, prepare)
    }

    /// `launch`, with `command` (tickd, or something that execs it) instead of plain `tickd`.
    fn launch_command(
        mut command: Command,
        config: &str,
        prepare: impl FnOnce(&mut Command, &Path),
    ) -> Daemon {
        let dir = tempfile::tempdir().expect("tempdir");
        fs::write(dir.path().join("jobs.toml"), config).expect("write config");
        let log = dir.path().join("tickd.log");
        command
            .current_dir(dir.path())
            .env("TICKD_LOG", "debug")
            .stdin(Stdio::null())
            .stdout(Stdio::null());
        prepare(&mut command, &log);
        let child = command.spawn().expect("start tickd");
        Daemon { child, dir, log }
    }

    pub(crate) fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub(crate) fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until the log contains `needle` `times` times; returns the log.
    pub(crate) fn wait_log_n(&self, needle: &str, times: usize) -> String {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let log = self.log();
            if log.matches(needle).count() >= times {
                return log;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {times}x {needle:?}; log:\n{log}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub(crate) fn wait_log(&self, needle: &str) -> String {
        self.wait_log_n(needle, 1)
    }

    pub(crate) fn wait_file(&self, name: &str) -> String {
        let path = self.path(name);
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Ok(text) = fs::read_to_string(&path) {
                if text.ends_with('\n') {
                    return text;
                }
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {}; log:\n{}",
                path.display(),
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub(crate) fn signal(&self, signal: Signal) {
        kill(Pid::from_raw(self.child.id() as i32), signal).expect("signal tickd");
    }

    pub(crate) fn rewrite(&self, config: &str) {
        fs::write(self.path("jobs.toml"), config).expect("write config");
    }

    /// Waits for the daemon to exit and returns its exit code.
    pub(crate) fn wait_exit(&mut self) -> i32 {
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status.code().unwrap_or(-1);
            }
            assert!(
                Instant::now() < deadline,
                "tickd did not exit; log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The state, parent and process group of `pid`, from `/proc/PID/stat` (the fields after the
/// command name, which may hold spaces, start after the last ')').
pub(crate) fn proc_stat(pid: i32) -> Option<(String, i32, i32)> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = stat.rsplit_once(')')?;
    let mut fields = rest.split_whitespace();
    let state = fields.next()?.to_owned();
    let ppid = fields.next()?.parse().ok()?;
    let pgrp = fields.next()?.parse().ok()?;
    Some((state, ppid, pgrp))
}

/// Every process with its `proc_stat` fields.
pub(crate) fn all_processes() -> Vec<(i32, String, i32, i32)> {
    fs::read_dir("/proc")
        .expect("/proc")
        .flatten()
        .filter_map(|e| e.file_name().to_string_lossy().parse::<i32>().ok())
        .filter_map(|pid| proc_stat(pid).map(|(state, ppid, pgrp)| (pid, state, ppid, pgrp)))
        .collect()
}

/// Live (non-zombie) processes whose process group is `pgid`.
pub(crate) fn live_group_members(pgid: i32) -> Vec<i32> {
    all_processes()
        .into_iter()
        .filter(|(_, state, _, pgrp)| state != "Z" && *pgrp == pgid)
        .map(|(pid, ..)| pid)
        .collect()
}

pub(crate) fn is_alive(pid: i32) -> bool {
    proc_stat(pid).is_some_and(|(state, ..)| state != "Z")
}

/// Waits (bounded) for a condition that should become true soon.
pub(crate) fn eventually(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + PATIENCE;
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

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
    assert!(log.contains("waiting for runs in flight"), "{log}");
    assert!(log.contains("every run finished"), "{log}");
    // Exactly one run: nothing fired after the SIGTERM.
    assert_eq!(log.matches("run started").count(), 1, "{log}");
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

fn read_pid_wait(d: &Daemon, name: &str) -> i32 {
    d.wait_file(name).trim().parse().expect("a pid")
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
fn sighup_with_a_broken_file_keeps_the_old_jobs_and_a_good_one_applies() {
    let d = Daemon::start("[jobs.a]\nevery = \"100ms\"\nhandler = \"log\"\n");
    d.wait_log("tick job=a");
    d.rewrite("[jobs.a]\nevery = \"100ms\"\nhandler = \"log\"\n[jobs.b]\nevery = \"zero\"\nhandler = \"log\"\n");
    d.signal(Signal::SIGHUP);
    let log = d.wait_log("reload rejected");
    assert!(
        log.contains("jobs.toml:5:9: job \"b\", key \"every\": invalid duration"),
        "{log}"
    );
    // Still firing, from the old config.
    let before = log.matches("tick job=a").count();
    d.wait_log_n("tick job=a", before + 3);

    d.rewrite("[jobs.b]\nevery = \"100ms\"\nhandler = \"log\"\n");
    d.signal(Signal::SIGHUP);
    let log = d.wait_log("configuration reloaded");
    assert!(
        log.contains("added=1 removed=1 changed=0 unchanged=0"),
        "{log}"
    );
    let reloaded_at = log.find("configuration reloaded").expect("reloaded");
    d.wait_log_n("tick job=b", 5);
    let log = d.log();
    // At most one tick of `a` that was already under way when the reload happened.
    assert!(
        log[reloaded_at..].matches("tick job=a").count() <= 1,
        "{log}"
    );
}

#[test]
fn a_bad_config_at_start_exits_2_before_anything_runs() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("jobs.toml");
    fs::write(
        &path,
        "[jobs.a]\nevery = \"1s\"\nshell = \"touch ran\"\n[jobs.b]\ncron = \"* * *\"\nshell = \"true\"\n",
    )
    .expect("write");
    let out = tickd()
        .args(["run", "jobs.toml"])
        .current_dir(dir.path())
        .output()
        .expect("run tickd");
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("jobs.toml:5:8: job \"b\", key \"cron\""),
        "{stderr}"
    );
    assert!(!dir.path().join("ran").exists());

    let out = tickd()
        .args(["check", "jobs.toml"])
        .current_dir(dir.path())
        .output()
        .expect("check");
    assert_eq!(out.status.code(), Some(2));
    fs::write(&path, "[jobs.a]\nevery = \"1s\"\nhandler = \"log\"\n").expect("write");
    let out = tickd()
        .args(["check", "jobs.toml"])
        .current_dir(dir.path())
        .output()
        .expect("check");
    assert_eq!(out.status.code(), Some(0));
    let out = tickd()
        .args(["run", "missing.toml"])
        .current_dir(dir.path())
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    let out = tickd().arg("frobnicate").output().expect("usage");
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn next_prints_the_fire_times_the_daemon_uses() {
    let out = tickd()
        .args([
            "next",
            "--cron",
            "30 2 * * *",
            "--tz",
            "Europe/Berlin",
            "--after",
            "2026-03-28T12:00:00Z",
            "-n",
            "2",
        ])
        .output()
        .expect("next");
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "2026-03-29T03:00:00+02:00\n2026-03-30T02:30:00+02:00\n"
    );
    let out = tickd()
        .args([
            "next",
            "--cron",
            "*/10 * * * * *",
            "--after",
            "2026-01-01T00:00:03Z",
            "-n",
            "2",
        ])
        .output()
        .expect("next");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "2026-01-01T00:00:10Z\n2026-01-01T00:00:20Z\n"
    );
    let out = tickd()
        .args(["next", "--cron", "61 * * * *"])
        .output()
        .expect("next");
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn the_shipped_jobs_toml_is_valid() {
    let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("jobs.toml");
    let out = tickd().arg("check").arg(&shipped).output().expect("check");
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A loopback HTTP/1.1 server for `http` jobs: answers `/ok` with 200 and anything else with
/// 500, closes each connection, and hands every request's text to the test.
pub(crate) fn http_server() -> (u16, std::sync::mpsc::Receiver<String>) {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind loopback");
    let port = listener.local_addr().expect("addr").port();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        // Bounded: the test needs a handful of requests.
        for stream in listener.incoming().take(200) {
            let Ok(mut stream) = stream else { continue };
            let mut request = Vec::new();
            let mut buf = [0u8; 4096];
            // Read the head, then the body announced by Content-Length.
            while let Ok(n) = stream.read(&mut buf) {
                if n == 0 {
                    break;
                }
                request.extend_from_slice(&buf[..n]);
                let text = String::from_utf8_lossy(&request);
                if let Some(head_end) = text.find("\r\n\r\n") {
                    let length = text[..head_end]
                        .lines()
                        .find_map(|l| {
                            l.to_ascii_lowercase()
                                .strip_prefix("content-length:")
                                .map(|v| v.trim().parse::<usize>().unwrap_or(0))
                        })
                        .unwrap_or(0);
                    if request.len() >= head_end + 4 + length {
                        break;
                    }
                }
            }
            let text = String::from_utf8_lossy(&request).into_owned();
            let status = if text.starts_with("POST /ok ") || text.starts_with("GET /ok ") {
                "200 OK"
            } else {
                "500 Internal Server Error"
            };
            let _ = write!(
                stream,
                "HTTP/1.1 {status}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            );
            if tx.send(text).is_err() {
                break;
            }
        }
    });
    (port, rx)
}

#[test]
fn http_jobs_call_the_url_and_judge_the_status() {
    let (port, requests) = http_server();
    let mut d = Daemon::start(&format!(
        r#"
[jobs.cron-php]
every = "200ms"
http = {{ url = "http://127.0.0.1:{port}/ok", method = "POST", headers = {{ X-Token = "s3cret" }}, body = "from=tickd", timeout = "5s" }}

[jobs.broken]
every = "200ms"
http = {{ url = "http://127.0.0.1:{port}/fail" }}
"#
    ));
    let request = requests
        .iter()
        .find(|r| r.starts_with("POST /ok "))
        .expect("a request");
    assert!(
        request.to_ascii_lowercase().contains("x-token: s3cret"),
        "{request}"
    );
    assert!(request.ends_with("from=tickd"), "{request}");
    let log = d.wait_log("HTTP 500");
    assert!(log.contains("job=broken"), "{log}");
    assert!(log.contains("outcome=failure"), "{log}");
    let log = d.wait_log("exit_code=200");
    assert!(log.contains("job=cron-php"), "{log}");
    d.signal(Signal::SIGTERM);
    assert_eq!(d.wait_exit(), 0);
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
    d.wait_log("waiting for runs in flight");
    d.signal(Signal::SIGTERM);
    assert_eq!(d.wait_exit(), 3);
    assert!(d.log().contains("second stop request"));
}

#[test]
fn a_closed_stderr_does_not_stop_scheduling() {
    let mut d = Daemon::launch(
        r#"
[jobs.count]
every = "50ms"
shell = "echo tick >> ticks; echo some output"
"#,
        |command, _| {
            command.args(["run", "jobs.toml"]).stderr(Stdio::piped());
        },
    );
    // Close the read end of the daemon's stderr: every log line now fails with EPIPE.
    drop(d.child.stderr.take());
    eventually("20 runs after stderr was closed", || {
        fs::read_to_string(d.path("ticks")).is_ok_and(|t| t.lines().count() >= 20)
    });
    d.signal(Signal::SIGTERM);
    assert_eq!(d.wait_exit(), 0);
}

#[test]
fn json_logs_carry_the_same_fields() {
    let d = Daemon::launch(
        "[jobs.hello]\nevery = \"100ms\"\nshell = \"printf 'bin\\\\377ary\\\\n'\"\n",
        |command, log| {
            command
                .args(["--log-format", "json", "run", "jobs.toml"])
                .stderr(fs::File::create(log).expect("log file"));
        },
    );
    let log = d.wait_log("run finished");
    let finished: serde_json::Value = log
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| v["message"] == "run finished")
        .expect("a JSON line for a finished run");
    assert_eq!(finished["job"], "hello");
    assert_eq!(finished["outcome"], "success");
    assert_eq!(finished["exit_code"], 0);
    assert!(finished["run"].is_string() || finished["run"].is_number());
    let output: serde_json::Value = log
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| v["stream"] == "stdout")
        .expect("an output line");
    // Not UTF-8: shown lossily.
    assert_eq!(output["message"], "bin\u{FFFD}ary");
    assert_eq!(output["job"], "hello");
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
fn max_uptime_exits_75_for_the_process_manager_to_restart() {
    let mut d = Daemon::start(
        "[daemon]\nmax_uptime = \"300ms\"\n[jobs.a]\nevery = \"100ms\"\nhandler = \"log\"\n",
    );
    assert_eq!(d.wait_exit(), 75, "{}", d.log());
    assert!(d.log().contains("max_uptime reached"));
}

#[test]
fn next_shows_aligned_and_spread_fire_times() {
    let dir = tempfile::tempdir().expect("tempdir");
    fs::write(
        dir.path().join("jobs.toml"),
        r#"
[jobs.aligned]
every = "10s"
align = true
handler = "log"

[jobs.spread]
every = "10s"
align = true
jitter = "5s"
spread = true
handler = "log"

[jobs.random]
cron = "0 * * * *"
timezone = "Europe/Berlin"
jitter = "30s"
handler = "log"
"#,
    )
    .expect("write");
    let out = tickd()
        .args(["next", "--after", "2026-01-01T00:00:03Z", "-n", "2"])
        .current_dir(dir.path())
        .output()
        .expect("next");
    assert_eq!(out.status.code(), Some(0));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains(
            "aligned (every 10s, aligned):\n  2026-01-01T00:00:10Z\n  2026-01-01T00:00:20Z\n"
        ),
        "{stdout}"
    );
    let delay =
        tickd::schedule::stable_delay(&tickd::job::machine_id(), "spread", Duration::from_secs(5));
    let first = chrono::DateTime::parse_from_rfc3339("2026-01-01T00:00:10Z").expect("time")
        + chrono::Duration::from_std(delay).expect("delay");
    let expected = first.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true);
    assert!(
        stdout.contains(&format!("spread (every 10s, aligned):\n  {expected}\n")),
        "{stdout}"
    );
    // Cron jobs show the job's zone and UTC; a random delay is announced.
    assert!(
        stdout.contains("random (cron \"0 * * * *\" (Europe/Berlin)):\n  (each run starts after a random delay of up to 30s)\n  2026-01-01T02:00:00+01:00  (2026-01-01T01:00:00Z)\n"),
        "{stdout}"
    );
}

pub(crate) fn is_root() -> bool {
    nix::unistd::Uid::effective().is_root()
}

#[test]
fn systemd_notify_protocol_ready_reloading_watchdog_stopping() {
    use std::os::unix::net::UnixDatagram;
    let sock_dir = tempfile::tempdir().expect("tempdir");
    let sock_path = sock_dir.path().join("notify.sock");
    let socket = UnixDatagram::bind(&sock_path).expect("bind notify socket");
    socket
        .set_read_timeout(Some(Duration::from_millis(200)))
        .expect("timeout");
    let mut d = Daemon::launch(
        "[jobs.a]\nevery = \"100ms\"\nhandler = \"log\"\n",
        |command, log| {
            command
                .args(["run", "jobs.toml"])
                .env("NOTIFY_SOCKET", &sock_path)
                .env("WATCHDOG_USEC", "300000")
                .stderr(fs::File::create(log).expect("log file"));
        },
    );
    let mut messages: Vec<String> = Vec::new();
    let wait_for = |prefix: &str, messages: &mut Vec<String>| {
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Some(found) = messages.iter().find(|m| m.starts_with(prefix)) {
                return found.clone();
            }
            assert!(Instant::now() < deadline, "no {prefix:?} in {messages:?}");
            let mut buf = [0u8; 4096];
            if let Ok(n) = socket.recv(&mut buf) {
                messages.push(String::from_utf8_lossy(&buf[..n]).into_owned());
            }
        }
    };
    let ready = wait_for("READY=1", &mut messages);
    assert!(ready.contains("STATUS=1 jobs, 0 runs in flight"), "{ready}");
    // Pings at half WATCHDOG_USEC, from the scheduler loop.
    wait_for("WATCHDOG=1", &mut messages);
    messages.clear();
    d.signal(Signal::SIGHUP);
    let reloading = wait_for("RELOADING=1", &mut messages);
    assert!(reloading.contains("MONOTONIC_USEC="), "{reloading}");
    // READY=1 again, after the RELOADING=1.
    messages.retain(|m| !m.starts_with("WATCHDOG"));
    let reloading_at = messages.iter().position(|m| m.starts_with("RELOADING=1"));
    messages.drain(..=reloading_at.unwrap_or(0));
    wait_for("READY=1", &mut messages);
    d.signal(Signal::SIGTERM);
    wait_for("STOPPING=1", &mut messages);
    assert_eq!(d.wait_exit(), 0);
}

#[test]
fn max_runs_exits_75() {
    let mut d =
        Daemon::start("[daemon]\nmax_runs = 5\n[jobs.a]\nevery = \"50ms\"\nshell = \"true\"\n");
    assert_eq!(d.wait_exit(), 75, "{}", d.log());
    assert!(d.log().contains("max_runs reached"));
}

#[test]
fn on_failure_hook_gets_the_job_run_exit_code_and_reason() {
    let mut d = Daemon::start(
        r#"
[jobs.failing]
every = "100ms"
shell = "exit 3"
on_failure = ["sh", "-c", "echo \"$TICKD_JOB $TICKD_RUN_ID $TICKD_EXIT_CODE $TICKD_REASON\" >> hook.txt"]
"#,
    );
    let text = d.wait_file("hook.txt");
    let line = text.lines().next().expect("a line");
    let fields: Vec<&str> = line.splitn(4, ' ').collect();
    assert_eq!(fields[0], "failing");
    assert!(fields[1].parse::<u64>().is_ok(), "{line}");
    assert_eq!(fields[2], "3");
    assert_eq!(fields[3], "exited with code 3");
    d.signal(Signal::SIGTERM);
    assert_eq!(d.wait_exit(), 0);
}

/// Runs a root daemon on `config` whose jobs run as `nobody`: the temp dir is opened to it, and
/// `out/` is a directory it may write to.
pub(crate) fn launch_for_nobody(config: &str) -> Daemon {
    let d = Daemon::launch(config, |command, log| {
        command
            .args(["run", "jobs.toml"])
            .stderr(fs::File::create(log).expect("log file"));
    });
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(d.dir.path(), fs::Permissions::from_mode(0o755)).expect("chmod");
    fs::create_dir(d.path("out")).expect("out dir");
    fs::set_permissions(d.path("out"), fs::Permissions::from_mode(0o777)).expect("chmod");
    d
}

#[test]
fn the_on_failure_hook_runs_as_the_job_and_where_it_runs() {
    if !is_root() {
        return; // `user` needs a root daemon
    }
    let d = launch_for_nobody(
        r#"
[jobs.fails]
every = "100ms"
user = "nobody"
cwd = "out"
shell = "exit 1"
on_failure = ["sh", "-c", "echo \"$(id -u) $(pwd)\" > hook.tmp && mv hook.tmp hook"]
"#,
    );
    let hook = d.wait_file("out/hook");
    let out = fs::canonicalize(d.path("out")).expect("canonical");
    assert_eq!(hook, format!("65534 {}\n", out.display()));
}

#[test]
fn a_job_over_its_max_rss_is_stopped_and_fails() {
    let mut d = Daemon::start(
        r#"
[jobs.hog]
every = "1h"
run_on_start = true
max_rss = "40MB"
kill_grace = "1s"
command = ["python3", "-c", "import time; x = bytearray(120 * 1024 * 1024); x[::4096] = b'x' * len(x[::4096]); time.sleep(60)"]
"#,
    );
    let log = d.wait_log("over max_rss");
    assert!(log.contains("job=hog"), "{log}");
    assert!(log.contains("outcome=failure"), "{log}");
    assert!(log.contains("memory limit exceeded"), "{log}");
    d.signal(Signal::SIGTERM);
    assert_eq!(d.wait_exit(), 0);
}

#[test]
fn a_job_runs_as_its_user_with_that_users_environment() {
    let config = r#"
[jobs.whoami]
every = "100ms"
user = "nobody"
shell = "echo \"$(id -u) $(id -g) $HOME $USER $LOGNAME\" > out/who.tmp && mv out/who.tmp out/who"
"#;
    if !is_root() {
        // Not root: running as another user is a configuration error.
        let dir = tempfile::tempdir().expect("tempdir");
        fs::write(dir.path().join("jobs.toml"), config).expect("write");
        let out = tickd()
            .args(["check", "jobs.toml"])
            .current_dir(dir.path())
            .output()
            .expect("check");
        assert_eq!(out.status.code(), Some(2));
        assert!(String::from_utf8_lossy(&out.stderr).contains("needs tickd to run as root"));
        return;
    }
    let d = launch_for_nobody(config);
    let who = d.wait_file("out/who");
    let home = nix::unistd::User::from_name("nobody")
        .expect("lookup")
        .expect("nobody exists")
        .dir;
    assert_eq!(
        who,
        format!("65534 65534 {} nobody nobody\n", home.display())
    );
    // The switch happened in the child only: every thread of the daemon is still root (the
    // child shares the daemon's memory until it execs; glibc's setuid would have told every
    // thread on the shared list to switch).
    for task in fs::read_dir(format!("/proc/{}/task", d.child.id())).expect("tasks") {
        let status = fs::read_to_string(task.expect("task").path().join("status")).expect("status");
        assert!(status.contains("\nUid:\t0\t0\t0\t0\n"), "{status}");
        assert!(status.contains("\nGid:\t0\t0\t0\t0\n"), "{status}");
    }
}

/// Promise 4, EAGAIN: a daemon whose user reaches its process limit (`ulimit -u`) fails its child
/// runs with a clear reason, keeps its in-process jobs going, and starts children again once the
/// limit allows. The daemon runs as an otherwise unused uid; its limit is lowered below the number
/// of threads it already has by that same uid (as an unprivileged `prlimit` may), so every new
/// process fails with EAGAIN, the kernel's own answer.
#[test]
fn a_process_limit_fails_child_runs_clearly_and_the_daemon_goes_on() {
    if !is_root() {
        return; // needs to start the daemon as another user
    }
    const UID: u32 = 47_219;
    let dir = tempfile::tempdir().expect("tempdir");
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).expect("chmod");
    fs::write(
        dir.path().join("jobs.toml"),
        "[jobs.spawn]\nevery = \"100ms\"\ncommand = [\"true\"]\n\n\
         [jobs.tick]\nevery = \"100ms\"\nhandler = \"log\"\n",
    )
    .expect("write config");
    let log = dir.path().join("tickd.log");
    let child = tickd()
        .args(["run", "jobs.toml"])
        .current_dir(dir.path())
        .env("TICKD_LOG", "info")
        .uid(UID)
        .gid(UID)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(fs::File::create(&log).expect("log file"))
        .spawn()
        .expect("start tickd");
    let mut d = Daemon { child, dir, log };
    d.wait_log("outcome=success");
    let limit = |value: &str| {
        let status = Command::new("setpriv")
            .args([
                &format!("--reuid={UID}"),
                &format!("--regid={UID}"),
                "--clear-groups",
                "prlimit",
                "--pid",
                &d.child.id().to_string(),
                &format!("--nproc={value}"),
            ])
            .status()
            .expect("prlimit");
        assert!(status.success(), "prlimit --nproc={value} failed");
    };
    // The hard limit as it was (the soft one may be raised back up to it without privileges).
    let hard = fs::read_to_string(format!("/proc/{}/limits", d.child.id()))
        .expect("limits")
        .lines()
        .find(|l| l.starts_with("Max processes"))
        .and_then(|l| l.split_whitespace().nth(3).map(str::to_owned))
        .expect("Max processes line");
    limit("1:");
    let log = d.wait_log_n("too many processes", 3);
    assert!(
        log.contains("too many processes (the user's process limit, `ulimit -u`, or the system's) (Resource temporarily unavailable"),
        "{log}"
    );
    // The in-process job is not held up by the failing one.
    let ticks = log.matches("tickd::handler: tick").count();
    d.wait_log_n("tickd::handler: tick", ticks + 5);
    // Once the limit allows again, children start again.
    limit(&format!("{hard}:"));
    let restored_at = d.log().len();
    let deadline = Instant::now() + PATIENCE;
    while d.log()[restored_at..]
        .lines()
        .filter(|l| l.contains("job=spawn") && l.contains("outcome=success"))
        .count()
        < 3
    {
        assert!(
            Instant::now() < deadline,
            "children did not start again; log:\n{}",
            d.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    d.signal(Signal::SIGTERM);
    assert_eq!(d.wait_exit(), 0, "{}", d.log());
}

#[test]
fn running_as_another_user_needs_root() {
    // Run `tickd check` as nobody (setpriv), on a file naming another user.
    let dir = tempfile::tempdir().expect("tempdir");
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).expect("chmod");
    fs::write(
        dir.path().join("jobs.toml"),
        "[jobs.a]\nevery = \"1s\"\nuser = \"root\"\nshell = \"true\"\n",
    )
    .expect("write");
    if !is_root() {
        return; // cannot switch to nobody; the root case is covered in the test above
    }
    let out = Command::new("setpriv")
        .args(["--reuid=nobody", "--regid=nogroup", "--clear-groups"])
        .arg(env!("CARGO_BIN_EXE_tickd"))
        .args(["check", "jobs.toml"])
        .current_dir(dir.path())
        .output()
        .expect("setpriv");
    assert_eq!(
        out.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(
            "job \"a\", key \"user\": running jobs as \"root\" needs tickd to run as root"
        ),
        "{stderr}"
    );
}

#[test]
fn a_root_daemon_refuses_a_config_others_could_change() {
    if !is_root() {
        return; // the check only applies to a daemon running as root
    }
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("jobs.toml");
    fs::write(&path, "[jobs.a]\nevery = \"1s\"\nhandler = \"log\"\n").expect("write");
    let check = |file: &str| {
        tickd()
            .args(["check", file])
            .current_dir(dir.path())
            .output()
            .expect("check")
    };
    assert_eq!(check("jobs.toml").status.code(), Some(0));
    fs::set_permissions(&path, fs::Permissions::from_mode(0o666)).expect("chmod");
    let out = check("jobs.toml");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr)
        .contains("writable by group or others (mode 666); fix with: chmod go-w"));
    fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).expect("chmod");
    std::os::unix::fs::symlink(&path, dir.path().join("link.toml")).expect("symlink");
    let out = check("link.toml");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("symbolic link"));
    nix::unistd::chown(&path, Some(nix::unistd::Uid::from_raw(65534)), None).expect("chown");
    let out = check("jobs.toml");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("owned by uid 65534, not root"));
}

/// A Python path with supervisor installed: the system's if it has it, else installed from PyPI
/// into `target/pydeps` by this test itself (nothing is needed beforehand).
fn supervisor_pythonpath() -> PathBuf {
    let target = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/pydeps");
    let has = |path: &Path| {
        Command::new("python3")
            .args(["-c", "import supervisor.supervisord"])
            .env("PYTHONPATH", path)
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    if !has(&target) {
        let status = Command::new("python3")
            .args([
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
                "--root-user-action=ignore",
                "--target",
            ])
            .arg(&target)
            .arg("supervisor")
            .status()
            .expect("python3 -m pip");
        assert!(status.success(), "pip install supervisor failed");
    }
    assert!(has(&target));
    target
}

#[test]
fn supervisorctl_stop_drains_the_run_and_restart_works() {
    let pythonpath = supervisor_pythonpath();
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path().display().to_string();
    fs::write(
        dir.path().join("jobs.toml"),
        "[daemon]\nshutdown_timeout = \"30s\"\n[jobs.work]\nevery = \"100ms\"\nshell = \"echo started >> started; sleep 2; echo done >> done\"\n",
    )
    .expect("jobs");
    // The shipped program section, with this test's paths.
    let program = fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("contrib/supervisord/tickd.conf"),
    )
    .expect("contrib conf")
    .replace("/usr/local/bin/tickd", env!("CARGO_BIN_EXE_tickd"))
    .replace("/etc/tickd/jobs.toml", &format!("{d}/jobs.toml"))
    .replace("/var/log/supervisor/tickd.log", &format!("{d}/tickd.log"));
    fs::write(
        dir.path().join("supervisord.conf"),
        format!(
            "[unix_http_server]\nfile={d}/supervisor.sock\n[supervisord]\nlogfile={d}/supervisord.log\npidfile={d}/supervisord.pid\ndirectory={d}\n[rpcinterface:supervisor]\nsupervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface\n[supervisorctl]\nserverurl=unix://{d}/supervisor.sock\n{program}"
        ),
    )
    .expect("conf");
    let python = |module: &str, args: &[&str]| {
        Command::new("python3")
            .args(["-m", module, "-c", &format!("{d}/supervisord.conf")])
            .args(args)
            .env("PYTHONPATH", &pythonpath)
            .current_dir(dir.path())
            .output()
            .expect("python3")
    };
    let started = python("supervisor.supervisord", &[]);
    assert!(
        started.status.success(),
        "{}",
        String::from_utf8_lossy(&started.stderr)
    );
    let ctl = |args: &[&str]| {
        let out = python("supervisor.supervisorctl", args);
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let read = |name: &str| fs::read_to_string(dir.path().join(name)).unwrap_or_default();
    eventually("the job started under supervisord", || {
        read("started").contains("started")
    });
    // `stop` waits for tickd, which waits for the run in flight.
    let stop = ctl(&["stop", "tickd"]);
    assert!(stop.contains("tickd: stopped"), "{stop}");
    assert_eq!(
        read("started").lines().count(),
        read("done").lines().count(),
        "a run was cut short"
    );
    let log = read("supervisord.log");
    assert!(log.contains("stopped: tickd (exit status 0)"), "{log}");
    let restart = ctl(&["restart", "tickd"]);
    assert!(restart.contains("tickd: started"), "{restart}");
    assert!(ctl(&["status", "tickd"]).contains("RUNNING"));
    let _ = ctl(&["shutdown"]);
    let pid: i32 = read("supervisord.pid").trim().parse().unwrap_or(0);
    if pid > 0 {
        eventually("supervisord exited", || !is_alive(pid));
    }
}

/// Zombies whose parent is `parent`.
pub(crate) fn zombies_of(parent: u32) -> Vec<i32> {
    all_processes()
        .into_iter()
        .filter(|(_, state, ppid, _)| state == "Z" && u32::try_from(*ppid).ok() == Some(parent))
        .map(|(pid, ..)| pid)
        .collect()
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

#[test]
fn a_storm_of_sighups_with_good_and_bad_files_ends_consistent() {
    let good_a = "[jobs.a]\nevery = \"50ms\"\nshell = \"echo a >> a.txt\"\n";
    let good_b = "[jobs.b]\nevery = \"50ms\"\nshell = \"echo b >> b.txt\"\n";
    let bad = "[jobs.a]\nevery = \"-1s\"\n";
    let mut d = Daemon::start(good_a);
    let fds_before = fs::read_dir(format!("/proc/{}/fd", d.child.id()))
        .expect("fds")
        .count();
    for i in 0..1000 {
        d.rewrite(match i % 3 {
            0 => good_a,
            1 => bad,
            _ => good_b,
        });
        d.signal(Signal::SIGHUP);
        if i % 50 == 0 {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    // Settle on b, the last valid file. (Not by counting reload lines: coalesced SIGHUPs may
    // all be done before the log is read.) Every reload from here reads b, so once b has run
    // five times on end nothing can bring a back.
    d.rewrite(good_b);
    d.signal(Signal::SIGHUP);
    let b_before = fs::read_to_string(d.path("b.txt"))
        .unwrap_or_default()
        .lines()
        .count();
    eventually("b fires after the storm", || {
        fs::read_to_string(d.path("b.txt"))
            .unwrap_or_default()
            .lines()
            .count()
            >= b_before + 5
    });
    let a_lines = fs::read_to_string(d.path("a.txt"))
        .unwrap_or_default()
        .lines()
        .count();
    std::thread::sleep(Duration::from_millis(300));
    // `a` is gone: at most one run that was already starting.
    assert!(
        fs::read_to_string(d.path("a.txt"))
            .unwrap_or_default()
            .lines()
            .count()
            <= a_lines + 1
    );
    // No descriptor leaked by 300 reloads.
    let fds_after = fs::read_dir(format!("/proc/{}/fd", d.child.id()))
        .expect("fds")
        .count();
    assert!(
        fds_after <= fds_before + 2,
        "fds {fds_before} -> {fds_after}"
    );
    // SIGTERM during a reload burst still ends cleanly.
    for _ in 0..20 {
        d.signal(Signal::SIGHUP);
    }
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
            &format!("tickd_fires_missed_total{{job=\"{job}\"}}"),
        );
        assert!(
            (expected - 5.0..=expected + 5.0).contains(&missed),
            "{job}: {missed}, {expected} due while stopped, in\n{metrics}"
        );
    }
}

/// A free loopback port (bound then released: a small race, fine for a test).
pub(crate) fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

/// A minimal HTTP/1.0 request: (status, body).
pub(crate) fn http(port: u16, method: &str, path: &str, token: Option<&str>) -> (u16, String) {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
    let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    write!(
        stream,
        "{method} {path} HTTP/1.0\r\nHost: localhost\r\n{auth}Content-Length: 0\r\n\r\n"
    )
    .expect("send");
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("read");
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = response
        .split_once("\r\n\r\n")
        .map_or("", |(_, b)| b)
        .to_owned();
    (status, body)
}

/// The value of a Prometheus sample line that starts with `series`.
pub(crate) fn sample(metrics: &str, series: &str) -> f64 {
    metrics
        .lines()
        .find(|l| l.starts_with(series))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or(-1.0)
}

#[test]
fn the_endpoint_serves_metrics_jobs_and_control() {
    let port = free_port();
    let d = Daemon::start(&format!(
        r#"
[daemon]
http = "127.0.0.1:{port}"

[jobs.fast]
every = "50ms"
handler = "log"

[jobs.slow]
every = "1h"
run_on_start = true
shell = "sleep 30"
"#
    ));
    d.wait_log("HTTP endpoint listening");
    assert_eq!(
        http(port, "GET", "/healthz", None),
        (200, "ok\n".to_owned())
    );
    d.wait_log_n("job=fast run=", 6);
    let (code, first) = http(port, "GET", "/metrics", None);
    assert_eq!(code, 200);
    let series = "tickd_runs_total{job=\"fast\",outcome=\"success\"}";
    let before = sample(&first, series);
    assert!(before >= 1.0, "{first}");
    assert!(
        first.contains("tickd_fire_lateness_seconds_bucket{le=\"0.00001\",job=\"fast\"}"),
        "{first}"
    );
    assert!(first.contains("tickd_runs_in_flight "), "{first}");
    assert!(
        first.contains("tickd_last_success_timestamp_seconds{job=\"fast\"}"),
        "{first}"
    );
    assert!(
        first.contains("tickd_process_resident_memory_bytes "),
        "{first}"
    );
    eventually("the counter moves", || {
        sample(&http(port, "GET", "/metrics", None).1, series) > before
    });

    let (code, body) = http(port, "GET", "/jobs", None);
    assert_eq!(code, 200);
    let jobs: serde_json::Value = serde_json::from_str(&body).expect("json");
    let names: Vec<&str> = jobs
        .as_array()
        .expect("array")
        .iter()
        .filter_map(|j| j["name"].as_str())
        .collect();
    assert_eq!(names, ["fast", "slow"]);
    let (code, body) = http(port, "GET", "/jobs/slow", None);
    assert_eq!(code, 200);
    let slow: serde_json::Value = serde_json::from_str(&body).expect("json");
    assert_eq!(slow["running"], 1);
    assert_eq!(slow["schedule"], "every 1h");
    assert_eq!(http(port, "GET", "/jobs/nope", None).0, 404);

    // run-now: refused while the slow job runs (skip policy), accepted for an idle job.
    assert_eq!(http(port, "POST", "/jobs/slow/run", None).0, 409);
    let (code, body) = http(port, "POST", "/jobs/fast/run", None);
    assert_eq!(code, 202, "{body}");
    assert!(body.contains("\"run_id\""), "{body}");

    // pause / resume
    assert_eq!(http(port, "POST", "/jobs/fast/pause", None).0, 200);
    std::thread::sleep(Duration::from_millis(200));
    let paused_at = d.log().matches("job=fast run=").count();
    std::thread::sleep(Duration::from_millis(400));
    assert_eq!(
        d.log().matches("job=fast run=").count(),
        paused_at,
        "fired while paused"
    );
    let (_, body) = http(port, "GET", "/jobs/fast", None);
    assert!(body.contains("\"paused\":true"), "{body}");
    assert_eq!(http(port, "POST", "/jobs/fast/resume", None).0, 200);
    d.wait_log_n("job=fast run=", paused_at + 3);

    // Reloads are counted by result.
    let config = fs::read_to_string(d.path("jobs.toml")).expect("config");
    d.rewrite("[jobs.broken]\n");
    d.signal(Signal::SIGHUP);
    d.wait_log("reload rejected");
    // A removed job's series go with it (renames would otherwise grow /metrics for ever).
    d.rewrite(&config.replace("[jobs.fast]", "[jobs.renamed]"));
    d.signal(Signal::SIGHUP);
    d.wait_log("configuration reloaded");
    let metrics = http(port, "GET", "/metrics", None).1;
    assert_eq!(
        sample(&metrics, "tickd_config_reloads_total{result=\"rejected\"}"),
        1.0,
        "{metrics}"
    );
    assert_eq!(
        sample(&metrics, "tickd_config_reloads_total{result=\"applied\"}"),
        1.0,
        "{metrics}"
    );
    assert!(!metrics.contains("job=\"fast\""), "{metrics}");
    assert!(
        metrics.contains("tickd_runs_total{job=\"renamed\",outcome=\"success\"}"),
        "{metrics}"
    );
    assert!(
        metrics.contains("tickd_fire_lateness_seconds_count{job=\"slow\"} 1"),
        "{metrics}"
    );

    // While draining, /healthz says so.
    d.signal(Signal::SIGTERM);
    d.wait_log("waiting for runs in flight");
    assert_eq!(http(port, "GET", "/healthz", None).0, 503);
}

#[test]
fn a_token_guards_everything_but_healthz_and_is_never_logged() {
    let port = free_port();
    let token = "s3cret-token-value";
    let mut d = Daemon::start(&format!(
        "[daemon]\nhttp = \"127.0.0.1:{port}\"\nhttp_token = \"{token}\"\n[jobs.a]\nevery = \"100ms\"\nhandler = \"log\"\n"
    ));
    d.wait_log("HTTP endpoint listening");
    assert_eq!(http(port, "GET", "/healthz", None).0, 200);
    assert_eq!(http(port, "GET", "/metrics", None).0, 401);
    assert_eq!(http(port, "GET", "/jobs", Some("wrong")).0, 401);
    assert_eq!(http(port, "POST", "/jobs/a/pause", None).0, 401);
    assert_eq!(http(port, "GET", "/metrics", Some(token)).0, 200);
    d.signal(Signal::SIGTERM);
    assert_eq!(d.wait_exit(), 0);
    assert!(!d.log().contains(token));
}

#[test]
fn the_cli_talks_to_the_endpoint_and_exec_runs_a_job_in_the_foreground() {
    let port = free_port();
    let config = format!(
        "[daemon]\nhttp = \"127.0.0.1:{port}\"\n[jobs.hello]\nevery = \"1h\"\nshell = \"echo from-exec; exit 7\"\n[jobs.tick]\nevery = \"100ms\"\nhandler = \"log\"\n"
    );
    let mut d = Daemon::start(&config);
    d.wait_log("HTTP endpoint listening");
    let cli = |args: &[&str]| {
        tickd()
            .args(args)
            .current_dir(d.dir.path())
            .output()
            .expect("cli")
    };
    let out = cli(&["status"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(table.starts_with("JOB"), "{table}");
    assert!(
        table.contains("\nhello ") && table.contains("\ntick "),
        "{table}"
    );
    let out = cli(&["status", "--json"]);
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(json[0]["name"], "hello");
    let out = cli(&["run-now", "hello"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    d.wait_log("from-exec");
    assert_eq!(cli(&["run-now", "nope"]).status.code(), Some(1));
    // exec: no daemon involved; the job's output here, its exit code ours.
    let out = cli(&["exec", "hello"]);
    assert_eq!(out.status.code(), Some(7));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "from-exec\n");
    d.signal(Signal::SIGTERM);
    assert_eq!(d.wait_exit(), 0);
}

#[test]
fn a_taken_address_is_a_clear_error_at_start() {
    let holder = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = holder.local_addr().expect("addr").port();
    let dir = tempfile::tempdir().expect("tempdir");
    fs::write(
        dir.path().join("jobs.toml"),
        format!("[daemon]\nhttp = \"127.0.0.1:{port}\"\n[jobs.a]\nevery = \"1s\"\nshell = \"touch ran\"\n"),
    )
    .expect("write");
    let out = tickd()
        .args(["run", "jobs.toml"])
        .current_dir(dir.path())
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr)
        .contains(&format!("cannot listen on 127.0.0.1:{port}")));
    assert!(!dir.path().join("ran").exists());
}

#[test]
fn import_crontab_round_trips_through_check_and_next() {
    use std::io::Write;
    let dir = tempfile::tempdir().expect("tempdir");
    let crontab = "PATH=/usr/bin:/bin\n# every five minutes\n*/5 * * * * /usr/bin/php /srv/artisan schedule:run\n@reboot /bin/true\n";
    let import = |extra: &[&str]| {
        let mut child = tickd()
            .arg("import-crontab")
            .args(extra)
            .env("TZ", "UTC")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("import");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(crontab.as_bytes())
            .expect("write");
        child.wait_with_output().expect("output")
    };
    // @reboot cannot be translated: exit 2 with the line number...
    let out = import(&[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("-:line 4: @reboot"));
    // ... unless asked to skip it.
    let out = import(&["--skip-invalid"]);
    assert_eq!(out.status.code(), Some(0));
    fs::write(dir.path().join("jobs.toml"), &out.stdout).expect("write");
    let check = tickd()
        .args(["check", "jobs.toml"])
        .current_dir(dir.path())
        .output()
        .expect("check");
    assert_eq!(
        check.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&check.stderr)
    );
    // `tickd next` on the imported job agrees with the crontab's expression.
    let after = ["--after", "2026-01-01T00:03:00Z", "-n", "3"];
    let next_job = tickd()
        .args(["next", "jobs.toml", "--job", "artisan-schedule-run"])
        .args(after)
        .current_dir(dir.path())
        .output()
        .expect("next");
    let next_cron = tickd()
        .args(["next", "--cron", "*/5 * * * *"])
        .args(after)
        .output()
        .expect("next");
    let job_times: Vec<String> = String::from_utf8_lossy(&next_job.stdout)
        .lines()
        .skip(1)
        .map(|l| l.split_whitespace().next().unwrap_or("").to_owned())
        .collect();
    let cron_times: Vec<String> = String::from_utf8_lossy(&next_cron.stdout)
        .lines()
        .map(str::to_owned)
        .collect();
    assert_eq!(job_times, cron_times);
    assert_eq!(cron_times[0], "2026-01-01T00:05:00Z");
}

#[test]
fn import_crontab_fails_when_stdout_cannot_be_written_but_not_on_a_closed_pipe() {
    let dir = tempfile::tempdir().expect("tempdir");
    fs::write(dir.path().join("crontab"), "*/5 * * * * /usr/bin/true\n").expect("write");
    let import = |stdout: Stdio| {
        tickd()
            .args(["import-crontab", "crontab"])
            .current_dir(dir.path())
            .env("TZ", "UTC")
            .stdout(stdout)
            .stderr(Stdio::piped())
            .output()
            .expect("import")
    };
    // A full disk: the jobs file would be cut short, so this is an error.
    let full = fs::OpenOptions::new()
        .write(true)
        .open("/dev/full")
        .expect("/dev/full");
    let out = import(Stdio::from(full));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("tickd: cannot write the jobs file: "),
        "{stderr}"
    );
    // A reader that went away (`| head`) is not.
    let (reader, writer) = nix::unistd::pipe().expect("pipe");
    drop(reader);
    let out = import(Stdio::from(writer));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(!stderr.contains("cannot write"), "{stderr}");
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
fn a_full_stderr_does_not_stop_scheduling() {
    let mut d = Daemon::launch(
        "[jobs.count]\nevery = \"50ms\"\nshell = \"echo tick >> ticks; echo some output\"\n",
        |command, _| {
            command
                .args(["run", "jobs.toml"])
                .stdout(fs::File::create("/dev/full").expect("/dev/full"))
                .stderr(fs::File::create("/dev/full").expect("/dev/full"));
        },
    );
    eventually("20 runs with stdout and stderr full", || {
        fs::read_to_string(d.path("ticks")).is_ok_and(|t| t.lines().count() >= 20)
    });
    d.signal(Signal::SIGTERM);
    assert_eq!(d.wait_exit(), 0);
}

/// Promise 4, a full disk: the state file lives on a real 256 KiB tmpfs (in a mount namespace of
/// the daemon's own, so the machine's mounts are untouched) that the test fills up. Writes fail
/// with ENOSPC and are warned about, the last good state file stays as it was, runs go on, and
/// once space is freed the state is written again.
#[test]
fn a_full_disk_keeps_the_last_good_state_and_the_runs_going() {
    if !is_root() {
        return; // a mount namespace and a tmpfs need root
    }
    let dir = tempfile::tempdir().expect("tempdir");
    fs::create_dir(dir.path().join("state")).expect("state dir");
    fs::write(
        dir.path().join("jobs.toml"),
        "[daemon]\nstate_file = \"state/tickd.state\"\n\n\
         [jobs.a]\nevery = \"100ms\"\nhandler = \"log\"\non_missed = \"once\"\n",
    )
    .expect("write config");
    let log = dir.path().join("tickd.log");
    // unshare execs sh, which execs tickd: the child's pid is the daemon's.
    let child = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c"])
        .arg("mount -t tmpfs -o size=256k tmpfs state && exec \"$0\" run jobs.toml")
        .arg(env!("CARGO_BIN_EXE_tickd"))
        .current_dir(dir.path())
        .env("TICKD_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(fs::File::create(&log).expect("log file"))
        .spawn()
        .expect("start unshare");
    let mut d = Daemon { child, dir, log };
    d.wait_log("scheduler started");
    // The daemon's view of the tmpfs, through its root in /proc.
    let state_dir = PathBuf::from(format!("/proc/{}/root", d.child.id()))
        .join(d.dir.path().strip_prefix("/").expect("absolute"))
        .join("state");
    let state_file = state_dir.join("tickd.state");
    let read_state = || fs::read_to_string(&state_file).unwrap_or_default();
    let deadline = Instant::now() + PATIENCE;
    while !read_state().contains("a = ") {
        assert!(
            Instant::now() < deadline,
            "no state file; log:\n{}",
            d.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // Fill the disk.
    let filler = state_dir.join("filler");
    {
        use std::io::Write;
        let mut file = fs::File::create(&filler).expect("filler");
        let block = [0u8; 4096];
        let full = loop {
            if let Err(err) = file.write_all(&block) {
                break err;
            }
        };
        assert_eq!(full.raw_os_error(), Some(libc::ENOSPC), "{full}");
    }
    let log = d.wait_log("No space left on device");
    assert!(log.contains("cannot write the state file"), "{log}");
    let kept = read_state();
    assert!(
        kept.contains("a = "),
        "the last good state is gone: {kept:?}"
    );
    let ticks = d.log().matches("tick job=a").count();
    d.wait_log_n("tick job=a", ticks + 5);
    assert_eq!(read_state(), kept, "the state file changed on a full disk");
    // Free the space: the state is written again.
    fs::remove_file(&filler).expect("remove filler");
    let deadline = Instant::now() + PATIENCE;
    while read_state() == kept {
        assert!(
            Instant::now() < deadline,
            "state not written again; log:\n{}",
            d.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(read_state().contains("a = "));
    d.signal(Signal::SIGTERM);
    assert_eq!(d.wait_exit(), 0, "{}", d.log());
}

#[test]
fn a_state_file_that_cannot_be_written_is_a_warning() {
    let mut d = Daemon::start(
        "[daemon]\nstate_file = \"/proc/tickd-cannot-write-here.state\"\n[jobs.a]\nevery = \"100ms\"\nhandler = \"log\"\non_missed = \"once\"\n",
    );
    d.wait_log("cannot write the state file");
    let ticks = d.log().matches("tick job=a").count();
    d.wait_log_n("tick job=a", ticks + 3);
    d.signal(Signal::SIGTERM);
    assert_eq!(d.wait_exit(), 0);
}
