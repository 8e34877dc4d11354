//! The schema's versions: applying the migrations without stalling writers, and the
//! compatibility window that keeps a running release ready while the next one's migration is
//! taken.
//!
//! # The compatibility window
//! A build expects the schema version of its newest embedded migration. It is ready against
//! exactly that version, and against a *newer* one when every migration past its own declares
//! itself compatible with it. A migration declares so in a header line,
//!
//! ```sql
//! -- compatible-with: 12
//! ```
//!
//! meaning "builds that expect schema 12 or newer keep working once this is applied". The
//! migration runner writes every embedded migration's declaration into
//! `_schema_compatibility` *before* applying anything, so a running replica of the previous
//! release that sees the new version already finds the declaration beside it. A migration
//! without a declaration is compatible with nothing older than itself (fail closed): a replica
//! facing it is unready, with both versions named, as is one facing a schema older than it
//! needs. Which changes may declare compatibility is written down in `docs/operating.md`
//! ("Upgrading").
//!
//! # Migrations that do not stall writers
//! [`migrate`] applies the migrations on one dedicated connection with `lock_timeout` set, so
//! a migration that cannot get its lock gives up within seconds instead of queueing every
//! writer of that table behind it, and is retried after a pause. An index build
//! (`CREATE INDEX CONCURRENTLY`, in a `-- no-transaction` migration of its own) that failed
//! half way leaves an invalid index; the runner drops invalid indexes before it retries.

use std::time::Duration;

use sqlx::Connection;
use sqlx::migrate::{Migrate, MigrateError, Migrator};

use crate::Error;

/// The embedded migrations.
pub static MIGRATOR: Migrator = sqlx::migrate!("./migrations");

/// The table the runner keeps the declarations in: `version`, `compatible_with`.
pub const COMPATIBILITY_TABLE: &str = "_schema_compatibility";

/// The embedded post-deployment steps (`post-deploy/`): the contract half of a release's
/// change (drops, backfills), run only once every replica runs the release
/// (`caracal-api --migrate --post-deploy`). Each is numbered after the schema version whose
/// release it finishes.
pub static POST_DEPLOY: Migrator = sqlx::migrate!("./post-deploy");

/// The table the post-deployment steps are recorded in (sqlx's own bookkeeping, apart from the
/// schema's `_sqlx_migrations`, so they never count as a schema version).
pub const POST_DEPLOY_TABLE: &str = "_caracal_post_deploy";

/// The newest migration version this build knows.
pub fn expected_version() -> i64 {
    MIGRATOR.iter().map(|m| m.version).max().unwrap_or(0)
}

/// The oldest schema version builds must expect to keep working once the migration whose SQL
/// this is has been applied: its `-- compatible-with: N` header line, if it has one.
pub fn declared_compatibility(sql: &str) -> Option<i64> {
    sql.lines()
        .map(str::trim)
        .take_while(|l| l.starts_with("--") || l.is_empty())
        .find_map(|l| l.strip_prefix("--")?.trim().strip_prefix("compatible-with:")?.trim().parse().ok())
}

/// Every embedded migration's declaration, `(version, compatible_with)`; a migration without
/// one is compatible only with builds that expect it (`compatible_with = version`).
pub fn declarations() -> Vec<(i64, i64)> {
    MIGRATOR
        .iter()
        .filter(|m| !m.migration_type.is_down_migration())
        .map(|m| (m.version, declared_compatibility(m.sql.as_str()).unwrap_or(m.version)))
        .collect()
}

/// Where the database's schema stands for this build.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Schema {
    /// Never migrated.
    NotMigrated,
    /// At exactly the version this build expects.
    Expected {
        /// The applied version.
        version: i64,
    },
    /// Newer than this build, and every newer migration declares itself compatible with it.
    Compatible {
        /// The applied version.
        version: i64,
        /// The version this build expects.
        expected: i64,
    },
    /// Older than this build needs: the migrations have not been run.
    Behind {
        /// The applied version.
        version: i64,
        /// The version this build expects.
        expected: i64,
    },
    /// Newer than this build, past its window: `blocking` declares no compatibility with it.
    Ahead {
        /// The applied version.
        version: i64,
        /// The version this build expects.
        expected: i64,
        /// The first applied migration this build cannot work with.
        blocking: i64,
        /// The oldest build version that migration works with.
        needs: i64,
    },
}

impl Schema {
    /// Whether a build can serve on this schema.
    pub fn usable(&self) -> bool {
        matches!(self, Schema::Expected { .. } | Schema::Compatible { .. })
    }

    /// The applied version, if any.
    pub fn version(&self) -> Option<i64> {
        match self {
            Schema::NotMigrated => None,
            Schema::Expected { version }
            | Schema::Compatible { version, .. }
            | Schema::Behind { version, .. }
            | Schema::Ahead { version, .. } => Some(*version),
        }
    }
}

impl std::fmt::Display for Schema {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Schema::NotMigrated => {
                write!(f, "schema not migrated; run `caracal-api --migrate` (expects {})", expected_version())
            }
            Schema::Expected { version } => write!(f, "schema at version {version}"),
            Schema::Compatible { version, expected } => write!(
                f,
                "schema at version {version}, declared compatible with this build's {expected} (an upgrade in progress)"
            ),
            Schema::Behind { version, expected } => {
                write!(f, "schema at version {version}, this build expects {expected}; run `caracal-api --migrate`")
            }
            Schema::Ahead { version, expected, blocking, needs } => write!(
                f,
                "schema at version {version}, this build expects {expected}: migration {blocking} needs builds \
                 that expect {needs} or newer; roll this replica to the new release"
            ),
        }
    }
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

/// Where the database's schema stands for this build (see [the window](self)).
///
/// # Errors
/// When a query fails.
pub async fn schema(pool: &sqlx::PgPool) -> Result<Schema, Error> {
    schema_for(pool, expected_version()).await
}

/// As [`schema`], for a build that expects `expected` (the rolling-upgrade tests play an older
/// build with it).
///
/// # Errors
/// When a query fails.
pub async fn schema_for(pool: &sqlx::PgPool, expected: i64) -> Result<Schema, Error> {
    let (migrations, declared): (bool, bool) = sqlx::query_as(
        "SELECT to_regclass('_sqlx_migrations') IS NOT NULL, to_regclass('_schema_compatibility') IS NOT NULL",
    )
    .fetch_one(pool)
    .await?;
    if !migrations {
        return Ok(Schema::NotMigrated);
    }
    let Some(version) = sqlx::query_scalar::<_, Option<i64>>("SELECT max(version) FROM _sqlx_migrations WHERE success")
        .fetch_one(pool)
        .await?
    else {
        return Ok(Schema::NotMigrated);
    };
    if version == expected {
        return Ok(Schema::Expected { version });
    }
    if version < expected {
        return Ok(Schema::Behind { version, expected });
    }
    // Newer: each migration past this build's must declare itself compatible with it. Without
    // the declarations table, none does.
    let newer: Vec<(i64, Option<i64>)> = if declared {
        sqlx::query_as(
            "SELECT m.version, c.compatible_with FROM _sqlx_migrations m \
             LEFT JOIN _schema_compatibility c ON c.version = m.version \
             WHERE m.success AND m.version > $1 ORDER BY m.version",
        )
        .bind(expected)
        .fetch_all(pool)
        .await?
    } else {
        sqlx::query_as(
            "SELECT version, NULL::bigint FROM _sqlx_migrations WHERE success AND version > $1 ORDER BY version",
        )
        .bind(expected)
        .fetch_all(pool)
        .await?
    };
    match newer.into_iter().find(|(_, with)| with.is_none_or(|w| w > expected)) {
        None => Ok(Schema::Compatible { version, expected }),
        Some((blocking, with)) => Ok(Schema::Ahead { version, expected, blocking, needs: with.unwrap_or(blocking) }),
    }
}

/// How [`migrate_with`] waits for locks.
#[derive(Debug, Clone)]
pub struct MigrateOptions {
    /// How long one DDL statement may wait for a lock before it gives up (`lock_timeout`), so
    /// writers never queue behind a waiting migration for longer.
    pub lock_timeout: Duration,
    /// How many times a migration that gave up waiting is tried in all.
    pub attempts: u32,
    /// The pause between two attempts.
    pub pause: Duration,
    /// How long the post-deployment steps wait for replicas of an older release to leave
    /// before giving up.
    pub wait_for_replicas: Duration,
}

impl Default for MigrateOptions {
    fn default() -> Self {
        MigrateOptions {
            lock_timeout: Duration::from_secs(5),
            attempts: 12,
            pause: Duration::from_secs(5),
            wait_for_replicas: Duration::from_secs(600),
        }
    }
}

/// Applies every pending migration with the [default options](MigrateOptions::default): a
/// 5 s `lock_timeout`, retried for about a minute.
///
/// # Errors
/// When PostgreSQL cannot be reached, a migration fails, or one never got its lock.
pub async fn migrate(pool: &sqlx::PgPool) -> Result<(), Error> {
    migrate_with(pool, &MigrateOptions::default()).await.map(|_| ())
}

/// Applies every pending migration (see [the runner](self)).
///
/// # Errors
/// When PostgreSQL cannot be reached, a migration fails, or one never got its lock within
/// `options.attempts`.
pub async fn migrate_with(pool: &sqlx::PgPool, options: &MigrateOptions) -> Result<Migrated, Error> {
    run_with(pool, &MIGRATOR, options, true).await
}

/// Runs the post-deployment steps whose schema version is applied and that have not run yet,
/// with the same lock discipline as [`migrate_with`] — once no replica of an older release is
/// connected (sessions named by [`crate::pool`]): a step removes what the previous release may
/// still use. It waits up to `options.wait_for_replicas` for them to leave (a rollout in
/// progress), checking every `options.pause`.
///
/// # Errors
/// [`Error::OlderReplicas`] when replicas of an older release are still connected after the
/// wait; otherwise as [`migrate_with`].
pub async fn post_deploy(pool: &sqlx::PgPool, options: &MigrateOptions) -> Result<Migrated, Error> {
    post_deploy_steps(pool, &POST_DEPLOY, options).await
}

/// As [`post_deploy`], with the steps of `steps` (the tests run steps of their own). A step
/// whose header says `-- batched` is a rewrite of rows, one bounded statement (`... LIMIT N`)
/// that is run again, each time in its own transaction, until it changes no row; then it is
/// recorded. So no transaction holds many rows' locks, and an interrupted rewrite resumes
/// where it stopped.
///
/// # Errors
/// As [`post_deploy`].
pub async fn post_deploy_steps(
    pool: &sqlx::PgPool,
    steps: &Migrator,
    options: &MigrateOptions,
) -> Result<Migrated, Error> {
    let started = std::time::Instant::now();
    let applied = applied_version(pool).await?.unwrap_or(0);
    let pending = pending_in(pool, steps).await?;
    loop {
        let older: Vec<(String, i64, i64)> = connected_builds(pool)
            .await?
            .into_iter()
            .filter(|(_, schema, _)| pending.iter().any(|(step, _)| step > schema))
            .collect();
        if older.is_empty() {
            break;
        }
        let replicas = older
            .iter()
            .map(|(name, _, sessions)| format!("{name} ({sessions} session(s))"))
            .collect::<Vec<_>>()
            .join(", ");
        if started.elapsed() >= options.wait_for_replicas {
            return Err(Error::OlderReplicas { replicas });
        }
        tracing::info!(replicas, "the post-deployment steps wait for replicas of an older release to leave");
        tokio::time::sleep(options.pause).await;
    }
    let mut rewritten = 0;
    for step in steps.iter().filter(|m| pending.iter().any(|(v, _)| *v == m.version) && is_batched(m.sql.as_str())) {
        rewritten += rewrite_in_batches(pool, step, options).await?;
    }
    let steps: Vec<_> = steps.iter().filter(|m| m.version <= applied).cloned().collect();
    let migrator = Migrator {
        migrations: std::borrow::Cow::Owned(steps),
        table_name: std::borrow::Cow::Borrowed(POST_DEPLOY_TABLE),
        ..Migrator::DEFAULT
    };
    let mut done = run_with(pool, &migrator, options, false).await?;
    done.rewritten = rewritten;
    Ok(done)
}

/// Whether a step's header says `-- batched`.
pub fn is_batched(sql: &str) -> bool {
    sql.lines().map(str::trim).take_while(|l| l.starts_with("--") || l.is_empty()).any(|l| l == "-- batched")
}

/// Runs a batched step's statement until it changes no row, on a connection of its own with
/// `lock_timeout`; a batch that gave up waiting for a lock is tried again after a pause.
/// Returns the rows it changed.
async fn rewrite_in_batches(
    pool: &sqlx::PgPool,
    step: &sqlx::migrate::Migration,
    options: &MigrateOptions,
) -> Result<u64, Error> {
    let mut conn = pool.acquire().await?.detach();
    let result = async {
        sqlx::query(sqlx::AssertSqlSafe(format!("SET lock_timeout = {}", options.lock_timeout.as_millis())))
            .execute(&mut conn)
            .await?;
        let (mut rows, mut batches, mut attempt) = (0, 0u64, 1);
        loop {
            match sqlx::query(sqlx::AssertSqlSafe(step.sql.as_str().to_string())).execute(&mut conn).await {
                Ok(done) if done.rows_affected() == 0 => break,
                Ok(done) => {
                    rows += done.rows_affected();
                    batches += 1;
                    if batches % 100 == 0 {
                        tracing::info!(step = step.version, rows, batches, "rewriting in batches");
                    }
                }
                Err(e) => {
                    let e = Error::Database(e);
                    if !retryable(&e) || attempt >= options.attempts {
                        return Err(e);
                    }
                    attempt += 1;
                    tokio::time::sleep(options.pause).await;
                }
            }
        }
        tracing::info!(step = step.version, rows, batches, "rewritten in batches");
        Ok(rows)
    }
    .await;
    let _ = conn.close().await;
    result
}

/// The builds connected to the database, by the names their sessions carry
/// (`caracal-<service> schema <N>`): `(name, N, sessions)`.
///
/// # Errors
/// When the query fails.
pub async fn connected_builds(pool: &sqlx::PgPool) -> Result<Vec<(String, i64, i64)>, Error> {
    let rows: Vec<(String, i64)> = sqlx::query_as(
        "SELECT application_name, count(*) FROM pg_stat_activity \
         WHERE datname = current_database() AND application_name ~ '^caracal-[a-z]+ schema [0-9]+$' \
         GROUP BY application_name ORDER BY application_name",
    )
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .filter_map(|(name, sessions)| {
            let schema = name.rsplit(' ').next()?.parse().ok()?;
            Some((name, schema, sessions))
        })
        .collect())
}

/// The post-deployment steps not run yet whose schema version is applied: `(version,
/// description)`, for `caracal doctor`.
///
/// # Errors
/// When a query fails.
pub async fn pending_post_deploy(pool: &sqlx::PgPool) -> Result<Vec<(i64, String)>, Error> {
    pending_in(pool, &POST_DEPLOY).await
}

/// The steps of `steps` not run yet whose schema version is applied.
async fn pending_in(pool: &sqlx::PgPool, steps: &Migrator) -> Result<Vec<(i64, String)>, Error> {
    let applied = applied_version(pool).await?.unwrap_or(0);
    let exists: bool =
        sqlx::query_scalar("SELECT to_regclass('_caracal_post_deploy') IS NOT NULL").fetch_one(pool).await?;
    let done: Vec<i64> = if exists {
        sqlx::query_scalar("SELECT version FROM _caracal_post_deploy WHERE success").fetch_all(pool).await?
    } else {
        Vec::new()
    };
    Ok(steps
        .iter()
        .filter(|m| m.version <= applied && !done.contains(&m.version))
        .map(|m| (m.version, m.description.to_string()))
        .collect())
}

/// What a run of the migrations did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Migrated {
    /// The versions applied by this run, in order.
    pub applied: Vec<i64>,
    /// How many attempts it took (more than one when a migration gave up waiting for a lock).
    pub attempts: u32,
    /// The rows the batched post-deployment steps rewrote.
    pub rewritten: u64,
}

/// Runs `migrator` until it succeeds, retrying a migration that gave up waiting for a lock.
/// `declare` writes the declarations first (the schema migrations have them).
pub(crate) async fn run_with(
    pool: &sqlx::PgPool,
    migrator: &Migrator,
    options: &MigrateOptions,
    declare: bool,
) -> Result<Migrated, Error> {
    let mut attempt = 1;
    loop {
        match attempt_once(pool, migrator, options, declare).await {
            Ok(applied) => return Ok(Migrated { applied, attempts: attempt, rewritten: 0 }),
            Err(e) if retryable(&e) && attempt < options.attempts => {
                tracing::warn!(
                    error = %e,
                    attempt,
                    attempts = options.attempts,
                    "a migration gave up waiting for a lock (lock_timeout {:?}); retrying in {:?}",
                    options.lock_timeout,
                    options.pause
                );
                attempt += 1;
                tokio::time::sleep(options.pause).await;
            }
            Err(e) => return Err(e),
        }
    }
}

/// Whether an attempt failed only because a statement waited too long for a lock (or was
/// chosen as a deadlock's victim) — a migration, or the clean-up before it: worth another try.
fn retryable(e: &Error) -> bool {
    let database = match e {
        Error::Database(e) | Error::Migrate(MigrateError::ExecuteMigration(e, _)) => e,
        Error::Migrate(MigrateError::Execute(e)) => e,
        _ => return false,
    };
    database.as_database_error().and_then(|d| d.code()).is_some_and(|code| code == "55P03" || code == "40P01")
}

/// One attempt, on a connection of its own that is closed at the end: the advisory lock sqlx
/// takes is the session's, and a failed run does not release it.
async fn attempt_once(
    pool: &sqlx::PgPool,
    migrator: &Migrator,
    options: &MigrateOptions,
    declare: bool,
) -> Result<Vec<i64>, Error> {
    let mut conn = pool.acquire().await?.detach();
    let result = async {
        sqlx::query(sqlx::AssertSqlSafe(format!("SET lock_timeout = {}", options.lock_timeout.as_millis())))
            .execute(&mut conn)
            .await?;
        conn.lock().await.map_err(Error::Migrate)?;
        if declare {
            write_declarations(&mut conn).await?;
        }
        drop_invalid_indexes(&mut conn, migrator).await?;
        // The lock is already held (and must be, around the invalid-index clean-up).
        let unlocked = Migrator {
            migrations: migrator.migrations.clone(),
            table_name: migrator.table_name.clone(),
            locking: false,
            ..Migrator::DEFAULT
        };
        let before = applied_set(&mut conn, &unlocked.table_name).await?;
        unlocked.run(&mut conn).await.map_err(Error::Migrate)?;
        let after = applied_set(&mut conn, &unlocked.table_name).await?;
        Ok(after.into_iter().filter(|v| !before.contains(v)).collect())
    }
    .await;
    let _ = conn.close().await;
    result
}

/// The versions recorded in `table` (none before it exists).
async fn applied_set(conn: &mut sqlx::PgConnection, table: &str) -> Result<Vec<i64>, Error> {
    let exists: bool =
        sqlx::query_scalar("SELECT to_regclass($1) IS NOT NULL").bind(table).fetch_one(&mut *conn).await?;
    if !exists {
        return Ok(Vec::new());
    }
    let sql = format!("SELECT version FROM {table} WHERE success ORDER BY version");
    Ok(sqlx::query_scalar(sqlx::AssertSqlSafe(sql)).fetch_all(&mut *conn).await?)
}

/// Writes every embedded migration's declaration, before any is applied.
async fn write_declarations(conn: &mut sqlx::PgConnection) -> Result<(), Error> {
    sqlx::query(
        "CREATE TABLE IF NOT EXISTS _schema_compatibility (\
           version bigint PRIMARY KEY, compatible_with bigint NOT NULL, declared_at timestamptz NOT NULL DEFAULT now())",
    )
    .execute(&mut *conn)
    .await?;
    let (versions, with): (Vec<i64>, Vec<i64>) = declarations().into_iter().unzip();
    // An applied migration's declaration is frozen with it (its checksum covers the header), so
    // overwriting only ever changes a pending one.
    sqlx::query(
        "INSERT INTO _schema_compatibility (version, compatible_with) SELECT * FROM unnest($1::bigint[], $2::bigint[]) \
         ON CONFLICT (version) DO UPDATE SET compatible_with = EXCLUDED.compatible_with \
         WHERE _schema_compatibility.compatible_with IS DISTINCT FROM EXCLUDED.compatible_with",
    )
    .bind(versions)
    .bind(with)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Drops the invalid indexes a failed `CREATE INDEX CONCURRENTLY` of `migrator`'s left behind,
/// so its retry builds the index instead of finding the broken one there (`IF NOT EXISTS`).
/// Only those: an invalid index of any other name may be an operator's `REINDEX
/// CONCURRENTLY` in progress. Runs under the migration lock, so no other runner's build is.
async fn drop_invalid_indexes(conn: &mut sqlx::PgConnection, migrator: &Migrator) -> Result<(), Error> {
    let ours = concurrent_builds(migrator);
    if ours.is_empty() {
        return Ok(());
    }
    let invalid: Vec<String> = sqlx::query_scalar(
        "SELECT quote_ident(c.relname) FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid \
         JOIN pg_namespace n ON n.oid = c.relnamespace \
         WHERE NOT i.indisvalid AND n.nspname = current_schema() AND c.relname = ANY($1)",
    )
    .bind(&ours)
    .fetch_all(&mut *conn)
    .await?;
    for index in invalid {
        tracing::warn!(index, "dropping an invalid index a failed concurrent build left behind");
        sqlx::query(sqlx::AssertSqlSafe(format!("DROP INDEX CONCURRENTLY IF EXISTS {index}")))
            .execute(&mut *conn)
            .await?;
    }
    Ok(())
}

/// The names of the indexes `migrator`'s migrations build `CONCURRENTLY`.
fn concurrent_builds(migrator: &Migrator) -> Vec<String> {
    let pattern = regex::Regex::new(
        r"(?i)\bcreate\s+(?:unique\s+)?index\s+concurrently\s+(?:if\s+not\s+exists\s+)?([a-z_][a-z0-9_]*)",
    )
    .expect("a valid pattern");
    migrator
        .iter()
        .flat_map(|m| pattern.captures_iter(m.sql.as_str()).map(|c| c[1].to_lowercase()).collect::<Vec<_>>())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_declaration_is_read_from_the_header_only() {
        assert_eq!(declared_compatibility("-- compatible-with: 12\nCREATE TABLE t ();"), Some(12));
        assert_eq!(declared_compatibility("-- no-transaction\n-- Why.\n--   compatible-with:  7 \nSELECT 1;"), Some(7));
        assert_eq!(declared_compatibility("CREATE TABLE t ();\n-- compatible-with: 12"), None, "past the header");
        assert_eq!(declared_compatibility("-- compatible-with: twelve\n"), None);
        assert_eq!(declared_compatibility("-- A table.\nCREATE TABLE t ();"), None);
    }

    #[test]
    fn the_concurrent_builds_are_known_by_name() {
        assert!(concurrent_builds(&MIGRATOR).contains(&"status_transitions_occurred_brin".to_string()));
        assert!(concurrent_builds(&POST_DEPLOY).is_empty(), "the post-deployment steps only drop");
    }

    #[test]
    fn undeclared_migrations_are_compatible_only_with_themselves() {
        let declared = declarations();
        assert_eq!(declared.len(), MIGRATOR.iter().count());
        for (version, with) in declared {
            assert!(with <= version, "migration {version} declares a future version {with}");
        }
    }
}
