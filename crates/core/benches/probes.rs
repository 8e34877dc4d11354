//! Probe throughput: requests/s of a bare axum handler, of `/health`, and of `/ready` with
//! five registered checks (PostgreSQL, Redis and three in-process ones), measured with `wrk`
//! in one run on this machine. Run with `cargo bench -p caracal-core --bench probes`; the
//! figures go into `docs/benchmarks.md`.
//!
//! Each target is served by the same kind of runtime (two worker threads) on loopback, and
//! `wrk` runs as a separate process with one thread and 32 connections. The order of targets
//! rotates over several rounds and the median of each is reported, so a noisy neighbour on
//! the machine does not favour one target.

use std::time::Duration;

use axum::Router;
use axum::routing::get;
use caracal_core::config::{Config, CoreConfig, Mode, Secret};
use caracal_core::{App, Check, Observed, Rung, checks};
use caracal_testkit::bench::{self, median, which};
use caracal_testkit::{Postgres, Redis};

const ROUNDS: usize = 5;
const SECONDS: u32 = 5;

#[allow(clippy::print_stdout)] // the table on stdout is this harness's output
fn main() {
    let wrk = which("wrk").unwrap_or_else(|| {
        eprintln!("wrk is not installed: apt-get install -y wrk");
        std::process::exit(2);
    });
    let postgres = Postgres::start_default().expect("start PostgreSQL (apt-get install -y postgresql)");
    let redis = Redis::start_default().expect("start Redis (apt-get install -y redis-server)");
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    let (bare, app) = runtime.block_on(async {
        let bare = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let bare_addr = bare.local_addr().expect("addr");
        tokio::spawn(async move { axum::serve(bare, Router::new().route("/bare", get(|| async { "ok" }))).await });
        let app_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let app_addr = app_listener.local_addr().expect("addr");
        let running = app(&postgres, &redis).start(app_listener);
        // Wait for the ladder to pass before measuring.
        let client = reqwest::Client::new();
        for _ in 0..200 {
            if client.get(format!("http://{app_addr}/ready")).send().await.is_ok_and(|r| r.status() == 200) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        std::mem::forget(running);
        (bare_addr, app_addr)
    });
    let targets = [
        ("bare axum handler", format!("http://{bare}/bare")),
        ("/health", format!("http://{app}/health")),
        ("/ready (5 checks)", format!("http://{app}/ready")),
    ];
    let mut results: Vec<Vec<f64>> = vec![Vec::new(); targets.len()];
    for round in 0..ROUNDS {
        for i in 0..targets.len() {
            let index = (i + round) % targets.len();
            let rps = run_wrk(&wrk, &targets[index].1);
            eprintln!("round {round}: {:<20} {rps:>10.0} req/s", targets[index].0);
            results[index].push(rps);
        }
    }
    let medians: Vec<f64> = results.iter_mut().map(|r| median(r)).collect();
    println!("| target | requests/s (median of {ROUNDS} x {SECONDS} s) | ratio to bare |");
    println!("|---|---:|---:|");
    for (i, (name, _)) in targets.iter().enumerate() {
        println!("| {name} | {:.0} | {:.2} |", medians[i], medians[i] / medians[0]);
    }
}

fn app(postgres: &Postgres, redis: &Redis) -> App {
    let mut core = CoreConfig::defaults(0);
    core.mode = Mode::Stable;
    core.database_url = Some(Secret::new(postgres.url()));
    core.redis_url = Some(Secret::new(redis.url()));
    let config = Config::from_core(core, serde_json::json!({})).expect("config");
    let app = App::new("bench", "0.0.0", config).expect("app");
    let (pg, rc) = (app.postgres().expect("pool"), app.redis().expect("redis"));
    let quick = |name: &'static str, rung| Check::new(name, rung, || async { Ok(Observed::new(1.0, "units")) });
    app.check(checks::postgres(pg))
        .check(checks::redis(rc))
        .check(quick("config:loaded", Rung::Process))
        .check(quick("outbox:fake", Rung::Delivery))
        .check(quick("app:thing", Rung::Service))
}

fn run_wrk(wrk: &str, url: &str) -> f64 {
    bench::wrk_rate(wrk, &["-t1", "-c32", &format!("-d{SECONDS}s")], url)
}
