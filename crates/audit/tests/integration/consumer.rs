//! The consumer: idempotent inserts, poison to the DLQ, entries of a dead consumer taken over,
//! entries delivered too often dead-lettered, and the ladder around Redis.

use std::time::Duration;

use caracal_core::Mode;
use caracal_store::stream;
use caracal_testkit::app::check_status;

use crate::support::{self, Audit};

fn dlq(audit: &Audit) -> String {
    audit.redis.command(&format!("XRANGE {} - +", stream::EVENTS_DLQ)).expect("xrange dlq")
}

#[tokio::test(flavor = "multi_thread")]
async fn each_event_once_and_poison_to_the_dlq_while_the_rest_flows() {
    let audit = support::audit(Mode::Dev, serde_json::json!({ "block": "100ms" })).await;
    audit.publish(1, "a");
    audit.publish(2, "a");
    audit.publish(2, "a"); // a relay retry delivered it twice
    let poison = format!("XADD {} * outbox_id not-a-number type x payload {{", stream::EVENTS);
    audit.redis.command(&poison).expect("xadd poison");
    audit.publish(3, "b");
    assert_eq!(audit.wait_rows(3).await, 3);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let ids: Vec<i64> = sqlx::query_scalar("SELECT outbox_id FROM audit_events ORDER BY outbox_id")
        .fetch_all(&audit.pool)
        .await
        .expect("ids");
    assert_eq!(ids, [1, 2, 3], "each outbox id once");

    let dead = dlq(&audit);
    assert!(dead.contains("outbox_id") && dead.contains("not a positive integer"), "the DLQ entry says why: {dead}");
    let pending = audit.redis.command(&format!("XPENDING {} audit", stream::EVENTS)).expect("xpending");
    assert!(pending.starts_with("*4\r\n:0"), "everything acknowledged, poison included: {pending:?}");
    let body = audit.served.wait_for_check("dlq:length", "warn", Duration::from_secs(5)).await.expect("the DLQ warns");
    assert_eq!(body["status"], "warn", "a DLQ entry is an alert, not unreadiness");

    audit.publish(4, "b");
    assert_eq!(audit.wait_rows(4).await, 4, "the consumer carries on after poison");

    // Where the time went, per stage, for operators and the pipeline benchmark.
    let metrics = audit.served.get("/metrics").await.text().await.expect("metrics");
    for stage in ["read", "insert", "ack"] {
        let seconds = metrics
            .lines()
            .find(|l| l.starts_with(&format!("caracal_audit_consume_stage_seconds_total{{stage=\"{stage}\"}}")))
            .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok());
        assert!(seconds.is_some_and(|s| s > 0.0), "{stage} timed: {seconds:?}\n{metrics}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_dead_consumers_entries_are_taken_over_and_overused_ones_dead_lettered() {
    let audit =
        support::audit(Mode::Dev, serde_json::json!({ "block": "100ms", "claim_idle": "500ms", "max_deliveries": 3 }))
            .await;
    let client = redis::Client::open(audit.redis.url()).expect("url");
    let mut conn = client.get_multiplexed_async_connection().await.expect("connect");
    let entry = |pipe: &mut redis::Pipeline, id: &str, outbox_id: i64| {
        pipe.cmd("XADD")
            .arg(stream::EVENTS)
            .arg(id)
            .arg("outbox_id")
            .arg(outbox_id)
            .arg("type")
            .arg("t")
            .arg("target")
            .arg("g");
        pipe.arg("instance").arg("i").arg("payload").arg("{}").arg("occurred_at").arg("2026-11-21T14:00:00Z").ignore();
    };
    // A ghost consumer reads two entries in the same transaction that adds them (so the
    // service's consumer never sees them as new), then dies without acknowledging.
    let mut pipe = redis::pipe();
    pipe.atomic();
    entry(&mut pipe, "*", 10);
    entry(&mut pipe, "*", 11);
    pipe.cmd("XREADGROUP")
        .arg("GROUP")
        .arg("audit")
        .arg("ghost")
        .arg("COUNT")
        .arg(10)
        .arg("STREAMS")
        .arg(stream::EVENTS)
        .arg(">")
        .ignore();
    pipe.query_async::<()>(&mut conn).await.expect("ghost reads");
    assert_eq!(audit.wait_rows(2).await, 2, "the ghost's pending entries are claimed and recorded");

    // An entry that keeps failing its consumers goes to the DLQ instead of looping forever.
    let mut pipe = redis::pipe();
    pipe.atomic();
    entry(&mut pipe, "9999999999999-0", 12);
    pipe.cmd("XREADGROUP")
        .arg("GROUP")
        .arg("audit")
        .arg("ghost")
        .arg("COUNT")
        .arg(10)
        .arg("STREAMS")
        .arg(stream::EVENTS)
        .arg(">")
        .ignore();
    for _ in 0..4 {
        pipe.cmd("XCLAIM").arg(stream::EVENTS).arg("audit").arg("ghost").arg(0).arg("9999999999999-0").ignore();
    }
    pipe.query_async::<()>(&mut conn).await.expect("ghost keeps failing");
    let dead = caracal_testkit::wait_for(Duration::from_secs(10), Duration::from_millis(50), || async {
        let dead = dlq(&audit);
        dead.contains("delivered").then_some(dead)
    })
    .await
    .expect("the overused entry is dead-lettered");
    assert!(dead.contains("9999999999999-0"), "{dead}");
    let twelve: i64 = sqlx::query_scalar("SELECT count(*) FROM audit_events WHERE outbox_id = 12")
        .fetch_one(&audit.pool)
        .await
        .expect("count");
    assert_eq!(twelve, 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_redis_outage_is_named_and_consumption_resumes() {
    let mut audit = support::audit(Mode::Dev, serde_json::json!({ "block": "100ms" })).await;
    audit.publish(1, "a");
    assert_eq!(audit.wait_rows(1).await, 1);
    audit.redis.stop();
    let body = audit
        .served
        .wait_for_check("redis:connectivity", "fail", Duration::from_secs(8))
        .await
        .expect("Redis reported down");
    assert_eq!(check_status(&body, "stream:lag"), "skipped");
    audit.redis.start().expect("restart");
    audit.served.wait_ready_status(200, Duration::from_secs(10)).await.expect("ready again");
    // This Redis kept nothing: the consumer recreates its group and reads on.
    audit.publish(2, "a");
    assert_eq!(audit.wait_rows(2).await, 2);
}

/// How many entries of `caracal.events` the group `audit` has delivered and not yet had acknowledged.
async fn pending(conn: &mut redis::aio::MultiplexedConnection) -> Option<usize> {
    let reply: redis::streams::StreamPendingReply =
        redis::cmd("XPENDING").arg(stream::EVENTS).arg("audit").query_async(conn).await.ok()?;
    Some(reply.count())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_backlog_is_read_ahead_while_a_batch_is_recorded_and_a_failed_round_loses_none_of_it() {
    let audit = support::audit(Mode::Dev, serde_json::json!({ "block": "100ms", "batch": 10 })).await;
    // Hold the ledger so the first batch's insert waits.
    let mut lock = audit.pool.begin().await.expect("tx");
    sqlx::query("LOCK TABLE audit_events IN ACCESS EXCLUSIVE MODE").execute(&mut *lock).await.expect("lock");
    // 55 entries at once (MULTI, so the waiting reader is answered only after all of them).
    let client = redis::Client::open(audit.redis.url()).expect("url");
    let mut conn = client.get_multiplexed_async_connection().await.expect("connect");
    let mut pipe = redis::pipe();
    pipe.atomic();
    for id in 1..=55 {
        pipe.cmd("XADD")
            .arg(stream::EVENTS)
            .arg("*")
            .arg(&["outbox_id", &id.to_string(), "type", "t", "target", "a", "instance", "", "payload", "{}"])
            .arg(&["occurred_at", "2026-11-21T14:00:00Z"])
            .ignore();
    }
    let () = pipe.query_async(&mut conn).await.expect("xadd");

    // The first full batch waits on the ledger; the next one is read meanwhile.
    let waiting =
        "SELECT pid FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND query LIKE 'INSERT INTO audit_events%'";
    let other = audit.pool.clone();
    let pid: i32 = caracal_testkit::wait_for(Duration::from_secs(10), Duration::from_millis(20), || async {
        sqlx::query_scalar(waiting).fetch_optional(&other).await.ok().flatten()
    })
    .await
    .expect("the first batch's insert waits on the ledger");
    let read: usize = caracal_testkit::wait_for(Duration::from_secs(10), Duration::from_millis(20), || async {
        let count = pending(&mut conn.clone()).await?;
        (count >= 20).then_some(count)
    })
    .await
    .expect("the next batch is read while the first is recorded");
    assert_eq!(read, 20, "one batch recorded, one read ahead, no more");

    // The insert fails (its session is ended): the round fails, and both batches, the one read
    // ahead included, are read again from this consumer's pending entries.
    let ended: bool =
        sqlx::query_scalar("SELECT pg_terminate_backend($1)").bind(pid).fetch_one(&audit.pool).await.expect("end");
    assert!(ended);
    lock.rollback().await.expect("unlock");
    assert_eq!(audit.wait_rows(55).await, 55);
    let ids: Vec<i64> = sqlx::query_scalar("SELECT outbox_id FROM audit_events ORDER BY outbox_id")
        .fetch_all(&audit.pool)
        .await
        .expect("ids");
    assert_eq!(ids, (1..=55).collect::<Vec<i64>>(), "every entry once");
    let acked = caracal_testkit::wait_for(Duration::from_secs(10), Duration::from_millis(50), || async {
        let count = pending(&mut conn.clone()).await?;
        (count == 0).then_some(())
    })
    .await;
    assert!(acked.is_ok(), "everything acknowledged");
}
