//! A gateway on a fresh database, and instances that answer the ways instances do.

use std::time::Duration;

use axum::Router;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use caracal_core::Mode;
use caracal_core::config::Secret;
use caracal_testkit::app::{Served, core_config, serve};

/// The platform's metrics bearer, which instances demand.
pub const BEARER: &str = "metrics-bearer-for-tests";
pub const ADMIN: &str = "admin-token-for-tests";

pub struct Gateway {
    pub served: Served,
    pub pool: sqlx::PgPool,
}

/// The credential (in the gateway's `credentials_dir`) that [`Gateway::register`] binds to
/// every target it writes: a file holding [`BEARER`].
pub const CREDENTIAL: &str = "test-bearer";

/// A gateway (rc mode) on a fresh migrated database of `postgres`, with `[gateway]` settings;
/// its `credentials_dir` (unless the settings name one) holds [`CREDENTIAL`].
pub async fn gateway_on(postgres: &caracal_testkit::Postgres, settings: serde_json::Value) -> Gateway {
    let mut settings = settings;
    if settings.get("credentials_dir").is_none() {
        let dir = tempfile::tempdir().expect("a credentials directory").keep();
        std::fs::write(dir.join(CREDENTIAL), format!("{BEARER}\n")).expect("write the credential");
        settings["credentials_dir"] = serde_json::json!(dir);
    }
    gateway_with(postgres, Mode::Rc, serde_json::json!({ "gateway": settings })).await
}

/// A gateway in `mode` on a fresh migrated database of `postgres`, with these config `sections`
/// (`{"gateway": {...}, "api": {"platform": {...}}}`).
pub async fn gateway_with(postgres: &caracal_testkit::Postgres, mode: Mode, sections: serde_json::Value) -> Gateway {
    gateway_core(postgres, mode, sections, |_| {}).await
}

/// As [`gateway_with`], with the core settings adjusted (the outbound policy, say).
pub async fn gateway_core(
    postgres: &caracal_testkit::Postgres,
    mode: Mode,
    sections: serde_json::Value,
    adjust: impl FnOnce(&mut caracal_core::CoreConfig),
) -> Gateway {
    let url = postgres.fresh_database("gateway").expect("database");
    let pool = sqlx::PgPool::connect(&url).await.expect("connect");
    caracal_store::migrate(&pool).await.expect("migrate");
    let mut core = core_config(mode);
    core.database_url = Some(Secret::new(url));
    core.redis_url = Some(Secret::new(caracal_testkit::shared().redis.url()));
    core.metrics.bearer = Some(Secret::new(BEARER));
    core.admin_token = Some(Secret::new(ADMIN));
    core.checks.timeout = Duration::from_secs(1);
    adjust(&mut core);
    let app = caracal_testkit::app::app("gateway", core, sections);
    let served = serve(caracal_gateway::build(app).expect("build the gateway")).await;
    served.wait_ready_status(200, Duration::from_secs(15)).await.expect("gateway ready");
    Gateway { served, pool }
}

pub async fn gateway(settings: serde_json::Value) -> Gateway {
    gateway_on(&caracal_testkit::shared().postgres, settings).await
}

impl Gateway {
    /// Registers a target straight in the registry's tables, bound to [`CREDENTIAL`], announces
    /// it on `caracal.invalidations` as the relay would, and waits until the gateway holds it.
    pub async fn register(&self, name: &str, labels: serde_json::Value, timeout_ms: i32, instances: &[String]) {
        self.register_with(name, labels, timeout_ms, instances, Some(CREDENTIAL)).await;
    }

    /// As [`Gateway::register`], naming `credential` (or none).
    pub async fn register_with(
        &self,
        name: &str,
        labels: serde_json::Value,
        timeout_ms: i32,
        instances: &[String],
        credential: Option<&str>,
    ) {
        let id: i64 = sqlx::query_scalar(
            "INSERT INTO targets (name, labels, health_path, ready_path, metrics_path, interval_ms, timeout_ms, credential) \
             VALUES ($1, $2, '/health', '/ready', '/metrics', 1000, $3, $4) RETURNING id",
        )
        .bind(name)
        .bind(labels)
        .bind(timeout_ms)
        .bind(credential)
        .fetch_one(&self.pool)
        .await
        .expect("target");
        for url in instances {
            sqlx::query("INSERT INTO instances (target_id, url) VALUES ($1, $2)")
                .bind(id)
                .bind(url)
                .execute(&self.pool)
                .await
                .expect("instance");
        }
        let announcement = caracal_store::Event {
            id: id.max(1),
            event_type: caracal_store::registry::CHANGED.into(),
            target: Some(name.into()),
            instance: None,
            payload: serde_json::value::to_raw_value(&serde_json::json!({ "name": name })).expect("json"),
            occurred_at: "2026-12-01T00:00:00Z".into(),
            trace_context: None,
        };
        let client = redis::Client::open(caracal_testkit::shared().redis.url()).expect("redis url");
        let mut redis: caracal_core::RedisConnection =
            redis::aio::ConnectionManager::new(client).await.expect("redis").into();
        caracal_store::stream::publish(&mut redis, caracal_store::stream::INVALIDATIONS, &[announcement], 10_000)
            .await
            .expect("announce");
        let want: i64 = sqlx::query_scalar("SELECT count(*) FROM targets").fetch_one(&self.pool).await.expect("count");
        caracal_testkit::wait_for(Duration::from_secs(10), Duration::from_millis(20), || async {
            (self.held().await == want).then_some(())
        })
        .await
        .expect("the gateway holds the announced target");
    }

    /// `caracal_gateway_registry_targets`, from its own `/metrics`.
    pub async fn held(&self) -> i64 {
        let metrics = self.served.http.get(self.served.url("/metrics")).bearer_auth(BEARER).send().await;
        let Ok(metrics) = metrics else { return -1 };
        let text = metrics.text().await.unwrap_or_default();
        text.lines()
            .find_map(|l| l.strip_prefix("caracal_gateway_registry_targets "))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(-1)
    }

    /// GET `path` with the metrics bearer and extra headers: status, content type, body.
    pub async fn federate(&self, path: &str, headers: &[(&str, &str)]) -> (u16, String, String) {
        let mut request = self.served.http.get(self.served.url(path)).bearer_auth(BEARER);
        for (k, v) in headers {
            request = request.header(*k, *v);
        }
        let response = request.send().await.expect("federate");
        let status = response.status().as_u16();
        let content_type =
            response.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
        (status, content_type, response.text().await.expect("body"))
    }
}

/// How a test instance answers `/metrics`.
#[derive(Clone)]
pub enum Behaviour {
    /// Text 0.0.4 with this body.
    Text(String),
    /// OpenMetrics with this body.
    OpenMetrics(String),
    /// Waits this long, then answers a small text body.
    Slow(Duration),
    /// 200 with bytes that are not an exposition.
    Garbage,
    /// This many bytes of valid text.
    Huge(usize),
}

/// Serves an instance; returns its base URL. It demands a bearer, like every fail-closed
/// Caracal instance (the tests' [`CREDENTIAL`] holds [`BEARER`]); `demand` overrides which
/// bearer (to make it answer 401).
pub async fn instance(behaviour: Behaviour, demand: &'static str) -> String {
    let app = Router::new().route(
        "/metrics",
        get(move |headers: HeaderMap| {
            let behaviour = behaviour.clone();
            async move {
                let authorized = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok())
                    == Some(&format!("Bearer {demand}"));
                if !authorized {
                    return StatusCode::UNAUTHORIZED.into_response();
                }
                let text = "text/plain; version=0.0.4";
                match behaviour {
                    Behaviour::Text(body) => ([(header::CONTENT_TYPE, text)], body).into_response(),
                    Behaviour::OpenMetrics(body) => {
                        ([(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0")], body).into_response()
                    }
                    Behaviour::Slow(wait) => {
                        tokio::time::sleep(wait).await;
                        ([(header::CONTENT_TYPE, text)], "slow 1\n").into_response()
                    }
                    Behaviour::Garbage => {
                        ([(header::CONTENT_TYPE, text)], "<html>not metrics</html>\n{{{").into_response()
                    }
                    Behaviour::Huge(n) => {
                        let line = "padding_metric{label=\"0123456789012345678901234567890123456789\"} 1\n";
                        ([(header::CONTENT_TYPE, text)], line.repeat(n / line.len() + 1)).into_response()
                    }
                }
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://{addr}")
}

/// A URL where nothing listens.
pub fn nobody() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    drop(listener);
    format!("http://{addr}")
}

/// `host:port` of a base URL.
pub fn host_port(url: &str) -> String {
    url.trim_start_matches("http://").to_string()
}

/// A sample as (name, labels, value).
pub type Found = caracal_gateway::exposition::SampleText;

/// The samples of `body`.
pub fn samples(body: &str) -> Vec<Found> {
    let format = if body.ends_with("# EOF\n") {
        caracal_gateway::exposition::Format::OpenMetrics
    } else {
        caracal_gateway::exposition::Format::Text
    };
    let mut parser = caracal_gateway::exposition::Parser::new(format, &[]);
    parser.feed(body.as_bytes()).expect("the answer is a valid exposition");
    parser.finish().expect("the answer is a valid exposition").samples()
}

/// The value of the sample named `name` whose labels include every one of `with`.
pub fn value(all: &[Found], name: &str, with: &[(&str, &str)]) -> Option<String> {
    all.iter()
        .find(|(n, labels, _)| n == name && with.iter().all(|(k, v)| labels.iter().any(|(lk, lv)| lk == k && lv == v)))
        .map(|(_, _, v)| v.clone())
}

/// What a capture server saw: each request's path and `Authorization` header, and how many
/// connections it accepted.
#[derive(Default)]
pub struct Captured {
    #[allow(clippy::type_complexity)]
    pub requests: std::sync::Mutex<Vec<(String, Option<String>)>>,
    pub connections: std::sync::atomic::AtomicUsize,
}

/// A server on `ip` that records every request and answers `/metrics` with one sample and
/// everything else 200: an attacker's endpoint registered as a target.
pub async fn capture(ip: &str) -> (String, std::sync::Arc<Captured>) {
    use std::sync::atomic::Ordering;
    let seen = std::sync::Arc::new(Captured::default());
    let recorded = std::sync::Arc::clone(&seen);
    let app = Router::new().fallback(move |request: axum::extract::Request| {
        let recorded = std::sync::Arc::clone(&recorded);
        async move {
            let auth = request.headers().get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).map(String::from);
            recorded.requests.lock().expect("lock").push((request.uri().path().to_string(), auth));
            ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], "captured 1\n").into_response()
        }
    });
    let listener = tokio::net::TcpListener::bind(format!("{ip}:0")).await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let counted = std::sync::Arc::clone(&seen);
    let listener = axum::serve::ListenerExt::tap_io(listener, move |_| {
        counted.connections.fetch_add(1, Ordering::SeqCst);
    });
    tokio::spawn(async move { axum::serve(listener, app).await });
    (format!("http://{addr}"), seen)
}
