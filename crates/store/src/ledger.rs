//! The audit ledger (`audit_events`): idempotent batch inserts, and the queries that keep it
//! complete when the stream loses entries (Redis restarted empty, `FLUSHALL`, a trimmed stream).
//!
//! The ledger is complete when every outbox row that was dispatched is in it. Checking that
//! against the whole outbox would read every row, so a **watermark** is kept in
//! `ledger_watermark`: every live outbox row with an id at or below it is in the ledger (or
//! dead, which has its own alert). Only rows above it are ever read, and in steady state that
//! is a few seconds of traffic.
//!
//! Outbox ids come from a sequence and commit out of order: a transaction may hold id 100
//! while 101 is already visible. The watermark therefore only moves up to a [`Horizon`], an
//! id below which no row can still appear (see [`Horizon`] for how that is known).

use std::time::Duration;

use crate::{Error, Event};

/// How long a dispatched row may take to reach the ledger by stream before it counts as lost
/// (`[audit.ledger] grace`).
pub const DEFAULT_GRACE: Duration = Duration::from_secs(30);

/// The ledger insert of one batch from arrays; [`insert`] adds `ON CONFLICT` only when needed.
macro_rules! insert_batch {
    ($tail:literal) => {
        concat!(
            "INSERT INTO audit_events (outbox_id, event_type, target, instance, payload, occurred_at, trace_id) \
             SELECT * FROM unnest($1::bigint[], $2::text[], $3::text[], $4::text[], $5::jsonb[], \
                                  $6::text[]::timestamptz[], $7::text[]) AS u(id, t, tg, i, p, o, tr) \
             WHERE u.id > coalesce((SELECT purged_through FROM retention WHERE table_name = 'audit_events'), 0)",
            $tail
        )
    };
}

/// Inserts `events` into the ledger, each at most once (keyed on the outbox id); returns how
/// many were new. One statement for the whole batch. An event at or below the highest id the
/// retention purge deleted (a late redelivery) is skipped: a purged row is never written back.
///
/// Almost every batch is new rows, so it goes in as a plain insert first: `ON CONFLICT`'s
/// speculative insertion costs about 15 % more per row (measured on a 2,000-row batch). Only
/// a batch that does hold a recorded id (a redelivery, a row the reconciler healed first) is
/// sent again with `ON CONFLICT (outbox_id) DO NOTHING`; the failed attempt wrote nothing.
///
/// # Errors
/// When the insert fails; a value PostgreSQL refuses is [`is_data_error`].
pub async fn insert(pool: &sqlx::PgPool, events: &[Event]) -> Result<u64, Error> {
    if events.is_empty() {
        return Ok(0);
    }
    let ids: Vec<i64> = events.iter().map(|e| e.id).collect();
    let types: Vec<&str> = events.iter().map(|e| e.event_type.as_str()).collect();
    let targets: Vec<Option<&str>> = events.iter().map(|e| e.target.as_deref()).collect();
    let instances: Vec<Option<&str>> = events.iter().map(|e| e.instance.as_deref()).collect();
    let payloads: Vec<sqlx::types::Json<&serde_json::value::RawValue>> =
        events.iter().map(|e| sqlx::types::Json(&*e.payload)).collect();
    let times: Vec<&str> = events.iter().map(|e| e.occurred_at.as_str()).collect();
    let traces: Vec<Option<&str>> = events.iter().map(Event::trace_id).collect();
    let run = |sql: &'static str| {
        sqlx::query(sql)
            .bind(ids.clone())
            .bind(types.clone())
            .bind(targets.clone())
            .bind(instances.clone())
            .bind(payloads.clone())
            .bind(times.clone())
            .bind(traces.clone())
            .execute(pool)
    };
    let done = match run(insert_batch!("")).await {
        Err(sqlx::Error::Database(e)) if e.is_unique_violation() => {
            run(insert_batch!(" ON CONFLICT (outbox_id) DO NOTHING")).await?
        }
        other => other?,
    };
    Ok(done.rows_affected())
}

/// Whether `error` is PostgreSQL refusing a value (SQLSTATE class 22, data exception) rather
/// than failing: the entry is poison, not the database unavailable.
pub fn is_data_error(error: &Error) -> bool {
    matches!(error, Error::Database(sqlx::Error::Database(db)) if db.code().is_some_and(|c| c.starts_with("22")))
}

/// One reading of the outbox's id sequence and of PostgreSQL's transaction horizon, taken in
/// one statement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reading {
    /// The highest outbox id visible now.
    pub max_id: i64,
    /// The first transaction id not yet assigned (`pg_snapshot_xmax`).
    pub xmax: i64,
    /// The oldest transaction id still running (`pg_snapshot_xmin`).
    pub xmin: i64,
}

/// Reads the sequence and transaction horizon now.
///
/// # Errors
/// When the query fails.
pub async fn read(pool: &sqlx::PgPool) -> Result<Reading, Error> {
    let (max_id, xmax, xmin): (i64, i64, i64) = sqlx::query_as(
        "SELECT coalesce((SELECT max(id) FROM outbox), 0), \
                pg_snapshot_xmax(pg_current_snapshot())::text::bigint, \
                pg_snapshot_xmin(pg_current_snapshot())::text::bigint",
    )
    .fetch_one(pool)
    .await?;
    Ok(Reading { max_id, xmax, xmin })
}

/// Tracks the highest outbox id below which every row that will ever exist is visible.
///
/// Every id at or below `max_id` (read at time T1) was drawn before T1, by a transaction that
/// existed at T1. The statement that draws an id also gets its transaction id within
/// microseconds, so a transaction-id horizon `xmax` read a little later (T2 ≥ T1 + `settle`)
/// is above every such transaction. Once the oldest running transaction (`xmin`) is at or
/// past that `xmax`, all of them have ended and ids up to `max_id` are final. A long-running
/// transaction anywhere in the database holds the horizon back; nothing is lost, the
/// watermark just waits.
#[derive(Debug, Clone)]
pub struct Horizon {
    settle: Duration,
    candidate: Option<Candidate>,
    settled: i64,
}

#[derive(Debug, Clone, Copy)]
struct Candidate {
    max_id: i64,
    at: std::time::Instant,
    xmax: Option<i64>,
}

impl Horizon {
    /// A horizon that waits `settle` between reading an id and the transaction horizon.
    pub fn new(settle: Duration) -> Self {
        Self { settle, candidate: None, settled: 0 }
    }

    /// Feeds one [`Reading`] taken `now`; returns the settled id (never decreasing).
    pub fn observe(&mut self, reading: Reading, now: std::time::Instant) -> i64 {
        let fresh = Candidate { max_id: reading.max_id, at: now, xmax: None };
        self.candidate = match self.candidate {
            None => Some(fresh),
            Some(c) => match c.xmax {
                None if now.duration_since(c.at) >= self.settle => Some(Candidate { xmax: Some(reading.xmax), ..c }),
                Some(xmax) if reading.xmin >= xmax => {
                    self.settled = self.settled.max(c.max_id);
                    Some(fresh)
                }
                _ => Some(c),
            },
        };
        self.settled
    }
}

/// Moves the watermark up as far as the ledger is complete: to just below the first live row
/// above it that is not in the ledger, but never past `settled` nor more than `step` ids in
/// one call (so one call's work is bounded). Returns the watermark. Replicas may race: the
/// watermark only ever moves up, and every value any of them computes is true.
///
/// # Errors
/// When a query fails.
pub async fn advance(pool: &sqlx::PgPool, settled: i64, step: i64) -> Result<i64, Error> {
    let at = watermark(pool).await?;
    let upto = settled.min(at.saturating_add(step));
    if upto <= at {
        return Ok(at);
    }
    // Unprepared (`persistent(false)`), so each run is planned with the actual bounds: a range
    // of a few rows probes the ledger's primary key instead of hashing the whole ledger.
    let blocker: Option<i64> = sqlx::query_scalar(
        "SELECT min(o.id) FROM outbox o WHERE o.id > $1 AND o.id <= $2 AND o.dead_at IS NULL \
           AND NOT EXISTS (SELECT 1 FROM audit_events a WHERE a.outbox_id = o.id)",
    )
    .bind(at)
    .bind(upto)
    .persistent(false)
    .fetch_one(pool)
    .await?;
    let to = blocker.map_or(upto, |id| id - 1);
    Ok(sqlx::query_scalar(
        "UPDATE ledger_watermark SET outbox_id = greatest(outbox_id, $1), updated_at = now() RETURNING outbox_id",
    )
    .bind(to)
    .fetch_one(pool)
    .await?)
}

/// The ledger's gap: outbox rows above `watermark` dispatched more than `grace` ago that are
/// not in the ledger (the stream lost them, or no consumer has read them for that long).
///
/// # Errors
/// When the query fails.
pub async fn gap(pool: &sqlx::PgPool, watermark: i64, grace: Duration) -> Result<i64, Error> {
    Ok(sqlx::query_scalar(GAP_COUNT)
        .bind(watermark)
        .bind(grace.as_secs_f64())
        .persistent(false)
        .fetch_one(pool)
        .await?)
}

/// The gap query (`$1` the watermark, `$2` the grace period in seconds), kept as one constant
/// so the store's README shows the plan of exactly it.
pub const GAP_COUNT: &str = "SELECT count(*) FROM outbox o \
     WHERE o.id > $1 AND o.dispatched_at < now() - make_interval(secs => $2) \
       AND NOT EXISTS (SELECT 1 FROM audit_events a WHERE a.outbox_id = o.id)";

/// Heals up to `limit` rows of the gap above `watermark` by copying them from the outbox into
/// the ledger, oldest first (the outbox row holds everything the stream entry would have
/// carried). Returns how many rows it wrote; a consumer delivering the same event later
/// changes nothing.
///
/// # Errors
/// When the insert fails.
pub async fn heal(pool: &sqlx::PgPool, watermark: i64, grace: Duration, limit: i64) -> Result<u64, Error> {
    let done = sqlx::query(
        "INSERT INTO audit_events (outbox_id, event_type, target, instance, payload, occurred_at, trace_id) \
         SELECT o.id, o.event_type, o.target, o.instance, o.payload, o.created_at, \
                substring(o.trace_context from '^00-([0-9a-f]{32})-') FROM outbox o \
         WHERE o.id > $1 AND o.dispatched_at < now() - make_interval(secs => $2) \
           AND NOT EXISTS (SELECT 1 FROM audit_events a WHERE a.outbox_id = o.id) \
         ORDER BY o.id LIMIT $3 \
         ON CONFLICT (outbox_id) DO NOTHING",
    )
    .bind(watermark)
    .bind(grace.as_secs_f64())
    .bind(limit)
    .persistent(false)
    .execute(pool)
    .await?;
    Ok(done.rows_affected())
}

/// The watermark now.
///
/// # Errors
/// When the query fails.
pub async fn watermark(pool: &sqlx::PgPool) -> Result<i64, Error> {
    Ok(sqlx::query_scalar("SELECT outbox_id FROM ledger_watermark").fetch_one(pool).await?)
}

/// One page of the ledger: `$1` the cursor, `$2` target, `$3` type, `$4` since (local time,
/// `$6` its offset in minutes), `$5` the page size.
///
/// With `since`, the page starts at the first outbox id that occurred at or after it (the
/// `CASE`), found through the ledger's BRIN index on `occurred_at`: only the block ranges that
/// can hold later times are read. Without that bound PostgreSQL walked the primary key from
/// the cursor and filtered on the time, betting that matches come early: on a 1,000,000-row
/// ledger, "since ten minutes ago" read every older row first (0.9–1.25 s). The time filter
/// stays, for rows recorded out of order. `min(outbox_id + 0)` keeps the planner from turning
/// the `min` into that same walk. The bound costs the rows since `since`, so a time before
/// the ledger's first row skips it (every row matches; the walk finds them at once); a time
/// early in a long ledger still reads most of it. Sent unprepared, so each request is planned
/// with its own `since` (a generic plan cannot tell a recent time from an old one).
pub const PAGE: &str = concat!(
    "SELECT outbox_id, event_type, target, instance, payload, ",
    crate::rfc3339!("occurred_at"),
    ", trace_id FROM audit_events WHERE outbox_id > $1 AND ($2::text IS NULL OR target = $2) \
     AND ($3::text IS NULL OR event_type = $3) \
     AND ($4::text IS NULL OR occurred_at >= ($4::timestamp - make_interval(mins => $6)) AT TIME ZONE 'UTC') \
     AND outbox_id >= CASE WHEN $4::text IS NULL THEN 0 \
       WHEN ($4::timestamp - make_interval(mins => $6)) AT TIME ZONE 'UTC' \
            <= (SELECT occurred_at FROM audit_events ORDER BY outbox_id LIMIT 1) THEN 0 \
       ELSE (SELECT min(outbox_id + 0) FROM audit_events \
             WHERE occurred_at >= ($4::timestamp - make_interval(mins => $6)) AT TIME ZONE 'UTC') END \
     ORDER BY outbox_id LIMIT $5"
);

/// What one page of the ledger asks for.
#[derive(Debug, Clone, Default)]
pub struct PageQuery<'a> {
    /// Outbox ids above this.
    pub after: i64,
    /// Only events about this target.
    pub target: Option<&'a str>,
    /// Only events of this type.
    pub event_type: Option<&'a str>,
    /// Events that occurred at or after this local time (`YYYY-MM-DD HH:MM:SS[.f]`) ...
    pub since_local: Option<&'a str>,
    /// ... whose offset east of UTC is this many minutes.
    pub since_offset_mins: i32,
    /// The page size.
    pub limit: i64,
}

/// One ledger row.
#[derive(Debug, Clone, PartialEq)]
pub struct Recorded {
    /// The outbox id: one ledger row per id.
    pub id: i64,
    /// The event's type.
    pub event_type: String,
    /// The target it is about.
    pub target: Option<String>,
    /// The instance it is about.
    pub instance: Option<String>,
    /// Everything else.
    pub payload: serde_json::Value,
    /// When it happened (RFC 3339).
    pub occurred_at: String,
    /// The trace of the request that made the change.
    pub trace_id: Option<String>,
}

/// One page of the ledger, oldest first ([`PAGE`]).
///
/// # Errors
/// When the query fails; a value PostgreSQL refuses (a `since` with a month 13) is
/// [`is_data_error`].
pub async fn page(pool: &sqlx::PgPool, query: &PageQuery<'_>) -> Result<Vec<Recorded>, Error> {
    type Row = (i64, String, Option<String>, Option<String>, serde_json::Value, String, Option<String>);
    let rows: Vec<Row> = sqlx::query_as(PAGE)
        // Planned for each request's own values, as `PAGE` needs (see there).
        .persistent(false)
        .bind(query.after)
        .bind(query.target)
        .bind(query.event_type)
        .bind(query.since_local)
        .bind(query.limit)
        .bind(query.since_offset_mins)
        .fetch_all(pool)
        .await?;
    Ok(rows
        .into_iter()
        .map(|(id, event_type, target, instance, payload, occurred_at, trace_id)| Recorded {
            id,
            event_type,
            target,
            instance,
            payload,
            occurred_at,
            trace_id,
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::{Horizon, Reading};

    #[test]
    fn the_horizon_waits_for_every_transaction_that_could_hold_an_id() {
        let start = Instant::now();
        let at = |ms: u64| start + Duration::from_millis(ms);
        let mut h = Horizon::new(Duration::from_secs(1));
        // Ids up to 100 visible; transaction ids 500.. unassigned.
        assert_eq!(h.observe(Reading { max_id: 100, xmax: 500, xmin: 490 }, at(0)), 0);
        // Too soon to read the transaction horizon for id 100.
        assert_eq!(h.observe(Reading { max_id: 120, xmax: 510, xmin: 495 }, at(500)), 0);
        // A second later: transactions below 520 may hold ids up to 100.
        assert_eq!(h.observe(Reading { max_id: 150, xmax: 520, xmin: 505 }, at(1_100)), 0);
        // One of them still runs (xmin 515 < 520): not settled.
        assert_eq!(h.observe(Reading { max_id: 160, xmax: 530, xmin: 515 }, at(2_000)), 0);
        // All ended: ids up to 100 are final; a new candidate starts at 170.
        assert_eq!(h.observe(Reading { max_id: 170, xmax: 540, xmin: 520 }, at(3_000)), 100);
        assert_eq!(h.observe(Reading { max_id: 180, xmax: 550, xmin: 545 }, at(4_100)), 100);
        assert_eq!(h.observe(Reading { max_id: 190, xmax: 560, xmin: 550 }, at(5_000)), 170);
    }
}
