//! `caracal-audit`: the durable event ledger. A consumer in group `audit` reads
//! `caracal.events`, inserts each event once (keyed on its outbox id) and acknowledges only
//! after the commit; entries it cannot read go to `caracal.events.dlq` with the reason.
//!
//! # Layout
//! - [`config`]: [`AuditConfig`], the `[audit]` settings.
//! - [`consumer`]: the consumer loop, reclaiming entries a dead consumer left pending.
//! - `events` (private): `GET /v1/events`; `openapi` (private): `/openapi.json`.
//! - [`reconcile`]: keeps the ledger complete when the stream loses entries: the watermark,
//!   the gap (`caracal_audit_ledger_gap`, `audit:ledger_gap`) and healing from the outbox.
//! - [`metrics`]: the `caracal_audit_*` families.

pub mod config;
pub mod consumer;
mod events;
pub mod metrics;
mod openapi;
pub mod reconcile;

use axum::Router;
use axum::routing::get;
use caracal_core::RedisConnection;
use caracal_core::checks::{self, StreamGroup};
use caracal_core::{App, Check, Failure, Observed, Rung};
use caracal_store::retention::{RetentionConfig, Table};
use caracal_store::stream;

pub use caracal_store::ledger::PAGE as EVENTS_PAGE;
pub use config::{AuditConfig, LedgerConfig, OutboxRetention};

/// The default port.
pub const PORT: u16 = 9090;
/// The consumer group.
pub const GROUP: &str = "audit";

/// Adds the audit service to `app`: checks, the query route and the consumer worker.
///
/// # Errors
/// Configuration errors (missing URLs, bad `[audit]` settings, an unusable admin token).
pub fn build(app: App) -> Result<App, caracal_core::Error> {
    let config: AuditConfig = app.config().section("audit")?;
    config.validate(&app.config().section("coordinator.relay")?)?;
    let retention = RetentionConfig::load(&app)?;
    let pool = caracal_store::pool(&app)?;
    let redis = app.redis()?;
    // The consumer blocks in XREADGROUP; its own connection keeps the checks' PING prompt.
    let consumer_redis = app.redis()?;
    let (mut app, access) = caracal_tokens::install(app, pool.clone())?;
    let metrics = metrics::Metrics::register(app.registry_mut().sub_registry_with_prefix("caracal_audit"));
    let retention_metrics = caracal_store::retention::Metrics::register(app.registry_mut());
    let (purge_pool, keep) = (pool.clone(), config.retention);
    let lag = checks::stream_group(
        redis.clone(),
        app.metrics(),
        StreamGroup {
            stream: stream::EVENTS.into(),
            group: GROUP.into(),
            max_lag: config.max_lag,
            max_age: config.max_pending_age,
        },
    );
    let consumer = consumer::Consumer::new(pool.clone(), consumer_redis, metrics.clone(), config.clone());
    let reconciler = reconcile::Reconciler::new(pool.clone(), metrics.clone(), config.ledger.clone());
    let gap = reconcile::gap_check(reconciler.state(), config.ledger.interval);
    let routes = Router::new()
        .route("/v1/events", get(events::list))
        .layer(access.layer(caracal_tokens::Guard::all(caracal_tokens::Scope::EventsRead)))
        .with_state(events::EventsState { pool: pool.clone(), max_page: config.max_page })
        .route("/openapi.json", get(openapi::document));
    Ok(app
        .checks(caracal_store::storage_checks(pool, redis.clone()))
        .check(lag)
        .check(dlq_check(redis, metrics))
        .check(gap)
        .routes(routes)
        .worker("consumer", move |stop| consumer.run(stop))
        .worker("reconciler", move |stop| reconciler.run(stop))
        // The ledger's writer purges it: `audit.retention`.
        .worker("retention", move |stop| {
            caracal_store::retention::run(purge_pool, Table::Ledger, keep, retention, retention_metrics, stop)
        }))
}

/// `dlq:length` (delivery rung, not required): the DLQ is empty; records
/// `caracal_audit_dlq_length`. Poison entries are an alert,
/// never a reason to take the ledger out of rotation.
pub fn dlq_check(redis: RedisConnection, metrics: metrics::Metrics) -> Check {
    Check::new("dlq:length", Rung::Delivery, move || {
        let mut redis = redis.clone();
        let metrics = metrics.clone();
        async move {
            let len: u64 = redis::cmd("XLEN")
                .arg(stream::EVENTS_DLQ)
                .query_async(&mut redis)
                .await
                .map_err(|e| Failure::new(format!("XLEN failed: {e}")))?;
            metrics.dlq_length.set(i64::try_from(len).unwrap_or(i64::MAX));
            let observed = Observed::new(len as f64, "entries");
            if len > 0 {
                Err(Failure::with(format!("{len} entries in {}", stream::EVENTS_DLQ), observed))
            } else {
                Ok(observed)
            }
        }
    })
    .required(false)
}
