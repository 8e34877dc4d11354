//! The event pipeline end to end: a target's readiness flips, the coordinator records the
//! transition, the relay publishes it, the audit ledger holds it exactly once; and 5,000 events
//! survive a Redis restart and an audit crash with neither loss nor duplicate.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::Router;
use axum::http::StatusCode;
use axum::routing::get;
use caracal_testkit::Signal;

use crate::support::{self, Stores};

const API: &str = env!("CARGO_BIN_EXE_caracal-api");
const COORDINATOR: &str = env!("CARGO_BIN_EXE_caracal-coordinator");
const AUDIT: &str = env!("CARGO_BIN_EXE_caracal-audit");

/// A watched service whose `/ready` the test flips.
async fn watched(ready: Arc<AtomicBool>) -> String {
    let app = Router::new().route("/health", get(|| async { "ok" })).route(
        "/ready",
        get(move || {
            let ready = Arc::clone(&ready);
            async move { if ready.load(Ordering::SeqCst) { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE } }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://{addr}")
}

#[tokio::test(flavor = "multi_thread")]
async fn a_readiness_flip_is_recorded_once_and_reaches_the_ledger_once() {
    let stores = Stores::start();
    support::migrate(&stores);
    let api = support::start(API, &stores, &[]).await;
    let coordinator = support::start(COORDINATOR, &stores, &[("CARACAL_COORDINATOR__REFRESH", "300ms")]).await;
    let audit = support::start(AUDIT, &stores, &[("CARACAL_AUDIT__BLOCK", "200ms")]).await;
    let ready = Arc::new(AtomicBool::new(true));
    let shop = watched(Arc::clone(&ready)).await;
    let http = reqwest::Client::new();

    let created = http
        .post(format!("{}/v1/targets", api.base))
        .json(&serde_json::json!({"name": "shop", "instances": [shop], "interval_ms": 200, "timeout_ms": 150}))
        .send()
        .await
        .expect("register");
    assert_eq!(created.status(), 201);

    let status_of = |want: &'static str| {
        let http = http.clone();
        let url = format!("{}/v1/status", api.base);
        async move {
            caracal_testkit::wait_for(Duration::from_secs(20), Duration::from_millis(100), || async {
                let body: serde_json::Value = http.get(&url).send().await.ok()?.json().await.ok()?;
                (body["instances"][0]["status"] == want).then_some(body)
            })
            .await
        }
    };
    status_of("up").await.expect("the coordinator sees the instance up");
    ready.store(false, Ordering::SeqCst);
    let body = status_of("unready").await.expect("the coordinator records the flip");
    assert!(body["instances"][0]["last_error"].as_str().unwrap_or("").contains("/ready answered 503"), "{body}");

    let history: serde_json::Value = http
        .get(format!("{}/v1/targets/shop/history", api.base))
        .send()
        .await
        .expect("history")
        .json()
        .await
        .expect("json");
    let transitions = history["transitions"].as_array().expect("transitions");
    assert_eq!(transitions.len(), 2, "unknown->up, then up->unready: {history}");
    assert_eq!((transitions[0]["from"].as_str(), transitions[0]["to"].as_str()), (Some("up"), Some("unready")));

    // The ledger holds every status event of the outbox, once.
    let events_url = format!("{}/v1/events?target=shop&type=instance.status_changed", audit.base);
    let events = caracal_testkit::wait_for(Duration::from_secs(20), Duration::from_millis(100), || async {
        let body: serde_json::Value = http.get(&events_url).send().await.ok()?.json().await.ok()?;
        (body["events"].as_array()?.len() >= 2).then_some(body)
    })
    .await
    .expect("both transitions reach the ledger");
    let events = events["events"].as_array().expect("events").clone();
    assert_eq!(events.len(), 2, "{events:?}");
    assert_eq!(events[1]["payload"]["to"], "unready");
    assert_eq!(events[1]["instance"], shop);
    let pool = stores.pool().await;
    let (outbox, ledger, matched): (i64, i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM outbox WHERE event_type = 'instance.status_changed'), \
                (SELECT count(*) FROM audit_events WHERE event_type = 'instance.status_changed'), \
                (SELECT count(*) FROM outbox o JOIN audit_events a ON a.outbox_id = o.id WHERE o.event_type = 'instance.status_changed')",
    )
    .fetch_one(&pool)
    .await
    .expect("counts");
    assert_eq!((outbox, ledger, matched), (2, 2, 2));

    for service in [api, coordinator, audit] {
        service.stop();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn five_thousand_events_survive_a_redis_restart_and_an_audit_crash_exactly_once() {
    const EVENTS: i64 = 5_000;
    let mut stores = Stores::start();
    support::migrate(&stores);
    let fast_relay = [
        ("CARACAL_COORDINATOR__RELAY__BACKOFF_BASE", "100ms"),
        ("CARACAL_COORDINATOR__RELAY__BACKOFF_CAP", "500ms"),
        ("CARACAL_COORDINATOR__RELAY__IDLE_WAIT", "20ms"),
    ];
    let coordinator = support::start(COORDINATOR, &stores, &fast_relay).await;
    let audit_env = [("CARACAL_AUDIT__BLOCK", "200ms"), ("CARACAL_AUDIT__CLAIM_IDLE", "1s")];
    let mut audit = support::start(AUDIT, &stores, &audit_env).await;
    let pool = stores.pool().await;
    let insert = |n: i64| {
        let pool = pool.clone();
        async move {
            sqlx::query(
                "INSERT INTO outbox (event_type, target, payload) \
                 SELECT 'load.test', 'load', jsonb_build_object('n', g) FROM generate_series(1, $1) g",
            )
            .bind(n)
            .execute(&pool)
            .await
            .expect("insert events");
        }
    };

    // 1,000 + 1,000 while Redis is down + 2,000 + 1,000 while the ledger is down = 5,000.
    for _ in 0..5 {
        insert(EVENTS / 25).await;
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    // Redis goes away while events keep coming.
    stores.redis.stop();
    insert(EVENTS / 5).await;
    // Longer than the connection's own reconnect attempts, so the relay must back off.
    tokio::time::sleep(Duration::from_secs(4)).await;
    stores.redis.start().expect("restart redis");
    for _ in 0..10 {
        insert(EVENTS / 25).await;
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    // The ledger crashes mid-stream (no chance to acknowledge) and comes back.
    audit.process.signal(Signal::SIGKILL);
    insert(EVENTS / 5).await;
    audit = support::start(AUDIT, &stores, &audit_env).await;

    let done = caracal_testkit::wait_for(Duration::from_secs(90), Duration::from_millis(250), || async {
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM audit_events").fetch_one(&pool).await.ok()?;
        (n >= EVENTS).then_some(n)
    })
    .await;
    let (ledger, distinct, missing, undispatched, dead): (i64, i64, i64, i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM audit_events), (SELECT count(DISTINCT outbox_id) FROM audit_events), \
                (SELECT count(*) FROM outbox o WHERE NOT EXISTS (SELECT 1 FROM audit_events a WHERE a.outbox_id = o.id)), \
                (SELECT count(*) FROM outbox WHERE dispatched_at IS NULL), (SELECT count(*) FROM outbox WHERE dead_at IS NOT NULL)",
    )
    .fetch_one(&pool)
    .await
    .expect("counts");
    assert!(done.is_ok(), "ledger has {ledger} of {EVENTS}; audit stderr:\n{}", audit.process.stderr());
    assert_eq!(
        (ledger, distinct, missing, undispatched, dead),
        (EVENTS, EVENTS, 0, 0, 0),
        "each event exactly once, none lost"
    );
    // The outage really reached the relay (it backed off and retried, losing nothing).
    let metrics =
        reqwest::get(format!("{}/metrics", coordinator.base)).await.expect("scrape").text().await.expect("text");
    let failures: f64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("caracal_coordinator_relay_failures_total "))
        .and_then(|v| v.parse().ok())
        .expect("relay failure counter");
    assert!(failures >= 1.0, "the relay saw the Redis outage");
    coordinator.stop();
    audit.stop();
}
