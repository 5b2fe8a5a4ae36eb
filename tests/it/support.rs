//! Shared fixtures.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use tempfile::TempDir;
use tickd::{Clock, Control, DaemonOptions, Handlers, RunContext, Stopped};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// What a recording handler saw: one entry per event.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub job: String,
    pub what: &'static str,
    /// Milliseconds of (paused) monotonic time since the daemon started.
    pub at_ms: u128,
    pub scheduled: DateTime<Utc>,
}

/// A daemon running in process on paused time, with recording handlers:
/// - `record`: records "run" and returns;
/// - `slow`: records "run", works for 250 ms, records "done"; returns early (recording
///   "cancelled") when its token is cancelled;
/// - `stubborn`: records "run" and works for 10 s, ignoring cancellation;
/// - `fails`: records "run" and returns an error;
/// - `panics`: records "run", then panics.
pub struct InProcess {
    /// Holds the config file for as long as the daemon runs.
    _dir: TempDir,
    pub path: PathBuf,
    pub events: Arc<Mutex<Vec<Event>>>,
    pub clock: Clock,
    pub start: Instant,
    controls: mpsc::Sender<Control>,
    daemon: JoinHandle<Result<Stopped, tickd::DaemonError>>,
}

/// When (ms since start) `job` recorded `what` among `events`.
pub fn times_in(events: &[Event], job: &str, what: &str) -> Vec<u128> {
    events
        .iter()
        .filter(|e| e.job == job && e.what == what)
        .map(|e| e.at_ms)
        .collect()
}

/// Writes a config file as one that was written a while ago: `load` reads a file only once it
/// has been still for `tickd::config::SETTLE`, and these tests need not wait for that (the
/// settling itself has its own tests).
pub fn write_settled(path: &std::path::Path, text: &str) {
    std::fs::write(path, text).expect("write config");
    let past = std::time::SystemTime::now() - Duration::from_secs(2);
    std::fs::File::options()
        .write(true)
        .open(path)
        .and_then(|file| file.set_modified(past))
        .expect("backdate config");
}

pub fn wall(y: i32, mo: u32, d: u32, h: u32, mi: u32, s: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(y, mo, d, h, mi, s)
        .single()
        .expect("valid time")
}

fn recording_handlers(events: &Arc<Mutex<Vec<Event>>>, start: Instant) -> Handlers {
    let mut handlers = Handlers::with_builtins();
    let push = {
        let events = events.clone();
        move |ctx: &RunContext, what: &'static str| {
            events.lock().expect("lock").push(Event {
                job: ctx.job.to_string(),
                what,
                at_ms: Instant::now().duration_since(start).as_millis(),
                scheduled: ctx.scheduled,
            });
        }
    };
    let p = push.clone();
    handlers.register("record", move |ctx: RunContext| {
        p(&ctx, "run");
        async { Ok(()) }
    });
    let p = push.clone();
    handlers.register("slow", move |ctx: RunContext| {
        p(&ctx, "run");
        let p = p.clone();
        async move {
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(250)) => { p(&ctx, "done"); Ok(()) }
                _ = ctx.cancel.cancelled() => { p(&ctx, "cancelled"); Err("cancelled".into()) }
            }
        }
    });
    let p = push.clone();
    handlers.register("stubborn", move |ctx: RunContext| {
        p(&ctx, "run");
        let p = p.clone();
        async move {
            tokio::time::sleep(Duration::from_secs(10)).await;
            p(&ctx, "done");
            Ok(())
        }
    });
    let p = push.clone();
    handlers.register("fails", move |ctx: RunContext| {
        p(&ctx, "run");
        async { Err("always fails".into()) }
    });
    let p = push;
    handlers.register("panics", move |ctx: RunContext| {
        p(&ctx, "run");
        async { panic!("handler bug") }
    });
    handlers
}

impl InProcess {
    /// Starts the daemon on `config` with the wall clock at `wall_start`. Call from a
    /// `#[tokio::test(start_paused = true)]`.
    pub fn start(config: &str, wall_start: DateTime<Utc>) -> Self {
        Self::start_in(tempfile::tempdir().expect("tempdir"), config, wall_start)
    }

    /// Like [`InProcess::start`], in a given directory (to share a state file between daemons).
    pub fn start_in(dir: TempDir, config: &str, wall_start: DateTime<Utc>) -> Self {
        Self::start_with(dir, config, wall_start, None)
    }

    /// Like [`InProcess::start_in`], telling `notifier` what a service manager is told.
    pub fn start_with(
        dir: TempDir,
        config: &str,
        wall_start: DateTime<Utc>,
        notifier: Option<tickd::notify::Notifier>,
    ) -> Self {
        let path = dir.path().join("jobs.toml");
        write_settled(&path, config);
        let events = Arc::new(Mutex::new(Vec::new()));
        let start = Instant::now();
        let handlers = recording_handlers(&events, start);
        let config = tickd::load(&path, &handlers).expect("valid config");
        let clock = Clock::manual(wall_start);
        let (controls, rx) = mpsc::channel(16);
        let options = DaemonOptions {
            config_path: path.clone(),
            handlers,
            clock: clock.clone(),
            group_keeper: None,
            notifier,
            subreaper: false,
        };
        let daemon = tokio::spawn(tickd::run(config, options, rx));
        InProcess {
            _dir: dir,
            path,
            events,
            clock,
            start,
            controls,
            daemon,
        }
    }

    /// Lets `ms` of paused time pass (timers fire in order on the way).
    pub async fn run_for(&self, ms: u64) {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }

    pub async fn send(&self, control: Control) {
        self.controls
            .send(control)
            .await
            .expect("daemon is running");
    }

    /// Rewrites the config file.
    pub fn rewrite(&self, config: &str) {
        write_settled(&self.path, config);
    }

    pub fn events(&self) -> Vec<Event> {
        self.events.lock().expect("lock").clone()
    }

    /// When (ms since start) `job` recorded `what`.
    pub fn times(&self, job: &str, what: &str) -> Vec<u128> {
        times_in(&self.events(), job, what)
    }

    /// The scheduled times `job`'s runs were given.
    pub fn scheduled(&self, job: &str) -> Vec<DateTime<Utc>> {
        self.events()
            .into_iter()
            .filter(|e| e.job == job && e.what == "run")
            .map(|e| e.scheduled)
            .collect()
    }

    /// Waits for the daemon to stop on its own.
    pub async fn stopped(self) -> Stopped {
        self.daemon
            .await
            .expect("daemon task")
            .expect("daemon result")
    }

    /// Stops the daemon if it still runs (it may have recycled itself) and returns how it ended.
    pub async fn stop_if_running(self) -> Stopped {
        // A send fails when the daemon already returned and dropped its controls.
        let _ = self.controls.send(Control::Shutdown).await;
        self.daemon
            .await
            .expect("daemon task")
            .expect("daemon result")
    }

    /// Sends Shutdown and returns how the daemon stopped.
    pub async fn shut_down(self) -> (Stopped, Vec<Event>) {
        self.shut_down_keeping_dir().await.0
    }

    /// Like [`InProcess::shut_down`], handing back the directory.
    pub async fn shut_down_keeping_dir(self) -> ((Stopped, Vec<Event>), TempDir) {
        self.send(Control::Shutdown).await;
        let stopped = self
            .daemon
            .await
            .expect("daemon task")
            .expect("daemon result");
        let events = self.events.lock().expect("lock").clone();
        ((stopped, events), self._dir)
    }
}
