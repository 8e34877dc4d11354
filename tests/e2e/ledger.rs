//! The ledger stays complete whatever Redis loses: the built coordinator and audit binaries on
//! real servers, one fault per test. Each test asserts exactly one ledger row per outbox id
//! (nothing lost, nothing twice) and that the platform recovers by itself, without a restart;
//! those where the stream loses entries also watch `caracal_audit_ledger_gap` rise during the
//! fault and return to 0 once healed.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use caracal_testkit::Signal;

use crate::support::{self, Service, Stores, metric};

const COORDINATOR: &str = env!("CARGO_BIN_EXE_caracal-coordinator");
const AUDIT: &str = env!("CARGO_BIN_EXE_caracal-audit");

/// A relay that retries quickly, so a test waits seconds, not minutes.
const COORDINATOR_ENV: [(&str, &str); 3] = [
    ("CARACAL_COORDINATOR__RELAY__BACKOFF_BASE", "100ms"),
    ("CARACAL_COORDINATOR__RELAY__BACKOFF_CAP", "500ms"),
    ("CARACAL_COORDINATOR__REFRESH", "500ms"),
];
/// A 2 s grace period and a reconciliation every second; dead consumers' entries are taken
/// over after 2 s.
const AUDIT_ENV: [(&str, &str); 4] = [
    ("CARACAL_AUDIT__BLOCK", "200ms"),
    ("CARACAL_AUDIT__CLAIM_IDLE", "2s"),
    ("CARACAL_AUDIT__LEDGER__GRACE", "2s"),
    ("CARACAL_AUDIT__LEDGER__INTERVAL", "1s"),
];

async fn coordinator(stores: &Stores) -> Service {
    support::start(COORDINATOR, stores, &COORDINATOR_ENV).await
}

async fn audit(stores: &Stores) -> Service {
    support::start(AUDIT, stores, &AUDIT_ENV).await
}

/// Writes `n` events to the outbox in one statement, as a burst of changes would.
async fn insert(pool: &sqlx::PgPool, n: i64) {
    sqlx::query(
        "INSERT INTO outbox (event_type, target, payload) \
         SELECT 'fault.test', 'faults', jsonb_build_object('n', g) FROM generate_series(1, $1) g",
    )
    .bind(n)
    .execute(pool)
    .await
    .expect("insert events");
}

async fn scalar(pool: &sqlx::PgPool, sql: &'static str) -> i64 {
    sqlx::query_scalar(sql).fetch_one(pool).await.expect(sql)
}

/// Waits until every outbox row is dispatched (the relay sent it to the stream).
async fn dispatched(pool: &sqlx::PgPool) {
    let done = caracal_testkit::wait_for(Duration::from_secs(30), Duration::from_millis(50), || async {
        (scalar(pool, "SELECT count(*) FROM outbox WHERE dispatched_at IS NULL").await == 0).then_some(())
    })
    .await;
    assert!(done.is_ok(), "the relay did not dispatch the outbox");
}

/// Waits until the ledger holds `n` rows and the outbox is all dispatched, then asserts the pipeline's promise: exactly one
/// ledger row per outbox id, none missing, nothing left undispatched or dead.
async fn exactly_once(pool: &sqlx::PgPool, n: i64, audits: &[&Service]) {
    let done = caracal_testkit::wait_for(Duration::from_secs(60), Duration::from_millis(100), || async {
        let ledger = scalar(pool, "SELECT count(*) FROM audit_events").await;
        let undispatched = scalar(pool, "SELECT count(*) FROM outbox WHERE dispatched_at IS NULL").await;
        (ledger >= n && undispatched == 0).then_some(())
    })
    .await;
    let (outbox, ledger, distinct, missing, undispatched, dead): (i64, i64, i64, i64, i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM outbox), (SELECT count(*) FROM audit_events), \
                (SELECT count(DISTINCT outbox_id) FROM audit_events), \
                (SELECT count(*) FROM outbox o WHERE NOT EXISTS (SELECT 1 FROM audit_events a WHERE a.outbox_id = o.id)), \
                (SELECT count(*) FROM outbox WHERE dispatched_at IS NULL), (SELECT count(*) FROM outbox WHERE dead_at IS NOT NULL)",
    )
    .fetch_one(pool)
    .await
    .expect("counts");
    let logs: Vec<String> = audits.iter().map(|a| a.process.stdout()).collect();
    assert!(done.is_ok(), "the ledger has {ledger} of {n}; audit logs:\n{}", logs.join("\n---\n"));
    assert_eq!(
        (outbox, ledger, distinct, missing, undispatched, dead),
        (n, n, n, 0, 0, 0),
        "exactly one ledger row per outbox id, none lost"
    );
}

/// Writes 20 events every 25 ms until stopped, as a busy platform would.
struct Producer {
    producing: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<i64>,
}

impl Producer {
    fn start(pool: &sqlx::PgPool) -> Producer {
        let producing = Arc::new(AtomicBool::new(true));
        let (pool, running) = (pool.clone(), Arc::clone(&producing));
        let task = tokio::spawn(async move {
            let mut sent = 0;
            while running.load(Ordering::SeqCst) {
                insert(&pool, 20).await;
                sent += 20;
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
            sent
        });
        Producer { producing, task }
    }

    /// Stops producing; returns how many events were written.
    async fn stop(self) -> i64 {
        self.producing.store(false, Ordering::SeqCst);
        self.task.await.expect("producer")
    }
}

/// Scrapes the audits' `caracal_audit_ledger_gap` every 50 ms in the background and keeps the
/// highest value seen; notes whether `/ready` ever answered 200 with `audit:ledger_gap` warning.
struct GapWatch {
    max: Arc<AtomicU64>,
    warned: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
}

impl GapWatch {
    fn start(audits: &[&Service]) -> GapWatch {
        let bases: Vec<String> = audits.iter().map(|a| a.base.clone()).collect();
        let max = Arc::new(AtomicU64::new(0));
        let warned = Arc::new(AtomicBool::new(false));
        let stop = Arc::new(AtomicBool::new(false));
        let (seen, warning, done) = (Arc::clone(&max), Arc::clone(&warned), Arc::clone(&stop));
        tokio::spawn(async move {
            while !done.load(Ordering::SeqCst) {
                for base in &bases {
                    if let Some(gap) = metric(base, "caracal_audit_ledger_gap").await {
                        seen.fetch_max(gap as u64, Ordering::SeqCst);
                    }
                    if let Ok(answer) = reqwest::get(format!("{base}/ready")).await
                        && answer.status() == 200
                        && let Ok(body) = answer.json::<serde_json::Value>().await
                        && body["checks"]["audit:ledger_gap"][0]["status"] == "warn"
                    {
                        warning.store(true, Ordering::SeqCst);
                    }
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        });
        GapWatch { max, warned, stop }
    }

    /// The highest gap seen so far.
    fn max(&self) -> u64 {
        self.max.load(Ordering::SeqCst)
    }
}

impl Drop for GapWatch {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

/// Asserts the gap metric rose during the fault, every audit reports 0 again, and the audits
/// together healed at least `at_least` rows from the outbox (rows only the outbox still had).
async fn healed(watch: &GapWatch, audits: &[&Service], at_least: u64) {
    let settled = caracal_testkit::wait_for(Duration::from_secs(20), Duration::from_millis(100), || async {
        for audit in audits {
            if metric(&audit.base, "caracal_audit_ledger_gap").await != Some(0.0) {
                return None;
            }
        }
        Some(())
    })
    .await;
    assert!(settled.is_ok(), "the gap metric returns to 0 once the ledger is healed");
    assert!(watch.max() > 0, "the gap metric rose during the fault");
    assert!(
        watch.warned.load(Ordering::SeqCst),
        "audit:ledger_gap warned while the gap was open, and the audit stayed ready (200)"
    );
    let mut total = 0.0;
    for audit in audits {
        total += metric(&audit.base, "caracal_audit_ledger_healed_total").await.unwrap_or(0.0);
    }
    // A consumer paused inside a blocking read still receives the first entries published after
    // it stopped (Redis hands them to its socket), so a handful of "lost" rows arrive by stream.
    let slack = 10.0;
    assert!(total >= at_least as f64 - slack, "{total} rows healed from the outbox, expected about {at_least}");
}

async fn resets(audits: &[&Service], reason: &str) -> f64 {
    let mut total = 0.0;
    for audit in audits {
        total += metric(&audit.base, &format!("caracal_audit_stream_resets_total{{reason=\"{reason}\"}}"))
            .await
            .unwrap_or(0.0);
    }
    total
}

async fn ready(service: &Service) -> u16 {
    reqwest::get(format!("{}/ready", service.base)).await.map(|r| r.status().as_u16()).unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread")]
async fn redis_restarted_empty_while_every_consumer_is_paused_loses_nothing() {
    let mut stores = Stores::start_volatile();
    support::migrate(&stores);
    let pool = stores.pool().await;
    let coordinators = [coordinator(&stores).await, coordinator(&stores).await];
    let audits = [audit(&stores).await, audit(&stores).await];
    let both: Vec<&Service> = audits.iter().collect();
    let watch = GapWatch::start(&both);
    insert(&pool, 500).await;
    exactly_once(&pool, 500, &both).await;

    // Both consumers stop; 1,500 events reach the stream and wait there, undelivered.
    for audit in &audits {
        audit.process.signal(Signal::SIGSTOP);
    }
    insert(&pool, 1_500).await;
    dispatched(&pool).await;
    // Redis restarts without persistence: the stream, its entries and the group are gone.
    stores.redis.restart().expect("restart redis");
    insert(&pool, 500).await;
    dispatched(&pool).await;
    for audit in &audits {
        audit.process.signal(Signal::SIGCONT);
    }

    exactly_once(&pool, 2_500, &both).await;
    healed(&watch, &both, 1_500).await;
    assert_eq!(resets(&both, "group_missing").await, 1.0, "one replica recreated the group and said so");
    for audit in &audits {
        assert_eq!(ready(audit).await, 200, "recovered without a restart");
    }
    let logs: String = audits.iter().map(|a| a.process.stdout()).collect();
    assert_eq!(logs.matches("the stream went backwards").count(), 1, "logged once:\n{logs}");
    for service in coordinators.into_iter().chain(audits) {
        service.stop();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn flushall_mid_run_loses_nothing() {
    let stores = Stores::start_volatile();
    support::migrate(&stores);
    let pool = stores.pool().await;
    let coordinator = coordinator(&stores).await;
    let audit = audit(&stores).await;
    let watch = GapWatch::start(&[&audit]);
    // Events keep coming throughout.
    let producer = Producer::start(&pool);
    tokio::time::sleep(Duration::from_secs(1)).await;
    // The consumer falls behind (paused), then Redis is flushed under it.
    audit.process.signal(Signal::SIGSTOP);
    tokio::time::sleep(Duration::from_secs(1)).await;
    stores.redis.command("FLUSHALL").expect("flushall");
    tokio::time::sleep(Duration::from_millis(500)).await;
    audit.process.signal(Signal::SIGCONT);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let sent = producer.stop().await;

    exactly_once(&pool, sent, &[&audit]).await;
    healed(&watch, &[&audit], 1).await;
    assert_eq!(ready(&audit).await, 200);
    coordinator.stop();
    audit.stop();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stream_trimmed_below_the_group_or_behind_it_loses_nothing() {
    let stores = Stores::start();
    support::migrate(&stores);
    let pool = stores.pool().await;
    let coordinator = coordinator(&stores).await;
    let audit = audit(&stores).await;
    let watch = GapWatch::start(&[&audit]);
    insert(&pool, 200).await;
    exactly_once(&pool, 200, &[&audit]).await;

    // 1,000 entries wait for the paused consumer; the stream is trimmed to its last 100.
    audit.process.signal(Signal::SIGSTOP);
    insert(&pool, 1_000).await;
    dispatched(&pool).await;
    stores.redis.command("XTRIM caracal.events MAXLEN 100").expect("trim");
    audit.process.signal(Signal::SIGCONT);
    exactly_once(&pool, 1_200, &[&audit]).await;
    healed(&watch, &[&audit], 900).await;

    // The group's position jumps past the stream's last entry (as when the stream under it is
    // replaced by an older one): new entries would sort below it and never be delivered.
    stores.redis.command("XGROUP SETID caracal.events audit 99999999999999-0").expect("setid");
    insert(&pool, 300).await;
    exactly_once(&pool, 1_500, &[&audit]).await;
    let reset = caracal_testkit::wait_for(Duration::from_secs(10), Duration::from_millis(100), || async {
        (resets(&[&audit], "stream_behind").await >= 1.0).then_some(())
    })
    .await;
    assert!(reset.is_ok(), "the consumer noticed the group was ahead of its stream");
    assert!(audit.process.stdout().contains("the group's position was past the stream's last entry"));
    coordinator.stop();
    audit.stop();
}

#[tokio::test(flavor = "multi_thread")]
async fn an_audit_killed_mid_batch_loses_nothing() {
    const EVENTS: i64 = 20_000;
    let stores = Stores::start();
    support::migrate(&stores);
    let pool = stores.pool().await;
    let coordinator = coordinator(&stores).await;
    let victim = audit(&stores).await;
    let survivor = audit(&stores).await;
    insert(&pool, EVENTS).await;
    // Kill one consumer as soon as the ledger starts filling: it holds a batch in flight.
    let started = caracal_testkit::wait_for(Duration::from_secs(30), Duration::from_millis(5), || async {
        let n = scalar(&pool, "SELECT count(*) FROM audit_events").await;
        (n > 0).then_some(n)
    })
    .await
    .expect("the ledger starts filling");
    victim.process.signal(Signal::SIGKILL);
    assert!(started < EVENTS, "killed mid-run ({started} of {EVENTS} recorded)");

    exactly_once(&pool, EVENTS, &[&survivor]).await;
    assert_eq!(ready(&survivor).await, 200);
    coordinator.stop();
    survivor.stop();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_coordinator_killed_between_xadd_and_commit_loses_nothing() {
    const EVENTS: i64 = 1_000;
    let stores = Stores::start();
    support::migrate(&stores);
    let pool = stores.pool().await;
    // The victim's relay stalls in COMMIT, after its XADD: a deferred trigger sleeps there for
    // transactions of the connection named `victim` only.
    sqlx::raw_sql(
        "CREATE FUNCTION stall_victim() RETURNS trigger LANGUAGE plpgsql AS $$ \
         BEGIN IF current_setting('application_name') = 'victim' THEN PERFORM pg_sleep(600); END IF; RETURN NULL; END $$; \
         CREATE CONSTRAINT TRIGGER stall AFTER UPDATE ON outbox DEFERRABLE INITIALLY DEFERRED \
           FOR EACH ROW EXECUTE FUNCTION stall_victim();",
    )
    .execute(&pool)
    .await
    .expect("trigger");
    let audit = audit(&stores).await;
    let victim_url = format!("{}?application_name=victim", stores.database_url);
    let mut env = COORDINATOR_ENV.to_vec();
    env.push(("DATABASE_URL", &victim_url));
    let victim = support::start(COORDINATOR, &stores, &env).await;

    insert(&pool, EVENTS).await;
    // The victim has sent the batch to the stream and not committed it.
    let xadded = caracal_testkit::wait_for(Duration::from_secs(20), Duration::from_millis(50), || async {
        let len: i64 = stores.redis.command("XLEN caracal.events").ok()?.trim().trim_start_matches(':').parse().ok()?;
        (len >= EVENTS).then_some(())
    })
    .await;
    assert!(xadded.is_ok(), "the victim published the batch");
    assert_eq!(scalar(&pool, "SELECT count(*) FROM outbox WHERE dispatched_at IS NOT NULL").await, 0, "not committed");
    // A second replica is running when the first dies.
    let survivor = coordinator(&stores).await;
    victim.process.signal(Signal::SIGKILL);
    // PostgreSQL notices the dead client at its next write; end the stalled backend now.
    sqlx::query("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'victim'")
        .execute(&pool)
        .await
        .expect("terminate");

    exactly_once(&pool, EVENTS, &[&audit]).await;
    // Every event went out twice (the victim's uncommitted batch, then the survivor's), and
    // the ledger absorbed the second copies.
    let len: i64 =
        stores.redis.command("XLEN caracal.events").expect("xlen").trim().trim_start_matches(':').parse().expect("len");
    assert!(len >= 2 * EVENTS, "{len} entries");
    let duplicates = caracal_testkit::wait_for(Duration::from_secs(10), Duration::from_millis(100), || async {
        let d = metric(&audit.base, "caracal_audit_events_duplicate_total").await?;
        (d >= EVENTS as f64).then_some(d)
    })
    .await;
    assert!(duplicates.is_ok(), "the second copies were delivered and absorbed");
    survivor.stop();
    audit.stop();
}

#[tokio::test(flavor = "multi_thread")]
async fn postgres_frozen_longer_than_the_check_timeout_loses_nothing() {
    let stores = Stores::start();
    support::migrate(&stores);
    let pool = stores.pool().await;
    let coordinator = coordinator(&stores).await;
    let audit = audit(&stores).await;
    let producer = Producer::start(&pool);
    tokio::time::sleep(Duration::from_secs(1)).await;
    // The whole server, backends included, stops for 4 s (the checks time out after 1 s).
    stores.postgres.pause();
    let unready = caracal_testkit::wait_for(Duration::from_secs(3), Duration::from_millis(100), || async {
        (ready(&audit).await == 503 && ready(&coordinator).await == 503).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    stores.postgres.resume();
    assert!(unready.is_ok(), "both services went unready while PostgreSQL was frozen");
    tokio::time::sleep(Duration::from_secs(1)).await;
    let sent = producer.stop().await;

    exactly_once(&pool, sent, &[&audit]).await;
    for service in [&audit, &coordinator] {
        let back = caracal_testkit::wait_for(Duration::from_secs(10), Duration::from_millis(100), || async {
            (ready(service).await == 200).then_some(())
        })
        .await;
        assert!(back.is_ok(), "{} is ready again without a restart", service.base);
    }
    coordinator.stop();
    audit.stop();
}
