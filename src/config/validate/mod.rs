//! Phase 2: raw values into the typed [`Config`]. Every problem is collected, not just the
//! first, located at the value it is about and reported in file order; a job with any problem
//! is left out, and a configuration with any problem is refused whole.
//!
//! One file per part of the file: [`daemon`] (the `[daemon]` table), [`job`] (a job and its
//! run policies), [`schedule`], [`action`] and [`http`]. The value parsers they share are in
//! [`super::values`]; this file holds the [`Validator`] that locates and collects problems.

mod action;
mod cluster;
mod daemon;
mod http;
mod job;
mod schedule;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use chrono_tz::Tz;
use toml::Spanned;

use super::error::{Locator, Problem};
use super::raw::RawConfig;
use super::spec::Config;
use super::values::{self, DurationRange};
use super::Purpose;
use crate::handler::Handlers;

/// Validates `raw`, the text `locator` holds; `handlers` names the handlers a job may use, and
/// `problems` are those phase 1 found (in the parts it left out or trimmed).
pub(super) fn config(
    locator: &Locator<'_>,
    handlers: &Handlers,
    purpose: Purpose,
    raw: RawConfig,
    problems: Vec<Problem>,
) -> Result<Config, Vec<Problem>> {
    Validator {
        locator,
        handlers,
        purpose,
        problems,
        warnings: Vec::new(),
        programs: Default::default(),
    }
    .config(raw)
}

/// Collects the problems (and warnings) of one file while its parts are validated.
struct Validator<'a> {
    locator: &'a Locator<'a>,
    handlers: &'a Handlers,
    /// Whether what this machine lacks is an error (to run) or a warning (to check).
    purpose: Purpose,
    problems: Vec<Problem>,
    warnings: Vec<Problem>,
    /// The programs of command jobs, found once each (checks only).
    programs: crate::process::ProgramFinder,
}

/// The job and key a value belongs to, for messages.
#[derive(Clone, Copy)]
struct At<'a> {
    job: Option<&'a str>,
    key: &'a str,
}

impl<'a> At<'a> {
    /// A key of the `[daemon]` table (named with its `daemon.` prefix).
    fn daemon(key: &'a str) -> Self {
        At { job: None, key }
    }

    /// A key of the job `job`.
    fn job(job: &'a str, key: &'a str) -> Self {
        At {
            job: Some(job),
            key,
        }
    }
}

impl Validator<'_> {
    fn config(mut self, raw: RawConfig) -> Result<Config, Vec<Problem>> {
        let daemon = self.daemon(&raw.daemon);
        let cluster = raw.cluster.as_ref().and_then(|v| self.cluster(v));
        let clustered = raw.cluster.is_some();
        let no_jobs_on_purpose = raw.jobs.as_ref().is_some_and(BTreeMap::is_empty);
        let mut jobs = BTreeMap::new();
        for (name, job) in raw.jobs.unwrap_or_default() {
            if let Some(spec) = self.job(&name, job, &daemon, clustered) {
                jobs.insert(name, Arc::new(spec));
            }
        }
        if self.purpose == Purpose::Check && jobs.is_empty() && self.problems.is_empty() {
            let warning = self.locator.problem(
                0,
                None,
                None,
                "no jobs: tickd would run and fire nothing".to_owned(),
            );
            self.warnings.push(warning);
        }
        if !self.problems.is_empty() {
            // A stable sort: problems at the same place keep the order they were found in.
            self.problems.sort_by_key(|p| (p.line, p.column));
            return Err(self.problems);
        }
        Ok(Config {
            source: self.locator.path.to_owned(),
            daemon,
            jobs,
            warnings: self.warnings,
            no_jobs_on_purpose,
            cluster,
        })
    }

    /// A problem at byte `offset` of the file.
    fn report(&mut self, offset: usize, job: Option<&str>, key: Option<&str>, message: String) {
        let problem = self.locator.problem(offset, job, key, message);
        self.problems.push(problem);
    }

    /// A problem with `value`.
    fn reject<T>(&mut self, value: &Spanned<T>, at: At<'_>, message: String) {
        self.report(value.span().start, at.job, Some(at.key), message);
    }

    /// Something `value` asks of this machine that it lacks: an error when the configuration
    /// is to run, a warning when it is only checked (see [`Purpose`]).
    fn lacking<T>(&mut self, value: &Spanned<T>, at: At<'_>, message: String) {
        match self.purpose {
            Purpose::Run => self.reject(value, at, message),
            Purpose::Check => self.warn(value, at, message),
        }
    }

    /// Something about `value` that loads but deserves a look.
    fn warn<T>(&mut self, value: &Spanned<T>, at: At<'_>, message: String) {
        let warning = self
            .locator
            .problem(value.span().start, at.job, Some(at.key), message);
        self.warnings.push(warning);
    }

    /// `value` parsed by `parse`, or `None` with the parser's message reported.
    fn checked<V, T>(
        &mut self,
        value: &Spanned<V>,
        at: At<'_>,
        parse: impl FnOnce(&V) -> Result<T, String>,
    ) -> Option<T> {
        parse(value.get_ref())
            .map_err(|message| self.reject(value, at, message))
            .ok()
    }

    fn duration(
        &mut self,
        value: &Spanned<String>,
        at: At<'_>,
        range: DurationRange,
    ) -> Option<Duration> {
        self.checked(value, at, |text| range.check(text))
    }

    fn timezone(&mut self, value: &Spanned<String>, at: At<'_>) -> Option<Tz> {
        self.checked(value, at, |text| values::parse_zone(text))
    }

    fn bytes(&mut self, value: &Spanned<String>, at: At<'_>) -> Option<u64> {
        self.checked(value, at, |text| values::parse_size(text))
    }

    fn count<T: TryFrom<i64>>(&mut self, value: &Spanned<i64>, at: At<'_>) -> Option<T> {
        self.checked(value, at, |n| values::parse_count(*n))
    }
}

#[cfg(test)]
mod tests {
    use std::num::NonZeroUsize;
    use std::path::Path;
    use std::time::Duration;

    use crate::config::testing::{check, error};
    use crate::config::{Action, Overlap, DEFAULT_KILL_GRACE};
    use crate::schedule::{EverySchedule, Schedule};

    #[test]
    fn a_full_config_validates_into_typed_jobs() {
        // A build without `http-jobs` refuses `ping` as it is; there it runs a command.
        let ping = if cfg!(feature = "http-jobs") {
            r#"http = { url = "http://127.0.0.1/cron.php", method = "post", headers = { X-A = "1" }, body = "x", timeout = "5s" }"#
        } else {
            r#"command = ["curl", "-X", "POST", "http://127.0.0.1/cron.php"]"#
        };
        let text = r#"
[daemon]
shutdown_timeout = "5s"
timezone = "Europe/Berlin"

[jobs.heartbeat]
every = "200ms"
handler = "log"

[jobs.reports]
cron = "*/10 * * * * *"
timezone = "America/New_York"
command = ["php", "reports.php", "--quick"]
overlap = "queue"
timeout = "5m"
kill_grace = "1s"
cwd = "/tmp"
env = { APP_ENV = "prod" }

[jobs.ping]
cron = "@hourly"
PING
overlap = "allow"
max_concurrent = 2

[jobs.sh]
every = "1h30m"
shell = "echo hi | tr a-z A-Z"
output = "discard"
"#;
        let config = check(&text.replace("PING", ping)).expect("valid config");
        assert_eq!(config.daemon.shutdown_timeout, Duration::from_secs(5));
        assert_eq!(config.daemon.timezone, chrono_tz::Europe::Berlin);
        let heartbeat = &config.jobs["heartbeat"];
        assert_eq!(
            heartbeat.schedule,
            Schedule::Every(EverySchedule::fixed_rate(Duration::from_millis(200)))
        );
        assert_eq!(heartbeat.action, Action::Handler("log".to_owned()));
        assert_eq!(heartbeat.overlap, Overlap::Skip);
        assert_eq!(heartbeat.kill_grace, DEFAULT_KILL_GRACE);
        let reports = &config.jobs["reports"];
        match &reports.schedule {
            Schedule::Cron(c) => assert_eq!(c.timezone(), chrono_tz::America::New_York),
            other => panic!("unexpected schedule {other:?}"),
        }
        assert_eq!(reports.overlap, Overlap::Queue);
        assert_eq!(reports.timeout, Some(Duration::from_secs(300)));
        match &reports.action {
            Action::Process(p) => {
                assert_eq!(p.argv, ["php", "reports.php", "--quick"]);
                assert_eq!(p.env["APP_ENV"], "prod");
                assert_eq!(p.cwd.as_deref(), Some(Path::new("/tmp")));
            }
            other => panic!("unexpected action {other:?}"),
        }
        match &config.jobs["ping"].action {
            Action::Http(h) => assert_eq!(h.method, http::Method::POST),
            Action::Process(p) if !cfg!(feature = "http-jobs") => assert_eq!(p.argv[0], "curl"),
            other => panic!("unexpected action {other:?}"),
        }
        assert_eq!(
            config.jobs["ping"].overlap,
            Overlap::Allow {
                max_concurrent: NonZeroUsize::new(2)
            }
        );
        assert_eq!(
            config.jobs["sh"].schedule,
            Schedule::Every(EverySchedule::fixed_rate(Duration::from_secs(5400)))
        );
        // A job that names no zone takes the daemon's.
        match &config.jobs["ping"].schedule {
            Schedule::Cron(c) => assert_eq!(c.timezone(), chrono_tz::Europe::Berlin),
            other => panic!("unexpected schedule {other:?}"),
        }
    }

    /// Every duration key, with the table it sits in and a valid rest of the job around it.
    const DURATION_KEYS: &[(&str, &str)] = &[
        ("daemon.shutdown_timeout", "[daemon]\nshutdown_timeout = V\n[jobs.a]\nevery = \"1s\"\nhandler = \"log\"\n"),
        ("daemon.max_uptime", "[daemon]\nmax_uptime = V\n[jobs.a]\nevery = \"1s\"\nhandler = \"log\"\n"),
        ("every", "[jobs.a]\nevery = V\nhandler = \"log\"\n"),
        ("timeout", "[jobs.a]\nevery = \"1s\"\ntimeout = V\nhandler = \"log\"\n"),
        ("kill_grace", "[jobs.a]\nevery = \"1s\"\nkill_grace = V\nhandler = \"log\"\n"),
        ("jitter", "[jobs.a]\nevery = \"1s\"\njitter = V\nhandler = \"log\"\n"),
        ("retry.backoff", "[jobs.a]\nevery = \"1s\"\nretry = { attempts = 1, backoff = V }\nhandler = \"log\"\n"),
        ("retry.max_backoff", "[jobs.a]\nevery = \"1s\"\nretry = { attempts = 1, max_backoff = V }\nhandler = \"log\"\n"),
        ("http.timeout", "[jobs.a]\nevery = \"1s\"\nhttp = { url = \"http://x\", timeout = V }\n"),
    ];

    /// `max_uptime = "300000000000y"` passed `check` and panicked `run` (an `Instant` overflow);
    /// so did every other duration that is ever added to an instant.
    #[test]
    fn durations_over_100_years_are_refused_with_their_range() {
        for (key, template) in DURATION_KEYS {
            for huge in ["300000000000y", "101y", "3155760001s"] {
                let text = template.replace('V', &format!("\"{huge}\""));
                let msg = error(&text);
                assert!(msg.contains(&format!("key \"{key}\"")), "{key}: {msg}");
                assert!(msg.contains("out of range"), "{key}: {msg}");
                assert!(msg.contains("100years"), "{key}: {msg}");
                let line = text.lines().position(|l| l.contains(huge)).expect("line") + 1;
                assert!(
                    msg.starts_with(&format!("jobs.toml:{line}:")),
                    "{key}: {msg}"
                );
            }
            let text = template.replace('V', "\"100y\"");
            // Without `http-jobs` an `http` job is refused whatever its timeout.
            if cfg!(feature = "http-jobs") || !key.starts_with("http.") {
                assert!(check(&text).is_ok(), "{key} = 100y is the documented bound");
            }
        }
    }

    /// A wrong type in one job hid the validation errors of every other job (issue 18).
    #[test]
    fn a_parse_error_in_one_job_hides_nothing_else() {
        let msg = error(concat!(
            "[daemon]\n",
            "shutdown_timeout = 5\n",
            "[jobs.a]\n",
            "every = \"0s\"\n",
            "handler = \"log\"\n",
            "[jobs.b]\n",
            "every = [1]\n",
            "handler = \"log\"\n",
            "timeout = 3\n",
            "evry = \"1s\"\n",
            "[jobs.c]\n",
            "cron = \"61 * * * *\"\n",
            "handler = \"log\"\n",
            "[jbos.d]\n",
        ));
        let lines: Vec<&str> = msg.lines().collect();
        assert_eq!(lines.len(), 7, "{msg}");
        for (line, (start, says)) in lines.iter().zip([
            (
                "jobs.toml:2:20: key \"daemon.shutdown_timeout\"",
                "invalid type",
            ),
            (
                "jobs.toml:4:9: job \"a\", key \"every\"",
                "greater than zero",
            ),
            ("jobs.toml:7:9: job \"b\", key \"every\"", "invalid type"),
            ("jobs.toml:9:11: job \"b\", key \"timeout\"", "invalid type"),
            ("jobs.toml:10:1: job \"b\"", "did you mean `every`"),
            ("jobs.toml:12:8: job \"c\", key \"cron\"", "61"),
            ("jobs.toml:14:2: key \"jbos\"", "did you mean `jobs`"),
        ]) {
            assert!(line.starts_with(start), "{line}\nin\n{msg}");
            assert!(line.contains(says), "{line}");
        }
        // A syntax error is necessarily alone.
        let msg = error("[jobs.a]\nevery = 5\n[jobs.b\n");
        assert!(
            msg.starts_with("jobs.toml:3:8: unclosed table, expected `]`"),
            "{msg}"
        );
        assert!(!msg.contains("every"), "{msg}");
    }

    #[test]
    fn all_problems_are_reported_in_file_order() {
        let msg = error(
            "[jobs.a]\nevery = \"0s\"\nhandler = \"log\"\n[jobs.b]\ncron = \"x\"\nhandler = \"log\"\n",
        );
        let lines: Vec<&str> = msg.lines().collect();
        assert_eq!(lines.len(), 2, "{msg}");
        assert!(lines[0].starts_with("jobs.toml:2:"), "{msg}");
        assert!(lines[1].starts_with("jobs.toml:5:"), "{msg}");
    }
}
