//! The status page's HTML, rendered from snapshots: pure functions of copies of the jobs'
//! statuses, runs and histograms, so nothing here holds a lock or reads a clock (the time is
//! handed in).
//!
//! The HTML is written by hand, with [`Esc`] around every value that does not come from this
//! file: a templating crate (maud, askama) would bring a proc-macro and its compile time for
//! three small pages, and the one rule they enforce, escape everything interpolated, is kept
//! here by never writing a value into the page except through `Esc` (or as a number).

use std::fmt::{self, Display, Write as _};

use chrono::{DateTime, Utc};
use chrono_tz::Tz;

use crate::cluster::ClusterStatus;
use crate::metrics::{Buckets, JobHistograms};
use crate::status::{relative, short_duration, DaemonFacts, JobStatus, RunRecord};

/// `value`, HTML-escaped when displayed (`&`, `<`, `>`, `"` and `'`): safe in text and in
/// quoted attribute values.
pub struct Esc<'a>(pub &'a str);

impl Display for Esc<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut rest = self.0;
        while let Some(at) = rest.find(['&', '<', '>', '"', '\'']) {
            f.write_str(&rest[..at])?;
            f.write_str(match rest.as_bytes()[at] {
                b'&' => "&amp;",
                b'<' => "&lt;",
                b'>' => "&gt;",
                b'"' => "&quot;",
                _ => "&#39;",
            })?;
            rest = &rest[at + 1..];
        }
        f.write_str(rest)
    }
}

/// `text` percent-encoded for a path segment or a query value (job names are letters, digits,
/// `-`, `_` and `.`, but a filter is anything typed).
fn url(text: &str) -> String {
    percent_encoding::utf8_percent_encode(text, percent_encoding::NON_ALPHANUMERIC).to_string()
}

/// How often the pages refresh themselves (`<meta http-equiv="refresh">`).
pub const REFRESH_SECONDS: u32 = 10;

/// What the daemon-wide part of every page shows.
#[derive(Debug, Clone)]
pub struct DaemonView {
    /// tickd's version.
    pub version: &'static str,
    /// How long the daemon has been running.
    pub uptime: std::time::Duration,
    /// Its configuration, reloads and stopping.
    pub facts: DaemonFacts,
    /// Whether it drains (stops firing, waits for runs in flight).
    pub draining: bool,
    /// Its part in a cluster, if it is in one.
    pub cluster: Option<ClusterStatus>,
    /// Whether a token is required (then the page offers to log out).
    pub login: bool,
    /// Now, for relative times.
    pub now: DateTime<Utc>,
}

impl DaemonView {
    fn zone(&self) -> Tz {
        self.facts.timezone
    }
}

/// How the job list is sorted (`?sort=`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Sort {
    /// By name (the default).
    #[default]
    Name,
    /// By next fire, soonest first (paused and unscheduled jobs last).
    Next,
    /// By failures (and timeouts), most first.
    Failures,
}

impl Sort {
    fn as_str(self) -> &'static str {
        match self {
            Sort::Name => "name",
            Sort::Next => "next",
            Sort::Failures => "failures",
        }
    }
}

/// The job list's query: `?q=NAME-PART&sort=next&refresh=0`.
#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(default)]
pub struct ListQuery {
    /// Only jobs whose name contains this (case-insensitively).
    pub q: String,
    /// The order.
    pub sort: Sort,
    /// `0` stops the page refreshing itself (for typing a filter at leisure).
    pub refresh: Option<u8>,
}

impl ListQuery {
    fn refreshes(&self) -> bool {
        self.refresh != Some(0)
    }

    /// This query as a URL query string (`?q=...&sort=...`), with `sort` replaced.
    fn href(&self, sort: Sort) -> String {
        let mut href = format!("/?sort={}", sort.as_str());
        if !self.q.is_empty() {
            href.push_str(&format!("&q={}", url(&self.q)));
        }
        if !self.refreshes() {
            href.push_str("&refresh=0");
        }
        href
    }
}

/// The jobs `query` selects, in its order.
pub fn select<'a>(
    jobs: &'a [(String, JobStatus)],
    query: &ListQuery,
) -> Vec<&'a (String, JobStatus)> {
    let needle = query.q.trim().to_lowercase();
    let mut chosen: Vec<_> = jobs
        .iter()
        .filter(|(name, _)| name.to_lowercase().contains(&needle))
        .collect();
    match query.sort {
        Sort::Name => chosen.sort_by(|a, b| a.0.cmp(&b.0)),
        Sort::Next => chosen.sort_by_key(|(name, s)| {
            let next = if s.paused { None } else { s.next_fire };
            (next.is_none(), next, name.clone())
        }),
        Sort::Failures => {
            chosen.sort_by_key(|(name, s)| (std::cmp::Reverse(failures(s)), name.clone()))
        }
    }
    chosen
}

/// Failed runs and timeouts.
fn failures(status: &JobStatus) -> u64 {
    status.runs.failure + status.runs.timeout
}

/// Runs that ended, whatever their outcome.
fn total_runs(status: &JobStatus) -> u64 {
    let r = status.runs;
    r.success + r.failure + r.timeout + r.stopped
}

/// The frame of every page: head (viewport, stylesheet, refresh to `refresh` if given), the
/// header with the daemon's state, then `body`.
fn layout(title: &str, refresh: Option<&str>, daemon: Option<&DaemonView>, body: &str) -> String {
    let mut page = String::with_capacity(body.len() + 1024);
    page.push_str("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n");
    page.push_str("<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n");
    if let Some(to) = refresh {
        let _ = writeln!(
            page,
            "<meta http-equiv=\"refresh\" content=\"{REFRESH_SECONDS}; url={}\">",
            Esc(to)
        );
    }
    let _ = writeln!(page, "<title>{} · tickd</title>", Esc(title));
    page.push_str("<link rel=\"stylesheet\" href=\"/ui/page.css\">\n</head>\n<body>\n");
    page.push_str("<header><a class=\"brand\" href=\"/\">tickd</a>");
    if let Some(daemon) = daemon {
        let state = if daemon.draining {
            "draining"
        } else {
            "running"
        };
        let _ = write!(
            page,
            " <span class=\"state {state}\">{state}</span> <span class=\"muted\">v{} · up {}</span>",
            Esc(daemon.version),
            relative(chrono::Duration::from_std(daemon.uptime).unwrap_or_default())
        );
        if daemon.login {
            page.push_str(
                "<form class=\"logout\" method=\"post\" action=\"/logout\"><button type=\"submit\">Log out</button></form>",
            );
        }
    }
    page.push_str("</header>\n<main>\n");
    page.push_str(body);
    page.push_str("</main>\n</body>\n</html>\n");
    page
}

/// A time as `<time>`: relative to `now` ("in 4s", "12s ago") and absolute in `zone`.
fn time(at: DateTime<Utc>, now: DateTime<Utc>, zone: Tz) -> String {
    let rel = if at > now {
        format!("in {}", relative(at - now))
    } else {
        format!("{} ago", relative(now - at))
    };
    format!("{rel} {}", absolute(at, zone))
}

/// A time as `<time>`, in `zone`.
fn absolute(at: DateTime<Utc>, zone: Tz) -> String {
    format!(
        "<time datetime=\"{}\">{}</time>",
        at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        at.with_timezone(&zone).format("%Y-%m-%d %H:%M:%S %Z")
    )
}

/// A job's next fire as a time, or that it is paused.
fn next_fire(status: &JobStatus, now: DateTime<Utc>, zone: Tz) -> String {
    match (status.paused, status.next_fire) {
        (true, _) => "<span class=\"badge warn\">paused</span>".to_owned(),
        (false, Some(at)) => time(at, now, zone),
        (false, None) => "-".to_owned(),
    }
}

/// The outcome as a badge.
fn outcome(outcome: &str) -> String {
    let class = match outcome {
        "success" => "ok",
        "stopped" => "warn",
        _ => "bad",
    };
    format!("<span class=\"badge {class}\">{}</span>", Esc(outcome))
}

/// `1`, `2`, `10`: a humantime unit in words.
fn unit_word(unit: &str, one: bool) -> Option<&'static str> {
    let (single, plural) = match unit {
        "ns" => ("nanosecond", "nanoseconds"),
        "us" | "µs" => ("microsecond", "microseconds"),
        "ms" => ("millisecond", "milliseconds"),
        "s" => ("second", "seconds"),
        "m" => ("minute", "minutes"),
        "h" => ("hour", "hours"),
        "day" | "days" => ("day", "days"),
        "month" | "months" => ("month", "months"),
        "year" | "years" => ("year", "years"),
        _ => return None,
    };
    Some(if one { single } else { plural })
}

/// The schedule as the job's status writes it (`every 1h 30m, aligned`, `cron "0 3 * * *"
/// (Europe/Berlin)`), in words: `every 1 hour 30 minutes, on multiples of the period`; `every
/// day at 03:00 (Europe/Berlin)`. What it cannot say better is said as written.
pub fn schedule_words(schedule: &str) -> String {
    if let Some(rest) = schedule.strip_prefix("every ") {
        let end = [rest.find(','), rest.find(" after")]
            .into_iter()
            .flatten()
            .min()
            .unwrap_or(rest.len());
        let (period, tail) = rest.split_at(end);
        let mut words = Vec::new();
        for part in period.split_whitespace() {
            let digits = part
                .find(|c: char| !c.is_ascii_digit())
                .unwrap_or(part.len());
            let (number, unit) = part.split_at(digits);
            match unit_word(unit, number == "1") {
                Some(word) => words.push(format!("{number} {word}")),
                None => return schedule.to_owned(),
            }
        }
        let mut text = format!("every {}", words.join(" "));
        if tail.contains("after each run") {
            text.push_str(", counted from the end of each run");
        }
        if tail.contains("aligned") {
            text.push_str(", on multiples of the period since the epoch");
        }
        return text;
    }
    let Some(rest) = schedule.strip_prefix("cron \"") else {
        return schedule.to_owned();
    };
    let Some((expression, zone)) = rest.split_once("\" (") else {
        return schedule.to_owned();
    };
    let zone = zone.trim_end_matches(')');
    let words = cron_words(expression).unwrap_or_else(|| "on a cron schedule".to_owned());
    format!("{words} ({zone})")
}

/// A few common cron expressions in words.
fn cron_words(expression: &str) -> Option<String> {
    let named = match expression {
        "@yearly" | "@annually" => Some("every year on 1 January at 00:00"),
        "@monthly" => Some("every month on the 1st at 00:00"),
        "@weekly" => Some("every Sunday at 00:00"),
        "@daily" | "@midnight" => Some("every day at 00:00"),
        "@hourly" => Some("every hour at minute 0"),
        _ => None,
    };
    if let Some(named) = named {
        return Some(named.to_owned());
    }
    let fields: Vec<&str> = expression.split_whitespace().collect();
    let (second, rest) = match fields.len() {
        5 => ("0", &fields[..]),
        6 => (fields[0], &fields[1..]),
        _ => return None,
    };
    let number = |field: &str| field.parse::<u32>().ok();
    let step = |field: &str| field.strip_prefix("*/").and_then(|n| n.parse::<u32>().ok());
    let every_day = rest[2..] == ["*", "*", "*"];
    let plural = |n: u32, unit: &str| {
        if n == 1 {
            format!("every {unit}")
        } else {
            format!("every {n} {unit}s")
        }
    };
    match (second, rest[0], rest[1]) {
        ("*", "*", "*") if every_day => Some("every second".to_owned()),
        (s, "*", "*") if every_day => step(s).map(|n| plural(n, "second")),
        ("0", "*", "*") if every_day => Some("every minute".to_owned()),
        ("0", m, "*") if every_day => step(m)
            .map(|n| plural(n, "minute"))
            .or_else(|| number(m).map(|m| format!("every hour at minute {m}"))),
        ("0", m, h) if every_day => {
            Some(format!("every day at {:02}:{:02}", number(h)?, number(m)?))
        }
        _ => None,
    }
}

/// The overview: the daemon, then every job `query` selects.
pub fn overview(daemon: &DaemonView, jobs: &[(String, JobStatus)], query: &ListQuery) -> String {
    let now = daemon.now;
    let zone = daemon.zone();
    let mut body = String::new();
    body.push_str(&daemon_section(daemon));
    let chosen = select(jobs, query);
    let _ = writeln!(
        body,
        "<section aria-labelledby=\"jobs\"><h2 id=\"jobs\">Jobs <span class=\"muted\">({} of {})</span></h2>",
        chosen.len(),
        jobs.len()
    );
    let _ = writeln!(
        body,
        "<form class=\"filter\" method=\"get\" action=\"/\"><label for=\"q\">Filter by name</label> \
         <input id=\"q\" name=\"q\" type=\"search\" value=\"{}\"> \
         <input type=\"hidden\" name=\"sort\" value=\"{}\">{}<button type=\"submit\">Filter</button></form>",
        Esc(&query.q),
        query.sort.as_str(),
        if query.refreshes() { "" } else { "<input type=\"hidden\" name=\"refresh\" value=\"0\">" },
    );
    body.push_str("<p class=\"sort\">Sort: ");
    for (sort, label) in [
        (Sort::Name, "name"),
        (Sort::Next, "next fire"),
        (Sort::Failures, "failures"),
    ] {
        if sort == query.sort {
            let _ = write!(body, "<strong aria-current=\"true\">{label}</strong> ");
        } else {
            let _ = write!(body, "<a href=\"{}\">{label}</a> ", Esc(&query.href(sort)));
        }
    }
    if query.refreshes() {
        let mut stop = query.href(query.sort);
        stop.push_str("&refresh=0");
        let _ = writeln!(
            body,
            "· refreshes every {REFRESH_SECONDS}s (<a href=\"{}\">stop</a>)</p>",
            Esc(&stop)
        );
    } else {
        let _ = writeln!(
            body,
            "· not refreshing (<a href=\"{}\">refresh again</a>)</p>",
            Esc(&query.href(query.sort).replace("&refresh=0", ""))
        );
    }
    body.push_str(
        "<div class=\"scroll\"><table class=\"jobs\">\n<thead><tr><th scope=\"col\">Job</th><th scope=\"col\">Schedule</th>\
         <th scope=\"col\">Next fire</th><th scope=\"col\">Now</th><th scope=\"col\">Last run</th>\
         <th scope=\"col\" class=\"num\">Runs</th><th scope=\"col\" class=\"num\">Failures</th>\
         <th scope=\"col\" class=\"num\">Skips</th><th scope=\"col\" class=\"num\">Missed</th></tr></thead>\n<tbody>\n",
    );
    for (name, status) in chosen {
        let next = next_fire(status, now, zone);
        let going = match (status.running(), status.running_since()) {
            (0, _) => "idle".to_owned(),
            (n, Some(since)) => format!(
                "<span class=\"badge run\">running{}</span> for {}",
                if n > 1 {
                    format!(" ×{n}")
                } else {
                    String::new()
                },
                relative(now - since)
            ),
            (n, None) => format!("<span class=\"badge run\">running ×{n}</span>"),
        };
        let last = match &status.last_run {
            Some(last) => format!(
                "{} {} · {}",
                outcome(&last.outcome),
                short_duration(last.duration_ms),
                time(last.started, now, zone)
            ),
            None => "-".to_owned(),
        };
        let _ = writeln!(
            body,
            "<tr><th scope=\"row\"><a href=\"/ui/jobs/{}\">{}</a></th><td>{}<br><code>{}</code></td><td>{next}</td>\
             <td>{going}</td><td>{last}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td></tr>",
            url(name),
            Esc(name),
            Esc(&schedule_words(&status.schedule)),
            Esc(&status.schedule),
            total_runs(status),
            failures(status),
            status.runs.skipped_overlap,
            status.runs.missed,
        );
    }
    body.push_str("</tbody></table></div></section>\n");
    let refresh = query.refreshes().then(|| query.href(query.sort));
    layout("Status", refresh.as_deref(), Some(daemon), &body)
}

/// The daemon's facts: version, uptime, configuration, last reload, stopping, the cluster.
fn daemon_section(daemon: &DaemonView) -> String {
    let (now, zone) = (daemon.now, daemon.zone());
    let facts = &daemon.facts;
    let mut rows = String::new();
    let mut row = |label: &str, value: String| {
        let _ = writeln!(
            rows,
            "<tr><th scope=\"row\">{label}</th><td>{value}</td></tr>"
        );
    };
    row("Version", Esc(daemon.version).to_string());
    row(
        "Up",
        format!(
            "{}, since {}",
            relative(chrono::Duration::from_std(daemon.uptime).unwrap_or_default()),
            absolute(facts.started_at, zone)
        ),
    );
    row(
        "Configuration",
        format!(
            "<code>{}</code>, loaded {}",
            Esc(&facts.config_path.display().to_string()),
            time(facts.loaded_at, now, zone)
        ),
    );
    row(
        "Last reload",
        match &facts.last_reload {
            None => "none since the start".to_owned(),
            Some(reload) => match &reload.result {
                Ok(summary) => format!(
                    "<span class=\"badge ok\">applied</span> {}: {}",
                    time(reload.at, now, zone),
                    Esc(summary)
                ),
                Err(problems) => format!(
                    "<span class=\"badge bad\">refused</span> {}; the running configuration stays in force:<pre>{}</pre>",
                    time(reload.at, now, zone),
                    Esc(problems)
                ),
            },
        },
    );
    row(
        "State",
        match (&facts.stopping, daemon.draining) {
            (Some(why), _) => format!("<span class=\"badge warn\">draining</span> {}", Esc(why)),
            (None, true) => "<span class=\"badge warn\">draining</span>".to_owned(),
            (None, false) => "running".to_owned(),
        },
    );
    row("Time zone", Esc(zone.name()).to_string());
    if let Some(cluster) = &daemon.cluster {
        let mut text = format!(
            "node <strong>{}</strong>, {}, epoch {}, database {}",
            Esc(&cluster.node),
            if cluster.owner { "owner" } else { "follower" },
            cluster
                .epoch
                .map_or_else(|| "-".to_owned(), |e| e.to_string()),
            if cluster.connected {
                "connected"
            } else {
                "<span class=\"badge bad\">unreachable</span>"
            },
        );
        if let Some(refusal) = &cluster.refusal {
            let _ = write!(text, "; refuses to own: {}", Esc(refusal));
        }
        let _ = write!(text, "<br>{}", Esc(&cluster.summary()));
        if !cluster.nodes.is_empty() {
            text.push_str("<table class=\"nodes\"><thead><tr><th scope=\"col\">Node</th><th scope=\"col\" class=\"num\">Shards</th><th scope=\"col\" class=\"num\">Jobs</th><th scope=\"col\" class=\"num\">Fires/s</th></tr></thead><tbody>");
            for node in &cluster.nodes {
                let _ = write!(
                    text,
                    "<tr><th scope=\"row\">{}</th><td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{:.1}</td></tr>",
                    Esc(&node.node),
                    node.shards.len(),
                    node.jobs,
                    node.fires_per_second
                );
            }
            text.push_str("</tbody></table>");
        }
        row("Cluster", text);
    }
    format!(
        "<section aria-labelledby=\"daemon\"><h2 id=\"daemon\">Daemon</h2>\n<table class=\"facts\"><tbody>\n{rows}</tbody></table></section>\n"
    )
}

/// What a control button did, shown on the job's page after it (`?done=`): the same answers as
/// the API's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Notice {
    /// Run now: a run started, with its id.
    Started(u64),
    /// Run now: queued behind the run going (or replacing it).
    Queued,
    /// Run now: refused by the overlap policy.
    Refused,
    /// Paused.
    Paused,
    /// Resumed.
    Resumed,
}

impl Notice {
    fn html(self) -> String {
        match self {
            Notice::Started(run) => format!("<p class=\"notice ok\" role=\"status\">Run {run} started.</p>"),
            Notice::Queued => "<p class=\"notice ok\" role=\"status\">A run is queued: it starts when the run going ends (or replaces it).</p>".to_owned(),
            Notice::Refused => format!(
                "<p class=\"notice bad\" role=\"alert\">Run now refused: {}.</p>",
                Esc(crate::http::REFUSED_RUN)
            ),
            Notice::Paused => "<p class=\"notice ok\" role=\"status\">Paused: the job fires nothing until resumed.</p>".to_owned(),
            Notice::Resumed => "<p class=\"notice ok\" role=\"status\">Resumed: the job fires again from its next fire time.</p>".to_owned(),
        }
    }
}

/// One job's page: its status, control buttons, charts, and recent runs with their output.
pub fn job_page(
    daemon: &DaemonView,
    name: &str,
    status: &JobStatus,
    runs: &[RunRecord],
    histograms: Option<&JobHistograms>,
    notice: Option<Notice>,
) -> String {
    let (now, zone) = (daemon.now, daemon.zone());
    let mut body = String::new();
    let _ = writeln!(
        body,
        "<p class=\"crumbs\"><a href=\"/\">All jobs</a></p><h1>{}</h1>",
        Esc(name)
    );
    if let Some(notice) = notice {
        body.push_str(&notice.html());
    }
    let _ = writeln!(
        body,
        "<p>{} <code>{}</code></p>",
        Esc(&schedule_words(&status.schedule)),
        Esc(&status.schedule)
    );
    let path = format!("/ui/jobs/{}", url(name));
    body.push_str("<div class=\"controls\">");
    let _ = write!(
        body,
        "<form method=\"post\" action=\"{path}/run\"><button type=\"submit\" aria-label=\"Run {0} now\">Run now</button></form>",
        Esc(name)
    );
    if status.paused {
        let _ = write!(
            body,
            "<form method=\"post\" action=\"{path}/resume\"><button type=\"submit\" aria-label=\"Resume {0}\">Resume</button></form>",
            Esc(name)
        );
    } else {
        let _ = write!(
            body,
            "<form method=\"post\" action=\"{path}/pause\"><button type=\"submit\" aria-label=\"Pause {0}\">Pause</button></form>",
            Esc(name)
        );
    }
    body.push_str("</div>\n<table class=\"facts\"><tbody>\n");
    let next = next_fire(status, now, zone);
    let going = match (status.running(), status.running_since()) {
        (0, _) => "no run going".to_owned(),
        (n, since) => format!(
            "<span class=\"badge run\">{n} running</span>{}",
            since.map_or_else(String::new, |s| format!(" for {}", relative(now - s)))
        ),
    };
    let last = match &status.last_run {
        Some(last) => format!(
            "{} in {} · {}{}",
            outcome(&last.outcome),
            short_duration(last.duration_ms),
            time(last.started, now, zone),
            last.reason
                .as_deref()
                .map_or_else(String::new, |r| format!(" · {}", Esc(r)))
        ),
        None => "none yet".to_owned(),
    };
    let r = status.runs;
    let counts = format!(
        "{} runs: {} succeeded, {} failed, {} timed out, {} stopped · {} skipped (overlap), {} missed, {} run-now refused, {} retries dropped",
        total_runs(status), r.success, r.failure, r.timeout, r.stopped, r.skipped_overlap, r.missed, r.refused, r.retries_dropped
    );
    for (label, value) in [
        ("Next fire", next),
        ("Now", going),
        ("Last run", last),
        ("Counts", counts),
    ] {
        let _ = writeln!(
            body,
            "<tr><th scope=\"row\">{label}</th><td>{value}</td></tr>"
        );
    }
    body.push_str("</tbody></table>\n<div class=\"charts\">");
    if let Some(histograms) = histograms {
        body.push_str(&lateness_chart(&histograms.lateness));
    }
    body.push_str(&durations_chart(runs));
    body.push_str("</div>\n");
    let _ = writeln!(
        body,
        "<h2>Recent runs <span class=\"muted\">({}, newest first)</span></h2>",
        runs.len()
    );
    if runs.is_empty() {
        body.push_str(
            "<p>No run has ended yet (or <code>[daemon] history = 0</code> keeps none).</p>\n",
        );
    } else {
        body.push_str(
            "<div class=\"scroll\"><table class=\"runs\"><thead><tr><th scope=\"col\">Run</th><th scope=\"col\">Started</th>\
             <th scope=\"col\">Scheduled</th><th scope=\"col\" class=\"num\">Late</th><th scope=\"col\" class=\"num\">Took</th>\
             <th scope=\"col\">Outcome</th><th scope=\"col\">Exit</th></tr></thead><tbody>\n",
        );
        for run in runs {
            let exit = run
                .exit_code
                .map(|code| format!("exit {code}"))
                .or_else(|| run.signal.as_ref().map(|s| format!("signal {s}")))
                .or_else(|| run.status.map(|s| format!("HTTP {s}")))
                .unwrap_or_else(|| "-".to_owned());
            let _ = writeln!(
                body,
                "<tr><th scope=\"row\">{}</th><td>{}</td><td><time datetime=\"{}\">{}</time></td><td class=\"num\">{}</td>\
                 <td class=\"num\">{}</td><td>{}{}</td><td>{}</td></tr>",
                run.run_id,
                time(run.started, now, zone),
                run.scheduled.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
                run.scheduled.with_timezone(&zone).format("%H:%M:%S%.3f"),
                lateness(run.lateness_ms),
                short_duration(run.duration_ms),
                outcome(&run.outcome),
                run.reason.as_deref().map_or_else(String::new, |r| format!(" {}", Esc(r))),
                Esc(&exit),
            );
            if let Some(output) = &run.output {
                let _ = writeln!(
                    body,
                    "<tr class=\"output\"><td colspan=\"7\"><details><summary>Output of run {} (its end)</summary><pre>{}</pre></details></td></tr>",
                    run.run_id,
                    Esc(output)
                );
            }
        }
        body.push_str("</tbody></table></div>\n");
    }
    layout(name, Some(&path), Some(daemon), &body)
}

/// A lateness in milliseconds, in the unit that suits it.
fn lateness(ms: f64) -> String {
    if ms < 1.0 {
        format!("{:.0}µs", ms * 1000.0)
    } else {
        short_duration(ms)
    }
}

/// A bucket bound in seconds, short: `10µs`, `5ms`, `1s`.
fn bound(seconds: f64) -> String {
    if seconds < 0.001 {
        format!("{}µs", (seconds * 1e6).round())
    } else if seconds < 1.0 {
        format!("{}ms", (seconds * 1e3 * 100.0).round() / 100.0)
    } else {
        format!("{seconds}s")
    }
}

/// Bars as inline SVG: `(label, value, title, class)` each, scaled to the largest value.
fn bars(id: &str, caption: &str, bars: &[(String, f64, String, &str)]) -> String {
    const WIDTH: f64 = 360.0;
    const HEIGHT: f64 = 100.0;
    let max = bars.iter().map(|b| b.1).fold(0.0_f64, f64::max);
    // At least 10 slots, so that two runs are not two slabs.
    let step = WIDTH / bars.len().max(10) as f64;
    let mut svg = format!(
        "<figure><svg viewBox=\"0 0 {WIDTH} {}\" role=\"img\" aria-labelledby=\"{id}\"><title id=\"{id}\">{}</title>",
        HEIGHT + 16.0,
        Esc(caption)
    );
    for (i, (label, value, title, class)) in bars.iter().enumerate() {
        let h = if max > 0.0 {
            (value / max * HEIGHT).max(if *value > 0.0 { 1.0 } else { 0.0 })
        } else {
            0.0
        };
        let x = i as f64 * step;
        let _ = write!(
            svg,
            "<g class=\"{class}\"><title>{}</title><rect x=\"{:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{h:.1}\"/></g>",
            Esc(title),
            x + step * 0.1,
            HEIGHT - h,
            step * 0.8
        );
        if !label.is_empty() {
            let _ = write!(
                svg,
                "<text x=\"{:.1}\" y=\"{}\" text-anchor=\"middle\">{}</text>",
                x + step / 2.0,
                HEIGHT + 12.0,
                Esc(label)
            );
        }
    }
    let _ = write!(
        svg,
        "<line class=\"axis\" x1=\"0\" y1=\"{HEIGHT}\" x2=\"{WIDTH}\" y2=\"{HEIGHT}\"/>"
    );
    let _ = write!(
        svg,
        "</svg><figcaption>{}</figcaption></figure>",
        Esc(caption)
    );
    svg
}

/// The job's lateness histogram (`tickd_fire_lateness_seconds`), one bar per bucket.
fn lateness_chart(buckets: &Buckets) -> String {
    let count = buckets.count();
    let bars_: Vec<_> = buckets
        .per_bucket()
        .into_iter()
        .map(|(_, le, n)| {
            let label = if le.is_infinite() {
                "more".to_owned()
            } else {
                format!("≤{}", bound(le))
            };
            let title = format!("{label}: {n} fires");
            (label, n as f64, title, "bar")
        })
        .collect();
    let mean = if count > 0 {
        format!(", mean {}", lateness(buckets.sum / count as f64 * 1000.0))
    } else {
        String::new()
    };
    bars(
        "lateness-chart",
        &format!("Lateness of all {count} fires since the start (from due to start{mean})"),
        &bars_,
    )
}

/// The durations of the recent runs, oldest first, coloured by outcome.
fn durations_chart(runs: &[RunRecord]) -> String {
    let bars_: Vec<_> = runs
        .iter()
        .rev()
        .map(|run| {
            let class = if run.outcome == "success" {
                "bar"
            } else {
                "bar bad"
            };
            let title = format!(
                "run {}: {} {}",
                run.run_id,
                short_duration(run.duration_ms),
                run.outcome
            );
            (String::new(), run.duration_ms, title, class)
        })
        .collect();
    let longest = runs.iter().map(|r| r.duration_ms).fold(0.0_f64, f64::max);
    bars(
        "durations-chart",
        &format!(
            "Durations of the last {} runs, oldest first (longest {})",
            runs.len(),
            short_duration(longest)
        ),
        &bars_,
    )
}

/// The login form; `failed` after a wrong token. `next` is where to go after (a local path).
pub fn login_page(failed: bool, next: &str) -> String {
    let mut body = String::from("<h1>Log in</h1>\n");
    if failed {
        body.push_str("<p class=\"notice bad\" role=\"alert\">That is not the token.</p>\n");
    }
    let _ = writeln!(
        body,
        "<p>This daemon's endpoint requires its <code>[daemon] http_token</code>.</p>\
         <form class=\"login\" method=\"post\" action=\"/login\"><label for=\"token\">Token</label> \
         <input id=\"token\" name=\"token\" type=\"password\" autocomplete=\"current-password\" required autofocus>\
         <input type=\"hidden\" name=\"next\" value=\"{}\"> <button type=\"submit\">Log in</button></form>",
        Esc(next)
    );
    // No refresh: a form is being filled in.
    layout("Log in", None, None, &body)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status::{LastRun, RunCounts};

    fn at(text: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(text).expect("time").to_utc()
    }

    fn daemon() -> DaemonView {
        DaemonView {
            version: "0.1.0",
            uptime: std::time::Duration::from_secs(3725),
            facts: DaemonFacts {
                config_path: "/etc/tickd/<jobs>.toml".into(),
                loaded_at: at("2026-01-01T11:00:00Z"),
                started_at: at("2026-01-01T10:58:00Z"),
                started: crate::clock::Instant::from_std(std::time::Instant::now()),
                timezone: "Europe/Berlin".parse().expect("zone"),
                last_reload: Some(crate::status::ReloadResult {
                    at: at("2026-01-01T11:30:00Z"),
                    result: Err("jobs.toml:3:9: job \"x\", key \"every\": <bad>".into()),
                }),
                stopping: Some("recycling: max_runs (100) reached".into()),
            },
            draining: true,
            cluster: None,
            login: true,
            now: at("2026-01-01T12:00:00Z"),
        }
    }

    fn job(schedule: &str, next: Option<&str>, failure: u64) -> JobStatus {
        JobStatus {
            schedule: schedule.into(),
            next_fire: next.map(at),
            runs: RunCounts {
                success: 10,
                failure,
                timeout: 1,
                skipped_overlap: 4,
                missed: 2,
                ..RunCounts::default()
            },
            ..JobStatus::default()
        }
    }

    fn run(run_id: u64, output: Option<&str>) -> RunRecord {
        RunRecord {
            run_id,
            started: at("2026-01-01T11:59:50Z"),
            scheduled: at("2026-01-01T11:59:50Z"),
            lateness_ms: 0.25,
            duration_ms: 1500.0,
            outcome: "failure".into(),
            exit_code: Some(3),
            signal: None,
            status: None,
            reason: Some("exited with code 3".into()),
            node: None,
            output: output.map(str::to_owned),
        }
    }

    #[test]
    fn escaping_covers_text_and_attributes() {
        assert_eq!(
            Esc("<script>alert('1')</script> & \"x\"").to_string(),
            "&lt;script&gt;alert(&#39;1&#39;)&lt;/script&gt; &amp; &quot;x&quot;"
        );
        assert_eq!(Esc("plain").to_string(), "plain");
    }

    #[test]
    fn a_jobs_output_is_shown_as_text_never_as_markup() {
        let status = job("every 1h", None, 0);
        let page = job_page(
            &daemon(),
            "evil",
            &status,
            &[run(7, Some("<script>alert(1)</script>\n"))],
            None,
            None,
        );
        assert!(!page.contains("<script>"), "{page}");
        assert!(
            page.contains("&lt;script&gt;alert(1)&lt;/script&gt;"),
            "{page}"
        );
        // The daemon's facts are escaped too (a path, a reload's problems).
        let page = overview(&daemon(), &[], &ListQuery::default());
        assert!(page.contains("/etc/tickd/&lt;jobs&gt;.toml"), "{page}");
        assert!(
            page.contains("key &quot;every&quot;: &lt;bad&gt;"),
            "{page}"
        );
        // And what was typed in the filter.
        let query = ListQuery {
            q: "\"><script>".into(),
            ..ListQuery::default()
        };
        let page = overview(&daemon(), &[], &query);
        assert!(!page.contains("<script>"), "{page}");
    }

    #[test]
    fn the_overview_shows_every_field_of_a_job_and_of_the_daemon() {
        let mut status = job("every 200ms, aligned", Some("2026-01-01T12:00:04Z"), 3);
        status.run_started(41, at("2026-01-01T11:59:48Z"));
        status.last_run = Some(LastRun {
            run_id: 40,
            started: at("2026-01-01T11:59:30Z"),
            duration_ms: 1234.5,
            outcome: "timeout".into(),
            exit_code: None,
            signal: Some("TERM".into()),
            status: None,
            reason: Some("timed out".into()),
            node: None,
        });
        let page = overview(&daemon(), &[("beat".into(), status)], &ListQuery::default());
        for needle in [
            "<meta name=\"viewport\"",
            "http-equiv=\"refresh\"",
            "<a href=\"/ui/jobs/beat\">beat</a>",
            "every 200 milliseconds, on multiples of the period since the epoch",
            "<code>every 200ms, aligned</code>",
            // Next fire, relative and absolute in the daemon's zone (Berlin: UTC+1).
            "in 4s <time datetime=\"2026-01-01T12:00:04.000Z\">2026-01-01 13:00:04 CET</time>",
            "running</span> for 12s",
            "timeout</span> 1.23s · 30s ago",
            // runs, failures (with timeouts), skips, missed.
            "<td class=\"num\">14</td><td class=\"num\">4</td><td class=\"num\">4</td><td class=\"num\">2</td>",
            // The daemon.
            "v0.1.0",
            "up 1h",
            "loaded 1h ago",
            "refused</span> 30m ago",
            "draining</span> recycling: max_runs (100) reached",
            "Europe/Berlin",
            "action=\"/logout\"",
            "<th scope=\"col\">Job</th>",
        ] {
            assert!(page.contains(needle), "{needle:?} not in:\n{page}");
        }
    }

    #[test]
    fn the_list_filters_by_name_and_sorts_by_next_fire_or_failures() {
        let jobs = vec![
            (
                "alpha".to_owned(),
                job("every 1s", Some("2026-01-01T12:00:09Z"), 0),
            ),
            (
                "beta".to_owned(),
                job("every 1s", Some("2026-01-01T12:00:01Z"), 5),
            ),
            ("gamma".to_owned(), job("every 1s", None, 2)),
            (
                "Alphabet".to_owned(),
                job("every 1s", Some("2026-01-01T12:00:05Z"), 1),
            ),
        ];
        let names = |query: ListQuery| -> Vec<String> {
            select(&jobs, &query)
                .iter()
                .map(|(n, _)| n.clone())
                .collect()
        };
        assert_eq!(
            names(ListQuery::default()),
            ["Alphabet", "alpha", "beta", "gamma"]
        );
        let next = ListQuery {
            sort: Sort::Next,
            ..ListQuery::default()
        };
        assert_eq!(names(next), ["beta", "Alphabet", "alpha", "gamma"]);
        let failures = ListQuery {
            sort: Sort::Failures,
            ..ListQuery::default()
        };
        assert_eq!(names(failures), ["beta", "gamma", "Alphabet", "alpha"]);
        let filtered = ListQuery {
            q: "ALPHA".into(),
            sort: Sort::Failures,
            refresh: None,
        };
        assert_eq!(names(filtered.clone()), ["Alphabet", "alpha"]);
        let page = overview(&daemon(), &jobs, &filtered);
        assert!(page.contains("(2 of 4)"), "{page}");
        assert!(!page.contains("/ui/jobs/beta"), "{page}");
        // The refresh keeps the filter and the order; refresh=0 stops it.
        assert!(page.contains("url=/?sort=failures&amp;q=ALPHA\""), "{page}");
        let quiet = ListQuery {
            refresh: Some(0),
            ..filtered
        };
        assert!(!overview(&daemon(), &jobs, &quiet).contains("http-equiv"));
    }

    #[test]
    fn the_job_page_shows_runs_charts_controls_and_the_refusal() {
        let histograms = JobHistograms {
            lateness: Buckets {
                cumulative: vec![(0.00001, 2), (0.001, 5), (f64::INFINITY, 6)],
                sum: 0.01,
            },
            duration: Buckets::default(),
        };
        let page = job_page(
            &daemon(),
            "beat",
            &job("cron \"0 30 3 * * *\" (UTC)", None, 0),
            &[run(8, None), run(7, Some("hello\n"))],
            Some(&histograms),
            Some(Notice::Refused),
        );
        for needle in [
            "every day at 03:30 (UTC)",
            "action=\"/ui/jobs/beat/run\"",
            "aria-label=\"Run beat now\"",
            "action=\"/ui/jobs/beat/pause\"",
            "Run now refused: a run is still going; the overlap policy refuses this one.",
            "<title>≤10µs: 2 fires</title>",
            "<title>≤1ms: 3 fires</title>",
            "<title>more: 1 fires</title>",
            "Lateness of all 6 fires",
            "<title>run 7: 1.50s failure</title>",
            "250µs",
            "exit 3",
            "exited with code 3",
            "<pre>hello\n</pre>",
            "url=/ui/jobs/beat\"",
        ] {
            assert!(page.contains(needle), "{needle:?} not in:\n{page}");
        }
    }

    #[test]
    fn in_a_cluster_the_daemon_shows_the_node_the_owner_the_epoch_and_the_nodes() {
        let cluster: ClusterStatus = serde_json::from_value(serde_json::json!({
            "node": "web-<2>", "owner": true, "epoch": 7, "window_left_ms": 4000,
            "connected": true, "round_trip_ms": 1.5, "refusal": null, "takeovers": 1,
            "failures": 0, "shards": 2, "shards_owned": [0],
            "nodes": [{"node": "web-1", "shards": [1], "jobs": 3, "fires_per_second": 2.5}]
        }))
        .expect("a ClusterStatus");
        let view = DaemonView {
            cluster: Some(cluster),
            ..daemon()
        };
        let page = overview(&view, &[], &ListQuery::default());
        for needle in [
            "node <strong>web-&lt;2&gt;</strong>, owner, epoch 7, database connected",
            "owns 1 of 2 shards",
            "<th scope=\"row\">web-1</th><td class=\"num\">1</td><td class=\"num\">3</td><td class=\"num\">2.5</td>",
        ] {
            assert!(page.contains(needle), "{needle:?} not in:\n{page}");
        }
    }

    #[test]
    fn schedules_in_words() {
        assert_eq!(schedule_words("every 1h 30m"), "every 1 hour 30 minutes");
        assert_eq!(
            schedule_words("every 5s after each run"),
            "every 5 seconds, counted from the end of each run"
        );
        assert_eq!(
            schedule_words("cron \"*/10 * * * * *\" (UTC)"),
            "every 10 seconds (UTC)"
        );
        assert_eq!(
            schedule_words("cron \"*/5 * * * *\" (UTC)"),
            "every 5 minutes (UTC)"
        );
        assert_eq!(
            schedule_words("cron \"@hourly\" (UTC)"),
            "every hour at minute 0 (UTC)"
        );
        assert_eq!(
            schedule_words("cron \"0 6 */2 * 1-5\" (UTC)"),
            "on a cron schedule (UTC)"
        );
    }

    #[test]
    fn the_login_page_does_not_refresh_and_escapes_next() {
        let page = login_page(true, "/ui/jobs/\"x");
        assert!(!page.contains("http-equiv"), "{page}");
        assert!(page.contains("value=\"/ui/jobs/&quot;x\""), "{page}");
        assert!(
            page.contains("<label for=\"token\">Token</label>"),
            "{page}"
        );
        assert!(page.contains("role=\"alert\""), "{page}");
    }
}
