//! DNS discovery against a real `dnsmasq`: instances appear, follow the records, survive the
//! server going away, and empty only after two authoritative empty answers.

use std::time::Duration;

use caracal_store::registry::{self, Writer};
use caracal_store::target::TargetSpec;
use caracal_testkit::Dnsmasq;

use crate::support::{self, check, database, instances, metrics, wait_instances};

fn discovered(name: &str, dns: serde_json::Value) -> TargetSpec {
    serde_json::from_value(serde_json::json!({"name": name, "discovery": {"dns": dns}})).expect("a spec")
}

#[tokio::test(flavor = "multi_thread")]
async fn instances_follow_the_records_and_survive_an_outage() {
    let mut dns = Dnsmasq::start("127.0.0.2 shop.test\n127.0.0.3 shop.test\n", &[]).expect("dnsmasq");
    let pool = database().await;
    let served =
        support::control(&pool, serde_json::json!({ "nameservers": [dns.address()], "resolve_timeout": "300ms" }))
            .await;
    let spec = discovered("shop", serde_json::json!({"name": "shop.test", "port": 8080, "refresh_ms": 2000}));
    registry::create(&pool, &spec, &Writer::Api).await.expect("create");

    wait_instances(&pool, "shop", &["http://127.0.0.2:8080", "http://127.0.0.3:8080"]).await.expect("discovered");
    caracal_testkit::wait_for(Duration::from_secs(5), Duration::from_millis(100), || async {
        let outcome: Option<String> =
            sqlx::query_scalar("SELECT outcome FROM discovery_status").fetch_optional(&pool).await.ok()?;
        (outcome.as_deref() == Some("ok")).then_some(())
    })
    .await
    .expect("how it was resolved is recorded");
    let ttl: Option<i32> =
        sqlx::query_scalar("SELECT ttl_s FROM discovery_status").fetch_one(&pool).await.expect("ttl");
    assert_eq!(ttl, Some(1), "dnsmasq's --local-ttl");

    // The records change: so do the instances, with one event saying what moved.
    dns.set_hosts("127.0.0.2 shop.test\n127.0.0.4 shop.test\n").expect("hosts");
    wait_instances(&pool, "shop", &["http://127.0.0.2:8080", "http://127.0.0.4:8080"]).await.expect("followed");
    let payload: serde_json::Value = sqlx::query_scalar(
        "SELECT payload FROM outbox WHERE event_type = 'target.instances_changed' ORDER BY id DESC LIMIT 1",
    )
    .fetch_one(&pool)
    .await
    .expect("event");
    assert_eq!(payload, serde_json::json!({"added": ["http://127.0.0.4:8080"], "removed": ["http://127.0.0.3:8080"]}));
    let announced: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox WHERE event_type = 'registry.changed'")
        .fetch_one(&pool)
        .await
        .expect("count");
    assert_eq!(announced, 3, "the creation and each change are announced to the followers");

    // The server goes away: the last known set stays, the failures are counted by reason.
    dns.stop();
    caracal_testkit::wait_for(Duration::from_secs(15), Duration::from_millis(200), || async {
        metrics(&served).await.contains("caracal_control_discovery_failures_total{target=\"shop\"").then_some(())
    })
    .await
    .expect("failures are counted");
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        instances(&pool, "shop").await,
        ["http://127.0.0.2:8080", "http://127.0.0.4:8080"],
        "a DNS outage never empties a target"
    );
    let error: Option<String> =
        sqlx::query_scalar("SELECT error FROM discovery_status").fetch_one(&pool).await.expect("error");
    assert!(error.is_some(), "the failure is shown");
    caracal_testkit::wait_for(Duration::from_secs(15), Duration::from_millis(200), || async {
        (check(&served, "dns:resolver").await.0 == "fail").then_some(())
    })
    .await
    .expect("three resolutions in a row without an answer fail dns:resolver");

    // Back, but the name is gone (NXDOMAIN): the set empties only on the second such answer.
    dns.set_hosts("").expect("hosts");
    dns.run().expect("dnsmasq again");
    let first = caracal_testkit::wait_for(Duration::from_secs(20), Duration::from_millis(20), || async {
        let outcome: String = sqlx::query_scalar("SELECT outcome FROM discovery_status").fetch_one(&pool).await.ok()?;
        (outcome == "nxdomain").then(std::time::Instant::now)
    })
    .await
    .expect("an authoritative NXDOMAIN");
    assert_eq!(instances(&pool, "shop").await.len(), 2, "one authoritative empty answer changes nothing");
    caracal_testkit::wait_for(Duration::from_secs(20), Duration::from_millis(20), || async {
        instances(&pool, "shop").await.is_empty().then_some(())
    })
    .await
    .expect("two authoritative empty answers empty it");
    // The second answer comes a refresh (2 s) after the first; the first is seen within the
    // outcome writes' second.
    assert!(
        first.elapsed() >= Duration::from_millis(700),
        "emptied on the second answer, not the first: {:?}",
        first.elapsed()
    );
    caracal_testkit::wait_for(Duration::from_secs(5), Duration::from_millis(100), || async {
        (check(&served, "dns:resolver").await.0 == "pass").then_some(())
    })
    .await
    .expect("answers are back");
    served.running.drain();
}

#[tokio::test(flavor = "multi_thread")]
async fn srv_records_give_hosts_and_ports() {
    let mut dns = Dnsmasq::start("", &["_http._tcp.api.test,127.0.0.5,7001", "_http._tcp.api.test,127.0.0.6,7002"])
        .expect("dnsmasq");
    let pool = database().await;
    let served = support::control(&pool, serde_json::json!({ "nameservers": [dns.address()] })).await;
    let spec = discovered("api", serde_json::json!({"name": "_http._tcp.api.test", "type": "SRV", "refresh_ms": 1000}));
    registry::create(&pool, &spec, &Writer::Api).await.expect("create");
    wait_instances(&pool, "api", &["http://127.0.0.5:7001", "http://127.0.0.6:7002"]).await.expect("from SRV");
    dns.set_srv(&["_http._tcp.api.test,127.0.0.6,7003"]).expect("srv");
    wait_instances(&pool, "api", &["http://127.0.0.6:7003"]).await.expect("an SRV change moves the port");

    // Metrics per target, and the discovered instances in GET-shaped reads.
    let text = metrics(&served).await;
    assert!(text.contains("caracal_control_discovered_instances{target=\"api\"} 1"), "{text}");
    assert!(text.contains("caracal_control_discovery_last_success_timestamp_seconds{target=\"api\"}"), "{text}");
    // Outcomes are written in one statement a second.
    caracal_testkit::wait_for(Duration::from_secs(5), Duration::from_millis(100), || async {
        let mut conn = pool.acquire().await.ok()?;
        let target = registry::get(&mut conn, "api").await.ok()??;
        let status = target.discovery_status?;
        (status.outcome == "ok" && status.records == 1).then_some(())
    })
    .await
    .expect("GET shows how the instances were last resolved");

    // A target whose discovery is replaced by a list is no longer control's to resolve.
    let listed: TargetSpec =
        serde_json::from_value(serde_json::json!({"name": "api", "instances": ["http://127.0.0.9:1"]})).expect("spec");
    registry::replace(&pool, &listed, &Writer::Control { file: String::new() }).await.expect_err("an API target");
    sqlx::query("UPDATE targets SET discovery = NULL WHERE name = 'api'").execute(&pool).await.expect("undiscover");
    sqlx::query("UPDATE instances SET url = 'http://127.0.0.9:1'").execute(&pool).await.expect("list");
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(instances(&pool, "api").await, ["http://127.0.0.9:1"], "control leaves listed instances alone");
    served.running.drain();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stale_target_warns_without_failing_readiness() {
    let dns = Dnsmasq::start("127.0.0.2 ok.test\n", &[]).expect("dnsmasq");
    let pool = database().await;
    let served =
        support::control(&pool, serde_json::json!({ "nameservers": [dns.address()], "resolve_timeout": "200ms" }))
            .await;
    // A name dnsmasq forwards to an upstream that is not there: no usable answer, every time.
    let bad =
        discovered("elsewhere", serde_json::json!({"name": "elsewhere.down.test", "port": 1, "refresh_ms": 1000}));
    let good = discovered("fine", serde_json::json!({"name": "ok.test", "port": 1, "refresh_ms": 1000}));
    registry::create(&pool, &bad, &Writer::Api).await.expect("create");
    registry::create(&pool, &good, &Writer::Api).await.expect("create");
    let warned = caracal_testkit::wait_for(Duration::from_secs(20), Duration::from_millis(200), || async {
        let (status, output) = check(&served, "discovery:fresh").await;
        // A check not run yet also warns ("not evaluated yet"): wait for the warning about
        // the stale target itself.
        (status == "warn" && output.contains("elsewhere")).then_some(output)
    })
    .await;
    let rows: Vec<(String, Option<String>)> =
        sqlx::query_as("SELECT outcome, error FROM discovery_status").fetch_all(&pool).await.expect("rows");
    let warned = warned.unwrap_or_else(|_| panic!("a target unresolved for three refreshes warns: {rows:?}"));
    assert!(warned.contains("elsewhere") && !warned.contains("fine"), "{warned}");
    let ready = served.http.get(served.url("/ready")).send().await.expect("ready");
    assert_eq!(ready.status(), 200, "a warning, not unready");
    served.running.drain();
}
