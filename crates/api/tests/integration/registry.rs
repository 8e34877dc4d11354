//! The registry's happy paths: create, read, replace, delete, each with its outbox event in
//! the same transaction; status, history pagination; the OpenAPI document.

use caracal_core::Mode;
use serde_json::json;

use crate::support::{self, ADMIN};

#[tokio::test(flavor = "multi_thread")]
async fn writes_commit_with_their_outbox_events() {
    let (served, pool) = support::api(Mode::Dev).await;
    let http = &served.http;
    let created = http
        .post(served.url("/v1/targets"))
        .bearer_auth(ADMIN)
        .json(&json!({"name": "shop", "instances": ["http://127.0.0.1:7001", "http://127.0.0.1:7002"], "labels": {"team": "a"}}))
        .send()
        .await
        .expect("create");
    assert_eq!(created.status(), 201);
    assert_eq!(created.headers()["location"], "/v1/targets/shop");
    let body: serde_json::Value = created.json().await.expect("json");
    assert_eq!(body["interval_ms"], 5000);
    assert_eq!(body["labels"]["team"], "a");

    let replaced = http
        .put(served.url("/v1/targets/shop"))
        .bearer_auth(ADMIN)
        .json(&json!({"name": "shop", "instances": ["http://127.0.0.1:7002", "http://127.0.0.1:7003"], "interval_ms": 1000, "timeout_ms": 500}))
        .send()
        .await
        .expect("replace");
    assert_eq!(replaced.status(), 200);
    let body: serde_json::Value = replaced.json().await.expect("json");
    assert_eq!(body["instances"], json!(["http://127.0.0.1:7002", "http://127.0.0.1:7003"]));
    assert_eq!(body["interval_ms"], 1000);

    let list: serde_json::Value = served.get("/v1/targets").await.json().await.expect("json");
    assert_eq!(list.as_array().map(Vec::len), Some(1));
    let status: serde_json::Value = served.get("/v1/status").await.json().await.expect("json");
    assert_eq!(status["instances"].as_array().map(Vec::len), Some(2));
    assert_eq!(status["instances"][0]["status"], "unknown");

    let deleted = http.delete(served.url("/v1/targets/shop")).bearer_auth(ADMIN).send().await.expect("delete");
    assert_eq!(deleted.status(), 204);
    let events: Vec<(String, Option<String>)> =
        sqlx::query_as("SELECT event_type, target FROM outbox ORDER BY id").fetch_all(&pool).await.expect("outbox");
    let types: Vec<&str> = events.iter().map(|(t, _)| t.as_str()).collect();
    assert_eq!(types, ["target.created", "target.updated", "target.deleted"]);
    assert!(events.iter().all(|(_, target)| target.as_deref() == Some("shop")));
    assert_eq!(support::counts(&pool).await, (0, 0, 3), "the target and its instances are gone, the events stay");
}

#[tokio::test(flavor = "multi_thread")]
async fn history_pages_newest_first_and_survives_deletion() {
    let (served, pool) = support::api(Mode::Dev).await;
    sqlx::query(
        "INSERT INTO status_transitions (target_name, instance_url, from_status, to_status) \
         SELECT 'gone', 'http://a:1', 'up', 'down' FROM generate_series(1, 5)",
    )
    .execute(&pool)
    .await
    .expect("transitions");
    let first: serde_json::Value = served.get("/v1/targets/gone/history?limit=2").await.json().await.expect("json");
    let ids: Vec<i64> =
        first["transitions"].as_array().expect("array").iter().filter_map(|t| t["id"].as_i64()).collect();
    assert_eq!(ids, [5, 4]);
    let cursor = first["next_cursor"].as_str().expect("a next page");
    let second: serde_json::Value =
        served.get(&format!("/v1/targets/gone/history?limit=2&cursor={cursor}")).await.json().await.expect("json");
    let ids: Vec<i64> =
        second["transitions"].as_array().expect("array").iter().filter_map(|t| t["id"].as_i64()).collect();
    assert_eq!(ids, [3, 2]);
    let last: serde_json::Value =
        served.get("/v1/targets/gone/history?limit=2&cursor=2").await.json().await.expect("json");
    assert_eq!(last["transitions"].as_array().map(Vec::len), Some(1));
    assert!(last["next_cursor"].is_null());
}

#[tokio::test(flavor = "multi_thread")]
async fn the_openapi_document_describes_the_routes() {
    let (served, _) = support::api(Mode::Dev).await;
    let doc: serde_json::Value = served.get("/openapi.json").await.json().await.expect("json");
    assert!(doc["openapi"].as_str().is_some_and(|v| v.starts_with("3.")));
    for path in ["/v1/targets", "/v1/targets/{name}", "/v1/targets/{name}/history", "/v1/status", "/healthchecks"] {
        assert!(doc["paths"].get(path).is_some(), "{path} is documented");
    }
    assert!(doc["paths"]["/v1/targets"]["post"]["responses"].get("422").is_some());
    assert!(doc["components"]["schemas"].get("TargetSpec").is_some());
}
