//! Federation throughput, in one run on this machine: 50 instances × 2,000 series each (a
//! fleet served from a child process, so its CPU is not counted), federated through the real
//! gateway, beside the limit — the same 50 bodies fetched concurrently and concatenated
//! without parsing, by a bare handler on the same runtime. Reports latency p50/p99, series
//! merged per second per core (the process's CPU time, client included, so a conservative
//! figure) and the process's peak RSS. Run with `cargo bench -p caracal-gateway --bench federation`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use caracal_core::config::{Config, CoreConfig, Mode, Secret};
use caracal_testkit::bench::{cpu_seconds, peak_rss_mib, spawn_self};
use caracal_testkit::{Postgres, Redis};

const INSTANCES: usize = 50;
const SERIES: usize = 2_000;
const REQUESTS: usize = 30;
const BEARER: &str = "bench-bearer";

#[allow(clippy::print_stdout)] // the table on stdout is this harness's output
fn main() {
    if std::env::args().nth(1).as_deref() == Some("--serve-fleet") {
        return serve_fleet();
    }
    if std::env::args().nth(1).as_deref() == Some("--in-process") {
        return in_process();
    }
    let (mut fleet, ports) = spawn_self("--serve-fleet");
    let urls: Vec<String> = ports.iter().map(|p| format!("http://127.0.0.1:{p}")).collect();
    assert_eq!(urls.len(), INSTANCES);

    let postgres = Postgres::start_default().expect("PostgreSQL (apt-get install -y postgresql)");
    let redis = Redis::start_default().expect("Redis (apt-get install -y redis-server)");
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    let rows = runtime.block_on(async {
        let (gateway, limit) = serve(&postgres, &redis, &urls).await;
        let client = reqwest::Client::new();
        let mut rows = Vec::new();
        for (name, url) in [
            ("limit: 50 bodies fetched and concatenated", format!("{limit}/concat")),
            ("gateway: /v1/targets/fleet/metrics", format!("{gateway}/v1/targets/fleet/metrics")),
        ] {
            // Warm up connections and caches.
            for _ in 0..3 {
                fetch(&client, &url).await;
            }
            let cpu_before = cpu_seconds();
            let started = Instant::now();
            let mut latencies = Vec::new();
            let mut bytes = 0;
            for _ in 0..REQUESTS {
                let t = Instant::now();
                bytes = fetch(&client, &url).await;
                latencies.push(t.elapsed());
            }
            let wall = started.elapsed().as_secs_f64();
            let cpu = cpu_seconds() - cpu_before;
            latencies.sort();
            let series = (INSTANCES * SERIES * REQUESTS) as f64;
            rows.push((
                name,
                latencies[REQUESTS / 2],
                latencies[REQUESTS * 99 / 100],
                series / cpu.max(1e-9),
                series / wall,
                bytes,
                cpu / wall,
            ));
        }
        rows
    });
    let _ = fleet.kill();
    let _ = fleet.wait();
    println!(
        "| measure ({INSTANCES} instances × {SERIES} series, {REQUESTS} requests) | p50 | p99 | series/s per core | series/s | answer bytes | cores used |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|");
    for (name, p50, p99, per_core, per_s, bytes, cores) in &rows {
        println!(
            "| {name} | {:.0} ms | {:.0} ms | {per_core:.0} | {per_s:.0} | {bytes} | {cores:.2} |",
            p50.as_secs_f64() * 1000.0,
            p99.as_secs_f64() * 1000.0
        );
    }
    // A gateway that merged nothing (every scrape refused) would look fast: its answer holds
    // every body's samples, with identity labels, so it is larger than the bodies together.
    assert!(rows[1].5 > rows[0].5, "the gateway answered {} bytes for {} bytes of bodies", rows[1].5, rows[0].5);
    println!("| **gateway ratio to the limit (series/s per core)** | | | **{:.2}** | | | |", rows[1].3 / rows[0].3);
    println!("| peak RSS of the process (gateway, limit and client) | {:.0} MiB | | | | | |", peak_rss_mib());
}

async fn fetch(client: &reqwest::Client, url: &str) -> usize {
    let response = client.get(url).bearer_auth(BEARER).send().await.expect("request");
    assert_eq!(response.status(), 200, "{url}");
    let body = response.bytes().await.expect("body");
    body.len()
}

async fn serve(postgres: &Postgres, redis: &Redis, urls: &[String]) -> (String, String) {
    let database = postgres.fresh_database("bench").expect("database");
    let pool = sqlx::PgPool::connect(&database).await.expect("connect");
    caracal_store::migrate(&pool).await.expect("migrate");
    // The fleet wants a bearer: the target names a credential the gateway reads from its
    // credentials directory, as an operator binds one.
    let credentials = tempfile::tempdir().expect("a credentials directory");
    std::fs::write(credentials.path().join("fleet-bearer"), BEARER).expect("credential");
    let id: i64 = sqlx::query_scalar(
        "INSERT INTO targets (name, labels, health_path, ready_path, metrics_path, interval_ms, timeout_ms, credential) \
         VALUES ('fleet', '{\"team\": \"bench\"}', '/health', '/ready', '/metrics', 1000, 10000, 'fleet-bearer') RETURNING id",
    )
    .fetch_one(&pool)
    .await
    .expect("target");
    sqlx::query("INSERT INTO instances (target_id, url) SELECT $1, unnest($2::text[])")
        .bind(id)
        .bind(urls)
        .execute(&pool)
        .await
        .expect("instances");
    let mut core = CoreConfig::defaults(0);
    core.mode = Mode::Stable;
    core.database_url = Some(Secret::new(&database));
    core.redis_url = Some(Secret::new(redis.url()));
    core.metrics.bearer = Some(Secret::new(BEARER));
    let config = Config::from_core(core, serde_json::json!({"gateway": {"credentials_dir": credentials.path()}}))
        .expect("config");
    // The directory lives as long as the gateway, which runs until the process ends.
    std::mem::forget(credentials);
    let app = caracal_core::App::new("gateway", "0.0.0", config).expect("app");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let gateway = format!("http://{}", listener.local_addr().expect("addr"));
    std::mem::forget(caracal_gateway::build(app).expect("build").start(listener));
    let client = reqwest::Client::new();
    for _ in 0..200 {
        if client.get(format!("{gateway}/ready")).send().await.is_ok_and(|r| r.status() == 200) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // The limit: the same bodies, fetched concurrently with the same bearer, concatenated.
    let urls = Arc::new(urls.to_vec());
    let limit_app = Router::new().route(
        "/concat",
        get(move || {
            let urls = Arc::clone(&urls);
            let client = client.clone();
            async move {
                let mut set = tokio::task::JoinSet::new();
                for url in urls.iter() {
                    let (client, url) = (client.clone(), format!("{url}/metrics"));
                    set.spawn(async move { client.get(url).bearer_auth(BEARER).send().await.ok()?.bytes().await.ok() });
                }
                let mut body = Vec::new();
                while let Some(Ok(Some(bytes))) = set.join_next().await {
                    body.extend_from_slice(&bytes);
                }
                body
            }
        }),
    );
    let limit_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let limit = format!("http://{}", limit_listener.local_addr().expect("addr"));
    tokio::spawn(async move { axum::serve(limit_listener, limit_app).await });
    (gateway, limit)
}

/// What the gateway's own work costs, on one thread and without HTTP: parsing the 50 bodies
/// (fed in 16 KiB chunks, as they arrive) and merging them into one answer, best of 20 rounds
/// each, per 100,000 series. `--in-process` prints only this.
#[allow(clippy::print_stdout)] // the table on stdout is this harness's output
fn in_process() {
    use caracal_gateway::exposition::{Format, Parser};
    use caracal_gateway::registry::TargetInfo;
    use caracal_gateway::render::{InstanceResult, Options, Scraped, identity, render};
    let target = Arc::new(TargetInfo {
        name: "fleet".into(),
        labels: [("team".to_string(), "bench".to_string())].into(),
        metrics_path: "/metrics".into(),
        timeout: Duration::from_secs(10),
        instances: Vec::new(),
        credential: None,
    });
    let bodies: Vec<String> = (0..INSTANCES).map(body).collect();
    let names: Vec<String> = identity(&target, "127.0.0.1:1").into_iter().map(|(k, _)| k).collect();
    let parse = || {
        bodies
            .iter()
            .enumerate()
            .map(|(i, text)| {
                let mut parser = Parser::new(Format::Text, &names);
                for chunk in text.as_bytes().chunks(16 * 1024) {
                    parser.feed(chunk).expect("parse");
                }
                InstanceResult {
                    target: Arc::clone(&target),
                    instance: format!("127.0.0.1:{}", 10_000 + i),
                    scraped: Scraped { outcome: Ok(parser.finish().expect("parse")), duration: Duration::ZERO },
                }
            })
            .collect::<Vec<_>>()
    };
    let best = |f: &mut dyn FnMut()| {
        (0..20)
            .map(|_| {
                let t = Instant::now();
                f();
                t.elapsed()
            })
            .min()
            .unwrap_or_default()
    };
    let parsing = best(&mut || drop(std::hint::black_box(parse())));
    let results = parse();
    let options = Options { format: Format::Text, only_target_metrics: false, matchers: Vec::new() };
    let merging = best(&mut || drop(std::hint::black_box(render(&results, &options))));
    // A digest of the answer, so a faster parser or writer is seen to answer the same bytes.
    let (answer, _) = render(&results, &options);
    let digest = {
        use std::hash::{Hash, Hasher};
        let mut hasher = std::hash::DefaultHasher::new();
        answer.hash(&mut hasher);
        hasher.finish()
    };
    let per = 100_000.0 / (INSTANCES * SERIES) as f64;
    println!("| in-process, one thread, per 100,000 series | parse | merge and write | answer (bytes, digest) |");
    println!("|---|---:|---:|---|");
    println!(
        "| best of 20 | {:.1} ms | {:.1} ms | {}, {digest:016x} |",
        parsing.as_secs_f64() * 1000.0 * per,
        merging.as_secs_f64() * 1000.0 * per,
        answer.len()
    );
}

/// 2,000 series: 100 counters, 80 gauges with 10 label sets each, and 2 histograms.
fn body(instance: usize) -> String {
    let mut out = String::new();
    for f in 0..100 {
        out.push_str(&format!(
            "# HELP app_requests_{f}_total Requests of kind {f}.\n# TYPE app_requests_{f}_total counter\n"
        ));
        for l in 0..10 {
            out.push_str(&format!(
                "app_requests_{f}_total{{route=\"/r{l}\",code=\"200\"}} {}\n",
                instance * 1000 + f * 10 + l
            ));
        }
    }
    for f in 0..98 {
        out.push_str(&format!("# TYPE app_gauge_{f} gauge\n"));
        for l in 0..10 {
            out.push_str(&format!("app_gauge_{f}{{shard=\"{l}\"}} {}.5\n", f + l));
        }
    }
    for h in 0..2 {
        out.push_str(&format!("# TYPE app_latency_{h}_seconds histogram\n"));
        for le in ["0.01", "0.05", "0.1", "0.5", "1", "2.5", "+Inf"] {
            out.push_str(&format!("app_latency_{h}_seconds_bucket{{le=\"{le}\"}} 7\n"));
        }
        out.push_str(&format!("app_latency_{h}_seconds_sum 1.5\napp_latency_{h}_seconds_count 7\n"));
    }
    out
}

fn serve_fleet() {
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().expect("runtime");
    runtime.block_on(async {
        let mut ports = Vec::new();
        for i in 0..INSTANCES {
            let text: Arc<str> = Arc::from(body(i));
            let app = Router::new().route(
                "/metrics",
                get(move |headers: HeaderMap| {
                    let text = Arc::clone(&text);
                    async move {
                        if headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok())
                            != Some("Bearer bench-bearer")
                        {
                            return StatusCode::UNAUTHORIZED.into_response();
                        }
                        ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text.to_string()).into_response()
                    }
                }),
            );
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
            ports.push(listener.local_addr().expect("addr").port().to_string());
            tokio::spawn(async move { axum::serve(listener, app).await });
        }
        #[allow(clippy::print_stdout)] // the parent reads the ports from stdout
        {
            println!("{}", ports.join(" "));
        }
        std::future::pending::<()>().await;
    });
}
