//! The coordinator's ladder: stopping Redis or PostgreSQL is reported with the right check
//! named, and it recovers by itself.

use std::time::Duration;

use caracal_core::Mode;
use caracal_core::config::Secret;
use caracal_testkit::app::{check_status, core_config, serve};
use caracal_testkit::{Postgres, Redis};

const SLACK: Duration = Duration::from_secs(8);

#[tokio::test(flavor = "multi_thread")]
async fn redis_and_postgres_outages_are_named_and_recovered() {
    let mut postgres = Postgres::start_default().expect("postgres");
    let mut redis = Redis::start_default().expect("redis");
    let url = postgres.fresh_database("coordinator").expect("database");
    caracal_store::migrate(&sqlx::PgPool::connect(&url).await.expect("connect")).await.expect("migrate");
    let mut core = core_config(Mode::Dev);
    core.database_url = Some(Secret::new(url));
    core.redis_url = Some(Secret::new(redis.url()));
    core.checks.timeout = Duration::from_secs(1);
    let sections = serde_json::json!({ "coordinator": { "refresh": "200ms" } });
    let app = caracal_testkit::app::app("coordinator", core, sections);
    let served = serve(caracal_coordinator::build(app).expect("build")).await;
    let body = served.wait_ready_status(200, SLACK).await.expect("ready");
    assert_eq!(check_status(&body, "prober:heartbeat"), "pass");

    redis.stop();
    let body = served.wait_for_check("redis:connectivity", "fail", SLACK).await.expect("Redis reported down");
    assert_eq!(body["status"], "fail");
    redis.start().expect("restart redis");
    served.wait_ready_status(200, SLACK).await.expect("ready again");

    postgres.stop();
    let body = served.wait_for_check("postgres:connectivity", "fail", SLACK).await.expect("PostgreSQL reported down");
    assert_eq!(check_status(&body, "outbox:oldest_pending_age"), "skipped");
    postgres.start().expect("restart postgres");
    served.wait_ready_status(200, SLACK).await.expect("ready again");
}
