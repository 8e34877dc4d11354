//! Outbound trust on the real binaries, measured from outside: a name a real DNS server
//! resolves to the cloud metadata address is `address_denied`; the gateway federating 3 million
//! samples, or 30 MiB of short samples under 32 long labels, stays under 300 MB; the API asked
//! to read `/dev/zero` as a client certificate answers 422 at once with its memory unchanged.

use std::time::{Duration, Instant};

use axum::Router;
use axum::routing::get;
use caracal_testkit::Dnsmasq;

use caracal_testkit::process::rss;

use crate::support::{self, Stores};

const API: &str = env!("CARGO_BIN_EXE_caracal-api");
const COORDINATOR: &str = env!("CARGO_BIN_EXE_caracal-coordinator");
const CONTROL: &str = env!("CARGO_BIN_EXE_caracal-control");
const GATEWAY: &str = env!("CARGO_BIN_EXE_caracal-gateway");

#[tokio::test(flavor = "multi_thread")]
async fn a_name_resolving_to_the_metadata_address_is_denied_and_never_probed() {
    let dns = Dnsmasq::start("169.254.169.254 meta.test\n", &[]).expect("dnsmasq");
    let stores = Stores::start();
    support::migrate(&stores);
    let nameservers = format!("[\"{}\"]", dns.address());
    let api = support::start(API, &stores, &[]).await;
    let coordinator = support::start(COORDINATOR, &stores, &[]).await;
    let control = support::start(CONTROL, &stores, &[("CARACAL_CONTROL__NAMESERVERS", &nameservers)]).await;
    let http = reqwest::Client::new();
    let body = serde_json::json!({"name": "meta", "interval_ms": 300, "timeout_ms": 200,
        "discovery": {"dns": {"name": "meta.test", "port": 80, "refresh_ms": 1000}}});
    let created = http.post(format!("{}/v1/targets", api.base)).json(&body).send().await.expect("register");
    assert_eq!(created.status(), 201);
    let pool = stores.pool().await;
    let seen = caracal_testkit::wait_for(Duration::from_secs(20), Duration::from_millis(100), || async {
        let row: Option<(String, String, Option<String>)> = sqlx::query_as(
            "SELECT i.url, s.status, s.last_error FROM instances i JOIN instance_status s ON s.instance_id = i.id \
             WHERE s.status <> 'unknown'",
        )
        .fetch_optional(&pool)
        .await
        .ok()?;
        row
    })
    .await
    .expect("the discovered instance was judged");
    assert_eq!(seen, ("http://169.254.169.254:80".into(), "down".into(), Some("address_denied".into())));
    for service in [api, coordinator, control] {
        service.stop();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_gateway_stays_under_300_mb_whatever_targets_answer() {
    let stores = Stores::start();
    support::migrate(&stores);
    let three_million = "a 1\n".repeat(3_000_000);
    let short = "b 1\n".repeat(30 * 1024 * 1024 / 4);
    let app = Router::new()
        .route("/many/metrics", get(move || async move { three_million }))
        .route("/short/metrics", get(move || async move { short }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let base = format!("http://{}", listener.local_addr().expect("addr"));
    tokio::spawn(async move { axum::serve(listener, app).await });
    let pool = stores.pool().await;
    let labels: serde_json::Map<String, serde_json::Value> =
        (0..32).map(|i| (format!("l{i:02}"), serde_json::json!("x".repeat(256)))).collect();
    for (name, labels) in [("many", serde_json::json!({})), ("short", serde_json::Value::Object(labels))] {
        let id: i64 = sqlx::query_scalar(
            "INSERT INTO targets (name, labels, health_path, ready_path, metrics_path, interval_ms, timeout_ms) \
             VALUES ($1, $2, '/health', '/ready', '/metrics', 1000, 10000) RETURNING id",
        )
        .bind(name)
        .bind(labels)
        .fetch_one(&pool)
        .await
        .expect("target");
        sqlx::query("INSERT INTO instances (target_id, url) VALUES ($1, $2)")
            .bind(id)
            .bind(format!("{base}/{name}"))
            .execute(&pool)
            .await
            .expect("instance");
    }
    let gateway = support::start(GATEWAY, &stores, &[("METRICS_BEARER", "e2e-bearer")]).await;
    let http = reqwest::Client::new();
    for name in ["many", "short"] {
        let started = Instant::now();
        let answer = http
            .get(format!("{}/v1/targets/{name}/metrics", gateway.base))
            .bearer_auth("e2e-bearer")
            .send()
            .await
            .expect("federate");
        assert_eq!(answer.status(), 200);
        let body = answer.text().await.expect("body");
        assert!(started.elapsed() < Duration::from_secs(10), "{name}: within the scrape timeout");
        assert!(body.contains("reason=\"sample_limit\""), "{name}: {}", &body[..body.len().min(2000)]);
        let rss = rss(gateway.process.pid());
        assert!(rss < 300 * 1024 * 1024, "{name}: the gateway holds {} MB", rss / (1024 * 1024));
    }
    gateway.stop();
}

#[tokio::test(flavor = "multi_thread")]
async fn dev_zero_as_a_client_certificate_is_refused_at_once_reading_nothing() {
    let stores = Stores::start();
    support::migrate(&stores);
    let dir = tempfile::tempdir().expect("a client directory");
    let client_dir = dir.path().display().to_string();
    let api = support::start(API, &stores, &[("CARACAL_COORDINATOR__TLS__CLIENT_DIR", &client_dir)]).await;
    let http = reqwest::Client::new();
    let before = rss(api.process.pid());
    let mut answers = Vec::new();
    for path in ["/dev/zero", "/etc/passwd", "/nonexistent/client.pem"] {
        let tls = serde_json::json!({"client_cert_file": path, "client_key_file": path});
        let body = serde_json::json!({"name": "zero", "instances": ["https://127.0.0.1:8443"], "tls": tls});
        let started = Instant::now();
        let answer = http.post(format!("{}/v1/targets", api.base)).json(&body).send().await.expect("register");
        assert!(started.elapsed() < Duration::from_secs(1), "{path}: {:?}", started.elapsed());
        assert_eq!(answer.status(), 422, "{path}");
        answers.push(answer.text().await.expect("body"));
    }
    assert!(answers.windows(2).all(|w| w[0] == w[1]), "one answer: {answers:?}");
    let after = rss(api.process.pid());
    assert!(after < before + 16 * 1024 * 1024, "the api went from {} to {} MB", before >> 20, after >> 20);
    api.stop();
}
