//! One job: its name, then each concern in turn (schedule, action, overlap, limits, jitter,
//! missed fires, retries, the failure hook, the user it runs as). Every concern is checked even
//! after another failed, so that one pass reports all of a job's problems.

use std::num::NonZeroUsize;
use std::path::Path;
use std::time::Duration;

use toml::Spanned;

use super::http::bound_http_timeout;
use super::{At, Validator};
use crate::config::raw::{RawJob, RawOverlap, RawRetry};
use crate::config::spec::Action;
use crate::config::spec::{
    DaemonSettings, Jitter, JobSpec, OnMissed, OnNodeLoss, Overlap, Retry, RunAs, Scope,
    DEFAULT_KILL_GRACE,
};
use crate::config::users;
use crate::config::values::DurationRange;
use crate::config::Purpose;

impl Validator<'_> {
    /// The job `name`, or `None` (with its problems reported) when any part of it is invalid.
    pub(super) fn job(
        &mut self,
        name: &str,
        raw: Spanned<RawJob>,
        daemon: &DaemonSettings,
        clustered: bool,
    ) -> Option<JobSpec> {
        let offset = raw.span().start;
        let raw = raw.into_inner();
        let at = |key| At::job(name, key);
        let problems_before = self.problems.len();
        // Problems at the same place are shown in the order they are found: keep this order.
        self.job_name(name, offset);
        let schedule = self.schedule(name, offset, &raw, daemon.timezone);
        let action = self.action(name, offset, &raw, &daemon.env);
        let overlap = self.overlap(name, &raw);
        let timeout = raw
            .timeout
            .as_ref()
            .and_then(|v| self.duration(v, at("timeout"), DurationRange::POSITIVE));
        let kill_grace = raw
            .kill_grace
            .as_ref()
            .and_then(|v| self.duration(v, at("kill_grace"), DurationRange::ZERO_OR_MORE))
            .unwrap_or(DEFAULT_KILL_GRACE);
        let jitter = self.jitter(name, &raw);
        let on_missed = self.on_missed(name, &raw, daemon.state_file.as_deref());
        let max_rss = raw
            .max_rss
            .as_ref()
            .and_then(|v| self.bytes(v, at("max_rss")));
        let retry = raw
            .retry
            .as_ref()
            .and_then(|v| self.retry(name, v.get_ref()));
        let on_failure = raw
            .on_failure
            .as_ref()
            .and_then(|v| self.program(v, at("on_failure"), "on_failure command"));
        let run_as = self.run_as(name, &raw);
        let scope = self.scope(name, &raw, clustered);

        if self.problems.len() != problems_before {
            return None;
        }
        let schedule = schedule?;
        let mut action = action?;
        bound_http_timeout(&mut action, &schedule, timeout);
        let spec = JobSpec {
            name: name.to_owned(),
            schedule,
            action,
            overlap,
            timeout,
            kill_grace,
            output: raw
                .output
                .as_ref()
                .map(|v| *v.get_ref())
                .unwrap_or_default(),
            log: raw.log.as_ref().map(|v| *v.get_ref()).unwrap_or_default(),
            jitter,
            run_on_start: raw.run_on_start.unwrap_or(false),
            on_missed,
            max_rss,
            retry,
            on_failure,
            run_as: run_as.map(Box::new),
            env_policy: daemon.env.clone(),
            scope,
            on_node_loss: raw
                .on_node_loss
                .as_ref()
                .map(|v| *v.get_ref())
                .unwrap_or_default(),
        };
        self.on_node_loss(&spec, &raw, clustered);
        if self.purpose == Purpose::Check {
            self.process_on_this_machine(&spec, &raw);
        }
        (self.problems.len() == problems_before).then_some(spec)
    }

    /// A `cwd` that does not exist here, or a program not found as a run would find it (the
    /// job's `PATH`, relative to its `cwd`): warnings of [`Purpose::Check`], since the file may be
    /// meant for another machine or the program installed later. A run reports either as its
    /// own failure.
    fn process_on_this_machine(&mut self, spec: &JobSpec, raw: &RawJob) {
        let Action::Process(process) = spec.action() else {
            return;
        };
        let at = |key| At::job(spec.name(), key);
        if let (Some(cwd), Some(value)) = (process.cwd(), &raw.cwd) {
            if !cwd.is_dir() {
                let why = format!("cwd {} does not exist here", cwd.display());
                self.lacking(value, at("cwd"), why);
                return;
            }
        }
        if let Err(err) = self.programs.find(process) {
            let why = format!(
                "cannot find the program {:?} ({err}); is it installed, and in the job's PATH?",
                process.argv()[0]
            );
            match (&raw.command, &raw.shell) {
                (Some(value), _) => self.lacking(value, at("command"), why),
                (None, Some(value)) => self.lacking(value, at("shell"), why),
                (None, None) => {}
            }
        }
    }

    /// `on_node_loss = "rerun"` needs what finds a run lost: a cluster job of 1 s or slower,
    /// whose slots keep a mark the next owner reads.
    fn on_node_loss(&mut self, spec: &JobSpec, raw: &RawJob, clustered: bool) {
        let Some(value) = raw.on_node_loss.as_ref() else {
            return;
        };
        let why = if !clustered {
            "on_node_loss applies to the jobs of a cluster: it needs [cluster]"
        } else if spec.scope() != Scope::Cluster {
            "on_node_loss applies to jobs that run once per cluster, not to scope = \"node\""
        } else if *value.get_ref() == OnNodeLoss::Rerun && !crate::cluster::keeps_mark(spec) {
            "on_node_loss = \"rerun\" needs a job that fires at most once a second: faster jobs keep no record of their slots in the database"
        } else {
            return;
        };
        self.reject(value, At::job(spec.name(), "on_node_loss"), why.to_owned());
    }

    /// Where the job runs in a cluster. A fixed-delay job has no slots the nodes could agree
    /// on, so with `[cluster]` it must run on every node.
    fn scope(&mut self, name: &str, raw: &RawJob, clustered: bool) -> Scope {
        let scope = raw.scope.as_ref().map(|v| *v.get_ref()).unwrap_or_default();
        if let (true, Scope::Cluster, Some(mode)) = (clustered, scope, &raw.mode) {
            if *mode.get_ref() == crate::schedule::EveryMode::FixedDelay {
                self.reject(
                    mode,
                    At::job(name, "mode"),
                    "a fixed-delay job has no slots the nodes of a cluster agree on: use mode = \"fixed-rate\", or scope = \"node\" to run it on every node".to_owned(),
                );
            }
        }
        scope
    }

    /// Job names appear in logs, metrics labels and URLs: a small alphabet keeps them plain.
    fn job_name(&mut self, name: &str, offset: usize) {
        let plain = !name.is_empty()
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
        if !plain {
            self.report(
                offset,
                Some(name),
                None,
                "a job name may contain only ASCII letters, digits, '-', '_' and '.'".to_owned(),
            );
        }
    }

    /// The overlap policy; `max_concurrent` belongs to `overlap = "allow"` only.
    fn overlap(&mut self, job: &str, raw: &RawJob) -> Overlap {
        let at = At::job(job, "max_concurrent");
        let max_concurrent = raw
            .max_concurrent
            .as_ref()
            .and_then(|v| self.count::<usize>(v, at))
            .and_then(NonZeroUsize::new);
        let overlap = match raw.overlap.as_ref().map(|v| *v.get_ref()) {
            None | Some(RawOverlap::Skip) => Overlap::Skip,
            Some(RawOverlap::Queue) => Overlap::Queue,
            Some(RawOverlap::Allow) => Overlap::Allow { max_concurrent },
            Some(RawOverlap::Replace) => Overlap::Replace,
        };
        if let (Some(v), false) = (
            &raw.max_concurrent,
            matches!(overlap, Overlap::Allow { .. }),
        ) {
            self.reject(
                v,
                at,
                "\"max_concurrent\" applies only with overlap = \"allow\"".to_owned(),
            );
        }
        overlap
    }

    /// The delay before each run; `spread` needs the `jitter` range it spreads over.
    fn jitter(&mut self, job: &str, raw: &RawJob) -> Option<Jitter> {
        let jitter = raw
            .jitter
            .as_ref()
            .and_then(|v| self.duration(v, At::job(job, "jitter"), DurationRange::POSITIVE))
            .map(|max| Jitter {
                max,
                spread: raw.spread.as_ref().is_some_and(|s| *s.get_ref()),
            });
        if let (Some(spread), None) = (&raw.spread, &raw.jitter) {
            self.reject(
                spread,
                At::job(job, "spread"),
                "\"spread\" needs \"jitter\", the range to spread over (e.g. jitter = \"30s\")"
                    .to_owned(),
            );
        }
        jitter
    }

    /// What happens to missed fires; a catch-up run needs the `state_file` that remembers the
    /// last fire across restarts.
    fn on_missed(&mut self, job: &str, raw: &RawJob, state_file: Option<&Path>) -> OnMissed {
        let on_missed = raw
            .on_missed
            .as_ref()
            .map_or(OnMissed::Skip, |v| *v.get_ref());
        if let (Some(v), OnMissed::Once, None) = (&raw.on_missed, on_missed, state_file) {
            self.reject(
                v,
                At::job(job, "on_missed"),
                "on_missed = \"once\" needs [daemon] state_file, where the last fire times are kept"
                    .to_owned(),
            );
        }
        on_missed
    }

    /// Retries of a failed run, with a backoff that doubles from `backoff` to `max_backoff`.
    fn retry(&mut self, job: &str, raw: &RawRetry) -> Option<Retry> {
        let at = |key| At::job(job, key);
        let attempts = self.count::<u32>(&raw.attempts, at("retry.attempts"));
        // A floor on the backoff: a job that fails at once would otherwise retry in a hot loop
        // (`attempts` may be four billion, the next fire a century away).
        let backoff = match &raw.backoff {
            Some(v) => self.duration(v, at("retry.backoff"), DurationRange::PERIOD)?,
            None => Duration::from_secs(1),
        };
        let max_backoff = match &raw.max_backoff {
            Some(v) => {
                let max = self.duration(v, at("retry.max_backoff"), DurationRange::PERIOD)?;
                if max < backoff {
                    self.reject(
                        v,
                        at("retry.max_backoff"),
                        format!(
                            "is shorter than the backoff ({}): the delays start at backoff and double up to max_backoff",
                            humantime::format_duration(backoff)
                        ),
                    );
                    return None;
                }
                max
            }
            None => Duration::from_secs(60).max(backoff),
        };
        Some(Retry {
            attempts: attempts?,
            backoff,
            max_backoff,
        })
    }

    /// The user (and group) the job's processes run as, resolved in the user database.
    fn run_as(&mut self, job: &str, raw: &RawJob) -> Option<RunAs> {
        match (&raw.user, &raw.group) {
            (Some(user), group) => {
                let group_name = group.as_ref().map(|g| g.get_ref().as_str());
                users::resolve(user.get_ref(), group_name)
                    .map_err(|err| {
                        let (value, key) = match group {
                            Some(group) if err.is_about_group() => (group, "group"),
                            _ => (user, "user"),
                        };
                        let at = At::job(job, key);
                        if err.is_missing() {
                            self.lacking(value, at, format!("{err} on this machine"));
                        } else {
                            self.reject(value, at, err.to_string());
                        }
                    })
                    .ok()
            }
            (None, Some(group)) => {
                self.reject(
                    group,
                    At::job(job, "group"),
                    "\"group\" needs \"user\"".to_owned(),
                );
                None
            }
            (None, None) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::config::testing::error;

    #[test]
    fn two_schedules_or_two_actions_or_none_are_rejected() {
        let msg = error("[jobs.a]\nevery = \"1s\"\ncron = \"* * * * *\"\nhandler = \"log\"\n");
        assert!(
            msg.contains("job \"a\", key \"cron\": a job has exactly one schedule"),
            "{msg}"
        );
        let msg = error("[jobs.a]\nevery = \"1s\"\nhandler = \"log\"\nshell = \"true\"\n");
        assert!(
            msg.contains("exactly one action, found shell and handler"),
            "{msg}"
        );
        let msg = error("[jobs.a]\nhandler = \"log\"\n");
        assert!(msg.contains("job \"a\": a job needs a schedule"), "{msg}");
        let msg = error("[jobs.a]\nevery = \"1s\"\n");
        assert!(msg.contains("job \"a\": a job needs an action"), "{msg}");
    }

    #[test]
    fn log_takes_runs_failures_or_none() {
        use crate::config::RunLog;
        let job = |log: &str| {
            let text = format!("[jobs.a]\nevery = \"1s\"\nhandler = \"log\"\n{log}");
            crate::config::parse(
                std::path::Path::new("jobs.toml"),
                &text,
                &crate::Handlers::with_builtins(),
            )
            .map(|config| config.jobs()["a"].log())
        };
        assert_eq!(job("").expect("valid"), RunLog::Runs);
        assert_eq!(job("log = \"runs\"\n").expect("valid"), RunLog::Runs);
        assert_eq!(
            job("log = \"failures\"\n").expect("valid"),
            RunLog::Failures
        );
        assert_eq!(job("log = \"none\"\n").expect("valid"), RunLog::Nothing);
        let msg = error("[jobs.a]\nevery = \"1s\"\nhandler = \"log\"\nlog = \"errors\"\n");
        assert!(
            msg.starts_with("jobs.toml:4:7: job \"a\", key \"log\""),
            "{msg}"
        );
        assert!(msg.contains("unknown variant `errors`"), "{msg}");
        assert!(msg.contains("`runs`, `failures`, `none`"), "{msg}");
    }

    #[test]
    fn bad_overlap_and_max_concurrent() {
        let msg = error("[jobs.a]\nevery = \"1s\"\nhandler = \"log\"\noverlap = \"sometimes\"\n");
        assert!(msg.contains("job \"a\", key \"overlap\""), "{msg}");
        assert!(msg.contains("unknown variant `sometimes`"), "{msg}");
        let msg = error("[jobs.a]\nevery = \"1s\"\nhandler = \"log\"\nmax_concurrent = 2\n");
        assert!(
            msg.contains("applies only with overlap = \"allow\""),
            "{msg}"
        );
        let msg = error(
            "[jobs.a]\nevery = \"1s\"\nhandler = \"log\"\noverlap = \"allow\"\nmax_concurrent = 0\n",
        );
        assert!(
            msg.contains("key \"max_concurrent\": must be a whole number"),
            "{msg}"
        );
    }

    /// `backoff = "0s"` (or `max_backoff = "0s"`) with many attempts retried a failing job in a
    /// hot loop until its next fire, which may be a century away.
    #[test]
    fn retries_cannot_loop_hot() {
        let msg = error("[jobs.a]\nevery = \"1s\"\nretry = { attempts = 9, backoff = \"0s\" }\nhandler = \"log\"\n");
        assert!(
            msg.contains("key \"retry.backoff\": must be greater than zero"),
            "{msg}"
        );
        let msg = error("[jobs.a]\nevery = \"1s\"\nretry = { attempts = 9, backoff = \"100us\" }\nhandler = \"log\"\n");
        assert!(
            msg.contains("key \"retry.backoff\": \"100us\" is out of range: from 1ms"),
            "{msg}"
        );
        let msg = error("[jobs.a]\nevery = \"1s\"\nretry = { attempts = 9, backoff = \"1s\", max_backoff = \"500ms\" }\nhandler = \"log\"\n");
        assert!(
            msg.contains("key \"retry.max_backoff\": is shorter than the backoff"),
            "{msg}"
        );
    }

    #[test]
    fn empty_command_and_bad_names() {
        let msg = error("[jobs.a]\nevery = \"1s\"\ncommand = []\n");
        assert!(msg.contains("needs at least a program"), "{msg}");
        let msg = error("[jobs.\"a b\"]\nevery = \"1s\"\nhandler = \"log\"\n");
        assert!(msg.contains("a job name may contain only"), "{msg}");
    }
}
