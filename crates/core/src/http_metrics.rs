//! The golden-signal layer: requests by route and status, latency by route, requests in flight.
//!
//! `route` is the matched route template (`/v1/targets/{name}`), never the raw path, so label
//! cardinality stays bounded; requests no route matched are `unmatched`. The probe endpoints
//! are left out: a probe storm would otherwise drown the service's own traffic.

use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::Method;
use axum::middleware::Next;
use axum::response::Response;

use crate::metrics::{Metrics, RequestLabels, RouteLabels};
use crate::probes::PROBE_ROUTES;

/// Records one request; used with `axum::middleware::from_fn_with_state`.
pub(crate) async fn track(State(metrics): State<Metrics>, request: Request, next: Next) -> Response {
    let route = request.extensions().get::<MatchedPath>().map_or("unmatched", MatchedPath::as_str).to_string();
    if PROBE_ROUTES.contains(&route.as_str()) {
        return next.run(request).await;
    }
    let method = method_label(request.method());
    let started = Instant::now();
    // A guard, so the gauge comes down even if the request future is dropped mid-way
    // (client gone, timeout).
    let _in_flight = InFlight::enter(&metrics);
    let response = next.run(request).await;
    let elapsed = started.elapsed().as_secs_f64();
    metrics
        .http_requests
        .get_or_create(&RequestLabels {
            method: method.into(),
            route: route.clone(),
            status: response.status().as_u16(),
        })
        .inc();
    metrics.http_duration.get_or_create(&RouteLabels { method: method.into(), route }).observe(elapsed);
    response
}

/// Known methods by name; anything else is `OTHER`, so a client cannot mint label values.
fn method_label(method: &Method) -> &'static str {
    known_method(method).unwrap_or("OTHER")
}

/// The standard methods by name (RFC 9110's and `PATCH`); `None` for any other, which metric
/// labels and span names must not take from a client.
pub(crate) fn known_method(method: &Method) -> Option<&'static str> {
    Some(match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::PATCH => "PATCH",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        Method::CONNECT => "CONNECT",
        Method::TRACE => "TRACE",
        _ => return None,
    })
}

struct InFlight<'a>(&'a Metrics);

impl<'a> InFlight<'a> {
    fn enter(metrics: &'a Metrics) -> Self {
        metrics.http_in_flight.inc();
        Self(metrics)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.http_in_flight.dec();
    }
}
