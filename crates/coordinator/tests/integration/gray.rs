//! Gray failure against real HTTP servers on loopback that inject latency and failures: a
//! slowed instance becomes `degraded` (and says why), a flaky one too, their peers stay `up`,
//! a healed one comes back without flapping, and a target that turned detection off is never
//! judged.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::get;

use crate::support::{self, Replica};

/// How one instance answers: extra latency, and the share of `/ready` answers that are 503.
#[derive(Clone, Copy, Default)]
struct Behaviour {
    delay_ms: u64,
    failing: f64,
}

/// Instances `/g/{n}` on one loopback server, each answering as told.
#[derive(Clone, Default)]
struct Injected {
    base: String,
    behaviour: Arc<Mutex<HashMap<u32, Behaviour>>>,
}

impl Injected {
    async fn start() -> Injected {
        let mut server = Injected::default();
        let app = Router::new()
            .route("/g/{n}/health", get(|| async { "ok" }))
            .route("/g/{n}/ready", get(answer))
            .with_state(server.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        server.base = format!("http://{}", listener.local_addr().expect("addr"));
        tokio::spawn(async move { axum::serve(listener, app).await });
        server
    }

    fn url(&self, n: u32) -> String {
        format!("{}/g/{n}", self.base)
    }

    fn set(&self, n: u32, behaviour: Behaviour) {
        self.behaviour.lock().expect("lock").insert(n, behaviour);
    }
}

async fn answer(State(server): State<Injected>, Path(n): Path<u32>) -> StatusCode {
    let behaviour = server.behaviour.lock().expect("lock").get(&n).copied().unwrap_or_default();
    tokio::time::sleep(Duration::from_millis(behaviour.delay_ms)).await;
    if fastrand::f64() < behaviour.failing { StatusCode::SERVICE_UNAVAILABLE } else { StatusCode::OK }
}

/// Every instance's (status, degraded reason, degraded detail), by URL.
async fn statuses(pool: &sqlx::PgPool) -> HashMap<String, (String, Option<String>, Option<String>)> {
    let rows: Vec<(String, String, Option<String>, Option<String>)> = sqlx::query_as(
        "SELECT i.url, s.status, s.degraded->>'reason', s.degraded->>'detail' \
         FROM instances i JOIN instance_status s ON s.instance_id = i.id",
    )
    .fetch_all(pool)
    .await
    .expect("statuses");
    rows.into_iter().map(|(url, status, reason, detail)| (url, (status, reason, detail))).collect()
}

/// `url`'s recorded transitions, oldest first.
async fn transitions(pool: &sqlx::PgPool, url: &str) -> Vec<(String, String)> {
    sqlx::query_as("SELECT from_status, to_status FROM status_transitions WHERE instance_url = $1 ORDER BY id")
        .bind(url)
        .fetch_all(pool)
        .await
        .expect("transitions")
}

/// Waits until `url` is recorded as `status`; its reason and detail then.
async fn becomes(pool: &sqlx::PgPool, url: &str, status: &str, within: Duration) -> (Option<String>, Option<String>) {
    caracal_testkit::wait_for(within, Duration::from_millis(100), || async {
        let (s, reason, detail) = statuses(pool).await.remove(url)?;
        (s == status).then_some((reason, detail))
    })
    .await
    .unwrap_or_else(|_| panic!("{url} never became {status} within {within:?}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn slow_and_flaky_instances_become_degraded_with_reasons_and_heal_without_flapping() {
    let shared = support::shared();
    let pool = support::database(&shared.postgres).await;
    let server = Injected::start().await;
    let urls: Vec<String> = (0..5).map(|n| server.url(n)).collect();
    support::create(
        &pool,
        serde_json::json!({"name": "shop", "instances": urls, "interval_ms": 100, "timeout_ms": 2000}),
    )
    .await;
    // The same slowdown on a target that turned detection off.
    let quiet = server.url(9);
    support::create(
        &pool,
        serde_json::json!({"name": "quiet", "instances": [quiet], "interval_ms": 100, "timeout_ms": 2000,
                           "degraded": {"enabled": false}}),
    )
    .await;
    let replica =
        Replica::start(&pool, &shared.redis.url(), &support::config(&caracal_testkit::unique_name("m"))).await;

    // Warm-up: 60 successful probes make a baseline (6 s at 100 ms).
    caracal_testkit::wait_for(Duration::from_secs(20), Duration::from_millis(100), || async {
        (statuses(&pool).await.values().filter(|(s, _, _)| s == "up").count() == 6).then_some(())
    })
    .await
    .expect("every instance probed");
    tokio::time::sleep(Duration::from_secs(9)).await;
    assert!(statuses(&pool).await.values().all(|(s, _, _)| s == "up"), "{:?}", statuses(&pool).await);

    // Instance 1 slows down by 150 ms; so does the instance of the target that opted out.
    server.set(1, Behaviour { delay_ms: 150, failing: 0.0 });
    server.set(9, Behaviour { delay_ms: 150, failing: 0.0 });
    let (reason, detail) = becomes(&pool, &urls[1], "degraded", Duration::from_secs(20)).await;
    assert_eq!(reason.as_deref(), Some("latency"));
    let detail = detail.expect("a sentence");
    assert!(detail.starts_with("p50 15") && detail.contains("against its own"), "{detail}");

    // What the operator sees in the metrics: up, and degraded, with both latencies.
    let exposition = replica.exposition();
    let series = |name: &str, url: &str| format!("{name}{{target=\"shop\",url=\"{url}\"}} 1");
    assert!(exposition.lines().any(|l| l == series("instance_degraded", &urls[1])), "{exposition}");
    assert!(exposition.lines().any(|l| l == series("instance_up", &urls[1])), "a degraded instance is up");
    assert!(exposition.contains(&format!("instance_degraded{{target=\"shop\",url=\"{}\"}} 0", urls[0])));
    for window in ["recent", "baseline"] {
        assert!(
            exposition.contains(&format!(
                "instance_latency_seconds{{target=\"shop\",url=\"{}\",window=\"{window}\"}}",
                urls[1]
            )),
            "{exposition}"
        );
    }

    // The ledger's event carries the reason word and the sentence.
    let (to, word, sentence): (String, String, String) = sqlx::query_as(
        "SELECT payload->>'to', payload->>'reason', payload->>'detail' FROM outbox \
         WHERE event_type = 'instance.status_changed' AND instance = $1 ORDER BY id DESC LIMIT 1",
    )
    .bind(&urls[1])
    .fetch_one(&pool)
    .await
    .expect("event");
    assert_eq!((to.as_str(), word.as_str()), ("degraded", "latency"));
    assert_eq!(sentence, detail);

    // Instance 2 fails one `/ready` in four, at random.
    server.set(2, Behaviour { delay_ms: 0, failing: 0.25 });
    let (reason, _) = becomes(&pool, &urls[2], "degraded", Duration::from_secs(20)).await;
    assert!(matches!(reason.as_deref(), Some("errors" | "flapping")), "{reason:?}");

    // Their peers never left `up`; the target that opted out was never judged.
    for n in [0, 3, 4] {
        assert_eq!(transitions(&pool, &urls[n]).await, [("unknown".into(), "up".into())], "instance {n}");
    }
    assert_eq!(transitions(&pool, &quiet).await, [("unknown".into(), "up".into())], "detection off");

    // Healed: up again, without flapping on the way.
    server.set(1, Behaviour::default());
    server.set(2, Behaviour::default());
    becomes(&pool, &urls[1], "up", Duration::from_secs(30)).await;
    becomes(&pool, &urls[2], "up", Duration::from_secs(30)).await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    let slow: Vec<(String, String)> = transitions(&pool, &urls[1]).await;
    let pairs = |v: &[(&str, &str)]| v.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect::<Vec<_>>();
    assert_eq!(slow, pairs(&[("unknown", "up"), ("up", "degraded"), ("degraded", "up")]));
    let flaky = transitions(&pool, &urls[2]).await;
    assert_eq!(flaky.last().map(|(_, to)| to.as_str()), Some("up"), "{flaky:?}");
    assert!(flaky.iter().all(|(_, to)| to != "down"), "detection never makes an instance down: {flaky:?}");
    replica.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_new_owner_keeps_a_recorded_verdict() {
    let shared = support::shared();
    let pool = support::database(&shared.postgres).await;
    let server = Injected::start().await;
    support::create(&pool, serde_json::json!({"name": "shop", "instances": [server.url(1)], "interval_ms": 100})).await;
    // As a previous owner left it: degraded, for its errors.
    sqlx::query(
        "INSERT INTO instance_status (instance_id, status, last_error, degraded) \
         SELECT id, 'degraded', 'errors: 4 of the last 20 probes failed', \
         '{\"reason\": \"errors\", \"detail\": \"4 of the last 20 probes failed\"}' FROM instances",
    )
    .execute(&pool)
    .await
    .expect("recorded");
    let replica =
        Replica::start(&pool, &shared.redis.url(), &support::config(&caracal_testkit::unique_name("m"))).await;
    // Healthy now, but its windows are not full for 2 s: nothing new is said before then.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(transitions(&pool, &server.url(1)).await, [], "a new owner re-announces nothing");
    becomes(&pool, &server.url(1), "up", Duration::from_secs(30)).await;
    assert_eq!(transitions(&pool, &server.url(1)).await, [("degraded".into(), "up".into())]);
    replica.stop().await;
}
