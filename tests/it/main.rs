//! The integration-test binary, one module per area. `scheduling` and `extremes` run the daemon in
//! process on paused time and a manual wall clock; the others run the real `tickd` binary end to
//! end in a temp dir. `support` holds the fixtures they share.

mod cli;
mod endpoint;
mod extremes;
mod logging;
mod orphans;
mod process;
mod reload;
mod runs;
mod scheduling;
mod service_managers;
mod signals;
mod state;
mod support;
mod users_limits;
