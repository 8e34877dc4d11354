//! Federation: N instances of every kind — text, OpenMetrics, overlapping and clashing labels,
//! slow, down, garbage, 401, over the cap — answered 200 with every good instance's samples.

use std::time::{Duration, Instant};

use crate::support::{BEARER, Behaviour, gateway, host_port, instance, nobody, samples, value};

const TEXT_BODY: &str = "# HELP shop_orders_total Orders taken.\n# TYPE shop_orders_total counter\n\
shop_orders_total{method=\"card\",team=\"checkout\"} 41\nshop_orders_total{method=\"cash\"} 2\n\
# TYPE shop_queue gauge\nshop_queue 7\n\
# TYPE shop_latency_seconds histogram\nshop_latency_seconds_bucket{le=\"0.1\"} 3\nshop_latency_seconds_bucket{le=\"+Inf\"} 5\n\
shop_latency_seconds_sum 1.25\nshop_latency_seconds_count 5\n";

const OPENMETRICS_BODY: &str = "# TYPE shop_orders counter\n# HELP shop_orders Orders taken.\n\
shop_orders_total{method=\"card\",instance=\"pod-b\"} 13 # {trace_id=\"x\"} 1\nshop_orders_created{method=\"card\",instance=\"pod-b\"} 1700000000\n\
# TYPE shop_queue gauge\nshop_queue 9\n# EOF\n";

#[tokio::test(flavor = "multi_thread")]
async fn every_good_instance_is_merged_and_every_bad_one_is_named() {
    let gw = gateway(serde_json::json!({ "instance_body_cap_bytes": 64 * 1024 })).await;
    let text = instance(Behaviour::Text(TEXT_BODY.into()), BEARER).await;
    let om = instance(Behaviour::OpenMetrics(OPENMETRICS_BODY.into()), BEARER).await;
    let slow = instance(Behaviour::Slow(Duration::from_secs(5)), BEARER).await;
    let down = nobody();
    let garbage = instance(Behaviour::Garbage, BEARER).await;
    let unauthorized = instance(Behaviour::Text("x 1\n".into()), "another-bearer").await;
    let huge = instance(Behaviour::Huge(200 * 1024), BEARER).await;
    let all = [&text, &om, &slow, &down, &garbage, &unauthorized, &huge].map(|s| s.to_string());
    gw.register("shop", serde_json::json!({"team": "payments", "env": "prod"}), 600, &all).await;

    let started = Instant::now();
    let (status, content_type, body) = gw.federate("/v1/targets/shop/metrics", &[]).await;
    assert_eq!(status, 200, "{body}");
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "instances are scraped concurrently, each with its own timeout"
    );
    assert!(content_type.starts_with("text/plain; version=0.0.4"), "{content_type}");
    let got = samples(&body);
    let (t, o) = (host_port(&text), host_port(&om));

    // Values and labels of the good instances.
    let card = [("method", "card"), ("instance", t.as_str()), ("target", "shop"), ("env", "prod")];
    assert_eq!(value(&got, "shop_orders_total", &card).as_deref(), Some("41"));
    assert_eq!(
        value(&got, "shop_orders_total", &[("method", "card"), ("team", "checkout"), ("exported_team", "payments")])
            .as_deref(),
        Some("41"),
        "the sample's own `team` is kept; ours is exported_team"
    );
    assert_eq!(value(&got, "shop_orders_total", &[("method", "cash"), ("team", "payments")]).as_deref(), Some("2"));
    assert_eq!(
        value(&got, "shop_orders_total", &[("instance", "pod-b"), ("exported_instance", o.as_str())]).as_deref(),
        Some("13"),
        "OpenMetrics input, its own `instance` label kept"
    );
    assert_eq!(value(&got, "shop_queue", &[("instance", t.as_str())]).as_deref(), Some("7"));
    assert_eq!(value(&got, "shop_queue", &[("instance", o.as_str())]).as_deref(), Some("9"));
    assert_eq!(
        value(&got, "shop_latency_seconds_bucket", &[("le", "+Inf"), ("instance", t.as_str())]).as_deref(),
        Some("5")
    );
    assert_eq!(body.matches("# TYPE shop_orders_total counter").count(), 1, "one TYPE per family");
    assert_eq!(body.matches("# HELP shop_orders_total ").count(), 1);

    // One federation series set per instance, with the right reasons.
    let reasons = [
        (&text, None),
        (&om, None),
        (&slow, Some("timeout")),
        (&down, Some("connect")),
        (&garbage, Some("parse")),
        (&unauthorized, Some("status")),
        (&huge, Some("too_large")),
    ];
    for (url, reason) in reasons {
        let instance = host_port(url);
        let who = [("target", "shop"), ("instance", instance.as_str())];
        let up = value(&got, "caracal_federation_up", &who);
        assert_eq!(up.as_deref(), Some(if reason.is_some() { "0" } else { "1" }), "{instance}");
        assert!(value(&got, "caracal_federation_scrape_duration_seconds", &who).is_some());
        assert!(value(&got, "caracal_federation_samples", &who).is_some());
        match reason {
            Some(reason) => {
                let with = [who[0], who[1], ("reason", reason)];
                assert_eq!(
                    value(&got, "caracal_federation_error", &with).as_deref(),
                    Some("1"),
                    "{instance}: {reason}"
                );
            }
            None => assert!(value(&got, "caracal_federation_error", &who).is_none()),
        }
    }
    assert_eq!(value(&got, "caracal_federation_samples", &[("instance", t.as_str())]).as_deref(), Some("7"));
    assert!(!body.contains("padding_metric") && !body.contains("slow 1"), "nothing of the failed instances");

    // OpenMetrics when asked, and only the target's own series.
    let (status, content_type, om_body) = gw
        .federate(
            "/v1/targets/shop/metrics?only_target_metrics",
            &[("accept", "application/openmetrics-text;version=1.0.0")],
        )
        .await;
    assert_eq!(status, 200);
    assert!(content_type.starts_with("application/openmetrics-text"), "{content_type}");
    assert!(om_body.ends_with("# EOF\n") && om_body.contains("# TYPE shop_orders counter\n"));
    assert!(!om_body.contains("caracal_federation"));
    let om_samples = samples(&om_body);
    assert_eq!(value(&om_samples, "shop_orders_created", &[("instance", "pod-b")]).as_deref(), Some("1700000000"));

    // match[] keeps only the named families.
    let (_, _, matched) =
        gw.federate("/v1/targets/shop/metrics?match[]=shop_queue&only_target_metrics=true", &[]).await;
    let names: Vec<String> = samples(&matched).into_iter().map(|(n, _, _)| n).collect();
    assert_eq!(names, ["shop_queue", "shop_queue"], "{matched}");
}

#[tokio::test(flavor = "multi_thread")]
async fn no_instance_answering_is_still_200_and_selectors_span_targets() {
    let gw = gateway(serde_json::json!({})).await;
    let a = instance(Behaviour::Text("# TYPE a gauge\na 1\n".into()), BEARER).await;
    let b = instance(Behaviour::Text("# TYPE b gauge\nb 2\n".into()), BEARER).await;
    gw.register("dead", serde_json::json!({"team": "x"}), 300, &[nobody()]).await;
    gw.register("one", serde_json::json!({"team": "y", "tier": "web"}), 300, std::slice::from_ref(&a)).await;
    gw.register("two", serde_json::json!({"team": "y"}), 300, std::slice::from_ref(&b)).await;

    let (status, _, body) = gw.federate("/v1/targets/dead/metrics", &[]).await;
    assert_eq!(status, 200, "even when no instance answered");
    assert!(body.contains("caracal_federation_up{target=\"dead\""), "{body}");

    let (status, _, body) = gw.federate("/v1/metrics?label=team=y", &[]).await;
    assert_eq!(status, 200, "{body}");
    let got = samples(&body);
    assert_eq!(value(&got, "a", &[("target", "one"), ("tier", "web")]).as_deref(), Some("1"));
    assert_eq!(value(&got, "b", &[("target", "two")]).as_deref(), Some("2"));
    assert!(!body.contains("target=\"dead\""));
    let (_, _, narrower) = gw.federate("/v1/metrics?label=team=y&label=tier=web", &[]).await;
    assert!(narrower.contains("target=\"one\"") && !narrower.contains("target=\"two\""), "{narrower}");
}

#[tokio::test(flavor = "multi_thread")]
async fn prometheus_timeout_header_caps_each_instance_and_registry_changes_show() {
    let gw = gateway(serde_json::json!({ "timeout_margin": "200ms" })).await;
    let slow = instance(Behaviour::Slow(Duration::from_secs(10)), BEARER).await;
    gw.register("slowpoke", serde_json::json!({}), 9_000, std::slice::from_ref(&slow)).await;
    let started = Instant::now();
    let (status, _, body) =
        gw.federate("/v1/targets/slowpoke/metrics", &[("x-prometheus-scrape-timeout-seconds", "1.5")]).await;
    assert_eq!(status, 200);
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "capped by the header, not the target's 9 s: {:?}",
        started.elapsed()
    );
    assert!(body.contains("reason=\"timeout\""), "{body}");

    let fresh = instance(Behaviour::Text("fresh 1\n".into()), BEARER).await;
    let (missing, _, _) = gw.federate("/v1/targets/late/metrics", &[]).await;
    assert_eq!(missing, 404);
    gw.register("late", serde_json::json!({}), 500, &[fresh]).await;
    let shown = caracal_testkit::wait_for(Duration::from_secs(5), Duration::from_millis(100), || async {
        let (status, _, body) = gw.federate("/v1/targets/late/metrics", &[]).await;
        (status == 200 && body.contains("fresh{")).then_some(())
    })
    .await;
    assert!(shown.is_ok(), "a registry change shows within seconds");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_registry_unreadable_is_503_only_without_a_copy() {
    let mut postgres = caracal_testkit::Postgres::start_default().expect("postgres");
    let gw = crate::support::gateway_on(&postgres, serde_json::json!({})).await;
    let a = instance(Behaviour::Text("a 1\n".into()), BEARER).await;
    gw.register("cached", serde_json::json!({}), 500, &[a]).await;
    let (status, _, _) = gw.federate("/v1/targets/cached/metrics", &[]).await;
    assert_eq!(status, 200);
    postgres.stop();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (status, _, body) = gw.federate("/v1/targets/cached/metrics", &[]).await;
    assert_eq!(status, 200, "the last copy serves while PostgreSQL is down: {body}");

    let postgres2 = caracal_testkit::Postgres::start_default().expect("postgres");
    let cold = crate::support::gateway_on(&postgres2, serde_json::json!({})).await;
    drop(postgres2);
    let (status, _, body) = cold.federate("/v1/targets/any/metrics", &[]).await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("registry_unavailable"));
}
