//! `caracal-gateway`: metrics federation. One authenticated URL answers the merged metrics of
//! every instance of a registered target, with identity labels, so a Prometheus, a person or a
//! CI job can read a whole service without knowing its instances or holding their bearer.
//!
//! Its anchor is Cloud Foundry's Promfetcher, with what that gets wrong fixed: a failing
//! instance is a `caracal_federation_error` series in a 200 answer (never a failed or silently
//! thinner one), and nothing of the caller's request is forwarded to instances.
//!
//! # Layout
//! - [`config`]: [`GatewayConfig`], the `[gateway]` settings.
//! - [`registry`]: the targets registry held in memory, kept current by
//!   `caracal.invalidations`.
//! - [`exposition`]: reading text 0.0.4 and OpenMetrics 1.0 as bodies arrive.
//! - [`scrape`]: one instance: the credential an operator bound, the address policy, timeout,
//!   caps and limits, no redirects.
//! - [`render`]: merging instances with identity labels and writing the answer.
//! - `federate` (private): the two federation routes; `openapi` (private): `/openapi.json`.
//! - [`error`]: [`error::GatewayError`], answered in one place; [`metrics`]: its families.

pub mod config;
pub mod error;
pub mod exposition;
mod federate;
pub mod metrics;
mod openapi;
pub mod registry;
pub mod render;
pub mod scrape;

use std::sync::Arc;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::Method;
use axum::middleware::Next;
use axum::response::Response;
use axum::routing::get;
use caracal_core::App;
use caracal_core::auth::BearerAuth;
use caracal_store::invalidations;
use caracal_tokens::{Access, Scope};

pub use config::GatewayConfig;

/// The default port.
pub const PORT: u16 = 8081;

/// What the handlers share.
#[derive(Clone)]
pub struct GatewayState {
    /// The targets.
    pub registry: Arc<registry::Registry>,
    /// Scrapes instances.
    pub scraper: Arc<scrape::Scraper>,
    /// Instances scraped at once, gateway-wide.
    pub global: Arc<tokio::sync::Semaphore>,
    /// Settings.
    pub config: Arc<GatewayConfig>,
    /// The `caracal_gateway_*` families.
    pub metrics: metrics::Metrics,
}

/// Who may federate: the metrics bearer, or an STS token with `metrics:read` (or the admin
/// token), checked locally.
#[derive(Clone)]
pub struct FederationAuth {
    /// The platform's metrics bearer.
    pub metrics: Arc<BearerAuth>,
    /// STS tokens and the admin token.
    pub access: Access,
}

/// The gateway's routes: the two federation routes behind [`FederationAuth`], and
/// `/openapi.json`.
pub fn router(state: GatewayState, auth: FederationAuth) -> Router {
    let federation = Router::new()
        .route("/v1/targets/{name}/metrics", get(federate::target))
        .route("/v1/metrics", get(federate::selected))
        .layer(axum::middleware::from_fn_with_state(auth, require_metrics_read));
    Router::new().merge(federation).route("/openapi.json", get(openapi::document)).with_state(state)
}

async fn require_metrics_read(State(auth): State<FederationAuth>, request: Request, next: Next) -> Response {
    if auth.metrics.is_configured() && auth.metrics.presents_bearer(request.headers()) {
        return next.run(request).await;
    }
    match auth.access.authorize(&Method::GET, request.headers(), Scope::MetricsRead).await {
        Ok(_) => next.run(request).await,
        Err(refused) => refused,
    }
}

/// The one key of `[api]` the gateway reads: the platform's own services (name → instance URLs).
#[derive(serde::Deserialize)]
struct PlatformServices {
    #[serde(default)]
    platform: std::collections::BTreeMap<String, Vec<String>>,
}

/// Adds the gateway to `app`: storage (PostgreSQL for the registry, Redis for revocations),
/// delivery (`revocations:lag`, `stream:invalidations`) and service (`sts:keys_loaded`)
/// checks, the routes, and the registry's follower.
///
/// # Errors
/// Configuration errors (missing URLs, bad `[gateway]` or `[tokens]` settings, unusable
/// bearer or admin token settings).
pub fn build(mut app: App) -> Result<App, caracal_core::Error> {
    let config: GatewayConfig = app.config().section("gateway")?;
    config.validate()?;
    let pool = caracal_store::pool(&app)?;
    let redis = app.redis()?;
    let metrics = metrics::Metrics::register(app.registry_mut().sub_registry_with_prefix("caracal_gateway"));
    let metrics_auth = Arc::new(BearerAuth::metrics(&app.config().core)?);
    // The platform's own services, as `[api.platform]` configures them for the API to register:
    // only they get the metrics bearer.
    let platform: PlatformServices = app.config().section("api")?;
    let credentials = scrape::Credentials::new(
        scrape::Bearer::metrics(&app.config().core),
        platform.platform,
        config.credentials_dir.clone(),
    );
    let outbound = caracal_core::outbound::Policy::new(app.config().core.outbound.clone());
    let scraper = scrape::Scraper::new(credentials, outbound, config.instance_body_cap_bytes, config.limits())
        .map_err(|e| caracal_core::Error::startup("build the scrape HTTP client", e))?;
    let (app, access) = caracal_tokens::install(app, pool.clone())?;
    let registry = Arc::new(registry::Registry::new(pool.clone(), metrics.registry_targets.clone()));
    // The follower blocks in XREAD: a connection of its own keeps the checks' PING prompt.
    let follower = invalidations::Follower::new(app.redis()?, config.full_resync);
    let freshness = follower.freshness();
    let (notices, received) = tokio::sync::mpsc::channel(64);
    let max_age = config.invalidations_max_age;
    let state = GatewayState {
        registry: Arc::clone(&registry),
        scraper: Arc::new(scraper),
        global: Arc::new(tokio::sync::Semaphore::new(config.global_concurrency)),
        config: Arc::new(config),
        metrics,
    };
    Ok(app
        .checks(caracal_store::storage_checks(pool, redis))
        .check(invalidations::check(freshness, max_age))
        .routes(router(state, FederationAuth { metrics: metrics_auth, access }))
        .worker("invalidations", move |stop| follower.run(notices, stop))
        .worker("registry", move |stop| registry.run(received, stop)))
}
