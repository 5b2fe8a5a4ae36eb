//! The HTTP endpoint (`[daemon] http = "127.0.0.1:9187"`, off unless configured), on axum:
//! `/metrics` (Prometheus), `/healthz`, `/jobs`, `/jobs/{name}`, `/jobs/{name}/runs`, `/cluster`, and
//! `POST /jobs/{name}/run`, `/pause`, `/resume`; and the status page for browsers ([`crate::page`]:
//! `/`, `/ui/...`, `/login`). With `http_token`, every request but `/healthz` needs
//! `Authorization: Bearer <token>` (the page also takes its login's session cookie); binding a
//! non-loopback address requires a token.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, PoisonError};
use std::time::Duration;

use axum::extract::{Path, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use serde_json::json;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tower_http::timeout::TimeoutLayer;

use crate::clock::Clock;
use crate::cluster::Cluster;
/// The jobs the endpoint can see (now kept in [`crate::job`], which needs it without an endpoint
/// too).
pub use crate::job::Directory;
use crate::job::{FireResult, JobControl};
use crate::metrics::{Format, Metrics};
use crate::process::GroupKeeper;

/// What the handlers share.
#[derive(Clone)]
pub struct ApiState {
    /// The jobs.
    pub directory: Directory,
    /// Set while the daemon drains: `/healthz` answers 503.
    pub draining: Arc<AtomicBool>,
    /// What `/metrics` shows.
    pub metrics: Arc<Metrics>,
    /// The group keeper, whose being down `/healthz` reports; `None` when there is none.
    pub keeper: Option<Arc<GroupKeeper>>,
    /// The bearer token, if one is required.
    pub token: Option<Arc<str>>,
    /// The source of time for the endpoint's own waits (the connections' timeouts are hyper's
    /// and tower's timers).
    pub clock: Clock,
    /// This node's part in a cluster (`[cluster]`), which `/cluster` shows and `/healthz`
    /// checks; `None` when tickd runs alone.
    pub cluster: Option<Cluster>,
    /// What the supervisor publishes about the daemon itself (configuration, reloads,
    /// stopping), which the status page shows.
    pub daemon: crate::status::SharedDaemonFacts,
}

/// The endpoint's defences against slow and many clients; [`Limits::for_this_process`] gives
/// the daemon's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// A connection must send a whole request head within this, counted from when the server
    /// starts waiting for it: from the accept, or from the end of the previous answer. So it is
    /// also the keep-alive idle timeout (hyper's `header_read_timeout` restarts its timer for each
    /// head), and a slow or silent client holds its descriptor this long at most.
    pub header_read_timeout: Duration,
    /// A request's answer must be ready within this, or it is 503 (the handlers' own waits are
    /// shorter: `/healthz` waits 2 s); a stuck handler does not hold its connection for ever.
    pub request_timeout: Duration,
    /// Connections served at once. One more is closed as soon as it is accepted, before
    /// anything is read from it: accepting it costs a descriptor for an instant, not for its life.
    pub max_connections: usize,
    /// At shutdown, how long the requests in progress have to be answered; connections still open
    /// then (a client mid-head, one that never reads its answer) are closed. Idle keep-alive
    /// connections are closed at once.
    pub shutdown_grace: Duration,
}

/// The connection cap when descriptors are plentiful.
pub const MAX_CONNECTIONS: usize = 256;

/// Descriptors the endpoint never competes for: the daemon's own (runtime, timers, state file,
/// group keeper) and a floor for runs (a child run takes about four: a pidfd and output pipes).
pub const DESCRIPTOR_RESERVE: u64 = 64;

impl Limits {
    /// The limits for a process whose soft descriptor limit (`RLIMIT_NOFILE`) is `nofile`: a 10 s
    /// head and keep-alive timeout, a 10 s request limit, a 2 s shutdown grace, and at most
    /// [`MAX_CONNECTIONS`] connections, or half of the descriptors beyond [`DESCRIPTOR_RESERVE`]
    /// if that is fewer (at least 1). So however low the limit, the endpoint leaves the reserve
    /// and as many descriptors again as it can take to the runs; with the daemon's raised limit
    /// (tickd raises its soft limit to the hard one at start; the systemd unit sets 65536) the
    /// cap is 256 and the reserve is thousands.
    pub fn for_descriptor_limit(nofile: u64) -> Limits {
        let share = nofile.saturating_sub(DESCRIPTOR_RESERVE) / 2;
        Limits {
            header_read_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(10),
            max_connections: usize::try_from(share)
                .unwrap_or(usize::MAX)
                .clamp(1, MAX_CONNECTIONS),
            shutdown_grace: Duration::from_secs(2),
        }
    }

    /// [`Limits::for_descriptor_limit`] for this process's soft limit, read now (an unreadable
    /// one counts as plentiful).
    pub fn for_this_process() -> Limits {
        let nofile = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
            .map_or(u64::MAX, |(soft, _hard)| soft);
        Limits::for_descriptor_limit(nofile)
    }
}

/// After a failed accept (most likely out of descriptors: EMFILE, ENFILE), how long the endpoint
/// waits before the next: the condition does not clear by retrying at once.
const ACCEPT_PAUSE: Duration = Duration::from_secs(1);

/// The endpoint's routes, with the token check and the per-request time limit.
fn router(state: ApiState, request_timeout: Duration) -> Router {
    let protected = Router::new()
        .route("/metrics", get(metrics))
        .route("/jobs", get(jobs))
        .route("/jobs/{name}", get(job))
        .route("/jobs/{name}/runs", get(runs))
        .route("/jobs/{name}/run", post(run_now))
        .route("/jobs/{name}/pause", post(pause))
        .route("/jobs/{name}/resume", post(resume))
        .route("/cluster", get(cluster))
        .route_layer(middleware::from_fn_with_state(state.clone(), require_token));
    Router::new()
        .route("/healthz", get(healthz))
        .merge(protected)
        .merge(crate::page::routes(state.clone()))
        .with_state(state)
        .layer(TimeoutLayer::with_status_code(
            StatusCode::SERVICE_UNAVAILABLE,
            request_timeout,
        ))
}

/// Serves the endpoint on `listener` until `stop`, within `limits`.
///
/// The accept loop is our own, not `axum::serve`: that one has no header-read timeout and no
/// connection cap, and 1,100 clients sending a partial head every 10 s took every descriptor the
/// daemon had ("Hardening, part 2"). Each connection is hyper's HTTP/1 server with its
/// `header_read_timeout`; a [`Semaphore`] permit is its slot under the cap; hyper-util's
/// [`GracefulShutdown`] ends them at `stop`.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: ApiState,
    stop: CancellationToken,
    limits: Limits,
) {
    let clock = state.clock.clone();
    let app = router(state, limits.request_timeout);
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout);
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let graceful = GracefulShutdown::new();
    let mut connections = JoinSet::new();
    // Connections closed at the cap since the last one served: one warning per episode, not one
    // per connection (a flood would flood the log).
    let mut refused: u64 = 0;
    loop {
        let accepted = tokio::select! {
            () = stop.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        // Finished connections are collected here, so the set holds the live ones and a few.
        while connections.try_join_next().is_some() {}
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(err) => {
                tracing::warn!("the HTTP endpoint cannot accept a connection: {err}");
                tokio::select! {
                    () = stop.cancelled() => break,
                    () = clock.sleep(ACCEPT_PAUSE) => continue,
                }
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            if refused == 0 {
                tracing::warn!(
                    max_connections = limits.max_connections,
                    "the HTTP endpoint is at its connection cap: closing new connections until one ends"
                );
            }
            refused += 1;
            drop(stream);
            continue;
        };
        if refused > 0 {
            tracing::info!(
                refused,
                "the HTTP endpoint is below its connection cap again"
            );
            refused = 0;
        }
        let connection =
            http.serve_connection(TokioIo::new(stream), TowerToHyperService::new(app.clone()));
        let connection = graceful.watch(connection);
        connections.spawn(async move {
            // A client that was too slow, or went away, is not the daemon's error.
            if let Err(err) = connection.await {
                tracing::debug!(%peer, "HTTP connection ended: {err}");
            }
            drop(slot);
        });
    }
    drop(listener);
    tokio::select! {
        () = graceful.shutdown() => {}
        () = clock.sleep(limits.shutdown_grace) => {
            tracing::debug!("closing the HTTP connections still open after the shutdown grace");
        }
    }
    connections.shutdown().await;
}

/// The bearer token of a request's `Authorization` header, if it has one.
pub(crate) fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
}

/// Whether `given` is `expected`, in a time that does not depend on where they first differ (a
/// byte-by-byte `==` stops there, and its timing would tell a guesser how much of the token it
/// has right). Only the length may show, which a token's strength does not rest on.
pub(crate) fn same_secret(given: &[u8], expected: &[u8]) -> bool {
    given.len() == expected.len()
        && std::hint::black_box(
            given
                .iter()
                .zip(expected)
                .fold(0u8, |differ, (a, b)| differ | (a ^ b)),
        ) == 0
}

/// The answer of a run-now request the overlap policy refuses (409), the same in the JSON API
/// and on the status page.
pub const REFUSED_RUN: &str = "a run is still going; the overlap policy refuses this one";

async fn require_token(State(state): State<ApiState>, request: Request, next: Next) -> Response {
    if let Some(token) = &state.token {
        // The token itself is never logged.
        let given = bearer(request.headers());
        if !given.is_some_and(|given| same_secret(given.as_bytes(), token.as_bytes())) {
            return (StatusCode::UNAUTHORIZED, "a bearer token is required\n").into_response();
        }
    }
    next.run(request).await
}

/// How long `/healthz` waits for every job to answer.
const HEALTH_TIMEOUT: Duration = Duration::from_secs(2);

/// At most this many stuck jobs are named in `/healthz`'s answer.
const HEALTH_NAMES: usize = 10;

/// 200 while the scheduler runs and every job answers; 503 while draining, while the group
/// keeper is down, in a cluster while this node's jobs differ from the owner's or the database
/// does not answer (see [`crate::cluster::ClusterStatus::health_problem`]; a follower is
/// healthy), or when a job is stopped (it panicked and waits for its restart) or stuck (its
/// state held): that job would silently stop firing. (The answer still says "job tasks", the
/// words monitoring may match on.)
async fn healthz(State(state): State<ApiState>) -> Response {
    if state.draining.load(Ordering::Relaxed) {
        return (StatusCode::SERVICE_UNAVAILABLE, "draining\n").into_response();
    }
    // Until it is replaced, a killed daemon would leave its jobs' processes behind.
    if let Some(down) = state.keeper.as_ref().and_then(|k| k.down()) {
        return (StatusCode::SERVICE_UNAVAILABLE, format!("{down}\n")).into_response();
    }
    if let Some(problem) = state
        .cluster
        .as_ref()
        .and_then(|c| c.status().health_problem())
    {
        return (StatusCode::SERVICE_UNAVAILABLE, format!("{problem}\n")).into_response();
    }
    let mut stuck =
        unresponsive_jobs(&directory_snapshot(&state), HEALTH_TIMEOUT, &state.clock).await;
    // A job removed by a reload while we waited is not stuck.
    {
        let current = state
            .directory
            .read()
            .unwrap_or_else(PoisonError::into_inner);
        stuck.retain(|name| current.contains_key(name));
    }
    if stuck.is_empty() {
        // Healthy, since the restarted tasks answer; but a restart is a bug worth seeing.
        let restarted: Vec<String> = directory_snapshot(&state)
            .iter()
            .filter_map(|(name, job)| {
                let restarts = job.status.snapshot().task_restarts;
                (restarts > 0).then(|| format!("{name} ({restarts}x)"))
            })
            .collect();
        if restarted.is_empty() {
            return (StatusCode::OK, "ok\n").into_response();
        }
        let body = format!(
            "ok; job tasks restarted after a panic: {}\n",
            restarted.join(", ")
        );
        return (StatusCode::OK, body).into_response();
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

/// The jobs that did not answer within `timeout`: gone, stopped by a panic, or stuck. The wait
/// is one `timeout` at most however many jobs there are: once it has passed, only the jobs that
/// answer at once count as answering.
async fn unresponsive_jobs(
    jobs: &BTreeMap<String, JobControl>,
    timeout: Duration,
    clock: &Clock,
) -> Vec<String> {
    let deadline = clock.sleep(timeout);
    tokio::pin!(deadline);
    let mut stuck = Vec::new();
    for (name, job) in jobs {
        let answer = job.ping();
        tokio::pin!(answer);
        // An answer that is in counts, even once the deadline has passed.
        let answered = tokio::select! {
            biased;
            answered = &mut answer => answered,
            () = &mut deadline => false,
        };
        if !answered {
            stuck.push(name.clone());
        }
    }
    stuck
}

/// `/metrics` in the format the `Accept` header asks for (see [`Format::from_accept`]):
/// OpenMetrics to Prometheus (it asks for it first), the classic text format to promtool, curl
/// and any client that does not ask. A client that accepts neither gets the classic format, as
/// from Prometheus's own exporters, rather than 406.
async fn metrics(State(state): State<ApiState>, headers: HeaderMap) -> Response {
    let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok());
    let format = Format::from_accept(accept);
    (
        [
            (header::CONTENT_TYPE, format.content_type()),
            (header::VARY, "Accept"),
        ],
        state.metrics.encode_as(format),
    )
        .into_response()
}

/// This node's [`crate::cluster::ClusterStatus`] as JSON; 404 when it is not in a cluster.
async fn cluster(State(state): State<ApiState>) -> Response {
    match &state.cluster {
        Some(cluster) => Json(cluster.status()).into_response(),
        None => (
            StatusCode::NOT_FOUND,
            "not in a cluster: the jobs file has no [cluster]\n",
        )
            .into_response(),
    }
}

/// The job `name`'s control, if the daemon has that job.
pub(crate) fn lookup(state: &ApiState, name: &str) -> Option<JobControl> {
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
pub(crate) fn directory_snapshot(state: &ApiState) -> BTreeMap<String, JobControl> {
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

/// The job's last runs, newest first (`[daemon] history`; an empty list when it is 0).
async fn runs(State(state): State<ApiState>, Path(name): Path<String>) -> Response {
    match lookup(&state, &name) {
        Some(control) => Json(control.status.history()).into_response(),
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
        Some(FireResult::Skipped) => {
            (StatusCode::CONFLICT, Json(json!({ "error": REFUSED_RUN }))).into_response()
        }
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
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    /// Far longer than anything here should take, so that a slow machine never fails a test.
    const PATIENCE: Duration = Duration::from_secs(20);

    /// The endpoint with `directory` and `limits`, serving on a loopback port until the token is
    /// cancelled; the task ends when `serve` returns.
    async fn endpoint(
        limits: Limits,
        directory: Directory,
    ) -> (
        std::net::SocketAddr,
        CancellationToken,
        tokio::task::JoinHandle<()>,
    ) {
        endpoint_of(limits, directory, None).await
    }

    /// [`endpoint`] for a node of `cluster`.
    async fn endpoint_of(
        limits: Limits,
        directory: Directory,
        cluster: Option<Cluster>,
    ) -> (
        std::net::SocketAddr,
        CancellationToken,
        tokio::task::JoinHandle<()>,
    ) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind loopback");
        let addr = listener.local_addr().expect("addr");
        let state = ApiState {
            directory,
            draining: Arc::default(),
            metrics: Arc::default(),
            keeper: None,
            token: None,
            clock: Clock::system(),
            cluster,
            daemon: crate::status::SharedDaemonFacts::new(crate::status::DaemonFacts {
                config_path: "jobs.toml".into(),
                loaded_at: chrono::Utc::now(),
                started_at: chrono::Utc::now(),
                started: crate::clock::Instant::now(),
                timezone: chrono_tz::Tz::UTC,
                last_reload: None,
                stopping: None,
            }),
        };
        let stop = CancellationToken::new();
        let task = tokio::spawn(serve(listener, state, stop.clone(), limits));
        (addr, stop, task)
    }

    fn limits(max_connections: usize, header_read_timeout: Duration) -> Limits {
        Limits {
            header_read_timeout,
            request_timeout: Duration::from_secs(10),
            max_connections,
            shutdown_grace: Duration::from_millis(200),
        }
    }

    /// Reads until the server closes the connection (EOF or reset); panics if it stays open for
    /// the whole patience.
    async fn closed_by_server(stream: &mut TcpStream) -> Vec<u8> {
        let mut read = Vec::new();
        match tokio::time::timeout(PATIENCE, stream.read_to_end(&mut read)).await {
            Ok(_) => read,
            Err(_) => panic!("the server kept the connection open"),
        }
    }

    const HEALTHZ: &[u8] = b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n";

    /// Sends `/healthz` on `stream` (keep-alive) and returns the start of the answer.
    async fn healthz_on(stream: &mut TcpStream) -> String {
        stream.write_all(HEALTHZ).await.expect("write");
        let mut answer = vec![0u8; 1024];
        let n = tokio::time::timeout(PATIENCE, stream.read(&mut answer))
            .await
            .expect("an answer in time")
            .expect("read");
        String::from_utf8_lossy(&answer[..n]).into_owned()
    }

    /// `GET path` on a connection of its own: the whole answer.
    async fn get(addr: std::net::SocketAddr, path: &str) -> String {
        let mut stream = TcpStream::connect(addr).await.expect("connect");
        stream
            .write_all(
                format!("GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n").as_bytes(),
            )
            .await
            .expect("write");
        String::from_utf8_lossy(&closed_by_server(&mut stream).await).into_owned()
    }

    #[tokio::test]
    async fn cluster_shows_the_status_and_healthz_fails_only_on_differing_jobs_or_no_database() {
        let (addr, stop, task) =
            endpoint(limits(8, Duration::from_secs(60)), Directory::default()).await;
        let answer = get(addr, "/cluster").await;
        assert!(answer.starts_with("HTTP/1.1 404"), "{answer}");
        assert!(answer.contains("not in a cluster"), "{answer}");
        stop.cancel();
        task.await.expect("serve");

        let config = crate::config::parse(
            std::path::Path::new("jobs.toml"),
            "[cluster]\npostgres = \"postgres://tickd@db.invalid/app\"\nnode = \"web-2\"\n[jobs.a]\nevery = \"1s\"\nhandler = \"log\"\n",
            &crate::Handlers::with_builtins(),
        )
        .expect("valid");
        let cases = [
            // A healthy follower is healthy.
            (true, None, "HTTP/1.1 200", "ok"),
            (
                true,
                Some("this node's jobs differ from those of the owner (web-1)"),
                "HTTP/1.1 503",
                "jobs differ",
            ),
            (false, None, "HTTP/1.1 503", "cluster database unreachable"),
        ];
        for (connected, refusal, want, says) in cases {
            let cluster = Cluster::unjoined(&config, |s| {
                s.connected = connected;
                s.refusal = refusal.map(str::to_owned);
                s.round_trip_ms = Some(1.5);
            });
            let (addr, stop, task) = endpoint_of(
                limits(8, Duration::from_secs(60)),
                Directory::default(),
                Some(cluster),
            )
            .await;
            let answer = get(addr, "/healthz").await;
            assert!(
                answer.starts_with(want) && answer.contains(says),
                "{answer}"
            );
            let answer = get(addr, "/cluster").await;
            assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
            let body = answer.split_once("\r\n\r\n").map_or("", |(_, b)| b);
            let status: crate::cluster::ClusterStatus =
                serde_json::from_str(body).expect("a ClusterStatus");
            assert_eq!(
                (status.node.as_str(), status.owner, status.connected),
                ("web-2", false, connected)
            );
            assert_eq!(status.refusal.as_deref(), refusal);
            stop.cancel();
            task.await.expect("serve");
        }
    }

    #[test]
    fn the_connection_cap_leaves_the_reserve_and_half_the_rest_to_the_daemon() {
        assert_eq!(Limits::for_descriptor_limit(65_536).max_connections, 256);
        assert_eq!(Limits::for_descriptor_limit(1_024).max_connections, 256);
        assert_eq!(Limits::for_descriptor_limit(200).max_connections, 68);
        assert_eq!(Limits::for_descriptor_limit(10).max_connections, 1);
        assert_eq!(Limits::for_descriptor_limit(u64::MAX).max_connections, 256);
    }

    #[tokio::test]
    async fn a_connection_over_the_cap_is_closed_at_once_and_its_slot_is_reused() {
        let (addr, stop, task) =
            endpoint(limits(1, Duration::from_secs(60)), Directory::default()).await;
        let mut first = TcpStream::connect(addr).await.expect("connect");
        assert!(healthz_on(&mut first).await.starts_with("HTTP/1.1 200"));
        // The first holds the only slot (kept alive): the second is closed unanswered.
        let mut second = TcpStream::connect(addr).await.expect("connect");
        let _ = second.write_all(HEALTHZ).await;
        assert!(closed_by_server(&mut second).await.is_empty());
        // Once the first is gone its slot serves the next.
        drop(first);
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            let mut next = TcpStream::connect(addr).await.expect("connect");
            let _ = next
                .write_all(b"GET /healthz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
                .await;
            if closed_by_server(&mut next)
                .await
                .starts_with(b"HTTP/1.1 200")
            {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the slot was never freed"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        stop.cancel();
        task.await.expect("serve");
    }

    #[tokio::test]
    async fn a_partial_head_and_an_idle_keep_alive_connection_are_closed_after_the_header_timeout()
    {
        let (addr, stop, task) =
            endpoint(limits(8, Duration::from_millis(300)), Directory::default()).await;
        let mut slow = TcpStream::connect(addr).await.expect("connect");
        slow.write_all(b"GET /healthz HTTP/1.1\r\nHost: t\r\nX-Slow: ")
            .await
            .expect("write");
        let mut idle = TcpStream::connect(addr).await.expect("connect");
        assert!(healthz_on(&mut idle).await.starts_with("HTTP/1.1 200"));
        assert!(closed_by_server(&mut slow).await.is_empty());
        assert!(closed_by_server(&mut idle).await.is_empty());
        stop.cancel();
        task.await.expect("serve");
    }

    #[tokio::test]
    async fn a_request_not_answered_within_the_request_limit_gets_503() {
        let directory = Directory::default();
        // A job that never answers makes `/healthz` wait its own 2 s.
        let blocked = crate::job::JobHandle::for_test();
        let _held = blocked.control.hold_for_test();
        directory
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert("blocked".to_owned(), blocked.control.clone());
        let mut limits = limits(8, Duration::from_secs(60));
        limits.request_timeout = Duration::from_millis(100);
        let (addr, stop, task) = endpoint(limits, directory).await;
        let mut stream = TcpStream::connect(addr).await.expect("connect");
        stream
            .write_all(b"GET /healthz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
            .await
            .expect("write");
        let answer = String::from_utf8_lossy(&closed_by_server(&mut stream).await).into_owned();
        assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
        // The time limit's answer, not `/healthz`'s own (which names the job).
        assert!(!answer.contains("blocked"), "{answer}");
        stop.cancel();
        task.await.expect("serve");
    }

    #[tokio::test]
    async fn shutdown_closes_idle_and_slow_connections_instead_of_waiting_for_them() {
        // Timeouts far beyond the patience: only the shutdown can end these connections.
        let (addr, stop, task) =
            endpoint(limits(8, Duration::from_secs(3600)), Directory::default()).await;
        let mut slow = TcpStream::connect(addr).await.expect("connect");
        slow.write_all(b"GET /healthz HTTP/1.1\r\nHost: t\r\nX-Slow: ")
            .await
            .expect("write");
        let mut idle = TcpStream::connect(addr).await.expect("connect");
        assert!(healthz_on(&mut idle).await.starts_with("HTTP/1.1 200"));
        stop.cancel();
        tokio::time::timeout(PATIENCE, task)
            .await
            .expect("serve returned")
            .expect("serve");
        assert!(closed_by_server(&mut idle).await.is_empty());
        assert!(closed_by_server(&mut slow).await.is_empty());
        assert!(TcpStream::connect(addr).await.is_err(), "still listening");
    }

    #[tokio::test(start_paused = true)]
    async fn job_tasks_that_are_gone_or_blocked_are_reported() {
        let mut jobs = BTreeMap::new();
        let answering = crate::job::JobHandle::for_test();
        jobs.insert("answering".to_owned(), answering.control.clone());
        let gone = crate::job::JobHandle::for_test();
        jobs.insert("gone".to_owned(), gone.control.clone());
        drop(gone);
        let blocked = crate::job::JobHandle::for_test();
        let held = blocked.control.hold_for_test();
        jobs.insert("blocked".to_owned(), blocked.control.clone());

        let clock = Clock::manual(chrono::DateTime::UNIX_EPOCH);
        let started = tokio::time::Instant::now();
        let stuck = unresponsive_jobs(&jobs, Duration::from_secs(2), &clock).await;
        assert_eq!(stuck, ["blocked", "gone"]);
        // One timeout for all, not one per stuck job.
        let waited = started.elapsed();
        assert!(
            waited >= Duration::from_secs(2) && waited < Duration::from_secs(3),
            "{waited:?}"
        );

        // Released, the stuck job answers again.
        drop(held);
        jobs.remove("gone");
        let started = tokio::time::Instant::now();
        assert!(unresponsive_jobs(&jobs, Duration::from_secs(2), &clock)
            .await
            .is_empty());
        assert!(started.elapsed() < Duration::from_secs(1));
    }
}
