//! [`App`]: what a service hands to caracal-core (routes, checks, workers), and how it is
//! served and drained.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio::task::{JoinHandle, JoinSet};
use tokio_util::sync::CancellationToken;

use crate::auth::BearerAuth;
use crate::check::Check;
use crate::config::{Config, ConfigError};
use crate::evaluator::Evaluator;
use crate::lifecycle::Lifecycle;
use crate::metrics::Metrics;
use crate::probes::{self, Probes};
use crate::readiness::Readiness;
use crate::{Error, env, grpc_health, layers};

type Worker = (String, Pin<Box<dyn Future<Output = ()> + Send>>);

/// A service being assembled: its configuration, metrics registry, checks, routes and
/// background workers. [`App::start`] serves it; [`crate::main`] does that for a binary.
pub struct App {
    name: &'static str,
    version: &'static str,
    config: Config,
    auth: BearerAuth,
    registry: Registry,
    metrics: Metrics,
    checks: Vec<Check>,
    routes: Router,
    workers: Vec<Worker>,
    lifecycle: Arc<Lifecycle>,
    readiness: Readiness,
    /// Cancelled after the listener has closed and in-flight requests are done.
    stop_workers: CancellationToken,
    /// The `rediss://` client [`App::redis`] handed out, if any: [`App::start`] adds its
    /// `redis:tls` check, so every service on TLS Redis has one without asking.
    redis_tls: std::sync::Mutex<Option<redis::Client>>,
}

impl std::fmt::Debug for App {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("App").field("name", &self.name).field("checks", &self.checks).finish_non_exhaustive()
    }
}

impl App {
    /// Starts assembling service `name` at `version` with loaded configuration.
    ///
    /// # Errors
    /// [`Error::Config`] when the metrics bearer settings are unusable (file missing, empty...).
    pub fn new(name: &'static str, version: &'static str, config: Config) -> Result<Self, Error> {
        let auth = BearerAuth::metrics(&config.core)?;
        let mut registry = Registry::default();
        let metrics = Metrics::register(&mut registry);
        metrics.set_build(name, version, config.core.mode.as_str());
        Ok(Self {
            name,
            version,
            config,
            auth,
            registry,
            metrics,
            checks: Vec::new(),
            routes: Router::new(),
            workers: Vec::new(),
            lifecycle: Arc::new(Lifecycle::default()),
            readiness: Readiness::default(),
            redis_tls: std::sync::Mutex::new(None),
            stop_workers: CancellationToken::new(),
        })
    }

    /// The loaded configuration.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// caracal-core's metric families (built-in checks record into them).
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// The registry, for a service's own `caracal_<service>_*` metrics.
    pub fn registry_mut(&mut self) -> &mut Registry {
        &mut self.registry
    }

    /// The lifecycle flags (draining, forced unhealthy).
    pub fn lifecycle(&self) -> Arc<Lifecycle> {
        Arc::clone(&self.lifecycle)
    }

    /// A view of the checks' latest results, for the service's own handlers (filled at start).
    pub fn readiness(&self) -> Readiness {
        self.readiness.clone()
    }

    /// A token cancelled at shutdown, after in-flight requests have finished: for work a
    /// service starts itself (workers added with [`App::worker`] get it already).
    pub fn shutdown_token(&self) -> CancellationToken {
        self.stop_workers.clone()
    }

    /// Adds a readiness check.
    pub fn check(mut self, check: Check) -> Self {
        self.checks.push(check);
        self
    }

    /// Adds several readiness checks.
    pub fn checks(mut self, checks: impl IntoIterator<Item = Check>) -> Self {
        self.checks.extend(checks);
        self
    }

    /// Adds the service's own routes (merged with any added before).
    pub fn routes(mut self, routes: Router) -> Self {
        self.routes = self.routes.merge(routes);
        self
    }

    /// Adds a background worker: `work` gets a token cancelled at shutdown, after in-flight
    /// requests have finished, and should return soon after.
    pub fn worker<F, Fut>(mut self, name: impl Into<String>, work: F) -> Self
    where
        F: FnOnce(CancellationToken) -> Fut,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let future = work(self.stop_workers.clone());
        self.workers.push((name.into(), Box::pin(future)));
        self
    }

    /// The admin bearer policy (`CARACAL_ADMIN_TOKEN` / `CARACAL_ADMIN_TOKEN_FILE`), for
    /// services with an admin API.
    ///
    /// # Errors
    /// [`Error::Config`] when the admin token settings are unusable.
    pub fn admin_auth(&self) -> Result<BearerAuth, Error> {
        Ok(BearerAuth::admin(&self.config.core)?)
    }

    /// A lazily connecting PostgreSQL pool for `DATABASE_URL`; connecting waits for first use,
    /// so start-up never blocks on the database (readiness reports it instead). Its sessions
    /// are named `caracal-<service>` in `pg_stat_activity`, unless the URL names them.
    ///
    /// # Errors
    /// [`Error::Config`] when `DATABASE_URL` is unset or not a PostgreSQL URL.
    pub fn postgres(&self) -> Result<sqlx::PgPool, Error> {
        self.postgres_as(&format!("caracal-{}", self.name))
    }

    /// As [`App::postgres`], with the sessions named `application_name` (unless the URL names
    /// them): `caracal-store` adds the schema version the build expects, so that a
    /// post-deployment step can tell whether a replica of an older release is still connected.
    ///
    /// # Errors
    /// [`Error::Config`] when `DATABASE_URL` is unset or not a PostgreSQL URL.
    pub fn postgres_as(&self, application_name: &str) -> Result<sqlx::PgPool, Error> {
        let url = required(self.config.core.database_url.as_ref(), "database_url", env::DATABASE_URL)?;
        let mut options: sqlx::postgres::PgConnectOptions =
            url.parse().map_err(|e| bad_url("database_url", env::DATABASE_URL, &e))?;
        if options.get_application_name().is_none() {
            options = options.application_name(application_name);
        }
        Ok(sqlx::postgres::PgPoolOptions::new()
            .max_connections(10)
            .acquire_timeout(Duration::from_secs(3))
            .connect_lazy_with(options))
    }

    /// The service's name (`api`, `coordinator`, ...).
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// The Redis connection: to `REDIS_URL`, reconnecting by itself after Redis restarts, or,
    /// with `redis_sentinel.*`, to the master the Sentinels name, following it through a
    /// failover. Connects on first use; each call opens a separate connection.
    ///
    /// # Errors
    /// [`Error::Config`] naming the key: neither `REDIS_URL` nor `redis_sentinel` set, both
    /// set, or a setting that is unusable (see [`App::redis_client`]).
    pub fn redis(&self) -> Result<crate::RedisConnection, Error> {
        let core = &self.config.core;
        let config = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(2)))
            .set_response_timeout(Some(Duration::from_secs(2)));
        if core.redis_sentinel.is_set() {
            let (sentinels, master) = self.redis_sentinels()?;
            return Ok(crate::RedisConnection::sentinel(sentinels, master, config));
        }
        let client = self.redis_client()?;
        if matches!(client.get_connection_info().addr(), redis::ConnectionAddr::TcpTls { .. })
            && let Ok(mut tls) = self.redis_tls.lock()
        {
            *tls = Some(client.clone());
        }
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(2)))
            .set_response_timeout(Some(Duration::from_secs(2)))
            .set_number_of_retries(2)
            .set_max_delay(Duration::from_millis(500));
        redis::aio::ConnectionManager::new_lazy_with_config(client, config)
            .map(crate::RedisConnection::from)
            .map_err(|e| Error::startup("create the Redis connection manager", e))
    }

    /// The Redis client for `REDIS_URL`, with `REDIS_PASSWORD_FILE` and, for a `rediss://`
    /// URL, the `redis_tls.*` files applied.
    ///
    /// # Errors
    /// [`Error::Config`] naming the key: an unset or unusable URL, an unreadable or malformed
    /// file, TLS files for a URL that is not `rediss://`, a client certificate without its key.
    pub fn redis_client(&self) -> Result<redis::Client, Error> {
        use redis::IntoConnectionInfo;
        let core = &self.config.core;
        let url = required(core.redis_url.as_ref(), "redis_url", env::REDIS_URL)?;
        let mut info = url.into_connection_info().map_err(|e| bad_url("redis_url", env::REDIS_URL, &e))?;
        if let Some(password) = self.redis_password()? {
            let settings = info.redis_settings().clone().set_password(password);
            info = info.set_redis_settings(settings);
        }
        let tls = &core.redis_tls;
        if !tls.is_set() {
            return redis::Client::open(info).map_err(|e| bad_url("redis_url", env::REDIS_URL, &e).into());
        }
        if !url.starts_with("rediss://") {
            return Err(ConfigError {
                key: "redis_tls".into(),
                origin: file_origin(None),
                message: "TLS files are set, but redis_url does not start with rediss://".into(),
            }
            .into());
        }
        redis::Client::build_with_tls(info, self.redis_certificates()?).map_err(|e| {
            // The message says which file failed to parse (CA, certificate or key), never its contents.
            ConfigError { key: "redis_tls".into(), origin: file_origin(None), message: format!("unusable: {e}") }.into()
        })
    }

    /// The Sentinels client and master name from `redis_sentinel.*`, with
    /// `REDIS_PASSWORD_FILE` for the data nodes and, for `rediss://` Sentinels, TLS to both
    /// (the `redis_tls.*` files).
    fn redis_sentinels(&self) -> Result<(redis::sentinel::SentinelClient, String), Error> {
        use redis::IntoConnectionInfo;
        use redis::sentinel::{SentinelClientBuilder, SentinelServerType};
        let core = &self.config.core;
        let sentinel = &core.redis_sentinel;
        let error = |key: &str, message: String| -> Error {
            ConfigError { key: key.into(), origin: file_origin(None), message }.into()
        };
        if core.redis_url.is_some() {
            return Err(error(
                "redis_sentinel",
                format!("set either redis_url (`{}`) or redis_sentinel, not both", env::REDIS_URL),
            ));
        }
        let master = sentinel.master.clone().filter(|m| !m.trim().is_empty()).ok_or_else(|| {
            error(
                "redis_sentinel.master",
                format!(
                    "the master's name is required with redis_sentinel.nodes (`{}`)",
                    env::CARACAL_REDIS_SENTINEL__MASTER
                ),
            )
        })?;
        if sentinel.nodes.is_empty() {
            return Err(error(
                "redis_sentinel.nodes",
                format!(
                    "at least one Sentinel URL is required (`{}='[\"redis://host:26379\"]'`)",
                    env::CARACAL_REDIS_SENTINEL__NODES
                ),
            ));
        }
        let mut addresses = Vec::new();
        let mut sentinel_auth = None;
        for (i, node) in sentinel.nodes.iter().enumerate() {
            let info = node
                .expose()
                .into_connection_info()
                .map_err(|e| error(&format!("redis_sentinel.nodes[{i}]"), format!("not a usable URL: {e}")))?;
            let settings = info.redis_settings();
            if sentinel_auth.is_none() && settings.password().is_some() {
                sentinel_auth = Some((settings.username().map(str::to_owned), settings.password().map(str::to_owned)));
            }
            addresses.push(info.addr().clone());
        }
        let tls = addresses.iter().filter(|a| matches!(a, redis::ConnectionAddr::TcpTls { .. })).count();
        if tls != 0 && tls != addresses.len() {
            return Err(error("redis_sentinel.nodes", "mixes redis:// and rediss:// Sentinels; use one scheme".into()));
        }
        if tls == 0 && core.redis_tls.is_set() {
            return Err(error("redis_tls", "TLS files are set, but the Sentinels are not rediss://".into()));
        }
        let mut builder = SentinelClientBuilder::new(addresses, &master, SentinelServerType::Master)
            .map_err(|e| error("redis_sentinel", format!("unusable: {e}")))?;
        if let Some(password) = self.redis_password()? {
            builder = builder.set_client_to_redis_password(password);
        }
        if let Some((username, password)) = sentinel_auth {
            if let Some(username) = username {
                builder = builder.set_client_to_sentinel_username(username);
            }
            if let Some(password) = password {
                builder = builder.set_client_to_sentinel_password(password);
            }
        }
        if tls != 0 {
            let certificates = self.redis_certificates()?;
            builder = builder
                .set_client_to_redis_tls_mode(redis::TlsMode::Secure)
                .set_client_to_redis_certificates(certificates.clone())
                .set_client_to_sentinel_tls_mode(redis::TlsMode::Secure)
                .set_client_to_sentinel_certificates(certificates);
        }
        let client = builder.build().map_err(|e| error("redis_sentinel", format!("unusable: {e}")))?;
        Ok((client, master))
    }

    /// The Redis password from `REDIS_PASSWORD_FILE`, without its trailing newline.
    fn redis_password(&self) -> Result<Option<String>, ConfigError> {
        let Some(path) = &self.config.core.redis_password_file else { return Ok(None) };
        crate::secret_file::check(path, self.config.core.mode).map_err(|message| ConfigError {
            key: "redis_password_file".into(),
            origin: file_origin(Some(env::REDIS_PASSWORD_FILE)),
            message,
        })?;
        let text = read_config_file(path, "redis_password_file", Some(env::REDIS_PASSWORD_FILE))?;
        let password = String::from_utf8(text).map_err(|_| ConfigError {
            key: "redis_password_file".into(),
            origin: file_origin(Some(env::REDIS_PASSWORD_FILE)),
            message: format!("{} is not UTF-8 text", path.display()),
        })?;
        Ok(Some(password.trim_end_matches(['\r', '\n']).to_owned()))
    }

    /// The `redis_tls.*` files: the CA to trust (the system roots when unset) and the client
    /// certificate, if any.
    fn redis_certificates(&self) -> Result<redis::TlsCertificates, ConfigError> {
        let tls = &self.config.core.redis_tls;
        let root_cert = tls.ca_file.as_deref().map(|p| read_config_file(p, "redis_tls.ca_file", None)).transpose()?;
        let client_tls = match (&tls.client_cert_file, &tls.client_key_file) {
            (Some(cert), Some(key)) => Some(redis::ClientTlsConfig {
                client_cert: read_config_file(cert, "redis_tls.client_cert_file", None)?,
                client_key: read_config_file(key, "redis_tls.client_key_file", None)?,
            }),
            (None, None) => None,
            _ => {
                return Err(ConfigError {
                    key: "redis_tls.client_cert_file / redis_tls.client_key_file".into(),
                    origin: file_origin(None),
                    message: "set both the client certificate and its key, or neither".into(),
                });
            }
        };
        Ok(redis::TlsCertificates { client_tls, root_cert })
    }

    /// Serves the app on `listener`: starts the checks and workers and returns at once.
    pub fn start(mut self, listener: TcpListener) -> Running {
        let addr = listener.local_addr().ok();
        if let Some(client) = self.redis_tls.lock().ok().and_then(|mut tls| tls.take()) {
            self.checks.push(crate::checks::redis_tls(client));
        }
        let core = &self.config.core;
        let evaluator = Arc::new(Evaluator::new(
            self.name,
            self.checks,
            &core.checks,
            self.metrics.clone(),
            Arc::clone(&self.lifecycle),
        ));
        let stop_checks = CancellationToken::new();
        let check_tasks = evaluator.spawn(stop_checks.clone());
        self.readiness.attach(Arc::clone(&evaluator));
        let lifecycle = Arc::clone(&self.lifecycle);
        let probes = Arc::new(Probes::new(
            self.name,
            self.version,
            core.mode.as_str(),
            Arc::clone(&evaluator),
            lifecycle,
            self.auth,
            self.registry,
        ));
        let service_routes = self.routes.fallback(not_found);
        let grpc = grpc_health::routes(Arc::clone(&probes), stop_checks.clone());
        let probe_routes = layers::probe_stack(probes::routes(probes).merge(grpc), core.telemetry.trace_probes);
        let routers = crate::listener::Routers {
            all: probe_routes.clone().merge(layers::service_stack(service_routes, self.metrics, &core.http)),
            probes: probe_routes.fallback(crate::listener::overloaded),
        };
        let stop_accepting = CancellationToken::new();
        let http = core.http.clone();
        let stop = stop_accepting.clone();
        let server = tokio::spawn(async move { crate::listener::serve(listener, routers, &http, stop).await });
        let mut workers = JoinSet::new();
        for (name, work) in self.workers {
            workers.spawn(async move {
                work.await;
                tracing::debug!(worker = %name, "worker stopped");
            });
        }
        let drain = Drain {
            lifecycle: Arc::clone(&self.lifecycle),
            evaluator,
            drain_delay: core.drain_delay(),
            timeout: core.shutdown.timeout,
            stop_accepting,
            stop_workers: self.stop_workers,
            stop_checks,
        };
        let task = tokio::spawn(drain.run(server, workers, check_tasks));
        Running { addr, lifecycle: self.lifecycle, task }
    }
}

/// A served app: its address, its lifecycle, and the task that drains it.
#[derive(Debug)]
pub struct Running {
    addr: Option<SocketAddr>,
    lifecycle: Arc<Lifecycle>,
    task: JoinHandle<Result<(), Error>>,
}

impl Running {
    /// The address the listener is bound to.
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.addr
    }

    /// Starts draining, as SIGTERM does.
    pub fn drain(&self) {
        self.lifecycle.drain();
    }

    /// The lifecycle flags.
    pub fn lifecycle(&self) -> Arc<Lifecycle> {
        Arc::clone(&self.lifecycle)
    }

    /// Waits until the app has drained and stopped.
    ///
    /// # Errors
    /// When the server failed before draining started.
    pub async fn wait(self) -> Result<(), Error> {
        self.task.await.map_err(|e| Error::startup("join the server task", e))?
    }
}

/// The shutdown sequence, in the order docs/operating.md gives.
struct Drain {
    lifecycle: Arc<Lifecycle>,
    evaluator: Arc<Evaluator>,
    drain_delay: Duration,
    timeout: Duration,
    stop_accepting: CancellationToken,
    stop_workers: CancellationToken,
    stop_checks: CancellationToken,
}

impl Drain {
    async fn run(
        self,
        mut server: JoinHandle<std::io::Result<()>>,
        mut workers: JoinSet<()>,
        mut checks: JoinSet<()>,
    ) -> Result<(), Error> {
        tokio::select! {
            () = self.lifecycle.drain_started() => {}
            ended = &mut server => {
                self.stop_workers.cancel();
                self.stop_checks.cancel();
                let error = match ended {
                    Ok(Ok(())) => std::io::Error::other("the server stopped by itself"),
                    Ok(Err(e)) => e,
                    Err(e) => std::io::Error::other(e),
                };
                return Err(Error::Io { what: "keep serving", source: error });
            }
        }
        // 1. Readiness already fails (the flag is set); the gauge follows.
        self.evaluator.set_unready();
        tracing::info!(drain_delay = ?self.drain_delay, "draining: /ready fails; the listener closes after the drain delay");
        // 2. Load balancers need a moment to see the failing readiness and stop routing here.
        tokio::time::sleep(self.drain_delay).await;
        // 3. Stop accepting; in-flight requests get `shutdown.timeout` to finish.
        self.stop_accepting.cancel();
        match tokio::time::timeout(self.timeout, &mut server).await {
            Ok(_) => tracing::info!("listener closed; in-flight requests finished"),
            Err(_) => {
                server.abort();
                tracing::warn!(timeout = ?self.timeout, "in-flight requests did not finish in time and were dropped");
            }
        }
        // 4. Workers stop through their token, within the same timeout.
        self.stop_workers.cancel();
        self.stop_checks.cancel();
        if tokio::time::timeout(self.timeout, async { while workers.join_next().await.is_some() {} }).await.is_err() {
            tracing::warn!("workers did not stop in time");
            workers.abort_all();
        }
        checks.abort_all();
        while checks.join_next().await.is_some() {}
        Ok(())
    }
}

async fn not_found() -> impl IntoResponse {
    (
        StatusCode::NOT_FOUND,
        axum::Json(serde_json::json!({ "error": { "code": "not_found", "message": "no such route" } })),
    )
}

fn required<'a>(value: Option<&'a crate::config::Secret>, key: &str, name: &str) -> Result<&'a str, ConfigError> {
    value.map(crate::config::Secret::expose).ok_or_else(|| ConfigError {
        key: key.into(),
        origin: format!("environment variable `{name}`"),
        message: "required by this service, but not set".into(),
    })
}

/// Where a file setting came from: its well-known variable, or `CARACAL_<KEY>` / the config file.
fn file_origin(env_name: Option<&str>) -> String {
    match env_name {
        Some(name) => format!("environment variable `{name}` (or config key)"),
        None => "a `CARACAL_*` environment variable or the config file".into(),
    }
}

/// Reads a file a setting names (at most 1 MiB: certificates, keys, passwords).
fn read_config_file(path: &std::path::Path, key: &str, env_name: Option<&str>) -> Result<Vec<u8>, ConfigError> {
    let error = |message: String| ConfigError { key: key.into(), origin: file_origin(env_name), message };
    let metadata = std::fs::metadata(path).map_err(|e| error(format!("cannot read {}: {e}", path.display())))?;
    if metadata.len() > 1024 * 1024 {
        return Err(error(format!("{} is larger than 1 MiB", path.display())));
    }
    let bytes = std::fs::read(path).map_err(|e| error(format!("cannot read {}: {e}", path.display())))?;
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(error(format!("{} is empty", path.display())));
    }
    Ok(bytes)
}

fn bad_url(key: &str, name: &str, error: &dyn std::fmt::Display) -> ConfigError {
    ConfigError {
        key: key.into(),
        origin: format!("environment variable `{name}` (or config key)"),
        message: format!("not a usable URL: {error}"),
    }
}
