//! Configuration errors on the real binary: exit status 2 and a message naming the key, where
//! the value came from and what was expected. Also a clean start from the environment.

use std::time::Duration;

use caracal_testkit::ServiceProcess;

use crate::support::{self, Example};

/// Runs the example with `env` and expects it to exit 2 quickly; returns its stderr.
fn fails_with(env: &[(&str, &str)]) -> String {
    let mut process = ServiceProcess::spawn(&support::example_binary(), &[], env).expect("spawn example");
    let status = process.wait_timeout(Duration::from_secs(20)).expect("a config error exits at once");
    let stderr = process.stderr();
    assert_eq!(status.code(), Some(2), "exit status for {env:?}; stderr: {stderr}");
    stderr
}

#[test]
fn bad_values_exit_2_naming_key_source_and_expectation() {
    let stderr = fails_with(&[("CARACAL_MODE", "production")]);
    assert!(
        stderr.contains("`mode`") && stderr.contains("`CARACAL_MODE`") && stderr.contains("`dev`, `rc`, `stable`"),
        "{stderr}"
    );

    let stderr = fails_with(&[("PORT", "eighty")]);
    assert!(stderr.contains("`port`") && stderr.contains("`PORT`") && stderr.contains("u16"), "{stderr}");

    let stderr = fails_with(&[("CARACAL_SHUTDOWN__DRAIN_DELAY", "soon")]);
    assert!(stderr.contains("shutdown.drain_delay") && stderr.contains("CARACAL_SHUTDOWN__DRAIN_DELAY"), "{stderr}");

    let stderr = fails_with(&[("METRICS_BEARER_FILE", "/nonexistent/bearer")]);
    assert!(stderr.contains("metrics.bearer_file") && stderr.contains("/nonexistent/bearer"), "{stderr}");

    let dir = tempfile::tempdir().expect("temp dir");
    let empty = dir.path().join("empty");
    caracal_testkit::write_secret(&empty, "");
    let stderr = fails_with(&[("METRICS_BEARER_FILE", empty.to_str().expect("utf-8 path"))]);
    assert!(stderr.contains("is empty") && stderr.contains(&empty.display().to_string()), "{stderr}");

    let toml = dir.path().join("caracal.toml");
    std::fs::write(&toml, "[checks]\ninterval = 5\n").expect("write");
    let stderr = fails_with(&[("CARACAL_CONFIG", toml.to_str().expect("utf-8 path"))]);
    assert!(stderr.contains("checks.interval") && stderr.contains(&toml.display().to_string()), "{stderr}");

    let stderr = fails_with(&[("CARACAL_CONFIG", "/nonexistent/caracal.toml")]);
    assert!(stderr.contains("CARACAL_CONFIG") && stderr.contains("/nonexistent/caracal.toml"), "{stderr}");

    let stderr = fails_with(&[("CARACAL_MODE", "dev")]);
    assert!(
        stderr.contains("DATABASE_URL") && stderr.contains("not set"),
        "a missing URL names its variable: {stderr}"
    );

    let stderr = fails_with(&[
        ("CARACAL_MODE", "dev"),
        ("DATABASE_URL", "postgres://x@127.0.0.1:1/x"),
        ("REDIS_URL", "not a url"),
    ]);
    assert!(stderr.contains("REDIS_URL"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread")]
async fn secrets_never_reach_the_logs() {
    let database_url = support::shared().postgres.url();
    let example =
        Example::start(&[("CARACAL_MODE", "rc"), ("METRICS_BEARER", "do-not-log-me"), ("RUST_LOG", "debug")]).await;
    let scrape = example.http.get(example.url("/metrics")).bearer_auth("do-not-log-me").send().await.expect("scrape");
    assert_eq!(scrape.status(), 200);
    let work = example.http.get(example.url("/work?ms=1")).bearer_auth("do-not-log-me").send().await.expect("work");
    assert_eq!(work.status(), 200);
    example.process.signal(caracal_testkit::Signal::SIGTERM);
    let (status, process) = example.exit_within(Duration::from_secs(30)).await;
    assert!(status.expect("exits after SIGTERM").success());
    let logs = format!("{}{}", process.stdout(), process.stderr());
    assert!(logs.contains("\"level\""), "rc mode logs JSON: {logs}");
    assert!(!logs.contains("do-not-log-me"), "the bearer appeared in the logs");
    assert!(!logs.contains(&database_url), "the database URL appeared in the logs");
}
