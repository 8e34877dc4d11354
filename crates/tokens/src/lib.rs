//! `caracal-tokens`: the platform's access tokens as every service sees them.
//!
//! The STS issues RFC 9068 JWT access tokens; every other service verifies them locally with
//! the one [`Verifier`] here, so there is no copy per service and no call to the STS on a
//! request's path.
//!
//! # Layout
//! - [`scope`]: [`Scope`], the five scopes a `/v1` route can ask for.
//! - [`claims`]: [`AccessClaims`], what a token says, and the `at+jwt` type.
//! - [`config`]: [`TokensConfig`], the `[tokens]` settings (where the STS is, issuer, audience).
//! - [`revocations`]: [`RevocationSet`], the revocations in force, and the follower that keeps
//!   it current: PostgreSQL at start, then the `caracal.revocations` stream.
//! - [`verifier`]: [`Verifier`]: JWKS cache, signature, `iss`/`aud`/`exp`/`nbf`, revocation;
//!   and the JWKS fetcher with its refresh floor.
//! - [`guard`]: [`Access`], the `/v1` route guard: the static admin token, or a token with the
//!   route's scope.
//! - [`checks`]: `sts:keys_loaded` and `revocations:lag`; [`metrics`]: their families.

pub mod checks;
pub mod claims;
pub mod config;
pub mod guard;
pub mod metrics;
pub mod revocations;
pub mod scope;
pub mod verifier;

use std::sync::Arc;

pub use claims::AccessClaims;
pub use config::TokensConfig;
pub use guard::{Access, Caller, Guard};
pub use revocations::RevocationSet;
pub use scope::Scope;
pub use verifier::{Verifier, VerifyError};

/// Adds token verification to a service from its `[tokens]` settings: the verifier, its JWKS
/// and revocation workers and its two checks. Returns the app and the route guard; without
/// `tokens.sts_url` the guard accepts only the admin token and nothing is added.
///
/// # Errors
/// Configuration errors (bad `[tokens]` settings, an unusable admin token, Redis URL).
pub fn install(app: caracal_core::App, pool: sqlx::PgPool) -> Result<(caracal_core::App, Access), caracal_core::Error> {
    let config: TokensConfig = app.config().section("tokens")?;
    config.validate(app.config().core.mode)?;
    let Some(jwks_url) = config.jwks_url() else {
        let admin = Arc::new(app.admin_auth()?);
        return Ok((app, Access::new(admin, None)));
    };
    let (app, access, _) = attach(app, pool, &config, Some(jwks_url))?;
    Ok((app, access))
}

/// Adds a verifier for `config` to `app`: its metrics, the revocation follower, the JWKS
/// fetcher when `jwks_url` is given (the STS, whose keys are its own, gives none and feeds
/// [`Verifier::set_keys`] itself), and the checks `sts:keys_loaded` and `revocations:lag`.
///
/// # Errors
/// Configuration errors (an unusable admin token, Redis URL).
pub fn attach(
    mut app: caracal_core::App,
    pool: sqlx::PgPool,
    config: &TokensConfig,
    jwks_url: Option<String>,
) -> Result<(caracal_core::App, Access, Arc<Verifier>), caracal_core::Error> {
    let admin = Arc::new(app.admin_auth()?);
    let metrics = metrics::Metrics::register(app.registry_mut());
    let verifier = Arc::new(Verifier::new(config, metrics.clone()));
    // The follower blocks in XREAD; its own connection keeps the checks' PING prompt.
    let follower_redis = app.redis()?;
    let follower = revocations::Follower::new(Arc::clone(&verifier), pool, follower_redis, config);
    let mut app = app
        .check(checks::keys_loaded(Arc::clone(&verifier)))
        .check(checks::revocations_lag(Arc::clone(&verifier), metrics, config.revocations_max_lag))
        .worker("revocations", move |stop| follower.run(stop));
    if let Some(url) = jwks_url {
        let fetcher = verifier::JwksFetcher::new(Arc::clone(&verifier), url, config)
            .map_err(|e| caracal_core::Error::startup("build the JWKS HTTP client", e))?;
        app = app.worker("jwks", move |stop| fetcher.run(stop));
    }
    Ok((app, Access::new(admin, Some(Arc::clone(&verifier))), verifier))
}
