//! gRPC health (`grpc.health.v1.Health`, `Check` and `Watch`) on the service's own port, next to
//! HTTP: the listener speaks HTTP/1.1 and HTTP/2 with prior knowledge (h2c), as Kubernetes'
//! `grpc:` probes and `grpc_health_probe` expect.
//!
//! Service `""` answers from liveness (what `/health` says) and `"ready"` from the readiness
//! ladder: the very snapshot `/ready` renders, so a gRPC probe storm never reaches a
//! dependency either. tonic-health serves both methods from its in-memory table; one task keeps
//! that table in step with the snapshot, the drain and the liveness flag.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::http::StatusCode;
use tokio_util::sync::CancellationToken;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

use crate::probes::Probes;

/// The service name whose status is the readiness ladder's.
pub const READY_SERVICE: &str = "ready";

/// Readiness can also change with time alone (a check's result turning stale), so the table is
/// looked at again at least this often; the look is two atomic loads and a cached render.
const RECHECK: Duration = Duration::from_secs(1);

/// The gRPC health routes, and the task that keeps their answers current until `stop`.
pub(crate) fn routes(probes: Arc<Probes>, stop: CancellationToken) -> Router {
    let (reporter, server) = tonic_health::server::health_reporter();
    tokio::spawn(follow(probes, reporter, stop));
    Router::new().route_service("/grpc.health.v1.Health/{*method}", server)
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
