//! The real binary against hostile input, files and signals (the hardening issues): each test is
//! named after what it pins down.

use nix::sys::signal::Signal;

use crate::binary::Daemon;

/// SIGUSR1, SIGUSR2, SIGQUIT and SIGALRM killed tickd at once, without a log line or a drain.
#[test]
fn every_signal_tickd_handles_has_its_documented_meaning() {
    let mut d = Daemon::start(
        r#"
[daemon]
shutdown_timeout = "60s"

[jobs.tick]
every = "100ms"
handler = "log"

[jobs.long]
every = "1h"
run_on_start = true
shell = "echo started > started; sleep 1; echo done > done"
"#,
    );
    d.wait_file("started");
    // SIGUSR1: a status summary, one line per job, the running one shown as running.
    d.signal(Signal::SIGUSR1);
    let log = d.wait_log_n("status report", 3);
    let long = log
        .lines()
        .find(|l| l.contains("status report") && l.contains("job=long"))
        .unwrap_or_else(|| panic!("no report line for long:\n{log}"));
    assert!(long.contains("running=1"), "{long}");
    assert!(
        log.lines()
            .any(|l| l.contains("status report") && l.contains("job=tick")),
        "{log}"
    );
    // SIGUSR2 and SIGALRM: logged, ignored, and the jobs keep firing.
    for (signal, name) in [(Signal::SIGUSR2, "SIGUSR2"), (Signal::SIGALRM, "SIGALRM")] {
        let runs = d.log().matches("job=tick").count();
        d.signal(signal);
        let log = d.wait_log(&format!("signal={name}"));
        assert!(log.contains("ignored"), "{log}");
        d.wait_log_n("job=tick", runs + 4);
    }
    // SIGQUIT: a drain like SIGTERM, not a core dump: the run in flight finishes, exit 0.
    d.signal(Signal::SIGQUIT);
    assert_eq!(d.wait_exit(), 0, "{}", d.log());
    assert_eq!(
        std::fs::read_to_string(d.path("done")).ok().as_deref(),
        Some("done\n"),
        "the run was drained"
    );
    assert!(
        d.log().contains("shut down: every run finished"),
        "{}",
        d.log()
    );
}
