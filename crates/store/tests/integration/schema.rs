//! The compatibility window: a build stays usable on a newer schema only while every newer
//! migration declares itself compatible with it, and the runner writes those declarations; a
//! migration waits for a lock only `lock_timeout` at a time, and none holds a hot table against
//! writers.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use caracal_store::expected_version;
use caracal_store::schema::{self, Schema};
use caracal_testkit::Postgres;
use sqlx::SqlSafeStr;

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

/// A fresh database at the schema of the release before the checked rules (version
/// `FIRST_CHECKED - 1`), as the previous release left it.
async fn at_previous_schema(postgres: &Postgres, name: &str) -> sqlx::PgPool {
    let pool = sqlx::PgPool::connect(&postgres.fresh_database(name).expect("db")).await.expect("connect");
    schema::MIGRATOR.run_to(caracal_store::schema_rules::FIRST_CHECKED - 1, &pool).await.expect("previous schema");
    pool
}

async fn transition(pool: &sqlx::PgPool) -> Duration {
    let started = Instant::now();
    sqlx::query(
        "INSERT INTO status_transitions (target_name, instance_url, from_status, to_status, reason) \
         VALUES ('shop', 'http://127.0.0.1:1', 'up', 'down', 'test')",
    )
    .execute(pool)
    .await
    .expect("record a transition");
    started.elapsed()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_migration_waiting_for_a_lock_gives_up_retries_and_leaves_no_invalid_index() {
    let postgres = Postgres::start_default().expect("postgres");
    let pool = at_previous_schema(&postgres, "retry").await;
    // A writer's transaction left open on status_transitions: the concurrent index build must
    // wait for it, and gives up after lock_timeout (leaving an invalid index) instead.
    let mut held = pool.begin().await.expect("tx");
    sqlx::query(
        "INSERT INTO status_transitions (target_name, instance_url, from_status, to_status, reason) \
         VALUES ('held', 'http://127.0.0.1:1', 'up', 'down', 'test')",
    )
    .execute(&mut *held)
    .await
    .expect("held write");
    let options = schema::MigrateOptions {
        lock_timeout: Duration::from_millis(300),
        attempts: 100,
        pause: Duration::from_millis(200),
        ..schema::MigrateOptions::default()
    };
    // Side by side in this task (sqlx's migrator future is not `Send` for `tokio::spawn`).
    let migrating = schema::migrate_with(&pool, &options);
    let meanwhile = async {
        tokio::time::sleep(Duration::from_millis(1500)).await;
        // Writers go on meanwhile.
        let took = transition(&pool).await;
        assert!(took < Duration::from_secs(2), "a writer waited {took:?} behind the migration");
        let unfinished: bool =
            sqlx::query_scalar("SELECT NOT EXISTS (SELECT 1 FROM _sqlx_migrations WHERE version = $1)")
                .bind(caracal_store::schema_rules::FIRST_CHECKED)
                .fetch_one(&pool)
                .await
                .expect("version");
        assert!(unfinished, "the build cannot finish while the writer's transaction is open");
        held.commit().await.expect("commit");
    };
    let (done, ()) = tokio::time::timeout(Duration::from_secs(30), async { tokio::join!(migrating, meanwhile) })
        .await
        .expect("finishes");
    let done = done.expect("migrate");
    assert!(done.attempts >= 2, "it gave up and retried: {done:?}");
    assert!(done.applied.contains(&caracal_store::schema_rules::FIRST_CHECKED), "{done:?}");
    let (indexes, valid): (i64, bool) = sqlx::query_as(
        "SELECT count(*), bool_and(i.indisvalid) FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid \
         WHERE c.relname LIKE 'status_transitions_occurred_brin%'",
    )
    .fetch_one(&pool)
    .await
    .expect("indexes");
    assert_eq!((indexes, valid), (1, true), "one valid index, the failed attempts' invalid ones dropped");
}

/// The hot tables: written on every probe, change or request.
const HOT: &[&str] = &["targets", "instances", "instance_status", "status_transitions", "outbox", "audit_events"];

/// Samples `pg_locks` every 5 ms until `stop`: the longest time any other session held a lock
/// on a hot table that writers would queue behind (SHARE or stronger), and on which table.
async fn longest_blocking_hold(pool: sqlx::PgPool, stop: Arc<AtomicBool>) -> (Duration, String) {
    let mut since: std::collections::HashMap<String, Instant> = std::collections::HashMap::new();
    let mut longest = (Duration::ZERO, String::new());
    let hot: Vec<String> = HOT.iter().map(|t| t.to_string()).collect();
    while !stop.load(Ordering::SeqCst) {
        let held: Vec<String> = sqlx::query_scalar(
            "SELECT DISTINCT c.relname::text FROM pg_locks l JOIN pg_class c ON c.oid = l.relation \
             WHERE l.granted AND l.pid <> pg_backend_pid() AND c.relname = ANY($1) \
             AND l.mode IN ('ShareLock', 'ShareRowExclusiveLock', 'ExclusiveLock', 'AccessExclusiveLock')",
        )
        .bind(&hot)
        .fetch_all(&pool)
        .await
        .expect("locks");
        let now = Instant::now();
        since.retain(|table, _| held.contains(table));
        for table in held {
            let start = *since.entry(table.clone()).or_insert(now);
            if now - start >= longest.0 {
                longest = (now - start + Duration::from_millis(5), table);
            }
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    longest
}

/// Runs `work` while a writer records transitions and the sampler watches the locks: the
/// longest blocking hold, and the writer's slowest write.
async fn under_load<F: std::future::Future<Output = ()>>(
    pool: &sqlx::PgPool,
    work: F,
) -> ((Duration, String), Duration) {
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = tokio::spawn(longest_blocking_hold(pool.clone(), Arc::clone(&stop)));
    let writer = tokio::spawn({
        let (pool, stop) = (pool.clone(), Arc::clone(&stop));
        async move {
            let mut slowest = Duration::ZERO;
            while !stop.load(Ordering::SeqCst) {
                slowest = slowest.max(transition(&pool).await);
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            slowest
        }
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    work.await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    stop.store(true, Ordering::SeqCst);
    (sampler.await.expect("sampler"), writer.await.expect("writer"))
}

/// The bound on a blocking lock on a hot table: writers may wait this long, not longer.
const BLOCKING_BOUND: Duration = Duration::from_millis(250);

#[tokio::test(flavor = "multi_thread")]
async fn this_release_migrations_and_post_deployment_steps_never_hold_a_hot_table_against_writers() {
    let postgres = Postgres::start_default().expect("postgres");
    let pool = at_previous_schema(&postgres, "hold").await;
    // Enough history that a blocking index build or a table rewrite would show.
    sqlx::query(
        "INSERT INTO status_transitions (target_name, instance_url, from_status, to_status, reason, occurred_at) \
         SELECT 't' || (g % 500), 'http://127.0.0.1:' || (g % 500), 'up', 'down', 'seed', \
                now() - make_interval(secs => 300000 - g) FROM generate_series(1, 300000) g",
    )
    .execute(&pool)
    .await
    .expect("seed");

    // The sampler sees a blocking hold when there is one: a migration that locks the table.
    let blocking = sqlx::migrate::Migration::new(
        9_000,
        "blocking".into(),
        sqlx::migrate::MigrationType::Simple,
        sqlx::AssertSqlSafe("LOCK TABLE status_transitions IN ACCESS EXCLUSIVE MODE; SELECT pg_sleep(0.6)")
            .into_sql_str(),
        false,
    );
    let bad = sqlx::migrate::Migrator {
        migrations: std::borrow::Cow::Owned(vec![blocking]),
        table_name: std::borrow::Cow::Borrowed("_blocking_check"),
        ..sqlx::migrate::Migrator::DEFAULT
    };
    let ((held, table), _) = under_load(&pool, async { bad.run(&pool).await.expect("blocking migration") }).await;
    assert!(
        held > BLOCKING_BOUND && table == "status_transitions",
        "the sampler missed a 600 ms hold: {held:?} {table}"
    );

    // This release's migrations, then its post-deployment steps.
    let ((held, table), slowest) = under_load(&pool, async {
        caracal_store::migrate(&pool).await.expect("migrate");
        schema::post_deploy(&pool, &schema::MigrateOptions::default()).await.expect("post-deploy");
    })
    .await;
    eprintln!("migrations under load: longest blocking hold {held:?} ({table}), slowest write {slowest:?}");
    assert!(held < BLOCKING_BOUND, "a migration held {table} against writers for {held:?}");
    assert!(slowest < Duration::from_secs(2), "a writer waited {slowest:?}");
    assert_eq!(caracal_store::applied_version(&pool).await.expect("version"), Some(expected_version()));
    assert!(schema::pending_post_deploy(&pool).await.expect("pending").is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_batched_post_deployment_step_rewrites_every_row_without_holding_writers() {
    let postgres = Postgres::start_default().expect("postgres");
    let pool = sqlx::PgPool::connect(&postgres.fresh_database("batched").expect("db")).await.expect("connect");
    caracal_store::migrate(&pool).await.expect("migrate");
    sqlx::query("CREATE TABLE backfill (id bigserial PRIMARY KEY, a bigint NOT NULL, b bigint)")
        .execute(&pool)
        .await
        .expect("table");
    sqlx::query("INSERT INTO backfill (a) SELECT g FROM generate_series(1, 200000) g")
        .execute(&pool)
        .await
        .expect("rows");
    let sql = "-- no-transaction\n-- batched\n\
               UPDATE backfill SET b = a WHERE id IN (SELECT id FROM backfill WHERE b IS NULL LIMIT 2000)";
    assert!(caracal_store::schema_rules::check(2, sql, true).is_empty(), "the step keeps the rules");
    let step = sqlx::migrate::Migration::new(
        2,
        "backfill b".into(),
        sqlx::migrate::MigrationType::Simple,
        sqlx::AssertSqlSafe(sql).into_sql_str(),
        true,
    );
    let steps = sqlx::migrate::Migrator::with_migrations(vec![step]);

    // A writer updating rows of the same table throughout, each update timed.
    let stop = Arc::new(AtomicBool::new(false));
    let writer = tokio::spawn({
        let (pool, stop) = (pool.clone(), Arc::clone(&stop));
        async move {
            let (mut slowest, mut n) = (Duration::ZERO, 0u64);
            while !stop.load(Ordering::SeqCst) {
                let started = Instant::now();
                sqlx::query("UPDATE backfill SET a = a WHERE id = $1")
                    .bind((n * 7919 % 200_000 + 1) as i64)
                    .execute(&pool)
                    .await
                    .expect("write");
                slowest = slowest.max(started.elapsed());
                n += 1;
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            (slowest, n)
        }
    });
    let done = schema::post_deploy_steps(&pool, &steps, &schema::MigrateOptions::default()).await.expect("step");
    stop.store(true, Ordering::SeqCst);
    let (slowest, writes) = writer.await.expect("writer");
    eprintln!("batched rewrite of 200,000 rows: {done:?}; {writes} writes meanwhile, the slowest {slowest:?}");
    assert_eq!(done.rewritten, 200_000);
    assert_eq!(done.applied, [2]);
    let left: i64 = sqlx::query_scalar("SELECT count(*) FROM backfill WHERE b IS DISTINCT FROM a")
        .fetch_one(&pool)
        .await
        .expect("count");
    assert_eq!(left, 0, "every row rewritten");
    assert!(writes > 10 && slowest < Duration::from_millis(500), "writers waited {slowest:?} ({writes} writes)");
    // Run again: recorded, nothing to do.
    let again = schema::post_deploy_steps(&pool, &steps, &schema::MigrateOptions::default()).await.expect("again");
    assert_eq!((again.applied.len(), again.rewritten), (0, 0));
}
