//! The transactional outbox: events written in the caller's transaction, so a change and its
//! event commit together or not at all; then claimed, relayed and marked by the coordinator.

use std::time::Duration;

use caracal_core::telemetry;
use serde_json::value::RawValue;
use sqlx::PgConnection;
use sqlx::types::Json;
use tracing::Instrument;

use crate::{Error, Event, NewEvent, rfc3339};

/// Writes `event` in the caller's transaction and returns its outbox id. The row keeps the
/// current span's trace context, so the relay and the audit ledger continue the trace of the
/// request that made the change.
///
/// # Errors
/// When the insert fails (the caller's transaction is then doomed, as it should be).
pub async fn enqueue(tx: &mut PgConnection, event: &NewEvent) -> Result<i64, Error> {
    let span = telemetry::db_span("postgresql", "INSERT", "outbox");
    let trace_context = telemetry::current_traceparent();
    let id = sqlx::query_scalar(
        "INSERT INTO outbox (event_type, target, instance, payload, trace_context) VALUES ($1, $2, $3, $4, $5) \
         RETURNING id",
    )
    .bind(&event.event_type)
    .bind(&event.target)
    .bind(&event.instance)
    .bind(&event.payload)
    .bind(trace_context)
    .fetch_one(tx)
    .instrument(span)
    .await?;
    Ok(id)
}

/// An outbox row as selected for relay: id, type, target, instance, payload, created at,
/// trace context.
type EventRow = (i64, String, Option<String>, Option<String>, Json<Box<RawValue>>, String, Option<String>);

/// The claim's statement (`$1` the batch size), kept as one constant so a test can show its
/// plan. The subquery picks and locks the batch; the update finds those rows again by their
/// physical address (`ctid = ANY(ARRAY(...))`, a TID scan). Written as `id IN (...)`, the
/// planner joined the two with a hash over a sequential scan of the whole outbox (100,000
/// rows read to mark 2,000: 18 of a batch's 47 ms); `id = ANY(...)` would cost a primary-key
/// lookup per row. A row's address is stable here: the subquery's lock is held until the
/// claiming transaction ends, so nothing else can update or delete the row in between.
pub const CLAIM: &str = concat!(
    "UPDATE outbox SET dispatched_at = now() WHERE ctid = ANY(ARRAY(SELECT ctid FROM outbox \
       WHERE dispatched_at IS NULL AND dead_at IS NULL AND next_attempt_at <= now() \
       ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED)) \
     RETURNING id, event_type, target, instance, payload, ",
    rfc3339!("created_at"),
    ", trace_context",
);

/// Claims up to `limit` undispatched rows that are due, oldest first, and marks them
/// dispatched, inside the caller's transaction: one statement locks and marks them, skipping
/// rows another relay holds (`FOR UPDATE SKIP LOCKED`). The caller publishes them and then
/// commits; if publishing fails it rolls back (or [`release`]s the rows it could not send),
/// so a row is dispatched exactly when its transaction says so. Returned in id order.
///
/// # Errors
/// When the query fails.
pub async fn claim(tx: &mut PgConnection, limit: i64) -> Result<Vec<Event>, Error> {
    // Walk the pending index in id order, whatever the statistics say. Right after a burst
    // (a backlog found after an outage) they still count the outbox as nearly empty, and the
    // planner then fetches *every* pending row and sorts them, once per batch: 60 ms a batch
    // at 100,000 pending instead of 2 ms. `SET LOCAL` ends with the claiming transaction.
    sqlx::raw_sql("SET LOCAL enable_bitmapscan = off; SET LOCAL enable_sort = off").execute(&mut *tx).await?;
    let rows: Vec<EventRow> = sqlx::query_as(CLAIM).bind(limit).fetch_all(tx).await?;
    let mut events: Vec<Event> = rows
        .into_iter()
        .map(|(id, event_type, target, instance, payload, occurred_at, trace_context)| Event {
            id,
            event_type,
            target,
            instance,
            payload: payload.0,
            occurred_at,
            trace_context,
        })
        .collect();
    events.sort_unstable_by_key(|e| e.id);
    Ok(events)
}

/// Undoes [`claim`]'s mark for rows that were not sent, inside the claiming transaction.
///
/// # Errors
/// When the update fails.
pub async fn release(tx: &mut PgConnection, ids: &[i64]) -> Result<(), Error> {
    if !ids.is_empty() {
        sqlx::query("UPDATE outbox SET dispatched_at = NULL WHERE id = ANY($1)").bind(ids).execute(tx).await?;
    }
    Ok(())
}

/// How failed deliveries are retried.
#[derive(Debug, Clone, Copy)]
pub struct Retry {
    /// First delay; doubled after each further failure.
    pub base: Duration,
    /// Longest delay.
    pub cap: Duration,
    /// Attempts after which a row is marked dead (an alert, not a reason to be unready).
    pub max_attempts: i32,
}

/// Records a failed delivery of row `id` (claimed in this transaction): un-marks it, schedules
/// the next attempt with capped exponential backoff, or marks the row dead after
/// `retry.max_attempts`. Returns whether it is now dead.
///
/// # Errors
/// When the update fails.
pub async fn record_failure(tx: &mut PgConnection, id: i64, error: &str, retry: Retry) -> Result<bool, Error> {
    let dead: Option<bool> = sqlx::query_scalar(
        "UPDATE outbox SET attempts = attempts + 1, last_error = $2, dispatched_at = NULL, \
           next_attempt_at = now() + make_interval(secs => least($4::float8, $3::float8 * power(2, attempts))), \
           dead_at = CASE WHEN attempts + 1 >= $5 THEN now() END \
         WHERE id = $1 RETURNING dead_at IS NOT NULL",
    )
    .bind(id)
    .bind(error)
    .bind(retry.base.as_secs_f64())
    .bind(retry.cap.as_secs_f64())
    .bind(retry.max_attempts)
    .fetch_optional(tx)
    .await?;
    Ok(dead.unwrap_or(false))
}

/// The purge's statement (`$1` the retention in seconds, `$2` the batch), kept as one constant
/// so a test can show its plan. The batch goes to the delete as an array of ids: written as
/// `id IN (...)` it was planned, like the claim's, as a hash join over a sequential scan of
/// the whole outbox. By id, not by address as in [`CLAIM`]: this subquery takes no lock, so a
/// row could move between being chosen and being deleted.
pub const PURGE: &str = "DELETE FROM outbox WHERE id = ANY(ARRAY(SELECT id FROM outbox \
       WHERE dispatched_at IS NOT NULL AND dispatched_at < now() - make_interval(secs => $1) \
         AND EXISTS (SELECT 1 FROM audit_events a WHERE a.outbox_id = outbox.id) LIMIT $2))";

/// Deletes up to `batch` rows dispatched more than `retention` ago **and already in the
/// ledger**; returns how many. A row the ledger has not recorded is kept whatever its age, so
/// the ledger can always heal from it.
///
/// # Errors
/// When the delete fails.
pub async fn purge(pool: &sqlx::PgPool, retention: Duration, batch: i64) -> Result<u64, Error> {
    let done = sqlx::query(PURGE).bind(retention.as_secs_f64()).bind(batch).execute(pool).await?;
    Ok(done.rows_affected())
}
