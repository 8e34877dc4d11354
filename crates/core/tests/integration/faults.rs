//! Real faults under a running app: a stopped Redis, a stopped PostgreSQL, a frozen PostgreSQL.

use std::time::{Duration, Instant};

use caracal_core::checks;
use caracal_core::config::{Mode, Secret};
use caracal_testkit::{Postgres, Redis};

use crate::support::{self, Served, check_status};

const INTERVAL: Duration = Duration::from_millis(300);
const TIMEOUT: Duration = Duration::from_millis(400);
/// Generous: a loaded 2-core CI machine must not make this flaky.
const SLACK: Duration = Duration::from_secs(3);

async fn app_on(postgres: &Postgres, redis: &Redis) -> Served {
    let mut core = support::core_config(Mode::Dev);
    core.checks.interval = INTERVAL;
    core.checks.timeout = TIMEOUT;
    core.database_url = Some(Secret::new(postgres.url()));
    core.redis_url = Some(Secret::new(redis.url()));
    let app = support::app(core);
    let (pg, rc) = (app.postgres().expect("pool"), app.redis().expect("redis"));
    let served = support::serve(app.check(checks::postgres(pg)).check(checks::redis(rc))).await;
    served.wait_ready_status(200, Duration::from_secs(10)).await.expect("ready at start");
    served
}

#[tokio::test(flavor = "multi_thread")]
async fn redis_stopped_then_restarted() {
    let postgres = Postgres::start_default().expect("postgres");
    let mut redis = Redis::start_default().expect("redis");
    let served = app_on(&postgres, &redis).await;

    redis.stop();
    let stopped = Instant::now();
    let body = served.wait_ready_status(503, INTERVAL + TIMEOUT + SLACK).await.expect("unready after Redis stops");
    assert_eq!(check_status(&body, "redis:connectivity"), "fail", "{body}");
    assert_eq!(check_status(&body, "postgres:connectivity"), "pass", "{body}");
    eprintln!("redis stop noticed after {:?}", stopped.elapsed());
    assert_eq!(served.get("/health").await.status(), 200, "liveness never depends on Redis");

    redis.start().expect("restart redis");
    served
        .wait_ready_status(200, INTERVAL + TIMEOUT + SLACK + Duration::from_secs(2))
        .await
        .expect("ready again without a restart");
}

#[tokio::test(flavor = "multi_thread")]
async fn postgres_stopped_then_restarted() {
    let mut postgres = Postgres::start_default().expect("postgres");
    let redis = Redis::start_default().expect("redis");
    let served = app_on(&postgres, &redis).await;

    postgres.stop();
    let body = served.wait_ready_status(503, INTERVAL + TIMEOUT + SLACK).await.expect("unready after PostgreSQL stops");
    assert_eq!(check_status(&body, "postgres:connectivity"), "fail", "{body}");
    assert_eq!(check_status(&body, "redis:connectivity"), "pass", "{body}");

    postgres.start().expect("restart postgres");
    served
        .wait_ready_status(200, INTERVAL + TIMEOUT + SLACK + Duration::from_secs(3))
        .await
        .expect("ready again without a restart");
}

#[tokio::test(flavor = "multi_thread")]
async fn postgres_frozen_times_out_while_probes_answer_promptly() {
    let postgres = Postgres::start_default().expect("postgres");
    let redis = Redis::start_default().expect("redis");
    let served = app_on(&postgres, &redis).await;

    postgres.pause();
    let deadline = Instant::now() + INTERVAL + TIMEOUT + SLACK;
    let mut slowest = Duration::ZERO;
    let mut unready_body = None;
    while Instant::now() < deadline {
        let t = Instant::now();
        let health = served.get("/health").await.status();
        let (ready, body) = served.get_json("/ready").await;
        slowest = slowest.max(t.elapsed());
        assert_eq!(health, 200, "/health stays 200 while PostgreSQL is frozen");
        if ready == 503 {
            unready_body = Some(body);
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    postgres.resume();
    let body = unready_body.expect("/ready turned 503 while PostgreSQL was frozen");
    assert_eq!(check_status(&body, "postgres:connectivity"), "fail", "{body}");
    let output = body["checks"]["postgres:connectivity"][0]["output"].as_str().unwrap_or("");
    assert!(output.contains("timed out") || output.contains("connection"), "{output}");
    assert!(
        slowest < Duration::from_millis(500),
        "probes answered within {slowest:?}; they must never wait on the database"
    );
    served.wait_ready_status(200, Duration::from_secs(10)).await.expect("ready again after resume");
}
