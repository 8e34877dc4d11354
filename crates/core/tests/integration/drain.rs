//! Draining and signals on the real example binary.

use std::time::{Duration, Instant};

use caracal_testkit::Signal;

use crate::support::Example;

/// Starts the example in rc mode with the given drain settings.
async fn start(drain_delay: &str, timeout: &str) -> Example {
    Example::start(&[
        ("CARACAL_MODE", "rc"),
        ("METRICS_BEARER", "drain-test"),
        ("CARACAL_SHUTDOWN__DRAIN_DELAY", drain_delay),
        ("CARACAL_SHUTDOWN__TIMEOUT", timeout),
        ("CARACAL_CHECKS__INTERVAL", "200ms"),
    ])
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_fails_readiness_at_once_finishes_in_flight_work_and_exits_0() {
    let example = start("2s", "10s").await;
    let slow = {
        let request = example.http.get(example.url("/work?ms=3000"));
        tokio::spawn(async move { request.send().await.map(|r| r.status().as_u16()) })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let signalled = Instant::now();
    example.process.signal(Signal::SIGTERM);
    let unready = caracal_testkit::wait_for(Duration::from_secs(2), Duration::from_millis(5), || async {
        example.status("/ready").await.filter(|s| *s == 503)
    })
    .await;
    assert!(unready.is_ok(), "/ready turns 503 right after SIGTERM");
    assert!(signalled.elapsed() < Duration::from_millis(1800), "503 came within the drain delay, not after it");
    assert_eq!(example.status("/health").await, Some(200), "liveness holds during a drain");

    assert_eq!(slow.await.expect("join").expect("the in-flight request completes"), 200);
    let (status, process) = example.exit_within(Duration::from_secs(15)).await;
    let status = status.unwrap_or_else(|| panic!("exited within drain delay + timeout; stderr: {}", process.stderr()));
    assert_eq!(status.code(), Some(0), "stderr: {}", process.stderr());
    assert!(signalled.elapsed() >= Duration::from_secs(2), "the drain delay was honoured");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_second_signal_exits_at_once() {
    let example = start("30s", "10s").await;
    example.process.signal(Signal::SIGTERM);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(example.status("/ready").await, Some(503));
    let second = Instant::now();
    example.process.signal(Signal::SIGINT);
    let (status, process) = example.exit_within(Duration::from_secs(5)).await;
    let status = status.unwrap_or_else(|| panic!("did not exit at the second signal; stderr: {}", process.stderr()));
    assert_eq!(status.code(), Some(1));
    assert!(second.elapsed() < Duration::from_secs(5));
}

#[tokio::test(flavor = "multi_thread")]
async fn sigusr1_fails_liveness_and_drains() {
    let example = start("1s", "5s").await;
    example.process.signal(Signal::SIGUSR1);
    let unhealthy = caracal_testkit::wait_for(Duration::from_secs(2), Duration::from_millis(10), || async {
        example.status("/health").await.filter(|s| *s == 503)
    })
    .await;
    assert!(unhealthy.is_ok(), "/health turns 503 after SIGUSR1");
    assert_eq!(example.status("/ready").await, Some(503));
    let (status, process) = example.exit_within(Duration::from_secs(15)).await;
    assert_eq!(status.and_then(|s| s.code()), Some(0), "stderr: {}", process.stderr());
}
