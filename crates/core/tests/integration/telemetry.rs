//! OTLP: with `OTEL_EXPORTER_OTLP_ENDPOINT` set, the example exports its request spans over
//! OTLP/HTTP (flushed at shutdown), decoded here with the official protobuf definitions:
//! `{method} {route}` SERVER spans named for the program, and none for the probe endpoints.

use std::time::Duration;

use caracal_testkit::Signal;
use caracal_testkit::otlp::Collector;

use crate::support::Example;

#[tokio::test(flavor = "multi_thread")]
async fn request_spans_reach_an_otlp_collector_and_probes_do_not() {
    let collector = Collector::start().await.expect("collector");
    let endpoint = collector.endpoint();
    let example = Example::start(&[("CARACAL_MODE", "dev"), ("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint)]).await;
    for _ in 0..5 {
        assert_eq!(example.status("/health").await, Some(200));
        assert_eq!(example.status("/ready").await, Some(200));
    }
    assert_eq!(example.status("/work?ms=1").await, Some(200));
    example.process.signal(Signal::SIGTERM);
    let (status, process) = example.exit_within(Duration::from_secs(20)).await;
    assert_eq!(status.and_then(|s| s.code()), Some(0), "stderr: {}", process.stderr());

    let spans = collector.spans();
    assert!(!spans.is_empty(), "no OTLP export arrived; stderr: {}", process.stderr());
    let work = spans.iter().find(|s| s.name == "GET /work").unwrap_or_else(|| panic!("no GET /work span: {spans:#?}"));
    assert_eq!(work.kind, "SERVER");
    assert_eq!(work.attribute("http.route"), Some("/work"));
    assert_eq!(work.attribute("url.path"), Some("/work"));
    // The program's file name, as an OpenTelemetry SDK names an unnamed service.
    assert_eq!(work.service, "service");
    assert!(
        !spans.iter().any(|s| ["/ready", "/health"].iter().any(|p| s.name.ends_with(p))),
        "probe endpoints are not traced: {spans:#?}"
    );
}
