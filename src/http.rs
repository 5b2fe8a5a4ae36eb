//! The HTTP endpoint (`[daemon] http = "127.0.0.1:9187"`, off unless configured), on axum:
//! `/metrics` (Prometheus), `/healthz`, `/jobs`, `/jobs/{name}`, and `POST /jobs/{name}/run`,
//! `/pause`, `/resume`. With `http_token`, every request but `/healthz` needs
//! `Authorization: Bearer <token>`; binding a non-loopback address requires a token.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, PoisonError, RwLock};

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

async fn healthz(State(state): State<ApiState>) -> Response {
    if state.draining.load(Ordering::Relaxed) {
        (StatusCode::SERVICE_UNAVAILABLE, "draining\n").into_response()
    } else {
        (StatusCode::OK, "ok\n").into_response()
    }
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

async fn jobs(State(state): State<ApiState>) -> Response {
    let directory = state
        .directory
        .read()
        .unwrap_or_else(PoisonError::into_inner)
        .clone();
    let jobs: Vec<serde_json::Value> = directory
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
