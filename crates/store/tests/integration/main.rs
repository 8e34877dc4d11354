//! caracal-store's integration tests on a real PostgreSQL: migrations, the outbox's
//! transactional guarantees and the plans of its hot queries.

mod batch;
mod retention;
mod schema;

use std::time::Duration;

use caracal_store::ledger;
use caracal_store::outbox::{self, Retry};
use caracal_store::{NewEvent, expected_version};
use caracal_testkit::Postgres;

async fn database(postgres: &Postgres) -> (sqlx::PgPool, String) {
    let url = postgres.fresh_database("store").expect("database");
    let db = url.rsplit('/').next().expect("name").to_string();
    (sqlx::PgPool::connect(&url).await.expect("connect"), db)
}

/// Whether a plan reads the whole outbox (a sequential scan of it; one of the one-row
/// `outbox_floor` is fine).
fn reads_whole_outbox(plan: &str) -> bool {
    plan.lines().any(|l| l.contains("Seq Scan on outbox") && !l.contains("Seq Scan on outbox_floor"))
}

/// A fresh migrated database with an outbox row held by a transaction still open, below a
/// later row that is committed: the open transaction, the held id and the committed id.
async fn a_row_held_below_a_committed_one(
    postgres: &Postgres,
) -> (sqlx::PgPool, sqlx::Transaction<'static, sqlx::Postgres>, i64, i64) {
    let (pool, _) = database(postgres).await;
    caracal_store::migrate(&pool).await.expect("migrate");
    let mut held = pool.begin().await.expect("tx");
    let held_id = outbox::enqueue(&mut held, &event(1)).await.expect("enqueue");
    let mut tx = pool.begin().await.expect("tx");
    let committed = outbox::enqueue(&mut tx, &event(2)).await.expect("enqueue");
    tx.commit().await.expect("commit");
    assert!(committed > held_id);
    (pool, held, held_id, committed)
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
    let a = outbox::claim(&mut first, 3, 0).await.expect("claim");
    let b = outbox::claim(&mut second, 10, 0).await.expect("claim");
    assert_eq!(a.len(), 3);
    assert_eq!(b.len(), 2, "SKIP LOCKED leaves the locked rows to their holder");
    assert!(a.iter().all(|e| b.iter().all(|f| f.id != e.id)));
    assert!(a[0].occurred_at.ends_with('Z'), "times leave as RFC 3339 UTC: {}", a[0].occurred_at);
    first.commit().await.expect("commit: claimed rows are dispatched with it");
    let retry = Retry { base: Duration::from_secs(60), cap: Duration::from_secs(60), max_attempts: 3 };
    assert!(!outbox::record_failure(&mut second, b[0].id, "boom", retry).await.expect("failure"));
    second.commit().await.expect("commit");
    let mut tx = pool.begin().await.expect("tx");
    let due = outbox::claim(&mut tx, 10, 0).await.expect("claim");
    assert!(due.iter().all(|e| e.id != b[0].id), "a failed row waits for its backoff");
    tx.rollback().await.expect("rollback");

    // Created and dispatched two days ago (a row is dispatched after it is created).
    sqlx::query(
        "UPDATE outbox SET created_at = now() - interval '2 days', dispatched_at = now() - interval '2 days' \
         WHERE dispatched_at IS NOT NULL",
    )
    .execute(&pool)
    .await
    .expect("age");
    // Four rows are dispatched (a's three, and b's second with `second`'s commit); only what
    // the ledger holds may go, however old.
    assert_eq!(outbox::purge(&pool, Duration::from_secs(86_400), 100).await.expect("purge"), 0);
    assert_eq!(ledger::insert(&pool, &a).await.expect("ledger"), 3);
    // A batch holding recorded ids (a redelivery) records only the new one and changes none.
    let mut again = vec![a[1].clone(), b[1].clone()];
    again[0].event_type = "changed.on.redelivery".into();
    assert_eq!(ledger::insert(&pool, &again).await.expect("redelivered"), 1);
    assert_eq!(ledger::insert(&pool, &again).await.expect("redelivered twice"), 0);
    let kinds: Vec<String> = sqlx::query_scalar("SELECT event_type FROM audit_events ORDER BY outbox_id")
        .fetch_all(&pool)
        .await
        .expect("ledger rows");
    assert_eq!(kinds.len(), 4);
    assert!(!kinds.iter().any(|k| k == "changed.on.redelivery"), "the first record stands: {kinds:?}");
    sqlx::query("DELETE FROM audit_events WHERE outbox_id = $1").bind(b[1].id).execute(&pool).await.expect("undo");
    assert_eq!(outbox::purge(&pool, Duration::from_secs(86_400), 100).await.expect("purge"), 3);
    let kept: Vec<i64> = sqlx::query_scalar("SELECT id FROM outbox WHERE dispatched_at IS NOT NULL")
        .fetch_all(&pool)
        .await
        .expect("kept");
    assert_eq!(kept, [b[1].id], "the dispatched row missing from the ledger is kept");

    // The checks' figures walk up from the floor and read the dead rows' index, never the
    // dispatched rows kept for the purge.
    postgres
        .psql(&db, "INSERT INTO outbox (event_type, payload, dispatched_at) SELECT 't', '{}', now() FROM generate_series(1, 50000)")
        .expect("fill");
    let last: i64 = sqlx::query_scalar("SELECT max(id) FROM outbox").fetch_one(&pool).await.expect("max");
    // Everything but `b[0]` (waiting for its retry) is dispatched: the floor stops below it.
    assert_eq!(outbox::advance_floor(&pool, last).await.expect("floor"), b[0].id - 1);
    sqlx::query("UPDATE outbox SET dead_at = now() WHERE id = $1").bind(b[0].id).execute(&pool).await.expect("dead");
    assert_eq!(outbox::advance_floor(&pool, last).await.expect("floor"), last, "dead rows do not hold it");
    let mut tx = pool.begin().await.expect("tx");
    for n in 0..3 {
        outbox::enqueue(&mut tx, &event(n)).await.expect("enqueue");
    }
    tx.commit().await.expect("commit");
    let (pending, age, dead) = outbox::figures(&pool).await.expect("figures");
    assert_eq!((pending, dead), (3, 1));
    assert!((0.0..60.0).contains(&age), "{age}");
    // The runbook's re-queue of dead rows lowers the floor below them, so a claim finds them.
    sqlx::query(outbox::REQUEUE_DEAD).execute(&pool).await.expect("requeue");
    assert_eq!(outbox::floor(&pool).await.expect("floor"), b[0].id - 1);
    let mut tx = pool.begin().await.expect("tx");
    let requeued = outbox::claim(&mut tx, 10, 0).await.expect("claim");
    tx.rollback().await.expect("rollback");
    assert_eq!(requeued.first().map(|e| e.id), Some(b[0].id), "{requeued:?}");
    assert_eq!(requeued.len(), 4);
    sqlx::query("UPDATE outbox SET dead_at = now() WHERE id = $1").bind(b[0].id).execute(&pool).await.expect("dead");
    assert_eq!(outbox::advance_floor(&pool, last).await.expect("floor"), last);
    postgres.psql(&db, "ANALYZE outbox").expect("analyze");
    let plan = postgres
        .psql(
            &db,
            &format!(
                // With costs: EXPLAIN reports JIT compilation only then.
                "BEGIN; {}; EXPLAIN (ANALYZE, TIMING OFF) {}; ROLLBACK",
                outbox::FIGURES_SETTINGS,
                outbox::FIGURES
            ),
        )
        .expect("explain");
    assert!(!reads_whole_outbox(&plan), "{plan}");
    assert!(plan.contains("Index Scan using outbox_pkey on outbox"), "{plan}");
    assert!(!plan.contains("JIT"), "nothing compiled for a query this small:\n{plan}");
    assert!(!plan.contains("Rows Removed by Filter"), "only the rows above the floor are read:\n{plan}");
}

/// Marking rows dispatched is a HOT update (rewritten in place on their pages, no index
/// entries): no index names `dispatched_at`, and inserts leave room on each page.
#[tokio::test(flavor = "multi_thread")]
async fn a_claim_marks_its_rows_in_place() {
    let postgres = Postgres::start_default().expect("postgres");
    let (pool, _) = database(&postgres).await;
    caracal_store::migrate(&pool).await.expect("migrate");
    let mut tx = pool.begin().await.expect("tx");
    for n in 0..2_000 {
        outbox::enqueue(&mut tx, &event(n)).await.expect("enqueue");
    }
    tx.commit().await.expect("commit");
    let mut tx = pool.begin().await.expect("tx");
    let claimed = outbox::claim(&mut tx, 2_000, 0).await.expect("claim");
    let (updated, hot): (i64, i64) = sqlx::query_as(
        "SELECT pg_stat_get_xact_tuples_updated('outbox'::regclass), \
                pg_stat_get_xact_tuples_hot_updated('outbox'::regclass)",
    )
    .fetch_one(&mut *tx)
    .await
    .expect("counts");
    tx.commit().await.expect("commit");
    assert_eq!((claimed.len(), updated), (2_000, 2_000));
    assert_eq!(hot, updated, "every mark written in place");
}

/// The floor never passes a row that is not yet committed (ids commit out of order), so a
/// claim walking up from it still finds that row once it commits.
#[tokio::test(flavor = "multi_thread")]
async fn the_floor_waits_for_a_row_committed_after_later_ones() {
    let postgres = Postgres::start_default().expect("postgres");
    let (pool, late, late_id, early_id) = a_row_held_below_a_committed_one(&postgres).await;
    let mut tx = pool.begin().await.expect("tx");
    let claimed = outbox::claim(&mut tx, 10, 0).await.expect("claim");
    tx.commit().await.expect("commit");
    assert_eq!(claimed.iter().map(|e| e.id).collect::<Vec<_>>(), [early_id]);
    // The horizon does not settle past the open transaction's id, however long it is asked.
    let mut horizon = ledger::Horizon::new(Duration::from_millis(10));
    for _ in 0..20 {
        let settled = horizon.observe(ledger::read(&pool).await.expect("read"), std::time::Instant::now());
        assert!(outbox::advance_floor(&pool, settled).await.expect("floor") < late_id);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    late.commit().await.expect("commit");
    let mut tx = pool.begin().await.expect("tx");
    let claimed = outbox::claim(&mut tx, 10, 0).await.expect("claim");
    tx.commit().await.expect("commit");
    assert_eq!(claimed.iter().map(|e| e.id).collect::<Vec<_>>(), [late_id], "found walking up from the floor");
    // Once it settles, the floor passes both.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let settled = horizon.observe(ledger::read(&pool).await.expect("read"), std::time::Instant::now());
        if outbox::advance_floor(&pool, settled).await.expect("floor") == early_id {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the floor did not move up");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The relay's claim and the purge find their rows through indexes, whatever the outbox
/// holds: a plan that reads the whole table costs every batch the outbox's size (an `IN
/// (SELECT ...)` was joined by hashing a sequential scan of it). Planned both before the
/// statistics know the rows (right after a burst) and after `ANALYZE`.
#[tokio::test(flavor = "multi_thread")]
async fn the_claim_and_the_purge_never_read_the_whole_outbox() {
    let postgres = Postgres::start_default().expect("postgres");
    let (pool, db) = database(&postgres).await;
    caracal_store::migrate(&pool).await.expect("migrate");
    let psql = |sql: &str| postgres.psql(&db, sql).expect("psql");
    psql("ANALYZE outbox");
    // Half pending, half dispatched two days ago and recorded: both statements have work.
    psql("INSERT INTO outbox (event_type, payload) SELECT 't', '{}' FROM generate_series(1, 40000)");
    psql(
        "UPDATE outbox SET created_at = now() - interval '2 days', dispatched_at = now() - interval '2 days' WHERE id <= 20000",
    );
    psql(
        "INSERT INTO audit_events (outbox_id, event_type, payload, occurred_at) \
         SELECT id, event_type, payload, created_at FROM outbox WHERE id <= 20000",
    );
    let claim = outbox::CLAIM.replace("$1", "2000").replace("$2", "0");
    let purge = outbox::PURGE.replace("$1", "86400").replace("$2", "10000");
    let walk = outbox::FLOOR_WALK.replace("$1", "0").replace("$2", "40000");
    for statistics in ["as of the empty outbox", "after ANALYZE"] {
        if statistics == "after ANALYZE" {
            psql("ANALYZE outbox");
        }
        // As `claim` runs it: with its `SET LOCAL`s, in a transaction.
        let settings = outbox::CLAIM_SETTINGS;
        let plan = psql(&format!("BEGIN; {settings}; EXPLAIN {claim}; ROLLBACK"));
        assert!(!reads_whole_outbox(&plan), "claim, statistics {statistics}:\n{plan}");
        // And as a prepared statement's generic plan, which knows neither the limit nor where
        // the walk starts (sqlx prepares every statement).
        let plan = psql(&format!(
            "BEGIN; {settings}; SET LOCAL plan_cache_mode = force_generic_plan; \
             PREPARE claim(bigint, bigint) AS {}; EXPLAIN EXECUTE claim(2000, 0); ROLLBACK",
            outbox::CLAIM
        ));
        assert!(!reads_whole_outbox(&plan), "claim, generic plan, statistics {statistics}:\n{plan}");
        let plan = psql(&format!("EXPLAIN {purge}"));
        assert!(!reads_whole_outbox(&plan), "purge, statistics {statistics}:\n{plan}");
        assert!(plan.contains("outbox_created_idx"), "purge, statistics {statistics}:\n{plan}");
        // As `advance_floor` runs it: the first pending row, up the primary key from the floor.
        let plan = psql(&format!(
            "BEGIN; SET LOCAL enable_bitmapscan = off; SET LOCAL enable_sort = off; EXPLAIN {walk}; ROLLBACK"
        ));
        assert!(!reads_whole_outbox(&plan), "floor walk, statistics {statistics}:\n{plan}");
    }
}

/// The ledger's time index is a block-range summary (BRIN), not an entry per row: a recent
/// time range is answered from the ranges that can hold it, the rows found are the ones a
/// full read finds, and the summary is kept up by itself (`autosummarize`).
#[tokio::test(flavor = "multi_thread")]
async fn the_ledger_finds_a_recent_time_range_from_block_summaries() {
    let postgres = Postgres::start_default().expect("postgres");
    let (pool, db) = database(&postgres).await;
    caracal_store::migrate(&pool).await.expect("migrate");
    let psql = |sql: &str| postgres.psql(&db, sql).expect("psql");
    let definition = psql("SELECT pg_get_indexdef('audit_events_occurred_brin'::regclass)");
    assert!(definition.contains("USING brin (occurred_at)"), "{definition}");
    assert!(definition.contains("autosummarize='on'"), "{definition}");
    // 40,000 rows a second apart, in the order they occurred, as the audit writes them; the
    // last at a fixed time, so queries in different sessions (each with its own `now()`) ask
    // for the same rows.
    psql(
        "INSERT INTO audit_events (outbox_id, event_type, payload, occurred_at) \
         SELECT g, 't', '{}', '2026-11-21T14:00:00Z'::timestamptz - (40000 - g) * interval '1 second' \
         FROM generate_series(1, 40000) g",
    );
    psql("SELECT brin_summarize_new_values('audit_events_occurred_brin')");
    psql("ANALYZE audit_events");
    let recent = "FROM audit_events WHERE occurred_at >= '2026-11-21T14:00:00Z'::timestamptz - interval '400 seconds'";
    let plan =
        psql(&format!("SET enable_seqscan = off; EXPLAIN (ANALYZE, COSTS OFF, TIMING OFF) SELECT count(*) {recent}"));
    assert!(plan.contains("Bitmap Index Scan on audit_events_occurred_brin"), "{plan}");
    // Of the table's pages, only the last range or two is read (128 pages each).
    let pages: i64 =
        psql("SELECT relpages FROM pg_class WHERE relname = 'audit_events'").trim().parse().expect("pages");
    let read: i64 = plan
        .lines()
        .find_map(|l| l.trim().strip_prefix("Heap Blocks: lossy="))
        .and_then(|n| n.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no lossy heap blocks in:\n{plan}"));
    assert!(read <= 256 && read * 2 < pages, "read {read} of {pages} pages:\n{plan}");
    let by_index = psql(&format!("SET enable_seqscan = off; SELECT count(*) {recent}"));
    let by_scan = psql(&format!("SET enable_bitmapscan = off; SELECT count(*) {recent}"));
    assert_eq!(by_index, by_scan);
    assert!(by_index.trim().parse::<i64>().expect("count") >= 400, "{by_index}");
}

/// Every value of a batch comes back from the ledger as sent, whatever characters it holds,
/// the time in UTC and the trace as its trace id.
#[tokio::test(flavor = "multi_thread")]
async fn the_ledger_keeps_every_character_of_what_it_records() {
    let postgres = Postgres::start_default().expect("postgres");
    let (pool, _) = database(&postgres).await;
    caracal_store::migrate(&pool).await.expect("migrate");
    let awkward = "tab\there, line\nbreak, cr\r, back\\slash, \\N, \\., \"quoted\", ünïcødé ✓";
    let events = vec![
        caracal_store::Event {
            id: 7,
            event_type: format!("type {awkward}"),
            target: Some(format!("target {awkward}")),
            instance: None,
            payload: serde_json::value::to_raw_value(
                &serde_json::json!({ "text": awkward, "nested": [awkward, null, 1.5] }),
            )
            .expect("json"),
            occurred_at: "2026-12-02T17:30:00.123456+02:00".into(),
            trace_context: Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into()),
        },
        caracal_store::Event {
            id: 8,
            event_type: "plain".into(),
            target: None,
            instance: Some(format!("https://h/{awkward}")),
            payload: serde_json::value::to_raw_value(&serde_json::json!({})).expect("json"),
            occurred_at: "2026-12-02T15:30:00Z".into(),
            trace_context: None,
        },
    ];
    assert_eq!(ledger::insert(&pool, &events).await.expect("ledger"), 2);
    type Row = (i64, String, Option<String>, Option<String>, serde_json::Value, String, Option<String>);
    let rows: Vec<Row> = sqlx::query_as(
        "SELECT outbox_id, event_type, target, instance, payload, \
                to_char(occurred_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"'), trace_id \
         FROM audit_events ORDER BY outbox_id",
    )
    .fetch_all(&pool)
    .await
    .expect("rows");
    let expected: Vec<Row> = vec![
        (
            7,
            events[0].event_type.clone(),
            events[0].target.clone(),
            None,
            serde_json::from_str(events[0].payload.get()).expect("json"),
            "2026-12-02T15:30:00.123456Z".into(),
            Some("4bf92f3577b34da6a3ce929d0e0e4736".into()),
        ),
        (
            8,
            "plain".into(),
            None,
            events[1].instance.clone(),
            serde_json::json!({}),
            "2026-12-02T15:30:00.000000Z".into(),
            None,
        ),
    ];
    assert_eq!(rows, expected);

    // A value PostgreSQL refuses fails the whole batch as a data error, and writes nothing.
    let mut bad = events.clone();
    bad[0].id = 9;
    bad[1].id = 10;
    bad[1].occurred_at = "2026-13-02T15:30:00Z".into();
    let refused = ledger::insert(&pool, &bad).await.expect_err("month 13");
    assert!(ledger::is_data_error(&refused), "{refused:?}");
    let count: i64 = sqlx::query_scalar("SELECT count(*) FROM audit_events").fetch_one(&pool).await.expect("count");
    assert_eq!(count, 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_ledger_gap_is_found_above_the_watermark_and_healed_once() {
    let postgres = Postgres::start_default().expect("postgres");
    let (pool, db) = database(&postgres).await;
    caracal_store::migrate(&pool).await.expect("migrate");
    let grace = Duration::from_secs(30);
    // 200,000 old rows, dispatched and in the ledger.
    postgres
        .psql(
            &db,
            "INSERT INTO outbox (event_type, payload, dispatched_at) \
               SELECT 'old', '{}', now() - interval '1 hour' FROM generate_series(1, 200000); \
             INSERT INTO audit_events (outbox_id, event_type, payload, occurred_at) \
               SELECT id, event_type, payload, created_at FROM outbox",
        )
        .expect("fill");
    let settled: i64 = sqlx::query_scalar("SELECT max(id) FROM outbox").fetch_one(&pool).await.expect("max");
    // Bounded steps: one call moves at most `step` ids.
    assert_eq!(ledger::advance(&pool, settled, 150_000).await.expect("advance"), 150_000);
    assert_eq!(ledger::advance(&pool, settled, 150_000).await.expect("advance"), settled);
    // Then: 7 rows the stream lost (dispatched a minute ago, not in the ledger), 5 in flight
    // (dispatched just now), 3 not yet dispatched, 2 dead.
    postgres
        .psql(
            &db,
            "INSERT INTO outbox (event_type, payload, dispatched_at) SELECT 'lost', jsonb_build_object('n', g), now() - interval '1 minute' FROM generate_series(1, 7) g; \
             INSERT INTO outbox (event_type, payload, dispatched_at) SELECT 'in-flight', '{}', now() FROM generate_series(1, 5); \
             INSERT INTO outbox (event_type, payload) SELECT 'pending', '{}' FROM generate_series(1, 3); \
             INSERT INTO outbox (event_type, payload, dead_at) SELECT 'dead', '{}', now() FROM generate_series(1, 2); \
             ANALYZE outbox; ANALYZE audit_events",
        )
        .expect("faults");
    assert_eq!(ledger::gap(&pool, settled, grace).await.expect("gap"), 7);
    // The gap query reads the rows above the watermark through the primary key and probes the
    // ledger's: it reads neither table whole.
    let query = ledger::GAP_COUNT.replace("$1", &settled.to_string()).replace("$2", "30");
    let plan = postgres.psql(&db, &format!("EXPLAIN {query}")).expect("explain");
    assert!(!plan.contains("Seq Scan"), "{plan}");
    assert!(plan.contains("outbox_pkey") && plan.contains("audit_events_pkey"), "{plan}");

    // A lost row blocks the watermark just below it.
    let all: i64 = sqlx::query_scalar("SELECT max(id) FROM outbox").fetch_one(&pool).await.expect("max");
    assert_eq!(ledger::advance(&pool, all, 1_000_000).await.expect("advance"), settled);

    assert_eq!(ledger::heal(&pool, settled, grace, 5).await.expect("heal"), 5, "healing is bounded per call");
    assert_eq!(ledger::heal(&pool, settled, grace, 100).await.expect("heal"), 2);
    assert_eq!(ledger::gap(&pool, settled, grace).await.expect("gap"), 0);
    let (lost, healed_payloads): (i64, i64) = sqlx::query_as(
        "SELECT count(*), count(*) FILTER (WHERE a.payload = o.payload AND a.occurred_at = o.created_at) \
         FROM audit_events a JOIN outbox o ON o.id = a.outbox_id WHERE o.event_type = 'lost'",
    )
    .fetch_one(&pool)
    .await
    .expect("healed");
    assert_eq!((lost, healed_payloads), (7, 7), "healed rows carry the outbox row's payload and time");
    // The in-flight rows are their consumer's until the grace period passes: they block the
    // watermark, and nothing else does (the dead rows are skipped).
    let in_flight: i64 = sqlx::query_scalar("SELECT min(id) FROM outbox WHERE event_type = 'in-flight'")
        .fetch_one(&pool)
        .await
        .expect("min");
    assert_eq!(ledger::advance(&pool, all, 1_000_000).await.expect("advance"), in_flight - 1);
    postgres
        .psql(
            &db,
            "INSERT INTO audit_events (outbox_id, event_type, payload, occurred_at) \
               SELECT id, event_type, payload, created_at FROM outbox WHERE dispatched_at IS NOT NULL ON CONFLICT DO NOTHING; \
             UPDATE outbox SET dispatched_at = now() WHERE event_type = 'pending'",
        )
        .expect("deliver");
    let pending: i64 = sqlx::query_scalar("SELECT min(id) FROM outbox WHERE event_type = 'pending'")
        .fetch_one(&pool)
        .await
        .expect("min");
    assert_eq!(ledger::advance(&pool, all, 1_000_000).await.expect("advance"), pending - 1);
    let total: i64 = sqlx::query_scalar("SELECT count(*) - count(DISTINCT outbox_id) FROM audit_events")
        .fetch_one(&pool)
        .await
        .expect("dupes");
    assert_eq!(total, 0, "one ledger row per outbox id");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_horizon_never_passes_an_id_an_open_transaction_holds() {
    let postgres = Postgres::start_default().expect("postgres");
    // `held` draws an id and stays open; a later id commits and is visible.
    let (pool, held, held_id, visible) = a_row_held_below_a_committed_one(&postgres).await;

    let mut horizon = ledger::Horizon::new(Duration::ZERO);
    for _ in 0..5 {
        let reading = ledger::read(&pool).await.expect("read");
        assert_eq!(
            horizon.observe(reading, std::time::Instant::now()),
            0,
            "{reading:?}: id {held_id} may still appear"
        );
    }
    held.commit().await.expect("commit");
    let mut settled = 0;
    for _ in 0..5 {
        settled = horizon.observe(ledger::read(&pool).await.expect("read"), std::time::Instant::now());
    }
    assert_eq!(settled, visible, "once the holder ended, every id up to the one read is final");
}

/// A fresh migrated database holding target `shop` with instances `http://a/1`, `/2` and
/// `/3`, then `statuses` (SQL); its server (stopped when dropped), pool and the instance ids
/// in URL order.
async fn shop(statuses: &str) -> (Postgres, sqlx::PgPool, Vec<i64>) {
    let postgres = Postgres::start_default().expect("postgres");
    let (pool, db) = database(&postgres).await;
    caracal_store::migrate(&pool).await.expect("migrate");
    let seed = format!(
        "INSERT INTO targets (name, health_path, ready_path, metrics_path, interval_ms, timeout_ms) \
         VALUES ('shop', '/health', '/ready', '/metrics', 1000, 500); \
         INSERT INTO instances (target_id, url) SELECT id, 'http://a/' || g FROM targets, generate_series(1, 3) g; \
         {statuses}"
    );
    postgres.psql(&db, &seed).expect("seed");
    let ids: Vec<i64> =
        sqlx::query_scalar("SELECT id FROM instances ORDER BY url").fetch_all(&pool).await.expect("ids");
    (postgres, pool, ids)
}

/// What is recorded for many instances comes back in one query, keyed by instance; an
/// instance with nothing recorded is left out (and reads as `unknown` one at a time).
#[tokio::test(flavor = "multi_thread")]
async fn recorded_statuses_read_in_bulk() {
    use caracal_store::status::{self, Recorded, Status};
    let (_postgres, pool, ids) = shop(
        "INSERT INTO instance_status (instance_id, status, degraded) \
           SELECT id, CASE WHEN url = 'http://a/1' THEN 'up' ELSE 'degraded' END, \
                  '{\"reason\": \"latency\", \"detail\": \"slow\"}'::jsonb \
           FROM instances WHERE url <> 'http://a/3'",
    )
    .await;
    let all = status::recorded_many(&pool, &ids).await.expect("bulk");
    assert_eq!(all.len(), 2, "{all:?}");
    assert_eq!(all[&ids[0]].status, Status::Up);
    assert_eq!(all[&ids[0]].verdict, None);
    assert_eq!(all[&ids[1]].status, Status::Degraded);
    assert_eq!(all[&ids[1]].verdict.as_ref().map(|v| v.detail.as_str()), Some("slow"));
    assert_eq!(status::recorded(&pool, ids[2]).await.expect("one"), Recorded::NONE);
    assert_eq!(status::recorded(&pool, ids[1]).await.expect("one"), all[&ids[1]]);
}

/// Status changes written together (`status::record_many`) are each judged alone (one whose
/// stored status moved on writes nothing), are committed together, and a group with a failing
/// change writes nothing of any.
#[tokio::test(flavor = "multi_thread")]
async fn status_changes_in_one_transaction_are_each_judged_alone() {
    use caracal_store::status::{self, Change, Status};
    let (_postgres, pool, ids) = shop(
        "INSERT INTO instance_status (instance_id, status) \
           SELECT id, CASE WHEN url = 'http://a/1' THEN 'up' ELSE 'degraded' END FROM instances WHERE url <> 'http://a/3'",
    )
    .await;
    let change = |n: usize, from: Status, to: Status| Change {
        instance_id: ids[n],
        target: "shop",
        instance: ["http://a/1", "http://a/2", "http://a/3"][n],
        from,
        to,
        error: (to == Status::Down).then_some("/health answered 503"),
        verdict: None,
    };
    let changes = [
        change(0, Status::Up, Status::Down),
        // Stored is `degraded`: another replica moved it on; nothing of this one is written.
        change(1, Status::Up, Status::Down),
        change(2, Status::Unknown, Status::Up),
    ];
    assert_eq!(status::record_many(&pool, &changes).await.expect("group"), [true, false, true]);
    let stored: Vec<(String, String, Option<String>)> = sqlx::query_as(
        "SELECT i.url, s.status, s.last_error FROM instance_status s JOIN instances i ON i.id = s.instance_id ORDER BY i.url",
    )
    .fetch_all(&pool)
    .await
    .expect("statuses");
    let expected = [
        ("http://a/1", "down", Some("/health answered 503")),
        ("http://a/2", "degraded", None),
        ("http://a/3", "up", None),
    ];
    let expected: Vec<(String, String, Option<String>)> =
        expected.iter().map(|(u, s, e)| (u.to_string(), s.to_string(), e.map(str::to_string))).collect();
    assert_eq!(stored, expected);
    let history: Vec<(String, String, String)> =
        sqlx::query_as("SELECT instance_url, from_status, to_status FROM status_transitions ORDER BY id")
            .fetch_all(&pool)
            .await
            .expect("history");
    let expected = [("http://a/1", "up", "down"), ("http://a/3", "unknown", "up")];
    assert_eq!(history, expected.map(|(u, f, t)| (u.to_string(), f.to_string(), t.to_string())));
    let events: Vec<Option<String>> =
        sqlx::query_scalar("SELECT instance FROM outbox WHERE event_type = 'instance.status_changed' ORDER BY id")
            .fetch_all(&pool)
            .await
            .expect("events");
    assert_eq!(events, [Some("http://a/1".to_string()), Some("http://a/3".to_string())]);

    // An instance that is gone fails its statement: the whole group writes nothing.
    let mut gone = change(1, Status::Degraded, Status::Up);
    gone.instance_id = -1;
    let group = [change(0, Status::Down, Status::Up), gone];
    assert!(status::record_many(&pool, &group).await.is_err());
    let after: i64 =
        sqlx::query_scalar("SELECT count(*) FROM status_transitions").fetch_one(&pool).await.expect("count");
    assert_eq!(after, 2, "nothing of a failed group is written");
    assert_eq!(status::recorded(&pool, ids[0]).await.expect("one").status, Status::Down);
}

/// A follower's read of the targets a change named goes through the indexes even as a
/// prepared statement's generic plan (what sqlx runs after a few executions), with statistics
/// old or fresh: one change costs what it names, not the fleet.
#[tokio::test(flavor = "multi_thread")]
async fn a_read_of_named_targets_never_scans_the_fleet() {
    use caracal_store::registry::{self, Filter};
    let postgres = Postgres::start_default().expect("postgres");
    let (pool, db) = database(&postgres).await;
    caracal_store::migrate(&pool).await.expect("migrate");
    let psql = |sql: &str| postgres.psql(&db, sql).expect("psql");
    // Statistics from when the tables were empty (a fleet that grew since autovacuum last
    // looked), then fresh ones.
    psql("ANALYZE targets; ANALYZE instances; ANALYZE discovery_status");
    psql(
        "INSERT INTO targets (name, health_path, ready_path, metrics_path, interval_ms, timeout_ms) \
         SELECT 't-' || g, '/health', '/ready', '/metrics', 5000, 1000 FROM generate_series(1, 20000) g; \
         INSERT INTO instances (target_id, url) SELECT id, 'http://h/' || id || '/' || n FROM targets, generate_series(1, 2) n; \
         INSERT INTO instance_status (instance_id, status) SELECT id, 'up' FROM instances",
    );
    for statistics in ["as of the empty tables", "after ANALYZE"] {
        if statistics == "after ANALYZE" {
            psql("ANALYZE");
        }
        // A new owner's read of its instances' recorded statuses: a lookup per id, too.
        let plan = psql(&format!(
            "SET plan_cache_mode = force_generic_plan; PREPARE recorded(bigint[]) AS {}; \
             EXPLAIN EXECUTE recorded(ARRAY[7, 39999]::bigint[])",
            caracal_store::status::RECORDED_MANY
        ));
        assert!(
            !plan.contains("Seq Scan on instance_status") && plan.contains("Index Cond: (instance_id = asked.id)"),
            "statistics {statistics}:\n{plan}"
        );
        let plan = psql(&format!(
            "SET plan_cache_mode = force_generic_plan; PREPARE named(text[], text) AS {}; \
             EXPLAIN EXECUTE named(ARRAY['t-7', 't-19999'], 'probed')",
            registry::READ_NAMED
        ));
        // (`discovery_status`, one row per discovered target, may be read whole while empty.)
        let whole = plan.contains("Seq Scan on targets") || plan.contains("Seq Scan on instances");
        assert!(!whole && plan.contains("Index Cond: (target_id = t.id)"), "statistics {statistics}:\n{plan}");
    }
    let some: Vec<i64> =
        sqlx::query_scalar("SELECT id FROM instances ORDER BY id LIMIT 3").fetch_all(&pool).await.expect("ids");
    let asked = [some[0], some[2], -1];
    let recorded = caracal_store::status::recorded_many(&pool, &asked).await.expect("recorded");
    assert_eq!(recorded.len(), 2, "the two that have a status; none for an unknown id");
    assert!(recorded.values().all(|r| r.status == caracal_store::status::Status::Up));
    let named = ["t-7".to_string(), "t-19999".to_string()];
    let read = registry::read(&pool, Some(&named), Filter::Probed).await.expect("read");
    assert_eq!(read.iter().map(|r| r.spec.name.as_str()).collect::<Vec<_>>(), ["t-19999", "t-7"]);
    let all = registry::read(&pool, None, Filter::Probed).await.expect("read");
    assert_eq!(all.len(), 20_000);
    // Both reads say the same of a target: its instances (ids and URLs, in URL order) and all.
    let whole = |name: &str| {
        let r = all.iter().find(|r| r.spec.name == name).expect("read whole");
        (r.id, r.spec.instances.clone(), r.instance_ids.clone(), r.paused, r.empty_streak)
    };
    for r in &read {
        assert_eq!(
            (r.id, r.spec.instances.clone(), r.instance_ids.clone(), r.paused, r.empty_streak),
            whole(&r.spec.name)
        );
        assert_eq!(r.spec.instances.len(), 2);
    }
}
