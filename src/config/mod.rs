//! The configuration schema, and the one `load()` shared by start-up, `tickd check` and SIGHUP.
//!
//! Loading is two-phase, so nothing ever acts on half-parsed input:
//! 1. **Parse**: TOML into `Raw*` structs with serde. Unknown keys and wrong types are rejected
//!    there, and every value keeps its byte span so later errors can point at it.
//! 2. **Validate**: raw values into typed [`Config`] / [`JobSpec`] values that cannot hold an
//!    invalid state (non-zero periods, parsed cron expressions, known zones and handlers, exactly one
//!    schedule and one action). All problems are collected and reported together.
//!
//! Every problem names the file, line, column, job and key.
//!
//! The files, in the order a load goes through them: `file` (reading it settled, and the
//! root-ownership policy), `raw` (phase 1), `validate` (phase 2, one file per part of a job),
//! `values` (the parsers of single values: bounded durations, sizes, zones, addresses), `users`
//! (user-database lookups for `user`/`group`), `env` (the environment policy), `error` (errors
//! and their locations) and `spec` (the typed result). Everything public is re-exported here:
//! the paths are `tickd::config::X`.

mod env;
mod error;
mod file;
mod raw;
mod spec;
mod users;
mod validate;
mod values;

use std::path::Path;

pub use env::{EnvPolicy, DEFAULT_ENV_KEEP, NEVER_INHERITED};
pub use error::{ConfigError, Problem};
pub use file::{read_settled, SETTLE};
#[cfg(not(feature = "http-jobs"))]
pub(crate) use spec::NO_HTTP_JOBS;
pub use spec::{
    Action, ClusterSettings, Config, DaemonSettings, HttpSpec, Jitter, JobSpec, OnMissed,
    OnNodeLoss, OutputMode, Overlap, ProcessSpec, Retry, RunAs, RunLog, Scope, DEFAULT_HISTORY,
    DEFAULT_HISTORY_OUTPUT, DEFAULT_HTTP_TIMEOUT, DEFAULT_KILL_GRACE, DEFAULT_SHUTDOWN_TIMEOUT,
    MAX_HISTORY, MAX_HISTORY_OUTPUT, MIN_DEFAULT_HTTP_TIMEOUT,
};
pub use values::{DurationRange, MAX_DURATION, MIN_PERIOD};

use crate::handler::Handlers;
use error::Locator;

/// What a configuration is loaded for. The file's meaning is the same; what this machine lacks
/// (a user, a program, a `cwd`) is judged differently.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    /// To run it (start-up, reload, `tickd exec`): a `user` or `group` this machine does not
    /// have is an error, since the job could never run as it says.
    Run,
    /// To check it (`tickd check`): the file may be meant for another machine, so what this
    /// machine lacks (no jobs, a user or group, a program in the job's `PATH`, a `cwd`) is a
    /// warning in [`Config::warnings`]. Such a configuration is for reporting only: a job whose
    /// user is missing has no user to run as.
    Check,
}

/// Reads and validates a configuration file to run it. `handlers` names the in-process
/// handlers a job may use.
pub fn load(path: &Path, handlers: &Handlers) -> Result<Config, ConfigError> {
    load_for(path, handlers, Purpose::Run)
}

/// Reads and validates a configuration file for `purpose`.
pub fn load_for(path: &Path, handlers: &Handlers, purpose: Purpose) -> Result<Config, ConfigError> {
    let text = file::read_text(path)?;
    parse_for(path, &text, handlers, purpose)
}

/// Reads the file at `path` as [`load`] does (`None`: no file, an empty one) and validates it
/// with `extra` TOML appended to its text: the jobs a program defines in code
/// ([`crate::builder`]). Appended, the file's own lines keep their numbers in every problem.
pub fn load_with_extra(
    path: Option<&Path>,
    extra: &str,
    handlers: &Handlers,
) -> Result<Config, ConfigError> {
    let (path, mut text) = match path {
        Some(path) => (path, file::read_text(path)?),
        None => (Path::new("(code)"), String::new()),
    };
    if !text.is_empty() && !text.ends_with('\n') {
        text.push('\n');
    }
    text.push_str(extra);
    parse(path, &text, handlers)
}

/// The JSON Schema (draft 7) of a jobs file, generated from the types the parser reads: every
/// key with its type and description, unknown keys refused. What it cannot say (exactly one
/// schedule and one action, value ranges, cron syntax) is left to [`load`].
pub fn json_schema() -> serde_json::Value {
    raw::schema()
}

/// Validates configuration text to run it; `path` is only used in messages and as
/// [`Config::source`].
pub fn parse(path: &Path, text: &str, handlers: &Handlers) -> Result<Config, ConfigError> {
    parse_for(path, text, handlers, Purpose::Run)
}

/// Validates configuration text for `purpose`; `path` is only used in messages and as
/// [`Config::source`].
pub fn parse_for(
    path: &Path,
    text: &str,
    handlers: &Handlers,
    purpose: Purpose,
) -> Result<Config, ConfigError> {
    let locator = Locator { path, text };
    let (raw, problems) = raw::deserialize(&locator).map_err(|problem| ConfigError::Invalid {
        problems: vec![problem],
    })?;
    let config = validate::config(&locator, handlers, purpose, raw, problems)
        .map_err(|problems| ConfigError::Invalid { problems });
    // The parsed document of a large file takes some 70 times the file's size while it is read
    // (500 MB for 100,000 jobs); freed, the allocator would keep most of it, in the daemon's
    // RSS for good. Giving it back took 0.07 ms at start and 13 ms in a reload at 100,000 jobs
    // (arena by arena, each under its lock, so a worker's allocation may wait for a part of
    // it), against a reload of over a second.
    if text.len() > LARGE_FILE {
        crate::os::return_freed_memory();
    }
    config
}

/// The size from which a file's parse gives its memory back to the system (see [`parse_for`]):
/// some 1,000 jobs. At 1 MiB, 10,000 jobs (0.6 MB) kept some 1.6 KB per job of their parse in
/// the RSS (the bench's `scale-10000`), 40% of what the jobs themselves take.
const LARGE_FILE: usize = 64 << 10;

/// What the unit tests of every file here share.
#[cfg(test)]
mod testing {
    use std::path::Path;

    use super::{parse, Config, ConfigError};
    use crate::handler::Handlers;

    /// `text` validated as `jobs.toml` with the built-in handlers.
    pub(super) fn check(text: &str) -> Result<Config, ConfigError> {
        parse(Path::new("jobs.toml"), text, &Handlers::with_builtins())
    }

    /// The single problem of an invalid config, as text.
    pub(super) fn error(text: &str) -> String {
        match check(text) {
            Ok(_) => panic!("expected an error for:\n{text}"),
            Err(e) => e.to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::testing::{check, error};
    use super::*;

    #[test]
    fn syntax_errors_are_located() {
        let msg = error("[jobs.a]\nevery = \"1s\nhandler = \"log\"\n");
        assert!(msg.starts_with("jobs.toml:2:"), "{msg}");
    }

    #[test]
    fn invalid_utf8_is_located() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("bad.toml");
        std::fs::write(&path, b"[jobs.a]\nevery = \"1s\xff\"\n").expect("write");
        let msg = load(&path, &Handlers::with_builtins())
            .expect_err("invalid")
            .to_string();
        assert!(
            msg.contains("bad.toml:2:12: the file is not valid UTF-8"),
            "{msg}"
        );
    }

    /// Every file of the corpus is refused with a located message, never a panic.
    #[test]
    fn a_corpus_of_broken_files_is_refused_with_locations() {
        let deep = format!("a = {}1{}", "[".repeat(2000), "]".repeat(2000));
        let mut huge = String::from("[jobs.a]\nevery = \"1s\"\nhandler = \"log\"\n# ");
        huge.push_str(&"x".repeat(10 * 1024 * 1024));
        huge.push_str("\n[jobs.b]\nevery = 1\n");
        let mut many = String::new();
        for i in 0..100_000 {
            many.push_str(&format!("[jobs.j{i}]\nevery = \"1s\"\nhandler = \"log\"\n"));
        }
        many.push_str("[jobs.last]\nevery = \"1s\"\nhandler = \"nope\"\n");
        let corpus: Vec<(&str, String)> = vec![
            ("truncated", "[jobs.a]\nevery = \"1".to_owned()),
            ("truncated table", "[jobs.a".to_owned()),
            ("wrong type", "[jobs.a]\nevery = [1, 2]\nhandler = \"log\"\n".to_owned()),
            ("jobs not a table", "jobs = 3\n".to_owned()),
            ("daemon not a table", "daemon = \"x\"\n".to_owned()),
            ("huge number", "[jobs.a]\nevery = \"1s\"\nhandler = \"log\"\noverlap = \"allow\"\nmax_concurrent = 99999999999999999999\n".to_owned()),
            ("huge duration", "[jobs.a]\nevery = \"99999999999999999999h\"\nhandler = \"log\"\n".to_owned()),
            ("negative count", "[daemon]\nmax_runs = -5\n".to_owned()),
            ("deep nesting", deep),
            ("10 MB", huge),
            ("100k jobs", many),
            ("unknown key in http", "[jobs.a]\nevery = \"1s\"\nhttp = { url = \"http://x\", verb = \"GET\" }\n".to_owned()),
            ("unknown key in retry", "[jobs.a]\nevery = \"1s\"\nhandler = \"log\"\nretry = { attempts = 1, tries = 2 }\n".to_owned()),
            ("reversed range", "[jobs.a]\ncron = \"30-10 * * * *\"\nhandler = \"log\"\n".to_owned()),
            ("out of range", "[jobs.a]\ncron = \"* 25 * * *\"\nhandler = \"log\"\n".to_owned()),
            ("out of range month", "[jobs.a]\ncron = \"* * * 13 *\"\nhandler = \"log\"\n".to_owned()),
            ("bad size", "[jobs.a]\nevery = \"1s\"\nshell = \"true\"\nmax_rss = \"lots\"\n".to_owned()),
            ("no such user", "[jobs.a]\nevery = \"1s\"\nshell = \"true\"\nuser = \"no-such-user-tickd\"\n".to_owned()),
        ];
        for (name, text) in corpus {
            let err = match check(&text) {
                Ok(_) => panic!("{name}: accepted"),
                Err(err) => err,
            };
            let ConfigError::Invalid { problems } = &err else {
                panic!("{name}: {err}");
            };
            assert!(!problems.is_empty(), "{name}");
            assert!(
                problems[0].line >= 1 && problems[0].column >= 1,
                "{name}: {err}"
            );
            let message = err.to_string();
            assert!(message.starts_with("jobs.toml:"), "{name}: {message}");
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(500))]
        /// Random TOML-ish text: an answer (valid or located error), never a panic.
        #[test]
        fn random_text_never_panics(text in "(\\[jobs\\.[a-z]{1,3}\\]\n|[a-z_]{1,12} = (\"[a-z0-9 */@-]{0,12}\"|[0-9-]{1,4}|true|\\[\\]|\\{\\})\n|[\\x00-\\x7f]{0,8}\n){0,12}") {
            match check(&text) {
                Ok(_) => {}
                Err(ConfigError::Invalid { problems }) => {
                    proptest::prop_assert!(problems.iter().all(|p| p.line >= 1 && p.column >= 1));
                }
                Err(other) => proptest::prop_assert!(false, "unexpected {other}"),
            }
        }
    }

    #[test]
    fn a_missing_file_is_a_read_error() {
        let err = load(
            Path::new("/nonexistent/jobs.toml"),
            &Handlers::with_builtins(),
        )
        .expect_err("missing");
        assert!(matches!(err, ConfigError::Read { .. }));
        assert!(err.to_string().contains("/nonexistent/jobs.toml"));
    }
}
