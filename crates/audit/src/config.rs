//! The `[audit]` settings (`CARACAL_AUDIT__*` in the environment).

use std::time::Duration;

use serde::Deserialize;

/// Settings of the audit service.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuditConfig {
    /// Entries read per batch.
    pub batch: usize,
    /// How long one read waits for new entries.
    #[serde(with = "humantime_serde")]
    pub block: Duration,
    /// Entries pending (unacknowledged) this long are taken over from their consumer.
    #[serde(with = "humantime_serde")]
    pub claim_idle: Duration,
    /// An entry delivered more often than this goes to the DLQ.
    pub max_deliveries: u64,
    /// `stream:lag` fails beyond this many undelivered entries.
    pub max_lag: u64,
    /// ... or when an entry stays unacknowledged this long.
    #[serde(with = "humantime_serde")]
    pub max_pending_age: Duration,
    /// Largest page of `/v1/events`.
    pub max_page: i64,
    /// This consumer's name in the group (default: host, pid and a random suffix).
    pub consumer: Option<String>,
    /// Reconciling the ledger with the outbox (`[audit.ledger]`).
    pub ledger: LedgerConfig,
}

/// How the ledger is kept complete when the stream loses entries.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LedgerConfig {
    /// A dispatched row not in the ledger after this long counts as lost and is healed from
    /// the outbox; until then it is the stream consumer's.
    #[serde(with = "humantime_serde")]
    pub grace: Duration,
    /// How often the ledger is reconciled.
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
    /// Rows healed per statement.
    pub heal_batch: i64,
}

impl Default for LedgerConfig {
    fn default() -> Self {
        Self { grace: caracal_store::ledger::DEFAULT_GRACE, interval: Duration::from_secs(5), heal_batch: 5_000 }
    }
}

impl Default for AuditConfig {
    fn default() -> Self {
        Self {
            batch: 2_000,
            block: Duration::from_secs(1),
            claim_idle: Duration::from_secs(30),
            max_deliveries: 5,
            max_lag: 10_000,
            max_pending_age: Duration::from_secs(120),
            max_page: 500,
            consumer: None,
            ledger: LedgerConfig::default(),
        }
    }
}
