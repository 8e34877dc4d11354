//! `caracal-api`: the targets registry (services, instances, probe settings), current status
//! and history, and the public aggregated `/healthchecks` (with the firing alerts).
//!
//! Every write commits its outbox event in the same transaction, so the rest of the platform
//! hears of every change exactly once.
//!
//! # Layout
//! - [`config`]: [`ApiConfig`], the `[api]` settings.
//! - [`target`]: the target document, its validation and defaults (from `caracal-store`).
//! - `targets` (private): the `/v1/targets` handlers (their reads and writes are the store's).
//! - `status` (private): `/v1/status` and `/v1/targets/{name}/history`.
//! - `healthchecks` (private): the public aggregate, in the console's shape at
//!   `/healthchecks` and in Caracal's at `/v1/healthchecks`.
//! - `monitoring` (private): the worker reading Alertmanager's alerts and Prometheus' health
//!   for them.
//! - `platform` (private): registering the platform's own services as targets, and the cached
//!   view of their status.
//! - [`state`]: [`ApiState`], what the handlers share; the ground floor every handler module
//!   imports (never `lib.rs`).
//! - [`error`]: [`ApiError`], the one place errors become HTTP answers.
//! - `openapi` (private): `/openapi.json`, generated from the handlers and types.
//! - `page` (private): the live status page at `/` and `/status`.

mod batch;
pub mod config;
pub mod error;
mod healthchecks;
mod monitoring;
mod openapi;
mod page;
mod platform;
pub mod state;
mod status;
mod targets;

/// The target document, defined in the store so every writer judges it alike.
pub use caracal_store::target;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use caracal_core::App;
use caracal_tokens::{Guard, Scope};

pub use config::ApiConfig;
pub use error::ApiError;
pub use state::ApiState;

/// The default port.
pub const PORT: u16 = 3000;

/// The API's routes: `/v1/*` behind the admin token or a scoped STS token, plus
/// `/healthchecks`, `/openapi.json` and the status page.
fn router(state: ApiState) -> Router {
    let v1 = Router::new()
        .route("/v1/targets", get(targets::list).post(targets::create))
        .route("/v1/targets/_digests", get(targets::digests))
        .route("/v1/targets/{name}", get(targets::get_one).put(targets::replace).delete(targets::remove))
        .route("/v1/targets/{name}/history", get(status::history))
        .route("/v1/targets/{name}/pause", post(targets::pause))
        .route("/v1/targets/{name}/resume", post(targets::resume))
        .route("/v1/status", get(status::current))
        // Target documents are small; a larger body is answered 413 with the API's error shape.
        .layer(DefaultBodyLimit::max(64 * 1024))
        // A batch holds up to 1,000 documents.
        .merge(
            Router::new()
                .route("/v1/targets/_batch", post(batch::apply))
                .layer(DefaultBodyLimit::max(batch::BODY_LIMIT)),
        )
        .layer(state.access.layer(Guard { read: Scope::TargetsRead, write: Scope::TargetsWrite }));
    Router::new()
        .merge(v1)
        .route("/healthchecks", get(healthchecks::console))
        // Public like /healthchecks: the same facts, in Caracal's shape.
        .route("/v1/healthchecks", get(healthchecks::aggregate))
        .route("/openapi.json", get(openapi::document))
        .merge(page::routes())
        .with_state(state)
}

/// Adds the API to `app`: storage, delivery and schema checks, routes, and the platform worker.
///
/// # Errors
/// Configuration errors (missing `DATABASE_URL` or `REDIS_URL`, bad `[api]` or `[tokens]`
/// settings, an unusable admin token).
pub fn build(app: App) -> Result<App, caracal_core::Error> {
    let config: ApiConfig = app.config().section("api")?;
    config.validate()?;
    let pool = caracal_store::pool(&app)?;
    let redis = app.redis()?;
    let (app, access) = caracal_tokens::install(app, pool.clone())?;
    let [outbox_age, outbox_dead] = caracal_store::outbox::checks(pool.clone(), app.metrics(), config.outbox_max_age);
    let platform = Arc::new(platform::PlatformView::default());
    let monitoring =
        Arc::new(monitoring::MonitoringView::new(config.alertmanager_url.is_some(), config.prometheus_url.is_some()));
    let sources = monitoring::Sources {
        alertmanager: config.alertmanager_url.clone(),
        prometheus: config.prometheus_url.clone(),
        every: config.monitoring_interval,
    };
    let mut app = app;
    // How many status pages have a live feed open: `caracal_api_live_pages`.
    let live_pages = prometheus_client::metrics::gauge::Gauge::default();
    app.registry_mut().sub_registry_with_prefix("caracal_api").register(
        "live_pages",
        "Status pages with a live feed open",
        live_pages.clone(),
    );
    let feed = Arc::new(page::live::Feed::new(live_pages, config.page.public_streams));
    let state = ApiState {
        pool: pool.clone(),
        access,
        mode: app.config().core.mode,
        readiness: app.readiness(),
        platform: Arc::clone(&platform),
        monitoring: Arc::clone(&monitoring),
        config: Arc::new(config.clone()),
        outbound: Arc::new(caracal_core::outbound::Policy::new(app.config().core.outbound.clone())),
        client_files: Arc::new(app.config().section("coordinator.tls")?),
        feed: Arc::clone(&feed),
        sessions: Arc::new(page::session::Sessions::new(pool.clone(), config.page.secure_cookies)),
        lifecycle: app.lifecycle(),
    };
    let worker_pool = pool.clone();
    let (feed_pool, services) = (pool.clone(), config.platform.clone());
    let monitored = sources.alertmanager.is_some() || sources.prometheus.is_some();
    let app = if monitored {
        let view = Arc::clone(&monitoring);
        app.worker("monitoring", move |stop| monitoring::run(sources, view, stop))
    } else {
        app
    };
    Ok(app
        .checks(caracal_store::storage_checks(pool, redis))
        .check(outbox_age)
        .check(outbox_dead)
        .routes(router(state))
        .worker("platform", move |stop| platform::run(worker_pool, config, platform, stop, Duration::from_secs(5)))
        .worker("status-page", move |stop| page::live::run(feed, feed_pool, services, monitoring, stop)))
}
