//! The platform watches itself: its own services are registered as targets (label
//! `caracal=platform`) at start-up, and a worker keeps a cached summary of their status for
//! `/healthchecks`.

use std::sync::atomic::{AtomicU8, Ordering};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::config::ApiConfig;

/// A summary of the platform's own instances.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Fleet {
    /// No platform instance probed yet (or none registered).
    Empty,
    /// Every instance up.
    AllUp,
    /// Some instance not up (down, unready, or live but degraded).
    SomeDown,
    /// No instance live and ready (up or degraded).
    AllDown,
}

/// The latest summary, written by the worker, read by `/healthchecks`.
#[derive(Debug, Default)]
pub struct PlatformView {
    fleet: AtomicU8,
}

impl PlatformView {
    pub(crate) fn fleet(&self) -> Fleet {
        match self.fleet.load(Ordering::Relaxed) {
            1 => Fleet::AllUp,
            2 => Fleet::SomeDown,
            3 => Fleet::AllDown,
            _ => Fleet::Empty,
        }
    }

    fn set(&self, fleet: Fleet) {
        self.fleet.store(fleet as u8, Ordering::Relaxed);
    }
}

/// Registers the configured platform services (once; an existing target of that name is left
/// as the operator has it), then refreshes the summary every `every` until `stop`.
pub(crate) async fn run(
    pool: sqlx::PgPool,
    config: ApiConfig,
    view: std::sync::Arc<PlatformView>,
    stop: CancellationToken,
    every: Duration,
) {
    // Even with no platform configured: settling releases targets an earlier configuration named.
    let mut registered = false;
    loop {
        if !registered {
            match register(&pool, &config).await {
                Ok(()) => registered = true,
                Err(e) => tracing::warn!(error = %e, "registering the platform's own services failed; will retry"),
            }
        }
        match summary(&pool).await {
            Ok(fleet) => view.set(fleet),
            Err(e) => tracing::debug!(error = %e, "reading the platform's status failed"),
        }
        // While some service is not up (a start, a roll), look every second, so `/healthchecks`
        // turns 200 within a second of the coordinator seeing the last one up; the read is of
        // the platform's few instances only (a partial index), never the fleet.
        let next = if view.fleet() == Fleet::AllUp { every } else { every.min(Duration::from_secs(1)) };
        tokio::select! {
            () = tokio::time::sleep(next) => {}
            () = stop.cancelled() => return,
        }
    }
}

async fn register(pool: &sqlx::PgPool, config: &ApiConfig) -> Result<(), caracal_store::Error> {
    use caracal_store::registry::{self, Refused, Writer};
    for (name, urls) in &config.platform {
        let spec = caracal_store::target::TargetSpec {
            name: name.clone(),
            instances: urls.clone(),
            discovery: None,
            health_path: "/health".into(),
            ready_path: "/ready".into(),
            metrics_path: "/metrics".into(),
            interval_ms: 2_000,
            timeout_ms: 1_000,
            labels: [("caracal".to_string(), "platform".to_string())].into(),
            tls: None,
            grpc_service: None,
            credential: None,
            degraded: None,
        };
        match registry::create(pool, &spec, &Writer::Platform).await {
            Ok(_) => tracing::info!(target = %name, "registered a platform service as a target"),
            // An existing target of that name is left as the operator has it.
            Err(caracal_store::Error::Refused(Refused::Conflict(_))) => {}
            Err(e) => return Err(e),
        }
    }
    let names: Vec<String> = config.platform.keys().cloned().collect();
    registry::settle_platform(pool, &names).await
}

async fn summary(pool: &sqlx::PgPool) -> Result<Fleet, caracal_store::Error> {
    let counts = caracal_store::status::platform(pool).await?;
    let (total, up, live) = (counts.probed, counts.up, counts.serving);
    Ok(match (total, up, live) {
        (0, _, _) => Fleet::Empty,
        (t, u, _) if u == t => Fleet::AllUp,
        (_, _, 0) => Fleet::AllDown,
        _ => Fleet::SomeDown,
    })
}
