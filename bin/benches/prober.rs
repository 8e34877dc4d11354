//! Prober cost: probes/s and CPU of one coordinator replica watching 5,000 instances served by
//! a local test server in a separate process, with gray-failure detection off and on in turn.
//! `cargo bench -p caracal-bin --bench prober`;
//! figures go into `docs/benchmarks.md`.
//!
//! Each probe is two GETs (`/health` and `/ready`). The fleet server runs in its own process so
//! the prober's CPU time (read from `/proc/self/stat`) is its own.

use std::time::{Duration, Instant};

use axum::Router;
use axum::routing::get;
use caracal_testkit::Postgres;

#[path = "support/lone_prober.rs"]
mod lone_prober;
use caracal_testkit::bench::{cpu_seconds, spawn_self};
use lone_prober::LoneProber;

const HOSTS: usize = 50;
const PER_HOST: usize = 100;
const INTERVAL_MS: i32 = 1000;
const WARMUP: Duration = Duration::from_secs(4);
const WINDOW: Duration = Duration::from_secs(15);

#[allow(clippy::print_stdout)] // the table on stdout is this harness's output
fn main() {
    if std::env::args().nth(1).as_deref() == Some("--serve-fleet") {
        return serve_fleet();
    }
    let (mut fleet, ports) = spawn_self("--serve-fleet");
    assert_eq!(ports.len(), HOSTS);

    let postgres = Postgres::start_default().expect("PostgreSQL (apt-get install -y postgresql)");
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    let phases = runtime.block_on(async {
        let url = postgres.fresh_database("bench").expect("database");
        let pool = sqlx::PgPool::connect(&url).await.expect("connect");
        caracal_store::migrate(&pool).await.expect("migrate");
        for (h, port) in ports.iter().enumerate() {
            let id: i64 = sqlx::query_scalar(
                "INSERT INTO targets (name, health_path, ready_path, metrics_path, interval_ms, timeout_ms) \
                 VALUES ($1, '/health', '/ready', '/metrics', $2, 500) RETURNING id",
            )
            .bind(format!("host{h}"))
            .bind(INTERVAL_MS)
            .fetch_one(&pool)
            .await
            .expect("target");
            let urls: Vec<String> = (0..PER_HOST).map(|n| format!("http://127.0.0.1:{port}/i/{n}")).collect();
            sqlx::query("INSERT INTO instances (target_id, url) SELECT $1, unnest($2::text[])")
                .bind(id)
                .bind(&urls)
                .execute(&pool)
                .await
                .expect("instances");
        }
        let prober = LoneProber::start(pool.clone()).await;
        // Gray-failure detection off, then on (every detector judging: windows full, so the
        // medians are computed on every probe), twice, in the same run.
        let mut phases = Vec::new();
        for enabled in [false, true, false, true, false, true] {
            sqlx::query("UPDATE targets SET degraded = $1")
                .bind(serde_json::json!({ "enabled": enabled }))
                .execute(&pool)
                .await
                .expect("degraded");
            prober.notices.send(caracal_store::invalidations::Notice::Resync).await.expect("send");
            // 60 probes fill an instance's latency windows.
            tokio::time::sleep(if enabled { WARMUP + Duration::from_secs(62) } else { WARMUP }).await;
            let (p0, c0, t0) = (probes(&prober.registry), cpu_seconds(), Instant::now());
            tokio::time::sleep(WINDOW).await;
            let (p1, c1, elapsed) = (probes(&prober.registry), cpu_seconds(), t0.elapsed().as_secs_f64());
            phases.push((enabled, (p1 - p0) / elapsed, (c1 - c0) / elapsed));
        }
        prober.stop().await;
        phases
    });
    let _ = fleet.kill();
    let _ = fleet.wait();
    let instances = HOSTS * PER_HOST;
    println!("{instances} instances watched (interval {INTERVAL_MS} ms); each probe: GET /health + GET /ready");
    println!();
    println!("| gray-failure detection | probes/s | prober CPU (cores) | probes/s per core | CPU per probe (µs) |");
    println!("|---|---:|---:|---:|---:|");
    let mut per_probe = [Vec::new(), Vec::new()];
    for (enabled, probes_per_s, cpu_per_s) in &phases {
        let us = cpu_per_s / probes_per_s.max(1e-9) * 1e6;
        per_probe[usize::from(*enabled)].push(us);
        println!(
            "| {} | {probes_per_s:.0} | {cpu_per_s:.2} | {:.0} | {us:.1} |",
            if *enabled { "on" } else { "off" },
            probes_per_s / cpu_per_s.max(1e-9)
        );
    }
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len().max(1) as f64;
    println!();
    println!("CPU per probe, on against off: {:+.1} %", (mean(&per_probe[1]) / mean(&per_probe[0]) - 1.0) * 100.0);
}

fn serve_fleet() {
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().expect("runtime");
    runtime.block_on(async {
        let app =
            Router::new().route("/i/{n}/health", get(|| async { "ok" })).route("/i/{n}/ready", get(|| async { "ok" }));
        let mut ports = Vec::new();
        for _ in 0..HOSTS {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
            ports.push(listener.local_addr().expect("addr").port().to_string());
            let app = app.clone();
            tokio::spawn(async move { axum::serve(listener, app).await });
        }
        #[allow(clippy::print_stdout)] // the parent reads the ports from stdout
        {
            println!("{}", ports.join(" "));
        }
        std::future::pending::<()>().await;
    });
}

fn probes(registry: &prometheus_client::registry::Registry) -> f64 {
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, registry).expect("encode");
    text.lines()
        .filter_map(|l| l.strip_prefix("caracal_coordinator_probes_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}
