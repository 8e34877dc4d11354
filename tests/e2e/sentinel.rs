//! A Redis failover under load, as operators run one: a master, a replica and three Sentinels
//! (`redis-server --sentinel`), the built services pointed at the Sentinels
//! (`redis_sentinel.*`, no `REDIS_URL`), and writes running. The master is SIGKILLed; the
//! Sentinels promote the replica. Every service must be ready again without a restart, on the
//! new master, and every acknowledged write must reach the audit ledger exactly once.
//!
//! Asynchronous replication means a promoted replica may lack the stream's tail. The test
//! makes sure it does: for a moment before the kill the replica is cut off from the master
//! (its link killed, a wrong `masterauth` keeping it from coming back) and the audit consumer
//! is frozen, so entries the relay writes then are on the dead master only, read by nobody;
//! the ledger reconciler must heal them from the outbox.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use caracal_testkit::Signal;
use caracal_testkit::postgres::PostgresBuilder;
use caracal_testkit::redis::RedisBuilder;
use caracal_testkit::sentinel::Sentinel;

use crate::failover::{Outcome, assert_stored_and_ledgered_once, writer};
use crate::support;

const API: &str = env!("CARGO_BIN_EXE_caracal-api");
const COORDINATOR: &str = env!("CARGO_BIN_EXE_caracal-coordinator");
const AUDIT: &str = env!("CARGO_BIN_EXE_caracal-audit");
const STS: &str = env!("CARGO_BIN_EXE_caracal-sts");
const CONTROL: &str = env!("CARGO_BIN_EXE_caracal-control");
const WRITES: usize = 1_500;
const MASTER: &str = "caracal";

#[tokio::test(flavor = "multi_thread")]
async fn a_redis_master_killed_mid_writes_is_followed_to_the_promoted_replica_and_nothing_is_lost() {
    let postgres = PostgresBuilder::default().start().expect("postgres");
    let database_url = postgres.fresh_database("sentinel").expect("database");
    let mut master = RedisBuilder::default().start().expect("a master");
    let replica = RedisBuilder::default().replica_of(master.port()).start().expect("a replica");
    let linked = caracal_testkit::poll::wait_for_blocking(Duration::from_secs(15), Duration::from_millis(50), || {
        replica.command("INFO replication").is_ok_and(|info| info.contains("master_link_status:up"))
    });
    assert!(linked, "the replica follows the master");
    let sentinels: Vec<Sentinel> =
        (0..3).map(|_| Sentinel::start(MASTER, master.port(), 2).expect("a sentinel")).collect();
    // Sentinels find each other and the replica through the master's hello channel (every 2 s).
    let acquainted =
        caracal_testkit::poll::wait_for_blocking(Duration::from_secs(30), Duration::from_millis(100), || {
            sentinels.iter().all(|s| s.peers(MASTER) == 2)
        });
    assert!(acquainted, "the three sentinels know each other");

    support::migrate_url(&database_url, &master.url());
    let nodes = format!("[{}]", sentinels.iter().map(|s| format!("\"{}\"", s.url())).collect::<Vec<_>>().join(","));
    let start = |binary: &'static str, extra: &'static [(&'static str, &'static str)]| {
        let (database_url, nodes) = (database_url.clone(), nodes.clone());
        async move {
            let mut env = vec![
                ("DATABASE_URL", database_url.as_str()),
                ("CARACAL_REDIS_SENTINEL__MASTER", MASTER),
                ("CARACAL_REDIS_SENTINEL__NODES", nodes.as_str()),
            ];
            env.extend_from_slice(extra);
            support::start_env(binary, caracal_testkit::free_port().expect("port"), &env).await
        }
    };
    let api = start(API, &[]).await;
    let coordinator = start(COORDINATOR, &[("CARACAL_COORDINATOR__RELAY__BACKOFF_CAP", "500ms")]).await;
    let audit = start(
        AUDIT,
        &[
            ("CARACAL_AUDIT__BLOCK", "200ms"),
            ("CARACAL_AUDIT__LEDGER__INTERVAL", "1s"),
            ("CARACAL_AUDIT__LEDGER__GRACE", "2s"),
        ],
    )
    .await;
    let sts = start(STS, &[]).await;
    let control = start(CONTROL, &[]).await;
    let services =
        [(&api, "api"), (&coordinator, "coordinator"), (&audit, "audit"), (&sts, "sts"), (&control, "control")];

    let outcome = Arc::new(Mutex::new(Outcome::default()));
    let writers: Vec<_> =
        (0..4).map(|w| tokio::spawn(writer(api.base.clone(), w, WRITES / 4, Arc::clone(&outcome)))).collect();
    // A quarter of the writes in, the replica and the audit consumer fall behind for a moment
    // while the relay goes on writing to the master; then the master dies.
    caracal_testkit::wait_for(Duration::from_secs(60), Duration::from_millis(10), || async {
        (outcome.lock().expect("lock").acknowledged.len() >= WRITES / 4).then_some(())
    })
    .await
    .expect("writes are acknowledged before the kill");
    audit.process.signal(Signal::SIGSTOP);
    replica.command("CONFIG SET masterauth not-the-password").expect("the replica cannot rejoin");
    master.command("CLIENT KILL TYPE replica").expect("the replication link is cut");
    tokio::time::sleep(Duration::from_millis(600)).await;
    let tail = last_entry(&master.url()).await.expect("the relay wrote to the master");
    master.kill();
    let killed = Instant::now();
    audit.process.signal(Signal::SIGCONT);
    let unready = caracal_testkit::wait_for(Duration::from_secs(10), Duration::from_millis(20), || async {
        let body: serde_json::Value = reqwest::get(format!("{}/ready", api.base)).await.ok()?.json().await.ok()?;
        (body["checks"]["redis:connectivity"][0]["status"] == "fail").then_some(())
    })
    .await;
    assert!(unready.is_ok(), "the api notices its Redis master is gone");
    let promoted = caracal_testkit::wait_for(Duration::from_secs(30), Duration::from_millis(20), || async {
        sentinels.iter().all(|s| s.master_port(MASTER) == Some(replica.port())).then(|| killed.elapsed())
    })
    .await
    .expect("the sentinels promote the replica");
    let kept: Option<String> =
        redis_query(&replica.url(), redis::cmd("XRANGE").arg(EVENTS).arg(&tail).arg(&tail)).await;
    assert_eq!(kept.as_deref(), Some("[]"), "the promoted replica lacks the stream's tail ({tail})");
    let watchers: Vec<_> = services
        .iter()
        .map(|(service, name)| {
            let (base, name) = (service.base.clone(), *name);
            tokio::spawn(async move {
                // The old master is dead: a passing Redis check now means the new one answered.
                let recovered =
                    caracal_testkit::wait_for(Duration::from_secs(30), Duration::from_millis(20), || async {
                        reqwest::get(format!("{base}/ready")).await.ok().filter(|r| r.status() == 200)
                    })
                    .await;
                assert!(recovered.is_ok(), "{name} ready again without a restart");
                (name, killed.elapsed())
            })
        })
        .collect();
    let mut ready_after = Vec::new();
    for watcher in watchers {
        ready_after.push(watcher.await.expect("a watcher"));
    }
    for w in writers {
        w.await.expect("a writer");
    }

    let (codes, acknowledged) = {
        let seen = outcome.lock().expect("lock");
        (seen.codes.clone(), seen.acknowledged.clone())
    };
    assert_eq!(acknowledged.len(), WRITES, "every write acknowledged in the end: {codes:?}");
    let failed: Vec<_> = codes.iter().filter(|(code, _)| **code >= 500 && **code != 503).collect();
    assert!(failed.is_empty(), "no 5xx but 503: {codes:?}");

    // Every acknowledged creation in the ledger exactly once, through the new master.
    let pool = sqlx::PgPool::connect(&database_url).await.expect("connect");
    assert_stored_and_ledgered_once(&pool, &acknowledged, WRITES, Duration::from_secs(90)).await;
    let newest = last_entry(&replica.url()).await.expect("entries on the promoted replica");
    assert!(entry_id(&newest) > entry_id(&tail), "the relay writes to the promoted replica after the kill");
    let healed = support::metric(&audit.base, "caracal_audit_ledger_healed_total").await.unwrap_or(0.0);
    assert!(healed > 0.0, "the entries lost with the master were healed into the ledger from the outbox");
    let resets = support::metric(&audit.base, "caracal_audit_stream_resets_total").await.unwrap_or(0.0);
    let slowest = ready_after.iter().map(|(_, after)| *after).max().unwrap_or_default();
    eprintln!(
        "sentinel failover: kill → promoted {promoted:.1?}; kill → ready: {}; all ready {slowest:.1?}; \
         answers {codes:?}; ledger rows healed {healed}; stream resets {resets}",
        ready_after.iter().map(|(name, after)| format!("{name} {after:.1?}")).collect::<Vec<_>>().join(", "),
    );
}

const EVENTS: &str = "caracal.events";

/// Runs `command` on the Redis at `url` and renders its reply (`None` if it cannot).
async fn redis_query(url: &str, command: &redis::Cmd) -> Option<String> {
    let client = redis::Client::open(url).ok()?;
    let mut connection = client.get_multiplexed_async_connection().await.ok()?;
    let reply: redis::Value = command.query_async(&mut connection).await.ok()?;
    Some(match reply {
        redis::Value::Array(items) if items.is_empty() => "[]".to_string(),
        other => format!("{other:?}"),
    })
}

/// The id of the newest entry of the events stream on the Redis at `url`.
async fn last_entry(url: &str) -> Option<String> {
    let client = redis::Client::open(url).ok()?;
    let mut connection = client.get_multiplexed_async_connection().await.ok()?;
    let reply: redis::streams::StreamRangeReply = redis::cmd("XREVRANGE")
        .arg(EVENTS)
        .arg("+")
        .arg("-")
        .arg("COUNT")
        .arg(1)
        .query_async(&mut connection)
        .await
        .ok()?;
    reply.ids.first().map(|entry| entry.id.clone())
}

/// A stream entry id (`<ms>-<seq>`) as numbers, for ordering.
fn entry_id(id: &str) -> (u64, u64) {
    let (ms, seq) = id.split_once('-').unwrap_or((id, "0"));
    (ms.parse().unwrap_or(0), seq.parse().unwrap_or(0))
}
