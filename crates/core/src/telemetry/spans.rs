//! The spans Caracal makes, named and attributed after the OpenTelemetry semantic conventions,
//! and the W3C trace context they carry across processes.
//!
//! Server spans exist whenever tracing does (their fields also label log lines). The other
//! kinds are built only while spans are exported ([`super::exporting`]), and database and
//! Redis spans only inside another span: a background loop's query is not worth a trace of
//! its own.

use std::borrow::Cow;
use std::time::Duration;

use axum::extract::MatchedPath;
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response, Uri};
use opentelemetry::propagation::{Extractor, Injector};
use opentelemetry::trace::{Span as _, SpanContext, SpanKind, Status, TraceContextExt, Tracer as _};
use opentelemetry::{Context, KeyValue};
use tracing::Span;
use tracing::field::Empty;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use super::exporting;

/// The SERVER span of one request: `{method} {route}` with the route template, never the raw
/// path (`GET /v1/targets/{name}`), continuing the caller's trace when it sent a `traceparent`.
pub(crate) fn server_span<B>(request: &Request<B>) -> Span {
    let method = method_name(request.method());
    let route = request.extensions().get::<MatchedPath>().map(MatchedPath::as_str);
    let name = match (method, route) {
        ("_OTHER", _) => Cow::Borrowed("HTTP"),
        (method, Some(route)) => Cow::Owned(format!("{method} {route}")),
        (method, None) => Cow::Borrowed(method),
    };
    let header = |name: &str| request.headers().get(name).and_then(|v| v.to_str().ok());
    let span = tracing::info_span!(
        "request",
        otel.name = %name,
        otel.kind = "server",
        http.request.method = method,
        http.route = route,
        url.path = request.uri().path(),
        url.scheme = "http",
        user_agent.original = header("user-agent"),
        request_id = header("x-request-id"),
        http.response.status_code = Empty,
        error.type = Empty,
        otel.status_code = Empty,
    );
    if exporting() {
        let parent = opentelemetry::global::get_text_map_propagator(|p| p.extract(&HeaderExtractor(request.headers())));
        if parent.span().span_context().is_valid() {
            // Only fails when the span is disabled or already started; neither is the case here.
            let _ = span.set_parent(parent);
        }
    }
    span
}

/// Completes a server span with the response's status (an error from 500 on, as the
/// conventions say for servers) and logs the request's end.
pub(crate) fn on_response<B>(response: &Response<B>, latency: Duration, span: &Span) {
    let status = response.status().as_u16();
    span.record("http.response.status_code", i64::from(status));
    if status >= 500 {
        span.record("error.type", status.to_string());
        span.record("otel.status_code", "error");
    }
    tracing::info!(
        status = i64::from(status),
        latency_ms = latency.as_secs_f64() * 1000.0,
        "finished processing request"
    );
}

/// The method as the conventions name it: the known ones, else `_OTHER` (a client cannot mint
/// span names).
fn method_name(method: &Method) -> &'static str {
    crate::http_metrics::known_method(method).unwrap_or("_OTHER")
}

/// A CLIENT span for an outgoing HTTP request to `url` (a child of the current span, or a
/// trace of its own); a disabled span while nothing is exported. Send its context with
/// [`inject_span_context`] and close it with [`record_client_status`] or
/// [`record_client_error`].
pub fn http_client_span(method: &'static str, url: &str) -> Span {
    if !exporting() {
        return Span::none();
    }
    let uri: Option<Uri> = url.parse().ok();
    let host = uri.as_ref().and_then(|u| u.host().map(str::to_owned));
    let port = uri.as_ref().and_then(|u| {
        u.port_u16().or(match u.scheme_str() {
            Some("https" | "grpcs") => Some(443),
            Some("http") => Some(80),
            _ => None,
        })
    });
    tracing::info_span!(
        "client",
        otel.name = method,
        otel.kind = "client",
        http.request.method = method,
        url.full = %without_credentials(url, uri.as_ref()),
        server.address = host,
        server.port = port.map(i64::from),
        http.response.status_code = Empty,
        error.type = Empty,
        otel.status_code = Empty,
    )
}

/// `url` with any `user:password@` removed: URLs end up in trace stores.
fn without_credentials<'a>(url: &'a str, uri: Option<&Uri>) -> Cow<'a, str> {
    match uri.and_then(Uri::authority) {
        Some(authority) if authority.as_str().contains('@') => {
            let host = authority.as_str().rsplit('@').next().unwrap_or_default();
            Cow::Owned(url.replacen(authority.as_str(), host, 1))
        }
        _ => Cow::Borrowed(url),
    }
}

/// Records the status an outgoing request got: an error from 400 on, as the conventions say
/// for clients.
pub fn record_client_status(span: &Span, status: u16) {
    span.record("http.response.status_code", i64::from(status));
    if status >= 400 {
        span.record("error.type", status.to_string());
        span.record("otel.status_code", "error");
    }
}

/// Records why an outgoing call got no answer (`timeout`, `connection_refused`, a TLS reason).
pub fn record_client_error(span: &Span, error_type: &str) {
    span.record("error.type", error_type);
    span.record("otel.status_code", "error");
}

/// A CLIENT span for one database call (`INSERT outbox`), a child of the current span; a
/// disabled span outside one or while nothing is exported.
pub fn db_span(system: &'static str, operation: &'static str, collection: &'static str) -> Span {
    if !exporting() || Span::current().is_none() {
        return Span::none();
    }
    tracing::info_span!(
        "db",
        otel.name = %format!("{operation} {collection}"),
        otel.kind = "client",
        db.system = system,
        db.system.name = system,
        db.operation.name = operation,
        db.collection.name = collection,
    )
}

/// A CLIENT span for one Redis command or pipeline, named by its command (`XADD`,
/// `PIPELINE`), a child of the current span; a disabled span outside one or while nothing is
/// exported.
pub fn redis_span(command: Option<&redis::Cmd>, pipeline_size: usize) -> Span {
    if !exporting() || Span::current().is_none() {
        return Span::none();
    }
    let operation = match command.and_then(|cmd| cmd.args_iter().next()) {
        Some(redis::Arg::Simple(name)) => String::from_utf8_lossy(name).to_ascii_uppercase(),
        _ => "PIPELINE".to_string(),
    };
    let span = tracing::info_span!(
        "redis",
        otel.name = %operation,
        otel.kind = "client",
        db.system = "redis",
        db.system.name = "redis",
        db.operation.name = %operation,
        db.operation.batch.size = Empty,
    );
    if command.is_none() {
        span.record("db.operation.batch.size", pipeline_size as i64);
    }
    span
}

/// Adds `span`'s W3C trace context (`traceparent`, `tracestate`) to outgoing request headers,
/// so the request joins its trace. A no-op for a disabled span or without OTLP.
pub fn inject_span_context(span: &Span, headers: &mut HeaderMap) {
    if span.is_none() || !exporting() {
        return;
    }
    let context = span.context();
    opentelemetry::global::get_text_map_propagator(|p| p.inject_context(&context, &mut HeaderInjector(headers)));
}

/// Adds the current span's W3C trace context to outgoing request headers.
pub fn inject_trace_context(headers: &mut HeaderMap) {
    inject_span_context(&Span::current(), headers);
}

/// The current span's `traceparent`, to store with work another process continues (an
/// outbox row); `None` while nothing is exported or outside a span.
pub fn current_traceparent() -> Option<String> {
    if !exporting() {
        return None;
    }
    let context = Span::current().context();
    let span = context.span();
    let span_context = span.span_context();
    span_context.is_valid().then(|| traceparent(span_context))
}

fn traceparent(context: &SpanContext) -> String {
    format!("00-{}-{}-{:02x}", context.trace_id(), context.span_id(), context.trace_flags().to_u8())
}

/// The trace id in a W3C `traceparent` (`00-<trace id>-<span id>-<flags>`), when it is one.
pub fn trace_id_of(traceparent: &str) -> Option<&str> {
    let mut parts = traceparent.split('-');
    let (version, trace, span, flags) = (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    let hex =
        |s: &str, len: usize| s.len() == len && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    let valid = parts.next().is_none()
        && hex(version, 2)
        && version != "ff"
        && hex(trace, 32)
        && hex(span, 16)
        && hex(flags, 2)
        && trace.bytes().any(|b| b != b'0')
        && span.bytes().any(|b| b != b'0');
    valid.then_some(trace)
}

/// The PRODUCER span of one batch sent to `destination` (`send caracal.events`): a trace of
/// its own, linked to each message's own span (a batch mixes many traces), with the Redis
/// calls that send it as children. Disabled while nothing is exported or nothing is linked.
pub fn send_span(destination: &'static str, messages: usize, links: &[MessageSpan]) -> Span {
    if !exporting() || links.is_empty() {
        return Span::none();
    }
    let span = tracing::info_span!(
        parent: None,
        "send",
        otel.name = %format!("send {destination}"),
        otel.kind = "producer",
        messaging.system = "redis",
        messaging.operation.type = "send",
        messaging.operation.name = "XADD",
        messaging.destination.name = destination,
        messaging.batch.message_count = messages as i64,
        error.type = Empty,
        otel.status_code = Empty,
    );
    for link in links {
        span.add_link(link.context.clone());
    }
    span
}

/// What a [`MessageSpan`] does with a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MessageKind {
    /// Creates or sends it (the relay).
    Producer,
    /// Receives and processes it (the audit consumer).
    Consumer,
    /// A call made while handling it (the ledger insert).
    Client,
}

impl From<MessageKind> for SpanKind {
    fn from(kind: MessageKind) -> Self {
        match kind {
            MessageKind::Producer => SpanKind::Producer,
            MessageKind::Consumer => SpanKind::Consumer,
            MessageKind::Client => SpanKind::Client,
        }
    }
}

/// A span for work on a message that carries its own trace (an outbox row, a stream entry):
/// the span continues the trace the message came with, not the loop that handles it, so one
/// trace runs from the request that wrote a change to the ledger row that records it. Ends
/// when dropped.
#[derive(Debug)]
pub struct MessageSpan {
    span: opentelemetry::global::BoxedSpan,
    context: SpanContext,
}

impl MessageSpan {
    /// Starts `{operation} {destination}` (`create caracal.events`) as a child of the context in
    /// `traceparent`, with the messaging conventions' attributes and `more`; `None` while
    /// nothing is exported or when the message carries no (valid) trace context.
    pub fn continuing(
        traceparent: Option<&str>,
        operation: &'static str,
        destination: &'static str,
        kind: MessageKind,
        more: impl IntoIterator<Item = KeyValue>,
    ) -> Option<Self> {
        if !exporting() {
            return None;
        }
        let traceparent = traceparent.filter(|t| trace_id_of(t).is_some())?;
        let carrier = [("traceparent", traceparent)];
        let parent = opentelemetry::global::get_text_map_propagator(|p| p.extract(&PairExtractor(&carrier)));
        // The messaging conventions' own attributes; `more` adds the caller's.
        let attributes = [
            KeyValue::new("messaging.system", "redis"),
            KeyValue::new("messaging.operation.type", operation),
            KeyValue::new("messaging.operation.name", operation),
            KeyValue::new("messaging.destination.name", destination),
        ]
        .into_iter()
        .chain(more)
        .collect();
        Some(Self::start(format!("{operation} {destination}").into(), kind, attributes, &parent))
    }

    /// Starts `name` as this span's child.
    pub fn child(&self, name: impl Into<Cow<'static, str>>, kind: MessageKind, attributes: Vec<KeyValue>) -> Self {
        let parent = Context::new().with_remote_span_context(self.context.clone());
        Self::start(name.into(), kind, attributes, &parent)
    }

    fn start(name: Cow<'static, str>, kind: MessageKind, attributes: Vec<KeyValue>, parent: &Context) -> Self {
        let tracer = opentelemetry::global::tracer("caracal");
        let span = tracer
            .span_builder(name)
            .with_kind(kind.into())
            .with_attributes(attributes)
            .start_with_context(&tracer, parent);
        let context = span.span_context().clone();
        Self { span, context }
    }

    /// This span's `traceparent`, for the message it hands on.
    pub fn traceparent(&self) -> String {
        traceparent(&self.context)
    }

    /// Adds an attribute.
    pub fn set_attribute(&mut self, attribute: KeyValue) {
        self.span.set_attribute(attribute);
    }

    /// Marks the work failed, with what went wrong (no secrets: it goes to the trace store).
    pub fn fail(&mut self, error_type: &str) {
        self.span.set_attribute(KeyValue::new("error.type", error_type.to_string()));
        self.span.set_status(Status::error(error_type.to_string()));
    }
}

struct HeaderExtractor<'a>(&'a HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(HeaderName::as_str).collect()
    }
}

struct HeaderInjector<'a>(&'a mut HeaderMap);

impl Injector for HeaderInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(name), Ok(value)) = (HeaderName::from_bytes(key.as_bytes()), HeaderValue::from_str(&value)) {
            self.0.insert(name, value);
        }
    }
}

struct PairExtractor<'a>(&'a [(&'a str, &'a str)]);

impl Extractor for PairExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.iter().find(|(k, _)| *k == key).map(|(_, v)| *v)
    }

    fn keys(&self) -> Vec<&str> {
        self.0.iter().map(|(k, _)| *k).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trace_ids_come_only_from_well_formed_traceparents() {
        let good = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
        assert_eq!(trace_id_of(good), Some("0af7651916cd43dd8448eb211c80319c"));
        for bad in [
            "",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331",
            "00-00000000000000000000000000000000-b7ad6b7169203331-01",
            "00-0af7651916cd43dd8448eb211c80319c-0000000000000000-01",
            "ff-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            "00-0AF7651916CD43DD8448EB211C80319C-b7ad6b7169203331-01",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-extra",
            "00-0af7651916cd43dd8448eb211c8031-b7ad6b7169203331-01",
        ] {
            assert_eq!(trace_id_of(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn credentials_never_reach_a_span() {
        let url = "https://user:secret@example.test:8443/ready";
        let uri: Uri = url.parse().unwrap();
        assert_eq!(without_credentials(url, Some(&uri)), "https://example.test:8443/ready");
        let plain = "http://example.test/ready";
        assert_eq!(without_credentials(plain, plain.parse().ok().as_ref()), plain);
    }

    #[test]
    fn unknown_methods_cannot_name_spans() {
        assert_eq!(method_name(&Method::GET), "GET");
        assert_eq!(method_name(&Method::from_bytes(b"BREW").unwrap()), "_OTHER");
    }
}
