//! The built-in stream and outbox checks against real Redis and PostgreSQL.

use std::time::Duration;

use caracal_core::checks::{self, StreamGroup};
use caracal_core::config::{Mode, Secret};

use crate::support::{self, check_status};

async fn scrape(served: &support::Served) -> String {
    served.get("/metrics").await.text().await.expect("metrics text")
}

#[tokio::test(flavor = "multi_thread")]
async fn stream_group_lag_pending_age_and_null_lag() {
    let shared = support::shared();
    let redis = &shared.redis;
    let stream = caracal_testkit::unique_name("events");
    let nulled = caracal_testkit::unique_name("nulled");
    redis.command(&format!("XGROUP CREATE {stream} audit $ MKSTREAM")).expect("create group");
    let mut core = support::core_config(Mode::Dev);
    core.redis_url = Some(Secret::new(redis.url()));
    let app = support::app(core);
    let conn = app.redis().expect("redis");
    let spec =
        |s: &str| StreamGroup { stream: s.into(), group: "audit".into(), max_lag: 5, max_age: Duration::from_secs(2) };
    let lag = checks::stream_group(conn.clone(), app.metrics(), spec(&stream));
    let served = support::serve(app.check(checks::redis(conn)).check(lag)).await;
    let body =
        served.wait_for_check("stream:lag", "pass", Duration::from_secs(5)).await.expect("an empty group passes");
    assert_eq!(body["checks"]["stream:lag"][0]["observedValue"], 0.0);
    assert_eq!(body["checks"]["stream:lag"][0]["observedUnit"], "entries");

    for i in 0..10 {
        redis.command(&format!("XADD {stream} * n {i}")).expect("xadd");
    }
    let body = served.wait_for_check("stream:lag", "fail", Duration::from_secs(5)).await.expect("10 undelivered > 5");
    assert!(body["checks"]["stream:lag"][0]["output"].as_str().unwrap_or("").contains("10 entries behind"), "{body}");
    let labels = format!("{{stream=\"{stream}\",group=\"audit\"}}");
    assert!(scrape(&served).await.contains(&format!("caracal_stream_lag{labels} 10")));

    // Delivered but never acknowledged: lag 0, pending 10, and then too old.
    redis.command(&format!("XREADGROUP GROUP audit c1 COUNT 100 STREAMS {stream} >")).expect("read");
    served.wait_for_check("stream:lag", "pass", Duration::from_secs(5)).await.expect("delivered entries are not lag");
    let body =
        served.wait_for_check("stream:lag", "fail", Duration::from_secs(10)).await.expect("pending entries age out");
    assert!(
        body["checks"]["stream:lag"][0]["output"].as_str().unwrap_or("").contains("oldest unacknowledged"),
        "{body}"
    );
    let text = scrape(&served).await;
    assert!(text.contains(&format!("caracal_stream_pending{labels} 10")), "{text}");
    assert!(text.contains(&format!("caracal_stream_oldest_pending_age_seconds{labels} ")), "{text}");

    // Redis answers `lag: nil` once an entry is deleted past the group's position; the check
    // then judges by the time between IDs. These IDs are 89 s apart.
    for id in ["1000-1", "50000-1", "90000-1"] {
        redis.command(&format!("XADD {nulled} {id} n v")).expect("xadd");
    }
    redis.command(&format!("XGROUP CREATE {nulled} audit 0")).expect("group");
    redis.command(&format!("XDEL {nulled} 50000-1")).expect("xdel");
    let info = redis.command(&format!("XINFO GROUPS {nulled}")).expect("xinfo");
    assert!(
        info.contains("lag\r\n_") || info.contains("lag\r\n$-1") || info.contains("lag\r\n*-1"),
        "Redis reports a nil lag: {info:?}"
    );
    let mut core = support::core_config(Mode::Dev);
    core.redis_url = Some(Secret::new(redis.url()));
    let app = support::app(core);
    let conn = app.redis().expect("redis");
    let check = checks::stream_group(conn, app.metrics(), spec(&nulled));
    let served = support::serve(app.check(check)).await;
    let body = served.wait_for_check("stream:lag", "fail", Duration::from_secs(5)).await.expect("89 s behind > 2 s");
    let check = &body["checks"]["stream:lag"][0];
    assert_eq!(check["observedUnit"], "s", "{body}");
    assert_eq!(check["observedValue"], 89.0, "{body}");
    assert!(check["output"].as_str().unwrap_or("").contains("behind the newest entry"), "{body}");
    assert!(!scrape(&served).await.contains("caracal_stream_lag{"), "no lag figure when Redis cannot count it");
}

#[tokio::test(flavor = "multi_thread")]
async fn outbox_backlog_age_and_dead_rows_on_a_large_table() {
    let shared = support::shared();
    let url = shared.postgres.fresh_database("outbox").expect("database");
    let db = url.rsplit('/').next().expect("database name").to_string();
    let psql = |sql: &str| shared.postgres.psql(&db, sql).expect("psql");
    psql(
        "CREATE TABLE outbox (id bigserial PRIMARY KEY, created_at timestamptz NOT NULL DEFAULT now(), \
         dispatched_at timestamptz, dead_at timestamptz, payload jsonb NOT NULL DEFAULT '{}')",
    );
    psql(&checks::OUTBOX_INDEXES.replace("{table}", "outbox"));
    psql(
        "INSERT INTO outbox (created_at, dispatched_at) SELECT now() - interval '1 day', now() FROM generate_series(1, 200000)",
    );
    psql("INSERT INTO outbox (created_at) SELECT now() - interval '10 seconds' FROM generate_series(1, 3)");
    psql("ANALYZE outbox");
    let plan = psql(&format!("EXPLAIN {}", checks::outbox_query("outbox")));
    assert!(!plan.contains("Seq Scan"), "the outbox query reads the partial indexes, not the table:\n{plan}");

    let mut core = support::core_config(Mode::Dev);
    core.database_url = Some(Secret::new(url));
    let app = support::app(core);
    let pool = app.postgres().expect("pool");
    let [age, dead] = checks::outbox(pool.clone(), app.metrics(), "outbox", Duration::from_secs(5));
    let served = support::serve(app.check(checks::postgres(pool)).check(age).check(dead)).await;

    let body =
        served.wait_for_check("outbox:oldest_pending_age", "fail", Duration::from_secs(15)).await.expect("10 s > 5 s");
    let observed = body["checks"]["outbox:oldest_pending_age"][0]["observedValue"].as_f64().expect("observed age");
    assert!((9.0..60.0).contains(&observed), "oldest pending age {observed}");
    assert_eq!(check_status(&body, "outbox:dead"), "pass");
    let text = scrape(&served).await;
    assert!(text.contains("caracal_outbox_pending 3"), "{text}");
    assert!(text.contains("caracal_outbox_dead 0"), "{text}");
    assert!(text.contains("caracal_outbox_oldest_pending_age_seconds "), "{text}");

    psql("UPDATE outbox SET dispatched_at = now() WHERE dispatched_at IS NULL");
    psql("INSERT INTO outbox (created_at, dead_at) VALUES (now(), now())");
    let body = served
        .wait_for_check("outbox:oldest_pending_age", "pass", Duration::from_secs(5))
        .await
        .expect("backlog cleared");
    let body = if check_status(&body, "outbox:dead") == "warn" {
        body
    } else {
        served.wait_for_check("outbox:dead", "warn", Duration::from_secs(5)).await.expect("dead rows warn")
    };
    assert_eq!(body["status"], "warn", "dead rows are an alert, never unready: {body}");
    assert_eq!(served.get("/ready").await.status(), 200);
    assert!(scrape(&served).await.contains("caracal_outbox_dead 1"));
}
