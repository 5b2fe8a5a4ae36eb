//! Users and limits: jobs run as another user (root only), a root daemon's checks on its jobs file,
//! per-job `max_rss`, and the daemon at the process, thread and descriptor limits. The tests that
//! need root are `#[ignore = "needs root"]`: `.ci/run` runs them as root (`--include-ignored`).

use std::fs;
use std::os::unix::process::CommandExt;
use std::process::Command;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use crate::support::{assert_root, is_root, tickd, Daemon, PATIENCE};

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
#[ignore = "needs root"]
fn the_on_failure_hook_runs_as_the_job_and_where_it_runs() {
    assert_root("`user` needs a root daemon");
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
#[ignore = "needs root"]
fn running_as_another_user_needs_root() {
    assert_root("to switch to nobody");
    // Run `tickd check` as nobody (setpriv), on a file naming another user.
    let dir = tempfile::tempdir().expect("tempdir");
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).expect("chmod");
    fs::write(
        dir.path().join("jobs.toml"),
        "[jobs.a]\nevery = \"1s\"\nuser = \"root\"\nshell = \"true\"\n",
    )
    .expect("write");
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
#[ignore = "needs root"]
fn a_root_daemon_refuses_a_config_others_could_change() {
    assert_root("a root daemon's check");
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

/// Sets the daemon's process limit (`prlimit --nproc=SOFT:HARD`) as `uid`, the daemon's own, as an
/// unprivileged `prlimit` may.
fn prlimit_nproc_as(uid: u32, d: &Daemon, value: &str) -> std::process::ExitStatus {
    Command::new("setpriv")
        .args([
            &format!("--reuid={uid}"),
            &format!("--regid={uid}"),
            "--clear-groups",
            "prlimit",
            "--pid",
            &d.child.id().to_string(),
            &format!("--nproc={value}"),
        ])
        .status()
        .expect("prlimit")
}

/// Promise 4, EAGAIN: a daemon whose user reaches its process limit (`ulimit -u`) fails its child
/// runs with a clear reason, keeps its in-process jobs going, and starts children again once the
/// limit allows. The daemon runs as an otherwise unused uid; its limit is lowered below the number
/// of threads it already has by that same uid (as an unprivileged `prlimit` may), so every new
/// process fails with EAGAIN, the kernel's own answer.
#[test]
#[ignore = "needs root"]
fn a_process_limit_fails_child_runs_clearly_and_the_daemon_goes_on() {
    assert_root("to start the daemon as another user");
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
    let mut d = Daemon::spawn_in(dir, tickd().args(["run", "jobs.toml"]).uid(UID).gid(UID));
    d.wait_log("outcome=success");
    let limit = |value: &str| {
        let status = prlimit_nproc_as(UID, &d, value);
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

/// Under a thread limit tokio's blocking pool panicked "OS can't spawn worker thread": once in
/// the HTTP client's DNS lookup (the `http` job then stayed "running" for ever and every later
/// fire was skipped) and once in the state writer (the state was never written again). The
/// daemon runs as an otherwise unused uid that then may start no thread or process at all.
#[test]
#[ignore = "needs root"]
fn a_thread_limit_fails_runs_and_degrades_loudly_but_wedges_nothing() {
    use std::os::unix::fs::PermissionsExt;
    use std::os::unix::process::CommandExt;

    use crate::support::{assert_root, free_port, http, tickd, PATIENCE};
    assert_root("to run the daemon as another uid");
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
    let mut d = Daemon::spawn_in(dir, tickd().args(["run", "jobs.toml"]).uid(UID).gid(UID));
    d.wait_log("HTTP endpoint listening");
    // From here this uid may start nothing: no thread, no process.
    // As the daemon's own uid, as an unprivileged `prlimit` may.
    let status = prlimit_nproc_as(UID, &d, "1:");
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
    let zombies_before = crate::support::zombies_of(pid);
    std::thread::sleep(std::time::Duration::from_secs(2));
    let zombies_after = crate::support::zombies_of(pid);
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
