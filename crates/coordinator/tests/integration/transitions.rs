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

/// An instance whose target changes is watched anew; when the change lands while its probe
/// runs, the old watch comes back after the new one took its series over, and must leave them
/// (same labels). A removed instance's series go.
#[tokio::test(flavor = "multi_thread")]
async fn a_change_during_a_probe_keeps_the_series_and_a_removal_drops_them() {
    let shared = support::shared();
    let pool = support::database(&shared.postgres).await;
    // Every answer takes 120 ms, so at a 50 ms interval a probe is running most of the time.
    let slow = || async {
        tokio::time::sleep(Duration::from_millis(120)).await;
        "ok"
    };
    let app = axum::Router::new().route("/health", axum::routing::get(slow)).route("/ready", axum::routing::get(slow));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    tokio::spawn(async move { axum::serve(listener, app).await });
    support::register(&pool, "slow", std::slice::from_ref(&url), 50).await;
    sqlx::query("UPDATE targets SET timeout_ms = 1000").execute(&pool).await.expect("timeout");
    let replica =
        Replica::start(&pool, &shared.redis.url(), &support::config(&caracal_testkit::unique_name("members"))).await;
    let up = |replica: &Replica| {
        replica
            .exposition()
            .lines()
            .find(|l| l.starts_with("instance_up{") && l.contains("target=\"slow\""))
            .map(|l| l.ends_with(" 1"))
    };
    caracal_testkit::wait_for(Duration::from_secs(10), Duration::from_millis(50), || async {
        (up(&replica) == Some(true)).then_some(())
    })
    .await
    .expect("exported up");

    // Each change is seen at the next full re-read (every 500 ms): the instance is watched
    // anew, most likely while a probe runs.
    for timeout in 1001..1007 {
        sqlx::query("UPDATE targets SET timeout_ms = $1").bind(timeout).execute(&pool).await.expect("change");
        tokio::time::sleep(Duration::from_millis(700)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(up(&replica), Some(true), "the series outlived the changes:\n{}", replica.exposition());

    sqlx::query("DELETE FROM instances").execute(&pool).await.expect("remove");
    caracal_testkit::wait_for(Duration::from_secs(10), Duration::from_millis(50), || async {
        up(&replica).is_none().then_some(())
    })
    .await
    .expect("a removed instance's series go");
    replica.stop().await;
}

/// With more instances due at once than probe tasks may run (`max_concurrency` 1: two tasks),
/// the rest wait in the backlog and every one is still probed, recorded and probed again.
#[tokio::test(flavor = "multi_thread")]
async fn instances_due_together_beyond_the_task_cap_are_all_probed() {
    let shared = support::shared();
    let pool = support::database(&shared.postgres).await;
    let fleet = Fleet::start().await;
    let urls: Vec<String> = (1..=40).map(|n| fleet.url(n)).collect();
    support::register(&pool, "many", &urls, 100).await;
    let mut config = support::config(&caracal_testkit::unique_name("members"));
    config.max_concurrency = 1;
    let replica = Replica::start(&pool, &shared.redis.url(), &config).await;
    caracal_testkit::wait_for(Duration::from_secs(20), Duration::from_millis(100), || async {
        let up: i64 = sqlx::query_scalar("SELECT count(*) FROM instance_status WHERE status = 'up'")
            .fetch_one(&pool)
            .await
            .ok()?;
        (up == 40).then_some(())
    })
    .await
    .expect("all 40 recorded up");
    fleet.reset();
    caracal_testkit::wait_for(Duration::from_secs(20), Duration::from_millis(100), || async {
        ((1..=40).all(|n| fleet.probed_by().contains_key(&n))).then_some(())
    })
    .await
    .expect("and each probed again");
    replica.stop().await;
}
