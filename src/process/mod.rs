//! The one module that spawns, watches and stops child processes.
//!
//! A child run is one start of a job's `command`: it is planned (environment, program, working
//! directory, standard streams, hardening), spawned from the spawner thread as the leader of its
//! own process group (`setpgid(0, 0)`), its output logged line by line on the output thread, and
//! it is watched until its process exits. A timeout, a replace, a shutdown or too much memory
//! stops the job *and* whatever it started: SIGTERM and SIGCONT to the group (a stopped process
//! never sees SIGTERM otherwise), SIGKILL to the group after `kill_grace`. A run ends when its
//! process exits, not when its pipes close (a backgrounded grandchild may hold them forever);
//! processes left in its group after that are stopped the same way, so nothing outlives its run,
//! and the group keeper kills the groups in flight should the daemon die without stopping them.
//!
//! - `supervise`: a run from start to end ([`run_child`], [`ChildRun`], [`ChildEnd`]);
//! - `plan`: what a run starts with, its environment included;
//! - `spawner`: the spawner thread, the child handle and the orphan reaper;
//! - `output`: the output thread, and the pump that cuts, paces and logs a stream;
//! - `group`: signals to a process group, and whether anything in it still lives;
//! - `keeper`: the group keeper ([`GroupKeeper`]) and the body of `tickd __keeper`;
//! - `procfs`: every read of `/proc`.

mod group;
mod keeper;
mod output;
mod plan;
mod procfs;
mod spawner;
mod supervise;

pub use keeper::{keeper_main, GroupKeeper, KEEPER_CHECK};
pub use output::{keep_end, start_output_thread, HeldOutput, OutputSink, HELD_OUTPUT, MAX_LINE};
pub use plan::set_child_descriptor_limit;
pub(crate) use plan::ProgramFinder;
pub use procfs::{group_rss, own_rss};
pub use spawner::{ChildProcess, Spawner};
pub use supervise::{run_child, status_parts, ChildEnd, ChildRun, StopCause};
