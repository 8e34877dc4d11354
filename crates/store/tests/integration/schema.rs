//! The compatibility window: a build stays usable on a newer schema only while every newer
//! migration declares itself compatible with it, and the runner writes those declarations.

use caracal_store::expected_version;
use caracal_store::schema::{self, Schema};
use caracal_testkit::Postgres;

/// Records `version` as applied, as a newer release's `--migrate` would.
async fn applied(pool: &sqlx::PgPool, version: i64) {
    sqlx::query(
        "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time) \
         VALUES ($1, 'newer', true, '\\x00', 0)",
    )
    .bind(version)
    .execute(pool)
    .await
    .expect("record a newer migration");
}

async fn declare(pool: &sqlx::PgPool, version: i64, compatible_with: i64) {
    sqlx::query("INSERT INTO _schema_compatibility (version, compatible_with) VALUES ($1, $2)")
        .bind(version)
        .bind(compatible_with)
        .execute(pool)
        .await
        .expect("declare");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_newer_schema_is_usable_only_while_declared_compatible() {
    let postgres = Postgres::start_default().expect("postgres");
    let pool = sqlx::PgPool::connect(&postgres.fresh_database("window").expect("db")).await.expect("connect");
    assert_eq!(schema::schema(&pool).await.expect("schema"), Schema::NotMigrated);
    caracal_store::migrate(&pool).await.expect("migrate");
    let e = expected_version();
    assert_eq!(schema::schema(&pool).await.expect("schema"), Schema::Expected { version: e });

    // The next release's migration, undeclared: fail closed, naming both versions.
    applied(&pool, e + 1).await;
    let state = schema::schema(&pool).await.expect("schema");
    assert_eq!(state, Schema::Ahead { version: e + 1, expected: e, blocking: e + 1, needs: e + 1 });
    assert!(!state.usable());
    let said = state.to_string();
    assert!(said.contains(&format!("version {}", e + 1)) && said.contains(&format!("expects {e}")), "{said}");

    // Declared compatible with this build: usable.
    declare(&pool, e + 1, e).await;
    let state = schema::schema(&pool).await.expect("schema");
    assert_eq!(state, Schema::Compatible { version: e + 1, expected: e });
    assert!(state.usable());

    // One more release whose migration needs builds of e + 1: past this build's window, yet
    // inside the window of a build that expects e + 1.
    applied(&pool, e + 2).await;
    declare(&pool, e + 2, e + 1).await;
    assert_eq!(
        schema::schema(&pool).await.expect("schema"),
        Schema::Ahead { version: e + 2, expected: e, blocking: e + 2, needs: e + 1 }
    );
    assert_eq!(
        schema::schema_for(&pool, e + 1).await.expect("schema"),
        Schema::Compatible { version: e + 2, expected: e + 1 }
    );
    // A build that expects more than is applied waits for the migrations.
    assert_eq!(
        schema::schema_for(&pool, e + 3).await.expect("schema"),
        Schema::Behind { version: e + 2, expected: e + 3 }
    );

    // Without the declarations at all, nothing newer is usable.
    sqlx::query("DROP TABLE _schema_compatibility").execute(&pool).await.expect("drop");
    assert!(!schema::schema_for(&pool, e + 1).await.expect("schema").usable());
}

#[tokio::test(flavor = "multi_thread")]
async fn the_runner_declares_every_migration_before_applying_it() {
    let postgres = Postgres::start_default().expect("postgres");
    let pool = sqlx::PgPool::connect(&postgres.fresh_database("declared").expect("db")).await.expect("connect");
    caracal_store::migrate(&pool).await.expect("migrate");
    let rows: Vec<(i64, i64)> =
        sqlx::query_as("SELECT version, compatible_with FROM _schema_compatibility ORDER BY version")
            .fetch_all(&pool)
            .await
            .expect("declarations");
    assert_eq!(rows, schema::declarations());
    assert_eq!(rows.last().map(|r| r.0), Some(expected_version()));
}
