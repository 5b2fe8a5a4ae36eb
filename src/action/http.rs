//! An `http` job's request.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::config::HttpSpec;

use super::{timeout_elapsed, RunEnv, RunReport};

/// Sends the job's request with the run's identity headers; a 2xx answer is a success.
pub(super) async fn run(
    http: &HttpSpec,
    identity: &[(&'static str, String)],
    job_timeout: Option<Duration>,
    cancel: &CancellationToken,
    env: &RunEnv,
) -> RunReport {
    let method = http.method().clone();
    let mut request = env.http.request(method, http.url());
    for (name, value) in http.headers() {
        request = request.header(name, value);
    }
    if let Some(body) = http.body() {
        request = request.body(body.to_owned());
    }
    if let Some(timeout) = http.timeout() {
        request = request.timeout(timeout);
    }
    let mut request = match request.build() {
        Ok(request) => request,
        Err(err) => return RunReport::failure(format!("request failed: {err}")),
    };
    // Replacing, not appending: a job's `headers` cannot fake the run's identity.
    for (name, value) in identity {
        let name = reqwest::header::HeaderName::from_bytes(name.as_bytes());
        let value = reqwest::header::HeaderValue::from_str(value);
        if let (Ok(name), Ok(value)) = (name, value) {
            request.headers_mut().insert(name, value);
        }
    }
    let exchange = async {
        let mut response = env.http.execute(request).await?;
        let status = response.status();
        if status.is_success() {
            return Ok(RunReport::success().http(status.as_u16()));
        }
        // The start of the body says why (a PHP error, a proxy's page); the rest is not read.
        let mut body = Vec::new();
        while body.len() < BODY_EXCERPT {
            match response.chunk().await? {
                Some(chunk) => body.extend_from_slice(&chunk),
                None => break,
            }
        }
        let reason = match body_excerpt(&body) {
            Some(excerpt) => format!("HTTP {status}, body: {excerpt:?}"),
            None => format!("HTTP {status}"),
        };
        Ok::<_, reqwest::Error>(RunReport::failure(reason).http(status.as_u16()))
    };
    tokio::select! {
        report = exchange => match report {
            Ok(report) => report,
            Err(err) if err.is_timeout() => RunReport::stopped(true, false),
            Err(err) => RunReport::failure(format!("request failed: {err}")),
        },
        _ = cancel.cancelled() => RunReport::stopped(false, false),
        _ = timeout_elapsed(&env.clock, job_timeout) => RunReport::stopped(true, false),
    }
}

/// How much of a failed response's body the log shows.
const BODY_EXCERPT: usize = 200;

/// The first [`BODY_EXCERPT`] bytes of `body` as text (lossy, whitespace trimmed), or `None`
/// for an empty body.
fn body_excerpt(body: &[u8]) -> Option<String> {
    let mut end = body.len().min(BODY_EXCERPT);
    // Not in the middle of a UTF-8 character.
    while end < body.len() && end > 0 && (body[end] & 0b1100_0000) == 0b1000_0000 {
        end -= 1;
    }
    let text = String::from_utf8_lossy(&body[..end]);
    let text = text.trim();
    (!text.is_empty()).then(|| {
        if end < body.len() {
            format!("{text}...")
        } else {
            text.to_owned()
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_responses_body_is_cut_at_a_character() {
        assert_eq!(body_excerpt(b""), None);
        assert_eq!(body_excerpt(b"  oops\n").as_deref(), Some("oops"));
        let long = "é".repeat(150);
        let excerpt = body_excerpt(long.as_bytes()).expect("an excerpt");
        assert_eq!(excerpt, format!("{}...", "é".repeat(100)));
    }
}
