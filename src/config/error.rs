//! Why a configuration could not be loaded, and where in the file each problem is.

use std::fmt;
use std::path::{Path, PathBuf};

/// Why a configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The daemon runs as root and the file could be changed by someone else (as cron refuses
    /// such crontabs): a symlink, a file not owned by root, or one writable by group or others.
    #[error("refusing {}: {reason}", path.display())]
    Unsafe {
        /// The file.
        path: PathBuf,
        /// What is wrong and how to fix it.
        reason: String,
    },
    /// The file was read but is not a valid configuration.
    #[error("{}", format_problems(problems))]
    Invalid {
        /// Every problem found, in file order.
        problems: Vec<Problem>,
    },
}

fn format_problems(problems: &[Problem]) -> String {
    let lines: Vec<String> = problems.iter().map(Problem::to_string).collect();
    lines.join("\n")
}

/// One problem in a configuration file, with its location.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The file.
    pub path: PathBuf,
    /// 1-based line.
    pub line: usize,
    /// 1-based column (in characters).
    pub column: usize,
    /// The job concerned, if any.
    pub job: Option<String>,
    /// The key concerned (dotted, relative to the job or the file), if known.
    pub key: Option<String>,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}: ", self.path.display(), self.line, self.column)?;
        match (&self.job, &self.key) {
            (Some(job), Some(key)) => write!(f, "job \"{job}\", key \"{key}\": ")?,
            (Some(job), None) => write!(f, "job \"{job}\": ")?,
            (None, Some(key)) => write!(f, "key \"{key}\": ")?,
            (None, None) => {}
        }
        f.write_str(&self.message)
    }
}

/// Turns byte offsets into line/column problems.
pub(super) struct Locator<'a> {
    /// The file, for messages.
    pub(super) path: &'a Path,
    /// Its whole text, which the offsets index.
    pub(super) text: &'a str,
}

impl Locator<'_> {
    /// A problem at byte `offset` of the text.
    pub(super) fn problem(
        &self,
        offset: usize,
        job: Option<&str>,
        key: Option<&str>,
        message: String,
    ) -> Problem {
        let offset = offset.min(self.text.len());
        let before = self.text.get(..offset).unwrap_or(self.text);
        let line = before.matches('\n').count() + 1;
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        let column = before.get(line_start..).map_or(0, |s| s.chars().count()) + 1;
        Problem {
            path: self.path.to_owned(),
            line,
            column,
            job: job.map(str::to_owned),
            key: key.map(str::to_owned),
            message,
        }
    }

    /// A parse error of the part of the file at `prefix` (`["jobs", NAME]`), located by toml's
    /// span (else at `fallback`, where the part starts) and named by serde's path.
    pub(super) fn serde_problem(
        &self,
        prefix: &[&str],
        err: &serde_path_to_error::Error<toml_edit::de::Error>,
        fallback: usize,
    ) -> Problem {
        let inner = err.inner();
        let offset = inner.span().map_or(fallback, |s| s.start);
        let mut segments: Vec<String> = prefix.iter().map(|s| (*s).to_owned()).collect();
        segments.extend(path_segments(err));
        let (job, key) = match segments.as_slice() {
            [jobs, job, rest @ ..] if jobs == "jobs" => (
                Some(job.clone()),
                (!rest.is_empty()).then(|| rest.join(".")),
            ),
            [] => (None, None),
            all => (None, Some(all.join("."))),
        };
        let message = with_suggestion(inner.message().trim());
        self.problem(offset, job.as_deref(), key.as_deref(), message)
    }
}

/// serde's path to the bad value, without the `Spanned` wrappers it shows under a private name.
pub(super) fn path_segments<E>(err: &serde_path_to_error::Error<E>) -> Vec<String> {
    err.path()
        .iter()
        .map(|segment| segment.to_string())
        .filter(|segment| !segment.starts_with("$__serde_spanned"))
        .collect()
}

/// serde's "unknown field `evry`, expected one of `every`, ..." led by the likeliest key:
/// "unknown field `evry` (did you mean `every`?), expected one of ...".
fn with_suggestion(message: &str) -> String {
    let Some((unknown, expected)) = message
        .strip_prefix("unknown field `")
        .and_then(|rest| rest.split_once("`, expected one of "))
    else {
        return message.to_owned();
    };
    let closest = expected
        .split(", ")
        .map(|key| key.trim_matches('`'))
        .map(|key| (strsim::jaro_winkler(unknown, key), key))
        .filter(|(similarity, _)| *similarity >= 0.8)
        .max_by(|a, b| a.0.total_cmp(&b.0));
    match closest {
        Some((_, key)) => {
            format!("unknown field `{unknown}` (did you mean `{key}`?), expected one of {expected}")
        }
        None => message.to_owned(),
    }
}
