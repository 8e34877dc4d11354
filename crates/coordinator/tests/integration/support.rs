//! Shared servers, fresh databases, a fleet of watched HTTP instances, and replicas.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::get;
use caracal_coordinator::config::{CoordinatorConfig, MembershipConfig};
use caracal_coordinator::membership::{self, Membership};
use caracal_coordinator::metrics::Metrics;
use caracal_coordinator::prober::Prober;
use caracal_store::invalidations;
use caracal_testkit::Postgres;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub use caracal_testkit::shared;

/// A fresh migrated database on `postgres`.
pub async fn database(postgres: &Postgres) -> sqlx::PgPool {
    let url = postgres.fresh_database("coordinator").expect("database");
    let pool = sqlx::PgPool::connect(&url).await.expect("connect");
    caracal_store::migrate(&pool).await.expect("migrate");
    pool
}

pub async fn redis(url: &str) -> caracal_core::RedisConnection {
    let client = redis::Client::open(url).expect("redis url");
    redis::aio::ConnectionManager::new(client).await.expect("redis").into()
}

/// Watched instances `/i/{n}` on one loopback server: who probed each, and which are unready.
#[derive(Clone, Default)]
pub struct Fleet {
    pub base: String,
    probes: Arc<Mutex<HashMap<u32, HashSet<String>>>>,
    unready: Arc<Mutex<HashSet<u32>>>,
}

impl Fleet {
    pub async fn start() -> Fleet {
        let mut fleet = Fleet::default();
        let app = Router::new()
            .route("/i/{n}/health", get(|| async { "ok" }))
            .route("/i/{n}/ready", get(ready))
            .with_state(fleet.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        fleet.base = format!("http://{}", listener.local_addr().expect("addr"));
        tokio::spawn(async move { axum::serve(listener, app).await });
        fleet
    }

    pub fn url(&self, n: u32) -> String {
        format!("{}/i/{n}", self.base)
    }

    pub fn set_ready(&self, n: u32, ready: bool) {
        let mut unready = self.unready.lock().expect("lock");
        if ready {
            unready.remove(&n);
        } else {
            unready.insert(n);
        }
    }

    /// Forgets who probed what.
    pub fn reset(&self) {
        self.probes.lock().expect("lock").clear();
    }

    /// Instance -> replicas that probed it since the last reset.
    pub fn probed_by(&self) -> HashMap<u32, HashSet<String>> {
        self.probes.lock().expect("lock").clone()
    }
}

async fn ready(State(fleet): State<Fleet>, Path(n): Path<u32>, headers: HeaderMap) -> StatusCode {
    // The user agent ends with `(<replica id>)`.
    let agent = headers.get("user-agent").and_then(|v| v.to_str().ok()).unwrap_or("");
    let replica = agent.rsplit_once('(').map_or(agent, |(_, r)| r.trim_end_matches(')')).to_string();
    fleet.probes.lock().expect("lock").entry(n).or_default().insert(replica);
    if fleet.unready.lock().expect("lock").contains(&n) { StatusCode::SERVICE_UNAVAILABLE } else { StatusCode::OK }
}

/// Registers target `name` with `instances`, probed every `interval_ms`.
pub async fn register(pool: &sqlx::PgPool, name: &str, instances: &[String], interval_ms: i32) {
    register_with_paths(pool, name, instances, interval_ms, ("/health", "/ready")).await;
}

/// As [`register`], with the target's health and ready `paths`.
pub async fn register_with_paths(
    pool: &sqlx::PgPool,
    name: &str,
    instances: &[String],
    interval_ms: i32,
    paths: (&str, &str),
) {
    let id: i64 = sqlx::query_scalar(
        "INSERT INTO targets (name, health_path, ready_path, metrics_path, interval_ms, timeout_ms) \
         VALUES ($1, $3, $4, '/metrics', $2, 150) RETURNING id",
    )
    .bind(name)
    .bind(interval_ms)
    .bind(paths.0)
    .bind(paths.1)
    .fetch_one(pool)
    .await
    .expect("target");
    sqlx::query("INSERT INTO instances (target_id, url) SELECT $1, unnest($2::text[])")
        .bind(id)
        .bind(instances)
        .execute(pool)
        .await
        .expect("instances");
}

/// Fast settings for tests.
pub fn config(members_key: &str) -> CoordinatorConfig {
    // Targets written straight into the tables (no `registry.changed`) are picked up by the
    // follower's full re-read; the fast path has its own test.
    let mut config = CoordinatorConfig {
        refresh: Duration::from_millis(200),
        full_resync: Duration::from_millis(500),
        ..Default::default()
    };
    config.membership = MembershipConfig {
        heartbeat: Duration::from_millis(200),
        ttl: Duration::from_secs(1),
        key: members_key.into(),
    };
    config
}

/// One in-process replica: membership and prober.
pub struct Replica {
    pub membership: Membership,
    registry: prometheus_client::registry::Registry,
    tasks: Vec<JoinHandle<()>>,
    stop: CancellationToken,
}

impl Replica {
    pub async fn start(pool: &sqlx::PgPool, redis_url: &str, config: &CoordinatorConfig) -> Replica {
        Self::start_with(pool, redis_url, config, caracal_core::outbound::Policy::default()).await
    }

    /// As [`Replica::start`], connecting under `outbound`.
    pub async fn start_with(
        pool: &sqlx::PgPool,
        redis_url: &str,
        config: &CoordinatorConfig,
        outbound: caracal_core::outbound::Policy,
    ) -> Replica {
        let membership = Membership::new(membership::replica_id());
        let mut registry = prometheus_client::registry::Registry::default();
        let metrics = Metrics::register(&mut registry);
        metrics.register_target_families(&mut registry);
        let prober = Prober::new(pool.clone(), membership.clone(), metrics, config.clone(), outbound);
        let stop = CancellationToken::new();
        let follower = invalidations::Follower::new(redis(redis_url).await, config.full_resync);
        let (notices, received) = tokio::sync::mpsc::channel(64);
        let tasks = vec![
            tokio::spawn(membership::run(
                membership.clone(),
                redis(redis_url).await,
                config.membership.clone(),
                stop.clone(),
            )),
            tokio::spawn(follower.run(notices, stop.clone())),
            tokio::spawn(prober.run(received, stop.clone())),
        ];
        Replica { membership, registry, tasks, stop }
    }

    /// Its metrics, in the text exposition format.
    pub fn exposition(&self) -> String {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry).expect("encode");
        text
    }

    /// Dies without a word: no goodbye in the membership set.
    pub fn crash(self) {
        for task in self.tasks {
            task.abort();
        }
    }

    /// Stops cleanly, leaving the membership set.
    pub async fn stop(self) {
        self.stop.cancel();
        for task in self.tasks {
            let _ = task.await;
        }
    }
}

/// Registers `spec` (validated) as the API would.
pub async fn create(pool: &sqlx::PgPool, spec: serde_json::Value) {
    let spec: caracal_store::target::TargetSpec = serde_json::from_value(spec).expect("a target document");
    spec.validate().expect("valid");
    caracal_store::registry::create(pool, &spec, &caracal_store::registry::Writer::Api).await.expect("created");
}

/// Each named target's (status, last error), once every one has a status other than `unknown`.
pub async fn settled(
    pool: &sqlx::PgPool,
    names: &[&str],
) -> std::collections::HashMap<String, (String, Option<String>)> {
    let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
    caracal_testkit::wait_for(Duration::from_secs(20), Duration::from_millis(100), || async {
        let rows: Vec<(String, String, Option<String>)> = sqlx::query_as(
            "SELECT t.name, s.status, s.last_error FROM instances i JOIN targets t ON t.id = i.target_id \
             JOIN instance_status s ON s.instance_id = i.id WHERE t.name = ANY($1) AND s.status <> 'unknown'",
        )
        .bind(&names)
        .fetch_all(pool)
        .await
        .ok()?;
        (rows.len() == names.len()).then(|| rows.into_iter().map(|(n, s, e)| (n, (s, e))).collect())
    })
    .await
    .expect("every instance probed")
}
