//! Control on a fresh database, and reading the registry as the tests need it.

use std::time::Duration;

use caracal_core::Mode;
use caracal_core::config::Secret;
use caracal_testkit::app::{Served, core_config, serve};

pub use caracal_testkit::shared;

/// The metrics bearer, to read check outputs and metrics.
pub const METRICS: &str = "metrics-bearer-for-tests";

/// A fresh migrated database on the shared PostgreSQL.
pub async fn database() -> sqlx::PgPool {
    let url = shared().postgres.fresh_database("control").expect("database");
    let pool = sqlx::PgPool::connect(&url).await.expect("connect");
    caracal_store::migrate(&pool).await.expect("migrate");
    pool
}

/// Control (rc mode) on `pool`'s database with `[control]` settings; the registry is re-read
/// every 300 ms unless they say otherwise (no relay runs here to announce changes).
pub async fn control(pool: &sqlx::PgPool, mut settings: serde_json::Value) -> Served {
    let url = pool.connect_options().get_database().map(|db| shared().postgres.url_for(db)).expect("database name");
    if settings.get("full_resync").is_none() {
        settings["full_resync"] = serde_json::json!("300ms");
    }
    let mut core = core_config(Mode::Rc);
    core.database_url = Some(Secret::new(url));
    core.redis_url = Some(Secret::new(shared().redis.url()));
    core.metrics.bearer = Some(Secret::new(METRICS));
    core.checks.timeout = Duration::from_secs(1);
    let app = caracal_testkit::app::app("control", core, serde_json::json!({ "control": settings }));
    serve(caracal_control::build(app).expect("build control")).await
}

/// A target's instances, sorted.
pub async fn instances(pool: &sqlx::PgPool, name: &str) -> Vec<String> {
    sqlx::query_scalar(
        "SELECT i.url FROM instances i JOIN targets t ON t.id = i.target_id WHERE t.name = $1 ORDER BY i.url",
    )
    .bind(name)
    .fetch_all(pool)
    .await
    .expect("instances")
}

/// Waits until `name`'s instances are `want`; the last ones seen when they never are.
pub async fn wait_instances(pool: &sqlx::PgPool, name: &str, want: &[&str]) -> Result<(), Vec<String>> {
    let result = caracal_testkit::wait_for(Duration::from_secs(15), Duration::from_millis(50), || async {
        (instances(pool, name).await == want).then_some(())
    })
    .await;
    match result {
        Ok(()) => Ok(()),
        Err(_) => Err(instances(pool, name).await),
    }
}

/// One check of control's `/ready` (as the metrics bearer sees it): status and output.
pub async fn check(served: &Served, name: &str) -> (String, String) {
    let body: serde_json::Value = served
        .http
        .get(served.url("/ready"))
        .bearer_auth(METRICS)
        .send()
        .await
        .expect("ready")
        .json()
        .await
        .expect("json");
    let check = &body["checks"][name][0];
    (check["status"].as_str().unwrap_or("missing").into(), check["output"].as_str().unwrap_or("").into())
}

/// Control's `/metrics`.
pub async fn metrics(served: &Served) -> String {
    served
        .http
        .get(served.url("/metrics"))
        .bearer_auth(METRICS)
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text")
}
