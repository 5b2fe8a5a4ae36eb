//! SIGHUP to the real binary: a broken file keeps the old jobs, a good one applies, and a storm of
//! reloads ends consistent without a leak.

use std::fs;
use std::time::Duration;

use nix::sys::signal::Signal;

use crate::support::{eventually, Daemon};

#[test]
fn sighup_with_a_broken_file_keeps_the_old_jobs_and_a_good_one_applies() {
    let d = Daemon::start("[jobs.a]\nevery = \"100ms\"\nhandler = \"log\"\n");
    d.wait_log("tick job=a");
    d.rewrite("[jobs.a]\nevery = \"100ms\"\nhandler = \"log\"\n[jobs.b]\nevery = \"zero\"\nhandler = \"log\"\n");
    d.signal(Signal::SIGHUP);
    let log = d.wait_log("reload rejected");
    assert!(
        log.contains("jobs.toml:5:9: job \"b\", key \"every\": invalid duration"),
        "{log}"
    );
    // Still firing, from the old config.
    let before = log.matches("tick job=a").count();
    d.wait_log_n("tick job=a", before + 3);

    d.rewrite("[jobs.b]\nevery = \"100ms\"\nhandler = \"log\"\n");
    d.signal(Signal::SIGHUP);
    let log = d.wait_log("configuration reloaded");
    assert!(
        log.contains("added=1 removed=1 changed=0 unchanged=0"),
        "{log}"
    );
    let reloaded_at = log.find("configuration reloaded").expect("reloaded");
    d.wait_log_n("tick job=b", 5);
    let log = d.log();
    // At most one tick of `a` that was already under way when the reload happened.
    assert!(
        log[reloaded_at..].matches("tick job=a").count() <= 1,
        "{log}"
    );
}

#[test]
fn a_storm_of_sighups_with_good_and_bad_files_ends_consistent() {
    let good_a = "[jobs.a]\nevery = \"50ms\"\nshell = \"echo a >> a.txt\"\n";
    let good_b = "[jobs.b]\nevery = \"50ms\"\nshell = \"echo b >> b.txt\"\n";
    let bad = "[jobs.a]\nevery = \"-1s\"\n";
    let mut d = Daemon::start(good_a);
    let fds_before = fs::read_dir(format!("/proc/{}/fd", d.child.id()))
        .expect("fds")
        .count();
    for i in 0..1000 {
        d.rewrite(match i % 3 {
            0 => good_a,
            1 => bad,
            _ => good_b,
        });
        d.signal(Signal::SIGHUP);
        if i % 50 == 0 {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    // Settle on b, the last valid file. (Not by counting reload lines: coalesced SIGHUPs may
    // all be done before the log is read.) Every reload from here reads b, so once b has run
    // five times on end nothing can bring a back.
    d.rewrite(good_b);
    d.signal(Signal::SIGHUP);
    let b_before = fs::read_to_string(d.path("b.txt"))
        .unwrap_or_default()
        .lines()
        .count();
    eventually("b fires after the storm", || {
        fs::read_to_string(d.path("b.txt"))
            .unwrap_or_default()
            .lines()
            .count()
            >= b_before + 5
    });
    let a_lines = fs::read_to_string(d.path("a.txt"))
        .unwrap_or_default()
        .lines()
        .count();
    std::thread::sleep(Duration::from_millis(300));
    // `a` is gone: at most one run that was already starting.
    assert!(
        fs::read_to_string(d.path("a.txt"))
            .unwrap_or_default()
            .lines()
            .count()
            <= a_lines + 1
    );
    // No descriptor leaked by 300 reloads. Eventually: a run in flight holds its pipes for a
    // moment (every 50 ms here; on a loaded machine longer), a leak holds them for good.
    let fds = || {
        fs::read_dir(format!("/proc/{}/fd", d.child.id()))
            .expect("fds")
            .count()
    };
    eventually("the descriptors go back to where they were", || {
        fds() <= fds_before + 2
    });
    // SIGTERM during a reload burst still ends cleanly.
    for _ in 0..20 {
        d.signal(Signal::SIGHUP);
    }
    d.signal(Signal::SIGTERM);
    assert_eq!(d.wait_exit(), 0, "{}", d.log());
}
