//! Coordinator memory per idle instance: one prober (the coordinator's, alone in its
//! membership) watching N targets of one instance each, probed once an hour, nothing changing.
//! Each size runs in a process of its own, so what an earlier size allocated is not counted.
//!
//! For each N: the process's memory before the prober starts, once it watches every instance
//! (its first probes spread over the hour, so none has probed yet), after every instance was
//! probed once and its status recorded (announced as changed, so all are probed at once), and
//! after `MEMORY_PROBES` (12) such rounds, when the gray-failure detector's recent window is
//! full and everything an idle instance keeps for good exists.
//! Two measures, each as growth over the baseline divided by N: the **live heap** (bytes
//! allocated and not freed, counted by this harness's global allocator: what the instances
//! hold) and the **RSS** (what the kernel charges, which also keeps what the allocator freed
//! but did not give back after the all-at-once probing, a burst a real fleet spreads over its
//! interval).
//!
//! `cargo bench -p caracal-bin --bench memory` (`MEMORY_SIZES=1000,10000,50000` by default);
//! figures go into `docs/benchmarks.md`.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::routing::get;
use caracal_store::invalidations::Notice;
use caracal_testkit::Postgres;
use caracal_testkit::bench::{rss_mib_of, spawn_self};

#[path = "support/lone_prober.rs"]
mod lone_prober;
use lone_prober::LoneProber;

/// The system allocator, counting the bytes live (allocated and not yet freed).
struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);

// The one `unsafe` here: a global allocator must implement an unsafe trait. Each method passes
// the call to the system allocator unchanged and only counts.
#[allow(unsafe_code)]
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size(), Ordering::Relaxed);
        // SAFETY: the caller's contract for `alloc` is passed on unchanged.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        // SAFETY: `ptr` was allocated by `System` with `layout` (every allocation goes there).
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE.fetch_add(new_size, Ordering::Relaxed);
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        // SAFETY: as for `dealloc`, and `new_size` is the caller's, passed on unchanged.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Live heap, in MiB.
fn live_mib() -> f64 {
    LIVE.load(Ordering::Relaxed) as f64 / 1_048_576.0
}

#[allow(clippy::print_stdout)] // the table on stdout is this harness's output
fn main() {
    let mut args = std::env::args().skip(1);
    match args.next().as_deref() {
        Some("--serve-fleet") => return serve_fleet(),
        Some("--one") => return one(args.next().and_then(|n| n.parse().ok()).expect("a size")),
        _ => {}
    }
    let sizes: Vec<usize> = std::env::var("MEMORY_SIZES")
        .unwrap_or_else(|_| "1000,10000,50000".into())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    let rounds = std::env::var("MEMORY_PROBES").unwrap_or_else(|_| "12".into());
    println!(
        "| instances | live heap per instance: started, none probed | after one probe each | after {rounds} | RSS per instance: started | after one probe each | after {rounds} | RSS at the end (MiB) |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|");
    for n in sizes {
        let out = std::process::Command::new(std::env::current_exe().expect("exe"))
            .args(["--one", &n.to_string()])
            .output()
            .expect("run one size");
        assert!(out.status.success(), "size {n}: {}", String::from_utf8_lossy(&out.stderr));
        print!("{}", String::from_utf8_lossy(&out.stdout));
    }
}

/// One size: prints its table row.
#[allow(clippy::print_stdout)]
fn one(n: usize) {
    let (mut fleet, ports) = spawn_self("--serve-fleet");
    let port = ports[0];
    let postgres = Postgres::start_default().expect("PostgreSQL (apt-get install -y postgresql)");
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    let rounds: usize = std::env::var("MEMORY_PROBES").ok().and_then(|v| v.parse().ok()).unwrap_or(12);
    let (base, started, probed, steady) = runtime.block_on(async {
        let reading = || (live_mib(), rss_mib_of(std::process::id()));
        let url = postgres.fresh_database("bench").expect("database");
        let pool = sqlx::postgres::PgPoolOptions::new().max_connections(10).connect(&url).await.expect("connect");
        caracal_store::migrate(&pool).await.expect("migrate");
        sqlx::query(
            "WITH t AS (INSERT INTO targets (name, health_path, ready_path, metrics_path, interval_ms, timeout_ms) \
               SELECT 'idle-' || g, '/health', '/ready', '/metrics', 3600000, 1000 FROM generate_series(1, $1) g \
               RETURNING id, name) \
             INSERT INTO instances (target_id, url) \
               SELECT id, 'http://127.0.0.1:' || $2 || '/i/' || substr(name, 6) FROM t",
        )
        .bind(i64::try_from(n).expect("size"))
        .bind(i32::from(port))
        .execute(&pool)
        .await
        .expect("seed");
        tokio::time::sleep(Duration::from_secs(1)).await;
        let base = reading();
        let prober = LoneProber::start(pool.clone()).await;
        wait_until(Duration::from_secs(120), || {
            let owned = gauge(&prober.registry, "caracal_coordinator_instances_owned");
            async move { owned >= n as f64 }
        })
        .await;
        tokio::time::sleep(Duration::from_secs(3)).await;
        let started = reading();
        // Every instance announced as changed: each probes at once, then is idle for an hour.
        let names: Vec<String> = (1..=n).map(|i| format!("idle-{i}")).collect();
        for chunk in names.chunks(1000) {
            prober.notices.send(Notice::Changed(chunk.to_vec())).await.expect("send");
        }
        wait_until(Duration::from_secs(600), || async {
            let recorded: i64 = sqlx::query_scalar("SELECT count(*) FROM instance_status WHERE status = 'up'")
                .fetch_one(&pool)
                .await
                .unwrap_or(0);
            recorded >= n as i64
        })
        .await;
        tokio::time::sleep(Duration::from_secs(3)).await;
        let probed = reading();
        // More rounds, each instance probed at once again, until the gray-failure detector's
        // recent window is full (its latency series exported, its peers reported to): what
        // an idle instance holds for good.
        for round in 2..=rounds {
            for chunk in names.chunks(1000) {
                prober.notices.send(Notice::Changed(chunk.to_vec())).await.expect("send");
            }
            wait_until(Duration::from_secs(600), || async {
                counter(&prober.registry, "caracal_coordinator_probes_total") >= (n * round) as f64
            })
            .await;
        }
        tokio::time::sleep(Duration::from_secs(3)).await;
        let steady = reading();
        prober.stop().await;
        (base, started, probed, steady)
    });
    let _ = fleet.kill();
    let _ = fleet.wait();
    let per = |now: f64, base: f64| (now - base) * 1024.0 / n as f64;
    println!(
        "| {n} | {:.2} KiB | {:.2} KiB | **{:.2} KiB** | {:.2} KiB | {:.2} KiB | {:.2} KiB | {:.1} |",
        per(started.0, base.0),
        per(probed.0, base.0),
        per(steady.0, base.0),
        per(started.1, base.1),
        per(probed.1, base.1),
        per(steady.1, base.1),
        steady.1
    );
}

async fn wait_until<F: std::future::Future<Output = bool>>(limit: Duration, mut check: impl FnMut() -> F) {
    let deadline = Instant::now() + limit;
    while !check().await {
        assert!(Instant::now() < deadline, "not reached within {limit:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The sum of a counter's labelled series.
fn counter(registry: &prometheus_client::registry::Registry, name: &str) -> f64 {
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, registry).expect("encode");
    text.lines()
        .filter(|l| l.strip_prefix(name).is_some_and(|rest| rest.starts_with('{')))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

fn gauge(registry: &prometheus_client::registry::Registry, name: &str) -> f64 {
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, registry).expect("encode");
    text.lines().filter_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse::<f64>().ok()).sum()
}

/// The fleet: one server whose `/i/{n}/health` and `/ready` answer 200.
fn serve_fleet() {
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().expect("runtime");
    runtime.block_on(async {
        let app =
            Router::new().route("/i/{n}/health", get(|| async { "ok" })).route("/i/{n}/ready", get(|| async { "ok" }));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        #[allow(clippy::print_stdout)] // the parent reads the port from stdout
        {
            println!("{}", listener.local_addr().expect("addr").port());
        }
        axum::serve(listener, app).await.expect("serve");
    });
}
