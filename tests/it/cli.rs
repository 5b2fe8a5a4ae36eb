//! The command line: `run` and `check` on bad files, `next`, `status`, `run-now` and `exec`
//! against the endpoint, and `import-crontab`.

use std::fs;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use nix::sys::signal::Signal;

use crate::support::{free_port, tickd, Daemon};

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

/// A valid file that will not do what it says on this machine is a warning, not an error; with
/// `--strict` it is one.
#[test]
fn check_warns_of_no_jobs_and_of_a_program_or_cwd_not_here() {
    let dir = tempfile::tempdir().expect("tempdir");
    let check = |text: &str, strict: bool| {
        fs::write(dir.path().join("jobs.toml"), text).expect("jobs file");
        let mut command = tickd();
        command.args(["check", "jobs.toml"]).current_dir(dir.path());
        if strict {
            command.arg("--strict");
        }
        let out = command.output().expect("check");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, said) = check("[jobs]\n", false);
    assert_eq!(code, Some(0), "{said}");
    assert!(said.contains("warning: jobs.toml:1:1: no jobs"), "{said}");
    let missing = "[jobs.a]\nevery = \"1m\"\ncommand = [\"no-such-program-here\"]\n\
                   [jobs.b]\nevery = \"1m\"\ncommand = [\"true\"]\ncwd = \"/no/such/dir\"\n\
                   [jobs.c]\nevery = \"1m\"\ncommand = [\"true\"]\n";
    let (code, said) = check(missing, false);
    assert_eq!(code, Some(0), "{said}");
    assert!(
        said.contains(
            "jobs.toml:3:11: job \"a\", key \"command\": cannot find the program \"no-such-program-here\""
        ),
        "{said}"
    );
    assert!(
        said.contains(
            "jobs.toml:7:7: job \"b\", key \"cwd\": cwd /no/such/dir does not exist here"
        ),
        "{said}"
    );
    assert!(!said.contains("job \"c\""), "{said}");
    let (code, said) = check(missing, true);
    assert_eq!(code, Some(2), "{said}");
    assert!(said.contains("--strict"), "{said}");
}

/// A `user` this machine does not have: a warning to `check` (the file may be meant for another
/// machine), an error to `run` and to a reload (the job could never run as it says).
#[test]
fn a_missing_user_warns_in_check_and_fails_run_and_reload() {
    let job = "[jobs.a]\nevery = \"1m\"\ncommand = [\"true\"]\nuser = \"no-such-user-tickd\"\n";
    let dir = tempfile::tempdir().expect("tempdir");
    fs::write(dir.path().join("jobs.toml"), job).expect("jobs file");
    let run = |args: &[&str]| {
        let out = tickd()
            .args(args)
            .current_dir(dir.path())
            .output()
            .expect("tickd");
        let said = String::from_utf8_lossy(&out.stderr).into_owned();
        (out.status.code(), said)
    };
    let (code, said) = run(&["check", "jobs.toml"]);
    assert_eq!(code, Some(0), "{said}");
    assert!(
        said.contains("warning: jobs.toml:4:8: job \"a\", key \"user\": no such user \"no-such-user-tickd\" on this machine"),
        "{said}"
    );
    let (code, said) = run(&["check", "--strict", "jobs.toml"]);
    assert_eq!(code, Some(2), "{said}");
    let (code, said) = run(&["run", "jobs.toml"]);
    assert_eq!(code, Some(2), "{said}");
    assert!(
        said.contains("jobs.toml:4:8: job \"a\", key \"user\": no such user"),
        "{said}"
    );

    let d = Daemon::start("[jobs.b]\nevery = \"100ms\"\nhandler = \"log\"\n");
    d.wait_log("tick job=b");
    d.rewrite(job);
    d.signal(Signal::SIGHUP);
    let log = d.wait_log("reload rejected");
    assert!(log.contains("no such user \"no-such-user-tickd\""), "{log}");
}

/// `check --log-format json`: one object per line of stderr, problems and warnings alike, each
/// with its file, line, column, job, key, severity and message.
#[test]
fn check_gives_its_problems_as_json_lines() {
    let dir = tempfile::tempdir().expect("tempdir");
    let check = |text: &str| {
        fs::write(dir.path().join("jobs.toml"), text).expect("jobs file");
        let out = tickd()
            .args(["--log-format", "json", "check", "jobs.toml"])
            .current_dir(dir.path())
            .output()
            .expect("check");
        let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stderr)
            .lines()
            .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}")))
            .collect();
        (out.status.code(), lines)
    };
    let (code, lines) = check(
        "[jobs.a]\nevery = 5\nhandler = \"log\"\n[jobs.b]\ncron = \"x\"\nhandler = \"log\"\n",
    );
    assert_eq!(code, Some(2));
    assert_eq!(lines.len(), 2, "{lines:?}");
    let first = &lines[0];
    assert_eq!(first["file"], "jobs.toml");
    assert_eq!(first["line"], 2);
    assert_eq!(first["column"], 9);
    assert_eq!(first["job"], "a");
    assert_eq!(first["key"], "every");
    assert_eq!(first["severity"], "error");
    assert!(
        first["message"]
            .as_str()
            .is_some_and(|m| m.contains("invalid type")),
        "{first}"
    );
    assert_eq!(lines[1]["job"], "b");
    assert_eq!(lines[1]["line"], 5);

    let (code, lines) =
        check("[jobs.a]\nevery = \"1m\"\ncommand = [\"true\"]\ncwd = \"/no/such/dir\"\n");
    assert_eq!(code, Some(0));
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert_eq!(lines[0]["severity"], "warning");
    assert_eq!(lines[0]["key"], "cwd");
    assert_eq!(lines[0]["line"], 4);

    // A file that cannot be read has no line: null.
    let out = tickd()
        .args(["--log-format", "json", "check", "missing.toml"])
        .current_dir(dir.path())
        .output()
        .expect("check");
    assert_eq!(out.status.code(), Some(2));
    let line: serde_json::Value = serde_json::from_slice(&out.stderr).expect("one JSON object");
    assert_eq!(line["file"], "missing.toml");
    assert!(line["line"].is_null() && line["job"].is_null(), "{line}");
}

/// `tickd exec` ran a failing job once and never its hook: the daemon retries it and runs
/// `on_failure`, and a test of the job should see the same; `--no-retry` skips both.
#[test]
fn exec_runs_the_retries_and_the_failure_hook_unless_no_retry() {
    let dir = tempfile::tempdir().expect("tempdir");
    fs::write(
        dir.path().join("jobs.toml"),
        "[jobs.flaky]\nevery = \"1h\"\nshell = \"echo run >> attempts; exit 3\"\n\
         retry = { attempts = 2, backoff = \"10ms\" }\n\
         on_failure = [\"sh\", \"-c\", \"echo $TICKD_EXIT_CODE > hook\"]\n",
    )
    .expect("jobs file");
    let exec = |extra: &[&str]| {
        let out = tickd()
            .args(["exec", "flaky", "jobs.toml"])
            .args(extra)
            .current_dir(dir.path())
            .output()
            .expect("exec");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, said) = exec(&[]);
    assert_eq!(code, Some(3), "{said}");
    let attempts = fs::read_to_string(dir.path().join("attempts")).expect("attempts");
    assert_eq!(attempts.lines().count(), 3, "{said}");
    assert!(said.contains("retry 2 of 2"), "{said}");
    assert_eq!(
        fs::read_to_string(dir.path().join("hook")).expect("the hook ran"),
        "3\n"
    );

    fs::remove_file(dir.path().join("attempts")).expect("rm");
    fs::remove_file(dir.path().join("hook")).expect("rm");
    let (code, said) = exec(&["--no-retry"]);
    assert_eq!(code, Some(3), "{said}");
    let attempts = fs::read_to_string(dir.path().join("attempts")).expect("attempts");
    assert_eq!(attempts.lines().count(), 1, "{said}");
    assert!(!dir.path().join("hook").exists(), "{said}");
}

/// The quick start's file and the `.deb`'s default `/etc/tickd/jobs.toml`.
#[test]
fn the_shipped_jobs_files_are_valid() {
    for shipped in ["jobs.toml", "contrib/debian/jobs.toml"] {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(shipped);
        let out = tickd().arg("check").arg(&path).output().expect("check");
        assert_eq!(
            out.status.code(),
            Some(0),
            "{shipped}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
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
    let mut child = crate::support::tickd()
        .arg("check")
        .arg(&fifo)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("tickd check");
    let deadline = std::time::Instant::now() + crate::support::PATIENCE;
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
    assert!(stdout.contains("OK, 1 job\n"), "{stdout}");
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

/// `tickd next` on the file of a running daemon shows the daemon's grid (which started when the
/// daemon did), saying so; with nothing answering, it says so and computes offline.
#[test]
fn next_shows_the_running_daemons_grid_or_computes_offline() {
    let port = free_port();
    let config = format!(
        "[daemon]\nhttp = \"127.0.0.1:{port}\"\n[jobs.hourly]\nevery = \"1h\"\nhandler = \"log\"\n\
         [jobs.calendar]\ncron = \"0 0 1 1 *\"\nhandler = \"log\"\n"
    );
    let mut d = Daemon::start(&config);
    let (_, body) = crate::support::http(port, "GET", "/jobs", None);
    let jobs: Vec<serde_json::Value> = serde_json::from_str(&body).expect("jobs");
    let daemon_next = |name: &str| {
        let job = jobs.iter().find(|j| j["name"] == name).expect("job");
        chrono::DateTime::parse_from_rfc3339(job["next_fire"].as_str().expect("next_fire"))
            .expect("time")
    };
    let dir = d.path("");
    let next = |n: &str| {
        let out = tickd()
            .args(["next", "jobs.toml", "-n", n])
            .current_dir(&dir)
            .output()
            .expect("next");
        assert_eq!(out.status.code(), Some(0));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let said = next("2");
    let lines: Vec<&str> = said.lines().collect();
    assert_eq!(
        lines[0],
        format!("from the daemon running at 127.0.0.1:{port}: its next fires (GET /jobs)"),
        "{said}"
    );
    let shown = |line: &str| {
        chrono::DateTime::parse_from_rfc3339(line.split_whitespace().next().expect("time"))
            .expect("time")
    };
    // BTreeMap order: calendar, then hourly.
    assert_eq!(lines[1], "calendar (cron \"0 0 1 1 *\" (UTC)):", "{said}");
    assert_eq!(shown(lines[2]), daemon_next("calendar"), "{said}");
    assert_eq!(lines[4], "hourly (every 1h):", "{said}");
    let first = shown(lines[5]);
    assert_eq!(first, daemon_next("hourly"), "{said}");
    assert_eq!(
        shown(lines[6]) - first,
        chrono::Duration::hours(1),
        "{said}"
    );

    d.signal(Signal::SIGTERM);
    assert_eq!(d.wait_exit(), 0);
    let said = next("1");
    assert!(
        said.starts_with(&format!(
            "computed offline: no daemon is listening on 127.0.0.1:{port}"
        )),
        "{said}"
    );
    assert!(said.contains("hourly (every 1h):\n  20"), "{said}");
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

/// While the daemon drains (a stop waiting for a run in flight), `tickd status` says so above
/// the table.
#[test]
fn status_shows_a_banner_while_the_daemon_drains() {
    let port = free_port();
    let mut d = Daemon::start(&format!(
        "[daemon]\nhttp = \"127.0.0.1:{port}\"\nshutdown_timeout = \"60s\"\n\
         [jobs.long]\nevery = \"100ms\"\nshell = \"echo go > started; sleep 30\"\n"
    ));
    let _ = d.wait_file("started");
    let status = || {
        let out = tickd()
            .arg("status")
            .current_dir(d.dir.path())
            .output()
            .expect("status");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert!(!status().contains("not healthy"), "{}", status());
    d.signal(Signal::SIGTERM);
    d.wait_log("stopping: waiting for 1 run");
    let table = status();
    assert!(
        table.starts_with("*** not healthy: draining ***\nJOB "),
        "{table}"
    );
    // A second stop request stops the run.
    d.signal(Signal::SIGTERM);
    let _ = d.wait_exit();
}

#[test]
fn the_cli_says_in_words_that_no_daemon_is_listening() {
    let port = free_port();
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(
        dir.path().join("jobs.toml"),
        format!(
            "[daemon]\nhttp = \"localhost:{port}\"\n[jobs.a]\nevery = \"1h\"\nhandler = \"log\"\n"
        ),
    )
    .expect("jobs file");
    for args in [&["status"][..], &["run-now", "a"], &["pause", "a"]] {
        let out = tickd()
            .args(args)
            .current_dir(dir.path())
            .output()
            .expect("cli");
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        let said = String::from_utf8_lossy(&out.stderr);
        assert!(
            said.contains(&format!(
                "no daemon is listening on 127.0.0.1:{port} (connection refused)"
            )) && said.contains("is `[daemon] http` set and tickd running?"),
            "{args:?}: {said}"
        );
    }
}

/// What `tickd status` (in `dir`) prints with its stdout on a pseudo-terminal, a terminal as
/// far as the program can tell, with `TERM` set as a terminal emulator sets it, plus `env`.
fn status_on_a_terminal(dir: &Path, env: Option<(&str, &str)>) -> String {
    use std::io::Read;
    let pty = nix::pty::openpty(None, None).expect("openpty");
    let mut command = tickd();
    command
        .arg("status")
        .current_dir(dir)
        .env("TERM", "xterm-256color")
        .env_remove("NO_COLOR")
        .env_remove("CLICOLOR")
        .env_remove("CLICOLOR_FORCE")
        .stdin(Stdio::null())
        .stdout(std::fs::File::from(pty.slave));
    if let Some((key, value)) = env {
        command.env(key, value);
    }
    let mut child = command.spawn().expect("tickd status");
    // The command holds the parent's copy of the terminal's end: dropped, the master reads
    // end (EIO) once the child has exited.
    drop(command);
    let mut master = std::fs::File::from(pty.master);
    let mut printed = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match master.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => printed.extend_from_slice(&buf[..n]),
            Err(err) if err.raw_os_error() == Some(libc::EIO) => break,
            Err(err) => panic!("reading the terminal: {err}"),
        }
    }
    assert!(child.wait().expect("wait").success(), "tickd status failed");
    String::from_utf8_lossy(&printed).into_owned()
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
        table.lines().all(|line| line.chars().count() <= 80),
        "{table}"
    );
    // `hello` fires hourly: its next fire is relative.
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("hello ") && l.contains(" in 59m ")),
        "{table}"
    );
    assert!(
        table.contains("\nhello ") && table.contains("\ntick "),
        "{table}"
    );
    // Colours on a terminal only: never on a pipe, unless forced (CLICOLOR_FORCE, as anstream
    // reads it), and then `tick`'s success is green.
    assert!(!table.contains('\x1b'), "{table:?}");
    crate::support::eventually("a green success", || {
        let forced = tickd()
            .arg("status")
            .env("CLICOLOR_FORCE", "1")
            .current_dir(d.dir.path())
            .output()
            .expect("status");
        String::from_utf8_lossy(&forced.stdout).contains("\x1b[32msuccess\x1b[0m")
    });
    // On a real terminal (a pty, as a user runs it), coloured without being forced; under
    // NO_COLOR, on the same terminal, not.
    crate::support::eventually("a green success on a terminal", || {
        status_on_a_terminal(d.dir.path(), None).contains("\x1b[32msuccess\x1b[0m")
    });
    let plain = status_on_a_terminal(d.dir.path(), Some(("NO_COLOR", "1")));
    assert!(
        plain.contains("JOB") && plain.contains("success") && !plain.contains('\x1b'),
        "{plain:?}"
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
    let out = cli(&["run-now", "nope"]);
    assert_eq!(out.status.code(), Some(1));
    // The endpoint's reason in words, not its JSON.
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        said.contains("no job named \"nope\"") && !said.contains('{'),
        "{said}"
    );
    // pause and resume, which the status shows.
    let out = cli(&["pause", "tick"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "tick: paused\n");
    let table = String::from_utf8_lossy(&cli(&["status"]).stdout).into_owned();
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("tick ") && l.contains("paused")),
        "{table}"
    );
    let out = cli(&["resume", "tick"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "tick: resumed\n");
    assert_eq!(cli(&["pause", "nope"]).status.code(), Some(1));
    // exec: no daemon involved; the job's output here, its exit code ours.
    let out = cli(&["exec", "hello"]);
    assert_eq!(out.status.code(), Some(7));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "from-exec\n");
    d.signal(Signal::SIGTERM);
    assert_eq!(d.wait_exit(), 0);
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
    let out = crate::support::tickd()
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
