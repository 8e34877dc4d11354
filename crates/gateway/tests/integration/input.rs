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
