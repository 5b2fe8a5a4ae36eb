//! The status page (issue 19): server-rendered HTML on the endpoint, for a person with a
//! browser, through an SSH tunnel or behind a proxy.
//!
//! - `GET /`: the daemon (version, uptime, configuration and reloads, draining, the cluster)
//!   and every job, filtered (`?q=`) and sorted (`?sort=name|next|failures`) on the server.
//! - `GET /ui/jobs/{name}`: one job, its lateness histogram and recent runs' durations as inline
//!   SVG, its recent runs with their output, and buttons: `POST /ui/jobs/{name}/run`, `/pause`,
//!   `/resume`, which answer with a redirect back to the page saying what happened (`?done=`).
//! - `GET /login`, `POST /login`, `POST /logout`; `GET /ui/page.css`, the one stylesheet.
//!
//! **No JavaScript**, and a `Content-Security-Policy` that allows none: the page reads without
//! it, the buttons are forms, and it refreshes itself with `<meta http-equiv="refresh">` every
//! [`render::REFRESH_SECONDS`]. Not the login page, which has a form being filled in; the job
//! list's filter box would lose what is typed at a refresh, so the list has a "stop" link
//! (`refresh=0`, kept by the filter and sort links) for whoever wants to type at leisure.
//!
//! **Who may look.** The endpoint's token rule ([`crate::http`]): with `[daemon] http_token`
//! (required off loopback), every page but the login form and the stylesheet needs either the
//! token as `Authorization: Bearer` or the session cookie `/login` sets. The cookie's value is
//! an HMAC-SHA256 of a fixed text keyed by the token, not the token itself: it opens the page
//! but not the JSON API, and changing the token (a restart) ends every session. It is
//! `HttpOnly; SameSite=Strict; Path=/`, a session cookie (gone when the browser closes), and
//! `Secure` when the login came through a proxy that says it was HTTPS
//! (`X-Forwarded-Proto: https`): over an SSH tunnel the page is plain `http://localhost`, where
//! a `Secure` cookie would not be kept by every browser. Tokens and cookies are compared in
//! constant time ([`crate::http::same_secret`]).
//!
//! Without a token (loopback only), the page answers only to a `Host` that is an address or
//! `localhost`: a site that points its own name at 127.0.0.1 (DNS rebinding) would otherwise be
//! same-origin with the page in its visitors' browsers.
//!
//! **Cross-site requests.** Every `POST` here must come from this page: a browser's
//! `Sec-Fetch-Site` must be `same-origin`, or, from a browser that does not send it, the
//! `Origin` must be this host (`Host`, or `X-Forwarded-Host` behind a proxy); a `POST` with
//! neither is refused (403) too, so a page elsewhere cannot press the buttons even when no
//! token is set (loopback), where there is no cookie for `SameSite` to withhold. Scripts use the
//! JSON API (`POST /jobs/{name}/run` with the bearer token) instead.
//!
//! **The scheduler is not disturbed**: each page is rendered from copies ([`JobStatus`]
//! snapshots, the history's copy, a job's histograms read out of the metrics) taken under the
//! jobs' locks only for the copy; the HTML is written after, holding nothing.

pub mod render;

use axum::extract::{Path, Query, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Form, Router};

use crate::http::{directory_snapshot, lookup, same_secret, ApiState};
use crate::job::FireResult;
use crate::status::JobStatus;

use render::{DaemonView, ListQuery, Notice};

/// The stylesheet, embedded: the page loads nothing from anywhere else.
const STYLE: &str = include_str!("style.css");

/// The session cookie's name.
const COOKIE: &str = "tickd_session";

/// The security headers of every answer here: no script, no frame, nothing from elsewhere, forms
/// only to this origin.
const CSP: &str = "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; \
                   frame-ancestors 'none'; base-uri 'none'";

/// The page's routes, for [`crate::http`]'s router.
pub(crate) fn routes(state: ApiState) -> Router<ApiState> {
    let protected = Router::new()
        .route("/", get(index))
        .route("/ui/jobs/{name}", get(job))
        .route("/ui/jobs/{name}/{action}", post(control))
        .route("/logout", post(logout))
        .route_layer(middleware::from_fn_with_state(state, require_login));
    Router::new()
        .route("/login", get(login_form).post(login))
        .route("/ui/page.css", get(style))
        .merge(protected)
        .route_layer(middleware::from_fn(same_origin_posts))
        .layer(middleware::map_response(security_headers))
}

/// Adds [`CSP`] and its companions to an answer of the page.
async fn security_headers(mut response: Response) -> Response {
    let headers = response.headers_mut();
    for (name, value) in [
        (header::CONTENT_SECURITY_POLICY, CSP),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::X_FRAME_OPTIONS, "DENY"),
        (header::REFERRER_POLICY, "same-origin"),
    ] {
        headers.insert(name, HeaderValue::from_static(value));
    }
    headers
        .entry(header::CACHE_CONTROL)
        .or_insert(HeaderValue::from_static("no-store"));
    response
}

/// The HMAC-SHA256 of a fixed text keyed by `token`, in hex: the session cookie's value.
fn session_of(token: &str) -> String {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, token.as_bytes());
    let tag = ring::hmac::sign(&key, b"tickd status page session v1");
    tag.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

/// The value of the cookie `name` among the request's `Cookie` headers.
fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(key, _)| *key == name)
        .map(|(_, value)| value)
}

/// Whether the request may see the page: no token is set, or it carries the token (bearer) or
/// the session cookie.
fn logged_in(state: &ApiState, headers: &HeaderMap) -> bool {
    let Some(token) = &state.token else {
        return true;
    };
    let bearer = crate::http::bearer(headers)
        .is_some_and(|given| same_secret(given.as_bytes(), token.as_bytes()));
    bearer
        || cookie(headers, COOKIE)
            .is_some_and(|given| same_secret(given.as_bytes(), session_of(token).as_bytes()))
}

/// Whether `host` (a `Host` header) is an IP address or `localhost`, with or without a port: a
/// name no one else's DNS can point here. Without a token that is all the page answers to, so a
/// site that rebinds its own name to 127.0.0.1 (DNS rebinding) gets nothing: to its scripts
/// the page would be same-origin, cookies or not.
fn host_is_local(host: &str) -> bool {
    let name = match host.strip_prefix('[') {
        Some(v6) => {
            return v6
                .split(']')
                .next()
                .is_some_and(|ip| ip.parse::<std::net::Ipv6Addr>().is_ok())
        }
        None => host.rsplit_once(':').map_or(host, |(name, _port)| name),
    };
    name.parse::<std::net::Ipv4Addr>().is_ok()
        || name.eq_ignore_ascii_case("localhost")
        || name.to_ascii_lowercase().ends_with(".localhost")
}

/// Lets a logged-in request through; sends a `GET` to the login form, refuses anything else.
async fn require_login(State(state): State<ApiState>, request: Request, next: Next) -> Response {
    if state.token.is_none() {
        let host = request
            .headers()
            .get(header::HOST)
            .and_then(|v| v.to_str().ok());
        if !host.is_some_and(host_is_local) {
            return (
                StatusCode::FORBIDDEN,
                "without [daemon] http_token the status page answers only to an address or localhost (Host); set a token to serve it under a name\n",
            )
                .into_response();
        }
    }
    if logged_in(&state, request.headers()) {
        return next.run(request).await;
    }
    if request.method() == Method::GET {
        let here = request.uri().path_and_query().map_or("/", |p| p.as_str());
        return see_other(&format!("/login?next={}", encode(here)));
    }
    (
        StatusCode::UNAUTHORIZED,
        "log in first: the session cookie (/login) or the bearer token is required\n",
    )
        .into_response()
}

/// Whether a `POST` comes from this page (see the module's documentation); `Err` says why not.
pub(crate) fn same_origin(headers: &HeaderMap) -> Result<(), &'static str> {
    let text = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    if let Some(site) = text("sec-fetch-site") {
        return if site == "same-origin" {
            Ok(())
        } else {
            Err("refused: a cross-site request (Sec-Fetch-Site) may not use the page's buttons\n")
        };
    }
    let Some(origin) = text("origin") else {
        return Err("refused: a form post must say where it comes from (Origin or Sec-Fetch-Site); scripts use the JSON API (POST /jobs/NAME/run)\n");
    };
    let origin_host = origin
        .strip_prefix("http://")
        .or_else(|| origin.strip_prefix("https://"));
    let ours = [text("host"), text("x-forwarded-host")];
    match origin_host {
        Some(host) if ours.contains(&Some(host)) => Ok(()),
        _ => Err("refused: the request's Origin is not this page's\n"),
    }
}

/// Refuses a `POST` that does not come from this page (403).
async fn same_origin_posts(request: Request, next: Next) -> Response {
    if request.method() == Method::POST {
        if let Err(why) = same_origin(request.headers()) {
            return (StatusCode::FORBIDDEN, why).into_response();
        }
    }
    next.run(request).await
}

/// `text` percent-encoded for a query value.
fn encode(text: &str) -> String {
    percent_encoding::utf8_percent_encode(text, percent_encoding::NON_ALPHANUMERIC).to_string()
}

/// 303 See Other to `to` (a path here).
fn see_other(to: &str) -> Response {
    let location = HeaderValue::from_str(to).unwrap_or(HeaderValue::from_static("/"));
    (StatusCode::SEE_OTHER, [(header::LOCATION, location)]).into_response()
}

/// An HTML answer.
fn html(status: StatusCode, body: String) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        body,
    )
        .into_response()
}

/// `next` if it is a path on this site, else `/` (no open redirect to `//elsewhere`).
fn local_path(next: &str) -> &str {
    if next.starts_with('/') && !next.starts_with("//") && !next.starts_with("/\\") {
        next
    } else {
        "/"
    }
}

/// What the pages show of the daemon, copied now.
fn daemon_view(state: &ApiState) -> DaemonView {
    let facts = state.daemon.snapshot();
    DaemonView {
        version: env!("CARGO_PKG_VERSION"),
        uptime: state.clock.now().saturating_duration_since(facts.started),
        facts,
        draining: state.draining.load(std::sync::atomic::Ordering::Relaxed),
        cluster: state.cluster.as_ref().map(|c| c.status()),
        login: state.token.is_some(),
        now: state.clock.wall_now(),
    }
}

async fn style() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/css; charset=utf-8"),
            (header::CACHE_CONTROL, "max-age=300"),
        ],
        STYLE,
    )
        .into_response()
}

async fn index(State(state): State<ApiState>, Query(query): Query<ListQuery>) -> Response {
    // Copies first; the HTML is written holding nothing.
    let jobs: Vec<(String, JobStatus)> = directory_snapshot(&state)
        .into_iter()
        .map(|(name, control)| (name, control.status.snapshot()))
        .collect();
    let view = daemon_view(&state);
    html(StatusCode::OK, render::overview(&view, &jobs, &query))
}

/// `?done=` after a button, and `?run=` with the run it started.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(default)]
struct JobQuery {
    done: Option<String>,
    run: Option<u64>,
}

impl JobQuery {
    /// The notice named; anything else shows none (the page never echoes the query).
    fn notice(&self) -> Option<Notice> {
        match self.done.as_deref()? {
            "started" => Some(Notice::Started(self.run.unwrap_or(0))),
            "queued" => Some(Notice::Queued),
            "refused" => Some(Notice::Refused),
            "paused" => Some(Notice::Paused),
            "resumed" => Some(Notice::Resumed),
            _ => None,
        }
    }
}

/// The page of a job that does not exist (404).
fn no_such_job(name: &str) -> Response {
    html(
        StatusCode::NOT_FOUND,
        format!(
            "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>No such job · tickd</title>\
             <link rel=\"stylesheet\" href=\"/ui/page.css\"></head><body><main><h1>No job named “{}”</h1>\
             <p><a href=\"/\">All jobs</a></p></main></body></html>\n",
            render::Esc(name)
        ),
    )
}

async fn job(
    State(state): State<ApiState>,
    Path(name): Path<String>,
    Query(query): Query<JobQuery>,
) -> Response {
    let Some(control) = lookup(&state, &name) else {
        return no_such_job(&name);
    };
    let status = control.status.snapshot();
    let runs = control.status.history();
    let histograms = state.metrics.job_histograms(&name);
    let view = daemon_view(&state);
    html(
        StatusCode::OK,
        render::job_page(
            &view,
            &name,
            &status,
            &runs,
            histograms.as_ref(),
            query.notice(),
        ),
    )
}

/// A button: run now, pause or resume; back to the job's page saying what happened.
async fn control(
    State(state): State<ApiState>,
    Path((name, action)): Path<(String, String)>,
) -> Response {
    let Some(control) = lookup(&state, &name) else {
        return no_such_job(&name);
    };
    let done = match action.as_str() {
        "run" => match control.run_now().await {
            Some(FireResult::Started(run_id)) => format!("started&run={}", run_id.0),
            Some(FireResult::Queued) => "queued".to_owned(),
            Some(FireResult::Skipped) => "refused".to_owned(),
            None => return no_such_job(&name),
        },
        "pause" | "resume" => {
            let paused = action == "pause";
            if !control.set_paused(paused) {
                return no_such_job(&name);
            }
            if paused { "paused" } else { "resumed" }.to_owned()
        }
        _ => return (StatusCode::NOT_FOUND, "no such button\n").into_response(),
    };
    see_other(&format!("/ui/jobs/{}?done={done}", encode(&name)))
}

/// `?next=` of the login form.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(default)]
struct LoginQuery {
    next: String,
}

async fn login_form(State(state): State<ApiState>, Query(query): Query<LoginQuery>) -> Response {
    let next = local_path(&query.next);
    if state.token.is_none() {
        // Nothing to log in to.
        return see_other(next);
    }
    html(StatusCode::OK, render::login_page(false, next))
}

/// The login form's fields.
#[derive(Debug, serde::Deserialize)]
struct LoginForm {
    token: String,
    #[serde(default)]
    next: String,
}

async fn login(
    State(state): State<ApiState>,
    headers: HeaderMap,
    Form(form): Form<LoginForm>,
) -> Response {
    let next = local_path(&form.next);
    let Some(token) = &state.token else {
        return see_other(next);
    };
    if !same_secret(form.token.as_bytes(), token.as_bytes()) {
        tracing::info!("status page: a login with a wrong token");
        return html(StatusCode::UNAUTHORIZED, render::login_page(true, next));
    }
    let https = headers
        .get("x-forwarded-proto")
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"https"));
    let cookie = format!(
        "{COOKIE}={}; Path=/; HttpOnly; SameSite=Strict{}",
        session_of(token),
        if https { "; Secure" } else { "" }
    );
    let mut response = see_other(next);
    if let Ok(value) = HeaderValue::from_str(&cookie) {
        response.headers_mut().insert(header::SET_COOKIE, value);
    }
    response
}

async fn logout() -> Response {
    let mut response = see_other("/login");
    response.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_static("tickd_session=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(*name, HeaderValue::from_str(value).expect("value"));
        }
        map
    }

    #[test]
    fn a_post_must_come_from_this_page() {
        let ok = |pairs| same_origin(&headers(pairs)).is_ok();
        assert!(ok(&[("sec-fetch-site", "same-origin")]));
        assert!(!ok(&[("sec-fetch-site", "cross-site")]));
        assert!(!ok(&[("sec-fetch-site", "same-site")]));
        // Sec-Fetch-Site decides when a browser sends it, whatever Origin says.
        assert!(!ok(&[
            ("sec-fetch-site", "cross-site"),
            ("origin", "http://localhost:9187"),
            ("host", "localhost:9187")
        ]));
        assert!(ok(&[
            ("origin", "http://localhost:9187"),
            ("host", "localhost:9187")
        ]));
        assert!(!ok(&[
            ("origin", "http://evil.example"),
            ("host", "localhost:9187")
        ]));
        assert!(!ok(&[("origin", "null"), ("host", "localhost:9187")]));
        // Behind a proxy that rewrites Host.
        assert!(ok(&[
            ("origin", "https://tickd.example.org"),
            ("host", "127.0.0.1:9187"),
            ("x-forwarded-host", "tickd.example.org")
        ]));
        // Neither header: not from a browser's form; refused.
        assert!(!ok(&[("host", "localhost:9187")]));
    }

    #[test]
    fn the_session_is_derived_from_the_token_and_read_from_the_cookies() {
        let session = session_of("s3cret");
        assert_eq!(session.len(), 64);
        assert_ne!(session, session_of("other"));
        assert!(!session.contains("s3cret"));
        let map = headers(&[("cookie", "a=1; tickd_session=abc"), ("cookie", "b=2")]);
        assert_eq!(cookie(&map, COOKIE), Some("abc"));
        assert_eq!(cookie(&map, "b"), Some("2"));
        assert_eq!(cookie(&map, "c"), None);
    }

    #[test]
    fn without_a_token_the_page_answers_only_to_addresses_and_localhost() {
        for host in [
            "127.0.0.1:9187",
            "localhost:9187",
            "LOCALHOST",
            "[::1]:9187",
            "10.0.0.2",
            "a.localhost:1",
        ] {
            assert!(host_is_local(host), "{host}");
        }
        for host in [
            "evil.example:9187",
            "evil.example",
            "127.0.0.1.nip.io:80",
            "[evil]:1",
            "",
        ] {
            assert!(!host_is_local(host), "{host}");
        }
    }

    #[test]
    fn next_is_a_local_path_only() {
        assert_eq!(
            local_path("/ui/jobs/x?done=paused"),
            "/ui/jobs/x?done=paused"
        );
        assert_eq!(local_path("//evil.example/"), "/");
        assert_eq!(local_path("/\\evil.example"), "/");
        assert_eq!(local_path("https://evil.example/"), "/");
        assert_eq!(local_path(""), "/");
    }
}
