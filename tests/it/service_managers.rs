//! Under a service manager: the systemd notify protocol and watchdog (the real binary, and the
//! supervisor's timers in process on paused time), supervisord's stop and restart, and the
//! recycling exits (75) a manager restarts.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use tickd::{Control, Stopped};

use crate::support::{eventually, is_alive, t0, Daemon, InProcess, PATIENCE};

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

/// A Python path with supervisor installed: the system's if it has it, else installed from PyPI
/// into `target/pydeps` by this test itself (nothing is needed beforehand). Once per process: the
/// supervisord tests run in parallel, and two pip installs into one directory race.
fn supervisor_pythonpath() -> PathBuf {
    static PATH: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    PATH.get_or_init(install_supervisor).clone()
}

fn install_supervisor() -> PathBuf {
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

/// supervisord in a temp dir, running the shipped program section (contrib/) with the temp dir's
/// paths on `jobs` (a jobs file).
struct Supervisord {
    dir: tempfile::TempDir,
    pythonpath: PathBuf,
}

impl Supervisord {
    fn start(jobs: &str) -> Supervisord {
        let pythonpath = supervisor_pythonpath();
        let dir = tempfile::tempdir().expect("tempdir");
        let d = dir.path().display().to_string();
        fs::write(dir.path().join("jobs.toml"), jobs).expect("jobs");
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
        let supervisord = Supervisord { dir, pythonpath };
        let started = supervisord.python("supervisor.supervisord", &[]);
        assert!(
            started.status.success(),
            "{}",
            String::from_utf8_lossy(&started.stderr)
        );
        supervisord
    }

    fn python(&self, module: &str, args: &[&str]) -> std::process::Output {
        let conf = self.dir.path().join("supervisord.conf");
        Command::new("python3")
            .args(["-m", module, "-c"])
            .arg(conf)
            .args(args)
            .env("PYTHONPATH", &self.pythonpath)
            .current_dir(self.dir.path())
            .output()
            .expect("python3")
    }

    /// `supervisorctl ARGS`' output.
    fn ctl(&self, args: &[&str]) -> String {
        let out = self.python("supervisor.supervisorctl", args);
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// A file of the temp dir, empty if it is missing.
    fn read(&self, name: &str) -> String {
        fs::read_to_string(self.dir.path().join(name)).unwrap_or_default()
    }
}

impl Drop for Supervisord {
    fn drop(&mut self) {
        let _ = self.ctl(&["shutdown"]);
        let pid: i32 = self.read("supervisord.pid").trim().parse().unwrap_or(0);
        // No `eventually`: a panic in a drop that runs for a failed assertion would abort.
        let deadline = Instant::now() + PATIENCE;
        while pid > 0 && is_alive(pid) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

#[test]
fn supervisorctl_stop_drains_the_run_and_restart_works() {
    let s = Supervisord::start(
        "[daemon]\nshutdown_timeout = \"30s\"\n[jobs.work]\nevery = \"100ms\"\nshell = \"echo started >> started; sleep 2; echo done >> done\"\n",
    );
    eventually("the job started under supervisord", || {
        s.read("started").contains("started")
    });
    // `stop` waits for tickd, which waits for the run in flight.
    let stop = s.ctl(&["stop", "tickd"]);
    assert!(stop.contains("tickd: stopped"), "{stop}");
    assert_eq!(
        s.read("started").lines().count(),
        s.read("done").lines().count(),
        "a run was cut short"
    );
    let log = s.read("supervisord.log");
    assert!(log.contains("stopped: tickd (exit status 0)"), "{log}");
    let restart = s.ctl(&["restart", "tickd"]);
    assert!(restart.contains("tickd: started"), "{restart}");
    assert!(s.ctl(&["status", "tickd"]).contains("RUNNING"));
}

/// Without `exitcodes=0,75` in the shipped section, supervisord logged every recycle as "exit
/// status 75; not expected".
#[test]
fn supervisord_restarts_a_recycled_tickd_as_an_expected_exit() {
    // About 1.6 s a life: longer than startsecs=1, so supervisord counts it as started.
    let s = Supervisord::start(
        "[daemon]\nmax_runs = 8\n[jobs.a]\nevery = \"200ms\"\nshell = \"echo ran >> ran\"\n",
    );
    eventually("tickd recycled and was started again", || {
        s.read("supervisord.log")
            .matches("success: tickd entered RUNNING")
            .count()
            >= 2
    });
    let log = s.read("supervisord.log");
    assert!(
        log.contains("exited: tickd (exit status 75; expected)"),
        "{log}"
    );
    assert!(!log.contains("not expected"), "{log}");
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
fn max_runs_exits_75() {
    let mut d =
        Daemon::start("[daemon]\nmax_runs = 5\n[jobs.a]\nevery = \"50ms\"\nshell = \"true\"\n");
    assert_eq!(d.wait_exit(), 75, "{}", d.log());
    assert!(d.log().contains("max_runs reached"));
}

/// A socket standing in for the service manager, and the messages it received so far.
fn manager() -> (
    tempfile::TempDir,
    std::os::unix::net::UnixDatagram,
    std::path::PathBuf,
) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("notify");
    let socket = std::os::unix::net::UnixDatagram::bind(&path).expect("bind");
    socket.set_nonblocking(true).expect("nonblocking");
    (dir, socket, path)
}

fn received(socket: &std::os::unix::net::UnixDatagram) -> Vec<String> {
    let mut buf = [0u8; 4096];
    std::iter::from_fn(|| {
        let n = socket.recv(&mut buf).ok()?;
        Some(String::from_utf8_lossy(&buf[..n]).into_owned())
    })
    .collect()
}

/// The supervisor re-created its timers on every pass of its loop: reloads more often than the
/// watchdog interval starved WATCHDOG=1 (until systemd killed tickd).
#[tokio::test(start_paused = true)]
async fn frequent_reloads_do_not_starve_the_watchdog() {
    let (_manager_dir, socket, path) = manager();
    // WatchdogSec=2s: a ping every second.
    let notifier =
        tickd::notify::Notifier::new(&path, Some(Duration::from_secs(2))).expect("notifier");
    let config = "[jobs.a]\nevery = \"1s\"\nhandler = \"record\"\n";
    let d = InProcess::start_with(
        tempfile::tempdir().expect("tempdir"),
        config,
        t0(),
        Some(notifier),
    );
    let mut messages = Vec::new();
    for _ in 0..20 {
        d.run_for(400).await;
        d.send(Control::Reload).await;
        messages.extend(received(&socket));
    }
    d.run_for(100).await;
    messages.extend(received(&socket));
    let pings = messages
        .iter()
        .filter(|m| m.starts_with("WATCHDOG=1"))
        .count();
    // 8.1 s at one ping a second.
    assert!((7..=9).contains(&pings), "{pings} watchdog pings in 8.1 s");
    d.shut_down().await;
}

/// The 1 s sample of the daemon's own memory restarted after every watchdog ping: with
/// WatchdogSec under 2 s, `max_rss` was never checked.
#[tokio::test(start_paused = true)]
async fn watchdog_pings_do_not_postpone_the_max_rss_check() {
    let (_manager_dir, _socket, path) = manager();
    let notifier =
        tickd::notify::Notifier::new(&path, Some(Duration::from_millis(1_000))).expect("notifier");
    // 1 byte: exceeded at the first sample.
    let config = "[daemon]\nmax_rss = \"1B\"\n[jobs.a]\nevery = \"1s\"\nhandler = \"record\"\n";
    let d = InProcess::start_with(
        tempfile::tempdir().expect("tempdir"),
        config,
        t0(),
        Some(notifier),
    );
    let stopped = tokio::time::timeout(Duration::from_secs(5), d.stopped()).await;
    assert!(
        matches!(stopped, Ok(Stopped::Recycled { .. })),
        "max_rss was not checked: {stopped:?}"
    );
}
