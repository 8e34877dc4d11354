//! Pipeline throughput and latency: events from outbox insert to audit row, through the real
//! relay and consumer, next to the raw PostgreSQL insert rate and Redis XADD rate measured in
//! the same run on the same servers. `cargo bench -p caracal-bin --bench pipeline`; figures go
//! into `docs/benchmarks.md`.
//!
//! Producers insert one event per transaction from 8 connections, as services do. The servers
//! are the testkit's (PostgreSQL with `fsync=off`): this measures the software, not the disk.

use std::time::{Duration, Instant};

use caracal_audit::consumer::Consumer;
use caracal_coordinator::config::RelayConfig;
use caracal_coordinator::relay::Relay;
use caracal_store::{NewEvent, outbox};
use caracal_testkit::{Postgres, Redis};
use tokio_util::sync::CancellationToken;

const EVENTS: usize = 20_000;
const PRODUCERS: usize = 8;

#[allow(clippy::print_stdout)] // the table on stdout is this harness's output
fn main() {
    let postgres = Postgres::start_default().expect("PostgreSQL (apt-get install -y postgresql)");
    let redis = Redis::start_default().expect("Redis (apt-get install -y redis-server)");
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
    runtime.block_on(async {
        let url = postgres.fresh_database("bench").expect("database");
        let pool = sqlx::postgres::PgPoolOptions::new().max_connections(16).connect(&url).await.expect("connect");
        caracal_store::migrate(&pool).await.expect("migrate");
        let client = redis::Client::open(redis.url()).expect("url");
        let conn = redis::aio::ConnectionManager::new(client).await.expect("redis");

        let pg_rate = raw_inserts(&pool).await;
        let xadd_rate = raw_xadds(&conn).await;

        let stop = CancellationToken::new();
        let mut registry = prometheus_client::registry::Registry::default();
        let relay_config = RelayConfig { idle_wait: Duration::from_millis(5), ..Default::default() };
        let relay = Relay::new(pool.clone(), conn.clone(), caracal_coordinator::metrics::Metrics::register(&mut registry), relay_config);
        let consumer_conn = redis::aio::ConnectionManager::new(redis::Client::open(redis.url()).expect("url")).await.expect("redis");
        let audit_config = caracal_audit::AuditConfig { block: Duration::from_millis(100), ..Default::default() };
        let consumer = Consumer::new(pool.clone(), consumer_conn, caracal_audit::metrics::Metrics::register(&mut registry), audit_config);
        let tasks = [tokio::spawn(relay.run(stop.clone())), tokio::spawn(consumer.run(stop.clone()))];
        tokio::time::sleep(Duration::from_millis(500)).await;

        let started = Instant::now();
        let producer_pool = pool.clone();
        produce(EVENTS, move |i| {
            let event = NewEvent { event_type: "bench.event".into(), target: Some("bench".into()), instance: None, payload: serde_json::json!({ "i": i }) };
            let pool = producer_pool.clone();
            async move {
                let mut tx = pool.begin().await.expect("tx");
                outbox::enqueue(&mut tx, &event).await.expect("enqueue");
                tx.commit().await.expect("commit");
            }
        })
        .await;
        let produced = started.elapsed();
        loop {
            let n: i64 = sqlx::query_scalar("SELECT count(*) FROM audit_events").fetch_one(&pool).await.expect("count");
            if n as usize >= EVENTS {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let elapsed = started.elapsed();
        stop.cancel();
        for task in tasks {
            let _ = task.await;
        }
        let (p50, p99, max): (f64, f64, f64) = sqlx::query_as(
            "SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY ms), percentile_cont(0.99) WITHIN GROUP (ORDER BY ms), max(ms) \
             FROM (SELECT (EXTRACT(EPOCH FROM a.recorded_at - o.created_at) * 1000)::float8 AS ms \
                   FROM audit_events a JOIN outbox o ON o.id = a.outbox_id) l",
        )
        .fetch_one(&pool)
        .await
        .expect("latency");
        let (rows, distinct): (i64, i64) =
            sqlx::query_as("SELECT count(*), count(DISTINCT outbox_id) FROM audit_events").fetch_one(&pool).await.expect("counts");
        assert_eq!((rows, distinct), (EVENTS as i64, EVENTS as i64), "each event exactly once");

        println!("| measure | figure |");
        println!("|---|---:|");
        println!("| raw PostgreSQL inserts (1 row/transaction, {PRODUCERS} connections) | {pg_rate:.0} rows/s |");
        println!("| raw Redis XADD ({PRODUCERS} concurrent, one entry per call) | {xadd_rate:.0} entries/s |");
        println!("| outbox inserts during the pipeline run | {:.0} events/s |", EVENTS as f64 / produced.as_secs_f64());
        println!("| pipeline: outbox insert to audit row, {EVENTS} events | {:.0} events/s |", EVENTS as f64 / elapsed.as_secs_f64());
        println!("| end-to-end latency p50 / p99 / max | {p50:.1} / {p99:.1} / {max:.1} ms |");
    });
}

/// Runs `one(i)` for `0..n` on `PRODUCERS` concurrent tasks.
async fn produce<F, Fut>(n: usize, one: F)
where
    F: Fn(usize) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let mut tasks = Vec::new();
    for p in 0..PRODUCERS {
        let one = one.clone();
        tasks.push(tokio::spawn(async move {
            let mut i = p;
            while i < n {
                one(i).await;
                i += PRODUCERS;
            }
        }));
    }
    for t in tasks {
        t.await.expect("producer");
    }
}

async fn raw_inserts(pool: &sqlx::PgPool) -> f64 {
    sqlx::query("CREATE TABLE raw_bench (id bigserial PRIMARY KEY, payload jsonb NOT NULL, created_at timestamptz NOT NULL DEFAULT now())")
        .execute(pool)
        .await
        .expect("table");
    let started = Instant::now();
    let p = pool.clone();
    produce(EVENTS, move |i| {
        let pool = p.clone();
        async move {
            sqlx::query("INSERT INTO raw_bench (payload) VALUES ($1)")
                .bind(serde_json::json!({ "i": i }))
                .execute(&pool)
                .await
                .expect("insert");
        }
    })
    .await;
    EVENTS as f64 / started.elapsed().as_secs_f64()
}

async fn raw_xadds(conn: &redis::aio::ConnectionManager) -> f64 {
    let started = Instant::now();
    let c = conn.clone();
    produce_redis(EVENTS, c).await;
    EVENTS as f64 / started.elapsed().as_secs_f64()
}

async fn produce_redis(n: usize, conn: redis::aio::ConnectionManager) {
    let mut tasks = Vec::new();
    for p in 0..PRODUCERS {
        let mut conn = conn.clone();
        tasks.push(tokio::spawn(async move {
            let mut i = p;
            while i < n {
                let _: String = redis::cmd("XADD")
                    .arg("raw.bench")
                    .arg("*")
                    .arg("i")
                    .arg(i)
                    .query_async(&mut conn)
                    .await
                    .expect("xadd");
                i += PRODUCERS;
            }
        }));
    }
    for t in tasks {
        t.await.expect("producer");
    }
}
