//! Starting the platform's binaries for a test.

use std::path::Path;
use std::time::Duration;

use caracal_testkit::{Postgres, Redis, ServiceProcess, Signal, redis::RedisBuilder};

/// A PostgreSQL with a fresh database and a Redis, private to one test.
pub struct Stores {
    pub postgres: Postgres,
    pub redis: Redis,
    pub database_url: String,
}

impl Stores {
    /// With a Redis that keeps its data across a restart (fsync-always append-only file).
    pub fn start() -> Stores {
        Self::with_redis(RedisBuilder::default().persistent(true))
    }

    /// With a Redis that loses everything when it restarts, as a cache-configured one does.
    pub fn start_volatile() -> Stores {
        Self::with_redis(RedisBuilder::default().persistent(false))
    }

    fn with_redis(redis: RedisBuilder) -> Stores {
        let postgres = Postgres::start_default().expect("postgres");
        let redis = redis.start().expect("redis");
        let database_url = postgres.fresh_database("e2e").expect("database");
        Stores { postgres, redis, database_url }
    }

    pub async fn pool(&self) -> sqlx::PgPool {
        sqlx::postgres::PgPoolOptions::new().max_connections(4).connect(&self.database_url).await.expect("connect")
    }
}

/// One running service binary.
pub struct Service {
    pub process: ServiceProcess,
    pub base: String,
}

/// Runs `binary` with the stores' URLs, `dev` mode, a free port and `env`; waits for `/ready`.
pub async fn start(binary: &str, stores: &Stores, env: &[(&str, &str)]) -> Service {
    start_on(binary, stores, caracal_testkit::free_port().expect("port"), env).await
}

/// As [`start`], on `port` (to restart a service where its clients expect it).
pub async fn start_on(binary: &str, stores: &Stores, port: u16, env: &[(&str, &str)]) -> Service {
    start_with(binary, &stores.database_url, &stores.redis.url(), port, env).await
}

/// As [`start_on`], with the store URLs given (a proxy in front of the stores, say).
pub async fn start_with(binary: &str, database_url: &str, redis_url: &str, port: u16, env: &[(&str, &str)]) -> Service {
    let mut all = vec![("DATABASE_URL", database_url), ("REDIS_URL", redis_url)];
    all.extend_from_slice(env);
    start_env(binary, port, &all).await
}

/// As [`start_with`], with the store settings in `env` alone (Redis behind Sentinels, say).
pub async fn start_env(binary: &str, port: u16, env: &[(&str, &str)]) -> Service {
    let port = port.to_string();
    let mut all = vec![
        ("PORT", port.as_str()),
        ("CARACAL_MODE", "dev"),
        ("CARACAL_CHECKS__INTERVAL", "200ms"),
        ("CARACAL_SHUTDOWN__TIMEOUT", "5s"),
    ];
    all.extend_from_slice(env);
    let process = ServiceProcess::spawn(Path::new(binary), &[], &all).expect("spawn");
    let service = Service { process, base: format!("http://127.0.0.1:{port}") };
    let http = reqwest::Client::new();
    let ready = caracal_testkit::wait_for(Duration::from_secs(30), Duration::from_millis(50), || async {
        http.get(format!("{}/ready", service.base)).send().await.ok().filter(|r| r.status() == 200)
    })
    .await;
    assert!(ready.is_ok(), "{binary} never became ready; stderr:\n{}", service.process.stderr());
    service
}

/// Runs `caracal-api --migrate` against the stores.
pub fn migrate(stores: &Stores) {
    migrate_url(&stores.database_url, &stores.redis.url());
}

/// Runs `caracal-api --migrate` against `database_url`.
pub fn migrate_url(database_url: &str, redis_url: &str) {
    let mut process = ServiceProcess::spawn(
        Path::new(env!("CARGO_BIN_EXE_caracal-api")),
        &["--migrate"],
        &[("DATABASE_URL", database_url), ("REDIS_URL", redis_url), ("CARACAL_MODE", "dev")],
    )
    .expect("spawn migrate");
    let status = process.wait_timeout(Duration::from_secs(30)).expect("migrate finishes");
    assert!(status.success(), "migrate failed: {}", process.stderr());
}

/// The sum of every series of `name` (any labels) in `base`'s `/metrics`, if it has any.
pub async fn metric(base: &str, name: &str) -> Option<f64> {
    let text = reqwest::get(format!("{base}/metrics")).await.ok()?.text().await.ok()?;
    let values: Vec<f64> = text
        .lines()
        .filter(|l| l.strip_prefix(name).is_some_and(|rest| rest.starts_with(' ') || rest.starts_with('{')))
        .filter_map(|l| l.rsplit(' ').next()?.parse().ok())
        .collect();
    (!values.is_empty()).then(|| values.iter().sum())
}

impl Service {
    /// Stops the service with SIGTERM and waits for it.
    pub fn stop(mut self) {
        self.process.signal(Signal::SIGTERM);
        self.process.wait_timeout(Duration::from_secs(15));
    }
}
