//! Exactly once for jobs of 1 s and slower: each keeps a high-water mark, the latest of its
//! slots an owner has taken. The owner takes a slot shortly before its time, in one statement
//! for every job due at that instant, fenced by its epoch (the statement share-locks the
//! ownership row, so it commits before a takeover or finds the epoch gone), and fires it only
//! once the mark is confirmed. A new owner reads the marks after its takeover: a slot after a
//! job's mark was not taken by the old owner and never will be, so it may run it, once, as a
//! catch-up. A crash between a mark and its fire loses that fire (at most once, as for a run in
//! flight on a node that dies); the lead is kept short for that reason.
//!
//! With `on_node_loss = "rerun"` a job's runs also say when they finish (the latest finished
//! slot, sent with the next renewal): a new owner that finds the mark past it runs the marked
//! slot again, as its run was lost with the node.
//!
//! Jobs that fire more often than once a second are left to the windows alone: a mark per fire
//! would cost more statements than the cluster's budget of a few a second per node.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio_postgres::Client;

use crate::config::{JobSpec, OnNodeLoss, Scope};
use crate::schedule::Schedule;

/// How long before a slot it is taken, at least: many round trips on a loopback or LAN database
/// (the lease takes three measured round trips when that is longer).
pub(super) const LEAD: Duration = Duration::from_millis(50);

/// Takes slots: `$2` jobs at the `$3` slots, each under epoch `$5` of its shard `$4`; returns the
/// ones taken (a job whose mark is already at or past the slot is not). An epoch may take the
/// slots of its own window, also once the shard has passed on (the window it held ends where the
/// next one starts), and no others; the share lock on the ownership rows orders a take and a
/// takeover.
/// A new row's `finished` is the Unix epoch: none of its runs finished yet (a finite time, so that
/// it reads as one).
pub(super) const MARK: &str = "WITH owned AS (
        SELECT m.job, m.slot, m.epoch
        FROM unnest($2::text[], $3::timestamptz[], $4::int[], $5::bigint[])
            AS m(job, slot, shard, epoch)
        JOIN tickd_owner AS o ON o.cluster = $1 AND o.shard = m.shard
            AND (o.epoch = m.epoch OR (o.previous_epoch = m.epoch AND m.slot < o.window_start))
        FOR SHARE OF o
    )
    INSERT INTO tickd_marks (cluster, job, slot, epoch, finished)
    SELECT $1, job, slot, epoch, to_timestamp(0) FROM owned
    ON CONFLICT (cluster, job) DO UPDATE SET slot = excluded.slot, epoch = excluded.epoch
        WHERE tickd_marks.slot < excluded.slot
    RETURNING job, slot";

/// Gives back taken slots (`$2` jobs at the `$3` slots, taken under the `$4` epochs): each mark
/// moves to just before its slot, so that the next owner runs it as a catch-up.
pub(super) const GIVE_BACK: &str = "UPDATE tickd_marks AS m
    SET slot = m.slot - interval '1 microsecond',
        finished = greatest(m.finished, m.slot - interval '1 microsecond')
    FROM unnest($2::text[], $3::timestamptz[], $4::bigint[]) AS u(job, slot, epoch)
    WHERE m.cluster = $1 AND m.job = u.job AND m.slot = u.slot AND m.epoch = u.epoch";

/// Records that the runs of `$2` jobs for the `$3` slots finished (not fenced: whichever node ran
/// them, that is a fact).
pub(super) const FINISH: &str = "UPDATE tickd_marks AS m
    SET finished = greatest(m.finished, u.slot)
    FROM unnest($2::text[], $3::timestamptz[]) AS u(job, slot)
    WHERE m.cluster = $1 AND m.job = u.job";

/// The marks of the cluster's jobs.
const READ: &str = "SELECT job, slot, finished FROM tickd_marks WHERE cluster = $1";

/// A job's mark as read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Mark {
    /// The latest slot taken.
    pub slot: DateTime<Utc>,
    /// The latest slot whose run finished (`on_node_loss = "rerun"` jobs); `None`: unknown.
    pub finished: Option<DateTime<Utc>>,
}

/// Whether `spec` keeps a mark: a cluster job whose fires are at least a second apart.
pub fn keeps_mark(spec: &JobSpec) -> bool {
    spec.scope() == Scope::Cluster
        && match spec.schedule() {
            Schedule::Every(every) => every.period >= Duration::from_secs(1),
            Schedule::Cron(_) => true,
        }
}

/// The slots of the marked jobs still to be taken, by time.
#[derive(Debug, Default)]
pub(super) struct Agenda {
    jobs: HashMap<String, Arc<JobSpec>>,
    due: BTreeMap<DateTime<Utc>, Vec<String>>,
}

impl Agenda {
    /// The agenda of `jobs`' marked ones, from their first slot after `now`.
    pub fn new(jobs: &[Arc<JobSpec>], now: DateTime<Utc>) -> Self {
        let mut agenda = Agenda::default();
        for spec in jobs.iter().filter(|spec| keeps_mark(spec)) {
            agenda.jobs.insert(spec.name().to_owned(), spec.clone());
            agenda.plan(spec.name(), now);
        }
        agenda
    }

    fn plan(&mut self, job: &str, after: DateTime<Utc>) {
        if let Some(slot) = self
            .jobs
            .get(job)
            .and_then(|s| s.schedule().slot_after(after))
        {
            self.due.entry(slot).or_default().push(job.to_owned());
        }
    }

    /// The earliest slot still to be taken.
    pub fn next(&self) -> Option<DateTime<Utc>> {
        self.due.keys().next().copied()
    }

    /// Takes off the agenda the slots due by `until`, planning each job's next slot.
    pub fn take_due(&mut self, until: DateTime<Utc>) -> Vec<(String, DateTime<Utc>)> {
        let mut taken = Vec::new();
        while let Some(entry) = self.due.first_entry().filter(|entry| *entry.key() <= until) {
            let (slot, jobs) = entry.remove_entry();
            for job in jobs {
                self.plan(&job, slot);
                taken.push((job, slot));
            }
        }
        taken
    }

    /// The catch-ups a new owner runs, at `now`: for each marked job, its latest slot up to
    /// `now + lead` after its mark, if that is no older than `within`. That covers the slots the
    /// old owner did not take, and the new owner's own first ones that came due before it could
    /// take them (a takeover just before a slot); the job task fires a slot once either way.
    pub fn catch_ups(
        &self,
        marks: &HashMap<String, Mark>,
        now: DateTime<Utc>,
        lead: Duration,
        within: Duration,
    ) -> Vec<(String, DateTime<Utc>)> {
        let oldest = now - chrono::Duration::from_std(within).unwrap_or_default();
        let horizon = now + chrono::Duration::from_std(lead).unwrap_or_default();
        let mut catch_ups: Vec<_> = self
            .jobs
            .iter()
            .filter_map(|(job, spec)| {
                let mark = marks.get(job)?.slot;
                let slot = spec.schedule().slot_at_or_before(horizon)?;
                (slot > mark && slot >= oldest).then(|| (job.clone(), slot))
            })
            .collect();
        catch_ups.sort();
        catch_ups
    }

    /// The reruns a new owner runs, at `now`: for each `on_node_loss = "rerun"` job, the slot of
    /// its mark if that was taken but its run did not finish, no older than `within`. Already
    /// taken, they need no statement of their own.
    pub fn reruns(
        &self,
        marks: &HashMap<String, Mark>,
        now: DateTime<Utc>,
        within: Duration,
    ) -> Vec<(String, DateTime<Utc>)> {
        let oldest = now - chrono::Duration::from_std(within).unwrap_or_default();
        let mut reruns: Vec<_> = self
            .jobs
            .iter()
            .filter(|(_, spec)| spec.on_node_loss() == OnNodeLoss::Rerun)
            .filter_map(|(job, _)| {
                let mark = marks.get(job)?;
                let lost = mark.finished.is_some_and(|finished| mark.slot > finished);
                (lost && mark.slot >= oldest && mark.slot <= now).then(|| (job.clone(), mark.slot))
            })
            .collect();
        reruns.sort();
        reruns
    }
}

/// A slot to take: the job, the slot, its shard and the epoch to take it under.
pub(super) type Claim = (String, DateTime<Utc>, u32, i64);

/// Takes `slots` with `mark` (the prepared [`MARK`]); returns the ones taken.
pub(super) async fn take(
    client: &Client,
    mark: &tokio_postgres::Statement,
    settings: &crate::config::ClusterSettings,
    slots: &[Claim],
) -> Result<Vec<(String, DateTime<Utc>)>, tokio_postgres::Error> {
    // One row per job: `ON CONFLICT DO UPDATE` cannot change a row twice in one statement (a
    // late wake-up can find two slots of a job due).
    let mut latest: BTreeMap<&str, (DateTime<Utc>, u32, i64)> = BTreeMap::new();
    for (job, slot, shard, epoch) in slots {
        let entry = latest
            .entry(job.as_str())
            .or_insert((*slot, *shard, *epoch));
        if *slot > entry.0 {
            *entry = (*slot, *shard, *epoch);
        }
    }
    let jobs: Vec<&str> = latest.keys().copied().collect();
    let times: Vec<DateTime<Utc>> = latest.values().map(|v| v.0).collect();
    let shards: Vec<i32> = latest
        .values()
        .map(|v| i32::try_from(v.1).unwrap_or(i32::MAX))
        .collect();
    let epochs: Vec<i64> = latest.values().map(|v| v.2).collect();
    let rows = client
        .query(mark, &[&settings.name(), &jobs, &times, &shards, &epochs])
        .await?;
    rows.iter()
        .map(|row| Ok((row.try_get(0)?, row.try_get(1)?)))
        .collect()
}

/// The marks of `cluster`'s jobs.
pub(super) async fn read(
    client: &Client,
    cluster: &str,
) -> Result<HashMap<String, Mark>, tokio_postgres::Error> {
    let rows = client.query(READ, &[&cluster]).await?;
    rows.iter()
        .map(|row| {
            let mark = Mark {
                slot: row.try_get(1)?,
                finished: row.try_get(2)?,
            };
            Ok((row.try_get(0)?, mark))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(text)
            .expect("time")
            .with_timezone(&Utc)
    }

    fn jobs(text: &str) -> Vec<Arc<JobSpec>> {
        let config = crate::config::parse(
            std::path::Path::new("jobs.toml"),
            text,
            &crate::Handlers::with_builtins(),
        )
        .expect("valid");
        config.jobs().values().cloned().collect()
    }

    #[test]
    fn the_agenda_holds_the_slots_of_second_and_slower_cluster_jobs_in_time_order() {
        let jobs = jobs(
            "[jobs.fast]\nevery = \"200ms\"\nhandler = \"log\"\n\
             [jobs.second]\nevery = \"1s\"\nhandler = \"log\"\n\
             [jobs.cron]\ncron = \"*/2 * * * * *\"\nhandler = \"log\"\n\
             [jobs.local]\nevery = \"1s\"\nscope = \"node\"\nhandler = \"log\"\n",
        );
        let mut agenda = Agenda::new(&jobs, at("2026-01-01T00:00:00.300Z"));
        assert_eq!(agenda.next(), Some(at("2026-01-01T00:00:01Z")));
        let taken = agenda.take_due(at("2026-01-01T00:00:02Z"));
        assert_eq!(
            taken,
            [
                ("second".to_owned(), at("2026-01-01T00:00:01Z")),
                ("cron".to_owned(), at("2026-01-01T00:00:02Z")),
                ("second".to_owned(), at("2026-01-01T00:00:02Z")),
            ]
        );
        assert_eq!(agenda.next(), Some(at("2026-01-01T00:00:03Z")));
    }

    #[test]
    fn a_new_owner_catches_up_the_latest_slot_after_the_mark_once_and_only_if_recent() {
        let jobs = jobs(
            "[jobs.second]\nevery = \"1s\"\nhandler = \"log\"\n\
             [jobs.minute]\ncron = \"0 * * * * *\"\nhandler = \"log\"\n\
             [jobs.never]\nevery = \"1s\"\nhandler = \"log\"\n",
        );
        let agenda = Agenda::new(&jobs, at("2026-01-01T00:00:00Z"));
        let now = at("2026-01-01T00:01:03.500Z");
        let marks: HashMap<String, Mark> = [
            ("second", "2026-01-01T00:01:01Z"),
            ("minute", "2026-01-01T00:00:00Z"),
        ]
        .map(|(job, slot)| {
            let mark = Mark {
                slot: at(slot),
                finished: None,
            };
            (job.to_owned(), mark)
        })
        .into();
        let catch_ups = agenda.catch_ups(&marks, now, Duration::ZERO, Duration::from_secs(5));
        // `second`: 02 and 03 were not taken; one catch-up, for 03. `minute`: 00:01:00 is 3.5 s
        // old, within 5 s. `never` has no mark: nothing known, nothing caught up.
        assert_eq!(
            catch_ups,
            [
                ("minute".to_owned(), at("2026-01-01T00:01:00Z")),
                ("second".to_owned(), at("2026-01-01T00:01:03Z")),
            ]
        );
        let late = agenda.catch_ups(&marks, now, Duration::ZERO, Duration::from_secs(2));
        assert_eq!(late, [("second".to_owned(), at("2026-01-01T00:01:03Z"))]);
        // A takeover 40 ms before a slot, with a lead of 50 ms: too late to take it ahead, so it
        // is taken with the catch-ups (the job task fires it once).
        let just_before = at("2026-01-01T00:01:03.960Z");
        let due = agenda.catch_ups(
            &marks,
            just_before,
            Duration::from_millis(50),
            Duration::from_secs(5),
        );
        assert_eq!(
            due,
            [
                ("minute".to_owned(), at("2026-01-01T00:01:00Z")),
                ("second".to_owned(), at("2026-01-01T00:01:04Z")),
            ]
        );
    }

    #[test]
    fn a_new_owner_reruns_a_taken_slot_whose_run_did_not_finish_only_if_asked() {
        let jobs = jobs(
            "[cluster]\npostgres = \"postgres://db/app\"\n\
             [jobs.lost]\nevery = \"1s\"\non_node_loss = \"rerun\"\nhandler = \"log\"\n\
             [jobs.done]\nevery = \"1s\"\non_node_loss = \"rerun\"\nhandler = \"log\"\n\
             [jobs.unknown]\nevery = \"1s\"\non_node_loss = \"rerun\"\nhandler = \"log\"\n\
             [jobs.old]\nevery = \"1s\"\non_node_loss = \"rerun\"\nhandler = \"log\"\n\
             [jobs.once]\nevery = \"1s\"\nhandler = \"log\"\n",
        );
        let agenda = Agenda::new(&jobs, at("2026-01-01T00:00:00Z"));
        let now = at("2026-01-01T00:01:03.500Z");
        let mark = |slot: &str, finished: Option<&str>| Mark {
            slot: at(slot),
            finished: finished.map(at),
        };
        let marks: HashMap<String, Mark> = [
            (
                "lost".to_owned(),
                mark("2026-01-01T00:01:03Z", Some("2026-01-01T00:01:02Z")),
            ),
            (
                "done".to_owned(),
                mark("2026-01-01T00:01:03Z", Some("2026-01-01T00:01:03Z")),
            ),
            ("unknown".to_owned(), mark("2026-01-01T00:01:03Z", None)),
            (
                "old".to_owned(),
                mark("2026-01-01T00:00:03Z", Some("2026-01-01T00:00:02Z")),
            ),
            (
                "once".to_owned(),
                mark("2026-01-01T00:01:03Z", Some("2026-01-01T00:01:02Z")),
            ),
        ]
        .into();
        // `done` finished; `unknown` has no record (a mark from before the column); `old` is
        // past the catch-up bound; `once` did not ask.
        assert_eq!(
            agenda.reruns(&marks, now, Duration::from_secs(10)),
            [("lost".to_owned(), at("2026-01-01T00:01:03Z"))]
        );
    }
}
