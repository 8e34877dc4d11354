//! A collector for OTLP/HTTP span exports (`POST /v1/traces`, protobuf), decoding each export
//! with the official protobuf definitions (the `opentelemetry-proto` crate), so tests read
//! what an OpenTelemetry backend would: span names, kinds, attributes, parents and links,
//! and each span's `service.name`. [`Collector::stop`] closes its port, as a collector that
//! died would.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use prost::Message;

use crate::Error;

/// One span as received.
#[derive(Debug, Clone, PartialEq)]
pub struct Span {
    /// The exporting service's `service.name`.
    pub service: String,
    /// Its resource's attributes (`service.version`, `service.instance.id`, ...).
    pub resource: BTreeMap<String, String>,
    /// 32 hex digits.
    pub trace_id: String,
    /// 16 hex digits.
    pub span_id: String,
    /// 16 hex digits; empty for a root span.
    pub parent_span_id: String,
    /// The span's name.
    pub name: String,
    /// `SERVER`, `CLIENT`, `PRODUCER`, `CONSUMER`, `INTERNAL` (or `UNSPECIFIED`).
    pub kind: &'static str,
    /// Attributes, every value as text (numbers in decimal).
    pub attributes: BTreeMap<String, String>,
    /// Linked spans, as (trace id, span id).
    pub links: Vec<(String, String)>,
    /// `ERROR`, `OK` or `UNSET`.
    pub status: &'static str,
}

impl Span {
    /// An attribute's value, if the span has it.
    pub fn attribute(&self, key: &str) -> Option<&str> {
        self.attributes.get(key).map(String::as_str)
    }
}

#[derive(Debug, Default)]
struct Received {
    spans: Vec<Span>,
    exports: usize,
}

/// A running collector on a free loopback port; stops on drop.
#[derive(Debug)]
pub struct Collector {
    port: u16,
    received: Arc<Mutex<Received>>,
    server: Option<tokio::task::JoinHandle<()>>,
}

impl Collector {
    /// Starts the collector (on the current tokio runtime).
    ///
    /// # Errors
    /// When no loopback port can be bound.
    pub async fn start() -> Result<Self, Error> {
        let listener =
            tokio::net::TcpListener::bind("127.0.0.1:0").await.map_err(Error::io("bind the OTLP collector"))?;
        let port = listener.local_addr().map_err(Error::io("read the OTLP collector's address"))?.port();
        let received = Arc::new(Mutex::new(Received::default()));
        let app = Router::new().route("/v1/traces", post(export)).with_state(Arc::clone(&received));
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(Self { port, received, server: Some(server) })
    }

    /// The base URL to give as `OTEL_EXPORTER_OTLP_ENDPOINT` (`http://127.0.0.1:<port>`).
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Every span received so far.
    pub fn spans(&self) -> Vec<Span> {
        self.received.lock().map(|r| r.spans.clone()).unwrap_or_default()
    }

    /// How many export requests arrived.
    pub fn exports(&self) -> usize {
        self.received.lock().map(|r| r.exports).unwrap_or_default()
    }

    /// Stops answering: the port is closed, so exports fail as they would to a dead collector.
    pub fn stop(&mut self) {
        if let Some(server) = self.server.take() {
            server.abort();
        }
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        self.stop();
    }
}

async fn export(State(received): State<Arc<Mutex<Received>>>, body: Bytes) -> StatusCode {
    let Ok(request) = ExportTraceServiceRequest::decode(body) else { return StatusCode::BAD_REQUEST };
    let mut spans = Vec::new();
    for resource_spans in request.resource_spans {
        let resource: BTreeMap<String, String> =
            resource_spans.resource.map(|r| attributes(&r.attributes)).unwrap_or_default();
        let service = resource.get("service.name").cloned().unwrap_or_default();
        for scope in resource_spans.scope_spans {
            for span in scope.spans {
                spans.push(Span {
                    service: service.clone(),
                    resource: resource.clone(),
                    trace_id: hex(&span.trace_id),
                    span_id: hex(&span.span_id),
                    parent_span_id: hex(&span.parent_span_id),
                    kind: match span.kind {
                        1 => "INTERNAL",
                        2 => "SERVER",
                        3 => "CLIENT",
                        4 => "PRODUCER",
                        5 => "CONSUMER",
                        _ => "UNSPECIFIED",
                    },
                    attributes: attributes(&span.attributes),
                    links: span.links.iter().map(|l| (hex(&l.trace_id), hex(&l.span_id))).collect(),
                    status: match span.status.map(|s| s.code) {
                        Some(2) => "ERROR",
                        Some(1) => "OK",
                        _ => "UNSET",
                    },
                    name: span.name,
                });
            }
        }
    }
    if let Ok(mut r) = received.lock() {
        r.exports += 1;
        r.spans.extend(spans);
    }
    StatusCode::OK
}

fn attributes(pairs: &[KeyValue]) -> BTreeMap<String, String> {
    pairs.iter().map(|kv| (kv.key.clone(), kv.value.as_ref().map(text).unwrap_or_default())).collect()
}

fn text(value: &AnyValue) -> String {
    match &value.value {
        Some(any_value::Value::StringValue(s)) => s.clone(),
        Some(any_value::Value::IntValue(i)) => i.to_string(),
        Some(any_value::Value::BoolValue(b)) => b.to_string(),
        Some(any_value::Value::DoubleValue(d)) => d.to_string(),
        Some(other) => format!("{other:?}"),
        None => String::new(),
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
