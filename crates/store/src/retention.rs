//! Retention: the status history (`status_transitions`, kept for `store.retention.history`)
//! and the audit ledger (`audit_events`, kept for `audit.retention`) are purged in the
//! background, so neither grows for as long as the platform runs.
//!
//! # How a purge costs the same at any size
//! Both tables are appended in key order (a transition's id, a ledger row's outbox id) and in
//! about time order, so the rows past the retention are a prefix of the primary key. A purge
//! round walks that prefix in batches: each batch reads the next `batch` keys from where the
//! last one ended (a primary-key range scan, never the whole table), deletes those older than
//! the cut up to the first one that is not, and stops there. Each batch is one statement in a
//! transaction of its own, so its row locks last milliseconds and no writer waits on it: the
//! writers only insert new keys, which no batch touches. The dead tuples it leaves at the old
//! end are vacuumed at 2 % (migration 14), so the space is reused rather than the table bloating.
//!
//! Partitions detached and dropped would cost even less per row, but turning the two existing
//! tables into partitioned ones rewrites them, which the expand-only migrations refuse; batches
//! are measured instead (`docs/benchmarks.md`, "Retention").
//!
//! # The ledger's guarantee
//! A ledger row is purged only once it is at or below the ledger's watermark (every outbox row
//! up to it is in the ledger) **and** below the oldest row the outbox still holds, so its
//! outbox row is gone and cannot be healed back: the heal copies from the outbox only above
//! the watermark. The highest key purged is kept (`retention.purged_through`) and the
//! consumer skips a redelivered stream entry at or below it ([`crate::ledger::insert`]); a
//! redelivery racing the very batch that purges its row can put it back for one round, and
//! the next round purges it again. The ledger keeps at most one row per outbox id (its primary
//! key). Its retention can therefore never be shorter than the outbox's, whatever is
//! configured (the audit service refuses to start when `audit.retention` says otherwise), and
//! a dead outbox row holds the ledger's purge back until it is requeued or deleted (the
//! `outbox:dead_rows` warning names it).

use std::time::{Duration, Instant};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use serde::Deserialize;
use sqlx::PgConnection;
use tokio_util::sync::CancellationToken;

use crate::Error;

/// A table with a retention.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Table {
    /// `status_transitions`, kept for `store.retention.history`.
    History,
    /// `audit_events`, kept for `audit.retention`.
    Ledger,
}

impl Table {
    /// The table's name, as metrics and `caracal doctor` show it.
    pub fn name(self) -> &'static str {
        match self {
            Table::History => "status_transitions",
            Table::Ledger => "audit_events",
        }
    }

    fn purge_sql(self) -> &'static str {
        match self {
            Table::History => PURGE_HISTORY,
            Table::Ledger => PURGE_LEDGER,
        }
    }

    fn oldest_sql(self) -> &'static str {
        match self {
            Table::History => concat!(
                "SELECT id, extract(epoch FROM occurred_at)::float8, ",
                crate::rfc3339!("occurred_at"),
                " FROM status_transitions ORDER BY id LIMIT 1"
            ),
            Table::Ledger => concat!(
                "SELECT outbox_id, extract(epoch FROM occurred_at)::float8, ",
                crate::rfc3339!("occurred_at"),
                " FROM audit_events ORDER BY outbox_id LIMIT 1"
            ),
        }
    }

    /// Every table with a retention.
    pub const ALL: [Table; 2] = [Table::History, Table::Ledger];
}

/// One purge batch of the history (`$1` the last key purged, `$2` the retention in seconds,
/// `$3` the batch): the next `$3` keys after `$1`, those older than the cut deleted up to the
/// first that is not. Returns the rows deleted, the last key deleted (or `$1`), and whether the
/// batch reached a row to keep (the round is done). The ids go to the delete as an array, so
/// it is planned as primary-key lookups; run with [`PURGE_SETTINGS`] (the store's tests pin
/// the plan).
pub const PURGE_HISTORY: &str = "WITH batch AS MATERIALIZED ( \
       SELECT id, occurred_at < now() - make_interval(secs => $2) AS old FROM status_transitions \
       WHERE id > $1 ORDER BY id LIMIT $3), \
     edge AS (SELECT coalesce(min(id), 9223372036854775807) AS id FROM batch WHERE NOT old), \
     gone AS (DELETE FROM status_transitions WHERE id = ANY(ARRAY( \
       SELECT b.id FROM batch b, edge WHERE b.old AND b.id < edge.id)) RETURNING id), \
     mark AS (UPDATE retention SET rows_purged = rows_purged + (SELECT count(*) FROM gone), \
       purged_through = greatest(purged_through, coalesce((SELECT max(id) FROM gone), 0)) \
       WHERE table_name = 'status_transitions') \
     SELECT count(*)::bigint, coalesce(max(id), $1), \
            EXISTS (SELECT 1 FROM batch WHERE NOT old) OR (SELECT count(*) FROM batch) < $3 FROM gone";

/// [`PURGE_HISTORY`] for the ledger: a row is also kept while it is above the watermark or at
/// or above the oldest outbox row (see the module's documentation). The batch's highest key
/// becomes `retention.purged_through` in the same statement, for the consumer's guard.
pub const PURGE_LEDGER: &str = "WITH batch AS MATERIALIZED ( \
       SELECT a.outbox_id AS id, a.occurred_at < now() - make_interval(secs => $2) \
              AND a.outbox_id <= (SELECT outbox_id FROM ledger_watermark) \
              AND a.outbox_id < coalesce((SELECT min(id) FROM outbox), 9223372036854775807) AS old \
       FROM audit_events a WHERE a.outbox_id > $1 ORDER BY a.outbox_id LIMIT $3), \
     edge AS (SELECT coalesce(min(id), 9223372036854775807) AS id FROM batch WHERE NOT old), \
     gone AS (DELETE FROM audit_events WHERE outbox_id = ANY(ARRAY( \
       SELECT b.id FROM batch b, edge WHERE b.old AND b.id < edge.id)) RETURNING outbox_id AS id), \
     mark AS (UPDATE retention SET rows_purged = rows_purged + (SELECT count(*) FROM gone), \
       purged_through = greatest(purged_through, coalesce((SELECT max(id) FROM gone), 0)) \
       WHERE table_name = 'audit_events') \
     SELECT count(*)::bigint, coalesce(max(id), $1), \
            EXISTS (SELECT 1 FROM batch WHERE NOT old) OR (SELECT count(*) FROM batch) < $3 FROM gone";

/// The planner settings a purge batch runs with (`SET LOCAL`, in its transaction): without a
/// sort to choose, the next keys are read by walking the primary key, which costs the batch
/// whatever the table holds; with one, PostgreSQL may sort a scan of the whole table when its
/// statistics think `id > $1` matches most rows (seen right after a bulk load).
pub const PURGE_SETTINGS: &str = "SET LOCAL enable_sort = off; SET LOCAL jit = off";

/// How purging runs (`[store.retention]`, `CARACAL_STORE__RETENTION__*`).
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RetentionConfig {
    /// How long status transitions are kept (`0`: forever). Default 30 days.
    #[serde(with = "humantime_serde")]
    pub history: Duration,
    /// How often a purge round runs.
    #[serde(with = "humantime_serde")]
    pub every: Duration,
    /// Rows per batch (one statement, one short transaction).
    pub batch: i64,
}

impl Default for RetentionConfig {
    fn default() -> Self {
        Self { history: Duration::from_secs(30 * 86_400), every: Duration::from_secs(60), batch: 5_000 }
    }
}

impl RetentionConfig {
    /// Reads `[store.retention]` from the service's configuration and checks it (one function
    /// for every service that purges, so the configuration code is built once).
    ///
    /// # Errors
    /// A bad value, naming its key.
    pub fn load(app: &caracal_core::App) -> Result<Self, caracal_core::ConfigError> {
        let config: Self = app.config().section("store.retention")?;
        config.validate()?;
        Ok(config)
    }

    /// Checks the values: a batch from 1 to 100,000, a round at least every second.
    ///
    /// # Errors
    /// Naming the key that is out of range.
    pub fn validate(&self) -> Result<(), caracal_core::ConfigError> {
        let bad = |key: &str, message: &str| caracal_core::ConfigError {
            key: format!("store.retention.{key}"),
            origin: format!("`CARACAL_STORE__RETENTION__{}` or the config file", key.to_ascii_uppercase()),
            message: message.into(),
        };
        if !(1..=100_000).contains(&self.batch) {
            return Err(bad("batch", "expected a whole number of rows from 1 to 100000"));
        }
        if self.every < Duration::from_secs(1) {
            return Err(bad("every", "expected a duration of at least 1s, such as 1m"));
        }
        Ok(())
    }
}

/// What one purge round did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Purged {
    /// Rows deleted.
    pub rows: u64,
    /// Batches (statements) it took.
    pub batches: u32,
    /// The longest batch.
    pub longest: Duration,
    /// All batches together.
    pub total: Duration,
}

/// Runs one purge round on `table`: deletes, `batch` rows per statement, every row older than
/// `keep` (none when `keep` is zero: kept forever), and records the round in `retention`.
///
/// # Errors
/// When a statement fails; what earlier batches deleted stays deleted.
pub async fn purge(conn: &mut PgConnection, table: Table, keep: Duration, batch: i64) -> Result<Purged, Error> {
    let mut done = Purged::default();
    if !keep.is_zero() {
        let mut after = i64::MIN;
        loop {
            let started = Instant::now();
            let mut tx = sqlx::Connection::begin(&mut *conn).await?;
            sqlx::raw_sql(PURGE_SETTINGS).execute(&mut *tx).await?;
            let (rows, last, finished): (i64, i64, bool) = sqlx::query_as(table.purge_sql())
                .bind(after)
                .bind(keep.as_secs_f64())
                .bind(batch)
                .fetch_one(&mut *tx)
                .await?;
            tx.commit().await?;
            done.batches += 1;
            done.longest = done.longest.max(started.elapsed());
            done.total += started.elapsed();
            done.rows += u64::try_from(rows).unwrap_or(0);
            after = last;
            if finished || rows == 0 {
                break;
            }
        }
    }
    sqlx::query("UPDATE retention SET keep_secs = $2, purged_at = now() WHERE table_name = $1")
        .bind(table.name())
        .bind(keep.as_secs_f64())
        .execute(&mut *conn)
        .await?;
    Ok(done)
}

/// The oldest row a table still holds: the horizon its retention keeps.
#[derive(Debug, Clone, PartialEq)]
pub struct Oldest {
    /// Its key (a transition's id, a ledger row's outbox id).
    pub key: i64,
    /// When it occurred (Unix seconds).
    pub at: f64,
    /// The same, as RFC 3339.
    pub rfc3339: String,
}

/// The oldest row `table` still holds (the first by key: both tables are appended in about
/// time order); `None` when empty. One primary-key lookup.
///
/// # Errors
/// When the query fails.
pub async fn oldest(conn: &mut PgConnection, table: Table) -> Result<Option<Oldest>, Error> {
    let row: Option<(i64, f64, String)> = sqlx::query_as(table.oldest_sql()).fetch_optional(conn).await?;
    Ok(row.map(|(key, at, rfc3339)| Oldest { key, at, rfc3339 }))
}

/// When the oldest row `table` still holds occurred, as RFC 3339; `None` when empty.
///
/// # Errors
/// When the query fails.
pub async fn oldest_rfc3339(pool: &sqlx::PgPool, table: Table) -> Result<Option<String>, Error> {
    let mut conn = pool.acquire().await?;
    Ok(oldest(&mut conn, table).await?.map(|o| o.rfc3339))
}

/// What `caracal doctor` shows of one table: its size, the oldest row it holds, and what the
/// purger last applied.
#[derive(Debug, Clone, PartialEq)]
pub struct Report {
    /// The table.
    pub table: Table,
    /// Bytes on disk, indexes and TOAST included.
    pub bytes: i64,
    /// Rows, as PostgreSQL's statistics estimate them (counting would read the table); `None`
    /// before the table was first analyzed.
    pub rows_estimate: Option<i64>,
    /// Seconds since the oldest row it holds occurred.
    pub oldest_age_secs: Option<f64>,
    /// The retention the purger last applied (`Some(0.0)`: forever); `None` before its first
    /// round.
    pub keep_secs: Option<f64>,
    /// Seconds since the last purge round.
    pub purged_ago_secs: Option<f64>,
    /// Rows purged so far.
    pub rows_purged: i64,
}

/// The [`Report`] of every table with a retention.
///
/// # Errors
/// When a query fails.
pub async fn report(pool: &sqlx::PgPool) -> Result<Vec<Report>, Error> {
    let mut conn = pool.acquire().await?;
    let mut out = Vec::new();
    for table in Table::ALL {
        let (bytes, rows_estimate, keep_secs, purged_ago_secs, rows_purged): (i64, Option<i64>, Option<f64>, Option<f64>, i64) =
            sqlx::query_as(
                "SELECT pg_total_relation_size(c.oid), CASE WHEN c.reltuples >= 0 THEN c.reltuples::bigint END, r.keep_secs, \
                        extract(epoch FROM now() - r.purged_at)::float8, coalesce(r.rows_purged, 0) \
                 FROM pg_class c LEFT JOIN retention r ON r.table_name = c.relname \
                 WHERE c.oid = to_regclass($1)",
            )
            .bind(table.name())
            .fetch_one(&mut *conn)
            .await?;
        let now: f64 = sqlx::query_scalar("SELECT extract(epoch FROM now())::float8").fetch_one(&mut *conn).await?;
        let oldest_age_secs = oldest(&mut conn, table).await?.map(|o| (now - o.at).max(0.0));
        out.push(Report { table, bytes, rows_estimate, oldest_age_secs, keep_secs, purged_ago_secs, rows_purged });
    }
    Ok(out)
}

/// Labels of the retention metrics.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TableLabel {
    /// `status_transitions` or `audit_events`.
    pub table: String,
}

/// `caracal_retention_rows_purged_total{table}` and `caracal_retention_oldest_row_age_seconds{table}`.
#[derive(Debug, Clone, Default)]
pub struct Metrics {
    purged: Family<TableLabel, Counter>,
    oldest: Family<TableLabel, Gauge<f64, std::sync::atomic::AtomicU64>>,
}

impl Metrics {
    /// Registers the metrics in `registry`.
    pub fn register(registry: &mut prometheus_client::registry::Registry) -> Self {
        let metrics = Self::default();
        let registry = registry.sub_registry_with_prefix("caracal_retention");
        registry.register("rows_purged", "Rows deleted by the retention purge", metrics.purged.clone());
        registry.register(
            "oldest_row_age_seconds",
            "Age of the oldest row the table still holds (0 when empty)",
            metrics.oldest.clone(),
        );
        metrics
    }
}

/// Purges `table` every `config.every` until `stop`, keeping `keep` (zero: forever; the oldest
/// row's age is still reported). Several replicas may run it: a session advisory lock lets one
/// purge at a time, the others skip that round.
pub async fn run(
    pool: sqlx::PgPool,
    table: Table,
    keep: Duration,
    config: RetentionConfig,
    metrics: Metrics,
    stop: CancellationToken,
) {
    let label = TableLabel { table: table.name().to_string() };
    loop {
        match round(&pool, table, keep, config.batch).await {
            Ok((purged, oldest_age)) => {
                metrics.purged.get_or_create(&label).inc_by(purged.rows);
                metrics.oldest.get_or_create(&label).set(oldest_age.unwrap_or(0.0));
                if purged.rows > 0 {
                    tracing::info!(
                        table = table.name(),
                        rows = purged.rows,
                        batches = purged.batches,
                        longest_batch_ms = purged.longest.as_secs_f64() * 1000.0,
                        "purged rows past their retention"
                    );
                }
            }
            Err(e) => {
                tracing::warn!(table = table.name(), error = %e, "the retention purge failed; trying again next round")
            }
        }
        tokio::select! {
            () = tokio::time::sleep(config.every) => {}
            () = stop.cancelled() => return,
        }
    }
}

/// One round on a connection of its own: the advisory lock, the purge, the oldest row's age.
async fn round(pool: &sqlx::PgPool, table: Table, keep: Duration, batch: i64) -> Result<(Purged, Option<f64>), Error> {
    /// The advisory lock's key: "caracal retention" plus the table.
    const LOCK: i64 = 0x6361_7261_6361_6c00;
    let key = LOCK + i64::from(table == Table::Ledger);
    let mut conn = pool.acquire().await?;
    let locked: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)").bind(key).fetch_one(&mut *conn).await?;
    let purged = if locked {
        let result = purge(&mut conn, table, keep, batch).await;
        let unlocked = sqlx::query("SELECT pg_advisory_unlock($1)").bind(key).execute(&mut *conn).await;
        if result.is_err() || unlocked.is_err() {
            // The lock belongs to the session: never hand the connection back holding it.
            let _ = conn.detach();
        }
        result?
    } else {
        Purged::default()
    };
    let now: f64 = sqlx::query_scalar("SELECT extract(epoch FROM now())::float8").fetch_one(pool).await?;
    let mut conn = pool.acquire().await?;
    let age = oldest(&mut conn, table).await?.map(|o| (now - o.at).max(0.0));
    Ok((purged, age))
}
