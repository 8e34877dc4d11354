//! `caracal_coordinator_*` metrics, declared once.

use std::sync::Arc;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Labels of `caracal_coordinator_probes_total`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    /// `up`, `unready` or `down`.
    pub result: &'static str,
}

/// Labels of `caracal_coordinator_instance_up`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct InstanceLabels {
    /// The target's name.
    pub target: Arc<str>,
    /// The instance's base URL (not `instance`, which Prometheus gives the scrape target).
    pub url: Arc<str>,
}

/// Labels of `caracal_coordinator_instance_latency_seconds`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LatencyLabels {
    /// The target's name.
    pub target: Arc<str>,
    /// The instance's base URL.
    pub url: Arc<str>,
    /// `recent` (the median of the last 12 successful probes) or `baseline` (of the 48
    /// before: what the latency detector compares it with).
    pub window: &'static str,
}

/// One probed instance's series, looked up once when its task starts (a probe then sets
/// them without hashing a label).
#[derive(Debug)]
pub(crate) struct InstanceSeries {
    up: Gauge,
    degraded: Gauge,
    recent: Gauge<f64, std::sync::atomic::AtomicU64>,
    baseline: Gauge<f64, std::sync::atomic::AtomicU64>,
    exported: [bool; 2],
}

/// Labels of `caracal_target_certificate_expiry_timestamp_seconds`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CertificateLabels {
    /// The target's name.
    pub target: Arc<str>,
    /// The instance's URL.
    pub instance: Arc<str>,
}

/// Labels of `caracal_coordinator_relay_stage_seconds_total`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StageLabels {
    /// `claim` (reading and marking a batch, one statement), `xadd` (the pipelined `XADD`s)
    /// or `commit`.
    pub stage: &'static str,
}

/// The relay's stages, in order.
const STAGES: [&str; 3] = ["claim", "xadd", "commit"];

/// The coordinator's metric families.
#[derive(Debug, Clone)]
pub struct Metrics {
    pub(crate) probes: Family<ResultLabels, Counter>,
    pub(crate) probe_duration: Histogram,
    pub(crate) instances_owned: Gauge,
    pub(crate) instance_up: Family<InstanceLabels, Gauge>,
    pub(crate) instance_degraded: Family<InstanceLabels, Gauge>,
    pub(crate) instance_latency: Family<LatencyLabels, Gauge<f64, std::sync::atomic::AtomicU64>>,
    pub(crate) transitions: Counter,
    pub(crate) relay_batch: Histogram,
    pub(crate) relay_published: Counter,
    pub(crate) relay_failures: Counter,
    pub(crate) relay_dead: Counter,
    pub(crate) relay_stage_seconds: Family<StageLabels, Counter<f64, std::sync::atomic::AtomicU64>>,
    pub(crate) members: Gauge,
    pub(crate) tls_unverified: Counter,
    pub(crate) certificate_expiry: Family<CertificateLabels, Gauge>,
}

impl Metrics {
    /// `instance_up` and `instance_degraded` of an instance now probed here (latencies come
    /// once measured).
    pub(crate) fn instance_series(&self, labels: &InstanceLabels) -> InstanceSeries {
        InstanceSeries {
            up: self.instance_up.get_or_create(labels).clone(),
            degraded: self.instance_degraded.get_or_create(labels).clone(),
            recent: Gauge::default(),
            baseline: Gauge::default(),
            exported: [false; 2],
        }
    }

    /// Sets an instance's series from its shown status and its detector's medians (µs).
    pub(crate) fn export_instance(
        &self,
        target: &Arc<str>,
        url: &Arc<str>,
        series: &mut InstanceSeries,
        status: crate::prober::Status,
        medians: [Option<u32>; 2],
    ) {
        use crate::prober::Status;
        series.up.set(i64::from(matches!(status, Status::Up | Status::Degraded)));
        series.degraded.set(i64::from(status == Status::Degraded));
        for (i, (window, median)) in [("recent", medians[0]), ("baseline", medians[1])].into_iter().enumerate() {
            let Some(us) = median else { continue };
            if !series.exported[i] {
                let labels = LatencyLabels { target: Arc::clone(target), url: Arc::clone(url), window };
                let gauge = self.instance_latency.get_or_create(&labels).clone();
                if i == 0 {
                    series.recent = gauge
                } else {
                    series.baseline = gauge
                }
                series.exported[i] = true;
            }
            let gauge = if i == 0 { &series.recent } else { &series.baseline };
            gauge.set(f64::from(us) / 1e6);
        }
    }

    /// Removes an instance's series (its task ended: ownership moved).
    pub(crate) fn forget_instance(&self, labels: &InstanceLabels) {
        self.instance_up.remove(labels);
        self.instance_degraded.remove(labels);
        for window in ["recent", "baseline"] {
            self.instance_latency.remove(&LatencyLabels {
                target: labels.target.clone(),
                url: labels.url.clone(),
                window,
            });
        }
    }

    /// Adds `seconds` spent in relay `stage`.
    pub(crate) fn relay_stage(&self, stage: &'static str, seconds: f64) {
        self.relay_stage_seconds.get_or_create(&StageLabels { stage }).inc_by(seconds);
    }

    /// Seconds spent so far per relay stage: `(stage, seconds)` (for benchmarks).
    pub fn relay_stage_totals(&self) -> Vec<(&'static str, f64)> {
        STAGES
            .into_iter()
            .map(|stage| (stage, self.relay_stage_seconds.get_or_create(&StageLabels { stage }).get()))
            .collect()
    }

    /// Creates and registers the families (the caller's registry carries the prefix).
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self {
            probes: Family::default(),
            probe_duration: Histogram::new(exponential_buckets(0.0005, 2.0, 16)),
            instances_owned: Gauge::default(),
            instance_up: Family::default(),
            instance_degraded: Family::default(),
            instance_latency: Family::default(),
            transitions: Counter::default(),
            relay_batch: Histogram::new(exponential_buckets(1.0, 2.0, 11)),
            relay_published: Counter::default(),
            relay_failures: Counter::default(),
            relay_dead: Counter::default(),
            relay_stage_seconds: Family::default(),
            members: Gauge::default(),
            tls_unverified: Counter::default(),
            certificate_expiry: Family::default(),
        };
        registry.register("probes", "Probes of watched instances, by observed status", m.probes.clone());
        registry.register(
            "probe_duration_seconds",
            "Time to probe /health and /ready of one instance",
            m.probe_duration.clone(),
        );
        registry.register("instances_owned", "Instances this replica probes", m.instances_owned.clone());
        registry.register(
            "instance_up",
            "1 when a watched instance's recorded status is up (exported by the replica probing it)",
            m.instance_up.clone(),
        );
        registry.register(
            "instance_degraded",
            "1 when a watched instance is degraded: live and ready, but slow, flaky or flapping (instance_up stays 1)",
            m.instance_degraded.clone(),
        );
        registry.register(
            "instance_latency_seconds",
            "A watched instance's median probe latency: recent (last 12 successful probes) and baseline (the 48 before)",
            m.instance_latency.clone(),
        );
        registry.register("transitions", "Status transitions recorded", m.transitions.clone());
        registry.register("relay_batch_size", "Outbox rows relayed per batch", m.relay_batch.clone());
        registry.register("relay_published", "Outbox rows published to the stream", m.relay_published.clone());
        registry.register("relay_failures", "Failed relay attempts (batches)", m.relay_failures.clone());
        registry.register("relay_dead", "Outbox rows marked dead by this replica", m.relay_dead.clone());
        for stage in STAGES {
            m.relay_stage_seconds.get_or_create(&StageLabels { stage }).inc_by(0.0);
        }
        registry.register(
            "relay_stage_seconds",
            "Time the relay spent per stage (claim, xadd, commit), to see where a backlog's time goes",
            m.relay_stage_seconds.clone(),
        );
        registry.register("members", "Live coordinator replicas seen", m.members.clone());
        registry.register(
            "tls_unverified_probes",
            "TLS probes made without verifying the certificate (targets with insecure_skip_verify)",
            m.tls_unverified.clone(),
        );
        m
    }

    /// Registers the families named for targets rather than for the coordinator
    /// (`caracal_target_*`) in the service's root `registry`.
    pub fn register_target_families(&self, registry: &mut Registry) {
        registry.register(
            "caracal_target_certificate_expiry_timestamp_seconds",
            "The earliest notAfter of the certificate chain an instance presented (Unix seconds; exported by the replica probing it)",
            self.certificate_expiry.clone(),
        );
    }
}
