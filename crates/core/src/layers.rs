//! The standard tower layers, composed in one place.

use axum::Router;
use axum::http::{HeaderValue, Request, StatusCode, header};
use axum::response::{IntoResponse, Response};
use tower::ServiceBuilder;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::limit::RequestBodyLimitLayer;
use tower_http::request_id::{MakeRequestId, PropagateRequestIdLayer, RequestId, SetRequestIdLayer};
use tower_http::timeout::TimeoutLayer;
use tower_http::trace::{DefaultMakeSpan, DefaultOnResponse, TraceLayer};

use crate::config::HttpConfig;
use crate::metrics::Metrics;

/// Wraps a service's own routes (and the fallback) in the standard stack. Listed outermost
/// first; a request passes them top to bottom:
///
/// 1. `SetRequestId`: every request gets an `x-request-id` (a caller's own is kept), before
///    anything logs, so every line about the request can carry it.
/// 2. `PropagateRequestId`: the same id goes back on the response, for support tickets.
/// 3. `Trace`: one span per request. Outside the metrics layer so its timing includes it.
/// 4. HTTP metrics: outside catch-panic and timeout, so a panic counts as the 500 it becomes
///    and a timeout as its 408.
/// 5. `CatchPanic`: a panicking handler answers 500 with a stable code, no details.
/// 6. `Timeout`: a handler slower than `http.request_timeout` answers 408.
/// 7. `RequestBodyLimit`: bodies over `http.body_limit_bytes` answer 413 before a handler
///    buffers them.
///
/// The probe endpoints are not wrapped in this stack: they are not traced (a probe every
/// second per replica is noise) and are excluded from the golden signals.
pub(crate) fn service_stack(routes: Router, metrics: Metrics, http: &HttpConfig) -> Router {
    routes.layer(
        ServiceBuilder::new()
            .layer(SetRequestIdLayer::x_request_id(MakeId))
            .layer(PropagateRequestIdLayer::x_request_id())
            .layer(
                TraceLayer::new_for_http()
                    .make_span_with(DefaultMakeSpan::new().level(tracing::Level::INFO))
                    .on_response(DefaultOnResponse::new().level(tracing::Level::INFO)),
            )
            .layer(axum::middleware::from_fn_with_state(metrics, crate::http_metrics::track))
            .layer(CatchPanicLayer::custom(panic_response))
            .layer(TimeoutLayer::with_status_code(StatusCode::REQUEST_TIMEOUT, http.request_timeout))
            .layer(RequestBodyLimitLayer::new(http.body_limit_bytes)),
    )
}

/// The probe endpoints get no layers at all: they never wait on anything (a timeout would
/// only add a timer per request to the hottest path in the process), hold no `unwrap`, and
/// a panic in a handler would end only that connection's task, never the process.
pub(crate) fn probe_stack(routes: Router) -> Router {
    routes
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
