//! The HTTP endpoint: metrics, `/jobs` and control, its token, a taken address, and slow clients
//! that must not take the descriptors runs and `/healthz` need.

use std::fs;
use std::time::Duration;

use nix::sys::signal::Signal;

use crate::support::{eventually, free_port, http, sample, tickd, Daemon};

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
    let series = "tickd_runs_total{job_name=\"fast\",outcome=\"success\"}";
    let before = sample(&first, series);
    assert!(before >= 1.0, "{first}");
    assert!(
        first.contains("tickd_fire_lateness_seconds_bucket{le=\"0.00001\",job_name=\"fast\"}"),
        "{first}"
    );
    assert!(first.contains("tickd_runs_in_flight "), "{first}");
    assert!(
        first.contains("tickd_last_success_timestamp_seconds{job_name=\"fast\"}"),
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
    // Counted as refused (asked for, not scheduled), not as a skipped fire.
    let (_, body) = http(port, "GET", "/jobs/slow", None);
    let slow: serde_json::Value = serde_json::from_str(&body).expect("json");
    assert_eq!(
        (&slow["runs"]["refused"], &slow["runs"]["skipped_overlap"]),
        (&serde_json::json!(1), &serde_json::json!(0)),
        "{body}"
    );
    let metrics = http(port, "GET", "/metrics", None).1;
    assert_eq!(
        sample(
            &metrics,
            "tickd_runs_total{job_name=\"slow\",outcome=\"refused\"}"
        ),
        1.0,
        "{metrics}"
    );
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
    assert!(!metrics.contains("job_name=\"fast\""), "{metrics}");
    assert!(
        metrics.contains("tickd_runs_total{job_name=\"renamed\",outcome=\"success\"}"),
        "{metrics}"
    );
    assert!(
        metrics.contains("tickd_fire_lateness_seconds_count{job_name=\"slow\"} 1"),
        "{metrics}"
    );

    // While draining, /healthz says so.
    d.signal(Signal::SIGTERM);
    d.wait_log("stopping: waiting for");
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
    assert_eq!(http(port, "GET", "/cluster", None).0, 401);
    assert_eq!(http(port, "GET", "/metrics", Some(token)).0, 200);
    // Not in a cluster: no such thing to show.
    let (code, body) = http(port, "GET", "/cluster", Some(token));
    assert_eq!(
        (code, body.as_str()),
        (404, "not in a cluster: the jobs file has no [cluster]\n")
    );
    d.signal(Signal::SIGTERM);
    assert_eq!(d.wait_exit(), 0);
    assert!(!d.log().contains(token));
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

    use crate::support::{eventually, PATIENCE};

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
