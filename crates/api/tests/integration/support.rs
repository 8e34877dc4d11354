//! One PostgreSQL and Redis for the binary; each test gets its own migrated database.

use caracal_core::Mode;
use caracal_core::config::Secret;
use caracal_testkit::app::{Served, core_config, serve};
use caracal_testkit::{Postgres, Redis};

pub const ADMIN: &str = "admin-token-for-tests";
pub const METRICS: &str = "metrics-bearer-for-tests";

pub use caracal_testkit::shared;

/// The API on a fresh migrated database: `(served, pool)`.
pub async fn api_on(
    postgres: &Postgres,
    redis: &Redis,
    mode: Mode,
    sections: serde_json::Value,
) -> (Served, sqlx::PgPool) {
    let url = postgres.fresh_database("api").expect("database");
    let pool = sqlx::PgPool::connect(&url).await.expect("connect");
    caracal_store::migrate(&pool).await.expect("migrate");
    let mut core = core_config(mode);
    core.database_url = Some(Secret::new(url));
    core.redis_url = Some(Secret::new(redis.url()));
    core.admin_token = Some(Secret::new(ADMIN));
    core.metrics.bearer = Some(Secret::new(METRICS));
    // Five checks share two cores with the other tests: a roomier timeout than the default
    // test setting keeps a slow moment from reading as a failure.
    core.checks.timeout = std::time::Duration::from_secs(1);
    let app = caracal_testkit::app::app("api", core, sections);
    let served = serve(caracal_api::build(app).expect("build the api")).await;
    served.wait_ready_status(200, std::time::Duration::from_secs(10)).await.expect("api ready");
    (served, pool)
}

pub async fn api(mode: Mode) -> (Served, sqlx::PgPool) {
    let shared = shared();
    api_on(&shared.postgres, &shared.redis, mode, serde_json::json!({})).await
}

/// Rows in the tables a write touches: targets, instances, outbox.
pub async fn counts(pool: &sqlx::PgPool) -> (i64, i64, i64) {
    sqlx::query_as(
        "SELECT (SELECT count(*) FROM targets), (SELECT count(*) FROM instances), (SELECT count(*) FROM outbox)",
    )
    .fetch_one(pool)
    .await
    .expect("counts")
}
