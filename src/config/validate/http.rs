//! A job's `http = { ... }` request, and the timeout it gets when none is set.

use std::time::Duration;

use super::{At, Validator};
use crate::config::raw::RawHttp;
use crate::config::spec::{Action, HttpSpec, DEFAULT_HTTP_TIMEOUT, MIN_DEFAULT_HTTP_TIMEOUT};
use crate::config::values::{self, DurationRange};
use crate::schedule::Schedule;

impl Validator<'_> {
    /// The request; a bad URL or method is reported (so the job is left out), not replaced.
    pub(super) fn http(&mut self, job: &str, raw: &RawHttp) -> HttpSpec {
        let at = |key| At::job(job, key);
        #[cfg(feature = "http-jobs")]
        self.checked(&raw.url, at("http.url"), |url| values::check_url(url));
        #[cfg(not(feature = "http-jobs"))]
        self.reject(
            &raw.url,
            at("http"),
            crate::config::spec::NO_HTTP_JOBS.to_owned(),
        );
        let method = raw
            .method
            .as_ref()
            .and_then(|m| self.checked(m, at("http.method"), |m| values::parse_method(m)))
            .unwrap_or(http::Method::GET);
        let timeout = raw
            .timeout
            .as_ref()
            .and_then(|v| self.duration(v, at("http.timeout"), DurationRange::POSITIVE));
        HttpSpec {
            url: raw.url.get_ref().clone(),
            method,
            headers: raw.headers.clone(),
            body: raw.body.clone(),
            timeout,
        }
    }
}

/// Gives an HTTP `action` with no timeout at all (neither the job's `job_timeout` nor its own)
/// the default one: a server that accepts and never answers would hold the run, and with
/// `overlap = "skip"` stop the job, forever.
pub(super) fn bound_http_timeout(
    action: &mut Action,
    schedule: &Schedule,
    job_timeout: Option<Duration>,
) {
    if let (Action::Http(http), None) = (action, job_timeout) {
        http.timeout
            .get_or_insert_with(|| default_http_timeout(schedule));
    }
}

/// An HTTP job's timeout when none is set: [`DEFAULT_HTTP_TIMEOUT`], or the job's period when
/// that is shorter (a request still going at the next fire only makes the fires pile up), but
/// at least [`MIN_DEFAULT_HTTP_TIMEOUT`]. A cron job's period is the gap between its next two
/// fires.
fn default_http_timeout(schedule: &Schedule) -> Duration {
    let period = match schedule {
        Schedule::Every(every) => Some(every.period),
        Schedule::Cron(cron) => {
            // The machine's clock, asked through the one module that reads time.
            let first = cron.next_after(crate::clock::Clock::system().wall_now());
            let second = first.and_then(|t| cron.next_after(t));
            first.zip(second).and_then(|(a, b)| (b - a).to_std().ok())
        }
    };
    period
        .unwrap_or(DEFAULT_HTTP_TIMEOUT)
        .clamp(MIN_DEFAULT_HTTP_TIMEOUT, DEFAULT_HTTP_TIMEOUT)
}

#[cfg(all(test, not(feature = "http-jobs")))]
mod without_the_feature {
    use crate::config::testing::error;

    /// A build without `http-jobs` refuses an `http` job at load, naming the feature, rather
    /// than failing each of its runs.
    #[test]
    fn an_http_job_is_refused_naming_the_feature() {
        let msg = error("[jobs.a]\nevery = \"1s\"\nhttp = { url = \"http://x\" }\n");
        assert!(
            msg.contains("jobs.toml:3:") && msg.contains("built without the `http-jobs` feature"),
            "{msg}"
        );
    }
}

#[cfg(all(test, feature = "http-jobs"))]
mod tests {
    use std::time::Duration;

    use crate::config::testing::{check, error};
    use crate::config::Action;

    /// An HTTP job had no default timeout: a server that never answers held its run forever.
    #[test]
    fn http_jobs_get_a_default_timeout_no_longer_than_their_period() {
        let timeout_of = |job: &str| {
            let config = check(&format!(
                "[jobs.a]\n{job}\nhttp = {{ url = \"http://x\" }}\n"
            ))
            .expect("valid");
            match &config.jobs["a"].action {
                Action::Http(h) => h.timeout,
                other => panic!("unexpected action {other:?}"),
            }
        };
        let secs = |s| Some(Duration::from_secs(s));
        assert_eq!(timeout_of("every = \"100ms\""), secs(1));
        assert_eq!(timeout_of("every = \"10s\""), secs(10));
        assert_eq!(timeout_of("every = \"1h\""), secs(30));
        assert_eq!(timeout_of("cron = \"*/5 * * * * *\""), secs(5));
        assert_eq!(timeout_of("cron = \"@daily\""), secs(30));
        // A job timeout is the user's choice: no shorter default under it.
        assert_eq!(timeout_of("every = \"10s\"\ntimeout = \"5m\""), None);
        let config =
            check("[jobs.a]\nevery = \"1s\"\nhttp = { url = \"http://x\", timeout = \"2m\" }\n")
                .expect("valid");
        match &config.jobs["a"].action {
            Action::Http(h) => assert_eq!(h.timeout, Some(Duration::from_secs(120))),
            other => panic!("unexpected action {other:?}"),
        }
    }

    /// The method was a `String` that fell back to GET at run time; it is a method type now.
    #[test]
    fn http_method_is_validated_into_a_method() {
        let config =
            check("[jobs.a]\nevery = \"1s\"\nhttp = { url = \"http://x\", method = \"purge\" }\n")
                .expect("an extension method is a method");
        match &config.jobs["a"].action {
            Action::Http(h) => assert_eq!(h.method.as_str(), "PURGE"),
            other => panic!("unexpected action {other:?}"),
        }
        for bad in ["GE T", "", "GET\\n", "(x)"] {
            let msg = error(&format!(
                "[jobs.a]\nevery = \"1s\"\nhttp = {{ url = \"http://x\", method = \"{bad}\" }}\n"
            ));
            assert!(
                msg.contains("key \"http.method\": invalid HTTP method"),
                "{bad}: {msg}"
            );
        }
    }

    #[test]
    fn bad_http_url_and_method() {
        let msg = error("[jobs.a]\nevery = \"1s\"\nhttp = { url = \"ftp://x\" }\n");
        assert!(msg.contains("key \"http.url\": invalid URL"), "{msg}");
        let msg =
            error("[jobs.a]\nevery = \"1s\"\nhttp = { url = \"http://x\", method = \"GE T\" }\n");
        assert!(msg.contains("key \"http.method\""), "{msg}");
    }
}
