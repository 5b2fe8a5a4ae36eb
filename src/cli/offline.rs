//! The commands that need no daemon: `check`, `next`, `exec` and `import-crontab`.

use std::io::Write;
use std::path::Path;
use std::sync::Arc;

use chrono::{DateTime, SecondsFormat, Utc};
use chrono_tz::Tz;

use tickd::action::Outcome;
use tickd::config::{ConfigError, JobSpec, Problem, Purpose};
use tickd::schedule::{CronSchedule, EveryMode, Schedule};
use tickd::{Clock, Handlers};

use super::{eprintln_safe, exit, load_config, small_runtime, LogFormat};

/// Runs one job once, here and now, like Laravel's `schedule:test`, as the daemon would: a
/// failed run is retried by the job's `retry` (all its attempts: no next fire cuts them short
/// here) and a final failure runs its `on_failure` hook; `no_retry` skips both.
pub(crate) fn exec(file: &Path, name: &str, no_retry: bool) -> u8 {
    let Some(config) = load_config(file) else {
        return exit::INVALID;
    };
    let Some(spec) = config.jobs().get(name) else {
        eprintln_safe(&format!(
            "tickd: no job named \"{name}\" in {}",
            file.display()
        ));
        return exit::INVALID;
    };
    // The output goes to this terminal.
    let spec = (**spec)
        .clone()
        .with_output(tickd::config::OutputMode::Inherit);
    let Some(runtime) = small_runtime() else {
        return exit::FATAL;
    };
    runtime.block_on(async {
        let env = match tickd::action::RunEnv::new(Clock::system(), Handlers::with_builtins(), None)
        {
            Ok(env) => env,
            Err(err) => {
                eprintln_safe(&format!("tickd: {err}"));
                return exit::FATAL;
            }
        };
        let ids = tickd::handler::RunIds::default();
        let cancel = tokio_util::sync::CancellationToken::new();
        let retry = spec.retry().filter(|_| !no_retry);
        let mut attempt = 0;
        let (run_id, report) = loop {
            let ctx = tickd::RunContext {
                job: spec.name().into(),
                run_id: ids.next(),
                scheduled: env.clock.wall_now(),
                cancel: cancel.clone(),
                cluster: None,
                log_runs: true,
            };
            let run_id = ctx.run_id;
            let report = tickd::action::execute(&spec, ctx, &env).await;
            let failed = matches!(report.outcome, Outcome::Failure | Outcome::Timeout);
            if let Some(reason) = &report.reason {
                eprintln_safe(&format!("tickd: {name}: {}: {reason}", report.outcome));
            }
            let Some(retry) = retry.filter(|r| failed && attempt < r.attempts()) else {
                break (run_id, report);
            };
            attempt += 1;
            let delay = retry.delay(attempt);
            eprintln_safe(&format!(
                "tickd: {name}: {}; retry {attempt} of {} in {}",
                report.outcome,
                retry.attempts(),
                humantime::format_duration(delay)
            ));
            env.clock.sleep(delay).await;
        };
        let failed = matches!(report.outcome, Outcome::Failure | Outcome::Timeout);
        if failed && !no_retry {
            if let Some(hook) =
                tickd::job::run_failure_hook(&spec, run_id, &report, &env, &cancel).await
            {
                eprintln_safe(&format!("tickd: {name}: on_failure hook: {}", hook.outcome));
            }
        }
        match (report.outcome, report.exit_code) {
            (Outcome::Success, _) => exit::OK,
            (_, Some(code)) if (1..=255).contains(&code) => code as u8,
            _ => exit::FATAL,
        }
    })
}

pub(crate) fn import_crontab(file: &Path, system: bool, skip_invalid: bool) -> u8 {
    let text = if file == Path::new("-") {
        let mut text = String::new();
        if let Err(err) = std::io::Read::read_to_string(&mut std::io::stdin(), &mut text) {
            eprintln_safe(&format!("tickd: cannot read standard input: {err}"));
            return exit::INVALID;
        }
        text
    } else {
        match std::fs::read_to_string(file) {
            Ok(text) => text,
            Err(err) => {
                eprintln_safe(&format!("tickd: cannot read {}: {err}", file.display()));
                return exit::INVALID;
            }
        }
    };
    let import = tickd::crontab::import(&text, system, local_zone().as_deref());
    for problem in &import.problems {
        eprintln_safe(&format!("{}:{problem}", file.display()));
    }
    if !import.problems.is_empty() && !skip_invalid {
        eprintln_safe(&format!(
            "tickd: {} line(s) could not be translated; fix them, or pass --skip-invalid to write the jobs file with them as comments",
            import.problems.len()
        ));
        return exit::INVALID;
    }
    let mut stdout = std::io::stdout().lock();
    match stdout
        .write_all(import.toml.as_bytes())
        .and_then(|()| stdout.flush())
    {
        Ok(()) => exit::OK,
        // A reader that stopped early (`| head`) asked for no more.
        Err(err) if err.kind() == std::io::ErrorKind::BrokenPipe => exit::OK,
        // Anything else leaves a jobs file cut short: it must not look like a success.
        Err(err) => {
            eprintln_safe(&format!("tickd: cannot write the jobs file: {err}"));
            exit::FATAL
        }
    }
}

/// The machine's IANA zone, from `$TZ` or the `/etc/localtime` link.
fn local_zone() -> Option<String> {
    let zone = std::env::var("TZ").ok().or_else(|| {
        let target = std::fs::read_link("/etc/localtime").ok()?;
        let target = target.to_string_lossy().into_owned();
        target
            .split_once("zoneinfo/")
            .map(|(_, zone)| zone.to_owned())
    })?;
    zone.parse::<Tz>().is_ok().then_some(zone)
}

/// `tickd check`: exit 2 on problems; warnings (a valid file that will not do what it says:
/// no jobs, a user, program or `cwd` that is not on this machine) exit 0, or 2 with `strict`.
/// With `--log-format json`, each problem and warning is one JSON object on a line of stderr.
pub(crate) fn check(file: &Path, strict: bool, format: LogFormat) -> u8 {
    let handlers = Handlers::with_builtins();
    let config = match tickd::config::load_for(file, &handlers, Purpose::Check) {
        Ok(config) => config,
        Err(err) => {
            match (format, &err) {
                (LogFormat::Json, ConfigError::Invalid { problems }) => {
                    for problem in problems {
                        let json = problem_json(file, Some(problem), "error", &problem.message);
                        eprintln_safe(&json);
                    }
                }
                (LogFormat::Json, _) => {
                    eprintln_safe(&problem_json(file, None, "error", &err.to_string()));
                }
                (LogFormat::Human, _) => tracing::error!("invalid configuration:\n{err}"),
            }
            return exit::INVALID;
        }
    };
    let mut out = std::io::stdout().lock();
    let warnings = config.warnings();
    for warning in warnings {
        match format {
            LogFormat::Json => {
                let json = problem_json(file, Some(warning), "warning", &warning.message);
                eprintln_safe(&json);
            }
            LogFormat::Human => eprintln_safe(&format!("warning: {warning}")),
        }
    }
    let count = config.jobs().len();
    let noun = if count == 1 { "job" } else { "jobs" };
    let _ = writeln!(out, "{}: OK, {count} {noun}", file.display());
    for spec in config.jobs().values() {
        let _ = writeln!(out, "  {}: {}", spec.name(), spec.schedule());
    }
    if strict && !warnings.is_empty() {
        if let LogFormat::Human = format {
            eprintln_safe(&format!(
                "tickd: {} warning(s), and --strict makes them errors",
                warnings.len()
            ));
        }
        return exit::INVALID;
    }
    exit::OK
}

/// One problem of `tickd check --log-format json`: `file`, `line`, `column`, `job`, `key`
/// (each `null` when unknown, as for a file that cannot be read), `severity` and `message`.
fn problem_json(file: &Path, problem: Option<&Problem>, severity: &str, message: &str) -> String {
    let file = problem.map_or(file, |p| p.path.as_path());
    serde_json::json!({
        "file": file.display().to_string(),
        "line": problem.map(|p| p.line),
        "column": problem.map(|p| p.column),
        "job": problem.and_then(|p| p.job.as_deref()),
        "key": problem.and_then(|p| p.key.as_deref()),
        "severity": severity,
        "message": message,
    })
    .to_string()
}

pub(crate) fn next(
    file: &Path,
    job: Option<&str>,
    count: usize,
    cron: Option<&str>,
    tz: &str,
    after: Option<&str>,
) -> u8 {
    let after_arg = after;
    let after = match after.map(DateTime::parse_from_rfc3339) {
        None => Clock::system().wall_now(),
        Some(Ok(t)) => t.with_timezone(&Utc),
        Some(Err(err)) => {
            eprintln_safe(&format!("tickd: invalid --after time: {err}"));
            return exit::INVALID;
        }
    };
    let mut out = std::io::stdout().lock();
    if let Some(expression) = cron {
        let Ok(zone) = tz.parse::<Tz>() else {
            eprintln_safe(&format!("tickd: unknown time zone \"{tz}\""));
            return exit::INVALID;
        };
        let schedule = match CronSchedule::parse(expression, zone) {
            Ok(schedule) => schedule,
            Err(err) => {
                eprintln_safe(&format!("tickd: {err}"));
                return exit::INVALID;
            }
        };
        for time in upcoming_cron(&schedule, after, count) {
            let _ = writeln!(out, "{}", rfc3339(&time.with_timezone(&zone)));
        }
        return exit::OK;
    }
    let Some(config) = load_config(file) else {
        return exit::INVALID;
    };
    let jobs: Vec<&Arc<JobSpec>> = match job {
        Some(name) => match config.jobs().get(name) {
            Some(spec) => vec![spec],
            None => {
                eprintln_safe(&format!(
                    "tickd: no job named \"{name}\" in {}",
                    file.display()
                ));
                return exit::INVALID;
            }
        },
        None => config.jobs().values().collect(),
    };
    // The daemon's own grid, when it runs this file and answers (and no other start is asked
    // for): its jobs' grids started when it did, which no offline computation can know.
    let grid = match (config.daemon().http(), after_arg) {
        (Some(_), None) => match super::client::daemon_grid(file, &config) {
            Ok(grid) => {
                let _ = writeln!(
                    out,
                    "from the daemon running at {}: its next fires (GET /jobs)",
                    grid.addr
                );
                Some(grid)
            }
            Err(why) => {
                let why = why.strip_prefix("tickd: ").unwrap_or(&why);
                let _ = writeln!(out, "computed offline: {why}");
                None
            }
        },
        _ => None,
    };
    let machine_id = tickd::job::machine_id();
    let now = Clock::system().read();
    let now = tickd::clock::Now { wall: after, ..now };
    for spec in jobs {
        let _ = writeln!(out, "{} ({}):", spec.name(), spec.schedule());
        if let Some(grid) = &grid {
            match grid.next_fires.get(spec.name()) {
                Some(next) => {
                    print_times(&mut out, spec, &daemon_times(spec, *next, count));
                    continue;
                }
                None => {
                    let _ = writeln!(
                        out,
                        "  (not in the running daemon: computed offline; reload it to apply the file)"
                    );
                }
            }
        }
        let upcoming = tickd::job::upcoming(spec, &machine_id, now, count);
        // A stable (`spread`) delay is part of every fire time; a random one can only be told.
        if let Some(max) = upcoming.random_delay {
            let _ = writeln!(
                out,
                "  (each run starts after a random delay of up to {})",
                humantime::format_duration(max)
            );
        }
        print_times(&mut out, spec, &upcoming.times);
    }
    exit::OK
}

/// Up to `count` fires from the daemon's `next` on: its grid goes on by the period, or by the
/// calendar. A fixed delay depends on how long the runs take, so only the next one is known.
fn daemon_times(spec: &JobSpec, next: Option<DateTime<Utc>>, count: usize) -> Vec<DateTime<Utc>> {
    let after = |time: &DateTime<Utc>| match spec.schedule() {
        Schedule::Every(every) if every.mode == EveryMode::FixedRate => {
            chrono::Duration::from_std(every.period)
                .ok()
                .and_then(|period| time.checked_add_signed(period))
        }
        Schedule::Every(_) => None,
        Schedule::Cron(cron) => cron.next_after(*time),
    };
    std::iter::successors(next, after).take(count).collect()
}

/// The fire times of `spec`, one a line; a cron job's in its zone, then in UTC.
fn print_times(out: &mut impl Write, spec: &JobSpec, times: &[DateTime<Utc>]) {
    if times.is_empty() {
        let _ = writeln!(out, "  (no fire ahead: paused, or past its last)");
    }
    for time in times {
        match spec.schedule() {
            Schedule::Every(_) => {
                let _ = writeln!(out, "  {}", rfc3339(time));
            }
            Schedule::Cron(cron) => {
                let local = time.with_timezone(&cron.timezone());
                let _ = writeln!(out, "  {}  ({})", rfc3339(&local), rfc3339(time));
            }
        }
    }
}

/// The next `count` fires of one cron expression after `after`.
fn upcoming_cron(cron: &CronSchedule, after: DateTime<Utc>, count: usize) -> Vec<DateTime<Utc>> {
    std::iter::successors(cron.next_after(after), |t| cron.next_after(*t))
        .take(count)
        .collect()
}

fn rfc3339<Z: chrono::TimeZone>(time: &DateTime<Z>) -> String
where
    Z::Offset: std::fmt::Display,
{
    time.to_rfc3339_opts(SecondsFormat::AutoSi, true)
}
