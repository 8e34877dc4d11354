//! gRPC health (`grpc.health.v1.Health`, `Check` and `Watch`) on the service's own port, next to
//! HTTP: the listener speaks HTTP/1.1 and HTTP/2 with prior knowledge (h2c), as Kubernetes'
//! `grpc:` probes and `grpc_health_probe` expect.
//!
//! Service `""` answers from liveness (what `/health` says) and `"ready"` from the readiness
//! ladder: the very snapshot `/ready` renders, so a gRPC probe storm never reaches a
//! dependency either.
//!
//! - **`Check`** is answered from that snapshot on the spot, through tonic's own unary server
//!   (`tonic::server::Grpc`, which decodes, encodes and writes the trailers), with a codec
//!   whose buffers fit a health message. tonic-health's generated server would look the status
//!   up in its table behind an async lock and allocate two 8 KiB codec buffers per call; with
//!   the system allocator, each of those large allocations also consolidates its free lists.
//!   Those were a third to a half of what a `Check` cost beyond a `GET /ready`
//!   (docs/benchmarks.md).
//! - **`Watch`** is tonic-health's: it streams from its in-memory table, which one task keeps
//!   in step with the snapshot, the drain and the liveness flag.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::http::StatusCode;
use tokio_util::sync::CancellationToken;
use tonic::codec::{BufferSettings, Codec};
use tonic_health::ServingStatus;
use tonic_health::pb::{HealthCheckRequest, HealthCheckResponse};
use tonic_health::server::HealthReporter;
use tonic_prost::{ProstDecoder, ProstEncoder};

use crate::probes::Probes;

/// The service name whose status is the readiness ladder's.
pub const READY_SERVICE: &str = "ready";

/// Readiness can also change with time alone (a check's result turning stale), so the table is
/// looked at again at least this often; the look is two atomic loads and a cached render.
const RECHECK: Duration = Duration::from_secs(1);

/// The largest `Check` or `Watch` request read: a service name is a few bytes, and the
/// endpoint is open to anyone who can reach the port, so a larger one is refused
/// (`OUT_OF_RANGE`) unread.
pub const MAX_REQUEST_BYTES: usize = 4 * 1024;

/// The gRPC health routes, and the task that keeps `Watch`'s table current until `stop`.
pub(crate) fn routes(probes: Arc<Probes>, stop: CancellationToken) -> Router {
    let (reporter, watch) = tonic_health::server::health_reporter();
    let watch = watch.max_decoding_message_size(MAX_REQUEST_BYTES);
    tokio::spawn(follow(Arc::clone(&probes), reporter, stop));
    let check = tower::service_fn(move |request: axum::extract::Request| {
        let answer = Check(Arc::clone(&probes));
        async move {
            let mut grpc = tonic::server::Grpc::new(HealthCodec).max_decoding_message_size(MAX_REQUEST_BYTES);
            Ok::<_, Infallible>(grpc.unary(answer, request).await)
        }
    });
    // Exact paths: `Check` here, `Watch` (and only `Watch`) to tonic-health's server.
    Router::new()
        .route_service("/grpc.health.v1.Health/Check", check)
        .route_service("/grpc.health.v1.Health/Watch", watch)
}

/// One `Check` call, answered from the current snapshot (no lock, no table).
struct Check(Arc<Probes>);

impl tonic::server::UnaryService<HealthCheckRequest> for Check {
    type Response = HealthCheckResponse;
    type Future = std::future::Ready<Result<tonic::Response<HealthCheckResponse>, tonic::Status>>;

    fn call(&mut self, request: tonic::Request<HealthCheckRequest>) -> Self::Future {
        let (live, ready) = statuses(&self.0);
        let status = match request.get_ref().service.as_str() {
            "" => live,
            READY_SERVICE => ready,
            // What tonic-health (and grpc-go) answer for a name they do not serve.
            _ => return std::future::ready(Err(tonic::Status::not_found("service not registered"))),
        };
        let status = tonic_health::pb::health_check_response::ServingStatus::from(status);
        std::future::ready(Ok(tonic::Response::new(HealthCheckResponse { status: status.into() })))
    }
}

/// Protobuf for `Check`, with buffers sized for its messages (a request is a service name, an
/// answer 2 bytes): they grow when a request is larger, up to [`MAX_REQUEST_BYTES`].
#[derive(Debug, Clone, Copy)]
struct HealthCodec;

/// 128 bytes to start with instead of tonic's 8 KiB; the yield threshold is tonic's default.
fn buffers() -> BufferSettings {
    BufferSettings::new(128, 32 * 1024)
}

impl Codec for HealthCodec {
    type Encode = HealthCheckResponse;
    type Decode = HealthCheckRequest;
    type Encoder = ProstEncoder<HealthCheckResponse>;
    type Decoder = ProstDecoder<HealthCheckRequest>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstEncoder::new(buffers())
    }

    fn decoder(&mut self) -> Self::Decoder {
        ProstDecoder::new(buffers())
    }
}

/// What the two services say now.
fn statuses(probes: &Probes) -> (ServingStatus, ServingStatus) {
    let serving = |yes: bool| if yes { ServingStatus::Serving } else { ServingStatus::NotServing };
    let live = !probes.lifecycle.is_unhealthy();
    let ready = !probes.lifecycle.is_draining() && probes.ready_code() == StatusCode::OK;
    (serving(live), serving(ready))
}

/// Publishes a status only when it changes, so `Watch` streams send changes and nothing else.
async fn follow(probes: Arc<Probes>, reporter: HealthReporter, stop: CancellationToken) {
    let mut published = probes.evaluator.subscribe();
    let mut last = None;
    loop {
        let now = statuses(&probes);
        if last != Some(now) {
            reporter.set_service_status("", now.0).await;
            reporter.set_service_status(READY_SERVICE, now.1).await;
            last = Some(now);
        }
        tokio::select! {
            changed = published.changed() => if changed.is_err() { return },
            () = probes.lifecycle.drain_started() , if !probes.lifecycle.is_draining() => {}
            () = tokio::time::sleep(RECHECK) => {}
            () = stop.cancelled() => return,
        }
    }
}
