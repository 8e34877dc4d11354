//! The registry in memory: a write announced on `caracal.invalidations` is probed at once,
//! with no periodic re-read of the registry to wait for.

use std::time::{Duration, Instant};

use caracal_coordinator::config::CoordinatorConfig;
use caracal_coordinator::metrics::Metrics;
use caracal_coordinator::relay::Relay;
use caracal_store::registry::{self, Writer};
use caracal_store::target::TargetSpec;
use tokio_util::sync::CancellationToken;

use crate::support::{self, Fleet, Replica};

/// The outbox relay, running until stopped: it announces registry writes on the stream.
struct Relaying {
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl Relaying {
    async fn start(pool: &sqlx::PgPool, redis_url: &str, config: &CoordinatorConfig) -> Relaying {
        let mut metrics_registry = prometheus_client::registry::Registry::default();
        let relay = Relay::new(
            pool.clone(),
            support::redis(redis_url).await,
            Metrics::register(&mut metrics_registry),
            config.relay.clone(),
        );
        let stop = CancellationToken::new();
        Relaying { task: tokio::spawn(relay.run(stop.clone())), stop }
    }

    async fn stop(self) {
        self.stop.cancel();
        let _ = self.task.await;
    }
}

fn spec(name: &str, instances: Vec<String>) -> TargetSpec {
    serde_json::from_value(serde_json::json!({"name": name, "instances": instances, "interval_ms": 600_000}))
        .expect("a spec")
}

#[tokio::test(flavor = "multi_thread")]
async fn a_registered_target_is_probed_at_once() {
    let shared = support::shared();
    let pool = support::database(&shared.postgres).await;
    let fleet = Fleet::start().await;
    let mut config = support::config(&caracal_testkit::unique_name("members"));
    // Only the stream can tell the prober: the safety-net re-read is ten minutes away, and
    // so is a first probe spread over the ten-minute interval.
    config.full_resync = Duration::from_secs(600);
    let replica = Replica::start(&pool, &shared.redis.url(), &config).await;
    let relaying = Relaying::start(&pool, &shared.redis.url(), &config).await;
    caracal_testkit::wait_for(Duration::from_secs(10), Duration::from_millis(50), || async {
        (!replica.membership.members().is_empty()).then_some(())
    })
    .await
    .expect("the replica knows its members");
    // The follower has started and read the registry (empty) once.
    tokio::time::sleep(Duration::from_millis(500)).await;

    let written = Instant::now();
    registry::create(&pool, &spec("shop", vec![fleet.url(1)]), &Writer::Api).await.expect("create");
    caracal_testkit::wait_for(Duration::from_secs(10), Duration::from_millis(10), || async {
        fleet.probed_by().contains_key(&1).then_some(())
    })
    .await
    .expect("the new instance is probed without waiting for a re-read");
    let first = written.elapsed();

    let written = Instant::now();
    registry::replace(&pool, &spec("shop", vec![fleet.url(1), fleet.url(2)]), &Writer::Api).await.expect("replace");
    caracal_testkit::wait_for(Duration::from_secs(10), Duration::from_millis(10), || async {
        fleet.probed_by().contains_key(&2).then_some(())
    })
    .await
    .expect("an added instance is probed at once too");
    let second = written.elapsed();
    eprintln!("write → first probe: {first:?} (create), {second:?} (an instance added)");
    assert!(first < Duration::from_secs(5) && second < Duration::from_secs(5), "{first:?} {second:?}");

    // A change is applied to what it touches alone (the prober works out ownership for the
    // named target's instances, before and after): an instance taken out, a target deleted,
    // and the other target's instance watched throughout.
    registry::create(&pool, &spec("other", vec![fleet.url(3)]), &Writer::Api).await.expect("create");
    let owned = |n: usize| {
        let line = format!("instances_owned {n}");
        let replica = &replica;
        async move {
            caracal_testkit::wait_for(Duration::from_secs(10), Duration::from_millis(20), || async {
                replica.exposition().lines().any(|l| l == line).then_some(())
            })
            .await
        }
    };
    owned(3).await.expect("three instances watched");
    registry::replace(&pool, &spec("shop", vec![fleet.url(2)]), &Writer::Api).await.expect("replace");
    owned(2).await.expect("the instance taken out is no longer watched");
    registry::delete(&pool, "shop", &Writer::Api).await.expect("delete");
    owned(1).await.expect("the deleted target's instance is no longer watched");
    fleet.reset();
    registry::replace(&pool, &spec("other", vec![fleet.url(3), fleet.url(4)]), &Writer::Api).await.expect("replace");
    caracal_testkit::wait_for(Duration::from_secs(10), Duration::from_millis(10), || async {
        let probed = fleet.probed_by();
        (probed.contains_key(&3) && probed.contains_key(&4)).then_some(())
    })
    .await
    .expect("the changed target's instances are probed at once, the one it kept too");
    owned(2).await.expect("and watched");
    let probed = fleet.probed_by();
    assert!(!probed.contains_key(&1) && !probed.contains_key(&2), "nothing of the deleted target: {probed:?}");

    relaying.stop().await;
    replica.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_announcement_after_the_re_read_that_found_its_target_still_probes_at_once() {
    let shared = support::shared();
    // A Redis of its own: the announcement must be the only one on the stream.
    let redis = caracal_testkit::Redis::start_default().expect("redis");
    let pool = support::database(&shared.postgres).await;
    let fleet = Fleet::start().await;
    // Written (with its outbox row) before the replica starts and announced only once the
    // relay runs: the start-up re-read finds it first and spreads its first probe over ten
    // minutes; the announcement that follows must still have it probed at once.
    let name = caracal_testkit::unique_name("late");
    registry::create(&pool, &spec(&name, vec![fleet.url(1)]), &Writer::Api).await.expect("create");
    let mut config = support::config(&caracal_testkit::unique_name("members"));
    config.full_resync = Duration::from_secs(600);
    let replica = Replica::start(&pool, &redis.url(), &config).await;
    caracal_testkit::wait_for(Duration::from_secs(10), Duration::from_millis(50), || async {
        replica.exposition().lines().any(|l| l == "instances_owned 1").then_some(())
    })
    .await
    .expect("the start-up re-read gave the replica its instance");
    assert!(!fleet.probed_by().contains_key(&1), "not probed yet: its first probe is spread");

    let relaying = Relaying::start(&pool, &redis.url(), &config).await;
    caracal_testkit::wait_for(Duration::from_secs(10), Duration::from_millis(10), || async {
        fleet.probed_by().contains_key(&1).then_some(())
    })
    .await
    .expect("the announcement has the running instance probed now, not at its spread time");

    relaying.stop().await;
    replica.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn redis_losing_everything_loses_no_registration() {
    let shared = support::shared();
    // A Redis of its own: FLUSHALL must not reach the other tests.
    let redis = caracal_testkit::Redis::start_default().expect("redis");
    let pool = support::database(&shared.postgres).await;
    let fleet = Fleet::start().await;
    let mut config = support::config(&caracal_testkit::unique_name("members"));
    config.full_resync = Duration::from_secs(3);
    let replica = Replica::start(&pool, &redis.url(), &config).await;
    let relaying = Relaying::start(&pool, &redis.url(), &config).await;
    registry::create(&pool, &spec("before", vec![fleet.url(1)]), &Writer::Api).await.expect("create");
    caracal_testkit::wait_for(Duration::from_secs(10), Duration::from_millis(10), || async {
        fleet.probed_by().contains_key(&1).then_some(())
    })
    .await
    .expect("probed");

    redis.command("FLUSHALL").expect("flush");
    // A change whose announcement never reaches the stream (written past the outbox), then
    // one announced as usual on the emptied Redis.
    support::register(&pool, "unannounced", &[fleet.url(2)], 1_000).await;
    registry::create(&pool, &spec("after", vec![fleet.url(3)]), &Writer::Api).await.expect("create");
    let fast = caracal_testkit::wait_for(Duration::from_secs(10), Duration::from_millis(10), || async {
        fleet.probed_by().contains_key(&3).then_some(())
    })
    .await;
    assert!(fast.is_ok(), "an announcement after the flush still arrives");
    let converged = caracal_testkit::wait_for(Duration::from_secs(20), Duration::from_millis(50), || async {
        fleet.probed_by().contains_key(&2).then_some(())
    })
    .await;
    assert!(converged.is_ok(), "the full re-read picks up what the stream never carried");

    relaying.stop().await;
    replica.stop().await;
}
