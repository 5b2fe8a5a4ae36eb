//! The daemon's own log: JSON lines, and a stderr that is closed, full or never read, which must
//! stop neither the jobs nor a shutdown.

use std::fs;
use std::process::Stdio;

use nix::sys::signal::Signal;

use crate::support::{eventually, Daemon};

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

/// Log lines were written to stderr synchronously by the task that logged them: with stderr on a
/// pipe nobody reads, every worker blocked in a write, a 5 Hz job stopped firing next to a chatty
/// in-process job, and SIGTERM was ignored. Lines now go through a bounded queue to a writer
/// thread; what does not fit is dropped and counted.
#[test]
fn a_stderr_pipe_nobody_reads_stalls_neither_jobs_nor_shutdown() {
    use std::process::Stdio;
    use std::time::{Duration, Instant};

    let port = crate::support::free_port();
    // The read end stays open (so writes block instead of failing) and is not read until the
    // drops are counted.
    let (read_end, write_end) =
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).expect("a pipe for stderr");
    // 20 jobs at 100 Hz, 6000 lines a second: the log queue (4 MiB) fills in seconds.
    let chatty: String = (0..20)
        .map(|i| format!("[jobs.chatty{i}]\nevery = \"10ms\"\nhandler = \"log\"\n"))
        .collect();
    let mut d = Daemon::launch(
        &format!(
            r#"
[daemon]
http = "127.0.0.1:{port}"

{chatty}
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
    crate::support::eventually("the 5 Hz job fires", || ticks() > 0);
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
        let metrics = crate::support::http(port, "GET", "/metrics", None).1;
        crate::support::sample(&metrics, "tickd_log_lines_dropped_total")
    };
    crate::support::eventually("dropped log lines are counted", || dropped() > 0.0);
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
        .recv_timeout(crate::support::PATIENCE)
        .expect("a line saying log lines were dropped");
    let count: u64 = notice
        .split_once("dropped=")
        .and_then(|(_, n)| n.split_whitespace().next()?.parse().ok())
        .unwrap_or(0);
    assert!(count > 0 && count as f64 <= dropped(), "{notice}");
    d.signal(Signal::SIGTERM);
    assert_eq!(d.wait_exit(), 0, "SIGTERM with stderr blocked");
}

/// Issue 18: one style in every line. `job=x`, never `job="x"`; times in RFC 3339 with
/// milliseconds and `Z`, an aligned fire on its `.000`; how a child ended as `exit_code=` or
/// `signal=`, never a Rust debug value (`Exited(ExitStatus(unix_wait_status(0)))`); `forced`
/// only when force was needed.
#[test]
fn log_lines_have_one_style() {
    let mut d = Daemon::start(
        r#"
[jobs.killed]
every = "1s"
align = true
shell = "echo hi; kill -TERM $$"
on_failure = ["true"]
"#,
    );
    let log = d.wait_log("on_failure hook ended");
    d.signal(Signal::SIGTERM);
    assert_eq!(d.wait_exit(), 0);
    let log = log + &d.log();
    assert!(!log.contains("job=\""), "{log}");
    assert!(!log.contains("stream=\""), "{log}");
    assert!(!log.contains("ExitStatus"), "{log}");
    assert!(!log.contains("forced="), "{log}");
    let line = |what: &str| {
        log.lines()
            .find(|l| l.contains(what))
            .unwrap_or_else(|| panic!("no line with {what:?}:\n{log}"))
            .to_owned()
    };
    let started = line("run started");
    assert!(started.contains("job=killed"), "{started}");
    let scheduled = started
        .split_once("scheduled=")
        .and_then(|(_, rest)| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("{started}"));
    assert!(scheduled.ends_with(".000Z"), "{started}");
    assert!(
        chrono::DateTime::parse_from_rfc3339(scheduled).is_ok(),
        "{started}"
    );
    // The line's own time: RFC 3339 with milliseconds and Z.
    let stamp = started.split_whitespace().next().unwrap_or_default();
    assert_eq!(stamp.len(), "2026-12-02T05:00:00.000Z".len(), "{started}");
    assert!(stamp.ends_with('Z'), "{started}");
    let finished = line("run finished");
    assert!(finished.contains("signal=TERM"), "{finished}");
    assert!(!finished.contains("exit_code"), "{finished}");
    let output = line("hi");
    assert!(output.contains("stream=stdout"), "{output}");
    let hook = line("on_failure hook ended");
    assert!(hook.contains("outcome=success"), "{hook}");
    assert!(hook.contains("exit_code=0"), "{hook}");
}

/// Issue 18: a 5 Hz job drowned every other line. `log = "none"` writes no line for its runs
/// (nor its output), while the metrics count them all; `log = "failures"` writes only the runs
/// that fail, with what they printed.
#[test]
fn a_jobs_log_setting_decides_which_of_its_runs_are_logged() {
    let port = crate::support::free_port();
    let mut d = Daemon::start(&format!(
        r#"
[daemon]
http = "127.0.0.1:{port}"

[jobs.quiet]
every = "200ms"
handler = "log"
log = "none"

[jobs.quiet-child]
every = "200ms"
shell = "echo noisy"
log = "none"

[jobs.flaky]
every = "200ms"
shell = 'n=$(cat n 2>/dev/null || echo 0); n=$((n+1)); echo $n > n; echo "attempt $n"; [ $((n % 3)) -ne 0 ]'
log = "failures"
"#
    ));
    let runs = |job: &str, outcome: &str| {
        let metrics = crate::support::http(port, "GET", "/metrics", None).1;
        crate::support::sample(
            &metrics,
            &format!("tickd_runs_total{{job_name=\"{job}\",outcome=\"{outcome}\"}}"),
        )
    };
    eventually("ten runs of each quiet job, counted", || {
        runs("quiet", "success") >= 10.0 && runs("quiet-child", "success") >= 10.0
    });
    d.wait_log("attempt 6");
    d.signal(Signal::SIGTERM);
    assert_eq!(d.wait_exit(), 0);
    let log = d.log();
    // The harness logs at debug; "none" is about the default level's lines.
    let of = |job: &str| -> Vec<&str> {
        log.lines()
            .filter(|l| !l.contains(" DEBUG "))
            .filter(|l| {
                l.split_whitespace()
                    .any(|field| field == format!("job={job}"))
            })
            .collect()
    };
    assert_eq!(of("quiet"), Vec::<&str>::new(), "{log}");
    assert_eq!(of("quiet-child"), Vec::<&str>::new(), "{log}");
    assert!(!log.contains("noisy") && !log.contains(": tick "), "{log}");
    let flaky = of("flaky");
    assert!(
        flaky.iter().any(|l| l.contains("run finished")
            && l.contains("outcome=failure")
            && l.contains("exit_code=1")),
        "{log}"
    );
    let printed = |line: &str, n: u32| line.contains(&format!("tickd::output: attempt {n} "));
    assert!(flaky.iter().any(|l| printed(l, 3)), "{log}");
    // Its successful runs, their output and every start are not logged.
    for line in &flaky {
        assert!(!line.contains("run started"), "{line}");
        assert!(!line.contains("outcome=success"), "{line}");
        assert!(
            !line.ends_with("attempt 1") && !line.ends_with("attempt 2"),
            "{line}"
        );
    }
}

/// Issue 18: a typo in `TICKD_LOG` read as a target filter and silenced the whole log. It is
/// refused before anything runs (exit 2, the valid values named); full directives still work.
#[test]
fn a_typo_in_tickd_log_is_refused_at_start() {
    let dir = tempfile::tempdir().expect("tempdir");
    fs::write(
        dir.path().join("jobs.toml"),
        "[jobs.a]\nevery = \"200ms\"\nhandler = \"log\"\n",
    )
    .expect("jobs file");
    // Bounded: before the fix, a typo ran the daemon, silent, until stopped.
    let run = |level: &str| {
        let mut child = crate::support::tickd()
            .args(["run", "jobs.toml"])
            .current_dir(dir.path())
            .env("TICKD_LOG", level)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start tickd");
        let deadline = std::time::Instant::now() + crate::support::PATIENCE;
        while child.try_wait().expect("wait").is_none() {
            if std::time::Instant::now() > deadline {
                let _ = child.kill();
                panic!("TICKD_LOG={level}: tickd ran instead of refusing it");
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        child.wait_with_output().expect("tickd ends")
    };
    for typo in ["warning", "verbose", "info,tickd=loud", "%%garbage"] {
        let output = run(typo);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{typo}: {stderr}");
        for word in [
            "error",
            "warn",
            "info",
            "debug",
            "trace",
            "off",
            "target=level",
        ] {
            assert!(stderr.contains(word), "{typo}: {stderr}");
        }
    }
    // A full EnvFilter directive: the daemon runs and logs what it asks for.
    let mut d = Daemon::launch(
        "[jobs.a]\nevery = \"200ms\"\nhandler = \"log\"\n",
        |command, log| {
            command
                .args(["run", "jobs.toml"])
                .env("TICKD_LOG", "warn,tickd::handler=info")
                .stderr(fs::File::create(log).expect("log file"));
        },
    );
    let log = d.wait_log(": tick ");
    assert!(!log.contains("run started"), "{log}");
    d.signal(Signal::SIGTERM);
    assert_eq!(d.wait_exit(), 0);
}

/// `--log-time local`: every time of the log in the machine's zone (`TZ`), with its offset.
#[test]
fn log_time_local_shows_the_machines_zone_with_its_offset() {
    let mut d = Daemon::launch(
        "[jobs.a]\nevery = \"200ms\"\nhandler = \"log\"\n",
        |command, log| {
            command
                .args(["run", "--log-time", "local", "jobs.toml"])
                // A POSIX zone three hours east of UTC, with no daylight saving time.
                .env("TZ", "XYZ-3")
                .stderr(fs::File::create(log).expect("log file"));
        },
    );
    let log = d.wait_log("run started");
    d.signal(Signal::SIGTERM);
    assert_eq!(d.wait_exit(), 0);
    let started = log
        .lines()
        .find(|l| l.contains("run started"))
        .expect("a run started");
    let stamp = started.split_whitespace().next().unwrap_or_default();
    assert!(stamp.ends_with("+03:00"), "{started}");
    let stamp = chrono::DateTime::parse_from_rfc3339(stamp).expect("RFC 3339");
    let scheduled = started
        .split_once("scheduled=")
        .and_then(|(_, rest)| rest.split_whitespace().next())
        .unwrap_or_default();
    assert!(scheduled.ends_with("+03:00"), "{started}");
    let scheduled = chrono::DateTime::parse_from_rfc3339(scheduled).expect("RFC 3339");
    // The same instant as UTC would show, not the UTC reading relabelled.
    let now = chrono::Utc::now();
    assert!(
        (now - stamp.to_utc()).num_seconds().abs() < 600,
        "{started}"
    );
    assert!((stamp - scheduled).num_seconds().abs() < 60, "{started}");
}
