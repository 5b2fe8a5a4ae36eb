//! The classic Prometheus text format (version 0.0.4), converted from the OpenMetrics text that
//! prometheus-client writes.
//!
//! Why by hand: prometheus-client 0.23 encodes OpenMetrics only (text, or protobuf behind a
//! feature), and no crate converts one text format into the other. The two differ in a few,
//! well-defined places, which this converter handles line by line:
//!
//! - A counter family is named without `_total` in OpenMetrics (`# TYPE tickd_runs counter`,
//!   samples `tickd_runs_total`); the classic format names the family as its samples
//!   (`# TYPE tickd_runs_total counter`). Without this promtool finds samples with no HELP.
//! - The types the classic format lacks map as Prometheus's own Python client maps them:
//!   `info` is a `gauge` named with `_info` (as its samples are), `stateset` a `gauge`,
//!   `gaugehistogram` a `histogram`, `unknown` is `untyped`.
//! - Samples only OpenMetrics has (`_created`, and a gauge histogram's `_gsum` and `_gcount`)
//!   become gauge families of their own after their family, again as the Python client does:
//!   the classic format allows no such samples in a family.
//! - `# UNIT` lines and `# EOF` go; exemplars (` # {...} value`) go; timestamps go from
//!   seconds (a float) to milliseconds (an integer).
//! - HELP text: OpenMetrics escapes `\`, newline and `"`; the classic format only the first two.
//!
//! Everything else (metric and label names, label values and their escapes, values such as
//! `+Inf` and `NaN`) is written the same in both formats and is passed through.

use std::fmt::Write as _;

/// `openmetrics`, an OpenMetrics text exposition, in the classic text format 0.0.4.
pub(crate) fn from_openmetrics(openmetrics: &str) -> String {
    let mut out = String::with_capacity(openmetrics.len());
    let mut family: Option<Family> = None;
    for line in openmetrics.lines() {
        if line == "# EOF" {
            break;
        }
        if line.is_empty() {
            continue;
        }
        if let Some(comment) = line.strip_prefix("# ") {
            let (keyword, rest) = comment.split_once(' ').unwrap_or((comment, ""));
            let (name, text) = rest.split_once(' ').unwrap_or((rest, ""));
            if !matches!(keyword, "HELP" | "TYPE" | "UNIT") {
                continue;
            }
            // A family's metadata lines come together, before its samples: a new name starts
            // the next family.
            if family.as_ref().is_none_or(|f| f.name != name) {
                if let Some(done) = family.take() {
                    done.write(&mut out);
                }
                family = Some(Family::new(name));
            }
            if let Some(current) = family.as_mut() {
                match keyword {
                    "HELP" => current.help = Some(unescape_help(text)),
                    "TYPE" => current.kind = text.to_owned(),
                    // The unit is in the name already; the classic format has no line for it.
                    _ => {}
                }
            }
            continue;
        }
        if line.starts_with('#') {
            continue;
        }
        let sample = convert_sample(line);
        match family.as_mut() {
            Some(current) => current.push(sample),
            // A sample before any metadata: untyped in both formats.
            None => {
                out.push_str(&sample);
                out.push('\n');
            }
        }
    }
    if let Some(done) = family {
        done.write(&mut out);
    }
    out
}

/// One metric family as read from the OpenMetrics text.
struct Family {
    /// The OpenMetrics family name (a counter's without `_total`).
    name: String,
    /// The OpenMetrics type; `unknown` until a TYPE line says otherwise.
    kind: String,
    /// The HELP text, unescaped to the classic format's rules.
    help: Option<String>,
    /// The samples that stay in the family, converted.
    samples: Vec<String>,
    /// The samples that move to gauge families of their own, by suffix (`_created`, `_gsum`,
    /// `_gcount`), in the order first seen.
    apart: Vec<(&'static str, Vec<String>)>,
}

impl Family {
    fn new(name: &str) -> Family {
        Family {
            name: name.to_owned(),
            kind: "unknown".to_owned(),
            help: None,
            samples: Vec::new(),
            apart: Vec::new(),
        }
    }

    /// The suffixes of the samples that move out of this family in the classic format.
    fn suffixes_apart(&self) -> &'static [&'static str] {
        match self.kind.as_str() {
            "counter" | "histogram" | "summary" => &["_created"],
            "gaugehistogram" => &["_gsum", "_gcount"],
            _ => &[],
        }
    }

    fn push(&mut self, sample: String) {
        let name = sample_name(&sample);
        let apart = self.suffixes_apart().iter().find(|suffix| {
            name.strip_prefix(self.name.as_str())
                .is_some_and(|rest| rest == **suffix)
        });
        match apart {
            Some(suffix) => match self.apart.iter_mut().find(|(s, _)| s == suffix) {
                Some((_, samples)) => samples.push(sample),
                None => self.apart.push((suffix, vec![sample])),
            },
            None => self.samples.push(sample),
        }
    }

    /// The family's name and type in the classic format.
    fn classic(&self) -> (String, &'static str) {
        let name = &self.name;
        match self.kind.as_str() {
            "counter" => (format!("{name}_total"), "counter"),
            "gauge" => (name.clone(), "gauge"),
            "histogram" | "gaugehistogram" => (name.clone(), "histogram"),
            "summary" => (name.clone(), "summary"),
            "info" => (format!("{name}_info"), "gauge"),
            "stateset" => (name.clone(), "gauge"),
            _ => (name.clone(), "untyped"),
        }
    }

    fn write(self, out: &mut String) {
        let (name, kind) = self.classic();
        write_metadata(out, &name, self.help.as_deref(), kind);
        for sample in &self.samples {
            out.push_str(sample);
            out.push('\n');
        }
        for (suffix, samples) in &self.apart {
            write_metadata(
                out,
                &format!("{}{suffix}", self.name),
                self.help.as_deref(),
                "gauge",
            );
            for sample in samples {
                out.push_str(sample);
                out.push('\n');
            }
        }
    }
}

fn write_metadata(out: &mut String, name: &str, help: Option<&str>, kind: &str) {
    if let Some(help) = help {
        let _ = writeln!(out, "# HELP {name} {help}");
    }
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// OpenMetrics HELP text (`\\`, `\n` and `\"` escaped) as classic HELP text (`\\` and `\n`).
fn unescape_help(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('"') => out.push('"'),
            Some(next) => {
                out.push('\\');
                out.push(next);
            }
            None => out.push('\\'),
        }
    }
    out
}

/// The metric name of a sample line (up to its labels or its value).
fn sample_name(line: &str) -> &str {
    let end = line.find(['{', ' ']).unwrap_or(line.len());
    &line[..end]
}

/// An OpenMetrics sample line in the classic format: the name, labels and value as they are,
/// a timestamp in milliseconds instead of seconds, no exemplar.
fn convert_sample(line: &str) -> String {
    let series_end = series_end(line);
    let (series, rest) = line.split_at(series_end);
    let mut tokens = rest.split(' ').filter(|t| !t.is_empty());
    let value = tokens.next().unwrap_or("");
    let mut out = format!("{series} {value}");
    // What follows the value: a timestamp, then an exemplar (`# {...} value [timestamp]`).
    if let Some(timestamp) = tokens.next().filter(|t| *t != "#") {
        match timestamp.parse::<f64>() {
            Ok(seconds) => {
                let _ = write!(out, " {}", (seconds * 1000.0).round() as i64);
            }
            // Not a number: leave it for the reader to reject rather than hide it.
            Err(_) => {
                let _ = write!(out, " {timestamp}");
            }
        }
    }
    out
}

/// Where the name and labels of a sample line end: after the `}` that closes the labels (not
/// one inside a quoted value), or at the first space when there are none.
fn series_end(line: &str) -> usize {
    let Some(open) = line.find(['{', ' ']) else {
        return line.len();
    };
    if line.as_bytes()[open] == b' ' {
        return open;
    }
    let mut quoted = false;
    let mut escaped = false;
    for (i, c) in line.char_indices().skip_while(|(i, _)| *i <= open) {
        match c {
            _ if escaped => escaped = false,
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            '}' if !quoted => return i + 1,
            _ => {}
        }
    }
    line.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every family type and sample shape of the OpenMetrics text format, including those
    /// prometheus-client does not write (yet) and tickd does not export.
    #[test]
    fn every_openmetrics_type_maps_to_its_classic_counterpart() {
        let openmetrics = r#"# HELP a_runs Runs, by "job".
# TYPE a_runs counter
a_runs_total{job_name="x",outcome="success"} 3 # {trace_id="ab}c"} 1.0 1700000000.5
a_runs_created{job_name="x",outcome="success"} 1700000000.0
# HELP a_up 1 while up\\down\nnext line.
# TYPE a_up gauge
a_up 1
# HELP a_lag_seconds Lag.
# TYPE a_lag_seconds histogram
# UNIT a_lag_seconds seconds
a_lag_seconds_sum{job_name="x"} 0.5
a_lag_seconds_count{job_name="x"} 2
a_lag_seconds_bucket{le="0.1",job_name="x"} 1
a_lag_seconds_bucket{le="+Inf",job_name="x"} 2
a_lag_seconds_created{job_name="x"} 1700000000.0
# HELP a_build Build.
# TYPE a_build info
a_build_info{version="1.2 {beta}"} 1
# HELP a_state State.
# TYPE a_state stateset
a_state{a_state="on"} 1
a_state{a_state="off"} 0
# HELP a_queue Queue.
# TYPE a_queue gaugehistogram
a_queue_bucket{le="+Inf"} 4
a_queue_gsum 10
a_queue_gcount 4
# HELP a_rpc Rpc.
# TYPE a_rpc summary
a_rpc{quantile="0.5"} 0.1
a_rpc_sum 1
a_rpc_count 3
# HELP a_other Other.
# TYPE a_other unknown
a_other 7 1700000000.25
# HELP a_empty Nothing yet.
# TYPE a_empty counter
# EOF
"#;
        let want = r#"# HELP a_runs_total Runs, by "job".
# TYPE a_runs_total counter
a_runs_total{job_name="x",outcome="success"} 3
# HELP a_runs_created Runs, by "job".
# TYPE a_runs_created gauge
a_runs_created{job_name="x",outcome="success"} 1700000000.0
# HELP a_up 1 while up\\down\nnext line.
# TYPE a_up gauge
a_up 1
# HELP a_lag_seconds Lag.
# TYPE a_lag_seconds histogram
a_lag_seconds_sum{job_name="x"} 0.5
a_lag_seconds_count{job_name="x"} 2
a_lag_seconds_bucket{le="0.1",job_name="x"} 1
a_lag_seconds_bucket{le="+Inf",job_name="x"} 2
# HELP a_lag_seconds_created Lag.
# TYPE a_lag_seconds_created gauge
a_lag_seconds_created{job_name="x"} 1700000000.0
# HELP a_build_info Build.
# TYPE a_build_info gauge
a_build_info{version="1.2 {beta}"} 1
# HELP a_state State.
# TYPE a_state gauge
a_state{a_state="on"} 1
a_state{a_state="off"} 0
# HELP a_queue Queue.
# TYPE a_queue histogram
a_queue_bucket{le="+Inf"} 4
# HELP a_queue_gsum Queue.
# TYPE a_queue_gsum gauge
a_queue_gsum 10
# HELP a_queue_gcount Queue.
# TYPE a_queue_gcount gauge
a_queue_gcount 4
# HELP a_rpc Rpc.
# TYPE a_rpc summary
a_rpc{quantile="0.5"} 0.1
a_rpc_sum 1
a_rpc_count 3
# HELP a_other Other.
# TYPE a_other untyped
a_other 7 1700000000250
# HELP a_empty_total Nothing yet.
# TYPE a_empty_total counter
"#;
        assert_eq!(from_openmetrics(openmetrics), want);
    }

    #[test]
    fn a_closing_brace_or_space_inside_a_label_value_does_not_end_the_labels() {
        assert_eq!(
            convert_sample(r#"m{a="} \" x"} 1 2.0 # {b="1"} 3"#),
            r#"m{a="} \" x"} 1 2000"#
        );
        assert_eq!(convert_sample("m 1.5"), "m 1.5");
        assert_eq!(convert_sample("m NaN # {} 1"), "m NaN");
    }
}
