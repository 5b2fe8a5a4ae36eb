//! The commands that talk to a running daemon through its HTTP endpoint: `tickd status` (a
//! table, or the endpoint's JSON), `tickd run-now`, `tickd pause` and `tickd resume`.

use std::io::Write;
use std::path::Path;

use super::{eprintln_safe, exit, load_config, small_runtime};

/// A running daemon's endpoint, as named in its jobs file (address and token).
struct Endpoint {
    addr: std::net::SocketAddr,
    token: Option<String>,
    runtime: tokio::runtime::Runtime,
    client: reqwest::Client,
}

impl Endpoint {
    /// The endpoint of the jobs file `file`, or the exit code after saying why there is none.
    fn of(file: &Path) -> Result<Endpoint, u8> {
        let config = load_config(file).ok_or(exit::INVALID)?;
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
            runtime: small_runtime().ok_or(exit::FATAL)?,
            client: reqwest::Client::new(),
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
    if let Some(line) = endpoint.cluster_line() {
        let _ = writeln!(out, "{line}");
    }
    let _ = writeln!(
        out,
        "{:<24} {:<26} {:<10} {:>8} {:>9} {:>9}",
        "JOB", "NEXT FIRE", "LAST", "RUNS", "FAILURES", "IN FLIGHT"
    );
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
            job["next_fire"].as_str().unwrap_or("-").to_owned()
        };
        let _ = writeln!(
            out,
            "{:<24} {:<26} {:<10} {:>8} {:>9} {:>9}",
            job["name"].as_str().unwrap_or(""),
            next.get(..26.min(next.len())).unwrap_or(&next),
            job["last_run"]["outcome"].as_str().unwrap_or("-"),
            total,
            count("failure") + count("timeout"),
            job["running"].as_u64().unwrap_or(0),
        );
    }
    exit::OK
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
