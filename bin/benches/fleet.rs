//! The registry at fleet scale, on the real platform (`caracal up --mode rc`, release build):
//!
//! 1. **Idle cost.** N targets (50 and 50,000 by default), each probed once an hour, nothing
//!    changing: rows PostgreSQL returns per minute (`pg_stat_user_tables`: sequential tuples
//!    read plus index fetches, per table) and the CPU of every service over a minute.
//! 2. **Registration latency** (on the largest fleet): 200 registrations through the API, each
//!    timed from the write until the gateway federates the target and the coordinator has
//!    probed it; p50 and p99.
//! 3. **The status page** for a signed-out visitor at that size: time to the whole answer.
//! 4. **Discovery:** 1,000 DNS-discovered targets refreshed every 5 s by one control
//!    (`dnsmasq` with a 5 s TTL): its CPU and RSS.
//!
//! `cargo bench -p caracal-bin --bench fleet` (`FLEET_SIZES=50,20000`, `FLEET_WINDOW=60` to
//! change them); figures go into `docs/benchmarks.md`. The instances are one in-process HTTP
//! server of the harness, so their cost is not the platform's.

use std::collections::HashMap;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{Path as UrlPath, State};
use axum::routing::get;
use caracal_testkit::bench::{cpu_seconds_of, median, rss_mib_of};
use platform::Platform;

#[path = "support/platform.rs"]
mod platform;

const CONTROL: &str = env!("CARGO_BIN_EXE_caracal-control");
const REGISTRATIONS: usize = 200;
const SERVICES: [&str; 6] = ["api", "coordinator", "gateway", "audit", "sts", "control"];

/// When each instance path was first asked for `/ready` (a probe).
type Probed = Arc<Mutex<HashMap<String, Instant>>>;

#[allow(clippy::print_stdout)] // the tables on stdout are this harness's output
fn main() {
    let sizes: Vec<i64> = std::env::var("FLEET_SIZES")
        .unwrap_or_else(|_| "50,50000".into())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    let window = Duration::from_secs(std::env::var("FLEET_WINDOW").ok().and_then(|v| v.parse().ok()).unwrap_or(60));
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
    runtime.block_on(async {
        let probed: Probed = Arc::default();
        let instances = responder(Arc::clone(&probed)).await;
        println!(
            "| targets | PostgreSQL rows read / min | by table | api | coordinator | gateway | all six services | RSS MiB: api / coordinator / gateway |"
        );
        println!("|---:|---:|---|---:|---:|---:|---:|---:|");
        let last = sizes.len().saturating_sub(1);
        for (i, &n) in sizes.iter().enumerate() {
            let platform = Platform::up().await;
            seed(&platform.pool, n, &instances).await;
            settle(&platform.pool).await;
            // Past the start-up burst: every new instance is probed once, at once.
            tokio::time::sleep(Duration::from_secs(20)).await;
            let (rows, by_table, cores) = idle(&platform, window).await;
            let rss = |service: &str| rss_mib_of(platform.pid(service));
            println!(
                "| {n} | {rows:.0} | {by_table} | {:.4} | {:.4} | {:.4} | {:.4} | {:.1} / {:.1} / {:.1} |",
                cores["api"],
                cores["coordinator"],
                cores["gateway"],
                cores.values().sum::<f64>(),
                rss("api"),
                rss("coordinator"),
                rss("gateway"),
            );
            if i == last {
                let latencies = registrations(&platform, &instances, &probed).await;
                let page = status_page(&platform).await;
                println!();
                println!("{latencies}");
                println!("{page}");
            }
            platform.down();
        }
        println!();
        println!("{}", discovery(window).await);
    });
}

/// The instances: `/f/{name}/health|ready|metrics` answer 200; `/ready` records its first hit.
async fn responder(probed: Probed) -> String {
    async fn ready(State(probed): State<Probed>, UrlPath(name): UrlPath<String>) -> &'static str {
        probed.lock().expect("lock").entry(name).or_insert_with(Instant::now);
        "ok"
    }
    let app = Router::new()
        .route("/f/{name}/health", get(|| async { "ok" }))
        .route("/f/{name}/ready", get(ready))
        .route("/f/{name}/metrics", get(|| async { "# TYPE up gauge\nup 1\n" }))
        .with_state(probed);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let base = format!("http://{}", listener.local_addr().expect("addr"));
    tokio::spawn(async move { axum::serve(listener, app).await });
    base
}

/// `n` targets as the API registers them: the rows, and their `target.created` and
/// `registry.changed` events (which the relay sends on, and the followers read).
async fn seed(pool: &sqlx::PgPool, n: i64, instances: &str) {
    sqlx::query(
        "WITH t AS (INSERT INTO targets (name, labels, health_path, ready_path, metrics_path, interval_ms, timeout_ms) \
                    SELECT 'fleet-' || g, '{\"team\": \"bench\"}', '/health', '/ready', '/metrics', 3600000, 1000 \
                    FROM generate_series(1, $1) g RETURNING id, name), \
              i AS (INSERT INTO instances (target_id, url) SELECT id, $2 || '/f/' || name FROM t) \
         INSERT INTO outbox (event_type, target, payload) \
         SELECT e, t.name, jsonb_build_object('name', t.name) FROM t, unnest(ARRAY['target.created', 'registry.changed']) e",
    )
    .bind(n)
    .bind(instances)
    .execute(pool)
    .await
    .expect("seed");
}

/// Waits until every instance has its first status (the coordinator probes new instances at
/// once, and each first status is a transition with its event), the outbox is relayed and in
/// the ledger, then vacuums: the steady state, where nothing changes.
async fn settle(pool: &sqlx::PgPool) {
    let probed = caracal_testkit::wait_for(Duration::from_secs(900), Duration::from_secs(1), || async {
        let (instances, statuses): (i64, i64) =
            sqlx::query_as("SELECT (SELECT count(*) FROM instances), (SELECT count(*) FROM instance_status)")
                .fetch_one(pool)
                .await
                .ok()?;
        (statuses >= instances).then_some(())
    })
    .await;
    probed.expect("every instance probed once");
    let settled = caracal_testkit::wait_for(Duration::from_secs(900), Duration::from_secs(1), || async {
        let (pending, outbox, ledger): (i64, i64, i64) = sqlx::query_as(
            "SELECT (SELECT count(*) FROM outbox WHERE dispatched_at IS NULL), (SELECT count(*) FROM outbox), \
                    (SELECT count(*) FROM audit_events)",
        )
        .fetch_one(pool)
        .await
        .ok()?;
        (pending == 0 && ledger >= outbox).then_some(())
    })
    .await;
    settled.expect("the outbox is relayed and in the ledger");
    sqlx::query("VACUUM ANALYZE").execute(pool).await.expect("vacuum");
}

/// Rows read per table (sequential tuples + index fetches), by table name.
async fn rows_read(pool: &sqlx::PgPool) -> HashMap<String, i64> {
    let rows: Vec<(String, i64)> = sqlx::query_as(
        "SELECT relname::text, (coalesce(seq_tup_read, 0) + coalesce(idx_tup_fetch, 0))::bigint FROM pg_stat_user_tables",
    )
    .fetch_all(pool)
    .await
    .expect("pg_stat_user_tables");
    rows.into_iter().collect()
}

/// Over `window` with nothing changing: rows read per minute (all, and the largest tables),
/// and each service's CPU in cores.
async fn idle(platform: &Platform, window: Duration) -> (f64, String, HashMap<&'static str, f64>) {
    let cpu = |service: &str| cpu_seconds_of(platform.pid(service)).unwrap_or(0.0);
    let before: HashMap<&str, f64> = SERVICES.iter().map(|s| (*s, cpu(s))).collect();
    let rows_before = rows_read(&platform.pool).await;
    let started = Instant::now();
    tokio::time::sleep(window).await;
    let rows_after = rows_read(&platform.pool).await;
    let elapsed = started.elapsed().as_secs_f64();
    let cores = SERVICES.iter().map(|s| (*s, (cpu(s) - before[s]) / elapsed)).collect();
    let per_minute = 60.0 / elapsed;
    let mut tables: Vec<(String, f64)> = rows_after
        .iter()
        .map(|(t, after)| (t.clone(), (after - rows_before.get(t).copied().unwrap_or(0)) as f64 * per_minute))
        .filter(|(_, r)| *r >= 1.0)
        .collect();
    tables.sort_by(|a, b| b.1.total_cmp(&a.1));
    let total = tables.iter().map(|(_, r)| r).sum();
    let by_table = tables.iter().take(4).map(|(t, r)| format!("{t} {r:.0}")).collect::<Vec<_>>().join(", ");
    (total, if by_table.is_empty() { "—".into() } else { by_table }, cores)
}

/// 200 registrations through the API, each timed until the gateway federates it and the
/// coordinator has probed it.
async fn registrations(platform: &Platform, instances: &str, probed: &Probed) -> String {
    let http = reqwest::Client::new();
    let (mut federated, mut probes, mut both) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..REGISTRATIONS {
        let name = format!("reg-{i}");
        let body =
            serde_json::json!({"name": name, "instances": [format!("{instances}/f/{name}")], "interval_ms": 600_000});
        let written = Instant::now();
        let created = http
            .post(format!("{}/v1/targets", platform.url("api")))
            .bearer_auth(&platform.admin)
            .json(&body)
            .send()
            .await;
        assert_eq!(created.expect("register").status(), 201);
        let federation = format!("{}/v1/targets/{name}/metrics", platform.url("gateway"));
        let federates = caracal_testkit::wait_for(Duration::from_secs(30), Duration::from_millis(5), || async {
            let r = http.get(&federation).bearer_auth(&platform.bearer).send().await.ok()?;
            let text = if r.status() == 200 { r.text().await.ok()? } else { return None };
            text.contains("caracal_federation_up{").then(|| written.elapsed())
        })
        .await
        .expect("the gateway federates the new target");
        let probe = caracal_testkit::wait_for(Duration::from_secs(30), Duration::from_millis(5), || async {
            probed.lock().expect("lock").get(&name).map(|at| at.duration_since(written))
        })
        .await
        .expect("the coordinator probes the new target");
        federated.push(federates.as_secs_f64() * 1000.0);
        probes.push(probe.as_secs_f64() * 1000.0);
        both.push(federates.max(probe).as_secs_f64() * 1000.0);
    }
    let p99 = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[(v.len() * 99 / 100).min(v.len() - 1)]
    };
    format!(
        "| {REGISTRATIONS} registrations: write → gateway federates, p50 / p99 | {:.0} / {:.0} ms |\n\
         | write → coordinator has probed, p50 / p99 | {:.0} / {:.0} ms |\n\
         | write → both, p50 / p99 | {:.0} / {:.0} ms |",
        median(&mut federated.clone()),
        p99(&mut federated),
        median(&mut probes.clone()),
        p99(&mut probes),
        median(&mut both.clone()),
        p99(&mut both)
    )
}

/// The status page for a signed-out visitor: time to the whole answer, and its size.
async fn status_page(platform: &Platform) -> String {
    let http = reqwest::Client::new();
    let started = Instant::now();
    let page = http.get(format!("{}/", platform.url("api"))).send().await.expect("page");
    let bytes = page.bytes().await.expect("body").len();
    format!(
        "| status page, signed out: whole answer | {:.0} ms ({:.1} MB) |",
        started.elapsed().as_secs_f64() * 1000.0,
        bytes as f64 / 1e6
    )
}

/// One control resolving 1,000 discovered targets every 5 s: its CPU and RSS.
async fn discovery(window: Duration) -> String {
    const TARGETS: usize = 1000;
    let hosts: String = (0..TARGETS).map(|i| format!("127.0.0.{} d-{i}.test\n", 2 + i % 200)).collect();
    let dns = caracal_testkit::Dnsmasq::start_with_ttl(&hosts, &[], 5).expect("dnsmasq");
    let postgres = caracal_testkit::Postgres::start_default().expect("postgres");
    let redis = caracal_testkit::Redis::start_default().expect("redis");
    let url = postgres.fresh_database("discovery").expect("database");
    let pool = sqlx::PgPool::connect(&url).await.expect("connect");
    caracal_store::migrate(&pool).await.expect("migrate");
    sqlx::query(
        "INSERT INTO targets (name, health_path, ready_path, metrics_path, interval_ms, timeout_ms, discovery) \
         SELECT 'd-' || g, '/health', '/ready', '/metrics', 3600000, 1000, \
                jsonb_build_object('dns', jsonb_build_object('name', 'd-' || g || '.test', 'type', 'A', 'port', 80, \
                                                             'scheme', 'http', 'refresh_ms', 5000)) \
         FROM generate_series(0, $1 - 1) g",
    )
    .bind(TARGETS as i64)
    .execute(&pool)
    .await
    .expect("seed");
    let port = caracal_testkit::free_port().expect("port");
    let mut control = Command::new(CONTROL)
        .env("DATABASE_URL", &url)
        .env("REDIS_URL", redis.url())
        .env("CARACAL_MODE", "dev")
        .env("PORT", port.to_string())
        .env("CARACAL_CONTROL__NAMESERVERS", format!("[\"{}\"]", dns.address()))
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("control");
    let resolved = caracal_testkit::wait_for(Duration::from_secs(60), Duration::from_millis(500), || async {
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM instances").fetch_one(&pool).await.ok()?;
        (n == TARGETS as i64).then_some(())
    })
    .await;
    resolved.expect("every discovered target resolved");
    tokio::time::sleep(Duration::from_secs(10)).await;
    let pid = control.id();
    let attempts = || async {
        // Each target's row holds its latest attempt: with a 5 s refresh and a write a second,
        // every one of them is under 7 s old.
        let n: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM discovery_status WHERE attempted_at > clock_timestamp() - interval '7 seconds'",
        )
        .fetch_one(&pool)
        .await
        .expect("count the recent resolutions");
        n
    };
    let (cpu0, t0) = (cpu_seconds_of(pid).unwrap_or(0.0), Instant::now());
    tokio::time::sleep(window).await;
    let cores = (cpu_seconds_of(pid).unwrap_or(0.0) - cpu0) / t0.elapsed().as_secs_f64();
    let recent = attempts().await;
    let rss = rss_mib_of(pid);
    let _ = control.kill();
    let _ = control.wait();
    format!(
        "| {TARGETS} DNS-discovered targets, refreshed every 5 s, one control | {cores:.4} cores, {rss:.1} MiB RSS \
         ({recent} of them resolved in the last 7 s; {:.1} µs of CPU per resolution) |",
        cores * 5.0 / TARGETS as f64 * 1e6
    )
}
