//! `/metrics` as Prometheus tools read it (issue 18): the real `tickd` with a job of every kind
//! and a cluster, so that every family has samples; each format checked by promtool, and the
//! Grafana dashboard's expressions checked against the series it exports and parsed by promtool.
//!
//! promtool (Debian package `prometheus`) is installed by `scripts/install-promtool.sh` when
//! missing and we are root; otherwise a missing promtool fails the test, saying how to install
//! it: these tests never skip silently.
//!
//! `promtool check metrics` (2.42) reads only the classic text format: on OpenMetrics it reports
//! every counter as having "no help text", since an OpenMetrics counter family is named without
//! `_total`. So the OpenMetrics answer is parsed by promtool's OpenMetrics parser instead, the
//! one behind `promtool tsdb create-blocks-from openmetrics` (strict: `# EOF` last, metadata
//! before samples, label and value syntax). That command backfills, so it needs a timestamp on
//! every sample: the test appends one. What that parser does not check (each sample's name
//! is its family's plus a suffix its type allows) the test checks itself.

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::postgres::Postgres;
use crate::support::{eventually, free_port, http, sample, Daemon};

/// The dashboard shipped in contrib/.
const DASHBOARD: &str = "contrib/grafana/tickd.json";

/// The `promtool` binary, installed first by `scripts/install-promtool.sh` when it is missing
/// and we are root; panics, saying how to install it, when there is still none.
fn promtool() -> PathBuf {
    static INSTALLED: std::sync::OnceLock<()> = std::sync::OnceLock::new();
    if which::which("promtool").is_err() && nix::unistd::Uid::effective().is_root() {
        INSTALLED.get_or_init(|| {
            let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/install-promtool.sh");
            match Command::new("bash").arg(&script).status() {
                Ok(status) if status.success() => {}
                other => eprintln!("{} failed: {other:?}", script.display()),
            }
        });
    }
    match which::which("promtool") {
        Ok(path) => path,
        Err(_) if std::env::var("CI").is_ok_and(|v| v == "true") => panic!(
            "CI=true but no promtool on PATH: the metrics tests need it; \
             scripts/install-promtool.sh installs the Debian prometheus package (as root)"
        ),
        Err(_) => panic!(
            "no promtool on PATH, which the metrics tests need: install it (apt-get install \
             prometheus, or as root scripts/install-promtool.sh)"
        ),
    }
}

/// Runs `promtool args...` with `input` on stdin: (exit code, stdout and stderr).
fn run_promtool(args: &[&str], input: &str, dir: &Path) -> (i32, String) {
    let mut child = Command::new(promtool())
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start promtool");
    let mut stdin = child.stdin.take().expect("stdin");
    stdin
        .write_all(input.as_bytes())
        .expect("write to promtool");
    drop(stdin);
    let out = child.wait_with_output().expect("promtool");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

/// `GET /metrics` with `accept` (no header for `None`): (status, Content-Type, body).
fn scrape(port: u16, accept: Option<&str>) -> (u16, String, String) {
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
    let accept = accept.map_or(String::new(), |a| format!("Accept: {a}\r\n"));
    write!(
        stream,
        "GET /metrics HTTP/1.1\r\nHost: localhost\r\n{accept}Connection: close\r\n\r\n"
    )
    .expect("send");
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("read");
    let (head, body) = response.split_once("\r\n\r\n").expect("a head");
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let content_type = head
        .lines()
        .find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.eq_ignore_ascii_case("content-type")
                .then(|| value.trim().to_owned())
        })
        .unwrap_or_default();
    (status, content_type, body.to_owned())
}

/// A node of a one-node cluster with a job of each kind, and enough runs that every family of
/// its `/metrics` has samples: in-process and child runs, failures, a retry, a timeout, skipped
/// fires, a dropped retry, a refused run-now, an applied reload, the cluster's series.
fn busy_daemon() -> (Postgres, Daemon, u16) {
    let postgres = Postgres::start();
    let port = free_port();
    let config = format!(
        r#"
[daemon]
http = "127.0.0.1:{port}"

[cluster]
postgres = "{postgres}"
node = "only"
name = "metrics"

[jobs.cluster_tick]
every = "1s"
handler = "log"

[jobs.inproc]
every = "100ms"
handler = "log"
scope = "node"

[jobs.child]
every = "200ms"
shell = "true"
scope = "node"

[jobs.failing]
every = "300ms"
shell = "exit 3"
retry = {{ attempts = 1, backoff = "50ms" }}
scope = "node"

[jobs.dropping]
every = "200ms"
shell = "exit 1"
retry = {{ attempts = 1, backoff = "1s" }}
scope = "node"

[jobs.overlapping]
every = "100ms"
shell = "sleep 0.35"
scope = "node"

[jobs.timing_out]
every = "400ms"
shell = "sleep 5"
timeout = "100ms"
scope = "node"

[jobs.slow]
every = "1h"
run_on_start = true
shell = "sleep 30"
scope = "node"
"#,
        postgres = postgres.url()
    );
    let d = Daemon::start(&config);
    d.wait_log("HTTP endpoint listening");
    assert_eq!(http(port, "POST", "/jobs/slow/run", None).0, 409);
    d.rewrite(&format!("{config}\n# reloaded\n"));
    d.signal(nix::sys::signal::Signal::SIGHUP);
    d.wait_log("configuration reloaded");
    let has = |text: &str, series: &str| sample(text, series) > 0.0;
    eventually(
        "every outcome and the cluster's series have samples",
        || {
            let text = scrape(port, None).2;
            [
                "tickd_runs_total{job_name=\"inproc\",outcome=\"success\"}",
                "tickd_runs_total{job_name=\"child\",outcome=\"success\"}",
                "tickd_runs_total{job_name=\"cluster_tick\",outcome=\"success\"}",
                "tickd_runs_total{job_name=\"failing\",outcome=\"failure\"}",
                "tickd_runs_total{job_name=\"dropping\",outcome=\"retry_dropped\"}",
                "tickd_runs_total{job_name=\"overlapping\",outcome=\"skipped_overlap\"}",
                "tickd_runs_total{job_name=\"timing_out\",outcome=\"timeout\"}",
                "tickd_runs_total{job_name=\"slow\",outcome=\"refused\"}",
                "tickd_config_reloads_total{result=\"applied\"}",
                "tickd_cluster_owner ",
                "tickd_cluster_renewal_seconds ",
            ]
            .iter()
            .all(|series| has(&text, series))
        },
    );
    (postgres, d, port)
}

/// The classic format's families (`# TYPE` names), for the check of the dashboard.
fn families(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split(' ').next())
        .map(str::to_owned)
        .collect()
}

/// Checks what promtool's OpenMetrics parser leaves to the exposer: each family has HELP and
/// TYPE before its samples, each sample's name is its family's plus a suffix its type allows,
/// and `# EOF` ends the text.
fn check_openmetrics_structure(text: &str) {
    assert!(text.ends_with("# EOF\n"), "no # EOF at the end:\n{text}");
    let mut family: Option<(String, String)> = None;
    let mut help: Option<String> = None;
    for line in text.lines().filter(|l| *l != "# EOF") {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            help = rest.split(' ').next().map(str::to_owned);
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').expect("TYPE name kind");
            assert_eq!(help.as_deref(), Some(name), "HELP before {line}");
            assert!(
                !name.ends_with("_total"),
                "{line}: OpenMetrics names it without _total"
            );
            family = Some((name.to_owned(), kind.to_owned()));
        } else {
            assert!(!line.starts_with('#'), "an unexpected comment: {line}");
            let (name, kind) = family.as_ref().expect("TYPE before the first sample");
            let sample = line.split(['{', ' ']).next().unwrap_or("");
            let suffix = sample.strip_prefix(name.as_str());
            let allowed: &[&str] = match kind.as_str() {
                "counter" => &["_total", "_created"],
                "histogram" => &["_bucket", "_sum", "_count", "_created"],
                "info" => &["_info"],
                "gauge" | "stateset" | "unknown" => &[""],
                other => panic!("a type tickd does not export: {other}"),
            };
            assert!(
                suffix.is_some_and(|s| allowed.contains(&s)),
                "{sample} is not a sample of {kind} {name}"
            );
        }
    }
}

#[test]
fn metrics_are_promtool_clean_in_both_formats() {
    let (_postgres, d, port) = busy_daemon();
    let dir = tempfile::tempdir().expect("tempdir");

    // The classic text format unless OpenMetrics is asked for: promtool lints it clean (exit 0,
    // not a word: no "no help text", no naming warnings).
    for accept in [None, Some("*/*"), Some("text/plain;version=0.0.4")] {
        let (status, content_type, text) = scrape(port, accept);
        assert_eq!(status, 200, "{accept:?}");
        assert_eq!(
            content_type, "text/plain; version=0.0.4; charset=utf-8",
            "{accept:?}"
        );
        assert!(!text.contains("# EOF"), "{text}");
        assert!(text.contains("# TYPE tickd_runs_total counter\n"), "{text}");
        let (code, said) = run_promtool(&["check", "metrics"], &text, dir.path());
        assert_eq!(
            (code, said.trim()),
            (0, ""),
            "promtool on {accept:?}:\n{text}"
        );
    }

    // OpenMetrics when asked for, as Prometheus asks.
    let prometheus_accept = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
    for accept in ["application/openmetrics-text", prometheus_accept] {
        let (status, content_type, text) = scrape(port, Some(accept));
        assert_eq!(status, 200);
        assert_eq!(
            content_type,
            "application/openmetrics-text; version=1.0.0; charset=utf-8"
        );
        assert!(text.contains("# TYPE tickd_runs counter\n"), "{text}");
        check_openmetrics_structure(&text);
        // promtool's OpenMetrics parser, through a backfill that needs a timestamp per sample.
        let stamped: String = text
            .lines()
            .map(|l| {
                if l.starts_with('#') {
                    format!("{l}\n")
                } else {
                    format!("{l} 1700000000\n")
                }
            })
            .collect();
        std::fs::write(dir.path().join("openmetrics.txt"), &stamped).expect("write");
        let blocks = dir.path().join("blocks");
        let _ = std::fs::remove_dir_all(&blocks);
        let (code, said) = run_promtool(
            &[
                "tsdb",
                "create-blocks-from",
                "openmetrics",
                "openmetrics.txt",
                "blocks",
            ],
            "",
            dir.path(),
        );
        assert_eq!(code, 0, "promtool's OpenMetrics parser: {said}\n{stamped}");
        // And the parser is strict: the same text without `# EOF` is refused.
        std::fs::write(
            dir.path().join("openmetrics.txt"),
            stamped.replace("# EOF\n", ""),
        )
        .expect("write");
        let _ = std::fs::remove_dir_all(&blocks);
        let (code, said) = run_promtool(
            &[
                "tsdb",
                "create-blocks-from",
                "openmetrics",
                "openmetrics.txt",
                "blocks",
            ],
            "",
            dir.path(),
        );
        assert_ne!(code, 0, "{said}");
        assert!(said.contains("EOF"), "{said}");
    }

    // A refused run-now is its own outcome, in /jobs too, and not a skipped fire.
    let (_, body) = http(port, "GET", "/jobs/slow", None);
    let slow: serde_json::Value = serde_json::from_str(&body).expect("json");
    assert_eq!(slow["runs"]["refused"], 1, "{body}");
    assert_eq!(slow["runs"]["skipped_overlap"], 0, "{body}");
    let text = scrape(port, None).2;
    assert_eq!(
        sample(
            &text,
            "tickd_runs_total{job_name=\"slow\",outcome=\"skipped_overlap\"}"
        ),
        0.0
    );
    d.signal(nix::sys::signal::Signal::SIGTERM);
}

/// Every expression of the Grafana dashboard, its variables replaced by values Grafana could
/// give them.
fn dashboard_exprs() -> Vec<String> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(DASHBOARD);
    let text = std::fs::read_to_string(&path).expect("the dashboard");
    let dashboard: serde_json::Value = serde_json::from_str(&text).expect("the dashboard is JSON");
    let mut exprs = Vec::new();
    fn walk(value: &serde_json::Value, exprs: &mut Vec<String>) {
        match value {
            serde_json::Value::Object(map) => {
                for (key, value) in map {
                    match (key.as_str(), value) {
                        ("expr", serde_json::Value::String(expr)) => exprs.push(expr.clone()),
                        _ => walk(value, exprs),
                    }
                }
            }
            serde_json::Value::Array(items) => items.iter().for_each(|v| walk(v, exprs)),
            _ => {}
        }
    }
    walk(&dashboard, &mut exprs);
    // The variables, as Grafana expands them ("All" is the allValue `.*`).
    let variables = dashboard["templating"]["list"]
        .as_array()
        .expect("templating")
        .iter()
        .filter_map(|v| v["name"].as_str())
        .collect::<Vec<_>>();
    for wanted in ["DS_PROMETHEUS", "job_name", "instance"] {
        assert!(variables.contains(&wanted), "no ${wanted} variable");
    }
    exprs
        .iter()
        .map(|e| {
            e.replace("$__rate_interval", "1m")
                .replace("$job_name", ".*")
                .replace("$instance", ".*")
        })
        .collect()
}

#[test]
fn the_grafana_dashboard_names_only_exported_series_and_every_expression_parses() {
    let exprs = dashboard_exprs();
    assert!(exprs.len() >= 20, "{exprs:?}");
    assert!(
        exprs.iter().all(|e| !e.contains('$')),
        "a variable the test does not know: {exprs:?}"
    );

    // (b) Each parses: promtool checks a rules file with each expression as a recording rule.
    let dir = tempfile::tempdir().expect("tempdir");
    let mut rules = String::from("groups:\n  - name: dashboard\n    rules:\n");
    for (i, expr) in exprs.iter().enumerate() {
        rules.push_str(&format!(
            "      - record: tickd:dashboard:{i}\n        expr: {}\n",
            serde_json::to_string(expr).expect("a JSON string is a YAML string")
        ));
    }
    std::fs::write(dir.path().join("rules.yml"), &rules).expect("write");
    let (code, said) = run_promtool(&["check", "rules", "rules.yml"], "", dir.path());
    assert_eq!(code, 0, "{said}\n{rules}");
    assert!(
        said.contains(&format!("SUCCESS: {} rules found", exprs.len())),
        "{said}"
    );

    // (a) Every series it names is one a running tickd exports (with a cluster, so that those
    // are there too), and every family tickd exports is on the dashboard.
    let (_postgres, d, port) = busy_daemon();
    let text = scrape(port, None).2;
    let exported = families(&text);
    let mut named = BTreeSet::new();
    for expr in &exprs {
        let mut rest = expr.as_str();
        while let Some(at) = rest.find("tickd_") {
            let name: String = rest[at..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            rest = &rest[at + name.len()..];
            // A histogram's samples are its family's name plus a suffix.
            let family = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| name.strip_suffix(s).filter(|f| exported.contains(*f)))
                .unwrap_or(&name)
                .to_owned();
            assert!(
                exported.contains(&family),
                "{name} (in {expr}) is not exported:\n{text}"
            );
            named.insert(family);
        }
    }
    let unshown: Vec<_> = exported.difference(&named).collect();
    assert!(unshown.is_empty(), "not on the dashboard: {unshown:?}");
    d.signal(nix::sys::signal::Signal::SIGTERM);
}

/// `[daemon] job_metrics = false`: at tens of thousands of jobs the per-job series made
/// `/metrics` hundreds of megabytes (223 MB at 100,000 jobs). Without them, every job counts
/// into one series per metric, labelled `job_name=""` (stored by Prometheus as no label), and
/// the answer stays promtool-clean.
#[test]
fn without_job_metrics_the_jobs_count_into_totals_only() {
    let port = free_port();
    let d = Daemon::start(&format!(
        r#"
[daemon]
http = "127.0.0.1:{port}"
job_metrics = false

[jobs.a]
every = "100ms"
handler = "log"
log = "none"

[jobs.b]
every = "100ms"
handler = "log"
log = "none"

[jobs.c]
every = "100ms"
shell = "exit 1"
log = "none"
"#
    ));
    d.wait_log("HTTP endpoint listening");
    let total = "tickd_runs_total{job_name=\"\",outcome=\"success\"}";
    eventually("both handlers' runs are counted in the total", || {
        sample(&scrape(port, None).2, total) >= 6.0
    });
    let text = scrape(port, None).2;
    for job in ["a", "b", "c"] {
        assert!(
            !text.contains(&format!("job_name=\"{job}\"")),
            "a series of job {job}:\n{text}"
        );
    }
    assert!(
        sample(&text, "tickd_runs_total{job_name=\"\",outcome=\"failure\"}") >= 1.0,
        "{text}"
    );
    assert!(
        text.contains("tickd_fire_lateness_seconds_count{job_name=\"\"}"),
        "{text}"
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let (code, said) = run_promtool(&["check", "metrics"], &text, dir.path());
    assert_eq!((code, said.trim()), (0, ""), "promtool:\n{text}");
}
