//! `caracal_audit_*` metrics, declared once.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// Labels of `caracal_audit_stream_resets_total`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResetLabels {
    /// `group_missing` (the group vanished) or `stream_behind` (its position was past the
    /// stream's end).
    pub reason: &'static str,
}

/// Labels of `caracal_audit_consume_stage_seconds_total`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StageLabels {
    /// `read` (an `XREADGROUP` that returned entries), `insert` (the ledger insert) or `ack`
    /// (`XACK`).
    pub stage: &'static str,
}

/// The audit service's metric families.
#[derive(Debug, Clone, Default)]
pub struct Metrics {
    pub(crate) recorded: Counter,
    pub(crate) duplicates: Counter,
    pub(crate) dead_lettered: Counter,
    pub(crate) claimed: Counter,
    pub(crate) dlq_length: Gauge,
    pub(crate) stream_resets: Family<ResetLabels, Counter>,
    pub(crate) ledger_gap: Gauge,
    pub(crate) ledger_healed: Counter,
    pub(crate) ledger_watermark: Gauge,
    pub(crate) stage_seconds: Family<StageLabels, Counter<f64, std::sync::atomic::AtomicU64>>,
}

impl Metrics {
    /// Adds `seconds` spent in consumer `stage`.
    pub(crate) fn stage(&self, stage: &'static str, seconds: f64) {
        self.stage_seconds.get_or_create(&StageLabels { stage }).inc_by(seconds);
    }

    /// Seconds spent so far per consumer stage: `(stage, seconds)` (for benchmarks).
    pub fn stage_totals(&self) -> Vec<(&'static str, f64)> {
        ["read", "insert", "ack"]
            .into_iter()
            .map(|stage| (stage, self.stage_seconds.get_or_create(&StageLabels { stage }).get()))
            .collect()
    }

    /// Creates and registers the families (the caller's registry carries the prefix).
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self::default();
        registry.register("events_recorded", "Events written to the ledger", m.recorded.clone());
        registry.register("events_duplicate", "Deliveries of events the ledger already held", m.duplicates.clone());
        registry.register("events_dead_lettered", "Entries moved to the DLQ", m.dead_lettered.clone());
        registry.register("entries_claimed", "Pending entries taken over from another consumer", m.claimed.clone());
        registry.register("dlq_length", "Entries in caracal.events.dlq", m.dlq_length.clone());
        // Both series exist from the start at 0, so the first reset is an increase
        // (`increase()` cannot see a series that appears already at 1).
        for reason in ["group_missing", "stream_behind"] {
            m.stream_resets.get_or_create(&ResetLabels { reason }).inc_by(0);
        }
        for stage in ["read", "insert", "ack"] {
            m.stage_seconds.get_or_create(&StageLabels { stage }).inc_by(0.0);
        }
        registry.register(
            "consume_stage_seconds",
            "Time the consumer spent per stage (read, insert, ack), to see where a backlog's time goes",
            m.stage_seconds.clone(),
        );
        registry.register(
            "stream_resets",
            "Times caracal.events went backwards under the group (Redis lost data) and the group was reset",
            m.stream_resets.clone(),
        );
        registry.register(
            "ledger_gap",
            "Outbox rows dispatched longer ago than the grace period and not in the ledger, at the last reconciliation",
            m.ledger_gap.clone(),
        );
        registry.register(
            "ledger_healed",
            "Ledger rows written from the outbox because the stream lost their entries",
            m.ledger_healed.clone(),
        );
        registry.register(
            "ledger_watermark",
            "Outbox id at or below which every live row is in the ledger",
            m.ledger_watermark.clone(),
        );
        m
    }
}
