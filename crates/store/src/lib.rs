//! `caracal-store`: the PostgreSQL schema and the outbox and stream primitives the services
//! share.
//!
//! # Layout
//! - [`migrate`] / [`MIGRATOR`]: the embedded sqlx migrations (`migrations/`), applied only
//!   on request (`caracal-api --migrate`), never implicitly by every replica.
//! - [`event`]: [`Event`], one change as it travels outbox → stream → ledger, and its stream
//!   encoding.
//! - [`outbox`]: writing events in the caller's transaction, claiming them for relay, marking
//!   them dispatched or failed, purging old rows the ledger holds.
//! - [`stream`]: stream names and publishing a batch with `XADD`.
//! - [`ledger`]: the audit ledger's idempotent batch insert, and the watermark, gap and heal
//!   queries that keep it complete when the stream loses entries.
//! - [`revocation`]: token revocations, written with their outbox event, and the set in force.
//! - [`invalidations`]: following `caracal.invalidations` (which targets changed), with a
//!   full re-read as the safety net, and its `stream:invalidations` check.
//! - [`target`]: the target document and its validation; [`discovery`]: its DNS discovery;
//!   [`registry`]: reading and writing targets, each write with its events and a
//!   `registry.changed` for the followers of `caracal.invalidations`.
//! - [`schema_check`]: the `postgres:schema_version` readiness check; [`storage_checks`]: it
//!   with the PostgreSQL and Redis connectivity checks, the storage rung of every service.
//!
//! Timestamps leave PostgreSQL as RFC 3339 text (UTC, microseconds), so no date-time crate is
//! needed on either side.

pub mod degraded;
pub mod discovery;
pub mod error;
pub mod event;
pub mod invalidations;
pub mod ledger;
pub mod outbox;
pub mod registry;
pub mod revocation;
pub mod stream;
pub mod target;
pub mod tls;

use caracal_core::{Check, Failure, Observed, Rung};
pub use error::Error;
pub use event::{Event, NewEvent};

/// The embedded migrations.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// SQL turning a `timestamptz` column into RFC 3339 UTC text.
#[macro_export]
macro_rules! rfc3339 {
    ($column:literal) => {
        concat!("to_char(", $column, " AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')")
    };
}

/// Applies every pending migration.
///
/// # Errors
/// When PostgreSQL cannot be reached or a migration fails.
pub async fn migrate(pool: &sqlx::PgPool) -> Result<(), Error> {
    MIGRATOR.run(pool).await.map_err(Error::Migrate)
}

/// The newest migration version this build knows.
pub fn expected_version() -> i64 {
    MIGRATOR.iter().map(|m| m.version).max().unwrap_or(0)
}

/// The newest migration version applied to the database, if any.
///
/// # Errors
/// When the query fails (a database never migrated answers `Ok(None)`).
pub async fn applied_version(pool: &sqlx::PgPool) -> Result<Option<i64>, Error> {
    let exists: bool = sqlx::query_scalar("SELECT to_regclass('_sqlx_migrations') IS NOT NULL").fetch_one(pool).await?;
    if !exists {
        return Ok(None);
    }
    Ok(sqlx::query_scalar("SELECT max(version) FROM _sqlx_migrations WHERE success").fetch_one(pool).await?)
}

/// The storage rung every pipeline service has: `postgres:connectivity`, `postgres:writable`,
/// `redis:connectivity` and `postgres:schema_version`.
pub fn storage_checks(pool: sqlx::PgPool, redis: caracal_core::RedisConnection) -> [Check; 4] {
    [
        caracal_core::checks::postgres(pool.clone()),
        caracal_core::checks::postgres_writable(pool.clone()),
        caracal_core::checks::redis(redis),
        schema_check(pool),
    ]
}

/// `postgres:schema_version` (storage rung, required): the database is migrated to exactly the
/// version this build expects. Observes the applied version.
pub fn schema_check(pool: sqlx::PgPool) -> Check {
    Check::new("postgres:schema_version", Rung::Storage, move || {
        let pool = pool.clone();
        async move {
            let expected = expected_version();
            match applied_version(&pool).await {
                Ok(Some(v)) if v == expected => Ok(Observed::new(v as f64, "version")),
                Ok(Some(v)) => Err(Failure::with(
                    format!("schema at version {v}, this build expects {expected}; run `caracal-api --migrate`"),
                    Observed::new(v as f64, "version"),
                )),
                Ok(None) => {
                    Err(Failure::new(format!("schema not migrated; run `caracal-api --migrate` (expects {expected})")))
                }
                Err(e) => Err(Failure::new(format!("cannot read the schema version: {e}"))),
            }
        }
    })
    .component_type("datastore")
}
