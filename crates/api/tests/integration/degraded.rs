//! A degraded instance as the API shows it: `/v1/status`, the target, the status page (amber,
//! the sentence, a filter), `/healthchecks` for a platform service; and the `degraded` block's
//! validation.

use std::time::Duration;

use caracal_core::Mode;
use serde_json::json;

use crate::support::{self, ADMIN};

const DETAIL: &str = "p50 154 ms over the last 12 probes against its own 4.1 ms over the 48 before";

/// Records `name`'s instances as the coordinator records a verdict.
async fn degrade(pool: &sqlx::PgPool, name: &str) {
    sqlx::query(
        "INSERT INTO instance_status (instance_id, status, last_error, degraded) \
         SELECT i.id, 'degraded', 'latency: ' || $2, jsonb_build_object('reason', 'latency', 'detail', $2::text) \
         FROM instances i JOIN targets t ON t.id = i.target_id WHERE t.name = $1",
    )
    .bind(name)
    .bind(DETAIL)
    .execute(pool)
    .await
    .expect("degraded");
}

async fn post(served: &caracal_testkit::app::Served, body: serde_json::Value) -> (u16, serde_json::Value) {
    let response =
        served.http.post(served.url("/v1/targets")).bearer_auth(ADMIN).json(&body).send().await.expect("post");
    let status = response.status().as_u16();
    (status, response.json().await.expect("json"))
}

async fn get(served: &caracal_testkit::app::Served, path: &str) -> serde_json::Value {
    let response = served.http.get(served.url(path)).bearer_auth(ADMIN).send().await.expect("get");
    assert_eq!(response.status(), 200, "{path}");
    response.json().await.expect("json")
}

#[tokio::test(flavor = "multi_thread")]
async fn a_degraded_instance_shows_its_reason_everywhere() {
    let (served, pool) = support::api(Mode::Stable).await;
    let (status, _) = post(&served, json!({"name": "shop", "instances": ["http://127.0.0.1:9/a"]})).await;
    assert_eq!(status, 201);
    let (status, calm) =
        post(&served, json!({"name": "calm", "instances": ["http://127.0.0.1:9/b"], "degraded": {"error_window": 30}}))
            .await;
    assert_eq!(status, 201);
    assert_eq!(calm["degraded"]["error_window"], 30);
    assert_eq!(calm["degraded"]["latency_factor"], 3.0, "every default answered: {calm}");
    degrade(&pool, "shop").await;

    let page = get(&served, "/v1/status").await;
    let of = |url: &str| page["instances"].as_array().and_then(|a| a.iter().find(|i| i["instance"] == url)).cloned();
    let shop = of("http://127.0.0.1:9/a").expect("listed");
    assert_eq!(shop["status"], "degraded");
    assert_eq!(shop["degraded"]["reason"], "latency");
    assert_eq!(shop["degraded"]["detail"], DETAIL);
    assert_eq!(shop["degraded"]["since"], shop["since"]);
    assert!(of("http://127.0.0.1:9/b").expect("listed")["degraded"].is_null());

    let target = get(&served, "/v1/targets/shop").await;
    assert_eq!(target["degraded_instances"][0]["instance"], "http://127.0.0.1:9/a");
    assert_eq!(target["degraded_instances"][0]["reason"], "latency");
    assert_eq!(get(&served, "/v1/targets/calm").await["degraded_instances"], json!([]));

    // The status page, public: amber badge, the sentence, and a filter to its targets.
    let mut body = String::new();
    for _ in 0..100 {
        body = served.http.get(served.url("/status")).send().await.expect("page").text().await.expect("body");
        if body.contains("instance degraded") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(body.contains("b-degraded") && body.contains("▲</span> degraded"), "{body}");
    assert!(body.contains(DETAIL), "the sentence: {body}");
    assert!(body.contains("href=\"/status?only=degraded\""), "{body}");
    let only =
        served.http.get(served.url("/status?only=degraded")).send().await.expect("page").text().await.expect("body");
    assert!(only.contains("id=\"t-shop\"") && !only.contains("id=\"t-calm\""), "{only}");
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_degraded_blocks_are_refused_naming_the_field() {
    let (served, pool) = support::api(Mode::Stable).await;
    for (block, field) in [
        (json!({"latency_factor": 0.5}), "degraded.latency_factor"),
        (json!({"error_window": 0}), "degraded.error_window"),
        (json!({"flap_window": -4}), "degraded.flap_window"),
        (json!({"error_ratio": 0}), "degraded.error_ratio"),
        (json!({"outlier_factor": -1}), "degraded.outlier_factor"),
        (json!({"window": 20}), "degraded"),
        (json!({"detectors": ["slowness"]}), "degraded"),
    ] {
        let (status, body) =
            post(&served, json!({"name": "shop", "instances": ["http://127.0.0.1:9/a"], "degraded": block})).await;
        assert_eq!(status, 422, "{block}: {body}");
        assert_eq!(body["error"]["code"], "validation_failed");
        assert!(body["error"]["field"].as_str().unwrap_or("").starts_with(field), "{block}: {body}");
    }
    assert_eq!(support::counts(&pool).await.0, 0, "nothing was written");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_degraded_platform_service_makes_the_service_entry_degraded() {
    let shared = support::shared();
    let sections = json!({"api": {"platform": {"sts": ["http://127.0.0.1:9/sts"]}}});
    let (served, pool) = support::api_on(&shared.postgres, &shared.redis, Mode::Stable, sections).await;
    caracal_testkit::wait_for(Duration::from_secs(10), Duration::from_millis(100), || async {
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM targets").fetch_one(&pool).await.ok()?;
        (n == 1).then_some(())
    })
    .await
    .expect("the platform registered");
    degrade(&pool, "sts").await;
    // The summary is refreshed every 5 s.
    let entry = caracal_testkit::wait_for(Duration::from_secs(15), Duration::from_millis(200), || async {
        let (code, body) = served.get_json("/healthchecks").await;
        let entry = body.as_array()?.iter().find(|e| e["type"] == "Service")?.clone();
        (entry["status"] == "Degraded").then_some((code, entry))
    })
    .await
    .expect("the Service entry degraded");
    assert_eq!(entry.0, 218, "{:?}", entry.1);
}
