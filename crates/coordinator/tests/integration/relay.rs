//! The relay: batches reach the stream with their outbox ids; an unreachable Redis leaves
//! rows untouched; a refusing Redis costs only the refused rows attempts, then marks them dead.

use std::time::Duration;

use caracal_coordinator::config::RelayConfig;
use caracal_coordinator::metrics::Metrics;
use caracal_coordinator::relay::Relay;
use caracal_store::{NewEvent, outbox, stream};
use caracal_testkit::Redis;
use caracal_testkit::redis::RedisBuilder;

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

/// Rows still undispatched, as any other session sees them (marks in an open claim are not
/// committed yet), and how many of them another relay could claim now (rows a claim holds are
/// locked).
async fn pending_and_claimable(pool: &sqlx::PgPool) -> (i64, i64) {
    let mut tx = pool.begin().await.expect("tx");
    let counts = sqlx::query_as(
        "SELECT (SELECT count(*) FROM outbox WHERE dispatched_at IS NULL), \
                (SELECT count(*) FROM (SELECT id FROM outbox WHERE dispatched_at IS NULL FOR UPDATE SKIP LOCKED) s)",
    )
    .fetch_one(&mut *tx)
    .await
    .expect("counts");
    tx.rollback().await.expect("rollback");
    counts
}

#[tokio::test(flavor = "multi_thread")]
async fn a_backlog_is_claimed_ahead_sent_in_order_once_each_and_an_outage_rolls_the_claim_back() {
    let pool = support::database(&support::shared().postgres).await;
    // Persistent, so the stream still holds the first batch after the restart below.
    let mut redis = RedisBuilder::default().persistent(true).start().expect("redis");
    let mut relay = relay(&pool, &redis).await; // batches of 100
    enqueue(&pool, 1_050).await;

    let mut ahead = None;
    assert_eq!(relay.relay_ahead(&mut ahead).await.expect("relay"), 100);
    assert!(ahead.is_some(), "a full batch claims the next one while it is sent");
    assert_eq!(
        pending_and_claimable(&pool).await,
        (950, 850),
        "the batch claimed ahead is held by its open transaction, not yet marked for anyone else"
    );

    // Redis goes away: the send fails, and what was claimed ahead is rolled back with it.
    redis.stop();
    assert!(relay.relay_ahead(&mut ahead).await.is_err(), "no Redis, no relay");
    assert!(ahead.is_none(), "nothing stays claimed after a failure");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    // A dropped transaction's rollback reaches PostgreSQL when its connection goes back to
    // the pool, a moment later.
    while pending_and_claimable(&pool).await != (950, 950) {
        assert!(std::time::Instant::now() < deadline, "the claims were not rolled back");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let attempts: i64 =
        sqlx::query_scalar("SELECT sum(attempts)::bigint FROM outbox").fetch_one(&pool).await.expect("sum");
    assert_eq!(attempts, 0, "an outage must not use up attempts");
    redis.start().expect("restart");

    // The rest goes out in claim order, each row once.
    let mut sent = 100;
    loop {
        match relay.relay_ahead(&mut ahead).await.expect("relay") {
            0 => break,
            n => sent += n,
        }
    }
    assert_eq!(sent, 1_050);
    assert_eq!(pending_and_claimable(&pool).await, (0, 0));
    let mut conn = support::redis(&redis.url()).await;
    let entries: redis::streams::StreamRangeReply =
        redis::cmd("XRANGE").arg(stream::EVENTS).arg("-").arg("+").query_async(&mut conn).await.expect("xrange");
    let ids: Vec<i64> = entries
        .ids
        .iter()
        .map(|entry| entry.get::<String>("outbox_id").expect("outbox_id").parse().expect("an id"))
        .collect();
    assert_eq!(ids.len(), 1_050, "each row once");
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "batches reach the stream in claim order");
}

async fn drain_ahead(relay: &mut Relay, ahead: &mut Option<caracal_coordinator::relay::Claimed>) -> usize {
    let mut total = 0;
    loop {
        match relay.relay_ahead(ahead).await.expect("relay") {
            0 => return total,
            n => total += n,
        }
    }
}

/// An outbox row enqueued in a transaction left open (committed by the caller, later): the
/// transaction and the row's id.
async fn hold_a_row(pool: &sqlx::PgPool) -> (sqlx::Transaction<'static, sqlx::Postgres>, i64) {
    let mut late = pool.begin().await.expect("tx");
    let event = NewEvent { event_type: "late".into(), target: None, instance: None, payload: serde_json::json!({}) };
    let id = outbox::enqueue(&mut late, &event).await.expect("enqueue");
    (late, id)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_row_that_commits_after_later_ones_is_relayed_and_the_floor_waits_for_it() {
    let pool = support::database(&support::shared().postgres).await;
    let redis = Redis::start_default().expect("redis");
    let mut relay = relay(&pool, &redis).await; // batches of 100
    let (late, late_id) = hold_a_row(&pool).await;
    enqueue(&pool, 250).await;
    let mut ahead = None;
    assert_eq!(drain_ahead(&mut relay, &mut ahead).await, 250, "the backlog goes out around the open row");
    // Moved up every so often, the floor stays below the row its transaction still holds.
    for _ in 0..8 {
        assert!(relay.advance_floor().await.expect("floor") < late_id);
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    late.commit().await.expect("commit");
    assert_eq!(drain_ahead(&mut relay, &mut ahead).await, 1, "found walking up from the floor");
    let last: i64 = sqlx::query_scalar("SELECT max(id) FROM outbox").fetch_one(&pool).await.expect("max");
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while relay.advance_floor().await.expect("floor") < last {
        assert!(std::time::Instant::now() < deadline, "the floor did not pass the dispatched rows");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let mut conn = support::redis(&redis.url()).await;
    let len: usize = redis::cmd("XLEN").arg(stream::EVENTS).query_async(&mut conn).await.expect("xlen");
    assert_eq!(len, 251, "each row once");
}

/// While rows trickle in, a claim walks up from the highest id claimed: a row that commits
/// late below it, between rows that keep coming, is still relayed (from the floor, within its
/// 100 ms), once, and nothing else is held back or sent twice.
#[tokio::test(flavor = "multi_thread")]
async fn a_row_that_commits_late_while_rows_trickle_in_is_relayed_once() {
    let pool = support::database(&support::shared().postgres).await;
    let redis = Redis::start_default().expect("redis");
    let mut relay = relay(&pool, &redis).await; // batches of 100
    let (late, late_id) = hold_a_row(&pool).await;
    enqueue(&pool, 5).await;
    assert_eq!(relay.relay_once().await.expect("relay"), 5, "the committed rows above the open one");
    late.commit().await.expect("commit");
    let mut sent = 5;
    for _ in 0..5 {
        enqueue(&pool, 3).await;
        sent += relay.relay_once().await.expect("relay");
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while sent < 21 {
        assert!(std::time::Instant::now() < deadline, "the late row was left behind: {sent} of 21 sent");
        sent += relay.relay_once().await.expect("relay");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(relay.relay_once().await.expect("relay"), 0);
    let mut conn = support::redis(&redis.url()).await;
    let entries: redis::streams::StreamRangeReply =
        redis::cmd("XRANGE").arg(stream::EVENTS).arg("-").arg("+").query_async(&mut conn).await.expect("xrange");
    let mut ids: Vec<i64> = entries
        .ids
        .iter()
        .map(|entry| entry.get::<String>("outbox_id").expect("outbox_id").parse().expect("an id"))
        .collect();
    assert!(ids.contains(&late_id));
    assert_eq!(ids.len(), 21);
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), 21, "each row once");
}
