//! The ladder over real HTTP: rung order, `skipped`, required versus optional.

use std::time::Duration;

use caracal_core::config::Mode;
use caracal_core::{Rung, checks};

use crate::support::{self, Switch, check_status};

#[tokio::test(flavor = "multi_thread")]
async fn rungs_above_a_failing_rung_are_skipped_and_not_run() {
    let shared = support::shared();
    let db = shared.postgres.fresh_database("ladder").expect("database");
    let mut core = support::core_config(Mode::Dev);
    core.database_url = Some(caracal_core::config::Secret::new(db));
    core.redis_url = Some(caracal_core::config::Secret::new(shared.redis.url()));
    let process = Switch::new(true);
    let delivery = Switch::new(true);
    let service = Switch::new(true);
    let app = support::app(core);
    let (pg, redis) = (app.postgres().expect("pool"), app.redis().expect("redis"));
    let app = app
        .check(process.check("config:loaded", Rung::Process))
        .check(checks::postgres(pg))
        .check(checks::redis(redis))
        .check(delivery.check("outbox:fake", Rung::Delivery))
        .check(service.check("app:thing", Rung::Service));
    let served = support::serve(app).await;

    let body = served.wait_ready_status(200, Duration::from_secs(10)).await.expect("ready with every rung passing");
    assert_eq!(body["status"], "pass");
    for name in ["config:loaded", "postgres:connectivity", "redis:connectivity", "outbox:fake", "app:thing"] {
        assert_eq!(check_status(&body, name), "pass", "{name} in {body}");
    }
    assert_eq!(body["checks"]["postgres:connectivity"][0]["rung"], "storage");
    assert_eq!(body["checks"]["postgres:connectivity"][0]["componentType"], "datastore");

    // Break the process rung: everything above it is skipped, and stops running.
    process.set(false);
    let body =
        served.wait_ready_status(503, Duration::from_secs(5)).await.expect("unready once the process rung fails");
    assert_eq!(check_status(&body, "config:loaded"), "fail");
    for name in ["postgres:connectivity", "redis:connectivity", "outbox:fake", "app:thing"] {
        assert_eq!(check_status(&body, name), "skipped", "{name} in {body}");
    }
    tokio::time::sleep(Duration::from_millis(600)).await;
    let runs = service.runs();
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert_eq!(service.runs(), runs, "a check above a failing rung must not run");

    // Mend it: the upper rungs run again at once and the service is ready.
    process.set(true);
    served.wait_ready_status(200, Duration::from_secs(5)).await.expect("ready again");
    assert!(service.runs() > runs);

    // A failing middle rung skips only what is above it.
    delivery.set(false);
    let body = served.wait_ready_status(503, Duration::from_secs(5)).await.expect("unready with delivery failing");
    assert_eq!(check_status(&body, "postgres:connectivity"), "pass");
    assert_eq!(check_status(&body, "outbox:fake"), "fail");
    assert_eq!(check_status(&body, "app:thing"), "skipped");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_optional_check_failing_warns_and_stays_ready() {
    let required = Switch::new(true);
    let optional = Switch::new(false);
    let app = support::app(support::core_config(Mode::Dev))
        .check(required.check("app:required", Rung::Service))
        .check(optional.check("dlq:length", Rung::Delivery).required(false));
    let served = support::serve(app).await;
    let body = served.wait_ready_status(200, Duration::from_secs(5)).await.expect("ready despite the optional failure");
    assert_eq!(body["status"], "warn");
    assert_eq!(check_status(&body, "dlq:length"), "warn");
    assert_eq!(check_status(&body, "app:required"), "pass", "an optional failure does not close the rungs above");
    assert_eq!(body["checks"]["dlq:length"][0]["output"], "switched off", "dev mode shows the error text");

    let verbose = served.get("/ready?verbose").await;
    assert_eq!(verbose.status(), 200);
    let text = verbose.text().await.expect("text");
    assert!(text.contains("[-]dlq:length warn (not required): switched off"), "{text}");
    assert!(text.contains("[+]app:required ok"), "{text}");
    assert!(text.ends_with("ready check passed\n"), "{text}");

    required.set(false);
    served.wait_ready_status(503, Duration::from_secs(5)).await.expect("a required failure is unready");
    let one = served.get("/ready/app:required").await;
    assert_eq!(one.status(), 503);
    let one = served.get("/ready/dlq:length").await;
    assert_eq!(one.status(), 503, "a single failing check answers 503 even when optional");
    let missing = served.get("/ready/nope:nope").await;
    assert_eq!(missing.status(), 404);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_hanging_check_times_out_without_blocking_others() {
    let fast = Switch::new(true);
    let hang = caracal_core::Check::new("slow:hang", Rung::Service, || async {
        tokio::time::sleep(Duration::from_secs(3600)).await;
        Ok(caracal_core::Observed::default())
    })
    .timeout(Duration::from_millis(200));
    let app = support::app(support::core_config(Mode::Dev)).check(fast.check("app:fast", Rung::Service)).check(hang);
    let served = support::serve(app).await;
    let body = served
        .wait_for_check("slow:hang", "fail", Duration::from_secs(5))
        .await
        .expect("the hanging check fails by timeout");
    assert!(body["checks"]["slow:hang"][0]["output"].as_str().unwrap_or("").contains("timed out"), "{body}");
    assert_eq!(check_status(&body, "app:fast"), "pass");
}
