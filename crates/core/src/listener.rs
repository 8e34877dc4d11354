//! The HTTP listener every service runs: what a slow or greedy client can hold is bounded.
//!
//! - **Header-read timeout** (`http.header_read_timeout`, 10 s): a client that has not sent a
//!   request's whole header by then is disconnected. hyper arms it again after each response,
//!   so it is also the idle keep-alive timeout.
//! - **Connection cap** (`http.max_connections`, 1,024): beyond it, a connection is accepted
//!   into a small **probe reserve** (`http.probe_connections`, 64) that answers only the probe
//!   routes (`/health`, `/ready`, `/metrics`, gRPC health) — kubelet's probes are what keep a
//!   pod alive — with a short header timeout and no keep-alive; anything else there is a `503`
//!   (`overloaded`). Beyond the reserve, a connection is closed at once rather than queued.
//! - Every request carries the peer's address (`axum::extract::ConnectInfo<SocketAddr>`), for
//!   per-client limits.
//!
//! Stopping (`stop`) closes the listener and lets open connections finish their requests.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

use crate::config::HttpConfig;

/// How long a connection in the probe reserve may take to send its request's header.
const RESERVE_HEADER_TIMEOUT: Duration = Duration::from_secs(2);

/// The routers one listener serves: everything, and the probes alone (for the reserve).
#[derive(Clone)]
pub struct Routers {
    /// Every route.
    pub all: Router,
    /// The probe routes, and a `503` for the rest.
    pub probes: Router,
}

/// Accepts connections on `listener` until `stop`, serving them under `config`'s bounds; then
/// waits for open connections to finish (the caller bounds how long).
///
/// # Errors
/// Never, today: a failed accept (out of descriptors, a connection reset before it was
/// accepted) is logged and retried after a pause.
pub async fn serve(
    listener: TcpListener,
    routers: Routers,
    config: &HttpConfig,
    stop: CancellationToken,
) -> std::io::Result<()> {
    let general = Arc::new(Semaphore::new(config.max_connections.max(1)));
    let reserve = Arc::new(Semaphore::new(config.probe_connections));
    let graceful = GracefulShutdown::new();
    let header_timeout = config.header_read_timeout;
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // EMFILE and friends: pause rather than spin; the connections we hold
                    // finish meanwhile.
                    tracing::warn!(error = %e, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = stop.cancelled() => break,
        };
        let (router, permit, reserved) = match Arc::clone(&general).try_acquire_owned() {
            Ok(permit) => (routers.all.clone(), permit, false),
            Err(_) => match Arc::clone(&reserve).try_acquire_owned() {
                Ok(permit) => (routers.probes.clone(), permit, true),
                // Full, reserve included: closed now, never queued.
                Err(_) => {
                    drop(stream);
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let service = TowerToHyperService::new(router.map_request(move |mut request: axum::http::Request<_>| {
            request.extensions_mut().insert(ConnectInfo(peer));
            request
        }));
        let mut builder = auto::Builder::new(TokioExecutor::new());
        builder
            .http1()
            .timer(TokioTimer::new())
            .header_read_timeout(if reserved { RESERVE_HEADER_TIMEOUT.min(header_timeout) } else { header_timeout })
            .keep_alive(!reserved);
        builder
            .http2()
            .timer(TokioTimer::new())
            .keep_alive_interval(Some(header_timeout))
            .keep_alive_timeout(header_timeout);
        let connection = builder.serve_connection_with_upgrades(TokioIo::new(stream), service).into_owned();
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, %peer, "connection ended with an error");
            }
            drop(permit);
        });
    }
    drop(listener);
    graceful.shutdown().await;
    Ok(())
}

/// The answer to anything but a probe on a connection in the probe reserve.
pub(crate) async fn overloaded() -> axum::response::Response {
    use axum::response::IntoResponse;
    let body =
        serde_json::json!({"error": {"code": "overloaded", "message": "too many connections; try again shortly"}});
    (
        axum::http::StatusCode::SERVICE_UNAVAILABLE,
        [(axum::http::header::RETRY_AFTER, "1"), (axum::http::header::CONNECTION, "close")],
        axum::Json(body),
    )
        .into_response()
}
