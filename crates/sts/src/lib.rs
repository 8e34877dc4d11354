//! `caracal-sts`: the token service. OAuth2 client credentials (RFC 6749 §4.4) issuing
//! RFC 9068 JWT access tokens, signed with Ed25519 by default (ES256 selectable); the JWKS
//! and RFC 8414 metadata; automatic key rotation with pre-publication; RFC 7009 revocation
//! and RFC 7662 introspection; and the clients registry behind the admin token.
//!
//! Keys and clients live in PostgreSQL; private keys are sealed at rest with the key from
//! `CARACAL_STS_KEY_ENCRYPTION_FILE`. A revocation is a row plus an outbox event in one
//! transaction, which the coordinator's relay carries to `caracal.revocations`, where every
//! service's verifier ([`caracal_tokens::Verifier`]) picks it up.
//!
//! # Layout
//! - [`config`]: [`StsConfig`], the `[sts]` settings.
//! - [`keys`]: key generation, public JWKs, sealing private keys at rest.
//! - [`ring`]: [`ring::KeyRing`], the keys that sign and are published, and rotation.
//! - [`clients`]: the in-memory clients registry and constant-time client authentication.
//! - `form` (private): reading OAuth form bodies and client credentials.
//! - `oauth` (private): `/oauth/token`, `/oauth/revoke`, `/oauth/introspect`.
//! - `metadata` (private): the JWKS and the authorization server metadata.
//! - `admin` (private): `/v1/clients`.
//! - [`error`]: [`error::StsError`] and [`error::OAuthError`], each answered in one place.
//! - [`metrics`]: the `caracal_sts_*` families; `openapi` (private): `/openapi.json`.

mod admin;
pub mod clients;
pub mod config;
pub mod error;
mod form;
pub mod keys;
mod metadata;
pub mod metrics;
mod oauth;
mod openapi;
pub mod ring;

use std::sync::Arc;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use caracal_core::config::ConfigError;
use caracal_core::{App, Check, Failure, Mode, Observed, Rung, env};
use caracal_tokens::{Access, Guard, Scope, TokensConfig, Verifier};

pub use config::StsConfig;

/// The default port.
pub const PORT: u16 = 8080;

/// What the handlers share.
#[derive(Clone)]
pub struct StsState {
    /// Clients, keys and revocations.
    pub pool: sqlx::PgPool,
    /// The signing keys.
    pub keys: Arc<ring::KeyRing>,
    /// The clients registry.
    pub clients: Arc<clients::Clients>,
    /// Verifies this STS's own tokens (introspection, revocation, the admin API).
    pub verifier: Arc<Verifier>,
    /// Who may call `/v1/clients`: the admin token or a token with `clients:write`.
    pub access: Access,
    /// Settings.
    pub config: Arc<StsConfig>,
    /// The `caracal_sts_*` families.
    pub metrics: metrics::Metrics,
}

/// The STS's routes: `/oauth/*`, `/.well-known/*`, `/v1/clients` and `/openapi.json`.
pub fn router(state: StsState) -> Router {
    let admin = Router::new()
        .route("/v1/clients", get(admin::list).post(admin::create))
        .route("/v1/clients/{id}", get(admin::get_one).delete(admin::disable))
        .layer(DefaultBodyLimit::max(16 * 1024))
        .layer(state.access.layer(Guard::all(Scope::ClientsWrite)));
    Router::new()
        .merge(admin)
        .route("/oauth/token", post(oauth::token))
        .route("/oauth/revoke", post(oauth::revoke))
        .route("/oauth/introspect", post(oauth::introspect))
        .route("/.well-known/jwks.json", get(metadata::jwks))
        .route("/.well-known/oauth-authorization-server", get(metadata::metadata))
        .route("/openapi.json", get(openapi::document))
        .with_state(state)
}

/// Adds the STS to `app`: storage, delivery (outbox, revocations) and service
/// (`sts:signing_key`, `sts:keys_loaded`) checks, the routes, and the key, client and
/// revocation workers.
///
/// # Errors
/// Configuration errors: missing URLs, bad `[sts]` or `[tokens]` settings, an unusable admin
/// token, and in `rc`/`stable` a missing or unusable `CARACAL_STS_KEY_ENCRYPTION_FILE`.
pub fn build(mut app: App) -> Result<App, caracal_core::Error> {
    let config: StsConfig = app.config().section("sts")?;
    config.validate()?;
    let mut tokens: TokensConfig = app.config().section("tokens")?;
    if tokens.expected_issuer().is_none() {
        tokens.issuer = Some(format!("http://127.0.0.1:{}", app.config().core.port));
    }
    let sealer = sealer(&config, app.config().core.mode)?;
    let pool = caracal_store::pool(&app)?;
    let redis = app.redis()?;
    let metrics = metrics::Metrics::register(app.registry_mut().sub_registry_with_prefix("caracal_sts"));
    let (app, access, verifier) = caracal_tokens::attach(app, pool.clone(), &tokens, None)?;
    let keys =
        Arc::new(ring::KeyRing::new(pool.clone(), sealer, config.clone(), Arc::clone(&verifier), metrics.clone()));
    let clients = Arc::new(clients::Clients::default());
    let [outbox_age, outbox_dead] = caracal_store::outbox::checks(pool.clone(), app.metrics(), config.outbox_max_age);
    let state = StsState {
        pool: pool.clone(),
        keys: Arc::clone(&keys),
        clients: Arc::clone(&clients),
        verifier,
        access,
        config: Arc::new(config.clone()),
        metrics,
    };
    let client_pool = pool.clone();
    Ok(app
        .checks(caracal_store::storage_checks(pool, redis))
        .check(outbox_age)
        .check(outbox_dead)
        .check(signing_key_check(Arc::clone(&keys), config.prepublish))
        .routes(router(state))
        .worker("signing-keys", move |stop| keys.run(stop))
        .worker("clients", move |stop| clients.run(client_pool, config.client_refresh, stop)))
}

/// The key-encryption key: from its file, or in `dev` an insecure stand-in.
fn sealer(config: &StsConfig, mode: Mode) -> Result<keys::Sealer, caracal_core::Error> {
    let origin = format!("environment variable `{}` (or config key)", env::CARACAL_STS_KEY_ENCRYPTION_FILE);
    match &config.key_encryption_file {
        Some(path) => {
            caracal_core::secret_file::check(path, mode).and_then(|()| keys::Sealer::from_file(path)).map_err(
                |message| ConfigError { key: "sts.key_encryption_file".into(), origin: origin.clone(), message }.into(),
            )
        }
        None if mode == Mode::Dev => {
            tracing::warn!(
                "{} is not set: private keys are sealed with an insecure built-in key (dev mode only)",
                env::CARACAL_STS_KEY_ENCRYPTION_FILE
            );
            keys::Sealer::dev().map_err(|e| caracal_core::Error::startup("load the dev key-encryption key", e))
        }
        None => Err(ConfigError {
            key: "sts.key_encryption_file".into(),
            origin,
            message: "required in rc and stable: a file with 32 random bytes in base64 (`openssl rand -base64 32`)"
                .into(),
        }
        .into()),
    }
}

/// `sts:signing_key` (service rung, required): a key signs now, and signing is covered for at
/// least the pre-publication window (by it, or by it and its pre-published successor).
pub fn signing_key_check(keys: Arc<ring::KeyRing>, window: std::time::Duration) -> Check {
    Check::new("sts:signing_key", Rung::Service, move || {
        let keys = Arc::clone(&keys);
        async move {
            let Some(covered) = keys.coverage() else {
                return Err(Failure::new("no signing key is active"));
            };
            let observed = Observed::new(covered as f64, "s");
            if covered < window.as_secs() as i64 {
                Err(Failure::with(
                    format!("signing is covered for {covered}s only, less than the pre-publication window"),
                    observed,
                ))
            } else {
                Ok(observed)
            }
        }
    })
}
