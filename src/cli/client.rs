//! The commands that talk to a running daemon through its HTTP endpoint: `tickd status` (a
//! table, or the endpoint's JSON) and `tickd run-now`.

use std::io::Write;
use std::path::Path;

use super::{eprintln_safe, exit, load_config, small_runtime};

/// Calls the endpoint named in the config: `GET` or `POST` `path`; returns status and body.
fn call_endpoint(file: &Path, post: bool, path: &str) -> Result<(u16, String), u8> {
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
    let runtime = small_runtime().ok_or(exit::FATAL)?;
    runtime.block_on(async {
        let client = reqwest::Client::new();
        let url = format!("http://{addr}{path}");
        let mut request = if post {
            client.post(&url)
        } else {
            client.get(&url)
        };
        if let Some(token) = &config.daemon().http_token() {
            request = request.bearer_auth(token);
        }
        match request.send().await {
            Ok(response) => {
                let status = response.status().as_u16();
                Ok((status, response.text().await.unwrap_or_default()))
            }
            Err(err) => {
                eprintln_safe(&format!("tickd: cannot reach the daemon at {addr}: {err}"));
                Err(exit::FATAL)
            }
        }
    })
}

pub(crate) fn status(file: &Path, json: bool) -> u8 {
    let (code, body) = match call_endpoint(file, false, "/jobs") {
        Ok(answer) => answer,
        Err(exit) => return exit,
    };
    let mut out = std::io::stdout().lock();
    if code != 200 {
        eprintln_safe(&format!("tickd: the endpoint answered {code}: {body}"));
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
            eprintln_safe(&format!("tickd: {code}: {body}"));
            exit::FATAL
        }
        Err(exit) => exit,
    }
}
