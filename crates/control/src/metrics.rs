//! `caracal_control_*` metrics, declared once.

use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// Labels of the per-target discovery families.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TargetLabels {
    /// The target's name.
    pub target: String,
}

/// Labels of `caracal_control_discovery_failures_total`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FailureLabels {
    /// The target's name.
    pub target: String,
    /// `timeout`, `servfail`, `refused`, `unreachable` or `error`.
    pub reason: &'static str,
}

/// Labels of `caracal_control_declared_reconciles_total`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ActionLabels {
    /// `create`, `update`, `delete` or `clash`.
    pub action: &'static str,
}

/// Control's metric families.
#[derive(Debug, Clone)]
pub struct Metrics {
    pub(crate) discovery_failures: Family<FailureLabels, Counter>,
    pub(crate) last_success: Family<TargetLabels, Gauge<f64, AtomicU64>>,
    pub(crate) discovered_instances: Family<TargetLabels, Gauge>,
    pub(crate) instance_changes: Counter,
    pub(crate) declared_files_invalid: Gauge,
    pub(crate) declared_actions: Family<ActionLabels, Counter>,
}

impl Metrics {
    /// Creates and registers the families (the caller's registry carries the prefix).
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self {
            discovery_failures: Family::default(),
            last_success: Family::default(),
            discovered_instances: Family::default(),
            instance_changes: Counter::default(),
            declared_files_invalid: Gauge::default(),
            declared_actions: Family::default(),
        };
        registry.register(
            "discovery_failures",
            "DNS resolutions of a discovered target that gave no usable answer (the last known instances stay)",
            m.discovery_failures.clone(),
        );
        registry.register(
            "discovery_last_success_timestamp_seconds",
            "When a discovered target was last resolved (records, or an authoritative empty answer)",
            m.last_success.clone(),
        );
        registry.register(
            "discovered_instances",
            "Instances a discovered target has, as last resolved",
            m.discovered_instances.clone(),
        );
        registry.register(
            "discovery_instance_changes",
            "Resolutions that changed a discovered target's instances",
            m.instance_changes.clone(),
        );
        registry.register(
            "declared_files_invalid",
            "Files under control.targets_dir that do not parse or validate (they change nothing)",
            m.declared_files_invalid.clone(),
        );
        registry.register(
            "declared_reconciles",
            "Changes made to the registry from declared files, and names refused because the API owns them",
            m.declared_actions.clone(),
        );
        m
    }

    /// Forgets a target's per-target series (it is gone, or no longer discovered).
    pub(crate) fn forget(&self, target: &str) {
        let labels = TargetLabels { target: target.into() };
        self.last_success.remove(&labels);
        self.discovered_instances.remove(&labels);
    }
}
