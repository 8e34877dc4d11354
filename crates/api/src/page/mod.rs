//! The status page at `/` (and `/status`): the platform's own ladders, then every target with
//! its instances, status and last 24 hours, kept live over server-sent events.
//!
//! Server-rendered HTML that works without script; one small script (`assets/status.js`)
//! swaps in what the feed sends. Everything is served from the binary, under a
//! `Content-Security-Policy` that allows no inline script or style and nothing from
//! elsewhere.
//!
//! - `fleet`: the targets, statuses and timelines, read from the store.
//! - `ladders`: the platform services' ladders, read from their `/ready`.
//! - `render`: the HTML.
//! - `live`: the loop that notices changes, and the event stream.
//! - `session`: who is looking (header or sign-in cookie) and what they may do.

mod fleet;
mod ladders;
pub(crate) mod live;
mod render;
pub(crate) mod session;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::header::{CACHE_CONTROL, CONTENT_TYPE, LOCATION, SET_COOKIE};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};

use crate::error::ApiError;
use crate::state::ApiState;
use render::View;

/// The page's `Content-Security-Policy`: only its own script, styles and images; no inline
/// script or style; no framing; forms post only to itself.
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
     connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

const VERSION: &str = env!("CARGO_PKG_VERSION");

/// The page's own files, served from the binary.
const ASSETS: [(&str, &str, &str); 3] = [
    ("status.css", "text/css; charset=utf-8", include_str!("assets/status.css")),
    ("status.js", "text/javascript; charset=utf-8", include_str!("assets/status.js")),
    ("icon.svg", "image/svg+xml", include_str!("assets/icon.svg")),
];

/// An asset's address, with the version so a new release is never served a cached old one.
pub(crate) fn asset_path(file: &str) -> String {
    format!("/status/assets/{file}?v={VERSION}")
}

/// The page's routes, each answered with the page's security headers.
pub(crate) fn routes() -> Router<ApiState> {
    Router::new()
        .route("/", get(show))
        .route("/status", get(show))
        .route("/status/events", get(events))
        .route("/status/signin", get(signin_form).post(signin))
        .route("/status/signout", post(signout))
        .route("/status/targets/{name}/{action}", post(control))
        .route("/status/assets/{file}", get(asset))
        .layer(axum::middleware::map_response(secure))
        // A 1,000-target page is megabytes of repetitive HTML; gzip makes it a tenth. (The
        // default predicate leaves event streams alone, so live events are never held back.)
        .layer(tower_http::compression::CompressionLayer::new())
}

/// Adds the security headers every page response carries.
async fn secure(mut response: Response) -> Response {
    let headers = response.headers_mut();
    headers.insert("content-security-policy", HeaderValue::from_static(CSP));
    headers.insert("x-content-type-options", HeaderValue::from_static("nosniff"));
    headers.insert("referrer-policy", HeaderValue::from_static("no-referrer"));
    headers.insert("x-frame-options", HeaderValue::from_static("DENY"));
    headers.entry(CACHE_CONTROL).or_insert(HeaderValue::from_static("no-store"));
    response
}

fn html(status: StatusCode, markup: maud::Markup) -> Response {
    (status, [(CONTENT_TYPE, "text/html; charset=utf-8")], markup.into_string()).into_response()
}

/// A refusal as a small page naming its stable code.
fn problem(status: StatusCode, code: &str, message: &str) -> Response {
    html(status, render::problem(status.as_u16(), code, message))
}

fn see_other(location: &str) -> Response {
    (StatusCode::SEE_OTHER, [(LOCATION, location.to_string())]).into_response()
}

/// `GET /` and `/status` (`?q=` a part of a name, `?page=`): the page, as of the feed's
/// latest read.
async fn show(State(state): State<ApiState>, headers: HeaderMap, RawQuery(query): RawQuery) -> Response {
    let viewer = state.sessions.viewer(&state.access, &headers).await;
    let Some(current) = state.feed.current() else {
        let mut response = html(StatusCode::SERVICE_UNAVAILABLE, render::starting());
        response.headers_mut().insert("retry-after", HeaderValue::from_static("1"));
        return response;
    };
    let event_id = state.feed.id(current.seq);
    let page = render::Page {
        fleet: &current.fleet,
        ladders: &current.ladders,
        alerts: &current.alerts,
        event_id: &event_id,
        version: VERSION,
        signed_in: viewer.signed_in,
    };
    let listing = render::Listing::from_query(query.as_deref());
    html(StatusCode::OK, render::page(&page, viewer.view, &listing))
}

/// `GET /status/events`: the live feed. The browser's `Last-Event-ID` (on a reconnect), or
/// `?since=` (the id the page was rendered at), says where to resume.
async fn events(State(state): State<ApiState>, headers: HeaderMap, RawQuery(query): RawQuery) -> Response {
    let viewer = state.sessions.viewer(&state.access, &headers).await;
    let since = query
        .as_deref()
        .and_then(|q| form_urlencoded::parse(q.as_bytes()).find(|(k, _)| k == "since").map(|(_, v)| v.into_owned()));
    let last = headers.get("last-event-id").and_then(|v| v.to_str().ok()).map(str::to_string).or(since);
    let lifecycle = std::sync::Arc::clone(&state.lifecycle);
    let draining = async move { lifecycle.drain_started().await };
    match live::stream(std::sync::Arc::clone(&state.feed), viewer.view, last, draining, VERSION) {
        Ok(sse) => {
            let mut response = sse.into_response();
            // A buffering proxy would hold events back.
            response.headers_mut().insert("x-accel-buffering", HeaderValue::from_static("no"));
            response
        }
        Err(live::Refused::Starting) => {
            problem(StatusCode::SERVICE_UNAVAILABLE, "starting", "The status page is starting.")
        }
        Err(live::Refused::Busy) => {
            let mut response =
                problem(StatusCode::SERVICE_UNAVAILABLE, "busy", "Too many live pages; retrying shortly.");
            response.headers_mut().insert(axum::http::header::RETRY_AFTER, HeaderValue::from_static("5"));
            response
        }
    }
}

/// `GET /status/signin`.
async fn signin_form() -> Response {
    html(StatusCode::OK, render::signin(None))
}

/// `POST /status/signin` (`token=…`, form-encoded): a good token starts a session.
async fn signin(
    State(state): State<ApiState>,
    peer: Option<axum::Extension<axum::extract::ConnectInfo<std::net::SocketAddr>>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if !session::same_origin(&headers) {
        return problem(StatusCode::FORBIDDEN, "cross_site", "Sign in from the status page itself.");
    }
    if let Err(wait) = state.sessions.attempt(peer.map(|p| p.0.0.ip())) {
        let mut response =
            problem(StatusCode::TOO_MANY_REQUESTS, "too_many_attempts", "Too many sign-in attempts; wait a minute.");
        if let Ok(value) = HeaderValue::from_str(&wait.to_string()) {
            response.headers_mut().insert(axum::http::header::RETRY_AFTER, value);
        }
        return response;
    }
    let token = form_urlencoded::parse(&body).find(|(k, _)| k == "token").map(|(_, v)| v.trim().to_string());
    let refuse = |status: StatusCode, why: &str| html(status, render::signin(Some(why)));
    match token {
        None => refuse(StatusCode::BAD_REQUEST, "Enter a token."),
        Some(token) if token.is_empty() => refuse(StatusCode::BAD_REQUEST, "Enter a token."),
        Some(token) if token.len() > session::MAX_TOKEN => refuse(StatusCode::BAD_REQUEST, "That token is too long."),
        Some(token) => {
            let Some(cookie) = state.sessions.start(&state.access, &token).await else {
                // Nothing about why: a guesser learns nothing.
                return refuse(StatusCode::UNAUTHORIZED, "That token is not accepted here.");
            };
            let mut response = see_other("/status");
            if let Ok(cookie) = HeaderValue::from_str(&cookie) {
                response.headers_mut().insert(SET_COOKIE, cookie);
            }
            response
        }
    }
}

/// `POST /status/signout`: ends the session (its cookie is refused from now on).
async fn signout(State(state): State<ApiState>, headers: HeaderMap) -> Response {
    if !session::same_origin(&headers) {
        return problem(StatusCode::FORBIDDEN, "cross_site", "Sign out from the status page itself.");
    }
    let mut response = see_other("/status");
    if let Ok(cookie) = HeaderValue::from_str(&state.sessions.end(&headers).await) {
        response.headers_mut().insert(SET_COOKIE, cookie);
    }
    response
}

/// `POST /status/targets/{name}/pause` and `/resume`: the page's controls (`targets:write`).
async fn control(
    State(state): State<ApiState>,
    Path((name, action)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    let paused = match action.as_str() {
        "pause" => true,
        "resume" => false,
        _ => return problem(StatusCode::NOT_FOUND, "not_found", "No such control."),
    };
    let viewer = state.sessions.viewer(&state.access, &headers).await;
    if viewer.signed_in && !session::same_origin(&headers) {
        return problem(StatusCode::FORBIDDEN, "cross_site", "Use the status page's own buttons.");
    }
    if viewer.view != View::Operator {
        return problem(StatusCode::FORBIDDEN, "insufficient_scope", "Pausing probing needs targets:write.");
    }
    if !caracal_store::target::valid_name(&name) {
        return problem(StatusCode::NOT_FOUND, "not_found", "No such target.");
    }
    match crate::targets::set_paused(&state.pool, &name, paused).await {
        Ok(_) => {
            tracing::info!(target = %name, paused, "probing changed from the status page");
            see_other(&format!("/status#t-{name}"))
        }
        Err(ApiError::NotFound(_)) => problem(StatusCode::NOT_FOUND, "not_found", "No such target."),
        Err(e) => e.into_response(),
    }
}

/// `GET /status/assets/{file}`.
async fn asset(Path(file): Path<String>) -> Response {
    match ASSETS.iter().find(|(name, _, _)| *name == file) {
        Some((_, content_type, body)) => {
            (StatusCode::OK, [(CONTENT_TYPE, *content_type), (CACHE_CONTROL, "public, max-age=86400")], *body)
                .into_response()
        }
        None => problem(StatusCode::NOT_FOUND, "not_found", "No such file."),
    }
}
