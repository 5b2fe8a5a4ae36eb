//! The commands that talk to a running daemon through its HTTP endpoint: `tickd status` (a
//! table, or the endpoint's JSON), `tickd run-now`, `tickd pause` and `tickd resume`, `tickd
//! history` (a job's last runs) and `tickd logs` (the output of its last run, or of the next with
//! `-f`).

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;

use chrono::{DateTime, Utc};
use tickd::config::Config;
use tickd::status::{relative, short_duration};

use super::{eprintln_safe, exit, load_config, small_runtime};

/// A running daemon's endpoint, as named in its jobs file (address and token).
struct Endpoint {
    addr: std::net::SocketAddr,
    token: Option<String>,
    /// The daemon's zone (`[daemon] timezone`), for the times `tickd history` shows.
    zone: chrono_tz::Tz,
    /// `[daemon] history`: 0 when the daemon keeps no runs.
    history: usize,
    runtime: tokio::runtime::Runtime,
    client: reqwest::Client,
}

impl Endpoint {
    /// The endpoint of the jobs file `file`, or the exit code after saying why there is none.
    fn of(file: &Path) -> Result<Endpoint, u8> {
        let config = load_config(file).ok_or(exit::INVALID)?;
        Self::of_config(file, &config)
    }

    /// The endpoint `config` (loaded from `file`) names.
    fn of_config(file: &Path, config: &Config) -> Result<Endpoint, u8> {
        let Some(mut addr) = config.daemon().http() else {
            eprintln_safe(&format!(
                "tickd: {} has no [daemon] http address; this command talks to a running daemon's endpoint",
                file.display()
            ));
            return Err(exit::INVALID);
        };
        if addr.ip().is_unspecified() {
            addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
        }
        Ok(Endpoint {
            addr,
            token: config.daemon().http_token().map(str::to_owned),
            zone: config.daemon().timezone(),
            history: config.daemon().history(),
            runtime: small_runtime().ok_or(exit::FATAL)?,
            // A local daemon answers at once; something that accepts and never answers must
            // not hang the command.
            client: reqwest::Client::builder()
                .timeout(ANSWER_TIMEOUT)
                .build()
                .map_err(|err| {
                    eprintln_safe(&format!("tickd: cannot start an HTTP client: {err}"));
                    exit::FATAL
                })?,
        })
    }

    /// `GET` or `POST` `path`; returns status and body, or the exit code after saying why the
    /// daemon could not be reached.
    fn call(&self, post: bool, path: &str) -> Result<(u16, String), u8> {
        self.send(post, path).map_err(|err| {
            eprintln_safe(&unreachable(self.addr, &err));
            exit::FATAL
        })
    }

    /// `GET` or `POST` `path`: status and body.
    fn send(&self, post: bool, path: &str) -> Result<(u16, String), reqwest::Error> {
        self.runtime.block_on(async {
            let url = format!("http://{}{path}", self.addr);
            let mut request = if post {
                self.client.post(&url)
            } else {
                self.client.get(&url)
            };
            if let Some(token) = &self.token {
                request = request.bearer_auth(token);
            }
            let response = request.send().await?;
            let status = response.status().as_u16();
            Ok((status, response.text().await.unwrap_or_default()))
        })
    }

    /// The line `tickd status` prints above everything when `/healthz` says the daemon is not
    /// healthy: draining (a stop or a recycle is waiting for runs in flight), a stuck job task,
    /// the group keeper down, the cluster's database unreachable.
    fn health_banner(&self) -> Option<String> {
        match self.send(false, "/healthz") {
            Ok((503, body)) => Some(format!("*** not healthy: {} ***", body.trim())),
            _ => None,
        }
    }

    /// The line `tickd status` prints above its table when the daemon is in a cluster
    /// (`GET /cluster` answers 200); `None` otherwise, including from a tickd without the route.
    fn cluster_line(&self) -> Option<String> {
        match self.send(false, "/cluster") {
            Ok((200, body)) => serde_json::from_str::<tickd::cluster::ClusterStatus>(&body)
                .ok()
                .map(|status| {
                    let mut text = status.summary();
                    let table = status.nodes_table();
                    if !table.is_empty() {
                        text.push('\n');
                        text.push_str(table.trim_end_matches('\n'));
                    }
                    text
                }),
            _ => None,
        }
    }
}

/// How long a command waits for the endpoint's answer.
const ANSWER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// What `tickd next` shows of a running daemon: its address and each job's next fire as
/// `GET /jobs` says (`None`: paused, or no fire ahead).
pub(crate) struct DaemonGrid {
    /// Where the daemon answered.
    pub(crate) addr: std::net::SocketAddr,
    /// The next fire of each of its jobs, by name.
    pub(crate) next_fires: BTreeMap<String, Option<DateTime<Utc>>>,
}

/// The grid of the daemon running `config` (loaded from `file`), or why there is none to show:
/// no `[daemon] http`, nothing answering, or an answer that is not tickd's.
pub(crate) fn daemon_grid(file: &Path, config: &Config) -> Result<DaemonGrid, String> {
    let Some(addr) = config.daemon().http() else {
        return Err("the file has no [daemon] http".to_owned());
    };
    let endpoint = Endpoint::of_config(file, config).map_err(|_| format!("{addr}"))?;
    let (code, body) = endpoint
        .send(false, "/jobs")
        .map_err(|err| unreachable(endpoint.addr, &err))?;
    if code != 200 {
        return Err(refused(code, &body));
    }
    let jobs: Vec<serde_json::Value> = serde_json::from_str(&body)
        .map_err(|err| format!("the answer of {} is not tickd's ({err})", endpoint.addr))?;
    let next_fires = jobs
        .iter()
        .filter_map(|job| {
            let name = job["name"].as_str()?.to_owned();
            let next = job["next_fire"]
                .as_str()
                .and_then(|text| DateTime::parse_from_rfc3339(text).ok())
                .map(|time| time.to_utc());
            Some((name, next))
        })
        .collect();
    Ok(DaemonGrid {
        addr: endpoint.addr,
        next_fires,
    })
}

/// Why the daemon at `addr` could not be reached, in words.
fn unreachable(addr: std::net::SocketAddr, err: &reqwest::Error) -> String {
    let refused = std::error::Error::source(err)
        .and_then(|mut source| loop {
            if let Some(io) = source.downcast_ref::<std::io::Error>() {
                break Some(io.kind());
            }
            source = source.source()?;
        })
        .is_some_and(|kind| kind == std::io::ErrorKind::ConnectionRefused);
    if refused {
        format!("tickd: no daemon is listening on {addr} (connection refused): is `[daemon] http` set and tickd running?")
    } else {
        format!("tickd: cannot reach the daemon at {addr}: {err}")
    }
}

/// What an answer other than the one expected says: the endpoint's `error` in words, or the
/// status and body of something else listening there.
fn refused(code: u16, body: &str) -> String {
    let reason = serde_json::from_str::<serde_json::Value>(body)
        .ok()
        .and_then(|json| json["error"].as_str().map(str::to_owned));
    match reason {
        Some(reason) => format!("tickd: {reason} ({code})"),
        None => format!("tickd: the endpoint answered {code}: {body}"),
    }
}

/// Calls the endpoint named in the jobs file `file`: `GET` or `POST` `path`; returns status and
/// body.
fn call_endpoint(file: &Path, post: bool, path: &str) -> Result<(u16, String), u8> {
    Endpoint::of(file)?.call(post, path)
}

pub(crate) fn status(file: &Path, json: bool) -> u8 {
    let endpoint = match Endpoint::of(file) {
        Ok(endpoint) => endpoint,
        Err(exit) => return exit,
    };
    let (code, body) = match endpoint.call(false, "/jobs") {
        Ok(answer) => answer,
        Err(exit) => return exit,
    };
    let mut out = std::io::stdout().lock();
    if code != 200 {
        eprintln_safe(&refused(code, &body));
        return exit::FATAL;
    }
    if json {
        let _ = writeln!(out, "{body}");
        return exit::OK;
    }
    let jobs: Vec<serde_json::Value> = match serde_json::from_str(&body) {
        Ok(jobs) => jobs,
        Err(err) => {
            eprintln_safe(&format!(
                "tickd: the endpoint's answer is not the list of jobs tickd serves ({err}); is another program listening there?"
            ));
            return exit::FATAL;
        }
    };
    if let Some(line) = endpoint.health_banner() {
        let _ = writeln!(out, "{line}");
    }
    if let Some(line) = endpoint.cluster_line() {
        let _ = writeln!(out, "{line}");
    }
    // Colours only on a terminal that wants them: anstream drops the escapes when stdout is not
    // a terminal, under NO_COLOR, and with CLICOLOR=0 (CLICOLOR_FORCE=1 keeps them).
    let _ = write!(
        anstream::stdout().lock(),
        "{}",
        status_table(&jobs, chrono::Utc::now())
    );
    exit::OK
}

/// `text` in `style` (escapes a non-terminal's stream drops again).
fn paint(style: anstyle::Style, text: &str) -> String {
    format!("{style}{text}{style:#}")
}

/// Red for the outcomes that need a look, green for success, yellow for skips.
mod colours {
    use anstyle::{AnsiColor, Style};

    pub(super) const BAD: Style = AnsiColor::Red.on_default();
    pub(super) const GOOD: Style = AnsiColor::Green.on_default();
    pub(super) const SKIP: Style = AnsiColor::Yellow.on_default();
}

/// `tickd status`'s table, 80 columns wide (a terminal under tmux wraps anything wider): times
/// relative to `now` ("in 4s", "12s ago"), so the daemon's zone does not matter.
fn status_table(jobs: &[serde_json::Value], now: chrono::DateTime<chrono::Utc>) -> String {
    use std::fmt::Write as _;
    let mut table = format!(
        "{:<18} {:<9} {:<17} {:>7} {:>6} {:>6} {:>7} {:>3}\n",
        "JOB", "NEXT", "LAST", "TOOK", "RUNS", "FAILED", "SKIPPED", "NOW"
    );
    let time = |value: &serde_json::Value| {
        value
            .as_str()
            .and_then(|text| chrono::DateTime::parse_from_rfc3339(text).ok())
            .map(|time| time.to_utc())
    };
    for job in jobs {
        let runs = &job["runs"];
        let count = |k: &str| runs[k].as_u64().unwrap_or(0);
        let total: u64 = tickd::action::Outcome::ALL
            .iter()
            .map(|outcome| count(outcome.as_str()))
            .sum();
        let next = if job["paused"].as_bool().unwrap_or(false) {
            "paused".to_owned()
        } else {
            match time(&job["next_fire"]) {
                Some(at) if at > now => format!("in {}", relative(at - now)),
                Some(_) => "now".to_owned(),
                None => "-".to_owned(),
            }
        };
        let last = &job["last_run"];
        let last_text = match (last["outcome"].as_str(), time(&last["started"])) {
            (Some(outcome), Some(at)) => {
                format!("{outcome} {} ago", relative(now - at))
            }
            (Some(outcome), None) => outcome.to_owned(),
            _ => "-".to_owned(),
        };
        let took = last["duration_ms"]
            .as_f64()
            .map_or_else(|| "-".to_owned(), short_duration);
        // Padded first, painted after: the escapes take no columns.
        let mut last_cell = format!("{:<17}", cut(&last_text, 17));
        let outcome_style = match last["outcome"].as_str() {
            Some("failure" | "timeout") => Some(colours::BAD),
            Some("success") => Some(colours::GOOD),
            _ => None,
        };
        if let (Some(style), Some(outcome)) = (outcome_style, last["outcome"].as_str()) {
            if let Some(rest) = last_cell.strip_prefix(outcome) {
                last_cell = format!("{}{rest}", paint(style, outcome));
            }
        }
        let failed = count("failure") + count("timeout");
        let failed_cell = format!("{failed:>6}");
        let failed_cell = if failed > 0 {
            paint(colours::BAD, &failed_cell)
        } else {
            failed_cell
        };
        let skipped = count("skipped_overlap");
        let skipped_cell = format!("{skipped:>7}");
        let skipped_cell = if skipped > 0 {
            paint(colours::SKIP, &skipped_cell)
        } else {
            skipped_cell
        };
        let _ = writeln!(
            table,
            "{:<18} {:<9} {last_cell} {:>7} {:>6} {failed_cell} {skipped_cell} {:>3}",
            cut(job["name"].as_str().unwrap_or(""), 18),
            cut(&next, 9),
            took,
            total,
            job["running"].as_u64().unwrap_or(0),
        );
    }
    table
}

/// `text` in at most `width` characters, its end replaced by `~` when cut.
fn cut(text: &str, width: usize) -> String {
    if text.chars().count() <= width {
        return text.to_owned();
    }
    let mut cut: String = text.chars().take(width - 1).collect();
    cut.push('~');
    cut
}

pub(crate) fn run_now(file: &Path, name: &str) -> u8 {
    match call_endpoint(file, true, &format!("/jobs/{name}/run")) {
        Ok((202, body)) => {
            let _ = writeln!(std::io::stdout(), "{body}");
            exit::OK
        }
        Ok((code, body)) => {
            eprintln_safe(&refused(code, &body));
            exit::FATAL
        }
        Err(exit) => exit,
    }
}

/// `tickd pause NAME` (`paused`) and `tickd resume NAME`: a paused job fires nothing until
/// resumed; its runs in flight go on.
pub(crate) fn set_paused(file: &Path, name: &str, paused: bool) -> u8 {
    let action = if paused { "pause" } else { "resume" };
    match call_endpoint(file, true, &format!("/jobs/{name}/{action}")) {
        Ok((200, _)) => {
            let done = if paused { "paused" } else { "resumed" };
            let _ = writeln!(std::io::stdout(), "{name}: {done}");
            exit::OK
        }
        Ok((code, body)) => {
            eprintln_safe(&refused(code, &body));
            exit::FATAL
        }
        Err(exit) => exit,
    }
}

/// The widest line `tickd history` prints: an 80-column terminal does not wrap it.
const HISTORY_WIDTH: usize = 79;

/// `GET /jobs/{name}/runs`: the job's endpoint and its last runs, newest first, or the exit
/// code after saying what went wrong (an unknown job exits 1, as with `run-now`).
fn fetch_runs(endpoint: &Endpoint, name: &str) -> Result<Vec<tickd::status::RunRecord>, u8> {
    match endpoint.call(false, &format!("/jobs/{name}/runs"))? {
        (200, body) => serde_json::from_str(&body).map_err(|err| {
            eprintln_safe(&format!(
                "tickd: the endpoint's answer is not the list of runs tickd serves ({err}); is another program listening there?"
            ));
            exit::FATAL
        }),
        (404, _) => {
            eprintln_safe(&format!("tickd: the daemon has no job named \"{name}\""));
            Err(exit::FATAL)
        }
        (code, body) => {
            eprintln_safe(&format!("tickd: the endpoint answered {code}: {body}"));
            Err(exit::FATAL)
        }
    }
}

pub(crate) fn history(file: &Path, name: &str) -> u8 {
    let runs = match Endpoint::of(file).and_then(|e| fetch_runs(&e, name).map(|r| (e, r))) {
        Ok((endpoint, runs)) => {
            if runs.is_empty() {
                let why = if endpoint.history == 0 {
                    "[daemon] history = 0 keeps none"
                } else {
                    "none has ended yet"
                };
                eprintln_safe(&format!("tickd: no runs of \"{name}\" to show: {why}"));
            }
            history_table(&runs, endpoint.zone)
        }
        Err(exit) => return exit,
    };
    let _ = std::io::stdout().lock().write_all(runs.as_bytes());
    exit::OK
}

/// The runs as a table of at most [`HISTORY_WIDTH`] columns, times in `zone`.
fn history_table(runs: &[tickd::status::RunRecord], zone: chrono_tz::Tz) -> String {
    use std::fmt::Write as _;
    let mut text = String::new();
    let _ = writeln!(
        text,
        "{:>6} {:<19} {:<7} {:>8} {:>5} REASON",
        "RUN", "START", "OUTCOME", "DURATION", "EXIT"
    );
    for run in runs {
        let exit = run
            .exit_code
            .map(|code| code.to_string())
            .or_else(|| run.signal.clone())
            .or_else(|| run.status.map(|status| status.to_string()))
            .unwrap_or_else(|| "-".to_owned());
        let mut line = format!(
            "{:>6} {:<19} {:<7} {:>8} {:>5} ",
            run.run_id,
            run.started.with_timezone(&zone).format("%Y-%m-%d %H:%M:%S"),
            run.outcome,
            short_duration(run.duration_ms),
            exit,
        );
        let room = HISTORY_WIDTH.saturating_sub(line.chars().count());
        let reason = run.reason.as_deref().unwrap_or("-");
        let reason = reason.lines().next().unwrap_or("");
        if reason.chars().count() > room {
            line.extend(reason.chars().take(room.saturating_sub(1)));
            line.push('…');
        } else {
            line.push_str(reason);
        }
        let _ = writeln!(text, "{}", line.trim_end());
    }
    text
}

/// How often `tickd logs -f` asks the endpoint whether a run ended: the endpoint has no push
/// channel, and a poll of one job's runs every 500 ms costs the daemon next to nothing.
const FOLLOW_POLL: std::time::Duration = std::time::Duration::from_millis(500);

pub(crate) fn logs(file: &Path, name: &str, follow: bool) -> u8 {
    let endpoint = match Endpoint::of(file) {
        Ok(endpoint) => endpoint,
        Err(exit) => return exit,
    };
    let runs = match fetch_runs(&endpoint, name) {
        Ok(runs) => runs,
        Err(exit) => return exit,
    };
    if endpoint.history == 0 {
        eprintln_safe("tickd: the daemon keeps no runs ([daemon] history = 0)");
        return exit::FATAL;
    }
    let run = if follow {
        // The runs that had ended before: the next one is the newest not among them.
        let seen: std::collections::HashSet<u64> = runs.iter().map(|run| run.run_id).collect();
        loop {
            std::thread::sleep(FOLLOW_POLL);
            let runs = match fetch_runs(&endpoint, name) {
                Ok(runs) => runs,
                Err(exit) => return exit,
            };
            if let Some(run) = runs.into_iter().find(|run| !seen.contains(&run.run_id)) {
                break run;
            }
        }
    } else {
        match runs.into_iter().next() {
            Some(run) => run,
            None => {
                eprintln_safe(&format!("tickd: no run of \"{name}\" has ended yet"));
                return exit::FATAL;
            }
        }
    };
    match &run.output {
        Some(output) => {
            let _ = std::io::stdout().lock().write_all(output.as_bytes());
        }
        None => eprintln_safe(&format!(
            "tickd: run {} of \"{name}\" ({}) left no output",
            run.run_id, run.outcome
        )),
    }
    exit::OK
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_status_table_fits_80_columns_with_relative_times() {
        let now = chrono::DateTime::parse_from_rfc3339("2026-01-01T12:00:00Z")
            .expect("time")
            .to_utc();
        let jobs: Vec<serde_json::Value> = serde_json::from_str(
            r#"[
            {"name": "a-job-with-a-very-long-name-indeed", "next_fire": "2026-01-01T12:00:04Z",
             "paused": false, "running": 1,
             "runs": {"success": 120000, "failure": 3, "timeout": 1, "skipped_overlap": 7},
             "last_run": {"outcome": "timeout", "started": "2026-01-01T11:59:48Z",
                          "duration_ms": 1234.5}},
            {"name": "paused", "next_fire": null, "paused": true, "running": 0,
             "runs": {}, "last_run": null}
        ]"#,
        )
        .expect("json");
        let painted = status_table(&jobs, now);
        // A terminal's colours: the outcome and the failed count red, the skips yellow.
        assert!(
            painted.contains("\x1b[31mtimeout\x1b[0m 12s ago"),
            "{painted:?}"
        );
        assert!(painted.contains("\x1b[33m      7\x1b[0m"), "{painted:?}");
        // What anything else gets: the same table, without them.
        let table = anstream::adapter::strip_str(&painted).to_string();
        assert!(
            table.lines().all(|line| line.chars().count() <= 80),
            "{table}"
        );
        let rows: Vec<&str> = table.lines().collect();
        assert!(rows[0].starts_with("JOB "), "{table}");
        assert!(rows[1].starts_with("a-job-with-a-very~ in 4s"), "{table}");
        assert!(rows[1].contains("timeout 12s ago"), "{table}");
        assert!(
            rows[1].contains("  1.23s 120004      4       7   1"),
            "{table}"
        );
        assert!(
            rows[2].starts_with("paused             paused    -"),
            "{table}"
        );
        assert_eq!(relative(chrono::Duration::seconds(7200)), "2h");
    }

    #[test]
    fn the_history_table_fits_80_columns_and_cuts_the_reason() {
        let run = |run_id, exit_code, signal: Option<&str>, status, reason: &str| {
            tickd::status::RunRecord {
                run_id,
                started: chrono::DateTime::parse_from_rfc3339("2026-01-01T12:00:00Z")
                    .expect("time")
                    .to_utc(),
                scheduled: chrono::Utc::now(),
                lateness_ms: 0.0,
                duration_ms: 123_456.0,
                outcome: "failure".into(),
                exit_code,
                signal: signal.map(str::to_owned),
                status,
                reason: Some(reason.to_owned()),
                node: None,
                output: None,
            }
        };
        let table = history_table(
            &[
                run(
                    123_456,
                    Some(3),
                    None,
                    None,
                    &"exited with code 3 ".repeat(10),
                ),
                run(2, None, Some("TERM"), None, "killed by signal SIGTERM"),
                run(1, None, None, Some(503), "HTTP 503"),
            ],
            "Europe/Berlin".parse().expect("zone"),
        );
        assert!(
            table.lines().all(|line| line.chars().count() <= 80),
            "{table}"
        );
        let lines: Vec<&str> = table.lines().collect();
        assert!(lines[0].starts_with("   RUN START"), "{table}");
        assert!(
            lines[1].starts_with(
                "123456 2026-01-01 13:00:00 failure    2m03s     3 exited with code 3"
            ),
            "{table}"
        );
        assert!(lines[1].ends_with('…'), "{table}");
        assert!(
            lines[2].contains("  TERM killed by signal SIGTERM"),
            "{table}"
        );
        assert!(lines[3].contains("   503 HTTP 503"), "{table}");
        assert_eq!(short_duration(12.4), "12ms");
        assert_eq!(short_duration(1500.0), "1.50s");
        assert_eq!(short_duration(3600.0 * 5e3 / 5.0 + 420_000.0), "1h07m");
    }
}
