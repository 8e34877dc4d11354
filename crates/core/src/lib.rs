//! `caracal-core`: production-grade `/health`, `/ready` and `/metrics` for any axum service.
//!
//! A service builds its checks and routes on an [`App`] and hands it to [`main`]:
//!
//! ```no_run
//! use axum::{Router, routing::get};
//! use caracal_core::{App, checks};
//!
//! fn main() -> std::process::ExitCode {
//!     caracal_core::main("hello", env!("CARGO_PKG_VERSION"), 8000, |app: App| async move {
//!         let pg = app.postgres()?;
//!         let redis = app.redis()?;
//!         Ok(app
//!             .check(checks::postgres(pg))
//!             .check(checks::redis(redis))
//!             .routes(Router::new().route("/hello", get(|| async { "hello" }))))
//!     })
//! }
//! ```
//!
//! # Layout
//! - [`config`]: figment layering (defaults ← `caracal.toml` ← `CARACAL_*` ← well-known
//!   names) and [`CoreConfig`]; [`env`] names every environment variable once.
//! - [`check`]: what a check is ([`Check`], [`Rung`]); [`checks`]: the built-in ones
//!   (PostgreSQL, Redis, stream consumer group, transactional outbox).
//! - `ladder` and `evaluator` (private): the readiness rules as plain data, and the background
//!   tasks that run checks and publish the snapshot `/ready` reads.
//! - `probes` (private): the `/health`, `/ready`, `/ready/{check}`, `/metrics`,
//!   `/metrics.json` handlers; [`auth`]: the fail-closed metrics bearer.
//! - [`metrics`]: every metric name, declared once; `http_metrics` and `layers` (private):
//!   the golden-signal layer and the standard tower stack, composed in one function.
//! - [`readiness`]: [`Readiness`], the latest results for a service's own status endpoints;
//!   [`ready_body`]: a `/ready` answer read back by a client.
//! - [`outbound`]: the address policy every connection to a target goes through.
//! - [`redis_connection`]: [`RedisConnection`], Redis at one address or behind Sentinels.
//! - [`lifecycle`]: draining, forced unhealthy, signal handling; [`app`]: [`App`] and
//!   [`Running`], serving and the drain sequence; [`telemetry`]: logs and OTLP spans.

pub mod app;
pub mod auth;
pub mod check;
pub mod checks;
pub mod config;
pub mod env;
mod error;
mod evaluator;
pub mod grpc_health;
mod http_metrics;
mod ladder;
mod layers;
pub mod lifecycle;
pub mod listener;
pub mod memory;
pub mod metrics;
mod metrics_json;
pub mod outbound;
mod probes;
pub mod readiness;
pub mod ready_body;
pub mod redis_connection;
pub mod secret_file;
pub mod telemetry;
pub mod tls;
pub mod unavailable;

use std::future::Future;
use std::net::SocketAddr;
use std::process::ExitCode;

use tokio::net::TcpListener;

pub use app::{App, Running};
pub use check::{Check, Failure, Observed, ProbeResult, Rung};
pub use config::{Config, ConfigError, CoreConfig, Mode};
pub use error::{Error, error_response};
pub use ladder::Status;
pub use lifecycle::{Lifecycle, Signals};
pub use readiness::{CheckView, Readiness};
pub use redis_connection::RedisConnection;

/// Runs a service binary: loads configuration (exit 2 on a bad value), installs signal
/// handlers before any slow work, sets up telemetry, lets `build` add checks, routes and
/// workers, then serves until drained. Returns the process exit code.
pub fn main<F, Fut>(name: &'static str, version: &'static str, default_port: u16, build: F) -> ExitCode
where
    F: FnOnce(App) -> Fut,
    Fut: Future<Output = Result<App, Error>>,
{
    exit_code(name, run(name, version, default_port, build))
}

/// Runs a one-off task of a service binary (such as `--migrate`) with the same configuration,
/// telemetry and exit codes as [`main`], instead of serving.
pub fn task<F, Fut>(name: &'static str, version: &'static str, default_port: u16, work: F) -> ExitCode
where
    F: FnOnce(Config) -> Fut,
    Fut: Future<Output = Result<(), Error>>,
{
    let result = Config::load(default_port).map_err(Error::from).and_then(|config| {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .map_err(|source| Error::Io { what: "start the async runtime", source })?;
        runtime.block_on(async move {
            let telemetry = telemetry::init(name, version, &config.core)?;
            let result = work(config).await;
            telemetry.shutdown();
            result
        })
    });
    exit_code(name, result)
}

/// Reports `result` on stderr (and in the logs) and turns it into the process exit code.
fn exit_code(name: &str, result: Result<(), Error>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            let mut message = format!("{name}: {error}");
            let mut source = std::error::Error::source(&error);
            while let Some(cause) = source {
                message.push_str(&format!(": {cause}"));
                source = cause.source();
            }
            tracing::error!(%message, "exiting");
            eprintln!("{message}");
            ExitCode::from(error.exit_code())
        }
    }
}

fn run<F, Fut>(name: &'static str, version: &'static str, default_port: u16, build: F) -> Result<(), Error>
where
    F: FnOnce(App) -> Fut,
    Fut: Future<Output = Result<App, Error>>,
{
    let config = Config::load(default_port)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|source| Error::Io { what: "start the async runtime", source })?;
    runtime.block_on(async move {
        // First, so a SIGTERM during slow start-up work drains instead of killing us.
        let signals = Signals::install().map_err(|source| Error::Io { what: "install signal handlers", source })?;
        let telemetry = telemetry::init(name, version, &config.core)?;
        let addr = SocketAddr::new(config.core.bind, config.core.port);
        let mode = config.core.mode;
        let app = App::new(name, version, config)?;
        let lifecycle = app.lifecycle();
        signals.spawn_handler(app.lifecycle());
        let app = tokio::select! {
            app = build(app) => app?,
            () = lifecycle.drain_started() => {
                tracing::info!("stopped during start-up");
                telemetry.shutdown();
                return Ok(());
            }
        };
        let listener = TcpListener::bind(addr).await.map_err(|source| Error::Bind { addr, source })?;
        tracing::info!(%addr, %mode, version, "serving");
        let result = app.start(listener).wait().await;
        tracing::info!("stopped");
        telemetry.shutdown();
        result
    })
}
