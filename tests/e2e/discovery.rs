//! Discovery end to end on the real binaries: a target registered through the API with
//! `discovery.dns` reaches caracal-control through `caracal.invalidations` (its periodic
//! re-read is ten minutes away), control resolves it against a real `dnsmasq` into instances
//! listening on distinct loopback addresses, and the coordinator probes each of them; when the
//! records change, so do the probed instances.

use std::time::Duration;

use axum::Router;
use axum::routing::get;
use caracal_testkit::Dnsmasq;

use crate::support::{self, Stores};

const API: &str = env!("CARGO_BIN_EXE_caracal-api");
const COORDINATOR: &str = env!("CARGO_BIN_EXE_caracal-coordinator");
const CONTROL: &str = env!("CARGO_BIN_EXE_caracal-control");

/// An instance answering `/health` and `/ready` on `ip:port`.
async fn instance(ip: &str, port: u16) {
    let app = Router::new().route("/health", get(|| async { "ok" })).route("/ready", get(|| async { "ok" }));
    let listener = tokio::net::TcpListener::bind((ip, port)).await.expect("bind a loopback address");
    tokio::spawn(async move { axum::serve(listener, app).await });
}

/// The probed status of each of `web`'s instances, by URL.
async fn statuses(http: &reqwest::Client, api: &str) -> Option<Vec<(String, String)>> {
    let body: serde_json::Value = http.get(format!("{api}/v1/status")).send().await.ok()?.json().await.ok()?;
    let mut found: Vec<(String, String)> = body["instances"]
        .as_array()?
        .iter()
        .filter(|i| i["target"] == "web")
        .map(|i| (i["instance"].as_str().unwrap_or("").to_string(), i["status"].as_str().unwrap_or("").to_string()))
        .collect();
    found.sort();
    Some(found)
}

#[tokio::test(flavor = "multi_thread")]
async fn discovered_instances_are_probed_and_follow_their_records() {
    let port = caracal_testkit::free_port().expect("port");
    instance("127.0.0.2", port).await;
    instance("127.0.0.3", port).await;
    let mut dns = Dnsmasq::start("127.0.0.2 web.test\n127.0.0.3 web.test\n", &[]).expect("dnsmasq");
    let stores = Stores::start();
    support::migrate(&stores);
    let nameservers = format!("[\"{}\"]", dns.address());
    let api = support::start(API, &stores, &[]).await;
    let coordinator = support::start(COORDINATOR, &stores, &[]).await;
    let control = support::start(CONTROL, &stores, &[("CARACAL_CONTROL__NAMESERVERS", &nameservers)]).await;
    let http = reqwest::Client::new();

    let body = serde_json::json!({"name": "web", "interval_ms": 300, "timeout_ms": 200,
        "discovery": {"dns": {"name": "web.test", "port": port, "refresh_ms": 1000}}});
    let created = http.post(format!("{}/v1/targets", api.base)).json(&body).send().await.expect("register");
    assert_eq!(created.status(), 201);

    let both = [format!("http://127.0.0.2:{port}"), format!("http://127.0.0.3:{port}")];
    let up = caracal_testkit::wait_for(Duration::from_secs(20), Duration::from_millis(100), || async {
        let now = statuses(&http, &api.base).await?;
        let want: Vec<(String, String)> = both.iter().map(|u| (u.clone(), "up".to_string())).collect();
        (now == want).then_some(())
    })
    .await;
    assert!(up.is_ok(), "both discovered instances probed up: {:?}", statuses(&http, &api.base).await);

    dns.set_hosts("127.0.0.2 web.test\n").expect("hosts");
    let followed = caracal_testkit::wait_for(Duration::from_secs(20), Duration::from_millis(100), || async {
        let now = statuses(&http, &api.base).await?;
        (now == [(both[0].clone(), "up".to_string())]).then_some(())
    })
    .await;
    assert!(followed.is_ok(), "the dropped record's instance is gone: {:?}", statuses(&http, &api.base).await);
    let target: serde_json::Value =
        http.get(format!("{}/v1/targets/web", api.base)).send().await.expect("get").json().await.expect("json");
    assert_eq!(target["discovery_status"]["outcome"], "ok", "{target}");

    for service in [api, coordinator, control] {
        service.stop();
    }
}
