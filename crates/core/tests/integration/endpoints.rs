//! The standard endpoints: shapes, privacy of details, metric names, golden signals.

use std::time::Duration;

use axum::Router;
use axum::routing::{get, post};
use caracal_core::Rung;
use caracal_core::config::{Mode, Secret};

use crate::support::{self, Switch, check_status};

const BEARER: &str = "s3cret-bearer";

async fn stable_app() -> (support::Served, Switch) {
    let failing = Switch::new(false);
    let mut core = support::core_config(Mode::Stable);
    core.metrics.bearer = Some(Secret::new(BEARER));
    core.http.body_limit_bytes = 1024;
    let routes = Router::new()
        .route("/items/{id}", get(|| async { "item" }))
        .route("/boom", get(boom))
        .route("/echo", post(|body: String| async move { body }));
    let app = support::app(core).check(failing.check("app:dependency", Rung::Service).required(false)).routes(routes);
    let served = support::serve(app).await;
    served.wait_for_check("app:dependency", "warn", Duration::from_secs(5)).await.expect("evaluated");
    (served, failing)
}

async fn boom() -> &'static str {
    panic!("handler bug")
}

#[tokio::test(flavor = "multi_thread")]
async fn ready_hides_details_unless_the_bearer_is_presented() {
    let (served, _) = stable_app().await;
    let public = served.get("/ready").await;
    assert_eq!(public.status(), 200);
    assert_eq!(public.headers()["content-type"], "application/health+json");
    assert_eq!(public.headers()["cache-control"], "no-store");
    let body: serde_json::Value = public.json().await.expect("json");
    assert_eq!(body["service"], "test");
    assert_eq!(body["version"], "0.0.0");
    assert_eq!(body["status"], "warn");
    let check = &body["checks"]["app:dependency"][0];
    assert_eq!(check["status"], "warn");
    assert!(check.get("output").is_none() && check.get("observedValue").is_none(), "no details in public: {body}");

    let private: serde_json::Value = serde_json::from_str(&scrape(&served, "/ready").await).expect("json");
    assert_eq!(private["checks"]["app:dependency"][0]["output"], "switched off");
    assert!(private["checks"]["app:dependency"][0]["time"].as_str().is_some_and(|t| t.ends_with('Z')));

    let verbose = served.get("/ready?verbose").await.text().await.expect("text");
    assert!(verbose.contains("[-]app:dependency warn (not required): reason withheld"), "{verbose}");

    let health: serde_json::Value = served.get("/health").await.json().await.expect("json");
    assert_eq!(health["status"], "pass");
}

#[tokio::test(flavor = "multi_thread")]
async fn golden_signals_use_route_templates_and_skip_probes() {
    let (served, _) = stable_app().await;
    for path in ["/items/1", "/items/2", "/items/3", "/nope", "/health", "/ready", "/ready/app:dependency"] {
        served.get(path).await;
    }
    let boom = served.get("/boom").await;
    assert_eq!(boom.status(), 500);
    let body: serde_json::Value = boom.json().await.expect("json");
    assert_eq!(body["error"]["code"], "internal", "a panic answers a stable code and no details");
    let big = served.http.post(served.url("/echo")).body("x".repeat(4096)).send().await.expect("request");
    assert_eq!(big.status(), 413);
    let nope: serde_json::Value = served.get("/nope").await.json().await.expect("json");
    assert_eq!(nope["error"]["code"], "not_found");
    assert!(served.get("/items/9").await.headers().contains_key("x-request-id"));

    let text = scrape(&served, "/metrics").await;
    assert!(text.contains(r#"http_server_requests_total{method="GET",route="/items/{id}",status="200"} 4"#), "{text}");
    assert!(text.contains(r#"http_server_requests_total{method="GET",route="unmatched",status="404"} 2"#), "{text}");
    assert!(text.contains(r#"http_server_requests_total{method="GET",route="/boom",status="500"} 1"#), "{text}");
    assert!(text.contains(r#"http_server_requests_total{method="POST",route="/echo",status="413"} 1"#), "{text}");
    assert!(
        text.contains(r#"http_server_request_duration_seconds_count{method="GET",route="/items/{id}"} 4"#),
        "{text}"
    );
    for probe in ["/health", "/ready", "/metrics"] {
        assert!(!text.contains(&format!("route=\"{probe}")), "probe {probe} must not be counted");
    }
    assert!(text.contains("http_server_requests_in_flight 0"), "{text}");
    for name in [
        "caracal_build_info{service=\"test\",version=\"0.0.0\",mode=\"stable\"} 1",
        "caracal_ready{service=\"test\"} 1",
        "caracal_check_up{check=\"app:dependency\",rung=\"service\"} 0",
        "caracal_check_failing{check=\"app:dependency\",rung=\"service\",required=\"false\"} 1",
        "caracal_check_duration_seconds_bucket{",
        "process_cpu_seconds_total",
        "process_resident_memory_bytes",
        "process_open_fds",
        "process_start_time_seconds",
    ] {
        assert!(text.contains(name), "missing {name}");
    }
    assert!(text.ends_with("# EOF\n"), "OpenMetrics text ends with # EOF");

    let json: serde_json::Value = serde_json::from_str(&scrape(&served, "/metrics.json").await).expect("json");
    let ready = json["metrics"]
        .as_array()
        .expect("metrics")
        .iter()
        .find(|m| m["name"] == "caracal_ready")
        .expect("caracal_ready");
    assert_eq!(ready["type"], "gauge");
    assert_eq!(ready["samples"][0]["labels"]["service"], "test");
    assert_eq!(ready["samples"][0]["value"], 1.0);
}

#[tokio::test(flavor = "multi_thread")]
async fn check_transitions_and_last_success_are_recorded() {
    let (served, failing) = stable_app().await;
    failing.set(true);
    served.wait_for_check("app:dependency", "pass", Duration::from_secs(5)).await.expect("passes");
    failing.set(false);
    served.wait_for_check("app:dependency", "warn", Duration::from_secs(5)).await.expect("fails again");
    let text = scrape(&served, "/metrics").await;
    let transitions = sample(&text, "caracal_check_transitions_total{check=\"app:dependency\"}");
    assert!(transitions >= 2.0, "fail -> pass -> fail is two transitions, got {transitions}");
    let last_success = sample(&text, "caracal_check_last_success_timestamp_seconds{check=\"app:dependency\"}");
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_secs_f64();
    assert!((now - 60.0..=now + 1.0).contains(&last_success), "last success {last_success} is recent (now {now})");
    let body = served.get("/ready").await.json::<serde_json::Value>().await.expect("json");
    assert_eq!(check_status(&body, "app:dependency"), "warn");
}

/// The value of the sample `series` (name and labels, exactly as exposed) in a scrape.
fn sample(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no sample {series} in:\n{text}"))
}

/// An authorized scrape of `path`.
async fn scrape(served: &support::Served, path: &str) -> String {
    served.http.get(served.url(path)).bearer_auth(BEARER).send().await.expect("scrape").text().await.expect("text")
}

/// A body over the limit is refused while the client may still be sending it; the answer says
/// the connection closes, so the client's next request goes on a new one instead of one the
/// server is about to close (which it would see fail without an answer).
#[tokio::test(flavor = "multi_thread")]
async fn an_oversized_body_is_answered_413_and_the_next_request_still_succeeds() {
    let (served, _) = stable_app().await;
    for round in 0..10 {
        let big = served.http.post(served.url("/echo")).body(vec![b'x'; 200_000]).send().await.expect("request");
        assert_eq!(big.status(), 413, "round {round}");
        assert_eq!(big.headers().get("connection").map(|v| v.as_bytes()), Some(&b"close"[..]), "round {round}");
        drop(big);
        let next = served.http.get(served.url("/items/1")).send().await.expect("the next request is answered");
        assert_eq!(next.status(), 200, "round {round}");
    }
}
