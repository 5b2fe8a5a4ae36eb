//! The series of every job (`tickd_runs_total`, `tickd_run_duration_seconds`,
//! `tickd_fire_lateness_seconds`, `tickd_fires_missed_total`,
//! `tickd_last_success_timestamp_seconds`): one allocation of plain atomics per job, encoded at
//! each scrape through prometheus-client's [`Collector`].
//!
//! Written by hand because prometheus-client's `Family` keeps every series in an `Arc` of its
//! own, keyed by owned label strings (seven entries of two `String`s per job for
//! `tickd_runs_total` alone), and its `Histogram` takes a lock for every observation: about
//! 2 KB per job and two locks per fire, where these atomics are some 400 bytes and no lock.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;

use super::{Buckets, RUN_OUTCOMES};

/// The upper bounds of `tickd_run_duration_seconds`, in nanoseconds (1 ms to 1 h).
const DURATION_BOUNDS_NS: Bounds = [
    1_000_000,
    10_000_000,
    100_000_000,
    500_000_000,
    1_000_000_000,
    5_000_000_000,
    30_000_000_000,
    120_000_000_000,
    600_000_000_000,
    3_600_000_000_000,
];

/// The upper bounds of `tickd_fire_lateness_seconds`, in nanoseconds (10 µs to 1 s).
const LATENESS_BOUNDS_NS: Bounds = [
    10_000,
    50_000,
    100_000,
    250_000,
    500_000,
    1_000_000,
    5_000_000,
    10_000_000,
    100_000_000,
    1_000_000_000,
];

/// A histogram's finite upper bounds, in nanoseconds, increasing; `+Inf` is implied.
type Bounds = [u64; 10];

/// Every job's series, by job name (so that `/metrics` lists them in name order).
#[derive(Debug, Default)]
pub(super) struct JobSeriesSet {
    jobs: RwLock<BTreeMap<String, Arc<JobSeries>>>,
}

impl JobSeriesSet {
    /// `name`'s series, created (at zero) if it has none: a job that a reload keeps, keeps its
    /// counts.
    pub(super) fn get_or_create(&self, name: &str) -> Arc<JobSeries> {
        if let Some(series) = self.get(name) {
            return series;
        }
        let mut jobs = self.jobs.write().unwrap_or_else(PoisonError::into_inner);
        Arc::clone(
            jobs.entry(name.to_owned())
                .or_insert_with(|| Arc::new(JobSeries::new(name))),
        )
    }

    /// `name`'s series, if it has any.
    pub(super) fn get(&self, name: &str) -> Option<Arc<JobSeries>> {
        let jobs = self.jobs.read().unwrap_or_else(PoisonError::into_inner);
        jobs.get(name).cloned()
    }

    /// Drops `name`'s series; handles to them still count, into series no longer exported.
    pub(super) fn remove(&self, name: &str) {
        let mut jobs = self.jobs.write().unwrap_or_else(PoisonError::into_inner);
        jobs.remove(name);
    }

    /// The series as they are now, in name order: a scrape encodes these without holding the
    /// lock, so that a reload adding jobs does not wait for a large `/metrics`.
    fn snapshot(&self) -> Vec<Arc<JobSeries>> {
        let jobs = self.jobs.read().unwrap_or_else(PoisonError::into_inner);
        jobs.values().cloned().collect()
    }
}

/// One job's series.
#[derive(Debug)]
pub(super) struct JobSeries {
    /// The `job_name` label ("" for the totals of `[daemon] job_metrics = false`).
    name: String,
    /// `tickd_runs_total`, one counter per outcome of [`RUN_OUTCOMES`], in its order.
    pub(super) runs: [AtomicU64; RUN_OUTCOMES.len()],
    /// `tickd_fires_missed_total`.
    pub(super) missed: AtomicU64,
    /// `tickd_last_success_timestamp_seconds`, the bits of an `f64`.
    last_success: AtomicU64,
    /// `tickd_run_duration_seconds`.
    pub(super) duration: AtomicHistogram,
    /// `tickd_fire_lateness_seconds`.
    pub(super) lateness: AtomicHistogram,
}

impl JobSeries {
    fn new(name: &str) -> JobSeries {
        JobSeries {
            name: name.to_owned(),
            runs: Default::default(),
            missed: AtomicU64::new(0),
            last_success: AtomicU64::new(0.0_f64.to_bits()),
            duration: AtomicHistogram::new(&DURATION_BOUNDS_NS),
            lateness: AtomicHistogram::new(&LATENESS_BOUNDS_NS),
        }
    }

    /// Sets `tickd_last_success_timestamp_seconds`.
    pub(super) fn set_last_success(&self, unix_seconds: f64) {
        self.last_success.store(unix_seconds.to_bits(), Relaxed);
    }
}

/// A histogram of durations in atomics: a count per bucket and the sum in nanoseconds (an
/// integer, so that adding to it is one atomic instruction).
#[derive(Debug)]
pub(super) struct AtomicHistogram {
    bounds: &'static Bounds,
    /// Observations per bucket (not cumulative); the last is `+Inf`'s.
    counts: [AtomicU64; 11],
    sum_ns: AtomicU64,
}

impl AtomicHistogram {
    fn new(bounds: &'static Bounds) -> AtomicHistogram {
        AtomicHistogram {
            bounds,
            counts: Default::default(),
            sum_ns: AtomicU64::new(0),
        }
    }

    /// Counts one observation of `value`.
    pub(super) fn observe(&self, value: Duration) {
        let ns = u64::try_from(value.as_nanos()).unwrap_or(u64::MAX);
        let bucket = self
            .bounds
            .iter()
            .position(|&bound| ns <= bound)
            .unwrap_or(self.bounds.len());
        self.counts[bucket].fetch_add(1, Relaxed);
        self.sum_ns.fetch_add(ns, Relaxed);
    }

    /// The sum in seconds, the count, and each bucket's upper bound in seconds with its own
    /// count (`f64::MAX` for `+Inf`, as prometheus-client's encoder takes them). The count is
    /// the buckets' total, so that it always equals the `+Inf` bucket's.
    fn read(&self) -> (f64, u64, [(f64, u64); 11]) {
        let mut buckets = [(f64::MAX, 0); 11];
        for (i, (bucket, count)) in buckets.iter_mut().zip(&self.counts).enumerate() {
            if let Some(&bound) = self.bounds.get(i) {
                bucket.0 = bound as f64 / 1e9;
            }
            bucket.1 = count.load(Relaxed);
        }
        let count = buckets.iter().map(|b| b.1).sum();
        (self.sum_ns.load(Relaxed) as f64 / 1e9, count, buckets)
    }

    /// The histogram as the status page reads it.
    pub(super) fn buckets(&self) -> Buckets {
        let (sum, _, buckets) = self.read();
        let mut total = 0;
        let cumulative = buckets
            .iter()
            .map(|&(le, count)| {
                total += count;
                (if le == f64::MAX { f64::INFINITY } else { le }, total)
            })
            .collect();
        Buckets { cumulative, sum }
    }
}

/// Picks one of a job's histograms.
type PickHistogram = fn(&JobSeries) -> &AtomicHistogram;

/// Encodes a [`JobSeriesSet`] at each scrape.
#[derive(Debug)]
pub(super) struct JobSeriesCollector(pub(super) Arc<JobSeriesSet>);

impl Collector for JobSeriesCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let jobs = self.0.snapshot();

        let mut family = encoder.encode_descriptor(
            "runs",
            "Runs by job and outcome (success, failure, timeout, stopped; and skipped_overlap, retry_dropped, refused for runs that did not happen)",
            None,
            MetricType::Counter,
        )?;
        for job in &jobs {
            for (outcome, count) in RUN_OUTCOMES.iter().zip(&job.runs) {
                let labels = [("job_name", job.name.as_str()), ("outcome", outcome)];
                family
                    .encode_family(&labels)?
                    .encode_counter::<NoLabelSet, _, u64>(&count.load(Relaxed), None)?;
            }
        }

        let histograms: [(&str, &str, PickHistogram); 2] = [
            (
                "run_duration_seconds",
                "How long runs took, by job",
                |job| &job.duration,
            ),
            (
                "fire_lateness_seconds",
                "Time from a run's due instant to its start, by job",
                |job| &job.lateness,
            ),
        ];
        for (name, help, histogram) in histograms {
            let mut family = encoder.encode_descriptor(name, help, None, MetricType::Histogram)?;
            for job in &jobs {
                let (sum, count, buckets) = histogram(job).read();
                family
                    .encode_family(&[("job_name", job.name.as_str())])?
                    .encode_histogram::<NoLabelSet>(sum, count, &buckets, None)?;
            }
        }

        let mut family = encoder.encode_descriptor(
            "fires_missed",
            "Fires that passed without their own run: the daemon was stalled or the wall clock jumped past them",
            None,
            MetricType::Counter,
        )?;
        for job in &jobs {
            family
                .encode_family(&[("job_name", job.name.as_str())])?
                .encode_counter::<NoLabelSet, _, u64>(&job.missed.load(Relaxed), None)?;
        }

        let mut family = encoder.encode_descriptor(
            "last_success_timestamp_seconds",
            "When the last successful run of each job started (Unix time)",
            None,
            MetricType::Gauge,
        )?;
        for job in &jobs {
            let seconds = f64::from_bits(job.last_success.load(Relaxed));
            family
                .encode_family(&[("job_name", job.name.as_str())])?
                .encode_gauge(&seconds)?;
        }
        Ok(())
    }
}
