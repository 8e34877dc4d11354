//! `caracal-control`: the control plane. It keeps the targets registry in step with the world
//! and tells the other services the moment it changes.
//!
//! - **DNS discovery.** A target may declare `discovery.dns` instead of `instances`; control
//!   resolves it (A, AAAA or SRV, at `min(refresh_ms, TTL)`, at least 1 s) and writes the
//!   instances when they change, with a `target.instances_changed` event. A failed resolution
//!   keeps the last known set; an authoritative empty answer empties it only when the next one
//!   agrees.
//! - **Declared targets.** The files in `control.targets_dir` (a mounted ConfigMap) are
//!   reconciled into the registry as targets control owns (`managed_by: control`); targets
//!   created through the API are never touched.
//! - **Invalidations.** Every registry write (anyone's) commits a `registry.changed` outbox row
//!   that the relay also sends to `caracal.invalidations`; control follows it to learn of
//!   discovered targets created or changed through the API.
//!
//! # Layout
//! - [`config`]: [`ControlConfig`], the `[control]` settings.
//! - [`resolve`]: one resolution and what its answer means for the instance set.
//! - [`discovery`]: the worker that resolves discovered targets when due.
//! - [`declared`]: reading declared files and planning the registry's changes (shared with
//!   `caracal apply`); [`reconcile`]: applying the plan for `targets_dir`.
//! - [`checks`]: `dns:resolver`, `discovery:fresh`, `targets_dir:valid`; [`metrics`]: the
//!   `caracal_control_*` families.

pub mod checks;
pub mod config;
pub mod declared;
pub mod discovery;
pub mod metrics;
pub mod reconcile;
pub mod resolve;

use caracal_core::App;
use caracal_store::invalidations;

pub use config::ControlConfig;

/// The default port.
pub const PORT: u16 = 8082;

/// Adds control to `app`: storage and delivery checks, the discovery worker and its
/// invalidation follower, and the declared-targets reconciler when `targets_dir` is set.
///
/// # Errors
/// Configuration errors (missing URLs, bad `[control]` settings, an unreadable system DNS
/// configuration with no `control.nameservers`).
pub fn build(mut app: App) -> Result<App, caracal_core::Error> {
    let config: ControlConfig = app.config().section("control")?;
    let pool = caracal_store::pool(&app)?;
    let redis = app.redis()?;
    let metrics = metrics::Metrics::register(app.registry_mut().sub_registry_with_prefix("caracal_control"));
    let resolver =
        resolve::Resolver::new(&config).map_err(|e| caracal_core::Error::startup("build the DNS resolver", e))?;
    let discoverer = discovery::Discoverer::new(pool.clone(), resolver, metrics.clone(), config.resolve_concurrency);
    let health = discoverer.health();
    // The follower blocks in XREAD: a connection of its own keeps the checks' PING prompt.
    let follower = invalidations::Follower::new(app.redis()?, config.full_resync);
    let freshness = follower.freshness();
    let (notices, received) = tokio::sync::mpsc::channel(64);
    let reconciler = config.targets_dir.clone().map(|dir| reconcile::Reconciler::new(pool.clone(), dir, metrics));
    let problems = reconciler.as_ref().map(reconcile::Reconciler::problems).unwrap_or_default();
    let mut app = app
        .checks(caracal_store::storage_checks(pool, redis))
        .check(invalidations::check(freshness, config.invalidations_max_age))
        .check(checks::resolver(std::sync::Arc::clone(&health)))
        .check(checks::fresh(health))
        .check(checks::targets_dir(problems))
        .worker("invalidations", move |stop| follower.run(notices, stop))
        .worker("discovery", move |stop| discoverer.run(received, stop));
    if let Some(reconciler) = reconciler {
        let (poll, full) = (config.targets_poll, config.full_resync);
        app = app.worker("declared", move |stop| reconciler.run(poll, full, stop));
    }
    Ok(app)
}
