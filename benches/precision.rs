//! Precision and scale benchmark: tickd against tokio-cron-scheduler and a plain tokio
//! `sleep_until` loop, on the same machine, in the same run.
//!
//! ```sh
//! cargo bench --bench precision                  # every scenario, ~6 minutes
//! cargo bench --bench precision -- --quick       # shorter runs, for a smoke test
//! cargo bench --bench precision -- --long        # + the 1,000,000 / 100,000 run memory soak
//! cargo bench --bench precision -- --only inproc-1x5hz
//! ```
//!
//! Every (scenario, system) pair runs in a fresh child process (this binary re-executed with
//! `--child SCENARIO SYSTEM`), so CPU time and peak RSS belong to that pair alone. Results are
//! printed as a table and written to `target/bench/precision.json`.
//!
//! Lateness is the time from the due instant (grid point, or the wall-clock second for cron) to
//! the moment the job's own code runs, in milliseconds.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde_json::{json, Value};
use tokio::sync::mpsc;

/// Scale of a run.
#[derive(Clone, Copy)]
struct Scale {
    /// Seconds each timing scenario observes.
    seconds: u64,
    /// Runs for the memory soak (in-process, child).
    soak_runs: (u64, u64),
}

const SCENARIOS: &[(&str, &[&str])] = &[
    (
        "inproc-1x5hz",
        &["tickd", "tokio-sleep", "tcs-repeated-200ms"],
    ),
    ("inproc-1x1hz-cron", &["tickd", "tokio-sleep", "tcs"]),
    ("inproc-1000x5hz", &["tickd", "tokio-sleep"]),
    ("inproc-1000x5hz-aligned", &["tickd", "tokio-sleep"]),
    ("inproc-1000x5hz-spread", &["tickd"]),
    ("inproc-1000x1hz-cron", &["tickd", "tokio-sleep", "tcs"]),
    ("inproc-10000x1hz", &["tickd", "tokio-sleep", "tcs"]),
    ("child-5hz", &["tickd", "bare-spawn"]),
    ("idle-10x10s", &["tickd"]),
    ("inproc-100x5hz", &["tickd"]),
    ("inproc-100x5hz-output-flood", &["tickd"]),
    ("inproc-100x5hz-with-children", &["tickd"]),
    ("inproc-100x5hz-cpu-hog", &["tickd"]),
    ("startup-reload-10000", &["tickd"]),
    ("memory-soak", &["tickd"]),
    ("page-1000", &["tickd"]),
    (
        "binary-1000x5hz-aligned-log",
        &["tickd", "tickd-log-failures"],
    ),
    (
        "scale-1000",
        &[
            "tickd-spread",
            "tickd-at-00",
            "tickd-at-00-totals",
            "binary-spread",
        ],
    ),
    (
        "scale-10000",
        &[
            "tickd-spread",
            "tickd-at-00",
            "tickd-at-00-totals",
            "binary-spread",
        ],
    ),
    (
        "scale-100000",
        &[
            "tickd-spread",
            "tickd-at-00",
            "tickd-at-00-totals",
            "binary-spread",
        ],
    ),
];

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--child") {
        let scenario = args[i + 1].clone();
        let system = args[i + 2].clone();
        let scale = scale_from(&args);
        let result = run_child(&scenario, &system, scale);
        println!("RESULT {}", result);
        return;
    }
    // `cargo bench` passes `--bench`; ignore it and libtest-style filters.
    let only: Option<String> = args
        .iter()
        .position(|a| a == "--only")
        .and_then(|i| args.get(i + 1).cloned());
    let scale_flag = if args.iter().any(|a| a == "--quick") {
        "--quick"
    } else if args.iter().any(|a| a == "--long") {
        "--long"
    } else {
        "--normal"
    };
    let me = std::env::current_exe().expect("own path");
    let mut results = Vec::new();
    println!("machine: {}", machine());
    for (scenario, systems) in SCENARIOS {
        if only.as_deref().is_some_and(|o| o != *scenario) {
            continue;
        }
        for system in *systems {
            eprintln!("running {scenario} on {system} ...");
            let output = Command::new(&me)
                .args(["--child", scenario, system, scale_flag])
                .output()
                .expect("run child");
            let stdout = String::from_utf8_lossy(&output.stdout);
            match stdout.lines().find_map(|l| l.strip_prefix("RESULT ")) {
                Some(line) => {
                    let value: Value = serde_json::from_str(line).expect("child JSON");
                    results.push(value);
                }
                None => {
                    eprintln!(
                        "  {scenario}/{system} failed: {}",
                        String::from_utf8_lossy(&output.stderr)
                    );
                    results
                        .push(json!({"scenario": scenario, "system": system, "error": "failed"}));
                }
            }
        }
    }
    print_table(&results);
    let out = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bench");
    std::fs::create_dir_all(&out).expect("target/bench");
    let file = out.join("precision.json");
    let doc = json!({ "machine": machine(), "date": Utc::now().to_rfc3339(), "results": results });
    std::fs::write(&file, serde_json::to_string_pretty(&doc).expect("json")).expect("write");
    println!("\nwritten to {}", file.display());
}

fn scale_from(args: &[String]) -> Scale {
    if args.iter().any(|a| a == "--quick") {
        Scale {
            seconds: 5,
            soak_runs: (50_000, 2_000),
        }
    } else if args.iter().any(|a| a == "--long") {
        Scale {
            seconds: 60,
            soak_runs: (1_000_000, 100_000),
        }
    } else {
        Scale {
            seconds: 20,
            soak_runs: (200_000, 10_000),
        }
    }
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|s| s.trim().to_owned())
        })
        .unwrap_or_default();
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!("{cores} cores, {cpu}, Linux {}", kernel.trim())
}

// ---------------------------------------------------------------------------------------------
// The real binary.

/// `tickd run` on 1000 aligned `handler = "log"` jobs at 5 Hz with the default logging (info,
/// to a file): lateness from each run's `run started` line (`lateness_ms`, taken where the
/// run starts), CPU and peak RSS from `/proc`. `tickd-log-failures` sets `log = "failures"`
/// on every job: no line per run; its lateness comes from `/metrics` (0.5/1/5/10 ms buckets),
/// so only the bucket a percentile falls in is known, and its upper bound is given.
async fn binary_logging(system: &str, scale: Scale) -> Value {
    let (jobs, period) = (1000u64, Duration::from_millis(200));
    let window = Duration::from_secs(scale.seconds);
    let log_key = if system == "tickd-log-failures" {
        "log = \"failures\"\n"
    } else {
        ""
    };
    let port = free_port();
    let (dir, path) = jobs_file(&served_jobs(
        port,
        jobs,
        &format!("every = \"200ms\"\nalign = true\nhandler = \"log\"\n{log_key}"),
    ));
    let log_path = dir.path().join("tickd.log");
    let log = std::fs::File::create(&log_path).expect("log file");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_tickd"))
        .arg("run")
        .arg(&path)
        .env_remove("TICKD_LOG")
        .stdout(std::process::Stdio::null())
        .stderr(log)
        .spawn()
        .expect("start tickd");
    let pid = child.id();
    // Start-up, then the window: CPU counted over the window only.
    let warmup = Duration::from_secs(2);
    tokio::time::sleep(warmup).await;
    let cpu0 = proc_cpu_seconds(pid);
    let metrics0 = scrape(port).await;
    // Where the window's lines begin: the runs before it are the warm-up's, however many
    // instants the start-up left in it (counting them as 2 s of runs dropped one instant's
    // runs when the first fire came after the first 200 ms).
    let window_starts_at = std::fs::metadata(&log_path).map_or(0, |meta| meta.len()) as usize;
    tokio::time::sleep(window).await;
    let cpu = proc_cpu_seconds(pid) - cpu0;
    let metrics1 = scrape(port).await;
    let rss_mb = proc_status_kb(pid, "VmHWM:") as f64 / 1024.0;
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGTERM,
    );
    let _ = child.wait();
    let expected = jobs * (window.as_nanos() / period.as_nanos()) as u64;
    let lines = std::fs::read_to_string(&log_path).unwrap_or_default();
    // From `window_starts_at`, or from the start of a line cut there (there should be none:
    // the log's writer writes whole lines).
    let window_lines = lines
        .get(..window_starts_at)
        .and_then(|before| before.rfind('\n'))
        .map_or(lines.as_str(), |end| &lines[end + 1..]);
    let mut samples: Vec<u64> = window_lines
        .lines()
        .filter(|line| line.contains("run started"))
        .filter_map(|line| {
            let at = line.find("lateness_ms=")? + "lateness_ms=".len();
            let value: f64 = line[at..].split_whitespace().next()?.parse().ok()?;
            Some((value * 1e6) as u64)
        })
        .collect();
    samples.truncate(expected as usize);
    let fires = fires_between(&metrics0, &metrics1);
    let mut result = summary(
        "binary-1000x5hz-aligned-log",
        system,
        jobs,
        expected,
        &mut samples,
        cpu,
    );
    result["peak_rss_mb"] = json!(rss_mb);
    result["log_lines"] = json!(lines.lines().count());
    result["steady_cpu_us_per_fire"] = json!(cpu * 1e6 / fires.max(1.0));
    if system == "tickd-log-failures" {
        let (p50, p99) = bucket_percentiles(&metrics0, &metrics1);
        result["p50_ms"] = json!(p50 * 1e3);
        result["p99_ms"] = json!(p99 * 1e3);
        result["observed"] = json!(fires);
        result["from_buckets"] = json!(true);
    }
    result
}

/// `tickd run` on `jobs` `handler = "log"` jobs at 1 Hz, spread over the second, with
/// `log = "none"`: the RSS of the real binary once every job's run history is full (20 runs),
/// per job over the same binary on a file with no jobs, before and after two scrapes of
/// `/metrics`; CPU per fire and the lateness buckets
/// over the last 10 s, from `/proc` and `/metrics`. What a user's process takes, without what
/// the in-process rows carry (the bench's own recording of every fire, its runtime).
async fn scale_binary(jobs: u64, scale: Scale) -> Value {
    let start = |jobs: u64| {
        let port = free_port();
        let (dir, path) = jobs_file(&served_jobs(
            port,
            jobs,
            "every = \"1s\"\njitter = \"1s\"\nspread = true\nhandler = \"log\"\nlog = \"none\"\n",
        ));
        let child = std::process::Command::new(env!("CARGO_BIN_EXE_tickd"))
            .arg("run")
            .arg(&path)
            .env_remove("TICKD_LOG")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start tickd");
        (dir, port, child)
    };
    let stop = |mut child: std::process::Child| {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let _ = child.wait();
    };
    let (_empty_dir, _, empty) = start(0);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let baseline_kb = proc_status_kb(empty.id(), "VmRSS:");
    stop(empty);
    let (_dir, port, child) = start(jobs);
    let pid = child.id();
    // The history fills in 20 s at 1 Hz; the window is the last 10 s of the wait.
    let window = Duration::from_secs(scale.seconds.clamp(1, 10));
    tokio::time::sleep(Duration::from_secs(22) - window).await;
    // The jobs' own memory, before any `/metrics` (2.2 KB of text per job) was asked for.
    let jobs_kb = proc_status_kb(pid, "VmRSS:");
    let (cpu0, metrics0) = (proc_cpu_seconds(pid), scrape(port).await);
    tokio::time::sleep(window).await;
    let (cpu, metrics1) = (proc_cpu_seconds(pid) - cpu0, scrape(port).await);
    let rss_kb = proc_status_kb(pid, "VmRSS:");
    let peak_kb = proc_status_kb(pid, "VmHWM:");
    stop(child);
    let fires = fires_between(&metrics0, &metrics1);
    let (p50, p99) = bucket_percentiles(&metrics0, &metrics1);
    json!({
        "scenario": format!("scale-{jobs}"),
        "system": "binary-spread",
        "jobs": jobs,
        "expected": jobs * window.as_secs(),
        "observed": fires,
        "p50_ms": p50 * 1e3,
        "p99_ms": p99 * 1e3,
        "from_buckets": true,
        "cpu_s": cpu,
        "steady_cpu_us_per_fire": cpu * 1e6 / fires.max(1.0),
        "rss_mb": rss_kb as f64 / 1024.0,
        "baseline_rss_mb": baseline_kb as f64 / 1024.0,
        "rss_per_job_kb": rss_kb.saturating_sub(baseline_kb) as f64 / jobs as f64,
        "rss_per_job_before_metrics_kb": jobs_kb.saturating_sub(baseline_kb) as f64 / jobs as f64,
        "peak_rss_mb": peak_kb as f64 / 1024.0,
    })
}

/// The daemon's `/metrics` text (empty if it does not answer).
async fn scrape(port: u16) -> String {
    let url = format!("http://127.0.0.1:{port}/metrics");
    match reqwest::get(&url).await {
        Ok(answer) => answer.text().await.unwrap_or_default(),
        Err(_) => String::new(),
    }
}

/// Per upper bound `le`, the lateness observations of every job at or below it.
fn lateness_buckets(metrics: &str) -> BTreeMap<String, f64> {
    let mut buckets: BTreeMap<String, f64> = BTreeMap::new();
    for line in metrics.lines() {
        let Some(rest) = line.strip_prefix("tickd_fire_lateness_seconds_bucket{") else {
            continue;
        };
        let Some(le) = rest.split("le=\"").nth(1).and_then(|r| r.split('"').next()) else {
            continue;
        };
        let count: f64 = line
            .rsplit(' ')
            .next()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0);
        *buckets.entry(le.to_owned()).or_default() += count;
    }
    buckets
}

/// Fires counted by the lateness histograms between two scrapes.
fn fires_between(before: &str, after: &str) -> f64 {
    let total = |m: &str| lateness_buckets(m).get("+Inf").copied().unwrap_or(0.0);
    total(after) - total(before)
}

/// The upper bounds of the buckets the p50 and p99 lateness fall in, in seconds.
fn bucket_percentiles(before: &str, after: &str) -> (f64, f64) {
    let (b0, b1) = (lateness_buckets(before), lateness_buckets(after));
    let mut bounds: Vec<(f64, f64)> = b1
        .iter()
        .map(|(le, count)| {
            let before = b0.get(le).copied().unwrap_or(0.0);
            let le = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().unwrap_or(f64::NAN)
            };
            (le, count - before)
        })
        .collect();
    bounds.sort_by(|a, b| a.0.total_cmp(&b.0));
    let total = bounds.last().map_or(0.0, |b| b.1);
    let at = |q: f64| {
        bounds
            .iter()
            .find(|(_, count)| *count >= q * total)
            .map_or(f64::NAN, |(le, _)| *le)
    };
    (at(0.5), at(0.99))
}

/// User + system CPU seconds of process `pid`.
fn proc_cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // After the command's closing parenthesis: state is field 3, utime 14, stime 15.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map_or(Vec::new(), |(_, rest)| rest.split_whitespace().collect());
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    let hz = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .unwrap_or(100) as f64;
    (ticks(11) + ticks(12)) / hz
}

/// A `/proc/PID/status` field in kB, of another process.
fn proc_status_kb(pid: u32, field: &str) -> u64 {
    status_kb_of(&pid.to_string(), field)
}

// ---------------------------------------------------------------------------------------------
// Measurements shared by every child.

/// Lateness samples (ns) and a fire counter.
#[derive(Default)]
struct Recorder {
    samples: Mutex<Vec<u64>>,
    fires: AtomicU64,
    /// While set (across a reload), each job's due instants (ns since 1970) as the `measure`
    /// handler sees them: the fires across it are counted by when they were due, not when they
    /// were seen (a late batch from before it does not count, a fire twice would), and a fire
    /// missing from a job's grid shows as a gap.
    track_jobs: std::sync::atomic::AtomicBool,
    due_by_job: Mutex<HashMap<Arc<str>, Vec<i64>>>,
}

impl Recorder {
    fn record(&self, lateness_ns: i64) {
        self.fires.fetch_add(1, Ordering::Relaxed);
        self.samples
            .lock()
            .expect("lock")
            .push(u64::try_from(lateness_ns.max(0)).unwrap_or(0));
    }
}

/// User + system CPU seconds of this process (all threads, microsecond resolution).
fn cpu_seconds() -> f64 {
    use nix::sys::resource::{getrusage, UsageWho};
    match getrusage(UsageWho::RUSAGE_SELF) {
        Ok(usage) => {
            let seconds = |t: nix::sys::time::TimeVal| t.tv_sec() as f64 + t.tv_usec() as f64 / 1e6;
            seconds(usage.user_time()) + seconds(usage.system_time())
        }
        Err(_) => f64::NAN,
    }
}

/// A `/proc/self/status` field in kB.
fn status_kb(field: &str) -> u64 {
    status_kb_of("self", field)
}

/// A `/proc/{process}/status` field in kB (0 when it cannot be read).
fn status_kb_of(process: &str, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{process}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

fn summary(
    scenario: &str,
    system: &str,
    jobs: u64,
    expected: u64,
    samples: &mut [u64],
    cpu: f64,
) -> Value {
    samples.sort_unstable();
    let pct = |p: f64| -> f64 {
        if samples.is_empty() {
            return f64::NAN;
        }
        let i = ((samples.len() as f64 - 1.0) * p).round() as usize;
        samples[i] as f64 / 1e6
    };
    json!({
        "scenario": scenario,
        "system": system,
        "jobs": jobs,
        "expected": expected,
        "observed": samples.len(),
        "p50_ms": pct(0.5),
        "p99_ms": pct(0.99),
        "max_ms": pct(1.0),
        "cpu_s": cpu,
        "peak_rss_mb": status_kb("VmHWM:") as f64 / 1024.0,
    })
}

// ---------------------------------------------------------------------------------------------
// The children.

fn run_child(scenario: &str, system: &str, scale: Scale) -> Value {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async move {
        match scenario {
            "inproc-1x5hz" => {
                periodic(scenario, system, 1, Duration::from_millis(200), scale).await
            }
            "inproc-1x1hz-cron" => {
                periodic(scenario, system, 1, Duration::from_secs(1), scale).await
            }
            "inproc-1000x5hz" | "inproc-1000x5hz-aligned" | "inproc-1000x5hz-spread" => {
                periodic(scenario, system, 1000, Duration::from_millis(200), scale).await
            }
            "inproc-1000x1hz-cron" => {
                periodic(scenario, system, 1000, Duration::from_secs(1), scale).await
            }
            "inproc-10000x1hz" => {
                periodic(scenario, system, 10_000, Duration::from_secs(1), scale).await
            }
            "child-5hz" => child_start(system, scale).await,
            "idle-10x10s" => idle(scale).await,
            "inproc-100x5hz" => neighbours(scenario, None, scale).await,
            // A child writing 2 GB without a newline, then binary bytes, next to the 100 jobs.
            "inproc-100x5hz-output-flood" => {
                neighbours(
                    scenario,
                    Some("head -c 2000000000 /dev/zero; printf 'x\\377\\n'"),
                    scale,
                )
                .await
            }
            // A child that keeps a core busy (0.9 s of every second) and prints nothing: what a
            // CPU-bound neighbour costs, whatever tickd does with output.
            "inproc-100x5hz-cpu-hog" => {
                neighbours(scenario, Some("timeout 0.9 yes > /dev/null"), scale).await
            }
            // Ten child jobs at 10 Hz next to the 100: what starting processes costs the others.
            "inproc-100x5hz-with-children" => neighbours_with(scenario, None, 10, scale).await,
            "startup-reload-10000" => startup_reload().await,
            "memory-soak" => memory_soak(scale).await,
            "page-1000" => page_1000(scale).await,
            "binary-1000x5hz-aligned-log" => binary_logging(system, scale).await,
            "scale-1000" if system == "binary-spread" => scale_binary(1_000, scale).await,
            "scale-1000" => scale_run(1_000, system, scale).await,
            "scale-10000" if system == "binary-spread" => scale_binary(10_000, scale).await,
            "scale-10000" => scale_run(10_000, system, scale).await,
            "scale-100000" if system == "binary-spread" => scale_binary(100_000, scale).await,
            "scale-100000" => scale_run(100_000, system, scale).await,
            other => json!({"error": format!("unknown scenario {other}")}),
        }
    })
}

/// A port nobody listens on now.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free port")
        .port()
}

/// A jobs file with the endpoint on `port` and `jobs` jobs `j0`, `j1`, ... of the same `keys`.
fn served_jobs(port: u16, jobs: u64, keys: &str) -> String {
    let mut text = format!("[daemon]\nhttp = \"127.0.0.1:{port}\"\n");
    for i in 0..jobs {
        text.push_str(&format!("[jobs.j{i}]\n{keys}"));
    }
    text
}

/// A temp dir with a jobs file; kept for the life of the child.
fn jobs_file(text: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("jobs.toml");
    std::fs::write(&path, text).expect("write jobs");
    (dir, path)
}

fn recording_handlers(recorder: &Arc<Recorder>) -> tickd::Handlers {
    let mut handlers = tickd::Handlers::new();
    let rec = recorder.clone();
    handlers.register("measure", move |ctx: tickd::RunContext| {
        let lateness = Utc::now() - ctx.scheduled;
        rec.record(lateness.num_nanoseconds().unwrap_or(i64::MAX));
        if rec.track_jobs.load(Ordering::Relaxed) {
            let due = ctx.scheduled.timestamp_nanos_opt().unwrap_or(0);
            let mut by_job = rec.due_by_job.lock().expect("lock");
            by_job.entry(ctx.job.clone()).or_default().push(due);
        }
        async { Ok::<(), tickd::handler::HandlerError>(()) }
    });
    handlers
}

/// tickd running in this process on the system clock.
struct Running {
    controls: mpsc::Sender<tickd::Control>,
    daemon: tokio::task::JoinHandle<Result<tickd::Stopped, tickd::DaemonError>>,
}

impl Running {
    fn start(path: &Path, config: tickd::Config, handlers: tickd::Handlers) -> Running {
        let (controls, rx) = mpsc::channel(4);
        let options = tickd::DaemonOptions {
            config_path: path.to_owned(),
            handlers,
            clock: tickd::Clock::system(),
            group_keeper: None,
            notifier: None,
            subreaper: false,
        };
        let daemon = tokio::spawn(tickd::run(config, options, rx));
        Running { controls, daemon }
    }

    async fn send(&self, control: tickd::Control) {
        self.controls.send(control).await.expect("daemon alive");
    }

    async fn stop(self) {
        self.send(tickd::Control::Shutdown).await;
        self.daemon.await.expect("daemon task").expect("daemon");
    }
}

/// Runs tickd on the file at `path` for `seconds`, then stops it.
async fn run_tickd(path: &Path, handlers: tickd::Handlers, seconds: Duration) {
    let config = tickd::load(path, &handlers).expect("valid config");
    let running = Running::start(path, config, handlers);
    tokio::time::sleep(seconds).await;
    running.stop().await;
}

/// `jobs` jobs every `period` (a cron every second when the scenario says `cron` and
/// `period` is 1 s), observed for `scale.seconds`.
async fn periodic(
    scenario: &str,
    system: &str,
    jobs: u64,
    period: Duration,
    scale: Scale,
) -> Value {
    let cron = scenario.ends_with("cron");
    let spread = scenario.ends_with("spread");
    // `spread = true` over the whole period: each job keeps its own stable slot in it.
    // Without `align`, each job's grid starts when its task does, so 1000 jobs fire spread over
    // their start-up; `align = true` puts them all on the same instants.
    let extra_keys = if spread {
        format!("jitter = \"{}ms\"\nspread = true\n", period.as_millis())
    } else if scenario.ends_with("aligned") {
        "align = true\n".to_owned()
    } else {
        String::new()
    };
    let window = Duration::from_secs(scale.seconds);
    let recorder = Arc::new(Recorder::default());
    let cpu0 = cpu_seconds();
    // The first fire is due one period in; fires due in (start, start + window] count.
    let expected = jobs * (window.as_nanos() / period.as_nanos()) as u64;
    let steady = steady_sampler(&recorder, window);
    match system {
        "tickd" => {
            let mut text = String::new();
            for i in 0..jobs {
                if cron {
                    text.push_str(&format!(
                        "[jobs.j{i}]\ncron = \"* * * * * *\"\nhandler = \"measure\"\n"
                    ));
                } else {
                    text.push_str(&format!(
                        "[jobs.j{i}]\nevery = \"{}ms\"\nhandler = \"measure\"\n{extra_keys}",
                        period.as_millis()
                    ));
                }
            }
            let (_dir, path) = jobs_file(&text);
            // Stop after the window plus the largest delay, so the last due fire is in.
            let extra = if spread { period * 3 / 2 } else { period / 2 };
            run_tickd(&path, recording_handlers(&recorder), window + extra).await;
        }
        "tokio-sleep" => {
            let start = tokio::time::Instant::now();
            let mut tasks = Vec::new();
            for _ in 0..jobs {
                let rec = recorder.clone();
                tasks.push(tokio::spawn(async move {
                    // Cron: due at each whole wall-clock second.
                    let mut k = 1u32;
                    loop {
                        let due = if cron {
                            let now = Utc::now();
                            let next = now.timestamp() + 1;
                            let wait = (next * 1_000_000_000
                                - now.timestamp_nanos_opt().unwrap_or(0))
                            .max(0);
                            tokio::time::Instant::now() + Duration::from_nanos(wait as u64)
                        } else {
                            start + period * k
                        };
                        if due > start + window + period / 2 {
                            break;
                        }
                        tokio::time::sleep_until(due).await;
                        let late = tokio::time::Instant::now().saturating_duration_since(due);
                        rec.record(late.as_nanos() as i64);
                        k += 1;
                    }
                }));
            }
            for task in tasks {
                let _ = task.await;
            }
        }
        "tcs" | "tcs-repeated-200ms" => {
            use tokio_cron_scheduler::{Job, JobScheduler};
            let sched = JobScheduler::new().await.expect("tcs");
            for _ in 0..jobs {
                let rec = recorder.clone();
                let job = if system == "tcs" {
                    Job::new_async("* * * * * *", move |_id, _lock| {
                        let rec = rec.clone();
                        Box::pin(async move {
                            let now = Utc::now();
                            let due_ns = now.timestamp() * 1_000_000_000;
                            rec.record(now.timestamp_nanos_opt().unwrap_or(0) - due_ns);
                        })
                    })
                } else {
                    let start = Utc::now();
                    let fired = Arc::new(AtomicU64::new(0));
                    Job::new_repeated_async(period, move |_id, _lock| {
                        let rec = rec.clone();
                        let fired = fired.clone();
                        Box::pin(async move {
                            let k = fired.fetch_add(1, Ordering::Relaxed) + 1;
                            let due = start
                                + chrono::Duration::from_std(period * k as u32).unwrap_or_default();
                            rec.record((Utc::now() - due).num_nanoseconds().unwrap_or(0));
                        })
                    })
                }
                .expect("job");
                sched.add(job).await.expect("add");
            }
            sched.start().await.expect("start");
            tokio::time::sleep(window + period / 2).await;
            let mut sched = sched;
            let _ = sched.shutdown().await;
        }
        other => return json!({"error": format!("unknown system {other}")}),
    }
    let cpu = cpu_seconds() - cpu0;
    let mut samples = recorder.samples.lock().expect("lock").clone();
    // Count only fires due within the window (a few may land in the extra half period).
    samples.truncate(expected.min(samples.len() as u64) as usize);
    let mut result = summary(scenario, system, jobs, expected, &mut samples, cpu);
    result["cpu_us_per_fire"] = json!(cpu * 1e6 / expected.max(1) as f64);
    result["steady_cpu_us_per_fire"] = json!(steady.await.unwrap_or(f64::NAN));
    result
}

/// CPU per fire in the steady state: from a quarter into the window (start-up done, histories
/// full) to its last period, in µs.
fn steady_sampler(recorder: &Arc<Recorder>, window: Duration) -> tokio::task::JoinHandle<f64> {
    let recorder = recorder.clone();
    tokio::spawn(async move {
        tokio::time::sleep(window / 4).await;
        let (cpu1, fires1) = (cpu_seconds(), recorder.fires.load(Ordering::Relaxed));
        tokio::time::sleep(window * 3 / 4 - Duration::from_millis(500)).await;
        let (cpu2, fires2) = (cpu_seconds(), recorder.fires.load(Ordering::Relaxed));
        (cpu2 - cpu1) * 1e6 / (fires2.saturating_sub(fires1)).max(1) as f64
    })
}

/// Child-process start: from the due time to the child's first instruction (the child records
/// its own start with `date +%s%N`), against the bare `fork`/`exec` of the same command.
async fn child_start(system: &str, scale: Scale) -> Value {
    let dir = tempfile::tempdir().expect("tempdir");
    let stamps = dir.path().join("stamps");
    let script = format!("date +%s%N >> {}", stamps.display());
    let window = Duration::from_secs(scale.seconds);
    let period = Duration::from_millis(200);
    let cpu0 = cpu_seconds();
    let mut samples = Vec::new();
    match system {
        "tickd" => {
            // Aligned: the grid points are multiples of 200 ms since the epoch, so each child's
            // due time follows from its own start stamp.
            let text = format!(
                "[jobs.child]\nevery = \"200ms\"\nalign = true\ncommand = [\"sh\", \"-c\", {script:?}]\n"
            );
            let (_d, path) = jobs_file(&text);
            run_tickd(&path, tickd::Handlers::new(), window + period / 2).await;
            let period_ns = period.as_nanos() as i64;
            for start in read_stamps(&stamps) {
                samples.push((start % period_ns) as u64);
            }
        }
        "bare-spawn" => {
            let end = Instant::now() + window;
            while Instant::now() < end {
                let t0 = Utc::now().timestamp_nanos_opt().unwrap_or(0);
                let status = tokio::process::Command::new("sh")
                    .args(["-c", &script])
                    .status()
                    .await
                    .expect("spawn");
                assert!(status.success());
                if let Some(last) = read_stamps(&stamps).last() {
                    samples.push((last - t0).max(0) as u64);
                }
                tokio::time::sleep(period).await;
            }
        }
        other => return json!({"error": format!("unknown system {other}")}),
    }
    let cpu = cpu_seconds() - cpu0;
    let expected = (window.as_nanos() / period.as_nanos()) as u64;
    summary("child-5hz", system, 1, expected, &mut samples, cpu)
}

fn read_stamps(path: &Path) -> Vec<i64> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

/// 100 in-process jobs at 5 Hz, alone or next to a child job that floods its output: the
/// lateness of the neighbours shows what the flood costs them.
async fn neighbours(scenario: &str, flood: Option<&str>, scale: Scale) -> Value {
    neighbours_with(scenario, flood, 0, scale).await
}

/// [`neighbours`], plus `children` child jobs running `true` ten times a second.
async fn neighbours_with(
    scenario: &str,
    flood: Option<&str>,
    children: usize,
    scale: Scale,
) -> Value {
    let mut text = String::new();
    for i in 0..children {
        text.push_str(&format!(
            "[jobs.c{i}]\nevery = \"100ms\"\ncommand = [\"true\"]\n"
        ));
    }
    for i in 0..100 {
        text.push_str(&format!(
            "[jobs.j{i}]\nevery = \"200ms\"\nhandler = \"measure\"\n"
        ));
    }
    if let Some(script) = flood {
        text.push_str(&format!(
            "[jobs.flood]\nevery = \"1s\"\nshell = {script:?}\n"
        ));
    }
    let (_d, path) = jobs_file(&text);
    let recorder = Arc::new(Recorder::default());
    let window = Duration::from_secs(scale.seconds);
    let cpu0 = cpu_seconds();
    run_tickd(
        &path,
        recording_handlers(&recorder),
        window + Duration::from_millis(100),
    )
    .await;
    let cpu = cpu_seconds() - cpu0;
    let expected = 100 * (window.as_millis() / 200) as u64;
    let mut samples = recorder.samples.lock().expect("lock").clone();
    samples.truncate(expected.min(samples.len() as u64) as usize);
    summary(scenario, "tickd", 100, expected, &mut samples, cpu)
}

/// 10 jobs every 10 s: CPU spent over the window, extrapolated to 10 minutes.
async fn idle(scale: Scale) -> Value {
    let mut text = String::new();
    for i in 0..10 {
        text.push_str(&format!(
            "[jobs.j{i}]\nevery = \"10s\"\nhandler = \"measure\"\n"
        ));
    }
    let (_d, path) = jobs_file(&text);
    let recorder = Arc::new(Recorder::default());
    let window = Duration::from_secs(scale.seconds.max(20) * 3);
    let cpu0 = cpu_seconds();
    run_tickd(&path, recording_handlers(&recorder), window).await;
    let cpu = cpu_seconds() - cpu0;
    let mut samples = recorder.samples.lock().expect("lock").clone();
    let mut v = summary(
        "idle-10x10s",
        "tickd",
        10,
        10 * (window.as_secs() / 10),
        &mut samples,
        cpu,
    );
    v["cpu_s_per_10min"] = json!(cpu * 600.0 / window.as_secs_f64());
    v["window_s"] = json!(window.as_secs());
    v
}

/// Start-up with 10,000 jobs (load + schedule until every job's start-up run ran) and a SIGHUP
/// reload of the same 10,000 jobs, counting fires of the unchanged jobs across it.
async fn startup_reload() -> Value {
    let mut text = String::new();
    for i in 0..10_000 {
        text.push_str(&format!(
            "[jobs.j{i}]\nevery = \"1s\"\nrun_on_start = true\nhandler = \"measure\"\n"
        ));
    }
    let (_d, path) = jobs_file(&text);
    let Measured {
        recorder,
        reloaded,
        _guard,
        running,
        t0,
        load_ms,
    } = start_measured(&path);
    let startup_ms = until_fired(&recorder, 10_000, t0).await;
    tokio::time::sleep(Duration::from_millis(2300)).await;
    // Fires across the reload: from 2.3 s to 6.3 s after start, 4 per job.
    let (reload_ms, across, grid_gaps) = reload_across(&running, &recorder, &reloaded).await;
    running.stop().await;
    json!({
        "scenario": "startup-reload-10000",
        "system": "tickd",
        "jobs": 10_000,
        "load_ms": load_ms,
        "startup_ms": startup_ms,
        "reload_ms": reload_ms,
        "expected": 40_000,
        "observed": across,
        "grid_gaps_across_reload": grid_gaps,
        "peak_rss_mb": status_kb("VmHWM:") as f64 / 1024.0,
    })
}

/// `jobs` in-process jobs at 1 Hz, spread over the second (`jitter = "1s"`, `spread = true`)
/// or all due at :00 (`align = true`; `-totals`: with `job_metrics = false`): RSS (and per job, over the RSS before the jobs file was
/// read), CPU per fire, lateness over a window, start-up (until every job has run once), a
/// SIGHUP-style reload of the same file with the fires lost across it, and `/metrics`' size.
async fn scale_run(jobs: u64, system: &str, scale: Scale) -> Value {
    let keys = if system.starts_with("tickd-at-00") {
        "align = true\n"
    } else {
        "jitter = \"1s\"\nspread = true\n"
    };
    let port = free_port();
    let mut text = served_jobs(
        port,
        jobs,
        &format!("every = \"1s\"\nhandler = \"measure\"\n{keys}"),
    );
    // `-totals`: metrics as totals over all jobs, no series per job.
    if system.ends_with("-totals") {
        text = text.replacen("[daemon]\n", "[daemon]\njob_metrics = false\n", 1);
    }
    let (_d, path) = jobs_file(&text);
    let rss_before_kb = status_kb("VmRSS:");
    let Measured {
        recorder,
        reloaded,
        _guard,
        running,
        t0,
        load_ms,
    } = start_measured(&path);
    // Until every job has fired once (a spread slot, or the next :00).
    let startup_ms = until_fired(&recorder, jobs, t0).await;
    // The window: lateness and CPU per fire.
    let window = Duration::from_secs(scale.seconds.min(10));
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let skip = recorder.samples.lock().expect("lock").len();
    let (cpu0, fires0) = (cpu_seconds(), recorder.fires.load(Ordering::Relaxed));
    tokio::time::sleep(window).await;
    let (cpu1, fires1) = (cpu_seconds(), recorder.fires.load(Ordering::Relaxed));
    let mut samples = recorder.samples.lock().expect("lock")[skip..].to_vec();
    let rss_kb = status_kb("VmRSS:");
    let metrics_bytes = match reqwest::get(format!("http://127.0.0.1:{port}/metrics")).await {
        Ok(answer) => answer.bytes().await.map_or(0, |body| body.len()),
        Err(_) => 0,
    };
    // A reload of the same file, and the fires across it: 4 per job, none missed.
    let missed_before = missed_and_skipped(port).await;
    let (reload_ms, across, grid_gaps) = reload_across(&running, &recorder, &reloaded).await;
    let missed_after = missed_and_skipped(port).await;
    let (missed_across, skipped_across) = (
        missed_after.0 - missed_before.0,
        missed_after.1 - missed_before.1,
    );
    running.stop().await;
    let expected = jobs * window.as_secs();
    let scenario = format!("scale-{jobs}");
    let cpu = cpu1 - cpu0;
    let mut result = summary(&scenario, system, jobs, expected, &mut samples, cpu);
    result["observed"] = json!(fires1 - fires0);
    result["load_ms"] = json!(load_ms);
    result["startup_ms"] = json!(startup_ms);
    result["reload_ms"] = json!(reload_ms);
    result["fires_across_reload"] = json!(across);
    result["fires_across_reload_expected"] = json!(jobs * 4);
    result["missed_across_reload"] = json!(missed_across);
    result["skipped_across_reload"] = json!(skipped_across);
    result["grid_gaps_across_reload"] = json!(grid_gaps);
    result["rss_mb"] = json!(rss_kb as f64 / 1024.0);
    result["rss_per_job_kb"] = json!(rss_kb.saturating_sub(rss_before_kb) as f64 / jobs as f64);
    result["metrics_bytes"] = json!(metrics_bytes);
    result["steady_cpu_us_per_fire"] = json!(cpu * 1e6 / (fires1 - fires0).max(1) as f64);
    result
}

/// tickd started on `path` with the recording handlers, watched for its reloads: what the
/// start-up and reload scenarios measure from.
struct Measured {
    recorder: Arc<Recorder>,
    /// When "configuration reloaded" was logged.
    reloaded: Arc<Mutex<Option<Instant>>>,
    _guard: tracing::subscriber::DefaultGuard,
    running: Running,
    /// Before the jobs file was read.
    t0: Instant,
    load_ms: f64,
}

fn start_measured(path: &Path) -> Measured {
    let recorder = Arc::new(Recorder::default());
    let handlers = recording_handlers(&recorder);
    let reloaded = Arc::new(Mutex::new(None::<Instant>));
    let _guard = capture_reload(reloaded.clone());
    let t0 = Instant::now();
    let config = tickd::load(path, &handlers).expect("valid config");
    let load_ms = t0.elapsed().as_secs_f64() * 1e3;
    let running = Running::start(path, config, handlers);
    Measured {
        recorder,
        reloaded,
        _guard,
        running,
        t0,
        load_ms,
    }
}

/// Waits until `fires` runs were recorded (30 s at most); returns the ms since `t0`.
async fn until_fired(recorder: &Recorder, fires: u64, t0: Instant) -> f64 {
    let deadline = Instant::now() + Duration::from_secs(30);
    while recorder.fires.load(Ordering::Relaxed) < fires && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_micros(200)).await;
    }
    t0.elapsed().as_secs_f64() * 1e3
}

/// The sums over the jobs of `tickd_fires_missed_total` and of the fires skipped by the overlap
/// policy, from the endpoint on `port` (0 when it does not answer).
async fn missed_and_skipped(port: u16) -> (f64, f64) {
    let text = scrape(port).await;
    let sum = |keep: &dyn Fn(&str) -> bool| -> f64 {
        text.lines()
            .filter(|line| keep(line))
            .filter_map(|line| line.rsplit_once(' '))
            .filter_map(|(_, value)| value.parse::<f64>().ok())
            .sum()
    };
    (
        sum(&|line| line.starts_with("tickd_fires_missed_total")),
        sum(&|line| {
            line.starts_with("tickd_runs_total") && line.contains("outcome=\"skipped_overlap\"")
        }),
    )
}

/// Reloads the same file: how long until "configuration reloaded" (ms), and the runs due in
/// the 4 whole seconds after the reload's signal (4 per job at 1 Hz), counted once they have had
/// 2 s to be late in.
async fn reload_across(
    running: &Running,
    recorder: &Recorder,
    reloaded: &Mutex<Option<Instant>>,
) -> (f64, u64, usize) {
    let first = Utc::now().timestamp() + 1;
    let window = first..first + 4;
    recorder.track_jobs.store(true, Ordering::Relaxed);
    let t1 = Instant::now();
    running.send(tickd::Control::Reload).await;
    while reloaded.lock().expect("lock").is_none() && t1.elapsed() < Duration::from_secs(60) {
        tokio::time::sleep(Duration::from_micros(200)).await;
    }
    let reload_ms = reloaded
        .lock()
        .expect("lock")
        .map_or(f64::NAN, |at| at.duration_since(t1).as_secs_f64() * 1e3);
    let seen_by = DateTime::<Utc>::from_timestamp(window.end + 2, 0).unwrap_or_else(Utc::now);
    let wait = (seen_by - Utc::now()).to_std().unwrap_or_default();
    tokio::time::sleep(wait).await;
    recorder.track_jobs.store(false, Ordering::Relaxed);
    let by_job = recorder.due_by_job.lock().expect("lock");
    let in_window = (window.start * 1_000_000_000)..(window.end * 1_000_000_000);
    let due_in_window = by_job
        .values()
        .flatten()
        .filter(|due| in_window.contains(*due))
        .count();
    // A gap of more than 1.5 periods (1 s) between a job's fires is a fire missing from its grid.
    let gaps = by_job
        .values()
        .map(|dues| {
            dues.windows(2)
                .filter(|w| w[1] - w[0] > 1_500_000_000)
                .count()
        })
        .sum::<usize>();
    if gaps > 0 {
        eprintln!("{gaps} fires missing from their jobs' grids across the reload");
    }
    (reload_ms, due_in_window as u64, gaps)
}

/// Records when tickd logs "configuration reloaded".
fn capture_reload(slot: Arc<Mutex<Option<Instant>>>) -> tracing::subscriber::DefaultGuard {
    use tracing_subscriber::layer::SubscriberExt;
    struct Capture(Arc<Mutex<Option<Instant>>>);
    impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Capture {
        fn on_event(
            &self,
            event: &tracing::Event<'_>,
            _: tracing_subscriber::layer::Context<'_, S>,
        ) {
            struct Msg(bool);
            impl tracing::field::Visit for Msg {
                fn record_debug(
                    &mut self,
                    field: &tracing::field::Field,
                    value: &dyn std::fmt::Debug,
                ) {
                    if field.name() == "message" && format!("{value:?}") == "configuration reloaded"
                    {
                        self.0 = true;
                    }
                }
            }
            if event.metadata().level() == &tracing::Level::INFO {
                let mut msg = Msg(false);
                event.record(&mut msg);
                if msg.0 {
                    *self.0.lock().expect("lock") = Some(Instant::now());
                }
            }
        }
    }
    let subscriber = tracing_subscriber::registry()
        .with(tracing_subscriber::filter::LevelFilter::INFO)
        .with(Capture(slot));
    // The daemon's tasks run on worker threads: install globally for this child process.
    let _ = tracing::subscriber::set_global_default(subscriber);
    tracing::subscriber::set_default(tracing_subscriber::registry())
}

/// RSS over many runs: in-process runs first, then child runs; growth is measured after a
/// warm-up of a tenth of each.
async fn memory_soak(scale: Scale) -> Value {
    let (inproc_runs, child_runs) = scale.soak_runs;
    let recorder = Arc::new(Recorder::default());
    // 1000 jobs at 20 ms: 50,000 runs a second.
    let mut text = String::new();
    for i in 0..1000 {
        text.push_str(&format!(
            "[jobs.j{i}]\nevery = \"20ms\"\nhandler = \"measure\"\n"
        ));
    }
    let (_d, path) = jobs_file(&text);
    let handlers = recording_handlers(&recorder);
    let config = tickd::load(&path, &handlers).expect("config");
    let running = Running::start(&path, config, handlers);
    let wait_for = |n: u64| {
        let recorder = recorder.clone();
        async move {
            while recorder.fires.load(Ordering::Relaxed) < n {
                // Keep the sample vector from growing: this measures tickd, not the recorder.
                recorder.samples.lock().expect("lock").clear();
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    wait_for(inproc_runs / 10).await;
    let rss_warm = status_kb("VmRSS:");
    wait_for(inproc_runs).await;
    let rss_end = status_kb("VmRSS:");
    running.stop().await;

    // Child runs: 20 jobs at 100 ms each start `true`.
    let mut text = String::new();
    for i in 0..20 {
        text.push_str(&format!(
            "[jobs.c{i}]\nevery = \"100ms\"\ncommand = [\"true\"]\n[jobs.m{i}]\nevery = \"100ms\"\nhandler = \"measure\"\n"
        ));
    }
    let (_d2, path) = jobs_file(&text);
    recorder.fires.store(0, Ordering::Relaxed);
    let handlers = recording_handlers(&recorder);
    let config = tickd::load(&path, &handlers).expect("config");
    let running = Running::start(&path, config, handlers);
    // `measure` fires as often as the child jobs: use it as the child-run counter.
    wait_for(child_runs / 10).await;
    let rss_child_warm = status_kb("VmRSS:");
    wait_for(child_runs).await;
    let rss_child_end = status_kb("VmRSS:");
    running.stop().await;
    json!({
        "scenario": "memory-soak",
        "system": "tickd",
        "inproc_runs": inproc_runs,
        "child_runs": child_runs,
        "rss_inproc_warm_mb": rss_warm as f64 / 1024.0,
        "rss_inproc_end_mb": rss_end as f64 / 1024.0,
        "rss_inproc_growth_mb": (rss_end as f64 - rss_warm as f64) / 1024.0,
        "rss_child_warm_mb": rss_child_warm as f64 / 1024.0,
        "rss_child_end_mb": rss_child_end as f64 / 1024.0,
        "rss_child_growth_mb": (rss_child_end as f64 - rss_child_warm as f64) / 1024.0,
        "peak_rss_mb": status_kb("VmHWM:") as f64 / 1024.0,
    })
}

/// The status page (issue 19) next to 1000 aligned jobs at 5 Hz with the endpoint on a
/// loopback port: `scale.seconds` without fetching the page, then as long again with `GET /`
/// ten times a second. The result's p50/p99 are the jobs' lateness with the page fetched;
/// `without_page_*` the same without, `page_*` the page's response times (request sent to body
/// read), all in milliseconds.
async fn page_1000(scale: Scale) -> Value {
    let (jobs, period) = (1000, Duration::from_millis(200));
    let window = Duration::from_secs(scale.seconds);
    let port = free_port();
    let (_dir, path) = jobs_file(&served_jobs(
        port,
        jobs,
        "every = \"200ms\"\nalign = true\nhandler = \"measure\"\n",
    ));
    let expected = jobs * (window.as_nanos() / period.as_nanos()) as u64;
    let mut phases = Vec::new();
    let mut page_ns = Vec::new();
    let mut cpu = 0.0;
    for fetch in [false, true] {
        let recorder = Arc::new(Recorder::default());
        let handlers = recording_handlers(&recorder);
        let config = tickd::load(&path, &handlers).expect("valid config");
        let cpu0 = cpu_seconds();
        let running = Running::start(&path, config, handlers);
        let until = tokio::time::Instant::now() + window + period / 2;
        let fetcher = fetch.then(|| {
            tokio::spawn(async move {
                let client = reqwest::Client::new();
                let url = format!("http://127.0.0.1:{port}/");
                let mut tick = tokio::time::interval(Duration::from_millis(100));
                let mut times = Vec::new();
                while tick.tick().await < until {
                    let sent = Instant::now();
                    let Ok(answer) = client.get(&url).send().await else {
                        continue;
                    };
                    if answer.status().is_success() && answer.bytes().await.is_ok() {
                        times.push(sent.elapsed().as_nanos() as u64);
                    }
                }
                times
            })
        });
        tokio::time::sleep_until(until).await;
        if let Some(fetcher) = fetcher {
            page_ns = fetcher.await.expect("the fetcher");
        }
        running.stop().await;
        cpu = cpu_seconds() - cpu0;
        let mut samples = recorder.samples.lock().expect("lock").clone();
        samples.truncate(expected.min(samples.len() as u64) as usize);
        phases.push(samples);
    }
    let without = summary(
        "page-1000",
        "tickd",
        jobs,
        expected,
        &mut phases[0],
        f64::NAN,
    );
    let page = summary("page-1000", "page", 0, 0, &mut page_ns, f64::NAN);
    let mut result = summary("page-1000", "tickd", jobs, expected, &mut phases[1], cpu);
    result["page_fetches"] = page["observed"].clone();
    for (key, from, field) in [
        ("page_p50_ms", &page, "p50_ms"),
        ("page_p99_ms", &page, "p99_ms"),
        ("without_page_p50_ms", &without, "p50_ms"),
        ("without_page_p99_ms", &without, "p99_ms"),
    ] {
        result[key] = from[field].clone();
    }
    result
}

// ---------------------------------------------------------------------------------------------

fn print_table(results: &[Value]) {
    println!(
        "\n{:<22} {:<20} {:>6} {:>9} {:>9} {:>9} {:>9} {:>9} {:>8} {:>8} {:>10}",
        "scenario",
        "system",
        "jobs",
        "expected",
        "observed",
        "p50 ms",
        "p99 ms",
        "max ms",
        "cpu s",
        "rss MB",
        "µs/fire*"
    );
    let mut tickd_lateness: BTreeMap<String, (f64, f64)> = BTreeMap::new();
    for r in results {
        let f = |k: &str| r.get(k).and_then(Value::as_f64).unwrap_or(f64::NAN);
        let s = |k: &str| r.get(k).map(|v| v.to_string()).unwrap_or_default();
        println!(
            "{:<22} {:<20} {:>6} {:>9} {:>9} {:>9.3} {:>9.3} {:>9.3} {:>8.2} {:>8.1} {:>10.2}",
            s("scenario").trim_matches('"'),
            s("system").trim_matches('"'),
            s("jobs"),
            s("expected"),
            s("observed"),
            f("p50_ms"),
            f("p99_ms"),
            f("max_ms"),
            f("cpu_s"),
            f("peak_rss_mb"),
            f("steady_cpu_us_per_fire"),
        );
        if r["system"] == "tickd" {
            tickd_lateness.insert(s("scenario"), (f("p50_ms"), f("p99_ms")));
        }
    }
    println!("* CPU per fire in the steady state (from a quarter into the window), µs");
    println!("\nratios (tickd's lateness / the system's, same scenario, same run: below 1 is tickd ahead):");
    for r in results {
        // A variant of tickd read from histogram buckets has only bounds, not a ratio.
        if r["system"] != "tickd" && r.get("from_buckets").is_none() {
            let scenario = r["scenario"].to_string();
            if let (Some((p50, p99)), Some(other50), Some(other99)) = (
                tickd_lateness.get(&scenario),
                r["p50_ms"].as_f64(),
                r["p99_ms"].as_f64(),
            ) {
                println!(
                    "  {:<22} vs {:<20} p50 {:>6.2}x  p99 {:>6.2}x",
                    scenario.trim_matches('"'),
                    r["system"].as_str().unwrap_or(""),
                    p50 / other50,
                    p99 / other99
                );
            }
        }
    }
    for r in results {
        for key in [
            "cpu_s_per_10min",
            "load_ms",
            "startup_ms",
            "reload_ms",
            "rss_inproc_growth_mb",
            "rss_child_growth_mb",
            "page_p50_ms",
            "page_p99_ms",
            "without_page_p50_ms",
            "without_page_p99_ms",
            "fires_across_reload",
            "fires_across_reload_expected",
            "missed_across_reload",
            "skipped_across_reload",
            "grid_gaps_across_reload",
            "rss_mb",
            "baseline_rss_mb",
            "rss_per_job_kb",
            "rss_per_job_before_metrics_kb",
            "metrics_bytes",
        ] {
            if let Some(v) = r.get(key) {
                println!(
                    "  {} {} {}: {}",
                    r["scenario"].as_str().unwrap_or(""),
                    r["system"].as_str().unwrap_or(""),
                    key,
                    v
                );
            }
        }
    }
}
