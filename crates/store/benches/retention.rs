//! The retention purge's cost at 1 M and 10 M rows: for each table (the history, the ledger)
//! and size, a fresh database holding that many rows spread evenly over 40 days, a purge
//! keeping 30 days (a quarter of the rows go), and a writer inserting a row every 2 ms beside
//! it. Printed: rows purged per second, the mean and longest batch, the writer's latency
//! (p50 / p99 / max) during the purge and without it, and the table's size before and after.
//! Then a steady-state round on the same table: one more day's rows past the retention, as a
//! daily purge finds them. `cargo bench -p caracal-store --bench retention`; figures go into
//! `docs/benchmarks.md`. `BENCH_SIZES=1000000` runs one size only.
//!
//! The server is the testkit's (PostgreSQL with `fsync=off`): this measures the software, not
//! the disk.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use caracal_store::retention::{self, Table};
use caracal_testkit::Postgres;

const KEEP: Duration = Duration::from_secs(30 * 86_400);
const BATCH: i64 = 5_000;
const WRITE_EVERY: Duration = Duration::from_millis(2);

#[allow(clippy::print_stdout)] // the table on stdout is this harness's output
fn main() {
    let postgres = Postgres::start_default().expect("PostgreSQL (apt-get install -y postgresql)");
    let sizes: Vec<i64> = std::env::var("BENCH_SIZES").map_or_else(
        |_| vec![1_000_000, 10_000_000],
        |v| v.split(',').map(|n| n.trim().parse().expect("BENCH_SIZES")).collect(),
    );
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
    println!(
        "| table | rows | purged | rows/s | batch mean / max | writer p50 / p99 / max, purging | writer max, idle | size before → after | next day: rows, time |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    for table in [Table::History, Table::Ledger] {
        for &rows in &sizes {
            let line = runtime.block_on(one(&postgres, table, rows));
            println!("{line}");
        }
    }
}

async fn one(postgres: &Postgres, table: Table, rows: i64) -> String {
    let url = postgres.fresh_database("retention").expect("database");
    let db = url.rsplit('/').next().expect("name").to_string();
    let pool = sqlx::postgres::PgPoolOptions::new().max_connections(4).connect(&url).await.expect("connect");
    caracal_store::migrate(&pool).await.expect("migrate");
    let psql = |sql: &str| postgres.psql(&db, sql).expect("psql");
    // Rows evenly over 40 days ending now, in key order as the writers append them.
    let step = 40.0 * 86_400.0 / rows as f64;
    match table {
        Table::History => psql(&format!(
            "INSERT INTO status_transitions (target_name, instance_url, from_status, to_status, reason, occurred_at) \
             SELECT 'target-' || (g % 1000), 'http://10.0.' || (g % 250) || '.1:8080', 'up', 'down', \
                    '/ready answered 503', now() - interval '40 days' + g * make_interval(secs => {step}) \
             FROM generate_series(1, {rows}) g"
        )),
        Table::Ledger => psql(&format!(
            "INSERT INTO audit_events (outbox_id, event_type, target, instance, payload, occurred_at) \
             SELECT g, 'instance.status_changed', 'target-' || (g % 1000), 'http://10.0.' || (g % 250) || '.1:8080', \
                    '{{\"from\": \"up\", \"to\": \"down\", \"reason\": \"/ready answered 503\"}}', \
                    now() - interval '40 days' + g * make_interval(secs => {step}) \
             FROM generate_series(1, {rows}) g; \
             UPDATE ledger_watermark SET outbox_id = {rows}; SELECT setval('outbox_id_seq', {rows})"
        )),
    };
    psql(&format!("VACUUM ANALYZE {}", table.name()));
    let size = |psql: &dyn Fn(&str) -> String| {
        psql(&format!("SELECT pg_total_relation_size('{}')", table.name())).trim().parse::<f64>().unwrap_or(0.0)
            / (1024.0 * 1024.0)
    };
    let before = size(&psql);

    // The writer alone, then beside the purge.
    let idle = writer(&pool, table, rows, Duration::from_secs(3), None).await;
    let purging = Arc::new(AtomicBool::new(true));
    let write = tokio::spawn({
        let (pool, purging) = (pool.clone(), Arc::clone(&purging));
        async move { writer(&pool, table, rows + 1_000_000, Duration::from_secs(3600), Some(purging)).await }
    });
    let mut conn = pool.acquire().await.expect("conn");
    let started = Instant::now();
    let purged = retention::purge(&mut conn, table, KEEP, BATCH).await.expect("purge");
    let took = started.elapsed();
    purging.store(false, Ordering::Relaxed);
    let latencies = write.await.expect("writer");
    psql(&format!("VACUUM {}", table.name()));
    let after = size(&psql);

    // The next day: a day's rows more past the retention, as a daily purge finds them (the
    // same as keeping a day less now).
    let next_started = Instant::now();
    let next = retention::purge(&mut conn, table, KEEP - Duration::from_secs(86_400), BATCH).await.expect("purge");
    let next_took = next_started.elapsed();

    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let (p50, p99, max) = percentiles(latencies);
    let (_, _, idle_max) = percentiles(idle);
    format!(
        "| {} | {} | {} | {:.0} | {:.1} / {:.1} ms | {p50:.2} / {p99:.2} / {max:.2} ms | {idle_max:.2} ms | {before:.0} → {after:.0} MiB | {}, {:.2} s |",
        table.name(),
        rows,
        purged.rows,
        purged.rows as f64 / took.as_secs_f64(),
        ms(purged.total) / f64::from(purged.batches.max(1)),
        ms(purged.longest),
        next.rows,
        next_took.as_secs_f64(),
    )
}

/// Inserts one row every [`WRITE_EVERY`] for `duration`, or while `while_set` is set; each
/// insert's latency in ms. Keys from `from` up, as a writer appends them.
async fn writer(
    pool: &sqlx::PgPool,
    table: Table,
    from: i64,
    duration: Duration,
    while_set: Option<Arc<AtomicBool>>,
) -> Vec<f64> {
    let mut out = Vec::new();
    let started = Instant::now();
    let mut key = from;
    loop {
        if while_set.as_ref().map_or(started.elapsed() >= duration, |flag| !flag.load(Ordering::Relaxed)) {
            return out;
        }
        key += 1;
        let t = Instant::now();
        let sql = match table {
            Table::History => {
                "INSERT INTO status_transitions (target_name, instance_url, from_status, to_status) \
                               SELECT 'writer', 'http://w', 'up', 'down' WHERE $1 > 0"
            }
            Table::Ledger => {
                "INSERT INTO audit_events (outbox_id, event_type, payload, occurred_at) \
                              VALUES ($1, 'writer', '{}', now())"
            }
        };
        sqlx::query(sql).bind(key).execute(pool).await.expect("write");
        out.push(t.elapsed().as_secs_f64() * 1000.0);
        tokio::time::sleep(WRITE_EVERY).await;
    }
}

/// p50, p99 and max.
fn percentiles(mut v: Vec<f64>) -> (f64, f64, f64) {
    if v.is_empty() {
        return (0.0, 0.0, 0.0);
    }
    v.sort_by(f64::total_cmp);
    let at = |q: f64| v[((v.len() - 1) as f64 * q).round() as usize];
    (at(0.5), at(0.99), at(1.0))
}
