//! Traces as an operator follows them: the built api, coordinator and audit export OTLP/HTTP to
//! a collector that decodes every export with the official protobuf definitions
//! (`opentelemetry-proto`). A registration sent with a `traceparent` must come back as one
//! trace — the api's SERVER span and its database spans, the relay's `create` span, the audit
//! consumer's `process` span and ledger insert — whose id `GET /v1/events` shows; a probe and a
//! federation scrape must carry their context to the target; a 5xx must be an error; sampling
//! must follow the caller; and a collector that dies must cost requests nothing and have its
//! lost spans counted.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::http::HeaderMap;
use axum::routing::get;
use caracal_testkit::ServiceProcess;
use caracal_testkit::otlp::{Collector, Span};

use crate::support::{self, Stores};

const API: &str = env!("CARGO_BIN_EXE_caracal-api");
const COORDINATOR: &str = env!("CARGO_BIN_EXE_caracal-coordinator");
const AUDIT: &str = env!("CARGO_BIN_EXE_caracal-audit");
const GATEWAY: &str = env!("CARGO_BIN_EXE_caracal-gateway");

/// A watched service that answers 200 (and an exposition on `/metrics`) and keeps every
/// `traceparent` it was sent, with the path.
async fn recording_target() -> (String, Arc<Mutex<Vec<(String, String)>>>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let record = |seen: Arc<Mutex<Vec<(String, String)>>>, path: &'static str, body: &'static str| {
        move |headers: HeaderMap| {
            let seen = Arc::clone(&seen);
            async move {
                if let Some(value) = headers.get("traceparent").and_then(|v| v.to_str().ok()) {
                    seen.lock().unwrap().push((path.to_string(), value.to_string()));
                }
                body
            }
        }
    };
    let app = Router::new()
        .route("/health", get(record(Arc::clone(&seen), "/health", "ok")))
        .route("/ready", get(record(Arc::clone(&seen), "/ready", "ok")))
        .route("/metrics", get(record(Arc::clone(&seen), "/metrics", "shop_orders_total 3\n")));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move { axum::serve(listener, app).await });
    (format!("http://{addr}"), seen)
}

/// Waits until the collector holds a span `find` picks, and returns it.
async fn span(collector: &Collector, what: &str, find: impl Fn(&Span) -> bool) -> Span {
    let found = caracal_testkit::wait_for(Duration::from_secs(20), Duration::from_millis(100), || {
        let spans = collector.spans();
        let found = spans.into_iter().find(&find);
        async move { found }
    })
    .await;
    match found {
        Ok(span) => span,
        Err(_) => panic!("no span for {what}; received:\n{:#?}", collector.spans()),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_registration_is_one_trace_from_the_api_through_the_relay_to_the_ledger() {
    let mut collector = Collector::start().await.expect("collector");
    let mut stores = Stores::start();
    support::migrate(&stores);
    let endpoint = collector.endpoint();
    let otel = ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str());
    let api = support::start(API, &stores, &[otel]).await;
    let coordinator = support::start(COORDINATOR, &stores, &[otel, ("CARACAL_COORDINATOR__REFRESH", "300ms")]).await;
    let audit = support::start(AUDIT, &stores, &[otel, ("CARACAL_AUDIT__BLOCK", "200ms")]).await;
    let gateway = support::start(GATEWAY, &stores, &[otel]).await;
    let (target, seen) = recording_target().await;
    let http = reqwest::Client::new();

    // The caller's trace: every span of the registration must join it.
    let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let caller = "00f067aa0ba902b7";
    let created = http
        .post(format!("{}/v1/targets", api.base))
        .header("traceparent", format!("00-{trace}-{caller}-01"))
        .json(&serde_json::json!({"name": "shop", "instances": [target], "interval_ms": 300, "timeout_ms": 250}))
        .send()
        .await
        .expect("register");
    assert_eq!(created.status(), 201);

    // The api: a SERVER span named for the route, a child of the caller's span.
    let server = span(&collector, "POST /v1/targets", |s| s.trace_id == trace && s.kind == "SERVER").await;
    assert_eq!(server.name, "POST /v1/targets");
    assert_eq!(server.parent_span_id, caller, "the caller's traceparent is the parent");
    assert_eq!(server.service, "caracal-api");
    for (key, want) in [
        ("http.request.method", "POST"),
        ("http.route", "/v1/targets"),
        ("url.path", "/v1/targets"),
        ("http.response.status_code", "201"),
    ] {
        assert_eq!(server.attribute(key), Some(want), "{key} on {server:#?}");
    }
    assert!(server.resource.contains_key("service.version"), "{:?}", server.resource);
    assert_eq!(server.resource.get("service.instance.id").map(String::len), Some(36), "{:?}", server.resource);
    // Its database work, as CLIENT children.
    let insert = span(&collector, "INSERT targets", |s| s.trace_id == trace && s.name == "INSERT targets").await;
    assert_eq!((insert.kind, insert.parent_span_id.as_str()), ("CLIENT", server.span_id.as_str()));
    assert_eq!(insert.attribute("db.system"), Some("postgresql"));
    assert_eq!(insert.attribute("db.operation.name"), Some("INSERT"));
    span(&collector, "INSERT outbox", |s| s.trace_id == trace && s.name == "INSERT outbox" && s.kind == "CLIENT").await;

    // The relay continues the trace for the row, and its batch span links to it.
    let create = span(&collector, "the relay's create", |s| {
        s.trace_id == trace
            && s.name == "create caracal.events"
            && s.attribute("caracal.event.type") == Some("target.created")
    })
    .await;
    assert_eq!((create.kind, create.service.as_str()), ("PRODUCER", "caracal-coordinator"));
    assert_eq!(create.attribute("messaging.destination.name"), Some("caracal.events"));
    let send = span(&collector, "the relay's batch", |s| {
        s.name == "send caracal.events" && s.links.contains(&(trace.to_string(), create.span_id.clone()))
    })
    .await;
    assert_eq!(send.kind, "PRODUCER");
    let pipeline = span(&collector, "the XADD pipeline", |s| s.parent_span_id == send.span_id).await;
    assert_eq!((pipeline.name.as_str(), pipeline.kind), ("PIPELINE", "CLIENT"));
    assert_eq!(pipeline.attribute("db.system"), Some("redis"));
    // The audit consumer continues it from the stream entry, and inserts the ledger row in it.
    let process = span(&collector, "the audit's process", |s| {
        s.trace_id == trace && s.name == "process caracal.events" && s.parent_span_id == create.span_id
    })
    .await;
    assert_eq!((process.kind, process.service.as_str()), ("CONSUMER", "caracal-audit"));
    assert_eq!(process.attribute("messaging.consumer.group.name"), Some("audit"));
    let ledger = span(&collector, "the ledger insert", |s| {
        s.trace_id == trace && s.name == "INSERT audit_events" && s.parent_span_id == process.span_id
    })
    .await;
    assert_eq!(ledger.kind, "CLIENT");

    // The ledger shows the trace id of each event.
    let events: serde_json::Value = http
        .get(format!("{}/v1/events?target=shop&type=target.created", audit.base))
        .send()
        .await
        .expect("events")
        .json()
        .await
        .expect("json");
    assert_eq!(events["events"][0]["trace_id"], trace, "{events}");

    // A probe carries its own trace to the target, which sees it; the coordinator's CLIENT span
    // for it is in that trace.
    let sent = caracal_testkit::wait_for(Duration::from_secs(20), Duration::from_millis(100), || {
        let first = seen.lock().unwrap().iter().find(|(path, _)| path != "/metrics").map(|(_, t)| t.clone());
        async move { first }
    })
    .await
    .expect("the target sees a traceparent on its probes");
    let probe_trace = sent.split('-').nth(1).expect("a traceparent").to_string();
    // (The trace also holds the status change the probe recorded, on its way to the ledger.)
    let get = span(&collector, "the probe's GET", |s| s.trace_id == probe_trace && s.name == "GET").await;
    assert_eq!((get.kind, get.service.as_str()), ("CLIENT", "caracal-coordinator"));
    assert_eq!(get.attribute("http.request.method"), Some("GET"));
    assert!(get.attribute("url.full").is_some_and(|u| u.starts_with(&target)), "{get:#?}");
    assert_eq!(get.attribute("http.response.status_code"), Some("200"));
    // One name for every probe (the fleet's size must not grow the set of span names): the
    // target and the instance are attributes.
    let probe = span(&collector, "the probe", |s| s.trace_id == probe_trace && s.kind == "INTERNAL").await;
    assert_eq!(probe.name, "probe", "{probe:#?}");
    assert_eq!(probe.attribute("caracal.target"), Some("shop"));
    assert!(probe.attribute("caracal.instance").is_some_and(|u| u.starts_with(&target)), "{probe:#?}");

    // A federation scrape carries the trace of the request that asked for it.
    let federation = "5c1d2e3f4a5b6c7d8e9f0a1b2c3d4e5f";
    let federated = caracal_testkit::wait_for(Duration::from_secs(20), Duration::from_millis(200), || async {
        let answer = http
            .get(format!("{}/v1/targets/shop/metrics", gateway.base))
            .header("traceparent", format!("00-{federation}-1111111111111111-01"))
            .send()
            .await
            .ok()?;
        (answer.status() == 200).then_some(())
    })
    .await;
    assert!(federated.is_ok(), "the gateway federates shop");
    assert!(
        seen.lock().unwrap().iter().any(|(path, t)| path == "/metrics" && t.contains(federation)),
        "the target's /metrics saw the federation request's trace: {:?}",
        seen.lock().unwrap()
    );
    let scrape = span(&collector, "the gateway's scrape", |s| s.trace_id == federation && s.name == "GET").await;
    assert_eq!((scrape.kind, scrape.service.as_str()), ("CLIENT", "caracal-gateway"));

    // Conventions across everything received: no generic names, no build-machine paths, no
    // probe endpoints (not traced by default), 4xx not an error on a server.
    let missing = http.get(format!("{}/v1/targets/nope", api.base)).send().await.expect("get");
    assert_eq!(missing.status(), 404);
    let not_found = span(&collector, "a 404", |s| s.name == "GET /v1/targets/{name}" && s.kind == "SERVER").await;
    assert_eq!(not_found.status, "UNSET");
    assert_eq!(not_found.attribute("http.response.status_code"), Some("404"));
    // No span name holds a value: neither a registered target's name nor an instance's URL.
    let registered: Vec<String> = http
        .get(format!("{}/v1/targets", api.base))
        .send()
        .await
        .expect("targets")
        .json::<Vec<serde_json::Value>>()
        .await
        .expect("json")
        .iter()
        .filter_map(|t| t["name"].as_str().map(String::from))
        .collect();
    assert!(registered.contains(&"shop".to_string()), "{registered:?}");
    for s in collector.spans() {
        let words: Vec<&str> = s.name.split(|c: char| !(c.is_ascii_alphanumeric() || "._-".contains(c))).collect();
        assert!(
            !registered.iter().any(|name| words.contains(&name.as_str())),
            "a span name holds a target's name: {s:#?}"
        );
        assert!(!s.name.contains("://"), "a span name holds a URL: {s:#?}");
        assert_ne!(s.name, "request", "{s:#?}");
        assert!(!s.attributes.keys().any(|k| k.starts_with("code.") || k.starts_with("thread.")), "{s:#?}");
        assert!(!s.attributes.values().any(|v| v.contains("/.cargo/") || v.contains("/src/")), "{s:#?}");
        assert!(!matches!(s.attribute("http.route"), Some("/ready" | "/health" | "/metrics")), "{s:#?}");
    }

    // A 5xx is an error on the server span: with its database stopped, a write answers 503.
    stores.postgres.stop();
    let refused = http
        .post(format!("{}/v1/targets", api.base))
        .json(&serde_json::json!({"name": "later", "instances": ["http://127.0.0.1:9/"]}))
        .send()
        .await
        .expect("a write without a database");
    assert_eq!(refused.status(), 503);
    let failed =
        span(&collector, "a 503", |s| s.kind == "SERVER" && s.attribute("http.response.status_code") == Some("503"))
            .await;
    assert_eq!((failed.name.as_str(), failed.status), ("POST /v1/targets", "ERROR"));
    assert_eq!(failed.attribute("error.type"), Some("503"));
    stores.postgres.start().expect("the database is back");

    // The collector dies: requests go on as before, and the spans it misses are counted.
    collector.stop();
    let started = Instant::now();
    for _ in 0..50 {
        let answer = http.get(format!("{}/v1/targets", api.base)).send().await.expect("list");
        assert_eq!(answer.status(), 200);
    }
    assert!(started.elapsed() < Duration::from_secs(10), "50 requests took {:?}", started.elapsed());
    let dropped = caracal_testkit::wait_for(Duration::from_secs(20), Duration::from_millis(200), || async {
        support::metric(&api.base, "caracal_telemetry_spans_dropped_total").await.filter(|n| *n > 0.0)
    })
    .await;
    assert!(dropped.is_ok(), "the api counts the spans the dead collector missed");

    for service in [api, coordinator, audit, gateway] {
        service.stop();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn sampling_follows_the_caller_and_probe_endpoints_are_traced_only_when_asked() {
    let collector = Collector::start().await.expect("collector");
    let stores = Stores::start();
    support::migrate(&stores);
    let endpoint = collector.endpoint();
    // Ratio 0: this service starts no trace of its own, but follows a caller's decision.
    let api = support::start(
        API,
        &stores,
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
            ("OTEL_SERVICE_NAME", "caracal-api-sampled"),
            ("OTEL_TRACES_SAMPLER_ARG", "0"),
            ("CARACAL_TELEMETRY__TRACE_PROBES", "true"),
        ],
    )
    .await;
    let http = reqwest::Client::new();
    let unsampled = http.get(format!("{}/v1/targets", api.base)).send().await.expect("list");
    assert_eq!(unsampled.status(), 200);
    let trace = "0af7651916cd43dd8448eb211c80319c";
    let ready = http
        .get(format!("{}/ready", api.base))
        .header("traceparent", format!("00-{trace}-b7ad6b7169203331-01"))
        .send()
        .await
        .expect("ready");
    assert_eq!(ready.status(), 200);
    let probe = span(&collector, "a traced /ready", |s| s.trace_id == trace).await;
    assert_eq!((probe.name.as_str(), probe.service.as_str()), ("GET /ready", "caracal-api-sampled"));
    // A second export interval: nothing else arrives (the requests without a caller's trace,
    // the readiness polls among them, were not sampled).
    tokio::time::sleep(Duration::from_secs(3)).await;
    let others: Vec<Span> = collector.spans().into_iter().filter(|s| s.trace_id != trace).collect();
    assert!(others.is_empty(), "ratio 0 starts no trace: {others:#?}");
    api.stop();
}

#[test]
fn bad_sampler_settings_stop_the_start_naming_the_variable() {
    for (name, value, key) in [
        ("OTEL_TRACES_SAMPLER", "jaeger_remote", "OTEL_TRACES_SAMPLER"),
        ("OTEL_TRACES_SAMPLER_ARG", "1.5", "telemetry.sample_ratio"),
    ] {
        let port = caracal_testkit::free_port().expect("port").to_string();
        let mut process = ServiceProcess::spawn(
            std::path::Path::new(API),
            &[],
            &[("PORT", port.as_str()), ("CARACAL_MODE", "dev"), (name, value)],
        )
        .expect("spawn");
        let status = process.wait_timeout(Duration::from_secs(20)).expect("it exits");
        assert_eq!(status.code(), Some(2), "{name}={value}: {}", process.stderr());
        let stderr = process.stderr();
        assert!(stderr.contains(key) && stderr.contains(name), "{name}={value}: {stderr}");
    }
}
