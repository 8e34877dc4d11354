//! Registry writes in batches (`registry::batch`): one transaction, each target's history
//! event, one `registry.changed` naming them all; refusals alone, as the single writes refuse;
//! and a batch writes exactly what the single writes write.

use caracal_store::registry::batch::{self, Change, Outcome};
use caracal_store::registry::{self, Refused, Writer};
use caracal_store::target::TargetSpec;
use caracal_testkit::Postgres;

fn spec(name: &str, value: serde_json::Value) -> TargetSpec {
    let mut document = serde_json::json!({"name": name, "instances": [format!("http://127.0.0.1:9/{name}")]});
    if let (Some(fields), Some(extra)) = (document.as_object_mut(), value.as_object()) {
        fields.extend(extra.clone());
    }
    serde_json::from_value(document).expect("a document")
}

/// Every field set: a batch must carry each to its column as the single write does.
fn full(name: &str) -> TargetSpec {
    spec(
        name,
        serde_json::json!({
            "instances": ["http://127.0.0.1:9/a", "http://127.0.0.1:9/b"],
            "health_path": "/h", "ready_path": "/r", "metrics_path": "/m",
            "interval_ms": 5000, "timeout_ms": 700, "labels": {"team": "x", "tier": "1"},
            "tls": {"server_name": "svc.internal"}, "credential": "cred", "grpc_service": "svc.v1",
            "degraded": {"latency_factor": 3.0, "min_increase_ms": 150},
        }),
    )
}

/// The outbox's events: type, target and payload, in order.
async fn events(pool: &sqlx::PgPool) -> Vec<(String, Option<String>, serde_json::Value)> {
    sqlx::query_as("SELECT event_type, target, payload FROM outbox ORDER BY id").fetch_all(pool).await.expect("outbox")
}

/// A stored target without its timestamps, to compare two writes of the same document.
async fn stored(pool: &sqlx::PgPool, name: &str) -> serde_json::Value {
    let mut conn = pool.acquire().await.expect("connection");
    let target = registry::get(&mut conn, name).await.expect("read").expect("stored");
    let mut value = serde_json::to_value(target).expect("json");
    for field in ["name", "created_at", "updated_at"] {
        value.as_object_mut().expect("object").remove(field);
    }
    value
}

#[tokio::test(flavor = "multi_thread")]
async fn a_batch_writes_what_single_writes_write_with_one_invalidation() {
    let postgres = Postgres::start_default().expect("postgres");
    let pool = sqlx::PgPool::connect(&postgres.fresh_database("batch").expect("db")).await.expect("connect");
    caracal_store::migrate(&pool).await.expect("migrate");
    let control = Writer::Control { file: "/declared/fleet.yaml".into() };

    // The same documents, one written alone and one in a batch, read back the same.
    registry::create(&pool, &full("single"), &Writer::Api).await.expect("single create");
    registry::create(&pool, &spec("taken", serde_json::json!({})), &Writer::Api).await.expect("create");
    sqlx::query("DELETE FROM outbox").execute(&pool).await.expect("clear");
    let (batched, declared, taken) =
        (full("batched"), spec("declared", serde_json::json!({})), spec("taken", serde_json::json!({})));
    let outcome = batch::apply(
        &pool,
        &[
            Change::Create(&batched, &Writer::Api),
            Change::Create(&taken, &Writer::Api),
            Change::Create(&declared, &control),
        ],
    )
    .await
    .expect("batch");
    assert_eq!(outcome, Outcome { done: vec![0, 2], refused: vec![(1, Refused::Conflict("taken".into()))] });
    assert_eq!(stored(&pool, "batched").await, stored(&pool, "single").await, "a batch create writes every field");
    let declared_row = stored(&pool, "declared").await;
    assert_eq!(
        (declared_row["managed_by"].as_str(), declared_row["declared_in"].as_str()),
        (Some("control"), Some("/declared/fleet.yaml"))
    );
    let written = events(&pool).await;
    let kinds: Vec<(&str, Option<&str>)> = written.iter().map(|(t, n, _)| (t.as_str(), n.as_deref())).collect();
    assert_eq!(
        kinds,
        [("target.created", Some("batched")), ("target.created", Some("declared")), ("registry.changed", None)],
        "a history event per target, one invalidation for the batch"
    );
    assert_eq!(written[2].2, serde_json::json!({"names": ["batched", "declared"]}));
    assert_eq!(written[0].2["labels"]["team"], "x", "the history event carries the document");

    // Replaces and deletes: a batch replace equals a single replace; each refusal is the single
    // write's.
    let mut changed = full("single");
    changed.instances = vec!["http://127.0.0.1:9/b".into(), "http://127.0.0.1:9/c".into()];
    changed.labels.insert("tier".into(), "2".into());
    changed.tls = None;
    registry::replace(&pool, &changed, &Writer::Api).await.expect("single replace");
    changed.name = "batched".into();
    let platform = spec("platform-own", serde_json::json!({}));
    registry::create(&pool, &platform, &Writer::Platform).await.expect("platform target");
    let missing = spec("missing", serde_json::json!({}));
    let declared_again = spec("declared", serde_json::json!({"interval_ms": 9000}));
    sqlx::query("DELETE FROM outbox").execute(&pool).await.expect("clear");
    let outcome = batch::apply(
        &pool,
        &[
            Change::Replace(&changed, &Writer::Api),
            Change::Replace(&missing, &Writer::Api),
            Change::Replace(&declared_again, &Writer::Api),
            Change::Delete("platform-own", &Writer::Api),
            Change::Delete("taken", &Writer::Api),
            Change::Delete("missing-too", &Writer::Api),
        ],
    )
    .await
    .expect("batch");
    assert_eq!(outcome.done, vec![0, 4]);
    assert_eq!(
        outcome.refused,
        vec![
            (1, Refused::NotFound("missing".into())),
            (2, Refused::ManagedByControl { name: "declared".into(), file: "/declared/fleet.yaml".into() }),
            (3, Refused::PlatformTarget("platform-own".into())),
            (5, Refused::NotFound("missing-too".into())),
        ]
    );
    assert_eq!(
        stored(&pool, "batched").await,
        stored(&pool, "single").await,
        "a batch replace writes what a single one does"
    );
    let mut conn = pool.acquire().await.expect("connection");
    assert!(registry::get(&mut conn, "taken").await.expect("read").is_none(), "deleted");
    let kinds: Vec<(String, Option<String>)> = events(&pool).await.into_iter().map(|(t, n, _)| (t, n)).collect();
    assert_eq!(
        kinds,
        [
            ("target.updated".to_string(), Some("batched".to_string())),
            ("target.deleted".into(), Some("taken".into())),
            ("registry.changed".into(), None),
        ]
    );

    // Control may not touch the API's targets: a clash, as a single write by control is.
    let api_owned = spec("batched", serde_json::json!({}));
    let outcome = batch::apply(&pool, &[Change::Replace(&api_owned, &control)]).await.expect("batch");
    assert_eq!(outcome.refused, vec![(0, Refused::Conflict("batched".into()))]);

    // A batch that writes nothing writes no event; one that cannot be applied as given is an
    // error and writes nothing.
    sqlx::query("DELETE FROM outbox").execute(&pool).await.expect("clear");
    assert!(events(&pool).await.is_empty());
    let twice =
        batch::apply(&pool, &[Change::Delete("single", &Writer::Api), Change::Delete("single", &Writer::Api)]).await;
    assert!(matches!(twice, Err(caracal_store::Error::Batch(_))), "{twice:?}");
    let many: Vec<TargetSpec> = (0..=batch::MAX).map(|i| spec(&format!("t{i}"), serde_json::json!({}))).collect();
    let changes: Vec<Change<'_>> = many.iter().map(|s| Change::Create(s, &Writer::Api)).collect();
    assert!(matches!(batch::apply(&pool, &changes).await, Err(caracal_store::Error::Batch(_))));
    assert!(events(&pool).await.is_empty(), "nothing written");
    // At the bound, all in one transaction.
    let outcome = batch::apply(&pool, &changes[..batch::MAX]).await.expect("the largest batch");
    assert_eq!(outcome.done.len(), batch::MAX);
    let instances: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM instances i JOIN targets t ON t.id = i.target_id WHERE t.name LIKE 't%'",
    )
    .fetch_one(&pool)
    .await
    .expect("count");
    assert_eq!(instances, batch::MAX as i64);
}
