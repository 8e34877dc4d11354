//! Two coordinator replicas share a fleet: every instance probed by exactly one; when one
//! dies, the other takes its instances within the bound.

use std::time::{Duration, Instant};

use caracal_coordinator::membership;

use crate::support::{self, Fleet, Replica};

const INSTANCES: u32 = 24;

#[tokio::test(flavor = "multi_thread")]
async fn each_instance_has_one_prober_and_a_dead_replicas_share_moves() {
    let shared = support::shared();
    let pool = support::database(&shared.postgres).await;
    let fleet = Fleet::start().await;
    let urls: Vec<String> = (0..INSTANCES).map(|n| fleet.url(n)).collect();
    support::register(&pool, "fleet", &urls, 200).await;
    let config = support::config(&caracal_testkit::unique_name("members"));
    let a = Replica::start(&pool, &shared.redis.url(), &config).await;
    let b = Replica::start(&pool, &shared.redis.url(), &config).await;

    let both = caracal_testkit::wait_for(Duration::from_secs(10), Duration::from_millis(50), || async {
        (a.membership.members().len() == 2 && b.membership.members().len() == 2).then_some(())
    })
    .await;
    assert!(both.is_ok(), "the replicas see each other");
    // Let both reconcile with the full membership, then watch.
    tokio::time::sleep(config.refresh * 3 + Duration::from_millis(300)).await;
    fleet.reset();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let probed = fleet.probed_by();
    assert_eq!(probed.len(), INSTANCES as usize, "every instance is probed: {probed:?}");
    for (n, replicas) in &probed {
        assert_eq!(replicas.len(), 1, "instance {n} probed by {replicas:?}");
    }
    let by_a = probed.values().filter(|r| r.contains(a.membership.id())).count();
    assert!(by_a > 0 && by_a < INSTANCES as usize, "both replicas carry a share ({by_a} of {INSTANCES} on a)");

    let survivor = b.membership.id().to_string();
    a.crash();
    let crashed = Instant::now();
    fleet.reset();
    let bound = membership::takeover_bound(&config.membership, config.refresh)
        + Duration::from_millis(200)
        + Duration::from_secs(3);
    let taken = caracal_testkit::wait_for(bound, Duration::from_millis(50), || async {
        let probed = fleet.probed_by();
        (probed.len() == INSTANCES as usize && probed.values().all(|r| r.contains(&survivor))).then_some(())
    })
    .await;
    assert!(taken.is_ok(), "the survivor probes every instance within {bound:?}: {:?}", fleet.probed_by());
    eprintln!("takeover after {:?} (bound {bound:?})", crashed.elapsed());
    b.stop().await;
}
