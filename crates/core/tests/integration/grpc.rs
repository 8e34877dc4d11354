//! gRPC health on the service's own port: `Check` and `Watch` for `""` (liveness) and `"ready"`
//! (the ladder), over HTTP/2 with prior knowledge next to HTTP/1.1, through a drain.

use std::time::Duration;

use caracal_core::Rung;
use caracal_core::config::Mode;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

use crate::support::{self, Switch};

async fn client(base: &str) -> HealthClient<tonic::transport::Channel> {
    let channel = tonic::transport::Endpoint::from_shared(base.to_string())
        .expect("endpoint")
        .connect()
        .await
        .expect("an h2c connection to the service's own port");
    HealthClient::new(channel)
}

async fn check(
    client: &mut HealthClient<tonic::transport::Channel>,
    service: &str,
) -> Result<ServingStatus, tonic::Code> {
    client
        .check(HealthCheckRequest { service: service.into() })
        .await
        .map(|r| r.into_inner().status())
        .map_err(|s| s.code())
}

#[tokio::test(flavor = "multi_thread")]
async fn check_and_watch_follow_liveness_and_the_ladder_and_a_drain() {
    let switch = Switch::new(true);
    let config = support::core_config(Mode::Dev);
    let interval = config.checks.interval;
    let app = support::app(config).check(switch.check("app:thing", Rung::Service));
    let served = support::serve(app).await;
    served.wait_ready_status(200, Duration::from_secs(10)).await.expect("ready");
    let mut grpc = client(&served.base).await;

    assert_eq!(check(&mut grpc, "").await, Ok(ServingStatus::Serving), "liveness");
    assert_eq!(check(&mut grpc, "ready").await, Ok(ServingStatus::Serving), "readiness");
    assert_eq!(check(&mut grpc, "nope").await, Err(tonic::Code::NotFound), "an unknown service");
    // HTTP/1.1 on the very same listener.
    assert_eq!(served.get("/health").await.status(), 200);

    let mut watch = grpc.watch(HealthCheckRequest { service: "ready".into() }).await.expect("watch").into_inner();
    let first = watch.message().await.expect("a message").expect("the current status");
    assert_eq!(first.status(), ServingStatus::Serving, "Watch starts with the current status");

    // A failing required check: /ready says 503 and gRPC says NOT_SERVING, from the same snapshot.
    let runs = switch.runs();
    switch.set(false);
    let next = tokio::time::timeout(Duration::from_secs(10), watch.message())
        .await
        .expect("a change within the check interval")
        .expect("stream")
        .expect("a message");
    assert_eq!(next.status(), ServingStatus::NotServing);
    assert_eq!(served.get("/ready").await.status(), 503);
    assert_eq!(check(&mut grpc, "ready").await, Ok(ServingStatus::NotServing));
    assert_eq!(check(&mut grpc, "").await, Ok(ServingStatus::Serving), "liveness does not follow readiness");

    // A gRPC probe storm never runs a check: only the evaluator's schedule does. The probes'
    // own pace varies with the machine (a debug build on a busy CI runner), so the allowance
    // is the schedule's over the time they took: one run per 0.9 interval, plus one.
    let before = switch.runs();
    let started = std::time::Instant::now();
    for _ in 0..500 {
        let _ = check(&mut grpc, "ready").await;
    }
    let scheduled = started.elapsed().as_secs_f64() / (interval.as_secs_f64() * 0.9);
    let ran = switch.runs() - before;
    assert!(
        ran as f64 <= scheduled + 1.0,
        "checks ran on their schedule, not per probe: {ran} runs during 500 probes, {scheduled:.1} scheduled ({runs} before)"
    );

    switch.set(true);
    let back = tokio::time::timeout(Duration::from_secs(10), watch.message())
        .await
        .expect("a change")
        .expect("stream")
        .expect("a message");
    assert_eq!(back.status(), ServingStatus::Serving);

    // A drain fails "ready" at once, as it fails /ready.
    served.running.drain();
    let drained = tokio::time::timeout(Duration::from_secs(2), watch.message())
        .await
        .expect("NOT_SERVING right after the drain starts")
        .expect("stream")
        .expect("a message");
    assert_eq!(drained.status(), ServingStatus::NotServing);
}

#[tokio::test(flavor = "multi_thread")]
async fn check_reads_a_name_past_its_first_buffer_and_refuses_an_oversized_request() {
    let served = support::serve(support::app(support::core_config(Mode::Dev))).await;
    served.wait_ready_status(200, Duration::from_secs(10)).await.expect("ready");
    let mut grpc = client(&served.base).await;

    // The codec starts with 128-byte buffers: a longer name is read whole, then not found.
    let long = "s".repeat(1_000);
    assert_eq!(check(&mut grpc, &long).await, Err(tonic::Code::NotFound), "a 1,000-byte name is read");
    // Past the limit the request is refused unread, and the connection goes on serving.
    let huge = "s".repeat(caracal_core::grpc_health::MAX_REQUEST_BYTES + 1);
    assert_eq!(check(&mut grpc, &huge).await, Err(tonic::Code::OutOfRange), "a request over the limit");
    let watched = grpc.watch(HealthCheckRequest { service: huge }).await.map(|_| ()).map_err(|s| s.code());
    assert_eq!(watched, Err(tonic::Code::OutOfRange), "Watch has the same limit");
    assert_eq!(check(&mut grpc, "ready").await, Ok(ServingStatus::Serving), "the same connection still answers");
}
