//! The API's ladder and `/healthchecks` with Redis and PostgreSQL stopped under it.

use std::time::Duration;

use caracal_core::Mode;
use caracal_testkit::app::check_status;
use caracal_testkit::{Postgres, Redis};

use crate::support;

const SLACK: Duration = Duration::from_secs(8);

#[tokio::test(flavor = "multi_thread")]
async fn stopping_redis_then_postgres_is_reported_and_recovered() {
    let mut postgres = Postgres::start_default().expect("postgres");
    let mut redis = Redis::start_default().expect("redis");
    let (served, _) = support::api_on(&postgres, &redis, Mode::Dev, serde_json::json!({})).await;
    let (code, body) = served.get_json("/v1/healthchecks").await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["status"], "Operational");

    redis.stop();
    let body = served.wait_for_check("redis:connectivity", "fail", SLACK).await.expect("Redis reported down");
    assert_eq!(body["status"], "fail", "{body}");
    let (code, body) = served.get_json("/v1/healthchecks").await;
    assert_eq!(code, 218, "a platform component is down while the API serves: {body}");
    let cache = body["components"].as_array().and_then(|c| c.iter().find(|c| c["componentType"] == "Cache")).cloned();
    assert_eq!(cache.map(|c| c["status"].clone()), Some(serde_json::json!("Down")));
    assert!(!body.to_string().contains("refused"), "no error details on a public endpoint");
    let (code, body) = served.get_json("/healthchecks").await;
    assert_eq!(code, 218, "the console's shape answers alike: {body}");
    let cache = body.as_array().and_then(|e| e.iter().find(|e| e["type"] == "Cache")).cloned();
    assert_eq!(cache.map(|c| c["status"].clone()), Some(serde_json::json!("Offline")), "{body}");
    assert!(!body.to_string().contains("refused"), "no error details on a public endpoint");
    redis.start().expect("restart redis");
    served.wait_ready_status(200, SLACK).await.expect("ready again after Redis returns");

    postgres.stop();
    let body = served.wait_for_check("postgres:connectivity", "fail", SLACK).await.expect("PostgreSQL reported down");
    assert_eq!(body["status"], "fail", "{body}");
    assert_eq!(check_status(&body, "outbox:oldest_pending_age"), "skipped", "{body}");
    for path in ["/healthchecks", "/v1/healthchecks"] {
        let (code, _) = served.get_json(path).await;
        assert_eq!(code, 503, "{path}: the API cannot reach its database");
    }
    postgres.start().expect("restart postgres");
    served.wait_ready_status(200, SLACK).await.expect("ready again after PostgreSQL returns");
}

/// POSTs a target named `name`; the status, `Retry-After` and the error code.
async fn register(served: &caracal_testkit::app::Served, name: &str) -> (u16, Option<String>, serde_json::Value) {
    let response = caracal_testkit::app::client()
        .post(served.url("/v1/targets"))
        .bearer_auth(support::ADMIN)
        .json(&serde_json::json!({"name": name, "instances": ["http://127.0.0.1:7001"]}))
        .send()
        .await
        .expect("a response");
    let retry = response.headers().get("retry-after").and_then(|v| v.to_str().ok()).map(str::to_string);
    let status = response.status().as_u16();
    (status, retry, response.json().await.unwrap_or_default())
}

#[tokio::test(flavor = "multi_thread")]
async fn writes_to_a_database_that_cannot_take_them_answer_503_with_retry_after() {
    let shared = support::shared();
    let (served, pool) = support::api(Mode::Dev).await;
    let name: String = sqlx::query_scalar("SELECT current_database()").fetch_one(&pool).await.expect("name");
    let before = support::counts(&pool).await;

    // The database turns read-only (as a demoted primary or a standby would be).
    shared
        .postgres
        .psql("postgres", &format!("ALTER DATABASE {name} SET default_transaction_read_only = on"))
        .expect("alter");
    shared
        .postgres
        .psql("postgres", &format!("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE datname = '{name}' AND pid <> pg_backend_pid()"))
        .expect("terminate");
    served.wait_for_check("postgres:writable", "fail", SLACK).await.expect("postgres:writable fails");
    for attempt in 0..5 {
        let (status, retry, body) = register(&served, &format!("shop{attempt}")).await;
        assert_eq!(status, 503, "{body}");
        assert_eq!(retry.as_deref(), Some("2"));
        assert_eq!(body["error"]["code"], "store_unavailable", "{body}");
        assert!(!body.to_string().contains("read-only"), "no database detail in {body}");
    }
    shared
        .postgres
        .psql("postgres", &format!("ALTER DATABASE {name} RESET default_transaction_read_only"))
        .expect("reset");
    served.wait_ready_status(200, SLACK).await.expect("ready again");
    let (status, _, body) = register(&served, "shop").await;
    assert_eq!(status, 201, "{body}");
    let after = support::counts(&pool).await;
    assert_eq!((after.0 - before.0, after.1 - before.1), (1, 1), "only the accepted write is stored");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_write_while_postgresql_is_down_answers_503_not_500() {
    let mut postgres = Postgres::start_default().expect("postgres");
    let redis = Redis::start_default().expect("redis");
    let (served, _) = support::api_on(&postgres, &redis, Mode::Dev, serde_json::json!({})).await;
    postgres.stop();
    let (status, retry, body) = register(&served, "shop").await;
    assert_eq!((status, retry.as_deref()), (503, Some("2")), "{body}");
    assert_eq!(body["error"]["code"], "store_unavailable", "{body}");
    postgres.start().expect("restart postgres");
    served.wait_ready_status(200, SLACK).await.expect("ready again");
    assert_eq!(register(&served, "shop").await.0, 201);
}
