//! `caracal-coordinator`: probes every registered instance's `/health` and `/ready`, records
//! each status change (with hysteresis) and its outbox event in one transaction, and relays the
//! outbox to the Redis stream `caracal.events`.
//!
//! # Layout
//! - [`config`]: [`CoordinatorConfig`], the `[coordinator]` settings.
//! - [`membership`]: replicas announce themselves in Redis; rendezvous hashing gives each
//!   instance exactly one owner, and a dead replica's instances move within a bounded time.
//! - [`prober`]: every owned instance probed on its interval (a scheduler holds each one's
//!   state and a task runs only while a probe does): probe, judge with thresholds, record
//!   changes. It holds the registry in memory, kept current by `caracal.invalidations`
//!   (store's `invalidations` follower), with a full re-read every `full_resync` as the
//!   safety net.
//! - [`gray`]: gray failure: the four detectors that judge a live, ready instance `degraded`
//!   (latency against its own baseline, errors over a window, outlier among its peers,
//!   flapping), with hysteresis of their own.
//! - [`http`]: plain HTTP probes over kept-alive connections, by address, driven in the
//!   probe's task and bounded in number ([`http::IDLE_AT_MOST`]).
//! - [`protocols`]: the HTTPS, TCP and gRPC probes.
//! - [`tls`]: TLS clients for probes, the presented chain's expiry, failures as stable words.
//! - [`recorder`]: status changes written in groups, one transaction (one commit) for every
//!   change that waited while the previous group was written.
//! - [`relay`]: outbox → stream, with `FOR UPDATE SKIP LOCKED`, capped backoff and dead rows.
//! - [`metrics`]: the `caracal_coordinator_*` families.

pub mod config;
pub mod gray;
pub mod http;
pub mod membership;
pub mod metrics;
pub mod prober;
pub mod protocols;
pub mod recorder;
pub mod relay;
pub mod tls;

use std::sync::Arc;
use std::time::Duration;

use caracal_core::{App, Check, Failure, Observed, Rung};
use caracal_store::invalidations;
use caracal_store::retention::{RetentionConfig, Table};

pub use config::CoordinatorConfig;

/// The default port.
pub const PORT: u16 = 4000;

/// Adds the coordinator to `app`: its checks, the membership, prober and relay workers, and the
/// status history's retention purge.
///
/// # Errors
/// Configuration errors (missing URLs, bad `[coordinator]` settings).
pub fn build(mut app: App) -> Result<App, caracal_core::Error> {
    let config: CoordinatorConfig = app.config().section("coordinator")?;
    let retention = RetentionConfig::load(&app)?;
    let pool = caracal_store::pool(&app)?;
    let redis = app.redis()?;
    let metrics = metrics::Metrics::register(app.registry_mut().sub_registry_with_prefix("caracal_coordinator"));
    let retention_metrics = caracal_store::retention::Metrics::register(app.registry_mut());
    let purge_pool = pool.clone();
    metrics.register_target_families(app.registry_mut());
    let members = membership::Membership::new(membership::replica_id());
    let outbound = caracal_core::outbound::Policy::new(app.config().core.outbound.clone());
    let prober = prober::Prober::new(pool.clone(), members.clone(), metrics.clone(), config.clone(), outbound);
    let heartbeat = prober.heartbeat();
    let [outbox_age, outbox_dead] = caracal_store::outbox::checks(pool.clone(), app.metrics(), config.relay.max_lag);
    let relay = relay::Relay::new(pool.clone(), redis.clone(), metrics, config.relay.clone());
    let membership_redis = redis.clone();
    let membership_config = config.membership.clone();
    // The follower blocks in XREAD: a connection of its own keeps the checks' PING prompt.
    let follower = invalidations::Follower::new(app.redis()?, config.full_resync);
    let freshness = follower.freshness();
    let (notices, received) = tokio::sync::mpsc::channel(64);
    Ok(app
        .checks(caracal_store::storage_checks(pool, redis))
        .check(outbox_age)
        .check(outbox_dead)
        .check(invalidations::check(freshness, config.invalidations_max_age))
        .check(heartbeat_check(heartbeat, config.refresh * 3))
        .worker("membership", move |stop| membership::run(members, membership_redis, membership_config, stop))
        .worker("invalidations", move |stop| follower.run(notices, stop))
        .worker("prober", move |stop| prober.run(received, stop))
        .worker("relay", move |stop| relay.run(stop))
        // The history's writer purges it: `store.retention.history`.
        .worker("retention", move |stop| {
            let keep = retention.history;
            caracal_store::retention::run(purge_pool, Table::History, keep, retention, retention_metrics, stop)
        }))
}

/// `prober:heartbeat` (service rung, required): the prober's reconcile loop ran recently.
pub fn heartbeat_check(heartbeat: Arc<prober::Heartbeat>, max_age: Duration) -> Check {
    Check::new("prober:heartbeat", Rung::Service, move || {
        let heartbeat = Arc::clone(&heartbeat);
        async move {
            let age = heartbeat.age();
            let observed = Observed::new(age.as_secs_f64(), "s");
            if age > max_age {
                Err(Failure::with(
                    format!(
                        "the prober last reconciled {:.1}s ago (limit {:.1}s)",
                        age.as_secs_f64(),
                        max_age.as_secs_f64()
                    ),
                    observed,
                ))
            } else {
                Ok(observed)
            }
        }
    })
}
