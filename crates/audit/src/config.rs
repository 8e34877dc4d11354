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
    /// How long the ledger keeps an event (`0`: forever). Never shorter than the outbox's
    /// retention (`coordinator.relay.retention`): start-up fails if it is. Default 400 days.
    #[serde(with = "humantime_serde")]
    pub retention: Duration,
}

/// The one value of `[coordinator.relay]` the audit service checks its retention against.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct OutboxRetention {
    /// `coordinator.relay.retention`.
    #[serde(with = "humantime_serde")]
    pub retention: Duration,
}

impl Default for OutboxRetention {
    fn default() -> Self {
        Self { retention: caracal_store::outbox::DEFAULT_RETENTION }
    }
}

impl AuditConfig {
    /// Checks `audit.retention` against the outbox's: the ledger must keep an event at least as
    /// long as the outbox keeps its row, or the ledger would drop what it could still heal.
    ///
    /// # Errors
    /// Naming `audit.retention` when it is shorter.
    pub fn validate(&self, outbox: &OutboxRetention) -> Result<(), caracal_core::ConfigError> {
        if !self.retention.is_zero() && self.retention < outbox.retention {
            return Err(caracal_core::ConfigError {
                key: "audit.retention".into(),
                origin: "`CARACAL_AUDIT__RETENTION` or the config file".into(),
                message: format!(
                    "{} is shorter than the outbox's retention (coordinator.relay.retention, {}): the ledger keeps every \
                     event at least as long as the outbox does; use 0 (forever) or at least {}",
                    humantime::format_duration(self.retention),
                    humantime::format_duration(outbox.retention),
                    humantime::format_duration(outbox.retention),
                ),
            });
        }
        Ok(())
    }
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
            retention: Duration::from_secs(400 * 86_400),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::{AuditConfig, OutboxRetention};

    #[test]
    fn the_ledger_may_not_keep_less_than_the_outbox() {
        let outbox = OutboxRetention { retention: Duration::from_secs(2 * 86_400) };
        let short = AuditConfig { retention: Duration::from_secs(86_400), ..AuditConfig::default() };
        let refused = short.validate(&outbox).expect_err("shorter than the outbox's");
        assert_eq!(refused.key, "audit.retention");
        assert!(refused.message.contains("coordinator.relay.retention, 2days"), "{}", refused.message);
        for keep in [Duration::ZERO, Duration::from_secs(2 * 86_400), Duration::from_secs(400 * 86_400)] {
            let config = AuditConfig { retention: keep, ..AuditConfig::default() };
            assert!(config.validate(&outbox).is_ok(), "{keep:?}");
        }
        assert!(AuditConfig::default().validate(&OutboxRetention::default()).is_ok(), "the defaults agree");
    }
}
