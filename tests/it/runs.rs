//! Runs beyond a child's exit code: HTTP jobs and how their status is judged, the identity every
//! run is given, `on_failure` hooks, and a run that outlasts its job's fires.

use nix::sys::signal::Signal;

use crate::support::{http_server, Daemon};

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
    let failed = log
        .lines()
        .find(|l| l.contains("run finished") && l.contains("job=broken"))
        .unwrap_or_else(|| panic!("no failed run of broken:\n{log}"));
    assert!(failed.contains("outcome=failure"), "{failed}");
    // An HTTP job has a status, not an exit code, and a failure shows the body's start.
    assert!(failed.contains("status=500"), "{failed}");
    assert!(
        failed.contains("Fatal error: the database is down"),
        "{failed}"
    );
    let log = d.wait_log("status=200");
    let ok = log
        .lines()
        .find(|l| l.contains("status=200"))
        .unwrap_or_else(|| panic!("{log}"));
    assert!(ok.contains("job=cron-php"), "{ok}");
    assert!(!log.contains("exit_code="), "{log}");
    d.signal(Signal::SIGTERM);
    assert_eq!(d.wait_exit(), 0);
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
        .recv_timeout(crate::support::PATIENCE)
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
    d.wait_log("stopping: waiting for");
    d.signal(Signal::SIGINT);
    assert_eq!(d.wait_exit(), 3, "{}", d.log());
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
