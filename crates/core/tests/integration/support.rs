//! Shared set-up: one PostgreSQL and one Redis per test binary, apps served in-process on
//! port 0, and small HTTP helpers. Tests that inject faults start private servers instead.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use caracal_core::config::{Config, CoreConfig, Mode};
use caracal_core::{App, Check, Failure, Observed, Rung, Running};
use caracal_testkit::{Postgres, Redis};

/// The servers every non-destructive test shares.
pub struct Shared {
    pub postgres: Postgres,
    pub redis: Redis,
}

pub fn shared() -> &'static Shared {
    static SHARED: OnceLock<Shared> = OnceLock::new();
    SHARED.get_or_init(|| Shared {
        postgres: Postgres::start_default().expect("start the shared PostgreSQL"),
        redis: Redis::start_default().expect("start the shared Redis"),
    })
}

/// Core settings for an in-process app: loopback, fast checks, no drain delay.
pub fn core_config(mode: Mode) -> CoreConfig {
    let mut core = CoreConfig::defaults(0);
    core.mode = mode;
    core.bind = [127, 0, 0, 1].into();
    core.checks.interval = Duration::from_millis(200);
    core.checks.timeout = Duration::from_millis(300);
    core.shutdown.drain_delay = Some(Duration::ZERO);
    core.shutdown.timeout = Duration::from_secs(5);
    core
}

pub fn app(core: CoreConfig) -> App {
    let config = Config::from_core(core, serde_json::json!({})).expect("valid test config");
    App::new("test", "0.0.0", config).expect("valid test app")
}

/// An app serving on a loopback port, with a client for it.
pub struct Served {
    pub base: String,
    pub running: Running,
    pub http: reqwest::Client,
}

impl Served {
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.http.get(self.url(path)).send().await.expect("request to the app")
    }

    pub async fn get_json(&self, path: &str) -> (u16, serde_json::Value) {
        let response = self.get(path).await;
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(serde_json::Value::Null))
    }

    /// Polls `/ready` until its status code is `want`, for at most `within`.
    pub async fn wait_ready_status(&self, want: u16, within: Duration) -> Result<serde_json::Value, String> {
        let last = std::sync::Mutex::new(String::new());
        caracal_testkit::wait_for(within, Duration::from_millis(20), || async {
            let (status, body) = self.get_json("/ready").await;
            *last.lock().expect("lock") = format!("{status} {body}");
            (status == want).then_some(body)
        })
        .await
        .map_err(|waited| format!("no {want} within {waited:?}; last answer: {}", last.lock().expect("lock")))
    }
}

pub async fn serve(app: App) -> Served {
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0)).await.expect("bind loopback");
    let running = app.start(listener);
    let addr = running.local_addr().expect("bound address");
    Served { base: format!("http://{addr}"), running, http: client() }
}

pub fn client() -> reqwest::Client {
    reqwest::Client::builder().timeout(Duration::from_secs(10)).build().expect("reqwest client")
}

/// A check whose result the test sets, counting its runs.
#[derive(Clone, Default)]
pub struct Switch {
    pub pass: Arc<AtomicBool>,
    pub runs: Arc<AtomicUsize>,
}

impl Switch {
    pub fn new(pass: bool) -> Self {
        let s = Self::default();
        s.set(pass);
        s
    }

    pub fn set(&self, pass: bool) {
        self.pass.store(pass, Ordering::SeqCst);
    }

    pub fn runs(&self) -> usize {
        self.runs.load(Ordering::SeqCst)
    }

    pub fn check(&self, name: &str, rung: Rung) -> Check {
        let s = self.clone();
        Check::new(name, rung, move || {
            let s = s.clone();
            async move {
                s.runs.fetch_add(1, Ordering::SeqCst);
                if s.pass.load(Ordering::SeqCst) {
                    Ok(Observed::new(1.0, "units"))
                } else {
                    Err(Failure::new("switched off"))
                }
            }
        })
    }
}

/// The status of check `name` in a `/ready` body.
pub fn check_status(body: &serde_json::Value, name: &str) -> String {
    body["checks"][name][0]["status"].as_str().unwrap_or("<absent>").to_string()
}

/// The built example binary (`cargo test` builds examples before running tests).
pub fn example_binary() -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    // target/<profile>/deps/integration-<hash> -> target/<profile>/examples/service
    let profile_dir = exe.parent().and_then(|deps| deps.parent()).expect("target profile directory");
    let path = profile_dir.join("examples").join("service");
    assert!(path.is_file(), "{} is missing: run the tests with `cargo test`, which builds examples", path.display());
    path
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
        caracal_testkit::wait_for(within, Duration::from_millis(20), || async {
            let (code, body) = self.get_json("/ready").await;
            *last.lock().expect("lock") = format!("{code} {body}");
            // A check not evaluated yet also reads `fail`; wait for a real result.
            let evaluated = status == "skipped" || body["checks"][name][0].get("time").is_some();
            (evaluated && check_status(&body, name) == status).then_some(body)
        })
        .await
        .map_err(|waited| format!("{name} not {status} within {waited:?}; last answer: {}", last.lock().expect("lock")))
    }
}

/// The built example binary, running against the shared servers.
pub struct Example {
    pub process: caracal_testkit::ServiceProcess,
    pub base: String,
    pub http: reqwest::Client,
}

impl Example {
    /// Starts the example with `PORT`, `DATABASE_URL` and `REDIS_URL` set, plus `env`, and
    /// waits until `/ready` answers 200.
    pub async fn start(env: &[(&str, &str)]) -> Example {
        let shared = shared();
        let port = caracal_testkit::free_port().expect("port").to_string();
        let (url, redis) = (shared.postgres.url(), shared.redis.url());
        let mut all = vec![("PORT", port.as_str()), ("DATABASE_URL", url.as_str()), ("REDIS_URL", redis.as_str())];
        all.extend_from_slice(env);
        let process = caracal_testkit::ServiceProcess::spawn(&example_binary(), &[], &all).expect("spawn example");
        let example = Example { process, base: format!("http://127.0.0.1:{port}"), http: client() };
        let ready = caracal_testkit::wait_for(Duration::from_secs(20), Duration::from_millis(50), || async {
            example.status("/ready").await.filter(|s| *s == 200)
        })
        .await;
        assert!(ready.is_ok(), "example never became ready; stderr: {}", example.process.stderr());
        example
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub async fn status(&self, path: &str) -> Option<u16> {
        self.http.get(self.url(path)).send().await.ok().map(|r| r.status().as_u16())
    }

    /// Waits off the runtime for the process to exit.
    pub async fn exit_within(
        self,
        within: Duration,
    ) -> (Option<std::process::ExitStatus>, caracal_testkit::ServiceProcess) {
        let mut process = self.process;
        tokio::task::spawn_blocking(move || (process.wait_timeout(within), process)).await.expect("join")
    }
}
