//! A probe storm must not reach the dependencies: `/ready` reads a snapshot. Calls are counted
//! at the servers themselves: PostgreSQL's statement log and Redis's `INFO commandstats`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use caracal_core::checks;
use caracal_core::config::{Mode, Secret};
use caracal_testkit::{Redis, postgres::PostgresBuilder};

use crate::support;

const REQUESTS: usize = 2_000;
const INTERVAL: Duration = Duration::from_millis(500);

fn select_ones(log: &str) -> usize {
    log.lines().filter(|l| l.contains("SELECT 1")).count()
}

fn ping_calls(redis: &Redis) -> usize {
    let info = redis.command("INFO commandstats").expect("INFO commandstats");
    info.lines()
        .find_map(|l| l.strip_prefix("cmdstat_ping:calls="))
        .and_then(|rest| rest.split(',').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_thousand_concurrent_ready_requests_cost_no_extra_dependency_calls() {
    caracal_testkit::raise_fd_limit().expect("raise the open-file limit");
    // Private servers: the statement log and command counters then count only this test.
    let postgres = PostgresBuilder::default().setting("log_statement", "all").start().expect("postgres");
    let redis = Redis::start_default().expect("redis");
    let mut core = support::core_config(Mode::Stable);
    core.checks.interval = INTERVAL;
    // Generous: the checks share two threads with 2,000 connections, and what is counted here
    // is calls, not how fast a check answers on a loaded machine.
    core.checks.timeout = Duration::from_secs(5);
    // 2,000 connections at once, above the default cap (1,024 and a probe reserve of 64),
    // which would shed the excess: what is counted here is dependency calls.
    core.http.max_connections = 4_096;
    core.database_url = Some(Secret::new(postgres.url()));
    core.redis_url = Some(Secret::new(redis.url()));
    let app = support::app(core);
    let (pg, rc) = (app.postgres().expect("pool"), app.redis().expect("redis"));
    let served = support::serve(app.check(checks::postgres(pg)).check(checks::redis(rc))).await;
    served.wait_ready_status(200, Duration::from_secs(10)).await.expect("ready before the storm");

    let log = postgres.log_path();
    let pg_before = select_ones(&std::fs::read_to_string(&log).expect("postgres log"));
    let redis_before = ping_calls(&redis);
    let started = Instant::now();

    let client =
        reqwest::Client::builder().pool_max_idle_per_host(0).timeout(Duration::from_secs(60)).build().expect("client");
    let barrier = Arc::new(tokio::sync::Barrier::new(REQUESTS));
    let url = served.url("/ready");
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..REQUESTS {
        let (client, barrier, url) = (client.clone(), Arc::clone(&barrier), url.clone());
        tasks.spawn(async move {
            barrier.wait().await;
            client.get(&url).send().await.map(|r| r.status().as_u16())
        });
    }
    let mut ok = 0;
    while let Some(result) = tasks.join_next().await {
        if let Ok(Ok(200)) = result {
            ok += 1;
        }
    }
    let elapsed = started.elapsed();
    // Let the log catch up with anything the checks did during the storm.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let pg_calls = select_ones(&std::fs::read_to_string(&log).expect("postgres log")) - pg_before;
    let redis_calls = ping_calls(&redis) - redis_before;

    assert_eq!(ok, REQUESTS, "every /ready answered 200");
    // Each check runs at most once per (jittered, >= 0.9x) interval, plus one in flight.
    let allowed = (elapsed.as_secs_f64() / (INTERVAL.as_secs_f64() * 0.9)).ceil() as usize + 2;
    assert!(pg_calls <= allowed, "{pg_calls} SELECT 1 in {elapsed:?} (allowed {allowed})");
    assert!(redis_calls <= allowed, "{redis_calls} PING in {elapsed:?} (allowed {allowed})");
    eprintln!("storm: {REQUESTS} requests in {elapsed:?}; {pg_calls} SELECT 1, {redis_calls} PING (allowed {allowed})");
}
