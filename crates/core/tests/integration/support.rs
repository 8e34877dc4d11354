//! Shared set-up: one PostgreSQL and one Redis per test binary, apps served in-process on
//! port 0, and small HTTP helpers. Tests that inject faults start private servers instead.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use caracal_core::config::CoreConfig;
use caracal_core::{App, Check, Failure, Observed, Rung};

pub use caracal_testkit::shared;

pub use caracal_testkit::app::{Served, check_status, client, core_config, serve};

pub fn app(core: CoreConfig) -> App {
    caracal_testkit::app::app("test", core, serde_json::json!({}))
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

/// The built example binary (`cargo test` builds examples before running tests).
pub fn example_binary() -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    // target/<profile>/deps/integration-<hash> -> target/<profile>/examples/service
    let profile_dir = exe.parent().and_then(|deps| deps.parent()).expect("target profile directory");
    let path = profile_dir.join("examples").join("service");
    assert!(path.is_file(), "{} is missing: run the tests with `cargo test`, which builds examples", path.display());
    path
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
