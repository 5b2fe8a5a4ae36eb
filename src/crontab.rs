//! `tickd import-crontab`: turns a crontab into a jobs file.
//!
//! Handles the user format (`m h dom mon dow command`) and, with `system`, the format of
//! `/etc/crontab` and `/etc/cron.d` (a user column before the command); `@` nicknames; environment
//! lines (`SHELL`, `PATH`, `MAILTO`, `CRON_TZ`, others); comments; and cron's `%` rule. A line
//! that does not translate stays in the output as a comment saying why, and the sleep hack for
//! sub-minute jobs (`* * * * * sleep 10; CMD` and its siblings) becomes one `every` job.
//! Hand-written: no crate translates crontabs, and the format is line-oriented and small.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write;

use chrono_tz::Tz;

use crate::schedule::CronSchedule;

/// The result of an import.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Import {
    /// The jobs file (TOML), with the crontab's comments kept and its untranslated lines as
    /// comments.
    pub toml: String,
    /// Lines that could not be translated, with their line numbers.
    pub problems: Vec<LineProblem>,
}

/// A crontab line that could not be translated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LineProblem {
    /// 1-based line number.
    pub line: usize,
    /// Why.
    pub message: String,
}

impl std::fmt::Display for LineProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "line {}: {}", self.line, self.message)
    }
}

const NICKNAMES: &[&str] = &[
    "@yearly",
    "@annually",
    "@monthly",
    "@weekly",
    "@daily",
    "@midnight",
    "@hourly",
];

/// Translates `text`, a crontab; `system` for the format with a user column. `local_zone` is
/// the zone cron ran the jobs in (the machine's), written as `[daemon] timezone`.
///
/// Two passes: the lines are read into `Item`s in order, then the sleep hack's lines are
/// merged (they may be anywhere in the file), then everything is written out in order, so that
/// comments stay next to the lines they describe.
pub fn import(text: &str, system: bool, local_zone: Option<&str>) -> Import {
    let mut out = String::from(
        "# Imported from a crontab by `tickd import-crontab`. Check it with `tickd check`.\n\
         # Each job keeps cron's behaviour of starting even while its previous run goes on\n\
         # (overlap = \"allow\"); remove that line to skip such fires, tickd's default.\n",
    );
    match local_zone {
        Some(zone) => {
            let _ = writeln!(
                out,
                "\n[daemon]\n# cron ran jobs in the machine's local time zone.\ntimezone = {}",
                quote(zone)
            );
        }
        None => out.push_str(
            "# cron ran jobs in the machine's local time zone; tickd defaults to UTC: set\n# [daemon] timezone if they differ.\n",
        ),
    }
    let (mut items, problems) = read(text, system);
    merge_sleep_hacks(&mut items);
    let mut names = BTreeSet::new();
    for item in &items {
        match item {
            Item::Text(text) => {
                out.push_str(text);
                out.push('\n');
            }
            Item::Skipped {
                line,
                message,
                text,
            } => {
                let _ = writeln!(
                    out,
                    "{}\n{}",
                    comment(&format!(" line {line}: not imported: {message}")),
                    comment(text)
                );
            }
            Item::Job(job) => write_job(&mut out, &mut names, job, None),
            Item::Every { job, period, lines } => {
                let _ = writeln!(
                    out,
                    "# One job every {period}s, recognised from lines {} (cron's \"* * * * * sleep {period}; ...\"\n\
                     # hack): aligned to :00, :{period:02}, ... as those lines ran.",
                    line_list(lines)
                );
                write_job(&mut out, &mut names, job, Some((*period, lines)));
            }
            Item::Merged => {}
        }
    }
    Import {
        toml: out,
        problems,
    }
}

/// What the lines above a job line set for it.
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord)]
struct Context {
    /// Variables other than the ones cron itself reads.
    env: BTreeMap<String, String>,
    /// `SHELL`, when it is not `/bin/sh`.
    shell: Option<String>,
    /// `CRON_TZ`, a valid zone.
    zone: Option<String>,
}

/// A job line that translates.
#[derive(Debug, Clone)]
struct Job {
    /// 1-based line number.
    line: usize,
    /// A 5-field expression or a nickname tickd knows.
    schedule: String,
    /// The user column of the system format.
    user: Option<String>,
    /// With cron's `%` rule applied.
    command: String,
    context: Context,
}

/// A crontab line (or several) as it will be written.
#[derive(Debug)]
enum Item {
    /// Written as it is: a comment, a blank line, a note about an environment line.
    Text(String),
    /// One job.
    Job(Job),
    /// One `every` job standing for the lines of the sleep hack; `job` is the line without a
    /// sleep, written where the first of `lines` was.
    Every {
        job: Job,
        period: u32,
        lines: Vec<usize>,
    },
    /// A line of the sleep hack that its `Every` stands for.
    Merged,
    /// A line that does not translate: written as a comment, and reported.
    Skipped {
        line: usize,
        message: String,
        text: String,
    },
}

/// The first pass: `text` as items in line order, and the lines that do not translate.
fn read(text: &str, system: bool) -> (Vec<Item>, Vec<LineProblem>) {
    let mut items = Vec::new();
    let mut problems = Vec::new();
    let mut context = Context::default();
    for (index, raw) in text.lines().enumerate() {
        let number = index + 1;
        let line = raw.trim();
        let item = if line.is_empty() {
            Ok(Item::Text(String::new()))
        } else if let Some(text) = line.strip_prefix('#') {
            Ok(Item::Text(comment(text)))
        } else if let Some((name, value)) = env_line(line) {
            context
                .set(&name, &value)
                .map(|note| Item::Text(comment(&format!(" {name}={value}: {note}"))))
        } else {
            translate(line, system, &context).map(|(schedule, user, command)| {
                Item::Job(Job {
                    line: number,
                    schedule,
                    user,
                    command,
                    context: context.clone(),
                })
            })
        };
        match item {
            Ok(item) => items.push(item),
            Err(message) => {
                problems.push(LineProblem {
                    line: number,
                    message: message.clone(),
                });
                items.push(Item::Skipped {
                    line: number,
                    message,
                    text: format!(" {}", raw.trim_end()),
                });
            }
        }
    }
    (items, problems)
}

impl Context {
    /// Takes the variable line `name=value` into the context of the jobs below it; returns the
    /// note the jobs file gets for it, or why the line does not translate.
    fn set(&mut self, name: &str, value: &str) -> Result<&'static str, String> {
        if name == "CRON_TZ" && value.parse::<Tz>().is_err() {
            // cron hands it to the C library, which reads a POSIX TZ string (`JST-9`) its own
            // way and anything else as UTC: no zone tickd can take, and not the jobs'
            // environment. The jobs below lose the zone of a CRON_TZ above.
            self.zone = None;
            return Err(format!(
                "CRON_TZ \"{value}\" is not a time zone tickd knows (an IANA name such as Europe/Berlin): the jobs below it are imported without a timezone of their own"
            ));
        }
        Ok(match name {
            "SHELL" => {
                self.shell = (value != "/bin/sh").then(|| value.to_owned());
                if self.shell.is_some() {
                    "the jobs below run as command = [SHELL, \"-c\", ...]"
                } else {
                    "tickd runs shell jobs with /bin/sh -c"
                }
            }
            "MAILTO" => "tickd sends no mail; it logs each run's output and outcome. Use on_failure = [...] to alert.",
            // cronie schedules by CRON_TZ only, Debian's cron by neither: TZ is the jobs'.
            "CRON_TZ" => {
                self.zone = Some(value.to_owned());
                "set as the jobs' timezone below"
            }
            _ => {
                self.env.insert(name.to_owned(), value.to_owned());
                if name == "TZ" {
                    "in the env of the jobs below (cron does not schedule by TZ; CRON_TZ would)"
                } else {
                    "in the env of the jobs below"
                }
            }
        })
    }
}

/// A job line's schedule (checked as cron and tickd would), user and command (`%` applied).
fn translate(
    line: &str,
    system: bool,
    context: &Context,
) -> Result<(String, Option<String>, String), String> {
    let job = job_line(line, system)?;
    let schedule = if job.expression == "@midnight" {
        "@daily".to_owned()
    } else {
        job.expression
    };
    let schedule = check_cron_syntax(&schedule)?;
    let tz = context
        .zone
        .as_deref()
        .and_then(|z| z.parse::<Tz>().ok())
        .unwrap_or(Tz::UTC);
    CronSchedule::parse(&schedule, tz).map_err(|e| e.to_string())?;
    let command = unescape_percent(&job.command)?;
    Ok((schedule, job.user, command))
}

/// Writes `job` as a TOML table: on its cron schedule, or with `every` (the period in seconds
/// and the lines it stands for).
fn write_job(
    out: &mut String,
    names: &mut BTreeSet<String>,
    job: &Job,
    every: Option<(u32, &[usize])>,
) {
    let name = unique_name(names, &job.command);
    match every {
        Some((period, lines)) => {
            let _ = writeln!(out, "[jobs.{name}]   # lines {}", line_list(lines));
            let _ = writeln!(out, "every = \"{period}s\"\nalign = true");
        }
        None => {
            let _ = writeln!(out, "[jobs.{name}]   # line {}", job.line);
            let _ = writeln!(out, "cron = {}", quote(&job.schedule));
            if let Some(zone) = &job.context.zone {
                let _ = writeln!(out, "timezone = {}", quote(zone));
            }
        }
    }
    match &job.context.shell {
        Some(shell) => {
            let _ = writeln!(
                out,
                "command = [{}, \"-c\", {}]",
                quote(shell),
                quote(&job.command)
            );
        }
        None => {
            let _ = writeln!(out, "shell = {}", quote(&job.command));
        }
    }
    if let Some(user) = &job.user {
        let _ = writeln!(out, "user = {}", quote(user));
    }
    if !job.context.env.is_empty() {
        let pairs: Vec<String> = job
            .context
            .env
            .iter()
            .map(|(k, v)| format!("{} = {}", quote(k), quote(v)))
            .collect();
        let _ = writeln!(out, "env = {{ {} }}", pairs.join(", "));
    }
    // cron starts a run even while the previous one goes on.
    out.push_str("overlap = \"allow\"\n");
}

/// What the lines of one sleep hack share: the command after the sleep, the user, the context.
type HackKey = (String, Option<String>, Context);

/// Finds the classic hack for running a command every S seconds from cron, `* * * * * CMD`
/// and `* * * * * sleep S; CMD` (or `&&`) up to `sleep 60-S`, with the same user and
/// environment, and makes it one [`Item::Every`]. Only a complete set with S dividing the minute
/// is the hack; anything else keeps its lines.
fn merge_sleep_hacks(items: &mut [Item]) {
    // The lines that can be one job (command without the sleep, user, context), with their
    // sleeps and item indexes.
    let mut groups: BTreeMap<HackKey, Vec<(u32, usize)>> = BTreeMap::new();
    for (index, item) in items.iter().enumerate() {
        let Item::Job(job) = item else { continue };
        if job.schedule != "* * * * *" {
            continue;
        }
        let (offset, command) = sleep_prefix(&job.command);
        groups
            .entry((command.to_owned(), job.user.clone(), job.context.clone()))
            .or_default()
            .push((offset, index));
    }
    for mut members in groups.into_values() {
        members.sort_unstable();
        let offsets: Vec<u32> = members.iter().map(|&(offset, _)| offset).collect();
        let Some(period) = hack_period(&offsets) else {
            continue;
        };
        let first = members.iter().map(|&(_, index)| index).min().unwrap_or(0);
        let mut lines = Vec::new();
        let mut job = None;
        for &(offset, index) in &members {
            if let Item::Job(member) = std::mem::replace(&mut items[index], Item::Merged) {
                lines.push(member.line);
                if offset == 0 {
                    job = Some(member);
                }
            }
        }
        lines.sort_unstable();
        if let Some(job) = job {
            items[first] = Item::Every { job, period, lines };
        }
    }
}

/// `sleep N; rest` or `sleep N && rest` (N < 60) as `(N, rest)`; any other command as `(0, it)`.
fn sleep_prefix(command: &str) -> (u32, &str) {
    let parsed = || -> Option<(u32, &str)> {
        let rest = command.strip_prefix("sleep")?;
        if !rest.starts_with([' ', '\t']) {
            return None;
        }
        let rest = rest.trim_start();
        let digits = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        let seconds: u32 = rest[..digits].parse().ok()?;
        let rest = rest[digits..].trim_start();
        let rest = rest
            .strip_prefix("&&")
            .or_else(|| rest.strip_prefix(';'))?
            .trim_start();
        (seconds < 60 && !rest.is_empty()).then_some((seconds, rest))
    };
    parsed().unwrap_or((0, command))
}

/// The period S when `offsets` (sorted) are exactly 0, S, 2S, ... 60-S and S divides 60.
fn hack_period(offsets: &[u32]) -> Option<u32> {
    let period = *offsets.get(1)?;
    let complete = period > 0
        && 60 % period == 0
        && offsets.len() == (60 / period) as usize
        && offsets
            .iter()
            .zip(0..)
            .all(|(&offset, k)| offset == k * period);
    complete.then_some(period)
}

/// Sorted line numbers as `2-7` or `2, 4, 6-8`.
fn line_list(lines: &[usize]) -> String {
    let mut runs: Vec<(usize, usize)> = Vec::new();
    for &line in lines {
        match runs.last_mut() {
            Some((_, end)) if *end + 1 == line => *end = line,
            _ => runs.push((line, line)),
        }
    }
    runs.iter()
        .map(|&(start, end)| {
            if start == end {
                start.to_string()
            } else {
                format!("{start}-{end}")
            }
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// `text` as a TOML comment line: `#` and `text`, with the control characters TOML does not
/// allow in a comment (all but tab) replaced.
fn comment(text: &str) -> String {
    let text: String = text
        .chars()
        .map(|c| {
            if c.is_control() && c != '\t' {
                char::REPLACEMENT_CHARACTER
            } else {
                c
            }
        })
        .collect();
    format!("#{text}")
}

/// A TOML basic string.
fn quote(s: &str) -> String {
    toml::Value::String(s.to_owned()).to_string()
}

/// `NAME=value` (cron's environment lines), with optional spaces and quotes.
fn env_line(line: &str) -> Option<(String, String)> {
    let (name, value) = line.split_once('=')?;
    let name = name.trim();
    if name.is_empty()
        || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        || name.chars().next().is_some_and(|c| c.is_ascii_digit())
    {
        return None;
    }
    let value = value.trim();
    let unquoted = value
        .strip_prefix('"')
        .and_then(|v| v.strip_suffix('"'))
        .or_else(|| value.strip_prefix('\'').and_then(|v| v.strip_suffix('\'')))
        .unwrap_or(value);
    Some((name.to_owned(), unquoted.to_owned()))
}

struct JobLine {
    expression: String,
    user: Option<String>,
    command: String,
}

/// Splits a job line into its schedule, user (system format) and command.
fn job_line(line: &str, system: bool) -> Result<JobLine, String> {
    let mut rest = line;
    let mut take = || -> Option<&str> {
        let trimmed = rest.trim_start();
        let end = trimmed.find(char::is_whitespace).unwrap_or(trimmed.len());
        let (word, tail) = trimmed.split_at(end);
        rest = tail;
        (!word.is_empty()).then_some(word)
    };
    let first = take().ok_or("empty line")?;
    let expression = if first.starts_with('@') {
        if first == "@reboot" {
            return Err("@reboot has no tickd equivalent (tickd schedules, it does not boot): give a job run_on_start = true instead".to_owned());
        }
        if !NICKNAMES.contains(&first) {
            return Err(format!("unknown schedule {first}"));
        }
        first.to_owned()
    } else {
        let mut fields = vec![first];
        for _ in 0..4 {
            fields.push(take().ok_or("expected 5 schedule fields and a command")?);
        }
        fields.join(" ")
    };
    let user = if system {
        Some(
            take()
                .ok_or("expected a user name before the command")?
                .to_owned(),
        )
    } else {
        None
    };
    let command = rest.trim().to_owned();
    if command.is_empty() {
        return Err("no command".to_owned());
    }
    Ok(JobLine {
        expression,
        user,
        command,
    })
}

/// A field of a 5-field schedule: what the messages call it, the numbers cron takes in it and
/// its names.
struct Field {
    name: &'static str,
    /// The lowest and highest number: 7 is a Sunday in the day-of-week field, as 0 is.
    min: u32,
    max: u32,
    /// cron's names, the first standing for `min`.
    names: &'static [&'static str],
}

const FIELDS: [Field; 5] = [
    Field {
        name: "minute",
        min: 0,
        max: 59,
        names: &[],
    },
    Field {
        name: "hour",
        min: 0,
        max: 23,
        names: &[],
    },
    Field {
        name: "day-of-month",
        min: 1,
        max: 31,
        names: &[],
    },
    Field {
        name: "month",
        min: 1,
        max: 12,
        names: &[
            "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec",
        ],
    },
    Field {
        name: "day-of-week",
        min: 0,
        max: 7,
        names: &["sun", "mon", "tue", "wed", "thu", "fri", "sat"],
    },
];

/// The index of the day-of-month field in [`FIELDS`].
const DAY_OF_MONTH: usize = 2;
/// The index of the day-of-week field in [`FIELDS`].
const DAY_OF_WEEK: usize = 4;

/// Checks a schedule as cron's parser (`get_range` and `get_number` in Vixie cron's and cronie's
/// entry.c) reads it and returns it as tickd should run it, so that no line cron refuses becomes
/// a live job and no job fires at other times than cron fired it:
///
/// - Quartz's `L`, `W`, `#` and `?`, empty list elements and a step that is not a number are
///   refused: croner (tickd's parser) accepts them.
/// - Names (`mon`, `JAN`, any case) are numbers: alone, at either end of a range, in lists and
///   before a range's step, as in cron's parser (crontab(5) says "Ranges or lists of names are
///   not allowed"; the parsers take them). croner translates them as cron does, but for a `SUN`
///   that ends a range: 7 to croner, 0 to cron.
/// - A range that is backwards to cron is refused with a fix: `MON-SUN` is 1-0, which Vixie cron
///   refuses and cronie 1.6 and 1.7 take as no day at all (croner reads it as 1-7, as cronie's
///   unreleased master of 2025 does); `FRI-MON` is 5-1. The one `SUN`-ending range that is not
///   backwards, from `SUN` or 0 (Sunday only), is written with a 0 for croner.
///
/// Numbers out of range and steps of 0 or on a single number are left to `CronSchedule::parse`,
/// which refuses them already.
fn check_cron_syntax(expression: &str) -> Result<String, String> {
    if expression.starts_with('@') {
        return Ok(expression.to_owned());
    }
    let texts: Vec<&str> = expression.split_whitespace().collect();
    let mut written: Vec<String> = Vec::with_capacity(texts.len());
    for (index, (text, field)) in texts.iter().zip(&FIELDS).enumerate() {
        if text.contains(['#', '?']) {
            return Err(quartz(field, text));
        }
        let elements: Vec<&str> = text.split(',').collect();
        let mut out = Vec::with_capacity(elements.len());
        for (position, element) in elements.iter().enumerate() {
            if element.is_empty() {
                return Err(format!(
                    "the {} field \"{text}\" has an empty list element, which cron refuses",
                    field.name
                ));
            }
            let (range, step) = match element.split_once('/') {
                Some((range, step)) => (range, Some(step)),
                None => (*element, None),
            };
            if let Some(step) = step.filter(|s| !s.chars().all(|c| c.is_ascii_digit())) {
                return Err(format!(
                    "the {} field \"{text}\": the step \"{step}\" is not a number",
                    field.name
                ));
            }
            let bounds: Vec<&str> = range.split('-').collect();
            let values = bounds
                .iter()
                .map(|bound| bound_value(field, text, bound))
                .collect::<Result<Vec<_>, _>>()?;
            let mut element = (*element).to_owned();
            if let (&[start, end], &[Some(low), Some(high)]) = (&bounds[..], &values[..]) {
                // A SUN that ends a range: 0 to cron, 7 to croner.
                let ends_in_sun =
                    index == DAY_OF_WEEK && high == 0 && !end.chars().all(|c| c.is_ascii_digit());
                let in_range = |v: u32| (field.min..=field.max).contains(&v);
                if low > high && in_range(low) && in_range(high) {
                    let range = Range {
                        start,
                        end,
                        low,
                        high,
                        step,
                    };
                    // "*" is every day only with the day of the month "*": cron ORs the two.
                    let star_too = elements.len() == 1 && texts.get(DAY_OF_MONTH) == Some(&"*");
                    return Err(backwards(
                        field,
                        text,
                        &elements,
                        position,
                        &range,
                        ends_in_sun,
                        star_too,
                    ));
                }
                if ends_in_sun {
                    // From SUN (or 0) to SUN: Sunday to cron, every day to croner.
                    let step = step.map(|s| format!("/{s}")).unwrap_or_default();
                    element = format!("{start}-0{step}");
                }
            }
            out.push(element);
        }
        written.push(out.join(","));
    }
    written.extend(texts.iter().skip(FIELDS.len()).map(|t| t.to_string()));
    Ok(written.join(" "))
}

/// The message for a Quartz extension in field `text`.
fn quartz(field: &Field, text: &str) -> String {
    format!(
        "the {} field \"{text}\" uses a Quartz extension (L, W, # or ?), which cron refuses",
        field.name
    )
}

/// A range as written and as cron's numbers.
struct Range<'a> {
    start: &'a str,
    end: &'a str,
    low: u32,
    high: u32,
    step: Option<&'a str>,
}

/// The message for `range`, backwards to cron, in field `text` (its list `elements`, the range
/// being the one at `position`), with a fix: the range from its start round to its end.
/// `ends_in_sun`: its end is the name `SUN`, which croner reads as 7; `star_too`: `*` is a fix
/// when the range is every day.
fn backwards(
    field: &Field,
    text: &str,
    elements: &[&str],
    position: usize,
    range: &Range,
    ends_in_sun: bool,
    star_too: bool,
) -> String {
    let Range {
        start,
        end,
        low,
        high,
        step,
    } = *range;
    let fix = |replacement: String| {
        let mut fixed: Vec<String> = elements.iter().map(|e| e.to_string()).collect();
        fixed[position] = replacement;
        format!("\"{}\"", fixed.join(","))
    };
    let mut message = format!(
        "the {} field \"{text}\" has the backwards range {low}-{high}{}: cron refuses it or matches nothing",
        field.name,
        if ends_in_sun { " (cron reads SUN as 0)" } else { "" }
    );
    if ends_in_sun {
        let read = format!(
            "{}{}",
            span(low, field.max),
            step.map(|s| format!("/{s}")).unwrap_or_default()
        );
        let every_day = low == 1 && step.is_none();
        let _ = write!(
            message,
            ", while tickd would read it as {read}{}; write {}",
            if every_day { ", every day" } else { "" },
            fix(read.clone())
        );
        if every_day && star_too {
            message.push_str(" or \"*\"");
        }
    } else if step.is_none() {
        // The day-of-week field's wrapped range ends its first part at 7 (Sunday) and starts
        // its second at 1.
        let second_start = if field.max == 7 { 1 } else { field.min };
        let parts: Vec<String> = [(low, field.max), (second_start, high)]
            .into_iter()
            .filter(|(a, b)| a <= b)
            .map(|(a, b)| span(a, b))
            .collect();
        let _ = write!(
            message,
            "; for {start} round to {end} write {}",
            fix(parts.join(","))
        );
    } else {
        message.push_str("; write it from the lower number to the higher");
    }
    message
}

/// The number a range's bound stands for: a number or one of the field's names. `None` for `*`
/// and what is left to `CronSchedule::parse` to refuse (an empty bound, a number too long).
fn bound_value(field: &Field, text: &str, bound: &str) -> Result<Option<u32>, String> {
    if bound == "*" || bound.chars().all(|c| c.is_ascii_digit()) {
        return Ok(bound.parse().ok());
    }
    let lower = bound.to_ascii_lowercase();
    if let Some(index) = field.names.iter().position(|n| *n == lower) {
        return Ok(Some(field.min + index as u32));
    }
    if lower.contains(['l', 'w']) {
        return Err(quartz(field, text));
    }
    Err(format!(
        "the {} field \"{text}\": \"{bound}\" is not a number{}",
        field.name,
        if field.names.is_empty() {
            ""
        } else {
            " or a three-letter name"
        }
    ))
}

/// `a-b`, or `a` when they are the same.
fn span(a: u32, b: u32) -> String {
    if a == b {
        a.to_string()
    } else {
        format!("{a}-{b}")
    }
}

/// cron turns an unescaped `%` into a newline and feeds what follows to the command's stdin;
/// `\%` is a literal `%`. tickd gives jobs no stdin, so only escaped ones translate.
///
/// As in cron's `do_command`, a backslash escapes the one character after it and is dropped only
/// before `%`: `\\%` is a kept `\\` and then an unescaped `%`.
fn unescape_percent(command: &str) -> Result<String, String> {
    let mut out = String::with_capacity(command.len());
    let mut escaped = false;
    for c in command.chars() {
        match c {
            '%' if escaped => {
                out.pop();
                out.push('%');
                escaped = false;
            }
            _ if escaped => {
                out.push(c);
                escaped = false;
            }
            '\\' => {
                out.push(c);
                escaped = true;
            }
            '%' => {
                return Err("an unescaped % feeds the rest of the line to the command's stdin in cron; tickd jobs have no stdin: escape it as \\% or pipe the input in the command (printf '...' | command)".to_owned());
            }
            c => out.push(c),
        }
    }
    Ok(out)
}

/// The longest derived name, before a uniqueness suffix.
const NAME_LIMIT: usize = 40;

/// Words that say nothing about what a job does: shell keywords, path parts, wrappers and
/// interpreters (see [`is_interpreter`] for versioned ones).
const NOISE: &[&str] = &[
    "if", "then", "else", "elif", "fi", "do", "done", "while", "until", "for", "in", "case",
    "esac", "test", "null", "dev", "bin", "sbin", "usr", "local", "opt", "srv", "var", "tmp",
    "etc", "home", "cd", "sudo", "nice", "ionice", "flock", "timeout", "env", "nohup", "exec",
    "time", "command", "chronic", "sleep", "tee", "x", "c",
];

/// Wrappers that run the command after them: how many operands of theirs come first (`flock`'s
/// lock file, `timeout`'s duration) and which of their options take an argument.
const WRAPPERS: &[(&str, usize, &[&str])] = &[
    ("sudo", 0, &["-u", "-g", "-h", "-p", "-C"]),
    ("flock", 1, &["-w", "-E"]),
    ("timeout", 1, &["-s", "-k"]),
    ("nice", 0, &["-n"]),
    ("ionice", 0, &["-c", "-n", "-p"]),
    ("env", 0, &["-u", "-C", "-S"]),
];

/// `sh`, `bash`, `php`, `php8.2`, `python3`, ...: the program that runs the script named next.
fn is_interpreter(word: &str) -> bool {
    let stem = word.trim_end_matches(|c: char| c.is_ascii_digit() || c == '.' || c == '-');
    matches!(
        stem,
        "sh" | "bash"
            | "dash"
            | "zsh"
            | "ksh"
            | "php"
            | "php-cli"
            | "python"
            | "perl"
            | "ruby"
            | "node"
            | "nodejs"
            | "java"
            | "lua"
            | "tclsh"
            | "pwsh"
    )
}

/// The words of a shell command, without operators, quotes and redirections (`2>&1`,
/// `>> /tmp/log`: a redirection's target is a file, not what the job does).
fn shell_words(command: &str) -> Vec<&str> {
    let mut words = Vec::new();
    // The word being read starts here.
    let mut start = None;
    // The next word is a redirection's target.
    let mut target = false;
    let mut end_word = |start: &mut Option<usize>, end: usize, target: &mut bool| {
        if let Some(begin) = start.take() {
            if std::mem::take(target) {
                return;
            }
            words.push(&command[begin..end]);
        }
    };
    for (i, c) in command.char_indices() {
        match c {
            '<' | '>' => {
                // `2>`: the digits are the redirected descriptor.
                if start.is_some_and(|b| command[b..i].chars().all(|d| d.is_ascii_digit())) {
                    start = None;
                }
                end_word(&mut start, i, &mut target);
                target = true;
            }
            c if c.is_whitespace()
                || matches!(
                    c,
                    ';' | '&' | '|' | '(' | ')' | '{' | '}' | '`' | '\'' | '"'
                ) =>
            {
                end_word(&mut start, i, &mut target);
            }
            _ => {
                start.get_or_insert(i);
            }
        }
    }
    end_word(&mut start, command.len(), &mut target);
    words
}

/// A job name from the command: the first three telling words (programs, scripts without their
/// extension, arguments; none twice), lowercase, `-` separated, at most [`NAME_LIMIT`] long and cut only
/// between words, made unique with a suffix.
fn unique_name(taken: &mut BTreeSet<String>, command: &str) -> String {
    let mut words: Vec<String> = Vec::new();
    // Operands of a wrapper still to skip, and whether the next word is an option's argument.
    let mut operands = 0;
    let mut option_argument = false;
    let mut wrapper: Option<&(&str, usize, &[&str])> = None;
    for word in shell_words(command) {
        if word.starts_with('-') {
            option_argument = wrapper.is_some_and(|w| w.2.contains(&word));
            continue;
        }
        if std::mem::take(&mut option_argument) {
            continue;
        }
        if operands > 0 {
            operands -= 1;
            continue;
        }
        if word.starts_with(['+', '%', '$']) || word.contains('=') {
            continue;
        }
        let base = word.rsplit('/').next().unwrap_or(word).to_ascii_lowercase();
        let base = [".sh", ".bash", ".php", ".py", ".pl", ".rb", ".js", ".jar"]
            .iter()
            .find_map(|ext| base.strip_suffix(ext).filter(|stem| !stem.is_empty()))
            .unwrap_or(&base);
        let word = base
            .split(|c: char| !c.is_ascii_alphanumeric())
            .filter(|part| !part.is_empty())
            .collect::<Vec<_>>()
            .join("-");
        if let Some(w) = WRAPPERS.iter().find(|w| w.0 == word) {
            wrapper = Some(w);
            operands = w.1;
            continue;
        }
        if word.is_empty()
            || word.chars().all(|c| c.is_ascii_digit())
            || NOISE.contains(&word.as_str())
            || is_interpreter(&word)
            || words.contains(&word)
        {
            continue;
        }
        wrapper = None;
        words.push(word);
        if words.len() == 3 {
            break;
        }
    }
    let joined = words.join("-");
    let base = if joined.len() <= NAME_LIMIT {
        &joined[..]
    } else {
        // A '-' at index <= NAME_LIMIT ends a prefix of whole words that fits; failing that,
        // the first word is kept whole, however long.
        match joined[..=NAME_LIMIT].rfind('-') {
            Some(cut) => &joined[..cut],
            None => joined.split('-').next().unwrap_or(&joined),
        }
    };
    let base = if base.is_empty() { "job" } else { base };
    let mut name = base.to_owned();
    let mut n = 2;
    while !taken.insert(name.clone()) {
        name = format!("{base}-{n}");
        n += 1;
    }
    name
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{parse, Action};
    use crate::handler::Handlers;
    use crate::schedule::Schedule;
    use chrono::{TimeZone, Utc};
    use std::path::Path;

    /// Imports, checks the result is a valid jobs file, and returns it with the problems.
    fn round_trip(text: &str, system: bool) -> (crate::config::Config, Import) {
        let import = import(text, system, None);
        let config = parse(
            Path::new("imported.toml"),
            &import.toml,
            &Handlers::with_builtins(),
        )
        .unwrap_or_else(|e| panic!("{e}\n{}", import.toml));
        (config, import)
    }

    const DEBIAN_ETC_CRONTAB: &str = "\
# /etc/crontab: system-wide crontab
# Unlike any other crontab you don't have to run the `crontab'
# command to install the new version when you edit this file
# and files in /etc/cron.d. These files also have username fields,
# that none of the other crontabs do.

SHELL=/bin/sh
# You can also override PATH, but by default, newer versions inherit it from the environment
#PATH=/usr/local/sbin:/usr/local/bin:/sbin:/bin:/usr/sbin:/usr/bin

# Example of job definition:
# .---------------- minute (0 - 59)
# |  .------------- hour (0 - 23)
# |  |  .---------- day of month (1 - 31)
# |  |  |  .------- month (1 - 12) OR jan,feb,mar,apr ...
# |  |  |  |  .---- day of week (0 - 6) (Sunday=0 or 7) OR sun,mon,tue,wed,thu,fri,sat
# |  |  |  |  |
# *  *  *  *  * user-name command to be executed
17 *\t* * *\troot\tcd / && run-parts --report /etc/cron.hourly
25 6\t* * *\troot\ttest -x /usr/sbin/anacron || { cd / && run-parts --report /etc/cron.daily; }
47 6\t* * 7\troot\ttest -x /usr/sbin/anacron || { cd / && run-parts --report /etc/cron.weekly; }
52 6\t1 * *\troot\ttest -x /usr/sbin/anacron || { cd / && run-parts --report /etc/cron.monthly; }
#
";

    #[test]
    fn debians_etc_crontab_round_trips() {
        let (config, import) = round_trip(DEBIAN_ETC_CRONTAB, true);
        assert!(import.problems.is_empty(), "{:?}", import.problems);
        assert_eq!(config.jobs().len(), 4, "{}", import.toml);
        assert!(import.toml.contains("# /etc/crontab: system-wide crontab"));
        let hourly = config
            .jobs()
            .values()
            .find(|j| matches!(&j.action(), Action::Process(p) if p.argv()[2].contains("cron.hourly")))
            .expect("the hourly job");
        assert_eq!(hourly.run_as().map(|r| r.user()), Some("root"));
        // The schedule agrees with cron's: 17 past every hour; the weekly one on Sundays (7).
        let Schedule::Cron(cron) = &hourly.schedule() else {
            panic!("cron schedule")
        };
        let t = Utc
            .with_ymd_and_hms(2026, 1, 1, 10, 20, 0)
            .single()
            .expect("time");
        assert_eq!(
            cron.next_after(t),
            Some(
                Utc.with_ymd_and_hms(2026, 1, 1, 11, 17, 0)
                    .single()
                    .expect("time")
            )
        );
        let weekly = config
            .jobs()
            .values()
            .find(|j| matches!(&j.action(), Action::Process(p) if p.argv()[2].contains("cron.weekly")))
            .expect("the weekly job");
        let Schedule::Cron(cron) = &weekly.schedule() else {
            panic!("cron schedule")
        };
        // 2026-01-01 is a Thursday: next Sunday 06:47 is the 4th.
        assert_eq!(
            cron.next_after(t),
            Some(
                Utc.with_ymd_and_hms(2026, 1, 4, 6, 47, 0)
                    .single()
                    .expect("time")
            )
        );
    }

    #[test]
    fn a_user_crontab_with_env_lines_ranges_and_escaped_percent() {
        let text = "\
MAILTO=ops@example.com
PATH=/usr/local/bin:/usr/bin:/bin
APP_ENV = \"prod\"
# nightly report
30 2 * * mon-fri php /srv/app/artisan report:nightly
*/5 9-17 1,15 jan,jul * /usr/local/bin/sync --fast
@hourly date +\\%Y-\\%m-\\%d >> /tmp/stamps
@midnight php /srv/app/artisan report:nightly
";
        let (config, import) = round_trip(text, false);
        assert!(import.problems.is_empty(), "{:?}", import.problems);
        assert!(import
            .toml
            .contains("# MAILTO=ops@example.com: tickd sends no mail"));
        assert!(
            import
                .toml
                .contains("# nightly report\n[jobs.artisan-report-nightly]   # line 5"),
            "{}",
            import.toml
        );
        // Names are unique.
        assert!(config.jobs().contains_key("artisan-report-nightly-2"));
        let sync = &config.jobs()["sync"];
        let Action::Process(p) = &sync.action() else {
            panic!("shell job")
        };
        assert_eq!(p.argv(), ["/bin/sh", "-c", "/usr/local/bin/sync --fast"]);
        assert_eq!(p.env()["PATH"], "/usr/local/bin:/usr/bin:/bin");
        assert_eq!(p.env()["APP_ENV"], "prod");
        let date = &config.jobs()["date"];
        let Action::Process(p) = &date.action() else {
            panic!("shell job")
        };
        assert_eq!(p.argv()[2], "date +%Y-%m-%d >> /tmp/stamps");
        let Schedule::Cron(cron) = &sync.schedule() else {
            panic!("cron")
        };
        let t = Utc
            .with_ymd_and_hms(2026, 1, 15, 17, 56, 0)
            .single()
            .expect("time");
        assert_eq!(
            cron.next_after(t),
            Some(
                Utc.with_ymd_and_hms(2026, 7, 1, 9, 0, 0)
                    .single()
                    .expect("time")
            )
        );
    }

    #[test]
    fn untranslatable_lines_are_reported_with_their_numbers() {
        let text = "\
@reboot /usr/local/bin/warm-cache
* * * * * mail -s hi root%body of the mail%
61 * * * * true
* * *
0 0 * * * ok-command
";
        let import = import(text, false, None);
        let lines: Vec<usize> = import.problems.iter().map(|p| p.line).collect();
        assert_eq!(lines, [1, 2, 3, 4], "{:?}", import.problems);
        assert!(import.problems[0].message.contains("run_on_start"));
        assert!(import.problems[1].message.contains("stdin"));
        assert!(import.problems[2]
            .message
            .contains("invalid cron expression"));
        // What could be translated still is.
        assert!(import.toml.contains("[jobs.ok-command]"));
    }

    #[test]
    fn a_shell_other_than_sh_and_cron_tz_carry_over() {
        let text = "SHELL=/bin/bash\nCRON_TZ=Europe/Berlin\n0 9 * * * echo {a,b}\n";
        let (config, import) = round_trip(text, false);
        let job = config.jobs().values().next().expect("a job");
        let Action::Process(p) = &job.action() else {
            panic!("command job")
        };
        assert_eq!(p.argv(), ["/bin/bash", "-c", "echo {a,b}"]);
        let Schedule::Cron(cron) = &job.schedule() else {
            panic!("cron")
        };
        assert_eq!(
            cron.timezone(),
            chrono_tz::Europe::Berlin,
            "{}",
            import.toml
        );
    }

    #[test]
    fn an_unknown_cron_tz_is_reported_with_its_line_and_value() {
        let text = "\
CRON_TZ=Europe/Berlin
0 9 * * * /srv/alpha
CRON_TZ=\"Mars/Olympus_Mons\"
0 9 * * * /srv/beta
";
        let (config, import) = round_trip(text, false);
        assert_eq!(import.problems.len(), 1, "{:?}", import.problems);
        let problem = &import.problems[0];
        assert_eq!(problem.line, 3);
        assert!(
            problem
                .message
                .contains("CRON_TZ \"Mars/Olympus_Mons\" is not a time zone"),
            "{problem}"
        );
        assert!(
            import
                .toml
                .contains("# line 3: not imported: CRON_TZ \"Mars/Olympus_Mons\""),
            "{}",
            import.toml
        );
        // Neither the jobs' environment nor their zone; the job above keeps its zone.
        let zone = |name: &str| {
            let Schedule::Cron(cron) = &config.jobs()[name].schedule() else {
                panic!("cron")
            };
            cron.timezone()
        };
        assert_eq!(zone("alpha"), chrono_tz::Europe::Berlin, "{}", import.toml);
        assert_eq!(zone("beta"), config.daemon().timezone(), "{}", import.toml);
        let Action::Process(p) = &config.jobs()["beta"].action() else {
            panic!("shell job")
        };
        assert!(!p.env().contains_key("CRON_TZ"), "{}", import.toml);
    }

    #[test]
    fn the_local_zone_becomes_the_daemons() {
        let import = import("0 9 * * * true\n", false, Some("America/New_York"));
        let config = parse(
            Path::new("x.toml"),
            &import.toml,
            &Handlers::with_builtins(),
        )
        .expect("valid");
        assert_eq!(config.daemon().timezone(), chrono_tz::America::New_York);
    }

    /// The messages of the problems `text` gives, in line order.
    fn problems(text: &str) -> Vec<(usize, String)> {
        import(text, false, None)
            .problems
            .into_iter()
            .map(|p| (p.line, p.message))
            .collect()
    }

    #[test]
    fn quartz_extensions_are_reported_not_imported() {
        for expression in [
            "0 0 L * *",
            "0 0 15W * *",
            "0 0 LW * *",
            "0 0 * * 5#2",
            "0 0 ? * *",
            "0 0 * * 5L",
            "0 0 * * ?",
        ] {
            let problems = problems(&format!("{expression} true\n"));
            assert_eq!(problems.len(), 1, "{expression}: {problems:?}");
            assert!(
                problems[0].1.contains("Quartz"),
                "{expression}: {problems:?}"
            );
        }
    }

    /// The first 20 fires after 2026-01-01 of `expression` as imported (a job's schedule) and
    /// of `numbers`, the same schedule in cron's numbers parsed directly.
    fn fires_imported_and_numbered(expression: &str, numbers: &str) -> (Vec<i64>, Vec<i64>) {
        let (job, import) = the_job(&format!("{expression} true\n"), false);
        let Schedule::Cron(imported) = &job.schedule() else {
            panic!("cron: {}", import.toml)
        };
        let numbered = CronSchedule::parse(numbers, imported.timezone()).expect(numbers);
        let fires = |cron: &CronSchedule| {
            let mut t = Utc
                .with_ymd_and_hms(2026, 1, 1, 0, 0, 0)
                .single()
                .expect("time");
            let mut out = Vec::new();
            for _ in 0..20 {
                t = cron.next_after(t).expect("a next fire");
                out.push(t.timestamp());
            }
            out
        };
        (fires(imported), fires(&numbered))
    }

    #[test]
    fn names_in_ranges_lists_and_steps_import_as_cron_reads_them() {
        // As cron's get_range and get_number read them: a name is its number anywhere a
        // number goes, SUN is 0 (also ending a range), any case.
        for (expression, numbers) in [
            ("0 9 * * mon-fri", "0 9 * * 1-5"),
            ("0 9 * * MON-FRI", "0 9 * * 1-5"),
            ("0 0 * * MON,WED", "0 0 * * 1,3"),
            ("0 0 * * 1,wed", "0 0 * * 1,3"),
            ("0 0 * * mon-5", "0 0 * * 1-5"),
            ("0 0 * * sat,sun", "0 0 * * 6,0"),
            ("0 0 * * Sun", "0 0 * * 0"),
            ("0 0 * * sun-sat", "0 0 * * 0-6"),
            ("0 0 * * sun-wed,fri", "0 0 * * 0-3,5"),
            ("0 0 * * mon-sat/2", "0 0 * * 1,3,5"),
            ("0 0 * * sun-sun", "0 0 * * 0"),
            ("0 0 * * 0-sun/2", "0 0 * * 0"),
            ("0 0 1 JAN-MAR *", "0 0 1 1-3 *"),
            ("0 0 1 jan,jul *", "0 0 1 1,7 *"),
            ("0 0 1 jan-dec/2 *", "0 0 1 1,3,5,7,9,11 *"),
            ("0 0 1 Feb-4,nov *", "0 0 1 2-4,11 *"),
            ("0 0 * Dec Sun", "0 0 * 12 0"),
            // Numbers as cron takes them: 7 is a Sunday too.
            ("0 0 * * 7", "0 0 * * 0"),
            ("0 0 * * 1-7", "0 0 * * 0-6"),
            ("0 0 * * 5-7", "0 0 * * 0,5,6"),
        ] {
            let (imported, numbered) = fires_imported_and_numbered(expression, numbers);
            assert_eq!(imported, numbered, "{expression} against {numbers}");
        }
        // The names are kept as written; a range from SUN to SUN gets a 0 at its end, which
        // croner reads as cron does (it reads SUN ending a range as 7: every day).
        let (_, import) = the_job("0 9 * * mon-fri true\n", false);
        assert!(
            import.toml.contains("cron = \"0 9 * * mon-fri\""),
            "{}",
            import.toml
        );
        let (_, import) = the_job("0 0 * * sun-sun true\n", false);
        assert!(
            import.toml.contains("cron = \"0 0 * * sun-0\""),
            "{}",
            import.toml
        );
    }

    #[test]
    fn ranges_that_are_backwards_to_cron_are_reported_with_the_reason() {
        // cron reads SUN as 0: MON-SUN is 1-0 (Vixie cron refuses it, cronie 1.6 and 1.7 match
        // no day), which croner would read as 1-7, every day.
        let message = |expression: &str| {
            let problems = problems(&format!("{expression} true\n"));
            assert_eq!(problems.len(), 1, "{expression}: {problems:?}");
            problems[0].1.clone()
        };
        let mon_sun = message("0 0 * * MON-SUN");
        for part in [
            "day-of-week field \"MON-SUN\"",
            "backwards range 1-0",
            "SUN as 0",
            "tickd would read it as 1-7, every day",
            "write \"1-7\" or \"*\"",
        ] {
            assert!(mon_sun.contains(part), "{part}: {mon_sun}");
        }
        // With the day of the month set, "*" would not be the same: cron ORs the two days.
        let restricted = message("0 0 1 * mon-sun");
        assert!(restricted.contains("write \"1-7\""), "{restricted}");
        assert!(!restricted.contains("\"*\""), "{restricted}");
        let sat_sun = message("0 0 * * sat-sun");
        assert!(sat_sun.contains("backwards range 6-0"), "{sat_sun}");
        assert!(sat_sun.contains("write \"6-7\""), "{sat_sun}");
        assert!(!sat_sun.contains("every day"), "{sat_sun}");
        assert!(message("0 0 * * mon-sun/2").contains("write \"1-7/2\""));
        assert!(message("0 0 * * 1,mon-sun").contains("write \"1,1-7\""));
        // Backwards without SUN: croner refuses these too, but the message says why.
        for (expression, range, fix) in [
            (
                "0 0 * * FRI-MON",
                "5-1",
                "for FRI round to MON write \"5-7,1\"",
            ),
            ("0 0 * * 5-0", "5-0", "for 5 round to 0 write \"5-7\""),
            (
                "0 0 * DEC-JAN *",
                "12-1",
                "for DEC round to JAN write \"12,1\"",
            ),
            ("0 0 * nov-feb *", "11-2", "write \"11-12,1-2\""),
            ("50-10 * * * *", "50-10", "write \"50-59,0-10\""),
            ("0 22-2 * * *", "22-2", "write \"22-23,0-2\""),
            ("0 0 25-5 * *", "25-5", "write \"25-31,1-5\""),
        ] {
            let message = message(expression);
            assert!(
                message.contains(&format!("backwards range {range}:")),
                "{expression}: {message}"
            );
            assert!(message.contains(fix), "{expression}: {message}");
            assert!(!message.contains("SUN as 0"), "{expression}: {message}");
        }
        assert!(message("0 0 * nov-feb/2 *").contains("from the lower number to the higher"));
        // Out of range is not backwards: CronSchedule::parse refuses it.
        assert!(!message("70-5 * * * *").contains("backwards"));
    }

    #[test]
    fn empty_list_elements_and_garbage_are_reported() {
        for expression in [
            "1,,2 * * * *",
            "1, * * * *",
            "0 0 * * ,1",
            "0 0 * * monday",
            "0 0 * * -sun",
            // A step is a number, never a name (croner would read "*/mon" as "*/1").
            "0 0 * * */mon",
            "*/x * * * *",
            // A step follows a range or `*`, not a single number or name.
            "0 0 * * mon/2",
            "0 0 * jan,Mar/2 *",
        ] {
            let problems = problems(&format!("{expression} true\n"));
            assert_eq!(problems.len(), 1, "{expression}: {problems:?}");
        }
    }

    #[test]
    fn ranges_and_steps_cron_refuses_are_reported() {
        // Out of range, reversed, a zero step, a step on a single number (cron takes `5-59/10`
        // only as a range): all refused by cron.
        for expression in [
            "60 * * * *",
            "0 24 * * *",
            "0 0 0 * *",
            "0 0 * 13 *",
            "0 0 * * 8",
            "5-1 * * * *",
            "*/0 * * * *",
            "5/10 * * * *",
            "1-60 * * * *",
        ] {
            let problems = problems(&format!("{expression} true\n"));
            assert_eq!(problems.len(), 1, "{expression}: {problems:?}");
        }
    }

    #[test]
    fn tz_is_the_jobs_environment_not_their_schedules_zone() {
        // cronie schedules by CRON_TZ only, Debian's cron by neither: TZ only reaches the job.
        let text = "TZ=Asia/Tokyo\n0 9 * * * date\n";
        let (config, import) = round_trip(text, false);
        let job = config.jobs().values().next().expect("a job");
        let Schedule::Cron(cron) = &job.schedule() else {
            panic!("cron")
        };
        assert_eq!(
            cron.timezone(),
            config.daemon().timezone(),
            "{}",
            import.toml
        );
        let Action::Process(p) = &job.action() else {
            panic!("shell job")
        };
        assert_eq!(p.env()["TZ"], "Asia/Tokyo");
        // CRON_TZ still sets the zone, and is not passed on.
        let (config, _) = round_trip("CRON_TZ=Asia/Tokyo\nTZ=UTC\n0 9 * * * date\n", false);
        let job = config.jobs().values().next().expect("a job");
        let Schedule::Cron(cron) = &job.schedule() else {
            panic!("cron")
        };
        assert_eq!(cron.timezone(), chrono_tz::Asia::Tokyo);
        let Action::Process(p) = &job.action() else {
            panic!("shell job")
        };
        assert_eq!(p.env()["TZ"], "UTC");
        assert!(!p.env().contains_key("CRON_TZ"));
    }

    #[test]
    fn an_escaped_backslash_before_percent_leaves_the_percent_unescaped() {
        // `\\%` is a backslash, then a `%` that cron turns into stdin.
        let problems = problems("* * * * * printf '\\\\%s' x\n");
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(problems[0].1.contains("stdin"), "{problems:?}");
        // `\%` is a literal `%`; `\\\%` a kept `\\` and a literal `%`; another `\x` stays.
        assert_eq!(unescape_percent("date +\\%s").as_deref(), Ok("date +%s"));
        assert_eq!(unescape_percent("a\\\\\\%b").as_deref(), Ok("a\\\\%b"));
        assert_eq!(unescape_percent("a\\nb\\").as_deref(), Ok("a\\nb\\"));
        assert!(unescape_percent("a\\\\%b").is_err());
    }

    #[test]
    fn an_untranslatable_line_stays_as_a_comment_with_the_comments_above_it() {
        let text = "\
# warm the cache at boot
@reboot /usr/local/bin/warm-cache
# nightly
0 0 * * * ok-command
# a bell \u{7} in a comment
* * * * * mail -s hi root%body%
";
        let (config, import) = round_trip(text, false);
        assert_eq!(config.jobs().len(), 1, "{}", import.toml);
        assert!(
            import.toml.contains(
                "# warm the cache at boot\n\
                 # line 2: not imported: @reboot has no tickd equivalent"
            ),
            "{}",
            import.toml
        );
        assert!(
            import
                .toml
                .contains("\n# @reboot /usr/local/bin/warm-cache\n# nightly\n[jobs.ok-command]"),
            "{}",
            import.toml
        );
        assert!(
            import
                .toml
                .contains("in a comment\n# line 6: not imported: an unescaped %"),
            "{}",
            import.toml
        );
        assert!(
            import
                .toml
                .contains("\n# * * * * * mail -s hi root%body%\n"),
            "{}",
            import.toml
        );
    }

    /// The one job of `text`, with its schedule, and the import.
    fn the_job(text: &str, system: bool) -> (std::sync::Arc<crate::config::JobSpec>, Import) {
        let (config, import) = round_trip(text, system);
        assert!(import.problems.is_empty(), "{:?}", import.problems);
        assert_eq!(config.jobs().len(), 1, "{}", import.toml);
        let job = config.jobs().values().next().cloned().expect("a job");
        (job, import)
    }

    #[test]
    fn the_six_line_sleep_hack_is_one_aligned_job_every_10s() {
        let text = "\
# the worker, every 10 seconds
* * * * * /usr/bin/php /srv/app/worker.php
* * * * * sleep 10; /usr/bin/php /srv/app/worker.php
* * * * * sleep 20; /usr/bin/php /srv/app/worker.php
* * * * * sleep 30 && /usr/bin/php /srv/app/worker.php
* * * * * sleep 40;/usr/bin/php /srv/app/worker.php
* * * * * sleep 50 ; /usr/bin/php /srv/app/worker.php
";
        let (job, import) = the_job(text, false);
        assert_eq!(
            *job.schedule(),
            Schedule::Every(crate::schedule::EverySchedule {
                period: std::time::Duration::from_secs(10),
                mode: crate::schedule::EveryMode::FixedRate,
                align: true,
            }),
            "{}",
            import.toml
        );
        let Action::Process(p) = &job.action() else {
            panic!("shell job")
        };
        assert_eq!(p.argv()[2], "/usr/bin/php /srv/app/worker.php");
        assert!(
            import.toml.contains("# the worker, every 10 seconds\n"),
            "{}",
            import.toml
        );
        assert!(
            import.toml.contains("recognised from lines 2-7"),
            "{}",
            import.toml
        );
    }

    #[test]
    fn the_sleep_hack_with_any_step_that_divides_a_minute_is_one_job() {
        for step in [5, 15, 20, 30] {
            let mut text = String::from("MAILTO=\"\"\n");
            // Not adjacent, in any order, and the user column of the system format.
            for k in (0..60 / step).rev() {
                if k == 0 {
                    text.push_str("* * * * * www-data /srv/poll\n");
                } else {
                    let _ = writeln!(text, "* * * * * www-data sleep {} && /srv/poll", k * step);
                }
                text.push_str("# between\n");
            }
            let (job, import) = the_job(&text, true);
            let Schedule::Every(every) = job.schedule() else {
                panic!("every: {}", import.toml)
            };
            assert_eq!(
                every.period,
                std::time::Duration::from_secs(step),
                "{}",
                import.toml
            );
            assert!(every.align);
            assert_eq!(job.run_as().map(|r| r.user()), Some("www-data"));
        }
    }

    #[test]
    fn a_partial_or_mixed_sleep_hack_is_imported_line_by_line() {
        let count = |text: &str| {
            let (config, import) = round_trip(text, false);
            assert!(import.problems.is_empty(), "{:?}", import.problems);
            assert!(!import.toml.contains("recognised"), "{}", import.toml);
            assert!(config
                .jobs()
                .values()
                .all(|j| matches!(j.schedule(), Schedule::Cron(_))));
            config.jobs().len()
        };
        // Only 0, 10 and 20.
        assert_eq!(
            count("* * * * * poll\n* * * * * sleep 10; poll\n* * * * * sleep 20; poll\n"),
            3
        );
        // All of 0 and 30, but the env changes between them.
        assert_eq!(
            count("* * * * * poll\nPATH=/opt/bin\n* * * * * sleep 30; poll\n"),
            2
        );
        // Another schedule.
        assert_eq!(count("*/2 * * * * poll\n*/2 * * * * sleep 30; poll\n"), 2);
        // Another command.
        assert_eq!(count("* * * * * poll\n* * * * * sleep 30; poll -v\n"), 2);
        // A step that does not divide the minute, and an offset twice.
        assert_eq!(
            count("* * * * * poll\n* * * * * sleep 25; poll\n* * * * * sleep 50; poll\n"),
            3
        );
        assert_eq!(
            count("* * * * * poll\n* * * * * sleep 30; poll\n* * * * * sleep 30; poll\n"),
            3
        );
    }

    /// The name `command` gets as the only job.
    fn name_of(command: &str) -> String {
        unique_name(&mut BTreeSet::new(), command)
    }

    #[test]
    fn derived_names_drop_shell_noise_and_repeats() {
        for (command, name) in [
            ("cd /var/spool/dma && /usr/sbin/dma -q1", "dma"),
            (
                "if [ -x /usr/bin/certbot ]; then certbot renew; fi",
                "certbot-renew",
            ),
            ("/usr/local/bin/backup.sh > /dev/null 2>&1", "backup"),
            ("/usr/bin/php /srv/app/worker.php", "worker"),
            (
                "sudo -u www-data php /srv/app/artisan schedule:run >> /var/log/cron.log 2>&1",
                "artisan-schedule-run",
            ),
            (
                "flock -n /tmp/sync.lock timeout 5m nice -n 19 ionice -c3 /opt/bin/mirror --all",
                "mirror",
            ),
            (
                "/usr/bin/env python3 /srv/tasks/cleanup.py &>/dev/null",
                "cleanup",
            ),
            ("test -x /usr/bin/foo && bash -c 'foo sync'", "foo-sync"),
            ("sleep 10; poll", "poll"),
            ("date +\\%s >> /tmp/stamps", "date"),
            ("2>&1 >/dev/null", "job"),
            (
                "[ -x /usr/lib/php/sessionclean ] && if [ ! -d /run/systemd/system ]; then /usr/lib/php/sessionclean; fi",
                "sessionclean-system",
            ),
        ] {
            assert_eq!(name_of(command), name, "{command}");
        }
    }

    #[test]
    fn long_names_are_cut_between_words_and_stay_valid_and_unique() {
        // 47 characters: the limit of 40 falls inside "statements-everything".
        assert_eq!(
            name_of("/opt/reports/generate-quarterly-report statements-everything"),
            "generate-quarterly-report-statements"
        );
        // One word longer than the limit is kept whole rather than cut.
        let long = "a".repeat(50);
        assert_eq!(name_of(&long), long);
        let mut taken = BTreeSet::new();
        let names: Vec<String> = ["Ünïcode-Tool --x", "ünïcode-tool", "true", "true"]
            .iter()
            .map(|c| unique_name(&mut taken, c))
            .collect();
        assert_eq!(names, ["n-code-tool", "n-code-tool-2", "true", "true-2"]);
        for name in &names {
            assert!(name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')));
        }
    }
}
