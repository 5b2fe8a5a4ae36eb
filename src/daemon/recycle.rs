//! When the daemon recycles itself: `[daemon] max_uptime`, `max_runs` or `max_rss` reached. It
//! then drains and exits with its own code, for the process manager to start a fresh one: the
//! cure for long-running scripts' leaks, applied to the daemon and its runs alike.

use std::sync::Arc;
use std::time::Duration;

use crate::clock::{Clock, Instant, Sleep};
use crate::config::DaemonSettings;
use crate::handler::RunIds;

/// How often the daemon's own memory is checked against `[daemon] max_rss`.
const OWN_RSS_SAMPLE: Duration = Duration::from_secs(1);

/// The supervisor's recycle state: the timers are kept across reloads that leave their settings
/// as they were (re-created on every pass of the supervisor's loop, each reload would restart
/// them, and pings faster than the RSS sample would mean `max_rss` is never checked).
pub(super) struct Recycler {
    clock: Clock,
    started: Instant,
    run_ids: Arc<RunIds>,
    uptime: Option<(Instant, Sleep)>,
    rss: Option<Sleep>,
}

impl Recycler {
    /// For a daemon started at `started` whose runs are numbered by `run_ids`.
    pub fn new(clock: Clock, started: Instant, run_ids: Arc<RunIds>) -> Self {
        Recycler {
            clock,
            started,
            run_ids,
            uptime: None,
            rss: None,
        }
    }

    /// Applies the settings (at start and after each reload).
    pub fn apply(&mut self, settings: &DaemonSettings) {
        self.run_ids.set_limit(settings.max_runs());
        // Kept as long as max_uptime stays the same across reloads.
        let recycle_at = settings.max_uptime().map(|uptime| self.started + uptime);
        if self.uptime.as_ref().map(|(at, _)| *at) != recycle_at {
            self.uptime = recycle_at.map(|at| (at, self.clock.sleep_until(at)));
        }
        if settings.max_rss().is_some() != self.rss.is_some() {
            self.rss = settings.max_rss().map(|_| self.clock.sleep(OWN_RSS_SAMPLE));
        }
    }

    /// Resolves, with the cause logged and returned (in words, for the status page), when a
    /// limit of `settings` is reached; never if none is.
    pub async fn due(&mut self, settings: &DaemonSettings) -> String {
        loop {
            tokio::select! {
                _ = crate::clock::sleep_or_never(self.uptime.as_mut().map(|(_, sleep)| sleep)) => {
                    let max_uptime = humantime::format_duration(settings.max_uptime().unwrap_or_default());
                    tracing::info!(%max_uptime, "max_uptime reached; draining and exiting to be restarted fresh");
                    return format!("recycling: max_uptime ({max_uptime}) reached");
                }
                _ = self.run_ids.limit_reached() => {
                    let max_runs = settings.max_runs().unwrap_or_default();
                    tracing::info!(max_runs, "max_runs reached; draining and exiting to be restarted fresh");
                    return format!("recycling: max_runs ({max_runs}) reached");
                }
                _ = crate::clock::sleep_or_never(self.rss.as_mut()) => {
                    let rss = crate::process::own_rss();
                    let limit = settings.max_rss().unwrap_or(u64::MAX);
                    if rss > limit {
                        let (rss, limit) = (bytesize::ByteSize(rss), bytesize::ByteSize(limit));
                        tracing::info!(%rss, max_rss = %limit, "max_rss exceeded; draining and exiting to be restarted fresh");
                        return format!("recycling: max_rss ({limit}) exceeded: {rss}");
                    }
                    self.rss = Some(self.clock.sleep(OWN_RSS_SAMPLE));
                }
            }
        }
    }
}
