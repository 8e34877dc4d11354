//! Logs and traces: JSON logs in rc/stable, human logs in dev, and OTLP/HTTP spans when an
//! endpoint is configured.
//!
//! Spans follow the OpenTelemetry semantic conventions: a SERVER span per request named
//! `{method} {route}` ([`spans`]), CLIENT spans for outgoing HTTP, PostgreSQL and Redis calls,
//! and PRODUCER/CONSUMER spans that carry a change's trace from the outbox through the relay
//! to the audit ledger ([`MessageSpan`]). W3C trace context (`traceparent`, `tracestate`) is
//! taken from incoming requests and sent on outgoing ones. Export is batched on its own
//! thread and never blocks a request: when the collector is down or slow, spans are dropped
//! and counted in `caracal_telemetry_spans_dropped_total` ([`export`]).

mod export;
mod spans;

use std::sync::atomic::{AtomicBool, Ordering};

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_subscriber::filter::LevelFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer, Registry};

pub use opentelemetry::KeyValue;
pub use spans::{
    MessageKind, MessageSpan, current_traceparent, db_span, http_client_span, inject_span_context,
    inject_trace_context, record_client_error, record_client_status, redis_span, send_span, trace_id_of,
};
pub(crate) use spans::{on_response, server_span};

pub(crate) use export::SPANS_DROPPED;

use crate::config::{ConfigError, CoreConfig, Mode, Sampler, TelemetryConfig};
use crate::{Error, env};

/// Whether spans leave the process. Spans only the exporter would read (client, database and
/// message spans) are not even built when they do not.
static EXPORTING: AtomicBool = AtomicBool::new(false);

/// Whether spans are exported (an OTLP endpoint is configured and telemetry is set up).
pub fn exporting() -> bool {
    EXPORTING.load(Ordering::Relaxed)
}

/// Keeps the span exporter alive; [`Telemetry::shutdown`] flushes what is buffered.
#[derive(Debug)]
#[must_use = "dropping it without shutdown loses buffered spans"]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Flushes and stops the span exporter (a no-op without OTLP).
    pub fn shutdown(self) {
        if let Some(provider) = self.provider {
            EXPORTING.store(false, Ordering::Relaxed);
            if let Err(error) = provider.shutdown() {
                tracing::warn!(%error, "flushing spans failed");
            }
        }
    }
}

/// Installs the global subscriber for `service` (and, with an OTLP endpoint, the global tracer
/// provider and the W3C trace-context propagator).
///
/// # Errors
/// [`Error::Config`] for a bad log filter, [`Error::Telemetry`] when the exporter cannot be
/// built or a subscriber is already installed.
pub fn init(service: &'static str, version: &'static str, config: &CoreConfig) -> Result<Telemetry, Error> {
    let filter = EnvFilter::try_new(&config.telemetry.log).map_err(|e| ConfigError {
        key: "telemetry.log".into(),
        origin: format!("environment variable `{}` (or config key)", env::RUST_LOG),
        message: format!("not a log filter ({e}); expected e.g. `info` or `info,caracal_core=debug`"),
    })?;
    let json = config.mode != Mode::Dev;
    let (provider, otel) = match &config.telemetry.otlp_endpoint {
        Some(endpoint) => {
            let provider = tracer_provider(service, version, endpoint, &config.telemetry)?;
            // Location, thread and module attributes would point into the build machine's
            // paths and add nothing an operator reads; inactivity timings are noise.
            let layer = tracing_opentelemetry::layer()
                .with_tracer(provider.tracer("caracal"))
                .with_location(false)
                .with_threads(false)
                .with_target(false)
                .with_tracked_inactivity(false);
            opentelemetry::global::set_tracer_provider(provider.clone());
            (Some(provider), Some(layer))
        }
        None => (None, None),
    };
    opentelemetry::global::set_text_map_propagator(opentelemetry_sdk::propagation::TraceContextPropagator::new());
    let logs: Box<dyn Layer<Registry> + Send + Sync> = if json {
        Box::new(tracing_subscriber::fmt::layer().json().with_current_span(true).flatten_event(true))
    } else {
        Box::new(tracing_subscriber::fmt::layer())
    };
    // The log filter is the logs' alone: `RUST_LOG=warn` quietens the logs, not the traces,
    // whose spans are all at INFO.
    tracing_subscriber::registry()
        .with(logs.with_filter(filter))
        .with(otel.map(|layer| layer.with_filter(LevelFilter::INFO)))
        .try_init()
        .map_err(|e| Error::Telemetry(e.to_string()))?;
    EXPORTING.store(provider.is_some(), Ordering::Relaxed);
    Ok(Telemetry { provider })
}

fn tracer_provider(
    service: &str,
    version: &'static str,
    endpoint: &str,
    config: &TelemetryConfig,
) -> Result<SdkTracerProvider, Error> {
    // Like the OTLP SDKs' own reading of OTEL_EXPORTER_OTLP_ENDPOINT: a base URL that gets
    // the signal path appended.
    let url = if endpoint.trim_end_matches('/').ends_with("/v1/traces") {
        endpoint.to_string()
    } else {
        format!("{}/v1/traces", endpoint.trim_end_matches('/'))
    };
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_endpoint(url)
        .build()
        .map_err(|e| Error::Telemetry(format!("OTLP exporter for {endpoint}: {e}")))?;
    let resource = opentelemetry_sdk::Resource::builder()
        .with_service_name(service_name(service, config))
        .with_attribute(KeyValue::new("service.version", version))
        .with_attribute(KeyValue::new("service.instance.id", instance_id()))
        .build();
    Ok(SdkTracerProvider::builder()
        .with_span_processor(export::processor(exporter))
        .with_sampler(sampler(config))
        .with_resource(resource)
        .build())
}

/// `telemetry.service_name`, else the program's file name as started (`caracal-api`, or an
/// embedding service's own binary), else the name the service gave itself.
fn service_name(service: &str, config: &TelemetryConfig) -> String {
    if let Some(name) = config.service_name.as_deref().filter(|n| !n.trim().is_empty()) {
        return name.trim().to_string();
    }
    std::env::args_os()
        .next()
        .and_then(|program| std::path::Path::new(&program).file_name().map(|name| name.to_string_lossy().into_owned()))
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| service.to_string())
}

/// A random UUID (version 4) naming this process among the service's replicas.
fn instance_id() -> String {
    let (high, low) = (fastrand::u64(..), fastrand::u64(..));
    let high = (high & !0xf000) | 0x4000; // version 4
    let low = (low & !(0b11 << 62)) | (0b10 << 62); // RFC 4122 variant
    format!(
        "{:08x}-{:04x}-{:04x}-{:04x}-{:012x}",
        high >> 32,
        (high >> 16) & 0xffff,
        high & 0xffff,
        low >> 48,
        low & 0xffff_ffff_ffff
    )
}

/// The SDK sampler `telemetry.sampler` and `telemetry.sample_ratio` name.
fn sampler(config: &TelemetryConfig) -> opentelemetry_sdk::trace::Sampler {
    use opentelemetry_sdk::trace::Sampler as Sdk;
    let ratio = config.sample_ratio;
    match config.sampler {
        Sampler::AlwaysOn => Sdk::AlwaysOn,
        Sampler::AlwaysOff => Sdk::AlwaysOff,
        Sampler::Traceidratio => Sdk::TraceIdRatioBased(ratio),
        Sampler::ParentbasedAlwaysOn => Sdk::ParentBased(Box::new(Sdk::AlwaysOn)),
        Sampler::ParentbasedAlwaysOff => Sdk::ParentBased(Box::new(Sdk::AlwaysOff)),
        Sampler::ParentbasedTraceidratio => Sdk::ParentBased(Box::new(Sdk::TraceIdRatioBased(ratio))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instance_ids_are_version_4_uuids() {
        let id = instance_id();
        let parts: Vec<&str> = id.split('-').collect();
        assert_eq!(parts.iter().map(|p| p.len()).collect::<Vec<_>>(), [8, 4, 4, 4, 12], "{id}");
        assert!(parts[2].starts_with('4'), "{id}");
        assert!(matches!(parts[3].chars().next(), Some('8' | '9' | 'a' | 'b')), "{id}");
        assert_ne!(instance_id(), id);
    }

    #[test]
    fn the_configured_service_name_wins_over_the_program_name() {
        let mut config = CoreConfig::defaults(1).telemetry;
        assert_ne!(service_name("api", &config), "");
        config.service_name = Some("caracal-api-canary".into());
        assert_eq!(service_name("api", &config), "caracal-api-canary");
    }
}
