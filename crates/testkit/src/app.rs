//! Serving a caracal-core [`App`] in-process for a test: on a loopback port, with an HTTP
//! client and polling helpers for its probes. Enabled by the `app` feature.

use std::time::Duration;

use caracal_core::config::{Config, CoreConfig, Mode};
use caracal_core::{App, Running};

/// Core settings for an in-process app: loopback, port 0, fast checks (200 ms interval,
/// 1 s timeout), no drain delay.
pub fn core_config(mode: Mode) -> CoreConfig {
    let mut core = CoreConfig::defaults(0);
    core.mode = mode;
    core.bind = [127, 0, 0, 1].into();
    core.checks.interval = Duration::from_millis(200);
    // Generous: every test binary runs its tests at once on a small machine, and a check cut
    // short there turns a test about something else red. Tests of timeouts set their own.
    core.checks.timeout = Duration::from_secs(1);
    core.shutdown.drain_delay = Some(Duration::ZERO);
    core.shutdown.timeout = Duration::from_secs(5);
    core
}

/// An [`App`] named `name` from `core` and service `sections` (`{"api": {...}}`).
///
/// # Panics
/// When the configuration is invalid: a test's own mistake.
pub fn app(name: &'static str, core: CoreConfig, sections: serde_json::Value) -> App {
    let config = Config::from_core(core, sections).expect("valid test config");
    App::new(name, "0.0.0", config).expect("valid test app")
}

/// An app serving on a loopback port, with a client for it.
pub struct Served {
    /// `http://127.0.0.1:<port>`.
    pub base: String,
    /// The running app (drain it, wait for it).
    pub running: Running,
    /// A client with a 10 s timeout.
    pub http: reqwest::Client,
}

impl Served {
    /// The URL of `path` on the app.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// GET `path`.
    ///
    /// # Panics
    /// When the request cannot be sent.
    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.http.get(self.url(path)).send().await.expect("request to the app")
    }

    /// GET `path`: its status and JSON body (`null` when not JSON).
    pub async fn get_json(&self, path: &str) -> (u16, serde_json::Value) {
        let response = self.get(path).await;
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(serde_json::Value::Null))
    }

    /// Polls `/ready` until its status code is `want` with every check evaluated, for at most
    /// `within`.
    pub async fn wait_ready_status(&self, want: u16, within: Duration) -> Result<serde_json::Value, String> {
        let last = std::sync::Mutex::new(String::new());
        crate::wait_for(within, Duration::from_millis(20), || async {
            let (status, body) = self.get_json("/ready").await;
            *last.lock().expect("lock") = format!("{status} {body}");
            (status == want && all_evaluated(&body)).then_some(body)
        })
        .await
        .map_err(|waited| format!("no {want} within {waited:?}; last answer: {}", last.lock().expect("lock")))
    }
}

/// Serves `app` on a free loopback port.
///
/// # Panics
/// When no loopback port can be bound.
pub async fn serve(app: App) -> Served {
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0)).await.expect("bind loopback");
    let running = app.start(listener);
    let addr = running.local_addr().expect("bound address");
    Served { base: format!("http://{addr}"), running, http: client() }
}

/// An HTTP client with a 10 s timeout.
///
/// # Panics
/// When the TLS-less client cannot be built (it always can).
pub fn client() -> reqwest::Client {
    reqwest::Client::builder().timeout(Duration::from_secs(10)).build().expect("reqwest client")
}

impl Served {
    /// Polls `/ready` until check `name` reports `status`.
    pub async fn wait_for_check(
        &self,
        name: &str,
        status: &str,
        within: Duration,
    ) -> Result<serde_json::Value, String> {
        let last = std::sync::Mutex::new(String::new());
        crate::wait_for(within, Duration::from_millis(20), || async {
            let (code, body) = self.get_json("/ready").await;
            *last.lock().expect("lock") = format!("{code} {body}");
            // A check not evaluated yet also reads `fail` (or `warn`); wait for a real result.
            (all_evaluated(&body) && check_status(&body, name) == status).then_some(body)
        })
        .await
        .map_err(|waited| format!("{name} not {status} within {waited:?}; last answer: {}", last.lock().expect("lock")))
    }
}

/// Whether every check in a `/ready` body has a result of its own (a time) or is skipped (a
/// body without checks has nothing to wait for).
///
/// The checks of one rung publish as each finishes, so an answer can carry one of them
/// evaluated beside another still `not evaluated yet`; a test that reads several checks from
/// one answer waits for this first.
pub fn all_evaluated(body: &serde_json::Value) -> bool {
    body["checks"].as_object().is_none_or(|checks| {
        checks
            .values()
            .flat_map(|entries| entries.as_array().into_iter().flatten())
            .all(|entry| entry.get("time").is_some() || entry["status"] == "skipped")
    })
}

/// The status of check `name` in a `/ready` body.
pub fn check_status(body: &serde_json::Value, name: &str) -> String {
    body["checks"][name][0]["status"].as_str().unwrap_or("<absent>").to_string()
}
