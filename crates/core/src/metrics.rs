//! Every metric caracal-core exposes, declared once, plus the process collector.
//!
//! Names are stable: the chart's alert rules and dashboards depend on them (see docs/architecture.md).
//! prometheus-client appends `_total` to counters itself, so counters are registered without it.

use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// A gauge holding seconds or other fractional figures.
pub type FloatGauge = Gauge<f64, AtomicU64>;

/// Labels of `caracal_build_info`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BuildLabels {
    /// Service name.
    pub service: String,
    /// Service version.
    pub version: String,
    /// `dev`, `rc` or `stable`.
    pub mode: String,
}

/// Labels of `caracal_ready`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ServiceLabels {
    /// Service name.
    pub service: String,
}

/// Labels of `caracal_check_up`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CheckRungLabels {
    /// Check name (`component:measurement`).
    pub check: String,
    /// Its rung.
    pub rung: String,
}

/// Labels of `caracal_check_failing`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FailingLabels {
    /// Check name (`component:measurement`).
    pub check: String,
    /// Its rung.
    pub rung: String,
    /// `true` when the check's failure makes the service unready.
    pub required: String,
}

/// Labels of the other per-check metrics.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CheckLabels {
    /// Check name (`component:measurement`).
    pub check: String,
}

/// Labels of `http_server_requests_total`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// HTTP method (unknown methods are `OTHER`, so the label stays bounded).
    pub method: String,
    /// The matched route template (`/v1/targets/{name}`), or `unmatched`.
    pub route: String,
    /// Response status code.
    pub status: u16,
}

/// Labels of `http_server_request_duration_seconds`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    /// HTTP method.
    pub method: String,
    /// The matched route template, or `unmatched`.
    pub route: String,
}

/// Labels of the stream metrics.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StreamLabels {
    /// Stream key.
    pub stream: String,
    /// Consumer group.
    pub group: String,
}

/// The metric families of caracal-core, shared by the evaluator, the HTTP layer and the
/// built-in checks.
#[derive(Debug, Clone)]
pub struct Metrics {
    pub(crate) build_info: Family<BuildLabels, Gauge>,
    pub(crate) ready: Family<ServiceLabels, Gauge>,
    pub(crate) check_up: Family<CheckRungLabels, Gauge>,
    pub(crate) check_failing: Family<FailingLabels, Gauge>,
    pub(crate) check_duration: Family<CheckLabels, Histogram>,
    pub(crate) check_last_success: Family<CheckLabels, FloatGauge>,
    pub(crate) check_transitions: Family<CheckLabels, Counter>,
    pub(crate) http_requests: Family<RequestLabels, Counter>,
    pub(crate) http_duration: Family<RouteLabels, Histogram>,
    pub(crate) http_in_flight: Gauge,
    /// Outbox figures, exported only once an outbox check has measured them, so a service
    /// without an outbox exports no misleading zeros.
    pub(crate) outbox: Arc<OutboxGauges>,
    pub(crate) stream_lag: Family<StreamLabels, Gauge>,
    pub(crate) stream_pending: Family<StreamLabels, Gauge>,
    pub(crate) stream_oldest_pending_age: Family<StreamLabels, FloatGauge>,
}

fn check_buckets() -> Histogram {
    // 1 ms .. ~16 s: a check is a ping or a small query, and its timeout caps it.
    Histogram::new(exponential_buckets(0.001, 2.0, 15))
}

fn http_buckets() -> Histogram {
    Histogram::new([0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0])
}

impl Metrics {
    /// Creates the families and registers them, with the process collector, in `registry`.
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self {
            build_info: Family::default(),
            ready: Family::default(),
            check_up: Family::default(),
            check_failing: Family::default(),
            check_duration: Family::new_with_constructor(check_buckets as fn() -> Histogram),
            check_last_success: Family::default(),
            check_transitions: Family::default(),
            http_requests: Family::default(),
            http_duration: Family::new_with_constructor(http_buckets as fn() -> Histogram),
            http_in_flight: Gauge::default(),
            outbox: Arc::default(),
            stream_lag: Family::default(),
            stream_pending: Family::default(),
            stream_oldest_pending_age: Family::default(),
        };
        registry.register("caracal_build_info", "Build and mode of this service (always 1)", m.build_info.clone());
        registry.register("caracal_ready", "1 when the service reports ready", m.ready.clone());
        registry.register("caracal_check_up", "1 when the check passes", m.check_up.clone());
        registry.register(
            "caracal_check_failing",
            "1 when the check fails (not when skipped above a failing rung); alerts key on required",
            m.check_failing.clone(),
        );
        registry.register("caracal_check_duration_seconds", "Time one run of the check took", m.check_duration.clone());
        registry.register(
            "caracal_check_last_success_timestamp_seconds",
            "Unix time of the check's last passing run",
            m.check_last_success.clone(),
        );
        registry.register(
            "caracal_check_transitions",
            "Changes of the check between passing and failing",
            m.check_transitions.clone(),
        );
        registry.register("http_server_requests", "HTTP requests served, by matched route", m.http_requests.clone());
        registry.register(
            "http_server_request_duration_seconds",
            "HTTP request latency, by matched route",
            m.http_duration.clone(),
        );
        registry.register("http_server_requests_in_flight", "HTTP requests being served now", m.http_in_flight.clone());
        registry.register_collector(Box::new(Arc::clone(&m.outbox)));
        registry.register(
            "caracal_stream_lag",
            "Entries in the stream not yet delivered to the group",
            m.stream_lag.clone(),
        );
        registry.register(
            "caracal_stream_pending",
            "Entries delivered to the group but not acknowledged",
            m.stream_pending.clone(),
        );
        registry.register(
            "caracal_stream_oldest_pending_age_seconds",
            "Idle time of the group's oldest unacknowledged entry",
            m.stream_oldest_pending_age.clone(),
        );
        registry.register(
            "caracal_telemetry_spans_dropped",
            "Spans never exported: the queue was full (collector slow) or the collector refused or missed them",
            crate::telemetry::SPANS_DROPPED.clone(),
        );
        registry.register_collector(Box::new(ProcessCollector));
        m
    }

    /// Sets `caracal_build_info` for this service.
    pub(crate) fn set_build(&self, service: &str, version: &str, mode: &str) {
        self.build_info
            .get_or_create(&BuildLabels { service: service.into(), version: version.into(), mode: mode.into() })
            .set(1);
    }
}

/// `caracal_outbox_*`: the latest figures of the outbox checks.
#[derive(Debug, Default)]
pub(crate) struct OutboxGauges {
    latest: Mutex<Option<OutboxFigures>>,
}

/// One measurement of an outbox table.
#[derive(Debug, Clone, Copy)]
pub(crate) struct OutboxFigures {
    pub(crate) pending: i64,
    pub(crate) oldest_age_seconds: f64,
    pub(crate) dead: i64,
}

impl OutboxGauges {
    pub(crate) fn record(&self, figures: OutboxFigures) {
        if let Ok(mut latest) = self.latest.lock() {
            *latest = Some(figures);
        }
    }
}

impl Collector for OutboxGauges {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let Some(f) = self.latest.lock().ok().and_then(|l| *l) else { return Ok(()) };
        let pending = ConstGauge::new(f.pending);
        pending.encode(encoder.encode_descriptor(
            "caracal_outbox_pending",
            "Outbox rows not yet dispatched",
            None,
            pending.metric_type(),
        )?)?;
        let age = ConstGauge::new(f.oldest_age_seconds);
        age.encode(encoder.encode_descriptor(
            "caracal_outbox_oldest_pending_age_seconds",
            "Age of the oldest undispatched outbox row",
            None,
            age.metric_type(),
        )?)?;
        let dead = ConstGauge::new(f.dead);
        dead.encode(encoder.encode_descriptor(
            "caracal_outbox_dead",
            "Outbox rows given up on after too many attempts",
            None,
            dead.metric_type(),
        )?)?;
        Ok(())
    }
}

/// `process_*` metrics read from `/proc/self` at scrape time.
#[derive(Debug)]
struct ProcessCollector;

impl Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        // A failed read of /proc omits the figures rather than failing the whole scrape.
        let Ok(process) = procfs::process::Process::myself() else { return Ok(()) };
        let ticks = procfs::ticks_per_second() as f64;
        if let Ok(stat) = process.stat() {
            let cpu = ConstCounter::new((stat.utime + stat.stime) as f64 / ticks);
            cpu.encode(encoder.encode_descriptor(
                "process_cpu_seconds",
                "User and system CPU time spent",
                None,
                cpu.metric_type(),
            )?)?;
            let rss = ConstGauge::new((stat.rss * procfs::page_size()) as i64);
            rss.encode(encoder.encode_descriptor(
                "process_resident_memory_bytes",
                "Resident memory size",
                None,
                rss.metric_type(),
            )?)?;
            let virt = ConstGauge::new(stat.vsize as i64);
            virt.encode(encoder.encode_descriptor(
                "process_virtual_memory_bytes",
                "Virtual memory size",
                None,
                virt.metric_type(),
            )?)?;
            if let Ok(boot) = procfs::boot_time_secs() {
                let start = ConstGauge::new(boot as f64 + stat.starttime as f64 / ticks);
                start.encode(encoder.encode_descriptor(
                    "process_start_time_seconds",
                    "Start time of the process since the Unix epoch",
                    None,
                    start.metric_type(),
                )?)?;
            }
        }
        if let Ok(fds) = process.fd_count() {
            let open = ConstGauge::new(fds as i64);
            open.encode(encoder.encode_descriptor(
                "process_open_fds",
                "Open file descriptors",
                None,
                open.metric_type(),
            )?)?;
        }
        if let Ok(limits) = process.limits()
            && let procfs::process::LimitValue::Value(max) = limits.max_open_files.soft_limit
        {
            let max = ConstGauge::new(max as i64);
            max.encode(encoder.encode_descriptor(
                "process_max_fds",
                "Limit on open file descriptors",
                None,
                max.metric_type(),
            )?)?;
        }
        Ok(())
    }
}
