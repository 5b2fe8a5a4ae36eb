//! The HTTP endpoint (`[daemon] http = "127.0.0.1:9187"`, off unless configured), on axum:
//! `/metrics` (Prometheus), `/healthz`, `/jobs`, `/jobs/{name}`, and `POST /jobs/{name}/run`,
//! `/pause`, `/resume`. With `http_token`, every request but `/healthz` needs
//! `Authorization: Bearer <token>`; binding a non-loopback address requires a token.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use axum::extract::{Path, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::job::{FireResult, JobControl};
use crate::run::RunEnv;

/// The jobs the endpoint can see, kept current by the supervisor across reloads.
pub type Directory = Arc<RwLock<BTreeMap<String, JobControl>>>;

/// What the handlers share.
#[derive(Clone)]
pub struct ApiState {
    /// The jobs.
    pub directory: Directory,
    /// Set while the daemon drains: `/healthz` answers 503.
    pub draining: Arc<AtomicBool>,
    /// For the metrics.
    pub env: Arc<RunEnv>,
    /// The bearer token, if one is required.
    pub token: Option<Arc<str>>,
}

/// Serves the endpoint on `listener` until `stop`.
pub async fn serve(listener: tokio::net::TcpListener, state: ApiState, stop: CancellationToken) {
    let protected = Router::new()
        .route("/metrics", get(metrics))
        .route("/jobs", get(jobs))
        .route("/jobs/{name}", get(job))
        .route("/jobs/{name}/run", post(run_now))
        .route("/jobs/{name}/pause", post(pause))
        .route("/jobs/{name}/resume", post(resume))
        .route_layer(middleware::from_fn_with_state(state.clone(), require_token));
    let app = Router::new()
        .route("/healthz", get(healthz))
        .merge(protected)
        .with_state(state);
    let result = axum::serve(listener, app)
        .with_graceful_shutdown(async move { stop.cancelled().await })
        .await;
    if let Err(err) = result {
        tracing::error!("the HTTP endpoint failed: {err}");
    }
}

async fn require_token(State(state): State<ApiState>, request: Request, next: Next) -> Response {
    if let Some(token) = &state.token {
        let given = request
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        // The token itself is never logged.
        if given != Some(token.as_ref()) {
            return (StatusCode::UNAUTHORIZED, "a bearer token is required\n").into_response();
        }
    }
    next.run(request).await
}

/// How long `/healthz` waits for every job task to answer.
const HEALTH_TIMEOUT: Duration = Duration::from_secs(2);

/// At most this many stuck jobs are named in `/healthz`'s answer.
const HEALTH_NAMES: usize = 10;

/// 200 while the scheduler runs and every job task answers; 503 while draining, while the group
/// keeper is down, or when a job's task is gone (it panicked) or blocked: that job would silently
/// stop firing.
async fn healthz(State(state): State<ApiState>) -> Response {
    if state.draining.load(Ordering::Relaxed) {
        return (StatusCode::SERVICE_UNAVAILABLE, "draining\n").into_response();
    }
    // Until it is replaced, a killed daemon would leave its jobs' processes behind.
    if let Some(down) = state.env.keeper.as_ref().and_then(|k| k.down()) {
        return (StatusCode::SERVICE_UNAVAILABLE, format!("{down}\n")).into_response();
    }
    let mut stuck = unresponsive_jobs(&directory_snapshot(&state), HEALTH_TIMEOUT).await;
    // A job removed by a reload while we waited is not stuck.
    {
        let current = state
            .directory
            .read()
            .unwrap_or_else(PoisonError::into_inner);
        stuck.retain(|name| current.contains_key(name));
    }
    if stuck.is_empty() {
        return (StatusCode::OK, "ok\n").into_response();
    }
    tracing::error!(jobs = ?stuck, "job tasks are not answering; those jobs are not firing");
    let more = stuck.len().saturating_sub(HEALTH_NAMES);
    stuck.truncate(HEALTH_NAMES);
    let mut body = format!("job tasks not answering: {}", stuck.join(", "));
    if more > 0 {
        body.push_str(&format!(" and {more} more"));
    }
    body.push('\n');
    (StatusCode::SERVICE_UNAVAILABLE, body).into_response()
}

/// The jobs whose task did not answer a ping within `timeout`: gone, or blocked. All are
/// pinged at once, so the wait is one `timeout` at most however many jobs there are.
async fn unresponsive_jobs(jobs: &BTreeMap<String, JobControl>, timeout: Duration) -> Vec<String> {
    let pings: Vec<_> = jobs.iter().map(|(name, job)| (name, job.ping())).collect();
    let deadline = tokio::time::Instant::now() + timeout;
    let mut stuck = Vec::new();
    for (name, answer) in pings {
        if !matches!(tokio::time::timeout_at(deadline, answer).await, Ok(Ok(()))) {
            stuck.push(name.clone());
        }
    }
    stuck
}

async fn metrics(State(state): State<ApiState>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.env.metrics.encode(),
    )
        .into_response()
}

fn lookup(state: &ApiState, name: &str) -> Option<JobControl> {
    state
        .directory
        .read()
        .unwrap_or_else(PoisonError::into_inner)
        .get(name)
        .cloned()
}

fn no_such_job(name: &str) -> Response {
    (
        StatusCode::NOT_FOUND,
        Json(json!({ "error": format!("no job named \"{name}\"") })),
    )
        .into_response()
}

/// A copy of the job directory, so that no lock is held across an await.
fn directory_snapshot(state: &ApiState) -> BTreeMap<String, JobControl> {
    state
        .directory
        .read()
        .unwrap_or_else(PoisonError::into_inner)
        .clone()
}

async fn jobs(State(state): State<ApiState>) -> Response {
    let jobs: Vec<serde_json::Value> = directory_snapshot(&state)
        .iter()
        .map(|(name, control)| job_json(name, control))
        .collect();
    Json(jobs).into_response()
}

fn job_json(name: &str, control: &JobControl) -> serde_json::Value {
    let mut value = serde_json::to_value(control.status.snapshot()).unwrap_or_default();
    value["name"] = json!(name);
    value
}

async fn job(State(state): State<ApiState>, Path(name): Path<String>) -> Response {
    match lookup(&state, &name) {
        Some(control) => Json(job_json(&name, &control)).into_response(),
        None => no_such_job(&name),
    }
}

async fn run_now(State(state): State<ApiState>, Path(name): Path<String>) -> Response {
    let Some(control) = lookup(&state, &name) else {
        return no_such_job(&name);
    };
    match control.run_now().await {
        Some(FireResult::Started(run_id)) => (
            StatusCode::ACCEPTED,
            Json(json!({ "started": true, "run_id": run_id.0 })),
        )
            .into_response(),
        Some(FireResult::Queued) => (
            StatusCode::ACCEPTED,
            Json(json!({ "started": false, "queued": true })),
        )
            .into_response(),
        Some(FireResult::Skipped) => (
            StatusCode::CONFLICT,
            Json(json!({ "error": "a run is still going; the overlap policy skips this one" })),
        )
            .into_response(),
        None => no_such_job(&name),
    }
}

async fn pause(State(state): State<ApiState>, Path(name): Path<String>) -> Response {
    set_paused(&state, &name, true)
}

async fn resume(State(state): State<ApiState>, Path(name): Path<String>) -> Response {
    set_paused(&state, &name, false)
}

fn set_paused(state: &ApiState, name: &str, paused: bool) -> Response {
    match lookup(state, name) {
        Some(control) if control.set_paused(paused) => {
            Json(json!({ "name": name, "paused": paused })).into_response()
        }
        _ => no_such_job(name),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::job::JobCommand;

    #[tokio::test(start_paused = true)]
    async fn job_tasks_that_are_gone_or_blocked_are_reported() {
        let mut jobs = BTreeMap::new();
        let (answering, mut inbox) = JobControl::detached();
        tokio::spawn(async move {
            while let Some(command) = inbox.recv().await {
                if let JobCommand::Ping(reply) = command {
                    let _ = reply.send(());
                }
            }
        });
        jobs.insert("answering".to_owned(), answering);
        let (gone, inbox) = JobControl::detached();
        drop(inbox);
        jobs.insert("gone".to_owned(), gone);
        let (blocked, _inbox_never_read) = JobControl::detached();
        jobs.insert("blocked".to_owned(), blocked);

        let started = tokio::time::Instant::now();
        let stuck = unresponsive_jobs(&jobs, Duration::from_secs(2)).await;
        assert_eq!(stuck, ["blocked", "gone"]);
        // One timeout for all, not one per stuck job.
        let waited = started.elapsed();
        assert!(
            waited >= Duration::from_secs(2) && waited < Duration::from_secs(3),
            "{waited:?}"
        );

        jobs.remove("blocked");
        jobs.remove("gone");
        let started = tokio::time::Instant::now();
        assert!(unresponsive_jobs(&jobs, Duration::from_secs(2))
            .await
            .is_empty());
        assert!(started.elapsed() < Duration::from_secs(1));
    }
}
