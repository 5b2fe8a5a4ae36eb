//! Every read of `/proc`: the process table scans behind the orphan reaper, the memory limit and
//! the leftover check, and the daemon's own resident size.
//!
//! A scan reads every process's `stat`, so callers on the runtime run it off the workers
//! (`crate::blocking::off_the_workers`).

use nix::unistd::Pid;

/// The fields of `/proc/PID/stat` that tickd reads.
struct ProcStat {
    state: String,
    ppid: String,
    pgrp: String,
    /// Resident set size, in pages.
    rss_pages: u64,
}

/// Every process in `/proc`, with its stat fields; processes that vanish meanwhile are skipped.
fn processes() -> impl Iterator<Item = (i32, ProcStat)> {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let pid = entry.file_name().to_string_lossy().parse::<i32>().ok()?;
            let stat = std::fs::read_to_string(entry.path().join("stat")).ok()?;
            Some((pid, parse_stat(&stat)?))
        })
}

/// The fields tickd reads from the text of a `/proc/PID/stat`.
fn parse_stat(stat: &str) -> Option<ProcStat> {
    // The fields after the command name (which may hold spaces and parentheses) start after the
    // last ')': state, ppid, pgrp, ..., rss (the 22nd of them).
    let (_, rest) = stat.rsplit_once(')')?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    Some(ProcStat {
        state: (*fields.first()?).to_owned(),
        ppid: (*fields.get(1)?).to_owned(),
        pgrp: (*fields.get(2)?).to_owned(),
        rss_pages: fields.get(21)?.parse().ok()?,
    })
}

/// Our children that have exited and wait to be reaped (state `Z` in `/proc`).
pub(super) fn zombie_children() -> Vec<i32> {
    let me = std::process::id().to_string();
    processes()
        .filter(|(_, stat)| stat.state == "Z" && stat.ppid == me)
        .map(|(pid, _)| pid)
        .collect()
}

/// Whether `group` has a member that is neither a zombie nor dead, or `None` without a readable
/// `/proc` (not mounted, another namespace's).
pub(super) fn group_has_live_member(group: Pid) -> Option<bool> {
    if std::fs::read_dir("/proc").is_err() {
        return None;
    }
    let pgrp = group.as_raw().to_string();
    Some(
        processes().any(|(_, stat)| stat.pgrp == pgrp && !matches!(stat.state.as_str(), "Z" | "X")),
    )
}

/// The resident memory of every process in `group`, in bytes (from `/proc`).
pub fn group_rss(group: Pid) -> u64 {
    let group = group.as_raw().to_string();
    processes()
        .filter(|(_, stat)| stat.pgrp == group)
        .map(|(_, stat)| stat.rss_pages)
        .sum::<u64>()
        * page_size()
}

/// This process's resident memory, in bytes (from `/proc/self/statm`).
pub fn own_rss() -> u64 {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|statm| statm.split_whitespace().nth(1)?.parse::<u64>().ok())
        .unwrap_or(0)
        * page_size()
}

fn page_size() -> u64 {
    nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE)
        .ok()
        .flatten()
        .and_then(|p| u64::try_from(p).ok())
        .unwrap_or(4096)
}
