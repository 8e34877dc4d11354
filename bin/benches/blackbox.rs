//! The coordinator's prober against the peer operators would otherwise run: Debian's
//! `prometheus-blackbox-exporter`, driven by a real Prometheus, on the same 1,000 instances
//! probed every second, served by one `haproxy` answering 200 over HTTP and over HTTPS (a
//! certificate from `openssl`, verified against its CA by both). Same run, same machine.
//! `cargo bench -p caracal-bin --bench blackbox`; figures go into `docs/benchmarks.md`.
//!
//! CPU is read from `/proc/<pid>/stat` of each process over the same window: ours is this
//! harness's (the prober runs in-process; haproxy, PostgreSQL, Prometheus and the exporter are
//! children), the peer's is the exporter's, and Prometheus's is reported beside it. Probes are
//! counted where they happen: our `caracal_coordinator_probes_total`, and the peer's scrapes
//! of `/probe` as Prometheus recorded them (`count_over_time(probe_success[...])`). Our probe
//! is two GETs (`/health`, `/ready`), or one for a target with one path for both (the
//! `HTTPS, one path` rows); the exporter's is one. Over TLS both make a fresh
//! session per probe (blackbox's client has no session cache; ours has resumption off).

use std::io::Write;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use caracal_testkit::Postgres;

#[path = "support/lone_prober.rs"]
mod lone_prober;
use caracal_testkit::bench::{cpu_seconds, cpu_seconds_of, rss_mib_of, which};
use caracal_testkit::pki::Pki;
use lone_prober::LoneProber;

const INSTANCES: usize = 1_000;
/// Probe intervals: every second (the load, which saturates the exporter on this
/// 2-core machine), and every 5 s, where both keep up and CPU per probe is comparable.
const INTERVALS_MS: [u32; 2] = [1_000, 5_000];
const WARMUP: Duration = Duration::from_secs(6);
const WINDOW: Duration = Duration::from_secs(20);
/// Ours over TLS is measured over a whole `TLS_KEPT_FOR` (60 s): each instance's kept
/// connection is renewed by a fresh handshake once in it, as it is in steady state.
const TLS_WINDOW: Duration = caracal_coordinator::protocols::TLS_KEPT_FOR;

/// One measured run: probes/s, CPU cores, RSS.
#[derive(Debug, Clone, Copy)]
struct Run {
    probes_per_s: f64,
    cores: f64,
    rss_mib: f64,
    /// Prometheus's cores (the peer only).
    driver_cores: f64,
    /// Share of probes that succeeded.
    success: f64,
}

#[allow(clippy::print_stdout)] // the table on stdout is this harness's output
fn main() {
    let need = |binary: &str, package: &str| {
        which(binary).unwrap_or_else(|| {
            eprintln!("{binary} is not installed: apt-get install -y {package}");
            std::process::exit(2);
        })
    };
    let haproxy = need("haproxy", "haproxy");
    let exporter = need("prometheus-blackbox-exporter", "prometheus-blackbox-exporter");
    let prometheus = need("prometheus", "prometheus");
    let dir = tempfile::tempdir().expect("scratch directory");
    let mut pki = Pki::new().expect("a CA from openssl");
    let leaf = pki.server("DNS:localhost,IP:127.0.0.1", 30, None).expect("a server certificate");
    let bundle = dir.path().join("haproxy.pem");
    let pem = [std::fs::read(&leaf.cert).expect("cert"), std::fs::read(&leaf.key).expect("key")].concat();
    std::fs::write(&bundle, pem).expect("write the haproxy bundle");
    let (plain, tls) = (free_port(), free_port());
    let mut proxy = start_haproxy(&haproxy, dir.path(), &bundle, plain, tls);

    let urls = |scheme: &str, port: u16| -> Vec<String> {
        (0..INSTANCES).map(|n| format!("{scheme}://127.0.0.1:{port}/i/{n}")).collect()
    };
    let ca_pem = std::fs::read_to_string(&pki.ca.cert).expect("CA");
    let postgres = Postgres::start_default().expect("PostgreSQL (apt-get install -y postgresql)");
    // `BLACKBOX_ONLY=https-5` (scheme-seconds, comma-separated) narrows the runs, e.g. to
    // profile one of them; `https1` is HTTPS with one path for both (one GET a probe, as the
    // exporter's). The default is all six.
    let only = std::env::var("BLACKBOX_ONLY").ok();
    let wanted = |scheme: &str, interval: u32| {
        only.as_deref().is_none_or(|o| o.split(',').any(|w| w.trim() == format!("{scheme}-{}", interval / 1000)))
    };
    let mut rows = Vec::new();
    for interval in INTERVALS_MS {
        if wanted("http", interval) {
            let ours_http = ours(&postgres, &urls("http", plain), None, TWO_PATHS, interval);
            let peer_http =
                peer(&exporter, &prometheus, dir.path(), &pki.ca.cert, &urls("http", plain), "http", interval);
            rows.push((interval, "HTTP", ours_http, peer_http));
        }
        let (two, one) = (wanted("https", interval), wanted("https1", interval));
        if two || one {
            let peer_https =
                peer(&exporter, &prometheus, dir.path(), &pki.ca.cert, &urls("https", tls), "https", interval);
            if two {
                let ours_https = ours(&postgres, &urls("https", tls), Some(&ca_pem), TWO_PATHS, interval);
                rows.push((interval, "HTTPS", ours_https, peer_https));
            }
            if one {
                let ours_https = ours(&postgres, &urls("https", tls), Some(&ca_pem), ONE_PATH, interval);
                rows.push((interval, "HTTPS, one path", ours_https, peer_https));
            }
        }
    }
    let _ = proxy.kill();
    let _ = proxy.wait();

    println!(
        "| {INSTANCES} instances | caracal coordinator | blackbox_exporter | Prometheus (driving it) | CPU per probe, ours ÷ blackbox's | ÷ blackbox + Prometheus |"
    );
    println!("|---|---:|---:|---:|---:|---:|");
    for (interval, scheme, ours, peer) in rows {
        let name = format!("{scheme} every {} s", interval / 1000);
        if peer.probes_per_s < 1.0 || peer.success < 0.9 {
            // Most scrapes did not complete within Prometheus's scrape timeout: there is no
            // per-probe cost to compare, only what each side spent.
            println!(
                "| {name}: probes/s | {:.0} | {:.0} ({:.1} % succeeded: the exporter cannot keep up) | | — | — |",
                ours.probes_per_s,
                peer.probes_per_s,
                peer.success * 100.0
            );
            println!(
                "| {name}: CPU (cores) | {:.3} ({:.0} µs/probe) | {:.3} | {:.3} | — | — |",
                ours.cores,
                ours.cores / ours.probes_per_s.max(1e-9) * 1e6,
                peer.cores,
                peer.driver_cores
            );
            continue;
        }
        let per = |r: Run| r.cores / r.probes_per_s.max(1e-9);
        let peer_total = (peer.cores + peer.driver_cores) / peer.probes_per_s.max(1e-9);
        println!("| {name}: probes/s | {:.0} | {:.0} | | | |", ours.probes_per_s, peer.probes_per_s);
        println!("| {name}: succeeded | {:.1} % | {:.1} % | | | |", ours.success * 100.0, peer.success * 100.0);
        println!(
            "| {name}: CPU (cores) | {:.3} | {:.3} | {:.3} | **{:.2}×** | {:.2}× |",
            ours.cores,
            peer.cores,
            peer.driver_cores,
            per(ours) / per(peer),
            per(ours) / peer_total
        );
        println!(
            "| {name}: CPU per probe | {:.0} µs | {:.0} µs | {:.0} µs | | |",
            per(ours) * 1e6,
            per(peer) * 1e6,
            peer.driver_cores / peer.probes_per_s.max(1e-9) * 1e6
        );
        println!(
            "| {name}: probes/s per core | {:.0} | {:.0} | | | |",
            1.0 / per(ours).max(1e-12),
            1.0 / per(peer).max(1e-12)
        );
        println!("| {name}: RSS | {:.1} MiB | {:.1} MiB | | | |", ours.rss_mib, peer.rss_mib);
    }
}

fn free_port() -> u16 {
    caracal_testkit::free_port().expect("a free port")
}

fn start_haproxy(binary: &str, dir: &Path, bundle: &Path, plain: u16, tls: u16) -> Child {
    let config = dir.join("haproxy.cfg");
    let text = format!(
        "global\n  maxconn 5000\n  nbthread 1\n\
         defaults\n  mode http\n  timeout connect 5s\n  timeout client 30s\n  timeout server 30s\n  timeout http-keep-alive 30s\n\
         frontend plain\n  bind 127.0.0.1:{plain}\n  http-request return status 200 content-type text/plain string ok\n\
         frontend tls\n  bind 127.0.0.1:{tls} ssl crt {}\n  http-request return status 200 content-type text/plain string ok\n",
        bundle.display()
    );
    std::fs::write(&config, text).expect("write the haproxy config");
    let child = Command::new(binary)
        .args(["-db", "-f"])
        .arg(&config)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start haproxy");
    wait_port(plain);
    wait_port(tls);
    child
}

fn wait_port(port: u16) {
    for _ in 0..200 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    panic!("nothing listens on {port}");
}

/// The default health and ready paths: two GETs a probe.
const TWO_PATHS: (&str, &str) = ("/health", "/ready");
/// One path for both, as a service with a single health endpoint is registered: one GET.
const ONE_PATH: (&str, &str) = ("/health", "/health");

/// Our prober, in-process, on `urls` (one target per 100 instances) with health and ready
/// `paths`.
fn ours(postgres: &Postgres, urls: &[String], ca_pem: Option<&str>, paths: (&str, &str), interval_ms: u32) -> Run {
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    runtime.block_on(async {
        let url = postgres.fresh_database("blackbox").expect("database");
        let pool = sqlx::PgPool::connect(&url).await.expect("connect");
        caracal_store::migrate(&pool).await.expect("migrate");
        let tls = ca_pem.map(|pem| serde_json::json!({ "ca_pem": pem }));
        for (t, chunk) in urls.chunks(100).enumerate() {
            let id: i64 = sqlx::query_scalar(
                "INSERT INTO targets (name, health_path, ready_path, metrics_path, interval_ms, timeout_ms, tls) \
                 VALUES ($1, $4, $5, '/metrics', $3, 900, $2) RETURNING id",
            )
            .bind(format!("t{t}"))
            .bind(&tls)
            .bind(i32::try_from(interval_ms).unwrap_or(1000))
            .bind(paths.0)
            .bind(paths.1)
            .fetch_one(&pool)
            .await
            .expect("target");
            sqlx::query("INSERT INTO instances (target_id, url) SELECT $1, unnest($2::text[])")
                .bind(id)
                .bind(chunk)
                .execute(&pool)
                .await
                .expect("instances");
        }
        let prober = LoneProber::start(pool).await;
        tokio::time::sleep(WARMUP).await;
        let ((p0, up0), c0, t0) = (probes(&prober.registry), cpu_seconds(), Instant::now());
        tokio::time::sleep(if ca_pem.is_some() { TLS_WINDOW } else { WINDOW }).await;
        let ((p1, up1), c1, elapsed) = (probes(&prober.registry), cpu_seconds(), t0.elapsed().as_secs_f64());
        let rss_mib = rss_mib_of("self");
        prober.stop().await;
        Run {
            probes_per_s: (p1 - p0) / elapsed,
            cores: (c1 - c0) / elapsed,
            rss_mib,
            driver_cores: 0.0,
            success: (up1 - up0) / (p1 - p0).max(1.0),
        }
    })
}

/// All probes counted, and those that found the instance up.
fn probes(registry: &prometheus_client::registry::Registry) -> (f64, f64) {
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, registry).expect("encode");
    let mut all = 0.0;
    let mut up = 0.0;
    for line in text.lines().filter_map(|l| l.strip_prefix("caracal_coordinator_probes_total{")) {
        let value: f64 = line.rsplit(' ').next().and_then(|v| v.parse().ok()).unwrap_or(0.0);
        all += value;
        if line.starts_with("result=\"up\"") {
            up += value;
        }
    }
    (all, up)
}

/// blackbox_exporter driven by Prometheus, scraping `/probe` for each of `urls` every second.
fn peer(exporter: &str, prometheus: &str, dir: &Path, ca: &Path, urls: &[String], name: &str, interval_ms: u32) -> Run {
    let (exporter_port, prometheus_port) = (free_port(), free_port());
    let module = dir.join(format!("blackbox-{name}-{interval_ms}.yml"));
    let config = format!(
        "modules:\n  http_2xx:\n    prober: http\n    timeout: 900ms\n    http:\n      method: GET\n      preferred_ip_protocol: ip4\n      tls_config:\n        ca_file: {}\n",
        ca.display()
    );
    std::fs::write(&module, config).expect("write the blackbox config");
    let mut blackbox = Command::new(exporter)
        .arg(format!("--config.file={}", module.display()))
        .arg(format!("--web.listen-address=127.0.0.1:{exporter_port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start blackbox_exporter");
    wait_port(exporter_port);
    let scrape = dir.join(format!("prometheus-{name}-{interval_ms}.yml"));
    let mut file = std::fs::File::create(&scrape).expect("prometheus config");
    writeln!(
        file,
        "global:\n  scrape_interval: {}ms\n  scrape_timeout: 1s\nscrape_configs:\n  - job_name: blackbox\n    metrics_path: /probe\n    params:\n      module: [http_2xx]\n    static_configs:\n      - targets:",
        interval_ms
    )
    .expect("write");
    for url in urls {
        writeln!(file, "          - {url}").expect("write");
    }
    writeln!(
        file,
        "    relabel_configs:\n      - source_labels: [__address__]\n        target_label: __param_target\n      - source_labels: [__param_target]\n        target_label: instance\n      - target_label: __address__\n        replacement: 127.0.0.1:{exporter_port}"
    )
    .expect("write");
    drop(file);
    let data = dir.join(format!("tsdb-{name}-{interval_ms}"));
    let mut driver = Command::new(prometheus)
        .arg(format!("--config.file={}", scrape.display()))
        .arg(format!("--storage.tsdb.path={}", data.display()))
        .arg(format!("--web.listen-address=127.0.0.1:{prometheus_port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start prometheus");
    wait_port(prometheus_port);
    std::thread::sleep(WARMUP);
    let (b0, p0, t0) = (cpu_of(&blackbox), cpu_of(&driver), Instant::now());
    std::thread::sleep(WINDOW);
    let (b1, p1, elapsed) = (cpu_of(&blackbox), cpu_of(&driver), t0.elapsed().as_secs_f64());
    let rss_mib = rss_mib_of(blackbox.id());
    // What Prometheus recorded over the window: every scrape of /probe, and how many succeeded.
    let window = WINDOW.as_secs();
    let count = query(prometheus_port, &format!("sum(count_over_time(probe_success[{window}s]))"));
    let succeeded = query(prometheus_port, &format!("sum(sum_over_time(probe_success[{window}s]))"));
    for child in [&mut blackbox, &mut driver] {
        let _ = child.kill();
        let _ = child.wait();
    }
    Run {
        probes_per_s: count / window as f64,
        cores: (b1 - b0) / elapsed,
        rss_mib,
        driver_cores: (p1 - p0) / elapsed,
        success: succeeded / count.max(1.0),
    }
}

fn cpu_of(child: &Child) -> f64 {
    cpu_seconds_of(child.id()).unwrap_or(0.0)
}

/// One instant query's scalar result.
fn query(port: u16, promql: &str) -> f64 {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    runtime.block_on(async {
        let body: serde_json::Value = reqwest::Client::new()
            .get(format!(
                "http://127.0.0.1:{port}/api/v1/query?{}",
                form_urlencoded::Serializer::new(String::new()).append_pair("query", promql).finish()
            ))
            .send()
            .await
            .expect("query Prometheus")
            .json()
            .await
            .expect("JSON");
        body["data"]["result"][0]["value"][1].as_str().and_then(|v| v.parse().ok()).unwrap_or(0.0)
    })
}
