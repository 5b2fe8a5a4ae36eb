//! Scheduling semantics, on paused tokio time and a manual wall clock: every instant below is
//! exact, so these tests assert exact milliseconds without being timing-sensitive.

use std::time::Duration;

use chrono::Duration as ChronoDuration;
use tickd::{Control, Stopped};

use crate::support::{t0, times_in, wall, InProcess};

#[tokio::test(start_paused = true)]
async fn every_fires_on_a_drift_free_grid() {
    // The handler's own duration (slow: 250 ms) must not push the grid.
    let d = InProcess::start(
        "[jobs.tick]\nevery = \"200ms\"\nhandler = \"record\"\n[jobs.slow]\nevery = \"300ms\"\nhandler = \"slow\"\n",
        t0(),
    );
    d.run_for(10_050).await;
    let expected: Vec<u128> = (1..=50).map(|k| k * 200).collect();
    assert_eq!(d.times("tick", "run"), expected);
    let expected: Vec<u128> = (1..=33).map(|k| k * 300).collect();
    assert_eq!(d.times("slow", "run"), expected);
    // The scheduled wall time is the grid point's.
    assert_eq!(
        d.scheduled("tick")[9],
        t0() + ChronoDuration::milliseconds(2000)
    );
    let (stopped, _) = d.shut_down().await;
    assert_eq!(stopped, Stopped::Drained);
}

#[tokio::test(start_paused = true)]
async fn a_stall_skips_missed_fires_without_a_burst() {
    let d = InProcess::start(
        "[jobs.tick]\nevery = \"200ms\"\nhandler = \"record\"\n",
        t0(),
    );
    d.run_for(450).await;
    assert_eq!(d.times("tick", "run"), vec![200, 400]);
    // The whole runtime stalls for 2 s: the fires due at 600..2400 are missed.
    tokio::time::advance(Duration::from_millis(2000)).await;
    d.run_for(500).await;
    let times = d.times("tick", "run");
    // The missed fires are dropped (on_missed = "skip", the default); next on the grid: 2600.
    assert_eq!(times, vec![200, 400, 2600, 2800], "{times:?}");
    d.shut_down().await;
}

#[tokio::test(start_paused = true)]
async fn a_stalled_calendar_fire_is_late_until_the_next_one_is_due_then_missed() {
    let d = InProcess::start(
        "[daemon]\nstate_file = \"state\"\n\
         [jobs.skip]\ncron = \"* * * * * *\"\nhandler = \"record\"\n\
         [jobs.once]\ncron = \"* * * * * *\"\nhandler = \"record\"\non_missed = \"once\"\n",
        t0(),
    );
    d.run_for(1_500).await;
    // A 700 ms stall: the fire due at 2000 runs 200 ms late, as itself.
    tokio::time::advance(Duration::from_millis(700)).await;
    d.run_for(300).await;
    // A 3 s stall: the fires due at 3000, 4000 and 5000 pass; `skip` waits for 6000, `once`
    // runs one catch-up at once.
    tokio::time::advance(Duration::from_millis(3_000)).await;
    d.run_for(600).await;
    assert_eq!(d.times("skip", "run"), vec![1000, 2200, 6000]);
    assert_eq!(d.times("once", "run"), vec![1000, 2200, 5500, 6000]);
    d.shut_down().await;
}

#[tokio::test(start_paused = true)]
async fn a_stall_with_on_missed_once_runs_a_single_catch_up() {
    let d = InProcess::start(
        "[daemon]\nstate_file = \"state\"\n[jobs.tick]\nevery = \"200ms\"\nhandler = \"record\"\non_missed = \"once\"\n",
        t0(),
    );
    d.run_for(450).await;
    tokio::time::advance(Duration::from_millis(2000)).await;
    d.run_for(500).await;
    // One catch-up for the ten missed fires, at once, then back on the grid.
    assert_eq!(d.times("tick", "run"), vec![200, 400, 2450, 2600, 2800]);
    d.shut_down().await;
}

#[tokio::test(start_paused = true)]
async fn overlap_skip_drops_fires_while_the_run_goes_on() {
    // Runs take 250 ms, fires come every 100 ms.
    let d = InProcess::start("[jobs.j]\nevery = \"100ms\"\nhandler = \"slow\"\n", t0());
    d.run_for(1_050).await;
    assert_eq!(d.times("j", "run"), vec![100, 400, 700, 1000]);
    d.shut_down().await;
}

#[tokio::test(start_paused = true)]
async fn overlap_queue_keeps_one_pending_run() {
    let d = InProcess::start(
        "[jobs.j]\nevery = \"120ms\"\nhandler = \"slow\"\noverlap = \"queue\"\n",
        t0(),
    );
    d.run_for(900).await;
    // 120 runs to 370; 240 is queued, 360 dropped (one pending at most); the queued run starts at
    // 370 with its own scheduled time; and so on.
    assert_eq!(d.times("j", "run"), vec![120, 370, 620, 870]);
    let scheduled: Vec<i64> = d
        .scheduled("j")
        .iter()
        .map(|t| (*t - t0()).num_milliseconds())
        .collect();
    assert_eq!(scheduled, vec![120, 240, 480, 720]);
    d.shut_down().await;
}

#[tokio::test(start_paused = true)]
async fn overlap_allow_runs_concurrently_up_to_max_concurrent() {
    let d = InProcess::start(
        "[jobs.j]\nevery = \"100ms\"\nhandler = \"slow\"\noverlap = \"allow\"\nmax_concurrent = 2\n[jobs.free]\nevery = \"100ms\"\nhandler = \"slow\"\noverlap = \"allow\"\n",
        t0(),
    );
    d.run_for(850).await;
    assert_eq!(d.times("j", "run"), vec![100, 200, 400, 500, 700, 800]);
    assert_eq!(
        d.times("free", "run"),
        vec![100, 200, 300, 400, 500, 600, 700, 800]
    );
    d.shut_down().await;
}

#[tokio::test(start_paused = true)]
async fn overlap_replace_stops_the_running_one_first() {
    let d = InProcess::start(
        "[jobs.polite]\nevery = \"100ms\"\nhandler = \"slow\"\noverlap = \"replace\"\n\
         [jobs.stubborn]\nevery = \"1s\"\nhandler = \"stubborn\"\noverlap = \"replace\"\nkill_grace = \"300ms\"\n",
        t0(),
    );
    d.run_for(2_450).await;
    // A run that honours its token stops at once and the new one starts on time.
    let polite = d.times("polite", "run");
    assert_eq!(&polite[..4], &[100, 200, 300, 400]);
    assert_eq!(d.times("polite", "cancelled")[..3], [200, 300, 400]);
    // One that ignores it is aborted after kill_grace; the new run starts then.
    assert_eq!(d.times("stubborn", "run"), vec![1000, 2300]);
    assert!(d.times("stubborn", "done").is_empty());
    d.shut_down().await;
}

#[tokio::test(start_paused = true)]
async fn cron_with_seconds_fires_on_the_wall_clock() {
    // The wall clock starts 3 s past the minute.
    let d = InProcess::start(
        "[jobs.c]\ncron = \"*/10 * * * * *\"\nhandler = \"record\"\n",
        wall(2026, 1, 1, 0, 0, 3),
    );
    d.run_for(30_000).await;
    assert_eq!(d.times("c", "run"), vec![7_000, 17_000, 27_000]);
    assert_eq!(
        d.scheduled("c"),
        vec![
            wall(2026, 1, 1, 0, 0, 10),
            wall(2026, 1, 1, 0, 0, 20),
            wall(2026, 1, 1, 0, 0, 30)
        ]
    );
    d.shut_down().await;
}

#[tokio::test(start_paused = true)]
async fn dst_skipped_and_repeated_hours_in_europe_berlin() {
    // Spring forward on 2026-03-29 at 02:00 CET; fall back on 2026-10-25 at 03:00 CEST.
    let d = InProcess::start(
        "[daemon]\ntimezone = \"Europe/Berlin\"\n\
         [jobs.fixed]\ncron = \"30 2 * * *\"\nhandler = \"record\"\n\
         [jobs.hourly]\ncron = \"30 * * * *\"\nhandler = \"record\"\n",
        wall(2026, 3, 28, 23, 50, 0),
    );
    d.run_for(26 * 3600 * 1000).await;
    // 02:30 does not exist on the 29th: the fixed job fires once, at 03:00 CEST (01:00 UTC).
    assert_eq!(
        d.scheduled("fixed"),
        vec![wall(2026, 3, 29, 1, 0, 0), wall(2026, 3, 30, 0, 30, 0)]
    );
    // The hourly job has no 02:30 that day: 00:30 and 01:30 CET, then 03:30 CEST.
    assert_eq!(
        d.scheduled("hourly")[..3],
        [
            wall(2026, 3, 29, 0, 30, 0),
            wall(2026, 3, 29, 1, 30, 0),
            wall(2026, 3, 29, 2, 30, 0)
        ]
    );
    d.shut_down().await;

    let d = InProcess::start(
        "[daemon]\ntimezone = \"Europe/Berlin\"\n\
         [jobs.fixed]\ncron = \"30 2 * * *\"\nhandler = \"record\"\n\
         [jobs.hourly]\ncron = \"30 * * * *\"\nhandler = \"record\"\n",
        wall(2026, 10, 24, 23, 50, 0),
    );
    d.run_for(4 * 3600 * 1000).await;
    // 02:30 happens twice: the fixed job fires once, the hourly job at both.
    assert_eq!(d.scheduled("fixed"), vec![wall(2026, 10, 25, 0, 30, 0)]);
    assert_eq!(
        d.scheduled("hourly"),
        vec![
            wall(2026, 10, 25, 0, 30, 0),
            wall(2026, 10, 25, 1, 30, 0),
            wall(2026, 10, 25, 2, 30, 0),
            wall(2026, 10, 25, 3, 30, 0)
        ]
    );
    d.shut_down().await;
}

#[tokio::test(start_paused = true)]
async fn a_wall_clock_step_recomputes_calendar_fires_but_not_periods() {
    let d = InProcess::start(
        "[jobs.c]\ncron = \"0 * * * * *\"\nhandler = \"record\"\n[jobs.p]\nevery = \"10s\"\nhandler = \"record\"\n",
        wall(2026, 1, 1, 0, 0, 30),
    );
    d.run_for(31_000).await; // fires at 00:01:00, 30 s in
    assert_eq!(d.times("c", "run"), vec![30_000]);
    // Step the wall clock back 45 s (from 00:01:01 to 00:00:16): the next fire is recomputed
    // from the new time, 00:01:00 again, 44 s away; the old deadline (00:02:00) is dropped.
    d.clock.step_wall(-ChronoDuration::seconds(45));
    d.run_for(50_000).await; // to 81 s
    assert_eq!(d.times("c", "run"), vec![30_000, 75_000]);
    // Step forward 1 h 20 s (from 00:01:06 to 01:01:26): one fire at the next minute of the new
    // time (01:02:00, 34 s away), no catch-up burst for the hour skipped.
    d.clock.step_wall(ChronoDuration::seconds(3620));
    d.run_for(44_000).await; // to 125 s
    assert_eq!(d.times("c", "run"), vec![30_000, 75_000, 115_000]);
    assert_eq!(d.scheduled("c")[2], wall(2026, 1, 1, 1, 2, 0));
    // The period grid never moved.
    let p = d.times("p", "run");
    assert_eq!(p, (1..=12).map(|k| k * 10_000).collect::<Vec<_>>());
    d.shut_down().await;
}

#[tokio::test(start_paused = true)]
async fn a_panicking_handler_is_a_failed_run_and_the_job_goes_on() {
    let d = InProcess::start("[jobs.p]\nevery = \"1s\"\nhandler = \"panics\"\n", t0());
    d.run_for(3_500).await;
    assert_eq!(d.times("p", "run"), vec![1000, 2000, 3000]);
    let (stopped, _) = d.shut_down().await;
    assert_eq!(stopped, Stopped::Drained);
}

#[tokio::test(start_paused = true)]
async fn shutdown_waits_for_runs_in_flight() {
    let d = InProcess::start(
        "[daemon]\nshutdown_timeout = \"1s\"\n[jobs.s]\nevery = \"1s\"\nhandler = \"slow\"\n",
        t0(),
    );
    d.run_for(1_100).await; // the run started at 1000 and goes on until 1250
    let start = d.start;
    let (stopped, events) = d.shut_down().await;
    assert_eq!(stopped, Stopped::Drained);
    let done: Vec<_> = events.iter().filter(|e| e.what == "done").collect();
    assert_eq!(done.len(), 1);
    assert_eq!(done[0].at_ms, 1250);
    // Firing stopped at once: no run after the shutdown request, and the daemon returned as
    // soon as the run finished.
    assert_eq!(events.iter().filter(|e| e.what == "run").count(), 1);
    assert_eq!(start.elapsed(), Duration::from_millis(1250));
}

#[tokio::test(start_paused = true)]
async fn shutdown_drains_runs_in_flight_under_every_overlap_policy() {
    for overlap in ["skip", "queue", "allow", "replace"] {
        // A 250 ms run every 100 ms: runs overlap, so each policy has something to decide.
        let d = InProcess::start(
            &format!(
                "[daemon]\nshutdown_timeout = \"10s\"\n\
                 [jobs.s]\nevery = \"100ms\"\nhandler = \"slow\"\noverlap = \"{overlap}\"\n"
            ),
            t0(),
        );
        d.run_for(1_060).await;
        let start = d.start;
        let (stopped, events) = d.shut_down().await;
        assert_eq!(stopped, Stopped::Drained, "{overlap}");
        let at = |what| times_in(&events, "s", what);
        let (runs, done, cancelled) = (at("run"), at("done"), at("cancelled"));
        // Nothing started after the stop request (a queued run is dropped) ...
        assert!(runs.iter().all(|t| *t <= 1_060), "{overlap}: {runs:?}");
        // ... every run that started ended, none was abandoned ...
        assert_eq!(
            runs.len(),
            done.len() + cancelled.len(),
            "{overlap}: {events:?}"
        );
        // ... at least one was in flight and waited for, and the daemon returned as soon as the
        // last one ended.
        let last = *done.iter().max().expect("runs ended");
        assert!(last > 1_060, "{overlap}: {done:?}");
        assert_eq!(
            start.elapsed(),
            Duration::from_millis(last as u64),
            "{overlap}"
        );
        // Only `replace` stops runs, and only by starting their successor.
        assert_eq!(
            cancelled.is_empty(),
            overlap != "replace",
            "{overlap}: {cancelled:?}"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn shutdown_stops_runs_after_the_drain_timeout() {
    let d = InProcess::start(
        "[daemon]\nshutdown_timeout = \"1s\"\n[jobs.s]\nevery = \"1s\"\nhandler = \"stubborn\"\nkill_grace = \"500ms\"\n",
        t0(),
    );
    d.run_for(1_100).await;
    let start = d.start;
    let (stopped, events) = d.shut_down().await;
    assert_eq!(stopped, Stopped::RunsStopped);
    assert!(events.iter().all(|e| e.what != "done"));
    // 1100 + drain timeout 1000 + kill grace 500.
    assert_eq!(start.elapsed(), Duration::from_millis(2600));
}

#[tokio::test(start_paused = true)]
async fn a_second_stop_request_skips_the_drain_wait() {
    let d = InProcess::start(
        "[daemon]\nshutdown_timeout = \"1h\"\n[jobs.s]\nevery = \"1s\"\nhandler = \"slow\"\n",
        t0(),
    );
    d.run_for(1_100).await;
    d.send(Control::Shutdown).await;
    let (stopped, events) = d.shut_down().await;
    assert_eq!(stopped, Stopped::RunsStopped);
    assert!(events.iter().any(|e| e.what == "cancelled"));
}

#[tokio::test(start_paused = true)]
async fn reload_with_a_broken_file_keeps_the_old_jobs() {
    let d = InProcess::start("[jobs.a]\nevery = \"1s\"\nhandler = \"record\"\n", t0());
    d.run_for(2_500).await;
    d.rewrite("[jobs.a]\nevery = \"1s\"\nhandler = \"record\"\nbogus = 1\n");
    d.send(Control::Reload).await;
    d.rewrite("[jobs.a]\nevery = \"1s\"\n"); // and one without an action
    d.send(Control::Reload).await;
    d.run_for(3_000).await;
    assert_eq!(d.times("a", "run"), vec![1000, 2000, 3000, 4000, 5000]);
    d.shut_down().await;
}

/// A truncated file is a valid config with no jobs: a SIGHUP while an editor or `>` was writing
/// it stopped every job. Such a reload is refused unless the file keeps an empty `[jobs]`.
#[tokio::test(start_paused = true)]
async fn a_reload_to_a_file_with_no_jobs_is_refused_unless_it_says_so() {
    let d = InProcess::start("[jobs.a]\nevery = \"1s\"\nhandler = \"record\"\n", t0());
    d.run_for(1_500).await;
    for half_written in ["", "[daemon]\n", "# jobs below\n"] {
        d.rewrite(half_written);
        d.send(Control::Reload).await;
        d.run_for(1_000).await;
    }
    assert_eq!(d.times("a", "run"), vec![1000, 2000, 3000, 4000]);
    d.rewrite("[jobs]\n");
    d.send(Control::Reload).await;
    d.run_for(3_000).await;
    assert_eq!(d.times("a", "run"), vec![1000, 2000, 3000, 4000]);
    d.shut_down().await;
}

#[tokio::test(start_paused = true)]
async fn reload_applies_added_removed_and_changed_jobs() {
    let d = InProcess::start(
        "[jobs.keep]\nevery = \"1s\"\nhandler = \"record\"\n\
         [jobs.gone]\nevery = \"1s\"\nhandler = \"slow\"\n\
         [jobs.retimed]\nevery = \"1s\"\nhandler = \"record\"\n",
        t0(),
    );
    d.run_for(2_100).await; // gone's run from 2000 is in flight until 2250
    d.rewrite(
        "[jobs.keep]\nevery = \"1s\"\nhandler = \"record\"\n\
         [jobs.retimed]\nevery = \"700ms\"\nhandler = \"record\"\n\
         [jobs.new]\nevery = \"500ms\"\nhandler = \"record\"\n",
    );
    d.send(Control::Reload).await;
    d.run_for(1_950).await;
    // Unchanged: keeps its grid.
    assert_eq!(d.times("keep", "run"), vec![1000, 2000, 3000, 4000]);
    // Removed: stops firing, its run in flight finishes.
    assert_eq!(d.times("gone", "run"), vec![1000, 2000]);
    assert_eq!(d.times("gone", "done"), vec![1250, 2250]);
    // Changed schedule: a new grid from the reload.
    assert_eq!(d.times("retimed", "run"), vec![1000, 2000, 2800, 3500]);
    // Added: starts from the reload.
    assert_eq!(d.times("new", "run"), vec![2600, 3100, 3600]);
    d.shut_down().await;
}

#[tokio::test(start_paused = true)]
async fn jitter_delays_each_run_within_its_range_without_moving_the_grid() {
    let d = InProcess::start(
        "[jobs.j]\nevery = \"1s\"\njitter = \"300ms\"\nhandler = \"record\"\n",
        t0(),
    );
    d.run_for(20_500).await;
    let times = d.times("j", "run");
    assert_eq!(times.len(), 20, "{times:?}");
    for (k, at) in times.iter().enumerate() {
        let grid = (k as u128 + 1) * 1000;
        // Within the range; tokio's timer rounds a deadline up to the next millisecond.
        assert!(
            (grid..=grid + 300).contains(at),
            "fire {k} at {at}: {times:?}"
        );
    }
    // Random: not all the same delay.
    let delays: std::collections::BTreeSet<u128> = times
        .iter()
        .enumerate()
        .map(|(k, at)| at - (k as u128 + 1) * 1000)
        .collect();
    assert!(delays.len() > 5, "{delays:?}");
    d.shut_down().await;
}

#[tokio::test(start_paused = true)]
async fn spread_gives_a_stable_delay_per_job_and_machine() {
    let d = InProcess::start(
        "[jobs.s]\nevery = \"1s\"\njitter = \"500ms\"\nspread = true\nhandler = \"record\"\n",
        t0(),
    );
    d.run_for(5_600).await;
    let delay =
        tickd::schedule::stable_delay(&tickd::job::machine_id(), "s", Duration::from_millis(500))
            .as_micros()
            .div_ceil(1000); // tokio's timer rounds a deadline up to the next millisecond
    let expected: Vec<u128> = (1..=5).map(|k| k * 1000 + delay).collect();
    assert_eq!(d.times("s", "run"), expected);
    d.shut_down().await;
}

#[tokio::test(start_paused = true)]
async fn run_on_start_runs_once_at_start_and_when_a_reload_adds_the_job() {
    let d = InProcess::start(
        "[jobs.a]\nevery = \"1s\"\nhandler = \"record\"\nrun_on_start = true\n\
         [jobs.slow]\nevery = \"100ms\"\nhandler = \"slow\"\nrun_on_start = true\n",
        t0(),
    );
    d.run_for(2_500).await;
    assert_eq!(d.times("a", "run"), vec![0, 1000, 2000]);
    // Subject to the overlap policy: the start-up run blocks the fires at 100 and 200.
    assert_eq!(d.times("slow", "run")[..2], [0, 300]);
    d.rewrite(
        "[jobs.a]\nevery = \"1s\"\nhandler = \"record\"\nrun_on_start = true\n\
         [jobs.b]\nevery = \"1s\"\nhandler = \"record\"\nrun_on_start = true\n",
    );
    d.send(Control::Reload).await;
    d.run_for(1_200).await;
    // `a` was unchanged: no extra run; `b` was added: one right away.
    assert_eq!(d.times("a", "run"), vec![0, 1000, 2000, 3000]);
    assert_eq!(d.times("b", "run"), vec![2500, 3500]);
    d.shut_down().await;
}

#[tokio::test(start_paused = true)]
async fn fixed_delay_counts_from_the_end_of_each_run() {
    let d = InProcess::start(
        "[jobs.d]\nevery = \"1s\"\nmode = \"fixed-delay\"\nhandler = \"slow\"\n",
        t0(),
    );
    d.run_for(4_000).await;
    // Runs take 250 ms: 1000-1250, then 1 s after the end, and so on.
    assert_eq!(d.times("d", "run"), vec![1000, 2250, 3500]);
    d.shut_down().await;
}

#[tokio::test(start_paused = true)]
async fn align_puts_the_grid_on_multiples_of_the_period() {
    let d = InProcess::start(
        "[jobs.a]\nevery = \"10s\"\nalign = true\nhandler = \"record\"\n",
        wall(2026, 1, 1, 0, 0, 3) + ChronoDuration::milliseconds(250),
    );
    d.run_for(27_000).await;
    assert_eq!(d.times("a", "run"), vec![6_750, 16_750, 26_750]);
    assert_eq!(
        d.scheduled("a"),
        vec![
            wall(2026, 1, 1, 0, 0, 10),
            wall(2026, 1, 1, 0, 0, 20),
            wall(2026, 1, 1, 0, 0, 30)
        ]
    );
    d.shut_down().await;
}

#[tokio::test(start_paused = true)]
async fn max_uptime_drains_and_recycles() {
    let d = InProcess::start(
        "[daemon]\nmax_uptime = \"5100ms\"\n[jobs.s]\nevery = \"1s\"\nhandler = \"slow\"\n",
        t0(),
    );
    let start = d.start;
    let events = d.events.clone();
    assert_eq!(
        d.stopped().await,
        Stopped::Recycled {
            runs_stopped: false
        }
    );
    // Recycled at 5.1 s, once the run started at 5 s had finished (drained, not killed).
    assert_eq!(start.elapsed(), Duration::from_millis(5250));
    let done = events
        .lock()
        .expect("lock")
        .iter()
        .filter(|e| e.what == "done")
        .count();
    assert_eq!(done, 5);
}

const CRON_ONCE: &str = "[daemon]\nstate_file = \"tickd.state\"\n\
    [jobs.m]\ncron = \"0 * * * * *\"\nhandler = \"record\"\non_missed = \"once\"\n\
    [jobs.plain]\ncron = \"0 * * * * *\"\nhandler = \"record\"\n";

#[tokio::test(start_paused = true)]
async fn on_missed_once_catches_up_once_after_downtime() {
    // First life: fires at 00:01:00, recorded in the state file.
    let d = InProcess::start(CRON_ONCE, wall(2026, 1, 1, 0, 0, 30));
    d.run_for(31_000).await;
    let ((_, events), dir) = d.shut_down_keeping_dir().await;
    assert_eq!(events.len(), 2);
    assert!(dir.path().join("tickd.state").exists());

    // Down for four minutes: one catch-up for the four missed fires, right away, standing for the
    // latest one (00:05:00); then the normal 00:06:00. The job without on_missed does not catch up.
    let d = InProcess::start_in(dir, CRON_ONCE, wall(2026, 1, 1, 0, 5, 10));
    d.run_for(51_000).await;
    assert_eq!(d.times("m", "run"), vec![0, 50_000]);
    assert_eq!(
        d.scheduled("m"),
        vec![wall(2026, 1, 1, 0, 5, 0), wall(2026, 1, 1, 0, 6, 0)]
    );
    assert_eq!(d.times("plain", "run"), vec![50_000]);
    let ((_, _), dir) = d.shut_down_keeping_dir().await;

    // Restarted before the next fire was due: nothing was missed, no catch-up.
    let d = InProcess::start_in(dir, CRON_ONCE, wall(2026, 1, 1, 0, 6, 30));
    d.run_for(1_000).await;
    assert!(d.times("m", "run").is_empty());
    let ((_, _), dir) = d.shut_down_keeping_dir().await;

    // A corrupt state file is a warning: the daemon runs, without a catch-up.
    std::fs::write(dir.path().join("tickd.state"), "\u{0}garbage[[").expect("corrupt");
    let d = InProcess::start_in(dir, CRON_ONCE, wall(2026, 1, 1, 0, 9, 30));
    d.run_for(31_000).await;
    assert_eq!(d.times("m", "run"), vec![30_000]);
    d.shut_down().await;
}

#[tokio::test(start_paused = true)]
async fn on_missed_once_catches_up_once_after_a_wall_clock_jump() {
    let d = InProcess::start(CRON_ONCE, wall(2026, 1, 1, 0, 0, 30));
    d.run_for(31_000).await; // both fire at 00:01:00
    d.clock.step_wall(ChronoDuration::hours(3)); // to 03:01:01: 180 fires skipped
    d.run_for(100).await;
    // `m`: one catch-up at the jump; `plain`: none.
    assert_eq!(d.times("m", "run"), vec![30_000, 31_000]);
    assert_eq!(d.times("plain", "run"), vec![30_000]);
    d.run_for(60_000).await;
    // Then both on the minute of the new time: 03:02:00, 59 s after the jump.
    assert_eq!(d.times("m", "run"), vec![30_000, 31_000, 90_000]);
    assert_eq!(d.times("plain", "run"), vec![30_000, 90_000]);
    d.shut_down().await;
}

#[tokio::test(start_paused = true)]
async fn failed_runs_are_retried_with_backoff_before_the_next_fire() {
    let d = InProcess::start(
        "[jobs.r]\nevery = \"10s\"\nhandler = \"fails\"\nretry = { attempts = 3, backoff = \"1s\", max_backoff = \"3s\" }\n\
         [jobs.tight]\nevery = \"2s\"\nhandler = \"fails\"\nretry = { attempts = 3, backoff = \"1s\" }\n\
         [jobs.ok]\nevery = \"10s\"\nhandler = \"record\"\nretry = { attempts = 3 }\n",
        t0(),
    );
    d.run_for(19_500).await;
    // 10 s: fails; retries after 1 s, 2 s, then 3 s (capped): 11, 13, 16; then the next fire.
    assert_eq!(d.times("r", "run"), vec![10_000, 11_000, 13_000, 16_000]);
    // A retry that would reach the next fire is dropped: 2 s fails, 3 s retry fails, the 2nd
    // retry (5 s) would come after the fire at 4 s.
    assert_eq!(d.times("tight", "run")[..4], [2_000, 3_000, 4_000, 5_000]);
    // Successful runs are not retried.
    assert_eq!(d.times("ok", "run"), vec![10_000]);
    d.shut_down().await;
}

#[tokio::test(start_paused = true)]
async fn max_runs_recycles_the_daemon() {
    let d = InProcess::start(
        "[daemon]\nmax_runs = 5\n[jobs.s]\nevery = \"1s\"\nhandler = \"record\"\n",
        t0(),
    );
    let start = d.start;
    let events = d.events.clone();
    assert_eq!(
        d.stopped().await,
        Stopped::Recycled {
            runs_stopped: false
        }
    );
    assert_eq!(start.elapsed(), Duration::from_secs(5));
    assert_eq!(events.lock().expect("lock").len(), 5);
}

#[tokio::test(start_paused = true)]
async fn daemon_max_rss_recycles_the_daemon() {
    // Any process is bigger than 1 KB: the first check, a second in, recycles.
    let d = InProcess::start(
        "[daemon]\nmax_rss = \"1KB\"\n[jobs.s]\nevery = \"10s\"\nhandler = \"record\"\n",
        t0(),
    );
    let start = d.start;
    assert_eq!(
        d.stopped().await,
        Stopped::Recycled {
            runs_stopped: false
        }
    );
    assert_eq!(start.elapsed(), Duration::from_secs(1));
}
