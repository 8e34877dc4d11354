//! Upgrades without an outage: a running release stays ready when the next release's migration
//! is declared compatible with it, and turns unready, naming the versions, when it is not.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::http::StatusCode;
use axum::routing::get;
use caracal_testkit::ServiceProcess;

use crate::support::{self, Stores};

const API: &str = env!("CARGO_BIN_EXE_caracal-api");
const COORDINATOR: &str = env!("CARGO_BIN_EXE_caracal-coordinator");
const AUDIT: &str = env!("CARGO_BIN_EXE_caracal-audit");
const STS: &str = env!("CARGO_BIN_EXE_caracal-sts");
const GATEWAY: &str = env!("CARGO_BIN_EXE_caracal-gateway");
const CONTROL: &str = env!("CARGO_BIN_EXE_caracal-control");

/// Every service's `/ready` status code, after `settle` (several check intervals).
async fn ready_codes(services: &[&support::Service], settle: Duration) -> Vec<(String, u16, String)> {
    tokio::time::sleep(settle).await;
    let mut out = Vec::new();
    for s in services {
        let r = reqwest::get(format!("{}/ready", s.base)).await.expect("ready");
        out.push((s.base.clone(), r.status().as_u16(), r.text().await.unwrap_or_default()));
    }
    out
}

/// Records `version` as applied, declared compatible with builds of `compatible_with`, as a
/// newer release's `--migrate` would.
async fn newer_migration(pool: &sqlx::PgPool, version: i64, compatible_with: i64) {
    sqlx::query("INSERT INTO _schema_compatibility (version, compatible_with) VALUES ($1, $2)")
        .bind(version)
        .bind(compatible_with)
        .execute(pool)
        .await
        .expect("declare");
    sqlx::query(
        "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time) \
         VALUES ($1, 'a newer release', true, '\\x00', 0)",
    )
    .bind(version)
    .execute(pool)
    .await
    .expect("a newer release's migration");
}

/// The reproduction: a row for the next version in `_sqlx_migrations` — once with a
/// declaration of compatibility (every service stays ready), once without (every service is
/// unready, saying which versions).
#[tokio::test(flavor = "multi_thread")]
async fn a_newer_compatible_schema_leaves_every_service_ready_and_an_incompatible_one_names_the_versions() {
    let stores = Stores::start();
    support::migrate(&stores);
    let services = [
        support::start(API, &stores, &[]).await,
        support::start(COORDINATOR, &stores, &[]).await,
        support::start(AUDIT, &stores, &[]).await,
        support::start(STS, &stores, &[]).await,
        support::start(GATEWAY, &stores, &[]).await,
        support::start(CONTROL, &stores, &[]).await,
    ];
    let all: Vec<&support::Service> = services.iter().collect();
    let pool = stores.pool().await;
    let next = caracal_store::expected_version() + 1;
    newer_migration(&pool, next, next - 1).await;
    // Check intervals are 200 ms: 2 s is ten evaluations.
    for (base, code, body) in ready_codes(&all, Duration::from_secs(2)).await {
        assert_eq!(code, 200, "{base} turned unready on a compatible schema: {body}");
    }

    // The release after it, which needs builds of `next`: this build is past its window.
    newer_migration(&pool, next + 1, next).await;
    let named = format!("schema at version {}, this build expects {}", next + 1, next - 1);
    for (base, code, body) in ready_codes(&all, Duration::from_secs(2)).await {
        assert_eq!(code, 503, "{base} stayed ready past its window: {body}");
        assert!(body.contains(&named), "{base} does not name the versions ({named}): {body}");
    }
    for s in services {
        s.stop();
    }
}

/// The previous release's binaries (`releases.toml`), built once into
/// `target/previous-release/bin` by `infra/scripts/build-previous-release.sh` (a no-op when
/// they are there; `.ci/run` builds them before the tests).
fn previous_release() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let status = std::process::Command::new("bash")
        .arg(root.join("infra/scripts/build-previous-release.sh"))
        .status()
        .expect("run build-previous-release.sh");
    assert!(status.success(), "the previous release did not build");
    root.join("target/previous-release/bin")
}

/// One replica the test runs, old or new.
struct Replica {
    service: &'static str,
    release: &'static str,
    base: String,
    /// In the Service's endpoints: given traffic when ready.
    in_rotation: bool,
    /// What its last `/ready` answered.
    ready: bool,
}

/// The replicas, watched as Kubernetes would: `/ready` every 100 ms.
#[derive(Clone, Default)]
struct Fleet(Arc<Mutex<Vec<Replica>>>);

/// What the watcher saw, per service: rounds in which no replica in rotation was ready, and
/// the longest such stretch.
#[derive(Default, Debug)]
struct Gaps {
    rounds: u64,
    empty_rounds: BTreeMap<&'static str, u64>,
    longest: BTreeMap<&'static str, Duration>,
}

impl Fleet {
    fn add(&self, service: &'static str, release: &'static str, base: &str) {
        self.0.lock().expect("fleet").push(Replica {
            service,
            release,
            base: base.to_string(),
            in_rotation: true,
            ready: true,
        });
    }

    fn out_of_rotation(&self, base: &str) {
        self.0.lock().expect("fleet").retain(|r| r.base != base);
    }

    /// The ready API replicas in rotation.
    fn apis(&self) -> Vec<String> {
        let fleet = self.0.lock().expect("fleet");
        fleet.iter().filter(|r| r.service == "api" && r.in_rotation && r.ready).map(|r| r.base.clone()).collect()
    }

    fn releases(&self) -> Vec<(&'static str, &'static str)> {
        self.0.lock().expect("fleet").iter().map(|r| (r.service, r.release)).collect()
    }

    /// Watches until `stop`, returning what it saw.
    async fn watch(self, stop: Arc<AtomicBool>) -> Gaps {
        let http = reqwest::Client::builder().timeout(Duration::from_secs(1)).build().expect("client");
        let mut gaps = Gaps::default();
        let mut since: BTreeMap<&'static str, Instant> = BTreeMap::new();
        while !stop.load(Ordering::SeqCst) {
            let replicas: Vec<(&'static str, String)> =
                self.0.lock().expect("fleet").iter().map(|r| (r.service, r.base.clone())).collect();
            let mut ready_services = std::collections::BTreeSet::new();
            let mut all = std::collections::BTreeSet::new();
            for (service, base) in replicas {
                all.insert(service);
                let ok = http.get(format!("{base}/ready")).send().await.is_ok_and(|r| r.status() == 200);
                if ok {
                    ready_services.insert(service);
                }
                if let Some(r) = self.0.lock().expect("fleet").iter_mut().find(|r| r.base == base) {
                    r.ready = ok;
                }
            }
            gaps.rounds += 1;
            let now = Instant::now();
            for service in all {
                if ready_services.contains(service) {
                    since.remove(service);
                } else {
                    *gaps.empty_rounds.entry(service).or_default() += 1;
                    let start = *since.entry(service).or_insert(now);
                    let longest = gaps.longest.entry(service).or_default();
                    *longest = (*longest).max(now - start + WATCH_EVERY);
                }
            }
            tokio::time::sleep(WATCH_EVERY).await;
        }
        gaps
    }
}

/// One replica of the plan: its service, its binary's name, its environment.
type Step<'a> = (&'static str, &'a str, &'a [(&'a str, &'a str)]);

const WATCH_EVERY: Duration = Duration::from_millis(100);

/// What the writer saw.
#[derive(Default, Debug)]
struct Writes {
    acknowledged: Vec<String>,
    /// Reads answered 200 (`GET /v1/status` after each write).
    reads: u64,
    unavailable_503: u64,
    retry_after_missing: u64,
    other_5xx: Vec<String>,
    unreachable: u64,
}

/// Registers a target every 40 ms through a ready API replica in rotation, and reads the
/// status through the next one, until `stop`.
async fn write(fleet: Fleet, instance: String, stop: Arc<AtomicBool>) -> Writes {
    let http = reqwest::Client::builder().timeout(Duration::from_secs(10)).build().expect("client");
    let mut writes = Writes::default();
    let mut n = 0u64;
    while !stop.load(Ordering::SeqCst) {
        let apis = fleet.apis();
        let Some(base) = apis.get(n as usize % apis.len().max(1)).cloned() else {
            tokio::time::sleep(Duration::from_millis(40)).await;
            continue;
        };
        let name = format!("w-{n}");
        let sent = http
            .post(format!("{base}/v1/targets"))
            .json(&serde_json::json!({"name": name, "instances": [instance], "interval_ms": 5000}))
            .send()
            .await;
        match sent {
            Ok(r) if r.status() == 201 => writes.acknowledged.push(name),
            Ok(r) if r.status() == 503 => {
                writes.unavailable_503 += 1;
                if r.headers().get("retry-after").is_none() {
                    writes.retry_after_missing += 1;
                }
            }
            Ok(r) if r.status().is_server_error() => writes.other_5xx.push(format!(
                "{name} at {base}: {} {}",
                r.status(),
                r.text().await.unwrap_or_default()
            )),
            Ok(r) => panic!("{name} at {base}: {} {}", r.status(), r.text().await.unwrap_or_default()),
            Err(_) => writes.unreachable += 1,
        }
        let reader = &apis[(n as usize + 1) % apis.len()];
        match http.get(format!("{reader}/v1/status")).send().await {
            Ok(r) if r.status() == 200 => writes.reads += 1,
            Ok(r) if r.status() == 503 => {
                writes.unavailable_503 += 1;
                if r.headers().get("retry-after").is_none() {
                    writes.retry_after_missing += 1;
                }
            }
            Ok(r) if r.status().is_server_error() => {
                writes.other_5xx.push(format!("status read at {reader}: {}", r.status()))
            }
            Ok(r) => panic!("status read at {reader}: {}", r.status()),
            Err(_) => writes.unreachable += 1,
        }
        n += 1;
        tokio::time::sleep(Duration::from_millis(40)).await;
    }
    writes
}

/// A watched service whose `/ready` flips every 700 ms, so the coordinators record changes
/// throughout the upgrade.
async fn flapping() -> String {
    let started = Instant::now();
    let app = Router::new().route("/health", get(|| async { "ok" })).route(
        "/ready",
        get(move || async move {
            if (started.elapsed().as_millis() / 700).is_multiple_of(2) {
                StatusCode::OK
            } else {
                StatusCode::SERVICE_UNAVAILABLE
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://{addr}")
}

/// The previous release rolled to this one under load, as `helm upgrade` with
/// `maxUnavailable: 0` does it: this release's migration while the previous release serves,
/// then one replica at a time (the new one ready before the old one goes), then the
/// post-deployment step. Nothing acknowledged is lost or doubled, nothing but a 503 with
/// `Retry-After` is answered, no service is ever without a ready replica, and no status change
/// is recorded twice.
#[tokio::test(flavor = "multi_thread")]
async fn the_previous_release_rolls_to_this_one_under_load_without_an_outage() {
    let previous = previous_release();
    let old = |name: &str| previous.join(name).to_string_lossy().into_owned();
    let stores = Stores::start();
    let pool = stores.pool().await;

    // The previous release, on its own schema.
    let mut process = ServiceProcess::spawn(
        &previous.join("caracal-api"),
        &["--migrate"],
        &[("DATABASE_URL", &stores.database_url), ("REDIS_URL", &stores.redis.url()), ("CARACAL_MODE", "dev")],
    )
    .expect("spawn the previous migrate");
    assert!(process.wait_timeout(Duration::from_secs(60)).expect("migrate").success(), "{}", process.stderr());
    let previous_schema = caracal_store::applied_version(&pool).await.expect("version").expect("migrated");
    assert!(previous_schema < caracal_store::expected_version(), "this release must carry a migration to test");

    let fleet = Fleet::default();
    let mut running: Vec<(&'static str, support::Service)> = Vec::new();
    // A drain delay, as in rc and stable: a replica leaving finishes what was sent to it
    // before it left the rotation.
    let drain = ("CARACAL_SHUTDOWN__DRAIN_DELAY", "1s");
    let coordinator_env = [drain, ("CARACAL_COORDINATOR__REFRESH", "300ms")];
    let audit_env = [drain, ("CARACAL_AUDIT__BLOCK", "200ms")];
    let plain = [drain];
    let plan: [Step<'_>; 8] = [
        ("sts", "caracal-sts", &plain),
        ("api", "caracal-api", &plain),
        ("coordinator", "caracal-coordinator", &coordinator_env),
        ("coordinator", "caracal-coordinator", &coordinator_env),
        ("audit", "caracal-audit", &audit_env),
        ("audit", "caracal-audit", &audit_env),
        ("gateway", "caracal-gateway", &plain),
        ("control", "caracal-control", &plain),
    ];
    for (service, binary, env) in plan {
        let replica = support::start(&old(binary), &stores, env).await;
        fleet.add(service, "previous", &replica.base);
        running.push((service, replica));
    }

    let stop = Arc::new(AtomicBool::new(false));
    let watcher = tokio::spawn(fleet.clone().watch(Arc::clone(&stop)));
    let flappy = flapping().await;
    let api = fleet.apis()[0].clone();
    let http = reqwest::Client::new();
    let created = http
        .post(format!("{api}/v1/targets"))
        .json(&serde_json::json!({"name": "flappy", "instances": [flappy], "interval_ms": 100, "timeout_ms": 80}))
        .send()
        .await
        .expect("register");
    assert_eq!(created.status(), 201);
    let steady = axum_steady().await;
    let writer = tokio::spawn(write(fleet.clone(), steady, Arc::clone(&stop)));
    tokio::time::sleep(Duration::from_secs(3)).await;

    // This release's migration, while the previous release serves.
    support::migrate(&stores);
    let migrated = caracal_store::applied_version(&pool).await.expect("version");
    assert_eq!(migrated, Some(caracal_store::expected_version()));
    // The post-deployment step refuses while the previous release is connected.
    let mut early = ServiceProcess::spawn(
        Path::new(env!("CARGO_BIN_EXE_caracal-api")),
        &["--migrate", "--post-deploy", "--wait-for-replicas", "1s"],
        &[("DATABASE_URL", &stores.database_url), ("REDIS_URL", &stores.redis.url()), ("CARACAL_MODE", "dev")],
    )
    .expect("spawn an early post-deploy");
    let status = early.wait_timeout(Duration::from_secs(60)).expect("the early post-deploy ends");
    let said = early.stderr();
    assert!(!status.success(), "the post-deployment step ran with the previous release connected: {said}");
    assert!(
        said.contains(&format!("caracal-api schema {previous_schema}")) && said.contains("older release"),
        "it names the replicas it waits for: {said}"
    );
    // Every step numbered after the previous release's schema waits (the previous release ran
    // none of them).
    let carried = caracal_store::schema::POST_DEPLOY.iter().filter(|step| step.version > previous_schema).count();
    assert!(carried >= 1, "the release carries post-deployment steps");
    assert_eq!(
        caracal_store::schema::pending_post_deploy(&pool).await.expect("pending").len(),
        carried,
        "still pending"
    );
    tokio::time::sleep(Duration::from_secs(2)).await;

    // One replica at a time: the new one ready and in rotation before the old one leaves.
    let new = |binary: &str| -> &'static str {
        match binary {
            "caracal-sts" => env!("CARGO_BIN_EXE_caracal-sts"),
            "caracal-api" => env!("CARGO_BIN_EXE_caracal-api"),
            "caracal-coordinator" => env!("CARGO_BIN_EXE_caracal-coordinator"),
            "caracal-audit" => env!("CARGO_BIN_EXE_caracal-audit"),
            "caracal-gateway" => env!("CARGO_BIN_EXE_caracal-gateway"),
            _ => env!("CARGO_BIN_EXE_caracal-control"),
        }
    };
    let mut rolled = Vec::new();
    for (i, (service, binary, env)) in plan.into_iter().enumerate() {
        let replica = support::start(new(binary), &stores, env).await;
        fleet.add(service, "this", &replica.base);
        let (_, old_replica) = std::mem::replace(&mut running[i], (service, replica));
        fleet.out_of_rotation(&old_replica.base);
        old_replica.stop();
        rolled.push(service);
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(fleet.releases().iter().all(|(_, release)| *release == "this"), "{:?}", fleet.releases());

    // The contract half, once every replica runs this release.
    let mut process = ServiceProcess::spawn(
        Path::new(env!("CARGO_BIN_EXE_caracal-api")),
        &["--migrate", "--post-deploy"],
        &[("DATABASE_URL", &stores.database_url), ("REDIS_URL", &stores.redis.url()), ("CARACAL_MODE", "dev")],
    )
    .expect("spawn post-deploy");
    assert!(process.wait_timeout(Duration::from_secs(60)).expect("post-deploy").success(), "{}", process.stderr());
    assert!(caracal_store::schema::pending_post_deploy(&pool).await.expect("pending").is_empty());
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, Ordering::SeqCst);
    let writes = writer.await.expect("writer");
    let gaps = watcher.await.expect("watcher");

    // Every acknowledged write reaches the ledger exactly once.
    let want = writes.acknowledged.len() as i64;
    let counted = caracal_testkit::wait_for(Duration::from_secs(60), Duration::from_millis(250), || async {
        let rows: Vec<(String, i64)> = sqlx::query_as(
            "SELECT target, count(*) FROM audit_events WHERE event_type = 'target.created' AND target LIKE 'w-%' \
             GROUP BY target",
        )
        .fetch_all(&pool)
        .await
        .ok()?;
        (rows.len() as i64 >= want).then_some(rows)
    })
    .await;
    let rows = counted.unwrap_or_default();
    let once: std::collections::HashSet<&str> = rows.iter().filter(|(_, n)| *n == 1).map(|(t, _)| t.as_str()).collect();
    let missing: Vec<&String> = writes.acknowledged.iter().filter(|n| !once.contains(n.as_str())).collect();
    let doubled: Vec<&(String, i64)> = rows.iter().filter(|(_, n)| *n > 1).collect();

    // The status changes of the flapping instance: a chain, each from where the last one went,
    // each once in the ledger.
    let transitions: Vec<(String, String)> = sqlx::query_as(
        "SELECT from_status, to_status FROM status_transitions WHERE target_name = 'flappy' ORDER BY id",
    )
    .fetch_all(&pool)
    .await
    .expect("transitions");
    let broken: Vec<usize> = (1..transitions.len()).filter(|&i| transitions[i].0 != transitions[i - 1].1).collect();
    let ledger_changes = caracal_testkit::wait_for(Duration::from_secs(30), Duration::from_millis(250), || async {
        let (outbox, ledger): (i64, i64) = sqlx::query_as(
            "SELECT (SELECT count(*) FROM outbox WHERE event_type = 'instance.status_changed' AND target = 'flappy'), \
                    (SELECT count(*) FROM audit_events WHERE event_type = 'instance.status_changed' AND target = 'flappy')",
        )
        .fetch_one(&pool)
        .await
        .ok()?;
        (outbox == ledger).then_some(ledger)
    })
    .await;
    let brin_only: (bool, bool) = sqlx::query_as(
        "SELECT to_regclass('status_transitions_occurred_brin') IS NOT NULL, \
                to_regclass('status_transitions_occurred_idx') IS NOT NULL",
    )
    .fetch_one(&pool)
    .await
    .expect("indexes");

    eprintln!(
        "rolling upgrade (schema {previous_schema} -> {}): {} writes acknowledged, {} reads, {} answered 503 (Retry-After on all: {}), \
         {} other 5xx, {} unreachable; {} watch rounds, rounds without a ready replica: {:?}, longest: {:?}; \
         {} status changes of the flapping instance recorded, {} out of chain",
        caracal_store::expected_version(),
        writes.acknowledged.len(),
        writes.reads,
        writes.unavailable_503,
        writes.retry_after_missing == 0,
        writes.other_5xx.len(),
        writes.unreachable,
        gaps.rounds,
        gaps.empty_rounds,
        gaps.longest,
        transitions.len(),
        broken.len()
    );
    assert!(writes.acknowledged.len() > 100 && writes.reads > 100, "the writer kept writing and reading: {writes:?}");
    assert!(missing.is_empty() && doubled.is_empty(), "lost {missing:?}, doubled {doubled:?}");
    assert!(writes.other_5xx.is_empty(), "5xx other than 503: {:?}", writes.other_5xx);
    assert_eq!(writes.retry_after_missing, 0, "every 503 carries Retry-After");
    assert_eq!(writes.unreachable, 0, "a write reached a replica that was gone");
    assert!(gaps.rounds > 50, "the watcher watched: {gaps:?}");
    assert!(gaps.empty_rounds.is_empty(), "a service had no ready replica: {gaps:?}");
    assert!(transitions.len() >= 10, "the flapping instance was recorded throughout: {transitions:?}");
    assert!(broken.is_empty(), "a status change recorded twice (or lost) at rows {broken:?}: {transitions:?}");
    assert!(ledger_changes.is_ok(), "every status change reaches the ledger once");
    assert_eq!(
        brin_only,
        (true, false),
        "the migration built the BRIN index and the post-deployment step dropped the B-tree"
    );
    assert_eq!(rolled.len(), 8);
    for (_, replica) in running {
        replica.stop();
    }
}

/// A steady, always-ready instance for the written targets.
async fn axum_steady() -> String {
    let app = Router::new().route("/health", get(|| async { "ok" })).route("/ready", get(|| async { "ok" }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://{addr}")
}
