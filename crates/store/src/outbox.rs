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

/// Writes `events` in `tx` with one statement (a batch of registry writes); the trace context is
/// the current one for all.
///
/// # Errors
/// A database error.
pub async fn enqueue_many(tx: &mut PgConnection, events: &[NewEvent]) -> Result<(), Error> {
    let span = telemetry::db_span("postgresql", "INSERT", "outbox");
    let trace_context = telemetry::current_traceparent();
    let types: Vec<&str> = events.iter().map(|e| e.event_type.as_str()).collect();
    let targets: Vec<Option<&str>> = events.iter().map(|e| e.target.as_deref()).collect();
    let instances: Vec<Option<&str>> = events.iter().map(|e| e.instance.as_deref()).collect();
    let payloads: Vec<&serde_json::Value> = events.iter().map(|e| &e.payload).collect();
    sqlx::query(
        "INSERT INTO outbox (event_type, target, instance, payload, trace_context) \
         SELECT e.*, $5 FROM unnest($1::text[], $2::text[], $3::text[], $4::jsonb[]) AS e",
    )
    .bind(&types)
    .bind(&targets)
    .bind(&instances)
    .bind(&payloads)
    .bind(trace_context)
    .execute(tx)
    .instrument(span)
    .await?;
    Ok(())
}

/// An outbox row as selected for relay: id, type, target, instance, payload, created at,
/// trace context.
type EventRow = (i64, String, Option<String>, Option<String>, Json<Box<RawValue>>, String, Option<String>);

/// The claim's statement (`$1` the batch size, `$2` an id to walk up from, 0 for the floor),
/// kept as one constant so a test can show its plan. The subquery walks the primary key up
/// from `$2` or [`floor`], whichever is higher, and picks and locks the first due rows; no
/// index names `dispatched_at` (migration 0009), so the mark is a HOT update, written in place
/// on the row's page. The update finds the rows again by their physical address (`ctid =
/// ANY(ARRAY(...))`, a TID scan). Written as `id IN (...)`, the planner joined the two with a
/// hash over a sequential scan of the whole outbox (100,000 rows read to mark 2,000: 18 of a
/// batch's 47 ms); `id = ANY(...)` would cost a primary-key lookup per row. A row's address
/// is stable here: the subquery's lock is held until the claiming transaction ends, so nothing
/// else can update or delete the row in between.
pub const CLAIM: &str = concat!(
    "UPDATE outbox SET dispatched_at = now() WHERE ctid = ANY(ARRAY(SELECT ctid FROM outbox \
       WHERE id > greatest($2, (SELECT id FROM outbox_floor)) \
         AND dispatched_at IS NULL AND dead_at IS NULL AND next_attempt_at <= now() \
       ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED)) \
     RETURNING id, event_type, target, instance, payload, ",
    rfc3339!("created_at"),
    ", trace_context",
);

/// The planner settings [`claim`] runs [`CLAIM`] with: the primary key walked in id order.
pub const CLAIM_SETTINGS: &str = "SET LOCAL enable_bitmapscan = off; SET LOCAL enable_sort = off";

/// Claims up to `limit` undispatched rows that are due, oldest first, and marks them
/// dispatched, inside the caller's transaction: one statement locks and marks them, skipping
/// rows another relay holds (`FOR UPDATE SKIP LOCKED`). The caller publishes them and then
/// commits; if publishing fails it rolls back (or [`release`]s the rows it could not send),
/// so a row is dispatched exactly when its transaction says so. Returned in id order.
///
/// The walk starts above `after` or the [`floor`], whichever is higher. From the floor (`after`
/// 0) it finds every due row. From a higher id (the last row of the batch just claimed, while
/// a backlog is flowing) it skips the rows below, dispatched ones mostly, but also any that
/// committed after rows above them, were released, or came due again after a failure: the
/// caller must claim from the floor again whenever a claim comes back short, and every few
/// seconds in between.
///
/// # Errors
/// When the query fails.
pub async fn claim(tx: &mut PgConnection, limit: i64, after: i64) -> Result<Vec<Event>, Error> {
    // Walk the primary key in id order, whatever the statistics say. Right after a burst
    // (a backlog found after an outage) they still count the outbox as nearly empty, and the
    // planner then fetches *every* pending row and sorts them, once per batch: 60 ms a batch
    // at 100,000 pending instead of 2 ms. `SET LOCAL` ends with the claiming transaction.
    sqlx::raw_sql(CLAIM_SETTINGS).execute(&mut *tx).await?;
    let rows: Vec<EventRow> = sqlx::query_as(CLAIM).bind(limit).bind(after).fetch_all(tx).await?;
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

/// The floor now: every outbox row with an id at or below it is dispatched or dead, and no
/// row at or below it can still appear. Pending rows are found by walking the primary key up
/// from it, so it stands in for an index of pending rows (which would name `dispatched_at`
/// and make every dispatch mark a full, non-HOT update).
///
/// # Errors
/// When the query fails.
pub async fn floor(pool: &sqlx::PgPool) -> Result<i64, Error> {
    Ok(sqlx::query_scalar("SELECT id FROM outbox_floor").fetch_one(pool).await?)
}

/// The walk of [`advance_floor`] (`$1` the floor, `$2` how far it may go): the first pending
/// row above the floor, kept as one constant so a test can show its plan.
pub const FLOOR_WALK: &str = "SELECT id FROM outbox WHERE id > $1 AND id <= $2 \
       AND dispatched_at IS NULL AND dead_at IS NULL ORDER BY id LIMIT 1";

/// The most ids [`advance_floor`] walks in one call, so one call's work is bounded.
const FLOOR_STEP: i64 = 500_000;

/// Moves the [`floor`] up to just below the first row above it that is still pending (not
/// dispatched, not dead), but never past `settled`: an id below which every row that will
/// ever exist is visible ([`crate::ledger::Horizon`]), since outbox ids commit out of order and
/// a row not yet committed is not seen pending. Returns the floor. Relays may race: this only
/// ever moves the floor up, and every value any of them computes is true, because a row that
/// is dispatched or dead stays so (until [`REQUEUE_DEAD`], which lowers the floor itself).
///
/// # Errors
/// When a query fails.
pub async fn advance_floor(pool: &sqlx::PgPool, settled: i64) -> Result<i64, Error> {
    // Under the floor row's lock, so a re-queue of dead rows ([`REQUEUE_DEAD`], which lowers
    // the floor under the same lock) is either seen by the walk below or lowers the floor
    // after this moves it.
    let mut tx = pool.begin().await?;
    // Walk the primary key in id order, whatever the statistics guess (as the claim does).
    sqlx::raw_sql("SET LOCAL enable_bitmapscan = off; SET LOCAL enable_sort = off").execute(&mut *tx).await?;
    let at: i64 = sqlx::query_scalar("SELECT id FROM outbox_floor FOR UPDATE").fetch_one(&mut *tx).await?;
    let upto = settled.min(at.saturating_add(FLOOR_STEP));
    if upto <= at {
        tx.commit().await?;
        return Ok(at);
    }
    let pending: Option<i64> =
        sqlx::query_scalar(FLOOR_WALK).bind(at).bind(upto).persistent(false).fetch_optional(&mut *tx).await?;
    let to = pending.map_or(upto, |id| id - 1);
    let floor = sqlx::query_scalar("UPDATE outbox_floor SET id = greatest(id, $1), updated_at = now() RETURNING id")
        .bind(to)
        .fetch_one(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(floor)
}

/// Gives every dead row its attempts back, due now, and lowers the [`floor`] below the first
/// of them, in one statement (the runbook's re-queue, after fixing what Redis refused). Dead
/// rows do not hold the floor, so without lowering it a re-queued row could sit below it,
/// where no claim walks. The floor's row lock orders this with [`advance_floor`].
pub const REQUEUE_DEAD: &str = "WITH floor AS (\
       UPDATE outbox_floor SET id = least(id, (SELECT min(id) - 1 FROM outbox WHERE dead_at IS NOT NULL)), \
         updated_at = now() RETURNING id) \
     UPDATE outbox SET dead_at = NULL, attempts = 0, next_attempt_at = now() \
     WHERE dead_at IS NOT NULL AND EXISTS (SELECT 1 FROM floor)";

/// The outbox checks' figures (pending rows, the oldest one's age in seconds, dead rows): the
/// pending ones found by walking the primary key up from the [`floor`] (so the walk reads the
/// rows of the last few seconds and any backlog, never the dispatched rows kept for the
/// purge), the dead ones through their partial index.
pub const FIGURES: &str = "SELECT count(*), \
       COALESCE(EXTRACT(EPOCH FROM now() - min(created_at))::float8, 0), \
       (SELECT count(*) FROM outbox WHERE dead_at IS NOT NULL) \
     FROM outbox WHERE id > (SELECT id FROM outbox_floor) AND dispatched_at IS NULL AND dead_at IS NULL";

/// The outbox checks of a service that writes this outbox (`outbox:oldest_pending_age`,
/// failing past `max_age`, and `outbox:dead`), measured by [`figures`].
pub fn checks(
    pool: sqlx::PgPool,
    metrics: &caracal_core::metrics::Metrics,
    max_age: Duration,
) -> [caracal_core::Check; 2] {
    caracal_core::checks::outbox_measured(
        metrics,
        move || {
            let pool = pool.clone();
            async move {
                figures(&pool).await.map_err(|e| match e {
                    Error::Database(e) => e.to_string(),
                    other => other.to_string(),
                })
            }
        },
        max_age,
    )
}

/// The settings [`figures`] reads [`FIGURES`] with, for its transaction alone. A range of the
/// primary key, whatever the statistics guess for an id only known once the statement runs (a
/// third of the table, for a sequential scan of it). Without JIT: the one-row floor table can
/// only be read sequentially, which `enable_seqscan = off` prices at 10^10, and a plan that
/// dear is compiled first (270 ms, against 0.4 ms to run it; readiness checks timed out).
pub const FIGURES_SETTINGS: &str =
    "SET LOCAL enable_seqscan = off; SET LOCAL enable_bitmapscan = off; SET LOCAL jit = off";

/// Reads [`FIGURES`]: (pending rows, the oldest pending row's age in seconds, dead rows).
///
/// # Errors
/// When the query fails.
pub async fn figures(pool: &sqlx::PgPool) -> Result<(i64, f64, i64), Error> {
    let mut tx = pool.begin().await?;
    sqlx::raw_sql(FIGURES_SETTINGS).execute(&mut *tx).await?;
    let figures = sqlx::query_as(FIGURES).fetch_one(&mut *tx).await?;
    tx.commit().await?;
    Ok(figures)
}

/// The highest outbox id written so far (0 for none): a change anywhere in the store moves
/// it, so a reader holding a copy of the fleet (the status page's feed) re-reads only then.
///
/// # Errors
/// When the query fails.
pub async fn last_id(pool: &sqlx::PgPool) -> Result<i64, Error> {
    let max: Option<i64> = sqlx::query_scalar("SELECT max(id) FROM outbox").fetch_one(pool).await?;
    Ok(max.unwrap_or(0))
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

/// How long dispatched rows are kept by default (`coordinator.relay.retention`); the ledger's
/// retention may never be shorter.
pub const DEFAULT_RETENTION: Duration = Duration::from_secs(24 * 3600);

/// The purge's statement (`$1` the retention in seconds, `$2` the batch), kept as one constant
/// so a test can show its plan. The old rows are found through `outbox_created_idx`: a row is
/// dispatched after it is created, so every row dispatched before the cut was created before
/// it (no index names `dispatched_at`, which keeps the dispatch mark a HOT update). The batch
/// goes to the delete as an array of ids: written as `id IN (...)` it was planned, like the
/// claim's, as a hash join over a sequential scan of the whole outbox. By id, not by address
/// as in [`CLAIM`]: this subquery takes no lock, so a row could move between being chosen and
/// being deleted.
pub const PURGE: &str = "DELETE FROM outbox WHERE id = ANY(ARRAY(SELECT id FROM outbox \
       WHERE created_at < now() - make_interval(secs => $1) \
         AND dispatched_at < now() - make_interval(secs => $1) \
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
