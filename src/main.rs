//! The `tickd` binary: command line, logging, OS signals and exit codes around the library.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use chrono::{DateTime, SecondsFormat, Utc};
use chrono_tz::Tz;
use clap::{Parser, Subcommand, ValueEnum};

use tickd::config::{Config, JobSpec};
use tickd::schedule::{CronSchedule, Schedule};
use tickd::{Clock, DaemonOptions, Handlers, Stopped};

/// Exit codes, documented in README.md.
mod exit {
    /// Clean stop, every run drained.
    pub const OK: u8 = 0;
    /// Fatal runtime error.
    pub const FATAL: u8 = 1;
    /// Invalid configuration or usage.
    pub const INVALID: u8 = 2;
    /// Stopped, but runs had to be stopped after the drain timeout.
    pub const RUNS_STOPPED: u8 = 3;
    /// Recycled (`max_uptime`): the process manager should start a fresh daemon (EX_TEMPFAIL).
    pub const RECYCLE: u8 = 75;
}

#[derive(Parser)]
#[command(
    name = "tickd",
    version,
    about = "A job scheduler that replaces minutely cron"
)]
struct Cli {
    /// Log format on stderr.
    #[arg(long, value_enum, global = true, default_value_t = LogFormat::Human)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Human,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Run the daemon.
    Run {
        /// The jobs file.
        #[arg(default_value = "jobs.toml")]
        file: PathBuf,
        /// Reap orphaned descendants (child subreaper); on by default when tickd is PID 1.
        #[arg(long)]
        subreaper: bool,
    },
    /// Validate the jobs file without running anything (exit 0 when valid, 2 when not).
    Check {
        /// The jobs file.
        #[arg(default_value = "jobs.toml")]
        file: PathBuf,
    },
    /// Print the next fire times of each job, or of one cron expression (`--cron`).
    Next {
        /// The jobs file (ignored with --cron).
        #[arg(default_value = "jobs.toml")]
        file: PathBuf,
        /// Only this job.
        #[arg(long)]
        job: Option<String>,
        /// How many fire times.
        #[arg(short = 'n', default_value_t = 5)]
        count: usize,
        /// A cron expression to evaluate instead of a file: prints one RFC 3339 time per line.
        #[arg(long)]
        cron: Option<String>,
        /// The time zone for --cron (IANA name).
        #[arg(long, default_value = "UTC", requires = "cron")]
        tz: String,
        /// Start after this RFC 3339 time instead of now.
        #[arg(long)]
        after: Option<String>,
    },
    /// Show the jobs of a running daemon (through its [daemon] http endpoint).
    Status {
        /// The jobs file (for the endpoint's address and token).
        #[arg(default_value = "jobs.toml")]
        file: PathBuf,
        /// Print the endpoint's JSON.
        #[arg(long)]
        json: bool,
    },
    /// Ask a running daemon to run a job now (subject to its overlap policy).
    RunNow {
        /// The job.
        name: String,
        /// The jobs file (for the endpoint's address and token).
        #[arg(default_value = "jobs.toml")]
        file: PathBuf,
    },
    /// Run a job once in the foreground, without a daemon: its output on this terminal, its exit
    /// code as ours.
    Exec {
        /// The job.
        name: String,
        /// The jobs file.
        #[arg(default_value = "jobs.toml")]
        file: PathBuf,
    },
    /// Turn a crontab into a jobs file on stdout.
    ImportCrontab {
        /// The crontab (`-`: standard input).
        #[arg(default_value = "-")]
        file: PathBuf,
        /// The system format (/etc/crontab, /etc/cron.d): a user column before the command.
        #[arg(long)]
        system: bool,
        /// Write the lines that cannot be translated as comments (reported on stderr) and exit 0.
        #[arg(long)]
        skip_invalid: bool,
    },
    /// Internal: the group keeper a daemon starts (kills its jobs' process groups if it dies).
    #[command(name = "__keeper", hide = true)]
    Keeper,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let log_writer = init_logging(cli.log_format);
    let code = match cli.command {
        Command::Run { file, subreaper } => run_daemon(&file, subreaper || std::process::id() == 1),
        Command::Check { file } => check(&file),
        Command::Next {
            file,
            job,
            count,
            cron,
            tz,
            after,
        } => next(
            &file,
            job.as_deref(),
            count,
            cron.as_deref(),
            &tz,
            after.as_deref(),
        ),
        Command::Status { file, json } => status(&file, json),
        Command::RunNow { name, file } => run_now(&file, &name),
        Command::Exec { name, file } => exec(&file, &name),
        Command::ImportCrontab {
            file,
            system,
            skip_invalid,
        } => import_crontab(&file, system, skip_invalid),
        Command::Keeper => {
            tickd::process::keeper_main(std::io::stdin().lock());
            exit::OK
        }
    };
    flush_log(log_writer);
    ExitCode::from(code)
}

/// How many formatted lines the log queue holds before new ones are dropped: a burst (a status
/// report, a reload of many jobs) fits, while a stderr nobody reads costs at most about 1 MB.
const LOG_QUEUE_LINES: usize = 4096;

/// How often the dropped-lines count is copied into the metric and reported.
const LOG_DROPS_CHECK: std::time::Duration = std::time::Duration::from_secs(1);

/// Sets up logging to stderr through a writer thread; the guard flushes it (see [`flush_log`]).
///
/// Lines are formatted where they are logged and queued (bounded, lossy) for the `tickd-log`
/// thread, which alone writes to stderr: a stderr that blocks (a pipe nobody reads) stalls that
/// thread, never a job task or the shutdown. Lines that do not fit are dropped and counted (see
/// [`DroppedLines`]).
fn init_logging(format: LogFormat) -> tracing_appender::non_blocking::WorkerGuard {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("TICKD_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .lossy(true)
        .buffered_lines_limit(LOG_QUEUE_LINES)
        .thread_name("tickd-log")
        .finish(std::io::stderr());
    let dropped = writer.error_counter();
    // Write errors (a closed or full stderr) are dropped instead of reported with `eprintln!`,
    // which would panic: logging must never stop the scheduler.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer)
        .log_internal_errors(false);
    match format {
        LogFormat::Human => builder.with_ansi(false).init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
    // Without this thread, lines would still be dropped, just not counted or reported.
    let _ = std::thread::Builder::new()
        .name("tickd-log-drops".into())
        .spawn(move || {
            let mut reported = DroppedLines::default();
            loop {
                std::thread::sleep(LOG_DROPS_CHECK);
                reported.check(dropped.dropped_lines() as u64, || {
                    dropped.dropped_lines() as u64
                });
            }
        });
    guard
}

/// What [`DroppedLines::check`] has counted and reported so far.
#[derive(Debug, Default)]
struct DroppedLines {
    /// Drops already added to `tickd_log_lines_dropped_total`.
    counted: u64,
    /// Drops already told about in the log.
    reported: u64,
}

impl DroppedLines {
    /// Adds new drops (`total` so far) to the metric and logs how many lines were lost since the
    /// last notice. The notice is queued like any line: if it is dropped too (`total_after`
    /// moved), the queue is still full and it is tried again at the next check, counting itself.
    fn check(&mut self, total: u64, total_after: impl FnOnce() -> u64) {
        tickd::status::LOG_LINES_DROPPED.inc_by(total.saturating_sub(self.counted));
        self.counted = self.counted.max(total);
        if total > self.reported {
            tracing::warn!(
                dropped = total - self.reported,
                "log lines were dropped: stderr was not keeping up"
            );
            if total_after() == total {
                self.reported = total;
            }
        }
    }
}

/// Flushes the log queue at exit (waiting about a second at most if stderr is stuck), so the
/// last lines ("shut down") are written.
fn flush_log(guard: tracing_appender::non_blocking::WorkerGuard) {
    // When the queue stays full, the guard reports it with `println!`, which panics on a broken
    // stdout, and a panic message would go to the stuck stderr: neither may change the exit.
    std::panic::set_hook(Box::new(|_| {}));
    let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| drop(guard)));
}

/// Loads a config with the binary's handlers, printing the problems on failure.
fn load_config(file: &Path) -> Option<Config> {
    match tickd::load(file, &Handlers::with_builtins()) {
        Ok(config) => Some(config),
        Err(err) => {
            tracing::error!("invalid configuration:\n{err}");
            None
        }
    }
}

fn run_daemon(file: &Path, subreaper: bool) -> u8 {
    // Before the runtime, so that its threads and everything they open see the raised limit.
    raise_descriptor_limit();
    // Until `os_controls` listens, a control signal waits instead of being lost (see there).
    if let Err(err) = tickd::signals::hold_control_signals() {
        tracing::error!("cannot block signals: {err}");
        return exit::FATAL;
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("tickd-worker")
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            tracing::error!("cannot start the runtime: {err}");
            return exit::FATAL;
        }
    };
    runtime.block_on(async {
        // Signal handlers go in before anything else, so an early SIGHUP or SIGTERM is never
        // fatal by default disposition. This is the thread that held them, as it must be.
        let controls = match tickd::signals::os_controls() {
            Ok(controls) => controls,
            Err(err) => {
                tracing::error!("cannot install signal handlers: {err}");
                return exit::FATAL;
            }
        };
        let Some(config) = load_config(file) else {
            return exit::INVALID;
        };
        let options = DaemonOptions {
            config_path: file.to_owned(),
            handlers: Handlers::with_builtins(),
            clock: Clock::system(),
            group_keeper: keeper_program(),
            subreaper,
            notifier: match tickd::notify::Notifier::from_env() {
                Ok(notifier) => notifier,
                Err(err) => {
                    tracing::warn!("NOTIFY_SOCKET is set but unusable, not notifying: {err}");
                    None
                }
            },
        };
        match tickd::run(config, options, controls).await {
            Ok(Stopped::Drained) => exit::OK,
            Ok(Stopped::RunsStopped) => exit::RUNS_STOPPED,
            Ok(Stopped::Recycled { .. }) => exit::RECYCLE,
            Err(err) => {
                tracing::error!("{err}");
                exit::FATAL
            }
        }
    })
}

/// Raises the soft descriptor limit (`RLIMIT_NOFILE`) to the hard one, as many daemons do: the
/// usual soft limit of 1,024 (systemd's default, which `contrib/systemd/tickd.service` raises) is
/// little for a daemon whose runs and HTTP clients each hold descriptors, and running out makes
/// every run fail with EMFILE. Children get the original soft limit back (see
/// `tickd::process::set_child_descriptor_limit`). A failure leaves the limit as it was: the HTTP
/// endpoint sizes its connection cap from the limit it finds.
fn raise_descriptor_limit() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (soft, hard) = match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok(limits) => limits,
        Err(err) => {
            tracing::warn!("cannot read the descriptor limit: {err}");
            return;
        }
    };
    if soft >= hard {
        tracing::debug!(
            limit = soft,
            "the descriptor limit is already the hard limit"
        );
        return;
    }
    match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
        Ok(()) => {
            tickd::process::set_child_descriptor_limit(soft, hard);
            tracing::debug!(from = soft, to = hard, "raised the descriptor limit");
        }
        Err(err) => {
            tracing::warn!(
                limit = soft,
                "cannot raise the descriptor limit to {hard}: {err}"
            );
        }
    }
}

/// This binary, for the group keeper; without it (no /proc?) only each run's first process is
/// tied to the daemon's life.
fn keeper_program() -> Option<PathBuf> {
    match std::env::current_exe() {
        Ok(path) => Some(path),
        Err(err) => {
            tracing::warn!("cannot find my own binary, running without a group keeper: {err}");
            None
        }
    }
}

/// A single-threaded runtime for the short-lived commands.
fn small_runtime() -> Option<tokio::runtime::Runtime> {
    match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => Some(runtime),
        Err(err) => {
            eprintln_safe(&format!("tickd: cannot start the runtime: {err}"));
            None
        }
    }
}

/// Calls the endpoint named in the config: `GET` or `POST` `path`; returns status and body.
fn call_endpoint(file: &Path, post: bool, path: &str) -> Result<(u16, String), u8> {
    let config = load_config(file).ok_or(exit::INVALID)?;
    let Some(mut addr) = config.daemon.http else {
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
        if let Some(token) = &config.daemon.http_token {
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

fn status(file: &Path, json: bool) -> u8 {
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
        let total = count("success") + count("failure") + count("timeout") + count("killed");
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

fn run_now(file: &Path, name: &str) -> u8 {
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

/// Runs one job once, here and now, like Laravel's `schedule:test`.
fn exec(file: &Path, name: &str) -> u8 {
    let Some(config) = load_config(file) else {
        return exit::INVALID;
    };
    let Some(spec) = config.jobs.get(name) else {
        eprintln_safe(&format!(
            "tickd: no job named \"{name}\" in {}",
            file.display()
        ));
        return exit::INVALID;
    };
    let mut spec = (**spec).clone();
    // The output goes to this terminal.
    spec.output = tickd::config::OutputMode::Inherit;
    let Some(runtime) = small_runtime() else {
        return exit::FATAL;
    };
    runtime.block_on(async {
        let env =
            match tickd::run::RunEnv::new(Clock::system(), Handlers::with_builtins(), None, None) {
                Ok(env) => env,
                Err(err) => {
                    eprintln_safe(&format!("tickd: {err}"));
                    return exit::FATAL;
                }
            };
        let ctx = tickd::RunContext {
            job: spec.name.as_str().into(),
            run_id: env.next_run_id(),
            scheduled: env.clock.wall_now(),
            cancel: env.stop_runs.child_token(),
        };
        let report = tickd::run::execute(&spec, ctx, &env).await;
        if let Some(reason) = &report.reason {
            eprintln_safe(&format!("tickd: {name}: {}: {reason}", report.outcome));
        }
        match (report.outcome, report.exit_code) {
            (tickd::run::Outcome::Success, _) => exit::OK,
            (_, Some(code)) if (1..=255).contains(&code) => code as u8,
            _ => exit::FATAL,
        }
    })
}

fn import_crontab(file: &Path, system: bool, skip_invalid: bool) -> u8 {
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

fn check(file: &Path) -> u8 {
    let Some(config) = load_config(file) else {
        return exit::INVALID;
    };
    let mut out = std::io::stdout().lock();
    for warning in &config.warnings {
        eprintln_safe(&warning.to_string());
    }
    let _ = writeln!(out, "{}: OK, {} jobs", file.display(), config.jobs.len());
    for spec in config.jobs.values() {
        let _ = writeln!(out, "  {}: {}", spec.name, spec.schedule);
    }
    exit::OK
}

fn next(
    file: &Path,
    job: Option<&str>,
    count: usize,
    cron: Option<&str>,
    tz: &str,
    after: Option<&str>,
) -> u8 {
    let after = match after.map(DateTime::parse_from_rfc3339) {
        None => Utc::now(),
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
    let jobs: Vec<&JobSpec> = match job {
        Some(name) => match config.jobs.get(name) {
            Some(spec) => vec![spec],
            None => {
                eprintln_safe(&format!(
                    "tickd: no job named \"{name}\" in {}",
                    file.display()
                ));
                return exit::INVALID;
            }
        },
        None => config.jobs.values().map(|s| s.as_ref()).collect(),
    };
    let machine_id = tickd::run::machine_id();
    for spec in jobs {
        let _ = writeln!(out, "{} ({}):", spec.name, spec.schedule);
        // A stable (`spread`) delay is part of every fire time; a random one can only be told.
        let delay = match spec.jitter {
            Some(jitter) if jitter.spread => chrono::Duration::from_std(
                tickd::schedule::stable_delay(&machine_id, &spec.name, jitter.max),
            )
            .unwrap_or_default(),
            Some(jitter) => {
                let _ = writeln!(
                    out,
                    "  (each run starts after a random delay of up to {})",
                    humantime::format_duration(jitter.max)
                );
                chrono::Duration::zero()
            }
            None => chrono::Duration::zero(),
        };
        match &spec.schedule {
            Schedule::Every(every) => {
                let period = chrono::Duration::from_std(every.period).unwrap_or_default();
                let first = if every.align {
                    let since_epoch = after.signed_duration_since(DateTime::UNIX_EPOCH);
                    let offset = tickd::schedule::offset_past_alignment(
                        every.period,
                        since_epoch.to_std().unwrap_or_default(),
                    );
                    after - chrono::Duration::from_std(offset).unwrap_or_default() + period
                } else {
                    after + period
                };
                for k in 0..count {
                    let time = first + period * i32::try_from(k).unwrap_or(i32::MAX) + delay;
                    let _ = writeln!(out, "  {}", rfc3339(&time));
                }
            }
            Schedule::Cron(cron) => {
                for time in upcoming_cron(cron, after, count) {
                    let time = time + delay;
                    let local = time.with_timezone(&cron.timezone());
                    let _ = writeln!(out, "  {}  ({})", rfc3339(&local), rfc3339(&time));
                }
            }
        }
    }
    exit::OK
}

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

/// Writes to stderr, ignoring a closed stderr (`eprintln!` would panic).
fn eprintln_safe(message: &str) {
    let _ = writeln!(std::io::stderr(), "{message}");
}
