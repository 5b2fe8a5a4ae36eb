//! TLS to the cluster's database (`sslmode`, `sslrootcert` in `[cluster] postgres`): one real
//! `tickd` at a time against a throw-away PostgreSQL that lets TCP in only over TLS
//! ([`Postgres::start_with_tls`]), with a certificate for `localhost` from a CA of its own.

use std::fs;
use std::path::Path;
use std::thread;
use std::time::{Duration, Instant};

use crate::cluster::{get_ok, jobs_file, last_lines, serial, with_endpoint};
use crate::postgres::{Postgres, TestCa};
use crate::support::{free_port, http, Daemon, PATIENCE};

/// One node of a cluster of its own (`name = cluster`) on `url`, with its endpoint on a free
/// port; every run appends a line to `runs`. Returns once it is scheduling, and its port.
fn node(url: &str, node: &str, cluster: &str, runs: &Path) -> (Daemon, u16) {
    let port = free_port();
    let config = with_endpoint(&jobs_file(url, node, runs), port)
        .replace("name = \"test\"", &format!("name = \"{cluster}\""));
    let daemon = Daemon::launch(&config, |command, log| {
        command
            .args(["run", "jobs.toml"])
            .stderr(fs::File::create(log).expect("log file"));
    });
    daemon.wait_log("scheduler started");
    (daemon, port)
}

/// The URL of `pg` by host name (so `verify-full` checks the name `localhost`), with `params`.
fn url_of(pg: &Postgres, params: &str) -> String {
    format!(
        "postgres://postgres@localhost:{}/postgres?{params}",
        pg.port()
    )
}

/// For failure messages: the end of the node's log and of the server's.
fn diagnostics(daemon: &Daemon, pg: &Postgres) -> String {
    format!(
        "--- tickd's log, end:\n{}--- PostgreSQL's log, end:\n{}",
        last_lines(&daemon.log(), 40),
        last_lines(&pg.server_log(), 20)
    )
}

/// Waits until the node on `port` owns its cluster and has fired a cluster job, then checks
/// that its connection (application name `tickd NODE`) is TLS by the server's own account.
fn assert_owns_and_fires_over_tls(
    daemon: &Daemon,
    port: u16,
    node: &str,
    pg: &Postgres,
    runs: &Path,
) {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let status: serde_json::Value =
            serde_json::from_str(&get_ok(port, "/cluster")).expect("JSON");
        let fired = fs::read_to_string(runs)
            .unwrap_or_default()
            .lines()
            .any(|line| line.split_whitespace().nth(2) == Some(node));
        if status["owner"] == true && status["connected"] == true && fired {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{node} did not own and fire in {PATIENCE:?}: /cluster {status}\n{}",
            diagnostics(daemon, pg)
        );
        thread::sleep(Duration::from_millis(50));
    }
    let ssl = pg.psql(&format!(
        "SELECT ssl FROM pg_stat_ssl JOIN pg_stat_activity USING (pid) \
         WHERE application_name = 'tickd {node}'"
    ));
    assert_eq!(ssl, "t", "pg_stat_ssl of {node}'s connection");
    let (code, body) = http(port, "GET", "/healthz", None);
    assert_eq!(code, 200, "{body}");
}

/// Waits until the node logs that it cannot reach the database with `why` in the message, then
/// checks that it still does not own, is not connected, is unhealthy, and fired nothing.
fn assert_never_connects(daemon: &Daemon, port: u16, why: &str, pg: &Postgres, runs: &Path) {
    let log = daemon.wait_log("cluster: cannot reach the database");
    let line = log
        .lines()
        .find(|line| line.contains("cluster: cannot reach the database"))
        .unwrap_or_default();
    assert!(
        line.contains(why),
        "want {why:?} in {line}\n{}",
        diagnostics(daemon, pg)
    );
    // Past a window and a takeover's wait: it would own by now if it could connect.
    thread::sleep(Duration::from_secs(2));
    let status: serde_json::Value = serde_json::from_str(&get_ok(port, "/cluster")).expect("JSON");
    assert_eq!(status["connected"], false, "{status}");
    assert_eq!(status["owner"], false, "{status}");
    let (code, body) = http(port, "GET", "/healthz", None);
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("cluster database unreachable"), "{body}");
    assert!(
        fs::read_to_string(runs).unwrap_or_default().is_empty(),
        "a node that never connected fired\n{}",
        diagnostics(daemon, pg)
    );
}

#[test]
fn verify_full_with_the_servers_ca_owns_and_fires_over_tls() {
    let _serial = serial();
    let pg = Postgres::start_with_tls();
    let shared = tempfile::tempdir().expect("tempdir");
    let runs = shared.path().join("runs.txt");
    let url = url_of(
        &pg,
        &format!("sslmode=verify-full&sslrootcert={}", pg.ca_file().display()),
    );
    let (daemon, port) = node(&url, "n1", "full", &runs);
    assert_owns_and_fires_over_tls(&daemon, port, "n1", &pg, &runs);
}

#[test]
fn require_without_a_root_cert_connects_over_tls() {
    let _serial = serial();
    let pg = Postgres::start_with_tls();
    let shared = tempfile::tempdir().expect("tempdir");
    let runs = shared.path().join("runs.txt");
    // The key=value form, for once.
    let url = format!(
        "host=localhost port={} user=postgres dbname=postgres sslmode=require",
        pg.port()
    );
    let (daemon, port) = node(&url, "n1", "require", &runs);
    assert_owns_and_fires_over_tls(&daemon, port, "n1", &pg, &runs);
}

#[test]
fn verify_full_with_another_ca_and_plain_never_connect() {
    let _serial = serial();
    let pg = Postgres::start_with_tls();
    let shared = tempfile::tempdir().expect("tempdir");
    let other = shared.path().join("other-ca.pem");
    fs::write(&other, TestCa::new("another CA").pem()).expect("write the other CA");

    let runs = shared.path().join("wrong-ca.txt");
    let url = url_of(
        &pg,
        &format!("sslmode=verify-full&sslrootcert={}", other.display()),
    );
    let (daemon, port) = node(&url, "n1", "wrong-ca", &runs);
    assert_never_connects(&daemon, port, "invalid peer certificate", &pg, &runs);
    drop(daemon);

    // The server lets no plain TCP in: what connects in the other tests is TLS.
    let runs = shared.path().join("plain.txt");
    let (daemon, port) = node(&url_of(&pg, "sslmode=disable"), "n2", "plain", &runs);
    assert_never_connects(&daemon, port, "no pg_hba.conf entry", &pg, &runs);
}

#[test]
fn an_unreadable_sslrootcert_stops_the_start_with_the_file_line_and_path() {
    let shared = tempfile::tempdir().expect("tempdir");
    let missing = shared.path().join("missing-ca.pem");
    let config = jobs_file(
        &format!(
            "postgres://postgres:s3cret@localhost/postgres?sslmode=verify-full&sslrootcert={}",
            missing.display()
        ),
        "n1",
        &shared.path().join("runs.txt"),
    );
    let mut daemon = Daemon::launch(&config, |command, log| {
        command
            .args(["run", "jobs.toml"])
            .stderr(fs::File::create(log).expect("log file"));
    });
    assert_eq!(daemon.wait_exit(), 2, "{}", daemon.log());
    let log = daemon.log();
    assert!(log.contains("jobs.toml:3:"), "{log}");
    assert!(log.contains("key \"cluster.postgres\""), "{log}");
    assert!(
        log.contains(&format!("cannot read sslrootcert {}", missing.display())),
        "{log}"
    );
    assert!(!log.contains("s3cret"), "{log}");
}
