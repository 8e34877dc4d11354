//! The standard tower layers, composed in one place.

use std::time::Duration;

use axum::Router;
use axum::http::{HeaderValue, Request, StatusCode, header};
use axum::response::{IntoResponse, Response};
use tower::ServiceBuilder;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::classify::{ServerErrorsAsFailures, ServerErrorsFailureClass, SharedClassifier};
use tower_http::limit::RequestBodyLimitLayer;
use tower_http::request_id::{MakeRequestId, PropagateRequestIdLayer, RequestId, SetRequestIdLayer};
use tower_http::timeout::TimeoutLayer;
use tower_http::trace::TraceLayer;

use crate::config::HttpConfig;
use crate::metrics::Metrics;

/// Wraps a service's own routes (and the fallback) in the standard stack. Listed outermost
/// first; a request passes them top to bottom:
///
/// 1. `SetRequestId`: every request gets an `x-request-id` (a caller's own is kept), before
///    anything logs, so every line about the request can carry it.
/// 2. `PropagateRequestId`: the same id goes back on the response, for support tickets.
/// 3. `Trace`: one SERVER span per request, `{method} {route}`, continuing the caller's W3C
///    trace context (see [`crate::telemetry`]). Outside the metrics layer so its timing
///    includes it.
/// 4. HTTP metrics: outside catch-panic and timeout, so a panic counts as the 500 it becomes
///    and a timeout as its 408.
/// 5. `CatchPanic`: a panicking handler answers 500 with a stable code, no details.
/// 6. `Timeout`: a handler slower than `http.request_timeout` answers 408.
/// 7. Closing after a 413: a refused body may still be arriving, so the connection cannot
///    serve another request; the answer says so (see [`close_after_refused_body`]).
/// 8. `RequestBodyLimit`: bodies over `http.body_limit_bytes` answer 413 before a handler
///    buffers them.
///
/// The probe endpoints are not wrapped in this stack: they are not traced (a probe every
/// second per replica is noise) and are excluded from the golden signals.
pub(crate) fn service_stack(routes: Router, metrics: Metrics, http: &HttpConfig) -> Router {
    routes.layer(
        ServiceBuilder::new()
            .layer(SetRequestIdLayer::x_request_id(MakeId))
            .layer(PropagateRequestIdLayer::x_request_id())
            .layer(trace_layer())
            .layer(axum::middleware::from_fn_with_state(metrics, crate::http_metrics::track))
            .layer(CatchPanicLayer::custom(panic_response))
            .layer(TimeoutLayer::with_status_code(StatusCode::REQUEST_TIMEOUT, http.request_timeout))
            .layer(axum::middleware::map_response(close_after_refused_body))
            .layer(RequestBodyLimitLayer::new(http.body_limit_bytes)),
    )
}

/// The probe endpoints get no layers at all: they never wait on anything (a timeout would
/// only add a timer per request to the hottest path in the process), hold no `unwrap`, and
/// a panic in a handler would end only that connection's task, never the process. Only
/// `telemetry.trace_probes` gives them spans, for an operator chasing a probe problem.
pub(crate) fn probe_stack(routes: Router, traced: bool) -> Router {
    if traced { routes.layer(probe_trace_layer()) } else { routes }
}

/// Request spans as [`crate::telemetry`] names them.
type Tracing = TraceLayer<
    SharedClassifier<ServerErrorsAsFailures>,
    fn(&Request<axum::body::Body>) -> tracing::Span,
    tower_http::trace::DefaultOnRequest,
    fn(&Response, Duration, &tracing::Span),
    tower_http::trace::DefaultOnBodyChunk,
    tower_http::trace::DefaultOnEos,
    fn(ServerErrorsFailureClass, Duration, &tracing::Span),
>;

/// Request spans; a 5xx of the service's own routes is also logged as an error.
fn trace_layer() -> Tracing {
    traced(|class, latency, _| tracing::error!(%class, latency_ms = latency.as_secs_f64() * 1000.0, "response failed"))
}

/// Request spans for the probe endpoints: an unready `/ready` answers 503 by design, which is
/// no error to log (the span still records it).
fn probe_trace_layer() -> Tracing {
    traced(|_, _, _| {})
}

fn traced(on_failure: fn(ServerErrorsFailureClass, Duration, &tracing::Span)) -> Tracing {
    TraceLayer::new_for_http()
        .make_span_with(crate::telemetry::server_span as fn(&Request<axum::body::Body>) -> tracing::Span)
        .on_response(crate::telemetry::on_response as fn(&Response, Duration, &tracing::Span))
        .on_failure(on_failure)
}

/// Adds `Connection: close` to a 413, whoever answered it (the body limit here, or a handler
/// that stopped reading at its own limit). The rest of the refused body may still be on its
/// way, and hyper closes such a connection after the answer instead of reading it; without
/// the header the client would take the connection back into its pool and send its next
/// request on it, to see that request fail unanswered. (HTTP/2 has no such header; hyper
/// leaves it out there, and a refused stream does not end the connection.)
async fn close_after_refused_body<B>(mut response: axum::http::Response<B>) -> axum::http::Response<B> {
    if response.status() == StatusCode::PAYLOAD_TOO_LARGE {
        response.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    response
}

fn panic_response(_: Box<dyn std::any::Any + Send + 'static>) -> Response {
    tracing::error!("a request handler panicked");
    let body = r#"{"error":{"code":"internal","message":"internal error"}}"#;
    (StatusCode::INTERNAL_SERVER_ERROR, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}

/// Random 64-bit request ids, hex-encoded.
#[derive(Debug, Clone, Copy)]
struct MakeId;

impl MakeRequestId for MakeId {
    fn make_request_id<B>(&mut self, _: &Request<B>) -> Option<RequestId> {
        HeaderValue::from_str(&format!("{:016x}", fastrand::u64(..))).ok().map(RequestId::new)
    }
}
