//! Gray-failure detection, end to end: one coordinator prober watching loopback instances whose
//! latency and failures this harness injects, every 500 ms, for 10 minutes.
//! `cargo bench -p caracal-bin --bench gray`; figures go into `docs/benchmarks.md`.
//!
//! - `noisy`: 10 healthy but noisy instances (lognormal latency, median 4 ms, σ 0.9, plus 0.5 %
//!   spikes of 150–300 ms) for the whole run: none may ever be anything but `up`.
//! - `steady`: 3 instances slow by nature (250 ms, σ 0.1): never anything but `up`.
//! - `pair`: 6 noisy instances; at 60 s, instance 0 slows by 150 ms and instance 1 starts
//!   failing 25 % of its `/ready` answers at random; at 240 s both heal. Instances 2–5, their
//!   peers, must stay `up`.
//! - `single`: one noisy instance, no peers, slowed to 300 ms from 60 s to 240 s.
//!
//! Every figure comes from the transitions the coordinator recorded (PostgreSQL's clock on
//! both sides). The detector's state per instance is stated from its size, and measured as
//! the resident memory 50,000 of them (with a peer group entry each) add.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::get;
use caracal_coordinator::gray::{Gray, Peers, Sample};
use caracal_testkit::Postgres;

#[path = "support/lone_prober.rs"]
mod lone_prober;
use lone_prober::LoneProber;

const INTERVAL_MS: i32 = 500;
const INJECT_AT: Duration = Duration::from_secs(60);
const HEAL_AT: Duration = Duration::from_secs(240);
const RUN: Duration = Duration::from_secs(600);

/// How an instance answers `/ready`.
#[derive(Clone, Copy)]
enum Mode {
    /// Lognormal, median 4 ms, σ 0.9, plus 0.5 % spikes of 150–300 ms.
    Noisy,
    /// Lognormal around this many ms, σ 0.1.
    Steady(f64),
    /// Noisy, plus this many ms.
    Slow(u64),
    /// Noisy, failing this share at random (503).
    Flaky(f64),
}

type Modes = Arc<Mutex<HashMap<String, Mode>>>;

fn lognormal(median_ms: f64, sigma: f64) -> Duration {
    let (u1, u2) = (fastrand::f64().max(f64::MIN_POSITIVE), fastrand::f64());
    let z = (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos();
    Duration::from_secs_f64(median_ms * (sigma * z).exp() / 1000.0)
}

fn noisy() -> Duration {
    if fastrand::f64() < 0.005 { Duration::from_millis(fastrand::u64(150..=300)) } else { lognormal(4.0, 0.9) }
}

async fn ready(State(modes): State<Modes>, Path((target, n)): Path<(String, u32)>) -> StatusCode {
    let mode = modes.lock().expect("lock").get(&format!("{target}/{n}")).copied().unwrap_or(Mode::Noisy);
    let (delay, fail) = match mode {
        Mode::Noisy => (noisy(), false),
        Mode::Steady(ms) => (lognormal(ms, 0.1), false),
        Mode::Slow(ms) => (noisy() + Duration::from_millis(ms), false),
        Mode::Flaky(share) => (noisy(), fastrand::f64() < share),
    };
    tokio::time::sleep(delay).await;
    if fail { StatusCode::SERVICE_UNAVAILABLE } else { StatusCode::OK }
}

/// (instance url, from, to, at) of every transition, oldest first.
type Transition = (String, String, String, f64);

#[allow(clippy::print_stdout)] // the table on stdout is this harness's output
fn main() {
    let state = state_per_instance();
    if std::env::args().any(|a| a == "--state-only") {
        println!("| detector state per instance (size) | {} B | ≤ 1 KiB |", state.0);
        println!("| 50,000 instances' detector state and peer entries, resident | {:.1} MiB | ≤ 50 MB |", state.1);
        println!("| CPU of the detectors per probe (full windows, every detector) | {:.0} ns | |", state.2);
        return;
    }
    let postgres = Postgres::start_default().expect("PostgreSQL (apt-get install -y postgresql)");
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    runtime.block_on(async move {
        let url = postgres.fresh_database("gray").expect("database");
        let pool = sqlx::PgPool::connect(&url).await.expect("connect");
        caracal_store::migrate(&pool).await.expect("migrate");

        let modes: Modes = Arc::default();
        let app = Router::new()
            .route("/b/{target}/{n}/health", get(|| async { "ok" }))
            .route("/b/{target}/{n}/ready", get(ready))
            .with_state(Arc::clone(&modes));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let base = format!("http://{}", listener.local_addr().expect("addr"));
        tokio::spawn(async move { axum::serve(listener, app).await });
        let url_of = |target: &str, n: u32| format!("{base}/b/{target}/{n}");
        for (target, count) in [("noisy", 10), ("steady", 3), ("pair", 6), ("single", 1)] {
            let instances: Vec<String> = (0..count).map(|n| url_of(target, n)).collect();
            let spec = serde_json::json!({"name": target, "instances": instances, "interval_ms": INTERVAL_MS, "timeout_ms": 2000});
            let spec: caracal_store::target::TargetSpec = serde_json::from_value(spec).expect("spec");
            caracal_store::registry::create(&pool, &spec, &caracal_store::registry::Writer::Api).await.expect("target");
        }
        for n in 0..3 {
            modes.lock().expect("lock").insert(format!("steady/{n}"), Mode::Steady(250.0));
        }

        let prober = LoneProber::start(pool.clone()).await;

        let now = || async { sqlx::query_scalar::<_, f64>("SELECT extract(epoch FROM now())::float8").fetch_one(&pool).await.expect("now") };
        let started = now().await;
        tokio::time::sleep(INJECT_AT).await;
        {
            let mut modes = modes.lock().expect("lock");
            modes.insert("pair/0".into(), Mode::Slow(150));
            modes.insert("pair/1".into(), Mode::Flaky(0.25));
            modes.insert("single/0".into(), Mode::Slow(300));
        }
        let injected = now().await;
        tokio::time::sleep(HEAL_AT - INJECT_AT).await;
        modes.lock().expect("lock").clear();
        for n in 0..3 {
            modes.lock().expect("lock").insert(format!("steady/{n}"), Mode::Steady(250.0));
        }
        let healed = now().await;
        tokio::time::sleep(RUN - HEAL_AT).await;
        let ended = now().await;
        prober.stop().await;

        let transitions: Vec<Transition> = sqlx::query_as(
            "SELECT instance_url, from_status, to_status, extract(epoch FROM occurred_at)::float8 FROM status_transitions ORDER BY id",
        )
        .fetch_all(&pool)
        .await
        .expect("transitions");
        let of = |url: &str| transitions.iter().filter(|t| t.0 == url).cloned().collect::<Vec<_>>();
        // Seconds from the injection to the first change away from `up`.
        let detected = |url: &str| of(url).iter().find(|t| t.3 >= injected && t.2 != "up").map(|t| t.3 - injected);
        // Share of [from, until) the instance was shown as one of `shown`.
        let share_in = |url: &str, shown: &[&str], from: f64, until: f64| {
            let mut status = "up".to_string();
            let mut at = from;
            let mut inside = 0.0;
            for t in of(url) {
                if t.3 <= from {
                    status = t.2.clone();
                    continue;
                }
                if t.3 >= until {
                    break;
                }
                if shown.contains(&status.as_str()) {
                    inside += t.3 - at;
                }
                status = t.2.clone();
                at = t.3;
            }
            if shown.contains(&status.as_str()) {
                inside += until - at;
            }
            inside / (until - from)
        };
        let slow = url_of("pair", 0);
        let flaky = url_of("pair", 1);
        let single = url_of("single", 0);
        let flaky_detected = detected(&flaky);
        let healthy: Vec<String> = (0..10)
            .map(|n| url_of("noisy", n))
            .chain((0..3).map(|n| url_of("steady", n)))
            .chain((2..6).map(|n| url_of("pair", n)))
            .collect();
        let false_alarms: usize = healthy.iter().map(|u| of(u).iter().filter(|t| t.2 != "up").count()).sum();
        let after_healing: usize = [&slow, &flaky, &single]
            .iter()
            .map(|u| {
                let after: Vec<Transition> = of(u).into_iter().filter(|t| t.3 >= healed).collect();
                after.len().saturating_sub(1)
            })
            .sum();
        let back = |u: &str| {
            of(u).iter().filter(|t| t.3 >= healed && t.2 == "up").map(|t| t.3 - healed).next_back()
        };
        let fmt = |v: Option<f64>| v.map_or("never".to_string(), |s| format!("{s:.1} s"));
        let reason = |u: &str| {
            of(u).iter().find(|t| t.3 >= injected && t.2 != "up").map(|t| t.2.clone()).unwrap_or_default()
        };
        let reasons: Vec<(String, Option<String>)> = sqlx::query_as(
            "SELECT instance_url, reason FROM status_transitions WHERE to_status = 'degraded' ORDER BY id",
        )
        .fetch_all(&pool)
        .await
        .expect("reasons");
        println!("Run: {:.0} s, every instance probed every {INTERVAL_MS} ms; injected at {:.0} s, healed at {:.0} s.", ended - started, injected - started, healed - started);
        println!();
        println!("| measure | figure | bound |");
        println!("|---|---:|---|");
        println!("| instance slowed 4 → ~150 ms: detected after | {} ({}) | ≤ 30 s |", fmt(detected(&slow)), reason(&slow));
        println!("| instance failing 25 % at random: detected after | {} ({}) | ≤ 30 s |", fmt(flaky_detected), reason(&flaky));
        if let Some(d) = flaky_detected {
            let (from, until) = (injected + d, healed);
            let share = share_in(&flaky, &["degraded", "unready", "down"], from, until);
            println!("| … shown other than `up` from detection to healing | {:.1} % of the time | ≥ 90 % |", share * 100.0);
            let degraded = share_in(&flaky, &["degraded"], from, until);
            let unready = share_in(&flaky, &["unready"], from, until);
            let changes = of(&flaky).iter().filter(|t| t.3 > from && t.3 < until).count();
            println!(
                "| … of which `degraded` / `unready` (2 failures in a row), changes meanwhile | {:.1} % / {:.1} %, {changes} | |",
                degraded * 100.0,
                unready * 100.0
            );
        }
        println!("| single-instance target slowed 4 → 300 ms: detected after | {} ({}) | ≤ 60 s |", fmt(detected(&single)), reason(&single));
        for (name, u) in [("slowed", &slow), ("flaky", &flaky), ("single", &single)] {
            println!("| {name}: back to `up` after healing | {} | ≤ 150 s |", fmt(back(u)));
        }
        println!("| changes after healing besides the one back to `up` (all three) | {after_healing} | 0 |");
        println!("| false alarms: 10 noisy × {:.0} s, 3 steady at 250 ms, 4 peers of the degraded | {false_alarms} | 0 |", ended - started);
        println!("| detector state per instance (size) | {} B | ≤ 1 KiB |", state.0);
        println!("| 50,000 instances' detector state and peer entries, resident | {:.1} MiB | ≤ 50 MB |", state.1);
        println!("| CPU of the detectors per probe (full windows, every detector) | {:.0} ns | |", state.2);
        println!();
        println!("Verdicts recorded:");
        for (url, reason) in reasons {
            println!("- {url}: {}", reason.unwrap_or_default());
        }
    });
}

/// The detector's size per instance, the resident memory 50,000 add (each full, with a peer
/// entry, as a fleet at rest holds them), and the time one probe's judgement takes (ns)
/// once every window is full.
fn state_per_instance() -> (usize, f64, f64) {
    let rss = || caracal_testkit::process::rss(std::process::id()) as f64 / (1024.0 * 1024.0);
    let before = rss();
    let spec = caracal_store::target::DegradedSpec::default();
    let peers = Peers::default();
    let mut fleet: Vec<Gray> = Vec::with_capacity(50_000);
    for i in 0..50_000_i64 {
        let mut gray = Gray::new();
        for _ in 0..80 {
            let sample =
                Sample { latency: Some(Duration::from_micros(4_000)), failed: false, up: true, changed: false };
            gray.observe(&sample, &spec, None);
        }
        peers.report(&format!("t{}", i / 100), i, 4_000, 0.0, Duration::from_secs(3600));
        fleet.push(gray);
    }
    let after = rss();
    std::hint::black_box(&fleet);
    // Full windows: every probe computes both medians, the MAD and the four readings.
    let rounds = 20;
    let names: Vec<String> = (0..fleet.len() / 100 + 1).map(|g| format!("t{g}")).collect();
    let started = std::time::Instant::now();
    for round in 0..rounds {
        for (i, gray) in fleet.iter_mut().enumerate() {
            let us = 3_000 + u64::try_from((i + round) % 2_000).unwrap_or(0);
            let sample = Sample { latency: Some(Duration::from_micros(us)), failed: false, up: true, changed: false };
            let view =
                peers.report(&names[i / 100], i64::try_from(i).unwrap_or(0), 4_000, 0.0, Duration::from_secs(3600));
            std::hint::black_box(gray.observe(&sample, &spec, view.as_ref()));
        }
    }
    let per_probe = started.elapsed().as_secs_f64() * 1e9 / (rounds * fleet.len()) as f64;
    (std::mem::size_of::<Gray>(), after - before, per_probe)
}
