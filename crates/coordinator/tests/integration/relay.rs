//! The relay: batches reach the stream with their outbox ids; an unreachable Redis leaves
//! rows untouched; a refusing Redis costs only the refused rows attempts, then marks them dead.

use std::time::Duration;

use caracal_coordinator::config::RelayConfig;
use caracal_coordinator::metrics::Metrics;
use caracal_coordinator::relay::Relay;
use caracal_store::{NewEvent, outbox, stream};
use caracal_testkit::Redis;

use crate::support;

async fn enqueue(pool: &sqlx::PgPool, n: usize) {
    let mut tx = pool.begin().await.expect("tx");
    for i in 0..n {
        let event = NewEvent {
            event_type: "test.event".into(),
            target: Some("t".into()),
            instance: None,
            payload: serde_json::json!({"i": i}),
        };
        outbox::enqueue(&mut tx, &event).await.expect("enqueue");
    }
    tx.commit().await.expect("commit");
}

async fn relay(pool: &sqlx::PgPool, redis: &Redis) -> Relay {
    relay_with_metrics(pool, redis).await.0
}

async fn relay_with_metrics(pool: &sqlx::PgPool, redis: &Redis) -> (Relay, Metrics) {
    let config = RelayConfig {
        batch: 100,
        backoff_base: Duration::from_millis(1),
        backoff_cap: Duration::from_millis(1),
        max_attempts: 2,
        ..Default::default()
    };
    let mut registry = prometheus_client::registry::Registry::default();
    let metrics = Metrics::register(&mut registry);
    (Relay::new(pool.clone(), support::redis(&redis.url()).await, metrics.clone(), config), metrics)
}

async fn drain(relay: &mut Relay) -> usize {
    let mut total = 0;
    loop {
        match relay.relay_once().await.expect("relay") {
            0 => return total,
            n => total += n,
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn batches_reach_the_stream_with_their_outbox_ids() {
    let pool = support::database(&support::shared().postgres).await;
    let redis = Redis::start_default().expect("redis");
    let (mut relay, metrics) = relay_with_metrics(&pool, &redis).await;
    assert!(metrics.relay_stage_totals().iter().all(|(_, secs)| *secs == 0.0), "nothing timed before work");
    enqueue(&pool, 250).await;
    assert_eq!(drain(&mut relay).await, 250);
    let stages = metrics.relay_stage_totals();
    assert_eq!(stages.iter().map(|(s, _)| *s).collect::<Vec<_>>(), ["claim", "xadd", "commit"]);
    assert!(stages.iter().all(|(_, secs)| *secs > 0.0), "each stage of a batch is timed: {stages:?}");
    let reply = redis.command(&format!("XLEN {}", stream::EVENTS)).expect("xlen");
    assert!(reply.starts_with(":250"), "{reply}");
    let first = redis.command(&format!("XRANGE {} - + COUNT 1", stream::EVENTS)).expect("xrange");
    assert!(first.contains("outbox_id") && first.contains("test.event"), "{first}");
    let undispatched: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox WHERE dispatched_at IS NULL")
        .fetch_one(&pool)
        .await
        .expect("count");
    assert_eq!(undispatched, 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unreachable_redis_spends_no_attempts_and_a_refusing_one_kills_only_the_refused() {
    let pool = support::database(&support::shared().postgres).await;
    let mut redis = Redis::start_default().expect("redis");
    let mut relay = relay(&pool, &redis).await;
    enqueue(&pool, 10).await;

    redis.stop();
    assert!(relay.relay_once().await.is_err(), "no Redis, no relay");
    let (attempts, undispatched): (i64, i64) =
        sqlx::query_as("SELECT sum(attempts)::bigint, count(*) FILTER (WHERE dispatched_at IS NULL) FROM outbox")
            .fetch_one(&pool)
            .await
            .expect("rows");
    assert_eq!((attempts, undispatched), (0, 10), "an outage must not use up attempts");
    redis.start().expect("restart");

    // The stream key holds a string: Redis refuses every XADD with WRONGTYPE.
    redis.command(&format!("SET {} not-a-stream", stream::EVENTS)).expect("set");
    assert_eq!(relay.relay_once().await.expect("relay"), 0);
    let (attempts, dead): (i64, i64) =
        sqlx::query_as("SELECT sum(attempts)::bigint, count(*) FILTER (WHERE dead_at IS NOT NULL) FROM outbox")
            .fetch_one(&pool)
            .await
            .expect("rows");
    assert_eq!((attempts, dead), (10, 0), "one attempt each, not dead yet");
    tokio::time::sleep(Duration::from_millis(50)).await;
    relay.relay_once().await.expect("relay");
    let (dead, error): (i64, Option<String>) =
        sqlx::query_as("SELECT count(*) FILTER (WHERE dead_at IS NOT NULL), max(last_error) FROM outbox")
            .fetch_one(&pool)
            .await
            .expect("rows");
    assert_eq!(dead, 10, "after max_attempts the rows are dead");
    assert!(error.unwrap_or_default().contains("WRONGTYPE"));

    // Healthy again: new rows flow; dead rows stay dead (an alert, not a retry loop).
    redis.command(&format!("DEL {}", stream::EVENTS)).expect("del");
    enqueue(&pool, 3).await;
    assert_eq!(drain(&mut relay).await, 3);
}
