//! Span export that never blocks a request and counts what it loses.
//!
//! The SDK's batch processor already exports from its own thread with a bounded queue, but
//! keeps its count of dropped spans to itself. So this wraps it: a span is admitted only while
//! fewer than [`QUEUE`] are waiting (the processor's own queue then never overflows), and the
//! exporter is wrapped to count every span of a batch the collector did not take. Both land in
//! `caracal_telemetry_spans_dropped_total`.

use std::sync::LazyLock;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use opentelemetry::Context;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{BatchConfigBuilder, BatchSpanProcessor, Span, SpanData, SpanExporter, SpanProcessor};
use prometheus_client::metrics::counter::Counter;

/// Spans finished but not yet exported, at most: about a second of a busy service's spans.
const QUEUE: usize = 2048;

/// `caracal_telemetry_spans_dropped_total`: spans lost because the queue was full (the
/// collector slow) or the collector refused or missed a batch (down).
pub(crate) static SPANS_DROPPED: LazyLock<Counter> = LazyLock::new(Counter::default);

/// Spans admitted and not yet through an export attempt.
static WAITING: AtomicUsize = AtomicUsize::new(0);

/// The batch processor, bounded and counted, around `exporter`.
pub(super) fn processor<E: SpanExporter + 'static>(exporter: E) -> Bounded {
    let config = BatchConfigBuilder::default()
        .with_max_queue_size(QUEUE)
        .with_max_export_batch_size(512)
        .with_scheduled_delay(Duration::from_secs(1))
        .build();
    Bounded { inner: BatchSpanProcessor::new(Counted { inner: exporter }, config) }
}

/// Admits a finished span to the batch processor only while there is room for it.
#[derive(Debug)]
pub(super) struct Bounded {
    inner: BatchSpanProcessor,
}

impl SpanProcessor for Bounded {
    fn on_start(&self, span: &mut Span, cx: &Context) {
        self.inner.on_start(span, cx);
    }

    fn on_end(&self, span: SpanData) {
        if WAITING.fetch_add(1, Ordering::AcqRel) >= QUEUE {
            WAITING.fetch_sub(1, Ordering::AcqRel);
            SPANS_DROPPED.inc();
            return;
        }
        self.inner.on_end(span);
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}

/// The OTLP exporter, counting the spans of every batch that did not reach the collector.
#[derive(Debug)]
struct Counted<E> {
    inner: E,
}

impl<E: SpanExporter> SpanExporter for Counted<E> {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        let spans = batch.len();
        let result = self.inner.export(batch).await;
        // Saturating: spans admitted before a restart of the counter's reader never underflow it.
        let _ = WAITING.fetch_update(Ordering::AcqRel, Ordering::Acquire, |w| Some(w.saturating_sub(spans)));
        if result.is_err() {
            SPANS_DROPPED.inc_by(spans as u64);
        }
        result
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}
