//! The integration-test binary, one module per area. `scheduling` and `extremes` run the daemon in
//! process on paused time and a manual wall clock; the others run the real `tickd` binary end to
//! end in a temp dir. `support` holds the fixtures they share; `postgres` a throw-away PostgreSQL
//! server for `cluster`, which runs three replicas on it, `cluster_tls`, and `metrics`, which runs
//! promtool on `/metrics` and on the Grafana dashboard. `install` checks the man page, the
//! completions, the JSON Schema and the systemd unit.

mod cli;
mod cluster;
mod cluster_tls;
mod endpoint;
mod extremes;
mod history;
mod install;
mod logging;
mod metrics;
mod orphans;
mod page;
mod postgres;
mod process;
mod proxy;
mod reload;
mod runs;
mod scheduling;
mod service_managers;
mod signals;
mod state;
mod support;
mod users_limits;
