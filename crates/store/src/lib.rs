//! `caracal-store`: the PostgreSQL schema and every table more than one service touches —
//! targets, instances, their status and history, the outbox, the ledger, revocations and
//! invalidations — with the outbox and stream primitives the services share. Services call
//! functions here; they keep SQL only for tables that are theirs alone (the STS's keys and
//! clients, the api's page sessions) and core's generic checks.
//!
//! # Layout
//! - [`schema`]: the embedded sqlx migrations (`migrations/`), applied only on request
//!   (`caracal-api --migrate`, never implicitly by every replica) with a `lock_timeout` and
//!   retries, and the compatibility window that keeps the previous release ready on a newer
//!   schema that declares itself compatible with it; the post-deployment steps
//!   (`post-deploy/`) that finish a release once every replica runs it. [`schema_rules`]: what
//!   a migration may do, checked by a test on every one.
//! - [`event`]: [`Event`], one change as it travels outbox → stream → ledger, and its stream
//!   encoding.
//! - [`outbox`]: writing events in the caller's transaction, claiming them for relay, marking
//!   them dispatched or failed, purging old rows the ledger holds.
//! - [`stream`]: stream names and publishing a batch with `XADD`.
//! - [`status`]: the one [`status::Status`] type; recording a change (status row, transition
//!   and outbox event in one transaction) and a certificate; `/v1/status`, history, the status
//!   page's fleet and the platform's summary.
//! - [`ledger`]: the audit ledger's idempotent batch insert, its pages (`/v1/events`), and the
//!   watermark, gap and heal queries that keep it complete when the stream loses entries.
//! - [`retention`]: purging the history and the ledger past their retention, in batches that
//!   never stall writers; its metrics and `caracal doctor`'s report.
//! - [`revocation`]: token revocations, written with their outbox event, and the set in force.
//! - [`invalidations`]: following `caracal.invalidations` (which targets changed), with a
//!   full re-read as the safety net, and its `stream:invalidations` check.
//! - [`target`]: the target document and its validation; [`discovery`]: its DNS discovery;
//!   [`registry`]: reading and writing targets, each write with its events and a
//!   `registry.changed` for the followers of `caracal.invalidations`, and the one read those
//!   followers share ([`registry::read`]).
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
pub mod retention;
pub mod revocation;
pub mod schema;
pub mod schema_rules;
pub mod status;
pub mod stream;
pub mod target;
pub mod tls;

use caracal_core::{Check, Failure, Observed, Rung};
pub use error::Error;
pub use event::{Event, NewEvent};
pub use schema::{MIGRATOR, applied_version, expected_version, migrate};

/// The service's PostgreSQL pool, its sessions named `caracal-<service> schema <N>` in
/// `pg_stat_activity` (N: the schema version this build expects), so that the post-deployment
/// steps can wait until no replica of an older release is connected.
///
/// # Errors
/// As [`caracal_core::App::postgres`].
pub fn pool(app: &caracal_core::App) -> Result<sqlx::PgPool, caracal_core::Error> {
    app.postgres_as(&format!("caracal-{} schema {}", app.name(), expected_version()))
}

/// SQL turning a `timestamptz` column into RFC 3339 UTC text.
#[macro_export]
macro_rules! rfc3339 {
    ($column:literal) => {
        concat!("to_char(", $column, " AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')")
    };
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

/// `postgres:schema_version` (storage rung, required): the database is at the version this
/// build expects, or at a newer one declared compatible with it ([the window](schema)).
/// Observes the applied version.
pub fn schema_check(pool: sqlx::PgPool) -> Check {
    Check::new("postgres:schema_version", Rung::Storage, move || {
        let pool = pool.clone();
        async move {
            match schema::schema(&pool).await {
                Ok(state) => match state.version() {
                    Some(v) if state.usable() => Ok(Observed::new(v as f64, "version")),
                    Some(v) => Err(Failure::with(state.to_string(), Observed::new(v as f64, "version"))),
                    None => Err(Failure::new(state.to_string())),
                },
                Err(e) => Err(Failure::new(format!("cannot read the schema version: {e}"))),
            }
        }
    })
    .component_type("datastore")
}
