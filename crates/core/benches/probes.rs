//! Probe throughput: requests/s of a bare axum handler, of `/health`, and of `/ready` with
//! five registered checks (PostgreSQL, Redis and three in-process ones), measured with `wrk`
//! in one run on this machine; then gRPC `grpc.health.v1.Health/Check` for `"ready"` on the
//! same port against `/ready` over HTTP/2, both with `h2load` (nghttp2-client), next to the
//! floor of that comparison: a bare axum `GET` over HTTP/2 against a bare handler that answers a
//! gRPC-shaped `POST` (its message read, a 7-byte answer and a `grpc-status` trailers frame,
//! no gRPC library at all), and a bare `POST` answered without trailers; then `/ready`
//! with OTLP span export on against off (`PROBES_ONLY=tracing` runs just that;
//! `PROBES_ONLY=grpc` stops before it). Run with
//! `cargo bench -p caracal-core --bench probes`; the figures go into `docs/benchmarks.md`.
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
    if let Ok(mode) = std::env::var(SERVE) {
        serve_traced(&mode);
    }
    let wrk = which("wrk").unwrap_or_else(|| {
        eprintln!("wrk is not installed: apt-get install -y wrk");
        std::process::exit(2);
    });
    let postgres = Postgres::start_default().expect("start PostgreSQL (apt-get install -y postgresql)");
    let redis = Redis::start_default().expect("start Redis (apt-get install -y redis-server)");
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    if std::env::var("PROBES_ONLY").as_deref() == Ok("tracing") {
        let app = runtime.block_on(async { serve_app(app(&postgres, &redis, |_| {})).await });
        tracing_against_off(&runtime, &wrk, &postgres, &redis, &app);
        return;
    }
    let (bare, app) = runtime.block_on(async {
        let bare = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let bare_addr = bare.local_addr().expect("addr");
        let router = Router::new()
            .route("/bare", get(|| async { "ok" }))
            .route(CHECK_PATH, axum::routing::post(grpc_floor))
            .route("/post", axum::routing::post(|_: axum::body::Bytes| async { "ok" }));
        tokio::spawn(async move { axum::serve(bare, router).await });
        (bare_addr, serve_app(app(&postgres, &redis, |_| {})).await)
    });
    let targets = [
        ("bare axum handler", format!("http://{bare}/bare")),
        ("/health", format!("http://{app}/health")),
        ("/ready (5 checks)", format!("http://{app}/ready")),
    ];
    let medians = rotate(&wrk, &targets);
    println!("| target | requests/s (median of {ROUNDS} x {SECONDS} s) | ratio to bare |");
    println!("|---|---:|---:|");
    for (i, (name, _)) in targets.iter().enumerate() {
        println!("| {name} | {:.0} | {:.2} |", medians[i], medians[i] / medians[0]);
    }
    grpc_against_ready(&runtime, &app.to_string(), &bare.to_string(), medians[2]);
    if std::env::var("PROBES_ONLY").as_deref() == Ok("grpc") {
        return;
    }
    tracing_against_off(&runtime, &wrk, &postgres, &redis, &app);
}

/// Serves `app` on a loopback port once its ladder passes; returns the address.
async fn serve_app(app: App) -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let running = app.start(listener);
    // Wait for the ladder to pass before measuring.
    let client = reqwest::Client::new();
    for _ in 0..200 {
        if client.get(format!("http://{addr}/ready")).send().await.is_ok_and(|r| r.status() == 200) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    std::mem::forget(running);
    addr
}

/// The variable that makes this harness a child serving a traced app (tracing is installed
/// once per process, so the traced apps run in processes of their own).
const SERVE: &str = "PROBES_SERVE";

/// `/ready` with OTLP export on (sampler ratio 1.0) against the same app with it off, rounds
/// rotating: traced apps in child processes exporting to a sink here that decodes nothing and
/// answers 200, once with the probe endpoints untraced (the default) and once with every
/// `/ready` a span (`telemetry.trace_probes`).
#[allow(clippy::print_stdout)]
fn tracing_against_off(
    runtime: &tokio::runtime::Runtime,
    wrk: &str,
    postgres: &Postgres,
    redis: &Redis,
    off: &std::net::SocketAddr,
) {
    use std::io::BufRead;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};
    let exports = Arc::new(AtomicU64::new(0));
    let sink = runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let counted = Arc::clone(&exports);
        let router = Router::new().route(
            "/v1/traces",
            axum::routing::post(move |body: axum::body::Bytes| {
                counted.fetch_add(body.len() as u64, Ordering::Relaxed);
                async { "" }
            }),
        );
        tokio::spawn(async move { axum::serve(listener, router).await });
        addr
    });
    let child = |mode: &str| {
        let mut child = std::process::Command::new(std::env::current_exe().expect("this harness"))
            .env(SERVE, mode)
            .env("PROBES_PG", postgres.url())
            .env("PROBES_REDIS", redis.url())
            .env("PROBES_OTLP", format!("http://{sink}"))
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("spawn a traced app");
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().expect("stdout")).read_line(&mut line).expect("its address");
        (child, line.trim().to_string())
    };
    let (mut untraced_child, untraced) = child("probes-untraced");
    let (mut traced_child, traced) = child("probes-traced");
    let targets = [
        ("/ready, tracing off", format!("http://{off}/ready")),
        ("/ready, OTLP on, ratio 1.0 (default: probes untraced)", format!("http://{untraced}/ready")),
        ("/ready, OTLP on, ratio 1.0, trace_probes on", format!("http://{traced}/ready")),
    ];
    let medians = rotate(wrk, &targets);
    let _ = (untraced_child.kill(), traced_child.kill());
    println!();
    println!("| target | requests/s (median of {ROUNDS} x {SECONDS} s) | ratio to tracing off |");
    println!("|---|---:|---:|");
    for (i, (name, _)) in targets.iter().enumerate() {
        println!("| {name} | {:.0} | {:.2} |", medians[i], medians[i] / medians[0]);
    }
    println!("| (OTLP bytes the sink received) | {} | |", exports.load(Ordering::Relaxed));
}

/// The child: serves the bench app with OTLP export to `PROBES_OTLP`, prints its address on
/// stdout and serves until killed.
#[allow(clippy::print_stdout)]
fn serve_traced(mode: &str) -> ! {
    let var = |name: &str| std::env::var(name).unwrap_or_else(|_| panic!("{name} is set by the parent"));
    let (postgres, redis, otlp) = (var("PROBES_PG"), var("PROBES_REDIS"), var("PROBES_OTLP"));
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    runtime.block_on(async {
        let adjust = |core: &mut CoreConfig| {
            core.telemetry.otlp_endpoint = Some(otlp.clone());
            // Logs go to stdout, where the parent reads this child's address.
            core.telemetry.log = "off".into();
            core.telemetry.trace_probes = mode == "probes-traced";
        };
        let telemetry =
            caracal_core::telemetry::init("bench", "0.0.0", &app_config(&postgres, &redis, adjust)).expect("telemetry");
        let app = app_with(&postgres, &redis, adjust);
        std::mem::forget(telemetry);
        let addr = serve_app(app).await;
        println!("{addr}");
        std::future::pending::<()>().await;
    });
    unreachable!("serves until killed")
}

/// gRPC `Check("ready")` against `/ready`, both over HTTP/2 with prior knowledge from `h2load`
/// (by default 32 connections, one request in flight on each, like `wrk -c32`; `H2LOAD_SHAPE`
/// overrides the `-t -c -m` arguments, e.g. `"-t1 -c8 -m10"` to multiplex), rounds rotating.
#[allow(clippy::print_stdout)]
fn grpc_against_ready(runtime: &tokio::runtime::Runtime, app: &str, bare: &str, ready_http1: f64) {
    let Some(h2load) = which("h2load") else {
        eprintln!("h2load is not installed (apt-get install -y nghttp2-client): no gRPC figures");
        return;
    };
    // The gRPC answer is right before it is fast: SERVING, from a client nobody here tuned;
    // and the floor answers that client as a gRPC server would.
    let check = |server: &str| {
        runtime.block_on(async {
            use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
            let channel = tonic::transport::Endpoint::from_shared(format!("http://{server}"))
                .expect("endpoint")
                .connect()
                .await
                .expect("h2c");
            HealthClient::new(channel)
                .check(HealthCheckRequest { service: "ready".into() })
                .await
                .map(|r| r.into_inner().status)
        })
    };
    assert_eq!(check(app).ok(), Some(1), "Check(\"ready\") answers SERVING");
    assert_eq!(check(bare).ok(), Some(1), "the bare gRPC-shaped handler answers SERVING");
    // A gRPC message: not compressed, 7 bytes: field 1 (service), length 5, "ready".
    let body = tempfile::NamedTempFile::new().expect("body file");
    std::fs::write(body.path(), [0, 0, 0, 0, 7, 0x0a, 5, b'r', b'e', b'a', b'd', b'y']).expect("write");
    let grpc =
        ["-d", body.path().to_str().expect("path"), "-H", "content-type: application/grpc", "-H", "te: trailers"];
    let targets: [(&str, String, &[&str]); 5] = [
        ("/ready over HTTP/2", format!("http://{app}/ready"), &[]),
        ("gRPC Check(\"ready\")", format!("http://{app}/grpc.health.v1.Health/Check"), &grpc),
        ("bare GET over HTTP/2", format!("http://{bare}/bare"), &[]),
        ("bare gRPC-shaped POST", format!("http://{bare}{CHECK_PATH}"), &grpc),
        ("bare POST, no trailers", format!("http://{bare}/post"), &grpc),
    ];
    let mut rates: Vec<Vec<f64>> = vec![Vec::new(); targets.len()];
    let mut costs: Vec<Vec<f64>> = vec![Vec::new(); targets.len()];
    let rounds = grpc_rounds();
    for round in 0..rounds {
        for i in 0..targets.len() {
            let index = (i + round) % targets.len();
            let (name, url, extra) = &targets[index];
            let run = h2load_rate(&h2load, url, extra);
            eprintln!("round {round}: {name:<24} {:>10.0} req/s, server {:.1} µs/request", run.rate, run.server_us);
            rates[index].push(run.rate);
            costs[index].push(run.server_us);
        }
    }
    let rate: Vec<f64> = rates.iter_mut().map(|r| median(r)).collect();
    let cost: Vec<f64> = costs.iter_mut().map(|r| median(r)).collect();
    println!();
    println!(
        "| over one port, h2load {} | requests/s (median of {rounds} x {SECONDS} s) | server CPU per request | requests/s per server core |",
        shape()
    );
    println!("|---|---:|---:|---:|");
    println!("| /ready over HTTP/1.1 (wrk, above) | {ready_http1:.0} | | |");
    for (i, (name, _, _)) in targets.iter().enumerate() {
        println!("| {name} | {:.0} | {:.1} µs | {:.0} |", rate[i], cost[i], 1e6 / cost[i]);
    }
    println!("| **gRPC ÷ /ready over HTTP/2** | **{:.2}** | | **{:.2}** |", rate[1] / rate[0], cost[0] / cost[1]);
    println!("| gRPC ÷ /ready over HTTP/1.1 | {:.2} | | |", rate[1] / ready_http1);
    println!(
        "| gRPC's frames alone: bare gRPC-shaped POST ÷ bare GET | {:.2} | {:+.1} µs | {:.2} |",
        rate[3] / rate[2],
        cost[3] - cost[2],
        cost[2] / cost[3]
    );
    println!("| tonic and `Check` beyond the frames | | {:+.1} µs | |", (cost[1] - cost[0]) - (cost[3] - cost[2]));
}

/// Where the bare server answers like a gRPC health server.
const CHECK_PATH: &str = "/grpc.health.v1.Health/Check";

/// The least a gRPC unary call costs on this HTTP/2 stack, with no gRPC library: the request's
/// message read whole, the answer's 7-byte message (`SERVING`) and a `grpc-status: 0`
/// trailers frame, from a plain axum handler. No gRPC server can send less.
async fn grpc_floor(request: axum::body::Bytes) -> axum::response::Response {
    use http_body_util::BodyExt;
    let message = axum::body::Bytes::from_static(&[0, 0, 0, 0, 2, 0x08, 1]);
    assert_eq!(request.len(), 12, "the bench's request message");
    let trailers = async {
        let mut trailers = axum::http::HeaderMap::new();
        trailers.insert("grpc-status", axum::http::HeaderValue::from_static("0"));
        Some(Ok::<_, std::convert::Infallible>(trailers))
    };
    let body = http_body_util::Full::new(message).with_trailers(trailers);
    axum::response::Response::builder()
        .header("content-type", "application/grpc")
        .body(axum::body::Body::new(body))
        .expect("a response")
}

/// Rounds of the HTTP/2 comparison: [`ROUNDS`], or `GRPC_ROUNDS` for a steadier median on a
/// noisy machine.
fn grpc_rounds() -> usize {
    std::env::var("GRPC_ROUNDS").ok().and_then(|r| r.parse().ok()).filter(|&r| r > 0).unwrap_or(ROUNDS)
}

/// h2load's threads, connections and streams per connection.
fn shape() -> String {
    std::env::var("H2LOAD_SHAPE").unwrap_or_else(|_| "-t1 -c32 -m1".into())
}

/// One `h2load` run: the requests/s it reports (`finished in 5.00s, 12345.67 req/s, ...`),
/// only when every request succeeded, and the server's CPU per request (this process's CPU
/// over the run, in µs: the server is in-process and nothing else here is busy meanwhile).
struct H2Run {
    rate: f64,
    server_us: f64,
}

fn h2load_rate(h2load: &str, url: &str, extra: &[&str]) -> H2Run {
    let cpu_before = bench::cpu_seconds();
    let output = std::process::Command::new(h2load)
        .args(shape().split_whitespace())
        .args(["-D", &SECONDS.to_string()])
        .args(extra)
        .arg(url)
        .output()
        .expect("run h2load");
    let text = String::from_utf8_lossy(&output.stdout);
    let failed = text.lines().find(|l| l.starts_with("requests:")).and_then(|l| {
        l.split(',')
            .find(|p| p.trim().ends_with("failed"))
            .and_then(|p| p.split_whitespace().next()?.parse::<u64>().ok())
    });
    assert_eq!(failed, Some(0), "h2load saw failed requests:\n{text}");
    let cpu = bench::cpu_seconds() - cpu_before;
    let done = text
        .lines()
        .find(|l| l.starts_with("requests:"))
        .and_then(|l| l.split(',').find(|p| p.trim().ends_with("done")))
        .and_then(|p| p.split_whitespace().next()?.parse::<f64>().ok())
        .unwrap_or_else(|| panic!("no request count in h2load's output:\n{text}"));
    let rate = text
        .lines()
        .find(|l| l.starts_with("finished in"))
        .and_then(|l| l.split(',').nth(1))
        .and_then(|p| p.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no rate in h2load's output:\n{text}"));
    H2Run { rate, server_us: cpu / done.max(1.0) * 1e6 }
}

fn app(postgres: &Postgres, redis: &Redis, adjust: impl FnOnce(&mut CoreConfig)) -> App {
    app_with(&postgres.url(), &redis.url(), adjust)
}

fn app_config(postgres: &str, redis: &str, adjust: impl FnOnce(&mut CoreConfig)) -> CoreConfig {
    let mut core = CoreConfig::defaults(0);
    core.mode = Mode::Stable;
    core.database_url = Some(Secret::new(postgres.to_string()));
    core.redis_url = Some(Secret::new(redis.to_string()));
    adjust(&mut core);
    core
}

fn app_with(postgres: &str, redis: &str, adjust: impl FnOnce(&mut CoreConfig)) -> App {
    let config = Config::from_core(app_config(postgres, redis, adjust), serde_json::json!({})).expect("config");
    let app = App::new("bench", "0.0.0", config).expect("app");
    let (pg, rc) = (app.postgres().expect("pool"), app.redis().expect("redis"));
    let quick = |name: &'static str, rung| Check::new(name, rung, || async { Ok(Observed::new(1.0, "units")) });
    app.check(checks::postgres(pg))
        .check(checks::redis(rc))
        .check(quick("config:loaded", Rung::Process))
        .check(quick("outbox:fake", Rung::Delivery))
        .check(quick("app:thing", Rung::Service))
}

/// `wrk` against each `(name, url)` for [`ROUNDS`] rounds, the order rotating each round (so a
/// noisy neighbour favours none); each target's median requests/s.
fn rotate(wrk: &str, targets: &[(&str, String)]) -> Vec<f64> {
    let mut results: Vec<Vec<f64>> = vec![Vec::new(); targets.len()];
    for round in 0..ROUNDS {
        for i in 0..targets.len() {
            let index = (i + round) % targets.len();
            let rps = run_wrk(wrk, &targets[index].1);
            eprintln!("round {round}: {:<56} {rps:>10.0} req/s", targets[index].0);
            results[index].push(rps);
        }
    }
    results.iter_mut().map(|r| median(r)).collect()
}

fn run_wrk(wrk: &str, url: &str) -> f64 {
    bench::wrk_rate(wrk, &["-t1", "-c32", &format!("-d{SECONDS}s")], url)
}
