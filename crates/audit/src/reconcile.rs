//! Keeps the ledger complete whatever Redis loses.
//!
//! The stream is the fast path; the outbox stays the record. Every `interval`, one round:
//! 1. moves the ledger watermark up past every outbox row the ledger holds (reading only rows
//!    above it, and never past ids an open transaction may still commit: [`ledger::Horizon`]);
//! 2. counts the **gap**: rows dispatched more than `grace` ago that are not in the ledger
//!    (their stream entries were lost to a restart without persistence, a failover, a
//!    `FLUSHALL`, a trim or an eviction), published as `caracal_audit_ledger_gap`;
//! 3. heals the gap by copying those rows from the outbox into the ledger (idempotent on the
//!    outbox id, so a late stream delivery changes nothing).
//!
//! Every replica runs it; the watermark only moves up and the copy is idempotent, so replicas
//! racing do no harm.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use caracal_core::{Check, Failure, Observed, Rung};
use caracal_store::ledger;
use tokio_util::sync::CancellationToken;

use crate::config::LedgerConfig;
use crate::metrics::Metrics;

/// Ids the watermark moves at most per round, so a round's work stays bounded after a long
/// outage (it catches up over several rounds).
const STEP: i64 = 500_000;
/// How long after reading an id the transaction horizon is read (see [`ledger::Horizon`]).
const SETTLE: Duration = Duration::from_secs(1);

/// What the last round found, shared with the `audit:ledger_gap` check.
#[derive(Debug)]
pub struct GapState {
    started: Instant,
    last: Mutex<Option<(Instant, i64)>>,
}

impl GapState {
    fn new() -> Self {
        Self { started: Instant::now(), last: Mutex::new(None) }
    }

    fn record(&self, gap: i64) {
        *self.last.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Some((Instant::now(), gap));
    }

    fn last(&self) -> Option<(Instant, i64)> {
        *self.last.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// The reconciliation loop of one audit replica.
#[derive(Debug)]
pub struct Reconciler {
    pool: sqlx::PgPool,
    metrics: Metrics,
    config: LedgerConfig,
    horizon: ledger::Horizon,
    state: Arc<GapState>,
    /// Whether the last round found a gap (so the warning is logged once per episode).
    healing: bool,
}

impl Reconciler {
    /// A reconciler of `pool`'s ledger against its outbox.
    pub fn new(pool: sqlx::PgPool, metrics: Metrics, config: LedgerConfig) -> Self {
        Self {
            pool,
            metrics,
            config,
            horizon: ledger::Horizon::new(SETTLE),
            state: Arc::new(GapState::new()),
            healing: false,
        }
    }

    /// What the rounds find, for [`gap_check`].
    pub fn state(&self) -> Arc<GapState> {
        Arc::clone(&self.state)
    }

    /// Reconciles every `interval` until `stop`.
    pub async fn run(mut self, stop: CancellationToken) {
        while !stop.is_cancelled() {
            let round = tokio::select! {
                r = self.round() => r,
                () = stop.cancelled() => break,
            };
            if let Err(e) = round {
                tracing::warn!(error = %e, "reconciling the ledger with the outbox failed; retrying");
            }
            tokio::select! {
                () = tokio::time::sleep(self.config.interval) => {}
                () = stop.cancelled() => break,
            }
        }
    }

    /// One round: advance the watermark, measure the gap, heal it. Returns the gap found.
    ///
    /// # Errors
    /// When PostgreSQL fails; the next round starts over.
    pub async fn round(&mut self) -> Result<i64, caracal_store::Error> {
        let reading = ledger::read(&self.pool).await?;
        let settled = self.horizon.observe(reading, Instant::now());
        let watermark = ledger::advance(&self.pool, settled, STEP).await?;
        self.metrics.ledger_watermark.set(watermark);
        let gap = ledger::gap(&self.pool, watermark, self.config.grace).await?;
        self.metrics.ledger_gap.set(gap);
        self.state.record(gap);
        if gap == 0 {
            if std::mem::take(&mut self.healing) {
                tracing::info!("the ledger is complete again: every dispatched outbox row is in it");
            }
            return Ok(gap);
        }
        if !std::mem::replace(&mut self.healing, true) {
            tracing::warn!(
                rows = gap,
                grace = ?self.config.grace,
                "the ledger is missing dispatched events (the stream lost them, or no consumer read them \
                 within the grace period); healing from the outbox"
            );
        }
        // Heal the whole gap found, in bounded statements.
        let mut healed = 0;
        while healed < gap.unsigned_abs() {
            let n = ledger::heal(&self.pool, watermark, self.config.grace, self.config.heal_batch).await?;
            healed += n;
            self.metrics.ledger_healed.inc_by(n);
            if n < self.config.heal_batch.unsigned_abs() {
                break;
            }
        }
        Ok(gap)
    }
}

/// `audit:ledger_gap` (delivery rung, not required): the last reconciliation found every
/// dispatched outbox row in the ledger. A gap is healed without an operator, so it warns and
/// never takes the ledger out of rotation; it observes the rows missing.
pub fn gap_check(state: Arc<GapState>, interval: Duration) -> Check {
    Check::new("audit:ledger_gap", Rung::Delivery, move || {
        let state = Arc::clone(&state);
        async move {
            // A round is due every `interval`; three missed ones mean the reconciler is stuck.
            let stale_after = interval * 3 + Duration::from_secs(5);
            match state.last() {
                None if state.started.elapsed() < stale_after => Ok(Observed::new(0.0, "rows")),
                None => Err(Failure::new("the ledger has not been reconciled with the outbox yet")),
                Some((at, _)) if at.elapsed() > stale_after => {
                    Err(Failure::new(format!("the ledger was last reconciled {:.0}s ago", at.elapsed().as_secs_f64())))
                }
                Some((_, 0)) => Ok(Observed::new(0.0, "rows")),
                Some((_, gap)) => Err(Failure::with(
                    format!("{gap} dispatched outbox rows were missing from the ledger (healing from the outbox)"),
                    Observed::new(gap as f64, "rows"),
                )),
            }
        }
    })
    .required(false)
}
