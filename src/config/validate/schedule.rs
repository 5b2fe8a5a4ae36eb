//! A job's schedule: exactly one of `every` (with its `mode` and `align`) and `cron` (with its
//! `timezone`).

use chrono_tz::Tz;
use toml::Spanned;

use super::{At, Validator};
use crate::config::raw::RawJob;
use crate::config::values::DurationRange;
use crate::schedule::{CronSchedule, EveryMode, EverySchedule, Schedule};

impl Validator<'_> {
    /// The job's schedule; `offset` is where the job's table starts, and cron schedules without
    /// a `timezone` of their own take `default_zone`.
    pub(super) fn schedule(
        &mut self,
        job: &str,
        offset: usize,
        raw: &RawJob,
        default_zone: Tz,
    ) -> Option<Schedule> {
        // Checked whatever the schedule, so that a bad zone is reported even beside `every`.
        let timezone = match &raw.timezone {
            Some(v) => self.timezone(v, At::job(job, "timezone")),
            None => Some(default_zone),
        };
        match (&raw.every, &raw.cron) {
            (Some(every), None) => self.every(job, every, raw),
            (None, Some(cron)) => timezone.and_then(|tz| self.cron(job, cron, tz, raw)),
            (Some(_), Some(cron)) => {
                self.reject(
                    cron,
                    At::job(job, "cron"),
                    "a job has exactly one schedule: \"every\" or \"cron\", not both".to_owned(),
                );
                None
            }
            (None, None) => {
                self.report(
                    offset,
                    Some(job),
                    None,
                    "a job needs a schedule: \"every\" (e.g. \"10s\") or \"cron\"".to_owned(),
                );
                None
            }
        }
    }

    /// An `every` schedule: a period, on a fixed-rate grid (optionally aligned) or with a fixed
    /// delay after each run.
    fn every(&mut self, job: &str, every: &Spanned<String>, raw: &RawJob) -> Option<Schedule> {
        if let Some(v) = &raw.timezone {
            self.reject(
                v,
                At::job(job, "timezone"),
                "\"timezone\" applies to cron schedules only, not to \"every\"".to_owned(),
            );
        }
        let mode = raw
            .mode
            .as_ref()
            .map_or(EveryMode::FixedRate, |m| *m.get_ref());
        let align = raw.align.as_ref().is_some_and(|a| *a.get_ref());
        if let (Some(a), EveryMode::FixedDelay) = (&raw.align, mode) {
            if *a.get_ref() {
                self.reject(
                    a,
                    At::job(job, "align"),
                    "\"align\" needs mode = \"fixed-rate\": a fixed-delay schedule has no grid"
                        .to_owned(),
                );
            }
        }
        self.duration(every, At::job(job, "every"), DurationRange::PERIOD)
            .map(|period| {
                Schedule::Every(EverySchedule {
                    period,
                    mode,
                    align,
                })
            })
    }

    /// A cron schedule in `timezone`.
    fn cron(
        &mut self,
        job: &str,
        cron: &Spanned<String>,
        timezone: Tz,
        raw: &RawJob,
    ) -> Option<Schedule> {
        for (key, offset) in raw.every_only_keys() {
            self.report(
                offset,
                Some(job),
                Some(key),
                format!("\"{key}\" applies to \"every\" schedules only"),
            );
        }
        CronSchedule::parse(cron.get_ref(), timezone)
            .map_err(|e| self.reject(cron, At::job(job, "cron"), e.to_string()))
            .ok()
            .map(|c| Schedule::Cron(Box::new(c)))
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::time::Duration;

    use crate::config::testing::{check, error};
    use crate::config::{Jitter, OnMissed, MIN_PERIOD};
    use crate::schedule::{EveryMode, EverySchedule, Schedule};

    #[test]
    fn schedule_options_validate() {
        let config = check(
            r#"
[daemon]
max_uptime = "12h"
state_file = "state/tickd.state"
[jobs.a]
every = "10s"
align = true
jitter = "2s"
spread = true
run_on_start = true
on_missed = "once"
handler = "log"
[jobs.b]
every = "10s"
mode = "fixed-delay"
handler = "log"
"#,
        )
        .expect("valid");
        assert_eq!(
            config.daemon.max_uptime,
            Some(Duration::from_secs(12 * 3600))
        );
        assert_eq!(
            config.daemon.state_file.as_deref(),
            Some(Path::new("state/tickd.state"))
        );
        let a = &config.jobs["a"];
        assert_eq!(
            a.schedule,
            Schedule::Every(EverySchedule {
                period: Duration::from_secs(10),
                mode: EveryMode::FixedRate,
                align: true
            })
        );
        assert_eq!(
            a.jitter,
            Some(Jitter {
                max: Duration::from_secs(2),
                spread: true
            })
        );
        assert!(a.run_on_start);
        assert_eq!(a.on_missed, OnMissed::Once);
        match &config.jobs["b"].schedule {
            Schedule::Every(e) => assert_eq!(e.mode, EveryMode::FixedDelay),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn schedule_option_errors() {
        let msg = error("[jobs.a]\ncron = \"* * * * *\"\nalign = true\nhandler = \"log\"\n");
        assert!(
            msg.contains("job \"a\", key \"align\": \"align\" applies to \"every\""),
            "{msg}"
        );
        let msg = error(
            "[jobs.a]\nevery = \"1s\"\nmode = \"fixed-delay\"\nalign = true\nhandler = \"log\"\n",
        );
        assert!(msg.contains("key \"align\": \"align\" needs mode"), "{msg}");
        let msg = error("[jobs.a]\nevery = \"1s\"\nmode = \"sometimes\"\nhandler = \"log\"\n");
        assert!(msg.contains("key \"mode\""), "{msg}");
        let msg = error("[jobs.a]\nevery = \"1s\"\nspread = true\nhandler = \"log\"\n");
        assert!(
            msg.contains("key \"spread\": \"spread\" needs \"jitter\""),
            "{msg}"
        );
        let msg = error("[jobs.a]\nevery = \"1s\"\njitter = \"0s\"\nhandler = \"log\"\n");
        assert!(
            msg.contains("key \"jitter\": must be greater than zero"),
            "{msg}"
        );
        let msg = error("[jobs.a]\nevery = \"1s\"\non_missed = \"once\"\nhandler = \"log\"\n");
        assert!(msg.contains("jobs.toml:3:13: job \"a\", key \"on_missed\": on_missed = \"once\" needs [daemon] state_file"), "{msg}");
        let msg = error("[jobs.a]\nevery = \"1s\"\non_missed = \"twice\"\nhandler = \"log\"\n");
        assert!(msg.contains("key \"on_missed\""), "{msg}");
        let msg = error("[daemon]\nmax_uptime = \"0s\"\n");
        assert!(
            msg.contains("key \"daemon.max_uptime\": must be greater than zero"),
            "{msg}"
        );
    }

    #[test]
    fn zero_and_malformed_periods_are_rejected() {
        let msg = error("[jobs.a]\nevery = \"0s\"\nhandler = \"log\"\n");
        assert!(
            msg.starts_with("jobs.toml:2:9: job \"a\", key \"every\""),
            "{msg}"
        );
        assert!(msg.contains("greater than zero"), "{msg}");
        let msg = error("[jobs.a]\nevery = \"-5s\"\nhandler = \"log\"\n");
        assert!(msg.contains("key \"every\": invalid duration"), "{msg}");
        let msg = error("[jobs.a]\nevery = \"soon\"\nhandler = \"log\"\n");
        assert!(msg.contains("invalid duration \"soon\""), "{msg}");
    }

    /// `every = "1ns"` passed `check` and burned a core logging missed fires.
    #[test]
    fn every_has_a_floor_of_one_millisecond() {
        for short in ["1ns", "999us", "999999ns"] {
            let msg = error(&format!(
                "[jobs.a]\nevery = \"{short}\"\nhandler = \"log\"\n"
            ));
            assert!(msg.contains("key \"every\""), "{msg}");
            assert!(msg.contains("out of range: from 1ms to 100years"), "{msg}");
        }
        let config = check("[jobs.a]\nevery = \"1ms\"\nhandler = \"log\"\n").expect("1ms");
        assert_eq!(
            config.jobs["a"].schedule,
            Schedule::Every(EverySchedule::fixed_rate(MIN_PERIOD))
        );
    }

    #[test]
    fn bad_cron_expression_is_located() {
        let msg = error("[jobs.a]\ncron = \"61 * * * *\"\nhandler = \"log\"\n");
        assert!(
            msg.starts_with("jobs.toml:2:8: job \"a\", key \"cron\""),
            "{msg}"
        );
        assert!(msg.contains("invalid cron expression"), "{msg}");
    }

    #[test]
    fn unknown_zone_is_located() {
        let msg = error(
            "[jobs.a]\ncron = \"* * * * *\"\ntimezone = \"Mars/Olympus\"\nhandler = \"log\"\n",
        );
        assert!(
            msg.starts_with("jobs.toml:3:12: job \"a\", key \"timezone\""),
            "{msg}"
        );
        assert!(msg.contains("unknown time zone"), "{msg}");
        let msg = error("[daemon]\ntimezone = \"Nowhere\"\n");
        assert!(msg.contains("key \"daemon.timezone\""), "{msg}");
    }
}
