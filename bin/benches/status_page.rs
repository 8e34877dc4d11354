//! The status page under a 1,000-target fleet (2 instances each, a tenth of them down, 12,000
//! transitions in the last 24 hours): how long the api takes to answer the whole page, public
//! and signed in; what 200 open live connections cost the api in resident memory; how soon a
//! transition reaches an open page; the api's CPU while 200 pages sit open.
//! `cargo bench -p caracal-bin --bench status_page`; figures go into `docs/benchmarks.md`.
//!
//! The api is the real release binary, a child process on testkit PostgreSQL and Redis; the
//! harness is its only client, over loopback.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use caracal_testkit::bench::{cpu_seconds_of, median, rss_mib_of};
use caracal_testkit::{Postgres, Redis};

const API: &str = env!("CARGO_BIN_EXE_caracal-api");
const ADMIN: &str = "bench-admin-token";
const TARGETS: i32 = 1000;
const PAGES: usize = 100;
const STREAMS_DEFAULT: usize = 200;
const TRANSITIONS: usize = 20;

#[allow(clippy::print_stdout)] // the table on stdout is this harness's output
fn main() {
    // `BENCH_STREAMS=0` tells the feed's own memory from the connections'.
    let streams: usize = std::env::var("BENCH_STREAMS").ok().and_then(|v| v.parse().ok()).unwrap_or(STREAMS_DEFAULT);
    let postgres = Postgres::start_default().expect("PostgreSQL (apt-get install -y postgresql)");
    let redis = Redis::start_default().expect("Redis (apt-get install -y redis-server)");
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
    runtime.block_on(async {
        let url = postgres.fresh_database("page").expect("database");
        let pool = sqlx::PgPool::connect(&url).await.expect("connect");
        caracal_store::migrate(&pool).await.expect("migrate");
        seed(&pool).await;
        let port = caracal_testkit::free_port().expect("port");
        let mut api = start(&url, &redis.url(), port);
        let base = format!("http://127.0.0.1:{port}");
        let http = reqwest::Client::new();
        wait_for_page(&http, &base).await;

        println!("| measure | figure |");
        println!("|---|---:|");
        for (label, token, gzip) in [
            ("public", None, false),
            ("signed in (admin: errors and controls)", Some(ADMIN), false),
            ("public, gzip", None, true),
        ] {
            let (mut times, bytes) = pages(&http, &base, token, gzip).await;
            let p50 = median(&mut times);
            let max = times.iter().copied().fold(0.0, f64::max);
            println!("| GET / with {TARGETS} targets, {label}: p50 / max of {PAGES} | {p50:.1} / {max:.1} ms ({} KiB) |", bytes / 1024);
        }

        let pid = api.id();
        tokio::time::sleep(Duration::from_secs(2)).await;
        let before = rss_mib_of(pid);
        let mut readers = Vec::new();
        for _ in 0..streams {
            readers.push(drain(http.get(format!("{base}/status/events")).send().await.expect("events")));
        }
        tokio::time::sleep(Duration::from_secs(3)).await;
        let idle = rss_mib_of(pid);
        let cpu = cpu_seconds_of(pid).unwrap_or(0.0);
        tokio::time::sleep(Duration::from_secs(10)).await;
        let idle_cpu = (cpu_seconds_of(pid).unwrap_or(0.0) - cpu) / 10.0 * 100.0;

        // Transitions while the 200 pages are open: each reaches all of them; one more
        // connection times it.
        let mut watch = http.get(format!("{base}/status/events")).send().await.expect("events");
        let mut delays = Vec::new();
        for n in 0..TRANSITIONS {
            let name = format!("svc-{:04}", 1 + n * 37);
            let started = Instant::now();
            transition(&pool, &name, if n % 2 == 0 { "degraded" } else { "up" }).await;
            let wanted = format!("\"name\":\"{name}\"");
            let mut seen = String::new();
            while !seen.contains(&wanted) {
                let chunk = watch.chunk().await.expect("read").expect("open");
                seen.push_str(&String::from_utf8_lossy(&chunk));
            }
            delays.push(started.elapsed().as_secs_f64() * 1000.0);
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        let after = rss_mib_of(pid);
        let max_delay = delays.iter().copied().fold(0.0, f64::max);
        println!("| api RSS: before / {streams} live pages open / after {TRANSITIONS} transitions sent to all | {before:.1} / {idle:.1} / {after:.1} MiB |");
        println!("| extra RSS for {streams} live pages | **{:.1} MiB** |", after.max(idle) - before);
        println!("| api CPU with {streams} live pages open, nothing changing | {idle_cpu:.1} % of a core |");
        println!("| transition committed → on an open page (1,000 targets), p50 / max of {TRANSITIONS} | {:.0} / {max_delay:.0} ms |", median(&mut delays));
        for reader in readers {
            reader.abort();
        }
        let _ = api.kill();
        let _ = api.wait();
    });
}

/// 1,000 targets of 2 instances: a tenth down, a seventeenth unready, each with errors; six
/// transitions per instance in the last 24 hours.
async fn seed(pool: &sqlx::PgPool) {
    for statement in [
        "INSERT INTO targets (name, labels, health_path, ready_path, metrics_path, interval_ms, timeout_ms, created_at) \
         SELECT format('svc-%s', lpad(g::text, 4, '0')), '{\"team\": \"bench\"}', '/health', '/ready', '/metrics', 5000, 1000, \
         now() - interval '2 days' FROM generate_series(1, $1) g",
        "INSERT INTO instances (target_id, url) SELECT t.id, format('http://10.0.%s.%s:8080', t.id / 250, t.id % 250 * 2 + i) \
         FROM targets t, generate_series(0, 1) i",
        "INSERT INTO instance_status (instance_id, status, since, last_error) SELECT id, \
         CASE WHEN id % 10 = 0 THEN 'down' WHEN id % 17 = 0 THEN 'unready' ELSE 'up' END, now() - (id % 600) * interval '1 minute', \
         CASE WHEN id % 10 = 0 THEN '/health: connection refused or unreachable' WHEN id % 17 = 0 THEN '/ready answered 503' END \
         FROM instances",
        "INSERT INTO status_transitions (target_name, instance_url, from_status, to_status, occurred_at) \
         SELECT t.name, i.url, CASE WHEN k % 2 = 0 THEN 'up' ELSE 'down' END, CASE WHEN k % 2 = 0 THEN 'down' ELSE 'up' END, \
         now() - interval '23 hours' + k * interval '3 hours' + (i.id % 60) * interval '1 minute' \
         FROM targets t JOIN instances i ON i.target_id = t.id, generate_series(0, 5) k",
    ] {
        let query = sqlx::query(statement);
        let query = if statement.contains("$1") { query.bind(TARGETS) } else { query };
        query.execute(pool).await.expect("seed");
    }
    sqlx::query("ANALYZE").execute(pool).await.expect("analyze");
}

/// A transition of `name`'s first instance, written as the coordinator writes one.
async fn transition(pool: &sqlx::PgPool, name: &str, flavour: &str) {
    let to = if flavour == "up" { "up" } else { "down" };
    let mut tx = pool.begin().await.expect("begin");
    sqlx::query(
        "UPDATE instance_status SET status = $2, since = now(), last_error = NULLIF($3, '') WHERE instance_id = \
         (SELECT min(i.id) FROM instances i JOIN targets t ON t.id = i.target_id WHERE t.name = $1)",
    )
    .bind(name)
    .bind(to)
    .bind(if to == "down" { "/health timed out" } else { "" })
    .execute(&mut *tx)
    .await
    .expect("status");
    sqlx::query("INSERT INTO outbox (event_type, target, payload) VALUES ('instance.status_changed', $1, '{}')")
        .bind(name)
        .execute(&mut *tx)
        .await
        .expect("outbox");
    tx.commit().await.expect("commit");
}

fn start(database_url: &str, redis_url: &str, port: u16) -> Child {
    Command::new(API)
        .env("DATABASE_URL", database_url)
        .env("REDIS_URL", redis_url)
        .env("CARACAL_MODE", "rc")
        .env("CARACAL_ADMIN_TOKEN", ADMIN)
        .env("METRICS_BEARER", "bench-metrics-bearer")
        .env("PORT", port.to_string())
        .env("CARACAL_BIND", "127.0.0.1")
        .env("CARACAL_API__PLATFORM__API", format!("[\"http://127.0.0.1:{port}\"]"))
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()
        .expect("start caracal-api")
}

async fn wait_for_page(http: &reqwest::Client, base: &str) {
    // The page lists 100 targets a page: the last one is found by searching for it.
    let last = format!("id=\"t-svc-{TARGETS:04}\"");
    for _ in 0..600 {
        if let Ok(response) = http.get(format!("{base}/status?q=svc-{TARGETS:04}")).send().await
            && response.status() == 200
            && response.text().await.is_ok_and(|body| body.contains(&last))
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the page never showed {TARGETS} targets");
}

/// `PAGES` sequential page loads (after 10 to warm up): each one's time in ms, and the size
/// as sent.
async fn pages(http: &reqwest::Client, base: &str, token: Option<&str>, gzip: bool) -> (Vec<f64>, usize) {
    let mut times = Vec::with_capacity(PAGES);
    let mut bytes = 0;
    for n in 0..PAGES + 10 {
        let mut request = http.get(format!("{base}/"));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if gzip {
            // This client does not decompress: the size is what travels.
            request = request.header("accept-encoding", "gzip");
        }
        let started = Instant::now();
        let body = request.send().await.expect("page").bytes().await.expect("body");
        if n >= 10 {
            times.push(started.elapsed().as_secs_f64() * 1000.0);
        }
        bytes = body.len();
    }
    (times, bytes)
}

/// Reads an event stream until aborted, as an open page would.
fn drain(mut response: reqwest::Response) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move { while let Ok(Some(_)) = response.chunk().await {} })
}
