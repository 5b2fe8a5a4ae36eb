//! Values at the extremes of every key go through `load()` and, when accepted, through a short
//! run of the daemon on paused time: nothing may panic, anywhere (promise 8).
//!
//! Each case is a configuration whose every value sits at an edge of its range (and must load),
//! and the same configuration with one duration replaced by a wild value (out of range, zero,
//! negative, overflowing), which must either be refused with a located problem or run.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Once, OnceLock};
use std::time::Duration;

use proptest::prelude::*;

use crate::support::{wall, InProcess};

/// Marks a duration literal that the wild variant may replace.
const MARK: char = '~';

const PERIODS: &[&str] = &["1ms", "7ms", "1s", "100y"];
const POSITIVE: &[&str] = &["1ns", "1ms", "1s", "100y"];
const ZERO_OR_MORE: &[&str] = &["0s", "1ns", "1s", "100y"];
const WILD: &[&str] = &[
    "0s",
    "1ns",
    "999us",
    "101y",
    "300000000000y",
    "18446744073709551615s",
    "-1s",
    "",
];
const COUNTS: &[i64] = &[1, 2, u32::MAX as i64];
const SIZES: &[&str] = &["1B", "1KiB", "16EiB", "99999999999999999999B"];
const CRONS: &[&str] = &[
    "* * * * * *",
    "0 0 29 2 *",
    "59 59 23 31 12 *",
    "*/1 * * * * *",
    "0 9 1 * */1",
    "@yearly",
];

fn pick<T: Clone + std::fmt::Debug + 'static>(values: &'static [T]) -> impl Strategy<Value = T> {
    proptest::sample::select(values)
}

fn duration(values: &'static [&'static str]) -> impl Strategy<Value = String> {
    pick(values).prop_map(|v| format!("\"{MARK}{v}\""))
}

/// `key = value`, present half of the time.
fn line(key: &'static str, value: impl Strategy<Value = String>) -> impl Strategy<Value = String> {
    proptest::option::of(value)
        .prop_map(move |v| v.map_or_else(String::new, |v| format!("{key} = {v}\n")))
}

/// A valid job with `action`, every value at an edge of its range.
fn job(name: &'static str, action: &'static str) -> impl Strategy<Value = String> {
    let schedule = prop_oneof![
        (duration(PERIODS), any::<bool>())
            .prop_map(|(v, align)| format!("every = {v}\nalign = {align}\n")),
        duration(PERIODS).prop_map(|v| format!("every = {v}\nmode = \"fixed-delay\"\n")),
        pick(CRONS).prop_map(|v| format!("cron = \"{v}\"\n")),
    ];
    let overlap = prop_oneof![
        Just("overlap = \"skip\"\n".to_owned()),
        Just("overlap = \"queue\"\n".to_owned()),
        Just("overlap = \"replace\"\n".to_owned()),
        line("max_concurrent", pick(COUNTS).prop_map(|n| n.to_string()))
            .prop_map(|max| format!("overlap = \"allow\"\n{max}")),
    ];
    let jitter = proptest::option::of((duration(POSITIVE), any::<bool>())).prop_map(|j| {
        j.map_or_else(String::new, |(max, spread)| {
            format!("jitter = {max}\nspread = {spread}\n")
        })
    });
    // max_backoff is never below backoff: the periods are in ascending order.
    let retry = line(
        "retry",
        (pick(COUNTS), 0..PERIODS.len(), 0..PERIODS.len()).prop_map(|(a, b, m)| {
            let (b, m) = (PERIODS[b.min(m)], PERIODS[b.max(m)]);
            format!("{{ attempts = {a}, backoff = \"{MARK}{b}\", max_backoff = \"{MARK}{m}\" }}")
        }),
    );
    (
        schedule,
        overlap,
        line("timeout", duration(POSITIVE)),
        line("kill_grace", duration(ZERO_OR_MORE)),
        jitter,
        line("run_on_start", any::<bool>().prop_map(|b| b.to_string())),
        line("on_missed", pick(&["\"skip\"", "\"once\""]).prop_map(str::to_owned)),
        retry,
    )
        .prop_map(
            move |(schedule, overlap, timeout, grace, jitter, start, missed, retry)| {
                format!("[jobs.{name}]\n{schedule}{action}\n{overlap}{timeout}{grace}{jitter}{start}{missed}{retry}")
            },
        )
}

/// A valid configuration with marked durations.
fn config() -> impl Strategy<Value = String> {
    (
        line("shutdown_timeout", duration(ZERO_OR_MORE)),
        line("max_uptime", duration(POSITIVE)),
        line("max_runs", pick(COUNTS).prop_map(|n| n.to_string())),
        line("max_rss", pick(SIZES).prop_map(|s| format!("\"{s}\""))),
        job("inproc", "handler = \"log\""),
        job("child", "command = [\"true\"]"),
        job(
            "web",
            "http = { url = \"http://127.0.0.1:9/\", timeout = \"~1s\" }",
        ),
    )
        .prop_map(|(shutdown, uptime, runs, rss, a, b, c)| {
            format!("[daemon]\nstate_file = \"state\"\n{shutdown}{uptime}{runs}{rss}{a}{b}{c}")
        })
}

/// `text` without its marks, and with the `k`-th marked duration (mod their count) replaced by
/// `wild`.
fn variants(text: &str, k: usize, wild: &str) -> (String, String) {
    let marked = text.matches(MARK).count().max(1);
    let mut mutated = String::new();
    let mut seen = 0;
    let mut rest = text;
    while let Some(at) = rest.find(MARK) {
        mutated.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        let end = after.find('"').unwrap_or(after.len());
        if seen == k % marked {
            mutated.push_str(wild);
        } else {
            mutated.push_str(&after[..end]);
        }
        seen += 1;
        rest = &after[end..];
    }
    mutated.push_str(rest);
    (text.replace(MARK, ""), mutated)
}

/// Panics on threads named after this test (the test's own, which runs its current-thread
/// runtime), counted by a panic hook: a job task's panic would otherwise vanish into its
/// `JoinHandle` with the daemon still up.
fn panics_here() -> Arc<AtomicUsize> {
    static HOOK: Once = Once::new();
    static COUNT: OnceLock<Arc<AtomicUsize>> = OnceLock::new();
    let count = COUNT.get_or_init(Arc::default).clone();
    HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        let count = count.clone();
        std::panic::set_hook(Box::new(move |info| {
            let thread = std::thread::current();
            if thread.name().is_some_and(|n| n.contains("extreme_values")) {
                count.fetch_add(1, Ordering::SeqCst);
            }
            previous(info);
        }));
    });
    count
}

/// How long one case may take in real time before it counts as a hang (it takes milliseconds).
const HANG: Duration = Duration::from_secs(60);

/// [`load_and_run`] on a thread of its own, so that a hang fails the case instead of the suite.
fn load_and_run_bounded(text: &str) -> Result<bool, String> {
    let (done, result) = std::sync::mpsc::channel();
    let owned = text.to_owned();
    std::thread::Builder::new()
        .name("extreme_values-case".to_owned())
        .spawn(move || {
            let loaded = load_and_run(&owned);
            let _ = done.send(loaded);
        })
        .expect("thread");
    match result.recv_timeout(HANG) {
        Ok(loaded) => Ok(loaded),
        Err(std::sync::mpsc::RecvTimeoutError::Timeout) => Err(format!("hung with:\n{text}")),
        Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
            Err(format!("panicked with:\n{text}"))
        }
    }
}

/// Loads `text`; when it loads, runs it for 3 s of paused time and stops it. Returns whether it
/// loaded.
fn load_and_run(text: &str) -> bool {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("jobs.toml");
        crate::support::write_settled(&path, text);
        match tickd::load(&path, &tickd::Handlers::with_builtins()) {
            // A refusal is a located problem, never a read error or a panic.
            Err(tickd::ConfigError::Invalid { problems }) => {
                assert!(
                    !problems.is_empty() && problems.iter().all(|p| p.line > 0),
                    "{problems:?}"
                );
                false
            }
            Err(other) => panic!("unexpected error {other}"),
            Ok(_) => {
                let daemon = InProcess::start_in(dir, text, wall(2026, 1, 1, 0, 0, 0));
                daemon.run_for(3_000).await;
                daemon.stop_if_running().await;
                true
            }
        }
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 40, ..ProptestConfig::default() })]

    #[test]
    fn extreme_values_never_panic_in_load_or_a_short_run(
        text in config(),
        k in 0usize..64,
        wild in pick(WILD),
    ) {
        let panics = panics_here();
        let before = panics.load(Ordering::SeqCst);
        let (valid, mutated) = variants(&text, k, wild);
        let loaded = load_and_run_bounded(&valid);
        prop_assert_eq!(loaded, Ok(true), "values at the edges of their ranges must load:\n{}", valid);
        let ran = load_and_run_bounded(&mutated);
        prop_assert!(ran.is_ok(), "{:?}", ran);
        prop_assert_eq!(panics.load(Ordering::SeqCst), before, "a panic with:\n{}\nor:\n{}", valid, mutated);
    }
}
