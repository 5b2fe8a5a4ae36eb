//! The Prometheus metrics (the `prometheus-client` crate): one registry per daemon, and per-job
//! handles looked up once so that recording a run takes no lock.
//!
//! `/metrics` speaks two formats (see [`Format`]): OpenMetrics, which prometheus-client writes,
//! to a client that asks for it, and otherwise the classic Prometheus text format, converted
//! from that by [`classic`]. Every per-job series has the label `job_name` (not `job`, which
//! Prometheus sets on every series of a scraped target, renaming ours to `exported_job`).

mod classic;
mod jobs;

use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, LazyLock};

use chrono::{DateTime, Utc};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::registry::Registry;

use crate::action::{Outcome, RunReport};
use crate::cluster::Cluster;
use jobs::{JobSeries, JobSeriesCollector, JobSeriesSet};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct JobLabel {
    job_name: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabel {
    result: String,
}

/// The `outcome` label values of `tickd_runs_total`, in the order of [`JobMetrics`]' counters:
/// the runs' own outcomes, then the fires an overlap policy skipped, the retries dropped and the
/// run-now requests refused.
const RUN_OUTCOMES: [&str; 7] = [
    Outcome::Success.as_str(),
    Outcome::Failure.as_str(),
    Outcome::Timeout.as_str(),
    Outcome::Stopped.as_str(),
    SKIPPED_OVERLAP,
    RETRY_DROPPED,
    REFUSED,
];

/// Where each outcome sits in [`RUN_OUTCOMES`] (and its counter in a job's series).
mod outcome_index {
    pub(super) const SUCCESS: usize = 0;
    pub(super) const FAILURE: usize = 1;
    pub(super) const TIMEOUT: usize = 2;
    pub(super) const STOPPED: usize = 3;
    pub(super) const SKIPPED_OVERLAP: usize = 4;
    pub(super) const RETRY_DROPPED: usize = 5;
    pub(super) const REFUSED: usize = 6;
}

/// The `outcome` label of fires skipped by the overlap policy.
const SKIPPED_OVERLAP: &str = "skipped_overlap";
/// The `outcome` label of retries dropped (see [`crate::status::RunCounts::retries_dropped`]).
const RETRY_DROPPED: &str = "retry_dropped";
/// The `outcome` label of run-now requests the overlap policy refused (see
/// [`crate::status::RunCounts::refused`]).
const REFUSED: &str = "refused";

/// The exposition formats of `/metrics`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// The classic Prometheus text format, version 0.0.4: what `promtool check metrics`, older
    /// scrapers and people with curl read. The default.
    Text,
    /// OpenMetrics 1.0.0 text, to a client that asks for it (Prometheus does, first).
    OpenMetrics,
}

impl Format {
    /// The format for a request's `Accept` header: OpenMetrics when it names
    /// `application/openmetrics-text` with a quality above 0 and at least that of any range the
    /// classic format matches (`text/plain`, `text/*`, `*/*`); otherwise (no header, `*/*`,
    /// `text/plain`, or only types we do not serve) the classic format.
    pub fn from_accept(accept: Option<&str>) -> Format {
        let (mut openmetrics, mut text) = (0.0_f64, 0.0_f64);
        for range in accept.unwrap_or("").split(',') {
            let mut parts = range.split(';').map(str::trim);
            let media = parts.next().unwrap_or("").to_ascii_lowercase();
            let quality = parts
                .filter_map(|p| p.split_once('='))
                .find(|(key, _)| key.trim().eq_ignore_ascii_case("q"))
                .map_or(1.0, |(_, q)| q.trim().parse::<f64>().unwrap_or(0.0));
            match media.as_str() {
                "application/openmetrics-text" => openmetrics = openmetrics.max(quality),
                "text/plain" | "text/*" | "*/*" => text = text.max(quality),
                _ => {}
            }
        }
        if openmetrics > 0.0 && openmetrics >= text {
            Format::OpenMetrics
        } else {
            Format::Text
        }
    }

    /// The `Content-Type` of an answer in this format.
    pub fn content_type(self) -> &'static str {
        match self {
            Format::Text => "text/plain; version=0.0.4; charset=utf-8",
            Format::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
        }
    }
}

/// Log lines dropped because the log writer's queue was full (stderr not keeping up), exported by
/// every [`Metrics`] as `tickd_log_lines_dropped_total`.
///
/// A static, not a [`Metrics`] field: what drops lines is the process-wide `tracing` subscriber,
/// which the binary sets up before any daemon (and its [`Metrics`]) exists, and which outlives
/// it. The binary adds to it; a program that embeds the daemon may add its own drops, or leave
/// it at 0.
pub static LOG_LINES_DROPPED: LazyLock<Counter> = LazyLock::new(Counter::default);

/// The Prometheus metrics (the `prometheus-client` crate, text exposition format).
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// Every job's series but its task restarts (see [`jobs`]).
    jobs: Arc<JobSeriesSet>,
    in_flight: Gauge,
    reloads: Family<ResultLabel, Counter>,
    rss: Gauge,
    task_restarts: Family<JobLabel, Counter>,
    /// Series per job; when off, every job counts into the one series labelled
    /// `job_name=""`, which Prometheus stores as a series without the label.
    per_job: bool,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Registers every metric.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("tickd");
        let jobs = Arc::<JobSeriesSet>::default();
        registry.register_collector(Box::new(JobSeriesCollector(Arc::clone(&jobs))));
        let in_flight = Gauge::default();
        registry.register("runs_in_flight", "Runs going now", in_flight.clone());
        let reloads = Family::<ResultLabel, Counter>::default();
        registry.register(
            "config_reloads",
            "Configuration reloads by result (applied, rejected)",
            reloads.clone(),
        );
        let rss = Gauge::default();
        registry.register(
            "process_resident_memory_bytes",
            "The daemon's resident memory",
            rss.clone(),
        );
        let task_restarts = Family::<JobLabel, Counter>::default();
        registry.register(
            "job_task_restarts",
            "Job tasks that panicked (a bug) and were started again, by job",
            task_restarts.clone(),
        );
        registry.register(
            "log_lines_dropped",
            "Log lines dropped because stderr was not keeping up (the log queue was full)",
            LOG_LINES_DROPPED.clone(),
        );
        Metrics {
            task_restarts,
            per_job: true,
            registry,
            jobs,
            in_flight,
            reloads,
            rss,
        }
    }

    /// Turns the series per job off (`[daemon] job_metrics = false`): the jobs then share one
    /// series per metric, their totals. Set before any job takes its handles.
    pub fn set_per_job(&mut self, per_job: bool) {
        self.per_job = per_job;
    }

    /// The `job_name` label of `job`'s series: its name, or "" (no label) without series per job.
    fn job_name(&self, job: &str) -> String {
        if self.per_job {
            job.to_owned()
        } else {
            String::new()
        }
    }

    /// Counts a restart of `job`'s task after a panic.
    pub fn job_task_restarted(&self, job: &str) {
        self.task_restarts
            .get_or_create(&JobLabel {
                job_name: self.job_name(job),
            })
            .inc();
    }

    /// The metrics of one job, looked up once: recording a run then takes no lock and no
    /// allocation (the handles share their values with the registry).
    pub fn for_job(&self, job: &str) -> JobMetrics {
        JobMetrics {
            series: self.jobs.get_or_create(&self.job_name(job)),
            in_flight: self.in_flight.clone(),
        }
    }

    /// Drops a removed job's series, so that reloads which rename or remove jobs do not grow
    /// `/metrics` for ever. Runs of it still in flight record into handles no longer exported.
    pub fn forget_job(&self, job: &str) {
        // The totals stay: the other jobs count into them too.
        if !self.per_job {
            return;
        }
        self.jobs.remove(job);
        self.task_restarts.remove(&JobLabel {
            job_name: job.to_owned(),
        });
    }

    /// A job's lateness and duration histograms as they are now, for the status page; `None`
    /// for a job the metrics do not know.
    pub fn job_histograms(&self, job: &str) -> Option<JobHistograms> {
        if !self.per_job {
            return None;
        }
        let series = self.jobs.get(job)?;
        Some(JobHistograms {
            lateness: series.lateness.buckets(),
            duration: series.duration.buckets(),
        })
    }

    /// Exports the group keeper's `tickd_group_keeper_up` and `tickd_group_keeper_restarts_total`
    /// (only a daemon that runs a keeper has them).
    pub fn register_group_keeper(&mut self, keeper: &crate::process::GroupKeeper) {
        let (up, restarts) = keeper.metrics();
        self.registry.register(
            "group_keeper_up",
            "1 while the group keeper (which kills the jobs' process groups should the daemon die) runs",
            up,
        );
        self.registry.register(
            "group_keeper_restarts",
            "Group keepers started again after the previous one died",
            restarts,
        );
    }

    /// Exports the cluster's `tickd_cluster_*` series, read from [`Cluster::status`] at each
    /// scrape (only a daemon in a cluster has them): `owner` (1/0), `epoch` (of the ownership this
    /// node holds, 0 when none), `connected` (1/0), `window_seconds` (of confirmed window left, 0
    /// when not owning), `renewal_seconds` (the last statement's round trip; absent until the
    /// first answer), `jobs_mismatch` (1 while this node's jobs differ from the owner's), and the
    /// counters `takeovers_total` and `failures_total`.
    pub fn register_cluster(&mut self, cluster: Cluster) {
        self.registry
            .register_collector(Box::new(ClusterCollector(cluster)));
    }

    /// A reload was applied (`true`) or rejected.
    pub fn reloaded(&self, applied: bool) {
        let result = if applied { "applied" } else { "rejected" };
        self.reloads
            .get_or_create(&ResultLabel {
                result: result.to_owned(),
            })
            .inc();
    }

    /// The metrics in the classic Prometheus text format ([`Format::Text`]).
    pub fn encode(&self) -> String {
        self.encode_as(Format::Text)
    }

    /// The metrics in `format`.
    pub fn encode_as(&self, format: Format) -> String {
        self.rss
            .set(i64::try_from(crate::process::own_rss()).unwrap_or(i64::MAX));
        let mut openmetrics = String::new();
        if prometheus_client::encoding::text::encode(&mut openmetrics, &self.registry).is_err() {
            openmetrics.clear();
        }
        let text = match format {
            Format::OpenMetrics => openmetrics,
            Format::Text => classic::from_openmetrics(&openmetrics),
        };
        // The text of many jobs' series (2.2 KB a job) is built from millions of small pieces;
        // freed, the allocator kept most of them: 2-3 KB per job of RSS after a scrape, as much
        // as the jobs themselves take. Given back as after a large file's parse.
        if text.len() > LARGE_TEXT {
            crate::os::return_freed_memory();
        }
        text
    }
}

/// The size from which an encoding gives its memory back to the system (see
/// [`Metrics::encode_as`]): some 500 jobs' series.
const LARGE_TEXT: usize = 1 << 20;

/// The `tickd_cluster_*` series of [`Metrics::register_cluster`], computed at each scrape.
#[derive(Debug)]
struct ClusterCollector(Cluster);

impl Collector for ClusterCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let status = self.0.status();
        let flag = |on: bool| i64::from(on);
        let owned = i64::try_from(status.shards_owned.len()).unwrap_or(i64::MAX);
        let gauges: [(&str, &str, ConstGauge); 5] = [
            (
                "cluster_owner",
                "1 while this node owns a shard of the cluster (fires its jobs), 0 while it owns none",
                ConstGauge::new(flag(status.owner)),
            ),
            (
                "cluster_epoch",
                "The highest epoch of the shards this node owns; 0 when it owns none",
                ConstGauge::new(status.epoch.unwrap_or(0)),
            ),
            (
                "cluster_shards_owned",
                "How many of the cluster's shards this node owns",
                ConstGauge::new(owned),
            ),
            (
                "cluster_connected",
                "1 while the cluster database answers this node's statements",
                ConstGauge::new(flag(status.connected)),
            ),
            (
                "cluster_jobs_mismatch",
                "1 while this node's cluster jobs differ from the owner's (it will not take ownership)",
                ConstGauge::new(flag(status.refusal.is_some())),
            ),
        ];
        for (name, help, gauge) in gauges {
            gauge.encode(encoder.encode_descriptor(name, help, None, gauge.metric_type())?)?;
        }
        let window = status.window_left_ms.unwrap_or(0) as f64 / 1000.0;
        let mut seconds = vec![
            (
                "cluster_window_seconds",
                "How much of this node's window of ownership the database has confirmed is left; 0 when it does not own",
                ConstGauge::new(window),
            ),
            (
                "cluster_clock_offset_seconds",
                "The cluster database's clock less this node's, as estimated from the renewals (cluster jobs fire on the database's time)",
                ConstGauge::new(status.clock_offset_ms / 1000.0),
            ),
        ];
        if let Some(rtt) = status.round_trip_ms {
            seconds.push((
                "cluster_renewal_seconds",
                "The round trip of this node's last statement to the cluster database (a renewal, or an attempt to take over)",
                ConstGauge::new(rtt / 1000.0),
            ));
        }
        for (name, help, gauge) in seconds {
            gauge.encode(encoder.encode_descriptor(name, help, None, gauge.metric_type())?)?;
        }
        let counters = [
            (
                "cluster_takeovers",
                "How often this node took ownership of the cluster since it started",
                ConstCounter::new(status.takeovers),
            ),
            (
                "cluster_failures",
                "Statements to the cluster database that failed or timed out, and connections that could not be made",
                ConstCounter::new(status.failures),
            ),
            (
                "cluster_handoffs",
                "Shards this node released to another node or took over since it started",
                ConstCounter::new(status.handoffs),
            ),
        ];
        for (name, help, counter) in counters {
            counter.encode(encoder.encode_descriptor(
                name,
                help,
                None,
                counter.metric_type(),
            )?)?;
        }
        Ok(())
    }
}

/// A job's histograms as [`Metrics::job_histograms`] reads them.
#[derive(Debug, Clone, PartialEq)]
pub struct JobHistograms {
    /// `tickd_fire_lateness_seconds`.
    pub lateness: Buckets,
    /// `tickd_run_duration_seconds`.
    pub duration: Buckets,
}

/// One histogram's buckets: each upper bound in seconds with the observations at or below it
/// (cumulative, as Prometheus counts them; the last bound is `+Inf`), and their sum.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Buckets {
    /// `(le, cumulative count)`, in increasing `le`.
    pub cumulative: Vec<(f64, u64)>,
    /// The sum of the observations, in seconds.
    pub sum: f64,
}

impl Buckets {
    /// How many observations in all.
    pub fn count(&self) -> u64 {
        self.cumulative.last().map_or(0, |(_, count)| *count)
    }

    /// Each bucket's own count (not cumulative): `(lower bound, upper bound, count)`.
    pub fn per_bucket(&self) -> Vec<(f64, f64, u64)> {
        let mut below = (0.0, 0);
        self.cumulative
            .iter()
            .map(|&(le, count)| {
                let bucket = (below.0, le, count.saturating_sub(below.1));
                below = (le, count);
                bucket
            })
            .collect()
    }
}

/// One job's metric handles; see [`Metrics::for_job`].
#[derive(Debug, Clone)]
pub struct JobMetrics {
    series: Arc<JobSeries>,
    in_flight: Gauge,
}

impl JobMetrics {
    /// A run started, `lateness` after its due instant. `in_flight`: it goes on after its
    /// start (a run that ended at its first poll is never counted in flight: the gauge is one
    /// atomic shared by every job, and touching it twice per fire from two workers was most of
    /// the cost of a fire's metrics).
    pub fn run_started(&self, lateness: std::time::Duration, in_flight: bool) {
        if in_flight {
            self.in_flight.inc();
        }
        self.series.lateness.observe(lateness);
    }

    /// A run ended.
    pub fn run_ended(
        &self,
        report: &RunReport,
        duration: std::time::Duration,
        started: DateTime<Utc>,
        was_in_flight: bool,
    ) {
        if was_in_flight {
            self.in_flight.dec();
        }
        if report.outcome == Outcome::Success {
            self.series
                .set_last_success(started.timestamp_millis() as f64 / 1000.0);
        }
        self.count(match report.outcome {
            Outcome::Success => outcome_index::SUCCESS,
            Outcome::Failure => outcome_index::FAILURE,
            Outcome::Timeout => outcome_index::TIMEOUT,
            Outcome::Stopped => outcome_index::STOPPED,
        });
        self.series.duration.observe(duration);
    }

    /// Adds one to `tickd_runs_total` with the `outcome` label `RUN_OUTCOMES[outcome]`.
    fn count(&self, outcome: usize) {
        self.series.runs[outcome].fetch_add(1, Relaxed);
    }

    /// A fire was skipped by the overlap policy.
    pub fn skipped(&self) {
        self.count(outcome_index::SKIPPED_OVERLAP);
    }

    /// A retry was dropped.
    pub fn retry_dropped(&self) {
        self.count(outcome_index::RETRY_DROPPED);
    }

    /// A run-now request was refused by the overlap policy.
    pub fn refused(&self) {
        self.count(outcome_index::REFUSED);
    }

    /// `count` fires were missed (see [`crate::status::RunCounts::missed`]).
    pub fn missed(&self, count: u64) {
        self.series.missed.fetch_add(count, Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn each_outcome_counts_into_its_own_labelled_series() {
        let metrics = Metrics::new();
        let job = metrics.for_job("x");
        let report = |outcome| RunReport {
            outcome,
            ..RunReport::success()
        };
        let outcomes = [
            Outcome::Success,
            Outcome::Failure,
            Outcome::Timeout,
            Outcome::Stopped,
        ];
        // 1 success, 2 failures, ..., 4 stopped; then 5, 6 and 7 of the runs that did not happen.
        for (times, outcome) in (1..).zip(outcomes) {
            for _ in 0..times {
                job.run_ended(&report(outcome), Duration::ZERO, Utc::now(), false);
            }
        }
        (0..5).for_each(|_| job.skipped());
        (0..6).for_each(|_| job.retry_dropped());
        (0..7).for_each(|_| job.refused());
        let text = metrics.encode();
        for (times, outcome) in (1..).zip(RUN_OUTCOMES) {
            let line =
                format!("tickd_runs_total{{job_name=\"x\",outcome=\"{outcome}\"}} {times}\n");
            assert!(text.contains(&line), "{line:?} in:\n{text}");
        }
        assert!(
            text.contains("tickd_run_duration_seconds_count{job_name=\"x\"} 10\n"),
            "{text}"
        );
    }

    #[test]
    fn a_job_taken_again_keeps_its_counts_and_jobs_are_listed_by_name() {
        let metrics = Metrics::new();
        for job in ["b", "a", "c"] {
            metrics.for_job(job).missed(1);
        }
        // What a reload does for a job it keeps.
        metrics.for_job("b").missed(2);
        let text = metrics.encode();
        assert!(
            text.contains("tickd_fires_missed_total{job_name=\"b\"} 3\n"),
            "{text}"
        );
        let order: Vec<&str> = text
            .lines()
            .filter_map(|l| l.strip_prefix("tickd_fires_missed_total{job_name=\""))
            .map(|l| &l[..1])
            .collect();
        assert_eq!(order, ["a", "b", "c"]);
    }

    #[test]
    fn without_series_per_job_every_job_counts_into_the_totals() {
        let mut metrics = Metrics::new();
        metrics.set_per_job(false);
        metrics.for_job("a").skipped();
        metrics.for_job("b").skipped();
        metrics.forget_job("a");
        let text = metrics.encode();
        assert!(
            text.contains("tickd_runs_total{job_name=\"\",outcome=\"skipped_overlap\"} 2\n"),
            "{text}"
        );
        assert!(!text.contains("job_name=\"a\""), "{text}");
        assert_eq!(metrics.job_histograms("b"), None);
    }

    #[test]
    fn a_jobs_histograms_are_read_back_bucket_by_bucket() {
        let metrics = Metrics::new();
        assert_eq!(metrics.job_histograms("x"), None);
        let job = metrics.for_job("x");
        for micros in [5, 5, 700, 2_000_000] {
            job.run_started(std::time::Duration::from_micros(micros), true);
        }
        let read = metrics.job_histograms("x").expect("known job");
        assert_eq!(read.lateness.count(), 4);
        assert!((read.lateness.sum - 2.00071).abs() < 1e-9, "{read:?}");
        let per: Vec<(f64, u64)> = read
            .lateness
            .per_bucket()
            .into_iter()
            .filter(|b| b.2 > 0)
            .map(|b| (b.1, b.2))
            .collect();
        assert_eq!(per, [(0.00001, 2), (0.001, 1), (f64::INFINITY, 1)]);
        assert_eq!(read.duration.count(), 0);
        assert_eq!(read.duration.cumulative.len(), 11, "10 bounds and +Inf");
    }

    #[test]
    fn the_cluster_series_are_read_from_its_status_at_each_scrape() {
        let config = crate::config::parse(
            std::path::Path::new("jobs.toml"),
            "[cluster]\npostgres = \"postgres://tickd@db.invalid/app\"\nnode = \"web-1\"\n[jobs.a]\nevery = \"1s\"\nhandler = \"log\"\n",
            &crate::Handlers::with_builtins(),
        )
        .expect("valid");
        // Without a cluster, none of its series.
        assert!(!Metrics::new().encode().contains("tickd_cluster"));
        let owner = Cluster::unjoined(&config, |s| {
            s.owner = true;
            s.epoch = Some(7);
            s.window_left_ms = Some(60_000);
            s.connected = true;
            s.round_trip_ms = Some(0.5);
            s.takeovers = 2;
            s.failures = 3;
        });
        let mut metrics = Metrics::new();
        metrics.register_cluster(owner);
        let text = metrics.encode();
        for line in [
            "tickd_cluster_owner 1\n",
            "tickd_cluster_epoch 7\n",
            "tickd_cluster_connected 1\n",
            "tickd_cluster_jobs_mismatch 0\n",
            "tickd_cluster_renewal_seconds 0.0005\n",
            "tickd_cluster_clock_offset_seconds 0.0\n",
            "tickd_cluster_takeovers_total 2\n",
            "tickd_cluster_failures_total 3\n",
            "# TYPE tickd_cluster_takeovers_total counter\n",
            "# TYPE tickd_cluster_window_seconds gauge\n",
        ] {
            assert!(text.contains(line), "{line:?} in:\n{text}");
        }
        let window = text
            .lines()
            .find_map(|l| l.strip_prefix("tickd_cluster_window_seconds "))
            .and_then(|v| v.parse::<f64>().ok())
            .expect("the window series");
        assert!(window > 50.0 && window <= 60.0, "{window}");
        // OpenMetrics names the counter family without `_total`.
        let openmetrics = metrics.encode_as(Format::OpenMetrics);
        assert!(
            openmetrics.contains("# TYPE tickd_cluster_takeovers counter\n"),
            "{openmetrics}"
        );
        // The series beside the others, which keep their names.
        assert!(text.contains("tickd_runs_in_flight 0\n"), "{text}");

        let refusing = Cluster::unjoined(&config, |s| {
            s.refusal = Some("this node's jobs differ".to_owned());
        });
        let mut metrics = Metrics::new();
        metrics.register_cluster(refusing);
        let text = metrics.encode();
        for line in [
            "tickd_cluster_owner 0\n",
            "tickd_cluster_epoch 0\n",
            "tickd_cluster_window_seconds 0.0\n",
            "tickd_cluster_connected 0\n",
            "tickd_cluster_jobs_mismatch 1\n",
        ] {
            assert!(text.contains(line), "{line:?} in:\n{text}");
        }
        // No round trip yet: no renewal series rather than a made-up 0.
        assert!(!text.contains("tickd_cluster_renewal_seconds"), "{text}");
    }

    #[test]
    fn a_forgotten_job_leaves_no_series_and_others_keep_theirs() {
        let metrics = Metrics::new();
        for job in ["gone", "kept"] {
            let handles = metrics.for_job(job);
            handles.run_started(std::time::Duration::from_micros(50), true);
            handles.skipped();
            handles.missed(3);
        }
        assert!(metrics.encode().contains("job_name=\"gone\""));
        metrics.forget_job("gone");
        let text = metrics.encode();
        assert!(!text.contains("job_name=\"gone\""), "{text}");
        assert!(
            text.contains("tickd_runs_total{job_name=\"kept\",outcome=\"skipped_overlap\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("tickd_fire_lateness_seconds_count{job_name=\"kept\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("tickd_fires_missed_total{job_name=\"kept\"} 3"),
            "{text}"
        );
    }

    /// A daemon's metrics with every family tickd has given samples: jobs with runs of each
    /// outcome, reloads, a task restart, the group keeper's series aside (they need a keeper),
    /// and a cluster.
    fn busy_metrics() -> Metrics {
        let config = crate::config::parse(
            std::path::Path::new("jobs.toml"),
            "[cluster]\npostgres = \"postgres://tickd@db.invalid/app\"\nnode = \"web-1\"\n[jobs.a]\nevery = \"1s\"\nhandler = \"log\"\n",
            &crate::Handlers::with_builtins(),
        )
        .expect("valid");
        let mut metrics = Metrics::new();
        metrics.register_cluster(Cluster::unjoined(&config, |s| {
            s.round_trip_ms = Some(0.5);
        }));
        let job = metrics.for_job("a");
        job.run_started(std::time::Duration::from_micros(30), true);
        let report = RunReport {
            outcome: Outcome::Success,
            exit_code: Some(0),
            signal: None,
            http_status: None,
            reason: None,
            forced: false,
            output: None,
        };
        job.run_ended(
            &report,
            std::time::Duration::from_millis(3),
            Utc::now(),
            true,
        );
        job.skipped();
        job.retry_dropped();
        job.refused();
        job.missed(2);
        metrics.reloaded(true);
        metrics.reloaded(false);
        metrics.job_task_restarted("a");
        metrics
    }

    /// In the classic text format every sample belongs to the family of the TYPE line above it
    /// (a counter's family named with `_total`), each family has HELP, and there is no `# EOF`.
    #[test]
    fn the_classic_format_names_every_family_as_its_samples() {
        let text = busy_metrics().encode();
        assert!(!text.contains("# EOF"), "{text}");
        assert!(!text.contains("# UNIT"), "{text}");
        let mut family: Option<(String, String)> = None;
        let mut helped = std::collections::HashSet::new();
        let mut samples = 0;
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# HELP ") {
                helped.insert(rest.split(' ').next().unwrap_or("").to_owned());
            } else if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').expect("name and type");
                assert!(helped.contains(name), "no HELP for {name}:\n{text}");
                if kind == "counter" {
                    assert!(name.ends_with("_total"), "{line}");
                }
                family = Some((name.to_owned(), kind.to_owned()));
            } else {
                let (name, kind) = family.as_ref().expect("a TYPE line before samples");
                let sample = line.split(['{', ' ']).next().unwrap_or("");
                let fits = match kind.as_str() {
                    "histogram" => ["_bucket", "_sum", "_count"]
                        .iter()
                        .any(|suffix| sample.strip_prefix(name.as_str()) == Some(suffix)),
                    _ => sample == name,
                };
                assert!(fits, "{sample} under # TYPE {name} {kind}:\n{text}");
                samples += 1;
            }
        }
        assert!(samples > 40, "{text}");
        for line in [
            "# TYPE tickd_runs_total counter\n",
            "tickd_runs_total{job_name=\"a\",outcome=\"refused\"} 1\n",
            "tickd_runs_total{job_name=\"a\",outcome=\"skipped_overlap\"} 1\n",
            "tickd_runs_total{job_name=\"a\",outcome=\"retry_dropped\"} 1\n",
            "# TYPE tickd_fires_missed_total counter\n",
            "# TYPE tickd_config_reloads_total counter\n",
            "# TYPE tickd_job_task_restarts_total counter\n",
            "# TYPE tickd_log_lines_dropped_total counter\n",
            "# TYPE tickd_run_duration_seconds histogram\n",
            "# TYPE tickd_last_success_timestamp_seconds gauge\n",
        ] {
            assert!(text.contains(line), "{line:?} in:\n{text}");
        }
        // The same samples in both formats.
        let openmetrics = busy_metrics().encode_as(Format::OpenMetrics);
        assert!(openmetrics.ends_with("# EOF\n"), "{openmetrics}");
        let sample_lines = |t: &str| {
            let mut lines: Vec<String> = t
                .lines()
                .filter(|l| !l.starts_with('#'))
                .filter(|l| !l.starts_with("tickd_process_resident_memory_bytes"))
                .filter(|l| !l.starts_with("tickd_cluster_window_seconds"))
                .filter(|l| !l.starts_with("tickd_last_success_timestamp_seconds"))
                .map(str::to_owned)
                .collect();
            lines.sort();
            lines
        };
        assert_eq!(sample_lines(&text).len(), sample_lines(&openmetrics).len());
    }

    #[test]
    fn the_accept_header_picks_openmetrics_only_when_asked_for() {
        let cases = [
            (None, Format::Text),
            (Some(""), Format::Text),
            (Some("*/*"), Format::Text),
            (Some("text/plain"), Format::Text),
            (Some("text/plain;version=0.0.4"), Format::Text),
            (Some("application/json"), Format::Text),
            (Some("application/openmetrics-text"), Format::OpenMetrics),
            (
                Some("application/openmetrics-text; version=1.0.0; charset=utf-8"),
                Format::OpenMetrics,
            ),
            // What Prometheus 2.42 sends.
            (
                Some("application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1"),
                Format::OpenMetrics,
            ),
            (
                Some("text/plain;version=0.0.4;q=1, application/openmetrics-text;q=0.5"),
                Format::Text,
            ),
            (Some("application/openmetrics-text;q=0"), Format::Text),
            (Some("Application/OpenMetrics-Text"), Format::OpenMetrics),
        ];
        for (accept, want) in cases {
            assert_eq!(Format::from_accept(accept), want, "{accept:?}");
        }
    }
}
