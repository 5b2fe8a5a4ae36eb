//! The run history: `GET /jobs/{name}/runs`, `tickd history` and `tickd logs [-f]` on the real
//! binary.

use std::process::Stdio;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use crate::support::{eventually, free_port, http, tickd, Daemon};

#[test]
fn a_failed_run_shows_in_runs_history_and_logs_with_its_exit_code_and_output() {
    let port = free_port();
    let token = Some("s3cret");
    let d = Daemon::start(&format!(
        r#"
[daemon]
http = "127.0.0.1:{port}"
http_token = "s3cret"
history = 3

[jobs.fails]
every = "1h"
run_on_start = true
shell = "echo out-$TICKD_RUN_ID; echo to-stderr >&2; exit 3"

[jobs.quiet]
every = "1h"
run_on_start = true
log = "none"
shell = "echo quiet-output"

[jobs.later]
every = "1h"
shell = "echo later-output-$TICKD_RUN_ID"
"#
    ));
    d.wait_log("HTTP endpoint listening");
    let runs = |name: &str| http(port, "GET", &format!("/jobs/{name}/runs"), token);
    eventually("the run on start ends", || {
        runs("fails").1.contains("run_id")
    });
    assert_eq!(http(port, "GET", "/jobs/fails/runs", None).0, 401);
    assert_eq!(runs("nope").0, 404);
    let (code, body) = runs("fails");
    assert_eq!(code, 200);
    let list: serde_json::Value = serde_json::from_str(&body).expect("json");
    let run = &list[0];
    assert_eq!(list.as_array().map(Vec::len), Some(1), "{body}");
    assert_eq!(run["exit_code"], 3, "{body}");
    assert_eq!(run["outcome"], "failure", "{body}");
    assert_eq!(run["reason"], "exited with code 3", "{body}");
    let run_id = run["run_id"].as_u64().expect("run id");
    assert_eq!(
        run["output"].as_str(),
        Some(format!("out-{run_id}\nto-stderr\n").as_str()),
        "{body}"
    );
    assert!(
        run["scheduled"].is_string() && run["lateness_ms"].is_number(),
        "{body}"
    );

    let cli = |args: &[&str]| {
        tickd()
            .args(args)
            .current_dir(d.dir.path())
            .output()
            .expect("cli")
    };
    let out = cli(&["history", "fails"]);
    let table = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(table.starts_with("   RUN START"), "{table}");
    assert!(table.contains(" failure "), "{table}");
    assert!(table.contains("     3 exited with code 3\n"), "{table}");
    assert!(
        table.lines().all(|line| line.chars().count() <= 80),
        "{table}"
    );
    let out = cli(&["logs", "fails"]);
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        format!("out-{run_id}\nto-stderr\n")
    );
    for command in ["history", "logs"] {
        let out = cli(&[command, "nope"]);
        assert_eq!(out.status.code(), Some(1), "{command}: as run-now does");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains("no job named \"nope\""),
            "{command}: {stderr}"
        );
    }

    // `logs -f` prints the next run's output, not the last one's: runs are asked for until one
    // ends after it started waiting.
    let follow = tickd()
        .args(["logs", "-f", "later"])
        .current_dir(d.dir.path())
        .stdout(Stdio::piped())
        .spawn()
        .expect("logs -f");
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut follow = Some(follow);
    let mut status = None;
    while status.is_none() && Instant::now() < deadline {
        http(port, "POST", "/jobs/later/run", token);
        std::thread::sleep(Duration::from_millis(700));
        status = follow.as_mut().and_then(|f| f.try_wait().expect("wait"));
    }
    let out = follow
        .take()
        .expect("child")
        .wait_with_output()
        .expect("output");
    assert_eq!(out.status.code(), Some(0));
    let printed = String::from_utf8_lossy(&out.stdout);
    assert!(
        printed.starts_with("later-output-") && printed.lines().count() == 1,
        "{printed}"
    );
    d.signal(Signal::SIGTERM);
}
