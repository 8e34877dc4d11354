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
    let (code, body) = served.get_json("/healthchecks").await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["status"], "Operational");

    redis.stop();
    let body = served.wait_for_check("redis:connectivity", "fail", SLACK).await.expect("Redis reported down");
    assert_eq!(body["status"], "fail", "{body}");
    let (code, body) = served.get_json("/healthchecks").await;
    assert_eq!(code, 218, "a platform component is down while the API serves: {body}");
    let cache = body["components"].as_array().and_then(|c| c.iter().find(|c| c["componentType"] == "Cache")).cloned();
    assert_eq!(cache.map(|c| c["status"].clone()), Some(serde_json::json!("Down")));
    assert!(!body.to_string().contains("refused"), "no error details on a public endpoint");
    redis.start().expect("restart redis");
    served.wait_ready_status(200, SLACK).await.expect("ready again after Redis returns");

    postgres.stop();
    let body = served.wait_for_check("postgres:connectivity", "fail", SLACK).await.expect("PostgreSQL reported down");
    assert_eq!(body["status"], "fail", "{body}");
    assert_eq!(check_status(&body, "outbox:oldest_pending_age"), "skipped", "{body}");
    let (code, _) = served.get_json("/healthchecks").await;
    assert_eq!(code, 503, "the API cannot reach its database");
    postgres.start().expect("restart postgres");
    served.wait_ready_status(200, SLACK).await.expect("ready again after PostgreSQL returns");
}
