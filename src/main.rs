//! The `tickd` binary: the command line, parsed here and dispatched to [`cli`]'s commands.

mod cli;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand};

use cli::{client, daemon, exit, generate, logging, offline, LogFormat, LogTimeArg};

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
        /// The zone of the log's times: utc (`Z`) or local (the machine's zone, `TZ`, with its
        /// offset).
        #[arg(long, value_enum, default_value_t = LogTimeArg::Utc)]
        log_time: LogTimeArg,
    },
    /// Validate the jobs file without running anything (exit 0 when valid, 2 when not).
    Check {
        /// The jobs file.
        #[arg(default_value = "jobs.toml")]
        file: PathBuf,
        /// Exit 2 on warnings too (no jobs, a user, program or cwd not on this machine). With
        /// `--log-format json`, each problem and warning is a JSON object on a line of stderr.
        #[arg(long)]
        strict: bool,
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
    /// Pause a job of a running daemon: it fires nothing until resumed (its runs in flight go
    /// on).
    Pause {
        /// The job.
        name: String,
        /// The jobs file (for the endpoint's address and token).
        #[arg(default_value = "jobs.toml")]
        file: PathBuf,
    },
    /// Resume a paused job of a running daemon.
    Resume {
        /// The job.
        name: String,
        /// The jobs file (for the endpoint's address and token).
        #[arg(default_value = "jobs.toml")]
        file: PathBuf,
    },
    /// Show a job's last runs on a running daemon, newest first ([daemon] history).
    History {
        /// The job.
        name: String,
        /// The jobs file (for the endpoint's address and token).
        #[arg(default_value = "jobs.toml")]
        file: PathBuf,
    },
    /// Print the output of a job's last run on a running daemon (its end: [daemon]
    /// history_output).
    Logs {
        /// The job.
        name: String,
        /// The jobs file (for the endpoint's address and token).
        #[arg(default_value = "jobs.toml")]
        file: PathBuf,
        /// Wait for the next run to end, and print its output instead.
        #[arg(short, long)]
        follow: bool,
    },
    /// Run a job once in the foreground, without a daemon: its output on this terminal, its exit
    /// code as ours; a failure is retried and runs `on_failure` as the daemon would.
    Exec {
        /// The job.
        name: String,
        /// The jobs file.
        #[arg(default_value = "jobs.toml")]
        file: PathBuf,
        /// Run it once only: no retries (`retry`) and no `on_failure` hook after a failure.
        #[arg(long)]
        no_retry: bool,
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
    /// Print the man page (roff), or write one page per command into a directory.
    Man {
        /// Write tickd.1, tickd-run.1, ... into this directory instead.
        #[arg(long, value_name = "DIR")]
        out_dir: Option<PathBuf>,
    },
    /// Print a shell completion script (e.g. `tickd completions bash > /etc/bash_completion.d/tickd`).
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Print the JSON Schema of the jobs file, for editors (`#:schema` in taplo / Even Better TOML).
    Schema,
    /// Internal: the group keeper a daemon starts (kills its jobs' process groups if it dies).
    #[command(name = "__keeper", hide = true)]
    Keeper,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Before any thread starts (the log's are the first): a thread that does not block the
    // control signals could take one while tokio registers its listeners, and lose it.
    let held =
        matches!(cli.command, Command::Run { .. }).then(tickd::signals::hold_control_signals);
    let log_time = match cli.command {
        Command::Run { log_time, .. } => log_time,
        _ => LogTimeArg::Utc,
    };
    let daemon = matches!(cli.command, Command::Run { .. });
    let log_writer = match logging::init_logging(cli.log_format, log_time.into(), daemon) {
        Ok(guard) => guard,
        Err(err) => {
            cli::eprintln_safe(&format!("tickd: {err}"));
            return ExitCode::from(match err {
                logging::LogSetupError::Filter(_) => exit::INVALID,
                logging::LogSetupError::Thread(_) => exit::FATAL,
            });
        }
    };
    let code = match cli.command {
        Command::Run {
            file, subreaper, ..
        } => match held {
            Some(Err(err)) => {
                tracing::error!("cannot block signals: {err}");
                exit::FATAL
            }
            _ => daemon::run_daemon(&file, subreaper || std::process::id() == 1),
        },
        Command::Check { file, strict } => offline::check(&file, strict, cli.log_format),
        Command::Next {
            file,
            job,
            count,
            cron,
            tz,
            after,
        } => offline::next(
            &file,
            job.as_deref(),
            count,
            cron.as_deref(),
            &tz,
            after.as_deref(),
        ),
        Command::Status { file, json } => client::status(&file, json),
        Command::RunNow { name, file } => client::run_now(&file, &name),
        Command::Pause { name, file } => client::set_paused(&file, &name, true),
        Command::Resume { name, file } => client::set_paused(&file, &name, false),
        Command::History { name, file } => client::history(&file, &name),
        Command::Logs { name, file, follow } => client::logs(&file, &name, follow),
        Command::Exec {
            name,
            file,
            no_retry,
        } => offline::exec(&file, &name, no_retry),
        Command::ImportCrontab {
            file,
            system,
            skip_invalid,
        } => offline::import_crontab(&file, system, skip_invalid),
        Command::Man { out_dir } => generate::man(Cli::command(), out_dir.as_deref()),
        Command::Completions { shell } => generate::completions(Cli::command(), shell),
        Command::Schema => generate::schema(),
        Command::Keeper => {
            tickd::process::keeper_main(std::io::stdin().lock());
            exit::OK
        }
    };
    // The last lines ("shut down") written, waiting about a second at most if stderr is stuck.
    drop(log_writer);
    ExitCode::from(code)
}
