//! Logs and traces: JSON logs in rc/stable, human logs in dev, and OTLP/HTTP spans when an
//! endpoint is configured. W3C trace context is the global propagator, so outgoing probes and
//! scrapes can carry the current trace.

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

use crate::config::{ConfigError, CoreConfig, Mode};
use crate::{Error, env};

/// Keeps the span exporter alive; [`Telemetry::shutdown`] flushes what is buffered.
#[derive(Debug)]
#[must_use = "dropping it without shutdown loses buffered spans"]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Flushes and stops the span exporter (a no-op without OTLP).
    pub fn shutdown(self) {
        if let Some(provider) = self.provider
            && let Err(error) = provider.shutdown()
        {
            tracing::warn!(%error, "flushing spans failed");
        }
    }
}

/// Installs the global subscriber for `service`.
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
            let provider = tracer_provider(service, version, endpoint)?;
            let layer = tracing_opentelemetry::layer().with_tracer(provider.tracer(service));
            (Some(provider), Some(layer))
        }
        None => (None, None),
    };
    opentelemetry::global::set_text_map_propagator(opentelemetry_sdk::propagation::TraceContextPropagator::new());
    tracing_subscriber::registry()
        .with(filter)
        .with(json.then(|| tracing_subscriber::fmt::layer().json().with_current_span(true).flatten_event(true)))
        .with((!json).then(tracing_subscriber::fmt::layer))
        .with(otel)
        .try_init()
        .map_err(|e| Error::Telemetry(e.to_string()))?;
    Ok(Telemetry { provider })
}

fn tracer_provider(service: &'static str, version: &'static str, endpoint: &str) -> Result<SdkTracerProvider, Error> {
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
        .with_service_name(service)
        .with_attribute(opentelemetry::KeyValue::new("service.version", version))
        .build();
    Ok(SdkTracerProvider::builder().with_batch_exporter(exporter).with_resource(resource).build())
}

/// Adds the current span's W3C trace context (`traceparent`, `tracestate`) to outgoing
/// request headers, so a probe or scrape joins the caller's trace. A no-op without OTLP.
pub fn inject_trace_context(headers: &mut axum::http::HeaderMap) {
    use tracing_opentelemetry::OpenTelemetrySpanExt;
    struct Injector<'a>(&'a mut axum::http::HeaderMap);
    impl opentelemetry::propagation::Injector for Injector<'_> {
        fn set(&mut self, key: &str, value: String) {
            if let (Ok(name), Ok(value)) =
                (axum::http::HeaderName::from_bytes(key.as_bytes()), axum::http::HeaderValue::from_str(&value))
            {
                self.0.insert(name, value);
            }
        }
    }
    let context = tracing::Span::current().context();
    opentelemetry::global::get_text_map_propagator(|propagator| {
        propagator.inject_context(&context, &mut Injector(headers))
    });
}
