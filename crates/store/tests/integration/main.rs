//! caracal-store's integration tests on a real PostgreSQL: migrations, the outbox's
//! transactional guarantees and the plans of its hot queries.

use std::time::Duration;

use caracal_store::outbox::{self, Retry};
use caracal_store::{NewEvent, expected_version};
use caracal_testkit::Postgres;

async fn database(postgres: &Postgres) -> (sqlx::PgPool, String) {
    let url = postgres.fresh_database("store").expect("database");
    let db = url.rsplit('/').next().expect("name").to_string();
    (sqlx::PgPool::connect(&url).await.expect("connect"), db)
}

fn event(n: i64) -> NewEvent {
    NewEvent {
        event_type: "t".into(),
        target: Some("x".into()),
        instance: None,
        payload: serde_json::json!({ "n": n }),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn migrations_apply_once_and_report_their_version() {
    let postgres = Postgres::start_default().expect("postgres");
    let (pool, _) = database(&postgres).await;
    assert_eq!(caracal_store::applied_version(&pool).await.expect("version"), None);
    caracal_store::migrate(&pool).await.expect("migrate");
    caracal_store::migrate(&pool).await.expect("migrating twice is harmless");
    assert_eq!(caracal_store::applied_version(&pool).await.expect("version"), Some(expected_version()));
}

#[tokio::test(flavor = "multi_thread")]
async fn an_event_commits_with_its_change_or_not_at_all() {
    let postgres = Postgres::start_default().expect("postgres");
    let (pool, db) = database(&postgres).await;
    caracal_store::migrate(&pool).await.expect("migrate");
    let mut tx = pool.begin().await.expect("tx");
    outbox::enqueue(&mut tx, &event(1)).await.expect("enqueue");
    tx.rollback().await.expect("rollback");
    let mut tx = pool.begin().await.expect("tx");
    let id = outbox::enqueue(&mut tx, &event(2)).await.expect("enqueue");
    tx.commit().await.expect("commit");
    let rows: Vec<i64> = sqlx::query_scalar("SELECT id FROM outbox").fetch_all(&pool).await.expect("rows");
    assert_eq!(rows, [id], "the rolled-back event is gone with its transaction");

    // Two relays never claim the same row at once.
    let mut tx = pool.begin().await.expect("tx");
    for n in 3..=6 {
        outbox::enqueue(&mut tx, &event(n)).await.expect("enqueue");
    }
    tx.commit().await.expect("commit");
    let mut first = pool.begin().await.expect("tx");
    let mut second = pool.begin().await.expect("tx");
    let a = outbox::claim(&mut first, 3).await.expect("claim");
    let b = outbox::claim(&mut second, 10).await.expect("claim");
    assert_eq!(a.len(), 3);
    assert_eq!(b.len(), 2, "SKIP LOCKED leaves the locked rows to their holder");
    assert!(a.iter().all(|e| b.iter().all(|f| f.id != e.id)));
    assert!(a[0].occurred_at.ends_with('Z'), "times leave as RFC 3339 UTC: {}", a[0].occurred_at);
    outbox::mark_dispatched(&mut first, &a.iter().map(|e| e.id).collect::<Vec<_>>()).await.expect("mark");
    first.commit().await.expect("commit");
    let retry = Retry { base: Duration::from_secs(60), cap: Duration::from_secs(60), max_attempts: 3 };
    assert!(!outbox::record_failure(&mut second, b[0].id, "boom", retry).await.expect("failure"));
    second.commit().await.expect("commit");
    let mut tx = pool.begin().await.expect("tx");
    let due = outbox::claim(&mut tx, 10).await.expect("claim");
    assert!(due.iter().all(|e| e.id != b[0].id), "a failed row waits for its backoff");
    tx.rollback().await.expect("rollback");

    sqlx::query("UPDATE outbox SET dispatched_at = now() - interval '2 days' WHERE dispatched_at IS NOT NULL")
        .execute(&pool)
        .await
        .expect("age");
    assert_eq!(outbox::purge(&pool, Duration::from_secs(86_400), 100).await.expect("purge"), 3);

    // The checks' query reads the partial indexes of the migration, not the table.
    postgres
        .psql(&db, "INSERT INTO outbox (event_type, payload, dispatched_at) SELECT 't', '{}', now() FROM generate_series(1, 50000)")
        .expect("fill");
    postgres.psql(&db, "ANALYZE outbox").expect("analyze");
    let plan =
        postgres.psql(&db, &format!("EXPLAIN {}", caracal_core::checks::outbox_query("outbox"))).expect("explain");
    assert!(!plan.contains("Seq Scan"), "{plan}");
}
