//! The shared fixtures of the integration tests.
//!
//! - The real binary: [`Daemon`] runs `tickd run` in a temp dir with its log in a file, and waits
//!   for things to happen with generous deadlines ([`PATIENCE`]), never asserting how long anything
//!   took; `/proc` readers, a loopback HTTP client and server, the Prometheus `sample` reader.
//! - The daemon in process: [`InProcess`] runs it on paused tokio time and a manual wall clock with
//!   recording handlers, so that the tests can assert exact milliseconds.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, TimeZone, Utc};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tempfile::TempDir;
use tickd::{Clock, Control, DaemonOptions, Handlers, RunContext, Stopped};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

// The real binary.

/// How long a test of the real binary waits for anything before it fails.
pub const PATIENCE: Duration = Duration::from_secs(30);

/// A `tickd run` process with its log (stderr) in a file.
pub struct Daemon {
    pub child: Child,
    pub dir: TempDir,
    pub log: PathBuf,
}

/// A command for the `tickd` binary under test.
pub fn tickd() -> Command {
    Command::new(env!("CARGO_BIN_EXE_tickd"))
}

impl Daemon {
    /// `tickd run jobs.toml` on `config`, logging to a file; returns once it is scheduling.
    pub fn start(config: &str) -> Daemon {
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
    pub fn start_with_nofile_limit(config: &str, soft: u64, hard: u64) -> Daemon {
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
    pub fn launch(config: &str, prepare: impl FnOnce(&mut Command, &Path)) -> Daemon {
        Daemon::launch_program(Path::new(env!("CARGO_BIN_EXE_tickd")), config, prepare)
    }

    /// [`Daemon::launch`] with another copy of the binary.
    pub fn launch_program(
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

    /// Starts `command` (tickd, or something that execs it so that its pid is the daemon's) in
    /// `dir`, which already holds the jobs file, logging at info level to `tickd.log` there: for a
    /// daemon whose directory must be prepared before it starts (its permissions, a mount point).
    pub fn spawn_in(dir: TempDir, command: &mut Command) -> Daemon {
        let log = dir.path().join("tickd.log");
        let child = command
            .current_dir(dir.path())
            .env("TICKD_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(fs::File::create(&log).expect("log file"))
            .spawn()
            .expect("start tickd");
        Daemon { child, dir, log }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until the log contains `needle` `times` times; returns the log.
    pub fn wait_log_n(&self, needle: &str, times: usize) -> String {
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

    pub fn wait_log(&self, needle: &str) -> String {
        self.wait_log_n(needle, 1)
    }

    pub fn wait_file(&self, name: &str) -> String {
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

    pub fn signal(&self, signal: Signal) {
        kill(Pid::from_raw(self.child.id() as i32), signal).expect("signal tickd");
    }

    pub fn rewrite(&self, config: &str) {
        fs::write(self.path("jobs.toml"), config).expect("write config");
    }

    /// Waits for the daemon to exit and returns its exit code.
    pub fn wait_exit(&mut self) -> i32 {
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

/// Waits for the file `name` in the daemon's directory and reads the pid it holds.
pub fn read_pid_wait(d: &Daemon, name: &str) -> i32 {
    d.wait_file(name).trim().parse().expect("a pid")
}

/// The state, parent and process group of `pid`, from `/proc/PID/stat` (the fields after the
/// command name, which may hold spaces, start after the last ')').
pub fn proc_stat(pid: i32) -> Option<(String, i32, i32)> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = stat.rsplit_once(')')?;
    let mut fields = rest.split_whitespace();
    let state = fields.next()?.to_owned();
    let ppid = fields.next()?.parse().ok()?;
    let pgrp = fields.next()?.parse().ok()?;
    Some((state, ppid, pgrp))
}

/// Every process with its `proc_stat` fields.
pub fn all_processes() -> Vec<(i32, String, i32, i32)> {
    fs::read_dir("/proc")
        .expect("/proc")
        .flatten()
        .filter_map(|e| e.file_name().to_string_lossy().parse::<i32>().ok())
        .filter_map(|pid| proc_stat(pid).map(|(state, ppid, pgrp)| (pid, state, ppid, pgrp)))
        .collect()
}

/// Live (non-zombie) processes whose process group is `pgid`.
pub fn live_group_members(pgid: i32) -> Vec<i32> {
    all_processes()
        .into_iter()
        .filter(|(_, state, _, pgrp)| state != "Z" && *pgrp == pgid)
        .map(|(pid, ..)| pid)
        .collect()
}

/// Zombies whose parent is `parent`.
pub fn zombies_of(parent: u32) -> Vec<i32> {
    all_processes()
        .into_iter()
        .filter(|(_, state, ppid, _)| state == "Z" && u32::try_from(*ppid).ok() == Some(parent))
        .map(|(pid, ..)| pid)
        .collect()
}

/// Whether `pid` is a live (non-zombie) process.
pub fn is_alive(pid: i32) -> bool {
    proc_stat(pid).is_some_and(|(state, ..)| state != "Z")
}

/// Waits (bounded) for a condition that should become true soon.
pub fn eventually(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + PATIENCE;
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Whether the tests run as root, as CI does.
pub fn is_root() -> bool {
    nix::unistd::Uid::effective().is_root()
}

/// For a test marked `#[ignore = "needs root"]`: fails at once, saying why, when run without root.
pub fn assert_root(why: &str) {
    assert!(
        is_root(),
        "needs root ({why}): run as root with --include-ignored"
    );
}

/// A free loopback port (bound then released: a small race, fine for a test).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

/// A minimal HTTP/1.0 request: (status, body).
pub fn http(port: u16, method: &str, path: &str, token: Option<&str>) -> (u16, String) {
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
pub fn sample(metrics: &str, series: &str) -> f64 {
    metrics
        .lines()
        .find(|l| l.starts_with(series))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or(-1.0)
}

/// A loopback HTTP/1.1 server for `http` jobs: answers `/ok` with 200 and anything else with
/// 500 and a one-line body, closes each connection, and hands every request's text to the test.
pub fn http_server() -> (u16, std::sync::mpsc::Receiver<String>) {
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
            let (status, body) = if text.starts_with("POST /ok ") || text.starts_with("GET /ok ") {
                ("200 OK", "")
            } else {
                (
                    "500 Internal Server Error",
                    "Fatal error: the database is down",
                )
            };
            let _ = write!(
                stream,
                "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            if tx.send(text).is_err() {
                break;
            }
        }
    });
    (port, rx)
}

// The daemon in process, on paused time.

/// What a recording handler saw: one entry per event.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub job: String,
    pub what: &'static str,
    /// Milliseconds of (paused) monotonic time since the daemon started.
    pub at_ms: u128,
    pub scheduled: DateTime<Utc>,
}

/// A daemon running in process on paused time, with recording handlers:
/// - `record`: records "run" and returns;
/// - `slow`: records "run", works for 250 ms, records "done"; returns early (recording
///   "cancelled") when its token is cancelled;
/// - `stubborn`: records "run" and works for 10 s, ignoring cancellation;
/// - `fails`: records "run" and returns an error;
/// - `panics`: records "run", then panics.
pub struct InProcess {
    /// Holds the config file for as long as the daemon runs.
    _dir: TempDir,
    pub path: PathBuf,
    pub events: Arc<Mutex<Vec<Event>>>,
    pub clock: Clock,
    pub start: tokio::time::Instant,
    controls: mpsc::Sender<Control>,
    daemon: JoinHandle<Result<Stopped, tickd::DaemonError>>,
}

/// When (ms since start) `job` recorded `what` among `events`.
pub fn times_in(events: &[Event], job: &str, what: &str) -> Vec<u128> {
    events
        .iter()
        .filter(|e| e.job == job && e.what == what)
        .map(|e| e.at_ms)
        .collect()
}

/// Writes a config file as one that was written a while ago: `load` reads a file only once it
/// has been still for `tickd::config::SETTLE`, and these tests need not wait for that (the
/// settling itself has its own tests).
pub fn write_settled(path: &std::path::Path, text: &str) {
    std::fs::write(path, text).expect("write config");
    let past = std::time::SystemTime::now() - Duration::from_secs(2);
    std::fs::File::options()
        .write(true)
        .open(path)
        .and_then(|file| file.set_modified(past))
        .expect("backdate config");
}

/// The wall clock's start in the in-process tests: 2026-01-01T00:00:00Z.
pub fn t0() -> DateTime<Utc> {
    wall(2026, 1, 1, 0, 0, 0)
}

pub fn wall(y: i32, mo: u32, d: u32, h: u32, mi: u32, s: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(y, mo, d, h, mi, s)
        .single()
        .expect("valid time")
}

fn recording_handlers(events: &Arc<Mutex<Vec<Event>>>, start: tokio::time::Instant) -> Handlers {
    let mut handlers = Handlers::with_builtins();
    let push = {
        let events = events.clone();
        move |ctx: &RunContext, what: &'static str| {
            events.lock().expect("lock").push(Event {
                job: ctx.job.to_string(),
                what,
                at_ms: tokio::time::Instant::now()
                    .duration_since(start)
                    .as_millis(),
                scheduled: ctx.scheduled,
            });
        }
    };
    let p = push.clone();
    handlers.register("record", move |ctx: RunContext| {
        p(&ctx, "run");
        async { Ok::<(), tickd::handler::HandlerError>(()) }
    });
    let p = push.clone();
    handlers.register("slow", move |ctx: RunContext| {
        p(&ctx, "run");
        let p = p.clone();
        async move {
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(250)) => { p(&ctx, "done"); Ok(()) }
                _ = ctx.cancel.cancelled() => { p(&ctx, "cancelled"); Err("cancelled") }
            }
        }
    });
    let p = push.clone();
    handlers.register("stubborn", move |ctx: RunContext| {
        p(&ctx, "run");
        let p = p.clone();
        async move {
            tokio::time::sleep(Duration::from_secs(10)).await;
            p(&ctx, "done");
            Ok::<(), tickd::handler::HandlerError>(())
        }
    });
    let p = push.clone();
    handlers.register("fails", move |ctx: RunContext| {
        p(&ctx, "run");
        async { Err("always fails") }
    });
    let p = push;
    handlers.register("panics", move |ctx: RunContext| {
        p(&ctx, "run");
        panics()
    });
    handlers
}

/// The `panics` handler's run.
async fn panics() -> Result<(), tickd::handler::HandlerError> {
    panic!("handler bug")
}

impl InProcess {
    /// Starts the daemon on `config` with the wall clock at `wall_start`. Call from a
    /// `#[tokio::test(start_paused = true)]`.
    pub fn start(config: &str, wall_start: DateTime<Utc>) -> Self {
        Self::start_in(tempfile::tempdir().expect("tempdir"), config, wall_start)
    }

    /// Like [`InProcess::start`], in a given directory (to share a state file between daemons).
    pub fn start_in(dir: TempDir, config: &str, wall_start: DateTime<Utc>) -> Self {
        Self::start_with(dir, config, wall_start, None)
    }

    /// Like [`InProcess::start_in`], telling `notifier` what a service manager is told.
    pub fn start_with(
        dir: TempDir,
        config: &str,
        wall_start: DateTime<Utc>,
        notifier: Option<tickd::notify::Notifier>,
    ) -> Self {
        let path = dir.path().join("jobs.toml");
        write_settled(&path, config);
        let events = Arc::new(Mutex::new(Vec::new()));
        let start = tokio::time::Instant::now();
        let handlers = recording_handlers(&events, start);
        let config = tickd::load(&path, &handlers).expect("valid config");
        let clock = Clock::manual(wall_start);
        let (controls, rx) = mpsc::channel(16);
        let options = DaemonOptions {
            config_path: path.clone(),
            handlers,
            clock: clock.clone(),
            group_keeper: None,
            notifier,
            subreaper: false,
        };
        let daemon = tokio::spawn(tickd::run(config, options, rx));
        InProcess {
            _dir: dir,
            path,
            events,
            clock,
            start,
            controls,
            daemon,
        }
    }

    /// Lets `ms` of paused time pass (timers fire in order on the way).
    pub async fn run_for(&self, ms: u64) {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }

    pub async fn send(&self, control: Control) {
        self.controls
            .send(control)
            .await
            .expect("daemon is running");
    }

    /// Rewrites the config file.
    pub fn rewrite(&self, config: &str) {
        write_settled(&self.path, config);
    }

    pub fn events(&self) -> Vec<Event> {
        self.events.lock().expect("lock").clone()
    }

    /// When (ms since start) `job` recorded `what`.
    pub fn times(&self, job: &str, what: &str) -> Vec<u128> {
        times_in(&self.events(), job, what)
    }

    /// The scheduled times `job`'s runs were given.
    pub fn scheduled(&self, job: &str) -> Vec<DateTime<Utc>> {
        self.events()
            .into_iter()
            .filter(|e| e.job == job && e.what == "run")
            .map(|e| e.scheduled)
            .collect()
    }

    /// Waits for the daemon to stop on its own.
    pub async fn stopped(self) -> Stopped {
        self.daemon
            .await
            .expect("daemon task")
            .expect("daemon result")
    }

    /// Stops the daemon if it still runs (it may have recycled itself) and returns how it ended.
    pub async fn stop_if_running(self) -> Stopped {
        // A send fails when the daemon already returned and dropped its controls.
        let _ = self.controls.send(Control::Shutdown).await;
        self.daemon
            .await
            .expect("daemon task")
            .expect("daemon result")
    }

    /// Sends Shutdown and returns how the daemon stopped.
    pub async fn shut_down(self) -> (Stopped, Vec<Event>) {
        self.shut_down_keeping_dir().await.0
    }

    /// Like [`InProcess::shut_down`], handing back the directory.
    pub async fn shut_down_keeping_dir(self) -> ((Stopped, Vec<Event>), TempDir) {
        self.send(Control::Shutdown).await;
        let stopped = self
            .daemon
            .await
            .expect("daemon task")
            .expect("daemon result");
        let events = self.events.lock().expect("lock").clone();
        ((stopped, events), self._dir)
    }
}
