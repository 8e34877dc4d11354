//! The endpoints every service gets: `/health`, `/ready`, `/ready/{check}`, `/metrics` and
//! `/metrics.json`. None of them touches a dependency: readiness reads the evaluator's
//! snapshot, metrics encode the registry.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use arc_swap::ArcSwapOption;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use prometheus_client::registry::Registry;
use serde_json::{Value, json};

use crate::auth::BearerAuth;
use crate::evaluator::Evaluator;
use crate::ladder::{self, CheckReport, Status};
use crate::lifecycle::Lifecycle;

/// Routes of the probe endpoints; the HTTP metrics layer skips these.
pub(crate) const PROBE_ROUTES: [&str; 5] = ["/health", "/ready", "/ready/{check}", "/metrics", "/metrics.json"];

const HEALTH_JSON: &str = "application/health+json";
const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// What the probe handlers read.
#[derive(Debug)]
pub(crate) struct Probes {
    pub(crate) service: &'static str,
    pub(crate) version: &'static str,
    /// Shown in bodies so `caracal status` can tell a dev deployment from a production one.
    pub(crate) mode: &'static str,
    pub(crate) evaluator: Arc<Evaluator>,
    pub(crate) lifecycle: Arc<Lifecycle>,
    pub(crate) auth: BearerAuth,
    pub(crate) registry: Registry,
    /// `/health` bodies, rendered once: passing, failing.
    pub(crate) health_bodies: [Bytes; 2],
    /// The latest rendered `/ready` bodies.
    pub(crate) rendered: ArcSwapOption<Rendered>,
}

impl Probes {
    /// Probe state for `service` at `version`.
    pub(crate) fn new(
        service: &'static str,
        version: &'static str,
        mode: &'static str,
        evaluator: Arc<Evaluator>,
        lifecycle: Arc<Lifecycle>,
        auth: BearerAuth,
        registry: Registry,
    ) -> Self {
        let body = |status: &str| {
            Bytes::from(json!({ "status": status, "service": service, "version": version, "mode": mode }).to_string())
        };
        let health_bodies = [body("pass"), body("fail")];
        Self {
            service,
            version,
            mode,
            evaluator,
            lifecycle,
            auth,
            registry,
            health_bodies,
            rendered: ArcSwapOption::empty(),
        }
    }
}

/// The probe endpoints, with their state.
pub(crate) fn routes(probes: Arc<Probes>) -> Router {
    Router::new()
        .route(PROBE_ROUTES[0], get(health))
        .route(PROBE_ROUTES[1], get(ready))
        .route(PROBE_ROUTES[2], get(ready_one))
        .route(PROBE_ROUTES[3], get(metrics_text))
        .route(PROBE_ROUTES[4], get(metrics_json))
        .with_state(probes)
}

async fn health(State(p): State<Arc<Probes>>) -> Response {
    if p.lifecycle.is_unhealthy() {
        typed(StatusCode::SERVICE_UNAVAILABLE, HEALTH_JSON, p.health_bodies[1].clone())
    } else {
        typed(StatusCode::OK, HEALTH_JSON, p.health_bodies[0].clone())
    }
}

async fn ready(State(p): State<Arc<Probes>>, RawQuery(query): RawQuery, headers: HeaderMap) -> Response {
    let details = p.auth.allows_details(&headers);
    let verbose =
        query.as_deref().is_some_and(|q| q.split('&').any(|kv| kv == "verbose" || kv.starts_with("verbose=")));
    let draining = p.lifecycle.is_draining();
    if verbose || draining {
        // Rare answers: rendered on demand.
        let snapshot = p.evaluator.snapshot();
        let report = ladder::report(&snapshot.states, Instant::now());
        let status = if draining { Status::Fail } else { report.status };
        let code = if status == Status::Fail { StatusCode::SERVICE_UNAVAILABLE } else { StatusCode::OK };
        if verbose {
            return typed(code, "text/plain; charset=utf-8", verbose_text(&report, status, draining, details).into());
        }
        let mut body = ready_json(&p, &report, details);
        body["status"] = json!("fail");
        body["output"] = json!("draining");
        return health_json(code, body);
    }
    let rendered = p.rendered();
    typed(rendered.code, HEALTH_JSON, if details { rendered.detailed.clone() } else { rendered.public.clone() })
}

impl Probes {
    /// The status `/ready` answers now (without draining), from the same cached render.
    pub(crate) fn ready_code(&self) -> StatusCode {
        self.rendered().code
    }

    /// The `/ready` bodies for the current snapshot, rendered once per snapshot (and again when
    /// a check turns stale), so each probe in a storm costs a pointer load and a cheap clone.
    fn rendered(&self) -> Arc<Rendered> {
        let now = Instant::now();
        let snapshot = self.evaluator.snapshot();
        if let Some(cached) = self.rendered.load_full()
            && cached.generation == snapshot.generation
            && cached.fresh_until.is_none_or(|until| now < until)
        {
            return cached;
        }
        let report = ladder::report(&snapshot.states, now);
        let code = if report.status == Status::Fail { StatusCode::SERVICE_UNAVAILABLE } else { StatusCode::OK };
        let rendered = Arc::new(Rendered {
            generation: snapshot.generation,
            fresh_until: ladder::fresh_until(&snapshot.states),
            code,
            public: ready_json(self, &report, false).to_string().into(),
            detailed: ready_json(self, &report, true).to_string().into(),
        });
        self.rendered.store(Some(Arc::clone(&rendered)));
        rendered
    }
}

/// `/ready` bodies for one snapshot.
#[derive(Debug)]
pub(crate) struct Rendered {
    generation: u64,
    fresh_until: Option<Instant>,
    code: StatusCode,
    public: Bytes,
    detailed: Bytes,
}

fn ready_json(p: &Probes, report: &ladder::Report<'_>, details: bool) -> Value {
    let checks: BTreeMap<&str, Value> =
        report.checks.iter().map(|c| (c.state.name.as_str(), json!([check_json(c, details)]))).collect();
    json!({ "status": report.status.as_str(), "service": p.service, "version": p.version, "mode": p.mode, "checks": checks })
}

fn verbose_text(report: &ladder::Report<'_>, status: Status, draining: bool, details: bool) -> String {
    let mut text = String::new();
    if draining {
        text.push_str("[-]draining\n");
    }
    for c in &report.checks {
        text.push_str(&verbose_line(c, details));
    }
    text.push_str(if status == Status::Fail { "ready check failed\n" } else { "ready check passed\n" });
    text
}

async fn ready_one(State(p): State<Arc<Probes>>, Path(name): Path<String>, headers: HeaderMap) -> Response {
    let snapshot = p.evaluator.snapshot();
    let report = ladder::report(&snapshot.states, Instant::now());
    let Some(c) = report.checks.iter().find(|c| c.state.name == name) else {
        return crate::error_response(StatusCode::NOT_FOUND, "unknown_check", "no check of that name");
    };
    let code = if c.status == Status::Pass { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    let details = p.auth.allows_details(&headers);
    health_json(
        code,
        json!({ "status": c.status.as_str(), "service": p.service, "checks": { name: [check_json(c, details)] } }),
    )
}

async fn metrics_text(State(p): State<Arc<Probes>>, headers: HeaderMap) -> Response {
    if !p.auth.allows(&headers) {
        return unauthorized();
    }
    match encode(&p.registry) {
        Ok(text) => typed(StatusCode::OK, OPENMETRICS, text.into()),
        Err(()) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}

async fn metrics_json(State(p): State<Arc<Probes>>, headers: HeaderMap) -> Response {
    if !p.auth.allows(&headers) {
        return unauthorized();
    }
    match encode(&p.registry) {
        Ok(text) => {
            typed(StatusCode::OK, "application/json", crate::metrics_json::from_openmetrics(&text).to_string().into())
        }
        Err(()) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}

fn encode(registry: &Registry) -> Result<String, ()> {
    let mut text = String::with_capacity(16 * 1024);
    prometheus_client::encoding::text::encode(&mut text, registry)
        .map_err(|_| tracing::error!("encoding metrics failed"))?;
    Ok(text)
}

/// 401 with `WWW-Authenticate: Bearer`, and nothing about why.
fn unauthorized() -> Response {
    crate::error_response(StatusCode::UNAUTHORIZED, "unauthorized", "a valid bearer token is required")
}

fn check_json(c: &CheckReport<'_>, details: bool) -> Value {
    let s = c.state;
    let mut v = json!({
        "status": c.status.as_str(),
        "componentType": s.component_type,
        "rung": s.rung,
        "required": s.required,
    });
    if let Some(time) = s.time {
        v["time"] = json!(humantime::format_rfc3339_millis(time).to_string());
    }
    if details {
        if let Some(value) = s.observed.value {
            v["observedValue"] = json!(value);
        }
        if let Some(unit) = s.observed.unit {
            v["observedUnit"] = json!(unit);
        }
        if let Some(output) = &c.output {
            v["output"] = json!(output);
        }
    }
    v
}

fn verbose_line(c: &CheckReport<'_>, details: bool) -> String {
    let name = &c.state.name;
    let reason = if details { c.output.clone().unwrap_or_default() } else { "reason withheld".into() };
    match c.status {
        Status::Pass => format!("[+]{name} ok\n"),
        Status::Warn => format!("[-]{name} warn (not required): {reason}\n"),
        Status::Fail => format!("[-]{name} failed: {reason}\n"),
        Status::Skipped => format!("[-]{name} skipped\n"),
    }
}

fn health_json(code: StatusCode, body: Value) -> Response {
    typed(code, HEALTH_JSON, body.to_string().into())
}

/// A response with exactly this content type, never cached by a proxy.
fn typed(code: StatusCode, content_type: &'static str, body: Bytes) -> Response {
    let mut response = (code, body).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}
