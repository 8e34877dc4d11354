//! `GET /v1/events`: filters, pagination, validation and the admin bearer.

use caracal_core::Mode;

use crate::support::{self, ADMIN};

#[tokio::test(flavor = "multi_thread")]
async fn filters_pages_and_guards() {
    let audit = support::audit(Mode::Stable, serde_json::json!({ "block": "100ms", "max_page": 50 })).await;
    for id in 1..=5 {
        audit.publish(id, if id % 2 == 0 { "even" } else { "odd" });
    }
    assert_eq!(audit.wait_rows(5).await, 5);
    let served = &audit.served;
    let get = |path: &str| served.http.get(served.url(path)).bearer_auth(ADMIN).send();

    let unauthorized = served.get("/v1/events").await;
    assert_eq!(unauthorized.status(), 401, "stable mode guards reads");

    let page: serde_json::Value = get("/v1/events?limit=2").await.expect("page").json().await.expect("json");
    let ids: Vec<i64> = page["events"].as_array().expect("events").iter().filter_map(|e| e["id"].as_i64()).collect();
    assert_eq!(ids, [1, 2]);
    assert_eq!(page["events"][0]["type"], "instance.status_changed");
    assert_eq!(page["events"][0]["payload"]["to"], "up");
    let next = page["next_cursor"].as_str().expect("cursor").to_string();
    let page: serde_json::Value =
        get(&format!("/v1/events?limit=2&cursor={next}")).await.expect("page").json().await.expect("json");
    let ids: Vec<i64> = page["events"].as_array().expect("events").iter().filter_map(|e| e["id"].as_i64()).collect();
    assert_eq!(ids, [3, 4]);

    let even: serde_json::Value = get("/v1/events?target=even").await.expect("filter").json().await.expect("json");
    assert_eq!(even["events"].as_array().map(Vec::len), Some(2));
    let none: serde_json::Value =
        get("/v1/events?type=target.created").await.expect("filter").json().await.expect("json");
    assert_eq!(none["events"].as_array().map(Vec::len), Some(0));
    let later: serde_json::Value =
        get("/v1/events?since=2030-01-01T00:00:00Z").await.expect("filter").json().await.expect("json");
    assert_eq!(later["events"].as_array().map(Vec::len), Some(0));

    for (query, field) in
        [("limit=0", "limit"), ("limit=51", "limit"), ("cursor=x", "cursor"), ("since=yesterday", "since")]
    {
        let response = get(&format!("/v1/events?{query}")).await.expect("request");
        assert_eq!(response.status(), 422, "{query}");
        let body: serde_json::Value = response.json().await.expect("json");
        assert_eq!(body["error"]["field"], field, "{query}");
    }
}

/// Where the ledger's horizon is: `oldest` is the oldest event it still holds; once the
/// retention purge took everything before a time, a `since` before it is answered (not an
/// error), and a late redelivery of a purged event is not written back.
#[tokio::test(flavor = "multi_thread")]
async fn the_horizon_is_stated_and_a_purged_event_stays_purged() {
    let audit = support::audit(Mode::Dev, serde_json::json!({ "block": "100ms" })).await;
    for id in 1..=3 {
        audit.publish(id, "shop");
    }
    assert_eq!(audit.wait_rows(3).await, 3);
    let served = &audit.served;
    let page = |path: &'static str| async move {
        let response = served.get(path).await;
        assert_eq!(response.status(), 200, "{path}");
        response.json::<serde_json::Value>().await.expect("json")
    };
    let all = page("/v1/events").await;
    assert_eq!(all["oldest"], "2026-11-21T14:00:00.000000Z", "{all}");
    assert_eq!(all["events"][0]["occurred_at"], all["oldest"]);

    // Everything is past a one-second retention and below the watermark: purged.
    sqlx::query("UPDATE ledger_watermark SET outbox_id = 3").execute(&audit.pool).await.expect("watermark");
    let mut conn = audit.pool.acquire().await.expect("conn");
    let purged = caracal_store::retention::purge(
        &mut conn,
        caracal_store::retention::Table::Ledger,
        std::time::Duration::from_secs(1),
        2,
    )
    .await
    .expect("purge");
    assert_eq!(purged.rows, 3);
    let empty = page("/v1/events?since=2020-01-01T00:00:00Z").await;
    assert_eq!(empty["events"].as_array().map(Vec::len), Some(0), "{empty}");
    assert_eq!(empty["oldest"], serde_json::Value::Null);

    // A redelivery of event 2 stays out; a new event 4 goes in and is the new horizon.
    audit.publish(2, "shop");
    audit.publish(4, "shop");
    assert_eq!(audit.wait_rows(1).await, 1);
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let after = page("/v1/events").await;
    let ids: Vec<i64> = after["events"].as_array().expect("events").iter().filter_map(|e| e["id"].as_i64()).collect();
    assert_eq!(ids, [4], "{after}");
    assert_eq!(after["oldest"], "2026-11-21T14:00:00.000000Z");
}

/// `since` starts the page at the first event at or after it, found from the BRIN summaries of
/// `occurred_at`: a long ledger's older rows are not read one by one first (as they were when
/// the page walked the primary key from the cursor and filtered on the time); a time before
/// the ledger began skips that search. The pages are the ones a full read gives.
#[tokio::test(flavor = "multi_thread")]
async fn since_reads_only_the_recent_end_of_a_long_ledger() {
    let audit = support::audit(Mode::Stable, serde_json::json!({ "block": "100ms" })).await;
    let pool = &audit.pool;
    // 200,000 rows 100 ms apart, in the order they occurred: the last ten minutes are 6,000 of them.
    sqlx::query(
        "INSERT INTO audit_events (outbox_id, event_type, target, payload, occurred_at) \
         SELECT g, 'instance.status_changed', 't' || (g % 7), '{}', now() - (200000 - g) * interval '100 ms' \
         FROM generate_series(1, 200000) g",
    )
    .execute(pool)
    .await
    .expect("fill");
    sqlx::query("SELECT brin_summarize_new_values('audit_events_occurred_brin')")
        .execute(pool)
        .await
        .expect("summarize");
    sqlx::query("ANALYZE audit_events").execute(pool).await.expect("analyze");
    let since: String = sqlx::query_scalar(
        "SELECT to_char((now() - interval '10 minutes') AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"')",
    )
    .fetch_one(pool)
    .await
    .expect("since");

    let get = |path: String| audit.served.http.get(audit.served.url(&path)).bearer_auth(ADMIN).send();
    let page: serde_json::Value =
        get(format!("/v1/events?since={since}&limit=50")).await.expect("page").json().await.expect("json");
    let ids: Vec<i64> = page["events"].as_array().expect("events").iter().filter_map(|e| e["id"].as_i64()).collect();
    let first: i64 = sqlx::query_scalar("SELECT min(outbox_id) FROM audit_events WHERE occurred_at >= $1::timestamptz")
        .bind(&since)
        .fetch_one(pool)
        .await
        .expect("first");
    assert!(first > 190_000, "{first}");
    assert_eq!(ids, (first..first + 50).collect::<Vec<_>>());
    let next = page["next_cursor"].as_str().expect("cursor").to_string();
    let page: serde_json::Value = get(format!("/v1/events?since={since}&limit=50&target=t3&cursor={next}"))
        .await
        .expect("page")
        .json()
        .await
        .expect("json");
    let ids: Vec<i64> = page["events"].as_array().expect("events").iter().filter_map(|e| e["id"].as_i64()).collect();
    let want: Vec<i64> = (first + 50..=200_000).filter(|g| g % 7 == 3).take(50).collect();
    assert_eq!(ids, want, "a later page, filtered by target");
    let all: serde_json::Value =
        get("/v1/events?since=2000-01-01T00:00:00Z&limit=3".into()).await.expect("page").json().await.expect("json");
    let ids: Vec<i64> = all["events"].as_array().expect("events").iter().filter_map(|e| e["id"].as_i64()).collect();
    assert_eq!(ids, [1, 2, 3], "a time before the ledger began");
    let later = format!("/v1/events?since={}", "2100-01-01T00:00:00Z");
    let none: serde_json::Value = get(later).await.expect("page").json().await.expect("json");
    assert_eq!(none["events"].as_array().map(Vec::len), Some(0), "nothing occurred after then");

    // The plans, as the handler sends them (unprepared: planned with their own values): the
    // recent `since` through the BRIN, the one before the ledger by the primary key at once.
    let db: String = sqlx::query_scalar("SELECT current_database()").fetch_one(pool).await.expect("db");
    let local = since.trim_end_matches('Z').replace('T', " ");
    for (since, brin) in [(local.as_str(), true), ("2000-01-01 00:00:00", false)] {
        let plan = support::postgres()
            .psql(
                &db,
                &format!(
                    "SET plan_cache_mode = force_custom_plan; \
                     PREPARE page(bigint, text, text, text, bigint, int) AS {}; \
                     EXPLAIN (ANALYZE, COSTS OFF, TIMING OFF) EXECUTE page(0, NULL, NULL, '{since}', 50, 0)",
                    caracal_audit::EVENTS_PAGE
                ),
            )
            .expect("explain");
        assert_eq!(plan.contains("audit_events_occurred_brin"), brin, "since {since}:\n{plan}");
        // Rows read and dropped: by the time filter, or by the BRIN's lossy ranges.
        let dropped: i64 = plan
            .lines()
            .filter_map(|l| {
                let l = l.trim();
                l.strip_prefix("Rows Removed by Filter: ").or_else(|| l.strip_prefix("Rows Removed by Index Recheck: "))
            })
            .filter_map(|n| n.trim().parse::<i64>().ok())
            .sum();
        assert!(dropped < 20_000, "since {since}: {dropped} rows read and dropped:\n{plan}");
        // The other branch's subquery is planned, and must not run.
        let read_whole = plan.lines().any(|l| l.contains("Seq Scan") && !l.contains("never executed"));
        assert!(!read_whole, "since {since}:\n{plan}");
    }
}
