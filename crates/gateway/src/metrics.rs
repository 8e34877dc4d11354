//! The `caracal_gateway_*` families.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// `result` label.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct ResultLabels {
    /// For federations: `complete`, `partial`, `failed`, `not_found`, `unavailable`,
    /// `bad_request`; for instance scrapes: `ok` or the reason.
    pub result: &'static str,
}

/// The gateway's figures; registered under the `caracal_gateway` prefix.
#[derive(Debug, Clone)]
pub struct Metrics {
    /// `caracal_gateway_federations_total{result}`.
    pub federations: Family<ResultLabels, Counter>,
    /// `caracal_gateway_federation_duration_seconds`.
    pub duration: Histogram,
    /// `caracal_gateway_instance_scrapes_total{result}`.
    pub instance_scrapes: Family<ResultLabels, Counter>,
    /// `caracal_gateway_registry_targets`: targets held in memory.
    pub registry_targets: Gauge,
}

impl Metrics {
    /// Registers the families in `registry` (already prefixed `caracal_gateway`).
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self {
            federations: Family::default(),
            duration: Histogram::new([0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0]),
            instance_scrapes: Family::default(),
            registry_targets: Gauge::default(),
        };
        registry.register(
            "registry_targets",
            "Targets the gateway holds in memory (compare with the registry's count)",
            m.registry_targets.clone(),
        );
        registry.register("federations", "Federation requests, by result", m.federations.clone());
        registry.register("federation_duration_seconds", "Time to answer a federation request", m.duration.clone());
        registry.register(
            "instance_scrapes",
            "Instance scrapes, by result (ok or the reason)",
            m.instance_scrapes.clone(),
        );
        m
    }
}
