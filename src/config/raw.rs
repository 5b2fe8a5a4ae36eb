//! Phase 1: the raw, spanned shape of the file, as serde reads it. Unknown keys and wrong types
//! are refused here; every value keeps its byte span so that validation can point at it.

use std::collections::BTreeMap;

use serde::Deserialize;
use toml::Spanned;

use super::spec::{OnMissed, OnNodeLoss, OutputMode, RunLog, Scope};
use crate::schedule::EveryMode;

/// Parses the text, naming the path of a bad key in the error (`jobs.NAME.key`).
pub(super) fn deserialize(
    text: &str,
) -> Result<RawConfig, serde_path_to_error::Error<toml::de::Error>> {
    serde_path_to_error::deserialize(toml::Deserializer::new(text))
}

/// The whole file.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConfig {
    #[serde(default)]
    pub(super) daemon: RawDaemon,
    /// `None` when the file has no `[jobs]` table at all (see
    /// [`Config::no_jobs_on_purpose`](super::Config::no_jobs_on_purpose)).
    pub(super) jobs: Option<BTreeMap<String, Spanned<RawJob>>>,
    /// `None`: tickd runs alone.
    pub(super) cluster: Option<Spanned<RawCluster>>,
}

/// The `[cluster]` table.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawCluster {
    pub(super) postgres: Spanned<String>,
    pub(super) node: Option<Spanned<String>>,
    pub(super) name: Option<Spanned<String>>,
    pub(super) window: Option<Spanned<String>>,
    pub(super) renew: Option<Spanned<String>>,
    pub(super) dead_after: Option<Spanned<String>>,
    pub(super) catch_up: Option<Spanned<String>>,
    pub(super) shards: Option<Spanned<i64>>,
    pub(super) weight: Option<Spanned<i64>>,
}

/// The `[daemon]` table.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawDaemon {
    pub(super) shutdown_timeout: Option<Spanned<String>>,
    pub(super) timezone: Option<Spanned<String>>,
    pub(super) max_uptime: Option<Spanned<String>>,
    pub(super) state_file: Option<Spanned<String>>,
    pub(super) max_runs: Option<Spanned<i64>>,
    pub(super) max_rss: Option<Spanned<String>>,
    pub(super) http: Option<Spanned<String>>,
    pub(super) http_token: Option<Spanned<String>>,
    pub(super) env_clear: Option<bool>,
    pub(super) env_keep: Option<Spanned<Vec<String>>>,
    pub(super) env_remove: Option<Vec<String>>,
    pub(super) history: Option<Spanned<i64>>,
    pub(super) history_output: Option<Spanned<String>>,
}

/// One `[jobs.NAME]` table.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawJob {
    pub(super) every: Option<Spanned<String>>,
    pub(super) cron: Option<Spanned<String>>,
    pub(super) timezone: Option<Spanned<String>>,
    pub(super) command: Option<Spanned<Vec<String>>>,
    pub(super) shell: Option<Spanned<String>>,
    pub(super) http: Option<Spanned<RawHttp>>,
    pub(super) handler: Option<Spanned<String>>,
    pub(super) overlap: Option<Spanned<RawOverlap>>,
    pub(super) max_concurrent: Option<Spanned<i64>>,
    pub(super) timeout: Option<Spanned<String>>,
    pub(super) kill_grace: Option<Spanned<String>>,
    pub(super) cwd: Option<Spanned<String>>,
    pub(super) env: Option<Spanned<BTreeMap<String, String>>>,
    pub(super) output: Option<Spanned<OutputMode>>,
    pub(super) log: Option<Spanned<RunLog>>,
    pub(super) mode: Option<Spanned<EveryMode>>,
    pub(super) align: Option<Spanned<bool>>,
    pub(super) jitter: Option<Spanned<String>>,
    pub(super) spread: Option<Spanned<bool>>,
    pub(super) run_on_start: Option<bool>,
    pub(super) on_missed: Option<Spanned<OnMissed>>,
    pub(super) max_rss: Option<Spanned<String>>,
    pub(super) retry: Option<Spanned<RawRetry>>,
    pub(super) on_failure: Option<Spanned<Vec<String>>>,
    pub(super) user: Option<Spanned<String>>,
    pub(super) group: Option<Spanned<String>>,
    pub(super) scope: Option<Spanned<Scope>>,
    pub(super) on_node_loss: Option<Spanned<OnNodeLoss>>,
}

/// A job's `retry = { ... }`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRetry {
    pub(super) attempts: Spanned<i64>,
    pub(super) backoff: Option<Spanned<String>>,
    pub(super) max_backoff: Option<Spanned<String>>,
}

/// A job's `http = { ... }`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawHttp {
    pub(super) url: Spanned<String>,
    pub(super) method: Option<Spanned<String>>,
    #[serde(default)]
    pub(super) headers: BTreeMap<String, String>,
    pub(super) body: Option<String>,
    pub(super) timeout: Option<Spanned<String>>,
}

/// A job's `overlap`; `max_concurrent` is a key of its own.
#[derive(Deserialize, Clone, Copy)]
#[serde(rename_all = "lowercase")]
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
        assert!(msg.contains("unknown field `evry`"), "{msg}");
    }

    #[test]
    fn unknown_key_at_top_level_and_in_daemon() {
        let msg = error("[daemon]\nshutdown_timout = \"1s\"\n");
        assert!(msg.starts_with("jobs.toml:2:1:"), "{msg}");
        assert!(msg.contains("unknown field `shutdown_timout`"), "{msg}");
        let msg = error("[jbos.a]\nevery = \"1s\"\n");
        assert!(msg.contains("unknown field `jbos`"), "{msg}");
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
