//! `outbox:oldest_pending_age` and `outbox:dead` for a transactional outbox table.
//!
//! The table needs at least `created_at timestamptz NOT NULL`, `dispatched_at timestamptz`
//! and `dead_at timestamptz`; a row is pending while both of the latter are NULL. With the
//! partial indexes in [`OUTBOX_INDEXES`] the query reads only pending and dead rows, so it
//! stays fast however many dispatched rows the table holds.

use std::sync::Arc;
use std::time::Duration;

use sqlx::PgPool;

use crate::metrics::{Metrics, OutboxFigures};
use crate::{Check, Failure, Observed, Rung};

/// The partial indexes the outbox query relies on; `{table}` stands for the table name.
pub const OUTBOX_INDEXES: &str = "\
CREATE INDEX IF NOT EXISTS {table}_pending_idx ON {table} (created_at) WHERE dispatched_at IS NULL AND dead_at IS NULL;
CREATE INDEX IF NOT EXISTS {table}_dead_idx ON {table} (created_at) WHERE dead_at IS NOT NULL;";

/// What one query measures.
#[derive(Debug, Clone, Copy)]
struct Figures {
    pending: i64,
    oldest_age: f64,
    dead: i64,
}

/// The two outbox checks on `table`: `outbox:oldest_pending_age` (required; fails when the
/// oldest undispatched row is older than `max_age`) and `outbox:dead` (not required: dead rows
/// are an alert, never a reason to take the service out of rotation). Both record
/// `caracal_outbox_pending`, `caracal_outbox_oldest_pending_age_seconds` and
/// `caracal_outbox_dead`. They run [`outbox_query`], which needs [`OUTBOX_INDEXES`]; an outbox
/// that finds its pending rows another way gives its own query to [`outbox_measured`].
///
/// # Panics
/// When `table` is not a plain SQL identifier (`[a-z_][a-z0-9_]*`, optionally schema-qualified):
/// it is written in code and spliced into SQL.
pub fn outbox(pool: PgPool, metrics: &Metrics, table: &str, max_age: Duration) -> [Check; 2] {
    assert!(valid_table(table), "outbox table {table:?} is not a plain identifier");
    let sql: Arc<str> = outbox_query(table).into();
    outbox_measured(
        metrics,
        move || {
            let (pool, sql) = (pool.clone(), Arc::clone(&sql));
            async move {
                // The table name was checked to be a plain identifier above.
                sqlx::query_as(sqlx::AssertSqlSafe(sql)).fetch_one(&pool).await.map_err(|e| e.to_string())
            }
        },
        max_age,
    )
}

/// The two checks of [`outbox`], measured by `measure`: it answers (pending rows, the oldest
/// pending row's age in seconds, dead rows), or why it could not. Both checks run it.
pub fn outbox_measured<F, Fut>(metrics: &Metrics, measure: F, max_age: Duration) -> [Check; 2]
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(i64, f64, i64), String>> + Send + 'static,
{
    let measure = Arc::new(measure);
    let age = {
        let (metrics, measure) = (metrics.clone(), Arc::clone(&measure));
        Check::new("outbox:oldest_pending_age", Rung::Delivery, move || {
            let (metrics, measure) = (metrics.clone(), Arc::clone(&measure));
            async move {
                let f = figures(&metrics, measure()).await?;
                let observed = Observed::new(f.oldest_age, "s");
                if f.oldest_age > max_age.as_secs_f64() {
                    return Err(Failure::with(
                        format!(
                            "oldest of {} pending rows is {:.1}s old (limit {:.1}s)",
                            f.pending,
                            f.oldest_age,
                            max_age.as_secs_f64()
                        ),
                        observed,
                    ));
                }
                Ok(observed)
            }
        })
    };
    let dead = {
        let metrics = metrics.clone();
        Check::new("outbox:dead", Rung::Delivery, move || {
            let (metrics, measure) = (metrics.clone(), Arc::clone(&measure));
            async move {
                let f = figures(&metrics, measure()).await?;
                let observed = Observed::new(f.dead as f64, "rows");
                if f.dead > 0 {
                    return Err(Failure::with(
                        format!("{} outbox rows are dead (gave up delivering them)", f.dead),
                        observed,
                    ));
                }
                Ok(observed)
            }
        })
        .required(false)
    };
    [age, dead]
}

/// The one query both outbox checks run on `table` (exposed so tests and operators can
/// `EXPLAIN` it).
pub fn outbox_query(table: &str) -> String {
    format!(
        "SELECT \
           (SELECT count(*) FROM {table} WHERE dispatched_at IS NULL AND dead_at IS NULL), \
           (SELECT COALESCE(EXTRACT(EPOCH FROM now() - min(created_at))::float8, 0) \
              FROM {table} WHERE dispatched_at IS NULL AND dead_at IS NULL), \
           (SELECT count(*) FROM {table} WHERE dead_at IS NOT NULL)"
    )
}

/// Awaits one measurement and records it.
async fn figures(
    metrics: &Metrics,
    measured: impl Future<Output = Result<(i64, f64, i64), String>>,
) -> Result<Figures, Failure> {
    let (pending, oldest_age, dead) = measured.await.map_err(|e| Failure::new(format!("outbox query failed: {e}")))?;
    let oldest_age = oldest_age.max(0.0);
    metrics.outbox.record(OutboxFigures { pending, oldest_age_seconds: oldest_age, dead });
    Ok(Figures { pending, oldest_age, dead })
}

fn valid_table(table: &str) -> bool {
    let ident = |s: &str| {
        let mut chars = s.chars();
        chars.next().is_some_and(|c| c.is_ascii_lowercase() || c == '_')
            && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
    };
    match table.split_once('.') {
        Some((schema, name)) => ident(schema) && ident(name),
        None => ident(table),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn only_plain_identifiers_are_tables() {
        assert!(super::valid_table("outbox"));
        assert!(super::valid_table("caracal.outbox_v2"));
        assert!(!super::valid_table("outbox; DROP TABLE x"));
        assert!(!super::valid_table("1outbox"));
        assert!(!super::valid_table("a.b.c"));
    }
}
