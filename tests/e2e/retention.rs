//! Retention under a flapping fleet: the built coordinator and audit binaries record a
//! transition about every 20 ms for two minutes under retentions of seconds. The history and
//! the ledger stay bounded, every event inside the horizon is in the ledger exactly once, and
//! PostgreSQL itself reports every lock wait longer than 10 ms (`log_lock_waits` with
//! `deadlock_timeout = 10ms`): there is none.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::extract::Path;
use axum::http::StatusCode;
use axum::routing::get;
use caracal_store::registry::{self, Writer};
use caracal_store::target::TargetSpec;

use crate::support::{self, Stores, metric};

const COORDINATOR: &str = env!("CARGO_BIN_EXE_caracal-coordinator");
const AUDIT: &str = env!("CARGO_BIN_EXE_caracal-audit");

/// Instances, each flipping between ready and unready every [`FLIP`].
const INSTANCES: u32 = 16;
const FLIP: Duration = Duration::from_millis(350);
/// How long the fleet flaps.
const RUN: Duration = Duration::from_secs(120);
/// The retentions: the outbox's (purged every second), the history's and the ledger's (never
/// shorter than the outbox's: a ledger row is purged only once its outbox row is gone).
const OUTBOX_KEEP: &str = "3s";
const HISTORY_KEEP_SECS: f64 = 6.0;
const LEDGER_KEEP_SECS: f64 = 8.0;

fn unix_ms() -> u128 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis())
}

/// `/i/{n}/ready` answers 200 and 503 in turns of [`FLIP`], each instance out of phase, until
/// `calm` is set.
async fn flapping_fleet(calm: Arc<AtomicBool>) -> String {
    let app = Router::new().route("/i/{n}/health", get(|| async { "ok" })).route(
        "/i/{n}/ready",
        get(move |Path(n): Path<u32>| async move {
            let turn = (unix_ms() + u128::from(n) * 37) / FLIP.as_millis();
            if calm.load(Ordering::Relaxed) || turn.is_multiple_of(2) {
                StatusCode::OK
            } else {
                StatusCode::SERVICE_UNAVAILABLE
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let base = format!("http://{}", listener.local_addr().expect("addr"));
    tokio::spawn(async move { axum::serve(listener, app).await });
    base
}

fn log_len(stores: &Stores) -> usize {
    std::fs::read(stores.postgres.log_path()).map_or(0, |l| l.len())
}

fn log_since(stores: &Stores, start: usize) -> String {
    let log = std::fs::read(stores.postgres.log_path()).unwrap_or_default();
    String::from_utf8_lossy(&log[start.min(log.len())..]).into_owned()
}

async fn count(pool: &sqlx::PgPool, sql: &'static str) -> i64 {
    sqlx::query_scalar(sql).fetch_one(pool).await.expect(sql)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flapping_fleet_under_a_short_retention_stays_bounded_and_the_ledger_exact() {
    let stores = Stores::start();
    support::migrate(&stores);
    let pool = stores.pool().await;
    // Every lock wait longer than 10 ms is written to the server's log, by PostgreSQL itself.
    let database = stores.database_url.rsplit('/').next().expect("database name").to_string();
    stores
        .postgres
        .psql(
            "postgres",
            &format!("ALTER DATABASE \"{database}\" SET log_lock_waits = on; ALTER DATABASE \"{database}\" SET deadlock_timeout = '10ms';"),
        )
        .expect("lock-wait logging");
    // The detector can fail: a 100 ms row lock held against another session is reported.
    let before = log_len(&stores);
    sqlx::query("CREATE TABLE lock_probe (id int PRIMARY KEY)").execute(&pool).await.expect("table");
    sqlx::query("INSERT INTO lock_probe VALUES (1)").execute(&pool).await.expect("row");
    let mut holder = pool.begin().await.expect("begin");
    sqlx::query("UPDATE lock_probe SET id = 1").execute(&mut *holder).await.expect("hold");
    let waiter = tokio::spawn({
        let pool = stores.pool().await;
        async move { sqlx::query("UPDATE lock_probe SET id = 1").execute(&pool).await.expect("wait") }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    holder.commit().await.expect("release");
    waiter.await.expect("waiter");
    let seen = caracal_testkit::wait_for(Duration::from_secs(5), Duration::from_millis(50), || async {
        log_since(&stores, before).contains("still waiting for").then_some(())
    })
    .await;
    assert!(seen.is_ok(), "PostgreSQL did not report a 100 ms lock wait");
    let log_start = log_len(&stores);

    let calm = Arc::new(AtomicBool::new(false));
    let base = flapping_fleet(Arc::clone(&calm)).await;
    for n in 0..INSTANCES {
        let spec: TargetSpec = serde_json::from_value(serde_json::json!({
            "name": format!("flap-{n}"),
            "instances": [format!("{base}/i/{n}")],
            "interval_ms": 100,
            "timeout_ms": 1000,
        }))
        .expect("spec");
        registry::create(&pool, &spec, &Writer::Api).await.expect("register");
    }
    let history_keep = format!("{HISTORY_KEEP_SECS}s");
    let coordinator = support::start(
        COORDINATOR,
        &stores,
        &[
            ("CARACAL_COORDINATOR__REFRESH", "500ms"),
            ("CARACAL_COORDINATOR__FAILURE_THRESHOLD", "1"),
            ("CARACAL_COORDINATOR__SUCCESS_THRESHOLD", "1"),
            ("CARACAL_COORDINATOR__RELAY__RETENTION", OUTBOX_KEEP),
            ("CARACAL_COORDINATOR__RELAY__PURGE_EVERY", "1s"),
            ("CARACAL_STORE__RETENTION__HISTORY", &history_keep),
            ("CARACAL_STORE__RETENTION__EVERY", "1s"),
            ("CARACAL_STORE__RETENTION__BATCH", "500"),
        ],
    )
    .await;
    let ledger_keep = format!("{LEDGER_KEEP_SECS}s");
    let audit = support::start(
        AUDIT,
        &stores,
        &[
            ("CARACAL_AUDIT__BLOCK", "200ms"),
            ("CARACAL_AUDIT__LEDGER__GRACE", "2s"),
            ("CARACAL_AUDIT__LEDGER__INTERVAL", "1s"),
            ("CARACAL_COORDINATOR__RELAY__RETENTION", OUTBOX_KEEP),
            ("CARACAL_AUDIT__RETENTION", &ledger_keep),
            ("CARACAL_STORE__RETENTION__EVERY", "1s"),
            ("CARACAL_STORE__RETENTION__BATCH", "500"),
        ],
    )
    .await;

    // Sample both tables' sizes while the fleet flaps.
    let started = Instant::now();
    let mut samples: Vec<(f64, i64, i64)> = Vec::new();
    while started.elapsed() < RUN {
        tokio::time::sleep(Duration::from_secs(2)).await;
        let history = count(&pool, "SELECT count(*) FROM status_transitions").await;
        let ledger = count(&pool, "SELECT count(*) FROM audit_events").await;
        samples.push((started.elapsed().as_secs_f64(), history, ledger));
    }
    let written = metric(&coordinator.base, "caracal_coordinator_transitions_total").await.unwrap_or(0.0);
    let purged_history = metric(&coordinator.base, "caracal_retention_rows_purged_total").await.unwrap_or(0.0);
    let purged_ledger = metric(&audit.base, "caracal_retention_rows_purged_total").await.unwrap_or(0.0);
    let history_age = metric(&coordinator.base, "caracal_retention_oldest_row_age_seconds").await.unwrap_or(-1.0);
    let ledger_age = metric(&audit.base, "caracal_retention_oldest_row_age_seconds").await.unwrap_or(-1.0);

    // Calm the fleet and let the pipeline drain (purge rounds go on), then stop both so the
    // tables hold still while they are compared.
    calm.store(true, Ordering::Relaxed);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let drained = caracal_testkit::wait_for(Duration::from_secs(30), Duration::from_millis(100), || async {
        let pending = count(
            &pool,
            "SELECT count(*) FROM outbox o WHERE NOT EXISTS (SELECT 1 FROM audit_events a WHERE a.outbox_id = o.id)",
        )
        .await;
        (pending == 0).then_some(())
    })
    .await;
    assert!(drained.is_ok(), "the ledger never caught up with the outbox");
    coordinator.stop();
    audit.stop();

    let rate = written / RUN.as_secs_f64();
    eprintln!(
        "retention: {written} transitions in {:.0} s ({rate:.0}/s); purged {purged_history} history and {purged_ledger} \
         ledger rows; oldest history row {history_age:.1} s, ledger {ledger_age:.1} s; samples (s, history, ledger): {samples:?}",
        RUN.as_secs_f64()
    );
    assert!(written > 3_000.0, "the fleet flapped too little to mean anything: {written} transitions");
    assert!(purged_history > 0.0 && purged_ledger > 0.0, "both purges ran");
    // Bounded: once past the retention, each table holds about `rate × (retention + a round
    // + the relay's lag)` rows, never what was written.
    let steady = samples.iter().filter(|(t, _, _)| *t > 30.0);
    for (t, history, ledger) in steady {
        let history_bound = rate * (HISTORY_KEEP_SECS + 6.0);
        // The ledger also holds the registrations and every other event type; they are few.
        let ledger_bound = rate * (LEDGER_KEEP_SECS + 6.0) + 200.0;
        assert!(
            (*history as f64) < history_bound,
            "at {t:.0} s the history held {history} rows (bound {history_bound:.0})"
        );
        assert!((*ledger as f64) < ledger_bound, "at {t:.0} s the ledger held {ledger} rows (bound {ledger_bound:.0})");
    }
    assert!(history_age < HISTORY_KEEP_SECS + 5.0, "the history's oldest row was {history_age} s old");
    assert!(ledger_age < LEDGER_KEEP_SECS + 5.0, "the ledger's oldest row was {ledger_age} s old");

    // Exactly once inside the horizon: from the later of the two tables' oldest rows on, every
    // transition has one `instance.status_changed` ledger row (same instance, statuses and
    // time, which the outbox row took from the same transaction) and every such row one
    // transition.
    type Key = (String, String, String, String, String);
    let history: Vec<Key> = sqlx::query_as(
        "SELECT target_name, instance_url, from_status, to_status, occurred_at::text FROM status_transitions \
         WHERE occurred_at >= greatest((SELECT min(occurred_at) FROM status_transitions), \
                                       (SELECT min(occurred_at) FROM audit_events))",
    )
    .fetch_all(&pool)
    .await
    .expect("history");
    let ledger: Vec<Key> = sqlx::query_as(
        "SELECT target, instance, payload->>'from', payload->>'to', occurred_at::text FROM audit_events \
         WHERE event_type = 'instance.status_changed' \
           AND occurred_at >= greatest((SELECT min(occurred_at) FROM status_transitions), \
                                       (SELECT min(occurred_at) FROM audit_events))",
    )
    .fetch_all(&pool)
    .await
    .expect("ledger");
    assert!(history.len() > 100, "a horizon's worth of history: {}", history.len());
    let mut seen: HashMap<&Key, (usize, usize)> = HashMap::new();
    for key in &history {
        seen.entry(key).or_default().0 += 1;
    }
    for key in &ledger {
        seen.entry(key).or_default().1 += 1;
    }
    let wrong: Vec<_> = seen.iter().filter(|(_, (h, l))| h != l).take(5).collect();
    assert!(wrong.is_empty(), "transitions and ledger rows differ inside the horizon: {wrong:?}");
    let duplicates = count(&pool, "SELECT count(*) - count(DISTINCT outbox_id) FROM audit_events").await;
    assert_eq!(duplicates, 0);

    // No session waited on a lock for more than 10 ms in two minutes of purging.
    let log = log_since(&stores, log_start);
    let waits: Vec<&str> = log.lines().filter(|l| l.contains("still waiting for")).collect();
    assert!(waits.is_empty(), "lock waits over 10 ms:\n{}", waits.join("\n"));
}
