//! Phase 1: the raw, spanned shape of the file, as serde reads it. Unknown keys and wrong types
//! are refused here; every value keeps its byte span so that validation can point at it.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::Deserialize;
use toml::Spanned;

use super::error::{Locator, Problem};
use super::spec::{OnMissed, OnNodeLoss, OutputMode, RunLog, Scope};
use crate::schedule::EveryMode;

/// Parses the text part by part: the document first (a TOML syntax error is necessarily alone),
/// then `[daemon]`, `[cluster]` and each job on its own, so that a wrong type in one job still
/// lets every other job be read and validated. Every part keeps the spans of the whole text.
///
/// A part with a problem has its bad key taken out and is read again, so one pass names every
/// bad key of the part. A job with any such problem is left out (validating the rest of it
/// would report the removed key again as missing); `[daemon]` and `[cluster]` are kept without
/// their bad keys, since every job depends on them.
///
/// A file without such problems, the common case, is read in one pass first; only one with
/// problems is parsed again and read part by part (reading copies of the parts: at 100,000 jobs
/// this one pass takes half the time).
pub(super) fn deserialize(locator: &Locator<'_>) -> Result<(RawConfig, Vec<Problem>), Problem> {
    let parse = || {
        toml_edit::Document::parse(locator.text).map_err(|err| {
            let err = toml_edit::de::Error::from(err);
            let offset = err.span().map_or(0, |s| s.start);
            locator.problem(offset, None, None, err.message().trim().to_owned())
        })
    };
    // toml's own parser reads straight into serde without building toml_edit's document, which
    // only the part-by-part reading below needs (the two share one tokenizer, so they accept the
    // same): `tickd check` on 100,000 jobs took 1.2 s and 289 MB this way, 1.65 s and 508 MB
    // through the document (2026-12-03).
    if let Ok(raw) = toml::from_str::<RawConfig>(locator.text) {
        return Ok((raw, Vec::new()));
    }
    let mut root = parse()?.into_item();
    let mut problems = Vec::new();
    // The parts are taken out first, so that what is left of the top level, read for its
    // unknown keys, is small: each `read_part` reads a copy (100,000 jobs copied twice more
    // took most of `check`'s time).
    let mut part = |key: &str| root.as_table_like_mut().and_then(|table| table.remove(key));
    let (daemon, cluster, jobs) = (part("daemon"), part("cluster"), part("jobs"));
    let _: Option<RawTop> = read_part(locator, &mut root, &[], &mut problems);
    let daemon = daemon
        .and_then(|mut item| read_part(locator, &mut item, &["daemon"], &mut problems))
        .unwrap_or_default();
    let cluster =
        cluster.and_then(|mut item| read_part(locator, &mut item, &["cluster"], &mut problems));
    let jobs = jobs.and_then(|mut item| {
        // `jobs = 3` is one problem, not one per job. A table's keys are names by construction.
        if item.as_table_like().is_none() {
            let _: BTreeMap<String, serde::de::IgnoredAny> =
                read_part(locator, &mut item, &["jobs"], &mut problems)?;
        }
        let table = item.as_table_like_mut()?;
        let mut jobs = BTreeMap::new();
        for (name, job) in table.iter_mut() {
            let name = name.get().to_owned();
            let before = problems.len();
            let parsed = read_part(locator, job, &["jobs", &name], &mut problems);
            if let Some(parsed) = parsed.filter(|_| problems.len() == before) {
                jobs.insert(name, parsed);
            }
        }
        Some(jobs)
    });
    let raw = RawConfig {
        daemon,
        jobs,
        cluster,
    };
    Ok((raw, problems))
}

/// `item` read as a `T`, the problems pushed onto `problems`. On a problem the bad key is taken
/// out of `item` and it is read again, until it reads or no key can be blamed (`None`).
fn read_part<T: serde::de::DeserializeOwned>(
    locator: &Locator<'_>,
    item: &mut toml_edit::Item,
    prefix: &[&str],
    problems: &mut Vec<Problem>,
) -> Option<T> {
    let fallback = item.span().map_or(0, |s| s.start);
    loop {
        let err = match read_item(item) {
            Ok(value) => return Some(value),
            Err(err) => err,
        };
        problems.push(locator.serde_problem(prefix, &err, fallback));
        let blamed = super::error::path_segments(&err)
            .into_iter()
            .next()
            .or_else(|| unknown_field(err.inner().message()));
        let removed = match (blamed, item.as_table_like_mut()) {
            (Some(key), Some(table)) => table.remove(&key).is_some(),
            _ => false,
        };
        if !removed {
            return None;
        }
    }
}

/// `item` read as a `T`, with the spans of the whole text. toml_edit reads a `[table]` only as
/// a document's root, and other values as values.
fn read_item<T: serde::de::DeserializeOwned>(
    item: &toml_edit::Item,
) -> Result<T, serde_path_to_error::Error<toml_edit::de::Error>> {
    use serde::de::IntoDeserializer;
    match item.clone() {
        toml_edit::Item::Table(table) => serde_path_to_error::deserialize(
            toml_edit::de::Deserializer::from(toml_edit::DocumentMut::from(table)),
        ),
        // An array of tables becomes an array value; nothing else is left to be `None`.
        other => {
            let value = other
                .into_value()
                .unwrap_or_else(|_| toml_edit::InlineTable::new().into());
            serde_path_to_error::deserialize(value.into_deserializer())
        }
    }
}

/// The key serde's "unknown field `evry`, expected ..." names.
fn unknown_field(message: &str) -> Option<String> {
    let rest = message.trim().strip_prefix("unknown field `")?;
    rest.split_once('`').map(|(key, _)| key.to_owned())
}

/// The top level's keys, for [`deserialize`]: each part is read on its own.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)] // Only the check that no other key is there is wanted.
struct RawTop {
    daemon: Option<serde::de::IgnoredAny>,
    jobs: Option<serde::de::IgnoredAny>,
    cluster: Option<serde::de::IgnoredAny>,
}

/// The JSON Schema of the file, from the types below, so it accepts exactly the keys and value
/// types the parser does (draft 7: the newest draft taplo, and so Even Better TOML, validates).
/// Only the shape: the rules of phase 2 (one schedule, one action, ranges) are `tickd check`'s.
pub(super) fn schema() -> serde_json::Value {
    let generator = schemars::generate::SchemaSettings::draft07().into_generator();
    let mut schema = generator.into_root_schema_for::<RawConfig>();
    schema.insert("title".into(), "tickd jobs file".into());
    let mut schema = schema.to_value();
    strip_null(&mut schema);
    schema
}

/// Removes the `null` schemars allows for `Option` fields: TOML has no null (an absent key is
/// `None`), and editors would offer it.
fn strip_null(value: &mut serde_json::Value) {
    use serde_json::Value;
    let Value::Object(map) = value else {
        if let Value::Array(items) = value {
            items.iter_mut().for_each(strip_null);
        }
        return;
    };
    if let Some(Value::Array(types)) = map.get_mut("type") {
        types.retain(|t| t != "null");
        if let [only] = types.as_slice() {
            let only = only.clone();
            map.insert("type".into(), only);
        }
    }
    if let Some(Value::Array(any_of)) = map.get_mut("anyOf") {
        any_of.retain(|s| s.get("type").is_none_or(|t| t != "null"));
        if any_of.len() == 1 {
            // `allOf`, not the bare `$ref`: draft 7 ignores the siblings of a `$ref`, such as
            // the field's description.
            let only = any_of.clone();
            map.remove("anyOf");
            map.insert("allOf".into(), Value::Array(only));
        }
    }
    map.values_mut().for_each(strip_null);
}

/// The whole file.
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "JobsFile")]
pub(super) struct RawConfig {
    /// Settings of the daemon itself.
    #[serde(default)]
    pub(super) daemon: RawDaemon,
    /// `None` when the file has no `[jobs]` table at all (see
    /// [`Config::no_jobs_on_purpose`](super::Config::no_jobs_on_purpose)).
    #[schemars(
        with = "Option<BTreeMap<String, RawJob>>",
        description = "One table per job; the key is the job's name (letters, digits, `-`, `_`, `.`).",
        extend("propertyNames" = { "pattern": "^[A-Za-z0-9._-]+$" })
    )]
    pub(super) jobs: Option<BTreeMap<String, Spanned<RawJob>>>,
    /// `None`: tickd runs alone.
    #[schemars(
        with = "Option<RawCluster>",
        description = "Run the jobs once per cluster of nodes that share one PostgreSQL database."
    )]
    pub(super) cluster: Option<Spanned<RawCluster>>,
}

/// The `[cluster]` table.
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "Cluster")]
pub(super) struct RawCluster {
    /// The database URL (`postgres://user@host/db`); the password from PGPASSWORD or the URL.
    #[schemars(with = "String")]
    pub(super) postgres: Spanned<String>,
    /// This node's name, unique in the cluster (default: the host name).
    #[schemars(with = "Option<String>")]
    pub(super) node: Option<Spanned<String>>,
    /// The cluster's name, so that several clusters can share one database (default "default").
    #[schemars(with = "Option<String>")]
    pub(super) name: Option<Spanned<String>>,
    /// How far ahead the database confirms ownership to the owner (default "1s").
    #[schemars(with = "Option<String>")]
    pub(super) window: Option<Spanned<String>>,
    /// How often the owner renews its ownership; shorter than `window` (default "200ms").
    #[schemars(with = "Option<String>")]
    pub(super) renew: Option<Spanned<String>>,
    /// How long renewals must have stopped before another node takes over (default "1s").
    #[schemars(with = "Option<String>")]
    pub(super) dead_after: Option<Spanned<String>>,
    /// How late a missed slot of a 1 s or slower job may still run after a takeover (default "10s").
    #[schemars(with = "Option<String>")]
    pub(super) catch_up: Option<Spanned<String>>,
    /// How many shards the jobs fall into, spread over the live nodes (1 to 4096, default 1).
    #[schemars(with = "Option<i64>")]
    pub(super) shards: Option<Spanned<i64>>,
    /// This node's share of the shards, relative to the others' (1 to 1000, default 1).
    #[schemars(with = "Option<i64>")]
    pub(super) weight: Option<Spanned<i64>>,
}

/// The `[daemon]` table.
#[derive(Deserialize, JsonSchema, Default)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "Daemon")]
pub(super) struct RawDaemon {
    /// How long SIGTERM/SIGINT waits for runs in flight (default "30s").
    #[schemars(with = "Option<String>")]
    pub(super) shutdown_timeout: Option<Spanned<String>>,
    /// Default IANA zone for cron schedules (default "UTC").
    #[schemars(with = "Option<String>")]
    pub(super) timezone: Option<Spanned<String>>,
    /// Drain and exit 75 (recycle) after this long.
    #[schemars(with = "Option<String>")]
    pub(super) max_uptime: Option<Spanned<String>>,
    /// Where the last fire times are kept (needed by `on_missed = "once"`); relative to the jobs file.
    #[schemars(with = "Option<String>")]
    pub(super) state_file: Option<Spanned<String>>,
    /// Drain and exit 75 (recycle) after this many runs.
    #[schemars(with = "Option<i64>")]
    pub(super) max_runs: Option<Spanned<i64>>,
    /// Drain and exit 75 (recycle) when tickd's own memory exceeds this ("200MB").
    #[schemars(with = "Option<String>")]
    pub(super) max_rss: Option<Spanned<String>>,
    /// The address of the HTTP endpoint (metrics, status, control), e.g. "127.0.0.1:9187".
    #[schemars(with = "Option<String>")]
    pub(super) http: Option<Spanned<String>>,
    /// A bearer token every request to the endpoint but `/healthz` must carry.
    #[schemars(with = "Option<String>")]
    pub(super) http_token: Option<Spanned<String>>,
    /// Start jobs from an empty environment but for `env_keep`.
    pub(super) env_clear: Option<bool>,
    /// With `env_clear`: the variables jobs still inherit.
    #[schemars(with = "Option<Vec<String>>")]
    pub(super) env_keep: Option<Spanned<Vec<String>>>,
    /// Variables jobs do not inherit.
    pub(super) env_remove: Option<Vec<String>>,
    /// How many of each job's last runs the daemon keeps in memory (0 to 1000; default 20).
    #[schemars(with = "Option<i64>")]
    pub(super) history: Option<Spanned<i64>>,
    /// How much of the end of each kept run's output is kept ("4KiB" by default, at most "1MiB").
    #[schemars(with = "Option<String>")]
    pub(super) history_output: Option<Spanned<String>>,
    /// Metric series per job (true, the default), or only totals over all jobs (false): with
    /// tens of thousands of jobs, the per-job series make `/metrics` megabytes long.
    pub(super) job_metrics: Option<bool>,
}

/// One `[jobs.NAME]` table.
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "Job")]
pub(super) struct RawJob {
    /// A period on a drift-free grid ("200ms", "10s", "1h30m").
    #[schemars(with = "Option<String>")]
    pub(super) every: Option<Spanned<String>>,
    /// A cron expression: 5 fields, 6 with seconds first, or @hourly etc.
    #[schemars(with = "Option<String>")]
    pub(super) cron: Option<Spanned<String>>,
    /// The IANA zone of this job's cron schedule (default: the daemon's).
    #[schemars(with = "Option<String>")]
    pub(super) timezone: Option<Spanned<String>>,
    /// Run a child process: program and arguments, no shell.
    #[schemars(with = "Option<Vec<String>>")]
    pub(super) command: Option<Spanned<Vec<String>>>,
    /// Run a script with `/bin/sh -c`.
    #[schemars(with = "Option<String>")]
    pub(super) shell: Option<Spanned<String>>,
    /// Make an in-process HTTP request; a 2xx status is success.
    #[schemars(with = "Option<RawHttp>")]
    pub(super) http: Option<Spanned<RawHttp>>,
    /// Run an in-process handler (the binary ships `log`).
    #[schemars(with = "Option<String>")]
    pub(super) handler: Option<Spanned<String>>,
    /// What a fire does while a run of this job is still going (default "skip").
    #[schemars(with = "Option<RawOverlap>")]
    pub(super) overlap: Option<Spanned<RawOverlap>>,
    /// With `overlap = "allow"`: at most this many runs at once.
    #[schemars(with = "Option<i64>")]
    pub(super) max_concurrent: Option<Spanned<i64>>,
    /// Stop a run after this long.
    #[schemars(with = "Option<String>")]
    pub(super) timeout: Option<Spanned<String>>,
    /// How long a stopped run gets between SIGTERM and SIGKILL (default "10s").
    #[schemars(with = "Option<String>")]
    pub(super) kill_grace: Option<Spanned<String>>,
    /// The working directory of `command` and `shell` runs.
    #[schemars(with = "Option<String>")]
    pub(super) cwd: Option<Spanned<String>>,
    /// Variables set for `command` and `shell` runs.
    #[schemars(with = "Option<BTreeMap<String, String>>")]
    pub(super) env: Option<Spanned<BTreeMap<String, String>>>,
    /// Where the output of `command` and `shell` runs goes (default "log").
    #[schemars(with = "Option<OutputMode>")]
    pub(super) output: Option<Spanned<OutputMode>>,
    /// Which of the job's runs are logged: "runs" (default), "failures" or "none".
    #[schemars(with = "Option<RunLog>")]
    pub(super) log: Option<Spanned<RunLog>>,
    /// How an `every` schedule places its fires (default "fixed-rate").
    #[schemars(with = "Option<EveryMode>")]
    pub(super) mode: Option<Spanned<EveryMode>>,
    /// Put an `every` grid on multiples of the period since the Unix epoch.
    #[schemars(with = "Option<bool>")]
    pub(super) align: Option<Spanned<bool>>,
    /// Delay each run by a random time below this.
    #[schemars(with = "Option<String>")]
    pub(super) jitter: Option<Spanned<String>>,
    /// With `jitter`: a delay stable per job and machine.
    #[schemars(with = "Option<bool>")]
    pub(super) spread: Option<Spanned<bool>>,
    /// Run once right after the daemon starts (or the reload that adds the job).
    pub(super) run_on_start: Option<bool>,
    /// What becomes of fires missed while the daemon was down or stalled (default "skip").
    #[schemars(with = "Option<OnMissed>")]
    pub(super) on_missed: Option<Spanned<OnMissed>>,
    /// Stop a run whose processes use more memory than this ("50MB").
    #[schemars(with = "Option<String>")]
    pub(super) max_rss: Option<Spanned<String>>,
    /// Retry a failed run.
    #[schemars(with = "Option<RawRetry>")]
    pub(super) retry: Option<Spanned<RawRetry>>,
    /// A command run after a run finally failed.
    #[schemars(with = "Option<Vec<String>>")]
    pub(super) on_failure: Option<Spanned<Vec<String>>>,
    /// Run `command` and `shell` runs as this user (tickd must be root).
    #[schemars(with = "Option<String>")]
    pub(super) user: Option<Spanned<String>>,
    /// Run `command` and `shell` runs with this group.
    #[schemars(with = "Option<String>")]
    pub(super) group: Option<Spanned<String>>,
    /// In a cluster: once per cluster (default) or on every node.
    #[schemars(with = "Option<Scope>")]
    pub(super) scope: Option<Spanned<Scope>>,
    /// In a cluster: what becomes of a run cut short by its node's death (default "skip").
    #[schemars(with = "Option<OnNodeLoss>")]
    pub(super) on_node_loss: Option<Spanned<OnNodeLoss>>,
}

/// A job's `retry = { ... }`.
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "Retry")]
pub(super) struct RawRetry {
    /// How many retries after the first failure.
    #[schemars(with = "i64")]
    pub(super) attempts: Spanned<i64>,
    /// The delay before the first retry, doubled for each next one.
    #[schemars(with = "Option<String>")]
    pub(super) backoff: Option<Spanned<String>>,
    /// The longest delay between retries.
    #[schemars(with = "Option<String>")]
    pub(super) max_backoff: Option<Spanned<String>>,
}

/// A job's `http = { ... }`.
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "Http")]
pub(super) struct RawHttp {
    /// The URL to request.
    #[schemars(with = "String")]
    pub(super) url: Spanned<String>,
    /// The HTTP method (default "GET").
    #[schemars(with = "Option<String>")]
    pub(super) method: Option<Spanned<String>>,
    /// Request headers.
    #[serde(default)]
    pub(super) headers: BTreeMap<String, String>,
    /// The request body.
    pub(super) body: Option<String>,
    /// How long the request may take (default: the job's period, 1 s to 30 s).
    #[schemars(with = "Option<String>")]
    pub(super) timeout: Option<Spanned<String>>,
}

/// A job's `overlap`; `max_concurrent` is a key of its own.
#[derive(Deserialize, JsonSchema, Clone, Copy)]
#[serde(rename_all = "lowercase")]
#[schemars(rename = "Overlap")]
pub(super) enum RawOverlap {
    Skip,
    Queue,
    Allow,
    Replace,
}

impl RawJob {
    /// Whether the job runs a child process (`command` or `shell`).
    pub(super) fn is_process(&self) -> bool {
        self.command.is_some() || self.shell.is_some()
    }

    /// The action keys the job sets, with where each starts, in a fixed order.
    pub(super) fn action_keys(&self) -> Vec<(&'static str, usize)> {
        set([
            ("command", start(&self.command)),
            ("shell", start(&self.shell)),
            ("http", start(&self.http)),
            ("handler", start(&self.handler)),
        ])
    }

    /// The keys only `command` and `shell` jobs take that the job sets, with where each starts.
    pub(super) fn process_only_keys(&self) -> Vec<(&'static str, usize)> {
        set([
            ("cwd", start(&self.cwd)),
            ("env", start(&self.env)),
            ("output", start(&self.output)),
            ("max_rss", start(&self.max_rss)),
            ("user", start(&self.user)),
            ("group", start(&self.group)),
        ])
    }

    /// The keys only `every` schedules take that the job sets, with where each starts.
    pub(super) fn every_only_keys(&self) -> Vec<(&'static str, usize)> {
        set([("mode", start(&self.mode)), ("align", start(&self.align))])
    }
}

/// Where an optional value starts, if the file sets it.
fn start<T>(value: &Option<Spanned<T>>) -> Option<usize> {
    value.as_ref().map(|v| v.span().start)
}

/// The keys of `keys` that are set.
fn set<const N: usize>(keys: [(&'static str, Option<usize>); N]) -> Vec<(&'static str, usize)> {
    keys.into_iter()
        .filter_map(|(key, offset)| offset.map(|offset| (key, offset)))
        .collect()
}

#[cfg(test)]
mod tests {
    use crate::config::testing::error;

    #[test]
    fn unknown_key_names_file_line_column_job_and_key() {
        let msg = error("[jobs.a]\nevery = \"1s\"\nhandler = \"log\"\nevry = \"2s\"\n");
        assert!(msg.starts_with("jobs.toml:4:1: job \"a\""), "{msg}");
        assert!(
            msg.contains("unknown field `evry` (did you mean `every`?)"),
            "{msg}"
        );
    }

    #[test]
    fn unknown_key_at_top_level_and_in_daemon() {
        let msg = error("[daemon]\nshutdown_timout = \"1s\"\n");
        assert!(msg.starts_with("jobs.toml:2:1:"), "{msg}");
        assert!(msg.contains("unknown field `shutdown_timout`"), "{msg}");
        let msg = error("[jbos.a]\nevery = \"1s\"\n");
        assert!(
            msg.contains("unknown field `jbos` (did you mean `jobs`?)"),
            "{msg}"
        );
        // Nothing close: no guess.
        let msg = error("[jobs.a]\nevery = \"1s\"\nhandler = \"log\"\nxyzzy = 1\n");
        assert!(
            msg.contains("unknown field `xyzzy`, expected one of"),
            "{msg}"
        );
    }

    #[test]
    fn wrong_type_is_located() {
        let msg = error("[jobs.a]\nevery = 5\nhandler = \"log\"\n");
        assert!(
            msg.starts_with("jobs.toml:2:9: job \"a\", key \"every\""),
            "{msg}"
        );
        assert!(msg.contains("invalid type"), "{msg}");
    }

    #[test]
    fn duplicate_job_names_are_toml_errors() {
        let msg = error("[jobs.a]\nevery = \"1s\"\nhandler = \"log\"\n[jobs.a]\nevery = \"2s\"\n");
        assert!(msg.starts_with("jobs.toml:4:"), "{msg}");
        assert!(msg.to_lowercase().contains("duplicate"), "{msg}");
    }
}
