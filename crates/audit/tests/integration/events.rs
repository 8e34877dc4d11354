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
