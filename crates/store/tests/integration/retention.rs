//! Retention on a real PostgreSQL: what a purge deletes and keeps, the ledger's guarantee, and
//! the plans that keep a batch's cost independent of the table's size.

use std::time::Duration;

use caracal_store::retention::{self, PURGE_HISTORY, PURGE_LEDGER, PURGE_SETTINGS, Table};
use caracal_store::{Event, ledger};
use caracal_testkit::Postgres;

use crate::database;

/// The history purge deletes the old prefix in batches, stops at the first row to keep, and
/// records what it did; a zero retention keeps everything.
#[tokio::test(flavor = "multi_thread")]
async fn the_history_purge_deletes_only_what_is_past_the_retention() {
    let postgres = Postgres::start_default().expect("postgres");
    let (pool, db) = database(&postgres).await;
    caracal_store::migrate(&pool).await.expect("migrate");
    let psql = |sql: &str| postgres.psql(&db, sql).expect("psql");
    // 2,500 transitions from 10 days to 5 days ago, then 500 in the last hour.
    psql(
        "INSERT INTO status_transitions (target_name, instance_url, from_status, to_status, occurred_at) \
         SELECT 'shop', 'http://a', 'up', 'down', now() - interval '10 days' + g * interval '172 seconds' \
         FROM generate_series(1, 2500) g",
    );
    psql(
        "INSERT INTO status_transitions (target_name, instance_url, from_status, to_status, occurred_at) \
         SELECT 'shop', 'http://a', 'down', 'up', now() - interval '1 hour' + g * interval '7 seconds' \
         FROM generate_series(1, 500) g",
    );
    let mut conn = pool.acquire().await.expect("conn");
    let kept_forever = retention::purge(&mut conn, Table::History, Duration::ZERO, 100).await.expect("purge");
    assert_eq!(kept_forever.rows, 0);
    let count = || async { psql("SELECT count(*) FROM status_transitions").trim().to_string() };
    assert_eq!(count().await, "3000");

    let purged = retention::purge(&mut conn, Table::History, Duration::from_secs(86_400), 300).await.expect("purge");
    assert_eq!(purged.rows, 2_500);
    assert_eq!(purged.batches, 9, "8 full batches of 300 and the one reaching a row to keep");
    assert_eq!(count().await, "500");
    let oldest = retention::oldest(&mut conn, Table::History).await.expect("oldest").expect("a row");
    assert_eq!(oldest.key, 2_501);
    let recorded = psql("SELECT keep_secs, rows_purged FROM retention WHERE table_name = 'status_transitions'");
    assert!(recorded.contains("86400|2500"), "{recorded}");
    // Nothing more to do: one batch, which finds the first row to keep.
    let again = retention::purge(&mut conn, Table::History, Duration::from_secs(86_400), 300).await.expect("purge");
    assert_eq!((again.rows, again.batches), (0, 1));
}

fn event(id: i64, at: &str) -> Event {
    Event {
        id,
        event_type: "t".into(),
        target: Some("x".into()),
        instance: None,
        payload: serde_json::value::RawValue::from_string("{}".into()).expect("json"),
        occurred_at: at.into(),
        trace_context: None,
    }
}

/// A ledger row is purged only at or below the watermark and below the oldest outbox row, so it
/// can never be healed back; a redelivered entry for a purged id is skipped.
#[tokio::test(flavor = "multi_thread")]
async fn the_ledger_purge_never_passes_what_could_be_healed_and_a_redelivery_stays_out() {
    let postgres = Postgres::start_default().expect("postgres");
    let (pool, db) = database(&postgres).await;
    caracal_store::migrate(&pool).await.expect("migrate");
    let psql = |sql: &str| postgres.psql(&db, sql).expect("psql");
    // Ledger rows 1..=100, all a year old; the watermark at 60; the outbox still holds id 80
    // (its retention not over).
    let old = "2025-01-01T00:00:00Z";
    let events: Vec<Event> = (1..=100).map(|id| event(id, old)).collect();
    assert_eq!(ledger::insert(&pool, &events).await.expect("insert"), 100);
    psql("UPDATE ledger_watermark SET outbox_id = 60");
    psql("SELECT setval('outbox_id_seq', 79)");
    psql("INSERT INTO outbox (event_type, payload) VALUES ('t', '{}')");
    let mut conn = pool.acquire().await.expect("conn");
    let purged = retention::purge(&mut conn, Table::Ledger, Duration::from_secs(86_400), 25).await.expect("purge");
    assert_eq!(purged.rows, 60, "up to the watermark");
    psql("UPDATE ledger_watermark SET outbox_id = 100");
    let purged = retention::purge(&mut conn, Table::Ledger, Duration::from_secs(86_400), 25).await.expect("purge");
    assert_eq!(purged.rows, 19, "then up to the oldest outbox row (80), which could still heal its ledger row");
    assert_eq!(psql("SELECT min(outbox_id) FROM audit_events").trim(), "80");
    assert_eq!(psql("SELECT purged_through FROM retention WHERE table_name = 'audit_events'").trim(), "79");
    // A late redelivery of a purged event is not written back; a new one is.
    let again = ledger::insert(&pool, &[event(5, old), event(79, old), event(101, old)]).await.expect("insert");
    assert_eq!(again, 1);
    assert_eq!(psql("SELECT count(*) FROM audit_events WHERE outbox_id < 80").trim(), "0");
}

/// Each batch reads the next keys by primary key (run as `purge` runs it, with its `SET LOCAL`s):
/// no plan of either purge scans a table whole,
/// with the statistics of an empty table (right after the migration) or after `ANALYZE`.
#[tokio::test(flavor = "multi_thread")]
async fn a_purge_batch_reads_its_keys_by_primary_key() {
    let postgres = Postgres::start_default().expect("postgres");
    let (pool, db) = database(&postgres).await;
    caracal_store::migrate(&pool).await.expect("migrate");
    let psql = |sql: &str| postgres.psql(&db, sql).expect("psql");
    psql(
        "INSERT INTO status_transitions (target_name, instance_url, from_status, to_status, occurred_at) \
         SELECT 'shop', 'http://a', 'up', 'down', now() - interval '40 days' + g * interval '1 minute' \
         FROM generate_series(1, 60000) g",
    );
    psql(
        "INSERT INTO audit_events (outbox_id, event_type, payload, occurred_at) \
         SELECT g, 't', '{}', now() - interval '40 days' + g * interval '1 minute' FROM generate_series(1, 60000) g",
    );
    for statistics in ["as of the empty tables", "after ANALYZE"] {
        if statistics == "after ANALYZE" {
            psql("ANALYZE status_transitions; ANALYZE audit_events; ANALYZE outbox");
        }
        for (table, sql) in [("status_transitions", PURGE_HISTORY), ("audit_events", PURGE_LEDGER)] {
            let sql = sql.replace("$1", "0").replace("$2", "2592000").replace("$3", "5000");
            let plan = psql(&format!("BEGIN; {PURGE_SETTINGS}; EXPLAIN {sql}; ROLLBACK"));
            assert!(!plan.contains(&format!("Seq Scan on {table}")), "{table}, statistics {statistics}:\n{plan}");
            assert!(plan.contains(&format!("{table}_pkey")), "{table}, statistics {statistics}:\n{plan}");
        }
    }
}
