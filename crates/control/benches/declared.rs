//! Declared targets at fleet scale, on the real caracal-control (in this process, default
//! settings but `targets_dir`) with the testkit's PostgreSQL and Redis:
//!
//! 1. **Bulk.** A file declaring N targets (50,000 by default) appears: the time until the
//!    registry holds every one.
//! 2. **Idle.** Nothing changes: control's CPU over 10 s (the file is watched, not re-read).
//! 3. **One line.** One target's `interval_ms` is changed in that file, five times: the time
//!    from the write until the registry shows it, p50 and max.
//!
//! Files are replaced atomically (written beside, then renamed), as a ConfigMap update or an
//! editor's save is. `cargo bench -p caracal-control --bench declared` (`DECLARED_TARGETS` to
//! change N); figures go into `docs/benchmarks.md`.

use std::path::Path;
use std::time::{Duration, Instant};

use caracal_core::Mode;
use caracal_core::config::Secret;
use caracal_testkit::bench::{cpu_seconds, median, peak_rss_mib};
use caracal_testkit::{Postgres, Redis};

#[allow(clippy::print_stdout)] // the table on stdout is this harness's output
fn main() {
    let n: usize = std::env::var("DECLARED_TARGETS").ok().and_then(|v| v.parse().ok()).unwrap_or(50_000);
    let postgres = Postgres::start_default().expect("PostgreSQL (apt-get install -y postgresql)");
    let redis = Redis::start_default().expect("Redis (apt-get install -y redis-server)");
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    runtime.block_on(async {
        let url = postgres.fresh_database("declared").expect("database");
        let pool = sqlx::PgPool::connect(&url).await.expect("connect");
        caracal_store::migrate(&pool).await.expect("migrate");
        let dir = tempfile::tempdir().expect("a targets directory");
        let mut core = caracal_testkit::app::core_config(Mode::Rc);
        core.database_url = Some(Secret::new(&url));
        core.redis_url = Some(Secret::new(redis.url()));
        let app =
            caracal_testkit::app::app("control", core, serde_json::json!({"control": {"targets_dir": dir.path()}}));
        let _served = caracal_testkit::app::serve(caracal_control::build(app).expect("control")).await;
        let file = dir.path().join("fleet.yaml");

        let text = fleet(n, 3_600_000, None);
        let (cpu, started) = (cpu_seconds(), Instant::now());
        replace(&file, &text);
        wait("every target registered", || async {
            let count: i64 = sqlx::query_scalar("SELECT count(*) FROM targets WHERE managed_by = 'control'")
                .fetch_one(&pool)
                .await
                .ok()?;
            (count as usize == n).then_some(())
        })
        .await;
        let bulk = started.elapsed();
        let bulk_cpu = cpu_seconds() - cpu;

        tokio::time::sleep(Duration::from_secs(3)).await;
        let cpu = cpu_seconds();
        tokio::time::sleep(Duration::from_secs(10)).await;
        let idle = (cpu_seconds() - cpu) / 10.0;

        let changed = format!("fleet-{}", n / 2);
        let mut lines = Vec::new();
        for round in 1..=5 {
            let interval = 3_600_000 - round * 1_000;
            let text = fleet(n, 3_600_000, Some((n / 2, interval)));
            let started = Instant::now();
            replace(&file, &text);
            wait("the changed line is in the registry", || async {
                let now: i32 = sqlx::query_scalar("SELECT interval_ms FROM targets WHERE name = $1")
                    .bind(&changed)
                    .fetch_one(&pool)
                    .await
                    .ok()?;
                (now == interval as i32).then_some(())
            })
            .await;
            lines.push(started.elapsed().as_secs_f64());
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        let max = lines.iter().copied().fold(0.0, f64::max);
        let read = Instant::now();
        let parsed = caracal_control::declared::read(dir.path());
        let read = read.elapsed();
        assert_eq!(parsed.targets.len(), n);
        let existing = caracal_store::registry::list_declared(&pool).await.expect("list");
        let planning = Instant::now();
        let steps = caracal_control::declared::plan(&parsed.targets, &existing, |_| true);
        let planning = planning.elapsed();
        assert!(steps.is_empty(), "the registry holds what the file declares");
        // As control reads it after one line changed: every other item from memory. (Control
        // reconciles these writes too, meanwhile.)
        let mut reader = caracal_control::declared::Reader::default();
        reader.read(dir.path());
        replace(&file, &fleet(n, 3_600_000, Some((n / 2, 3_000_000))));
        let reread = Instant::now();
        reader.read(dir.path());
        let reread = reread.elapsed();
        println!("| declared targets ({n} in one file, {} MB) | time | control CPU |", text.len() / 1_000_000);
        println!("|---|---:|---:|");
        println!("| the file appears: every target registered | {:.1} s | {bulk_cpu:.1} s |", bulk.as_secs_f64());
        println!("| nothing changes (10 s) | | {idle:.4} cores |");
        println!("| one line changed: in the registry, p50 / max of 5 | {:.2} s / {max:.2} s | |", median(&mut lines));
        println!("| reading and validating the whole file | {:.0} ms | |", read.as_secs_f64() * 1000.0);
        println!(
            "| of which, after one line changed: reading it again (items from memory) | {:.0} ms | |",
            reread.as_secs_f64() * 1000.0
        );
        println!("| of which: planning against {n} known targets | {:.0} ms | |", planning.as_secs_f64() * 1000.0);
        println!("| peak RSS of the process (control and the harness) | {:.0} MiB | |", peak_rss_mib());
    });
}

/// `n` targets as YAML, one instance each; `changed` gives one of them another interval.
fn fleet(n: usize, interval: usize, changed: Option<(usize, usize)>) -> String {
    let mut text = String::with_capacity(n * 120);
    for i in 0..n {
        let interval = match changed {
            Some((which, to)) if which == i => to,
            _ => interval,
        };
        text.push_str(&format!(
            "- name: fleet-{i}\n  instances: [\"http://127.0.0.1:9/f/{i}\"]\n  labels: {{team: bench}}\n  interval_ms: {interval}\n"
        ));
    }
    text
}

/// Writes `text` beside `file` and renames it over `file`.
fn replace(file: &Path, text: &str) {
    let beside = file.with_extension("yaml.tmp");
    std::fs::write(&beside, text).expect("write");
    std::fs::rename(&beside, file).expect("rename");
}

/// Waits (up to 10 minutes) until `done` answers.
async fn wait<F, Fut>(what: &str, done: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<()>>,
{
    caracal_testkit::wait_for(Duration::from_secs(600), Duration::from_millis(20), done)
        .await
        .unwrap_or_else(|_| panic!("{what} within 10 minutes"));
}
