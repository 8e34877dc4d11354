//! The registry's happy paths: create, read, replace, delete, each with its outbox event in
//! the same transaction; status, history pagination; the OpenAPI document.

use caracal_core::Mode;
use serde_json::json;

use crate::support::{self, ADMIN};

#[tokio::test(flavor = "multi_thread")]
async fn writes_commit_with_their_outbox_events() {
    let (served, pool) = support::api(Mode::Dev).await;
    let http = &served.http;
    let created = http
        .post(served.url("/v1/targets"))
        .bearer_auth(ADMIN)
        .json(&json!({"name": "shop", "instances": ["http://127.0.0.1:7001", "http://127.0.0.1:7002"], "labels": {"team": "a"}}))
        .send()
        .await
        .expect("create");
    assert_eq!(created.status(), 201);
    assert_eq!(created.headers()["location"], "/v1/targets/shop");
    let body: serde_json::Value = created.json().await.expect("json");
    assert_eq!(body["interval_ms"], 5000);
    assert_eq!(body["labels"]["team"], "a");

    let replaced = http
        .put(served.url("/v1/targets/shop"))
        .bearer_auth(ADMIN)
        .json(&json!({"name": "shop", "instances": ["http://127.0.0.1:7002", "http://127.0.0.1:7003"], "interval_ms": 1000, "timeout_ms": 500}))
        .send()
        .await
        .expect("replace");
    assert_eq!(replaced.status(), 200);
    let body: serde_json::Value = replaced.json().await.expect("json");
    assert_eq!(body["instances"], json!(["http://127.0.0.1:7002", "http://127.0.0.1:7003"]));
    assert_eq!(body["interval_ms"], 1000);

    let list: serde_json::Value = served.get("/v1/targets").await.json().await.expect("json");
    assert_eq!(list.as_array().map(Vec::len), Some(1));
    let status: serde_json::Value = served.get("/v1/status").await.json().await.expect("json");
    assert_eq!(status["instances"].as_array().map(Vec::len), Some(2));
    assert_eq!(status["instances"][0]["status"], "unknown");

    let deleted = http.delete(served.url("/v1/targets/shop")).bearer_auth(ADMIN).send().await.expect("delete");
    assert_eq!(deleted.status(), 204);
    let events: Vec<(String, Option<String>)> =
        sqlx::query_as("SELECT event_type, target FROM outbox ORDER BY id").fetch_all(&pool).await.expect("outbox");
    let types: Vec<&str> = events.iter().map(|(t, _)| t.as_str()).collect();
    assert_eq!(
        types,
        [
            "target.created",
            "registry.changed",
            "target.updated",
            "registry.changed",
            "target.deleted",
            "registry.changed"
        ],
        "every write announces itself to the followers of caracal.invalidations in the same transaction"
    );
    assert!(events.iter().all(|(_, target)| target.as_deref() == Some("shop")));
    assert_eq!(support::counts(&pool).await, (0, 0, 6), "the target and its instances are gone, the events stay");
}

#[tokio::test(flavor = "multi_thread")]
async fn history_pages_newest_first_and_survives_deletion() {
    let (served, pool) = support::api(Mode::Dev).await;
    sqlx::query(
        "INSERT INTO status_transitions (target_name, instance_url, from_status, to_status) \
         SELECT 'gone', 'http://a:1', 'up', 'down' FROM generate_series(1, 5)",
    )
    .execute(&pool)
    .await
    .expect("transitions");
    let first: serde_json::Value = served.get("/v1/targets/gone/history?limit=2").await.json().await.expect("json");
    let ids: Vec<i64> =
        first["transitions"].as_array().expect("array").iter().filter_map(|t| t["id"].as_i64()).collect();
    assert_eq!(ids, [5, 4]);
    let cursor = first["next_cursor"].as_str().expect("a next page");
    let second: serde_json::Value =
        served.get(&format!("/v1/targets/gone/history?limit=2&cursor={cursor}")).await.json().await.expect("json");
    let ids: Vec<i64> =
        second["transitions"].as_array().expect("array").iter().filter_map(|t| t["id"].as_i64()).collect();
    assert_eq!(ids, [3, 2]);
    let last: serde_json::Value =
        served.get("/v1/targets/gone/history?limit=2&cursor=2").await.json().await.expect("json");
    assert_eq!(last["transitions"].as_array().map(Vec::len), Some(1));
    assert!(last["next_cursor"].is_null());
    // The horizon: the oldest transition kept, on every page.
    assert_eq!(last["oldest"], last["transitions"][0]["occurred_at"], "{last}");
    assert_eq!(first["oldest"], last["oldest"]);
    // Once the retention purge took it all, the history says so and still answers.
    let mut conn = pool.acquire().await.expect("conn");
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    let purged = caracal_store::retention::purge(
        &mut conn,
        caracal_store::retention::Table::History,
        std::time::Duration::from_millis(10),
        2,
    )
    .await
    .expect("purge");
    assert_eq!(purged.rows, 5);
    let response = served.get("/v1/targets/gone/history").await;
    assert_eq!(response.status(), 404, "a deleted target with no history left is gone");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_openapi_document_describes_the_routes() {
    let (served, _) = support::api(Mode::Dev).await;
    let doc: serde_json::Value = served.get("/openapi.json").await.json().await.expect("json");
    assert!(doc["openapi"].as_str().is_some_and(|v| v.starts_with("3.")));
    // One status type, the store's, with every word the coordinator records.
    let words = doc["components"]["schemas"]["Status"]["enum"].as_array().cloned().unwrap_or_default();
    for word in ["unknown", "down", "unready", "degraded", "up"] {
        assert!(words.contains(&serde_json::json!(word)), "{word} in {words:?}");
    }
    for path in [
        "/v1/targets",
        "/v1/targets/{name}",
        "/v1/targets/_digests",
        "/v1/targets/{name}/history",
        "/v1/status",
        "/healthchecks",
        "/v1/healthchecks",
    ] {
        assert!(doc["paths"].get(path).is_some(), "{path} is documented");
    }
    assert!(doc["paths"]["/v1/healthchecks"]["get"].get("security").is_none(), "public, like /healthchecks");
    assert!(doc["paths"]["/v1/targets"]["post"]["responses"].get("422").is_some());
    assert!(doc["components"]["schemas"].get("TargetSpec").is_some());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_discovered_target_keeps_its_instances_for_control() {
    let (served, pool) = support::api(Mode::Stable).await;
    let http = caracal_testkit::app::client();
    let shop = json!({"name": "shop", "discovery": {"dns": {"name": "shop.test", "port": 8080}}, "labels": {"team": "payments"}});
    let created = http.post(served.url("/v1/targets")).bearer_auth(ADMIN).json(&shop).send().await.expect("create");
    assert_eq!(created.status(), 201);
    let body: serde_json::Value = created.json().await.expect("json");
    assert_eq!(body["instances"], json!([]), "nothing is resolved yet");
    assert_eq!(body["discovery"]["dns"]["type"], "A", "the record type defaults to A");
    assert_eq!((body["managed_by"].as_str(), body["discovery_status"].is_null()), (Some("api"), true));

    // Control resolved it: the instances and how they were resolved show in GET.
    let id: i64 = sqlx::query_scalar("SELECT id FROM targets WHERE name = 'shop'").fetch_one(&pool).await.expect("id");
    let urls = vec!["http://127.0.0.2:8080".to_string()];
    let change = caracal_store::registry::set_discovered(&pool, id, &urls).await.expect("write").expect("discovered");
    assert_eq!(change.added, urls);
    sqlx::query(
        "INSERT INTO discovery_status (target_id, attempted_at, outcome, resolved_at, records, ttl_s) \
         VALUES ($1, now(), 'ok', now(), 1, 30)",
    )
    .bind(id)
    .execute(&pool)
    .await
    .expect("status");
    let got = http.get(served.url("/v1/targets/shop")).bearer_auth(ADMIN).send().await.expect("get");
    let got: serde_json::Value = got.json().await.expect("json");
    assert_eq!(got["instances"], json!(urls));
    assert_eq!(
        (got["discovery_status"]["outcome"].as_str(), got["discovery_status"]["ttl_s"].as_i64()),
        (Some("ok"), Some(30))
    );

    // Writing its instances through the API is refused; changing the discovery is not.
    let listed = json!({"instances": ["http://127.0.0.9:1"]});
    let refused = http.put(served.url("/v1/targets/shop")).bearer_auth(ADMIN).json(&listed).send().await.expect("put");
    assert_eq!(refused.status(), 409);
    let error: serde_json::Value = refused.json().await.expect("json");
    assert_eq!(error["error"]["code"], "discovered_instances");
    let moved = json!({"discovery": {"dns": {"name": "shop2.test", "port": 8080}}});
    let ok = http.put(served.url("/v1/targets/shop")).bearer_auth(ADMIN).json(&moved).send().await.expect("put");
    assert_eq!(ok.status(), 200);
    let body: serde_json::Value = ok.json().await.expect("json");
    assert_eq!(body["instances"], json!(urls), "the last known set stays until control resolves the new name");

    // A target control owns is changed through its file, not the API (pausing is fine).
    sqlx::query(
        "UPDATE targets SET managed_by = 'control', declared_in = '/etc/caracal/targets/shop.yaml' WHERE id = $1",
    )
    .bind(id)
    .execute(&pool)
    .await
    .expect("own");
    let refused = http.delete(served.url("/v1/targets/shop")).bearer_auth(ADMIN).send().await.expect("delete");
    assert_eq!(refused.status(), 409);
    let error: serde_json::Value = refused.json().await.expect("json");
    assert_eq!(error["error"]["code"], "managed_by_control");
    assert!(error["error"]["message"].as_str().is_some_and(|m| m.contains("shop.yaml")), "{error}");
    let paused = http.post(served.url("/v1/targets/shop/pause")).bearer_auth(ADMIN).send().await.expect("pause");
    assert_eq!(paused.status(), 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn tls_and_grpc_targets_read_back_with_their_certificates() {
    let mut pki = caracal_testkit::pki::Pki::new().expect("a CA from openssl");
    let client = pki.client(10).expect("a client certificate");
    // The operator's client directory holds the client certificate and key.
    let client_dir = client.cert.parent().expect("the PKI's directory");
    let shared = support::shared();
    let sections = json!({"coordinator": {"tls": {"client_dir": client_dir}}});
    let (served, pool) = support::api_on(&shared.postgres, &shared.redis, Mode::Dev, sections).await;
    let ca = pki.ca.pem().expect("CA PEM");
    let tls = json!({"ca_pem": ca, "server_name": "shop.internal", "client_cert_file": client.cert,
                     "client_key_file": client.key, "insecure_skip_verify": false});
    let created = served
        .http
        .post(served.url("/v1/targets"))
        .bearer_auth(ADMIN)
        .json(&json!({"name": "secure", "instances": ["https://127.0.0.1:8443/api"], "tls": tls}))
        .send()
        .await
        .expect("create");
    assert_eq!(created.status(), 201);
    let body: serde_json::Value = created.json().await.expect("json");
    assert_eq!(body["tls"], tls, "the TLS settings read back (paths, never key contents)");
    assert_eq!(body["certificates"], json!([]), "no certificate seen yet");
    let grpc = served
        .http
        .post(served.url("/v1/targets"))
        .bearer_auth(ADMIN)
        .json(&json!({"name": "cart", "instances": ["grpc://127.0.0.1:50051"], "grpc_service": "shop.Cart"}))
        .send()
        .await
        .expect("create");
    assert_eq!(grpc.status(), 201);
    let insecure = served
        .http
        .post(served.url("/v1/targets"))
        .bearer_auth(ADMIN)
        .json(&json!({"name": "lab", "instances": ["grpcs://127.0.0.1:50052"], "tls": {"insecure_skip_verify": true}}))
        .send()
        .await
        .expect("create");
    assert_eq!(insecure.status(), 201);

    // What the coordinator records when it sees a certificate, as /v1/status and the target show it.
    sqlx::query(
        "INSERT INTO instance_status (instance_id, status, certificate_expires_at, certificate_sha256) \
         SELECT i.id, 'up', '2027-01-02T03:04:05Z', 'ab' FROM instances i WHERE i.url = 'https://127.0.0.1:8443/api'",
    )
    .execute(&pool)
    .await
    .expect("a recorded certificate");
    let target: serde_json::Value = served.get("/v1/targets/secure").await.json().await.expect("json");
    assert_eq!(
        target["certificates"],
        json!([{"instance": "https://127.0.0.1:8443/api", "certificate_expires_at": "2027-01-02T03:04:05.000000Z"}])
    );
    let status: serde_json::Value = served.get("/v1/status").await.json().await.expect("json");
    let of = |url: &str| status["instances"].as_array().and_then(|a| a.iter().find(|i| i["instance"] == url)).cloned();
    let secure = of("https://127.0.0.1:8443/api").expect("listed");
    assert_eq!(secure["certificate_expires_at"], "2027-01-02T03:04:05.000000Z");
    assert_eq!(secure["insecure_skip_verify"], false);
    let lab = of("grpcs://127.0.0.1:50052").expect("listed");
    assert_eq!(lab["insecure_skip_verify"], true, "unverified TLS is shown");
    assert_eq!(lab["certificate_expires_at"], serde_json::Value::Null);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_platforms_own_targets_cannot_be_deleted_until_unconfigured() {
    let shared = support::shared();
    let url = shared.postgres.fresh_database("platform").expect("database");
    let pool = sqlx::PgPool::connect(&url).await.expect("connect");
    caracal_store::migrate(&pool).await.expect("migrate");
    // Before this API starts: `sts` as an earlier release registered it (the platform's label,
    // held by the API), and `retired`, a platform service no longer configured.
    let create = |name: &'static str| {
        let pool = pool.clone();
        async move {
            let spec: caracal_store::target::TargetSpec = serde_json::from_value(
                json!({"name": name, "instances": ["http://127.0.0.1:9/"], "labels": {"caracal": "platform"}}),
            )
            .expect("spec");
            caracal_store::registry::create(&pool, &spec, &caracal_store::registry::Writer::Api).await.expect("create")
        }
    };
    create("sts").await;
    create("retired").await;
    sqlx::query("UPDATE targets SET managed_by = 'platform' WHERE name = 'retired'").execute(&pool).await.expect("own");

    let sections =
        json!({"api": {"platform": {"coordinator": ["http://127.0.0.1:9/c"], "sts": ["http://127.0.0.1:9/"]}}});
    let mut core = caracal_testkit::app::core_config(Mode::Dev);
    core.database_url = Some(caracal_core::config::Secret::new(url));
    core.redis_url = Some(caracal_core::config::Secret::new(shared.redis.url()));
    core.admin_token = Some(caracal_core::config::Secret::new(ADMIN));
    let app = caracal_testkit::app::app("api", core, sections);
    let served = caracal_testkit::app::serve(caracal_api::build(app).expect("build the api")).await;
    let owners = || async {
        let rows: Vec<(String, String)> =
            sqlx::query_as("SELECT name, managed_by FROM targets ORDER BY name").fetch_all(&pool).await.ok()?;
        Some(rows)
    };
    let settled = caracal_testkit::wait_for(
        std::time::Duration::from_secs(10),
        std::time::Duration::from_millis(100),
        || async {
            let rows = owners().await?;
            (rows.len() == 3 && rows.iter().all(|(n, m)| (n == "retired") == (m == "api"))).then_some(rows)
        },
    )
    .await;
    assert!(settled.is_ok(), "coordinator registered, sts claimed, retired released: {:?}", owners().await);

    let http = &served.http;
    for name in ["coordinator", "sts"] {
        let refused =
            http.delete(served.url(&format!("/v1/targets/{name}"))).bearer_auth(ADMIN).send().await.expect("delete");
        assert_eq!(refused.status(), 409, "{name}");
        let error: serde_json::Value = refused.json().await.expect("json");
        assert_eq!(error["error"]["code"], "platform_target", "{error}");
        assert!(error["error"]["message"].as_str().is_some_and(|m| m.contains("api.platform")), "{error}");
        assert_eq!(served.get(&format!("/v1/targets/{name}")).await.status(), 200, "{name} is still there");
    }
    // Changing one lasts (the API never overwrites it), so it is allowed, as is pausing one.
    let replaced = http
        .put(served.url("/v1/targets/coordinator"))
        .bearer_auth(ADMIN)
        .json(&json!({"instances": ["http://127.0.0.1:9/c"], "interval_ms": 7000, "labels": {"caracal": "platform"}}))
        .send()
        .await
        .expect("replace");
    assert_eq!(replaced.status(), 200);
    let paused = http.post(served.url("/v1/targets/sts/pause")).bearer_auth(ADMIN).send().await.expect("pause");
    assert_eq!(paused.status(), 200);
    // No longer configured: an ordinary target again.
    let deleted = http.delete(served.url("/v1/targets/retired")).bearer_auth(ADMIN).send().await.expect("delete");
    assert_eq!(deleted.status(), 204);
    // The document says so.
    let doc: serde_json::Value = served.get("/openapi.json").await.json().await.expect("json");
    let delete = &doc["paths"]["/v1/targets/{name}"]["delete"]["responses"]["409"]["description"];
    assert!(delete.as_str().is_some_and(|d| d.contains("platform_target")), "{delete}");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_empty_ca_pem_means_no_ca_of_its_own() {
    let (served, _pool) = support::api(Mode::Dev).await;
    let http = &served.http;
    let body = json!({"name": "plain-tls", "instances": ["https://127.0.0.1:9/"], "tls": {"ca_pem": ""}});
    let created = http.post(served.url("/v1/targets")).bearer_auth(ADMIN).json(&body).send().await.expect("create");
    assert_eq!(created.status(), 201, "{:?}", created.text().await);
    let target: serde_json::Value = served.get("/v1/targets/plain-tls").await.json().await.expect("json");
    assert!(target["tls"].get("ca_pem").is_none(), "{target}");
    let replaced = http
        .put(served.url("/v1/targets/plain-tls"))
        .bearer_auth(ADMIN)
        .json(&json!({"instances": ["https://127.0.0.1:9/"], "tls": {"ca_pem": " \n", "server_name": "shop.internal"}}))
        .send()
        .await
        .expect("replace");
    assert_eq!(replaced.status(), 200);
    // Anything else that is no certificate is still refused, naming the field.
    let refused = http
        .post(served.url("/v1/targets"))
        .bearer_auth(ADMIN)
        .json(&json!({"name": "bad-tls", "instances": ["https://127.0.0.1:9/"], "tls": {"ca_pem": "x"}}))
        .send()
        .await
        .expect("create");
    assert_eq!(refused.status(), 422);
    let error: serde_json::Value = refused.json().await.expect("json");
    assert_eq!(error["error"]["field"], "tls.ca_pem", "{error}");
}

/// `POST /v1/targets/_batch`: creates, replaces and deletes in one transaction with one
/// invalidation; a refused change is reported alone; an invalid document, too many changes or
/// a name twice refuse the batch and write nothing; a token without `targets:write` is refused.
#[tokio::test(flavor = "multi_thread")]
async fn a_batch_is_one_transaction_with_refusals_reported_alone() {
    let (served, pool) = support::api(Mode::Dev).await;
    let http = &served.http;
    let send =
        |body: serde_json::Value| http.post(served.url("/v1/targets/_batch")).bearer_auth(ADMIN).json(&body).send();
    let created = http
        .post(served.url("/v1/targets"))
        .bearer_auth(ADMIN)
        .json(&json!({"name": "old", "instances": ["http://127.0.0.1:7001"]}))
        .send()
        .await
        .expect("create");
    assert_eq!(created.status(), 201);
    sqlx::query("DELETE FROM outbox").execute(&pool).await.expect("clear");

    let answer = send(json!({
        "create": [{"name": "a", "instances": ["http://127.0.0.1:7002"]}, {"name": "old", "instances": ["http://127.0.0.1:7003"]}],
        "replace": [{"name": "old", "instances": ["http://127.0.0.1:7004"], "interval_ms": 1000}],
        "delete": ["nothing-here"],
    }))
    .await
    .expect("batch");
    assert_eq!(answer.status(), 422, "`old` twice in one batch");
    let answer = send(json!({
        "create": [{"name": "a", "instances": ["http://127.0.0.1:7002"]}, {"name": "old", "instances": ["http://127.0.0.1:7003"]}],
        "replace": [{"name": "b", "instances": ["http://127.0.0.1:7004"]}],
        "delete": ["nothing-here"],
    }))
    .await
    .expect("batch");
    assert_eq!(answer.status(), 200);
    let outcome: serde_json::Value = answer.json().await.expect("json");
    assert_eq!(outcome["done"], json!([{"action": "create", "name": "a"}]));
    let codes: Vec<(&str, &str)> = outcome["refused"]
        .as_array()
        .expect("refused")
        .iter()
        .map(|r| (r["name"].as_str().unwrap_or(""), r["code"].as_str().unwrap_or("")))
        .collect();
    assert_eq!(codes, [("old", "conflict"), ("b", "not_found"), ("nothing-here", "not_found")]);
    let events: Vec<(String, Option<String>, serde_json::Value)> =
        sqlx::query_as("SELECT event_type, target, payload FROM outbox ORDER BY id")
            .fetch_all(&pool)
            .await
            .expect("outbox");
    assert_eq!(events.len(), 2, "{events:?}");
    assert_eq!((events[0].0.as_str(), events[0].1.as_deref()), ("target.created", Some("a")));
    assert_eq!((events[1].0.as_str(), &events[1].2), ("registry.changed", &json!({"names": ["a"]})));

    // Replace and delete, read back through the API.
    let answer = send(json!({"replace": [{"name": "a", "instances": ["http://127.0.0.1:7005"], "interval_ms": 1000}], "delete": ["old"]}))
        .await
        .expect("batch");
    assert_eq!(answer.status(), 200);
    let a: serde_json::Value = served.get("/v1/targets/a").await.json().await.expect("json");
    assert_eq!((a["interval_ms"].clone(), a["instances"].clone()), (json!(1000), json!(["http://127.0.0.1:7005"])));
    assert_eq!(served.get("/v1/targets/old").await.status(), 404);

    // Refused whole, nothing written: an invalid document (named by its place), too many.
    let before = support::counts(&pool).await;
    let answer = send(json!({"create": [{"name": "c", "instances": ["http://127.0.0.1:7006"]}, {"name": "d", "instances": ["ftp://x"]}]}))
        .await
        .expect("batch");
    assert_eq!(answer.status(), 422);
    let error: serde_json::Value = answer.json().await.expect("json");
    assert!(error["error"]["field"].as_str().is_some_and(|f| f.starts_with("create[1].instances")), "{error}");
    let many: Vec<String> = (0..=1000).map(|i| format!("gone-{i}")).collect();
    assert_eq!(send(json!({"delete": many})).await.expect("batch").status(), 422);
    assert_eq!(send(json!({"create": [], "rename": []})).await.expect("batch").status(), 422, "unknown field");
    assert_eq!(send(json!({"delete": [""]})).await.expect("batch").status(), 422, "not a target name");
    assert_eq!(support::counts(&pool).await, before, "nothing written");
    let unauthenticated =
        http.post(served.url("/v1/targets/_batch")).json(&json!({"delete": ["a"]})).send().await.expect("batch");
    assert_eq!(unauthenticated.status(), 401);
    let doc: serde_json::Value = served.get("/openapi.json").await.json().await.expect("json");
    assert!(doc["paths"]["/v1/targets/_batch"]["post"]["responses"].get("422").is_some());
}

/// `GET /v1/targets/_digests` lists every target by name with the digest of its document (the
/// one `caracal apply` computes from a file), its owner and file (behind `targets:read`
/// outside dev: `the_admin_bearer_guards_writes_always_and_reads_outside_dev`).
#[tokio::test(flavor = "multi_thread")]
async fn the_digest_listing_matches_the_documents_and_follows_changes() {
    let (served, _pool) = support::api(Mode::Dev).await;
    let http = &served.http;
    for (name, port) in [("zeta", 7001), ("alpha", 7002), ("mid", 7003)] {
        let created = http
            .post(served.url("/v1/targets"))
            .bearer_auth(ADMIN)
            .json(&json!({"name": name, "instances": [format!("http://127.0.0.1:{port}")], "labels": {"team": "a"}}))
            .send()
            .await
            .expect("create");
        assert_eq!(created.status(), 201);
    }
    let digests = || async {
        let listed = served.get("/v1/targets/_digests").await;
        assert_eq!(listed.status(), 200);
        listed.json::<Vec<caracal_store::target::TargetDigest>>().await.expect("digests")
    };
    let listed = digests().await;
    let documents: Vec<caracal_store::target::Target> =
        served.get("/v1/targets").await.json().await.expect("documents");
    let names: Vec<&str> = listed.iter().map(|d| d.name.as_str()).collect();
    let mut expected: Vec<&str> = documents.iter().map(|t| t.spec.name.as_str()).collect();
    expected.sort_unstable();
    assert_eq!(names, expected, "every target, by name");
    for target in &documents {
        let entry = listed.iter().find(|d| d.name == target.spec.name).expect("listed");
        assert_eq!(entry.digest, target.spec.digest(), "{}", target.spec.name);
        assert_eq!((entry.managed_by.as_str(), entry.declared_in.as_deref()), (target.managed_by.as_str(), None));
    }
    // The document as a file declares it (defaults left out) has the same digest.
    let declared: caracal_store::target::TargetSpec =
        serde_json::from_value(json!({"name": "mid", "instances": ["http://127.0.0.1:7003"], "labels": {"team": "a"}}))
            .expect("document");
    let mid = |listed: &[caracal_store::target::TargetDigest]| listed.iter().find(|d| d.name == "mid").cloned();
    assert_eq!(mid(&listed).expect("mid").digest, declared.digest());
    let replaced = http
        .put(served.url("/v1/targets/mid"))
        .bearer_auth(ADMIN)
        .json(&json!({"name": "mid", "instances": ["http://127.0.0.1:7003"], "labels": {"team": "b"}}))
        .send()
        .await
        .expect("replace");
    assert_eq!(replaced.status(), 200);
    let after = digests().await;
    assert_ne!(mid(&after).expect("mid").digest, declared.digest(), "a changed label changes the digest");
    assert_eq!(after.iter().find(|d| d.name == "zeta"), listed.iter().find(|d| d.name == "zeta"));
}
