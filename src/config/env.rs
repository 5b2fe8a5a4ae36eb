//! What jobs inherit of the daemon's environment.

/// Which of the daemon's environment variables jobs inherit (`[daemon] env_clear`, `env_keep`,
/// `env_remove`). Variables addressed to tickd by its service manager (`NOTIFY_SOCKET`,
/// `WATCHDOG_USEC`, `WATCHDOG_PID`, `LISTEN_FDS`, `LISTEN_PID`, `LISTEN_FDNAMES`) are never
/// passed on, whatever the policy.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EnvPolicy {
    /// Start from an empty environment instead of the daemon's.
    pub(in crate::config) clear: bool,
    /// With `clear`: the variables passed through anyway.
    pub(in crate::config) keep: Vec<String>,
    /// Without `clear`: the variables taken out.
    pub(in crate::config) remove: Vec<String>,
}

impl EnvPolicy {
    /// Start from an empty environment instead of the daemon's.
    pub fn clear(&self) -> bool {
        self.clear
    }

    /// With `clear`: the variables passed through anyway.
    pub fn keep(&self) -> &[String] {
        &self.keep
    }

    /// Without `clear`: the variables taken out.
    pub fn remove(&self) -> &[String] {
        &self.remove
    }
}

/// The service manager's variables for tickd itself, never inherited by jobs.
pub const NEVER_INHERITED: &[&str] = &[
    "NOTIFY_SOCKET",
    "WATCHDOG_USEC",
    "WATCHDOG_PID",
    "LISTEN_FDS",
    "LISTEN_PID",
    "LISTEN_FDNAMES",
];

/// What `env_keep` is when `env_clear = true` and it is not given.
pub const DEFAULT_ENV_KEEP: &[&str] = &["PATH", "LANG", "LC_ALL", "TZ", "HOME", "USER", "LOGNAME"];
