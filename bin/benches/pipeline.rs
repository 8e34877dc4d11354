//! The event pipeline at bulk speed: a 100,000-row outbox backlog cleared into `audit_events`
//! by the real relay and audit consumer (one of each, then two of each), next to two baselines
//! of single-row PostgreSQL inserts on the same servers in the same run (sqlx, and `psql`
//! sending `INSERT` statements over 8 sessions); where the backlog's time went, per stage; the
//! end-to-end latency of a lone event on an idle pipe; the peak RSS of the relay and audit
//! processes.
//! `cargo bench -p caracal-bin --bench pipeline`; figures go into `docs/benchmarks.md`.
//!
//! The relay and the audit consumer (with its ledger reconciler) run as child processes (this
//! harness started again with `--role`), each with its defaults, so their memory is their own.
//! `BENCH_RELAY_BATCH=N` and `BENCH_AUDIT_BATCH=N` set the batch sizes instead of the
//! defaults (2,000). `BENCH_ROUNDS=N` (default 3) repeats the `psql` baseline and the backlogs
//! after it N times, each backlog compared with its own round's baseline. `BENCH_REPLICAS=1`
//! runs only the one-of-each backlog (and no baselines with `BENCH_BASELINES=off`), for
//! profiling one configuration.
//! `BENCH_STATEMENTS=on` starts PostgreSQL with `pg_stat_statements` and adds, for the last
//! round's backlogs, the time each statement spent inside PostgreSQL: the servers' side of
//! the stage breakdown.
//! The servers are the testkit's (PostgreSQL with `fsync=off`): this measures the software,
//! not the disk. The harness waits for the ledger with primary-key lookups, never by counting
//! it while it grows: a `count(*)` every 200 ms was 8 % of PostgreSQL's time during a backlog.

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use caracal_testkit::bench::{
    cpu_seconds_between, cpu_seconds_by_pid, cpu_seconds_of, peak_rss_mib_of, reaped_cpu_seconds_by_pid,
    reaped_cpu_seconds_of,
};
use caracal_testkit::postgres::PostgresBuilder;
use caracal_testkit::{Postgres, Redis};

const BACKLOG: i64 = 100_000;
const RAW_ROWS: usize = 20_000;
const PRODUCERS: usize = 8;
const LONE_EVENTS: usize = 200;

#[allow(clippy::print_stdout)] // the table on stdout is this harness's output
fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(role) = args.iter().position(|a| a == "--role").and_then(|i| args.get(i + 1)) {
        return child(role);
    }
    let statements = std::env::var("BENCH_STATEMENTS").is_ok_and(|v| v == "on");
    let postgres = if statements {
        PostgresBuilder::default()
            .setting("shared_preload_libraries", "pg_stat_statements")
            .setting("pg_stat_statements.track", "all")
            .start()
    } else {
        Postgres::start_default()
    }
    .expect("PostgreSQL (apt-get install -y postgresql)");
    let redis = Redis::start_default().expect("Redis (apt-get install -y redis-server)");
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
    let baselines = std::env::var("BENCH_BASELINES").map_or(true, |v| v != "off");
    let replicas: Vec<usize> = std::env::var("BENCH_REPLICAS")
        .map_or_else(|_| vec![1, 2], |v| v.split(',').map(|n| n.trim().parse().expect("BENCH_REPLICAS")).collect());
    let rounds: usize = std::env::var("BENCH_ROUNDS").map_or(3, |v| v.parse().expect("BENCH_ROUNDS"));
    runtime.block_on(async {
        let raw = if !baselines {
            f64::NAN
        } else {
            let url = postgres.fresh_database("raw").expect("database");
            let pool = connect(&url, 16).await;
            raw_inserts(&pool).await
        };
        println!("| measure | figure |");
        println!("|---|---:|");
        println!("| raw PostgreSQL inserts, sqlx (1 row/transaction, {PRODUCERS} connections) | {raw:.0} rows/s |");
        let (relay_alone, audit_alone) = tokio::time::timeout(Duration::from_secs(300), hops_alone(&postgres, &redis))
            .await
            .expect("each hop alone cleared its backlog in 5 minutes");
        println!("| each hop alone, the other stopped: relay (outbox → stream) / audit (stream → ledger) | {relay_alone:.0} / {audit_alone:.0} events/s |");
        // The `psql` baseline is a storm of round trips and moves with the machine's state far
        // more than the batched pipeline does, so each round measures it again right before
        // the backlogs it is compared with, and the summary gives every round's ratio.
        // The rate ratio moves with the machine's state; the CPU each row or event cost (every
        // process of the run, servers included) counts only time actually run, so its ratio is
        // given beside it.
        let mut ratios: Vec<(usize, Vec<f64>, Vec<f64>)> = replicas.iter().map(|&r| (r, Vec::new(), Vec::new())).collect();
        for round in 1..=rounds {
            let (psql, psql_cpu) = if !baselines {
                (f64::NAN, f64::NAN)
            } else {
                let url = postgres.fresh_database("psql").expect("database");
                let pool = connect(&url, 2).await;
                psql_inserts(&pool, postgres.port(), url.rsplit('/').next().expect("name")).await
            };
            println!(
                "| round {round}: raw PostgreSQL inserts, `psql` (1 `INSERT` statement each, {PRODUCERS} sessions) | {psql:.0} rows/s, {:.1} µs of CPU a row |",
                psql_cpu * 1e6
            );
            for (replicas, ratios, cpu_ratios) in &mut ratios {
                let replicas = *replicas;
                // Lone events on an idle pipe: once is enough.
                let run = backlog(&postgres, &redis, replicas, round == 1 && replicas == 1, statements).await;
                let cpu = (run.relay_cpu + run.audit_cpu + run.postgres_cpu + run.redis_cpu) / BACKLOG as f64;
                ratios.push(run.rate / psql);
                cpu_ratios.push(psql_cpu / cpu);
                println!(
                    "| round {round}: {BACKLOG} backlog cleared, {replicas} relay + {replicas} audit | {:.0} events/s = **{:.2}×** psql, {:.2}× sqlx; {:.1} µs of CPU an event = {:.2}× less than psql's row |",
                    run.rate,
                    run.rate / psql,
                    run.rate / raw,
                    cpu * 1e6,
                    psql_cpu / cpu
                );
                if round == rounds {
                    print_details(&run, replicas);
                }
            }
        }
        for (replicas, ratios, cpu_ratios) in &mut ratios {
            let spread = |values: &mut Vec<f64>| {
                values.sort_by(f64::total_cmp);
                (values[0], values[values.len() / 2], values[values.len() - 1])
            };
            let (min, median, max) = spread(ratios);
            println!(
                "| {replicas} relay + {replicas} audit, {rounds} rounds: ratio to the round's `psql` baseline, min / median / max | {min:.2}× / **{median:.2}×** / {max:.2}× |"
            );
            let (min, median, max) = spread(cpu_ratios);
            println!(
                "| {replicas} relay + {replicas} audit, {rounds} rounds: CPU of a `psql` row ÷ CPU of an event, min / median / max | {min:.2}× / **{median:.2}×** / {max:.2}× |"
            );
        }
    });
}

/// The breakdown of one backlog run: stages, duplicates, memory, CPU, lone-event latency.
#[allow(clippy::print_stdout)] // the table on stdout is this harness's output
fn print_details(run: &Run, replicas: usize) {
    let stages = |role: &str| {
        run.stages
            .iter()
            .filter(|(r, _)| r == role)
            .flat_map(|(_, s)| s.iter())
            .fold(Vec::<(String, f64)>::new(), |mut sum, (stage, secs)| {
                match sum.iter_mut().find(|(s, _)| s == stage) {
                    Some((_, total)) => *total += secs,
                    None => sum.push((stage.clone(), *secs)),
                }
                sum
            })
            .iter()
            .map(|(stage, secs)| format!("{stage} {secs:.2}"))
            .collect::<Vec<_>>()
            .join(" / ")
    };
    println!("| relay stages for the backlog ({replicas}+{replicas}, s summed) | {} |", stages("relay"));
    println!("| audit stages for the backlog ({replicas}+{replicas}, s summed) | {} |", stages("audit"));
    println!("| stream entries beyond one per row ({replicas}+{replicas}) | {} |", run.duplicates);
    println!(
        "| peak RSS relay / audit ({replicas}+{replicas}, each process) | {:.0} / {:.0} MiB |",
        run.relay_rss, run.audit_rss
    );
    println!(
        "| CPU of the relays / audits for the backlog ({replicas}+{replicas}) | {:.2} / {:.2} s |",
        run.relay_cpu, run.audit_cpu
    );
    println!(
        "| CPU of PostgreSQL / Redis while the backlog cleared ({replicas}+{replicas}, every process) | {:.2} / {:.2} s |",
        run.postgres_cpu, run.redis_cpu
    );
    if let Some((p50, p99, max, relay)) = run.lone {
        println!("| lone event, outbox insert to ledger row, p50 / p99 / max | {p50:.1} / {p99:.1} / {max:.1} ms |");
        println!("| lone event, outbox insert to dispatch (the relay's poll), p50 | {relay:.1} ms |");
    }
    for (statement, ms, calls) in &run.statements {
        println!("| inside PostgreSQL ({replicas}+{replicas}): `{statement}` | {ms:.0} ms in {calls} calls |");
    }
}

/// What one backlog run measured.
struct Run {
    rate: f64,
    duplicates: i64,
    relay_rss: f64,
    audit_rss: f64,
    relay_cpu: f64,
    audit_cpu: f64,
    /// CPU seconds of every PostgreSQL and Redis process while the backlog cleared (the
    /// PostgreSQL processes that exited in between, autovacuum workers say, included).
    postgres_cpu: f64,
    redis_cpu: f64,
    lone: Option<(f64, f64, f64, f64)>,
    /// Per child: its role and its seconds per stage when the backlog had cleared.
    stages: Vec<(String, Vec<(String, f64)>)>,
    /// With `BENCH_STATEMENTS=on`: the statements that took longest inside PostgreSQL while
    /// the backlog cleared (text, milliseconds, calls).
    statements: Vec<(String, f64, i64)>,
}

/// A reading of every PostgreSQL process's CPU time, the exited ones' included: a backend or
/// autovacuum worker that exits is reaped by the postmaster, which then counts its time.
struct PostgresCpu {
    running: std::collections::HashMap<u32, f64>,
    reaped: std::collections::HashMap<u32, f64>,
}

impl PostgresCpu {
    fn now() -> Self {
        Self { running: cpu_seconds_by_pid("postgres"), reaped: reaped_cpu_seconds_by_pid("postgres") }
    }

    /// CPU seconds spent by PostgreSQL since this reading.
    fn spent(&self) -> f64 {
        let now = Self::now();
        cpu_seconds_between(&self.running, &now.running) + cpu_seconds_between(&self.reaped, &now.reaped)
    }
}

/// A relay or audit child process, and the pipes to ask it for its stage times.
struct Worker {
    role: String,
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl Worker {
    /// Kills the child and reaps it.
    fn stop(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// The child's seconds per stage so far: it answers `stats` with `stage=seconds ...`.
    fn stages(&mut self) -> Vec<(String, f64)> {
        writeln!(self.stdin, "stats").expect("ask for stats");
        let mut line = String::new();
        self.stdout.read_line(&mut line).expect("stats");
        line.split_whitespace()
            .filter_map(|pair| pair.split_once('='))
            .map(|(stage, secs)| (stage.to_string(), secs.parse().unwrap_or(0.0)))
            .collect()
    }
}

/// Clears a `BACKLOG`-row outbox with `replicas` relays and audits; with `lone`, then also
/// times lone events on the idle pipe.
async fn backlog(postgres: &Postgres, redis: &Redis, replicas: usize, lone: bool, statements: bool) -> Run {
    let (url, pool) = fresh_pipeline(postgres, redis, "backlog").await;
    let mut children: Vec<Worker> = Vec::new();
    for _ in 0..replicas {
        children.push(spawn("relay", &url, &redis.url()));
        children.push(spawn("audit", &url, &redis.url()));
    }
    let last = fill_outbox(&pool).await;
    if statements {
        sqlx::raw_sql("CREATE EXTENSION IF NOT EXISTS pg_stat_statements; SELECT pg_stat_statements_reset()")
            .execute(&pool)
            .await
            .expect("pg_stat_statements");
    }
    let servers_before = (PostgresCpu::now(), cpu_seconds_by_pid("redis-server"));
    let started = epoch(&pool, CLOCK).await;
    assert!(
        wait_for_ledger(&pool, last, BACKLOG, Duration::from_secs(300)).await,
        "the backlog did not clear in 5 minutes"
    );
    // The ledger's own clock: the last batch's insert, not this poll's granularity.
    let finished = epoch(&pool, LAST_RECORDED).await;
    let rate = BACKLOG as f64 / (finished - started);
    let (postgres_before, redis_before) = servers_before;
    let postgres_cpu = postgres_before.spent();
    let redis_cpu = cpu_seconds_between(&redis_before, &cpu_seconds_by_pid("redis-server"));
    let stages = children.iter_mut().map(|w| (w.role.clone(), w.stages())).collect();
    let statements = if statements { statement_times(&pool).await } else { Vec::new() };

    let (rows, distinct): (i64, i64) = sqlx::query_as("SELECT count(*), count(DISTINCT outbox_id) FROM audit_events")
        .fetch_one(&pool)
        .await
        .expect("counts");
    assert_eq!((rows, distinct), (BACKLOG, BACKLOG), "each event exactly once");
    // Every stream entry beyond one per row is work the replicas duplicated (idempotency absorbed it).
    let entries: i64 =
        redis.command("XLEN caracal.events").expect("xlen").trim().trim_start_matches(':').parse().expect("xlen");
    let duplicates = entries - BACKLOG;

    let cpu = |role: &str| {
        children.iter().filter(|w| w.role == role).map(|w| cpu_seconds_of(w.child.id()).unwrap_or(0.0)).sum::<f64>()
    };
    let (relay_cpu, audit_cpu) = (cpu("relay"), cpu("audit"));
    let lone = if lone { Some(lone_events(&pool).await) } else { None };
    let rss = |role: &str| {
        children.iter().filter(|w| w.role == role).map(|w| peak_rss_mib_of(w.child.id())).fold(0.0, f64::max)
    };
    let (relay_rss, audit_rss) = (rss("relay"), rss("audit"));
    children.into_iter().for_each(Worker::stop);
    Run {
        rate,
        duplicates,
        relay_rss,
        audit_rss,
        relay_cpu,
        audit_cpu,
        postgres_cpu,
        redis_cpu,
        lone,
        stages,
        statements,
    }
}

/// Each hop's own rate, the other stopped: the relay alone moves a `BACKLOG`-row outbox into
/// the stream (rows/s, until the last row is marked dispatched), then the audit alone clears
/// that stream into the ledger (until the last ledger row). Whichever is slower bounds the
/// pipeline.
async fn hops_alone(postgres: &Postgres, redis: &Redis) -> (f64, f64) {
    let (url, pool) = fresh_pipeline(postgres, redis, "hops").await;
    let last = fill_outbox(&pool).await;
    let started = epoch(&pool, CLOCK).await;
    let relay = spawn("relay", &url, &redis.url());
    // The relay claims in id order, so the last row is (nearly) the last one dispatched; only
    // then is the outbox read for anything left.
    let last_dispatched = "SELECT dispatched_at IS NOT NULL FROM outbox WHERE id = $1";
    let any_pending = "SELECT EXISTS (SELECT 1 FROM outbox WHERE dispatched_at IS NULL)";
    loop {
        let done = sqlx::query_scalar::<_, bool>(last_dispatched).bind(last).fetch_one(&pool).await.expect("last")
            && !sqlx::query_scalar::<_, bool>(any_pending).fetch_one(&pool).await.expect("pending");
        if done {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let dispatched = epoch(&pool, "SELECT extract(epoch FROM max(dispatched_at))::float8 FROM outbox").await;
    relay.stop();
    let started_audit = epoch(&pool, CLOCK).await;
    let audit = spawn("audit", &url, &redis.url());
    assert!(
        wait_for_ledger(&pool, last, BACKLOG, Duration::from_secs(300)).await,
        "the audit alone did not clear the stream in 5 minutes"
    );
    let recorded = epoch(&pool, LAST_RECORDED).await;
    audit.stop();
    (BACKLOG as f64 / (dispatched - started), BACKLOG as f64 / (recorded - started_audit))
}

/// Inserts `LONE_EVENTS` events one at a time, 20 ms apart, on the idle pipe (right after the
/// backlog, before VACUUM has tidied the outbox); the latency of each from its outbox insert
/// to its ledger row (p50, p99, max in ms) and the p50 of its relay hop.
async fn lone_events(pool: &sqlx::PgPool) -> (f64, f64, f64, f64) {
    let first: i64 = sqlx::query_scalar("SELECT coalesce(max(id), 0) FROM outbox").fetch_one(pool).await.expect("max");

    for i in 0..LONE_EVENTS {
        sqlx::query("INSERT INTO outbox (event_type, target, payload) VALUES ('bench.lone', 'bench', $1)")
            .bind(serde_json::json!({ "i": i }))
            .execute(pool)
            .await
            .expect("insert");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let last: i64 = sqlx::query_scalar("SELECT max(id) FROM outbox").fetch_one(pool).await.expect("max");
    let want = BACKLOG + LONE_EVENTS as i64;
    assert!(wait_for_ledger(pool, last, want, Duration::from_secs(60)).await, "lone events did not arrive");
    let relay_hop: f64 = sqlx::query_scalar(
        "SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY (EXTRACT(EPOCH FROM dispatched_at - created_at) * 1000)::float8) \
         FROM outbox WHERE id > $1",
    )
    .bind(first)
    .fetch_one(pool)
    .await
    .expect("relay hop");
    let (p50, p99, max): (f64, f64, f64) = sqlx::query_as(
        "SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY ms), percentile_cont(0.99) WITHIN GROUP (ORDER BY ms), max(ms) \
         FROM (SELECT (EXTRACT(EPOCH FROM a.recorded_at - o.created_at) * 1000)::float8 AS ms \
               FROM audit_events a JOIN outbox o ON o.id = a.outbox_id WHERE o.id > $1) l",
    )
    .bind(first)
    .fetch_one(pool)
    .await
    .expect("latency");
    (p50, p99, max, relay_hop)
}

/// PostgreSQL's clock now, in seconds since the epoch.
const CLOCK: &str = "SELECT extract(epoch FROM clock_timestamp())::float8";
/// When the ledger's last row was recorded, on PostgreSQL's clock.
const LAST_RECORDED: &str = "SELECT extract(epoch FROM max(recorded_at))::float8 FROM audit_events";

/// A fresh migrated database (its URL and a pool) and an emptied Redis.
async fn fresh_pipeline(postgres: &Postgres, redis: &Redis, prefix: &str) -> (String, sqlx::PgPool) {
    let url = postgres.fresh_database(prefix).expect("database");
    let pool = connect(&url, 4).await;
    caracal_store::migrate(&pool).await.expect("migrate");
    redis.command("FLUSHALL").expect("flush");
    (url, pool)
}

/// Commits a `BACKLOG`-row outbox at once, as rows piled up during an outage would be found;
/// returns the last row's id.
async fn fill_outbox(pool: &sqlx::PgPool) -> i64 {
    sqlx::query(
        "INSERT INTO outbox (event_type, target, payload) \
         SELECT 'bench.event', 'bench', jsonb_build_object('i', g, 'from', 'up', 'to', 'down') FROM generate_series(1, $1) g",
    )
    .bind(BACKLOG)
    .execute(pool)
    .await
    .expect("backlog");
    sqlx::query_scalar("SELECT max(id) FROM outbox").fetch_one(pool).await.expect("last id")
}

/// Waits until the ledger holds `want` rows, at most `limit`; whether it did. While the
/// pipeline runs it asks only whether row `last` has arrived (a primary-key lookup); it counts
/// the ledger only after that, since counting a table as it grows is work that grows with it,
/// done by the same two cores the pipeline runs on.
async fn wait_for_ledger(pool: &sqlx::PgPool, last: i64, want: i64, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    let arrived = "SELECT EXISTS (SELECT 1 FROM audit_events WHERE outbox_id = $1)";
    while Instant::now() < deadline {
        if sqlx::query_scalar::<_, bool>(arrived).bind(last).fetch_one(pool).await.expect("last")
            && count(pool).await >= want
        {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

/// The statements that took longest inside PostgreSQL since `pg_stat_statements_reset()`,
/// the harness's own left out: text (shortened), milliseconds, calls.
async fn statement_times(pool: &sqlx::PgPool) -> Vec<(String, f64, i64)> {
    sqlx::query_as(
        "SELECT left(regexp_replace(query, '\\s+', ' ', 'g'), 90), total_exec_time, calls FROM pg_stat_statements \
         WHERE query NOT LIKE '%pg_stat_statements%' AND query NOT LIKE '%audit_events WHERE outbox_id = $1%' \
           AND query NOT LIKE 'SELECT count(*) FROM audit_events%' AND query NOT LIKE '%recorded_at%' \
         ORDER BY total_exec_time DESC LIMIT 6",
    )
    .fetch_all(pool)
    .await
    .expect("pg_stat_statements")
}

/// A time query's answer (`CLOCK`, `LAST_RECORDED`, ...).
async fn epoch(pool: &sqlx::PgPool, sql: &'static str) -> f64 {
    sqlx::query_scalar(sql).fetch_one(pool).await.expect("clock")
}

async fn count(pool: &sqlx::PgPool) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM audit_events").fetch_one(pool).await.expect("count")
}

async fn connect(url: &str, max: u32) -> sqlx::PgPool {
    sqlx::postgres::PgPoolOptions::new().max_connections(max).connect(url).await.expect("connect")
}

/// Starts this harness as a `role` child and waits for its `ready` line.
fn spawn(role: &str, database_url: &str, redis_url: &str) -> Worker {
    let mut child = Command::new(std::env::current_exe().expect("own path"))
        .args(["--role", role])
        .env("BENCH_DATABASE_URL", database_url)
        .env("BENCH_REDIS_URL", redis_url)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("start a child");
    let mut stdout = BufReader::new(child.stdout.take().expect("stdout"));
    let stdin = child.stdin.take().expect("stdin");
    let mut line = String::new();
    stdout.read_line(&mut line).expect("ready");
    assert_eq!(line.trim(), "ready", "the {role} child did not start");
    Worker { role: role.to_string(), child, stdin, stdout }
}

/// Answers each `stats` line on stdin with `stage=seconds ...` from `totals`, until stdin
/// closes (the parent gone).
fn answer_stats(totals: impl Fn() -> Vec<(&'static str, f64)> + Send + 'static) {
    std::thread::spawn(move || {
        for line in std::io::stdin().lines() {
            let Ok(line) = line else { return };
            if line.trim() == "stats" {
                let text: Vec<String> =
                    totals().into_iter().map(|(stage, secs)| format!("{stage}={secs:.4}")).collect();
                let mut out = std::io::stdout().lock();
                let _ = writeln!(out, "{}", text.join(" "));
                let _ = out.flush();
            }
        }
    });
}

/// The child side: run the relay or the audit consumer (with its reconciler) with defaults.
#[allow(clippy::print_stdout)] // the parent waits for the ready line
fn child(role: &str) {
    let database_url = std::env::var("BENCH_DATABASE_URL").expect("BENCH_DATABASE_URL");
    let redis_url = std::env::var("BENCH_REDIS_URL").expect("BENCH_REDIS_URL");
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
    runtime.block_on(async move {
        let pool = connect(&database_url, 4).await;
        let redis: caracal_core::RedisConnection =
            redis::aio::ConnectionManager::new(redis::Client::open(redis_url).expect("url"))
                .await
                .expect("redis")
                .into();
        let mut registry = prometheus_client::registry::Registry::default();
        let stop = tokio_util::sync::CancellationToken::new();
        match role {
            "relay" => {
                let metrics = caracal_coordinator::metrics::Metrics::register(&mut registry);
                let mut config = caracal_coordinator::config::RelayConfig::default();
                if let Ok(b) = std::env::var("BENCH_RELAY_BATCH") {
                    config.batch = b.parse().unwrap();
                }
                let totals = metrics.clone();
                answer_stats(move || totals.relay_stage_totals());
                let relay = caracal_coordinator::relay::Relay::new(pool, redis, metrics, config);
                println!("ready");
                relay.run(stop).await;
            }
            "audit" => {
                let metrics = caracal_audit::metrics::Metrics::register(&mut registry);
                let mut config = caracal_audit::AuditConfig::default();
                if let Ok(b) = std::env::var("BENCH_AUDIT_BATCH") {
                    config.batch = b.parse().unwrap();
                }
                let reconciler =
                    caracal_audit::reconcile::Reconciler::new(pool.clone(), metrics.clone(), config.ledger.clone());
                let totals = metrics.clone();
                answer_stats(move || totals.stage_totals());
                let consumer = caracal_audit::consumer::Consumer::new(pool, redis, metrics, config);
                println!("ready");
                tokio::join!(consumer.run(stop.clone()), reconciler.run(stop));
            }
            other => panic!("unknown role {other}"),
        }
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

/// Single-row inserts, one per transaction, from `PRODUCERS` connections: rows/s.
async fn raw_inserts(pool: &sqlx::PgPool) -> f64 {
    sqlx::query("CREATE TABLE raw_bench (id bigserial PRIMARY KEY, payload jsonb NOT NULL, created_at timestamptz NOT NULL DEFAULT now())")
        .execute(pool)
        .await
        .expect("table");
    let started = Instant::now();
    let p = pool.clone();
    produce(RAW_ROWS, move |i| {
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
    RAW_ROWS as f64 / started.elapsed().as_secs_f64()
}

/// Single-row inserts as `psql` sends them: `RAW_ROWS` `INSERT` statements (each its own
/// transaction) split over `PRODUCERS` concurrent `psql` sessions: rows/s, and the CPU seconds
/// a row cost (PostgreSQL's processes and the `psql`s). No client library's cost is in it, only
/// the protocol's round trip per statement.
async fn psql_inserts(pool: &sqlx::PgPool, port: u16, database: &str) -> (f64, f64) {
    sqlx::query("CREATE TABLE raw_psql (id bigserial PRIMARY KEY, payload jsonb NOT NULL, created_at timestamptz NOT NULL DEFAULT now())")
        .execute(pool)
        .await
        .expect("table");
    let dir = tempfile::tempdir().expect("scratch");
    let files: Vec<std::path::PathBuf> = (0..PRODUCERS)
        .map(|p| {
            let file = dir.path().join(format!("inserts-{p}.sql"));
            let sql: String = (p..RAW_ROWS)
                .step_by(PRODUCERS)
                .map(|i| format!("INSERT INTO raw_psql (payload) VALUES ('{{\"i\": {i}}}');\n"))
                .collect();
            std::fs::write(&file, sql).expect("write the statements");
            file
        })
        .collect();
    let (postgres_before, psql_before) = (PostgresCpu::now(), reaped_cpu_seconds_of("self").expect("own stat"));
    let started = Instant::now();
    let sessions: Vec<Child> = files
        .iter()
        .map(|file| {
            Command::new("psql")
                .args([
                    "-X",
                    "-q",
                    "-v",
                    "ON_ERROR_STOP=1",
                    "-h",
                    "127.0.0.1",
                    "-p",
                    &port.to_string(),
                    "-U",
                    "postgres",
                    "-d",
                    database,
                    "-f",
                ])
                .arg(file)
                .stdout(Stdio::null())
                .spawn()
                .expect("psql (apt-get install -y postgresql-client)")
        })
        .collect();
    for mut session in sessions {
        assert!(session.wait().expect("psql").success(), "psql failed");
    }
    let elapsed = started.elapsed().as_secs_f64();
    // The sessions' backends exit after their psql does; give the postmaster time to reap them.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let cpu = postgres_before.spent() + reaped_cpu_seconds_of("self").expect("own stat") - psql_before;
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM raw_psql").fetch_one(pool).await.expect("count");
    assert_eq!(rows, RAW_ROWS as i64, "every psql insert landed");
    (RAW_ROWS as f64 / elapsed, cpu / RAW_ROWS as f64)
}
