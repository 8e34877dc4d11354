//! OTLP: with `OTEL_EXPORTER_OTLP_ENDPOINT` set, the example exports its request spans over
//! OTLP/HTTP (flushed at shutdown); probe endpoints are not traced.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::http::HeaderMap;
use axum::routing::post;
use caracal_testkit::Signal;

use crate::support::Example;

/// One OTLP export: its content type and body.
type Export = (String, Vec<u8>);

#[tokio::test(flavor = "multi_thread")]
async fn request_spans_reach_an_otlp_collector_and_probes_do_not() {
    // A stand-in collector: records every OTLP/HTTP export it receives.
    let received: Arc<Mutex<Vec<Export>>> = Arc::default();
    let sink = Arc::clone(&received);
    let collector = Router::new().route(
        "/v1/traces",
        post(move |headers: HeaderMap, body: Bytes| {
            let sink = Arc::clone(&sink);
            async move {
                let kind = headers.get("content-type").and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
                sink.lock().expect("lock").push((kind, body.to_vec()));
                ""
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let endpoint = format!("http://{}", listener.local_addr().expect("addr"));
    tokio::spawn(async move { axum::serve(listener, collector).await });

    let example = Example::start(&[("CARACAL_MODE", "dev"), ("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint)]).await;
    for _ in 0..5 {
        assert_eq!(example.status("/health").await, Some(200));
        assert_eq!(example.status("/ready").await, Some(200));
    }
    assert_eq!(example.status("/work?ms=1").await, Some(200));
    example.process.signal(Signal::SIGTERM);
    let (status, process) = example.exit_within(Duration::from_secs(20)).await;
    assert_eq!(status.and_then(|s| s.code()), Some(0), "stderr: {}", process.stderr());

    let exports = received.lock().expect("lock").clone();
    assert!(!exports.is_empty(), "no OTLP export arrived; stderr: {}", process.stderr());
    assert!(exports.iter().all(|(kind, _)| kind == "application/x-protobuf"), "OTLP/HTTP protobuf");
    let all: Vec<u8> = exports.into_iter().flat_map(|(_, body)| body).collect();
    let has = |needle: &str| all.windows(needle.len()).any(|w| w == needle.as_bytes());
    assert!(has("/work"), "the /work request span was exported");
    assert!(has("example"), "spans carry the service name");
    assert!(!has("/ready") && !has("/health"), "probe endpoints are not traced");
}
