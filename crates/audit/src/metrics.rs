//! `caracal_audit_*` metrics, declared once.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// The audit service's metric families.
#[derive(Debug, Clone, Default)]
pub struct Metrics {
    pub(crate) recorded: Counter,
    pub(crate) duplicates: Counter,
    pub(crate) dead_lettered: Counter,
    pub(crate) claimed: Counter,
    pub(crate) dlq_length: Gauge,
}

impl Metrics {
    /// Creates and registers the families (the caller's registry carries the prefix).
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self::default();
        registry.register("events_recorded", "Events written to the ledger", m.recorded.clone());
        registry.register("events_duplicate", "Deliveries of events the ledger already held", m.duplicates.clone());
        registry.register("events_dead_lettered", "Entries moved to the DLQ", m.dead_lettered.clone());
        registry.register("entries_claimed", "Pending entries taken over from another consumer", m.claimed.clone());
        registry.register("dlq_length", "Entries in caracal.events.dlq", m.dlq_length.clone());
        m
    }
}
