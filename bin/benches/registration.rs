//! Registration at fleet scale, on the real platform (`caracal up --mode rc`, release build),
//! every instance a loopback port nothing listens on (each is probed once at once, found down,
//! and that transition recorded, as a new fleet's first probes are):
//!
//! 1. **`POST /v1/targets`** from 8 concurrent clients, 8,000 targets: targets per second.
//! 2. **`caracal apply -f`** of a file declaring N more targets (50,000 by default): the CLI's
//!    wall time (it lists the registry, plans, and sends batches of 1,000).
//! 3. **One line changed** in that file, applied again: the CLI's wall time.
//!
//! `cargo bench -p caracal-bin --bench registration` (`REGISTRATION_TARGETS` to change N);
//! figures go into `docs/benchmarks.md`.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use platform::{Platform, caracal};

#[path = "support/platform.rs"]
mod platform;

const CLIENTS: usize = 8;
const POSTED: usize = 8_000;

#[allow(clippy::print_stdout)] // the table on stdout is this harness's output
fn main() {
    let n: usize = std::env::var("REGISTRATION_TARGETS").ok().and_then(|v| v.parse().ok()).unwrap_or(50_000);
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
    runtime.block_on(async {
        let platform = Platform::up().await;
        let api = platform.url("api");

        let http = reqwest::Client::new();
        let next = Arc::new(AtomicUsize::new(0));
        let started = Instant::now();
        let mut clients = tokio::task::JoinSet::new();
        for _ in 0..CLIENTS {
            let (http, api, admin, next) = (http.clone(), api.clone(), platform.admin.clone(), Arc::clone(&next));
            clients.spawn(async move {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= POSTED {
                        return;
                    }
                    let document = serde_json::json!({
                        "name": format!("posted-{i}"), "instances": [format!("http://127.0.0.1:9/p/{i}")],
                        "labels": {"team": "bench"}, "interval_ms": 3_600_000,
                    });
                    let answer =
                        http.post(format!("{api}/v1/targets")).bearer_auth(&admin).json(&document).send().await;
                    assert_eq!(answer.expect("POST").status(), 201);
                }
            });
        }
        while clients.join_next().await.is_some() {}
        let posted = POSTED as f64 / started.elapsed().as_secs_f64();

        let file = platform.dir.join("fleet.yaml");
        std::fs::write(&file, fleet(n, None)).expect("write");
        let apply = || {
            let started = Instant::now();
            let out = caracal(&platform.dir, &["apply".into(), "-f".into(), file.display().to_string()]);
            assert!(out.status.success(), "apply: {}", String::from_utf8_lossy(&out.stdout));
            (started.elapsed().as_secs_f64(), String::from_utf8_lossy(&out.stdout).lines().count())
        };
        let (bulk, lines) = apply();
        assert_eq!(lines, n, "one line per target created");
        let count: i64 = sqlx::query_scalar("SELECT count(*) FROM targets WHERE name LIKE 'fleet-%'")
            .fetch_one(&platform.pool)
            .await
            .expect("count");
        assert_eq!(count as usize, n);
        // The steady state an operator edits in: every new instance probed once and its first
        // status recorded and relayed.
        let settling = Instant::now();
        settle(&platform.pool).await;
        let settled = settling.elapsed().as_secs_f64();
        let listing = Instant::now();
        let listed = http.get(format!("{api}/v1/targets")).bearer_auth(&platform.admin).send().await.expect("list");
        let listed = listed.bytes().await.expect("list").len();
        let listing = listing.elapsed().as_secs_f64();
        std::fs::write(&file, fleet(n, Some(n / 2))).expect("write");
        let (one, lines) = apply();
        assert_eq!(lines, 1, "one line changed, one update");

        println!("| registration on the real platform | time | rate |");
        println!("|---|---:|---:|");
        println!(
            "| `POST /v1/targets`, {CLIENTS} clients, {POSTED} targets | {:.1} s | {posted:.0} targets/s |",
            POSTED as f64 / posted
        );
        println!(
            "| `caracal apply -f`, {n} new targets in one file | {bulk:.1} s | {:.0} targets/s |",
            n as f64 / bulk
        );
        println!("| then until every new instance's first status is recorded and relayed | {settled:.1} s | |");
        println!("| `GET /v1/targets`: {} targets, {:.1} MB | {listing:.2} s | |", n + POSTED + 6, listed as f64 / 1e6);
        println!("| `caracal apply -f`, the same file with one line changed | {one:.2} s | |");
        platform.down();
    });
}

/// `n` targets as YAML, one instance each; `changed` gives one of them another interval.
fn fleet(n: usize, changed: Option<usize>) -> String {
    let mut text = String::with_capacity(n * 120);
    for i in 0..n {
        let interval = if changed == Some(i) { 1_800_000 } else { 3_600_000 };
        text.push_str(&format!(
            "- name: fleet-{i}\n  instances: [\"http://127.0.0.1:9/f/{i}\"]\n  labels: {{team: bench}}\n  interval_ms: {interval}\n"
        ));
    }
    text
}

/// Waits until every instance has a status and the outbox is relayed.
async fn settle(pool: &sqlx::PgPool) {
    let settled =
        caracal_testkit::wait_for(std::time::Duration::from_secs(1200), std::time::Duration::from_secs(1), || async {
            let (instances, statuses, pending): (i64, i64, i64) = sqlx::query_as(
                "SELECT (SELECT count(*) FROM instances), (SELECT count(*) FROM instance_status), \
                    (SELECT count(*) FROM outbox WHERE dispatched_at IS NULL)",
            )
            .fetch_one(pool)
            .await
            .ok()?;
            (statuses >= instances && pending == 0).then_some(())
        })
        .await;
    settled.expect("every instance probed and the outbox relayed");
}
