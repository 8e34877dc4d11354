//! Declared files reconciled into the registry: created, updated and pruned as the files say;
//! a target created through the API is never touched; a broken file changes nothing.

use std::time::Duration;

use caracal_store::registry::{self, Writer};
use caracal_store::target::Target;

use crate::support::{self, check, database};

async fn declared(pool: &sqlx::PgPool) -> Vec<Target> {
    registry::list_declared(pool).await.expect("list")
}

async fn wait_declared(pool: &sqlx::PgPool, what: &str, ok: impl Fn(&[Target]) -> bool) {
    let done = caracal_testkit::wait_for(Duration::from_secs(15), Duration::from_millis(50), || async {
        ok(&declared(pool).await).then_some(())
    })
    .await;
    assert!(done.is_ok(), "{what}: {:?}", declared(pool).await.iter().map(|t| &t.spec.name).collect::<Vec<_>>());
}

#[tokio::test(flavor = "multi_thread")]
async fn files_create_update_prune_and_leave_api_targets_alone() {
    let dir = tempfile::tempdir().expect("dir");
    let file = dir.path().join("shop.yaml");
    std::fs::write(
        &file,
        "- name: shop\n  instances: [\"http://127.0.0.2:8080\"]\n  labels: {team: payments}\n\
         - name: cart\n  instances: [\"http://127.0.0.3:8080\"]\n",
    )
    .expect("write");
    let pool = database().await;
    let mine =
        serde_json::from_value(serde_json::json!({"name": "mine", "instances": ["http://127.0.0.9:1"]})).expect("spec");
    registry::create(&pool, &mine, &Writer::Api).await.expect("an API target");
    let served =
        support::control(&pool, serde_json::json!({ "targets_dir": dir.path(), "targets_poll": "100ms" })).await;

    wait_declared(&pool, "both declared targets are created", |t| t.len() == 2).await;
    let now = declared(&pool).await;
    assert!(
        now.iter()
            .all(|t| t.managed_by == "control" && t.declared_in.as_deref() == Some(file.to_str().expect("utf-8")))
    );
    assert_eq!(now.iter().find(|t| t.spec.name == "shop").expect("shop").spec.labels["team"], "payments");

    // A change, a removal and a clash with the API's target, in one edit.
    std::fs::write(
        &file,
        "- name: shop\n  instances: [\"http://127.0.0.2:8080\"]\n  interval_ms: 1000\n\
         - name: mine\n  instances: [\"http://127.0.0.8:8\"]\n",
    )
    .expect("write");
    wait_declared(&pool, "cart is pruned and shop updated", |t| {
        t.len() == 1 && t[0].spec.name == "shop" && t[0].spec.interval_ms == 1000
    })
    .await;
    let mut conn = pool.acquire().await.expect("conn");
    let theirs = registry::get(&mut conn, "mine").await.expect("get").expect("still there");
    assert_eq!(
        (theirs.managed_by.as_str(), theirs.spec.instances.as_slice()),
        ("api", ["http://127.0.0.9:1".to_string()].as_slice())
    );
    let reported = caracal_testkit::wait_for(Duration::from_secs(5), Duration::from_millis(100), || async {
        let (status, output) = check(&served, "targets_dir:valid").await;
        (status == "warn" && output.contains("mine")).then_some(output)
    })
    .await
    .expect("the clash is reported");
    assert!(reported.contains("shop.yaml:4"), "file and line: {reported}");

    // A broken file changes nothing, and says where it is broken.
    std::fs::write(&file, "- name: shop\n  instances: [\"http://127.0.0.2:8080\"\n").expect("write");
    let reported = caracal_testkit::wait_for(Duration::from_secs(5), Duration::from_millis(100), || async {
        let (status, output) = check(&served, "targets_dir:valid").await;
        (status == "warn" && !output.contains("mine")).then_some(output)
    })
    .await
    .expect("the broken file is reported");
    assert!(reported.contains("shop.yaml:"), "{reported}");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let kept = declared(&pool).await;
    assert_eq!((kept.len(), kept[0].spec.interval_ms), (1, 1000), "the broken file's target stays as it was");
    let text = support::metrics(&served).await;
    assert!(text.contains("caracal_control_declared_files_invalid 1"), "{text}");
    assert!(text.contains("caracal_control_declared_reconciles_total{action=\"clash\"}"), "{text}");

    // Fixed, then emptied: every target it declared goes (the API's stays).
    std::fs::write(&file, "[]\n").expect("write");
    wait_declared(&pool, "an empty file declares nothing", <[Target]>::is_empty).await;
    caracal_testkit::wait_for(Duration::from_secs(5), Duration::from_millis(100), || async {
        (check(&served, "targets_dir:valid").await.0 == "pass").then_some(())
    })
    .await
    .expect("fixed files, no warning");
    let all: i64 = sqlx::query_scalar("SELECT count(*) FROM targets").fetch_one(&pool).await.expect("count");
    assert_eq!(all, 1, "the API's target is all that is left");
    served.running.drain();
}

/// Between full re-reads of the registry (an hour apart here), changes of the files are planned
/// against what control last read and wrote: each edit lands, and when the registry turns out
/// otherwise (a declared target deleted behind control's back) the next round reads it again
/// and puts the target back.
#[tokio::test(flavor = "multi_thread")]
async fn edits_between_full_reads_land_and_a_surprise_sends_control_back_to_the_registry() {
    let dir = tempfile::tempdir().expect("dir");
    let file = dir.path().join("fleet.yaml");
    let fleet = |interval: u32, names: &[&str]| {
        names
            .iter()
            .map(|n| format!("- name: {n}\n  instances: [\"http://127.0.0.2:8080/{n}\"]\n  interval_ms: {interval}\n"))
            .collect::<String>()
    };
    std::fs::write(&file, fleet(1000, &["a", "b", "c"])).expect("write");
    let pool = database().await;
    let _served = support::control(
        &pool,
        serde_json::json!({ "targets_dir": dir.path(), "targets_poll": "50ms", "full_resync": "1h" }),
    )
    .await;
    wait_declared(&pool, "the first round (a full one) creates all three", |t| t.len() == 3).await;

    // An edit of one field, then a removal and an addition: each lands without a full read.
    std::fs::write(&file, fleet(2000, &["a", "b", "c"])).expect("write");
    wait_declared(&pool, "every interval is 2000", |t| t.len() == 3 && t.iter().all(|t| t.spec.interval_ms == 2000))
        .await;
    std::fs::write(&file, fleet(2000, &["a", "c", "d"])).expect("write");
    wait_declared(&pool, "b is deleted and d created", |t| {
        t.iter().map(|t| t.spec.name.as_str()).collect::<Vec<_>>() == ["a", "c", "d"]
    })
    .await;

    // Behind control's back: `c` is deleted. The next edit of `c` is refused as not found, and
    // the round after reads the registry and creates `c` again.
    registry::delete(&pool, "c", &Writer::Control { file: file.display().to_string() }).await.expect("delete");
    std::fs::write(&file, fleet(3000, &["a", "c", "d"])).expect("write");
    wait_declared(&pool, "c is back, at the new interval", |t| {
        t.len() == 3 && t.iter().all(|t| t.spec.interval_ms == 3000)
    })
    .await;
}
