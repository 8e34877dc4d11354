//! A PostgreSQL for the binary; per test a fresh database, a private Redis and the audit app.

use std::sync::OnceLock;
use std::time::Duration;

use caracal_core::Mode;
use caracal_core::config::Secret;
use caracal_store::stream;
use caracal_testkit::app::{Served, core_config, serve};
use caracal_testkit::{Postgres, Redis};

pub const ADMIN: &str = "audit-admin";

pub fn postgres() -> &'static Postgres {
    static PG: OnceLock<Postgres> = OnceLock::new();
    PG.get_or_init(|| Postgres::start_default().expect("postgres"))
}

pub struct Audit {
    pub served: Served,
    pub pool: sqlx::PgPool,
    pub redis: Redis,
}

/// The audit service with `settings` as its `[audit]` table.
pub async fn audit(mode: Mode, settings: serde_json::Value) -> Audit {
    let redis = Redis::start_default().expect("redis");
    let url = postgres().fresh_database("audit").expect("database");
    let pool = sqlx::PgPool::connect(&url).await.expect("connect");
    caracal_store::migrate(&pool).await.expect("migrate");
    let mut core = core_config(mode);
    core.database_url = Some(Secret::new(url));
    core.redis_url = Some(Secret::new(redis.url()));
    core.admin_token = Some(Secret::new(ADMIN));
    core.checks.timeout = Duration::from_secs(1);
    let app = caracal_testkit::app::app("audit", core, serde_json::json!({ "audit": settings }));
    let served = serve(caracal_audit::build(app).expect("build")).await;
    served.wait_ready_status(200, Duration::from_secs(10)).await.expect("audit ready");
    Audit { served, pool, redis }
}

impl Audit {
    /// Appends a well-formed event with outbox id `id`.
    pub fn publish(&self, id: i64, target: &str) {
        let line = format!(
            "XADD {} * outbox_id {id} type instance.status_changed target {target} instance http://x:1 payload '{{\"to\":\"up\"}}' occurred_at 2026-11-21T14:00:00Z",
            stream::EVENTS
        );
        let reply = self.redis.command(&line).expect("xadd");
        assert!(reply.starts_with('$'), "{reply}");
    }

    /// Waits until the ledger holds `n` rows.
    pub async fn wait_rows(&self, n: i64) -> i64 {
        let pool = self.pool.clone();
        let result = caracal_testkit::wait_for(Duration::from_secs(15), Duration::from_millis(50), || async {
            let count: i64 = sqlx::query_scalar("SELECT count(*) FROM audit_events").fetch_one(&pool).await.ok()?;
            (count >= n).then_some(count)
        })
        .await;
        match result {
            Ok(count) => count,
            Err(_) => {
                sqlx::query_scalar("SELECT count(*) FROM audit_events").fetch_one(&self.pool).await.expect("count")
            }
        }
    }
}
