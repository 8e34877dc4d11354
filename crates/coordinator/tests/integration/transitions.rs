//! Status changes: hysteresis, and each change recorded once (status, transition, outbox).

use std::time::Duration;

use crate::support::{self, Fleet, Replica};

async fn transitions(pool: &sqlx::PgPool) -> Vec<(String, String)> {
    sqlx::query_as("SELECT from_status, to_status FROM status_transitions ORDER BY id")
        .fetch_all(pool)
        .await
        .expect("transitions")
}

#[tokio::test(flavor = "multi_thread")]
async fn flips_are_recorded_once_and_blips_are_ignored() {
    let shared = support::shared();
    let pool = support::database(&shared.postgres).await;
    let fleet = Fleet::start().await;
    support::register(&pool, "shop", &[fleet.url(1)], 200).await;
    let mut config = support::config(&caracal_testkit::unique_name("members"));
    config.failure_threshold = 4;
    config.success_threshold = 2;
    let replica = Replica::start(&pool, &shared.redis.url(), &config).await;
    let status = |want: &'static str| {
        let pool = pool.clone();
        async move {
            caracal_testkit::wait_for(Duration::from_secs(10), Duration::from_millis(50), || async {
                let s: Option<String> =
                    sqlx::query_scalar("SELECT status FROM instance_status").fetch_optional(&pool).await.ok()?;
                (s.as_deref() == Some(want)).then_some(())
            })
            .await
        }
    };
    status("up").await.expect("first probe records up");

    // A blip shorter than four probes is not a change.
    fleet.set_ready(1, false);
    tokio::time::sleep(Duration::from_millis(300)).await;
    fleet.set_ready(1, true);
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(transitions(&pool).await, [("unknown".into(), "up".into())], "the blip changed nothing");

    fleet.set_ready(1, false);
    status("unready").await.expect("a lasting failure is recorded");
    fleet.set_ready(1, true);
    status("up").await.expect("and so is the recovery");
    let recorded = transitions(&pool).await;
    let expected: Vec<(String, String)> = [("unknown", "up"), ("up", "unready"), ("unready", "up")]
        .iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect();
    assert_eq!(recorded, expected);
    let (events, reasons): (i64, i64) = sqlx::query_as(
        "SELECT count(*), count(*) FILTER (WHERE payload->>'reason' LIKE '/ready answered 503%') \
         FROM outbox WHERE event_type = 'instance.status_changed'",
    )
    .fetch_one(&pool)
    .await
    .expect("outbox");
    assert_eq!((events, reasons), (3, 1), "one event per transition, the failure with its reason");
    replica.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_paused_target_is_not_probed_and_keeps_its_last_status_until_resumed() {
    let shared = support::shared();
    let pool = support::database(&shared.postgres).await;
    let fleet = Fleet::start().await;
    support::register(&pool, "shop", &[fleet.url(1)], 100).await;
    let replica =
        Replica::start(&pool, &shared.redis.url(), &support::config(&caracal_testkit::unique_name("members"))).await;
    let probed = || fleet.probed_by().get(&1).is_some_and(|by| !by.is_empty());
    caracal_testkit::wait_for(Duration::from_secs(10), Duration::from_millis(50), || async { probed().then_some(()) })
        .await
        .expect("probed while not paused");

    sqlx::query("UPDATE targets SET paused_at = now()").execute(&pool).await.expect("pause");
    // The registry is re-read every 200 ms; after a generous second no probe may arrive.
    tokio::time::sleep(Duration::from_secs(1)).await;
    fleet.reset();
    fleet.set_ready(1, false);
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(!probed(), "a paused target was probed");
    assert_eq!(transitions(&pool).await, [("unknown".into(), "up".into())], "its last status stays");

    sqlx::query("UPDATE targets SET paused_at = NULL").execute(&pool).await.expect("resume");
    caracal_testkit::wait_for(Duration::from_secs(10), Duration::from_millis(50), || async { probed().then_some(()) })
        .await
        .expect("probed again once resumed");
    replica.stop().await;
}

/// A service with one health endpoint names it as both paths: each probe asks it once, and
/// its answer counts for both liveness and readiness.
#[tokio::test(flavor = "multi_thread")]
async fn one_path_for_both_is_asked_once_per_probe() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};

    let shared = support::shared();
    let pool = support::database(&shared.postgres).await;
    let asked = Arc::new(AtomicU64::new(0));
    let counter = Arc::clone(&asked);
    let app = axum::Router::new().route(
        "/healthz",
        axum::routing::get(move || {
            counter.fetch_add(1, Ordering::SeqCst);
            async { "ok" }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    tokio::spawn(async move { axum::serve(listener, app).await });
    support::register_with_paths(&pool, "single", &[url], 100, ("/healthz", "/healthz")).await;
    let replica =
        Replica::start(&pool, &shared.redis.url(), &support::config(&caracal_testkit::unique_name("members"))).await;
    let probes = |replica: &Replica| -> u64 {
        replica
            .exposition()
            .lines()
            .filter(|l| l.starts_with("probes_total{"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .sum()
    };
    caracal_testkit::wait_for(Duration::from_secs(10), Duration::from_millis(50), || async {
        (probes(&replica) >= 5).then_some(())
    })
    .await
    .expect("five probes");
    let status: String =
        sqlx::query_scalar("SELECT status FROM instance_status").fetch_one(&pool).await.expect("status");
    assert_eq!(status, "up");
    // Probes counted first, then requests: a probe asks before it is counted, so at most the
    // one in flight has asked and is not counted yet (two GETs a probe would be twice as many).
    let done = probes(&replica);
    let asked = asked.load(Ordering::SeqCst);
    assert!((done..=done + 1).contains(&asked), "{asked} requests for {done} probes");
    replica.stop().await;
}
