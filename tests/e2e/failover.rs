//! A PostgreSQL failover under load, as operators run one: a primary and a synchronous
//! streaming standby behind `haproxy` (the shape of a Kubernetes Service in front of a
//! replicated PostgreSQL), the built api, coordinator and audit on the proxy's address, and
//! writes running. The primary is SIGKILLed; haproxy sends new connections to the standby,
//! which is promoted some seconds later. Nothing acknowledged may be lost or recorded twice,
//! no write may be answered 5xx other than 503, and every service must be ready again without
//! a restart. Then the old primary is restarted as a standby of the new one (cloned again from
//! it), as an operator brings it back: a service that reaches it fails `postgres:writable`.

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use caracal_testkit::haproxy::TcpProxy;
use caracal_testkit::postgres::PostgresBuilder;
use caracal_testkit::redis::RedisBuilder;

use crate::support;

const API: &str = env!("CARGO_BIN_EXE_caracal-api");
const COORDINATOR: &str = env!("CARGO_BIN_EXE_caracal-coordinator");
const AUDIT: &str = env!("CARGO_BIN_EXE_caracal-audit");
const WRITES: usize = 1_000;
/// How long the standby stays a standby after the kill, as a failover manager takes.
const PROMOTE_AFTER: Duration = Duration::from_secs(6);

/// What the writers saw, by status code, and the names the API acknowledged.
#[derive(Default)]
pub(crate) struct Outcome {
    pub(crate) codes: BTreeMap<u16, usize>,
    pub(crate) acknowledged: HashSet<String>,
}

/// Registers targets `w{writer}-{i}` until `count` are acknowledged; a 503 is retried after a
/// short pause (the API says `Retry-After`), a 409 after a 503 means the earlier attempt
/// committed before its answer was lost.
pub(crate) async fn writer(base: String, writer: usize, count: usize, outcome: Arc<Mutex<Outcome>>) {
    let http = reqwest::Client::builder().timeout(Duration::from_secs(10)).build().expect("client");
    for i in 0..count {
        let name = format!("w{writer}-{i}");
        let mut retried = false;
        loop {
            let sent = http
                .post(format!("{base}/v1/targets"))
                .json(&serde_json::json!({"name": name, "instances": ["http://127.0.0.1:9/"], "interval_ms": 600_000}))
                .send()
                .await;
            let code = sent.as_ref().map_or(0, |r| r.status().as_u16());
            let done = {
                let mut seen = outcome.lock().expect("lock");
                *seen.codes.entry(code).or_default() += 1;
                let acknowledged = code == 201 || (code == 409 && retried);
                if acknowledged {
                    seen.acknowledged.insert(name.clone());
                }
                acknowledged || !matches!(code, 503 | 0)
            };
            if done {
                break;
            }
            retried = true;
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// Every `acknowledged` target is stored, and `writes` `target.created` events reach the
/// ledger within `within`, each once.
pub(crate) async fn assert_stored_and_ledgered_once(
    pool: &sqlx::PgPool,
    acknowledged: &HashSet<String>,
    writes: usize,
    within: Duration,
) {
    let stored: Vec<String> = sqlx::query_scalar("SELECT name FROM targets").fetch_all(pool).await.expect("targets");
    let stored: HashSet<String> = stored.into_iter().collect();
    assert!(
        acknowledged.is_subset(&stored),
        "{} acknowledged targets missing",
        acknowledged.difference(&stored).count()
    );
    let ledgered = caracal_testkit::wait_for(within, Duration::from_millis(200), || async {
        let (created, distinct): (i64, i64) = sqlx::query_as(
            "SELECT count(*), count(DISTINCT target) FROM audit_events WHERE event_type = 'target.created'",
        )
        .fetch_one(pool)
        .await
        .ok()?;
        (created == writes as i64).then_some((created, distinct))
    })
    .await;
    assert_eq!(ledgered, Ok((writes as i64, writes as i64)), "each creation in the ledger exactly once");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_primary_killed_mid_writes_loses_nothing_and_every_service_recovers_by_itself() {
    let mut primary = PostgresBuilder::default().setting("synchronous_commit", "on").start().expect("a primary");
    let database = primary.fresh_database("failover").expect("database");
    let name = database.rsplit('/').next().expect("name").to_string();
    let standby = primary.standby().expect("a standby");
    // Synchronous from now on: a commit the primary acknowledges is on the standby.
    primary.psql("postgres", "ALTER SYSTEM SET synchronous_standby_names = '*'").expect("synchronous");
    primary.psql("postgres", "SELECT pg_reload_conf()").expect("reload");
    let sync = caracal_testkit::poll::wait_for_blocking(Duration::from_secs(10), Duration::from_millis(50), || {
        primary.psql("postgres", "SELECT sync_state FROM pg_stat_replication").is_ok_and(|s| s.trim() == "sync")
    });
    assert!(sync, "the standby replicates synchronously");
    let proxy = TcpProxy::start(&[primary.port(), standby.port()]).expect("haproxy in front of both");
    let url = format!("postgres://postgres@127.0.0.1:{}/{name}", proxy.port());
    let redis = RedisBuilder::default().persistent(true).start().expect("redis");
    support::migrate_url(&url, &redis.url());
    let start = |binary: &'static str, env: &'static [(&'static str, &'static str)]| {
        let (url, redis_url) = (url.clone(), redis.url());
        async move { support::start_with(binary, &url, &redis_url, caracal_testkit::free_port().expect("port"), env).await }
    };
    let api = start(API, &[]).await;
    let coordinator = start(COORDINATOR, &[("CARACAL_COORDINATOR__RELAY__BACKOFF_CAP", "500ms")]).await;
    let audit = start(AUDIT, &[("CARACAL_AUDIT__BLOCK", "200ms"), ("CARACAL_AUDIT__LEDGER__INTERVAL", "1s")]).await;

    let outcome = Arc::new(Mutex::new(Outcome::default()));
    let writers: Vec<_> =
        (0..4).map(|w| tokio::spawn(writer(api.base.clone(), w, WRITES / 4, Arc::clone(&outcome)))).collect();
    // A quarter of the writes in, the primary dies.
    caracal_testkit::wait_for(Duration::from_secs(60), Duration::from_millis(10), || async {
        (outcome.lock().expect("lock").acknowledged.len() >= WRITES / 4).then_some(())
    })
    .await
    .expect("writes are acknowledged before the kill");
    primary.kill();
    let killed = Instant::now();
    let unready = caracal_testkit::wait_for(Duration::from_secs(20), Duration::from_millis(50), || async {
        let body: serde_json::Value = reqwest::get(format!("{}/ready", api.base)).await.ok()?.json().await.ok()?;
        (body["checks"]["postgres:writable"][0]["status"] == "fail").then_some(body)
    })
    .await;
    assert!(unready.is_ok(), "the api on the standby fails postgres:writable: {unready:?}");
    tokio::time::sleep(PROMOTE_AFTER.saturating_sub(killed.elapsed())).await;
    standby.promote().expect("promote the standby");
    let promoted = killed.elapsed();
    let watchers: Vec<_> = [(&api, "api"), (&coordinator, "coordinator"), (&audit, "audit")]
        .into_iter()
        .map(|(service, name)| {
            let base = service.base.clone();
            tokio::spawn(async move {
                let recovered =
                    caracal_testkit::wait_for(Duration::from_secs(30), Duration::from_millis(50), || async {
                        reqwest::get(format!("{base}/ready")).await.ok().filter(|r| r.status() == 200)
                    })
                    .await;
                assert!(recovered.is_ok(), "{name} ready again without a restart");
                format!("{name} {:.1?}", killed.elapsed())
            })
        })
        .collect();
    for w in writers {
        w.await.expect("a writer");
    }
    let mut ready_after = Vec::new();
    for watcher in watchers {
        ready_after.push(watcher.await.expect("a watcher"));
    }

    let (codes, acknowledged) = {
        let seen = outcome.lock().expect("lock");
        (seen.codes.clone(), seen.acknowledged.clone())
    };
    eprintln!(
        "failover: kill → promote {promoted:.1?}; kill → ready: {}; answers {codes:?}; {} acknowledged",
        ready_after.join(", "),
        acknowledged.len()
    );
    assert_eq!(acknowledged.len(), WRITES, "every write acknowledged in the end: {codes:?}");
    let failed: Vec<_> = codes.iter().filter(|(code, _)| **code >= 500 && **code != 503).collect();
    assert!(failed.is_empty(), "no 5xx but 503: {codes:?}");
    assert!(codes.get(&503).copied().unwrap_or(0) > 0, "the switch was felt as 503s: {codes:?}");

    // On the promoted standby: every acknowledged target, once, and its event in the ledger once.
    let pool = sqlx::PgPool::connect(&url).await.expect("connect to the new primary");
    assert_stored_and_ledgered_once(&pool, &acknowledged, WRITES, Duration::from_secs(60)).await;

    // The old primary comes back as a standby of the new one; an api that reaches it (a stale
    // address, a proxy whose health check only asks for TCP) is unready and answers 503.
    primary.rejoin_as_standby_of(&standby).expect("the old primary rejoins as a standby");
    let old_url = format!("postgres://postgres@127.0.0.1:{}/{name}", primary.port());
    let caught_up =
        caracal_testkit::poll::wait_for_blocking(Duration::from_secs(30), Duration::from_millis(100), || {
            primary.psql(&name, "SELECT count(*) FROM targets").is_ok_and(|n| n.trim() == WRITES.to_string())
        });
    assert!(caught_up, "the rejoined standby replays the new primary's writes");
    let port = caracal_testkit::free_port().expect("port").to_string();
    let redis_url = redis.url();
    let stale = caracal_testkit::ServiceProcess::spawn(
        std::path::Path::new(API),
        &[],
        &[
            ("PORT", port.as_str()),
            ("DATABASE_URL", old_url.as_str()),
            ("REDIS_URL", redis_url.as_str()),
            ("CARACAL_MODE", "dev"),
            ("CARACAL_CHECKS__INTERVAL", "200ms"),
        ],
    )
    .expect("spawn an api on the old primary");
    let base = format!("http://127.0.0.1:{port}");
    let unwritable = caracal_testkit::wait_for(Duration::from_secs(30), Duration::from_millis(50), || async {
        let response = reqwest::get(format!("{base}/ready")).await.ok()?;
        let status = response.status().as_u16();
        let body: serde_json::Value = response.json().await.ok()?;
        (body["checks"]["postgres:writable"][0]["status"] == "fail").then_some((status, body))
    })
    .await;
    let Ok((status, body)) = unwritable else {
        panic!("postgres:writable fails on the old primary: {}", stale.stderr())
    };
    assert_eq!(status, 503, "unready on the rejoined standby: {body}");
    let written = reqwest::Client::new()
        .post(format!("{base}/v1/targets"))
        .json(&serde_json::json!({"name": "late", "instances": ["http://127.0.0.1:9/"]}))
        .send()
        .await
        .expect("answered");
    assert_eq!(written.status(), 503, "a write reaching the standby is a 503, not a 500");
}
