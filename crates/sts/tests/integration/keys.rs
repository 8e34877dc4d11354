//! Signing keys: rotation with pre-publication, a restart keeping tokens valid, replicas
//! agreeing on the active key, and the key-encryption key's start-up errors.

use std::time::Duration;

use caracal_testkit::wait_for;

use crate::support::{self, Kek, parts, sts_with};

/// Short timings: a key signs for 3 s and its successor is published 2 s before it signs.
fn fast() -> serde_json::Value {
    serde_json::json!({"rotation_period": "3s", "prepublish": "2s", "rotation_check": "200ms", "token_lifetime": "60s"})
}

async fn jwks_kids(sts: &support::Sts) -> (Vec<String>, String) {
    let response = sts.served.get("/.well-known/jwks.json").await;
    let cache = response.headers()["cache-control"].to_str().expect("ascii").to_string();
    let body: serde_json::Value = response.json().await.expect("json");
    let kids =
        body["keys"].as_array().expect("keys").iter().map(|k| k["kid"].as_str().expect("kid").to_string()).collect();
    (kids, cache)
}

#[tokio::test(flavor = "multi_thread")]
async fn keys_rotate_with_prepublication_and_old_tokens_still_verify() {
    let sts = sts_with(fast()).await;
    let (id, secret) = sts.client(&["targets:read"]).await;
    let old = sts.token(&id, &secret, None).await;
    let old_kid = parts(&old).0["kid"].as_str().expect("kid").to_string();
    let (_, cache) = jwks_kids(&sts).await;
    assert_eq!(cache, "public, max-age=0", "max-age is shorter than the 2 s pre-publication window");

    // The successor is published while the old key still signs.
    let published = wait_for(Duration::from_secs(10), Duration::from_millis(50), || async {
        let (kids, _) = jwks_kids(&sts).await;
        (kids.len() >= 2).then_some(kids)
    })
    .await
    .expect("a successor is pre-published");
    let signing_now = parts(&sts.token(&id, &secret, None).await).0["kid"].as_str().expect("kid").to_string();
    let successor = published.iter().find(|k| **k != old_kid).expect("a new kid").clone();
    assert_eq!(signing_now, old_kid, "published before it signs");

    // Then it signs, and the old token still verifies.
    let new_kid = wait_for(Duration::from_secs(10), Duration::from_millis(100), || async {
        let kid = parts(&sts.token(&id, &secret, None).await).0["kid"].as_str().expect("kid").to_string();
        (kid != old_kid).then_some(kid)
    })
    .await
    .expect("the new key signs");
    assert_eq!(new_kid, successor);
    assert!(sts.active(&id, &secret, &old).await, "a token of the retired key still verifies");
    let (kids, _) = jwks_kids(&sts).await;
    assert!(kids.contains(&old_kid), "the retired key stays published while its tokens live");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_restart_keeps_issued_tokens_valid() {
    let sts = sts_with(serde_json::json!({})).await;
    let (id, secret) = sts.client(&["targets:read"]).await;
    let token = sts.token(&id, &secret, None).await;
    let kid = parts(&token).0["kid"].clone();
    let support::Sts { served, pool, database_url, kek } = sts;
    served.running.drain();
    served.running.wait().await.expect("drained");

    let restarted = support::serve_ready(support::app(&database_url, &kek, serde_json::json!({}))).await;
    let sts = support::Sts { served: restarted, pool, database_url, kek };
    assert!(sts.active(&id, &secret, &token).await, "issued before the restart, valid after");
    let after = sts.token(&id, &secret, None).await;
    assert_eq!(parts(&after).0["kid"], kid, "a restart makes no new key");
    let keys: i64 =
        sqlx::query_scalar("SELECT count(*) FROM sts_signing_keys").fetch_one(&sts.pool).await.expect("count");
    assert_eq!(keys, 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn two_replicas_rotating_at_once_agree_on_the_active_key() {
    let (database_url, pool) = support::database().await;
    let kek = Kek::new();
    let (a, b) = tokio::join!(
        support::serve_ready(support::app(&database_url, &kek, fast())),
        support::serve_ready(support::app(&database_url, &kek, fast())),
    );
    let a = support::Sts { served: a, pool: pool.clone(), database_url: database_url.clone(), kek };
    let (id, secret) = a.client(&["targets:read"]).await;
    // Both replicas run through two rotations.
    tokio::time::sleep(Duration::from_secs(7)).await;
    let windows: Vec<(String, f64, f64)> = sqlx::query_as(
        "SELECT kid, extract(epoch FROM signs_from)::float8, extract(epoch FROM signs_until)::float8 \
         FROM sts_signing_keys ORDER BY signs_from",
    )
    .fetch_all(&pool)
    .await
    .expect("keys");
    assert!(windows.len() >= 3, "rotated: {windows:?}");
    for pair in windows.windows(2) {
        assert!(pair[0].2 <= pair[1].1 + 1e-6, "signing windows never overlap: {pair:?}");
        assert!((pair[1].1 - pair[0].2).abs() < 1e-6, "each key takes over where the last one ends: {pair:?}");
    }
    // Both replicas sign with the same key (asked a few times in case a boundary falls between).
    let b_client = reqwest::Client::new();
    let agreed = wait_for(Duration::from_secs(5), Duration::from_millis(50), || async {
        let from_a = parts(&a.token(&id, &secret, None).await).0["kid"].clone();
        let response = b_client
            .post(b.url("/oauth/token"))
            .basic_auth(&id, Some(&secret))
            .header("content-type", "application/x-www-form-urlencoded")
            .body("grant_type=client_credentials")
            .send()
            .await
            .ok()?;
        let body: serde_json::Value = response.json().await.ok()?;
        let from_b = parts(body["access_token"].as_str()?).0["kid"].clone();
        (from_a == from_b).then_some(())
    })
    .await;
    assert!(agreed.is_ok(), "the replicas disagree on the active key");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_key_encryption_key_is_required_checked_and_never_guessed() {
    let (database_url, _pool) = support::database().await;
    let kek = Kek::new();
    // rc without the file: a start-up error naming the variable.
    let mut core = caracal_testkit::app::core_config(caracal_core::Mode::Rc);
    core.database_url = Some(caracal_core::config::Secret::new(&database_url));
    core.redis_url = Some(caracal_core::config::Secret::new(caracal_testkit::shared().redis.url()));
    let app = caracal_testkit::app::app("sts", core, serde_json::json!({}));
    let error = caracal_sts::build(app).expect_err("no key file in rc").to_string();
    assert!(error.contains("CARACAL_STS_KEY_ENCRYPTION_FILE") && error.contains("sts.key_encryption_file"), "{error}");

    // A file of the wrong size.
    caracal_testkit::write_secret(kek.dir.path().join("short"), "c2hvcnQ=");
    let mut sections = serde_json::json!({});
    sections["key_encryption_file"] = kek.dir.path().join("short").display().to_string().into();
    let mut core = caracal_testkit::app::core_config(caracal_core::Mode::Rc);
    core.database_url = Some(caracal_core::config::Secret::new(&database_url));
    core.redis_url = Some(caracal_core::config::Secret::new(caracal_testkit::shared().redis.url()));
    let app = caracal_testkit::app::app("sts", core, serde_json::json!({ "sts": sections }));
    let error = caracal_sts::build(app).expect_err("a 5-byte key").to_string();
    assert!(error.contains("expected 32"), "{error}");

    // Keys sealed with one KEK cannot be opened with another: unready, and no token, no 5xx.
    let first = support::serve_ready(support::app(&database_url, &kek, serde_json::json!({}))).await;
    first.running.drain();
    first.running.wait().await.expect("drained");
    let other = Kek::new();
    let served = caracal_testkit::app::serve(
        caracal_sts::build(support::app(&database_url, &other, serde_json::json!({}))).expect("build"),
    )
    .await;
    served.wait_for_check("sts:signing_key", "fail", Duration::from_secs(10)).await.expect("unready");
    let (status, _) = served.get_json("/ready").await;
    assert_eq!(status, 503);
}

#[tokio::test(flavor = "multi_thread")]
async fn es256_is_selectable_and_its_tokens_verify() {
    let sts = sts_with(serde_json::json!({"algorithm": "ES256"})).await;
    let (id, secret) = sts.client(&["clients:write"]).await;
    let token = sts.token(&id, &secret, None).await;
    let (header, _) = parts(&token);
    assert_eq!(header["alg"], "ES256");
    let (_, cache) = jwks_kids(&sts).await;
    assert!(cache.starts_with("public, max-age="));
    let jwks: serde_json::Value = sts.served.get("/.well-known/jwks.json").await.json().await.expect("json");
    assert_eq!((jwks["keys"][0]["kty"].as_str(), jwks["keys"][0]["crv"].as_str()), (Some("EC"), Some("P-256")));
    let listed = sts.served.http.get(sts.served.url("/v1/clients")).bearer_auth(&token).send().await.expect("get");
    assert_eq!(listed.status(), 200, "an ES256 token passes the guard");
    assert!(sts.active(&id, &secret, &token).await);
}
