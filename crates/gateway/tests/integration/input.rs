//! Malformed input and missing credentials: a 4xx with a stable code, never a 5xx.

use crate::support::{ADMIN, BEARER, Behaviour, gateway, instance};

/// A request and its answer: (path, headers, status, code).
type Case<'a> = (String, Vec<(&'a str, &'a str)>, u16, &'a str);

#[tokio::test(flavor = "multi_thread")]
async fn malformed_requests_are_4xx_with_stable_codes() {
    let gw = gateway(serde_json::json!({ "max_matchers": 8 })).await;
    let a = instance(Behaviour::Text("a 1\n".into()), BEARER).await;
    gw.register("shop", serde_json::json!({}), 500, &[a]).await;
    let huge_match = format!("/v1/targets/shop/metrics?match[]={}", "a".repeat(5000));
    let many =
        format!("/v1/targets/shop/metrics?{}", (0..9).map(|i| format!("match[]=m{i}")).collect::<Vec<_>>().join("&"));
    let cases: Vec<Case<'_>> = vec![
        ("/v1/targets/shop/metrics?match[]=(unclosed".into(), vec![], 400, "bad_match"),
        (huge_match, vec![], 400, "bad_match"),
        (many, vec![], 400, "bad_match"),
        ("/v1/targets/shop/metrics?match[]=a{1000}{1000}".into(), vec![], 400, "bad_match"),
        ("/v1/targets/shop/metrics?metrics_path=no-slash".into(), vec![], 400, "bad_metrics_path"),
        ("/v1/targets/shop/metrics?metrics_path=/a/../b".into(), vec![], 400, "bad_metrics_path"),
        ("/v1/metrics?label=oops".into(), vec![], 400, "bad_selector"),
        ("/v1/metrics?label=bad-key=1".into(), vec![], 400, "bad_selector"),
        ("/v1/metrics".into(), vec![], 400, "bad_selector"),
        ("/v1/targets/shop/metrics".into(), vec![("accept", "application/json")], 406, "not_acceptable"),
        (
            "/v1/targets/shop/metrics".into(),
            vec![("x-prometheus-scrape-timeout-seconds", "soon")],
            400,
            "bad_timeout_header",
        ),
        ("/v1/targets/shop/metrics?only_target_metrics=maybe".into(), vec![], 400, "bad_query"),
        ("/v1/targets/nobody/metrics".into(), vec![], 404, "not_found"),
    ];
    for (path, headers, want, code) in cases {
        let (status, _, body) = gw.federate(&path, &headers).await;
        let json: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
        assert_eq!((status, json["error"]["code"].as_str()), (want, Some(code)), "{path:.80}: {body:.300}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn federation_needs_the_metrics_bearer_or_a_token() {
    let gw = gateway(serde_json::json!({})).await;
    let url = gw.served.url("/v1/targets/shop/metrics");
    let http = &gw.served.http;
    assert_eq!(http.get(&url).send().await.expect("get").status(), 401, "nothing presented");
    assert_eq!(http.get(&url).bearer_auth("wrong").send().await.expect("get").status(), 401);
    assert_eq!(
        http.get(&url).bearer_auth(BEARER).send().await.expect("get").status(),
        404,
        "the bearer passes (no such target)"
    );
    assert_eq!(
        http.get(&url).bearer_auth(ADMIN).send().await.expect("get").status(),
        404,
        "the admin token passes too"
    );
    let (status, _) = gw.served.get_json("/openapi.json").await;
    assert_eq!(status, 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn nothing_of_the_callers_request_reaches_instances() {
    use std::sync::{Arc, Mutex};
    let gw = gateway(serde_json::json!({})).await;
    let seen: Arc<Mutex<Vec<(String, String)>>> = Arc::default();
    let recorder = Arc::clone(&seen);
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move |headers: axum::http::HeaderMap| {
            let recorder = Arc::clone(&recorder);
            async move {
                let mut all = recorder.lock().expect("lock");
                all.extend(headers.iter().map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").to_string())));
                "seen 1\n"
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    tokio::spawn(async move { axum::serve(listener, app).await });
    gw.register("spy", serde_json::json!({}), 500, &[url]).await;
    // The caller presents the admin token (not the metrics bearer) and headers of its own.
    let response = gw
        .served
        .http
        .get(gw.served.url("/v1/targets/spy/metrics"))
        .bearer_auth(ADMIN)
        .header("x-secret", "caller-secret")
        .header("cookie", "session=caller")
        .send()
        .await
        .expect("federate");
    assert_eq!(response.status(), 200);
    let seen = seen.lock().expect("lock").clone();
    let authorization: Vec<&str> = seen.iter().filter(|(k, _)| k == "authorization").map(|(_, v)| v.as_str()).collect();
    assert_eq!(authorization, [format!("Bearer {BEARER}").as_str()], "only the platform's metrics bearer");
    assert!(
        !seen.iter().any(|(k, v)| k == "x-secret" || k == "cookie" || v.contains("caller") || v.contains(ADMIN)),
        "{seen:?}"
    );
}
