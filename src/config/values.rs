//! The value types and parsers behind single keys: bounded durations, sizes, zones, addresses,
//! counts, HTTP URLs and methods, and what `execve` takes. Each parser returns the typed value
//! or the message a config problem shows; locating it is the validator's job.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use chrono_tz::Tz;

/// The longest duration any key accepts: 100 years (humantime's `100y`, of 365.25 days). Every
/// duration enters through [`DurationRange::check`], so no later `instant + duration` anywhere
/// in the daemon can overflow (a monotonic instant has ~292 years of nanoseconds to spare).
pub const MAX_DURATION: Duration = Duration::from_secs(100 * 31_557_600);

/// The shortest `every` period: 1 ms. Shorter periods cannot be kept (a fire costs
/// microseconds of CPU) and would only burn a core reporting missed fires.
pub const MIN_PERIOD: Duration = Duration::from_millis(1);

/// The range a duration key accepts. All durations in the file are checked against one, so the
/// typed [`Config`](super::Config) never holds a duration over [`MAX_DURATION`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DurationRange {
    /// The shortest allowed value.
    pub min: Duration,
    /// The longest allowed value.
    pub max: Duration,
}

impl DurationRange {
    /// Zero up to [`MAX_DURATION`] (`kill_grace`, `shutdown_timeout`).
    pub const ZERO_OR_MORE: Self = DurationRange {
        min: Duration::ZERO,
        max: MAX_DURATION,
    };
    /// Greater than zero, up to [`MAX_DURATION`] (timeouts, `max_uptime`, `jitter`).
    pub const POSITIVE: Self = DurationRange {
        min: Duration::from_nanos(1),
        max: MAX_DURATION,
    };
    /// A schedule period or a retry backoff: [`MIN_PERIOD`] up to [`MAX_DURATION`].
    pub const PERIOD: Self = DurationRange {
        min: MIN_PERIOD,
        max: MAX_DURATION,
    };

    /// Parses `text` (humantime: `"200ms"`, `"10s"`, `"1h30m"`) and checks it is in range; the
    /// error says what is wrong in words for a config message.
    pub fn check(self, text: &str) -> Result<Duration, String> {
        let value = humantime::parse_duration(text.trim()).map_err(|e| {
            format!("invalid duration \"{text}\": {e} (examples: \"200ms\", \"10s\", \"1h30m\")")
        })?;
        if value.is_zero() && !self.min.is_zero() {
            return Err("must be greater than zero".to_owned());
        }
        if value < self.min || value > self.max {
            let max = humantime::format_duration(self.max);
            return Err(if self.min <= Duration::from_nanos(1) {
                format!("\"{text}\" is out of range: at most {max}")
            } else {
                let min = humantime::format_duration(self.min);
                format!("\"{text}\" is out of range: from {min} to {max}")
            });
        }
        Ok(value)
    }
}

/// A size in bytes greater than zero (`"50MB"`, `"1GiB"`).
pub(super) fn parse_size(text: &str) -> Result<u64, String> {
    match text.trim().parse::<bytesize::ByteSize>() {
        Ok(size) if size.as_u64() > 0 => Ok(size.as_u64()),
        Ok(_) => Err("must be greater than zero".to_owned()),
        Err(e) => Err(format!(
            "invalid size \"{text}\": {e} (examples: \"50MB\", \"1GiB\")"
        )),
    }
}

/// A size in bytes (`"4KiB"`), zero allowed (`"0"`: none).
pub(super) fn parse_size_or_zero(text: &str) -> Result<u64, String> {
    match text.trim().parse::<bytesize::ByteSize>() {
        Ok(size) => Ok(size.as_u64()),
        Err(e) => Err(format!(
            "invalid size \"{text}\": {e} (examples: \"4KiB\", \"0\")"
        )),
    }
}

/// An IANA time zone name.
pub(super) fn parse_zone(text: &str) -> Result<Tz, String> {
    text.parse::<Tz>().map_err(|_| {
        format!("unknown time zone \"{text}\" (use an IANA name such as \"Europe/Berlin\")")
    })
}

/// A socket address to listen on; a bare port (`"9187"` or `":9187"`) means loopback.
pub(super) fn parse_address(text: &str) -> Result<SocketAddr, String> {
    let trimmed = text.trim();
    let port_only = trimmed.strip_prefix(':').unwrap_or(trimmed);
    let full = if port_only.parse::<u16>().is_ok() {
        format!("127.0.0.1:{port_only}")
    } else {
        trimmed.to_owned()
    };
    if let Ok(addr) = full.parse::<SocketAddr>() {
        return Ok(addr);
    }
    // A host name (`localhost:9187`): resolved once, at load; an IPv4 address first, so that
    // `localhost` means 127.0.0.1 wherever it also names ::1.
    let resolved: Vec<SocketAddr> = std::net::ToSocketAddrs::to_socket_addrs(full.as_str())
        .map_err(|e| format!("invalid address \"{text}\": {e} (e.g. \"127.0.0.1:9187\")"))?
        .collect();
    resolved
        .iter()
        .find(|addr| addr.is_ipv4())
        .or(resolved.first())
        .copied()
        .ok_or_else(|| format!("invalid address \"{text}\": the name resolves to no address"))
}

/// A whole number of at least 1 that fits `T`.
pub(super) fn parse_count<T: TryFrom<i64>>(n: i64) -> Result<T, String> {
    T::try_from(n)
        .ok()
        .filter(|_| n > 0)
        .ok_or_else(|| "must be a whole number of at least 1".to_owned())
}

/// An absolute `http://` or `https://` URL, as the client that runs it parses it. (A build
/// without `http-jobs` refuses every `http` job, so it has no URL to check.)
#[cfg(feature = "http-jobs")]
pub(super) fn check_url(url: &str) -> Result<(), String> {
    reqwest::Url::parse(url)
        .map_err(|e| e.to_string())
        .and_then(|u| match u.scheme() {
            "http" | "https" => Ok(()),
            other => Err(format!("scheme \"{other}\" is not http or https")),
        })
        .map_err(|why| format!("invalid URL \"{url}\": {why}"))
}

/// An HTTP method, in any case; any token is a valid extension method (e.g. `PURGE`).
pub(super) fn parse_method(text: &str) -> Result<http::Method, String> {
    http::Method::from_bytes(text.to_ascii_uppercase().as_bytes())
        .map_err(|_| format!("invalid HTTP method \"{text}\" (e.g. \"GET\", \"POST\")"))
}

/// The longest single argument or `NAME=value` string `execve` takes on Linux (`MAX_ARG_STRLEN`,
/// 32 pages, counting its terminating NUL).
pub(super) const MAX_EXEC_STRING: usize = 32 * 4096;

/// Why `execve` would refuse `argv` with `env` on top of the inherited environment (E2BIG on every
/// run), or `None`. A single string over [`MAX_EXEC_STRING`] never fits; all together may use at
/// most half of the system's `ARG_MAX`, leaving the rest for the inherited environment.
pub(super) fn exec_size_problem(argv: &[String], env: &BTreeMap<String, String>) -> Option<String> {
    let strings = argv
        .iter()
        .map(String::len)
        .chain(env.iter().map(|(k, v)| k.len() + 1 + v.len()));
    let mut total = 0usize;
    for len in strings {
        if len + 1 > MAX_EXEC_STRING {
            return Some(format!(
                "an argument or variable of {} is longer than the {} the kernel passes to a program (execve would fail with E2BIG)",
                bytesize::ByteSize(len as u64),
                bytesize::ByteSize((MAX_EXEC_STRING - 1) as u64),
            ));
        }
        // Each string also takes a pointer in the argv or envp array.
        total += len + 1 + std::mem::size_of::<usize>();
    }
    let arg_max = nix::unistd::sysconf(nix::unistd::SysconfVar::ARG_MAX)
        .ok()
        .flatten()
        .and_then(|n| usize::try_from(n).ok())
        .unwrap_or(2 * 1024 * 1024);
    (total > arg_max / 2).then(|| {
        format!(
            "the arguments and variables take {}, more than half of the system's limit of {} for a program's arguments and environment (ARG_MAX)",
            bytesize::ByteSize(total as u64),
            bytesize::ByteSize(arg_max as u64),
        )
    })
}
