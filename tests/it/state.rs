//! The state file under the real binary: a full disk keeps the last good state and the runs going,
//! and a file that cannot be written is a warning.

use std::fs;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use crate::support::{assert_root, Daemon, PATIENCE};

/// Promise 4, a full disk: the state file lives on a real 256 KiB tmpfs (in a mount namespace of
/// the daemon's own, so the machine's mounts are untouched) that the test fills up. Writes fail
/// with ENOSPC and are warned about, the last good state file stays as it was, runs go on, and
/// once space is freed the state is written again.
#[test]
#[ignore = "needs root"]
fn a_full_disk_keeps_the_last_good_state_and_the_runs_going() {
    assert_root("a mount namespace and a tmpfs");
    let dir = tempfile::tempdir().expect("tempdir");
    fs::create_dir(dir.path().join("state")).expect("state dir");
    fs::write(
        dir.path().join("jobs.toml"),
        "[daemon]\nstate_file = \"state/tickd.state\"\n\n\
         [jobs.a]\nevery = \"100ms\"\nhandler = \"log\"\non_missed = \"once\"\n",
    )
    .expect("write config");
    // unshare execs sh, which execs tickd: the child's pid is the daemon's.
    let mut d = Daemon::spawn_in(
        dir,
        Command::new("unshare")
            .args(["--mount", "--propagation", "private", "sh", "-c"])
            .arg("mount -t tmpfs -o size=256k tmpfs state && exec \"$0\" run jobs.toml")
            .arg(env!("CARGO_BIN_EXE_tickd")),
    );
    d.wait_log("scheduler started");
    // The daemon's view of the tmpfs, through its root in /proc.
    let state_dir = PathBuf::from(format!("/proc/{}/root", d.child.id()))
        .join(d.dir.path().strip_prefix("/").expect("absolute"))
        .join("state");
    let state_file = state_dir.join("tickd.state");
    let read_state = || fs::read_to_string(&state_file).unwrap_or_default();
    let deadline = Instant::now() + PATIENCE;
    while !read_state().contains("a = ") {
        assert!(
            Instant::now() < deadline,
            "no state file; log:\n{}",
            d.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // Fill the disk.
    let filler = state_dir.join("filler");
    {
        use std::io::Write;
        let mut file = fs::File::create(&filler).expect("filler");
        let block = [0u8; 4096];
        let full = loop {
            if let Err(err) = file.write_all(&block) {
                break err;
            }
        };
        assert_eq!(full.raw_os_error(), Some(libc::ENOSPC), "{full}");
    }
    let log = d.wait_log("No space left on device");
    assert!(log.contains("cannot write the state file"), "{log}");
    let kept = read_state();
    assert!(
        kept.contains("a = "),
        "the last good state is gone: {kept:?}"
    );
    let ticks = d.log().matches("tick job=a").count();
    d.wait_log_n("tick job=a", ticks + 5);
    assert_eq!(read_state(), kept, "the state file changed on a full disk");
    // Free the space: the state is written again.
    fs::remove_file(&filler).expect("remove filler");
    let deadline = Instant::now() + PATIENCE;
    while read_state() == kept {
        assert!(
            Instant::now() < deadline,
            "state not written again; log:\n{}",
            d.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(read_state().contains("a = "));
    d.signal(Signal::SIGTERM);
    assert_eq!(d.wait_exit(), 0, "{}", d.log());
}

#[test]
fn a_state_file_that_cannot_be_written_is_a_warning() {
    let mut d = Daemon::start(
        "[daemon]\nstate_file = \"/proc/tickd-cannot-write-here.state\"\n[jobs.a]\nevery = \"100ms\"\nhandler = \"log\"\non_missed = \"once\"\n",
    );
    d.wait_log("cannot write the state file");
    let ticks = d.log().matches("tick job=a").count();
    d.wait_log_n("tick job=a", ticks + 3);
    d.signal(Signal::SIGTERM);
    assert_eq!(d.wait_exit(), 0);
}
