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
        Err(err) => return RunReport::failure(None, format!("request failed: {err}")),
    };
    // Replacing, not appending: a job's `headers` cannot fake the run's identity.
    for (name, value) in identity {
        let name = reqwest::header::HeaderName::from_bytes(name.as_bytes());
        let value = reqwest::header::HeaderValue::from_str(value);
        if let (Ok(name), Ok(value)) = (name, value) {
            request.headers_mut().insert(name, value);
        }
    }
    tokio::select! {
        response = env.http.execute(request) => match response {
            Ok(response) => {
                let status = response.status();
                let code = Some(i32::from(status.as_u16()));
                if status.is_success() {
                    RunReport::success(code)
                } else {
                    RunReport::failure(code, format!("HTTP {status}"))
                }
            }
            Err(err) if err.is_timeout() => RunReport::stopped(true, false, None),
            Err(err) => RunReport::failure(None, format!("request failed: {err}")),
        },
        _ = cancel.cancelled() => RunReport::stopped(false, false, None),
        _ = timeout_elapsed(&env.clock, job_timeout) => RunReport::stopped(true, false, None),
    }
}
